//! Security of a hub reachable over a WAN: per-role tokens on every endpoint, tokens from
//! the environment, the CLI's `--token`, HTTPS with a test CA for the API and the remote
//! worker, `rediss://` to a region's Redis, and the RESP listener's `AUTH` with `[auth]`.

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use regis::bus::remote::wire::{ReleaseRequest, SettleRequest};
use regis::config::{AuthConfig, Config, WorkerPlacement};
use regis::redis_process::{RedisProcess, free_port};
use reqwest::Method;
use serde_json::{Value, json};

const PUBLISH: &str = "publish-token-0123456789abcdef";
const WORKER: &str = "worker-token-0123456789abcdef";
const ADMIN: &str = "admin-token-0123456789abcdef";

fn auth() -> AuthConfig {
    AuthConfig {
        publish: Some(PUBLISH.into()),
        worker: Some(WORKER.into()),
        admin: Some(ADMIN.into()),
        healthz_open: true,
        ..AuthConfig::default()
    }
}

fn secured(data_dir: &std::path::Path, regions: &[RedisProcess]) -> Config {
    let mut config = config(data_dir, regions);
    config.auth = Some(auth());
    config
}

/// One endpoint: method, path, body, the role it needs, and a status that proves the
/// request got past authentication with the right token.
struct Endpoint {
    method: Method,
    path: String,
    body: Option<(Vec<u8>, &'static str)>,
    role: &'static str,
    served: u16,
}

async fn call(addr: SocketAddr, e: &Endpoint, token: Option<&str>) -> (u16, Value) {
    let mut request =
        reqwest::Client::new().request(e.method.clone(), format!("http://{addr}{}", e.path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some((body, content_type)) = &e.body {
        request = request
            .header("content-type", *content_type)
            .body(body.clone());
    }
    let response = request.send().await.expect("the hub answers");
    let status = response.status().as_u16();
    let bytes = response.bytes().await.unwrap_or_default();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_wants_its_roles_token() {
    let regions = regions(2);
    let data = tempfile::tempdir().unwrap();
    let mut config = secured(&data.path().join("bus"), &regions);
    config.regions[1].worker = WorkerPlacement::Remote;
    let hub = start_hub(&config).await;
    let addr = hub.http_addr();
    let json = |v: Value| Some((v.to_string().into_bytes(), "application/json"));
    let postcard = |bytes: Vec<u8>| Some((bytes, "application/x-regis-postcard"));
    let id = "0196a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
    let lease = lease_body(10, 0, 7);
    let settle = postcard::to_stdvec(&SettleRequest { settle: vec![] }).unwrap();
    let release = postcard::to_stdvec(&ReleaseRequest { session: 7 }).unwrap();
    let endpoints = [
        Endpoint {
            method: Method::POST,
            path: "/v1/publish".into(),
            body: json(json!({"commands": [["SET", "k", "v"]]})),
            role: "publish",
            served: 200,
        },
        Endpoint {
            method: Method::POST,
            path: "/v1/publish/batch".into(),
            body: json(json!({"messages": [{"commands": [["SET", "k", "v"]]}]})),
            role: "publish",
            served: 200,
        },
        Endpoint {
            method: Method::GET,
            path: "/v1/status".into(),
            body: None,
            role: "admin",
            served: 200,
        },
        Endpoint {
            method: Method::GET,
            path: "/metrics".into(),
            body: None,
            role: "admin",
            served: 200,
        },
        Endpoint {
            method: Method::GET,
            path: "/v1/regions/r0/dead-letters".into(),
            body: None,
            role: "admin",
            served: 200,
        },
        Endpoint {
            method: Method::GET,
            path: format!("/v1/regions/r0/dead-letters/{id}"),
            body: None,
            role: "admin",
            served: 404,
        },
        Endpoint {
            method: Method::POST,
            path: "/v1/regions/r0/dead-letters/redrive".into(),
            body: json(json!({"all": true})),
            role: "admin",
            served: 200,
        },
        Endpoint {
            method: Method::POST,
            path: "/v1/regions/r0/dead-letters/purge".into(),
            body: json(json!({"ids": [id]})),
            role: "admin",
            served: 200,
        },
        Endpoint {
            method: Method::GET,
            path: "/v1/worker/regions/r1".into(),
            body: None,
            role: "worker",
            served: 200,
        },
        Endpoint {
            method: Method::POST,
            path: "/v1/worker/regions/r1/lease".into(),
            body: postcard(lease),
            role: "worker",
            served: 200,
        },
        Endpoint {
            method: Method::POST,
            path: "/v1/worker/regions/r1/settle".into(),
            body: postcard(settle),
            role: "worker",
            served: 204,
        },
        Endpoint {
            method: Method::POST,
            path: "/v1/worker/regions/r1/release".into(),
            body: postcard(release),
            role: "worker",
            served: 204,
        },
        Endpoint {
            method: Method::GET,
            path: "/v1/no-such-route".into(),
            body: None,
            role: "admin",
            served: 404,
        },
    ];
    let tokens = [("publish", PUBLISH), ("worker", WORKER), ("admin", ADMIN)];
    for e in &endpoints {
        let what = format!("{} {}", e.method, e.path);
        let (status, body) = call(addr, e, None).await;
        assert_eq!(status, 401, "{what} without a token: {body}");
        assert_eq!(body["error"]["needs"], e.role, "{what}: {body}");
        let (status, _) = call(addr, e, Some("a-token-of-nobody-0123456789")).await;
        assert_eq!(status, 401, "{what} with an unknown token");
        for (name, token) in tokens {
            let (status, body) = call(addr, e, Some(token)).await;
            if name == e.role || name == "admin" {
                assert_eq!(status, e.served, "{what} with the {name} token: {body}");
            } else {
                assert_eq!(status, 403, "{what} with the {name} token: {body}");
                let message = body["error"]["message"].as_str().unwrap_or_default();
                assert!(
                    message.contains(&format!("needs the {} token", e.role)),
                    "{what}: a 403 says which role is needed: {message}"
                );
            }
        }
    }
    // /healthz is open by default.
    let healthz = reqwest::get(format!("http://{addr}/healthz"))
        .await
        .unwrap();
    assert_eq!(healthz.status(), 200);
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_healthz_open_or_closed_as_configured() {
    let regions = regions(1);
    let data = tempfile::tempdir().unwrap();
    let mut config = secured(&data.path().join("bus"), &regions);
    if let Some(auth) = &mut config.auth {
        auth.healthz_open = false;
        auth.metrics_open = true;
    }
    let hub = start_hub(&config).await;
    let addr = hub.http_addr();
    let metrics = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200, "metrics_open = true");
    let healthz = reqwest::get(format!("http://{addr}/healthz"))
        .await
        .unwrap();
    assert_eq!(healthz.status(), 401, "healthz_open = false");
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_from_the_environment_and_the_cli_token() {
    let regions = regions(1);
    let data = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut config = config(&data.path().join("bus"), &regions);
    config.auth = Some(AuthConfig {
        publish_env: Some("TEST_REGIS_PUBLISH_TOKEN".into()),
        admin_env: Some("TEST_REGIS_ADMIN_TOKEN".into()),
        healthz_open: true,
        ..AuthConfig::default()
    });
    let path = write_config(data.path(), &config, port);
    let path_arg = path.to_str().unwrap();

    // A variable that is not set: a start-up error naming it, and nothing served.
    let missing = regis_env(
        &["serve", "--config", path_arg],
        &[("TEST_REGIS_PUBLISH_TOKEN", PUBLISH)],
    );
    assert!(!missing.status.success(), "{}", explain(&missing));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("auth.admin_env")
            && stderr.contains("TEST_REGIS_ADMIN_TOKEN")
            && stderr.contains("not set"),
        "{}",
        explain(&missing)
    );
    let short = regis_env(
        &["serve", "--config", path_arg],
        &[
            ("TEST_REGIS_PUBLISH_TOKEN", PUBLISH),
            ("TEST_REGIS_ADMIN_TOKEN", "short"),
        ],
    );
    assert!(!short.status.success());
    assert!(
        String::from_utf8_lossy(&short.stderr).contains("at least 16"),
        "{}",
        explain(&short)
    );

    // Set: the hub runs and takes exactly those tokens.
    let mut command = regis_command(&["serve", "--config", path_arg]);
    command
        .env("TEST_REGIS_PUBLISH_TOKEN", PUBLISH)
        .env("TEST_REGIS_ADMIN_TOKEN", ADMIN)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    // Fails unless the hub started with tokens from its environment.
    let _serve = ServeProcess::spawn(command, addr).await;

    let url = format!("http://{addr}");
    let refused = regis_env(&["status", "--url", &url], &[]);
    assert!(!refused.status.success(), "{}", explain(&refused));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("401") && stderr.contains("--token"),
        "{}",
        explain(&refused)
    );
    let wrong = regis_env(&["status", "--url", &url, "--token", PUBLISH], &[]);
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("403"),
        "{}",
        explain(&wrong)
    );
    let status = regis_env(&["status", "--url", &url], &[("REGIS_TOKEN", ADMIN)]);
    assert!(status.status.success(), "{}", explain(&status));
    let published = regis_env(
        &[
            "publish", "--url", &url, "--token", PUBLISH, "--", "SET", "from-cli", "yes",
        ],
        &[],
    );
    assert!(published.status.success(), "{}", explain(&published));
    let seen = eventually(Duration::from_secs(10), || async {
        redis_cmd(&regions[0], &["GET", "from-cli"]).await
            == redis::Value::BulkString(b"yes".to_vec())
    })
    .await;
    assert!(seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_test_ca_for_the_api_and_the_remote_worker() {
    let regions = regions(2);
    let data = tempfile::tempdir().unwrap();
    let ca = test_ca(data.path());
    let mut config = secured(&data.path().join("bus"), &regions);
    config.regions[1].worker = WorkerPlacement::Remote;
    config.http.tls_cert = Some(ca.cert_path.clone());
    config.http.tls_key = Some(ca.key_path.clone());
    let hub = start_hub(&config).await;
    let port = hub.http_addr().port();
    let url = format!("https://localhost:{port}");

    // A client that trusts the test CA talks to it; one that does not is refused in the
    // handshake, and plain HTTP gets nowhere.
    let pem = std::fs::read(&ca.ca_path).unwrap();
    let trusting = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap();
    let ok = trusting
        .post(format!("{url}/v1/publish"))
        .bearer_auth(PUBLISH)
        .json(&json!({"commands": [["SET", "over-tls", "1"]]}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let untrusting = reqwest::Client::new()
        .get(format!("{url}/healthz"))
        .send()
        .await;
    let err = untrusting.expect_err("an unknown CA is refused");
    assert!(
        format!("{err:?}").to_lowercase().contains("certificate"),
        "{err:?}"
    );
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(
        plain.is_err() || !plain.unwrap().status().is_success(),
        "plain HTTP is not served"
    );

    // The CLI and the remote worker, with --ca.
    let ca_arg = ca.ca_path.to_str().unwrap();
    let status = regis_env(
        &["status", "--url", &url, "--ca", ca_arg, "--token", ADMIN],
        &[],
    );
    assert!(status.status.success(), "{}", explain(&status));
    let no_ca = regis_env(&["status", "--url", &url, "--token", ADMIN], &[]);
    assert!(!no_ca.status.success(), "{}", explain(&no_ca));
    let _worker = WorkerProcess::start(
        &url,
        "r1",
        &regions[1].url(),
        &["--ca", ca_arg],
        &[("REGIS_TOKEN", WORKER)],
    );
    let seen = eventually(Duration::from_secs(20), || async {
        redis_cmd(&regions[1], &["GET", "over-tls"]).await
            == redis::Value::BulkString(b"1".to_vec())
    })
    .await;
    assert!(seen, "the remote worker leased over HTTPS and applied");
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_worker_applies_to_a_rediss_region() {
    let data = tempfile::tempdir().unwrap();
    let ca = test_ca(data.path());
    let tls_port = free_port().unwrap().to_string();
    let tls_region = RedisProcess::start_with(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        ca.cert_path.to_str().unwrap(),
        "--tls-key-file",
        ca.key_path.to_str().unwrap(),
        "--tls-ca-cert-file",
        ca.ca_path.to_str().unwrap(),
        "--tls-auth-clients",
        "no",
    ])
    .unwrap_or_else(|err| panic!("test needs a redis-server built with TLS (Debian's is): {err}"));
    let mut regions = regions(1);
    regions.push(tls_region);
    let mut config = secured(&data.path().join("bus"), &regions);
    config.regions[1].worker = WorkerPlacement::Remote;
    let hub = start_hub(&config).await;
    // The worker trusts the test CA through the system trust store's SSL_CERT_FILE, as an
    // operator with a private CA would.
    let rediss = format!("rediss://localhost:{tls_port}");
    let _worker = WorkerProcess::start(
        &format!("http://{}", hub.http_addr()),
        "r1",
        &rediss,
        &[],
        &[
            ("REGIS_TOKEN", WORKER),
            ("SSL_CERT_FILE", ca.ca_path.to_str().unwrap()),
        ],
    );
    for i in 0..20 {
        publish_with(
            hub.http_addr(),
            PUBLISH,
            json!([["SET", format!("k{i}"), "v"]]),
        )
        .await;
    }
    let local_done = eventually(Duration::from_secs(20), || async {
        snapshot(&regions[0]).await.len() == 20
    })
    .await;
    assert!(local_done, "the local region applied everything");
    let expected = snapshot(&regions[0]).await;
    assert_converges(&regions, &expected, Duration::from_secs(20)).await;
    hub.shutdown().await;
}

async fn publish_with(addr: SocketAddr, token: &str, commands: Value) {
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/v1/publish"))
        .bearer_auth(token)
        .json(&json!({ "commands": commands }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp_refuses_commands_before_auth_with_the_publish_token() {
    let regions = regions(1);
    let data = tempfile::tempdir().unwrap();
    let mut config = secured(&data.path().join("bus"), &regions);
    let resp_port = free_port().unwrap();
    config.resp = Some(regis::config::RespConfig {
        listen: format!("127.0.0.1:{resp_port}").parse().unwrap(),
        ..Default::default()
    });
    let hub = start_hub(&config).await;
    let resp = hub.resp_addr().unwrap();
    let client = redis::Client::open(format!("redis://{resp}")).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let before: redis::RedisResult<()> = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query_async(&mut conn)
        .await;
    let err = before.expect_err("refused before AUTH");
    assert!(err.to_string().contains("NOAUTH"), "{err}");
    for wrong in [WORKER, "nope"] {
        let auth: redis::RedisResult<()> =
            redis::cmd("AUTH").arg(wrong).query_async(&mut conn).await;
        assert!(
            auth.expect_err("not a publish token")
                .to_string()
                .contains("WRONGPASS")
        );
    }
    let auth: redis::RedisResult<()> = redis::cmd("AUTH").arg(PUBLISH).query_async(&mut conn).await;
    auth.expect("the publish token is accepted");
    let set: redis::RedisResult<()> = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query_async(&mut conn)
        .await;
    set.expect("published after AUTH");
    // The redis crate's password URL, with the admin token (admin may do everything).
    let admin = redis::Client::open(format!("redis://:{ADMIN}@{resp}")).unwrap();
    let mut conn = admin.get_multiplexed_async_connection().await.unwrap();
    let set: redis::RedisResult<()> = redis::cmd("SET")
        .arg("k2")
        .arg("v")
        .query_async(&mut conn)
        .await;
    set.expect("published with the admin token");
    let seen = eventually(Duration::from_secs(10), || async {
        redis_cmd(&regions[0], &["EXISTS", "k", "k2"]).await == redis::Value::Int(2)
    })
    .await;
    assert!(seen);
    hub.shutdown().await;
}
