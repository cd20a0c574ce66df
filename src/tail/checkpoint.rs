//! The tail checkpoint: where each file identity was read up to, persisted
//! atomically once the entries it covers are durable.
//!
//! One checkpoint per followed path, in the state directory:
//! `tail-<first 16 hex digits of SHA-256(absolute path)>.json`, written as
//! `.tail-….json.tmp` → `fsync` → `rename` → `fsync(dir)`, so a crash at any
//! point leaves the old or the new version, never a torn one. A lock file
//! beside it (`tail-….lock`, `flock`) keeps two `auditwatch tail` processes
//! from sharing one state.
//!
//! ```json
//! {"body":{"format":"auditwatch-tail-checkpoint","version":1,
//!          "path":"/var/log/vault/audit.log","seen_at_ns":1764114913685331392,
//!          "written_at":"2026-11-25T23:55:14.001Z",
//!          "files":[{"role":"live","name":"/var/log/vault/audit.log","dev":2049,
//!                    "ino":1234,"head_len":4096,"head_sha256":"…64 hex…",
//!                    "offset":512345,"lines":348}]},
//!  "sha256":"…SHA-256 of the body serialised as compact JSON…"}
//! ```
//!
//! `offset` is always at a line boundary and `lines` is the number of lines
//! before it (line numbers in findings continue from it). `role` is `live`,
//! `draining` or `finished`; a finished file also records `end`, the bytes
//! it had when closed (it is read again only if it grows past them), and a
//! compressed rotated file `"compressed":true` (offsets in its decompressed
//! stream). `seen_at_ns` is
//! the wall-clock time at which the tailer last saw its live file at `path`:
//! rotated files it never saw and that changed after it are read whole at
//! restart. A file that does not parse, fails its checksum or breaks an
//! invariant is *corrupt*: it is moved aside to `….json.corrupt-<unix ns>`,
//! the tailer falls back to re-reading the current file from its head
//! (duplicates, never loss) and raises an `auditwatch.checkpoint_corrupt`
//! finding.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ident::{FileKey, Head};
use crate::finding::{finding_id, Actor, Finding, Severity, SourceKind, SourceRef};

/// The `format` value of a checkpoint body.
pub const FORMAT: &str = "auditwatch-tail-checkpoint";
/// The checkpoint format version.
pub const VERSION: u32 = 1;
/// Rule id of the finding raised for a corrupt checkpoint.
pub const CORRUPT_RULE: &str = "auditwatch.checkpoint_corrupt";
/// Largest checkpoint file read (a real one is a few KiB).
const MAX_CHECKPOINT_BYTES: u64 = 16 << 20;

/// What a file is to the tailer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileRole {
    /// The file at the followed path.
    Live,
    /// Rotated away, deleted or found among the rotated siblings: read to
    /// its end, then finished.
    Draining,
    /// Read to its end and closed; kept so a rotated copy is recognised.
    Finished,
}

/// One file identity and how far it was read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileState {
    pub role: FileRole,
    /// Where it was read from (the followed path, or a rotated sibling).
    pub name: String,
    pub dev: u64,
    pub ino: u64,
    pub head_len: u32,
    pub head_sha256: String,
    /// Byte offset just after the last complete line handed on.
    pub offset: u64,
    /// Lines before `offset`.
    pub lines: u64,
    /// For a finished file: the bytes it had when closed (beyond `offset`:
    /// a last line that never got its newline). It is read again only if it
    /// grows past this.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub end: u64,
    /// Whether the file is a compressed rotated file (offsets are in its
    /// decompressed stream).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub compressed: bool,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl FileState {
    pub fn key(&self) -> FileKey {
        FileKey {
            dev: self.dev,
            ino: self.ino,
        }
    }

    /// Whether a line was read from it.
    pub fn committed_something(&self) -> bool {
        self.offset > 0
    }

    /// The fingerprint (validated at load).
    pub fn head(&self) -> Head {
        Head::from_parts(self.head_len, &self.head_sha256).unwrap_or_else(Head::empty)
    }
}

/// The checkpoint's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Body {
    pub format: String,
    pub version: u32,
    /// The followed path, absolute.
    pub path: String,
    /// When the live file was last seen at `path` (Unix ns).
    pub seen_at_ns: u64,
    pub written_at: String,
    pub files: Vec<FileState>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    body: Body,
    sha256: String,
}

/// What loading found.
#[derive(Debug)]
pub enum Loaded {
    /// No checkpoint: a first start (`--from` applies).
    Missing,
    Valid(Body),
    /// Unusable; moved aside to `moved_to` (when that worked).
    Corrupt {
        reason: String,
        digest: String,
        moved_to: Option<PathBuf>,
    },
}

