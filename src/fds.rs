//! Growing the process's file-descriptor table before threads start.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Grow the process's file-descriptor table to hold descriptors up to `n` now, so that
/// accepting connections later never has to grow it. Call it once at start-up, **before
/// spawning threads** (a reactor per core, a thread pool, a logger thread), with about
/// as many descriptors as the process will hold at its peak. Returns the number of
/// descriptor slots reached: `n`, or less when the process's `RLIMIT_NOFILE` (or the
/// system's) stops it first; it never fails for that.
///
/// Why: the kernel grows the table (doubling it) when a new descriptor does not fit.
/// In a process with more than one thread, Linux then waits for an RCU grace period
/// (`synchronize_rcu` in `expand_fdtable`) inside that `accept`, `socket` or `open`,
/// which took 10–23 ms on the 2-core machine this crate is measured on
/// (`ARCHITECTURE.md`, "What the kernel adds to a turn"): one such `accept` stalls the whole turn, and
/// a burst of new connections from 64 to 10,000 goes through eight doublings. The table
/// never shrinks, so growing it once, while the process is single-threaded (no grace
/// period to wait for), removes those stalls. It costs one `open` and `close` of
/// `/dev/null` per slot (about a millisecond per thousand) and 8 bytes of kernel memory
/// per slot.
///
/// ```
/// // Before the reactor threads start: room for ~10,000 connections.
/// let slots = heartloop::reserve_fds(10_000)?;
/// assert!(slots > 0);
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn reserve_fds(n: usize) -> io::Result<usize> {
    let mut held = Vec::new();
    let mut reached = 0usize;
    while reached < n {
        match File::open("/dev/null") {
            Ok(f) => {
                // The lowest free descriptor is handed out: the highest one opened so far
                // is where the table must reach.
                reached = reached.max(usize::try_from(f.as_raw_fd()).unwrap_or(0) + 1);
                held.push(f);
            }
            // At the process's or the system's limit: the table covers what it can.
            Err(e) if e.raw_os_error().is_some_and(is_fd_limit) => break,
            Err(e) => return Err(e),
        }
    }
    Ok(reached)
}

/// `EMFILE` (the process's limit) or `ENFILE` (the system's), on every Unix this crate
/// builds for.
fn is_fd_limit(errno: i32) -> bool {
    const ENFILE: i32 = 23;
    const EMFILE: i32 = 24;
    errno == EMFILE || errno == ENFILE
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// Slots in the process's descriptor table (`FDSize` of `/proc/self/status`).
    fn table_size() -> usize {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("FDSize:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("FDSize in /proc/self/status")
    }

    #[test]
    fn the_table_grows_to_cover_what_was_reserved() {
        // Other tests of this binary open descriptors meanwhile: ask for far more than
        // they ever hold, and for a size the table cannot have reached by itself.
        let want = (table_size() * 4).max(4096);
        let reached = reserve_fds(want).unwrap();
        let limit_bound = reached < want; // RLIMIT_NOFILE below `want` on this machine
        if limit_bound {
            eprintln!("reserve_fds: stopped at {reached} of {want} by RLIMIT_NOFILE");
        }
        assert!(reached > 0);
        assert!(
            table_size() >= reached,
            "FDSize {} < {reached} after reserve_fds({want})",
            table_size()
        );
        // Everything opened was closed again: a new descriptor is a low one.
        let f = File::open("/dev/null").unwrap();
        assert!((f.as_raw_fd() as usize) < reached);
    }

    #[test]
    fn zero_reserves_nothing() {
        assert_eq!(reserve_fds(0).unwrap(), 0);
    }
}
