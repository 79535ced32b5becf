//! Unix domain sockets beside TCP: the same events, causes, heartbeats and backpressure.
//! Each test uses a socket path in a fresh temporary directory, removed on drop.

mod util;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use heartloop::{
    Cause, ConnConfig, Event, Framing, Heartbeat, OutboundConfig, OverflowPolicy, PeerAddr,
    Reactor, ReactorConfig,
};
use util::{accept, end_of, expect_event};

const WAIT: Duration = Duration::from_secs(10);

/// A directory of its own for one test's socket, removed (with the socket) on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("heartloop-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn sock(&self) -> PathBuf {
        self.0.join("sock")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn serve(dir: &TempDir, cfg: ConnConfig) -> Reactor {
    let mut r = Reactor::new(ReactorConfig::default()).unwrap();
    let l = r.listen_unix(dir.sock(), cfg).unwrap();
    assert_eq!(
        r.listener_addr(l).unwrap(),
        PeerAddr::Unix(Some(dir.sock()))
    );
    r
}

#[test]
fn unix_echo_and_a_peer_that_closes_is_peer_closed() {
    let dir = TempDir::new("close");
    let mut r = serve(&dir, ConnConfig::default());
    let mut log = Vec::new();
    let mut peer = UnixStream::connect(dir.sock()).unwrap();
    let conn = accept(&mut r, &mut log);
    peer.write_all(b"hello").unwrap();
    let (ev, _) = expect_event(&mut r, &mut log, WAIT, "Data", |e| {
        matches!(e, Event::Data { .. })
    });
    if let Event::Data { bytes, .. } = ev {
        r.send(conn, bytes).unwrap();
    }
    r.poll(&mut log, Some(Duration::ZERO)).unwrap();
    let mut back = [0u8; 5];
    peer.set_read_timeout(Some(WAIT)).unwrap();
    peer.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"hello");
    drop(peer);
    assert_eq!(end_of(&mut r, &mut log, conn), Cause::PeerClosed);
}

/// A Unix peer that goes away with data it never read resets the connection, as a TCP
/// peer that dies with unread data does.
#[test]
fn unix_peer_gone_with_unread_data_is_reset() {
    let dir = TempDir::new("reset");
    let mut r = serve(&dir, ConnConfig::default());
    let mut log = Vec::new();
    let peer = UnixStream::connect(dir.sock()).unwrap();
    let conn = accept(&mut r, &mut log);
    r.send(conn, Bytes::from_static(b"never read")).unwrap();
    r.poll(&mut log, Some(Duration::from_millis(10))).unwrap();
    drop(peer);
    assert_eq!(end_of(&mut r, &mut log, conn), Cause::Reset);
}

#[test]
fn unix_peer_that_stops_reading_is_cut_as_a_slow_peer_at_the_limit() {
    let dir = TempDir::new("slow");
    let cfg = ConnConfig::default().outbound(OutboundConfig::limit(
        256 * 1024,
        OverflowPolicy::Disconnect,
    ));
    let mut r = serve(&dir, cfg);
    let mut log = Vec::new();
    let _peer = UnixStream::connect(dir.sock()).unwrap(); // never reads
    let conn = accept(&mut r, &mut log);
    let chunk = Bytes::from(vec![7u8; 16 * 1024]);
    let end = Instant::now() + WAIT;
    while r.is_open(conn) {
        assert!(Instant::now() < end, "never cut: {:?}", r.stats());
        let _ = r.send(conn, chunk.clone());
        assert!(r.queued(conn).is_none_or(|q| q <= 256 * 1024));
        r.poll(&mut log, Some(Duration::ZERO)).unwrap();
    }
    match end_of(&mut r, &mut log, conn) {
        Cause::SlowPeer { queued, .. } => assert!(queued <= 256 * 1024),
        other => panic!("expected SlowPeer, got {other:?}"),
    }
}

#[test]
fn unix_silent_peer_is_declared_lost_by_heartbeat() {
    let dir = TempDir::new("heartbeat");
    let cfg = ConnConfig::default()
        .framing(Framing::length_delimited(1 << 16))
        .heartbeat(Heartbeat::new(
            Duration::from_millis(50),
            Duration::from_millis(200),
        ));
    let mut r = serve(&dir, cfg);
    let mut log = Vec::new();
    let _peer = UnixStream::connect(dir.sock()).unwrap(); // connected, silent, never answers
    let t0 = Instant::now();
    let conn = accept(&mut r, &mut log);
    match end_of(&mut r, &mut log, conn) {
        Cause::HeartbeatTimeout { silent_for } => {
            assert!(silent_for >= Duration::from_millis(200), "{silent_for:?}");
            assert!(t0.elapsed() >= Duration::from_millis(200));
        }
        other => panic!("expected HeartbeatTimeout, got {other:?}"),
    }
}

#[test]
fn connect_unix_reaches_a_listener_and_a_missing_path_is_an_error() {
    let dir = TempDir::new("connect");
    let mut r = serve(&dir, ConnConfig::default());
    let mut log = Vec::new();
    let c = r.connect_unix(dir.sock(), ConnConfig::default()).unwrap();
    expect_event(
        &mut r,
        &mut log,
        WAIT,
        "Connected",
        |e| matches!(e, Event::Connected { conn } if *conn == c),
    );
    assert!(
        r.connect_unix(dir.0.join("nothing-here"), ConnConfig::default())
            .is_err()
    );
}
