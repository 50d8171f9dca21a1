//! `GET /metrics`: every program's statistics in the Prometheus text format (0.0.4), or
//! OpenMetrics when the scraper asks for it (`Accept: application/openmetrics-text`),
//! written by the `prometheus-client` crate from the runtime's counters at each scrape.
//! Conventions: counters end in `_total`, times are in seconds, sizes in bytes, one label
//! `program` (plus `class`/`reason`/`state` where a family is split); request time, queue
//! wait and exits per request are histograms. docs/METRICS.md lists every metric and the
//! `/_edgevm/stats` field it matches (a test checks the list against both endpoints).

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use edgevm_runtime::histogram::HistogramSnapshot;
use edgevm_runtime::pool::{Program, Runtime, StatsSnapshot};

/// Content type of the classic text format.
pub const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Content type of OpenMetrics.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The metrics of `runtime`: (content type, body). OpenMetrics if `accept` asks for it.
pub fn render(runtime: &Arc<Runtime>, accept: Option<&str>) -> (&'static str, String) {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Programs(runtime.clone())));
    let mut out = String::new();
    let open = accept.is_some_and(|a| a.contains("application/openmetrics-text"));
    let r = if open {
        prometheus_client::encoding::text::encode(&mut out, &registry)
    } else {
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
    };
    if let Err(e) = r {
        tracing::error!("cannot encode the metrics: {e}");
    }
    (if open { OPENMETRICS } else { TEXT }, out)
}

/// One program at scrape time.
struct Seen {
    name: String,
    program: Arc<Program>,
    stats: StatsSnapshot,
}

impl Seen {
    fn stat(&self, key: &str) -> u64 {
        self.stats.get(key).copied().unwrap_or(0)
    }
}

/// The collector: reads every program at each scrape.
struct Programs(Arc<Runtime>);

impl std::fmt::Debug for Programs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Programs")
    }
}

/// A metric value of one program.
enum Value {
    Counter(u64),
    Gauge(f64),
    Count(u64),
    Histogram(HistogramSnapshot),
    /// An info metric's extra label (value 1).
    Info(&'static str, &'static str),
}

impl EncodeMetric for Value {
    fn encode(&self, mut e: MetricEncoder) -> Result<(), std::fmt::Error> {
        match self {
            Value::Counter(v) => e.encode_counter::<NoLabelSet, _, u64>(v, None),
            Value::Gauge(v) => e.encode_gauge(v),
            Value::Count(v) => e.encode_gauge(v),
            Value::Info(k, v) => e.encode_info(&[(*k, *v)]),
            Value::Histogram(h) => {
                e.encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)
            }
        }
    }

    fn metric_type(&self) -> MetricType {
        match self {
            Value::Counter(_) => MetricType::Counter,
            Value::Gauge(_) | Value::Count(_) => MetricType::Gauge,
            Value::Histogram(_) => MetricType::Histogram,
            Value::Info(..) => MetricType::Info,
        }
    }
}

/// How a metric is read from a program: values with their extra label (name, value), if any.
type Read = fn(&Seen) -> Vec<(Option<(&'static str, &'static str)>, Value)>;

/// A metric: name (without `edgevm_`, unit and `_total`), type, unit, help, how to read it.
pub struct Metric {
    /// Name after `edgevm_`, before the unit.
    pub name: &'static str,
    kind: MetricType,
    unit: Option<Unit>,
    /// Help text.
    pub help: &'static str,
    read: Read,
}

impl Metric {
    /// The name as exported in the classic text format (`edgevm_..._seconds_total`).
    pub fn exported_name(&self) -> String {
        let unit = match &self.unit {
            Some(Unit::Seconds) => "_seconds",
            Some(Unit::Bytes) => "_bytes",
            _ => "",
        };
        let suffix = match self.kind {
            MetricType::Counter => "_total",
            MetricType::Info => "_info",
            _ => "",
        };
        format!("edgevm_{}{unit}{suffix}", self.name)
    }

    /// "counter", "gauge" or "histogram".
    pub fn kind(&self) -> &'static str {
        match self.kind {
            MetricType::Counter => "counter",
            MetricType::Histogram => "histogram",
            // Info is a gauge of value 1 in the classic text format.
            _ => "gauge",
        }
    }
}

