//! A tenant's catalog snapshot: what the rewriter needs to resolve names the way PostgreSQL does and to know
//! which columns a relation has. Immutable and versioned; [`load`] builds one from a live database.
//!
//! Classification propagates: a column of a partition or inheritance child has its parent column's class, a
//! generated column the class of a column it is computed from, and a view or materialized view column the
//! classes of the classified columns its defining expression reads ([`lineage`]). A column can so have
//! several classes ([`Catalog::classes`]); the rewriter then masks it at least as strictly as the strictest.
//!
//! [`saved`] writes a snapshot to a JSON file and reads it back, for the policy tools to work offline.

pub mod lineage;
pub mod load;
pub mod orderings;
pub mod overloads;
pub mod pool;
pub mod resolve;
pub mod saved;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

use super::functions::{ColumnType, TypeFamily};

static NEXT_VERSION: AtomicU64 = AtomicU64::new(1);

/// A version number no other snapshot of this process has (live loads and saved files alike).
pub fn fresh_version() -> u64 {
    NEXT_VERSION.fetch_add(1, Ordering::SeqCst)
}

/// Schemas whose relations are PostgreSQL's own.
pub const SYSTEM_SCHEMAS: &[&str] = &["pg_catalog", "information_schema"];

/// One column (saved catalogs store it as is).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Column {
    /// Name.
    pub name: String,
    /// `format_type(atttypid, atttypmod)`.
    pub sql_type: String,
    /// Type family.
    pub family: TypeFamily,
    /// Base type name (domains resolved).
    pub base: String,
    /// Columns of the same relation this one is generated from.
    pub generated_from: Vec<String>,
}

impl Column {
    /// The column's type as masking functions see it.
    pub fn ty(&self) -> ColumnType<'_> {
        ColumnType {
            sql_type: &self.sql_type,
            family: self.family,
            base: &self.base,
        }
    }
}

/// The pseudo-class of a column derived through more than 16 levels (no policy can define it: class names
/// cannot contain spaces).
pub const TOO_DEEP: &str = "derived too deeply";

/// A qualified relation name.
pub type QualName = (String, String);

/// A relation outside the system schemas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// Schema.
    pub schema: String,
    /// Name.
    pub name: String,
    /// `pg_class.relkind`: r, p, v, m, f.
    pub kind: char,
    /// Columns in attnum order.
    pub columns: Vec<Column>,
    /// Inheritance/partition parents.
    pub parents: Vec<QualName>,
    /// For views and materialized views: per output column, the (relation, column) pairs its expression reads.
    pub reads: HashMap<String, Vec<(QualName, String)>>,
    /// Functions outside `pg_catalog` the view's definition calls (such a view is refused for masked roles
    /// unless every one is allow-listed: the function could read anything).
    pub calls: Vec<QualName>,
}

/// A tenant's catalog.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Snapshot version (unique across tenants and loads).
    pub version: u64,
    /// Schemas searched for unqualified names, after the implicit `pg_catalog` (`current_schemas(false)`).
    pub search_path: Vec<String>,
    /// The database's encoding (`server_encoding`), when known (saved catalogs do not record it).
    pub server_encoding: Option<String>,
    /// Relations outside the system schemas.
    pub relations: HashMap<QualName, Relation>,
    /// Relation names in the system schemas.
    pub system_relations: HashSet<QualName>,
    /// Tenant-defined functions: outside `pg_catalog` and `information_schema`, not owned by an extension.
    pub functions: HashSet<QualName>,
    /// Tenant-defined operators: outside `pg_catalog`, not owned by an extension.
    pub operators: HashSet<QualName>,
    /// Extension ownership, operator signatures, casts and column types (resolution by argument types).
    pub resolution: resolve::Resolution,
}

/// How a name resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved<'a> {
    /// A relation of the system schemas.
    System(QualName),
    /// A user relation.
    User(&'a Relation),
    /// Nothing by that name is visible.
    Unknown,
}

