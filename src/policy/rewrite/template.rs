//! Literal-normalized plans, for workloads that send the same statement with different literals every time
//! (`pgbench -M simple`, ORMs that inline values). A statement is keyed by its text with every literal token
//! (string, number, bit string) cut out; a decision taken on one statement is reused for another with the
//! same key by splicing the new statement's literals into the first one's rewrite.
//!
//! This is sound only when the decision cannot depend on a literal's value. Two statements with the same key
//! have the same token sequence apart from literal values (the text outside literals is byte for byte the
//! same), so the parser builds the same tree apart from constant values; the walker reports the statements
//! whose decision reads a constant (`SET`, `set_config`, `COPY`'s file name, every statement that is not
//! SELECT/INSERT/UPDATE/DELETE/MERGE), and those are never planned. `U&"..." UESCAPE '...'` makes a string
//! literal change an identifier, so statements with `UESCAPE` are never planned either.
//!
//! Comments are cut out of keys the same way (PostgreSQL's lexer reads a comment as whitespace, so it never
//! changes the tree, hence never the decision): a statement's comments are holes of its plan, filled with the
//! comments of the statement being answered, so clients that tag every statement with a distinct comment
//! (trace ids, sqlcommenter) share one entry and keep their own comments in what reaches the server.
//! [`without_comments`] gives the comment-free key of the exact-text cache.

use pg_query::protobuf::Token;

use super::spans::Edit;

/// A statement split into its literals and the text around them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized {
    /// The key: the text with each literal replaced by a marker of its token kind (length-prefixed, so
    /// distinct statements never share a key).
    pub key: String,
    /// Byte spans of the holes (literals and comments), in order.
    pub literals: Vec<(usize, usize)>,
}

/// Splits `sql` into its normalized key and hole spans (literals and comments); `None` when it does not scan,
/// has neither literal nor comment (the exact-text cache serves it), or uses `UESCAPE`.
pub fn normalize(sql: &str) -> Option<Normalized> {
    let toks = crate::policy::lexer::scan_tokens(sql).ok()?;
    let mut key = String::with_capacity(sql.len() + 16);
    let mut literals = Vec::new();
    let mut at = 0usize;
    for t in &toks {
        let (start, end) = (usize::try_from(t.start).ok()?, usize::try_from(t.end).ok()?);
        if t.token == Token::Uescape as i32 || t.token == Token::Uident as i32 {
            return None;
        }
        let marker = match t.token {
            x if x == Token::Sconst as i32 => 'S',
            x if x == Token::Usconst as i32 => 'U',
            x if x == Token::Fconst as i32 => 'F',
            x if x == Token::Iconst as i32 => 'I',
            x if x == Token::Bconst as i32 => 'B',
            x if x == Token::Xconst as i32 => 'X',
            x if is_comment(x) => 'C',
            _ => continue,
        };
        if start < at || end < start {
            return None;
        }
        push_text(&mut key, sql.get(at..start)?);
        key.push('\u{1}');
        key.push(marker);
        literals.push((start, end));
        at = end;
    }
    if literals.is_empty() {
        return None;
    }
    push_text(&mut key, sql.get(at..)?);
    Some(Normalized { key, literals })
}

fn is_comment(token: i32) -> bool {
    token == Token::SqlComment as i32 || token == Token::CComment as i32
}

/// Whether `sql` may hold a comment (`--` or `/*` anywhere, a byte search): comment-free text, the common case,
/// is never scanned for its cache key.
pub fn may_have_comment(sql: &str) -> bool {
    sql.contains("--") || sql.contains("/*")
}

/// The exact-text cache key of a statement with comments: its text with every comment (as PostgreSQL's own
/// scanner delimits them, nested `/* */` included) replaced by a marker, length-prefixed like [`normalize`]'s
/// keys so that distinct texts never share a key. `None` when it has no comment or does not scan.
pub fn without_comments(sql: &str) -> Option<String> {
    let toks = crate::policy::lexer::scan_tokens(sql).ok()?;
    let mut key = String::with_capacity(sql.len() + 16);
    let mut at = 0usize;
    let mut any = false;
    for t in toks.iter().filter(|t| is_comment(t.token)) {
        let (start, end) = (usize::try_from(t.start).ok()?, usize::try_from(t.end).ok()?);
        if start < at || end < start {
            return None;
        }
        push_text(&mut key, sql.get(at..start)?);
        key.push_str("\u{1}C");
        at = end;
        any = true;
    }
    if !any {
        return None;
    }
    push_text(&mut key, sql.get(at..)?);
    Some(key)
}

