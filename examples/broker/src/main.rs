//! `cargo run --release -p heartloop-broker -- --addr 127.0.0.1:4222`
//!
//! A NATS-protocol message broker on heartloop reactors, one per core: real NATS clients
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
//! `--max-pending SIZE` (64MB), `--write-deadline DUR` (10s), `--copy-below SIZE`
//! (1KB: payloads shorter than this are copied into each subscriber's write batch, longer
//! ones are shared by all subscribers as one `Bytes`; 0 shares every payload),
//! `--sndbuf SIZE` (clients' `SO_SNDBUF`; default the kernel's) and `--stats DUR` (every
//! DUR, one line of counters to stderr: clients, subscriptions, slow consumers cut,
//! publishers held back, the reactor's `Stats` with its longest turn; the hostile-peer
//! soak, `tests/hostile_soak.rs`, reads it). DUR is a duration such as `250ms`, `10s`
//! or `2m`; SIZE is bytes with an optional `KB`/`MB`/`GB` (powers of 1024), as in
//! `examples/common/opts.rs`. `--help` lists them.
//!
//! Scaling: `--threads N` (default: the number of cores) runs N reactors on N threads,
//! sharing the port (`SO_REUSEPORT`: the kernel spreads the clients); a publish reaches
//! the subscribers of every reactor (see `server.rs`). `--leaf nats://HOST:PORT` makes the
//! broker a leaf node of a nats-server (its `leafnodes` port): the local clients and the
//! hub's share one subject space (see `server/leaf.rs` for what of the protocol is
//! covered); `--leaf-ping DUR` (5s) pings the hub, and the link is lost after three
//! times that in silence, then solicited again with a backoff.
//!
//! Prints one line, `broker listening on ADDR ...`, to stdout. Per-connection events are
//! logged at debug level: `RUST_LOG=debug`.

#[path = "../../common/logger.rs"]
mod logger;
#[path = "../../common/opts.rs"]
mod opts;
mod parser;
mod server;
mod subjects;

use server::Config;

const HELP: &str = "\
broker: a NATS-protocol broker on heartloop reactors (defaults are nats-server's)

usage: broker [OPTIONS]

