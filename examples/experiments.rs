//! `cargo run --release --example experiments [-- --json]`
//!
//! The classic socket experiments, re-run with heartloop on this machine: a peer exits, is
//! killed, half-closes, stops reading; a network cable is pulled between two network
//! namespaces, with and without heartbeats, and plugged back in before anything timed out;
//! a process is killed across the namespaces. For each, what our side saw (the [`Cause`]),
//! how long it took to notice, and a note. The table ends up in the README; `--json` prints
//! the same rows for machines (`tests/experiments.rs` checks every row's cause).
//!
//! The peers are child processes: the `peer` example (blocking std sockets) on loopback,
//! and the `hbpeer` example (heartloop, one connection, timestamped event lines) on both
//! sides of a veth pair between two namespaces. Both are found next to this binary (built
//! with `cargo build --examples` of the same profile, or built on first use).
//!
//! Cleanup: child processes are killed by pid when their row ends (also on panic), and the
//! namespaces are deleted by `Drop`. Ctrl-C kills this process and its children (they share
//! the terminal's process group) but cannot run `Drop` (no signal handler is installed, to
//! stay free of unsafe code): namespaces named `hl<pid>_…` whose process is gone are then
//! removed at the start of the next run (see `common/netns.rs`). Namespace rows need root;
//! without it they are printed as skipped, with the reason.

#[path = "common/netns.rs"]
mod netns;
#[path = "common/opts.rs"]
mod opts;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use heartloop::{Cause, ConnConfig, Event, OutboundConfig, Reactor, ReactorConfig};
use serde_json::{Value, json};

/// Loopback rows: how long to wait for something that should be immediate.
const PROMPT: Duration = Duration::from_secs(5);
/// Stall timeout for the peer that stops reading.
const STALL: Duration = Duration::from_secs(1);
/// Heartbeat of the namespace rows: ping after 0.5 s of silence, lost after 2 s.
const HB_INTERVAL_MS: u64 = 500;
const HB_TIMEOUT_MS: u64 = 2000;
/// How long the row without heartbeat watches for a verdict after the cable is pulled.
const NO_HB_WINDOW: Duration = Duration::from_secs(3);
/// How long the cable stays out in the "back in time" row (well under the timeout, and
/// under it even after TCP's retransmission back-off: RTO 0.2 s, 0.4 s, ...).
const OUTAGE: Duration = Duration::from_millis(500);
/// Numbers each side streams in the "back in time" row, one every 20 ms.
const SEQ_COUNT: u64 = 100;

/// One line of the table.
struct Row {
    /// Stable machine name of the scenario.
    id: &'static str,
    scenario: &'static str,
    /// Variant of the cause our side saw (`PeerClosed`, `HeartbeatTimeout`, ...), or
    /// `none` (no verdict within the window), `survived`, `error`.
    cause: String,
    /// The cause in words (its `Display`), or what happened instead.
    saw: String,
    detect: Option<Duration>,
    note: String,
    /// Why the row did not run.
    skipped: Option<String>,
    /// Extra figures (bytes absorbed, silence, ...).
    data: Value,
}

impl Row {
    fn new(id: &'static str, scenario: &'static str) -> Row {
        Row {
            id,
            scenario,
            cause: String::new(),
            saw: String::new(),
            detect: None,
            note: String::new(),
            skipped: None,
            data: json!({}),
        }
    }

    fn saw_cause(&mut self, cause: &Cause) {
        self.cause = variant(cause);
        self.saw = cause.to_string();
    }
}

const HELP: &str = "\
experiments: what heartloop detects on this machine (peers killed, half-closed, stopped;
a cable pulled between two network namespaces, which needs root): a table of cause and
time to detect

usage: experiments [--json]

options:
  --json       print the rows as JSON, for machines
  -h, --help   print this help
";

