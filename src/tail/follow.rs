//! The tailer's state machine: which files are open, how far each was read,
//! and what a change at the followed path means. See the module docs of
//! [`crate::tail`] for the rules; this file implements them.

use std::collections::VecDeque;
use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use globset::{GlobBuilder, GlobMatcher};

use super::checkpoint::{self, Body, FileRole, FileState, Loaded, Store};
use super::ident::{read_head_at, read_head_stream, FileKey, Head, HEAD_MAX};
use super::{StartFrom, TailConfig, TailCounters};
use crate::finding::{Finding, SourceKind};
use crate::framing::{BufPool, Frame, FrameKind, Framer};
use crate::pipeline::{Ingest, Marker, SourceInfo};
use crate::replay::{detect, open_decoded, Compression};

/// Source ids, unique within the process (each file identity gets its own).
static NEXT_SOURCE: AtomicU64 = AtomicU64::new(1);
/// Bytes read from one file per pass before the others get their turn (and
/// before the driver checks for checkpoints and stop requests).
const PASS_BUDGET: u64 = 8 << 20;
/// Slack for coarse filesystem timestamps when telling rotated files that
/// changed after the tailer last looked from older ones.
const MTIME_MARGIN_NS: u64 = 1_000_000_000;
/// Finished identities remembered (the most recent). Older rotated files
/// are recognised as old by their modification time.
const FINISHED_KEEP: usize = 64;
/// How often the rotated siblings are scanned while a live file is followed.
const SCAN_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// What a poll pass did.
#[derive(Debug, Default, Clone, Copy)]
pub struct PollOutcome {
    /// Some file has more to read now (poll again without waiting).
    pub more: bool,
    /// Every open file was read to its current end.
    pub at_end: bool,
}

/// Called once, when the backlog found at start-up is durable/analysed.
pub type CaughtUpHook = Box<dyn FnOnce(&str) + Send>;

enum Input {
    /// A plain file, read with `pread` at the reader's position.
    Plain(File),
    /// A compressed rotated file, read as a stream (never grows).
    Stream(Box<dyn Read + Send>),
}

struct Reader {
    key: FileKey,
    head: Head,
    /// The bytes `head` covers, once checked: later checks compare bytes
    /// instead of hashing.
    head_bytes: Option<Vec<u8>>,
    compressed: bool,
    name: String,
    source: Arc<SourceInfo>,
    input: Input,
    framer: Framer,
    /// Next byte to read.
    pos: u64,
    /// Just after the last complete line handed on (checkpoints stop here).
    committed: u64,
    /// Lines before `committed`.
    lines: u64,
    /// Lines before the first byte read in this session (sent as `Start`).
    start_lines: u64,
    started: bool,
    role: FileRole,
    /// Last time a read returned data (or the role changed).
    quiet_since: Instant,
    /// When the file was last found as expected (not truncated).
    verified_at: SystemTime,
    /// Modification time when last found at its end (plain files).
    stamp: Option<Stamp>,
    at_eof: bool,
}

#[derive(Default)]
struct ReadOutcome {
    bytes: u64,
    eof: bool,
    /// Why the file is taken as truncated, if it is.
    truncated: Option<String>,
    /// An empty file was modified and is empty again: if it was written and
    /// copytruncated in between, its content is only in a copy.
    rewritten_empty: bool,
}

fn new_source(name: &str) -> Arc<SourceInfo> {
    Arc::new(SourceInfo {
        id: NEXT_SOURCE.fetch_add(1, Ordering::Relaxed),
        kind: SourceKind::File,
        name: name.to_owned(),
    })
}

impl Reader {
    #[allow(clippy::too_many_arguments)]
    fn new(
        pool: &BufPool,
        max_line: usize,
        input: Input,
        key: FileKey,
        head: Head,
        compressed: bool,
        name: String,
        role: FileRole,
        offset: u64,
        lines: u64,
    ) -> Reader {
        let mut framer = Framer::new(pool.clone(), max_line);
        framer.set_start_offset(offset);
        let stamp = stamp_of(&input);
        Reader {
            key,
            head,
            head_bytes: None,
            compressed,
            source: new_source(&name),
            name,
            input,
            framer,
            pos: offset,
            committed: offset,
            lines,
            start_lines: lines,
            started: false,
            role,
            quiet_since: Instant::now(),
            verified_at: SystemTime::now(),
            stamp,
            at_eof: false,
        }
    }

    fn state(&self, role: FileRole) -> FileState {
        FileState {
            role,
            name: self.name.clone(),
            dev: self.key.dev,
            ino: self.key.ino,
            head_len: self.head.len,
            head_sha256: self.head.hash_hex(),
            offset: self.committed,
            lines: self.lines,
            end: if role == FileRole::Finished {
                self.pos
            } else {
                0
            },
            compressed: self.compressed,
        }
    }

    /// The file was truncated or rewritten in place: start over from its
    /// first byte as a new identity (new source, line 1).
    fn reset(&mut self, pool: &BufPool, max_line: usize) {
        self.framer = Framer::new(pool.clone(), max_line);
        self.head = match &self.input {
            Input::Plain(f) => read_head_at(f, HEAD_MAX)
                .map(|h| Head::of(&h))
                .unwrap_or_else(|_| Head::empty()),
            Input::Stream(_) => Head::empty(),
        };
        self.head_bytes = None;
        self.source = new_source(&self.name);
        self.pos = 0;
        self.committed = 0;
        self.lines = 0;
        self.start_lines = 0;
        self.started = false;
        self.stamp = stamp_of(&self.input);
        self.at_eof = false;
        self.quiet_since = Instant::now();
    }

