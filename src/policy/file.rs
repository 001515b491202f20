//! Policy files (TOML) as security teams write them, and their validation into a [`Policy`].
//!
//! A policy directory holds any number of `*.toml` files (test cases live in `*.tests.toml` and are not
//! policy). Their contents are merged: classifications, roles and tenants must each be defined once. Every
//! problem in every file is reported at once, each with `file:line`.
//!
//! The file format is in [`doc`], its validation in [`load`] (lists and names in [`lists`], masking
//! functions in [`mask`]); this module holds the validated policy and what the engine asks of it.

mod doc;
mod lists;
mod load;
mod mask;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use self::doc::TenantRoleDoc;
use self::lists::{Problems, functions, kinds, operators, policy_files, raw_set};
use super::functions::MaskFn;
use super::kinds::StatementKind;
use super::pattern::ColumnPattern;
use crate::exfil::{GuardDoc, Limits};
use crate::ids::{RoleName, TenantId};

/// Errors loading a policy: every problem found, each located.
#[derive(Debug, thiserror::Error)]
#[error("invalid policy:\n  - {}", problems.join("\n  - "))]
pub struct PolicyError {
    /// Every problem, as `file:line: message`.
    pub problems: Vec<String>,
}

/// What happens to columns no rule classifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unclassified {
    /// Shown raw.
    Allow,
    /// Masked with `redact` (text) / NULL (other types).
    Mask,
    /// Statements reading them are refused.
    Deny,
}

// ---------------------------------------------------------------- validated policy

/// A classification rule.
#[derive(Debug, Clone)]
pub struct ColumnRule {
    /// Which columns.
    pub pattern: ColumnPattern,
    /// Classification.
    pub class: String,
}

/// Which classifications a role sees raw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawSet {
    /// Every classification (`"*"`).
    All,
    /// These.
    Some(HashSet<String>),
}

impl RawSet {
    /// Whether `class` is seen raw.
    pub fn contains(&self, class: &str) -> bool {
        match self {
            RawSet::All => true,
            RawSet::Some(s) => s.contains(class),
        }
    }
}

/// A role's rules (after tenant overrides are applied).
#[derive(Debug, Clone)]
pub struct RolePolicy {
    /// Passes through unparsed: no masking, no firewall.
    pub unrestricted: bool,
    /// Classifications seen raw.
    pub raw: RawSet,
    /// Statement kinds allowed.
    pub statements: HashSet<StatementKind>,
    /// Functions outside `pg_catalog` (or denied ones) allowed anyway, as `schema.name` or `name`.
    pub allow_functions: HashSet<String>,
    /// Tenant-defined operators allowed anyway, as `schema.op` or `op`.
    pub allow_operators: HashSet<String>,
    /// Unclassified columns.
    pub unclassified: Unclassified,
}

impl RolePolicy {
    /// Whether the role sees every column raw (unrestricted, or all classifications raw and unclassified
    /// columns allowed).
    pub fn sees_everything(&self) -> bool {
        self.unrestricted || (self.raw == RawSet::All && self.unclassified == Unclassified::Allow)
    }
}

/// Per-tenant overrides.
#[derive(Debug, Clone, Default)]
struct TenantPolicy {
    unclassified: Option<Unclassified>,
    rules: Vec<ColumnRule>,
    roles: HashMap<RoleName, TenantRoleDoc>,
}

/// A validated policy (an immutable snapshot).
#[derive(Debug, Clone)]
pub struct Policy {
    /// Files it was loaded from.
    pub sources: Vec<PathBuf>,
    /// Masking function per classification.
    pub classes: HashMap<String, MaskFn>,
    rules: Vec<ColumnRule>,
    roles: HashMap<RoleName, RoleRules>,
    tenants: HashMap<TenantId, TenantPolicy>,
    unclassified: Unclassified,
    trusted_extensions: BTreeSet<String>,
}

/// A role as the policy files define it, validated, before any tenant override.
#[derive(Debug, Clone)]
struct RoleRules {
    unrestricted: bool,
    raw: RawSet,
    statements: HashSet<StatementKind>,
    allow_functions: HashSet<String>,
    allow_operators: HashSet<String>,
    unclassified: Option<Unclassified>,
    guard: GuardDoc,
}

