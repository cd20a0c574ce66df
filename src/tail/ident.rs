//! File identity: `(device, inode)` plus a fingerprint of the file's head.
//!
//! Neither half is enough alone (reliability facts 4): ext4, xfs and
//! overlayfs hand a freed inode number straight to the next file, so
//! `(dev, inode)` alone mistakes a new file for the old one and skips its
//! first `offset` bytes (vector#18342, fluent-bit#8025); a head checksum alone
//! cannot tell a file from its `copytruncate` copy, nor two files that begin
//! alike (vector#25079).
//!
//! The fingerprint is a *prefix* fingerprint: the length `len` (at most
//! [`HEAD_MAX`]) and the SHA-256 of the file's first `len` bytes. It grows
//! with the file until it covers `HEAD_MAX` bytes. A candidate matches when
//! it holds at least `len` bytes and its first `len` bytes hash the same, so a
//! file still matches its own fingerprint however much it grows, while a
//! truncated file (fewer bytes than `len`) or a rewritten one (different
//! bytes) does not. Vault and OpenBao begin every entry with its
//! nanosecond `time`, so two audit logs never share a head.

use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, MetadataExt};

use sha2::{Digest, Sha256};

/// The fingerprint covers at most this many bytes of the file's head.
pub const HEAD_MAX: usize = 4096;

/// `(st_dev, st_ino)` of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileKey {
    pub dev: u64,
    pub ino: u64,
}

impl FileKey {
    pub fn of(meta: &Metadata) -> FileKey {
        FileKey {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// A prefix fingerprint: `len` bytes of head and their SHA-256.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub len: u32,
    pub hash: [u8; 32],
}

impl Head {
    /// The fingerprint of `bytes` (the first `bytes.len()` bytes of a file).
    pub fn of(bytes: &[u8]) -> Head {
        let bytes = &bytes[..bytes.len().min(HEAD_MAX)];
        Head {
            len: bytes.len() as u32,
            hash: Sha256::digest(bytes).into(),
        }
    }

    /// The fingerprint of an empty head (matches any file).
    pub fn empty() -> Head {
        Head::of(&[])
    }

    /// Whether a file whose first bytes are `head` (as many as it has, up
    /// to [`HEAD_MAX`]) begins with the bytes this fingerprint covers.
    pub fn is_prefix_of(&self, head: &[u8]) -> bool {
        let len = self.len as usize;
        head.len() >= len && <[u8; 32]>::from(Sha256::digest(&head[..len])) == self.hash
    }

    pub fn hash_hex(&self) -> String {
        hex::encode(self.hash)
    }

    pub fn from_parts(len: u32, hash_hex: &str) -> Option<Head> {
        if len as usize > HEAD_MAX {
            return None;
        }
        let v = hex::decode(hash_hex).ok()?;
        Some(Head {
            len,
            hash: v.try_into().ok()?,
        })
    }
}

/// Reads up to `want` bytes from offset 0 of a plain file (`pread`: the
/// file position is untouched).
pub fn read_head_at(file: &File, want: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; want.min(HEAD_MAX)];
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

/// Reads up to [`HEAD_MAX`] bytes from a stream (a decompressed rotated file).
pub fn read_head_stream(r: &mut dyn Read) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; HEAD_MAX];
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_fingerprint_follows_growth_not_rewrites() {
        let h = Head::of(b"{\"time\":\"1\"}\n");
        assert!(h.is_prefix_of(b"{\"time\":\"1\"}\n{\"time\":\"2\"}\n"));
        assert!(!h.is_prefix_of(b"{\"time\":\"1\"}"), "shorter: truncated");
        assert!(!h.is_prefix_of(b"{\"time\":\"3\"}\n{\"time\":\"2\"}\n"));
        assert!(Head::empty().is_prefix_of(b""));
        let big = vec![b'x'; HEAD_MAX * 2];
        assert_eq!(Head::of(&big).len as usize, HEAD_MAX);
        let round = Head::from_parts(h.len, &h.hash_hex()).unwrap();
        assert_eq!(round, h);
        assert!(Head::from_parts(HEAD_MAX as u32 + 1, &h.hash_hex()).is_none());
        assert!(Head::from_parts(3, "zz").is_none());
    }
}
