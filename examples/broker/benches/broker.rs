//! `cargo bench -p heartloop-broker --bench broker` (`-- --rounds N --measure DUR`, `-- --only fanout_100`,
//! `-- --help`)
//!
//! The broker example against nats-server and redis pub/sub, side by side in one run.
//! Needs Debian's `nats-server` and `redis-server` packages (benchmarks only; a missing one
//! is skipped with a loud `SKIPPED`). The one-core brokers (the heartloop broker with
//! `--threads 1`, nats-server with `GOMAXPROCS=1`, redis) run pinned to core 0
//! (`benches/common/pin.rs`); the two-core ones (`--threads 2`, `GOMAXPROCS=2`) on cores 0
//! and 1. This process, the load generator, pins itself to core 1: on a two-core machine
//! a two-core broker shares core 1 with it, which the figures include. The load generator
//! is one mio loop speaking both protocols, the same code for every broker.
//! `--brokers LIST` runs some of them: `heartloop1,heartloop2,nats1,nats2,redis`.
//!
//! Scenarios (payload 16 bytes unless said):
//! * `fanout_100`, `fanout_1000`: one publisher, 100 / 1,000 subscribers, flat out (the
//!   publisher keeps at most a window of messages ahead of the slowest subscriber: 500
//!   with 1,000 subscribers, 2,000 with 100, or `--window N`): delivered messages per
//!   second. A small window makes the figure latency-bound (a window per round trip to
//!   the slowest subscriber), a large one measures what the broker's cores can push.
//! * `fanout_1000_paced`: 1,000 subscribers, 100 publishes/s = 100k deliveries/s: latency
//!   from publish to delivery, p50/p99 over all deliveries.
//! * `request_reply`: one request outstanding, the responder echoes: round trip p50/p99.
//! * `slow_subscriber`: publisher paced at 100k msgs/s of 128 bytes to two subscribers,
//!   one of which never reads: the healthy one's worst 1-second rate, and when the broker
//!   cut the stopped one (seen as a reset on its socket; for nats-server from `/varz`
//!   `slow_consumers`, for redis from `INFO clients`). Limits: 64 MiB pending, 2 s write
//!   deadline (redis: `client-output-buffer-limit pubsub 64mb 0 0`, no deadline).
//!
//! Every round runs every scenario against every broker; each figure is the median over
//! rounds. Prints a markdown table.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../../common/opts.rs"]
mod opts;
#[path = "../../../benches/common/pin.rs"]
mod pin;

use hdrhistogram::Histogram;
use mio::net::TcpStream as MioStream;
use mio::{Events, Interest, Poll, Token};

// ------------------------------------------------------------------ brokers

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Proto {
    Nats,
    Redis,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
enum Kind {
    /// `--threads 1`, on core 0.
    Heartloop,
    /// `--threads 2`, on cores 0 and 1.
    Heartloop2,
    /// `GOMAXPROCS=1`, on core 0.
    NatsServer,
    /// `GOMAXPROCS=2`, on cores 0 and 1.
    NatsServer2,
    Redis,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Heartloop => "heartloop broker, 1 reactor",
            Kind::Heartloop2 => "heartloop broker, 2 reactors",
            Kind::NatsServer => "nats-server 2.9, 1 core",
            Kind::NatsServer2 => "nats-server 2.9, 2 cores",
            Kind::Redis => "redis pub/sub",
        }
    }

    /// The name `--brokers` takes.
    fn key(self) -> &'static str {
        match self {
            Kind::Heartloop => "heartloop1",
            Kind::Heartloop2 => "heartloop2",
            Kind::NatsServer => "nats1",
            Kind::NatsServer2 => "nats2",
            Kind::Redis => "redis",
        }
    }

    fn cores(self) -> usize {
        match self {
            Kind::Heartloop2 | Kind::NatsServer2 => 2,
            _ => 1,
        }
    }

    fn is_heartloop(self) -> bool {
        matches!(self, Kind::Heartloop | Kind::Heartloop2)
    }

    fn is_nats_server(self) -> bool {
        matches!(self, Kind::NatsServer | Kind::NatsServer2)
    }
    fn proto(self) -> Proto {
        if self == Kind::Redis {
            Proto::Redis
        } else {
            Proto::Nats
        }
    }
}

struct Broker {
    kind: Kind,
    child: Child,
    addr: SocketAddr,
    /// nats-server's monitoring port.
    http: Option<SocketAddr>,
    _dir: Option<PathBuf>,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(d) = &self._dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn which(prog: &str) -> Option<PathBuf> {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/bin", "/sbin", "/bin"] {
        let p = PathBuf::from(dir).join(prog);
        if p.exists() {
            return Some(p);
        }
    }
    None
}

