//! The option-value parsers shared by the examples and tools (examples/common/opts.rs).

#[path = "../examples/common/opts.rs"]
mod opts;

use opts::{Rng, parse_duration, parse_size};
use std::time::Duration;

#[test]
fn durations_as_people_type_them() {
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
    assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
    assert_eq!(parse_duration("500us"), Ok(Duration::from_micros(500)));
    assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
    assert_eq!(parse_duration(" 10ns "), Ok(Duration::from_nanos(10)));
    for bad in ["", "5", "ms", "5 parsecs", "1..5s", "1e99h", "-3s"] {
        assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
    }
    assert!(parse_duration("5").unwrap_err().contains("needs a unit"));
}

#[test]
fn sizes_as_people_type_them() {
    assert_eq!(parse_size("4096"), Ok(4096));
    assert_eq!(parse_size("64k"), Ok(64 << 10));
    assert_eq!(parse_size("64KB"), Ok(64 << 10));
    assert_eq!(parse_size("64KiB"), Ok(64 << 10));
    assert_eq!(parse_size("64MB"), Ok(64 << 20));
    assert_eq!(parse_size("1.5M"), Ok(3 << 19));
    assert_eq!(parse_size("2G"), Ok(2 << 30));
    assert_eq!(parse_size("1_000"), Ok(1000));
    for bad in ["", "MB", "12 parsecs", "0.3", "1e30G", "-1"] {
        assert!(parse_size(bad).is_err(), "{bad:?} was accepted");
    }
}

#[test]
fn rng_is_deterministic_and_spreads() {
    let (mut a, mut b) = (Rng::new(7), Rng::new(7));
    let xs: Vec<u64> = (0..100).map(|_| a.below(10)).collect();
    let ys: Vec<u64> = (0..100).map(|_| b.below(10)).collect();
    assert_eq!(xs, ys);
    // Every bucket is hit in 100 draws (a generator stuck on a value fails this).
    assert!((0..10).all(|v| xs.contains(&v)), "{xs:?}");
    assert_ne!(Rng::new(0).next_u64(), 0);
}
