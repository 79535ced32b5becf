//! Embedding: the same scenario driven three ways (owned loop, nested poll fd, hosted in
//! the host's mio::Poll) must yield the same events; handles from other threads; dropping
//! the reactor under live handles.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use heartloop::codec::{self, Kind};
use heartloop::{
    Cause, ConnConfig, Event, Framing, Heartbeat, OutboundConfig, OverflowPolicy, Reactor,
    ReactorConfig,
};

/// The timing test must not compete with the 4-producer test: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// One way of running a reactor turn.
trait Driver {
    fn reactor(&mut self) -> &mut Reactor;
    /// One turn, sleeping at most `max`.
    fn turn(&mut self, out: &mut Vec<Event>, max: Duration);
}

/// The reactor owns the loop.
struct Owned(Reactor);

impl Driver for Owned {
    fn reactor(&mut self) -> &mut Reactor {
        &mut self.0
    }
    fn turn(&mut self, out: &mut Vec<Event>, max: Duration) {
        self.0.poll(out, Some(max)).unwrap();
    }
}

/// A foreign loop on poll(2) watches the reactor's fd, honouring `next_timeout()`.
struct Nested(Reactor);

impl Driver for Nested {
    fn reactor(&mut self) -> &mut Reactor {
        &mut self.0
    }
    fn turn(&mut self, out: &mut Vec<Event>, max: Duration) {
        let sleep = self.0.next_timeout().map_or(max, |t| t.min(max));
        let ts = rustix::event::Timespec {
            tv_sec: sleep.as_secs() as _,
            tv_nsec: sleep.subsec_nanos() as _,
        };
        let mut fds = [rustix::event::PollFd::from_borrowed_fd(
            self.0.as_fd(),
            rustix::event::PollFlags::IN,
        )];
        let _ = rustix::event::poll(&mut fds, Some(&ts));
        self.0.poll(out, Some(Duration::ZERO)).unwrap();
    }
}

/// The host owns a mio::Poll; the reactor lives in a token range of it.
struct Hosted {
    poll: mio::Poll,
    events: mio::Events,
    r: Reactor,
}

impl Driver for Hosted {
    fn reactor(&mut self) -> &mut Reactor {
        &mut self.r
    }
    fn turn(&mut self, out: &mut Vec<Event>, max: Duration) {
        let sleep = self.r.next_timeout().map_or(max, |t| t.min(max));
        self.poll.poll(&mut self.events, Some(sleep)).unwrap();
        for ev in self.events.iter() {
            assert!(self.r.owns(ev.token()), "the host registered nothing else");
            self.r.handle_event(ev);
        }
        self.r.turn(out);
    }
}

fn owned() -> Owned {
    Owned(Reactor::new(ReactorConfig::default()).unwrap())
}

fn nested() -> Nested {
    Nested(Reactor::new(ReactorConfig::default()).unwrap())
}

fn hosted() -> Hosted {
    let poll = mio::Poll::new().unwrap();
    let r = Reactor::hosted(poll.registry(), mio::Token(1000), ReactorConfig::default()).unwrap();
    Hosted {
        poll,
        events: mio::Events::with_capacity(256),
        r,
    }
}

const TIMEOUT: Duration = Duration::from_millis(300);

