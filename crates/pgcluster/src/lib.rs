//! Throwaway local PostgreSQL clusters, and the sample schema and data pgveil's demo and tests load into them
//! ([`sample`]).
//!
//! [`LocalCluster::start`] runs `initdb` into a fresh temporary directory, configures the server for fast,
//! disposable use (no fsync, loopback only, a free port), starts it with `pg_ctl` and waits until it accepts
//! connections. Dropping the cluster stops the server and deletes the directory. The test suite and
//! `pgveil demo` use it, so it must stay robust when many test binaries start clusters in parallel: each
//! cluster has its own directory, unix socket directory and port, and a port clash is retried.
//!
//! PostgreSQL refuses to run as root, so when this process runs as root the server binaries run as the
//! unprivileged `postgres` OS user (via `runuser`) on a directory that user owns.
//!
//! It does not depend on pgveil, and the pgveil library does not depend on it.
#![forbid(unsafe_code)]

mod process;
pub mod sample;
#[cfg(test)]
mod tests;

use std::fs;
use std::io;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::TempDir;

use process::{CommandSpec, ServerUser};

/// Loopback address the cluster listens on.
const HOST: &str = "127.0.0.1";
/// How many times to try a fresh port when the chosen one is taken between probing and binding.
const START_ATTEMPTS: usize = 6;
/// Seconds `pg_ctl` waits for the server to start or stop (generous: parallel tests on a small machine).
const PG_CTL_WAIT_SECS: u32 = 120;
/// Ports never handed to a test cluster: the system PostgreSQL and PgBouncer defaults.
const RESERVED_PORTS: [u16; 2] = [5432, 6432];
/// Lines of the server log quoted in start errors.
const LOG_TAIL_LINES: usize = 40;

/// Environment variable that overrides where the PostgreSQL server binaries are looked up.
pub const BINDIR_ENV: &str = "PGVEIL_PG_BINDIR";

/// Options for [`LocalCluster::start`].
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// Server TLS: (cert PEM path, key PEM path); None = ssl off.
    pub ssl: Option<(PathBuf, PathBuf)>,
}

/// How a role's password is stored in `pg_authid`, which decides the method PostgreSQL uses to
/// authenticate it under an `md5` pg_hba line (SCRAM-stored passwords are challenged with SCRAM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordMethod {
    /// `password_encryption = 'scram-sha-256'`.
    Scram,
    /// `password_encryption = 'md5'`.
    Md5,
}

impl PasswordMethod {
    /// The `password_encryption` setting value for this method.
    fn setting(self) -> &'static str {
        match self {
            PasswordMethod::Scram => "scram-sha-256",
            PasswordMethod::Md5 => "md5",
        }
    }
}

/// Errors from creating, starting, querying or stopping a [`LocalCluster`].
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No PostgreSQL server binaries were found.
    #[error(
        "no PostgreSQL server binaries found (tried ${BINDIR_ENV}, `pg_config --bindir` and \
         /usr/lib/postgresql/*/bin); install the `postgresql` package"
    )]
    NoBinaries,
    /// Running as root, but the `postgres` OS user the server must run as does not exist.
    #[error(
        "running as root, but the OS user `postgres` needed to run the server was not found: {0}"
    )]
    NoServerUser(String),
    /// A command could not be spawned at all.
    #[error("could not run `{command}`: {source}")]
    Spawn {
        /// The command line (never contains secrets: SQL goes through stdin).
        command: String,
        /// The spawn error.
        source: io::Error,
    },
    /// A command ran and exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        /// The command line (never contains secrets: SQL goes through stdin).
        command: String,
        /// The exit status, as text.
        status: String,
        /// The command's standard error, trimmed.
        stderr: String,
    },
    /// The server did not start; `log_tail` is the end of its log file.
    #[error("PostgreSQL server failed to start: {reason}\n--- server log tail ---\n{log_tail}")]
    Start {
        /// What went wrong.
        reason: String,
        /// The last lines of the server log.
        log_tail: String,
    },
    /// A filesystem or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: io::Error,
    },
    /// An argument cannot be passed to PostgreSQL (e.g. it contains a NUL byte).
    #[error("invalid {what}: {reason}")]
    InvalidInput {
        /// Which argument.
        what: &'static str,
        /// Why it is rejected.
        reason: String,
    },
}

/// Shorthand for an [`ClusterError::Io`] with context.
fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ClusterError {
    let what = what.into();
    move |source| ClusterError::Io { what, source }
}

