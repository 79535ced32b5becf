//! The measuring loop: a heartloop reactor on the client side, `--conns` connections, every
//! reply checked byte for byte, every round trip recorded in nanoseconds.
//!
//! **Open loop** (`Mode::Open`): message `k` is *intended* to leave at `t0 + k / rate`, on
//! connection `k mod conns` (so the rate is spread evenly). A message leaves at its intended
//! time if its connection has fewer than `inflight` messages unanswered, else as soon as an
//! answer makes room: a stalled server makes the messages behind it wait, as a real client's
//! requests would. Each round trip is recorded twice: **corrected**, from the intended time
//! (what a user whose request was due then saw: the stall counts for every message it
//! delayed, as wrk2 does), and **uncorrected**, from the moment the message actually left
//! (what a closed-loop tool reports: coordinated omission hides the stall in one sample).
//! A timerfd wakes the loop at each intended time to the microsecond (a poll timeout would
//! be rounded up to a millisecond, and that would count as latency).
//!
//! **Closed loop** (`Mode::Closed`): each connection keeps `inflight` messages unanswered
//! and sends the next one when an answer arrives; one histogram, from the actual send.
//!
//! Messages whose intended (open) or actual (closed) send time falls in the warm-up are not
//! recorded. Every second of the measured period is also kept as an interval of the
//! HdrHistogram interval log.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use heartloop::{ConnConfig, ConnId, Event, Framing, Reactor, ReactorConfig};
use mio::unix::SourceFd;
use rustix::time::{
    Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec, timerfd_create,
    timerfd_settime,
};

use crate::sockperf;

/// How messages are paced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `rate` messages per second over all connections, on a fixed schedule.
    Open { rate: u64 },
    /// `inflight` messages unanswered per connection, the next sent on each answer.
    Closed,
}

/// What goes on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Raw bytes an echo server sends back (`examples/echo.rs`, or any echo).
    Echo,
    /// sockperf's ping-pong messages (`sockperf server`, or `echo --protocol sockperf`).
    Sockperf,
}

/// A run's settings.
#[derive(Clone, Debug)]
pub struct Config {
    pub addr: SocketAddr,
    pub conns: usize,
    /// Message size in bytes (sockperf: the whole message, its 14-byte header included).
    pub size: usize,
    /// Unanswered messages allowed per connection.
    pub inflight: usize,
    pub mode: Mode,
    pub protocol: Protocol,
    pub warmup: Duration,
    pub duration: Duration,
    /// How long to wait for the last answers after the last message was due.
    pub drain: Duration,
}

/// What a run measured.
#[derive(Debug)]
pub struct Outcome {
    /// Round trips from the intended send time (open loop only).
    pub corrected: Option<Histogram<u64>>,
    /// Round trips from the actual send time.
    pub uncorrected: Histogram<u64>,
    /// The interval log (`.hlog` text), one interval per second of the measured period.
    pub hlog: Vec<u8>,
    /// Round trips over the whole run, warm-up included.
    pub round_trips: u64,
    /// CPU time this process used over the measured period, and the round trips recorded
    /// in it.
    pub measured_cpu: Duration,
    /// The measured period, from the end of the warm-up to the last answer.
    pub measured_for: Duration,
}

impl Outcome {
    /// The client's CPU per recorded round trip over the measured period.
    pub fn cpu_per_round_trip(&self) -> Duration {
        let n = self.uncorrected.len().max(1);
        Duration::from_nanos((self.measured_cpu.as_nanos() / u128::from(n)) as u64)
    }
}

/// Timer tags.
const INTERVAL: u64 = 1;
const END: u64 = 2;
/// Highest round trip a histogram tracks (larger ones are recorded as this): an hour.
const MAX_NS: u64 = 3_600_000_000_000;
/// The pattern messages are cut from has a prime period, so that a byte echoed at the
/// wrong place is caught.
const PERIOD: usize = 251;
/// Most messages released (made due) in one turn; the rest go next turn, so a client that
/// fell far behind still reads answers in between.
const RELEASE_BUDGET: u64 = 65_536;

