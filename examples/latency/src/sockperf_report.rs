//! What sockperf's `ping-pong` client prints at the end, read back: its percentiles (in
//! µs: one-way, RTT/2, unless it ran with `--full-rtt`), how many observations it made,
//! how many messages it sent in all (warm-up included) and the error counts.

/// sockperf's summary of one client run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// Observations in the valid (measured) period.
    pub observations: u64,
    /// Messages sent over the whole run, warm-up included (`[Total Run] ... SentMessages`).
    pub total_sent: u64,
    /// (percentile as printed, e.g. 99.0, value in µs).
    pub percentiles: Vec<(f64, f64)>,
    pub dropped: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
}

impl Report {
    /// The value sockperf printed for `percentile` (50.0, 99.0, ...), in µs.
    pub fn at(&self, percentile: f64) -> Option<f64> {
        self.percentiles
            .iter()
            .find(|(p, _)| (p - percentile).abs() < 1e-6)
            .map(|p| p.1)
    }

    /// Every error count zero.
    pub fn clean(&self) -> bool {
        self.dropped == 0 && self.duplicated == 0 && self.out_of_order == 0
    }
}

/// The number after `key` in `line` (`"SentMessages=123;"` -> 123 for key `"SentMessages="`).
fn number_after(line: &str, key: &str) -> Option<f64> {
    let rest = &line[line.find(key)? + key.len()..];
    let rest = rest.trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Parse sockperf's output (stdout and stderr together; its colour escapes are harmless).
/// `None` if it has no observation count (the run failed).
pub fn parse(out: &str) -> Option<Report> {
    let mut r = Report::default();
    let mut seen = false;
    for line in out.lines() {
        if line.contains("[Total Run]") {
            r.total_sent = number_after(line, "SentMessages=")? as u64;
        } else if line.contains(" observations") && line.contains("Total ") {
            r.observations = number_after(line, "Total ")? as u64;
            seen = true;
        } else if line.contains("---> percentile") {
            let p = number_after(line, "percentile ")?;
            let v = number_after(line, "= ")?;
            r.percentiles.push((p, v));
        } else if line.contains("dropped messages") {
            r.dropped = number_after(line, "dropped messages = ")? as u64;
            r.duplicated = number_after(line, "duplicated messages = ")? as u64;
            r.out_of_order = number_after(line, "out-of-order messages = ")? as u64;
        }
    }
    seen.then_some(r)
}
