//! Fallback archive: a byte-for-byte, rotating, tamper-evident copy of every audit line received.
//!
//! Vault and OpenBao write each audit entry as one JSON object per line. Before anything parses
//! them, the pipeline hands the raw bytes to an [`Archive`] running on its own std thread (blocking
//! I/O, `fsync`). The archive appends them to a live file, rotates it into named segments, can
//! compress the segments, deletes old ones by a retention policy, and keeps a hash-chained
//! manifest so that editing or deleting archived data can be detected with [`verify`].
//!
//! # Guarantees
//!
//! * **Byte-for-byte.** Every line given to [`Archive::append_lines`] or
//!   [`Archive::append_partial`] is written unchanged (including invalid UTF-8 and lines of any
//!   size), in order. Concatenating the rotated segments in sequence-number order
//!   (decompressed) followed by the live file gives exactly the accepted input.
//! * **Whole lines only.** Every file in the archive holds only complete lines, each ending in
//!   `\n`. Rotation happens only between lines, never inside one, so one line never spans two
//!   files. A long line streamed with `append_partial` is never held whole in memory.
//! * **Nothing is dropped silently.** If a line cannot be written (disk full `ENOSPC`, quota
//!   `EDQUOT`, I/O error, the live file cannot be created), the whole line is dropped: the file is
//!   truncated back to the start of that line so no torn line remains, its bytes are added
//!   exactly to [`ArchiveStats::dropped_bytes`] (and one to [`ArchiveStats::dropped_lines`]), and
//!   an error is logged with `tracing` at most once per [`ArchiveConfig::error_log_interval`]
//!   (suppressed repeats are counted in the next message). The archive never panics on I/O
//!   errors. Every later append is attempted normally, so writing resumes by itself as soon as
//!   space returns; no wake-up is needed. When a batch given to `append_lines` fails part-way,
//!   the complete lines written before the failure are kept and the failing line and the rest
//!   of that batch are dropped and counted.
//! * **Caller mistakes are counted too.** Bytes handed to `append_lines` after the last `\n`,
//!   a streamed line finished without a `\n`, or a streamed line abandoned by calling
//!   `append_lines` before finishing it are dropped, counted in `dropped_*` and logged
//!   (rate-limited); they are never written as torn lines.
//! * **Crash safety.** A crash in the middle of a write leaves at most one incomplete line at the
//!   end of the live file. [`Archive::open`] (and [`Archive::reopen`]) truncate the file back to
//!   just after its last `\n` and add the removed bytes to
//!   [`ArchiveStats::torn_tail_repaired_bytes`]: they were never a complete line. Rotation fsyncs
//!   the live file before it renames it and fsyncs the directory after the rename. A segment
//!   renamed but not yet recorded in the manifest when the process died is recorded (and
//!   compressed if configured) by the next `open`. Durability of the live file between rotations
//!   follows [`FsyncPolicy`].
//!
//! # Files and naming
//!
//! All files live directly in [`ArchiveConfig::dir`]. With the default `file_name` of
//! `audit.log`:
//!
//! * `audit.log`: the live file, appended with `O_WRONLY|O_APPEND|O_CREAT|O_NOFOLLOW|O_CLOEXEC`.
//! * `audit-<YYYYmmddTHHMMSS.fffZ>-<seq>.log`: a rotated segment, for example
//!   `audit-20260412T081500.250Z-00000042.log`. The timestamp is the UTC wall-clock time of the
//!   rotation in milliseconds; `<seq>` is a decimal sequence number, zero-padded to at least 8
//!   digits, that increases by at least one with every rotation and survives restarts (it
//!   continues from the highest number found on disk or in the manifest). The timestamp never
//!   goes backwards either (a clock step back reuses the last timestamp), so names sort by
//!   time, and the sequence number makes them unique. For another `file_name` the stem and
//!   extension are split at the last `.` (`vault.audit` gives `vault-<ts>-<seq>.audit`).
//! * `….log.gz` / `….log.zst`: the compressed form of a segment, when
//!   [`ArchiveConfig::compress`] is set (gzip via flate2, one member; zstd level 3 with a content
//!   checksum). Compression writes `.<final name>.tmp` first, fsyncs it, renames it into place,
//!   fsyncs the directory and only then removes the plain segment. If compression fails the plain
//!   segment is kept and recorded instead: nothing is lost.
//! * `manifest.jsonl`: the hash-chained manifest described below.
//!
//! Rotation (by size, by age or on request) and compression, hashing, manifest records and
//! retention are split between two threads: the caller's thread only fsyncs, renames and opens a
//! fresh live file; a background thread owned by the `Archive` compresses, hashes, records and
//! deletes, so a slow gzip of a large segment never stalls the writes. Dropping the `Archive`
//! (or [`Archive::close`]) waits for that thread to finish its queue.
//!
//! Retention ([`ArchiveConfig::keep_files`], [`ArchiveConfig::keep_bytes`]) runs after each
//! segment is recorded and deletes the oldest recorded segments (by sequence number) until at
//! most `keep_files` segments and at most `keep_bytes` stored bytes remain. The live file never
//! counts and is never deleted. Each deletion is recorded in the manifest (and fsynced)
//! **before** the file is unlinked, so a crash in between leaves an extra file, never an
//! unexplained gap; `open` finishes such deletions.
//!
//! # Permissions
//!
//! The directory is created with mode `0700` and an existing one is tightened to `0700` (with a
//! warning) if it allows more. Every file the archive creates (live file, segments, compressed
//! segments, temporary files, manifest) is opened with mode `0600` and then `fchmod`ed to `0600`,
//! so the result does not depend on the process umask. `open` refuses, with an error naming the
//! path: a directory that is a symbolic link or not a directory; a live file or manifest that is
//! a symbolic link (`O_NOFOLLOW`), not a regular file, or has more than one hard link (a link
//! planted to make the service append to another file).
//!
//! # Manifest format
//!
//! `manifest.jsonl` holds one JSON object per line, appended and fsynced. Records are numbered by
//! `seq` starting at 1 with no gaps. There are two kinds, always with exactly these keys in
//! exactly this order:
//!
//! ```text
//! {"seq":N,"event":"segment","file":F,"bytes":B,"lines":L,"sha256":H,"prev":P,"digest":D}
//! {"seq":N,"event":"deleted","file":F,"sha256":H,"prev":P,"digest":D}
//! ```
//!
//! * `file`: the segment's name as finally stored (with `.gz`/`.zst` if compressed). File names
//!   only ever contain `A-Z a-z 0-9 . _ -`, so they never need JSON escaping.
//! * `bytes`: size in bytes of the stored file; `lines`: number of lines (`\n` bytes) in the
//!   segment's uncompressed content.
//! * `sha256`: lowercase hex SHA-256 of the stored file's bytes (of the compressed bytes for a
//!   compressed segment). In a `deleted` record, the `sha256` recorded for that segment.
//! * `prev`: the `digest` of the previous record, or 64 `0` characters for the first record.
//! * `digest`: lowercase hex SHA-256 of the ASCII bytes `P + "\n" + C`, where `P` is this
//!   record's `prev` and `C` is its **canonical form**.
//!
//! The canonical form `C` is the record serialized as compact JSON (no whitespace anywhere),
//! keys in the order above, `digest` omitted, numbers as plain decimal integers, strings in
//! double quotes. Every manifest line is written exactly as `C` with `,"digest":"<D>"` inserted
//! before the final `}`, followed by `\n`. So an independent verifier can take each line, strip
//! the trailing `\n`, check that it ends with `,"digest":"` + 64 hex + `"}`, cut that member off
//! (keeping the final `}`) to get `C`, and compare `sha256_hex(prev + "\n" + C)` with the digest
//! it cut off and with the next record's `prev`. [`verify`] also requires each line to be
//! byte-identical to the re-serialization of its parsed fields, so the two methods agree.
//!
//! For example the first record of an archive (`prev` is 64 zeros):
//!
//! ```text
//! C = {"seq":1,"event":"segment","file":"audit-20260101T000000.000Z-00000001.log","bytes":3,"lines":1,"sha256":"ca3d163bab055381827226140568f3bef7eaac187cebd76878e0b63e9e442356","prev":"0000000000000000000000000000000000000000000000000000000000000000"}
//! digest = f53021f85ea6a0a790d96844ff6951bbc9fa075f7cf8f7d26653df30613a79fd
//! ```
//!
//! (the segment holds the 3 bytes `{}\n`).
//!
//! What the chain proves: any edit, insertion, removal or reordering of existing records breaks
//! it, and [`verify`] cross-checks every record against the files. Removing records from the very
//! end keeps the chain valid but is still caught through the files (a segment on disk without a
//! record is [`Problem::Unrecorded`]; a deleted segment whose deletion record was removed is
//! [`Problem::Missing`]). What it cannot prove on its own: the chain has no secret key, so someone
//! who can write the directory can rewrite the manifest from some record onward, or append
//! well-formed records (for example a forged `deleted` record), with valid digests. To detect that,
//! ship [`Archive::manifest_head`] (also logged at `info` after each record) to another system and
//! compare it with [`VerifyReport::head`]: a rewritten chain cannot reproduce a head seen earlier.
//!
//! One limit by design: a segment file that appears while the service is down, with a sequence
//! number higher than any in the manifest, is indistinguishable from a segment renamed just
//! before a crash, and the next `open` records it.
//!
//! # Use
//!
//! ```no_run
//! use auditwatch::archive::{Archive, ArchiveConfig, Compression};
//! use std::time::Instant;
//!
//! let mut archive = Archive::open(ArchiveConfig {
//!     compress: Compression::Gzip,
//!     keep_files: Some(10),
//!     ..ArchiveConfig::new("/var/lib/auditwatch/archive")
//! })?;
//! archive.append_lines(b"{\"type\":\"request\"}\n{\"type\":\"response\"}\n");
//! archive.tick(Instant::now()); // call about once a second: interval fsync, age rotation
//! archive.sync()?; // at shutdown
//! println!("{:?}", archive.close());
//! # Ok::<(), auditwatch::archive::ArchiveError>(())
//! ```

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Name of the manifest file inside the archive directory.
pub const MANIFEST_FILE_NAME: &str = "manifest.jsonl";
/// Default name of the live file.
pub const DEFAULT_FILE_NAME: &str = "audit.log";
/// Default size at which the live file is rotated (256 MiB).
pub const DEFAULT_ROTATE_BYTES: u64 = 256 * 1024 * 1024;
/// The `prev` value of the first manifest record: 64 zeros.
pub const ZERO_DIGEST: &str = "0000000000000000000000000000000000000000000000000000000000000000";

