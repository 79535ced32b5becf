//! Hierarchical timer wheel (sans-IO: it never reads a clock).
//!
//! The design follows G. Varghese and T. Lauck, *"Hashed and Hierarchical
//! Timing Wheels: Data Structures for the Efficient Implementation of a Timer
//! Facility"* (SOSP 1987), in the shape used by tokio's timer driver.
//!
//! Time is counted in whole-millisecond *ticks* since the `start` instant
//! given to [`Wheel::new`]. There are `NUM_LEVELS` levels of `SLOTS`
//! slots each; a slot of level `L` covers `64^L` ticks:
//!
//! | level | slot width  | level range   |
//! |-------|-------------|---------------|
//! | 0     | 1 ms        | 64 ms         |
//! | 1     | 64 ms       | ~4.1 s        |
//! | 2     | ~4.1 s      | ~4.4 min      |
//! | 3     | ~4.4 min    | ~4.7 h        |
//! | 4     | ~4.7 h      | ~12.4 days    |
//! | 5     | ~12.4 days  | ~2.2 years    |
//!
//! A timer due at tick `d` is stored at the level of the most significant
//! 6-bit group in which `d` differs from the wheel's current tick `elapsed`
//! (`level_for`), in the slot given by that group of `d` (`slot_for`).
//! Hence all timers of level `L` lie in the current level-`L+1` slot, in a
//! slot strictly after the current one, and every level-`L` timer is due
//! before every level-`L+1` timer. Each level keeps a `u64` occupancy
//! bitmap, so the next occupied slot is found with one rotate and one
//! `trailing_zeros` per level, and [`Wheel::advance`] jumps straight from one
//! occupied slot to the next: a long jump costs O(occupied slots), never
//! O(ticks). When time reaches the start of a slot of level `L > 0`, its
//! timers are *cascaded*: each fires if due, or is re-inserted at a lower
//! level. A timer therefore moves at most `NUM_LEVELS` times.
//!
//! Deadlines further away than the wheel can represent (`MAX_DURATION`)
//! keep their true deadline but are *placed* at the last tick the top level
//! can hold without wrapping onto the current top-level slot; when that slot
//! is reached they are re-inserted, again clamped, until their deadline is in
//! range. They therefore fire at their time, never early.
//!
//! Timers live in a `Vec`-backed slab with a free list; each slot is an
//! intrusive doubly-linked list threaded through the slab, so insert and
//! cancel are O(1) and allocation-free once the slab has grown. A
//! [`TimerKey`] carries a generation, so a stale key never cancels a timer
//! that reuses its slab entry.

use std::fmt;
use std::time::{Duration, Instant};

/// Bits of the tick consumed by one level.
const BITS_PER_LEVEL: u32 = 6;
/// Slots per level.
const SLOTS: usize = 1 << BITS_PER_LEVEL;
/// Mask selecting a slot index within a level.
const SLOT_MASK: u64 = SLOTS as u64 - 1;
/// Number of levels.
const NUM_LEVELS: usize = 6;
/// Longest distance, in ticks, that the wheel can represent (`64^6 - 1` ms,
/// about 2.2 years); farther deadlines are clamped and re-inserted.
const MAX_DURATION: u64 = (1 << (BITS_PER_LEVEL * NUM_LEVELS as u32)) - 1;
/// Ticks covered by one slot of the top level.
const TOP_SLOT_WIDTH: u64 = 1 << (BITS_PER_LEVEL * (NUM_LEVELS as u32 - 1));
/// Ticks are clamped here so that slot arithmetic can never overflow.
const MAX_TICK: u64 = u64::MAX >> 2;
/// Null link in the intrusive lists and the free list.
const NIL: u32 = u32::MAX;
/// List index of the "already due" list (after the `NUM_LEVELS * SLOTS` slots).
const DUE: usize = NUM_LEVELS * SLOTS;

