//! Stack for deciding deep statements. The parse tree is decoded (prost), converted (serde) and walked
//! recursively, about 2 KiB of stack per nesting level in a release build (more in instrumented builds),
//! and PostgreSQL accepts statements nested far deeper than a 2 MiB runtime thread stack allows (a long `||`
//! chain, hundreds of UNION ALL arms, nested subqueries): long statements are decided on a scoped thread
//! whose stack grows with the text. The nesting depth of a tree is bounded by the text's length: a level can
//! take a single byte (`SELECT ++++1` is four nested unary operators: PostgreSQL's lexer never ends an
//! operator with `+` or `-`), and a stack overflow aborts the whole process, every tenant's sessions with
//! it (found by cargo-afl on the `sqlscan` target: `SELECT 1 WHERE 2 IN (1,+++…+1)` with 840 `+` overflowed
//! when statements up to 2 KiB were still decided inline, on the assumption of two bytes per level).

/// Statements up to this many bytes are decided on the caller's stack: 512 levels of about 2 KiB fit in a
/// 2 MiB event-loop thread with room for the rest of its call stack.
const INLINE_BYTES: usize = 512;
/// Stack reserved per byte of statement text (a level of nesting can take one byte): several times what a
/// release build uses, so instrumented builds (cargo-afl's) decide the same statements.
const STACK_PER_BYTE: usize = 16 << 10;
/// The most stack a decision may use (address space is reserved, memory is used only as deep as needed).
/// PostgreSQL's grammar (bison's stack of 10,000 entries) refuses deeper nesting long before this.
const MAX_STACK: usize = 1 << 30;

/// Runs `f` (the decision on `sql`) with a stack large enough for `sql`'s nesting; `None` when no thread
/// could be started for it.
pub fn deep_enough<T: Send>(sql: &str, f: impl FnOnce() -> T + Send) -> Option<T> {
    if sql.len() <= INLINE_BYTES {
        return Some(f());
    }
    let size = sql
        .len()
        .saturating_mul(STACK_PER_BYTE)
        .clamp(8 << 20, MAX_STACK);
    std::thread::scope(|s| {
        match std::thread::Builder::new()
            .name("pgveil-decide".into())
            .stack_size(size)
            .spawn_scoped(s, f)
        {
            Ok(h) => match h.join() {
                Ok(v) => Some(v),
                Err(p) => std::panic::resume_unwind(p),
            },
            Err(_) => None,
        }
    })
}
