//! Options, per-round samples, medians, and the markdown/CSV reports of the benches.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

/// How long and how often to run.
#[derive(Debug, Clone)]
pub struct Opts {
    /// Quick run (CI): few short rounds, figures only roughly meaningful.
    pub smoke: bool,
    /// Interleaved rounds.
    pub rounds: usize,
    /// Warm-up of each run (not measured).
    pub warmup: Duration,
    /// Measured time of each run.
    pub measure: Duration,
    /// Pin the client thread to CPU 0 and the server threads to CPU 1.
    pub pin: bool,
    /// Run only the scenarios whose name contains this.
    pub only: Option<String>,
}

impl Opts {
    /// The opening of a markdown report: title, machine, load, and how the figures were
    /// taken (`method`: what the figures and ratios mean for this bench).
    pub fn md_header(&self, title: &str, machine: &str, method: &str) -> String {
        use std::fmt::Write as _;
        let mut md = String::new();
        let _ = writeln!(md, "# {title}\n");
        let _ = writeln!(md, "{machine}- load average at end: {}", loadavg());
        let _ = writeln!(
            md,
            "- {} interleaved rounds, {:.2} s measured per run after {:.2} s warm-up{}; {method}\n",
            self.rounds,
            self.measure.as_secs_f64(),
            self.warmup.as_secs_f64(),
            if self.smoke {
                " (SMOKE RUN: too short to be meaningful)"
            } else {
                ""
            }
        );
        md
    }

    /// Whether to run the scenario called `name`.
    pub fn wants(&self, name: &str) -> bool {
        self.only.as_deref().is_none_or(|o| name.contains(o))
    }
}

/// Parse the command line. `cargo bench` passes `--bench`; without it (`cargo test
/// --benches`, `cargo test --all-targets`) the bench runs as a smoke test.
/// `--smoke` or `HEARTLOOP_BENCH_SMOKE=1` force the smoke run; `--rounds N` and
/// `--measure DUR` (measured time per run) override the defaults. `about` opens the
/// `--help` text; a bad option ends the process with status 2.
pub fn opts(name: &str, about: &str) -> Opts {
    parse_opts(about).unwrap_or_else(|e| super::opts::exit_usage(name, e))
}

fn parse_opts(about: &str) -> Result<Opts, lexopt::Error> {
    use lexopt::prelude::*;
    let mut bench = false;
    let mut smoke = std::env::var("HEARTLOOP_BENCH_SMOKE").is_ok_and(|v| v == "1");
    let mut rounds = None;
    let mut measure = None;
    let mut pin = false;
    let mut only = None;
    let mut p = lexopt::Parser::from_env();
    while let Some(arg) = p.next()? {
        match arg {
            // `cargo bench` passes it.
            Long("bench") => bench = true,
            Long("smoke") => smoke = true,
            Long("pin") => pin = true,
            Long("only") => only = Some(p.value()?.string()?),
            // `cargo bench -- TEXT`, as libtest's filter.
            Value(v) if only.is_none() => only = Some(v.string()?),
            Long("rounds") => rounds = Some(p.value()?.parse::<usize>()?),
            Long("measure") => measure = Some(p.value()?.parse_with(super::opts::parse_duration)?),
            Short('h') | Long("help") => super::opts::exit_help(&format!(
                "{about}

options:
  --smoke          a quick run (also HEARTLOOP_BENCH_SMOKE=1, and without --bench)
  --rounds N       interleaved rounds (default 15; smoke 2)
  --measure DUR    measured time per run, e.g. 500ms (default 300ms; smoke 200ms)
  --only TEXT      only the scenarios whose name contains TEXT (or TEXT alone)
  --pin            pin the client thread to CPU 0 and the server threads to CPU 1:
                   steadier on an otherwise idle machine, much worse when other work
                   shares CPU 1
  --bench          what `cargo bench` passes: a full run unless --smoke
  -h, --help       print this help
"
            )),
            _ => return Err(arg.unexpected()),
        }
    }
    let smoke = smoke || !bench;
    let pin = pin && std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2);
    // Many short rounds: the machine's state (other load, where the scheduler puts the
    // threads) changes every few seconds and moves round trips by 2x; short interleaved
    // runs put every server through the same states, and per-round ratios cancel them.
    let (r, s, w) = if smoke {
        (2, 0.2, 0.05)
    } else {
        (15, 0.3, 0.1)
    };
    Ok(Opts {
        smoke,
        rounds: rounds.unwrap_or(r).max(1),
        warmup: Duration::from_secs_f64(w),
        measure: measure.unwrap_or(Duration::from_secs_f64(s)),
        pin,
        only,
    })
}

