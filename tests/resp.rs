//! End-to-end tests of the RESP ingress: real clients (redis-cli, redis-benchmark, the Rust
//! `redis` crate, Python's redis-py, the `Publisher`) against the listener of a real hub,
//! then the values read back from every region's real Redis. Raw sockets for malformed
//! input, limits and TLS.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use regis::bus::embedded::EmbeddedBus;
use regis::config::{Config, RespConfig};
use regis::hub::MessageRequest;
use regis::publisher::{ErrorKind, Publisher, PublisherOptions};
use regis::redis_process::RedisProcess;
use regis::server::Server;
use regis::snapshot::Entry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// --- harness ------------------------------------------------------------------------------

fn resp_config() -> RespConfig {
    RespConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..RespConfig::default()
    }
}

/// A hub with a RESP listener on a free port; `tweak` adjusts the config first.
async fn resp_hub(
    regions: &[RedisProcess],
    data: &Path,
    tweak: impl FnOnce(&mut Config),
) -> (Server<EmbeddedBus>, SocketAddr) {
    let mut config = config(data, regions);
    config.resp = Some(resp_config());
    tweak(&mut config);
    let hub = start_hub(&config).await;
    let addr = hub.resp_addr().expect("[resp] is configured");
    (hub, addr)
}

/// A region's answer to one command, as text: bulk strings as UTF-8, integers in decimal,
/// `(nil)` for nil, arrays joined with `,`.
async fn region_query(region: &RedisProcess, db: u32, args: &[&str]) -> String {
    let client = redis::Client::open(format!("{}/{db}", region.url())).expect("a Redis URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("the region's Redis answers");
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    let value: redis::Value = cmd.query_async(&mut conn).await.expect("the query runs");
    render(&value)
}

fn render(value: &redis::Value) -> String {
    match value {
        redis::Value::Nil => "(nil)".into(),
        redis::Value::Int(n) => n.to_string(),
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        redis::Value::SimpleString(s) => s.clone(),
        redis::Value::Okay => "OK".into(),
        redis::Value::Double(d) => d.to_string(),
        redis::Value::Array(items) | redis::Value::Set(items) => {
            items.iter().map(render).collect::<Vec<_>>().join(",")
        }
        other => format!("{other:?}"),
    }
}

/// Waits until every region answers every query as expected; panics with what differs.
async fn converges(regions: &[RedisProcess], db: u32, checks: &[(&[&str], &str)]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut wrong = Vec::new();
        for (i, region) in regions.iter().enumerate() {
            for (query, expected) in checks {
                let got = region_query(region, db, query).await;
                if got != *expected {
                    wrong.push(format!(
                        "region {i} db {db}: {query:?} = {got:?}, expected {expected:?}"
                    ));
                }
            }
        }
        if wrong.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "regions did not converge:\n  {}",
            wrong.join("\n  ")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A tool from the redis-tools package, or a clear failure.
fn redis_tool(name: &str) -> Command {
    let found = Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "this test needs {name} (Debian: apt-get install redis-tools, or redis-server which brings it)"
    );
    Command::new(name)
}

async fn run_tool(mut command: Command, stdin: Option<Vec<u8>>) -> (String, String) {
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    tokio::task::spawn_blocking(move || {
        let mut child = command.spawn().expect("the tool starts");
        if let Some(input) = stdin {
            use std::io::Write;
            let mut pipe = child.stdin.take().expect("stdin is piped");
            pipe.write_all(&input).expect("write to the tool's stdin");
        }
        let output = child.wait_with_output().expect("the tool finishes");
        assert!(
            output.status.success(),
            "{command:?} failed: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    })
    .await
    .expect("the tool's thread")
}

/// A raw RESP connection for byte-level tests.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        Raw {
            stream: TcpStream::connect(addr)
                .await
                .expect("connect to the ingress"),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("send");
    }

    /// Reads one whole reply (any RESP2/RESP3 type), as its raw bytes.
    async fn reply(&mut self) -> String {
        loop {
            if let Some(len) = reply_len(&self.buf) {
                let reply: Vec<u8> = self.buf.drain(..len).collect();
                return String::from_utf8_lossy(&reply).into_owned();
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk))
                .await
                .expect("a reply within 10s")
                .expect("read");
            assert!(
                n > 0,
                "connection closed; had {:?}",
                String::from_utf8_lossy(&self.buf)
            );
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Everything until the server closes the connection (within 10 s).
    async fn until_closed(&mut self) -> String {
        let mut chunk = [0u8; 4096];
        loop {
            match tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk))
                .await
                .expect("the server closes the connection within 10s")
            {
                Ok(0) | Err(_) => break,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
        String::from_utf8_lossy(&std::mem::take(&mut self.buf)).into_owned()
    }
}

/// The length of the first complete reply in `buf`, if there is one.
fn reply_len(buf: &[u8]) -> Option<usize> {
    let line_end = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&buf[1..line_end]).ok()?;
    let after = line_end + 2;
    match buf.first()? {
        b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => Some(after),
        b'$' | b'=' | b'!' => {
            let n: i64 = line.parse().ok()?;
            if n < 0 {
                return Some(after);
            }
            let end = after + n as usize + 2;
            (buf.len() >= end).then_some(end)
        }
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let mut n: i64 = line.parse().ok()?;
            if matches!(buf[0], b'%' | b'|') {
                n *= 2;
            }
            let mut pos = after;
            for _ in 0..n.max(0) {
                pos += reply_len(&buf[pos..])?;
            }
            Some(pos)
        }
        _ => None,
    }
}

// --- redis-cli and redis-benchmark --------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_one_off_commands_and_pipe_reach_every_region() {
    let regions = regions(2);
    let data = tempfile::tempdir().unwrap();
    let (hub, addr) = resp_hub(&regions, data.path(), |_| {}).await;
    let port = addr.port().to_string();
    let cli = |args: &[&str]| {
        let mut command = redis_tool("redis-cli");
        command.args(["-h", "127.0.0.1", "-p", &port]).args(args);
        command
    };

    let (out, _) = run_tool(cli(&["SET", "greeting", "hello"]), None).await;
    assert_eq!(out.trim(), "OK");
    let (out, _) = run_tool(
        cli(&["HSET", "hotel:1", "name", "Raffles", "stars", "5"]),
        None,
    )
    .await;
    assert_eq!(out.trim(), "2");
    let (out, _) = run_tool(cli(&["INCRBY", "views", "7"]), None).await;
    assert_eq!(out.trim(), "7", "INCRBY answers its increment");
    let (out, _) = run_tool(cli(&["-n", "3", "SADD", "cities", "sg", "bom"]), None).await;
    assert_eq!(out.trim(), "2");
    let (out, _) = run_tool(cli(&["GET", "greeting"]), None).await;
    assert!(
        out.contains("read from your regional Redis"),
        "a read is refused with the reason: {out}"
    );
    let (out, _) = run_tool(cli(&["FLUSHALL"]), None).await;
    assert!(out.contains("FLUSHALL is refused"), "{out}");

    // --pipe: thousands of commands, inline and multibulk, one stream.
    let mut input = Vec::new();
    for i in 0..5000 {
        if i % 2 == 0 {
            input.extend(format!("SET pipe:{i} \"value {i}\"\r\n").as_bytes());
        } else {
            let key = format!("pipe:{i}");
            let value = format!("value {i}");
            input.extend(
                format!(
                    "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{value}\r\n",
                    key.len(),
                    value.len()
                )
                .as_bytes(),
            );
        }
    }
    input.extend(b"INCR piped-counter\r\n".repeat(1000));
    let (out, _) = run_tool(cli(&["--pipe"]), Some(input)).await;
    assert!(out.contains("errors: 0, replies: 6000"), "{out}");

    converges(
        &regions,
        0,
        &[
            (&["GET", "greeting"], "hello"),
            (&["HGET", "hotel:1", "stars"], "5"),
            (&["GET", "views"], "7"),
            (&["GET", "pipe:0"], "value 0"),
            (&["GET", "pipe:2501"], "value 2501"),
            (&["GET", "pipe:4999"], "value 4999"),
            (&["GET", "piped-counter"], "1000"),
        ],
    )
    .await;
    converges(&regions, 3, &[(&["SCARD", "cities"], "2")]).await;
    for region in &regions {
        for i in (0..5000).step_by(97) {
            assert_eq!(
                region_query(region, 0, &["GET", &format!("pipe:{i}")]).await,
                format!("value {i}")
            );
        }
    }
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_benchmark_pipelined_set_hset_incr_land_everywhere() {
    let regions = regions(2);
    let data = tempfile::tempdir().unwrap();
    let (hub, addr) = resp_hub(&regions, data.path(), |_| {}).await;
    let mut bench = redis_tool("redis-benchmark");
    bench.args([
        "-h",
        "127.0.0.1",
        "-p",
        &addr.port().to_string(),
        "-P",
        "16",
        "-c",
        "20",
        "-n",
        "20000",
        "-t",
        "set,hset,incr",
        "--csv",
    ]);
    let (out, _) = run_tool(bench, None).await;
    for test in ["SET", "HSET", "INCR"] {
        assert!(
            out.contains(&format!("\"{test}\"")),
            "redis-benchmark reported no {test} run: {out}"
        );
    }
    // Without -r every request hits the same key: the counter counts every INCR exactly
    // once in every region, and the (random, 3-byte) value is the same everywhere.
    converges(
        &regions,
        0,
        &[
            (&["GET", "counter:__rand_int__"], "20000"),
            (&["STRLEN", "key:__rand_int__"], "3"),
            (&["HSTRLEN", "myhash", "element:__rand_int__"], "3"),
        ],
    )
    .await;
    for query in [
        &["GET", "key:__rand_int__"][..],
        &["HGET", "myhash", "element:__rand_int__"],
    ] {
        assert_eq!(
            region_query(&regions[0], 0, query).await,
            region_query(&regions[1], 0, query).await,
            "{query:?} differs between regions"
        );
    }
    hub.shutdown().await;
}

// --- the Rust redis crate -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_crate_pipelines_transactions_and_typed_replies() {
    use redis::AsyncCommands;

    let regions = regions(2);
    let data = tempfile::tempdir().unwrap();
    let (hub, addr) = resp_hub(&regions, data.path(), |_| {}).await;

    for protocol in ["resp2", "resp3"] {
        let client = redis::Client::open(format!("redis://{addr}/2?protocol={protocol}")).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let p = protocol;

        // Typed replies: each the type its command returns from a Redis.
        let () = conn.set(format!("{p}:s"), "v").await.unwrap();
        let added: i64 = conn.hset(format!("{p}:h"), "f", "v").await.unwrap();
        assert_eq!(added, 1);
        let removed: usize = conn
            .del(&[format!("{p}:x"), format!("{p}:y")])
            .await
            .unwrap();
        assert_eq!(removed, 2);
        let incremented: i64 = conn.incr(format!("{p}:n"), 5).await.unwrap();
        assert_eq!(incremented, 5, "INCRBY answers its increment");
        let float: f64 = conn.incr(format!("{p}:f"), 1.5).await.unwrap();
        assert_eq!(float, 1.5);
        let members: i64 = conn.sadd(format!("{p}:set"), &["a", "b"]).await.unwrap();
        assert_eq!(members, 2);
        let zadded: i64 = conn.zadd(format!("{p}:z"), "m", 2.5).await.unwrap();
        assert_eq!(zadded, 1);
        let score: f64 = conn.zincr(format!("{p}:z"), "m", 1).await.unwrap();
        assert_eq!(score, 1.0);
        let expired: bool = conn.expire(format!("{p}:s"), 600).await.unwrap();
        assert!(expired);

        // A pipeline of 500 writes.
        let mut pipe = redis::pipe();
        for i in 0..500 {
            pipe.set(format!("{p}:pipe:{i}"), i).ignore();
        }
        pipe.incr(format!("{p}:pipe-counter"), 1);
        let (count,): (i64,) = pipe.query_async(&mut conn).await.unwrap();
        assert_eq!(count, 1);

        // MULTI/EXEC with typed results.
        let (hset, incr, sadd): (i64, i64, i64) = redis::pipe()
            .atomic()
            .hset(format!("{p}:tx"), "a", "1")
            .incr(format!("{p}:tx-counter"), 3)
            .sadd(format!("{p}:tx-set"), "m")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!((hset, incr, sadd), (1, 3, 1));

        // Refusals keep the connection usable.
        let read: redis::RedisResult<Option<String>> = conn.get(format!("{p}:s")).await;
        let err = read.expect_err("a read is refused");
        assert!(
            err.to_string().contains("read from your regional Redis"),
            "{err}"
        );
        let tx: redis::RedisResult<(i64, Option<String>)> = redis::pipe()
            .atomic()
            .incr(format!("{p}:never"), 1)
            .get(format!("{p}:s"))
            .query_async(&mut conn)
            .await;
        assert!(tx.is_err(), "a transaction holding a read is aborted");
        let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
        assert_eq!(pong, "PONG");
    }

    for p in ["resp2", "resp3"] {
        converges(
            &regions,
            2,
            &[
                (&["GET", &format!("{p}:s")], "v"),
                (&["HGET", &format!("{p}:h"), "f"], "v"),
                (&["GET", &format!("{p}:n")], "5"),
                (&["GET", &format!("{p}:f")], "1.5"),
                (&["ZSCORE", &format!("{p}:z"), "m"], "3.5"),
                (&["GET", &format!("{p}:pipe:0")], "0"),
                (&["GET", &format!("{p}:pipe:499")], "499"),
                (&["HGET", &format!("{p}:tx"), "a"], "1"),
                (&["GET", &format!("{p}:tx-counter")], "3"),
                (&["SISMEMBER", &format!("{p}:tx-set"), "m"], "1"),
                (&["EXISTS", &format!("{p}:never")], "0"),
            ],
        )
        .await;
    }
    for region in &regions {
        let ttl: i64 = region_query(region, 2, &["TTL", "resp2:s"])
            .await
            .parse()
            .unwrap();
        assert!((590..=600).contains(&ttl), "EXPIRE landed: ttl {ttl}");
        assert_eq!(
            region_query(region, 0, &["EXISTS", "resp2:s"]).await,
            "0",
            "db 2 writes stay in db 2"
        );
    }
    hub.shutdown().await;
}

