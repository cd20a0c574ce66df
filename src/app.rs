//! `auditwatch run`: every source, the rules, the archive, the sinks, metrics and health in one
//! long-lived process, configured by one file ([`crate::config`]).
//!
//! ```text
//!  listen source "socket" ─▶ Pipeline (ShedAnalysis, archive) ─┐ judge threads call
//!  listen source …        ─▶ Pipeline …                        ├─▶ Flow::emit
//!  tail source "file"     ─▶ Pipeline (Wait, no archive)      ─┘     │
//!                                                                    ▼
//!        Merger: the same (rule, type, request.id, path) from another source within
//!                merge.window is dropped (each event reported once)
//!                                                                    ▼
//!        Suppressor: same rule + actor within the rule's window → held; one summary
//!                    at the window's end (ticker, every second)
//!                                                                    ▼
//!        SinkSet: one `Sinks` per configured sink (own queue, threads, spool), so a
//!                 reload restarts only the sinks whose table changed
//!
//!  tokio runtime (2 workers): socket listeners, /metrics + /health, signals
//!  main thread: control loop — SIGHUP reload, SIGTERM/SIGINT drain, 1 s ticks
//! ```
//!
//! * Each source has its own [`Pipeline`]: a socket source never waits (shed analysis, the
//!   archive keeps the bytes), a file source waits (the file waits on disk and its checkpoint
//!   does not move). Per-source pipelines also give per-source counters.
//! * Findings are handed to the sinks on the judge thread that produced them: the sinks have
//!   their own bounded queues, so a tail checkpoint moves once its findings are queued for
//!   every sink (network sinks spool what they cannot deliver).
//! * **Reload** (SIGHUP): archives reopen their live file (for an external logrotate) at once;
//!   then the file and the rules are re-read and validated. Anything invalid is logged and
//!   the running configuration kept. Applied live: sinks (those whose table changed are
//!   restarted; a network sink spools what is queued and the new one replays it), suppression,
//!   merge window, log level, drain timeout. Sources, archive settings, analysis settings and
//!   the metrics address need a restart (a warning says so). Changed rules and watch lists go
//!   into every running [`Pipeline`] ([`Pipeline::set_rules`]).
//! * **Watch lists** belong to one audit device: each source's pipeline runs the rules with
//!   the `[[watchlist]]` lists of its `device` bound ([`RuleSet::with_watchlists`]).
//! * **Shutdown** (SIGTERM/SIGINT): stop accepting, drain connections and files (final
//!   checkpoints), finish analysis, report open suppression windows, deliver or spool what
//!   the sinks hold; all within `shutdown.drain_timeout` (exit 1 when it is exceeded). A
//!   second signal exits at once (130).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, IsTerminal};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::analyze::Analyzer;
use crate::archive::{Archive, ArchiveStats};
use crate::config::{Config, LogConfig, LogFormat, SourceConfig, SourceSpec};
use crate::finding::Finding;
use crate::listen::{self, ListenConfig};
use crate::metrics::{self, ArchiveSnap, Check, Response, Snapshot, SourceSnap, TailSnap};
use crate::pipeline::{self, Backpressure, EmitFn, Pipeline};
use crate::rules::RuleSet;
use crate::sink::{SinkConfig, SinkHealth, SinkStats, Sinks};
use crate::suppress::{Merger, Suppressor};
use crate::tail::checkpoint::FileRole;
use crate::tail::{self, TailCounters, Tailer};

/// How `auditwatch run` was started.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The configuration file; `None` runs [`crate::config::DEFAULT_CONFIG`].
    pub config: Option<PathBuf>,
}

/// A component counts as failing while its error counters rose within this long.
const RECENT: Duration = Duration::from_secs(60);
/// Below this many free bytes the archive's filesystem counts as full.
const DISK_FULL: u64 = 1 << 20;
/// Longest wait for a changed sink to hand over on reload.
const SINK_SWAP_DEADLINE: Duration = Duration::from_secs(3);
/// Findings buffered for a sink while it is being restarted.
const SWAP_BUFFER: usize = 10_000;

// ------------------------------------------------------------------------- logging

type FilterHandle =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

/// The installed log subscriber (its level can change on reload).
pub struct LogHandle {
    filter: Option<FilterHandle>,
    /// `AUDITWATCH_LOG` is set: it wins over the file.
    env_override: bool,
    format: LogFormat,
    level: String,
}

impl LogHandle {
    fn set_level(&mut self, level: &str) {
        if self.env_override || level == self.level {
            return;
        }
        if let Some(h) = &self.filter {
            match tracing_subscriber::EnvFilter::try_new(level) {
                Ok(f) => {
                    if h.reload(f).is_ok() {
                        tracing::info!(level, "log level changed");
                        self.level = level.to_string();
                    }
                }
                Err(e) => tracing::warn!("log level {level:?} not applied: {e}"),
            }
        }
    }
}

/// Installs the service's log subscriber on stderr: human-readable or one JSON object per
/// line. `AUDITWATCH_LOG` (a tracing filter) overrides `log.level`.
pub fn init_logging(cfg: &LogConfig) -> LogHandle {
    use tracing_subscriber::prelude::*;
    let env = std::env::var("AUDITWATCH_LOG")
        .ok()
        .filter(|s| !s.trim().is_empty());
    let spec = env.clone().unwrap_or_else(|| cfg.level.clone());
    let filter = tracing_subscriber::EnvFilter::try_new(&spec)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (layer, handle) = tracing_subscriber::reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(layer);
    let installed = match cfg.format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false)
                    .with_writer(io::stderr),
            )
            .try_init()
            .is_ok(),
        LogFormat::Human => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(io::stderr)
                    .with_ansi(io::stderr().is_terminal()),
            )
            .try_init()
            .is_ok(),
    };
    LogHandle {
        filter: installed.then_some(handle),
        env_override: env.is_some(),
        format: cfg.format,
        level: cfg.level.clone(),
    }
}

/// Start-up and shutdown lines: plain `auditwatch run: …` on stderr for people and scripts,
/// or a log event when logs are JSON.
fn announce(format: LogFormat, msg: &str) {
    match format {
        LogFormat::Human => eprintln!("auditwatch run: {msg}"),
        LogFormat::Json => tracing::info!("{msg}"),
    }
}

// ------------------------------------------------------------------------- pipeline support

/// Live counters of a running pipeline: the archive's and the judge's.
#[derive(Clone)]
struct PipelineLive(Arc<Mutex<pipeline::LiveStats>>);

