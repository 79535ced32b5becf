//! Connections: connect, what readiness means for one, the owner's close, abort and pause,
//! and the one place a connection ends.
//!
//! Every decision is the [`Lifecycle`]'s: the code here reports facts to it and carries out
//! the [`Step`] it returns ([`Reactor::obey`]).

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::time::Duration;

use mio::Interest;
use mio::net::TcpStream;

use super::expiry::Timeout;
use super::read::Pass;
use super::socket::apply_socket_options;
use super::table::Entry;
use super::{Conn, Reactor, Stream};
use crate::cause::{Cause, ProtocolError};
use crate::clock::later;
use crate::config::ConnConfig;
use crate::event::{ConnId, Event, PeerAddr, Readiness, StaleId};
use crate::heartbeat::Liveness;
use crate::lifecycle::{Lifecycle, Step};

impl Reactor {
    /// Start a non-blocking connect. The result arrives as [`Event::Connected`] or as
    /// [`Event::Disconnected`] with `ConnectRefused`, `ConnectTimeout` or another cause.
    /// Errors the OS reports at once (bad address, no route, fd exhaustion) are returned.
    /// Sends made before the connection completes are queued and flushed once it does.
    ///
    /// ```
    /// use std::time::Duration;
    /// use bytes::Bytes;
    /// use heartloop::{ConnConfig, Event, Reactor, ReactorConfig};
    /// # fn main() -> std::io::Result<()> {
    /// # let server = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// # let addr = server.local_addr()?;
    /// let mut reactor = Reactor::new(ReactorConfig::default())?;
    /// let cfg = ConnConfig::default().connect_timeout(Some(Duration::from_secs(2)));
    /// let conn = reactor.connect(addr, cfg)?;
    /// reactor.send(conn, Bytes::from_static(b"hello")).unwrap(); // sent once connected
    /// let mut events = Vec::new();
    /// loop {
    ///     reactor.poll(&mut events, None)?;
    ///     match events.pop() {
    ///         Some(Event::Connected { .. }) => break,
    ///         Some(Event::Disconnected { cause, .. }) => panic!("{cause}"), // refused, timed out
    ///         _ => {}
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn connect(&mut self, addr: SocketAddr, cfg: ConnConfig) -> io::Result<ConnId> {
        self.refuse_if_shutting_down()?;
        let sock = Stream::Tcp(TcpStream::connect(addr)?);
        self.start_connect(sock, cfg)
    }

    pub(super) fn start_connect(&mut self, sock: Stream, cfg: ConnConfig) -> io::Result<ConnId> {
        let id = self.add_conn(sock, cfg, Lifecycle::connecting(cfg.half_close))?;
        if let Some(t) = cfg.connect_timeout {
            // Called between turns: read the clock, the turn's `now` may be old.
            let key = self
                .wheel
                .insert(later(self.clock.now(), t), Timeout::Connect(id));
            if let Some(c) = self.table.conn_mut(id) {
                c.connect_timer = Some(key);
            }
        }
        Ok(id)
    }

    pub(super) fn add_conn(
        &mut self,
        mut sock: Stream,
        cfg: ConnConfig,
        lc: Lifecycle,
    ) -> io::Result<ConnId> {
        apply_socket_options(&sock, &cfg);
        let registry = &self.registry;
        let key = self.table.insert(|key, token| {
            registry.register(&mut sock, token, Interest::READABLE | Interest::WRITABLE)?;
            let id = ConnId {
                gen_: key.serial,
                index: key.index,
            };
            Ok(Entry::Conn(Box::new(Conn::new(id, sock, cfg, lc))))
        })?;
        self.stats.open_connections += 1;
        Ok(ConnId {
            gen_: key.serial,
            index: key.index,
        })
    }

