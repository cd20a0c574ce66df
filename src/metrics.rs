//! `/metrics` (Prometheus text exposition format 0.0.4) and `/health` of `auditwatch run`.
//!
//! The HTTP side is deliberately tiny (two `GET` routes, `Connection: close`, a request head
//! of at most 8 KiB read within 5 s, at most 32 connections at once) and runs on the service's
//! tokio runtime; each answer is built on a blocking thread from a [`Snapshot`] of the
//! service's counters, so a scrape never holds up a source. Keep the address on loopback:
//! the endpoint has no authentication (it exposes counters only, never entry data).
//!
//! Every metric name starts with `auditwatch_`; the list, with the alert rules an operator
//! should set, is in README.md (`## auditwatch run`, "Metrics").

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::archive::ArchiveStats;
use crate::sink::{SinkHealth, SinkStats};
use crate::tail::TailStats;

/// Longest request head read.
const MAX_HEAD: usize = 8 << 10;
/// Time a client has to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once (more are closed at once).
const MAX_CONNS: usize = 32;

/// Content type of `/metrics`.
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

/// Answers a path (`/metrics`, `/health`…); runs on a blocking thread.
pub type Handler = Arc<dyn Fn(&str) -> Response + Send + Sync>;

/// Serves until `stop` turns true.
pub async fn serve(listener: TcpListener, handler: Handler, mut stop: watch::Receiver<bool>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNS));
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.changed() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("metrics endpoint: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(READ_TIMEOUT * 2, answer(stream, handler)).await;
        });
    }
}

async fn answer(mut stream: tokio::net::TcpStream, handler: Handler) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let head_end = loop {
        let n = match tokio::time::timeout(READ_TIMEOUT, stream.read(&mut chunk)).await {
            Ok(r) => r?,
            Err(_) => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = memchr::memmem::find(&buf, b"\r\n\r\n") {
            break p;
        }
        if buf.len() > MAX_HEAD {
            return write(
                &mut stream,
                &Response::text(431, "request head too large\n"),
                false,
            )
            .await;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("").to_string();
    let head_only = method == "HEAD";
    let resp = if method != "GET" && !head_only {
        Response::text(405, "only GET and HEAD\n")
    } else {
        tokio::task::spawn_blocking(move || handler(&path))
            .await
            .unwrap_or_else(|_| Response::text(500, "internal error\n"))
    };
    write(&mut stream, &resp, head_only).await
}

async fn write(
    stream: &mut tokio::net::TcpStream,
    r: &Response,
    head_only: bool,
) -> std::io::Result<()> {
    let reason = match r.status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let mut out = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
        r.status,
        r.content_type,
        r.body.len()
    );
    if r.status == 405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    stream.write_all(out.as_bytes()).await?;
    if !head_only {
        stream.write_all(r.body.as_bytes()).await?;
    }
    stream.shutdown().await
}

// ------------------------------------------------------------------------- exposition

/// Builds the text format: `# HELP` and `# TYPE` once per family, then its samples.
#[derive(Default)]
pub struct Exposition {
    out: String,
}

/// A label set.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

impl Exposition {
    /// Starts a family (`kind`: `counter` or `gauge`).
    pub fn family(&mut self, name: &str, kind: &str, help: &str) -> &mut Self {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        self
    }

    /// One sample of the current family.
    pub fn sample(&mut self, name: &str, labels: Labels<'_>, value: f64) -> &mut Self {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", fmt_value(value));
        self
    }

    /// A family with one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: &str, help: &str, value: f64) -> &mut Self {
        self.family(name, kind, help).sample(name, &[], value)
    }

    pub fn finish(self) -> String {
        self.out
    }
}

fn fmt_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

// ------------------------------------------------------------------------- the snapshot