const FILE_MODE: u32 = 0o600;
const DIR_MODE: u32 = 0o700;
const IO_BUF: usize = 256 * 1024;
const RETRY_BACKOFF: Duration = Duration::from_secs(1);
const TS_LEN: usize = "YYYYmmddTHHMMSS.fffZ".len();
const ZSTD_LEVEL: i32 = 3;

// ---------------------------------------------------------------------------------------------
// Configuration, counters, errors
// ---------------------------------------------------------------------------------------------

/// Compression applied to rotated segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Segments stay plain (`.log`).
    #[default]
    None,
    /// gzip (`.log.gz`, one member, default level), readable with `zcat` or `MultiGzDecoder`.
    Gzip,
    /// zstd (`.log.zst`, level 3, with a content checksum).
    Zstd,
}

impl Compression {
    /// The suffix appended to a segment name: `""`, `".gz"` or `".zst"`.
    pub fn extension(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Gzip => ".gz",
            Compression::Zstd => ".zst",
        }
    }
}

/// When the live file is flushed to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Never fsync explicitly (the kernel writes back on its own schedule). Rotation and
    /// [`Archive::sync`] still fsync.
    Never,
    /// `fdatasync` after every `append_lines` call and every finished streamed line.
    Always,
    /// `fdatasync` when something was written since the last sync and this much time has
    /// passed; checked on every append and in [`Archive::tick`].
    Interval(Duration),
}

impl Default for FsyncPolicy {
    /// `Interval(1 s)`.
    fn default() -> Self {
        FsyncPolicy::Interval(Duration::from_secs(1))
    }
}

/// Configuration of an [`Archive`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveConfig {
    /// Directory holding the live file, the segments and the manifest. Created with mode 0700.
    /// Default `/var/lib/auditwatch/archive`.
    pub dir: PathBuf,
    /// Name of the live file inside `dir`; only `A-Z a-z 0-9 . _ -`, not starting with `.`.
    /// Default `audit.log`.
    pub file_name: String,
    /// Rotate before an append that would make the live file larger than this (unless it is
    /// empty: one line larger than the limit gets a segment of its own). Default 256 MiB.
    pub rotate_bytes: Option<u64>,
    /// Rotate when the live file's first byte is older than this (checked on append and in
    /// `tick`). An empty live file is never rotated. Default `None`.
    pub rotate_age: Option<Duration>,
    /// Keep at most this many rotated segments. Default `None` (no limit).
    pub keep_files: Option<usize>,
    /// Keep at most this many bytes of rotated segments (stored sizes). Default `None`.
    pub keep_bytes: Option<u64>,
    /// Compression of rotated segments. Default [`Compression::None`].
    pub compress: Compression,
    /// Fsync policy for the live file. Default `Interval(1 s)`.
    pub fsync: FsyncPolicy,
    /// Minimum time between two error messages about failed writes (the rest are counted and
    /// the count is reported in the next message). Default 10 s.
    pub error_log_interval: Duration,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            dir: PathBuf::from("/var/lib/auditwatch/archive"),
            file_name: DEFAULT_FILE_NAME.to_owned(),
            rotate_bytes: Some(DEFAULT_ROTATE_BYTES),
            rotate_age: None,
            keep_files: None,
            keep_bytes: None,
            compress: Compression::None,
            fsync: FsyncPolicy::default(),
            error_log_interval: Duration::from_secs(10),
        }
    }
}

impl ArchiveConfig {
    /// The defaults with `dir` set.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ArchiveConfig {
            dir: dir.into(),
            ..ArchiveConfig::default()
        }
    }

    fn validate(&self) -> Result<(), ArchiveError> {
        validate_file_name(&self.file_name)?;
        if self.rotate_bytes == Some(0) {
            return Err(ArchiveError::Config(
                "rotate_bytes must be greater than 0".into(),
            ));
        }
        if self.rotate_age == Some(Duration::ZERO) {
            return Err(ArchiveError::Config(
                "rotate_age must be greater than 0".into(),
            ));
        }
        if self.dir.as_os_str().is_empty() {
            return Err(ArchiveError::Config("dir must not be empty".into()));
        }
        Ok(())
    }
}

fn validate_file_name(name: &str) -> Result<(), ArchiveError> {
    let bad = |why: &str| Err(ArchiveError::Config(format!("file_name {name:?}: {why}")));
    if !is_safe_name(name) {
        return bad("use 1-128 characters from A-Z a-z 0-9 . _ -, not starting with '.'");
    }
    if name == MANIFEST_FILE_NAME {
        return bad("clashes with the manifest");
    }
    Ok(())
}

fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Counters of an [`Archive`] since it was opened. All plain, monotonic `u64` counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ArchiveStats {
    /// Bytes of complete lines written to the live file.
    pub bytes_written: u64,
    /// Complete lines written to the live file.
    pub lines_written: u64,
    /// Bytes given to the archive and not written (disk full, I/O error, caller mistakes).
    pub dropped_bytes: u64,
    /// Lines (or unterminated fragments) given to the archive and not written.
    pub dropped_lines: u64,
    /// Rotations of the live file into a segment.
    pub rotations: u64,
    /// Segments deleted by retention.
    pub segments_deleted: u64,
    /// Bytes of incomplete last lines removed from the live file by `open`/`reopen`.
    pub torn_tail_repaired_bytes: u64,
    /// Failed I/O operations: writes, fsyncs, renames, compression, manifest appends.
    pub write_errors: u64,
}

/// What one `append_lines` / `append_partial` call did (the same deltas are added to
/// [`ArchiveStats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Complete lines written by this call.
    pub lines_written: u64,
    /// Bytes of those lines (for a streamed line: its whole length, reported when it finishes).
    pub bytes_written: u64,
    /// Lines dropped by this call (a streamed line counts once, when it fails).
    pub dropped_lines: u64,
    /// Bytes dropped by this call.
    pub dropped_bytes: u64,
}

/// Errors from opening, reopening, syncing or verifying an archive. Write errors during appends
/// are not returned: they are counted (see [`ArchiveStats`]) and logged.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveError {
    /// The configuration is invalid.
    #[error("invalid archive configuration: {0}")]
    Config(String),
    /// A path that must not be a symbolic link is one.
    #[error("refusing to use {}: it is a symbolic link", path.display())]
    Symlink {
        /// The offending path.
        path: PathBuf,
    },
    /// The archive directory exists but is not a directory.
    #[error("refusing to use {}: not a directory", path.display())]
    NotADirectory {
        /// The offending path.
        path: PathBuf,
    },
    /// A file the archive writes exists but is not a regular file.
    #[error("refusing to use {}: not a regular file", path.display())]
    NotRegularFile {
        /// The offending path.
        path: PathBuf,
    },
    /// A file the archive writes has other hard links (possible link attack).
    #[error("refusing to write {}: it has {links} hard links", path.display())]
    HardLinked {
        /// The offending path.
        path: PathBuf,
        /// Its link count.
        links: u64,
    },
    /// An I/O operation failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ArchiveError + 'a {
    move |source| match source.raw_os_error() {
        Some(libc::ELOOP) => ArchiveError::Symlink {
            path: path.to_owned(),
        },
        _ => ArchiveError::Io {
            op,
            path: path.to_owned(),
            source,
        },
    }
}