    /// Reads up to `budget` bytes, handing complete lines to `sink`. Stops
    /// at end of file, or as soon as the file turns out truncated (nothing
    /// read from it after the truncation is handed on).
    fn read_some(
        &mut self,
        budget: u64,
        read_size: usize,
        sink: &mut dyn FnMut(Ingest),
        counters: &TailCounters,
    ) -> io::Result<ReadOutcome> {
        let mut out = ReadOutcome::default();
        let now = SystemTime::now();
        while out.bytes < budget {
            let pos = self.pos;
            let spare = self.framer.spare();
            let lim = spare.len().min(read_size.max(1));
            let buf = &mut spare[..lim];
            let n = match &mut self.input {
                Input::Plain(f) => retry(|| f.read_at(buf, pos))?,
                Input::Stream(r) => retry(|| r.read(buf))?,
            };
            if n == 0 {
                if let Input::Plain(f) = &self.input {
                    let meta = f.metadata()?;
                    // Shorter than what was read, or than the head it had.
                    if meta.len() < pos.max(u64::from(self.head.len)) {
                        out.truncated = Some(format!(
                            "{} bytes, fewer than the {} read",
                            meta.len(),
                            pos.max(u64::from(self.head.len))
                        ));
                        return Ok(out);
                    }
                    // Modified since the last look without growing: truncated
                    // and written again to the same size in between? The
                    // head tells. (An empty file has no head: the caller
                    // looks for a copy; the truncation's own mtime update
                    // may also land just after its size change.)
                    let now_stamp = stamp(&meta);
                    let changed = self.stamp.is_some_and(|old| old != now_stamp);
                    self.stamp = Some(now_stamp);
                    if changed && self.head.len == 0 {
                        out.rewritten_empty = true;
                    } else if changed
                        && !head_ok(
                            &self.head,
                            &mut self.head_bytes,
                            &read_head_at(f, self.head.len as usize)?,
                        )
                    {
                        out.truncated = Some("modified without growing, head changed".into());
                        return Ok(out);
                    }
                }
                self.at_eof = true;
                self.verified_at = now;
                out.eof = true;
                return Ok(out);
            }
            if let Input::Plain(f) = &self.input {
                if !verify_head(f, &mut self.head, &mut self.head_bytes, pos, &buf[..n])? {
                    out.truncated = Some(format!("its first bytes changed (read at {pos})"));
                    return Ok(out);
                }
            }
            self.framer.commit(n);
            self.pos += n as u64;
            self.at_eof = false;
            self.quiet_since = Instant::now();
            out.bytes += n as u64;
            TailCounters::add(&counters.bytes_read, n as u64);
            while let Some(frame) = self.framer.next_frame() {
                self.emit(frame, sink, counters);
            }
        }
        self.verified_at = now;
        Ok(out)
    }

    fn emit(&mut self, frame: Frame, sink: &mut dyn FnMut(Ingest), counters: &TailCounters) {
        if !self.started {
            self.started = true;
            if self.start_lines > 0 {
                sink(Ingest::Start {
                    source: self.source.clone(),
                    lines_before: self.start_lines,
                });
            }
        }
        let end = frame.offset + frame.data.len() as u64;
        match frame.kind {
            FrameKind::Lines => {
                let n = memchr::memchr_iter(b'\n', &frame.data).count() as u64;
                self.committed = end;
                self.lines += n;
                TailCounters::add(&counters.lines_read, n);
                sink(Ingest::Lines {
                    source: self.source.clone(),
                    block: frame.data,
                    offset: frame.offset,
                    lines: n,
                });
            }
            FrameKind::Oversize {
                line_offset, done, ..
            } => {
                if done {
                    self.committed = end;
                    self.lines += 1;
                    TailCounters::add(&counters.lines_read, 1);
                }
                sink(Ingest::Oversize {
                    source: self.source.clone(),
                    piece: frame.data,
                    line_offset,
                    done,
                });
            }
        }
    }
}

fn retry(mut f: impl FnMut() -> io::Result<usize>) -> io::Result<usize> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// After a read of `data` at `pos` from a plain file: checks that the file
/// still begins with the bytes `head` covers and, where the read overlaps the
/// head, that it returned those very bytes; then grows `head`. `false` means
/// the file was truncated or rewritten since it was last looked at (also when
/// it grew back past the old offset: the vector#23619 case), and `data` must
/// not be used.
fn verify_head(
    f: &File,
    head: &mut Head,
    bytes: &mut Option<Vec<u8>>,
    pos: u64,
    data: &[u8],
) -> io::Result<bool> {
    let reach = (pos + data.len() as u64).min(HEAD_MAX as u64) as usize;
    let want = reach.max(head.len as usize);
    let h = read_head_at(f, want)?;
    if h.len() < want || !head_ok(head, bytes, &h) {
        return Ok(false);
    }
    if (pos as usize) < h.len() {
        let start = pos as usize;
        let end = h.len().min(start + data.len());
        if h[start..end] != data[..end - start] {
            return Ok(false);
        }
    }
    if h.len() > head.len as usize {
        *head = Head::of(&h);
        *bytes = Some(h);
    }
    Ok(true)
}