impl PipelineLive {
    fn of(p: &Pipeline) -> PipelineLive {
        PipelineLive(p.live.clone())
    }

    fn archive(&self) -> Option<ArchiveStats> {
        lock(&self.0).archive
    }

    fn parse_errors(&self) -> Option<u64> {
        Some(lock(&self.0).parse_errors)
    }
}

/// Puts new rules into a running pipeline (blocks already analysed keep theirs).
fn swap_rules(p: &Pipeline, rules: &Arc<RuleSet>) -> bool {
    p.set_rules(rules.clone());
    true
}

// ------------------------------------------------------------------------- sinks

enum SlotState {
    Running(Sinks),
    /// Being restarted: findings wait in `pending`.
    Swapping,
    Stopped,
}

/// One configured sink (one `Sinks` of one sink, so it can be restarted alone).
struct Slot {
    name: String,
    table: Mutex<toml::Value>,
    cfg: Mutex<SinkConfig>,
    state: RwLock<SlotState>,
    pending: Mutex<Vec<Finding>>,
    last: Mutex<Option<(SinkStats, SinkHealth)>>,
    /// Findings lost while swapping (buffer full) or after the stop.
    lost: AtomicU64,
}

impl Slot {
    fn start(cfg: SinkConfig, table: toml::Value, rt: &tokio::runtime::Handle) -> Result<Slot> {
        let sinks = Sinks::start(vec![cfg.clone()], rt)?;
        Ok(Slot {
            name: cfg.name.clone(),
            table: Mutex::new(table),
            cfg: Mutex::new(cfg),
            state: RwLock::new(SlotState::Running(sinks)),
            pending: Mutex::new(Vec::new()),
            last: Mutex::new(None),
            lost: AtomicU64::new(0),
        })
    }

