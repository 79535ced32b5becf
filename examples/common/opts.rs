//! Option values as people type them, shared by the examples and tools (included with
//! `#[path = "../common/opts.rs"] mod opts;` or `#[path = "common/opts.rs"]`).
//!
//! * Durations: a number with a unit, several parts allowed: `250ms`, `1.5s`, `1m30s`,
//!   `2h`, `500us`, `100ns`. A bare number is refused (seconds or milliseconds? the
//!   option's help says which unit it wants, so the caller can append one).
//! * Sizes: a number with an optional binary unit: `4096`, `64k`, `64KB`, `64KiB`, `1.5M`,
//!   `64MB`, `2G`. K, M and G are powers of 1024 whether written `K`, `KB` or `KiB`, as in
//!   nats-server's and Redis's configuration files.
//!
//! Errors are sentences for the user (`"'5' needs a unit, e.g. 5s or 5ms"`); with lexopt,
//! `parser.value()?.parse_with(parse_duration)?` reports them as
//! `cannot parse argument "5": '5' needs a unit, e.g. 5s or 5ms`.
//!
//! Every example parses its command line with lexopt the same way: `--help` prints the
//! help to stdout and exits 0 ([`exit_help`]), anything wrong prints one line saying what
//! and exits 2 ([`exit_usage`]).
#![allow(dead_code)]

use std::time::Duration;

/// Parse a duration such as `250ms`, `1m30s` or `1.5s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let text = s.trim();
    if text.is_empty() {
        return Err("empty duration".into());
    }
    let mut rest = text;
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(format!(
                "'{text}' is not a duration (e.g. 250ms, 1.5s, 1m30s)"
            ));
        }
        let n: f64 = rest[..num_len]
            .parse()
            .map_err(|_| format!("'{text}': '{}' is not a number", &rest[..num_len]))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let secs = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            "" => return Err(format!("'{text}' needs a unit, e.g. {text}s or {text}ms")),
            u => {
                return Err(format!(
                    "'{text}': unknown unit '{u}' (ns, us, ms, s, m, h)"
                ));
            }
        };
        total += n * secs;
    }
    if !total.is_finite() || total > 1e9 {
        return Err(format!("'{text}' is too long a duration"));
    }
    Ok(Duration::from_secs_f64(total))
}

/// Print `help` to stdout and exit with status 0 (`--help`).
pub fn exit_help(help: &str) -> ! {
    print!("{help}");
    std::process::exit(0)
}

/// Print what was wrong with the command line to stderr, `PROGRAM: ERROR` and a pointer to
/// `--help`, and exit with status 2 (bad usage, as getopt programs do).
pub fn exit_usage(program: &str, error: impl std::fmt::Display) -> ! {
    eprintln!("{program}: {error}\n(`{program} --help` lists the options)");
    std::process::exit(2)
}

/// Parse a size in bytes such as `4096`, `64k`, `64MB` or `1.5GiB` (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let text = s.trim();
    let num_len = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(text.len());
    if num_len == 0 {
        return Err(format!("'{text}' is not a size (e.g. 4096, 64k, 64MB)"));
    }
    let digits: String = text[..num_len].chars().filter(|&c| c != '_').collect();
    let n: f64 = digits
        .parse()
        .map_err(|_| format!("'{text}': '{digits}' is not a number"))?;
    let mult: u64 = match text[num_len..].trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        u => return Err(format!("'{text}': unknown unit '{u}' (k, MB, GiB, ...)")),
    };
    let bytes = n * mult as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("'{text}' is too large"));
    }
    if bytes.fract() != 0.0 {
        return Err(format!("'{text}' is not a whole number of bytes"));
    }
    Ok(bytes as u64)
}

/// [`parse_size`] for a `usize` (a buffer or queue length).
pub fn parse_size_usize(s: &str) -> Result<usize, String> {
    usize::try_from(parse_size(s)?).map_err(|_| format!("'{}' is too large", s.trim()))
}

/// A small, fast, deterministic pseudo-random generator (xorshift64*) for load generators
/// and tests that want reproducible sequences without a dependency. Not for secrets.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (0 is replaced by a fixed odd constant).
    pub fn new(seed: u64) -> Rng {
        Rng(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n > 0`; the slight modulo bias is irrelevant here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}