/// The policy for one (tenant, role): what the rewriter and firewall use.
#[derive(Debug, Clone)]
pub struct Effective<'a> {
    /// The role's rules.
    pub role: RolePolicy,
    /// Rules: tenant-specific first, then global.
    pub rules: Vec<&'a ColumnRule>,
    /// Masking functions.
    pub classes: &'a HashMap<String, MaskFn>,
    /// Extensions whose objects are treated as built-ins.
    pub trusted_extensions: &'a BTreeSet<String>,
}

impl Policy {
    /// Loads every `*.toml` (not `*.tests.toml`) file of a directory, or one file.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let files = policy_files(path).map_err(|e| PolicyError {
            problems: vec![format!("{}: {e}", path.display())],
        })?;
        if files.is_empty() {
            return Err(PolicyError {
                problems: vec![format!("{}: no policy files (*.toml)", path.display())],
            });
        }
        let mut texts = Vec::new();
        let mut problems = Vec::new();
        for f in files {
            match std::fs::read_to_string(&f) {
                Ok(t) => texts.push((f, t)),
                Err(e) => problems.push(format!("{}: {e}", f.display())),
            }
        }
        if !problems.is_empty() {
            return Err(PolicyError { problems });
        }
        Policy::from_texts(&texts)
    }

    /// Validates policy texts (file name, contents).
    pub fn from_texts(texts: &[(PathBuf, String)]) -> Result<Policy, PolicyError> {
        load::from_texts(texts)
    }

    /// Whether the role is `unrestricted` (per-tenant overrides cannot change that); `None` when the policy
    /// does not define it. Cheaper than [`Policy::effective`], for the per-statement question.
    pub fn unrestricted(&self, role: &RoleName) -> Option<bool> {
        self.roles.get(role).map(|r| r.unrestricted)
    }

    /// Extensions whose objects count as built-ins (`trusted_extensions`, or the default list).
    pub fn trusted_extensions(&self) -> &BTreeSet<String> {
        &self.trusted_extensions
    }

    /// The exfiltration guard of `role` within `tenant` (the tenant's keys replace the role's one by one);
    /// `None` when nothing is limited.
    pub fn guard(&self, tenant: &TenantId, role: &RoleName) -> Option<Limits> {
        let base = self.roles.get(role)?;
        let over = self
            .tenants
            .get(tenant)
            .and_then(|t| t.roles.get(role))
            .and_then(|o| o.guard);
        base.guard.overridden(over).limits()
    }

    /// The roles the policy defines.
    pub fn roles(&self) -> impl Iterator<Item = &RoleName> {
        self.roles.keys()
    }

    /// The effective policy of `role` within `tenant`; `None` when the role is not defined (refuse all).
    pub fn effective(&self, tenant: &TenantId, role: &RoleName) -> Option<Effective<'_>> {
        let base = self.roles.get(role)?;
        let t = self.tenants.get(tenant);
        let over = t.and_then(|t| t.roles.get(role));
        let mut rp = RolePolicy {
            unrestricted: base.unrestricted,
            raw: base.raw.clone(),
            statements: base.statements.clone(),
            allow_functions: base.allow_functions.clone(),
            allow_operators: base.allow_operators.clone(),
            unclassified: self.unclassified,
        };
        if let Some(u) = t.and_then(|t| t.unclassified) {
            rp.unclassified = u;
        }
        if let Some(u) = base.unclassified {
            rp.unclassified = u;
        }
        if let Some(o) = over {
            if let Some(raw) = &o.raw {
                rp.raw = raw_set(raw);
            }
            if let Some(s) = &o.statements {
                rp.statements = kinds(s, "", &mut Problems::default());
            }
            if let Some(f) = &o.allow_functions {
                rp.allow_functions = functions(f, "", &mut Problems::default());
            }
            if let Some(f) = &o.allow_operators {
                rp.allow_operators = operators(f, "", &mut Problems::default());
            }
            if let Some(u) = o.unclassified {
                rp.unclassified = u;
            }
        }
        let mut rules: Vec<&ColumnRule> = t.map(|t| t.rules.iter().collect()).unwrap_or_default();
        rules.extend(self.rules.iter());
        Some(Effective {
            role: rp,
            rules,
            classes: &self.classes,
            trusted_extensions: &self.trusted_extensions,
        })
    }
}

impl Effective<'_> {
    /// The classification of a column, if any rule matches (first match wins).
    pub fn classify(&self, schema: &str, table: &str, column: &str) -> Option<&str> {
        self.rules
            .iter()
            .find(|r| r.pattern.matches(schema, table, column))
            .map(|r| r.class.as_str())
    }
}

#[cfg(test)]
mod tests;
