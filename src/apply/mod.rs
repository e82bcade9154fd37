//! Applying messages to one region's Redis.
//!
//! [`RegionRedis`] owns the connections to a region's Redis (one per database a message
//! targets, created lazily so a region that is down at start-up is not an error).
//! [`Applier`] applies a batch of decoded messages and reports one outcome per message, or a
//! failure of the whole batch when the Redis could not be reached. A failure that concerns
//! one database only (the region's Redis has no such database) is an outcome of that
//! database's messages, never of the batch. How commands are applied
//! depends on the convergence mode: [`raw`] for `none`, [`lww`] for `lww`.

pub mod failure;
pub mod lww;
pub mod raw;

use std::collections::HashMap;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ConnectionInfo, IntoConnectionInfo};

pub use failure::Failure;

use crate::command::Convergence;
use crate::envelope::Envelope;

/// Connections to one region's Redis.
pub struct RegionRedis {
    info: ConnectionInfo,
    timeout: Duration,
    connections: HashMap<u32, ConnectionManager>,
}

/// A Redis URL that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid Redis URL {url:?}: {reason}")]
pub struct BadRedisUrl {
    url: String,
    reason: String,
}

impl RegionRedis {
    /// Connections to the Redis at `url`; every round trip times out after `timeout`.
    pub fn new(url: &str, timeout: Duration) -> Result<RegionRedis, BadRedisUrl> {
        let info = url.into_connection_info().map_err(|err| BadRedisUrl {
            url: url.to_string(),
            reason: err.to_string(),
        })?;
        Ok(RegionRedis {
            info,
            timeout,
            connections: HashMap::new(),
        })
    }

    /// The connection for database `db`.
    pub fn connection(&mut self, db: u32) -> Result<ConnectionManager, Failure> {
        if let Some(conn) = self.connections.get(&db) {
            return Ok(conn.clone());
        }
        let settings = self.info.redis_settings().clone().set_db(i64::from(db));
        let info = self.info.clone().set_redis_settings(settings);
        let client =
            redis::Client::open(info).map_err(|err| Failure::Transient(err.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|err| Failure::Transient(err.to_string()))?;
        self.connections.insert(db, conn.clone());
        Ok(conn)
    }

    /// Whether the Redis answers `PING` now.
    pub async fn ping(&mut self) -> Result<(), Failure> {
        let mut conn = self.connection(0)?;
        redis::cmd("PING")
            .query_async::<()>(&mut conn)
            .await
            .map_err(|err| failure::classify(&err))
            .map_err(|f| Failure::Transient(f.message().to_string()))
    }
}

/// Applies batches of messages according to the convergence mode.
#[derive(Clone, Debug)]
pub struct Applier {
    mode: Convergence,
    lww: lww::LwwScript,
}

/// One outcome per message, in batch order.
pub type Outcomes = Vec<Result<(), Failure>>;

impl Applier {
    /// An applier for `mode`; `tombstone_ttl` bounds how long `lww` metadata is kept.
    pub fn new(mode: Convergence, tombstone_ttl: Duration) -> Applier {
        Applier {
            mode,
            lww: lww::LwwScript::new(tombstone_ttl),
        }
    }

    /// The convergence mode.
    pub fn mode(&self) -> Convergence {
        self.mode
    }

    /// Applies `batch` to the region. `Err` means nothing can be said of any message (the
    /// Redis is unreachable); otherwise each message has its own outcome.
    ///
    /// Messages are applied one database at a time, and a failure of one database's round
    /// trip belongs to that database's messages alone: a database the region's Redis does
    /// not have (`SELECT` refused) fails its messages permanently, so they are dead-lettered
    /// after `max_receives` like any poison, while the other databases' messages are applied.
    /// Only when no database got an answer from the Redis, and at least one failure says
    /// "not now", is the batch's failure the region's (an outage).
    pub async fn apply(
        &self,
        redis: &mut RegionRedis,
        batch: &[Envelope],
    ) -> Result<Outcomes, Failure> {
        let mut outcomes: Vec<Option<Result<(), Failure>>> = vec![None; batch.len()];
        // Group by database, keeping each group's order.
        let mut groups: Vec<(u32, Vec<usize>)> = Vec::new();
        for (i, envelope) in batch.iter().enumerate() {
            match groups.iter_mut().find(|(db, _)| *db == envelope.db) {
                Some((_, members)) => members.push(i),
                None => groups.push((envelope.db, vec![i])),
            }
        }
        // Whether the Redis answered anything (a permanent failure is an answer too).
        let mut answered = false;
        let mut unreachable: Option<Failure> = None;
        for (db, members) in groups {
            let group: Vec<&Envelope> = members.iter().map(|&i| &batch[i]).collect();
            match self.apply_database(redis, db, &group).await {
                Ok(results) => {
                    answered = true;
                    for (i, result) in members.into_iter().zip(results) {
                        outcomes[i] = Some(result);
                    }
                }
                Err(failure) => {
                    let failure = match failure {
                        Failure::Permanent(reason) => {
                            answered = true;
                            Failure::Permanent(format!("database {db}: {reason}"))
                        }
                        transient => {
                            unreachable.get_or_insert_with(|| transient.clone());
                            transient
                        }
                    };
                    for i in members {
                        outcomes[i] = Some(Err(failure.clone()));
                    }
                }
            }
        }
        if !answered && let Some(failure) = unreachable {
            return Err(failure);
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Err(Failure::Transient("not applied".into()))))
            .collect())
    }

    /// Applies the messages of one database in one round trip; `Err` when the round trip as
    /// a whole failed (the connection, its `SELECT`, or the request).
    async fn apply_database(
        &self,
        redis: &mut RegionRedis,
        db: u32,
        group: &[&Envelope],
    ) -> Result<Outcomes, Failure> {
        let mut conn = redis.connection(db)?;
        match self.mode {
            Convergence::None => raw::apply(&mut conn, group).await,
            Convergence::Lww => self.lww.apply(&mut conn, group).await,
        }
    }
}
