//! `cargo run --release --example pingpong -- --addr 127.0.0.1:7000 --conns 50 --duration 5s`
//!
//! A latency client for any echo server (start one with
//! `cargo run --release --example echo`), built on heartloop itself: a client reactor that
//! `connect`s, Raw framing. Each connection keeps `--inflight` messages of `--size` bytes
//! in flight; every echoed byte is checked against what was sent, and the round trip of
//! every message goes into a histogram. Prints a progress line to stderr every second and,
//! at the end, p50/p90/p99/p99.9/max round trip and messages per second. Exits with 1 on
//! a mismatched byte or a lost connection, 2 on bad options.
//!
//! Options: `--addr HOST:PORT` (default 127.0.0.1:7000), `--conns N` (1), `--size SIZE`
//! (64), `--inflight N` (1), and either `--duration DUR` (default 5s) or `--count N`
//! (round trips in total, over all connections); `--help` lists them.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::process::exit;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use heartloop::{ConnConfig, ConnId, Event, Reactor, ReactorConfig};

#[path = "common/opts.rs"]
mod opts;

/// The byte streams are a repeating pattern with a prime period; each connection starts at
/// a different phase, so bytes echoed on the wrong connection are caught too.
const PERIOD: usize = 251;

/// Timer tags.
const PROGRESS: u64 = 1;
const DEADLINE: u64 = 2;

struct Opts {
    addr: SocketAddr,
    conns: usize,
    size: usize,
    inflight: usize,
    duration: Option<Duration>,
    count: Option<u64>,
}

/// One connection's stream positions.
struct Conn {
    /// Phase of its pattern.
    salt: usize,
    /// Bytes handed to `send`.
    sent: u64,
    /// Bytes echoed back and checked.
    recvd: u64,
    /// When each message in flight was sent, oldest first.
    stamps: VecDeque<Instant>,
}