impl Catalog {
    /// Resolves a relation name as PostgreSQL would: qualified names directly; unqualified names in
    /// `pg_catalog` first, then the search path. (A temporary schema would come first; masked roles cannot
    /// create temporary objects and pooled backends are reset with `DISCARD ALL`.)
    pub fn resolve(&self, schema: Option<&str>, name: &str) -> Resolved<'_> {
        let lookup = |s: &str| -> Option<Resolved<'_>> {
            let key = (s.to_owned(), name.to_owned());
            if self.system_relations.contains(&key) {
                Some(Resolved::System(key))
            } else {
                self.relations.get(&key).map(Resolved::User)
            }
        };
        match schema {
            Some(s) => lookup(s).unwrap_or(Resolved::Unknown),
            None => std::iter::once("pg_catalog")
                .chain(self.search_path.iter().map(String::as_str))
                .find_map(lookup)
                .unwrap_or(Resolved::Unknown),
        }
    }

    /// Whether an unqualified function name could resolve to a tenant-defined function.
    pub fn user_function_named(&self, name: &str) -> bool {
        self.functions.iter().any(|(_, n)| n == name)
    }

    /// Whether a three-part name's first part names this tenant's database.
    pub fn is_own_database(&self, name: &str) -> bool {
        !self.resolution.database.is_empty() && self.resolution.database == name
    }

    /// The first classification of a column (see [`Catalog::classes`]).
    pub fn classify<'p>(
        &self,
        rel: &Relation,
        column: &str,
        direct: &dyn Fn(&str, &str, &str) -> Option<&'p str>,
    ) -> Option<&'p str> {
        self.classes(rel, column, direct).first().copied()
    }

    /// Every classification a column's values come from, without duplicates: its own rule's, and those of
    /// the columns it is derived from (inheritance and partition parents, the columns a generated column is
    /// computed from, the columns a view column reads). Deeper than 16 levels of derivation (pathological),
    /// [`TOO_DEEP`] is added: no policy defines it, so the rewriter refuses such a column instead of guessing.
    pub fn classes<'p>(
        &self,
        rel: &Relation,
        column: &str,
        direct: &dyn Fn(&str, &str, &str) -> Option<&'p str>,
    ) -> Vec<&'p str> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        self.collect_classes(rel, column, direct, 0, &mut seen, &mut out);
        out
    }

    fn collect_classes<'p>(
        &self,
        rel: &Relation,
        column: &str,
        direct: &dyn Fn(&str, &str, &str) -> Option<&'p str>,
        depth: usize,
        seen: &mut HashSet<(String, String, String)>,
        out: &mut Vec<&'p str>,
    ) {
        // A column reached twice (views over views whose lineage was not derivable read every input) adds
        // nothing the first visit did not: without this the walk grows exponentially with view nesting.
        if !seen.insert((rel.schema.clone(), rel.name.clone(), column.to_owned())) {
            return;
        }
        if depth > 16 {
            if !out.contains(&TOO_DEEP) {
                out.push(TOO_DEEP);
            }
            return;
        }
        let mut add = |c: &'p str| {
            if !out.contains(&c) {
                out.push(c);
            }
        };
        if let Some(c) = direct(&rel.schema, &rel.name, column) {
            add(c);
        }
        let mut sources: Vec<(&Relation, &str)> = Vec::new();
        if let Some(col) = rel.columns.iter().find(|c| c.name == column) {
            sources.extend(
                col.generated_from
                    .iter()
                    .filter(|s| *s != column)
                    .map(|s| (rel, s.as_str())),
            );
        }
        for p in &rel.parents {
            if let Some(parent) = self.relations.get(p) {
                sources.push((parent, column));
            }
        }
        for (src_rel, src_col) in rel.reads.get(column).into_iter().flatten() {
            if let Some(src) = self.relations.get(src_rel) {
                sources.push((src, src_col.as_str()));
            }
        }
        for (r, c) in sources {
            self.collect_classes(r, c, direct, depth + 1, seen, out);
        }
    }
}

#[cfg(test)]
pub mod fixture;
