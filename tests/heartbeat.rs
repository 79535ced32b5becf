//! Heartbeats over loopback, end to end: no false verdicts after a stalled loop, no wakeups
//! while idle, silent and receive-only peers declared lost in time, `HeartbeatDue` pacing on
//! raw connections, Ping/Pong keeping two reactors alive, and pings that jump a data backlog.
//!
//! The timing logic itself (deadlines, coalescing) is unit-tested with made-up instants in
//! `src/heartbeat.rs`; these tests check the reactor's wiring over real sockets. Most run
//! in stepped time (a manual [`Clock`], see `tests/util`): the sockets are real, the clock
//! moves only when the test says so, and the assertions are exact (a verdict at the
//! deadline, none a millisecond before, `silent_for` equal to the timeout). A few stay in
//! real time as end-to-end proof, with real timeouts and generous margins: the loop's
//! sleeps and wakeups (`idle_reactor_sleeps_in_one_turn`,
//! `heartbeat_connection_wakes_only_for_pings_and_pongs`), a silent peer's timeout
//! (`silent_peer_is_heartbeat_timeout`) and a ping jumping a data backlog.
//!
//! Run: `cargo test --release -p heartloop-tests --test heartbeat`.

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use heartloop::codec::{HEADER_LEN, Kind};
use heartloop::{
    Cause, Clock, ConnConfig, ConnId, Event, Framing, Heartbeat, OutboundConfig, OverflowPolicy,
    Reactor, ReactorConfig,
};
use util::{
    SOCKET_WAIT, accept_at, advance, expect_event, listening, manual_reactor, ms, poll_for, settle,
    step, tcp_queues, turn, turn_until,
};

fn ld() -> Framing {
    Framing::length_delimited(1 << 20)
}

fn count(log: &[Event], pred: impl Fn(&Event) -> bool) -> usize {
    log.iter().filter(|e| pred(e)).count()
}

fn is_disconnect(e: &Event) -> bool {
    matches!(e, Event::Disconnected { .. })
}

/// Stepped time: a reactor on a manual clock listening on loopback with `cfg`.
fn stepped_listening(cfg: ConnConfig) -> (Reactor, Clock, SocketAddr) {
    let (mut r, clock) = manual_reactor(ReactorConfig::default());
    let l = r
        .listen("127.0.0.1:0".parse().unwrap(), cfg)
        .expect("listen");
    let addr = r.local_addr(l).expect("local_addr");
    (r, clock, addr)
}

/// Stepped time: turns (the clock standing still) until the listener accepted a connection.
#[track_caller]
fn stepped_accept(r: &mut Reactor, log: &mut Vec<Event>) -> ConnId {
    turn_until(r, log, "Accepted", |_, log| {
        log.iter().any(|e| matches!(e, Event::Accepted { .. }))
    });
    log.iter()
        .find_map(|e| match e {
            Event::Accepted { conn, .. } => Some(*conn),
            _ => None,
        })
        .unwrap()
}

/// Real time (a socket-level wait, not a tolerance) until `n` bytes wait unread in the
/// receive queue of the accepted socket of the listener at `listener`.
#[track_caller]
fn wait_unread(listener: SocketAddr, n: u64) {
    let end = Instant::now() + SOCKET_WAIT;
    while tcp_queues(listener).map(|(_, rx)| rx) != Some(n) {
        assert!(
            Instant::now() < end,
            "{n} bytes never waited in the receive queue: {:?}",
            tcp_queues(listener)
        );
        std::thread::sleep(ms(1));
    }
}

/// The `Disconnected` in `evs`, if any: `(conn, cause)`.
fn ended(evs: &[Event]) -> Option<(ConnId, Cause)> {
    evs.iter().find_map(|e| match e {
        Event::Disconnected { conn, cause } => Some((*conn, cause.clone())),
        _ => None,
    })
}