/// Level at which a timer placed at tick `when` is stored while the wheel is
/// at tick `elapsed` (`when > elapsed`): the index of the most significant
/// 6-bit group in which they differ, clamped to the top level.
fn level_for(elapsed: u64, when: u64) -> usize {
    let mut masked = (elapsed ^ when) | SLOT_MASK;
    if masked >= MAX_DURATION {
        masked = MAX_DURATION - 1;
    }
    let significant = 63 - masked.leading_zeros();
    (significant / BITS_PER_LEVEL) as usize
}

/// Slot of `level` that holds tick `when`.
fn slot_for(when: u64, level: usize) -> usize {
    ((when >> (level as u32 * BITS_PER_LEVEL)) & SLOT_MASK) as usize
}

/// Ticks covered by one slot of `level`.
fn slot_width(level: usize) -> u64 {
    1 << (level as u32 * BITS_PER_LEVEL)
}

/// Opaque handle to a scheduled timer, returned by [`Wheel::insert`].
///
/// It holds a slab index and a generation, so the key of a fired or
/// cancelled timer never cancels another timer that reuses the entry. The
/// generation is 64 bits wide and never wraps (2^64 reuses of one entry would
/// take centuries at a billion a second).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimerKey {
    index: u32,
    generation: u64,
}

/// One slab entry: a pending timer, or a free entry when `value` is `None`.
struct Entry<T> {
    value: Option<T>,
    /// Effective deadline tick.
    deadline: u64,
    generation: u64,
    prev: u32,
    /// Next in the slot list; for a free entry, next in the free list.
    next: u32,
    /// Index of the list (slot or `DUE`) holding the entry.
    list: u16,
}

/// A hierarchical timer wheel with 1 ms resolution holding values of type `T`.
///
/// # Examples
///
/// ```
/// use heartloop::wheel::Wheel;
/// use std::time::{Duration, Instant};
///
/// let t0 = Instant::now();
/// let mut wheel = Wheel::new(t0);
/// let a = wheel.insert(t0 + Duration::from_millis(10), "a");
/// let b = wheel.insert(t0 + Duration::from_secs(5), "b");
/// assert_eq!(wheel.next_expiration(), Some(t0 + Duration::from_millis(10)));
///
/// let mut fired = Vec::new();
/// wheel.advance(t0 + Duration::from_millis(10), &mut fired);
/// assert_eq!(fired, vec![(a, "a")]);
/// assert_eq!(wheel.cancel(a), None); // already fired
/// assert_eq!(wheel.cancel(b), Some("b"));
/// assert!(wheel.is_empty());
/// ```
pub struct Wheel<T> {
    start: Instant,
    /// Current tick: every timer due at or before it has been handed out.
    elapsed: u64,
    entries: Vec<Entry<T>>,
    free_head: u32,
    /// Heads of the `NUM_LEVELS * SLOTS` slot lists, then the `DUE` list.
    heads: Vec<u32>,
    /// Per-level occupancy bitmaps: bit `s` set iff slot `s` is non-empty.
    occupied: [u64; NUM_LEVELS],
    len: usize,
}

impl<T> fmt::Debug for Wheel<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wheel")
            .field("start", &self.start)
            .field("elapsed", &self.elapsed)
            .field("len", &self.len)
            .field("slab_capacity", &self.entries.len())
            .field("due_head", &self.heads[DUE])
            .field("occupied", &format_args!("{:016x?}", self.occupied))
            .finish()
    }
}

impl<T> Wheel<T> {
    /// Creates an empty wheel. `start` is time zero of the wheel; times are
    /// rounded to whole millisecond ticks since `start`.
    pub fn new(start: Instant) -> Self {
        Wheel {
            start,
            elapsed: 0,
            entries: Vec::new(),
            free_head: NIL,
            heads: vec![NIL; DUE + 1],
            occupied: [0; NUM_LEVELS],
            len: 0,
        }
    }

