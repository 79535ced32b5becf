//! Always-on counters: what the loop is doing, without a profiler.

use crate::cause::Cause;

/// Connections ended, by cause.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DisconnectCounts {
    /// [`Cause::PeerClosed`].
    pub peer_closed: u64,
    /// [`Cause::Reset`].
    pub reset: u64,
    /// [`Cause::HeartbeatTimeout`].
    pub heartbeat_timeout: u64,
    /// [`Cause::TimedOut`].
    pub timed_out: u64,
    /// [`Cause::SlowPeer`].
    pub slow_peer: u64,
    /// [`Cause::ConnectRefused`].
    pub connect_refused: u64,
    /// [`Cause::ConnectTimeout`].
    pub connect_timeout: u64,
    /// [`Cause::Protocol`].
    pub protocol: u64,
    /// [`Cause::Io`] and anything else.
    pub io: u64,
    /// [`Cause::Closed`].
    pub closed: u64,
}

impl DisconnectCounts {
    pub(crate) fn count(&mut self, cause: &Cause) {
        let slot = match cause {
            Cause::PeerClosed => &mut self.peer_closed,
            Cause::Reset => &mut self.reset,
            Cause::HeartbeatTimeout { .. } => &mut self.heartbeat_timeout,
            Cause::TimedOut => &mut self.timed_out,
            Cause::SlowPeer { .. } => &mut self.slow_peer,
            Cause::ConnectRefused => &mut self.connect_refused,
            Cause::ConnectTimeout => &mut self.connect_timeout,
            Cause::Protocol(_) => &mut self.protocol,
            Cause::Closed => &mut self.closed,
            Cause::Io { .. } => &mut self.io,
        };
        *slot += 1;
    }

    /// All disconnects.
    pub fn total(&self) -> u64 {
        self.peer_closed
            + self.reset
            + self.heartbeat_timeout
            + self.timed_out
            + self.slow_peer
            + self.connect_refused
            + self.connect_timeout
            + self.protocol
            + self.io
            + self.closed
    }
}

impl std::ops::AddAssign for DisconnectCounts {
    fn add_assign(&mut self, o: DisconnectCounts) {
        let DisconnectCounts {
            peer_closed,
            reset,
            heartbeat_timeout,
            timed_out,
            slow_peer,
            connect_refused,
            connect_timeout,
            protocol,
            io,
            closed,
        } = o;
        self.peer_closed += peer_closed;
        self.reset += reset;
        self.heartbeat_timeout += heartbeat_timeout;
        self.timed_out += timed_out;
        self.slow_peer += slow_peer;
        self.connect_refused += connect_refused;
        self.connect_timeout += connect_timeout;
        self.protocol += protocol;
        self.io += io;
        self.closed += closed;
    }
}

/// Counters kept by the reactor ([`Reactor::stats`](crate::Reactor::stats)). Plain integers,
/// updated on the loop thread; reading them costs nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Loop turns (calls into the OS poll, blocking or not).
    pub turns: u64,
    /// Turns that were allowed to sleep (non-zero poll timeout): the loop's wakeups.
    pub wakeups: u64,
    /// OS readiness events handled.
    pub os_events: u64,
    /// Events handed to the owner.
    pub events: u64,
    /// Connections accepted by listeners.
    pub accepted: u64,
    /// Connections turned away at `max_connections` (reset at once).
    pub rejected: u64,
    /// Times accepting backed off because file descriptors ran out.
    pub accept_backoffs: u64,
    /// Outgoing connects completed.
    pub connected: u64,
    /// Connections open now.
    pub open_connections: u64,
    /// Connections ended, by cause.
    pub disconnects: DisconnectCounts,
    /// Bytes read from sockets.
    pub bytes_read: u64,
    /// Bytes written to sockets.
    pub bytes_written: u64,
    /// Bytes queued for writing now, across all connections.
    pub bytes_queued: u64,
    /// Largest `bytes_queued` seen.
    pub bytes_queued_peak: u64,
    /// `write`/`writev` calls.
    pub write_calls: u64,
    /// `read` calls.
    pub read_calls: u64,
    /// Heartbeat pings sent or requested (`HeartbeatDue`).
    pub pings: u64,
    /// Sends refused (hard limit or total cap with the `Reject` policy).
    pub sends_rejected: u64,
    /// Handle commands that found their connection gone (or refused) when applied.
    pub handle_dropped: u64,
    /// The longest turn's work, in microseconds: the flush of what the owner queued before
    /// the OS poll, plus the work from the OS poll's return to the events' hand-over (the
    /// time every other connection waited on one turn; the sleep in between is not
    /// counted). Owned mode only.
    pub longest_turn_us: u64,
    /// Connections handed to another reactor ([`Reactor::detach`](crate::Reactor::detach)).
    pub detached: u64,
    /// Connections taken over from another reactor ([`Reactor::attach`](crate::Reactor::attach)).
    pub attached: u64,
}

