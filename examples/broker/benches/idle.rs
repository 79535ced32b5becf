//! `cargo bench -p heartloop-broker --bench idle` (`-- --conns N --measure DUR --only NAME`)
//!
//! 19,000 idle NATS connections with 1 s server pings: what holding them costs the broker
//! example and nats-server, configured the same (`ping_interval` 1 s, the clients answer
//! every PING with a PONG and send nothing else), side by side in one run.
//!
//! * Servers, pinned to CPU 0: the heartloop broker (`--ping-interval 1s`; once more with
//!   `--quiet-coalescing 20ms` if the broker has that option), and nats-server
//!   (`ping_interval: "1s"`, `GOMAXPROCS=1`) if installed (else `SKIPPED`, loudly).
//! * Clients: this bench binary re-run as client processes (`--idle-client ADDR N`), 4,750
//!   connections each (a process may hold at most 20,000 files), one heartloop reactor each,
//!   pinned to CPU 1. Each connection sends `CONNECT`, then answers `PING` with `PONG`.
//! * Measured over the window, from `/proc/<server pid>`: CPU (user + kernel, % of one core),
//!   RSS per connection beyond the empty server, and the server's context switches per
//!   second, summed over its threads (each is a thread going to sleep and waking: the
//!   heartloop broker's loop wakeups, nats-server's goroutine scheduler and netpoller);
//!   PINGs answered per second, counted by the clients.
//!
//! Prints a markdown table; the figures are in BENCHMARKS.md ("Idle connections").

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../../common/opts.rs"]
mod opts;
#[path = "../../../benches/common/pin.rs"]
mod pin;

use bytes::Bytes;
use heartloop::{ConnConfig, Event, Framing, Reactor, ReactorConfig};

const PER_CLIENT: usize = 4_750;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--idle-client") {
        idle_client(&args[1], args[2].parse().expect("N"));
        return;
    }
    let mut conns = 19_000usize;
    let mut measure = Duration::from_secs(10);
    let mut only: Option<String> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--conns" => conns = it.next().and_then(|v| v.parse().ok()).expect("--conns N"),
            "--measure" => {
                measure = it
                    .next()
                    .map(|v| opts::parse_duration(v).expect("--measure DUR"))
                    .expect("--measure DUR")
            }
            "--only" => only = it.next().cloned(),
            "--bench" => {}
            "-h" | "--help" => {
                println!(
                    "usage: idle [--conns N] [--measure DUR] [--only heartloop|heartloop-coalesced|nats-server]"
                );
                return;
            }
            other => {
                eprintln!("idle: invalid option '{other}' (see --help)");
                std::process::exit(2);
            }
        }
    }
    if std::env::var_os("HEARTLOOP_BENCH_SMOKE").is_some() {
        conns = 200;
        measure = Duration::from_secs(2);
    }
    pin::pin_thread(1);
    let mut rows = Vec::new();
    for server in ["heartloop", "heartloop-coalesced", "nats-server"] {
        if only.as_deref().is_some_and(|o| o != server) {
            continue;
        }
        match run(server, conns, measure) {
            Some(row) => rows.push(row),
            None => println!("SKIPPED: {server} (see above)"),
        }
    }
    println!();
    println!(
        "| server ({conns} idle connections, 1 s pings) | CPU % of a core | RSS per connection | context switches/s | PINGs answered/s |"
    );
    println!("|---|---:|---:|---:|---:|");
    for r in rows {
        println!("{r}");
    }
}

struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(server: &str) -> Option<Server> {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut cmd = match server {
        "heartloop" | "heartloop-coalesced" => {
            let mut c = Command::new(env!("CARGO_BIN_EXE_broker"));
            c.args([
                "--addr",
                &addr.to_string(),
                "--ping-interval",
                "1s",
                "--threads",
                "1",
            ]);
            if server == "heartloop-coalesced" {
                let help = Command::new(env!("CARGO_BIN_EXE_broker"))
                    .arg("--help")
                    .output()
                    .ok()?;
                if !String::from_utf8_lossy(&help.stdout).contains("--quiet-coalescing") {
                    println!("SKIPPED: the broker has no --quiet-coalescing option");
                    return None;
                }
                c.args(["--quiet-coalescing", "20ms"]);
            }
            c
        }
        _ => {
            let Some(bin) = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
                .into_iter()
                .find(|p| std::path::Path::new(p).exists())
            else {
                println!("SKIPPED: nats-server is not installed (apt-get install nats-server)");
                return None;
            };
            let conf = std::env::temp_dir().join(format!("idle-bench-{port}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "listen: 127.0.0.1:{port}\nping_interval: \"1s\"\nping_max: 3\nmax_connections: 100000\n"
                ),
            )
            .ok()?;
            let mut c = Command::new(bin);
            c.arg("-c").arg(&conf).env("GOMAXPROCS", "1");
            c
        }
    };
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let child = pin::spawn_pinned(&mut cmd, 0).ok()?;
    let server = Server { child, addr };
    let end = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        if Instant::now() > end {
            println!("SKIPPED: the server did not listen on {addr}");
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(server)
}

/// (user + kernel ticks, resident KiB, context switches summed over threads) of `pid`.
fn proc_figures(pid: u32) -> (u64, u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<u64> = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|v| v.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let ticks = f.iter().sum();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = field(&status, "VmRSS:");
    let mut switches = 0;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let s = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            switches +=
                field(&s, "voluntary_ctxt_switches:") + field(&s, "nonvoluntary_ctxt_switches:");
        }
    }
    (ticks, rss, switches)
}

