//! A TCP forwarder to a server whose gate can hold new connections: from pgveil's side, a server that has
//! become slow to accept. Connections already through keep working.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Result;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Longest time a held connection waits for the gate to open (then it is dropped).
const MAX_HOLD: Duration = Duration::from_secs(60);

/// A running forwarder; stops accepting when dropped.
pub struct Gate {
    /// Where to connect instead of the server.
    pub addr: SocketAddr,
    closed: watch::Sender<bool>,
    waiting: Arc<AtomicUsize>,
    accept: tokio::task::JoinHandle<()>,
}

impl Gate {
    /// Starts forwarding to `upstream`, gate open. Call on a runtime.
    pub async fn start(upstream: SocketAddr) -> Result<Gate> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (closed, rx) = watch::channel(false);
        let waiting = Arc::new(AtomicUsize::new(0));
        let counter = waiting.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(forward(client, upstream, rx.clone(), counter.clone()));
            }
        });
        Ok(Gate {
            addr,
            closed,
            waiting,
            accept,
        })
    }

    /// New connections wait until [`Gate::open`].
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// Lets waiting and new connections through.
    pub fn open(&self) {
        self.closed.send_replace(false);
    }

    /// Connections waiting at the closed gate now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn forward(
    mut client: TcpStream,
    upstream: SocketAddr,
    mut closed: watch::Receiver<bool>,
    waiting: Arc<AtomicUsize>,
) {
    if *closed.borrow() {
        waiting.fetch_add(1, Ordering::AcqRel);
        let opened = tokio::time::timeout(MAX_HOLD, closed.wait_for(|c| !*c)).await;
        waiting.fetch_sub(1, Ordering::AcqRel);
        if !matches!(opened, Ok(Ok(_))) {
            return;
        }
    }
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}
