//! The broker example (`examples/broker/`): a real NATS client library against it, the
//! protocol's error answers over raw sockets, liveness (stale connections), slow
//! consumers, and a fuzz of its parser.
//!
//! The broker runs as a child process (`--addr 127.0.0.1:0`; the port is read from its
//! startup line). Its parser and subject index are compiled in here too (`#[path]`), so
//! their unit tests run with this file and the fuzz calls the parser directly.

mod util;

#[allow(dead_code)]
#[path = "../examples/broker/parser.rs"]
mod parser;
#[allow(dead_code)]
#[path = "../examples/broker/subjects.rs"]
mod subjects;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use proptest::prelude::*;
use util::{Proc, example_bin};

/// Generous bound for anything that should take milliseconds (busy, shared machine).
const SLOW: Duration = Duration::from_secs(20);

struct Broker {
    _proc: Proc,
    addr: SocketAddr,
}

fn broker(args: &[&str]) -> Broker {
    let mut all = vec!["--addr", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let mut proc = Proc::spawn(example_bin("broker"), &all);
    let rest = proc.expect_line("broker listening on ", Duration::from_secs(60));
    let addr = rest
        .split_whitespace()
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in startup line {rest:?}"));
    Broker { _proc: proc, addr }
}

// ------------------------------------------------------------------ a raw client

struct Raw {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Raw {
    /// Connect and read the INFO line.
    #[track_caller]
    fn connect(addr: SocketAddr) -> Raw {
        let w = TcpStream::connect(addr).expect("connect to broker");
        w.set_nodelay(true).unwrap();
        w.set_read_timeout(Some(SLOW)).unwrap();
        let r = BufReader::new(w.try_clone().unwrap());
        let mut raw = Raw { w, r };
        let info = raw.line();
        assert!(info.starts_with("INFO {"), "first line {info:?}");
        raw
    }

    fn send(&mut self, b: &[u8]) {
        self.w.write_all(b).expect("write to broker");
    }

    /// One line, CRLF removed.
    #[track_caller]
    fn line(&mut self) -> String {
        let mut s = String::new();
        match self.r.read_line(&mut s) {
            Ok(0) => panic!("connection closed while waiting for a line"),
            Ok(_) => {}
            Err(e) => panic!("reading a line: {e}"),
        }
        assert!(s.ends_with("\r\n"), "line without CRLF: {s:?}");
        s.truncate(s.len() - 2);
        s
    }

    #[track_caller]
    fn expect(&mut self, want: &str) {
        let got = self.line();
        assert_eq!(got, want);
    }

    /// A `MSG`/`HMSG` line and its payload: (line, payload).
    #[track_caller]
    fn msg(&mut self) -> (String, Vec<u8>) {
        let line = self.line();
        assert!(
            line.starts_with("MSG ") || line.starts_with("HMSG "),
            "not a message: {line:?}"
        );
        let len: usize = line.rsplit(' ').next().unwrap().parse().unwrap();
        let mut payload = vec![0; len + 2];
        self.r.read_exact(&mut payload).unwrap();
        assert_eq!(&payload[len..], b"\r\n");
        payload.truncate(len);
        (line, payload)
    }

    /// The broker closes the connection: EOF (or a reset) comes, not a timeout.
    #[track_caller]
    fn expect_closed(&mut self) {
        let mut rest = Vec::new();
        match self.r.read_to_end(&mut rest) {
            Ok(_) => assert!(
                rest.is_empty(),
                "unexpected bytes before EOF: {:?}",
                String::from_utf8_lossy(&rest)
            ),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Err(e) => panic!("expected the broker to close the connection, got {e}"),
        }
    }

    /// PING, and read up to the PONG: proves the connection is open and everything sent
    /// before was processed. Returns the lines before the PONG.
    #[track_caller]
    fn sync(&mut self) -> Vec<String> {
        self.send(b"PING\r\n");
        let mut before = Vec::new();
        loop {
            let l = self.line();
            if l == "PONG" {
                return before;
            }
            before.push(l);
        }
    }
}

// ------------------------------------------------------------------ protocol over raw sockets

#[test]
fn raw_protocol_ops_are_case_insensitive_and_verbose_acks_each() {
    let b = broker(&[]);
    let mut c = Raw::connect(b.addr);
    c.send(b"CONNECT {\"verbose\":true,\"headers\":true}\r\n");
    c.expect("+OK");
    c.send(b"sub foo.* 1\r\n");
    c.expect("+OK");
    c.send(b"pUb foo.bar reply.to 5\r\nhello\r\n");
    c.expect("+OK");
    let (line, payload) = c.msg();
    assert_eq!(line, "MSG foo.bar 1 reply.to 5");
    assert_eq!(payload, b"hello");
    c.send(b"HPUB foo.h 12 14\r\nNATS/1.0\r\n\r\nhi\r\n");
    c.expect("+OK");
    let (line, payload) = c.msg();
    assert_eq!(line, "HMSG foo.h 1 12 14");
    assert_eq!(payload, b"NATS/1.0\r\n\r\nhi");
    c.send(b"unsub 1\r\n");
    c.expect("+OK");
    c.send(b"PUB foo.bar 1\r\nx\r\n");
    c.expect("+OK");
    // PING is answered with PONG only (no +OK), and nothing was delivered after UNSUB.
    assert_eq!(c.sync(), Vec::<String>::new());
}

#[test]
fn raw_headers_are_stripped_for_a_subscriber_without_headers_and_echo_off_is_honoured() {
    let b = broker(&[]);
    let mut plain = Raw::connect(b.addr);
    plain.send(b"CONNECT {}\r\nSUB h 7\r\n");
    plain.sync();
    let mut pubr = Raw::connect(b.addr);
    pubr.send(b"CONNECT {\"headers\":true,\"echo\":false}\r\nSUB h 1\r\n");
    pubr.send(b"HPUB h 12 14\r\nNATS/1.0\r\n\r\nhi\r\n");
    // The publisher's own subscription gets nothing (echo off).
    assert_eq!(pubr.sync(), Vec::<String>::new());
    let (line, payload) = plain.msg();
    assert_eq!(line, "MSG h 7 2");
    assert_eq!(payload, b"hi");
}

#[test]
fn raw_unsub_with_max_delivers_exactly_max() {
    let b = broker(&[]);
    let mut c = Raw::connect(b.addr);
    c.send(b"CONNECT {}\r\nSUB foo 1\r\nUNSUB 1 2\r\n");
    for i in 0..5 {
        c.send(format!("PUB foo 1\r\n{i}\r\n").as_bytes());
    }
    c.send(b"PING\r\n");
    assert_eq!(c.msg().1, b"0");
    assert_eq!(c.msg().1, b"1");
    c.expect("PONG");
    // And UNSUB with a max already reached removes it at once.
    c.send(b"SUB bar 2\r\nPUB bar 1\r\na\r\nUNSUB 2 1\r\nPUB bar 1\r\nb\r\n");
    assert_eq!(c.msg().1, b"a");
    assert_eq!(c.sync(), Vec::<String>::new());
}

#[test]
fn raw_unknown_operation_gets_err_and_close() {
    let b = broker(&[]);
    for bad in [
        &b"FOO\r\n"[..],
        b"PUBX foo 1\r\n",
        b"MSG foo 1 1\r\nx\r\n",
        b"\r\n",
        b"\x00\x01\x02",
    ] {
        let mut c = Raw::connect(b.addr);
        c.send(bad);
        c.expect("-ERR 'Unknown Protocol Operation'");
        c.expect_closed();
    }
    // Detected at the first wrong byte, without waiting for a newline.
    let mut c = Raw::connect(b.addr);
    c.send(b"SUBSCRIBE");
    c.expect("-ERR 'Unknown Protocol Operation'");
    c.expect_closed();
}

#[test]
fn raw_payload_over_max_payload_gets_err_and_close() {
    let b = broker(&["--max-payload", "1024"]);
    let mut c = Raw::connect(b.addr);
    c.send(b"CONNECT {}\r\nSUB big 1\r\n");
    let body = vec![b'z'; 1024];
    c.send(b"PUB big 1024\r\n");
    c.send(&body);
    c.send(b"\r\n");
    assert_eq!(c.msg().1, body, "a payload at the maximum is delivered");
    c.send(b"PUB big 1025\r\n");
    c.expect("-ERR 'Maximum Payload Violation'");
    c.expect_closed();
}

#[test]
fn raw_control_line_over_4096_gets_err_and_close() {
    let b = broker(&[]);
    let mut c = Raw::connect(b.addr);
    let mut line = b"SUB ".to_vec();
    line.resize(5000, b'a'); // and no newline: refused before it ends
    c.send(&line);
    c.expect("-ERR 'Maximum Control Line Exceeded'");
    c.expect_closed();
}

#[test]
fn raw_invalid_subject_gets_err_and_stays_open() {
    let b = broker(&[]);
    let mut c = Raw::connect(b.addr);
    c.send(b"CONNECT {}\r\n");
    for bad in ["foo..bar", "foo.>.bar", ".foo", "foo."] {
        c.send(format!("SUB {bad} 1\r\n").as_bytes());
        c.expect("-ERR 'Invalid Subject'");
    }
    // Still open, and sid 1 is still free.
    c.send(b"SUB ok 1\r\nPUB ok 2\r\nhi\r\n");
    assert_eq!(c.msg().1, b"hi");
    assert_eq!(c.sync(), Vec::<String>::new());
}

#[test]
fn raw_malformed_arguments_get_parser_error_and_close() {
    let b = broker(&[]);
    for bad in [
        &b"PUB foo\r\n"[..],
        b"PUB foo bar baz 3\r\n",
        b"PUB foo x\r\n",
        b"SUB foo\r\n",
        b"UNSUB 1 x\r\n",
        b"CONNECT {not json\r\n",
    ] {
        let mut c = Raw::connect(b.addr);
        c.send(bad);
        c.expect("-ERR 'Parser Error'");
        c.expect_closed();
    }
}

#[test]
fn raw_byte_at_a_time_and_garbage() {
    let b = broker(&[]);
    let mut c = Raw::connect(b.addr);
    for &byte in b"CONNECT {\"verbose\":false}\r\nSUB a.b 1\r\nPUB a.b 3\r\nabc\r\nPING\r\n" {
        c.send(&[byte]);
    }
    let (line, payload) = c.msg();
    assert_eq!(line, "MSG a.b 1 3");
    assert_eq!(payload, b"abc");
    c.expect("PONG");

    // Garbage on other connections ends only those connections.
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    for round in 0..20 {
        let mut g = Raw::connect(b.addr);
        let junk: Vec<u8> = (0..(1 + round * 97))
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let _ = g.w.write_all(&junk);
        // Whatever it makes of it, the broker answers or waits; it never dies.
        drop(g);
    }
    c.send(b"PUB a.b 2\r\nok\r\n");
    assert_eq!(c.msg().1, b"ok");
    assert_eq!(c.sync(), Vec::<String>::new());
}

// ------------------------------------------------------------------ liveness

#[test]
fn silent_client_gets_stale_connection_while_a_responsive_one_stays() {
    let interval = Duration::from_millis(200);
    let b = broker(&["--ping-interval", "200ms", "--ping-max", "2"]);

    // A client that answers PINGs, in a thread, for a good many intervals.
    let addr = b.addr;
    let responsive = std::thread::spawn(move || {
        let mut c = Raw::connect(addr);
        c.send(b"CONNECT {}\r\nPING\r\n");
        c.expect("PONG");
        let until = Instant::now() + interval * 12;
        let mut pings = 0;
        while Instant::now() < until {
            c.w.set_read_timeout(Some(interval / 2)).unwrap();
            let mut s = String::new();
            match c.r.read_line(&mut s) {
                Ok(0) => panic!("responsive client was closed"),
                Ok(_) => {
                    assert_eq!(s, "PING\r\n");
                    pings += 1;
                    c.send(b"PONG\r\n");
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("responsive client: {e}"),
            }
        }
        c.w.set_read_timeout(Some(SLOW)).unwrap();
        assert_eq!(
            c.sync(),
            Vec::<String>::new(),
            "still open after {pings} pings"
        );
        pings
    });

    let mut silent = Raw::connect(b.addr);
    let t0 = Instant::now();
    silent.send(b"CONNECT {}\r\nPING\r\n");
    silent.expect("PONG");
    silent.expect("PING");
    silent.expect("PING");
    silent.expect("-ERR 'Stale Connection'");
    let after = t0.elapsed();
    silent.expect_closed();
    assert!(after >= interval * 2, "stale after only {after:?}");
    assert!(after < SLOW, "stale after {after:?}");

    let pings = responsive.join().unwrap();
    assert!(pings >= 3, "the responsive client was pinged {pings} times");
}

#[test]
fn busy_subscriber_is_pinged_too_and_judged_by_its_answers() {
    // Messages flow to both subscribers all the time, so the broker never goes an
    // interval without sending to them; the ping logic must run anyway.
    let interval = Duration::from_millis(200);
    let b = broker(&["--ping-interval", "200ms", "--ping-max", "2"]);
    let stop = Arc::new(AtomicBool::new(false));

    let mut mute = Raw::connect(b.addr);
    mute.send(b"CONNECT {}\r\nSUB tick 1\r\n");
    mute.sync();

    // The one that answers PINGs, in a thread, until told to stop.
    let mut answers = Raw::connect(b.addr);
    answers.send(b"CONNECT {}\r\nSUB tick 1\r\n");
    answers.sync();
    let stop_a = Arc::clone(&stop);
    let answerer = std::thread::spawn(move || {
        let (mut msgs, mut pings) = (0, 0);
        while !stop_a.load(Ordering::Relaxed) {
            let l = answers.line();
            if l == "PING" {
                pings += 1;
                answers.send(b"PONG\r\n");
            } else {
                assert_eq!(l, "MSG tick 1 1");
                answers.line();
                msgs += 1;
            }
        }
        answers.send(b"UNSUB 1\r\n");
        answers.sync();
        (msgs, pings)
    });

    let addr = b.addr;
    let stop_p = Arc::clone(&stop);
    let publisher = std::thread::spawn(move || {
        let mut p = Raw::connect(addr);
        p.send(b"CONNECT {}\r\n");
        while !stop_p.load(Ordering::Relaxed) {
            p.send(b"PUB tick 1\r\nt\r\n");
            std::thread::sleep(interval / 10);
        }
        p.sync();
    });

    // The mute one reads everything but never answers: PINGs, then stale.
    let t0 = Instant::now();
    let (mut pings, mut msgs) = (0, 0);
    loop {
        let l = mute.line();
        if l == "PING" {
            pings += 1;
        } else if l == "-ERR 'Stale Connection'" {
            break;
        } else {
            assert_eq!(l, "MSG tick 1 1");
            mute.line();
            msgs += 1;
        }
    }
    let stale_after = t0.elapsed();
    mute.expect_closed();
    assert_eq!(pings, 2, "ping_max PINGs before the verdict");
    assert!(msgs > 10, "messages kept flowing to it ({msgs})");
    assert!(
        stale_after >= interval * 2 && stale_after < SLOW,
        "stale after {stale_after:?}"
    );

    // The one that answers outlives it by a good margin, pinged all along.
    std::thread::sleep(interval * 4);
    stop.store(true, Ordering::Relaxed);
    publisher.join().unwrap();
    let (msgs, pings) = answerer
        .join()
        .expect("the answering subscriber stayed connected");
    assert!(pings >= 3, "the busy subscriber was pinged {pings} times");
    assert!(msgs > 20, "it kept receiving ({msgs})");
}

// ------------------------------------------------------------------ slow consumers

/// One publisher, one healthy subscriber that reads everything, one that never reads.
/// Returns how long after the start the stopped one was cut.
fn slow_consumer_run(b: &Broker, total: usize, size: usize) -> Duration {
    let t0 = Instant::now();
    // The stopped subscriber: small receive buffer, never reads.
    let slow = {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_recv_buffer_size(4096).unwrap();
        s.connect(&b.addr.into()).unwrap();
        let mut s: TcpStream = s.into();
        s.set_read_timeout(Some(SLOW)).unwrap();
        s.write_all(b"CONNECT {}\r\nSUB sc 9\r\nPING\r\n").unwrap();
        // Read up to the PONG (the SUB is in place), then never again.
        let mut seen = Vec::new();
        while !seen.ends_with(b"PONG\r\n") {
            let mut byte = [0u8; 1];
            assert_eq!(
                s.read(&mut byte).unwrap(),
                1,
                "slow subscriber closed early"
            );
            seen.push(byte[0]);
        }
        s
    };
    let mut healthy = Raw::connect(b.addr);
    healthy.send(b"CONNECT {}\r\nSUB sc 1\r\n");
    healthy.sync();
    let received = Arc::new(AtomicU64::new(0));
    let rx = Arc::clone(&received);
    let reader = std::thread::spawn(move || {
        for seq in 0..total {
            let (line, payload) = healthy.msg();
            assert_eq!(line, format!("MSG sc 1 {size}"));
            let got: usize = std::str::from_utf8(&payload[..10])
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(
                got, seq,
                "healthy subscriber got message {got} where {seq} was due"
            );
            rx.fetch_add(1, Ordering::Release);
        }
        healthy.sync();
    });

    let mut p = Raw::connect(b.addr);
    p.send(b"CONNECT {}\r\n");
    p.sync();
    let mut batch = Vec::new();
    let window = 256; // messages in flight beyond what the healthy one has read
    for seq in 0..total {
        while seq as u64 > received.load(Ordering::Acquire) + window {
            std::thread::yield_now();
        }
        batch.extend_from_slice(format!("PUB sc {size}\r\n{seq:010}").as_bytes());
        batch.resize(batch.len() + size - 10, b'.');
        batch.extend_from_slice(b"\r\n");
        if batch.len() > 32 * 1024 || seq + 1 == total {
            p.send(&batch);
            batch.clear();
        }
    }
    assert_eq!(
        p.sync(),
        Vec::<String>::new(),
        "the publisher is never slowed or told off"
    );
    reader
        .join()
        .expect("healthy subscriber got every message in order");

    // The stopped one is cut: its socket reports the broker's FIN (or a reset) while we
    // still do not read it (reading would make progress and could save it).
    let mut pfd = [rustix::event::PollFd::new(
        &slow,
        rustix::event::PollFlags::RDHUP,
    )];
    let timeout = rustix::event::Timespec {
        tv_sec: SLOW.as_secs() as i64,
        tv_nsec: 0,
    };
    rustix::event::poll(&mut pfd, Some(&timeout)).expect("poll");
    let flags = pfd[0].revents();
    assert!(
        flags.intersects(
            rustix::event::PollFlags::RDHUP
                | rustix::event::PollFlags::HUP
                | rustix::event::PollFlags::ERR
        ),
        "the stopped subscriber was not cut within {SLOW:?} (revents {flags:?})"
    );
    let cut_after = t0.elapsed();
    // Draining it ends in EOF or a reset.
    let mut slow = slow;
    slow.set_read_timeout(Some(SLOW)).unwrap();
    let mut buf = vec![0; 1 << 16];
    let mut got = 0usize;
    loop {
        match slow.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the stopped subscriber was not cut ({got} bytes read): {e}"),
        }
    }
    assert!(
        got < total * size,
        "the stopped subscriber cannot have got everything"
    );
    cut_after
}

#[test]
fn stopped_subscriber_is_cut_at_max_pending_and_healthy_one_gets_everything() {
    // Only the queue limit can cut it: the write deadline is far beyond the test.
    let b = broker(&["--max-pending", "1MB", "--write-deadline", "600s"]);
    slow_consumer_run(&b, 40_000, 512);
}

#[test]
fn stopped_subscriber_is_cut_at_write_deadline_below_max_pending() {
    // Far less than max_pending is sent, so only the stall deadline can cut it.
    let b = broker(&["--max-pending", "1GB", "--write-deadline", "1s"]);
    slow_consumer_run(&b, 40_000, 512);
}

#[test]
fn stopped_subscriber_is_cut_with_shared_payloads_too() {
    // Every payload shared by reference (no copy into per-subscriber batches): the other
    // write path, with header and payload queued as separate `Bytes`.
    let b = broker(&[
        "--max-pending",
        "1MB",
        "--write-deadline",
        "600s",
        "--copy-below",
        "0",
    ]);
    slow_consumer_run(&b, 40_000, 512);
}

// ------------------------------------------------------------------ a real client library

async fn nats(addr: SocketAddr) -> async_nats::Client {
    async_nats::connect(format!("nats://{addr}"))
        .await
        .expect("async-nats connects (CONNECT, PING, PONG)")
}

/// Receive up to `n` messages, waiting at most `d` in all.
async fn take(sub: &mut async_nats::Subscriber, n: usize, d: Duration) -> Vec<async_nats::Message> {
    let mut out = Vec::new();
    let end = tokio::time::Instant::now() + d;
    while out.len() < n {
        match tokio::time::timeout_at(end, sub.next()).await {
            Ok(Some(m)) => out.push(m),
            _ => break,
        }
    }
    out
}

#[tokio::test]
async fn nats_client_pub_sub_and_wildcards() {
    let b = broker(&[]);
    let c = nats(b.addr).await;
    assert_eq!(c.server_info().version, "2.10.0");
    assert!(c.server_info().headers);
    let mut exact = c.subscribe("foo.bar").await.unwrap();
    let mut star = c.subscribe("foo.*").await.unwrap();
    let mut gt = c.subscribe("foo.>").await.unwrap();
    let p = nats(b.addr).await;
    for s in ["foo.bar", "foo.baz", "foo.bar.baz", "other"] {
        p.publish(s, Bytes::from(s)).await.unwrap();
    }
    p.flush().await.unwrap();
    let subjects = |ms: Vec<async_nats::Message>| -> Vec<String> {
        ms.into_iter().map(|m| m.subject.to_string()).collect()
    };
    // Wait for the widest one first: by then the others had their time too.
    assert_eq!(
        subjects(take(&mut gt, 3, SLOW).await),
        ["foo.bar", "foo.baz", "foo.bar.baz"]
    );
    assert_eq!(
        subjects(take(&mut star, 3, Duration::from_millis(300)).await),
        ["foo.bar", "foo.baz"]
    );
    assert_eq!(
        subjects(take(&mut exact, 3, Duration::from_millis(300)).await),
        ["foo.bar"]
    );
}

#[tokio::test]
async fn nats_client_queue_group_gives_each_message_to_one_member() {
    let b = broker(&[]);
    let c = nats(b.addr).await;
    let mut members = Vec::new();
    for _ in 0..3 {
        members.push(c.queue_subscribe("work", "q".into()).await.unwrap());
    }
    let mut plain = c.subscribe("work").await.unwrap();
    let p = nats(b.addr).await;
    c.flush().await.unwrap();
    let n = 60;
    for i in 0..n {
        p.publish("work", Bytes::from(i.to_string())).await.unwrap();
    }
    p.flush().await.unwrap();
    assert_eq!(
        take(&mut plain, n, SLOW).await.len(),
        n,
        "plain subscriber gets all"
    );
    let mut counts = Vec::new();
    let mut seen = Vec::new();
    for m in members.iter_mut() {
        let got = take(m, n, Duration::from_millis(500)).await;
        counts.push(got.len());
        seen.extend(
            got.into_iter()
                .map(|m| String::from_utf8(m.payload.to_vec()).unwrap()),
        );
    }
    seen.sort_by_key(|s| s.parse::<usize>().unwrap());
    let want: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    assert_eq!(
        seen, want,
        "each message to exactly one member ({counts:?})"
    );
    assert!(
        counts.iter().filter(|&&c| c > 0).count() >= 2,
        "spread over members: {counts:?}"
    );
}

#[tokio::test]
async fn nats_client_request_reply_and_no_responders() {
    let b = broker(&[]);
    let server = nats(b.addr).await;
    let mut svc = server.subscribe("svc.echo").await.unwrap();
    server.flush().await.unwrap();
    let responder = tokio::spawn(async move {
        while let Some(m) = svc.next().await {
            let mut body = b"echo:".to_vec();
            body.extend_from_slice(&m.payload);
            server.publish(m.reply.unwrap(), body.into()).await.unwrap();
        }
    });
    let c = nats(b.addr).await;
    for i in 0..20 {
        let r = c
            .request("svc.echo", Bytes::from(format!("{i}")))
            .await
            .unwrap();
        assert_eq!(r.payload, Bytes::from(format!("echo:{i}")));
    }
    let err = c
        .request("nobody.home", Bytes::from_static(b"?"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), async_nats::RequestErrorKind::NoResponders);
    responder.abort();
}

#[tokio::test]
async fn nats_client_unsubscribe_after_max() {
    let b = broker(&[]);
    let c = nats(b.addr).await;
    let mut sub = c.subscribe("limited").await.unwrap();
    sub.unsubscribe_after(3).await.unwrap();
    c.flush().await.unwrap();
    for i in 0..5 {
        c.publish("limited", Bytes::from(i.to_string()))
            .await
            .unwrap();
    }
    c.flush().await.unwrap();
    let got = take(&mut sub, 5, Duration::from_secs(2)).await;
    let got: Vec<_> = got.iter().map(|m| m.payload.clone()).collect();
    assert_eq!(got, ["0", "1", "2"]);
}

#[tokio::test]
async fn nats_client_headers() {
    let b = broker(&[]);
    let c = nats(b.addr).await;
    let mut sub = c.subscribe("h").await.unwrap();
    c.flush().await.unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("X-Trace", "abc-123");
    c.publish_with_headers("h", headers, Bytes::from_static(b"body"))
        .await
        .unwrap();
    c.flush().await.unwrap();
    let m = take(&mut sub, 1, SLOW)
        .await
        .pop()
        .expect("a message with headers");
    assert_eq!(m.payload, Bytes::from_static(b"body"));
    let h = m.headers.expect("headers delivered");
    assert_eq!(h.get("X-Trace").map(|v| v.as_str()), Some("abc-123"));
}

#[tokio::test]
async fn nats_client_payload_at_and_over_max_payload() {
    let b = broker(&["--max-payload", "4096"]);
    let c = nats(b.addr).await;
    assert_eq!(c.server_info().max_payload, 4096);
    let mut sub = c.subscribe("big").await.unwrap();
    c.flush().await.unwrap();
    let body = Bytes::from(vec![7u8; 4096]);
    c.publish("big", body.clone()).await.unwrap();
    c.flush().await.unwrap();
    assert_eq!(take(&mut sub, 1, SLOW).await.pop().unwrap().payload, body);
    // Over the maximum the client refuses, from the INFO it got (the broker refuses too:
    // raw_payload_over_max_payload_gets_err_and_close).
    let err = c
        .publish("big", Bytes::from(vec![7u8; 4097]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), async_nats::PublishErrorKind::MaxPayloadExceeded);
}

// ------------------------------------------------------------------ parser fuzz

/// Everything the parser makes of `input` fed in pieces cut at `cuts`: the operations,
/// then the error, if any.
fn parse_pieces(
    input: &[u8],
    cuts: &[usize],
    max_payload: usize,
) -> (Vec<parser::Op>, Option<parser::ParseError>) {
    let mut p = parser::Parser::new(max_payload);
    let mut ops = Vec::new();
    let mut at = 0;
    let mut cuts = cuts.iter().copied();
    while at < input.len() {
        let n = cuts
            .next()
            .unwrap_or(input.len())
            .clamp(1, input.len() - at);
        p.push(Bytes::copy_from_slice(&input[at..at + n]));
        at += n;
        loop {
            match p.next() {
                Ok(Some(op)) => ops.push(op),
                Ok(None) => break,
                Err(e) => return (ops, Some(e)),
            }
        }
    }
    (ops, None)
}

fn token() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z]{1,6}", Just("*".to_string()), Just(">".to_string())]
}

