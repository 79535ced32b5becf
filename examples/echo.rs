//! `cargo run --release --example echo -- --addr 127.0.0.1:7000`
//!
//! An echo server for any number of connections. It logs every connect and disconnect with
//! its cause (`RUST_LOG=debug` for more, `RUST_LOG=warn` for none of that), and it
//! propagates backpressure: when a client stops reading, its queue crosses the high
//! watermark and the server stops reading *from that client* until the queue drains, so a
//! client that sends without reading cannot grow the server's memory.
//!
//! Options:
//!
//! * `--addr HOST:PORT`: where to listen (default 127.0.0.1:7000).
//! * `--framing raw|ld[:MAX]`: `raw` (the default) echoes any byte stream as it arrives;
//!   `ld` cuts it into length-delimited frames (`Framing::length_delimited(MAX)`: a 4-byte
//!   big-endian length, a kind byte 0 = data, 1 = ping, 2 = pong, then the payload; MAX
//!   defaults to 1 MiB, a longer frame ends the connection as a protocol error). The
//!   reactor answers pings with pongs itself; every data frame is echoed as a data frame.
//! * `--protocol echo|sockperf`: `echo` (the default) sends back what arrives; `sockperf`
//!   answers sockperf's TCP messages as `sockperf server` does (`examples/common/sockperf.rs`:
//!   14-byte header, the reply is the request with its client flag cleared, warm-up and
//!   no-pong messages get none), so `sockperf ping-pong --tcp` measures heartloop; it
//!   replaces `--framing`.
//! * `--heartbeat DUR`: declare a peer lost after 3 × DUR of silence. With `ld` framing
//!   the reactor also pings a quiet peer every DUR; with `raw` the echo has no ping of its
//!   own, so this only detects silent peers.
//! * `--max-queued SIZE`: each connection's outbound hard limit (default 4 MiB); a client
//!   whose echo would queue more is cut as a slow peer. The watermarks that pause and
//!   resume reading become at most a quarter and a sixteenth of it (by default 256 KiB
//!   and 64 KiB), and the read budget per turn at most an eighth (256 KiB): the reactor
//!   reads no more from a client between the crossing of the high watermark and the
//!   hand-over of its `WriteBlocked` (the pause takes effect then), so at most the read
//!   pass whose echo crossed it lands above the watermark, and from 256 KiB up a client
//!   that reads slowly is paused, not cut. (The limits count each queued echo's
//!   bookkeeping too: `QUEUE_ENTRY_COST`.)
//! * `--max-total-queued SIZE`: the reactor-wide cap on queued bytes (default 1 GiB); over
//!   it the connections holding the most are cut as slow peers.
//! * `--sndbuf SIZE`: each connection's `SO_SNDBUF` (default: the kernel's autotuning,
//!   which on Linux lets a peer that does not read park up to `net.ipv4.tcp_wmem`'s
//!   maximum, 4 MiB, in the kernel before the echo's own queue and its limits come in).
//! * `--always-zero-copy`: echo every payload as the very `Bytes` it arrived in, even when
//!   it has to wait in a queue (see "Memory" below; for showing why the default copies).
//! * `--stats DUR` (or `--stats-secs N`): every DUR print one line of counters to stderr
//!   (never by default). It is printed with `eprintln!`, whatever `RUST_LOG` says, as
//!   `stats: open N accepted N read N B written N B queued N B (peak N) turns N longest
//!   turn N us disconnects N (...) sends refused N`; `longest turn` is the longest turn's
//!   work so far (`Stats::longest_turn_us`).
//! * `--turn-cpu`: also measure the CPU time of every `poll` call (four syscalls per turn,
//!   Linux) and add to the stats line what the `poll` call of the longest turn used,
//!   `longest turn's poll (cpu N us, preempted N times, events N: accepted N, data N,
//!   half-closed N, disconnected N)`, then `most cpu in one poll N us (not preempted N us)`
//!   and how many `poll` calls used at least 1, 5 and 10 ms of CPU (`polls using 1/5/10 ms
//!   of cpu A/B/C`). A `poll` call's CPU time bounds its turn's work from above (it also
//!   holds the flush before sleeping, and, on a virtual machine that does not account
//!   steal time, time the hypervisor gave the CPU to another machine). A long turn with
//!   little CPU was spent waiting for a CPU, not working; its events say what it worked on.
//!
//! Memory: a payload of 16 KiB or more arrives as a slice of the reactor's shared 64 KiB
//! read chunk, and a chunk stays allocated while any slice of it lives (a shorter payload
//! is a copy of its own: see `Event::Data`). Echoing that slice is free when it leaves at
//! once, but a slice that waits in the queue of a peer that does not read keeps its whole
//! chunk alive, up to 4× what the queue limits count. So a payload that has to wait
//! behind bytes already queued is copied (one allocation of its own size); the first one
//! into an empty queue, which nearly always leaves at once, goes as it is. A connection
//! then holds at most one chunk beyond its queued bytes. (Before the reactor copied short
//! payloads itself, ten peers sending 6-byte frames without reading made 365 KB of queued
//! echoes hold 38 MiB after 8 s with `--always-zero-copy`: `tests/hostile_soak.rs`.)
//!
//! DUR is a duration such as `250ms`, `1.5s` or `1m30s`; SIZE is bytes with an optional
//! unit, `64k`, `64KB` or `4MiB` (powers of 1024); `--help` lists the options. The line
//! `echo listening on ADDR` (the bound address, useful with port 0) is printed to stderr
//! with `eprintln!` too, so `RUST_LOG=warn` keeps it and the stats lines and drops the
//! per-connection lines.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use heartloop::{
    ConnConfig, Event, Framing, Heartbeat, OutboundConfig, OverflowPolicy, Reactor, ReactorConfig,
    SendError,
};

