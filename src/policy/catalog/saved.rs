//! Saved catalogs: a tenant's [`Catalog`] as a JSON file, so that `pgveil policy explain|test --catalog` run
//! without a database. The file holds schema metadata only (schema, relation, column, type, function and
//! operator names, inheritance and view dependencies, the search path): never rows, credentials or keys.
//!
//! The format is versioned (`"format": 1`, checked before anything else is read) and stable: maps and sets
//! are written sorted and relations in (schema, name) order, so saving an unchanged schema twice gives the
//! same bytes. Column, parent and view-dependency lists keep their order (classification follows them in
//! order). A loaded catalog gets a fresh version number, like a live one.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::resolve::Resolution;
use super::{Catalog, Column, QualName, Relation, SYSTEM_SCHEMAS};
use crate::ids::TenantId;

/// The format this version of pgveil writes and reads.
pub const FORMAT: u64 = 1;

/// Relation kinds a catalog holds (`pg_class.relkind`).
const KINDS: &str = "rpvmfS";

/// Errors reading or writing a saved catalog; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum SavedError {
    /// The file could not be read.
    #[error("{}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// Not JSON, or not shaped like a saved catalog.
    #[error("{}: not a saved catalog: {message}", .path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong (with line and column where JSON gives them).
        message: String,
    },
    /// A format this version of pgveil does not know.
    #[error("{}: saved catalog format {found} is not supported (this pgveil reads format {FORMAT})", .path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// The format found, as written.
        found: String,
    },
    /// Well-formed JSON whose contents cannot be a catalog.
    #[error("{}: invalid saved catalog: {message}", .path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The file could not be written.
    #[error("writing {}: {source}", .path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
}

/// A catalog read from a file, with the tenant it was saved from.
#[derive(Debug, Clone)]
pub struct SavedCatalog {
    /// The tenant whose database the catalog was loaded from.
    pub tenant: TenantId,
    /// The catalog (with a fresh version).
    pub catalog: Catalog,
}

