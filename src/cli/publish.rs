//! `regis publish --url URL -- SET k v`.

use anyhow::bail;
use serde_json::json;

use super::client::{HubArgs, HubClient};

/// Publishes one command and prints the message id.
pub async fn run(hub: &HubArgs, db: u32, command: Vec<String>) -> anyhow::Result<()> {
    let hub = HubClient::new(hub)?;
    let body = hub
        .post("/v1/publish", &json!({ "commands": [command], "db": db }))
        .await?;
    match body["id"].as_str() {
        Some(id) => {
            println!("{id}");
            Ok(())
        }
        None => bail!("the hub answered without a message id: {body}"),
    }
}
