//! Framing: how bytes from a peer become [`Event::Data`](crate::Event::Data).
//!
//! * [`Framing::Raw`]: bytes as they arrive; a protocol of your own parses them. Heartbeats
//!   on a raw connection are your protocol's: the reactor emits
//!   [`Event::HeartbeatDue`](crate::Event::HeartbeatDue) and you send your ping.
//! * [`Framing::LengthDelimited`]: each frame is a 5-byte header, the payload length as a
//!   big-endian `u32` and one kind byte ([`Kind`]), then the payload. Ping and Pong frames
//!   are handled by the reactor (a Ping is answered with a Pong, both count as life);
//!   only `Data` frames reach the owner. A frame longer than `max_frame` ends the
//!   connection with [`ProtocolError::FrameTooLarge`]
//!   as soon as its header arrives, before any of its payload is buffered.
//! * [`Framing::Lines`]: each line (up to `\n`, with a `\r` before it removed) is one
//!   event. A line longer than `max` ends the connection with
//!   [`ProtocolError::LineTooLong`] as soon as that many bytes arrived without a newline:
//!   a peer that never sends one holds at most `max + 2` bytes of memory. What you send
//!   goes out as given (end your lines yourself).
//! * [`Framing::Custom`]: your own [`Decoder`], with the same guarantees: at most
//!   `max_buffered` bytes of an incomplete message, and no more than the per-turn event
//!   budget. What you send goes out as given.
//!
//! This module is sans-IO: it turns buffers into frames and frames into headers.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::cause::ProtocolError;

/// Length of a [`Framing::LengthDelimited`] header: `u32` big-endian length + kind byte.
pub const HEADER_LEN: usize = 5;
/// The longest payload a length-delimited frame can carry (a 32-bit length).
pub const MAX_FRAME_LEN: usize = u32::MAX as usize;

/// How the bytes of a connection are cut into events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Framing {
    /// Bytes as they arrive.
    Raw,
    /// Length-prefixed frames with a kind byte (see the module docs).
    LengthDelimited {
        /// Largest payload accepted, in bytes.
        max_frame: usize,
    },
    /// Lines ending in `\n` (a `\r` before it is removed too); see the module docs.
    Lines {
        /// Longest line accepted, in bytes, its `\r\n` or `\n` excluded.
        max: usize,
    },
    /// A [`Decoder`] of your own; see [`Framing::custom`].
    Custom(CustomFraming),
}

impl Framing {
    /// Length-delimited framing with payloads up to `max_frame` bytes.
    pub const fn length_delimited(max_frame: usize) -> Framing {
        Framing::LengthDelimited { max_frame }
    }

    /// Line framing with lines up to `max` bytes (terminator excluded).
    ///
    /// ```
    /// use heartloop::{ConnConfig, Framing};
    /// // A chat server: one event per line, at most 4 KiB each.
    /// let cfg = ConnConfig::default().framing(Framing::lines(4096));
    /// # let _ = cfg;
    /// ```
    pub const fn lines(max: usize) -> Framing {
        Framing::Lines { max }
    }

    /// Framing by a [`Decoder`] of your own: `new` makes one for each connection, and an
    /// incomplete message may hold at most `max_buffered` bytes (more ends the connection
    /// with [`ProtocolError::MessageTooLarge`]).
    ///
    /// ```
    /// use bytes::{Bytes, BytesMut};
    /// use heartloop::codec::Decoder;
    /// use heartloop::{ConnConfig, Framing, ProtocolError};
    ///
    /// /// Messages end with a NUL byte.
    /// #[derive(Debug, Default)]
    /// struct NulTerminated {
    ///     scanned: usize, // bytes already searched: never scan them twice
    /// }
    ///
    /// impl Decoder for NulTerminated {
    ///     fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, ProtocolError> {
    ///         match buf[self.scanned..].iter().position(|&b| b == 0) {
    ///             Some(i) => {
    ///                 let len = self.scanned + i;
    ///                 let msg = buf.split_to(len + 1).freeze(); // with its NUL
    ///                 self.scanned = 0;
    ///                 Ok(Some(msg.slice(..len)))
    ///             }
    ///             None => {
    ///                 self.scanned = buf.len();
    ///                 Ok(None)
    ///             }
    ///         }
    ///     }
    /// }
    ///
    /// let cfg = ConnConfig::default()
    ///     .framing(Framing::custom(64 * 1024, || Box::new(NulTerminated::default())));
    /// # let _ = cfg;
    /// ```
    pub const fn custom(max_buffered: usize, new: fn() -> Box<dyn Decoder>) -> Framing {
        Framing::Custom(CustomFraming { new, max_buffered })
    }

