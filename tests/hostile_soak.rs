//! Hostile-peer soak: the echo example (`--framing ld`, explicit limits) under adversarial
//! peers while healthy peers measure their round trips.
//!
//! Run: `cargo test --release -p heartloop-tests --test hostile_soak -- --ignored --nocapture`.
//! Environment: `HEARTLOOP_HOSTILE_SECS` (seconds of quiet and of attack each, default 10;
//! CI uses 4), `HEARTLOOP_HOSTILE_STRICT` (assert the timing bounds: `1`, the default
//! outside CI; `0`, the default when `CI` is set: see "Strict and CI runs" below),
//! `HEARTLOOP_HOSTILE_ATTACKS=ping,zero,...` (only these attacks, to find which
//! one moves a figure; names in `examples/attacker.rs`), `HEARTLOOP_HOSTILE_NICE` (the
//! nice value of the server, the healthy peers and the probe, default -10; 0 = leave it),
//! `HEARTLOOP_HOSTILE_WINDOW_SECS` (length of a window, default 1),
//! `HEARTLOOP_HOSTILE_ECHO_ARGS` (more options for the echo, e.g. `--always-zero-copy`),
//! `HEARTLOOP_HOSTILE_ATTACKER_ARGS` (options for the attacker, after the test's own, e.g.
//! `--non-readers 40 --non-reader-rate 1000m`).
//!
//! * Healthy peers: [`HEALTHY`] threads of this process, each with a blocking socket, do
//!   closed-loop round trips of [`PAYLOAD`]-byte data frames, one started every [`PACE`]
//!   (a latency probe, not a load), answering the server's pings if any. Every echo is
//!   checked byte for byte; none may fail or be disconnected.
//! * Quiet and attack windows alternate ([`WINDOW_SECS`] each, then a last quiet window),
//!   so that the noise of a shared machine, which comes and goes over seconds, falls on
//!   both alike. In an attack window the `attacker` example runs in a process of its own
//!   (its CPU is accounted apart, this process stays light): ping flood and zero-length
//!   frame flood from peers that never read, claimed-length frames (a header announcing
//!   the largest frame, one byte, silence), byte-at-a-time writers (one byte per ms),
//!   slowloris (500 connections holding 3 bytes of a header), a connect/reset storm, and
//!   non-readers sending 1 KiB frames or 1-byte frames (drip). Every attack is bounded in
//!   connections and rate; the attacker stops by itself at the end of the window, and its
//!   ~600 connections end at once (inside the attack window too). About 1,250 file
//!   descriptors per process at most.
//! * A probe thread ([`probe`]) measures what the machine itself does to a thread at the
//!   server's priority: how late a 1 ms sleep wakes, how much a fixed computation is
//!   stretched. It tells the machine's stalls from the server's.
//!
//! It prints a table (healthy p50/p99/p99.9/max quiet and under attack, server RSS, CPU of
//! the server, the attacker and the machine, the probe), the attack volumes, the memory
//! bound, the longest turn and what its poll call did, and asserts:
//!
//! * peak RSS (VmHWM) of the server ≤ the memory the configured limits let the attackers
//!   fill, plus [`RSS_CONSTANT`] (the rule is spelled out at [`memory_bound`]);
//! * no healthy peer is disconnected and every healthy round trip echoes what was sent;
//!   the byte-at-a-time attackers' echoes are checked too; every attack sent something;
//! * strict runs only (see below): the longest turn < 10 ms (50 ms in a debug build,
//!   which is ~10× slower) plus the machine's stall measured by the probe (see
//!   [`turn_bound_us`]); healthy p99 under attack ≤ 2 × the quiet p99 plus twice the
//!   machine's own slowdown under attack as the probe measured it (see [`p99_bound`]); and at
//!   least 100 healthy round trips per peer per second of each kind of window.
//!
//! # Strict and CI runs
//!
//! The memory bound and the correctness checks do not depend on the machine's speed; the
//! timing bounds do: a turn or a round trip on a shared, noisy machine (a CI runner, two
//! cores shared with the attacker and other builds) holds whatever stopped the server,
//! and a healthy peer's p99 moves with the machine's load. So the timing bounds are
//! asserted only in a strict run: `HEARTLOOP_HOSTILE_STRICT=1`, the default when `CI` is
//! not set (a run by hand). Under `CI` they are measured and printed, not asserted (the
//! output says so in capitals); `HEARTLOOP_HOSTILE_STRICT=1` asserts them there too.

