//! Listeners: bind, accept within a budget, and back off on a timer when file descriptors
//! run out.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use mio::Interest;
use mio::net::TcpListener;

use super::expiry::Timeout;
use super::table::Entry;
use super::{ListenSocket, Reactor};
use crate::config::ConnConfig;
use crate::event::{Event, ListenerId, PeerAddr, StaleId};
use crate::lifecycle::Lifecycle;
use crate::wheel::TimerKey;

/// At most one log line per this long about connections turned away.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// Longest accept back-off while file descriptors stay exhausted.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(crate) struct Listener {
    pub(crate) id: ListenerId,
    sock: ListenSocket,
    cfg: ConnConfig,
    /// Current back-off after fd exhaustion; `None` while accepting normally.
    backoff: Option<Duration>,
    pub(crate) retry_timer: Option<TimerKey>,
    pub(crate) in_ready: bool,
}

impl Reactor {
    /// Listen on `addr`; every accepted connection gets `cfg`. Port 0 picks a free port:
    /// read it back with [`local_addr`](Reactor::local_addr). `SO_REUSEADDR` is set, and
    /// the backlog is [`ReactorConfig::listen_backlog`](crate::ReactorConfig).
    ///
    /// ```
    /// use heartloop::{ConnConfig, Reactor, ReactorConfig};
    /// # fn main() -> std::io::Result<()> {
    /// let mut reactor = Reactor::new(ReactorConfig::default())?;
    /// let id = reactor.listen("127.0.0.1:0".parse().unwrap(), ConnConfig::default())?;
    /// println!("listening on {}", reactor.local_addr(id)?);
    /// # Ok(())
    /// # }
    /// ```
    pub fn listen(&mut self, addr: SocketAddr, cfg: ConnConfig) -> io::Result<ListenerId> {
        let opts = ListenOptions::default().backlog(self.cfg.listen_backlog);
        self.listen_with(addr, opts, cfg)
    }

    /// [`listen`](Reactor::listen) with listener options, e.g. `SO_REUSEPORT` so that
    /// several reactors (one per core, on threads of their own) share one port and the
    /// kernel spreads the connections over them.
    ///
    /// ```
    /// use heartloop::{ConnConfig, ListenOptions, Reactor, ReactorConfig};
    /// # fn main() -> std::io::Result<()> {
    /// let opts = ListenOptions::default().reuse_port(true);
    /// let mut a = Reactor::new(ReactorConfig::default())?;
    /// let la = a.listen_with("127.0.0.1:0".parse().unwrap(), opts, ConnConfig::default())?;
    /// let port = a.local_addr(la)?;
    /// let mut b = Reactor::new(ReactorConfig::default())?;
    /// b.listen_with(port, opts, ConnConfig::default())?; // the same port
    /// # Ok(())
    /// # }
    /// ```
    pub fn listen_with(
        &mut self,
        addr: SocketAddr,
        opts: ListenOptions,
        cfg: ConnConfig,
    ) -> io::Result<ListenerId> {
        self.add_listener(ListenSocket::Tcp(bind_listener(addr, opts)?), cfg)
    }

    /// Listen on a socket made elsewhere (socket activation, a listener handed over by a
    /// restarting process, options heartloop does not set). It must be bound and
    /// listening; it is switched to non-blocking mode here.
    pub fn listen_std(
        &mut self,
        listener: std::net::TcpListener,
        cfg: ConnConfig,
    ) -> io::Result<ListenerId> {
        listener.set_nonblocking(true)?;
        self.add_listener(ListenSocket::Tcp(TcpListener::from_std(listener)), cfg)
    }

    /// Listen on a Unix domain socket at `path` (which must not exist yet; remove a stale
    /// one first). Accepted connections get `cfg`: the same events, causes, heartbeats and
    /// backpressure as TCP; TCP's socket options (`nodelay`, keepalive, `user_timeout`)
    /// do not apply.
    pub fn listen_unix(
        &mut self,
        path: impl AsRef<std::path::Path>,
        cfg: ConnConfig,
    ) -> io::Result<ListenerId> {
        self.refuse_if_shutting_down()?;
        let sock = mio::net::UnixListener::bind(path)?;
        self.add_listener(ListenSocket::Unix(sock), cfg)
    }

    /// The address a listener is bound to, TCP or Unix.
    pub fn listener_addr(&self, id: ListenerId) -> io::Result<PeerAddr> {
        match self.table.get(id) {
            Some(Entry::Listener(l)) => l.sock.local(),
            _ => Err(io::Error::new(io::ErrorKind::NotFound, "no such listener")),
        }
    }

    pub(super) fn add_listener(
        &mut self,
        mut sock: ListenSocket,
        cfg: ConnConfig,
    ) -> io::Result<ListenerId> {
        self.refuse_if_shutting_down()?;
        let registry = &self.registry;
        let key = self.table.insert(|key, token| {
            registry.register(&mut sock, token, Interest::READABLE)?;
            Ok(Entry::Listener(Box::new(Listener {
                id: ListenerId {
                    gen_: key.serial,
                    index: key.index,
                },
                sock,
                cfg,
                backoff: None,
                retry_timer: None,
                in_ready: false,
            })))
        })?;
        Ok(ListenerId {
            gen_: key.serial,
            index: key.index,
        })
    }

    /// The address a listener is bound to.
    pub fn local_addr(&self, id: ListenerId) -> io::Result<SocketAddr> {
        match self.table.get(id) {
            Some(Entry::Listener(l)) => l.sock.local().and_then(|a| {
                a.tcp()
                    .ok_or_else(|| io::Error::other("a Unix listener: see local_peer_addr"))
            }),
            _ => Err(io::Error::new(io::ErrorKind::NotFound, "no such listener")),
        }
    }

