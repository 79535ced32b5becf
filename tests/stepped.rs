//! Time handling of the reactor that looked wrong under stepped time (a manual [`Clock`]:
//! real sockets, a clock that moves only when the test says so; see `tests/util`).
//!
//! Each test states what the reactor should do; each failed on the reactor it was written
//! against (regression tests for the defects stepped time found).

mod util;

use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use heartloop::{
    Cause, ConnConfig, ConnId, Event, Framing, Heartbeat, OutboundConfig, OverflowPolicy, Reactor,
    ReactorConfig,
};
use util::{SOCKET_WAIT, manual_reactor, ms, settle, step, turn, turn_until};

/// A reactor on a manual clock listening on loopback with `cfg`, a peer socket connected
/// to it that reads nothing (64 KiB receive buffer; non-blocking), and the accepted
/// connection.
fn with_a_peer_that_does_not_read(
    cfg: ConnConfig,
) -> (Reactor, heartloop::Clock, ConnId, TcpStream, Vec<Event>) {
    let (mut r, clock) = manual_reactor(ReactorConfig::default());
    let l = r.listen("127.0.0.1:0".parse().unwrap(), cfg).unwrap();
    let addr: SocketAddr = r.local_addr(l).unwrap();
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(64 * 1024).unwrap();
    sock.connect(&addr.into()).unwrap();
    let peer: TcpStream = sock.into();
    peer.set_nonblocking(true).unwrap();
    let mut log = Vec::new();
    turn_until(&mut r, &mut log, "Accepted", |_, log| {
        log.iter().any(|e| matches!(e, Event::Accepted { .. }))
    });
    let conn = log[0].conn().unwrap();
    (r, clock, conn, peer, log)
}

/// A heartbeat deadline that comes due while the connection is closing (a lingering
/// close: flushing to a peer that does not read) finds nothing to do: the ping is not sent
/// (`may_ping` is false once closing) and nothing moves the connection's deadline, so
/// `expire_heartbeats` re-pushes the same past deadline. From then on every turn finds it
/// due again: `next_timeout()` is zero and the loop spins, a core at 100 %, until the
/// close ends (linger: 5 s by default) or the heartbeat timeout expires.
///
/// The same happens whenever a due heartbeat deadline is acted on with `Continue`: an
/// expired verdict suppressed because the peer's FIN was seen or read (`Closing { peer_eof:
/// true }`, or `Open { FinSeen }` while paused in half-close mode; see the next test). With
/// the system clock it is a busy loop: `poll(None)` after such a close made 210,882 turns
/// in one second (debug build).
#[test]
fn a_closing_connection_with_a_ping_due_does_not_make_the_loop_spin() {
    let cfg = ConnConfig::default()
        .framing(Framing::length_delimited(1 << 20))
        .heartbeat(Heartbeat::new(ms(100), Duration::from_secs(10)))
        .send_buffer(64 * 1024);
    let (mut r, clock, conn, _peer, mut log) = with_a_peer_that_does_not_read(cfg);
    r.send(conn, Bytes::from(vec![7u8; 1 << 20])).unwrap();
    settle(&mut r, &mut log);
    assert!(r.queued(conn).unwrap() > 0, "the kernel took everything");
    assert!(
        r.close(conn).is_ok(),
        "closing: flushing, bounded by linger (5 s)"
    );
    settle(&mut r, &mut log);
    assert!(r.next_timeout() > Some(Duration::ZERO));
    // The ping comes due 100 ms after the accept; the connection is closing.
    step(&mut r, &clock, ms(100), &mut log);
    assert!(r.is_open(conn));
    let pings = r.stats().pings;
    let turns = r.stats().turns;
    let t = Instant::now();
    for _ in 0..5 {
        turn(&mut r, &mut log, ms(20)); // nothing happens: each should sleep 20 ms
    }
    let slept = t.elapsed();
    println!(
        "next_timeout {:?}; 5 polls of up to 20 ms took {slept:?}; turns {}",
        r.next_timeout(),
        r.stats().turns - turns
    );
    assert_eq!(r.stats().pings, pings, "no ping while closing");
    assert!(
        r.next_timeout() > Some(Duration::ZERO),
        "next_timeout {:?} with nothing to do: the loop spins",
        r.next_timeout()
    );
    assert!(
        slept >= ms(100),
        "5 polls of 20 ms returned after {slept:?}"
    );
}

