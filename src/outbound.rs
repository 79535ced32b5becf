//! Per-connection outbound write queue (sans-IO).
//!
//! The reactor performs the `writev` syscalls; this queue only holds the
//! pending bytes, hands them out as [`IoSlice`]s in wire order and is told
//! through [`OutboundQueue::consumed`] how many bytes the kernel accepted.
//!
//! # State machine
//!
//! A queue tracks three independent pieces of state:
//!
//! * **What is counted.** Every level below (watermarks, hard limit) is
//!   compared with the queue's [`charged`](OutboundQueue::charged) memory: its
//!   bytes plus [`QUEUE_ENTRY_COST`] per queued message, the bookkeeping a message
//!   costs beyond its bytes. Counting bytes alone let a million 1-byte
//!   messages (~110 MB of queue entries and allocations) fit "under" a 1 MiB
//!   limit.
//! * **Watermarks with hysteresis.** The queue is either *below* or *above*
//!   the high watermark. While below, the first push that brings
//!   [`charged`](OutboundQueue::charged) to `>= high_watermark` reports
//!   [`Watermark::High`] and the queue becomes *above*. While above, further
//!   pushes report nothing, however much the level oscillates; the first
//!   [`consumed`](OutboundQueue::consumed) that brings the level to
//!   `<= low_watermark` (charged) reports [`Watermark::Low`] and the queue becomes
//!   *below* again. Every crossing is therefore reported exactly once.
//! * **Hard limit.** A [`push`](OutboundQueue::push) that would take the
//!   queue past `hard_limit` fails with [`PushError::Full`] and queues
//!   nothing; the caller applies the configured [`OverflowPolicy`]. Control
//!   frames ([`push_control`](OutboundQueue::push_control)) are never
//!   refused.
//! * **Stall clock.** The clock is *stopped* while the queue is empty. A push
//!   into an empty queue starts it (`last_progress = now`); every
//!   `consumed(n)` with `n > 0` restarts it, or stops it when the queue
//!   drains. If the clock runs for `stall_timeout` without progress, the
//!   peer is slow: [`stalled`](OutboundQueue::stalled) returns `Some`.
//!
//! No method reads a clock: every time-dependent call takes `now`.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};

/// What a queued message is charged beyond its bytes, in bytes: its queue entries (one
/// or two of 40 B, with room to grow) and its payload's own allocation (a short `Data` is
/// a copy of its own; the allocator adds 16-32 B). Measured: 10,940 queued 6-byte
/// length-delimited frames took ~110 B each beyond their bytes. Counted by the watermarks,
/// the hard limit and the reactor-wide cap, so that many tiny messages cannot hold much
/// more memory than the limits say.
pub const QUEUE_ENTRY_COST: usize = 128;

/// What to do when a send would take the queue past its hard limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OverflowPolicy {
    /// `send` fails with [`SendError::Full`](crate::SendError::Full); nothing is queued.
    Reject,
    /// The connection is ended as a slow peer.
    Disconnect,
}

/// Limits of one connection's queue.
///
/// Default: low watermark 64 KiB, high watermark 256 KiB, hard limit 4 MiB
/// with [`OverflowPolicy::Disconnect`], no stall timeout.
///
/// Every level counts memory, not only bytes: a queued message is charged its bytes
/// plus [`QUEUE_ENTRY_COST`] (128 B) for its bookkeeping. A 1 MiB hard limit holds 1 MiB of
/// 64 KiB messages but only ~7,900 one-byte messages (with a length-delimited header,
/// 6 B each), which take ~1 MiB of memory, not ~8,000 times more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutboundConfig {
    /// Level (bytes charged, see above) at or below which
    /// [`Event::Writable`](crate::Event::Writable) is reported after an
    /// [`Event::WriteBlocked`](crate::Event::WriteBlocked).
    pub low_watermark: usize,
    /// Level (bytes charged) at or above which
    /// [`Event::WriteBlocked`](crate::Event::WriteBlocked) is reported.
    pub high_watermark: usize,
    /// Most bytes the queue may be charged (its bytes plus [`QUEUE_ENTRY_COST`] per message);
    /// a send past it gets the `policy`.
    pub hard_limit: usize,
    /// What the caller does when a push exceeds `hard_limit`.
    pub policy: OverflowPolicy,
    /// How long a non-empty queue may go without progress before the peer
    /// counts as slow; `None` disables the stall clock.
    pub stall_timeout: Option<Duration>,
}

