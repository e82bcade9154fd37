//! `regis verify [--config FILE | --redis NAME=URL ...] [--repair --from REGION]`.
//!
//! Compares every key of every region with the reference region (see [`crate::verify`]),
//! prints a summary and up to `--examples` drifted keys, and exits like `diff`: 0 when the
//! regions agree, 1 when they drift, 2 when the comparison could not be made. With
//! `--repair --from REGION` it makes the others match REGION and exits 0 when every repaired
//! key then matches.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::Exit;
use crate::config::Config;
use crate::verify::{Options, Progress, Region, Report, verify};

/// Options of `regis verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The hub's config file: its [[regions]] are compared.
    #[arg(long, short, required_unless_present = "redis")]
    pub config: Option<PathBuf>,
    /// A region to compare as NAME=URL (repeatable), instead of or besides --config. The
    /// NAME of a region in --config gives its URL instead of the file's (a region with
    /// `worker = "remote"` has none there).
    #[arg(long = "redis", value_name = "NAME=URL")]
    pub redis: Vec<String>,
    /// Make every other region match the --from region: drifted keys are copied with their
    /// convergence metadata. Run it when the hub's backlog is empty (`regis status`).
    #[arg(long, requires = "from")]
    pub repair: bool,
    /// The reference region (and the repair source). Default: the first region.
    #[arg(long, value_name = "REGION")]
    pub from: Option<String>,
    /// Only keys starting with this prefix.
    #[arg(long)]
    pub prefix: Option<String>,
    /// Only this database (repeatable). Default: every database holding keys in some region.
    #[arg(long)]
    pub db: Vec<u32>,
    /// Expiry deadlines this close count as equal.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub ttl_tolerance: Duration,
    /// Most drifted keys to describe.
    #[arg(long, default_value_t = 10)]
    pub examples: usize,
    /// Keys per SCAN and per pipeline.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub chunk: u32,
    /// Timeout of one Redis round trip.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A progress bar on stderr, drawn only on a terminal.
struct Bar(ProgressBar);

