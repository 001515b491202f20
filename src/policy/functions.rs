//! Masking functions: each turns a column into a SQL expression built only from PostgreSQL built-ins
//! (no extension needed in tenant databases). Every piece of policy text that reaches SQL is validated here
//! (numbers are typed and range-checked, strings are quoted by [`quote_literal`], identifiers by
//! [`quote_ident`]); nothing from a policy file is ever spliced raw.

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

    /// The SQL expression masking column `col` (an already quoted identifier) of type `ty`.
    pub fn expression(
        &self,
        col: &str,
        ty: ColumnType<'_>,
        key: Option<&PseudonymKey>,
    ) -> Result<String, MaskError> {
        let wrong = || MaskError::WrongType {
            function: self.name(),
            type_name: ty.sql_type.to_owned(),
        };
        // The value as text, the same whatever the session's settings (DateStyle, TimeZone, ...).
        let text = || stable_text(col, ty).ok_or_else(wrong);
        // Text results are cast back to the column's type when it is a text type, so clients see the same type.
        let back = |e: String| -> String {
            if ty.family == TypeFamily::Text {
                format!("CAST({e} AS {})", ty.sql_type)
            } else {
                e
            }
        };
        Ok(match self {
            MaskFn::Null => format!("CAST(NULL AS {})", ty.sql_type),
            MaskFn::Redact { replacement } => {
                if ty.family == TypeFamily::Text {
                    format!(
                        "CASE WHEN {col} IS NULL THEN NULL ELSE CAST({} AS {}) END",
                        quote_literal(replacement),
                        ty.sql_type
                    )
                } else {
                    format!("CAST(NULL AS {})", ty.sql_type)
                }
            }
            MaskFn::Partial { first, last, fill } => {
                // At most half of a value's characters are ever shown; shorter values are fully replaced.
                let text = text()?;
                let keep = u64::from(*first) + u64::from(*last);
                back(format!(
                    "CASE WHEN {col} IS NULL THEN NULL WHEN pg_catalog.length({text}) >= {min} \
                     THEN pg_catalog.left({text}, {first}) || {f} || pg_catalog.right({text}, {last}) ELSE {f} END",
                    min = keep * 2,
                    f = quote_literal(fill)
                ))
            }
            MaskFn::Email { mask_domain } => {
                let text = text()?;
                back(if *mask_domain {
                    format!("CASE WHEN {text} IS NULL THEN NULL ELSE '****@****' END")
                } else {
                    // Only a domain name is kept: a value with anything else after its last `@` (several
                    // values concatenated, free text) shows `@****`.
                    format!(
                        "CASE WHEN {col} IS NULL THEN NULL ELSE '****' || \
                         COALESCE(pg_catalog.substring({text}, '^[^@]*(@[A-Za-z0-9.-]{{1,253}})$'), \
                         CASE WHEN pg_catalog.strpos({text}, '@') > 0 THEN '@****' ELSE '' END) END"
                    )
                })
            }
            MaskFn::Pan { hide_length } => {
                let text = text()?;
                let digits = format!("pg_catalog.regexp_replace({text}, '[^0-9]', '', 'g')");
                let (stars, short) = if *hide_length {
                    ("'************'".to_owned(), "'****************'".to_owned())
                } else {
                    (
                        format!("pg_catalog.repeat('*', pg_catalog.length({digits}) - 4)"),
                        format!("pg_catalog.repeat('*', pg_catalog.length({digits}))"),
                    )
                };
                back(format!(
                    "CASE WHEN {col} IS NULL THEN NULL WHEN pg_catalog.length({digits}) >= 12 \
                     THEN {stars} || pg_catalog.right({digits}, 4) ELSE {short} END"
                ))
            }
            MaskFn::Pseudonym { length } => {
                let key = key.ok_or(MaskError::NoKey)?;
                let text = text()?;
                let inner = format!(
                    "pg_catalog.sha256('\\x{}'::bytea || pg_catalog.convert_to({text}, 'UTF8'))",
                    hex::encode(&key.ipad)
                );
                let mac = format!(
                    "pg_catalog.encode(pg_catalog.sha256('\\x{}'::bytea || {inner}), 'hex')",
                    hex::encode(&key.opad)
                );
                let mac = if *length < 64 {
                    format!("pg_catalog.left({mac}, {length})")
                } else {
                    mac
                };
                back(mac)
            }
            MaskFn::Generalize(g) => match (g, ty.family) {
                (
                    Generalize::Month | Generalize::Year,
                    TypeFamily::Date | TypeFamily::Timestamp,
                ) => {
                    let unit = if *g == Generalize::Month {
                        "month"
                    } else {
                        "year"
                    };
                    // Truncated in UTC (timestamptz) or without a zone (date, timestamp): the session's
                    // TimeZone must not move the boundary (a moved boundary reveals the exact time).
                    let trunc = if ty.base == "timestamptz" {
                        format!(
                            "pg_catalog.timezone('UTC', pg_catalog.date_trunc('{unit}', pg_catalog.timezone('UTC', {col}::pg_catalog.timestamptz)))"
                        )
                    } else {
                        format!("pg_catalog.date_trunc('{unit}', {col}::pg_catalog.timestamp)")
                    };
                    format!("CAST({trunc} AS {})", ty.sql_type)
                }
                (Generalize::Step(step), TypeFamily::Number) => {
                    format!(
                        "CAST(pg_catalog.floor({col}::numeric / {step}) * {step} AS {})",
                        ty.sql_type
                    )
                }
                (Generalize::Network { v4, v6 }, TypeFamily::Inet) => format!(
                    "CAST(CASE WHEN pg_catalog.family({col}) = 4 THEN pg_catalog.network(pg_catalog.set_masklen({col}::inet, {v4})) \
                     ELSE pg_catalog.network(pg_catalog.set_masklen({col}::inet, {v6})) END AS {})",
                    ty.sql_type
                ),
                _ => return Err(wrong()),
            },
            MaskFn::JsonKeys {
                paths,
                replacement,
                case_insensitive,
            } => {
                if ty.family != TypeFamily::Json {
                    return Err(wrong());
                }
                let value =
                    quote_literal(&serde_json::Value::String(replacement.clone()).to_string());
                let e = json_keys(
                    &format!("{col}::pg_catalog.jsonb"),
                    paths,
                    &value,
                    *case_insensitive,
                );
                format!("CAST({e} AS {})", ty.sql_type)
            }
        })
    }
}

