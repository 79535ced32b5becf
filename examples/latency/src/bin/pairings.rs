//! `cargo build --release --example echo && cargo run --release -p heartloop-latency --bin pairings`
//!
//! sockperf and heartloop measured against each other, on one machine in one run: the
//! four pairings of client and server (sockperf → sockperf, sockperf → heartloop echo,
//! heartloop → sockperf, heartloop → heartloop echo), TCP over loopback, the same message
//! size, one message in flight (sockperf's `ping-pong` at its default, unlimited rate, and
//! `latency --mode closed`), and the round trip (sockperf with `--full-rtt`).
//!
//! Every round runs the four pairings in an order rotated per round; the table gives the
//! median over the rounds of each client's own p50 and p99 (sockperf's printed
//! percentiles, ours from its histogram), and each client's CPU per round trip: its
//! user + system time (`getrusage(RUSAGE_CHILDREN)` around its run, the same for both)
//! over all the round trips it made, warm-up included. Both clients exclude their first
//! 400 ms (sockperf's fixed warm-up). The comparison plot merges every round: sockperf's
//! from its `--full-log` (every round trip), ours from its interval log.
//!
//! Options: `--rounds N` (3), `--secs S` (3, per client run), `--size BYTES` (64),
//! `--out DIR` (`target/pairings`: the table as `pairings.md`, the plot as
//! `pairings.svg`, each pairing's merged `.hgrm`, each run's files), `--echo PATH` and `--latency PATH` (default: the
//! binaries next to this one, `examples/echo` and `latency`), `--sockperf PATH`.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use heartloop_latency::{cpu, hgrm, hlog, sockperf_report, svg};

#[derive(Clone, Copy, PartialEq)]
enum Side {
    Sockperf,
    Heartloop,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Sockperf => "sockperf",
            Side::Heartloop => "heartloop",
        }
    }
}

const PAIRINGS: [(Side, Side); 4] = [
    (Side::Sockperf, Side::Sockperf),
    (Side::Sockperf, Side::Heartloop),
    (Side::Heartloop, Side::Sockperf),
    (Side::Heartloop, Side::Heartloop),
];

/// One client run's figures.
struct Run {
    p50: f64,
    p99: f64,
    cpu_per_rt_us: f64,
}

struct Opts {
    rounds: usize,
    secs: f64,
    size: usize,
    out: PathBuf,
    echo: PathBuf,
    latency: PathBuf,
    sockperf: String,
}

fn main() {
    let o = parse().unwrap_or_else(|e| {
        eprintln!("pairings: {e}");
        std::process::exit(2)
    });
    if let Err(e) = run(&o) {
        eprintln!("pairings: {e}");
        std::process::exit(1);
    }
}

fn parse() -> Result<Opts, String> {
    use lexopt::prelude::*;
    let here = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = here.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut o = Opts {
        rounds: 3,
        secs: 3.0,
        size: 64,
        out: dir.join("..").join("pairings"),
        echo: dir.join("examples").join("echo"),
        latency: dir.join("latency"),
        sockperf: "sockperf".into(),
    };
    let mut p = lexopt::Parser::from_env();
    let e = |e: lexopt::Error| e.to_string();
    while let Some(arg) = p.next().map_err(e)? {
        let name = match arg {
            Long(n) => n.to_string(),
            _ => return Err(arg.unexpected().to_string()),
        };
        let v = p.value().map_err(e)?.to_string_lossy().into_owned();
        let bad = || format!("--{name}: bad value '{v}'");
        match name.as_str() {
            "rounds" => o.rounds = v.parse().map_err(|_| bad())?,
            "secs" => o.secs = v.parse().map_err(|_| bad())?,
            "size" => o.size = v.parse().map_err(|_| bad())?,
            "out" => o.out = v.into(),
            "echo" => o.echo = v.into(),
            "latency" => o.latency = v.into(),
            "sockperf" => o.sockperf = v,
            _ => return Err(format!("unknown option --{name}")),
        }
    }
    if o.secs < 1.0 {
        return Err("--secs: at least 1 (sockperf warms up for 400 ms)".into());
    }
    Ok(o)
}

