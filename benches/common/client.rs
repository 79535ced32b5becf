//! The one client every server is measured with: a single-threaded, edge-triggered mio
//! loop. It keeps a window of bytes in flight per connection, writes directly, reads until
//! drained, verifies every echoed byte, and stamps each message to take its round trip.
//!
//! Streams are a fixed pattern (period 251, a prime, offset per connection), so sending is
//! a slice of one static buffer and checking an echo is a `memcmp`.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

const PERIOD: usize = 251;
/// Largest slice written or checked at once.
const MAX_CHUNK: usize = 256 * 1024;
/// Client read buffer.
const RBUF: usize = 64 * 1024;
/// A run that makes no progress for this long is a broken server: fail loudly.
const STALL: Duration = Duration::from_secs(10);

fn pattern() -> &'static [u8] {
    static P: OnceLock<Vec<u8>> = OnceLock::new();
    P.get_or_init(|| {
        (0..PERIOD + MAX_CHUNK)
            .map(|i| (i % PERIOD) as u8)
            .collect()
    })
}

/// The `n` bytes (`n <= MAX_CHUNK`) at offset `off` of the stream with phase `salt`.
fn stream(off: u64, salt: usize, n: usize) -> &'static [u8] {
    let start = ((off % PERIOD as u64) as usize + salt) % PERIOD;
    &pattern()[start..start + n]
}

/// Check `got` against the stream at `off`; panics with the details on a mismatch.
fn verify(got: &[u8], off: u64, salt: usize, what: &str) {
    let mut done = 0;
    while done < got.len() {
        let n = (got.len() - done).min(MAX_CHUNK);
        let want = stream(off + done as u64, salt, n);
        if &got[done..done + n] != want {
            let i = (0..n).find(|&i| got[done + i] != want[i]).unwrap();
            panic!(
                "{what}: echoed byte at stream offset {} is {:#04x}, expected {:#04x}",
                off + (done + i) as u64,
                got[done + i],
                want[i]
            );
        }
        done += n;
    }
}

/// CPU time (ns) of one thread of this process, from its schedstat.
fn task_cpu_ns(tid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// This thread's id.
pub fn my_tid() -> String {
    let link = std::fs::read_link("/proc/thread-self").expect("/proc/thread-self");
    link.file_name().unwrap().to_string_lossy().into_owned()
}

/// CPU time (ns) of every thread of this process but the calling one: the servers, since
/// the idle ones cost nothing. Threads started after the first snapshot count from zero,
/// which they are close to; so take the last snapshot while all connections are open.
pub fn others_cpu_ns() -> u64 {
    let me = my_tid();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    dir.flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|t| *t != me)
        .map(|t| task_cpu_ns(&t))
        .sum()
}

/// Open `n` connections to `addr`, non-blocking, with `TCP_NODELAY`.
fn connect_all(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let s = std::net::TcpStream::connect(addr)
                .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
            s.set_nodelay(true).unwrap();
            s.set_nonblocking(true).unwrap();
            TcpStream::from_std(s)
        })
        .collect()
}

/// What to run against an echo server.
#[derive(Debug, Clone, Copy)]
pub struct EchoSpec {
    /// Connections.
    pub conns: usize,
    /// Message size in bytes.
    pub size: usize,
    /// Messages in flight per connection.
    pub inflight: usize,
    /// Time run before measuring (not recorded).
    pub warmup: Duration,
    /// Time measured.
    pub measure: Duration,
}

/// What one run measured.
#[derive(Debug)]
pub struct EchoResult {
    /// Round trips in ns.
    pub hist: Histogram<u64>,
    /// Messages echoed within the measured time.
    pub msgs: u64,
    /// Bytes echoed within the measured time.
    pub bytes: u64,
    /// The measured time.
    pub secs: f64,
    /// CPU time of the other threads (the server) within the measured time, ns.
    pub server_cpu_ns: u64,
}

impl EchoResult {
    /// Messages per second.
    pub fn rate(&self) -> f64 {
        self.msgs as f64 / self.secs
    }
    /// Echoed MB (10^6 bytes) per second, one direction.
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / self.secs / 1e6
    }
    /// Server CPU per message, ns.
    pub fn cpu_per_msg(&self) -> f64 {
        self.server_cpu_ns as f64 / self.msgs.max(1) as f64
    }
    /// A percentile of the round trip, µs.
    pub fn pct_us(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1e3
    }
}