/// Stepped time: the owner is busy for 3x the heartbeat timeout between turns (the clock
/// jumps 900 ms without a turn) while a byte of the peer waits in the kernel, three times
/// over: no verdict, each byte delivered. Once the peer goes quiet the verdict comes
/// exactly one timeout after the turn that read its last byte, with `silent_for` equal to
/// the timeout, and not a millisecond earlier. (Was: real 900 ms sleeps, "no verdict".)
#[test]
fn stalled_loop_does_not_declare_a_sending_peer_lost() {
    let timeout = ms(300);
    let (mut r, clock, addr) =
        stepped_listening(ConnConfig::default().heartbeat(Heartbeat::new(ms(100), timeout)));
    let mut peer = TcpStream::connect(addr).expect("connect");
    let mut log = Vec::new();
    let conn = stepped_accept(&mut r, &mut log);
    let data = |log: &[Event]| count(log, |e| matches!(e, Event::Data { .. }));
    for round in 1..=3 {
        peer.write_all(b"x").unwrap(); // Raw framing: any byte is life
        wait_unread(addr, 1);
        // The owner was busy elsewhere: the clock moved 3 timeouts with no turn.
        advance(&mut r, &clock, timeout * 3, &mut log);
        turn_until(&mut r, &mut log, "the waiting byte", |_, log| {
            data(log) == round
        });
        assert!(r.is_open(conn), "round {round}: declared lost; {log:?}");
    }
    assert_eq!(ended(&log), None);
    // The turn right after the third stall read the last byte: the peer's clock starts there.
    let last_recv = clock.now();
    step(&mut r, &clock, timeout - ms(1), &mut log);
    assert!(r.is_open(conn), "declared lost before the timeout; {log:?}");
    let evs = advance(&mut r, &clock, ms(1), &mut log);
    assert_eq!(
        ended(&evs),
        Some((
            conn,
            Cause::HeartbeatTimeout {
                silent_for: timeout
            }
        )),
        "at last byte + {:?}; events {log:?}",
        clock.now() - last_recv
    );
    assert_eq!(r.stats().disconnects.heartbeat_timeout, 1);
}

/// Stepped time: the same three stalls with reading paused. The peer's bytes wait in the
/// kernel unread and still count as a sign of life (the reactor peeks before a verdict: the
/// waiting bytes grew). Once they stop growing, the verdict comes exactly one timeout after
/// the last look that found more, not a millisecond earlier. (Was: real 900 ms sleeps.)
#[test]
fn stalled_loop_with_paused_reading_does_not_declare_a_sending_peer_lost() {
    let timeout = ms(300);
    let (mut r, clock, addr) =
        stepped_listening(ConnConfig::default().heartbeat(Heartbeat::new(ms(100), timeout)));
    let mut peer = TcpStream::connect(addr).expect("connect");
    let mut log = Vec::new();
    let conn = stepped_accept(&mut r, &mut log);
    assert!(r.pause_reading(conn).is_ok());
    for round in 1..=3 {
        peer.write_all(b"x").unwrap();
        wait_unread(addr, round);
        advance(&mut r, &clock, timeout * 3, &mut log);
        settle(&mut r, &mut log);
        assert!(
            r.is_open(conn),
            "round {round}: paused peer declared lost; {log:?}"
        );
    }
    let last_look = clock.now();
    step(&mut r, &clock, timeout - ms(1), &mut log);
    assert!(r.is_open(conn), "declared lost before the timeout; {log:?}");
    let evs = advance(&mut r, &clock, ms(1), &mut log);
    assert_eq!(
        ended(&evs),
        Some((
            conn,
            Cause::HeartbeatTimeout {
                silent_for: timeout
            }
        )),
        "at last look + {:?}; events {log:?}",
        clock.now() - last_look
    );
    assert_eq!(r.stats().bytes_read, 0, "read while paused");
    assert_eq!(count(&log, |e| matches!(e, Event::Data { .. })), 0);
}

