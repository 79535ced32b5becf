//! The experiments example (`examples/experiments.rs`) run end to end: every row must show
//! the cause the kernel's behaviour implies. Namespace rows need root; they are skipped
//! loudly without it, and must run when `CI` is set (CI runs as root).

mod util;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use serde_json::Value;

/// What each row must show: the accepted causes.
const EXPECTED: [(&str, &[&str]); 9] = [
    ("exit", &["PeerClosed"]),
    ("kill_idle", &["PeerClosed"]),
    ("kill_unread", &["Reset"]),
    ("half_close", &["PeerHalfClosed"]),
    ("stop_reading", &["SlowPeer"]),
    ("cable_heartbeat", &["HeartbeatTimeout"]),
    ("cable_no_heartbeat", &["none"]),
    ("cable_back", &["survived"]),
    // A dead process is seen at once: FIN, or a reset if a ping was still unread.
    ("kill_across", &["PeerClosed", "Reset"]),
];

const NETNS_ROWS: [&str; 4] = [
    "cable_heartbeat",
    "cable_no_heartbeat",
    "cable_back",
    "kill_across",
];

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false" | "FALSE"))
}

#[test]
fn every_experiment_shows_the_expected_cause() {
    let out = Command::new(util::example_bin("experiments"))
        .arg("--json")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("run the experiments example");
    assert!(
        out.status.success(),
        "experiments exited with {}",
        out.status
    );
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bad JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    eprintln!("{}", serde_json::to_string_pretty(&report).unwrap());
    let rows: BTreeMap<&str, &Value> = report["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| (r["id"].as_str().expect("id"), r))
        .collect();
    let ids: Vec<&str> = rows.keys().copied().collect();
    let mut want: Vec<&str> = EXPECTED.iter().map(|(id, _)| *id).collect();
    want.sort();
    assert_eq!(ids, want, "the report has exactly the expected rows");

    let mut failures = Vec::new();
    for (id, causes) in EXPECTED {
        let row = rows[id];
        if let Some(reason) = row["skipped"].as_str() {
            assert!(
                NETNS_ROWS.contains(&id),
                "{id} is not a namespace row but was skipped"
            );
            if in_ci() {
                failures.push(format!("{id}: skipped in CI ({reason})"));
            } else {
                eprintln!("SKIPPED: experiments row {id}: {reason}");
            }
            continue;
        }
        let cause = row["cause"].as_str().unwrap_or("");
        if !causes.contains(&cause) {
            failures.push(format!(
                "{id}: cause {cause:?}, expected one of {causes:?}: {}",
                row["saw"]
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "rows with a wrong cause:\n{}",
        failures.join("\n")
    );

    let ms = |id: &str| rows[id]["detect_ms"].as_f64();
    // Process death is immediate on loopback (bound far above the ~1 ms it takes).
    for id in ["exit", "kill_idle", "kill_unread", "half_close"] {
        let d = ms(id).unwrap_or_else(|| panic!("{id}: no detection time"));
        assert!(d < 1000.0, "{id}: detected after {d} ms");
    }
    let half = &rows["half_close"]["data"];
    assert_eq!(
        half["reply_delivered"], true,
        "after a half-close we can still send: {half}"
    );

    // The stopped reader: the kernel absorbed something before blocking, and the verdict
    // came no earlier than the stall timeout after the kernel stopped taking bytes.
    let slow = &rows["stop_reading"]["data"];
    let absorbed = slow["absorbed_bytes"].as_u64().expect("absorbed_bytes");
    assert!(absorbed >= 64 * 1024, "kernel absorbed only {absorbed} B");
    let stall = slow["stall_timeout_ms"].as_f64().expect("stall_timeout_ms");
    let d = ms("stop_reading").expect("stop_reading detect_ms");
    assert!(
        d >= stall - 5.0 && d < stall + 5000.0,
        "SlowPeer after {d} ms (stall {stall} ms)"
    );

    if rows["cable_heartbeat"]["skipped"].is_null() {
        let data = &rows["cable_heartbeat"]["data"];
        let timeout = data["timeout_ms"].as_f64().expect("timeout_ms");
        let silent = data["silent_for_ms"].as_f64().expect("silent_for_ms");
        assert!(
            silent >= timeout,
            "declared lost after {silent} ms of silence < {timeout}"
        );
        let d = ms("cable_heartbeat").expect("cable_heartbeat detect_ms");
        assert!(d <= timeout + 5000.0, "network loss seen after {d} ms");
        // A crash across the same link is told apart: seen well before any heartbeat verdict.
        let d = ms("kill_across").expect("kill_across detect_ms");
        assert!(
            d < timeout,
            "a killed peer across the link took {d} ms (timeout {timeout})"
        );
    }
}
