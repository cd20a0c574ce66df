//! Sinks: where findings are delivered (stdout, rotating files, webhooks, syslog).
//!
//! ```text
//!                      ┌─ filter ─▶ [bounded queue] ─▶ stdout thread      (local: emit may wait ≤ max_block)
//! Sinks::emit(&Finding)┼─ filter ─▶ [bounded queue] ─▶ file thread        (rotating JSON lines, 0600)
//!   (any thread)       ├─ filter ─▶ [memory queue] ──▶ webhook thread ──▶ HTTP POST (retry, backoff, Retry-After)
//!                      │                 │ ▲
//!                      │           spill ▼ │ replay (oldest first)
//!                      │            [disk spool]        (network: emit never waits)
//!                      └─ filter ─▶ [memory queue] ──▶ syslog thread ───▶ RFC 5424 over udp/tcp/unix
//! ```
//!
//! Every sink has its own filter, bounded queue, thread(s), counters and health, so a
//! sink that is down or slow never slows the sources or the other sinks:
//!
//! * **Local sinks** (`stdout`, `file`) are fed through a bounded queue (`queue_max`). When it
//!   is full, [`Sinks::emit`] waits at most `max_block` (a brief, deliberate backpressure for a
//!   slow disk or terminal), then drops the finding and counts it; while the sink is failing
//!   or stalled it does not wait at all.
//! * **Network sinks** (`webhook`, `syslog`) never make `emit` wait. Findings go to a
//!   memory queue (`queue_max`); once it is more than half full, a spill thread moves the
//!   oldest findings (down to a quarter) to an on-disk **spool** (`spool_dir`, budget
//!   `spool_max_bytes`), and the delivery thread replays the spool, oldest first, before the
//!   memory queue. Failed deliveries are retried with exponential backoff and jitter
//!   (`backoff_initial` doubling up to `backoff_max`; a `Retry-After` answer is honoured, up
//!   to 10 minutes), forever: a finding is only given up when the receiver rejects it for
//!   good (HTTP 400, 413, 415, 422; a datagram too large) or when it finds neither memory nor
//!   spool room. Both are counted as `dropped`. Memory stays
//!   bounded through any outage: at most `queue_max` findings queued, plus one batch being
//!   sent and one being written to the spool.
//! * Delivery is **at least once**: the spool's read position is committed after delivery
//!   (persisted at most every 200 ms, when a segment is used up and at shutdown), so a crash
//!   can deliver a few findings twice; the
//!   finding `id` lets receivers drop duplicates. Order is kept, except that findings waiting
//!   in memory may overtake ones being spilled.
//! * [`Sinks::shutdown`] delivers what it can within its deadline, then (in the last quarter
//!   of it, at most 1 s) spools what is still queued, to be delivered by the next start.
//!
//! Local I/O and network I/O run on the sinks' own threads (blocking I/O with timeouts), so a
//! busy async runtime can never delay an alert, and `emit` may be called from any thread.
//!
//! # Configuration (TOML)
//!
//! Sinks are an array of tables. `name` and `type` are required; everything else has a
//! default. Unknown keys are errors.
//!
//! ```toml
//! # Readable lines on stdout for an operator's terminal (or JSON lines: format = "json").
//! [[sinks]]
//! name = "console"
//! type = "stdout"
//! format = "text"            # "json" (default) or "text"
//! # color = true             # text only; default: when stdout is a terminal
//!
//! # Rotating JSON lines file, 0600, directory created 0700; symlinks refused.
//! [[sinks]]
//! name = "findings-file"
//! type = "file"
//! path = "/var/lib/auditwatch/findings.jsonl"
//! max_bytes = "64MiB"        # rotate when the next finding would pass it (default 64MiB)
//! keep = 5                   # findings.jsonl.1 … .5 (default 5; 0 keeps none)
//!
//! # Generic webhook: the finding JSON, or {"findings":[…]} when batched; HMAC-signed.
//! [[sinks]]
//! name = "siem"
//! type = "webhook"
//! url = "https://siem.example.com/hooks/auditwatch"
//! template = "generic"       # or "slack": {"text": "…readable summary…"}
//! batch_max = 50             # findings per request (default 1: one finding per request)
//! batch_wait = "2s"          # wait at most this long to fill a batch (default 1s)
//! secret_env = "AUDITWATCH_WEBHOOK_SECRET"   # or secret = "…" (keeps it in this file)
//! headers = { Authorization = "Bearer abc123" }
//! # ca_file = "/etc/ssl/internal-ca.pem"     # trust these roots instead of the built-in Mozilla set
//! timeout = "10s"            # per attempt: connect, send and answer (default 10s)
//! spool_max_bytes = "256MiB" # disk budget for an outage (default 64MiB; 0: no spool)
//! [sinks.filter]
//! min_severity = "high"
//!
//! # Slack incoming webhook: critical findings only.
//! [[sinks]]
//! name = "slack"
//! type = "webhook"
//! url = "https://hooks.slack.com/services/T000/B000/XXXX"
//! template = "slack"
//! filter = { min_severity = "critical" }
//!
//! # RFC 5424 syslog: udp, tcp (octet counting, RFC 6587), unix_datagram, unix_stream.
//! [[sinks]]
//! name = "syslog"
//! type = "syslog"
//! protocol = "tcp"           # default "udp"
//! address = "logs.example.com:6514"   # host:port, or a socket path for unix_*
//! facility = "auth"          # kern user mail daemon auth syslog lpr news uucp cron authpriv
//!                            # ftp local0 … local7 (default "auth")
//! app_name = "auditwatch"    # default "auditwatch"
//! # hostname = "vault-1"     # default: the machine's host name
//! # framing = "newline"      # stream protocols only; default "octet_counting"
//! filter = { categories = ["root_token", "privileged_endpoint"], rules = ["auth.*"] }
//!
//! # /dev/log style local syslog daemon.
//! [[sinks]]
//! name = "local-syslog"
//! type = "syslog"
//! protocol = "unix_datagram"
//! address = "/dev/log"
//! ```
//!
//! Settings common to every sink:
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `filter` | everything | `min_severity` (`info` … `critical`), `categories` (any of), `rules` (any of; `prefix*` matches a prefix); all given conditions must hold, an empty list matches everything |
//! | `queue_max` | 10000 | findings held in memory for this sink |
//! | `max_block` | `1s` | local sinks: longest `emit` waits for room in a full queue before dropping |
//! | `timeout` | `10s` | network sinks: one delivery attempt (connect, send, answer) |
//! | `backoff_initial`, `backoff_max` | `500ms`, `60s` | retry delays, doubling, with jitter |
//! | `degraded_after` | 3 | consecutive failed attempts before health turns degraded |
//! | `spool_dir` | `auditwatch-data/spool/<name>` | network sinks: the spool directory (relative to the working directory) |
//! | `spool_max_bytes` | `64MiB` | network sinks: disk budget of the spool; `0` disables it |
//!
//! Durations are strings with a unit (`500ms`, `10s`, `5m`, `1h`) or integer seconds; sizes
//! are strings (`64MiB`, `512KiB`, `1GiB`) or integer bytes. Sink names are unique, of
//! `A-Z a-z 0-9 . _ -` (they name the spool directory). One process per spool directory.
//!
//! # The webhook signature
//!
//! With `secret` or `secret_env`, every request carries
//!
//! * `X-Auditwatch-Timestamp`: the Unix time of the attempt, in seconds;
//! * `X-Auditwatch-Signature`: `sha256=` and the hex HMAC-SHA256, keyed with the secret, of
//!   the timestamp, a `.` and the exact request body bytes.
//!
//! The receiver recomputes the HMAC over the raw body (before parsing it), compares in
//! constant time, and rejects a timestamp more than a few minutes away from its clock, so a
//! captured request cannot be replayed later; a replay inside that window carries findings
//! whose `id` it has already seen. Retries are signed anew. In Python:
//!
//! ```python
//! import hashlib, hmac, time
//!
//! def verify(secret: bytes, headers, body: bytes, max_skew: int = 300) -> bool:
//!     ts = headers.get("X-Auditwatch-Timestamp", "")
//!     sig = headers.get("X-Auditwatch-Signature", "")
//!     if not ts.isdigit() or abs(time.time() - int(ts)) > max_skew:
//!         return False                      # missing, stale or future: a replay
//!     mac = hmac.new(secret, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
//!     return hmac.compare_digest("sha256=" + mac, sig)
//! ```
//!
//! or in a shell: `printf '%s.%s' "$ts" "$body" | openssl dgst -sha256 -hmac "$secret"`.
//!
//! # Syslog messages
//!
//! `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG` (RFC 5424): PRI is
//! `facility × 8 + severity` with critical → crit (2), high → err (3), medium → warning (4),
//! low → notice (5), info → info (6); MSGID is the rule id (printable ASCII, at most 32
//! characters); MSG is the finding JSON with every non-ASCII character escaped (`\uXXXX`), so
//! it is plain ASCII and needs no BOM. Over TCP and unix streams each message is framed as
//! `LENGTH SP MESSAGE` (octet counting, RFC 6587), so large findings pass whole; datagrams
//! carry one message each (a finding too large for a datagram is dropped and counted: use
//! TCP for those).
//!
//! # Counters and health
//!
//! [`SinkStats`]: `accepted` (passed the filter), `filtered`, `delivered`, `failed_attempts`,
//! `retries`, `dropped` (never to be delivered; `rejected` counts those refused for good by the
//! receiver), `queue_depth`, `inflight`, `spooled`, `spool_pending`, `spool_bytes`,
//! `recovered` (found in the spool at start). Once nothing is queued,
//! `accepted + recovered = delivered + dropped + spool_pending`.
//!
//! [`SinkHealth`] is degraded after `degraded_after` consecutive failed attempts (reason e.g.
//! `webhook: 5 consecutive failures: connection refused`) and for a minute after a finding
//! was dropped.

