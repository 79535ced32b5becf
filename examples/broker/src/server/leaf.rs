//! The link to a NATS hub: this broker as a leaf node of a nats-server (`--leaf`).
//!
//! Reactor 0 solicits the hub's leafnode port and speaks the leaf-node protocol as
//! nats-server 2.9 does (see `/work/shared/protocols/nats-leafnode-transcript.txt` for
//! the real bytes between two nats-servers): the hub's `INFO`, our `CONNECT`, then both
//! sides announce their interest with `LS+ subject [queue weight]` / `LS- subject
//! [queue]` and send each other the messages the other side's interest matches with
//! `LMSG subject [reply | + reply queue... | | queue...] size`, or with headers `HMSG`
//! (not `HLMSG`) with the same arguments and the header size before the size.
//! The link is a neighbour (see the module docs of `server.rs`): the hub's interest is a
//! set of subscriptions owned by the link, and this side's interest is announced to it in
//! aggregate, re-sent in full at every (re)connection.
//!
//! The link is a heartloop connection like any other: it pings the hub after
//! `--leaf-ping` without traffic (and answers the hub's pings), and is lost after three
//! times that without a byte from the hub; its outbound queue has the clients' limits
//! (`--max-pending`, `--write-deadline`: a slow hub is cut as a slow consumer would be).
//! When it ends, for whatever cause (logged at info level with it), the hub's interest is
//! dropped and the link is solicited again after a backoff (100 ms, doubling to 5 s).
//!
//! Messages from the hub are read with the broker's `--max-payload`: keep it at least the
//! hub's `max_payload` (both default to 1 MB), or a larger message ends the link.
//!
//! Not covered: TLS, credentials (user/password, token, nkey, JWT), accounts other than
//! the hub's default one, JetStream domains, loop detection (`$LDS`), and the hub's
//! `leafnode_urls` (only the one address given is solicited).

use std::net::ToSocketAddrs;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use heartloop::{Cause, ConnConfig, ConnId, Event, Heartbeat, OutboundConfig, OverflowPolicy};

use super::{Interest, Server, Source, VERSION, push_usize};
use crate::parser::{Op, Parser};

/// Tag of the reconnection timer.
pub const RECONNECT_TIMER: u64 = 2;

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The link's state (reactor 0 with `--leaf`).
#[derive(Debug)]
pub struct Leaf {
    /// `HOST:PORT` of the hub's leafnode port.
    target: String,
    /// Its index in `Server::nbrs`.
    nbr: usize,
    conn: Option<ConnId>,
    /// `INFO` came and `CONNECT` went: interest and messages flow.
    up: bool,
    /// The hub takes headers (`HMSG`).
    hub_headers: bool,
    parser: Parser,
    max_payload: usize,
    /// Written this turn, handed to the reactor at its end.
    out: BytesMut,
    backoff: Duration,
}

impl Leaf {
    /// `url` is `nats://HOST:PORT`, `nats-leaf://HOST:PORT` or `HOST:PORT` (port 7422,
    /// nats-server's leafnode port, if left out).
    pub fn new(url: &str, nbr: usize, max_payload: usize) -> std::io::Result<Leaf> {
        let rest = url
            .strip_prefix("nats://")
            .or_else(|| url.strip_prefix("nats-leaf://"))
            .unwrap_or(url);
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() || rest.contains('/') || rest.contains('@') {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("--leaf {url:?}: expected nats://HOST:PORT (no credentials, no path)"),
            ));
        }
        let has_port = rest
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.ends_with(':') && p.parse::<u16>().is_ok());
        let target = if has_port {
            rest.to_string()
        } else {
            format!("{rest}:7422")
        };
        Ok(Leaf {
            target,
            nbr,
            conn: None,
            up: false,
            hub_headers: false,
            parser: Parser::leaf(max_payload),
            max_payload,
            out: BytesMut::new(),
            backoff: BACKOFF_MIN,
        })
    }
}

impl Server {
    pub(super) fn is_leaf_conn(&self, conn: ConnId) -> bool {
        self.leaf.as_ref().is_some_and(|l| l.conn == Some(conn))
    }

