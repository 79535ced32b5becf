//! A connect storm past `max_connections` logs one summary line a second, not one line per
//! peer turned away (a flood of warnings is itself a denial of service on the log).

use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use heartloop::{ConnConfig, Reactor, ReactorConfig};

static WARNINGS: AtomicUsize = AtomicUsize::new(0);

struct Counter;

impl log::Log for Counter {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, r: &log::Record) {
        if r.level() <= log::Level::Warn && r.target().starts_with("heartloop") {
            WARNINGS.fetch_add(1, Ordering::Relaxed);
        }
    }
    fn flush(&self) {}
}

#[test]
fn a_connect_storm_at_max_connections_logs_a_summary_not_a_line_per_peer() {
    log::set_logger(&Counter).unwrap();
    log::set_max_level(log::LevelFilter::Warn);
    let mut r = Reactor::new(ReactorConfig::default().max_connections(1)).unwrap();
    let l = r
        .listen("127.0.0.1:0".parse().unwrap(), ConnConfig::default())
        .unwrap();
    let addr = r.local_addr(l).unwrap();
    let clients: Vec<TcpStream> = (0..200)
        .filter_map(|_| TcpStream::connect(addr).ok())
        .collect();
    let mut events = Vec::new();
    let end = Instant::now() + Duration::from_secs(10);
    while r.stats().accepted + r.stats().rejected < clients.len() as u64 {
        assert!(Instant::now() < end, "{:?}", r.stats());
        r.poll(&mut events, Some(Duration::from_millis(10)))
            .unwrap();
    }
    let rejected = r.stats().rejected;
    let warnings = WARNINGS.load(Ordering::Relaxed);
    eprintln!("{rejected} turned away, {warnings} warning line(s)");
    assert!(
        rejected >= 150,
        "the storm did not reach the limit: {rejected}"
    );
    // One line a second at most; the storm takes well under 10 s.
    assert!(
        warnings <= 11,
        "{warnings} warnings for {rejected} rejections"
    );
}
