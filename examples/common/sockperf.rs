//! sockperf's TCP message format, shared by the echo example (`--protocol sockperf`, a server
//! that sockperf's own `ping-pong` client measures) and the latency client (which measures
//! `sockperf server`). Included with `#[path = "common/sockperf.rs"] mod sockperf;`.
//!
//! Every message, either way, is a 14-byte header and then the payload (sockperf 3.x,
//! `src/message.h`, checked against Debian's sockperf 3.7 on the wire):
//!
//! | bytes | field | |
//! |---|---|---|
//! | 0..8 | sequence number | big-endian `u64`; the client counts from 1 |
//! | 8..10 | flags | big-endian `u16`: 1 = sent by a client, 2 = pong requested, 4 = warm-up |
//! | 10..14 | length | big-endian `u32`: the whole message, header included (sockperf's `-m`) |
//!
//! A server answers a message that comes from a client and asks for a pong, and is not a
//! warm-up message, with the same bytes, the client flag cleared; every other message gets
//! no answer. `ping-pong` sets flags 3 on every message (`under-load` asks for a pong on one
//! in `--reply-every`). sockperf's server drops a connection whose message claims more than
//! 65,507 bytes (its `MAX_PAYLOAD_SIZE`); a length under 14 desynchronises it, and here it
//! ends the connection as a protocol error.
#![allow(dead_code)]

use bytes::{BufMut, Bytes, BytesMut};
use heartloop::codec::Decoder;
use heartloop::{Framing, ProtocolError};

/// Length of the header.
pub const HEADER_LEN: usize = 14;
/// The longest message (header included) sockperf sends or accepts by default.
pub const MAX_MESSAGE: usize = 65_507;

/// Flag: the message was sent by a client.
pub const FLAG_CLIENT: u16 = 1;
/// Flag: the client wants this message answered.
pub const FLAG_PONG_REQUEST: u16 = 2;
/// Flag: a warm-up message (never answered, never counted).
pub const FLAG_WARMUP: u16 = 4;

/// A message header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub seq: u64,
    pub flags: u16,
    /// The whole message's length, header included.
    pub len: u32,
}

impl Header {
    /// The header at the front of `buf`, if it holds one.
    pub fn parse(buf: &[u8]) -> Option<Header> {
        let h = buf.get(..HEADER_LEN)?;
        Some(Header {
            seq: u64::from_be_bytes(h[0..8].try_into().ok()?),
            flags: u16::from_be_bytes(h[8..10].try_into().ok()?),
            len: u32::from_be_bytes(h[10..14].try_into().ok()?),
        })
    }

    /// Append the header's 14 bytes to `dst`.
    pub fn put(&self, dst: &mut BytesMut) {
        dst.put_u64(self.seq);
        dst.put_u16(self.flags);
        dst.put_u32(self.len);
    }

    /// The header of a `ping-pong` request: from a client, pong requested.
    pub fn request(seq: u64, len: u32) -> Header {
        Header {
            seq,
            flags: FLAG_CLIENT | FLAG_PONG_REQUEST,
            len,
        }
    }
}

/// Cuts a connection's bytes into whole sockperf messages (header included); a length under
/// the header's or over [`MAX_MESSAGE`] is a protocol error. Keeps no state: the header says
/// how long the message is, so nothing is scanned twice.
#[derive(Debug, Default)]
pub struct SockperfDecoder;

impl Decoder for SockperfDecoder {
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, ProtocolError> {
        let Some(h) = Header::parse(buf) else {
            return Ok(None);
        };
        let len = h.len as usize;
        if len < HEADER_LEN {
            return Err(ProtocolError::Other(format!(
                "sockperf message of {len} bytes is shorter than its {HEADER_LEN}-byte header"
            )));
        }
        if len > MAX_MESSAGE {
            return Err(ProtocolError::FrameTooLarge {
                len,
                max: MAX_MESSAGE,
            });
        }
        if buf.len() < len {
            return Ok(None);
        }
        Ok(Some(buf.split_to(len).freeze()))
    }
}

/// Framing of sockperf messages: one `Event::Data` per whole message, header included.
pub fn framing() -> Framing {
    Framing::custom(MAX_MESSAGE, || Box::new(SockperfDecoder))
}

/// What a sockperf server sends back for `msg` (a whole message, as the framing delivers
/// it): the same bytes with the client flag cleared, or `None` when no answer is due (not
/// from a client, a warm-up message, or no pong requested).
pub fn reply(msg: &[u8]) -> Option<Bytes> {
    let h = Header::parse(msg)?;
    let answer = h.flags & FLAG_CLIENT != 0
        && h.flags & FLAG_PONG_REQUEST != 0
        && h.flags & FLAG_WARMUP == 0;
    if !answer {
        return None;
    }
    let mut out = BytesMut::with_capacity(msg.len());
    Header {
        flags: h.flags & !FLAG_CLIENT,
        ..h
    }
    .put(&mut out);
    out.extend_from_slice(&msg[HEADER_LEN..]);
    Some(out.freeze())
}