fn field(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn run(name: &str, conns: usize, measure: Duration) -> Option<String> {
    let server = start(name)?;
    let pid = server.child.id();
    std::thread::sleep(Duration::from_millis(300));
    let (_, rss_empty, _) = proc_figures(pid);
    let exe = std::env::current_exe().unwrap();
    let mut clients = Vec::new();
    let mut left = conns;
    while left > 0 {
        let n = left.min(PER_CLIENT);
        left -= n;
        let mut cmd = Command::new(&exe);
        cmd.args(["--idle-client", &server.addr.to_string(), &n.to_string()])
            .stdout(Stdio::piped())
            .stdin(Stdio::piped());
        let mut child = pin::spawn_pinned(&mut cmd, 1).expect("client");
        let out = BufReader::new(child.stdout.take().unwrap());
        clients.push((child, out.lines()));
    }
    // Every client reports READY once all its connections got their first PING answered.
    for (_, lines) in clients.iter_mut() {
        match lines.next() {
            Some(Ok(l)) if l.starts_with("READY") => {}
            other => {
                println!("SKIPPED: {name}: a client failed: {other:?}");
                return None;
            }
        }
    }
    // Settle one ping period, then measure.
    std::thread::sleep(Duration::from_millis(1500));
    let pongs =
        |clients: &mut Vec<(Child, std::io::Lines<BufReader<std::process::ChildStdout>>)>| -> u64 {
            let mut total = 0;
            for (child, lines) in clients.iter_mut() {
                let stdin = child.stdin.as_mut().unwrap();
                writeln!(stdin, "status").unwrap();
                let line = lines.next().and_then(Result::ok).unwrap_or_default();
                total += field(&line.replace(' ', "\n"), "pongs=");
            }
            total
        };
    let (t0, c0, p0) = (Instant::now(), proc_figures(pid), pongs(&mut clients));
    std::thread::sleep(measure);
    let (t1, c1, p1) = (Instant::now(), proc_figures(pid), pongs(&mut clients));
    let (open, total) = clients.iter_mut().fold((0, 0), |(o, t), (child, lines)| {
        let stdin = child.stdin.as_mut().unwrap();
        writeln!(stdin, "status").unwrap();
        let line = lines.next().and_then(Result::ok).unwrap_or_default();
        let l = line.replace(' ', "\n");
        (o + field(&l, "open="), t + field(&l, "total="))
    });
    let span = (t1 - t0).as_secs_f64();
    let hz = 100.0; // USER_HZ on Linux
    let cpu = (c1.0 - c0.0) as f64 / hz / span * 100.0;
    let per_conn = (c1.1.saturating_sub(rss_empty)) as f64 * 1024.0 / conns as f64;
    let switches = (c1.2 - c0.2) as f64 / span;
    let pongs_s = (p1 - p0) as f64 / span;
    for (mut child, _) in clients {
        let _ = child.kill();
        let _ = child.wait();
    }
    let label = match name {
        "heartloop" => "heartloop broker",
        "heartloop-coalesced" => "heartloop broker, quiet coalescing 20 ms",
        _ => "nats-server 2.9, GOMAXPROCS=1",
    };
    println!(
        "{label}: {open}/{total} connections open at the end; CPU {cpu:.1}%, {per_conn:.0} B per connection, {switches:.0} context switches/s, {pongs_s:.0} PINGs answered/s"
    );
    Some(format!(
        "| {label} | {cpu:.1} | {per_conn:.0} B | {switches:.0} | {pongs_s:.0} |"
    ))
}

/// A client process: `n` NATS connections to `addr` that answer every PING with a PONG.
/// Prints `READY n` once all are connected, then answers each `status` line on stdin with
/// `STATUS open=.. total=.. pongs=..`; exits when stdin closes.
fn idle_client(addr: &str, n: usize) {
    let addr: SocketAddr = addr.parse().expect("ADDR");
    let mut r = Reactor::new(ReactorConfig::default()).expect("reactor");
    let cfg = ConnConfig::default().framing(Framing::lines(64 * 1024));
    let connect = Bytes::from_static(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n");
    let pong = Bytes::from_static(b"PONG\r\n");
    let (mut started, mut open, mut pongs) = (0usize, 0usize, 0u64);
    let mut pending = 0usize;
    let mut events = Vec::new();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
        std::process::exit(0); // stdin closed: the bench is done with us
    });
    let mut ready = false;
    loop {
        while started < n && pending < 64 {
            match r.connect(addr, cfg) {
                Ok(_) => {
                    started += 1;
                    pending += 1;
                }
                Err(e) => {
                    println!("FAILED connect: {e}");
                    return;
                }
            }
        }
        r.poll(&mut events, Some(Duration::from_millis(50)))
            .expect("poll");
        for ev in events.drain(..) {
            match ev {
                Event::Connected { conn } => {
                    pending -= 1;
                    open += 1;
                    let _ = r.send(conn, connect.clone());
                }
                Event::Data { conn, bytes } if bytes.starts_with(b"PING") => {
                    pongs += 1;
                    let _ = r.send(conn, pong.clone());
                }
                Event::Disconnected { .. } => {
                    if pending > 0 && open < started {
                        pending = pending.saturating_sub(1);
                    } else {
                        open = open.saturating_sub(1);
                    }
                }
                _ => {}
            }
        }
        if !ready && open == n {
            ready = true;
            println!("READY {n}");
            let _ = std::io::stdout().flush();
        }
        while let Ok(cmd) = rx.try_recv() {
            if cmd == "status" {
                println!("STATUS open={open} total={n} pongs={pongs}");
                let _ = std::io::stdout().flush();
            }
        }
    }
}
