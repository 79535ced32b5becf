//! Regression tests for defects found in review. Each test states the correct behaviour;
//! every one of them failed on the code it was written against.
//!
//! Peers are plain std sockets on 127.0.0.1 (in the test thread or a thread of their
//! own); timeouts are short and real, with wide margins for a busy machine.

mod util;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use heartloop::{
    Cause, ConnConfig, ConnId, Event, Framing, Heartbeat, Reactor, ReactorConfig, SendError,
};
use util::{accept, expect_event, listening, ms, poll_until};

/// Generous wait for things that are not timed: accepts, connects, reads.
const WAIT: Duration = Duration::from_secs(10);

fn local() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn is_end_of(conn: ConnId) -> impl Fn(&Event) -> bool {
    move |e| matches!(e, Event::Disconnected { conn: c, .. } if *c == conn)
}

fn cause_of(ev: &Event) -> Cause {
    match ev {
        Event::Disconnected { cause, .. } => cause.clone(),
        other => panic!("not a Disconnected: {other:?}"),
    }
}

/// The payloads of the `Data` frames (kind 0) in a length-delimited byte stream.
fn data_frames(mut wire: &[u8]) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    while wire.len() >= 5 {
        let len = u32::from_be_bytes([wire[0], wire[1], wire[2], wire[3]]) as usize;
        if wire.len() < 5 + len {
            break;
        }
        if wire[4] == 0 {
            frames.push(wire[5..5 + len].to_vec());
        }
        wire = &wire[5 + len..];
    }
    frames
}

const PAYLOAD: &[u8; 10] = b"0123456789";

/// The peer writes `PAYLOAD`, then aborts (`SO_LINGER` 0: a reset right behind the data),
/// and we give the reset time to arrive.
fn write_then_reset(mut s: TcpStream) {
    s.write_all(PAYLOAD).unwrap();
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
    std::thread::sleep(ms(100));
}