/// The state directory's checkpoint for one followed path (holds its lock).
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    file: PathBuf,
    tmp: PathBuf,
    path_abs: String,
    dir_fd: File,
    _lock: File,
}

/// Creates `dir` (and missing parents) with mode 0700; refuses a symlink or
/// a non-directory.
pub fn prepare_dir(dir: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(io::Error::other(format!(
                "{} is a symbolic link: refusing to keep tail state there",
                dir.display()
            )))
        }
        Ok(m) if !m.is_dir() => {
            return Err(io::Error::other(format!(
                "{} is not a directory",
                dir.display()
            )))
        }
        Ok(m) => {
            if m.permissions().mode() & 0o077 != 0 {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
            }
            return Ok(());
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

impl Store {
    /// Opens the state for `path_abs` in `dir`, taking its lock.
    pub fn open(dir: &Path, path_abs: &str) -> io::Result<Store> {
        prepare_dir(dir)?;
        let stem = format!(
            "tail-{}",
            &hex::encode(Sha256::digest(path_abs.as_bytes()))[..16]
        );
        let lock_path = dir.join(format!("{stem}.lock"));
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&lock_path)
            .map_err(|e| annotate(e, "cannot open the lock file", &lock_path))?;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(io::Error::other(format!(
                "another auditwatch tail is following {path_abs} with the state in {} ({})",
                dir.display(),
                io::Error::last_os_error()
            )));
        }
        let dir_fd = File::open(dir).map_err(|e| annotate(e, "cannot open", dir))?;
        Ok(Store {
            dir: dir.to_path_buf(),
            file: dir.join(format!("{stem}.json")),
            tmp: dir.join(format!(".{stem}.json.tmp")),
            path_abs: path_abs.to_owned(),
            dir_fd,
            _lock: lock,
        })
    }

    /// The checkpoint file.
    pub fn file(&self) -> &Path {
        &self.file
    }

    pub fn path_abs(&self) -> &str {
        &self.path_abs
    }

    /// Reads the checkpoint. A corrupt one is moved aside. An error means the
    /// file could not be read at all (permissions, a symlink planted there).
    pub fn load(&self) -> io::Result<Loaded> {
        let f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(&self.file);
        let f = match f {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Loaded::Missing),
            Err(e) => return Err(annotate(e, "cannot open the checkpoint", &self.file)),
        };
        let meta = f.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::other(format!(
                "{} is not a regular file",
                self.file.display()
            )));
        }
        let mut bytes = Vec::new();
        f.take(MAX_CHECKPOINT_BYTES).read_to_end(&mut bytes)?;
        match decode(&bytes, &self.path_abs) {
            Ok(body) => Ok(Loaded::Valid(body)),
            Err(reason) => {
                let digest = hex::encode(Sha256::digest(&bytes));
                let aside = self.dir.join(format!(
                    "{}.corrupt-{}",
                    self.file
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    unix_ns(SystemTime::now())
                ));
                let moved_to = match std::fs::rename(&self.file, &aside) {
                    Ok(()) => {
                        let _ = self.dir_fd.sync_all();
                        Some(aside)
                    }
                    Err(e) => {
                        tracing::error!(
                            "cannot move the corrupt checkpoint {} aside: {e}",
                            self.file.display()
                        );
                        None
                    }
                };
                Ok(Loaded::Corrupt {
                    reason,
                    digest,
                    moved_to,
                })
            }
        }
    }

    /// Writes `body` atomically: temporary file, fsync, rename, fsync of the
    /// directory.
    pub fn save(&self, body: &Body) -> io::Result<()> {
        let bytes = encode(body);
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&self.tmp)
            .map_err(|e| annotate(e, "cannot create", &self.tmp))?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&self.tmp, &self.file)?;
        self.dir_fd.sync_all()
    }
}

