//! The reactor: one mio `Poll`, a table of connections and listeners, and the turn.
//!
//! The reactor makes the syscalls; what they mean for a connection is decided by its
//! [`Lifecycle`](crate::lifecycle::Lifecycle), which the reactor feeds with facts and
//! obeys. One concern per file:
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | the `Reactor` struct, construction, counters |
//! | `table.rs` | the slab behind ids and tokens, with serial checks (no stale hit) |
//! | `turn.rs` | the turn: poll, dispatch, ready queue, expiry, hand-over |
//! | `accept.rs` | listeners, accepting, EMFILE back-off |
//! | `conns.rs` | connect, readiness of a connection, close, abort, pause, the one `end` |
//! | `read.rs` | the read path and framing into events |
//! | `write.rs` | send, the deferred flush, vectored and gathered writes |
//! | `expiry.rs` | timers (wheel), stall, linger, heartbeat verdicts |
//! | `embed.rs` | hosted mode, the handle, user sources, the poll fd |
//!
//! # One turn ([`Reactor::poll`])
//!
//! 1. Flush what the owner queued since the last turn (writes are deferred and batched).
//! 2. Sleep in the OS poll until I/O, the earliest timer or heartbeat deadline, or the
//!    owner's timeout; not at all while work is pending (ready queue, undelivered events).
//! 3. Read the clock once: `now` for the whole turn.
//! 4. Serve the ready queue (connections whose read budget ran out last turn, or that the
//!    last turn's budget across connections left unread), then the OS events: accept,
//!    connect completion, read, write, error and hang-up. Reads stop for this turn when
//!    its budget (`ReactorConfig::turn_budget`) runs out; the connections left unread
//!    wait on the ready queue, in order.
//! 5. Expire timers, then heartbeat deadlines. I/O comes first, so a peer whose bytes
//!    arrived is never declared lost, and a connection is declared lost only after a last
//!    non-blocking read found nothing.
//! 6. Flush again (pongs, pings, echoes queued in this turn), and hand the events over.

mod accept;
mod conns;
mod embed;
mod expiry;
mod handover;
mod read;
mod socket;
mod table;
mod teardown;
mod turn;
mod write;

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mio::{Events, Poll, Registry};

use crate::clock::Clock;
use crate::config::ReactorConfig;
use crate::event::{ConnId, Event};
use crate::handle::{Command, Shared};
use crate::heartbeat::DeadlineHeap;
use crate::stats::Stats;
use crate::wheel::{TimerKey, Wheel};

pub(crate) use crate::conn::Conn;
pub use accept::ListenOptions;
pub(crate) use accept::Listener;
pub(crate) use embed::UserSource;
use expiry::Timeout;
pub use handover::{AttachError, DetachError, Detached};
pub(crate) use socket::{ListenSocket, Stream};
pub use table::TOKEN_SPAN;
use table::{Key, Table};
pub use write::SendError;