// ---------------------------------------------------------------------------------------------
// File naming
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Names {
    live: String,
    stem: String,
    ext: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct SegName {
    seq: u64,
    ts: String,
    compression: Compression,
    /// The plain segment name (without `.gz` / `.zst`).
    plain: String,
}

impl Names {
    fn new(file_name: &str) -> Self {
        let (stem, ext) = match file_name.rfind('.') {
            Some(i) if i > 0 => file_name.split_at(i),
            _ => (file_name, ""),
        };
        Names {
            live: file_name.to_owned(),
            stem: stem.to_owned(),
            ext: ext.to_owned(),
        }
    }

    fn segment(&self, ts: &str, seq: u64) -> String {
        format!("{}-{}-{:08}{}", self.stem, ts, seq, self.ext)
    }

    fn parse(&self, name: &str) -> Option<SegName> {
        let rest = name.strip_prefix(self.stem.as_str())?.strip_prefix('-')?;
        let ts = rest.get(..TS_LEN)?;
        if !valid_ts(ts) {
            return None;
        }
        let rest = rest[TS_LEN..].strip_prefix('-')?;
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 19 {
            return None;
        }
        let seq: u64 = rest[..digits].parse().ok()?;
        let tail = rest[digits..].strip_prefix(self.ext.as_str())?;
        let compression = match tail {
            "" => Compression::None,
            ".gz" => Compression::Gzip,
            ".zst" => Compression::Zstd,
            _ => return None,
        };
        Some(SegName {
            seq,
            ts: ts.to_owned(),
            compression,
            plain: name[..name.len() - tail.len()].to_owned(),
        })
    }

    /// `.<compressed segment>.tmp`: an unfinished compression.
    fn is_temp(&self, name: &str) -> bool {
        name.strip_prefix('.')
            .and_then(|n| n.strip_suffix(".tmp"))
            .and_then(|n| self.parse(n))
            .is_some_and(|s| s.compression != Compression::None)
    }
}

fn valid_ts(ts: &str) -> bool {
    let b = ts.as_bytes();
    b.len() == TS_LEN
        && b.iter().enumerate().all(|(i, c)| match i {
            8 => *c == b'T',
            15 => *c == b'.',
            19 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

/// `YYYYmmddTHHMMSS.fffZ` in UTC.
fn format_utc(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, m, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}{m:02}{day:02}T{:02}{:02}{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

// ---------------------------------------------------------------------------------------------
// Low-level file helpers (no unsafe code: std + libc constants only)
// ---------------------------------------------------------------------------------------------

fn same_file(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    a.dev() == b.dev() && a.ino() == b.ino()
}

/// Opens `path` for appending, creating it 0600; refuses symlinks, non-regular files and
/// hard-linked files, and fixes the mode whatever the umask.
fn open_private_append(path: &Path) -> Result<File, ArchiveError> {
    match fs::symlink_metadata(path) {
        Ok(md) if md.file_type().is_symlink() => {
            return Err(ArchiveError::Symlink {
                path: path.to_owned(),
            })
        }
        Ok(md) if !md.is_file() => {
            return Err(ArchiveError::NotRegularFile {
                path: path.to_owned(),
            })
        }
        _ => {}
    }
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(io_err("open", path))?;
    let md = file.metadata().map_err(io_err("stat", path))?;
    if !md.is_file() {
        return Err(ArchiveError::NotRegularFile {
            path: path.to_owned(),
        });
    }
    if md.nlink() > 1 {
        return Err(ArchiveError::HardLinked {
            path: path.to_owned(),
            links: md.nlink(),
        });
    }
    if md.mode() & 0o7777 != FILE_MODE {
        file.set_permissions(Permissions::from_mode(FILE_MODE))
            .map_err(io_err("chmod 0600", path))?;
    }
    Ok(file)
}

/// Creates a new file 0600 (`O_EXCL`, no symlink following) for writing.
fn create_private_new(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    file.set_permissions(Permissions::from_mode(FILE_MODE))?;
    Ok(file)
}

/// Opens a regular file for reading without following symlinks or blocking on a FIFO.
fn open_read(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(file)
}

/// `write_all` that reports how many bytes went out before an error.
fn write_tracked(mut file: &File, buf: &[u8]) -> Result<(), (usize, io::Error)> {
    let mut done = 0;
    while done < buf.len() {
        match file.write(&buf[done..]) {
            Ok(0) => return Err((done, io::ErrorKind::WriteZero.into())),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err((done, e)),
        }
    }
    Ok(())
}

fn read_some(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

fn count_lines(b: &[u8]) -> u64 {
    memchr::memchr_iter(b'\n', b).count() as u64
}

fn first_line_len(b: &[u8]) -> usize {
    memchr::memchr(b'\n', b).map_or(b.len(), |i| i + 1)
}

/// Offset just after the last `\n` in the first `size` bytes of `file`.
fn end_of_last_line(file: &File, size: u64) -> io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut end = size;
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        file.read_exact_at(chunk, start)?;
        if let Some(i) = memchr::memrchr(b'\n', chunk) {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// Truncates a file that does not end in `\n` back to just after its last `\n`. `writer` is the
/// append handle for `path`; returns the number of bytes removed.
fn repair_torn_tail(writer: &File, path: &Path, size: u64) -> Result<u64, ArchiveError> {
    if size == 0 {
        return Ok(0);
    }
    let reader = open_read(path).map_err(io_err("open for reading", path))?;
    let (wmd, rmd) = (
        writer.metadata().map_err(io_err("stat", path))?,
        reader.metadata().map_err(io_err("stat", path))?,
    );
    if !same_file(&wmd, &rmd) {
        return Err(ArchiveError::Io {
            op: "check",
            path: path.to_owned(),
            source: io::Error::other("file was replaced while being opened"),
        });
    }
    let keep = end_of_last_line(&reader, size).map_err(io_err("read", path))?;
    if keep < size {
        writer.set_len(keep).map_err(io_err("truncate", path))?;
        writer.sync_data().map_err(io_err("fsync", path))?;
        tracing::warn!(
            path = %path.display(),
            removed_bytes = size - keep,
            kept_bytes = keep,
            "archive: removed an incomplete last line (interrupted write)"
        );
    }
    Ok(size - keep)
}

struct LiveOpen {
    file: File,
    size: u64,
    repaired: u64,
}

fn open_live(path: &Path) -> Result<LiveOpen, ArchiveError> {
    let file = open_private_append(path)?;
    let size = file.metadata().map_err(io_err("stat", path))?.len();
    let repaired = repair_torn_tail(&file, path, size)?;
    Ok(LiveOpen {
        file,
        size: size - repaired,
        repaired,
    })
}

/// Creates (0700) or checks the archive directory and returns an open handle to it.
fn prepare_dir(dir: &Path) -> Result<File, ArchiveError> {
    let mut created = false;
    match fs::symlink_metadata(dir) {
        Ok(md) if md.file_type().is_symlink() => {
            return Err(ArchiveError::Symlink {
                path: dir.to_owned(),
            })
        }
        Ok(md) if !md.is_dir() => {
            return Err(ArchiveError::NotADirectory {
                path: dir.to_owned(),
            })
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(dir)
                .map_err(io_err("create directory", dir))?;
            created = true;
        }
        Err(e) => return Err(io_err("stat", dir)(e)),
    }
    let handle = open_dir(dir)?;
    let mode = handle.metadata().map_err(io_err("stat", dir))?.mode() & 0o7777;
    if mode != DIR_MODE {
        match handle.set_permissions(Permissions::from_mode(DIR_MODE)) {
            Ok(()) if !created => tracing::warn!(
                path = %dir.display(),
                old_mode = format!("{mode:04o}"),
                "archive: directory permissions tightened to 0700"
            ),
            Ok(()) => {}
            Err(e) if created => return Err(io_err("chmod 0700", dir)(e)),
            Err(e) => tracing::warn!(
                path = %dir.display(),
                mode = format!("{mode:04o}"),
                error = %e,
                "archive: cannot tighten directory permissions to 0700"
            ),
        }
    }
    Ok(handle)
}

fn open_dir(dir: &Path) -> Result<File, ArchiveError> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENOTDIR) => ArchiveError::NotADirectory {
                path: dir.to_owned(),
            },
            _ => io_err("open directory", dir)(e),
        })
}

/// SHA-256, size and line count of a file's bytes.
fn hash_file(path: &Path) -> io::Result<(u64, u64, String)> {
    let mut file = open_read(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; IO_BUF];
    let (mut bytes, mut lines) = (0u64, 0u64);
    loop {
        let n = read_some(&mut file, &mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        lines += count_lines(&buf[..n]);
        bytes += n as u64;
    }
    Ok((bytes, lines, hex::encode(hasher.finalize())))
}

/// Counts the lines of a compressed segment's content.
fn count_lines_compressed(path: &Path, kind: Compression) -> io::Result<u64> {
    let file = open_read(path)?;
    let mut reader: Box<dyn Read> = match kind {
        Compression::None => Box::new(file),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(file)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(file)?),
    };
    let mut buf = vec![0u8; IO_BUF];
    let mut lines = 0;
    loop {
        let n = read_some(&mut reader, &mut buf)?;
        if n == 0 {
            return Ok(lines);
        }
        lines += count_lines(&buf[..n]);
    }
}

/// A writer that hashes and counts what passes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Compresses `src` into the new file `tmp`; returns (stored bytes, lines, sha256 of stored).
fn compress_file(src: &Path, tmp: &Path, kind: Compression) -> io::Result<(u64, u64, String)> {
    let mut input = open_read(src)?;
    let out = HashingWriter {
        inner: create_private_new(tmp)?,
        hasher: Sha256::new(),
        bytes: 0,
    };
    let mut buf = vec![0u8; IO_BUF];
    let mut lines = 0;
    let mut pump = |enc: &mut dyn Write| -> io::Result<()> {
        loop {
            let n = read_some(&mut input, &mut buf)?;
            if n == 0 {
                return Ok(());
            }
            lines += count_lines(&buf[..n]);
            enc.write_all(&buf[..n])?;
        }
    };
    let mut out = match kind {
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(out, flate2::Compression::default());
            pump(&mut enc)?;
            enc.finish()?
        }
        Compression::Zstd => {
            let mut enc = zstd::stream::write::Encoder::new(out, ZSTD_LEVEL)?;
            enc.include_checksum(true)?;
            pump(&mut enc)?;
            enc.finish()?
        }
        Compression::None => return Err(io::Error::other("no compression requested")),
    };
    out.flush()?;
    out.inner.sync_all()?;
    Ok((out.bytes, lines, hex::encode(out.hasher.finalize())))
}

// ---------------------------------------------------------------------------------------------
// Manifest
// ---------------------------------------------------------------------------------------------

/// One manifest record (one line of `manifest.jsonl`); see the module docs for the format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestRecord {
    /// Record number, from 1, without gaps.
    pub seq: u64,
    /// `"segment"` or `"deleted"`.
    pub event: String,
    /// Segment file name as stored.
    pub file: String,
    /// Stored size (segment records only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Lines in the segment (segment records only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lines: Option<u64>,
    /// Lowercase hex SHA-256 of the stored file.
    pub sha256: String,
    /// Digest of the previous record, or [`ZERO_DIGEST`].
    pub prev: String,
    /// `sha256_hex(prev + "\n" + canonical)`; `None` only while computing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

impl ManifestRecord {
    /// The canonical form: compact JSON, fixed key order, without `digest`.
    pub fn canonical(&self) -> String {
        let body = ManifestRecord {
            digest: None,
            ..self.clone()
        };
        serde_json::to_string(&body).unwrap_or_default()
    }

    /// The digest this record must carry, computed from its `prev` and canonical form.
    pub fn expected_digest(&self) -> String {
        chain_digest(&self.prev, &self.canonical())
    }

    fn well_formed(&self) -> bool {
        let hex64 =
            |s: &str| s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        let shape = match self.event.as_str() {
            "segment" => self.bytes.is_some() && self.lines.is_some(),
            "deleted" => self.bytes.is_none() && self.lines.is_none(),
            _ => false,
        };
        shape
            && is_safe_name(&self.file)
            && hex64(&self.sha256)
            && hex64(&self.prev)
            && self.digest.as_deref().is_some_and(hex64)
    }
}

fn chain_digest(prev: &str, canonical: &str) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(b"\n");
    h.update(canonical.as_bytes());
    hex::encode(h.finalize())
}

enum RecordBody {
    Segment {
        file: String,
        bytes: u64,
        lines: u64,
        sha256: String,
    },
    Deleted {
        file: String,
        sha256: String,
    },
}

struct ManifestWriter {
    path: PathBuf,
    file: File,
    size: u64,
    last_seq: u64,
    head: String,
    /// A failed append could not be truncated away; retry before the next append.
    torn: bool,
}

impl ManifestWriter {
    /// Opens (creating 0600) the manifest, repairs an incomplete last record and returns the
    /// records that parse.
    fn open(path: &Path) -> Result<(Self, Vec<ManifestRecord>), ArchiveError> {
        let file = open_private_append(path)?;
        let mut data = Vec::new();
        open_read(path)
            .and_then(|mut r| r.read_to_end(&mut data))
            .map_err(io_err("read", path))?;
        let keep = memchr::memrchr(b'\n', &data).map_or(0, |i| i + 1);
        if keep < data.len() {
            file.set_len(keep as u64)
                .map_err(io_err("truncate", path))?;
            file.sync_data().map_err(io_err("fsync", path))?;
            tracing::warn!(
                path = %path.display(),
                removed_bytes = data.len() - keep,
                "archive: removed an incomplete last manifest record (interrupted write)"
            );
            data.truncate(keep);
        }
        let mut records = Vec::new();
        for line in data.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            match serde_json::from_slice::<ManifestRecord>(line) {
                Ok(r) => records.push(r),
                Err(e) => tracing::warn!(
                    path = %path.display(),
                    error = %e,
                    "archive: unreadable manifest record (run verify)"
                ),
            }
        }
        let (last_seq, head) = records.last().map_or((0, ZERO_DIGEST.to_owned()), |r| {
            (
                r.seq,
                r.digest.clone().unwrap_or_else(|| ZERO_DIGEST.to_owned()),
            )
        });
        let writer = ManifestWriter {
            path: path.to_owned(),
            file,
            size: keep as u64,
            last_seq,
            head,
            torn: false,
        };
        Ok((writer, records))
    }

    fn append(&mut self, body: RecordBody) -> io::Result<()> {
        if self.torn {
            self.file.set_len(self.size)?;
            self.torn = false;
        }
        let mut rec = match body {
            RecordBody::Segment {
                file,
                bytes,
                lines,
                sha256,
            } => ManifestRecord {
                seq: self.last_seq + 1,
                event: "segment".into(),
                file,
                bytes: Some(bytes),
                lines: Some(lines),
                sha256,
                prev: self.head.clone(),
                digest: None,
            },
            RecordBody::Deleted { file, sha256 } => ManifestRecord {
                seq: self.last_seq + 1,
                event: "deleted".into(),
                file,
                bytes: None,
                lines: None,
                sha256,
                prev: self.head.clone(),
                digest: None,
            },
        };
        let digest = rec.expected_digest();
        rec.digest = Some(digest.clone());
        let mut line = serde_json::to_vec(&rec)?;
        line.push(b'\n');
        if let Err((_, e)) = write_tracked(&self.file, &line) {
            if self.file.set_len(self.size).is_err() {
                self.torn = true;
            }
            return Err(e);
        }
        self.size += line.len() as u64;
        self.last_seq = rec.seq;
        self.head = digest;
        if let Err(e) = self.file.sync_data() {
            // The record is written (it is in the page cache); appending it again would
            // duplicate it. Report and carry on.
            tracing::error!(path = %self.path.display(), error = %e, "archive: manifest fsync failed");
        }
        tracing::info!(
            path = %self.path.display(),
            seq = rec.seq,
            event = %rec.event,
            file = %rec.file,
            digest = %self.head,
            "archive: manifest record appended"
        );
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Background finisher: compression, hashing, manifest records, retention
// ---------------------------------------------------------------------------------------------

enum Job {
    /// A freshly rotated plain segment: compress (if configured), hash, record, retention.
    Segment(String),
    /// An already compressed segment found unrecorded at open: hash and record.
    Existing(String),
    /// Reply when everything before it is done.
    Barrier(mpsc::Sender<()>),
}

struct Shared {
    segments_deleted: AtomicU64,
    write_errors: AtomicU64,
    head: Mutex<(u64, String)>,
}

#[derive(Debug, Clone)]
struct Retained {
    file: String,
    bytes: u64,
    sha256: String,
}

struct Finisher {
    names: Names,
    dir_path: PathBuf,
    dir: File,
    compress: Compression,
    keep_files: Option<usize>,
    keep_bytes: Option<u64>,
    manifest: ManifestWriter,
    retained: VecDeque<Retained>,
    retained_bytes: u64,
    /// Finished segments (with their line counts) waiting for their manifest record.
    unrecorded: VecDeque<(Retained, u64)>,
    retention_blocked: bool,
    shared: Arc<Shared>,
    log: RateLimiter,
}

impl Finisher {
    fn run(mut self, rx: mpsc::Receiver<Job>) {
        loop {
            let job = if self.backlog() {
                match rx.recv_timeout(RETRY_BACKOFF) {
                    Ok(job) => Some(job),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        self.flush_backlog();
                        return;
                    }
                }
            } else {
                match rx.recv() {
                    Ok(job) => Some(job),
                    Err(_) => return,
                }
            };
            self.flush_backlog();
            match job {
                Some(Job::Segment(name)) => self.finish_segment(&name),
                Some(Job::Existing(name)) => self.record_existing(&name),
                Some(Job::Barrier(reply)) => {
                    let _ = reply.send(());
                }
                None => {}
            }
        }
    }

    fn backlog(&self) -> bool {
        !self.unrecorded.is_empty() || self.retention_blocked
    }

    fn error(&mut self, what: &str, path: &Path, err: &dyn fmt::Display) {
        self.shared.write_errors.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = self.log.check(Instant::now()) {
            tracing::error!(path = %path.display(), error = %err, suppressed, "archive: {what}");
        }
    }

    fn sync_dir(&mut self) {
        if let Err(e) = self.dir.sync_all() {
            let dir = self.dir_path.clone();
            self.error("directory fsync failed", &dir, &e);
        }
    }

    fn finish_segment(&mut self, plain_name: &str) {
        let plain = self.dir_path.join(plain_name);
        let mut stored = None;
        if self.compress != Compression::None {
            let final_name = format!("{plain_name}{}", self.compress.extension());
            let final_path = self.dir_path.join(&final_name);
            let tmp = self.dir_path.join(format!(".{final_name}.tmp"));
            let result = compress_file(&plain, &tmp, self.compress)
                .and_then(|r| fs::rename(&tmp, &final_path).map(|()| r));
            match result {
                Ok((bytes, lines, sha256)) => {
                    self.sync_dir();
                    if let Err(e) = fs::remove_file(&plain) {
                        self.error("cannot remove plain segment after compression", &plain, &e);
                    }
                    self.sync_dir();
                    stored = Some((final_name, bytes, lines, sha256));
                }
                Err(e) => {
                    let _ = fs::remove_file(&tmp);
                    self.error("compression failed; keeping the plain segment", &plain, &e);
                }
            }
        }
        let stored = match stored {
            Some(s) => s,
            None => match hash_file(&plain) {
                Ok((bytes, lines, sha256)) => (plain_name.to_owned(), bytes, lines, sha256),
                Err(e) => {
                    self.error("cannot hash segment; it stays unrecorded", &plain, &e);
                    return;
                }
            },
        };
        self.push_record(stored);
    }

    fn record_existing(&mut self, name: &str) {
        let path = self.dir_path.join(name);
        let kind = self
            .names
            .parse(name)
            .map_or(Compression::None, |s| s.compression);
        let (bytes, _, sha256) = match hash_file(&path) {
            Ok(h) => h,
            Err(e) => {
                self.error("cannot hash segment; it stays unrecorded", &path, &e);
                return;
            }
        };
        let lines = count_lines_compressed(&path, kind).unwrap_or_else(|e| {
            self.error(
                "cannot decompress recovered segment; recording 0 lines",
                &path,
                &e,
            );
            0
        });
        self.push_record((name.to_owned(), bytes, lines, sha256));
    }

    fn push_record(&mut self, (file, bytes, lines, sha256): (String, u64, u64, String)) {
        let seg = Retained {
            file,
            bytes,
            sha256,
        };
        self.unrecorded.push_back((seg, lines));
        self.flush_backlog();
    }

    fn flush_backlog(&mut self) {
        while let Some((seg, lines)) = self.unrecorded.front().cloned() {
            let body = RecordBody::Segment {
                file: seg.file.clone(),
                bytes: seg.bytes,
                lines,
                sha256: seg.sha256.clone(),
            };
            if let Err(e) = self.manifest.append(body) {
                let path = self.manifest.path.clone();
                self.error("manifest append failed; will retry", &path, &e);
                return;
            }
            self.publish_head();
            self.unrecorded.pop_front();
            self.retained_bytes += seg.bytes;
            self.retained.push_back(seg);
        }
        self.apply_retention();
    }

    fn over_limits(&self) -> bool {
        self.keep_files.is_some_and(|k| self.retained.len() > k)
            || self.keep_bytes.is_some_and(|b| self.retained_bytes > b)
    }

    fn apply_retention(&mut self) {
        while self.over_limits() {
            let Some(victim) = self.retained.front().cloned() else {
                break;
            };
            let body = RecordBody::Deleted {
                file: victim.file.clone(),
                sha256: victim.sha256.clone(),
            };
            if let Err(e) = self.manifest.append(body) {
                let path = self.manifest.path.clone();
                self.error("manifest append failed; retention postponed", &path, &e);
                self.retention_blocked = true;
                return;
            }
            self.publish_head();
            self.retained.pop_front();
            self.retained_bytes -= victim.bytes;
            let path = self.dir_path.join(&victim.file);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => self.error("cannot delete segment (retried at next open)", &path, &e),
            }
            self.sync_dir();
            self.shared.segments_deleted.fetch_add(1, Ordering::Relaxed);
        }
        self.retention_blocked = false;
    }

    fn publish_head(&self) {
        if let Ok(mut head) = self.shared.head.lock() {
            *head = (self.manifest.last_seq, self.manifest.head.clone());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The archive
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct RateLimiter {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimiter {
    fn new(interval: Duration) -> Self {
        RateLimiter {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(number suppressed since the last message)` when a message may be logged now.
    fn check(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.interval => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// A streamed (oversize) line in progress.
#[derive(Debug, Clone, Copy)]
struct Partial {
    start: u64,
    len: u64,
    last: Option<u8>,
    failed: bool,
}

/// The fallback archive writer. Not thread-safe by design: own it from one dedicated thread
/// (it is `Send`). See the [module docs](self) for the guarantees.
pub struct Archive {
    cfg: ArchiveConfig,
    names: Names,
    live_path: PathBuf,
    dir: File,
    file: Option<File>,
    size: u64,
    live_since: Option<Instant>,
    dirty: bool,
    last_sync: Instant,
    partial: Option<Partial>,
    pending_truncate: Option<u64>,
    deferred_rotate: bool,
    deferred_reopen: bool,
    next_seq: u64,
    last_ts: String,
    rotate_retry_at: Option<Instant>,
    failing: bool,
    stats: ArchiveStats,
    err_log: RateLimiter,
    misuse_log: RateLimiter,
    resume_log: RateLimiter,
    tx: Option<mpsc::Sender<Job>>,
    worker: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
    /// Interval fsyncs run here, off the writer thread: an `fdatasync` can
    /// take a second on a busy disk, and the writer must keep draining the
    /// socket queue meanwhile. Holds a dup of the live file's descriptor.
    syncer: Option<mpsc::SyncSender<File>>,
}

impl fmt::Debug for Archive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Archive")
            .field("live_path", &self.live_path)
            .field("size", &self.size)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Archive {
    /// Opens (creating if needed) the archive in `cfg.dir`: checks the directory, repairs a torn
    /// last line of the live file and of the manifest, removes unfinished temporary files,
    /// finishes deletions and records segments left by a crash, and starts the background
    /// finisher thread. Fails with an error naming the path if anything is a symlink, of the
    /// wrong type, or not writable.
    pub fn open(cfg: ArchiveConfig) -> Result<Archive, ArchiveError> {
        cfg.validate()?;
        let names = Names::new(&cfg.file_name);
        let dir = prepare_dir(&cfg.dir)?;
        let live_path = cfg.dir.join(&cfg.file_name);
        // Refuse a bad live file or manifest before changing anything else in the directory.
        let live = open_live(&live_path)?;
        let (manifest, records) = ManifestWriter::open(&cfg.dir.join(MANIFEST_FILE_NAME))?;
        let recovery = recover(&cfg.dir, &names, &records)?;
        dir.sync_all().map_err(io_err("fsync", &cfg.dir))?;

        let shared = Arc::new(Shared {
            segments_deleted: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            head: Mutex::new((manifest.last_seq, manifest.head.clone())),
        });
        let retained_bytes = recovery.retained.iter().map(|r| r.bytes).sum();
        let finisher = Finisher {
            names: names.clone(),
            dir_path: cfg.dir.clone(),
            dir: dir
                .try_clone()
                .map_err(io_err("duplicate handle of", &cfg.dir))?,
            compress: cfg.compress,
            keep_files: cfg.keep_files,
            keep_bytes: cfg.keep_bytes,
            manifest,
            retained: recovery.retained,
            retained_bytes,
            unrecorded: VecDeque::new(),
            retention_blocked: false,
            shared: Arc::clone(&shared),
            log: RateLimiter::new(cfg.error_log_interval),
        };
        let (tx, rx) = mpsc::channel();
        for job in recovery.jobs {
            let _ = tx.send(job);
        }
        // Apply retention once at start (limits may have been lowered since the last run).
        let worker = std::thread::Builder::new()
            .name("archive-finish".into())
            .spawn(move || {
                let mut f = finisher;
                f.apply_retention();
                f.run(rx);
            })
            .map_err(io_err("start the finisher thread for", &cfg.dir))?;

        let syncer = match cfg.fsync {
            FsyncPolicy::Interval(_) => {
                let (tx, rx) = mpsc::sync_channel::<File>(1);
                std::thread::Builder::new()
                    .name("archive-fsync".into())
                    .spawn(move || {
                        for f in rx {
                            if let Err(e) = f.sync_data() {
                                tracing::error!("archive: background fdatasync failed: {e}");
                            }
                        }
                    })
                    .map_err(io_err("start the fsync thread for", &cfg.dir))?;
                Some(tx)
            }
            _ => None,
        };
        let now = Instant::now();
        let mut archive = Archive {
            syncer,
            names,
            live_path,
            dir,
            file: None,
            size: 0,
            live_since: None,
            dirty: false,
            last_sync: now,
            partial: None,
            pending_truncate: None,
            deferred_rotate: false,
            deferred_reopen: false,
            next_seq: recovery.next_seq,
            last_ts: recovery.last_ts,
            rotate_retry_at: None,
            failing: false,
            stats: ArchiveStats::default(),
            err_log: RateLimiter::new(cfg.error_log_interval),
            misuse_log: RateLimiter::new(cfg.error_log_interval),
            resume_log: RateLimiter::new(cfg.error_log_interval),
            tx: Some(tx),
            worker: Some(worker),
            shared,
            cfg,
        };
        archive.install_live(live, now);
        Ok(archive)
    }

    /// Appends one or more complete lines (each ending in `\n`) byte-for-byte. Rotates first if
    /// needed (only between lines; a large batch is split across segments at line boundaries).
    /// Never fails: lines that cannot be written are dropped whole and counted (see the module
    /// docs), and the outcome says what happened.
    pub fn append_lines(&mut self, bytes: &[u8]) -> AppendOutcome {
        let mut out = AppendOutcome::default();
        if bytes.is_empty() {
            return out;
        }
        if self.partial.is_some() {
            self.abandon_partial(&mut out);
        }
        let complete = memchr::memrchr(b'\n', bytes).map_or(0, |i| i + 1);
        if complete < bytes.len() {
            self.record_drop(&mut out, 1, (bytes.len() - complete) as u64);
            self.misuse("append_lines was given bytes after the last newline; they were dropped");
        }
        let now = Instant::now();
        let mut rest = &bytes[..complete];
        while !rest.is_empty() {
            self.maybe_rotate(now, first_line_len(rest) as u64);
            if let Err(e) = self.ready(now) {
                self.record_drop(&mut out, count_lines(rest), rest.len() as u64);
                self.log_failure("cannot open the live file", &e);
                break;
            }
            let take = self.chunk_len(rest);
            let chunk = &rest[..take];
            let start = self.size;
            let result = match &self.file {
                Some(f) => write_tracked(f, chunk),
                None => Err((0, io::Error::other("no live file"))),
            };
            match result {
                Ok(()) => {
                    self.size += take as u64;
                    self.note_written(now, &mut out, count_lines(chunk), take as u64);
                }
                Err((done, err)) => {
                    let keep = memchr::memrchr(b'\n', &chunk[..done]).map_or(0, |i| i + 1);
                    self.truncate_to(start + keep as u64);
                    if keep > 0 {
                        self.note_written(now, &mut out, count_lines(&chunk[..keep]), keep as u64);
                    }
                    let lost = &rest[keep..];
                    self.record_drop(&mut out, count_lines(lost), lost.len() as u64);
                    self.log_failure("write failed", &err);
                    break;
                }
            }
            rest = &rest[take..];
        }
        if out.lines_written > 0 {
            self.after_write(now, true);
        }
        out
    }

    /// Streams one line in pieces without holding it whole: call with `line_done = false` for
    /// every piece but the last, and `line_done = true` with the last piece (which must end the
    /// line with `\n`; pieces must not contain other `\n`). Rotation, `reopen` and `rotate_now`
    /// wait until the line is finished. If a piece cannot be written, the file is truncated back
    /// to the start of the line, the rest of the line's pieces are discarded, and all its bytes
    /// are counted as dropped (one dropped line).
    pub fn append_partial(&mut self, piece: &[u8], line_done: bool) -> AppendOutcome {
        let mut out = AppendOutcome::default();
        let now = Instant::now();
        let mut piece_counted = false;
        let mut p = match self.partial.take() {
            Some(p) => p,
            None => {
                if piece.is_empty() {
                    return out;
                }
                self.maybe_rotate(now, piece.len() as u64);
                match self.ready(now) {
                    Ok(()) => Partial {
                        start: self.size,
                        len: 0,
                        last: None,
                        failed: false,
                    },
                    Err(e) => {
                        self.record_drop(&mut out, 1, piece.len() as u64);
                        self.log_failure("cannot open the live file", &e);
                        piece_counted = true;
                        Partial {
                            start: self.size,
                            len: 0,
                            last: None,
                            failed: true,
                        }
                    }
                }
            }
        };
        if p.failed {
            if !piece_counted {
                self.record_drop(&mut out, 0, piece.len() as u64);
            }
        } else if !piece.is_empty() {
            let result = match &self.file {
                Some(f) => write_tracked(f, piece),
                None => Err((0, io::Error::other("no live file"))),
            };
            match result {
                Ok(()) => {
                    p.len += piece.len() as u64;
                    p.last = piece.last().copied();
                    self.size += piece.len() as u64;
                    self.dirty = true;
                }
                Err((_, err)) => {
                    self.truncate_to(p.start);
                    self.record_drop(&mut out, 1, p.len + piece.len() as u64);
                    self.log_failure("write failed in the middle of a streamed line", &err);
                    p.failed = true;
                }
            }
        }
        if !line_done {
            self.partial = Some(p);
            return out;
        }
        if !p.failed {
            if p.last == Some(b'\n') {
                self.note_written(now, &mut out, 1, p.len);
            } else {
                self.truncate_to(p.start);
                self.record_drop(&mut out, 1, p.len);
                self.misuse("a streamed line was finished without a newline; it was dropped");
            }
        }
        self.after_write(now, out.lines_written > 0);
        self.run_deferred();
        out
    }

    /// Periodic housekeeping; call about once a second with the current time: fsync under
    /// [`FsyncPolicy::Interval`], rotation by age (and by size after an oversize line), retry
    /// of a pending truncation.
    pub fn tick(&mut self, now: Instant) {
        if self.partial.is_none() {
            if self.pending_truncate.is_some() {
                let _ = self.ready(now);
            }
            self.maybe_rotate(now, 1);
        }
        if let FsyncPolicy::Interval(every) = self.cfg.fsync {
            if self.dirty && now.saturating_duration_since(self.last_sync) >= every {
                self.sync_data_in_background(now);
            }
        }
    }

    /// Flushes the live file to stable storage now (`fsync`); use at shutdown.
    pub fn sync(&mut self) -> Result<(), ArchiveError> {
        if let Some(f) = &self.file {
            f.sync_all().map_err(io_err("fsync", &self.live_path))?;
        }
        self.dirty = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Closes and reopens the live file by path (creating it 0600): for SIGHUP after an
    /// external logrotate moved the file. If a streamed line is in progress, this happens when
    /// it finishes. On error there is no live file until a later append manages to create it
    /// (those appends are counted as dropped meanwhile).
    pub fn reopen(&mut self) -> Result<(), ArchiveError> {
        if self.partial.is_some() {
            self.deferred_reopen = true;
            return Ok(());
        }
        self.reopen_now()
    }

    /// Rotates the live file now if it is not empty (deferred to the end of a streamed line).
    /// Returns whether a segment was produced.
    pub fn rotate_now(&mut self) -> bool {
        if self.partial.is_some() {
            self.deferred_rotate = true;
            return false;
        }
        let now = Instant::now();
        if self.size == 0 || self.ready(now).is_err() {
            return false;
        }
        self.rotate(now)
    }

    /// Blocks until the background thread has compressed, recorded and applied retention to
    /// every segment rotated so far.
    pub fn wait_idle(&self) {
        if let Some(tx) = &self.tx {
            let (reply, done) = mpsc::channel();
            if tx.send(Job::Barrier(reply)).is_ok() {
                let _ = done.recv();
            }
        }
    }

    /// Counters since `open`.
    pub fn stats(&self) -> ArchiveStats {
        let mut s = self.stats;
        s.segments_deleted = self.shared.segments_deleted.load(Ordering::Relaxed);
        s.write_errors += self.shared.write_errors.load(Ordering::Relaxed);
        s
    }

    /// `(seq, digest)` of the last manifest record written (0 and [`ZERO_DIGEST`] when empty).
    /// Ship it off the host to anchor the chain.
    pub fn manifest_head(&self) -> (u64, String) {
        self.shared
            .head
            .lock()
            .map(|h| h.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Path of the live file.
    pub fn live_path(&self) -> &Path {
        &self.live_path
    }

    /// Current size of the live file.
    pub fn live_size(&self) -> u64 {
        self.size
    }

    /// The configuration in use.
    pub fn config(&self) -> &ArchiveConfig {
        &self.cfg
    }

    /// Finishes: drops an unfinished streamed line (counted), fsyncs the live file, waits for
    /// the background thread, and returns the final counters.
    pub fn close(mut self) -> ArchiveStats {
        self.shutdown();
        self.stats()
    }

    // --- internals -----------------------------------------------------------------------

    fn shutdown(&mut self) {
        if self.partial.is_some() {
            let mut out = AppendOutcome::default();
            self.abandon_partial(&mut out);
        }
        if let Some(f) = &self.file {
            if let Err(e) = f.sync_all() {
                self.log_failure("fsync at shutdown failed", &e);
            }
        }
        drop(self.tx.take());
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }

    fn install_live(&mut self, live: LiveOpen, now: Instant) {
        self.stats.torn_tail_repaired_bytes += live.repaired;
        self.size = live.size;
        self.file = Some(live.file);
        self.live_since = (live.size > 0).then_some(now);
        self.dirty = false;
        self.pending_truncate = None;
    }

    /// Makes the live file writable: (re)creates it if missing, applies a pending truncation.
    fn ready(&mut self, now: Instant) -> Result<(), ArchiveError> {
        if self.file.is_none() {
            let live = open_live(&self.live_path)?;
            self.install_live(live, now);
            let _ = self.dir.sync_all();
        }
        if let (Some(off), Some(f)) = (self.pending_truncate, &self.file) {
            f.set_len(off)
                .map_err(io_err("truncate", &self.live_path))?;
            self.pending_truncate = None;
        }
        Ok(())
    }

    fn truncate_to(&mut self, off: u64) {
        self.size = off;
        let ok = self.file.as_ref().is_some_and(|f| f.set_len(off).is_ok());
        if !ok && self.file.is_some() {
            self.pending_truncate = Some(off);
        }
    }

    /// How much of `rest` (complete lines) goes into the live file before the next rotation.
    fn chunk_len(&self, rest: &[u8]) -> usize {
        let Some(limit) = self.cfg.rotate_bytes else {
            return rest.len();
        };
        let room = limit.saturating_sub(self.size);
        if rest.len() as u64 <= room {
            return rest.len();
        }
        match memchr::memrchr(b'\n', &rest[..room as usize]) {
            Some(i) => i + 1,
            None => first_line_len(rest),
        }
    }

    fn maybe_rotate(&mut self, now: Instant, next_len: u64) {
        if self.partial.is_some()
            || self.size == 0
            || self.file.is_none()
            || self.pending_truncate.is_some()
            || self.rotate_retry_at.is_some_and(|t| now < t)
        {
            return;
        }
        let by_size = self
            .cfg
            .rotate_bytes
            .is_some_and(|limit| self.size.saturating_add(next_len) > limit);
        let by_age = match (self.cfg.rotate_age, self.live_since) {
            (Some(age), Some(since)) => now.saturating_duration_since(since) >= age,
            _ => false,
        };
        if by_size || by_age {
            self.rotate(now);
        }
    }

    fn rotate(&mut self, now: Instant) -> bool {
        let Some(file) = &self.file else {
            return false;
        };
        let synced = file.sync_all();
        // Only rename the file we hold: if the path now names another file (moved by an
        // external logrotate), just reopen instead.
        let ours = match (file.metadata(), fs::symlink_metadata(&self.live_path)) {
            (Ok(a), Ok(b)) => same_file(&a, &b),
            _ => false,
        };
        if let Err(e) = synced {
            self.log_failure("fsync before rotation failed", &e);
        }
        self.dirty = false;
        self.last_sync = now;
        if !ours {
            tracing::warn!(
                path = %self.live_path.display(),
                "archive: the live file was moved or replaced externally; reopening instead of rotating"
            );
            if let Err(e) = self.reopen_now() {
                self.log_failure("reopen failed", &e);
            }
            return false;
        }
        let wall = format_utc(SystemTime::now());
        let ts = if wall > self.last_ts {
            wall
        } else {
            self.last_ts.clone()
        };
        let mut seq = self.next_seq;
        let name = loop {
            let name = self.names.segment(&ts, seq);
            let taken = ["", ".gz", ".zst"]
                .iter()
                .any(|ext| fs::symlink_metadata(self.cfg.dir.join(format!("{name}{ext}"))).is_ok());
            if !taken {
                break name;
            }
            seq += 1;
        };
        let target = self.cfg.dir.join(&name);
        if let Err(e) = fs::rename(&self.live_path, &target) {
            self.stats.write_errors += 1;
            if let Some(suppressed) = self.err_log.check(now) {
                tracing::error!(
                    path = %self.live_path.display(),
                    target = %target.display(),
                    error = %e,
                    suppressed,
                    "archive: rotation failed; still writing to the live file, retrying in 1 s"
                );
            }
            self.rotate_retry_at = Some(now + RETRY_BACKOFF);
            return false;
        }
        self.rotate_retry_at = None;
        self.next_seq = seq + 1;
        self.last_ts = ts;
        self.stats.rotations += 1;
        self.file = None;
        self.size = 0;
        self.live_since = None;
        if let Err(e) = self.dir.sync_all() {
            self.log_failure("directory fsync after rotation failed", &e);
        }
        if let Some(tx) = &self.tx {
            let _ = tx.send(Job::Segment(name));
        }
        match open_live(&self.live_path) {
            Ok(live) => {
                self.install_live(live, now);
                let _ = self.dir.sync_all();
            }
            Err(e) => {
                self.log_failure("cannot create a new live file (retried on next append)", &e)
            }
        }
        true
    }

    fn reopen_now(&mut self) -> Result<(), ArchiveError> {
        if let Some(f) = self.file.take() {
            if let Some(off) = self.pending_truncate {
                let _ = f.set_len(off);
            }
            if self.dirty {
                if let Err(e) = f.sync_data() {
                    self.log_failure("fsync before reopen failed", &e);
                }
            }
        }
        self.pending_truncate = None;
        self.size = 0;
        self.live_since = None;
        self.dirty = false;
        let live = open_live(&self.live_path)?;
        self.install_live(live, Instant::now());
        let _ = self.dir.sync_all();
        Ok(())
    }

    fn run_deferred(&mut self) {
        if std::mem::take(&mut self.deferred_reopen) {
            if let Err(e) = self.reopen_now() {
                self.log_failure("reopen failed", &e);
            }
        }
        if std::mem::take(&mut self.deferred_rotate) {
            self.rotate_now();
        }
    }

    fn abandon_partial(&mut self, out: &mut AppendOutcome) {
        if let Some(p) = self.partial.take() {
            if !p.failed {
                self.truncate_to(p.start);
                self.record_drop(out, 1, p.len);
                self.misuse("a streamed line was abandoned before it was finished; it was dropped");
            }
            self.run_deferred();
        }
    }

    fn note_written(&mut self, now: Instant, out: &mut AppendOutcome, lines: u64, bytes: u64) {
        self.stats.lines_written += lines;
        self.stats.bytes_written += bytes;
        out.lines_written += lines;
        out.bytes_written += bytes;
        self.dirty = true;
        self.live_since.get_or_insert(now);
        if self.failing {
            self.failing = false;
            if let Some(suppressed) = self.resume_log.check(now) {
                tracing::warn!(
                    path = %self.live_path.display(),
                    total_dropped_lines = self.stats.dropped_lines,
                    total_dropped_bytes = self.stats.dropped_bytes,
                    suppressed,
                    "archive: writing resumed"
                );
            }
        }
    }

    fn record_drop(&mut self, out: &mut AppendOutcome, lines: u64, bytes: u64) {
        self.stats.dropped_lines += lines;
        self.stats.dropped_bytes += bytes;
        out.dropped_lines += lines;
        out.dropped_bytes += bytes;
    }

    fn log_failure(&mut self, what: &str, err: &dyn fmt::Display) {
        self.stats.write_errors += 1;
        self.failing = true;
        if let Some(suppressed) = self.err_log.check(Instant::now()) {
            tracing::error!(
                path = %self.live_path.display(),
                error = %err,
                total_dropped_lines = self.stats.dropped_lines,
                total_dropped_bytes = self.stats.dropped_bytes,
                suppressed,
                "archive: {what}; affected lines dropped and counted, later writes are retried"
            );
        }
    }

    fn misuse(&mut self, what: &str) {
        if let Some(suppressed) = self.misuse_log.check(Instant::now()) {
            tracing::error!(
                path = %self.live_path.display(),
                total_dropped_lines = self.stats.dropped_lines,
                total_dropped_bytes = self.stats.dropped_bytes,
                suppressed,
                "archive: caller bug: {what}"
            );
        }
    }

    fn after_write(&mut self, now: Instant, wrote: bool) {
        if !wrote {
            return;
        }
        match self.cfg.fsync {
            FsyncPolicy::Never => {}
            FsyncPolicy::Always => self.sync_data(now),
            FsyncPolicy::Interval(every) => {
                if now.saturating_duration_since(self.last_sync) >= every {
                    self.sync_data_in_background(now);
                }
            }
        }
    }

    /// Hands a dup of the live file to the fsync thread; when a sync is
    /// still running the request is merged into it (skipped), and when the
    /// thread is gone the sync runs here.
    fn sync_data_in_background(&mut self, now: Instant) {
        let dup = self.file.as_ref().and_then(|f| f.try_clone().ok());
        match (dup, &self.syncer) {
            (Some(f), Some(tx)) => match tx.try_send(f) {
                Ok(()) => {
                    self.dirty = false;
                    self.last_sync = now;
                }
                // A sync is still running: try again one interval later.
                Err(mpsc::TrySendError::Full(_)) => self.last_sync = now,
                Err(mpsc::TrySendError::Disconnected(_)) => self.sync_data(now),
            },
            _ => self.sync_data(now),
        }
    }

    fn sync_data(&mut self, now: Instant) {
        if let Some(f) = &self.file {
            if let Err(e) = f.sync_data() {
                self.log_failure("fdatasync failed", &e);
            }
        }
        self.dirty = false;
        self.last_sync = now;
    }
}

impl Drop for Archive {
    fn drop(&mut self) {
        self.shutdown();
    }
}

// ---------------------------------------------------------------------------------------------
// Recovery at open
// ---------------------------------------------------------------------------------------------

struct Recovery {
    jobs: Vec<Job>,
    retained: VecDeque<Retained>,
    next_seq: u64,
    last_ts: String,
}

/// Segment files on disk, grouped by sequence number.
fn scan_segments(dir: &Path, names: &Names) -> Result<BTreeMap<u64, Vec<SegName>>, ArchiveError> {
    let mut found: BTreeMap<u64, Vec<SegName>> = BTreeMap::new();
    for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let entry = entry.map_err(io_err("list", dir))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if names.is_temp(&name) && is_file {
            let path = dir.join(&name);
            match fs::remove_file(&path) {
                Ok(()) => {
                    tracing::warn!(path = %path.display(), "archive: removed an unfinished compression file")
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "archive: cannot remove temporary file")
                }
            }
            continue;
        }
        if let Some(seg) = names.parse(&name) {
            if is_file {
                found.entry(seg.seq).or_default().push(seg);
            } else {
                tracing::warn!(path = %dir.join(&name).display(), "archive: segment name is not a regular file; ignored");
            }
        }
    }
    Ok(found)
}

fn recover(
    dir: &Path,
    names: &Names,
    records: &[ManifestRecord],
) -> Result<Recovery, ArchiveError> {
    let on_disk = scan_segments(dir, names)?;
    let mut recorded: HashMap<&str, &ManifestRecord> = HashMap::new();
    let mut deleted: HashSet<&str> = HashSet::new();
    let mut max_recorded = 0;
    let mut last_ts = String::new();
    for r in records {
        if let Some(seg) = names.parse(&r.file) {
            max_recorded = max_recorded.max(seg.seq);
            last_ts = last_ts.max(seg.ts);
        }
        match r.event.as_str() {
            "segment" => {
                recorded.insert(&r.file, r);
            }
            "deleted" => {
                deleted.insert(&r.file);
            }
            _ => {}
        }
    }
    let file_name = |s: &SegName| format!("{}{}", s.plain, s.compression.extension());
    let mut jobs = Vec::new();
    let mut removed_any = false;
    let mut remove = |path: PathBuf, why: &str| match fs::remove_file(&path) {
        Ok(()) => {
            tracing::warn!(path = %path.display(), "archive: {why}");
            removed_any = true;
        }
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "archive: cannot remove file"),
    };
    for (seq, group) in &on_disk {
        let known = |s: &SegName| {
            let n = file_name(s);
            recorded.contains_key(n.as_str()) || deleted.contains(n.as_str())
        };
        for s in group {
            let name = file_name(s);
            if deleted.contains(name.as_str()) {
                remove(
                    dir.join(&name),
                    "finished a deletion recorded in the manifest",
                );
            }
        }
        if group.iter().any(known) {
            // A plain leftover next to its recorded compressed form: the crash hit between
            // the rename of the compressed file and the removal of the plain one.
            let compressed_recorded = group
                .iter()
                .any(|s| s.compression != Compression::None && known(s));
            for s in group
                .iter()
                .filter(|s| s.compression == Compression::None && !known(s))
            {
                if compressed_recorded {
                    remove(
                        dir.join(&s.plain),
                        "removed the plain copy of a recorded compressed segment",
                    );
                }
            }
            continue;
        }
        if *seq <= max_recorded {
            for s in group {
                tracing::warn!(
                    path = %dir.join(file_name(s)).display(),
                    "archive: segment not in the manifest and older than its last record; left alone (verify reports it)"
                );
            }
            continue;
        }
        // Renamed before a crash but never recorded: finish it.
        match group.iter().find(|s| s.compression != Compression::None) {
            Some(c) => {
                if group.iter().any(|s| s.compression == Compression::None) {
                    remove(
                        dir.join(&c.plain),
                        "removed the plain copy of a finished compressed segment",
                    );
                }
                jobs.push(Job::Existing(file_name(c)));
            }
            None => jobs.push(Job::Segment(group[0].plain.clone())),
        }
    }
    if removed_any {
        if let Ok(d) = open_dir(dir) {
            let _ = d.sync_all();
        }
    }
    let mut retained: Vec<(u64, Retained)> = Vec::new();
    for r in records.iter().filter(|r| r.event == "segment") {
        if deleted.contains(r.file.as_str()) {
            continue;
        }
        let Some(seg) = names.parse(&r.file) else {
            continue;
        };
        let exists = fs::symlink_metadata(dir.join(&r.file)).is_ok_and(|m| m.is_file());
        if exists && !retained.iter().any(|(_, x)| x.file == r.file) {
            retained.push((
                seg.seq,
                Retained {
                    file: r.file.clone(),
                    bytes: r.bytes.unwrap_or(0),
                    sha256: r.sha256.clone(),
                },
            ));
        }
    }
    retained.sort_by_key(|(seq, _)| *seq);
    let max_disk = on_disk.keys().next_back().copied().unwrap_or(0);
    for group in on_disk.values() {
        for s in group {
            if s.ts > last_ts {
                last_ts = s.ts.clone();
            }
        }
    }
    Ok(Recovery {
        jobs,
        retained: retained.into_iter().map(|(_, r)| r).collect(),
        next_seq: max_recorded.max(max_disk) + 1,
        last_ts,
    })
}

// ---------------------------------------------------------------------------------------------
// Verification
// ---------------------------------------------------------------------------------------------

/// One problem found by [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A recorded segment's content or size differs from the manifest (or it is no longer a
    /// regular file).
    Altered {
        /// Segment file name.
        file: String,
    },
    /// A recorded segment is gone without a deletion record.
    Missing {
        /// Segment file name.
        file: String,
    },
    /// A recorded segment is smaller than recorded.
    Truncated {
        /// Segment file name.
        file: String,
    },
    /// The manifest record with this `seq` (or, for an unreadable line, the `seq` it should
    /// have had) does not chain: edited, inserted, removed before it, or malformed.
    ChainBroken {
        /// Record number.
        seq: u64,
    },
    /// A rotated segment on disk that the manifest does not know.
    Unrecorded {
        /// Segment file name.
        file: String,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Altered { file } => write!(f, "altered: {file} (content or size differs from the manifest)"),
            Problem::Missing { file } => write!(f, "missing: {file} (removed without a deletion record)"),
            Problem::Truncated { file } => write!(f, "truncated: {file} (smaller than recorded)"),
            Problem::ChainBroken { seq } => write!(
                f,
                "manifest chain broken at record {seq} (record edited, removed, inserted or malformed)"
            ),
            Problem::Unrecorded { file } => write!(f, "unrecorded: {file} (rotated segment not in the manifest)"),
        }
    }
}

/// Result of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// The archive directory.
    pub dir: PathBuf,
    /// Number of manifest lines examined.
    pub records: u64,
    /// `(seq, digest)` of the last manifest record, to compare with an off-host copy.
    pub head: Option<(u64, String)>,
    /// Recorded segments present with the recorded size and SHA-256.
    pub segments_ok: Vec<String>,
    /// Segments deleted by retention (recorded as deleted): fine.
    pub retained_deleted: Vec<String>,
    /// Name of the live file (not covered by the manifest while it grows).
    pub live_file: String,
    /// Its size, if it exists.
    pub live_bytes: Option<u64>,
    /// Files in the directory that are neither segments, the live file nor the manifest
    /// (for information; for example files moved by an external logrotate).
    pub other_files: Vec<String>,
    /// Everything wrong, one entry per problem.
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// True when no problem was found.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "archive {}", self.dir.display())?;
        match &self.head {
            Some((seq, digest)) => writeln!(
                f,
                "  manifest: {} records, head seq {seq} digest {digest}",
                self.records
            )?,
            None => writeln!(f, "  manifest: empty")?,
        }
        writeln!(f, "  segments verified: {}", self.segments_ok.len())?;
        writeln!(
            f,
            "  segments deleted by retention: {}",
            self.retained_deleted.len()
        )?;
        match self.live_bytes {
            Some(n) => writeln!(
                f,
                "  live file {}: {n} bytes (covered once rotated)",
                self.live_file
            )?,
            None => writeln!(f, "  live file {}: absent", self.live_file)?,
        }
        if !self.other_files.is_empty() {
            writeln!(
                f,
                "  other files (not covered): {}",
                self.other_files.join(", ")
            )?;
        }
        if self.ok() {
            write!(f, "  result: OK")
        } else {
            writeln!(f, "  problems ({}):", self.problems.len())?;
            for p in &self.problems {
                writeln!(f, "    {p}")?;
            }
            write!(f, "  result: FAILED")
        }
    }
}

/// Verifies the archive in `dir` whose live file has the default name `audit.log`.
/// See [`verify_with_file_name`].
pub fn verify(dir: &Path) -> Result<VerifyReport, ArchiveError> {
    verify_with_file_name(dir, DEFAULT_FILE_NAME)
}

/// Verifies an archive read-only: the manifest's hash chain (every record's `seq`, `prev`,
/// `digest` and canonical form), that every recorded and not deleted segment exists with the
/// recorded size and SHA-256, and that no segment on disk is missing from the manifest. Each
/// problem is reported separately in [`VerifyReport::problems`]. Errors only when the directory
/// or manifest cannot be read at all (or is a symlink).
pub fn verify_with_file_name(dir: &Path, file_name: &str) -> Result<VerifyReport, ArchiveError> {
    validate_file_name(file_name)?;
    let names = Names::new(file_name);
    match fs::symlink_metadata(dir) {
        Ok(md) if md.file_type().is_symlink() => {
            return Err(ArchiveError::Symlink {
                path: dir.to_owned(),
            })
        }
        Ok(md) if !md.is_dir() => {
            return Err(ArchiveError::NotADirectory {
                path: dir.to_owned(),
            })
        }
        Ok(_) => {}
        Err(e) => return Err(io_err("stat", dir)(e)),
    }
    let mut report = VerifyReport {
        dir: dir.to_owned(),
        records: 0,
        head: None,
        segments_ok: Vec::new(),
        retained_deleted: Vec::new(),
        live_file: file_name.to_owned(),
        live_bytes: None,
        other_files: Vec::new(),
        problems: Vec::new(),
    };

    // 1. The chain.
    let mpath = dir.join(MANIFEST_FILE_NAME);
    let mut data = Vec::new();
    match open_read(&mpath).and_then(|mut f| f.read_to_end(&mut data)) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("read", &mpath)(e)),
    }
    let mut segments: Vec<(String, u64, String)> = Vec::new();
    let mut deleted: Vec<String> = Vec::new();
    let mut prev: Option<String> = Some(ZERO_DIGEST.to_owned());
    let mut expected_seq = 1u64;
    for raw in data.split_inclusive(|b| *b == b'\n') {
        report.records += 1;
        let complete = raw.ends_with(b"\n");
        let line = raw.strip_suffix(b"\n").unwrap_or(raw);
        let rec = match serde_json::from_slice::<ManifestRecord>(line) {
            Ok(r) if r.well_formed() => r,
            _ => {
                report
                    .problems
                    .push(Problem::ChainBroken { seq: expected_seq });
                prev = None;
                expected_seq += 1;
                continue;
            }
        };
        let canonical_line = serde_json::to_vec(&rec).unwrap_or_default();
        let digest = rec.digest.clone().unwrap_or_default();
        let broken = !complete
            || rec.seq != expected_seq
            || prev.as_deref().is_some_and(|p| p != rec.prev)
            || rec.expected_digest() != digest
            || canonical_line != line;
        if broken {
            report.problems.push(Problem::ChainBroken { seq: rec.seq });
        }
        prev = Some(digest.clone());
        expected_seq = rec.seq.wrapping_add(1);
        report.head = Some((rec.seq, digest));
        match rec.event.as_str() {
            "segment" => segments.push((rec.file, rec.bytes.unwrap_or(0), rec.sha256)),
            _ => deleted.push(rec.file),
        }
    }

    // 2. Recorded segments against the files.
    let deleted_set: HashSet<&str> = deleted.iter().map(String::as_str).collect();
    let mut seen = HashSet::new();
    for (file, bytes, sha256) in &segments {
        if deleted_set.contains(file.as_str()) || !seen.insert(file.as_str()) {
            continue;
        }
        let path = dir.join(file);
        let md = match fs::symlink_metadata(&path) {
            Ok(md) => md,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                report
                    .problems
                    .push(Problem::Missing { file: file.clone() });
                continue;
            }
            Err(e) => return Err(io_err("stat", &path)(e)),
        };
        let problem = if !md.is_file() {
            Some(Problem::Altered { file: file.clone() })
        } else if md.len() < *bytes {
            Some(Problem::Truncated { file: file.clone() })
        } else if md.len() > *bytes {
            Some(Problem::Altered { file: file.clone() })
        } else {
            match hash_file(&path) {
                Ok((n, _, h)) if n == *bytes && h == *sha256 => None,
                Ok(_) => Some(Problem::Altered { file: file.clone() }),
                Err(e) => return Err(io_err("read", &path)(e)),
            }
        };
        match problem {
            Some(p) => report.problems.push(p),
            None => report.segments_ok.push(file.clone()),
        }
    }
    let mut retained_deleted: Vec<String> = deleted.clone();
    retained_deleted.sort();
    retained_deleted.dedup();
    report.retained_deleted = retained_deleted;

    // 3. Files on disk the manifest does not know.
    let known: HashSet<&str> = segments
        .iter()
        .map(|(f, _, _)| f.as_str())
        .chain(deleted.iter().map(String::as_str))
        .collect();
    let mut unrecorded = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let entry = entry.map_err(io_err("list", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == MANIFEST_FILE_NAME {
            continue;
        }
        if name == names.live {
            report.live_bytes = fs::symlink_metadata(entry.path()).ok().map(|m| m.len());
        } else if names.parse(&name).is_some() {
            if !known.contains(name.as_str()) {
                unrecorded.push(name);
            }
        } else {
            report.other_files.push(name);
        }
    }
    unrecorded.sort();
    report.other_files.sort();
    report.problems.extend(
        unrecorded
            .into_iter()
            .map(|file| Problem::Unrecorded { file }),
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formatting() {
        let at =
            |secs: u64, ms: u64| format_utc(UNIX_EPOCH + Duration::from_millis(secs * 1000 + ms));
        assert_eq!(at(0, 0), "19700101T000000.000Z");
        assert_eq!(at(951_782_400, 5), "20000229T000000.005Z");
        assert_eq!(at(1_709_251_199, 999), "20240229T235959.999Z");
        assert_eq!(at(4_102_444_800, 0), "21000101T000000.000Z");
        assert_eq!(at(1_776_000_000, 123), "20260412T132000.123Z");
        assert!(valid_ts(&at(1_776_000_000, 123)));
    }

    #[test]
    fn segment_names_round_trip() {
        let n = Names::new("audit.log");
        let name = n.segment("20260412T132000.123Z", 42);
        assert_eq!(name, "audit-20260412T132000.123Z-00000042.log");
        let p = n.parse(&name).unwrap();
        assert_eq!(
            (p.seq, p.compression, p.plain.as_str()),
            (42, Compression::None, name.as_str())
        );
        let gz = n.parse(&format!("{name}.gz")).unwrap();
        assert_eq!(
            (gz.seq, gz.compression, gz.plain),
            (42, Compression::Gzip, name.clone())
        );
        assert_eq!(
            n.parse(&format!("{name}.zst")).unwrap().compression,
            Compression::Zstd
        );
        assert!(n.parse(&format!("{name}.bz2")).is_none());
        assert!(n.parse("audit.log").is_none());
        assert!(n.parse("audit-20260412T132000.123Z-.log").is_none());
        assert!(n.parse("audit-2026041XT132000.123Z-1.log").is_none());
        assert!(n.parse("other-20260412T132000.123Z-1.log").is_none());
        assert!(n.is_temp(&format!(".{name}.gz.tmp")));
        assert!(!n.is_temp(&format!(".{name}.tmp")));
        let big = n.segment("20260412T132000.123Z", 123_456_789_012);
        assert_eq!(n.parse(&big).unwrap().seq, 123_456_789_012);
        let bare = Names::new("auditlog");
        assert_eq!(
            bare.parse(&bare.segment("20260412T132000.123Z", 1))
                .unwrap()
                .seq,
            1
        );
    }

    #[test]
    fn file_name_validation() {
        for bad in ["", ".hidden", "a/b", "../x", "manifest.jsonl", "a b"] {
            assert!(validate_file_name(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["audit.log", "vault_audit.json", "x"] {
            assert!(validate_file_name(good).is_ok(), "{good:?} refused");
        }
    }

    /// The example in the module docs is exactly what the implementation computes.
    #[test]
    fn documented_digest_example() {
        let sha = hex::encode(Sha256::digest(b"{}\n"));
        assert_eq!(
            sha,
            "ca3d163bab055381827226140568f3bef7eaac187cebd76878e0b63e9e442356"
        );
        let mut rec = ManifestRecord {
            seq: 1,
            event: "segment".into(),
            file: "audit-20260101T000000.000Z-00000001.log".into(),
            bytes: Some(3),
            lines: Some(1),
            sha256: sha,
            prev: ZERO_DIGEST.into(),
            digest: None,
        };
        let c = rec.canonical();
        assert_eq!(
            c,
            r#"{"seq":1,"event":"segment","file":"audit-20260101T000000.000Z-00000001.log","bytes":3,"lines":1,"sha256":"ca3d163bab055381827226140568f3bef7eaac187cebd76878e0b63e9e442356","prev":"0000000000000000000000000000000000000000000000000000000000000000"}"#
        );
        let d = rec.expected_digest();
        assert_eq!(
            d,
            "f53021f85ea6a0a790d96844ff6951bbc9fa075f7cf8f7d26653df30613a79fd"
        );
        rec.digest = Some(d.clone());
        let line = serde_json::to_string(&rec).unwrap();
        assert_eq!(
            line,
            format!(
                "{}{}",
                &c[..c.len() - 1],
                format_args!(",\"digest\":\"{d}\"}}")
            )
        );
        assert!(rec.well_formed());
        let del = ManifestRecord {
            seq: 2,
            event: "deleted".into(),
            bytes: None,
            lines: None,
            prev: d,
            digest: None,
            ..rec
        };
        assert!(del
            .canonical()
            .starts_with(r#"{"seq":2,"event":"deleted","file":"#));
        assert!(!del.canonical().contains("bytes"));
    }

    #[test]
    fn rate_limiter_suppresses_and_counts() {
        let mut rl = RateLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(rl.check(t0), Some(0));
        assert_eq!(rl.check(t0 + Duration::from_secs(1)), None);
        assert_eq!(rl.check(t0 + Duration::from_secs(9)), None);
        assert_eq!(rl.check(t0 + Duration::from_secs(10)), Some(2));
        assert_eq!(rl.check(t0 + Duration::from_secs(11)), None);
    }

    #[test]
    fn chunking_respects_line_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Archive::open(ArchiveConfig {
            rotate_bytes: Some(10),
            ..ArchiveConfig::new(dir.path())
        })
        .unwrap();
        a.size = 4;
        assert_eq!(a.chunk_len(b"aa\nbb\ncc\n"), 6);
        assert_eq!(a.chunk_len(b"a\nb\n"), 4);
        assert_eq!(a.chunk_len(b"aaaaaaaaaaaa\nb\n"), 13);
        a.size = 0;
        assert_eq!(a.chunk_len(b"aaaaa\nbbbbb\n"), 6);
    }

    #[test]
    fn archive_is_send() {
        fn is_send<T: Send>() {}
        is_send::<Archive>();
    }
}
