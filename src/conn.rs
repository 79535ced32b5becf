//! One connection's state: socket, partial frame, outbound queue, liveness, flags.
//!
//! Plain data owned by the reactor's slab; the reactor does the syscalls.

use std::net::SocketAddr;

use bytes::BytesMut;
use mio::net::TcpStream;

use crate::config::ConnConfig;
use crate::event::ConnId;
use crate::heartbeat::Liveness;
use crate::outbound::OutboundQueue;
use crate::wheel::TimerKey;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Outgoing connect in progress.
    Connecting,
    /// Open both ways (or read-closed in half-close mode).
    Open,
    /// `close` was called: flushing the queue, then FIN, then waiting (bounded by the
    /// linger time) for the peer's EOF. What the peer still sends is read and discarded.
    Closing,
}

#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) id: ConnId,
    pub(crate) sock: TcpStream,
    pub(crate) peer: Option<SocketAddr>,
    pub(crate) cfg: ConnConfig,
    pub(crate) phase: Phase,
    /// Bytes of an incomplete frame (length-delimited framing only). Empty, with no
    /// allocation, whenever no frame is half-received: idle connections hold no buffer.
    pub(crate) partial: BytesMut,
    pub(crate) out: OutboundQueue,
    pub(crate) live: Option<Liveness>,
    /// The owner paused reading.
    pub(crate) read_paused: bool,
    /// Read-closed readiness was seen (the peer's FIN is queued, maybe behind data).
    pub(crate) fin_seen: bool,
    /// `close` was called while connecting: close once connected and flushed.
    pub(crate) close_requested: bool,
    /// EOF was read (half-close mode): nothing more to read.
    pub(crate) read_eof: bool,
    /// The last write did not take everything: wait for writable readiness.
    pub(crate) write_blocked: bool,
    /// In the reactor's dirty list (has queued bytes to flush this turn).
    pub(crate) dirty: bool,
    /// In the reactor's ready queue (read budget ran out with bytes left).
    pub(crate) in_ready: bool,
    pub(crate) connect_timer: Option<TimerKey>,
    pub(crate) stall_timer: Option<TimerKey>,
    pub(crate) linger_timer: Option<TimerKey>,
}

impl Conn {
    pub(crate) fn new(id: ConnId, sock: TcpStream, cfg: ConnConfig, phase: Phase) -> Conn {
        Conn {
            id,
            sock,
            peer: None,
            cfg,
            phase,
            partial: BytesMut::new(),
            out: OutboundQueue::new(),
            live: None,
            read_paused: false,
            fin_seen: false,
            close_requested: false,
            read_eof: false,
            write_blocked: false,
            dirty: false,
            in_ready: false,
            connect_timer: None,
            stall_timer: None,
            linger_timer: None,
        }
    }

    /// Whether the reactor should read from it now. A closing connection reads (and
    /// discards) until the peer's EOF: closing a socket with unread input makes Linux
    /// reset the connection and drop what is still in flight to the peer.
    pub(crate) fn wants_read(&self) -> bool {
        match self.phase {
            Phase::Open => !self.read_paused && !self.read_eof,
            Phase::Closing => !self.read_eof,
            Phase::Connecting => false,
        }
    }
}
