//! Helpers shared by the integration tests: spawning peer processes (the `peer` and other
//! examples), driving a reactor until an event shows up, and stepped time (a reactor on a
//! manual clock: see the section at the end).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use heartloop::{Clock, Event, Reactor, ReactorConfig};

/// Path of an example binary (`peer`, `echo`, ...), built once per test process with
/// `cargo build --example` in the test's own profile, so that an example edited since
/// the last full `cargo test` is never run stale (`cargo test --test X` builds no
/// examples). When everything is fresh this costs a fraction of a second.
#[track_caller]
pub fn example_bin(name: &str) -> PathBuf {
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test-binary> -> target/<profile>/examples/<name>
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("examples").join(name);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.iter().any(|n| n == name) {
        let release = dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        // `-p heartloop`: the examples are the root package's, and a test of another
        // workspace member (examples/latency) runs with that member's directory as cwd.
        cmd.args(["build", "--quiet", "-p", "heartloop", "--example", name]);
        if release {
            cmd.arg("--release");
        }
        let st = cmd.status().expect("cargo build --example");
        assert!(st.success(), "building example {name} failed");
        built.push(name.to_string());
    }
    bin
}

/// A child process whose stdout lines are collected; killed (SIGKILL) and reaped on drop.
pub struct Proc {
    pub child: Child,
    lines: Receiver<String>,
    pub seen: Vec<String>,
}

