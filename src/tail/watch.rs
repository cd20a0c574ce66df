//! notify (inotify) as a wake-up hint only.
//!
//! The kernel queue overflows (`IN_Q_OVERFLOW`), merges identical events and
//! sees nothing written by another NFS client (reliability facts 5), so no
//! event is ever trusted: any event, an overflow or an error only wakes the
//! tailer early, and the tailer's `stat`/`fstat` pass decides what happened.
//! Without a watcher (inotify limits, unsupported filesystems) the tailer
//! simply polls.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};

use super::TailCounters;

/// Watches the directories of the followed path (and of its symlink target).
pub struct Wake {
    watcher: Option<RecommendedWatcher>,
    dirs: HashSet<PathBuf>,
    tx: Sender<()>,
    rx: Receiver<()>,
}

impl Wake {
    /// A waker; `counters` receive `watch_events` / `watch_overflows` /
    /// `watch_errors`. Falls back to polling alone if notify cannot start.
    pub fn new(counters: Arc<TailCounters>) -> Wake {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let hint = tx.clone();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            match res {
                Ok(ev) => {
                    TailCounters::add(&counters.watch_events, 1);
                    if ev.need_rescan() {
                        TailCounters::add(&counters.watch_overflows, 1);
                    }
                }
                Err(_) => TailCounters::add(&counters.watch_errors, 1),
            }
            // Full means a wake-up is already pending: events are only hints.
            let _ = hint.try_send(());
        });
        let watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!("file watcher unavailable ({e}); polling only");
                None
            }
        };
        Wake {
            watcher,
            dirs: HashSet::new(),
            tx,
            rx,
        }
    }

    /// Makes sure the directory holding `path` (and, for a symlink, the
    /// directory of its current target) is watched. Cheap when it already is.
    pub fn watch_path(&mut self, path: &Path) {
        let mut dirs = vec![parent_dir(path)];
        if let Ok(target) = std::fs::canonicalize(path) {
            dirs.push(parent_dir(&target));
        }
        for d in dirs {
            if self.dirs.contains(&d) {
                continue;
            }
            if let Some(w) = self.watcher.as_mut() {
                match w.watch(&d, RecursiveMode::NonRecursive) {
                    Ok(()) => {
                        self.dirs.insert(d);
                    }
                    Err(e) => {
                        tracing::debug!("cannot watch {}: {e}", d.display());
                    }
                }
            }
        }
    }

    /// A sender that wakes the tailer (signals use it).
    pub fn sender(&self) -> Sender<()> {
        self.tx.clone()
    }

    /// The channel the tailer waits on.
    pub fn receiver(&self) -> &Receiver<()> {
        &self.rx
    }

    /// Whether notify is running.
    pub fn active(&self) -> bool {
        self.watcher.is_some()
    }
}

fn parent_dir(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}
