//! The runner of a local sink (stdout, file): a bounded queue and a writer thread.
//!
//! `emit` waits at most `max_block` for room when the queue is full (deliberate, brief
//! backpressure from a slow terminal or disk), then drops and counts. While the writer fails
//! or has stalled (a full queue timed out and has not drained to half since), `emit` does not
//! wait at all, so a dead disk or a stopped reader costs the pipeline one `max_block`, once.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, SendTimeoutError, Sender};

use super::{backoff, SinkConfig, SinkState, SinkStats};
use crate::finding::Finding;

/// Writes findings somewhere local (blocking).
pub(crate) trait LocalWriter: Send {
    fn write(&mut self, f: &Finding) -> io::Result<()>;
    /// Called when the queue is empty (and before exiting).
    fn flush(&mut self) -> io::Result<()>;
}

pub(crate) struct LocalSink {
    tx: Option<Sender<Arc<Finding>>>,
    rx_len: Receiver<Arc<Finding>>,
    state: Arc<SinkState>,
    stalled: Arc<AtomicBool>,
    max_block: Duration,
    queue_max: usize,
    handle: Option<JoinHandle<()>>,
    /// Set when shutdown gives up: the writer stops at the next finding.
    abandon: Arc<AtomicBool>,
}

impl LocalSink {
    pub fn start(
        cfg: &SinkConfig,
        state: Arc<SinkState>,
        mut writer: Box<dyn LocalWriter>,
    ) -> anyhow::Result<LocalSink> {
        let (tx, rx) = bounded::<Arc<Finding>>(cfg.queue_max);
        let stalled = Arc::new(AtomicBool::new(false));
        let abandon = Arc::new(AtomicBool::new(false));
        let (st, rx2, stl, ab) = (state.clone(), rx.clone(), stalled.clone(), abandon.clone());
        let (initial, max, queue_max) = (cfg.backoff_initial, cfg.backoff_max, cfg.queue_max);
        let handle = std::thread::Builder::new()
            .name(format!("sink-{}", cfg.name))
            .spawn(move || {
                writer_loop(
                    &rx2,
                    writer.as_mut(),
                    &st,
                    &stl,
                    &ab,
                    (initial, max),
                    queue_max,
                )
            })?;
        Ok(LocalSink {
            tx: Some(tx),
            rx_len: rx,
            state,
            stalled,
            max_block: cfg.max_block,
            queue_max: cfg.queue_max,
            handle: Some(handle),
            abandon,
        })
    }

    pub fn push(&self, f: Arc<Finding>) {
        let Some(tx) = &self.tx else {
            return;
        };
        let result = if self.stalled.load(Ordering::Relaxed) || self.state.failing() {
            tx.try_send(f).map_err(|e| match e {
                crossbeam_channel::TrySendError::Full(f) => SendTimeoutError::Timeout(f),
                crossbeam_channel::TrySendError::Disconnected(f) => {
                    SendTimeoutError::Disconnected(f)
                }
            })
        } else {
            tx.send_timeout(f, self.max_block)
        };
        match result {
            Ok(()) => {}
            Err(SendTimeoutError::Timeout(_)) => {
                self.stalled.store(true, Ordering::Relaxed);
                self.state.drop_findings(1, "queue full (output too slow)");
            }
            Err(SendTimeoutError::Disconnected(_)) => {
                self.state.drop_findings(1, "writer stopped");
            }
        }
    }

    /// Shutdown: no more findings; the writer drains the queue, flushes and exits.
    pub fn close(&mut self) {
        self.tx.take();
    }

    pub fn finished(&self) -> bool {
        match &self.handle {
            Some(h) => h.is_finished(),
            None => true,
        }
    }

    /// Waits for the writer until `end`, then counts what is left as dropped.
    pub fn join(&mut self, end: Instant) {
        self.close();
        if let Some(h) = self.handle.take() {
            while !h.is_finished() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(5));
            }
            if h.is_finished() {
                let _ = h.join();
            } else {
                self.abandon.store(true, Ordering::Relaxed);
            }
        }
        let left = self.rx_len.len() as u64;
        if left > 0 {
            // Take them out so a writer left behind cannot count them delivered as well.
            let taken = self.rx_len.try_iter().count() as u64;
            self.state
                .drop_findings(taken, "undelivered at shutdown (output blocked)");
        }
    }

    pub fn fill_stats(&self, s: &mut SinkStats) {
        s.queue_depth = self.rx_len.len() as u64;
        s.queue_max = self.queue_max as u64;
    }
}

fn writer_loop(
    rx: &Receiver<Arc<Finding>>,
    w: &mut dyn LocalWriter,
    state: &SinkState,
    stalled: &AtomicBool,
    abandon: &AtomicBool,
    (initial, max): (Duration, Duration),
    queue_max: usize,
) {
    loop {
        let f = match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(f) => f,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut attempt = 0u32;
        loop {
            if abandon.load(Ordering::Relaxed) {
                return;
            }
            if attempt > 0 {
                super::add(&state.c.retries, 1);
            }
            attempt += 1;
            match w.write(&f) {
                Ok(()) => {
                    state.success(1);
                    if rx.is_empty() {
                        if let Err(e) = w.flush() {
                            state.failure(&format!("flush: {e}"));
                        }
                    }
                    break;
                }
                Err(e) => {
                    state.failure(&e.to_string());
                    std::thread::sleep(backoff(initial, max, attempt).min(Duration::from_secs(5)));
                }
            }
        }
        if rx.len() <= queue_max / 2 {
            stalled.store(false, Ordering::Relaxed);
        }
    }
    let _ = w.flush();
}
