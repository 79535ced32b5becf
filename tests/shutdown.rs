//! Graceful shutdown over real sockets: listeners go, every connection is closed with its
//! queue delivered (bounded by linger), each reports its own end, then `ShutDown` once.

mod util;

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use heartloop::{Cause, ConnConfig, ConnId, Event, Reactor, ReactorConfig};
use util::expect_event;

const WAIT: Duration = Duration::from_secs(10);

#[test]
fn shutdown_closes_everything_delivers_queues_then_reports_once() {
    let mut r = Reactor::new(ReactorConfig::default()).unwrap();
    let l = r
        .listen("127.0.0.1:0".parse().unwrap(), ConnConfig::default())
        .unwrap();
    let addr = r.local_addr(l).unwrap();
    let mut clients: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let mut log = Vec::new();
    let mut conns: Vec<ConnId> = Vec::new();
    let end = Instant::now() + WAIT;
    while conns.len() < 3 {
        assert!(Instant::now() < end);
        r.poll(&mut log, Some(Duration::from_millis(10))).unwrap();
        conns.extend(log.drain(..).filter_map(|e| match e {
            Event::Accepted { conn, .. } => Some(conn),
            _ => None,
        }));
    }
    assert_eq!(r.connections().count(), 3);
    // 1 MiB queued for one client that has not read yet: shutdown must deliver it.
    let payload: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    r.send(conns[0], Bytes::from(payload.clone())).unwrap();
    r.shutdown(Duration::from_secs(5));
    assert!(r.is_shutting_down());
    assert!(
        r.listen("127.0.0.1:0".parse().unwrap(), ConnConfig::default())
            .is_err()
    );
    assert!(r.connect(addr, ConnConfig::default()).is_err());
    // Each client reads everything to EOF (the reactor keeps turning in this thread).
    let readers: Vec<_> = clients
        .drain(..)
        .map(|mut c| {
            std::thread::spawn(move || {
                c.set_read_timeout(Some(WAIT)).unwrap();
                let mut got = Vec::new();
                c.read_to_end(&mut got).map(|_| got)
            })
        })
        .collect();
    let (ev, _) = expect_event(&mut r, &mut log, WAIT, "ShutDown", |e| {
        matches!(e, Event::ShutDown)
    });
    assert_eq!(ev, Event::ShutDown);
    let ends: Vec<(ConnId, Cause)> = log
        .iter()
        .filter_map(|e| match e {
            Event::Disconnected { conn, cause } => Some((*conn, cause.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(ends.len(), 3, "{log:?}");
    for c in &conns {
        assert!(ends.contains(&(*c, Cause::Closed)), "{c} in {ends:?}");
    }
    assert_eq!(
        log.last(),
        Some(&Event::ShutDown),
        "ShutDown comes after every end"
    );
    let got: Vec<Vec<u8>> = readers
        .into_iter()
        .map(|t| t.join().unwrap().unwrap())
        .collect();
    assert!(
        got.contains(&payload),
        "the queued MiB was not delivered whole"
    );
    assert_eq!(got.iter().filter(|g| g.is_empty()).count(), 2);
    // Nothing more: ShutDown is given once.
    r.poll(&mut log, Some(Duration::from_millis(20))).unwrap();
    assert_eq!(
        log.iter().filter(|e| matches!(e, Event::ShutDown)).count(),
        1
    );
    assert!(TcpStream::connect(addr).is_err(), "the listener is gone");
}
