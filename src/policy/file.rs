//! Policy files (TOML) as security teams write them, and their validation into a [`Policy`].
//!
//! A policy directory holds any number of `*.toml` files (test cases live in `*.tests.toml` and are not
//! policy). Their contents are merged: classifications, roles and tenants must each be defined once. Every
//! problem in every file is reported at once, each with `file:line`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::catalog::resolve::DEFAULT_TRUSTED_EXTENSIONS;
use super::functions::{Generalize, MaskFn, valid_json_key};
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

// ---------------------------------------------------------------- file format (serde)

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    /// Default for unclassified columns.
    #[serde(default)]
    unclassified: Option<Unclassified>,
    /// Classifications and their masking function.
    #[serde(default)]
    classes: BTreeMap<String, Spanned<ClassDoc>>,
    /// Classification rules.
    #[serde(default)]
    column: Vec<Spanned<ColumnDoc>>,
    /// Roles.
    #[serde(default)]
    roles: BTreeMap<String, Spanned<RoleDoc>>,
    /// Per-tenant overrides.
    #[serde(default)]
    tenants: BTreeMap<String, Spanned<TenantDoc>>,
    /// Extensions whose functions, operators and types are treated as built-ins (default: see
    /// `catalog::resolve::DEFAULT_TRUSTED_EXTENSIONS`).
    #[serde(default)]
    trusted_extensions: Option<Spanned<Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClassDoc {
    /// Masking function name.
    mask: Spanned<String>,
    /// Free text for humans.
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    #[serde(default)]
    keep_first: Option<u32>,
    #[serde(default)]
    keep_last: Option<u32>,
    #[serde(default)]
    replacement: Option<String>,
    #[serde(default)]
    length: Option<u32>,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    step: Option<u64>,
    #[serde(default)]
    prefix_v4: Option<u32>,
    #[serde(default)]
    prefix_v6: Option<u32>,
    #[serde(default)]
    keys: Option<Vec<String>>,
    #[serde(default)]
    case_insensitive: Option<bool>,
    #[serde(default)]
    hide_length: Option<bool>,
    #[serde(default)]
    mask_domain: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ColumnDoc {
    /// `schema.table.column`, `table.column` or `column`; `*` matches any run of characters in a part.
    #[serde(rename = "match")]
    pattern: String,
    /// Classification name (a key of `[classes]`).
    class: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleDoc {
    #[serde(default)]
    unrestricted: bool,
    #[serde(default)]
    raw: Vec<String>,
    #[serde(default)]
    statements: Option<Vec<String>>,
    #[serde(default)]
    allow_functions: Vec<String>,
    #[serde(default)]
    allow_operators: Vec<String>,
    #[serde(default)]
    unclassified: Option<Unclassified>,
    /// Exfiltration guard (`crate::exfil`).
    #[serde(default)]
    guard: Option<GuardDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantDoc {
    #[serde(default)]
    unclassified: Option<Unclassified>,
    #[serde(default)]
    column: Vec<Spanned<ColumnDoc>>,
    #[serde(default)]
    roles: BTreeMap<String, Spanned<TenantRoleDoc>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantRoleDoc {
    #[serde(default)]
    raw: Option<Vec<String>>,
    #[serde(default)]
    statements: Option<Vec<String>>,
    #[serde(default)]
    allow_functions: Option<Vec<String>>,
    #[serde(default)]
    allow_operators: Option<Vec<String>>,
    #[serde(default)]
    unclassified: Option<Unclassified>,
    #[serde(default)]
    guard: Option<GuardDoc>,
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

impl Clone for TenantRoleDoc {
    fn clone(&self) -> Self {
        Self {
            raw: self.raw.clone(),
            statements: self.statements.clone(),
            allow_functions: self.allow_functions.clone(),
            allow_operators: self.allow_operators.clone(),
            unclassified: self.unclassified,
            guard: self.guard,
        }
    }
}

impl std::fmt::Debug for TenantRoleDoc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantRole")
            .field("raw", &self.raw)
            .field("statements", &self.statements)
            .finish()
    }
}

/// A validated policy (an immutable snapshot).
#[derive(Debug, Clone)]
pub struct Policy {
    /// Files it was loaded from.
    pub sources: Vec<PathBuf>,
    /// Masking function per classification.
    pub classes: HashMap<String, MaskFn>,
    rules: Vec<ColumnRule>,
    roles: HashMap<RoleName, RoleDoc2>,
    tenants: HashMap<TenantId, TenantPolicy>,
    unclassified: Unclassified,
    trusted_extensions: BTreeSet<String>,
}

#[derive(Debug, Clone)]
struct RoleDoc2 {
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
        let mut p = Problems::default();
        let mut policy = Policy {
            sources: texts.iter().map(|(f, _)| f.clone()).collect(),
            classes: HashMap::new(),
            rules: Vec::new(),
            roles: HashMap::new(),
            tenants: HashMap::new(),
            unclassified: Unclassified::Allow,
            trusted_extensions: DEFAULT_TRUSTED_EXTENSIONS
                .iter()
                .map(|e| (*e).to_owned())
                .collect(),
        };
        let mut trusted_set = false;
        let mut unclassified_set = false;
        let mut class_at: HashMap<String, String> = HashMap::new();
        let mut pending_rules = Vec::new();
        for (file, text) in texts {
            let at = |span: std::ops::Range<usize>| {
                format!("{}:{}", file.display(), line_of(text, span.start))
            };
            let doc: FileDoc = match toml::from_str(text) {
                Ok(d) => d,
                Err(e) => {
                    let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(1);
                    p.push(format!("{}:{line}: {}", file.display(), e.message()));
                    continue;
                }
            };
            if let Some(u) = doc.unclassified {
                if unclassified_set {
                    p.push(format!(
                        "{}: `unclassified` is set in more than one file",
                        file.display()
                    ));
                }
                unclassified_set = true;
                policy.unclassified = u;
            }
            if let Some(t) = &doc.trusted_extensions {
                let loc = at(t.span());
                if trusted_set {
                    p.push(format!(
                        "{loc}: `trusted_extensions` is set in more than one file"
                    ));
                }
                trusted_set = true;
                policy.trusted_extensions.clear();
                for e in t.get_ref() {
                    if e.is_empty() || e.len() > 63 || e.contains('\0') {
                        p.push(format!(
                            "{loc}: trusted_extensions entry {e:?} is not an extension name"
                        ));
                    } else {
                        policy.trusted_extensions.insert(e.clone());
                    }
                }
            }
            for (name, class) in doc.classes {
                let loc = at(class.span());
                if !valid_class_name(&name) {
                    p.push(format!(
                        "{loc}: class name {name:?} must be 1-63 chars of [a-z0-9_.-]"
                    ));
                }
                if let Some(prev) = class_at.get(&name) {
                    p.push(format!("{loc}: class {name:?} already defined at {prev}"));
                    continue;
                }
                match mask_fn(class.get_ref()) {
                    Ok(f) => {
                        policy.classes.insert(name.clone(), f);
                    }
                    Err(errs) => {
                        for e in errs {
                            p.push(format!("{loc}: class {name:?}: {e}"));
                        }
                    }
                }
                class_at.insert(name, loc);
            }
            for rule in &doc.column {
                pending_rules.push((
                    at(rule.span()),
                    None,
                    rule.get_ref().pattern.clone(),
                    rule.get_ref().class.clone(),
                ));
            }
            for (name, role) in doc.roles {
                let loc = at(role.span());
                let r = role.into_inner();
                let rn = RoleName::new(name.clone());
                if policy.roles.contains_key(&rn) {
                    p.push(format!("{loc}: role {name:?} is defined twice"));
                    continue;
                }
                let statements = match &r.statements {
                    Some(s) => kinds(s, &loc, &mut p),
                    None => StatementKind::masked_default(),
                };
                if r.unrestricted
                    && (!r.raw.is_empty()
                        || r.statements.is_some()
                        || !r.allow_functions.is_empty())
                {
                    p.push(format!("{loc}: role {name:?}: `unrestricted = true` cannot be combined with raw/statements/allow_functions"));
                }
                let raw = raw_set(&r.raw);
                pending_rules.push((loc.clone(), Some("raw"), r.raw.join(","), name.clone()));
                let allow_functions = functions(&r.allow_functions, &loc, &mut p);
                let allow_operators = operators(&r.allow_operators, &loc, &mut p);
                let guard = r.guard.unwrap_or_default();
                for problem in guard.problems() {
                    p.push(format!("{loc}: role {name:?}: {problem}"));
                }
                policy.roles.insert(
                    rn,
                    RoleDoc2 {
                        unrestricted: r.unrestricted,
                        raw,
                        statements,
                        allow_functions,
                        allow_operators,
                        unclassified: r.unclassified,
                        guard,
                    },
                );
            }
            for (tenant, t) in doc.tenants {
                let loc = at(t.span());
                let t = t.into_inner();
                let id = TenantId::new(tenant.clone());
                if policy.tenants.contains_key(&id) {
                    p.push(format!("{loc}: tenant {tenant:?} is defined twice"));
                    continue;
                }
                let mut tp = TenantPolicy {
                    unclassified: t.unclassified,
                    ..TenantPolicy::default()
                };
                for rule in &t.column {
                    let rloc = at(rule.span());
                    match ColumnPattern::parse(&rule.get_ref().pattern) {
                        Ok(pattern) => tp.rules.push(ColumnRule {
                            pattern,
                            class: rule.get_ref().class.clone(),
                        }),
                        Err(e) => p.push(format!("{rloc}: {e}")),
                    }
                    pending_rules.push((
                        rloc,
                        Some("class"),
                        String::new(),
                        rule.get_ref().class.clone(),
                    ));
                }
                for (role, r) in t.roles {
                    let rloc = at(r.span());
                    let r = r.into_inner();
                    if let Some(s) = &r.statements {
                        kinds(s, &rloc, &mut p);
                    }
                    if let Some(f) = &r.allow_functions {
                        functions(f, &rloc, &mut p);
                    }
                    if let Some(o) = &r.allow_operators {
                        operators(o, &rloc, &mut p);
                    }
                    // Checked alone here; the window, once merged with the role's keys (below).
                    if let Some(g) = &r.guard {
                        for problem in g.problems().into_iter().filter(|m| !m.contains("window")) {
                            p.push(format!("{rloc}: role {role:?}: {problem}"));
                        }
                    }
                    if let Some(raw) = &r.raw {
                        pending_rules.push((
                            rloc.clone(),
                            Some("raw"),
                            raw.join(","),
                            role.clone(),
                        ));
                    }
                    pending_rules.push((rloc, Some("role"), String::new(), role.clone()));
                    tp.roles.insert(RoleName::new(role), r);
                }
                policy.tenants.insert(id, tp);
            }
        }
        // Cross-references, now that every file is read.
        for (loc, what, text, name) in pending_rules {
            match what {
                None => match ColumnPattern::parse(&text) {
                    Ok(pattern) => {
                        if !policy.classes.contains_key(&name) && !class_at.contains_key(&name) {
                            p.push(format!("{loc}: unknown class {name:?}"));
                        }
                        policy.rules.push(ColumnRule {
                            pattern,
                            class: name,
                        });
                    }
                    Err(e) => p.push(format!("{loc}: {e}")),
                },
                Some("class") => {
                    if !class_at.contains_key(&name) {
                        p.push(format!("{loc}: unknown class {name:?}"));
                    }
                }
                Some("raw") => {
                    for c in text.split(',').filter(|c| !c.is_empty() && *c != "*") {
                        if !class_at.contains_key(c) {
                            p.push(format!(
                                "{loc}: role {name:?}: raw lists unknown class {c:?}"
                            ));
                        }
                    }
                }
                Some(_) => {
                    if !policy.roles.contains_key(&RoleName::new(name.clone())) {
                        p.push(format!(
                            "{loc}: tenant override for undefined role {name:?}"
                        ));
                    }
                }
            }
        }
        // A tenant's guard keys merged with its role's must still name the window their budgets need.
        for (tenant, t) in &policy.tenants {
            for (role, o) in &t.roles {
                if let (Some(g), Some(base)) = (o.guard, policy.roles.get(role)) {
                    for problem in base.guard.overridden(Some(g)).problems() {
                        if problem.contains("window") {
                            p.push(format!("tenant \"{tenant}\": role \"{role}\": {problem}"));
                        }
                    }
                }
            }
        }
        if policy.roles.is_empty() && p.0.is_empty() {
            p.push(
                "no roles are defined: every statement of every role would be refused".to_owned(),
            );
        }
        if p.0.is_empty() {
            Ok(policy)
        } else {
            Err(PolicyError { problems: p.0 })
        }
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

#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn push(&mut self, s: String) {
        self.0.push(s);
    }
}

fn policy_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.ends_with(".toml") && !name.ends_with(".tests.toml") && !name.starts_with('.')
        })
        .collect();
    files.sort();
    Ok(files)
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn valid_class_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
        })
}