/// Whether `--json` was given.
fn parse_args() -> Result<bool, lexopt::Error> {
    use lexopt::prelude::*;
    let mut json = false;
    let mut p = lexopt::Parser::from_env();
    while let Some(arg) = p.next()? {
        match arg {
            Long("json") => json = true,
            Short('h') | Long("help") => opts::exit_help(HELP),
            _ => return Err(arg.unexpected()),
        }
    }
    Ok(json)
}

fn main() {
    let json_out = parse_args().unwrap_or_else(|e| opts::exit_usage("experiments", e));
    let start = Instant::now();
    let mut rows = Vec::new();

    // Same box: our reactor in this process, a `peer` process on loopback.
    type Loopback = fn(&mut Row) -> Result<(), String>;
    let loopback: [(&str, &str, Loopback); 5] = [
        ("exit", "peer exits cleanly", peer_exits),
        ("kill_idle", "peer killed (SIGKILL) while idle", killed_idle),
        (
            "kill_unread",
            "peer killed with unread data in its buffer",
            killed_unread,
        ),
        ("half_close", "peer half-closes", half_closes),
        (
            "stop_reading",
            "peer stops reading (SIGSTOP), we keep sending",
            stops_reading,
        ),
    ];
    for (id, scenario, run) in loopback {
        let mut row = Row::new(id, scenario);
        if let Err(e) = run(&mut row) {
            row.cause = "error".into();
            row.saw = format!("experiment failed: {e}");
        }
        rows.push(row);
    }

    // Two boxes: `hbpeer` processes in two network namespaces joined by a veth pair.
    type Netns = fn(&netns::NetPair, &mut Row) -> Result<(), String>;
    let two_boxes: [(&str, &str, Netns); 4] = [
        (
            "cable_heartbeat",
            "cable pulled between two namespaces, with heartbeat",
            cable_with_heartbeat,
        ),
        (
            "cable_no_heartbeat",
            "cable pulled between two namespaces, no heartbeat",
            cable_without_heartbeat,
        ),
        (
            "cable_back",
            "cable pulled, plugged back in before the timeout",
            cable_back_in_time,
        ),
        (
            "kill_across",
            "peer process killed across the namespaces, link up",
            killed_across,
        ),
    ];
    let pair = netns::NetPair::new();
    for (id, scenario, run) in two_boxes {
        let mut row = Row::new(id, scenario);
        match &pair {
            Err(reason) => {
                row.cause = "skipped".into();
                row.saw = "skipped".into();
                row.skipped = Some(reason.clone());
                eprintln!("SKIPPED: {scenario}: {reason}");
            }
            Ok(pair) => {
                if let Err(e) = run(pair, &mut row) {
                    row.cause = "error".into();
                    row.saw = format!("experiment failed: {e}");
                }
                pair.cable(true); // whatever the row did, the next starts with the cable in
            }
        }
        rows.push(row);
    }
    drop(pair);

    if json_out {
        let rows: Vec<Value> = rows
            .iter()
            .map(|r| {
                json!({
                    "id": r.id,
                    "scenario": r.scenario,
                    "cause": r.cause,
                    "saw": r.saw,
                    "detect_ms": r.detect.map(|d| d.as_secs_f64() * 1e3),
                    "note": r.note,
                    "skipped": r.skipped,
                    "data": r.data,
                })
            })
            .collect();
        let out = json!({ "rows": rows, "elapsed_ms": start.elapsed().as_secs_f64() * 1e3 });
        println!("{}", serde_json::to_string_pretty(&out).expect("json"));
    } else {
        print_table(&rows);
        println!(
            "\n({} rows in {:.1} s)",
            rows.len(),
            start.elapsed().as_secs_f64()
        );
    }
}

// ------------------------------------------------------------------ same box

fn peer_exits(row: &mut Row) -> Result<(), String> {
    let (mut r, addr) = reactor_listening(ConnConfig::default())?;
    let mut p = Child::spawn(peer_cmd(&[&addr.to_string(), "exit"]))?;
    let (cause, at) = expect_disconnect(&mut r, PROMPT)?;
    // The peer prints READY right before it closes: measure from that line.
    let ready = p.expect_line("READY", PROMPT)?;
    row.saw_cause(&cause);
    row.detect = Some(at.saturating_duration_since(ready.at));
    row.note =
        "read() == 0 (EOF); timed from the peer's READY line, printed just before it closed".into();
    Ok(())
}

