//! Stack for deciding deep statements. The parse tree is decoded (prost), converted (serde) and walked
//! recursively, a few kilobytes of stack per nesting level, and PostgreSQL accepts statements nested far
//! deeper than a 2 MiB runtime thread stack allows (a long `||` chain, hundreds of UNION ALL arms, nested
//! subqueries): long statements are decided on a scoped thread whose stack grows with the text. The nesting
//! depth of a tree is bounded by the text's length (every level takes at least two bytes, e.g. `- - - 1`).

/// Statements up to this many bytes are decided on the caller's stack.
const INLINE_BYTES: usize = 2048;
/// Stack reserved per byte of statement text (a level of nesting takes at least two bytes).
const STACK_PER_BYTE: usize = 4096;
/// The most stack a decision may use (address space is reserved, memory is used only as deep as needed).
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
