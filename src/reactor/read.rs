//! The read path: one shared read buffer, a per-connection budget, framing into events.

use std::io::{self, Read};

use bytes::{Bytes, BytesMut};

use super::Reactor;
use crate::cause::{Cause, ProtocolError};
use crate::codec::{self, Decoded, Framing, Kind};
use crate::event::{ConnId, Event};
use crate::lifecycle::{LastRead, Step};

/// Size of the shared read buffer refilled when it runs low.
const READ_BUF: usize = 64 * 1024;
/// At or below this much room, the shared read buffer is refilled before a read.
///
/// 16 KiB, not less: a read that exactly fills what is offered cannot tell "drained" from
/// "more waiting" and costs an extra `WouldBlock` read. With a small threshold a stream of
/// 16 KiB messages met an exact fit every fourth message (64 KiB / 16 KiB); now a message
/// of up to 16 KiB always gets more room than it needs.
const READ_MIN: usize = 16 * 1024;
/// Most frames one connection's read pass decodes; the rest of what it read waits, decoded
/// first in its next turn. A peer of tiny (or empty) frames cannot make one turn hand over
/// tens of thousands of events.
pub(crate) const EVENT_BUDGET: usize = 1024;
/// Most bytes reserved up front for a frame whose header announced more: the buffer grows
/// with the bytes that actually arrive, not with what the peer claims.
const PARTIAL_RESERVE: usize = 64 * 1024;
/// A `Data` shorter than this is copied out of the buffer it was read into, so that an
/// owner who keeps it (or queues it for a peer that does not read) holds its length and
/// not the whole 64 KiB read chunk behind it. A longer one is a slice of that buffer: it
/// keeps at most 4× its length alive (one read chunk), or, for a frame assembled across
/// reads, the frame's own buffer. Copying a short payload costs one small allocation and a
/// `memcpy` next to the `read` that brought it (see BENCHMARKS.md).
pub(crate) const COPY_BELOW: usize = 16 * 1024;

/// The payload as handed to the owner: a copy of its own when short (see [`COPY_BELOW`]).
fn detach(bytes: Bytes) -> Bytes {
    if bytes.len() < COPY_BELOW {
        Bytes::copy_from_slice(&bytes)
    } else {
        bytes
    }
}

/// What kind of read pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pass {
    /// Driven by a fresh readable edge without read-closed or error: a short read means
    /// the receive queue was empty, and what arrives later raises a new edge, so the pass
    /// stops there (saving a `WouldBlock` read per message).
    Edge,
    /// No fresh edge will come for what waits (a queued FIN, bytes left from an earlier
    /// turn, a resumed reader): read until `WouldBlock` or a budget.
    Again,
    /// A read that must happen now, whatever the turn's budget: the last read before a
    /// heartbeat verdict, or the bytes in front of an error. Only the connection's own
    /// budget bounds it.
    Final,
}

