//! `cargo bench -p heartloop-benches --bench timers` (`-- --smoke`, or
//! `HEARTLOOP_BENCH_SMOKE=1`, for a run of a few seconds with tiny counts, as CI does)
//!
//! Timer structures side by side in one run, on the same deadlines:
//!
//! * **heartloop**: the hierarchical timer wheel (`heartloop::wheel::Wheel`) for timers, and
//!   `heartloop::heartbeat::Liveness` stamps for per-message liveness (the reactor's lazy
//!   deadline heap is touched once per heartbeat interval, never per message);
//! * **heap**: a plain `BinaryHeap` timer queue with lazy cancellation by generation (written
//!   here: cancelled entries stay in the heap and are skipped when popped);
//! * **tokio**: `tokio_util::time::DelayQueue` inside a current-thread runtime.
//!
//! Scenarios, each reported as ns per operation (median over rounds, with the fastest and
//! slowest round) and as the ratio `peer / heartloop` (above 1: heartloop is faster; the
//! median of the per-round ratios, the contenders taking turns within each round):
//!
//! 1. `insert+cancel`: N timers with random deadlines in 1 ms .. 60 s inserted, then all
//!    cancelled in another order; one op = one insert + one cancel. The heap's lazy cancel
//!    defers work, so its figure includes popping the stale entries afterwards.
//! 2. `liveness/msg`: 10,000 connections, one deadline each, a message arriving on a random
//!    connection moves that deadline (`on_recv` stamp for heartloop; cancel + insert for the
//!    wheel and the heap; `reset` for DelayQueue). The heap's stale entries are drained at the
//!    end and counted.
//! 3. `expire`: N timers due within 100 ms, then all expired; one op = one expired timer.
//!    `jump`: one advance past all deadlines (DelayQueue: drained once all are due);
//!    `1ms steps`: advanced 1 ms at a time, as a loop turning every millisecond would.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hint::black_box;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

#[path = "../examples/common/opts.rs"]
mod opts;

use heartloop::heartbeat::{Heartbeat, Liveness};
use heartloop::wheel::{TimerKey, Wheel};
use opts::Rng;
use tokio_util::time::DelayQueue;
use tokio_util::time::delay_queue::Key as DqKey;

/// Sizes of one run.
struct Sizes {
    /// Timers per round (insert+cancel, expire).
    timers: usize,
    /// Connections and messages per round (liveness).
    conns: usize,
    msgs: usize,
    /// Timed rounds per scenario (one untimed warm-up round comes first).
    rounds: usize,
    /// Deadlines of the expiry scenario lie within this many ms.
    expire_spread_ms: u64,
}

const HELP: &str = "\
timers: the timer wheel and liveness stamps against a binary heap and tokio's DelayQueue

usage: cargo bench -p heartloop-benches --bench timers [-- OPTIONS]

options:
  --smoke      a run of a few seconds with tiny counts (also HEARTLOOP_BENCH_SMOKE=1)
  --bench      what `cargo bench` passes
  -h, --help   print this help
";

/// Whether to make a smoke run.
fn parse_args() -> Result<bool, lexopt::Error> {
    use lexopt::prelude::*;
    let mut smoke = std::env::var("HEARTLOOP_BENCH_SMOKE").is_ok_and(|v| v != "0" && !v.is_empty());
    let mut p = lexopt::Parser::from_env();
    while let Some(arg) = p.next()? {
        match arg {
            Long("smoke") => smoke = true,
            Long("bench") => {}
            Short('h') | Long("help") => opts::exit_help(HELP),
            _ => return Err(arg.unexpected()),
        }
    }
    Ok(smoke)
}

