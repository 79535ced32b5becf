//! `cargo run --release -p heartloop-broker --bin nats_attacker -- --addr 127.0.0.1:4222 --secs 10`
//!
//! Hostile peers for the NATS-protocol broker, speaking the text protocol over raw TCP;
//! used by `examples/broker/tests/hostile_soak.rs`. Every attack is bounded in
//! connections and rate, and the process stops by itself after `--secs`. Every
//! connection that does not read announces `CONNECT {"verbose":false,"pedantic":false}`
//! (no `+OK` owed) and has a small receive buffer (`--rcvbuf`, 4 KiB), so that the
//! broker's pending bytes for it grow soon.
//!
//! | attack | options (default) | what each connection does |
//! |---|---|---|
//! | many subscriptions | `--sub-amp N` (2), `--sub-amp-subs S` (2000), `--sid-len L` (200), `--sub-amp-rate M/s` (200) | SUBs `amp.<i>` S times with L-byte sids, never reads; a publisher of its own sends M 64-byte messages/s to `amp.<i>`: each publish fans out S times |
//! | wildcards | `--wild N` (4) | SUBs `>` and `*.*`, never reads (it gets every other attack's messages and the healthy peers') |
//! | large payloads | `--big-pub N` (2), `--big-size B` (240KiB), `--big-rate B/s` (2MiB) | publishes B-byte payloads to `void.<i>` (no subscriber but the wildcards), never reads |
//! | PING flood | `--ping-flood N` (2), `--ping-rate B/s` (2MiB) | writes `PING` at the rate, never reads the PONGs |
//! | byte at a time | `--byte-at-a-time N` (20) | SUBs `bat.<i>`, then writes `PUB bat.<i> 16` messages one byte per ms; reads and checks every MSG |
//! | slowloris | `--slowloris N` (300) | half a PUB header (or, every other one, a header and half its payload), then silence |
//! | connect/reset storm | `--storm-rate N/s` (300) | connect, (every other one: CONNECT, SUB, PUB), `SO_LINGER` 0 close |
//! | garbage | `--garbage-rate N/s` (100) | one of several protocol errors, then reads until the broker closes it (which it must, within 2 s) |
//!
//! A long-lived connection the broker cuts is counted and replaced after 100 ms (a
//! reset is seen through `SO_ERROR`, without reading). `--attacks a,b,...` runs only the
//! named ones (`amp`, `wild`, `big`, `ping`, `byte`, `slowloris`, `storm`, `garbage`).
//! All attacks run in one thread, one pass every millisecond (at most one core).
//!
//! Output (stdout): `READY` once every long-lived connection was opened, then at the end
//! one `ATTACK <name> key=value ...` line per attack, `CPU user_ms=N sys_ms=N` and `DONE`.
//! Exits 1 if a message checked by the byte-at-a-time peers differs, or a garbage
//! connection was not closed by the broker within 2 s; 2 on bad options.

#[path = "../../../common/attack.rs"]
mod attack;
#[path = "../../../common/opts.rs"]
mod opts;

use attack::{Idle, RECONNECT_AFTER, Report, TICK, connect, cpu_ms, gone, sleep_until};

/// The names of `Report::sent` and `Report::answered` in this attacker's report lines.
const LABELS: (&str, &str) = ("msgs", "received");

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::exit;
use std::time::{Duration, Instant};

use socket2::SockRef;

/// What a connection says first: no `+OK` for what follows.
const CONNECT: &[u8] = b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n";
/// A garbage connection the broker has not closed after this long is a failure.
const GARBAGE_CLOSE_WITHIN: Duration = Duration::from_secs(2);

struct Opts {
    addr: SocketAddr,
    duration: Duration,
    attacks: Vec<String>,
    cpu: Option<usize>,
    sub_amp: usize,
    sub_amp_subs: usize,
    sid_len: usize,
    sub_amp_rate: usize,
    wild: usize,
    big_pub: usize,
    big_size: usize,
    big_rate: usize,
    ping_flood: usize,
    ping_rate: usize,
    byte_at_a_time: usize,
    slowloris: usize,
    storm_rate: usize,
    garbage_rate: usize,
    rcvbuf: usize,
}

impl Opts {
    fn on(&self, name: &str) -> bool {
        self.attacks.is_empty() || self.attacks.iter().any(|a| a == name)
    }
}