fn raw_set(raw: &[String]) -> RawSet {
    if raw.iter().any(|r| r == "*") {
        RawSet::All
    } else {
        RawSet::Some(raw.iter().cloned().collect())
    }
}

fn kinds(list: &[String], loc: &str, p: &mut Problems) -> HashSet<StatementKind> {
    let mut out = HashSet::new();
    for k in list {
        match StatementKind::parse(k) {
            Some(kinds) => out.extend(kinds),
            None => p.push(format!(
                "{loc}: unknown statement kind {k:?} (known: {})",
                StatementKind::ALL_NAMES.join(", ")
            )),
        }
    }
    out
}

fn functions(list: &[String], loc: &str, p: &mut Problems) -> HashSet<String> {
    let mut out = HashSet::new();
    for f in list {
        let ok = !f.is_empty()
            && f.split('.').count() <= 2
            && f.split('.')
                .all(|part| !part.is_empty() && part.len() <= 63 && !part.contains('\0'));
        if ok {
            out.insert(f.clone());
        } else {
            p.push(format!(
                "{loc}: allow_functions entry {f:?} must be `name` or `schema.name`"
            ));
        }
    }
    out
}

/// `allow_operators` entries: `op` or `schema.op`, the operator made of PostgreSQL's operator characters.
fn operators(list: &[String], loc: &str, p: &mut Problems) -> HashSet<String> {
    let mut out = HashSet::new();
    for o in list {
        let (schema, op) = match o.rsplit_once('.') {
            Some((s, op)) if !op.is_empty() && !s.is_empty() => (Some(s), op),
            _ => (None, o.as_str()),
        };
        let op_ok =
            !op.is_empty() && op.len() <= 63 && op.chars().all(|c| "+-*/<>=~!@#%^&|`?".contains(c));
        let schema_ok =
            schema.is_none_or(|s| s.len() <= 63 && !s.contains('\0') && !s.contains('.'));
        if op_ok && schema_ok {
            out.insert(o.clone());
        } else {
            p.push(format!(
                "{loc}: allow_operators entry {o:?} must be `op` or `schema.op`"
            ));
        }
    }
    out
}

