//! `send_parts`: a head and a shared body queued as one unit.

mod util;

use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use heartloop::codec::{self, Decoded, Kind};
use heartloop::{
    ConnConfig, Event, Framing, OutboundConfig, OverflowPolicy, QUEUE_ENTRY_COST, Reactor,
    ReactorConfig, SendError,
};
use util::expect_event;

fn accept(r: &mut Reactor, cfg: ConnConfig) -> (heartloop::ConnId, TcpStream) {
    let l = r.listen("127.0.0.1:0".parse().unwrap(), cfg).unwrap();
    let s = TcpStream::connect(r.local_addr(l).unwrap()).unwrap();
    let mut log = Vec::new();
    let (ev, _) = expect_event(r, &mut log, Duration::from_secs(5), "Accepted", |e| {
        matches!(e, Event::Accepted { .. })
    });
    (ev.conn().unwrap(), s)
}

#[test]
fn length_delimited_parts_make_one_frame() {
    let mut r = Reactor::new(ReactorConfig::default()).unwrap();
    let (conn, mut s) = accept(
        &mut r,
        ConnConfig::default().framing(Framing::length_delimited(1024)),
    );
    let body = Bytes::from_static(b"shared payload");
    r.send_parts(conn, Bytes::from_static(b"head:"), body.clone())
        .unwrap();
    r.send(conn, body).unwrap();
    let mut evs = Vec::new();
    r.poll(&mut evs, Some(Duration::ZERO)).unwrap();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    while frames.len() < 2 {
        match codec::decode(&mut buf, 1024).unwrap() {
            Decoded::Frame(Kind::Data, p) => frames.push(p),
            Decoded::Frame(..) => {}
            _ => {
                let mut chunk = [0u8; 256];
                let n = s.read(&mut chunk).unwrap();
                assert!(n > 0);
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    }
    assert_eq!(&frames[0][..], b"head:shared payload");
    assert_eq!(&frames[1][..], b"shared payload");
}

#[test]
fn refused_parts_queue_nothing() {
    let mut r = Reactor::new(ReactorConfig::default()).unwrap();
    // The limit charges a message QUEUE_ENTRY_COST beside its bytes.
    let limit = 100 + QUEUE_ENTRY_COST;
    let out = OutboundConfig::watermarks(16, 32).hard_limit(limit, OverflowPolicy::Reject);
    let (conn, _s) = accept(&mut r, ConnConfig::default().outbound(out));
    // 60 + 60 > 100: neither part may be queued, or the wire would carry a torn message.
    let err = r
        .send_parts(
            conn,
            Bytes::from(vec![b'h'; 60]),
            Bytes::from(vec![b'b'; 60]),
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            SendError::Full {
                queued: 0,
                len: 120,
                cut: false,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(r.queued(conn), Some(0));
    r.send_parts(
        conn,
        Bytes::from(vec![b'h'; 40]),
        Bytes::from(vec![b'b'; 40]),
    )
    .unwrap();
    assert_eq!(r.queued(conn), Some(80));
}
