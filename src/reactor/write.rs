//! The write path: `send` queues without copying; dirty connections are flushed before the
//! loop sleeps, many buffers per `writev`, or many small ones gathered into one `write`.

use std::io::{self, IoSlice, Write};
use std::time::Duration;

use bytes::Bytes;

use super::Reactor;
use super::expiry::Timeout;
use super::read::Pass;
use crate::cause::Cause;
use crate::codec::{self, Framing, Kind};
use crate::event::{ConnId, Event, StaleId};
use crate::lifecycle::{Refused, Step};
use crate::outbound::{OverflowPolicy, PushError, Watermark, charge};

/// Most buffers handed to one `writev`.
const MAX_IOV: usize = 64;
/// Below this average chunk length a flush copies the chunks into one buffer and makes a
/// plain `write` instead of a `writev`: the kernel spends ~20 ns per iovec segment, more
/// than copying a small chunk costs (fan-out of 64 B messages: half the CPU per message;
/// see BENCHMARKS.md).
const GATHER_AVG: usize = 256;
/// Most chunks gathered into one write.
const GATHER_IOV: usize = 256;
/// Most bytes gathered into one write.
const GATHER_BUF: usize = 64 * 1024;
/// Size of the arena that frame headers are cut from (no allocation per message).
const HEADER_ARENA: usize = 4096;
/// Misuse of a connection id, or a send that was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// The id names no live connection: it ended (its `Disconnected` was or will be
    /// delivered) or never existed. Nothing else is affected.
    Stale,
    /// [`Reactor::close`] was already called on it; it is flushing and takes no more.
    Closing,
    /// Queuing would exceed the connection's hard limit or the reactor-wide cap. Nothing
    /// was queued. With the `Disconnect` policy the connection may also have been ended as
    /// a slow peer: `cut` says whether it was (its `Disconnected { cause: SlowPeer }`
    /// follows as an event); with `cut == false` it is open and may be sent to again.
    #[non_exhaustive]
    Full {
        /// Bytes queued for this connection.
        queued: usize,
        /// Bytes this send would have added.
        len: usize,
        /// Whether the refusal also ended the connection (the `Disconnect` policy).
        cut: bool,
    },
    /// The message is longer than the connection's framing can carry
    /// (`LengthDelimited`: a 32-bit length). Nothing was queued; the connection is not
    /// affected.
    #[non_exhaustive]
    TooLarge {
        /// Bytes in the message.
        len: usize,
        /// The most the framing can carry.
        max: usize,
    },
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Stale => f.write_str("no such connection (it ended or never existed)"),
            SendError::Closing => f.write_str("connection is closing"),
            SendError::Full { queued, len, cut } => {
                write!(
                    f,
                    "outbound queue full: {queued} bytes queued, {len} more refused{}",
                    if *cut {
                        "; the connection was cut as a slow peer"
                    } else {
                        ""
                    }
                )
            }
            SendError::TooLarge { len, max } => {
                write!(
                    f,
                    "message of {len} bytes exceeds the framing's maximum of {max}"
                )
            }
        }
    }
}

impl std::error::Error for SendError {}

impl From<StaleId> for SendError {
    fn from(_: StaleId) -> SendError {
        SendError::Stale
    }
}

impl Reactor {
    /// Queue `bytes` for the peer (framed as the connection's framing says); written before
    /// the loop next sleeps. No copy: fan-out of one `Bytes` to many connections costs one
    /// reference count each. Sending never postpones the peer's heartbeat deadline.
    ///
    /// Fan-out: one payload, many peers, no copies; a peer over its limit is refused (or
    /// cut, with the `Disconnect` policy) without affecting the others.
    ///
    /// ```no_run
    /// # use bytes::Bytes;
    /// # use heartloop::{ConnId, Reactor, ReactorConfig, SendError};
    /// # fn main() -> std::io::Result<()> {
    /// # let mut reactor = Reactor::new(ReactorConfig::default())?;
    /// # let subscribers: Vec<ConnId> = Vec::new();
    /// let news = Bytes::from_static(b"price 101.5\n");
    /// for &conn in &subscribers {
    ///     match reactor.send(conn, news.clone()) {
    ///         Ok(()) => {}
    ///         Err(SendError::Full { .. }) => { /* a slow subscriber: its policy applied */ }
    ///         Err(_) => { /* ended or closing: its Disconnected comes as an event */ }
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn send(&mut self, id: ConnId, bytes: Bytes) -> Result<(), SendError> {
        self.send_parts(id, Bytes::new(), bytes)
    }

