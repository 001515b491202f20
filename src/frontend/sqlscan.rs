//! Transaction mode: a conservative look at client SQL for session state that outlives a transaction.
//!
//! This is not a security decision (the statement policy hook parses SQL with the real grammar); it decides
//! whether a client must be pinned to its backend, whether its settings must be re-read after the
//! transaction, and whether pgveil's statement cache on the backend was dropped. Errors are on the safe side:
//! a false "pins" costs pooling for that one client, a false "settings" costs one round trip.
//!
//! Statement-initial keywords are read with a lexer that skips comments, string literals (incl. `E''`),
//! dollar quotes and quoted identifiers. Function names and `temp` are matched as whole words anywhere in the
//! text, string bodies included, so `DO $$ ... pg_advisory_lock(1) ... $$` is caught too.

/// What a SQL string may do to session state.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SqlEffects {
    /// Session state pgveil cannot move between backends (why, for logs); the client is pinned.
    pub pins: Option<&'static str>,
    /// May change settings (`SET`, `RESET`, `set_config`, `DISCARD`, `DO`): re-read them after the transaction.
    pub settings: bool,
    /// May drop prepared statements on the backend (`DEALLOCATE`, `DISCARD`).
    pub drops_statements: bool,
    /// Mentions pgveil's internal statement names or `pg_prepared_statements`: refused.
    pub reserved: bool,
}

/// Words that pin wherever they appear (functions with session-lifetime effects, temporary objects).
const PINNING_WORDS: &[(&str, &str)] = &[
    ("pg_advisory_lock", "session advisory lock"),
    ("pg_advisory_lock_shared", "session advisory lock"),
    ("pg_try_advisory_lock", "session advisory lock"),
    ("pg_try_advisory_lock_shared", "session advisory lock"),
    ("temp", "temporary object"),
    ("temporary", "temporary object"),
    ("pg_temp", "temporary object"),
    ("dblink_connect", "dblink connection"),
    ("dblink_connect_u", "dblink connection"),
];

/// Scans one SQL string (a Query or a Parse text). Text the fast scan cannot read conclusively (escapes) is
/// also read from its parse tree ([`super::sqltree`]).
pub fn scan(sql: &[u8]) -> SqlEffects {
    let mut fx = SqlEffects::default();
    if super::sqltree::inconclusive(sql) {
        super::sqltree::add_effects(sql, &mut fx);
    }
    scan_words(sql, &mut fx);
    let mut lex = Lexer { s: sql, i: 0 };
    let mut first: Option<Vec<u8>> = None;
    let mut saw_hold = false;
    loop {
        let tok = lex.next();
        match tok {
            Tok::End | Tok::Semi => {
                if let Some(kw) = first.take() {
                    classify(&kw, saw_hold, &mut fx);
                }
                saw_hold = false;
                if tok == Tok::End {
                    return fx;
                }
            }
            Tok::Word(w) => {
                if first.is_none() {
                    first = Some(w.to_ascii_lowercase());
                } else if w.eq_ignore_ascii_case(b"hold") {
                    saw_hold = true;
                }
            }
            Tok::Other => {
                if first.is_none() {
                    // `(SELECT ...)` and the like: not a statement we care about.
                    first = Some(Vec::new());
                }
            }
        }
    }
}

fn classify(kw: &[u8], saw_hold: bool, fx: &mut SqlEffects) {
    match kw {
        b"set" | b"reset" | b"do" | b"call" => fx.settings = true,
        b"discard" | b"deallocate" => {
            fx.settings = true;
            fx.drops_statements = true;
        }
        b"prepare" => fx.pins = fx.pins.or(Some("SQL PREPARE")),
        b"listen" => fx.pins = fx.pins.or(Some("LISTEN")),
        b"load" => fx.pins = fx.pins.or(Some("LOAD")),
        b"declare" if saw_hold => fx.pins = fx.pins.or(Some("cursor WITH HOLD")),
        _ => {}
    }
}