/// What one attack did, printed as `ATTACK <name> k=v ...`. `msgs`: operations sent
/// (PUB, PING, SUB, garbage inputs); `received`: messages read back (byte-at-a-time) or
/// connections the broker closed after garbage.
/// Whether the broker ended this connection, without reading from it: a reset shows as
/// a pending socket error.
fn reset(s: &TcpStream) -> bool {
    !matches!(s.take_error(), Ok(None))
}

/// A `PUB subject len` message with a payload of `len` pattern bytes.
fn pub_msg(subject: &str, len: usize) -> Vec<u8> {
    let mut m = format!("PUB {subject} {len}\r\n").into_bytes();
    m.extend((0..len).map(|i| b'a' + (i % 26) as u8));
    m.extend_from_slice(b"\r\n");
    m
}

/// Sleep until `at` (no-op if past).
/// A long-lived connection that never reads: it writes its `setup` once (as fast as the
/// kernel takes it), then `unit` repeated at `per_tick` bytes per tick (0: nothing more).
struct Slot {
    sock: Option<TcpStream>,
    setup: Vec<u8>,
    /// `unit` repeated to at least 16 KiB, so the stream from any offset is
    /// `buf[pos % unit_len..]`.
    buf: Vec<u8>,
    unit_len: usize,
    /// Bytes of the setup written; bytes of the stream written and allowed by now.
    pre: usize,
    pos: usize,
    allowed: f64,
    retry_at: Option<Instant>,
}

/// `n` slots of one attack; a slot the broker cuts is counted and reopened after
/// [`RECONNECT_AFTER`].
struct Writers {
    r: Report,
    addr: SocketAddr,
    rcvbuf: usize,
    per_tick: f64,
    slots: Vec<Slot>,
    next_check: Instant,
}

impl Writers {
    /// `make(i)`: the setup and the repeated unit of slot `i`; `rate` in bytes/s.
    fn new(
        o: &Opts,
        name: &'static str,
        n: usize,
        rate: usize,
        make: impl Fn(usize) -> (Vec<u8>, Vec<u8>),
    ) -> Writers {
        let mut w = Writers {
            r: Report::new(name, n, LABELS),
            addr: o.addr,
            rcvbuf: o.rcvbuf,
            per_tick: rate as f64 * TICK.as_secs_f64(),
            slots: Vec::with_capacity(n),
            next_check: Instant::now(),
        };
        for i in 0..n {
            let (setup, unit) = make(i);
            let unit_len = unit.len();
            let buf = if unit.is_empty() {
                Vec::new()
            } else {
                unit.repeat(16 * 1024 / unit_len + 2)
            };
            let mut s = Slot {
                sock: None,
                setup,
                buf,
                unit_len,
                pre: 0,
                pos: 0,
                allowed: 0.0,
                retry_at: None,
            };
            w.open(&mut s, Instant::now());
            w.slots.push(s);
        }
        w
    }

    fn open(&mut self, s: &mut Slot, now: Instant) {
        self.r.connects += 1;
        s.sock = connect(self.addr, Some(self.rcvbuf)).ok();
        s.pre = 0;
        s.pos = 0;
        s.allowed = 0.0;
        s.retry_at = None;
        if s.sock.is_none() {
            self.r.connect_failed += 1;
            s.retry_at = Some(now + RECONNECT_AFTER);
        }
    }

    fn tick(&mut self, now: Instant) {
        let check = now >= self.next_check;
        if check {
            self.next_check = now + Duration::from_millis(20);
        }
        let mut slots = std::mem::take(&mut self.slots);
        for s in &mut slots {
            if s.sock.is_none() {
                if s.retry_at.is_some_and(|t| now >= t) {
                    self.open(s, now);
                }
                continue;
            }
            if self.write(s) || (check && s.sock.as_ref().is_some_and(reset)) {
                self.r.cut += 1;
                self.r.sent += (s.pos / s.unit_len.max(1)) as u64;
                s.sock = None;
                s.retry_at = Some(now + RECONNECT_AFTER);
            }
        }
        self.slots = slots;
    }

