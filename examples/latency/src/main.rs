//! `cargo run --release -p heartloop-latency -- --addr 127.0.0.1:7000 --rate 10000 --duration 10s`
//!
//! A latency client for an echo server (`cargo run --release --example echo`) or for
//! sockperf's (`sockperf server --tcp`, or `echo --protocol sockperf`), built on heartloop.
//!
//! Open loop (the default): `--rate` messages per second over all connections, each with an
//! intended send time; every round trip is reported *corrected* (from the intended time:
//! stalls count for every message they held up, as wrk2 reports them) and *uncorrected*
//! (from the actual send, what a closed-loop client sees). `--mode closed` keeps
//! `--inflight` messages in flight per connection instead (throughput-style runs). The
//! warm-up is excluded. Every answer is checked byte for byte; exit 1 on a wrong byte, a
//! lost connection or answers still missing `--drain` after the last message was due,
//! 2 on bad options.
//!
//! Prints the percentiles and the client's own CPU per round trip, and with `--save PREFIX`
//! writes `PREFIX.hgrm` (the percentile distribution in HdrHistogram's text form: corrected
//! in open loop), `PREFIX.uncorrected.hgrm` (open loop), `PREFIX.hlog` (HdrHistogram
//! interval log, one interval a second, tagged `corrected`/`uncorrected` in open loop) and
//! `PREFIX.svg` (percentile spectrum). `latency plot --out FILE.svg LABEL=FILE.hgrm ...`
//! draws several distributions side by side.

use std::net::SocketAddr;
use std::process::exit;
use std::time::Duration;

use hdrhistogram::Histogram;
use heartloop_latency::client::{self, Config, Mode, Protocol};
use heartloop_latency::{hgrm, svg};

#[path = "../../common/opts.rs"]
mod opts;

const USAGE: &str = "\
usage: latency [--addr HOST:PORT] [--protocol echo|sockperf] [--mode open|closed]
               [--rate MSGS_PER_SEC] [--conns N] [--inflight N] [--size BYTES]
               [--warmup DURATION] [--duration DURATION] [--drain DURATION]
               [--save PREFIX] [--label TEXT]
       latency plot --out FILE.svg [--title TEXT] LABEL=FILE.hgrm...

defaults: --addr 127.0.0.1:7000 --protocol echo --mode open --rate 1000 --conns 1
          --inflight 1 --size 64 --warmup 1s --duration 5s --drain 5s
--size counts sockperf's 14-byte header (as sockperf's -m does).";

fn main() {
    let mut args = std::env::args_os().skip(1).peekable();
    if args.peek().is_some_and(|a| a == "plot") {
        args.next();
        if let Err(e) = plot(args) {
            eprintln!("latency plot: {e}\n{USAGE}");
            exit(2);
        }
        return;
    }
    let (cfg, save, label) = match parse(args) {
        Ok(Some(o)) => o,
        Ok(None) => {
            println!("{USAGE}");
            return;
        }
        Err(e) => {
            eprintln!("latency: {e}\n{USAGE}");
            exit(2);
        }
    };
    let label = label.unwrap_or_else(|| format!("{} ({:?})", cfg.addr, cfg.protocol));
    let out = match client::run(&cfg, |line| eprintln!("latency: {line}")) {
        Ok(out) => out,
        Err(e) => {
            eprintln!("latency: {e}");
            exit(1);
        }
    };
    report(&cfg, &out);
    if let Some(prefix) = save
        && let Err(e) = write_files(&prefix, &label, &out)
    {
        eprintln!("latency: writing {prefix}.*: {e}");
        exit(1);
    }
}

type Parsed = (Config, Option<String>, Option<String>);