    /// The decoder a connection with this framing keeps (`Lines` and `Custom`).
    pub(crate) fn decoder(&self) -> Option<Box<dyn Decoder>> {
        match *self {
            Framing::Lines { max } => Some(Box::new(LineDecoder::new(max))),
            Framing::Custom(c) => Some((c.new)()),
            Framing::Raw | Framing::LengthDelimited { .. } => None,
        }
    }
}

/// A framing of your own ([`Framing::custom`]): cuts messages off the front of the bytes
/// received from one connection. One decoder per connection, called on the loop thread.
///
/// The reactor calls [`decode`](Decoder::decode) with the bytes received and not yet
/// consumed, again and again while it returns messages (at most the per-turn event budget;
/// the rest waits for the next turn). After an `Ok(None)` it waits for more bytes; if it
/// then holds more than the framing's `max_buffered` bytes the connection ends with
/// [`ProtocolError::MessageTooLarge`]. An error ends the connection with
/// [`Cause::Protocol`](crate::Cause::Protocol).
pub trait Decoder: std::fmt::Debug + Send {
    /// Take one whole message off the front of `buf` (split it off: no copy), or return
    /// `Ok(None)` if `buf` does not hold one yet. Don't rescan bytes searched in an
    /// earlier call: a peer that trickles a byte at a time would make that quadratic.
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, ProtocolError>;
}

/// A [`Framing::Custom`]: how to make a decoder, and how much it may buffer.
#[derive(Debug, Clone, Copy)]
pub struct CustomFraming {
    new: fn() -> Box<dyn Decoder>,
    max_buffered: usize,
}

impl CustomFraming {
    /// The most bytes an incomplete message may hold.
    pub fn max_buffered(&self) -> usize {
        self.max_buffered
    }
}

impl PartialEq for CustomFraming {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::fn_addr_eq(self.new, other.new) && self.max_buffered == other.max_buffered
    }
}

impl Eq for CustomFraming {}

/// [`Framing::Lines`]: one message per line, the terminator removed. Remembers how far it
/// searched, so a line that arrives a byte at a time costs O(length), not O(length²).
#[derive(Debug)]
pub struct LineDecoder {
    max: usize,
    scanned: usize,
}

impl LineDecoder {
    /// A decoder of lines up to `max` bytes (terminator excluded).
    pub fn new(max: usize) -> LineDecoder {
        LineDecoder { max, scanned: 0 }
    }
}

impl Decoder for LineDecoder {
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, ProtocolError> {
        let too_long = ProtocolError::LineTooLong { max: self.max };
        // A line of `max` bytes takes up to `max + 2` with its "\r\n".
        let window = buf.len().min(self.max.saturating_add(2));
        match buf[self.scanned.min(window)..window]
            .iter()
            .position(|&b| b == b'\n')
        {
            Some(i) => {
                let end = self.scanned.min(window) + i; // index of the '\n'
                self.scanned = 0;
                let mut line = buf.split_to(end + 1);
                line.truncate(end);
                if line.last() == Some(&b'\r') {
                    line.truncate(end - 1);
                }
                if line.len() > self.max {
                    return Err(too_long);
                }
                Ok(Some(line.freeze()))
            }
            None if buf.len() > self.max.saturating_add(1) => Err(too_long),
            None => {
                self.scanned = window;
                Ok(None)
            }
        }
    }
}

/// The kind byte of a length-delimited frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
#[non_exhaustive]
pub enum Kind {
    /// Application data: delivered as [`Event::Data`](crate::Event::Data).
    Data = 0,
    /// Liveness probe: answered with a Pong by the reactor.
    Ping = 1,
    /// Answer to a Ping.
    Pong = 2,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        match b {
            0 => Some(Kind::Data),
            1 => Some(Kind::Ping),
            2 => Some(Kind::Pong),
            _ => None,
        }
    }
}

/// A complete Ping frame (empty payload).
pub static PING_FRAME: [u8; HEADER_LEN] = [0, 0, 0, 0, Kind::Ping as u8];
/// A complete Pong frame (empty payload).
pub static PONG_FRAME: [u8; HEADER_LEN] = [0, 0, 0, 0, Kind::Pong as u8];

/// Write the header of a frame of `kind` with a payload of `len` bytes. `len` must be at
/// most [`MAX_FRAME_LEN`] ([`Reactor::send`](crate::Reactor::send) refuses longer
/// messages with `SendError::TooLarge`); a longer one is written as `MAX_FRAME_LEN`, never
/// as a wrapped length that would look like a valid smaller frame.
pub fn put_header(dst: &mut BytesMut, kind: Kind, len: usize) {
    dst.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    dst.put_u8(kind as u8);
}