/// An empty reactor, and one with an idle listener, sleep through a 2 s poll in one turn:
/// no spurious wakeups.
#[test]
fn idle_reactor_sleeps_in_one_turn() {
    let empty = Reactor::new(ReactorConfig::default()).expect("reactor");
    let (with_listener, _addr) = listening(ConnConfig::default());
    for (what, mut r) in [("empty", empty), ("idle listener", with_listener)] {
        let before = r.stats().turns;
        let start = Instant::now();
        let mut evs = Vec::new();
        // Keep polling until 2 s passed: every early return is an extra turn.
        while let Some(left) = Duration::from_secs(2).checked_sub(start.elapsed()) {
            if left.is_zero() {
                break;
            }
            r.poll(&mut evs, Some(left)).expect("poll");
        }
        let turns = r.stats().turns - before;
        assert!(evs.is_empty(), "{what}: events {evs:?}");
        assert_eq!(turns, 1, "{what}: {turns} turns in 2 s of idleness");
    }
}

/// One connection with a 1 s heartbeat, whose peer only answers pings: over 3 s the loop
/// wakes for its pings and the peer's pongs, and not otherwise.
#[test]
fn heartbeat_connection_wakes_only_for_pings_and_pongs() {
    let cfg = ConnConfig::default()
        .framing(ld())
        .heartbeat(Heartbeat::new(
            Duration::from_secs(1),
            Duration::from_secs(5),
        ));
    let (mut r, addr) = listening(cfg);
    let peer = std::thread::spawn(move || {
        // Answer every ping with a pong until the reactor hangs up.
        let mut s = TcpStream::connect(addr).expect("connect");
        let mut hdr = [0u8; HEADER_LEN];
        let mut pongs = 0;
        while s.read_exact(&mut hdr).is_ok() {
            assert_eq!(hdr, [0, 0, 0, 0, Kind::Ping as u8], "only pings expected");
            s.write_all(&[0, 0, 0, 0, Kind::Pong as u8]).expect("pong");
            pongs += 1;
        }
        pongs
    });
    let mut log = Vec::new();
    let (conn, _) = accept_at(&mut r, &mut log);
    let before = r.stats();
    let start = Instant::now();
    let mut evs = Vec::new();
    while let Some(left) = Duration::from_secs(3).checked_sub(start.elapsed()) {
        if left.is_zero() {
            break;
        }
        r.poll(&mut evs, Some(left)).expect("poll");
    }
    let after = r.stats();
    let (turns, pings) = (after.turns - before.turns, after.pings - before.pings);
    assert!(evs.is_empty(), "events: {evs:?}");
    assert!(
        (2..=4).contains(&pings),
        "{pings} pings in 3 s at a 1 s interval"
    );
    // One turn per ping, one per pong, and the last turn that ends the 3 s.
    assert!(
        turns <= 2 * pings + 2,
        "{turns} turns for {pings} pings over 3 s: spurious wakeups"
    );
    let _ = r.close(conn);
    poll_for(&mut r, &mut log, ms(50));
    let pongs = peer.join().unwrap();
    assert_eq!(pongs, pings, "every ping reached the peer");
}

/// A peer that connects and never sends is declared lost after the timeout: not before
/// (`silent_for >= timeout`), and within timeout + 100 ms.
#[test]
fn silent_peer_is_heartbeat_timeout() {
    let timeout = ms(500);
    let (mut r, addr) = listening(
        ConnConfig::default()
            .framing(ld())
            .heartbeat(Heartbeat::new(ms(100), timeout)),
    );
    let s = TcpStream::connect(addr).expect("connect"); // never sends, never reads
    let mut log = Vec::new();
    let (conn, accepted) = accept_at(&mut r, &mut log);
    let (ev, at) = expect_event(
        &mut r,
        &mut log,
        Duration::from_secs(5),
        "Disconnected",
        is_disconnect,
    );
    let Event::Disconnected {
        conn: c,
        cause: Cause::HeartbeatTimeout { silent_for },
    } = ev
    else {
        panic!("expected a heartbeat timeout, got {ev:?}");
    };
    assert_eq!(c, conn);
    assert!(silent_for >= timeout, "declared lost after {silent_for:?}");
    let took = at - accepted;
    assert!(took >= timeout, "declared lost {took:?} after accept");
    assert!(
        took <= timeout + ms(100),
        "declared lost only {took:?} after accept"
    );
    drop(s);
}