fn main() {
    let smoke = parse_args().unwrap_or_else(|e| opts::exit_usage("timers", e));
    let sizes = if smoke {
        Sizes {
            timers: 5_000,
            conns: 1_000,
            msgs: 50_000,
            rounds: 3,
            expire_spread_ms: 20,
        }
    } else {
        Sizes {
            timers: 100_000,
            conns: 10_000,
            msgs: 1_000_000,
            rounds: 11,
            expire_spread_ms: 100,
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio runtime");
    println!(
        "timers bench{}: {} timers, {} conns x {} msgs, {} rounds \
         (median [min..max] ns/op; ratio = peer / heartloop)",
        if smoke { " (smoke)" } else { "" },
        sizes.timers,
        sizes.conns,
        sizes.msgs,
        sizes.rounds
    );
    println!(
        "{:<28} {:<10} {:>10} {:>22} {:>7}",
        "scenario", "impl", "ns/op", "[min..max]", "ratio"
    );

    let rounds = sizes.rounds;
    let deadlines = offsets(sizes.timers, 1, 60_000, 1);
    let order = shuffled(sizes.timers, 2);
    compare(
        "insert+cancel",
        rounds,
        vec![
            (
                "heartloop",
                Box::new(|| wheel_insert_cancel(&deadlines, &order)),
            ),
            ("heap", Box::new(|| heap_insert_cancel(&deadlines, &order))),
            (
                "tokio",
                Box::new(|| rt.block_on(async { dq_insert_cancel(&deadlines, &order) })),
            ),
        ],
    );

    let targets: Vec<u32> = {
        let mut rng = Rng::new(3);
        (0..sizes.msgs)
            .map(|_| rng.below(sizes.conns as u64) as u32)
            .collect()
    };
    let conns = sizes.conns;
    compare(
        "liveness/msg",
        rounds,
        vec![
            ("heartloop", Box::new(|| liveness_stamps(conns, &targets))),
            ("wheel", Box::new(|| wheel_resets(conns, &targets))),
            ("heap", Box::new(|| heap_resets(conns, &targets))),
            (
                "tokio",
                Box::new(|| rt.block_on(async { dq_resets(conns, &targets) })),
            ),
        ],
    );

    let due = offsets(sizes.timers, 0, sizes.expire_spread_ms, 4);
    let spread = sizes.expire_spread_ms;
    compare(
        "expire (jump)",
        rounds,
        vec![
            ("heartloop", Box::new(|| wheel_expire(&due, spread, false))),
            ("heap", Box::new(|| heap_expire(&due, spread, false))),
            ("tokio", Box::new(|| rt.block_on(dq_expire(&due, spread)))),
        ],
    );
    compare(
        "expire (1ms steps)",
        rounds,
        vec![
            ("heartloop", Box::new(|| wheel_expire(&due, spread, true))),
            ("heap", Box::new(|| heap_expire(&due, spread, true))),
        ],
    );
}

// ---------------------------------------------------------------------------------- driver

/// One implementation of a scenario: a name and a round that returns ns per op.
type Contender<'a> = (&'static str, Box<dyn FnMut() -> f64 + 'a>);

/// Runs every contender once untimed (warm-up), then `rounds` rounds in which each runs once,
/// in an order rotated every round, so that a noisy neighbour hits all of them alike. Prints
/// the median ns/op with the fastest and slowest round, and the median over rounds of the
/// per-round ratio to the first contender (heartloop).
fn compare(scenario: &str, rounds: usize, mut contenders: Vec<Contender<'_>>) {
    for (_, f) in contenders.iter_mut() {
        f();
    }
    let k = contenders.len();
    let mut ns: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); k];
    for r in 0..rounds {
        for j in 0..k {
            let i = (j + r) % k;
            ns[i].push((contenders[i].1)());
        }
    }
    for (i, (name, _)) in contenders.iter().enumerate() {
        let mut ratios: Vec<f64> = ns[i].iter().zip(&ns[0]).map(|(p, h)| p / h).collect();
        let mut v = ns[i].clone();
        let range = format!("[{:.1}..{:.1}]", min(&v), max(&v));
        let m = median(&mut v);
        let ratio = median(&mut ratios);
        let label = if i == 0 { scenario } else { "" };
        println!("{label:<28} {name:<10} {m:>10.1} {range:>22} {ratio:>7.2}");
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}

/// Nanoseconds per op of `ops` operations that took `d`.
fn per_op(d: Duration, ops: usize) -> f64 {
    d.as_nanos() as f64 / ops.max(1) as f64
}

// ---------------------------------------------------------------------------------- inputs

/// `n` random offsets in `lo ..= hi` milliseconds, with microsecond resolution.
fn offsets(n: usize, lo_ms: u64, hi_ms: u64, seed: u64) -> Vec<Duration> {
    let mut rng = Rng::new(0x9E37_79B9_7F4A_7C15 ^ seed);
    let span_us = (hi_ms - lo_ms) * 1000 + 1;
    (0..n)
        .map(|_| Duration::from_micros(lo_ms * 1000 + rng.below(span_us)))
        .collect()
}

/// A random permutation of `0..n`.
fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut rng = Rng::new(0xD1B5_4A32_D192_ED03 ^ seed);
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        v.swap(i, rng.below(i as u64 + 1) as usize);
    }
    v
}

// ---------------------------------------------------------------------------------- the plain heap

/// A plain binary-heap timer queue with lazy cancellation: a cancelled timer's slot gets a
/// new generation, and its heap entry is skipped when it comes to the top.
struct HeapTimers {
    heap: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    /// Generation of each slot; odd = pending timer, even = free.
    gens: Vec<u32>,
    free: Vec<u32>,
}