    /// Solicit the hub (at start, and when the reconnection timer fires).
    pub(super) fn leaf_connect(&mut self) {
        let Some(l) = &mut self.leaf else {
            return;
        };
        if l.conn.is_some() {
            return;
        }
        l.up = false;
        l.parser = Parser::leaf(l.max_payload);
        l.out = BytesMut::new();
        let ping = self.cfg.leaf_ping.max(Duration::from_millis(1));
        let cfg = ConnConfig::default()
            .heartbeat(Heartbeat::new(ping, ping * 3))
            .connect_timeout(Some(ping * 3))
            .outbound(
                OutboundConfig::limit(self.cfg.max_pending.max(1), OverflowPolicy::Disconnect)
                    .on_stall(self.cfg.write_deadline),
            );
        let addr = l.target.to_socket_addrs().map(|mut a| a.next());
        match addr {
            Ok(Some(addr)) => match self.reactor.connect(addr, cfg) {
                Ok(conn) => {
                    log::debug!("leaf: soliciting {} ({addr}) as {conn}", l.target);
                    l.conn = Some(conn);
                    return;
                }
                Err(e) => log::info!("leaf: cannot connect to {}: {e}", l.target),
            },
            Ok(None) => log::info!("leaf: {} resolves to no address", l.target),
            Err(e) => log::info!("leaf: cannot resolve {}: {e}", l.target),
        }
        self.leaf_retry();
    }

    /// Solicit again after the backoff, which doubles up to its maximum.
    fn leaf_retry(&mut self) {
        let Some(l) = &mut self.leaf else {
            return;
        };
        let wait = l.backoff;
        l.backoff = (l.backoff * 2).min(BACKOFF_MAX);
        self.reactor.set_timer(wait, RECONNECT_TIMER);
    }

    pub(super) fn leaf_event(&mut self, ev: Event) {
        match ev {
            Event::Data { bytes, .. } => self.leaf_data(bytes),
            Event::HeartbeatDue { .. } => self.leaf_write(b"PING\r\n"),
            Event::PeerHalfClosed { conn } => {
                let _ = self.reactor.close(conn);
            }
            Event::Disconnected { cause, .. } => self.leaf_lost(cause),
            _ => {}
        }
    }

    fn leaf_lost(&mut self, cause: Cause) {
        let Some(l) = &mut self.leaf else {
            return;
        };
        let was_up = l.up;
        l.conn = None;
        l.up = false;
        l.out = BytesMut::new();
        log::info!(
            "leaf: link to {} {}: {cause}; reconnecting in {:?}",
            l.target,
            if was_up { "lost" } else { "failed" },
            l.backoff
        );
        let nbr = l.nbr;
        self.nbr_gone(nbr);
        self.leaf_retry();
    }

    fn leaf_data(&mut self, bytes: Bytes) {
        let Some(l) = &mut self.leaf else {
            return;
        };
        l.parser.push(bytes);
        loop {
            let Some(l) = &mut self.leaf else {
                return;
            };
            if l.conn.is_none() {
                return;
            }
            match l.parser.next() {
                Ok(Some(op)) => self.leaf_op(op),
                Ok(None) => return,
                Err(e) => {
                    log::warn!("leaf: protocol error from {}: {e}; closing", l.target);
                    if let Some(conn) = l.conn {
                        let _ = self.reactor.abort(conn);
                    }
                    return;
                }
            }
        }
    }

    fn leaf_op(&mut self, op: Op) {
        let Some(l) = &mut self.leaf else {
            return;
        };
        let nbr = l.nbr;
        match op {
            // Later INFOs (cluster changes) bring nothing this leaf uses.
            Op::Info(json) if !l.up => self.leaf_hello(&json),
            Op::Ping => self.leaf_write(b"PONG\r\n"),
            Op::Err(text) => log::warn!(
                "leaf: {} says -ERR {}",
                l.target,
                String::from_utf8_lossy(&text)
            ),
            Op::LeafSub { subject, queue } => {
                let (queue, weight) = match queue {
                    Some((q, w)) => (Some(q), w),
                    None => (None, 1),
                };
                self.nbr_interest(nbr, (subject, queue), weight);
            }
            Op::LeafUnsub { subject, queue } => self.nbr_interest(nbr, (subject, queue), 0),
            Op::LeafMsg {
                subject,
                reply,
                queues,
                header_len,
                data,
            } => {
                // An empty header block: a plain message, as for a client's HPUB.
                let header_len = header_len.filter(|&h| h > 0);
                self.publish(
                    Source::Nbr(nbr),
                    &subject,
                    reply.as_deref(),
                    header_len,
                    data,
                    &queues,
                );
            }
            _ => {}
        }
    }