impl Bar {
    fn new() -> Bar {
        let target = if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(Some(0), target);
        if let Ok(style) = ProgressStyle::with_template(
            "{msg} [{bar:30}] {human_pos}/{human_len} keys scanned ({per_sec}, {eta} left)",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        Bar(bar)
    }
}

impl Progress for Bar {
    fn phase(&self, what: &str, total: u64) {
        self.0.set_length(total);
        self.0.set_position(0);
        self.0.set_message(what.to_string());
    }
    fn advance(&self, n: u64) {
        self.0.inc(n);
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

/// The regions named by `--config` and `--redis`, in that order. A `--redis NAME=URL` whose
/// name is a region of the config file gives that region's URL (a region whose worker is
/// remote has no URL in the hub's config; another may be reachable at another address from
/// where verify runs).
fn regions(args: &VerifyArgs) -> anyhow::Result<Vec<Region>> {
    let mut out: Vec<Region> = Vec::new();
    if let Some(path) = &args.config {
        let config = Config::load(path)?;
        out.extend(config.regions.into_iter().map(|r| Region {
            name: r.name,
            url: r.redis,
        }));
    }
    let from_config = out.len();
    for spec in &args.redis {
        let Some((name, url)) = spec.split_once('=') else {
            return Err(anyhow!(
                "--redis {spec:?}: expected NAME=URL, e.g. --redis mumbai=redis://10.0.0.2:6379"
            ));
        };
        if let Err(err) = redis::Client::open(url) {
            return Err(anyhow!(
                "--redis {name}: {url:?} is not a Redis URL ({err})"
            ));
        }
        if let Some(region) = out[..from_config].iter_mut().find(|r| r.name == name) {
            region.url = url.to_string();
            continue;
        }
        out.push(Region {
            name: name.to_string(),
            url: url.to_string(),
        });
    }
    for (i, region) in out.iter().enumerate() {
        if out[..i].iter().any(|r| r.name == region.name) {
            return Err(anyhow!(
                "region {:?} is named twice; give every region its own name",
                region.name
            ));
        }
        if region.url.is_empty() {
            return Err(anyhow!(
                "region {:?} has no Redis URL in the config (its worker is remote): give it with --redis {}=redis://HOST:PORT",
                region.name,
                region.name
            ));
        }
    }
    Ok(out)
}

/// Runs `regis verify`; the exit status says whether the regions agree.
pub async fn run(args: VerifyArgs) -> anyhow::Result<()> {
    match compare(&args).await {
        Ok(report) => {
            if args.json {
                let mut json = serde_json::to_value(&report)?;
                if let Some(fields) = json.as_object_mut() {
                    fields.insert("agree".into(), report.agree().into());
                    fields.insert("keys_per_sec".into(), report.keys_per_sec().round().into());
                }
                println!("{}", serde_json::to_string_pretty(&json)?);
            } else {
                print!("{}", summary(&report));
            }
            if report.agree() {
                Ok(())
            } else {
                Err(Exit(1).into())
            }
        }
        Err(err) => {
            eprintln!("regis: error: {err:#}");
            Err(Exit(2).into())
        }
    }
}

async fn compare(args: &VerifyArgs) -> anyhow::Result<Report> {
    let regions = regions(args)?;
    let reference = match &args.from {
        None => 0,
        Some(name) => regions
            .iter()
            .position(|r| &r.name == name)
            .ok_or_else(|| {
                let names: Vec<&str> = regions.iter().map(|r| r.name.as_str()).collect();
                anyhow!(
                    "--from {name:?} is not one of the regions ({})",
                    names.join(", ")
                )
            })?,
    };
    if args.repair && !args.json {
        eprintln!(
            "regis: repairing: every drifted key of the other regions becomes a copy of {}'s; \
             this is right only once the hub has applied everything to {} (check `regis status`)",
            regions[reference].name, regions[reference].name
        );
    }
    let options = Options {
        reference,
        repair: args.repair,
        prefix: args.prefix.as_ref().map(|p| p.as_bytes().to_vec()),
        dbs: (!args.db.is_empty()).then(|| args.db.clone()),
        ttl_tolerance: args.ttl_tolerance,
        examples: args.examples,
        chunk: args.chunk as usize,
        timeout: args.timeout,
    };
    Ok(verify(&regions, &options, Arc::new(Bar::new())).await?)
}

/// The human summary.
pub fn summary(report: &Report) -> String {
    let dbs: Vec<String> = report.dbs.iter().map(u32::to_string).collect();
    let others: Vec<&str> = report.regions.iter().map(|r| r.region.as_str()).collect();
    let mut out = format!(
        "Compared {} keys (db {}) of {} with {} in {:.1} s ({:.0} keys/s).\n",
        report.keys_compared,
        dbs.join(", "),
        report.reference,
        others.join(", "),
        report.elapsed.as_secs_f64(),
        report.keys_per_sec()
    );
    for r in &report.regions {
        if r.drifted() == 0 {
            out.push_str(&format!("  {}: {} identical\n", r.region, r.identical));
            continue;
        }
        out.push_str(&format!(
            "  {}: {} identical, {} drifted ({} missing, {} extra, {} of another type, {} with another value, {} with another TTL)\n",
            r.region,
            r.identical,
            r.drifted(),
            r.missing,
            r.extra,
            r.type_differs,
            r.value_differs,
            r.ttl_differs
        ));
        if report.repaired {
            out.push_str(&format!(
                "  {}: {} repaired from {}, {} still differ\n",
                r.region, r.repaired, report.reference, r.still_differ
            ));
        }
    }
    if !report.examples.is_empty() {
        out.push_str("Drift:\n");
        for d in &report.examples {
            out.push_str(&format!(
                "  {} db {} {:?} ({}): {}\n",
                d.region,
                d.db,
                d.key,
                match d.kind {
                    crate::verify::DriftKind::Missing => "missing",
                    crate::verify::DriftKind::Extra => "extra",
                    crate::verify::DriftKind::Type => "type",
                    crate::verify::DriftKind::Value => "value",
                    crate::verify::DriftKind::Ttl => "TTL",
                },
                d.detail
            ));
        }
        let shown = report.examples.len() as u64;
        if report.drifted() > shown {
            out.push_str(&format!(
                "  … and {} more (raise --examples to see them)\n",
                report.drifted() - shown
            ));
        }
    }
    out.push_str(match (report.drifted() == 0, report.repaired, report.agree()) {
        (true, _, _) => "The regions are identical.\n",
        (false, true, true) => "The regions differed; repaired, they now agree.\n",
        (false, true, false) => {
            "Some keys still differ after the repair (see the log); run verify again.\n"
        }
        (false, false, _) => {
            "The regions differ. To make them match one region: regis verify --repair --from REGION\n"
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        verify: VerifyArgs,
    }

    fn args(config: &std::path::Path, redis: &[&str]) -> VerifyArgs {
        let mut argv = vec![
            "verify".to_string(),
            "--config".into(),
            config.display().to_string(),
        ];
        for spec in redis {
            argv.push("--redis".into());
            argv.push(spec.to_string());
        }
        Cli::parse_from(argv).verify
    }

    fn config_with_a_remote_region() -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(
            file.path(),
            r#"
[[regions]]
name = "singapore"
redis = "redis://127.0.0.1:6379"
[[regions]]
name = "mumbai"
worker = "remote"
"#,
        )
        .expect("write config");
        file
    }

    #[test]
    fn a_remote_region_needs_its_url_on_the_command_line() {
        let config = config_with_a_remote_region();
        let err = regions(&args(config.path(), &[])).expect_err("no URL for mumbai");
        let text = err.to_string();
        assert!(text.contains("\"mumbai\""), "{text}");
        assert!(text.contains("--redis mumbai="), "{text}");
    }

    #[test]
    fn redis_named_like_a_config_region_gives_its_url() {
        let config = config_with_a_remote_region();
        let got = regions(&args(
            config.path(),
            &[
                "mumbai=redis://10.0.0.2:6379",
                "extra=redis://10.0.0.3:6379",
            ],
        ))
        .expect("regions");
        let pairs: Vec<(&str, &str)> = got
            .iter()
            .map(|r| (r.name.as_str(), r.url.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("singapore", "redis://127.0.0.1:6379"),
                ("mumbai", "redis://10.0.0.2:6379"),
                ("extra", "redis://10.0.0.3:6379"),
            ]
        );
    }
}
