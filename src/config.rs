//! Settings: [`ReactorConfig`] for the loop, [`ConnConfig`] for each connection.
//!
//! Both are `Default` plus `#[must_use]` builder setters; every setter documents its unit,
//! its default and what `None` means.

use std::time::Duration;

use crate::codec::Framing;
use crate::heartbeat::Heartbeat;
use crate::outbound::{OutboundConfig, OverflowPolicy};

/// TCP keepalive probes (`SO_KEEPALIVE`, `TCP_KEEPIDLE`, `TCP_KEEPINTVL`, `TCP_KEEPCNT`).
///
/// The OS-level backstop for network loss: after `idle` without traffic the kernel probes
/// every `interval`, and after `count` unanswered probes the connection ends with
/// [`Cause::TimedOut`](crate::Cause::TimedOut). It only works while the connection is idle
/// from our side; use `TCP_USER_TIMEOUT` ([`ConnConfig::user_timeout`]) for data in flight,
/// and heartbeats for a verdict the application controls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Keepalive {
    /// Idle time before the first probe.
    pub idle: Duration,
    /// Time between probes.
    pub interval: Duration,
    /// Unanswered probes before the kernel gives up.
    pub count: u32,
}

impl Keepalive {
    /// Probe after `idle` without traffic, then every `interval`; give up after `count`
    /// unanswered probes.
    pub const fn new(idle: Duration, interval: Duration, count: u32) -> Keepalive {
        Keepalive {
            idle,
            interval,
            count,
        }
    }
}

/// Settings of one connection (given to [`listen`](crate::Reactor::listen) for every
/// accepted connection, or to [`connect`](crate::Reactor::connect)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnConfig {
    /// How bytes are cut into [`Event::Data`](crate::Event::Data). Default: `Raw`.
    pub framing: Framing,
    /// Heartbeat interval and timeout. Default: `None` (no heartbeat).
    pub heartbeat: Option<Heartbeat>,
    /// Outbound queue limits (watermarks, hard limit, policy, stall timeout). They count
    /// memory: a queued message's bytes plus
    /// [`QUEUE_ENTRY_COST`](crate::QUEUE_ENTRY_COST) for its bookkeeping.
    pub outbound: OutboundConfig,
    /// Time allowed for an outgoing connect. Default: 10 s. `None`: the kernel's (minutes).
    pub connect_timeout: Option<Duration>,
    /// Time a graceful [`close`](crate::Reactor::close) may spend flushing the queue.
    /// Default: 5 s. When it runs out the connection ends as a slow peer.
    pub linger: Duration,
    /// Report the peer's half-close as [`Event::PeerHalfClosed`](crate::Event::PeerHalfClosed)
    /// and keep the connection open for sending. Default: `false` (EOF ends the connection).
    pub half_close: bool,
    /// `TCP_NODELAY`. Default: `true` (latency first; writes are batched by the loop anyway).
    pub nodelay: bool,
    /// TCP keepalive probes. Default: `None` (off).
    pub keepalive: Option<Keepalive>,
    /// `TCP_USER_TIMEOUT`: how long sent data may stay unacknowledged before the kernel
    /// ends the connection ([`Cause::TimedOut`](crate::Cause::TimedOut)). Default: `None`
    /// (the kernel's ~15 minutes of retransmissions).
    pub user_timeout: Option<Duration>,
    /// Read at most this many bytes from one connection per loop turn before serving the
    /// others (fairness). Default: 256 KiB.
    pub read_budget: usize,
    /// `SO_SNDBUF` in bytes. Default: `None` (the kernel's autotuning).
    pub send_buffer: Option<usize>,
    /// `SO_RCVBUF` in bytes. Default: `None` (the kernel's autotuning).
    pub recv_buffer: Option<usize>,
}

impl Default for ConnConfig {
    fn default() -> Self {
        ConnConfig {
            framing: Framing::Raw,
            heartbeat: None,
            outbound: OutboundConfig::default(),
            connect_timeout: Some(Duration::from_secs(10)),
            linger: Duration::from_secs(5),
            half_close: false,
            nodelay: true,
            keepalive: None,
            user_timeout: None,
            read_budget: 256 * 1024,
            send_buffer: None,
            recv_buffer: None,
        }
    }
}

