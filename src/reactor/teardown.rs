//! Closing sockets within a budget per turn.
//!
//! Over loopback (and in general for the kernel's share of a TCP close), `shutdown` and
//! `close` run the teardown's protocol work in the caller's context: ~15 µs each on the
//! machine this crate is measured on. An owner that closes 300 connections in one turn
//! (a slowloris crowd whose peer process exited) spent ~5 ms in the kernel before any
//! other connection was served. An ended connection leaves the table at once (its
//! `Disconnected` is reported in the same turn, its memory freed). The first
//! [`MIN_PER_TURN`] sockets of a turn (from one poll to the next) are closed at once; the
//! rest wait here and are shut down and closed at the start of the next polls, [`SLICE`]
//! of them per poll (at least [`MIN_PER_TURN`], at most [`MAX_PER_TURN`]); at most
//! [`MAX_WAITING`] wait, the ones beyond are closed at once. Until then the
//! peer sees nothing new; events the poll still reports for such a socket name a table
//! entry that is gone and are ignored.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::Shutdown;
use std::time::Duration;

use super::Reactor;
use super::socket::Stream;

/// Kernel teardown time spent per turn (by the reactor's clock).
pub(super) const SLICE: Duration = Duration::from_micros(200);
/// Sockets closed per turn whatever the clock says (a manual clock does not move).
pub(super) const MIN_PER_TURN: usize = 8;
pub(super) const MAX_PER_TURN: usize = 256;
/// Most sockets waiting to be closed: beyond it a socket is closed at once (under a
/// sustained churn of short connections the queue would otherwise grow by what one turn
/// accepts minus what one poll closes, each waiting socket holding a descriptor).
pub(super) const MAX_WAITING: usize = 1024;

/// A socket whose connection ended, waiting to be closed.
#[derive(Debug)]
pub(super) struct Grave {
    pub(super) sock: Stream,
    /// `close` with nothing left to send: read what waits (so that the close sends FIN,
    /// not a reset), then shut down the write side, then close.
    pub(super) graceful: bool,
}

impl Reactor {
    /// Close an ended connection's socket now, or queue it (see the module docs).
    pub(super) fn bury(&mut self, sock: Stream, graceful: bool) {
        let g = Grave { sock, graceful };
        let at_once = self.closed_now < MIN_PER_TURN && self.graves.is_empty();
        if at_once || self.graves.len() >= MAX_WAITING {
            self.closed_now += 1;
            drop(g);
        } else {
            self.graves.push_back(g);
        }
    }

    /// Close queued sockets for up to [`SLICE`] (`next_timeout` is zero while any are
    /// left).
    pub(super) fn close_buried(&mut self) {
        self.closed_now = 0;
        if self.graves.is_empty() {
            return;
        }
        let started = self.clock.now();
        for n in 0..MAX_PER_TURN {
            if n >= MIN_PER_TURN && self.clock.now().saturating_duration_since(started) >= SLICE {
                break;
            }
            if self.graves.pop_front().is_none() {
                break;
            }
        }
    }
}

/// Dropping a grave closes its socket (which also removes it from epoll), gracefully if
/// so marked: so a reactor dropped with graves left still ends them as `close` promised.
impl Drop for Grave {
    fn drop(&mut self) {
        if self.graceful {
            drain_input(&mut self.sock);
            let _ = self.sock.shutdown(Shutdown::Write);
        }
    }
}

/// The sockets waiting to be closed.
pub(super) type Graves = VecDeque<Grave>;

/// Read and discard what waits in the socket's receive queue (at most 256 KiB), so that
/// closing it sends FIN rather than a reset.
pub(super) fn drain_input(sock: &mut Stream) {
    let mut buf = [0u8; 8192];
    for _ in 0..32 {
        match sock.read(&mut buf) {
            Ok(n) if n == buf.len() => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            _ => return, // drained, EOF, WouldBlock or an error
        }
    }
}
