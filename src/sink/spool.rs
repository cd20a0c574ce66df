//! The on-disk spool of a network sink: what waits for a receiver that is down, within a
//! byte budget, surviving restarts.
//!
//! ```text
//! <spool_dir>/                      0700 (created so whatever the umask; symlink refused)
//!   00000000000000000007.jsonl      0600, one finding JSON per line, append-only
//!   00000000000000000008.jsonl      the segment being appended (a new one every budget/8)
//!   committed                       "<segment> <byte offset>\n": everything before was delivered
//! ```
//!
//! The delivery thread reads from the committed position and commits after delivery; a fully
//! read segment is deleted. `committed` is replaced atomically (`committed.tmp`, fsync,
//! rename) at most every 200 ms and whenever a segment is deleted, so a crash re-delivers at
//! most that much (at least once). Appends are fsynced per batch; a torn last line (a crash
//! mid-write) is cut off at the next start. The budget counts the bytes of every segment
//! file, so up to one segment of delivered lines may still be counted until it is deleted.

use std::collections::VecDeque;
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::finding::Finding;

pub(crate) const FILE_MODE: u32 = 0o600;
pub(crate) const DIR_MODE: u32 = 0o700;
const COMMITTED: &str = "committed";
const COMMITTED_TMP: &str = "committed.tmp";
const PERSIST_EVERY: Duration = Duration::from_millis(200);

/// A position in the spool: just after a line of segment `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pos {
    pub seq: u64,
    pub off: u64,
}

#[derive(Debug)]
struct Seg {
    seq: u64,
    len: u64,
}

#[derive(Debug)]
pub(crate) struct Spool {
    dir: PathBuf,
    budget: u64,
    segment_max: u64,
    segs: VecDeque<Seg>,
    /// Append handle of the last segment (none after a start or once it was read out).
    writer: Option<File>,
    next_seq: u64,
    /// Committed offset in the first segment.
    head_off: u64,
    pending: u64,
    bytes: u64,
    dirty: bool,
    last_persist: Instant,
}