fn annotate(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// The bytes of a checkpoint file for `body`.
pub fn encode(body: &Body) -> Vec<u8> {
    let canonical = serde_json::to_string(body).expect("checkpoint body serialises");
    let env = Envelope {
        body: body.clone(),
        sha256: hex::encode(Sha256::digest(canonical.as_bytes())),
    };
    let mut out = serde_json::to_vec(&env).expect("checkpoint serialises");
    out.push(b'\n');
    out
}

/// Parses and checks a checkpoint file; `Err` says why it is unusable.
pub fn decode(bytes: &[u8], path_abs: &str) -> Result<Body, String> {
    let env: Envelope =
        serde_json::from_slice(bytes).map_err(|e| format!("does not parse: {e}"))?;
    let canonical = serde_json::to_string(&env.body).map_err(|e| e.to_string())?;
    if hex::encode(Sha256::digest(canonical.as_bytes())) != env.sha256 {
        return Err("checksum mismatch".into());
    }
    let b = env.body;
    if b.format != FORMAT || b.version != VERSION {
        return Err(format!(
            "unknown format {:?} version {}",
            b.format, b.version
        ));
    }
    if b.path != path_abs {
        return Err(format!("belongs to another path ({:?})", b.path));
    }
    if b.files.iter().filter(|f| f.role == FileRole::Live).count() > 1 {
        return Err("more than one live file".into());
    }
    for f in &b.files {
        if Head::from_parts(f.head_len, &f.head_sha256).is_none() {
            return Err(format!("bad fingerprint for {:?}", f.name));
        }
        if f.lines > f.offset {
            return Err(format!("more lines than bytes for {:?}", f.name));
        }
    }
    Ok(b)
}

/// Unix time in nanoseconds (0 before 1970).
pub fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos().min(u64::MAX as u128) as u64)
        .unwrap_or(0)
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC).
pub fn format_utc(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, m, day) = crate::archive::civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// The finding raised when a checkpoint was corrupt: critical, category
/// `integrity`, located at the checkpoint file.
pub fn corrupt_finding(
    checkpoint: &Path,
    followed: &str,
    reason: &str,
    digest: &str,
    moved_to: Option<&Path>,
) -> Finding {
    let mut detail = serde_json::Map::new();
    detail.insert("error".into(), reason.into());
    detail.insert("followed_path".into(), followed.into());
    detail.insert(
        "moved_to".into(),
        moved_to.map(|p| p.display().to_string()).into(),
    );
    detail.insert("checkpoint_sha256".into(), digest.into());
    detail.insert(
        "fallback".into(),
        "re-reading the current file from its first byte: entries may be reported twice, none is skipped"
            .into(),
    );
    Finding {
        id: finding_id(
            CORRUPT_RULE,
            format!("{}\0{digest}", checkpoint.display()).as_bytes(),
        ),
        rule: CORRUPT_RULE.into(),
        category: "integrity".into(),
        severity: Severity::Critical,
        title: "Tail checkpoint corrupt: resuming from a safe default (re-read)".into(),
        time: Some(format_utc(SystemTime::now())),
        entry_type: None,
        request_id: None,
        operation: None,
        path: None,
        namespace: String::new(),
        actor: Actor::default(),
        source: SourceRef {
            kind: SourceKind::File,
            name: checkpoint.display().to_string(),
            line: 0,
            offset: 0,
        },
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> Body {
        Body {
            format: FORMAT.into(),
            version: VERSION,
            path: "/x/audit.log".into(),
            seen_at_ns: 5,
            written_at: "2026-11-25T23:55:14.001Z".into(),
            files: vec![FileState {
                role: FileRole::Live,
                name: "/x/audit.log".into(),
                dev: 1,
                ino: 2,
                head_len: 3,
                head_sha256: Head::of(b"abc").hash_hex(),
                offset: 10,
                lines: 2,
                end: 0,
                compressed: false,
            }],
        }
    }

    #[test]
    fn round_trip_and_corruption() {
        let b = body();
        let bytes = encode(&b);
        assert_eq!(decode(&bytes, "/x/audit.log").unwrap(), b);
        assert!(decode(&bytes, "/y").is_err());
        // Any flipped byte is caught (parse error, checksum or invariant).
        for i in 0..bytes.len() - 1 {
            let mut c = bytes.clone();
            c[i] ^= 0x01;
            assert!(
                decode(&c, "/x/audit.log").is_err(),
                "flip at {i} undetected"
            );
        }
        assert!(decode(&bytes[..bytes.len() / 2], "/x/audit.log").is_err());
        assert!(decode(b"", "/x/audit.log").is_err());
    }

    #[test]
    fn save_load_and_move_corrupt_aside() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let store = Store::open(&state, "/x/audit.log").unwrap();
        assert!(matches!(store.load().unwrap(), Loaded::Missing));
        store.save(&body()).unwrap();
        assert!(matches!(store.load().unwrap(), Loaded::Valid(b) if b == body()));
        assert!(
            Store::open(&state, "/x/audit.log").is_err(),
            "the lock is exclusive"
        );
        std::fs::write(store.file(), b"{garbage").unwrap();
        match store.load().unwrap() {
            Loaded::Corrupt { moved_to, .. } => assert!(moved_to.unwrap().exists()),
            other => panic!("{other:?}"),
        }
        assert!(matches!(store.load().unwrap(), Loaded::Missing));
        let mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn utc() {
        let t = UNIX_EPOCH + std::time::Duration::from_millis(1_764_114_913_685);
        assert_eq!(format_utc(t), "2025-11-25T23:55:13.685Z");
    }
}
