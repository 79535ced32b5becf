//! One connection's state: socket, lifecycle, partial frame, outbound queue, liveness.
//!
//! Plain data owned by the reactor's slab; the reactor does the syscalls.

use bytes::BytesMut;

use crate::cause::ProtocolError;
use crate::codec::Decoder;
use crate::config::ConnConfig;
use crate::event::{ConnId, PeerAddr};
use crate::heartbeat::Liveness;
use crate::lifecycle::Lifecycle;
use crate::outbound::OutboundQueue;
use crate::reactor::Stream;
use crate::wheel::TimerKey;

#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) id: ConnId,
    pub(crate) sock: Stream,
    pub(crate) peer: Option<PeerAddr>,
    pub(crate) cfg: ConnConfig,
    /// Where the connection is in its life: every decision to end it is made there.
    pub(crate) lc: Lifecycle,
    /// Bytes of an incomplete frame (length-delimited framing only). Empty, with no
    /// allocation, whenever no frame is half-received: idle connections hold no buffer.
    pub(crate) partial: BytesMut,
    /// `partial` holds whole frames not decoded yet: the last read pass hit its event
    /// budget. They are decoded first in the next read pass.
    pub(crate) backlog: bool,
    /// The decoder of a `Lines` or `Custom` framing (`None` for the built-in framings).
    pub(crate) decoder: Option<Box<dyn Decoder>>,
    /// `close_with`'s reason: reported instead of `Closed` when the close completes.
    pub(crate) close_reason: Option<ProtocolError>,
    pub(crate) out: OutboundQueue,
    pub(crate) live: Option<Liveness>,
    /// While reading is paused: the bytes waiting in the kernel at the last heartbeat
    /// verdict (more of them later is a sign of life; the same ones are not).
    pub(crate) waiting: usize,
    /// The last write did not take everything: wait for writable readiness.
    pub(crate) write_blocked: bool,
    /// In the reactor's dirty list (has queued bytes to flush this turn).
    pub(crate) dirty: bool,
    /// In the reactor's ready queue (read budget ran out with bytes left).
    pub(crate) in_ready: bool,
    /// The queue crossed the high watermark and the owner has not been handed the
    /// `WriteBlocked` yet: reads wait (on the ready queue) until it has, so that the owner
    /// can pause reading before another read pass.
    pub(crate) hold_reads: bool,
    pub(crate) connect_timer: Option<TimerKey>,
    pub(crate) stall_timer: Option<TimerKey>,
    pub(crate) linger_timer: Option<TimerKey>,
}

impl Conn {
    pub(crate) fn new(id: ConnId, sock: Stream, cfg: ConnConfig, lc: Lifecycle) -> Conn {
        Conn {
            id,
            sock,
            peer: None,
            cfg,
            lc,
            partial: BytesMut::new(),
            backlog: false,
            decoder: cfg.framing.decoder(),
            close_reason: None,
            out: OutboundQueue::new(),
            live: None,
            waiting: 0,
            write_blocked: false,
            dirty: false,
            in_ready: false,
            hold_reads: false,
            connect_timer: None,
            stall_timer: None,
            linger_timer: None,
        }
    }
}