options:
  --addr HOST:PORT         where to listen (default 127.0.0.1:4222; port 0 picks one)
  --ping-interval DUR      PING a client silent this long (default 2m)
  --ping-max N             unanswered PINGs before the client is stale (default 2)
  --max-payload SIZE       largest payload a client may publish (default 1MB)
  --max-pending SIZE       bytes pending for a client before it is a slow consumer
                           (default 64MB)
  --write-deadline DUR     longest a client's queue may make no progress (default 10s)
  --copy-below SIZE        payloads shorter than this are copied into each subscriber's
                           batch, longer ones shared (default 1KB; 0 shares every one)
  --quiet-coalescing DUR   while only pings and pongs flow, wake at most once per DUR
                           (heartloop's ReactorConfig::quiet_coalescing; default off)
  --stats DUR              every DUR, print a line of counters to stderr (default: never)
  --sndbuf SIZE            SO_SNDBUF of client sockets (default: the kernel's)
  --threads N              reactors (threads) sharing the port (default: the cores)
  --turn-time DUR          the least of the broker's own time per turn before the client
                           being served yields to the others; more when the last turn
                           wrote to many clients (default 25us)
  --reserve-fds N          grow the descriptor table to N slots before the threads start,
                           so that no accept stalls growing it later (default 16384, up
                           to RLIMIT_NOFILE; 0: off)
  --leaf URL               be a leaf node of the nats-server whose leafnode port is
                           nats://HOST:PORT
  --leaf-ping DUR          PING the hub after this long without traffic; the link is
                           lost after three times this in silence (default 5s)
  -h, --help               print this help

DUR is a duration such as 250ms, 10s or 2m; SIZE is bytes with an optional unit, such
as 4096, 64KB or 1MB (powers of 1024). RUST_LOG=debug logs every connection.
";

fn parse_args() -> Result<Config, lexopt::Error> {
    use lexopt::prelude::*;
    let mut cfg = Config {
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        ..Config::default()
    };
    let mut p = lexopt::Parser::from_env();
    while let Some(arg) = p.next()? {
        match arg {
            Long("addr") => cfg.addr = p.value()?.parse()?,
            Long("ping-interval") => {
                cfg.ping_interval = p.value()?.parse_with(opts::parse_duration)?
            }
            Long("ping-max") => cfg.ping_max = p.value()?.parse()?,
            Long("max-payload") => {
                cfg.max_payload = p.value()?.parse_with(opts::parse_size_usize)?
            }
            Long("max-pending") => {
                cfg.max_pending = p.value()?.parse_with(opts::parse_size_usize)?
            }
            Long("quiet-coalescing") => {
                cfg.quiet_coalescing = Some(p.value()?.parse_with(opts::parse_duration)?)
            }
            Long("copy-below") => cfg.copy_below = p.value()?.parse_with(opts::parse_size_usize)?,
            Long("write-deadline") => {
                cfg.write_deadline = p.value()?.parse_with(opts::parse_duration)?
            }
            Long("stats") => {
                cfg.stats =
                    Some(p.value()?.parse_with(opts::parse_duration)?).filter(|d| !d.is_zero())
            }
            Long("sndbuf") => cfg.sndbuf = Some(p.value()?.parse_with(opts::parse_size_usize)?),
            Long("threads") => cfg.threads = p.value()?.parse()?,
            Long("turn-time") => cfg.turn_time = p.value()?.parse_with(opts::parse_duration)?,
            Long("reserve-fds") => cfg.reserve_fds = p.value()?.parse()?,
            Long("leaf") => cfg.leaf = Some(p.value()?.string()?),
            Long("leaf-ping") => cfg.leaf_ping = p.value()?.parse_with(opts::parse_duration)?,
            Short('h') | Long("help") => opts::exit_help(HELP),
            _ => return Err(arg.unexpected()),
        }
    }
    if cfg.ping_interval.is_zero() || cfg.write_deadline.is_zero() || cfg.leaf_ping.is_zero() {
        return Err("--ping-interval, --write-deadline and --leaf-ping must be above zero".into());
    }
    if cfg.threads == 0 || cfg.threads > 1024 {
        return Err("--threads must be 1 to 1024".into());
    }
    Ok(cfg)
}

fn main() -> std::io::Result<()> {
    let cfg = parse_args().unwrap_or_else(|e| opts::exit_usage("broker", e));
    logger::init("info");
    // Still one thread: growing the table now waits for nobody (see `reserve_fds`).
    heartloop::reserve_fds(cfg.reserve_fds)?;
    let (servers, addr) = server::bind_all(&cfg)?;
    println!(
        "broker listening on {} ({} reactors, ping every {:?}, stale after {} unanswered, \
         max_payload {}, max_pending {}, write_deadline {:?}{})",
        addr,
        servers.len(),
        cfg.ping_interval,
        cfg.ping_max,
        cfg.max_payload,
        cfg.max_pending,
        cfg.write_deadline,
        cfg.leaf
            .as_ref()
            .map_or(String::new(), |l| format!(", leaf of {l}"))
    );
    // A reactor's loop ends only with an error (or a panic): the broker ends with it.
    let (tx, ended) = std::sync::mpsc::channel();
    for (i, mut s) in servers.into_iter().enumerate() {
        let tx = tx.clone();
        std::thread::Builder::new()
            .name(format!("reactor-{i}"))
            .spawn(move || {
                let res = s.run();
                let _ = tx.send(res);
            })?;
    }
    drop(tx);
    match ended.recv() {
        Ok(res) => res,
        Err(_) => Err(std::io::Error::other("a reactor thread panicked")),
    }
}
