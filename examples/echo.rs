//! `cargo run --release --example echo -- --addr 127.0.0.1:7000`
//!
//! An echo server for any byte stream and any number of connections (Raw framing). It logs
//! every connect and disconnect with its cause (`RUST_LOG=debug` for more), and it
//! propagates backpressure: when a client stops reading, its queue crosses the high
//! watermark and the server stops reading *from that client* until the queue drains, so a
//! client that sends without reading cannot grow the server's memory.
//!
//! Options: `--addr HOST:PORT` (default 127.0.0.1:7000), `--heartbeat-ms N` (send
//! `HeartbeatDue`-driven nothing: Raw echo has no ping of its own, so this only detects
//! silent peers after 3 × N ms), `--stats-secs N` (print counters every N s; 0 = never).

use std::time::Duration;

use heartloop::{ConnConfig, Event, Heartbeat, Reactor, ReactorConfig};

fn main() -> std::io::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let mut addr = "127.0.0.1:7000".to_string();
    let mut heartbeat_ms = 0u64;
    let mut stats_secs = 0u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage(&a));
        match a.as_str() {
            "--addr" => addr = val(),
            "--heartbeat-ms" => {
                heartbeat_ms = val().parse().unwrap_or_else(|_| usage("--heartbeat-ms"))
            }
            "--stats-secs" => stats_secs = val().parse().unwrap_or_else(|_| usage("--stats-secs")),
            _ => usage(&a),
        }
    }
    let addr = addr.parse().unwrap_or_else(|_| usage("--addr"));

    // Half-close mode: a client that sends, shuts down its writing side and then reads
    // (`nc -N`, `curl --data-binary`) gets all of its echo before we close.
    let mut cfg = ConnConfig::default().half_close(true);
    if heartbeat_ms > 0 {
        let hb = Duration::from_millis(heartbeat_ms);
        cfg = cfg.heartbeat(Heartbeat::new(hb, hb * 3));
    }
    let mut reactor = Reactor::new(ReactorConfig::default())?;
    let listener = reactor.listen(addr, cfg)?;
    log::info!("echo listening on {}", reactor.local_addr(listener)?);
    if stats_secs > 0 {
        reactor.set_timer(Duration::from_secs(stats_secs), 0);
    }

    let mut events = Vec::with_capacity(1024);
    loop {
        reactor.poll(&mut events, None)?;
        for ev in events.drain(..) {
            match ev {
                Event::Accepted { conn, peer, .. } => log::info!("{conn} connected from {peer}"),
                // Echo the bytes back: the same `Bytes`, no copy.
                Event::Data { conn, bytes } => {
                    if let Err(e) = reactor.send(conn, bytes) {
                        log::warn!("{conn}: {e}");
                    }
                }
                // The client does not keep up: stop reading from it until it drains.
                Event::WriteBlocked { conn, queued } => {
                    log::debug!("{conn}: {queued} bytes queued, pausing reads");
                    reactor.pause_reading(conn);
                }
                Event::Writable { conn } => {
                    log::debug!("{conn}: drained, resuming reads");
                    reactor.resume_reading(conn);
                }
                // Everything the client sent was echoed (queued); flush it and close.
                Event::PeerHalfClosed { conn } => {
                    reactor.close(conn);
                }
                Event::Disconnected { conn, cause } => log::info!("{conn} disconnected: {cause}"),
                Event::Timer { .. } => {
                    let s = reactor.stats();
                    log::info!(
                        "open {} accepted {} read {} B written {} B queued {} B (peak {}) turns {} longest turn {} us",
                        s.open_connections,
                        s.accepted,
                        s.bytes_read,
                        s.bytes_written,
                        s.bytes_queued,
                        s.bytes_queued_peak,
                        s.turns,
                        s.longest_turn_us
                    );
                    reactor.set_timer(Duration::from_secs(stats_secs), 0);
                }
                _ => {}
            }
        }
    }
}

fn usage(bad: &str) -> ! {
    eprintln!(
        "bad or incomplete option {bad}\nusage: echo [--addr HOST:PORT] [--heartbeat-ms N] [--stats-secs N]"
    );
    std::process::exit(2)
}