fn push_text(key: &mut String, text: &str) {
    use std::fmt::Write;
    let _ = write!(key, "\u{1}{}:", text.len());
    key.push_str(text);
}

/// One piece of a planned rewrite.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Literal(usize),
}

/// A rewrite with holes where the statement's literals go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
}

impl Template {
    /// Approximate bytes owned (for the caches' byte budget).
    pub fn heap_size(&self) -> usize {
        self.pieces
            .iter()
            .map(|p| match p {
                Piece::Text(t) => t.len() + 24,
                Piece::Literal(_) => 24,
            })
            .sum()
    }

    /// The plan of `sql` (normalized as `norm`) rewritten with `edits`; `None` when an edit covers part of a
    /// literal (then only the exact text can be cached).
    pub fn build(sql: &str, norm: &Normalized, edits: &[Edit]) -> Option<Template> {
        enum Span<'e> {
            Edit(&'e Edit),
            Literal(usize),
        }
        let mut spans: Vec<(usize, usize, Span<'_>)> = edits
            .iter()
            .map(|e| (e.start, e.end, Span::Edit(e)))
            .chain(
                norm.literals
                    .iter()
                    .enumerate()
                    .map(|(i, &(s, e))| (s, e, Span::Literal(i))),
            )
            .collect();
        spans.sort_by_key(|(s, e, _)| (*s, *e));
        let mut pieces = Vec::with_capacity(spans.len() * 2 + 1);
        let mut at = 0;
        for (start, end, span) in spans {
            if start < at {
                return None; // overlapping edit and literal
            }
            pieces.push(Piece::Text(sql.get(at..start)?.to_owned()));
            pieces.push(match span {
                Span::Edit(e) => Piece::Text(e.text.clone()),
                Span::Literal(i) => Piece::Literal(i),
            });
            at = end;
        }
        pieces.push(Piece::Text(sql.get(at..)?.to_owned()));
        // Merge neighbouring text.
        let mut merged: Vec<Piece> = Vec::with_capacity(pieces.len());
        for p in pieces {
            match (merged.last_mut(), p) {
                (Some(Piece::Text(a)), Piece::Text(b)) => a.push_str(&b),
                (_, p) => merged.push(p),
            }
        }
        Some(Template { pieces: merged })
    }

    /// The rewrite of `sql`, a statement with the same key as the one the template was built from.
    pub fn instantiate(&self, sql: &str, norm: &Normalized) -> Option<String> {
        let mut out = String::with_capacity(self.len_hint() + sql.len());
        for p in &self.pieces {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Literal(i) => {
                    let &(s, e) = norm.literals.get(*i)?;
                    out.push_str(sql.get(s..e)?);
                }
            }
        }
        Some(out)
    }