impl ConnConfig {
    /// Set the framing.
    #[must_use]
    pub fn framing(mut self, framing: Framing) -> Self {
        self.framing = framing;
        self
    }
    /// Enable heartbeats.
    #[must_use]
    pub fn heartbeat(mut self, hb: Heartbeat) -> Self {
        self.heartbeat = Some(hb);
        self
    }
    /// Set the outbound queue limits.
    #[must_use]
    pub fn outbound(mut self, out: OutboundConfig) -> Self {
        self.outbound = out;
        self
    }
    /// Set the connect timeout (`None`: the kernel's).
    #[must_use]
    pub fn connect_timeout(mut self, t: Option<Duration>) -> Self {
        self.connect_timeout = t;
        self
    }
    /// Set how long a graceful close may flush.
    #[must_use]
    pub fn linger(mut self, t: Duration) -> Self {
        self.linger = t;
        self
    }
    /// Report half-close instead of ending the connection on EOF.
    #[must_use]
    pub fn half_close(mut self, on: bool) -> Self {
        self.half_close = on;
        self
    }
    /// Set `TCP_NODELAY`.
    #[must_use]
    pub fn nodelay(mut self, on: bool) -> Self {
        self.nodelay = on;
        self
    }
    /// Enable TCP keepalive probes.
    #[must_use]
    pub fn keepalive(mut self, k: Keepalive) -> Self {
        self.keepalive = Some(k);
        self
    }
    /// Set `TCP_USER_TIMEOUT`.
    #[must_use]
    pub fn user_timeout(mut self, t: Duration) -> Self {
        self.user_timeout = Some(t);
        self
    }
    /// Set the per-turn read budget in bytes (at least 1).
    #[must_use]
    pub fn read_budget(mut self, bytes: usize) -> Self {
        self.read_budget = bytes.max(1);
        self
    }
    /// Set `SO_SNDBUF`.
    #[must_use]
    pub fn send_buffer(mut self, bytes: usize) -> Self {
        self.send_buffer = Some(bytes);
        self
    }
    /// Set `SO_RCVBUF`.
    #[must_use]
    pub fn recv_buffer(mut self, bytes: usize) -> Self {
        self.recv_buffer = Some(bytes);
        self
    }
}

/// Settings of the loop itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReactorConfig {
    /// Most connections open at once; a connection accepted beyond it is reset at once and
    /// counted in [`Stats::rejected`](crate::Stats::rejected). Default: 1,000,000.
    pub max_connections: usize,
    /// Most connections one listener accepts per turn before serving others. Default: 256.
    pub accept_budget: usize,
    /// When accept fails for lack of file descriptors (`EMFILE`/`ENFILE`), wait this long
    /// before trying again (doubling up to 1 s while it keeps failing). Default: 20 ms.
    pub accept_backoff: Duration,
    /// Cap on the memory queued across all connections, and what a send over it does.
    /// Counted as the per-connection limits count it: each queued message's bytes plus
    /// [`QUEUE_ENTRY_COST`](crate::QUEUE_ENTRY_COST) (128 B) for its bookkeeping, so a
    /// flood of tiny messages meets the cap at about the memory it names.
    /// Default: 1 GiB, `Reject`.
    pub total_queued_limit: usize,
    /// Policy for the total cap: `Reject` fails the send; `Disconnect` ends the connections
    /// that hold the most queued bytes (largest first) as slow peers until the send fits,
    /// and fails it only if the connection it was for is among them.
    pub total_queued_policy: OverflowPolicy,
    /// Heartbeat deadlines are rounded up to a multiple of this, so that many connections
    /// share a wakeup. Default: 10 ms (at most 100 heartbeat wakeups per second).
    pub heartbeat_slack: Duration,
    /// Most [`Handle`](crate::Handle) commands waiting at once; more are refused with
    /// [`HandleError::Full`](crate::HandleError::Full). Default: 1,048,576.
    pub handle_queue_limit: usize,
    /// Most work one turn does across all connections: at most `turn_events` units
    /// (each read call and each frame decoded, data or control or empty, counts one) and
    /// `turn_bytes` bytes read. The connections left unread when either runs out keep
    /// their place: they are read first in the next turn, which follows at once (the
    /// poll does not sleep while some wait), and connections that become ready meanwhile
    /// queue behind them, so every ready connection is read within a bounded number of
    /// turns and no readiness is lost. Each connection's own budget per turn
    /// ([`ConnConfig::read_budget`], and 1,024 frames) still applies. Thousands of busy
    /// peers thus cannot make one turn long for everyone else (accepts have their own
    /// [`accept_budget`](Self::accept_budget)). Default: 1,024 units and 512 KiB.
    pub turn_events: usize,
    /// See [`turn_events`](Self::turn_events).
    pub turn_bytes: usize,
    /// Wakeup coalescing while the loop is quiet (opt-in; default `None`). A turn that
    /// handed the owner no event (it only answered pings, read pongs, flushed) is quiet;
    /// after a quiet turn the loop does not wake again before this much time has passed
    /// since its last wakeup: it sleeps out the rest first, and whatever became ready
    /// meanwhile is served together in one turn. Tens of thousands of idle connections with
    /// heartbeats then cost at most `1 / d` wakeups a second, however scattered their
    /// pings and pongs arrive. The price, paid only after a quiet turn: the first message
    /// after a quiet spell, a [`Handle`](crate::Handle) command, or a connect waits up to
    /// `d` longer; the first turn that hands over an event ends the quiet spell, and the
    /// loop is as prompt as ever until a turn is quiet again. Not applied on a manual
    /// clock, nor when `poll` is called with a zero timeout. Heartbeat verdicts may come up
    /// to `d` late (never early).
    pub quiet_coalescing: Option<Duration>,
    /// Backlog given to `listen(2)` (the kernel caps it at `net.core.somaxconn`).
    /// Default: 4096, so that a storm of connects is queued rather than dropped (a dropped
    /// SYN costs the client a 1 s retransmit).
    pub listen_backlog: u32,
}

