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
//! * one mio `Poll` drives all sockets and timers (a hierarchical timer wheel);
//! * EOF, reset, HUP and error readiness become [`Event::Disconnected`] with a [`Cause`]
//!   a person understands; every connection ends exactly once;
//! * [`Heartbeat`] deadlines live in a min-heap; a silent peer is declared lost
//!   ([`Cause::HeartbeatTimeout`]) after its timeout, and never falsely: I/O is handled
//!   before deadlines, and a last non-blocking read precedes every verdict;
//! * write-side backpressure is explicit ([`OutboundConfig`]): watermarks
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
//! ## Many cores
//!
//! A reactor is single-threaded; scale out with one per core, shared nothing: [`mesh`]
//! builds `n` reactors (each `Send`, to be moved to its own thread) with bounded inboxes
//! between them ([`channel`]: one [`Event::Mail`] per burst of messages, not per message);
//! they share a port with [`ListenOptions::reuse_port`], hand connections to each other
//! with [`Reactor::detach`] and [`Reactor::attach`], and their [`Stats`] add up. For tens
//! of thousands of idle connections, server-led heartbeats ([`Heartbeat::answer_only`] on
//! the clients) and [`ReactorConfig::quiet_coalescing`] bound the loop's wakeups.
//!
//! ## Layers
//!
//! [`Reactor`] makes every syscall. Whether and why a connection ends is decided by one
//! sans-IO state machine per connection (the lifecycle: facts in, steps out), so every end
//! is reported exactly once, after the bytes that preceded it. The policy modules
//! (the timer wheel, heartbeat stamps and deadline heap, the outbound queue) and the
//! [`codec`] are sans-IO too: they take
//! `now: Instant` and bytes as arguments, never read a clock, and are tested with made-up
//! instants. The reactor reads time only from its [`Clock`]; with [`Clock::manual`] a test
//! steps time over real sockets instead of sleeping. The repository's `ARCHITECTURE.md`
//! has the states, the turn, and where each invariant is enforced and tested.
//!
//! ## Stability
//!
//! The enums and settings that will grow are `#[non_exhaustive]`: match them with a
//! wildcard arm and build settings with their constructors and setters. So adding a cause,
//! an event, a framing or a setting is not a breaking change. These do not compile:
//!
//! ```compile_fail,E0639
//! // Settings are built with constructors, not literals.
//! let hb = heartloop::Heartbeat { interval: std::time::Duration::from_secs(1),
//!                                 timeout: std::time::Duration::from_secs(3), pings: true };
//! ```
//! ```compile_fail,E0639
//! let k = heartloop::Keepalive { idle: std::time::Duration::from_secs(1),
//!     interval: std::time::Duration::from_secs(1), count: 3 };
//! ```
//! ```compile_fail,E0004
//! fn f(c: heartloop::Cause) -> u8 {
//!     match c { // causes will grow: a wildcard arm is required
//!         heartloop::Cause::PeerClosed => 0, heartloop::Cause::Reset => 1,
//!         heartloop::Cause::HeartbeatTimeout { .. } => 2, heartloop::Cause::TimedOut => 3,
//!         heartloop::Cause::SlowPeer { .. } => 4, heartloop::Cause::ConnectRefused => 5,
//!         heartloop::Cause::ConnectTimeout => 6, heartloop::Cause::Protocol(_) => 7,
//!         heartloop::Cause::Io { .. } => 8, heartloop::Cause::Closed => 9,
//!     }
//! }
//! ```
//! ```compile_fail,E0004
//! fn f(p: heartloop::OverflowPolicy) -> u8 {
//!     match p { heartloop::OverflowPolicy::Reject => 0, heartloop::OverflowPolicy::Disconnect => 1 }
//! }
//! ```
//! ```compile_fail,E0004
//! fn f(x: heartloop::Framing) -> u8 {
//!     match x {
//!         heartloop::Framing::Raw => 0, heartloop::Framing::LengthDelimited { .. } => 1,
//!         heartloop::Framing::Lines { .. } => 2, heartloop::Framing::Custom(_) => 3,
//!     }
//! }
//! ```
//! ```compile_fail,E0004
//! fn f(k: heartloop::codec::Kind) -> u8 {
//!     match k { heartloop::codec::Kind::Data => 0, heartloop::codec::Kind::Ping => 1,
//!               heartloop::codec::Kind::Pong => 2 }
//! }
//! ```
//! ```compile_fail,E0639
//! let r = heartloop::Readiness { readable: true, writable: false, error: false,
//!                                read_closed: false };
//! ```
//! The same code with a wildcard arm, or with the constructors, compiles:
//! ```
//! use std::time::Duration;
//! let _ = heartloop::Heartbeat::new(Duration::from_secs(1), Duration::from_secs(3));
//! let _ = heartloop::Keepalive::new(Duration::from_secs(60), Duration::from_secs(10), 3);
//! fn f(c: heartloop::Cause) -> bool {
//!     match c { heartloop::Cause::PeerClosed | heartloop::Cause::Reset => true, _ => false }
//! }
//! # let _ = f;
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs, missing_debug_implementations)]
#![doc(test(attr(deny(warnings))))]

mod cause;
mod channel;
mod clock;
pub mod codec;
mod config;
mod conn;
mod event;
mod fds;
mod handle;
// The sans-IO building blocks are internal: their shapes may change in any release.
// The `unstable-internals` feature exposes them (for the crate's own benches), with no
// stability promise.
#[cfg(feature = "unstable-internals")]
pub mod heartbeat;
#[cfg(not(feature = "unstable-internals"))]
#[allow(dead_code)] // parts only the benches use, through the feature
mod heartbeat;
mod lifecycle;
#[cfg(feature = "unstable-internals")]
pub mod outbound;
#[cfg(not(feature = "unstable-internals"))]
#[allow(dead_code)] // parts only the benches use, through the feature
mod outbound;
mod reactor;
mod stats;
#[cfg(feature = "unstable-internals")]
pub mod wheel;
#[cfg(not(feature = "unstable-internals"))]
#[allow(dead_code)] // parts only the benches use, through the feature
mod wheel;

pub use cause::{Cause, ProtocolError};
pub use channel::{Member, Receiver, Sender, TrySendError, channel, mesh};
pub use clock::Clock;
pub use codec::Framing;
pub use config::{ConnConfig, Keepalive, ReactorConfig};
pub use event::{ConnId, Event, ListenerId, PeerAddr, Readiness, SourceId, StaleId, TimerId};
pub use fds::reserve_fds;
pub use handle::{Handle, HandleError};
pub use heartbeat::Heartbeat;
pub use outbound::{OutboundConfig, OverflowPolicy, QUEUE_ENTRY_COST};
pub use reactor::{
    AttachError, DetachError, Detached, ListenOptions, Reactor, SendError, TOKEN_SPAN,
};
pub use stats::{DisconnectCounts, Stats};