fn parse(args: impl Iterator<Item = std::ffi::OsString>) -> Result<Option<Parsed>, String> {
    use lexopt::prelude::*;
    let mut cfg = Config {
        addr: SocketAddr::from(([127, 0, 0, 1], 7000)),
        conns: 1,
        size: 64,
        inflight: 1,
        mode: Mode::Open { rate: 1000 },
        protocol: Protocol::Echo,
        warmup: Duration::from_secs(1),
        duration: Duration::from_secs(5),
        drain: Duration::from_secs(5),
    };
    let (mut rate, mut closed) = (1000u64, false);
    let (mut save, mut label) = (None, None);
    let mut p = lexopt::Parser::from_args(args);
    let e = |e: lexopt::Error| e.to_string();
    while let Some(arg) = p.next().map_err(e)? {
        let name = match arg {
            Long(name) => name.to_string(),
            Short('h') => return Ok(None),
            _ => return Err(arg.unexpected().to_string()),
        };
        let mut val = |name: &str| -> Result<String, String> {
            p.value()
                .map_err(e)?
                .into_string()
                .map_err(|_| format!("--{name}: not UTF-8"))
        };
        match name.as_str() {
            "addr" => {
                let v = val("addr")?;
                cfg.addr = v
                    .parse()
                    .map_err(|_| format!("--addr: '{v}' is not HOST:PORT"))?;
            }
            "protocol" => {
                cfg.protocol = match val("protocol")?.as_str() {
                    "echo" => Protocol::Echo,
                    "sockperf" => Protocol::Sockperf,
                    v => return Err(format!("--protocol: '{v}' is not echo or sockperf")),
                }
            }
            "mode" => {
                closed = match val("mode")?.as_str() {
                    "open" => false,
                    "closed" => true,
                    v => return Err(format!("--mode: '{v}' is not open or closed")),
                }
            }
            "rate" => rate = number("rate", &val("rate")?)?,
            "conns" => cfg.conns = number("conns", &val("conns")?)? as usize,
            "inflight" => cfg.inflight = number("inflight", &val("inflight")?)? as usize,
            "size" => {
                cfg.size =
                    opts::parse_size(&val("size")?).map_err(|e| format!("--size: {e}"))? as usize
            }
            "warmup" => cfg.warmup = duration("warmup", &val("warmup")?)?,
            "duration" => cfg.duration = duration("duration", &val("duration")?)?,
            "drain" => cfg.drain = duration("drain", &val("drain")?)?,
            "save" => save = Some(val("save")?),
            "label" => label = Some(val("label")?),
            "help" => return Ok(None),
            other => return Err(format!("unknown option --{other}")),
        }
    }
    cfg.mode = if closed {
        Mode::Closed
    } else {
        Mode::Open { rate }
    };
    Ok(Some((cfg, save, label)))
}

fn number(name: &str, v: &str) -> Result<u64, String> {
    v.replace('_', "")
        .parse()
        .map_err(|_| format!("--{name}: '{v}' is not a whole number"))
}

fn duration(name: &str, v: &str) -> Result<Duration, String> {
    opts::parse_duration(v).map_err(|e| format!("--{name}: {e}"))
}

