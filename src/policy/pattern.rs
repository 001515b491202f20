//! Column patterns of classification rules: `schema.table.column`, `table.column` or `column`, where `*`
//! in a part matches any run of characters (`*.card_pan`, `public.pay*.email`). Names compare exactly
//! (PostgreSQL folds unquoted identifiers to lower case when they are created; write them as stored).

/// A parsed pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnPattern {
    schema: Option<String>,
    table: Option<String>,
    column: String,
    text: String,
}

impl ColumnPattern {
    /// Parses a pattern; errors say what is wrong.
    pub fn parse(text: &str) -> Result<ColumnPattern, String> {
        let parts: Vec<&str> = text.split('.').collect();
        let bad = || {
            format!(
                "column pattern {text:?} must be `schema.table.column`, `table.column` or `column` (`*` matches any characters)"
            )
        };
        if text.is_empty()
            || parts.len() > 3
            || parts
                .iter()
                .any(|p| p.is_empty() || p.len() > 63 || p.contains('\0'))
        {
            return Err(bad());
        }
        let mut it = parts.iter().rev();
        let column = it.next().ok_or_else(bad)?.to_string();
        let table = it.next().map(|s| s.to_string());
        let schema = it.next().map(|s| s.to_string());
        Ok(ColumnPattern {
            schema,
            table,
            column,
            text: text.to_owned(),
        })
    }

    /// Whether the pattern matches this column.
    pub fn matches(&self, schema: &str, table: &str, column: &str) -> bool {
        glob(&self.column, column)
            && self.table.as_deref().is_none_or(|t| glob(t, table))
            && self.schema.as_deref().is_none_or(|s| glob(s, schema))
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// `*`-glob match over characters.
fn glob(pattern: &str, s: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = s.chars().collect();
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] != '*' && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(sp) = star {
            pi = sp + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let p = ColumnPattern::parse("*.card_pan").unwrap();
        assert!(p.matches("public", "payments", "card_pan"));
        assert!(!p.matches("public", "payments", "card_pan2"));
        let p = ColumnPattern::parse("public.pay*.e*l").unwrap();
        assert!(p.matches("public", "payers", "email"));
        assert!(!p.matches("other", "payers", "email"));
        assert!(
            ColumnPattern::parse("email")
                .unwrap()
                .matches("x", "y", "email")
        );
        assert!(ColumnPattern::parse("a.b.c.d").is_err());
        assert!(ColumnPattern::parse("a..c").is_err());
    }
}