// --- Python ---------------------------------------------------------------------------------

/// `python3` with the `redis` package, installed with pip when missing.
fn python_with_redis() -> Command {
    let has = |args: &[&str]| {
        Command::new("python3")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    assert!(
        has(&["--version"]),
        "this test needs python3 (Debian: apt-get install python3 python3-pip)"
    );
    if !has(&["-c", "import redis"]) {
        let installed = has(&["-m", "pip", "install", "--quiet", "redis"]);
        assert!(
            installed && has(&["-c", "import redis"]),
            "this test needs the Python redis client: python3 -m pip install redis"
        );
    }
    Command::new("python3")
}

const PYTHON_CLIENT: &str = r#"
import json, sys, redis
port, protocol = int(sys.argv[1]), int(sys.argv[2])
r = redis.Redis(host="127.0.0.1", port=port, protocol=protocol)
p = "py%d" % protocol
out = {"ping": r.ping()}
pipe = r.pipeline(transaction=False)
for i in range(300):
    pipe.set("%s:%d" % (p, i), i)
pipe.incrby("%s:views" % p, 3)
out["pipeline"] = pipe.execute()
tx = r.pipeline(transaction=True)
tx.hset("%s:hotel" % p, mapping={"name": "Raffles", "stars": 5})
tx.incrbyfloat("%s:rate" % p, 2.5)
tx.expire("%s:hotel" % p, 3600)
tx.sadd("%s:cities" % p, "sg", "bom")
tx.delete("%s:gone" % p)
out["transaction"] = tx.execute()
try:
    r.get("%s:0" % p)
    out["get"] = "no error"
except redis.ResponseError as e:
    out["get"] = str(e)
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_pipeline_and_transaction() {
    let regions = regions(2);
    let data = tempfile::tempdir().unwrap();
    let (hub, addr) = resp_hub(&regions, data.path(), |_| {}).await;
    for protocol in [2, 3] {
        let mut python = python_with_redis();
        python.args([
            "-c",
            PYTHON_CLIENT,
            &addr.port().to_string(),
            &protocol.to_string(),
        ]);
        let (out, _) = run_tool(python, None).await;
        let result: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|err| {
            panic!("the Python client printed no JSON ({err}): {out}");
        });
        assert_eq!(result["ping"], true);
        let pipeline = result["pipeline"].as_array().expect("pipeline results");
        assert_eq!(pipeline.len(), 301);
        assert!(pipeline[..300].iter().all(|v| v == true), "{pipeline:?}");
        assert_eq!(pipeline[300], 3);
        assert_eq!(
            result["transaction"],
            serde_json::json!([2, 2.5, true, 2, 1]),
            "typed transaction results (protocol {protocol})"
        );
        assert!(
            result["get"]
                .as_str()
                .is_some_and(|e| e.contains("read from your regional Redis")),
            "{result}"
        );
        let p = format!("py{protocol}");
        converges(
            &regions,
            0,
            &[
                (&["GET", &format!("{p}:0")], "0"),
                (&["GET", &format!("{p}:299")], "299"),
                (&["GET", &format!("{p}:views")], "3"),
                (&["HGET", &format!("{p}:hotel"), "name"], "Raffles"),
                (&["GET", &format!("{p}:rate")], "2.5"),
                (&["SCARD", &format!("{p}:cities")], "2"),
            ],
        )
        .await;
    }
    hub.shutdown().await;
}

