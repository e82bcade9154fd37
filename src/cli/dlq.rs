//! `regis dlq list|show|redrive|purge --url URL --region R ...`: a region's dead letters.
//!
//! Thin over the hub's `/v1/regions/{region}/dead-letters` API (see `ingress::admin`).
//! `redrive` and `purge` take `--all` or message ids; ids that name no dead letter are
//! reported and make the command exit 1 after the others were handled.

use std::time::{Duration, UNIX_EPOCH};

use anyhow::bail;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::client::{HubArgs, HubClient};

/// `regis dlq ...`
#[derive(Debug, Args)]
pub struct DlqArgs {
    #[command(subcommand)]
    command: DlqCommand,
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// List a region's dead letters, oldest first: id, attempts, failure times, last error
    /// and the commands.
    List {
        #[command(flatten)]
        target: Target,
        /// Most dead letters to show (1 to 10000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print the hub's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter with its commands in full.
    Show {
        #[command(flatten)]
        target: Target,
        /// The message id (from `regis dlq list`).
        id: String,
        /// Print the hub's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Move dead letters back into the region's queue (only that region's), with a fresh
    /// receive count. Fix what made them fail first.
    Redrive {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        which: Which,
    },
    /// Delete dead letters for good.
    Purge {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        which: Which,
    },
}

/// The hub and the region.
#[derive(Debug, Args)]
struct Target {
    #[command(flatten)]
    hub: HubArgs,
    /// The region whose dead letters to handle.
    #[arg(long)]
    region: String,
}

/// `--all` or ids.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct Which {
    /// Every dead letter of the region.
    #[arg(long)]
    all: bool,
    /// These message ids.
    ids: Vec<String>,
}

impl Which {
    fn body(&self) -> Value {
        if self.all {
            json!({ "all": true })
        } else {
            json!({ "ids": self.ids })
        }
    }
}

/// Percent-encodes a path segment, so a region name cannot wander into another route.
fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn base(region: &str) -> String {
    format!("/v1/regions/{}/dead-letters", segment(region))
}

fn time(ms: &Value) -> String {
    match ms.as_u64() {
        Some(ms) => {
            humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
        }
        None => "-".into(),
    }
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or("")
}

/// Runs a `regis dlq` subcommand.
pub async fn run(args: DlqArgs) -> anyhow::Result<()> {
    match args.command {
        DlqCommand::List {
            target,
            limit,
            json,
        } => {
            let hub = HubClient::new(&target.hub)?;
            let body = hub
                .get(&format!("{}?limit={limit}", base(&target.region)))
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&body)?);
                return Ok(());
            }
            print!("{}", list_text(&target.region, &body));
            Ok(())
        }
        DlqCommand::Show { target, id, json } => {
            let hub = HubClient::new(&target.hub)?;
            let body = hub
                .get(&format!("{}/{}", base(&target.region), segment(&id)))
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&body)?);
                return Ok(());
            }
            print!("{}", show_text(&body));
            Ok(())
        }
        DlqCommand::Redrive { target, which } => {
            act(
                &target,
                &which,
                "redrive",
                "redriven",
                "moved back into its queue",
            )
            .await
        }
        DlqCommand::Purge { target, which } => {
            act(&target, &which, "purge", "purged", "deleted").await
        }
    }
}

async fn act(
    target: &Target,
    which: &Which,
    action: &str,
    field: &str,
    done: &str,
) -> anyhow::Result<()> {
    let hub = HubClient::new(&target.hub)?;
    let body = hub
        .post(&format!("{}/{action}", base(&target.region)), &which.body())
        .await?;
    let count = body[field].as_u64().unwrap_or(0);
    println!("{count} dead letter(s) of region {} {done}", target.region);
    let not_found: Vec<&str> = body["not_found"]
        .as_array()
        .map(|ids| ids.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if !not_found.is_empty() {
        bail!(
            "no dead letter in region {} with id {} (already redriven, purged or expired?); see `regis dlq list`",
            target.region,
            not_found.join(", ")
        );
    }
    Ok(())
}

/// What `regis dlq list` prints for `body` (the hub's list answer).
pub(super) fn list_text(region: &str, body: &Value) -> String {
    let letters = body["dead_letters"].as_array().cloned().unwrap_or_default();
    if letters.is_empty() {
        return format!("region {region} has no dead letters\n");
    }
    let mut out = match body["total"].as_u64() {
        Some(total) if body["truncated"].as_bool() == Some(true) => format!(
            "region {region}: {total} dead letter(s); the oldest {} shown (use --limit)\n",
            letters.len()
        ),
        _ => format!("region {region}: {} dead letter(s)\n", letters.len()),
    };
    for letter in &letters {
        out.push_str(&format!(
            "\n{}  {} attempt(s)  first failed {}  last failed {}\n  error:    {}\n  commands: {}\n",
            text(&letter["id"]),
            letter["attempts"],
            time(&letter["first_failure_ms"]),
            time(&letter["last_failure_ms"]),
            text(&letter["last_error"]),
            text(&letter["preview"]),
        ));
    }
    out
}

fn show_text(body: &Value) -> String {
    let mut out = String::new();
    for (label, value) in [
        ("id", text(&body["id"]).to_string()),
        ("region", text(&body["region"]).to_string()),
        ("attempts", body["attempts"].to_string()),
        ("published", time(&body["published_at_ms"])),
        ("first failure", time(&body["first_failure_ms"])),
        ("last failure", time(&body["last_failure_ms"])),
        ("last error", text(&body["last_error"]).to_string()),
        ("version", text(&body["version"]).to_string()),
        ("db", body["db"].to_string()),
    ] {
        out.push_str(&format!("{:<14} {value}\n", format!("{label}:")));
    }
    match body["commands"].as_array() {
        Some(commands) => {
            out.push_str("commands:\n");
            for command in commands {
                out.push_str(&format!("  {command}\n"));
            }
        }
        None => out.push_str(&format!("commands:      {}\n", text(&body["preview"]))),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_names_cannot_escape_their_path_segment() {
        assert_eq!(base("mumbai"), "/v1/regions/mumbai/dead-letters");
        assert_eq!(base("../x"), "/v1/regions/..%2Fx/dead-letters");
    }

    #[test]
    fn a_list_shows_id_attempts_error_and_commands() {
        let body = json!({
            "region": "r0", "total": 1, "truncated": false,
            "dead_letters": [{
                "id": "0196a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", "region": "r0", "attempts": 3,
                "published_at_ms": 0, "first_failure_ms": 1000, "last_failure_ms": 2000,
                "last_error": "WRONGTYPE Operation against a key holding the wrong kind of value",
                "command_count": 1, "preview": "HSET profile name Ana"
            }]
        });
        let text = list_text("r0", &body);
        assert!(
            text.contains("0196a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b  3 attempt(s)"),
            "{text}"
        );
        assert!(text.contains("1970-01-01T00:00:01.000Z"), "{text}");
        assert!(text.contains("error:    WRONGTYPE"), "{text}");
        assert!(text.contains("commands: HSET profile name Ana"), "{text}");
        assert_eq!(
            list_text("r0", &json!({"dead_letters": []})),
            "region r0 has no dead letters\n"
        );
    }
}
