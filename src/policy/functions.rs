//! Masking functions: each turns a column into a SQL expression built only from PostgreSQL built-ins
//! (no extension needed in tenant databases). Every piece of policy text that reaches SQL is validated here
//! (numbers are typed and range-checked, strings are quoted by [`quote_literal`], identifiers by
//! [`quote_ident`]); nothing from a policy file is ever spliced raw.

mod expression;

use std::fmt::Write as _;

use sha2::{Digest, Sha256};

/// How a date/number/address is generalized.
#[derive(Debug, Clone, PartialEq)]
pub enum Generalize {
    /// Dates and timestamps truncated to the first day of their month.
    Month,
    /// Dates and timestamps truncated to the first day of their year.
    Year,
    /// Numbers rounded down to a multiple of `step` (the bucket's lower bound; type kept).
    Step(u64),
    /// Addresses reduced to their network: IPv4 `/v4`, IPv6 `/v6` (type `inet` kept).
    Network {
        /// IPv4 prefix length (0-32).
        v4: u8,
        /// IPv6 prefix length (0-128).
        v6: u8,
    },
}

/// A masking function, validated.
#[derive(Debug, Clone, PartialEq)]
pub enum MaskFn {
    /// A constant in place of every non-NULL value (text types); NULL for other types.
    Redact {
        /// The constant.
        replacement: String,
    },
    /// NULL of the column's type.
    Null,
    /// Keep the first/last characters, replace the middle; values too short to hide anything become `fill`.
    Partial {
        /// Characters kept at the start.
        first: u32,
        /// Characters kept at the end.
        last: u32,
        /// What replaces the middle.
        fill: String,
    },
    /// `****@domain`: the domain is kept when it looks like a domain name (else `****@****`).
    Email {
        /// Mask the domain too: `****@****`.
        mask_domain: bool,
    },
    /// Card number: every digit but the last four replaced by `*` (numbers shorter than 12 digits fully).
    Pan {
        /// Always 12 `*` before the last four (16 `*` for short numbers), so the digit count is hidden.
        hide_length: bool,
    },
    /// Keyed HMAC-SHA256 of the value's text, hex, optionally shortened: deterministic per tenant.
    Pseudonym {
        /// Hex characters kept (8-64).
        length: u8,
    },
    /// Generalization of dates, numbers or addresses.
    Generalize(Generalize),
    /// Replace the values of these keys inside a json/jsonb document, at any depth and inside arrays.
    JsonKeys {
        /// Key paths, each a list of keys; a path matches the last keys of a value's path (array positions
        /// are transparent), so `["email"]` masks every `email` key and `["payer", "email"]` every `email`
        /// directly inside a `payer` object.
        paths: Vec<Vec<String>>,
        /// The JSON string put in place of each masked value (whole objects and arrays included).
        replacement: String,
        /// Match keys without regard to ASCII letter case.
        case_insensitive: bool,
    },
}

/// The pseudonym key of one tenant, expanded to HMAC's inner and outer pads. Its `Debug` is redacted.
#[derive(Clone)]
pub struct PseudonymKey {
    // Key material: private, never printed (redacted Debug), only rendered into SQL sent to the backend.
    ipad: Vec<u8>,
    opad: Vec<u8>,
}

impl std::fmt::Debug for PseudonymKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PseudonymKey([REDACTED])")
    }
}

impl PseudonymKey {
    /// Expands a key (any length; longer than the block size is hashed first, as HMAC specifies).
    pub fn new(key: &[u8]) -> Self {
        let mut block = [0u8; 64];
        if key.len() > 64 {
            block[..32].copy_from_slice(&Sha256::digest(key));
        } else {
            block[..key.len()].copy_from_slice(key);
        }
        let ipad: Vec<u8> = block.iter().map(|b| b ^ 0x36).collect();
        let opad: Vec<u8> = block.iter().map(|b| b ^ 0x5c).collect();
        Self { ipad, opad }
    }

    /// HMAC-SHA256 computed in Rust (the reference the SQL expression must match).
    pub fn hmac_hex(&self, msg: &[u8]) -> String {
        let mut inner = Sha256::new();
        inner.update(&self.ipad);
        inner.update(msg);
        let mut outer = Sha256::new();
        outer.update(&self.opad);
        outer.update(inner.finalize());
        hex::encode(outer.finalize())
    }
}

