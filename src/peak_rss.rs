//! The peak memory of a child process, for benchmarks and memory-bound tests.
//!
//! `wait4(2)` reaps a child and returns its resource usage, whose `ru_maxrss` is the
//! child's own peak resident set size as the kernel accounted it — no sampling, no race
//! with the child's exit, nothing of the parent's or of other children's memory mixed in.

use std::io::Read;
use std::process::Child;

/// How a child ended.
#[derive(Debug)]
pub struct Finished {
    /// Its exit code (`None` if a signal ended it).
    pub code: Option<i32>,
    /// Its peak resident set size, in bytes.
    pub peak_rss_bytes: u64,
    /// CPU time it used, user and system, in seconds.
    pub cpu_seconds: f64,
    /// What it wrote on stdout, if it was piped.
    pub stdout: String,
    /// What it wrote on stderr, if it was piped.
    pub stderr: String,
}

/// Collects a child's piped output, waits for it with `wait4` and returns its peak RSS.
#[cfg(unix)]
pub fn wait(mut child: Child) -> std::io::Result<Finished> {
    // Drain the pipes on their own threads so a chatty child cannot block on a full pipe.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let pid = libc::pid_t::try_from(child.id())
        .map_err(|_| std::io::Error::other("child pid out of range"))?;
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `status` and `usage` are valid for writes; `pid` is our own child, not
        // yet reaped (std's `Child` only reaps in `wait`/`try_wait`, which we never call).
        let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if reaped == pid {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    Ok(Finished {
        code,
        // Linux reports kilobytes, macOS bytes.
        peak_rss_bytes: (usage.ru_maxrss.max(0) as u64)
            * if cfg!(target_os = "macos") { 1 } else { 1024 },
        cpu_seconds: [usage.ru_utime, usage.ru_stime]
            .iter()
            .map(|t| t.tv_sec as f64 + t.tv_usec as f64 / 1e6)
            .sum(),
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn measures_the_child_itself() {
        // `tail -c N` must hold the last N bytes of its input: 64 MiB resident at its peak.
        let mut head = Command::new("head")
            .args(["-c", "67108864", "/dev/zero"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let tail = Command::new("tail")
            .args(["-c", "67108864"])
            .stdin(head.stdout.take().unwrap())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let big = wait(tail).unwrap();
        let _ = head.wait();
        assert_eq!(big.code, Some(0));
        assert!(big.peak_rss_bytes >= 64 << 20, "{big:?}");

        let small = wait(
            Command::new("echo")
                .arg("hi")
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(small.stdout, "hi\n");
        assert!(small.peak_rss_bytes < 32 << 20, "{small:?}");
    }
}
