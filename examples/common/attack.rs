//! What the two attackers share (`examples/attacker.rs` against the echo,
//! `examples/broker/src/bin/nats_attacker.rs` against the broker; included with
//! `#[path = ".../common/attack.rs"] mod attack;`): the pace, the report line, raw
//! connections, and connections that say something once and then stay silent.
#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

/// All attacks run in one thread, one pass every tick.
pub const TICK: Duration = Duration::from_millis(1);
/// A long-lived connection the server cut is replaced after this long.
pub const RECONNECT_AFTER: Duration = Duration::from_millis(100);

/// What one attack did, printed as `ATTACK <name> conns=.. connects=.. connect_failed=..
/// cut=.. bytes=.. <sent>=.. <answered>=.. mismatches=..`; the two named counts are the
/// attacker's own (the echo's: `frames` and `echoed`; the broker's: `msgs` and
/// `received`).
#[derive(Default)]
pub struct Report {
    pub name: &'static str,
    pub conns: usize,
    pub connects: u64,
    pub connect_failed: u64,
    pub cut: u64,
    pub bytes: u64,
    /// Operations sent (frames, PUBs, PINGs, garbage inputs).
    pub sent: u64,
    /// Answers read back and checked, or connections the server closed as it must.
    pub answered: u64,
    pub mismatches: u64,
    /// The names of `sent` and `answered` in the report line.
    pub labels: (&'static str, &'static str),
}

impl Report {
    pub fn new(name: &'static str, conns: usize, labels: (&'static str, &'static str)) -> Report {
        Report {
            name,
            conns,
            labels,
            ..Report::default()
        }
    }

    pub fn line(&self) -> String {
        format!(
            "ATTACK {} conns={} connects={} connect_failed={} cut={} bytes={} {}={} {}={} \
             mismatches={}",
            self.name,
            self.conns,
            self.connects,
            self.connect_failed,
            self.cut,
            self.bytes,
            self.labels.0,
            self.sent,
            self.labels.1,
            self.answered,
            self.mismatches
        )
    }
}

/// A nonblocking connection to `addr`, with a receive buffer of `rcvbuf` bytes if given
/// (set before connecting, so the window the server sees is small from the start).
pub fn connect(addr: SocketAddr, rcvbuf: Option<usize>) -> std::io::Result<TcpStream> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if let Some(n) = rcvbuf {
        s.set_recv_buffer_size(n)?;
    }
    s.set_tcp_nodelay(true)?;
    s.connect_timeout(&addr.into(), Duration::from_secs(2))?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// Whether the server ended this connection (EOF or error); what it sent is discarded.
pub fn gone(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 4096];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return true,
        }
    }
}

pub fn sleep_until(at: Instant) {
    if let Some(d) = at.checked_duration_since(Instant::now()) {
        std::thread::sleep(d);
    }
}

/// This process's CPU time (user, system) in ms, from /proc/self/stat.
pub fn cpu_ms() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // Linux reports clock ticks of 1/100 s (USER_HZ) on every platform we run on.
    let tick_ms = 10;
    (
        f.first().copied().unwrap_or(0) * tick_ms,
        f.get(1).copied().unwrap_or(0) * tick_ms,
    )
}

/// Connections that each write their prefix once and then stay silent; one the server
/// ends is counted as cut and replaced after [`RECONNECT_AFTER`]. Checked every 100 ms.
pub struct Idle {
    pub r: Report,
    addr: SocketAddr,
    prefixes: Vec<Vec<u8>>,
    socks: Vec<Option<TcpStream>>,
    retry: Vec<Option<Instant>>,
    next_check: Instant,
}

impl Idle {
    /// One connection per prefix, opened now.
    pub fn new(addr: SocketAddr, r: Report, prefixes: Vec<Vec<u8>>) -> Idle {
        let n = prefixes.len();
        let mut a = Idle {
            r,
            addr,
            prefixes,
            socks: Vec::with_capacity(n),
            retry: vec![None; n],
            next_check: Instant::now(),
        };
        // In batches of 64 a millisecond apart, so that the listen backlog never overflows.
        for i in 0..n {
            let s = a.open(i);
            a.socks.push(s);
            if i % 64 == 63 {
                std::thread::sleep(TICK);
            }
        }
        a
    }

    fn open(&mut self, i: usize) -> Option<TcpStream> {
        self.r.connects += 1;
        let p = &self.prefixes[i];
        match connect(self.addr, None).and_then(|mut s| s.write_all(p).map(|()| s)) {
            Ok(s) => {
                self.r.bytes += p.len() as u64;
                self.r.sent += 1;
                Some(s)
            }
            Err(_) => {
                self.r.connect_failed += 1;
                None
            }
        }
    }

    /// Count and replace the connections the server ended (every 100 ms).
    pub fn tick(&mut self, now: Instant) {
        if now < self.next_check {
            return;
        }
        self.next_check = now + Duration::from_millis(100);
        for i in 0..self.socks.len() {
            match &mut self.socks[i] {
                Some(sock) => {
                    if gone(sock) {
                        self.r.cut += 1;
                        self.socks[i] = None;
                        self.retry[i] = Some(now + RECONNECT_AFTER);
                    }
                }
                None => {
                    if self.retry[i].is_some_and(|t| now >= t) {
                        self.socks[i] = self.open(i);
                        self.retry[i] = self.socks[i].is_none().then_some(now + RECONNECT_AFTER);
                    }
                }
            }
        }
    }
}
