//! The broker: clients, subscriptions, fan-out and liveness, on one heartloop reactor.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use heartloop::{
    Cause, ConnConfig, ConnId, Event, Heartbeat, OutboundConfig, OverflowPolicy, Reactor,
    ReactorConfig,
};
use slab::Slab;

use crate::parser::{Op, ParseError, Parser};
use crate::subjects::{Index, Loc, Matches, valid_literal_subject};

/// The version announced in `INFO`. Clients parse it to decide which features they may
/// use (headers need 2.2, no-responders 2.2.x); we implement what 2.10 clients expect of
/// the core protocol.
const VERSION: &str = "2.10.0";

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
    /// Most bytes queued for one client before it is closed as a slow consumer.
    pub max_pending: usize,
    /// Longest a client's queue may go without the kernel taking a byte.
    pub write_deadline: Duration,
    /// Payloads shorter than this are copied into each subscriber's batch; longer ones
    /// are sent as one `Bytes` shared by all subscribers (see `Client::out`).
    pub copy_below: usize,
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
    fn default() -> Self {
        Opts {
            verbose: false,
            pedantic: false,
            echo: true,
            headers: false,
            no_responders: false,
        }
    }
}

#[derive(Debug)]
struct Client {
    conn: ConnId,
    peer: SocketAddr,
    parser: Parser,
    opts: Opts,
    name: String,
    /// sid -> key in `Server::subs`.
    subs: HashMap<Bytes, usize>,
    /// When bytes last came in.
    last_in: Instant,
    /// PINGs sent since bytes last came in.
    pings_out: u32,
    /// A fatal error or staleness was answered and `close` called: ignore the rest.
    closing: bool,
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
    rng: u64,
}

impl Server {
    /// Listen on `cfg.addr`.
    pub fn bind(cfg: Config) -> io::Result<Server> {
        // A send over the reactor-wide cap must not tear a message in two (header queued,
        // payload refused): with `Disconnect` the connection ends instead.
        let rcfg = ReactorConfig::default().total_queued_limit(4 << 30, OverflowPolicy::Disconnect);
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
                // No watermarks: one slow subscriber never slows the publisher; the
                // hard limit and the stall deadline decide.
                OutboundConfig::limit(pending, OverflowPolicy::Disconnect)
                    .on_stall(cfg.write_deadline),
            );
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
            rng: seed | 1,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Serve forever.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Vec::with_capacity(1024);
        loop {
            self.reactor.poll(&mut events, None)?;
            for ev in events.drain(..) {
                self.on_event(ev);
            }
            self.flush_batches();
        }
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Accepted { conn, peer, .. } => self.accepted(conn, peer),
            Event::Data { conn, bytes } => self.data(conn, bytes),
            Event::HeartbeatDue { conn } => {
                // Nothing was sent to this client, or nothing came from it, for
                // ping_interval (at most once per interval).
                if let Some(&key) = self.by_conn.get(&conn) {
                    self.ping_tick(key);
                }
            }
            Event::Disconnected { conn, cause } => self.disconnected(conn, cause),
            _ => {}
        }
    }

    fn accepted(&mut self, conn: ConnId, peer: SocketAddr) {
        let now = self.reactor.now();
        let key = self.clients.insert(Client {
            conn,
            peer,
            parser: Parser::new(self.cfg.max_payload),
            opts: Opts::default(),
            name: String::new(),
            subs: HashMap::new(),
            last_in: now,
            pings_out: 0,
            closing: false,
            out: BytesMut::new(),
        });
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
            "client_ip": peer.ip().to_string(),
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
        }
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
        let c = &mut self.clients[key];
        c.opts = Opts {
            verbose: flag("verbose", false),
            pedantic: flag("pedantic", false),
            echo: flag("echo", true),
            headers: flag("headers", false),
            no_responders: flag("no_responders", false),
        };
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
            Some(max) if self.subs[skey].delivered < max => self.subs[skey].max = max,
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
            // As nats-server: reported in pedantic mode only; the connection stays.
            self.write(key, b"-ERR 'Invalid Subject'\r\n");
        }
        // nats-server acknowledges before it delivers.
        self.ok(key);
        let delivered = self.publish(Some(key), subject, reply, header_len, data);
        if let Some(reply) = reply
            && delivered == 0
            && opts.no_responders
            && opts.headers
        {
            // A request nobody can answer: tell the requester at once (status 503).
            const NO_RESPONDERS: &[u8] = b"NATS/1.0 503\r\n\r\n\r\n";
            let hdr = NO_RESPONDERS.len() - 2;
            self.publish(
                None,
                reply,
                None,
                Some(hdr),
                Bytes::from_static(NO_RESPONDERS),
            );
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
                self.deliver(s, subject, reply, header_len, &data);
                delivered += 1;
            }
        }
        for (_, members) in m.groups() {
            let n = members.len();
            let start = (self.random() % n as u64) as usize;
            if let Some(s) = (0..n)
                .map(|j| members[(start + j) % n])
                .find(|&s| self.eligible(from, s))
            {
                self.deliver(s, subject, reply, header_len, &data);
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

    fn deliver(
        &mut self,
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
        if payload.len() < self.cfg.copy_below {
            h.extend_from_slice(&payload);
        } else {
            // Large: the header goes out with what is batched, then the payload `Bytes`
            // shared by every subscriber (a reference count, no copy), queued as one unit
            // so a refused send can never tear a message. If the queue is over its limit
            // the reactor ends the connection (slow consumer).
            let conn = c.conn;
            let batch = std::mem::take(&mut c.out).freeze();
            let _ = self.reactor.send_parts(conn, batch, payload);
        }
        sub.delivered += 1;
        if sub.max != 0 && sub.delivered >= sub.max {
            self.remove_sub(s);
        }
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
        self.write(key, e.wire());
        self.close(key);
    }

    fn ok(&mut self, key: usize) {
        if self.clients[key].opts.verbose {
            self.write(key, b"+OK\r\n");
        }
    }

    /// Append to the client's batch.
    fn write(&mut self, key: usize, bytes: &[u8]) {
        let c = &mut self.clients[key];
        if c.out.is_empty() {
            self.dirty.push(key);
        }
        c.out.extend_from_slice(bytes);
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
        self.reactor.close(self.clients[key].conn);
    }

    fn disconnected(&mut self, conn: ConnId, cause: Cause) {
        let Some(key) = self.by_conn.remove(&conn) else {
            return;
        };
        let c = self.clients.remove(key);
        for (_, skey) in c.subs {
            let sub = self.subs.remove(skey);
            if let Some((moved, loc)) = self.index.remove(sub.loc) {
                self.subs[moved].loc = loc;
            }
        }
        match cause {
            Cause::SlowPeer { .. } => {
                log::info!(
                    "{conn} ({}, {:?}) slow consumer, closed: {cause}",
                    c.peer,
                    c.name
                )
            }
            _ => log::debug!("{conn} ({}, {:?}) closed: {cause}", c.peer, c.name),
        }
    }

    fn random(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
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