fn counter(s: &Seen, key: &str) -> Vec<(Option<(&'static str, &'static str)>, Value)> {
    vec![(None, Value::Counter(s.stat(key)))]
}

fn gauge(v: f64) -> Vec<(Option<(&'static str, &'static str)>, Value)> {
    vec![(None, Value::Gauge(v))]
}

/// A gauge that counts something (exported without a fraction).
fn count(v: u64) -> Vec<(Option<(&'static str, &'static str)>, Value)> {
    vec![(None, Value::Count(v))]
}

macro_rules! counter {
    ($name:literal, $key:literal, $help:literal) => {
        Metric {
            name: $name,
            kind: MetricType::Counter,
            unit: None,
            help: $help,
            read: |s| counter(s, $key),
        }
    };
}

/// Every metric, in the order of the output.
pub const METRICS: &[Metric] = &[
    Metric {
        name: "program",
        kind: MetricType::Info,
        unit: None,
        help: "One per configured program, with where its binary came from (origin: local or remote)",
        read: |s| vec![(None, Value::Info("origin", s.program.settings().origin))],
    },
    counter!("requests", "requests", "Requests handled by a request VM"),
    Metric {
        name: "responses",
        kind: MetricType::Counter,
        unit: None,
        help: "Answers by status class: the program's own status, or 5xx when it failed",
        read: |s| {
            [("2xx", "status_2xx"), ("3xx", "status_3xx"), ("4xx", "status_4xx"), ("5xx", "status_5xx")]
                .into_iter()
                .map(|(c, k)| (Some(("class", c)), Value::Counter(s.stat(k))))
                .collect()
        },
    },
    Metric {
        name: "request_failures",
        kind: MetricType::Counter,
        unit: None,
        help: "Requests the program failed, by reason: timeout (max_request_time), exception (CPU exception), memory (max_request_memory), other (no response, exit, API misuse)",
        read: |s| {
            [
                ("timeout", "timeouts"),
                ("exception", "exceptions"),
                ("memory", "memory_errors"),
                ("other", "other_errors"),
            ]
            .into_iter()
            .map(|(r, k)| (Some(("reason", r)), Value::Counter(s.stat(k))))
            .collect()
        },
    },
    Metric {
        name: "request_duration",
        kind: MetricType::Histogram,
        unit: Some(Unit::Seconds),
        help: "Time from a request reaching its program to the answer, queue wait included",
        read: |s| vec![(None, Value::Histogram(s.program.stats.request_time.snapshot()))],
    },
    Metric {
        name: "queue_wait",
        kind: MetricType::Histogram,
        unit: Some(Unit::Seconds),
        help: "Time a request waited for the program to boot and for a free request VM",
        read: |s| vec![(None, Value::Histogram(s.program.stats.queue_time.snapshot()))],
    },
    Metric {
        name: "request_exits",
        kind: MetricType::Histogram,
        unit: None,
        help: "VM exits per request",
        read: |s| vec![(None, Value::Histogram(s.program.stats.request_exits.snapshot()))],
    },
    counter!("exits", "exits", "VM exits while handling requests"),
    Metric {
        name: "exits_per_request",
        kind: MetricType::Gauge,
        unit: None,
        help: "Average VM exits per request since the start (exits_total / requests_total)",
        read: |s| {
            let r = s.stat("requests");
            gauge(if r == 0 { 0.0 } else { s.stat("exits") as f64 / r as f64 })
        },
    },
    Metric {
        name: "last_request_exits",
        kind: MetricType::Gauge,
        unit: None,
        help: "VM exits of the most recent request",
        read: |s| count(s.stat("last_request_exits")),
    },
    counter!("resets", "resets", "Request VMs reset after a request by more than the usual dirty-page restore (ephemeral or full)"),
    counter!("full_resets", "full_resets", "Full request VM resets (all private memory dropped)"),
    counter!("queue_timeouts", "queue_timeouts", "Requests refused (503) after waiting too long for a VM"),
    counter!("queue_full", "queue_full", "Requests refused (503) at once because max_queue requests were waiting"),
    counter!("preempted", "preempted", "Requests that outlived their time slice on the HTTP worker and finished on a blocking thread"),
    counter!("live_updates", "live_updates", "Successful live updates"),
    Metric {
        name: "live_update_transfer",
        kind: MetricType::Counter,
        unit: Some(Unit::Bytes),
        help: "Storage state carried from the old program to the new one by live updates",
        read: |s| counter(s, "live_update_transfer_bytes"),
    },
    counter!("snapshot_starts", "snapshot_starts", "Starts from the program's snapshot file instead of a boot"),
    counter!("snapshot_writes", "snapshot_writes", "Snapshot files written"),
    counter!("snapshot_rejected", "snapshot_rejected", "Snapshot files ignored as stale, corrupt or refused (the program booted instead)"),
    Metric {
        name: "image_resident",
        kind: MetricType::Gauge,
        unit: None,
        help: "1 while the program's frozen image is in memory (free_idle_image frees it when idle)",
        read: |s| count(s.stat("image_resident")),
    },
    counter!("images_freed", "images_freed", "Frozen images freed while the program was idle (free_idle_image)"),
    counter!("images_reloaded", "images_reloaded", "Frozen images loaded back from the snapshot (or booted again) after that"),
    counter!("fetches", "fetches", "Outgoing requests (sys_fetch, route chains' URL fetch steps) answered, self-requests included"),
    counter!("fetch_failures", "fetch_failures", "Outgoing requests (sys_fetch, route chains' URL fetch steps) that failed: refused, bad arguments, network errors, timeouts"),
    Metric {
        name: "fetch",
        kind: MetricType::Counter,
        unit: Some(Unit::Bytes),
        help: "Response body bytes received by outgoing requests (sys_fetch)",
        read: |s| counter(s, "fetch_bytes"),
    },
    Metric {
        name: "tcp_connections_open",
        kind: MetricType::Gauge,
        unit: None,
        help: "Connections open in the program's TCP or WebSocket server (server, websocket_server)",
        read: |s| count(s.stat("tcp_connections_open")),
    },
    counter!("tcp_connections", "tcp_connections", "Connections accepted by the program's TCP or WebSocket server"),
    counter!("tcp_refused", "tcp_refused", "Connections closed before the program saw them: WebSocket handshakes refused, abandoned or not finished in time"),
    counter!("tcp_events", "tcp_events", "Socket events delivered to the program's server VMs"),
    Metric {
        name: "tcp_read",
        kind: MetricType::Counter,
        unit: Some(Unit::Bytes),
        help: "Bytes read from the server's connections (WebSocket framing included)",
        read: |s| counter(s, "tcp_bytes_read"),
    },
    Metric {
        name: "tcp_written",
        kind: MetricType::Counter,
        unit: Some(Unit::Bytes),
        help: "Bytes written to the server's connections (WebSocket framing included)",
        read: |s| counter(s, "tcp_bytes_written"),
    },
    counter!("tcp_failures", "tcp_failures", "Server VMs that failed (crash, exit, timeout, API misuse) and were started again"),
    Metric {
        name: "binary_size",
        kind: MetricType::Gauge,
        unit: Some(Unit::Bytes),
        help: "Size of the program binary",
        read: |s| count(s.stat("binary_size")),
    },
    Metric {
        name: "memory_image",
        kind: MetricType::Gauge,
        unit: Some(Unit::Bytes),
        help: "Host memory held by the program's frozen image",
        read: |s| count(s.stat("memory_image_bytes")),
    },
    Metric {
        name: "concurrency",
        kind: MetricType::Gauge,
        unit: None,
        help: "Configured number of request VMs",
        read: |s| count(u64::from(s.program.settings().concurrency)),
    },
    Metric {
        name: "vms",
        kind: MetricType::Gauge,
        unit: None,
        help: "Request VMs of the ready program (0 until it is ready)",
        read: |s| count(s.program.ready_info().map_or(0, |(v, _)| u64::from(v))),
    },
    Metric {
        name: "resident_vms",
        kind: MetricType::Gauge,
        unit: None,
        help: "Request VMs that exist now (idle ones are freed after free_idle_vms_after)",
        read: |s| count(u64::from(s.program.resident_vms().0)),
    },
    Metric {
        name: "idle_vms_freed",
        kind: MetricType::Counter,
        unit: None,
        help: "Request VMs freed because the program was idle",
        read: |s| vec![(None, Value::Counter(s.program.resident_vms().1))],
    },
    Metric {
        name: "idle_vms_refilled",
        kind: MetricType::Counter,
        unit: None,
        help: "Request VMs forked again after being freed while idle",
        read: |s| vec![(None, Value::Counter(s.program.resident_vms().2))],
    },
    Metric {
        name: "program_ready",
        kind: MetricType::Gauge,
        unit: None,
        help: "1 when the program is booted and serving, else 0",
        read: |s| count(u64::from(s.program.ready_info().is_some())),
    },
    Metric {
        name: "program_state",
        kind: MetricType::Gauge,
        unit: None,
        help: "1 for the program's current state (not started, booting, ready, failed), 0 for the others",
        read: |s| {
            let now = state_of(&s.program.status());
            ["not started", "booting", "ready", "failed"]
                .into_iter()
                .map(|st| (Some(("state", st)), Value::Count(u64::from(st == now))))
                .collect()
        },
    },
    Metric {
        name: "ready_time",
        kind: MetricType::Gauge,
        unit: Some(Unit::Seconds),
        help: "Time the last successful boot took, from its start to the first request VM (0 until ready)",
        read: |s| gauge(s.program.ready_info().map_or(0.0, |(_, ms)| ms / 1e3)),
    },
    Metric {
        name: "boot_failures",
        kind: MetricType::Counter,
        unit: None,
        help: "Failed boots of the program (each is retried: after a back-off, or at once when its file changes)",
        read: |s| vec![(None, Value::Counter(s.program.retry_info().boot_failures))],
    },
    Metric {
        name: "retry_in",
        kind: MetricType::Gauge,
        unit: Some(Unit::Seconds),
        help: "Time until the failed program's next boot (absent when no retry is scheduled)",
        read: |s| match s.program.retry_info().retry_in {
            Some(d) => gauge(d.as_secs_f64()),
            None => vec![],
        },
    },
];