/// The text of column `col` of type `ty`, independent of every session setting: dates and timestamps
/// formatted explicitly (timestamptz in UTC), floats through `numeric` (not `extra_float_digits`), bytea as
/// hex (not `bytea_output`), intervals with `to_char` (not `IntervalStyle`). `None` for types whose text
/// could depend on a setting and that pgveil cannot format explicitly (money follows `lc_monetary`; enums,
/// composites, ranges and arrays of other types may hold any of the above): masks that need text refuse
/// those columns.
fn stable_text(col: &str, ty: ColumnType<'_>) -> Option<String> {
    const TEXT_SAFE: &[&str] = &[
        "bool", "uuid", "bit", "varbit", "time", "timetz", "oid", "xml", "tsvector", "tsquery",
        "macaddr", "macaddr8", "int2", "int4", "int8", "numeric", "text", "varchar", "bpchar",
        "name", "char", "citext", "json", "jsonb", "inet", "cidr",
    ];
    let base = ty.base;
    Some(match (ty.family, base) {
        (TypeFamily::Text | TypeFamily::Json | TypeFamily::Inet, _) => {
            format!("{col}::pg_catalog.text")
        }
        (TypeFamily::Date, _) => format!("pg_catalog.to_char({col}, 'YYYY-MM-DD')"),
        (TypeFamily::Timestamp, "timestamptz") => format!(
            "pg_catalog.to_char(pg_catalog.timezone('UTC', {col}::pg_catalog.timestamptz), 'YYYY-MM-DD HH24:MI:SS.US')"
        ),
        (TypeFamily::Timestamp, _) => {
            format!("pg_catalog.to_char({col}::pg_catalog.timestamp, 'YYYY-MM-DD HH24:MI:SS.US')")
        }
        (_, "float4" | "float8") => format!("{col}::pg_catalog.numeric::pg_catalog.text"),
        (_, "money") => return None,
        (TypeFamily::Number, _) => format!("{col}::pg_catalog.text"),
        (_, "bytea") => format!("pg_catalog.encode({col}, 'hex')"),
        (_, "interval") => format!("pg_catalog.to_char({col}, 'YYYY-MM-DD HH24:MI:SS.US')"),
        (_, b) if TEXT_SAFE.contains(&b) => format!("{col}::pg_catalog.text"),
        // Arrays of those (`_text`, `_int8`, ...): element text and array quoting follow no setting.
        (_, b) if b.strip_prefix('_').is_some_and(|e| TEXT_SAFE.contains(&e)) => {
            format!("{col}::pg_catalog.text")
        }
        _ => return None,
    })
}

