//! Careless callers: arbitrary sequences of API calls, with extreme durations and sizes, on
//! a reactor with real loopback connections and a manual clock. Nothing may panic, and
//! every limit holds after every call: each connection's queue within its hard limit, the
//! total within the reactor-wide cap, exactly one `Disconnected` per connection, no event
//! for a connection after its `Disconnected`.

use std::collections::HashSet;
use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;

use bytes::Bytes;
use heartloop::{
    Clock, ConnConfig, ConnId, Event, Framing, Heartbeat, OutboundConfig, OverflowPolicy, Reactor,
    ReactorConfig, SendError,
};
use proptest::prelude::*;

const CONNS: usize = 4;
const HARD: usize = 256 * 1024;
const CAP: usize = 512 * 1024;

#[derive(Debug, Clone)]
enum Call {
    Send(usize, usize),
    SendParts(usize, usize, usize),
    Close(usize),
    Abort(usize),
    Pause(usize),
    Resume(usize),
    SetTimer(Duration),
    CancelLastTimer,
    Advance(Duration),
    Poll,
    PeerReads(usize),
    PeerHangsUp(usize),
}

fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::MAX),
        Just(Duration::from_secs(u64::MAX / 2)),
        (0u64..10_000).prop_map(Duration::from_millis),
    ]
}

fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(0usize),
        1usize..100,
        1usize..70_000,
        Just(HARD + 1),
        Just(CAP + 1)
    ]
}

fn call() -> impl Strategy<Value = Call> {
    let c = 0..CONNS;
    prop_oneof![
        4 => (c.clone(), size()).prop_map(|(i, n)| Call::Send(i, n)),
        2 => (c.clone(), size(), size()).prop_map(|(i, a, b)| Call::SendParts(i, a, b)),
        1 => c.clone().prop_map(Call::Close),
        1 => c.clone().prop_map(Call::Abort),
        1 => c.clone().prop_map(Call::Pause),
        1 => c.clone().prop_map(Call::Resume),
        1 => duration().prop_map(Call::SetTimer),
        1 => Just(Call::CancelLastTimer),
        2 => duration().prop_map(Call::Advance),
        3 => Just(Call::Poll),
        2 => c.clone().prop_map(Call::PeerReads),
        1 => c.prop_map(Call::PeerHangsUp),
    ]
}

fn run(calls: &[Call], length_delimited: bool) {
    let clock = Clock::manual();
    let rcfg = ReactorConfig::default().total_queued_limit(CAP, OverflowPolicy::Disconnect);
    let mut r = Reactor::with_clock(rcfg, clock.clone()).unwrap();
    let framing = if length_delimited {
        Framing::length_delimited(1 << 20)
    } else {
        Framing::Raw
    };
    let cfg = ConnConfig::default()
        .framing(framing)
        .heartbeat(Heartbeat::new(Duration::from_millis(100), Duration::MAX))
        .linger(Duration::MAX)
        .outbound(
            OutboundConfig::watermarks(16 * 1024, 64 * 1024)
                .hard_limit(HARD, OverflowPolicy::Disconnect)
                .on_stall(Duration::from_secs(1)),
        );
    let l = r.listen("127.0.0.1:0".parse().unwrap(), cfg).unwrap();
    let addr = r.local_addr(l).unwrap();
    let mut peers: Vec<Option<TcpStream>> = Vec::new();
    let mut conns: Vec<ConnId> = Vec::new();
    let mut events = Vec::new();
    for _ in 0..CONNS {
        let p = TcpStream::connect(addr).unwrap();
        p.set_nonblocking(true).unwrap();
        peers.push(Some(p));
    }
    while conns.len() < CONNS {
        r.poll(&mut events, Some(Duration::from_millis(20)))
            .unwrap();
        for ev in events.drain(..) {
            if let Event::Accepted { conn, .. } = ev {
                conns.push(conn);
            }
        }
    }
    let mut ended = HashSet::new();
    let mut timers = Vec::new();
    let mut check = |r: &Reactor, events: &mut Vec<Event>| {
        for ev in events.drain(..) {
            if let Some(c) = ev.conn() {
                assert!(!ended.contains(&c), "event after Disconnected: {ev:?}");
                if matches!(ev, Event::Disconnected { .. }) {
                    ended.insert(c);
                }
            }
        }
        for &c in &conns {
            if let Some(q) = r.queued(c) {
                assert!(q <= HARD, "{c}: {q} queued over the hard limit {HARD}");
            }
        }
        let total = r.stats().bytes_queued as usize;
        assert!(total <= CAP, "{total} queued over the cap {CAP}");
    };
    let mut buf = vec![0u8; 256 * 1024];
    for call in calls {
        match *call {
            Call::Send(i, n) => match r.send(conns[i], Bytes::from(vec![7u8; n])) {
                Ok(()) | Err(SendError::Stale | SendError::Closing | SendError::Full { .. }) => {}
                Err(e) => panic!("unexpected {e:?}"),
            },
            Call::SendParts(i, a, b) => {
                let _ = r.send_parts(
                    conns[i],
                    Bytes::from(vec![1u8; a]),
                    Bytes::from(vec![2u8; b]),
                );
            }
            Call::Close(i) => {
                let _ = r.close(conns[i]);
            }
            Call::Abort(i) => {
                let _ = r.abort(conns[i]);
            }
            Call::Pause(i) => {
                let _ = r.pause_reading(conns[i]);
            }
            Call::Resume(i) => {
                let _ = r.resume_reading(conns[i]);
            }
            Call::SetTimer(d) => timers.push(r.set_timer(d, 0)),
            Call::CancelLastTimer => {
                if let Some(t) = timers.pop() {
                    let _ = r.cancel_timer(t);
                }
            }
            Call::Advance(d) => clock.advance(d.min(Duration::from_secs(3600))),
            Call::Poll => r.poll(&mut events, Some(Duration::ZERO)).unwrap(),
            Call::PeerReads(i) => {
                if let Some(p) = peers[i].as_mut() {
                    let _ = p.read(&mut buf);
                }
            }
            Call::PeerHangsUp(i) => peers[i] = None,
        }
        check(&r, &mut events);
    }
    // Wind down: every connection ends exactly once.
    for &c in &conns {
        let _ = r.abort(c);
    }
    r.poll(&mut events, Some(Duration::ZERO)).unwrap();
    check(&r, &mut events);
    assert_eq!(ended.len(), CONNS, "every connection ends exactly once");
    assert_eq!(r.stats().bytes_queued, 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_api_calls_never_panic_and_every_limit_holds(
        calls in proptest::collection::vec(call(), 1..60),
        length_delimited: bool,
    ) {
        run(&calls, length_delimited);
    }
}
