//! The policy file format as security teams write it (serde; validated by [`super::load`]).

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::Unclassified;
use crate::exfil::GuardDoc;

/// One policy file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileDoc {
    /// Default for unclassified columns.
    #[serde(default)]
    pub(super) unclassified: Option<Unclassified>,
    /// Classifications and their masking function.
    #[serde(default)]
    pub(super) classes: BTreeMap<String, Spanned<ClassDoc>>,
    /// Classification rules.
    #[serde(default)]
    pub(super) column: Vec<Spanned<ColumnDoc>>,
    /// Roles.
    #[serde(default)]
    pub(super) roles: BTreeMap<String, Spanned<RoleDoc>>,
    /// Per-tenant overrides.
    #[serde(default)]
    pub(super) tenants: BTreeMap<String, Spanned<TenantDoc>>,
    /// Extensions whose functions, operators and types are treated as built-ins (default: see
    /// `catalog::resolve::DEFAULT_TRUSTED_EXTENSIONS`).
    #[serde(default)]
    pub(super) trusted_extensions: Option<Spanned<Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ClassDoc {
    /// Masking function name.
    pub(super) mask: Spanned<String>,
    /// Free text for humans.
    #[serde(default)]
    #[allow(dead_code)]
    pub(super) description: Option<String>,
    #[serde(default)]
    pub(super) keep_first: Option<u32>,
    #[serde(default)]
    pub(super) keep_last: Option<u32>,
    #[serde(default)]
    pub(super) replacement: Option<String>,
    #[serde(default)]
    pub(super) length: Option<u32>,
    #[serde(default)]
    pub(super) to: Option<String>,
    #[serde(default)]
    pub(super) step: Option<u64>,
    #[serde(default)]
    pub(super) prefix_v4: Option<u32>,
    #[serde(default)]
    pub(super) prefix_v6: Option<u32>,
    #[serde(default)]
    pub(super) keys: Option<Vec<String>>,
    #[serde(default)]
    pub(super) case_insensitive: Option<bool>,
    #[serde(default)]
    pub(super) hide_length: Option<bool>,
    #[serde(default)]
    pub(super) mask_domain: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ColumnDoc {
    /// `schema.table.column`, `table.column` or `column`; `*` matches any run of characters in a part.
    #[serde(rename = "match")]
    pub(super) pattern: String,
    /// Classification name (a key of `[classes]`).
    pub(super) class: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RoleDoc {
    #[serde(default)]
    pub(super) unrestricted: bool,
    #[serde(default)]
    pub(super) raw: Vec<String>,
    #[serde(default)]
    pub(super) statements: Option<Vec<String>>,
    #[serde(default)]
    pub(super) allow_functions: Vec<String>,
    #[serde(default)]
    pub(super) allow_operators: Vec<String>,
    #[serde(default)]
    pub(super) unclassified: Option<Unclassified>,
    /// Exfiltration guard (`crate::exfil`).
    #[serde(default)]
    pub(super) guard: Option<GuardDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TenantDoc {
    #[serde(default)]
    pub(super) unclassified: Option<Unclassified>,
    #[serde(default)]
    pub(super) column: Vec<Spanned<ColumnDoc>>,
    #[serde(default)]
    pub(super) roles: BTreeMap<String, Spanned<TenantRoleDoc>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TenantRoleDoc {
    #[serde(default)]
    pub(super) raw: Option<Vec<String>>,
    #[serde(default)]
    pub(super) statements: Option<Vec<String>>,
    #[serde(default)]
    pub(super) allow_functions: Option<Vec<String>>,
    #[serde(default)]
    pub(super) allow_operators: Option<Vec<String>>,
    #[serde(default)]
    pub(super) unclassified: Option<Unclassified>,
    #[serde(default)]
    pub(super) guard: Option<GuardDoc>,
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