/// The other face of the spin above: an expired verdict that the lifecycle suppresses
/// (`Continue`: the peer's FIN was read while we flush a lingering close, so it cannot
/// prove itself alive) leaves the connection's deadline in the past, re-pushed as it was,
/// and every turn finds it due again.
#[test]
fn a_suppressed_heartbeat_verdict_does_not_make_the_loop_spin() {
    let cfg = ConnConfig::default()
        .framing(Framing::length_delimited(1 << 20))
        .heartbeat(Heartbeat::new(Duration::from_secs(10), ms(300)))
        .send_buffer(64 * 1024);
    let (mut r, clock, conn, peer, mut log) = with_a_peer_that_does_not_read(cfg);
    r.send(conn, Bytes::from(vec![7u8; 1 << 20])).unwrap();
    settle(&mut r, &mut log);
    assert!(r.close(conn).is_ok());
    peer.shutdown(std::net::Shutdown::Write).unwrap(); // its FIN; it still reads nothing
    settle(&mut r, &mut log);
    step(&mut r, &clock, ms(300), &mut log); // silent for the timeout: verdict suppressed
    assert!(r.is_open(conn), "a peer whose FIN was read gets no verdict");
    assert!(
        r.next_timeout() > Some(Duration::ZERO),
        "next_timeout {:?} with nothing to do: the loop spins",
        r.next_timeout()
    );
}

/// When linger runs out with bytes still queued, `Cause::SlowPeer::stalled_for` ("how long
/// the queue had made no progress") is the linger, whatever the queue did: without a stall
/// timeout `OutboundQueue::stalled` returns `None` and `expire_timers` falls back to
/// `c.cfg.linger` (with a stall timeout, it does so too whenever the stall is shorter than
/// that timeout). Here the peer takes bytes 10 ms before linger runs out, and the cause
/// says the queue had made no progress for 300 ms.
#[test]
fn slow_peer_after_linger_reports_the_real_stall() {
    const LINGER: Duration = Duration::from_millis(300);
    let out = OutboundConfig::watermarks(64 * 1024, 256 * 1024)
        .hard_limit(4 << 20, OverflowPolicy::Reject);
    let cfg = ConnConfig::default()
        .outbound(out)
        .linger(LINGER)
        .send_buffer(64 * 1024);
    let (mut r, clock, conn, mut peer, mut log) = with_a_peer_that_does_not_read(cfg);
    r.send(conn, Bytes::from(vec![7u8; 1 << 20])).unwrap();
    settle(&mut r, &mut log);
    assert!(r.close(conn).is_ok());
    step(&mut r, &clock, LINGER - ms(10), &mut log);
    // The peer reads what waits until the kernel takes more of our queue: progress, now.
    let (written, end) = (r.stats().bytes_written, Instant::now() + SOCKET_WAIT);
    let mut buf = vec![0u8; 256 * 1024];
    while r.stats().bytes_written == written {
        assert!(Instant::now() < end, "no progress after the peer read");
        match peer.read(&mut buf) {
            Ok(n) => assert!(n > 0),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => panic!("{e}"),
        }
        turn(&mut r, &mut log, ms(5));
    }
    settle(&mut r, &mut log);
    let queued = r.queued(conn).unwrap();
    assert!(queued > 0);
    let evs = step(&mut r, &clock, ms(10), &mut log);
    assert_eq!(
        evs,
        [Event::Disconnected {
            conn,
            cause: Cause::SlowPeer {
                queued,
                stalled_for: ms(10)
            }
        }],
        "the queue made progress 10 ms before linger ran out"
    );
}

/// Turns `a` and `b` (two reactors on one manual clock) at the clock's standing time until
/// every byte either wrote was read by the other, or neither can read more (a paused
/// reader): a socket-level wait.
fn exchange(a: &mut Reactor, alog: &mut Vec<Event>, b: &mut Reactor, blog: &mut Vec<Event>) {
    let end = Instant::now() + SOCKET_WAIT;
    let mut quiet = Duration::ZERO;
    while quiet < util::QUIET {
        assert!(Instant::now() < end, "never quiet");
        let (sa, sb) = (a.stats(), b.stats());
        let t = Instant::now();
        let n = turn(a, alog, ms(1)) + turn(b, blog, ms(1));
        let (na, nb) = (a.stats(), b.stats());
        let idle = n == 0
            && (
                na.bytes_read,
                na.bytes_written,
                nb.bytes_read,
                nb.bytes_written,
            ) == (
                sa.bytes_read,
                sa.bytes_written,
                sb.bytes_read,
                sb.bytes_written,
            );
        quiet = if idle {
            quiet + t.elapsed()
        } else {
            Duration::ZERO
        };
    }
}