impl Proc {
    /// Spawn `program args...`.
    pub fn spawn(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Proc {
        let mut cmd = Command::new(program);
        cmd.args(args);
        Proc::from_command(cmd)
    }

    /// Spawn the `peer` example with `args`.
    pub fn peer(args: &[&str]) -> Proc {
        Proc::spawn(example_bin("peer"), args)
    }

    pub fn from_command(mut cmd: Command) -> Proc {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let (tx, rx) = channel();
        pump_lines(child.stdout.take().unwrap(), tx);
        Proc {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait for a stdout line starting with `prefix`; returns the rest of the line.
    #[track_caller]
    pub fn expect_line(&mut self, prefix: &str, timeout: Duration) -> String {
        match self.wait_line(prefix, timeout) {
            Some(rest) => rest,
            None => panic!(
                "no line starting with {prefix:?} within {timeout:?}; saw {:?}",
                self.seen
            ),
        }
    }

    /// The address a server prints first after `prefix` in its startup line (`broker
    /// listening on 127.0.0.1:4222 ...`), waiting up to `timeout` for that line.
    #[track_caller]
    pub fn expect_addr(&mut self, prefix: &str, timeout: Duration) -> std::net::SocketAddr {
        let rest = self.expect_line(prefix, timeout);
        rest.split_whitespace()
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address after {prefix:?} in {rest:?}"))
    }

    /// Like `expect_line`, but `None` on timeout or exit.
    pub fn wait_line(&mut self, prefix: &str, timeout: Duration) -> Option<String> {
        let end = Instant::now() + timeout;
        loop {
            let left = end.checked_duration_since(Instant::now())?;
            let line = self.lines.recv_timeout(left).ok()?;
            self.seen.push(line.clone());
            if let Some(rest) = line.strip_prefix(prefix) {
                return Some(rest.trim().to_string());
            }
        }
    }

    /// Send a signal by name (`KILL`, `STOP`, `CONT`, `TERM`) to this child only.
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(st.success(), "kill -{sig} {} failed", self.pid());
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// CPU time (user + system) the process used so far, from /proc/<pid>/stat.
    pub fn cpu_time(&self) -> Duration {
        cpu_time_of(self.pid())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Forward every line of `src` (a child's stdout or stderr) to `tx` from a thread of its
/// own, until the stream ends or nobody listens.
pub fn pump_lines(src: impl std::io::Read + Send + 'static, tx: std::sync::mpsc::Sender<String>) {
    std::thread::spawn(move || {
        for line in BufReader::new(src).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
}

/// CPU time of a process: the sum of its threads' time on a CPU in nanoseconds
/// (`/proc/<pid>/task/*/schedstat`), or, where that is missing, user + system time from
/// `/proc/<pid>/stat` (in clock ticks, 10 ms here: a thread that works in bursts shorter
/// than a tick is counted by where the ticks fall, so small figures are noise).
pub fn cpu_time_of(pid: u32) -> Duration {
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        let ns: Option<u64> = tasks
            .flatten()
            .map(|t| {
                std::fs::read_to_string(t.path().join("schedstat"))
                    .ok()
                    .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            })
            .sum();
        if let Some(ns) = ns.filter(|&ns| ns > 0) {
            return Duration::from_nanos(ns);
        }
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the ")" that ends the command name; utime and stime are fields 14, 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    static HZ: OnceLock<u64> = OnceLock::new();
    let hz = *HZ.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    });
    Duration::from_millis(ticks * 1000 / hz)
}

/// Resident set size of this process in KiB (VmRSS).
pub fn rss_kib() -> u64 {
    rss_kib_of("self")
}

/// Resident set size of a process in KiB (VmRSS), `who` = pid or "self".
pub fn rss_kib_of(who: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{who}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Poll `r` until `pred` matches an event or `timeout` passes. Every event seen is kept in
/// `log`. Returns the matching event and the instant the turn that produced it returned.
pub fn poll_until(
    r: &mut Reactor,
    log: &mut Vec<Event>,
    timeout: Duration,
    mut pred: impl FnMut(&Event) -> bool,
) -> Option<(Event, Instant)> {
    let end = Instant::now() + timeout;
    let mut evs = Vec::new();
    loop {
        let left = end.checked_duration_since(Instant::now())?;
        r.poll(&mut evs, Some(left.min(Duration::from_millis(50))))
            .expect("poll");
        let at = Instant::now();
        let mut hit = None;
        for ev in evs.drain(..) {
            if hit.is_none() && pred(&ev) {
                hit = Some(ev.clone());
            }
            log.push(ev);
        }
        if let Some(ev) = hit {
            return Some((ev, at));
        }
    }
}

/// `poll_until`, panicking with the events seen when nothing matched.
#[track_caller]
pub fn expect_event(
    r: &mut Reactor,
    log: &mut Vec<Event>,
    timeout: Duration,
    what: &str,
    pred: impl FnMut(&Event) -> bool,
) -> (Event, Instant) {
    match poll_until(r, log, timeout, pred) {
        Some(x) => x,
        None => panic!("no {what} within {timeout:?}; events: {log:?}"),
    }
}

/// Poll for `d`, collecting every event.
pub fn poll_for(r: &mut Reactor, log: &mut Vec<Event>, d: Duration) {
    let _ = poll_until(r, log, d, |_| false);
}

// Added for tests/backpressure.rs: children that log to stderr (examples/common/logger.rs),
// e.g. the `echo` example, which prints `echo listening on ADDR` there.
impl Proc {
    /// Like [`Proc::from_command`], but the child's stderr lines are collected too,
    /// interleaved with its stdout lines as they arrive.
    pub fn from_command_with_stderr_lines(mut cmd: Command) -> Proc {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let (tx, rx) = channel();
        pump_lines(child.stdout.take().unwrap(), tx.clone());
        pump_lines(child.stderr.take().unwrap(), tx);
        Proc {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Wait for a line that contains `needle` anywhere (log lines start with a timestamp
    /// and level); returns the rest of the line after it, trimmed. `None` on timeout/exit.
    pub fn wait_line_containing(&mut self, needle: &str, timeout: Duration) -> Option<String> {
        let end = Instant::now() + timeout;
        loop {
            let left = end.checked_duration_since(Instant::now())?;
            let line = self.lines.recv_timeout(left).ok()?;
            self.seen.push(line.clone());
            if let Some((_, rest)) = line.split_once(needle) {
                return Some(rest.trim().to_string());
            }
        }
    }

    /// The lines received so far and not yet looked at, without waiting (kept in `seen`).
    pub fn drain_lines(&mut self) -> Vec<String> {
        let new: Vec<String> = self.lines.try_iter().collect();
        self.seen.extend(new.iter().cloned());
        new
    }
}

// Added for tests/disconnect.rs.

/// `(send queue, receive queue)` in bytes of the established IPv4 TCP socket whose local
/// address is `local`, from /proc/net/tcp (tx_queue: sent and not yet acknowledged;
/// rx_queue: received and not yet read by its process). `None` if there is no such socket.
pub fn tcp_queues(local: std::net::SocketAddr) -> Option<(u64, u64)> {
    let std::net::SocketAddr::V4(v4) = local else {
        return None;
    };
    // The kernel prints the address as the in-memory u32 in hex, the port in host order.
    let want = format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(v4.ip().octets()),
        v4.port()
    );
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // sl local_address rem_address st tx_queue:rx_queue ...; st 01 = ESTABLISHED.
        if f.len() < 5 || f[1] != want || f[3] != "01" {
            return None;
        }
        let (tx, rx) = f[4].split_once(':')?;
        Some((
            u64::from_str_radix(tx, 16).ok()?,
            u64::from_str_radix(rx, 16).ok()?,
        ))
    })
}

// ------------------------------------------------------------------ stepped time
//
// A reactor on a manual clock (`Clock::manual`) runs its deadlines (connect timeout, stall,
// linger, heartbeat, user timers) at the clock's time and its sockets in real time. These
// helpers keep the two apart: the clock moves only when a test says so (`advance`, `step`);
// between moves the reactor turns at the clock's standing time until what the sockets were
// doing has arrived. Real time only bounds those waits against a hang
// ([`SOCKET_WAIT`]): it is never a tolerance of an assertion.

/// Hang guard for socket-level waits in stepped-time tests (bytes crossing loopback, a
/// process starting): generous, as it is never a tolerance.
pub const SOCKET_WAIT: Duration = Duration::from_secs(20);

/// Real time without any OS readiness or event after which [`settle`] takes the sockets to
/// be quiet.
pub const QUIET: Duration = Duration::from_millis(20);

/// A reactor on a fresh manual clock. Its timer wheel and heartbeat grid start at the
/// clock's time zero, so deadlines set at whole-millisecond (whole-slack) offsets from it
/// are due exactly there.
pub fn manual_reactor(cfg: ReactorConfig) -> (Reactor, Clock) {
    let clock = Clock::manual();
    let r = Reactor::with_clock(cfg, clock.clone()).expect("reactor");
    (r, clock)
}

/// One turn at the clock's standing time, waiting at most `wait` of real time for I/O.
/// Events go to `log`; returns how many came.
pub fn turn(r: &mut Reactor, log: &mut Vec<Event>, wait: Duration) -> usize {
    let before = log.len();
    r.poll(log, Some(wait)).expect("poll");
    log.len() - before
}

/// Turns at the clock's standing time until `done(reactor, log)` holds (checked first
/// without a turn). Each turn waits at most 5 ms of real time for I/O. Panics with the
/// events seen after [`SOCKET_WAIT`].
#[track_caller]
pub fn turn_until(
    r: &mut Reactor,
    log: &mut Vec<Event>,
    what: &str,
    mut done: impl FnMut(&Reactor, &[Event]) -> bool,
) {
    let end = Instant::now() + SOCKET_WAIT;
    while !done(r, log) {
        assert!(
            Instant::now() < end,
            "no {what} within {SOCKET_WAIT:?} of real time; events: {log:?}"
        );
        turn(r, log, Duration::from_millis(5));
    }
}

/// Turns at the clock's standing time until [`QUIET`] of real time passed without OS
/// readiness or an event: what was in flight has arrived (use [`turn_until`] when the test
/// knows what it waits for). Returns the events of these turns.
#[track_caller]
pub fn settle(r: &mut Reactor, log: &mut Vec<Event>) -> Vec<Event> {
    let start = log.len();
    let end = Instant::now() + SOCKET_WAIT;
    let mut quiet = Duration::ZERO;
    while quiet < QUIET {
        assert!(
            Instant::now() < end,
            "never quiet within {SOCKET_WAIT:?} of real time; events: {log:?}"
        );
        let os = r.stats().os_events;
        let t = Instant::now();
        let n = turn(r, log, Duration::from_millis(5));
        if n == 0 && r.stats().os_events == os {
            quiet += t.elapsed();
        } else {
            quiet = Duration::ZERO;
        }
    }
    log[start..].to_vec()
}

/// Move the manual clock by `by` and run one non-blocking turn at the new time: the
/// deadlines now due fire in it (after its I/O), and what they write leaves at once.
/// Returns the events of that turn.
pub fn advance(r: &mut Reactor, clock: &Clock, by: Duration, log: &mut Vec<Event>) -> Vec<Event> {
    clock.advance(by);
    let start = log.len();
    turn(r, log, Duration::ZERO);
    log[start..].to_vec()
}

/// [`advance`], then [`settle`]: returns every event of the step.
#[track_caller]
pub fn step(r: &mut Reactor, clock: &Clock, by: Duration, log: &mut Vec<Event>) -> Vec<Event> {
    let start = log.len();
    advance(r, clock, by, log);
    settle(r, log);
    log[start..].to_vec()
}

/// The events of `log` that match `pred`.
pub fn matching(log: &[Event], pred: impl Fn(&Event) -> bool) -> Vec<Event> {
    log.iter().filter(|e| pred(e)).cloned().collect()
}

// ------------------------------------------------------------------ small shared helpers

/// `n` milliseconds.
pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// How long the helpers below wait for an event before failing.
pub const EVENT_WAIT: Duration = Duration::from_secs(10);

/// A reactor (default config) listening on 127.0.0.1 with `cfg`, and its address.
pub fn listening(cfg: heartloop::ConnConfig) -> (Reactor, std::net::SocketAddr) {
    listening_with(ReactorConfig::default(), cfg)
}

/// A reactor with `rcfg` listening on 127.0.0.1 with `cfg`, and its address.
pub fn listening_with(
    rcfg: ReactorConfig,
    cfg: heartloop::ConnConfig,
) -> (Reactor, std::net::SocketAddr) {
    let mut r = Reactor::new(rcfg).expect("reactor");
    let l = r
        .listen("127.0.0.1:0".parse().unwrap(), cfg)
        .expect("listen");
    let addr = r.local_addr(l).expect("local_addr");
    (r, addr)
}

/// Polls until a listener accepted a connection; returns it and when its turn returned
/// (right after that turn, so the caller acts before the reactor's next one).
#[track_caller]
pub fn accept_at(r: &mut Reactor, log: &mut Vec<Event>) -> (heartloop::ConnId, Instant) {
    let (ev, at) = expect_event(r, log, EVENT_WAIT, "Accepted", |e| {
        matches!(e, Event::Accepted { .. })
    });
    (ev.conn().expect("conn"), at)
}

/// [`accept_at`] without the time.
#[track_caller]
pub fn accept(r: &mut Reactor, log: &mut Vec<Event>) -> heartloop::ConnId {
    accept_at(r, log).0
}

/// The cause of `conn`'s end: from the events seen so far, or polling for it.
#[track_caller]
pub fn end_of(r: &mut Reactor, log: &mut Vec<Event>, conn: heartloop::ConnId) -> heartloop::Cause {
    let is_end = |e: &Event| matches!(e, Event::Disconnected { conn: c, .. } if *c == conn);
    let ev = match log.iter().find(|e| is_end(e)) {
        Some(ev) => ev.clone(),
        None => expect_event(r, log, EVENT_WAIT, "Disconnected", is_end).0,
    };
    match ev {
        Event::Disconnected { cause, .. } => cause,
        _ => unreachable!(),
    }
}

/// Runs tests of one binary that must not overlap (they measure memory or timing of the
/// whole process) one at a time: hold the guard for the test's length.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

// Added for tests/examples_cli.rs and the broker's tests: the examples' command lines.

/// Checks that `program --help` exits 0 with a usage line and lists every long option that
/// `source` (the program's main file) matches as `Long("NAME")` (lexopt), as a whole word.
#[track_caller]
pub fn assert_help_lists_every_option(name: &str, program: &std::path::Path, source: &str) {
    let src = std::fs::read_to_string(source).unwrap_or_else(|e| panic!("read {source}: {e}"));
    let options: Vec<String> = src
        .split("Long(\"")
        .skip(1)
        .filter_map(|rest| rest.split_once('"').map(|(opt, _)| format!("--{opt}")))
        .collect();
    assert!(
        options.iter().any(|o| o == "--help"),
        "{name}: no --help in {source}"
    );
    let out = Command::new(program)
        .arg("--help")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {name}: {e}"));
    let help = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{name} --help: {out:?}");
    assert!(
        help.contains("usage:"),
        "{name} --help has no usage line:\n{help}"
    );
    for opt in &options {
        // Whole words only: `--seq` must not be found inside `--seq-every`.
        let listed = help.match_indices(opt.as_str()).any(|(i, _)| {
            let next = help[i + opt.len()..].chars().next();
            !next.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-')
        });
        assert!(listed, "{name} --help does not list {opt}:\n{help}");
    }
}

/// Checks that `program --no-such-option` exits 2 saying so, and points to `--help`.
#[track_caller]
pub fn assert_rejects_unknown_option(name: &str, program: &std::path::Path) {
    let out = Command::new(program)
        .arg("--no-such-option")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {name}: {e}"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{name}: {out:?}");
    assert!(
        err.starts_with(&format!("{name}: invalid option '--no-such-option'")),
        "{name}: {err}"
    );
    assert!(
        err.contains("--help"),
        "{name} does not point to --help: {err}"
    );
}