/// Stepped-time twin of `silent_peer_is_heartbeat_timeout` (which stays in real time as the
/// end-to-end proof): pings leave exactly every interval (nothing a millisecond before),
/// and the verdict comes exactly at the timeout with `silent_for == timeout`.
#[test]
fn silent_peer_is_pinged_every_interval_and_lost_exactly_at_the_timeout() {
    let (interval, timeout) = (ms(100), ms(500));
    let (mut r, clock, addr) = stepped_listening(
        ConnConfig::default()
            .framing(ld())
            .heartbeat(Heartbeat::new(interval, timeout)),
    );
    let s = TcpStream::connect(addr).expect("connect"); // never sends, never reads
    let mut log = Vec::new();
    let conn = stepped_accept(&mut r, &mut log);
    for k in 1..=4u64 {
        step(&mut r, &clock, interval - ms(1), &mut log);
        assert_eq!(r.stats().pings, k - 1, "a ping before {k} intervals");
        advance(&mut r, &clock, ms(1), &mut log);
        assert_eq!(r.stats().pings, k, "no ping at {k} intervals");
        assert_eq!(r.stats().bytes_written, 5 * k, "the ping left in that turn");
    }
    step(&mut r, &clock, interval - ms(1), &mut log);
    assert!(r.is_open(conn), "lost before the timeout: {log:?}");
    let evs = advance(&mut r, &clock, ms(1), &mut log);
    assert_eq!(
        ended(&evs),
        Some((
            conn,
            Cause::HeartbeatTimeout {
                silent_for: timeout
            }
        )),
        "{log:?}"
    );
    assert_eq!(r.stats().pings, 4, "no ping in the turn of the verdict");
    drop(s);
}

/// Stepped time: a peer that reads everything we send every 10 ms but never sends anything
/// is declared lost just the same, our sending never postpones its deadline: it is probed
/// (`HeartbeatDue`) exactly at 100, 200, 300 and 400 ms, and lost exactly at the 500 ms
/// timeout with `silent_for == 500 ms`, having read every byte we sent. (Was: real time,
/// lost within timeout + 100 ms.)
#[test]
fn receive_only_peer_is_heartbeat_timeout() {
    let timeout = ms(500);
    let (mut r, clock, addr) =
        stepped_listening(ConnConfig::default().heartbeat(Heartbeat::new(ms(100), timeout)));
    let mut peer = TcpStream::connect(addr).expect("connect");
    peer.set_read_timeout(Some(SOCKET_WAIT)).unwrap();
    let mut log = Vec::new();
    let conn = stepped_accept(&mut r, &mut log);
    let t0 = clock.now();
    let (mut sent, mut got) = (0, 0);
    let mut buf = [0u8; 4096];
    let mut dues = Vec::new();
    let (cause, at) = loop {
        assert!(
            clock.now() - t0 < Duration::from_secs(5),
            "no verdict; {log:?}"
        );
        r.send(conn, Bytes::from_static(b"data")).expect("send");
        sent += 4;
        turn(&mut r, &mut log, Duration::ZERO); // flushes
        while got < sent {
            got += peer.read(&mut buf).expect("the peer reads");
        }
        let evs = advance(&mut r, &clock, ms(10), &mut log);
        let at = clock.now() - t0;
        if let Some((c, cause)) = ended(&evs) {
            assert_eq!((c, evs.len()), (conn, 1), "{evs:?}");
            break (cause, at);
        }
        match evs[..] {
            [] => {}
            [Event::HeartbeatDue { conn: c }] if c == conn => dues.push(at),
            _ => panic!("unexpected {evs:?}"),
        }
    };
    assert_eq!(dues, [ms(100), ms(200), ms(300), ms(400)], "probes");
    assert_eq!(
        cause,
        Cause::HeartbeatTimeout {
            silent_for: timeout
        }
    );
    assert_eq!(at, timeout, "lost at {at:?}");
    assert_eq!(got, sent, "the peer read everything");
}

