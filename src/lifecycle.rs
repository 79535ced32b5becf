//! The life of one connection as a sans-IO state machine: facts in, steps out.
//!
//! Every decision about *whether* a connection ends, and *why*, is made here and nowhere
//! else. The reactor reports what the socket and the owner did (a fact: readiness, a read's
//! result, a flush that emptied the queue, a timer, an API call) and does what the returned
//! [`Step`] says: read, deliver, send a FIN, start the linger timer, or end the connection
//! with a cause. No socket, no clock, no mio: it is tested with made-up sequences of facts
//! (see the table and property tests at the bottom).
//!
//! # States
//!
//! | state | meaning |
//! |---|---|
//! | `Connecting { close_requested, paused }` | outgoing connect in progress; `close` with bytes queued sets `close_requested` (flush, then close, once connected) |
//! | `Open { peer, paused }` | open; `peer` is where the peer's sending side is: `Sending`, `FinSeen` (read-closed readiness: its FIN is queued, maybe behind data), `HalfClosed` (EOF read in half-close mode and reported) |
//! | `Closing { fin_sent, peer_eof }` | `close` was called: flushing, then FIN, then reading and discarding until the peer's EOF (a lingering close), bounded by the linger timer |
//! | `Ended` | the one `End` step was given; every later fact is ignored |
//!
//! # Invariants (enforced here, tested below)
//!
//! * `End` is returned at most once; after it every fact returns `Continue`.
//! * A connection that is reading is ended by the peer's FIN or reset only through the
//!   read that meets it, so bytes in front of the FIN or reset are delivered first
//!   ([`Lifecycle::on_error_readiness`] asks for a read before the error is taken).
//! * A heartbeat verdict needs a [`LastRead`], which only a read (or, while paused, a look
//!   at the bytes waiting) produces; a read that found bytes is never followed by a verdict.
//! * After `close` (or while closing) sends are refused; a peer whose FIN was seen or read
//!   is never declared lost by heartbeat (it can no longer send the bytes that would prove
//!   it alive); a half-close is reported once.

use std::time::Duration;

use crate::cause::{Cause, ProtocolError};

/// Where the peer's sending side is, while the connection is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PeerSide {
    /// The peer may still send.
    Sending,
    /// Read-closed readiness was seen: the peer's FIN is queued in the kernel, perhaps
    /// behind data not read yet (a read that ran out of budget spent the edge).
    FinSeen,
    /// Half-close mode: the EOF was read and reported; nothing more will arrive.
    HalfClosed,
}

/// The state of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Outgoing connect in progress.
    Connecting {
        /// `close` was called with bytes queued: flush and close once connected.
        close_requested: bool,
        /// The owner paused reading.
        paused: bool,
    },
    /// Open for sending; reading unless paused or the peer half-closed.
    Open {
        /// The peer's sending side.
        peer: PeerSide,
        /// The owner paused reading.
        paused: bool,
    },
    /// `close` was called: flushing, then FIN, then discarding input until the peer's EOF.
    Closing {
        /// The queue was flushed and our FIN sent.
        fin_sent: bool,
        /// The peer's EOF was read.
        peer_eof: bool,
    },
    /// Ended: the `End` step was given.
    Ended,
}

/// What the reactor must do after a fact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Nothing.
    Continue,
    /// Read from the socket now (a resumed or ready connection, bytes in front of an
    /// error, a last read before a heartbeat verdict).
    Read,
    /// The bytes just read go to the framing and the owner.
    Deliver,
    /// The bytes just read are discarded (closing).
    Discard,
    /// The connect completed: report `Connected`, start the heartbeat, flush the queue.
    Connected,
    /// Report `PeerHalfClosed` and stop the heartbeat verdicts.
    HalfClosed,
    /// `close` with bytes queued: start the linger timer and flush.
    Linger,
    /// Closing and flushed: send our FIN (`shutdown(Write)`), keep reading to the EOF.
    Fin,
    /// The connection ends, with this cause. Given exactly once.
    End(Cause),
}

/// What the last read before a heartbeat verdict found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LastRead {
    /// Nothing new: the read returned `WouldBlock` (or, paused, the bytes waiting in the
    /// kernel did not grow since the last look; or the EOF was already read).
    Nothing,
    /// Bytes arrived: the peer is alive.
    Bytes,
}