fn killed_idle(row: &mut Row) -> Result<(), String> {
    let (mut r, addr) = reactor_listening(ConnConfig::default())?;
    let mut p = Child::spawn(peer_cmd(&[&addr.to_string(), "idle"]))?;
    expect_accept(&mut r, PROMPT)?;
    p.expect_line("READY", PROMPT)?;
    let t0 = Instant::now();
    p.kill();
    let (cause, at) = expect_disconnect(&mut r, PROMPT)?;
    row.saw_cause(&cause);
    row.detect = Some(at - t0);
    row.note = "its kernel closed the socket: FIN, seen as EOF".into();
    Ok(())
}

fn killed_unread(row: &mut Row) -> Result<(), String> {
    const UNREAD: usize = 4096;
    let (mut r, addr) = reactor_listening(ConnConfig::default())?;
    let mut p = Child::spawn(peer_cmd(&[&addr.to_string(), "noread"]))?;
    let conn = expect_accept(&mut r, PROMPT)?;
    p.expect_line("READY", PROMPT)?;
    r.send(conn, Bytes::from(vec![7u8; UNREAD]))
        .map_err(|e| e.to_string())?;
    // Once written, the bytes sit in the peer's receive buffer (loopback delivers at once).
    let end = Instant::now() + PROMPT;
    let mut events = Vec::new();
    while r.stats().bytes_written < UNREAD as u64 {
        if Instant::now() > end {
            return Err("our 4 KiB never left".into());
        }
        r.poll(&mut events, Some(Duration::from_millis(10)))
            .map_err(|e| e.to_string())?;
    }
    let t0 = Instant::now();
    p.kill();
    let (cause, at) = expect_disconnect(&mut r, PROMPT)?;
    row.saw_cause(&cause);
    row.detect = Some(at - t0);
    row.note = format!(
        "{UNREAD} B we sent were unread: its kernel answered with RST, not FIN (ECONNRESET)"
    );
    Ok(())
}

fn half_closes(row: &mut Row) -> Result<(), String> {
    const REPLY: &[u8] = b"still here\n";
    let (mut r, addr) = reactor_listening(ConnConfig::default().half_close(true))?;
    let mut p = Child::spawn(peer_cmd(&[&addr.to_string(), "halfclose"]))?;
    let (ev, at) = poll_until(&mut r, PROMPT, |e| {
        matches!(e, Event::PeerHalfClosed { .. } | Event::Disconnected { .. })
    })
    .ok_or("neither a half-close nor a disconnect")?;
    let conn = match ev {
        Event::PeerHalfClosed { conn } => conn,
        Event::Disconnected { cause, .. } => {
            row.saw_cause(&cause);
            return Err(format!("disconnected instead: {cause}"));
        }
        _ => unreachable!(),
    };
    let half = p.expect_line("HALFCLOSED", PROMPT)?;
    row.cause = "PeerHalfClosed".into();
    row.saw = "peer finished sending (half-close); we may still send".into();
    row.detect = Some(at.saturating_duration_since(half.at));
    // Writing still works: answer, then close; the peer counts what it got.
    r.send(conn, Bytes::from_static(REPLY))
        .map_err(|e| e.to_string())?;
    let _ = r.close(conn);
    let (cause, _) = expect_disconnect(&mut r, PROMPT)?;
    let got = p.expect_line("GOT", PROMPT)?;
    let delivered = got.rest == REPLY.len().to_string();
    row.data =
        json!({ "reply_bytes": REPLY.len(), "peer_got": got.rest, "reply_delivered": delivered });
    row.note = format!(
        "read() == 0 but writing still works: our {} B reply reached the peer ({}), then we closed ({})",
        REPLY.len(),
        if delivered {
            "it read them all"
        } else {
            "NOT all of them"
        },
        variant(&cause)
    );
    Ok(())
}