struct Conn {
    id: ConnId,
    /// The index of its next message (its indices are `index`, `index + conns`, ...).
    next: u64,
    /// Unanswered messages: (index, when it actually left), oldest first.
    inflight: VecDeque<(u64, Instant)>,
    /// Echo: bytes of the oldest message's answer received so far.
    partial: usize,
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_NS, 3).expect("valid histogram bounds")
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Run against `cfg.addr`; `progress` gets one line when measuring starts (`measuring ...`)
/// and one per interval. An error is a sentence: a lost connection, a wrong byte, answers
/// missing after the drain.
pub fn run(cfg: &Config, mut progress: impl FnMut(&str)) -> Result<Outcome, String> {
    if cfg.conns == 0 || cfg.inflight == 0 || cfg.size == 0 {
        return Err("--conns, --inflight and --size must be at least 1".into());
    }
    if cfg.protocol == Protocol::Sockperf
        && !(sockperf::HEADER_LEN..=sockperf::MAX_MESSAGE).contains(&cfg.size)
    {
        return Err(format!(
            "sockperf messages are {} to {} bytes (header included)",
            sockperf::HEADER_LEN,
            sockperf::MAX_MESSAGE
        ));
    }
    if let Mode::Open { rate: 0 } = cfg.mode {
        return Err("--rate must be at least 1".into());
    }
    let pattern = Bytes::from(
        (0..cfg.size + PERIOD)
            .map(|i| (i % PERIOD) as u8)
            .collect::<Vec<u8>>(),
    );
    // Message `k`'s bytes (echo) or payload (sockperf) start at this phase of the pattern.
    let phase = |k: u64| ((k * 7) % PERIOD as u64) as usize;
    let io = |what: &str, e: std::io::Error| format!("{what}: {e}");

    let mut reactor = Reactor::new(ReactorConfig::default()).map_err(|e| io("reactor", e))?;
    let framing = match cfg.protocol {
        Protocol::Echo => Framing::Raw,
        Protocol::Sockperf => sockperf::framing(),
    };
    let ccfg = ConnConfig::default()
        .framing(framing)
        .connect_timeout(Some(Duration::from_secs(5)));
    let mut conns = Vec::with_capacity(cfg.conns);
    let mut slots = HashMap::with_capacity(cfg.conns);
    for i in 0..cfg.conns {
        let id = reactor
            .connect(cfg.addr, ccfg)
            .map_err(|e| io(&format!("connect {}", cfg.addr), e))?;
        slots.insert(id, i);
        conns.push(Conn {
            id,
            next: i as u64,
            inflight: VecDeque::new(),
            partial: 0,
        });
    }

    let timerfd = timerfd_create(
        TimerfdClockId::Monotonic,
        TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
    )
    .map_err(|e| io("timerfd", e.into()))?;
    let raw = timerfd.as_raw_fd();
    reactor
        .register_source(&mut SourceFd(&raw), mio::Interest::READABLE)
        .map_err(|e| io("register timerfd", e))?;

    let open = matches!(cfg.mode, Mode::Open { .. });
    let mut corrected = open.then(new_hist);
    let mut uncorrected = new_hist();
    let mut iv_corrected = open.then(new_hist);
    let mut iv_uncorrected = new_hist();

    // Wait for every connection.
    let mut events = Vec::with_capacity(1024);
    let mut connected = 0;
    let connect_deadline = Instant::now() + Duration::from_secs(10);
    while connected < cfg.conns {
        if Instant::now() > connect_deadline {
            return Err(format!("connecting to {} took over 10 s", cfg.addr));
        }
        reactor
            .poll(&mut events, Some(Duration::from_millis(100)))
            .map_err(|e| io("poll", e))?;
        for ev in events.drain(..) {
            match ev {
                Event::Connected { .. } => connected += 1,
                Event::Disconnected { cause, .. } => {
                    return Err(format!("connect to {}: {cause}", cfg.addr));
                }
                _ => {}
            }
        }
    }

    let t0 = Instant::now();
    let measure_from = t0 + cfg.warmup;
    let stop_at = measure_from + cfg.duration;
    let (rate, total) = match cfg.mode {
        Mode::Open { rate } => {
            let secs = (cfg.warmup + cfg.duration).as_secs_f64();
            (rate, (rate as f64 * secs).ceil() as u64)
        }
        Mode::Closed => (0, u64::MAX),
    };
    // Open loop: the intended send time of message `k`, and the first measured message.
    let intended = |k: u64| {
        t0 + Duration::from_nanos(
            u64::try_from(u128::from(k) * 1_000_000_000 / u128::from(rate.max(1)))
                .unwrap_or(u64::MAX),
        )
    };
    let first_measured = (rate as f64 * cfg.warmup.as_secs_f64()).ceil() as u64;

    reactor.set_timer(cfg.warmup, INTERVAL);
    reactor.set_timer(cfg.warmup + cfg.duration, END);
    // Interval timestamps count from the end of the warm-up (BaseTime), in seconds.
    let wall_start = SystemTime::now() + cfg.warmup;
    let mut log_buf = Vec::new();
    let mut serializer = V2DeflateSerializer::new();
    let mut log = IntervalLogWriterBuilder::new()
        .add_comment("heartloop latency client: round trips in nanoseconds")
        .add_comment(&format!("{cfg:?}"))
        .with_start_time(wall_start)
        .with_base_time(wall_start)
        .with_max_value_divisor(1e6) // the Max column in milliseconds
        .begin_log_with(&mut log_buf, &mut serializer)
        .map_err(|e| io("interval log", e))?;
    let mut interval_start: Option<Instant> = None; // set when measuring starts
    let mut cpu_start = None;
    let mut released = 0u64; // open: messages whose intended time has come
    let mut armed_for = None; // open: the message index the timerfd is set for
    let mut stopping = false; // no more messages (closed: sending stopped)
    let mut drain_deadline: Option<Instant> = None;
    let mut done = 0u64;
    let mut completed = Vec::new();
    let mut last_answer = t0;

    // Send on `c` whatever it may: due (open) or simply allowed (closed).
    let send_due = |reactor: &mut Reactor, c: &mut Conn, released: u64, stopping: bool| {
        while c.inflight.len() < cfg.inflight {
            let k = c.next;
            let may = match cfg.mode {
                Mode::Open { .. } => k < released,
                Mode::Closed => !stopping,
            };
            if !may {
                break;
            }
            let p = phase(k);
            let res = match cfg.protocol {
                Protocol::Echo => reactor.send(c.id, pattern.slice(p..p + cfg.size)),
                Protocol::Sockperf => {
                    let mut head = BytesMut::with_capacity(sockperf::HEADER_LEN);
                    sockperf::Header::request(k + 1, cfg.size as u32).put(&mut head);
                    let body = pattern.slice(p..p + cfg.size - sockperf::HEADER_LEN);
                    reactor.send_parts(c.id, head.freeze(), body)
                }
            };
            res.map_err(|e| format!("send: {e}"))?;
            c.inflight.push_back((k, Instant::now()));
            c.next += cfg.conns as u64;
        }
        Ok::<(), String>(())
    };

    if !open {
        for c in conns.iter_mut() {
            send_due(&mut reactor, c, released, stopping)?;
        }
    }

    loop {
        // Open loop: make due what is due, send it, and set the timerfd for the next one.
        let mut wait = None;
        if open && released < total {
            let now = Instant::now();
            let before = released;
            while released < total
                && released - before < RELEASE_BUDGET
                && intended(released) <= now
            {
                released += 1;
            }
            for k in before..released {
                let slot = (k % cfg.conns as u64) as usize;
                send_due(&mut reactor, &mut conns[slot], released, stopping)?;
            }
            if released < total {
                let next = intended(released);
                if next <= Instant::now() {
                    wait = Some(Duration::ZERO);
                } else if armed_for != Some(released) {
                    let d = next - Instant::now();
                    let spec = Itimerspec {
                        it_interval: Timespec {
                            tv_sec: 0,
                            tv_nsec: 0,
                        },
                        it_value: Timespec {
                            tv_sec: d.as_secs() as _,
                            tv_nsec: d.subsec_nanos().max(1) as _,
                        },
                    };
                    timerfd_settime(&timerfd, TimerfdTimerFlags::empty(), &spec)
                        .map_err(|e| io("timerfd_settime", e.into()))?;
                    armed_for = Some(released);
                }
            } else {
                stopping = true;
            }
        }
        let all_answered = conns.iter().all(|c| c.inflight.is_empty());
        let all_sent = match cfg.mode {
            Mode::Open { .. } => released >= total && conns.iter().all(|c| c.next >= total),
            Mode::Closed => stopping,
        };
        if all_sent && all_answered {
            break;
        }
        if stopping && drain_deadline.is_none() {
            let d = cfg.drain;
            drain_deadline = Some(Instant::now() + d);
            reactor.set_timer(d, END);
        }
        if drain_deadline.is_some_and(|t| Instant::now() >= t) {
            let missing: usize = conns.iter().map(|c| c.inflight.len()).sum();
            let unsent: u64 = if open {
                conns
                    .iter()
                    .map(|c| total.saturating_sub(c.next).div_ceil(cfg.conns as u64))
                    .sum()
            } else {
                0
            };
            return Err(format!(
                "{missing} messages unanswered and {unsent} not sent {:?} after the last was due",
                cfg.drain
            ));
        }

        reactor.poll(&mut events, wait).map_err(|e| io("poll", e))?;
        for ev in events.drain(..) {
            match ev {
                Event::Data { conn, bytes } => {
                    let now = Instant::now();
                    let Some(&slot) = slots.get(&conn) else {
                        continue;
                    };
                    let c = &mut conns[slot];
                    completed.clear();
                    match cfg.protocol {
                        Protocol::Echo => {
                            check_echo(c, &bytes, &pattern, cfg.size, phase, &mut completed)?
                        }
                        Protocol::Sockperf => {
                            check_sockperf(c, &bytes, &pattern, cfg.size, phase, &mut completed)?
                        }
                    }
                    for &(k, left) in &completed {
                        done += 1;
                        last_answer = now;
                        let measured = match cfg.mode {
                            Mode::Open { .. } => k >= first_measured,
                            Mode::Closed => left >= measure_from,
                        };
                        if !measured {
                            continue;
                        }
                        let u = ns(now - left);
                        iv_uncorrected.saturating_record(u);
                        if let Some(h) = iv_corrected.as_mut() {
                            h.saturating_record(ns(now.saturating_duration_since(intended(k))));
                        }
                    }
                    send_due(&mut reactor, c, released, stopping)?;
                }
                Event::Source { .. } => {
                    // Clear the timerfd (a read of its expiry count); the top of the loop
                    // releases what is due.
                    let mut buf = [0u8; 8];
                    let _ = rustix::io::read(&timerfd, &mut buf);
                    armed_for = None;
                }
                Event::Timer { tag: INTERVAL, .. } => {
                    let now = Instant::now();
                    match interval_start {
                        None => {
                            cpu_start = Some(crate::cpu::process());
                            progress(&format!(
                                "measuring for {:?} after a warm-up of {:?}",
                                cfg.duration, cfg.warmup
                            ));
                        }
                        Some(start) => {
                            write_interval(
                                &mut log,
                                start - measure_from,
                                now - start,
                                &mut iv_corrected,
                                &mut iv_uncorrected,
                                &mut corrected,
                                &mut uncorrected,
                                &mut progress,
                            )?;
                        }
                    }
                    interval_start = Some(now);
                    reactor.set_timer(Duration::from_secs(1), INTERVAL);
                }
                Event::Timer { tag: END, .. } if !open && Instant::now() >= stop_at => {
                    stopping = true;
                }
                Event::Disconnected { cause, .. } => {
                    return Err(format!("connection to {} lost: {cause}", cfg.addr));
                }
                _ => {}
            }
        }
    }
    let end = Instant::now();
    let measured_cpu = cpu_start.map_or(Duration::ZERO, |c| crate::cpu::process() - c);
    if let Some(start) = interval_start {
        write_interval(
            &mut log,
            start - measure_from,
            end - start,
            &mut iv_corrected,
            &mut iv_uncorrected,
            &mut corrected,
            &mut uncorrected,
            &mut progress,
        )?;
    }
    drop(log);
    for c in &conns {
        let _ = reactor.close(c.id);
    }
    let _ = reactor.poll(&mut events, Some(Duration::ZERO));
    Ok(Outcome {
        corrected,
        uncorrected,
        hlog: log_buf,
        round_trips: done,
        measured_cpu,
        measured_for: last_answer.saturating_duration_since(measure_from),
    })
}