/// Summing the stats of several reactors (one per core) gives the whole process's
/// figures: counters and current levels add up; `longest_turn_us` is the longest of all;
/// `bytes_queued_peak` is the sum of each reactor's peak (an upper bound of the process's
/// peak, reached only if all peaked at once).
impl std::ops::AddAssign for Stats {
    fn add_assign(&mut self, o: Stats) {
        // Destructured in full: a new field fails to compile here until it is summed.
        let Stats {
            turns,
            wakeups,
            os_events,
            events,
            accepted,
            rejected,
            accept_backoffs,
            connected,
            open_connections,
            disconnects,
            bytes_read,
            bytes_written,
            bytes_queued,
            bytes_queued_peak,
            write_calls,
            read_calls,
            pings,
            sends_rejected,
            handle_dropped,
            longest_turn_us,
            detached,
            attached,
        } = o;
        self.turns += turns;
        self.wakeups += wakeups;
        self.os_events += os_events;
        self.events += events;
        self.accepted += accepted;
        self.rejected += rejected;
        self.accept_backoffs += accept_backoffs;
        self.connected += connected;
        self.open_connections += open_connections;
        self.disconnects += disconnects;
        self.bytes_read += bytes_read;
        self.bytes_written += bytes_written;
        self.bytes_queued += bytes_queued;
        self.bytes_queued_peak += bytes_queued_peak;
        self.write_calls += write_calls;
        self.read_calls += read_calls;
        self.pings += pings;
        self.sends_rejected += sends_rejected;
        self.handle_dropped += handle_dropped;
        self.longest_turn_us = self.longest_turn_us.max(longest_turn_us);
        self.detached += detached;
        self.attached += attached;
    }
}

impl std::ops::Add for Stats {
    type Output = Stats;
    fn add(mut self, o: Stats) -> Stats {
        self += o;
        self
    }
}

impl std::iter::Sum for Stats {
    fn sum<I: Iterator<Item = Stats>>(iter: I) -> Stats {
        iter.fold(Stats::default(), |a, b| a + b)
    }
}

/// One line of the counters a person watches, for logs and `--stats` output:
/// `open N accepted N read N B written N B queued N B (peak N) turns N longest turn N us
/// disconnects N (reset N, peer closed N, slow peer N, protocol N, heartbeat N, other N)
/// sends refused N`. Each figure follows its name, so a line can be taken apart by name.
///
/// ```
/// let line = heartloop::Stats::default().to_string();
/// assert!(line.starts_with("open 0 accepted 0 read 0 B"));
/// assert!(line.contains("longest turn 0 us"));
/// ```
impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = &self.disconnects;
        let named = d.reset + d.peer_closed + d.slow_peer + d.protocol + d.heartbeat_timeout;
        write!(
            f,
            "open {} accepted {} read {} B written {} B queued {} B (peak {}) turns {} \
             longest turn {} us disconnects {} (reset {}, peer closed {}, slow peer {}, \
             protocol {}, heartbeat {}, other {}) sends refused {}",
            self.open_connections,
            self.accepted,
            self.bytes_read,
            self.bytes_written,
            self.bytes_queued,
            self.bytes_queued_peak,
            self.turns,
            self.longest_turn_us,
            d.total(),
            d.reset,
            d.peer_closed,
            d.slow_peer,
            d.protocol,
            d.heartbeat_timeout,
            d.total().saturating_sub(named),
            self.sends_rejected,
        )
    }
}
