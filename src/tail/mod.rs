//! `auditwatch tail`: follows a file such as `/var/log/vault/audit.log`
//! across logrotate and resumes exactly after a restart.
//!
//! ```text
//! notify (hint) ─┐
//! poll timer ────┴─▶ tailer thread: stat(path) → which file is live?
//!                     │  pread each open file → Framer → complete lines only
//!                     ▼  blocking send (a file can wait; analysis never sheds)
//!                pipeline: archive → analysis ×N → judge → findings
//!                     │
//!                     └─ Marker every checkpoint interval: runs when every line
//!                        before it is durable (archive fsynced, or judged) →
//!                        checkpoint written tmp → fsync → rename → fsync(dir)
//! ```
//!
//! ## Identity
//! A file is known by `(device, inode)` *and* a prefix fingerprint of its
//! first bytes ([`ident`]): the inode alone is reused at once by ext4/xfs
//! (reliability facts 4), the head alone cannot tell a file from its copy.
//!
//! ## The state machine
//! Every pass (on a notify hint, else every `poll_interval`; inotify is never
//! trusted, facts 5) the tailer `stat`s the path and compares it with the
//! *live* file it holds open:
//!
//! | at the path | meaning | action |
//! |---|---|---|
//! | the same `(dev, ino)` | nothing moved | read on from the position |
//! | another file | rename + create, or a symlink retargeted | the old file becomes *draining*: its descriptor is read to its end and kept open until it stayed quiet for `rotate_wait` (Vault writes until its SIGHUP reopen); the new file is read from byte 0 — or from a remembered position if its identity is known (a symlink pointed back) |
//! | nothing | deleted | the open descriptor is drained the same way; a file created later is read from byte 0 |
//!
//! Within a file, every read is checked before its bytes are used: the file
//! must still begin with the bytes the fingerprint covers (and a read that
//! overlaps the head must return those very bytes), and at end of file its
//! size must not be below the position. Otherwise it was truncated or
//! rewritten in place — copytruncate, `: > audit.log`, even when it has
//! grown past the old position again (vector#23619) — and it is read again
//! from byte 0 as a new identity (`truncations_detected`). With `--rotated`,
//! the copy carrying the old head (logrotate's `copytruncate` copy) is
//! drained from the old position, so nothing already read is read twice.
//!
//! A last line without its newline stays in the framer until the newline
//! comes; it is never analysed, never archived, and the checkpoint never
//! moves past its start. A draining file that ends without one counts a
//! fragment.
//!
//! ## Restart
//! The checkpoint ([`checkpoint`]) lists every file identity open or
//! recently finished, with the offset after its last complete line and the
//! line count there. At start each identity is looked for at the path and
//! among the `--rotated` siblings (same inode and head, or the same head:
//! a compressed `.2.gz` is matched by its decompressed head) and read on from
//! its offset; rotated siblings the checkpoint does not know and that changed
//! after the tailer last saw its live file are read whole (rotations that
//! happened while it was down); a file at the path the checkpoint does not
//! know is read from byte 0. `--from` applies only when no checkpoint
//! exists. A corrupt checkpoint falls back to re-reading the file at the
//! path from byte 0 and raises an `auditwatch.checkpoint_corrupt` finding.
//!
//! ## Guarantees
//! A checkpoint is written only after every line it covers is in the
//! archive and fsynced (or, without an archive, judged and its findings
//! written). So nothing is lost across a crash, and entries are repeated
//! only for the lines read after the last checkpoint (one checkpoint
//! interval); a clean stop writes a final checkpoint and repeats nothing.

pub mod checkpoint;
mod follow;
pub mod ident;
pub mod watch;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use serde::Serialize;

pub use follow::{CaughtUpHook, PollOutcome, Tailer};

use crate::pipeline::Ingest;

/// Where a first start (no checkpoint) begins in the file at the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// From byte 0: no entry already in the file is skipped (the default).
    Beginning,
    /// After the last complete line.
    End,
}

/// What to follow and how.
#[derive(Debug, Clone)]
pub struct TailConfig {
    /// The path as given (symlinks are followed at every look).
    pub path: PathBuf,
    /// Where checkpoints live.
    pub state_dir: PathBuf,
    pub from: StartFrom,
    /// Globs naming the rotated siblings (`/var/log/vault/audit.log.*`).
    pub rotated: Vec<String>,
    pub poll_interval: Duration,
    pub checkpoint_interval: Duration,
    /// How long a rotated-away or deleted file is kept open after it went
    /// quiet at its end (the writer may still append until it reopens).
    pub rotate_wait: Duration,
    pub max_line: usize,
    /// Bytes per read (and per pooled block).
    pub read_size: usize,
    /// A rotated file never seen, shorter than a fingerprint and modified
    /// less than this ago, is looked at again later: it may be a copy still
    /// being written (copytruncate, gzip). At most 1 s (the margin by which
    /// rotated files are told new from old).
    pub settle: Duration,
}

impl TailConfig {
    /// The defaults: from the beginning, 250 ms polls, 1 s checkpoints,
    /// 5 s rotate wait.
    pub fn new(path: impl Into<PathBuf>, state_dir: impl Into<PathBuf>) -> TailConfig {
        TailConfig {
            path: path.into(),
            state_dir: state_dir.into(),
            from: StartFrom::Beginning,
            rotated: Vec::new(),
            poll_interval: Duration::from_millis(250),
            checkpoint_interval: Duration::from_secs(1),
            rotate_wait: Duration::from_secs(5),
            max_line: crate::framing::DEFAULT_MAX_LINE,
            read_size: DEFAULT_TAIL_READ,
            settle: Duration::from_secs(1),
        }
    }
}

