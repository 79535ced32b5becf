//! The turn's budget across connections (`ReactorConfig::turn_budget`): however many
//! connections are ready, a turn reads at most its budget; the connections left unread
//! keep their place and are read first in the next turn, which does not sleep; every
//! ready connection is read within a bounded number of turns, and no readiness is lost
//! (a readable edge is reported once: the reactor must remember it).
//!
//! Peers are plain std sockets on 127.0.0.1; a small budget makes many turns of a few
//! hundred kilobytes.

mod util;

use std::collections::HashMap;
use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use heartloop::{Cause, ConnConfig, ConnId, Event, Framing, Reactor, ReactorConfig};

const WAIT: Duration = Duration::from_secs(20);
/// The turn's budget: units (read calls and frames) and bytes.
const UNITS: usize = 64;
const BYTES: usize = 16 * 1024;
/// Busy peers, and the frames each sends.
const CONNS: usize = 20;
const FRAMES: usize = 100;
const PAYLOAD: usize = 100;

/// A reactor with the small turn budget, listening with length-delimited framing.
fn listening() -> (Reactor, SocketAddr) {
    let rcfg = ReactorConfig::default().turn_budget(UNITS, BYTES);
    let mut r = Reactor::new(rcfg).expect("reactor");
    let cfg = ConnConfig::default().framing(Framing::length_delimited(1 << 20));
    let l = r.listen("127.0.0.1:0".parse().unwrap(), cfg).unwrap();
    let addr = r.local_addr(l).unwrap();
    (r, addr)
}

/// `n` peers, connected and accepted (in order: peer `i` is `conns[i]`).
fn peers(r: &mut Reactor, addr: SocketAddr, n: usize) -> (Vec<TcpStream>, Vec<ConnId>) {
    let mut socks = Vec::new();
    let mut conns = Vec::new();
    let mut log = Vec::new();
    for _ in 0..n {
        socks.push(TcpStream::connect(addr).unwrap());
        let end = Instant::now() + WAIT;
        loop {
            assert!(Instant::now() < end, "connection not accepted");
            r.poll(&mut log, Some(Duration::from_millis(50))).unwrap();
            if let Some(c) = log.drain(..).find_map(|e| match e {
                Event::Accepted { conn, .. } => Some(conn),
                _ => None,
            }) {
                conns.push(c);
                break;
            }
        }
    }
    (socks, conns)
}

/// Frame `seq` of peer `peer`: a length-delimited data frame whose payload names both.
fn frame(peer: usize, seq: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(5 + PAYLOAD);
    f.extend_from_slice(&(PAYLOAD as u32).to_be_bytes());
    f.push(0);
    f.extend_from_slice(&(peer as u32).to_be_bytes());
    f.extend_from_slice(&(seq as u32).to_be_bytes());
    f.resize(5 + PAYLOAD, (peer + seq) as u8);
    f
}

/// (peer, seq) of a payload made by [`frame`].
fn parse(b: &[u8]) -> (usize, usize) {
    assert_eq!(b.len(), PAYLOAD);
    let peer = u32::from_be_bytes(b[0..4].try_into().unwrap()) as usize;
    let seq = u32::from_be_bytes(b[4..8].try_into().unwrap()) as usize;
    assert!(
        b[8..].iter().all(|&x| x == (peer + seq) as u8),
        "payload altered"
    );
    (peer, seq)
}

