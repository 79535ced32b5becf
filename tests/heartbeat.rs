//! Heartbeats over loopback, end to end: no false verdicts after a stalled loop, no wakeups
//! while idle, silent and receive-only peers declared lost in time, `HeartbeatDue` pacing on
//! raw connections, Ping/Pong keeping two reactors alive, and pings that jump a data backlog.
//!
//! The timing logic itself (deadlines, coalescing) is unit-tested with made-up instants in
//! `src/heartbeat.rs`; these tests check the reactor's wiring over real sockets, with short
//! real timeouts and generous margins.
//!
//! Run: `cargo test --release --test heartbeat`.

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use heartloop::codec::{HEADER_LEN, Kind};
use heartloop::{
    Cause, ConnConfig, ConnId, Event, Framing, Heartbeat, OutboundConfig, OverflowPolicy, Reactor,
    ReactorConfig,
};
use util::{expect_event, poll_for};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn ld() -> Framing {
    Framing::length_delimited(1 << 20)
}

/// A reactor listening on loopback with `cfg`, and its address.
fn listening(cfg: ConnConfig) -> (Reactor, SocketAddr) {
    let mut r = Reactor::new(ReactorConfig::default()).expect("reactor");
    let l = r
        .listen("127.0.0.1:0".parse().unwrap(), cfg)
        .expect("listen");
    let addr = r.local_addr(l).expect("local_addr");
    (r, addr)
}

/// Polls until the listener accepted a connection; returns it and when the turn returned.
#[track_caller]
fn accept(r: &mut Reactor, log: &mut Vec<Event>) -> (ConnId, Instant) {
    let (ev, at) = expect_event(r, log, Duration::from_secs(10), "Accepted", |e| {
        matches!(e, Event::Accepted { .. })
    });
    (ev.conn().expect("conn"), at)
}

fn count(log: &[Event], pred: impl Fn(&Event) -> bool) -> usize {
    log.iter().filter(|e| pred(e)).count()
}

fn is_disconnect(e: &Event) -> bool {
    matches!(e, Event::Disconnected { .. })
}

/// The owner blocks for 3x the heartbeat timeout between polls while the peer keeps sending:
/// its bytes sit in the kernel and prove it alive, so no connection is declared lost.
#[test]
fn stalled_loop_does_not_declare_a_sending_peer_lost() {
    let timeout = ms(300);
    let (mut r, addr) =
        listening(ConnConfig::default().heartbeat(Heartbeat::new(ms(100), timeout)));
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let peer = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).expect("connect");
        // One byte every 10 ms until told to stop (Raw framing: any byte is life).
        while stop_rx.recv_timeout(ms(10)) == Err(mpsc::RecvTimeoutError::Timeout) {
            if s.write_all(b"x").is_err() {
                break;
            }
        }
    });
    let mut log = Vec::new();
    let (conn, _) = accept(&mut r, &mut log);
    for _ in 0..3 {
        poll_for(&mut r, &mut log, ms(50));
        std::thread::sleep(timeout * 3); // the owner is busy elsewhere
        let mut evs = Vec::new();
        r.poll(&mut evs, Some(Duration::ZERO)).expect("poll");
        log.extend(evs);
    }
    poll_for(&mut r, &mut log, ms(100));
    stop_tx.send(()).unwrap();
    peer.join().unwrap();
    assert!(r.is_open(conn), "peer declared lost; events: {log:?}");
    assert_eq!(
        r.stats().disconnects.heartbeat_timeout,
        0,
        "events: {log:?}"
    );
    assert!(count(&log, |e| matches!(e, Event::Data { .. })) > 0);
}

