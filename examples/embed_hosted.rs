//! `cargo run --example embed_hosted -- [--addr 127.0.0.1:7003] [--duration 10s]`
//!
//! heartloop hosted in a program that already owns a `mio::Poll`: the host has sockets of
//! its own (here a UDP socket that answers every datagram with "ack") and gives the reactor
//! its `Registry` and a token range. Each turn the host polls, hands the events in the
//! reactor's range to [`handle_event`](heartloop::Reactor::handle_event), handles its own,
//! and calls [`turn`](heartloop::Reactor::turn) once.
//!
//! Try it: `nc 127.0.0.1 7003` (TCP echo through heartloop) and
//! `nc -u 127.0.0.1 7003` (the host's own UDP socket).

use std::time::{Duration, Instant};

use heartloop::{ConnConfig, Event, Reactor, ReactorConfig};
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};

const HOST_UDP: Token = Token(0);
/// The reactor uses tokens from here on (`heartloop::TOKEN_SPAN` of them).
const REACTOR_BASE: Token = Token(1 << 40);

#[path = "common/embed_opts.rs"]
mod embed_opts;
#[path = "common/logger.rs"]
mod logger;
#[path = "common/opts.rs"]
mod opts;

const HELP: &str = "\
embed_hosted: heartloop hosted in a host's own mio::Poll: a TCP echo through heartloop
and the host's own UDP socket answering every datagram with \"ack\", on one address

usage: embed_hosted [--addr HOST:PORT] [--duration DUR]

options:
  --addr HOST:PORT   where to listen (default 127.0.0.1:7003)
  --duration DUR     how long to run, e.g. 30s or 2m (default 10s)
  -h, --help         print this help
";

fn main() -> std::io::Result<()> {
    let (addr, duration) =
        embed_opts::parse(HELP, 7003).unwrap_or_else(|e| opts::exit_usage("embed_hosted", e));
    logger::init("info");

    // The host's own poll and sockets.
    let mut poll = Poll::new()?;
    let mut udp = UdpSocket::bind(addr)?;
    poll.registry()
        .register(&mut udp, HOST_UDP, Interest::READABLE)?;

    // The reactor lives in the host's poll.
    let mut reactor = Reactor::hosted(poll.registry(), REACTOR_BASE, ReactorConfig::default())?;
    let l = reactor.listen(addr, ConnConfig::default())?;
    log::info!("hosted: tcp echo and udp ack on {}", reactor.local_addr(l)?);

    let start = Instant::now();
    let mut mio_events = Events::with_capacity(1024);
    let mut events = Vec::new();
    let mut buf = [0u8; 1500];
    while start.elapsed() < duration {
        // Sleep no longer than the reactor allows (its timers and heartbeats).
        let timeout = reactor
            .next_timeout()
            .map_or(Duration::from_millis(500), |t| {
                t.min(Duration::from_millis(500))
            });
        poll.poll(&mut mio_events, Some(timeout))?;
        for ev in mio_events.iter() {
            if reactor.owns(ev.token()) {
                reactor.handle_event(ev);
            } else if ev.token() == HOST_UDP {
                while let Ok((n, from)) = udp.recv_from(&mut buf) {
                    log::info!("udp {n} bytes from {from}");
                    let _ = udp.send_to(b"ack\n", from);
                }
            }
        }
        reactor.turn(&mut events);
        for ev in events.drain(..) {
            match ev {
                Event::Data { conn, bytes } => {
                    let _ = reactor.send(conn, bytes);
                }
                Event::Accepted { conn, peer, .. } => log::info!("{conn} from {peer}"),
                Event::Disconnected { conn, cause } => log::info!("{conn} gone: {cause}"),
                _ => {}
            }
        }
    }
    Ok(())
}