// --- MULTI/EXEC ---------------------------------------------------------------------------

/// Sends `command` `times` times, in pipelines of at most 1000, reading the replies as it
/// goes (so neither side's socket buffer fills); returns the index and text of every reply
/// other than `+QUEUED`.
async fn queue_many(raw: &mut Raw, command: &[u8], times: usize) -> Vec<(usize, String)> {
    let mut other = Vec::new();
    let mut sent = 0;
    while sent < times {
        let n = (times - sent).min(1000);
        raw.send(&command.repeat(n)).await;
        for i in sent..sent + n {
            let reply = raw.reply().await;
            if reply != "+QUEUED\r\n" {
                other.push((i, reply));
            }
        }
        sent += n;
    }
    other
}

/// An endless `MULTI` must not grow the hub's memory: the queued commands and the queued
/// `PING`/`ECHO` replies together are bounded in bytes (`max_message_bytes`) and in count
/// (`MAX_QUEUED`); the command that crosses a bound is refused, later ones are not stored,
/// and `EXEC` aborts saying why. Nothing of the transaction is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_transaction_is_bounded_and_aborts_with_the_reason() {
    let regions = regions(1);
    let data = tempfile::tempdir().unwrap();
    let (hub, addr) = resp_hub(&regions, data.path(), |config| {
        config.max_message_bytes = 4096;
    })
    .await;
    let mut raw = Raw::connect(addr).await;

    // Bytes: a write, then ECHOs of 100 bytes — about 1 MB of them, 250 times the bound.
    raw.send(b"MULTI\r\nSET t 1\r\n").await;
    assert_eq!(raw.reply().await, "+OK\r\n");
    assert_eq!(raw.reply().await, "+QUEUED\r\n");
    let echo = format!("ECHO {}\r\n", "x".repeat(100));
    let refused = queue_many(&mut raw, echo.as_bytes(), 10_000).await;
    assert_eq!(refused.len(), 1, "one refusal, then QUEUED: {refused:?}");
    let (at, why) = &refused[0];
    assert!(
        (30..40).contains(at),
        "refused at the ECHO that crosses 4096 bytes, not {at}"
    );
    assert!(
        why.starts_with("-ERR this transaction would exceed 4096 bytes")
            && why.contains("max_message_bytes"),
        "{why}"
    );
    raw.send(b"EXEC\r\n").await;
    let exec = raw.reply().await;
    assert!(
        exec.starts_with(
            "-EXECABORT Transaction discarded because of previous errors: this transaction would exceed 4096 bytes"
        ),
        "{exec}"
    );

    // Count: PINGs cost little, so a large max_message_bytes leaves the count to bite.
    let data = tempfile::tempdir().unwrap();
    let (roomy, roomy_addr) = resp_hub(&regions, data.path(), |config| {
        config.max_message_bytes = 64 * 1024 * 1024;
    })
    .await;
    let mut many = Raw::connect(roomy_addr).await;
    many.send(b"MULTI\r\n").await;
    assert_eq!(many.reply().await, "+OK\r\n");
    let max = regis::ingress::resp::connection::MAX_QUEUED;
    let refused = queue_many(&mut many, b"PING\r\n", max + 100).await;
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].0, max, "the first entry past {max} is refused");
    assert!(
        refused[0]
            .1
            .starts_with(&format!("-ERR this transaction already holds {max}")),
        "{}",
        refused[0].1
    );
    many.send(b"SET u 1\r\nEXEC\r\n").await;
    assert_eq!(many.reply().await, "+QUEUED\r\n");
    assert!(
        many.reply()
            .await
            .starts_with("-EXECABORT Transaction discarded because of previous errors: this transaction already holds"),
    );

    // Both connections still work, and nothing of either transaction was published.
    raw.send(b"SET after 1\r\n").await;
    assert_eq!(raw.reply().await, "+OK\r\n");
    converges(&regions, 0, &[(&["GET", "after"], "1")]).await;
    many.send(b"MULTI\r\nPING\r\nEXEC\r\n").await;
    assert_eq!(many.reply().await, "+OK\r\n");
    assert_eq!(many.reply().await, "+QUEUED\r\n");
    assert_eq!(many.reply().await, "*1\r\n+PONG\r\n");
    assert!(drained(hub.bus(), Duration::from_secs(10)).await);
    assert!(drained(roomy.bus(), Duration::from_secs(10)).await);
    for key in ["t", "u"] {
        assert_eq!(region_query(&regions[0], 0, &["EXISTS", key]).await, "0");
    }
    roomy.shutdown().await;
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_exec_is_one_message_answered_after_it_is_durable() {
    let regions = regions(2);
    let data = tempfile::tempdir().unwrap();
    let (hub, addr) = resp_hub(&regions, data.path(), |_| {}).await;
    let mut raw = Raw::connect(addr).await;

    raw.send(b"EXEC\r\nDISCARD\r\n").await;
    assert_eq!(raw.reply().await, "-ERR EXEC without MULTI\r\n");
    assert_eq!(raw.reply().await, "-ERR DISCARD without MULTI\r\n");

    // Queued, then one message.
    raw.send(
        b"MULTI\r\nSET a 1\r\nHSET h f v g w\r\nINCRBY c 4\r\nPING\r\nEXPIRE a 100\r\nEXEC\r\n",
    )
    .await;
    assert_eq!(raw.reply().await, "+OK\r\n");
    for _ in 0..5 {
        assert_eq!(raw.reply().await, "+QUEUED\r\n");
    }
    assert_eq!(
        raw.reply().await,
        "*5\r\n+OK\r\n:2\r\n:4\r\n+PONG\r\n:1\r\n"
    );
    converges(
        &regions,
        0,
        &[
            (&["GET", "a"], "1"),
            (&["HGET", "h", "g"], "w"),
            (&["GET", "c"], "4"),
        ],
    )
    .await;
    let status = get_json(hub.http_addr(), "/v1/status").await;
    for region in status["regions"].as_array().expect("regions") {
        assert_eq!(
            region["latency"]["count"], 1,
            "the transaction was applied as one message: {status}"
        );
    }

    // A refused command aborts the whole transaction; nothing of it is published.
    raw.send(b"MULTI\r\nSET b 1\r\nGET b\r\nEXEC\r\n").await;
    assert_eq!(raw.reply().await, "+OK\r\n");
    assert_eq!(raw.reply().await, "+QUEUED\r\n");
    assert!(raw.reply().await.contains("read from your regional Redis"));
    assert_eq!(
        raw.reply().await,
        "-EXECABORT Transaction discarded because of previous errors.\r\n"
    );
    // DISCARD drops it; nesting is refused without aborting.
    raw.send(b"MULTI\r\nMULTI\r\nSET d 1\r\nDISCARD\r\nSET e 1\r\n")
        .await;
    assert_eq!(raw.reply().await, "+OK\r\n");
    assert_eq!(raw.reply().await, "-ERR MULTI calls can not be nested\r\n");
    assert_eq!(raw.reply().await, "+QUEUED\r\n");
    assert_eq!(raw.reply().await, "+OK\r\n");
    assert_eq!(raw.reply().await, "+OK\r\n");
    // SELECT inside MULTI would split a message across databases.
    raw.send(b"MULTI\r\nSELECT 1\r\nEXEC\r\n").await;
    assert_eq!(raw.reply().await, "+OK\r\n");
    assert!(raw.reply().await.starts_with("-ERR SELECT inside MULTI"));
    assert!(raw.reply().await.starts_with("-EXECABORT"));
    converges(&regions, 0, &[(&["GET", "e"], "1")]).await;
    for region in &regions {
        assert_eq!(region_query(region, 0, &["EXISTS", "b"]).await, "0");
        assert_eq!(region_query(region, 0, &["EXISTS", "d"]).await, "0");
    }
    hub.shutdown().await;
}