/// Same stall, but reading is paused: the peer's bytes wait in the kernel unread, and still
/// count as a sign of life (the reactor peeks before a verdict).
#[test]
fn stalled_loop_with_paused_reading_does_not_declare_a_sending_peer_lost() {
    let timeout = ms(300);
    let (mut r, addr) =
        listening(ConnConfig::default().heartbeat(Heartbeat::new(ms(100), timeout)));
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let peer = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).expect("connect");
        while stop_rx.recv_timeout(ms(10)) == Err(mpsc::RecvTimeoutError::Timeout) {
            if s.write_all(b"x").is_err() {
                break;
            }
        }
    });
    let mut log = Vec::new();
    let (conn, _) = accept(&mut r, &mut log);
    assert!(r.pause_reading(conn));
    for _ in 0..3 {
        poll_for(&mut r, &mut log, ms(50));
        std::thread::sleep(timeout * 3);
        let mut evs = Vec::new();
        r.poll(&mut evs, Some(Duration::ZERO)).expect("poll");
        log.extend(evs);
    }
    stop_tx.send(()).unwrap();
    peer.join().unwrap();
    assert!(
        r.is_open(conn),
        "paused peer declared lost; events: {log:?}"
    );
    assert_eq!(r.stats().disconnects.heartbeat_timeout, 0);
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
    let (conn, _) = accept(&mut r, &mut log);
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
    r.close(conn);
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
    let (conn, accepted) = accept(&mut r, &mut log);
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

/// A peer that reads everything we send every 10 ms but never sends anything is declared
/// lost just the same: our sending never postpones its deadline.
#[test]
fn receive_only_peer_is_heartbeat_timeout() {
    let timeout = ms(500);
    let (mut r, addr) =
        listening(ConnConfig::default().heartbeat(Heartbeat::new(ms(100), timeout)));
    let peer = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).expect("connect");
        let mut buf = [0u8; 4096];
        let mut got = 0;
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            got += n;
        }
        got
    });
    let mut log = Vec::new();
    let (conn, accepted) = accept(&mut r, &mut log);
    let mut evs = Vec::new();
    let mut sent = 0;
    let (cause, at) = 'outer: loop {
        assert!(
            accepted.elapsed() < Duration::from_secs(5),
            "no verdict; events {log:?}"
        );
        if r.send(conn, Bytes::from_static(b"data")).is_ok() {
            sent += 4;
        }
        r.poll(&mut evs, Some(ms(10))).expect("poll");
        let now = Instant::now();
        for ev in evs.drain(..) {
            if let Event::Disconnected { cause, .. } = ev {
                break 'outer (cause, now);
            }
        }
    };
    let Cause::HeartbeatTimeout { silent_for } = cause else {
        panic!("expected a heartbeat timeout, got {cause:?}");
    };
    assert!(silent_for >= timeout);
    let took = at - accepted;
    assert!(
        took <= timeout + ms(100),
        "declared lost only {took:?} after accept"
    );
    let got = peer.join().unwrap();
    assert!(
        got >= 4 * 20 && got <= sent,
        "peer read {got} of {sent} bytes"
    );
}