fn start(kind: Kind) -> Option<Broker> {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut cmd;
    let mut http = None;
    let mut dir = None;
    match kind {
        Kind::Heartloop | Kind::Heartloop2 => {
            cmd = Command::new(env!("CARGO_BIN_EXE_broker"));
            cmd.args([
                "--threads",
                &kind.cores().to_string(),
                "--addr",
                &addr.to_string(),
                "--max-pending",
                "64MB",
                "--write-deadline",
                "2s",
            ]);
            if std::env::var_os("RUST_LOG").is_none() {
                cmd.env("RUST_LOG", "warn");
            }
        }
        Kind::NatsServer | Kind::NatsServer2 => {
            let bin = which("nats-server")?;
            let hport = free_port();
            let d =
                std::env::temp_dir().join(format!("hl-bench-nats-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&d).unwrap();
            let conf = d.join("nats.conf");
            std::fs::write(
                &conf,
                format!(
                    "host: 127.0.0.1\nport: {port}\nhttp: \"127.0.0.1:{hport}\"\nmax_payload: 1048576\n\
                     max_pending: 67108864\nwrite_deadline: \"2s\"\nping_interval: \"2m\"\n"
                ),
            )
            .unwrap();
            cmd = Command::new(bin);
            cmd.args(["-c", conf.to_str().unwrap()])
                .env("GOMAXPROCS", kind.cores().to_string());
            http = Some(format!("127.0.0.1:{hport}").parse().unwrap());
            dir = Some(d);
        }
        Kind::Redis => {
            let bin = which("redis-server")?;
            cmd = Command::new(bin);
            cmd.args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
                "--client-output-buffer-limit",
                "pubsub 64mb 0 0",
            ]);
        }
    }
    cmd.stdout(Stdio::null()).stdin(Stdio::null());
    if std::env::var_os("BENCH_BROKER_STDERR").is_none() {
        cmd.stderr(Stdio::null());
    }
    let child = if kind.cores() == 1 {
        pin::spawn_pinned(&mut cmd, 0).ok()?
    } else {
        spawn_on_cores(&mut cmd, &[0, 1]).ok()?
    };
    let b = Broker {
        kind,
        child,
        addr,
        http,
        _dir: dir,
    };
    let end = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < end, "{} did not start", kind.name());
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Some(h) = b.http {
        while TcpStream::connect(h).is_err() {
            assert!(Instant::now() < end, "nats-server monitoring did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Some(b)
}

/// Spawn `cmd` with its affinity set to `cpus` (from a thread of our own, so that this
/// process keeps its own: the child inherits the spawning thread's affinity).
fn spawn_on_cores(cmd: &mut Command, cpus: &[usize]) -> io::Result<Child> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut set = rustix::thread::CpuSet::new();
            for &c in cpus {
                set.set(c);
            }
            rustix::thread::sched_setaffinity(None, &set)
                .map_err(|e| io::Error::other(format!("cannot run on CPUs {cpus:?}: {e}")))?;
            cmd.spawn()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("spawning thread panicked")))
    })
}

// ------------------------------------------------------------------ protocol

/// The payload of a timed message: nanoseconds since `epoch`, 16 hex digits.
fn stamp(epoch: Instant, size: usize) -> Vec<u8> {
    let mut p = format!("{:016x}", epoch.elapsed().as_nanos() as u64).into_bytes();
    p.resize(size, b'.');
    p
}

fn unstamp(p: &[u8]) -> Option<u64> {
    u64::from_str_radix(std::str::from_utf8(p.get(..16)?).ok()?, 16).ok()
}

fn sub_cmd(proto: Proto, subject: &str, sid: u32, out: &mut Vec<u8>) {
    match proto {
        Proto::Nats => out.extend_from_slice(format!("SUB {subject} {sid}\r\nPING\r\n").as_bytes()),
        Proto::Redis => out.extend_from_slice(
            format!(
                "*2\r\n$9\r\nSUBSCRIBE\r\n${}\r\n{subject}\r\n",
                subject.len()
            )
            .as_bytes(),
        ),
    }
}

