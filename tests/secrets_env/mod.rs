//! What the `secrets` test binary needs around pgveil: a real local AWS Secrets Manager endpoint (`moto_server`
//! from PyPI, started on a free loopback port and killed on drop), a TCP proxy in front of it that counts
//! `GetSecretValue` requests on the wire (server side), an SDK client to create and rotate secrets, and a tracing
//! writer that captures every log line pgveil writes.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{SocketAddr, TcpStream as StdStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use aws_config::BehaviorVersion;
use aws_sdk_secretsmanager::Client;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The header value of a GetSecretValue call (`X-Amz-Target`).
const GET_SECRET_VALUE: &[u8] = b"secretsmanager.GetSecretValue";

/// A `moto_server` process; killed (and waited for) on drop.
pub struct Moto {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl Moto {
    /// Starts moto on `port` (0 = a free one) and waits until it answers HTTP.
    pub fn start(port: u16) -> Result<Moto> {
        let port = if port == 0 { free_port()? } else { port };
        let log = std::env::temp_dir().join(format!("pgveil-moto-{port}.log"));
        let log =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = if which("moto_server") {
            let mut c = Command::new("moto_server");
            c.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
            c
        } else {
            let mut c = Command::new("python3");
            c.args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ]);
            c
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting moto_server (pip install 'moto[server]'; tests/run.sh does)")?;
        let mut moto = Moto { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = moto.child.try_wait()? {
                bail!("moto_server exited at start-up ({status})");
            }
            if http_answers(port) {
                return Ok(moto);
            }
            if Instant::now() > deadline {
                bail!("moto_server did not answer on port {port} within 60 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Endpoint URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn which(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
}

pub use crate::support::free_port;

fn http_answers(port: u16) -> bool {
    let Ok(mut s) = StdStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /moto-api/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 12];
    std::io::Read::read(&mut s, &mut buf).is_ok_and(|n| n >= 12 && buf.starts_with(b"HTTP/1."))
}

/// A TCP proxy in front of moto counting GetSecretValue requests as they cross the wire.
pub struct CountingProxy {
    /// Listen address.
    pub addr: SocketAddr,
    count: Arc<AtomicUsize>,
}

impl CountingProxy {
    /// Starts the proxy on the current tokio runtime, forwarding to 127.0.0.1:`upstream`.
    pub async fn start(upstream: u16) -> Result<CountingProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let c = c.clone();
                tokio::spawn(async move {
                    // Moto down: the client sees its connection closed, like an unreachable endpoint.
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        let mut tail: Vec<u8> = Vec::new();
                        loop {
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            tail.extend_from_slice(&buf[..n]);
                            c.fetch_add(count_needle(&tail), Ordering::SeqCst);
                            let keep = tail.len().min(GET_SECRET_VALUE.len() - 1);
                            tail.drain(..tail.len() - keep);
                            if sw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = sw.shutdown().await;
                    };
                    let down = async move {
                        let _ = tokio::io::copy(&mut sr, &mut cw).await;
                        let _ = cw.shutdown().await;
                    };
                    tokio::join!(up, down);
                });
            }
        });
        Ok(CountingProxy { addr, count })
    }

    /// GetSecretValue requests so far.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Endpoint URL for pgveil.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn count_needle(hay: &[u8]) -> usize {
    hay.windows(GET_SECRET_VALUE.len())
        .filter(|w| w.eq_ignore_ascii_case(GET_SECRET_VALUE))
        .count()
}

/// An SDK client for the test's own calls (create, put, stage moves), straight to moto.
pub async fn sdk_client(endpoint: &str) -> Client {
    let http = aws_smithy_http_client::Builder::new().build_http();
    let conf = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .load()
        .await;
    Client::new(&conf)
}

/// Creates every secret of `secrets` (string values).
pub async fn seed(client: &Client, secrets: &BTreeMap<String, String>) -> Result<()> {
    for (name, value) in secrets {
        client
            .create_secret()
            .name(name)
            .secret_string(value)
            .send()
            .await
            .with_context(|| format!("create {name}"))?;
    }
    Ok(())
}

/// Every log line pgveil (and its dependencies) wrote in this process.
pub fn captured_logs() -> String {
    String::from_utf8_lossy(&log_buffer().lock().unwrap_or_else(|e| e.into_inner())).into_owned()
}

fn log_buffer() -> &'static Mutex<Vec<u8>> {
    static BUF: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
    BUF.get_or_init(|| Mutex::new(Vec::new()))
}

struct Capture;

impl std::io::Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        log_buffer()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(b);
        if std::env::var_os("PGVEIL_TEST_LOG").is_some() {
            let _ = std::io::stderr().write_all(b);
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the capturing subscriber: everything at trace level, with pgveil's production caps on the
/// targets that could print HTTP bodies.
pub fn capture_logs() {
    let filter = pgveil::logging::filter("trace,tokio_postgres=debug,tokio_util=info,mio=info");
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(|| Capture)
        .try_init();
}
