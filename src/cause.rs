//! Why a connection ended: one [`Cause`] per connection, in words a person understands.
//!
//! The mapping from what the kernel reports to a cause is the heart of heartloop, and
//! it follows what Linux was measured to do (see the crate docs):
//!
//! | kernel report | cause |
//! |---|---|
//! | `read() == 0` | [`Cause::PeerClosed`] (in half-close mode [`Event::PeerHalfClosed`](crate::Event::PeerHalfClosed) instead, and the connection stays open) |
//! | `ECONNRESET`, `EPIPE`, `ECONNABORTED` on read, write or `SO_ERROR` | [`Cause::Reset`] |
//! | `ECONNREFUSED` while connecting | [`Cause::ConnectRefused`] |
//! | connect not finished before its deadline | [`Cause::ConnectTimeout`] |
//! | `ETIMEDOUT`, `ENETUNREACH`, `EHOSTUNREACH` (keepalive or `TCP_USER_TIMEOUT` gave up) | [`Cause::TimedOut`] |
//! | nothing received for the heartbeat timeout | [`Cause::HeartbeatTimeout`] |
//! | queue over its limit or not drained for the stall time | [`Cause::SlowPeer`] |
//! | any other error | [`Cause::Io`] |

use std::fmt;
use std::io;
use std::time::Duration;

/// Why a connection ended. Every connection ends exactly once, with exactly one cause.
///
/// `Display` renders it for people ("peer process exited", "no sign of life for 3.0 s:
/// peer hung, or network or host lost", ...); match on the variants for decisions.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Cause {
    /// The peer closed its side (`read() == 0`): its process exited, was killed while
    /// nothing was unread, or it closed the socket. Immediate on Linux.
    PeerClosed,
    /// The connection was reset (`ECONNRESET`, `EPIPE`, `ECONNABORTED`): the peer died
    /// with data it never read, or aborted the connection on purpose.
    Reset,
    /// Nothing was received for the heartbeat timeout: the peer's process hung (alive to
    /// the kernel, silent to us), or the network or its host is lost. A crashed *process*
    /// shows up as [`Cause::PeerClosed`] or [`Cause::Reset`] instead, at once; a hung one
    /// and a lost network cannot be told apart from here.
    HeartbeatTimeout {
        /// How long the peer had been silent when it was declared lost.
        silent_for: Duration,
    },
    /// The kernel gave up on the connection (`ETIMEDOUT`, or the last soft error
    /// `ENETUNREACH`/`EHOSTUNREACH` it reports instead): TCP keepalive probes or
    /// `TCP_USER_TIMEOUT` expired. Like a heartbeat timeout, this means network or host loss.
    TimedOut,
    /// The peer does not drain what we send: the queue hit its hard limit with the
    /// `Disconnect` policy, or made no progress for the stall timeout.
    SlowPeer {
        /// Bytes queued for the peer when it was cut off.
        queued: usize,
        /// How long the queue had made no progress (zero when the hard limit was hit).
        stalled_for: Duration,
    },
    /// `connect` was refused: nothing listens at that address.
    ConnectRefused,
    /// `connect` did not complete within its timeout.
    ConnectTimeout,
    /// The peer sent bytes that break the framing (for example a frame above the maximum).
    Protocol(ProtocolError),
    /// Any other I/O error: its kind, and the OS error number when the OS gave one (see
    /// [`Cause::io_error`] for the error itself).
    Io {
        /// The error's kind.
        kind: io::ErrorKind,
        /// The OS error number (`errno`), if any.
        errno: Option<i32>,
    },
    /// We closed it ([`Reactor::close`](crate::Reactor::close) or
    /// [`Reactor::abort`](crate::Reactor::abort)).
    Closed,
}

impl Cause {
    /// True when the cause means the peer's process went away (EOF or reset) while the
    /// network still worked.
    pub fn is_peer_exit(&self) -> bool {
        matches!(self, Cause::PeerClosed | Cause::Reset)
    }

    /// True when the cause means the network or the peer's host was lost (no sign of
    /// life), as opposed to a process that exited.
    pub fn is_network_loss(&self) -> bool {
        matches!(self, Cause::HeartbeatTimeout { .. } | Cause::TimedOut)
    }

    /// The I/O error behind a [`Cause::Io`], rebuilt from its OS error number (or kind).
    pub fn io_error(&self) -> Option<io::Error> {
        match self {
            Cause::Io { errno: Some(n), .. } => Some(io::Error::from_raw_os_error(*n)),
            Cause::Io { kind, errno: None } => Some(io::Error::from(*kind)),
            _ => None,
        }
    }