/// Why a send is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The connection ended.
    Ended,
    /// `close` was called.
    Closing,
}

/// One connection's lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lifecycle {
    state: State,
    /// Report the peer's EOF as a half-close instead of ending.
    half_close: bool,
}

impl Lifecycle {
    /// A connection accepted from a listener (open at once).
    pub(crate) fn accepted(half_close: bool) -> Lifecycle {
        Lifecycle {
            state: State::Open {
                peer: PeerSide::Sending,
                paused: false,
            },
            half_close,
        }
    }

    /// An outgoing connection whose connect is in progress.
    pub(crate) fn connecting(half_close: bool) -> Lifecycle {
        Lifecycle {
            state: State::Connecting {
                close_requested: false,
                paused: false,
            },
            half_close,
        }
    }

    /// Whether the connect is still in progress (nothing may be written yet).
    pub(crate) fn is_connecting(&self) -> bool {
        matches!(self.state, State::Connecting { .. })
    }

    /// Whether the reactor should read now. A closing connection reads (and discards)
    /// until the peer's EOF: closing a socket with unread input makes Linux reset the
    /// connection and drop what is still in flight to the peer.
    pub(crate) fn wants_read(&self) -> bool {
        match self.state {
            State::Open { peer, paused } => !paused && peer != PeerSide::HalfClosed,
            State::Closing { peer_eof, .. } => !peer_eof,
            State::Connecting { .. } | State::Ended => false,
        }
    }

    /// Whether the owner paused reading.
    pub(crate) fn is_paused(&self) -> bool {
        matches!(
            self.state,
            State::Open { paused: true, .. } | State::Connecting { paused: true, .. }
        )
    }

    /// Whether a heartbeat ping may be sent: open, or closing before our FIN (a peer that
    /// reads what we flush can answer, and must, or it would be declared lost mid-close).
    pub(crate) fn may_ping(&self) -> bool {
        matches!(
            self.state,
            State::Open { .. }
                | State::Closing {
                    fin_sent: false,
                    ..
                }
        )
    }

    /// Whether heartbeats still mean anything: the peer can still send the bytes that
    /// prove it alive and we can still ping. False once its FIN was seen or read, or ours
    /// was sent; the reactor then stops the connection's heartbeat (the linger timer, a
    /// failed write, `TCP_USER_TIMEOUT` or the stall timeout bound what is left).
    pub(crate) fn heartbeat_applies(&self) -> bool {
        matches!(
            self.state,
            State::Open {
                peer: PeerSide::Sending,
                ..
            } | State::Closing {
                fin_sent: false,
                peer_eof: false
            }
        )
    }

    /// Whether the connection may be handed to another reactor
    /// ([`Reactor::detach`](crate::Reactor::detach)): open, and nothing of the peer's end
    /// seen yet (a FIN or an error is reported by the reactor that saw it).
    pub(crate) fn can_hand_over(&self) -> bool {
        matches!(
            self.state,
            State::Open {
                peer: PeerSide::Sending,
                ..
            }
        )
    }

    /// Whether the owner may queue bytes.
    pub(crate) fn can_send(&self) -> Result<(), Refused> {
        match self.state {
            State::Open { .. }
            | State::Connecting {
                close_requested: false,
                ..
            } => Ok(()),
            State::Connecting {
                close_requested: true,
                ..
            }
            | State::Closing { .. } => Err(Refused::Closing),
            State::Ended => Err(Refused::Ended),
        }
    }

    fn end(&mut self, cause: Cause) -> Step {
        if self.state == State::Ended {
            return Step::Continue;
        }
        self.state = State::Ended;
        Step::End(cause)
    }

    // ------------------------------------------------------------------ connecting

    /// The connect completed (`SO_ERROR` clear, peer address known).
    pub(crate) fn on_connected(&mut self) -> Step {
        match self.state {
            State::Connecting {
                close_requested,
                paused,
            } => {
                self.state = if close_requested {
                    State::Closing {
                        fin_sent: false,
                        peer_eof: false,
                    }
                } else {
                    State::Open {
                        peer: PeerSide::Sending,
                        paused,
                    }
                };
                Step::Connected
            }
            _ => Step::Continue,
        }
    }

