//! `cargo run --release --example attacker -- --addr 127.0.0.1:7000 --duration 10s`
//!
//! Hostile peers for a length-delimited echo server (`echo --framing ld`), used by
//! `tests/hostile_soak.rs`. Every attack is bounded in connections and rate, and the whole
//! process stops by itself after `--duration` (or `--secs`). Frames: a 4-byte big-endian
//! length, a kind byte (0 = data, 1 = ping, 2 = pong), the payload.
//!
//! | attack | option (default) | what each connection does |
//! |---|---|---|
//! | ping flood | `--ping-flood N` (2), `--ping-rate B/s` (2m) | writes empty pings at the rate, never reads |
//! | zero-length flood | `--zero-flood N` (2), `--zero-rate B/s` (2m) | writes empty data frames at the rate, never reads |
//! | claimed length | `--claim N` (50), `--claim-len L` (1m) | a header announcing L bytes, one byte, then silence |
//! | byte at a time | `--byte-at-a-time N` (20) | one byte per ms of 16-byte data frames; reads and checks the echo |
//! | slowloris | `--slowloris N` (500) | 3 bytes of a header, then silence |
//! | connect/reset storm | `--storm-rate N/s` (500) | connect, (every other one: one data frame), `SO_LINGER` 0 close |
//! | non-readers | `--non-readers N` (10), `--non-reader-rate B/s` (512k) | 1 KiB data frames at the rate, never reads |
//! | drip non-readers | `--drip N` (10), `--drip-rate frames/s` (1000), `--drip-prefill B` (0) | B bytes of 1 KiB data frames at once (to fill the kernel's buffers), then 1-byte data frames at the rate, never reads |
//!
//! Connections that never read are given a small receive buffer (`--rcvbuf`, 4 KiB), so
//! that the server's queue for them fills soon. A long-lived connection the server cuts
//! is counted and replaced after 100 ms. `--attacks a,b,...` runs only the named attacks
//! (`ping`, `zero`, `claim`, `byte`, `slowloris`, `storm`, `nonreader`, `drip`; default
//! all). `--nice N` sets the process's nice value (19: the attacker gets a CPU only when
//! nobody else wants it, as if it ran on other machines).
//!
//! All attacks run in one thread, one pass over them every millisecond, so the attacker
//! competes for at most one core.
//!
//! Output (stdout): `READY` once every long-lived connection was opened, then at the end
//! one `ATTACK <name> key=value ...` line per attack, `CPU user_ms=N sys_ms=N` and
//! `DONE`. Exits 1 if an echo checked by the byte-at-a-time peers differs from what they
//! sent, 2 on bad options.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::exit;
use std::time::{Duration, Instant};

use socket2::SockRef;

#[path = "common/attack.rs"]
mod attack;
#[path = "common/opts.rs"]
mod opts;

use attack::{Idle, RECONNECT_AFTER, Report, TICK, connect, cpu_ms, sleep_until};

/// The names of `Report::sent` and `Report::answered` in this attacker's report lines.
const LABELS: (&str, &str) = ("frames", "echoed");

#[derive(Clone)]
struct Opts {
    addr: SocketAddr,
    duration: Duration,
    attacks: Vec<String>,
    ping_flood: usize,
    ping_rate: usize,
    zero_flood: usize,
    zero_rate: usize,
    claim: usize,
    claim_len: u32,
    byte_at_a_time: usize,
    slowloris: usize,
    storm_rate: usize,
    non_readers: usize,
    non_reader_rate: usize,
    drip: usize,
    drip_rate: usize,
    drip_prefill: usize,
    rcvbuf: usize,
    nice: i32,
    cpu: Option<usize>,
}

impl Opts {
    fn on(&self, name: &str) -> bool {
        self.attacks.is_empty() || self.attacks.iter().any(|a| a == name)
    }
}

/// What one attack did, printed as `ATTACK <name> k=v ...`.
fn header(len: u32, kind: u8) -> [u8; 5] {
    let l = len.to_be_bytes();
    [l[0], l[1], l[2], l[3], kind]
}

