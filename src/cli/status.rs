//! `regis status --url URL [--json]`: is every region keeping up?
//!
//! One row per region from `GET /v1/status`: backlog, in flight, dead letters, age of the
//! oldest message not yet applied, apply rate and publish→applied p50/p99 over the last
//! minute, and whether the region's Redis answers. Figures the hub marks as estimates (on
//! the NATS bus, sometimes) read `~1200`, with a note. `--json` prints the hub's answer as is.

use anyhow::Context;
use clap::Args;
use serde::Deserialize;

use super::client::{HubArgs, HubClient};
use crate::clock::now_ms;

/// Options of `regis status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    hub: HubArgs,
    /// Print the hub's JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Deserialize)]
struct StatusBody {
    regions: Vec<RegionRow>,
}

#[derive(Debug, Deserialize)]
struct RegionRow {
    name: String,
    depth: u64,
    in_flight: u64,
    dead_letters: u64,
    oldest_age_ms: Option<u64>,
    /// Older hubs do not say: their figures were exact, or NATS batches.
    #[serde(default)]
    estimated: bool,
    #[serde(default)]
    latency: Latency,
    #[serde(default)]
    redis: Redis,
}

#[derive(Debug, Default, Deserialize)]
struct Latency {
    #[serde(default)]
    count: u64,
    #[serde(default)]
    rate_per_sec: f64,
    #[serde(default)]
    p50_ms: f64,
    #[serde(default)]
    p99_ms: f64,
}

#[derive(Debug, Default, Deserialize)]
struct Redis {
    reachable: Option<bool>,
    since_ms: Option<u64>,
    error: Option<String>,
}

/// Prints the status table (or JSON).
pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let hub = HubClient::new(&args.hub)?;
    let body = hub.get("/v1/status").await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(());
    }
    let status: StatusBody = serde_json::from_value(body).context(
        "the hub's /v1/status answer is not what this regis expects; is the hub the same version?",
    )?;
    print!("{}", table(&status.regions, now_ms()));
    Ok(())
}

/// "850ms", "12.3s", "4m05s", "2h07m", "3d04h".
pub fn human_ms(ms: u64) -> String {
    let s = ms / 1000;
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m{:02}s", s / 60, s % 60),
        3_600_000..172_800_000 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

fn latency_ms(ms: f64, count: u64) -> String {
    if count == 0 {
        "-".into()
    } else if ms < 10.0 {
        format!("{ms:.1}ms")
    } else {
        human_ms(ms.round() as u64)
    }
}

fn table(regions: &[RegionRow], now: u64) -> String {
    let header = [
        "REGION",
        "BACKLOG",
        "IN FLIGHT",
        "DEAD",
        "OLDEST",
        "APPLIED/S",
        "P50",
        "P99",
        "REDIS",
    ];
    let mut rows: Vec<[String; 9]> = Vec::new();
    let mut notes = Vec::new();
    for r in regions {
        let redis = match r.redis.reachable {
            Some(true) => "up".to_string(),
            Some(false) => {
                let since = r
                    .redis
                    .since_ms
                    .map(|s| format!(" {}", human_ms(now.saturating_sub(s))))
                    .unwrap_or_default();
                if let Some(error) = &r.redis.error {
                    notes.push(format!("{}: Redis unreachable: {error}", r.name));
                }
                format!("DOWN{since}")
            }
            None => "unknown".to_string(),
        };
        if r.dead_letters > 0 {
            notes.push(format!(
                "{}: {} dead letter(s); see `regis dlq list --region {}`",
                r.name, r.dead_letters, r.name
            ));
        }
        // An estimate reads "~1200", explained below the table.
        let mark = if r.estimated { "~" } else { "" };
        if r.estimated {
            notes.push(format!(
                "{}: backlog and in-flight figures are estimates (NATS: see \"Queue figures\" in docs/nats.md)",
                r.name
            ));
        }
        rows.push([
            r.name.clone(),
            format!("{mark}{}", r.depth),
            format!("{mark}{}", r.in_flight),
            r.dead_letters.to_string(),
            r.oldest_age_ms.map(human_ms).unwrap_or_else(|| "-".into()),
            format!("{:.1}", r.latency.rate_per_sec),
            latency_ms(r.latency.p50_ms, r.latency.count),
            latency_ms(r.latency.p99_ms, r.latency.count),
            redis,
        ]);
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            // Names left-aligned, figures right-aligned, the last column unpadded.
            if i == 0 {
                out.push_str(&format!("{cell:<w$}"));
            } else if i == cells.len() - 1 {
                out.push_str(&format!("  {cell}"));
            } else {
                out.push_str(&format!("  {cell:>w$}"));
            }
        }
        out.push('\n');
        out
    };
    let mut out = line(header.to_vec());
    for row in &rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    if regions.is_empty() {
        out.push_str("(no regions)\n");
    }
    for note in notes {
        out.push_str(&format!("\n{note}"));
    }
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_ms(850), "850ms");
        assert_eq!(human_ms(12_340), "12.3s");
        assert_eq!(human_ms(245_000), "4m05s");
        assert_eq!(human_ms(7_620_000), "2h07m");
        assert_eq!(human_ms(3 * 86_400_000 + 4 * 3_600_000), "3d04h");
    }

    #[test]
    fn the_table_has_a_row_per_region_and_explains_trouble() {
        let regions = vec![
            RegionRow {
                name: "singapore".into(),
                depth: 0,
                in_flight: 2,
                dead_letters: 0,
                oldest_age_ms: None,
                estimated: false,
                latency: Latency {
                    count: 600,
                    rate_per_sec: 10.0,
                    p50_ms: 4.2,
                    p99_ms: 31.0,
                },
                redis: Redis {
                    reachable: Some(true),
                    since_ms: Some(0),
                    error: None,
                },
            },
            RegionRow {
                name: "mumbai".into(),
                depth: 1200,
                in_flight: 0,
                dead_letters: 1,
                oldest_age_ms: Some(95_000),
                estimated: true,
                latency: Latency::default(),
                redis: Redis {
                    reachable: Some(false),
                    since_ms: Some(1_000),
                    error: Some("Connection refused".into()),
                },
            },
        ];
        let text = table(&regions, 61_000);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("REGION"), "{text}");
        assert!(
            lines[1].starts_with("singapore")
                && lines[1].contains("4.2ms")
                && lines[1].ends_with("up"),
            "{text}"
        );
        assert!(
            lines[2].starts_with("mumbai")
                && lines[2].contains("~1200")
                && lines[2].contains("~0")
                && lines[2].contains("1m35s")
                && lines[2].ends_with("DOWN 1m00s"),
            "{text}"
        );
        assert!(
            text.contains("mumbai: Redis unreachable: Connection refused"),
            "{text}"
        );
        assert!(text.contains("regis dlq list --region mumbai"), "{text}");
        assert!(
            text.contains("mumbai: backlog and in-flight figures are estimates")
                && !text.contains("singapore: backlog"),
            "{text}"
        );
    }
}