/// Encode a whole frame into one buffer (a copy; the reactor itself sends header and
/// payload as two chunks without copying the payload).
pub fn encode(kind: Kind, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(HEADER_LEN + payload.len());
    put_header(&mut b, kind, payload.len());
    b.extend_from_slice(payload);
    b.freeze()
}

/// What [`decode`] found at the front of the buffer.
#[derive(Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decoded {
    /// A whole frame, removed from the buffer.
    Frame(Kind, Bytes),
    /// Not enough bytes yet; `total` is the length of the whole frame (header included)
    /// when the header is complete, so the caller can reserve room for it once.
    Incomplete {
        /// Length of the pending frame including its header, when known.
        total: Option<usize>,
    },
}

/// Take one frame from the front of `buf`.
///
/// The payload is split off `buf` without a copy. A header that announces more than
/// `max_frame` bytes, or an unknown kind, is an error: the connection must end.
pub fn decode(buf: &mut BytesMut, max_frame: usize) -> Result<Decoded, ProtocolError> {
    if buf.len() < HEADER_LEN {
        return Ok(Decoded::Incomplete { total: None });
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    let kind = Kind::from_u8(buf[4]).ok_or(ProtocolError::UnknownKind(buf[4]))?;
    if len > max_frame {
        return Err(ProtocolError::FrameTooLarge {
            len,
            max: max_frame,
        });
    }
    if buf.len() < HEADER_LEN + len {
        return Ok(Decoded::Incomplete {
            total: Some(HEADER_LEN + len),
        });
    }
    buf.advance(HEADER_LEN);
    Ok(Decoded::Frame(kind, buf.split_to(len).freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn roundtrip_and_partial() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&encode(Kind::Data, b"hello"));
        buf.extend_from_slice(&PING_FRAME);
        buf.extend_from_slice(&encode(Kind::Data, b"wor")[..6]);
        assert_eq!(
            decode(&mut buf, 16).unwrap(),
            Decoded::Frame(Kind::Data, Bytes::from_static(b"hello"))
        );
        assert_eq!(
            decode(&mut buf, 16).unwrap(),
            Decoded::Frame(Kind::Ping, Bytes::new())
        );
        assert_eq!(
            decode(&mut buf, 16).unwrap(),
            Decoded::Incomplete { total: Some(8) }
        );
        buf.extend_from_slice(b"or");
        assert_eq!(
            decode(&mut buf, 16).unwrap(),
            Decoded::Frame(Kind::Data, Bytes::from_static(b"wor"))
        );
        assert_eq!(
            decode(&mut buf, 16).unwrap(),
            Decoded::Incomplete { total: None }
        );
    }

    fn lines(d: &mut LineDecoder, buf: &mut BytesMut) -> Result<Vec<Bytes>, ProtocolError> {
        let mut out = Vec::new();
        while let Some(l) = d.decode(buf)? {
            out.push(l);
        }
        Ok(out)
    }

    #[test]
    fn lines_are_cut_at_newlines_with_cr_removed() {
        let mut d = LineDecoder::new(8);
        let mut buf = BytesMut::from(&b"one\r\ntwo\n\nthr"[..]);
        assert_eq!(lines(&mut d, &mut buf).unwrap(), ["one", "two", ""]);
        assert_eq!(&buf[..], b"thr");
        buf.extend_from_slice(b"ee\r");
        assert_eq!(lines(&mut d, &mut buf).unwrap(), Vec::<Bytes>::new());
        buf.extend_from_slice(b"\n");
        assert_eq!(lines(&mut d, &mut buf).unwrap(), ["three"]);
        assert!(buf.is_empty());
        // Exactly `max` bytes, with "\r\n": accepted.
        let mut buf = BytesMut::from(&b"12345678\r\n"[..]);
        assert_eq!(lines(&mut d, &mut buf).unwrap(), ["12345678"]);
    }

    /// A peer that never sends a newline is cut as soon as it passed the limit: the
    /// decoder never needs more than `max + 2` bytes to decide.
    #[test]
    fn an_endless_line_is_an_error_at_max_plus_two_bytes() {
        let mut d = LineDecoder::new(8);
        let mut buf = BytesMut::new();
        for i in 0..9 {
            buf.extend_from_slice(b"x");
            assert_eq!(d.decode(&mut buf), Ok(None), "after {} bytes", i + 1);
        }
        buf.extend_from_slice(b"x"); // 10 bytes, no newline: not even "8 + \r\n"
        assert_eq!(
            d.decode(&mut buf),
            Err(ProtocolError::LineTooLong { max: 8 })
        );
        // A long line that arrives whole is refused too.
        let mut d = LineDecoder::new(3);
        let mut buf = BytesMut::from(&b"abcd\n"[..]);
        assert_eq!(
            d.decode(&mut buf),
            Err(ProtocolError::LineTooLong { max: 3 })
        );
    }

    /// Byte-at-a-time input is scanned once: the decoder resumes where it stopped.
    #[test]
    fn a_trickled_line_is_scanned_once() {
        let mut d = LineDecoder::new(1 << 20);
        let mut buf = BytesMut::new();
        for _ in 0..100_000 {
            buf.extend_from_slice(b"y");
            assert_eq!(d.decode(&mut buf), Ok(None));
            assert_eq!(
                d.scanned,
                buf.len(),
                "resumes at the end of what it searched"
            );
        }
        buf.extend_from_slice(b"\n");
        assert_eq!(d.decode(&mut buf).unwrap().map(|l| l.len()), Some(100_000));
        assert_eq!(d.scanned, 0);
    }

    #[test]
    fn oversized_header_is_rejected_before_payload() {
        let mut buf = BytesMut::new();
        put_header(&mut buf, Kind::Data, 17);
        assert_eq!(
            decode(&mut buf, 16),
            Err(ProtocolError::FrameTooLarge { len: 17, max: 16 })
        );
        let mut bad = BytesMut::from(&[0u8, 0, 0, 0, 9][..]);
        assert_eq!(decode(&mut bad, 16), Err(ProtocolError::UnknownKind(9)));
    }

    proptest! {
        /// Lines split anywhere come out the same, and arbitrary bytes never panic the
        /// line decoder nor make it hold more than `max + 2` bytes without an answer.
        #[test]
        fn lines_survive_any_split_and_any_bytes(
            wire in proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'\r'), any::<u8>()], 0..500),
            cuts in proptest::collection::vec(1usize..50, 0..30),
            max in 0usize..40,
        ) {
            let mut d = LineDecoder::new(max);
            let mut buf = BytesMut::new();
            let mut rest = &wire[..];
            let mut cuts = cuts.into_iter();
            let mut got = Vec::new();
            'feed: while !rest.is_empty() {
                let n = cuts.next().unwrap_or(rest.len()).min(rest.len());
                buf.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
                loop {
                    match d.decode(&mut buf) {
                        Ok(Some(l)) => {
                            prop_assert!(l.len() <= max && !l.contains(&b'\n'));
                            got.push(l);
                        }
                        Ok(None) => {
                            prop_assert!(buf.len() <= max + 2);
                            break;
                        }
                        Err(_) => break 'feed,
                    }
                }
            }
            // Whatever was delivered is exactly a prefix of the input's lines.
            let expected: Vec<&[u8]> = wire.split(|&b| b == b'\n').collect();
            for (g, e) in got.iter().zip(expected.iter()) {
                let e = e.strip_suffix(b"\r").unwrap_or(e);
                prop_assert_eq!(&g[..], e);
            }
        }

        /// Hostile input: arbitrary bytes, fed in arbitrary pieces, never panic; every
        /// frame handed out fits `max_frame`; the decoder stops at the first error (the
        /// connection ends there) and never buffers more than it was given.
        #[test]
        fn arbitrary_bytes_never_panic_and_frames_fit_the_limit(
            wire in proptest::collection::vec(any::<u8>(), 0..2000),
            cuts in proptest::collection::vec(1usize..300, 0..20),
            max in 0usize..128,
        ) {
            let mut buf = BytesMut::new();
            let mut rest = &wire[..];
            let mut cuts = cuts.into_iter();
            'feed: while !rest.is_empty() {
                let n = cuts.next().unwrap_or(rest.len()).min(rest.len());
                buf.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
                loop {
                    match decode(&mut buf, max) {
                        Ok(Decoded::Frame(_, p)) => prop_assert!(p.len() <= max),
                        Ok(Decoded::Incomplete { total }) => {
                            if let Some(t) = total {
                                prop_assert!(t <= HEADER_LEN + max);
                            }
                            break;
                        }
                        Err(_) => break 'feed,
                    }
                }
                prop_assert!(buf.len() <= wire.len());
            }
        }

        #[test]
        fn any_split_yields_the_same_frames(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..20),
            cuts in proptest::collection::vec(1usize..30, 0..40),
        ) {
            let mut wire = Vec::new();
            for p in &payloads { wire.extend_from_slice(&encode(Kind::Data, p)); }
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            let mut rest = &wire[..];
            let mut cuts = cuts.into_iter();
            while !rest.is_empty() {
                let n = cuts.next().unwrap_or(rest.len()).min(rest.len());
                buf.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
                while let Decoded::Frame(k, p) = decode(&mut buf, 64).unwrap() {
                    prop_assert_eq!(k, Kind::Data);
                    got.push(p.to_vec());
                }
            }
            prop_assert_eq!(got, payloads);
        }
    }
}
