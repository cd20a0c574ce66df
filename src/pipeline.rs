//! The live pipeline shared by `listen` (and later `tail`):
//!
//! ```text
//! sources ──try_send──▶ [ingest queue] ──▶ archive thread ──try_send──▶ [analysis queue]
//!  (never block:          bounded            raw bytes first,             bounded
//!   shed after a few ms,                     counts lines per source
//!   counted)                                        │ full: shed analysis only (counted;
//!                                                   │ the archive holds the bytes)
//!                                                   ▼
//!                      analysis workers ×N ──send──▶ judge thread (reorders, throttles,
//!                                                   dedups re-sent entries) ──▶ output
//! ```
//!
//! | edge | when full |
//! |---|---|
//! | source → ingest | the source retries for at most [`INGEST_WAIT`], then sheds the frame and counts it (`ingest_shed_*`); reading never stops |
//! | archive → analysis | shed analysis of the block, count it (`analysis_shed_*`): the bytes are in the archive and can be replayed |
//! | analysis → judge | block (workers wait; the archive thread never does) |
//! | judge → output | block (a stuck stdout backs up into analysis shedding, never into Vault) |

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use serde::Serialize;

use crate::analyze::{Analyzer, BlockResult, ErrorKind};
use crate::archive::{Archive, ArchiveStats};
use crate::engine::{Judge, LocatedError, Stats, StreamPos, ERRORS_KEPT};
use crate::finding::{Finding, SourceKind};
use crate::framing::Block;
use crate::rules::RuleSet;

/// How long a source may wait for room in the ingest queue before it sheds.
pub const INGEST_WAIT: Duration = Duration::from_millis(5);
/// Ingest queue length in frames (each at most one read buffer or one line).
pub const INGEST_QUEUE: usize = 4096;
/// Analysis queue length in blocks.
pub const ANALYSIS_QUEUE: usize = 256;
/// Finding ids remembered to drop byte-identical re-sends.
pub const RECENT_IDS: usize = 65_536;

/// One connection, peer or file.
#[derive(Debug)]
pub struct SourceInfo {
    pub id: u64,
    pub kind: SourceKind,
    pub name: String,
}

/// What sources hand to the pipeline.
pub enum Ingest {
    /// Complete lines, starting at byte `offset` of the source.
    Lines {
        source: Arc<SourceInfo>,
        block: Block,
        offset: u64,
        /// Newlines in `block`, counted by the producer (which needs them
        /// anyway, or runs on its own task): the archive stage is serial.
        lines: u64,
    },
    /// A piece of a line longer than the maximum (archived, not analysed).
    Oversize {
        source: Arc<SourceInfo>,
        piece: Block,
        line_offset: u64,
        done: bool,
    },
    /// The source ended; forget its state.
    Closed { source: Arc<SourceInfo> },
    /// The source resumes mid-way (a file tailed from a checkpoint): its
    /// next line is line `lines_before + 1`. Send before its first lines.
    Start {
        source: Arc<SourceInfo>,
        lines_before: u64,
    },
    /// Called once every line sent before it is durable: fsynced in the
    /// archive, or, with no archive, judged. File checkpoints ride on it.
    Marker(Marker),
}

/// A callback run when the lines before it are safe (see [`Ingest::Marker`]).
pub type Marker = Box<dyn FnOnce() + Send>;

/// What the archive stage does when analysis falls behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backpressure {
    /// Live sockets: skip analysis of the block and count it (never make Vault wait).
    ShedAnalysis,
    /// Files: wait (the file waits on disk and its checkpoint does not move).
    Wait,
}

/// Counters shared by every stage (atomics: sources update them from any thread).
#[derive(Debug, Default)]
pub struct Counters {
    pub connections_total: AtomicU64,
    pub connections_open: AtomicU64,
    pub connections_evicted: AtomicU64,
    pub connections_refused: AtomicU64,
    pub connections_timed_out: AtomicU64,
    pub accept_errors: AtomicU64,
    pub bytes_received: AtomicU64,
    pub lines_received: AtomicU64,
    /// Unterminated tails cut by a disconnect (never parsed, never archived).
    pub fragments: AtomicU64,
    pub fragment_bytes: AtomicU64,
    pub oversize: AtomicU64,
    pub udp_datagrams: AtomicU64,
    pub udp_truncated: AtomicU64,
    pub ingest_shed_lines: AtomicU64,
    pub ingest_shed_bytes: AtomicU64,
    pub analysis_shed_lines: AtomicU64,
    pub analysis_shed_bytes: AtomicU64,
    pub duplicates_dropped: AtomicU64,
    /// Bytes of oversize lines that could not be spooled for the archive.
    pub archive_spool_dropped_bytes: AtomicU64,
    /// At most one shedding warning every 10 s (the counters have the totals).
    pub shed_warning: Throttle,
    errors: Mutex<Vec<LocatedError>>,
}