#[derive(Clone, Copy)]
struct HeapKey {
    slot: u32,
    generation: u32,
}

impl HeapTimers {
    fn new() -> Self {
        HeapTimers {
            heap: BinaryHeap::new(),
            gens: Vec::new(),
            free: Vec::new(),
        }
    }

    fn insert(&mut self, when: Instant) -> HeapKey {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.gens.push(0);
            (self.gens.len() - 1) as u32
        });
        let g = &mut self.gens[slot as usize];
        *g += 1; // now odd: pending
        self.heap.push(Reverse((when, slot, *g)));
        HeapKey {
            slot,
            generation: *g,
        }
    }

    fn cancel(&mut self, key: HeapKey) -> bool {
        let g = &mut self.gens[key.slot as usize];
        if *g != key.generation {
            return false;
        }
        *g += 1; // even: free
        self.free.push(key.slot);
        true
    }

    /// Pops every entry due at `now`; appends the live ones' slots to `out`.
    fn expire(&mut self, now: Instant, out: &mut Vec<u32>) {
        while let Some(&Reverse((at, slot, generation))) = self.heap.peek() {
            if at > now {
                break;
            }
            self.heap.pop();
            if self.cancel(HeapKey { slot, generation }) {
                out.push(slot);
            }
        }
    }

    /// Drops every stale entry (what a real loop would pop over time).
    fn drain_stale(&mut self) {
        while let Some(Reverse((_, slot, generation))) = self.heap.pop() {
            debug_assert_ne!(self.gens[slot as usize], generation, "live entry drained");
        }
    }
}

// ------------------------------------------------------------------------- 1. insert+cancel

fn wheel_insert_cancel(deadlines: &[Duration], order: &[usize]) -> f64 {
    let start = Instant::now();
    let mut w: Wheel<usize> = Wheel::new(start);
    let mut keys: Vec<TimerKey> = Vec::with_capacity(deadlines.len());
    let t = Instant::now();
    for (i, d) in deadlines.iter().enumerate() {
        keys.push(w.insert(start + *d, i));
    }
    for &i in order {
        black_box(w.cancel(keys[i]));
    }
    let took = t.elapsed();
    assert!(w.is_empty());
    per_op(took, deadlines.len())
}

fn heap_insert_cancel(deadlines: &[Duration], order: &[usize]) -> f64 {
    let start = Instant::now();
    let mut h = HeapTimers::new();
    let mut keys: Vec<HeapKey> = Vec::with_capacity(deadlines.len());
    let t = Instant::now();
    for d in deadlines {
        keys.push(h.insert(start + *d));
    }
    for &i in order {
        black_box(h.cancel(keys[i]));
    }
    h.drain_stale();
    per_op(t.elapsed(), deadlines.len())
}

fn dq_insert_cancel(deadlines: &[Duration], order: &[usize]) -> f64 {
    let start = tokio::time::Instant::now();
    let mut q: DelayQueue<usize> = DelayQueue::new();
    let mut keys: Vec<DqKey> = Vec::with_capacity(deadlines.len());
    let t = Instant::now();
    for (i, d) in deadlines.iter().enumerate() {
        keys.push(q.insert_at(i, start + *d));
    }
    for &i in order {
        black_box(q.remove(&keys[i]));
    }
    let took = t.elapsed();
    assert!(q.is_empty());
    per_op(took, deadlines.len())
}

// ---------------------------------------------------------------------------------- 2. liveness

/// The instant of message `i`: one microsecond apart, read once per "turn" of 64 messages
/// (as the reactor reads the clock once per turn).
fn msg_time(base: Instant, i: usize) -> Instant {
    base + Duration::from_micros((i & !63) as u64)
}

fn liveness_stamps(conns: usize, targets: &[u32]) -> f64 {
    let base = Instant::now();
    let hb = Heartbeat::new(Duration::from_secs(1), Duration::from_secs(3));
    let mut live: Vec<Liveness> = (0..conns).map(|_| Liveness::new(hb, base)).collect();
    let t = Instant::now();
    let mut now = base;
    for (i, &c) in targets.iter().enumerate() {
        if i & 63 == 0 {
            now = msg_time(base, i);
        }
        live[c as usize].on_recv(now);
    }
    let took = t.elapsed();
    black_box(&live);
    per_op(took, targets.len())
}

