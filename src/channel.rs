//! A bounded channel into a reactor: any thread (typically another reactor's) sends values
//! of its own type; the receiving loop is woken once per burst and told by an
//! [`Event::Mail`](crate::Event::Mail) with the channel's tag, then drains what waits.
//!
//! This is how reactors on different cores talk (one loop per core, shared nothing): a
//! publish on reactor 1 reaches subscribers on reactor 2 as one message in reactor 2's
//! channel, and a connection handed over ([`Reactor::detach`](crate::Reactor::detach))
//! travels as a value too.
//!
//! Wakeups are bounded: a send that finds the channel already announced (its `Mail` event
//! queued or not yet drained) costs a lock and a push, no syscall; only the first send of a
//! burst wakes the loop, through the reactor's [`Handle`].

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::handle::{Command, Handle, HandleError};

/// Create a channel into the reactor that `handle` belongs to. `tag` comes back in every
/// [`Event::Mail`](crate::Event::Mail) the channel causes (tell channels apart with it);
/// `capacity` is the most values waiting at once (at least 1): beyond it
/// [`Sender::try_send`] refuses, so a producer faster than the loop cannot grow its memory.
///
/// ```
/// use heartloop::{Event, Reactor, ReactorConfig};
/// use std::time::Duration;
///
/// # fn main() -> std::io::Result<()> {
/// let mut reactor = Reactor::new(ReactorConfig::default())?;
/// let (tx, mut rx) = heartloop::channel::<String>(&reactor.handle()?, 1, 1024);
/// std::thread::spawn(move || {
///     for i in 0..3 {
///         tx.try_send(format!("job {i}")).unwrap();
///     }
/// });
/// let (mut events, mut got) = (Vec::new(), Vec::new());
/// while got.len() < 3 {
///     reactor.poll(&mut events, Some(Duration::from_secs(5)))?;
///     for ev in events.drain(..) {
///         if let Event::Mail { tag: 1 } = ev {
///             rx.drain(&mut got, usize::MAX);
///         }
///     }
/// }
/// assert_eq!(got, ["job 0", "job 1", "job 2"]);
/// # Ok(())
/// # }
/// ```
pub fn channel<T: Send>(handle: &Handle, tag: u64, capacity: usize) -> (Sender<T>, Receiver<T>) {
    let inner = Arc::new(Inner {
        state: Mutex::new(State {
            items: VecDeque::new(),
            announced: false,
            receiver_gone: false,
        }),
        capacity: capacity.max(1),
        tag,
        handle: handle.clone(),
    });
    (
        Sender {
            inner: inner.clone(),
        },
        Receiver { inner },
    )
}

struct Inner<T> {
    state: Mutex<State<T>>,
    capacity: usize,
    tag: u64,
    handle: Handle,
}

struct State<T> {
    items: VecDeque<T>,
    /// A `Mail` event is on its way or was delivered and the receiver has not emptied the
    /// channel since: senders need not announce again. Only changed under the lock.
    announced: bool,
    receiver_gone: bool,
}

impl<T> Inner<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queue the announcement. Called with the channel's lock held: the order is always
    /// channel lock, then the handle's queue lock (the loop never holds both).
    fn announce(&self) -> Result<(), HandleError> {
        self.handle.push(Command::Mail(self.tag))
    }
}

/// The sending side of a [`channel`]: `Send + Sync + Clone`, one per producer or shared.
pub struct Sender<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Sender {
            inner: self.inner.clone(),
        }
    }
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("tag", &self.inner.tag)
            .finish_non_exhaustive()
    }
}

/// Why [`Sender::try_send`] refused a value; the value comes back.
#[derive(PartialEq, Eq)]
#[non_exhaustive]
pub enum TrySendError<T> {
    /// The channel holds `capacity` values: the receiving loop is not keeping up.
    Full(T),
    /// The [`Receiver`] was dropped.
    Closed(T),
    /// The receiving reactor is gone, or its command queue is full so it could not be
    /// told (nothing was queued).
    Reactor(T, HandleError),
}

impl<T> TrySendError<T> {
    /// The value that was not sent.
    pub fn into_inner(self) -> T {
        match self {
            TrySendError::Full(v) | TrySendError::Closed(v) | TrySendError::Reactor(v, _) => v,
        }
    }
}

impl<T> fmt::Debug for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySendError::Full(_) => f.write_str("Full(..)"),
            TrySendError::Closed(_) => f.write_str("Closed(..)"),
            TrySendError::Reactor(_, e) => write!(f, "Reactor(.., {e:?})"),
        }
    }
}

impl<T> fmt::Display for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySendError::Full(_) => f.write_str("channel full"),
            TrySendError::Closed(_) => f.write_str("channel's receiver dropped"),
            TrySendError::Reactor(_, e) => write!(f, "receiving reactor: {e}"),
        }
    }
}

impl<T> std::error::Error for TrySendError<T> {}

impl<T: Send> Sender<T> {
    /// Queue `value` for the receiving loop, in order after this sender's earlier values.
    /// Never blocks (beyond a short lock). Wakes the loop only if the channel was not
    /// already announced.
    pub fn try_send(&self, value: T) -> Result<(), TrySendError<T>> {
        let mut st = self.inner.lock();
        if st.receiver_gone {
            return Err(TrySendError::Closed(value));
        }
        if st.items.len() >= self.inner.capacity {
            return Err(TrySendError::Full(value));
        }
        if !st.announced {
            if let Err(e) = self.inner.announce() {
                return Err(TrySendError::Reactor(value, e));
            }
            st.announced = true;
        }
        st.items.push_back(value);
        Ok(())
    }

