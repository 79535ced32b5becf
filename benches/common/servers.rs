//! The servers the benches compare, each on a thread of its own, listening on
//! `127.0.0.1:0`. They live until the process exits (an idle server costs nothing), so
//! the rounds of a bench reuse them.
//!
//! Echo, four ways:
//! * heartloop: the logic of `examples/echo.rs` (Raw framing, half-close mode, backpressure
//!   by pausing reads at the high watermark);
//! * hand-written mio: the floor for readiness loops, written as well as we can
//!   (edge-triggered, registered once for both directions, read until drained, write
//!   directly and buffer only the remainder, one shared read buffer);
//! * blocking `std::net`: a thread per connection;
//! * tokio `current_thread`: one runtime on one thread, a task per connection,
//!   `read`/`write_all` with a buffer reused for the connection's life.
//!
//! Fan-out (one publisher connection, fixed-size messages forwarded to every subscriber),
//! two ways: heartloop, and tokio `current_thread` with a `broadcast` channel and a task
//! per subscriber.
#![allow(dead_code)]

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;

use bytes::{Bytes, BytesMut};
use heartloop::{ConnConfig, ConnId, Event, Reactor, ReactorConfig};

/// Read buffer size of every echo server (heartloop's shared read buffer is 64 KiB too).
const BUF: usize = 64 * 1024;

/// Which echo server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// heartloop, the logic of `examples/echo.rs`.
    Heartloop,
    /// Hand-written mio loop (the floor).
    Mio,
    /// Blocking std, thread per connection.
    Std,
    /// tokio current_thread, task per connection.
    Tokio,
    /// Fan-out only: tokio current_thread with broadcast, each subscriber task writing
    /// every message with its own `write_all` (the plain way to write it).
    TokioPerMessage,
}

impl Kind {
    /// All four, in the order of the tables.
    pub const ALL: [Kind; 4] = [Kind::Heartloop, Kind::Mio, Kind::Tokio, Kind::Std];

    /// Short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Heartloop => "heartloop",
            Kind::Mio => "mio (hand-written)",
            Kind::Std => "std thread/conn",
            Kind::Tokio => "tokio current_thread",
            Kind::TokioPerMessage => "tokio, write per message",
        }
    }

    /// Name for CSV files.
    pub fn key(self) -> &'static str {
        match self {
            Kind::Heartloop => "heartloop",
            Kind::Mio => "mio",
            Kind::Std => "std",
            Kind::Tokio => "tokio",
            Kind::TokioPerMessage => "tokio-per-msg",
        }
    }
}

/// Start an echo server of `kind` on its own thread, pinned to `cpu` if given (threads
/// it spawns inherit the pinning); returns its address.
pub fn start_echo(kind: Kind, cpu: Option<usize>) -> SocketAddr {
    let (tx, rx) = mpsc::channel();
    let name = format!("echo-{}", kind.key());
    thread::Builder::new()
        .name(name)
        .spawn(move || match kind {
            _ if cpu.is_some_and(|c| !super::pin::pin_thread(c)) => {
                panic!("could not pin to CPU {cpu:?}")
            }
            Kind::Heartloop => heartloop_echo(tx),
            Kind::Mio => mio_echo(tx),
            Kind::Std => std_echo(tx),
            Kind::Tokio => tokio_echo(tx),
            Kind::TokioPerMessage => panic!("no echo server for {kind:?}"),
        })
        .expect("spawn server thread");
    rx.recv().expect("server failed to start")
}

fn local() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

// ---------------------------------------------------------------------------- heartloop