impl Spool {
    /// Opens (creating it 0700) or recovers the spool in `dir`.
    pub fn open(dir: &Path, budget: u64) -> io::Result<Spool> {
        prepare_dir(dir)?;
        let mut seqs = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name == COMMITTED_TMP {
                fs::remove_file(entry.path())?;
            } else if let Some(seq) = parse_segment_name(&name) {
                seqs.push(seq);
            }
        }
        seqs.sort_unstable();
        let committed = read_committed(&dir.join(COMMITTED));
        let mut segs = VecDeque::new();
        for seq in seqs {
            let path = dir.join(segment_name(seq));
            if seq < committed.seq {
                fs::remove_file(&path)?;
                continue;
            }
            let len = open_read(&path)?.metadata()?.len();
            segs.push_back(Seg { seq, len });
        }
        if let Some(last) = segs.back_mut() {
            last.len = repair_torn_tail(&dir.join(segment_name(last.seq)), last.len)?;
        }
        let head_off = match segs.front() {
            Some(f) if f.seq == committed.seq => committed.off.min(f.len),
            _ => 0,
        };
        let mut pending = 0;
        for (i, s) in segs.iter().enumerate() {
            let from = if i == 0 { head_off } else { 0 };
            pending += count_lines(&dir.join(segment_name(s.seq)), from)?;
        }
        let next_seq = segs
            .back()
            .map_or(committed.seq, |s| s.seq.max(committed.seq))
            + 1;
        let bytes = segs.iter().map(|s| s.len).sum();
        Ok(Spool {
            dir: dir.to_owned(),
            budget,
            segment_max: (budget / 8).clamp(4096, 16 << 20),
            segs,
            writer: None,
            next_seq,
            head_off,
            pending,
            bytes,
            dirty: false,
            last_persist: Instant::now(),
        })
    }

    /// Findings waiting (not yet committed).
    pub fn pending(&self) -> u64 {
        self.pending
    }

    /// Bytes of the segment files.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Appends whole lines (each ending in `\n`) while they fit the budget, then fsyncs.
    /// Returns how many were written, and the error that stopped it, if any.
    pub fn append(&mut self, lines: &[Vec<u8>]) -> (usize, Option<io::Error>) {
        let mut written = 0;
        for line in lines {
            let len = line.len() as u64;
            if self.bytes + len > self.budget {
                break;
            }
            if let Err(e) = self.append_one(line) {
                return (written, Some(e));
            }
            written += 1;
        }
        if written > 0 {
            if let Some(w) = &self.writer {
                if let Err(e) = w.sync_data() {
                    return (written, Some(e));
                }
            }
        }
        (written, None)
    }

    fn append_one(&mut self, line: &[u8]) -> io::Result<()> {
        let roll = match (&self.writer, self.segs.back()) {
            (Some(_), Some(last)) => last.len >= self.segment_max,
            _ => true,
        };
        if roll {
            if let Some(old) = self.writer.take() {
                old.sync_data()?;
            }
            let seq = self.next_seq;
            let file = create_private_new(&self.dir.join(segment_name(seq)), true)?;
            self.next_seq += 1;
            if self.segs.is_empty() {
                self.head_off = 0;
            }
            self.segs.push_back(Seg { seq, len: 0 });
            self.writer = Some(file);
        }
        let (Some(mut w), Some(last)) = (self.writer.as_ref(), self.segs.back_mut()) else {
            unreachable!("a writer was just opened");
        };
        if let Err(e) = w.write_all(line) {
            // Never leave a torn line behind.
            let _ = w.set_len(last.len);
            return Err(e);
        }
        last.len += line.len() as u64;
        self.bytes += line.len() as u64;
        self.pending += 1;
        Ok(())
    }

    /// Reads up to `max` findings from the committed position, within one segment. Each comes
    /// with the position just after it; `None` for a line that does not parse (count it as
    /// dropped and commit past it).
    pub fn peek(&mut self, max: usize) -> io::Result<Vec<(Option<Arc<Finding>>, Pos)>> {
        loop {
            let Some(front) = self.segs.front() else {
                return Ok(Vec::new());
            };
            if self.head_off < front.len {
                break;
            }
            if self.segs.len() == 1 {
                return Ok(Vec::new());
            }
            self.remove_front()?;
        }
        let front = &self.segs[0];
        let path = self.dir.join(segment_name(front.seq));
        let mut file = open_read(&path)?;
        file.seek(SeekFrom::Start(self.head_off))?;
        let mut reader = BufReader::new(file.take(front.len - self.head_off));
        let mut out = Vec::new();
        let mut off = self.head_off;
        let mut line = Vec::new();
        while out.len() < max {
            line.clear();
            let n = reader.read_until(b'\n', &mut line)?;
            if n == 0 || line.last() != Some(&b'\n') {
                break;
            }
            off += n as u64;
            let f = serde_json::from_slice::<Finding>(&line[..n - 1])
                .ok()
                .map(Arc::new);
            out.push((
                f,
                Pos {
                    seq: front.seq,
                    off,
                },
            ));
        }
        Ok(out)
    }

    /// Marks everything up to `pos` (`n` findings since the last commit) as delivered.
    pub fn commit(&mut self, pos: Pos, n: u64) -> io::Result<()> {
        match self.segs.front() {
            Some(f) if f.seq == pos.seq && pos.off >= self.head_off => {}
            _ => return Ok(()),
        }
        self.head_off = pos.off;
        self.pending = self.pending.saturating_sub(n);
        self.dirty = true;
        if self.head_off >= self.segs[0].len {
            self.remove_front()?;
        }
        if self.last_persist.elapsed() >= PERSIST_EVERY {
            self.persist()?;
        }
        Ok(())
    }

    /// Deletes the first segment (read out) and persists the position.
    fn remove_front(&mut self) -> io::Result<()> {
        if let Some(front) = self.segs.pop_front() {
            if self.segs.is_empty() {
                self.writer = None;
            }
            self.bytes -= front.len;
            self.head_off = 0;
            self.dirty = true;
            self.persist()?;
            fs::remove_file(self.dir.join(segment_name(front.seq)))?;
        }
        Ok(())
    }

    /// Writes the committed position (atomically) if it moved.
    pub fn persist(&mut self) -> io::Result<()> {
        if !self.dirty {
            return Ok(());
        }
        let seq = self.segs.front().map_or(self.next_seq, |s| s.seq);
        let tmp = self.dir.join(COMMITTED_TMP);
        let _ = fs::remove_file(&tmp);
        let mut f = create_private_new(&tmp, false)?;
        f.write_all(format!("{seq} {}\n", self.head_off).as_bytes())?;
        f.sync_data()?;
        fs::rename(&tmp, self.dir.join(COMMITTED))?;
        self.dirty = false;
        self.last_persist = Instant::now();
        Ok(())
    }
}