    fn len_hint(&self) -> usize {
        self.pieces
            .iter()
            .map(|p| match p {
                Piece::Text(t) => t.len(),
                Piece::Literal(_) => 0,
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_cut_out_of_the_key() {
        let a = normalize("SELECT * FROM t WHERE id = 1 AND s = 'x'").unwrap();
        let b = normalize("SELECT * FROM t WHERE id = 12345 AND s = 'it''s'").unwrap();
        assert_eq!(a.key, b.key);
        assert_eq!(a.literals.len(), 2);
        let c = normalize("SELECT * FROM t WHERE id = 1.5 AND s = 'x'").unwrap();
        assert_ne!(
            a.key, c.key,
            "a number of another kind is another statement"
        );
        let d = normalize("SELECT * FROM t  WHERE id = 1 AND s = 'x'").unwrap();
        assert_ne!(
            a.key, d.key,
            "the text around literals is kept byte for byte"
        );
        assert!(normalize("SELECT * FROM t").is_none());
        assert!(normalize("SELECT * FROM U&\"!0070ayers\" UESCAPE '!'").is_none());
        assert!(normalize("SELECT U&'\\0061' AS a").is_some());
    }

    #[test]
    fn comments_are_cut_out_of_keys() {
        let a = "SELECT email FROM payers /* trace=1 */ WHERE id = 1 -- a\n";
        let b = "SELECT email FROM payers /* trace=22 /* nested */ */ WHERE id = 7 -- bb\n";
        let (na, nb) = (normalize(a).unwrap(), normalize(b).unwrap());
        assert_eq!(na.key, nb.key);
        assert_eq!(na.literals.len(), 3);
        // Comments alone make holes too (no literal needed).
        let c = normalize("SELECT email FROM payers /* x */").unwrap();
        assert_eq!(
            c.key,
            normalize("SELECT email FROM payers /* yy */").unwrap().key
        );
        // Comment-like text inside literals and quoted names is not a comment.
        assert!(without_comments("SELECT '/* x */', \"--y\"").is_none());
        assert!(may_have_comment("SELECT '/* x */'"));
        assert!(!may_have_comment("SELECT 1 - -1"));
        let (ka, kb) = (without_comments(a).unwrap(), without_comments(b).unwrap());
        assert_ne!(ka, kb, "literals stay in the exact key");
        assert_eq!(
            without_comments("SELECT 1 /* a */").unwrap(),
            without_comments("SELECT 1 /* bb */").unwrap()
        );
        assert_ne!(
            without_comments("SELECT 1 /* a */").unwrap(),
            without_comments("SELECT 1 /* a */ ").unwrap()
        );
        // A rewrite keeps the comments of the statement it answers.
        let start = a.find("email").unwrap();
        let edits = vec![Edit {
            start,
            end: start + 5,
            text: "mask(email)".into(),
        }];
        let t = Template::build(a, &na, &edits).unwrap();
        assert_eq!(
            t.instantiate(b, &nb).unwrap(),
            "SELECT mask(email) FROM payers /* trace=22 /* nested */ */ WHERE id = 7 -- bb\n"
        );
    }

    #[test]
    fn literal_spans_cover_whole_literals() {
        for sql in [
            "SELECT 'a''b', E'c\\'d', $$e'f$$, $q$g$q$, B'101', X'1F', 1e5, 42, U&'\\0061'",
            "SELECT 'multi'\n'line'",
        ] {
            let n = normalize(sql).unwrap();
            for (s, e) in &n.literals {
                let text = &sql[*s..*e];
                assert!(
                    !text.is_empty() && !text.starts_with(' ') && !text.ends_with(' '),
                    "{text:?}"
                );
            }
        }
    }

    #[test]
    fn templates_splice_new_literals() {
        let sql = "SELECT * FROM payers WHERE id = 7 AND note = 'a'";
        let norm = normalize(sql).unwrap();
        let start = sql.find("payers").unwrap();
        let edits = vec![Edit {
            start,
            end: start + "payers".len(),
            text: "(SELECT id FROM public.payers) AS payers".into(),
        }];
        let t = Template::build(sql, &norm, &edits).unwrap();
        assert_eq!(
            t.instantiate(sql, &norm).unwrap(),
            "SELECT * FROM (SELECT id FROM public.payers) AS payers WHERE id = 7 AND note = 'a'"
        );
        let other = "SELECT * FROM payers WHERE id = 123456 AND note = 'x''y'";
        let n2 = normalize(other).unwrap();
        assert_eq!(n2.key, norm.key);
        assert_eq!(
            t.instantiate(other, &n2).unwrap(),
            "SELECT * FROM (SELECT id FROM public.payers) AS payers WHERE id = 123456 AND note = 'x''y'"
        );
        // An edit over a literal cannot be planned.
        let lit = sql.find('7').unwrap();
        let over = vec![Edit {
            start: lit,
            end: lit + 1,
            text: "8".into(),
        }];
        assert!(Template::build(sql, &norm, &over).is_none());
    }
}
