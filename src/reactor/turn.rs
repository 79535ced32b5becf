//! The turn: flush, sleep in the poll, read the clock, serve the ready queue and the OS
//! events, expire deadlines, flush, hand the events over.

use std::io;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mio::Events;

use super::Reactor;
use super::table::Entry;
use crate::event::{ConnId, Event, Readiness};

impl Reactor {
    /// How long the loop may sleep before it has something to do: `Some(ZERO)` when work
    /// is pending, `None` when nothing at all is scheduled.
    pub fn next_timeout(&self) -> Option<Duration> {
        self.timeout_from(|| self.clock.now())
    }

    /// `next_timeout`, reading the clock only when a deadline is pending (the echo hot
    /// path with no timers reads it once per turn, not twice).
    fn timeout_from(&self, now: impl FnOnce() -> Instant) -> Option<Duration> {
        let commands = self
            .shared
            .as_ref()
            .is_some_and(|s| s.woken.load(Ordering::Acquire));
        if !self.pending.is_empty()
            || !self.ready.is_empty()
            || !self.dirty.is_empty()
            || !self.graves.is_empty()
            || commands
        {
            return Some(Duration::ZERO);
        }
        let next = match (self.wheel.next_expiration(), self.heap.peek()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        next.map(|t| t.saturating_duration_since(now()))
    }

    /// Run one turn: wait for I/O or the next deadline (at most `timeout`; `None` = until
    /// something is due, `Some(ZERO)` = don't block), then append what happened to `out`.
    pub fn poll(&mut self, out: &mut Vec<Event>, timeout: Option<Duration>) -> io::Result<()> {
        // The owner may have worked for a long time since the last turn: stamp the
        // progress of this flush with the time it happens, or the stall clock would
        // count the owner's time against a peer that just took our bytes.
        self.now = self.clock.now();
        let flush_started = self.now;
        self.flush_dirty();
        self.close_buried();
        // The flush (and the sockets closed) is work every connection waits behind, as
        // much as the turn's own.
        let flushed_in = self.clock.now().saturating_duration_since(flush_started);
        let mut wait = self.next_timeout();
        if let Some(t) = timeout {
            wait = Some(wait.map_or(t, |w| w.min(t)));
        }
        let napped = self.nap_while_quiet(&mut wait);
        let mut events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        let res = match self.poll.as_mut() {
            Some(p) => p.poll(&mut events, wait),
            None => Err(io::Error::other("reactor is hosted: the host polls")),
        };
        self.stats.turns += 1;
        if napped || wait != Some(Duration::ZERO) {
            self.stats.wakeups += 1;
            self.last_wake = Some(self.clock.now());
        }
        match res {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                self.events = events;
                return Err(e);
            }
        }
        self.begin_turn();
        let started = self.now;
        for ev in events.iter() {
            self.dispatch(ev);
        }
        self.events = events;
        let handed = out.len();
        self.finish_turn(out);
        self.quiet = out.len() == handed;
        // Two more clock reads per turn (~20 ns each): what a slow turn cost everyone else,
        // the flush before the wait included.
        let took = self.clock.now().saturating_duration_since(started) + flushed_in;
        self.last_turn = took;
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.stats.longest_turn_us = self.stats.longest_turn_us.max(us);
        Ok(())
    }

    /// `ReactorConfig::quiet_coalescing`: after a quiet turn, sleep out the rest of the
    /// coalescing period since the last wakeup before waiting in the OS poll (whatever
    /// becomes ready meanwhile is then served in one turn); `wait` is shortened by the nap.
    /// Only when the poll may sleep at all, and never on a manual clock. Whether it slept.
    fn nap_while_quiet(&mut self, wait: &mut Option<Duration>) -> bool {
        let (Some(period), Some(last)) = (self.cfg.quiet_coalescing, self.last_wake) else {
            return false;
        };
        if !self.quiet || *wait == Some(Duration::ZERO) || self.clock.is_manual() {
            return false;
        }
        let since = self.clock.now().saturating_duration_since(last);
        let Some(mut nap) = period.checked_sub(since).filter(|n| !n.is_zero()) else {
            return false;
        };
        if let Some(w) = wait.as_mut() {
            nap = nap.min(*w);
            *w -= nap;
        }
        std::thread::sleep(nap);
        true
    }