/// Write one interval (tagged `corrected` and `uncorrected` in open loop, untagged in
/// closed loop), add it to the totals and start the next.
#[allow(clippy::too_many_arguments)]
fn write_interval<W: std::io::Write>(
    log: &mut hdrhistogram::serialization::interval_log::IntervalLogWriter<
        '_,
        '_,
        W,
        V2DeflateSerializer,
    >,
    start: Duration,
    len: Duration,
    iv_corrected: &mut Option<Histogram<u64>>,
    iv_uncorrected: &mut Histogram<u64>,
    corrected: &mut Option<Histogram<u64>>,
    uncorrected: &mut Histogram<u64>,
    progress: &mut impl FnMut(&str),
) -> Result<(), String> {
    let err = |e| format!("interval log: {e:?}");
    let us = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1e3;
    let mut line = format!(
        "{:>6.1}s: {:>7} round trips",
        start.as_secs_f64(),
        iv_uncorrected.len()
    );
    if let (Some(ivc), Some(total)) = (iv_corrected.as_mut(), corrected.as_mut()) {
        log.write_histogram(ivc, start, len, Tag::new("corrected"))
            .map_err(err)?;
        line += &format!(
            ", corrected p50 {:.1} p99 {:.1} max {:.1} µs",
            us(ivc, 0.5),
            us(ivc, 0.99),
            ivc.max() as f64 / 1e3
        );
        total.add(&*ivc).map_err(|e| format!("{e:?}"))?;
        ivc.reset();
        log.write_histogram(iv_uncorrected, start, len, Tag::new("uncorrected"))
            .map_err(err)?;
    } else {
        log.write_histogram(iv_uncorrected, start, len, None)
            .map_err(err)?;
    }
    line += &format!(
        ", {}p50 {:.1} p99 {:.1} max {:.1} µs",
        if corrected.is_some() {
            "uncorrected "
        } else {
            ""
        },
        us(iv_uncorrected, 0.5),
        us(iv_uncorrected, 0.99),
        iv_uncorrected.max() as f64 / 1e3
    );
    progress(&line);
    uncorrected
        .add(&*iv_uncorrected)
        .map_err(|e| format!("{e:?}"))?;
    iv_uncorrected.reset();
    Ok(())
}