/// One source's counters.
#[derive(Debug, Clone, Default)]
pub struct SourceSnap {
    pub name: String,
    /// `listen` or `tail`.
    pub kind: String,
    pub entries: u64,
    pub bytes: u64,
    /// Judged parse errors (`None` until the pipeline exposes live judge counters).
    pub parse_errors: Option<u64>,
    pub fragments: u64,
    pub oversize: u64,
    pub ingest_shed_lines: u64,
    pub analysis_shed_lines: u64,
    pub analysis_shed_bytes: u64,
    pub duplicates_dropped: u64,
    /// Findings from this source, before the merge.
    pub findings: u64,
    /// Listen sources.
    pub connections_open: Option<u64>,
    pub connections_total: Option<u64>,
    pub connections_evicted: Option<u64>,
    pub connections_refused: Option<u64>,
    pub connections_timed_out: Option<u64>,
    /// Tail sources.
    pub tail: Option<TailSnap>,
}

#[derive(Debug, Clone, Default)]
pub struct TailSnap {
    pub stats: TailStats,
    pub lag_bytes: u64,
    pub lag_seconds: f64,
}

/// One archive.
#[derive(Debug, Clone, Default)]
pub struct ArchiveSnap {
    pub source: String,
    /// Bytes of the files in the archive directory now (live file, segments, manifest).
    pub disk_bytes: u64,
    /// Bytes available to auditwatch on the archive's filesystem.
    pub free_bytes: Option<u64>,
    /// The archive's own counters (`None` until the pipeline exposes them live).
    pub stats: Option<ArchiveStats>,
}

/// A component's health.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// `source:NAME`, `archive:SOURCE`, `sink:NAME`.
    pub component: String,
    pub healthy: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Everything `/metrics` shows.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub start_time_seconds: f64,
    pub uptime_seconds: f64,
    pub rules_loaded: u64,
    pub rules_reload_pending: bool,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    pub last_reload_ok: bool,
    pub last_reload_time_seconds: f64,
    pub sources: Vec<SourceSnap>,
    /// (rule, severity) → findings after the merge (one per event).
    pub findings: BTreeMap<(String, String), u64>,
    /// (rule, severity) → findings handed to the sinks (summaries included).
    pub reported: BTreeMap<(String, String), u64>,
    pub merged: u64,
    pub suppressed: u64,
    pub suppression_summaries: u64,
    pub suppression_windows: u64,
    pub archives: Vec<ArchiveSnap>,
    pub sinks: Vec<(SinkStats, SinkHealth)>,
    pub checks: Vec<Check>,
}

/// The `/health` body.
#[derive(Debug, Clone, Serialize)]
pub struct HealthDoc<'a> {
    pub status: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    pub checks: &'a [Check],
}

/// `/health`: 200 when every check passes, else 503; both with a JSON body.
pub fn health_response(checks: &[Check]) -> Response {
    let reasons: Vec<String> = checks
        .iter()
        .filter(|c| !c.healthy)
        .map(|c| {
            format!(
                "{}: {}",
                c.component,
                c.reason.as_deref().unwrap_or("unhealthy")
            )
        })
        .collect();
    let ok = reasons.is_empty();
    let doc = HealthDoc {
        status: if ok { "ok" } else { "unhealthy" },
        reasons,
        checks,
    };
    Response {
        status: if ok { 200 } else { 503 },
        content_type: "application/json",
        body: serde_json::to_string(&doc).unwrap_or_default() + "\n",
    }
}

