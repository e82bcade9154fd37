//! The three ways of writing the workload without Regis, which Regis's figures are compared
//! with: the ceiling (pipelined writes into one Redis), the naive direct fan-out (the
//! producer pipelining every write into every region itself, as the original design
//! rejected: not durable, no retry), and Redis's own replication (a primary with
//! `replicaof` replicas, one per further region).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use redis::aio::MultiplexedConnection;
use tokio::sync::Mutex;

use super::measure::{self, Recorder};
use super::workload::Workload;
use crate::redis_process::{RedisProcess, connect};

/// Throughput and latency of one saturation run.
pub struct Saturation {
    /// Commands per second, counted until every copy had them.
    pub rate: f64,
    /// For `replicaof`: how far the replicas fell behind (bytes of replication stream), the
    /// most seen, and how long they took to catch up after the last write was acknowledged.
    pub replica_lag: Option<ReplicaLag>,
}

/// How far Redis's replicas fell behind the primary in a saturation run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ReplicaLag {
    pub max_bytes_behind: u64,
    pub max_commands_behind: u64,
    pub catch_up_ms: f64,
}

/// Pipelines `messages` commands of `batch` each into every URL at once, one connection
/// per URL; a command's latency is its pipeline's round trip to the slowest copy.
pub async fn pipelined(
    urls: &[String],
    workload: &Workload,
    messages: usize,
    batch: usize,
) -> anyhow::Result<(f64, Recorder)> {
    let started = Instant::now();
    let recorder = Arc::new(std::sync::Mutex::new(Recorder::new(started)));
    let mut tasks = tokio::task::JoinSet::new();
    for url in urls {
        let mut conn = connect(url)
            .await
            .with_context(|| format!("cannot connect to {url}"))?;
        let workload = workload.clone();
        let recorder = recorder.clone();
        tasks.spawn(async move {
            let mut n = 0;
            while n < messages {
                let end = (n + batch).min(messages);
                let mut pipe = redis::pipe();
                for i in n..end {
                    pipe.add_command(workload.redis_cmd(i)).ignore();
                }
                let sent = Instant::now();
                pipe.query_async::<()>(&mut conn).await?;
                let took = sent.elapsed();
                let mut recorder = recorder.lock().unwrap_or_else(|p| p.into_inner());
                for _ in n..end {
                    recorder.record(sent, took);
                }
                n = end;
            }
            anyhow::Ok(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    let rate = messages as f64 / started.elapsed().as_secs_f64();
    let recorder = Arc::try_unwrap(recorder)
        .map_err(|_| anyhow::anyhow!("a pipeline outlived the run"))?
        .into_inner()
        .unwrap_or_else(|p| p.into_inner());
    Ok((rate, recorder))
}

/// Each command written to every URL at `rate`, each on its own; latency until the last
/// copy answered.
pub async fn fixed_rate_direct(
    urls: &[String],
    workload: &Workload,
    rate: u64,
    duration: Duration,
) -> anyhow::Result<(usize, Recorder)> {
    let mut conns = Vec::new();
    for url in urls {
        conns.push(
            connect(url)
                .await
                .with_context(|| format!("cannot connect to {url}"))?,
        );
    }
    let workload = Arc::new(workload.clone());
    measure::fixed_rate(rate, duration, move |n| {
        let cmd = workload.redis_cmd(n);
        let conns = conns.clone();
        async move {
            let writes = conns.into_iter().map(|mut conn| {
                let cmd = cmd.clone();
                async move { cmd.query_async::<redis::Value>(&mut conn).await }
            });
            for result in futures_util::future::join_all(writes).await {
                result?;
            }
            anyhow::Ok(())
        }
    })
    .await
}

/// A primary and its replicas, all on this machine.
pub struct Replicated {
    pub primary: RedisProcess,
    pub replicas: Vec<RedisProcess>,
}

impl Replicated {
    /// Starts a primary and `replicas` replicas of it, and waits until every link is up.
    pub async fn start(replicas: usize) -> anyhow::Result<Replicated> {
        let primary = RedisProcess::start().context("cannot start the replication primary")?;
        let port = primary.port().to_string();
        let mut started = Vec::new();
        for i in 0..replicas {
            started.push(
                RedisProcess::start_with(&["--replicaof", "127.0.0.1", &port])
                    .with_context(|| format!("cannot start replica {i}"))?,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for replica in &started {
            let mut conn = connect(&replica.url()).await?;
            loop {
                let info: String = redis::cmd("INFO")
                    .arg("replication")
                    .query_async(&mut conn)
                    .await?;
                if info.contains("master_link_status:up") {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "replica on port {} did not link to its primary within 30s",
                        replica.port()
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(Replicated {
            primary,
            replicas: started,
        })
    }

    fn wait_cmd(&self) -> redis::Cmd {
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(self.replicas.len()).arg(60_000);
        cmd
    }

    /// Pipelined writes into the primary; counted until every replica has acknowledged the
    /// last of them (`WAIT`).
    pub async fn saturation(
        &self,
        workload: &Workload,
        messages: usize,
        batch: usize,
    ) -> anyhow::Result<Saturation> {
        let mut primary = connect(&self.primary.url()).await?;
        let start_offset = offset(&mut primary, "master_repl_offset").await?;
        let stop = tokio_util::sync::CancellationToken::new();
        let sampler = tokio::spawn(sample_lag(
            self.primary.url(),
            self.replicas.iter().map(RedisProcess::url).collect(),
            stop.clone(),
        ));
        let started = Instant::now();
        let _ = pipelined(&[self.primary.url()], workload, messages, batch).await?;
        let last_write = Instant::now();
        let acked: usize = self.wait_cmd().query_async(&mut primary).await?;
        let catch_up = last_write.elapsed();
        if acked < self.replicas.len() {
            bail!(
                "only {acked} of {} replicas caught up within 60s",
                self.replicas.len()
            );
        }
        let rate = messages as f64 / started.elapsed().as_secs_f64();
        stop.cancel();
        let max_bytes_behind = sampler.await??;
        let end_offset = offset(&mut primary, "master_repl_offset").await?;
        let bytes_per_command =
            (end_offset.saturating_sub(start_offset) / messages.max(1) as u64).max(1);
        Ok(Saturation {
            rate,
            replica_lag: Some(ReplicaLag {
                max_bytes_behind,
                max_commands_behind: max_bytes_behind / bytes_per_command,
                catch_up_ms: catch_up.as_secs_f64() * 1000.0,
            }),
        })
    }

    /// Each command written to the primary at `rate`, followed by `WAIT` for every replica
    /// on the same connection: its latency is the time until every replica applied it.
    pub async fn fixed_rate(
        &self,
        workload: &Workload,
        rate: u64,
        duration: Duration,
    ) -> anyhow::Result<(usize, Recorder)> {
        // WAIT blocks its connection, so each write in flight needs a connection of its own.
        let mut pool = Vec::new();
        for _ in 0..64 {
            pool.push(connect(&self.primary.url()).await?);
        }
        let pool = Arc::new(Mutex::new(pool));
        let replicas = self.replicas.len();
        let wait = self.wait_cmd();
        let workload = Arc::new(workload.clone());
        let url = self.primary.url();
        measure::fixed_rate(rate, duration, move |n| {
            let cmd = workload.redis_cmd(n);
            let (pool, wait, url) = (pool.clone(), wait.clone(), url.clone());
            async move {
                let taken = pool.lock().await.pop();
                let mut conn: MultiplexedConnection = match taken {
                    Some(conn) => conn,
                    None => connect(&url).await?,
                };
                let mut pipe = redis::pipe();
                pipe.add_command(cmd).ignore().add_command(wait);
                let (acked,): (usize,) = pipe.query_async(&mut conn).await?;
                pool.lock().await.push(conn);
                if acked < replicas {
                    bail!("only {acked} of {replicas} replicas acknowledged a write within 60s");
                }
                anyhow::Ok(())
            }
        })
        .await
    }
}

async fn offset(conn: &mut MultiplexedConnection, field: &str) -> anyhow::Result<u64> {
    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query_async(conn)
        .await?;
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no {field} in INFO replication"))
}

/// The most bytes of replication stream any replica was behind, sampled every 10 ms.
async fn sample_lag(
    primary: String,
    replicas: Vec<String>,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<u64> {
    let mut primary = connect(&primary).await?;
    let mut conns = Vec::new();
    for url in &replicas {
        conns.push(connect(url).await?);
    }
    let mut worst = 0;
    while !stop.is_cancelled() {
        let head = offset(&mut primary, "master_repl_offset").await?;
        for conn in &mut conns {
            let applied = offset(conn, "slave_repl_offset").await?;
            worst = worst.max(head.saturating_sub(applied));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(worst)
}