    pub(super) fn start_heartbeat(&mut self, id: ConnId) {
        let now = self.now.max(self.clock.now());
        let Some(c) = self.table.conn_mut(id) else {
            return;
        };
        if let Some(mut hb) = c.cfg.heartbeat {
            // A zero interval would make every turn a ping turn.
            hb.interval = hb.interval.max(Duration::from_millis(1));
            let live = Liveness::new(hb, now);
            c.live = Some(live);
            self.heap.push(id, live.next_deadline());
            self.heartbeat_conns += 1;
        }
    }

    /// Whether `id` names a live connection.
    pub fn is_open(&self, id: ConnId) -> bool {
        self.table.conn(id).is_some()
    }

    /// The peer's address, once known (TCP or Unix).
    pub fn peer_addr(&self, id: ConnId) -> Option<PeerAddr> {
        self.table.conn(id).and_then(|c| c.peer.clone())
    }

    /// Bytes queued for the connection (`None` if stale).
    pub fn queued(&self, id: ConnId) -> Option<usize> {
        self.table.conn(id).map(|c| c.out.queued())
    }

    /// How long the connection's queued bytes have waited without the kernel taking any
    /// (since the last write that made progress, or since the queue became non-empty):
    /// how far behind a slow reader is. `Some(ZERO)`-ish for a peer that keeps reading,
    /// growing for one that stopped; `None` when nothing is queued, or for a stale id.
    /// The stall timeout ([`OutboundConfig::on_stall`](crate::OutboundConfig::on_stall))
    /// cuts a connection on this clock; an application can also use it for its own
    /// policy (say, not holding producers back for a consumer that is not draining).
    pub fn write_stalled_for(&self, id: ConnId) -> Option<Duration> {
        let c = self.table.conn(id)?;
        c.out.waiting_for(self.clock.now())
    }

