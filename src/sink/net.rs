//! The runner of a network sink: memory queue, spill thread, spool and the delivery thread
//! with its retries. [`Transport`] is what a webhook or syslog sink implements.
//!
//! ```text
//! emit ──push (never waits)──▶ mem queue ≤ queue_max ──pop batch──▶ delivery thread ──▶ Transport
//!                                  │ more than half full                 ▲ oldest first
//!                                  ▼ spill thread moves the oldest        │
//!                               spool (disk, ≤ spool_max_bytes) ──peek/commit┘
//! ```

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::spool::{Pos, Spool};
use super::{add, backoff, SinkConfig, SinkState, SinkStats, RETRY_AFTER_MAX};
use crate::finding::Finding;

/// Why a delivery attempt failed.
#[derive(Debug)]
pub(crate) struct Failure {
    /// Findings at the start of the batch that did get through.
    pub delivered: usize,
    /// The receiver refused the rest for good: do not retry.
    pub permanent: bool,
    /// The receiver asked to wait this long (`Retry-After`).
    pub retry_after: Option<Duration>,
    pub message: String,
}

impl Failure {
    pub fn retry(message: impl Into<String>) -> Failure {
        Failure {
            delivered: 0,
            permanent: false,
            retry_after: None,
            message: message.into(),
        }
    }
}

/// Sends findings somewhere over the network (blocking, with timeouts).
pub(crate) trait Transport: Send {
    /// Most findings in one `deliver` call.
    fn batch_max(&self) -> usize;
    /// How long to wait for a batch to fill (zero: send what is there).
    fn batch_wait(&self) -> Duration;
    fn deliver(&mut self, batch: &[Arc<Finding>]) -> Result<(), Failure>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Running,
    /// Shutdown: deliver what is left, then stop.
    Draining,
    /// Shutdown deadline near: stop delivering, spool what is in memory.
    Closing,
}

struct Mem {
    queue: VecDeque<Arc<Finding>>,
    /// A memory batch being delivered (spooled at close if not delivered by then).
    inflight: Option<Vec<Arc<Finding>>>,
    phase: Phase,
    delivery_done: bool,
    /// Findings the spill thread took from the queue and is writing to the spool.
    spilling: usize,
}

struct Shared {
    state: Arc<SinkState>,
    mem: Mutex<Mem>,
    /// The delivery thread waits here for work (and during backoff).
    work: Condvar,
    /// The spill thread waits here.
    spill: Condvar,
    spool: Option<Mutex<Spool>>,
    /// Mirrors of the spool's numbers, readable without waiting for its lock (held during
    /// disk writes).
    spool_pending: AtomicU64,
    spool_bytes: AtomicU64,
    queue_max: usize,
    spool_max_bytes: u64,
    backoff_initial: Duration,
    backoff_max: Duration,
}

pub(crate) struct NetSink {
    shared: Arc<Shared>,
    delivery: Option<JoinHandle<()>>,
    spiller: Option<JoinHandle<()>>,
}

impl NetSink {
    pub fn start(
        cfg: &SinkConfig,
        state: Arc<SinkState>,
        transport: Box<dyn Transport>,
    ) -> anyhow::Result<NetSink> {
        use anyhow::Context;
        let spool = match cfg.effective_spool_dir() {
            Some(dir) => {
                let s = Spool::open(&dir, cfg.spool_max_bytes).with_context(|| {
                    format!("sink {}: spool directory {}", cfg.name, dir.display())
                })?;
                add(&state.c.recovered, s.pending());
                if s.pending() > 0 {
                    tracing::info!(sink = %cfg.name, findings = s.pending(),
                        "sink: findings from an earlier run waiting in the spool");
                }
                Some(Mutex::new(s))
            }
            None => None,
        };
        let shared = Arc::new(Shared {
            state,
            mem: Mutex::new(Mem {
                queue: VecDeque::new(),
                inflight: None,
                phase: Phase::Running,
                delivery_done: false,
                spilling: 0,
            }),
            work: Condvar::new(),
            spill: Condvar::new(),
            spool_pending: AtomicU64::new(
                spool
                    .as_ref()
                    .map_or(0, |s| s.lock().map_or(0, |s| s.pending())),
            ),
            spool_bytes: AtomicU64::new(
                spool
                    .as_ref()
                    .map_or(0, |s| s.lock().map_or(0, |s| s.bytes())),
            ),
            spool,
            queue_max: cfg.queue_max,
            spool_max_bytes: cfg.spool_max_bytes,
            backoff_initial: cfg.backoff_initial,
            backoff_max: cfg.backoff_max,
        });
        let s = shared.clone();
        let delivery = std::thread::Builder::new()
            .name(format!("sink-{}", cfg.name))
            .spawn(move || deliver_loop(&s, transport))?;
        let spiller = if shared.spool.is_some() {
            let s = shared.clone();
            Some(
                std::thread::Builder::new()
                    .name(format!("spool-{}", cfg.name))
                    .spawn(move || spill_loop(&s))?,
            )
        } else {
            None
        };
        Ok(NetSink {
            shared,
            delivery: Some(delivery),
            spiller,
        })
    }