/// Whole-word, case-insensitive matches anywhere in the text.
pub(super) fn scan_words(sql: &[u8], fx: &mut SqlEffects) {
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80;
    for word in sql.split(|&b| !is_ident(b)) {
        word_effects(word, fx);
        // `$` continues an identifier but also closes a dollar quote (`DO $x$ ... pg_advisory_lock$x$`) or
        // starts a parameter (`$2name`): the parts, without a parameter's digits, count as words too.
        if word.contains(&b'$') {
            for part in word.split(|&b| b == b'$') {
                let digits = part.iter().take_while(|b| b.is_ascii_digit()).count();
                word_effects(&part[digits..], fx);
            }
        }
    }
    // `U&"pgveil\005fps\005f1"` names the same statement as `pgveil_ps_1`: decode such identifiers.
    if !fx.reserved && sql.windows(2).any(|w| w == b"&\"") && unicode_idents_reserved(sql) {
        fx.reserved = true;
    }
}

/// The effects of one whole word (see [`scan_words`]).
fn word_effects(word: &[u8], fx: &mut SqlEffects) {
    if word.len() < 4 {
        return;
    }
    if word.eq_ignore_ascii_case(b"set_config") {
        fx.settings = true;
    } else if word.eq_ignore_ascii_case(b"pg_prepared_statements")
        || word.eq_ignore_ascii_case(b"pg_prepared_statement")
        || (word.len() >= NAME_PREFIX_LEN && word[..NAME_PREFIX_LEN].eq_ignore_ascii_case(PREFIX))
    {
        fx.reserved = true;
    } else if fx.pins.is_none()
        && let Some((_, why)) = PINNING_WORDS
            .iter()
            .find(|(w, _)| word.eq_ignore_ascii_case(w.as_bytes()))
    {
        fx.pins = Some(why);
    }
}

/// Whether a `U&"..."` identifier (decoded as PostgreSQL decodes it, `UESCAPE` included) spells a name with
/// pgveil's statement prefix. Found with PostgreSQL's own lexer; text it cannot lex or an identifier that
/// does not decode counts as reserved (the server would reject it too).
fn unicode_idents_reserved(sql: &[u8]) -> bool {
    use pg_query::protobuf::Token;
    let Some(toks) = std::str::from_utf8(sql)
        .ok()
        .and_then(|t| crate::policy::lexer::scan_tokens(t).ok())
    else {
        return true;
    };
    let text = |i: usize| -> Option<&[u8]> {
        let t = toks.get(i)?;
        sql.get(usize::try_from(t.start).ok()?..usize::try_from(t.end).ok()?)
    };
    for (i, t) in toks.iter().enumerate() {
        if t.token != Token::Uident as i32 {
            continue;
        }
        let esc = match toks.get(i + 1) {
            Some(u) if u.token == Token::Uescape as i32 => match text(i + 2) {
                Some([b'\'', c, b'\'']) => *c,
                _ => return true,
            },
            _ => b'\\',
        };
        match text(i).and_then(|raw| decode_uident(raw, esc)) {
            Some(name)
                if name.len() < NAME_PREFIX_LEN
                    || !name.as_bytes()[..NAME_PREFIX_LEN].eq_ignore_ascii_case(PREFIX) => {}
            _ => return true,
        }
    }
    false
}

/// Decodes `U&"..."` (`""` is a quote; `<esc>XXXX`, `<esc>+XXXXXX`, UTF-16 surrogate pairs, `<esc><esc>`).
fn decode_uident(raw: &[u8], esc: u8) -> Option<String> {
    let inner = std::str::from_utf8(raw.get(3..raw.len().checked_sub(1)?)?).ok()?;
    let inner = inner.replace("\"\"", "\"");
    let esc = char::from(esc);
    let mut out = String::new();
    let mut chars = inner.chars();
    let mut high: Option<u32> = None;
    while let Some(c) = chars.next() {
        if c != esc {
            out.push(c);
            continue;
        }
        let digits = match chars.clone().next()? {
            e if e == esc => {
                chars.next();
                out.push(esc);
                continue;
            }
            '+' => {
                chars.next();
                6
            }
            _ => 4,
        };
        let hex: String = chars.by_ref().take(digits).collect();
        let code = u32::from_str_radix(&hex, 16)
            .ok()
            .filter(|_| hex.len() == digits)?;
        match (high.take(), code) {
            (None, 0xD800..=0xDBFF) => high = Some(code),
            (Some(h), 0xDC00..=0xDFFF) => out.push(char::from_u32(
                0x10000 + ((h - 0xD800) << 10) + (code - 0xDC00),
            )?),
            (None, c) => out.push(char::from_u32(c)?),
            (Some(_), _) => return None,
        }
    }
    high.is_none().then_some(out)
}

