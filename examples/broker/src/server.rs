//! The broker: clients, subscriptions, fan-out and liveness, on one heartloop reactor; and
//! its neighbours, which are told the interest of this reactor's side and sent the
//! messages that match theirs: the other reactors of the process (`mesh.rs`) and the
//! link to a NATS hub when this broker is a leaf node (`leaf.rs`).
//!
//! # Neighbours
//!
//! A neighbour is a subscriber of a kind of its own: it owns subscriptions in `nindex`
//! (subject, queue group, weight: how many members it stands for), set by what it
//! announces, and a message that matches them is sent to it once, whatever the number of
//! its subscribers, with the queue groups it was picked for. This reactor announces its
//! own side's interest to each neighbour in aggregate: one announcement when the first
//! subscription on a subject (and queue group) appears, one when the last goes, and for a
//! queue group its weight whenever that changes. Forwarding follows split horizon: what
//! a client publishes may go to every neighbour; what a peer reactor sends may go on to
//! the leaf link (never to another reactor: the sender already did that); what the leaf
//! link sends may go to the peer reactors (never back to the hub). So the leaf link, on
//! reactor 0, is a neighbour of every reactor: reactor 0 announces to its peers the
//! hub's interest with its own clients', and to the hub its peers' interest with its own.
//!
//! A queue group gets each message once across the whole subject space: the reactor
//! where the message comes in picks the member, among its own clients (weight 1 each)
//! and its neighbours' weights; a message sent to a neighbour names the groups it was
//! picked for, and a message that came from a neighbour reaches only the groups it
//! names.

mod leaf;
mod mesh;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use heartloop::{
    Cause, ConnConfig, ConnId, Event, Heartbeat, ListenOptions, Member, OutboundConfig,
    OverflowPolicy, PeerAddr, Reactor, ReactorConfig,
};
use slab::Slab;

pub use mesh::Batch;

use crate::opts::Rng;
use crate::parser::{Op, ParseError, Parser};
use crate::subjects::{Index, Loc, Matches, valid_literal_subject};

/// The version announced in `INFO`: the broker's own, not a nats-server version it is not.
/// Clients use the server version only to gate JetStream features (which this broker
/// does not have: async-nats' `is_server_compatible`, nats.go's `serverMinVersion`); the
/// core protocol's features are announced by `proto` and `headers`.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A client's batch is handed to the reactor once it holds this much, rather than
/// growing for the rest of the turn (the pending limit counts it either way).
const FLUSH_AT: usize = 64 * 1024;

/// The least of the broker's own time one turn spends on its clients' operations before
/// the client being processed yields (its parsed operations, or the rest of its
/// publish's fan-out, wait for the next turn, its reading paused meanwhile); set by
/// `--turn-time`. A turn's budget is this, or the reactor's part of the last turn (its
/// flush, reads and closes) as far as writes explain it (at most [`WRITE_COST`] per
/// client the last turn handed a batch to), whichever is longer: where each turn's flush
/// is costly (a fan-out to a thousand subscribers: a `write` each), the broker's share
/// grows with it, so that each `write` carries as many messages as without the budget;
/// where the reactor's turn is long for other reasons (reading a burst), it does not. A publish that fans out to thousands of
/// subscriptions, a burst of thousands of SUBs, or a cut client's thousands of
/// subscriptions cannot make a turn long for every other client: the light ones (a
/// request, a PING) are served first in each turn, and wait at most about one budget
/// behind the heavy ones. The work is counted in units (an operation one, a delivery one
/// more, a subscription added or removed [`SUB_COST`] more) to read the clock only every
/// 32 units.
pub const TURN_TIME: Duration = Duration::from_micros(25);

/// The most one `write` to a client is taken to cost the reactor's flush (loopback, this
/// machine: 2-10 µs, the receiver's wakeup included); see [`TURN_TIME`].
const WRITE_COST: Duration = Duration::from_micros(10);

/// What adding or removing a subscription costs beyond its operation (see [`TURN_TIME`]):
/// the index, the client's sid map, the interest count, each with a hash of the subject
/// or the sid.
const SUB_COST: usize = 4;

/// A subscriber whose queue made progress within this long is draining (see `hold_back`).
const DRAINING: Duration = Duration::from_millis(50);

/// How long after going over half its `max_pending` a subscriber counts as draining
/// without having drained since (see `hold_back`).
const DRAINING_GRACE: Duration = Duration::from_millis(5);

/// Longest a subscriber over half its `max_pending` holds back the publishers that feed
/// it (nats-server's longest stall of a fast producer).
const STALL_MAX: Duration = Duration::from_secs(1);

/// The tag of the `--stats` timer (the broker's only timer).
const STATS_TIMER: u64 = 1;

/// The rest of the status message to a requester whose request reached nobody, after
/// `HMSG <reply> <sid> `: header and total sizes, the header block (`NATS/1.0 503` and
/// an empty line), and the CRLF after the empty payload.
const NO_RESPONDERS: &[u8] = b"16 16\r\nNATS/1.0 503\r\n\r\n\r\n";

/// Shared payloads shorter than this are copied once per publish into a buffer of their
/// own before being shared by all subscribers: a slice of the reactor's 64 KiB read
/// buffer would keep the whole buffer alive for as long as a slow subscriber holds the
/// message, and the outbound limits count only the slice.
const OWN_BUFFER_BELOW: usize = 16 * 1024;

/// Settings (see `main.rs` for the flags).
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen.
    pub addr: SocketAddr,
    /// PING a client after this long without inbound traffic.
    pub ping_interval: Duration,
    /// Unanswered PINGs allowed; one more interval of silence and the client is stale.
    pub ping_max: u32,
    /// Largest payload a client may publish.
    pub max_payload: usize,
    /// Most bytes pending for one client (batched here or queued in the reactor, checked
    /// at every message) before it is closed as a slow consumer. Over half of it, the
    /// client holds back the publishers that feed it (see `Server::hold_back`).
    pub max_pending: usize,
    /// Longest a client's queue may go without the kernel taking a byte.
    pub write_deadline: Duration,
    /// Payloads shorter than this are copied into each subscriber's batch; longer ones
    /// are sent as one `Bytes` shared by all subscribers (see `Client::out`).
    pub copy_below: usize,
    /// `ReactorConfig::quiet_coalescing`: while only pings and pongs flow, wake at most
    /// once per this long (`None`: off, the default).
    pub quiet_coalescing: Option<Duration>,
    /// Print a line of counters to stderr this often (`Server::print_stats`).
    pub stats: Option<Duration>,
    /// `SO_SNDBUF` of client sockets (default: the kernel's, which autotunes up to
    /// `net.ipv4.tcp_wmem`'s 4 MiB before a client's own pending bytes grow).
    pub sndbuf: Option<usize>,
    /// Reactors (threads), each with its share of the clients.
    pub threads: usize,
    /// A nats-server leafnode port to solicit (`HOST:PORT`), to join its subject space.
    pub leaf: Option<String>,
    /// PING the hub after this long without traffic on the leaf link; the link is lost
    /// after three times this long without a byte from the hub.
    pub leaf_ping: Duration,
    /// Descriptor slots to reserve at start-up, before the reactor threads exist
    /// (`heartloop::reserve_fds`: growing the table later stalls an `accept` 10-25 ms).
    pub reserve_fds: usize,
    /// The least of the broker's own time per turn before a client yields (see
    /// [`TURN_TIME`]).
    pub turn_time: Duration,
}

impl Default for Config {
    /// nats-server's defaults.
    fn default() -> Self {
        Config {
            addr: "127.0.0.1:4222".parse().expect("a valid address"),
            ping_interval: Duration::from_secs(120),
            ping_max: 2,
            max_payload: 1 << 20,
            max_pending: 64 << 20,
            write_deadline: Duration::from_secs(10),
            copy_below: 1024,
            quiet_coalescing: None,
            stats: None,
            sndbuf: None,
            threads: 1,
            leaf: None,
            leaf_ping: Duration::from_secs(5),
            reserve_fds: 16 * 1024,
            turn_time: TURN_TIME,
        }
    }
}

/// What a client said in CONNECT.
#[derive(Debug, Clone, Copy)]
struct Opts {
    verbose: bool,
    pedantic: bool,
    echo: bool,
    headers: bool,
    no_responders: bool,
}