    /// Values waiting (a snapshot).
    pub fn len(&self) -> usize {
        self.inner.lock().items.len()
    }

    /// Whether no value waits (a snapshot).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The receiving side of a [`channel`]: used on the loop thread of the reactor the channel
/// was made for, when [`Event::Mail`](crate::Event::Mail) with its tag arrives.
pub struct Receiver<T> {
    inner: Arc<Inner<T>>,
}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("tag", &self.inner.tag)
            .finish_non_exhaustive()
    }
}

impl<T: Send> Receiver<T> {
    /// Move up to `max` waiting values into `out`, oldest first; how many moved.
    ///
    /// If values are left (more than `max` waited), the channel announces itself again:
    /// another `Mail` event comes in the next turn, so a bounded drain per turn keeps the
    /// loop fair without losing track of the rest. Once it is empty, the next send wakes
    /// the loop again.
    pub fn drain(&mut self, out: &mut Vec<T>, max: usize) -> usize {
        let mut st = self.inner.lock();
        let n = st.items.len().min(max);
        out.extend(st.items.drain(..n));
        if st.items.is_empty() {
            st.announced = false;
        } else if self.inner.announce().is_err() {
            // The command queue is full or the reactor gone: the next drain or send
            // announces again (`announced` off lets a sender retry).
            st.announced = false;
        }
        n
    }

    /// Values waiting (a snapshot).
    pub fn len(&self) -> usize {
        self.inner.lock().items.len()
    }

    /// Whether no value waits (a snapshot).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The tag given to [`channel`].
    pub fn tag(&self) -> u64 {
        self.inner.tag
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut st = self.inner.lock();
        st.receiver_gone = true;
        st.items.clear();
    }
}

/// One reactor of a [`mesh`]: move it to its own thread and run its loop there.
#[derive(Debug)]
#[non_exhaustive]
pub struct Member<T> {
    /// Its position, `0..n`.
    pub index: usize,
    /// Its reactor (no listener yet: each member listens on the shared port itself, e.g.
    /// with [`ListenOptions::reuse_port`](crate::ListenOptions::reuse_port)).
    pub reactor: crate::Reactor,
    /// Its inbox: values other members (or itself) sent to it; `Event::Mail` with the
    /// mesh's tag says when to drain it.
    pub inbox: Receiver<T>,
    /// Senders into every member's inbox, `peers[i]` to member `i` (its own included).
    pub peers: Vec<Sender<T>>,
}

/// `n` reactors that can talk to each other: one per core, shared nothing, each with an
/// inbox of `capacity` values of type `T` (a message, a connection being handed over with
/// [`Reactor::detach`](crate::Reactor::detach), ...). Every inbox raises
/// [`Event::Mail`](crate::Event::Mail)` { tag }` once per burst. Move each [`Member`] to a
/// thread of its own (a [`Reactor`](crate::Reactor) is `Send`; pin the thread to a core
/// if you like), listen on the shared port with `SO_REUSEPORT` so the kernel spreads
/// connections over the members, and run the loops.
///
/// ```
/// use heartloop::{ConnConfig, Event, ListenOptions, ReactorConfig};
/// use std::time::Duration;
///
/// # fn main() -> std::io::Result<()> {
/// let members = heartloop::mesh::<String>(2, ReactorConfig::default(), 1024, 0)?;
/// let mut port = 0;
/// let mut threads = Vec::new();
/// for mut m in members {
///     let at = std::net::SocketAddr::from(([127, 0, 0, 1], port));
///     let opts = ListenOptions::default().reuse_port(true);
///     let l = m.reactor.listen_with(at, opts, ConnConfig::default())?;
///     port = m.reactor.local_addr(l)?.port(); // the others join the first one's port
///     threads.push(std::thread::spawn(move || -> std::io::Result<String> {
///         let next = &m.peers[(m.index + 1) % m.peers.len()];
///         next.try_send(format!("hello from {}", m.index)).unwrap();
///         let (mut events, mut got) = (Vec::new(), Vec::new());
///         while got.is_empty() {
///             m.reactor.poll(&mut events, Some(Duration::from_secs(5)))?;
///             if events.iter().any(|e| matches!(e, Event::Mail { tag: 0 })) {
///                 m.inbox.drain(&mut got, usize::MAX);
///             }
///         }
///         Ok(got.remove(0))
///     }));
/// }
/// let mut said: Vec<String> = threads.into_iter().map(|t| t.join().unwrap().unwrap()).collect();
/// said.sort();
/// assert_eq!(said, ["hello from 0", "hello from 1"]);
/// # Ok(())
/// # }
/// ```
pub fn mesh<T: Send>(
    n: usize,
    cfg: crate::ReactorConfig,
    capacity: usize,
    tag: u64,
) -> std::io::Result<Vec<Member<T>>> {
    let mut reactors = Vec::with_capacity(n);
    let mut inboxes = Vec::with_capacity(n);
    let mut senders = Vec::with_capacity(n);
    for _ in 0..n {
        let mut r = crate::Reactor::new(cfg)?;
        let (tx, rx) = channel(&r.handle()?, tag, capacity);
        reactors.push(r);
        inboxes.push(rx);
        senders.push(tx);
    }
    Ok(reactors
        .into_iter()
        .zip(inboxes)
        .enumerate()
        .map(|(index, (reactor, inbox))| Member {
            index,
            reactor,
            inbox,
            peers: senders.clone(),
        })
        .collect())
}