    /// Schedules `value` at `when`. O(1).
    ///
    /// The deadline is rounded **up** to the next millisecond tick, so a
    /// timer never fires before `when`. A `when` at or before the wheel's
    /// current tick (the last [`advance`](Self::advance)) makes the timer due
    /// *now*: its effective deadline is the current tick and it fires at the
    /// next `advance`.
    pub fn insert(&mut self, when: Instant, value: T) -> TimerKey {
        let deadline = self.tick_of(when, true).max(self.elapsed);
        if self.free_head == NIL {
            let index = u32::try_from(self.entries.len()).ok().filter(|&i| i != NIL);
            self.free_head = index.expect("timer slab is full");
            self.entries.push(Entry {
                value: None,
                deadline,
                generation: 0,
                prev: NIL,
                next: NIL,
                list: 0,
            });
        }
        let index = self.free_head;
        let entry = &mut self.entries[index as usize];
        debug_assert!(entry.value.is_none(), "free entry {index} is occupied");
        self.free_head = entry.next;
        entry.value = Some(value);
        entry.deadline = deadline;
        let generation = entry.generation;
        self.len += 1;
        self.place(index);
        TimerKey { index, generation }
    }

    /// Cancels the timer of `key`. O(1).
    ///
    /// Returns its value if it was still pending, or `None` if it already
    /// fired or was cancelled (a stale key never affects another timer).
    pub fn cancel(&mut self, key: TimerKey) -> Option<T> {
        let entry = self.entries.get(key.index as usize)?;
        if entry.generation != key.generation || entry.value.is_none() {
            return None;
        }
        self.unlink(key.index);
        Some(self.release(key.index))
    }

    /// The earliest instant at which [`advance`](Self::advance) may have a
    /// timer to fire, or `None` when the wheel is empty. O(`NUM_LEVELS`).
    ///
    /// Precisely: let `d` be the smallest effective deadline tick among
    /// pending timers (see [`insert`](Self::insert)). The result is
    /// `start + t` ms for a tick `t` with `elapsed <= t <= d`, where
    /// `elapsed` is the current tick (`t == elapsed` only when `d == elapsed`,
    /// i.e. some timer is already due). It is exact (`t == d`) whenever `d`
    /// lies in the current 64 ms level-0 window; otherwise it is the start of
    /// the higher-level slot holding that timer, and advancing to it cascades
    /// the slot so that later calls become more precise. Sleeping until the
    /// result is therefore never late, and costs at most `NUM_LEVELS - 1`
    /// early wake-ups per timer (plus one per top-level slot crossed, about
    /// every 12 days, for deadlines farther than the wheel's ~2.2-year range).
    pub fn next_expiration(&self) -> Option<Instant> {
        let tick = if self.heads[DUE] != NIL {
            self.elapsed
        } else {
            self.next_occupied()?.2
        };
        Some(self.start + Duration::from_millis(tick))
    }

    /// Moves time to `now` and appends every timer whose effective deadline
    /// tick is at or before `now`'s tick (rounded down) to `out`, in deadline
    /// order (ties in any order). Higher levels are cascaded as needed, and
    /// empty stretches are skipped using the occupancy bitmaps. A `now`
    /// earlier than the last advance is treated as the last advance.
    pub fn advance(&mut self, now: Instant, out: &mut Vec<(TimerKey, T)>) {
        let now_tick = self.tick_of(now, false).max(self.elapsed);
        let mut cur = std::mem::replace(&mut self.heads[DUE], NIL);
        while cur != NIL {
            let next = self.entries[cur as usize].next;
            self.fire(cur, out);
            cur = next;
        }
        while let Some((level, slot, tick)) = self.next_occupied() {
            if tick > now_tick {
                break;
            }
            debug_assert!(tick >= self.elapsed, "time went back to {tick}: {self:?}");
            self.elapsed = tick;
            self.occupied[level] &= !(1 << slot);
            let mut cur = std::mem::replace(&mut self.heads[level * SLOTS + slot], NIL);
            while cur != NIL {
                let entry = &self.entries[cur as usize];
                let next = entry.next;
                debug_assert!(
                    entry.deadline >= tick,
                    "entry {cur} due {} found in slot starting {tick}: {self:?}",
                    entry.deadline
                );
                if entry.deadline == tick {
                    self.fire(cur, out);
                } else {
                    self.place(cur);
                }
                cur = next;
            }
        }
        self.elapsed = now_tick;
    }