/// Whether `h` (a file's first bytes) begins with what `head` covers: a
/// byte comparison once the bytes are known, else the hash (once).
fn head_ok(head: &Head, bytes: &mut Option<Vec<u8>>, h: &[u8]) -> bool {
    let len = head.len as usize;
    if h.len() < len {
        return false;
    }
    match bytes {
        Some(b) if b.len() == len => b[..] == h[..len],
        _ => {
            let ok = head.is_prefix_of(h);
            if ok {
                *bytes = Some(h[..len].to_vec());
            }
            ok
        }
    }
}

/// `--rotated GLOB`: a literal directory and a file-name pattern.
struct RotatedGlob {
    dir: PathBuf,
    matcher: GlobMatcher,
}

fn parse_glob(pattern: &str) -> io::Result<RotatedGlob> {
    let (dir, name) = match pattern.rfind('/') {
        Some(0) => ("/", &pattern[1..]),
        Some(i) => (&pattern[..i], &pattern[i + 1..]),
        None => (".", pattern),
    };
    if dir.contains(['*', '?', '[', '{']) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("--rotated {pattern:?}: wildcards are allowed in the file name only"),
        ));
    }
    let matcher = GlobBuilder::new(name)
        .literal_separator(true)
        .build()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("--rotated: {e}")))?
        .compile_matcher();
    Ok(RotatedGlob {
        dir: PathBuf::from(dir),
        matcher,
    })
}

/// A rotated sibling, as found by a scan.
struct Candidate {
    path: PathBuf,
    key: FileKey,
    size: u64,
    mtime_ns: u64,
    compression: Compression,
    compressed: bool,
    /// Its first bytes (decompressed), up to [`HEAD_MAX`].
    head: Vec<u8>,
}

fn mtime_ns(m: &Metadata) -> u64 {
    (m.mtime().max(0) as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(m.mtime_nsec().max(0) as u64)
}

/// The modification time: tells that a file was written or truncated
/// (`chmod`/`chown` by logrotate's `create` do not change it).
type Stamp = u64;

fn stamp(m: &Metadata) -> Stamp {
    mtime_ns(m)
}

fn stamp_of(input: &Input) -> Option<Stamp> {
    match input {
        Input::Plain(f) => f.metadata().ok().map(|m| stamp(&m)),
        Input::Stream(_) => None,
    }
}

fn open_plain(path: &Path) -> io::Result<(File, Metadata)> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)?;
    let m = f.metadata()?;
    if !m.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", path.display()),
        ));
    }
    Ok((f, m))
}

fn compression_of(f: &File) -> io::Result<Compression> {
    let mut magic = [0u8; 4];
    let mut got = 0;
    while got < magic.len() {
        match retry(|| f.read_at(&mut magic[got..], got as u64))? {
            0 => break,
            n => got += n,
        }
    }
    Ok(detect(&magic[..got]))
}

/// Whether a compressed file is cheaply known to hold exactly `offset`
/// bytes once decompressed: gzip's `ISIZE` trailer (length mod 2^32) or
/// zstd's frame content size. Anything else answers `false` and the file is
/// decompressed up to `offset` to see whether more follows.
fn compressed_len_is(f: &File, kind: Compression, size: u64, offset: u64) -> bool {
    match kind {
        Compression::None => false,
        Compression::Gzip => {
            let mut t = [0u8; 4];
            size >= 18
                && f.read_exact_at(&mut t, size - 4).is_ok()
                && u64::from(u32::from_le_bytes(t)) == offset & 0xffff_ffff
        }
        Compression::Zstd => {
            let mut h = [0u8; 18];
            let n = (size as usize).min(h.len());
            f.read_exact_at(&mut h[..n], 0).is_ok()
                && matches!(
                    zstd::zstd_safe::get_frame_content_size(&h[..n]),
                    Ok(Some(len)) if len == offset
                )
        }
    }
}

