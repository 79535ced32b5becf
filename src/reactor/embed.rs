//! Embedding: hosted mode (the host owns the `mio::Poll`), the cross-thread handle, the
//! owner's own mio sources, and the poll fd for nested mode.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::Arc;

use mio::{Registry, Token};

use super::Reactor;
use super::expiry::Timeout;
use super::table::{Entry, TOKEN_SPAN};
use crate::clock::Clock;
use crate::config::ReactorConfig;
use crate::event::{Event, SourceId, TimerId, TimerRef};
use crate::handle::{Command, Handle, Shared};

#[derive(Debug)]
pub(crate) struct UserSource {
    pub(crate) id: SourceId,
}

impl Reactor {
    /// A reactor hosted in a program that owns its own `mio::Poll`: it registers its
    /// sockets with `registry`, using only tokens in
    /// `token_base .. token_base + TOKEN_SPAN` (see [`owns`](Reactor::owns)). The host polls,
    /// hands every event whose token the reactor owns to
    /// [`handle_event`](Reactor::handle_event), then calls [`turn`](Reactor::turn) once per
    /// poll (also when none of its events arrived), sleeping at most
    /// [`next_timeout`](Reactor::next_timeout).
    ///
    /// Fails with `InvalidInput` when the token range does not fit in a `usize`.
    pub fn hosted(
        registry: &Registry,
        token_base: Token,
        cfg: ReactorConfig,
    ) -> io::Result<Reactor> {
        if token_base.0.checked_add(TOKEN_SPAN).is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "token_base + TOKEN_SPAN overflows usize",
            ));
        }
        Ok(Reactor::with_registry(
            registry.try_clone()?,
            token_base.0,
            cfg,
            Clock::system(),
        ))
    }

    /// Whether `token` belongs to this reactor (hosted mode: which events to hand over).
    pub fn owns(&self, token: Token) -> bool {
        self.table.owns(token)
    }

    /// A [`Handle`] for other threads. The first call creates the waker (token
    /// `token_base`) and the command queue.
    pub fn handle(&mut self) -> io::Result<Handle> {
        if self.shared.is_none() {
            let waker = mio::Waker::new(&self.registry, self.table.waker_token())?;
            self.shared = Some(Arc::new(Shared {
                queue: Default::default(),
                limit: self.cfg.handle_queue_limit,
                woken: Default::default(),
                gone: Default::default(),
                waker,
                next_timer: Default::default(),
            }));
        }
        Ok(Handle {
            shared: Arc::clone(self.shared.as_ref().expect("just set")),
        })
    }

    /// Hosted mode: handle one event of the host's poll whose token this reactor
    /// [`owns`](Reactor::owns). The first event of a turn reads the clock. An event for a
    /// connection that has ended since the host polled is ignored, even if a new
    /// connection took its place meanwhile.
    pub fn handle_event(&mut self, ev: &mio::event::Event) {
        self.begin_turn();
        self.dispatch(ev);
    }

    /// Hosted mode: finish the turn after the host handed over its events (or none):
    /// expire timers and heartbeats, apply handle commands, flush, and append what
    /// happened to `out`.
    pub fn turn(&mut self, out: &mut Vec<Event>) {
        self.close_buried();
        self.begin_turn();
        self.stats.turns += 1;
        self.finish_turn(out);
    }

    pub(super) fn apply_commands(&mut self) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let mut cmds = std::mem::take(&mut self.commands);
        shared.take(&mut cmds);
        for cmd in cmds.drain(..) {
            let ok = match cmd {
                Command::Send(conn, bytes) => self.send(conn, bytes).is_ok(),
                Command::Close(conn) => self.close(conn).is_ok(),
                Command::Abort(conn) => self.abort(conn).is_ok(),
                Command::SetTimer(after, tag, n) => {
                    let key = self.wheel.insert(
                        crate::clock::later(self.clock.now(), after),
                        Timeout::User {
                            tag,
                            handle: Some(n),
                        },
                    );
                    self.handle_timers.insert(n, key);
                    true
                }
                Command::CancelTimer(n) => self.cancel_timer(TimerId(TimerRef::Handle(n))).is_ok(),
                Command::Mail(tag) => {
                    self.pending.push(Event::Mail { tag });
                    true
                }
            };
            if !ok {
                self.stats.handle_dropped += 1;
            }
        }
        self.commands = cmds;
    }

    /// Register a mio source of the owner's (a pipe, a UDP socket, a timerfd, ...) with the
    /// reactor's poll; its readiness arrives as [`Event::Source`]. Registration is
    /// edge-triggered, as mio's always is: drain the source until `WouldBlock`.
    pub fn register_source<S>(
        &mut self,
        source: &mut S,
        interest: mio::Interest,
    ) -> io::Result<SourceId>
    where
        S: mio::event::Source + ?Sized,
    {
        let registry = &self.registry;
        let key = self.table.insert(|key, token| {
            registry.register(source, token, interest)?;
            Ok(Entry::Source(UserSource {
                id: SourceId {
                    gen_: key.serial,
                    index: key.index,
                },
            }))
        })?;
        Ok(SourceId {
            gen_: key.serial,
            index: key.index,
        })
    }

    /// Deregister a source registered with [`register_source`](Reactor::register_source).
    /// The slot is freed only after the poll has let go of the source.
    pub fn deregister_source<S>(&mut self, id: SourceId, source: &mut S) -> io::Result<()>
    where
        S: mio::event::Source + ?Sized,
    {
        if !matches!(self.table.get(id), Some(Entry::Source(_))) {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such source"));
        }
        self.registry.deregister(source)?;
        self.table.remove(id);
        Ok(())
    }
}

/// Nested mode: the fd of the reactor's poll (epoll) turns readable when one of its
/// sockets is ready. A host loop (GUI, game loop, another reactor) watches it for
/// readability, sleeps at most [`Reactor::next_timeout`], then runs a non-blocking turn
/// (`poll(&mut events, Some(Duration::ZERO))`).
///
/// # Panics
/// On a hosted reactor, which has no poll of its own.
impl AsRawFd for Reactor {
    fn as_raw_fd(&self) -> RawFd {
        self.poll
            .as_ref()
            .expect("a hosted reactor has no poll fd")
            .as_raw_fd()
    }
}

/// See [`AsRawFd`](#impl-AsRawFd-for-Reactor).
impl AsFd for Reactor {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // The registry is a handle to the same epoll instance as the poll.
        self.registry.as_fd()
    }
}
