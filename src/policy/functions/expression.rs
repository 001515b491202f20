//! The SQL expression of each masking function for one column. Every value that reaches the SQL text is
//! typed and range-checked or quoted by [`quote_literal`]; the column is an already quoted identifier.

use super::{ColumnType, Generalize, MaskError, MaskFn, PseudonymKey, TypeFamily, quote_literal};

impl MaskFn {
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
            MaskFn::Redact { replacement } => redact(col, ty, replacement),
            MaskFn::Partial { first, last, fill } => {
                back(partial(col, &text()?, *first, *last, fill))
            }
            MaskFn::Email { mask_domain } => back(email(col, &text()?, *mask_domain)),
            MaskFn::Pan { hide_length } => back(pan(col, &text()?, *hide_length)),
            MaskFn::Pseudonym { length } => {
                let key = key.ok_or(MaskError::NoKey)?;
                back(pseudonym(&text()?, key, *length))
            }
            MaskFn::Generalize(g) => generalize(col, ty, g).ok_or_else(wrong)?,
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

fn redact(col: &str, ty: ColumnType<'_>, replacement: &str) -> String {
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

/// At most half of a value's characters are ever shown; shorter values are fully replaced.
fn partial(col: &str, text: &str, first: u32, last: u32, fill: &str) -> String {
    let keep = u64::from(first) + u64::from(last);
    format!(
        "CASE WHEN {col} IS NULL THEN NULL WHEN pg_catalog.length({text}) >= {min} \
         THEN pg_catalog.left({text}, {first}) || {f} || pg_catalog.right({text}, {last}) ELSE {f} END",
        min = keep * 2,
        f = quote_literal(fill)
    )
}

fn email(col: &str, text: &str, mask_domain: bool) -> String {
    if mask_domain {
        format!("CASE WHEN {text} IS NULL THEN NULL ELSE '****@****' END")
    } else {
        // Only a domain name is kept: a value with anything else after its last `@` (several
        // values concatenated, free text) shows `@****`.
        format!(
            "CASE WHEN {col} IS NULL THEN NULL ELSE '****' || \
             COALESCE(pg_catalog.substring({text}, '^[^@]*(@[A-Za-z0-9.-]{{1,253}})$'), \
             CASE WHEN pg_catalog.strpos({text}, '@') > 0 THEN '@****' ELSE '' END) END"
        )
    }
}

fn pan(col: &str, text: &str, hide_length: bool) -> String {
    let digits = format!("pg_catalog.regexp_replace({text}, '[^0-9]', '', 'g')");
    let (stars, short) = if hide_length {
        ("'************'".to_owned(), "'****************'".to_owned())
    } else {
        (
            format!("pg_catalog.repeat('*', pg_catalog.length({digits}) - 4)"),
            format!("pg_catalog.repeat('*', pg_catalog.length({digits}))"),
        )
    };
    format!(
        "CASE WHEN {col} IS NULL THEN NULL WHEN pg_catalog.length({digits}) >= 12 \
         THEN {stars} || pg_catalog.right({digits}, 4) ELSE {short} END"
    )
}

/// HMAC-SHA256 of the value's text with the tenant's key (pads precomputed), hex, cut to `length`.
fn pseudonym(text: &str, key: &PseudonymKey, length: u8) -> String {
    let inner = format!(
        "pg_catalog.sha256('\\x{}'::bytea || pg_catalog.convert_to({text}, 'UTF8'))",
        hex::encode(&key.ipad)
    );
    let mac = format!(
        "pg_catalog.encode(pg_catalog.sha256('\\x{}'::bytea || {inner}), 'hex')",
        hex::encode(&key.opad)
    );
    if length < 64 {
        format!("pg_catalog.left({mac}, {length})")
    } else {
        mac
    }
}

/// `None` when the generalization does not apply to the column's type.
fn generalize(col: &str, ty: ColumnType<'_>, g: &Generalize) -> Option<String> {
    Some(match (g, ty.family) {
        (Generalize::Month | Generalize::Year, TypeFamily::Date | TypeFamily::Timestamp) => {
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
        _ => return None,
    })
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
