//! Percentile-spectrum plots as SVG, written by hand: latency (log scale, microseconds) by
//! percentile on a log "nines" axis (0%, 90%, 99%, 99.9%, ...: x = log10(1/(1-p))), the
//! layout of HdrHistogram's own plotter, one line per series with a legend.
//!
//! Why not plotters: its SVG backend alone would do, but the nines axis needs our own key
//! points and labels anyway, and what is left (a frame, grid lines, polylines, a legend) is
//! this one small file; it costs every `cargo test` of the workspace no extra crates and
//! writes the same bytes for the same input.

use crate::hgrm::Distribution;

/// One line of the plot.
#[derive(Clone, Debug)]
pub struct Series {
    pub label: String,
    /// (percentile 0..=1, latency in µs), in increasing percentile.
    pub points: Vec<(f64, f64)>,
}

impl Series {
    /// A series from a `.hgrm` distribution (its values in milliseconds).
    pub fn from_distribution(label: &str, d: &Distribution) -> Series {
        Series {
            label: label.to_string(),
            points: d
                .rows
                .iter()
                .map(|r| (r.percentile, r.value * 1000.0))
                .collect(),
        }
    }
}

const W: f64 = 820.0;
const H: f64 = 500.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 44.0;
const TOP: f64 = 48.0;
const BOTTOM: f64 = 56.0;
/// The most nines shown (99.9999%); rows beyond are drawn at the right edge.
const MAX_NINES: f64 = 6.0;
const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// x of a percentile: how many nines it has (0.99 -> 2), capped at `MAX_NINES`.
fn nines(p: f64) -> f64 {
    if p >= 1.0 {
        return MAX_NINES;
    }
    (1.0 / (1.0 - p)).log10().clamp(0.0, MAX_NINES)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A latency in µs as a short label: 500 ns, 20 µs, 3 ms, 1 s.
fn time_label(us: f64) -> String {
    if us >= 1e6 {
        format!("{} s", us / 1e6)
    } else if us >= 1e3 {
        format!("{} ms", us / 1e3)
    } else if us >= 1.0 {
        format!("{us} µs")
    } else {
        format!("{} ns", us * 1e3)
    }
}

/// The plot of `series` with `title`, as an SVG document.
pub fn spectrum(title: &str, series: &[Series]) -> String {
    use std::fmt::Write;
    let values = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .filter(|v| *v > 0.0 && v.is_finite());
    let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo, hi) = if lo <= hi { (lo, hi) } else { (1.0, 10.0) };
    // Whole decades around the data.
    let y0 = lo.log10().floor();
    let y1 = hi.log10().ceil().max(y0 + 1.0);
    let x1 = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| nines(p.0)))
        .fold(1.0f64, f64::max)
        .ceil();
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let px = |p: f64| LEFT + nines(p).min(x1) / x1 * pw;
    let py = |us: f64| TOP + ph - (us.max(lo).log10() - y0) / (y1 - y0) * ph;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15">{}</text>"#,
        W / 2.0,
        escape(title)
    );
    // Horizontal grid: every decade labelled, 2 and 5 faint.
    let mut decade = y0;
    while decade <= y1 {
        for (m, major) in [(1.0, true), (2.0, false), (5.0, false)] {
            let us = 10f64.powf(decade) * m;
            if us.log10() > y1 + 1e-9 {
                continue;
            }
            let y = py(us);
            let stroke = if major { "#bbb" } else { "#eee" };
            let _ = writeln!(
                s,
                r#"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{stroke}"/>"#,
                LEFT + pw
            );
            if major {
                let _ = writeln!(
                    s,
                    r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                    LEFT - 6.0,
                    y + 4.0,
                    time_label(us)
                );
            }
        }
        decade += 1.0;
    }
    // Vertical grid: 0%, 90%, 99%, ...
    for n in 0..=(x1 as u32) {
        let p = 1.0 - 10f64.powi(-(n as i32));
        let x = px(p);
        let label = match n {
            0 => "0%".to_string(),
            _ => format!("{:.*}%", n.saturating_sub(2) as usize, p * 100.0),
        };
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#bbb"/>"##,
            TOP + ph
        );
        let _ = writeln!(
            s,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"#,
            TOP + ph + 18.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text>"#,
        LEFT + pw / 2.0,
        H - 12.0
    );
    let _ = writeln!(
        s,
        r#"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">round trip</text>"#,
        TOP + ph / 2.0,
        TOP + ph / 2.0
    );
    let _ = writeln!(
        s,
        r#"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#
    );
    for (i, ser) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<String> = ser
            .points
            .iter()
            .filter(|p| p.1.is_finite())
            .map(|&(p, us)| format!("{:.1},{:.1}", px(p), py(us)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline class="series" data-label="{}" fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            escape(&ser.label),
            pts.join(" ")
        );
        // Legend, top left inside the frame.
        let ly = TOP + 16.0 + 18.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            LEFT + 10.0,
            LEFT + 34.0,
            LEFT + 40.0,
            ly + 4.0,
            escape(&ser.label)
        );
    }
    s.push_str("</svg>\n");
    s
}
