//! The broker: clients, subscriptions, fan-out and liveness, on one heartloop reactor.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use heartloop::{
    Cause, ConnConfig, ConnId, Event, Heartbeat, OutboundConfig, OverflowPolicy, PeerAddr, Reactor,
    ReactorConfig,
};
use slab::Slab;

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
#[derive(Debug, Clone, Copy)]
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
    /// As a publisher: held back by this subscriber (key, conn). Its unprocessed input
    /// waits in `parser`, and reading is paused.
    held_by: Option<(usize, ConnId)>,
    /// The peer finished sending: close once its input is processed.
    eof: bool,
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
    /// Auto-unsubscribe after this many deliveries (0: never).
    max: u64,
    delivered: u64,
    loc: Loc,
}

/// The broker.
#[derive(Debug)]
pub struct Server {
    reactor: Reactor,
    cfg: Config,
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
}

impl Server {
    /// Listen on `cfg.addr`.
    pub fn bind(cfg: Config) -> io::Result<Server> {
        // A send over the reactor-wide cap must not tear a message in two (header queued,
        // payload refused): with `Disconnect` the connection ends instead.
        let mut rcfg =
            ReactorConfig::default().total_queued_limit(4 << 30, OverflowPolicy::Disconnect);
        if let Some(d) = cfg.quiet_coalescing {
            rcfg = rcfg.quiet_coalescing(d);
        }
        let mut reactor = Reactor::new(rcfg)?;
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
        let listener = reactor.listen(cfg.addr, conn)?;
        let local = reactor.local_addr(listener)?;
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ (std::process::id() as u64) << 32;
        Ok(Server {
            reactor,
            cfg,
            local,
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
            rng: Rng::new(seed),
            slow_consumers: 0,
            holds: 0,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Serve forever.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Vec::with_capacity(1024);
        if let Some(every) = self.cfg.stats {
            self.reactor.set_timer(every, STATS_TIMER);
        }
        loop {
            // The poll writes what was queued before it sleeps (and, woken by a writable
            // socket, writes more): then the held-back publishers are looked at again.
            let timeout = self.hold_timeout();
            self.fresh_hold = false;
            self.reactor.poll(&mut events, timeout)?;
            self.release_held();
            for ev in events.drain(..) {
                self.on_event(ev);
            }
            self.flush_batches();
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
                self.client(key, conn)
                    .and_then(|c| c.held_by)
                    .and_then(|(s, sconn)| self.client(s, sconn))
                    .and_then(|s| s.over_half_since)
                    .map_or(Duration::ZERO, |since| {
                        (since + STALL_MAX).saturating_duration_since(now)
                    })
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
        if self.held.is_empty() {
            return;
        }
        for (key, conn) in std::mem::take(&mut self.held) {
            let Some((s, sconn)) = self.client(key, conn).and_then(|c| c.held_by) else {
                continue;
            };
            if self.client(s, sconn).is_some_and(|c| !c.closing) && self.hold_back(s) {
                self.held.push((key, conn));
                continue;
            }
            self.clients[key].held_by = None;
            self.process(key, true);
            let c = &self.clients[key];
            if c.held_by.is_none() && !c.closing {
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
        let c = &mut self.clients[s];
        if pending <= self.cfg.max_pending / 2 {
            c.over_half_since = None;
            return false;
        }
        let since = *c.over_half_since.get_or_insert(now);
        now.saturating_duration_since(since) < STALL_MAX
    }

    /// Bytes pending for a client: its batch and what the reactor holds for it.
    fn pending(&self, key: usize) -> usize {
        let c = &self.clients[key];
        c.out.len() + self.reactor.queued(c.conn).unwrap_or(0)
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Accepted { conn, peer, .. } => self.accepted(conn, peer),
            Event::Data { conn, bytes } => self.data(conn, bytes),
            Event::PeerHalfClosed { conn } => {
                // nats-server closes a client at its EOF, after what it sent before.
                if let Some(&key) = self.by_conn.get(&conn) {
                    let c = &mut self.clients[key];
                    c.eof = true;
                    if c.held_by.is_none() && !c.closing {
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
    /// timer for the next. `longest turn` is `Stats::longest_turn_us`: the longest time
    /// every other client waited on one turn's work.
    fn print_stats(&mut self) {
        let s = self.reactor.stats();
        let d = s.disconnects;
        eprintln!(
            "stats: clients {} subs {} slow consumers {} holds {} held {} accepted {} read {} \
             B written {} B queued {} B (peak {}) turns {} longest turn {} us disconnects {} \
             (reset {}, peer closed {}, slow peer {}, protocol {}, heartbeat {})",
            self.clients.len(),
            self.subs.len(),
            self.slow_consumers,
            self.holds,
            self.held.len(),
            s.accepted,
            s.bytes_read,
            s.bytes_written,
            s.bytes_queued,
            s.bytes_queued_peak,
            s.turns,
            s.longest_turn_us,
            d.total(),
            d.reset,
            d.peer_closed,
            d.slow_peer,
            d.protocol,
            d.heartbeat_timeout,
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
            held_by: None,
            eof: false,
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
            "client_id": conn.serial(),
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
        // Held back: the bytes wait in the parser (read in this turn before reading was
        // paused).
        if c.held_by.is_none() {
            self.process(key, true);
        }
    }

    /// Run the client's parsed operations until more input is needed, it is closing, or
    /// (`may_hold`) a subscriber it delivered to holds it back.
    fn process(&mut self, key: usize, may_hold: bool) {
        loop {
            match self.clients[key].parser.next() {
                Ok(Some(op)) => self.op(key, op),
                Ok(None) => break,
                Err(e) => {
                    self.fatal(key, &e);
                    break;
                }
            }
            if self.clients[key].closing {
                break;
            }
            if let Some(by) = self.hold.take()
                && may_hold
            {
                let c = &mut self.clients[key];
                c.held_by = Some(by);
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
            Op::Ping => self.write(key, b"PONG\r\n"),
            Op::Pong | Op::Ok | Op::Err(_) | Op::Info(_) => {}
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
        self.subs.insert(Sub {
            client: key,
            sid: sid.clone(),
            max: 0,
            delivered: 0,
            loc,
        });
        self.clients[key].subs.insert(sid, skey);
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
        if let Some((moved, loc)) = self.index.remove(sub.loc) {
            self.subs[moved].loc = loc;
        }
        if let Some(c) = self.clients.get_mut(sub.client) {
            c.subs.remove(&sub.sid);
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
        let delivered = self.publish(Some(key), subject, reply, header_len, data);
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
            .find(|&&s| self.subs[s].client == key)
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
    /// queue group. `data` is the payload plus CRLF, shared by all. Returns deliveries.
    fn publish(
        &mut self,
        from: Option<usize>,
        subject: &[u8],
        reply: Option<&[u8]>,
        header_len: Option<usize>,
        mut data: Bytes,
    ) -> usize {
        let mut m = std::mem::take(&mut self.matches);
        self.index.match_into(subject, &mut m);
        if (!m.plain.is_empty() || m.groups().next().is_some())
            && data.len() >= self.cfg.copy_below
            && data.len() < OWN_BUFFER_BELOW
        {
            data = Bytes::copy_from_slice(&data);
        }
        let mut delivered = 0;
        for &s in &m.plain {
            if self.eligible(from, s) {
                self.deliver(from, s, subject, reply, header_len, &data);
                delivered += 1;
            }
        }
        for (_, members) in m.groups() {
            let n = members.len();
            let start = self.rng.below(n as u64) as usize;
            if let Some(s) = (0..n)
                .map(|j| members[(start + j) % n])
                .find(|&s| self.eligible(from, s))
            {
                self.deliver(from, s, subject, reply, header_len, &data);
                delivered += 1;
            }
        }
        self.matches = m;
        delivered
    }

    fn eligible(&self, from: Option<usize>, s: usize) -> bool {
        let ck = self.subs[s].client;
        let c = &self.clients[ck];
        !c.closing && (from != Some(ck) || c.opts.echo)
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
        } else if from.is_some()
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
        let mut dirty = std::mem::take(&mut self.dirty);
        for key in dirty.drain(..) {
            self.flush(key);
        }
        self.dirty = dirty;
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
        // A publisher held back when it went: what it sent before is still delivered
        // (nats-server processes every read before it sees the end).
        let c = &mut self.clients[key];
        if c.held_by.take().is_some() && !c.closing {
            self.process(key, false);
        }
        let c = self.clients.remove(key);
        for (_, skey) in c.subs {
            let sub = self.subs.remove(skey);
            if let Some((moved, loc)) = self.index.remove(sub.loc) {
                self.subs[moved].loc = loc;
            }
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