impl Default for Opts {
    /// nats-server's: before a CONNECT, and for the fields a CONNECT leaves out.
    fn default() -> Self {
        Opts {
            verbose: true,
            pedantic: true,
            echo: true,
            headers: false,
            no_responders: false,
        }
    }
}

#[derive(Debug)]
struct Client {
    conn: ConnId,
    peer: PeerAddr,
    parser: Parser,
    opts: Opts,
    name: String,
    /// sid -> key in `Server::subs`.
    subs: HashMap<Bytes, usize>,
    /// When bytes last came in.
    last_in: Instant,
    /// PINGs sent since bytes last came in.
    pings_out: u32,
    /// A fatal error or staleness was answered and `close` called, or the client was cut
    /// as a slow consumer: ignore the rest.
    closing: bool,
    /// Cut as a slow consumer: nothing more is written to it.
    cut: bool,
    /// As a subscriber: since when it has been over half its `max_pending` (as last
    /// seen; `None` once seen at or below half). See `Server::hold_back`.
    over_half_since: Option<Instant>,
    /// When this publisher was held back (while `held_by` is set).
    held_at: Option<Instant>,
    /// Its processing yielded to the turn's budget (see `TURN_TIME`).
    yielded: bool,
    /// A publish of its own whose fan-out goes on in the next turn.
    fanout: Option<Box<Fanout>>,
    /// As a publisher: held back by this subscriber (key, conn). Its unprocessed input
    /// waits in `parser`, and reading is paused.
    held_by: Option<(usize, ConnId)>,
    /// The peer finished sending: close once its input is processed.
    eof: bool,
    /// Its connection ended (with this cause) while its processing was deferred (yielded
    /// or held back): the rest of what it sent is still processed, a budget's worth per
    /// turn, then it is removed (see `disconnected`). Nothing is delivered to it.
    gone: Option<Cause>,
    /// Subscribed or unsubscribed since its last PING: the next PONG waits until the
    /// other reactors have seen the change (see `mesh.rs`).
    subs_changed: bool,
    /// As a publisher: held back by subscribers on other reactors (see `mesh.rs`).
    remote_holds: u32,
    /// Barriers (see `mesh.rs`) still out for this client's PINGs.
    barriers: u32,
    /// PONGs owed, written once no barrier is out.
    pongs_owed: u32,
    /// What was written to this client in the current batch of events, handed to the
    /// reactor as one `Bytes` before the loop polls again. Small messages are copied
    /// here: for a 16-byte payload a copy is cheaper than a shared reference, and it
    /// turns a thousand tiny writes into one (the reactor's `writev` takes 64 buffers).
    out: BytesMut,
}

#[derive(Debug)]
struct Sub {
    client: usize,
    sid: Bytes,
    /// The interest it adds to (see `Server::interest`).
    key: Interest,
    /// Auto-unsubscribe after this many deliveries (0: never).
    max: u64,
    delivered: u64,
    loc: Loc,
    /// Its client is gone: it waits in `Server::reaping`, receives nothing, and its
    /// `client` key may already name another client.
    dead: bool,
    /// Unique among the subscriptions this reactor ever had: a fan-out that goes on in a
    /// later turn (`Fanout`) finds its subscription by key and serial, not a new one
    /// that took the key since.
    serial: u64,
}

/// The rest of a publish whose fan-out did not fit in its turn (see `TURN_TIME`): its
/// publisher goes on with it in the next turn, before its next operation.
#[derive(Debug)]
struct Fanout {
    /// The subscriptions still to deliver to (key, serial), and the next one.
    subs: Vec<(usize, u64)>,
    next: usize,
    subject: Bytes,
    reply: Option<Bytes>,
    header_len: Option<usize>,
    data: Bytes,
}

/// Deliveries a fan-out makes in a turn even when the turn's budget is spent, so that it
/// progresses whatever the other clients take.
const FANOUT_MIN: usize = 16;

/// A subject and queue group: the unit of interest announced to neighbours.
type Interest = (Bytes, Option<Bytes>);

/// Subscriptions on one subject and queue group, by where they are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Count {
    /// Of this reactor's clients.
    clients: u32,
    /// The hub's weight (leaf link, reactor 0 only).
    leaf: u32,
    /// The peer reactors' weights, summed.
    peers: u32,
}

impl Count {
    /// The weight this reactor announces to its peer reactors.
    fn to_peers(self) -> u32 {
        self.clients.saturating_add(self.leaf)
    }

    /// The weight this reactor announces to the hub.
    fn to_leaf(self) -> u32 {
        self.clients.saturating_add(self.peers)
    }
}

/// Where a message being published came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// This reactor's client (key).
    Client(usize),
    /// A neighbour (index in `Server::nbrs`).
    Nbr(usize),
}

/// A neighbour's subscription (see the module docs).
#[derive(Debug)]
struct NSub {
    nbr: usize,
    weight: u32,
    loc: Loc,
}

/// A neighbour: peer reactor `i` is `nbrs[i]` (this reactor's own slot stays empty), the
/// leaf link `nbrs[n]`.
#[derive(Debug, Default)]
struct Nbr {
    /// Its subscriptions: interest -> key in `Server::nsubs`.
    subs: HashMap<Interest, usize>,
}

/// A message for one neighbour, and the queue groups it was picked for (none: it goes
/// for the neighbour's plain interest only).
#[derive(Debug, Default)]
struct Target {
    nbr: usize,
    queues: Vec<Bytes>,
}

/// The broker.
#[derive(Debug)]
pub struct Server {
    reactor: Reactor,
    cfg: Config,
    /// This reactor's position among `nreactors`.
    me: usize,
    nreactors: usize,
    local: SocketAddr,
    server_id: String,
    clients: Slab<Client>,
    by_conn: HashMap<ConnId, usize>,
    subs: Slab<Sub>,
    index: Index<usize>,
    matches: Matches<usize>,
    /// Clients with bytes in `out`.
    dirty: Vec<usize>,
    /// Publishers held back (key, conn).
    held: Vec<(usize, ConnId)>,
    /// Set by `deliver`: the publisher being served must be held back by this subscriber
    /// (key, conn) after the current operation.
    hold: Option<(usize, ConnId)>,
    /// A publisher was held back since the last poll: poll once without sleeping, so that
    /// the reactor writes what is queued before `release_held` looks again.
    fresh_hold: bool,
    /// Picks the queue-group member that gets a message.
    rng: Rng,
    /// Clients cut as slow consumers (by the broker's count or the reactor's limits).
    slow_consumers: u64,
    /// Times a publisher was held back by a subscriber over half its max_pending.
    holds: u64,
    /// Time publishers spent held back, summed over holds (µs), for `--stats`.
    held_us: u64,
    /// Work done in this turn, in units (see `TURN_TIME`).
    turn_work: usize,
    /// When the broker's work on this turn began, when to look at the clock next (in
    /// `turn_work` units), and whether the budget is spent (see `turn_spent`).
    turn_began: Instant,
    turn_budget: Duration,
    /// Clients the last turn handed a batch to (see `TURN_TIME`).
    flushed: usize,
    time_check_at: usize,
    turn_over: bool,
    /// Subscriptions of clients that are gone, removed a budget's worth per turn (see
    /// `disconnected`); they are marked dead meanwhile and receive nothing.
    reaping: VecDeque<usize>,
    /// The last `Sub::serial` given.
    sub_serial: u64,
    /// Per publish: this reactor's subscriptions to deliver to (reused).
    fan: Vec<usize>,
    /// Clients whose processing yielded to the work budget, in order.
    yielded: Vec<(usize, ConnId)>,
    /// Times a publisher yielded, for `--stats`.
    yields: u64,
    /// Publishes whose fan-out went on in a later turn, for `--stats`.
    splits: u64,
    /// The longest a turn held every client up, the broker's handling of its events
    /// included (see `run`), for `--stats`.
    longest_turn_us: u64,
    /// The message being delivered came from a publisher on another reactor that can be
    /// held back (see `mesh.rs`).
    remote_origin: bool,
    /// Interest on this reactor's side, by subject and queue group.
    interest: HashMap<Interest, Count>,
    /// Neighbours' subscriptions and their index.
    nsubs: Slab<NSub>,
    nindex: Index<usize>,
    nmatches: Matches<usize>,
    nbrs: Vec<Nbr>,
    /// Per publish: the neighbours to send it to.
    targets: Vec<Target>,
    /// The other reactors (see `mesh.rs`).
    mesh: mesh::Mesh,
    /// The link to a NATS hub (reactor 0 with `--leaf`, see `leaf.rs`).
    leaf: Option<leaf::Leaf>,
}

