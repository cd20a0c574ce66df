//! A model-based test of the tailer (in process, on the work disk):
//! proptest generates sequences of write (whole entries and half ones),
//! rename rotation (with entries written into the old file before the
//! writer reopens), copytruncate, truncate-and-regrow, delete, checkpoints
//! (made durable at once or later), crashes (pending checkpoints lost),
//! clean stops and restarts, and checks what the tailer handed to the
//! pipeline against what a correct tailer must emit:
//!
//! * every line handed on is a whole entry that was written, with the
//!   offset and line number it has in its file (never a fragment);
//! * no entry is handed on twice, except entries handed on after the last
//!   durable checkpoint before a crash (once more per such crash);
//! * at the end every entry written is handed on, except entries whose
//!   bytes were destroyed (truncated or deleted) before the tailer read them.
//!
//! The payload is real OpenBao entries made unique (see `tail_support`).

#[path = "tail_support/mod.rs"]
mod support;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use auditwatch::pipeline::{Ingest, Marker};
use auditwatch::tail::{TailConfig, TailCounters, Tailer};
use proptest::prelude::*;
use support::{entry, open_append, seq_of, work_dir};

/// Rotated files kept (none is dropped within one case).
const KEEP: usize = 64;

#[derive(Debug, Clone)]
enum Op {
    /// `n` whole entries, then maybe the first half of one more.
    Write {
        n: u8,
        partial: bool,
    },
    Poll,
    /// Rename rotation; the writer appends `late` entries to the old file
    /// before it reopens; a new empty file is created.
    Rotate {
        late: u8,
    },
    CopyTruncate,
    /// `: > audit.log` then `n` entries, with no look in between.
    TruncateRegrow {
        n: u8,
    },
    /// Delete the file (after a look, so the tailer holds it open, or not).
    Delete {
        look_first: bool,
    },
    /// A checkpoint marker, made durable at once.
    Checkpoint,
    /// A checkpoint marker made durable only at the next `Durable`.
    PendingCheckpoint,
    Durable,
    /// kill -9: pending markers never run.
    Crash,
    /// SIGTERM: a final marker, durable.
    Stop,
    Start,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (1u8..4, any::<bool>()).prop_map(|(n, partial)| Op::Write { n, partial }),
        7 => Just(Op::Poll),
        3 => (0u8..3).prop_map(|late| Op::Rotate { late }),
        1 => Just(Op::CopyTruncate),
        1 => (1u8..8).prop_map(|n| Op::TruncateRegrow { n }),
        1 => any::<bool>().prop_map(|look_first| Op::Delete { look_first }),
        2 => Just(Op::Checkpoint),
        1 => Just(Op::PendingCheckpoint),
        1 => Just(Op::Durable),
        2 => Just(Op::Crash),
        1 => Just(Op::Stop),
        3 => Just(Op::Start),
    ]
}

/// One file's current content (a truncation starts a new content).
#[derive(Default)]
struct MFile {
    seqs: Vec<u64>,
    len: u64,
    lines: u64,
}

struct Model {
    path: PathBuf,
    files: Vec<MFile>,
    at_path: Option<usize>,
    /// `rotated[k]` is at `path.(k+1)`.
    rotated: Vec<usize>,
    /// A half-written entry: (file, rest, seq).
    pending: Option<(usize, Vec<u8>, u64)>,
    /// seq → (offset, line) in its file (copies keep both).
    loc: HashMap<u64, (u64, u64)>,
    written: Vec<u64>,
    may_lose: HashSet<u64>,
    next_seq: u64,
    /// Deleted files the tailer holds open (readable until it stops).
    deleted: Vec<usize>,
}

impl Model {
    fn file_path(&self, f: usize) -> Option<PathBuf> {
        if self.at_path == Some(f) {
            return Some(self.path.clone());
        }
        self.rotated
            .iter()
            .position(|x| *x == f)
            .map(|k| PathBuf::from(format!("{}.{}", self.path.display(), k + 1)))
    }

