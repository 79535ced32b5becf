//! `cargo bench -p heartloop-benches --bench latency` (`-- --smoke` for a quick run,
//! `-- --rounds N --measure DUR`; `-- --help` lists the options)
//!
//! Round-trip latency on loopback, side by side: heartloop's echo against a hand-written
//! mio echo (the floor for readiness loops), a blocking thread-per-connection std echo and
//! tokio's current_thread runtime. One message in flight per connection; scenarios:
//! 1 connection × 64 B, 50 connections × 64 B, 1 connection × 16 KiB.
//!
//! Every server runs on a thread of its own in this process; the client (the same code for
//! all four, `common/client.rs`) is one mio thread. Runs are interleaved (every round
//! runs every scenario against every server, in a rotated order) and each figure is the
//! median over the rounds; ratios are taken within a round, then their median is
//! reported. Writes `target/bench-latency.md` and `target/bench-latency.csv`.

#[path = "common/client.rs"]
mod client;
#[path = "../examples/common/opts.rs"]
mod opts;
#[path = "common/pin.rs"]
mod pin;
#[path = "common/report.rs"]
mod report;
#[path = "common/servers.rs"]
mod servers;

use std::fmt::Write as _;

use client::{EchoSpec, run_echo};
use report::{Samples, md_table, num, ratio, target_line};
use servers::Kind;

struct Scenario {
    name: &'static str,
    conns: usize,
    size: usize,
}

const SCENARIOS: [Scenario; 3] = [
    Scenario {
        name: "1 conn × 64 B",
        conns: 1,
        size: 64,
    },
    Scenario {
        name: "50 conns × 64 B",
        conns: 50,
        size: 64,
    },
    Scenario {
        name: "1 conn × 16 KiB",
        conns: 1,
        size: 16 * 1024,
    },
];

const METRICS: [&str; 7] = ["p50", "p90", "p99", "p99.9", "max", "msgs/s", "cpu"];