mod file;
mod local;
mod net;
mod spool;
mod stdout;
mod syslog;
mod webhook;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Deserializer, Serialize};

use crate::finding::{Finding, Severity};

pub use file::FileConfig;
pub use stdout::{StdoutConfig, StdoutFormat};
pub use syslog::{Facility, SyslogConfig, SyslogFraming, SyslogProtocol};
pub use webhook::{signature, WebhookConfig, WebhookTemplate, SIGNATURE_HEADER, TIMESTAMP_HEADER};

/// Default memory queue length of every sink, in findings.
pub const DEFAULT_QUEUE_MAX: usize = 10_000;
/// Default longest wait of `emit` on a full local sink.
pub const DEFAULT_MAX_BLOCK: Duration = Duration::from_secs(1);
/// Default timeout of one network delivery attempt.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default first retry delay.
pub const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_millis(500);
/// Default longest retry delay.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Default disk budget of a network sink's spool.
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 64 << 20;
/// Default consecutive failures before a sink reports itself degraded.
pub const DEFAULT_DEGRADED_AFTER: u32 = 3;
/// Longest `Retry-After` honoured.
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(600);
/// How long a drop keeps a sink degraded.
const DROP_DEGRADES_FOR: Duration = Duration::from_secs(60);

/// One sink: its kind, filter and queueing, retry and spool settings (see the module docs for
/// the TOML shape). Build it from TOML, or with [`SinkConfig::new`] and then set fields.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawSinkConfig")]
pub struct SinkConfig {
    pub name: String,
    pub kind: SinkKind,
    pub filter: Filter,
    /// Findings held in memory (default [`DEFAULT_QUEUE_MAX`]).
    pub queue_max: usize,
    /// Local sinks: longest wait of `emit` for room (default [`DEFAULT_MAX_BLOCK`]).
    pub max_block: Duration,
    /// Network sinks: one delivery attempt (default [`DEFAULT_TIMEOUT`]).
    pub timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Consecutive failed attempts before health turns degraded.
    pub degraded_after: u32,
    /// Network sinks: the spool directory (default `auditwatch-data/spool/<name>`).
    pub spool_dir: Option<PathBuf>,
    /// Network sinks: disk budget of the spool; 0 disables it.
    pub spool_max_bytes: u64,
}

