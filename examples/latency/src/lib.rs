//! heartloop's latency client as a library: the measuring loop ([`client`]), HdrHistogram's
//! text distribution ([`hgrm`]), percentile-spectrum plots ([`svg`]), CPU time ([`cpu`]),
//! sockperf's wire format ([`sockperf`], shared with the echo example) and its client's
//! report ([`sockperf_report`]). The `latency` and `pairings` binaries are built on it.

pub mod client;
pub mod cpu;
pub mod hgrm;
pub mod hlog;
#[path = "../../common/sockperf.rs"]
pub mod sockperf;
pub mod sockperf_report;
pub mod svg;
