//! `regis publish --url URL -- SET k v`.

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// Publishes one command and prints the message id.
pub async fn run(url: &str, db: u32, command: Vec<String>) -> anyhow::Result<()> {
    let endpoint = format!("{}/v1/publish", url.trim_end_matches('/'));
    let response = reqwest::Client::new()
        .post(&endpoint)
        .json(&json!({ "commands": [command], "db": db }))
        .send()
        .await
        .with_context(|| {
            format!("cannot reach the hub at {url}; is `regis serve` running there?")
        })?;
    let status = response.status();
    let body: Value = response.json().await.with_context(|| {
        format!("the hub at {url} answered {status} with a body that is not JSON")
    })?;
    if !status.is_success() {
        let message = body["error"]["message"]
            .as_str()
            .unwrap_or("no error message");
        bail!("refused ({status}): {message}");
    }
    match body["id"].as_str() {
        Some(id) => {
            println!("{id}");
            Ok(())
        }
        None => bail!("the hub answered {status} without a message id: {body}"),
    }
}