fn main() {
    let o = parse_args().unwrap_or_else(|e| opts::exit_usage("pingpong", e));
    // `size + PERIOD` bytes of pattern: every message is a slice of it (no copy, no
    // allocation per message), whatever its phase.
    let pattern = Bytes::from(
        (0..o.size + PERIOD)
            .map(|i| (i % PERIOD) as u8)
            .collect::<Vec<u8>>(),
    );
    let size = o.size as u64;

    let mut reactor =
        Reactor::new(ReactorConfig::default()).unwrap_or_else(|e| fail(&format!("reactor: {e}")));
    let cfg = ConnConfig::default().connect_timeout(Some(Duration::from_secs(5)));
    let mut conns: HashMap<ConnId, Conn> = HashMap::with_capacity(o.conns);
    for i in 0..o.conns {
        let id = reactor
            .connect(o.addr, cfg)
            .unwrap_or_else(|e| fail(&format!("connect {}: {e}", o.addr)));
        conns.insert(
            id,
            Conn {
                salt: (i * 37) % PERIOD,
                sent: 0,
                recvd: 0,
                stamps: VecDeque::new(),
            },
        );
    }

    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram");
    let mut connected = 0;
    let mut started: Option<Instant> = None;
    let mut stopping = false;
    let mut msgs_sent = 0u64; // over all connections
    let mut msgs_done = 0u64;
    let mut last_report = (Instant::now(), 0u64);
    let mut closing = false;
    let mut events = Vec::with_capacity(1024);

    'outer: loop {
        if let Err(e) = reactor.poll(&mut events, Some(Duration::from_secs(1))) {
            fail(&format!("poll: {e}"));
        }
        for ev in events.drain(..) {
            match ev {
                Event::Connected { .. } => {
                    connected += 1;
                    if connected == o.conns {
                        // Everyone is connected: start the clock and the traffic.
                        let now = Instant::now();
                        started = Some(now);
                        last_report = (now, 0);
                        reactor.set_timer(Duration::from_secs(1), PROGRESS);
                        if let Some(d) = o.duration {
                            reactor.set_timer(d, DEADLINE);
                        }
                        let ids: Vec<ConnId> = conns.keys().copied().collect();
                        for id in ids {
                            for _ in 0..o.inflight {
                                if o.count.is_some_and(|n| msgs_sent >= n) {
                                    break;
                                }
                                send_one(
                                    &mut reactor,
                                    id,
                                    conns.get_mut(&id).unwrap(),
                                    &pattern,
                                    size,
                                );
                                msgs_sent += 1;
                            }
                        }
                    }
                }
                Event::Data { conn, bytes } => {
                    let now = Instant::now();
                    let c = conns.get_mut(&conn).expect("data for a connection of ours");
                    check(&bytes, c, conn, &pattern);
                    let before = c.recvd / size;
                    c.recvd += bytes.len() as u64;
                    let completed = c.recvd / size - before;
                    for _ in 0..completed {
                        let t = c
                            .stamps
                            .pop_front()
                            .expect("a stamp for every message in flight");
                        hist.saturating_record((now - t).as_nanos() as u64);
                    }
                    msgs_done += completed;
                    // Keep the window full.
                    for _ in 0..completed {
                        if stopping || o.count.is_some_and(|n| msgs_sent >= n) {
                            break;
                        }
                        send_one(&mut reactor, conn, c, &pattern, size);
                        msgs_sent += 1;
                    }
                }
                Event::Timer { tag: PROGRESS, .. } => {
                    let now = Instant::now();
                    let rate =
                        (msgs_done - last_report.1) as f64 / (now - last_report.0).as_secs_f64();
                    eprintln!(
                        "[{:>5.1} s] {msgs_done} round trips, {rate:.0}/s; so far p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs",
                        started.map_or(0.0, |s| (now - s).as_secs_f64()),
                        us(hist.value_at_quantile(0.5)),
                        us(hist.value_at_quantile(0.99)),
                        us(hist.max()),
                    );
                    last_report = (now, msgs_done);
                    reactor.set_timer(Duration::from_secs(1), PROGRESS);
                }
                Event::Timer { tag: DEADLINE, .. } if closing => {
                    eprintln!(
                        "pingpong: the server did not close {} connection(s) in time",
                        conns.len()
                    );
                    break 'outer;
                }
                Event::Timer { tag: DEADLINE, .. } => stopping = true,
                Event::Disconnected { conn, cause } => {
                    if closing {
                        conns.remove(&conn);
                        if conns.is_empty() {
                            break 'outer;
                        }
                    } else {
                        fail(&format!("{conn} lost: {cause}"));
                    }
                }
                _ => {}
            }
        }
        if closing {
            continue;
        }
        let all_sent = stopping || o.count.is_some_and(|n| msgs_sent >= n);
        if let Some(t0) = started.filter(|_| all_sent && conns.values().all(|c| c.recvd == c.sent))
        {
            // Everything echoed: report, then close gracefully.
            report(&o, &hist, msgs_done, t0.elapsed());
            closing = true;
            let ids: Vec<ConnId> = conns.keys().copied().collect();
            for id in ids {
                reactor.close(id);
            }
            reactor.set_timer(Duration::from_secs(2), DEADLINE);
        }
    }
}

/// Queue the connection's next message: the pattern slice at its stream offset.
fn send_one(reactor: &mut Reactor, id: ConnId, c: &mut Conn, pattern: &Bytes, size: u64) {
    let start = ((c.sent % PERIOD as u64) as usize + c.salt) % PERIOD;
    let msg = pattern.slice(start..start + size as usize);
    c.stamps.push_back(Instant::now());
    c.sent += size;
    if let Err(e) = reactor.send(id, msg) {
        fail(&format!("{id}: send: {e}"));
    }
}