fn main() {
    let opts = report::opts("latency", "latency: round trips against four echo servers");
    let machine = report::machine();
    // The client (this thread) on CPU 0, every server thread on CPU 1.
    let pinned = opts.pin && pin::pin_thread(0);
    if opts.pin && !pinned {
        eprintln!("could not pin the client thread: running unpinned");
    }
    let server_cpu = pinned.then_some(1);
    eprintln!(
        "latency: {} rounds × {} scenarios × 4 servers, {:.2} s measured per run{}",
        opts.rounds,
        SCENARIOS.len(),
        opts.measure.as_secs_f64(),
        if opts.smoke { " (smoke run)" } else { "" }
    );
    let servers: Vec<(Kind, std::net::SocketAddr)> = Kind::ALL
        .iter()
        .map(|&k| (k, servers::start_echo(k, server_cpu)))
        .collect();
    let mut s = Samples::default();
    for round in 0..opts.rounds {
        for sc in SCENARIOS.iter().filter(|sc| opts.wants(sc.name)) {
            for (kind, addr) in report::rotated(&servers, round) {
                let spec = EchoSpec {
                    conns: sc.conns,
                    size: sc.size,
                    inflight: 1,
                    warmup: opts.warmup,
                    measure: opts.measure,
                };
                let what = format!("{} / {}", sc.name, kind.name());
                let r = run_echo(addr, spec, &what);
                let vals = [
                    r.pct_us(0.5),
                    r.pct_us(0.9),
                    r.pct_us(0.99),
                    r.pct_us(0.999),
                    r.hist.max() as f64 / 1e3,
                    r.rate(),
                    r.cpu_per_msg() / 1e3,
                ];
                for (m, v) in METRICS.iter().zip(vals) {
                    s.push(sc.name, kind.key(), m, v);
                }
                eprintln!(
                    "round {}/{}  {:<16} {:<21} p50 {:>7.1} µs  p99 {:>7.1} µs  {:>8.0} msg/s",
                    round + 1,
                    opts.rounds,
                    sc.name,
                    kind.name(),
                    vals[0],
                    vals[2],
                    vals[5]
                );
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            // Ratios within this round.
            for q in ["p50", "p99"] {
                let mio = s.at(sc.name, "mio", q, round);
                let tokio = s.at(sc.name, "tokio", q, round);
                for (kind, _) in &servers {
                    let v = s.at(sc.name, kind.key(), q, round);
                    s.push(sc.name, kind.key(), &format!("{q} x mio"), v / mio);
                    s.push(sc.name, kind.key(), &format!("{q} x tokio"), v / tokio);
                }
            }
        }
    }

    let mut md = opts.md_header(
        "Round-trip latency (loopback)",
        &machine,
        "figures are medians over the rounds, ratios are per-round ratios' medians. The targets compare heartloop with the better of mio and tokio: the larger of its two median ratios (a per-round minimum of two noisy figures would be biased low).",
    );
    let mut csv = String::from(
        "scenario,server,round,p50_us,p90_us,p99_us,p999_us,max_us,msgs_per_s,server_cpu_us_per_msg,p50_x_mio,p99_x_mio,p50_x_tokio,p99_x_tokio\n",
    );
    let csv_metrics = [
        "p50",
        "p90",
        "p99",
        "p99.9",
        "max",
        "msgs/s",
        "cpu",
        "p50 x mio",
        "p99 x mio",
        "p50 x tokio",
        "p99 x tokio",
    ];
    let mut targets = Vec::new();
    for sc in SCENARIOS.iter().filter(|sc| opts.wants(sc.name)) {
        let _ = writeln!(md, "## {} (1 in flight per connection)\n", sc.name);
        let rows: Vec<Vec<String>> = servers
            .iter()
            .map(|(k, _)| {
                let m = |x: &str| s.med(sc.name, k.key(), x);
                vec![
                    k.name().to_string(),
                    num(m("p50")),
                    num(m("p90")),
                    num(m("p99")),
                    num(m("p99.9")),
                    num(m("max")),
                    num(m("msgs/s")),
                    num(m("cpu")),
                    ratio(m("p50 x mio")),
                    ratio(m("p99 x mio")),
                    ratio(m("p50 x tokio")),
                    ratio(m("p99 x tokio")),
                ]
            })
            .collect();
        let _ = writeln!(
            md,
            "{}",
            md_table(
                &[
                    "server",
                    "p50 µs",
                    "p90 µs",
                    "p99 µs",
                    "p99.9 µs",
                    "max µs",
                    "msgs/s",
                    "server CPU µs/msg",
                    "p50 × mio",
                    "p99 × mio",
                    "p50 × tokio",
                    "p99 × tokio",
                ],
                &rows
            )
        );
        for (k, _) in &servers {
            for round in 0..opts.rounds {
                let vals: Vec<String> = csv_metrics
                    .iter()
                    .map(|m| format!("{:.4}", s.at(sc.name, k.key(), m, round)))
                    .collect();
                let _ = writeln!(
                    csv,
                    "{},{},{},{}",
                    sc.name,
                    k.key(),
                    round + 1,
                    vals.join(",")
                );
            }
            let vals: Vec<String> = csv_metrics
                .iter()
                .map(|m| format!("{:.4}", s.med(sc.name, k.key(), m)))
                .collect();
            let _ = writeln!(csv, "{},{},median,{}", sc.name, k.key(), vals.join(","));
        }
        targets.push(target_line(
            &format!("{}: heartloop p50 vs best(mio, tokio)", sc.name),
            s.med(sc.name, "heartloop", "p50 x mio").max(s.med(
                sc.name,
                "heartloop",
                "p50 x tokio",
            )),
            1.05,
            true,
        ));
        targets.push(target_line(
            &format!("{}: heartloop p99 vs best(mio, tokio)", sc.name),
            s.med(sc.name, "heartloop", "p99 x mio").max(s.med(
                sc.name,
                "heartloop",
                "p99 x tokio",
            )),
            1.10,
            true,
        ));
    }
    let _ = writeln!(md, "## Targets\n");
    for (line, _) in &targets {
        let _ = writeln!(md, "{line}");
    }
    let path = report::write_reports("bench-latency", &md, &csv);
    println!("{md}");
    eprintln!("wrote {} and .csv", path.display());
}
