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
const UESCAPE: i32 = pg_query::protobuf::Token::Uescape as i32;
const SCONST: i32 = pg_query::protobuf::Token::Sconst as i32;

impl<'a> Tokens<'a> {
    /// Scans `sql`.
    pub fn scan(sql: &'a str) -> Option<Tokens<'a>> {
        let toks = crate::policy::lexer::scan_tokens(sql).ok()?;
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

    fn is_comment(&self, i: usize) -> bool {
        self.is(i, SQL_COMMENT) || self.is(i, C_COMMENT)
    }

    /// The next token after `i` that is not a comment (`public/**/./**/payers` is one name).
    fn next_sig(&self, i: usize) -> Option<usize> {
        (i + 1..self.toks.len()).find(|&j| !self.is_comment(j))
    }

    /// The previous token before `i` that is not a comment.
    fn prev_sig(&self, i: usize) -> Option<usize> {
        (0..i).rev().find(|&j| !self.is_comment(j))
    }

    /// The last token of the name part starting at `i`: a `U&"..."` identifier takes its `UESCAPE '.'`
    /// clause with it (the scanner returns three tokens the grammar reads as one identifier).
    fn part_end(&self, i: usize) -> usize {
        match self.next_sig(i) {
            Some(u) if self.is(u, UESCAPE) => match self.next_sig(u) {
                Some(c) if self.is(c, SCONST) => c,
                _ => i,
            },
            _ => i,
        }
    }

    /// The span of a relation reference at `location` with `parts` dot-separated name parts, widened to
    /// a preceding `ONLY` (optionally `ONLY (name)`) when `only` is set and to a trailing `*`; and whether
    /// the reference is the `TABLE name` shorthand (then the span starts at `TABLE`). Comments between the
    /// tokens belong to the span.
    pub fn relation(&self, location: usize, parts: usize, only: bool) -> Option<RelSpan> {
        let first = self.index_at(location)?;
        let mut last = self.part_end(first);
        for _ in 1..parts {
            let dot = self.next_sig(last).filter(|&d| self.is(d, DOT))?;
            last = self.part_end(self.next_sig(dot)?);
        }
        let mut start_i = first;
        if only {
            let p1 = self.prev_sig(first);
            let p2 = p1.and_then(|p| self.prev_sig(p));
            if let Some(p) = p1.filter(|&p| self.is_keyword(p, "only")) {
                start_i = p;
            } else if let (Some(l), Some(o)) = (p1, p2)
                && self.is(l, LPAREN)
                && self.is_keyword(o, "only")
            {
                last = self.next_sig(last).filter(|&r| self.is(r, RPAREN))?;
                start_i = o;
            } else {
                return None;
            }
        }
        if let Some(star) = self.next_sig(last).filter(|&t| self.is(t, STAR)) {
            last = star;
        }
        let mut table = false;
        if let Some(t) = self
            .prev_sig(start_i)
            .filter(|&t| self.is_keyword(t, "table"))
        {
            table = true;
            start_i = t;
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
    let toks = crate::policy::lexer::scan_tokens(sql).ok()?;
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