#[path = "common/logger.rs"]
mod logger;
#[path = "common/opts.rs"]
mod opts;
#[path = "common/sockperf.rs"]
mod sockperf;

const HELP: &str = "\
echo: an echo server with backpressure (examples/echo.rs has the details)

usage: echo [OPTIONS]

options:
  --addr HOST:PORT          where to listen (default 127.0.0.1:7000; port 0 picks one)
  --framing raw|ld[:MAX]    raw bytes (default), or length-delimited frames of at most
                            MAX bytes (default 1MiB) with the built-in ping/pong
  --protocol echo|sockperf  echo what arrives (default), or answer sockperf's TCP
                            ping-pong messages as `sockperf server` does
  --heartbeat DUR           declare a peer lost after 3 x DUR of silence (ld: ping a quiet
                            peer every DUR); default: no heartbeat
  --max-queued SIZE         each connection's outbound hard limit (default 4MiB)
  --max-total-queued SIZE   the cap on queued bytes over all connections (default 1GiB)
  --sndbuf SIZE             each connection's SO_SNDBUF (default: the kernel's autotuning)
  --always-zero-copy        echo every payload as the Bytes it arrived in, even when it waits
  --stats DUR               print a line of counters to stderr every DUR (default: never)
  --stats-secs N            the same as --stats Ns
  --turn-cpu                add the CPU time of the longest turn's poll to the stats line
  -h, --help                print this help

DUR is a duration such as 250ms, 1.5s or 1m30s; SIZE is bytes with an optional unit,
such as 4096, 64k, 64KB or 4MiB (powers of 1024). RUST_LOG sets the log level (default
info: one line per connect and disconnect; warn: none).
";

struct Opts {
    addr: SocketAddr,
    framing: Framing,
    sockperf: bool,
    heartbeat: Option<Duration>,
    stats: Option<Duration>,
    max_queued: Option<usize>,
    max_total: Option<usize>,
    sndbuf: Option<usize>,
    always_zero_copy: bool,
    turn_cpu: bool,
}

fn parse_args() -> Result<Opts, lexopt::Error> {
    use lexopt::prelude::*;
    let mut o = Opts {
        addr: SocketAddr::from(([127, 0, 0, 1], 7000)),
        framing: Framing::Raw,
        sockperf: false,
        heartbeat: None,
        stats: None,
        max_queued: None,
        max_total: None,
        sndbuf: None,
        always_zero_copy: false,
        turn_cpu: false,
    };
    let mut p = lexopt::Parser::from_env();
    while let Some(arg) = p.next()? {
        match arg {
            Long("addr") => o.addr = p.value()?.parse()?,
            Long("framing") => o.framing = p.value()?.parse_with(parse_framing)?,
            Long("protocol") => {
                o.sockperf = p.value()?.parse_with(|v| match v {
                    "echo" => Ok(false),
                    "sockperf" => Ok(true),
                    _ => Err("echo or sockperf"),
                })?
            }
            Long("heartbeat") => o.heartbeat = Some(p.value()?.parse_with(opts::parse_duration)?),
            Long("max-queued") => {
                o.max_queued = Some(p.value()?.parse_with(opts::parse_size_usize)?)
            }
            Long("max-total-queued") => {
                o.max_total = Some(p.value()?.parse_with(opts::parse_size_usize)?)
            }
            Long("sndbuf") => o.sndbuf = Some(p.value()?.parse_with(opts::parse_size_usize)?),
            Long("always-zero-copy") => o.always_zero_copy = true,
            Long("stats") => o.stats = Some(p.value()?.parse_with(opts::parse_duration)?),
            // Kept for tests/hostile_soak.rs.
            Long("stats-secs") => o.stats = Some(Duration::from_secs(p.value()?.parse()?)),
            Long("turn-cpu") => o.turn_cpu = true,
            Short('h') | Long("help") => opts::exit_help(HELP),
            _ => return Err(arg.unexpected()),
        }
    }
    // Zero means never, as the default.
    o.heartbeat = o.heartbeat.filter(|d| !d.is_zero());
    o.stats = o.stats.filter(|d| !d.is_zero());
    Ok(o)
}

