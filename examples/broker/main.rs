//! `cargo run --release --example broker -- --addr 127.0.0.1:4222`
//!
//! A NATS-protocol message broker on one heartloop reactor: real NATS clients
//! (`async-nats`, `nats.go`, the `nats` CLI) can connect, publish, subscribe with `*` and
//! `>` wildcards and queue groups, make requests, and use headers.
//!
//! What heartloop brings to it:
//! * liveness: a client silent for `--ping-interval` gets a `PING`; after `--ping-max`
//!   unanswered ones it gets `-ERR 'Stale Connection'` and is closed;
//! * slow consumers: a subscriber with more than `--max-pending` bytes pending (checked
//!   at every message it is sent), or whose queue made no progress for
//!   `--write-deadline`, is closed (and logged). As nats-server does, a subscriber over
//!   half its `--max-pending` holds back the publishers that feed it (their reading is
//!   paused) until it drains below half, for at most a second: one that keeps up is not
//!   cut by a burst of fan-in, and one that does not drain costs its publishers that
//!   second once and is then left to reach its limit;
//! * fan-out without copies of large payloads: every subscriber's queue holds the same
//!   payload `Bytes` (small ones are cheaper to copy into each subscriber's write batch).
//!
//! Options (defaults are nats-server's, but for `--copy-below`): `--addr HOST:PORT` (127.0.0.1:4222; port 0 picks
//! one), `--ping-interval DUR` (2m), `--ping-max N` (2), `--max-payload SIZE` (1MB),
//! `--max-pending SIZE` (64MB), `--write-deadline DUR` (10s), and `--copy-below SIZE`
//! (1KB: payloads shorter than this are copied into each subscriber's write batch, longer
//! ones are shared by all subscribers as one `Bytes`; 0 shares every payload). DUR is
//! `250ms`, `10s`, `2m` or plain seconds; SIZE is bytes with an optional `KB`/`MB`/`GB`
//! (powers of 1024).
//!
//! Prints one line, `broker listening on ADDR ...`, to stdout. Per-connection events are
//! logged at debug level: `RUST_LOG=debug`.

mod parser;
mod server;
mod subjects;

use std::time::Duration;

use server::{Config, Server};

fn main() -> std::io::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let mut cfg = Config::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage(&a));
        match a.as_str() {
            "--addr" => cfg.addr = val().parse().unwrap_or_else(|_| usage("--addr")),
            "--ping-interval" => {
                cfg.ping_interval = duration(&val()).unwrap_or_else(|| usage("--ping-interval"))
            }
            "--ping-max" => cfg.ping_max = val().parse().unwrap_or_else(|_| usage("--ping-max")),
            "--max-payload" => {
                cfg.max_payload = size(&val()).unwrap_or_else(|| usage("--max-payload"))
            }
            "--max-pending" => {
                cfg.max_pending = size(&val()).unwrap_or_else(|| usage("--max-pending"))
            }
            "--copy-below" => {
                cfg.copy_below = size(&val()).unwrap_or_else(|| usage("--copy-below"))
            }
            "--write-deadline" => {
                cfg.write_deadline = duration(&val()).unwrap_or_else(|| usage("--write-deadline"))
            }
            _ => usage(&a),
        }
    }
    if cfg.ping_interval.is_zero() || cfg.write_deadline.is_zero() {
        usage("--ping-interval/--write-deadline must be above zero");
    }
    let mut server = Server::bind(cfg)?;
    println!(
        "broker listening on {} (ping every {:?}, stale after {} unanswered, max_payload {}, \
         max_pending {}, write_deadline {:?})",
        server.local_addr(),
        cfg.ping_interval,
        cfg.ping_max,
        cfg.max_payload,
        cfg.max_pending,
        cfg.write_deadline
    );
    server.run()
}

/// `250ms`, `10s`, `2m`, `1h` or plain seconds.
fn duration(s: &str) -> Option<Duration> {
    let (num, unit) = s.split_at(
        s.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len()),
    );
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(secs).ok()
}

/// Bytes, with an optional `K`/`KB`/`M`/`MB`/`G`/`GB` suffix (powers of 1024).
fn size(s: &str) -> Option<usize> {
    let upper = s.to_ascii_uppercase();
    let t = upper.trim_end_matches('B');
    let (num, mult) = match t.chars().last()? {
        'K' => (&t[..t.len() - 1], 1usize << 10),
        'M' => (&t[..t.len() - 1], 1 << 20),
        'G' => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    num.parse::<usize>().ok()?.checked_mul(mult)
}

fn usage(bad: &str) -> ! {
    eprintln!(
        "bad or incomplete option {bad}\nusage: broker [--addr HOST:PORT] [--ping-interval DUR] \
         [--ping-max N] [--max-payload SIZE] [--max-pending SIZE] [--write-deadline DUR] \
         [--copy-below SIZE]"
    );
    std::process::exit(2)
}
