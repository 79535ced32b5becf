//! [`Handle`]: send, close, set timers and wake the loop from other threads.
//!
//! Commands go into one queue shared with the reactor and are applied on the loop thread,
//! in the order they were queued (so in order per producer). The loop is woken through a
//! mio `Waker` only when the queue goes from empty to non-empty, so a burst of sends costs
//! one wakeup, not one per message.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use crate::event::{ConnId, TimerId, TimerRef};

/// What a [`Handle`] asks the loop to do.
#[derive(Debug)]
pub(crate) enum Command {
    Send(ConnId, Bytes),
    Close(ConnId),
    Abort(ConnId),
    SetTimer(Duration, u64, u64),
    CancelTimer(u64),
    /// A [`channel`](crate::channel) with this tag has values waiting.
    Mail(u64),
}

/// State shared by the reactor and its handles.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) queue: Mutex<VecDeque<Command>>,
    /// Most commands waiting at once; more are refused with [`HandleError::Full`].
    pub(crate) limit: usize,
    /// Set when the queue was non-empty and the waker was fired; cleared by the loop
    /// before it drains the queue.
    pub(crate) woken: AtomicBool,
    /// Set when the reactor is dropped.
    pub(crate) gone: AtomicBool,
    pub(crate) waker: mio::Waker,
    /// Numbers the timers set through handles (their `TimerId`s).
    pub(crate) next_timer: AtomicU64,
}

impl Shared {
    /// Take every queued command (called on the loop thread).
    pub(crate) fn take(&self, into: &mut VecDeque<Command>) {
        self.woken.store(false, Ordering::Release);
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::swap(&mut *q, into);
    }
}

/// Why a [`Handle`] call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandleError {
    /// The reactor was dropped; nothing will ever apply the command.
    ReactorGone,
    /// The command queue holds its limit of commands
    /// ([`ReactorConfig::handle_queue_limit`](crate::ReactorConfig::handle_queue_limit));
    /// the loop is not keeping up.
    Full,
    /// Waking the loop failed (the OS refused to signal its poll).
    Wake,
}

impl fmt::Display for HandleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HandleError::ReactorGone => "the reactor is gone",
            HandleError::Full => "the reactor's command queue is full",
            HandleError::Wake => "could not wake the reactor",
        })
    }
}

impl std::error::Error for HandleError {}

/// A cheap, cloneable, `Send + Sync` way to reach a [`Reactor`](crate::Reactor) from other
/// threads. Get one with [`Reactor::handle`](crate::Reactor::handle).
///
/// Commands are applied on the loop thread in the order they were queued. They are
/// asynchronous: a send to a connection that has ended by the time it is applied is
/// dropped (and counted in [`Stats::handle_dropped`](crate::Stats::handle_dropped)); the
/// `Disconnected` event tells the owner about the end.
///
/// # Examples
///
/// ```
/// use heartloop::{Event, Reactor, ReactorConfig};
/// use std::time::Duration;
///
/// # fn main() -> std::io::Result<()> {
/// let mut reactor = Reactor::new(ReactorConfig::default())?;
/// let handle = reactor.handle()?;
/// let t = std::thread::spawn(move || handle.set_timer(Duration::from_millis(1), 7));
/// let mut events = Vec::new();
/// while !events.iter().any(|e| matches!(e, Event::Timer { tag: 7, .. })) {
///     reactor.poll(&mut events, Some(Duration::from_secs(5)))?;
/// }
/// t.join().unwrap().unwrap();
/// drop(reactor);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Handle {
    pub(crate) shared: Arc<Shared>,
}

impl Handle {
    /// Queue `bytes` for `conn` (applied as [`Reactor::send`](crate::Reactor::send)).
    pub fn send(&self, conn: ConnId, bytes: Bytes) -> Result<(), HandleError> {
        self.push(Command::Send(conn, bytes))
    }

    /// Close `conn` gracefully (applied as [`Reactor::close`](crate::Reactor::close)).
    pub fn close(&self, conn: ConnId) -> Result<(), HandleError> {
        self.push(Command::Close(conn))
    }

    /// Abort `conn` (applied as [`Reactor::abort`](crate::Reactor::abort)).
    pub fn abort(&self, conn: ConnId) -> Result<(), HandleError> {
        self.push(Command::Abort(conn))
    }

    /// Set a timer: [`Event::Timer`](crate::Event::Timer) with `tag` and the returned id
    /// fires `after` from when the loop applies the command. Cancel it with
    /// [`cancel_timer`](Handle::cancel_timer) (or, on the loop thread,
    /// [`Reactor::cancel_timer`](crate::Reactor::cancel_timer) once the command was
    /// applied).
    pub fn set_timer(&self, after: Duration, tag: u64) -> Result<TimerId, HandleError> {
        let n = self.shared.next_timer.fetch_add(1, Ordering::Relaxed);
        self.push(Command::SetTimer(after, tag, n))?;
        Ok(TimerId(TimerRef::Handle(n)))
    }

    /// Cancel a timer set with [`set_timer`](Handle::set_timer) (applied after it, in
    /// order); a timer that already fired is not affected. Ids of timers the owner set
    /// on the loop thread are cancelled there, with `Reactor::cancel_timer`.
    pub fn cancel_timer(&self, id: TimerId) -> Result<(), HandleError> {
        match id.0 {
            TimerRef::Handle(n) => self.push(Command::CancelTimer(n)),
            TimerRef::Wheel(_) => Ok(()),
        }
    }

    /// Wake the loop: its current or next `poll` returns promptly.
    pub fn wake(&self) -> Result<(), HandleError> {
        if self.shared.gone.load(Ordering::Acquire) {
            return Err(HandleError::ReactorGone);
        }
        self.shared.waker.wake().map_err(|_| HandleError::Wake)
    }

    pub(crate) fn push(&self, cmd: Command) -> Result<(), HandleError> {
        let s = &*self.shared;
        if s.gone.load(Ordering::Acquire) {
            return Err(HandleError::ReactorGone);
        }
        {
            let mut q = s.queue.lock().unwrap_or_else(|e| e.into_inner());
            if q.len() >= s.limit {
                return Err(HandleError::Full);
            }
            q.push_back(cmd);
        }
        if !s.woken.swap(true, Ordering::AcqRel) {
            s.waker.wake().map_err(|_| HandleError::Wake)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync + Clone>() {}

    #[test]
    fn handle_is_send_sync_clone() {
        assert_send_sync::<Handle>();
    }
}