fn stops_reading(row: &mut Row) -> Result<(), String> {
    const CHUNK: usize = 64 * 1024;
    let out = OutboundConfig::watermarks(64 * 1024, 256 * 1024).on_stall(STALL);
    let (mut r, addr) = reactor_listening(ConnConfig::default().outbound(out))?;
    let mut p = Child::spawn(peer_cmd(&[&addr.to_string(), "idle"]))?;
    let conn = expect_accept(&mut r, PROMPT)?;
    p.expect_line("READY", PROMPT)?;
    p.signal("STOP")?;
    p.wait_stopped(PROMPT)?;

    // Hand the kernel one chunk at a time, the next only once it took all of the last:
    // the first write it does not take in full is the first stall, and what it took until
    // then is what it absorbed. Then fill our queue to the high watermark (`WriteBlocked`,
    // the signal to the application to stop producing) and wait for the stall verdict.
    let chunk = Bytes::from(vec![0x5a; CHUNK]);
    let mut events = Vec::new();
    let end = Instant::now() + Duration::from_secs(20);
    let mut stalled: Option<(Instant, u64)> = None;
    let mut flushed_at = Instant::now(); // when the last poll began (and flushed)
    let (blocked_at, queued) = 'send: loop {
        match (stalled, r.queued(conn)) {
            (None, Some(0)) => r.send(conn, chunk.clone()).map_err(|e| e.to_string())?,
            // The flush at the start of the last poll was not taken in full.
            (None, Some(_)) => stalled = Some((flushed_at, r.stats().bytes_written)),
            (Some(_), Some(_)) => {
                while r.queued(conn).is_some_and(|q| q < 256 * 1024) {
                    r.send(conn, chunk.clone()).map_err(|e| e.to_string())?;
                }
            }
            _ => {}
        }
        flushed_at = Instant::now();
        r.poll(&mut events, Some(Duration::from_millis(50)))
            .map_err(|e| e.to_string())?;
        for ev in events.drain(..) {
            match ev {
                Event::WriteBlocked { queued, .. } if stalled.is_some() => {
                    break 'send (Instant::now(), queued);
                }
                Event::WriteBlocked { .. } => return Err("WriteBlocked before any stall".into()),
                Event::Disconnected { cause, .. } => {
                    row.saw_cause(&cause);
                    return Err(format!("disconnected before blocking: {cause}"));
                }
                _ => {}
            }
        }
        if Instant::now() > end {
            return Err("writes never blocked".into());
        }
    };
    let (stalled_at, absorbed) = stalled.expect("blocked after the stall");
    let (cause, at) = expect_disconnect(&mut r, STALL + PROMPT)?;
    row.saw_cause(&cause);
    row.detect = Some(at - stalled_at);
    let blocked_after = blocked_at - stalled_at;
    row.data = json!({
        "absorbed_bytes": absorbed, "queued_at_block": queued,
        "write_blocked_after_stall_ms": blocked_after.as_secs_f64() * 1e3,
        "stall_timeout_ms": STALL.as_millis() as u64,
    });
    row.note = format!(
        "the kernel absorbed {} before writes blocked; then our queue filled \
         (WriteBlocked at {} KiB); SlowPeer {:.1} s (the stall timeout) after the kernel \
         stopped taking bytes",
        mib(absorbed),
        queued / 1024,
        STALL.as_secs_f64()
    );
    Ok(())
}

// ------------------------------------------------------------------ two boxes

fn hb_args() -> Vec<String> {
    vec![
        "--interval".into(),
        format!("{HB_INTERVAL_MS}ms"),
        "--timeout".into(),
        format!("{HB_TIMEOUT_MS}ms"),
    ]
}