impl SinkConfig {
    /// A sink with every default and no filter.
    pub fn new(name: impl Into<String>, kind: SinkKind) -> SinkConfig {
        SinkConfig {
            name: name.into(),
            kind,
            filter: Filter::default(),
            queue_max: DEFAULT_QUEUE_MAX,
            max_block: DEFAULT_MAX_BLOCK,
            timeout: DEFAULT_TIMEOUT,
            backoff_initial: DEFAULT_BACKOFF_INITIAL,
            backoff_max: DEFAULT_BACKOFF_MAX,
            degraded_after: DEFAULT_DEGRADED_AFTER,
            spool_dir: None,
            spool_max_bytes: DEFAULT_SPOOL_MAX_BYTES,
        }
    }

    /// The spool directory this sink uses (network sinks with a spool budget).
    pub fn effective_spool_dir(&self) -> Option<PathBuf> {
        if !self.kind.is_network() || self.spool_max_bytes == 0 {
            return None;
        }
        Some(self.spool_dir.clone().unwrap_or_else(|| {
            PathBuf::from("auditwatch-data")
                .join("spool")
                .join(&self.name)
        }))
    }

    fn validate(&self) -> anyhow::Result<()> {
        let n = &self.name;
        if n.is_empty()
            || n.len() > 64
            || n.starts_with('.')
            || !n
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            bail!("sink name {n:?}: use 1-64 of A-Z a-z 0-9 . _ - (not starting with '.')");
        }
        if self.queue_max == 0 {
            bail!("sink {n}: queue_max must be at least 1");
        }
        if self.backoff_initial.is_zero() || self.backoff_max < self.backoff_initial {
            bail!("sink {n}: need 0 < backoff_initial <= backoff_max");
        }
        if self.timeout.is_zero() {
            bail!("sink {n}: timeout must be positive");
        }
        Ok(())
    }
}

