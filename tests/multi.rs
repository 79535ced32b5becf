//! One reactor per core: reactors sharing a port, talking through channels, and handing
//! connections to each other (`mesh`, `channel`, `detach`/`attach`), over real sockets
//! and real threads.

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use heartloop::{
    Cause, ConnConfig, ConnId, DetachError, Detached, Event, Framing, ListenOptions, Member,
    OverflowPolicy, Reactor, ReactorConfig, Stats, TrySendError,
};
use util::{Proc, accept, example_bin, listening};

const WAIT: Duration = Duration::from_secs(20);

fn assert_send<T: Send>() {}

#[test]
fn reactors_and_connections_in_transit_are_send() {
    assert_send::<Reactor>();
    assert_send::<Detached>();
    assert_send::<Member<Detached>>();
}

/// `n` members listening on one port with `SO_REUSEPORT`; the port.
fn share_port<T: Send>(members: &mut [Member<T>], cfg: ConnConfig) -> u16 {
    let mut port = 0;
    for m in members.iter_mut() {
        let at: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let l = m
            .reactor
            .listen_with(at, ListenOptions::default().reuse_port(true), cfg)
            .expect("listen with SO_REUSEPORT");
        port = m.reactor.local_addr(l).unwrap().port();
    }
    port
}

/// Run `f` on every event of member `m` on its own thread until `stop`; its stats at the end.
fn run<T: Send + 'static>(
    mut m: Member<T>,
    stop: Arc<AtomicBool>,
    mut f: impl FnMut(&mut Member<T>, Event) + Send + 'static,
) -> JoinHandle<(Stats, Member<T>)> {
    std::thread::spawn(move || {
        let mut events = Vec::new();
        while !stop.load(Ordering::Acquire) {
            m.reactor
                .poll(&mut events, Some(Duration::from_millis(20)))
                .expect("poll");
            for ev in events.drain(..) {
                f(&mut m, ev);
            }
        }
        (m.reactor.stats(), m)
    })
}

/// Both reactors on one port accept: the kernel spreads 64 connections over them
/// (all 64 on one would happen with probability 2^-63 if the spread were fair, and
/// always if `SO_REUSEPORT` were not set: the second bind would fail).
#[test]
fn reactors_sharing_a_port_all_accept_and_their_stats_add_up() {
    let mut members = heartloop::mesh::<()>(2, ReactorConfig::default(), 16, 0).unwrap();
    let port = share_port(&mut members, ConnConfig::default());
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = members
        .into_iter()
        .map(|m| run(m, stop.clone(), |_, _| {}))
        .collect();
    let clients: Vec<TcpStream> = (0..64)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    // Wait until both threads saw all connections (counted at the end).
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Release);
    let stats: Vec<Stats> = threads.into_iter().map(|t| t.join().unwrap().0).collect();
    let accepted: Vec<u64> = stats.iter().map(|s| s.accepted).collect();
    assert!(
        accepted.iter().all(|&a| a >= 1),
        "each reactor accepts some: {accepted:?} ({:?})",
        t0.elapsed()
    );
    let total: Stats = stats.iter().copied().sum();
    assert_eq!(total.accepted, 64, "{accepted:?}");
    assert_eq!(total.open_connections, 64);
    assert_eq!(total.accepted, accepted.iter().sum::<u64>());
    drop(clients);
}