fn heartloop_echo(ready: mpsc::Sender<SocketAddr>) {
    // As examples/echo.rs: half-close mode, echo the same `Bytes`, pause reading from a
    // client whose queue crossed the high watermark until it drained.
    let cfg = ConnConfig::default().half_close(true);
    let mut reactor = Reactor::new(ReactorConfig::default()).expect("reactor");
    let listener = reactor.listen(local(), cfg).expect("listen");
    ready.send(reactor.local_addr(listener).unwrap()).unwrap();
    let mut events = Vec::with_capacity(1024);
    loop {
        reactor.poll(&mut events, None).expect("poll");
        for ev in events.drain(..) {
            match ev {
                Event::Data { conn, bytes } => {
                    let _ = reactor.send(conn, bytes);
                }
                Event::WriteBlocked { conn, .. } => {
                    let _ = reactor.pause_reading(conn);
                }
                Event::Writable { conn } => {
                    let _ = reactor.resume_reading(conn);
                }
                Event::PeerHalfClosed { conn } => {
                    let _ = reactor.close(conn);
                }
                _ => {}
            }
        }
    }
}

// ---------------------------------------------------------------------------- mio floor

struct MioConn {
    sock: mio::net::TcpStream,
    /// Bytes read but not yet taken by the kernel; empty in the common case.
    pending: Vec<u8>,
}

fn mio_echo(ready: mpsc::Sender<SocketAddr>) {
    use mio::{Events, Interest, Poll, Token};
    const LISTENER: Token = Token(usize::MAX);

    let mut poll = Poll::new().expect("poll");
    let mut listener = mio::net::TcpListener::bind(local()).expect("bind");
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .unwrap();
    ready.send(listener.local_addr().unwrap()).unwrap();
    let mut conns: slab::Slab<MioConn> = slab::Slab::new();
    let mut buf = vec![0u8; BUF];
    let mut events = Events::with_capacity(1024);
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            assert_eq!(e.kind(), io::ErrorKind::Interrupted, "poll: {e}");
            continue;
        }
        for ev in events.iter() {
            if ev.token() == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((mut sock, _)) => {
                            let _ = sock.set_nodelay(true);
                            let entry = conns.vacant_entry();
                            // Registered once for both directions; edge-triggered.
                            poll.registry()
                                .register(
                                    &mut sock,
                                    Token(entry.key()),
                                    Interest::READABLE | Interest::WRITABLE,
                                )
                                .unwrap();
                            entry.insert(MioConn {
                                sock,
                                pending: Vec::new(),
                            });
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => break,
                    }
                }
                continue;
            }
            let key = ev.token().0;
            let Some(c) = conns.get_mut(key) else {
                continue;
            };
            let mut alive = true;
            let mut can_read = ev.is_readable() || ev.is_read_closed() || ev.is_error();
            if ev.is_writable() && !c.pending.is_empty() {
                alive = flush_pending(c);
                // Reading was held back while bytes were pending; catch up now, since no
                // new edge comes for bytes already waiting.
                can_read = alive && c.pending.is_empty();
            }
            if alive && can_read {
                alive = mio_pump(c, &mut buf);
            }
            if !alive {
                conns.remove(key); // dropping closes the fd and leaves epoll
            }
        }
    }
}