fn segment_name(seq: u64) -> String {
    format!("{seq:020}.jsonl")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".jsonl")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn read_committed(path: &Path) -> Pos {
    let parsed = open_read(path).ok().and_then(|mut f| {
        let mut s = String::new();
        f.read_to_string(&mut s).ok()?;
        let mut it = s.split_whitespace();
        Some(Pos {
            seq: it.next()?.parse().ok()?,
            off: it.next()?.parse().ok()?,
        })
    });
    if parsed.is_none() && path.exists() {
        tracing::warn!(path = %path.display(), "spool: unreadable committed position; \
            replaying every segment (receivers may see duplicates)");
    }
    parsed.unwrap_or(Pos { seq: 0, off: 0 })
}

/// Lines (complete, `\n`-terminated) in `path` from byte `from`.
fn count_lines(path: &Path, from: u64) -> io::Result<u64> {
    let mut f = open_read(path)?;
    f.seek(SeekFrom::Start(from))?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0;
    loop {
        match f.read(&mut buf) {
            Ok(0) => return Ok(n),
            Ok(k) => n += memchr::memchr_iter(b'\n', &buf[..k]).count() as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Cuts a last line without its `\n` (a crash mid-append); returns the new length.
fn repair_torn_tail(path: &Path, len: u64) -> io::Result<u64> {
    if len == 0 {
        return Ok(0);
    }
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    let mut keep = len;
    let mut buf = vec![0u8; 64 * 1024];
    while keep > 0 {
        let start = keep.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(keep - start) as usize];
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(chunk)?;
        if let Some(i) = memchr::memrchr(b'\n', chunk) {
            keep = start + i as u64 + 1;
            break;
        }
        keep = start;
    }
    if keep < len {
        f.set_len(keep)?;
        f.sync_data()?;
        tracing::warn!(path = %path.display(), removed_bytes = len - keep,
            "spool: removed an incomplete last line (interrupted write)");
    }
    Ok(keep)
}

// ---------------------------------------------------------------------------------------------
// Private files and directories (shared with the file sink)
// ---------------------------------------------------------------------------------------------

/// Creates `path` 0600 whatever the umask (`O_EXCL`, no symlink following).
pub(crate) fn create_private_new(path: &Path, append: bool) -> io::Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .append(append)
        .create_new(true)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    file.set_permissions(Permissions::from_mode(FILE_MODE))?;
    Ok(file)
}

/// Opens `path` for appending, creating it 0600; refuses symlinks (`O_NOFOLLOW`), non-regular
/// and hard-linked files, and tightens an existing file's mode to 0600.
pub(crate) fn open_private_append(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is a symbolic link (refused)", path.display()),
            ),
            _ => e,
        })?;
    let md = file.metadata()?;
    if !md.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", path.display()),
        ));
    }
    if md.nlink() > 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} has {} hard links (refused)", path.display(), md.nlink()),
        ));
    }
    if md.mode() & 0o7777 != FILE_MODE {
        file.set_permissions(Permissions::from_mode(FILE_MODE))?;
    }
    Ok(file)
}

/// Opens a regular file for reading without following symlinks or blocking on a FIFO.
pub(crate) fn open_read(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", path.display()),
        ));
    }
    Ok(file)
}

/// Creates `dir` (and missing parents) 0700 whatever the umask, or checks an existing one:
/// a symlink or non-directory is refused, a spool directory's mode is tightened to 0700.
pub(crate) fn prepare_dir(dir: &Path) -> io::Result<()> {
    match fs::symlink_metadata(dir) {
        Ok(md) if md.file_type().is_symlink() => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is a symbolic link (refused)", dir.display()),
        )),
        Ok(md) if !md.is_dir() => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a directory", dir.display()),
        )),
        Ok(md) => {
            if md.mode() & 0o7777 != DIR_MODE {
                fs::set_permissions(dir, Permissions::from_mode(DIR_MODE))?;
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => create_dir_private(dir),
        Err(e) => Err(e),
    }
}