/// Stepped time: on a Raw connection nothing sends pings for us. While we send nothing,
/// `HeartbeatDue` fires exactly once per interval (at 100, 200, ..., 1000 ms; nothing a
/// millisecond before); while we send every 20 ms and the peer echoes, never; once we stop,
/// exactly one interval after the last exchange. (A peer that stays silent while we stream
/// is probed: see the unit test `a_silent_peer_is_probed_while_we_stream`.) (Was: real
/// time, 5 to 10 in a second, gaps of at least 95 ms.)
#[test]
fn heartbeat_due_on_raw_follows_what_we_send() {
    let interval = ms(100);
    let (mut r, clock, addr) = stepped_listening(
        ConnConfig::default().heartbeat(Heartbeat::new(interval, Duration::from_secs(30))),
    );
    let mut peer = TcpStream::connect(addr).expect("connect"); // echoes, by hand below
    peer.set_read_timeout(Some(SOCKET_WAIT)).unwrap();
    let mut log = Vec::new();
    let conn = stepped_accept(&mut r, &mut log);
    let due = |evs: &[Event]| match evs {
        [] => false,
        [Event::HeartbeatDue { conn: c }] if *c == conn => true,
        _ => panic!("unexpected {evs:?}"),
    };

    // Quiet second: nothing crosses the sockets, so one turn per clock move suffices.
    for k in 1..=10 {
        let evs = advance(&mut r, &clock, interval - ms(1), &mut log);
        assert!(!due(&evs), "HeartbeatDue before {k} intervals");
        let evs = advance(&mut r, &clock, ms(1), &mut log);
        assert!(due(&evs), "no HeartbeatDue at {k} intervals");
    }

    // Busy second: a byte every 20 ms, echoed back; no ping is due.
    for echoed in 1..=50 {
        r.send(conn, Bytes::from_static(b"x")).expect("send");
        turn(&mut r, &mut log, Duration::ZERO); // flushes
        let mut b = [0u8; 1];
        peer.read_exact(&mut b).expect("the peer reads");
        peer.write_all(&b).expect("the peer echoes");
        turn_until(&mut r, &mut log, "the echo", |_, log| {
            count(log, |e| matches!(e, Event::Data { .. })) == echoed
        });
        let evs = advance(&mut r, &clock, ms(20), &mut log);
        assert!(!due(&evs), "HeartbeatDue while sending every 20 ms");
    }
    // Quiet again: due exactly one interval after the last exchange (20 ms ago).
    let evs = advance(&mut r, &clock, interval - ms(21), &mut log);
    assert!(!due(&evs), "HeartbeatDue early after the busy second");
    let evs = advance(&mut r, &clock, ms(1), &mut log);
    assert!(
        due(&evs),
        "no HeartbeatDue an interval after the last exchange"
    );
    assert_eq!(count(&log, |e| matches!(e, Event::HeartbeatDue { .. })), 11);
    drop(peer);
}

/// Stepped time, two reactors on one manual clock: turn both at the clock's standing time
/// until every byte either wrote has been read by the other and nothing is queued (pings
/// answered, pongs read). Zero round-trip time in the clock's terms.
#[track_caller]
fn exchange(a: &mut Reactor, alog: &mut Vec<Event>, b: &mut Reactor, blog: &mut Vec<Event>) {
    let end = Instant::now() + SOCKET_WAIT;
    let mut wait = Duration::ZERO;
    loop {
        turn(a, alog, wait);
        turn(b, blog, wait);
        let (sa, sb) = (a.stats(), b.stats());
        if sa.bytes_written == sb.bytes_read
            && sb.bytes_written == sa.bytes_read
            && sa.bytes_queued == 0
            && sb.bytes_queued == 0
        {
            return;
        }
        assert!(Instant::now() < end, "bytes still in flight: {sa:?} {sb:?}");
        wait = ms(1);
    }
}