    /// Number of pending timers.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no timer is pending.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whole ticks from `start` to `t` (0 if earlier), rounded up or down.
    fn tick_of(&self, t: Instant, up: bool) -> u64 {
        let nanos = t.saturating_duration_since(self.start).as_nanos();
        let ticks = (nanos + if up { 999_999 } else { 0 }) / 1_000_000;
        ticks.min(MAX_TICK as u128) as u64
    }

    /// The next occupied slot as `(level, slot, start tick)`.
    ///
    /// Levels are ordered in time, so the first non-empty level holds it.
    fn next_occupied(&self) -> Option<(usize, usize, u64)> {
        let level = self.occupied.iter().position(|&bits| bits != 0)?;
        let now_slot = slot_for(self.elapsed, level);
        let rotated = self.occupied[level].rotate_right(now_slot as u32);
        debug_assert!(
            rotated & 1 == 0,
            "current slot {now_slot} of level {level} is occupied: {self:?}"
        );
        let ahead = rotated.trailing_zeros() as u64;
        let width = slot_width(level);
        let level_start = self.elapsed & !(width * SLOTS as u64 - 1);
        // Past the last slot only at the top level: the next rotation.
        let tick = level_start + (now_slot as u64 + ahead) * width;
        Some((level, (now_slot + ahead as usize) % SLOTS, tick))
    }

    /// Links the unlinked entry `index` into the list for its deadline.
    fn place(&mut self, index: u32) {
        let deadline = self.entries[index as usize].deadline;
        let list = if deadline <= self.elapsed {
            DUE
        } else {
            // Clamp so that the top level never wraps onto its current slot.
            let limit = (self.elapsed & !(TOP_SLOT_WIDTH - 1)) + MAX_DURATION;
            let when = deadline.min(limit);
            let level = level_for(self.elapsed, when);
            let slot = slot_for(when, level);
            debug_assert!(
                slot != slot_for(self.elapsed, level),
                "entry {index} due {deadline} placed in current slot: {self:?}"
            );
            self.occupied[level] |= 1 << slot;
            level * SLOTS + slot
        };
        let head = self.heads[list];
        if head != NIL {
            self.entries[head as usize].prev = index;
        }
        let entry = &mut self.entries[index as usize];
        entry.prev = NIL;
        entry.next = head;
        entry.list = list as u16;
        self.heads[list] = index;
    }

    /// Unlinks entry `index` from its list, clearing the occupancy bit if
    /// the slot becomes empty.
    fn unlink(&mut self, index: u32) {
        let Entry {
            prev, next, list, ..
        } = self.entries[index as usize];
        let list = list as usize;
        if prev == NIL {
            debug_assert_eq!(self.heads[list], index, "bad head of list {list}: {self:?}");
            self.heads[list] = next;
            if next == NIL && list != DUE {
                self.occupied[list / SLOTS] &= !(1 << (list % SLOTS));
            }
        } else {
            self.entries[prev as usize].next = next;
        }
        if next != NIL {
            self.entries[next as usize].prev = prev;
        }
    }

    /// Frees the (unlinked) entry `index` and returns its value.
    fn release(&mut self, index: u32) -> T {
        let entry = &mut self.entries[index as usize];
        let value = entry.value.take().expect("released a free entry");
        entry.generation += 1;
        entry.next = self.free_head;
        self.free_head = index;
        self.len -= 1;
        value
    }