/// `hbpeer listen` in B, `hbpeer connect` in A (our side); both with `extra` options.
/// Returns (ours, theirs) once both saw the connection.
fn connect_across(pair: &netns::NetPair, extra: &[String]) -> Result<(Child, Child), String> {
    let hbpeer = sibling("hbpeer")?;
    let listen = SocketAddr::new(pair.addr_b(), 0).to_string();
    let mut cmd = pair.command_in_b(&hbpeer);
    cmd.args(["listen", &listen]).args(extra);
    let mut theirs = Child::spawn(cmd)?;
    let addr = theirs.expect_line("LISTENING", PROMPT)?.rest;
    let mut cmd = pair.command_in_a(&hbpeer);
    cmd.args(["connect", &addr]).args(extra);
    let mut ours = Child::spawn(cmd)?;
    ours.expect_line("CONNECTED", PROMPT)?;
    theirs.expect_line("ACCEPTED", PROMPT)?;
    Ok((ours, theirs))
}

/// Parse `Cause [key=value]` of a `DISCONNECTED` line into the row.
fn saw_line(row: &mut Row, line: &Line) {
    let cause = line
        .rest
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string();
    row.saw = match cause.as_str() {
        "HeartbeatTimeout" => {
            let ms = field(&line.rest, "silent_for_ms").unwrap_or(f64::NAN);
            Cause::HeartbeatTimeout {
                silent_for: Duration::from_secs_f64(ms.max(0.0) / 1e3),
            }
            .to_string()
        }
        "PeerClosed" => Cause::PeerClosed.to_string(),
        "Reset" => Cause::Reset.to_string(),
        "TimedOut" => Cause::TimedOut.to_string(),
        _ => line.rest.clone(),
    };
    row.cause = cause;
}

fn cable_with_heartbeat(pair: &netns::NetPair, row: &mut Row) -> Result<(), String> {
    let (mut ours, mut theirs) = connect_across(pair, &hb_args())?;
    // Let a few heartbeats go back and forth first.
    std::thread::sleep(Duration::from_millis(3 * HB_INTERVAL_MS));
    let pulled = unix_ms();
    pair.cable(false);
    let wait = Duration::from_millis(HB_TIMEOUT_MS) + PROMPT;
    let gone = ours.expect_line("DISCONNECTED", wait)?;
    saw_line(row, &gone);
    row.detect = Some(ms_between(pulled, gone.unix_ms));
    let other = theirs
        .wait_line("DISCONNECTED", PROMPT)
        .map_or("nothing".to_string(), |l| {
            l.rest.split_whitespace().next().unwrap_or("").to_string()
        });
    row.data = json!({
        "interval_ms": HB_INTERVAL_MS, "timeout_ms": HB_TIMEOUT_MS,
        "silent_for_ms": field(&gone.rest, "silent_for_ms"), "other_side": other,
    });
    row.note = format!(
        "heartbeat {:.1} s / timeout {:.1} s: lost after the timeout, counted from the last \
         byte received; the other side saw {other} too",
        HB_INTERVAL_MS as f64 / 1e3,
        HB_TIMEOUT_MS as f64 / 1e3
    );
    Ok(())
}

fn cable_without_heartbeat(pair: &netns::NetPair, row: &mut Row) -> Result<(), String> {
    let (mut ours, _theirs) = connect_across(pair, &[])?;
    pair.cable(false);
    if let Some(gone) = ours.wait_line("DISCONNECTED", NO_HB_WINDOW) {
        saw_line(row, &gone);
        return Err(format!("a verdict without heartbeat: {}", gone.rest));
    }
    row.cause = "none".into();
    row.saw = format!(
        "nothing within the {:.1} s window",
        NO_HB_WINDOW.as_secs_f64()
    );
    row.data = json!({ "window_ms": NO_HB_WINDOW.as_millis() as u64 });
    row.note = "an idle connection whose cable is pulled stays \"up\" forever (while sending: \
                ~15 min of retransmissions): network loss needs a heartbeat"
        .into();
    Ok(())
}

