//! `cargo bench -p heartloop-benches --bench throughput` (`-- --smoke` for a quick run,
//! `-- --rounds N --measure DUR`; `-- --help` lists the options)
//!
//! Throughput on loopback, side by side:
//! * pipelined echo (10 connections × 16 messages of 64 B in flight; 1 connection × 4
//!   messages of 64 KiB in flight): heartloop, hand-written mio, thread-per-connection std
//!   and tokio current_thread, as in the latency bench;
//! * fan-out: one publisher connection whose stream of 64 B messages the server forwards
//!   to 1,000 subscriber connections; heartloop against tokio current_thread with a
//!   `broadcast` channel and a task per subscriber. The publisher stays within two batches
//!   of 128 messages of the slowest subscriber, so no queue grows and nothing lags.
//!
//! Besides messages per second (bounded by whichever side is slower, the server or the
//! one client thread), each row gives the server's CPU time per message, taken from the
//! threads' schedstat: the cost of the server alone. Runs are interleaved in rotated order;
//! figures are medians over the rounds, ratios the medians of per-round ratios. Writes
//! `target/bench-throughput.md` and `target/bench-throughput.csv`.

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
use std::sync::atomic::Ordering;

use client::{EchoSpec, FanoutSpec, run_echo, run_fanout};
use report::{Samples, md_table, num, ratio, target_line};
use servers::Kind;

struct Pipeline {
    name: &'static str,
    conns: usize,
    size: usize,
    inflight: usize,
}

const PIPELINES: [Pipeline; 2] = [
    Pipeline {
        name: "10 conns × 16 in flight × 64 B",
        conns: 10,
        size: 64,
        inflight: 16,
    },
    Pipeline {
        name: "1 conn × 4 in flight × 64 KiB",
        conns: 1,
        size: 64 * 1024,
        inflight: 4,
    },
];

const FANOUT: &str = "fan-out 64 B to 1,000 conns";
const FANOUT_SUBS: usize = 1000;
const FANOUT_MSG: usize = 64;
const FANOUT_KINDS: [Kind; 3] = [Kind::Heartloop, Kind::Tokio, Kind::TokioPerMessage];