/// Stepped time: two reactors joined by a length-delimited connection with heartbeat
/// 100 ms / 300 ms and no application traffic stay connected for 3 s: pings and pongs are
/// the only life, and suffice. The client, which connected 50 ms before the server
/// accepted, pings exactly every 100 ms and the server only answers (see the unit test
/// `answering_pings_makes_us_the_responder`): 30 pings and 30 pongs of 5 bytes, nothing
/// else. (Was: real time, at least 12 pings in 3 s.)
#[test]
fn ping_pong_keeps_two_reactors_alive() {
    let cfg = ConnConfig::default()
        .framing(ld())
        .heartbeat(Heartbeat::new(ms(100), ms(300)));
    let (mut server, clock, addr) = stepped_listening(cfg);
    let mut client = Reactor::with_clock(ReactorConfig::default(), clock.clone()).expect("reactor");
    let t0 = clock.now();
    client.connect(addr, cfg).expect("connect");
    let (mut slog, mut clog) = (Vec::new(), Vec::new());
    turn_until(&mut client, &mut clog, "Connected", |_, log| {
        count(log, |e| matches!(e, Event::Connected { .. })) == 1
    });
    clock.advance(ms(50));
    stepped_accept(&mut server, &mut slog);
    let mut client_pings = Vec::new();
    while clock.now() - t0 < Duration::from_secs(3) {
        clock.advance(ms(10));
        let before = client.stats().pings;
        exchange(&mut server, &mut slog, &mut client, &mut clog);
        if client.stats().pings > before {
            client_pings.push(clock.now() - t0);
        }
    }
    let every_100ms: Vec<Duration> = (1..=30).map(|k| ms(100 * k)).collect();
    assert_eq!(client_pings, every_100ms, "the client's pings");
    assert_eq!(server.stats().pings, 0, "the server only answers");
    assert_eq!(client.stats().pings, 30);
    assert_eq!(count(&slog, |e| matches!(e, Event::Accepted { .. })), 1);
    assert_eq!(count(&clog, |e| matches!(e, Event::Connected { .. })), 1);
    assert_eq!(count(&slog, is_disconnect), 0, "server: {slog:?}");
    assert_eq!(count(&clog, is_disconnect), 0, "client: {clog:?}");
    assert_eq!(slog.len(), 1, "server: {slog:?}");
    assert_eq!(clog.len(), 1, "client: {clog:?}");
    for (what, r) in [("server", &server), ("client", &client)] {
        let s = r.stats();
        assert_eq!(s.open_connections, 1, "{what}");
        assert_eq!((s.bytes_read, s.bytes_written), (150, 150), "{what}");
    }
}

