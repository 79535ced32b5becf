//! # heartloop
//!
//! A single-threaded event-loop reactor on [mio] that knows when and *why* a peer is gone.
//!
//! ```
//! use std::time::Duration;
//! use heartloop::{ConnConfig, Event, Reactor, ReactorConfig};
//!
//! # fn main() -> std::io::Result<()> {
//! let mut reactor = Reactor::new(ReactorConfig::default())?;
//! let listener = reactor.listen("127.0.0.1:0".parse().unwrap(), ConnConfig::default())?;
//! let addr = reactor.local_addr(listener)?;
//!
//! // A plain std client: send "ping", then hang up.
//! let client = std::thread::spawn(move || {
//!     use std::io::Write;
//!     let mut s = std::net::TcpStream::connect(addr).unwrap();
//!     s.write_all(b"ping").unwrap();
//! });
//!
//! let mut events = Vec::new();
//! let mut got = Vec::new();
//! let cause = 'outer: loop {
//!     reactor.poll(&mut events, Some(Duration::from_secs(5)))?;
//!     for ev in events.drain(..) {
//!         match ev {
//!             Event::Data { bytes, .. } => got.extend_from_slice(&bytes),
//!             Event::Disconnected { cause, .. } => break 'outer cause,
//!             _ => {}
//!         }
//!     }
//! };
//! client.join().unwrap();
//! assert_eq!(got, b"ping");
//! assert_eq!(cause, heartloop::Cause::PeerClosed);
//! println!("peer gone: {cause}"); // "peer closed the connection (its process exited ...)"
//! # Ok(())
//! # }
//! ```
//!
//! ## What the kernel tells you, and what it doesn't
//!
//! Measured on Linux: a peer whose process exits or is killed shows up at once as EOF, or
//! as a reset if it died with data it never read. A pulled cable or a lost host shows up
//! as *nothing* for many minutes. A peer that stops reading absorbs megabytes before
//! writes return `WouldBlock`, and then the kernel says nothing more. heartloop turns this
//! into one loop:
//!
//! * one mio `Poll` drives all sockets and timers (a hierarchical [timer wheel](wheel));
//! * EOF, reset, HUP and error readiness become [`Event::Disconnected`] with a [`Cause`]
//!   a person understands; every connection ends exactly once;
//! * [`heartbeat`] deadlines live in a min-heap; a silent peer is declared lost
//!   ([`Cause::HeartbeatTimeout`]) after its timeout, and never falsely: I/O is handled
//!   before deadlines, and a last non-blocking read precedes every verdict;
//! * write-side backpressure is explicit ([outbound]): watermarks
//!   ([`Event::WriteBlocked`], [`Event::Writable`]), a hard limit with a policy, a stall
//!   timeout ([`Cause::SlowPeer`]), and read-side flow control
//!   ([`Reactor::pause_reading`]).
//!
//! ## Embedding: three ways, one event API
//!
//! 1. **Owned**: the reactor runs the loop, [`Reactor::poll`] as above
//!    (`Some(Duration::ZERO)` for a non-blocking turn).
//! 2. **Nested** in a foreign loop (GUI toolkit, game loop, asyncio, libuv): the reactor's
//!    poll fd ([`AsFd`](std::os::fd::AsFd)) becomes readable when a socket is ready; the
//!    host sleeps at most [`Reactor::next_timeout`] and runs non-blocking turns:
//!
//!    ```
//!    # use std::time::Duration;
//!    # use heartloop::{Reactor, ReactorConfig};
//!    use std::os::fd::AsFd;
//!    # fn main() -> std::io::Result<()> {
//!    let mut reactor = Reactor::new(ReactorConfig::default())?;
//!    let fd = reactor.as_fd();          // watch it for readability in the host loop
//!    # let _ = fd;
//!    let sleep = reactor.next_timeout(); // None: nothing scheduled
//!    assert_eq!(sleep, None);
//!    let mut events = Vec::new();
//!    reactor.poll(&mut events, Some(Duration::ZERO))?; // the host's "fd ready" callback
//!    # Ok(())
//!    # }
//!    ```
//!    (`examples/embed_nested.rs` runs it under a 60 Hz poll(2) loop.)
//! 3. **Hosted** in a program that owns a `mio::Poll`: the reactor registers with the
//!    host's registry in a token range; the host hands over the events the reactor
//!    [owns](Reactor::owns) and calls [`Reactor::turn`] once per poll:
//!
//!    ```
//!    # use std::time::Duration;
//!    use heartloop::{Reactor, ReactorConfig};
//!    # fn main() -> std::io::Result<()> {
//!    let mut poll = mio::Poll::new()?;
//!    let mut reactor = Reactor::hosted(poll.registry(), mio::Token(1 << 40), ReactorConfig::default())?;
//!    let (mut mio_events, mut events) = (mio::Events::with_capacity(256), Vec::new());
//!    let t = reactor.set_timer(Duration::from_millis(1), 9);
//!    while events.is_empty() {
//!        poll.poll(&mut mio_events, reactor.next_timeout())?;
//!        for ev in mio_events.iter() {
//!            if reactor.owns(ev.token()) {
//!                reactor.handle_event(ev);
//!            } // else: the host's own sources
//!        }
//!        reactor.turn(&mut events);
//!    }
//!    assert!(matches!(events[0], heartloop::Event::Timer { id, tag: 9 } if id == t));
//!    # Ok(())
//!    # }
//!    ```
//!
//! In every mode, other threads reach the loop through a [`Handle`] (send, close, timers,
//! wake), and the owner's own mio sources can join the loop with
//! [`Reactor::register_source`] ([`Event::Source`]).
//!
//! ## Layers
//!
//! [`Reactor`] makes every syscall. Whether and why a connection ends is decided by one
//! sans-IO state machine per connection (the lifecycle: facts in, steps out), so every end
//! is reported exactly once, after the bytes that preceded it. The policy modules
//! [`wheel`], [`heartbeat`], [`outbound`] and [`codec`] are sans-IO too: they take
//! `now: Instant` and bytes as arguments, never read a clock, and are tested with made-up
//! instants. The reactor reads time only from its [`Clock`]; with [`Clock::manual`] a test
//! steps time over real sockets instead of sleeping. The repository's `ARCHITECTURE.md`
//! has the states, the turn, and where each invariant is enforced and tested.
#![forbid(unsafe_code)]
#![deny(missing_docs, missing_debug_implementations)]
#![doc(test(attr(deny(warnings))))]

mod cause;
mod clock;
pub mod codec;
mod config;
mod conn;
mod event;
mod handle;
pub mod heartbeat;
mod lifecycle;
pub mod outbound;
mod reactor;
mod stats;
pub mod wheel;

pub use cause::{Cause, ProtocolError};
pub use clock::Clock;
pub use codec::Framing;
pub use config::{ConnConfig, Keepalive, ReactorConfig};
pub use event::{ConnId, Event, ListenerId, PeerAddr, Readiness, SourceId, TimerId};
pub use handle::{Handle, HandleError};
pub use heartbeat::Heartbeat;
pub use outbound::{OutboundConfig, OverflowPolicy};
pub use reactor::{ListenOptions, Reactor, SendError, TOKEN_SPAN};
pub use stats::{DisconnectCounts, Stats};
