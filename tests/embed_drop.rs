//! Dropping the reactor under live handles: calls error cleanly, no panic, no leaked fd or
//! thread. In a file of its own, because it counts the process's fds and threads, which
//! other tests running in parallel would disturb.

use std::net::TcpStream;
use std::time::Duration;

use bytes::Bytes;
use heartloop::{ConnConfig, Event, HandleError, Reactor, ReactorConfig};

fn count_dir(path: &str) -> usize {
    std::fs::read_dir(path).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn dropping_the_reactor_under_live_handles_errors_cleanly() {
    let fds_before = count_dir("/proc/self/fd");
    let threads_before = count_dir("/proc/self/task");
    let mut r = Reactor::new(ReactorConfig::default()).unwrap();
    let l = r
        .listen("127.0.0.1:0".parse().unwrap(), ConnConfig::default())
        .unwrap();
    let addr = r.local_addr(l).unwrap();
    let h = r.handle().unwrap();
    let h2 = h.clone();
    // A live connection too, so its id is real.
    let _client = TcpStream::connect(addr).unwrap();
    let mut events = Vec::new();
    let conn = loop {
        r.poll(&mut events, Some(Duration::from_secs(5))).unwrap();
        if let Some(c) = events.iter().find_map(Event::conn) {
            break c;
        }
    };
    h.send(conn, Bytes::from_static(b"before")).unwrap();
    drop(r);
    let from_thread = std::thread::spawn(move || h2.send(conn, Bytes::from_static(b"x")))
        .join()
        .expect("no panic in another thread");
    assert_eq!(from_thread, Err(HandleError::ReactorGone));
    assert_eq!(h.close(conn), Err(HandleError::ReactorGone));
    assert_eq!(
        h.set_timer(Duration::from_millis(1), 1),
        Err(HandleError::ReactorGone)
    );
    assert_eq!(h.wake(), Err(HandleError::ReactorGone));
    drop(h);
    drop(_client);
    assert_eq!(count_dir("/proc/self/fd"), fds_before, "fd leaked");
    assert_eq!(
        count_dir("/proc/self/task"),
        threads_before,
        "thread leaked"
    );
}