/// What a sink is, with its own settings. TOML: `type = "stdout" | "file" | "webhook" |
/// "syslog"` beside the other keys of the sink's table.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SinkKind {
    Stdout(StdoutConfig),
    File(FileConfig),
    Webhook(WebhookConfig),
    Syslog(SyslogConfig),
}

impl SinkKind {
    pub fn name(&self) -> &'static str {
        match self {
            SinkKind::Stdout(_) => "stdout",
            SinkKind::File(_) => "file",
            SinkKind::Webhook(_) => "webhook",
            SinkKind::Syslog(_) => "syslog",
        }
    }

    /// Network sinks never make `emit` wait and spool during outages.
    pub fn is_network(&self) -> bool {
        matches!(self, SinkKind::Webhook(_) | SinkKind::Syslog(_))
    }
}

/// Which findings a sink takes. Every condition given must hold.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// At least this severity.
    pub min_severity: Option<Severity>,
    /// One of these categories (empty: any).
    #[serde(default)]
    pub categories: Vec<String>,
    /// One of these rule ids; `prefix*` matches every id starting with `prefix` (empty: any).
    #[serde(default)]
    pub rules: Vec<String>,
}

impl Filter {
    pub fn accepts(&self, f: &Finding) -> bool {
        if self.min_severity.is_some_and(|m| f.severity < m) {
            return false;
        }
        if !self.categories.is_empty() && !self.categories.contains(&f.category) {
            return false;
        }
        self.rules.is_empty()
            || self.rules.iter().any(|r| match r.strip_suffix('*') {
                Some(prefix) => f.rule.starts_with(prefix),
                None => *r == f.rule,
            })
    }
}

/// The TOML shape: common keys here, the rest (with `type`) is the [`SinkKind`], whose
/// variants reject unknown keys. (`flatten` and `deny_unknown_fields` do not combine in serde.)
#[derive(Deserialize)]
struct RawSinkConfig {
    name: String,
    #[serde(default)]
    filter: Filter,
    queue_max: Option<usize>,
    max_block: Option<Dur>,
    timeout: Option<Dur>,
    backoff_initial: Option<Dur>,
    backoff_max: Option<Dur>,
    degraded_after: Option<u32>,
    spool_dir: Option<PathBuf>,
    spool_max_bytes: Option<Size>,
    #[serde(flatten)]
    rest: BTreeMap<String, toml::Value>,
}

impl TryFrom<RawSinkConfig> for SinkConfig {
    type Error = String;

    fn try_from(raw: RawSinkConfig) -> Result<SinkConfig, String> {
        let name = raw.name;
        let table: toml::Table = raw.rest.into_iter().collect();
        let kind = SinkKind::deserialize(toml::Value::Table(table))
            .map_err(|e| format!("sink {name:?}: {}", e.message().trim_end()))?;
        let network = kind.is_network();
        let only = |set: bool, key: &str, net: bool| -> Result<(), String> {
            if set && net != network {
                let which = if net { "network" } else { "local" };
                Err(format!(
                    "sink {name:?}: `{key}` applies to {which} sinks only, not to type {:?}",
                    kind.name()
                ))
            } else {
                Ok(())
            }
        };
        only(raw.max_block.is_some(), "max_block", false)?;
        only(raw.timeout.is_some(), "timeout", true)?;
        only(raw.spool_dir.is_some(), "spool_dir", true)?;
        only(raw.spool_max_bytes.is_some(), "spool_max_bytes", true)?;
        let mut c = SinkConfig::new(name, kind);
        c.filter = raw.filter;
        c.queue_max = raw.queue_max.unwrap_or(c.queue_max);
        c.max_block = raw.max_block.map_or(c.max_block, |d| d.0);
        c.timeout = raw.timeout.map_or(c.timeout, |d| d.0);
        c.backoff_initial = raw.backoff_initial.map_or(c.backoff_initial, |d| d.0);
        c.backoff_max = raw.backoff_max.map_or(c.backoff_max, |d| d.0);
        c.degraded_after = raw.degraded_after.unwrap_or(c.degraded_after);
        c.spool_dir = raw.spool_dir;
        c.spool_max_bytes = raw.spool_max_bytes.map_or(c.spool_max_bytes, |s| s.0);
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }
}

