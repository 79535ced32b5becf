//! The examples' command lines, parsed one way (lexopt, `examples/common/opts.rs`): `--help`
//! lists every option the example accepts and exits 0; an unknown option or a bad value
//! says what was wrong and exits 2. Also the examples' small logger (`RUST_LOG`).

mod util;

#[path = "../examples/common/logger.rs"]
mod logger;

use std::process::{Command, Output, Stdio};

use log::LevelFilter;
use logger::Logger;
use util::example_bin;

/// Every example of this package (the broker's are checked in its own tests).
/// (The latency client, `examples/latency`, is a crate of its own with its own tests.)
const EXAMPLES: [&str; 8] = [
    "echo",
    "peer",
    "hbpeer",
    "soakclient",
    "attacker",
    "embed_hosted",
    "embed_nested",
    "experiments",
];

fn run(example: &str, args: &[&str]) -> Output {
    Command::new(example_bin(example))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {example}: {e}"))
}

#[test]
fn help_lists_every_option_and_exits_0() {
    for example in EXAMPLES {
        // The embedding examples share their command line (`common/embed_opts.rs`).
        let file = match example {
            "embed_hosted" | "embed_nested" => "common/embed_opts",
            other => other,
        };
        let source = format!("{}/../examples/{file}.rs", env!("CARGO_MANIFEST_DIR"));
        util::assert_help_lists_every_option(example, &example_bin(example), &source);
    }
}

#[test]
fn unknown_option_is_named_and_exits_2() {
    for example in EXAMPLES {
        util::assert_rejects_unknown_option(example, &example_bin(example));
    }
}

#[test]
fn bad_values_say_what_is_wrong_and_exit_2() {
    let cases: [(&str, &[&str], &str); 7] = [
        ("echo", &["--protocol", "http"], "echo or sockperf"),
        ("echo", &["--heartbeat", "5"], "needs a unit"),
        ("echo", &["--max-queued", "4 parsecs"], "unknown unit"),
        ("echo", &["--addr"], "missing argument for option '--addr'"),
        ("peer", &["127.0.0.1:7000", "dance"], "unknown mode 'dance'"),
        (
            "hbpeer",
            &["listen", "127.0.0.1:0", "--interval", "1s"],
            "go together",
        ),
        ("soakclient", &["127.0.0.1:7000"], "needs ADDR and N"),
    ];
    for (example, args, says) in cases {
        let out = run(example, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{example} {args:?}: {out:?}");
        assert!(
            err.contains(says),
            "{example} {args:?}: {err:?} lacks {says:?}"
        );
    }
}

#[test]
fn typed_durations_and_sizes_are_accepted() {
    // The typed forms parse (the run then ends at once: `--help` comes after them).
    let cases: [(&str, &[&str]); 3] = [
        (
            "echo",
            &[
                "--heartbeat",
                "250ms",
                "--max-queued",
                "64KB",
                "--stats",
                "1m30s",
            ],
        ),
        (
            "hbpeer",
            &[
                "--interval",
                "200ms",
                "--timeout",
                "1s",
                "--seq-every",
                "20ms",
            ],
        ),
        (
            "attacker",
            &["--duration", "2s", "--ping-rate", "2MiB", "--secs", "2.5"],
        ),
    ];
    for (example, args) in cases {
        let mut all = args.to_vec();
        all.push("--help");
        let out = run(example, &all);
        assert_eq!(out.status.code(), Some(0), "{example} {args:?}: {out:?}");
    }
}

#[test]
fn rust_log_levels_and_prefixes() {
    let l = Logger::parse("warn");
    assert_eq!(l.level_for("echo"), LevelFilter::Warn);
    assert_eq!(l.max(), LevelFilter::Warn);

    let l = Logger::parse("info,heartloop=debug,heartloop::reactor=trace");
    assert_eq!(l.level_for("echo"), LevelFilter::Info);
    assert_eq!(l.level_for("heartloop::codec"), LevelFilter::Debug);
    // The longest matching prefix wins, whatever the order of the directives.
    assert_eq!(
        l.level_for("heartloop::reactor::accept"),
        LevelFilter::Trace
    );
    assert_eq!(l.max(), LevelFilter::Trace);

    // A bare module name turns everything from it on; nothing else changes.
    let l = Logger::parse("broker");
    assert_eq!(l.level_for("broker::server"), LevelFilter::Trace);
    assert_eq!(l.level_for("heartloop"), LevelFilter::Error);

    // Empty means errors only; a directive with a bad level is ignored.
    assert_eq!(Logger::parse("").level_for("x"), LevelFilter::Error);
    assert_eq!(Logger::parse("off").max(), LevelFilter::Off);
    assert_eq!(
        Logger::parse("x=loud,warn").level_for("x"),
        LevelFilter::Warn
    );
}

#[test]
fn echo_logs_through_the_logger_at_the_level_asked() {
    use std::io::{Read, Write};
    use std::time::Duration;
    for (level, connect_lines) in [("info", 1), ("warn", 0)] {
        let mut cmd = Command::new(example_bin("echo"));
        cmd.args(["--addr", "127.0.0.1:0"]).env("RUST_LOG", level);
        let mut echo = util::Proc::from_command_with_stderr_lines(cmd);
        let addr: std::net::SocketAddr = echo
            .wait_line_containing("echo listening on", Duration::from_secs(30))
            .expect("echo did not start")
            .parse()
            .unwrap();
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.write_all(b"ping").unwrap();
        let mut back = [0u8; 4];
        c.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"ping");
        // The connect line, if any, was written before the echo was sent. Kill the echo and
        // collect its output to the end (no line contains a newline: this waits for EOF).
        echo.kill();
        assert!(
            echo.wait_line_containing("\n", Duration::from_secs(10))
                .is_none()
        );
        let connects = echo
            .seen
            .iter()
            .filter(|l| l.starts_with("INFO  echo: ") && l.contains(" connected from "))
            .count();
        assert_eq!(connects, connect_lines, "RUST_LOG={level}: {:?}", echo.seen);
    }
}

#[test]
fn peer_stdio_talks_to_echo_as_the_readme_says() {
    use std::io::Write;
    use std::time::Duration;
    let mut cmd = Command::new(example_bin("echo"));
    cmd.args(["--addr", "127.0.0.1:0"]);
    let mut echo = util::Proc::from_command_with_stderr_lines(cmd);
    let addr = echo
        .wait_line_containing("echo listening on", Duration::from_secs(30))
        .expect("echo did not start");
    let mut peer = Command::new(example_bin("peer"))
        .args([addr.as_str(), "stdio"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn peer");
    // Typed lines, then end of input (Ctrl-D): the echo sends them back and closes.
    let mut stdin = peer.stdin.take().unwrap();
    stdin.write_all(b"hello\nworld\n").unwrap();
    drop(stdin);
    let out = peer.wait_with_output().expect("peer");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(text.starts_with("READY 127.0.0.1:"), "{text:?}");
    assert!(text.ends_with("\nhello\nworld\n"), "{text:?}");
}