/// A running throwaway PostgreSQL cluster; stopped and deleted on drop.
pub struct LocalCluster {
    /// Directory holding the server binaries (initdb, pg_ctl, psql).
    bindir: PathBuf,
    /// Who runs the server binaries.
    user: ServerUser,
    /// `<tmp>/data`.
    data_dir: PathBuf,
    /// `<tmp>/sock`.
    socket_dir: PathBuf,
    /// `<tmp>/server.log`.
    log_file: PathBuf,
    /// TCP port on 127.0.0.1.
    port: u16,
    /// Whether the server may be running (cleared by [`LocalCluster::stop`]).
    running: bool,
    /// Owns the directory; dropped (deleted) after the server stops. Declared last on purpose.
    tmp: TempDir,
}

impl LocalCluster {
    /// initdb into a fresh temp dir, configure, start on a free 127.0.0.1 port, wait until it accepts
    /// connections. Blocks until the server is ready.
    pub fn start(opts: ClusterOptions) -> Result<LocalCluster, ClusterError> {
        let bindir = Self::bindir()?;
        let user = ServerUser::detect()?;
        // As root the server user must be able to traverse to the directory: use /tmp, not $TMPDIR.
        let parent = if user.is_switched() {
            PathBuf::from("/tmp")
        } else {
            std::env::temp_dir()
        };
        let tmp = tempfile::Builder::new()
            .prefix("pgveil-cluster-")
            .tempdir_in(&parent)
            .map_err(io_err(format!(
                "creating a temporary directory in {}",
                parent.display()
            )))?;
        let root = tmp.path().to_path_buf();
        let socket_dir = root.join("sock");
        fs::create_dir(&socket_dir).map_err(io_err("creating the socket directory"))?;
        user.give(&root)?;
        user.give(&socket_dir)?;

        let mut cluster = LocalCluster {
            bindir,
            user,
            data_dir: root.join("data"),
            socket_dir,
            log_file: root.join("server.log"),
            port: 0,
            running: false,
            tmp,
        };
        cluster.initdb()?;
        cluster.configure(&opts)?;
        cluster.start_server()?;
        Ok(cluster)
    }

    /// The address the server listens on: `"127.0.0.1"`.
    pub fn host(&self) -> &str {
        HOST
    }

    /// The TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The unix socket directory (inside the temp dir).
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The data directory (inside the temp dir).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server log file (inside the temp dir).
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// The temporary directory holding everything of this cluster.
    pub fn root_dir(&self) -> &Path {
        self.tmp.path()
    }

    /// Superuser name (the OS user the server runs as, e.g. "postgres" or the current user).
    pub fn superuser(&self) -> &str {
        self.user.name()
    }