/// A duration: `"500ms"`, `"10s"`, `"5m"`, `"1h"`, or integer seconds.
#[derive(Debug, Clone, Copy)]
struct Dur(Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum R {
            N(u64),
            S(String),
        }
        match R::deserialize(d)? {
            R::N(n) => Ok(Dur(Duration::from_secs(n))),
            R::S(s) => crate::rules::parse_duration(&s)
                .map(Dur)
                .map_err(serde::de::Error::custom),
        }
    }
}

pub(crate) fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    Dur::deserialize(d).map(|d| d.0)
}

pub(crate) fn de_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Size::deserialize(d).map(|s| s.0)
}

use crate::config::Size;

// ---------------------------------------------------------------------------------------------
// Counters and health, shared by the sink threads and the `Sinks` handle
// ---------------------------------------------------------------------------------------------

/// A sink's counters, as reported by [`Sinks::stats`] and [`Sinks::shutdown`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SinkStats {
    pub name: String,
    pub kind: String,
    /// Findings that passed the filter.
    pub accepted: u64,
    /// Findings the filter turned away.
    pub filtered: u64,
    pub delivered: u64,
    /// Delivery attempts that failed (each retry that fails counts again).
    pub failed_attempts: u64,
    /// Attempts after the first for the same findings.
    pub retries: u64,
    /// Findings that will never be delivered: no room in memory or spool, rejected for good by
    /// the receiver, unreadable in the spool, or still queued when shutdown had to give up.
    pub dropped: u64,
    /// Of `dropped`, those the receiver refused for good.
    pub rejected: u64,
    /// Findings waiting in memory now.
    pub queue_depth: u64,
    pub queue_max: u64,
    /// Findings taken from memory for a delivery attempt now.
    pub inflight: u64,
    /// Findings written to the spool, in total.
    pub spooled: u64,
    /// Findings waiting in the spool now.
    pub spool_pending: u64,
    /// Bytes of the spool's files now.
    pub spool_bytes: u64,
    pub spool_max_bytes: u64,
    /// Findings found waiting in the spool at start (from an earlier run).
    pub recovered: u64,
    /// The last error, if any attempt failed.
    pub last_error: Option<String>,
}

/// Whether a sink delivers as it should.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SinkHealth {
    pub name: String,
    pub kind: String,
    pub healthy: bool,
    /// Why it is degraded, e.g. `webhook: 5 consecutive failures: connection refused`.
    pub reason: Option<String>,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub accepted: AtomicU64,
    pub filtered: AtomicU64,
    pub delivered: AtomicU64,
    pub failed_attempts: AtomicU64,
    pub retries: AtomicU64,
    pub dropped: AtomicU64,
    pub rejected: AtomicU64,
    pub spooled: AtomicU64,
    pub recovered: AtomicU64,
    pub consecutive_failures: AtomicU64,
}

pub(crate) fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Counters plus the health-relevant last events of one sink.
#[derive(Debug)]
pub(crate) struct SinkState {
    pub name: String,
    pub kind: &'static str,
    pub degraded_after: u32,
    pub c: Counters,
    last_error: Mutex<Option<String>>,
    last_drop: Mutex<Option<(Instant, String)>>,
}

impl SinkState {
    pub fn new(name: &str, kind: &'static str, degraded_after: u32) -> SinkState {
        SinkState {
            name: name.to_string(),
            kind,
            degraded_after,
            c: Counters::default(),
            last_error: Mutex::new(None),
            last_drop: Mutex::new(None),
        }
    }

