//! Two network namespaces joined by a veth pair: a "two boxes and a cable" rig for tests and
//! experiments that need real network faults (cable pulled, every packet dropped).
//!
//! Not an example of its own: include it with
//! `#[path = "common/netns.rs"] mod netns;` (from `examples/`) or
//! `#[path = "../examples/common/netns.rs"] mod netns;` (from `tests/`). It uses std only.
//!
//! The recipe is the one in FAULTS.md: `ip netns add`, a veth pair `A <-> B` with
//! `10.200.N.1/24` in A and `10.200.N.2/24` in B, `lo` up in both. Processes run inside a
//! namespace through `ip netns exec NAME prog ...` (which `exec`s, so the child's pid is the
//! program's pid). The calling process itself stays in the root namespace and cannot reach
//! 10.200.N.x: run *both* ends of a connection as child processes inside the namespaces.
//!
//! Names are unique per run (`hl<pid>_<n>a`/`hl<pid>_<n>b`), so parallel tests and test binaries
//! do not collide. `Drop` kills whatever still runs inside the two namespaces (only processes
//! the caller started can be there) and deletes them, also while unwinding from a panic.
//! Namespaces left behind by a process that was SIGKILLed (its pid no longer alive) are removed
//! the first time a pair is made.
//!
//! Needs root (CAP_SYS_ADMIN + CAP_NET_ADMIN), `ip` (Debian `iproute2`) and, for
//! [`NetPair::drop_all`], `nft` (Debian `nftables`).
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, Once};

/// Pairs made by this process so far; gives each pair unique names and its own subnet octet.
static COUNTER: AtomicU32 = AtomicU32::new(0);
/// Stale-namespace sweep runs once per process.
static SWEEP: Once = Once::new();
/// Cached answer of [`skip_reason`].
static SKIP: Mutex<Option<Option<String>>> = Mutex::new(None);

/// Two network namespaces, A and B, joined by a veth pair (see the module docs).
#[derive(Debug)]
pub struct NetPair {
    ns_a: String,
    ns_b: String,
    dev_a: String,
    dev_b: String,
    subnet: u8,
}

impl NetPair {
    /// Creates both namespaces and the veth pair between them, all interfaces up.
    ///
    /// Returns `Err` with the reason (not root, no `ip` binary, ...) when that is not possible;
    /// anything half-made is removed again.
    pub fn new() -> Result<NetPair, String> {
        SWEEP.call_once(sweep_stale);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let pair = NetPair {
            ns_a: format!("hl{pid}_{n}a"),
            ns_b: format!("hl{pid}_{n}b"),
            // Interface names are limited to 15 bytes: "v" + 7-digit pid + "_" + n + side.
            dev_a: format!("v{pid}_{}a", n % 1000),
            dev_b: format!("v{pid}_{}b", n % 1000),
            subnet: (n % 250) as u8 + 1,
        };
        // Create A first; if that fails nothing exists yet and `pair` must not try to delete.
        ip(&["netns", "add", &pair.ns_a]).map_err(|e| {
            format!("cannot create a network namespace (need root and iproute2): {e}")
        })?;
        if let Err(e) = ip(&["netns", "add", &pair.ns_b]) {
            let _ = ip(&["netns", "del", &pair.ns_a]);
            return Err(format!("cannot create a second network namespace: {e}"));
        }
        // From here on `pair`'s Drop cleans up on every error path.
        let (a, b) = (pair.ns_a.as_str(), pair.ns_b.as_str());
        let (va, vb) = (pair.dev_a.as_str(), pair.dev_b.as_str());
        let addr_a = format!("{}/24", pair.addr_a());
        let addr_b = format!("{}/24", pair.addr_b());
        let steps: [&[&str]; 7] = [
            &[
                "link", "add", va, "netns", a, "type", "veth", "peer", "name", vb, "netns", b,
            ],
            &["-n", a, "addr", "add", &addr_a, "dev", va],
            &["-n", b, "addr", "add", &addr_b, "dev", vb],
            &["-n", a, "link", "set", va, "up"],
            &["-n", b, "link", "set", vb, "up"],
            &["-n", a, "link", "set", "lo", "up"],
            &["-n", b, "link", "set", "lo", "up"],
        ];
        for step in steps {
            ip(step).map_err(|e| format!("setting up the veth pair failed: {e}"))?;
        }
        Ok(pair)
    }

    /// Name of namespace A (for `ip netns exec`).
    pub fn name_a(&self) -> &str {
        &self.ns_a
    }

    /// Name of namespace B.
    pub fn name_b(&self) -> &str {
        &self.ns_b
    }