fn pub_cmd(proto: Proto, subject: &str, reply: Option<&str>, payload: &[u8], out: &mut Vec<u8>) {
    match proto {
        Proto::Nats => {
            match reply {
                Some(r) => write!(out, "PUB {subject} {r} {}\r\n", payload.len()),
                None => write!(out, "PUB {subject} {}\r\n", payload.len()),
            }
            .unwrap();
        }
        Proto::Redis => {
            write!(
                out,
                "*3\r\n$7\r\nPUBLISH\r\n${}\r\n{subject}\r\n${}\r\n",
                subject.len(),
                payload.len()
            )
            .unwrap();
        }
    }
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

/// What a connection received, in protocol-neutral terms.
enum In<'a> {
    /// A message on `subject` (with the NATS reply subject), payload.
    Msg(&'a [u8], Option<&'a [u8]>, &'a [u8]),
    /// Subscription confirmed / PONG: the connection is ready.
    Ready,
    Ping,
    Other,
}

/// Parse one item at the start of `b`: `Some((item, consumed))`, or `None` if incomplete.
fn parse_one(proto: Proto, b: &[u8]) -> Option<(In<'_>, usize)> {
    match proto {
        Proto::Nats => {
            let nl = memchr::memchr(b'\n', b)?;
            let line = &b[..nl.saturating_sub(1)];
            if let Some(args) = line.strip_prefix(b"MSG ") {
                let a: Vec<&[u8]> = args
                    .split(|&c| c == b' ')
                    .filter(|t| !t.is_empty())
                    .collect();
                let len: usize = std::str::from_utf8(a[a.len() - 1]).ok()?.parse().ok()?;
                let end = nl + 1 + len + 2;
                if b.len() < end {
                    return None;
                }
                let reply = if a.len() == 4 { Some(a[2]) } else { None };
                Some((In::Msg(a[0], reply, &b[nl + 1..nl + 1 + len]), end))
            } else if line == b"PING" {
                Some((In::Ping, nl + 1))
            } else if line == b"PONG" {
                Some((In::Ready, nl + 1))
            } else {
                if line.starts_with(b"-ERR") {
                    eprintln!("broker said {}", String::from_utf8_lossy(line));
                }
                Some((In::Other, nl + 1))
            }
        }
        Proto::Redis => {
            let (v, used) = resp(b)?;
            Some((
                match v {
                    Resp::Array(items) if items.len() == 3 => {
                        match (&items[0], &items[1], &items[2]) {
                            (Resp::Bulk(k), Resp::Bulk(ch), Resp::Bulk(p)) if *k == b"message" => {
                                In::Msg(ch, None, p)
                            }
                            (Resp::Bulk(k), _, _) if *k == b"subscribe" => In::Ready,
                            _ => In::Other,
                        }
                    }
                    _ => In::Other,
                },
                used,
            ))
        }
    }
}

enum Resp<'a> {
    Bulk(&'a [u8]),
    Array(Vec<Resp<'a>>),
    Other,
}

fn resp(b: &[u8]) -> Option<(Resp<'_>, usize)> {
    let nl = memchr::memchr(b'\n', b)?;
    let line = &b[1..nl - 1];
    let num = || -> Option<i64> { std::str::from_utf8(line).ok()?.parse().ok() };
    match b[0] {
        b'$' => {
            let n = num()?;
            if n < 0 {
                return Some((Resp::Other, nl + 1));
            }
            let end = nl + 1 + n as usize + 2;
            (b.len() >= end).then(|| (Resp::Bulk(&b[nl + 1..end - 2]), end))
        }
        b'*' => {
            let mut used = nl + 1;
            let mut items = Vec::new();
            for _ in 0..num()? {
                let (v, u) = resp(&b[used..])?;
                items.push(v);
                used += u;
            }
            Some((Resp::Array(items), used))
        }
        b'-' => {
            eprintln!("redis said {}", String::from_utf8_lossy(line));
            Some((Resp::Other, nl + 1))
        }
        _ => Some((Resp::Other, nl + 1)),
    }
}

// ------------------------------------------------------------------ load generator

struct Conn {
    s: MioStream,
    /// Unparsed tail of what was read.
    carry: Vec<u8>,
    out: Vec<u8>,
    received: u64,
    ready: bool,
    closed: bool,
    /// Fast path: every message to this connection is exactly these bytes before the
    /// payload, and `msg_len` bytes in all.
    fast: Option<(Vec<u8>, usize)>,
}

struct Load {
    proto: Proto,
    poll: Poll,
    events: Events,
    conns: Vec<Conn>,
    buf: Vec<u8>,
}

/// What to do with each message (connection index, subject, reply, payload, read time).
type OnMsg<'a> = dyn FnMut(usize, &[u8], Option<&[u8]>, &[u8], Instant) + 'a;

impl Load {
    fn new(proto: Proto) -> Load {
        Load {
            proto,
            poll: Poll::new().unwrap(),
            events: Events::with_capacity(4096),
            conns: Vec::new(),
            buf: vec![0; 256 * 1024],
        }
    }

    fn connect(&mut self, addr: SocketAddr, rcvbuf: Option<usize>) -> usize {
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        if let Some(n) = rcvbuf {
            sock.set_recv_buffer_size(n).unwrap();
        }
        sock.set_tcp_nodelay(true).unwrap();
        sock.connect(&addr.into()).unwrap();
        sock.set_nonblocking(true).unwrap();
        let std: TcpStream = sock.into();
        let mut s = MioStream::from_std(std);
        let i = self.conns.len();
        self.poll
            .registry()
            .register(&mut s, Token(i), Interest::READABLE | Interest::WRITABLE)
            .unwrap();
        let mut out = Vec::new();
        if self.proto == Proto::Nats {
            out.extend_from_slice(
                b"CONNECT {\"verbose\":false,\"pedantic\":false,\"echo\":true}\r\n",
            );
        }
        self.conns.push(Conn {
            s,
            carry: Vec::new(),
            out,
            received: 0,
            ready: false,
            closed: false,
            fast: None,
        });
        self.flush(i);
        i
    }

    fn flush(&mut self, i: usize) {
        let c = &mut self.conns[i];
        while !c.out.is_empty() && !c.closed {
            match c.s.write(&c.out) {
                Ok(n) => {
                    c.out.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => c.closed = true,
            }
        }
    }

    /// Run the loop for at most `d`; `read` says which connections are read at all.
    fn turn(&mut self, d: Duration, read: &dyn Fn(usize) -> bool, on: &mut OnMsg<'_>) {
        self.poll.poll(&mut self.events, Some(d)).unwrap();
        let toks: Vec<(usize, bool)> = self
            .events
            .iter()
            .map(|e| (e.token().0, e.is_error() || e.is_read_closed()))
            .collect();
        for (i, bad) in toks {
            if bad && !read(i) {
                self.conns[i].closed = true;
                continue;
            }
            self.flush(i);
            if read(i) {
                self.read(i, on);
            }
        }
    }

    fn read(&mut self, i: usize, on: &mut OnMsg<'_>) {
        loop {
            let n = match self.conns[i].s.read(&mut self.buf) {
                Ok(0) => {
                    self.conns[i].closed = true;
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.conns[i].closed = true;
                    return;
                }
            };
            let now = Instant::now();
            let short = n < self.buf.len();
            let c = &mut self.conns[i];
            c.carry.extend_from_slice(&self.buf[..n]);
            let mut p = 0;
            let mut pong = false;
            while p < c.carry.len() {
                let rest = &c.carry[p..];
                if let Some((hdr, len)) = &c.fast
                    && rest.len() >= *len
                    && rest.starts_with(hdr)
                {
                    c.received += 1;
                    on(i, b"", None, &rest[hdr.len()..len - 2], now);
                    p += len;
                    continue;
                }
                let Some((item, used)) = parse_one(self.proto, rest) else {
                    break;
                };
                match item {
                    In::Msg(subj, reply, payload) => {
                        c.received += 1;
                        on(i, subj, reply, payload, now);
                    }
                    In::Ready => c.ready = true,
                    In::Ping => pong = true,
                    In::Other => {}
                }
                p += used;
            }
            c.carry.drain(..p);
            if pong {
                c.out.extend_from_slice(b"PONG\r\n");
                self.flush(i);
            }
            if short {
                // Drained for now (edge-triggered: new bytes bring a new event).
                return;
            }
        }
    }

    /// Until every connection in `which` is ready (subscribed).
    fn wait_ready(&mut self, which: &[usize]) {
        let end = Instant::now() + Duration::from_secs(30);
        while !which.iter().all(|&i| self.conns[i].ready) {
            assert!(Instant::now() < end, "subscribers not ready");
            self.turn(
                Duration::from_millis(10),
                &|_| true,
                &mut |_, _, _, _, _| {},
            );
        }
    }

    /// `n` subscribers on `subject`, ready.
    fn subscribers(
        &mut self,
        addr: SocketAddr,
        n: usize,
        subject: &str,
        payload: usize,
    ) -> Vec<usize> {
        let subs: Vec<usize> = (0..n)
            .map(|_| {
                let i = self.connect(addr, None);
                let mut cmd = Vec::new();
                sub_cmd(self.proto, subject, 1, &mut cmd);
                self.conns[i].out.extend_from_slice(&cmd);
                self.flush(i);
                i
            })
            .collect();
        self.wait_ready(&subs);
        let hdr = match self.proto {
            Proto::Nats => format!("MSG {subject} 1 {payload}\r\n"),
            Proto::Redis => format!(
                "*3\r\n$7\r\nmessage\r\n${}\r\n{subject}\r\n${payload}\r\n",
                subject.len()
            ),
        };
        for &i in &subs {
            let len = hdr.len() + payload + 2;
            self.conns[i].fast = Some((hdr.clone().into_bytes(), len));
        }
        subs
    }

    fn publisher(&mut self, addr: SocketAddr) -> usize {
        let p = self.connect(addr, None);
        if self.proto == Proto::Nats {
            self.conns[p].out.extend_from_slice(b"PING\r\n");
            self.flush(p);
            self.wait_ready(&[p]);
        }
        p
    }
}

// ------------------------------------------------------------------ scenarios

/// Flat-out fan-out: delivered messages per second.
/// `window`: how many messages the publisher may be ahead of the slowest subscriber
/// (`None`: 500 for 1,000 subscribers, 2,000 for fewer).
fn fanout(b: &Broker, nsubs: usize, secs: f64, window: Option<u64>) -> f64 {
    let mut l = Load::new(b.kind.proto());
    let subs = l.subscribers(b.addr, nsubs, "bench.fan", 16);
    let p = l.publisher(b.addr);
    let window = window.unwrap_or(if nsubs >= 1000 { 500 } else { 2000 });
    let mut published = 0u64;
    let mut msg = Vec::new();
    pub_cmd(l.proto, "bench.fan", None, &[b'x'; 16], &mut msg);
    let warm = Instant::now() + Duration::from_millis(700);
    let mut base: Option<(Instant, u64)> = None;
    let end = warm + Duration::from_secs_f64(secs);
    loop {
        let min = subs.iter().map(|&i| l.conns[i].received).min().unwrap();
        while published < min + window && l.conns[p].out.len() < 64 * 1024 {
            for _ in 0..50 {
                l.conns[p].out.extend_from_slice(&msg);
            }
            published += 50;
        }
        l.flush(p);
        l.turn(Duration::from_millis(5), &|_| true, &mut |_, _, _, _, _| {});
        let now = Instant::now();
        let total: u64 = subs.iter().map(|&i| l.conns[i].received).sum();
        if base.is_none() && now >= warm {
            base = Some((now, total));
        }
        if now >= end {
            let (t0, n0) = base.unwrap();
            assert!(
                subs.iter().all(|&i| !l.conns[i].closed),
                "{}: a subscriber was cut",
                b.kind.name()
            );
            return (total - n0) as f64 / now.duration_since(t0).as_secs_f64();
        }
    }
}

/// Paced fan-out to 1,000: latency publish -> delivery (µs p50, p99).
fn fanout_paced(b: &Broker, secs: f64) -> (f64, f64) {
    let epoch = Instant::now();
    let mut l = Load::new(b.kind.proto());
    let subs = l.subscribers(b.addr, 1000, "bench.paced", 16);
    let p = l.publisher(b.addr);
    let mut h = Histogram::<u64>::new(3).unwrap();
    let period = Duration::from_millis(10); // 100 publishes/s x 1,000 = 100k deliveries/s
    let start = Instant::now();
    let warm = start + Duration::from_millis(700);
    let end = warm + Duration::from_secs_f64(secs);
    let mut next = start;
    let mut sent = 0u64;
    loop {
        let now = Instant::now();
        if now >= next {
            let mut m = Vec::new();
            pub_cmd(l.proto, "bench.paced", None, &stamp(epoch, 16), &mut m);
            l.conns[p].out.extend_from_slice(&m);
            l.flush(p);
            sent += 1;
            next = start + period * sent as u32;
        }
        if now >= end {
            break;
        }
        let wait = next.saturating_duration_since(Instant::now());
        l.turn(wait, &|_| true, &mut |_, _, _, payload, at| {
            if at >= warm
                && let Some(t) = unstamp(payload)
            {
                let lat = at.duration_since(epoch).as_nanos() as u64 - t;
                h.record(lat.max(1)).unwrap();
            }
        });
    }
    // Drain what is still in flight, then every delivery must have arrived.
    let want = sent * subs.len() as u64;
    let drain_end = Instant::now() + Duration::from_secs(10);
    let got = |l: &Load| subs.iter().map(|&i| l.conns[i].received).sum::<u64>();
    while got(&l) < want && Instant::now() < drain_end {
        l.turn(
            Duration::from_millis(10),
            &|_| true,
            &mut |_, _, _, _, _| {},
        );
    }
    let closed = subs.iter().filter(|&&i| l.conns[i].closed).count();
    assert_eq!(
        closed,
        0,
        "{}: {closed} subscribers were cut",
        b.kind.name()
    );
    let lost = want - got(&l);
    assert!(lost == 0, "{}: {lost} deliveries missing", b.kind.name());
    (
        h.value_at_quantile(0.5) as f64 / 1e3,
        h.value_at_quantile(0.99) as f64 / 1e3,
    )
}

/// One request outstanding: round trip (µs p50, p99).
fn request_reply(b: &Broker, secs: f64) -> (f64, f64) {
    let epoch = Instant::now();
    let mut l = Load::new(b.kind.proto());
    let proto = l.proto;
    let responder = l.subscribers(b.addr, 1, "svc.req", 16)[0];
    let requester = l.subscribers(b.addr, 1, "svc.rep", 16)[0];
    l.conns[responder].fast = None; // requests carry a reply subject: general parser
    // A redis connection that subscribed may not publish: publish on separate ones.
    let (responder_out, requester_out) = match proto {
        Proto::Nats => (responder, requester),
        Proto::Redis => (l.publisher(b.addr), l.publisher(b.addr)),
    };
    let mut h = Histogram::<u64>::new(3).unwrap();
    let start = Instant::now();
    let warm = start + Duration::from_millis(500);
    let end = warm + Duration::from_secs_f64(secs);
    let request =
        |out: &mut Vec<u8>| pub_cmd(proto, "svc.req", Some("svc.rep"), &stamp(epoch, 16), out);
    let mut first = Vec::new();
    request(&mut first);
    l.conns[requester_out].out.extend_from_slice(&first);
    l.flush(requester_out);
    while Instant::now() < end {
        let mut to_send: Vec<(usize, Vec<u8>)> = Vec::new();
        l.turn(
            Duration::from_millis(100),
            &|_| true,
            &mut |i, _, _, payload, at| {
                let mut out = Vec::new();
                if i != responder && i != requester {
                    return; // redis: replies to PUBLISH
                }
                if i == responder {
                    // Echo it to the reply subject (redis: the agreed reply channel).
                    pub_cmd(proto, "svc.rep", None, payload, &mut out);
                    to_send.push((responder_out, out));
                } else {
                    if at >= warm {
                        let t = unstamp(payload).unwrap();
                        h.record((at.duration_since(epoch).as_nanos() as u64 - t).max(1))
                            .unwrap();
                    }
                    request(&mut out);
                    to_send.push((requester_out, out));
                }
            },
        );
        for (i, bytes) in to_send {
            l.conns[i].out.extend_from_slice(&bytes);
            l.flush(i);
        }
    }
    assert!(
        h.len() > 100,
        "{}: only {} round trips",
        b.kind.name(),
        h.len()
    );
    (
        h.value_at_quantile(0.5) as f64 / 1e3,
        h.value_at_quantile(0.99) as f64 / 1e3,
    )
}

/// Has the broker cut a slow consumer? From its own report where the socket cannot tell.
fn broker_says_cut(b: &Broker, baseline: &mut Option<u64>) -> bool {
    match b.kind {
        Kind::Heartloop | Kind::Heartloop2 => false,
        Kind::NatsServer | Kind::NatsServer2 => {
            let Some(n) = http_get(b.http.unwrap(), "/varz")
                .and_then(|body| json_u64(&body, "\"slow_consumers\":"))
            else {
                return false;
            };
            let base = *baseline.get_or_insert(n);
            n > base
        }
        Kind::Redis => {
            let Some(n) = redis_info(b.addr).and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("connected_clients:"))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            }) else {
                return false;
            };
            // Our admin connection counts too: publisher + 2 subscribers + admin = 4.
            let base = *baseline.get_or_insert(n);
            n < base
        }
    }
}

fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

fn json_u64(body: &str, key: &str) -> Option<u64> {
    let at = body.find(key)? + key.len();
    let digits: String = body[at..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

fn redis_info(addr: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"*2\r\n$4\r\nINFO\r\n$7\r\nclients\r\n").ok()?;
    let mut r = BufReader::new(s);
    let mut first = String::new();
    r.read_line(&mut first).ok()?;
    let n: usize = first.trim().strip_prefix('$')?.parse().ok()?;
    let mut body = vec![0; n + 2];
    r.read_exact(&mut body).ok()?;
    String::from_utf8(body).ok()
}

/// Publisher paced at 100k msgs/s of 128 B, one healthy and one stopped subscriber.
/// Returns (healthy's worst 1-second rate, seconds until the stopped one was cut).
fn slow_subscriber(b: &Broker, secs: f64) -> (f64, Option<f64>) {
    let mut l = Load::new(b.kind.proto());
    let healthy = l.subscribers(b.addr, 1, "bench.slow", 128)[0];
    let slow = l.subscribers(b.addr, 1, "bench.slow", 128)[0];
    let p = l.publisher(b.addr);
    let is_slow = move |i: usize| i != slow;
    let mut msg = Vec::new();
    pub_cmd(l.proto, "bench.slow", None, &[b's'; 128], &mut msg);
    let mut baseline = None;
    broker_says_cut(b, &mut baseline);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let per_ms = 100u64; // 100k/s
    let mut sent = 0u64;
    let mut cut_at = None;
    let mut last_check = start;
    let mut sec_start = (start, 0u64);
    let mut worst = f64::INFINITY;
    loop {
        let now = Instant::now();
        let due = (now.duration_since(start).as_micros() as u64 * per_ms) / 1000;
        while sent < due {
            l.conns[p].out.extend_from_slice(&msg);
            sent += 1;
        }
        l.flush(p);
        l.turn(Duration::from_millis(1), &is_slow, &mut |_, _, _, _, _| {});
        let now = Instant::now();
        if cut_at.is_none() {
            if l.conns[slow].closed {
                cut_at = Some(now.duration_since(start).as_secs_f64());
            } else if now.duration_since(last_check) >= Duration::from_millis(100) {
                last_check = now;
                if broker_says_cut(b, &mut baseline) {
                    cut_at = Some(now.duration_since(start).as_secs_f64());
                }
            }
        }
        if now.duration_since(sec_start.0) >= Duration::from_secs(1) {
            let got = l.conns[healthy].received - sec_start.1;
            worst = worst.min(got as f64 / now.duration_since(sec_start.0).as_secs_f64());
            sec_start = (now, l.conns[healthy].received);
        }
        if now >= end {
            break;
        }
    }
    (worst, cut_at)
}

// ------------------------------------------------------------------ main

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

const HELP: &str = "\
broker bench: the broker example against nats-server and redis pub/sub, side by side

usage: cargo bench -p heartloop-broker --bench broker [-- OPTIONS]

options:
  --rounds N       rounds, each running every scenario against every broker (default 3)
  --measure DUR    measured time per scenario, e.g. 3s (default 3s; slow_subscriber at
                   least 6s)
  --only NAME      only this scenario: fanout_100, fanout_1000, fanout_1000_paced,
                   request_reply, slow_subscriber
  --window N       fan-out: messages the publisher may be ahead of the slowest
                   subscriber (default 500 with 1,000 subscribers, 2,000 with 100)
  --brokers LIST   only these brokers, comma-separated: heartloop1, heartloop2
                   (1 and 2 reactors), nats1, nats2 (GOMAXPROCS=1 and 2), redis
                   (default: all)
  --bench          what `cargo bench` passes
  -h, --help       print this help
";

/// `(rounds, measured seconds, only, brokers, window)`.
type Args = (usize, f64, Option<String>, Option<String>, Option<u64>);

fn parse_args() -> Result<Args, lexopt::Error> {
    use lexopt::prelude::*;
    let (mut rounds, mut measure, mut only) = (3, Duration::from_secs(3), None);
    let mut brokers = None;
    let mut window = None;
    let mut p = lexopt::Parser::from_env();
    while let Some(arg) = p.next()? {
        match arg {
            Long("rounds") => rounds = p.value()?.parse()?,
            Long("measure") => measure = p.value()?.parse_with(opts::parse_duration)?,
            Long("only") => only = Some(p.value()?.string()?),
            Long("brokers") => brokers = Some(p.value()?.string()?),
            Long("window") => window = Some(p.value()?.parse()?),
            Long("bench") => {}
            Short('h') | Long("help") => opts::exit_help(HELP),
            _ => return Err(arg.unexpected()),
        }
    }
    Ok((rounds, measure.as_secs_f64(), only, brokers, window))
}

fn main() -> io::Result<()> {
    let (rounds, secs, only, brokers, window) =
        parse_args().unwrap_or_else(|e| opts::exit_usage("broker", e));
    // The load generator on core 1, the one-core brokers on core 0.
    if !pin::pin_thread(1) {
        eprintln!("could not pin the load generator to core 1");
    }
    let all = [
        Kind::Heartloop,
        Kind::Heartloop2,
        Kind::NatsServer,
        Kind::NatsServer2,
        Kind::Redis,
    ];
    if let Some(list) = &brokers
        && let Some(bad) = list.split(',').find(|b| !all.iter().any(|k| k.key() == *b))
    {
        opts::exit_usage("broker", format!("--brokers: unknown broker {bad:?}"));
    }
    let wanted = |k: Kind| {
        brokers
            .as_ref()
            .is_none_or(|l| l.split(',').any(|b| b == k.key()))
    };
    let mut kinds = Vec::new();
    for k in all.into_iter().filter(|&k| wanted(k)) {
        let prog = match k {
            Kind::NatsServer | Kind::NatsServer2 => "nats-server",
            Kind::Redis => "redis-server",
            _ => "",
        };
        if prog.is_empty() || which(prog).is_some() {
            kinds.push(k);
        } else {
            eprintln!("SKIPPED: {} (`apt-get install {prog}`)", k.name());
        }
    }
    let scenarios = [
        "fanout_100",
        "fanout_1000",
        "fanout_1000_paced",
        "request_reply",
        "slow_subscriber",
    ];
    // results[scenario][kind] = per-round values (up to two figures each)
    let mut res: HashMap<(&str, Kind), Vec<(f64, f64)>> = HashMap::new();
    for round in 0..rounds {
        for (si, sc) in scenarios.iter().enumerate() {
            if only.as_deref().is_some_and(|o| o != *sc) {
                continue;
            }
            let n = kinds.len();
            for k in 0..n {
                let kind = kinds[(k + round + si) % n]; // rotate the order
                let b = start(kind).expect("broker starts");
                let v = match *sc {
                    "fanout_100" => (fanout(&b, 100, secs, window), 0.0),
                    "fanout_1000" => (fanout(&b, 1000, secs, window), 0.0),
                    "fanout_1000_paced" => fanout_paced(&b, secs),
                    "request_reply" => request_reply(&b, secs),
                    _ => {
                        let (w, cut) = slow_subscriber(&b, secs.max(6.0));
                        (w, cut.unwrap_or(f64::NAN))
                    }
                };
                eprintln!(
                    "round {round} {sc:18} {:18} {:>12.1} {:>10.1}",
                    kind.name(),
                    v.0,
                    v.1
                );
                res.entry((sc, kind)).or_default().push(v);
            }
        }
    }
    // Ratios: (numerator, denominator, heading); shown when both ran.
    let ratios = [
        (
            Kind::Heartloop,
            Kind::NatsServer,
            "heartloop / nats-server, 1 core",
        ),
        (
            Kind::Heartloop2,
            Kind::NatsServer2,
            "heartloop / nats-server, 2 cores",
        ),
        (
            Kind::Heartloop2,
            Kind::Heartloop,
            "heartloop 2 reactors / 1",
        ),
        (
            Kind::NatsServer2,
            Kind::NatsServer,
            "nats-server 2 cores / 1",
        ),
    ];
    let ratios: Vec<_> = ratios
        .into_iter()
        .filter(|(a, b, _)| kinds.contains(a) && kinds.contains(b))
        .collect();
    println!(
        "\nMedians over {rounds} rounds; ratio columns: the median of the per-round ratios; \
         fan-out window: {}.",
        window.map_or("500 (1,000 subscribers) / 2,000 (100)".to_string(), |w| w
            .to_string())
    );
    let heads: Vec<&str> = kinds
        .iter()
        .map(|k| k.name())
        .chain(ratios.iter().map(|r| r.2))
        .collect();
    println!("\n| scenario | {} |", heads.join(" | "));
    println!("|---|{}", "---|".repeat(heads.len()));
    for sc in scenarios {
        let mut cells = Vec::new();
        for &k in &kinds {
            let Some(v) = res.get(&(sc, k)) else {
                cells.push("-".to_string());
                continue;
            };
            let mut a: Vec<f64> = v.iter().map(|x| x.0).collect();
            let mut b: Vec<f64> = v.iter().map(|x| x.1).collect();
            let (a, b) = (median(&mut a), median(&mut b));
            cells.push(match sc {
                "fanout_100" | "fanout_1000" => format!("{:.2} M msgs/s", a / 1e6),
                "fanout_1000_paced" | "request_reply" => format!("p50 {a:.0} µs, p99 {b:.0} µs"),
                _ => format!(
                    "worst 1 s {:.1} k/s, cut at {}",
                    a / 1e3,
                    if b.is_nan() {
                        "never".into()
                    } else {
                        format!("{b:.1} s")
                    }
                ),
            });
        }
        for &(num, den, _) in &ratios {
            let (Some(h), Some(n)) = (res.get(&(sc, num)), res.get(&(sc, den))) else {
                cells.push("-".to_string());
                continue;
            };
            let mut r0: Vec<f64> = h.iter().zip(n).map(|(h, n)| h.0 / n.0).collect();
            let mut r1: Vec<f64> = h.iter().zip(n).map(|(h, n)| h.1 / n.1).collect();
            let (r0, r1) = (median(&mut r0), median(&mut r1));
            // The goals of issue 14 for fan-out: >= 1.5x nats-server at equal cores, and
            // 2 reactors >= 1.7x one.
            let fan = sc.starts_with("fanout_") && sc != "fanout_1000_paced";
            let target = if !fan {
                ""
            } else if num.is_heartloop() && den.is_nats_server() {
                " (goal >= 1.5)"
            } else if (num, den) == (Kind::Heartloop2, Kind::Heartloop) {
                " (goal >= 1.7)"
            } else {
                ""
            };
            cells.push(match sc {
                "fanout_100" | "fanout_1000" => format!("{r0:.2}x{target}"),
                "fanout_1000_paced" | "request_reply" => format!("p50 {r0:.2}x, p99 {r1:.2}x"),
                _ => format!("worst-second rate {r0:.2}x"),
            });
        }
        println!("| {sc} | {} |", cells.join(" | "));
    }
    Ok(())
}