struct EConn {
    sock: TcpStream,
    salt: usize,
    sent: u64,
    recvd: u64,
    /// Send times of the messages in flight, oldest first.
    stamps: VecDeque<Instant>,
    write_blocked: bool,
}

#[derive(PartialEq, Eq, PartialOrd, Ord, Clone, Copy)]
enum Phase {
    Warmup,
    Measure,
    Drain,
}

/// Ping-pong (or pipeline) against the echo server at `addr`. `what` names the run in
/// panics.
pub fn run_echo(addr: SocketAddr, spec: EchoSpec, what: &str) -> EchoResult {
    let mut poll = Poll::new().unwrap();
    let mut conns: Vec<EConn> = connect_all(addr, spec.conns)
        .into_iter()
        .enumerate()
        .map(|(i, mut sock)| {
            poll.registry()
                .register(&mut sock, Token(i), Interest::READABLE | Interest::WRITABLE)
                .unwrap();
            EConn {
                sock,
                salt: (i * 37) % PERIOD,
                sent: 0,
                recvd: 0,
                stamps: VecDeque::with_capacity(spec.inflight + 1),
                write_blocked: false,
            }
        })
        .collect();
    let size = spec.size as u64;
    let window = size * spec.inflight as u64;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    let mut rbuf = vec![0u8; RBUF];
    let mut events = Events::with_capacity(1024);
    let mut phase = Phase::Warmup;
    let start = Instant::now();
    let mut measure_start = start;
    let mut measure_end = start;
    let (mut recvd_total, mut recvd_at_start, mut recvd_at_end) = (0u64, 0u64, 0u64);
    let (mut cpu_at_start, mut cpu_at_end) = (0u64, 0u64);
    let mut last_progress = start;

    for c in conns.iter_mut() {
        send_window(c, window, size, what);
    }
    loop {
        let now = Instant::now();
        if phase == Phase::Warmup && now >= start + spec.warmup {
            phase = Phase::Measure;
            cpu_at_start = others_cpu_ns();
            measure_start = Instant::now();
            recvd_at_start = recvd_total;
            hist.reset();
        }
        if phase == Phase::Measure && now >= measure_start + spec.measure {
            phase = Phase::Drain;
            measure_end = now;
            recvd_at_end = recvd_total;
            cpu_at_end = others_cpu_ns();
        }
        if phase == Phase::Drain && conns.iter().all(|c| c.recvd == c.sent) {
            break;
        }
        assert!(
            now - last_progress < STALL,
            "{what}: no progress for {STALL:?}"
        );
        let timeout = match phase {
            Phase::Warmup => (start + spec.warmup).saturating_duration_since(now),
            Phase::Measure => (measure_start + spec.measure).saturating_duration_since(now),
            Phase::Drain => Duration::from_millis(100),
        };
        if let Err(e) = poll.poll(&mut events, Some(timeout.min(Duration::from_millis(100)))) {
            assert_eq!(e.kind(), io::ErrorKind::Interrupted, "{what}: poll: {e}");
        }
        for ev in events.iter() {
            let c = &mut conns[ev.token().0];
            if ev.is_writable() {
                c.write_blocked = false;
            }
            let got = read_echo(c, &mut rbuf, size, &mut hist, phase == Phase::Measure, what);
            if got > 0 {
                recvd_total += got;
                last_progress = Instant::now();
            }
            if phase != Phase::Drain {
                send_window(c, window, size, what);
            }
        }
    }
    // Shut down cleanly: everything was echoed, nothing unread.
    drop(conns);
    EchoResult {
        hist,
        msgs: (recvd_at_end - recvd_at_start) / size,
        bytes: recvd_at_end - recvd_at_start,
        secs: (measure_end - measure_start).as_secs_f64(),
        server_cpu_ns: cpu_at_end.saturating_sub(cpu_at_start),
    }
}

