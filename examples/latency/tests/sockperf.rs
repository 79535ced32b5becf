//! sockperf's TCP message format (`examples/common/sockperf.rs`) and interop both ways:
//! sockperf's own client measures the echo example in sockperf mode, and the latency
//! client measures `sockperf server`. sockperf must be installed (`.ci/run` installs it):
//! without it these tests fail under CI and skip loudly elsewhere.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::{run_latency, sockperf_or_skip, start_echo};
use heartloop::ProtocolError;
use heartloop::codec::Decoder;
use heartloop_latency::sockperf::{self, Header, SockperfDecoder};
use heartloop_latency::sockperf_report;

fn message(seq: u64, flags: u16, payload: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    Header {
        seq,
        flags,
        len: (sockperf::HEADER_LEN + payload.len()) as u32,
    }
    .put(&mut b);
    b.extend_from_slice(payload);
    b.to_vec()
}

#[test]
fn decoder_cuts_whole_messages_however_the_bytes_arrive() {
    // Bytes as captured from sockperf 3.7's ping-pong client: seq 1, flags 3, 64 bytes.
    let first = message(1, 3, &[0x96; 50]);
    assert_eq!(&first[..14], &[0, 0, 0, 0, 0, 0, 0, 1, 0, 3, 0, 0, 0, 64]);
    let stream = [first.clone(), message(2, 3, b""), message(3, 3, &[7; 100])].concat();
    for step in [1, 5, 13, 14, 15, 64, 1000] {
        let mut d = SockperfDecoder;
        let mut buf = BytesMut::new();
        let mut got: Vec<Bytes> = Vec::new();
        for chunk in stream.chunks(step) {
            buf.extend_from_slice(chunk);
            while let Some(m) = d.decode(&mut buf).unwrap() {
                got.push(m);
            }
        }
        let seqs: Vec<u64> = got.iter().map(|m| Header::parse(m).unwrap().seq).collect();
        assert_eq!(seqs, [1, 2, 3], "chunks of {step}");
        assert_eq!(got[0][..], first[..]);
        assert!(buf.is_empty());
    }
}

#[test]
fn decoder_refuses_lengths_sockperf_cannot_mean() {
    let mut short = BytesMut::from(&message(1, 3, b"")[..]);
    short[13] = 13; // shorter than the header
    assert!(matches!(
        SockperfDecoder.decode(&mut short),
        Err(ProtocolError::Other(_))
    ));
    let mut long = BytesMut::from(&message(1, 3, b"")[..]);
    long[10..14].copy_from_slice(&(sockperf::MAX_MESSAGE as u32 + 1).to_be_bytes());
    assert!(matches!(
        SockperfDecoder.decode(&mut long),
        Err(ProtocolError::FrameTooLarge { .. })
    ));
}

#[test]
fn replies_as_sockperf_server_does() {
    // Checked against sockperf 3.7's server: a client's pong request comes back with the
    // client flag cleared; no pong request, a warm-up or a server's message: no answer.
    let req = message(9, 3, b"abc");
    let reply = sockperf::reply(&req).unwrap();
    assert_eq!(reply[..], message(9, 2, b"abc")[..]);
    for flags in [1, 7, 2, 0] {
        assert_eq!(
            sockperf::reply(&message(9, flags, b"abc")),
            None,
            "flags {flags}"
        );
    }
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[test]
fn sockperf_client_measures_the_echo_example_in_sockperf_mode() {
    let Some(sockperf) = sockperf_or_skip("sockperf_client_measures_the_echo_example") else {
        return;
    };
    let (_echo, addr) = start_echo(&["--protocol", "sockperf"]);
    let out = Command::new(sockperf)
        .args([
            "ping-pong",
            "--tcp",
            "-i",
            "127.0.0.1",
            "-m",
            "64",
            "-t",
            "1",
        ])
        .args(["-p", &addr.port().to_string()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "sockperf failed:\n{text}");
    let r = sockperf_report::parse(&text).unwrap_or_else(|| panic!("no report:\n{text}"));
    assert!(
        r.observations > 100,
        "{} observations:\n{text}",
        r.observations
    );
    assert!(r.clean(), "sockperf counted errors:\n{text}");
    assert!(r.at(50.0).is_some() && r.at(99.0).is_some(), "{text}");
}

/// `sockperf server` on a free port, killed on drop.
struct SockperfServer(std::process::Child);

impl Drop for SockperfServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn latency_client_measures_sockperf_server() {
    let Some(sockperf) = sockperf_or_skip("latency_client_measures_sockperf_server") else {
        return;
    };
    let addr = free_addr();
    let _server = SockperfServer(
        Command::new(sockperf)
            .args([
                "server",
                "--tcp",
                "-i",
                "127.0.0.1",
                "-p",
                &addr.port().to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let end = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < end,
            "sockperf server does not listen on {addr}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for mode in ["open", "closed"] {
        let (summary, text) = run_latency(&[
            "--addr",
            &addr.to_string(),
            "--protocol",
            "sockperf",
            "--mode",
            mode,
            "--rate",
            "2000",
            "--duration",
            "1s",
            "--warmup",
            "200ms",
            "--size",
            "100",
        ]);
        assert!(
            summary.get("count") >= 100.0,
            "{mode}: few replies:\n{text}"
        );
    }
}
