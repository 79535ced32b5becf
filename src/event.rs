//! What the reactor reports: [`Event`], and the ids it hands out.

use std::fmt;
use std::net::SocketAddr;

use bytes::Bytes;

use crate::cause::Cause;

/// One connection, for as long as it lives.
///
/// A slab index plus a generation: the index is recycled, the generation never is, so an id
/// of an ended connection never names another one. Using a stale id gives
/// [`SendError::Stale`](crate::SendError::Stale) (or [`StaleId`](crate::StaleId)), never a panic.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId {
    pub(crate) gen_: u64,
    pub(crate) index: u32,
}

impl ConnId {
    /// A number unique to this connection within its reactor (the generation).
    pub fn serial(&self) -> u64 {
        self.gen_
    }

    /// The connection's slot: small, dense, and reused by a later connection once this
    /// one has ended. For owners who keep per-connection state in a `Vec` or `Slab`
    /// indexed by slot instead of a hash map; check [`serial`](Self::serial) (or clear
    /// the slot on `Disconnected`) so that a reused slot is not mistaken for the old
    /// connection.
    pub fn index(&self) -> usize {
        self.index as usize
    }
}

impl fmt::Debug for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn#{}", self.gen_)
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn#{}", self.gen_)
    }
}

/// The address of a peer (or of a listener): TCP, or a Unix domain socket.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
#[non_exhaustive]
pub enum PeerAddr {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix domain socket: its path, or `None` when unnamed (a client socket usually
    /// is) or abstract.
    Unix(Option<std::path::PathBuf>),
}

impl PeerAddr {
    /// The TCP address, if it is one.
    pub fn tcp(&self) -> Option<SocketAddr> {
        match self {
            PeerAddr::Tcp(a) => Some(*a),
            PeerAddr::Unix(_) => None,
        }
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerAddr::Tcp(a) => a.fmt(f),
            PeerAddr::Unix(Some(p)) => write!(f, "unix:{}", p.display()),
            PeerAddr::Unix(None) => f.write_str("unix:(unnamed)"),
        }
    }
}

impl PartialEq<SocketAddr> for PeerAddr {
    fn eq(&self, other: &SocketAddr) -> bool {
        self.tcp() == Some(*other)
    }
}

impl From<SocketAddr> for PeerAddr {
    fn from(a: SocketAddr) -> PeerAddr {
        PeerAddr::Tcp(a)
    }
}

/// The answer of an action on an id that names nothing live: a connection that ended (its
/// `Disconnected` was or will be delivered), a listener that was closed, a timer that fired
/// or was cancelled, or an id that never existed. Nothing else is affected.
///
/// The rule across the API: actions on an id (`close`, `abort`, `pause_reading`,
/// `resume_reading`, `unlisten`, `cancel_timer`) return `Result<(), StaleId>`; `send`
/// returns [`SendError::Stale`](crate::SendError::Stale) (which converts from this);
/// queries about an id (`is_open`, `peer_addr`, `queued`, `is_reading_paused`) answer
/// `false` or `None`; a listener's address is an `io::Result` because the OS call can fail
/// too (a stale listener gives `ErrorKind::NotFound`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct StaleId;

impl std::fmt::Display for StaleId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no such connection, listener or timer (it ended or never existed)")
    }
}

impl std::error::Error for StaleId {}

impl From<StaleId> for std::io::Error {
    /// `ErrorKind::NotFound`, so `?` works in functions returning `io::Result`.
    fn from(e: StaleId) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::NotFound, e)
    }
}

/// One listening socket.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct ListenerId {
    pub(crate) gen_: u64,
    pub(crate) index: u32,
}

/// A user timer set with [`Reactor::set_timer`](crate::Reactor::set_timer) or
/// [`Handle::set_timer`](crate::Handle::set_timer).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct TimerId(pub(crate) TimerRef);

/// Where a timer id came from.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) enum TimerRef {
    /// Set on the loop thread: the wheel's key.
    Wheel(crate::wheel::TimerKey),
    /// Set through a handle: its number (the reactor maps it to a wheel key).
    Handle(u64),
}

/// A user source registered with [`Reactor::register_source`](crate::Reactor::register_source).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct SourceId {
    pub(crate) gen_: u64,
    pub(crate) index: u32,
}

