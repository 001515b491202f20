//! A `[classes.NAME]` entry into its masking function: the function's own parameters checked, parameters
//! of other functions refused.

use super::doc::ClassDoc;
use crate::policy::functions::{Generalize, MaskFn, valid_json_key};

/// The masking function of a class, or every problem with it.
pub(super) fn mask_fn(c: &ClassDoc) -> Result<MaskFn, Vec<String>> {
    let mut errs = Vec::new();
    let name = c.mask.get_ref().as_str();
    let (allowed, f): (&[&str], _) = match name {
        "redact" => {
            let r = c.replacement.clone().unwrap_or_else(|| "[REDACTED]".into());
            check_text(&r, "replacement", &mut errs);
            (&["replacement"], Some(MaskFn::Redact { replacement: r }))
        }
        "null" => (&[], Some(MaskFn::Null)),
        "partial" => (
            &["keep_first", "keep_last", "replacement"],
            Some(partial(c, &mut errs)),
        ),
        "email" => (
            &["mask_domain"],
            Some(MaskFn::Email {
                mask_domain: c.mask_domain.unwrap_or(false),
            }),
        ),
        "pan" => (
            &["hide_length"],
            Some(MaskFn::Pan {
                hide_length: c.hide_length.unwrap_or(false),
            }),
        ),
        "pseudonym" => (&["length"], Some(pseudonym(c, &mut errs))),
        "generalize" => (
            &["to", "step", "prefix_v4", "prefix_v6"],
            generalize(c, &mut errs),
        ),
        "jsonb" => (
            &["keys", "replacement", "case_insensitive"],
            Some(jsonb(c, &mut errs)),
        ),
        other => {
            errs.push(format!(
                "unknown masking function {other:?} (known: redact, null, partial, email, pan, pseudonym, generalize, jsonb)"
            ));
            (&[], None)
        }
    };
    if f.is_some() {
        foreign_params(c, name, allowed, &mut errs);
    }
    match f {
        Some(f) if errs.is_empty() => Ok(f),
        _ => Err(errs),
    }
}

fn partial(c: &ClassDoc, errs: &mut Vec<String>) -> MaskFn {
    let (first, last) = (c.keep_first.unwrap_or(0), c.keep_last.unwrap_or(0));
    if first > 64 || last > 64 {
        errs.push("keep_first and keep_last must be at most 64".into());
    }
    if first + last == 0 {
        errs.push("partial needs keep_first and/or keep_last (otherwise use redact)".into());
    }
    let fill = c.replacement.clone().unwrap_or_else(|| "****".into());
    check_text(&fill, "replacement", errs);
    MaskFn::Partial { first, last, fill }
}

fn pseudonym(c: &ClassDoc, errs: &mut Vec<String>) -> MaskFn {
    let length = c.length.unwrap_or(16);
    if !(8..=64).contains(&length) {
        errs.push("length must be between 8 and 64 hex characters".into());
    }
    MaskFn::Pseudonym {
        length: length.min(64) as u8,
    }
}

fn generalize(c: &ClassDoc, errs: &mut Vec<String>) -> Option<MaskFn> {
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

fn jsonb(c: &ClassDoc, errs: &mut Vec<String>) -> MaskFn {
    let keys = c.keys.clone().unwrap_or_default();
    if keys.is_empty() {
        errs.push("jsonb needs `keys = [\"key\", \"nested.key\"]`".into());
    }
    let mut paths = Vec::new();
    for k in &keys {
        let path: Vec<String> = k.split('.').map(str::to_owned).collect();
        if path.len() > 8 || !path.iter().all(|s| valid_json_key(s)) {
            errs.push(format!(
                "jsonb key path {k:?}: keys are [A-Za-z0-9_-], dot-separated, at most 8 deep"
            ));
        }
        paths.push(path);
    }
    let r = c.replacement.clone().unwrap_or_else(|| "****".into());
    check_text(&r, "replacement", errs);
    MaskFn::JsonKeys {
        paths,
        replacement: r,
        case_insensitive: c.case_insensitive.unwrap_or(false),
    }
}

/// Refuses parameters set on the class that its masking function `name` does not take.
fn foreign_params(c: &ClassDoc, name: &str, allowed: &[&str], errs: &mut Vec<String>) {
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
    for (param, set) in given {
        if set && !allowed.contains(&param) {
            errs.push(format!(
                "`{param}` does not apply to masking function {name:?}"
            ));
        }
    }
}

fn check_text(s: &str, what: &str, errs: &mut Vec<String>) {
    if s.len() > 200 || s.chars().any(|c| c.is_control()) {
        errs.push(format!(
            "`{what}` must be at most 200 characters without control characters"
        ));
    }
}