const PREFIX: &[u8] = crate::backend::statements::NAME_PREFIX.as_bytes();
const NAME_PREFIX_LEN: usize = PREFIX.len();

#[derive(Debug, PartialEq, Eq)]
enum Tok<'a> {
    Word(&'a [u8]),
    Semi,
    Other,
    End,
}

struct Lexer<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Lexer<'a> {
    fn peek(&self, k: usize) -> u8 {
        self.s.get(self.i + k).copied().unwrap_or(0)
    }

    fn next(&mut self) -> Tok<'a> {
        loop {
            let c = self.peek(0);
            if self.i >= self.s.len() {
                return Tok::End;
            }
            match c {
                // PostgreSQL's `space`: [ \t\n\r\f\v] (Rust's ASCII whitespace lacks \v).
                c if c.is_ascii_whitespace() || c == 0x0b => self.i += 1,
                // A `--` comment ends at \n or \r.
                b'-' if self.peek(1) == b'-' => {
                    while self.i < self.s.len() && !matches!(self.s[self.i], b'\n' | b'\r') {
                        self.i += 1;
                    }
                }
                b'/' if self.peek(1) == b'*' => self.skip_block_comment(),
                b';' => {
                    self.i += 1;
                    return Tok::Semi;
                }
                b'\'' => {
                    self.skip_quoted(b'\'', false);
                    return Tok::Other;
                }
                b'"' => {
                    self.skip_quoted(b'"', false);
                    return Tok::Other;
                }
                b'$' if self.dollar_tag().is_some() => {
                    self.skip_dollar();
                    return Tok::Other;
                }
                c if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                    let start = self.i;
                    while self.i < self.s.len() {
                        let b = self.s[self.i];
                        if b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80 {
                            self.i += 1;
                        } else {
                            break;
                        }
                    }
                    let word = &self.s[start..self.i];
                    // Only E'', B'', X'' and N'' are one literal; `DO'...'` is DO and a string.
                    if self.peek(0) == b'\''
                        && matches!(
                            word,
                            [b'e' | b'E' | b'b' | b'B' | b'x' | b'X' | b'n' | b'N']
                        )
                    {
                        // E'...' has backslash escapes; B'', X'', N'', U&'' do not matter here.
                        self.skip_quoted(b'\'', word.eq_ignore_ascii_case(b"e"));
                        return Tok::Other;
                    }
                    return Tok::Word(word);
                }
                _ => {
                    self.i += 1;
                    return Tok::Other;
                }
            }
        }
    }

    fn skip_block_comment(&mut self) {
        let mut depth = 0usize;
        while self.i < self.s.len() {
            if self.peek(0) == b'/' && self.peek(1) == b'*' {
                depth += 1;
                self.i += 2;
            } else if self.peek(0) == b'*' && self.peek(1) == b'/' {
                depth -= 1;
                self.i += 2;
                if depth == 0 {
                    return;
                }
            } else {
                self.i += 1;
            }
        }
    }

    fn skip_quoted(&mut self, q: u8, backslash: bool) {
        self.i += 1;
        while self.i < self.s.len() {
            let c = self.s[self.i];
            if backslash && c == b'\\' {
                self.i += 2;
            } else if c == q {
                if self.peek(1) == q {
                    self.i += 2;
                } else {
                    self.i += 1;
                    return;
                }
            } else {
                self.i += 1;
            }
        }
    }

    /// Length of a dollar-quote tag (`$$` or `$name$`) at the cursor.
    fn dollar_tag(&self) -> Option<usize> {
        let rest = &self.s[self.i..];
        if rest.get(1).is_some_and(|b| b.is_ascii_digit()) {
            return None; // $1 parameter
        }
        let end = rest[1..]
            .iter()
            .position(|&b| !(b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80))?;
        (rest[1 + end] == b'$').then_some(end + 2)
    }

    fn skip_dollar(&mut self) {
        let Some(len) = self.dollar_tag() else {
            self.i += 1; // the caller checked the tag; never stay in place
            return;
        };
        let tag = &self.s[self.i..self.i + len];
        self.i += len;
        match self.s[self.i..].windows(len).position(|w| w == tag) {
            Some(p) => self.i += p + len,
            None => self.i = self.s.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `sqlscan` fuzz target (tree vs scan): spellings PostgreSQL's lexer reads differently.
    #[test]
    fn lexes_like_postgresql() {
        // \v is whitespace; a `--` comment ends at \r.
        assert!(scan(b"\x0bDEALLOCATE ALL").drops_statements);
        assert_eq!(scan(b"\x0bPREPARE p AS SELECT 1").pins, Some("SQL PREPARE"));
        assert!(scan(b"-- x\rSET work_mem = '1MB'").settings);
        // A keyword right before a string.
        assert!(scan(b"DO'BEGIN PERFORM 1; END'").settings);
        assert_eq!(scan(b"LOAD'auto_explain'").pins, Some("LOAD"));
        assert_eq!(scan(b"-- x\rLISTEN ch").pins, Some("LISTEN"));
        // A word that a closing dollar quote follows.
        assert_eq!(
            scan(b"DO $x$ BEGIN END pg_try_advisory_lock$x$").pins,
            Some("session advisory lock")
        );
    }

    #[test]
    fn ordinary_statements_have_no_effects() {
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
            "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 2",
            "BEGIN; SELECT 'set work_mem = 1'; /* reset */ COMMIT",
            "SELECT $$prepare listen$$, E'\\' ; set', \"set\"",
            "DECLARE c CURSOR FOR SELECT 1",
        ] {
            assert_eq!(scan(sql.as_bytes()), SqlEffects::default(), "{sql}");
        }
    }

    #[test]
    fn detects_session_state() {
        let s = |sql: &str| scan(sql.as_bytes());
        assert!(s("SET work_mem = '8MB'").settings);
        assert!(s("select 1; /* x */ reset all").settings);
        assert!(s("SELECT set_config('a.b', 'c', false)").settings);
        assert!(s("DO $x$ BEGIN PERFORM 1; END $x$").settings);
        let d = s("DEALLOCATE ALL");
        assert!(d.drops_statements && d.settings);
        assert!(s("DISCARD ALL").drops_statements);
        assert_eq!(s("PREPARE p AS SELECT 1").pins, Some("SQL PREPARE"));
        assert_eq!(s("LISTEN ch").pins, Some("LISTEN"));
        assert_eq!(
            s("DECLARE c CURSOR WITH HOLD FOR SELECT 1").pins,
            Some("cursor WITH HOLD")
        );
        assert_eq!(
            s("CREATE TEMP TABLE t (x int)").pins,
            Some("temporary object")
        );
        assert_eq!(
            s("SELECT pg_advisory_lock(1)").pins,
            Some("session advisory lock")
        );
        assert_eq!(
            s("DO $$BEGIN PERFORM pg_advisory_lock(1); END$$").pins,
            Some("session advisory lock")
        );
        assert_eq!(s("SELECT pg_advisory_xact_lock(1)").pins, None);
        assert!(s("EXECUTE PGVEIL_PS_3").reserved);
        assert!(s("EXECUTE U&\"pgveil\\005fps\\005f1\"").reserved);
        assert!(s("EXPLAIN (VERBOSE) EXECUTE u&\"pgveil!005fps!+00005f1\" UESCAPE '!'").reserved);
        assert!(s("DEALLOCATE U&\"\\0070gveil_ps_2\"").reserved);
        assert!(!s("SELECT 1 AS U&\"d\\0061ta\"").reserved);
        assert!(!s("SELECT 1 AS U&\"\\D83D\\DE00\"").reserved);
        assert!(s("select * from pg_catalog.pg_prepared_statements").reserved);
    }
}
