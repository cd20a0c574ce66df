//! The `file` sink: JSON lines appended to a file (0600 whatever the umask, `O_NOFOLLOW`:
//! a symlink is refused), rotated by size into `PATH.1` … `PATH.<keep>`. A missing directory
//! is created 0700; an existing one is left as it is.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::local::LocalWriter;
use super::spool::{create_dir_private, open_private_append};
use crate::finding::Finding;

/// Default size at which the file rotates.
pub const DEFAULT_FILE_MAX_BYTES: u64 = 64 << 20;
/// Default number of rotated files kept.
pub const DEFAULT_FILE_KEEP: u32 = 5;

/// `type = "file"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub path: PathBuf,
    /// Rotate before a finding would make the file larger than this (default 64 MiB).
    #[serde(default = "default_max_bytes", deserialize_with = "super::de_size")]
    pub max_bytes: u64,
    /// Rotated files kept: `PATH.1` (newest) … `PATH.<keep>`; 0 keeps none (default 5).
    #[serde(default = "default_keep")]
    pub keep: u32,
}

fn default_max_bytes() -> u64 {
    DEFAULT_FILE_MAX_BYTES
}

fn default_keep() -> u32 {
    DEFAULT_FILE_KEEP
}

impl FileConfig {
    pub fn new(path: impl Into<PathBuf>) -> FileConfig {
        FileConfig {
            path: path.into(),
            max_bytes: DEFAULT_FILE_MAX_BYTES,
            keep: DEFAULT_FILE_KEEP,
        }
    }
}

pub(crate) struct FileWriter {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: Option<File>,
    size: u64,
    buf: Vec<u8>,
}

impl FileWriter {
    /// Opens (creating) the file now, so that a bad path fails at start.
    pub fn open(cfg: &FileConfig) -> io::Result<FileWriter> {
        if cfg.keep > 1000 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "keep: at most 1000",
            ));
        }
        if let Some(dir) = cfg.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if fs::symlink_metadata(dir).is_err() {
                create_dir_private(dir)?;
            }
        }
        let mut w = FileWriter {
            path: cfg.path.clone(),
            max_bytes: cfg.max_bytes.max(1),
            keep: cfg.keep,
            file: None,
            size: 0,
            buf: Vec::with_capacity(4096),
        };
        w.reopen()?;
        Ok(w)
    }

    fn reopen(&mut self) -> io::Result<()> {
        let f = open_private_append(&self.path)?;
        self.size = f.metadata()?.len();
        self.file = Some(f);
        Ok(())
    }

    fn rotated(&self, i: u32) -> PathBuf {
        let mut s = self.path.clone().into_os_string();
        s.push(format!(".{i}"));
        PathBuf::from(s)
    }

    fn rotate(&mut self) -> io::Result<()> {
        if let Some(f) = self.file.take() {
            f.sync_data()?;
        }
        if self.keep == 0 {
            remove_if_exists(&self.path)?;
        } else {
            remove_if_exists(&self.rotated(self.keep))?;
            for i in (1..self.keep).rev() {
                rename_if_exists(&self.rotated(i), &self.rotated(i + 1))?;
            }
            rename_if_exists(&self.path, &self.rotated(1))?;
        }
        self.reopen()
    }
}

fn remove_if_exists(p: &Path) -> io::Result<()> {
    match fs::remove_file(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn rename_if_exists(from: &Path, to: &Path) -> io::Result<()> {
    match fs::rename(from, to) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

impl LocalWriter for FileWriter {
    fn write(&mut self, f: &Finding) -> io::Result<()> {
        self.buf.clear();
        serde_json::to_writer(&mut self.buf, f)?;
        self.buf.push(b'\n');
        if self.file.is_none() {
            self.reopen()?;
        }
        let len = self.buf.len() as u64;
        if self.size > 0 && self.size + len > self.max_bytes {
            self.rotate()?;
        }
        let file = self.file.as_mut().expect("opened above");
        if let Err(e) = file.write_all(&self.buf) {
            // No torn line: cut back and reopen on the next attempt.
            let _ = file.set_len(self.size);
            self.file = None;
            return Err(e);
        }
        self.size += len;
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