    /// Queue one message made of two parts, `head` then `body`, as a unit: both are
    /// queued or neither (the limits see their sum), and nothing is ever written between
    /// them. For a broker's per-subscriber header in front of a payload shared by all
    /// subscribers: `body` is never copied. With `Raw` framing `head` is not copied either;
    /// with `LengthDelimited` the two make one frame and `head` is copied next to the
    /// frame header (keep it small).
    ///
    /// ```no_run
    /// # use bytes::Bytes;
    /// # use heartloop::{ConnId, Reactor, ReactorConfig};
    /// # fn main() -> std::io::Result<()> {
    /// # let mut reactor = Reactor::new(ReactorConfig::default())?;
    /// # let subs: Vec<(ConnId, u32)> = Vec::new();
    /// let payload = Bytes::from(vec![0u8; 64 * 1024]); // shared by every subscriber
    /// for &(conn, sid) in &subs {
    ///     let head = Bytes::from(format!("MSG news {sid} {}\r\n", payload.len()));
    ///     let _ = reactor.send_parts(conn, head, payload.clone());
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn send_parts(&mut self, id: ConnId, head: Bytes, body: Bytes) -> Result<(), SendError> {
        let total_cap = self.cfg.total_queued_limit;
        let total_policy = self.cfg.total_queued_policy;
        let total = self.charged;
        let now = self.now;
        let framing = {
            let c = self.table.conn(id).ok_or(SendError::Stale)?;
            c.lc.can_send().map_err(|r| match r {
                Refused::Ended => SendError::Stale,
                Refused::Closing => SendError::Closing,
            })?;
            c.cfg.framing
        };
        let frame_header = match framing {
            Framing::LengthDelimited { .. } => {
                let len = head.len().saturating_add(body.len());
                if len > codec::MAX_FRAME_LEN {
                    return Err(SendError::TooLarge {
                        len,
                        max: codec::MAX_FRAME_LEN,
                    });
                }
                codec::HEADER_LEN
            }
            // Lines and custom framings: what is sent goes out as given.
            _ => 0,
        };
        let len = frame_header + head.len() + body.len();
        // The cap counts memory: bytes plus the bookkeeping of every queued message.
        if total.saturating_add(charge(len)) > total_cap {
            // Over the reactor-wide cap. `Disconnect` cuts the connections that hold the
            // memory (largest queue first), which may or may not include this one.
            let room = total_policy == OverflowPolicy::Disconnect && self.make_room(charge(len));
            let queued = self.table.conn(id).map_or(0, |c| c.out.queued());
            if !room || !self.is_open(id) {
                self.stats.sends_rejected += 1;
                let cut = !self.is_open(id);
                return Err(SendError::Full { queued, len, cut });
            }
        }
        let header = match framing {
            Framing::LengthDelimited { .. } => {
                // Cut from a shared arena: no allocation per message.
                let n = codec::HEADER_LEN + head.len();
                if self.hdr.capacity() < n {
                    self.hdr.reserve(HEADER_ARENA.max(n));
                }
                codec::put_header(&mut self.hdr, Kind::Data, head.len() + body.len());
                self.hdr.extend_from_slice(&head);
                self.hdr.split_to(n).freeze()
            }
            _ => head,
        };
        let in_turn = self.in_turn;
        let c = self.table.conn_mut(id).ok_or(SendError::Stale)?;
        let out_cfg = c.cfg.outbound;
        // An empty queue starts its stall clock with this push: between turns the turn's
        // `now` may be old (the owner worked), so read the clock then.
        let now = if c.out.is_empty() && !in_turn {
            self.clock.now()
        } else {
            now
        };
        let before = c.out.charged();
        match c.out.push(header, body, &out_cfg, now) {
            Ok(mark) => {
                self.charged += c.out.charged() - before;
                let dirty = !c.dirty;
                c.dirty = true;
                if dirty {
                    self.dirty.push(id);
                }
                self.add_queued(len);
                if let Some(Watermark::High { queued }) = mark {
                    self.write_blocked(id, queued);
                }
                Ok(())
            }
            Err(PushError::Full { queued, len }) => {
                Err(self.refuse(id, queued, len, out_cfg.policy))
            }
        }
    }