    /// Releases the entry `index`, already detached from its list, to `out`.
    fn fire(&mut self, index: u32, out: &mut Vec<(TimerKey, T)>) {
        let generation = self.entries[index as usize].generation;
        let value = self.release(index);
        out.push((TimerKey { index, generation }, value));
    }
}

#[cfg(test)]
impl<T> Wheel<T> {
    /// Let entry `index` look as if it had been reused `by` more times.
    fn age_entry(&mut self, index: u32, by: u64) {
        self.entries[index as usize].generation += by;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    impl<T> Wheel<T> {
        /// Checks lists, bitmaps, placement and the free list against each other.
        fn check(&self) {
            let mut seen = 0;
            for list in 0..=DUE {
                let (mut prev, mut cur) = (NIL, self.heads[list]);
                if list < DUE {
                    let bit = self.occupied[list / SLOTS] >> (list % SLOTS) & 1;
                    assert_eq!(bit == 1, cur != NIL, "bitmap of list {list}: {self:?}");
                }
                while cur != NIL {
                    let e = &self.entries[cur as usize];
                    assert!(e.value.is_some() && e.prev == prev && e.list as usize == list);
                    if list == DUE {
                        assert!(e.deadline <= self.elapsed, "{self:?}");
                    } else {
                        let (level, slot) = (list / SLOTS, list % SLOTS);
                        assert!(e.deadline > self.elapsed, "{self:?}");
                        // The slot's start, relative to now (wrapping only at the top).
                        let now_slot = slot_for(self.elapsed, level);
                        let ahead = (slot + SLOTS - now_slot) % SLOTS;
                        let width = slot_width(level);
                        let start = (self.elapsed & !(width * SLOTS as u64 - 1))
                            + (now_slot + ahead) as u64 * width;
                        assert!(ahead != 0 && start <= e.deadline, "{cur} {self:?}");
                        assert!(level == NUM_LEVELS - 1 || e.deadline < start + width);
                    }
                    seen += 1;
                    (prev, cur) = (cur, e.next);
                }
            }
            assert_eq!(seen, self.len);
            let (mut free, mut cur) = (0, self.free_head);
            while cur != NIL {
                assert!(self.entries[cur as usize].value.is_none());
                free += 1;
                cur = self.entries[cur as usize].next;
            }
            assert_eq!(free + seen, self.entries.len());
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn level_and_slot_exhaustive() {
        for elapsed in 0..4200u64 {
            for when in elapsed + 1..elapsed + 4200 {
                let level = level_for(elapsed, when);
                let (lo, hi) = (level as u32 * 6, level as u32 * 6 + 6);
                assert_eq!(when >> hi, elapsed >> hi, "e={elapsed} w={when}");
                assert_ne!(when >> lo, elapsed >> lo, "e={elapsed} w={when}");
                assert!(slot_for(when, level) > slot_for(elapsed, level));
            }
        }
        for level in 0..NUM_LEVELS {
            for slot in 0..SLOTS as u64 {
                let when = slot * slot_width(level) + slot_width(level) / 2;
                assert_eq!(slot_for(when, level), slot as usize);
                assert_eq!(level_for(0, slot_width(level) * slot.max(1)), level);
            }
        }
        assert_eq!(level_for(0, MAX_DURATION), NUM_LEVELS - 1);
        assert_eq!(level_for(5, u64::MAX >> 2), NUM_LEVELS - 1);
        assert_eq!(MAX_DURATION, 64u64.pow(6) - 1);
    }

    #[test]
    fn rounding_never_early() {
        let t0 = Instant::now();
        let mut w = Wheel::new(t0);
        let k = w.insert(t0 + Duration::from_micros(4_100), 1);
        assert_eq!(w.next_expiration(), Some(t0 + ms(5)));
        let mut out = Vec::new();
        w.advance(t0 + Duration::from_micros(4_999), &mut out);
        assert!(out.is_empty());
        w.advance(t0 + ms(5), &mut out);
        assert_eq!(out, vec![(k, 1)]);
        // Past and present deadlines fire at the next advance, even without moving.
        let a = w.insert(t0, 2);
        let b = w.insert(t0 + ms(5), 3);
        assert_eq!(w.next_expiration(), Some(t0 + ms(5)));
        out.clear();
        w.advance(t0, &mut out);
        out.sort_by_key(|&(_, v)| v);
        assert_eq!(out, vec![(a, 2), (b, 3)]);
        assert_eq!(w.next_expiration(), None);
    }

    #[test]
    fn far_future_fires_on_time() {
        let t0 = Instant::now();
        let mut w = Wheel::new(t0);
        let year = 365 * 24 * 3600 * 1000;
        let deadlines = [
            3 * year,
            3 * year + 1,
            2 * year + 7,
            MAX_DURATION + 1,
            9 * year,
        ];
        for (i, &d) in deadlines.iter().enumerate() {
            w.insert(t0 + ms(d), i);
        }
        // Big steps: nothing fires before its tick.
        let mut out = Vec::new();
        let (mut now, step) = (0, 7 * 24 * 3600 * 1000 + 17);
        while now < 10 * year {
            now += step;
            w.advance(t0 + ms(now), &mut out);
            for (_, i) in out.drain(..) {
                assert!(deadlines[i] <= now && deadlines[i] + step > now);
            }
            w.check();
        }
        assert!(w.is_empty());
        // Driven by next_expiration: every timer fires exactly at its tick.
        let mut w = Wheel::new(t0);
        for (i, &d) in deadlines.iter().enumerate() {
            w.insert(t0 + ms(d), i);
        }
        let mut wakeups = 0;
        while let Some(next) = w.next_expiration() {
            wakeups += 1;
            w.advance(next, &mut out);
            for (_, i) in out.drain(..) {
                assert_eq!(t0 + ms(deadlines[i]), next);
            }
        }
        assert!(wakeups < 80, "{wakeups} wake-ups");
    }

    #[test]
    fn stale_keys() {
        let t0 = Instant::now();
        let mut w = Wheel::new(t0);
        let a = w.insert(t0 + ms(1), 'a');
        let mut out = Vec::new();
        w.advance(t0 + ms(1), &mut out);
        let b = w.insert(t0 + ms(3), 'b'); // reuses a's slab entry
        assert_ne!(a, b);
        assert_eq!(w.cancel(a), None);
        assert_eq!(w.len(), 1);
        assert_eq!(w.cancel(b), Some('b'));
        assert_eq!(w.cancel(b), None);
        let c = w.insert(t0 + ms(3), 'c');
        assert_eq!(w.cancel(b), None);
        out.clear();
        w.advance(t0 + ms(3), &mut out);
        assert_eq!(out, vec![(c, 'c')]);
        assert_eq!(w.entries.len(), 1, "slab reused");
    }

    /// Regression: the generation was a `u32` that wrapped, so after 2^32 reuses of one
    /// entry a key kept from its first use cancelled the timer then in it.
    #[test]
    fn old_key_never_cancels_a_timer_after_2_pow_32_reuses() {
        let t0 = Instant::now();
        let mut w = Wheel::new(t0);
        let old = w.insert(t0 + ms(5), 'a');
        assert_eq!(w.cancel(old), Some('a'));
        // As if the entry had been reused 2^32 - 1 more times; the next insert is the
        // 2^32-th reuse since `old` was handed out.
        w.age_entry(old.index, (1 << 32) - 1);
        let new = w.insert(t0 + ms(5), 'b');
        assert_eq!(new.index, old.index, "the entry is reused");
        assert_eq!(w.cancel(old), None, "a stale key cancelled a newer timer");
        assert_eq!(w.cancel(new), Some('b'));
    }

    #[test]
    fn many_in_one_slot() {
        let t0 = Instant::now();
        let mut w = Wheel::new(t0);
        let keys: Vec<_> = (0..10_000).map(|i| w.insert(t0 + ms(70_000), i)).collect();
        for k in keys.iter().step_by(2) {
            assert!(w.cancel(*k).is_some());
        }
        w.check();
        assert_eq!(w.len(), 5_000);
        let mut out = Vec::new();
        w.advance(t0 + ms(69_999), &mut out);
        assert!(out.is_empty());
        w.advance(t0 + ms(70_000), &mut out);
        out.sort_by_key(|&(_, v)| v);
        assert!(out.iter().map(|&(_, v)| v).eq((1..10_000).step_by(2)));
    }

    #[test]
    fn big_jump_in_order() {
        let t0 = Instant::now();
        let mut w = Wheel::new(t0);
        for i in 0..6000u64 {
            w.insert(t0 + ms(i * 7919 % 600_000), i * 7919 % 600_000);
        }
        let mut out = Vec::new();
        w.advance(t0 + ms(600_000), &mut out);
        assert_eq!(out.len(), 6000);
        assert!(out.windows(2).all(|p| p[0].1 <= p[1].1));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64),
        Cancel(usize),
        Advance(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        let hours = 4 * 3600 * 1_000_000u64;
        prop_oneof![
            4 => (0..=hours).prop_map(Op::Insert),
            1 => (0..=3_000_000u64).prop_map(Op::Insert),
            2 => any::<usize>().prop_map(Op::Cancel),
            2 => (0..=5_000u64).prop_map(Op::Advance),
            1 => (0..=hours / 2).prop_map(Op::Advance),
            // Rarely: up to 3 years ahead, and jumps of up to 100 days.
            1 => (0..=3 * 365 * 24 * hours / 4).prop_map(Op::Insert),
            1 => (0..=100 * 6 * hours).prop_map(Op::Advance),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn matches_model(ops in proptest::collection::vec(op(), 1..300)) {
            let t0 = Instant::now();
            let mut w = Wheel::new(t0);
            // Times are in microseconds since t0; ticks are ms.
            let (mut now_us, mut elapsed) = (0u64, 0u64);
            let mut model: HashMap<TimerKey, (u64, usize)> = HashMap::new();
            let mut keys = Vec::new();
            let mut out = Vec::new();
            for (id, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Insert(delay_us) => {
                        let at = now_us + delay_us;
                        let k = w.insert(t0 + Duration::from_micros(at), id);
                        model.insert(k, (at.div_ceil(1000).max(elapsed), id));
                        keys.push(k);
                    }
                    Op::Cancel(i) if !keys.is_empty() => {
                        let k = keys[i % keys.len()];
                        prop_assert_eq!(w.cancel(k), model.remove(&k).map(|(_, id)| id));
                    }
                    Op::Cancel(_) => {}
                    Op::Advance(delta_us) => {
                        now_us += delta_us;
                        elapsed = now_us / 1000;
                        w.advance(t0 + Duration::from_micros(now_us), &mut out);
                        let mut last = 0;
                        for (k, id) in out.drain(..) {
                            let (d, mid) = model.remove(&k).expect("fired unknown timer");
                            prop_assert_eq!(mid, id);
                            prop_assert!(d <= elapsed && d >= last);
                            last = d;
                        }
                        prop_assert!(model.values().all(|&(d, _)| d > elapsed));
                    }
                }
                w.check();
                prop_assert_eq!(w.len(), model.len());
                let min = model.values().map(|&(d, _)| d).min();
                match (w.next_expiration(), min) {
                    (None, None) => {}
                    (Some(next), Some(d)) => {
                        let t = (next - t0).as_millis() as u64;
                        prop_assert!(elapsed <= t && t <= d, "t={} d={} e={}", t, d, elapsed);
                        prop_assert!(t > elapsed || d == elapsed);
                        if d >> 6 == elapsed >> 6 {
                            prop_assert_eq!(t, d);
                        }
                    }
                    (next, min) => prop_assert!(false, "next={:?} min={:?}", next, min),
                }
            }
        }
    }
}