/// The reactors' settings.
pub fn reactor_config(cfg: &Config) -> ReactorConfig {
    // A send over the reactor-wide cap must not tear a message in two (header queued,
    // payload refused): with `Disconnect` the connection ends instead.
    // Each accept costs an INFO (JSON) and a client: at most 32 per turn, so a connect
    // storm cannot make one turn long for the connected clients.
    let rcfg = ReactorConfig::default()
        .total_queued_limit(4 << 30, OverflowPolicy::Disconnect)
        .accept_budget(32);
    match cfg.quiet_coalescing {
        Some(d) => rcfg.quiet_coalescing(d),
        None => rcfg,
    }
}

/// Start `cfg.threads` reactors listening on `cfg.addr` (one port for all: the kernel
/// spreads the clients with `SO_REUSEPORT`); returns them, ready to [`run`](Server::run)
/// each on a thread of its own, and the address.
pub fn bind_all(cfg: &Config) -> io::Result<(Vec<Server>, SocketAddr)> {
    let n = cfg.threads.max(1);
    let members = heartloop::mesh::<Batch>(n, reactor_config(cfg), mesh::INBOX_CAPACITY, MESH_TAG)?;
    let mut addr = cfg.addr;
    let mut servers = Vec::with_capacity(n);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ (std::process::id() as u64) << 32;
    for m in members {
        let s = Server::bind_member(cfg.clone(), addr, m, seed)?;
        // The others join the first one's port (it may have been picked: port 0).
        addr = s.local;
        servers.push(s);
    }
    Ok((servers, addr))
}

/// Tag of the mesh inboxes' `Event::Mail`.
const MESH_TAG: u64 = 1;

impl Server {
    /// Reactor `m.index` of the broker, listening on `addr`; `seed` makes the server id
    /// (one for all reactors) and, with the index, the reactor's random choices.
    fn bind_member(
        cfg: Config,
        addr: SocketAddr,
        m: Member<Batch>,
        seed: u64,
    ) -> io::Result<Server> {
        let Member {
            index,
            mut reactor,
            inbox,
            peers,
            ..
        } = m;
        let pending = cfg.max_pending.max(1);
        let conn = ConnConfig::default()
            // The ping is ours (PING/PONG); the reactor's timeout is only a backstop for
            // when our own ticks do not run (see `ping_tick`).
            .heartbeat(Heartbeat::new(
                cfg.ping_interval,
                cfg.ping_interval * (cfg.ping_max + 2),
            ))
            .outbound(
                // No watermarks: the broker counts pending bytes itself, at every message
                // (`deliver`, `write`); the hard limit is a backstop, and the stall
                // deadline cuts a subscriber whose queue makes no progress.
                OutboundConfig::limit(pending, OverflowPolicy::Disconnect)
                    .on_stall(cfg.write_deadline),
            )
            // A publisher held back (reading paused) that sends its last messages and
            // closes: its FIN waits behind them instead of ending the connection at once.
            .half_close(true);
        let conn = match cfg.sndbuf {
            Some(n) => conn.send_buffer(n),
            None => conn,
        };
        let opts = ListenOptions::default().reuse_port(cfg.threads > 1);
        let listener = reactor.listen_with(addr, opts, conn)?;
        let local = reactor.local_addr(listener)?;
        let nreactors = peers.len();
        let leaf = match (&cfg.leaf, index) {
            (Some(url), 0) => Some(leaf::Leaf::new(url, nreactors, cfg.max_payload)?),
            _ => None,
        };
        let mut server = Server {
            reactor,
            me: index,
            nreactors,
            local,
            // One id for the whole broker: the reactors are one server to the clients.
            server_id: format!("NHEARTLOOP{:016X}", seed),
            clients: Slab::new(),
            by_conn: HashMap::new(),
            subs: Slab::new(),
            index: Index::new(),
            matches: Matches::default(),
            dirty: Vec::new(),
            held: Vec::new(),
            hold: None,
            fresh_hold: false,
            rng: Rng::new(seed ^ (index as u64) << 56),
            slow_consumers: 0,
            holds: 0,
            held_us: 0,
            turn_work: 0,
            turn_began: Instant::now(),
            turn_budget: TURN_TIME,
            flushed: 0,
            time_check_at: 0,
            turn_over: false,
            reaping: VecDeque::new(),
            sub_serial: 0,
            fan: Vec::new(),
            yielded: Vec::new(),
            yields: 0,
            splits: 0,
            longest_turn_us: 0,
            remote_origin: false,
            interest: HashMap::new(),
            nsubs: Slab::new(),
            nindex: Index::new(),
            nmatches: Matches::default(),
            nbrs: (0..=nreactors).map(|_| Nbr::default()).collect(),
            targets: Vec::new(),
            mesh: mesh::Mesh::new(index, inbox, peers, cfg.max_pending),
            leaf,
            cfg,
        };
        server.leaf_connect();
        Ok(server)
    }