    /// The hub's first `INFO`: answer with `CONNECT` and all of this side's interest.
    fn leaf_hello(&mut self, json: &[u8]) {
        let info: serde_json::Value = serde_json::from_slice(json).unwrap_or_default();
        let flag = |name: &str| info.get(name).and_then(|x| x.as_bool()).unwrap_or(false);
        let Some(l) = &mut self.leaf else {
            return;
        };
        if flag("tls_required") {
            log::warn!(
                "leaf: {} requires TLS, which this broker lacks; closing",
                l.target
            );
            if let Some(conn) = l.conn {
                let _ = self.reactor.close(conn);
            }
            return;
        }
        l.hub_headers = flag("headers");
        l.up = true;
        l.backoff = BACKOFF_MIN;
        // `auth_required` is set by nats-server even when no credentials are configured
        // (a leafnode port then accepts a CONNECT without them); one that wants them
        // answers -ERR 'Authorization Violation' and closes, which is logged.
        let connect = serde_json::json!({
            "version": VERSION,
            "tls_required": false,
            "server_id": self.server_id,
            "name": self.server_id,
            "headers": true,
        });
        log::info!(
            "leaf: link to {} up (hub {})",
            l.target,
            info.get("server_id")
                .and_then(|x| x.as_str())
                .unwrap_or("?")
        );
        self.leaf_write(format!("CONNECT {connect}\r\n").as_bytes());
        let all: Vec<(Interest, u32)> = self
            .interest
            .iter()
            .map(|(k, c)| (k.clone(), c.to_leaf()))
            .filter(|&(_, w)| w > 0)
            .collect();
        for (key, weight) in all {
            self.leaf_announce(&key, weight);
        }
    }

    /// Tell the hub this side's weight on `key` (0: the interest is gone).
    pub(super) fn leaf_announce(&mut self, key: &Interest, weight: u32) {
        if !self.leaf.as_ref().is_some_and(|l| l.up) {
            return;
        }
        let mut line = BytesMut::with_capacity(key.0.len() + 32);
        line.extend_from_slice(if weight > 0 { b"LS+ " } else { b"LS- " });
        line.extend_from_slice(&key.0);
        if let Some(q) = &key.1 {
            line.extend_from_slice(b" ");
            line.extend_from_slice(q);
            if weight > 0 {
                line.extend_from_slice(b" ");
                push_usize(&mut line, weight as usize);
            }
        }
        line.extend_from_slice(b"\r\n");
        self.leaf_write(&line);
    }

    /// Send the hub a message (`queues`: the groups it was picked for).
    pub(super) fn leaf_msg(
        &mut self,
        subject: &[u8],
        reply: Option<&[u8]>,
        header_len: Option<usize>,
        data: &Bytes,
        queues: &[Bytes],
    ) {
        let copy_below = self.cfg.copy_below;
        let max_pending = self.cfg.max_pending;
        let Some(l) = &mut self.leaf else {
            return;
        };
        let (Some(conn), true) = (l.conn, l.up) else {
            return;
        };
        let (header_len, payload) = match header_len {
            Some(hl) if !l.hub_headers => (None, data.slice(hl..)),
            h => (h, data.clone()),
        };
        let h = &mut l.out;
        h.extend_from_slice(if header_len.is_some() {
            b"HMSG "
        } else {
            b"LMSG "
        });
        h.extend_from_slice(subject);
        h.extend_from_slice(b" ");
        match (reply, queues.is_empty()) {
            (Some(r), true) => {
                h.extend_from_slice(r);
                h.extend_from_slice(b" ");
            }
            (Some(r), false) => {
                h.extend_from_slice(b"+ ");
                h.extend_from_slice(r);
                h.extend_from_slice(b" ");
            }
            (None, false) => h.extend_from_slice(b"| "),
            (None, true) => {}
        }
        for q in queues {
            h.extend_from_slice(q);
            h.extend_from_slice(b" ");
        }
        if let Some(hl) = header_len {
            push_usize(h, hl);
            h.extend_from_slice(b" ");
        }
        push_usize(h, payload.len() - 2);
        h.extend_from_slice(b"\r\n");
        let copy = payload.len() < copy_below;
        if copy {
            h.extend_from_slice(&payload);
        }
        let pending = l.out.len()
            + self.reactor.queued(conn).unwrap_or(0)
            + if copy { 0 } else { payload.len() };
        if pending > max_pending {
            log::info!(
                "leaf: {} is a slow consumer: {pending} bytes pending, over max_pending \
                 {max_pending}; closed",
                l.target
            );
            l.up = false;
            l.out = BytesMut::new();
            let _ = self.reactor.abort(conn);
        } else if !copy {
            let batch = std::mem::take(&mut l.out).freeze();
            let _ = self.reactor.send_parts(conn, batch, payload);
        }
    }

    fn leaf_write(&mut self, bytes: &[u8]) {
        if let Some(l) = &mut self.leaf
            && l.conn.is_some()
        {
            l.out.extend_from_slice(bytes);
        }
    }

    /// Hand what was written to the link this turn to the reactor.
    pub(super) fn leaf_flush(&mut self) {
        if let Some(l) = &mut self.leaf
            && let Some(conn) = l.conn
            && !l.out.is_empty()
        {
            let batch = std::mem::take(&mut l.out).freeze();
            let _ = self.reactor.send(conn, batch);
        }
    }
}