/// While closing, the reactor stopped pinging (`may_ping` was false) but kept the heartbeat
/// verdict: a peer that speaks only when pinged (it answers pings, as a peer without a
/// heartbeat of its own does) falls silent because of the close, and the lingering close
/// to it ends as `HeartbeatTimeout` ("lost") one timeout after its last pong, though it is
/// taking our bytes and linger (5 s) has not run out. Open, the same slow reader stays
/// connected: the pings reach it between messages and it answers. The close should end
/// `Closed` once the peer has everything (or `SlowPeer` if linger runs out).
#[test]
fn a_lingering_close_to_a_slow_reader_that_answers_pings_is_not_a_heartbeat_timeout() {
    const MSGS: usize = 32;
    const MSG: usize = 64 * 1024;
    let ld = Framing::length_delimited(1 << 20);
    let cfg = ConnConfig::default()
        .framing(ld)
        .heartbeat(Heartbeat::new(ms(100), ms(1000)))
        .send_buffer(32 * 1024);
    let (mut server, clock) = manual_reactor(ReactorConfig::default());
    let l = server.listen("127.0.0.1:0".parse().unwrap(), cfg).unwrap();
    let addr = server.local_addr(l).unwrap();
    let mut client = Reactor::with_clock(ReactorConfig::default(), clock.clone()).expect("reactor");
    // The slow reader: 32 KiB per turn, one turn every 50 ms (640 KiB/s).
    let ccfg = ConnConfig::default()
        .framing(ld)
        .recv_buffer(32 * 1024)
        .read_budget(32 * 1024);
    let cconn = client.connect(addr, ccfg).unwrap();
    let (mut slog, mut clog) = (Vec::new(), Vec::new());
    turn_until(&mut server, &mut slog, "Accepted", |_, log| !log.is_empty());
    let conn = slog[0].conn().unwrap();
    turn_until(&mut client, &mut clog, "Connected", |_, log| {
        !log.is_empty()
    });
    let _ = client.pause_reading(cconn);
    let slow_read = |server: &mut Reactor,
                     slog: &mut Vec<Event>,
                     client: &mut Reactor,
                     clog: &mut Vec<Event>| {
        clock.advance(ms(50));
        let _ = client.resume_reading(cconn);
        turn(client, clog, Duration::ZERO); // one read pass of at most 32 KiB
        let _ = client.pause_reading(cconn);
        exchange(server, slog, client, clog);
    };
    for _ in 0..MSGS {
        server.send(conn, Bytes::from(vec![7u8; MSG])).unwrap();
    }
    // Open for 1.5 s, longer than the timeout: the slow reader answers the pings and stays
    // connected.
    for _ in 0..30 {
        slow_read(&mut server, &mut slog, &mut client, &mut clog);
    }
    assert!(
        server.is_open(conn),
        "open, a slow reader that answers pings is alive: {slog:?}"
    );
    assert!(server.stats().pings >= 5, "pings {}", server.stats().pings);
    assert!(
        server.queued(conn).unwrap() > 0,
        "drained: not the scenario"
    );
    // Now close: flush the rest, bounded by linger (5 s). The reader keeps its pace.
    let closed_at = clock.now();
    assert!(server.close(conn).is_ok());
    while server.is_open(conn) && clock.now() - closed_at <= Duration::from_secs(5) {
        slow_read(&mut server, &mut slog, &mut client, &mut clog);
    }
    let end = slog.iter().find_map(|e| match e {
        Event::Disconnected { cause, .. } => Some(cause.clone()),
        _ => None,
    });
    println!(
        "closing: ended {end:?} {:?} (clock) after close, the peer had read {} of {} bytes",
        clock.now() - closed_at,
        client.stats().bytes_read,
        MSGS * (MSG + 5)
    );
    // Everything reached the peer's kernel and our FIN followed. The peer here is a paused
    // reactor: it reports our FIN at once and drops its socket with our last bytes unread,
    // so its kernel may answer with a reset (`Reset`) rather than a FIN (`Closed`). Either
    // is the peer's doing; what must not happen is "lost" or "too slow".
    assert!(
        matches!(end, Some(Cause::Closed | Cause::Reset)),
        "the peer was taking our bytes: {end:?}"
    );
    assert!(
        server.stats().bytes_written >= (MSGS * (MSG + 5)) as u64,
        "not everything was written: {}",
        server.stats().bytes_written
    );
}

