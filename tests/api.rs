//! The shapes of the public API: what an application gets back from each call.

mod util;

use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;

use bytes::Bytes;
use heartloop::{
    Cause, ConnConfig, Event, OutboundConfig, OverflowPolicy, ProtocolError, Reactor,
    ReactorConfig, SendError, StaleId,
};
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
    assert!(r.close_with(conn, reason.clone()).is_ok());
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
    assert_eq!(
        r.close_with(conn, ProtocolError::Other("again".into())),
        Err(StaleId),
        "stale"
    );
}

/// A stale id gets the same kind of answer from every action (`Err(StaleId)`, or
/// `SendError::Stale` from `send`), and `false`/`None` from every query; `SendError::Full`
/// says whether the refusal cut the connection.
#[test]
fn stale_ids_answer_alike_and_full_says_whether_it_cut() {
    let mut r = Reactor::new(ReactorConfig::default()).unwrap();
    // Two connections: one under `Reject`, one under `Disconnect`, both 1 KiB hard limits.
    let small = |policy| {
        ConnConfig::default()
            .outbound(OutboundConfig::watermarks(256, 512).hard_limit(1024, policy))
    };
    let l1 = r
        .listen(
            "127.0.0.1:0".parse().unwrap(),
            small(OverflowPolicy::Reject),
        )
        .unwrap();
    let l2 = r
        .listen(
            "127.0.0.1:0".parse().unwrap(),
            small(OverflowPolicy::Disconnect),
        )
        .unwrap();
    let _p1 = TcpStream::connect(r.local_addr(l1).unwrap()).unwrap();
    let _p2 = TcpStream::connect(r.local_addr(l2).unwrap()).unwrap();
    let mut log = Vec::new();
    let mut seen = 0;
    util::expect_event(&mut r, &mut log, WAIT, "two Accepted", |e| {
        seen += matches!(e, Event::Accepted { .. }) as usize;
        seen == 2
    });
    let accepted_by = |l| {
        log.iter()
            .find_map(|e| match e {
                Event::Accepted { listener, conn, .. } if *listener == l => Some(*conn),
                _ => None,
            })
            .unwrap()
    };
    let (keep, cut) = (accepted_by(l1), accepted_by(l2));
    let big = Bytes::from(vec![0u8; 4096]);
    let refused = r.send(keep, big.clone());
    assert!(
        matches!(
            refused,
            Err(SendError::Full {
                queued: 0,
                len: 4096,
                cut: false,
                ..
            })
        ),
        "{refused:?}"
    );
    assert!(r.is_open(keep), "Reject leaves the connection open");
    let refused = r.send(cut, big);
    assert!(
        matches!(
            refused,
            Err(SendError::Full {
                len: 4096,
                cut: true,
                ..
            })
        ),
        "{refused:?}"
    );
    assert!(!r.is_open(cut), "Disconnect cut it");
    assert!(
        refused
            .unwrap_err()
            .to_string()
            .contains("cut as a slow peer")
    );

    // `cut` is now a stale id: every action says so the same way.
    assert_eq!(r.close(cut), Err(StaleId));
    assert_eq!(
        r.close_with(cut, ProtocolError::Other("x".into())),
        Err(StaleId)
    );
    assert_eq!(r.abort(cut), Err(StaleId));
    assert_eq!(r.pause_reading(cut), Err(StaleId));
    assert_eq!(r.resume_reading(cut), Err(StaleId));
    assert_eq!(r.send(cut, Bytes::from_static(b"x")), Err(SendError::Stale));
    assert_eq!(SendError::from(StaleId), SendError::Stale);
    // ... and every query answers "nothing".
    assert!(!r.is_open(cut));
    assert_eq!(r.peer_addr(cut), None);
    assert_eq!(r.queued(cut), None);
    assert!(!r.is_reading_paused(cut));
    // Listeners and timers too.
    assert_eq!(r.unlisten(l2), Ok(()));
    assert_eq!(r.unlisten(l2), Err(StaleId));
    assert_eq!(
        r.local_addr(l2).unwrap_err().kind(),
        std::io::ErrorKind::NotFound
    );
    let t = r.set_timer(Duration::from_secs(60), 7);
    assert_eq!(r.cancel_timer(t), Ok(()));
    assert_eq!(r.cancel_timer(t), Err(StaleId));
    // `?` in an io::Result function gives NotFound.
    let io: std::io::Error = StaleId.into();
    assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
    // The live connection is untouched by all this.
    assert!(r.is_open(keep));
    r.send(keep, Bytes::from_static(b"still here")).unwrap();
}