/// The order of the servers in round `round`: rotated, so no server always runs first or
/// right after the same one.
pub fn rotated<T: Copy>(items: &[T], round: usize) -> Vec<T> {
    let k = round % items.len();
    items[k..].iter().chain(&items[..k]).copied().collect()
}

/// Median (mean of the two middle values for an even count); NaN for none.
pub fn median(v: &[f64]) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Per-round samples keyed by (scenario, server, metric).
#[derive(Debug, Default)]
pub struct Samples {
    map: BTreeMap<(String, String, String), Vec<f64>>,
}

impl Samples {
    /// Record one round's value.
    pub fn push(&mut self, scen: &str, server: &str, metric: &str, v: f64) {
        self.map
            .entry((scen.into(), server.into(), metric.into()))
            .or_default()
            .push(v);
    }
    /// All rounds' values.
    pub fn all(&self, scen: &str, server: &str, metric: &str) -> &[f64] {
        self.map
            .get(&(scen.to_string(), server.to_string(), metric.to_string()))
            .map_or(&[], |v| v.as_slice())
    }
    /// Median over the rounds.
    pub fn med(&self, scen: &str, server: &str, metric: &str) -> f64 {
        median(self.all(scen, server, metric))
    }
    /// Value of one round.
    pub fn at(&self, scen: &str, server: &str, metric: &str, round: usize) -> f64 {
        self.all(scen, server, metric)
            .get(round)
            .copied()
            .unwrap_or(f64::NAN)
    }
}

/// A markdown table.
pub fn md_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "| {} |", header.join(" | "));
    let _ = writeln!(
        s,
        "|{}|",
        header
            .iter()
            .enumerate()
            .map(|(i, _)| if i == 0 { "---" } else { "---:" })
            .collect::<Vec<_>>()
            .join("|")
    );
    for r in rows {
        let _ = writeln!(s, "| {} |", r.join(" | "));
    }
    s
}

/// A number with a sensible number of digits.
pub fn num(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else if v >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A ratio, `1.03×`.
pub fn ratio(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else {
        format!("{v:.2}×")
    }
}

/// The machine and the moment, as markdown lines.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let date = utc_now();
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "- date: {date}\n- nproc: {nproc}\n- CPU: {cpu}\n- kernel: {}\n- load average at start: {}\n",
        kernel.trim(),
        loadavg()
    )
}

/// The time now as `YYYY-MM-DD HH:MM UTC` (what `date -u` would say, without running it).
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// The proleptic Gregorian date `days` days after 1970-01-01, as (year, month, day).
/// Counts in 400-year eras of 146,097 days from 0000-03-01, so leap days end a year.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468; // days since 0000-03-01
    let era = z / 146_097;
    let doe = z % 146_097; // day of the era, 0..=146_096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // year of the era
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of the year from March 1
    let mp = (5 * doy + 2) / 153; // month from March, 0..=11
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// `/proc/loadavg`'s first three fields.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The cargo target directory (`target/`), from the bench binary's path
/// (`target/<profile>/deps/<bench>`).
pub fn target_dir() -> PathBuf {
    if let Ok(d) = std::env::var("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors().nth(3).expect("target dir").to_path_buf()
}

/// Write `target/<name>.md` and `target/<name>.csv`; returns the markdown path.
pub fn write_reports(name: &str, md: &str, csv: &str) -> PathBuf {
    let dir = target_dir();
    let md_path = dir.join(format!("{name}.md"));
    std::fs::write(&md_path, md).unwrap_or_else(|e| panic!("write {}: {e}", md_path.display()));
    let csv_path = dir.join(format!("{name}.csv"));
    std::fs::write(&csv_path, csv).unwrap_or_else(|e| panic!("write {}: {e}", csv_path.display()));
    md_path
}

/// A target line: `what: value (limit) met|MISSED`.
pub fn target_line(what: &str, value: f64, limit: f64, at_most: bool) -> (String, bool) {
    let met = if at_most {
        value <= limit
    } else {
        value >= limit
    };
    let cmp = if at_most { "≤" } else { "≥" };
    (
        format!(
            "- {what}: {} (target {cmp} {limit:.2}×) — {}",
            ratio(value),
            if met { "met" } else { "**MISSED**" }
        ),
        met,
    )
}