// --- connection commands ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_commands_real_clients_send() {
    let regions = regions(1);
    let data = tempfile::tempdir().unwrap();
    let (hub, addr) = resp_hub(&regions, data.path(), |_| {}).await;
    let mut raw = Raw::connect(addr).await;

    raw.send(b"PING\r\nPING hi\r\nECHO hello\r\nCLIENT SETNAME app-1\r\nCLIENT GETNAME\r\nCLIENT ID\r\nCLIENT SETINFO LIB-NAME test\r\nCOMMAND DOCS\r\nCOMMAND\r\nSELECT 99\r\nSELECT x\r\nWATCH k\r\nUNWATCH\r\nTIME\r\n")
        .await;
    assert_eq!(raw.reply().await, "+PONG\r\n");
    assert_eq!(raw.reply().await, "$2\r\nhi\r\n");
    assert_eq!(raw.reply().await, "$5\r\nhello\r\n");
    assert_eq!(raw.reply().await, "+OK\r\n");
    assert_eq!(raw.reply().await, "$5\r\napp-1\r\n");
    assert!(raw.reply().await.starts_with(':'));
    assert_eq!(raw.reply().await, "+OK\r\n");
    assert_eq!(raw.reply().await, "*0\r\n", "COMMAND DOCS in RESP2");
    assert_eq!(raw.reply().await, "*0\r\n");
    assert_eq!(raw.reply().await, "-ERR DB index is out of range\r\n");
    assert_eq!(
        raw.reply().await,
        "-ERR value is not an integer or out of range\r\n"
    );
    assert!(raw.reply().await.starts_with("-ERR WATCH is not supported"));
    assert_eq!(raw.reply().await, "+OK\r\n");
    assert!(raw.reply().await.contains("TIME is a connection command"));

    // INFO answers ready-checks.
    raw.send(b"INFO\r\n").await;
    let info = raw.reply().await;
    for needle in [
        "loading:0",
        "role:master",
        "redis_version:",
        "connected_clients:1",
    ] {
        assert!(info.contains(needle), "INFO lacks {needle}: {info}");
    }
    // HELLO 3 switches to RESP3 (a map); HELLO 4 is refused.
    raw.send(b"HELLO 3\r\nCOMMAND DOCS\r\nCLIENT GETNAME\r\nHELLO 4\r\n")
        .await;
    let hello = raw.reply().await;
    assert!(
        hello.starts_with("%7\r\n") && hello.contains("proto\r\n:3\r\n"),
        "{hello}"
    );
    assert_eq!(raw.reply().await, "%0\r\n");
    assert_eq!(raw.reply().await, "$5\r\napp-1\r\n");
    assert_eq!(
        raw.reply().await,
        "-NOPROTO unsupported protocol version\r\n"
    );
    // RESET returns to a fresh RESP2 connection; QUIT answers then closes.
    raw.send(b"RESET\r\nCLIENT GETNAME\r\nQUIT\r\nPING\r\n")
        .await;
    assert_eq!(raw.reply().await, "+RESET\r\n");
    assert_eq!(raw.reply().await, "$-1\r\n");
    assert_eq!(raw.until_closed().await, "+OK\r\n");
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_is_required_when_a_password_is_set() {
    let regions = regions(1);
    let data = tempfile::tempdir().unwrap();
    let (hub, addr) = resp_hub(&regions, data.path(), |config| {
        config.resp.as_mut().unwrap().password = Some("s3cret".into());
    })
    .await;
    let mut raw = Raw::connect(addr).await;
    raw.send(
        b"SET k v\r\nAUTH wrong\r\nAUTH admin s3cret\r\nHELLO 3\r\nAUTH s3cret\r\nSET k v\r\n",
    )
    .await;
    assert_eq!(raw.reply().await, "-NOAUTH Authentication required.\r\n");
    assert_eq!(
        raw.reply().await,
        "-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    );
    assert_eq!(
        raw.reply().await,
        "-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    );
    assert!(
        raw.reply()
            .await
            .starts_with("-NOAUTH HELLO must be called")
    );
    assert_eq!(raw.reply().await, "+OK\r\n");
    assert_eq!(raw.reply().await, "+OK\r\n");

    // Before AUTH, commands are held to Redis's unauthenticated limits.
    let mut early = Raw::connect(addr).await;
    early.send(b"*11\r\n").await;
    assert_eq!(
        early.until_closed().await,
        "-ERR Protocol error: invalid multibulk length\r\n"
    );

    // HELLO AUTH, the redis crate with a password URL, redis-cli -a.
    let mut hello = Raw::connect(addr).await;
    hello
        .send(b"HELLO 3 AUTH default s3cret SETNAME x\r\nSET k2 v\r\n")
        .await;
    assert!(hello.reply().await.starts_with("%7\r\n"));
    assert_eq!(hello.reply().await, "+OK\r\n");
    let client = redis::Client::open(format!("redis://:s3cret@{addr}")).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let () = redis::cmd("SET")
        .arg("k3")
        .arg("v")
        .query_async(&mut conn)
        .await
        .unwrap();
    let wrong = redis::Client::open(format!("redis://:nope@{addr}")).unwrap();
    assert!(wrong.get_multiplexed_async_connection().await.is_err());
    let mut cli = redis_tool("redis-cli");
    cli.args([
        "-p",
        &addr.port().to_string(),
        "-a",
        "s3cret",
        "--no-auth-warning",
        "SET",
        "k4",
        "v",
    ]);
    assert_eq!(run_tool(cli, None).await.0.trim(), "OK");
    converges(
        &regions,
        0,
        &[
            (&["GET", "k"], "v"),
            (&["GET", "k2"], "v"),
            (&["GET", "k3"], "v"),
            (&["GET", "k4"], "v"),
        ],
    )
    .await;
    hub.shutdown().await;
}

// --- malformed input ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_gets_the_documented_error_and_harms_nobody_else() {
    let regions = regions(1);
    let data = tempfile::tempdir().unwrap();
    let (hub, addr) = resp_hub(&regions, data.path(), |config| {
        config.max_message_bytes = 4096;
    })
    .await;
    let mut bystander = Raw::connect(addr).await;
    bystander.send(b"PING\r\n").await;
    assert_eq!(bystander.reply().await, "+PONG\r\n");

    let deep_nesting = b"*1\r\n".repeat(10_000);
    let garbage_without_newline: Vec<u8> =
        (0..100_000u32).map(|i| (i * 7 + 1) as u8 | 0x80).collect();
    let mut long_count = b"*".to_vec();
    long_count.extend(b"1".repeat(70_000));
    let mut long_bulk_count = b"*1\r\n$".to_vec();
    long_bulk_count.extend(b"9".repeat(70_000));
    let mut too_large = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$4096\r\n".to_vec();
    too_large.extend(vec![b'x'; 4096]);
    too_large.extend(b"\r\n");

    // (input, what the server answers before closing; "" = closes without a reply)
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "non-numeric count",
            b"*abc\r\n".to_vec(),
            "-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            "huge count",
            b"*99999999999\r\n".to_vec(),
            "-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            "count overflow",
            b"*99999999999999999999999\r\n".to_vec(),
            "-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            "negative bulk length",
            b"*2\r\n$-3\r\n".to_vec(),
            "-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            "huge bulk length",
            b"*1\r\n$2147483648000\r\n".to_vec(),
            "-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            "bulk above max_bulk_bytes",
            b"*1\r\n$5000\r\n".to_vec(),
            "-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            "bulk length not a number",
            b"*1\r\n$x\r\n".to_vec(),
            "-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            "bulk longer than announced",
            b"*1\r\n$4\r\nPINGPONG\r\n".to_vec(),
            "-ERR Protocol error: bulk string is not followed by CRLF",
        ),
        (
            "nested array",
            b"*1\r\n*1\r\n$4\r\nPING\r\n".to_vec(),
            "-ERR Protocol error: expected '$', got '*'\r\n",
        ),
        (
            "deep nesting",
            deep_nesting,
            "-ERR Protocol error: expected '$', got '*'\r\n",
        ),
        (
            "integer element",
            b"*2\r\n:1\r\n".to_vec(),
            "-ERR Protocol error: expected '$', got ':'\r\n",
        ),
        (
            "binary element",
            b"*1\r\n\x00\x01".to_vec(),
            "-ERR Protocol error: expected '$', got '\\x00'\r\n",
        ),
        (
            "unbalanced double quote",
            b"SET k \"v\r\n".to_vec(),
            "-ERR Protocol error: unbalanced quotes in request\r\n",
        ),
        (
            "text after closing quote",
            b"SET k 'v'w\r\n".to_vec(),
            "-ERR Protocol error: unbalanced quotes in request\r\n",
        ),
        (
            "binary garbage, no newline",
            garbage_without_newline,
            "-ERR Protocol error: too big inline request\r\n",
        ),
        (
            "count line without CRLF",
            long_count,
            "-ERR Protocol error: too big mbulk count string\r\n",
        ),
        (
            "bulk count without CRLF",
            long_bulk_count,
            "-ERR Protocol error: too big bulk count string\r\n",
        ),
        (
            "command above max_message_bytes",
            too_large,
            "-ERR Protocol error: command arguments exceed 4096 bytes",
        ),
        (
            "truncated frame",
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nval".to_vec(),
            "",
        ),
        ("truncated count", b"*3\r".to_vec(), ""),
    ];
    for (what, input, expected) in &cases {
        let mut raw = Raw::connect(addr).await;
        // The server may close before reading everything: a failed write is fine here.
        let _ = raw.stream.write_all(input).await;
        let _ = raw.stream.shutdown().await;
        let answer = raw.until_closed().await;
        assert!(
            answer.starts_with(expected) && (expected.is_empty() == answer.is_empty()),
            "{what}: expected {expected:?}, got {answer:?}"
        );
        if expected.ends_with("\r\n") {
            assert_eq!(
                answer, *expected,
                "{what}: one reply, then the connection closes"
            );
        }
        bystander.send(b"PING\r\n").await;
        assert_eq!(bystander.reply().await, "+PONG\r\n", "after {what}");
    }

    // Not protocol errors: answered, and the connection stays usable.
    let mut raw = Raw::connect(addr).await;
    raw.send(b"*-1\r\n*0\r\n\r\n\xff\xfe garbage\r\nSET k\r\nGET k\r\nNOSUCH x\r\nPING\r\n")
        .await;
    assert!(raw.reply().await.starts_with("-ERR unknown command"));
    assert!(
        raw.reply()
            .await
            .starts_with("-ERR wrong number of arguments for 'SET' command")
    );
    assert!(raw.reply().await.contains("read from your regional Redis"));
    assert!(
        raw.reply()
            .await
            .starts_with("-ERR unknown command 'NOSUCH'")
    );
    assert_eq!(raw.reply().await, "+PONG\r\n");

    bystander.send(b"SET survivor yes\r\n").await;
    assert_eq!(bystander.reply().await, "+OK\r\n");
    converges(&regions, 0, &[(&["GET", "survivor"], "yes")]).await;
    hub.shutdown().await;
}