impl OutboundConfig {
    const DEFAULT: Self = Self {
        low_watermark: 64 * 1024,
        high_watermark: 256 * 1024,
        hard_limit: 4 * 1024 * 1024,
        policy: OverflowPolicy::Disconnect,
        stall_timeout: None,
    };

    /// A default configuration with the given watermarks.
    ///
    /// `low` is clamped to at most `high` (a debug assertion flags
    /// `low > high`), and the hard limit is raised to at least `high`.
    #[must_use]
    pub const fn watermarks(low: usize, high: usize) -> Self {
        debug_assert!(low <= high, "low watermark above high watermark");
        let mut cfg = Self::DEFAULT;
        cfg.low_watermark = if low < high { low } else { high };
        cfg.high_watermark = high;
        if cfg.hard_limit < high {
            cfg.hard_limit = high;
        }
        cfg
    }

    /// Only a hard limit of `bytes` with `policy`, and no watermark events (for owners
    /// who do not throttle producers, such as a broker that cuts slow consumers).
    #[must_use]
    pub const fn limit(bytes: usize, policy: OverflowPolicy) -> Self {
        let mut cfg = Self::DEFAULT;
        cfg.low_watermark = usize::MAX;
        cfg.high_watermark = usize::MAX;
        cfg.hard_limit = bytes;
        cfg.policy = policy;
        cfg
    }

    /// Sets the hard limit in bytes and the policy applied when it is hit.
    #[must_use]
    pub const fn hard_limit(mut self, bytes: usize, policy: OverflowPolicy) -> Self {
        self.hard_limit = bytes;
        self.policy = policy;
        self
    }

    /// Enables the stall clock: a non-empty queue without progress for
    /// `timeout` marks the peer as slow.
    #[must_use]
    pub const fn on_stall(mut self, timeout: Duration) -> Self {
        self.stall_timeout = Some(timeout);
        self
    }
}

impl Default for OutboundConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A crossing of a watermark, reported exactly once per crossing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watermark {
    /// Queued bytes rose to or above the high watermark.
    High {
        /// Bytes queued right after the crossing.
        queued: usize,
    },
    /// Queued bytes fell to or below the low watermark after a
    /// [`Watermark::High`].
    Low,
}

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The push would exceed the hard limit; nothing was queued.
    Full {
        /// Bytes queued when the push was attempted.
        queued: usize,
        /// Length of the refused message.
        len: usize,
    },
}

/// One non-empty piece of a queued message.
#[derive(Debug)]
struct Chunk {
    data: Bytes,
    /// This chunk is the last one of its message.
    end: bool,
    /// The message is a control frame.
    control: bool,
}

impl Chunk {
    fn new(data: Bytes, end: bool, control: bool) -> Self {
        Self { data, end, control }
    }
}

/// A connection's outbound byte queue with watermarks, a hard limit and a
/// stall clock. See the [module documentation](self) for the state machine.
///
/// # Examples
///
/// ```
/// use std::time::{Duration, Instant};
/// use bytes::Bytes;
/// use heartloop::outbound::{QUEUE_ENTRY_COST, OutboundConfig, OutboundQueue, Watermark};
///
/// let cfg = OutboundConfig::watermarks(200, 400).on_stall(Duration::from_secs(5));
/// let t0 = Instant::now();
/// let mut q = OutboundQueue::new();
///
/// // A length-delimited frame: header and payload, payload not copied.
/// let ev = q.push(Bytes::from_static(b"\x00\x05"), Bytes::from_static(b"hello"), &cfg, t0);
/// assert_eq!(ev, Ok(None));
/// assert_eq!(q.queued(), 7);
/// assert_eq!(q.charged(), 7 + QUEUE_ENTRY_COST);
/// // Reaching the high watermark (by the charge) is reported once.
/// let ev = q.push(Bytes::new(), Bytes::from(vec![b'!'; 200]), &cfg, t0);
/// assert_eq!(ev, Ok(Some(Watermark::High { queued: 207 })));
///
/// // The reactor writes the slices and reports what the kernel took.
/// let mut slices = [std::io::IoSlice::new(&[]); 64];
/// let n = q.io_slices(&mut slices);
/// assert_eq!(n, 3);
/// let ev = q.consumed(135, &cfg, t0 + Duration::from_millis(10));
/// assert_eq!(ev, Some(Watermark::Low));
/// assert_eq!((q.queued(), q.charged()), (72, 72 + QUEUE_ENTRY_COST));
///
/// // No progress for 5 s: slow peer.
/// let later = t0 + Duration::from_millis(5010);
/// assert_eq!(q.stalled(&cfg, later), Some(Duration::from_secs(5)));
/// ```
#[derive(Debug, Default)]
pub struct OutboundQueue {
    chunks: VecDeque<Chunk>,
    queued: usize,
    /// Messages wholly or partly queued (each charged [`QUEUE_ENTRY_COST`]).
    messages: usize,
    above_high: bool,
    /// Some bytes of the front message have been consumed already.
    front_started: bool,
    /// Stall clock: `None` while stopped (queue empty).
    last_progress: Option<Instant>,
}