/// Errors building a mask expression for a column.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaskError {
    /// The function does not apply to the column's type.
    #[error("masking function {function} does not apply to type {type_name}")]
    WrongType {
        /// Function name.
        function: &'static str,
        /// Column type.
        type_name: String,
    },
    /// A pseudonym is needed but the tenant has no key loaded.
    #[error("no pseudonym key is loaded for this tenant")]
    NoKey,
}

/// Broad type families the functions care about. Saved catalogs spell them in lower case (`"text"`, `"json"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TypeFamily {
    /// text, varchar, char, name, citext.
    Text,
    /// date.
    Date,
    /// timestamp, timestamptz.
    Timestamp,
    /// integers, numeric, floats.
    Number,
    /// inet, cidr.
    Inet,
    /// json, jsonb.
    Json,
    /// Anything else.
    Other,
}

impl TypeFamily {
    /// Classifies a type by its `pg_type.typcategory` and base type name.
    pub fn of(category: char, base_name: &str) -> TypeFamily {
        match (category, base_name) {
            ('S', _) => TypeFamily::Text,
            (_, "date") => TypeFamily::Date,
            (_, "timestamp" | "timestamptz") => TypeFamily::Timestamp,
            ('N', _) => TypeFamily::Number,
            ('I', _) => TypeFamily::Inet,
            (_, "json" | "jsonb") => TypeFamily::Json,
            _ => TypeFamily::Other,
        }
    }
}

/// A column as the functions see it.
#[derive(Debug, Clone, Copy)]
pub struct ColumnType<'a> {
    /// `format_type(atttypid, atttypmod)`, already valid SQL type syntax (PostgreSQL quotes it).
    pub sql_type: &'a str,
    /// Type family.
    pub family: TypeFamily,
    /// Base type name (`jsonb`, `date`, ...).
    pub base: &'a str,
}

impl MaskFn {
    /// The function's name as written in policies.
    pub fn name(&self) -> &'static str {
        match self {
            MaskFn::Redact { .. } => "redact",
            MaskFn::Null => "null",
            MaskFn::Partial { .. } => "partial",
            MaskFn::Email { .. } => "email",
            MaskFn::Pan { .. } => "pan",
            MaskFn::Pseudonym { .. } => "pseudonym",
            MaskFn::Generalize(_) => "generalize",
            MaskFn::JsonKeys { .. } => "jsonb",
        }
    }

    /// Whether the expression embeds key material (then its text must never be shown to the client).
    pub fn uses_key(&self) -> bool {
        matches!(self, MaskFn::Pseudonym { .. })
    }
}

/// Quotes a string as a standard SQL literal (`standard_conforming_strings = on` is forced on every backend,
/// so backslashes are ordinary characters; quotes are doubled). NUL bytes cannot appear in PostgreSQL text
/// and are rejected by policy validation before this is called.
pub fn quote_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push('\'');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// Quotes an identifier (always, so case and keywords are preserved exactly).
pub fn quote_ident(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// A JSON key as allowed in `jsonb` masking paths: letters, digits, `_`, `-`, 1-63 characters.
pub fn valid_json_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 63
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Renders `name(params)` for explain output.
pub fn describe(f: &MaskFn) -> String {
    let mut s = f.name().to_owned();
    match f {
        MaskFn::Partial { first, last, .. } => {
            let _ = write!(s, "(first={first}, last={last})");
        }
        MaskFn::Pseudonym { length } => {
            let _ = write!(s, "(length={length})");
        }
        MaskFn::Generalize(g) => {
            let _ = write!(s, "({g:?})");
        }
        MaskFn::Email { mask_domain: true } => s.push_str("(mask_domain)"),
        MaskFn::Pan { hide_length: true } => s.push_str("(hide_length)"),
        MaskFn::JsonKeys {
            case_insensitive: true,
            ..
        } => s.push_str("(case_insensitive)"),
        _ => {}
    }
    s
}

#[cfg(test)]
mod tests;
