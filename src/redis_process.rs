//! Throwaway `redis-server` processes for the demo, the benchmarks and the tests.
//!
//! [`RedisProcess::start`] runs `redis-server` on a free loopback port with its own
//! temporary directory and no persistence, waits until it answers `PING`, and kills it and
//! removes the directory when dropped. [`RedisProcess::stop`] and [`RedisProcess::restart`]
//! take a region down and bring it back on the same port.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why a `redis-server` could not be run.
#[derive(Debug, thiserror::Error)]
pub enum RedisProcessError {
    /// The binary is missing.
    #[error(
        "redis-server is not installed (not found on PATH); install it, e.g. `sudo apt-get install -y redis-server` on Debian or Ubuntu, `brew install redis` on macOS"
    )]
    NotInstalled,
    /// It started but never answered.
    #[error("redis-server on port {port} did not answer PING within {waited:?}: {detail}")]
    NotReady {
        /// Its port.
        port: u16,
        /// How long we waited.
        waited: Duration,
        /// What we saw.
        detail: String,
    },
    /// Some other I/O problem.
    #[error("cannot run redis-server: {0}")]
    Io(#[from] std::io::Error),
}

/// A `redis-server` child process on 127.0.0.1.
pub struct RedisProcess {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    extra_args: Vec<String>,
}

/// A connection for tools, tests and benchmarks to any Redis. The redis crate's default
/// response timeout (500 ms) fails a `FLUSHALL` or a big `INFO` on a busy machine; these
/// callers want an answer, so they wait up to a minute.
pub async fn connect(url: &str) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(10)))
        .set_response_timeout(Some(Duration::from_secs(60)));
    redis::Client::open(url)?
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// A port that was free a moment ago.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl RedisProcess {
    /// Starts a fresh, empty Redis on a free port.
    pub fn start() -> Result<RedisProcess, RedisProcessError> {
        RedisProcess::start_with(&[])
    }

    /// Starts one with extra `redis-server` arguments (e.g. `["--replicaof", ...]`).
    pub fn start_with(extra_args: &[&str]) -> Result<RedisProcess, RedisProcessError> {
        let mut last_error = None;
        // A free port can be taken between our probe and redis-server's bind: try a few.
        for _ in 0..5 {
            let port = free_port()?;
            let mut process = RedisProcess {
                child: None,
                port,
                dir: tempfile::Builder::new().prefix("regis-redis-").tempdir()?,
                extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            };
            match process.spawn() {
                Ok(()) => return Ok(process),
                Err(RedisProcessError::NotInstalled) => {
                    return Err(RedisProcessError::NotInstalled);
                }
                Err(err) => last_error = Some(err),
            }
        }
        Err(last_error.unwrap_or(RedisProcessError::NotInstalled))
    }

    fn spawn(&mut self) -> Result<(), RedisProcessError> {
        let log = self.dir.path().join("redis.log");
        let mut command = Command::new("redis-server");
        command
            .arg("--port")
            .arg(self.port.to_string())
            .args([
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        die_with_parent(&mut command);
        let child = command.spawn().map_err(|err| match err.kind() {
            std::io::ErrorKind::NotFound => RedisProcessError::NotInstalled,
            _ => RedisProcessError::Io(err),
        })?;
        self.child = Some(child);
        let waited = Duration::from_secs(10);
        let deadline = Instant::now() + waited;
        let mut detail = String::from("no answer");
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(RedisProcessError::NotReady {
                    port: self.port,
                    waited,
                    detail: format!("exited with {status}: {}", log.lines().last().unwrap_or("")),
                });
            }
            match ping(self.port) {
                Ok(()) => return Ok(()),
                Err(err) => detail = err,
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        Err(RedisProcessError::NotReady {
            port: self.port,
            waited,
            detail,
        })
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Its working directory.
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether it is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Shuts it down after saving its data to its directory, so [`RedisProcess::restart`]
    /// brings it back with the same data (a maintenance restart rather than a crash).
    pub fn shutdown_saving(&mut self) {
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) {
            let _ = stream.write_all(b"SHUTDOWN SAVE\r\n");
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let mut sink = [0u8; 64];
            let _ = stream.read(&mut sink);
        }
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills it (like a crash: nothing is saved). Idempotent.
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Starts it again on the same port (with whatever [`RedisProcess::shutdown_saving`] saved).
    pub fn restart(&mut self) -> Result<(), RedisProcessError> {
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

impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Makes the child die when the thread that spawned it exits, so a test process killed by
/// a timeout (which runs no destructors) leaves no `redis-server` behind. Call `start` and
/// `restart` from a thread that outlives the process they start (a test's own thread, or
/// `main`), not from a short-lived blocking thread.
pub fn die_with_parent(command: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = command;
}

/// One `PING` over a raw socket: no client library needed to know it is up.
fn ping(port: u16) -> Result<(), String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .map_err(|e| e.to_string())?;
    stream.write_all(b"PING\r\n").map_err(|e| e.to_string())?;
    let mut reply = [0u8; 64];
    let n = stream.read(&mut reply).map_err(|e| e.to_string())?;
    if reply[..n].starts_with(b"+PONG") {
        Ok(())
    } else {
        Err(format!(
            "answered {:?}",
            String::from_utf8_lossy(&reply[..n])
        ))
    }
}
