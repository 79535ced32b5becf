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
pub enum Framing {
    /// Bytes as they arrive.
    Raw,
    /// Length-prefixed frames with a kind byte (see the module docs).
    LengthDelimited {
        /// Largest payload accepted, in bytes.
        max_frame: usize,
    },
}

impl Framing {
    /// Length-delimited framing with payloads up to `max_frame` bytes.
    pub const fn length_delimited(max_frame: usize) -> Framing {
        Framing::LengthDelimited { max_frame }
    }
}

/// The kind byte of a length-delimited frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
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
