//! Reading an HdrHistogram interval log (`.hlog`) back: every interval's histogram with its
//! tag. (The client writes the log with the `hdrhistogram` crate's `IntervalLogWriter`.)

use base64::Engine;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};

/// One interval of a log: its tag, if any, and its histogram.
pub type Interval = (Option<String>, Histogram<u64>);

/// Every interval of the log `text`, in order.
pub fn read(text: &[u8]) -> Result<Vec<Interval>, String> {
    let mut de = Deserializer::new();
    let mut out = Vec::new();
    for entry in IntervalLogIterator::new(text) {
        let entry = entry.map_err(|e| format!("interval log: {e:?}"))?;
        if let LogEntry::Interval(iv) = entry {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(iv.encoded_histogram())
                .map_err(|e| format!("interval log: {e}"))?;
            let h: Histogram<u64> = de
                .deserialize(&mut &bytes[..])
                .map_err(|e| format!("interval log: {e:?}"))?;
            out.push((iv.tag().map(|t| t.as_str().to_string()), h));
        }
    }
    Ok(out)
}