impl Counters {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// Keeps a located error (the first [`ERRORS_KEPT`]).
    pub fn error(&self, e: LocatedError) {
        if let Ok(mut v) = self.errors.lock() {
            if v.len() < ERRORS_KEPT {
                v.push(e);
            }
        }
    }

    pub fn snapshot(&self) -> CountersSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CountersSnapshot {
            connections_total: g(&self.connections_total),
            connections_open: g(&self.connections_open),
            connections_evicted: g(&self.connections_evicted),
            connections_refused: g(&self.connections_refused),
            connections_timed_out: g(&self.connections_timed_out),
            accept_errors: g(&self.accept_errors),
            bytes_received: g(&self.bytes_received),
            lines_received: g(&self.lines_received),
            fragments: g(&self.fragments),
            fragment_bytes: g(&self.fragment_bytes),
            udp_datagrams: g(&self.udp_datagrams),
            udp_truncated: g(&self.udp_truncated),
            ingest_shed_lines: g(&self.ingest_shed_lines),
            ingest_shed_bytes: g(&self.ingest_shed_bytes),
            analysis_shed_lines: g(&self.analysis_shed_lines),
            analysis_shed_bytes: g(&self.analysis_shed_bytes),
            duplicates_dropped: g(&self.duplicates_dropped),
            archive_spool_dropped_bytes: g(&self.archive_spool_dropped_bytes),
        }
    }

    pub fn take_errors(&self) -> Vec<LocatedError> {
        self.errors
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }
}

/// Lets an event through at most once per period (log rate limiting).
#[derive(Debug, Default)]
pub struct Throttle {
    last_ms: AtomicU64,
}

impl Throttle {
    const PERIOD_MS: u64 = 10_000;