    /// A's address on the veth link, `10.200.N.1`.
    pub fn addr_a(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 200, self.subnet, 1))
    }

    /// B's address on the veth link, `10.200.N.2`.
    pub fn addr_b(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 200, self.subnet, 2))
    }

    /// Plugs the cable in (`up = true`) or pulls it (`false`): `ip link set` on A's end of
    /// the veth pair. Panics if `ip` fails.
    pub fn cable(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.ns_a, "link", "set", &self.dev_a, state])
            .unwrap_or_else(|e| panic!("cable({up}): {e}"));
    }

    /// Drops every IPv4 packet between A and B (`on = true`), in both directions, with an
    /// nftables table `inet cut` inside A; `on = false` deletes the table again. The link stays
    /// up. Panics if `nft` fails (see [`nft_skip_reason`]).
    pub fn drop_all(&self, on: bool) {
        // Idempotent: start from no table in either case.
        let _ = self.nft("delete table inet cut\n");
        if on {
            let b = self.addr_b();
            let script = format!(
                "table inet cut {{\n\
                 chain cin {{ type filter hook input priority 0; policy accept; \
                 ip saddr {b} drop; }}\n\
                 chain cout {{ type filter hook output priority 0; policy accept; \
                 ip daddr {b} drop; }}\n\
                 }}\n"
            );
            self.nft(&script)
                .unwrap_or_else(|e| panic!("drop_all(true): {e}"));
        }
    }

    /// Runs an nft script (`nft -f -`) inside namespace A.
    fn nft(&self, script: &str) -> Result<(), String> {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns_a, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run `ip netns exec .. nft`: {e}"))?;
        let written = child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(script.as_bytes());
        let out = child
            .wait_with_output()
            .map_err(|e| format!("waiting for nft: {e}"))?;
        written.map_err(|e| format!("writing the nft script: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "nft failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// A `Command` that runs `program` inside namespace A (`ip netns exec A program`); add
    /// arguments, stdio and environment to it as usual.
    pub fn command_in_a(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        command_in(&self.ns_a, program.as_ref())
    }

    /// A `Command` that runs `program` inside namespace B.
    pub fn command_in_b(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        command_in(&self.ns_b, program.as_ref())
    }

    /// Pids of the processes living in namespace A (`ip netns pids`).
    pub fn pids_a(&self) -> Vec<u32> {
        pids(&self.ns_a)
    }

    /// Pids of the processes living in namespace B.
    pub fn pids_b(&self) -> Vec<u32> {
        pids(&self.ns_b)
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        // Whatever still runs in our namespaces was started by us (the names are ours alone).
        for ns in [&self.ns_a, &self.ns_b] {
            for pid in pids(ns) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
            // Tolerates an already deleted namespace.
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// Why network namespaces cannot be used here, or `None` if they can. Tries to create (and
/// removes) a real pair the first time; the answer is cached for the process.
pub fn skip_reason() -> Option<String> {
    let mut cached = SKIP.lock().unwrap_or_else(|p| p.into_inner());
    cached.get_or_insert_with(|| NetPair::new().err()).clone()
}

/// Why `nft` (needed by [`NetPair::drop_all`]) cannot be used, or `None` if it can.
pub fn nft_skip_reason() -> Option<String> {
    match Command::new("nft")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => None,
        Ok(s) => Some(format!("`nft --version` failed: {s}")),
        Err(e) => Some(format!("no `nft` binary (install Debian `nftables`): {e}")),
    }
}

/// Makes a pair for test `what`, or says loudly why not: prints `SKIPPED: <what>: <reason>`
/// to stderr (see [`skipped`]) and returns `None`. When the environment variable `CI` is set
/// (to anything but `false`/`0`) a failure panics instead: CI runs as root and must run these.
pub fn pair_or_skip(what: &str) -> Option<NetPair> {
    match NetPair::new() {
        Ok(p) => Some(p),
        Err(reason) => {
            if in_ci() {
                panic!("{what}: network namespaces are required in CI but failed: {reason}");
            }
            skipped(what, &reason);
            None
        }
    }
}

/// Prints `SKIPPED: <what>: <reason>` straight to the process's stderr, so that the test
/// harness's output capture does not swallow it.
pub fn skipped(what: &str, reason: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED: {what}: {reason}");
}

/// Whether we run in CI (`CI` set and not `false`/`0`/empty).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false" | "FALSE"))
}

fn command_in(ns: &str, program: &std::ffi::OsStr) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(program);
    c
}

fn pids(ns: &str) -> Vec<u32> {
    match Command::new("ip")
        .args(["netns", "pids", ns])
        .stderr(Stdio::null())
        .output()
    {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Runs `ip ARGS`, returning its stderr as the error.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("cannot run `ip` (install iproute2): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Removes namespaces named `hl<pid>_<n>a|b` whose creating process is gone (a run that was
/// SIGKILLed could not run `Drop`).
fn sweep_stale() {
    let Ok(out) = Command::new("ip")
        .args(["netns", "list"])
        .stderr(Stdio::null())
        .output()
    else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix("hl") else {
            continue;
        };
        let Some((pid, tail)) = rest.split_once('_') else {
            continue;
        };
        let well_formed = !pid.is_empty()
            && pid.bytes().all(|b| b.is_ascii_digit())
            && tail.len() >= 2
            && tail[..tail.len() - 1].bytes().all(|b| b.is_ascii_digit())
            && (tail.ends_with('a') || tail.ends_with('b'));
        if well_formed && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            // Only the name is removed; processes possibly left inside are not ours to kill.
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// One network namespace joined to the *root* namespace (where the calling process runs) by a
/// veth pair: the caller can listen on [`RootLink::addr_root`] and processes inside the
/// namespace ([`RootLink::command_in`]) connect to it; [`RootLink::cable`] pulls the cable on
/// the namespace's end. For a server that is the test process itself and clients behind a link
/// that can fail.
///
/// The namespace is named like a [`NetPair`]'s B side (`hl<pid>_<n>b`), so the stale sweep
/// covers it; deleting a namespace destroys the veth pair with it, root end included. The
/// root end's /24 (`10.200.S.1`, the namespace end `10.200.S.2`) is one that no address in the
/// root namespace uses yet. `Drop` kills what runs inside and deletes the namespace.
#[derive(Debug)]
pub struct RootLink {
    ns: String,
    dev_root: String,
    dev_ns: String,
    subnet: u8,
}

impl RootLink {
    /// Creates the namespace and the veth pair to it, all interfaces up; `Err` with the reason
    /// when that is not possible (anything half-made is removed again).
    pub fn new() -> Result<RootLink, String> {
        SWEEP.call_once(sweep_stale);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let link = RootLink {
            ns: format!("hl{pid}_{n}b"),
            dev_root: format!("r{pid}_{}", n % 1000),
            dev_ns: format!("v{pid}_{}b", n % 1000),
            subnet: free_root_subnet(pid)?,
        };
        ip(&["netns", "add", &link.ns]).map_err(|e| {
            format!("cannot create a network namespace (need root and iproute2): {e}")
        })?;
        // From here on `link`'s Drop cleans up on every error path.
        let (ns, vr, vn) = (
            link.ns.as_str(),
            link.dev_root.as_str(),
            link.dev_ns.as_str(),
        );
        let addr_root = format!("{}/24", link.addr_root());
        let addr_ns = format!("{}/24", link.addr_ns());
        let steps: [&[&str]; 6] = [
            &[
                "link", "add", vr, "type", "veth", "peer", "name", vn, "netns", ns,
            ],
            &["addr", "add", &addr_root, "dev", vr],
            &["link", "set", vr, "up"],
            &["-n", ns, "addr", "add", &addr_ns, "dev", vn],
            &["-n", ns, "link", "set", vn, "up"],
            &["-n", ns, "link", "set", "lo", "up"],
        ];
        for step in steps {
            ip(step).map_err(|e| format!("setting up the root veth link failed: {e}"))?;
        }
        Ok(link)
    }

    /// Name of the namespace (for `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.ns
    }

    /// The root namespace's end, `10.200.S.1`: listen here.
    pub fn addr_root(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 200, self.subnet, 1))
    }

    /// The namespace's end, `10.200.S.2`.
    pub fn addr_ns(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 200, self.subnet, 2))
    }

    /// Plugs the cable in (`up = true`) or pulls it (`false`): `ip link set` on the
    /// namespace's end. Panics if `ip` fails.
    pub fn cable(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.ns, "link", "set", &self.dev_ns, state])
            .unwrap_or_else(|e| panic!("cable({up}): {e}"));
    }

    /// A `Command` that runs `program` inside the namespace.
    pub fn command_in(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        command_in(&self.ns, program.as_ref())
    }

    /// Pids of the processes living in the namespace.
    pub fn pids(&self) -> Vec<u32> {
        pids(&self.ns)
    }
}

impl Drop for RootLink {
    fn drop(&mut self) {
        for pid in pids(&self.ns) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
        let _ = ip(&["netns", "del", &self.ns]);
        // Normally gone with the namespace already; harmless if so.
        let _ = Command::new("ip")
            .args(["link", "del", &self.dev_root])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A third octet S such that no address of the root namespace is in 10.200.S.0/24, starting
/// from one derived from `pid` so that concurrent runs tend to pick different ones.
fn free_root_subnet(pid: u32) -> Result<u8, String> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `ip` (install iproute2): {e}"))?;
    let used: Vec<u8> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("10.200.")?.split('.').next()?.parse().ok())
        .collect();
    let start = pid % 254;
    (0..254)
        .map(|i| ((start + i) % 254 + 1) as u8)
        .find(|s| !used.contains(s))
        .ok_or_else(|| "no free 10.200.S.0/24 in the root namespace".to_string())
}