/// The percentile table, the CPU line and one `summary:` line of `key=value` for scripts.
fn report(cfg: &Config, out: &client::Outcome) {
    let us = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1e3;
    let how = match cfg.mode {
        Mode::Open { rate } => format!("open loop, {rate} msg/s"),
        Mode::Closed => format!("closed loop, {} in flight per connection", cfg.inflight),
    };
    println!(
        "{} ({:?} protocol), {how} over {} connection(s), {} B messages; warm-up {:?} excluded",
        cfg.addr, cfg.protocol, cfg.conns, cfg.size, cfg.warmup
    );
    println!(
        "{:<12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "round trip", "p50 µs", "p90 µs", "p99 µs", "p99.9 µs", "p99.99 µs", "max µs", "count"
    );
    let row = |name: &str, h: &Histogram<u64>| {
        println!(
            "{name:<12} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9}",
            us(h, 0.5),
            us(h, 0.9),
            us(h, 0.99),
            us(h, 0.999),
            us(h, 0.9999),
            h.max() as f64 / 1e3,
            h.len()
        )
    };
    let mut summary = format!(
        "summary: count={} round_trips={} uncorrected_p50_us={:.1} uncorrected_p99_us={:.1} \
         uncorrected_max_us={:.1}",
        out.uncorrected.len(),
        out.round_trips,
        us(&out.uncorrected, 0.5),
        us(&out.uncorrected, 0.99),
        out.uncorrected.max() as f64 / 1e3
    );
    if let Some(c) = &out.corrected {
        row("corrected", c);
        row("uncorrected", &out.uncorrected);
        summary += &format!(
            " corrected_p50_us={:.1} corrected_p99_us={:.1} corrected_max_us={:.1}",
            us(c, 0.5),
            us(c, 0.99),
            c.max() as f64 / 1e3
        );
    } else {
        row("", &out.uncorrected);
    }
    let per = out.cpu_per_round_trip();
    let secs = out.measured_for.as_secs_f64().max(1e-9);
    println!(
        "client CPU: {:.2} µs per round trip ({:.0}% of a core over the measured {:.1} s)",
        per.as_nanos() as f64 / 1e3,
        out.measured_cpu.as_secs_f64() / secs * 100.0,
        secs
    );
    summary += &format!(" cpu_us_per_rt={:.3}", per.as_nanos() as f64 / 1e3);
    println!("{summary}");
}

fn write_files(prefix: &str, label: &str, out: &client::Outcome) -> std::io::Result<()> {
    let main = out.corrected.as_ref().unwrap_or(&out.uncorrected);
    std::fs::write(format!("{prefix}.hgrm"), hgrm::write(main))?;
    std::fs::write(format!("{prefix}.hlog"), &out.hlog)?;
    let dist = |h: &Histogram<u64>| hgrm::parse(&hgrm::write(h)).map_err(std::io::Error::other);
    let mut series = Vec::new();
    if let Some(c) = &out.corrected {
        std::fs::write(
            format!("{prefix}.uncorrected.hgrm"),
            hgrm::write(&out.uncorrected),
        )?;
        series.push(svg::Series::from_distribution(
            &format!("{label}: corrected"),
            &dist(c)?,
        ));
        series.push(svg::Series::from_distribution(
            &format!("{label}: uncorrected"),
            &dist(&out.uncorrected)?,
        ));
    } else {
        series.push(svg::Series::from_distribution(label, &dist(main)?));
    }
    std::fs::write(
        format!("{prefix}.svg"),
        svg::spectrum("round trip by percentile", &series),
    )?;
    let files = if out.corrected.is_some() {
        "hgrm, .uncorrected.hgrm, .hlog, .svg"
    } else {
        "hgrm, .hlog, .svg"
    };
    eprintln!("latency: wrote {prefix}.{files}");
    Ok(())
}

/// `latency plot --out FILE.svg [--title TEXT] LABEL=FILE.hgrm...`
fn plot(args: impl Iterator<Item = std::ffi::OsString>) -> Result<(), String> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_args(args);
    let (mut out, mut title) = (None, "round trip by percentile".to_string());
    let mut series = Vec::new();
    let e = |e: lexopt::Error| e.to_string();
    while let Some(arg) = p.next().map_err(e)? {
        match arg {
            Long("out") => out = Some(p.value().map_err(e)?),
            Long("title") => title = p.value().map_err(e)?.to_string_lossy().into_owned(),
            Value(v) => {
                let v = v.to_string_lossy().into_owned();
                let (label, file) = v
                    .split_once('=')
                    .ok_or_else(|| format!("'{v}' is not LABEL=FILE.hgrm"))?;
                let text = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
                let d = hgrm::parse(&text).map_err(|e| format!("{file}: {e}"))?;
                series.push(svg::Series::from_distribution(label, &d));
            }
            _ => return Err(arg.unexpected().to_string()),
        }
    }
    let out = out.ok_or("--out FILE.svg is required")?;
    if series.is_empty() {
        return Err("no LABEL=FILE.hgrm given".into());
    }
    std::fs::write(&out, svg::spectrum(&title, &series))
        .map_err(|e| format!("{}: {e}", out.to_string_lossy()))
}
