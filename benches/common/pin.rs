//! Pinning threads and child processes to CPUs, for the benches: the one place that does it
//! (rustix's `sched_setaffinity`, so no `taskset` binary and no unsafe code). Included with
//! `#[path = "common/pin.rs"] mod pin;` (the broker's bench: `../../../benches/common/pin.rs`).
#![allow(dead_code)]

use std::io;
use std::process::{Child, Command};

use rustix::thread::{CpuSet, sched_setaffinity};

/// Pin the calling thread to `cpu`; threads it starts afterwards inherit the mask. Returns
/// whether it worked (it fails for a CPU the machine does not have, or one this process is
/// not allowed to use).
pub fn pin_thread(cpu: usize) -> bool {
    if cpu >= CpuSet::MAX_CPU {
        return false;
    }
    let mut set = CpuSet::new();
    set.set(cpu);
    sched_setaffinity(None, &set).is_ok()
}

/// Start `cmd` with all of the child's threads on `cpu`, as `taskset -c CPU cmd` does: a
/// short-lived thread pinned to `cpu` spawns it, and a child inherits the affinity of the
/// thread that started it (before it runs anything, so even threads it starts at once, as
/// Go's runtime does, stay on `cpu`).
pub fn spawn_pinned(cmd: &mut Command, cpu: usize) -> io::Result<Child> {
    std::thread::scope(|s| {
        s.spawn(|| {
            if !pin_thread(cpu) {
                return Err(io::Error::other(format!("cannot pin to CPU {cpu}")));
            }
            cmd.spawn()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("spawning thread panicked")))
    })
}