    /// Cut the connections with the largest queues (by their charge), as slow peers,
    /// until `need` more bytes charged fit under the reactor-wide cap. Whether they fit
    /// now. O(connections) per connection cut; only ever runs over the cap.
    fn make_room(&mut self, need: usize) -> bool {
        let cap = self.cfg.total_queued_limit;
        if need > cap {
            return false; // the send alone is over the cap: cutting others cannot help
        }
        while self.charged.saturating_add(need) > cap {
            let Some((id, queued, _)) = self
                .table
                .conns()
                .map(|c| (c.id, c.out.queued(), c.out.charged()))
                .max_by_key(|&(_, _, charged)| charged)
                .filter(|&(_, _, charged)| charged > 0)
            else {
                return false; // nothing left to cut
            };
            log::debug!("{id}: cut to keep the reactor under its queue cap ({queued} bytes)");
            if let Some(c) = self.table.conn_mut(id) {
                let step = c.lc.on_slow_peer(queued, Duration::ZERO);
                self.obey(id, step);
            }
        }
        true
    }

    fn refuse(
        &mut self,
        id: ConnId,
        queued: usize,
        len: usize,
        policy: OverflowPolicy,
    ) -> SendError {
        self.stats.sends_rejected += 1;
        if policy == OverflowPolicy::Disconnect
            && let Some(c) = self.table.conn_mut(id)
        {
            let step = c.lc.on_slow_peer(queued, Duration::ZERO);
            self.obey(id, step);
        }
        let cut = !self.is_open(id);
        SendError::Full { queued, len, cut }
    }

    pub(super) fn add_queued(&mut self, n: usize) {
        self.stats.bytes_queued += n as u64;
        self.stats.bytes_queued_peak = self.stats.bytes_queued_peak.max(self.stats.bytes_queued);
    }

    pub(super) fn send_control(&mut self, id: ConnId, frame: Bytes) {
        let now = self.now;
        let Some(c) = self.table.conn_mut(id) else {
            return;
        };
        let cfg = c.cfg.outbound;
        let (bytes, charged) = (c.out.queued(), c.out.charged());
        let mark = c.out.push_control(frame, &cfg, now);
        // Nothing is queued when the same frame already waits (one pong answers all).
        let (bytes, charged) = (c.out.queued() - bytes, c.out.charged() - charged);
        self.charged += charged;
        self.add_queued(bytes);
        if let Some(Watermark::High { queued }) = mark {
            self.write_blocked(id, queued);
        }
        self.mark_dirty(id);
    }

    /// The queue crossed the high watermark: tell the owner, and read no more from the
    /// connection until the event is handed over. An owner that answers `WriteBlocked`
    /// with `pause_reading` thus pauses before another read pass, however the crossing
    /// came (its own sends between turns, or pongs within one).
    fn write_blocked(&mut self, id: ConnId, queued: usize) {
        self.pending.push(Event::WriteBlocked { conn: id, queued });
        if let Some(c) = self.table.conn_mut(id)
            && !c.hold_reads
        {
            c.hold_reads = true;
            self.held.push(id);
        }
    }

    pub(super) fn mark_dirty(&mut self, id: ConnId) {
        if let Some(c) = self.table.conn_mut(id)
            && !c.dirty
        {
            c.dirty = true;
            self.dirty.push(id);
        }
    }