    fn append(&mut self, f: usize, bytes: &[u8]) {
        let p = self.file_path(f).expect("file exists");
        open_append(&p).write_all(bytes).unwrap();
        self.files[f].len += bytes.len() as u64;
    }

    fn write_entries(&mut self, f: usize, n: u64) {
        self.complete_pending();
        for _ in 0..n {
            let seq = self.next_seq;
            self.next_seq += 1;
            let mf = &self.files[f];
            self.loc.insert(seq, (mf.len, mf.lines + 1));
            self.append(f, &entry(seq));
            let mf = &mut self.files[f];
            mf.lines += 1;
            mf.seqs.push(seq);
            self.written.push(seq);
        }
    }

    fn write_half(&mut self, f: usize) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let e = entry(seq);
        let (head, rest) = e.split_at(e.len() / 2);
        let mf = &self.files[f];
        self.loc.insert(seq, (mf.len, mf.lines + 1));
        self.append(f, head);
        self.pending = Some((f, rest.to_vec(), seq));
    }

    fn complete_pending(&mut self) {
        if let Some((f, rest, seq)) = self.pending.take() {
            self.append(f, &rest);
            let mf = &mut self.files[f];
            mf.lines += 1;
            mf.seqs.push(seq);
            self.written.push(seq);
        }
    }

    /// The file at the path, created (empty) if missing.
    fn live(&mut self) -> usize {
        if let Some(f) = self.at_path {
            return f;
        }
        drop(open_append(&self.path));
        self.files.push(MFile::default());
        self.at_path = Some(self.files.len() - 1);
        self.files.len() - 1
    }

    fn shift(&mut self) {
        for k in (1..=self.rotated.len()).rev() {
            let from = format!("{}.{k}", self.path.display());
            let to = format!("{}.{}", self.path.display(), k + 1);
            std::fs::rename(from, to).unwrap();
        }
    }

    /// Bytes of file `f` are destroyed: what was not emitted is lost by design.
    fn destroy(&mut self, f: usize, emitted: &HashMap<u64, usize>) {
        for s in std::mem::take(&mut self.files[f].seqs) {
            if !emitted.contains_key(&s) {
                self.may_lose.insert(s);
            }
        }
        self.files[f].len = 0;
        self.files[f].lines = 0;
    }
}

/// What the tailer handed on.
#[derive(Default)]
struct Emitted {
    /// Source id → lines before its next block.
    lines: HashMap<u64, u64>,
    /// In order: every entry handed on.
    log: Vec<u64>,
    count: HashMap<u64, usize>,
}

impl Emitted {
    fn take(&mut self, m: Ingest, model: &Model) {
        match m {
            Ingest::Start {
                source,
                lines_before,
            } => {
                self.lines.insert(source.id, lines_before);
            }
            Ingest::Lines {
                source,
                block,
                offset,
                lines,
            } => {
                assert_eq!(
                    lines,
                    block.iter().filter(|b| **b == b'\n').count() as u64,
                    "the line count handed on"
                );
                let before = self.lines.entry(source.id).or_insert(0);
                let mut at = offset;
                for l in block.split_inclusive(|b| *b == b'\n') {
                    assert!(l.ends_with(b"\n"), "a fragment was handed on");
                    *before += 1;
                    let seq = seq_of(l).unwrap_or_else(|| {
                        panic!("not an entry: {:?}", String::from_utf8_lossy(l))
                    });
                    assert_eq!(l, &entry(seq)[..], "entry {seq} handed on altered");
                    assert_eq!(
                        model.loc[&seq],
                        (at, *before),
                        "entry {seq} located at (offset, line) = ({at}, {}) in {}",
                        *before,
                        source.name
                    );
                    at += l.len() as u64;
                    self.log.push(seq);
                    *self.count.entry(seq).or_insert(0) += 1;
                }
            }
            Ingest::Oversize { .. } => panic!("no entry is oversize here"),
            Ingest::Closed { .. } | Ingest::Marker(_) => {}
        }
    }
}