fn main() {
    let opts = report::opts(
        "throughput",
        "throughput: pipelined echo against four servers, fan-out against tokio broadcast",
    );
    let machine = report::machine();
    // The client (this thread) on CPU 0, every server thread on CPU 1.
    let pinned = opts.pin && pin::pin_thread(0);
    if opts.pin && !pinned {
        eprintln!("could not pin the client thread: running unpinned");
    }
    let server_cpu = pinned.then_some(1);
    eprintln!(
        "throughput: {} rounds, {:.2} s measured per run{}",
        opts.rounds,
        opts.measure.as_secs_f64(),
        if opts.smoke { " (smoke run)" } else { "" }
    );
    let echo: Vec<(Kind, std::net::SocketAddr)> = Kind::ALL
        .iter()
        .map(|&k| (k, servers::start_echo(k, server_cpu)))
        .collect();
    let fan: Vec<(Kind, servers::FanoutAddrs)> = FANOUT_KINDS
        .iter()
        .map(|&k| (k, servers::start_fanout(k, FANOUT_MSG, server_cpu)))
        .collect();
    let mut s = Samples::default();
    for round in 0..opts.rounds {
        for p in PIPELINES.iter().filter(|p| opts.wants(p.name)) {
            for (kind, addr) in report::rotated(&echo, round) {
                let spec = EchoSpec {
                    conns: p.conns,
                    size: p.size,
                    inflight: p.inflight,
                    warmup: opts.warmup,
                    measure: opts.measure,
                };
                let r = run_echo(addr, spec, &format!("{} / {}", p.name, kind.name()));
                s.push(p.name, kind.key(), "msgs/s", r.rate());
                s.push(p.name, kind.key(), "MB/s", r.mb_per_s());
                s.push(p.name, kind.key(), "cpu", r.cpu_per_msg());
                s.push(p.name, kind.key(), "p99", r.pct_us(0.99));
                eprintln!(
                    "round {}/{}  {:<32} {:<21} {:>10.0} msg/s {:>8.1} MB/s  server {:>7.0} ns/msg",
                    round + 1,
                    opts.rounds,
                    p.name,
                    kind.name(),
                    r.rate(),
                    r.mb_per_s(),
                    r.cpu_per_msg()
                );
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            for m in ["msgs/s", "cpu"] {
                let mio = s.at(p.name, "mio", m, round);
                let tokio = s.at(p.name, "tokio", m, round);
                for (kind, _) in &echo {
                    let v = s.at(p.name, kind.key(), m, round);
                    s.push(p.name, kind.key(), &format!("{m} x mio"), v / mio);
                    s.push(p.name, kind.key(), &format!("{m} x tokio"), v / tokio);
                }
            }
        }
        for (kind, addrs) in report::rotated(&fan, round)
            .into_iter()
            .filter(|_| opts.wants(FANOUT))
        {
            let spec = FanoutSpec {
                subs: FANOUT_SUBS,
                msg: FANOUT_MSG,
                batch: 128,
                window_batches: 2,
                warmup: opts.warmup,
                measure: opts.measure,
            };
            let r = run_fanout(
                addrs.publisher,
                addrs.subscribers,
                spec,
                &format!("{FANOUT} / {}", kind.name()),
            );
            s.push(FANOUT, kind.key(), "msgs/s", r.rate());
            s.push(FANOUT, kind.key(), "cpu", r.cpu_per_msg());
            eprintln!(
                "round {}/{}  {:<32} {:<21} {:>10.0} msg/s delivered  server {:>7.0} ns/msg",
                round + 1,
                opts.rounds,
                FANOUT,
                kind.name(),
                r.rate(),
                r.cpu_per_msg()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        for m in ["msgs/s", "cpu"].into_iter().filter(|_| opts.wants(FANOUT)) {
            let tokio = s.at(FANOUT, "tokio", m, round);
            for kind in FANOUT_KINDS {
                let v = s.at(FANOUT, kind.key(), m, round);
                s.push(FANOUT, kind.key(), &format!("{m} x tokio"), v / tokio);
            }
        }
    }
    let lagged = servers::TOKIO_LAGGED.load(Ordering::Relaxed);
    assert_eq!(
        lagged, 0,
        "tokio broadcast lagged by {lagged} messages: the window is too large"
    );

    let mut md = opts.md_header(
        "Throughput (loopback)",
        &machine,
        "figures are medians over the rounds, ratios are per-round ratios' medians. MB/s counts the echoed payload once (10^6 B). Server CPU is the server thread's (threads') CPU time per message; the CPU ratio is inverted (× tokio > 1 means heartloop spends less).",
    );
    let mut csv = String::from(
        "scenario,server,round,msgs_per_s,mb_per_s,server_cpu_ns_per_msg,p99_us,rate_x_mio,rate_x_tokio\n",
    );
    let mut targets = Vec::new();
    for p in PIPELINES.iter().filter(|p| opts.wants(p.name)) {
        let _ = writeln!(md, "## Pipelined echo: {}\n", p.name);
        let rows: Vec<Vec<String>> = echo
            .iter()
            .map(|(k, _)| {
                let m = |x: &str| s.med(p.name, k.key(), x);
                vec![
                    k.name().to_string(),
                    num(m("msgs/s")),
                    num(m("MB/s")),
                    ratio(m("msgs/s x mio")),
                    ratio(m("msgs/s x tokio")),
                    num(m("cpu")),
                    ratio(1.0 / m("cpu x mio")),
                    ratio(1.0 / m("cpu x tokio")),
                    num(m("p99")),
                ]
            })
            .collect();
        let _ = writeln!(
            md,
            "{}",
            md_table(
                &[
                    "server",
                    "msgs/s",
                    "MB/s",
                    "rate × mio",
                    "rate × tokio",
                    "server CPU ns/msg",
                    "CPU eff. × mio",
                    "CPU eff. × tokio",
                    "p99 round trip µs",
                ],
                &rows
            )
        );
        for (k, _) in &echo {
            let ms = [
                "msgs/s",
                "MB/s",
                "cpu",
                "p99",
                "msgs/s x mio",
                "msgs/s x tokio",
            ];
            for round in 0..opts.rounds {
                let v: Vec<String> = ms
                    .iter()
                    .map(|m| format!("{:.4}", s.at(p.name, k.key(), m, round)))
                    .collect();
                let _ = writeln!(csv, "{},{},{},{}", p.name, k.key(), round + 1, v.join(","));
            }
            let v: Vec<String> = ms
                .iter()
                .map(|m| format!("{:.4}", s.med(p.name, k.key(), m)))
                .collect();
            let _ = writeln!(csv, "{},{},median,{}", p.name, k.key(), v.join(","));
        }
        targets.push(target_line(
            &format!("{}: heartloop msgs/s vs mio", p.name),
            s.med(p.name, "heartloop", "msgs/s x mio"),
            1.0,
            false,
        ));
        targets.push(target_line(
            &format!("{}: heartloop msgs/s vs tokio", p.name),
            s.med(p.name, "heartloop", "msgs/s x tokio"),
            1.2,
            false,
        ));
    }
    let _ = writeln!(
        md,
        "## Fan-out: 64 B messages from one publisher to 1,000 connections\n"
    );
    let rows: Vec<Vec<String>> = FANOUT_KINDS
        .iter()
        .map(|k| {
            let m = |x: &str| s.med(FANOUT, k.key(), x);
            let name = match k {
                Kind::Tokio => "tokio current_thread + broadcast (batched writes)",
                Kind::TokioPerMessage => "tokio current_thread + broadcast (write per message)",
                _ => k.name(),
            };
            vec![
                name.to_string(),
                num(m("msgs/s")),
                ratio(m("msgs/s x tokio")),
                num(m("cpu")),
                ratio(1.0 / m("cpu x tokio")),
            ]
        })
        .collect();
    let _ = writeln!(
        md,
        "{}",
        md_table(
            &[
                "server",
                "msgs/s delivered",
                "rate × tokio",
                "server CPU ns/msg",
                "CPU eff. × tokio"
            ],
            &rows
        )
    );
    for k in FANOUT_KINDS {
        for round in 0..opts.rounds {
            let _ = writeln!(
                csv,
                "{FANOUT},{},{},{:.4},,{:.4},,,{:.4}",
                k.key(),
                round + 1,
                s.at(FANOUT, k.key(), "msgs/s", round),
                s.at(FANOUT, k.key(), "cpu", round),
                s.at(FANOUT, k.key(), "msgs/s x tokio", round)
            );
        }
        let _ = writeln!(
            csv,
            "{FANOUT},{},median,{:.4},,{:.4},,,{:.4}",
            k.key(),
            s.med(FANOUT, k.key(), "msgs/s"),
            s.med(FANOUT, k.key(), "cpu"),
            s.med(FANOUT, k.key(), "msgs/s x tokio")
        );
    }
    targets.push(target_line(
        "fan-out: heartloop msgs/s vs tokio + broadcast (batched writes)",
        s.med(FANOUT, "heartloop", "msgs/s x tokio"),
        1.5,
        false,
    ));
    let per_msg = s.med(FANOUT, "heartloop", "msgs/s x tokio")
        / s.med(FANOUT, "tokio-per-msg", "msgs/s x tokio");
    targets.push(target_line(
        "fan-out: heartloop msgs/s vs tokio + broadcast (write per message)",
        per_msg,
        1.5,
        false,
    ));
    let _ = writeln!(md, "## Targets\n");
    for (line, _) in &targets {
        let _ = writeln!(md, "{line}");
    }
    let path = report::write_reports("bench-throughput", &md, &csv);
    println!("{md}");
    eprintln!("wrote {} and .csv", path.display());
}
