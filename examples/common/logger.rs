//! A small logger for the examples: every `log` record at or above the level that
//! `RUST_LOG` asks for goes to stderr as one line, `LEVEL target: message`. Included with
//! `#[path = "common/logger.rs"] mod logger;` (the broker: `../../common/logger.rs`), then
//! `logger::init("info")` once at the start of `main`.
//!
//! `RUST_LOG` takes the common subset of env_logger's syntax: comma-separated directives,
//! each a level (`error`, `warn`, `info`, `debug`, `trace`, `off`) for every target, or
//! `PREFIX=LEVEL` for the targets (module paths) starting with `PREFIX`, the longest
//! matching prefix winning: `RUST_LOG=warn`, `RUST_LOG=info,heartloop=debug`. A directive
//! it does not understand is reported on stderr and ignored. No timestamps, colours or
//! regex filters: an example's output is read by people and tests, not archived.
#![allow(dead_code)]

use std::io::Write;

use log::{LevelFilter, Log, Metadata, Record};

/// Install the logger, with `default` (a `RUST_LOG` value) when `RUST_LOG` is unset.
/// Calling it twice keeps the first logger.
pub fn init(default: &str) {
    let spec = std::env::var("RUST_LOG").unwrap_or_else(|_| default.to_string());
    let logger = Logger::parse(&spec);
    let max = logger.max();
    // Leaked: the logger lives as long as the process (`log` wants a `&'static`).
    if log::set_logger(Box::leak(Box::new(logger))).is_ok() {
        log::set_max_level(max);
    }
}

/// The parsed `RUST_LOG`: a level for every target, and levels for target prefixes.
#[derive(Debug, Clone, PartialEq)]
pub struct Logger {
    default: LevelFilter,
    /// `(prefix, level)`, longest prefix first.
    prefixes: Vec<(String, LevelFilter)>,
}

impl Logger {
    /// Parse a `RUST_LOG` value (see the module docs). An empty value means `error`, as in
    /// env_logger.
    pub fn parse(spec: &str) -> Logger {
        let mut logger = Logger {
            default: LevelFilter::Error,
            prefixes: Vec::new(),
        };
        for directive in spec.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            let (prefix, level) = match directive.split_once('=') {
                Some((p, l)) => (Some(p.trim()), l.trim()),
                None => (None, directive),
            };
            match (prefix, level.parse::<LevelFilter>()) {
                (None, Ok(l)) => logger.default = l,
                (Some(p), Ok(l)) if !p.is_empty() => logger.prefixes.push((p.to_string(), l)),
                // A bare module name means "everything from it", as in env_logger.
                (None, Err(_)) => logger
                    .prefixes
                    .push((directive.to_string(), LevelFilter::Trace)),
                _ => eprintln!("RUST_LOG: ignoring '{directive}' (expected LEVEL or PREFIX=LEVEL)"),
            }
        }
        logger
            .prefixes
            .sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        logger
    }

    /// The level for records of `target`.
    pub fn level_for(&self, target: &str) -> LevelFilter {
        self.prefixes
            .iter()
            .find(|(p, _)| target.starts_with(p.as_str()))
            .map_or(self.default, |&(_, l)| l)
    }

    /// The most verbose level any target gets.
    pub fn max(&self) -> LevelFilter {
        self.prefixes
            .iter()
            .map(|&(_, l)| l)
            .fold(self.default, std::cmp::max)
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level_for(metadata.target())
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            // One write per line, so lines of different threads do not interleave.
            let line = format!(
                "{:<5} {}: {}\n",
                record.level(),
                record.target(),
                record.args()
            );
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}