/// What a message of `len` bytes is charged.
pub fn charge(len: usize) -> usize {
    len.saturating_add(QUEUE_ENTRY_COST)
}

/// Capacity (in chunks) an idle queue may keep after `shrink_if_idle`.
const IDLE_CAPACITY: usize = 8;

impl OutboundQueue {
    /// An empty queue; does not allocate.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues one message made of `header` followed by `payload`.
    ///
    /// An empty `header` is skipped (length-delimited framing passes the
    /// header separately to avoid copying the payload). A message of zero
    /// total length is accepted and ignored. If the charge after the push
    /// (`charged() + len + QUEUE_ENTRY_COST`) would exceed `cfg.hard_limit`, returns
    /// [`PushError::Full`] and queues nothing; the caller applies `cfg.policy`.
    ///
    /// Starts the stall clock if the queue was empty. Returns
    /// `Some(Watermark::High { .. })` exactly when this push crossed the high
    /// watermark from below.
    pub fn push(
        &mut self,
        header: Bytes,
        payload: Bytes,
        cfg: &OutboundConfig,
        now: Instant,
    ) -> Result<Option<Watermark>, PushError> {
        let len = header.len().saturating_add(payload.len());
        if len == 0 {
            return Ok(None);
        }
        if self.charged().saturating_add(charge(len)) > cfg.hard_limit {
            return Err(PushError::Full {
                queued: self.queued,
                len,
            });
        }
        self.start_clock(now);
        let has_payload = !payload.is_empty();
        if !header.is_empty() {
            self.chunks
                .push_back(Chunk::new(header, !has_payload, false));
        }
        if has_payload {
            self.chunks.push_back(Chunk::new(payload, true, false));
        }
        self.queued += len;
        self.messages += 1;
        Ok(self.check_high(cfg))
    }

    /// Queues a control frame (ping/pong). Never refused and not subject to
    /// the hard limit, but counted in [`queued`](Self::queued) and
    /// [`charged`](Self::charged).
    ///
    /// A frame equal to one that still waits (not started) is not queued
    /// again: one pending pong answers every ping so far. So a peer that
    /// floods pings and never reads holds at most one waiting copy of each
    /// control frame here, and each call costs O(1) (at most one started
    /// message and a few distinct control frames are stepped over).
    ///
    /// The frame is placed ahead of pending data at the first message
    /// boundary: right after the front message if that message is partly
    /// written, otherwise at the very front; control frames keep FIFO order
    /// among themselves. An empty frame is ignored. May report
    /// [`Watermark::High`] like [`push`](Self::push).
    pub fn push_control(
        &mut self,
        frame: Bytes,
        cfg: &OutboundConfig,
        now: Instant,
    ) -> Option<Watermark> {
        if frame.is_empty() {
            return None;
        }
        self.start_clock(now);
        let mut at = 0;
        if self.front_started {
            // Skip the rest of the partly written front message.
            while at < self.chunks.len() {
                at += 1;
                if self.chunks[at - 1].end {
                    break;
                }
            }
        }
        while at < self.chunks.len() && self.chunks[at].control {
            if self.chunks[at].data == frame {
                return None; // already owed: that one answers this one too
            }
            at += 1;
        }
        self.queued += frame.len();
        self.messages += 1;
        self.chunks.insert(at, Chunk::new(frame, true, true));
        self.check_high(cfg)
    }

