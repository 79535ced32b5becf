//! The percentile distribution in HdrHistogram's text form (`.hgrm`), as the Java
//! implementation's `outputPercentileDistribution` prints it and its plotter and
//! `HistogramLogProcessor` read it: a header, one row per percentile step (five steps per
//! halving of the distance to 100%), then the mean, max, count and the histogram's shape.
//!
//! Values are recorded in nanoseconds and written in **milliseconds** (the unit wrk2 and
//! `HistogramLogProcessor` write, and the one the online plotter labels its axis with), with
//! six decimals so that microsecond round trips keep their three significant digits.

use hdrhistogram::Histogram;

/// Nanoseconds per written unit (milliseconds).
pub const NS_PER_UNIT: f64 = 1e6;
/// Percentile steps per halving of the distance to 100% (the Java default).
pub const TICKS_PER_HALF_DISTANCE: u32 = 5;

/// `hist` (nanoseconds) as a `.hgrm` text.
pub fn write(hist: &Histogram<u64>) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = write!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    for v in hist.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
        total += v.count_since_last_iteration();
        let value = v.value_iterated_to() as f64 / NS_PER_UNIT;
        let q = v.quantile_iterated_to();
        if q < 1.0 {
            let _ = writeln!(
                out,
                "{value:12.6} {q:2.12} {total:10} {:14.2}",
                1.0 / (1.0 - q)
            );
        } else {
            let _ = writeln!(out, "{value:12.6} {q:2.12} {total:10}");
        }
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:12.6}, StdDeviation   = {:12.6}]",
        hist.mean() / NS_PER_UNIT,
        hist.stdev() / NS_PER_UNIT
    );
    let _ = writeln!(
        out,
        "#[Max     = {:12.6}, Total count    = {:12}]",
        hist.max() as f64 / NS_PER_UNIT,
        hist.len()
    );
    let sub_buckets = (2 * 10u64.pow(u32::from(hist.sigfig()))).next_power_of_two();
    let _ = writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        hist.buckets(),
        sub_buckets
    );
    out
}

/// One row of a `.hgrm`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Row {
    /// Latency in the file's unit (milliseconds).
    pub value: f64,
    /// 0.0 ..= 1.0.
    pub percentile: f64,
    /// Observations up to this value.
    pub total_count: u64,
}

/// A parsed `.hgrm`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Distribution {
    pub rows: Vec<Row>,
    /// From the `#[Max = ..., Total count = ...]` line.
    pub max: f64,
    pub total_count: u64,
}

impl Distribution {
    /// The value at `percentile` (0..=1): the first row at or above it.
    pub fn value_at(&self, percentile: f64) -> Option<f64> {
        self.rows
            .iter()
            .find(|r| r.percentile >= percentile)
            .or(self.rows.last())
            .map(|r| r.value)
    }
}

/// Parse a `.hgrm` text (any unit; the plot labels are the caller's business). Lines
/// that are not rows or the max/count footer are skipped; an empty distribution is an error.
pub fn parse(text: &str) -> Result<Distribution, String> {
    let mut d = Distribution::default();
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("#[Max") {
            // "#[Max     =        1.234, Total count    =         1000]"
            let nums: Vec<&str> = rest
                .split(['=', ',', ']'])
                .map(str::trim)
                .filter(|s| s.parse::<f64>().is_ok())
                .collect();
            if let [max, count] = nums[..] {
                d.max = max.parse().unwrap_or(0.0);
                d.total_count = count.parse().unwrap_or(0);
            }
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 3 {
            continue;
        }
        if let (Ok(value), Ok(percentile), Ok(total_count)) =
            (f[0].parse(), f[1].parse(), f[2].parse())
        {
            d.rows.push(Row {
                value,
                percentile,
                total_count,
            });
        }
    }
    if d.rows.is_empty() {
        return Err("no percentile rows (not a .hgrm file?)".into());
    }
    Ok(d)
}
