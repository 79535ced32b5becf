//! `cargo run --example hbpeer -- listen|connect ADDR [--interval-ms N --timeout-ms N] [...]`
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
//! * `--interval-ms N --timeout-ms N`: heartbeat (both or neither; default: no heartbeat).
//! * `--framing ld|raw`: length-delimited frames with the built-in Ping/Pong (default), or raw
//!   bytes (`HeartbeatDue` events).
//! * `--seq`: send the numbers 1, 2, 3, ... as big-endian `u64`s (one frame each with `ld`),
//!   one every `--seq-every-ms` (default 20), up to `--seq-count` (default: forever); and check
//!   that the numbers received from the peer are exactly 1, 2, 3, ...
//! * `--user-timeout-ms N`: `TCP_USER_TIMEOUT` on the connection.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use heartloop::{Cause, ConnConfig, Event, Framing, Heartbeat, Reactor, ReactorConfig};

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
    let o = parse_args();
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

fn parse_args() -> Opts {
    let mut args = std::env::args().skip(1);
    let mode = args
        .next()
        .unwrap_or_else(|| usage("missing listen|connect"));
    let listen = match mode.as_str() {
        "listen" => true,
        "connect" => false,
        _ => usage("first argument must be listen or connect"),
    };
    let addr = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| usage("missing or bad ADDR"));
    let mut o = Opts {
        listen,
        addr,
        heartbeat: None,
        raw: false,
        seq: false,
        seq_every: Duration::from_millis(20),
        seq_count: 0,
        user_timeout: None,
    };
    let (mut interval, mut timeout) = (None, None);
    while let Some(a) = args.next() {
        let mut ms = || -> u64 {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| usage(&format!("{a} needs a number")))
        };
        match a.as_str() {
            "--interval-ms" => interval = Some(Duration::from_millis(ms())),
            "--timeout-ms" => timeout = Some(Duration::from_millis(ms())),
            "--seq-every-ms" => o.seq_every = Duration::from_millis(ms()),
            "--seq-count" => o.seq_count = ms(),
            "--user-timeout-ms" => o.user_timeout = Some(Duration::from_millis(ms())),
            "--seq" => o.seq = true,
            "--framing" => match args.next().as_deref() {
                Some("ld") => o.raw = false,
                Some("raw") => o.raw = true,
                _ => usage("--framing ld|raw"),
            },
            other => usage(&format!("unknown option {other}")),
        }
    }
    o.heartbeat = match (interval, timeout) {
        (Some(i), Some(t)) => Some(Heartbeat::new(i, t)),
        (None, None) => None,
        _ => usage("--interval-ms and --timeout-ms go together"),
    };
    o
}

fn usage(why: &str) -> ! {
    eprintln!("hbpeer: {why}");
    eprintln!(
        "usage: hbpeer listen|connect ADDR [--interval-ms N --timeout-ms N] [--seq] \
         [--seq-every-ms N] [--seq-count N] [--user-timeout-ms N] [--framing ld|raw]"
    );
    std::process::exit(2);
}