/// Write what is pending; `false` if the connection is dead.
fn flush_pending(c: &mut MioConn) -> bool {
    let mut off = 0;
    while off < c.pending.len() {
        match c.sock.write(&c.pending[off..]) {
            Ok(n) => off += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    c.pending.drain(..off);
    true
}

/// Read until drained (or until the peer stops taking our writes) and echo directly;
/// `false` if the connection is dead.
fn mio_pump(c: &mut MioConn, buf: &mut [u8]) -> bool {
    while c.pending.is_empty() {
        match c.sock.read(buf) {
            Ok(0) => return false,
            Ok(n) => {
                let mut off = 0;
                while off < n {
                    match c.sock.write(&buf[off..n]) {
                        Ok(k) => off += k,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => return false,
                    }
                }
                if off < n {
                    // Keep only the remainder; read more once it is written.
                    c.pending.extend_from_slice(&buf[off..n]);
                    return true;
                }
                if n < buf.len() {
                    // A short read drained the socket; new bytes bring a new edge.
                    return true;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

// ---------------------------------------------------------------------------- std

fn std_echo(ready: mpsc::Sender<SocketAddr>) {
    let listener = std::net::TcpListener::bind(local()).expect("bind");
    ready.send(listener.local_addr().unwrap()).unwrap();
    for sock in listener.incoming() {
        let Ok(mut sock) = sock else { continue };
        let _ = sock.set_nodelay(true);
        thread::spawn(move || {
            let mut buf = vec![0u8; BUF];
            loop {
                match sock.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if sock.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
}

// ---------------------------------------------------------------------------- tokio

fn tokio_echo(ready: mpsc::Sender<SocketAddr>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(local()).await.expect("bind");
        ready.send(listener.local_addr().unwrap()).unwrap();
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                continue;
            };
            let _ = sock.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = vec![0u8; BUF];
                loop {
                    let n = match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if sock.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
}

// ---------------------------------------------------------------------------- fan-out

/// Byte a subscriber receives once the server has registered it.
pub const HELLO: u8 = b'H';

/// Messages a tokio subscriber found lagged (must stay 0: the client's window keeps the
/// publisher within the broadcast capacity).
pub static TOKIO_LAGGED: AtomicU64 = AtomicU64::new(0);

/// Addresses of a fan-out server.
#[derive(Debug, Clone, Copy)]
pub struct FanoutAddrs {
    /// Where the one publisher connects.
    pub publisher: SocketAddr,
    /// Where subscribers connect.
    pub subscribers: SocketAddr,
}

/// Start a fan-out server (`Kind::Heartloop` or `Kind::Tokio`) forwarding every `msg`-byte
/// message read from the publisher to every subscriber; pinned to `cpu` if given.
pub fn start_fanout(kind: Kind, msg: usize, cpu: Option<usize>) -> FanoutAddrs {
    let (tx, rx) = mpsc::channel();
    thread::Builder::new()
        .name(format!("fanout-{}", kind.key()))
        .spawn(move || match kind {
            _ if cpu.is_some_and(|c| !super::pin::pin_thread(c)) => {
                panic!("could not pin to CPU {cpu:?}")
            }
            Kind::Heartloop => heartloop_fanout(tx, msg),
            Kind::Tokio => tokio_fanout(tx, msg, true),
            Kind::TokioPerMessage => tokio_fanout(tx, msg, false),
            other => panic!("no fan-out server for {other:?}"),
        })
        .expect("spawn server thread");
    rx.recv().expect("server failed to start")
}

fn heartloop_fanout(ready: mpsc::Sender<FanoutAddrs>, msg: usize) {
    let mut reactor = Reactor::new(ReactorConfig::default()).expect("reactor");
    let pub_l = reactor
        .listen(local(), ConnConfig::default())
        .expect("listen");
    let sub_l = reactor
        .listen(local(), ConnConfig::default())
        .expect("listen");
    ready
        .send(FanoutAddrs {
            publisher: reactor.local_addr(pub_l).unwrap(),
            subscribers: reactor.local_addr(sub_l).unwrap(),
        })
        .unwrap();
    let hello = Bytes::from_static(&[HELLO]);
    let mut subs: Vec<ConnId> = Vec::new();
    let mut publishers: HashSet<ConnId> = HashSet::new();
    let mut blocked: HashSet<ConnId> = HashSet::new();
    // Bytes of a message split across two reads.
    let mut carry = BytesMut::new();
    let mut batch: Vec<Bytes> = Vec::new();
    let mut events = Vec::with_capacity(1024);
    loop {
        reactor.poll(&mut events, None).expect("poll");
        for ev in events.drain(..) {
            match ev {
                Event::Accepted { listener, conn, .. } if listener == sub_l => {
                    subs.push(conn);
                    let _ = reactor.send(conn, hello.clone());
                }
                Event::Accepted { conn, .. } => {
                    publishers.insert(conn);
                    carry.clear();
                }
                Event::Data { conn, mut bytes } if publishers.contains(&conn) => {
                    // Cut the stream into messages (slices of the read buffer, no copy)...
                    if !carry.is_empty() {
                        let take = (msg - carry.len()).min(bytes.len());
                        carry.extend_from_slice(&bytes.split_to(take));
                        if carry.len() == msg {
                            batch.push(carry.split().freeze());
                        }
                    }
                    while bytes.len() >= msg {
                        batch.push(bytes.split_to(msg));
                    }
                    carry.extend_from_slice(&bytes);
                    // ...and queue them for every subscriber (a reference count each),
                    // one subscriber at a time: its queue stays in the cache.
                    for &s in &subs {
                        for m in &batch {
                            let _ = reactor.send(s, m.clone());
                        }
                    }
                    batch.clear();
                }
                // A subscriber does not keep up: stop reading from the publisher.
                Event::WriteBlocked { conn, .. } => {
                    blocked.insert(conn);
                    for &p in &publishers {
                        let _ = reactor.pause_reading(p);
                    }
                }
                Event::Writable { conn } => {
                    blocked.remove(&conn);
                    if blocked.is_empty() {
                        for &p in &publishers {
                            let _ = reactor.resume_reading(p);
                        }
                    }
                }
                Event::Disconnected { conn, .. } if !publishers.remove(&conn) => {
                    subs.retain(|&s| s != conn);
                    if blocked.remove(&conn) && blocked.is_empty() {
                        for &p in &publishers {
                            let _ = reactor.resume_reading(p);
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

/// `batch`: a subscriber task that wakes up writes every message waiting for it with one
/// `write_all` (drained with `try_recv`); otherwise one `write_all` per message.
fn tokio_fanout(ready: mpsc::Sender<FanoutAddrs>, msg: usize, batch: bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let pub_l = tokio::net::TcpListener::bind(local()).await.expect("bind");
        let sub_l = tokio::net::TcpListener::bind(local()).await.expect("bind");
        ready
            .send(FanoutAddrs {
                publisher: pub_l.local_addr().unwrap(),
                subscribers: sub_l.local_addr().unwrap(),
            })
            .unwrap();
        let (tx, _) = broadcast::channel::<Bytes>(16 * 1024);

        let sub_tx = tx.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = sub_l.accept().await else {
                    continue;
                };
                let _ = sock.set_nodelay(true);
                let mut rx = sub_tx.subscribe();
                tokio::spawn(async move {
                    if sock.write_all(&[HELLO]).await.is_err() {
                        return;
                    }
                    let (mut rd, mut wr) = sock.split();
                    let mut out: Vec<u8> = Vec::with_capacity(BUF);
                    let mut probe = [0u8; 1];
                    loop {
                        tokio::select! {
                            biased;
                            r = rx.recv() => {
                                match r {
                                    Ok(m) => out.extend_from_slice(&m),
                                    Err(RecvError::Lagged(n)) => {
                                        TOKIO_LAGGED.fetch_add(n, Ordering::Relaxed);
                                        continue;
                                    }
                                    Err(RecvError::Closed) => return,
                                }
                                // Batch what else is ready into the same write.
                                while batch && out.len() < BUF {
                                    match rx.try_recv() {
                                        Ok(m) => out.extend_from_slice(&m),
                                        Err(TryRecvError::Lagged(n)) => {
                                            TOKIO_LAGGED.fetch_add(n, Ordering::Relaxed);
                                        }
                                        Err(_) => break,
                                    }
                                }
                                if wr.write_all(&out).await.is_err() {
                                    return;
                                }
                                out.clear();
                            }
                            // Subscribers send nothing: readable means gone.
                            r = rd.read(&mut probe) => {
                                if matches!(r, Ok(0) | Err(_)) {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });

        loop {
            let Ok((mut sock, _)) = pub_l.accept().await else {
                continue;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = BytesMut::with_capacity(BUF);
                loop {
                    if buf.capacity() - buf.len() < msg {
                        buf.reserve(BUF);
                    }
                    match sock.read_buf(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    while buf.len() >= msg {
                        let _ = tx.send(buf.split_to(msg).freeze());
                    }
                }
            });
        }
    });
}
