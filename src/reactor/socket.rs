//! The sockets a reactor drives: TCP or Unix domain, streams and listeners, behind one
//! type each so that the read, write, error and close paths are the same for both.

use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, BorrowedFd};

use mio::event::Source;
use mio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use mio::{Interest, Registry, Token};

use super::Reactor;
use crate::config::ConnConfig;
use crate::event::{ConnId, PeerAddr};
use crate::lifecycle::Lifecycle;

/// A connected (or connecting) stream socket.
#[derive(Debug)]
pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    pub(crate) fn take_error(&self) -> io::Result<Option<io::Error>> {
        match self {
            Stream::Tcp(s) => s.take_error(),
            Stream::Unix(s) => s.take_error(),
        }
    }

    pub(crate) fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.shutdown(how),
            Stream::Unix(s) => s.shutdown(how),
        }
    }

    /// The peer's address; `NotConnected` while a connect is in progress.
    pub(crate) fn peer(&self) -> io::Result<PeerAddr> {
        match self {
            Stream::Tcp(s) => s.peer_addr().map(PeerAddr::Tcp),
            Stream::Unix(s) => s
                .peer_addr()
                .map(|a| PeerAddr::Unix(a.as_pathname().map(Into::into))),
        }
    }

    pub(crate) fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Stream::Tcp(s) => Some(s),
            Stream::Unix(_) => None,
        }
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write_vectored(bufs),
            Stream::Unix(s) => s.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Source for Stream {
    fn register(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.register(r, t, i),
            Stream::Unix(s) => s.register(r, t, i),
        }
    }

    fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.reregister(r, t, i),
            Stream::Unix(s) => s.reregister(r, t, i),
        }
    }

    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.deregister(r),
            Stream::Unix(s) => s.deregister(r),
        }
    }
}

/// A listening socket.
#[derive(Debug)]
pub(crate) enum ListenSocket {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl ListenSocket {
    pub(crate) fn accept(&self) -> io::Result<(Stream, PeerAddr)> {
        match self {
            ListenSocket::Tcp(l) => l.accept().map(|(s, a)| (Stream::Tcp(s), PeerAddr::Tcp(a))),
            ListenSocket::Unix(l) => l.accept().map(|(s, a)| {
                (
                    Stream::Unix(s),
                    PeerAddr::Unix(a.as_pathname().map(Into::into)),
                )
            }),
        }
    }

    pub(crate) fn local(&self) -> io::Result<PeerAddr> {
        match self {
            ListenSocket::Tcp(l) => l.local_addr().map(PeerAddr::Tcp),
            ListenSocket::Unix(l) => l
                .local_addr()
                .map(|a| PeerAddr::Unix(a.as_pathname().map(Into::into))),
        }
    }
}

impl Source for ListenSocket {
    fn register(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            ListenSocket::Tcp(l) => l.register(r, t, i),
            ListenSocket::Unix(l) => l.register(r, t, i),
        }
    }

    fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            ListenSocket::Tcp(l) => l.reregister(r, t, i),
            ListenSocket::Unix(l) => l.reregister(r, t, i),
        }
    }

    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        match self {
            ListenSocket::Tcp(l) => l.deregister(r),
            ListenSocket::Unix(l) => l.deregister(r),
        }
    }
}

/// Sockets made elsewhere, and Unix domain connects.
impl Reactor {
    /// Take over a connected stream made elsewhere (accepted by another loop or thread,
    /// handed over by a restarting process, connected with options heartloop does not
    /// set). It is switched to non-blocking mode and gets `cfg` (socket options,
    /// heartbeat, limits) as if it had just been accepted; no `Accepted` event is emitted.
    ///
    /// ```
    /// use heartloop::{ConnConfig, Reactor, ReactorConfig};
    /// # fn main() -> std::io::Result<()> {
    /// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// let client = std::net::TcpStream::connect(listener.local_addr()?)?;
    /// let (server_side, _) = listener.accept()?;
    /// let mut reactor = Reactor::new(ReactorConfig::default())?;
    /// let conn = reactor.adopt(server_side, ConnConfig::default())?;
    /// assert!(reactor.is_open(conn));
    /// # drop(client);
    /// # Ok(())
    /// # }
    /// ```
    pub fn adopt(&mut self, stream: std::net::TcpStream, cfg: ConnConfig) -> io::Result<ConnId> {
        self.refuse_if_shutting_down()?;
        stream.set_nonblocking(true)?;
        let peer = stream.peer_addr()?;
        let id = self.add_conn(
            Stream::Tcp(TcpStream::from_std(stream)),
            cfg,
            Lifecycle::accepted(cfg.half_close),
        )?;
        if let Some(c) = self.table.conn_mut(id) {
            c.peer = Some(peer.into());
        }
        self.start_heartbeat(id);
        Ok(id)
    }

    /// Connect to a Unix domain socket at `path`; the result arrives as for
    /// [`connect`](Reactor::connect) (`Connected`, or `Disconnected` with a cause).
    pub fn connect_unix(
        &mut self,
        path: impl AsRef<std::path::Path>,
        cfg: ConnConfig,
    ) -> io::Result<ConnId> {
        self.refuse_if_shutting_down()?;
        let sock = Stream::Unix(mio::net::UnixStream::connect(path)?);
        self.start_connect(sock, cfg)
    }

    /// [`adopt`](Reactor::adopt) for a connected Unix domain stream.
    pub fn adopt_unix(
        &mut self,
        stream: std::os::unix::net::UnixStream,
        cfg: ConnConfig,
    ) -> io::Result<ConnId> {
        self.refuse_if_shutting_down()?;
        stream.set_nonblocking(true)?;
        let sock = Stream::Unix(mio::net::UnixStream::from_std(stream));
        let peer = sock.peer()?;
        let id = self.add_conn(sock, cfg, Lifecycle::accepted(cfg.half_close))?;
        if let Some(c) = self.table.conn_mut(id) {
            c.peer = Some(peer);
        }
        self.start_heartbeat(id);
        Ok(id)
    }
}

/// TCP's socket options from the connection's settings (none apply to Unix sockets).
pub(super) fn apply_socket_options(sock: &Stream, cfg: &ConnConfig) {
    let Some(tcp) = sock.tcp() else {
        return; // the options below are TCP's
    };
    let s = socket2::SockRef::from(tcp);
    let apply = |what: &str, r: io::Result<()>| {
        if let Err(e) = r {
            log::debug!("setting {what}: {e}");
        }
    };
    apply("TCP_NODELAY", s.set_tcp_nodelay(cfg.nodelay));
    if let Some(k) = cfg.keepalive {
        let ka = socket2::TcpKeepalive::new()
            .with_time(k.idle)
            .with_interval(k.interval)
            .with_retries(k.count);
        apply("SO_KEEPALIVE", s.set_tcp_keepalive(&ka));
    }
    if let Some(t) = cfg.user_timeout {
        #[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
        apply("TCP_USER_TIMEOUT", s.set_tcp_user_timeout(Some(t)));
        #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "fuchsia")))]
        log::debug!("TCP_USER_TIMEOUT ({t:?}) is not available on this platform: not set");
    }
    if let Some(n) = cfg.send_buffer {
        apply("SO_SNDBUF", s.set_send_buffer_size(n));
    }
    if let Some(n) = cfg.recv_buffer {
        apply("SO_RCVBUF", s.set_recv_buffer_size(n));
    }
}