impl Default for ReactorConfig {
    fn default() -> Self {
        ReactorConfig {
            max_connections: 1_000_000,
            accept_budget: 256,
            accept_backoff: Duration::from_millis(20),
            total_queued_limit: 1 << 30,
            total_queued_policy: OverflowPolicy::Reject,
            heartbeat_slack: Duration::from_millis(10),
            quiet_coalescing: None,
            handle_queue_limit: 1 << 20,
            turn_events: 1024,
            turn_bytes: 512 * 1024,
            listen_backlog: 4096,
        }
    }
}

impl ReactorConfig {
    /// Set the connection limit.
    #[must_use]
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }
    /// Set the accept budget per turn (at least 1).
    #[must_use]
    pub fn accept_budget(mut self, n: usize) -> Self {
        self.accept_budget = n.max(1);
        self
    }
    /// Set the first back-off after `EMFILE`/`ENFILE` (at least 1 ms: a zero back-off
    /// would spin).
    #[must_use]
    pub fn accept_backoff(mut self, t: Duration) -> Self {
        self.accept_backoff = t.max(Duration::from_millis(1));
        self
    }
    /// Set the cap on bytes queued across all connections and its policy.
    #[must_use]
    pub fn total_queued_limit(mut self, bytes: usize, policy: OverflowPolicy) -> Self {
        self.total_queued_limit = bytes;
        self.total_queued_policy = policy;
        self
    }
    /// Set the limit of waiting handle commands (at least 1).
    #[must_use]
    pub fn handle_queue_limit(mut self, n: usize) -> Self {
        self.handle_queue_limit = n.max(1);
        self
    }
    /// Set the work one turn does across connections: `events` units (read calls and
    /// frames) and `bytes` read, each at least 1 (see [`turn_events`](Self::turn_events)).
    #[must_use]
    pub fn turn_budget(mut self, events: usize, bytes: usize) -> Self {
        self.turn_events = events.max(1);
        self.turn_bytes = bytes.max(1);
        self
    }

    /// Coalesce wakeups while quiet: at most one per `d` (`Duration::ZERO`: off). See
    /// [`quiet_coalescing`](Self::quiet_coalescing) for what it costs.
    #[must_use]
    pub fn quiet_coalescing(mut self, d: Duration) -> Self {
        self.quiet_coalescing = (!d.is_zero()).then_some(d);
        self
    }

    /// Set the `listen(2)` backlog.
    #[must_use]
    pub fn listen_backlog(mut self, n: u32) -> Self {
        self.listen_backlog = n;
        self
    }
    /// Set the heartbeat coalescing slack.
    #[must_use]
    pub fn heartbeat_slack(mut self, t: Duration) -> Self {
        self.heartbeat_slack = t;
        self
    }
}