/// Where the last complete line of `f` ends (0 if there is none).
fn last_line_end(f: &File, size: u64) -> io::Result<u64> {
    let mut end = size;
    let mut buf = vec![0u8; 64 << 10];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        f.read_exact_at(chunk, start)?;
        if let Some(i) = memchr::memrchr(b'\n', chunk) {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

fn count_lines(f: &File, upto: u64) -> io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let (mut at, mut lines) = (0u64, 0u64);
    while at < upto {
        let want = ((upto - at) as usize).min(buf.len());
        f.read_exact_at(&mut buf[..want], at)?;
        lines += memchr::memchr_iter(b'\n', &buf[..want]).count() as u64;
        at += want as u64;
    }
    Ok(lines)
}

/// Whether a known identity `st` is the file with `key` beginning `head`:
/// the same inode with the same head, or (once a line was read, so the head
/// covers at least a whole first line) any file with the same head, such as
/// a compressed or `copytruncate` copy.
fn same_identity(
    st_key: FileKey,
    st_head: &Head,
    st_offset: u64,
    key: FileKey,
    head: &[u8],
) -> bool {
    if st_key == key {
        st_head.is_prefix_of(head)
    } else {
        st_offset > 0 && st_head.len > 0 && st_head.is_prefix_of(head)
    }
}

/// The tailer: follows one path across rotations and truncations. Drive it
/// with [`Tailer::poll`] and [`Tailer::marker`] (see [`super::run`]).
pub struct Tailer {
    cfg: TailConfig,
    display: String,
    path_abs: String,
    globs: Vec<RotatedGlob>,
    pool: BufPool,
    readers: Vec<Reader>,
    finished: VecDeque<FileState>,
    store: Arc<Store>,
    counters: Arc<TailCounters>,
    /// Last time the live file was confirmed at the path.
    seen_at: SystemTime,
    /// Last scan of the rotated siblings.
    last_scan: SystemTime,
    /// No checkpoint existed: `--from` applies to the file found at start.
    first_start: bool,
    last_sent: Option<Vec<FileState>>,
    findings: Vec<Finding>,
    caught_up: Option<CaughtUpHook>,
    caught_up_done: bool,
    warned_missing: bool,
}

impl Tailer {
    /// Takes the state's lock, loads the checkpoint and works out, from the
    /// files now at the path and among the rotated siblings, where to
    /// resume. A corrupt checkpoint yields a finding ([`Tailer::take_findings`]).
    pub fn open(cfg: TailConfig, counters: Arc<TailCounters>) -> io::Result<Tailer> {
        let display = cfg.path.display().to_string();
        let path_abs = std::path::absolute(&cfg.path)?.display().to_string();
        let globs = cfg
            .rotated
            .iter()
            .map(|g| parse_glob(g))
            .collect::<io::Result<Vec<_>>>()?;
        let store = Arc::new(Store::open(&cfg.state_dir, &path_abs)?);
        let loaded = store.load()?;
        let pool = BufPool::new(cfg.read_size, 64);
        let mut t = Tailer {
            display,
            path_abs,
            globs,
            pool,
            readers: Vec::new(),
            finished: VecDeque::new(),
            store,
            counters,
            seen_at: SystemTime::now(),
            last_scan: SystemTime::now(),
            first_start: false,
            last_sent: None,
            findings: Vec::new(),
            caught_up: None,
            caught_up_done: false,
            warned_missing: false,
            cfg,
        };
        match loaded {
            Loaded::Missing => {
                t.first_start = true;
                t.open_live_at_start(None)?;
            }
            Loaded::Valid(body) => t.resume(body)?,
            Loaded::Corrupt {
                reason,
                digest,
                moved_to,
            } => {
                TailCounters::add(&t.counters.checkpoint_corrupt, 1);
                tracing::error!(
                    "checkpoint {} is corrupt ({reason}); re-reading {} from its first byte",
                    t.store.file().display(),
                    t.display
                );
                t.findings.push(checkpoint::corrupt_finding(
                    t.store.file(),
                    &t.display,
                    &reason,
                    &digest,
                    moved_to.as_deref(),
                ));
                t.open_live_at_start(Some(0))?;
            }
        }
        // Record at once where reading starts (nothing read yet, so nothing
        // needs to be durable first): a crash before the first periodic
        // checkpoint must still find these files, e.g. rotated by then.
        let body = t.snapshot();
        t.store.save(&body)?;
        TailCounters::add(&t.counters.checkpoints_written, 1);
        t.last_sent = Some(body.files);
        Ok(t)
    }

    pub fn config(&self) -> &TailConfig {
        &self.cfg
    }

    /// The checkpoint file.
    pub fn checkpoint_file(&self) -> &Path {
        self.store.file()
    }

    /// Findings raised at start-up (a corrupt checkpoint).
    pub fn take_findings(&mut self) -> Vec<Finding> {
        std::mem::take(&mut self.findings)
    }

    /// Called (once) when everything found at start-up has been read and is
    /// durable/analysed.
    pub fn on_caught_up(&mut self, hook: CaughtUpHook) {
        self.caught_up = Some(hook);
    }

    /// Whether this start had no checkpoint.
    pub fn first_start(&self) -> bool {
        self.first_start
    }

    /// The files open and remembered, as a checkpoint would record them.
    pub fn files(&self) -> Vec<FileState> {
        let mut v: Vec<FileState> = self.readers.iter().map(|r| r.state(r.role)).collect();
        v.extend(self.finished.iter().cloned());
        v
    }

    fn push_finished(&mut self, st: FileState) {
        if st.head_len == 0 {
            // Nothing is known of its content: nothing to recognise it by.
            return;
        }
        let head = st.head();
        self.finished
            .retain(|f| !(f.key() == st.key() && f.head() == head));
        self.finished.push_back(st);
        while self.finished.len() > FINISHED_KEEP {
            self.finished.pop_front();
        }
    }

    fn live_index(&self) -> Option<usize> {
        self.readers.iter().position(|r| r.role == FileRole::Live)
    }

    /// Inserts a draining reader before the live one (older files first).
    fn push_draining(&mut self, r: Reader) {
        match self.live_index() {
            Some(i) => self.readers.insert(i, r),
            None => self.readers.push(r),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn plain_reader(
        &self,
        file: File,
        key: FileKey,
        head: Head,
        name: String,
        role: FileRole,
        offset: u64,
        lines: u64,
    ) -> Reader {
        Reader::new(
            &self.pool,
            self.cfg.max_line,
            Input::Plain(file),
            key,
            head,
            false,
            name,
            role,
            offset,
            lines,
        )
    }

    /// A draining reader for a rotated candidate, from `offset`.
    fn candidate_reader(
        &self,
        c: &Candidate,
        head: Head,
        offset: u64,
        lines: u64,
    ) -> io::Result<Reader> {
        let (file, meta) = open_plain(&c.path)?;
        if FileKey::of(&meta) != c.key {
            // Rotated again since the scan: found under its new name next time.
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "renamed since it was looked at",
            ));
        }
        let name = c.path.display().to_string();
        if !c.compressed {
            return Ok(self.plain_reader(
                file,
                c.key,
                head,
                name,
                FileRole::Draining,
                offset,
                lines,
            ));
        }
        let mut stream = open_decoded(Box::new(file))?;
        // Offsets of a compressed file are in its decompressed stream.
        let skipped = io::copy(&mut (&mut stream).take(offset), &mut io::sink())?;
        let head = if offset == 0 { Head::of(&c.head) } else { head };
        let mut r = Reader::new(
            &self.pool,
            self.cfg.max_line,
            Input::Stream(stream),
            c.key,
            head,
            true,
            name,
            FileRole::Draining,
            skipped,
            lines,
        );
        if skipped < offset {
            r.at_eof = true;
        }
        Ok(r)
    }

    /// The rotated siblings named by `--rotated`, oldest first, without the
    /// file `exclude` (the one at the path, should the glob match it too).
    fn scan_candidates(&self, exclude: Option<FileKey>) -> Vec<Candidate> {
        let mut out: Vec<Candidate> = Vec::new();
        for g in &self.globs {
            let entries = match std::fs::read_dir(&g.dir) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!("cannot list {}: {e}", g.dir.display());
                    continue;
                }
            };
            for e in entries.flatten() {
                if !g.matcher.is_match(Path::new(&e.file_name())) {
                    continue;
                }
                let path = e.path();
                let Ok((f, meta)) = open_plain(&path) else {
                    continue;
                };
                let key = FileKey::of(&meta);
                if Some(key) == exclude || out.iter().any(|c| c.key == key) {
                    continue;
                }
                let compression = compression_of(&f).unwrap_or(Compression::None);
                let compressed = compression != Compression::None;
                let head = if compressed {
                    open_decoded(Box::new(f)).and_then(|mut s| read_head_stream(&mut *s))
                } else {
                    read_head_at(&f, HEAD_MAX)
                };
                let Ok(head) = head else {
                    tracing::warn!("cannot read the head of {}", path.display());
                    continue;
                };
                out.push(Candidate {
                    path,
                    key,
                    size: meta.len(),
                    mtime_ns: mtime_ns(&meta),
                    compression,
                    compressed,
                    head,
                });
            }
        }
        out.sort_by(|a, b| a.mtime_ns.cmp(&b.mtime_ns).then(b.path.cmp(&a.path)));
        out
    }

    /// Drains rotated files that changed after `since_ns` and were never
    /// seen (rotations that happened between two looks, or while down), and
    /// finished files that grew after they were closed.
    fn drain_unseen(&mut self, cands: &[Candidate], since_ns: u64) {
        let floor = since_ns.saturating_sub(MTIME_MARGIN_NS);
        for c in cands {
            // An open file is recognised by its inode alone: the open
            // descriptor keeps the number from being reused, and its reader
            // notices a truncation by itself. A copy of an open file (same
            // head) is not new either.
            let open = self.readers.iter().any(|r| {
                r.key == c.key || r.committed > 0 && r.head.len > 0 && r.head.is_prefix_of(&c.head)
            });
            if open {
                continue;
            }
            let known = self
                .finished
                .iter()
                .position(|f| same_identity(f.key(), &f.head(), f.offset, c.key, &c.head));
            if let Some(k) = known {
                let f = &self.finished[k];
                if !c.compressed && c.size > f.end.max(f.offset) {
                    let f = f.clone();
                    match self.candidate_reader(c, f.head(), f.offset, f.lines) {
                        Ok(r) => {
                            self.finished.remove(k);
                            tracing::info!("{}: grew after it was closed; reading on", r.name);
                            TailCounters::add(&self.counters.rotated_files_drained, 1);
                            self.push_draining(r);
                        }
                        Err(e) => tracing::warn!("cannot open {}: {e}", c.path.display()),
                    }
                }
                continue;
            }
            if c.mtime_ns <= floor {
                continue;
            }
            // Shorter than a fingerprint and still being written: perhaps a
            // copy (copytruncate, gzip) in the making, whose head cannot be
            // compared yet. Decided at a later scan (it stays newer than the
            // floor then: `settle` ≤ the margin).
            let now = checkpoint::unix_ns(SystemTime::now());
            if c.head.len() < HEAD_MAX
                && now.saturating_sub(c.mtime_ns) < self.cfg.settle.as_nanos() as u64
            {
                continue;
            }
            match self.candidate_reader(c, Head::of(&c.head), 0, 0) {
                Ok(r) => {
                    tracing::info!("{}: rotated file never seen; reading it whole", r.name);
                    TailCounters::add(&self.counters.rotated_files_drained, 1);
                    self.push_draining(r);
                }
                Err(e) => tracing::warn!("cannot open {}: {e}", c.path.display()),
            }
        }
    }

    /// Start-up with no usable checkpoint: open the path, from `offset`
    /// (`None`: as `--from` says).
    fn open_live_at_start(&mut self, offset: Option<u64>) -> io::Result<()> {
        let (file, meta) = match open_plain(&self.cfg.path) {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.warn_missing();
                return Ok(());
            }
            Err(e) => return Err(annotate(e, &self.display)),
        };
        let (offset, lines) = match (offset, self.cfg.from) {
            (Some(o), _) => (o, count_lines(&file, o)?),
            (None, StartFrom::Beginning) => (0, 0),
            (None, StartFrom::End) => {
                // At a line boundary: a last line still being written is
                // read whole once its newline comes.
                let end = last_line_end(&file, meta.len())?;
                (end, count_lines(&file, end)?)
            }
        };
        let head = Head::of(&read_head_at(&file, HEAD_MAX)?);
        let r = self.plain_reader(
            file,
            FileKey::of(&meta),
            head,
            self.display.clone(),
            FileRole::Live,
            offset,
            lines,
        );
        TailCounters::add(&self.counters.files_opened, 1);
        self.readers.push(r);
        self.seen_at = SystemTime::now();
        Ok(())
    }

    fn warn_missing(&mut self) {
        if !self.warned_missing {
            self.warned_missing = true;
            tracing::warn!("{} does not exist (yet); waiting for it", self.display);
        }
    }

    /// Start-up with a checkpoint: find each remembered identity at the path
    /// or among the rotated siblings and resume it; read whole the rotated
    /// files that changed after the checkpoint and were never seen.
    fn resume(&mut self, body: Body) -> io::Result<()> {
        let live = match open_plain(&self.cfg.path) {
            Ok((f, m)) => {
                let head = read_head_at(&f, HEAD_MAX)?;
                Some((f, FileKey::of(&m), head))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(annotate(e, &self.display)),
        };
        let cands = self.scan_candidates(live.as_ref().map(|l| l.1));
        let mut claimed = vec![false; cands.len()];
        let mut live = live.map(|(f, k, h)| (Some(f), k, h));
        let mut resumed_live = false;
        let mut states = body.files;
        // Exact (inode and head) matches first, then head-only matches.
        states.sort_by_key(|s| s.role != FileRole::Live);
        let mut placed = vec![false; states.len()];
        for pass in 0..2 {
            for (si, st) in states.iter().enumerate() {
                if placed[si] {
                    continue;
                }
                let head = st.head();
                let fits = |key: FileKey, h: &[u8]| {
                    if pass == 0 {
                        key == st.key() && head.is_prefix_of(h)
                    } else {
                        same_identity(st.key(), &head, st.offset, key, h)
                    }
                };
                if let Some((file, key, h)) = live.as_mut() {
                    if file.is_some() && fits(*key, h) {
                        let file = file.take().expect("checked");
                        let r = self.plain_reader(
                            file,
                            *key,
                            head,
                            self.display.clone(),
                            FileRole::Live,
                            st.offset,
                            st.lines,
                        );
                        TailCounters::add(&self.counters.files_opened, 1);
                        self.readers.push(r);
                        placed[si] = true;
                        resumed_live = true;
                        continue;
                    }
                }
                let found = cands
                    .iter()
                    .enumerate()
                    .find(|(ci, c)| !claimed[*ci] && fits(c.key, &c.head));
                if let Some((ci, c)) = found {
                    claimed[ci] = true;
                    placed[si] = true;
                    // A finished file is read again only past where it ended.
                    let seen = if st.role == FileRole::Finished {
                        st.end.max(st.offset)
                    } else {
                        st.offset
                    };
                    let more = if c.compressed {
                        !File::open(&c.path)
                            .is_ok_and(|f| compressed_len_is(&f, c.compression, c.size, seen))
                    } else {
                        c.size > seen
                    };
                    if more {
                        match self.candidate_reader(c, head, st.offset, st.lines) {
                            Ok(r) => {
                                tracing::info!(
                                    "{}: resuming {} (rotated) at byte {}",
                                    r.name,
                                    st.name,
                                    st.offset
                                );
                                TailCounters::add(&self.counters.rotated_files_drained, 1);
                                self.push_draining(r);
                            }
                            Err(e) => tracing::warn!("cannot open {}: {e}", c.path.display()),
                        }
                    } else {
                        let mut f = st.clone();
                        f.role = FileRole::Finished;
                        self.push_finished(f);
                    }
                }
            }
        }
        for (st, placed) in states.iter().zip(&placed) {
            if *placed {
                continue;
            }
            if st.role == FileRole::Finished {
                if self.globs.is_empty() {
                    self.push_finished(st.clone());
                }
                continue;
            }
            tracing::warn!(
                "{} (read up to byte {}) is no longer at {}{}; what was written to it after that cannot be read",
                st.name,
                st.offset,
                self.display,
                if self.globs.is_empty() {
                    " and no --rotated glob names where rotated files go"
                } else {
                    " nor among the rotated files"
                }
            );
        }
        // Rotated files written after the checkpoint that it does not know.
        self.drain_unseen(&cands, body.seen_at_ns);
        if !resumed_live {
            if let Some((Some(file), key, h)) = live {
                // A file the checkpoint does not know: new since, read it whole.
                let r = self.plain_reader(
                    file,
                    key,
                    Head::of(&h),
                    self.display.clone(),
                    FileRole::Live,
                    0,
                    0,
                );
                TailCounters::add(&self.counters.files_opened, 1);
                self.readers.push(r);
            } else {
                self.warn_missing();
            }
        }
        self.seen_at = SystemTime::now();
        Ok(())
    }

    /// One pass: looks at the path (rotation, deletion, a new file), then
    /// reads every open file up to a budget, then closes drained files.
    pub fn poll(&mut self, sink: &mut dyn FnMut(Ingest)) -> PollOutcome {
        self.check_path();
        // Rotations can also happen while no file is at the path, or come
        // and go between two looks without the path's file changing twice:
        // scan the rotated siblings at every pass while there is no live
        // file, else every SCAN_EVERY.
        let live = self.live_index().map(|i| self.readers[i].key);
        if live.is_none() || self.last_scan.elapsed().unwrap_or_default() >= SCAN_EVERY {
            self.look_for_unseen(self.scan_since(), live);
        }
        let mut out = PollOutcome {
            more: false,
            at_end: true,
        };
        let mut i = 0;
        while i < self.readers.len() {
            let r = &mut self.readers[i];
            let was_empty = r.head.len == 0 && matches!(r.input, Input::Plain(_));
            let (key, since) = (r.key, checkpoint::unix_ns(r.verified_at));
            let opened = self.readers.len();
            let r = &mut self.readers[i];
            match r.read_some(PASS_BUDGET, self.cfg.read_size, sink, &self.counters) {
                Ok(ReadOutcome {
                    truncated: Some(why),
                    ..
                }) => {
                    self.on_truncated(i, &why, sink);
                    out.more = true;
                    out.at_end = false;
                    // Read it again from its first byte next pass.
                }
                Ok(o) => {
                    if !o.eof {
                        out.more = true;
                        out.at_end = false;
                    }
                    if o.rewritten_empty || was_empty && self.readers[i].head.len > 0 {
                        // An empty file got its first bytes: if it was
                        // written and copytruncated in between, its old
                        // content is only in a copy nobody has seen.
                        self.look_for_unseen(since, Some(key));
                    }
                }
                Err(e) => {
                    TailCounters::add(&self.counters.read_errors, 1);
                    let r = &self.readers[i];
                    tracing::error!(
                        "{}: read failed after byte {}: {e}; closing it",
                        r.name,
                        r.pos
                    );
                    self.close(i, sink);
                    continue;
                }
            }
            if self.readers.len() != opened {
                // Files found on the way are read in the next pass, at once.
                out.more = true;
                out.at_end = false;
            }
            i += 1;
        }
        // Close drained files that stayed quiet for rotate_wait.
        let mut i = 0;
        while i < self.readers.len() {
            let r = &self.readers[i];
            let done = r.role == FileRole::Draining
                && r.at_eof
                && (r.compressed || r.quiet_since.elapsed() >= self.cfg.rotate_wait);
            if done {
                self.close(i, sink);
            } else {
                i += 1;
            }
        }
        out
    }

    /// Closes reader `i`: counts an unterminated tail as a fragment (never
    /// analysed) and remembers the identity as finished.
    fn close(&mut self, i: usize, sink: &mut dyn FnMut(Ingest)) {
        let r = self.readers.remove(i);
        let pending = r.pos - r.committed;
        if pending > 0 {
            TailCounters::add(&self.counters.fragments, 1);
            TailCounters::add(&self.counters.fragment_bytes, pending);
            tracing::warn!(
                "{}: {pending} bytes after line {} (byte {}) never got their newline; not analysed",
                r.name,
                r.lines,
                r.committed
            );
        }
        if r.started {
            sink(Ingest::Closed {
                source: r.source.clone(),
            });
        }
        let st = r.state(FileRole::Finished);
        self.push_finished(st);
    }

    /// The file of reader `i` was truncated (or rewritten) in place.
    fn on_truncated(&mut self, i: usize, why: &str, sink: &mut dyn FnMut(Ingest)) {
        TailCounters::add(&self.counters.truncations_detected, 1);
        let old = self.readers[i].state(FileRole::Finished);
        let r = &mut self.readers[i];
        let since = checkpoint::unix_ns(r.verified_at);
        tracing::warn!(
            "{}: truncated or rewritten in place ({why}; was read up to byte {}); reading it again from its first byte",
            r.name,
            r.committed
        );
        if r.started {
            sink(Ingest::Closed {
                source: r.source.clone(),
            });
        }
        r.reset(&self.pool, self.cfg.max_line);
        if self.globs.is_empty() {
            if old.committed_something() {
                tracing::warn!(
                    "{}: lines written after byte {} before the truncation cannot be read (no --rotated glob names the copy)",
                    self.display,
                    old.offset
                );
            }
            return;
        }
        // copytruncate: the old content lives on in a rotated copy; drain it
        // from where this identity was read up to.
        let cands = self.scan_candidates(Some(old.key()));
        let head = old.head();
        let copy = (old.head_len > 0)
            .then(|| {
                cands.iter().rev().find(|c| {
                    c.key != old.key() && head.is_prefix_of(&c.head) && !self.is_open(c.key)
                })
            })
            .flatten();
        let more = |c: &Candidate| {
            if c.compressed {
                !File::open(&c.path)
                    .is_ok_and(|f| compressed_len_is(&f, c.compression, c.size, old.offset))
            } else {
                c.size > old.offset
            }
        };
        match copy {
            Some(c) if more(c) => {
                match self.candidate_reader(c, head, old.offset, old.lines) {
                    Ok(r) => {
                        TailCounters::add(&self.counters.rotated_files_drained, 1);
                        self.push_draining(r);
                    }
                    Err(e) => tracing::warn!("cannot open {}: {e}", c.path.display()),
                }
            }
            Some(c) => {
                let mut st = old;
                st.name = c.path.display().to_string();
                st.dev = c.key.dev;
                st.ino = c.key.ino;
                self.push_finished(st);
            }
            None if old.committed_something() || old.head_len > 0 => tracing::warn!(
                "{}: no rotated copy with its old head found; lines written after byte {} before the truncation cannot be read",
                self.display,
                old.offset
            ),
            None => {}
        }
        // Copies of content never seen (several copytruncates between looks).
        self.drain_unseen(&cands, since);
    }

    /// Drains the rotated files that changed after `since_ns` and were never
    /// seen (rotations between two looks).
    fn look_for_unseen(&mut self, since_ns: u64, live: Option<FileKey>) {
        if self.globs.is_empty() {
            return;
        }
        self.last_scan = SystemTime::now();
        let cands = self.scan_candidates(live);
        self.drain_unseen(&cands, since_ns);
    }

    /// Files that changed after this (less a margin) and are unknown were
    /// never seen: the last time the live file was confirmed at the path,
    /// or the last scan, whichever is older.
    fn scan_since(&self) -> u64 {
        checkpoint::unix_ns(self.seen_at.min(self.last_scan))
    }

    fn is_open(&self, key: FileKey) -> bool {
        self.readers.iter().any(|r| r.key == key)
    }

    /// Looks at the path: the same file, a new one (rotation, symlink
    /// retarget, delete and recreate), or none.
    fn check_path(&mut self) {
        let live = self.live_index();
        let meta = match std::fs::metadata(&self.cfg.path) {
            Ok(m) if m.is_file() => Some(m),
            Ok(_) => None,
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                tracing::debug!("cannot stat {}: {e}", self.display);
                return;
            }
        };
        let Some(meta) = meta else {
            if let Some(i) = live {
                tracing::info!("{} is gone; draining the open file", self.display);
                self.retire(i);
                // It may have been rotated more than once since the last look.
                self.look_for_unseen(self.scan_since(), None);
            }
            return;
        };
        let key = FileKey::of(&meta);
        if let Some(i) = live {
            if self.readers[i].key == key {
                self.seen_at = SystemTime::now();
                return;
            }
            TailCounters::add(&self.counters.rotations_detected, 1);
            tracing::info!(
                "{} now names another file; draining the old one",
                self.display
            );
            self.retire(i);
        }
        self.open_new_live();
    }

    fn retire(&mut self, i: usize) {
        let r = &mut self.readers[i];
        r.role = FileRole::Draining;
        r.quiet_since = Instant::now();
    }

    /// A (new) file is at the path: adopt an open or remembered identity it
    /// matches, else read it from its first byte. Also drains rotated files
    /// that came and went since the path was last looked at.
    fn open_new_live(&mut self) {
        let (file, meta) = match open_plain(&self.cfg.path) {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!("cannot open {}: {e}", self.display);
                return;
            }
        };
        let key = FileKey::of(&meta);
        let Ok(head) = read_head_at(&file, HEAD_MAX) else {
            return;
        };
        let since = self.scan_since();
        self.seen_at = SystemTime::now();
        self.warned_missing = false;
        // Back to a file still open (a symlink pointed back): the open
        // descriptor keeps its inode number from being reused, and its reader
        // notices by itself if it was truncated meanwhile.
        if let Some(j) = self.readers.iter().position(|r| r.key == key) {
            let mut r = self.readers.remove(j);
            r.role = FileRole::Live;
            self.readers.push(r);
            return;
        }
        self.look_for_unseen(since, Some(key));
        TailCounters::add(&self.counters.files_opened, 1);
        let known = self
            .finished
            .iter()
            .position(|f| same_identity(f.key(), &f.head(), f.offset, key, &head));
        let r = match known.and_then(|k| self.finished.remove(k)) {
            Some(st) if st.offset <= meta.len() => self.plain_reader(
                file,
                key,
                st.head(),
                self.display.clone(),
                FileRole::Live,
                st.offset,
                st.lines,
            ),
            _ => self.plain_reader(
                file,
                key,
                Head::of(&head),
                self.display.clone(),
                FileRole::Live,
                0,
                0,
            ),
        };
        self.readers.push(r);
    }

    fn snapshot(&self) -> Body {
        Body {
            format: checkpoint::FORMAT.into(),
            version: checkpoint::VERSION,
            path: self.path_abs.clone(),
            seen_at_ns: self.scan_since(),
            written_at: checkpoint::format_utc(SystemTime::now()),
            files: self.files(),
        }
    }

    /// A marker that persists the current positions once every line handed
    /// on before it is durable. `None` when nothing moved since the last one
    /// (unless `force`).
    pub fn marker(&mut self, force: bool) -> Option<Marker> {
        let mut body = self.snapshot();
        if !force && self.last_sent.as_ref() == Some(&body.files) {
            return None;
        }
        self.last_sent = Some(body.files.clone());
        let store = self.store.clone();
        let counters = self.counters.clone();
        let hook = if !self.caught_up_done && self.readers.iter().all(|r| r.at_eof) {
            self.caught_up_done = true;
            self.caught_up.take()
        } else {
            None
        };
        let summary = hook.as_ref().map(|_| {
            self.readers
                .iter()
                .map(|r| format!("{} at byte {} (line {})", r.name, r.committed, r.lines))
                .collect::<Vec<_>>()
                .join(", ")
        });
        Some(Box::new(move || {
            if counters.output_failed.load(Ordering::Relaxed) {
                // Findings could not be written: do not move past them.
                return;
            }
            if let (Some(h), Some(s)) = (hook, summary) {
                h(&s);
            }
            body.written_at = checkpoint::format_utc(SystemTime::now());
            match store.save(&body) {
                Ok(()) => TailCounters::add(&counters.checkpoints_written, 1),
                Err(e) => {
                    TailCounters::add(&counters.checkpoint_errors, 1);
                    tracing::error!(
                        "cannot write the checkpoint {}: {e}",
                        store.file().display()
                    );
                }
            }
        }))
    }

    /// Whether every open file was read to its end at the last pass and the
    /// start-up catch-up was not reported yet.
    pub fn wants_caught_up_marker(&self) -> bool {
        !self.caught_up_done && self.readers.iter().all(|r| r.at_eof)
    }
}

fn annotate(e: io::Error, path: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{path}: {e}"))
}
