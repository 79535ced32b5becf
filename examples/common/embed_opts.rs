//! The command line of the embedding examples (`embed_hosted`, `embed_nested`): where to
//! listen and for how long (included with `#[path = "common/embed_opts.rs"] mod
//! embed_opts;`, beside `common/opts.rs` as `opts`).

use std::net::SocketAddr;
use std::time::Duration;

use crate::opts;

/// `--addr` (default 127.0.0.1:`port`) and `--duration` (default 10 s); `--help` prints
/// `help` and exits 0, anything else is an error for [`opts::exit_usage`].
pub fn parse(help: &str, port: u16) -> Result<(SocketAddr, Duration), lexopt::Error> {
    use lexopt::prelude::*;
    let mut addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut duration = Duration::from_secs(10);
    let mut p = lexopt::Parser::from_env();
    while let Some(arg) = p.next()? {
        match arg {
            Long("addr") => addr = p.value()?.parse()?,
            Long("duration") => duration = p.value()?.parse_with(opts::parse_duration)?,
            Short('h') | Long("help") => opts::exit_help(help),
            _ => return Err(arg.unexpected()),
        }
    }
    Ok((addr, duration))
}