// --- limits -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_and_idle_timeout() {
    let regions = regions(1);
    let data = tempfile::tempdir().unwrap();
    let (hub, addr) = resp_hub(&regions, data.path(), |config| {
        let resp = config.resp.as_mut().unwrap();
        resp.max_connections = 2;
        resp.idle_timeout = Duration::from_millis(400);
    })
    .await;
    let mut first = Raw::connect(addr).await;
    let mut second = Raw::connect(addr).await;
    for conn in [&mut first, &mut second] {
        conn.send(b"PING\r\n").await;
        assert_eq!(conn.reply().await, "+PONG\r\n");
    }
    let mut third = Raw::connect(addr).await;
    assert_eq!(
        third.until_closed().await,
        "-ERR max number of clients reached\r\n"
    );

    // A busy connection stays; an idle one is closed.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        first.send(b"PING\r\n").await;
        assert_eq!(first.reply().await, "+PONG\r\n");
    }
    assert_eq!(
        second.until_closed().await,
        "",
        "the idle connection is closed"
    );

    // Its slot is free again.
    let freed = eventually(Duration::from_secs(5), || async {
        let mut conn = Raw::connect(addr).await;
        conn.send(b"PING\r\n").await;
        let mut chunk = [0u8; 64];
        matches!(
            tokio::time::timeout(Duration::from_secs(2), conn.stream.read(&mut chunk)).await,
            Ok(Ok(n)) if &chunk[..n] == b"+PONG\r\n"
        )
    })
    .await;
    assert!(freed, "a closed connection frees its slot");
    hub.shutdown().await;
}