/// Echo + heartbeat + a peer that goes silent without closing (the cable-less timeout).
/// Returns the normalized events and the time from the peer's last byte to the verdict.
fn scenario(d: &mut dyn Driver) -> (Vec<String>, Duration, Duration) {
    let cfg = ConnConfig::default()
        .framing(Framing::length_delimited(1024))
        .heartbeat(Heartbeat::new(Duration::from_millis(50), TIMEOUT));
    let l = d
        .reactor()
        .listen("127.0.0.1:0".parse().unwrap(), cfg)
        .unwrap();
    let addr = d.reactor().local_addr(l).unwrap();
    let (last_tx, last_rx) = mpsc::channel();
    let client = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        let mut echoed = Vec::new();
        let mut buf = bytes::BytesMut::new();
        for word in ["alpha", "beta", "gamma"] {
            s.write_all(&codec::encode(Kind::Data, word.as_bytes()))
                .unwrap();
            // Wait for the echo (skipping the reactor's pings: we never answer them).
            loop {
                match codec::decode(&mut buf, 1024).unwrap() {
                    codec::Decoded::Frame(Kind::Data, p) => {
                        echoed.push(String::from_utf8(p.to_vec()).unwrap());
                        break;
                    }
                    codec::Decoded::Frame(_, _) => continue,
                    _ => {
                        let mut chunk = [0u8; 512];
                        let n = s.read(&mut chunk).unwrap();
                        assert!(n > 0, "reactor closed early");
                        buf.extend_from_slice(&chunk[..n]);
                    }
                }
            }
        }
        // From now on: silent, but the socket stays open and keeps reading (pings).
        last_tx.send(Instant::now()).unwrap();
        let mut sink = [0u8; 512];
        while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
        echoed
    });

    let mut seen = Vec::new();
    let mut events = Vec::new();
    let end = Instant::now() + Duration::from_secs(10);
    let (verdict_at, silent_for) = 'run: loop {
        assert!(Instant::now() < end, "scenario did not finish: {seen:?}");
        d.turn(&mut events, Duration::from_millis(20));
        let at = Instant::now();
        for ev in events.drain(..) {
            match ev {
                Event::Accepted { .. } => seen.push("accepted".to_string()),
                Event::Data { conn, bytes } => {
                    seen.push(format!("data:{}", String::from_utf8_lossy(&bytes)));
                    d.reactor().send(conn, bytes).unwrap();
                }
                Event::Disconnected { cause, .. } => {
                    let Cause::HeartbeatTimeout { silent_for } = cause else {
                        panic!("expected a heartbeat timeout, got {cause:?}; {seen:?}")
                    };
                    seen.push("disconnected:heartbeat-timeout".to_string());
                    break 'run (at, silent_for);
                }
                other => seen.push(format!("{other:?}")),
            }
        }
    };
    let echoed = client.join().unwrap();
    assert_eq!(echoed, ["alpha", "beta", "gamma"]);
    let last = last_rx.recv().unwrap();
    (seen, verdict_at - last, silent_for)
}

#[test]
fn every_mode_yields_the_same_events_and_timeout_accuracy() {
    let _g = serial();
    let expected = [
        "accepted",
        "data:alpha",
        "data:beta",
        "data:gamma",
        "disconnected:heartbeat-timeout",
    ];
    let modes: [(&str, Box<dyn Driver>); 3] = [
        ("owned", Box::new(owned())),
        ("nested", Box::new(nested())),
        ("hosted", Box::new(hosted())),
    ];
    for (name, mut d) in modes {
        let (seen, detect, silent_for) = scenario(&mut *d);
        println!("{name}: detected {detect:?} after the last byte (silent_for {silent_for:?})");
        assert_eq!(seen, expected, "{name}");
        // The verdict is due at last byte + timeout (+ up to 10 ms coalescing slack).
        let err = detect.as_millis() as i64 - TIMEOUT.as_millis() as i64;
        assert!(
            err.abs() <= 50,
            "{name}: timeout off by {err} ms ({detect:?})"
        );
        assert!(
            silent_for >= TIMEOUT,
            "{name}: silent_for {silent_for:?} < timeout"
        );
    }
}

#[test]
fn four_producers_through_handles_arrive_in_order() {
    let _g = serial();
    const PRODUCERS: u32 = 4;
    const PER: u32 = 250_000;
    let mut r = Reactor::new(ReactorConfig::default()).unwrap();
    // Room for every message at once: 1,000,000 × (8 B + QUEUE_ENTRY_COST) ≈ 136 MB.
    let cfg = ConnConfig::default()
        .outbound(OutboundConfig::default().hard_limit(256 << 20, OverflowPolicy::Reject));
    let l = r.listen("127.0.0.1:0".parse().unwrap(), cfg).unwrap();
    let addr = r.local_addr(l).unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        let mut next = [0u32; PRODUCERS as usize];
        let mut buf = vec![0u8; 1 << 16];
        let mut carry = Vec::new();
        let total = (PRODUCERS * PER) as usize * 8;
        let mut got = 0;
        while got < total {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "closed after {got} bytes");
            got += n;
            carry.extend_from_slice(&buf[..n]);
            let whole = carry.len() / 8 * 8;
            for m in carry[..whole].chunks_exact(8) {
                let p = u32::from_be_bytes(m[..4].try_into().unwrap()) as usize;
                let seq = u32::from_be_bytes(m[4..].try_into().unwrap());
                assert_eq!(seq, next[p], "producer {p} out of order");
                next[p] += 1;
            }
            carry.drain(..whole);
        }
        next
    });
    let mut events = Vec::new();
    let conn = loop {
        r.poll(&mut events, Some(Duration::from_secs(5))).unwrap();
        if let Some(c) = events.iter().find_map(|e| match e {
            Event::Accepted { conn, .. } => Some(*conn),
            _ => None,
        }) {
            break c;
        }
    };
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let h = r.handle().unwrap();
            std::thread::spawn(move || {
                for seq in 0..PER {
                    let mut m = [0u8; 8];
                    m[..4].copy_from_slice(&p.to_be_bytes());
                    m[4..].copy_from_slice(&seq.to_be_bytes());
                    h.send(conn, Bytes::copy_from_slice(&m)).unwrap();
                }
            })
        })
        .collect();
    while !producers.iter().all(|p| p.is_finished()) || !reader.is_finished() {
        r.poll(&mut events, Some(Duration::from_millis(10)))
            .unwrap();
        // The reader hangs up once it has everything; nothing else may end it.
        for e in events.drain(..) {
            if let Event::Disconnected { cause, .. } = e {
                assert_eq!(cause, Cause::PeerClosed);
            }
        }
    }
    for p in producers {
        p.join().unwrap();
    }
    assert_eq!(reader.join().unwrap(), [PER; PRODUCERS as usize]);
    let s = r.stats();
    assert_eq!(s.handle_dropped, 0);
    assert_eq!(s.bytes_written, u64::from(PRODUCERS * PER) * 8);
}