/// A data frame with `len` bytes of payload (a pattern).
fn data_frame(len: usize) -> Vec<u8> {
    let mut f = header(len as u32, 0).to_vec();
    f.extend((0..len).map(|i| (i % 251) as u8));
    f
}

/// A long-lived connection of a flood: its stream position and when it may reconnect.
struct Slot {
    sock: Option<TcpStream>,
    /// Bytes of the prefill written on this connection.
    pre: usize,
    /// Bytes of the periodic stream written on this connection.
    pos: usize,
    /// Bytes of the stream it may have written by now (token bucket).
    allowed: f64,
    retry_at: Option<Instant>,
}

/// Writes `prefill` once, as fast as the kernel takes it, then a periodic stream (`unit`
/// repeated) at `rate` bytes/s, on each of `n` connections, never reading. A connection
/// that fails is counted as cut and replaced after [`RECONNECT_AFTER`].
struct Flood {
    r: Report,
    addr: SocketAddr,
    rcvbuf: usize,
    prefill: Vec<u8>,
    /// Whole units, at least 16 KiB: the stream from any offset is `buf[pos % period..]`.
    buf: Vec<u8>,
    period: usize,
    per_tick: f64,
    slots: Vec<Slot>,
}

impl Flood {
    fn new(o: &Opts, name: &'static str, n: usize, unit: &[u8], rate: usize) -> Flood {
        let reps = (16 * 1024 / unit.len()).max(1);
        let mut f = Flood {
            r: Report::new(name, n, LABELS),
            addr: o.addr,
            rcvbuf: o.rcvbuf,
            prefill: Vec::new(),
            buf: unit.repeat(reps + 1),
            period: unit.len(),
            per_tick: rate as f64 * TICK.as_secs_f64(),
            slots: Vec::new(),
        };
        for _ in 0..n {
            let sock = f.open();
            f.slots.push(Slot {
                sock,
                pre: 0,
                pos: 0,
                allowed: 0.0,
                retry_at: None,
            });
        }
        f
    }

    fn open(&mut self) -> Option<TcpStream> {
        self.r.connects += 1;
        let s = connect(self.addr, Some(self.rcvbuf)).ok();
        if s.is_none() {
            self.r.connect_failed += 1;
        }
        s
    }