    /// Fills `out` with up to `out.len()` slices of the queued bytes in wire
    /// order (front first) and returns how many were filled. Slots past the
    /// returned count are left untouched.
    pub fn io_slices<'a>(&'a self, out: &mut [IoSlice<'a>]) -> usize {
        let mut filled = 0;
        for (slot, chunk) in out.iter_mut().zip(&self.chunks) {
            *slot = IoSlice::new(&chunk.data);
            filled += 1;
        }
        filled
    }

    /// Records that the kernel accepted `n` bytes from the front.
    ///
    /// `n` may end inside a chunk and may span many chunks. `n > 0` counts as
    /// progress: it restarts the stall clock, or stops it if the queue is now
    /// empty. Returns `Some(Watermark::Low)` exactly when this crossed to at
    /// most the low watermark after a [`Watermark::High`]. An `n` larger than
    /// [`queued`](Self::queued) is a caller bug (debug assertion); it is
    /// clamped.
    pub fn consumed(&mut self, n: usize, cfg: &OutboundConfig, now: Instant) -> Option<Watermark> {
        debug_assert!(n <= self.queued, "consumed {n} > queued {}", self.queued);
        let mut left = n.min(self.queued);
        if left == 0 {
            return None;
        }
        self.queued -= left;
        while left > 0 {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            if left < front.data.len() {
                front.data.advance(left);
                self.front_started = true;
                break;
            }
            left -= front.data.len();
            self.front_started = !front.end;
            if front.end {
                self.messages -= 1;
            }
            self.chunks.pop_front();
        }
        self.last_progress = if self.chunks.is_empty() {
            self.front_started = false;
            None
        } else {
            Some(now)
        };
        if self.above_high && self.charged() <= cfg.low_watermark {
            self.above_high = false;
            return Some(Watermark::Low);
        }
        None
    }

    /// Bytes queued (data and control frames, minus what was consumed).
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// The memory the queue is charged: [`queued`](Self::queued) plus
    /// [`QUEUE_ENTRY_COST`] per message wholly or partly queued. What the watermarks
    /// and the hard limit are compared with.
    pub fn charged(&self) -> usize {
        self.queued
            .saturating_add(self.messages.saturating_mul(QUEUE_ENTRY_COST))
    }

    /// Whether no bytes are queued.
    pub fn is_empty(&self) -> bool {
        self.queued == 0
    }

    /// How long the queue has gone without progress at `now` (since the kernel last took
    /// a byte of it, or since it became non-empty); `None` when it is empty.
    pub fn waiting_for(&self, now: Instant) -> Option<Duration> {
        self.last_progress.map(|t| now.saturating_duration_since(t))
    }

    /// When the stall clock would fire: `last_progress + stall_timeout` if
    /// the queue is non-empty and `cfg.stall_timeout` is set.
    pub fn stall_deadline(&self, cfg: &OutboundConfig) -> Option<Instant> {
        self.last_progress?.checked_add(cfg.stall_timeout?)
    }

    /// `Some(stalled_for)` if the queue is non-empty, `cfg.stall_timeout` is
    /// set and no progress was made for at least that long before `now`.
    pub fn stalled(&self, cfg: &OutboundConfig, now: Instant) -> Option<Duration> {
        let timeout = cfg.stall_timeout?;
        let since = now.saturating_duration_since(self.last_progress?);
        (since >= timeout).then_some(since)
    }

    /// How long the non-empty queue has gone without progress at `now` (`None` when
    /// empty), whether or not a stall timeout is set.
    pub fn since_progress(&self, now: Instant) -> Option<Duration> {
        Some(now.saturating_duration_since(self.last_progress?))
    }

    /// Drops everything (abort) and returns the number of bytes dropped.
    /// Resets the watermark state and stops the stall clock.
    pub fn clear(&mut self) -> usize {
        let dropped = self.queued;
        self.chunks.clear();
        self.queued = 0;
        self.messages = 0;
        self.above_high = false;
        self.front_started = false;
        self.last_progress = None;
        dropped
    }