/// Readiness of a user source, as reported by the OS.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[non_exhaustive]
pub struct Readiness {
    /// Readable (or read-closed).
    pub readable: bool,
    /// Writable (or write-closed).
    pub writable: bool,
    /// Error readiness.
    pub error: bool,
    /// The peer closed its writing side / the read half is closed.
    pub read_closed: bool,
}

/// Everything the reactor tells its owner. Events of one connection arrive in the order they
/// happened; the last one of every connection is exactly one [`Event::Disconnected`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// A listener accepted a connection.
    Accepted {
        /// The listener that accepted it.
        listener: ListenerId,
        /// The new connection.
        conn: ConnId,
        /// The peer's address (TCP, or a Unix socket's path when it has one).
        peer: PeerAddr,
    },
    /// An outgoing [`connect`](crate::Reactor::connect) completed.
    Connected {
        /// The connection.
        conn: ConnId,
    },
    /// Bytes from the peer: as they arrived (`Framing::Raw`), or one whole message
    /// (`LengthDelimited`: a frame's payload, never empty; `Lines`, `Custom`: what the
    /// decoder cut).
    ///
    /// # Memory
    ///
    /// What keeping a `Data` (or queueing it for a peer that does not read) holds:
    ///
    /// * shorter than 16 KiB: a copy of its own, its length and nothing more (one small
    ///   allocation next to the `read` that brought it);
    /// * 16 KiB or more: a slice of the buffer it was read into, handed over without a
    ///   copy, which stays allocated while the slice lives: one 64 KiB read chunk (at most
    ///   4× the slice), or, for a frame assembled across reads, the frame's own buffer
    ///   (which may hold up to one more read beyond the frame). Copy such a slice
    ///   (`Bytes::copy_from_slice`) if it is kept for long beside much smaller ones.
    ///
    /// So the bytes an outbound limit counts for a queued `Data` are, within these
    /// factors, the memory it holds.
    Data {
        /// The connection.
        conn: ConnId,
        /// The bytes.
        bytes: Bytes,
    },
    /// The peer finished sending (half-close) and the connection asked to be told
    /// ([`ConnConfig::half_close`](crate::ConnConfig::half_close)): everything it sent has
    /// been delivered; we may still send, then [`close`](crate::Reactor::close).
    PeerHalfClosed {
        /// The connection.
        conn: ConnId,
    },
    /// The outbound queue rose to the high watermark: stop producing for this peer.
    WriteBlocked {
        /// The connection.
        conn: ConnId,
        /// Bytes queued at the crossing.
        queued: usize,
    },
    /// The outbound queue fell back to the low watermark after a `WriteBlocked`.
    Writable {
        /// The connection.
        conn: ConnId,
    },
    /// A ping is due on a connection whose framing has no built-in ping (`Raw`): nothing
    /// was sent for the heartbeat interval, or the peer was silent for an interval since
    /// the last one. Send your protocol's own ping now. At most one per interval.
    HeartbeatDue {
        /// The connection.
        conn: ConnId,
    },
    /// The connection ended. Always the last event of a connection, exactly once.
    Disconnected {
        /// The connection (now stale).
        conn: ConnId,
        /// Why.
        cause: Cause,
    },
    /// A user timer fired.
    Timer {
        /// The timer.
        id: TimerId,
        /// The tag given to [`set_timer`](crate::Reactor::set_timer).
        tag: u64,
    },
    /// The [`shutdown`](crate::Reactor::shutdown) is complete: every connection has
    /// ended (each with its own `Disconnected`) and no listener is left. Given once.
    ShutDown,
    /// A user-registered source is ready.
    Source {
        /// The source.
        id: SourceId,
        /// Its readiness.
        readiness: Readiness,
    },
    /// Values wait in the [`channel`](crate::channel) made with this tag: drain its
    /// [`Receiver`](crate::Receiver). Given once per burst of sends, not once per value.
    Mail {
        /// The channel's tag.
        tag: u64,
    },
}

impl Event {
    /// The connection this event is about, if any.
    pub fn conn(&self) -> Option<ConnId> {
        match self {
            Event::Accepted { conn, .. }
            | Event::Connected { conn }
            | Event::Data { conn, .. }
            | Event::PeerHalfClosed { conn }
            | Event::WriteBlocked { conn, .. }
            | Event::Writable { conn }
            | Event::HeartbeatDue { conn }
            | Event::Disconnected { conn, .. } => Some(*conn),
            Event::Timer { .. } | Event::Source { .. } | Event::ShutDown | Event::Mail { .. } => {
                None
            }
        }
    }
}