fn wheel_resets(conns: usize, targets: &[u32]) -> f64 {
    let base = Instant::now();
    let timeout = Duration::from_secs(3);
    let mut w: Wheel<u32> = Wheel::new(base);
    let mut keys: Vec<TimerKey> = (0..conns as u32)
        .map(|c| w.insert(base + timeout, c))
        .collect();
    let t = Instant::now();
    let mut now = base;
    for (i, &c) in targets.iter().enumerate() {
        if i & 63 == 0 {
            now = msg_time(base, i);
        }
        let k = &mut keys[c as usize];
        w.cancel(*k);
        *k = w.insert(now + timeout, c);
    }
    let took = t.elapsed();
    black_box(&keys);
    per_op(took, targets.len())
}

fn heap_resets(conns: usize, targets: &[u32]) -> f64 {
    let base = Instant::now();
    let timeout = Duration::from_secs(3);
    let mut h = HeapTimers::new();
    let mut keys: Vec<HeapKey> = (0..conns).map(|_| h.insert(base + timeout)).collect();
    let t = Instant::now();
    let mut now = base;
    for (i, &c) in targets.iter().enumerate() {
        if i & 63 == 0 {
            now = msg_time(base, i);
        }
        let k = &mut keys[c as usize];
        h.cancel(*k);
        *k = h.insert(now + timeout);
    }
    // The stale entries (one per message) must be popped some day: count that work.
    for k in &keys {
        h.cancel(*k);
    }
    h.drain_stale();
    per_op(t.elapsed(), targets.len())
}

fn dq_resets(conns: usize, targets: &[u32]) -> f64 {
    let timeout = Duration::from_secs(3);
    let mut q: DelayQueue<u32> = DelayQueue::with_capacity(conns);
    let keys: Vec<DqKey> = (0..conns as u32).map(|c| q.insert(c, timeout)).collect();
    let base = tokio::time::Instant::now();
    let t = Instant::now();
    let mut now = base;
    for (i, &c) in targets.iter().enumerate() {
        if i & 63 == 0 {
            now = base + Duration::from_micros((i & !63) as u64);
        }
        q.reset_at(&keys[c as usize], now + timeout);
    }
    let took = t.elapsed();
    black_box(&q);
    per_op(took, targets.len())
}

// ---------------------------------------------------------------------------------- 3. expiry

fn wheel_expire(due: &[Duration], spread_ms: u64, steps: bool) -> f64 {
    let start = Instant::now();
    let mut w: Wheel<usize> = Wheel::new(start);
    for (i, d) in due.iter().enumerate() {
        w.insert(start + *d, i);
    }
    let mut out = Vec::with_capacity(due.len());
    let t = Instant::now();
    if steps {
        for ms in 0..=spread_ms + 1 {
            w.advance(start + Duration::from_millis(ms), &mut out);
        }
    } else {
        w.advance(start + Duration::from_millis(spread_ms + 1), &mut out);
    }
    let took = t.elapsed();
    assert_eq!(out.len(), due.len());
    per_op(took, due.len())
}

fn heap_expire(due: &[Duration], spread_ms: u64, steps: bool) -> f64 {
    let start = Instant::now();
    let mut h = HeapTimers::new();
    for d in due {
        h.insert(start + *d);
    }
    let mut out = Vec::with_capacity(due.len());
    let t = Instant::now();
    if steps {
        for ms in 0..=spread_ms + 1 {
            h.expire(start + Duration::from_millis(ms), &mut out);
        }
    } else {
        h.expire(start + Duration::from_millis(spread_ms + 1), &mut out);
    }
    let took = t.elapsed();
    assert_eq!(out.len(), due.len());
    per_op(took, due.len())
}

/// DelayQueue reads tokio's clock: insert, wait (untimed) until every timer is due, then
/// time draining them.
async fn dq_expire(due: &[Duration], spread_ms: u64) -> f64 {
    let start = tokio::time::Instant::now();
    let mut q: DelayQueue<usize> = DelayQueue::with_capacity(due.len());
    for (i, d) in due.iter().enumerate() {
        q.insert_at(i, start + *d);
    }
    tokio::time::sleep_until(start + Duration::from_millis(spread_ms + 2)).await;
    let mut cx = Context::from_waker(Waker::noop());
    let mut n = 0;
    let t = Instant::now();
    loop {
        match q.poll_expired(&mut cx) {
            Poll::Ready(Some(e)) => {
                black_box(e);
                n += 1;
            }
            Poll::Ready(None) => break,
            Poll::Pending => {
                // Not all due yet by tokio's clock (should not happen): let the driver run.
                tokio::task::yield_now().await;
            }
        }
    }
    let took = t.elapsed();
    assert_eq!(n, due.len());
    per_op(took, due.len())
}
