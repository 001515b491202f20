//! Event loops, one per thread ("thread per core"): each thread runs its own single-threaded tokio runtime,
//! and a session, once handed to a loop, lives there with the backends it checks out.
//!
//! Why: with tokio's multi-thread scheduler, a client socket and its backend socket are often driven by
//! different worker threads, so every transaction costs cross-thread wake-ups (futex, context switches; a
//! third of pgveil's CPU samples in `pgbench -S` were the kernel switching threads). One loop per thread,
//! with a backend pool share per loop (`backend::pool`), keeps a transaction's two sockets on one thread
//! while still using every core.
//!
//! The accepting runtime is loop 0 (it also runs the API, metrics and background tasks); loops 1..n run on
//! threads started here. A new connection goes to the loop serving the fewest connections, so long-lived
//! sessions spread evenly (kernel `SO_REUSEPORT` hashing would balance by address, not by load).

use std::cell::Cell;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;
use tokio::sync::oneshot;

thread_local! {
    /// The loop this thread runs (0 on the accepting runtime's threads and outside pgveil's loops).
    static SLOT: Cell<usize> = const { Cell::new(0) };
}

/// The loop the calling thread runs (0 unless it is one of [`EventLoops`]' threads).
pub fn current_slot() -> usize {
    SLOT.with(Cell::get)
}

/// Errors starting the loops.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    /// A thread or its runtime could not be started.
    #[error("cannot start event loop {slot}: {source}")]
    Start {
        /// Loop number.
        slot: usize,
        /// Underlying error.
        source: std::io::Error,
    },
}

/// Loops 1..n (loop 0 is the caller's runtime) and the number of connections each one serves.
pub struct EventLoops {
    handles: Vec<Handle>,
    load: Arc<[AtomicUsize]>,
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl EventLoops {
    /// Starts `n - 1` threads, each with a single-threaded runtime (`n` loops counting the caller's).
    pub fn start(n: usize) -> Result<EventLoops, LoopError> {
        let n = n.max(1);
        let mut loops = EventLoops {
            handles: Vec::with_capacity(n - 1),
            load: (0..n).map(|_| AtomicUsize::new(0)).collect(),
            stops: Vec::with_capacity(n - 1),
            threads: Vec::with_capacity(n - 1),
        };
        for slot in 1..n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|source| LoopError::Start { slot, source })?;
            let (stop, stopped) = oneshot::channel::<()>();
            loops.handles.push(rt.handle().clone());
            let thread = std::thread::Builder::new()
                .name(format!("pgveil-loop-{slot}"))
                .spawn(move || {
                    SLOT.with(|s| s.set(slot));
                    rt.block_on(async move {
                        let _ = stopped.await;
                    });
                    // Dropping the runtime here cancels whatever it still runs (the server drains first).
                })
                .map_err(|source| LoopError::Start { slot, source })?;
            loops.stops.push(stop);
            loops.threads.push(thread);
        }
        Ok(loops)
    }

    /// Number of loops, the caller's included.
    pub fn len(&self) -> usize {
        self.load.len()
    }

    /// Always false: there is at least the caller's loop.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The loop serving the fewest connections (ties: the lowest number).
    pub fn pick(&self) -> usize {
        let mut best = 0;
        let mut least = usize::MAX;
        for (slot, load) in self.load.iter().enumerate() {
            let l = load.load(Ordering::Relaxed);
            if l < least {
                least = l;
                best = slot;
            }
        }
        best
    }

    /// Counts a connection on `slot` until the returned guard is dropped.
    pub fn enter(&self, slot: usize) -> LoadGuard {
        let slot = slot.min(self.load.len() - 1);
        self.load[slot].fetch_add(1, Ordering::Relaxed);
        LoadGuard {
            load: self.load.clone(),
            slot,
        }
    }

    /// The runtime of loop `slot` (1..n); `None` for 0, the caller's own runtime.
    pub fn handle(&self, slot: usize) -> Option<&Handle> {
        slot.checked_sub(1).and_then(|i| self.handles.get(i))
    }

    /// Connections per loop, for metrics and tests.
    pub fn loads(&self) -> Vec<usize> {
        self.load
            .iter()
            .map(|l| l.load(Ordering::Relaxed))
            .collect()
    }

    /// Runs `fut` on loop `slot` (`None` when `slot` is 0: the caller spawns it on its own runtime).
    pub fn spawn_on<F>(&self, slot: usize, fut: F) -> Option<tokio::task::JoinHandle<F::Output>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle(slot).map(|h| h.spawn(fut))
    }
}

impl Drop for EventLoops {
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// One connection counted on a loop; uncounted when dropped.
pub struct LoadGuard {
    load: Arc<[AtomicUsize]>,
    slot: usize,
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.load[self.slot].fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_run_on_their_loop_and_connections_go_to_the_least_loaded() {
        let loops = EventLoops::start(3).expect("loops");
        assert_eq!(loops.len(), 3);
        assert_eq!(current_slot(), 0);
        for slot in 1..3 {
            let (tx, rx) = std::sync::mpsc::channel();
            loops.spawn_on(slot, async move {
                let _ = tx.send((
                    current_slot(),
                    std::thread::current().name().map(str::to_owned),
                ));
            });
            let (seen, name) = rx
                .recv_timeout(std::time::Duration::from_secs(10))
                .expect("task ran");
            assert_eq!(seen, slot);
            assert_eq!(
                name.as_deref(),
                Some(format!("pgveil-loop-{slot}").as_str())
            );
        }
        assert!(loops.spawn_on(0, async {}).is_none());
        let a = loops.enter(loops.pick());
        let b = loops.enter(loops.pick());
        let c = loops.enter(loops.pick());
        assert_eq!(loops.loads(), vec![1, 1, 1]);
        drop(b);
        assert_eq!(loops.pick(), 1);
        drop((a, c));
        assert_eq!(loops.loads(), vec![0, 0, 0]);
    }
}