fn cable_back_in_time(pair: &netns::NetPair, row: &mut Row) -> Result<(), String> {
    let mut extra = hb_args();
    extra.extend(
        [
            "--seq",
            "--seq-every",
            "20ms",
            "--seq-count",
            &SEQ_COUNT.to_string(),
        ]
        .map(String::from),
    );
    let (mut ours, mut theirs) = connect_across(pair, &extra)?;
    // Both streams are flowing; then the cable goes out for a while.
    let seq_at_least =
        |n: u64| move |l: &Line| l.kind == "SEQ_OK" && l.rest.parse::<u64>().is_ok_and(|k| k >= n);
    ours.wait_for(PROMPT, seq_at_least(10))
        .ok_or("our side's stream did not start")?;
    theirs
        .wait_for(PROMPT, seq_at_least(10))
        .ok_or("their stream did not start")?;
    pair.cable(false);
    std::thread::sleep(OUTAGE);
    pair.cable(true);
    let plugged = unix_ms();
    let wait = Duration::from_secs(10);
    let last_ours = ours.wait_for(wait, seq_at_least(SEQ_COUNT));
    let last_theirs = theirs.wait_for(wait, seq_at_least(SEQ_COUNT));
    // Then heartbeats alone must keep it alive for longer than the timeout.
    let hold = Duration::from_millis(HB_TIMEOUT_MS + 500);
    let gone = ours.wait_line("DISCONNECTED", hold);
    let bad = |c: &Child| {
        c.seen
            .iter()
            .any(|l| l.kind == "SEQ_BAD" || l.kind == "DISCONNECTED")
    };
    if let Some(g) = &gone {
        saw_line(row, g);
        return Err(format!("lost the connection: {}", g.rest));
    }
    if last_ours.is_none() || last_theirs.is_none() || bad(&ours) || bad(&theirs) {
        return Err(format!(
            "stream incomplete or out of order: ours {:?}, theirs {:?}",
            ours.seen.iter().rev().take(3).collect::<Vec<_>>(),
            theirs.seen.iter().rev().take(3).collect::<Vec<_>>()
        ));
    }
    // The longest gap between numbers our side received: the outage as the app saw it.
    let stamps: Vec<f64> = ours
        .seen
        .iter()
        .filter(|l| l.kind == "SEQ_OK")
        .map(|l| l.unix_ms)
        .collect();
    let gap = stamps.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
    let resumed = stamps.iter().find(|&&t| t >= plugged).map(|t| t - plugged);
    row.cause = "survived".into();
    row.saw = "no disconnect; every number arrived, in order".into();
    row.data = json!({
        "outage_ms": OUTAGE.as_millis() as u64, "timeout_ms": HB_TIMEOUT_MS,
        "numbers_each_way": SEQ_COUNT, "longest_gap_ms": gap, "resumed_after_replug_ms": resumed,
    });
    row.note = format!(
        "cable out {:.1} s (timeout {:.1} s): both {SEQ_COUNT}-number streams complete and in \
         order; longest gap {gap:.0} ms (TCP retransmits with back-off); still up {:.1} s later",
        OUTAGE.as_secs_f64(),
        HB_TIMEOUT_MS as f64 / 1e3,
        hold.as_secs_f64()
    );
    Ok(())
}

fn killed_across(pair: &netns::NetPair, row: &mut Row) -> Result<(), String> {
    let (mut ours, mut theirs) = connect_across(pair, &hb_args())?;
    let killed = unix_ms();
    theirs.kill();
    let gone = ours.expect_line("DISCONNECTED", PROMPT)?;
    saw_line(row, &gone);
    row.detect = Some(ms_between(killed, gone.unix_ms));
    row.note = format!(
        "a crash is seen at once, long before the {:.1} s heartbeat timeout that a pulled \
         cable needs: crash and network loss are told apart",
        HB_TIMEOUT_MS as f64 / 1e3
    );
    Ok(())
}

// ------------------------------------------------------------------ helpers: our reactor

