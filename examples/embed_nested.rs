//! `cargo run --example embed_nested -- [--addr 127.0.0.1:7002] [--duration 10s]`
//!
//! heartloop nested in a foreign loop: here a host loop on plain poll(2) (through rustix)
//! that also "renders a frame" at 60 Hz, as a game or GUI loop would. The reactor's poll
//! fd sits among the host's fds; the host sleeps at most until its next frame or the
//! reactor's [`next_timeout`](heartloop::Reactor::next_timeout), whichever is sooner, and
//! runs a non-blocking reactor turn whenever the fd is readable or the timeout passed.
//!
//! Try it: `nc 127.0.0.1 7002`, type lines: they are echoed. Heartbeats (Raw framing) ask
//! for a ping every 2 s; a client silent for 6 s is dropped with its cause.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use heartloop::{ConnConfig, Event, Heartbeat, Reactor, ReactorConfig};
use rustix::event::{PollFd, PollFlags, Timespec};

#[path = "common/embed_opts.rs"]
mod embed_opts;
#[path = "common/logger.rs"]
mod logger;
#[path = "common/opts.rs"]
mod opts;

const HELP: &str = "\
embed_nested: heartloop nested in a 60 Hz poll(2) host loop: a TCP echo with heartbeats
(a client silent for 6 s is dropped with its cause)

usage: embed_nested [--addr HOST:PORT] [--duration DUR]

options:
  --addr HOST:PORT   where to listen (default 127.0.0.1:7002)
  --duration DUR     how long to run, e.g. 30s or 2m (default 10s)
  -h, --help         print this help
";

fn main() -> std::io::Result<()> {
    let (addr, duration) =
        embed_opts::parse(HELP, 7002).unwrap_or_else(|e| opts::exit_usage("embed_nested", e));
    logger::init("info");
    let hb = Heartbeat::new(Duration::from_secs(2), Duration::from_secs(6));
    let mut reactor = Reactor::new(ReactorConfig::default())?;
    let l = reactor.listen(addr, ConnConfig::default().heartbeat(hb))?;
    log::info!("nested echo on {} for {duration:?}", reactor.local_addr(l)?);

    let frame = Duration::from_micros(16_667); // 60 Hz
    let start = Instant::now();
    let mut next_frame = start + frame;
    let mut frames = 0u64;
    let mut events = Vec::new();
    while start.elapsed() < duration {
        // The host's sleep: until its next frame, or until the reactor has work due.
        let now = Instant::now();
        let mut sleep = next_frame.saturating_duration_since(now);
        if let Some(t) = reactor.next_timeout() {
            sleep = sleep.min(t);
        }
        let ts = Timespec {
            tv_sec: sleep.as_secs() as _,
            tv_nsec: sleep.subsec_nanos() as _,
        };
        let mut fds = [PollFd::from_borrowed_fd(reactor.as_fd(), PollFlags::IN)];
        rustix::event::poll(&mut fds, Some(&ts))?;

        // A non-blocking reactor turn: cheap when nothing is ready.
        reactor.poll(&mut events, Some(Duration::ZERO))?;
        for ev in events.drain(..) {
            match ev {
                Event::Data { conn, bytes } => {
                    let _ = reactor.send(conn, bytes);
                }
                Event::HeartbeatDue { conn } => {
                    let _ = reactor.send(conn, bytes::Bytes::from_static(b"PING\n"));
                }
                Event::Accepted { conn, peer, .. } => log::info!("{conn} from {peer}"),
                Event::Disconnected { conn, cause } => log::info!("{conn} gone: {cause}"),
                _ => {}
            }
        }

        if Instant::now() >= next_frame {
            frames += 1; // "render"
            next_frame += frame;
        }
    }
    let s = reactor.stats();
    log::info!(
        "{frames} frames, {} reactor turns, {} accepted",
        s.turns,
        s.accepted
    );
    Ok(())
}