/// The event loop. See the [crate docs](crate) for the story and an example.
///
/// Single-threaded: every method is called on the thread that polls. Events are collected
/// in [`poll`](Reactor::poll); sends and closes made between polls take effect in the next.
#[derive(Debug)]
pub struct Reactor {
    poll: Option<Poll>,
    registry: Registry,
    events: Events,
    /// Connections, listeners and user sources; ids and tokens are checked there.
    table: Table,
    cfg: ReactorConfig,
    /// The one source of time (see [`Clock`]).
    clock: Clock,
    wheel: Wheel<Timeout>,
    heap: DeadlineHeap<ConnId>,
    /// Connections (and listeners) with work left from a previous turn, served first, in
    /// order: those whose read budget ran out, resumed readers, those left unread when
    /// the turn's budget ran out (a readable edge is spent once seen: it is remembered
    /// here), and listeners whose accept budget ran out.
    ready: VecDeque<Key>,
    /// What is left of this turn's budget across connections (`ReactorConfig::turn_events`
    /// and `turn_bytes`).
    turn_left: usize,
    turn_bytes_left: usize,
    /// Connections whose reads wait until their `WriteBlocked` is handed over.
    held: Vec<ConnId>,
    /// Connections with queued bytes to flush before the loop sleeps.
    dirty: Vec<ConnId>,
    /// Sockets of ended connections, closed a budget's worth per turn (`teardown.rs`),
    /// and those closed at once since the last poll.
    graves: teardown::Graves,
    closed_now: usize,
    /// Events produced since the last hand-over.
    pending: Vec<Event>,
    /// Shared read buffer; `Data` events are slices of it. Kept fully initialized.
    rbuf: BytesMut,
    /// Arena for frame headers.
    hdr: BytesMut,
    /// Where a flush gathers many small chunks into one write.
    wbuf: Vec<u8>,
    /// Spare capacity handed to the kernel when counting the bytes that wait in a paused
    /// connection's receive queue (never written: see `read::waiting_bytes`).
    peek_buf: Vec<u8>,
    fired: Vec<(TimerKey, Timeout)>,
    due: Vec<ConnId>,
    now: Instant,
    stats: Stats,
    /// What every outbound queue is charged together (bytes plus
    /// [`QUEUE_ENTRY_COST`](crate::QUEUE_ENTRY_COST) per message): what the reactor-wide
    /// cap is compared with.
    charged: usize,
    /// The last turn handed the owner no event (see `ReactorConfig::quiet_coalescing`).
    quiet: bool,
    /// When the last poll that was allowed to sleep returned.
    last_wake: Option<Instant>,
    /// The work of the latest owned turn (see [`Reactor::last_turn`]).
    last_turn: Duration,
    heartbeat_conns: usize,
    /// Shared with the handles, created by the first [`Reactor::handle`] call.
    shared: Option<Arc<Shared>>,
    commands: VecDeque<Command>,
    /// A hosted turn has started (`now` was read by the first `handle_event`).
    in_turn: bool,
    /// `shutdown` was called: no new connections or listeners.
    shutting_down: bool,
    /// `Event::ShutDown` was given.
    shut_down: bool,
    /// Timers set through handles: their number → the wheel's key.
    handle_timers: std::collections::HashMap<u64, TimerKey>,
    /// When connections turned away were last logged, and how many since.
    turned_away_log: (Option<Instant>, u64),
}

impl Reactor {
    /// A reactor that owns its `mio::Poll`.
    pub fn new(cfg: ReactorConfig) -> io::Result<Reactor> {
        Reactor::with_clock(cfg, Clock::system())
    }

    /// A reactor that owns its `mio::Poll` and reads time from `clock`: with
    /// [`Clock::manual`], tests and simulations step time instead of sleeping.
    ///
    /// On a manual clock the OS poll still waits in real time: `poll(.., None)` (or a
    /// timeout) sleeps for the *manual* distance to the next deadline, which the manual
    /// clock will not cover by itself. Step time with `clock.advance(..)` and run turns
    /// with `poll(.., Some(Duration::ZERO))` (or a short real timeout to let bytes cross a
    /// socket).
    pub fn with_clock(cfg: ReactorConfig, clock: Clock) -> io::Result<Reactor> {
        let poll = Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let mut r = Reactor::with_registry(registry, 0, cfg, clock);
        r.poll = Some(poll);
        Ok(r)
    }

    fn with_registry(
        registry: Registry,
        token_base: usize,
        mut cfg: ReactorConfig,
        clock: Clock,
    ) -> Reactor {
        // A zero accept budget would requeue a listener forever without accepting; a zero
        // turn budget would never read.
        cfg.accept_budget = cfg.accept_budget.max(1);
        cfg.turn_events = cfg.turn_events.max(1);
        cfg.turn_bytes = cfg.turn_bytes.max(1);
        let now = clock.now();
        Reactor {
            poll: None,
            registry,
            events: Events::with_capacity(1024),
            table: Table::new(token_base),
            cfg,
            clock,
            wheel: Wheel::new(now),
            heap: DeadlineHeap::new(now, cfg.heartbeat_slack),
            ready: VecDeque::new(),
            turn_left: cfg.turn_events,
            turn_bytes_left: cfg.turn_bytes,
            held: Vec::new(),
            dirty: Vec::new(),
            graves: Default::default(),
            closed_now: 0,
            pending: Vec::new(),
            rbuf: BytesMut::new(),
            hdr: BytesMut::new(),
            wbuf: Vec::new(),
            peek_buf: Vec::new(),
            fired: Vec::new(),
            due: Vec::new(),
            now,
            stats: Stats::default(),
            charged: 0,
            quiet: false,
            last_wake: None,
            last_turn: Duration::ZERO,
            heartbeat_conns: 0,
            shared: None,
            commands: VecDeque::new(),
            in_turn: false,
            shutting_down: false,
            shut_down: false,
            turned_away_log: (None, 0),
            handle_timers: Default::default(),
        }
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        let mut s = self.stats;
        s.open_connections = self.open_connections() as u64;
        s
    }

