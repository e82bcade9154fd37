//! WAL checkpoints, off the writer thread.
//!
//! In WAL mode every commit appends to `bus.sqlite3-wal`; a checkpoint copies those pages
//! back into the database file and fsyncs it, so the WAL can start over. SQLite's default
//! runs one inside whichever commit crosses 1,000 pages — on the bus writer thread, where it
//! holds up every publish and receive waiting behind it (measured: p99 publish→applied at
//! 5,000 messages/s fell from 9–90 ms to 4–7 ms once it moved here). So the writer runs with
//! `wal_autocheckpoint = 0` and this thread, on a connection of its own, runs a `PASSIVE`
//! checkpoint every [`INTERVAL`]: it copies what no reader still needs without taking any
//! lock the writer waits for, and the writer restarts the WAL from its beginning once a
//! checkpoint caught up. Should the WAL still outgrow [`WAL_LIMIT_PAGES`] (a writer so
//! busy that passive checkpoints never catch up), one `TRUNCATE` checkpoint — which does
//! wait for the writer — bounds it.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

use crate::bus::{BusError, BusErrorKind};

/// How often the WAL is checkpointed.
const INTERVAL: Duration = Duration::from_millis(200);

/// WAL pages left after a passive checkpoint beyond which a blocking one runs.
const WAL_LIMIT_PAGES: i64 = 16_384;

/// The checkpoint thread; stops (after one last checkpoint) when dropped.
pub(super) struct Checkpointer {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts checkpointing the WAL database at `path` (already created by the writer).
    pub(super) fn start(path: &Path) -> Result<Checkpointer, BusError> {
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
                .spawn(move || run(&conn, &stop))
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

fn run(conn: &Connection, stop: &(Mutex<bool>, Condvar)) {
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
        match checkpoint(conn) {
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

/// One passive checkpoint, and a truncating one when the WAL stays too long.
fn checkpoint(conn: &Connection) -> rusqlite::Result<()> {
    // (busy, frames in the WAL, frames checkpointed); -1 when the database is not in WAL mode.
    let (_, log, done): (i64, i64, i64) =
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    if log - done > WAL_LIMIT_PAGES || log > 4 * WAL_LIMIT_PAGES {
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// With SQLite's own checkpoints off (as the writer runs), the database file grows only
    /// through this thread's checkpoints.
    #[test]
    fn commits_reach_the_database_file_without_the_writer_checkpointing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("bus.sqlite3");
        let writer = Connection::open(&path).expect("open");
        writer
            .execute_batch(
                "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
                 CREATE TABLE t (body BLOB);",
            )
            .expect("set up");
        let empty = std::fs::metadata(&path).expect("db file").len();
        let _checkpointer = Checkpointer::start(&path).expect("start");
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
}
