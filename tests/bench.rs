//! `regis bench` runs end to end on a tiny workload and reports every configuration it
//! promises: the three baselines, every Regis setup, the scale runs, a JSON file with the
//! figures the printed table shows, and an SVG plot. It checks the command works, not how fast
//! anything is (the figures belong in BENCHMARKS.md, from a full run).

use std::process::Command;

use serde_json::Value;

#[test]
fn bench_compares_every_configuration_and_writes_json_and_a_plot() {
    let out = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_regis"))
        .args([
            "bench",
            "--messages",
            "3000",
            "--keys",
            "500",
            "--duration",
            "1s",
            "--rate",
            "300",
            "--backlog",
            "3000",
            "--memory-keys",
            "2000",
            "--bus",
            "embedded",
            "--out",
        ])
        .arg(out.path())
        .output()
        .expect("the regis binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "regis bench failed (it needs redis-server on PATH):\n{stderr}\n{stdout}"
    );

    let report: Value = serde_json::from_slice(
        &std::fs::read(out.path().join("bench.json")).expect("bench.json written"),
    )
    .expect("bench.json is JSON");
    let rows = report["rows"].as_array().expect("rows");
    let labels: Vec<&str> = rows.iter().filter_map(|r| r["label"].as_str()).collect();
    assert_eq!(
        labels,
        [
            "ceiling: pipelined into one Redis",
            "direct fan-out to 2 regions",
            "replicaof: primary + 1 replica(s)",
            "regis lww, embedded bus, via RESP",
            "regis none, embedded bus, via RESP",
            "regis lww, embedded bus, via HTTP",
            "regis none, embedded bus, via HTTP",
        ]
    );
    for row in rows {
        let label = row["label"].as_str().unwrap_or("?");
        assert!(
            row["saturation"].as_f64().unwrap_or(0.0) > 0.0,
            "{label}: {row}"
        );
        let offered = &row["fixed"];
        assert!(offered["count"].as_u64().unwrap_or(0) > 0, "{label}: {row}");
        assert!(
            offered["p50_ms"].as_f64().unwrap_or(-1.0)
                <= offered["p99_ms"].as_f64().unwrap_or(-2.0),
            "{label}: {row}"
        );
        assert_eq!(
            row["durable"].as_bool(),
            Some(label.starts_with("regis")),
            "{label}"
        );
    }
    let scale = &report["scale"];
    assert_eq!(scale["backlog"].as_u64(), Some(3000));
    assert!(
        scale["bus_bytes_per_message"].as_f64().unwrap_or(0.0) > 200.0,
        "{scale}"
    );
    assert!(scale["drain_rate"].as_f64().unwrap_or(0.0) > 0.0, "{scale}");
    assert!(
        scale["peak_hub_rss_bytes"].as_u64().unwrap_or(0) > 0,
        "{scale}"
    );
    assert!(
        scale["regis_bytes_per_key"].as_f64().unwrap_or(0.0)
            > scale["plain_bytes_per_key"].as_f64().unwrap_or(f64::MAX),
        "lww metadata costs memory: {scale}"
    );

    let svg = std::fs::read_to_string(out.path().join("bench.svg")).expect("bench.svg written");
    assert!(svg.starts_with("<svg"), "{svg}");
    assert_eq!(svg.matches("<polyline").count(), rows.len(), "{svg}");
    // The printed table and the JSON are the same figures.
    for row in rows {
        let label = row["label"].as_str().unwrap_or("?");
        let durable = if row["durable"].as_bool() == Some(true) {
            "yes"
        } else {
            "no"
        };
        let saturation = row["saturation"].as_f64().unwrap_or(-1.0);
        let line = format!("| {label} | {durable} | {saturation:.0} |");
        assert!(stdout.contains(&line), "{line} in the table:\n{stdout}");
    }
    assert!(stdout.contains("Targets"), "{stdout}");
    assert!(
        stdout.contains("| p50 × ceiling |"),
        "latency ratios: {stdout}"
    );
}
