//! Handing a connection from one reactor to another (one reactor per core): `detach` takes
//! it out of this loop with everything it holds, `attach` puts it into another.

use std::fmt;
use std::io;

use bytes::BytesMut;

use super::table::Entry;
use mio::Interest;

use super::{Reactor, Stream};
use crate::codec::Decoder;
use crate::config::ConnConfig;
use crate::conn::Conn;
use crate::event::{ConnId, PeerAddr};
use crate::lifecycle::Lifecycle;
use crate::outbound::OutboundQueue;

/// A connection taken out of a reactor by [`Reactor::detach`], on its way to another
/// ([`Reactor::attach`]), typically through a [`channel`](crate::channel). It carries the
/// socket and everything the first reactor held for it: bytes read but not yet delivered
/// (an incomplete frame, or whole frames left by the read budget), the framing's decoder,
/// the outbound queue (bytes accepted by `send` but not yet written), its settings and
/// whether reading was paused. Nothing is lost or reordered on the way.
///
/// Dropping it closes the socket (the peer sees a FIN, or a reset if input was waiting).
pub struct Detached(Box<Parts>);

/// What a [`Detached`] carries (boxed: it travels through channels by value).
struct Parts {
    sock: Stream,
    peer: Option<PeerAddr>,
    cfg: ConnConfig,
    partial: BytesMut,
    backlog: bool,
    decoder: Option<Box<dyn Decoder>>,
    out: OutboundQueue,
    paused: bool,
}

impl fmt::Debug for Detached {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Detached")
            .field("peer", &self.0.peer)
            .field("buffered", &self.0.partial.len())
            .field("queued", &self.0.out.queued())
            .field("paused", &self.0.paused)
            .finish_non_exhaustive()
    }
}

impl Detached {
    /// The peer's address.
    pub fn peer_addr(&self) -> Option<&PeerAddr> {
        self.0.peer.as_ref()
    }

    /// Bytes accepted by `send` on the first reactor and not yet written.
    pub fn queued(&self) -> usize {
        self.0.out.queued()
    }
}

/// Why [`Reactor::detach`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DetachError {
    /// The id names no live connection.
    Stale,
    /// The connection is not plainly open: still connecting, closing, or the peer's end
    /// was already seen. Its end belongs to this reactor, which will report it.
    NotOpen,
}

impl fmt::Display for DetachError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DetachError::Stale => "no such connection",
            DetachError::NotOpen => "connection is connecting, closing or ending",
        })
    }
}

impl std::error::Error for DetachError {}

/// Why [`Reactor::attach`] refused; the connection comes back unchanged.
#[derive(Debug)]
#[non_exhaustive]
pub struct AttachError {
    /// The connection, as it was given.
    pub detached: Detached,
    /// What stood in the way: shutting down, `max_connections`, the reactor-wide queue
    /// cap (its queue would not fit), or the OS refusing to register the socket.
    pub error: io::Error,
}

impl fmt::Display for AttachError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "attach refused: {}", self.error)
    }
}

impl std::error::Error for AttachError {}

impl Reactor {
    /// Take an open connection out of this reactor, to [`attach`](Reactor::attach) it to
    /// another (say, the one that owns the peer's session). Call it between polls, like
    /// every other method. The id is stale at once and **no `Disconnected` is given for
    /// it here**: its life goes on under the id the other reactor gives it (this is the
    /// one exception to "every connection ends with exactly one `Disconnected`").
    ///
    /// Refused with `NotOpen` while connecting, closing, or after the peer's FIN or an
    /// error was seen: those ends are reported by this reactor.
    ///
    /// ```
    /// use heartloop::{ConnConfig, Event, Reactor, ReactorConfig};
    /// # fn main() -> std::io::Result<()> {
    /// let mut a = Reactor::new(ReactorConfig::default())?;
    /// let mut b = Reactor::new(ReactorConfig::default())?; // in real use, on another thread
    /// let l = a.listen("127.0.0.1:0".parse().unwrap(), ConnConfig::default())?;
    /// let _client = std::net::TcpStream::connect(a.local_addr(l)?)?;
    /// let mut events = Vec::new();
    /// let conn = loop {
    ///     a.poll(&mut events, None)?;
    ///     if let Some(Event::Accepted { conn, .. }) = events.pop() { break conn; }
    /// };
    /// let moving = a.detach(conn).expect("open");
    /// let conn_on_b = b.attach(moving).map_err(|e| e.error)?;
    /// assert!(!a.is_open(conn) && b.is_open(conn_on_b));
    /// # Ok(())
    /// # }
    /// ```
    pub fn detach(&mut self, id: ConnId) -> Result<Detached, DetachError> {
        let c = self.table.conn(id).ok_or(DetachError::Stale)?;
        if !c.lc.can_hand_over() {
            return Err(DetachError::NotOpen);
        }
        let Some(Entry::Conn(c)) = self.table.remove(id) else {
            return Err(DetachError::Stale);
        };
        let mut c = *c;
        // The socket leaves this poll (another registry takes it). Failure here means the
        // fd was not registered, which cannot be for a live connection; nothing to undo.
        let _ = self.registry.deregister(&mut c.sock);
        for t in [c.connect_timer, c.stall_timer, c.linger_timer]
            .into_iter()
            .flatten()
        {
            self.wheel.cancel(t);
        }
        // Its entries in the ready queue, the dirty list and the heartbeat heap are left to
        // go stale: they are checked against the table's serial and skipped.
        self.stats.bytes_queued -= c.out.queued() as u64;
        self.charged -= c.out.charged();
        self.stats.open_connections -= 1;
        if c.live.is_some() {
            self.heartbeat_conns -= 1;
        }
        self.stats.detached += 1;
        log::debug!("{id} detached ({} bytes queued)", c.out.queued());
        Ok(Detached(Box::new(Parts {
            paused: c.lc.is_paused(),
            sock: c.sock,
            peer: c.peer,
            cfg: c.cfg,
            partial: c.partial,
            backlog: c.backlog,
            decoder: c.decoder,
            out: c.out,
        })))
    }