#[path = "util/soak.rs"]
mod soak;
mod util;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use soak::{
    Kind, Watch, cores, new_hist, p99_bound, probe, probe_rise, run_windows, set_nice, stat,
    strict, sum_attacks, turn_bound_us, us, vm_kib,
};
use util::Proc;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// Healthy peers.
const HEALTHY: usize = 10;
/// Payload of a healthy peer's frame.
const PAYLOAD: usize = 48;
/// A healthy peer starts a round trip at most this often.
const PACE: Duration = Duration::from_millis(1);
/// A healthy peer that waits this long for its echo has failed.
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(10);

/// The echo's limits: largest frame, per-connection outbound hard limit (cut as a slow
/// peer beyond it), reactor-wide cap on queued bytes (the largest queues cut beyond it).
const MAX_FRAME: u64 = MIB;
const MAX_QUEUED: u64 = 256 * KIB;
const MAX_TOTAL_QUEUED: u64 = 4 * MIB;
/// The echo's `SO_SNDBUF`: small, so that a peer that does not read fills the echo's own
/// queue (and its limits) within seconds instead of first parking 4 MiB in the kernel
/// (Linux's send-buffer autotuning, `net.ipv4.tcp_wmem`).
const SNDBUF: u64 = 32 * KIB;

/// The attack (see examples/attacker.rs); rates per connection.
const PING_FLOOD: u64 = 2;
const PING_RATE: u64 = 2 * MIB;
const ZERO_FLOOD: u64 = 2;
const ZERO_RATE: u64 = 2 * MIB;
const CLAIM: u64 = 50;
const BYTE_AT_A_TIME: u64 = 20;
const SLOWLORIS: u64 = 500;
const STORM_RATE: u64 = 500;
const NON_READERS: u64 = 10;
const NON_READER_RATE: u64 = 512 * KIB;
const DRIP: u64 = 10;
const DRIP_RATE: u64 = 1000;

/// Size of the reactor's shared read-buffer chunks, and the most it reserves for a frame
/// whose header claims more (`src/reactor/read.rs`: `READ_BUF`, `PARTIAL_RESERVE`).
const CHUNK: u64 = 64 * KIB;

/// What the server's RSS may hold beyond what the limits let attackers fill. Measured
/// here: the echo starts at ~3 MiB (binary, libc, the logger, the 64 KiB read buffer, the
/// mio event array) and peaks at 5-7 MiB under this attack. What it holds beyond the
/// limit terms of [`memory_bound`]: ~1 KiB per connection in the reactor (slab entry,
/// outbound queue, lifecycle; ~650 at once here), and what glibc's allocator keeps after
/// freeing it (read chunks freed out of order, queues that grew and shrank, the storm's
/// connections): a few MiB. 32 MiB is room for that, not for a leak or an amplification,
/// which grow with the attack's length: before the reactor copied short payloads out of
/// its read buffer, turning off the echo's own copy of waiting payloads
/// (`HEARTLOOP_HOSTILE_ECHO_ARGS=--always-zero-copy`) took it to 43 MiB in 8 s windows;
/// now 5.6 MiB, as with the copy.
const RSS_CONSTANT: u64 = 32 * MIB;

/// Length of a quiet or attack window (about; `secs` is split into whole windows). Short,
/// so that quiet and attack windows alternate often: the noise of a shared machine comes
/// and goes over seconds.
const WINDOW_SECS: f64 = 1.0;

/// A length-delimited frame header: 4-byte big-endian length, kind byte.
fn header(len: usize, kind: u8) -> [u8; 5] {
    let l = (len as u32).to_be_bytes();
    [l[0], l[1], l[2], l[3], kind]
}

/// What one healthy peer measured.
struct Healthy {
    hist: Vec<Histogram<u64>>,
    pings_answered: u64,
    error: Option<String>,
}