fn check_text(s: &str, what: &str, errs: &mut Vec<String>) {
    if s.len() > 200 || s.chars().any(|c| c.is_control()) {
        errs.push(format!(
            "`{what}` must be at most 200 characters without control characters"
        ));
    }
}

fn mask_fn(c: &ClassDoc) -> Result<MaskFn, Vec<String>> {
    let mut errs = Vec::new();
    let name = c.mask.get_ref().as_str();
    let mut allowed: &[&str] = &[];
    let f = match name {
        "redact" => {
            allowed = &["replacement"];
            let r = c.replacement.clone().unwrap_or_else(|| "[REDACTED]".into());
            check_text(&r, "replacement", &mut errs);
            Some(MaskFn::Redact { replacement: r })
        }
        "null" => Some(MaskFn::Null),
        "partial" => {
            allowed = &["keep_first", "keep_last", "replacement"];
            let (first, last) = (c.keep_first.unwrap_or(0), c.keep_last.unwrap_or(0));
            if first > 64 || last > 64 {
                errs.push("keep_first and keep_last must be at most 64".into());
            }
            if first + last == 0 {
                errs.push(
                    "partial needs keep_first and/or keep_last (otherwise use redact)".into(),
                );
            }
            let fill = c.replacement.clone().unwrap_or_else(|| "****".into());
            check_text(&fill, "replacement", &mut errs);
            Some(MaskFn::Partial { first, last, fill })
        }
        "email" => {
            allowed = &["mask_domain"];
            Some(MaskFn::Email {
                mask_domain: c.mask_domain.unwrap_or(false),
            })
        }
        "pan" => {
            allowed = &["hide_length"];
            Some(MaskFn::Pan {
                hide_length: c.hide_length.unwrap_or(false),
            })
        }
        "pseudonym" => {
            allowed = &["length"];
            let length = c.length.unwrap_or(16);
            if !(8..=64).contains(&length) {
                errs.push("length must be between 8 and 64 hex characters".into());
            }
            Some(MaskFn::Pseudonym {
                length: length.min(64) as u8,
            })
        }
        "generalize" => {
            allowed = &["to", "step", "prefix_v4", "prefix_v6"];
            match (c.to.as_deref(), c.step) {
                (Some("month"), None) => Some(MaskFn::Generalize(Generalize::Month)),
                (Some("year"), None) => Some(MaskFn::Generalize(Generalize::Year)),
                (Some("network"), None) => {
                    let (v4, v6) = (c.prefix_v4.unwrap_or(24), c.prefix_v6.unwrap_or(48));
                    if v4 > 32 || v6 > 128 {
                        errs.push("prefix_v4 must be 0-32 and prefix_v6 0-128".into());
                    }
                    Some(MaskFn::Generalize(Generalize::Network {
                        v4: v4.min(32) as u8,
                        v6: v6.min(128) as u8,
                    }))
                }
                (None, Some(step)) if (1..=1_000_000_000_000).contains(&step) => {
                    Some(MaskFn::Generalize(Generalize::Step(step)))
                }
                _ => {
                    errs.push("generalize needs `to = \"month\" | \"year\" | \"network\"` or `step = N` (1..10^12)".into());
                    None
                }
            }
        }
        "jsonb" => {
            allowed = &["keys", "replacement", "case_insensitive"];
            let keys = c.keys.clone().unwrap_or_default();
            if keys.is_empty() {
                errs.push("jsonb needs `keys = [\"key\", \"nested.key\"]`".into());
            }
            let mut paths = Vec::new();
            for k in &keys {
                let path: Vec<String> = k.split('.').map(str::to_owned).collect();
                if path.len() > 8 || !path.iter().all(|s| valid_json_key(s)) {
                    errs.push(format!("jsonb key path {k:?}: keys are [A-Za-z0-9_-], dot-separated, at most 8 deep"));
                }
                paths.push(path);
            }
            let r = c.replacement.clone().unwrap_or_else(|| "****".into());
            check_text(&r, "replacement", &mut errs);
            Some(MaskFn::JsonKeys {
                paths,
                replacement: r,
                case_insensitive: c.case_insensitive.unwrap_or(false),
            })
        }
        other => {
            errs.push(format!(
                "unknown masking function {other:?} (known: redact, null, partial, email, pan, pseudonym, generalize, jsonb)"
            ));
            None
        }
    };
    let given = [
        ("keep_first", c.keep_first.is_some()),
        ("keep_last", c.keep_last.is_some()),
        ("replacement", c.replacement.is_some()),
        ("length", c.length.is_some()),
        ("to", c.to.is_some()),
        ("step", c.step.is_some()),
        ("prefix_v4", c.prefix_v4.is_some()),
        ("prefix_v6", c.prefix_v6.is_some()),
        ("keys", c.keys.is_some()),
        ("case_insensitive", c.case_insensitive.is_some()),
        ("hide_length", c.hide_length.is_some()),
        ("mask_domain", c.mask_domain.is_some()),
    ];
    if f.is_some() {
        for (param, set) in given {
            if set && !allowed.contains(&param) {
                errs.push(format!(
                    "`{param}` does not apply to masking function {name:?}"
                ));
            }
        }
    }
    match f {
        Some(f) if errs.is_empty() => Ok(f),
        _ => Err(errs),
    }
}

#[cfg(test)]
mod tests;
