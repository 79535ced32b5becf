//! The broker as a leaf node of a real nats-server (`--leaf`): Debian's `nats-server`
//! (2.9) is started by each test with a `leafnodes` port on loopback ports the test
//! picks, the broker solicits it, and async-nats clients on both sides check that they
//! share one subject space: pub/sub both ways with wildcards, queue groups (each message
//! once across both sides), request/reply across, unsubscribe propagating (seen in the
//! hub's own monitoring, `/leafz?subs=1`, and as no-responders on the broker's side), and
//! a cut link: the hub frozen (SIGSTOP: the broker's heartbeat must notice) and killed,
//! then restarted on the same ports: the broker reconnects and its interest is restored.
//!
//! Without `nats-server` on the PATH the tests fail when `CI=true` (CI installs it) and
//! are skipped, loudly, otherwise.

#[path = "../../../tests/util/mod.rs"]
mod util;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use util::Proc;

/// Generous bound for anything that should take milliseconds (busy, shared machine).
const SLOW: Duration = Duration::from_secs(20);

/// The broker's `--leaf-ping`: the link is lost after three of these in silence.
const LEAF_PING: &str = "300ms";

/// Whether nats-server can run here; panics under CI when it cannot.
fn have_nats_server() -> bool {
    let ok = Command::new("nats-server")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "nats-server is not installed (apt-get install nats-server); CI must run the leaf tests"
        );
        eprintln!("SKIPPED: nats-server is not installed (apt-get install nats-server)");
    }
    ok
}

/// A port free on 127.0.0.1 right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A nats-server hub with a client port, a leafnode port and a monitoring port, all on
/// 127.0.0.1; killed (by its pid) on drop.
struct Hub {
    proc: Option<Proc>,
    dir: PathBuf,
    client: u16,
    leaf: u16,
    http: u16,
}