    /// Writes what is due on one slot; whether the connection failed.
    fn write(&mut self, s: &mut Slot) -> bool {
        let Some(sock) = s.sock.as_mut() else {
            return false;
        };
        let r = &mut self.r;
        while s.pre < s.setup.len() {
            match sock.write(&s.setup[s.pre..]) {
                Ok(k) => {
                    s.pre += k;
                    r.bytes += k as u64;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
        if s.buf.is_empty() {
            return false;
        }
        // Catch up at most 20 ticks after an oversleep; never run ahead.
        s.allowed = (s.allowed + self.per_tick).min(s.pos as f64 + 20.0 * self.per_tick);
        while (s.pos as f64) < s.allowed {
            let off = s.pos % s.unit_len;
            let want = ((s.allowed - s.pos as f64).ceil() as usize)
                .min(s.buf.len() - off)
                .max(1);
            match sock.write(&s.buf[off..off + want]) {
                Ok(k) => {
                    s.pos += k;
                    r.bytes += k as u64;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    // Backpressure (or held back by the broker): not owed later.
                    s.allowed = s.pos as f64;
                    break;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
        false
    }

    fn report(mut self) -> Report {
        for s in &self.slots {
            self.r.sent += (s.pos / s.unit_len.max(1)) as u64;
            if s.unit_len == 0 && s.pre > 0 {
                self.r.sent += 1;
            }
        }
        self.r
    }
}

/// One byte-at-a-time peer: its connection, its PUB message, bytes of it written, and
/// the bytes it expects back (one MSG per PUB) and has checked.
struct Dripper {
    sock: Option<TcpStream>,
    msg: Vec<u8>,
    sent: usize,
    expect: Vec<u8>,
    got: usize,
}

/// `n` connections that SUB `bat.<i>` (written whole), then write `PUB bat.<i> 16`
/// messages one byte per tick each, and read and check every MSG the broker sends back
/// (answering a PING if one comes).
struct ByteAtATime {
    r: Report,
    peers: Vec<Dripper>,
}

impl ByteAtATime {
    fn new(o: &Opts, n: usize) -> ByteAtATime {
        let mut r = Report::new("byte-at-a-time", n, LABELS);
        let peers = (0..n)
            .map(|i| {
                r.connects += 1;
                let subject = format!("bat.{i}");
                let mut setup = CONNECT.to_vec();
                setup.extend_from_slice(format!("SUB {subject} 1\r\n").as_bytes());
                let sock = connect(o.addr, None)
                    .and_then(|mut s| {
                        // Tiny: the kernel takes it at once.
                        s.write_all(&setup).map(|()| s)
                    })
                    .ok();
                match sock {
                    Some(_) => r.bytes += setup.len() as u64,
                    None => r.connect_failed += 1,
                }
                let msg = pub_msg(&subject, 16);
                let mut expect = format!("MSG {subject} 1 16\r\n").into_bytes();
                expect.extend_from_slice(&msg[msg.len() - 18..]);
                Dripper {
                    sock,
                    msg,
                    sent: 0,
                    expect,
                    got: 0,
                }
            })
            .collect();
        ByteAtATime { r, peers }
    }

    fn tick(&mut self) {
        let mut buf = [0u8; 4096];
        let r = &mut self.r;
        for p in &mut self.peers {
            let Some(sock) = p.sock.as_mut() else {
                continue;
            };
            let mut failed = false;
            match sock.write(&[p.msg[p.sent % p.msg.len()]]) {
                Ok(1) => {
                    p.sent += 1;
                    r.bytes += 1;
                    if p.sent.is_multiple_of(p.msg.len()) {
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
                        let mut data = &buf[..k];
                        // The INFO line first; a PING (after --ping-interval) is answered.
                        // Both start where a MSG would (its first byte is 'M').
                        if p.got.is_multiple_of(p.expect.len()) && data[0] != b'M' {
                            let line_end = data.iter().position(|&b| b == b'\n');
                            match line_end {
                                Some(e) => {
                                    if data.starts_with(b"PING") {
                                        let _ = sock.write_all(b"PONG\r\n");
                                    } else if !data.starts_with(b"INFO ") {
                                        r.mismatches += 1;
                                    }
                                    data = &data[e + 1..];
                                }
                                // A line split across reads: not expected for these.
                                None => data = &[],
                            }
                        }
                        for &x in data {
                            if x != p.expect[p.got % p.expect.len()] {
                                r.mismatches += 1;
                            }
                            p.got += 1;
                            if p.got.is_multiple_of(p.expect.len()) {
                                r.answered += 1;
                            }
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => failed = true,
                }
            }
            if failed {
                r.cut += 1;
                p.sock = None;
            }
        }
    }
}

/// Connect, (every other one: CONNECT, SUB, PUB), close with `SO_LINGER` 0 (a reset),
/// at `rate` per second, at most 20 per tick.
struct Storm {
    r: Report,
    addr: SocketAddr,
    rate: f64,
    bytes: Vec<u8>,
    start: Instant,
}

impl Storm {
    fn tick(&mut self) {
        let due = (self.start.elapsed().as_secs_f64() * self.rate) as u64;
        for _ in 0..due.saturating_sub(self.r.connects).min(20) {
            self.r.connects += 1;
            match connect(self.addr, None) {
                Ok(mut s) => {
                    if self.r.connects.is_multiple_of(2) && s.write(&self.bytes).is_ok() {
                        self.r.bytes += self.bytes.len() as u64;
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

/// Protocol errors: each must make the broker close that connection (and only that one).
fn garbage_inputs() -> Vec<Vec<u8>> {
    let mut long_line = b"PUB ".to_vec();
    long_line.resize(5000, b'x');
    vec![
        b"FOO BAR\r\n".to_vec(),
        b"PUB x -1\r\n".to_vec(),
        // The payload is longer than announced: no CRLF where it should end.
        b"PUB x 3\r\nabcdefgh\r\n".to_vec(),
        // Over max_payload.
        b"PUB x 999999999\r\n".to_vec(),
        b"CONNECT {nope}\r\n".to_vec(),
        b"\x00\xff\x10\x80 \r\n".to_vec(),
        long_line,
        b"SUB\r\n".to_vec(),
    ]
}

/// Connect at `rate` per second (at most 20 per tick), write one of [`garbage_inputs`],
/// then read until the broker closes the connection; one still open after
/// [`GARBAGE_CLOSE_WITHIN`] counts as a mismatch (dropped at once). `received`: closed by
/// the broker.
struct Garbage {
    r: Report,
    addr: SocketAddr,
    rate: f64,
    inputs: Vec<Vec<u8>>,
    open: Vec<(TcpStream, Instant, usize)>,
    /// Garbage inputs the broker did not close the connection for, by index.
    lingered: Vec<usize>,
    start: Instant,
}

impl Garbage {
    fn tick(&mut self, now: Instant) {
        let due = (self.start.elapsed().as_secs_f64() * self.rate) as u64;
        for _ in 0..due.saturating_sub(self.r.connects).min(20) {
            let i = self.r.connects as usize % self.inputs.len();
            self.r.connects += 1;
            let input = &self.inputs[i];
            match connect(self.addr, None).and_then(|mut s| s.write_all(input).map(|()| s)) {
                Ok(s) => {
                    self.r.bytes += input.len() as u64;
                    self.r.sent += 1;
                    self.open.push((s, now, i));
                }
                Err(_) => self.r.connect_failed += 1,
            }
        }
        let (r, lingered) = (&mut self.r, &mut self.lingered);
        self.open.retain_mut(|(s, at, i)| {
            if gone(s) {
                r.answered += 1;
                r.cut += 1;
                false
            } else if now.saturating_duration_since(*at) > GARBAGE_CLOSE_WITHIN {
                r.mismatches += 1;
                lingered.push(*i);
                false
            } else {
                true
            }
        });
    }
}

fn main() {
    let o = parse_args().unwrap_or_else(|e| opts::exit_usage("nats_attacker", e));
    if let Some(cpu) = o.cpu {
        let mut set = rustix::thread::CpuSet::new();
        set.set(cpu);
        if let Err(e) = rustix::thread::sched_setaffinity(None, &set) {
            eprintln!("nats_attacker: cannot run on CPU {cpu}: {e}");
            std::process::exit(1);
        }
    }
    let connect_then = |rest: &[u8]| {
        let mut v = CONNECT.to_vec();
        v.extend_from_slice(rest);
        v
    };
    let mut writers = Vec::new();
    let mut idles = Vec::new();
    let mut byte = None;
    // Every long-lived connection is opened first; then all attacks run together.
    if o.on("amp") && o.sub_amp > 0 {
        let (subs, sid_len) = (o.sub_amp_subs, o.sid_len.max(8));
        writers.push(Writers::new(&o, "many subscriptions", o.sub_amp, 0, |i| {
            let mut setup = CONNECT.to_vec();
            for j in 0..subs {
                // A long sid: a number padded with letters.
                let mut sid = format!("{j:08}");
                sid.extend((sid.len()..sid_len).map(|k| (b'a' + (k % 26) as u8) as char));
                setup.extend_from_slice(format!("SUB amp.{i} {sid}\r\n").as_bytes());
            }
            (setup, Vec::new())
        }));
        let unit_len = pub_msg("amp.0", 64).len();
        let rate = o.sub_amp_rate * unit_len;
        writers.push(Writers::new(
            &o,
            "many subscriptions: publishers",
            o.sub_amp,
            rate,
            |i| (CONNECT.to_vec(), pub_msg(&format!("amp.{i}"), 64)),
        ));
    }
    if o.on("wild") && o.wild > 0 {
        writers.push(Writers::new(&o, "wildcard subscribers", o.wild, 0, |_| {
            (connect_then(b"SUB > 1\r\nSUB *.* 2\r\n"), Vec::new())
        }));
    }
    if o.on("big") && o.big_pub > 0 {
        let size = o.big_size;
        writers.push(Writers::new(
            &o,
            "large payloads",
            o.big_pub,
            o.big_rate,
            |i| (CONNECT.to_vec(), pub_msg(&format!("void.{i}"), size)),
        ));
    }
    if o.on("ping") && o.ping_flood > 0 {
        writers.push(Writers::new(
            &o,
            "PING flood",
            o.ping_flood,
            o.ping_rate,
            |_| (CONNECT.to_vec(), b"PING\r\n".to_vec()),
        ));
    }
    if o.on("byte") && o.byte_at_a_time > 0 {
        byte = Some(ByteAtATime::new(&o, o.byte_at_a_time));
    }
    if o.on("slowloris") && o.slowloris > 0 {
        let prefixes: Vec<Vec<u8>> = (0..o.slowloris)
            .map(|i| {
                if i % 2 == 0 {
                    connect_then(b"PUB slow.x 1")
                } else {
                    let mut p = connect_then(b"PUB slow.x 1000\r\n");
                    p.resize(p.len() + 500, b'z');
                    p
                }
            })
            .collect();
        let r = Report::new("slowloris", prefixes.len(), LABELS);
        idles.push(Idle::new(o.addr, r, prefixes));
    }
    let mut storm = (o.on("storm") && o.storm_rate > 0).then(|| Storm {
        r: Report::new("connect/reset storm", 1, LABELS),
        addr: o.addr,
        rate: o.storm_rate as f64,
        bytes: connect_then(b"SUB storm.> 1\r\nPUB storm.x 5\r\nhello\r\n"),
        start: Instant::now(),
    });
    let mut garbage = (o.on("garbage") && o.garbage_rate > 0).then(|| Garbage {
        r: Report::new("garbage", 1, LABELS),
        addr: o.addr,
        rate: o.garbage_rate as f64,
        inputs: garbage_inputs(),
        open: Vec::new(),
        lingered: Vec::new(),
        start: Instant::now(),
    });
    println!("READY");
    let start = Instant::now();
    if let Some(s) = storm.as_mut() {
        s.start = start;
    }
    if let Some(g) = garbage.as_mut() {
        g.start = start;
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
        for w in &mut writers {
            w.tick(now);
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
        if let Some(g) = garbage.as_mut() {
            g.tick(now);
        }
    }
    // The garbage connections still open get their 2 s to be closed.
    if let Some(g) = garbage.as_mut() {
        g.rate = 0.0;
        while !g.open.is_empty() {
            std::thread::sleep(Duration::from_millis(10));
            g.tick(Instant::now());
        }
        if !g.lingered.is_empty() {
            let inputs = g.inputs.clone();
            for i in &g.lingered {
                eprintln!(
                    "nats_attacker: the broker kept a connection open after {:?}",
                    String::from_utf8_lossy(&inputs[*i][..inputs[*i].len().min(40)])
                );
            }
        }
    }
    let mut reports: Vec<Report> = writers.into_iter().map(Writers::report).collect();
    reports.extend(idles.into_iter().map(|a| a.r));
    reports.extend(byte.map(|b| b.r));
    reports.extend(storm.map(|s| s.r));
    reports.extend(garbage.map(|g| g.r));
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
nats_attacker: bounded hostile peers for the NATS-protocol broker;
examples/broker/src/bin/nats_attacker.rs describes every attack

usage: nats_attacker [OPTIONS]

options:
  --addr HOST:PORT          the broker (default 127.0.0.1:4222)
  --secs S                  how long to attack, in seconds (default 10)
  --attacks a,b,...         only these: amp, wild, big, ping, byte, slowloris, storm,
                            garbage (default all)
  --cpu N                   run on CPU N only (as attackers on another machine would not
                            share the broker's CPUs; default: anywhere)
  --sub-amp N               connections with many subscriptions (default 2)
  --sub-amp-subs S          subscriptions each (default 2000)
  --sid-len L               bytes of their sids (default 200)
  --sub-amp-rate M          messages per second published to each (default 200)
  --wild N                  non-reading '>' and '*.*' subscribers (default 4)
  --big-pub N               publishers of large payloads (default 2)
  --big-size SIZE           their payload (default 240KiB)
  --big-rate SIZE           bytes per second each writes (default 2MiB)
  --ping-flood N            PING-flood connections (default 2)
  --ping-rate SIZE          bytes per second each writes (default 2MiB)
  --byte-at-a-time N        byte-at-a-time connections (default 20)
  --slowloris N             slowloris connections (default 300)
  --storm-rate N            connect/reset storm, connections per second (default 300)
  --garbage-rate N          garbage connections per second (default 100)
  --rcvbuf SIZE             receive buffer of the connections that never read (default 4KiB)
  -h, --help                print this help

Exits 1 if a byte-at-a-time peer got a wrong message or the broker kept a garbage
connection open, 2 on bad options.
";

fn parse_args() -> Result<Opts, lexopt::Error> {
    use lexopt::prelude::*;
    let mut o = Opts {
        addr: SocketAddr::from(([127, 0, 0, 1], 4222)),
        duration: Duration::from_secs(10),
        attacks: Vec::new(),
        cpu: None,
        sub_amp: 2,
        sub_amp_subs: 2000,
        sid_len: 200,
        sub_amp_rate: 200,
        wild: 4,
        big_pub: 2,
        big_size: 240 << 10,
        big_rate: 2 << 20,
        ping_flood: 2,
        ping_rate: 2 << 20,
        byte_at_a_time: 20,
        slowloris: 300,
        storm_rate: 300,
        garbage_rate: 100,
        rcvbuf: 4096,
    };
    let size = opts::parse_size_usize;
    let mut p = lexopt::Parser::from_env();
    while let Some(arg) = p.next()? {
        match arg {
            Long("addr") => o.addr = p.value()?.parse()?,
            Long("secs") => {
                o.duration = p.value()?.parse_with(|v| {
                    v.parse::<f64>()
                        .ok()
                        .and_then(|s| Duration::try_from_secs_f64(s).ok())
                        .ok_or_else(|| format!("'{v}' is not a number of seconds"))
                })?
            }
            Long("cpu") => o.cpu = Some(p.value()?.parse()?),
            Long("attacks") => {
                o.attacks = p
                    .value()?
                    .string()?
                    .split(',')
                    .map(str::to_string)
                    .collect()
            }
            Long("sub-amp") => o.sub_amp = p.value()?.parse()?,
            Long("sub-amp-subs") => o.sub_amp_subs = p.value()?.parse()?,
            Long("sid-len") => o.sid_len = p.value()?.parse()?,
            Long("sub-amp-rate") => o.sub_amp_rate = p.value()?.parse()?,
            Long("wild") => o.wild = p.value()?.parse()?,
            Long("big-pub") => o.big_pub = p.value()?.parse()?,
            Long("big-size") => o.big_size = p.value()?.parse_with(size)?,
            Long("big-rate") => o.big_rate = p.value()?.parse_with(size)?,
            Long("ping-flood") => o.ping_flood = p.value()?.parse()?,
            Long("ping-rate") => o.ping_rate = p.value()?.parse_with(size)?,
            Long("byte-at-a-time") => o.byte_at_a_time = p.value()?.parse()?,
            Long("slowloris") => o.slowloris = p.value()?.parse()?,
            Long("storm-rate") => o.storm_rate = p.value()?.parse()?,
            Long("garbage-rate") => o.garbage_rate = p.value()?.parse()?,
            Long("rcvbuf") => o.rcvbuf = p.value()?.parse_with(size)?,
            Short('h') | Long("help") => opts::exit_help(HELP),
            _ => return Err(arg.unexpected()),
        }
    }
    Ok(o)
}