/// Defect: on error readiness the reactor asked `SO_ERROR` before reading, so a peer that
/// sent 10 bytes and then reset ended as `Reset` with its bytes thrown away, although
/// Linux still hands them over (checked first with plain std sockets: 10 bytes, then
/// `ECONNRESET`). The bytes must arrive as `Data` before `Disconnected { Reset }`.
#[test]
fn data_sent_just_before_a_reset_is_delivered_before_the_reset() {
    // What the kernel does, with plain sockets.
    let l = TcpListener::bind(local()).unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (mut s, _) = l.accept().unwrap();
    write_then_reset(c);
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 64];
    let n = s
        .read(&mut buf)
        .expect("Linux hands over the bytes in front of a reset");
    assert_eq!(&buf[..n], PAYLOAD);
    let e = s.read(&mut buf).expect_err("then the reset");
    assert_eq!(e.kind(), ErrorKind::ConnectionReset);

    // The reactor, which must not have read before the reset arrived.
    let (mut r, addr) = listening(ConnConfig::default());
    let mut log = Vec::new();
    let client = TcpStream::connect(addr).unwrap();
    let conn = accept(&mut r, &mut log);
    write_then_reset(client);
    let (ev, _) = expect_event(&mut r, &mut log, WAIT, "Disconnected", is_end_of(conn));
    assert_eq!(cause_of(&ev), Cause::Reset, "{log:?}");
    let got: Vec<u8> = log
        .iter()
        .filter_map(|e| match e {
            Event::Data { conn: c, bytes } if *c == conn => Some(bytes.to_vec()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(
        got, PAYLOAD,
        "the bytes sent just before the reset were not delivered; events: {log:?}"
    );
}

/// A host that owns a `mio::Poll` with a hosted reactor in it.
struct Host {
    poll: mio::Poll,
    evs: mio::Events,
    r: Reactor,
}

impl Host {
    /// Hand the reactor its events of the last host poll, then finish the turn.
    fn hand_over(&mut self, out: &mut Vec<Event>) {
        for ev in self.evs.iter() {
            if self.r.owns(ev.token()) {
                self.r.handle_event(ev);
            }
        }
        self.r.turn(out);
    }

    /// One host turn, sleeping at most `max`.
    fn turn(&mut self, out: &mut Vec<Event>, max: Duration) {
        let sleep = self.r.next_timeout().map_or(max, |t| t.min(max));
        self.poll.poll(&mut self.evs, Some(sleep)).unwrap();
        self.hand_over(out);
    }

    /// Host turns for `d`.
    fn run_for(&mut self, out: &mut Vec<Event>, d: Duration) {
        let end = Instant::now() + d;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            self.turn(out, left.min(ms(20)));
        }
    }
}

/// Defect: mio tokens carry no generation. A host polled an event for connection A (its
/// peer's FIN), then, before handing it over, closed A and connected B, which took A's
/// slot and token; the old event then marked B as having seen its peer's FIN, and B was
/// later ended as `PeerClosed` (here by flow control toggled within a turn: the resume
/// queues B for a read, the re-pause finds it there) although B's peer never closed.
/// B must stay open and keep exchanging data.
#[test]
fn stale_event_for_a_freed_slot_never_reaches_the_new_connection() {
    let poll = mio::Poll::new().unwrap();
    let r = Reactor::hosted(
        poll.registry(),
        mio::Token(1 << 20),
        ReactorConfig::default(),
    )
    .unwrap();
    let evs = mio::Events::with_capacity(64);
    let mut h = Host { poll, evs, r };
    let l = h.r.listen(local(), ConnConfig::default()).unwrap();
    let addr = h.r.local_addr(l).unwrap();
    let mut out = Vec::new();

    let peer_a = TcpStream::connect(addr).unwrap();
    let deadline = Instant::now() + WAIT;
    let a = loop {
        assert!(Instant::now() < deadline, "A not accepted; events: {out:?}");
        h.turn(&mut out, ms(50));
        if let Some(c) = out.iter().find_map(|e| match e {
            Event::Accepted { conn, .. } => Some(*conn),
            _ => None,
        }) {
            break c;
        }
    };

    // A's peer finishes sending; the host polls until it holds A's read-closed event,
    // handing every earlier batch over as usual.
    peer_a.shutdown(Shutdown::Write).unwrap();
    loop {
        assert!(Instant::now() < deadline, "no read-closed event for A");
        h.poll.poll(&mut h.evs, Some(ms(50))).unwrap();
        if h.evs
            .iter()
            .any(|e| h.r.owns(e.token()) && e.is_read_closed())
        {
            break;
        }
        h.hand_over(&mut out);
    }

    // Before handing that batch over, the host closes A and connects B.
    assert!(h.r.close(a).is_ok());
    let listener_b = TcpListener::bind(local()).unwrap();
    let b =
        h.r.connect(listener_b.local_addr().unwrap(), ConnConfig::default())
            .unwrap();
    assert_eq!(b.index(), a.index(), "setup: B must reuse A's slot");
    h.hand_over(&mut out); // A's old event, now for B's token
    let (mut peer_b, _) = listener_b.accept().unwrap();
    peer_b.set_read_timeout(Some(WAIT)).unwrap();

    assert!(h.r.pause_reading(b).is_ok());
    h.turn(&mut out, ms(10));
    assert!(h.r.resume_reading(b).is_ok());
    assert!(h.r.pause_reading(b).is_ok());
    h.run_for(&mut out, ms(300));

    assert!(
        out.contains(&Event::Disconnected {
            conn: a,
            cause: Cause::Closed
        }),
        "A ends as Closed: {out:?}"
    );
    let b_end: Vec<&Event> = out.iter().filter(|e| is_end_of(b)(e)).collect();
    assert!(
        b_end.is_empty() && h.r.is_open(b),
        "B (peer still connected) was ended by A's stale event: {b_end:?}; events: {out:?}"
    );

    // B still works both ways.
    assert!(h.r.resume_reading(b).is_ok());
    peer_b.write_all(b"ping?").unwrap();
    let mut got = Vec::new();
    while got.len() < 5 {
        assert!(Instant::now() < deadline, "B's data never came: {out:?}");
        h.turn(&mut out, ms(50));
        for e in out.drain(..) {
            assert!(!is_end_of(b)(&e), "B ended: {e:?}");
            if let Event::Data { conn, bytes } = e
                && conn == b
            {
                got.extend_from_slice(&bytes);
            }
        }
    }
    assert_eq!(got, b"ping?");
    h.r.send(b, Bytes::from_static(b"pong!")).unwrap();
    h.turn(&mut out, ms(10));
    let mut reply = [0u8; 5];
    peer_b.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"pong!");
}