/// `doc` (a jsonb expression) with the value of every key matching one of `paths` replaced by `value` (a
/// quoted jsonb literal), at any depth and inside arrays. Built only from built-ins: a recursive CTE walks the
/// document (objects with `jsonb_each`, arrays with `jsonb_array_elements`), keeping each value's path and
/// its object keys; matched values are not walked further; a second recursive CTE applies `jsonb_set` once
/// per match. A document that is a scalar or an array is walked the same way, so no shape makes reads fail.
fn json_keys(doc: &str, paths: &[Vec<String>], value: &str, case_insensitive: bool) -> String {
    let key_at = |back: usize| -> String {
        let k = format!("w.k[pg_catalog.cardinality(w.k) - {back}]");
        if case_insensitive {
            format!("pg_catalog.lower({k} COLLATE \"C\")")
        } else {
            k
        }
    };
    let matches = paths
        .iter()
        .map(|path| {
            let mut conds = vec![format!("pg_catalog.cardinality(w.k) >= {}", path.len())];
            for (back, key) in path.iter().rev().enumerate() {
                let key = if case_insensitive {
                    key.to_ascii_lowercase()
                } else {
                    key.clone()
                };
                conds.push(format!("{} = {}", key_at(back), quote_literal(&key)));
            }
            format!("({})", conds.join(" AND "))
        })
        .collect::<Vec<_>>()
        .join(" OR ");
    let hit = format!("(w.iskey AND ({matches}))");
    format!(
        "(WITH RECURSIVE pgveil_w(p, k, v, iskey) AS (\
         SELECT ARRAY[]::pg_catalog.text[], ARRAY[]::pg_catalog.text[], {doc}, false \
         UNION ALL SELECT w.p || c.key, CASE WHEN c.iskey THEN w.k || c.key ELSE w.k END, c.value, c.iskey \
         FROM pgveil_w w CROSS JOIN LATERAL (\
         SELECT o.key, o.value, true FROM pg_catalog.jsonb_each(CASE WHEN pg_catalog.jsonb_typeof(w.v) = 'object' THEN w.v END) o \
         UNION ALL SELECT (a.n - 1)::pg_catalog.text, a.value, false \
         FROM pg_catalog.jsonb_array_elements(CASE WHEN pg_catalog.jsonb_typeof(w.v) = 'array' THEN w.v END) WITH ORDINALITY a(value, n)\
         ) c(key, value, iskey) WHERE NOT COALESCE({hit}, false)), \
         pgveil_h AS (SELECT w.p, pg_catalog.row_number() OVER () AS n FROM pgveil_w w WHERE {hit}), \
         pgveil_a(n, d) AS (SELECT 0::pg_catalog.int8, {doc} \
         UNION ALL SELECT a.n + 1, pg_catalog.jsonb_set(a.d, h.p, {value}::pg_catalog.jsonb, false) \
         FROM pgveil_a a JOIN pgveil_h h ON h.n = a.n + 1) \
         SELECT a.d FROM pgveil_a a ORDER BY a.n DESC LIMIT 1)"
    )
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
mod tests {
    use super::*;

    fn text() -> ColumnType<'static> {
        ColumnType {
            sql_type: "text",
            family: TypeFamily::Text,
            base: "text",
        }
    }

    #[test]
    fn literals_are_quoted() {
        assert_eq!(quote_literal("a'b\\c"), "'a''b\\c'");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        let e = MaskFn::Redact {
            replacement: "x'); DROP TABLE t; --".into(),
        }
        .expression("\"c\"", text(), None)
        .unwrap();
        assert!(e.contains("'x''); DROP TABLE t; --'"), "{e}");
    }

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let k = PseudonymKey::new(b"Jefe");
        assert_eq!(
            k.hmac_hex(b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(!format!("{k:?}").contains("Jefe"));
    }

    #[test]
    fn text_forms_do_not_depend_on_session_settings() {
        let ty = |sql_type: &'static str, family, base: &'static str| ColumnType {
            sql_type,
            family,
            base,
        };
        let key = PseudonymKey::new(b"k");
        let p = MaskFn::Pseudonym { length: 16 };
        let e = |t| p.expression("\"c\"", t, Some(&key)).unwrap();
        let tz = e(ty(
            "timestamp with time zone",
            TypeFamily::Timestamp,
            "timestamptz",
        ));
        assert!(
            tz.contains("pg_catalog.timezone('UTC'") && tz.contains("to_char"),
            "{tz}"
        );
        assert!(e(ty("date", TypeFamily::Date, "date")).contains("'YYYY-MM-DD'"));
        assert!(
            e(ty("double precision", TypeFamily::Number, "float8"))
                .contains("::pg_catalog.numeric")
        );
        assert!(e(ty("bytea", TypeFamily::Other, "bytea")).contains("encode(\"c\", 'hex')"));
        assert!(e(ty("interval", TypeFamily::Other, "interval")).contains("to_char(\"c\""));
        // Types whose text follows a setting pgveil cannot pin are refused, not guessed.
        for (t, f, b) in [
            ("money", TypeFamily::Number, "money"),
            ("mood", TypeFamily::Other, "mood"),
        ] {
            assert!(
                p.expression("\"c\"", ty(t, f, b), Some(&key)).is_err(),
                "{t}"
            );
        }
        let g = MaskFn::Generalize(Generalize::Year)
            .expression(
                "\"c\"",
                ty(
                    "timestamp with time zone",
                    TypeFamily::Timestamp,
                    "timestamptz",
                ),
                None,
            )
            .unwrap();
        assert!(
            g.contains("pg_catalog.timezone('UTC', pg_catalog.date_trunc('year'"),
            "{g}"
        );
    }

    #[test]
    fn functions_keep_a_bounded_share() {
        let partial = MaskFn::Partial {
            first: 2,
            last: 3,
            fill: "****".into(),
        }
        .expression("\"c\"", text(), None)
        .unwrap();
        assert!(
            partial.contains(">= 10 THEN"),
            "at most half shown: {partial}"
        );
        let pan = MaskFn::Pan { hide_length: true }
            .expression("\"c\"", text(), None)
            .unwrap();
        assert!(
            pan.contains("'************' ||") && !pan.contains("repeat"),
            "{pan}"
        );
        let email = MaskFn::Email { mask_domain: true }
            .expression("\"c\"", text(), None)
            .unwrap();
        assert!(
            email.contains("'****@****'") && !email.contains("substring"),
            "{email}"
        );
        let json = ColumnType {
            sql_type: "jsonb",
            family: TypeFamily::Json,
            base: "jsonb",
        };
        let j = MaskFn::JsonKeys {
            paths: vec![vec!["payer".into(), "Email".into()]],
            replacement: "x".into(),
            case_insensitive: true,
        }
        .expression("\"c\"", json, None)
        .unwrap();
        assert!(
            j.contains("WITH RECURSIVE") && j.contains("= 'email'") && j.contains("= 'payer'"),
            "{j}"
        );
    }

    #[test]
    fn wrong_types_are_errors() {
        let date = ColumnType {
            sql_type: "date",
            family: TypeFamily::Date,
            base: "date",
        };
        assert!(
            MaskFn::Generalize(Generalize::Step(10))
                .expression("\"d\"", date, None)
                .is_err()
        );
        assert!(
            MaskFn::Generalize(Generalize::Year)
                .expression("\"d\"", date, None)
                .is_ok()
        );
        assert_eq!(
            MaskFn::Pseudonym { length: 16 }.expression("\"d\"", date, None),
            Err(MaskError::NoKey)
        );
    }
}