// --- TLS ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_with_a_test_ca() {
    let regions = regions(2);
    let data = tempfile::tempdir().unwrap();
    let ca = test_ca(data.path());
    let ca_pem = std::fs::read(&ca.ca_path).unwrap();
    let (hub, addr) = resp_hub(&regions, &data.path().join("bus"), |config| {
        let resp = config.resp.as_mut().unwrap();
        resp.tls_cert = Some(ca.cert_path.clone());
        resp.tls_key = Some(ca.key_path.clone());
    })
    .await;
    let tls_client = || {
        redis::Client::build_with_tls(
            format!("rediss://127.0.0.1:{}", addr.port()),
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca_pem.clone()),
            },
        )
        .unwrap()
    };
    let mut conn = tls_client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let () = redis::cmd("SET")
        .arg("secure")
        .arg("yes")
        .query_async(&mut conn)
        .await
        .unwrap();
    let publisher = Publisher::with_client(tls_client(), PublisherOptions::default())
        .await
        .unwrap();
    publisher
        .publish(["HSET", "secure-h", "f", "v"])
        .await
        .unwrap();

    // Plain text to the TLS port gets no RESP answer.
    let mut plain = Raw::connect(addr).await;
    let _ = plain.stream.write_all(b"PING\r\n").await;
    assert!(!plain.until_closed().await.contains("PONG"));
    // A client that does not trust the CA cannot connect.
    let untrusting = redis::Client::open(format!("rediss://127.0.0.1:{}", addr.port())).unwrap();
    assert!(untrusting.get_multiplexed_async_connection().await.is_err());

    converges(
        &regions,
        0,
        &[
            (&["GET", "secure"], "yes"),
            (&["HGET", "secure-h", "f"], "v"),
        ],
    )
    .await;
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_files_fail_at_start_with_the_file_named() {
    let regions = regions(1);
    let data = tempfile::tempdir().unwrap();
    let missing = data.path().join("missing.pem");
    let mut config = config(data.path(), &regions);
    config.resp = Some(RespConfig {
        tls_cert: Some(missing.clone()),
        tls_key: Some(missing.clone()),
        ..resp_config()
    });
    let err = match Server::start(&config).await {
        Ok(_) => panic!("a hub with a missing certificate must not start"),
        Err(err) => err.to_string(),
    };
    assert!(
        err.contains("missing.pem") && err.contains("tls_cert"),
        "{err}"
    );
}