/// One healthy peer: closed-loop round trips, one started every [`PACE`], until `stop`;
/// round-trip times (ns) go into the histogram of the window the round trip started in.
fn healthy_peer(
    id: usize,
    addr: SocketAddr,
    window: &AtomicUsize,
    stop: &AtomicBool,
    connected: &Barrier,
    nice: i32,
) -> Healthy {
    if nice != 0 {
        set_nice(0, nice);
    }
    let mut h = Healthy {
        hist: Vec::new(),
        pings_answered: 0,
        error: None,
    };
    let sock = TcpStream::connect(addr).and_then(|s| {
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(HEALTHY_TIMEOUT))?;
        Ok(s)
    });
    connected.wait();
    let mut s = match sock {
        Ok(s) => s,
        Err(e) => {
            h.error = Some(format!("peer {id}: connect: {e}"));
            return h;
        }
    };
    let mut frame = Vec::with_capacity(5 + PAYLOAD);
    let mut got = vec![0u8; PAYLOAD];
    let mut next = Instant::now();
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        // Payload: peer id, sequence number, then bytes that depend on both.
        frame.clear();
        frame.extend_from_slice(&header(PAYLOAD, 0));
        frame.push(id as u8);
        frame.extend_from_slice(&seq.to_be_bytes());
        frame.extend((9..PAYLOAD).map(|i| (seq as usize * 31 + i * 7 + id) as u8));
        let w = window.load(Ordering::Relaxed);
        let t0 = Instant::now();
        if let Err(e) = s.write_all(&frame) {
            h.error = Some(format!("peer {id}: write of round trip {seq}: {e}"));
            return h;
        }
        // Read frames until the echo: answer pings, skip pongs.
        loop {
            let mut hd = [0u8; 5];
            if let Err(e) = s.read_exact(&mut hd) {
                h.error = Some(format!("peer {id}: waiting for echo {seq}: {e}"));
                return h;
            }
            let len = u32::from_be_bytes([hd[0], hd[1], hd[2], hd[3]]) as usize;
            match (hd[4], len) {
                (0, PAYLOAD) => break,
                (1, 0) => {
                    if let Err(e) = s.write_all(&header(0, 2)) {
                        h.error = Some(format!("peer {id}: pong: {e}"));
                        return h;
                    }
                    h.pings_answered += 1;
                }
                (2, 0) => {}
                (k, l) => {
                    h.error = Some(format!(
                        "peer {id}: unexpected frame kind {k} length {l} for echo {seq}"
                    ));
                    return h;
                }
            }
        }
        if let Err(e) = s.read_exact(&mut got) {
            h.error = Some(format!("peer {id}: payload of echo {seq}: {e}"));
            return h;
        }
        let rtt = t0.elapsed();
        if got[..] != frame[5..] {
            h.error = Some(format!(
                "peer {id}: echo {seq} differs: sent {:?}, got {got:?}",
                &frame[5..]
            ));
            return h;
        }
        if h.hist.len() <= w {
            h.hist.resize_with(w + 1, new_hist);
        }
        h.hist[w].saturating_record(rtt.as_nanos() as u64);
        seq += 1;
        next += PACE;
        let now = Instant::now();
        match next.checked_duration_since(now) {
            Some(d) => std::thread::sleep(d),
            None => next = now, // late: no burst to catch up
        }
    }
    // A clean end: the echo (half-close mode) sees our FIN and closes.
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
            h.error = Some(format!("peer {id}: no close from the server after our FIN"));
        }
        Err(e) => h.error = Some(format!("peer {id}: at the end: {e}")),
    }
    h
}

