//! Shared by `tests/tail.rs` and `tests/tail_model.rs`: real OpenBao
//! entries with unique ids, a running `auditwatch tail`, a Vault-like writer
//! that rotates its file, and readers of the fallback archive.
//!
//! **Payload.** Every entry is a real line of
//! `tests/data/openbao/scenarios.log` (round robin), with two values
//! rewritten so that each written entry is unique and can be counted:
//! `time` becomes `2030-01-01T00:00:00.<seq, 9 digits>Z` (so two files never
//! begin alike, as with Vault's nanosecond times) and `request.id` becomes
//! `seq-<seq, 8 digits>` (every occurrence of the original id in the line).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The real entries that carry a `request.id`, with that id.
fn templates() -> &'static [(Vec<u8>, String)] {
    static T: OnceLock<Vec<(Vec<u8>, String)>> = OnceLock::new();
    T.get_or_init(|| {
        let data = std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/openbao/scenarios.log"),
        )
        .unwrap();
        data.split_inclusive(|b| *b == b'\n')
            .filter_map(|l| {
                let v: serde_json::Value = serde_json::from_slice(l).ok()?;
                let id = v["request"]["id"].as_str()?.to_owned();
                let t = v["time"].as_str()?;
                // Only lines whose time and id can be rewritten textually.
                let s = std::str::from_utf8(l).ok()?;
                (s.starts_with(&format!("{{\"time\":\"{t}\"")) && s.contains(&format!("\"{id}\"")))
                    .then(|| (l.to_vec(), id))
            })
            .collect()
    })
}

/// Entry number `seq` (ends with `\n`).
pub fn entry(seq: u64) -> Vec<u8> {
    let t = templates();
    let (line, id) = &t[(seq as usize) % t.len()];
    rewrite(line, id, seq, "")
}

fn rewrite(line: &[u8], id: &str, seq: u64, pad: &str) -> Vec<u8> {
    let s = std::str::from_utf8(line).unwrap();
    let time_end = s[9..].find('"').unwrap() + 9;
    let mut out = format!(
        "{{\"time\":\"2030-01-01T00:00:00.{:09}Z{}",
        seq % 1_000_000_000,
        &s[time_end..]
    );
    out = out.replace(&format!("\"{id}\""), &format!("\"seq-{seq:08}{pad}\""));
    out.into_bytes()
}

/// Entry `seq` made exactly `len` bytes long (newline included) by padding
/// its request id; built from the shortest template.
pub fn entry_of_len(seq: u64, len: usize) -> Vec<u8> {
    let t = templates();
    let (line, id) = t.iter().min_by_key(|(l, _)| l.len()).unwrap();
    let base = rewrite(line, id, seq, "").len();
    let occurrences = std::str::from_utf8(line)
        .unwrap()
        .matches(&format!("\"{id}\""))
        .count();
    assert!(
        len >= base && (len - base).is_multiple_of(occurrences),
        "cannot pad to {len}"
    );
    let pad = "-".to_owned() + &"x".repeat((len - base) / occurrences - 1);
    let out = rewrite(line, id, seq, &pad);
    assert_eq!(out.len(), len);
    out
}

/// The sequence number of an entry written by [`entry`].
pub fn seq_of(line: &[u8]) -> Option<u64> {
    let at = memchr::memmem::find(line, b"\"seq-")? + 5;
    std::str::from_utf8(line.get(at..at + 8)?)
        .ok()?
        .parse()
        .ok()
}