/// Defect: a paused connection is judged alive at every heartbeat verdict when a 1-byte
/// peek finds bytes in the kernel, even bytes that have sat there since long before. A
/// peer that sent one byte (a partial frame header) and then went silent while we were
/// paused was never declared lost. It must end with `HeartbeatTimeout` (timeout 300 ms;
/// waited for 10x that), silent for at least the timeout.
#[test]
fn paused_connection_with_old_unread_bytes_still_times_out() {
    let timeout = ms(300);
    let cfg = ConnConfig::default()
        .framing(Framing::length_delimited(1 << 20))
        .heartbeat(Heartbeat::new(ms(100), timeout));
    let (mut r, addr) = listening(cfg);
    let mut log = Vec::new();
    let mut client = TcpStream::connect(addr).unwrap();
    let conn = accept(&mut r, &mut log);
    assert!(r.pause_reading(conn).is_ok()); // in the turn that reported Accepted: nothing read yet
    client.write_all(&[0]).unwrap(); // one byte, then silence (pings are never answered)

    let Some((ev, _)) = poll_until(&mut r, &mut log, 10 * timeout, is_end_of(conn)) else {
        panic!(
            "paused connection with one old unread byte not declared lost within {:?} \
             (heartbeat timeout {timeout:?}); events: {log:?}",
            10 * timeout
        );
    };
    match cause_of(&ev) {
        Cause::HeartbeatTimeout { silent_for } => assert!(
            silent_for >= timeout,
            "silent_for {silent_for:?} < timeout {timeout:?}"
        ),
        other => panic!("expected HeartbeatTimeout, got {other:?}; events: {log:?}"),
    }
    drop(client); // connected (and silent) until the verdict
}

/// Defect: in half-close mode a peer that shut down its writing side can never answer a
/// ping, and the reactor declared it lost (`HeartbeatTimeout`) after the timeout although
/// it kept reading everything we sent. For 5x the timeout we stream frames to such a peer:
/// the connection must stay up, the peer must get every frame, and our `close` ends it as
/// `Closed`.
#[test]
fn half_closed_peer_that_still_reads_is_not_declared_lost() {
    let cfg = ConnConfig::default()
        .framing(Framing::length_delimited(1 << 20))
        .heartbeat(Heartbeat::new(ms(100), ms(300)))
        .half_close(true);
    let (mut r, addr) = listening(cfg);
    let peer = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut wire = Vec::new();
        let _ = s.read_to_end(&mut wire); // until our FIN (or a reset)
        data_frames(&wire)
    });
    let mut log = Vec::new();
    let conn = accept(&mut r, &mut log);
    expect_event(
        &mut r,
        &mut log,
        WAIT,
        "PeerHalfClosed",
        |e| matches!(e, Event::PeerHalfClosed { conn: c } if *c == conn),
    );

    let start = Instant::now();
    let mut sent = Vec::new();
    while start.elapsed() < ms(1500) {
        let frame = format!("frame {}", sent.len()).into_bytes();
        r.send(conn, Bytes::from(frame.clone())).unwrap();
        sent.push(frame);
        if let Some((ev, _)) = poll_until(&mut r, &mut log, ms(20), is_end_of(conn)) {
            panic!(
                "half-closed peer that still reads was declared lost after {:?}: {ev:?}",
                start.elapsed()
            );
        }
    }
    assert!(r.close(conn).is_ok());
    let (ev, _) = expect_event(&mut r, &mut log, WAIT, "Disconnected", is_end_of(conn));
    assert_eq!(cause_of(&ev), Cause::Closed);
    let got = peer.join().unwrap();
    assert_eq!(got.len(), sent.len(), "frames the peer received");
    assert!(got == sent, "frames arrived altered or out of order");
}

/// Defect: `close()` on a connection still connecting (with bytes queued) recorded the
/// close but left `send` open: a later `send` returned `Ok` and its bytes went out after
/// the close. The docs promise `Err(SendError::Closing)` once `close` was called. What was
/// queued before the close must still arrive, then the connection ends as `Closed`.
#[test]
fn send_after_close_while_connecting_is_refused() {
    let listener = TcpListener::bind(local()).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut r = Reactor::new(ReactorConfig::default()).unwrap();
    let conn = r.connect(addr, ConnConfig::default()).unwrap();
    assert_eq!(r.send(conn, Bytes::from_static(b"first")), Ok(()));
    assert!(r.close(conn).is_ok());
    assert_eq!(
        r.send(conn, Bytes::from_static(b"after close")),
        Err(SendError::Closing),
        "send after close() while connecting"
    );

    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap(); // until our FIN
        got
    });
    let mut log = Vec::new();
    let (ev, _) = expect_event(&mut r, &mut log, WAIT, "Disconnected", is_end_of(conn));
    assert_eq!(cause_of(&ev), Cause::Closed, "{log:?}");
    assert_eq!(server.join().unwrap(), b"first");
}