/// The memory the attack may make the server hold, in bytes: the rule the peak RSS is
/// held to, beyond [`RSS_CONSTANT`].
///
/// * queues: every attack connection that sends data frames (non-readers, drip
///   non-readers, byte-at-a-time) may fill its outbound queue up to [`MAX_QUEUED`]; all
///   queues together stay under the reactor-wide cap [`MAX_TOTAL_QUEUED`]. Both limits
///   count a queued frame's bookkeeping (`QUEUE_ENTRY_COST`, 128 B per message; measured
///   ~110 B) beside its bytes, so they bound the queues' memory, tiny frames included;
///   and a queued echo of a frame under 16 KiB is a copy of its own (the reactor copies
///   short payloads out of its read buffer), so it pins no 64 KiB read chunk;
/// * partial frames: a claimed-length peer makes the reactor reserve
///   min([`MAX_FRAME`], [`CHUNK`]) for its frame; a flood read past the 1,024-frame
///   budget keeps at most one read (one chunk) as backlog.
fn memory_bound() -> (u64, String) {
    let fillers = NON_READERS + DRIP + BYTE_AT_A_TIME;
    let queues = (fillers * MAX_QUEUED).min(MAX_TOTAL_QUEUED);
    let partial = CLAIM * (MAX_FRAME + 5).min(CHUNK) + (PING_FLOOD + ZERO_FLOOD) * CHUNK;
    let why = format!(
        "queues min({fillers} × {} KiB, cap {} KiB) = {} KiB (bytes and bookkeeping) + \
         partial frames ({CLAIM} claims + {} floods) × 64 KiB = {} KiB by the limits; + \
         constant {} KiB",
        MAX_QUEUED / KIB,
        MAX_TOTAL_QUEUED / KIB,
        queues / KIB,
        PING_FLOOD + ZERO_FLOOD,
        (queues + partial) / KIB,
        RSS_CONSTANT / KIB
    );
    (queues + partial + RSS_CONSTANT, why)
}