/// A scratch directory on the work disk (ext4 reuses inode numbers; tmpfs
/// may never do so).
pub fn work_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// Polls `cond` every 20 ms until it holds or `limit` passes.
pub fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn kill(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a child we spawned; no memory is involved.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// A running `auditwatch tail PATH` with its state, archive, findings and
/// stats in `base`.
pub struct Tail {
    child: Option<Child>,
    pub base: PathBuf,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

impl Tail {
    /// Starts it and waits for `ready`. `extra` comes after the defaults
    /// (`--state base/state --archive base/arch -o base/findings.jsonl
    /// --stats-json base/stats.json --rotate-wait 1s`).
    pub fn start(path: &Path, base: &Path, extra: &[&str]) -> Tail {
        let mut child = Command::new(env!("CARGO_BIN_EXE_auditwatch"))
            .arg("tail")
            .arg(path)
            .arg("--state")
            .arg(base.join("state"))
            .arg("--archive")
            .arg(base.join("arch"))
            .arg("-o")
            .arg(base.join("findings.jsonl"))
            .arg("--stats-json")
            .arg(base.join("stats.json"))
            .args(["--rotate-wait", "1s", "--threads", "2"])
            .env("AUDITWATCH_LOG", "info")
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let err = BufReader::new(child.stderr.take().unwrap());
            let lines = stderr.clone();
            let log = base.join("stderr.log");
            std::thread::spawn(move || {
                let mut log = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)
                    .unwrap();
                for line in err.lines() {
                    let Ok(line) = line else { break };
                    let _ = writeln!(log, "{line}");
                    if line.contains("auditwatch tail: ready") {
                        let _ = tx.send(());
                    }
                    lines.lock().unwrap().push(line);
                }
            });
        }
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = child.kill();
            panic!(
                "auditwatch tail did not become ready: {:?}",
                stderr.lock().unwrap()
            );
        }
        Tail {
            child: Some(child),
            base: base.to_path_buf(),
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn signal(&self, sig: i32) {
        kill(self.pid(), sig);
    }

    /// SIGKILL, and reap it.
    pub fn kill9(&mut self) {
        let mut c = self.child.take().unwrap();
        let _ = c.kill();
        let _ = c.wait();
    }

    /// SIGTERM; returns the exit code.
    pub fn term(&mut self) -> i32 {
        let mut c = self.child.take().unwrap();
        kill(c.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("auditwatch tail did not stop within 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn saw(&self, needle: &str) -> bool {
        self.stderr
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(needle))
    }

    pub fn stats(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.base.join("stats.json")).unwrap()).unwrap()
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // auditwatch's own account of what it saw, for the failure report.
            if let Ok(log) = std::fs::read_to_string(self.base.join("stderr.log")) {
                eprintln!("--- auditwatch stderr ---\n{log}--- end ---");
            }
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Every line of the archive in `dir` (rotated segments by name, then the
/// live file). Panics on a line without its newline (a torn line).
pub fn archive_lines(dir: &Path) -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    let n = p.file_name().unwrap().to_string_lossy().into_owned();
                    n.starts_with("audit-") && n.ends_with(".log")
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files.push(dir.join("audit.log"));
    let mut out = Vec::new();
    for f in files {
        let Ok(bytes) = std::fs::read(&f) else {
            continue;
        };
        for l in bytes.split_inclusive(|b| *b == b'\n') {
            assert!(l.ends_with(b"\n"), "torn line in {}", f.display());
            out.push(l.to_vec());
        }
    }
    out
}

/// How often each sequence number is in the archive.
pub fn archive_counts(dir: &Path) -> BTreeMap<u64, usize> {
    let mut m = BTreeMap::new();
    for l in archive_lines(dir) {
        let s =
            seq_of(&l).unwrap_or_else(|| panic!("foreign line {:?}", String::from_utf8_lossy(&l)));
        assert_eq!(
            l,
            entry_like(s, &l),
            "archived bytes differ from what was written"
        );
        *m.entry(s).or_insert(0) += 1;
    }
    m
}

/// What was written for `seq` (entries of a fixed length are recognised by
/// their length).
fn entry_like(seq: u64, line: &[u8]) -> Vec<u8> {
    let e = entry(seq);
    if e.len() == line.len() {
        e
    } else {
        entry_of_len(seq, line.len())
    }
}

/// Appends entries to a file like Vault's file device does (`O_APPEND`, one
/// `write` per entry).
pub fn open_append(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .unwrap()
}

pub fn append(path: &Path, seqs: std::ops::Range<u64>) {
    let mut f = open_append(path);
    for s in seqs {
        f.write_all(&entry(s)).unwrap();
    }
}

/// How the file is rotated (by a separate thread, like logrotate, while the
/// writer keeps appending).
#[derive(Debug, Clone, Copy)]
pub enum Rotation {
    /// Never.
    None,
    /// logrotate's default with `create`: the file → `.1` (after shifting
    /// the older ones), a new empty file created, and the writer told to
    /// reopen `reopen_after` later (Vault on its SIGHUP): until then it
    /// still appends to the renamed file. With `compress`, `.1` becomes
    /// `.2.gz` at the next rotation (`delaycompress`).
    Rename {
        keep: usize,
        compress: bool,
        reopen_after: Duration,
    },
    /// logrotate's `copytruncate`: copy to `.1` (after shifting), then
    /// truncate; what the writer appends in between is lost by design.
    CopyTruncate { keep: usize },
}

pub fn rotated(path: &Path, k: usize) -> PathBuf {
    PathBuf::from(format!("{}.{k}", path.display()))
}

fn rotated_gz(path: &Path, k: usize) -> PathBuf {
    PathBuf::from(format!("{}.{k}.gz", path.display()))
}

/// Shifts `.1 … .(keep-1)` (plain or `.gz`) up by one; the last is dropped.
fn shift(path: &Path, keep: usize) {
    for k in (1..keep).rev() {
        for (from, to) in [
            (rotated(path, k), rotated(path, k + 1)),
            (rotated_gz(path, k), rotated_gz(path, k + 1)),
        ] {
            if from.exists() {
                std::fs::rename(&from, to).unwrap();
            }
        }
    }
}

/// `.1` → `.2.gz` (gzip writes the new file, then the plain one goes).
fn delay_compress(path: &Path) {
    let one = rotated(path, 1);
    let Ok(data) = std::fs::read(&one) else {
        return;
    };
    let mut e = flate2::write::GzEncoder::new(
        std::fs::File::create(rotated_gz(path, 2)).unwrap(),
        flate2::Compression::fast(),
    );
    e.write_all(&data).unwrap();
    e.finish().unwrap().sync_all().unwrap();
    std::fs::remove_file(one).unwrap();
}

/// A writer thread appending entries at a steady rate, and a rotator thread.
pub struct Writer {
    stop: Arc<AtomicBool>,
    writer: Option<JoinHandle<WriterLog>>,
    rotator: Option<JoinHandle<usize>>,
}

/// What the writer did: when each entry was written (index = seq - first).
#[derive(Debug, Default)]
pub struct WriterLog {
    pub first: u64,
    pub written: Vec<Instant>,
    pub rotations: usize,
}

impl WriterLog {
    pub fn end(&self) -> u64 {
        self.first + self.written.len() as u64
    }
}

impl Writer {
    pub fn start(
        path: &Path,
        first: u64,
        per_second: u64,
        every: Duration,
        rotation: Rotation,
    ) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let reopen = Arc::new(AtomicBool::new(false));
        let writer = {
            let path = path.to_path_buf();
            let stop = stop.clone();
            let reopen = reopen.clone();
            std::thread::spawn(move || {
                let mut log = WriterLog {
                    first,
                    ..WriterLog::default()
                };
                let mut f = open_append(&path);
                let start = Instant::now();
                let mut seq = first;
                while !stop.load(Ordering::Relaxed) {
                    let due = first + (start.elapsed().as_secs_f64() * per_second as f64) as u64;
                    while seq < due {
                        if reopen.swap(false, Ordering::Relaxed) {
                            f = open_append(&path);
                        }
                        f.write_all(&entry(seq)).unwrap();
                        log.written.push(Instant::now());
                        seq += 1;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                log
            })
        };
        let rotator = {
            let path = path.to_path_buf();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut rotations = 0;
                let mut next = Instant::now() + every;
                while !stop.load(Ordering::Relaxed) {
                    if Instant::now() < next {
                        std::thread::sleep(Duration::from_millis(2));
                        continue;
                    }
                    next += every;
                    match rotation {
                        Rotation::None => continue,
                        Rotation::Rename {
                            keep,
                            compress,
                            reopen_after,
                        } => {
                            shift(&path, keep);
                            if compress {
                                delay_compress(&path);
                            }
                            std::fs::rename(&path, rotated(&path, 1)).unwrap();
                            drop(open_append(&path));
                            std::thread::sleep(reopen_after);
                            reopen.store(true, Ordering::Relaxed);
                        }
                        Rotation::CopyTruncate { keep } => {
                            shift(&path, keep);
                            std::fs::copy(&path, rotated(&path, 1)).unwrap();
                            OpenOptions::new()
                                .write(true)
                                .open(&path)
                                .unwrap()
                                .set_len(0)
                                .unwrap();
                        }
                    }
                    rotations += 1;
                }
                rotations
            })
        };
        Writer {
            stop,
            writer: Some(writer),
            rotator: Some(rotator),
        }
    }

    pub fn stop(mut self) -> WriterLog {
        self.stop.store(true, Ordering::Relaxed);
        let rotations = self.rotator.take().unwrap().join().unwrap();
        let mut log = self.writer.take().unwrap().join().unwrap();
        log.rotations = rotations;
        log
    }
}

/// A small deterministic PRNG (xorshift64*), seeded and printed by tests.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    /// A seed from the clock, or `AUDITWATCH_TEST_SEED`.
    pub fn seed() -> u64 {
        std::env::var("AUDITWATCH_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            })
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `lo..hi` milliseconds.
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo).max(1))
    }
}