    /// The connect timer fired.
    pub(crate) fn on_connect_timeout(&mut self) -> Step {
        match self.state {
            State::Connecting { .. } => self.end(Cause::ConnectTimeout),
            _ => Step::Continue,
        }
    }

    // ------------------------------------------------------------------ the socket

    /// An error the socket reported (`SO_ERROR`, or a failed read or write). While
    /// connecting a timeout is a connect timeout.
    pub(crate) fn on_error(&mut self, cause: Cause) -> Step {
        match (self.state, cause) {
            (State::Connecting { .. }, Cause::TimedOut) => self.end(Cause::ConnectTimeout),
            (_, cause) => self.end(cause),
        }
    }

    /// Error readiness (the socket has a pending error, e.g. a reset). A connection that is
    /// reading reads first (`Read`): Linux still hands over the bytes that arrived before
    /// the reset, and the read then returns the error itself. Otherwise (paused, closing
    /// after the EOF) `Continue`: the reactor takes the error and reports it with
    /// [`on_error`](Lifecycle::on_error).
    pub(crate) fn on_error_readiness(&self) -> Step {
        if self.wants_read() {
            Step::Read
        } else {
            Step::Continue
        }
    }

    /// Read-closed readiness: the peer's FIN is queued, perhaps behind data. A paused
    /// connection (not in half-close mode) is reported gone at once rather than after the
    /// bytes in front of the FIN, which the owner chose not to read yet.
    pub(crate) fn on_read_closed(&mut self) -> Step {
        match self.state {
            State::Open {
                peer: PeerSide::Sending | PeerSide::FinSeen,
                paused,
            } => {
                if paused && !self.half_close {
                    return self.end(Cause::PeerClosed);
                }
                self.state = State::Open {
                    peer: PeerSide::FinSeen,
                    paused,
                };
                Step::Continue
            }
            _ => Step::Continue,
        }
    }

    /// A read returned bytes.
    pub(crate) fn on_data(&self) -> Step {
        match self.state {
            State::Open { .. } => Step::Deliver,
            State::Closing { .. } => Step::Discard,
            State::Connecting { .. } | State::Ended => Step::Continue,
        }
    }

    /// A read returned 0: the peer's EOF.
    pub(crate) fn on_eof(&mut self) -> Step {
        match self.state {
            // Read already, and reported: never twice.
            State::Open {
                peer: PeerSide::HalfClosed,
                ..
            } if self.half_close => Step::Continue,
            State::Open { paused, .. } if self.half_close => {
                self.state = State::Open {
                    peer: PeerSide::HalfClosed,
                    paused,
                };
                Step::HalfClosed
            }
            State::Open { .. } | State::Connecting { .. } => self.end(Cause::PeerClosed),
            State::Closing { fin_sent, .. } => {
                if fin_sent {
                    return self.end(Cause::Closed);
                }
                self.state = State::Closing {
                    fin_sent,
                    peer_eof: true,
                };
                Step::Continue
            }
            State::Ended => Step::Continue,
        }
    }

    /// The framing rejected the peer's bytes.
    pub(crate) fn on_protocol_error(&mut self, e: ProtocolError) -> Step {
        self.end(Cause::Protocol(e))
    }

    /// The connection came up in the ready queue (its read budget ran out last turn, or
    /// reading was resumed).
    pub(crate) fn on_ready(&mut self) -> Step {
        match self.state {
            _ if self.wants_read() => Step::Read,
            // Paused with the FIN already seen: its edge was spent, none will come again.
            State::Open {
                peer: PeerSide::FinSeen,
                paused: true,
            } if !self.half_close => self.end(Cause::PeerClosed),
            _ => Step::Continue,
        }
    }

    /// A flush emptied the outbound queue.
    pub(crate) fn on_flushed(&mut self) -> Step {
        match self.state {
            State::Closing {
                fin_sent: false,
                peer_eof,
            } => {
                if peer_eof {
                    return self.end(Cause::Closed);
                }
                self.state = State::Closing {
                    fin_sent: true,
                    peer_eof,
                };
                Step::Fin
            }
            _ => Step::Continue,
        }
    }