/// Read size of the tailer (and size of its pooled blocks): large reads
/// keep a backlog's catch-up fast; [`BLOCKS_IN_FLIGHT`] bounds the memory.
pub const DEFAULT_TAIL_READ: usize = 1 << 20;
/// Blocks of one file in the pipeline at most (the tailer waits beyond it):
/// bounds the memory a backlog pins to about this many read buffers.
pub const BLOCKS_IN_FLIGHT: usize = 24;

/// Counters of the tailer (shared with checkpoint callbacks and the watcher).
#[derive(Debug, Default)]
pub struct TailCounters {
    pub files_opened: AtomicU64,
    pub rotations_detected: AtomicU64,
    pub truncations_detected: AtomicU64,
    /// Rotated files (re)opened to drain: after a restart, a copytruncate,
    /// or rotations between two looks.
    pub rotated_files_drained: AtomicU64,
    /// Unterminated tails of closed files (never analysed).
    pub fragments: AtomicU64,
    pub fragment_bytes: AtomicU64,
    pub bytes_read: AtomicU64,
    pub lines_read: AtomicU64,
    pub read_errors: AtomicU64,
    pub watch_events: AtomicU64,
    /// notify asked for a rescan (inotify queue overflow).
    pub watch_overflows: AtomicU64,
    pub watch_errors: AtomicU64,
    pub checkpoints_written: AtomicU64,
    pub checkpoint_errors: AtomicU64,
    pub checkpoint_corrupt: AtomicU64,
    /// Set when findings could not be written: checkpoints stop moving.
    pub output_failed: AtomicBool,
}

impl TailCounters {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> TailStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TailStats {
            files_opened: g(&self.files_opened),
            rotations_detected: g(&self.rotations_detected),
            truncations_detected: g(&self.truncations_detected),
            rotated_files_drained: g(&self.rotated_files_drained),
            fragments: g(&self.fragments),
            fragment_bytes: g(&self.fragment_bytes),
            bytes_read: g(&self.bytes_read),
            lines_read: g(&self.lines_read),
            read_errors: g(&self.read_errors),
            watch_events: g(&self.watch_events),
            watch_overflows: g(&self.watch_overflows),
            watch_errors: g(&self.watch_errors),
            checkpoints_written: g(&self.checkpoints_written),
            checkpoint_errors: g(&self.checkpoint_errors),
            checkpoint_corrupt: g(&self.checkpoint_corrupt),
        }
    }
}

/// [`TailCounters`] as plain numbers (the `tail` object of `--stats-json`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct TailStats {
    pub files_opened: u64,
    pub rotations_detected: u64,
    pub truncations_detected: u64,
    pub rotated_files_drained: u64,
    pub fragments: u64,
    pub fragment_bytes: u64,
    pub bytes_read: u64,
    pub lines_read: u64,
    pub read_errors: u64,
    pub watch_events: u64,
    pub watch_overflows: u64,
    pub watch_errors: u64,
    pub checkpoints_written: u64,
    pub checkpoint_errors: u64,
    pub checkpoint_corrupt: u64,
}

/// Drives a [`Tailer`] on the calling (std) thread until `stop` is set:
/// polls on every wake-up or `poll_interval`, sends a checkpoint marker every
/// `checkpoint_interval` (when something moved), and a final one at stop.
/// Sends block: a file waits on disk while the pipeline is busy.
pub fn run(
    tailer: &mut Tailer,
    ingest: &Sender<Ingest>,
    wake: &Receiver<()>,
    stop: &AtomicBool,
    mut on_pass: impl FnMut(&mut Tailer),
) {
    let poll = tailer.config().poll_interval.max(Duration::from_millis(1));
    let every = tailer
        .config()
        .checkpoint_interval
        .max(Duration::from_millis(1));
    let mut next_marker = Instant::now() + every;
    let mut send = |m: Ingest| {
        if let Ingest::Lines { source, .. } | Ingest::Oversize { source, .. } = &m {
            // Every block in the pipeline holds a clone of its source: the
            // count is this file's blocks in flight (queued, being analysed
            // or judged). Bounding it bounds the memory a backlog pins.
            while Arc::strong_count(source) > BLOCKS_IN_FLIGHT && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        let _ = ingest.send(m);
    };
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        let out = tailer.poll(&mut send);
        on_pass(tailer);
        let now = Instant::now();
        if out.at_end && tailer.wants_caught_up_marker() {
            if let Some(m) = tailer.marker(true) {
                send(Ingest::Marker(m));
            }
        }
        if now >= next_marker {
            if let Some(m) = tailer.marker(false) {
                send(Ingest::Marker(m));
            }
            next_marker = now + every;
        }
        if stopping || stop.load(Ordering::Relaxed) {
            break;
        }
        if out.more {
            continue;
        }
        let wait = poll.min(next_marker.saturating_duration_since(now));
        let _ = wake.recv_timeout(wait);
        while wake.try_recv().is_ok() {}
    }
    if let Some(m) = tailer.marker(true) {
        send(Ingest::Marker(m));
    }
}
