//! Open loop against an echo server that stalls: the coordinated-omission correction shows
//! the stall in the percentiles, the uncorrected round trips hide it (one sample), and
//! without a stall the two agree. Real processes, real sockets, SIGSTOP: the assertions
//! are properties with wide margins, not timings of this machine.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Proc, Summary, start_echo};

/// 2 s measured at 1,000 messages/s, one connection, one message in flight (as wrk2: a
/// message due while the previous one is unanswered waits for it).
const ARGS: [&str; 8] = [
    "--rate",
    "1000",
    "--duration",
    "2s",
    "--warmup",
    "300ms",
    "--drain",
    "10s",
];

/// Run the client against `addr`; `during` is called once it starts measuring.
fn measure(addr: &str, during: impl FnOnce()) -> Summary {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_latency"));
    cmd.args(["--addr", addr]).args(ARGS);
    let mut client = Proc::from_command_with_stderr_lines(cmd);
    client
        .wait_line_containing("latency: measuring", Duration::from_secs(30))
        .expect("the client starts measuring");
    during();
    let line = client
        .wait_line_containing("summary: ", Duration::from_secs(60))
        .unwrap_or_else(|| panic!("no summary; saw {:?}", client.seen));
    let status = client.child.wait().expect("wait for the client");
    assert!(status.success(), "client failed: {:?}", client.seen);
    common::parse_summary(&line)
}

#[test]
fn corrected_percentiles_show_a_stall_that_uncorrected_ones_hide() {
    let (echo, addr) = start_echo(&[]);
    let addr = addr.to_string();

    // No stall: corrected and uncorrected agree (a busy machine delays some sends, which
    // only the corrected figures count, so "agree" is within 50 ms).
    let calm = measure(&addr, || {});
    let (c99, u99) = (calm.get("corrected_p99_us"), calm.get("uncorrected_p99_us"));
    eprintln!("no stall: corrected p99 {c99} µs, uncorrected p99 {u99} µs");
    assert_eq!(
        calm.get("count"),
        2000.0,
        "every message of the measured 2 s"
    );
    assert!(
        c99 >= u99,
        "corrected counts from the intended time: {c99} < {u99}"
    );
    assert!(c99 < 100_000.0, "no stall, yet corrected p99 is {c99} µs");
    assert!(
        c99 - u99 < 50_000.0,
        "corrected {c99} µs vs uncorrected {u99} µs"
    );

    // The server stops for 200 ms, 0.8 s into the measured 2 s: ~200 messages come due
    // while it is stopped, and wait up to 200 ms each; only the one in flight sees the
    // stall from its actual send.
    let stalled = measure(&addr, || {
        std::thread::sleep(Duration::from_millis(800));
        echo.signal("STOP");
        std::thread::sleep(Duration::from_millis(200));
        echo.signal("CONT");
    });
    let (c99, u99) = (
        stalled.get("corrected_p99_us"),
        stalled.get("uncorrected_p99_us"),
    );
    let umax = stalled.get("uncorrected_max_us");
    eprintln!("200 ms stall: corrected p99 {c99} µs, uncorrected p99 {u99} µs (max {umax} µs)");
    assert_eq!(stalled.get("count"), 2000.0, "every message, late or not");
    assert!(
        c99 >= 100_000.0,
        "the stall is missing from corrected p99: {c99} µs"
    );
    assert!(u99 < 100_000.0, "uncorrected p99 shows the stall: {u99} µs");
    assert!(
        umax >= 150_000.0,
        "the message in flight saw the stall: max {umax} µs"
    );
}