/// The text exposition of a snapshot.
pub fn render(s: &Snapshot) -> String {
    let mut e = Exposition::default();
    let version = env!("CARGO_PKG_VERSION");
    e.family(
        "auditwatch_build_info",
        "gauge",
        "Always 1; the version is a label.",
    )
    .sample("auditwatch_build_info", &[("version", version)], 1.0);
    e.single(
        "auditwatch_start_time_seconds",
        "gauge",
        "Unix time the service started.",
        s.start_time_seconds,
    );
    e.single(
        "auditwatch_uptime_seconds",
        "gauge",
        "Seconds since the service started.",
        s.uptime_seconds,
    );
    e.single(
        "auditwatch_rules_loaded",
        "gauge",
        "Rules in use.",
        s.rules_loaded as f64,
    );
    e.single(
        "auditwatch_rules_reload_pending",
        "gauge",
        "1 when rules re-read on SIGHUP differ from those in use and need a restart.",
        f64::from(u8::from(s.rules_reload_pending)),
    );
    e.family(
        "auditwatch_config_reloads_total",
        "counter",
        "SIGHUP reloads, by result (a failed one keeps the running configuration).",
    )
    .sample(
        "auditwatch_config_reloads_total",
        &[("result", "success")],
        s.reloads_ok as f64,
    )
    .sample(
        "auditwatch_config_reloads_total",
        &[("result", "failure")],
        s.reloads_failed as f64,
    );
    e.single(
        "auditwatch_config_last_reload_successful",
        "gauge",
        "0 when the last SIGHUP reload was rejected.",
        f64::from(u8::from(s.last_reload_ok)),
    );
    e.single(
        "auditwatch_config_last_reload_time_seconds",
        "gauge",
        "Unix time of the last reload attempt (0: none).",
        s.last_reload_time_seconds,
    );

    // ---- sources
    type Get = fn(&SourceSnap) -> Option<f64>;
    let per_source: [(&str, &str, &str, Get); 14] = [
        ("auditwatch_source_entries_total", "counter", "Lines received (socket) or read (file) and handed to analysis and archive.", |s| Some(s.entries as f64)),
        ("auditwatch_source_bytes_total", "counter", "Bytes received (socket) or read (file).", |s| Some(s.bytes as f64)),
        ("auditwatch_source_parse_errors_total", "counter", "Entries that are not valid JSON or UTF-8.", |s| s.parse_errors.map(|v| v as f64)),
        ("auditwatch_source_fragments_total", "counter", "Partial entries cut off by a closed connection or a file that ended without a newline (never analysed).", |s| Some(s.fragments as f64)),
        ("auditwatch_source_oversize_lines_total", "counter", "Entries longer than analysis.max_line_bytes (archived, not analysed).", |s| Some(s.oversize as f64)),
        ("auditwatch_source_ingest_shed_lines_total", "counter", "Lines dropped before the archive because the ingest queue stayed full (socket sources).", |s| Some(s.ingest_shed_lines as f64)),
        ("auditwatch_source_analysis_shed_lines_total", "counter", "Lines archived but not analysed because analysis fell behind (socket sources).", |s| Some(s.analysis_shed_lines as f64)),
        ("auditwatch_source_analysis_shed_bytes_total", "counter", "Bytes archived but not analysed because analysis fell behind.", |s| Some(s.analysis_shed_bytes as f64)),
        ("auditwatch_source_duplicates_dropped_total", "counter", "Entries Vault re-sent byte for byte (one finding kept).", |s| Some(s.duplicates_dropped as f64)),
        ("auditwatch_source_findings_total", "counter", "Findings from this source, before the cross-source merge.", |s| Some(s.findings as f64)),
        ("auditwatch_source_connections_open", "gauge", "Open connections (socket sources).", |s| s.connections_open.map(|v| v as f64)),
        ("auditwatch_source_connections_total", "counter", "Connections accepted (socket sources).", |s| s.connections_total.map(|v| v as f64)),
        ("auditwatch_source_connections_evicted_total", "counter", "Never-productive connections evicted at the connection limit.", |s| s.connections_evicted.map(|v| v as f64)),
        ("auditwatch_source_connections_refused_total", "counter", "Connections refused at the connection limit.", |s| s.connections_refused.map(|v| v as f64)),
    ];
    for (name, kind, help, get) in per_source {
        let rows: Vec<(&SourceSnap, f64)> = s
            .sources
            .iter()
            .filter_map(|src| get(src).map(|v| (src, v)))
            .collect();
        if rows.is_empty() {
            continue;
        }
        e.family(name, kind, help);
        for (src, v) in rows {
            e.sample(
                name,
                &[("source", src.name.as_str()), ("type", src.kind.as_str())],
                v,
            );
        }
    }
    type TailGet = fn(&TailSnap) -> f64;
    let per_tail: [(&str, &str, &str, TailGet); 9] = [
        (
            "auditwatch_tail_lag_bytes",
            "gauge",
            "Bytes written to the followed files and not yet read.",
            |t| t.lag_bytes as f64,
        ),
        (
            "auditwatch_tail_lag_seconds",
            "gauge",
            "How long the tailer has been behind the end of its files (0 when caught up).",
            |t| t.lag_seconds,
        ),
        (
            "auditwatch_tail_rotations_total",
            "counter",
            "Rotations of the followed file noticed.",
            |t| t.stats.rotations_detected as f64,
        ),
        (
            "auditwatch_tail_truncations_total",
            "counter",
            "Truncations (copytruncate, rewrites) noticed.",
            |t| t.stats.truncations_detected as f64,
        ),
        (
            "auditwatch_tail_files_opened_total",
            "counter",
            "Files opened at the path.",
            |t| t.stats.files_opened as f64,
        ),
        (
            "auditwatch_tail_read_errors_total",
            "counter",
            "Failed reads of the followed files.",
            |t| t.stats.read_errors as f64,
        ),
        (
            "auditwatch_tail_checkpoints_total",
            "counter",
            "Checkpoints written.",
            |t| t.stats.checkpoints_written as f64,
        ),
        (
            "auditwatch_tail_checkpoint_errors_total",
            "counter",
            "Checkpoints that could not be written.",
            |t| t.stats.checkpoint_errors as f64,
        ),
        (
            "auditwatch_tail_checkpoint_corrupt_total",
            "counter",
            "Corrupt checkpoints found at start (the file is re-read).",
            |t| t.stats.checkpoint_corrupt as f64,
        ),
    ];
    for (name, kind, help, get) in per_tail {
        let rows: Vec<(&str, f64)> = s
            .sources
            .iter()
            .filter_map(|src| src.tail.as_ref().map(|t| (src.name.as_str(), get(t))))
            .collect();
        if rows.is_empty() {
            continue;
        }
        e.family(name, kind, help);
        for (name_l, v) in rows {
            e.sample(name, &[("source", name_l)], v);
        }
    }

    // ---- findings
    let by_rule = |e: &mut Exposition, name: &str, map: &BTreeMap<(String, String), u64>| {
        for ((rule, sev), n) in map {
            e.sample(
                name,
                &[("rule", rule.as_str()), ("severity", sev.as_str())],
                *n as f64,
            );
        }
    };
    e.family(
        "auditwatch_findings_total",
        "counter",
        "Findings by rule and severity, one per event (after the cross-source merge, before suppression).",
    );
    by_rule(&mut e, "auditwatch_findings_total", &s.findings);
    e.family(
        "auditwatch_findings_reported_total",
        "counter",
        "Findings handed to the sinks, by rule and severity (suppression summaries included).",
    );
    by_rule(&mut e, "auditwatch_findings_reported_total", &s.reported);
    e.single(
        "auditwatch_findings_merged_total",
        "counter",
        "Findings dropped as the second report of one event (another source saw it first).",
        s.merged as f64,
    );
    e.single(
        "auditwatch_findings_suppressed_total",
        "counter",
        "Findings held by suppression and counted into a summary.",
        s.suppressed as f64,
    );
    e.single(
        "auditwatch_suppression_summaries_total",
        "counter",
        "Summary findings reported at the end of suppression windows.",
        s.suppression_summaries as f64,
    );
    e.single(
        "auditwatch_suppression_windows_open",
        "gauge",
        "Suppression windows open now.",
        s.suppression_windows as f64,
    );

    // ---- archive
    if !s.archives.is_empty() {
        e.family(
            "auditwatch_archive_disk_bytes",
            "gauge",
            "Bytes of the archive directory's files (live file, segments, manifest).",
        );
        for a in &s.archives {
            e.sample(
                "auditwatch_archive_disk_bytes",
                &[("source", a.source.as_str())],
                a.disk_bytes as f64,
            );
        }
        let free: Vec<_> = s
            .archives
            .iter()
            .filter_map(|a| a.free_bytes.map(|f| (a, f)))
            .collect();
        if !free.is_empty() {
            e.family(
                "auditwatch_archive_free_bytes",
                "gauge",
                "Bytes available on the archive's filesystem.",
            );
            for (a, f) in free {
                e.sample(
                    "auditwatch_archive_free_bytes",
                    &[("source", a.source.as_str())],
                    f as f64,
                );
            }
        }
        type ArchGet = fn(&ArchiveStats) -> u64;
        let per_archive: [(&str, &str, ArchGet); 7] = [
            (
                "auditwatch_archive_bytes_total",
                "Bytes written to the archive.",
                |a| a.bytes_written,
            ),
            (
                "auditwatch_archive_lines_total",
                "Lines written to the archive.",
                |a| a.lines_written,
            ),
            (
                "auditwatch_archive_rotations_total",
                "Rotations of the archive's live file.",
                |a| a.rotations,
            ),
            (
                "auditwatch_archive_dropped_bytes_total",
                "Bytes that could not be archived (disk full, I/O errors); counted exactly.",
                |a| a.dropped_bytes,
            ),
            (
                "auditwatch_archive_dropped_lines_total",
                "Lines that could not be archived.",
                |a| a.dropped_lines,
            ),
            (
                "auditwatch_archive_write_errors_total",
                "Failed archive writes, fsyncs, renames, compressions.",
                |a| a.write_errors,
            ),
            (
                "auditwatch_archive_segments_deleted_total",
                "Segments deleted by retention.",
                |a| a.segments_deleted,
            ),
        ];
        for (name, help, get) in per_archive {
            let rows: Vec<_> = s
                .archives
                .iter()
                .filter_map(|a| a.stats.as_ref().map(|st| (a.source.as_str(), get(st))))
                .collect();
            if rows.is_empty() {
                continue;
            }
            e.family(name, "counter", help);
            for (src, v) in rows {
                e.sample(name, &[("source", src)], v as f64);
            }
        }
    }

    // ---- sinks
    if !s.sinks.is_empty() {
        type SinkGet = fn(&SinkStats) -> u64;
        let per_sink: [(&str, &str, &str, SinkGet); 12] = [
            ("auditwatch_sink_accepted_total", "counter", "Findings that passed the sink's filter.", |x| x.accepted),
            ("auditwatch_sink_filtered_total", "counter", "Findings the sink's filter turned away.", |x| x.filtered),
            ("auditwatch_sink_deliveries_total", "counter", "Findings delivered.", |x| x.delivered),
            ("auditwatch_sink_failures_total", "counter", "Delivery attempts that failed.", |x| x.failed_attempts),
            ("auditwatch_sink_retries_total", "counter", "Delivery attempts after the first for the same findings.", |x| x.retries),
            ("auditwatch_sink_dropped_total", "counter", "Findings that will never be delivered (no room, rejected for good, undeliverable at shutdown).", |x| x.dropped),
            ("auditwatch_sink_rejected_total", "counter", "Of dropped: refused for good by the receiver.", |x| x.rejected),
            ("auditwatch_sink_queue_depth", "gauge", "Findings waiting in memory.", |x| x.queue_depth),
            ("auditwatch_sink_queue_capacity", "gauge", "The memory queue's capacity (queue_max).", |x| x.queue_max),
            ("auditwatch_sink_spool_bytes", "gauge", "Bytes of the sink's disk spool.", |x| x.spool_bytes),
            ("auditwatch_sink_spool_capacity_bytes", "gauge", "The spool's budget (spool_max_bytes).", |x| x.spool_max_bytes),
            ("auditwatch_sink_spool_pending", "gauge", "Findings waiting in the spool.", |x| x.spool_pending),
        ];
        for (name, kind, help, get) in per_sink {
            e.family(name, kind, help);
            for (st, _) in &s.sinks {
                e.sample(
                    name,
                    &[("sink", st.name.as_str()), ("type", st.kind.as_str())],
                    get(st) as f64,
                );
            }
        }
        e.family(
            "auditwatch_sink_healthy",
            "gauge",
            "1 when the sink delivers as it should (see /health for the reason when not).",
        );
        for (st, h) in &s.sinks {
            e.sample(
                "auditwatch_sink_healthy",
                &[("sink", st.name.as_str()), ("type", st.kind.as_str())],
                f64::from(u8::from(h.healthy)),
            );
        }
    }

    // ---- health
    e.family(
        "auditwatch_component_healthy",
        "gauge",
        "1 when the component is healthy (the checks of /health).",
    );
    for c in &s.checks {
        e.sample(
            "auditwatch_component_healthy",
            &[("component", c.component.as_str())],
            f64::from(u8::from(c.healthy)),
        );
    }
    e.single(
        "auditwatch_healthy",
        "gauge",
        "1 when /health answers 200.",
        f64::from(u8::from(s.checks.iter().all(|c| c.healthy))),
    );
    e.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every line is a comment or `name{labels} value` with a known family.
    fn check_format(text: &str) {
        let mut typed = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                assert!(typed.insert(name.to_string()), "family twice: {name}");
                assert!(name.starts_with("auditwatch_"), "{name}");
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(typed.contains(name), "sample before its TYPE: {line}");
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }

    #[test]
    fn renders_valid_text_format() {
        let mut s = Snapshot {
            sources: vec![
                SourceSnap {
                    name: "sock\"et".into(),
                    kind: "listen".into(),
                    entries: 5,
                    connections_open: Some(1),
                    ..SourceSnap::default()
                },
                SourceSnap {
                    name: "file".into(),
                    kind: "tail".into(),
                    tail: Some(TailSnap {
                        lag_seconds: 1.5,
                        ..TailSnap::default()
                    }),
                    ..SourceSnap::default()
                },
            ],
            archives: vec![ArchiveSnap {
                source: "socket".into(),
                disk_bytes: 10,
                free_bytes: Some(1),
                stats: Some(ArchiveStats::default()),
            }],
            checks: vec![Check {
                component: "source:file".into(),
                healthy: true,
                reason: None,
            }],
            ..Snapshot::default()
        };
        s.findings
            .insert(("login.failed".into(), "medium".into()), 3);
        let text = render(&s);
        check_format(&text);
        assert!(text.contains(
            "auditwatch_source_entries_total{source=\"sock\\\"et\",type=\"listen\"} 5\n"
        ));
        assert!(text.contains("auditwatch_tail_lag_seconds{source=\"file\"} 1.5\n"));
        assert!(text
            .contains("auditwatch_findings_total{rule=\"login.failed\",severity=\"medium\"} 3\n"));
        assert!(text.contains("auditwatch_healthy 1\n"));
        assert!(
            !text.contains("parse_errors"),
            "unknown values are left out"
        );
    }

    #[test]
    fn health_is_503_with_reasons() {
        let ok = health_response(&[]);
        assert_eq!(ok.status, 200);
        let bad = health_response(&[Check {
            component: "sink:siem".into(),
            healthy: false,
            reason: Some("webhook: 3 consecutive failures".into()),
        }]);
        assert_eq!(bad.status, 503);
        let v: serde_json::Value = serde_json::from_str(&bad.body).unwrap();
        assert_eq!(v["status"], "unhealthy");
        assert_eq!(
            v["reasons"][0],
            "sink:siem: webhook: 3 consecutive failures"
        );
    }
}
