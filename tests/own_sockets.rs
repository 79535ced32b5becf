//! Bring your own sockets: `listen_std`, `adopt`, and `SO_REUSEPORT` shared by two
//! reactors (one per core), each over real loopback sockets.

mod util;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use heartloop::{Cause, ConnConfig, Event, ListenOptions, Reactor, ReactorConfig};
use util::expect_event;

const WAIT: Duration = Duration::from_secs(10);

/// Two reactors listen on one port with `SO_REUSEPORT`; the kernel spreads 64 connections
/// over them, and both accept some (each gets none with probability 2^-63).
#[test]
fn two_reactors_share_one_port_with_reuse_port_and_both_accept() {
    let opts = ListenOptions::default().reuse_port(true);
    let mut a = Reactor::new(ReactorConfig::default()).unwrap();
    let la = a
        .listen_with("127.0.0.1:0".parse().unwrap(), opts, ConnConfig::default())
        .unwrap();
    let addr = a.local_addr(la).unwrap();
    let mut b = Reactor::new(ReactorConfig::default()).unwrap();
    b.listen_with(addr, opts, ConnConfig::default()).unwrap();
    // Without SO_REUSEPORT the port is taken.
    let mut c = Reactor::new(ReactorConfig::default()).unwrap();
    assert!(c.listen(addr, ConnConfig::default()).is_err());

    let clients: Vec<TcpStream> = (0..64).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let (mut got_a, mut got_b) = (0, 0);
    let mut events = Vec::new();
    let end = Instant::now() + WAIT;
    while got_a + got_b < clients.len() {
        assert!(Instant::now() < end, "accepted {got_a} + {got_b} of 64");
        a.poll(&mut events, Some(Duration::from_millis(5))).unwrap();
        got_a += events
            .drain(..)
            .filter(|e| matches!(e, Event::Accepted { .. }))
            .count();
        b.poll(&mut events, Some(Duration::from_millis(5))).unwrap();
        got_b += events
            .drain(..)
            .filter(|e| matches!(e, Event::Accepted { .. }))
            .count();
    }
    eprintln!("SO_REUSEPORT: reactor A accepted {got_a}, reactor B {got_b}");
    assert!(got_a > 0 && got_b > 0, "one reactor accepted everything");
}

/// A listener made with std (as socket activation or a parent process would hand it over)
/// serves like one of heartloop's own.
#[test]
fn listen_std_serves_a_listener_made_elsewhere() {
    let std_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = std_listener.local_addr().unwrap();
    let mut r = Reactor::new(ReactorConfig::default()).unwrap();
    let l = r.listen_std(std_listener, ConnConfig::default()).unwrap();
    assert_eq!(r.local_addr(l).unwrap(), addr);
    let mut client = TcpStream::connect(addr).unwrap();
    let mut log = Vec::new();
    let (ev, _) = expect_event(&mut r, &mut log, WAIT, "Accepted", |e| {
        matches!(e, Event::Accepted { .. })
    });
    let conn = ev.conn().unwrap();
    client.write_all(b"ping").unwrap();
    expect_event(
        &mut r,
        &mut log,
        WAIT,
        "Data",
        |e| matches!(e, Event::Data { bytes, .. } if &bytes[..] == b"ping"),
    );
    r.send(conn, Bytes::from_static(b"pong")).unwrap();
    r.poll(&mut log, Some(Duration::ZERO)).unwrap();
    let mut buf = [0u8; 4];
    client.set_read_timeout(Some(WAIT)).unwrap();
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");
}

/// A connected stream accepted elsewhere joins the reactor with its peer address, its
/// data, and a cause when the peer goes.
#[test]
fn adopt_takes_over_a_connected_stream() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server_side, peer) = listener.accept().unwrap();
    client.write_all(b"before").unwrap(); // sent before the reactor knew the socket
    let mut r = Reactor::new(ReactorConfig::default()).unwrap();
    let conn = r.adopt(server_side, ConnConfig::default()).unwrap();
    assert_eq!(r.peer_addr(conn), Some(peer.into()));
    let mut log = Vec::new();
    expect_event(
        &mut r,
        &mut log,
        WAIT,
        "the early bytes",
        |e| matches!(e, Event::Data { bytes, .. } if &bytes[..] == b"before"),
    );
    drop(client);
    let (ev, _) = expect_event(&mut r, &mut log, WAIT, "Disconnected", |e| {
        matches!(e, Event::Disconnected { .. })
    });
    assert_eq!(
        ev,
        Event::Disconnected {
            conn,
            cause: Cause::PeerClosed
        }
    );
}