/// Keep `window` bytes in flight: write directly, stamping each message as it starts.
fn send_window(c: &mut EConn, window: u64, size: u64, what: &str) {
    while !c.write_blocked && c.sent - c.recvd < window {
        let n = ((window - (c.sent - c.recvd)) as usize).min(MAX_CHUNK);
        let now = Instant::now();
        match c.sock.write(stream(c.sent, c.salt, n)) {
            Ok(k) => {
                // Messages whose first byte went out in this write.
                let first = c.sent.div_ceil(size);
                let end = (c.sent + k as u64).div_ceil(size);
                for _ in first..end {
                    c.stamps.push_back(now);
                }
                c.sent += k as u64;
                if k < n {
                    c.write_blocked = true;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.write_blocked = true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("{what}: write: {e}"),
        }
    }
}

/// Read until drained, verify, record the round trip of every completed message. Returns
/// the bytes read.
fn read_echo(
    c: &mut EConn,
    rbuf: &mut [u8],
    size: u64,
    hist: &mut Histogram<u64>,
    record: bool,
    what: &str,
) -> u64 {
    let mut total = 0;
    // Nothing in flight: nothing can arrive (an echo sends nothing of its own).
    while c.recvd < c.sent {
        match c.sock.read(rbuf) {
            Ok(0) => panic!("{what}: server closed the connection"),
            Ok(n) => {
                let now = Instant::now();
                verify(&rbuf[..n], c.recvd, c.salt, what);
                let done_before = c.recvd / size;
                c.recvd += n as u64;
                for _ in done_before..c.recvd / size {
                    let t = c.stamps.pop_front().expect("stamp for every message");
                    if record {
                        hist.saturating_record((now - t).as_nanos() as u64);
                    }
                }
                total += n as u64;
                if n < rbuf.len() {
                    break; // a short read drained the socket
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("{what}: read: {e}"),
        }
    }
    total
}

// ---------------------------------------------------------------------------- fan-out

/// What to run against a fan-out server.
#[derive(Debug, Clone, Copy)]
pub struct FanoutSpec {
    /// Subscriber connections.
    pub subs: usize,
    /// Message size (the server cuts the publisher's stream into messages of this size).
    pub msg: usize,
    /// The publisher writes in batches of this many messages...
    pub batch: usize,
    /// ...and stays at most this many batches ahead of the slowest subscriber.
    pub window_batches: u64,
    /// Time run before measuring.
    pub warmup: Duration,
    /// Time measured.
    pub measure: Duration,
}

/// What one fan-out run measured.
#[derive(Debug)]
pub struct FanoutResult {
    /// Messages delivered (summed over subscribers) within the measured time.
    pub delivered: u64,
    /// The measured time.
    pub secs: f64,
    /// Server CPU within the measured time, ns.
    pub server_cpu_ns: u64,
}

impl FanoutResult {
    /// Messages delivered per second.
    pub fn rate(&self) -> f64 {
        self.delivered as f64 / self.secs
    }
    /// Server CPU per delivered message, ns.
    pub fn cpu_per_msg(&self) -> f64 {
        self.server_cpu_ns as f64 / self.delivered.max(1) as f64
    }
}

/// One publisher, `spec.subs` subscribers; the publisher keeps within
/// `spec.window_batches` batches of the slowest subscriber, so no server queues without
/// bound and a broadcast channel never lags.
pub fn run_fanout(
    publisher: SocketAddr,
    subscribers: SocketAddr,
    spec: FanoutSpec,
    what: &str,
) -> FanoutResult {
    const PUB: Token = Token(usize::MAX);
    const RING: usize = 8;
    assert!(spec.window_batches as usize <= RING / 2);
    let mut poll = Poll::new().unwrap();
    // Connect every subscriber and wait for its hello: it is registered with the server.
    let mut subs: Vec<(TcpStream, u64)> = (0..spec.subs)
        .map(|i| {
            let mut s = std::net::TcpStream::connect(subscribers)
                .unwrap_or_else(|e| panic!("{what}: connect subscriber {i}: {e}"));
            s.set_nodelay(true).unwrap();
            s.set_read_timeout(Some(STALL)).unwrap();
            let mut hello = [0u8; 1];
            s.read_exact(&mut hello)
                .unwrap_or_else(|e| panic!("{what}: hello: {e}"));
            assert_eq!(hello[0], super::servers::HELLO);
            s.set_nonblocking(true).unwrap();
            let mut s = TcpStream::from_std(s);
            poll.registry()
                .register(&mut s, Token(i), Interest::READABLE)
                .unwrap();
            (s, 0)
        })
        .collect();
    let mut publ = connect_all(publisher, 1).pop().unwrap();
    poll.registry()
        .register(&mut publ, PUB, Interest::WRITABLE)
        .unwrap();

    let batch = (spec.batch * spec.msg) as u64;
    let nsubs = spec.subs as u32;
    // Subscribers that have all of batch b, at [b % RING].
    let mut have = [0u32; RING];
    let mut done_batches = 0u64; // batches every subscriber has
    let mut sent = 0u64;
    let mut pub_blocked = false;
    let mut rbuf = vec![0u8; RBUF];
    let mut events = Events::with_capacity(1024);
    let mut phase = Phase::Warmup;
    let start = Instant::now();
    let (mut measure_start, mut measure_end) = (start, start);
    let (mut total, mut total_at_start, mut total_at_end) = (0u64, 0u64, 0u64);
    let (mut cpu_at_start, mut cpu_at_end) = (0u64, 0u64);
    let mut last_progress = start;
    loop {
        let now = Instant::now();
        if phase == Phase::Warmup && now >= start + spec.warmup {
            phase = Phase::Measure;
            cpu_at_start = others_cpu_ns();
            measure_start = Instant::now();
            total_at_start = total;
        }
        if phase == Phase::Measure && now >= measure_start + spec.measure {
            phase = Phase::Drain;
            measure_end = now;
            total_at_end = total;
            cpu_at_end = others_cpu_ns();
        }
        if phase == Phase::Drain && done_batches * batch >= sent {
            break;
        }
        assert!(
            now - last_progress < STALL,
            "{what}: no progress for {STALL:?}"
        );
        // Publish up to the window; when draining, only up to the end of the batch begun.
        let mut limit = (done_batches + spec.window_batches) * batch;
        if phase == Phase::Drain {
            limit = limit.min(sent.next_multiple_of(batch));
        }
        while !pub_blocked && sent < limit {
            let n = ((limit - sent) as usize).min(MAX_CHUNK);
            match publ.write(stream(sent, 0, n)) {
                Ok(k) => {
                    sent += k as u64;
                    pub_blocked = k < n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => pub_blocked = true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("{what}: publish: {e}"),
            }
        }
        let timeout = match phase {
            Phase::Warmup => (start + spec.warmup).saturating_duration_since(now),
            Phase::Measure => (measure_start + spec.measure).saturating_duration_since(now),
            Phase::Drain => Duration::from_millis(100),
        };
        if let Err(e) = poll.poll(&mut events, Some(timeout.min(Duration::from_millis(100)))) {
            assert_eq!(e.kind(), io::ErrorKind::Interrupted, "{what}: poll: {e}");
        }
        for ev in events.iter() {
            if ev.token() == PUB {
                pub_blocked = false;
                continue;
            }
            let (s, recvd) = &mut subs[ev.token().0];
            while *recvd < sent {
                match s.read(&mut rbuf) {
                    Ok(0) => panic!("{what}: server closed a subscriber"),
                    Ok(n) => {
                        verify(&rbuf[..n], *recvd, 0, what);
                        let before = *recvd / batch;
                        *recvd += n as u64;
                        total += n as u64;
                        for b in before..*recvd / batch {
                            have[(b % RING as u64) as usize] += 1;
                        }
                        if n < rbuf.len() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => panic!("{what}: subscriber read: {e}"),
                }
            }
            while have[(done_batches % RING as u64) as usize] == nsubs {
                have[(done_batches % RING as u64) as usize] = 0;
                done_batches += 1;
                last_progress = Instant::now();
            }
        }
    }
    drop(subs);
    drop(publ);
    FanoutResult {
        delivered: (total_at_end - total_at_start) / spec.msg as u64,
        secs: (measure_end - measure_start).as_secs_f64(),
        server_cpu_ns: cpu_at_end.saturating_sub(cpu_at_start),
    }
}
