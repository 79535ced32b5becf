//! Deadlines: user timers, connect timeouts, stall and linger timers (all on the wheel),
//! and heartbeat verdicts (the lazy deadline heap). Each runs after the turn's I/O.

use std::time::Duration;

use bytes::Bytes;

use super::Reactor;
use crate::clock::later;
use crate::codec::{self, Framing};
use crate::event::{ConnId, Event, ListenerId, StaleId, TimerId, TimerRef};
use crate::heartbeat::{self, Verdict};

/// What a wheel timer is for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Timeout {
    /// A user timer; `handle` is its number when set through a `Handle`.
    User {
        tag: u64,
        handle: Option<u64>,
    },
    Connect(ConnId),
    Stall(ConnId),
    Linger(ConnId),
    AcceptRetry(ListenerId),
}

impl Reactor {
    /// Fire [`Event::Timer`] with `tag` after `after` (rounded up to the millisecond).
    ///
    /// ```
    /// use std::time::Duration;
    /// use heartloop::{Event, Reactor, ReactorConfig};
    /// # fn main() -> std::io::Result<()> {
    /// let mut reactor = Reactor::new(ReactorConfig::default())?;
    /// let t = reactor.set_timer(Duration::from_millis(5), 42);
    /// let mut events = Vec::new();
    /// while events.is_empty() {
    ///     reactor.poll(&mut events, None)?; // sleeps until the timer is due
    /// }
    /// assert_eq!(events, [Event::Timer { id: t, tag: 42 }]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn set_timer(&mut self, after: Duration, tag: u64) -> TimerId {
        let at = later(self.clock.now(), after);
        TimerId(TimerRef::Wheel(
            self.wheel.insert(at, Timeout::User { tag, handle: None }),
        ))
    }

    /// Cancel a timer; `Err(StaleId)` if it already fired or was cancelled (or, for a
    /// timer set through a [`Handle`](crate::Handle), if the loop has not applied it yet).
    pub fn cancel_timer(&mut self, id: TimerId) -> Result<(), StaleId> {
        let key = match id.0 {
            TimerRef::Wheel(k) => k,
            TimerRef::Handle(n) => match self.handle_timers.remove(&n) {
                Some(k) => k,
                None => return Err(StaleId),
            },
        };
        self.wheel.cancel(key).map(|_| ()).ok_or(StaleId)
    }

    pub(super) fn expire_timers(&mut self) {
        let mut fired = std::mem::take(&mut self.fired);
        self.wheel.advance(self.now, &mut fired);
        for (key, t) in fired.drain(..) {
            match t {
                Timeout::User { tag, handle } => {
                    let id = match handle {
                        Some(n) => {
                            self.handle_timers.remove(&n);
                            TimerId(TimerRef::Handle(n))
                        }
                        None => TimerId(TimerRef::Wheel(key)),
                    };
                    self.pending.push(Event::Timer { id, tag });
                }
                Timeout::Connect(id) => {
                    if let Some(c) = self.table.conn_mut(id) {
                        c.connect_timer = None;
                        let step = c.lc.on_connect_timeout();
                        self.obey(id, step);
                    }
                }
                Timeout::Stall(id) => self.check_stall(id),
                Timeout::Linger(id) => {
                    if let Some(c) = self.table.conn_mut(id) {
                        c.linger_timer = None;
                        // How long the queue really made no progress (not the linger).
                        let stalled_for = c.out.since_progress(self.now).unwrap_or_default();
                        let step = c.lc.on_linger_expired(c.out.queued(), stalled_for);
                        self.obey(id, step);
                    }
                }
                Timeout::AcceptRetry(lid) => {
                    if let Some(l) = self.table.listener_mut(lid) {
                        l.retry_timer = None;
                        self.accept_ready(lid);
                    }
                }
            }
        }
        self.fired = fired;
    }

    fn check_stall(&mut self, id: ConnId) {
        let now = self.now;
        let Some(c) = self.table.conn_mut(id) else {
            return;
        };
        c.stall_timer = None;
        let cfg = c.cfg.outbound;
        if let Some(stalled_for) = c.out.stalled(&cfg, now) {
            let step = c.lc.on_slow_peer(c.out.queued(), stalled_for);
            self.obey(id, step);
        } else if let Some(at) = c.out.stall_deadline(&cfg) {
            let key = self.wheel.insert(at, super::expiry::Timeout::Stall(id));
            if let Some(c) = self.table.conn_mut(id) {
                c.stall_timer = Some(key);
            }
        }
    }

    pub(super) fn expire_heartbeats(&mut self) {
        let now = self.now;
        let mut due = std::mem::take(&mut self.due);
        let table = &self.table;
        heartbeat::drain_due(
            &mut self.heap,
            now,
            |id| {
                table
                    .conn(id)
                    .and_then(|c| c.live.map(|l| l.next_deadline()))
            },
            &mut due,
        );
        for id in due.drain(..) {
            let Some(c) = self.table.conn_mut(id) else {
                continue;
            };
            let Some(live) = c.live else {
                continue;
            };
            if !c.lc.heartbeat_applies() {
                // No verdict and no ping can come any more: stop, or its deadline, past
                // and never moved, would be due every turn (a spinning loop).
                c.live = None;
                self.heartbeat_conns -= 1;
                continue;
            }
            match live.poll(now) {
                Verdict::Alive => {}
                Verdict::Expired { .. } => {
                    // No verdict without a last non-blocking read: bytes that wait in the
                    // kernel prove the peer alive, even if the owner stalled the loop for
                    // longer than the timeout.
                    let last = self.last_read(id);
                    let Some(c) = self.table.conn_mut(id) else {
                        continue;
                    };
                    if let Some(Verdict::Expired { silent_for }) = c.live.map(|l| l.poll(now)) {
                        let step = c.lc.on_heartbeat_expired(silent_for, last);
                        self.obey(id, step);
                    }
                }
                Verdict::PingDue if !c.lc.may_ping() => {
                    // Cannot happen while heartbeat_applies; count it as sent so its
                    // deadline moves on whatever happens.
                    if let Some(l) = c.live.as_mut() {
                        l.on_ping(now);
                    }
                }
                Verdict::PingDue => {
                    if let Some(l) = c.live.as_mut() {
                        // The ping counts as sent now, whether or not it leaves at once.
                        l.on_ping(now);
                    }
                    let framing = c.cfg.framing;
                    self.stats.pings += 1;
                    match framing {
                        Framing::LengthDelimited { .. } => {
                            self.send_control(id, Bytes::from_static(&codec::PING_FRAME));
                        }
                        // No ping of the framing's own: the owner sends its protocol's.
                        _ => self.pending.push(Event::HeartbeatDue { conn: id }),
                    }
                }
            }
            if let Some(c) = self.table.conn(id)
                && let Some(l) = c.live
            {
                self.heap.push(id, l.next_deadline());
            }
        }
        self.due = due;
    }
}