/// On a Raw connection nothing sends pings for us: `HeartbeatDue` fires about once per
/// interval while we send nothing (never more often), and not at all while we send often
/// and the peer answers (a peer that stays silent while we stream is probed: see the
/// unit test `a_silent_peer_is_probed_while_we_stream`).
#[test]
fn heartbeat_due_on_raw_follows_what_we_send() {
    let interval = ms(100);
    let (mut r, addr) = listening(
        ConnConfig::default().heartbeat(Heartbeat::new(interval, Duration::from_secs(30))),
    );
    let peer = std::thread::spawn(move || {
        // Echoes what it gets: silent while we are.
        let mut s = TcpStream::connect(addr).expect("connect");
        let mut buf = [0u8; 4096];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 || s.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    let mut log = Vec::new();
    let (conn, _) = accept(&mut r, &mut log);

    // Quiet second: count HeartbeatDue and the gaps between them.
    let mut dues = Vec::new();
    let start = Instant::now();
    let mut evs = Vec::new();
    while start.elapsed() < Duration::from_secs(1) {
        r.poll(&mut evs, Some(ms(1000).saturating_sub(start.elapsed())))
            .expect("poll");
        let now = Instant::now();
        for ev in evs.drain(..) {
            match ev {
                Event::HeartbeatDue { conn: c } if c == conn => dues.push(now),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert!(
        (5..=10).contains(&dues.len()),
        "{} HeartbeatDue in 1 s at a 100 ms interval",
        dues.len()
    );
    let min_gap = dues.windows(2).map(|w| w[1] - w[0]).min().unwrap();
    assert!(
        min_gap >= ms(95),
        "HeartbeatDue {min_gap:?} after the previous one"
    );

    // Busy second: a byte every 20 ms, echoed back; no ping is due.
    let start = Instant::now();
    let mut busy_dues = 0;
    while start.elapsed() < Duration::from_secs(1) {
        r.send(conn, Bytes::from_static(b"x")).expect("send");
        r.poll(&mut evs, Some(ms(20))).expect("poll");
        busy_dues += count(&evs, |e| matches!(e, Event::HeartbeatDue { .. }));
        evs.clear();
    }
    assert_eq!(busy_dues, 0, "HeartbeatDue while sending every 20 ms");
    r.close(conn);
    poll_for(&mut r, &mut log, ms(50));
    peer.join().unwrap();
}

/// Two reactors joined by a length-delimited connection with heartbeat 100 ms / 300 ms and
/// no application traffic stay connected for 3 s: pings and pongs are the only life, and
/// suffice.
#[test]
fn ping_pong_keeps_two_reactors_alive() {
    let cfg = ConnConfig::default()
        .framing(ld())
        .heartbeat(Heartbeat::new(ms(100), ms(300)));
    let (mut server, addr) = listening(cfg);
    let mut client = Reactor::new(ReactorConfig::default()).expect("reactor");
    client.connect(addr, cfg).expect("connect");
    let (mut slog, mut clog) = (Vec::new(), Vec::new());
    let mut evs = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        server.poll(&mut evs, Some(ms(5))).expect("poll");
        slog.append(&mut evs);
        client.poll(&mut evs, Some(ms(5))).expect("poll");
        clog.append(&mut evs);
    }
    assert_eq!(count(&slog, |e| matches!(e, Event::Accepted { .. })), 1);
    assert_eq!(count(&clog, |e| matches!(e, Event::Connected { .. })), 1);
    assert_eq!(count(&slog, is_disconnect), 0, "server: {slog:?}");
    assert_eq!(count(&clog, is_disconnect), 0, "client: {clog:?}");
    assert_eq!(count(&slog, |e| matches!(e, Event::Data { .. })), 0);
    for (what, r) in [("server", &server), ("client", &client)] {
        let s = r.stats();
        assert_eq!(s.open_connections, 1, "{what}");
        assert!(s.bytes_read > 0, "{what}");
    }
    // One side pings every ~100 ms and the other answers (see the unit test
    // `answering_pings_makes_us_the_responder`): at least a dozen in 3 s even on a busy
    // machine.
    let (sp, cp) = (server.stats().pings, client.stats().pings);
    println!("pings: server {sp}, client {cp}");
    assert!(sp + cp >= 12, "only {} pings in 3 s", sp + cp);
}

/// Regression: a peer that only answers pings (no heartbeat of its own) while we stream
/// to it without pause. "Ping when nothing was sent" alone never pinged it, so it never
/// answered and was declared lost while alive; a peer silent for an interval is probed.
#[test]
fn a_peer_that_only_answers_pings_survives_our_stream() {
    let (mut server, addr) = listening(
        ConnConfig::default()
            .framing(ld())
            .heartbeat(Heartbeat::new(ms(100), ms(300))),
    );
    let mut client = Reactor::new(ReactorConfig::default()).expect("reactor");
    client
        .connect(addr, ConnConfig::default().framing(ld()))
        .expect("connect");
    let (mut slog, mut clog) = (Vec::new(), Vec::new());
    let mut evs = Vec::new();
    let mut conn = None;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        server.poll(&mut evs, Some(ms(5))).expect("poll");
        conn = conn.or(evs.iter().find_map(|e| match e {
            Event::Accepted { conn, .. } => Some(*conn),
            _ => None,
        }));
        slog.append(&mut evs);
        if let Some(c) = conn {
            let _ = server.send(c, Bytes::from_static(b"tick")); // never silent
        }
        client.poll(&mut evs, Some(ms(5))).expect("poll");
        clog.append(&mut evs);
    }
    assert_eq!(
        count(&slog, is_disconnect),
        0,
        "server: {:?}",
        slog.iter().filter(|e| is_disconnect(e)).collect::<Vec<_>>()
    );
    assert_eq!(count(&clog, is_disconnect), 0, "client");
    assert!(count(&clog, |e| matches!(e, Event::Data { .. })) > 100);
    let pings = server.stats().pings;
    assert!(
        (5..=25).contains(&pings),
        "{pings} probes in 2 s at a 100 ms interval"
    );
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
    let (conn, _) = accept(&mut r, &mut log);
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