/// Creates `dir` and its missing parents 0700 whatever the umask.
pub(crate) fn create_dir_private(dir: &Path) -> io::Result<()> {
    // Parents that DirBuilder creates get 0700 & !umask: fix each one created.
    let mut missing = Vec::new();
    let mut p = dir;
    while !p.as_os_str().is_empty() && fs::symlink_metadata(p).is_err() {
        missing.push(p.to_owned());
        match p.parent() {
            Some(parent) => p = parent,
            None => break,
        }
    }
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    for m in missing {
        fs::set_permissions(&m, Permissions::from_mode(DIR_MODE))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finding::{Actor, Severity, SourceKind, SourceRef};

    fn finding(i: u64) -> Finding {
        Finding {
            id: format!("{i:064x}"),
            rule: "r".into(),
            category: "c".into(),
            severity: Severity::High,
            title: "t".into(),
            time: None,
            entry_type: None,
            request_id: None,
            operation: None,
            path: None,
            namespace: "root".into(),
            actor: Actor::default(),
            source: SourceRef {
                kind: SourceKind::File,
                name: "x".into(),
                line: i,
                offset: 0,
            },
            detail: Default::default(),
        }
    }

    fn line(i: u64) -> Vec<u8> {
        let mut v = serde_json::to_vec(&finding(i)).unwrap();
        v.push(b'\n');
        v
    }

    fn drain(s: &mut Spool) -> Vec<u64> {
        let mut got = Vec::new();
        loop {
            let batch = s.peek(7).unwrap();
            let Some(&(_, last)) = batch.last() else {
                break;
            };
            got.extend(batch.iter().map(|(f, _)| f.as_ref().unwrap().source.line));
            s.commit(last, batch.len() as u64).unwrap();
        }
        got
    }

    #[test]
    fn append_read_commit_across_segments_and_restart() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b/spool");
        let mut s = Spool::open(&dir, 64 << 10).unwrap();
        assert_eq!(
            fs::metadata(&dir).unwrap().mode() & 0o7777,
            DIR_MODE,
            "spool dir 0700"
        );
        let lines: Vec<_> = (0..100).map(line).collect();
        let (n, e) = s.append(&lines);
        assert!(e.is_none());
        assert_eq!(n, 100);
        assert_eq!(s.pending(), 100);
        assert!(s.segs.len() > 1, "rolled into several segments");
        // Read 30, commit, "crash" (drop without persist beyond what commit did), reopen.
        let mut got = Vec::new();
        while got.len() < 30 {
            let b = s.peek(5).unwrap();
            got.extend(b.iter().map(|(f, _)| f.as_ref().unwrap().source.line));
            s.commit(b.last().unwrap().1, b.len() as u64).unwrap();
        }
        s.persist().unwrap();
        drop(s);
        let mut s = Spool::open(&dir, 64 << 10).unwrap();
        assert_eq!(s.pending(), 100 - got.len() as u64);
        got.extend(drain(&mut s));
        assert_eq!(got, (0..100).collect::<Vec<_>>());
        assert_eq!(s.pending(), 0);
        assert_eq!(s.bytes(), 0);
        // Appending again after being emptied works and files are 0600.
        assert_eq!(s.append(&lines[..3]).0, 3);
        for e in fs::read_dir(&dir).unwrap() {
            let md = e.unwrap().metadata().unwrap();
            assert_eq!(md.mode() & 0o7777, FILE_MODE);
        }
        assert_eq!(drain(&mut s), vec![0, 1, 2]);
    }

    #[test]
    fn budget_is_enforced() {
        let tmp = tempfile::tempdir().unwrap();
        let l = line(1);
        let budget = l.len() as u64 * 10 + 5;
        let mut s = Spool::open(tmp.path(), budget).unwrap();
        let lines: Vec<_> = (0..25).map(line).collect();
        let (n, _) = s.append(&lines);
        assert_eq!(n, 10);
        assert!(s.bytes() <= budget);
    }

    #[test]
    fn torn_tail_and_garbage_lines_are_handled() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = Spool::open(tmp.path(), 1 << 20).unwrap();
        s.append(&[line(1), b"not json\n".to_vec(), line(3)]);
        drop(s);
        let seg = tmp.path().join(segment_name(1));
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(b"{\"torn").unwrap();
        let mut s = Spool::open(tmp.path(), 1 << 20).unwrap();
        assert_eq!(s.pending(), 3);
        let b = s.peek(10).unwrap();
        assert_eq!(b.len(), 3);
        assert!(b[1].0.is_none());
        s.commit(b[2].1, 3).unwrap();
        assert_eq!(s.pending(), 0);
    }

    #[test]
    fn symlinked_dir_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        fs::create_dir(&real).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(Spool::open(&link, 1 << 20).is_err());
    }
}
