//! What the latency client's tests share: the repository's test helpers (spawning
//! examples, reading their lines), the echo example started on a free port, and the
//! client binary run to its end.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

#[path = "../../../../tests/util/mod.rs"]
pub mod util;

pub use util::{Proc, example_bin};

/// The echo example on 127.0.0.1, a free port; its address.
pub fn start_echo(args: &[&str]) -> (Proc, SocketAddr) {
    let mut cmd = Command::new(example_bin("echo"));
    cmd.args(["--addr", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "warn");
    let mut echo = Proc::from_command_with_stderr_lines(cmd);
    let addr = echo
        .wait_line_containing("echo listening on", Duration::from_secs(60))
        .expect("echo prints its address")
        .parse()
        .expect("an address");
    (echo, addr)
}

/// The latency client's `summary:` line as (key, value) pairs.
pub struct Summary(Vec<(String, f64)>);

impl Summary {
    #[track_caller]
    pub fn get(&self, key: &str) -> f64 {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .unwrap_or_else(|| panic!("no {key} in the summary"))
            .1
    }
}

/// Run the latency client with `args` to its end; panics unless it succeeded. Returns its
/// summary and all its output.
#[track_caller]
pub fn run_latency(args: &[&str]) -> (Summary, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_latency"))
        .args(args)
        .output()
        .expect("run the latency client");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "latency {args:?} failed:\n{text}");
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("summary: "))
        .unwrap_or_else(|| panic!("no summary line:\n{text}"));
    (parse_summary(line), text)
}

/// `key=value key=value ...` (the summary line after `summary: `).
pub fn parse_summary(line: &str) -> Summary {
    Summary(
        line.split_whitespace()
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect(),
    )
}

/// sockperf's path, or why there is none: missing fails the test under CI (which installs
/// it), and otherwise skips it loudly.
pub fn sockperf_or_skip(test: &str) -> Option<&'static str> {
    let found = Command::new("sockperf")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success() || !o.stdout.is_empty());
    if found {
        return Some("sockperf");
    }
    let why = "sockperf is not installed (apt-get install -y sockperf)";
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: {why}; CI installs it in .ci/run");
    }
    eprintln!("SKIPPED: {test}: {why}");
    None
}