    /// True at most once per period.
    pub fn due(&self) -> bool {
        static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        let now = START.get_or_init(Instant::now).elapsed().as_millis() as u64 + Self::PERIOD_MS;
        let last = self.last_ms.load(Ordering::Relaxed);
        now >= last + Self::PERIOD_MS
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// The counters as plain numbers (for `--stats-json` and the summary).
#[derive(Debug, Clone, Default, Serialize)]
pub struct CountersSnapshot {
    pub connections_total: u64,
    pub connections_open: u64,
    pub connections_evicted: u64,
    pub connections_refused: u64,
    pub connections_timed_out: u64,
    pub accept_errors: u64,
    pub bytes_received: u64,
    pub lines_received: u64,
    pub fragments: u64,
    pub fragment_bytes: u64,
    pub udp_datagrams: u64,
    pub udp_truncated: u64,
    pub ingest_shed_lines: u64,
    pub ingest_shed_bytes: u64,
    pub analysis_shed_lines: u64,
    pub analysis_shed_bytes: u64,
    pub duplicates_dropped: u64,
    pub archive_spool_dropped_bytes: u64,
}

/// Counters of a running pipeline that only its threads know, for metrics and health:
/// refreshed by the archive thread on its tick and by the judge after each block.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LiveStats {
    pub archive: Option<ArchiveStats>,
    pub entries: u64,
    pub parse_errors: u64,
    pub invalid_json: u64,
    pub invalid_utf8: u64,
    pub findings: u64,
    pub suppressed: u64,
}

/// How often the judge looks for held findings whose wait is over while no
/// block arrives.
const HELD_TICK: Duration = Duration::from_millis(100);

/// Sends a frame without ever blocking for long: retries for at most
/// [`INGEST_WAIT`] (async sleeps), then sheds and counts it.
pub async fn send_ingest(tx: &Sender<Ingest>, mut msg: Ingest, counters: &Counters) {
    let start = Instant::now();
    loop {
        match tx.try_send(msg) {
            Ok(()) => return,
            Err(TrySendError::Full(m)) => {
                if start.elapsed() >= INGEST_WAIT {
                    let (lines, bytes) = match &m {
                        Ingest::Lines { block, lines, .. } => (*lines, block.len() as u64),
                        Ingest::Oversize { piece, done, .. } => {
                            (u64::from(*done), piece.len() as u64)
                        }
                        Ingest::Closed { .. } | Ingest::Start { .. } | Ingest::Marker(_) => (0, 0),
                    };
                    if let Ingest::Closed { .. } | Ingest::Start { .. } | Ingest::Marker(_) = m {
                        // Tiny and rare: wait for room rather than leak per-source state.
                        msg = m;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    }
                    Counters::add(&counters.ingest_shed_lines, lines);
                    Counters::add(&counters.ingest_shed_bytes, bytes);
                    tracing::warn!(
                        lines,
                        bytes,
                        "ingest queue full: frame shed (archive stage too slow)"
                    );
                    return;
                }
                msg = m;
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
            Err(TrySendError::Disconnected(_)) => return,
        }
    }
}

struct Job {
    seq: u64,
    work: Work,
}

enum Work {
    Block {
        source: Arc<SourceInfo>,
        lines_before: u64,
        offset: u64,
        block: Block,
    },
    Marker(Marker),
}

struct Done {
    seq: u64,
    work: Judged,
}

enum Judged {
    Block {
        source: Arc<SourceInfo>,
        lines_before: u64,
        offset: u64,
        result: Box<BlockResult>,
        /// The rules the block was analysed with (hit indices refer to them).
        rules: Arc<RuleSet>,
    },
    Marker(Marker),
}

/// Where the judge sends each finding (stdout, a file, sinks).
pub type EmitFn = Box<dyn FnMut(&Finding) -> std::io::Result<()> + Send>;

/// A running pipeline. Drop every ingest sender, then call [`Pipeline::finish`].
pub struct Pipeline {
    pub ingest: Sender<Ingest>,
    pub counters: Arc<Counters>,
    /// Set to ask the archive to reopen its file (SIGHUP).
    pub reopen: Arc<AtomicBool>,
    /// Live counters (see [`LiveStats`]).
    pub live: Arc<Mutex<LiveStats>>,
    analyzer: Arc<RwLock<Analyzer>>,
    archive_thread: std::thread::JoinHandle<Option<ArchiveStats>>,
    workers: Vec<std::thread::JoinHandle<()>>,
    judge_thread: std::thread::JoinHandle<std::io::Result<Stats>>,
}

/// What the pipeline did, at the end.
pub struct PipelineOutcome {
    pub stats: Stats,
    pub counters: CountersSnapshot,
    pub archive: Option<ArchiveStats>,
}

impl Pipeline {
    /// Starts the archive thread, `threads` analysis workers and the judge.
    pub fn start(
        archive: Option<Archive>,
        analyzer: Analyzer,
        threads: usize,
        backpressure: Backpressure,
        correlate_wait: Duration,
        mut emit: EmitFn,
    ) -> Pipeline {
        let counters = Arc::new(Counters::default());
        let reopen = Arc::new(AtomicBool::new(false));
        let live = Arc::new(Mutex::new(LiveStats::default()));
        let rules = analyzer.rules().clone();
        let analyzer = Arc::new(RwLock::new(analyzer));
        let (ingest_tx, ingest_rx) = bounded::<Ingest>(INGEST_QUEUE);
        let (job_tx, job_rx) = bounded::<Job>(ANALYSIS_QUEUE);
        let (done_tx, done_rx) = bounded::<Done>(ANALYSIS_QUEUE);

        let archive_thread = {
            let counters = counters.clone();
            let reopen = reopen.clone();
            let live = live.clone();
            std::thread::Builder::new()
                .name("archive".into())
                .spawn(move || {
                    archive_stage(
                        archive,
                        ingest_rx,
                        job_tx,
                        &counters,
                        &reopen,
                        &live,
                        backpressure,
                    )
                })
                .expect("spawn archive thread")
        };
        let workers = (0..threads.max(1))
            .map(|i| {
                let rx = job_rx.clone();
                let tx = done_tx.clone();
                let shared = analyzer.clone();
                std::thread::Builder::new()
                    .name(format!("analyze-{i}"))
                    .spawn(move || {
                        for job in rx {
                            let work = match job.work {
                                Work::Block {
                                    source,
                                    lines_before,
                                    offset,
                                    block,
                                } => {
                                    let analyzer =
                                        shared.read().unwrap_or_else(|p| p.into_inner()).clone();
                                    Judged::Block {
                                        result: Box::new(analyzer.scan_block(&block)),
                                        rules: analyzer.rules().clone(),
                                        source,
                                        lines_before,
                                        offset,
                                    }
                                }
                                Work::Marker(m) => Judged::Marker(m),
                            };
                            if tx.send(Done { seq: job.seq, work }).is_err() {
                                return;
                            }
                        }
                    })
                    .expect("spawn analysis thread")
            })
            .collect();
        drop(done_tx);
        let judge_thread = {
            let counters = counters.clone();
            let live = live.clone();
            std::thread::Builder::new()
                .name("judge".into())
                .spawn(move || {
                    let mut judge = Judge::new(rules);
                    judge.set_correlation(correlate_wait, true);
                    let mut recent = RecentIds::new(RECENT_IDS);
                    let mut pending: BTreeMap<u64, Done> = BTreeMap::new();
                    let mut next = 0u64;
                    let mut write_err = None;
                    let mut deliver = |f: Finding| {
                        if !recent.insert(&f.id) {
                            Counters::add(&counters.duplicates_dropped, 1);
                            return;
                        }
                        if write_err.is_none() {
                            if let Err(e) = emit(&f) {
                                write_err = Some(e);
                            }
                        }
                    };
                    loop {
                        let done = match done_rx.recv_timeout(HELD_TICK) {
                            Ok(d) => d,
                            Err(RecvTimeoutError::Timeout) => {
                                // A quiet stream must not hold findings.
                                judge.expire_held(&mut deliver);
                                continue;
                            }
                            Err(RecvTimeoutError::Disconnected) => break,
                        };
                        pending.insert(done.seq, done);
                        while let Some(d) = pending.remove(&next) {
                            next += 1;
                            let (source, lines_before, offset, result) = match d.work {
                                Judged::Marker(m) => {
                                    // A checkpoint covers only what was
                                    // reported: held findings go out first.
                                    judge.release_held(true, &mut deliver);
                                    m();
                                    continue;
                                }
                                Judged::Block {
                                    source,
                                    lines_before,
                                    offset,
                                    result,
                                    rules,
                                } => {
                                    if !Arc::ptr_eq(judge.rules(), &rules) {
                                        judge.set_rules(rules);
                                    }
                                    (source, lines_before, offset, result)
                                }
                            };
                            let mut pos = StreamPos {
                                kind: source.kind,
                                name: source.name.clone(),
                                lines_before,
                            };
                            judge.block(&mut pos, offset, *result, false, &mut deliver);
                            if let Ok(mut l) = live.lock() {
                                let s = &judge.stats;
                                l.entries = s.entries;
                                l.parse_errors = s.parse_errors;
                                l.invalid_json = s.invalid_json;
                                l.invalid_utf8 = s.invalid_utf8;
                                l.findings = s.findings;
                                l.suppressed = s.suppressed;
                            }
                        }
                    }
                    // The streams ended (shutdown): nothing stays held.
                    judge.release_held(false, &mut deliver);
                    match write_err {
                        Some(e) => Err(e),
                        None => Ok(judge.stats),
                    }
                })
                .expect("spawn judge thread")
        };
        Pipeline {
            ingest: ingest_tx,
            counters,
            reopen,
            live,
            analyzer,
            archive_thread,
            workers,
            judge_thread,
        }
    }

    /// Rules for the blocks analysed from now on (a reload); blocks already analysed are judged
    /// with the rules they were analysed with. Throttle and window state carry over by rule id.
    pub fn set_rules(&self, rules: Arc<RuleSet>) {
        let mut a = self.analyzer.write().unwrap_or_else(|p| p.into_inner());
        *a = a.with_rules(rules);
    }

    /// Waits for every stage to drain (the ingest senders must all be dropped).
    pub fn finish(self) -> std::io::Result<PipelineOutcome> {
        let Pipeline {
            ingest,
            counters,
            archive_thread,
            workers,
            judge_thread,
            ..
        } = self;
        drop(ingest);
        let archive = archive_thread.join().unwrap_or(None);
        for w in workers {
            let _ = w.join();
        }
        let mut stats = judge_thread
            .join()
            .map_err(|_| std::io::Error::other("judge thread panicked"))??;
        let snap = counters.snapshot();
        // Bad input seen by the sources, merged into the judge's counters.
        for e in counters.take_errors() {
            if stats.errors.len() < ERRORS_KEPT {
                stats.errors.push(e);
            }
        }
        stats.truncated += snap.fragments + snap.udp_truncated;
        stats.oversize += counters.oversize.load(Ordering::Relaxed);
        Ok(PipelineOutcome {
            stats,
            counters: snap,
            archive,
        })
    }
}

fn archive_stage(
    mut archive: Option<Archive>,
    rx: Receiver<Ingest>,
    jobs: Sender<Job>,
    counters: &Counters,
    reopen: &AtomicBool,
    live: &Mutex<LiveStats>,
    backpressure: Backpressure,
) -> Option<ArchiveStats> {
    let mut lines_before: HashMap<u64, u64> = HashMap::new();
    let mut spools: HashMap<u64, Spool> = HashMap::new();
    let mut seq = 0u64;
    let mut dropped_at_last_marker = archive.as_ref().map_or(0, |a| a.stats().dropped_bytes);
    let tick = Duration::from_millis(100);
    let mut last_tick = Instant::now();
    loop {
        let msg = match rx.recv_timeout(tick) {
            Ok(m) => Some(m),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        match msg {
            Some(Ingest::Lines {
                source,
                block,
                offset,
                lines: n,
            }) => {
                if let Some(a) = archive.as_mut() {
                    a.append_lines(&block);
                }
                Counters::add(&counters.lines_received, n);
                let before = lines_before.entry(source.id).or_insert(0);
                let name = source.name.clone();
                let bytes = block.len() as u64;
                let job = Job {
                    seq,
                    work: Work::Block {
                        source,
                        lines_before: *before,
                        offset,
                        block,
                    },
                };
                *before += n;
                let sent = match backpressure {
                    Backpressure::Wait => jobs.send(job).is_ok(),
                    Backpressure::ShedAnalysis => jobs.try_send(job).is_ok(),
                };
                if sent {
                    seq += 1;
                } else {
                    Counters::add(&counters.analysis_shed_lines, n);
                    Counters::add(&counters.analysis_shed_bytes, bytes);
                    if counters.shed_warning.due() {
                        tracing::warn!(
                            source = %name,
                            total_lines = counters.analysis_shed_lines.load(Ordering::Relaxed),
                            "analysis queue full: lines not analysed (replay them from the archive, if one is kept); see analysis_shed_* counters"
                        );
                    }
                }
            }
            Some(Ingest::Oversize {
                source,
                piece,
                line_offset,
                done,
            }) => {
                if let Some(a) = archive.as_mut() {
                    spool_oversize(a, &mut spools, &source, &piece, done, counters);
                }
                if done {
                    Counters::add(&counters.lines_received, 1);
                    Counters::add(&counters.oversize, 1);
                    let before = lines_before.entry(source.id).or_insert(0);
                    *before += 1;
                    counters.error(LocatedError {
                        kind: ErrorKind::Oversize,
                        source: source.name.clone(),
                        line: *before,
                        offset: line_offset,
                        message: "line exceeds the maximum line size; archived, not analysed"
                            .into(),
                    });
                }
            }
            Some(Ingest::Marker(marker)) => match archive.as_mut() {
                Some(a) => {
                    if let Err(e) = a.sync() {
                        tracing::error!("archive sync failed: {e}");
                    }
                    if a.stats().dropped_bytes == dropped_at_last_marker {
                        marker();
                    } else {
                        // Something since the last marker did not reach the
                        // disk: hold the checkpoint back (re-read, never loss).
                        dropped_at_last_marker = a.stats().dropped_bytes;
                    }
                }
                None => {
                    if jobs
                        .send(Job {
                            seq,
                            work: Work::Marker(marker),
                        })
                        .is_ok()
                    {
                        seq += 1;
                    }
                }
            },
            Some(Ingest::Start {
                source,
                lines_before: first,
            }) => {
                lines_before.insert(source.id, first);
            }
            Some(Ingest::Closed { source }) => {
                lines_before.remove(&source.id);
                if let Some(spool) = spools.remove(&source.id) {
                    // The connection ended inside an oversize line: a fragment.
                    spool.discard();
                }
            }
            None => {}
        }
        if last_tick.elapsed() >= tick {
            last_tick = Instant::now();
            if let Some(a) = archive.as_mut() {
                if reopen.swap(false, Ordering::Relaxed) {
                    if let Err(e) = a.reopen() {
                        tracing::error!("archive reopen failed: {e}");
                    }
                }
                a.tick(last_tick);
                if let Ok(mut l) = live.lock() {
                    l.archive = Some(a.stats());
                }
            }
        }
    }
    drop(jobs);
    for (_, spool) in spools.drain() {
        spool.discard();
    }
    archive.map(|mut a| {
        if let Err(e) = a.sync() {
            tracing::error!("archive sync at shutdown failed: {e}");
        }
        a.close()
    })
}

/// An oversize line in progress, spooled to disk so that lines of other
/// sources are not interleaved into it in the archive and it is never held
/// whole in memory. Appended to the archive in one go once its newline came.
struct Spool {
    file: std::fs::File,
    path: std::path::PathBuf,
}

impl Spool {
    fn discard(self) {
        drop(self.file);
        let _ = std::fs::remove_file(&self.path);
    }
}

fn spool_oversize(
    archive: &mut Archive,
    spools: &mut HashMap<u64, Spool>,
    source: &SourceInfo,
    piece: &[u8],
    done: bool,
    counters: &Counters,
) {
    use std::io::{Read, Seek, Write};
    use std::os::unix::fs::OpenOptionsExt;
    if let std::collections::hash_map::Entry::Vacant(slot) = spools.entry(source.id) {
        let path = archive
            .config()
            .dir
            .join(format!(".oversize-{}.spool", source.id));
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path);
        match opened {
            Ok(file) => {
                slot.insert(Spool { file, path });
            }
            Err(e) => {
                tracing::error!("cannot spool an oversize line from {}: {e}", source.name);
                Counters::add(&counters.archive_spool_dropped_bytes, piece.len() as u64);
                return;
            }
        }
    }
    let Some(spool) = spools.get_mut(&source.id) else {
        return;
    };
    if let Err(e) = spool.file.write_all(piece) {
        tracing::error!("cannot spool an oversize line from {}: {e}", source.name);
        Counters::add(&counters.archive_spool_dropped_bytes, piece.len() as u64);
        if let Some(s) = spools.remove(&source.id) {
            s.discard();
        }
        return;
    }
    if !done {
        return;
    }
    let Some(mut spool) = spools.remove(&source.id) else {
        return;
    };
    let mut buf = vec![0u8; 1 << 20];
    let total = spool.file.stream_position().unwrap_or(0);
    let mut left = total;
    if spool.file.rewind().is_ok() {
        while left > 0 {
            let want = (left as usize).min(buf.len());
            if spool.file.read_exact(&mut buf[..want]).is_err() {
                break;
            }
            left -= want as u64;
            archive.append_partial(&buf[..want], left == 0);
        }
    }
    if left > 0 {
        Counters::add(&counters.archive_spool_dropped_bytes, total);
    }
    spool.discard();
}

/// A bounded set of recently seen finding ids (drops byte-identical
/// re-sends: Vault re-sends an entry whole after a write that timed out).
pub struct RecentIds {
    set: HashSet<String>,
    order: VecDeque<String>,
    cap: usize,
}

impl RecentIds {
    pub fn new(cap: usize) -> Self {
        RecentIds {
            set: HashSet::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    /// True when `id` was not seen recently (and remembers it).
    pub fn insert(&mut self, id: &str) -> bool {
        if self.set.contains(id) {
            return false;
        }
        if self.order.len() >= self.cap {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        self.set.insert(id.to_owned());
        self.order.push_back(id.to_owned());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_ids_forget_the_oldest() {
        let mut r = RecentIds::new(2);
        assert!(r.insert("a"));
        assert!(!r.insert("a"));
        assert!(r.insert("b"));
        assert!(r.insert("c"));
        assert!(r.insert("a"), "a was evicted");
        assert!(!r.insert("c"));
    }
}