    /// A delivery attempt failed.
    pub fn failure(&self, msg: &str) {
        add(&self.c.failed_attempts, 1);
        let n = self.c.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(msg.to_string());
        }
        if n == u64::from(self.degraded_after.max(1)) {
            tracing::warn!(sink = %self.name, kind = self.kind, failures = n, error = msg,
                "sink degraded");
        }
    }

    /// A delivery attempt succeeded.
    pub fn success(&self, delivered: u64) {
        add(&self.c.delivered, delivered);
        let before = self.c.consecutive_failures.swap(0, Ordering::Relaxed);
        if before >= u64::from(self.degraded_after.max(1)) {
            tracing::info!(sink = %self.name, kind = self.kind, "sink recovered");
        }
    }

    /// `n` findings will never be delivered.
    pub fn drop_findings(&self, n: u64, why: &str) {
        if n == 0 {
            return;
        }
        add(&self.c.dropped, n);
        if let Ok(mut d) = self.last_drop.lock() {
            let first = match d.as_ref() {
                None => true,
                Some((at, _)) => at.elapsed() >= DROP_DEGRADES_FOR,
            };
            *d = Some((Instant::now(), why.to_string()));
            if first {
                tracing::warn!(sink = %self.name, kind = self.kind, dropped = n, reason = why,
                    "sink dropping findings (counted; at most one warning a minute)");
            }
        }
    }

    pub fn health(&self) -> SinkHealth {
        let n = get(&self.c.consecutive_failures);
        let mut reason = None;
        if n >= u64::from(self.degraded_after.max(1)) {
            let err = self
                .last_error
                .lock()
                .ok()
                .and_then(|e| e.clone())
                .unwrap_or_default();
            reason = Some(format!("{}: {n} consecutive failures: {err}", self.kind));
        } else if let Ok(d) = self.last_drop.lock() {
            if let Some((at, why)) = d.as_ref() {
                if at.elapsed() < DROP_DEGRADES_FOR {
                    reason = Some(format!("{}: dropping findings: {why}", self.kind));
                }
            }
        }
        SinkHealth {
            name: self.name.clone(),
            kind: self.kind.to_string(),
            healthy: reason.is_none(),
            reason,
        }
    }

    /// True while attempts fail (local sinks then stop making `emit` wait).
    pub fn failing(&self) -> bool {
        get(&self.c.consecutive_failures) > 0
    }

    pub fn stats(&self) -> SinkStats {
        SinkStats {
            name: self.name.clone(),
            kind: self.kind.to_string(),
            accepted: get(&self.c.accepted),
            filtered: get(&self.c.filtered),
            delivered: get(&self.c.delivered),
            failed_attempts: get(&self.c.failed_attempts),
            retries: get(&self.c.retries),
            dropped: get(&self.c.dropped),
            rejected: get(&self.c.rejected),
            spooled: get(&self.c.spooled),
            recovered: get(&self.c.recovered),
            last_error: self.last_error.lock().ok().and_then(|e| e.clone()),
            ..SinkStats::default()
        }
    }
}

/// Exponential backoff with jitter: attempt `n` (1-based) waits between half and all of
/// `initial × 2^(n-1)`, capped at `max`.
pub(crate) fn backoff(initial: Duration, max: Duration, attempt: u32) -> Duration {
    let exp = initial.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let full = exp.min(max);
    let half = full / 2;
    half + half.mul_f64(random_unit())
}

/// A random number in [0, 1) (jitter only: std's per-instance random hash keys).
pub(crate) fn random_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(Instant::now().elapsed().as_nanos() as u64);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Unix time in seconds.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

// ---------------------------------------------------------------------------------------------
// The set of sinks
// ---------------------------------------------------------------------------------------------

enum Runner {
    Local(local::LocalSink),
    Net(net::NetSink),
}

struct Entry {
    filter: Filter,
    state: Arc<SinkState>,
    runner: Runner,
}

/// Every configured sink, started.
pub struct Sinks {
    entries: Vec<Entry>,
}

impl Sinks {
    /// Starts every sink: checks its settings, opens files and spools, and starts its threads.
    /// Fails on a bad setting, an unusable file or spool (a symlink, say) or a missing
    /// `secret_env` variable; network receivers being down is not an error.
    ///
    /// The runtime handle is accepted for the service's convenience; the sinks run on their
    /// own threads (blocking I/O with timeouts), so no runtime load can delay them.
    pub fn start(configs: Vec<SinkConfig>, rt: &tokio::runtime::Handle) -> anyhow::Result<Sinks> {
        let _ = rt;
        let mut names = HashSet::new();
        let mut spools = HashSet::new();
        for c in &configs {
            c.validate()?;
            if !names.insert(c.name.clone()) {
                bail!("two sinks are named {:?}", c.name);
            }
            if let Some(dir) = c.effective_spool_dir() {
                if !spools.insert(dir.clone()) {
                    bail!("sink {}: spool_dir {} is used twice", c.name, dir.display());
                }
            }
        }
        let mut sinks = Sinks {
            entries: Vec::with_capacity(configs.len()),
        };
        for c in configs {
            match Self::start_one(&c) {
                Ok(entry) => sinks.entries.push(entry),
                Err(e) => {
                    // Stop the ones already running (what they queued goes to their spools).
                    sinks.shutdown(Duration::from_millis(200));
                    return Err(e);
                }
            }
        }
        Ok(sinks)
    }

