//! The benchmark's plot, as a self-contained SVG: throughput per configuration (bars) and
//! p99 latency over time at the fixed offered load (one line per configuration).
//!
//! Written directly rather than with a plotting crate: the two charts need a few dozen SVG
//! elements, and SVG text needs no font files at run time (a rasterising backend would need
//! a font on the machine, which a fresh server may not have).

use std::fmt::Write;

use super::measure::SecondFigures;

/// One configuration's figures, as plotted.
pub struct Series<'a> {
    pub label: &'a str,
    pub throughput: f64,
    pub timeline: &'a [SecondFigures],
}

const COLORS: [&str; 10] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac",
];

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Renders both charts; `title` heads the picture.
pub fn render(title: &str, rate: u64, series: &[Series<'_>]) -> String {
    let width = 960.0;
    let bar_height = 22.0;
    let bars_top = 60.0;
    let bars_height = series.len() as f64 * (bar_height + 8.0);
    let lines_top = bars_top + bars_height + 70.0;
    let lines_height = 300.0;
    let height = lines_top + lines_height + 60.0 + 18.0 * series.len() as f64;
    let left = 300.0;
    let right = width - 40.0;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="24" font-size="16" text-anchor="middle">{}</text>
<text x="{left}" y="{}" font-size="13">Throughput at saturation (commands/s)</text>
"#,
        width / 2.0,
        escape(title),
        bars_top - 10.0
    );
    let max = series.iter().map(|s| s.throughput).fold(1.0_f64, f64::max);
    for (i, s) in series.iter().enumerate() {
        let y = bars_top + i as f64 * (bar_height + 8.0);
        let w = (right - left - 80.0) * s.throughput / max;
        let color = COLORS[i % COLORS.len()];
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text><rect x="{left}" y="{y}" width="{w:.1}" height="{bar_height}" fill="{color}"/><text x="{:.1}" y="{}">{:.0}</text>"#,
            left - 8.0,
            y + 15.0,
            escape(s.label),
            left + w + 6.0,
            y + 15.0,
            s.throughput
        );
    }

    // Latency over time, log scale: the configurations differ by orders of magnitude.
    let _ = writeln!(
        svg,
        r#"<text x="{left}" y="{}" font-size="13">p99 latency each second at {rate} commands/s offered (ms, log scale)</text>"#,
        lines_top - 14.0
    );
    let points: Vec<f64> = series
        .iter()
        .flat_map(|s| s.timeline.iter().map(|p| p.p99_ms))
        .filter(|v| *v > 0.0)
        .collect();
    let low = points
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min)
        .max(0.01)
        .log10()
        .floor();
    let high = points
        .iter()
        .copied()
        .fold(0.1_f64, f64::max)
        .log10()
        .ceil()
        .max(low + 1.0);
    let seconds = series
        .iter()
        .map(|s| s.timeline.len())
        .max()
        .unwrap_or(1)
        .max(2) as f64;
    let plot_left = 80.0;
    let x = |second: f64| plot_left + (right - plot_left) * (second - 1.0) / (seconds - 1.0);
    let y = |ms: f64| {
        lines_top + lines_height
            - lines_height * (ms.max(10f64.powf(low)).log10() - low) / (high - low)
    };
    let _ = writeln!(
        svg,
        r##"<rect x="{plot_left}" y="{lines_top}" width="{}" height="{lines_height}" fill="none" stroke="#888"/>"##,
        right - plot_left
    );
    let mut decade = low;
    while decade <= high {
        let value = 10f64.powf(decade);
        let _ = writeln!(
            svg,
            r##"<line x1="{plot_left}" x2="{right}" y1="{0:.1}" y2="{0:.1}" stroke="#ddd"/><text x="{1}" y="{2:.1}" text-anchor="end">{3}</text>"##,
            y(value),
            plot_left - 6.0,
            y(value) + 4.0,
            value
        );
        decade += 1.0;
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">seconds into the run</text>"#,
        (plot_left + right) / 2.0,
        lines_top + lines_height + 32.0
    );
    for tick in [1.0, seconds / 2.0, seconds] {
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{:.0}</text>"#,
            x(tick),
            lines_top + lines_height + 16.0,
            tick
        );
    }
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = s
            .timeline
            .iter()
            .filter(|p| p.count > 0)
            .map(|p| format!("{:.1},{:.1}", x(f64::from(p.second)), y(p.p99_ms)))
            .collect();
        if !path.is_empty() {
            let _ = writeln!(
                svg,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
                path.join(" ")
            );
        }
        let legend_y = lines_top + lines_height + 56.0 + 18.0 * i as f64;
        let _ = writeln!(
            svg,
            r#"<rect x="{plot_left}" y="{}" width="14" height="4" fill="{color}"/><text x="{}" y="{legend_y}">{}</text>"#,
            legend_y - 6.0,
            plot_left + 20.0,
            escape(s.label)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_bar_and_a_line_per_configuration() {
        let timeline = vec![
            SecondFigures {
                second: 1,
                count: 10,
                p50_ms: 0.5,
                p99_ms: 1.0,
            },
            SecondFigures {
                second: 2,
                count: 10,
                p50_ms: 0.5,
                p99_ms: 4.0,
            },
        ];
        let svg = render(
            "a <test>",
            1000,
            &[
                Series {
                    label: "direct",
                    throughput: 500_000.0,
                    timeline: &timeline,
                },
                Series {
                    label: "regis lww",
                    throughput: 100_000.0,
                    timeline: &timeline,
                },
            ],
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<polyline").count(), 2, "{svg}");
        assert!(
            svg.contains(">500000<") && svg.contains(">100000<"),
            "{svg}"
        );
        assert!(svg.contains("a &lt;test&gt;"), "{svg}");
    }
}
