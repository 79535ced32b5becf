//! `ReactorConfig::quiet_coalescing`: while only heartbeat traffic flows, the loop wakes at
//! most once per period however scattered the pings arrive; every ping is still answered;
//! and the first message after a quiet spell ends it (the loop is prompt again).
//!
//! Real sockets and real time (naps are real sleeps; a manual clock turns coalescing off).
//! The bounds hold on a slow machine too: a nap can only make wakeups fewer.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use heartloop::codec::Kind;
use heartloop::{ConnConfig, Event, Framing, ReactorConfig};
use util::{accept, listening_with, ms};

const PING: [u8; 5] = [0, 0, 0, 0, Kind::Ping as u8];
const PERIOD: Duration = Duration::from_millis(50);
const SPELL: Duration = Duration::from_millis(600);

/// A peer pings every millisecond for `SPELL` while the loop runs; the loop's wakeups
/// during the spell, pings sent, pongs received, and whether a pong came after the last
/// ping (pings that wait together are answered by one pong: the reactor keeps at most one
/// waiting, so what matters is that none is left unanswered).
fn ping_spell(coalescing: Option<Duration>) -> (u64, usize, usize, bool) {
    let mut rcfg = ReactorConfig::default();
    if let Some(d) = coalescing {
        rcfg = rcfg.quiet_coalescing(d);
    }
    let cfg = ConnConfig::default().framing(Framing::length_delimited(1 << 16));
    let (mut r, addr) = listening_with(rcfg, cfg);
    let mut peer = TcpStream::connect(addr).unwrap();
    let mut log = Vec::new();
    let _conn = accept(&mut r, &mut log);
    // Settle, then count from here.
    r.poll(&mut log, Some(ms(1))).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let mut reader = peer.try_clone().unwrap();
    let pinger = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut sent = 0;
            let end = Instant::now() + SPELL;
            let mut last = Instant::now();
            while Instant::now() < end {
                last = Instant::now();
                peer.write_all(&PING).unwrap();
                sent += 1;
                std::thread::sleep(ms(1));
            }
            done.store(true, Ordering::Release);
            (sent, last)
        })
    };
    let pongs = std::thread::spawn(move || {
        reader.set_read_timeout(Some(ms(2000))).unwrap();
        let mut n = 0;
        let mut last = None;
        let mut buf = [0u8; 4096];
        while let Ok(k) = reader.read(&mut buf) {
            if k == 0 {
                break;
            }
            n += k;
            last = Some(Instant::now());
        }
        (n / PING.len(), last)
    });
    let before = r.stats().wakeups;
    while !done.load(Ordering::Acquire) {
        r.poll(&mut log, Some(ms(100))).unwrap();
    }
    let wakeups = r.stats().wakeups - before;
    let (sent, last_ping) = pinger.join().unwrap();
    // Let the last pongs out.
    for _ in 0..20 {
        r.poll(&mut log, Some(ms(5))).unwrap();
    }
    assert!(
        log.iter().all(|e| !matches!(e, Event::Data { .. })),
        "pings are no events"
    );
    let (answered, last_pong) = pongs.join().unwrap();
    (
        wakeups,
        sent,
        answered,
        last_pong.is_some_and(|t| t > last_ping),
    )
}

#[test]
fn quiet_loop_wakes_at_most_once_per_period_and_answers_every_ping() {
    let (plain, sent, answered, last_answered) = ping_spell(None);
    assert!(last_answered, "the last ping unanswered (no coalescing)");
    let (coalesced, sent_c, answered_c, last_answered_c) = ping_spell(Some(PERIOD));
    assert!(last_answered_c, "the last ping unanswered (coalescing)");
    assert!(answered_c >= 1 && answered_c <= sent_c);
    let most = (SPELL.as_millis() / PERIOD.as_millis()) as u64 + 4;
    println!(
        "{sent} pings in {SPELL:?}: {plain} wakeups, {answered} pongs; with {PERIOD:?} \
         coalescing: {coalesced} wakeups (at most {most}), {answered_c} pongs for {sent_c} pings"
    );
    assert!(coalesced <= most, "{coalesced} wakeups > {most}");
    assert!(
        plain >= 2 * coalesced,
        "coalescing made no difference: {plain} vs {coalesced}"
    );
}

/// After a quiet spell the first message waits at most one period; the turn that hands it
/// over ends the spell, so the round trips that follow are not held back.
#[test]
fn the_first_event_ends_the_quiet_spell() {
    let rcfg = ReactorConfig::default().quiet_coalescing(PERIOD);
    let (mut r, addr) = listening_with(rcfg, ConnConfig::default());
    let mut peer = TcpStream::connect(addr).unwrap();
    peer.set_nodelay(true).unwrap();
    let mut log = Vec::new();
    let conn = accept(&mut r, &mut log);
    let stop = Arc::new(AtomicBool::new(false));
    let server = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut events = Vec::new();
            // Quiet turns first (nothing happens for 300 ms).
            while !stop.load(Ordering::Acquire) {
                r.poll(&mut events, Some(ms(20))).unwrap();
                for ev in events.drain(..) {
                    if let Event::Data { conn: c, bytes } = ev {
                        assert_eq!(c, conn);
                        r.send(c, bytes).unwrap(); // echo
                    }
                }
            }
        })
    };
    std::thread::sleep(ms(300));
    let mut buf = [0u8; 1];
    let t0 = Instant::now();
    peer.write_all(b"a").unwrap();
    peer.read_exact(&mut buf).unwrap();
    let first = t0.elapsed();
    let t1 = Instant::now();
    for _ in 0..20 {
        peer.write_all(b"b").unwrap();
        peer.read_exact(&mut buf).unwrap();
    }
    let next20 = t1.elapsed();
    stop.store(true, Ordering::Release);
    server.join().unwrap();
    println!("first round trip after a quiet spell {first:?}; the next 20: {next20:?}");
    assert!(first < PERIOD + ms(500), "{first:?}");
    // Held back by a nap each, 20 round trips would take about 20 periods (1 s).
    assert!(next20 < PERIOD * 8, "{next20:?}: naps between busy turns");
}
