//! WAL checkpoints, off the writer thread.
//!
//! In WAL mode every commit appends to `bus.sqlite3-wal`; a checkpoint copies those pages
//! back into the database file and fsyncs it, so the WAL can start over. SQLite's default
//! runs one inside whichever commit crosses 1,000 pages — on the bus writer thread, where it
//! holds up every publish and receive waiting behind it (measured with `regis bench --suite
//! e2e --messages 100000 --duration 5s`: p99 publish→applied at 5,000 messages/s fell from
//! 9–90 ms to 6–8 ms once it moved here). So the writer runs with
//! `wal_autocheckpoint = 0` and this thread, on a connection of its own, runs a `PASSIVE`
//! checkpoint every [`INTERVAL`]: it copies what no reader still needs without taking any
//! lock the writer waits for. The writer starts the WAL over only when a checkpoint has
//! caught up with it, which a writer that never pauses does not allow; so once the WAL
//! passes [`WAL_RESTART_PAGES`], this thread raises a flag ([`WalRestart`]) and the writer,
//! between two transactions, runs a `RESTART` checkpoint itself: it copies only the few
//! pages written since the last passive one and fsyncs, and its next commit starts the WAL
//! from its beginning (SQLite truncates it to `journal_size_limit`). Done from this thread,
//! the restart would wait for the writer's lock and a busy writer could starve it.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

use crate::bus::{BusError, BusErrorKind};

/// How often the WAL is checkpointed.
const INTERVAL: Duration = Duration::from_millis(200);

/// WAL length (pages) past which the WAL is started over (16 MiB with 4 KiB pages).
const WAL_RESTART_PAGES: i64 = 4_096;

/// Raised by the checkpoint thread when the WAL should be started over; the writer runs
/// [`WalRestart::run_if_wanted`] between transactions.
#[derive(Clone, Default)]
pub(super) struct WalRestart(Arc<AtomicBool>);

impl WalRestart {
    fn want(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// On the writer's connection, outside any transaction: restarts the WAL when asked.
    pub(super) fn run_if_wanted(&self, conn: &Connection) -> rusqlite::Result<()> {
        if self.0.swap(false, Ordering::Relaxed) {
            conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()))?;
        }
        Ok(())
    }
}

/// The checkpoint thread; stops (after one last checkpoint) when dropped.
pub(super) struct Checkpointer {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts checkpointing the WAL database at `path` (already created by the writer).
    pub(super) fn start(path: &Path, restart: WalRestart) -> Result<Checkpointer, BusError> {
        let conn = Connection::open(path)
            .and_then(|conn| {
                conn.execute_batch("PRAGMA busy_timeout=5000;")?;
                Ok(conn)
            })
            .map_err(|err| {
                BusError::new(
                    BusErrorKind::Storage,
                    format!(
                        "cannot open the embedded bus at {} for checkpoints: {err}",
                        path.display()
                    ),
                )
            })?;
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("regis-bus-checkpoint".into())
                .spawn(move || run(&conn, &stop, &restart))
                .map_err(|err| {
                    BusError::new(
                        BusErrorKind::Storage,
                        format!("cannot start the bus checkpoint thread: {err}"),
                    )
                })?
        };
        Ok(Checkpointer {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        let (stopped, wake) = &*self.stop;
        if let Ok(mut stopped) = stopped.lock() {
            *stopped = true;
        }
        wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(conn: &Connection, stop: &(Mutex<bool>, Condvar), restart: &WalRestart) {
    let (stopped, wake) = stop;
    let mut failing = false;
    loop {
        let done = match stopped.lock() {
            Ok(guard) => match wake.wait_timeout_while(guard, INTERVAL, |stopped| !*stopped) {
                Ok((guard, _)) => *guard,
                Err(_) => true,
            },
            Err(_) => true,
        };
        match checkpoint(conn, restart) {
            Ok(()) => failing = false,
            // Logged once per failing spell: a full disk fails every attempt until freed.
            Err(err) if !failing => {
                failing = true;
                tracing::warn!(error = %err, "embedded bus: WAL checkpoint failed; retrying");
            }
            Err(_) => {}
        }
        if done {
            return;
        }
    }
}

/// One passive checkpoint; asks the writer to start the WAL over when it has grown long.
fn checkpoint(conn: &Connection, restart: &WalRestart) -> rusqlite::Result<()> {
    // (busy, frames in the WAL, frames checkpointed); -1 when the database is not in WAL mode.
    let (_, log, _): (i64, i64, i64) =
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    if log > WAL_RESTART_PAGES {
        restart.want();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// A database in WAL mode with SQLite's own checkpoints off, as the bus writer runs it,
    /// plus `pragmas`, and a table `t (body BLOB)` to write.
    fn wal_writer(pragmas: &str) -> (tempfile::TempDir, std::path::PathBuf, Connection) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("bus.sqlite3");
        let writer = Connection::open(&path).expect("open");
        writer
            .execute_batch(&format!(
                "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0; {pragmas}
                 CREATE TABLE t (body BLOB);"
            ))
            .expect("set up");
        (dir, path, writer)
    }

    /// With SQLite's own checkpoints off (as the writer runs), the database file grows only
    /// through this thread's checkpoints.
    #[test]
    fn commits_reach_the_database_file_without_the_writer_checkpointing() {
        let (_dir, path, writer) = wal_writer("");
        let empty = std::fs::metadata(&path).expect("db file").len();
        let _checkpointer = Checkpointer::start(&path, WalRestart::default()).expect("start");
        for _ in 0..500 {
            writer
                .execute("INSERT INTO t (body) VALUES (zeroblob(4096))", [])
                .expect("insert");
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let size = std::fs::metadata(&path).expect("db file").len();
            if size > empty + 1_000_000 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the database file is still {size} bytes (empty: {empty}): nothing was checkpointed"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A writer that never pauses still gets its WAL started over: the file stays bounded
    /// instead of growing with everything written.
    #[test]
    fn the_wal_of_a_writer_that_never_pauses_stays_bounded() {
        let (dir, path, writer) = wal_writer("PRAGMA journal_size_limit=16777216;");
        let restart = WalRestart::default();
        let _checkpointer = Checkpointer::start(&path, restart.clone()).expect("start");
        let wal = dir.path().join("bus.sqlite3-wal");
        // About 200 MiB written in commits of 64 rows of 4,000 bytes, with no pause.
        let mut largest = 0;
        for _ in 0..800 {
            writer
                .execute_batch(
                    "BEGIN;
                     INSERT INTO t (body) SELECT zeroblob(4000) FROM
                       (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 64)
                        SELECT i FROM n);
                     DELETE FROM t WHERE rowid < (SELECT MAX(rowid) - 256 FROM t);
                     COMMIT;",
                )
                .expect("commit");
            restart.run_if_wanted(&writer).expect("restart");
            largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
        }
        let bound = 100 * 1024 * 1024;
        assert!(
            largest < bound,
            "the WAL reached {largest} bytes (bound {bound}) of ~200 MiB written"
        );
    }
}
