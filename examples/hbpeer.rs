//! `cargo run --example hbpeer -- listen|connect ADDR [--interval DUR --timeout DUR] [...]`
//!
//! A heartloop peer process for tests and experiments: one connection (accepted with
//! `listen`, made with `connect`), heartbeats as configured, and one stdout line per event,
//! so that a test running it inside a network namespace (`ip netns exec NS hbpeer ...`) can
//! see when and why the connection ended. Every line is
//!
//! ```text
//! KIND <unix_ms> <rel_ms> [details]
//! ```
//!
//! `unix_ms` is the wall clock (milliseconds since the Unix epoch, 3 decimals) when the event
//! was handled, so that lines of different processes can be compared; `rel_ms` is monotonic
//! time since this process started. Kinds:
//!
//! * `LISTENING <addr>` (listen mode, before anything else), `ACCEPTED <peer>`, `CONNECTED <peer>`
//! * `HEARTBEAT_DUE` (raw framing only: the reactor asks for a protocol ping; without
//!   `--seq` one `\n` byte is sent as the ping)
//! * `SEQ_OK <n>` for every sequence number received in order, `SEQ_BAD expected=<e> got=<g>`
//!   for a gap, a duplicate or a reordering; `SEQ_SENT <n>` once `--seq-count` numbers were
//!   queued (sending then stops)
//! * `DISCONNECTED <Cause> [silent_for_ms=<ms>]`, e.g. `DISCONNECTED .. .. HeartbeatTimeout
//!   silent_for_ms=1003.2`, `PeerClosed`, `Reset`, `TimedOut`, `Io kind=<ErrorKind> errno=<Option>`; then the
//!   process exits with status 0.
//!
//! Options:
//! * `--interval DUR --timeout DUR`: heartbeat (both or neither; default: no heartbeat);
//!   DUR is a duration such as `200ms` or `1s`.
//! * `--framing ld|raw`: length-delimited frames with the built-in Ping/Pong (default), or raw
//!   bytes (`HeartbeatDue` events).
//! * `--seq`: send the numbers 1, 2, 3, ... as big-endian `u64`s (one frame each with `ld`),
//!   one every `--seq-every` (default 20ms), up to `--seq-count` (default: forever); and check
//!   that the numbers received from the peer are exactly 1, 2, 3, ...
//! * `--user-timeout DUR`: `TCP_USER_TIMEOUT` on the connection.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use heartloop::{Cause, ConnConfig, Event, Framing, Heartbeat, Reactor, ReactorConfig};

#[path = "common/opts.rs"]
mod opts;

/// Tag of the timer that paces the sequence stream.
const SEQ_TIMER: u64 = 1;

struct Opts {
    listen: bool,
    addr: SocketAddr,
    heartbeat: Option<Heartbeat>,
    raw: bool,
    seq: bool,
    seq_every: Duration,
    seq_count: u64,
    user_timeout: Option<Duration>,
}

fn main() -> std::io::Result<()> {
    let o = parse_args().unwrap_or_else(|e| opts::exit_usage("hbpeer", e));
    let start = Instant::now();
    let mut cfg = ConnConfig::default().framing(if o.raw {
        Framing::Raw
    } else {
        Framing::length_delimited(1 << 20)
    });
    if let Some(hb) = o.heartbeat {
        cfg = cfg.heartbeat(hb);
    }
    if let Some(t) = o.user_timeout {
        cfg = cfg.user_timeout(t);
    }
    let mut r = Reactor::new(ReactorConfig::default())?;
    let mut stamp = Stamp::new(start);
    if o.listen {
        let l = r.listen(o.addr, cfg)?;
        say(&stamp, "LISTENING", &r.local_addr(l)?.to_string());
    } else {
        r.connect(o.addr, cfg)?;
    }

    let mut conn = None;
    let mut sent = 0u64; // last sequence number queued
    let mut expect = 1u64; // next sequence number we should receive
    let mut raw_tail: Vec<u8> = Vec::new(); // raw framing: bytes of an incomplete u64
    let mut events = Vec::new();
    loop {
        r.poll(&mut events, None)?;
        stamp = Stamp::new(start);
        for ev in events.drain(..) {
            match ev {
                Event::Accepted {
                    conn: c,
                    peer,
                    listener,
                } => {
                    say(&stamp, "ACCEPTED", &peer.to_string());
                    conn = Some(c);
                    // One connection per run: stop listening.
                    let _ = r.unlisten(listener);
                    start_seq(&mut r, &o);
                }
                Event::Connected { conn: c } => {
                    let peer = r.peer_addr(c).map_or_else(String::new, |a| a.to_string());
                    say(&stamp, "CONNECTED", &peer);
                    conn = Some(c);
                    start_seq(&mut r, &o);
                }
                Event::Data { bytes, .. } => {
                    if !o.seq {
                        continue;
                    }
                    // With ld framing each frame is one u64; with raw framing the stream is
                    // cut anywhere, so keep the tail of an incomplete number.
                    let mut check = |n: u64| {
                        if n == expect {
                            say(&stamp, "SEQ_OK", &n.to_string());
                        } else {
                            say(&stamp, "SEQ_BAD", &format!("expected={expect} got={n}"));
                        }
                        expect = n + 1;
                    };
                    if o.raw {
                        raw_tail.extend_from_slice(&bytes);
                        let whole = raw_tail.len() / 8 * 8;
                        for c in raw_tail[..whole].chunks_exact(8) {
                            check(u64::from_be_bytes(c.try_into().expect("8 bytes")));
                        }
                        raw_tail.drain(..whole);
                    } else if let Ok(b) = <[u8; 8]>::try_from(&bytes[..]) {
                        check(u64::from_be_bytes(b));
                    } else {
                        say(&stamp, "SEQ_BAD", &format!("frame_len={}", bytes.len()));
                    }
                }
                Event::HeartbeatDue { conn: c } => {
                    say(&stamp, "HEARTBEAT_DUE", "");
                    if !o.seq {
                        let _ = r.send(c, Bytes::from_static(b"\n"));
                    }
                }
                Event::Timer { tag: SEQ_TIMER, .. } => {
                    let Some(c) = conn else { continue };
                    if o.seq_count == 0 || sent < o.seq_count {
                        sent += 1;
                        if let Err(e) = r.send(c, Bytes::copy_from_slice(&sent.to_be_bytes())) {
                            say(&stamp, "SEND_ERROR", &e.to_string());
                        }
                        if sent == o.seq_count {
                            say(&stamp, "SEQ_SENT", &sent.to_string());
                        } else {
                            r.set_timer(o.seq_every, SEQ_TIMER);
                        }
                    }
                }
                Event::Disconnected { cause, .. } => {
                    say(&stamp, "DISCONNECTED", &cause_fields(&cause));
                    return Ok(());
                }
                _ => {}
            }
        }
    }
}