    /// Queues a finding; never waits for I/O (only for the queue's lock).
    pub fn push(&self, f: Arc<Finding>) {
        let sh = &self.shared;
        let mut m = sh.lock();
        if m.phase != Phase::Running || m.queue.len() >= sh.queue_max {
            drop(m);
            sh.state
                .drop_findings(1, "memory queue and spool (spool_max_bytes) full");
            return;
        }
        m.queue.push_back(f);
        let len = m.queue.len();
        drop(m);
        sh.work.notify_one();
        if sh.spool.is_some() && len > sh.spill_high() {
            sh.spill.notify_one();
        }
    }

    /// Shutdown, first step: deliver what is left, then stop.
    pub fn drain(&self) {
        self.shared.set_phase(Phase::Draining);
    }

    /// Shutdown, second step: stop delivering, spool (or count as dropped) what is in memory.
    pub fn close(&self) {
        self.shared.set_phase(Phase::Closing);
        if self.shared.spool.is_none() {
            let (queued, inflight) = {
                let mut m = self.shared.lock();
                (std::mem::take(&mut m.queue), m.inflight.take())
            };
            let n = queued.len() + inflight.map_or(0, |v| v.len());
            self.shared
                .state
                .drop_findings(n as u64, "undelivered at shutdown (no spool)");
        }
    }

    /// Nothing left to deliver.
    pub fn finished(&self) -> bool {
        self.shared.lock().delivery_done
    }