fn config(path: &Path, dir: &Path) -> TailConfig {
    let mut c = TailConfig::new(path, dir.join("state"));
    c.rotated = vec![format!("{}.*", path.display())];
    c.rotate_wait = Duration::ZERO;
    c.read_size = 4096;
    // The model writes no copy in steps: nothing needs to settle.
    c.settle = Duration::ZERO;
    c
}

fn run(ops: Vec<Op>) {
    let dir = work_dir();
    let path = dir.path().join("audit.log");
    let mut model = Model {
        path: path.clone(),
        files: Vec::new(),
        at_path: None,
        rotated: Vec::new(),
        pending: None,
        loc: HashMap::new(),
        written: Vec::new(),
        may_lose: HashSet::new(),
        next_seq: 0,
        deleted: Vec::new(),
    };
    let f = model.live();
    model.write_entries(f, 3);
    let counters = Arc::new(TailCounters::default());
    let open = || Tailer::open(config(&path, dir.path()), counters.clone()).unwrap();
    let mut tailer = Some(open());
    let mut em = Emitted::default();
    // Markers not yet durable, with how many entries were handed on when
    // each was made.
    let mut pending: Vec<(Marker, usize)> = Vec::new();
    let mut safe = 0usize;
    let mut allowed: HashMap<u64, usize> = HashMap::new();

    macro_rules! poll {
        () => {
            if let Some(t) = tailer.as_mut() {
                t.poll(&mut |m| em.take(m, &model));
            }
        };
    }
    for op in ops {
        match op {
            Op::Write { n, partial } => {
                let f = model.live();
                model.write_entries(f, n as u64);
                if partial {
                    model.write_half(f);
                }
            }
            Op::Poll => poll!(),
            Op::Rotate { late } => {
                let Some(old) = model.at_path else { continue };
                model.shift();
                std::fs::rename(&path, format!("{}.1", path.display())).unwrap();
                model.at_path = None;
                model.rotated.insert(0, old);
                assert!(model.rotated.len() < KEEP);
                model.complete_pending();
                model.write_entries(old, late as u64);
                model.live();
            }
            Op::CopyTruncate => {
                let Some(f) = model.at_path else { continue };
                model.complete_pending();
                model.shift();
                std::fs::copy(&path, format!("{}.1", path.display())).unwrap();
                let copy = MFile {
                    seqs: model.files[f].seqs.clone(),
                    len: model.files[f].len,
                    lines: model.files[f].lines,
                };
                model.files.push(copy);
                model.rotated.insert(0, model.files.len() - 1);
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .unwrap()
                    .set_len(0)
                    .unwrap();
                model.files[f] = MFile::default();
            }
            Op::TruncateRegrow { n } => {
                let Some(f) = model.at_path else { continue };
                model.complete_pending();
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .unwrap()
                    .set_len(0)
                    .unwrap();
                model.destroy(f, &em.count);
                model.write_entries(f, n as u64);
            }
            Op::Delete { look_first } => {
                let Some(f) = model.at_path else { continue };
                model.complete_pending();
                let held = look_first && tailer.is_some();
                if held {
                    poll!();
                }
                std::fs::remove_file(&path).unwrap();
                model.at_path = None;
                if held {
                    model.deleted.push(f);
                } else {
                    model.destroy(f, &em.count);
                }
            }
            Op::Checkpoint | Op::PendingCheckpoint | Op::Stop => {
                if matches!(op, Op::Stop) {
                    // A clean stop reads once more before its final checkpoint.
                    poll!();
                }
                let Some(t) = tailer.as_mut() else { continue };
                let m = t.marker(true).expect("forced");
                pending.push((m, em.log.len()));
                if !matches!(op, Op::PendingCheckpoint) {
                    for (m, at) in pending.drain(..) {
                        m();
                        safe = safe.max(at);
                    }
                }
                if matches!(op, Op::Stop) {
                    tailer = None;
                    for f in std::mem::take(&mut model.deleted) {
                        for s in &model.files[f].seqs {
                            assert!(
                                em.count.contains_key(s),
                                "entry {s} of a deleted file not drained at stop"
                            );
                        }
                    }
                }
            }
            Op::Durable => {
                for (m, at) in pending.drain(..) {
                    m();
                    safe = safe.max(at);
                }
            }
            Op::Crash => {
                if tailer.take().is_some() {
                    pending.clear();
                    // A deleted file is gone with the descriptors.
                    for f in std::mem::take(&mut model.deleted) {
                        model.destroy(f, &em.count);
                    }
                    // What was handed on since the last durable checkpoint
                    // may be handed on once more.
                    for s in &em.log[safe..] {
                        *allowed.entry(*s).or_insert(1) += 1;
                    }
                    safe = em.log.len();
                }
            }
            Op::Start => {
                if tailer.is_none() {
                    let mut t = open();
                    assert!(t.take_findings().is_empty(), "checkpoint never corrupt");
                    tailer = Some(t);
                }
            }
        }
    }
    model.complete_pending();
    if tailer.is_none() {
        tailer = Some(open());
    }
    for _ in 0..4 {
        poll!();
    }
    for s in &model.written {
        if model.may_lose.contains(s) {
            continue;
        }
        assert!(em.count.contains_key(s), "entry {s} was never handed on");
    }
    for (s, n) in &em.count {
        let max = allowed.get(s).copied().unwrap_or(1);
        assert!(*n <= max, "entry {s} handed on {n} times (at most {max})");
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        // PROPTEST_CASES=5000 for a longer hunt.
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(96),
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn tailer_emits_what_the_model_says(ops in proptest::collection::vec(op(), 1..40)) {
        run(ops);
    }
}

/// Scenarios worth keeping whatever proptest draws.
#[test]
fn model_regressions() {
    use Op::*;
    // Half a line, a crash during the pause, the rest.
    run(vec![
        Write {
            n: 2,
            partial: true,
        },
        Poll,
        Checkpoint,
        Crash,
        Start,
        Write {
            n: 1,
            partial: false,
        },
        Poll,
    ]);
    // Two rotations between looks, then a crash and a rotation while down.
    run(vec![
        Poll,
        Write {
            n: 2,
            partial: false,
        },
        Rotate { late: 1 },
        Write {
            n: 2,
            partial: true,
        },
        Rotate { late: 2 },
        Write {
            n: 1,
            partial: false,
        },
        Poll,
        PendingCheckpoint,
        Write {
            n: 3,
            partial: false,
        },
        Poll,
        Crash,
        Rotate { late: 0 },
        Write {
            n: 1,
            partial: false,
        },
        Start,
        Poll,
    ]);
    // copytruncate while down, and truncate-and-regrow between looks.
    run(vec![
        Poll,
        Checkpoint,
        Stop,
        Write {
            n: 3,
            partial: false,
        },
        CopyTruncate,
        Write {
            n: 2,
            partial: false,
        },
        Start,
        Poll,
        TruncateRegrow { n: 5 },
        Poll,
    ]);
    // Truncated and written again to exactly the size that was read (the
    // modification time tells), after two truncations nobody saw.
    run(vec![
        Write {
            n: 1,
            partial: true,
        },
        TruncateRegrow { n: 2 },
        TruncateRegrow { n: 1 },
        Write {
            n: 1,
            partial: false,
        },
        Write {
            n: 2,
            partial: false,
        },
        Write {
            n: 2,
            partial: true,
        },
        Write {
            n: 2,
            partial: false,
        },
        Write {
            n: 3,
            partial: false,
        },
        Write {
            n: 2,
            partial: true,
        },
        Rotate { late: 1 },
        Write {
            n: 2,
            partial: false,
        },
        Poll,
        TruncateRegrow { n: 2 },
    ]);
    // Deleted while held open, recreated.
    run(vec![
        Write {
            n: 2,
            partial: false,
        },
        Delete { look_first: true },
        Write {
            n: 2,
            partial: false,
        },
        Poll,
    ]);
}