/// A server child, killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

fn wait_listening(addr: SocketAddr) -> Result<(), String> {
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        if TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("nothing listens on {addr} after 5 s"))
}

fn run(o: &Opts) -> Result<(), String> {
    std::fs::create_dir_all(&o.out).map_err(|e| format!("{}: {e}", o.out.display()))?;
    let sp_addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let sp_port = sp_addr.port().to_string();
    let _sp = Server(
        Command::new(&o.sockperf)
            .args(["server", "--tcp", "-i", "127.0.0.1", "-p", &sp_port])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{}: {e} (apt-get install sockperf)", o.sockperf))?,
    );
    let hl_addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let _hl = Server(
        Command::new(&o.echo)
            .args(["--protocol", "sockperf", "--addr", &hl_addr.to_string()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!(
                    "{}: {e} (cargo build --release --example echo)",
                    o.echo.display()
                )
            })?,
    );
    wait_listening(sp_addr)?;
    wait_listening(hl_addr)?;

    let mut runs: Vec<Vec<Run>> = (0..4).map(|_| Vec::new()).collect();
    let mut merged: Vec<Histogram<u64>> = (0..4)
        .map(|_| Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("bounds"))
        .collect();
    for round in 0..o.rounds {
        for i in 0..4 {
            let idx = (i + round) % 4;
            let (client, server) = PAIRINGS[idx];
            let addr = if server == Side::Sockperf {
                sp_addr
            } else {
                hl_addr
            };
            let tag = format!("{}-to-{}-r{round}", client.name(), server.name());
            let r = match client {
                Side::Sockperf => sockperf_client(o, addr, &tag, &mut merged[idx])?,
                Side::Heartloop => heartloop_client(o, addr, &tag, &mut merged[idx])?,
            };
            eprintln!(
                "round {round}: {:>9} -> {:<9} p50 {:7.1} µs  p99 {:7.1} µs  client CPU {:5.2} µs/rt",
                client.name(),
                server.name(),
                r.p50,
                r.p99,
                r.cpu_per_rt_us
            );
            runs[idx].push(r);
        }
    }

    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut md = String::from(
        "| client → server | p50 µs | p99 µs | client CPU µs per round trip |\n|---|---:|---:|---:|\n",
    );
    let mut series = Vec::new();
    for (idx, (client, server)) in PAIRINGS.iter().enumerate() {
        let col = |f: fn(&Run) -> f64| median(&mut runs[idx].iter().map(f).collect());
        md += &format!(
            "| {} → {} | {:.1} | {:.1} | {:.2} |\n",
            client.name(),
            server.name(),
            col(|r| r.p50),
            col(|r| r.p99),
            col(|r| r.cpu_per_rt_us)
        );
        // Every round merged, kept as a .hgrm too (`latency plot` redraws from them).
        let text = hgrm::write(&merged[idx]);
        let file = o
            .out
            .join(format!("{}-to-{}.hgrm", client.name(), server.name()));
        std::fs::write(&file, &text).map_err(|e| format!("{}: {e}", file.display()))?;
        let d = hgrm::parse(&text)?;
        series.push(svg::Series::from_distribution(
            &format!("{} → {}", client.name(), server.name()),
            &d,
        ));
    }
    md += &format!(
        "\n{} rounds × {} s per client run, {} B messages, TCP over loopback, 1 in flight; \
         medians over the rounds.\n",
        o.rounds, o.secs, o.size
    );
    let title = format!(
        "round trip, {} B over TCP loopback, one in flight (client → server)",
        o.size
    );
    let md_path = o.out.join("pairings.md");
    let svg_path = o.out.join("pairings.svg");
    std::fs::write(&md_path, &md).map_err(|e| e.to_string())?;
    std::fs::write(&svg_path, svg::spectrum(&title, &series)).map_err(|e| e.to_string())?;
    println!("{md}");
    println!("wrote {} and {}", md_path.display(), svg_path.display());
    Ok(())
}