    /// Close gracefully: flush what is queued, send FIN, and wait for the peer's EOF while
    /// discarding what it still sends (a lingering close: closing a socket with unread
    /// input would reset the connection and lose what is still in flight), all bounded by
    /// the connection's `linger`. Ends with `Disconnected { cause: Closed }` at the peer's
    /// EOF, or when linger runs out with everything handed to the kernel; `SlowPeer` if
    /// linger ran out with bytes still queued. With nothing queued it ends at once.
    /// `Err(StaleId)` for a stale id. The socket itself is closed at once for the first
    /// few connections that end between two polls; beyond those, at the start of the next
    /// polls, a slice of time per poll (the kernel's share of a TCP close runs in the
    /// caller: closing hundreds at once held every other connection up for milliseconds).
    ///
    /// ```no_run
    /// # use bytes::Bytes;
    /// # use heartloop::{Event, Reactor, ReactorConfig};
    /// # fn main() -> std::io::Result<()> {
    /// # let mut reactor = Reactor::new(ReactorConfig::default())?;
    /// # let mut events = Vec::new();
    /// # reactor.poll(&mut events, None)?;
    /// # let Some(Event::Data { conn, .. }) = events.pop() else { return Ok(()) };
    /// // Answer, then hang up: the answer is delivered before the FIN.
    /// let _ = reactor.send(conn, Bytes::from_static(b"bye\n"));
    /// reactor.close(conn)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn close(&mut self, id: ConnId) -> Result<(), StaleId> {
        let Some(c) = self.table.conn_mut(id) else {
            return Err(StaleId);
        };
        match c.lc.on_close_requested(!c.out.is_empty()) {
            Step::End(cause) => {
                // Nothing to deliver: end now. The socket is closed in a later turn's
                // teardown, which reads what is waiting first (unread input would turn
                // our FIN into a reset) and shuts the write side down.
                self.end_as(id, cause, true);
            }
            step => self.obey(id, step),
        }
        Ok(())
    }

    /// [`close`](Reactor::close), reporting `reason` as the cause
    /// (`Disconnected { cause: Protocol(reason) }`) instead of `Closed`: for an
    /// application that ends a connection over its own protocol's error (a bad command,
    /// a failed login) and wants that in its logs and counters. What is queued (say, the
    /// error message to the peer) is still delivered first.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use heartloop::{ConnConfig, Event, ProtocolError, Reactor, ReactorConfig};
    /// # fn main() -> std::io::Result<()> {
    /// # let mut reactor = Reactor::new(ReactorConfig::default())?;
    /// # let l = reactor.listen("127.0.0.1:0".parse().unwrap(), ConnConfig::default())?;
    /// # let _client = std::net::TcpStream::connect(reactor.local_addr(l)?)?;
    /// # let mut events = Vec::new();
    /// # let conn = loop {
    /// #     reactor.poll(&mut events, None)?;
    /// #     if let Some(Event::Accepted { conn, .. }) = events.pop() { break conn; }
    /// # };
    /// let _ = reactor.send(conn, Bytes::from_static(b"-ERR unknown command\r\n"));
    /// reactor.close_with(conn, ProtocolError::Other("unknown command".into()))?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn close_with(&mut self, id: ConnId, reason: ProtocolError) -> Result<(), StaleId> {
        let Some(c) = self.table.conn_mut(id) else {
            return Err(StaleId);
        };
        if c.lc.can_send().is_ok() {
            c.close_reason = Some(reason); // not after an earlier close: that one stands
        }
        self.close(id)
    }

    /// Close at once with a reset (`SO_LINGER` 0): queued bytes are dropped and the peer
    /// sees `ECONNRESET`. Ends with `Disconnected { cause: Closed }`. `Err(StaleId)` if stale.
    pub fn abort(&mut self, id: ConnId) -> Result<(), StaleId> {
        let Some(c) = self.table.conn_mut(id) else {
            return Err(StaleId);
        };
        let _ = socket2::SockRef::from(&c.sock).set_linger(Some(Duration::ZERO));
        let step = c.lc.on_abort();
        self.obey(id, step);
        Ok(())
    }

    /// Stop reading from the connection (read-side flow control). The peer's bytes wait in
    /// the kernel and TCP pushes back on the peer. While paused, a reset or error still
    /// ends the connection at once, and so does the peer's FIN unless the connection is in
    /// half-close mode (then the FIN is reported in order, after the data, once resumed).
    ///
    /// The usual pairing: stop reading from a peer whose answers you cannot deliver.
    ///
    /// ```no_run
    /// # use heartloop::{Event, Reactor, ReactorConfig};
    /// # fn main() -> std::io::Result<()> {
    /// # let mut reactor = Reactor::new(ReactorConfig::default())?;
    /// # let mut events = Vec::new();
    /// reactor.poll(&mut events, None)?;
    /// for ev in events.drain(..) {
    ///     match ev {
    ///         // Echo: what we read goes back; a client that does not read its echo
    ///         // stops being read from, so it cannot grow our memory.
    ///         Event::Data { conn, bytes } => { let _ = reactor.send(conn, bytes); }
    ///         Event::WriteBlocked { conn, .. } => { let _ = reactor.pause_reading(conn); }
    ///         Event::Writable { conn } => { let _ = reactor.resume_reading(conn); }
    ///         _ => {}
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn pause_reading(&mut self, id: ConnId) -> Result<(), StaleId> {
        let Some(c) = self.table.conn_mut(id) else {
            return Err(StaleId);
        };
        let step = c.lc.on_pause();
        self.obey(id, step);
        Ok(())
    }

    /// Resume reading; what arrived meanwhile is read in the next turn.
    pub fn resume_reading(&mut self, id: ConnId) -> Result<(), StaleId> {
        let Some(c) = self.table.conn_mut(id) else {
            return Err(StaleId);
        };
        if c.lc.on_resume() == Step::Read {
            self.schedule_read(id);
        }
        Ok(())
    }

    /// Whether reading is paused.
    pub fn is_reading_paused(&self, id: ConnId) -> bool {
        self.table.conn(id).is_some_and(|c| c.lc.is_paused())
    }

    /// Put the connection on the ready queue (served first next turn).
    pub(super) fn schedule_read(&mut self, id: ConnId) {
        if let Some(c) = self.table.conn_mut(id)
            && !c.in_ready
        {
            c.in_ready = true;
            self.ready.push_back(id.into());
        }
    }

    /// What OS readiness means for a connection. Reads come before the error and before
    /// writes: bytes that arrived in front of a reset are delivered, not lost to a failed
    /// write or to `SO_ERROR`.
    pub(super) fn conn_ready(&mut self, id: ConnId, r: Readiness) {
        let Some(c) = self.table.conn_mut(id) else {
            return;
        };
        if c.lc.is_connecting() {
            if r.writable || r.error || r.read_closed {
                self.finish_connect(id);
            }
            if self.table.conn(id).is_none_or(|c| c.lc.is_connecting()) {
                return; // ended, or not connected yet
            }
        }
        let Some(c) = self.table.conn_mut(id) else {
            return;
        };
        // An error is taken after the read that may still deliver the bytes in front of
        // it, or at once when not reading (paused: a reset beats the FIN it came with).
        let read_first = r.error && c.lc.on_error_readiness() == Step::Read;
        if r.error && !read_first && self.take_error(id) {
            return;
        }
        if r.read_closed
            && let Some(c) = self.table.conn_mut(id)
        {
            let step = c.lc.on_read_closed();
            self.obey(id, step);
        }
        let Some(c) = self.table.conn_mut(id) else {
            return;
        };
        if (r.readable || r.read_closed || read_first) && c.lc.wants_read() {
            let hold = c.hold_reads;
            if read_first {
                // The bytes in front of the error are read before it ends the connection.
                self.read_conn(id, Pass::Final);
            } else if hold || self.turn_spent() {
                // The turn's budget is spent, or the owner has not seen this connection's
                // WriteBlocked yet: the edge is remembered on the ready queue, and the
                // read (to the end, as no new edge may come) waits for the next turn.
                self.schedule_read(id);
            } else if r.read_closed {
                // The FIN is queued behind the data: no further edge will come for it,
                // so read on to the end.
                self.read_conn(id, Pass::Again);
            } else {
                self.read_conn(id, Pass::Edge);
            }
        }
        if read_first && self.take_error(id) {
            return;
        }
        let Some(c) = self.table.conn_mut(id) else {
            return;
        };
        if r.writable {
            c.write_blocked = false;
            if !c.out.is_empty() {
                self.flush_conn(id);
            }
        }
    }

    /// Take the socket's pending error, if any, and end the connection with it. Whether
    /// it ended.
    fn take_error(&mut self, id: ConnId) -> bool {
        let Some(c) = self.table.conn_mut(id) else {
            return true;
        };
        match c.sock.take_error() {
            Ok(Some(e)) | Err(e) => {
                let step = c.lc.on_error(Cause::from_io(&e));
                self.obey(id, step);
                !self.is_open(id)
            }
            Ok(None) => false, // a read found out, or nothing is wrong
        }
    }

    fn finish_connect(&mut self, id: ConnId) {
        let Some(c) = self.table.conn_mut(id) else {
            return;
        };
        let step = match c.sock.take_error() {
            Ok(Some(e)) | Err(e) => c.lc.on_error(Cause::from_io(&e)),
            Ok(None) => match c.sock.peer() {
                Ok(addr) => {
                    c.peer = Some(addr);
                    if let Some(t) = c.connect_timer.take() {
                        self.wheel.cancel(t);
                    }
                    c.lc.on_connected()
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected => Step::Continue, // not yet
                Err(e) => c.lc.on_error(Cause::from_io(&e)),
            },
        };
        self.obey(id, step);
    }

    /// Carry out what the lifecycle decided. Every end of a connection passes here.
    pub(super) fn obey(&mut self, id: ConnId, step: Step) {
        match step {
            Step::Continue | Step::Deliver | Step::Discard => {}
            Step::Read => {
                self.read_conn(id, Pass::Again);
            }
            Step::Connected => {
                self.stats.connected += 1;
                self.pending.push(Event::Connected { conn: id });
                if self
                    .table
                    .conn(id)
                    .is_some_and(|c| c.lc.can_send().is_err())
                {
                    // `close` was called while connecting: its linger starts now.
                    self.obey(id, Step::Linger);
                }
                self.start_heartbeat(id);
                if self.table.conn(id).is_some_and(|c| !c.out.is_empty()) {
                    self.mark_dirty(id);
                }
            }
            Step::HalfClosed => {
                self.pending.push(Event::PeerHalfClosed { conn: id });
                // The peer can no longer send the bytes that prove it alive: its heartbeat
                // stops (a dead peer shows up as a failed write, TCP_USER_TIMEOUT or stall).
                if let Some(c) = self.table.conn_mut(id)
                    && c.live.take().is_some()
                {
                    self.heartbeat_conns -= 1;
                }
            }
            Step::Linger => {
                let Some(c) = self.table.conn_mut(id) else {
                    return;
                };
                // Called between turns: read the clock, the turn's `now` may be old.
                let at = later(self.clock.now(), c.cfg.linger);
                let key = self.wheel.insert(at, Timeout::Linger(id));
                if let Some(c) = self.table.conn_mut(id) {
                    c.linger_timer = Some(key);
                }
                self.mark_dirty(id);
            }
            Step::Fin => {
                if let Some(c) = self.table.conn_mut(id) {
                    let _ = c.sock.shutdown(Shutdown::Write);
                    // No ping can follow our FIN: the heartbeat ends; linger bounds the rest.
                    if c.live.take().is_some() {
                        self.heartbeat_conns -= 1;
                    }
                }
            }
            Step::End(cause) => self.end(id, cause),
        }
    }

    /// End a connection: exactly once, with exactly one `Disconnected` event. Only the
    /// lifecycle's `End` step leads here.
    fn end(&mut self, id: ConnId, cause: Cause) {
        self.end_as(id, cause, false);
    }

    /// [`end`](Reactor::end); `graceful`: `close` with nothing left to send (see
    /// `teardown::Grave`).
    fn end_as(&mut self, id: ConnId, cause: Cause, graceful: bool) {
        let Some(Entry::Conn(mut c)) = self.table.remove(id) else {
            return;
        };
        let cause = match (cause, c.close_reason.take()) {
            (Cause::Closed, Some(reason)) => Cause::Protocol(reason),
            (cause, _) => cause,
        };
        self.stats.bytes_queued -= c.out.queued() as u64;
        self.charged -= c.out.charged();
        self.stats.open_connections -= 1;
        if c.live.is_some() {
            self.heartbeat_conns -= 1;
        }
        for t in [c.connect_timer, c.stall_timer, c.linger_timer]
            .into_iter()
            .flatten()
        {
            self.wheel.cancel(t);
        }
        self.stats.disconnects.count(&cause);
        match &c.peer {
            Some(p) => log::debug!("{id} ({p}) disconnected: {cause}"),
            None => log::debug!("{id} disconnected: {cause}"),
        }
        if matches!(
            cause,
            Cause::SlowPeer { .. } | Cause::HeartbeatTimeout { .. }
        ) {
            // The peer does not drain, or cannot be reached. A plain close would leave
            // what the kernel still holds for it (up to megabytes) in an orphaned socket,
            // retransmitted for minutes ahead of our FIN: memory held for nothing, and a
            // peer that only learns it was cut after reading it all. Reset instead.
            let _ = socket2::SockRef::from(&c.sock).set_linger(Some(Duration::ZERO));
        }
        // Closed at the start of a later turn, within a budget (see `teardown.rs`).
        self.bury(c.sock, graceful);
        self.pending.push(Event::Disconnected { conn: id, cause });
        self.check_shut_down();
    }
}
