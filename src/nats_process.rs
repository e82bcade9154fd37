//! Throwaway `nats-server` processes with JetStream, for the benchmarks and the tests.
//!
//! [`NatsProcess::start`] runs `nats-server` on a free loopback port with JetStream storing
//! in its own temporary directory, waits until it answers with JetStream enabled, and kills
//! it and removes the directory when dropped. [`NatsProcess::kill_9`] and
//! [`NatsProcess::restart`] crash it and bring it back on the same port with the same store.
//! [`NatsServerOptions`] adds a JetStream domain and leaf-node links, for topologies of
//! several servers on one machine.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::redis_process::free_port;

/// Why a `nats-server` could not be run.
#[derive(Debug, thiserror::Error)]
pub enum NatsProcessError {
    /// The binary is missing.
    #[error(
        "nats-server is not installed (not on PATH nor in /usr/sbin or /usr/local/bin); install it, e.g. `sudo apt-get install -y nats-server` on Debian or Ubuntu, `brew install nats-server` on macOS"
    )]
    NotInstalled,
    /// It started but never answered.
    #[error("nats-server on port {port} was not ready within {waited:?}: {detail}")]
    NotReady {
        /// Its port.
        port: u16,
        /// How long we waited.
        waited: Duration,
        /// What we saw.
        detail: String,
    },
    /// Some other I/O problem.
    #[error("cannot run nats-server: {0}")]
    Io(#[from] std::io::Error),
}

/// How to run a server beyond the defaults (JetStream on, no domain, no leaf nodes).
#[derive(Clone, Debug, Default)]
pub struct NatsServerOptions {
    /// The JetStream domain (needed when leaf nodes with their own JetStream connect).
    pub domain: Option<String>,
    /// Accept leaf-node connections on a free port.
    pub leaf_listen: bool,
    /// Connect as a leaf node to the hub listening for leaf nodes on this port.
    pub leaf_remote: Option<u16>,
}

/// A `nats-server` child process on 127.0.0.1 with JetStream.
pub struct NatsProcess {
    child: Option<Child>,
    binary: PathBuf,
    port: u16,
    leaf_port: Option<u16>,
    options: NatsServerOptions,
    dir: tempfile::TempDir,
}

/// The `nats-server` binary: on PATH, or where Debian and manual installs put it.
pub fn nats_server_binary() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/bin")])
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file())
}

impl NatsProcess {
    /// Starts a fresh, empty JetStream server on a free port.
    pub fn start() -> Result<NatsProcess, NatsProcessError> {
        NatsProcess::start_with(NatsServerOptions::default())
    }

    /// Starts one with a domain and leaf-node links.
    pub fn start_with(options: NatsServerOptions) -> Result<NatsProcess, NatsProcessError> {
        let binary = nats_server_binary().ok_or(NatsProcessError::NotInstalled)?;
        let mut last_error = None;
        // A free port can be taken between our probe and the server's bind: try a few.
        for _ in 0..5 {
            let mut process = NatsProcess {
                child: None,
                binary: binary.clone(),
                port: free_port()?,
                leaf_port: if options.leaf_listen {
                    Some(free_port()?)
                } else {
                    None
                },
                options: options.clone(),
                dir: tempfile::Builder::new().prefix("regis-nats-").tempdir()?,
            };
            match process.spawn() {
                Ok(()) => return Ok(process),
                Err(err) => last_error = Some(err),
            }
        }
        Err(last_error.unwrap_or(NatsProcessError::NotInstalled))
    }

    fn config_text(&self) -> String {
        let store = self.dir.path().join("jetstream");
        let mut text = format!(
            "listen: \"127.0.0.1:{}\"\nlog_file: {:?}\njetstream {{\n  store_dir: {:?}\n",
            self.port,
            self.log_path().display().to_string(),
            store.display().to_string(),
        );
        if let Some(domain) = &self.options.domain {
            text.push_str(&format!("  domain: {domain:?}\n"));
        }
        text.push_str("}\n");
        if let Some(leaf_port) = self.leaf_port {
            text.push_str(&format!(
                "leafnodes {{\n  listen: \"127.0.0.1:{leaf_port}\"\n}}\n"
            ));
        }
        if let Some(remote) = self.options.leaf_remote {
            text.push_str(&format!(
                "leafnodes {{\n  reconnect: 1\n  remotes: [ {{ url: \"nats-leaf://127.0.0.1:{remote}\" }} ]\n}}\n"
            ));
        }
        text
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats.log")
    }

    fn spawn(&mut self) -> Result<(), NatsProcessError> {
        let config = self.dir.path().join("nats.conf");
        std::fs::write(&config, self.config_text())?;
        // Before the log file is open (a config error), the server writes to stderr.
        let stderr = std::fs::File::create(self.dir.path().join("stderr.log"))?;
        let mut command = Command::new(&self.binary);
        command
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        crate::redis_process::die_with_parent(&mut command);
        let child = command.spawn().map_err(|err| match err.kind() {
            std::io::ErrorKind::NotFound => NatsProcessError::NotInstalled,
            _ => NatsProcessError::Io(err),
        })?;
        self.child = Some(child);
        let waited = Duration::from_secs(15);
        let deadline = Instant::now() + waited;
        let mut detail = String::from("no answer");
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(NatsProcessError::NotReady {
                    port: self.port,
                    waited,
                    detail: format!(
                        "exited with {status}: {} {}",
                        last_line(&self.dir.path().join("stderr.log")),
                        last_line(&self.log_path())
                    ),
                });
            }
            match jetstream_ready(self.port) {
                Ok(()) => return Ok(()),
                Err(err) => detail = err,
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        Err(NatsProcessError::NotReady {
            port: self.port,
            waited,
            detail,
        })
    }

    /// Its client port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port leaf nodes connect to, when it accepts them.
    pub fn leaf_port(&self) -> Option<u16> {
        self.leaf_port
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Its directory (config, log, JetStream store).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether it is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL: a crash, nothing flushed beyond what the server already wrote.
    pub fn kill_9(&mut self) {
        self.kill();
    }

    /// Starts it again on the same port with the same JetStream store.
    pub fn restart(&mut self) -> Result<(), NatsProcessError> {
        self.kill();
        self.spawn()
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn last_line(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .last()
        .unwrap_or("")
        .to_string()
}

/// Reads the server's INFO line: up, and with JetStream enabled.
fn jetstream_ready(port: u16) -> Result<(), String> {
    let stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let mut info = String::new();
    reader.read_line(&mut info).map_err(|e| e.to_string())?;
    let _ = reader.get_mut().write_all(b"QUIT\r\n");
    if !info.starts_with("INFO ") {
        return Err(format!("answered {info:?}"));
    }
    if !info.contains("\"jetstream\":true") {
        return Err("up, but JetStream is not enabled yet".into());
    }
    Ok(())
}
