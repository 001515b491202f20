//! Checks of the lists and names a policy file holds (statement kinds, allowed functions and operators,
//! class names), and where the files are.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::RawSet;
use crate::policy::kinds::StatementKind;

/// Every problem found so far, each located.
#[derive(Default)]
pub(super) struct Problems(pub(super) Vec<String>);

impl Problems {
    pub(super) fn push(&mut self, s: String) {
        self.0.push(s);
    }
}

pub(super) fn policy_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
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
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

pub(super) fn valid_class_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
        })
}

pub(super) fn raw_set(raw: &[String]) -> RawSet {
    if raw.iter().any(|r| r == "*") {
        RawSet::All
    } else {
        RawSet::Some(raw.iter().cloned().collect())
    }
}

pub(super) fn kinds(list: &[String], loc: &str, p: &mut Problems) -> HashSet<StatementKind> {
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

pub(super) fn functions(list: &[String], loc: &str, p: &mut Problems) -> HashSet<String> {
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
pub(super) fn operators(list: &[String], loc: &str, p: &mut Problems) -> HashSet<String> {
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