    /// Serve forever.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Vec::with_capacity(1024);
        let mut handling: Option<Duration> = None;
        if let Some(every) = self.cfg.stats {
            self.reactor.set_timer(every, STATS_TIMER);
        }
        loop {
            // The poll writes what was queued before it sleeps (and, woken by a writable
            // socket, writes more): then the held-back publishers are looked at again.
            let mut timeout = self.hold_timeout();
            if self.mesh.backlogged() || self.mesh.stalled() {
                // A peer reactor's inbox was full: try again soon (see `mesh.rs`).
                timeout = Some(timeout.map_or(mesh::RETRY, |t| t.min(mesh::RETRY)));
            }
            if !self.yielded.is_empty() || !self.reaping.is_empty() || self.mesh_pending() {
                timeout = Some(Duration::ZERO); // their work goes on in the next turn
            }
            self.fresh_hold = false;
            self.reactor.poll(&mut events, timeout)?;
            // What the last turn held every client up: the broker's handling of its
            // events plus this poll's work (its flush of what that handling queued, and
            // its reads). An upper bound when the poll slept in between.
            if let Some(handled) = handling.take() {
                let us = (handled + self.reactor.last_turn()).as_micros();
                self.longest_turn_us = self
                    .longest_turn_us
                    .max(u64::try_from(us).unwrap_or(u64::MAX));
            }
            let woke = Instant::now();
            self.turn_work = 0;
            self.turn_began = woke;
            let writes = u32::try_from(self.flushed).unwrap_or(u32::MAX);
            self.turn_budget = self.cfg.turn_time.max(
                self.reactor
                    .last_turn()
                    .min(WRITE_COST.saturating_mul(writes)),
            );
            self.time_check_at = 0;
            self.turn_over = false;
            // What came in now first (mostly light: a request, a PING), then the clients
            // that yielded in earlier turns, then what the gone ones left.
            for ev in events.drain(..) {
                self.on_event(ev);
            }
            self.resume_yielded();
            self.release_held();
            if self.mesh_pending() {
                self.mesh_mail();
            }
            self.reap();
            self.flush_batches();
            handling = Some(woke.elapsed());
        }
    }

    /// How long the poll may sleep with publishers held back: not at all right after one
    /// was held back (the reactor has not tried to write yet), else until the earliest
    /// hold runs out (a subscriber that drains wakes the poll with a writable socket).
    fn hold_timeout(&self) -> Option<Duration> {
        if self.held.is_empty() {
            return None;
        }
        if self.fresh_hold {
            return Some(Duration::ZERO);
        }
        let now = self.reactor.now();
        self.held
            .iter()
            .map(|&(key, conn)| {
                let Some((s, sconn)) = self.client(key, conn).and_then(|c| c.held_by) else {
                    return Duration::ZERO;
                };
                let since = self.client(s, sconn).and_then(|s| s.over_half_since);
                let stall_max = since.map_or(Duration::ZERO, |since| {
                    (since + STALL_MAX).saturating_duration_since(now)
                });
                // Past the grace, one that has not drained since it went over half lets go.
                let grace = since
                    .and_then(|since| (since + DRAINING_GRACE).checked_duration_since(now))
                    .filter(|d| !d.is_zero())
                    .unwrap_or(Duration::MAX);
                // A subscriber that stops draining lets its publishers go `DRAINING` after
                // its queue last moved (see `hold_back`).
                let drain = self
                    .reactor
                    .write_stalled_for(sconn)
                    .map_or(STALL_MAX, |waited| DRAINING.saturating_sub(waited));
                stall_max.min(drain).min(grace)
            })
            .min()
    }

    /// The client at `key` if it is still the one on `conn`.
    fn client(&self, key: usize, conn: ConnId) -> Option<&Client> {
        self.clients.get(key).filter(|c| c.conn == conn)
    }

    /// Let held-back publishers go on whose subscriber drained to half its max_pending,
    /// went away, or held them for `STALL_MAX`.
    fn release_held(&mut self) {
        self.mesh_resume();
        if self.held.is_empty() {
            return;
        }
        for (key, conn) in std::mem::take(&mut self.held) {
            let Some((s, sconn)) = self.client(key, conn).and_then(|c| c.held_by) else {
                continue;
            };
            if self
                .client(s, sconn)
                .is_some_and(|c| !c.closing && c.gone.is_none())
                && self.hold_back(s)
            {
                self.held.push((key, conn));
                continue;
            }
            self.clients[key].held_by = None;
            if let Some(at) = self.clients[key].held_at.take() {
                let held = self.reactor.now().saturating_duration_since(at);
                self.held_us += u64::try_from(held.as_micros()).unwrap_or(u64::MAX);
            }
            self.process(key, true);
            let c = &self.clients[key];
            if !c.yielded && c.held_by.is_none() && !c.closing && c.remote_holds == 0 {
                if c.eof {
                    self.close(key);
                } else {
                    let _ = self.reactor.resume_reading(c.conn);
                }
            }
        }
    }

    /// Whether subscriber `s` holds back the publishers that deliver to it: it has more
    /// than half its max_pending pending, and has been over half for less than
    /// `STALL_MAX`. As nats-server stalls a producer that delivers to a client over half
    /// its max_pending (until it drains below half, for at most a second): a subscriber
    /// that keeps up is not cut by a burst of fan-in, and one that does not drain is left
    /// to reach max_pending.
    fn hold_back(&mut self, s: usize) -> bool {
        let pending = self.pending(s);
        let now = self.reactor.now();
        let waited = self.reactor.write_stalled_for(self.clients[s].conn);
        let c = &mut self.clients[s];
        if pending <= self.cfg.max_pending / 2 {
            c.over_half_since = None;
            return false;
        }
        let since = *c.over_half_since.get_or_insert(now);
        let over_for = now.saturating_duration_since(since);
        // Only for a subscriber that is draining: the kernel took some of its queue in
        // the last `DRAINING`, and (after `DRAINING_GRACE`) since the grace began (the
        // flush right after it went over half may still top up a non-reader's socket
        // buffers). One that does not read is left to reach max_pending: holding
        // producers back for it would only stall them (a non-reading `>` subscriber would
        // hold up every publisher), and one whose socket buffers took some kilobytes
        // looked like a drainer for 50 ms and held every healthy publisher that long.
        let draining = waited.is_none_or(|w| {
            w < DRAINING && (over_for < DRAINING_GRACE || w + DRAINING_GRACE <= over_for)
        });
        draining && over_for < STALL_MAX
    }

    /// Bytes pending for a client: its batch and what the reactor holds for it.
    fn pending(&self, key: usize) -> usize {
        let c = &self.clients[key];
        c.out.len() + self.reactor.queued(c.conn).unwrap_or(0)
    }

    fn on_event(&mut self, ev: Event) {
        if let Some(conn) = ev.conn()
            && self.is_leaf_conn(conn)
        {
            self.leaf_event(ev);
            return;
        }
        match ev {
            Event::Mail { tag: MESH_TAG } => self.mesh_mail(),
            Event::Timer {
                tag: leaf::RECONNECT_TIMER,
                ..
            } => self.leaf_connect(),
            Event::Accepted { conn, peer, .. } => self.accepted(conn, peer),
            Event::Data { conn, bytes } => self.data(conn, bytes),
            Event::PeerHalfClosed { conn } => {
                // nats-server closes a client at its EOF, after what it sent before.
                if let Some(&key) = self.by_conn.get(&conn) {
                    let c = &mut self.clients[key];
                    c.eof = true;
                    if c.held_by.is_none() && !c.yielded && !c.closing {
                        self.close(key);
                    }
                }
            }
            Event::HeartbeatDue { conn } => {
                // Nothing was sent to this client, or nothing came from it, for
                // ping_interval (at most once per interval).
                if let Some(&key) = self.by_conn.get(&conn) {
                    self.ping_tick(key);
                }
            }
            Event::Disconnected { conn, cause } => self.disconnected(conn, cause),
            Event::Timer {
                tag: STATS_TIMER, ..
            } => self.print_stats(),
            _ => {}
        }
    }

    /// `--stats`: one line of the broker's and the reactor's counters to stderr, and the
    /// timer for the next. `longest turn` is the longest time every other client waited
    /// on one turn's work: the reactor's (`Stats::longest_turn_us`) and the broker's
    /// handling of the turn's events together (see `run`).
    fn print_stats(&mut self) {
        let mut s = self.reactor.stats();
        // The broker's own handling of a turn's events counts too (see `run`).
        s.longest_turn_us = s.longest_turn_us.max(self.longest_turn_us);
        eprintln!(
            "stats: clients {} subs {} slow consumers {} holds {} held {} held for {} ms yields {} \
             splits {} {s}",
            self.clients.len(),
            self.subs.len(),
            self.slow_consumers,
            self.holds,
            self.held.len(),
            self.held_us / 1000,
            self.yields,
            self.splits,
        );
        if let Some(every) = self.cfg.stats {
            self.reactor.set_timer(every, STATS_TIMER);
        }
    }

    fn accepted(&mut self, conn: ConnId, peer: PeerAddr) {
        let now = self.reactor.now();
        let key = self.clients.insert(Client {
            conn,
            peer: peer.clone(),
            parser: Parser::new(self.cfg.max_payload),
            opts: Opts::default(),
            name: String::new(),
            subs: HashMap::new(),
            last_in: now,
            pings_out: 0,
            closing: false,
            cut: false,
            over_half_since: None,
            held_at: None,
            yielded: false,
            fanout: None,
            held_by: None,
            eof: false,
            gone: None,
            subs_changed: false,
            remote_holds: 0,
            barriers: 0,
            pongs_owed: 0,
            out: BytesMut::new(),
        });
        // Headers are off until a CONNECT turns them on.
        self.clients[key]
            .parser
            .allow_headers(Opts::default().headers);
        self.by_conn.insert(conn, key);
        let info = serde_json::json!({
            "server_id": self.server_id,
            "server_name": "heartloop-broker",
            "version": VERSION,
            "proto": 1,
            "go": "heartloop",
            "host": self.local.ip().to_string(),
            "port": self.local.port(),
            "headers": true,
            "max_payload": self.cfg.max_payload,
            // Unique across the reactors (each numbers its connections from 1).
            "client_id": conn.serial() * self.nreactors as u64 + self.me as u64,
            "client_ip": peer.tcp().map_or_else(String::new, |a| a.ip().to_string()),
        });
        log::debug!("{conn} accepted from {peer}");
        self.write(key, format!("INFO {info}\r\n").as_bytes());
    }

    fn data(&mut self, conn: ConnId, bytes: Bytes) {
        let Some(&key) = self.by_conn.get(&conn) else {
            return;
        };
        let now = self.reactor.now();
        let c = &mut self.clients[key];
        if c.closing {
            return;
        }
        c.last_in = now;
        c.pings_out = 0;
        c.parser.push(bytes);
        // Held back or yielded: the bytes wait in the parser (read in this turn before
        // reading was paused).
        if c.held_by.is_none() && !c.yielded {
            self.process(key, true);
        }
    }

    /// Go on with the publishers that yielded to the last turn's delivery budget, oldest
    /// first (they may yield again).
    fn resume_yielded(&mut self) {
        for (key, conn) in std::mem::take(&mut self.yielded) {
            let Some(c) = self.clients.get_mut(key).filter(|c| c.conn == conn) else {
                continue;
            };
            c.yielded = false;
            if c.closing {
                // Cut or closing, it reads nothing more, but the publish it started still
                // reaches every subscriber (a budget's worth per turn); then, gone, it goes.
                self.finish_fan_out(key, conn);
                continue;
            }
            if c.gone.is_some() {
                self.process(key, false);
                let c = &self.clients[key];
                if c.closing {
                    self.finish_fan_out(key, conn);
                } else if !c.yielded {
                    // Its input is done: now it goes.
                    let cause = self.clients[key].gone.take().unwrap_or(Cause::Closed);
                    self.remove_client(key, conn, cause);
                }
                continue;
            }
            if c.held_by.is_none() {
                self.process(key, true);
            }
            let c = &self.clients[key];
            if !c.yielded && c.held_by.is_none() && !c.closing && c.remote_holds == 0 {
                if c.eof {
                    self.close(key);
                } else {
                    let _ = self.reactor.resume_reading(c.conn);
                }
            }
        }
    }

    /// A closing client's unfinished fan-out: a budget's worth now, the rest in later turns
    /// (it stays on the yielded list); once done, if its connection is gone, it is removed.
    fn finish_fan_out(&mut self, key: usize, conn: ConnId) {
        self.resume_fan_out(key, true);
        let c = &mut self.clients[key];
        if c.fanout.is_some() {
            if !c.yielded {
                c.yielded = true;
                self.yielded.push((key, conn));
            }
        } else if let Some(cause) = c.gone.take() {
            self.remove_client(key, conn, cause);
        }
    }

    /// Run the client's parsed operations until more input is needed, it is closing, or
    /// (`may_hold`) a subscriber it delivered to holds it back.
    fn process(&mut self, key: usize, may_hold: bool) {
        // A gone client yields to the budget like any other, but is never held back: there
        // is no reading of its to pause.
        let gone = self.clients[key].gone.is_some();
        let may_yield = may_hold || gone;
        let may_hold = may_hold && !gone;
        loop {
            if self.clients[key].fanout.is_some() {
                // The rest of its last publish comes before its next operation.
                self.resume_fan_out(key, may_yield);
            } else {
                match self.clients[key].parser.next() {
                    Ok(Some(op)) => self.op(key, op),
                    Ok(None) => break,
                    Err(e) => {
                        self.fatal(key, &e);
                        break;
                    }
                }
            }
            self.turn_work += 1;
            if !may_hold {
                self.hold = None;
            }
            let c = &mut self.clients[key];
            if c.closing {
                // Cut while its publish was being delivered (by its own echo, say): the rest
                // of the fan-out still goes out, from the yielded list.
                if c.fanout.is_some() && !c.yielded {
                    c.yielded = true;
                    self.yielded.push((key, c.conn));
                }
                break;
            }
            let spent = c.fanout.is_some() || self.turn_spent();
            if may_yield && spent && self.hold.is_none() {
                let c = &mut self.clients[key];
                c.yielded = true;
                let _ = self.reactor.pause_reading(c.conn);
                self.yielded.push((key, c.conn));
                self.yields += 1;
                break;
            }
            if let Some(by) = self.hold.take()
                && may_hold
            {
                let c = &mut self.clients[key];
                c.held_by = Some(by);
                c.held_at = Some(self.reactor.now());
                let _ = self.reactor.pause_reading(c.conn);
                self.held.push((key, c.conn));
                self.fresh_hold = true;
                self.holds += 1;
                break;
            }
        }
        self.hold = None;
    }

    fn op(&mut self, key: usize, op: Op) {
        match op {
            Op::Connect(json) => self.connect(key, &json),
            Op::Ping => self.client_ping(key),
            Op::Pong | Op::Ok | Op::Err(_) | Op::Info(_) => {}
            // Not produced by a client's parser.
            Op::LeafSub { .. } | Op::LeafUnsub { .. } | Op::LeafMsg { .. } => {}
            Op::Sub {
                subject,
                queue,
                sid,
            } => self.subscribe(key, &subject, queue.as_deref(), &sid),
            Op::Unsub { sid, max } => {
                self.unsubscribe(key, &sid, max);
                self.ok(key);
            }
            Op::Pub {
                subject,
                reply,
                data,
            } => self.client_publish(key, &subject, reply.as_deref(), None, data),
            // An empty header block: a plain message, as nats-server delivers it.
            Op::HPub {
                subject,
                reply,
                header_len: 0,
                data,
            } => self.client_publish(key, &subject, reply.as_deref(), None, data),
            Op::HPub {
                subject,
                reply,
                header_len,
                data,
            } => self.client_publish(key, &subject, reply.as_deref(), Some(header_len), data),
        }
    }

    fn connect(&mut self, key: usize, json: &[u8]) {
        let Ok(serde_json::Value::Object(v)) = serde_json::from_slice(json) else {
            self.fatal(key, &ParseError::Malformed("CONNECT JSON"));
            return;
        };
        let flag =
            |name: &str, default: bool| v.get(name).and_then(|x| x.as_bool()).unwrap_or(default);
        let text = |name: &str| {
            v.get(name)
                .and_then(|x| x.as_str())
                .unwrap_or("")
                .to_string()
        };
        let d = Opts::default();
        let c = &mut self.clients[key];
        c.opts = Opts {
            verbose: flag("verbose", d.verbose),
            pedantic: flag("pedantic", d.pedantic),
            echo: flag("echo", d.echo),
            headers: flag("headers", d.headers),
            no_responders: flag("no_responders", d.no_responders),
        };
        c.parser.allow_headers(c.opts.headers);
        c.name = text("name");
        log::debug!(
            "{} CONNECT name={:?} lang={:?} version={:?} protocol={} {:?}",
            c.conn,
            c.name,
            text("lang"),
            text("version"),
            v.get("protocol").and_then(|x| x.as_i64()).unwrap_or(0),
            c.opts
        );
        if c.opts.no_responders && !c.opts.headers {
            c.closing = true;
            self.write(key, b"-ERR 'no responders requires headers support'\r\n");
            self.close(key);
            return;
        }
        self.ok(key);
    }

    fn subscribe(&mut self, key: usize, subject: &[u8], queue: Option<&[u8]>, sid: &[u8]) {
        if self.clients[key].subs.contains_key(sid) {
            // nats-server ignores a second SUB with a sid in use.
            self.ok(key);
            return;
        }
        let skey = self.subs.vacant_key();
        let Some(loc) = self.index.insert(subject, queue, skey) else {
            self.write(key, b"-ERR 'Invalid Subject'\r\n");
            return;
        };
        // Copies: `sid` may be a slice of a large read buffer, and this lives long.
        let sid = Bytes::copy_from_slice(sid);
        let ikey = (
            Bytes::copy_from_slice(subject),
            queue.map(Bytes::copy_from_slice),
        );
        self.subs.insert(Sub {
            client: key,
            sid: sid.clone(),
            key: ikey.clone(),
            max: 0,
            delivered: 0,
            loc,
            dead: false,
            serial: {
                self.sub_serial += 1;
                self.sub_serial
            },
        });
        self.turn_work += SUB_COST;
        let c = &mut self.clients[key];
        c.subs.insert(sid, skey);
        c.subs_changed = true;
        self.change_interest(ikey, |c| c.clients += 1);
        self.ok(key);
    }

    fn unsubscribe(&mut self, key: usize, sid: &[u8], max: Option<u64>) {
        let Some(&skey) = self.clients[key].subs.get(sid) else {
            return;
        };
        match max {
            Some(max) if max > 0 && self.subs[skey].delivered < max => self.subs[skey].max = max,
            _ => self.remove_sub(skey),
        }
    }

    fn remove_sub(&mut self, skey: usize) {
        let sub = self.subs.remove(skey);
        self.turn_work += SUB_COST;
        if let Some((moved, loc)) = self.index.remove(sub.loc) {
            self.subs[moved].loc = loc;
        }
        if !sub.dead
            && let Some(c) = self.clients.get_mut(sub.client)
        {
            c.subs.remove(&sub.sid);
            c.subs_changed = true;
        }
        self.change_interest(sub.key, |c| c.clients = c.clients.saturating_sub(1));
    }

    /// Whether this turn's budget is spent (see [`TURN_TIME`]; the clock is read every
    /// 32 units of work). Once spent, it stays spent until the next turn.
    fn turn_spent(&mut self) -> bool {
        if !self.turn_over && self.turn_work >= self.time_check_at {
            self.time_check_at = self.turn_work + 32;
            self.turn_over = self.turn_began.elapsed() >= self.turn_budget;
        }
        self.turn_over
    }

    /// Remove the gone clients' subscriptions, while the turn's budget lasts (at least
    /// one per turn).
    fn reap(&mut self) {
        while let Some(skey) = self.reaping.pop_front() {
            self.remove_sub(skey);
            if self.turn_spent() {
                break;
            }
        }
    }

    /// Change the count of subscriptions on `key` and tell the neighbours what they must
    /// know of it: a subject's interest when it appears or goes, a queue group's weight
    /// whenever it changes. The leaf link hears the clients' and the peers' interest, the
    /// peers hear the clients' and the leaf link's.
    fn change_interest(&mut self, key: Interest, f: impl FnOnce(&mut Count)) {
        let old = self.interest.get(&key).copied().unwrap_or_default();
        let mut new = old;
        f(&mut new);
        if new == Count::default() {
            self.interest.remove(&key);
        } else {
            self.interest.insert(key.clone(), new);
        }
        let tell = |a: u32, b: u32| a != b && (key.1.is_some() || (a == 0) != (b == 0));
        if tell(old.to_peers(), new.to_peers()) {
            self.mesh.announce(&key, new.to_peers());
        }
        if tell(old.to_leaf(), new.to_leaf()) {
            self.leaf_announce(&key, new.to_leaf());
        }
    }

    /// Neighbour `nbr` announced `weight` for `key` (0: the interest is gone).
    fn nbr_interest(&mut self, nbr: usize, key: Interest, weight: u32) {
        let old = match self.nbrs[nbr].subs.get(&key) {
            Some(&ns) => self.nsubs[ns].weight,
            None => 0,
        };
        if old == weight {
            return;
        }
        if weight == 0 {
            if let Some(ns) = self.nbrs[nbr].subs.remove(&key) {
                let sub = self.nsubs.remove(ns);
                if let Some((moved, loc)) = self.nindex.remove(sub.loc) {
                    self.nsubs[moved].loc = loc;
                }
            }
        } else if let Some(&ns) = self.nbrs[nbr].subs.get(&key) {
            self.nsubs[ns].weight = weight;
        } else {
            let ns = self.nsubs.vacant_key();
            let Some(loc) = self.nindex.insert(&key.0, key.1.as_deref(), ns) else {
                log::debug!("neighbour {nbr}: interest in an invalid subject {key:?} ignored");
                return;
            };
            self.nsubs.insert(NSub { nbr, weight, loc });
            self.nbrs[nbr].subs.insert(key.clone(), ns);
        }
        let leaf = nbr == self.nreactors;
        self.change_interest(key, |c| {
            if leaf {
                c.leaf = weight;
            } else {
                c.peers = c.peers.saturating_sub(old).saturating_add(weight);
            }
        });
    }

    /// Every subscription of neighbour `nbr` goes (the leaf link was lost).
    fn nbr_gone(&mut self, nbr: usize) {
        let keys: Vec<Interest> = self.nbrs[nbr].subs.keys().cloned().collect();
        for key in keys {
            self.nbr_interest(nbr, key, 0);
        }
    }

    /// A client's PING. The PONG says its earlier operations took effect, which for a
    /// subscription includes the other reactors: after a SUB or UNSUB it waits for a
    /// barrier to come back from every peer reactor (see `mesh.rs`).
    fn client_ping(&mut self, key: usize) {
        let c = &mut self.clients[key];
        if c.subs_changed && self.nreactors > 1 {
            c.subs_changed = false;
            c.barriers += 1;
            let conn = c.conn;
            self.mesh.barrier(key, conn);
        }
        let c = &mut self.clients[key];
        if c.barriers > 0 {
            c.pongs_owed += 1;
        } else {
            self.write(key, b"PONG\r\n");
        }
    }

    /// A barrier for client `key`'s PING came back from every peer reactor.
    fn barrier_done(&mut self, key: usize, conn: ConnId) {
        let Some(c) = self.clients.get_mut(key).filter(|c| c.conn == conn) else {
            return;
        };
        c.barriers -= 1;
        if c.barriers == 0 && !c.closing {
            for _ in 0..std::mem::take(&mut c.pongs_owed) {
                self.write(key, b"PONG\r\n");
            }
        }
    }

    fn client_publish(
        &mut self,
        key: usize,
        subject: &[u8],
        reply: Option<&[u8]>,
        header_len: Option<usize>,
        data: Bytes,
    ) {
        let opts = self.clients[key].opts;
        if opts.pedantic && !valid_literal_subject(subject) {
            // As nats-server: reported in pedantic mode only; the connection stays. (A
            // subject with an empty token reaches nobody either way: see `Index`.)
            self.write(key, b"-ERR 'Invalid Publish Subject'\r\n");
        }
        // nats-server acknowledges before it delivers.
        self.ok(key);
        let delivered = self.publish(Source::Client(key), subject, reply, header_len, data, &[]);
        if let Some(reply) = reply
            && delivered == 0
            && opts.no_responders
            && opts.headers
        {
            self.no_responders(key, reply);
        }
    }

    /// A request nobody can answer: tell the requester at once (status 503), on its first
    /// plain subscription that matches the reply subject, as nats-server does; nobody
    /// else subscribed to the reply subject hears of it.
    fn no_responders(&mut self, key: usize, reply: &[u8]) {
        let mut m = std::mem::take(&mut self.matches);
        self.index.match_into(reply, &mut m);
        let sid = m
            .plain
            .iter()
            .find(|&&s| !self.subs[s].dead && self.subs[s].client == key)
            .map(|&s| self.subs[s].sid.clone());
        self.matches = m;
        if let Some(sid) = sid {
            let mut h = BytesMut::with_capacity(reply.len() + sid.len() + 48);
            h.extend_from_slice(b"HMSG ");
            msg_args(&mut h, reply, &sid, None);
            h.extend_from_slice(NO_RESPONDERS);
            self.write(key, &h);
        }
    }

    /// Deliver to every matching plain subscription and to one member of each matching
    /// queue group, among this reactor's clients and its neighbours (see the module docs:
    /// a message from a neighbour goes to the groups in `queues` only, and on to the
    /// neighbours split horizon allows). `data` is the payload plus CRLF, shared by all.
    /// Returns deliveries (a neighbour sent the message counts as one).
    fn publish(
        &mut self,
        from: Source,
        subject: &[u8],
        reply: Option<&[u8]>,
        header_len: Option<usize>,
        mut data: Bytes,
        queues: &[Bytes],
    ) -> usize {
        let mut m = std::mem::take(&mut self.matches);
        self.index.match_into(subject, &mut m);
        let mut nm = std::mem::take(&mut self.nmatches);
        let remote = !self.nsubs.is_empty();
        if remote {
            self.nindex.match_into(subject, &mut nm);
        }
        let reaches = |m: &Matches<usize>| !m.plain.is_empty() || m.groups().next().is_some();
        let to_nbr = remote && reaches(&nm);
        if (to_nbr || (reaches(&m) && data.len() >= self.cfg.copy_below))
            && data.len() < OWN_BUFFER_BELOW
        {
            // Shared by subscribers, or sent to another thread: in a buffer of its own.
            data = Bytes::copy_from_slice(&data);
        }
        let client = match from {
            Source::Client(k) => Some(k),
            Source::Nbr(_) => None,
        };
        let filtered = matches!(from, Source::Nbr(_));
        let mut delivered = 0;
        // This reactor's subscriptions to deliver to, in order: delivered below while the
        // turn's budget lasts (see `fan_out`).
        let mut fan = std::mem::take(&mut self.fan);
        fan.clear();
        for &s in &m.plain {
            if self.eligible(client, s) {
                fan.push(s);
            }
        }
        let mut targets = std::mem::take(&mut self.targets);
        targets.clear();
        if remote {
            for &ns in &nm.plain {
                let nbr = self.nsubs[ns].nbr;
                if self.forwards(from, nbr) {
                    target(&mut targets, nbr, None);
                }
            }
        }
        // Group names: a linear search among a few, a hash lookup among many.
        let named = Names::new(queues.iter());
        // Only needed to tell the neighbours' groups that have no local members.
        let local = Names::new(m.groups().map(|g| g.0).filter(|_| remote));
        let far_groups: HashMap<&Bytes, &[usize]> = if remote && nm.groups().nth(4).is_some() {
            nm.groups().collect()
        } else {
            HashMap::new()
        };
        for (name, members) in m.groups() {
            if filtered && !named.has(name) {
                continue;
            }
            let far = if !remote {
                &[][..]
            } else if far_groups.is_empty() {
                nm.groups()
                    .find(|(n, _)| *n == name)
                    .map_or(&[][..], |g| g.1)
            } else {
                far_groups.get(name).copied().unwrap_or(&[])
            };
            match self.pick(from, client, members, far) {
                Pick::Local(s) => fan.push(s),
                Pick::Far(nbr) => target(&mut targets, nbr, Some(name)),
                Pick::Nobody => {}
            }
        }
        if remote {
            for (name, far) in nm.groups() {
                if (filtered && !named.has(name)) || local.has(name) {
                    continue;
                }
                if let Pick::Far(nbr) = self.pick(from, client, &[], far) {
                    target(&mut targets, nbr, Some(name));
                }
            }
        }
        self.matches = m;
        self.nmatches = nm;
        delivered += fan.len();
        self.fan_out(client, &fan, subject, reply, header_len, &data);
        self.fan = fan;
        for t in targets.drain(..) {
            delivered += 1;
            if t.nbr == self.nreactors {
                self.leaf_msg(subject, reply, header_len, &data, &t.queues);
            } else {
                let origin = client.map(|k| (k, self.clients[k].conn));
                let m = mesh::Msg {
                    subject,
                    reply,
                    header_len,
                    data: &data,
                    origin,
                };
                self.mesh.msg(t.nbr, m, t.queues);
            }
        }
        self.targets = targets;
        delivered
    }

    /// Deliver a message to this reactor's subscriptions `local`. A client's publish stops
    /// once the turn's budget is spent (after at least [`FANOUT_MIN`] deliveries) and
    /// leaves the rest to its publisher's next turn (`Client::fanout`, taken up first by
    /// `process`); one from a neighbour is delivered whole.
    fn fan_out(
        &mut self,
        client: Option<usize>,
        local: &[usize],
        subject: &[u8],
        reply: Option<&[u8]>,
        header_len: Option<usize>,
        data: &Bytes,
    ) {
        for (i, &s) in local.iter().enumerate() {
            if let Some(k) = client
                && i >= FANOUT_MIN
                && self.turn_spent()
            {
                let subs = local[i..]
                    .iter()
                    .map(|&s| (s, self.subs[s].serial))
                    .collect();
                self.splits += 1;
                self.clients[k].fanout = Some(Box::new(Fanout {
                    subs,
                    next: 0,
                    subject: Bytes::copy_from_slice(subject),
                    reply: reply.map(Bytes::copy_from_slice),
                    header_len,
                    data: data.clone(),
                }));
                return;
            }
            // Still eligible: an earlier delivery may have cut its client, or removed it
            // (auto-unsubscribe).
            if self.subs.get(s).is_some() && self.eligible(client, s) {
                self.deliver(client, s, subject, reply, header_len, data);
            }
        }
    }

    /// Go on with client `key`'s unfinished fan-out: while the turn's budget lasts (at
    /// least [`FANOUT_MIN`] deliveries), or to its end when not `budgeted`.
    fn resume_fan_out(&mut self, key: usize, budgeted: bool) {
        let Some(mut f) = self.clients[key].fanout.take() else {
            return;
        };
        let mut done = 0;
        while f.next < f.subs.len() {
            if budgeted && done >= FANOUT_MIN && self.turn_spent() {
                self.clients[key].fanout = Some(f);
                return;
            }
            let (s, serial) = f.subs[f.next];
            f.next += 1;
            if self.subs.get(s).is_some_and(|sub| sub.serial == serial)
                && self.eligible(Some(key), s)
            {
                self.deliver(
                    Some(key),
                    s,
                    &f.subject,
                    f.reply.as_deref(),
                    f.header_len,
                    &f.data,
                );
                done += 1;
            }
        }
    }

    /// The member of a queue group that gets a message: each of this reactor's `members`
    /// weighs 1, each subscription in `far` its neighbour's weight (if the message may be
    /// forwarded there).
    fn pick(
        &mut self,
        from: Source,
        client: Option<usize>,
        members: &[usize],
        far: &[usize],
    ) -> Pick {
        let n = members.len();
        let far_weight: u64 = far
            .iter()
            .map(|&ns| &self.nsubs[ns])
            .filter(|ns| self.forwards(from, ns.nbr))
            .map(|ns| u64::from(ns.weight))
            .sum();
        let total = n as u64 + far_weight;
        if total == 0 {
            return Pick::Nobody;
        }
        let mut r = self.rng.below(total);
        if r < n as u64 {
            let start = r as usize;
            if let Some(s) = (0..n)
                .map(|j| members[(start + j) % n])
                .find(|&s| self.eligible(client, s))
            {
                return Pick::Local(s);
            }
            if far_weight == 0 {
                return Pick::Nobody;
            }
            r = self.rng.below(far_weight);
        } else {
            r -= n as u64;
        }
        for &ns in far {
            let sub = &self.nsubs[ns];
            if !self.forwards(from, sub.nbr) {
                continue;
            }
            if r < u64::from(sub.weight) {
                return Pick::Far(sub.nbr);
            }
            r -= u64::from(sub.weight);
        }
        Pick::Nobody
    }

    /// Whether a message from `from` may be sent on to neighbour `nbr` (split horizon:
    /// a peer reactor's messages go on to the leaf link only, the leaf link's to the peer
    /// reactors only).
    fn forwards(&self, from: Source, nbr: usize) -> bool {
        let leaf = self.nreactors;
        match from {
            Source::Client(_) => true,
            Source::Nbr(f) => f != nbr && (f == leaf) != (nbr == leaf),
        }
    }

    fn eligible(&self, from: Option<usize>, s: usize) -> bool {
        let sub = &self.subs[s];
        if sub.dead {
            return false;
        }
        let c = &self.clients[sub.client];
        !c.closing && c.gone.is_none() && (from != Some(sub.client) || c.opts.echo)
    }

    /// Append the message for subscription `s` to its client's batch (a large payload is
    /// queued in the reactor behind the batch instead). The client's pending bytes are
    /// checked at every message: over `max_pending` it is cut as a slow consumer; over
    /// half of it, the publisher `from` is held back (see `hold_back`).
    fn deliver(
        &mut self,
        from: Option<usize>,
        s: usize,
        subject: &[u8],
        reply: Option<&[u8]>,
        header_len: Option<usize>,
        data: &Bytes,
    ) {
        self.turn_work += 1;
        let sub = &mut self.subs[s];
        let ck = sub.client;
        let c = &mut self.clients[ck];
        if c.out.is_empty() {
            self.dirty.push(ck);
        }
        let h = &mut c.out;
        let total = data.len() - 2;
        let payload = match header_len {
            Some(hl) if c.opts.headers => {
                h.extend_from_slice(b"HMSG ");
                msg_args(h, subject, &sub.sid, reply);
                push_usize(h, hl);
                h.extend_from_slice(b" ");
                push_usize(h, total);
                data.clone()
            }
            Some(hl) => {
                // The subscriber did not ask for headers: the payload without them.
                h.extend_from_slice(b"MSG ");
                msg_args(h, subject, &sub.sid, reply);
                push_usize(h, total - hl);
                data.slice(hl..)
            }
            None => {
                h.extend_from_slice(b"MSG ");
                msg_args(h, subject, &sub.sid, reply);
                push_usize(h, total);
                data.clone()
            }
        };
        h.extend_from_slice(b"\r\n");
        let copy = payload.len() < self.cfg.copy_below;
        if copy {
            h.extend_from_slice(&payload);
        }
        sub.delivered += 1;
        let done = sub.max != 0 && sub.delivered >= sub.max;
        let conn = c.conn;
        let queued = self.reactor.queued(conn).unwrap_or(0);
        let pending = c.out.len() + queued + if copy { 0 } else { payload.len() };
        if pending > self.cfg.max_pending {
            self.slow_consumer(ck, pending);
        } else if !copy {
            // Large: the header goes out with what is batched, then the payload `Bytes`
            // shared by every subscriber (a reference count, no copy), queued as one unit
            // so a refused send can never tear a message.
            let batch = std::mem::take(&mut c.out).freeze();
            let _ = self.reactor.send_parts(conn, batch, payload);
        } else if c.out.len() >= FLUSH_AT {
            self.flush(ck);
        }
        if done {
            self.remove_sub(s);
        }
        if pending <= self.cfg.max_pending / 2 {
            // Drained since it was last over half: a new stall may begin later.
            self.clients[ck].over_half_since = None;
        } else if (from.is_some() || self.remote_origin)
            && self.hold.is_none()
            && !self.clients[ck].closing
            && self.hold_back(ck)
        {
            self.hold = Some((ck, conn));
        }
    }

    /// More than `max_pending` bytes would be pending for the client: close it at once,
    /// dropping what is pending (nats-server does not flush a slow consumer either).
    fn slow_consumer(&mut self, key: usize, pending: usize) {
        let c = &mut self.clients[key];
        if c.cut {
            return;
        }
        log::info!(
            "{} ({}, {:?}) slow consumer: {pending} bytes pending, over max_pending {}; closed",
            c.conn,
            c.peer,
            c.name,
            self.cfg.max_pending
        );
        c.cut = true;
        c.closing = true;
        c.out = BytesMut::new();
        self.slow_consumers += 1;
        let _ = self.reactor.abort(c.conn);
    }

    /// The ping logic of nats-server: run once per ping interval; if nothing came in for
    /// an interval, PING; with `ping_max` PINGs unanswered, -ERR 'Stale Connection' and
    /// close. Driven by `HeartbeatDue`, which also fires for a client we keep streaming to
    /// once it has been silent for an interval.
    fn ping_tick(&mut self, key: usize) {
        let now = self.reactor.now();
        let interval = self.cfg.ping_interval;
        let ping_max = self.cfg.ping_max;
        let c = &mut self.clients[key];
        if c.closing || now.saturating_duration_since(c.last_in) < interval {
            return;
        }
        if c.pings_out >= ping_max {
            log::info!(
                "{} ({}) stale: {} PINGs unanswered, silent for {:.1?}",
                c.conn,
                c.peer,
                c.pings_out,
                now.saturating_duration_since(c.last_in)
            );
            c.closing = true;
            self.write(key, b"-ERR 'Stale Connection'\r\n");
            self.close(key);
            return;
        }
        c.pings_out += 1;
        self.write(key, b"PING\r\n");
    }

    fn fatal(&mut self, key: usize, e: &ParseError) {
        let c = &mut self.clients[key];
        log::debug!("{} ({}) protocol error: {e}", c.conn, c.peer);
        c.closing = true;
        if !e.wire().is_empty() {
            self.write(key, e.wire());
        }
        self.close(key);
    }

    fn ok(&mut self, key: usize) {
        if self.clients[key].opts.verbose {
            self.write(key, b"+OK\r\n");
        }
    }

    /// Append to the client's batch, within its max_pending (see `deliver`).
    fn write(&mut self, key: usize, bytes: &[u8]) {
        let c = &mut self.clients[key];
        if c.cut {
            return;
        }
        if c.out.is_empty() {
            self.dirty.push(key);
        }
        c.out.extend_from_slice(bytes);
        let pending = c.out.len() + self.reactor.queued(c.conn).unwrap_or(0);
        if pending <= self.cfg.max_pending / 2 {
            c.over_half_since = None;
        }
        if pending > self.cfg.max_pending {
            self.slow_consumer(key, pending);
        } else if c.out.len() >= FLUSH_AT {
            self.flush(key);
        }
    }

    /// Hand the client's batch to the reactor.
    fn flush(&mut self, key: usize) {
        if let Some(c) = self.clients.get_mut(key)
            && !c.out.is_empty()
        {
            let batch = std::mem::take(&mut c.out).freeze();
            let _ = self.reactor.send(c.conn, batch);
        }
    }

    /// After a batch of events, before the loop polls (and so writes) again.
    fn flush_batches(&mut self) {
        self.flushed = self.dirty.len();
        let mut dirty = std::mem::take(&mut self.dirty);
        for key in dirty.drain(..) {
            self.flush(key);
        }
        self.dirty = dirty;
        self.leaf_flush();
        self.mesh.flush();
    }

    /// Flush what is batched, then close gracefully (the reactor flushes, then FIN).
    fn close(&mut self, key: usize) {
        self.flush(key);
        let _ = self.reactor.close(self.clients[key].conn);
    }

    fn disconnected(&mut self, conn: ConnId, cause: Cause) {
        let Some(key) = self.by_conn.remove(&conn) else {
            return;
        };
        // A client whose processing was deferred (it yielded to the turn's budget, or was
        // held back) when it went: what it sent before is still processed (nats-server
        // processes every read before it sees the end), a budget's worth per turn like
        // any other client's, and then it is removed (`resume_yielded`).
        let c = &mut self.clients[key];
        if c.fanout.is_some() || (!c.closing && (c.yielded || c.held_by.is_some())) {
            c.gone = Some(cause);
            c.held_by = None;
            c.held_at = None;
            if !c.yielded {
                c.yielded = true;
                self.yielded.push((key, conn));
            }
            return;
        }
        self.remove_client(key, conn, cause);
    }

    /// Remove a client whose connection ended, and whose input is done.
    fn remove_client(&mut self, key: usize, conn: ConnId, cause: Cause) {
        let c = self.clients.remove(key);
        // Thousands of subscriptions take a millisecond to remove: they are marked dead
        // now (nothing is delivered to them) and removed over the next turns (`reap`).
        for (_, skey) in c.subs {
            self.subs[skey].dead = true;
            self.reaping.push_back(skey);
        }
        match cause {
            _ if c.cut => log::debug!("{conn} ({}, {:?}) closed: {cause}", c.peer, c.name),
            Cause::SlowPeer { .. } => {
                self.slow_consumers += 1;
                log::info!(
                    "{conn} ({}, {:?}) slow consumer, closed: {cause}",
                    c.peer,
                    c.name
                )
            }
            _ => log::debug!("{conn} ({}, {:?}) closed: {cause}", c.peer, c.name),
        }
    }
}