/// Regression, stepped time: a peer that only answers pings (no heartbeat of its own)
/// while we stream to it every 10 ms without pause. "Ping when nothing was sent" alone
/// never pinged it, so it never answered and was declared lost while alive; a peer silent
/// for an interval is probed: exactly every 100 ms (each probe answered at once), 20 in
/// 2 s, and every one of the 200 messages arrives. (Was: real time, 5 to 25 probes.)
#[test]
fn a_peer_that_only_answers_pings_survives_our_stream() {
    let (mut server, clock, addr) = stepped_listening(
        ConnConfig::default()
            .framing(ld())
            .heartbeat(Heartbeat::new(ms(100), ms(300))),
    );
    let mut client = Reactor::with_clock(ReactorConfig::default(), clock.clone()).expect("reactor");
    client
        .connect(addr, ConnConfig::default().framing(ld()))
        .expect("connect");
    let (mut slog, mut clog) = (Vec::new(), Vec::new());
    let t0 = clock.now();
    let conn = stepped_accept(&mut server, &mut slog);
    turn_until(&mut client, &mut clog, "Connected", |_, log| {
        count(log, |e| matches!(e, Event::Connected { .. })) == 1
    });
    let mut probes = Vec::new();
    while clock.now() - t0 < Duration::from_secs(2) {
        clock.advance(ms(10));
        server
            .send(conn, Bytes::from_static(b"tick"))
            .expect("never silent");
        let before = server.stats().pings;
        exchange(&mut server, &mut slog, &mut client, &mut clog);
        if server.stats().pings > before {
            probes.push(clock.now() - t0);
        }
    }
    let every_100ms: Vec<Duration> = (1..=20).map(|k| ms(100 * k)).collect();
    assert_eq!(probes, every_100ms, "the probes");
    assert_eq!(count(&slog, is_disconnect), 0, "server: {slog:?}");
    assert_eq!(count(&clog, is_disconnect), 0, "client: {clog:?}");
    assert_eq!(count(&clog, |e| matches!(e, Event::Data { .. })), 200);
    assert_eq!(client.stats().pings, 0);
}

/// A ping queued while 4 MiB of data wait for a reader that stopped reading is not held
/// behind that backlog: it goes out at the next message boundary, so the reader meets it
/// among the first few hundred KiB (what the small kernel buffers held), not after 4 MiB.
#[test]
fn ping_is_not_held_behind_a_data_backlog() {
    const FRAME: usize = 64 * 1024;
    const FRAMES: usize = 64; // 4 MiB
    let cfg = ConnConfig::default()
        .framing(ld())
        .heartbeat(Heartbeat::new(ms(100), Duration::from_secs(30)))
        .send_buffer(64 * 1024)
        .outbound(
            OutboundConfig::watermarks(1 << 20, 8 << 20)
                .hard_limit(16 << 20, OverflowPolicy::Reject),
        );
    let (mut r, addr) = listening(cfg);
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let reader = std::thread::spawn(move || {
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.set_recv_buffer_size(64 * 1024).unwrap();
        sock.connect(&addr.into()).expect("connect");
        let mut s: TcpStream = sock.into();
        go_rx.recv().unwrap(); // a slow reader: reads nothing until told
        // Returns (data bytes read before the first ping, data frames, data bytes, socket).
        let mut first_ping_at = None;
        let (mut frames, mut data) = (0, 0usize);
        let mut hdr = [0u8; HEADER_LEN];
        let mut payload = vec![0u8; FRAME];
        while frames < FRAMES {
            s.read_exact(&mut hdr).expect("header");
            let len = u32::from_be_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) as usize;
            if hdr[4] == Kind::Ping as u8 {
                assert_eq!(len, 0);
                first_ping_at.get_or_insert(data);
                continue;
            }
            assert_eq!(
                (hdr[4], len),
                (Kind::Data as u8, FRAME),
                "after {data} bytes"
            );
            s.read_exact(&mut payload).expect("payload");
            assert!(
                payload.iter().all(|&b| b == frames as u8),
                "frame {frames} corrupt"
            );
            frames += 1;
            data += len;
        }
        // The socket goes back with the results, so it closes only after the checks.
        (first_ping_at, frames, data, s)
    });
    let mut log = Vec::new();
    let (conn, _) = accept_at(&mut r, &mut log);
    for i in 0..FRAMES {
        r.send(conn, Bytes::from(vec![i as u8; FRAME]))
            .expect("send");
    }
    // The reader does not read: the kernel buffers fill, writes stop, and after an interval
    // without sending a ping is due. Wait for it, then let the reader go.
    let pings0 = r.stats().pings;
    let start = Instant::now();
    while r.stats().pings == pings0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no ping; events {log:?}"
        );
        let mut evs = Vec::new();
        r.poll(&mut evs, Some(ms(10))).expect("poll");
        log.extend(evs);
    }
    let backlog = r.queued(conn).expect("open");
    assert!(
        backlog >= 3 << 20,
        "only {backlog} bytes queued when the ping was due"
    );
    go_tx.send(()).unwrap();
    let start = Instant::now();
    while !reader.is_finished() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "reader stuck; events {log:?}"
        );
        let mut evs = Vec::new();
        r.poll(&mut evs, Some(ms(10))).expect("poll");
        log.extend(evs);
    }
    let (first_ping_at, frames, data, _sock) = reader.join().unwrap();
    assert_eq!((frames, data), (FRAMES, FRAMES * FRAME));
    let at = first_ping_at.expect("no ping reached the reader before the data ended");
    assert!(
        at < 1 << 20,
        "the first ping came after {at} bytes of data: it waited behind the backlog \
         ({backlog} bytes queued when it was due)"
    );
    eprintln!("first ping after {at} of {data} data bytes ({backlog} queued when due)");
    assert_eq!(count(&log, is_disconnect), 0, "events {log:?}");
}