    /// Start a turn (once): read the clock, renew the turn's budget, serve the ready
    /// queue.
    pub(super) fn begin_turn(&mut self) {
        if !self.in_turn {
            self.in_turn = true;
            self.now = self.clock.now();
            self.turn_left = self.cfg.turn_events;
            self.turn_bytes_left = self.cfg.turn_bytes;
            self.serve_ready();
        }
    }

    /// Whether this turn's budget across connections is spent: further reads wait on the
    /// ready queue for the next turn.
    pub(super) fn turn_spent(&self) -> bool {
        self.turn_left == 0 || self.turn_bytes_left == 0
    }

    /// End a turn: handle commands, expire deadlines, flush, hand the events over.
    pub(super) fn finish_turn(&mut self, out: &mut Vec<Event>) {
        self.apply_commands();
        self.after_io();
        self.in_turn = false;
        // Their `WriteBlocked` is handed over now: the owner may pause them before the
        // next turn reads them.
        for id in self.held.drain(..) {
            if let Some(c) = self.table.conn_mut(id) {
                c.hold_reads = false;
            }
        }
        self.stats.events += self.pending.len() as u64;
        out.append(&mut self.pending);
    }

    /// One OS event. Its token names an entry and that entry's serial: an event for an
    /// entry that is gone (even if its slot was reused since) finds nothing.
    pub(super) fn dispatch(&mut self, ev: &mio::event::Event) {
        self.stats.os_events += 1;
        let r = Readiness {
            readable: ev.is_readable(),
            writable: ev.is_writable(),
            error: ev.is_error(),
            read_closed: ev.is_read_closed(),
        };
        // The waker's token names no entry: its commands are applied in finish_turn.
        match self.table.by_token(ev.token()) {
            Some((_, Entry::Conn(c))) => {
                let id = c.id;
                self.conn_ready(id, r);
            }
            Some((_, Entry::Listener(l))) => {
                let id = l.id;
                self.accept_ready(id);
            }
            Some((_, Entry::Source(s))) => {
                self.pending.push(Event::Source {
                    id: s.id,
                    readiness: r,
                });
            }
            None => {}
        }
    }

    /// Serve the ready queue from the front, while the turn's budget lasts: what is not
    /// served keeps its place, ahead of what becomes ready in this turn.
    fn serve_ready(&mut self) {
        for _ in 0..self.ready.len() {
            if self.turn_spent() {
                break;
            }
            let Some(key) = self.ready.pop_front() else {
                break;
            };
            match self.table.get_mut(key) {
                Some(Entry::Conn(c)) if c.hold_reads => {
                    self.ready.push_back(key); // after the hand-over of its WriteBlocked
                }
                Some(Entry::Conn(c)) => {
                    c.in_ready = false;
                    let id = c.id;
                    let step = c.lc.on_ready();
                    self.obey(id, step);
                }
                Some(Entry::Listener(l)) => {
                    l.in_ready = false;
                    let id = l.id;
                    self.accept_ready(id);
                }
                _ => {}
            }
        }
    }

    fn after_io(&mut self) {
        self.expire_timers();
        self.expire_heartbeats();
        self.flush_dirty();
        if self.heap.needs_compaction(self.heartbeat_conns) {
            let live: Vec<(ConnId, Instant)> = self
                .table
                .conns()
                .filter_map(|c| c.live.map(|l| (c.id, l.next_deadline())))
                .collect();
            self.heap.rebuild(live);
        }
    }
}
