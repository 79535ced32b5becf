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
    /// `close` was called: flushing the queue, then FIN. Nothing more is read.
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
            read_eof: false,
            write_blocked: false,
            dirty: false,
            in_ready: false,
            connect_timer: None,
            stall_timer: None,
            linger_timer: None,
        }
    }

    /// Whether the reactor should read from it now.
    pub(crate) fn wants_read(&self) -> bool {
        self.phase == Phase::Open && !self.read_paused && !self.read_eof
    }
}