    fn start_one(c: &SinkConfig) -> anyhow::Result<Entry> {
        let state = Arc::new(SinkState::new(&c.name, c.kind.name(), c.degraded_after));
        let runner = match &c.kind {
            SinkKind::Stdout(s) => {
                let w = Box::new(stdout::StdoutWriter::new(s));
                Runner::Local(local::LocalSink::start(c, state.clone(), w)?)
            }
            SinkKind::File(f) => {
                let w = file::FileWriter::open(f)
                    .with_context(|| format!("sink {}: file {}", c.name, f.path.display()))?;
                Runner::Local(local::LocalSink::start(c, state.clone(), Box::new(w))?)
            }
            SinkKind::Webhook(w) => {
                let t = webhook::Webhook::new(w, c.timeout)
                    .with_context(|| format!("sink {}", c.name))?;
                Runner::Net(net::NetSink::start(c, state.clone(), Box::new(t))?)
            }
            SinkKind::Syslog(s) => {
                let t = syslog::Syslog::new(s, c.timeout)
                    .with_context(|| format!("sink {}", c.name))?;
                Runner::Net(net::NetSink::start(c, state.clone(), Box::new(t))?)
            }
        };
        Ok(Entry {
            filter: c.filter.clone(),
            state,
            runner,
        })
    }

    /// Hands a finding to every sink whose filter accepts it. Never waits on a network sink;
    /// may wait up to `max_block` on a full local one (stdout, file).
    pub fn emit(&self, f: &Finding) {
        let mut shared: Option<Arc<Finding>> = None;
        for e in &self.entries {
            if !e.filter.accepts(f) {
                add(&e.state.c.filtered, 1);
                continue;
            }
            add(&e.state.c.accepted, 1);
            let item = shared.get_or_insert_with(|| Arc::new(f.clone())).clone();
            match &e.runner {
                Runner::Local(l) => l.push(item),
                Runner::Net(n) => n.push(item),
            }
        }
    }

    /// The counters of every sink, in configuration order.
    pub fn stats(&self) -> Vec<SinkStats> {
        self.entries.iter().map(Entry::stats).collect()
    }

    /// The health of every sink, in configuration order.
    pub fn health(&self) -> Vec<SinkHealth> {
        self.entries.iter().map(|e| e.state.health()).collect()
    }

    /// Names of the sinks, in configuration order.
    pub fn names(&self) -> Vec<String> {
        self.entries.iter().map(|e| e.state.name.clone()).collect()
    }

    /// Delivers what is queued within `deadline`; what network sinks could not deliver by the
    /// last quarter of it (at most the last second) goes to their spools for the next start.
    /// Returns the final counters. Call it from outside async code (or in `spawn_blocking`).
    pub fn shutdown(mut self, deadline: std::time::Duration) -> Vec<SinkStats> {
        let start = Instant::now();
        let end = start + deadline;
        let reserve = (deadline / 4).min(Duration::from_secs(1));
        let close_at = end - reserve;
        let mut entries = std::mem::take(&mut self.entries);
        for e in &mut entries {
            match &mut e.runner {
                Runner::Local(l) => l.close(),
                Runner::Net(n) => n.drain(),
            }
        }
        // Deliver until everything is out or the closing time comes.
        while Instant::now() < close_at && !entries.iter().all(Entry::idle) {
            std::thread::sleep(Duration::from_millis(5));
        }
        for e in &entries {
            if let Runner::Net(n) = &e.runner {
                n.close();
            }
        }
        for e in &mut entries {
            match &mut e.runner {
                Runner::Local(l) => l.join(end),
                Runner::Net(n) => n.join(end),
            }
        }
        entries.iter().map(Entry::stats).collect()
    }
}

impl Entry {
    fn stats(&self) -> SinkStats {
        let mut s = self.state.stats();
        match &self.runner {
            Runner::Local(l) => l.fill_stats(&mut s),
            Runner::Net(n) => n.fill_stats(&mut s),
        }
        s
    }

    fn idle(&self) -> bool {
        match &self.runner {
            Runner::Local(l) => l.finished(),
            Runner::Net(n) => n.finished(),
        }
    }
}

/// Dropped without [`Sinks::shutdown`]: network sinks stop and spool what they hold.
impl Drop for Sinks {
    fn drop(&mut self) {
        for e in &self.entries {
            if let Runner::Net(n) = &e.runner {
                n.close();
            }
        }
    }
}

