//! The shapes of the public API: what an application gets back from each call.

mod util;

use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;

use bytes::Bytes;
use heartloop::{Cause, ConnConfig, Event, ProtocolError, Reactor, ReactorConfig};
use util::expect_event;

const WAIT: Duration = Duration::from_secs(10);

/// `close_with` delivers what is queued, closes, and reports the application's reason as
/// the cause (in the event and in the counters).
#[test]
fn close_with_reports_the_applications_reason() {
    let mut r = Reactor::new(ReactorConfig::default()).unwrap();
    let l = r
        .listen("127.0.0.1:0".parse().unwrap(), ConnConfig::default())
        .unwrap();
    let mut peer = TcpStream::connect(r.local_addr(l).unwrap()).unwrap();
    let mut log = Vec::new();
    let (ev, _) = expect_event(&mut r, &mut log, WAIT, "Accepted", |e| {
        matches!(e, Event::Accepted { .. })
    });
    let conn = ev.conn().unwrap();
    r.send(conn, Bytes::from_static(b"-ERR bad login\r\n"))
        .unwrap();
    let reason = ProtocolError::Other("bad login".into());
    assert!(r.close_with(conn, reason.clone()));
    // The peer reads the error line, then EOF; its close lets ours complete.
    let reader = std::thread::spawn(move || {
        peer.set_read_timeout(Some(WAIT)).unwrap();
        let mut got = Vec::new();
        peer.read_to_end(&mut got).unwrap();
        got
    });
    let (ev, _) = expect_event(&mut r, &mut log, WAIT, "Disconnected", |e| {
        matches!(e, Event::Disconnected { .. })
    });
    assert_eq!(
        ev,
        Event::Disconnected {
            conn,
            cause: Cause::Protocol(reason)
        }
    );
    assert_eq!(reader.join().unwrap(), b"-ERR bad login\r\n");
    assert_eq!(r.stats().disconnects.protocol, 1);
    assert!(
        !r.close_with(conn, ProtocolError::Other("again".into())),
        "stale"
    );
}