    /// Stop listening. Connections it accepted are not affected. `Err(StaleId)` if the
    /// listener was already closed.
    pub fn unlisten(&mut self, id: ListenerId) -> Result<(), StaleId> {
        let Some(l) = self.table.listener_mut(id) else {
            return Err(StaleId);
        };
        let _ = self.registry.deregister(&mut l.sock);
        if let Some(t) = l.retry_timer.take() {
            self.wheel.cancel(t);
        }
        self.table.remove(id);
        Ok(())
    }

    /// A connect storm at `max_connections` logs one line a second, not one per peer.
    fn log_turned_away(&mut self, peer: PeerAddr) {
        let now = self.now;
        let log = &mut self.turned_away_log;
        log.1 += 1;
        if log
            .0
            .is_none_or(|at| now.saturating_duration_since(at) >= LOG_EVERY)
        {
            log::warn!(
                "{} connection(s) turned away at max_connections since the last report (latest {peer})",
                log.1
            );
            *log = (Some(now), 0);
        }
    }

    pub(super) fn accept_ready(&mut self, lid: ListenerId) {
        for _ in 0..self.cfg.accept_budget {
            let Some(l) = self.table.listener_mut(lid) else {
                return;
            };
            if l.retry_timer.is_some() {
                return; // backing off: the retry timer will come back
            }
            match l.sock.accept() {
                Ok((sock, peer)) => {
                    l.backoff = None;
                    let cfg = l.cfg;
                    if self.open_connections() >= self.cfg.max_connections {
                        // Defined outcome at the limit: the peer sees a reset at once
                        // instead of hanging in the backlog.
                        let _ = socket2::SockRef::from(&sock).set_linger(Some(Duration::ZERO));
                        drop(sock);
                        self.stats.rejected += 1;
                        self.log_turned_away(peer);
                        continue;
                    }
                    match self.add_conn(sock, cfg, Lifecycle::accepted(cfg.half_close)) {
                        Ok(conn) => {
                            self.stats.accepted += 1;
                            if let Some(c) = self.table.conn_mut(conn) {
                                c.peer = Some(peer.clone());
                            }
                            self.pending.push(Event::Accepted {
                                listener: lid,
                                conn,
                                peer,
                            });
                            self.start_heartbeat(conn);
                        }
                        Err(e) => log::warn!("accepted {peer} but could not register it: {e}"),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if e.kind() == io::ErrorKind::Interrupted
                        || e.kind() == io::ErrorKind::ConnectionAborted =>
                {
                    continue;
                }
                Err(e) => {
                    // EMFILE/ENFILE/ENOBUFS/ENOMEM (or anything unexpected): the pending
                    // connection stays in the backlog. Retrying at once would spin, so back
                    // off on a timer, doubling while it keeps failing. Unlike libuv's reserve
                    // fd, nobody is accepted-and-dropped: clients wait and are served once
                    // descriptors are free again.
                    let d = l
                        .backoff
                        .map_or(self.cfg.accept_backoff, |d| d.saturating_mul(2))
                        .clamp(Duration::from_millis(1), MAX_ACCEPT_BACKOFF); // never zero: it would spin
                    l.backoff = Some(d);
                    self.stats.accept_backoffs += 1;
                    log::warn!("accept failed ({e}); retrying in {d:?}");
                    let key = self.wheel.insert(self.now + d, Timeout::AcceptRetry(lid));
                    if let Some(l) = self.table.listener_mut(lid) {
                        l.retry_timer = Some(key);
                    }
                    return;
                }
            }
        }
        // Budget used up: come back next turn, after the others had their share.
        if let Some(l) = self.table.listener_mut(lid)
            && !l.in_ready
        {
            l.in_ready = true;
            self.ready.push_back(lid.into());
        }
    }
}

/// Options of a listening socket ([`Reactor::listen_with`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListenOptions {
    /// The listen backlog: connections the kernel completes before we accept them.
    /// Default 4096 (mio's own `bind` uses 1024; a connect storm of thousands needs more).
    pub backlog: u32,
    /// `SO_REUSEPORT`: several sockets (reactors, processes) bind the same address and
    /// the kernel spreads incoming connections over them. Default `false`. Linux and BSDs.
    pub reuse_port: bool,
}

impl Default for ListenOptions {
    fn default() -> Self {
        ListenOptions {
            backlog: 4096,
            reuse_port: false,
        }
    }
}

impl ListenOptions {
    /// Set the listen backlog.
    #[must_use]
    pub fn backlog(mut self, n: u32) -> Self {
        self.backlog = n;
        self
    }

    /// Set `SO_REUSEPORT`.
    #[must_use]
    pub fn reuse_port(mut self, on: bool) -> Self {
        self.reuse_port = on;
        self
    }
}

/// Bind a non-blocking listener with `SO_REUSEADDR` and the options.
fn bind_listener(addr: SocketAddr, opts: ListenOptions) -> io::Result<TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    if opts.reuse_port {
        #[cfg(all(unix, not(any(target_os = "solaris", target_os = "illumos"))))]
        sock.set_reuse_port(true)?;
        #[cfg(not(all(unix, not(any(target_os = "solaris", target_os = "illumos")))))]
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "SO_REUSEPORT is not available on this platform",
        ));
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(opts.backlog.min(i32::MAX as u32) as i32)?;
    Ok(TcpListener::from_std(sock.into()))
}