fn subject() -> impl Strategy<Value = String> {
    proptest::collection::vec("[a-zA-Z0-9_]{1,8}", 1..4).prop_map(|t| t.join("."))
}

/// One valid operation on the wire, with the case of its name scrambled.
fn wire_op() -> impl Strategy<Value = Vec<u8>> {
    let payload = proptest::collection::vec(any::<u8>(), 0..200);
    prop_oneof![
        (subject(), proptest::option::of(subject()), payload.clone()).prop_map(|(s, r, p)| {
            let mut w = match r {
                Some(r) => format!("PUB {s} {r} {}\r\n", p.len()),
                None => format!("pub {s} {}\r\n", p.len()),
            }
            .into_bytes();
            w.extend_from_slice(&p);
            w.extend_from_slice(b"\r\n");
            w
        }),
        (subject(), payload.clone(), payload).prop_map(|(s, h, p)| {
            let mut w = format!("HPub {s} {} {}\r\n", h.len(), h.len() + p.len()).into_bytes();
            w.extend_from_slice(&h);
            w.extend_from_slice(&p);
            w.extend_from_slice(b"\r\n");
            w
        }),
        (
            proptest::collection::vec(token(), 1..4),
            proptest::option::of("[a-z]{1,5}"),
            0u32..1000
        )
            .prop_map(|(t, q, sid)| match q {
                Some(q) => format!("SUB\t{} {q} {sid}\r\n", t.join(".")).into_bytes(),
                None => format!("sub {}  {sid}\r\n", t.join(".")).into_bytes(),
            }),
        (0u32..1000, proptest::option::of(0u64..100)).prop_map(|(sid, m)| match m {
            Some(m) => format!("UNSUB {sid} {m}\r\n").into_bytes(),
            None => format!("unsub {sid}\n").into_bytes(),
        }),
        Just(b"PING\r\n".to_vec()),
        Just(b"pong\r\n".to_vec()),
        Just(b"CONNECT {\"verbose\":false,\"name\":\"x y\"}\r\n".to_vec()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn valid_streams_parse_the_same_however_split(
        ops in proptest::collection::vec(wire_op(), 0..30),
        cuts in proptest::collection::vec(1usize..64, 0..200),
        bytewise in any::<bool>(),
    ) {
        let wire: Vec<u8> = ops.concat();
        let (whole, err) = parse_pieces(&wire, &[], 1 << 20);
        prop_assert_eq!(err, None);
        prop_assert_eq!(whole.len(), ops.len());
        let cuts = if bytewise { vec![1; wire.len()] } else { cuts };
        let (split, err) = parse_pieces(&wire, &cuts, 1 << 20);
        prop_assert_eq!(err, None);
        prop_assert_eq!(split, whole);
    }

    #[test]
    fn random_bytes_never_panic_and_split_makes_no_difference(
        prefix in proptest::collection::vec(wire_op(), 0..4),
        junk in proptest::collection::vec(any::<u8>(), 0..600),
        cuts in proptest::collection::vec(1usize..40, 0..100),
        max_payload in 0usize..300,
    ) {
        let mut input = prefix.concat();
        input.extend_from_slice(&junk);
        let whole = parse_pieces(&input, &[], max_payload);
        let split = parse_pieces(&input, &cuts, max_payload);
        prop_assert_eq!(split, whole);
    }

    #[test]
    fn mutated_valid_streams_never_panic(
        ops in proptest::collection::vec(wire_op(), 1..10),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..5),
        cuts in proptest::collection::vec(1usize..40, 0..100),
    ) {
        let mut input = ops.concat();
        for (i, b) in flips {
            let at = i.index(input.len());
            input[at] = b;
        }
        let whole = parse_pieces(&input, &[], 1 << 20);
        let split = parse_pieces(&input, &cuts, 1 << 20);
        prop_assert_eq!(split, whole);
    }
}