/// (a) and (c): 20 peers send 100 frames each (10.5 KB: one short read), then wait; once every frame has arrived
/// they send their FIN. No turn reads more than the budget, a turn that spent it does not
/// let the loop sleep, and every frame arrives, in order, followed by the peer's end: no
/// readable or read-closed edge, and no frame read but not yet decoded, was lost while
/// its connection waited for a later turn (the peers send nothing more that would raise
/// a new edge).
#[test]
fn a_turn_reads_at_most_its_budget_and_no_readiness_is_lost() {
    let (mut r, addr) = listening();
    let (mut socks, conns) = peers(&mut r, addr, CONNS);
    for (i, s) in socks.iter_mut().enumerate() {
        let all: Vec<u8> = (0..FRAMES).flat_map(|k| frame(i, k)).collect();
        s.write_all(&all).unwrap();
    }
    let mut fin_sent = false;
    let mut next = vec![0usize; CONNS];
    let mut ended: HashMap<ConnId, Cause> = HashMap::new();
    let mut log = Vec::new();
    let mut turns = 0;
    let end = Instant::now() + WAIT;
    while ended.len() < CONNS {
        assert!(
            Instant::now() < end,
            "frames received per peer: {next:?}; ended: {ended:?}"
        );
        let before = r.stats();
        r.poll(&mut log, Some(Duration::from_millis(100))).unwrap();
        turns += 1;
        let after = r.stats();
        let bytes = (after.bytes_read - before.bytes_read) as usize;
        let reads = (after.read_calls - before.read_calls) as usize;
        let mut frames = 0;
        for ev in log.drain(..) {
            match ev {
                Event::Data { conn, bytes } => {
                    frames += 1;
                    let (peer, seq) = parse(&bytes);
                    assert_eq!(conn, conns[peer], "frame of peer {peer} on another conn");
                    assert_eq!(seq, next[peer], "peer {peer}: frame out of order");
                    next[peer] += 1;
                }
                Event::Disconnected { conn, cause } => {
                    let peer = conns.iter().position(|&c| c == conn).unwrap();
                    assert_eq!(
                        next[peer], FRAMES,
                        "peer {peer} ended before all its frames"
                    );
                    ended.insert(conn, cause);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(bytes <= BYTES, "a turn read {bytes} bytes (budget {BYTES})");
        assert!(
            frames + reads <= UNITS,
            "a turn made {reads} reads and {frames} frames (budget {UNITS})"
        );
        if !fin_sent && next.iter().all(|&n| n == FRAMES) {
            for s in &socks {
                s.shutdown(Shutdown::Write).unwrap();
            }
            fin_sent = true;
        }
        if bytes == BYTES || frames + reads == UNITS {
            assert_eq!(
                r.next_timeout(),
                Some(Duration::ZERO),
                "the budget ran out with readers waiting, yet the loop may sleep"
            );
        }
    }
    assert!(ended.values().all(|c| *c == Cause::PeerClosed), "{ended:?}");
    let total = CONNS * FRAMES * (5 + PAYLOAD);
    assert!(turns >= total / BYTES, "{turns} turns for {total} bytes");
}

/// (b): with 20 peers' backlog waiting, every one of them, and a peer that becomes ready
/// later, is read within a bounded number of turns: the unread keep their place ahead of
/// the newly ready, and a connection whose pass took the budget goes to the back.
#[test]
fn every_ready_connection_is_read_within_a_bounded_number_of_turns() {
    let (mut r, addr) = listening();
    let (mut socks, conns) = peers(&mut r, addr, CONNS + 1);
    let late = CONNS; // silent until the others' backlog forms
    for (i, s) in socks.iter_mut().enumerate().take(CONNS) {
        let all: Vec<u8> = (0..FRAMES).flat_map(|k| frame(i, k)).collect();
        s.write_all(&all).unwrap();
    }
    // Let the bytes cross the loopback before the first turn.
    std::thread::sleep(Duration::from_millis(100));
    let mut first_read: Vec<Option<usize>> = vec![None; CONNS + 1];
    let mut late_sent_at = None;
    let mut log = Vec::new();
    let end = Instant::now() + WAIT;
    let mut turn = 0;
    while first_read.iter().any(Option::is_none) {
        assert!(Instant::now() < end, "first reads by turn: {first_read:?}");
        r.poll(&mut log, Some(Duration::from_millis(100))).unwrap();
        turn += 1;
        for ev in log.drain(..) {
            if let Event::Data { bytes, .. } = ev {
                let (peer, _) = parse(&bytes);
                first_read[peer].get_or_insert(turn);
            }
        }
        if turn == 1 {
            assert!(
                first_read.iter().filter(|t| t.is_some()).count() < CONNS,
                "the first turn read every peer: no backlog to test"
            );
            socks[late].write_all(&frame(late, 0)).unwrap();
            late_sent_at = Some(turn);
        }
    }
    let _ = conns;
    // Ahead of any connection there are at most the CONNS others; each turn moves at
    // least the front one (served, or to the back after its pass took the budget).
    for (peer, t) in first_read.iter().enumerate().take(CONNS) {
        let t = t.unwrap();
        assert!(
            t <= CONNS + 1,
            "peer {peer} first read in turn {t}: {first_read:?}"
        );
    }
    let waited = first_read[late].unwrap() - late_sent_at.unwrap();
    assert!(
        waited <= CONNS + 2,
        "the late peer waited {waited} turns behind the backlog: {first_read:?}"
    );
}