impl Reactor {
    /// Read until `WouldBlock`, a budget (the connection's, or the turn's across
    /// connections), or (an [`Edge`](Pass::Edge) pass) a short read; deliver what was
    /// read. Returns the bytes read. A pass stopped by a budget puts the connection on the
    /// ready queue: it goes on in a later turn.
    pub(super) fn read_conn(&mut self, id: ConnId, pass: Pass) -> usize {
        let now = self.now;
        let budgeted = pass != Pass::Final;
        let mut got = 0usize;
        let mut events = 0usize;
        if budgeted && self.turn_spent() {
            self.schedule_read(id);
            return got;
        }
        if self.table.conn(id).is_some_and(|c| c.backlog)
            && !self.deliver_backlog(id, &mut events, budgeted)
        {
            return got; // ended, or still more decoded frames than one turn takes
        }
        loop {
            if self.rbuf.len() <= READ_MIN {
                // Reclaims the old allocation when every `Data` cut from it was dropped.
                self.rbuf.clear();
                self.rbuf.reserve(READ_BUF);
                self.rbuf.resize(READ_BUF, 0);
            }
            let Some(c) = self.table.conn_mut(id) else {
                return got;
            };
            // Never more than the turn has left to read.
            let want = if budgeted {
                self.rbuf.len().min(self.turn_bytes_left)
            } else {
                self.rbuf.len()
            };
            let mut short = false;
            self.stats.read_calls += 1;
            self.turn_left = self.turn_left.saturating_sub(1);
            let step = match c.sock.read(&mut self.rbuf[..want]) {
                Ok(0) => c.lc.on_eof(),
                Ok(n) => {
                    got += n;
                    short = n < want;
                    self.turn_bytes_left = self.turn_bytes_left.saturating_sub(n);
                    self.stats.bytes_read += n as u64;
                    c.waiting = 0; // what waited was read: bytes waiting later are new
                    if let Some(l) = c.live.as_mut() {
                        l.on_recv(now);
                    }
                    let chunk = self.rbuf.split_to(n);
                    match c.lc.on_data() {
                        Step::Deliver => match self.deliver(id, chunk, &mut events, budgeted) {
                            Ok(()) => Step::Continue,
                            Err(e) => match self.table.conn_mut(id) {
                                Some(c) => c.lc.on_protocol_error(e),
                                None => return got,
                            },
                        },
                        // Closing: what the peer still sends is discarded.
                        _ => Step::Continue,
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return got,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => c.lc.on_error(Cause::from_io(&e)),
            };
            self.obey(id, step);
            let Some(c) = self.table.conn_mut(id) else {
                return got; // ended
            };
            if !c.lc.wants_read() {
                return got; // EOF in half-close mode or while closing
            }
            // Before the short read's "drained": frames read but not decoded (the event
            // budget ran out) raise no edge of their own; they must be scheduled.
            if got >= c.cfg.read_budget || c.backlog || (budgeted && self.turn_spent()) {
                self.schedule_read(id);
                return got;
            }
            if pass == Pass::Edge && short {
                return got; // drained: what arrives later raises a new edge
            }
        }
    }

    /// The last read before a heartbeat verdict: read what waits (a reading connection),
    /// or, paused, see whether more bytes wait in the kernel than at the last look.
    pub(super) fn last_read(&mut self, id: ConnId) -> LastRead {
        let Some(c) = self.table.conn_mut(id) else {
            return LastRead::Nothing;
        };
        if c.lc.wants_read() {
            return if self.read_conn(id, Pass::Final) > 0 {
                LastRead::Bytes
            } else {
                LastRead::Nothing
            };
        }
        if !c.lc.is_paused() {
            return LastRead::Nothing; // EOF already read: nothing more can come
        }
        let waiting = waiting_bytes(&c.sock, &mut self.peek_buf);
        let grew = waiting > c.waiting;
        c.waiting = waiting;
        // Paused with the peer's window possibly closed by our own pause: it cannot send,
        // so its silence proves nothing.
        let window_full = socket2::SockRef::from(&c.sock)
            .recv_buffer_size()
            .is_ok_and(|rcvbuf| waiting >= rcvbuf / 4);
        if grew || window_full {
            if let Some(l) = c.live.as_mut() {
                l.on_recv(self.now);
            }
            LastRead::Bytes
        } else {
            LastRead::Nothing
        }
    }

    /// Decode the frames left over from an earlier read pass that hit the event budget.
    /// Whether the read pass may go on (the backlog is gone and the connection is open).
    fn deliver_backlog(&mut self, id: ConnId, events: &mut usize, budgeted: bool) -> bool {
        let Some(c) = self.table.conn_mut(id) else {
            return false;
        };
        if c.lc.on_data() != Step::Deliver {
            // Closing: what the peer sent is discarded.
            c.partial = BytesMut::new();
            c.backlog = false;
            return true;
        }
        if let Err(e) = self.deliver(id, BytesMut::new(), events, budgeted) {
            if let Some(c) = self.table.conn_mut(id) {
                let step = c.lc.on_protocol_error(e);
                self.obey(id, step);
            }
            return false;
        }
        match self.table.conn(id) {
            Some(c) if c.backlog => {
                self.schedule_read(id);
                false
            }
            Some(_) => true,
            None => false,
        }
    }

    /// Turn freshly read bytes into events according to the framing, at most
    /// [`EVENT_BUDGET`] frames per read pass (`events` counts them) and, when `budgeted`,
    /// no more than the turn has left; what is left is kept in the connection's partial
    /// buffer and marked as backlog.
    fn deliver(
        &mut self,
        id: ConnId,
        mut chunk: BytesMut,
        events: &mut usize,
        budgeted: bool,
    ) -> Result<(), ProtocolError> {
        let Some(c) = self.table.conn_mut(id) else {
            return Ok(());
        };
        let framing = c.cfg.framing;
        if framing == Framing::Raw {
            if !chunk.is_empty() {
                // The read call that brought it was counted against the turn already.
                *events += 1;
                self.pending.push(Event::Data {
                    conn: id,
                    bytes: detach(chunk.freeze()),
                });
            }
            return Ok(());
        }
        let length_delimited = matches!(framing, Framing::LengthDelimited { .. });
        let in_partial = !c.partial.is_empty();
        if in_partial {
            c.partial.extend_from_slice(&chunk);
        }
        let mut pinged = false;
        c.backlog = false;
        loop {
            if *events >= EVENT_BUDGET || (budgeted && self.turn_left == 0) {
                if !in_partial && !chunk.is_empty() {
                    c.partial = BytesMut::from(&chunk[..]); // at most one read's worth
                }
                c.backlog = !c.partial.is_empty();
                break;
            }
            let buf = if in_partial {
                &mut c.partial
            } else {
                &mut chunk
            };
            let next = match (framing, c.decoder.as_mut()) {
                (Framing::LengthDelimited { max_frame }, _) => match codec::decode(buf, max_frame)?
                {
                    Decoded::Frame(kind, bytes) => Ok((kind, bytes)),
                    Decoded::Incomplete { total } => Err(total),
                },
                (_, Some(d)) => match d.decode(buf)? {
                    Some(bytes) => Ok((Kind::Data, bytes)),
                    None => {
                        // Bounded at every append, not only when a message completes.
                        let max = match framing {
                            Framing::Custom(f) => f.max_buffered(),
                            _ => usize::MAX, // Lines: the decoder enforces its own limit
                        };
                        if buf.len() > max {
                            return Err(ProtocolError::MessageTooLarge {
                                buffered: buf.len(),
                                max,
                            });
                        }
                        Err(None)
                    }
                },
                (_, None) => unreachable!("a decoder is made with the connection"),
            };
            match next {
                Ok((kind, bytes)) => {
                    *events += 1;
                    self.turn_left = self.turn_left.saturating_sub(1);
                    match kind {
                        // An empty length-delimited frame carries nothing to hand over (its
                        // bytes still proved the peer alive); an empty line is a message.
                        Kind::Data if !bytes.is_empty() || !length_delimited => {
                            self.pending.push(Event::Data {
                                conn: id,
                                bytes: detach(bytes),
                            });
                        }
                        Kind::Ping => pinged = true,
                        Kind::Data | Kind::Pong => {}
                    }
                }
                Err(total) => {
                    if in_partial {
                        if c.partial.is_empty() {
                            c.partial = BytesMut::new(); // idle connections hold no buffer
                        }
                    } else if !chunk.is_empty() {
                        // Keep the tail in a buffer of its own, so the shared read buffer
                        // is not pinned by a slow frame. Sized for the whole frame only up
                        // to PARTIAL_RESERVE: beyond that it grows as bytes arrive, never
                        // with what a header merely claims.
                        let want = total.unwrap_or(0).min(PARTIAL_RESERVE);
                        let mut p = BytesMut::with_capacity(want.max(chunk.len()));
                        p.extend_from_slice(&chunk);
                        c.partial = p;
                    }
                    break;
                }
            }
        }
        if pinged {
            let now = self.now;
            if let Some(l) = c.live.as_mut() {
                l.on_ping_answered(now);
            }
            // One pong answers every ping so far (the queue keeps one waiting at most).
            self.send_control(id, Bytes::from_static(&codec::PONG_FRAME));
        }
        Ok(())
    }
}

/// Bytes waiting in the socket's receive queue, without reading them. On Linux a peek with
/// `MSG_TRUNC` counts them without copying (into `scratch`'s spare capacity, never written
/// and so never backed by memory); elsewhere a one-byte peek says only whether any wait.
fn waiting_bytes(sock: &super::Stream, scratch: &mut Vec<u8>) -> usize {
    let s = socket2::SockRef::from(sock);
    #[cfg(target_os = "linux")]
    {
        const MSG_PEEK: i32 = 0x2;
        const MSG_TRUNC: i32 = 0x20;
        let room = s.recv_buffer_size().unwrap_or(1 << 20).max(1);
        if scratch.capacity() < room {
            *scratch = Vec::with_capacity(room);
        }
        s.recv_with_flags(scratch.spare_capacity_mut(), MSG_PEEK | MSG_TRUNC)
            .unwrap_or(0)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = scratch;
        let mut b = [std::mem::MaybeUninit::uninit(); 1];
        s.peek(&mut b).unwrap_or(0)
    }
}