fn reactor_listening(cfg: ConnConfig) -> Result<(Reactor, SocketAddr), String> {
    let mut r = Reactor::new(ReactorConfig::default()).map_err(|e| e.to_string())?;
    let l = r
        .listen("127.0.0.1:0".parse().expect("addr"), cfg)
        .map_err(|e| e.to_string())?;
    let addr = r.local_addr(l).map_err(|e| e.to_string())?;
    Ok((r, addr))
}

/// Poll until `pred` matches an event; the event and the instant its turn returned.
fn poll_until(
    r: &mut Reactor,
    timeout: Duration,
    mut pred: impl FnMut(&Event) -> bool,
) -> Option<(Event, Instant)> {
    let end = Instant::now() + timeout;
    let mut events = Vec::new();
    loop {
        let left = end.checked_duration_since(Instant::now())?;
        r.poll(&mut events, Some(left)).ok()?;
        let at = Instant::now();
        if let Some(ev) = events.drain(..).find(&mut pred) {
            return Some((ev, at));
        }
    }
}

fn expect_accept(r: &mut Reactor, timeout: Duration) -> Result<heartloop::ConnId, String> {
    match poll_until(r, timeout, |e| matches!(e, Event::Accepted { .. })) {
        Some((Event::Accepted { conn, .. }, _)) => Ok(conn),
        _ => Err("the peer never connected".into()),
    }
}

fn expect_disconnect(r: &mut Reactor, timeout: Duration) -> Result<(Cause, Instant), String> {
    match poll_until(r, timeout, |e| matches!(e, Event::Disconnected { .. })) {
        Some((Event::Disconnected { cause, .. }, at)) => Ok((cause, at)),
        _ => Err(format!("no disconnect within {timeout:?}")),
    }
}

/// The variant name of a cause (`HeartbeatTimeout`, `Reset`, ...).
fn variant(c: &Cause) -> String {
    let dbg = format!("{c:?}");
    dbg.split(|ch: char| !ch.is_alphanumeric())
        .next()
        .unwrap_or("")
        .to_string()
}

// ------------------------------------------------------------------ helpers: child processes

/// A sibling example binary (`target/<profile>/examples/<name>`), built on first use.
fn sibling(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = exe.parent().ok_or("no directory")?;
    let bin = dir.join(name);
    if bin.exists() {
        return Ok(bin);
    }
    // `cargo run --example experiments` builds this example only: build the peers too,
    // with the same profile (the directory above `examples/`).
    let profile = dir
        .parent()
        .and_then(|p| p.file_name())
        .and_then(|p| p.to_str())
        .unwrap_or("debug");
    let profile = if profile == "debug" { "dev" } else { profile };
    eprintln!("building the {name} example ({profile} profile)...");
    let st = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--profile", profile, "--example", name])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run cargo to build {name}: {e}"))?;
    if st.success() && bin.exists() {
        Ok(bin)
    } else {
        Err(format!("building the {name} example failed ({st})"))
    }
}

fn peer_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(sibling("peer").unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(1)
    }));
    c.args(args);
    c
}

/// One stdout line of a child, with when it arrived. `hbpeer` lines are
/// `KIND <unix_ms> <rel_ms> rest`; `peer` lines are `KIND rest`.
#[derive(Debug, Clone)]
struct Line {
    kind: String,
    unix_ms: f64,
    rest: String,
    at: Instant,
}

impl Line {
    fn parse(s: &str, at: Instant) -> Line {
        let mut it = s.splitn(2, ' ');
        let kind = it.next().unwrap_or("").to_string();
        let tail = it.next().unwrap_or("").trim();
        // hbpeer: two numbers first.
        let parts: Vec<&str> = tail.splitn(3, ' ').collect();
        match (
            parts.first().and_then(|p| p.parse::<f64>().ok()),
            parts.get(1).and_then(|p| p.parse::<f64>().ok()),
        ) {
            (Some(unix_ms), Some(_)) if parts[0].contains('.') => Line {
                kind,
                unix_ms,
                rest: parts.get(2).unwrap_or(&"").trim().to_string(),
                at,
            },
            _ => Line {
                kind,
                unix_ms: f64::NAN,
                rest: tail.to_string(),
                at,
            },
        }
    }
}

