//! Line framing and user decoders over real sockets: messages come out whole and in order
//! however the bytes are split, and a peer that never ends its message is cut at the limit
//! with bounded memory, every other connection untouched.

mod util;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use heartloop::codec::Decoder;
use heartloop::{Cause, ConnConfig, ConnId, Event, Framing, ProtocolError};
use util::{accept, expect_event, listening};

const WAIT: Duration = Duration::from_secs(10);

fn data_of(log: &[Event], conn: ConnId) -> Vec<Bytes> {
    log.iter()
        .filter_map(|e| match e {
            Event::Data { conn: c, bytes } if *c == conn => Some(bytes.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn lines_arrive_whole_in_order_however_the_bytes_are_split() {
    let (mut r, addr) = listening(ConnConfig::default().framing(Framing::lines(64)));
    let mut log = Vec::new();
    let mut peer = TcpStream::connect(addr).unwrap();
    peer.set_nodelay(true).unwrap();
    let conn = accept(&mut r, &mut log);
    let text = b"hello\r\nworld\n\nline three\r\n";
    for piece in text.chunks(3) {
        peer.write_all(piece).unwrap();
        util::poll_for(&mut r, &mut log, Duration::from_millis(2));
    }
    let end = std::time::Instant::now() + WAIT;
    while data_of(&log, conn).len() < 4 {
        assert!(std::time::Instant::now() < end, "lines missing: {log:?}");
        util::poll_for(&mut r, &mut log, Duration::from_millis(10));
    }
    let got = data_of(&log, conn);
    assert_eq!(got, ["hello", "world", "", "line three"]);
    // What we send goes out as given.
    r.send(conn, Bytes::from_static(b"ok\n")).unwrap();
    r.poll(&mut log, Some(Duration::ZERO)).unwrap();
}

/// A peer that streams without ever sending a newline is cut with a protocol error as soon
/// as it passed the limit; the reactor read little more than the limit, and another
/// connection goes on undisturbed.
#[test]
fn an_endless_line_ends_that_connection_with_bounded_memory() {
    const MAX: usize = 4096;
    let (mut r, addr) = listening(ConnConfig::default().framing(Framing::lines(MAX)));
    let mut log = Vec::new();
    let mut good = TcpStream::connect(addr).unwrap();
    let good_conn = accept(&mut r, &mut log);
    let bad = TcpStream::connect(addr).unwrap();
    let bad_conn = accept(&mut r, &mut log);
    let writer = std::thread::spawn(move || {
        let mut bad = bad;
        let junk = vec![b'x'; 64 * 1024];
        // 16 MiB at most; the reactor cuts us long before (then writes fail).
        for _ in 0..256 {
            if bad.write_all(&junk).is_err() {
                return;
            }
        }
    });
    let (ev, _) = expect_event(
        &mut r,
        &mut log,
        WAIT,
        "the endless line's end",
        |e| matches!(e, Event::Disconnected { conn, .. } if *conn == bad_conn),
    );
    assert_eq!(
        ev,
        Event::Disconnected {
            conn: bad_conn,
            cause: Cause::Protocol(ProtocolError::LineTooLong { max: MAX })
        }
    );
    // One read pass takes at most 64 KiB per read before the decoder is asked.
    let read = r.stats().bytes_read;
    assert!(
        read <= (MAX + 2 + 64 * 1024) as u64,
        "read {read} bytes of an endless line"
    );
    good.write_all(b"still here\n").unwrap();
    expect_event(
        &mut r,
        &mut log,
        WAIT,
        "the good line",
        |e| matches!(e, Event::Data { conn, bytes } if *conn == good_conn && &bytes[..] == b"still here"),
    );
    assert!(r.is_open(good_conn));
    writer.join().unwrap();
}

/// Messages end with a NUL byte.
#[derive(Debug, Default)]
struct NulTerminated {
    scanned: usize,
}

impl Decoder for NulTerminated {
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, ProtocolError> {
        match buf[self.scanned..].iter().position(|&b| b == 0) {
            Some(i) => {
                let len = self.scanned + i;
                let msg = buf.split_to(len + 1).freeze();
                self.scanned = 0;
                Ok(Some(msg.slice(..len)))
            }
            None => {
                self.scanned = buf.len();
                Ok(None)
            }
        }
    }
}

#[test]
fn a_user_decoder_frames_messages_and_is_bounded_by_max_buffered() {
    let cfg =
        ConnConfig::default().framing(Framing::custom(1000, || Box::new(NulTerminated::default())));
    let (mut r, addr) = listening(cfg);
    let mut log = Vec::new();
    let mut peer = TcpStream::connect(addr).unwrap();
    let conn = accept(&mut r, &mut log);
    peer.write_all(b"a\0bc\0").unwrap();
    expect_event(
        &mut r,
        &mut log,
        WAIT,
        "the second message",
        |e| matches!(e, Event::Data { bytes, .. } if &bytes[..] == b"bc"),
    );
    assert_eq!(data_of(&log, conn), ["a", "bc"]);
    // 1,001 bytes without the terminator: over max_buffered.
    peer.write_all(&[b'z'; 1001]).unwrap();
    let (ev, _) = expect_event(&mut r, &mut log, WAIT, "the end", |e| {
        matches!(e, Event::Disconnected { .. })
    });
    assert!(
        matches!(
            ev,
            Event::Disconnected {
                cause: Cause::Protocol(ProtocolError::MessageTooLarge { max: 1000, .. }),
                ..
            }
        ),
        "{ev:?}"
    );
}