// --- Publisher ----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_batches_many_tasks_and_awaits_durability() {
    let regions = regions(2);
    let data = tempfile::tempdir().unwrap();
    let (hub, addr) = resp_hub(&regions, data.path(), |_| {}).await;
    let publisher = Publisher::connect(&format!("redis://{addr}"))
        .await
        .unwrap();

    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..8 {
        let publisher = publisher.clone();
        tasks.spawn(async move {
            for i in 0..250 {
                publisher
                    .publish(["SET", &format!("pub:{task}:{i}"), &i.to_string()])
                    .await?;
                publisher.publish(["INCR", "pub:counter"]).await?;
            }
            Ok::<(), regis::publisher::Error>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap().unwrap();
    }

    // A batch: independent outcomes, in order; a multi-command message is atomic; db travels.
    let outcomes = publisher
        .publish_batch(vec![
            MessageRequest {
                commands: vec![regis::publisher::to_args(["SET", "batch:a", "1"])],
                db: 0,
            },
            MessageRequest {
                commands: vec![regis::publisher::to_args(["GET", "batch:a"])],
                db: 0,
            },
            MessageRequest {
                commands: vec![
                    regis::publisher::to_args(["HSET", "batch:h", "f", "v"]),
                    regis::publisher::to_args(["INCRBY", "batch:n", "9"]),
                ],
                db: 5,
            },
            MessageRequest {
                commands: vec![
                    regis::publisher::to_args(["SET", "batch:never", "1"]),
                    regis::publisher::to_args(["LPUSH", "batch:l", "x"]),
                ],
                db: 0,
            },
            MessageRequest {
                commands: vec![regis::publisher::to_args(["SET", "batch:b", "2"])],
                db: 0,
            },
        ])
        .await;
    assert!(outcomes[0].is_ok());
    let read = outcomes[1].as_ref().unwrap_err();
    assert_eq!(read.kind(), ErrorKind::Refused);
    assert!(!read.is_retriable());
    assert!(
        read.to_string().contains("read from your regional Redis"),
        "{read}"
    );
    assert!(outcomes[2].is_ok());
    let order_dependent = outcomes[3].as_ref().unwrap_err();
    assert_eq!(order_dependent.kind(), ErrorKind::Refused);
    assert!(
        order_dependent.to_string().contains("LPUSH"),
        "{order_dependent}"
    );
    assert!(outcomes[4].is_ok());

    converges(
        &regions,
        0,
        &[
            (&["GET", "pub:counter"], "2000"),
            (&["GET", "pub:0:0"], "0"),
            (&["GET", "pub:7:249"], "249"),
            (&["GET", "batch:a"], "1"),
            (&["GET", "batch:b"], "2"),
            (&["EXISTS", "batch:never"], "0"),
        ],
    )
    .await;
    converges(
        &regions,
        5,
        &[(&["HGET", "batch:h", "f"], "v"), (&["GET", "batch:n"], "9")],
    )
    .await;
    for region in &regions {
        for task in 0..8 {
            for i in (0..250).step_by(31) {
                assert_eq!(
                    region_query(region, 0, &["GET", &format!("pub:{task}:{i}")]).await,
                    i.to_string()
                );
            }
        }
    }
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_refuses_a_message_for_an_unknown_db_alone() {
    let regions = regions(1);
    let data = tempfile::tempdir().unwrap();
    let (hub, addr) = resp_hub(&regions, data.path(), |config| {
        config.databases = Some(4);
    })
    .await;
    let publisher = Publisher::connect(&format!("redis://{addr}"))
        .await
        .unwrap();
    let set = |key: &str, db: u32| MessageRequest {
        commands: vec![regis::publisher::to_args(["SET", key, "1"])],
        db,
    };

    // db 9 is out of range: its SELECT is refused, and the connection stays on db 1. The
    // messages for db 9 must fail alone, and must not land in db 1; the others are published
    // where they belong. Twice, so a refusal does not spoil the next batch either.
    for round in 0..2 {
        let outcomes = publisher
            .publish_batch(vec![
                set(&format!("sel:{round}:a"), 1),
                set(&format!("sel:{round}:wrong1"), 9),
                set(&format!("sel:{round}:wrong2"), 9),
                set(&format!("sel:{round}:b"), 1),
                set(&format!("sel:{round}:c"), 3),
                set(&format!("sel:{round}:wrong3"), 9),
                set(&format!("sel:{round}:d"), 3),
            ])
            .await;
        for i in [0, 3, 4, 6] {
            assert!(
                outcomes[i].is_ok(),
                "round {round} message {i}: {outcomes:?}"
            );
        }
        for i in [1, 2, 5] {
            let err = outcomes[i].as_ref().unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Refused, "round {round} message {i}");
            assert!(err.to_string().contains("DB index"), "{err}");
        }
        converges(
            &regions,
            1,
            &[
                (&["GET", &format!("sel:{round}:a")], "1"),
                (&["GET", &format!("sel:{round}:b")], "1"),
            ],
        )
        .await;
        converges(
            &regions,
            3,
            &[
                (&["GET", &format!("sel:{round}:c")], "1"),
                (&["GET", &format!("sel:{round}:d")], "1"),
            ],
        )
        .await;
    }
    // Everything published has been applied (converged above, in publish order): nothing of
    // the refused messages reached any database.
    for db in 0..4 {
        assert_eq!(
            region_query(&regions[0], db, &["KEYS", "sel:*:wrong*"]).await,
            "",
            "db {db}"
        );
    }
    hub.shutdown().await;
}

// --- drain --------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_finishes_the_round_in_hand_and_every_ack_survives() {
    let regions = regions(1);
    let data = tempfile::tempdir().unwrap();
    let (hub, addr) = resp_hub(&regions, data.path(), |_| {}).await;
    let raw = Raw::connect(addr).await;
    let mut pipeline = Vec::new();
    for i in 0..20_000 {
        pipeline.extend(format!("SET drain:{i} {i}\r\n").as_bytes());
    }
    let (mut reader, mut writer) = raw.stream.into_split();
    let sender = tokio::spawn(async move {
        let _ = writer.write_all(&pipeline).await;
        writer
    });
    // Stop once the first replies arrive, while the rest is in flight.
    let mut first = [0u8; 5];
    reader.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"+OK\r\n");
    let stopping = tokio::spawn(hub.shutdown());
    let mut replies = first.to_vec();
    // The hub closes the connection once stopped. (The read itself may end in a reset: the
    // hub closes with part of the pipeline unread.)
    let _ = tokio::time::timeout(Duration::from_secs(20), reader.read_to_end(&mut replies))
        .await
        .expect("the hub closes the connection once stopped");
    stopping.await.unwrap();
    drop(sender.await);
    let text = String::from_utf8(replies).unwrap();
    assert!(text.ends_with("\r\n"), "no reply is cut in half");
    let acked = text.matches("+OK\r\n").count();
    assert_eq!(
        text.len(),
        acked * 5,
        "only whole +OK replies: {}",
        &text[..80.min(text.len())]
    );
    assert!(
        acked < 20_000,
        "the stop came while the pipeline was in flight, so some SETs go unanswered"
    );

    // Every acknowledged SET is durable: a new hub on the same data applies them all.
    let restarted = start_hub(&config(data.path(), &regions)).await;
    assert!(drained(restarted.bus(), Duration::from_secs(30)).await);
    let snap = snapshot(&regions[0]).await;
    let lost: Vec<usize> = (0..acked)
        .filter(|i| {
            snap.keys.get(format!("drain:{i}").as_bytes()).map(|e| &e.0)
                != Some(&Entry::String(i.to_string().into_bytes()))
        })
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {acked} acknowledged SETs are missing, first {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    restarted.shutdown().await;
}