/// A close while the connect was still in progress started the linger timer at once
/// (`Step::Linger` in `Connecting { close_requested }`), so the linger (5 s by default)
/// runs out before the connect timeout (10 s by default) and a connection that never
/// connected ends as `SlowPeer { queued, stalled_for: 5 s }`: "the peer does not drain"
/// for a peer that was never reached. Its cause should say the connect did not complete.
#[test]
fn close_while_connecting_to_an_unreachable_peer_is_a_connect_timeout() {
    use socket2::{Domain, Socket, Type};
    // A listener that never accepts, with its accept queue full: our SYNs are dropped.
    let l = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    l.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    l.listen(0).unwrap();
    let addr = l.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    while let Ok(s) = TcpStream::connect_timeout(&addr, ms(250)) {
        fillers.push(s);
        assert!(fillers.len() < 16, "accept queue never filled up");
    }
    let (mut r, clock) = manual_reactor(ReactorConfig::default());
    let mut log = Vec::new();
    let conn = r.connect(addr, ConnConfig::default()).unwrap();
    r.send(conn, Bytes::from_static(b"GET / HTTP/1.0\r\n\r\n"))
        .unwrap();
    assert!(r.close(conn).is_ok(), "flushed once connected, then closed");
    let t0 = clock.now();
    while r.is_open(conn) && clock.now() - t0 < Duration::from_secs(20) {
        step(&mut r, &clock, Duration::from_secs(1), &mut log);
    }
    let end = log.iter().find_map(|e| match e {
        Event::Disconnected { cause, .. } => Some(cause.clone()),
        _ => None,
    });
    assert_eq!(
        end,
        Some(Cause::ConnectTimeout),
        "after {:?} (clock)",
        clock.now() - t0
    );
}

/// `write_stalled_for`: how long queued bytes have waited without the kernel taking any.
/// It grows, in stepped time, for a peer that reads nothing once the kernel's buffers are
/// full, and falls back to about zero once the peer reads and the next write progresses.
#[test]
fn write_stalled_for_tells_a_stopped_reader_from_a_draining_one() {
    let cfg = ConnConfig::default().send_buffer(16 * 1024);
    let (mut r, clock, conn, mut peer, mut log) = with_a_peer_that_does_not_read(cfg);
    assert_eq!(r.write_stalled_for(conn), None, "nothing queued");
    r.send(conn, bytes::Bytes::from(vec![1u8; 1 << 20]))
        .unwrap();
    // The kernel takes what fits; the rest waits.
    turn_until(&mut r, &mut log, "a partial write", |r, _| {
        r.queued(conn).is_some_and(|q| q < 1 << 20)
    });
    let waited = |r: &Reactor| r.write_stalled_for(conn).expect("bytes queued");
    assert!(waited(&r) < ms(1000));
    // Once the peer's receive buffer is full too (a few turns), nothing moves any more.
    for _ in 0..10 {
        step(&mut r, &clock, ms(1000), &mut log);
    }
    assert!(waited(&r) >= ms(5000), "{:?}", waited(&r));
    // The peer reads what it can: the next write makes progress and the clock restarts.
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0;
    turn_until(&mut r, &mut log, "progress after the peer read", |r, _| {
        use std::io::Read;
        while let Ok(n) = peer.read(&mut buf) {
            if n == 0 {
                break;
            }
            got += n;
        }
        r.write_stalled_for(conn).is_none_or(|d| d < ms(1000))
    });
    assert!(got > 0);
    r.abort(conn).unwrap();
    assert_eq!(r.write_stalled_for(conn), None, "a stale id");
}