fn main() -> std::io::Result<()> {
    let Opts {
        addr,
        framing,
        sockperf: sockperf_protocol,
        heartbeat,
        stats,
        max_queued,
        max_total,
        sndbuf,
        always_zero_copy,
        turn_cpu,
    } = parse_args().unwrap_or_else(|e| opts::exit_usage("echo", e));
    logger::init("info");

    // Half-close mode: a client that sends, shuts down its writing side and then reads
    // (`nc -N`, `curl --data-binary`) gets all of its echo before we close.
    let mut cfg = ConnConfig::default().half_close(true).framing(framing);
    if sockperf_protocol {
        cfg = cfg.framing(sockperf::framing());
    }
    if let Some(hb) = heartbeat {
        cfg = cfg.heartbeat(Heartbeat::new(hb, hb * 3));
    }
    if let Some(limit) = max_queued {
        let defaults = OutboundConfig::default();
        let high = defaults.high_watermark.min(limit / 4).max(1);
        let low = defaults.low_watermark.min(limit / 16).min(high);
        cfg = cfg
            .outbound(
                OutboundConfig::watermarks(low, high).hard_limit(limit, OverflowPolicy::Disconnect),
            )
            .read_budget(cfg.read_budget.min(limit / 8));
    }
    if let Some(n) = sndbuf {
        cfg = cfg.send_buffer(n);
    }
    let mut rcfg = ReactorConfig::default();
    if let Some(cap) = max_total {
        rcfg = rcfg.total_queued_limit(cap, OverflowPolicy::Disconnect);
    }
    let mut reactor = Reactor::new(rcfg)?;
    let listener = reactor.listen(addr, cfg)?;
    // Printed whatever `RUST_LOG` says: scripts and tests read the address from it.
    eprintln!("echo listening on {}", reactor.local_addr(listener)?);
    if let Some(every) = stats {
        reactor.set_timer(every, 0);
    }

    let mut events = Vec::with_capacity(1024);
    let mut worst = WorstTurn::default();
    loop {
        let before = turn_cpu.then(|| (thread_usage(), reactor.stats().longest_turn_us));
        reactor.poll(&mut events, None)?;
        if let Some(((cpu0, preempted0), longest0)) = before {
            let (cpu1, preempted1) = thread_usage();
            let (cpu, preempted) = (
                cpu1.saturating_sub(cpu0),
                preempted1.saturating_sub(preempted0),
            );
            worst.poll(cpu, preempted);
            if reactor.stats().longest_turn_us > longest0 {
                worst.record(cpu, preempted, &events);
            }
        }
        for ev in events.drain(..) {
            match ev {
                Event::Accepted { conn, peer, .. } => log::info!("{conn} connected from {peer}"),
                // Echo the bytes back: the same `Bytes`, no copy, unless they would wait
                // in the queue (see "Memory" above).
                Event::Data { conn, bytes } => {
                    // sockperf: answer as `sockperf server` does, or not at all.
                    let bytes = match sockperf_protocol {
                        false => bytes,
                        true => match sockperf::reply(&bytes) {
                            Some(reply) => reply,
                            None => continue,
                        },
                    };
                    let waits = reactor.queued(conn).is_some_and(|q| q > 0);
                    let bytes = if waits && !always_zero_copy {
                        Bytes::copy_from_slice(&bytes)
                    } else {
                        bytes
                    };
                    match reactor.send(conn, bytes) {
                        Ok(()) => {}
                        // It was cut earlier in this batch of events (slow peer, reset): its
                        // `Disconnected` says why.
                        Err(SendError::Stale | SendError::Closing) => {}
                        Err(e) => log::warn!("{conn}: {e}"),
                    }
                }
                // The client does not keep up: stop reading from it until it drains.
                Event::WriteBlocked { conn, queued } => {
                    log::debug!("{conn}: {queued} bytes queued, pausing reads");
                    let _ = reactor.pause_reading(conn);
                }
                Event::Writable { conn } => {
                    log::debug!("{conn}: drained, resuming reads");
                    let _ = reactor.resume_reading(conn);
                }
                // Everything the client sent was echoed (queued); flush it and close.
                Event::PeerHalfClosed { conn } => {
                    let _ = reactor.close(conn);
                }
                Event::Disconnected { conn, cause } => log::info!("{conn} disconnected: {cause}"),
                Event::Timer { .. } => {
                    let cpu = if turn_cpu {
                        worst.describe()
                    } else {
                        String::new()
                    };
                    eprintln!("stats: {}{cpu}", reactor.stats());
                    if let Some(every) = stats {
                        reactor.set_timer(every, 0);
                    }
                }
                _ => {}
            }
        }
    }
}