#[test]
fn handle_commands_wake_a_sleeping_loop() {
    let _g = serial();
    let mut r = Reactor::new(ReactorConfig::default()).unwrap();
    let h = r.handle().unwrap();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        h.set_timer(Duration::ZERO, 42).unwrap();
    });
    let start = Instant::now();
    let mut events = Vec::new();
    while !events
        .iter()
        .any(|e| matches!(e, Event::Timer { tag: 42, .. }))
    {
        r.poll(&mut events, Some(Duration::from_secs(10))).unwrap();
        assert!(start.elapsed() < Duration::from_secs(5), "not woken");
    }
    t.join().unwrap();
    // Woken by the command, not by the 10 s timeout.
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn user_sources_are_delivered() {
    let _g = serial();
    let mut r = Reactor::new(ReactorConfig::default()).unwrap();
    let mut udp = mio::net::UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = udp.local_addr().unwrap();
    let id = r
        .register_source(&mut udp, mio::Interest::READABLE)
        .unwrap();
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .send_to(b"hi", addr)
        .unwrap();
    let mut events = Vec::new();
    let start = Instant::now();
    loop {
        r.poll(&mut events, Some(Duration::from_millis(100)))
            .unwrap();
        if events.iter().any(
            |e| matches!(e, Event::Source { id: s, readiness } if *s == id && readiness.readable),
        ) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "no source event");
    }
    let mut buf = [0u8; 8];
    assert_eq!(udp.recv_from(&mut buf).unwrap().0, 2);
    r.deregister_source(id, &mut udp).unwrap();
    assert!(
        r.deregister_source(id, &mut udp).is_err(),
        "stale source id"
    );
}

/// A timer set through a handle has an id: it fires with that id, and a handle (or the
/// loop, once applied) can cancel it.
#[test]
fn handle_timers_have_ids_that_fire_and_cancel() {
    let mut r = Reactor::new(ReactorConfig::default()).unwrap();
    let h = r.handle().unwrap();
    let (fires, cancelled, by_loop) = std::thread::spawn(move || {
        let fires = h.set_timer(Duration::from_millis(20), 1).unwrap();
        let cancelled = h.set_timer(Duration::from_millis(10), 2).unwrap();
        h.cancel_timer(cancelled).unwrap();
        let by_loop = h.set_timer(Duration::from_millis(10), 3).unwrap();
        (fires, cancelled, by_loop)
    })
    .join()
    .unwrap();
    assert!(fires != cancelled && cancelled != by_loop);
    let mut events = Vec::new();
    r.poll(&mut events, Some(Duration::ZERO)).unwrap(); // applies the commands
    assert!(
        r.cancel_timer(by_loop).is_ok(),
        "applied, so the loop can cancel it"
    );
    assert!(
        r.cancel_timer(cancelled).is_err(),
        "the handle cancelled it already"
    );
    let end = Instant::now() + Duration::from_secs(10);
    while !events.iter().any(|e| matches!(e, Event::Timer { .. })) {
        assert!(Instant::now() < end);
        r.poll(&mut events, Some(Duration::from_millis(50)))
            .unwrap();
    }
    r.poll(&mut events, Some(Duration::from_millis(30)))
        .unwrap();
    let timers: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Timer { id, tag } => Some((*id, *tag)),
            _ => None,
        })
        .collect();
    assert_eq!(timers, [(fires, 1)]);
}
