//! Running the PostgreSQL command-line tools, as the right OS user, with a clean environment.

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use super::{ClusterError, io_err};

/// The OS user that runs the server binaries.
#[derive(Debug, Clone)]
pub(super) enum ServerUser {
    /// Not root: run the binaries directly as the current user.
    Current {
        /// The current user's name (also the bootstrap superuser's name).
        name: String,
    },
    /// Root: run them as the `postgres` user through `runuser`.
    Switched {
        /// The user's name.
        name: String,
        /// Its uid, for chown.
        uid: u32,
        /// Its primary gid, for chown.
        gid: u32,
    },
}

/// The name of the unprivileged user the server runs as when we are root.
const SWITCHED_USER: &str = "postgres";

impl ServerUser {
    /// Find out who we are, and when root who the server must run as. Cached after the first success.
    pub(super) fn detect() -> Result<ServerUser, ClusterError> {
        static CACHE: OnceLock<ServerUser> = OnceLock::new();
        if let Some(user) = CACHE.get() {
            return Ok(user.clone());
        }
        let euid: u32 = parse_id(&CommandSpec::new("id").arg("-u").run_direct()?)?;
        let user = if euid == 0 {
            let lookup = |flag: &str| -> Result<u32, ClusterError> {
                let out = CommandSpec::new("id")
                    .args([flag, SWITCHED_USER])
                    .run_direct()
                    .map_err(|err| ClusterError::NoServerUser(err.to_string()))?;
                parse_id(&out)
            };
            ServerUser::Switched {
                name: SWITCHED_USER.to_owned(),
                uid: lookup("-u")?,
                gid: lookup("-g")?,
            }
        } else {
            let name = CommandSpec::new("id")
                .arg("-un")
                .run_direct()?
                .trim()
                .to_owned();
            ServerUser::Current { name }
        };
        Ok(CACHE.get_or_init(|| user).clone())
    }

    /// The user's name.
    pub(super) fn name(&self) -> &str {
        match self {
            ServerUser::Current { name } | ServerUser::Switched { name, .. } => name,
        }
    }

    /// Whether the binaries run as another user than this process.
    pub(super) fn is_switched(&self) -> bool {
        matches!(self, ServerUser::Switched { .. })
    }

    /// Make `path` owned by the server user (no-op when not switching users).
    pub(super) fn give(&self, path: &Path) -> Result<(), ClusterError> {
        match self {
            ServerUser::Current { .. } => Ok(()),
            ServerUser::Switched { name, uid, gid } => {
                std::os::unix::fs::chown(path, Some(*uid), Some(*gid))
                    .map_err(io_err(format!("chown {name} {}", path.display())))
            }
        }
    }

    /// Run a command as this user and return its stdout.
    pub(super) fn run(&self, spec: CommandSpec) -> Result<String, ClusterError> {
        match self {
            ServerUser::Current { .. } => spec.run_direct(),
            ServerUser::Switched { name, .. } => {
                let mut wrapped = CommandSpec::new("runuser").args(["-u", name.as_str(), "--"]);
                wrapped.args.push(spec.program.into_os_string());
                wrapped.args.extend(spec.args);
                wrapped.envs = spec.envs;
                wrapped.stdin = spec.stdin;
                wrapped.run_direct()
            }
        }
    }
}

/// Parse the output of `id -u` / `id -g`.
fn parse_id(out: &str) -> Result<u32, ClusterError> {
    out.trim().parse().map_err(|_| ClusterError::InvalidInput {
        what: "output of `id`",
        reason: format!("not a number: {out:?}"),
    })
}

/// A command to run: program, arguments, extra environment and optional stdin bytes.
pub(super) struct CommandSpec {
    /// The program.
    program: PathBuf,
    /// Its arguments.
    args: Vec<OsString>,
    /// Extra environment variables.
    envs: Vec<(String, String)>,
    /// Bytes written to stdin (stdin is /dev/null when None).
    stdin: Option<Vec<u8>>,
}

impl CommandSpec {
    /// A command running `program` with no arguments.
    pub(super) fn new(program: impl Into<PathBuf>) -> CommandSpec {
        CommandSpec {
            program: program.into(),
            args: Vec::new(),
            envs: Vec::new(),
            stdin: None,
        }
    }

    /// Add one argument.
    pub(super) fn arg(mut self, arg: impl AsRef<OsStr>) -> CommandSpec {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Add arguments.
    pub(super) fn args<I, S>(mut self, args: I) -> CommandSpec
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Set an environment variable for the command.
    pub(super) fn env(mut self, key: &str, value: &str) -> CommandSpec {
        self.envs.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Feed these bytes to the command's stdin.
    pub(super) fn stdin(mut self, bytes: Vec<u8>) -> CommandSpec {
        self.stdin = Some(bytes);
        self
    }

    /// The command line, for error messages (SQL and secrets travel through stdin, never here).
    fn display(&self) -> String {
        let mut line = self.program.display().to_string();
        for arg in &self.args {
            line.push(' ');
            line.push_str(&arg.to_string_lossy());
        }
        line
    }

    /// Run as the current user; return stdout, or an error carrying stderr.
    ///
    /// The environment is cleaned of `PG*` variables (a developer's PGHOST or PGPASSWORD must not leak
    /// in), messages are forced to English (`LC_ALL=C`) and the working directory is `/`, which every
    /// user can enter (`runuser` keeps root's working directory otherwise).
    pub(super) fn run_direct(self) -> Result<String, ClusterError> {
        let command_line = self.display();
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args).current_dir("/").env("LC_ALL", "C");
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PG") {
                cmd.env_remove(key);
            }
        }
        cmd.envs(self.envs.iter().map(|(k, v)| (k, v)));
        cmd.stdin(if self.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let spawn_err = |source| ClusterError::Spawn {
            command: command_line.clone(),
            source,
        };
        let mut child = cmd.spawn().map_err(spawn_err)?;
        // Write stdin from a thread so a command producing lots of output cannot deadlock against us.
        let writer = match (self.stdin, child.stdin.take()) {
            (Some(bytes), Some(mut pipe)) => {
                Some(std::thread::spawn(move || pipe.write_all(&bytes)))
            }
            _ => None,
        };
        let output = child.wait_with_output().map_err(spawn_err)?;
        // A write error (e.g. EPIPE because the command exited early) shows up in the exit status and stderr.
        let _ = writer.map(std::thread::JoinHandle::join);
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if output.status.success() {
            Ok(stdout)
        } else {
            Err(ClusterError::CommandFailed {
                command: command_line,
                status: output.status.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            })
        }
    }
}
