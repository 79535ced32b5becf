//! `cargo run --release --example soakclient -- ADDR N [--interval 1s] [--timeout 3s]
//! [--inflight 64] [--welcome]`
//!
//! One client process of the soak test (`tests/soak.rs`): it opens `N` connections to `ADDR`
//! with one heartloop reactor, length-delimited framing and heartbeats, so pings and pongs
//! flow both ways, and then keeps them open and idle. It never reconnects: a connection that
//! ends is counted by cause. The soak spreads its clients over several such processes
//! because a process may hold at most 20,000 open files.
//!
//! At most `--inflight` connects are in progress at once, so the server's listen backlog is
//! not flooded. A connect is complete when TCP says so, or with `--welcome` only once the
//! server's first frame arrived: the server accepted it (a TCP handshake completes in the
//! kernel before the server accepts, so without it the backlog can still overflow and SYNs
//! are dropped, costing 1 s retransmissions). Output on stdout, one line each:
//! * `READY <n> <ms>` once all `n` connections are established (`ms` since start);
//! * `STATUS open=.. connected=.. hb_timeouts=.. other=.. connect_failed=.. pings=..` in
//!   answer to a `status` line on stdin;
//! * `FAILED <cause>` for the first few connects that failed.
//!
//! It exits when its stdin reaches end-of-file, so a test that dies (even by SIGKILL) takes
//! its clients with it: their stdin is a pipe from the test process.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use heartloop::{Cause, ConnConfig, ConnId, Event, Framing, Heartbeat, Reactor, ReactorConfig};

#[path = "common/opts.rs"]
mod opts;

const HELP: &str = "\
soakclient: one client process of the soak test: N idle connections with heartbeats

usage: soakclient ADDR N [OPTIONS]

options:
  --interval DUR   heartbeat interval (default 1s)
  --timeout DUR    heartbeat timeout (default 3s)
  --answer-only    server-led heartbeats: never ping, answer the server's pings, declare it
                   lost after --timeout without a byte (Heartbeat::answer_only)
  --inflight N     connects in progress at once (default 64)
  --welcome        count a connect complete only once the server's first frame arrived
  -h, --help       print this help

Lines on stdout: READY <n> <ms>, STATUS ... (for a `status` line on stdin), FAILED <cause>.
Exits when stdin ends.
";

struct Opts {
    addr: SocketAddr,
    total: usize,
    interval: Duration,
    timeout: Duration,
    answer_only: bool,
    inflight: usize,
    welcome: bool,
}

fn parse_args() -> Result<Opts, lexopt::Error> {
    use lexopt::prelude::*;
    let mut interval = Duration::from_secs(1);
    let mut timeout = Duration::from_secs(3);
    let mut inflight = 64usize;
    let mut welcome = false;
    let mut answer_only = false;
    let mut positional = Vec::new();
    let mut p = lexopt::Parser::from_env();
    while let Some(arg) = p.next()? {
        match arg {
            Long("interval") => interval = p.value()?.parse_with(opts::parse_duration)?,
            Long("timeout") => timeout = p.value()?.parse_with(opts::parse_duration)?,
            Long("inflight") => inflight = p.value()?.parse()?,
            Long("welcome") => welcome = true,
            Long("answer-only") => answer_only = true,
            Short('h') | Long("help") => opts::exit_help(HELP),
            Value(v) if positional.len() < 2 => positional.push(v.string()?),
            _ => return Err(arg.unexpected()),
        }
    }
    let [addr, total] = <[String; 2]>::try_from(positional)
        .map_err(|_| "needs ADDR and N, e.g. `soakclient 127.0.0.1:7000 1000`")?;
    Ok(Opts {
        addr: addr.parse().map_err(|e| format!("ADDR '{addr}': {e}"))?,
        total: total.parse().map_err(|e| format!("N '{total}': {e}"))?,
        interval,
        timeout,
        answer_only,
        inflight: inflight.max(1),
        welcome,
    })
}