/// Echo: `bytes` continue the answers to `c`'s oldest messages; returns the messages they
/// complete (index, sent at).
fn check_echo(
    c: &mut Conn,
    mut bytes: &[u8],
    pattern: &Bytes,
    size: usize,
    phase: impl Fn(u64) -> usize,
    completed: &mut Vec<(u64, Instant)>,
) -> Result<(), String> {
    while !bytes.is_empty() {
        let Some(&(k, left)) = c.inflight.front() else {
            return Err(format!(
                "{}: {} bytes more than were sent",
                c.id,
                bytes.len()
            ));
        };
        let n = bytes.len().min(size - c.partial);
        let from = phase(k) + c.partial;
        if bytes[..n] != pattern[from..from + n] {
            return Err(format!(
                "{}: message {k}'s echo differs from what was sent (bytes {}..{})",
                c.id,
                c.partial,
                c.partial + n
            ));
        }
        c.partial += n;
        bytes = &bytes[n..];
        if c.partial == size {
            c.partial = 0;
            c.inflight.pop_front();
            completed.push((k, left));
        }
    }
    Ok(())
}

/// sockperf: `msg` is one whole answer; it must be the oldest message's, sent back with
/// the client flag cleared.
fn check_sockperf(
    c: &mut Conn,
    msg: &[u8],
    pattern: &Bytes,
    size: usize,
    phase: impl Fn(u64) -> usize,
    completed: &mut Vec<(u64, Instant)>,
) -> Result<(), String> {
    let Some(&(k, left)) = c.inflight.front() else {
        return Err(format!("{}: an answer to no message", c.id));
    };
    let h = sockperf::Header::parse(msg).ok_or("short sockperf message")?;
    let p = phase(k);
    let body = &pattern[p..p + size - sockperf::HEADER_LEN];
    if h.seq != k + 1
        || h.flags & sockperf::FLAG_CLIENT != 0
        || h.len as usize != size
        || msg.len() != size
        || &msg[sockperf::HEADER_LEN..] != body
    {
        return Err(format!(
            "{}: answer {h:?} ({} bytes) does not match message {} of {size} bytes",
            c.id,
            msg.len(),
            k + 1
        ));
    }
    c.inflight.pop_front();
    completed.push((k, left));
    Ok(())
}