/// Check echoed bytes against the stream (a `memcmp` per message-sized piece); exit 1 on
/// the first difference.
fn check(bytes: &[u8], c: &Conn, id: ConnId, pattern: &[u8]) {
    let size = pattern.len() - PERIOD;
    let mut done = 0;
    while done < bytes.len() {
        let off = c.recvd + done as u64;
        let n = (bytes.len() - done).min(size);
        let start = ((off % PERIOD as u64) as usize + c.salt) % PERIOD;
        let want = &pattern[start..start + n];
        let got = &bytes[done..done + n];
        if off + n as u64 > c.sent || got != want {
            let i = (0..n)
                .find(|&i| got[i] != want[i] || off + i as u64 >= c.sent)
                .unwrap_or(0);
            let off = off + i as u64;
            let expected = if off >= c.sent {
                "nothing (never sent)".to_string()
            } else {
                format!("{:#04x}", want[i])
            };
            eprintln!(
                "MISMATCH on {id} at stream offset {off}: got {:#04x}, expected {expected}",
                got[i]
            );
            exit(1);
        }
        done += n;
    }
}

fn report(o: &Opts, hist: &Histogram<u64>, msgs: u64, elapsed: Duration) {
    let secs = elapsed.as_secs_f64();
    println!(
        "{} conns × {} in flight × {} B to {}: {msgs} round trips in {secs:.2} s, {:.0} msgs/s, {:.1} MB/s echoed; all bytes verified",
        o.conns,
        o.inflight,
        o.size,
        o.addr,
        msgs as f64 / secs,
        (msgs * o.size as u64) as f64 / secs / 1e6
    );
    println!(
        "round trip µs: p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
        us(hist.value_at_quantile(0.5)),
        us(hist.value_at_quantile(0.9)),
        us(hist.value_at_quantile(0.99)),
        us(hist.value_at_quantile(0.999)),
        us(hist.max())
    );
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1e3
}

fn fail(msg: &str) -> ! {
    eprintln!("pingpong: {msg}");
    exit(1)
}

const HELP: &str = "\
pingpong: a latency client for any echo server (start one with `cargo run --release
--example echo`): checks every echoed byte, prints round-trip percentiles

usage: pingpong [OPTIONS]

options:
  --addr HOST:PORT   the echo server (default 127.0.0.1:7000)
  --conns N          connections (default 1)
  --size SIZE        bytes per message, e.g. 64 or 16k (default 64)
  --inflight N       messages in flight per connection (default 1)
  --duration DUR     how long to measure, e.g. 5s or 1m (default 5s)
  --count N          round trips in total over all connections (instead of --duration)
  -h, --help         print this help

Exits 1 on a mismatched byte or a lost connection, 2 on bad options.
";

fn parse_args() -> Result<Opts, lexopt::Error> {
    use lexopt::prelude::*;
    let mut o = Opts {
        addr: SocketAddr::from(([127, 0, 0, 1], 7000)),
        conns: 1,
        size: 64,
        inflight: 1,
        duration: None,
        count: None,
    };
    let mut p = lexopt::Parser::from_env();
    while let Some(arg) = p.next()? {
        match arg {
            Long("addr") => o.addr = p.value()?.parse()?,
            Long("conns") => o.conns = p.value()?.parse()?,
            Long("size") => o.size = p.value()?.parse_with(opts::parse_size_usize)?,
            Long("inflight") => o.inflight = p.value()?.parse()?,
            Long("duration") => o.duration = Some(p.value()?.parse_with(opts::parse_duration)?),
            Long("count") => o.count = Some(p.value()?.parse()?),
            Short('h') | Long("help") => opts::exit_help(HELP),
            _ => return Err(arg.unexpected()),
        }
    }
    if o.conns == 0 || o.size == 0 || o.inflight == 0 {
        return Err("--conns, --size and --inflight must be above zero".into());
    }
    if o.duration.is_some() && o.count.is_some() {
        return Err("give --duration or --count, not both".into());
    }
    if o.duration.is_none() && o.count.is_none() {
        o.duration = Some(Duration::from_secs(5));
    }
    Ok(o)
}