/// A child process (killed by pid and reaped on drop) whose stdout lines are collected.
struct Child {
    child: std::process::Child,
    lines: Receiver<Line>,
    seen: Vec<Line>,
}

impl Child {
    fn spawn(mut cmd: Command) -> Result<Child, String> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn {cmd:?}: {e}"))?;
        let out = child.stdout.take().expect("piped");
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(Line::parse(&line, Instant::now())).is_err() {
                    break;
                }
            }
        });
        Ok(Child {
            child,
            lines: rx,
            seen: Vec::new(),
        })
    }

    /// The next line (after those seen) matching `pred`, within `timeout`.
    fn wait_for(&mut self, timeout: Duration, mut pred: impl FnMut(&Line) -> bool) -> Option<Line> {
        let end = Instant::now() + timeout;
        loop {
            let left = end.checked_duration_since(Instant::now())?;
            let line = self.lines.recv_timeout(left).ok()?;
            self.seen.push(line.clone());
            if pred(&line) {
                return Some(line);
            }
        }
    }

    fn wait_line(&mut self, kind: &str, timeout: Duration) -> Option<Line> {
        self.wait_for(timeout, |l| l.kind == kind)
    }

    fn expect_line(&mut self, kind: &str, timeout: Duration) -> Result<Line, String> {
        self.wait_line(kind, timeout).ok_or_else(|| {
            let seen: Vec<String> = self
                .seen
                .iter()
                .map(|l| format!("{} {}", l.kind, l.rest))
                .collect();
            format!("no {kind} line within {timeout:?} (saw {seen:?})")
        })
    }

    fn signal(&self, sig: &str) -> Result<(), String> {
        let st = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .map_err(|e| e.to_string())?;
        st.success()
            .then_some(())
            .ok_or_else(|| format!("kill -{sig} failed"))
    }

    /// Wait until the process is stopped (state `T` in /proc/<pid>/stat).
    fn wait_stopped(&self, timeout: Duration) -> Result<(), String> {
        let end = Instant::now() + timeout;
        let path = format!("/proc/{}/stat", self.child.id());
        while Instant::now() < end {
            let stat = std::fs::read_to_string(&path).unwrap_or_default();
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next());
            if state == Some("T") {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Err("the peer did not stop".into())
    }

    /// SIGKILL (this pid only) and reap.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill();
    }
}

// ------------------------------------------------------------------ helpers: output

fn unix_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
        * 1e3
}

fn ms_between(from_ms: f64, to_ms: f64) -> Duration {
    Duration::from_secs_f64(((to_ms - from_ms) / 1e3).max(0.0))
}

/// `key=<number>` in a line's details.
fn field(rest: &str, key: &str) -> Option<f64> {
    rest.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

fn fmt_detect(d: Option<Duration>) -> String {
    match d {
        None => "—".into(),
        Some(d) if d < Duration::from_millis(1) => "< 1 ms".into(),
        Some(d) if d < Duration::from_secs(1) => format!("{} ms", d.as_millis()),
        Some(d) => format!("{:.2} s", d.as_secs_f64()),
    }
}

fn print_table(rows: &[Row]) {
    println!("| scenario | what our side saw (cause) | time to detect | note |");
    println!("|---|---|---|---|");
    for r in rows {
        let (saw, note) = match &r.skipped {
            Some(reason) => ("skipped".to_string(), format!("skipped: {reason}")),
            None if r.cause == "none" || r.cause == "survived" || r.cause == "error" => {
                (r.saw.clone(), r.note.clone())
            }
            None => (format!("{} (`{}`)", r.saw, r.cause), r.note.clone()),
        };
        println!(
            "| {} | {} | {} | {} |",
            r.scenario,
            saw,
            fmt_detect(r.detect),
            note
        );
    }
}