/// The file as written: field order is the order in the file.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRepr {
    format: u64,
    tenant: TenantId,
    search_path: Vec<String>,
    /// The database's encoding (absent in older files: unknown, the conservative reading).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    server_encoding: Option<String>,
    relations: Vec<RelationRepr>,
    /// Schema -> relation names.
    system_relations: BTreeMap<String, BTreeSet<String>>,
    /// Schema -> function names.
    functions: BTreeMap<String, BTreeSet<String>>,
    /// Schema -> operator names.
    operators: BTreeMap<String, BTreeSet<String>>,
    /// Extension ownership, operator signatures, casts, column types (absent in older files: read as empty,
    /// the conservative reading).
    #[serde(default)]
    resolution: Resolution,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RelationRepr {
    schema: String,
    name: String,
    kind: String,
    columns: Vec<Column>,
    parents: Vec<NameRepr>,
    /// Output column -> the columns its expression reads.
    reads: BTreeMap<String, Vec<ColumnRefRepr>>,
    calls: Vec<NameRepr>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NameRepr {
    schema: String,
    name: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ColumnRefRepr {
    schema: String,
    table: String,
    column: String,
}

/// Only the format, read first so that a newer file is reported as such rather than as unknown fields.
#[derive(Deserialize)]
struct Header {
    format: serde_json::Value,
}

fn name_repr((schema, name): &QualName) -> NameRepr {
    NameRepr {
        schema: schema.clone(),
        name: name.clone(),
    }
}

fn grouped(set: &HashSet<QualName>) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (schema, name) in set {
        out.entry(schema.clone()).or_default().insert(name.clone());
    }
    out
}

fn ungrouped(map: BTreeMap<String, BTreeSet<String>>) -> HashSet<QualName> {
    map.into_iter()
        .flat_map(|(schema, names)| names.into_iter().map(move |n| (schema.clone(), n)))
        .collect()
}

/// The JSON text of `catalog` saved from `tenant` (its version is not saved).
pub fn to_json(tenant: &TenantId, catalog: &Catalog) -> Result<String, serde_json::Error> {
    let mut relations: Vec<&Relation> = catalog.relations.values().collect();
    relations.sort_by(|a, b| (&a.schema, &a.name).cmp(&(&b.schema, &b.name)));
    let repr = FileRepr {
        format: FORMAT,
        tenant: tenant.clone(),
        search_path: catalog.search_path.clone(),
        server_encoding: catalog.server_encoding.clone(),
        relations: relations
            .into_iter()
            .map(|r| RelationRepr {
                schema: r.schema.clone(),
                name: r.name.clone(),
                kind: r.kind.to_string(),
                columns: r.columns.clone(),
                parents: r.parents.iter().map(name_repr).collect(),
                reads: r
                    .reads
                    .iter()
                    .map(|(col, srcs)| {
                        let srcs = srcs
                            .iter()
                            .map(|((schema, table), column)| ColumnRefRepr {
                                schema: schema.clone(),
                                table: table.clone(),
                                column: column.clone(),
                            })
                            .collect();
                        (col.clone(), srcs)
                    })
                    .collect(),
                calls: r.calls.iter().map(name_repr).collect(),
            })
            .collect(),
        system_relations: grouped(&catalog.system_relations),
        functions: grouped(&catalog.functions),
        operators: grouped(&catalog.operators),
        resolution: catalog.resolution.clone(),
    };
    let mut text = serde_json::to_string_pretty(&repr)?;
    text.push('\n');
    Ok(text)
}

/// Parses the JSON text of a saved catalog; `path` names the file in errors.
pub fn from_json(text: &str, path: &Path) -> Result<SavedCatalog, SavedError> {
    let parse = |e: serde_json::Error| SavedError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let invalid = |message: String| SavedError::Invalid {
        path: path.to_owned(),
        message,
    };
    let header: Header = serde_json::from_str(text).map_err(parse)?;
    if header.format.as_u64() != Some(FORMAT) {
        return Err(SavedError::Format {
            path: path.to_owned(),
            found: header.format.to_string(),
        });
    }
    let repr: FileRepr = serde_json::from_str(text).map_err(parse)?;
    let mut relations = HashMap::with_capacity(repr.relations.len());
    for r in repr.relations {
        let at = format!("relation {}.{}", r.schema, r.name);
        let mut kind = r.kind.chars();
        let kind = match (kind.next(), kind.next()) {
            (Some(k), None) if KINDS.contains(k) => k,
            _ => {
                return Err(invalid(format!(
                    "{at}: kind {:?} is not one of {KINDS:?}",
                    r.kind
                )));
            }
        };
        if r.schema.is_empty() || r.name.is_empty() {
            return Err(invalid(format!("{at}: empty schema or relation name")));
        }
        if SYSTEM_SCHEMAS.contains(&r.schema.as_str()) {
            return Err(invalid(format!(
                "{at}: relations of system schemas belong in system_relations"
            )));
        }
        let mut seen = HashSet::new();
        if let Some(c) = r.columns.iter().find(|c| !seen.insert(c.name.as_str())) {
            return Err(invalid(format!("{at}: column {} listed twice", c.name)));
        }
        let rel = Relation {
            kind,
            columns: r.columns,
            parents: r.parents.into_iter().map(|n| (n.schema, n.name)).collect(),
            reads: r
                .reads
                .into_iter()
                .map(|(col, srcs)| {
                    let srcs = srcs
                        .into_iter()
                        .map(|c| ((c.schema, c.table), c.column))
                        .collect();
                    (col, srcs)
                })
                .collect(),
            calls: r.calls.into_iter().map(|n| (n.schema, n.name)).collect(),
            schema: r.schema,
            name: r.name,
        };
        let key = (rel.schema.clone(), rel.name.clone());
        if relations.insert(key, rel).is_some() {
            return Err(invalid(format!("{at} listed twice")));
        }
    }
    Ok(SavedCatalog {
        tenant: repr.tenant,
        catalog: Catalog {
            version: super::fresh_version(),
            search_path: repr.search_path,
            server_encoding: repr.server_encoding,
            relations,
            system_relations: ungrouped(repr.system_relations),
            functions: ungrouped(repr.functions),
            operators: ungrouped(repr.operators),
            resolution: repr.resolution,
        },
    })
}

/// Writes `catalog` of `tenant` to `path` atomically (a temporary file in the same folder, then a rename):
/// readers see the old file or the new one, never half of one.
pub fn save(path: &Path, tenant: &TenantId, catalog: &Catalog) -> Result<(), SavedError> {
    let write = |source: std::io::Error| SavedError::Write {
        path: path.to_owned(),
        source,
    };
    let text = to_json(tenant, catalog).map_err(|e| write(std::io::Error::other(e)))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".pgveil-catalog-")
        .tempfile_in(dir)
        .map_err(write)?;
    tmp.write_all(text.as_bytes()).map_err(write)?;
    tmp.as_file().sync_all().map_err(write)?;
    tmp.persist(path).map_err(|e| write(e.error))?;
    Ok(())
}

/// Reads a saved catalog.
pub fn load(path: &Path) -> Result<SavedCatalog, SavedError> {
    let text = std::fs::read_to_string(path).map_err(|source| SavedError::Read {
        path: path.to_owned(),
        source,
    })?;
    from_json(&text, path)
}

#[cfg(test)]
mod tests;