    pub(super) fn flush_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        if dirty.len() > 1 {
            // Shortest queues first: over loopback a large write also runs the receiver's
            // side of the transfer in this thread, and a small reply queued behind it waited
            // for that (the broker's hostile soak: healthy p99 under attack ~15% lower).
            let table = &self.table;
            dirty.sort_by_cached_key(|&id| table.conn(id).map_or(0, |c| c.out.queued()));
        }
        for id in dirty.drain(..) {
            let Some(c) = self.table.conn_mut(id) else {
                continue;
            };
            c.dirty = false;
            if !c.write_blocked && !c.lc.is_connecting() {
                self.flush_conn(id);
            }
        }
        if self.dirty.is_empty() {
            self.dirty = dirty; // keep the allocation
        }
    }

    /// Write as much of the queue as the kernel takes, many buffers per `writev`.
    pub(super) fn flush_conn(&mut self, id: ConnId) {
        let now = self.now;
        let Some(c) = self.table.conn_mut(id) else {
            return;
        };
        let cfg = c.cfg.outbound;
        loop {
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let cnt = c.out.io_slices(&mut iov);
            if cnt == 0 {
                break;
            }
            let mut offered: usize = iov[..cnt].iter().map(|s| s.len()).sum();
            self.stats.write_calls += 1;
            let res = if cnt == 1 {
                c.sock.write(&iov[0])
            } else if offered < cnt * GATHER_AVG {
                // Many small chunks: one copy and one plain write (see GATHER_AVG).
                let mut more = [IoSlice::new(&[]); GATHER_IOV];
                let slices = if cnt == MAX_IOV {
                    let k = c.out.io_slices(&mut more);
                    &more[..k]
                } else {
                    &iov[..cnt]
                };
                self.wbuf.clear();
                for s in slices {
                    let take = s.len().min(GATHER_BUF - self.wbuf.len());
                    self.wbuf.extend_from_slice(&s[..take]);
                    if self.wbuf.len() == GATHER_BUF {
                        break;
                    }
                }
                offered = self.wbuf.len();
                c.sock.write(&self.wbuf)
            } else {
                c.sock.write_vectored(&iov[..cnt])
            };
            match res {
                Ok(n) => {
                    self.stats.bytes_written += n as u64;
                    self.stats.bytes_queued -= n as u64;
                    if let Some(l) = c.live.as_mut() {
                        l.on_send(now);
                    }
                    let charged = c.out.charged();
                    let mark = c.out.consumed(n, &cfg, now);
                    self.charged -= charged - c.out.charged();
                    if let Some(Watermark::Low) = mark {
                        self.pending.push(Event::Writable { conn: id });
                    }
                    if n < offered {
                        // A short write means the socket buffer is full: the next
                        // writable edge comes when it drains.
                        c.write_blocked = true;
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    c.write_blocked = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // A reset seen by a write: the bytes the peer sent before it are still
                    // in the receive queue. Read them first (that read meets the error).
                    if c.lc.on_error_readiness() == Step::Read {
                        self.read_conn(id, Pass::Final);
                    }
                    if let Some(c) = self.table.conn_mut(id) {
                        let step = c.lc.on_error(Cause::from_io(&e));
                        self.obey(id, step);
                    }
                    return;
                }
            }
        }
        if c.out.is_empty() {
            c.out.shrink_if_idle();
            match c.lc.on_flushed() {
                Step::Continue => {}
                step => self.obey(id, step),
            }
        } else if c.stall_timer.is_none()
            && let Some(at) = c.out.stall_deadline(&cfg)
        {
            let key = self.wheel.insert(at, Timeout::Stall(id));
            if let Some(c) = self.table.conn_mut(id) {
                c.stall_timer = Some(key);
            }
        }
    }
}

#[cfg(test)]
mod gather_tests {
    use super::*;
    use crate::config::{ConnConfig, ReactorConfig};
    use std::io::Read;
    use std::time::Instant;

    /// Many small chunks queued in one turn leave in few plain writes (gathered), in order.
    #[test]
    fn small_sends_are_gathered_into_few_writes() {
        let mut r = Reactor::new(ReactorConfig::default()).unwrap();
        let l = r
            .listen("127.0.0.1:0".parse().unwrap(), ConnConfig::default())
            .unwrap();
        let addr = r.local_addr(l).unwrap();
        const N: usize = 2000;
        // Message i is `i % 97 + 1` bytes, each byte the low byte of i.
        let expected: Vec<u8> = (0..N)
            .flat_map(|i| std::iter::repeat_n(i as u8, i % 97 + 1))
            .collect();
        let total = expected.len();
        let reader = std::thread::spawn(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let mut got = vec![0u8; total];
            s.read_exact(&mut got).unwrap();
            got
        });
        let mut events = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        let conn = loop {
            assert!(Instant::now() < deadline, "no connection accepted");
            r.poll(&mut events, Some(Duration::from_millis(100)))
                .unwrap();
            if let Some(c) = events.drain(..).find_map(|e| match e {
                Event::Accepted { conn, .. } => Some(conn),
                _ => None,
            }) {
                break c;
            }
        };
        let before = r.stats().write_calls;
        for i in 0..N {
            r.send(conn, Bytes::from(vec![i as u8; i % 97 + 1]))
                .unwrap();
        }
        // The reader hangs up once it has everything, which may end the connection in the
        // same turn that wrote the last bytes: stop at an empty queue or a closed connection.
        while r.queued(conn).is_some_and(|q| q > 0) {
            assert!(Instant::now() < deadline, "queue not drained");
            r.poll(&mut events, Some(Duration::from_millis(100)))
                .unwrap();
        }
        let got = reader.join().unwrap();
        assert!(got == expected, "bytes arrived out of order or altered");
        let writes = r.stats().write_calls - before;
        // One writev per MAX_IOV chunks would take N / MAX_IOV = 31 calls.
        assert!(
            writes < (N / MAX_IOV) as u64,
            "{writes} write calls for {N} small chunks"
        );
    }
}