    /// Releases the memory of an empty queue whose capacity exceeds a small
    /// constant, so idle connections hold no buffers.
    pub fn shrink_if_idle(&mut self) {
        if self.chunks.is_empty() && self.chunks.capacity() > IDLE_CAPACITY {
            self.chunks = VecDeque::new();
        }
    }

    fn start_clock(&mut self, now: Instant) {
        if self.chunks.is_empty() {
            self.last_progress = Some(now);
        }
    }

    fn check_high(&mut self, cfg: &OutboundConfig) -> Option<Watermark> {
        if !self.above_high && self.charged() >= cfg.high_watermark {
            self.above_high = true;
            return Some(Watermark::High {
                queued: self.queued,
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const E: usize = QUEUE_ENTRY_COST;

    fn b(s: &'static [u8]) -> Bytes {
        Bytes::from_static(s)
    }

    fn wire(q: &OutboundQueue) -> Vec<u8> {
        let mut slices = [IoSlice::new(&[]); 64];
        let n = q.io_slices(&mut slices);
        slices[..n].iter().flat_map(|s| s.iter().copied()).collect()
    }

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn limit_only_config_never_reports_watermarks() {
        let t0 = Instant::now();
        let cfg = OutboundConfig::limit(10 * (10 + E), OverflowPolicy::Reject);
        let mut q = OutboundQueue::new();
        for _ in 0..10 {
            assert_eq!(
                q.push(Bytes::new(), Bytes::from(vec![0u8; 10]), &cfg, t0),
                Ok(None)
            );
        }
        assert!(
            q.push(Bytes::new(), Bytes::from(vec![0u8; 1]), &cfg, t0)
                .is_err()
        );
        assert_eq!(q.consumed(100, &cfg, t0), None);
    }

    /// The limits count memory: each message is charged QUEUE_ENTRY_COST beyond its bytes, so
    /// a flood of tiny messages meets the hard limit long before its bytes would.
    #[test]
    fn tiny_messages_are_charged_their_bookkeeping() {
        let t0 = Instant::now();
        let cfg = OutboundConfig::limit(1 << 20, OverflowPolicy::Reject);
        let mut q = OutboundQueue::new();
        let mut n = 0usize;
        while q.push(b(b"h"), b(b"x"), &cfg, t0).is_ok() {
            n += 1;
        }
        assert_eq!(
            n,
            (1 << 20) / (2 + E),
            "one-byte messages under a 1 MiB limit"
        );
        assert_eq!(q.charged(), n * (2 + E));
        assert_eq!(q.queued(), 2 * n);
        // The charge leaves with the message: a header written alone still counts.
        q.consumed(1, &cfg, t0);
        assert_eq!(q.charged(), (n - 1) * (2 + E) + 1 + E);
        q.consumed(1, &cfg, t0);
        assert_eq!(q.charged(), (n - 1) * (2 + E));
        assert_eq!(q.clear(), 2 * (n - 1));
        assert_eq!(q.charged(), 0);
    }

    #[test]
    fn config_builders() {
        let d = OutboundConfig::default();
        assert_eq!((d.low_watermark, d.high_watermark), (64 << 10, 256 << 10));
        assert_eq!(
            (d.hard_limit, d.policy, d.stall_timeout),
            (4 << 20, OverflowPolicy::Disconnect, None)
        );
        let c = OutboundConfig::watermarks(1, 8 << 20).on_stall(Duration::from_secs(3));
        assert_eq!(
            (c.hard_limit, c.stall_timeout),
            (8 << 20, Some(Duration::from_secs(3)))
        );
        let c = c.hard_limit(100, OverflowPolicy::Reject);
        assert_eq!((c.hard_limit, c.policy), (100, OverflowPolicy::Reject));
    }

    #[test]
    fn watermark_hysteresis() {
        // Levels by the charge: bytes + E per message.
        let cfg = OutboundConfig::watermarks(E + 4, 2 * E + 10);
        let t0 = Instant::now();
        let mut q = OutboundQueue::new();
        assert_eq!(q.push(b(b""), b(b"123456789"), &cfg, t0), Ok(None));
        assert_eq!(q.consumed(9, &cfg, t0), None, "no Low without High");
        assert_eq!(q.push(b(b"1234"), b(b"567890"), &cfg, t0), Ok(None));
        assert_eq!(
            q.push(b(b""), b(b"ab"), &cfg, t0),
            Ok(Some(Watermark::High { queued: 12 }))
        );
        // Oscillating around high does not repeat High.
        assert_eq!(q.consumed(2, &cfg, t0), None);
        assert_eq!(q.charged(), 2 * E + 10);
        assert_eq!(q.push(b(b""), b(b"cd"), &cfg, t0), Ok(None));
        assert_eq!(q.push_control(b(b"ping"), &cfg, t0), None);
        assert_eq!(wire(&q), b"34567890pingabcd");
        assert_eq!(q.consumed(13, &cfg, t0), None);
        assert_eq!((q.queued(), q.charged()), (3, 2 * E + 3));
        assert_eq!(q.consumed(1, &cfg, t0), Some(Watermark::Low));
        assert_eq!(q.consumed(1, &cfg, t0), None);
        assert_eq!(
            q.push_control(b(b"012345678"), &cfg, t0),
            Some(Watermark::High { queued: 10 })
        );
    }

    #[test]
    fn partial_writes() {
        let cfg = OutboundConfig::default();
        let t0 = Instant::now();
        let mut q = OutboundQueue::new();
        q.push(b(b""), b(b"abcd"), &cfg, t0).unwrap();
        q.push(b(b""), b(b"efg"), &cfg, t0).unwrap();
        q.push(b(b"hi"), b(b"jk"), &cfg, t0).unwrap(); // header + payload
        assert_eq!(q.push(b(b""), b(b""), &cfg, t0), Ok(None));
        q.push(b(b"!"), b(b""), &cfg, t0).unwrap(); // header only
        assert_eq!(q.queued(), 12);
        assert_eq!(q.io_slices(&mut [IoSlice::new(&[]); 8]), 5);
        q.consumed(2, &cfg, t0);
        let mut slices = [IoSlice::new(&[]); 2];
        assert_eq!(q.io_slices(&mut slices), 2);
        assert_eq!((&*slices[0], &*slices[1]), (&b"cd"[..], &b"efg"[..]));
        q.consumed(4, &cfg, t0);
        assert_eq!(wire(&q), b"ghijk!");
        q.consumed(2, &cfg, t0);
        assert_eq!(wire(&q), b"ijk!");
        q.consumed(4, &cfg, t0);
        assert!(q.is_empty());
        assert_eq!(q.io_slices(&mut [IoSlice::new(&[]); 4]), 0);
    }

    #[test]
    fn control_placement() {
        let cfg = OutboundConfig::default();
        let t0 = Instant::now();
        let mut q = OutboundQueue::new();
        q.push_control(b(b"P"), &cfg, t0);
        assert_eq!(wire(&q), b"P");
        q.consumed(1, &cfg, t0);
        // Front message untouched: control goes to the very front.
        q.push(b(b"h"), b(b"aa"), &cfg, t0).unwrap();
        q.push_control(b(b"P"), &cfg, t0);
        assert_eq!(wire(&q), b"Phaa");
        // Several control frames keep FIFO order.
        q.push_control(b(b"Q"), &cfg, t0);
        assert_eq!(wire(&q), b"PQhaa");
        q.consumed(2, &cfg, t0);
        // Header fully written, payload not: control goes after the payload.
        q.push(b(b""), b(b"bb"), &cfg, t0).unwrap();
        q.consumed(1, &cfg, t0);
        q.push_control(b(b"R"), &cfg, t0);
        assert_eq!(wire(&q), b"aaRbb");
        // Payload partly written: still after it, behind earlier controls.
        q.consumed(1, &cfg, t0);
        q.push_control(b(b"S"), &cfg, t0);
        assert_eq!(wire(&q), b"aRSbb");
        q.consumed(2, &cfg, t0);
        q.push_control(b(b"T"), &cfg, t0);
        assert_eq!(wire(&q), b"STbb", "partly written control frame");
        q.consumed(2, &cfg, t0);
        q.push_control(b(b"U"), &cfg, t0);
        assert_eq!(wire(&q), b"Ubb");
        assert_eq!(q.queued(), 3);
    }

    /// Regression: every ping of a flood queued its own pong ahead of the data, each
    /// insert scanning all earlier ones (80,000 pings from a peer that never read grew
    /// the queue past its hard limit and stalled one turn for 2 s). One waiting pong now
    /// answers them all.
    #[test]
    fn a_ping_flood_owes_one_waiting_pong() {
        let cfg = OutboundConfig::default();
        let t0 = Instant::now();
        let mut q = OutboundQueue::new();
        q.push(b(b"h"), b(b"data"), &cfg, t0).unwrap();
        q.consumed(1, &cfg, t0); // the front message is partly written
        let started = std::time::Instant::now();
        for _ in 0..100_000 {
            q.push_control(b(b"PONG!"), &cfg, t0);
            q.push_control(b(b"PING!"), &cfg, t0);
        }
        assert_eq!(wire(&q), b"dataPONG!PING!");
        assert_eq!(q.queued(), 4 + 10);
        // Once the waiting pong is on its way, the next ping is owed a new one.
        q.consumed(6, &cfg, t0); // "data" and "PO"
        q.push_control(b(b"PONG!"), &cfg, t0);
        assert_eq!(
            wire(&q),
            b"NG!PING!PONG!",
            "the started pong, then a fresh one"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "O(1) per control frame"
        );
    }

    #[test]
    fn hard_limit_reject_leaves_queue_unchanged() {
        let cfg = OutboundConfig::limit(2 * E + 6, OverflowPolicy::Reject);
        let t0 = Instant::now();
        let mut q = OutboundQueue::new();
        assert_eq!(
            q.push(b(b""), Bytes::from(vec![0u8; 2 * E]), &cfg, t0),
            Err(PushError::Full {
                queued: 0,
                len: 2 * E
            })
        );
        assert!(q.is_empty());
        q.push(b(b"12"), b(b"34"), &cfg, t0).unwrap();
        assert_eq!(
            q.push(b(b"5"), b(b"67"), &cfg, t0),
            Err(PushError::Full { queued: 4, len: 3 })
        );
        assert_eq!(q.push(b(b"5"), b(b"6"), &cfg, t0), Ok(None));
        // Control frames are never refused.
        assert_eq!(q.push_control(b(b"pp"), &cfg, t0), None);
        assert_eq!((q.queued(), q.charged()), (8, 3 * E + 8));
        assert_eq!(wire(&q), b"pp123456");
    }

    #[test]
    fn stall_clock() {
        let cfg = OutboundConfig::default().on_stall(Duration::from_millis(100));
        let t0 = Instant::now();
        let mut q = OutboundQueue::new();
        assert_eq!(q.stall_deadline(&cfg), None);
        q.push(b(b""), b(b"abcdef"), &cfg, ms(t0, 10)).unwrap();
        assert_eq!(q.stall_deadline(&cfg), Some(ms(t0, 110)));
        assert_eq!(q.stall_deadline(&OutboundConfig::default()), None);
        // A push into a non-empty queue is not progress.
        q.push(b(b""), b(b"g"), &cfg, ms(t0, 50)).unwrap();
        assert_eq!(q.stalled(&cfg, ms(t0, 109)), None);
        assert_eq!(
            q.stalled(&cfg, ms(t0, 110)),
            Some(Duration::from_millis(100))
        );
        assert_eq!(q.consumed(0, &cfg, ms(t0, 120)), None);
        assert_eq!(q.stall_deadline(&cfg), Some(ms(t0, 110)));
        q.consumed(2, &cfg, ms(t0, 130));
        assert_eq!(q.stall_deadline(&cfg), Some(ms(t0, 230)));
        assert_eq!(q.stalled(&cfg, ms(t0, 200)), None);
        q.consumed(5, &cfg, ms(t0, 140));
        assert_eq!(q.stall_deadline(&cfg), None);
        assert_eq!(q.stalled(&cfg, ms(t0, 10_000)), None);
        q.push_control(b(b"p"), &cfg, ms(t0, 500));
        assert_eq!(q.stall_deadline(&cfg), Some(ms(t0, 600)));
    }

    #[test]
    fn clear_and_shrink() {
        let cfg = OutboundConfig::watermarks(1, 2).on_stall(Duration::from_secs(1));
        let t0 = Instant::now();
        let mut q = OutboundQueue::new();
        for _ in 0..20 {
            q.push(b(b"h"), b(b"p"), &cfg, t0).unwrap();
        }
        q.consumed(1, &cfg, t0);
        assert_eq!(q.clear(), 39);
        assert!(q.is_empty());
        assert_eq!(q.stall_deadline(&cfg), None);
        // Watermark state was reset: High is reported again.
        assert!(q.push(b(b""), b(b"ab"), &cfg, t0).unwrap().is_some());
        q.shrink_if_idle();
        assert!(q.chunks.capacity() > IDLE_CAPACITY, "not idle");
        q.consumed(2, &cfg, t0);
        q.shrink_if_idle();
        assert_eq!(q.chunks.capacity(), 0);
        assert_eq!(OutboundQueue::new().chunks.capacity(), 0);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push(usize, usize),
        Control(usize),
        Consume(usize),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            (0..4usize, 0..7usize).prop_map(|(h, p)| Op::Push(h, p)),
            (0..4usize).prop_map(Op::Control),
            (0..100usize).prop_map(Op::Consume),
        ]
    }

    proptest::proptest! {
        #[test]
        fn matches_model(ops in proptest::collection::vec(op(), 0..80)) {
            // Levels by the charge: bytes + E per message.
            let cfg = OutboundConfig::watermarks(E + 5, 2 * E + 15)
                .hard_limit(3 * E + 30, OverflowPolicy::Reject);
            let t0 = Instant::now();
            let mut q = OutboundQueue::new();
            // Model: whole messages (bytes, is_control) and the front offset.
            let mut msgs: VecDeque<(Vec<u8>, bool)> = VecDeque::new();
            let mut off = 0usize;
            let (mut above, mut next) = (false, 0u8);
            let mut fresh = |len: usize| -> Vec<u8> {
                (0..len).map(|_| { next = next.wrapping_add(1); next }).collect()
            };
            for op in ops {
                let queued: usize = msgs.iter().map(|m| m.0.len()).sum::<usize>() - off;
                let charged = queued + msgs.len() * E;
                let event = match op {
                    Op::Push(h, p) => {
                        let (h, p) = (fresh(h), fresh(p));
                        let res = q.push(Bytes::from(h.clone()), Bytes::from(p.clone()), &cfg, t0);
                        let len = h.len() + p.len();
                        if len > 0 && charged + len + E > 3 * E + 30 {
                            proptest::prop_assert_eq!(res, Err(PushError::Full { queued, len }));
                            None
                        } else {
                            if len > 0 { msgs.push_back(([h, p].concat(), false)); }
                            res.unwrap()
                        }
                    }
                    Op::Control(len) => {
                        let f = fresh(len);
                        let ev = q.push_control(Bytes::from(f.clone()), &cfg, t0);
                        if len > 0 {
                            let mut at = usize::from(off > 0);
                            while at < msgs.len() && msgs[at].1 { at += 1; }
                            msgs.insert(at, (f, true));
                        }
                        ev
                    }
                    Op::Consume(pct) => {
                        let n = queued * pct / 99;
                        off += n;
                        while msgs.front().is_some_and(|m| m.0.len() <= off) {
                            off -= msgs.pop_front().unwrap().0.len();
                        }
                        q.consumed(n, &cfg, t0)
                    }
                };
                let queued: usize = msgs.iter().map(|m| m.0.len()).sum::<usize>() - off;
                let charged = queued + msgs.len() * E;
                let want = if !above && charged >= 2 * E + 15 {
                    above = true;
                    Some(Watermark::High { queued })
                } else if above && charged <= E + 5 {
                    above = false;
                    Some(Watermark::Low)
                } else {
                    None
                };
                proptest::prop_assert_eq!(event, want);
                let expect: Vec<u8> = msgs.iter().flat_map(|m| m.0.iter().copied()).skip(off).collect();
                proptest::prop_assert_eq!(wire(&q), expect);
                proptest::prop_assert_eq!(q.queued(), queued);
                proptest::prop_assert_eq!(q.charged(), charged);
                proptest::prop_assert_eq!(q.is_empty(), queued == 0);
            }
        }
    }
}