/// Server-led heartbeats, stepped time: a follower (`Heartbeat::answer_only`) never pings,
/// however long it is quiet; it answers every ping of the leader with a pong; the leader's
/// pings keep it from declaring the leader lost; when the pings stop, the verdict comes one
/// timeout after the last one, not earlier.
#[test]
fn an_answer_only_follower_never_pings_answers_and_expires_on_silence() {
    let timeout = ms(3000);
    let cfg = ConnConfig::default()
        .framing(ld())
        .heartbeat(Heartbeat::answer_only(timeout));
    let (mut r, clock, addr) = stepped_listening(cfg);
    let mut leader = TcpStream::connect(addr).expect("connect");
    leader.set_nonblocking(true).unwrap();
    let mut log = Vec::new();
    let conn = stepped_accept(&mut r, &mut log);
    let mut got = Vec::new();
    let drain = |leader: &mut TcpStream, got: &mut Vec<u8>| {
        let mut buf = [0u8; 256];
        while let Ok(n) = leader.read(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
    };
    // Quiet for just under the timeout, in 100 ms steps: not a byte from the follower.
    for _ in 0..29 {
        step(&mut r, &clock, ms(100), &mut log);
    }
    drain(&mut leader, &mut got);
    assert!(got.is_empty(), "the follower pinged: {got:?}");
    assert_eq!(r.stats().pings, 0);
    // The leader pings every second for five seconds (longer than the timeout): each
    // ping is answered by a pong, and the follower stays.
    let ping = [0, 0, 0, 0, Kind::Ping as u8];
    let pong = [0, 0, 0, 0, Kind::Pong as u8];
    for round in 1..=5 {
        leader.write_all(&ping).unwrap();
        turn_until(&mut r, &mut log, "the pong", |_, _| {
            drain(&mut leader, &mut got);
            got.len() == round * HEADER_LEN
        });
        assert_eq!(&got[got.len() - HEADER_LEN..], &pong, "round {round}");
        for _ in 0..10 {
            step(&mut r, &clock, ms(100), &mut log);
        }
        assert!(r.is_open(conn), "round {round}: declared lost; {log:?}");
    }
    assert_eq!(r.stats().pings, 0, "answering is not pinging");
    // The pings stop. The last one was read 1 s ago (5 × 100 ms steps after it... at the
    // turn of its pong): the verdict comes 3 s after that read, exactly.
    for _ in 0..19 {
        step(&mut r, &clock, ms(100), &mut log);
    }
    assert!(r.is_open(conn), "declared lost before the timeout; {log:?}");
    let evs = advance(&mut r, &clock, ms(100), &mut log);
    assert_eq!(
        ended(&evs),
        Some((
            conn,
            Cause::HeartbeatTimeout {
                silent_for: timeout
            }
        )),
        "{log:?}"
    );
    drain(&mut leader, &mut got);
    assert_eq!(got.len(), 5 * HEADER_LEN, "no ping from the follower, ever");
}