    /// Connections open now (connecting, open or closing).
    pub fn open_connections(&self) -> usize {
        self.stats.open_connections as usize
    }

    /// The work of the latest [`poll`](Reactor::poll): the flush of what the owner queued
    /// before the OS poll, plus the turn after it, up to the events' hand-over; the sleep
    /// in between is not counted ([`Stats::longest_turn_us`](crate::Stats::longest_turn_us) is
    /// the longest of these).
    /// The owner's own handling of the events comes after it: an owner that reports how
    /// long one turn held every connection up adds the two (the broker example's
    /// `--stats` does). Zero in hosted mode.
    pub fn last_turn(&self) -> Duration {
        self.last_turn
    }

    /// The `now` of the latest turn.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// The clock this reactor reads.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The connections open now (connecting, open or closing), in no particular order.
    pub fn connections(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.table.conns().map(|c| c.id)
    }

    /// Shut down gracefully: stop listening, then [`close`](Reactor::close) every
    /// connection, each bounded by `linger` (or its own linger, if shorter). Every
    /// connection still reports its own `Disconnected` (`Closed` once its peer took
    /// everything, `SlowPeer` if linger ran out first); when the last one has ended,
    /// [`Event::ShutDown`] follows, once. Afterwards the reactor takes no new
    /// connections or listeners (`listen`, `connect` and `adopt` fail); timers and
    /// handles still work. A second call does nothing.
    ///
    /// ```
    /// use std::time::Duration;
    /// use heartloop::{ConnConfig, Event, Reactor, ReactorConfig};
    /// # fn main() -> std::io::Result<()> {
    /// let mut reactor = Reactor::new(ReactorConfig::default())?;
    /// reactor.listen("127.0.0.1:0".parse().unwrap(), ConnConfig::default())?;
    /// reactor.shutdown(Duration::from_secs(5));
    /// let mut events = Vec::new();
    /// reactor.poll(&mut events, Some(Duration::ZERO))?;
    /// assert_eq!(events, [Event::ShutDown]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn shutdown(&mut self, linger: Duration) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        for id in self.table.listeners().collect::<Vec<_>>() {
            let _ = self.unlisten(id);
        }
        for id in self.connections().collect::<Vec<_>>() {
            if let Some(c) = self.table.conn_mut(id) {
                c.cfg.linger = c.cfg.linger.min(linger);
            }
            let _ = self.close(id);
        }
        self.check_shut_down();
    }

    /// Whether [`shutdown`](Reactor::shutdown) was called.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// Give `Event::ShutDown` once, when shutting down and nothing is left.
    fn check_shut_down(&mut self) {
        if self.shutting_down && !self.shut_down && self.open_connections() == 0 {
            self.shut_down = true;
            // Every socket closed, as `ShutDown` says, even if the owner stops polling now.
            self.graves.clear();
            self.pending.push(Event::ShutDown);
        }
    }

    /// Refuse new connections and listeners once shutting down.
    fn refuse_if_shutting_down(&self) -> io::Result<()> {
        if self.shutting_down {
            return Err(io::Error::other("the reactor is shutting down"));
        }
        Ok(())
    }
}

impl Drop for Reactor {
    fn drop(&mut self) {
        if let Some(s) = &self.shared {
            s.gone.store(true, Ordering::Release);
        }
    }
}