impl Hub {
    fn start() -> Hub {
        let dir = std::env::temp_dir().join(format!(
            "heartloop-leaf-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut hub = Hub {
            proc: None,
            dir,
            client: free_port(),
            leaf: free_port(),
            http: free_port(),
        };
        hub.restart();
        hub
    }

    fn client_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.client))
    }

    /// Start (again) on the same ports.
    fn restart(&mut self) {
        let conf = self.dir.join("hub.conf");
        std::fs::write(
            &conf,
            format!(
                "listen: 127.0.0.1:{}\nhttp: 127.0.0.1:{}\nleafnodes {{ listen: 127.0.0.1:{} }}\n",
                self.client, self.http, self.leaf
            ),
        )
        .expect("write hub.conf");
        let mut cmd = Command::new("nats-server");
        cmd.arg("-c").arg(&conf);
        let proc = Proc::from_command_with_stderr_lines(cmd);
        self.proc = Some(proc);
        let end = Instant::now() + SLOW;
        while TcpStream::connect(("127.0.0.1", self.leaf)).is_err()
            || TcpStream::connect(self.client_addr()).is_err()
        {
            assert!(Instant::now() < end, "nats-server did not start listening");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn proc(&self) -> &Proc {
        self.proc.as_ref().expect("the hub runs")
    }

    fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// The subjects (with queue groups) the hub has from its leaf nodes: `/leafz?subs=1`.
    fn leaf_subs(&self) -> Vec<String> {
        use std::io::{Read, Write};
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.http)) else {
            return Vec::new();
        };
        let _ = s.write_all(b"GET /leafz?subs=1 HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        v["leafs"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|l| l["subscriptions_list"].as_array().into_iter().flatten())
            .filter_map(|s| s.as_str().map(String::from))
            .collect()
    }

    /// Wait until the hub's leaf subscriptions do (or do not) include `subject`.
    fn await_leaf_sub(&self, subject: &str, present: bool) {
        let end = Instant::now() + SLOW;
        loop {
            let subs = self.leaf_subs();
            if subs.iter().any(|s| s == subject) == present {
                return;
            }
            assert!(
                Instant::now() < end,
                "hub's leaf subscriptions {subs:?}: {subject:?} should be {}",
                if present { "there" } else { "gone" }
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The broker, a leaf of `hub`, with its log (stderr) collected.
struct Leaf {
    proc: Proc,
    addr: SocketAddr,
}

fn leaf_of(hub: &Hub, threads: usize) -> Leaf {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_broker"));
    let url = format!("nats://127.0.0.1:{}", hub.leaf);
    let threads = threads.to_string();
    cmd.args([
        "--addr",
        "127.0.0.1:0",
        "--threads",
        &threads,
        "--leaf",
        &url,
    ])
    .args(["--leaf-ping", LEAF_PING])
    .env("RUST_LOG", "info");
    let mut proc = Proc::from_command_with_stderr_lines(cmd);
    let addr = proc.expect_addr("broker listening on ", SLOW);
    let up = |l: &str| l.contains("leaf: link to") && l.contains(" up ");
    if !proc.seen.iter().any(|l| up(l)) {
        proc.wait_line_containing("leaf: link to", SLOW)
            .filter(|l| l.contains("up"))
            .unwrap_or_else(|| panic!("the leaf link did not come up; saw {:?}", proc.seen));
    }
    Leaf { proc, addr }
}

async fn nats(addr: SocketAddr) -> async_nats::Client {
    async_nats::connect(format!("nats://{addr}"))
        .await
        .expect("async-nats connects")
}

/// The next message within `d`, if any.
async fn next(sub: &mut async_nats::Subscriber, d: Duration) -> Option<async_nats::Message> {
    tokio::time::timeout(d, sub.next()).await.ok().flatten()
}

/// Publish `probe` to `subject` from `publisher` until `sub` receives one (interest
/// crosses the link asynchronously), then let the probes in flight arrive and drop them.
async fn await_route(
    publisher: &async_nats::Client,
    subject: &str,
    sub: &mut async_nats::Subscriber,
) {
    let end = tokio::time::Instant::now() + SLOW;
    loop {
        publisher
            .publish(subject.to_string(), "probe".into())
            .await
            .unwrap();
        publisher.flush().await.unwrap();
        if next(sub, Duration::from_millis(100)).await.is_some() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "no message on {subject} crossed the link"
        );
    }
    while next(sub, Duration::from_millis(300)).await.is_some() {}
}

fn payloads(ms: &[async_nats::Message]) -> Vec<String> {
    ms.iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect()
}

async fn take(sub: &mut async_nats::Subscriber, n: usize) -> Vec<async_nats::Message> {
    let mut out = Vec::new();
    while out.len() < n {
        match next(sub, SLOW).await {
            Some(m) => out.push(m),
            None => break,
        }
    }
    out
}

async fn pub_sub_both_ways_with_wildcards(threads: usize) {
    if !have_nats_server() {
        return;
    }
    let hub = Hub::start();
    let leaf = leaf_of(&hub, threads);
    let h = nats(hub.client_addr()).await;
    let l = nats(leaf.addr).await;

    // Up: a subscriber on the hub's side, a publisher on the broker's.
    let mut up = h.subscribe("lf.up.*").await.unwrap();
    h.flush().await.unwrap();
    await_route(&l, "lf.up.probe", &mut up).await;
    for i in 0..50 {
        l.publish(format!("lf.up.{i}"), format!("up{i}").into())
            .await
            .unwrap();
    }
    l.flush().await.unwrap();
    let got = take(&mut up, 50).await;
    let want: Vec<String> = (0..50).map(|i| format!("up{i}")).collect();
    assert_eq!(payloads(&got), want, "in order, each once");
    assert_eq!(got[7].subject.as_str(), "lf.up.7");

    // Down: a `>` subscriber on the broker's side, a publisher on the hub's, with headers.
    let mut down = l.subscribe("lf.down.>").await.unwrap();
    l.flush().await.unwrap();
    hub.await_leaf_sub("lf.down.>", true);
    await_route(&h, "lf.down.probe", &mut down).await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("X-Leaf", "yes");
    h.publish_with_headers("lf.down.a.b", headers, "deep".into())
        .await
        .unwrap();
    h.publish("lf.down.c", "shallow".into()).await.unwrap();
    h.flush().await.unwrap();
    let got = take(&mut down, 2).await;
    let mut leaf = leaf;
    leaf.proc.drain_lines();
    assert_eq!(payloads(&got), ["deep", "shallow"], "{:?}", leaf.proc.seen);
    assert_eq!(
        got[0]
            .headers
            .as_ref()
            .and_then(|h| h.get("X-Leaf"))
            .map(|v| v.as_str()),
        Some("yes"),
        "headers cross the link (HMSG)"
    );
    // Nothing came twice (no echo back over the link).
    assert!(next(&mut down, Duration::from_millis(300)).await.is_none());
}

#[tokio::test]
async fn pub_sub_both_ways_with_wildcards_1_reactor() {
    pub_sub_both_ways_with_wildcards(1).await;
}

#[tokio::test]
async fn pub_sub_both_ways_with_wildcards_2_reactors() {
    pub_sub_both_ways_with_wildcards(2).await;
}

async fn queue_group_gets_each_message_once_across_both_sides(threads: usize) {
    if !have_nats_server() {
        return;
    }
    let hub = Hub::start();
    let leaf = leaf_of(&hub, threads);
    let h = nats(hub.client_addr()).await;
    let l = nats(leaf.addr).await;
    let mut qh = h.queue_subscribe("lf.q", "workers".into()).await.unwrap();
    let mut ql = l.queue_subscribe("lf.q", "workers".into()).await.unwrap();
    // Each side's queue interest crossed once a plain subscription made after it did
    // (interest crosses the link in order).
    let mut ready_h = h.subscribe("lf.ready.h").await.unwrap();
    let mut ready_l = l.subscribe("lf.ready.l").await.unwrap();
    h.flush().await.unwrap();
    l.flush().await.unwrap();
    await_route(&l, "lf.ready.h", &mut ready_h).await;
    await_route(&h, "lf.ready.l", &mut ready_l).await;
    // (The hub's monitoring lists a queue subscription by its subject.)
    hub.await_leaf_sub("lf.q", true);

    const N: usize = 300;
    for i in 0..N {
        l.publish("lf.q", format!("l{i}").into()).await.unwrap();
        h.publish("lf.q", format!("h{i}").into()).await.unwrap();
    }
    l.flush().await.unwrap();
    h.flush().await.unwrap();
    let mut got = Vec::new();
    loop {
        tokio::select! {
            Some(m) = qh.next() => got.push(String::from_utf8_lossy(&m.payload).into_owned()),
            Some(m) = ql.next() => got.push(String::from_utf8_lossy(&m.payload).into_owned()),
            _ = tokio::time::sleep(Duration::from_millis(1000)) => break,
        }
    }
    let total = got.len();
    got.sort();
    got.dedup();
    assert_eq!(got.len(), total, "a message reached two members");
    assert_eq!(total, 2 * N, "every message reached one member");
}

#[tokio::test]
async fn queue_group_gets_each_message_once_across_both_sides_1_reactor() {
    queue_group_gets_each_message_once_across_both_sides(1).await;
}

#[tokio::test]
async fn queue_group_gets_each_message_once_across_both_sides_2_reactors() {
    queue_group_gets_each_message_once_across_both_sides(2).await;
}

async fn request_reply_across_and_unsubscribe_propagates(threads: usize) {
    if !have_nats_server() {
        return;
    }
    let hub = Hub::start();
    let leaf = leaf_of(&hub, threads);
    let h = nats(hub.client_addr()).await;
    let l = nats(leaf.addr).await;

    // A responder on each side.
    let serve = |c: async_nats::Client, subject: &'static str, who: &'static str| async move {
        let mut s = c.subscribe(subject).await.unwrap();
        c.flush().await.unwrap();
        let task = tokio::spawn(async move {
            while let Some(m) = s.next().await {
                if let Some(reply) = m.reply {
                    let body = format!("{who}:{}", String::from_utf8_lossy(&m.payload));
                    c.publish(reply, body.into()).await.unwrap();
                    c.flush().await.unwrap();
                }
            }
        });
        task.abort_handle()
    };
    let th = serve(h.clone(), "lf.svc.hub", "hub").await;
    let tl = serve(l.clone(), "lf.svc.leaf", "leaf").await;
    hub.await_leaf_sub("lf.svc.leaf", true);
    let ask = |c: async_nats::Client, subject: &'static str| async move {
        let end = tokio::time::Instant::now() + SLOW;
        loop {
            match tokio::time::timeout(Duration::from_secs(2), c.request(subject, "hi".into()))
                .await
            {
                Ok(Ok(m)) => return String::from_utf8_lossy(&m.payload).into_owned(),
                _ if tokio::time::Instant::now() < end => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                other => panic!("no answer on {subject}: {other:?}"),
            }
        }
    };
    assert_eq!(ask(l.clone(), "lf.svc.hub").await, "hub:hi");
    assert_eq!(ask(h.clone(), "lf.svc.leaf").await, "leaf:hi");
    th.abort();
    tl.abort();

    // Unsubscribe on the broker's side: the hub hears LS- (its monitoring shows it).
    let s = l.subscribe("lf.gone.leaf").await.unwrap();
    l.flush().await.unwrap();
    hub.await_leaf_sub("lf.gone.leaf", true);
    drop(s);
    l.flush().await.unwrap();
    hub.await_leaf_sub("lf.gone.leaf", false);

    // Unsubscribe on the hub's side: the broker forgets the interest, so a request from
    // its side gets "no responders" at once instead of going to the hub.
    let s = h.subscribe("lf.gone.hub").await.unwrap();
    h.flush().await.unwrap();
    let no_responders = |c: async_nats::Client| async move {
        match tokio::time::timeout(
            Duration::from_millis(500),
            c.request("lf.gone.hub", "x".into()),
        )
        .await
        {
            Ok(Err(e)) => e.kind() == async_nats::RequestErrorKind::NoResponders,
            _ => false,
        }
    };
    let end = Instant::now() + SLOW;
    while no_responders(l.clone()).await {
        assert!(
            Instant::now() < end,
            "the hub's interest never reached the broker"
        );
    }
    drop(s);
    h.flush().await.unwrap();
    let end = Instant::now() + SLOW;
    while !no_responders(l.clone()).await {
        assert!(
            Instant::now() < end,
            "the hub's LS- never reached the broker"
        );
    }
}

#[tokio::test]
async fn request_reply_across_and_unsubscribe_propagates_1_reactor() {
    request_reply_across_and_unsubscribe_propagates(1).await;
}

#[tokio::test]
async fn request_reply_across_and_unsubscribe_propagates_2_reactors() {
    request_reply_across_and_unsubscribe_propagates(2).await;
}

#[tokio::test]
async fn cut_link_is_noticed_and_reconnected_with_interest_restored() {
    if !have_nats_server() {
        return;
    }
    let mut hub = Hub::start();
    let mut leaf = leaf_of(&hub, 2);
    let l = nats(leaf.addr).await;
    let mut sub = l.subscribe("lf.back").await.unwrap();
    l.flush().await.unwrap();
    hub.await_leaf_sub("lf.back", true);

    // Frozen hub (the connection stays open, nothing comes): the heartbeat notices it
    // within three --leaf-ping (300 ms); the bound here is generous.
    hub.proc().signal("STOP");
    let t = Instant::now();
    let lost = leaf.proc.wait_line_containing("leaf: link to", SLOW);
    let noticed = t.elapsed();
    hub.proc().signal("CONT");
    let lost = lost.expect("the broker noticed the frozen hub");
    assert!(lost.contains("lost"), "{lost}");
    eprintln!("frozen hub noticed after {noticed:?}: {lost}");
    assert!(noticed < Duration::from_secs(10), "took {noticed:?}");
    leaf.proc
        .wait_line_containing("leaf: link to", SLOW)
        .filter(|l| l.contains("up"))
        .expect("reconnected once the hub thawed");

    // Killed hub: the link ends at once; restarted on the same ports, it is solicited
    // again (backoff) and gets the broker's interest again.
    hub.kill();
    let lost = leaf.proc.wait_line_containing("leaf: link to", SLOW);
    assert!(
        lost.is_some_and(|l| l.contains("lost")),
        "{:?}",
        leaf.proc.seen
    );
    hub.restart();
    leaf.proc
        .wait_line_containing("leaf: link to", SLOW)
        .filter(|l| l.contains("up"))
        .unwrap_or_else(|| panic!("no reconnection; saw {:?}", leaf.proc.seen));
    hub.await_leaf_sub("lf.back", true);
    let h = nats(hub.client_addr()).await;
    await_route(&h, "lf.back", &mut sub).await;
    h.publish("lf.back", "again".into()).await.unwrap();
    h.flush().await.unwrap();
    let m = next(&mut sub, SLOW)
        .await
        .expect("the subscriber receives again");
    assert_eq!(&m.payload[..], b"again");
}