impl std::fmt::Debug for Sinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Doc {
        sinks: Vec<SinkConfig>,
    }

    #[test]
    fn module_doc_example_parses() {
        let src = include_str!("mod.rs");
        let start = src.find("//! ```toml\n").unwrap() + "//! ```toml\n".len();
        let end = start + src[start..].find("//! ```\n").unwrap();
        let toml_src: String = src[start..end]
            .lines()
            .map(|l| {
                l.strip_prefix("//! ")
                    .unwrap_or(l.trim_start_matches("//!"))
            })
            .collect::<Vec<_>>()
            .join("\n");
        let doc: Doc = toml::from_str(&toml_src).unwrap();
        let kinds: Vec<_> = doc.sinks.iter().map(|s| s.kind.name()).collect();
        assert_eq!(
            kinds,
            ["stdout", "file", "webhook", "webhook", "syslog", "syslog"]
        );
        let siem = &doc.sinks[2];
        assert_eq!(siem.filter.min_severity, Some(Severity::High));
        assert_eq!(siem.spool_max_bytes, 256 << 20);
        assert_eq!(siem.timeout, Duration::from_secs(10));
        match &siem.kind {
            SinkKind::Webhook(w) => {
                assert_eq!(w.batch_max, 50);
                assert_eq!(w.batch_wait, Duration::from_secs(2));
                assert_eq!(w.headers["Authorization"], "Bearer abc123");
            }
            _ => unreachable!(),
        }
        match &doc.sinks[4].kind {
            SinkKind::Syslog(s) => {
                assert_eq!(s.protocol, SyslogProtocol::Tcp);
                assert_eq!(s.facility, Facility::Auth);
            }
            _ => unreachable!(),
        }
        assert_eq!(doc.sinks[4].filter.rules, ["auth.*"]);
    }

    #[test]
    fn unknown_keys_and_misplaced_settings_are_errors() {
        let bad = [
            (
                "name = \"a\"\ntype = \"stdout\"\nformatt = \"json\"",
                "formatt",
            ),
            (
                "name = \"a\"\ntype = \"webhook\"\nurl = \"http://x\"\nbatch = 3",
                "batch",
            ),
            ("name = \"a\"\ntype = \"carrier_pigeon\"", "carrier_pigeon"),
            (
                "name = \"a\"\ntype = \"file\"\npath = \"/tmp/x\"\nspool_max_bytes = 5",
                "spool_max_bytes",
            ),
            (
                "name = \"a\"\ntype = \"syslog\"\naddress = \"h:1\"\nmax_block = \"1s\"",
                "max_block",
            ),
            (
                "name = \"a\"\ntype = \"stdout\"\nfilter = { min_severity = \"urgent\" }",
                "urgent",
            ),
            (
                "name = \"a\"\ntype = \"stdout\"\nfilter = { severity = \"high\" }",
                "severity",
            ),
            ("name = \"a/b\"\ntype = \"stdout\"", "sink name"),
            ("name = \"a\"", "type"),
        ];
        for (src, needle) in bad {
            let e = toml::from_str::<SinkConfig>(src).unwrap_err().to_string();
            assert!(e.contains(needle), "{src:?}: {e}");
        }
    }

    #[test]
    fn durations_and_sizes() {
        let c: SinkConfig = toml::from_str(
            "name = \"w\"\ntype = \"webhook\"\nurl = \"http://127.0.0.1:1/\"\ntimeout = 3\n\
             backoff_initial = \"250ms\"\nspool_max_bytes = 4096\nqueue_max = 7",
        )
        .unwrap();
        assert_eq!(c.timeout, Duration::from_secs(3));
        assert_eq!(c.backoff_initial, Duration::from_millis(250));
        assert_eq!(c.spool_max_bytes, 4096);
        assert_eq!(c.queue_max, 7);
        assert_eq!(
            c.effective_spool_dir().unwrap(),
            PathBuf::from("auditwatch-data/spool/w")
        );
        assert_eq!(crate::config::parse_size("1GiB").unwrap(), 1 << 30);
        assert!(crate::config::parse_size("1PiB").is_err());
    }

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let (i, m) = (Duration::from_millis(100), Duration::from_secs(1));
        for _ in 0..100 {
            let b1 = backoff(i, m, 1);
            assert!(b1 >= Duration::from_millis(50) && b1 <= i);
            let b3 = backoff(i, m, 3);
            assert!(b3 >= Duration::from_millis(200) && b3 <= Duration::from_millis(400));
            assert!(backoff(i, m, 40) <= m);
        }
        let r: Vec<f64> = (0..10).map(|_| random_unit()).collect();
        assert!(r.iter().all(|x| (0.0..1.0).contains(x)));
        assert!(r.windows(2).any(|w| w[0] != w[1]));
    }
}