    /// Put a connection [`detach`](Reactor::detach)ed from another reactor into this one;
    /// its new id. No `Accepted` event is given (you hold the id). What it carried is
    /// served as if it had always been here: buffered input is decoded in the next turn
    /// (before anything newer from the socket), the queue is flushed in order, reading
    /// stays paused if it was, and the heartbeat starts afresh (a full timeout from now).
    /// A `WriteBlocked` given by the first reactor is answered here by `Writable`.
    ///
    /// Refused, with the connection given back, while shutting down, at
    /// `max_connections`, or if its queue would take this reactor over its
    /// `total_queued_limit`.
    pub fn attach(&mut self, d: Detached) -> Result<ConnId, AttachError> {
        let refuse = |detached: Detached, error: io::Error| Err(AttachError { detached, error });
        if let Err(e) = self.refuse_if_shutting_down() {
            return refuse(d, e);
        }
        if self.open_connections() >= self.cfg.max_connections {
            return refuse(d, io::Error::other("at max_connections"));
        }
        let (queued, charged) = (d.0.out.queued(), d.0.out.charged());
        // The reactor-wide cap counts memory (bytes plus each message's bookkeeping).
        if self.charged.saturating_add(charged) > self.cfg.total_queued_limit {
            return refuse(
                d,
                io::Error::other(format!(
                    "its queue ({queued} bytes, {charged} charged) would exceed total_queued_limit"
                )),
            );
        }
        let Parts {
            sock,
            peer,
            cfg,
            partial,
            backlog,
            decoder,
            out,
            paused,
        } = *d.0;
        let lc = Lifecycle::accepted(cfg.half_close);
        // Registered under a token of this reactor's; on failure the socket comes back.
        let mut sock = sock;
        let registered = self.table.reserve().and_then(|(key, token)| {
            self.registry
                .register(&mut sock, token, Interest::READABLE | Interest::WRITABLE)
                .map(|()| key)
        });
        let key = match registered {
            Ok(key) => key,
            Err(error) => {
                let detached = Detached(Box::new(Parts {
                    sock,
                    peer,
                    cfg,
                    partial,
                    backlog,
                    decoder,
                    out,
                    paused,
                }));
                return Err(AttachError { detached, error });
            }
        };
        let id = ConnId {
            gen_: key.serial,
            index: key.index,
        };
        self.table
            .fill(key, Entry::Conn(Box::new(Conn::new(id, sock, cfg, lc))));
        self.stats.open_connections += 1;
        let has_input = !partial.is_empty() || backlog;
        if let Some(c) = self.table.conn_mut(id) {
            c.peer = peer;
            c.partial = partial;
            c.backlog = backlog;
            c.decoder = decoder;
            c.out = out;
            if paused {
                let _ = c.lc.on_pause();
            }
        }
        self.add_queued(queued);
        self.charged += charged;
        self.start_heartbeat(id);
        if queued > 0 {
            self.mark_dirty(id);
        }
        if has_input && !paused {
            self.schedule_read(id);
        }
        self.stats.attached += 1;
        log::debug!("{id} attached ({queued} bytes queued)");
        Ok(id)
    }
}
