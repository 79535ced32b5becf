//! The reactor's one source of time.
//!
//! Every time the reactor needs `now` (a turn starts, a timer is set, a send starts a stall
//! clock, a close starts its linger) it asks its [`Clock`], and nothing else in the crate
//! reads the system clock. The default is the system's monotonic clock. A [manual
//! clock](Clock::manual) moves only when told to: tests and simulations step time instead
//! of sleeping, and the heartbeat, stall, linger and connect-timeout logic runs exactly as it
//! would in real time, over real sockets.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Deadlines further ahead than this are "never" in practice; clamping to it keeps every
/// `Instant + Duration` of a setting such as `Duration::MAX` from overflowing (a panic).
pub(crate) const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `t + d`, with `d` clamped to [`FAR`]: never panics, and a huge `d` means "never".
pub(crate) fn later(t: Instant, d: Duration) -> Instant {
    t.checked_add(d.min(FAR)).unwrap_or(t)
}

/// Where a [`Reactor`](crate::Reactor) reads the time. Cheap to clone; clones of a manual
/// clock share its time.
///
/// # Examples
///
/// Stepping time in a test: a timer set for 5 s fires after two steps, without sleeping.
///
/// ```
/// use std::time::Duration;
/// use heartloop::{Clock, Event, Reactor, ReactorConfig};
///
/// # fn main() -> std::io::Result<()> {
/// let clock = Clock::manual();
/// let mut reactor = Reactor::with_clock(ReactorConfig::default(), clock.clone())?;
/// let mut events = Vec::new();
/// reactor.set_timer(Duration::from_secs(5), 7);
/// clock.advance(Duration::from_secs(4));
/// reactor.poll(&mut events, Some(Duration::ZERO))?;
/// assert!(events.is_empty());
/// clock.advance(Duration::from_secs(1));
/// reactor.poll(&mut events, Some(Duration::ZERO))?;
/// assert!(matches!(events[..], [Event::Timer { tag: 7, .. }]));
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Default)]
pub struct Clock {
    manual: Option<Arc<Manual>>,
}

struct Manual {
    start: Instant,
    /// Nanoseconds since `start`; only ever grows.
    offset: AtomicU64,
}

impl Clock {
    /// The system's monotonic clock ([`Instant::now`]). The default.
    pub fn system() -> Clock {
        Clock { manual: None }
    }

    /// A clock that stands still until [`advance`](Clock::advance) moves it. It starts at
    /// the system's `now` of its creation, so its instants compare with real ones.
    pub fn manual() -> Clock {
        Clock {
            manual: Some(Arc::new(Manual {
                start: Instant::now(),
                offset: AtomicU64::new(0),
            })),
        }
    }

    /// Move a manual clock forward by `by` (saturating at about 584 years). No effect on
    /// the system clock.
    pub fn advance(&self, by: Duration) {
        if let Some(m) = &self.manual {
            let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
            let _ = m
                .offset
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                    Some(t.saturating_add(by))
                });
        }
    }

    /// Whether this is a manual clock.
    pub fn is_manual(&self) -> bool {
        self.manual.is_some()
    }

    /// The time now.
    pub fn now(&self) -> Instant {
        match &self.manual {
            None => Instant::now(),
            Some(m) => m.start + Duration::from_nanos(m.offset.load(Ordering::Acquire)),
        }
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.manual {
            None => f.write_str("Clock::system"),
            Some(m) => write!(
                f,
                "Clock::manual(+{:?})",
                Duration::from_nanos(m.offset.load(Ordering::Relaxed))
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_advanced_and_clones_share_it() {
        let c = Clock::manual();
        let t0 = c.now();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(c.now(), t0, "a manual clock stands still");
        let c2 = c.clone();
        c2.advance(Duration::from_millis(250));
        assert_eq!(c.now(), t0 + Duration::from_millis(250));
        c.advance(Duration::MAX);
        assert!(c.now() > t0 + Duration::from_secs(100 * 365 * 86_400));
        assert!(!Clock::system().is_manual() && c.is_manual());
    }

    #[test]
    fn later_never_panics_and_huge_means_far() {
        let t = Instant::now();
        assert_eq!(
            later(t, Duration::from_millis(5)),
            t + Duration::from_millis(5)
        );
        assert_eq!(later(t, Duration::MAX), t + FAR);
    }
}