/// Run `cmd` to its end; its output (stdout and stderr) and the CPU time it used.
fn run_child(mut cmd: Command) -> Result<(String, Duration), String> {
    let before = cpu::children();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    let used = cpu::children().saturating_sub(before);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!("{cmd:?} failed ({}):\n{text}", out.status));
    }
    Ok((text, used))
}

fn sockperf_client(
    o: &Opts,
    addr: SocketAddr,
    tag: &str,
    merged: &mut Histogram<u64>,
) -> Result<Run, String> {
    let log = o.out.join(format!("{tag}.csv"));
    let mut cmd = Command::new(&o.sockperf);
    cmd.args(["ping-pong", "--tcp", "--full-rtt", "-i", "127.0.0.1"])
        .args(["-p", &addr.port().to_string()])
        .args(["-m", &o.size.to_string()])
        .args(["-t", &format!("{}", o.secs.round() as u64)])
        .arg("--full-log")
        .arg(&log);
    let (text, cpu) = run_child(cmd)?;
    let r =
        sockperf_report::parse(&text).ok_or_else(|| format!("no report from sockperf:\n{text}"))?;
    if !r.clean() {
        return Err(format!("sockperf counted errors: {r:?}"));
    }
    // Its full log: "packet, txTime(sec), rxTime(sec), rtt(usec)" for every round trip
    // of the valid period.
    let f = std::fs::File::open(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    for line in BufReader::new(f).lines().map_while(Result::ok) {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if let [_, _, _, rtt] = fields[..]
            && let Ok(us) = rtt.parse::<f64>()
        {
            merged.saturating_record((us * 1e3) as u64);
        }
    }
    let _ = std::fs::remove_file(&log); // megabytes, and in the histogram now
    Ok(Run {
        p50: r.at(50.0).ok_or("no p50 from sockperf")?,
        p99: r.at(99.0).ok_or("no p99 from sockperf")?,
        cpu_per_rt_us: cpu.as_secs_f64() * 1e6 / r.total_sent.max(1) as f64,
    })
}

fn heartloop_client(
    o: &Opts,
    addr: SocketAddr,
    tag: &str,
    merged: &mut Histogram<u64>,
) -> Result<Run, String> {
    let prefix = o.out.join(tag);
    let mut cmd = Command::new(&o.latency);
    cmd.args([
        "--protocol",
        "sockperf",
        "--mode",
        "closed",
        "--warmup",
        "400ms",
    ])
    .args(["--addr", &addr.to_string()])
    .args(["--size", &o.size.to_string()])
    .args([
        "--duration",
        &format!("{}ms", (o.secs * 1000.0) as u64 - 400),
    ])
    .arg("--save")
    .arg(&prefix);
    let (text, cpu) = run_child(cmd)?;
    let field = |key: &str| -> Result<f64, String> {
        text.lines()
            .find_map(|l| l.strip_prefix("summary: "))
            .and_then(|s| {
                s.split_whitespace()
                    .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            })
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("no {key} in the latency client's output:\n{text}"))
    };
    let hlog_path = prefix.with_extension("hlog");
    let hlog = std::fs::read(&hlog_path).map_err(|e| format!("{}: {e}", hlog_path.display()))?;
    for (_, h) in hlog::read(&hlog).map_err(|e| format!("{}: {e}", hlog_path.display()))? {
        merged.add(&h).map_err(|e| format!("{e:?}"))?;
    }
    Ok(Run {
        p50: field("uncorrected_p50_us")?,
        p99: field("uncorrected_p99_us")?,
        cpu_per_rt_us: cpu.as_secs_f64() * 1e6 / field("round_trips")?.max(1.0),
    })
}