/// A burst of sends before the loop looks costs one `Mail` event; values arrive in order
/// per producer and none is lost under load, with the bounded capacity refusing (not
/// growing) while the loop is behind.
#[test]
fn a_channel_wakes_once_per_burst_and_loses_or_reorders_nothing() {
    let mut r = Reactor::new(ReactorConfig::default()).unwrap();
    let (tx, mut rx) = heartloop::channel::<(u8, u64)>(&r.handle().unwrap(), 9, 4096);
    for i in 0..1000 {
        tx.try_send((0, i)).unwrap();
    }
    let mut events = Vec::new();
    r.poll(&mut events, Some(Duration::from_secs(5))).unwrap();
    r.poll(&mut events, Some(Duration::ZERO)).unwrap();
    let mails = events
        .iter()
        .filter(|e| matches!(e, Event::Mail { tag: 9 }))
        .count();
    assert_eq!(mails, 1, "one burst, one Mail: {events:?}");
    let mut got = Vec::new();
    // A bounded drain leaves the rest announced: another Mail comes without a new send.
    assert_eq!(rx.drain(&mut got, 600), 600);
    events.clear();
    r.poll(&mut events, Some(Duration::from_secs(5))).unwrap();
    assert!(events.contains(&Event::Mail { tag: 9 }), "{events:?}");
    assert_eq!(rx.drain(&mut got, usize::MAX), 400);
    assert!(got.iter().map(|&(_, i)| i).eq(0..1000));

    // Capacity: a full channel refuses and gives the value back.
    for i in 0..4096 {
        tx.try_send((0, i)).unwrap();
    }
    match tx.try_send((0, 4096)) {
        Err(TrySendError::Full(v)) => assert_eq!(v, (0, 4096)),
        other => panic!("{other:?}"),
    }
    got.clear();
    rx.drain(&mut got, usize::MAX);

    // Under load: two producers, 200,000 values each, against a loop that drains.
    const N: u64 = 200_000;
    let producers: Vec<_> = (1..=2u8)
        .map(|p| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut full = 0u64;
                for i in 0..N {
                    let mut v = (p, i);
                    loop {
                        match tx.try_send(v) {
                            Ok(()) => break,
                            Err(TrySendError::Full(back)) => {
                                full += 1;
                                v = back;
                                std::thread::yield_now();
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
                full
            })
        })
        .collect();
    let mut next = [0u64; 3];
    let mut mails = 0u64;
    let end = Instant::now() + WAIT;
    while next[1] < N || next[2] < N {
        assert!(Instant::now() < end, "stuck at {next:?}");
        r.poll(&mut events, Some(Duration::from_millis(100)))
            .unwrap();
        for ev in events.drain(..) {
            if ev == (Event::Mail { tag: 9 }) {
                mails += 1;
                got.clear();
                rx.drain(&mut got, 1024);
                for &(p, i) in &got {
                    assert_eq!(i, next[p as usize], "producer {p} out of order");
                    next[p as usize] += 1;
                }
            }
        }
    }
    let refused: u64 = producers.into_iter().map(|p| p.join().unwrap()).sum();
    assert!(rx.is_empty());
    println!(
        "2 × {N} values: {mails} Mail events ({:.1} values per wakeup), {refused} sends refused while full",
        (2 * N) as f64 / mails as f64
    );
    drop(rx);
    assert!(matches!(tx.try_send((0, 0)), Err(TrySendError::Closed(_))));
}

/// Frames of 8-byte sequence numbers, length-delimited.
fn frame(seq: u64) -> Vec<u8> {
    let mut f = 8u32.to_be_bytes().to_vec();
    f.push(0); // kind: data
    f.extend_from_slice(&seq.to_be_bytes());
    f
}

/// A connection handed from one reactor (thread) to another keeps every byte in order
/// both ways: a frame half-read by the first is completed on the second, bytes queued on
/// the first are written by the second before what the second queues, and the stream the
/// client keeps sending arrives exactly once, in order, across the two.
#[test]
fn a_connection_handed_over_keeps_its_bytes_and_order() {
    // A small send buffer: what the client does not read stays in the reactor's queue.
    let cfg = ConnConfig::default()
        .framing(Framing::length_delimited(1 << 20))
        .send_buffer(16 << 10);
    let (mut a, addr) = listening(cfg);
    let mut client = TcpStream::connect(addr).unwrap();
    client.set_nodelay(true).unwrap();
    let mut log = Vec::new();
    let conn = accept(&mut a, &mut log);

    // Frames 0..100 whole, then half of frame 100.
    let mut wire = Vec::new();
    for s in 0..100 {
        wire.extend(frame(s));
    }
    let f100 = frame(100);
    wire.extend(&f100[..7]);
    client.write_all(&wire).unwrap();
    // `a` reads all of it (the half frame sits in its buffer).
    let want = wire.len() as u64;
    let end = Instant::now() + WAIT;
    while a.stats().bytes_read < want {
        assert!(
            Instant::now() < end,
            "a read {} of {want}",
            a.stats().bytes_read
        );
        a.poll(&mut log, Some(Duration::from_millis(10))).unwrap();
    }
    let seqs = |log: &[Event]| -> Vec<u64> {
        log.iter()
            .filter_map(|e| match e {
                Event::Data { bytes, .. } => {
                    Some(u64::from_be_bytes(bytes[..8].try_into().unwrap()))
                }
                _ => None,
            })
            .collect()
    };
    let on_a = seqs(&log);
    assert_eq!(on_a, (0..100).collect::<Vec<_>>());

    // `a` queues 3 MiB the client does not read yet: most stays in `a`'s queue.
    let big = Bytes::from(
        (0..3 << 20)
            .map(|i: u32| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    a.send(conn, big.clone()).unwrap();
    a.poll(&mut log, Some(Duration::ZERO)).unwrap();
    let queued_on_a = a.queued(conn).unwrap();
    assert!(
        queued_on_a > 0,
        "the client reads nothing yet: bytes stay queued"
    );

    // Hand it over to `b`, on another thread, through a channel.
    let mut b = Reactor::new(ReactorConfig::default()).unwrap();
    let (tx, mut rx) = heartloop::channel::<Detached>(&b.handle().unwrap(), 1, 4);
    let moving = a.detach(conn).unwrap();
    assert_eq!(moving.queued(), queued_on_a);
    assert_eq!(a.detach(conn).unwrap_err(), DetachError::Stale);
    assert!(!a.is_open(conn));
    assert_eq!(a.stats().open_connections, 0);
    assert_eq!(a.stats().bytes_queued, 0);
    tx.try_send(moving).unwrap();
    let tail = Bytes::from_static(b"after the handover");
    let tail_b = tail.clone();
    let b_thread = std::thread::spawn(move || {
        let mut log = Vec::new();
        let mut events = Vec::new();
        let mut conn_b = None;
        let mut seqs = Vec::new();
        let end = Instant::now() + WAIT;
        // Until every frame arrived and everything queued (a's bytes, then ours) is written.
        while seqs.last() != Some(&199) || conn_b.is_none_or(|id| b.queued(id) != Some(0)) {
            assert!(Instant::now() < end, "b got {seqs:?}");
            b.poll(&mut events, Some(Duration::from_millis(10)))
                .unwrap();
            for ev in events.drain(..) {
                match ev {
                    Event::Mail { tag: 1 } => {
                        let mut got = Vec::new();
                        rx.drain(&mut got, usize::MAX);
                        let id = b.attach(got.pop().unwrap()).unwrap();
                        // Queued after what `a` had queued: must reach the client after it.
                        b.send(id, tail_b.clone()).unwrap();
                        conn_b = Some(id);
                    }
                    Event::Data { bytes, .. } => {
                        seqs.push(u64::from_be_bytes(bytes[..8].try_into().unwrap()));
                    }
                    ev @ Event::Disconnected { .. } => panic!("{ev:?}"),
                    ev => log.push(ev),
                }
            }
        }
        (seqs, b, conn_b.unwrap())
    });
    // The rest of frame 100, and frames 101..200, sent while the handover happens.
    let mut rest = f100[7..].to_vec();
    for s in 101..200 {
        rest.extend(frame(s));
    }
    client.write_all(&rest).unwrap();
    // The client reads everything: a's queued bytes (the 3 MiB), then b's tail.
    let mut expect = big.to_vec();
    // LengthDelimited: each message has its 5-byte header.
    let mut wire_in = Vec::new();
    let total = 5 + big.len() + 5 + tail.len();
    client.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    while wire_in.len() < total {
        let n = client.read(&mut buf).unwrap();
        assert!(n > 0, "EOF after {} bytes", wire_in.len());
        wire_in.extend_from_slice(&buf[..n]);
    }
    let (seqs_b, mut b, conn_b) = b_thread.join().unwrap();
    assert_eq!(
        seqs_b,
        (100..200).collect::<Vec<_>>(),
        "on b, in order, none lost"
    );
    assert_eq!(
        &wire_in[..5],
        &[0, 0x30, 0, 0, 0],
        "a 3 MiB data frame first"
    );
    assert_eq!(
        &wire_in[5..5 + big.len()],
        &expect[..],
        "a's queue, in order"
    );
    expect = tail.to_vec();
    assert_eq!(
        &wire_in[5 + big.len() + 5..],
        &expect[..],
        "then b's own send"
    );
    assert_eq!(b.stats().attached, 1);
    // And the connection lives on under b: its end is b's to report.
    drop(client);
    let mut events = Vec::new();
    let cause = util::end_of(&mut b, &mut events, conn_b);
    assert_eq!(cause, Cause::PeerClosed);
}

/// `detach` refuses a connection whose end is under way; that end stays with its reactor.
#[test]
fn detach_refuses_a_closing_connection() {
    let (mut a, addr) = listening(ConnConfig::default().send_buffer(16 << 10));
    let _client = TcpStream::connect(addr).unwrap();
    let mut log = Vec::new();
    let conn = accept(&mut a, &mut log);
    a.send(conn, Bytes::from(vec![0u8; 1 << 20])).unwrap();
    a.close(conn).unwrap();
    assert_eq!(a.detach(conn).unwrap_err(), DetachError::NotOpen);
    assert!(a.is_open(conn), "still closing here");
}

/// A peer killed while connected to reactor 2 of 2 is reported by reactor 2, with the
/// cause a kill gives (`PeerClosed`), and reactor 1 sees nothing.
#[test]
fn a_killed_peer_is_reported_by_the_reactor_that_owns_it() {
    let mut members = heartloop::mesh::<()>(2, ReactorConfig::default(), 16, 0).unwrap();
    let port = share_port(&mut members, ConnConfig::default());
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel::<(usize, Event)>();
    let threads: Vec<_> = members
        .into_iter()
        .map(|m| {
            let tx = tx.clone();
            run(m, stop.clone(), move |m, ev| {
                let _ = tx.send((m.index, ev));
            })
        })
        .collect();
    let addr = format!("127.0.0.1:{port}");
    let _ = example_bin("peer");
    // Start peers until one lands on reactor 1 (the second); keep the others alive.
    let mut peers: Vec<(Proc, usize, ConnId)> = Vec::new();
    let end = Instant::now() + WAIT;
    let target = loop {
        assert!(Instant::now() < end, "no peer landed on reactor 1");
        let mut p = Proc::peer(&[&addr, "idle"]);
        p.expect_line("READY", WAIT);
        let (index, conn) = match rx.recv_timeout(WAIT).expect("an Accepted") {
            (i, Event::Accepted { conn, .. }) => (i, conn),
            other => panic!("{other:?}"),
        };
        peers.push((p, index, conn));
        if index == 1 {
            break peers.len() - 1;
        }
    };
    peers[target].0.kill();
    let (index, ev) = rx.recv_timeout(WAIT).expect("the kill reported");
    assert_eq!(index, 1, "reported by the reactor that owns it: {ev:?}");
    assert_eq!(
        ev,
        Event::Disconnected {
            conn: peers[target].2,
            cause: Cause::PeerClosed
        }
    );
    // Nothing else happened anywhere.
    assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
    stop.store(true, Ordering::Release);
    for t in threads {
        t.join().unwrap();
    }
}

/// `attach` refuses what would break the receiving reactor's limits (its reactor-wide
/// queue cap, `max_connections`) and gives the connection back, unharmed: it can be
/// attached elsewhere and still works.
#[test]
fn attach_refuses_over_the_limits_and_gives_the_connection_back() {
    let (mut a, addr) = listening(ConnConfig::default().send_buffer(16 << 10));
    let mut client = TcpStream::connect(addr).unwrap();
    let mut log = Vec::new();
    let conn = accept(&mut a, &mut log);
    a.send(conn, Bytes::from(vec![7u8; 512 << 10])).unwrap();
    a.poll(&mut log, Some(Duration::ZERO)).unwrap();
    let moving = a.detach(conn).unwrap();
    let queued = moving.queued();
    assert!(queued > 64 << 10, "{queued} bytes still queued");
    // A reactor whose cap is smaller than that queue.
    let small = ReactorConfig::default().total_queued_limit(64 << 10, OverflowPolicy::Reject);
    let mut b = Reactor::new(small).unwrap();
    let back = b.attach(moving).unwrap_err();
    assert!(
        back.error.to_string().contains("total_queued_limit"),
        "{}",
        back.error
    );
    assert_eq!(b.stats().open_connections, 0);
    assert_eq!(b.stats().bytes_queued, 0);
    // A reactor at max_connections.
    let mut full = Reactor::new(ReactorConfig::default().max_connections(0)).unwrap();
    let back = full.attach(back.detached).unwrap_err();
    assert!(back.error.to_string().contains("max_connections"));
    // Given back unharmed: attached to a roomy reactor, every queued byte arrives.
    let mut c = Reactor::new(ReactorConfig::default()).unwrap();
    let id = c.attach(back.detached).unwrap();
    let reader = std::thread::spawn(move || {
        client.set_read_timeout(Some(WAIT)).unwrap();
        let mut got = vec![0u8; 512 << 10];
        client.read_exact(&mut got).unwrap();
        got
    });
    let end = Instant::now() + WAIT;
    while c.queued(id) != Some(0) {
        assert!(Instant::now() < end, "never flushed");
        c.poll(&mut log, Some(Duration::from_millis(10))).unwrap();
    }
    assert!(reader.join().unwrap().iter().all(|&b| b == 7));
}