    /// Map an I/O error from a read, a write or `SO_ERROR` to a cause.
    pub fn from_io(err: &io::Error) -> Cause {
        use io::ErrorKind as K;
        match err.kind() {
            K::ConnectionReset | K::BrokenPipe | K::ConnectionAborted => Cause::Reset,
            K::ConnectionRefused => Cause::ConnectRefused,
            // When TCP gives up on an established connection (TCP_USER_TIMEOUT, keepalive,
            // retransmissions) it reports the last soft error if there was one, else
            // ETIMEDOUT: with our own route gone (link down) that is ENETUNREACH, after ICMP
            // or ARP failures EHOSTUNREACH. All of them mean the network or host was lost.
            K::TimedOut | K::NetworkUnreachable | K::HostUnreachable => Cause::TimedOut,
            kind => Cause::Io {
                kind,
                errno: err.raw_os_error(),
            },
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::PeerClosed => {
                f.write_str("peer closed the connection (its process exited or closed the socket)")
            }
            Cause::Reset => {
                f.write_str("connection reset by peer: it died with unread data or aborted")
            }
            Cause::HeartbeatTimeout { silent_for } => write!(
                f,
                "no sign of life for {:.1} s: peer hung, or network or host lost",
                silent_for.as_secs_f64()
            ),
            Cause::TimedOut => f.write_str(
                "the kernel gave up (keepalive or TCP_USER_TIMEOUT): network or host lost",
            ),
            Cause::SlowPeer {
                queued,
                stalled_for,
            } if stalled_for.is_zero() => {
                write!(f, "peer too slow: {queued} bytes queued, over the limit")
            }
            Cause::SlowPeer {
                queued,
                stalled_for,
            } => write!(
                f,
                "peer too slow: {queued} bytes queued, none drained for {:.1} s",
                stalled_for.as_secs_f64()
            ),
            Cause::ConnectRefused => f.write_str("connection refused: nothing listens there"),
            Cause::ConnectTimeout => {
                f.write_str("connect timed out: host unreachable or not answering")
            }
            Cause::Protocol(e) => write!(f, "protocol error: {e}"),
            Cause::Io { errno: Some(n), .. } => {
                write!(f, "I/O error: {}", io::Error::from_raw_os_error(*n))
            }
            Cause::Io { kind, errno: None } => write!(f, "I/O error: {kind}"),
            Cause::Closed => f.write_str("closed by us"),
        }
    }
}

/// The peer broke the framing. Ends that one connection with [`Cause::Protocol`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A frame announced more bytes than the configured maximum.
    FrameTooLarge {
        /// Announced frame length in bytes.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// A frame carried a kind byte this framing does not know.
    UnknownKind(u8),
    /// A line ran past the maximum of [`Framing::Lines`](crate::Framing::Lines) without
    /// its newline (detected as soon as the bytes arrive, before more are buffered).
    LineTooLong {
        /// The maximum line length, newline excluded.
        max: usize,
    },
    /// A [`Decoder`](crate::codec::Decoder) held more than its `max_buffered` bytes of an
    /// incomplete message.
    MessageTooLarge {
        /// Bytes held when the limit was passed.
        buffered: usize,
        /// The limit.
        max: usize,
    },
    /// A custom protocol's own error, in words.
    Other(String),
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::FrameTooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the maximum of {max}")
            }
            ProtocolError::UnknownKind(k) => write!(f, "unknown frame kind {k}"),
            ProtocolError::LineTooLong { max } => {
                write!(f, "line longer than the maximum of {max} bytes")
            }
            ProtocolError::MessageTooLarge { buffered, max } => write!(
                f,
                "incomplete message of {buffered} bytes exceeds the maximum of {max}"
            ),
            ProtocolError::Other(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for ProtocolError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_map_to_causes() {
        let e = |k| io::Error::from(k);
        assert_eq!(
            Cause::from_io(&e(io::ErrorKind::ConnectionReset)),
            Cause::Reset
        );
        assert_eq!(Cause::from_io(&e(io::ErrorKind::BrokenPipe)), Cause::Reset);
        assert_eq!(
            Cause::from_io(&e(io::ErrorKind::ConnectionAborted)),
            Cause::Reset
        );
        assert_eq!(
            Cause::from_io(&e(io::ErrorKind::ConnectionRefused)),
            Cause::ConnectRefused
        );
        assert_eq!(Cause::from_io(&e(io::ErrorKind::TimedOut)), Cause::TimedOut);
        // TCP_USER_TIMEOUT with the local link down reports the soft error ENETUNREACH.
        assert_eq!(
            Cause::from_io(&io::Error::from_raw_os_error(libc::ENETUNREACH)),
            Cause::TimedOut
        );
        assert_eq!(
            Cause::from_io(&io::Error::from_raw_os_error(libc::EHOSTUNREACH)),
            Cause::TimedOut
        );
        assert_eq!(
            Cause::from_io(&io::Error::from_raw_os_error(libc::ECONNRESET)),
            Cause::Reset
        );
        assert_eq!(
            Cause::from_io(&e(io::ErrorKind::PermissionDenied)),
            Cause::Io {
                kind: io::ErrorKind::PermissionDenied,
                errno: None
            }
        );
    }

    /// The OS error survives: people see "Permission denied (os error 13)", not
    /// "uncategorized error".
    #[test]
    fn io_causes_keep_the_os_error() {
        let c = Cause::from_io(&io::Error::from_raw_os_error(libc::EACCES));
        assert_eq!(
            c,
            Cause::Io {
                kind: io::ErrorKind::PermissionDenied,
                errno: Some(libc::EACCES)
            }
        );
        assert!(c.to_string().contains("os error 13"), "{c}");
        assert_eq!(
            c.io_error().and_then(|e| e.raw_os_error()),
            Some(libc::EACCES)
        );
        let odd = Cause::from_io(&io::Error::from_raw_os_error(libc::EPROTO));
        assert!(odd.to_string().contains("rotocol error"), "{odd}");
    }

    #[test]
    fn display_is_for_people() {
        let s = Cause::HeartbeatTimeout {
            silent_for: Duration::from_millis(3000),
        }
        .to_string();
        assert_eq!(
            s,
            "no sign of life for 3.0 s: peer hung, or network or host lost"
        );
        assert!(Cause::Reset.to_string().contains("unread data"));
        assert!(
            Cause::HeartbeatTimeout {
                silent_for: Duration::ZERO
            }
            .is_network_loss()
        );
        assert!(Cause::PeerClosed.is_peer_exit());
        assert!(!Cause::Closed.is_peer_exit());
    }
}
