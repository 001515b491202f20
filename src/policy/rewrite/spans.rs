//! Text spans from the PostgreSQL scanner (libpg_query's `scan`), so edits replace exactly the tokens the
//! parser saw, and the splicing of edits into the original text.

use pg_query::protobuf::ScanToken;

/// Replace `start..end` (byte offsets) with `text`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    /// Start byte.
    pub start: usize,
    /// End byte (exclusive).
    pub end: usize,
    /// Replacement.
    pub text: String,
}

/// The scanner's tokens of a SQL string.
pub struct Tokens<'a> {
    sql: &'a str,
    toks: Vec<ScanToken>,
}

/// ASCII tokens the scanner returns as their character code.
const DOT: i32 = b'.' as i32;
const LPAREN: i32 = b'(' as i32;
const RPAREN: i32 = b')' as i32;
const STAR: i32 = b'*' as i32;
const SEMI: i32 = b';' as i32;
const SQL_COMMENT: i32 = pg_query::protobuf::Token::SqlComment as i32;
const C_COMMENT: i32 = pg_query::protobuf::Token::CComment as i32;

impl<'a> Tokens<'a> {
    /// Scans `sql`.
    pub fn scan(sql: &'a str) -> Option<Tokens<'a>> {
        let toks = pg_query::scan_tokens(sql).ok()?;
        Some(Tokens { sql, toks })
    }

    fn index_at(&self, location: usize) -> Option<usize> {
        self.toks.iter().position(|t| t.start as usize == location)
    }

    fn text(&self, i: usize) -> &str {
        let t = &self.toks[i];
        self.sql.get(t.start as usize..t.end as usize).unwrap_or("")
    }

    fn is(&self, i: usize, token: i32) -> bool {
        self.toks.get(i).is_some_and(|t| t.token == token)
    }

    fn is_keyword(&self, i: usize, kw: &str) -> bool {
        self.toks.get(i).is_some_and(|t| t.keyword_kind != 0)
            && self.text(i).eq_ignore_ascii_case(kw)
    }

    /// The span of a relation reference at `location` with `parts` dot-separated name parts, widened to
    /// a preceding `ONLY` (optionally `ONLY (name)`) when `only` is set and to a trailing `*`; and whether
    /// the reference is the `TABLE name` shorthand (then the span starts at `TABLE`).
    pub fn relation(&self, location: usize, parts: usize, only: bool) -> Option<RelSpan> {
        let first = self.index_at(location)?;
        let mut last = first;
        for _ in 1..parts {
            if !self.is(last + 1, DOT) {
                return None;
            }
            last += 2;
            if last >= self.toks.len() {
                return None;
            }
        }
        let mut start_i = first;
        if only {
            if first >= 1 && self.is_keyword(first - 1, "only") {
                start_i = first - 1;
            } else if first >= 2 && self.is(first - 1, LPAREN) && self.is_keyword(first - 2, "only")
            {
                if !self.is(last + 1, RPAREN) {
                    return None;
                }
                start_i = first - 2;
                last += 1;
            } else {
                return None;
            }
        }
        if self.is(last + 1, STAR) {
            last += 1;
        }
        let mut table = false;
        if start_i >= 1 && self.is_keyword(start_i - 1, "table") {
            table = true;
            start_i -= 1;
        }
        Some(RelSpan {
            start: self.toks[start_i].start as usize,
            end: self.toks[last].end as usize,
            table,
        })
    }

    /// The end of a parenthesized list starting right after byte `end` (e.g. COPY's column list), if any.
    pub fn paren_list_after(&self, end: usize) -> Option<usize> {
        let i = self.toks.iter().position(|t| t.start as usize >= end)?;
        if !self.is(i, LPAREN) {
            return None;
        }
        let mut depth = 0i32;
        for j in i..self.toks.len() {
            if self.is(j, LPAREN) {
                depth += 1;
            } else if self.is(j, RPAREN) {
                depth -= 1;
                if depth == 0 {
                    return Some(self.toks[j].end as usize);
                }
            }
        }
        None
    }
}

/// Where a relation reference is in the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelSpan {
    /// Start byte (at `TABLE` or `ONLY` when present).
    pub start: usize,
    /// End byte.
    pub end: usize,
    /// The `TABLE name` shorthand.
    pub table: bool,
}

/// The number of non-empty top-level statements (`;` outside parentheses), by the PostgreSQL scanner;
/// `None` when the text does not scan or its parentheses do not balance.
pub fn top_level_statements(sql: &str) -> Option<usize> {
    let toks = pg_query::scan_tokens(sql).ok()?;
    let (mut depth, mut count, mut pending) = (0i32, 0usize, false);
    for t in toks {
        match t.token {
            LPAREN => depth += 1,
            RPAREN => depth -= 1,
            SEMI if depth == 0 => {
                count += usize::from(pending);
                pending = false;
                continue;
            }
            _ => {}
        }
        if depth < 0 {
            return None;
        }
        // Comments are not statements.
        if !matches!(t.token, SQL_COMMENT | C_COMMENT) {
            pending = true;
        }
    }
    (depth == 0).then_some(count + usize::from(pending))
}

/// Applies non-overlapping edits; `None` when two overlap.
pub fn apply(sql: &str, mut edits: Vec<Edit>) -> Option<String> {
    edits.sort_by_key(|e| e.start);
    let mut out =
        String::with_capacity(sql.len() + edits.iter().map(|e| e.text.len()).sum::<usize>());
    let mut at = 0;
    for e in edits {
        if e.start < at || e.end < e.start || e.end > sql.len() {
            return None;
        }
        out.push_str(sql.get(at..e.start)?);
        out.push_str(&e.text);
        at = e.end;
    }
    out.push_str(sql.get(at..)?);
    Some(out)
}