    fn tick(&mut self, now: Instant) {
        for i in 0..self.slots.len() {
            if self.slots[i].sock.is_none() {
                match self.slots[i].retry_at {
                    Some(t) if now >= t => {
                        let sock = self.open();
                        let s = &mut self.slots[i];
                        s.retry_at = sock.is_none().then_some(now + RECONNECT_AFTER);
                        *s = Slot {
                            sock,
                            pre: 0,
                            pos: 0,
                            allowed: 0.0,
                            retry_at: s.retry_at,
                        };
                    }
                    _ => continue,
                }
            }
            let s = &mut self.slots[i];
            let Some(sock) = s.sock.as_mut() else {
                continue;
            };
            let r = &mut self.r;
            let mut failed = false;
            // The prefill, as fast as the kernel takes it.
            while s.pre < self.prefill.len() {
                match sock.write(&self.prefill[s.pre..]) {
                    Ok(k) => {
                        s.pre += k;
                        r.bytes += k as u64;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            }
            if s.pre == self.prefill.len() && !failed {
                // Catch up at most 20 ticks after an oversleep; never run ahead.
                s.allowed = (s.allowed + self.per_tick).min(s.pos as f64 + 20.0 * self.per_tick);
                while (s.pos as f64) < s.allowed {
                    let off = s.pos % self.period;
                    let want = ((s.allowed - s.pos as f64).ceil() as usize)
                        .min(self.buf.len() - off)
                        .max(1);
                    match sock.write(&self.buf[off..off + want]) {
                        Ok(k) => {
                            s.pos += k;
                            r.bytes += k as u64;
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            // Backpressure: what it could not write is not owed later.
                            s.allowed = s.pos as f64;
                            break;
                        }
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(_) => {
                            failed = true;
                            break;
                        }
                    }
                }
            }
            if failed {
                r.cut += 1;
                r.sent += (s.pos / self.period) as u64;
                s.sock = None;
                s.retry_at = Some(now + RECONNECT_AFTER);
            }
        }
    }

    fn report(mut self) -> Report {
        self.r.sent += self
            .slots
            .iter()
            .map(|s| (s.pos / self.period) as u64)
            .sum::<u64>();
        self.r
    }
}

/// `n` connections that write 16-byte data frames one byte per tick each, and read and
/// check the echo (the echo of a data frame is the same bytes).
struct ByteAtATime {
    r: Report,
    frame: Vec<u8>,
    peers: Vec<(Option<TcpStream>, usize, usize)>,
}

impl ByteAtATime {
    fn new(o: &Opts, n: usize) -> ByteAtATime {
        let mut r = Report::new("byte-at-a-time", n, LABELS);
        let peers = (0..n)
            .map(|_| {
                r.connects += 1;
                let sock = connect(o.addr, None).ok();
                if sock.is_none() {
                    r.connect_failed += 1;
                }
                (sock, 0, 0)
            })
            .collect();
        ByteAtATime {
            r,
            frame: data_frame(16),
            peers,
        }
    }

    fn tick(&mut self) {
        let mut buf = [0u8; 4096];
        let (r, frame) = (&mut self.r, &self.frame);
        for (sock_slot, sent, got) in &mut self.peers {
            let Some(sock) = sock_slot.as_mut() else {
                continue;
            };
            let mut failed = false;
            match sock.write(&[frame[*sent % frame.len()]]) {
                Ok(1) => {
                    *sent += 1;
                    r.bytes += 1;
                    if (*sent).is_multiple_of(frame.len()) {
                        r.sent += 1;
                    }
                }
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => failed = true,
            }
            while !failed {
                match sock.read(&mut buf) {
                    Ok(0) => failed = true,
                    Ok(k) => {
                        for &x in &buf[..k] {
                            if x != frame[*got % frame.len()] {
                                r.mismatches += 1;
                            }
                            *got += 1;
                        }
                        r.answered += k as u64;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => failed = true,
                }
            }
            if failed {
                r.cut += 1;
                *sock_slot = None;
            }
        }
    }
}

/// Connect, (every other one: write one data frame), close with `SO_LINGER` 0 (a reset),
/// at `rate` per second, at most 20 per tick.
struct Storm {
    r: Report,
    addr: SocketAddr,
    rate: f64,
    frame: Vec<u8>,
    start: Instant,
}

impl Storm {
    fn new(o: &Opts) -> Storm {
        Storm {
            r: Report::new("connect/reset storm", 1, LABELS),
            addr: o.addr,
            rate: o.storm_rate as f64,
            frame: data_frame(32),
            start: Instant::now(),
        }
    }

    fn tick(&mut self) {
        let due = (self.start.elapsed().as_secs_f64() * self.rate) as u64;
        for _ in 0..due.saturating_sub(self.r.connects).min(20) {
            self.r.connects += 1;
            match connect(self.addr, None) {
                Ok(mut s) => {
                    if self.r.connects.is_multiple_of(2) && s.write(&self.frame).is_ok() {
                        self.r.bytes += self.frame.len() as u64;
                        self.r.sent += 1;
                    }
                    let _ = SockRef::from(&s).set_linger(Some(Duration::ZERO));
                    drop(s);
                }
                Err(_) => self.r.connect_failed += 1,
            }
        }
    }
}

fn main() {
    let o = parse_args().unwrap_or_else(|e| opts::exit_usage("attacker", e));
    if let Some(cpu) = o.cpu {
        let mut set = rustix::thread::CpuSet::new();
        set.set(cpu);
        if let Err(e) = rustix::thread::sched_setaffinity(None, &set) {
            eprintln!("attacker: cannot run on CPU {cpu}: {e}");
            std::process::exit(1);
        }
    }
    if o.nice != 0 {
        // SAFETY: setpriority has no memory effects; this process is one thread.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, o.nice) } != 0 {
            eprintln!(
                "attacker: setpriority {}: {}",
                o.nice,
                std::io::Error::last_os_error()
            );
        }
    }
    let mut claim = header(o.claim_len, 0).to_vec();
    claim.push(b'x');
    let slow = &header(16, 0)[..3];
    let mut floods = Vec::new();
    let mut idles = Vec::new();
    let mut byte = None;
    let mut storm = None;
    // Every long-lived connection is opened first; then all attacks run together, each
    // served once per tick by this one thread (so the attacker competes with the server
    // for one core at most).
    if o.on("ping") && o.ping_flood > 0 {
        floods.push(Flood::new(
            &o,
            "ping flood",
            o.ping_flood,
            &header(0, 1),
            o.ping_rate,
        ));
    }
    if o.on("zero") && o.zero_flood > 0 {
        let name = "zero-length flood";
        floods.push(Flood::new(
            &o,
            name,
            o.zero_flood,
            &header(0, 0),
            o.zero_rate,
        ));
    }
    if o.on("claim") && o.claim > 0 {
        let r = Report::new("claimed length", o.claim, LABELS);
        idles.push(Idle::new(o.addr, r, vec![claim.clone(); o.claim]));
    }
    if o.on("byte") && o.byte_at_a_time > 0 {
        byte = Some(ByteAtATime::new(&o, o.byte_at_a_time));
    }
    if o.on("slowloris") && o.slowloris > 0 {
        let r = Report::new("slowloris", o.slowloris, LABELS);
        idles.push(Idle::new(o.addr, r, vec![slow.to_vec(); o.slowloris]));
    }
    if o.on("nonreader") && o.non_readers > 0 {
        let unit = data_frame(1024);
        let rate = o.non_reader_rate;
        floods.push(Flood::new(&o, "non-readers", o.non_readers, &unit, rate));
    }
    if o.on("drip") && o.drip > 0 {
        let unit = data_frame(1);
        let rate = o.drip_rate * unit.len();
        let mut f = Flood::new(&o, "drip non-readers", o.drip, &unit, rate);
        f.prefill = data_frame(1024).repeat(o.drip_prefill.div_ceil(1029));
        floods.push(f);
    }
    if o.on("storm") && o.storm_rate > 0 {
        storm = Some(Storm::new(&o));
    }
    println!("READY");
    let start = Instant::now();
    if let Some(s) = storm.as_mut() {
        s.start = start;
    }
    let end = start + o.duration;
    let mut next = start;
    while Instant::now() < end {
        next += TICK;
        sleep_until(next);
        let now = Instant::now();
        if now > next + 20 * TICK {
            next = now; // overslept: no burst of ticks to catch up
        }
        for f in &mut floods {
            f.tick(now);
        }
        for a in &mut idles {
            a.tick(now);
        }
        if let Some(b) = byte.as_mut() {
            b.tick();
        }
        if let Some(s) = storm.as_mut() {
            s.tick();
        }
    }
    let mut reports: Vec<Report> = floods.into_iter().map(Flood::report).collect();
    reports.extend(idles.into_iter().map(|a| a.r));
    reports.extend(byte.map(|b| b.r));
    reports.extend(storm.map(|s| s.r));
    let mut mismatches = 0;
    for r in &reports {
        println!("{}", r.line());
        mismatches += r.mismatches;
    }
    let (user, sys) = cpu_ms();
    println!("CPU user_ms={user} sys_ms={sys}");
    println!("DONE");
    if mismatches > 0 {
        exit(1);
    }
}

const HELP: &str = "\
attacker: bounded hostile peers for a length-delimited echo server (echo --framing ld);
examples/attacker.rs describes every attack

usage: attacker [OPTIONS]

options:
  --addr HOST:PORT          the server (default 127.0.0.1:7000)
  --duration DUR            how long to attack, e.g. 10s (default 10s)
  --secs S                  the same in seconds (tests/hostile_soak.rs uses it)
  --attacks a,b,...         only these: ping, zero, claim, byte, slowloris, storm,
                            nonreader, drip (default all)
  --ping-flood N            ping-flood connections (default 2)
  --ping-rate SIZE          bytes per second each writes (default 2MiB)
  --zero-flood N            zero-length-flood connections (default 2)
  --zero-rate SIZE          bytes per second each writes (default 2MiB)
  --claim N                 claimed-length connections (default 50)
  --claim-len SIZE          the length they claim (default 1MiB)
  --byte-at-a-time N        byte-at-a-time connections (default 20)
  --slowloris N             slowloris connections (default 500)
  --storm-rate N            connect/reset storm, connections per second (default 500)
  --non-readers N           non-reading connections (default 10)
  --non-reader-rate SIZE    bytes per second each writes (default 512KiB)
  --drip N                  drip non-readers (default 10)
  --drip-rate N             1-byte frames per second each (default 1000)
  --drip-prefill SIZE       bytes each writes at once first (default 0)
  --rcvbuf SIZE             receive buffer of the connections that never read (default 4KiB)
  --nice N                  the process's nice value (default 0)
  --cpu N                   run on CPU N only (as attackers on another machine would not
                            share the server's CPUs; default: anywhere)
  -h, --help                print this help

Exits 1 if an echo checked by the byte-at-a-time peers differs, 2 on bad options.
";

fn parse_args() -> Result<Opts, lexopt::Error> {
    use lexopt::prelude::*;
    let mut o = Opts {
        addr: SocketAddr::from(([127, 0, 0, 1], 7000)),
        duration: Duration::from_secs(10),
        attacks: Vec::new(),
        ping_flood: 2,
        ping_rate: 2 << 20,
        zero_flood: 2,
        zero_rate: 2 << 20,
        claim: 50,
        claim_len: 1 << 20,
        byte_at_a_time: 20,
        slowloris: 500,
        storm_rate: 500,
        non_readers: 10,
        non_reader_rate: 512 << 10,
        drip: 10,
        drip_rate: 1000,
        drip_prefill: 0,
        rcvbuf: 4096,
        nice: 0,
        cpu: None,
    };
    let size = opts::parse_size_usize;
    let mut p = lexopt::Parser::from_env();
    while let Some(arg) = p.next()? {
        match arg {
            Long("addr") => o.addr = p.value()?.parse()?,
            Long("duration") => o.duration = p.value()?.parse_with(opts::parse_duration)?,
            Long("secs") => {
                o.duration = p.value()?.parse_with(|v| {
                    v.parse::<f64>()
                        .ok()
                        .and_then(|s| Duration::try_from_secs_f64(s).ok())
                        .ok_or_else(|| format!("'{v}' is not a number of seconds"))
                })?
            }
            Long("attacks") => {
                o.attacks = p
                    .value()?
                    .string()?
                    .split(',')
                    .map(str::to_string)
                    .collect()
            }
            Long("ping-flood") => o.ping_flood = p.value()?.parse()?,
            Long("ping-rate") => o.ping_rate = p.value()?.parse_with(size)?,
            Long("zero-flood") => o.zero_flood = p.value()?.parse()?,
            Long("zero-rate") => o.zero_rate = p.value()?.parse_with(size)?,
            Long("claim") => o.claim = p.value()?.parse()?,
            Long("claim-len") => {
                o.claim_len = p.value()?.parse_with(|v| {
                    u32::try_from(opts::parse_size(v)?).map_err(|_| format!("'{v}' is too large"))
                })?
            }
            Long("byte-at-a-time") => o.byte_at_a_time = p.value()?.parse()?,
            Long("slowloris") => o.slowloris = p.value()?.parse()?,
            Long("storm-rate") => o.storm_rate = p.value()?.parse()?,
            Long("non-readers") => o.non_readers = p.value()?.parse()?,
            Long("non-reader-rate") => o.non_reader_rate = p.value()?.parse_with(size)?,
            Long("drip") => o.drip = p.value()?.parse()?,
            Long("drip-rate") => o.drip_rate = p.value()?.parse()?,
            Long("drip-prefill") => o.drip_prefill = p.value()?.parse_with(size)?,
            Long("rcvbuf") => o.rcvbuf = p.value()?.parse_with(size)?,
            Long("nice") => o.nice = p.value()?.parse()?,
            Long("cpu") => o.cpu = Some(p.value()?.parse()?),
            Short('h') | Long("help") => opts::exit_help(HELP),
            _ => return Err(arg.unexpected()),
        }
    }
    Ok(o)
}