    // ------------------------------------------------------------------ the owner

    /// The owner called `close`; `queued` says whether bytes wait to be flushed. With
    /// nothing queued the connection ends at once; otherwise it flushes first, bounded by
    /// the linger timer. Closing twice is a no-op.
    pub(crate) fn on_close_requested(&mut self, queued: bool) -> Step {
        match self.state {
            State::Connecting {
                close_requested: true,
                ..
            }
            | State::Closing { .. }
            | State::Ended => Step::Continue,
            _ if !queued => self.end(Cause::Closed),
            State::Connecting { paused, .. } => {
                // The linger starts once connected: until then the connect timeout bounds
                // it, so an unreachable peer ends as ConnectTimeout, not as a slow peer.
                self.state = State::Connecting {
                    close_requested: true,
                    paused,
                };
                Step::Continue
            }
            State::Open { peer, .. } => {
                self.state = State::Closing {
                    fin_sent: false,
                    peer_eof: peer == PeerSide::HalfClosed,
                };
                Step::Linger
            }
        }
    }

    /// The owner called `abort`: reset at once.
    pub(crate) fn on_abort(&mut self) -> Step {
        self.end(Cause::Closed)
    }

    /// The owner paused reading.
    pub(crate) fn on_pause(&mut self) -> Step {
        match &mut self.state {
            State::Open { paused, .. } | State::Connecting { paused, .. } => *paused = true,
            State::Closing { .. } | State::Ended => {}
        }
        Step::Continue
    }

    /// The owner resumed reading: `Read` when there may be bytes (or a FIN) to read.
    pub(crate) fn on_resume(&mut self) -> Step {
        match &mut self.state {
            State::Open { paused, peer } if *paused => {
                *paused = false;
                if *peer == PeerSide::HalfClosed {
                    Step::Continue // the EOF was read: nothing more to read
                } else {
                    Step::Read
                }
            }
            State::Connecting { paused, .. } => {
                *paused = false;
                Step::Continue
            }
            _ => Step::Continue,
        }
    }

    // ------------------------------------------------------------------ timers

    /// The linger timer of a close ran out with `queued` bytes still queued (stalled for
    /// `stalled_for`).
    pub(crate) fn on_linger_expired(&mut self, queued: usize, stalled_for: Duration) -> Step {
        match self.state {
            State::Closing { .. }
            | State::Connecting {
                close_requested: true,
                ..
            } => {
                if queued == 0 {
                    // Delivered; the peer just did not close its side in time.
                    self.end(Cause::Closed)
                } else {
                    self.end(Cause::SlowPeer {
                        queued,
                        stalled_for,
                    })
                }
            }
            _ => Step::Continue,
        }
    }

    /// The outbound queue made no progress for the stall timeout, or hit its hard limit
    /// (`stalled_for` zero) with the `Disconnect` policy.
    pub(crate) fn on_slow_peer(&mut self, queued: usize, stalled_for: Duration) -> Step {
        self.end(Cause::SlowPeer {
            queued,
            stalled_for,
        })
    }

    /// The heartbeat says the peer has been silent for `silent_for`, past its timeout;
    /// `last_read` is what a last non-blocking read found (there is no verdict without
    /// one). Ends the connection only when that read found nothing. A peer whose FIN was
    /// seen or read (half-closed, or closing after its EOF) cannot send the bytes that
    /// would prove it alive: no verdict for it.
    pub(crate) fn on_heartbeat_expired(
        &mut self,
        silent_for: Duration,
        last_read: LastRead,
    ) -> Step {
        match self.state {
            State::Open {
                peer: PeerSide::FinSeen | PeerSide::HalfClosed,
                ..
            }
            | State::Closing { peer_eof: true, .. }
            | State::Connecting { .. }
            | State::Ended => Step::Continue,
            State::Open { .. } | State::Closing { .. } => match last_read {
                LastRead::Bytes => Step::Continue,
                LastRead::Nothing => self.end(Cause::HeartbeatTimeout { silent_for }),
            },
        }
    }
}

#[cfg(test)]
#[path = "lifecycle_tests.rs"]
mod tests;