    /// Waits for the threads until `end`; a thread stuck in a network call is left behind.
    pub fn join(&mut self, end: Instant) {
        for h in [self.spiller.take(), self.delivery.take()]
            .into_iter()
            .flatten()
        {
            while !h.is_finished() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(5));
            }
            if h.is_finished() {
                let _ = h.join();
            }
        }
        self.shared.spool_op(|s| s.persist());
    }

    pub fn fill_stats(&self, s: &mut SinkStats) {
        let sh = &self.shared;
        {
            let m = sh.lock();
            s.queue_depth = m.queue.len() as u64;
            s.inflight = m.inflight.as_ref().map_or(0, |v| v.len() as u64);
        }
        s.queue_max = sh.queue_max as u64;
        s.spool_max_bytes = sh.spool_max_bytes;
        s.spool_pending = sh.spool_pending.load(Ordering::Relaxed);
        s.spool_bytes = sh.spool_bytes.load(Ordering::Relaxed);
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Mem> {
        self.mem.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_phase(&self, p: Phase) {
        let mut m = self.lock();
        if m.phase < p {
            m.phase = p;
        }
        drop(m);
        self.work.notify_all();
        self.spill.notify_all();
    }

    fn phase(&self) -> Phase {
        self.lock().phase
    }

    /// Spill when the memory queue holds more than this.
    fn spill_high(&self) -> usize {
        self.queue_max / 2
    }

    fn spool_pending(&self) -> u64 {
        self.spool_pending.load(Ordering::Relaxed)
    }

    /// Runs `f` on the spool (if any) and refreshes the mirrored numbers.
    fn spool_op<R>(&self, f: impl FnOnce(&mut Spool) -> R) -> Option<R> {
        let mut s = self
            .spool
            .as_ref()?
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let r = f(&mut s);
        self.spool_pending.store(s.pending(), Ordering::Relaxed);
        self.spool_bytes.store(s.bytes(), Ordering::Relaxed);
        Some(r)
    }

    /// Sleeps `d`, waking early only when shutdown reaches `Closing`.
    fn sleep(&self, d: Duration) {
        let until = Instant::now() + d;
        let mut m = self.lock();
        while m.phase != Phase::Closing {
            let now = Instant::now();
            if now >= until {
                break;
            }
            m = self
                .work
                .wait_timeout(m, until - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// Where the findings of a batch came from.
enum Source {
    Memory,
    Spool(Vec<Pos>),
}

fn deliver_loop(sh: &Shared, mut t: Box<dyn Transport>) {
    let batch_max = t.batch_max().max(1);
    let batch_wait = t.batch_wait();
    loop {
        // The spool holds the oldest findings: replay it first.
        if sh.spool.is_some() {
            if sh.phase() == Phase::Closing {
                break;
            }
            match sh.spool_op(|s| s.peek(batch_max)) {
                Some(Ok(items)) if !items.is_empty() => {
                    let mut batch = Vec::with_capacity(items.len());
                    let mut pos = Vec::with_capacity(items.len());
                    let mut bad = 0u64;
                    for (f, p) in items {
                        match f {
                            Some(f) => {
                                batch.push(f);
                                pos.push(p);
                            }
                            None if batch.is_empty() => {
                                // An unreadable line ahead of the batch: skip it for good.
                                bad += 1;
                                sh.spool_op(|s| s.commit(p, 1));
                            }
                            None => break, // deliver what precedes it first
                        }
                    }
                    sh.state.drop_findings(bad, "unreadable line in the spool");
                    if !batch.is_empty() {
                        deliver_with_retry(sh, t.as_mut(), batch, Source::Spool(pos));
                    }
                    continue;
                }
                Some(Ok(_)) | None => {}
                Some(Err(e)) => {
                    sh.state.failure(&format!("spool read: {e}"));
                    sh.sleep(sh.backoff_max);
                    continue;
                }
            }
        }
        // Then memory.
        let mut m = sh.lock();
        loop {
            if m.phase == Phase::Closing {
                m.delivery_done = true;
                return;
            }
            if !m.queue.is_empty() {
                break;
            }
            if m.phase == Phase::Draining && m.spilling == 0 && sh.spool_pending() == 0 {
                m.delivery_done = true;
                return;
            }
            // Wake up now and then in case the spill thread filled the spool.
            m = sh
                .work
                .wait_timeout(m, Duration::from_millis(200))
                .unwrap_or_else(|p| p.into_inner())
                .0;
            if sh.spool_pending() > 0 && m.phase != Phase::Closing {
                break;
            }
        }
        if m.queue.is_empty() {
            continue; // the spool has work
        }
        if batch_max > 1 && !batch_wait.is_zero() && m.phase == Phase::Running {
            let until = Instant::now() + batch_wait;
            while m.queue.len() < batch_max && m.phase == Phase::Running {
                let now = Instant::now();
                if now >= until {
                    break;
                }
                m = sh
                    .work
                    .wait_timeout(m, until - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            if m.queue.is_empty() {
                continue; // spilled meanwhile
            }
        }
        let n = m.queue.len().min(batch_max);
        let batch: Vec<_> = m.queue.drain(..n).collect();
        m.inflight = Some(batch.clone());
        drop(m);
        deliver_with_retry(sh, t.as_mut(), batch, Source::Memory);
    }
    sh.lock().delivery_done = true;
}

/// Delivers a batch, retrying with backoff until it is delivered, rejected for good, or
/// shutdown closes the sink (memory batches are then spooled by the spill thread; spool
/// batches stay uncommitted and are re-sent after a restart).
fn deliver_with_retry(
    sh: &Shared,
    t: &mut dyn Transport,
    mut batch: Vec<Arc<Finding>>,
    mut source: Source,
) {
    let state = &sh.state;
    let mut attempt = 0u32;
    while !batch.is_empty() {
        if attempt > 0 {
            if sh.phase() == Phase::Closing {
                return;
            }
            add(&state.c.retries, 1);
        }
        attempt += 1;
        let result = t.deliver(&batch);
        let (done, failure) = match result {
            Ok(()) => (batch.len(), None),
            Err(f) => (f.delivered.min(batch.len()), Some(f)),
        };
        if done > 0 {
            state.success(done as u64);
            settle(sh, &mut batch, &mut source, done);
        }
        let Some(f) = failure else {
            break;
        };
        state.failure(&f.message);
        if f.permanent {
            let n = batch.len();
            add(&state.c.rejected, n as u64);
            state.drop_findings(n as u64, &format!("rejected: {}", f.message));
            settle(sh, &mut batch, &mut source, n);
            break;
        }
        let delay = match f.retry_after {
            Some(d) => {
                d.min(RETRY_AFTER_MAX)
                    + backoff(Duration::from_millis(20), Duration::from_millis(200), 1)
            }
            None => backoff(sh.backoff_initial, sh.backoff_max, attempt),
        };
        sh.sleep(delay);
    }
    if matches!(source, Source::Memory) {
        sh.lock().inflight = None;
    }
}

/// The first `n` findings of the batch are done with (delivered or dropped).
fn settle(sh: &Shared, batch: &mut Vec<Arc<Finding>>, source: &mut Source, n: usize) {
    batch.drain(..n);
    match source {
        Source::Memory => {
            let mut m = sh.lock();
            if let Some(inflight) = m.inflight.as_mut() {
                let k = n.min(inflight.len());
                inflight.drain(..k);
            }
        }
        Source::Spool(pos) => {
            let last = pos[n - 1];
            pos.drain(..n);
            if let Some(Err(e)) = sh.spool_op(|s| s.commit(last, n as u64)) {
                tracing::warn!(sink = %sh.state.name, error = %e,
                    "spool: cannot record delivery (may re-deliver after a restart)");
            }
        }
    }
}

fn spill_loop(sh: &Shared) {
    // When an append found no room: the spool's size then. Spilling waits until deliveries
    // free some (or 5 s pass, for an error), leaving the findings in memory meanwhile.
    let mut full: Option<(u64, Instant)> = None;
    loop {
        let mut m = sh.lock();
        loop {
            if m.phase == Phase::Closing {
                break;
            }
            let blocked = full.is_some_and(|(bytes, at)| {
                sh.spool_bytes.load(Ordering::Relaxed) >= bytes
                    && at.elapsed() < Duration::from_secs(5)
            });
            if m.queue.len() > sh.spill_high() && !blocked {
                break;
            }
            m = sh
                .spill
                .wait_timeout(m, Duration::from_millis(500))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        let closing = m.phase == Phase::Closing;
        let mut items: Vec<Arc<Finding>> = Vec::new();
        if closing {
            if let Some(inflight) = m.inflight.take() {
                items.extend(inflight);
            }
            items.extend(m.queue.drain(..));
        } else {
            let keep = sh.queue_max / 4;
            let n = m.queue.len().saturating_sub(keep);
            items.extend(m.queue.drain(..n));
        }
        m.spilling = items.len();
        drop(m);
        let lines: Vec<Vec<u8>> = items
            .iter()
            .map(|f| {
                let mut v = serde_json::to_vec(&**f).unwrap_or_default();
                v.push(b'\n');
                v
            })
            .collect();
        let (written, err) = if lines.is_empty() {
            (0, None)
        } else {
            sh.spool_op(|s| s.append(&lines)).unwrap_or((0, None))
        };
        add(&sh.state.c.spooled, written as u64);
        let rest = &items[written..];
        let mut m = sh.lock();
        m.spilling = 0;
        if rest.is_empty() {
            full = None;
            drop(m);
        } else {
            full = Some((sh.spool_bytes.load(Ordering::Relaxed), Instant::now()));
            // These are the oldest: back to the front of the queue, as far as there is room.
            let back = if closing {
                0
            } else {
                sh.queue_max.saturating_sub(m.queue.len()).min(rest.len())
            };
            for f in rest[..back].iter().rev() {
                m.queue.push_front(f.clone());
            }
            drop(m);
            let why = match &err {
                Some(e) => format!("spool unwritable: {e}"),
                None => "memory queue and spool (spool_max_bytes) full".to_string(),
            };
            sh.state.drop_findings((rest.len() - back) as u64, &why);
            if err.is_some() {
                tracing::warn!(sink = %sh.state.name, error = ?err, "spool: cannot write");
            }
        }
        if written > 0 {
            sh.work.notify_one();
        }
        if closing {
            sh.spool_op(|s| s.persist());
            return;
        }
    }
}