/// What the `poll` call of the longest turn so far cost, and how much CPU `poll` calls
/// used (`--turn-cpu`).
#[derive(Default)]
struct WorstTurn {
    cpu_us: u64,
    preempted: u64,
    events: usize,
    accepted: usize,
    data: usize,
    half_closed: usize,
    disconnected: usize,
    /// The most CPU any one `poll` call used, and any one the kernel did not preempt.
    most_cpu_us: u64,
    most_cpu_unpreempted_us: u64,
    /// `poll` calls that used at least 1, 5, 10 ms of CPU.
    over: [u64; 3],
}

impl WorstTurn {
    fn poll(&mut self, cpu_us: u64, preempted: u64) {
        self.most_cpu_us = self.most_cpu_us.max(cpu_us);
        if preempted == 0 {
            self.most_cpu_unpreempted_us = self.most_cpu_unpreempted_us.max(cpu_us);
        }
        for (n, ms) in self.over.iter_mut().zip([1_000, 5_000, 10_000]) {
            *n += u64::from(cpu_us >= ms);
        }
    }

    fn record(&mut self, cpu_us: u64, preempted: u64, events: &[Event]) {
        let count = |f: fn(&Event) -> bool| events.iter().filter(|e| f(e)).count();
        self.cpu_us = cpu_us;
        self.preempted = preempted;
        self.events = events.len();
        self.accepted = count(|e| matches!(e, Event::Accepted { .. }));
        self.data = count(|e| matches!(e, Event::Data { .. }));
        self.half_closed = count(|e| matches!(e, Event::PeerHalfClosed { .. }));
        self.disconnected = count(|e| matches!(e, Event::Disconnected { .. }));
    }

    fn describe(&self) -> String {
        format!(
            " longest turn's poll (cpu {} us, preempted {} times, events {}: accepted {}, \
             data {}, half-closed {}, disconnected {}) most cpu in one poll {} us \
             (not preempted {} us) polls using 1/5/10 ms of cpu {}/{}/{}",
            self.cpu_us,
            self.preempted,
            self.events,
            self.accepted,
            self.data,
            self.half_closed,
            self.disconnected,
            self.most_cpu_us,
            self.most_cpu_unpreempted_us,
            self.over[0],
            self.over[1],
            self.over[2],
        )
    }
}

/// CPU time this thread used (µs, `CLOCK_THREAD_CPUTIME_ID`: exact, where `getrusage`'s
/// times advance by scheduler ticks) and how often the kernel preempted it (involuntary
/// context switches, `getrusage(RUSAGE_THREAD)`).
#[cfg(target_os = "linux")]
fn thread_usage() -> (u64, u64) {
    // SAFETY: both calls only write into the zeroed structs we own.
    let (ts, ru) = unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut ru);
        (ts, ru)
    };
    let us = ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000;
    (us, ru.ru_nivcsw as u64)
}

#[cfg(not(target_os = "linux"))]
fn thread_usage() -> (u64, u64) {
    (0, 0)
}

/// `raw`, `ld` or `ld:MAX` (MAX a size: `ld:64k`).
fn parse_framing(s: &str) -> Result<Framing, String> {
    match s.split_once(':') {
        None if s == "raw" => Ok(Framing::Raw),
        None if s == "ld" => Ok(Framing::length_delimited(1 << 20)),
        Some(("ld", max)) => Ok(Framing::length_delimited(opts::parse_size_usize(max)?)),
        _ => Err(format!("'{s}' is not a framing (raw, ld or ld:MAX)")),
    }
}