/// "not started", "booting", "ready" or "failed" from [`Program::status`].
fn state_of(status: &str) -> &'static str {
    match status {
        "ready" => "ready",
        "booting" => "booting",
        "not started" => "not started",
        _ => "failed",
    }
}

impl Collector for Programs {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let seen: Vec<Seen> = self
            .0
            .programs()
            .into_iter()
            .map(|(name, program)| {
                let stats = program.stats.snapshot();
                Seen {
                    name,
                    program,
                    stats,
                }
            })
            .collect();
        for m in METRICS {
            let values: Vec<_> = seen.iter().map(|s| (s, (m.read)(s))).collect();
            if values.iter().all(|(_, v)| v.is_empty()) {
                continue;
            }
            let name = format!("edgevm_{}", m.name);
            let mut d = encoder.encode_descriptor(&name, m.help, m.unit.as_ref(), m.kind)?;
            for (s, vals) in values {
                for (extra, v) in vals {
                    let program = ("program", s.name.as_str());
                    match extra {
                        Some(l) => v.encode(d.encode_family(&[program, l])?)?,
                        None => v.encode(d.encode_family(&[program])?)?,
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_conventions() {
        let mut names = std::collections::BTreeSet::new();
        for m in METRICS {
            let n = m.exported_name();
            assert!(names.insert(n.clone()), "{n} twice");
            assert_eq!(n.ends_with("_total"), m.kind() == "counter", "{n}");
            assert!(!n.contains("_us") && !n.contains("_ms"), "{n}: seconds");
        }
    }

    #[test]
    fn an_empty_runtime_gives_valid_text() {
        let (ct, body) = render(&Arc::new(Runtime::new()), None);
        assert_eq!(ct, TEXT);
        assert_eq!(body, "", "no program, no metric");
        let (ct, body) = render(
            &Arc::new(Runtime::new()),
            Some("application/openmetrics-text"),
        );
        assert_eq!(ct, OPENMETRICS);
        assert_eq!(body, "# EOF\n");
    }
}