    /// Run SQL as the bootstrap superuser over the unix socket (trust auth) with
    /// `psql -X -v ON_ERROR_STOP=1 -At -q` and return its stdout. The SQL goes through stdin, so it may be
    /// large and never shows up in a command line. The error includes psql's stderr.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, ClusterError> {
        self.run_psql(db, sql, false)
    }

    /// [`LocalCluster::psql`]; `terse` sets `VERBOSITY=terse`, so errors do not quote the statement
    /// (used when the SQL holds a password).
    fn run_psql(&self, db: &str, sql: &str, terse: bool) -> Result<String, ClusterError> {
        check_no_nul("database name", db)?;
        let port = self.port.to_string();
        let verbosity = if terse {
            "VERBOSITY=terse"
        } else {
            "VERBOSITY=default"
        };
        let spec = CommandSpec::new(self.tool("psql"))
            .args([
                "-X",
                "-v",
                "ON_ERROR_STOP=1",
                "-v",
                verbosity,
                "-At",
                "-q",
                "-f",
                "-",
                "-h",
            ])
            .arg(self.socket_dir.as_os_str())
            .args(["-p", port.as_str(), "-U", self.superuser(), "-d", db])
            .env("PGCLIENTENCODING", "UTF8")
            .stdin(sql.as_bytes().to_vec());
        spec.run_direct()
    }

    /// Create a login role with `password` stored with `method`, via
    /// `SET password_encryption = ...; CREATE ROLE ... LOGIN PASSWORD ...`.
    pub fn create_user(
        &self,
        name: &str,
        password: &str,
        method: PasswordMethod,
    ) -> Result<(), ClusterError> {
        check_no_nul("role name", name)?;
        check_no_nul("password", password)?;
        let sql = format!(
            "SET password_encryption = {};\nCREATE ROLE {} LOGIN PASSWORD {};\n",
            quote_literal(method.setting()),
            quote_ident(name),
            quote_literal(password),
        );
        self.run_psql("postgres", &sql, true).map(drop)
    }

    /// `CREATE DATABASE name OWNER owner`.
    pub fn create_database(&self, name: &str, owner: &str) -> Result<(), ClusterError> {
        check_no_nul("database name", name)?;
        check_no_nul("owner name", owner)?;
        let sql = format!(
            "CREATE DATABASE {} OWNER {};\n",
            quote_ident(name),
            quote_ident(owner)
        );
        self.psql("postgres", &sql).map(drop)
    }

    /// The PostgreSQL server binary directory: `$PGVEIL_PG_BINDIR`, else `pg_config --bindir` if it holds
    /// `initdb`, else the newest `/usr/lib/postgresql/*/bin`.
    pub fn bindir() -> Result<PathBuf, ClusterError> {
        let has_initdb = |dir: &Path| dir.join("initdb").is_file();
        if let Some(dir) = std::env::var_os(BINDIR_ENV).map(PathBuf::from) {
            return if has_initdb(&dir) {
                Ok(dir)
            } else {
                Err(ClusterError::NoBinaries)
            };
        }
        if let Ok(out) = std::process::Command::new("pg_config")
            .arg("--bindir")
            .output()
        {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if out.status.success() && has_initdb(&dir) {
                return Ok(dir);
            }
        }
        let mut best: Option<(Vec<u32>, PathBuf)> = None;
        for entry in fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
        {
            let version: Option<Vec<u32>> = entry
                .file_name()
                .to_str()
                .and_then(|v| v.split('.').map(|p| p.parse().ok()).collect());
            let dir = entry.path().join("bin");
            if let Some(version) = version.filter(|_| has_initdb(&dir))
                && best.as_ref().is_none_or(|(b, _)| version > *b)
            {
                best = Some((version, dir));
            }
        }
        best.map(|(_, dir)| dir).ok_or(ClusterError::NoBinaries)
    }

    /// Stop the server: `pg_ctl stop -m fast`, falling back to `-m immediate`. Idempotent.
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        self.running = false;
        if self.pg_ctl_stop("fast").is_err() {
            // Best effort: a server that does not even stop in immediate mode is left to the OS.
            let _ = self.pg_ctl_stop("immediate");
        }
    }

    /// Restarts the server on the same port (`pg_ctl stop -m <mode>`, then start), as an operator would:
    /// every connection to it ends. For tests of what clients of a proxy see across a restart.
    pub fn restart(&self, mode: &str) -> Result<(), ClusterError> {
        self.pg_ctl_stop(mode)?;
        self.pg_ctl_start()?;
        for _ in 0..50 {
            if self.psql("postgres", "SELECT 1").is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(ClusterError::Start {
            reason: "no answer after the restart".into(),
            log_tail: self.log_tail(),
        })
    }

    /// Path of a server binary.
    fn tool(&self, name: &str) -> PathBuf {
        self.bindir.join(name)
    }

    /// Run `initdb` as the server user.
    fn initdb(&self) -> Result<(), ClusterError> {
        let spec = CommandSpec::new(self.tool("initdb"))
            .arg("-D")
            .arg(self.data_dir.as_os_str())
            .args([
                "-U",
                self.superuser(),
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
            ])
            .args(["--no-sync", "--no-instructions"]);
        self.user.run(spec).map(drop)
    }

    /// Append our settings to postgresql.conf, write pg_hba.conf, install the TLS files.
    fn configure(&self, opts: &ClusterOptions) -> Result<(), ClusterError> {
        let mut conf = String::from("\n# --- pgveil LocalCluster ---\n");
        let mut set =
            |key: &str, value: &str| conf.push_str(&format!("{key} = {}\n", quote_literal(value)));
        set("listen_addresses", HOST);
        set("unix_socket_directories", &path_str(&self.socket_dir)?);
        set("max_connections", "200");
        set("fsync", "off");
        set("synchronous_commit", "off");
        set("full_page_writes", "off");
        set("shared_buffers", "64MB");
        // Docker's default /dev/shm is 64 MB, too small for many parallel clusters' POSIX DSM segments.
        set("dynamic_shared_memory_type", "mmap");
        set("logging_collector", "off");
        set("log_line_prefix", "%m [%p] %q%u@%d ");
        if let Some((cert, key)) = &opts.ssl {
            self.install_tls_file(cert, "server.crt", 0o644)?;
            self.install_tls_file(key, "server.key", 0o600)?;
            set("ssl", "on");
            set("ssl_cert_file", "server.crt");
            set("ssl_key_file", "server.key");
        } else {
            set("ssl", "off");
        }
        append(&self.data_dir.join("postgresql.conf"), &conf)?;

        // `host` lines also cover TLS connections, so no separate `hostssl` lines are needed.
        let hba = "\
# TYPE  DATABASE  USER            ADDRESS        METHOD
local   all       all                            trust
host    all       cleartext_user  127.0.0.1/32   password
host    all       cleartext_user  ::1/128        password
host    all       all             127.0.0.1/32   md5
host    all       all             ::1/128        md5
";
        let hba_path = self.data_dir.join("pg_hba.conf");
        fs::write(&hba_path, hba).map_err(io_err(format!("writing {}", hba_path.display())))
    }

    /// Copy a TLS file into the data directory, owned by the server user with the given mode.
    fn install_tls_file(&self, src: &Path, name: &str, mode: u32) -> Result<(), ClusterError> {
        let dst = self.data_dir.join(name);
        fs::copy(src, &dst).map_err(io_err(format!(
            "copying {} to {}",
            src.display(),
            dst.display()
        )))?;
        fs::set_permissions(&dst, fs::Permissions::from_mode(mode))
            .map_err(io_err(format!("setting the mode of {}", dst.display())))?;
        self.user.give(&dst)
    }

    /// Start the server on a free port, retrying on a port clash.
    fn start_server(&mut self) -> Result<(), ClusterError> {
        let mut last_reason = String::new();
        for _ in 0..START_ATTEMPTS {
            self.port = free_port()?;
            self.running = true;
            match self.pg_ctl_start() {
                Ok(()) => return self.wait_ready(),
                Err(err) => {
                    // The postmaster may still be up (e.g. pg_ctl timed out): make sure it is gone.
                    self.stop();
                    last_reason = err.to_string();
                    if !self.log_tail().contains("already in use") {
                        break;
                    }
                }
            }
        }
        Err(ClusterError::Start {
            reason: last_reason,
            log_tail: self.log_tail(),
        })
    }

    /// `pg_ctl start -w` with the chosen port.
    fn pg_ctl_start(&self) -> Result<(), ClusterError> {
        let spec = CommandSpec::new(self.tool("pg_ctl"))
            .arg("-D")
            .arg(self.data_dir.as_os_str())
            .arg("-l")
            .arg(self.log_file.as_os_str())
            .args([
                "-w",
                "-t",
                &PG_CTL_WAIT_SECS.to_string(),
                "-o",
                &format!("-p {}", self.port),
                "start",
            ]);
        self.user.run(spec).map(drop)
    }

    /// `pg_ctl stop -w -m <mode>`.
    fn pg_ctl_stop(&self, mode: &str) -> Result<(), ClusterError> {
        let spec = CommandSpec::new(self.tool("pg_ctl"))
            .arg("-D")
            .arg(self.data_dir.as_os_str())
            .args([
                "-w",
                "-t",
                &PG_CTL_WAIT_SECS.to_string(),
                "-m",
                mode,
                "stop",
            ]);
        self.user.run(spec).map(drop)
    }

    /// Confirm the server answers queries over the socket and accepts TCP connections.
    fn wait_ready(&mut self) -> Result<(), ClusterError> {
        let mut last = String::new();
        for _ in 0..50 {
            match self.psql("postgres", "SELECT 1") {
                Ok(_) if std::net::TcpStream::connect((HOST, self.port)).is_ok() => return Ok(()),
                Ok(_) => last = format!("nothing accepts TCP connections on {HOST}:{}", self.port),
                Err(err) => last = err.to_string(),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.stop();
        Err(ClusterError::Start {
            reason: last,
            log_tail: self.log_tail(),
        })
    }

    /// The last lines of the server log (empty if it cannot be read).
    fn log_tail(&self) -> String {
        let text = fs::read(&self.log_file)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }
}

impl Drop for LocalCluster {
    /// Stops the server; the temporary directory is deleted when `tmp` drops right after.
    fn drop(&mut self) {
        self.stop();
    }
}

/// Ask the OS for a free 127.0.0.1 port (bind port 0, read it, release it), avoiding reserved ports.
fn free_port() -> Result<u16, ClusterError> {
    loop {
        let listener = TcpListener::bind((HOST, 0))
            .map_err(io_err("binding 127.0.0.1:0 to find a free port"))?;
        let port = listener
            .local_addr()
            .map_err(io_err("reading the probe listener's address"))?
            .port();
        if !RESERVED_PORTS.contains(&port) {
            return Ok(port);
        }
    }
}

/// Append text to a file.
fn append(path: &Path, text: &str) -> Result<(), ClusterError> {
    use std::io::Write;
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(io_err(format!("opening {}", path.display())))?;
    file.write_all(text.as_bytes())
        .map_err(io_err(format!("writing {}", path.display())))
}

/// A path as UTF-8 text, for configuration files.
fn path_str(path: &Path) -> Result<String, ClusterError> {
    path.to_str()
        .map(str::to_owned)
        .ok_or_else(|| ClusterError::InvalidInput {
            what: "path",
            reason: format!("{} is not valid UTF-8", path.display()),
        })
}

/// Reject strings PostgreSQL cannot carry.
fn check_no_nul(what: &'static str, value: &str) -> Result<(), ClusterError> {
    if value.contains('\0') {
        return Err(ClusterError::InvalidInput {
            what,
            reason: "contains a NUL byte".into(),
        });
    }
    Ok(())
}

/// Quote an SQL identifier: `"` around it, inner `"` doubled.
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Quote an SQL string literal (standard_conforming_strings on): `'` around it, inner `'` doubled.
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}