/// Arms the sequence stream's first timer.
fn start_seq(r: &mut Reactor, o: &Opts) {
    if o.seq {
        r.set_timer(o.seq_every, SEQ_TIMER);
    }
}

/// The cause as `Variant [key=value]`, for a test to parse.
fn cause_fields(cause: &Cause) -> String {
    match cause {
        Cause::HeartbeatTimeout { silent_for } => format!(
            "HeartbeatTimeout silent_for_ms={:.1}",
            silent_for.as_secs_f64() * 1e3
        ),
        Cause::Io { kind, errno } => format!("Io kind={kind:?} errno={errno:?}"),
        Cause::PeerClosed => "PeerClosed".into(),
        Cause::Reset => "Reset".into(),
        Cause::TimedOut => "TimedOut".into(),
        other => format!("{other:?}"),
    }
}

/// When a turn's events were handled: the wall clock (comparable across processes) and
/// monotonic time since start.
struct Stamp {
    unix_ms: f64,
    rel_ms: f64,
}

impl Stamp {
    fn new(start: Instant) -> Stamp {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Stamp {
            unix_ms: unix.as_secs_f64() * 1e3,
            rel_ms: start.elapsed().as_secs_f64() * 1e3,
        }
    }
}

/// One line on stdout (line-buffered, so the reader sees it at once).
fn say(at: &Stamp, kind: &str, details: &str) {
    println!("{kind} {:.3} {:.3} {details}", at.unix_ms, at.rel_ms);
}

const HELP: &str = "\
hbpeer: a one-connection heartloop peer printing one timestamped line per event

usage: hbpeer listen|connect ADDR [OPTIONS]

options:
  --interval DUR       heartbeat interval, e.g. 200ms (with --timeout; default: none)
  --timeout DUR        heartbeat timeout, e.g. 1s (with --interval)
  --framing ld|raw     length-delimited frames with ping/pong (default), or raw bytes
  --seq                send 1, 2, 3, ... as big-endian u64s and check the peer's numbers
  --seq-every DUR      one number every DUR (default 20ms)
  --seq-count N        stop sending after N numbers (default: never)
  --user-timeout DUR   TCP_USER_TIMEOUT on the connection
  -h, --help           print this help

Lines: KIND <unix_ms> <rel_ms> [details]; examples/hbpeer.rs lists the kinds.
";

fn parse_args() -> Result<Opts, lexopt::Error> {
    use lexopt::prelude::*;
    let mut o = Opts {
        listen: false,
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        heartbeat: None,
        raw: false,
        seq: false,
        seq_every: Duration::from_millis(20),
        seq_count: 0,
        user_timeout: None,
    };
    let (mut interval, mut timeout) = (None, None);
    let mut positional = Vec::new();
    let mut p = lexopt::Parser::from_env();
    while let Some(arg) = p.next()? {
        match arg {
            Long("interval") => interval = Some(p.value()?.parse_with(opts::parse_duration)?),
            Long("timeout") => timeout = Some(p.value()?.parse_with(opts::parse_duration)?),
            Long("seq-every") => o.seq_every = p.value()?.parse_with(opts::parse_duration)?,
            Long("seq-count") => o.seq_count = p.value()?.parse()?,
            Long("user-timeout") => {
                o.user_timeout = Some(p.value()?.parse_with(opts::parse_duration)?)
            }
            Long("seq") => o.seq = true,
            Long("framing") => {
                o.raw = p.value()?.parse_with(|f| match f {
                    "ld" => Ok(false),
                    "raw" => Ok(true),
                    _ => Err(format!("'{f}' is not a framing (ld or raw)")),
                })?
            }
            Short('h') | Long("help") => opts::exit_help(HELP),
            Value(v) if positional.len() < 2 => positional.push(v.string()?),
            _ => return Err(arg.unexpected()),
        }
    }
    let [mode, addr] = <[String; 2]>::try_from(positional)
        .map_err(|_| "needs listen|connect and ADDR, e.g. `hbpeer listen 127.0.0.1:7100`")?;
    o.listen = match mode.as_str() {
        "listen" => true,
        "connect" => false,
        _ => return Err(format!("'{mode}': the first argument is listen or connect").into()),
    };
    o.addr = addr.parse().map_err(|e| format!("ADDR '{addr}': {e}"))?;
    o.heartbeat = match (interval, timeout) {
        (Some(i), Some(t)) => Some(Heartbeat::new(i, t)),
        (None, None) => None,
        _ => return Err("--interval and --timeout go together".into()),
    };
    Ok(o)
}