/// Who gets a queue group's message.
enum Pick {
    /// This reactor's subscription.
    Local(usize),
    /// A neighbour.
    Far(usize),
    Nobody,
}

/// A set of queue group names: searched linearly while small.
struct Names<'a> {
    few: Vec<&'a Bytes>,
    many: std::collections::HashSet<&'a Bytes>,
}

impl<'a> Names<'a> {
    fn new(names: impl Iterator<Item = &'a Bytes>) -> Self {
        let few: Vec<&Bytes> = names.collect();
        if few.len() <= 8 {
            return Names {
                few,
                many: Default::default(),
            };
        }
        Names {
            many: few.into_iter().collect(),
            few: Vec::new(),
        }
    }

    fn has(&self, name: &Bytes) -> bool {
        self.few.contains(&name) || self.many.contains(name)
    }
}

/// Add `queue` (or plain interest: `None`) to what goes to neighbour `nbr` (each group
/// is added at most once per publish: the groups of a match are distinct).
fn target(targets: &mut Vec<Target>, nbr: usize, queue: Option<&Bytes>) {
    let i = match targets.iter().position(|t| t.nbr == nbr) {
        Some(i) => i,
        None => {
            targets.push(Target {
                nbr,
                queues: Vec::new(),
            });
            targets.len() - 1
        }
    };
    if let Some(q) = queue {
        targets[i].queues.push(q.clone());
    }
}

/// `subject sid [reply] ` for a MSG/HMSG line.
fn msg_args(h: &mut BytesMut, subject: &[u8], sid: &[u8], reply: Option<&[u8]>) {
    h.extend_from_slice(subject);
    h.extend_from_slice(b" ");
    h.extend_from_slice(sid);
    h.extend_from_slice(b" ");
    if let Some(r) = reply {
        h.extend_from_slice(r);
        h.extend_from_slice(b" ");
    }
}

fn push_usize(h: &mut BytesMut, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    h.extend_from_slice(&digits[i..]);
}