#[test]
#[ignore = "hostile-peer soak (~30 s); run with --ignored --nocapture (HEARTLOOP_HOSTILE_SECS)"]
fn echo_under_hostile_peers_keeps_memory_turns_and_healthy_latency_bounded() {
    let secs: f64 = std::env::var("HEARTLOOP_HOSTILE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10.0);
    let window_secs: f64 = std::env::var("HEARTLOOP_HOSTILE_WINDOW_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(WINDOW_SECS);
    let rounds = ((secs / window_secs).round() as usize).max(1);
    let window_len = Duration::from_secs_f64(secs / rounds as f64);
    let only = std::env::var("HEARTLOOP_HOSTILE_ATTACKS").ok();
    let extra_attack = std::env::var("HEARTLOOP_HOSTILE_ATTACKER_ARGS").unwrap_or_default();
    let nice: i32 = std::env::var("HEARTLOOP_HOSTILE_NICE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(-10);
    let strict = strict();
    let started = Instant::now();
    let echo_bin = util::example_bin("echo");
    let attacker_bin = util::example_bin("attacker");
    let built_in = started.elapsed();

    // ---- the server
    let mut cmd = Command::new(&echo_bin);
    cmd.args([
        "--addr",
        "127.0.0.1:0",
        "--framing",
        &format!("ld:{MAX_FRAME}"),
        "--max-queued",
        &MAX_QUEUED.to_string(),
        "--max-total-queued",
        &MAX_TOTAL_QUEUED.to_string(),
        "--sndbuf",
        &SNDBUF.to_string(),
        "--stats-secs",
        "1",
        "--turn-cpu",
    ])
    .args(
        std::env::var("HEARTLOOP_HOSTILE_ECHO_ARGS")
            .unwrap_or_default()
            .split_whitespace(),
    )
    // No per-connection lines (thousands of connects): the address and the stats lines
    // are printed whatever RUST_LOG says.
    .env("RUST_LOG", "warn");
    let mut echo = Proc::from_command_with_stderr_lines(cmd);
    let addr: SocketAddr = echo
        .wait_line_containing("echo listening on", Duration::from_secs(30))
        .expect("echo did not start")
        .parse()
        .expect("echo's address");
    let pid = echo.pid();
    let rss_start = vm_kib(pid, "VmRSS:");
    // The echo is one thread: its pid is its thread's id.
    let raised = nice != 0 && set_nice(pid, nice);

    // ---- healthy peers
    let window = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let connected = Arc::new(Barrier::new(HEALTHY + 1));
    let peers: Vec<_> = (0..HEALTHY)
        .map(|id| {
            let (window, stop, connected) = (window.clone(), stop.clone(), connected.clone());
            std::thread::spawn(move || healthy_peer(id, addr, &window, &stop, &connected, nice))
        })
        .collect();
    connected.wait();
    let probe_thread = {
        let (window, stop) = (window.clone(), stop.clone());
        std::thread::spawn(move || probe(&window, &stop, nice))
    };

    // ---- quiet and attack windows, alternating; a quiet one last
    let n = |v: u64| v.to_string();
    let soak::Run {
        t0,
        watch: mut w,
        windows,
        attack_lines,
        attacker_cpu,
        ready_after,
        attacker_failures,
    } = run_windows(&mut echo, pid, &window, rounds, window_len, || {
        let mut cmd = Command::new(&attacker_bin);
        cmd.args(["--addr", &addr.to_string()])
            .args(["--secs", &window_len.as_secs_f64().to_string()])
            .args(["--ping-flood", &n(PING_FLOOD), "--ping-rate", &n(PING_RATE)])
            .args(["--zero-flood", &n(ZERO_FLOOD), "--zero-rate", &n(ZERO_RATE)])
            .args(["--claim", &n(CLAIM), "--claim-len", &n(MAX_FRAME)])
            .args(["--byte-at-a-time", &n(BYTE_AT_A_TIME)])
            .args(["--slowloris", &n(SLOWLORIS), "--storm-rate", &n(STORM_RATE)])
            .args(["--non-readers", &n(NON_READERS)])
            .args(["--non-reader-rate", &n(NON_READER_RATE)])
            .args(["--drip", &n(DRIP), "--drip-rate", &n(DRIP_RATE)]);
        if let Some(a) = &only {
            cmd.args(["--attacks", a]);
        }
        // Later options override earlier ones.
        cmd.args(extra_attack.split_whitespace());
        cmd
    });
    stop.store(true, Ordering::Relaxed);
    let healthy: Vec<Healthy> = peers
        .into_iter()
        .map(|p| p.join().expect("healthy peer thread"))
        .collect();
    let probe = probe_thread.join().expect("probe thread");
    // One more stats line, from after everything (they come every second).
    w.run(&mut echo, Duration::from_millis(1100));
    let longest_us = stat(&w.last_stats, "longest turn").expect("a stats line from the echo");
    let most_cpu_us =
        stat(&w.last_stats, "most cpu in one poll").expect("--turn-cpu figures in the stats");
    let hwm = vm_kib(pid, "VmHWM:");
    let rss_end = vm_kib(pid, "VmRSS:");
    let server_alive = echo.child.try_wait().expect("echo status").is_none();
    drop(echo);
    let Watch {
        rss_max,
        last_stats,
        rises,
        ..
    } = w;

    // ---- figures
    let mut errors = Vec::new();
    let mut pings_answered = 0;
    // Pooled per kind, and per window.
    let mut pooled: Vec<Histogram<u64>> = (0..3).map(|_| new_hist()).collect();
    let mut per_window: Vec<Histogram<u64>> = (0..windows.len()).map(|_| new_hist()).collect();
    for h in &healthy {
        for (i, one) in h.hist.iter().enumerate() {
            pooled[windows[i].kind as usize].add(one).unwrap();
            per_window[i].add(one).unwrap();
        }
        errors.extend(h.error.clone());
        pings_answered += h.pings_answered;
    }
    let (q, a) = (Kind::Quiet as usize, Kind::Attack as usize);
    // The probe, pooled per kind; its longest stall over the whole run.
    let mut late: Vec<Histogram<u64>> = (0..3).map(|_| new_hist()).collect();
    let mut stretch: Vec<Histogram<u64>> = (0..3).map(|_| new_hist()).collect();
    for (i, (l, st)) in probe.late.iter().zip(&probe.stretch).enumerate() {
        late[windows[i].kind as usize].add(l).unwrap();
        stretch[windows[i].kind as usize].add(st).unwrap();
    }
    let stall = Duration::from_nanos(
        late.iter()
            .chain(&stretch)
            .map(|h| h.max())
            .max()
            .unwrap_or(0),
    );
    let pct = |k: usize, p: f64| Duration::from_nanos(pooled[k].value_at_quantile(p));
    // CPU per kind of window, in % of one core: (server, this process, machine, seconds,
    // stolen by the hypervisor).
    let cpu = |kind: Kind| {
        let (mut span, mut server, mut me) = (0.0, 0.0, 0.0);
        let (mut busy, mut total, mut steal) = (0u64, 0u64, 0u64);
        for win in windows.iter().filter(|x| x.kind == kind) {
            span += (win.to.at - win.from.at).as_secs_f64();
            server += win.to.server.saturating_sub(win.from.server).as_secs_f64();
            me += win.to.me.saturating_sub(win.from.me).as_secs_f64();
            busy += win.to.machine.0 - win.from.machine.0;
            total += win.to.machine.1 - win.from.machine.1;
            steal += win.to.machine.2 - win.from.machine.2;
        }
        let of_cores = |t: u64| t as f64 / total.max(1) as f64 * cores() as f64 * 100.0;
        let pct = |d: f64| d / span * 100.0;
        (pct(server), pct(me), of_cores(busy), span, of_cores(steal))
    };
    let (cq, ca) = (cpu(Kind::Quiet), cpu(Kind::Attack));
    let attacker_pct = attacker_cpu.as_secs_f64() / ca.3 * 100.0;
    let all_lines: Vec<String> = attack_lines.iter().flatten().cloned().collect();
    let totals = sum_attacks(
        &all_lines,
        &["conns", "connects", "cut", "bytes", "frames", "echoed"],
    );
    let (bound, why) = memory_bound();
    let turn_limit_us = turn_bound_us(Duration::ZERO);
    let probe_rise = probe_rise(&late[q], &late[a]);
    let p99_limit = p99_bound(pct(q, 0.99), probe_rise);
    let (first, last) = (windows[0].from, windows.last().unwrap().to);
    let steal_pct = (last.machine.2 - first.machine.2) as f64
        / (last.machine.1 - first.machine.1).max(1) as f64
        * 100.0;
    let stall_us = stall.as_micros() as u64;

    println!(
        "\nhostile soak: echo --framing ld:{MAX_FRAME} --max-queued {MAX_QUEUED} \
         --max-total-queued {MAX_TOTAL_QUEUED} --sndbuf {SNDBUF}; {HEALTHY} healthy peers, \
         {PAYLOAD} B frames, one round trip per {PACE:?} each; {rounds} quiet/attack rounds of \
         {:.1} s + a last quiet window; {} build; attacks: {}{}; attackers ready at most {:.2} s \
         after spawn; {:.1} s in all ({:.1} s of it building the examples)\n{}",
        window_len.as_secs_f64(),
        if cfg!(debug_assertions) {
            "DEBUG"
        } else {
            "release"
        },
        only.as_deref().unwrap_or("all"),
        if extra_attack.is_empty() {
            String::new()
        } else {
            format!(" with {extra_attack}")
        },
        ready_after.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        built_in.as_secs_f64(),
        match (nice, raised) {
            (0, _) => "priority: everything at the default nice value (HEARTLOOP_HOSTILE_NICE=0)"
                .to_string(),
            (n, true) => format!(
                "priority: the echo server and the healthy peers run at nice {n}, the attacker at \
                 the default 0, so that the machine's other load and the attacker preempt them \
                 less (the attacker stands for peers on other machines); \
                 HEARTLOOP_HOSTILE_NICE=0 turns this off"
            ),
            (n, false) => format!(
                "priority: nice {n} was NOT permitted (needs CAP_SYS_NICE): everything runs at \
                 the default priority, so preemption by other processes counts in turns and \
                 round trips"
            ),
        }
    );
    println!(
        "{}",
        if strict {
            "timing bounds: asserted (strict run; HEARTLOOP_HOSTILE_STRICT=0 turns this off)"
        } else {
            "TIMING BOUNDS NOT ASSERTED: this is a CI run (CI is set) or \
             HEARTLOOP_HOSTILE_STRICT=0; the turn and p99 figures below are printed only; \
             memory and correctness are asserted"
        }
    );
    println!();
    println!("| figure | quiet | attack |");
    println!("|---|---|---|");
    let row = |name: &str, f: &dyn Fn(usize) -> String| {
        println!("| {name} | {} | {} |", f(q), f(a));
    };
    row("healthy round trips", &|k| pooled[k].len().to_string());
    for (name, p) in [("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999)] {
        row(&format!("healthy {name}"), &|k| {
            us(pooled[k].value_at_quantile(p))
        });
    }
    row("healthy max", &|k| us(pooled[k].max()));
    row("server RSS, sampled max", &|k| {
        format!("{:.1} MiB", rss_max[k] as f64 / 1024.0)
    });
    let c = |k: usize| if k == q { cq } else { ca };
    row("server CPU (% of a core)", &|k| format!("{:.0}%", c(k).0));
    row("healthy peers' process CPU", &|k| format!("{:.0}%", c(k).1));
    row("attacker process CPU", &|k| {
        if k == a {
            format!("{attacker_pct:.0}%")
        } else {
            "-".into()
        }
    });
    row(
        &format!("machine CPU (all processes, of {}00%)", cores()),
        &|k| format!("{:.0}%", c(k).2),
    );
    row(
        &format!("CPU stolen by the hypervisor (of {}00%)", cores()),
        &|k| format!("{:.0}%", c(k).4),
    );
    row("probe: 1 ms sleep woke late, p99 / max", &|k| {
        format!(
            "{} / {}",
            us(late[k].value_at_quantile(0.99)),
            us(late[k].max())
        )
    });
    row("probe: 200 µs computation stretched, max", &|k| {
        us(stretch[k].max())
    });
    println!(
        "\nhealthy p99 per window: {}",
        windows
            .iter()
            .enumerate()
            .skip(1)
            .map(|(i, win)| format!(
                "{} {}",
                if win.kind == Kind::Quiet { "Q" } else { "A" },
                us(per_window[i].value_at_quantile(0.99))
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!();
    println!(
        "| attack ({rounds} windows) | conns | connects | cut by server | bytes sent | frames | echoed |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (name, v) in &totals {
        let f: Vec<String> = v.iter().map(|(_, x)| x.to_string()).collect();
        println!("| {name} | {} |", f.join(" | "));
    }
    println!();
    println!(
        "server RSS at the end of each window (KiB): {}",
        windows
            .iter()
            .skip(1)
            .map(|win| format!(
                "{} {}",
                if win.kind == Kind::Quiet { "Q" } else { "A" },
                win.to.rss
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "server RSS: {rss_start} KiB at start, peak (VmHWM) {hwm} KiB, {rss_end} KiB at the \
         end; bound {} KiB = {why}",
        bound / KIB
    );
    println!(
        "turns: the longest turn {longest_us} µs by the wall clock; the machine stalled the \
         probe thread for up to {stall_us} µs (the hypervisor took {steal_pct:.0}% of the \
         machine's CPU time over the run), so the bound is {turn_limit_us} µs + {stall_us} µs \
         (see turn_bound_us); the most CPU one poll call used: {most_cpu_us} µs (CPU time here \
         also counts time the hypervisor took while it ran)"
    );
    println!(
        "healthy p99 quiet {:?}, attack {:?} (limit 2 × quiet + 2 × the probe's rise \
         {probe_rise:?} = {p99_limit:?}; 2 × quiet alone: {:?}); pings \
         answered by healthy peers {pings_answered}",
        pct(q, 0.99),
        pct(a, 0.99),
        pct(q, 0.99) * 2
    );
    println!("echo's last stats: {last_stats}");
    // When the longest turn rose (stats lines come every second; the time is when the
    // line arrived), and what the poll call of that turn did (`--turn-cpu`).
    let t = |i: Instant| i.saturating_duration_since(t0).as_secs_f64();
    println!(
        "timeline (t = 0 when the warm-up starts): {}",
        windows
            .iter()
            .skip(1)
            .map(|win| format!(
                "{} {:.1}-{:.1} s",
                if win.kind == Kind::Quiet {
                    "quiet"
                } else {
                    "attack"
                },
                t(win.from.at),
                t(win.to.at)
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (at, i, kind, line) in &rises {
        let detail = line
            .split_once("longest turn's poll")
            .map_or("", |(_, d)| d)
            .trim();
        println!(
            "  longest turn rose to {} µs (stats line at t = {:.1} s, window {i}, {kind:?}); \
             its poll {detail}",
            stat(line, "longest turn").unwrap_or(0),
            t(*at),
        );
    }
    // What moved the healthy p99: the probe does no I/O, so whatever slowed it under
    // attack is the machine (the attacker's and the server's extra CPU, the hypervisor),
    // not the server's handling of the healthy peers.
    let (lq, la) = (
        Duration::from_nanos(late[q].value_at_quantile(0.99)),
        Duration::from_nanos(late[a].value_at_quantile(0.99)),
    );
    println!(
        "latency: healthy p99 rose by {:?} under attack; the probe (no I/O, the server's \
         priority) woke late by p99 {lq:?} quiet and {la:?} under attack: {}",
        pct(a, 0.99).saturating_sub(pct(q, 0.99)),
        if la > lq + lq / 4 {
            let steal = if ca.4 + cq.4 >= 1.0 {
                format!(
                    ", and the hypervisor took {:.0}% of the machine instead of {:.0}%",
                    ca.4 / cores() as f64,
                    cq.4 / cores() as f64
                )
            } else {
                String::new()
            };
            format!(
                "the machine itself got slower under attack: the attacker process used \
                 {attacker_pct:.0}% of a core and the server {:.0}% instead of {:.0}%{steal}; \
                 a server attacked from other machines would not share its CPUs with the \
                 attacker",
                ca.0, cq.0
            )
        } else {
            "the machine was not slower for a thread that does no I/O".to_string()
        }
    );
    if ca.2 + ca.4 >= 0.9 * (cores() * 100) as f64 {
        println!(
            "NOTE: the machine's CPUs were busy or taken by the hypervisor nearly all the time \
             under attack: healthy round trips and turns include waiting for a CPU, partly \
             behind the attacker process itself ({attacker_pct:.0}% of a core here)."
        );
    }

    // ---- verdicts
    assert!(server_alive, "the echo server died");
    assert!(
        errors.is_empty(),
        "healthy peers failed (disconnected, timed out or a wrong echo): {errors:?}"
    );
    assert!(
        attacker_failures.is_empty(),
        "an attacker failed (a byte-at-a-time echo differed?): {attacker_failures:?}"
    );
    // Some round trips in each kind of window whatever the machine; 100 per peer per
    // second (one per PACE would be 1,000) only in a strict run.
    let per_peer_sec = if strict { 100.0 } else { 1.0 };
    for k in [q, a] {
        assert!(
            pooled[k].len() as f64 >= HEALTHY as f64 * per_peer_sec * secs,
            "too few healthy round trips ({:?}): {}",
            [Kind::WarmUp, Kind::Quiet, Kind::Attack][k],
            pooled[k].len()
        );
    }
    assert!(
        only.is_some() || totals.len() == 8,
        "every attack reported: {totals:?}"
    );
    for (name, v) in &totals {
        let bytes = v.iter().find(|(k, _)| *k == "bytes").map_or(0, |(_, x)| *x);
        assert!(bytes > 0, "the {name} attack sent nothing");
    }
    assert!(
        hwm * KIB <= bound,
        "server peak RSS {hwm} KiB > bound {} KiB ({why})",
        bound / KIB
    );
    if !strict {
        println!(
            "\nTIMING BOUNDS NOT ASSERTED (HEARTLOOP_HOSTILE_STRICT=0, the default under CI): \
             the longest turn {longest_us} µs (bound {} µs) and the healthy p99 under attack \
             {:?} (bound {p99_limit:?}) are {} and {}; memory and correctness were asserted",
            turn_bound_us(stall),
            pct(a, 0.99),
            if longest_us < turn_bound_us(stall) {
                "within"
            } else {
                "OVER"
            },
            if pct(a, 0.99) <= p99_limit {
                "within"
            } else {
                "OVER"
            },
        );
        return;
    }
    assert!(
        longest_us < turn_bound_us(stall),
        "a turn took {longest_us} µs (limit {turn_limit_us} µs + the machine's stall \
         {stall_us} µs); stats: {last_stats}"
    );
    assert!(
        pct(a, 0.99) <= p99_limit,
        "healthy p99 under attack {:?} > 2 × quiet p99 {:?} + 2 × the probe's rise \
         {probe_rise:?} = {p99_limit:?}",
        pct(a, 0.99),
        pct(q, 0.99)
    );
}