fn main() -> std::io::Result<()> {
    let Opts {
        addr,
        total,
        interval,
        timeout,
        answer_only,
        inflight,
        welcome,
    } = parse_args().unwrap_or_else(|e| opts::exit_usage("soakclient", e));

    let start = Instant::now();
    let mut reactor = Reactor::new(ReactorConfig::default())?;
    let cfg = ConnConfig::default()
        .framing(Framing::length_delimited(64 * 1024))
        .heartbeat(if answer_only {
            Heartbeat::answer_only(timeout)
        } else {
            Heartbeat::new(interval, timeout)
        });

    // Stdin is our lifeline: watch a duplicate of it (a `File` we own, so no unsafe) for
    // commands and for end-of-file. When stdin cannot be polled (a regular file or
    // /dev/null), run without it.
    let mut stdin = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map(File::from)?;
    let stdin_fd = stdin.as_raw_fd();
    let watching = reactor
        .register_source(&mut mio::unix::SourceFd(&stdin_fd), mio::Interest::READABLE)
        .is_ok();

    let mut started = 0usize; // connects issued
    let mut connecting = 0usize; // connects in progress
    // Their ids, and whether TCP is connected (waiting for the welcome).
    let mut pending: HashMap<ConnId, bool> = HashMap::new();
    let mut open = 0usize;
    let mut connected = 0usize;
    let mut hb_timeouts = 0usize;
    let mut connect_failed = 0usize;
    let mut other: BTreeMap<String, usize> = BTreeMap::new();
    let mut ready = false;
    let mut events = Vec::with_capacity(1024);
    let mut line = Vec::new();
    loop {
        // Keep at most `inflight` connects in progress.
        while started < total && connecting < inflight {
            match reactor.connect(addr, cfg) {
                Ok(conn) => {
                    pending.insert(conn, false);
                    started += 1;
                    connecting += 1;
                }
                Err(e) => {
                    // Reported at once by the OS (no route, no ports, no fds): count it as
                    // a failed connect and go on, the test sees it in `STATUS`.
                    started += 1;
                    connect_failed += 1;
                    report_failure(connect_failed, &e.to_string());
                }
            }
        }
        if !ready && connected + connect_failed == total {
            ready = true;
            say(&format!(
                "READY {connected} {}",
                start.elapsed().as_millis()
            ));
        }

        reactor.poll(&mut events, None)?;
        for ev in events.drain(..) {
            match ev {
                Event::Connected { conn } => {
                    open += 1;
                    if welcome {
                        pending.insert(conn, true);
                    } else {
                        established(&mut pending, conn, &mut connecting, &mut connected);
                    }
                }
                // With `--welcome`, the server's first frame says it accepted us.
                Event::Data { conn, .. } => {
                    established(&mut pending, conn, &mut connecting, &mut connected);
                }
                Event::Disconnected { conn, cause } => {
                    if let Some(was_open) = pending.remove(&conn) {
                        // It never got established (or, with `--welcome`, never welcomed).
                        connecting -= 1;
                        connect_failed += 1;
                        open -= usize::from(was_open);
                        report_failure(connect_failed, &cause.to_string());
                        continue;
                    }
                    open -= 1;
                    match cause {
                        Cause::HeartbeatTimeout { .. } => hb_timeouts += 1,
                        c => *other.entry(variant(&c)).or_default() += 1,
                    }
                }
                Event::Source { .. } => {
                    // One read per readiness edge; a pipe hands over everything waiting
                    // (commands are a few bytes).
                    let mut buf = [0u8; 4096];
                    let n = match stdin.read(&mut buf) {
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(_) => 0,
                    };
                    if n == 0 {
                        return Ok(()); // the parent is gone: so are we
                    }
                    line.extend_from_slice(&buf[..n]);
                    while let Some(i) = line.iter().position(|&b| b == b'\n') {
                        let cmd: Vec<u8> = line.drain(..=i).collect();
                        if cmd.trim_ascii() == b"status" {
                            let others: Vec<String> =
                                other.iter().map(|(k, v)| format!("{k}:{v}")).collect();
                            say(&format!(
                                "STATUS open={open} connected={connected} hb_timeouts={hb_timeouts} \
                                 other={} connect_failed={connect_failed} pings={} causes=[{}]",
                                other.values().sum::<usize>(),
                                reactor.stats().pings,
                                others.join(",")
                            ));
                        }
                    }
                }
                _ => {}
            }
        }
        if !watching && ready && open == 0 {
            return Ok(()); // run by hand without a stdin to watch: stop when all are gone
        }
    }
}

/// A connect in progress completed: it leaves the in-flight set.
fn established(
    pending: &mut HashMap<ConnId, bool>,
    conn: ConnId,
    connecting: &mut usize,
    connected: &mut usize,
) {
    if pending.remove(&conn).is_some() {
        *connecting -= 1;
        *connected += 1;
    }
}

/// The variant name of a cause (`HeartbeatTimeout`, `Reset`, ...).
fn variant(c: &Cause) -> String {
    let dbg = format!("{c:?}");
    dbg.split(|ch: char| !ch.is_alphanumeric())
        .next()
        .unwrap_or("")
        .to_string()
}

fn report_failure(count: usize, what: &str) {
    if count <= 5 {
        say(&format!("FAILED {what}"));
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
