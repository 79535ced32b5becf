//! The files people's tools read: `.hgrm` (percentile distribution) and `.hlog` (interval
//! log) parse back with the counts the run printed, and the SVG plots hold one line per
//! series.

mod common;

use common::{run_latency, start_echo};
use heartloop_latency::{hgrm, hlog};

#[test]
fn hgrm_hlog_and_svg_parse_back_with_the_counts_of_the_run() {
    let (_echo, addr) = start_echo(&[]);
    let dir =
        std::env::temp_dir().join(format!("heartloop-latency-outputs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let prefix = dir.join("run");
    let prefix = prefix.to_str().unwrap();
    let (summary, _) = run_latency(&[
        "--addr",
        &addr.to_string(),
        "--rate",
        "2000",
        "--duration",
        "1500ms",
        "--warmup",
        "200ms",
        "--save",
        prefix,
        "--label",
        "echo",
    ]);
    let count = summary.get("count") as u64;
    assert_eq!(count, 3000, "2,000 msg/s for 1.5 s, warm-up excluded");

    for (file, tag) in [("hgrm", "corrected"), ("uncorrected.hgrm", "uncorrected")] {
        let text = std::fs::read_to_string(format!("{prefix}.{file}")).unwrap();
        assert!(text.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)\n\n"));
        let d = hgrm::parse(&text).unwrap();
        assert_eq!(d.total_count, count, "{file}: footer count");
        assert_eq!(
            d.rows.last().unwrap().total_count,
            count,
            "{file}: last row"
        );
        assert_eq!(d.rows.last().unwrap().percentile, 1.0);
        assert!(
            d.rows
                .windows(2)
                .all(|w| w[0].value <= w[1].value && w[0].percentile <= w[1].percentile)
        );
        let max = d.max * 1e3; // ms -> µs
        let printed = summary.get(&format!("{tag}_max_us"));
        assert!(
            (max - printed).abs() <= 0.1,
            "{file}: max {max} µs, printed {printed}"
        );
    }

    let log = std::fs::read(format!("{prefix}.hlog")).unwrap();
    let intervals = hlog::read(&log).unwrap();
    assert!(
        intervals.len() >= 4,
        "two tags × at least two 1 s intervals: {}",
        intervals.len()
    );
    for tag in ["corrected", "uncorrected"] {
        let n: u64 = intervals
            .iter()
            .filter(|(t, _)| t.as_deref() == Some(tag))
            .map(|(_, h)| h.len())
            .sum();
        assert_eq!(n, count, "the {tag} intervals add up to the run");
    }

    let svg = std::fs::read_to_string(format!("{prefix}.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches(r#"<polyline class="series""#).count(), 2);
    assert!(svg.contains(r#"data-label="echo: corrected""#));
    assert!(svg.contains(r#"data-label="echo: uncorrected""#));

    // Several servers side by side: `latency plot`.
    let out = dir.join("cmp.svg");
    let st = std::process::Command::new(env!("CARGO_BIN_EXE_latency"))
        .args(["plot", "--out", out.to_str().unwrap()])
        .arg(format!("a & b={prefix}.hgrm"))
        .arg(format!("c={prefix}.uncorrected.hgrm"))
        .status()
        .unwrap();
    assert!(st.success());
    let svg = std::fs::read_to_string(&out).unwrap();
    assert_eq!(svg.matches(r#"<polyline class="series""#).count(), 2);
    assert!(svg.contains(r#"data-label="a &amp; b""#) && svg.contains(r#"data-label="c""#));
    let _ = std::fs::remove_dir_all(&dir);
}
