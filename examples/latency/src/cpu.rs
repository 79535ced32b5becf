//! CPU time: this process's (the client's own cost per round trip) and that of children
//! already waited for (a client run by `pairings`, sockperf's or ours, measured alike).

use std::time::Duration;

/// CPU time (user + system) this process has used, all threads (`CLOCK_PROCESS_CPUTIME_ID`:
/// exact, where `getrusage` advances by scheduler ticks on some kernels).
pub fn process() -> Duration {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// CPU time (user + system) of all children of this process that have ended and been waited
/// for (`getrusage(RUSAGE_CHILDREN)`). The difference around one child's wait is that
/// child's CPU, when no other child is reaped in between.
pub fn children() -> Duration {
    // SAFETY: getrusage only writes into the zeroed struct we own.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}