    fn emit(&self, f: &Finding) {
        let st = read(&self.state);
        match &*st {
            SlotState::Running(s) => s.emit(f),
            SlotState::Swapping => {
                let mut p = lock(&self.pending);
                if p.len() < SWAP_BUFFER {
                    p.push(f.clone());
                } else {
                    self.lost.fetch_add(1, Ordering::Relaxed);
                }
            }
            SlotState::Stopped => {
                self.lost.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn stats(&self) -> Option<(SinkStats, SinkHealth)> {
        if let Ok(st) = self.state.try_read() {
            if let SlotState::Running(s) = &*st {
                let (Some(mut stats), Some(health)) =
                    (s.stats().into_iter().next(), s.health().into_iter().next())
                else {
                    return None;
                };
                stats.dropped += self.lost.load(Ordering::Relaxed);
                *lock(&self.last) = Some((stats.clone(), health.clone()));
                return Some((stats, health));
            }
        }
        lock(&self.last).clone()
    }

    /// Stops the running sink (delivering or spooling what it holds within `deadline`).
    fn stop(&self, deadline: Duration, then: SlotState) -> Option<SinkStats> {
        let old = std::mem::replace(&mut *write(&self.state), then);
        match old {
            SlotState::Running(s) => s.shutdown(deadline).into_iter().next(),
            _ => None,
        }
    }

    /// Restarts with a new configuration; on failure the old one is started again.
    fn restart(
        &self,
        cfg: SinkConfig,
        table: toml::Value,
        rt: &tokio::runtime::Handle,
    ) -> Result<()> {
        self.stop(SINK_SWAP_DEADLINE, SlotState::Swapping);
        let (result, running) = match Sinks::start(vec![cfg.clone()], rt) {
            Ok(s) => {
                *lock(&self.cfg) = cfg;
                *lock(&self.table) = table;
                (Ok(()), Some(s))
            }
            Err(e) => {
                let old = lock(&self.cfg).clone();
                let back = Sinks::start(vec![old], rt)
                    .map_err(|e2| tracing::error!(sink = %self.name, "cannot restart the previous configuration either: {e2:#}"))
                    .ok();
                (Err(e), back)
            }
        };
        let mut st = write(&self.state);
        match running {
            Some(s) => {
                for f in lock(&self.pending).drain(..) {
                    s.emit(&f);
                }
                *st = SlotState::Running(s);
            }
            None => {
                let n = lock(&self.pending).drain(..).count() as u64;
                self.lost.fetch_add(n, Ordering::Relaxed);
                *st = SlotState::Stopped;
            }
        }
        result
    }
}

/// Every configured sink.
struct SinkSet {
    slots: RwLock<Arc<Vec<Arc<Slot>>>>,
    rt: tokio::runtime::Handle,
}

impl SinkSet {
    fn start(cfg: &Config, rt: &tokio::runtime::Handle) -> Result<SinkSet> {
        let mut slots = Vec::new();
        for (c, t) in cfg.sinks.iter().zip(cfg.sink_tables.iter()) {
            let name = c.name.clone();
            slots.push(Arc::new(
                Slot::start(c.clone(), t.clone(), rt)
                    .with_context(|| format!("cannot start sink {name:?}"))?,
            ));
        }
        Ok(SinkSet {
            slots: RwLock::new(Arc::new(slots)),
            rt: rt.clone(),
        })
    }

    fn current(&self) -> Arc<Vec<Arc<Slot>>> {
        read(&self.slots).clone()
    }

    fn emit(&self, f: &Finding) {
        for s in self.current().iter() {
            s.emit(f);
        }
    }

    fn stats(&self) -> Vec<(SinkStats, SinkHealth)> {
        self.current().iter().filter_map(|s| s.stats()).collect()
    }

    /// Applies the sinks of `cfg`: new ones start, changed ones restart, removed ones stop.
    /// Returns what changed. New sinks are started first: if one fails, nothing changes.
    fn reload(&self, cfg: &Config) -> Result<Vec<String>> {
        let old = self.current();
        let mut fresh: HashMap<String, Arc<Slot>> = HashMap::new();
        for (c, t) in cfg.sinks.iter().zip(cfg.sink_tables.iter()) {
            if !old.iter().any(|s| s.name == c.name) {
                let name = c.name.clone();
                let slot = Slot::start(c.clone(), t.clone(), &self.rt)
                    .with_context(|| format!("cannot start sink {name:?}"))?;
                fresh.insert(name, Arc::new(slot));
            }
        }
        let mut changes = Vec::new();
        let mut next = Vec::new();
        let mut failed = Vec::new();
        for (c, t) in cfg.sinks.iter().zip(cfg.sink_tables.iter()) {
            if let Some(slot) = fresh.remove(&c.name) {
                changes.push(format!("sink {:?} started", c.name));
                next.push(slot);
                continue;
            }
            let Some(slot) = old.iter().find(|s| s.name == c.name) else {
                continue;
            };
            if *lock(&slot.table) != *t {
                match slot.restart(c.clone(), t.clone(), &self.rt) {
                    Ok(()) => changes.push(format!("sink {:?} restarted", c.name)),
                    Err(e) => failed.push(format!("sink {:?}: {e:#}", c.name)),
                }
            }
            next.push(slot.clone());
        }
        let removed: Vec<Arc<Slot>> = old
            .iter()
            .filter(|s| !cfg.sinks.iter().any(|c| c.name == s.name))
            .cloned()
            .collect();
        *write(&self.slots) = Arc::new(next);
        for s in removed {
            s.stop(SINK_SWAP_DEADLINE, SlotState::Stopped);
            changes.push(format!("sink {:?} stopped", s.name));
        }
        if !failed.is_empty() {
            bail!("kept the previous configuration of {}", failed.join("; "));
        }
        Ok(changes)
    }

    /// Stops every sink within `deadline` (in parallel) and returns their final counters.
    fn shutdown(&self, deadline: Duration) -> Vec<SinkStats> {
        let slots = self.current();
        let handles: Vec<_> = slots
            .iter()
            .cloned()
            .map(|s| std::thread::spawn(move || s.stop(deadline, SlotState::Stopped)))
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().ok().flatten())
            .collect()
    }
}

// ------------------------------------------------------------------------- findings flow

#[derive(Default)]
struct FlowCounts {
    findings: BTreeMap<(String, String), u64>,
    reported: BTreeMap<(String, String), u64>,
    merged: u64,
    summaries: u64,
}

/// Merge → suppression → sinks, shared by every pipeline's judge thread and the ticker.
struct Flow {
    merge: Mutex<Merger>,
    suppress: Mutex<Suppressor>,
    sinks: SinkSet,
    counts: Mutex<FlowCounts>,
}

impl Flow {
    /// A finding of source number `source`.
    fn emit(&self, source: u32, f: &Finding) {
        let now = Instant::now();
        if !lock(&self.merge).admit(f, source, now) {
            lock(&self.counts).merged += 1;
            return;
        }
        *lock(&self.counts)
            .findings
            .entry((f.rule.clone(), f.severity.as_str().to_string()))
            .or_default() += 1;
        if lock(&self.suppress).offer(f, now) {
            self.deliver(f);
        }
    }

    fn deliver(&self, f: &Finding) {
        *lock(&self.counts)
            .reported
            .entry((f.rule.clone(), f.severity.as_str().to_string()))
            .or_default() += 1;
        self.sinks.emit(f);
    }

    fn deliver_summaries(&self, out: Vec<Finding>) {
        if out.is_empty() {
            return;
        }
        lock(&self.counts).summaries += out.len() as u64;
        for f in &out {
            self.deliver(f);
        }
    }

    /// Reports the suppression windows that ended.
    fn tick(&self) {
        let out = lock(&self.suppress).expire(Instant::now());
        self.deliver_summaries(out);
    }

    /// Reports every open suppression window now.
    fn flush(&self) {
        let out = lock(&self.suppress).flush();
        self.deliver_summaries(out);
    }
}

// ------------------------------------------------------------------------- sources

/// Tail progress, written by the tail thread, read by metrics and health.
#[derive(Default)]
struct Lag {
    bytes: AtomicU64,
    /// Milliseconds since the service's epoch + 1 when the tailer fell behind; 0: caught up.
    behind_since: AtomicU64,
    missing: AtomicBool,
}

struct TailView {
    counters: Arc<TailCounters>,
    lag: Arc<Lag>,
    path: PathBuf,
}

/// What metrics and health see of a source.
struct SourceView {
    name: String,
    kind: &'static str,
    counters: Arc<pipeline::Counters>,
    live: PipelineLive,
    findings: Arc<AtomicU64>,
    alive: Arc<AtomicBool>,
    tail: Option<TailView>,
    archive_dir: Option<PathBuf>,
}

/// Watches counters: "rose within the last minute".
#[derive(Default)]
struct Rising {
    seen: HashMap<String, (u64, Option<Instant>)>,
}

impl Rising {
    fn observe(&mut self, key: &str, value: u64, now: Instant) {
        match self.seen.get_mut(key) {
            Some(e) => {
                if value > e.0 {
                    *e = (value, Some(now));
                }
            }
            None => {
                self.seen.insert(key.to_string(), (value, None));
            }
        }
    }

    fn recent(&self, key: &str, now: Instant) -> bool {
        self.seen
            .get(key)
            .and_then(|(_, t)| *t)
            .is_some_and(|t| now.saturating_duration_since(t) < RECENT)
    }
}

/// Everything the metrics handler and the control loop share.
struct Shared {
    epoch: Instant,
    started: SystemTime,
    sources: Vec<SourceView>,
    flow: Arc<Flow>,
    rules_loaded: AtomicU64,
    rules_pending: AtomicBool,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    last_reload_ok: AtomicBool,
    last_reload_unix_ms: AtomicU64,
    stopping: AtomicBool,
    rising: Mutex<Rising>,
    unhealthy: Mutex<HashSet<String>>,
}

impl Shared {
    /// Feeds the "rose recently" tracker (every tick) and logs health changes.
    fn observe(&self) {
        let now = Instant::now();
        {
            let mut r = lock(&self.rising);
            for s in &self.sources {
                let c = &s.counters;
                let shed = c.ingest_shed_lines.load(Ordering::Relaxed)
                    + c.analysis_shed_lines.load(Ordering::Relaxed);
                r.observe(&format!("shed:{}", s.name), shed, now);
                if let Some(t) = &s.tail {
                    r.observe(
                        &format!("read_errors:{}", s.name),
                        t.counters.read_errors.load(Ordering::Relaxed),
                        now,
                    );
                    r.observe(
                        &format!("checkpoint_errors:{}", s.name),
                        t.counters.checkpoint_errors.load(Ordering::Relaxed),
                        now,
                    );
                }
                if let Some(a) = s.live.archive() {
                    r.observe(&format!("archive_dropped:{}", s.name), a.dropped_bytes, now);
                    r.observe(&format!("archive_errors:{}", s.name), a.write_errors, now);
                }
            }
        }
        let checks = self.checks();
        let mut bad = lock(&self.unhealthy);
        for c in &checks {
            if !c.healthy && bad.insert(c.component.clone()) {
                tracing::warn!(
                    component = %c.component,
                    reason = c.reason.as_deref().unwrap_or(""),
                    "unhealthy"
                );
            } else if c.healthy && bad.remove(&c.component) {
                tracing::info!(component = %c.component, "healthy again");
            }
        }
    }

    fn checks(&self) -> Vec<Check> {
        let now = Instant::now();
        let stopping = self.stopping.load(Ordering::Relaxed);
        let r = lock(&self.rising);
        let mut out = Vec::new();
        for s in &self.sources {
            let mut reasons = Vec::new();
            if !s.alive.load(Ordering::Relaxed) && !stopping {
                reasons.push("stopped unexpectedly (see the log)".to_string());
            }
            if r.recent(&format!("shed:{}", s.name), now) {
                reasons.push(
                    "entries shed in the last minute: analysis or archive too slow (auditwatch_source_*_shed_*)"
                        .to_string(),
                );
            }
            if let Some(t) = &s.tail {
                if t.lag.missing.load(Ordering::Relaxed) {
                    reasons.push(format!("{} does not exist", t.path.display()));
                }
                if r.recent(&format!("read_errors:{}", s.name), now) {
                    reasons.push("read errors in the last minute".to_string());
                }
                if r.recent(&format!("checkpoint_errors:{}", s.name), now) {
                    reasons.push("checkpoints could not be written in the last minute".into());
                }
                if t.counters.output_failed.load(Ordering::Relaxed) {
                    reasons.push("findings could not be handed on".into());
                }
            }
            out.push(check(format!("source:{}", s.name), reasons));
            if let Some(dir) = &s.archive_dir {
                let mut reasons = Vec::new();
                if let Some(free) = free_bytes(dir) {
                    if free < DISK_FULL {
                        reasons.push(format!(
                            "the filesystem of {} is full ({free} bytes free)",
                            dir.display()
                        ));
                    }
                }
                if r.recent(&format!("archive_dropped:{}", s.name), now) {
                    reasons.push("lines could not be archived in the last minute".into());
                }
                if r.recent(&format!("archive_errors:{}", s.name), now) {
                    reasons.push("archive write errors in the last minute".into());
                }
                out.push(check(format!("archive:{}", s.name), reasons));
            }
        }
        drop(r);
        for (_, h) in self.flow.sinks.stats() {
            out.push(Check {
                component: format!("sink:{}", h.name),
                healthy: h.healthy,
                reason: h.reason,
            });
        }
        out
    }

    fn snapshot(&self) -> Snapshot {
        let now = Instant::now();
        let sources = self
            .sources
            .iter()
            .map(|s| {
                let c = s.counters.snapshot();
                let listen = s.kind == "listen";
                let tail = s.tail.as_ref().map(|t| {
                    let behind = t.lag.behind_since.load(Ordering::Relaxed);
                    let lag_seconds = if behind == 0 {
                        0.0
                    } else {
                        let since = self.epoch + Duration::from_millis(behind - 1);
                        now.saturating_duration_since(since).as_secs_f64()
                    };
                    TailSnap {
                        stats: t.counters.snapshot(),
                        lag_bytes: t.lag.bytes.load(Ordering::Relaxed),
                        lag_seconds,
                    }
                });
                let (bytes, fragments) = match &tail {
                    Some(t) => (t.stats.bytes_read, t.stats.fragments),
                    None => (c.bytes_received, c.fragments),
                };
                SourceSnap {
                    name: s.name.clone(),
                    kind: s.kind.to_string(),
                    entries: c.lines_received,
                    bytes,
                    parse_errors: s.live.parse_errors(),
                    fragments,
                    oversize: s.counters.oversize.load(Ordering::Relaxed),
                    ingest_shed_lines: c.ingest_shed_lines,
                    analysis_shed_lines: c.analysis_shed_lines,
                    analysis_shed_bytes: c.analysis_shed_bytes,
                    duplicates_dropped: c.duplicates_dropped,
                    findings: s.findings.load(Ordering::Relaxed),
                    connections_open: listen.then_some(c.connections_open),
                    connections_total: listen.then_some(c.connections_total),
                    connections_evicted: listen.then_some(c.connections_evicted),
                    connections_refused: listen.then_some(c.connections_refused),
                    connections_timed_out: listen.then_some(c.connections_timed_out),
                    tail,
                }
            })
            .collect();
        let archives = self
            .sources
            .iter()
            .filter_map(|s| {
                let dir = s.archive_dir.as_ref()?;
                Some(ArchiveSnap {
                    source: s.name.clone(),
                    disk_bytes: dir_bytes(dir),
                    free_bytes: free_bytes(dir),
                    stats: s.live.archive(),
                })
            })
            .collect();
        let (findings, reported, merged, summaries) = {
            let c = lock(&self.flow.counts);
            (
                c.findings.clone(),
                c.reported.clone(),
                c.merged,
                c.summaries,
            )
        };
        let (suppressed, windows) = {
            let s = lock(&self.flow.suppress);
            (s.held, s.open_windows() as u64)
        };
        Snapshot {
            start_time_seconds: self
                .started
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            uptime_seconds: self.epoch.elapsed().as_secs_f64(),
            rules_loaded: self.rules_loaded.load(Ordering::Relaxed),
            rules_reload_pending: self.rules_pending.load(Ordering::Relaxed),
            reloads_ok: self.reloads_ok.load(Ordering::Relaxed),
            reloads_failed: self.reloads_failed.load(Ordering::Relaxed),
            last_reload_ok: self.last_reload_ok.load(Ordering::Relaxed),
            last_reload_time_seconds: self.last_reload_unix_ms.load(Ordering::Relaxed) as f64
                / 1000.0,
            sources,
            findings,
            reported,
            merged,
            suppressed,
            suppression_summaries: summaries,
            suppression_windows: windows,
            archives,
            sinks: self.flow.sinks.stats(),
            checks: self.checks(),
        }
    }

    fn answer(&self, path: &str) -> Response {
        match path {
            "/metrics" => Response {
                status: 200,
                content_type: metrics::TEXT_FORMAT,
                body: metrics::render(&self.snapshot()),
            },
            "/health" | "/healthz" => metrics::health_response(&self.checks()),
            "/" => Response::text(200, "auditwatch: /metrics, /health\n"),
            _ => Response::text(404, "not found (try /metrics or /health)\n"),
        }
    }
}

fn check(component: String, reasons: Vec<String>) -> Check {
    Check {
        component,
        healthy: reasons.is_empty(),
        reason: (!reasons.is_empty()).then(|| reasons.join("; ")),
    }
}

/// Bytes available to unprivileged users on the filesystem holding `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs(3) with a valid NUL-terminated path and a zeroed out-struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// Bytes of the regular files directly in `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Refreshes a tail source's lag: bytes in its open files beyond what was handed on.
fn update_lag(t: &Tailer, lag: &Lag, epoch: Instant) {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0u64;
    for st in t.files() {
        if st.role == FileRole::Finished || st.compressed {
            continue;
        }
        if let Ok(m) = std::fs::metadata(&st.name) {
            if m.dev() == st.dev && m.ino() == st.ino {
                total += m.len().saturating_sub(st.offset);
            }
        }
    }
    lag.missing.store(
        std::fs::metadata(&t.config().path).is_err(),
        Ordering::Relaxed,
    );
    lag.bytes.store(total, Ordering::Relaxed);
    if total == 0 {
        lag.behind_since.store(0, Ordering::Relaxed);
    } else if lag.behind_since.load(Ordering::Relaxed) == 0 {
        lag.behind_since
            .store(epoch.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
    }
}

/// The rule set of each source (in order): `base` with the watch lists of the source's
/// `device` bound; sources of one device share a set. When watch lists are configured, says
/// (once per device) which lists rules use that a device lacks, and which sources name no
/// device.
fn source_rules(
    base: &Arc<RuleSet>,
    sources: &[SourceConfig],
    lists: &BTreeMap<String, crate::watchlist::DeviceLists>,
) -> Result<Vec<Arc<RuleSet>>> {
    let mut by_device: HashMap<Option<&str>, Arc<RuleSet>> = HashMap::new();
    let mut out = Vec::new();
    for s in sources {
        let device = s.device.as_deref();
        if device.is_none() && !lists.is_empty() {
            tracing::warn!(source = %s.name, "the source names no `device`: no watch list applies to it");
        }
        if let Some(set) = by_device.get(&device) {
            out.push(set.clone());
            continue;
        }
        let set = match device {
            Some(d) if !lists.is_empty() => {
                let empty = crate::watchlist::DeviceLists::new();
                let (set, missing) = base
                    .with_watchlists(Some(d), lists.get(d).unwrap_or(&empty))
                    .context("watch lists")?;
                for (name, ids) in missing {
                    tracing::warn!(
                        device = d,
                        "no watch list {name:?} for this device: {} cannot fire on it",
                        ids.join(", ")
                    );
                }
                Arc::new(set)
            }
            _ => base.clone(),
        };
        by_device.insert(device, set.clone());
        out.push(set);
    }
    Ok(out)
}

/// A fingerprint of the `[[watchlist]]` tables and their files.
fn watchlists_fingerprint(cfg: &Config) -> String {
    let mut h = Sha256::new();
    for w in &cfg.watchlists {
        for part in [w.device.as_bytes(), w.name.as_bytes()] {
            h.update(part);
            h.update([0]);
        }
        h.update(w.file.as_os_str().as_encoded_bytes());
        h.update([0]);
        h.update(std::fs::read(&w.file).unwrap_or_default());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

/// A fingerprint of the extra rule files (to tell whether a reload changed them).
fn rules_fingerprint(patterns: Option<&Path>) -> String {
    let mut h = Sha256::new();
    if let Some(dir) = patterns {
        h.update(dir.as_os_str().as_encoded_bytes());
        let mut files = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.flatten() {
                let p = e.path();
                match e.file_type() {
                    Ok(t) if t.is_dir() => stack.push(p),
                    Ok(_) if p.extension().is_some_and(|x| x == "toml") => files.push(p),
                    _ => {}
                }
            }
        }
        files.sort();
        for f in files {
            h.update([0]);
            h.update(f.as_os_str().as_encoded_bytes());
            h.update([0]);
            h.update(std::fs::read(&f).unwrap_or_default());
        }
    }
    hex::encode(h.finalize())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|p| p.into_inner())
}

// ------------------------------------------------------------------------- the service

enum Control {
    Stop,
    Reload,
}

struct TailRunner {
    thread: std::thread::JoinHandle<()>,
    stop: Arc<AtomicBool>,
    waker: crossbeam_channel::Sender<()>,
}

/// Runs the service until SIGTERM/SIGINT. Start-up problems (a bad file, an address in use,
/// an unusable archive, state or sink) are errors (exit 2); the result is the exit code
/// otherwise: 0 after a clean drain, 1 when `shutdown.drain_timeout` was exceeded.
pub fn run(opts: RunOptions) -> Result<u8> {
    let cfg = match &opts.config {
        Some(p) => Config::load(p)?,
        None => Config::embedded_default(),
    };
    if !cfg.missing_env.is_empty() {
        bail!(
            "{}: environment variables named by the configuration are not set: {}",
            cfg.origin,
            cfg.missing_env.join(", ")
        );
    }
    let mut log = init_logging(&cfg.log);
    let format = log.format;
    let rules = Arc::new(cfg.load_rules().context("cannot load the rules")?);
    let lists = cfg.watch_lists().context("cannot load the watch lists")?;
    let per_source = source_rules(&rules, &cfg.sources, &lists)?;
    let mut rules_fp = rules_fingerprint(cfg.patterns.as_deref()) + &watchlists_fingerprint(&cfg);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("run")
        .enable_all()
        .build()?;

    // ---- signals → the control loop (installed before `ready`: an early SIGHUP must not
    // take the default action, which ends the process)
    let (ctl_tx, ctl_rx) = mpsc::channel::<Control>();
    let (mut term, mut int, mut hup) = {
        use tokio::signal::unix::{signal, SignalKind};
        let _rt = rt.enter();
        (
            signal(SignalKind::terminate()).context("cannot install a SIGTERM handler")?,
            signal(SignalKind::interrupt()).context("cannot install a SIGINT handler")?,
            signal(SignalKind::hangup()).context("cannot install a SIGHUP handler")?,
        )
    };
    {
        let ctl = ctl_tx.clone();
        rt.spawn(async move {
            let mut stopping = false;
            loop {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                    _ = hup.recv() => {
                        let _ = ctl.send(Control::Reload);
                        continue;
                    }
                }
                if stopping {
                    eprintln!("auditwatch run: second signal, exiting at once");
                    std::process::exit(130);
                }
                stopping = true;
                let _ = ctl.send(Control::Stop);
            }
        });
    }

    // ---- everything that can fail at start, before anything runs
    let mut bound = HashMap::new();
    for s in &cfg.sources {
        if let SourceSpec::Listen(l) = &s.spec {
            let lc = listen_config(&cfg, l);
            let listeners = rt
                .block_on(listen::bind(&lc))
                .with_context(|| format!("source {:?}", s.name))?;
            bound.insert(s.name.clone(), (lc, listeners));
        }
    }
    let metrics_listener = match cfg.metrics {
        Some(addr) => {
            if !addr.ip().is_loopback() {
                tracing::warn!(%addr, "the metrics endpoint is not on a loopback address (it has no authentication)");
            }
            Some(
                rt.block_on(tokio::net::TcpListener::bind(addr))
                    .with_context(|| format!("cannot listen on {addr} for metrics"))?,
            )
        }
        None => None,
    };
    let mut archives = HashMap::new();
    for s in &cfg.sources {
        if let Some(dir) = &s.archive {
            let a = Archive::open(cfg.archive.for_dir(dir)).with_context(|| {
                format!(
                    "source {:?}: cannot open the archive in {}",
                    s.name,
                    dir.display()
                )
            })?;
            archives.insert(s.name.clone(), a);
        }
    }
    let mut tailers = HashMap::new();
    for s in &cfg.sources {
        if let Some(tc) = s.tail_config(cfg.analysis.max_line_bytes) {
            let counters = Arc::new(TailCounters::default());
            let path = tc.path.clone();
            let t = Tailer::open(tc, counters.clone()).with_context(|| {
                format!("source {:?}: cannot follow {}", s.name, path.display())
            })?;
            tailers.insert(s.name.clone(), (t, counters));
        }
    }
    let sinks = SinkSet::start(&cfg, rt.handle())?;

    // ---- the graph
    let merger = Merger::new(cfg.merge_window);
    let flow = Arc::new(Flow {
        merge: Mutex::new(merger),
        suppress: Mutex::new(Suppressor::new(cfg.suppress.clone())),
        sinks,
        counts: Mutex::new(FlowCounts::default()),
    });
    let epoch = Instant::now();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut pipelines: Vec<Pipeline> = Vec::new();
    let mut views = Vec::new();
    let mut listen_tasks = Vec::new();
    let mut tails: Vec<TailRunner> = Vec::new();
    for (idx, s) in cfg.sources.iter().enumerate() {
        let idx = idx as u32;
        let findings = Arc::new(AtomicU64::new(0));
        let emit: EmitFn = {
            let flow = flow.clone();
            let findings = findings.clone();
            Box::new(move |f: &Finding| {
                findings.fetch_add(1, Ordering::Relaxed);
                flow.emit(idx, f);
                Ok(())
            })
        };
        let mut analyzer = Analyzer::new(
            per_source[idx as usize].clone(),
            false,
            cfg.analysis.max_line_bytes,
        )
        .with_correlation(!cfg.analysis.correlate_wait.is_zero());
        if let Some(p) = &cfg.analysis.strip_prefix {
            analyzer = analyzer.with_prefix(p);
        }
        let backpressure = match s.spec {
            SourceSpec::Listen(_) => Backpressure::ShedAnalysis,
            SourceSpec::Tail(_) => Backpressure::Wait,
        };
        let pipeline = Pipeline::start(
            archives.remove(&s.name),
            analyzer,
            cfg.analysis.threads,
            backpressure,
            cfg.analysis.correlate_wait,
            emit,
        );
        let alive = Arc::new(AtomicBool::new(true));
        let mut tail_view = None;
        match &s.spec {
            SourceSpec::Listen(_) => {
                let (lc, listeners) = bound.remove(&s.name).expect("bound above");
                for b in &listeners.bound {
                    announce(format, &format!("listening on {b} (source {:?})", s.name));
                }
                for g in &listeners.udp_rcvbuf {
                    tracing::info!(source = %s.name, "udp kernel receive buffer {g} bytes");
                }
                let fut = listen::serve(
                    listeners,
                    lc,
                    pipeline.ingest.clone(),
                    pipeline.counters.clone(),
                    stop_rx.clone(),
                );
                let alive = alive.clone();
                listen_tasks.push(rt.spawn(async move {
                    fut.await;
                    alive.store(false, Ordering::Relaxed);
                }));
            }
            SourceSpec::Tail(t) => {
                let (mut tailer, counters) = tailers.remove(&s.name).expect("opened above");
                for f in tailer.take_findings() {
                    findings.fetch_add(1, Ordering::Relaxed);
                    flow.emit(idx, &f);
                }
                {
                    let name = s.name.clone();
                    tailer.on_caught_up(Box::new(move |msg| {
                        tracing::info!(source = %name, "caught up: {msg}");
                    }));
                }
                announce(
                    format,
                    &format!(
                        "following {} (source {:?}, {}, checkpoint {})",
                        t.path.display(),
                        s.name,
                        if tailer.first_start() {
                            "first start"
                        } else {
                            "resuming"
                        },
                        tailer.checkpoint_file().display()
                    ),
                );
                let lag = Arc::new(Lag::default());
                let mut wake = tail::watch::Wake::new(counters.clone());
                wake.watch_path(&t.path);
                let waker = wake.sender();
                let stop = Arc::new(AtomicBool::new(false));
                let thread = {
                    let ingest = pipeline.ingest.clone();
                    let stop = stop.clone();
                    let lag = lag.clone();
                    let alive = alive.clone();
                    let path = t.path.clone();
                    std::thread::Builder::new()
                        .name(format!("tail-{}", s.name))
                        .spawn(move || {
                            let rx = wake.receiver().clone();
                            let mut last_watch = Instant::now();
                            let mut last_lag: Option<Instant> = None;
                            tail::run(&mut tailer, &ingest, &rx, &stop, |tl| {
                                let now = Instant::now();
                                if last_lag.is_none_or_elapsed(now, Duration::from_millis(200)) {
                                    update_lag(tl, &lag, epoch);
                                    last_lag = Some(now);
                                }
                                if now.saturating_duration_since(last_watch)
                                    >= Duration::from_secs(1)
                                {
                                    // A symlinked path may now point into another directory.
                                    last_watch = now;
                                    wake.watch_path(&path);
                                }
                            });
                            update_lag(&tailer, &lag, epoch);
                            drop(ingest);
                            alive.store(false, Ordering::Relaxed);
                        })
                        .context("cannot start a tail thread")?
                };
                tails.push(TailRunner {
                    thread,
                    stop,
                    waker,
                });
                tail_view = Some(TailView {
                    counters,
                    lag,
                    path: t.path.clone(),
                });
            }
        }
        views.push(SourceView {
            name: s.name.clone(),
            kind: s.kind(),
            counters: pipeline.counters.clone(),
            live: PipelineLive::of(&pipeline),
            findings,
            alive,
            tail: tail_view,
            archive_dir: s.archive.clone(),
        });
        pipelines.push(pipeline);
    }
    let shared = Arc::new(Shared {
        epoch,
        started: SystemTime::now(),
        sources: views,
        flow: flow.clone(),
        rules_loaded: AtomicU64::new(rules.rules().len() as u64),
        rules_pending: AtomicBool::new(false),
        reloads_ok: AtomicU64::new(0),
        reloads_failed: AtomicU64::new(0),
        last_reload_ok: AtomicBool::new(true),
        last_reload_unix_ms: AtomicU64::new(0),
        stopping: AtomicBool::new(false),
        rising: Mutex::new(Rising::default()),
        unhealthy: Mutex::new(HashSet::new()),
    });
    let (metrics_stop_tx, metrics_stop_rx) = tokio::sync::watch::channel(false);
    let metrics_task = metrics_listener.map(|l| {
        if let Ok(a) = l.local_addr() {
            announce(
                format,
                &format!("metrics on http://{a}/metrics and http://{a}/health"),
            );
        }
        let shared = shared.clone();
        let handler: metrics::Handler = Arc::new(move |path: &str| shared.answer(path));
        rt.spawn(metrics::serve(l, handler, metrics_stop_rx))
    });

    drop(ctl_tx);
    announce(
        format,
        &format!(
            "ready: {} sources, {} rules, {} sinks ({})",
            cfg.sources.len(),
            rules.rules().len(),
            cfg.sinks.len(),
            cfg.origin
        ),
    );

    let mut cfg = cfg;
    let mut last_tick = Instant::now();
    loop {
        let wait = Duration::from_secs(1).saturating_sub(last_tick.elapsed());
        match ctl_rx.recv_timeout(wait) {
            Ok(Control::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Ok(Control::Reload) => {
                let mut ctx = ReloadCtx {
                    opts: &opts,
                    cfg: &mut cfg,
                    log: &mut log,
                    shared: &shared,
                    pipelines: &pipelines,
                    rules_fp: &mut rules_fp,
                };
                ctx.reload();
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if last_tick.elapsed() >= Duration::from_secs(1) {
            last_tick = Instant::now();
            flow.tick();
            shared.observe();
        }
    }

    // ---- shutdown
    shared.stopping.store(true, Ordering::Relaxed);
    announce(
        format,
        "stopping: draining connections and files, analysis and sinks",
    );
    let deadline = Instant::now() + cfg.drain_timeout;
    let mut clean = true;
    let _ = stop_tx.send(true);
    for t in &tails {
        t.stop.store(true, Ordering::Relaxed);
        let _ = t.waker.try_send(());
    }
    rt.block_on(async {
        for h in listen_tasks {
            if tokio::time::timeout_at(deadline.into(), h).await.is_err() {
                clean = false;
            }
        }
    });
    for t in tails {
        while !t.thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if t.thread.is_finished() {
            let _ = t.thread.join();
        } else {
            clean = false;
        }
    }
    let names: Vec<String> = shared.sources.iter().map(|s| s.name.clone()).collect();
    let finishing: Vec<_> = pipelines
        .into_iter()
        .map(|p| std::thread::spawn(move || p.finish()))
        .collect();
    let mut outcomes = Vec::new();
    for (name, h) in names.iter().zip(finishing) {
        while !h.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if !h.is_finished() {
            tracing::error!(source = %name, "analysis did not drain within shutdown.drain_timeout");
            clean = false;
            continue;
        }
        match h.join() {
            Ok(Ok(o)) => outcomes.push((name.clone(), o)),
            Ok(Err(e)) => tracing::error!(source = %name, "pipeline: {e}"),
            Err(_) => tracing::error!(source = %name, "pipeline panicked"),
        }
    }
    flow.flush();
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(1));
    let sink_stats = flow.sinks.shutdown(left);
    let _ = metrics_stop_tx.send(true);
    if let Some(t) = metrics_task {
        let _ = rt.block_on(async { tokio::time::timeout(Duration::from_millis(200), t).await });
    }
    rt.shutdown_timeout(Duration::from_millis(200));

    for (name, o) in &outcomes {
        let c = &o.counters;
        let mut line = format!(
            "source {name:?}: {} entries ({:.1} MB), {} findings, {} parse errors, {} oversize, {} fragments, {} shed",
            o.stats.entries,
            o.stats.bytes as f64 / 1e6,
            o.stats.findings,
            o.stats.parse_errors,
            o.stats.oversize,
            c.fragments,
            c.ingest_shed_lines + c.analysis_shed_lines
        );
        if let Some(a) = &o.archive {
            line.push_str(&format!(
                "; archive: {} lines written, {} bytes dropped, {} rotations",
                a.lines_written, a.dropped_bytes, a.rotations
            ));
        }
        announce(format, &line);
    }
    {
        let c = lock(&flow.counts);
        announce(
            format,
            &format!(
                "findings: {} events, {} merged (second source), {} held by suppression, {} summaries",
                c.findings.values().sum::<u64>(),
                c.merged,
                lock(&flow.suppress).held,
                c.summaries
            ),
        );
    }
    for s in &sink_stats {
        announce(
            format,
            &format!(
                "sink {:?}: {} delivered, {} dropped, {} waiting in its spool",
                s.name, s.delivered, s.dropped, s.spool_pending
            ),
        );
    }
    if !clean {
        announce(
            format,
            "shutdown.drain_timeout exceeded: some entries or findings may not have been handled",
        );
        return Ok(1);
    }
    Ok(0)
}

fn listen_config(cfg: &Config, l: &crate::config::ListenSource) -> ListenConfig {
    ListenConfig {
        tcp: l.tcp.clone(),
        unix: l.unix.clone(),
        udp: l.udp.clone(),
        max_line: cfg.analysis.max_line_bytes,
        max_connections: l.max_connections,
        idle_timeout: l.idle_timeout,
        strip_prefix: cfg.analysis.strip_prefix.clone(),
    }
}

trait ElapsedExt {
    fn is_none_or_elapsed(&self, now: Instant, every: Duration) -> bool;
}

impl ElapsedExt for Option<Instant> {
    fn is_none_or_elapsed(&self, now: Instant, every: Duration) -> bool {
        match self {
            None => true,
            Some(t) => now.saturating_duration_since(*t) >= every,
        }
    }
}

struct ReloadCtx<'a> {
    opts: &'a RunOptions,
    cfg: &'a mut Config,
    log: &'a mut LogHandle,
    shared: &'a Shared,
    pipelines: &'a [Pipeline],
    rules_fp: &'a mut String,
}

impl ReloadCtx<'_> {
    fn reload(&mut self) {
        for p in self.pipelines {
            p.reopen.store(true, Ordering::Relaxed);
        }
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.shared
            .last_reload_unix_ms
            .store(now_ms, Ordering::Relaxed);
        let Some(path) = &self.opts.config else {
            tracing::info!("SIGHUP: archives reopen their files; no configuration file to re-read (embedded default)");
            self.shared.reloads_ok.fetch_add(1, Ordering::Relaxed);
            self.shared.last_reload_ok.store(true, Ordering::Relaxed);
            return;
        };
        match self.try_reload(path) {
            Ok(changes) => {
                self.shared.reloads_ok.fetch_add(1, Ordering::Relaxed);
                self.shared.last_reload_ok.store(true, Ordering::Relaxed);
                tracing::info!(
                    changes = %if changes.is_empty() { "none".to_string() } else { changes.join("; ") },
                    "configuration reloaded from {}",
                    path.display()
                );
            }
            Err(e) => {
                self.shared.reloads_failed.fetch_add(1, Ordering::Relaxed);
                self.shared.last_reload_ok.store(false, Ordering::Relaxed);
                tracing::error!("reload rejected, the running configuration is kept: {e:#}");
            }
        }
    }

    fn try_reload(&mut self, path: &Path) -> Result<Vec<String>> {
        let new = Config::load(path)?;
        if !new.missing_env.is_empty() {
            bail!(
                "environment variables named by the configuration are not set: {}",
                new.missing_env.join(", ")
            );
        }
        let rules = Arc::new(new.load_rules().context("rules")?);
        let lists = new.watch_lists().context("watch lists")?;
        let fp = rules_fingerprint(new.patterns.as_deref()) + &watchlists_fingerprint(&new);
        let rules_changed = fp != *self.rules_fp
            || new.patterns != self.cfg.patterns
            || new.rule_selection != self.cfg.rule_selection;
        // The running sources keep their devices (source changes need a restart).
        let per_source = if rules_changed {
            source_rules(&rules, &self.cfg.sources, &lists)?
        } else {
            Vec::new()
        };
        let old = &*self.cfg;
        let mut changes = Vec::new();
        let mut restart_needed = Vec::new();
        if new.data_dir != old.data_dir {
            restart_needed.push("data_dir");
        }
        if new.sources != old.sources {
            restart_needed.push("sources");
        }
        if new.archive != old.archive {
            restart_needed.push("archive");
        }
        if new.analysis != old.analysis {
            restart_needed.push("analysis");
        }
        if new.metrics != old.metrics {
            restart_needed.push("metrics");
        }
        if new.log.format != old.log.format {
            restart_needed.push("log.format");
        }
        // Sinks first: the only step that can still fail.
        changes.extend(self.shared.flow.sinks.reload(&new)?);
        if new.merge_window != old.merge_window {
            lock(&self.shared.flow.merge).set_window(new.merge_window);
            changes.push(format!("merge.window {:?}", new.merge_window));
        }
        if new.suppress != old.suppress {
            let out = lock(&self.shared.flow.suppress).reconfigure(new.suppress.clone());
            self.shared.flow.deliver_summaries(out);
            changes.push("suppress".into());
        }
        if new.log.level != old.log.level {
            self.log.set_level(&new.log.level);
            changes.push(format!("log.level {:?}", new.log.level));
        }
        if new.drain_timeout != old.drain_timeout {
            changes.push(format!("shutdown.drain_timeout {:?}", new.drain_timeout));
        }
        if rules_changed {
            let applied = self
                .pipelines
                .iter()
                .zip(&per_source)
                .all(|(p, r)| swap_rules(p, r));
            if applied {
                *self.rules_fp = fp;
                self.shared
                    .rules_loaded
                    .store(rules.rules().len() as u64, Ordering::Relaxed);
                self.shared.rules_pending.store(false, Ordering::Relaxed);
                changes.push(format!(
                    "rules ({} loaded, {} watch lists)",
                    rules.rules().len(),
                    new.watchlists.len()
                ));
            } else {
                self.shared.rules_pending.store(true, Ordering::Relaxed);
                tracing::warn!(
                    rules = rules.rules().len(),
                    "the changed rules are valid but take effect at the next restart (running pipelines cannot swap rules yet)"
                );
            }
        }
        if !restart_needed.is_empty() {
            tracing::warn!(
                "changes to {} take effect at the next restart",
                restart_needed.join(", ")
            );
        }
        // Keep what runs: sources, archive, analysis and metrics stay as started.
        let mut kept = new;
        kept.data_dir = old.data_dir.clone();
        kept.sources = old.sources.clone();
        kept.archive = old.archive.clone();
        kept.analysis = old.analysis.clone();
        kept.metrics = old.metrics;
        kept.log.format = old.log.format;
        *self.cfg = kept;
        Ok(changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rising_counts_only_recent_increases() {
        let t0 = Instant::now();
        let mut r = Rising::default();
        r.observe("k", 5, t0);
        assert!(!r.recent("k", t0), "the first value is a baseline");
        r.observe("k", 5, t0 + Duration::from_secs(1));
        assert!(!r.recent("k", t0 + Duration::from_secs(1)));
        r.observe("k", 6, t0 + Duration::from_secs(2));
        assert!(r.recent("k", t0 + Duration::from_secs(3)));
        assert!(!r.recent("k", t0 + Duration::from_secs(2) + RECENT));
        assert!(!r.recent("other", t0));
    }

    #[test]
    fn rules_fingerprint_follows_the_files() {
        let d = tempfile::tempdir().unwrap();
        let a = rules_fingerprint(Some(d.path()));
        assert_eq!(a, rules_fingerprint(Some(d.path())));
        std::fs::write(d.path().join("x.toml"), "a").unwrap();
        let b = rules_fingerprint(Some(d.path()));
        assert_ne!(a, b);
        std::fs::write(d.path().join("notes.txt"), "a").unwrap();
        assert_eq!(b, rules_fingerprint(Some(d.path())));
        assert_ne!(rules_fingerprint(None), a);
    }
}
