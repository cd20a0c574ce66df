//! Integration tests for the fallback archive (`src/archive.rs`).
//!
//! Plan items covered (docs/reliability.md): D3 disk full on the fallback path (root only:
//! mounts a tmpfs), D4 rotation and retention with a byte-for-byte read-back, L2 reopen after
//! an external rename, X1 permissions under umask 000 / 077 / 022, X6 symlink refusal.
//!
//! The umask is process-wide and tests run on parallel threads. Only
//! `permissions_hold_under_any_umask` changes it, and every permission assertion in this file
//! holds under any umask by design (the archive `fchmod`s everything it creates), so a test
//! running while the umask is 000 cannot fail because of it.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use auditwatch::archive::*;
use sha2::{Digest, Sha256};

// ------------------------------------------------------------------------------------------
// helpers
// ------------------------------------------------------------------------------------------

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A Vault-like line of exactly `len` bytes (len >= 40) ending in `\n`, with some invalid
/// UTF-8 inside, never another `\n`.
fn line(seq: u64, len: usize, rng: &mut Rng) -> Vec<u8> {
    let mut v = format!("{{\"type\":\"response\",\"request\":{{\"id\":\"seq-{seq}\"}},\"d\":\"")
        .into_bytes();
    while v.len() + 3 < len {
        let r = rng.next();
        v.push(if r.is_multiple_of(61) {
            0xff
        } else {
            (r % 95 + 32) as u8
        });
    }
    v.extend_from_slice(b"\"}\n");
    v
}

fn cfg(dir: &Path) -> ArchiveConfig {
    ArchiveConfig {
        fsync: FsyncPolicy::Never,
        ..ArchiveConfig::new(dir)
    }
}

/// (seq, file name) of every rotated segment in `dir`, by sequence number.
fn segments(dir: &Path) -> Vec<(u64, String)> {
    let mut v: Vec<(u64, String)> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter_map(|n| {
            let rest = n.strip_prefix("audit-")?;
            let (ts, rest) = rest.split_at_checked(20)?;
            assert!(
                ts.ends_with('Z') && ts.as_bytes()[8] == b'T',
                "bad timestamp in {n}"
            );
            let rest = rest.strip_prefix('-')?;
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            let seq = rest[..digits].parse().ok()?;
            assert!(
                [".log", ".log.gz", ".log.zst"].contains(&&rest[digits..]),
                "unexpected file {n}"
            );
            Some((seq, n))
        })
        .collect();
    v.sort();
    v
}

fn read_plain(path: &Path) -> Vec<u8> {
    let f = File::open(path).unwrap();
    let mut out = Vec::new();
    let name = path.to_string_lossy();
    if name.ends_with(".gz") {
        flate2::read::MultiGzDecoder::new(f)
            .read_to_end(&mut out)
            .unwrap();
    } else if name.ends_with(".zst") {
        out = zstd::stream::decode_all(f).unwrap();
    } else {
        let mut f = f;
        f.read_to_end(&mut out).unwrap();
    }
    out
}

/// All segments in order, decompressed, followed by the live file.
fn read_archive(dir: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for (_, name) in segments(dir) {
        let seg = read_plain(&dir.join(&name));
        assert!(seg.ends_with(b"\n"), "{name} does not end in a newline");
        all.extend(seg);
    }
    if let Ok(live) = fs::read(dir.join("audit.log")) {
        all.extend(live);
    }
    all
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

/// The directory is 0700 and every entry a regular 0600 file; nothing for group or other.
fn assert_private(dir: &Path) {
    assert_eq!(mode(dir), 0o700, "{}", dir.display());
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let md = fs::symlink_metadata(e.path()).unwrap();
        assert!(md.is_file(), "{} is not a regular file", e.path().display());
        assert_eq!(md.mode() & 0o7777, 0o600, "{}", e.path().display());
    }
}

fn manifest(dir: &Path) -> Vec<serde_json::Value> {
    fs::read_to_string(dir.join(MANIFEST_FILE_NAME))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn count_nl(b: &[u8]) -> u64 {
    b.iter().filter(|&&c| c == b'\n').count() as u64
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions, cannot fail and touches no memory of ours.
    unsafe { libc::geteuid() == 0 }
}

/// Writes `n` lines of `len` bytes one call each; returns what was written.
fn fill(a: &mut Archive, n: u64, len: usize, rng: &mut Rng) -> Vec<u8> {
    let mut all = Vec::new();
    for i in 0..n {
        let l = line(i, len, rng);
        assert_eq!(a.append_lines(&l).lines_written, 1);
        all.extend(l);
    }
    all
}

// ------------------------------------------------------------------------------------------
// D4: byte-for-byte with rotation and compression
// ------------------------------------------------------------------------------------------

/// `rounds` batches of 1-20 lines plus one `big`-byte line streamed in 64 KiB pieces in the middle.
fn round_trip(compress: Compression, rounds: usize, big: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("archive");
    let limit = 64 * 1024;
    let mut a = Archive::open(ArchiveConfig {
        rotate_bytes: Some(limit),
        compress,
        ..cfg(&dir)
    })
    .unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut expected = Vec::new();
    let mut lines = 0u64;
    let mut seq = 0u64;
    for round in 0..rounds {
        // A batch of 1..20 lines, sizes from a Vault-like mix.
        let mut batch = Vec::new();
        for _ in 0..(rng.next() % 20 + 1) {
            let len = match rng.next() % 100 {
                0..=1 => 27_000,
                2 => 100_000, // larger than the rotation size: gets a segment of its own
                _ => 1_000 + (rng.next() % 1_200) as usize,
            };
            batch.extend(line(seq, len, &mut rng));
            seq += 1;
            lines += 1;
        }
        let out = a.append_lines(&batch);
        assert_eq!(out.bytes_written, batch.len() as u64);
        assert_eq!((out.dropped_lines, out.dropped_bytes), (0, 0));
        expected.extend(batch);
        if round == rounds / 2 {
            let big = line(seq, big, &mut rng);
            seq += 1;
            lines += 1;
            let pieces: Vec<&[u8]> = big.chunks(64 * 1024).collect();
            for (i, p) in pieces.iter().enumerate() {
                let done = i + 1 == pieces.len();
                let out = a.append_partial(p, done);
                assert_eq!(out.dropped_bytes, 0);
                assert_eq!(out.lines_written, u64::from(done));
            }
            expected.extend(big);
        }
    }
    a.wait_idle();
    let stats = a.stats();
    assert_eq!(stats.lines_written, lines);
    assert_eq!(stats.bytes_written, expected.len() as u64);
    assert_eq!(
        (stats.dropped_lines, stats.dropped_bytes, stats.write_errors),
        (0, 0, 0)
    );
    assert!(stats.rotations as usize > rounds / 3, "{stats:?}");
    let stats = a.close();

    let got = read_archive(&dir);
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "archive content differs from the input");

    let segs = segments(&dir);
    assert_eq!(segs.len() as u64, stats.rotations);
    let mut manifest_lines = 0;
    for (i, (_, name)) in segs.iter().enumerate() {
        match compress {
            Compression::None => assert!(name.ends_with(".log")),
            Compression::Gzip => assert!(name.ends_with(".log.gz"), "{name}"),
            Compression::Zstd => assert!(name.ends_with(".log.zst"), "{name}"),
        }
        // Rotation only between lines: a segment over the limit holds exactly one line.
        let plain = read_plain(&dir.join(name));
        if plain.len() as u64 > limit {
            assert_eq!(
                count_nl(&plain),
                1,
                "{name} exceeds the limit with several lines"
            );
        }
        let rec = &manifest(&dir)[i];
        assert_eq!(rec["file"], name.as_str());
        assert_eq!(rec["lines"], count_nl(&plain));
        manifest_lines += count_nl(&plain);
    }
    // Names sort by sequence number.
    let mut sorted: Vec<&String> = segs.iter().map(|(_, n)| n).collect();
    sorted.sort();
    assert!(sorted.iter().zip(&segs).all(|(a, (_, b))| *a == b));
    let live = fs::read(dir.join("audit.log")).unwrap();
    assert_eq!(manifest_lines + count_nl(&live), lines);

    assert_private(&dir);
    let report = verify(&dir).unwrap();
    assert!(report.ok(), "{report}");
    assert_eq!(report.segments_ok.len(), segs.len());
    assert_eq!(report.live_bytes, Some(live.len() as u64));
}

#[test]
fn byte_for_byte_with_rotation_uncompressed() {
    round_trip(Compression::None, 120, 5 * 1024 * 1024);
}

#[test]
fn byte_for_byte_with_rotation_gzip() {
    // Less data: gzip runs at about 1 MB/s in unoptimized test builds.
    round_trip(Compression::Gzip, 60, 1024 * 1024 + 17);
}

#[test]
fn byte_for_byte_with_rotation_zstd() {
    round_trip(Compression::Zstd, 120, 5 * 1024 * 1024);
}

#[test]
fn large_batch_is_split_at_line_boundaries() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = Archive::open(ArchiveConfig {
        rotate_bytes: Some(10_000),
        ..cfg(tmp.path())
    })
    .unwrap();
    let mut rng = Rng(7);
    let batch: Vec<u8> = (0..200).flat_map(|i| line(i, 999, &mut rng)).collect();
    assert_eq!(a.append_lines(&batch).lines_written, 200);
    a.close();
    for (_, name) in segments(tmp.path()) {
        let seg = fs::read(tmp.path().join(&name)).unwrap();
        assert_eq!(
            seg.len(),
            9_990,
            "{name}: 10 lines of 999 bytes fit under 10,000"
        );
    }
    assert_eq!(read_archive(tmp.path()), batch);
}

#[test]
fn streamed_line_is_never_split_by_rotation() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = Archive::open(ArchiveConfig {
        rotate_bytes: Some(1024),
        ..cfg(tmp.path())
    })
    .unwrap();
    let mut rng = Rng(11);
    let mut expected = fill(&mut a, 3, 300, &mut rng);
    let big = line(99, 10_000, &mut rng);
    for (i, p) in big.chunks(100).enumerate() {
        a.append_partial(p, (i + 1) * 100 >= big.len());
        // Requests to rotate or reopen in the middle of the line wait for its end.
        if i == 10 {
            assert!(!a.rotate_now());
            a.reopen().unwrap();
        }
    }
    expected.extend(&big);
    expected.extend(fill(&mut a, 3, 300, &mut rng));
    a.close();
    assert_eq!(read_archive(tmp.path()), expected);
    // The big line is whole inside exactly one segment.
    let holding_big: Vec<_> = segments(tmp.path())
        .into_iter()
        .filter(|(_, n)| {
            let seg = fs::read(tmp.path().join(n)).unwrap();
            seg.split_inclusive(|b| *b == b'\n')
                .any(|l| l == big.as_slice())
        })
        .collect();
    assert_eq!(holding_big.len(), 1);
}

#[test]
fn caller_mistakes_are_dropped_and_counted_never_torn() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = Archive::open(cfg(tmp.path())).unwrap();
    a.append_lines(b"one\n");
    // Bytes after the last newline are not a line.
    let out = a.append_lines(b"two\nfrag");
    assert_eq!(
        (out.lines_written, out.dropped_lines, out.dropped_bytes),
        (1, 1, 4)
    );
    // A streamed line abandoned by append_lines.
    a.append_partial(b"half a ", false);
    a.append_partial(b"line", false);
    let out = a.append_lines(b"three\n");
    assert_eq!(
        (out.lines_written, out.dropped_lines, out.dropped_bytes),
        (1, 1, 11)
    );
    // A streamed line finished without a newline.
    a.append_partial(b"no", false);
    let out = a.append_partial(b" newline", true);
    assert_eq!(
        (out.lines_written, out.dropped_lines, out.dropped_bytes),
        (0, 1, 10)
    );
    // A good streamed line.
    a.append_partial(b"fo", false);
    let out = a.append_partial(b"ur\n", true);
    assert_eq!((out.lines_written, out.bytes_written), (1, 5));
    // Nothing at all.
    assert_eq!(a.append_lines(b""), AppendOutcome::default());
    let s = a.close();
    assert_eq!(
        (s.lines_written, s.dropped_lines, s.dropped_bytes),
        (4, 3, 25)
    );
    assert_eq!(
        fs::read(tmp.path().join("audit.log")).unwrap(),
        b"one\ntwo\nthree\nfour\n"
    );
}

// ------------------------------------------------------------------------------------------
// X1: permissions whatever the umask
// ------------------------------------------------------------------------------------------

struct UmaskGuard(libc::mode_t);

impl Drop for UmaskGuard {
    fn drop(&mut self) {
        // SAFETY: umask only sets the process file-mode creation mask; it cannot fail.
        unsafe { libc::umask(self.0) };
    }
}

#[test]
fn permissions_hold_under_any_umask() {
    // SAFETY: as above; the previous mask is restored by the guard even if an assertion fails.
    let _restore = UmaskGuard(unsafe { libc::umask(0o000) });
    for (i, umask) in [0o000, 0o077, 0o022, 0o777].into_iter().enumerate() {
        // SAFETY: as above.
        unsafe { libc::umask(umask) };
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a").join("archive");
        // A pre-existing torn live file with loose permissions.
        let compress = [Compression::Gzip, Compression::Zstd, Compression::None][i % 3];
        let mut a = Archive::open(ArchiveConfig {
            rotate_bytes: Some(4096),
            keep_files: Some(2),
            compress,
            ..cfg(&dir)
        })
        .unwrap();
        fill(&mut a, 40, 500, &mut Rng(3));
        a.wait_idle();
        assert_private(&dir);
        a.reopen().unwrap();
        a.close();
        assert_private(&dir);
        assert!(verify(&dir).unwrap().ok());

        // An existing directory and files with loose modes are tightened.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(dir.join("audit.log"), fs::Permissions::from_mode(0o644)).unwrap();
        fs::set_permissions(
            dir.join(MANIFEST_FILE_NAME),
            fs::Permissions::from_mode(0o666),
        )
        .unwrap();
        let a = Archive::open(cfg(&dir)).unwrap();
        drop(a);
        assert_private(&dir);
        assert_eq!(
            mode(&tmp.path().join("a")) & 0o077,
            0,
            "parent created 0700 too"
        );
    }
}

// ------------------------------------------------------------------------------------------
// D4: retention
// ------------------------------------------------------------------------------------------

#[test]
fn retention_by_count() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut a = Archive::open(ArchiveConfig {
        rotate_bytes: Some(4000),
        keep_files: Some(3),
        ..cfg(dir)
    })
    .unwrap();
    let all = fill(&mut a, 100, 1000, &mut Rng(5));
    a.wait_idle();
    let s = a.stats();
    assert_eq!(s.rotations, 24);
    assert_eq!(s.segments_deleted, 21);
    a.close();

    let segs = segments(dir);
    assert_eq!(segs.len(), 3);
    assert_eq!(
        segs.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        [22, 23, 24]
    );
    // What is left is exactly the newest part of the input.
    let kept = read_archive(dir);
    assert!(all.ends_with(&kept));
    assert_eq!(kept.len(), 3 * 4000 + 4000);

    let m = manifest(dir);
    let deleted: Vec<_> = m.iter().filter(|r| r["event"] == "deleted").collect();
    assert_eq!(deleted.len(), 21);
    for d in &deleted {
        let seg = m
            .iter()
            .find(|r| r["event"] == "segment" && r["file"] == d["file"])
            .unwrap();
        assert_eq!(d["sha256"], seg["sha256"]);
        assert!(d.get("bytes").is_none() && d.get("lines").is_none());
    }
    let report = verify(dir).unwrap();
    assert!(report.ok(), "{report}");
    assert_eq!(report.retained_deleted.len(), 21);
    assert_eq!(report.segments_ok.len(), 3);
    assert_eq!(report.head.as_ref().unwrap().0, m.len() as u64);
}

#[test]
fn retention_by_bytes_with_compression() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut a = Archive::open(ArchiveConfig {
        rotate_bytes: Some(8000),
        keep_bytes: Some(20_000),
        compress: Compression::Gzip,
        ..cfg(dir)
    })
    .unwrap();
    fill(&mut a, 200, 1000, &mut Rng(9));
    a.wait_idle();
    assert!(a.stats().segments_deleted > 0);
    let head = a.manifest_head();
    a.close();
    let stored: u64 = segments(dir)
        .iter()
        .map(|(_, n)| fs::metadata(dir.join(n)).unwrap().len())
        .sum();
    assert!(stored <= 20_000, "{stored}");
    assert!(stored > 10_000, "kept as much as allowed: {stored}");
    let report = verify(dir).unwrap();
    assert!(report.ok(), "{report}");
    assert_eq!(report.head, Some(head));
    assert_private(dir);
}

#[test]
fn lowered_limits_apply_at_open() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut a = Archive::open(ArchiveConfig {
        rotate_bytes: Some(2000),
        ..cfg(dir)
    })
    .unwrap();
    fill(&mut a, 20, 1000, &mut Rng(1));
    a.close();
    assert_eq!(segments(dir).len(), 9);
    let a = Archive::open(ArchiveConfig {
        keep_files: Some(2),
        ..cfg(dir)
    })
    .unwrap();
    a.wait_idle();
    assert_eq!(a.close().segments_deleted, 7);
    assert_eq!(segments(dir).len(), 2);
    assert!(verify(dir).unwrap().ok());
}

// ------------------------------------------------------------------------------------------
// Tamper evidence: verify
// ------------------------------------------------------------------------------------------

/// An archive with 6 segments (the first 2 deleted by retention) and a live file.
fn tamper_fixture(compress: Compression) -> (tempfile::TempDir, Vec<(u64, String)>) {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = Archive::open(ArchiveConfig {
        rotate_bytes: Some(3000),
        keep_files: Some(4),
        compress,
        ..cfg(tmp.path())
    })
    .unwrap();
    fill(&mut a, 20, 1000, &mut Rng(21));
    a.close();
    let segs = segments(tmp.path());
    assert_eq!(segs.len(), 4);
    let report = verify(tmp.path()).unwrap();
    assert!(report.ok(), "{report}");
    assert_eq!(report.retained_deleted.len(), 2);
    (tmp, segs)
}

fn problems(dir: &Path) -> Vec<Problem> {
    let report = verify(dir).unwrap();
    assert!(!report.ok());
    assert!(report.to_string().contains("FAILED"), "{report}");
    report.problems
}

#[test]
fn verify_detects_an_edited_segment() {
    for compress in [Compression::None, Compression::Gzip] {
        let (tmp, segs) = tamper_fixture(compress);
        let path = tmp.path().join(&segs[1].1);
        let mut bytes = fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x01;
        fs::write(&path, bytes).unwrap();
        assert_eq!(
            problems(tmp.path()),
            [Problem::Altered {
                file: segs[1].1.clone()
            }]
        );
    }
}

#[test]
fn verify_detects_a_deleted_segment() {
    let (tmp, segs) = tamper_fixture(Compression::None);
    fs::remove_file(tmp.path().join(&segs[0].1)).unwrap();
    assert_eq!(
        problems(tmp.path()),
        [Problem::Missing {
            file: segs[0].1.clone()
        }]
    );
}

#[test]
fn verify_detects_a_truncated_segment() {
    let (tmp, segs) = tamper_fixture(Compression::Zstd);
    let f = OpenOptions::new()
        .write(true)
        .open(tmp.path().join(&segs[2].1))
        .unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len - 10).unwrap();
    assert_eq!(
        problems(tmp.path()),
        [Problem::Truncated {
            file: segs[2].1.clone()
        }]
    );
}

#[test]
fn verify_detects_an_appended_segment() {
    let (tmp, segs) = tamper_fixture(Compression::None);
    let mut f = OpenOptions::new()
        .append(true)
        .open(tmp.path().join(&segs[3].1))
        .unwrap();
    f.write_all(b"{\"forged\":true}\n").unwrap();
    assert_eq!(
        problems(tmp.path()),
        [Problem::Altered {
            file: segs[3].1.clone()
        }]
    );
}

#[test]
fn verify_detects_an_edited_manifest_line() {
    let (tmp, _) = tamper_fixture(Compression::None);
    let path = tmp.path().join(MANIFEST_FILE_NAME);
    let text = fs::read_to_string(&path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    // Record 4 claims a different line count (a valid-looking JSON edit).
    let n = lines[3].replace("\"lines\":3", "\"lines\":4");
    assert_ne!(n, lines[3]);
    lines[3] = n;
    fs::write(&path, lines.join("\n") + "\n").unwrap();
    assert_eq!(problems(tmp.path()), [Problem::ChainBroken { seq: 4 }]);

    // Recomputing the edited record's digest moves the break to the next record.
    let mut rec: ManifestRecord = serde_json::from_str(&lines[3]).unwrap();
    rec.digest = Some(rec.expected_digest());
    lines[3] = serde_json::to_string(&rec).unwrap();
    fs::write(&path, lines.join("\n") + "\n").unwrap();
    assert_eq!(problems(tmp.path()), [Problem::ChainBroken { seq: 5 }]);

    // Reformatting a record (same fields) is also a break: lines must be canonical.
    let (tmp, _) = tamper_fixture(Compression::None);
    let path = tmp.path().join(MANIFEST_FILE_NAME);
    let text = fs::read_to_string(&path).unwrap();
    fs::write(&path, text.replacen("\"seq\":2,", "\"seq\": 2,", 1)).unwrap();
    assert_eq!(problems(tmp.path()), [Problem::ChainBroken { seq: 2 }]);
}

#[test]
fn verify_detects_a_removed_manifest_line() {
    let (tmp, _) = tamper_fixture(Compression::None);
    let path = tmp.path().join(MANIFEST_FILE_NAME);
    let text = fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 8); // 6 segments + 2 deletions
                                // Remove record 3 (a segment record in the middle).
    let kept: Vec<&str> = lines
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 2)
        .map(|(_, l)| *l)
        .collect();
    fs::write(&path, kept.join("\n") + "\n").unwrap();
    let p = problems(tmp.path());
    assert!(p.contains(&Problem::ChainBroken { seq: 4 }), "{p:?}");

    // Removing records from the end leaves the chain valid, but the files give it away: the
    // last record deleted segment 2 (now missing without a record), the one before recorded
    // segment 6 (now unrecorded).
    let (tmp, segs) = tamper_fixture(Compression::None);
    let path = tmp.path().join(MANIFEST_FILE_NAME);
    let text = fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let file = |i: usize| {
        let v: serde_json::Value = serde_json::from_str(lines[i]).unwrap();
        (
            v["event"].as_str().unwrap().to_owned(),
            v["file"].as_str().unwrap().to_owned(),
        )
    };
    let (ev7, f7) = file(7);
    let (ev6, f6) = file(6);
    assert_eq!((ev7.as_str(), ev6.as_str()), ("deleted", "segment"));
    fs::write(&path, lines[..7].join("\n") + "\n").unwrap();
    assert_eq!(
        problems(tmp.path()),
        [Problem::Missing { file: f7.clone() }]
    );
    fs::write(&path, lines[..6].join("\n") + "\n").unwrap();
    assert_eq!(
        problems(tmp.path()),
        [
            Problem::Missing { file: f7 },
            Problem::Unrecorded { file: f6.clone() }
        ]
    );
    assert_eq!(segs.last().unwrap().1, f6);
}

#[test]
fn verify_detects_an_unrecorded_segment_and_reports_everything() {
    let (tmp, segs) = tamper_fixture(Compression::None);
    let dir = tmp.path();
    let planted = "audit-20200101T000000.000Z-00000003.log";
    fs::write(dir.join(planted), b"{\"forged\":true}\n").unwrap();
    fs::remove_file(dir.join(&segs[0].1)).unwrap();
    fs::write(dir.join(&segs[1].1), b"x\n").unwrap();
    let path = dir.join(MANIFEST_FILE_NAME);
    let text = fs::read_to_string(&path).unwrap();
    fs::write(&path, text.replacen("\"seq\":1,", "\"seq\":1 ,", 1)).unwrap();
    fs::write(dir.join("notes.txt"), b"not a segment").unwrap();
    let report = verify(dir).unwrap();
    assert_eq!(
        report.problems,
        [
            Problem::ChainBroken { seq: 1 },
            Problem::Missing {
                file: segs[0].1.clone()
            },
            Problem::Truncated {
                file: segs[1].1.clone()
            },
            Problem::Unrecorded {
                file: planted.to_owned()
            },
        ]
    );
    assert_eq!(report.other_files, ["notes.txt"]);
    let text = report.to_string();
    for needle in [
        "missing:",
        "truncated:",
        "unrecorded:",
        "chain broken at record 1",
        "FAILED",
    ] {
        assert!(text.contains(needle), "{text}");
    }
}

/// An independent verifier, written from the module docs only: strip the digest member to get
/// the canonical form, recompute the chain and the file digests with sha2 directly.
#[test]
fn manifest_can_be_checked_independently() {
    let (tmp, _) = tamper_fixture(Compression::Gzip);
    let text = fs::read_to_string(tmp.path().join(MANIFEST_FILE_NAME)).unwrap();
    let mut prev = "0".repeat(64);
    for (i, line) in text.lines().enumerate() {
        let cut = line.rfind(",\"digest\":\"").unwrap();
        let digest = &line[cut + 11..cut + 75];
        assert_eq!(&line[cut + 75..], "\"}");
        let canonical = format!("{}}}", &line[..cut]);
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["seq"], i as u64 + 1);
        assert_eq!(v["prev"], prev.as_str());
        let mut h = Sha256::new();
        h.update(prev.as_bytes());
        h.update(b"\n");
        h.update(canonical.as_bytes());
        assert_eq!(hex::encode(h.finalize()), digest);
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        if v["event"] == "segment" {
            assert!(line.starts_with(&format!(
                "{{\"seq\":{},\"event\":\"segment\",\"file\":",
                i + 1
            )));
            let file = tmp.path().join(v["file"].as_str().unwrap());
            if let Ok(bytes) = fs::read(&file) {
                assert_eq!(hex::encode(Sha256::digest(&bytes)), v["sha256"]);
                assert_eq!(bytes.len() as u64, v["bytes"]);
            }
            assert_eq!(keys.len(), 8);
        } else {
            assert_eq!(v["event"], "deleted");
            assert_eq!(keys.len(), 6);
        }
        prev = digest.to_owned();
    }
}

// ------------------------------------------------------------------------------------------
// Crash safety and recovery
// ------------------------------------------------------------------------------------------

#[test]
fn torn_tail_repaired_on_open() {
    let tmp = tempfile::tempdir().unwrap();
    let live = tmp.path().join("audit.log");
    fs::write(&live, b"line1\nline2\n{\"partial\":").unwrap();
    fs::set_permissions(&live, fs::Permissions::from_mode(0o644)).unwrap();
    let mut a = Archive::open(cfg(tmp.path())).unwrap();
    assert_eq!(a.stats().torn_tail_repaired_bytes, 11);
    assert_eq!(a.live_size(), 12);
    assert_eq!(mode(&live), 0o600);
    a.append_lines(b"line3\n");
    drop(a);
    assert_eq!(fs::read(&live).unwrap(), b"line1\nline2\nline3\n");

    // No newline at all: nothing was ever a complete line.
    fs::write(&live, vec![b'x'; 200_000]).unwrap();
    let a = Archive::open(cfg(tmp.path())).unwrap();
    assert_eq!(a.stats().torn_tail_repaired_bytes, 200_000);
    drop(a);
    assert_eq!(fs::metadata(&live).unwrap().len(), 0);

    // A newline far before the end (more than one read block back).
    let mut content = b"first\n".to_vec();
    content.extend(vec![b'y'; 150_000]);
    fs::write(&live, &content).unwrap();
    let a = Archive::open(cfg(tmp.path())).unwrap();
    assert_eq!(a.stats().torn_tail_repaired_bytes, 150_000);
    drop(a);
    assert_eq!(fs::read(&live).unwrap(), b"first\n");
}

#[test]
fn torn_manifest_record_repaired_and_segment_recorded_again() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut a = Archive::open(ArchiveConfig {
        rotate_bytes: Some(2000),
        ..cfg(dir)
    })
    .unwrap();
    let all = fill(&mut a, 10, 1000, &mut Rng(2));
    a.close();
    // Crash while appending the last record: half of it is on disk.
    let path = dir.join(MANIFEST_FILE_NAME);
    let text = fs::read_to_string(&path).unwrap();
    let cut = text.trim_end().rfind('\n').unwrap() + 1 + 30;
    fs::write(&path, &text[..cut]).unwrap();
    assert!(!verify(dir).unwrap().ok());
    let a = Archive::open(cfg(dir)).unwrap();
    a.wait_idle();
    a.close();
    let report = verify(dir).unwrap();
    assert!(report.ok(), "{report}");
    assert_eq!(read_archive(dir), all);
}

#[test]
fn crash_leftovers_are_finished_at_open() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut a = Archive::open(ArchiveConfig {
        rotate_bytes: Some(2000),
        ..cfg(dir)
    })
    .unwrap();
    let mut all = fill(&mut a, 6, 1000, &mut Rng(4));
    a.close();
    let before = segments(dir);
    assert_eq!(before.len(), 2);
    // Simulate a crash right after rotating: a renamed segment not yet in the manifest, plus
    // an unfinished compression temp file of an older segment.
    let renamed = "audit-20991231T235959.999Z-00000007.log";
    let extra = line(100, 900, &mut Rng(8));
    let mut live = fs::read(dir.join("audit.log")).unwrap();
    live.extend(&extra);
    fs::write(dir.join(renamed), &live).unwrap();
    fs::write(dir.join("audit.log"), b"").unwrap();
    all.extend(&extra);
    let temp = format!(".{}.gz.tmp", before[0].1);
    fs::write(dir.join(&temp), b"half a gzip").unwrap();

    let mut a = Archive::open(ArchiveConfig {
        compress: Compression::Gzip,
        ..cfg(dir)
    })
    .unwrap();
    a.wait_idle();
    assert!(!dir.join(&temp).exists());
    assert!(!dir.join(renamed).exists());
    assert!(dir.join(format!("{renamed}.gz")).exists());
    // The sequence continues after the recovered segment and its timestamp.
    let tail = fill(&mut a, 1, 500, &mut Rng(6));
    assert!(a.rotate_now());
    a.close();
    all.extend(tail);
    let segs = segments(dir);
    assert_eq!(segs.last().unwrap().0, 8);
    assert!(segs
        .last()
        .unwrap()
        .1
        .starts_with("audit-20991231T235959.999Z-00000008"));
    assert_eq!(read_archive(dir), all);
    let report = verify(dir).unwrap();
    assert!(report.ok(), "{report}");
}

#[test]
fn sequence_and_names_increase_across_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut names = Vec::new();
    for round in 0..3 {
        let mut a = Archive::open(cfg(dir)).unwrap();
        assert!(!a.rotate_now(), "empty live file is not rotated");
        for i in 0..2 {
            a.append_lines(format!("round {round} rotation {i}\n").as_bytes());
            assert!(a.rotate_now());
        }
        a.close();
    }
    for (seq, name) in segments(dir) {
        names.push(name.clone());
        assert!(name.contains(&format!("-{seq:08}.log")));
    }
    assert_eq!(
        segments(dir).iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6]
    );
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(sorted, names);
    assert!(verify(dir).unwrap().ok());
}

// ------------------------------------------------------------------------------------------
// X6: path safety
// ------------------------------------------------------------------------------------------

#[test]
fn symlinked_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let real = tmp.path().join("real");
    fs::create_dir(&real).unwrap();
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let err = Archive::open(cfg(&link)).unwrap_err();
    assert!(matches!(err, ArchiveError::Symlink { .. }), "{err}");
    assert!(err.to_string().contains(&*link.to_string_lossy()), "{err}");
    assert!(
        fs::read_dir(&real).unwrap().next().is_none(),
        "nothing written through the link"
    );
    assert!(verify(&link).is_err());
}

#[test]
fn symlinked_or_hard_linked_files_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let secret = tmp.path().join("shadow");
    fs::write(&secret, b"root:x:0:0\n").unwrap();
    for target in ["audit.log", MANIFEST_FILE_NAME] {
        let dir = tmp.path().join(format!("arch-{target}"));
        fs::create_dir(&dir).unwrap();
        let link = dir.join(target);
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        let err = Archive::open(cfg(&dir)).unwrap_err();
        assert!(matches!(err, ArchiveError::Symlink { .. }), "{err}");
        assert!(err.to_string().contains(&*link.to_string_lossy()), "{err}");

        // A dangling symlink is refused too (O_NOFOLLOW|O_CREAT would not create through it).
        fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("nothing-here"), &link).unwrap();
        assert!(matches!(
            Archive::open(cfg(&dir)),
            Err(ArchiveError::Symlink { .. })
        ));
        assert!(!tmp.path().join("nothing-here").exists());

        fs::remove_file(&link).unwrap();
        fs::hard_link(&secret, &link).unwrap();
        let err = Archive::open(cfg(&dir)).unwrap_err();
        assert!(matches!(err, ArchiveError::HardLinked { .. }), "{err}");
    }
    assert_eq!(fs::read(&secret).unwrap(), b"root:x:0:0\n");
    // Not a regular file.
    let dir = tmp.path().join("fifo");
    fs::create_dir(&dir).unwrap();
    fs::create_dir(dir.join("audit.log")).unwrap();
    assert!(matches!(
        Archive::open(cfg(&dir)),
        Err(ArchiveError::NotRegularFile { .. })
    ));
}

#[test]
fn startup_errors_name_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("plain-file");
    fs::write(&file, b"").unwrap();
    let err = Archive::open(cfg(&file)).unwrap_err();
    assert!(matches!(err, ArchiveError::NotADirectory { .. }), "{err}");
    assert!(err.to_string().contains("plain-file"), "{err}");
    let below = file.join("archive");
    let err = Archive::open(cfg(&below)).unwrap_err();
    assert!(err.to_string().contains(&*below.to_string_lossy()), "{err}");
    let err = Archive::open(ArchiveConfig {
        file_name: "../escape.log".into(),
        ..cfg(tmp.path())
    })
    .unwrap_err();
    assert!(matches!(err, ArchiveError::Config(_)), "{err}");
}

// ------------------------------------------------------------------------------------------
// L2: reopen after external logrotate; rotation by age; fsync policies
// ------------------------------------------------------------------------------------------

#[test]
fn reopen_after_external_rename() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut a = Archive::open(cfg(dir)).unwrap();
    a.append_lines(b"before rotate\n");
    // logrotate: rename + create; until SIGHUP the writer keeps the old file.
    fs::rename(dir.join("audit.log"), dir.join("audit.log.1")).unwrap();
    a.append_lines(b"before sighup\n");
    a.reopen().unwrap();
    a.append_lines(b"after sighup\n");
    // Reopening again without a rename keeps appending to the same file.
    a.reopen().unwrap();
    a.append_lines(b"after second sighup\n");
    // A rotation after an external rename does not rename the wrong file.
    fs::rename(dir.join("audit.log"), dir.join("audit.log.2")).unwrap();
    File::create(dir.join("audit.log")).unwrap();
    assert!(!a.rotate_now());
    a.append_lines(b"after external create\n");
    let s = a.close();
    assert_eq!(s.rotations, 0);
    assert_eq!(
        fs::read(dir.join("audit.log.1")).unwrap(),
        b"before rotate\nbefore sighup\n"
    );
    assert_eq!(
        fs::read(dir.join("audit.log.2")).unwrap(),
        b"after sighup\nafter second sighup\n"
    );
    assert_eq!(
        fs::read(dir.join("audit.log")).unwrap(),
        b"after external create\n"
    );
    assert_eq!(mode(&dir.join("audit.log")), 0o600);
    let report = verify(dir).unwrap();
    assert!(report.ok(), "{report}");
    assert_eq!(report.other_files, ["audit.log.1", "audit.log.2"]);
}

#[test]
fn rotation_by_age_in_tick() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut a = Archive::open(ArchiveConfig {
        rotate_age: Some(Duration::from_secs(60)),
        rotate_bytes: None,
        fsync: FsyncPolicy::Interval(Duration::from_millis(10)),
        ..cfg(dir)
    })
    .unwrap();
    let now = Instant::now();
    a.tick(now + Duration::from_secs(3600));
    assert_eq!(a.stats().rotations, 0, "empty file never rotates");
    a.append_lines(b"a\n");
    a.tick(Instant::now());
    assert_eq!(a.stats().rotations, 0);
    a.tick(Instant::now() + Duration::from_secs(61));
    assert_eq!(a.stats().rotations, 1);
    a.append_lines(b"b\n");
    a.tick(Instant::now() + Duration::from_secs(30));
    assert_eq!(a.stats().rotations, 1);
    a.sync().unwrap();
    a.close();
    assert_eq!(read_archive(dir), b"a\nb\n");
}

#[test]
fn fsync_always_keeps_every_line() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = Archive::open(ArchiveConfig {
        fsync: FsyncPolicy::Always,
        rotate_bytes: Some(5000),
        ..ArchiveConfig::new(tmp.path())
    })
    .unwrap();
    let all = fill(&mut a, 30, 700, &mut Rng(12));
    a.append_partial(b"streamed", false);
    a.append_partial(b" line\n", true);
    let s = a.close();
    assert_eq!(
        (s.lines_written, s.write_errors, s.dropped_bytes),
        (31, 0, 0)
    );
    let mut expected = all;
    expected.extend(b"streamed line\n");
    assert_eq!(read_archive(tmp.path()), expected);
}

// ------------------------------------------------------------------------------------------
// D3: disk full (root only: mounts a small tmpfs)
// ------------------------------------------------------------------------------------------

struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

fn mount_tmpfs(at: &Path, size: &str) -> Option<Unmount> {
    fs::create_dir_all(at).unwrap();
    let status = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=0700"),
            "tmpfs",
        ])
        .arg(at)
        .status();
    match status {
        Ok(s) if s.success() => Some(Unmount(at.to_owned())),
        other => {
            eprintln!(
                "skipping disk-full test: cannot mount tmpfs at {}: {other:?}",
                at.display()
            );
            None
        }
    }
}

#[test]
fn disk_full_drops_whole_lines_counts_them_and_resumes() {
    if !is_root() {
        eprintln!("skipping disk-full test: needs root to mount a tmpfs");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    let Some(_unmount) = mount_tmpfs(&mnt, "2m") else {
        return;
    };
    // Something to delete later to free space.
    let filler = mnt.join("filler");
    fs::write(&filler, vec![0u8; 512 * 1024]).unwrap();
    let dir = mnt.join("archive");
    let mut a = Archive::open(ArchiveConfig {
        rotate_bytes: None,
        fsync: FsyncPolicy::Always,
        error_log_interval: Duration::from_secs(60),
        ..ArchiveConfig::new(&dir)
    })
    .unwrap();
    let mut rng = Rng(77);
    let mut written: Vec<u8> = Vec::new();
    let (mut dropped_lines, mut dropped_bytes, mut failures) = (0u64, 0u64, 0);
    let mut seq = 0;
    // About 1.5 MiB is free: fill 1.3 MiB of it.
    while written.len() < 1_300_000 {
        seq += 1;
        let l = line(seq, 10_000, &mut rng);
        assert_eq!(a.append_lines(&l).lines_written, 1);
        written.extend(&l);
    }
    // A streamed 300 kB line: the first pieces fit, a later one fails. The file goes back to
    // the start of the line and all its bytes are counted.
    let big = line(60_000, 300_000, &mut rng);
    let pieces: Vec<&[u8]> = big.chunks(50_000).collect();
    let mut out = AppendOutcome::default();
    let mut pieces_written = 0;
    for (i, p) in pieces.iter().enumerate() {
        let o = a.append_partial(p, i + 1 == pieces.len());
        if o.dropped_bytes == 0 {
            pieces_written += 1;
        }
        out.lines_written += o.lines_written;
        out.dropped_lines += o.dropped_lines;
        out.dropped_bytes += o.dropped_bytes;
    }
    assert!(
        pieces_written >= 2,
        "the first pieces should have been written"
    );
    assert_eq!(
        (out.lines_written, out.dropped_lines, out.dropped_bytes),
        (0, 1, big.len() as u64)
    );
    dropped_lines += 1;
    dropped_bytes += big.len() as u64;
    assert!(
        fs::read(dir.join("audit.log")).unwrap() == written,
        "streamed line not rolled back"
    );
    // Now single lines until 25 have failed, and a batch in the middle.
    while failures < 25 {
        seq += 1;
        assert!(seq < 10_000, "the disk never filled");
        let l = line(seq, 9_000 + (rng.next() % 3_000) as usize, &mut rng);
        let out = a.append_lines(&l);
        if out.lines_written == 1 {
            assert_eq!(out.dropped_bytes, 0);
            written.extend(&l);
        } else {
            assert_eq!((out.dropped_lines, out.dropped_bytes), (1, l.len() as u64));
            dropped_lines += 1;
            dropped_bytes += l.len() as u64;
            failures += 1;
        }
        if failures == 5 {
            // Whatever fits of a batch is kept whole, the rest counted.
            let batch: Vec<u8> = (0..4)
                .flat_map(|i| line(50_000 + i, 700, &mut rng))
                .collect();
            let out = a.append_lines(&batch);
            assert_eq!(out.lines_written + out.dropped_lines, 4);
            assert_eq!(out.bytes_written + out.dropped_bytes, batch.len() as u64);
            written.extend(&batch[..out.bytes_written as usize]);
            dropped_lines += out.dropped_lines;
            dropped_bytes += out.dropped_bytes;
        }
    }
    let s = a.stats();
    assert_eq!(s.dropped_lines, dropped_lines);
    assert_eq!(s.dropped_bytes, dropped_bytes);
    assert!(s.write_errors >= 25, "{s:?}");
    assert_eq!(s.bytes_written, written.len() as u64);
    let live = dir.join("audit.log");
    let on_disk = fs::read(&live).unwrap();
    assert!(on_disk.ends_with(b"\n"), "torn line left on disk");
    assert!(
        on_disk == written,
        "disk content differs from the lines reported written"
    );

    // Space returns: the very next append lands.
    fs::remove_file(&filler).unwrap();
    let l = line(70_000, 10_000, &mut rng);
    assert_eq!(a.append_lines(&l).lines_written, 1);
    written.extend(&l);
    a.append_partial(b"{\"streamed\":", false);
    assert_eq!(a.append_partial(b"true}\n", true).lines_written, 1);
    written.extend(b"{\"streamed\":true}\n");
    let s = a.close();
    assert_eq!(s.dropped_bytes, dropped_bytes);
    assert_eq!(fs::read(&live).unwrap(), written);
    assert_private(&dir);

    // Start-up on a read-only file system fails with the path in the message.
    let ro = Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    if ro {
        let err = Archive::open(ArchiveConfig::new(&dir)).unwrap_err();
        assert!(err.to_string().contains(&*dir.to_string_lossy()), "{err}");
        let other = mnt.join("new-archive");
        let err = Archive::open(ArchiveConfig::new(&other)).unwrap_err();
        assert!(err.to_string().contains(&*other.to_string_lossy()), "{err}");
    }
}

#[test]
fn disk_full_during_rotation_and_compression_loses_nothing() {
    if !is_root() {
        eprintln!("skipping disk-full rotation test: needs root to mount a tmpfs");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    let Some(_unmount) = mount_tmpfs(&mnt, "1m") else {
        return;
    };
    let filler = mnt.join("filler");
    fs::write(&filler, vec![0u8; 256 * 1024]).unwrap();
    let dir = mnt.join("archive");
    let mut a = Archive::open(ArchiveConfig {
        rotate_bytes: Some(64 * 1024),
        compress: Compression::Gzip,
        error_log_interval: Duration::from_secs(60),
        ..cfg(&dir)
    })
    .unwrap();
    // Random bytes compress poorly, so compressed copies need nearly as much space again.
    let mut rng = Rng(31);
    let mut written: Vec<u8> = Vec::new();
    let mut dropped = 0u64;
    for seq in 0..400 {
        let l = line(seq, 4_000, &mut rng);
        let out = a.append_lines(&l);
        if out.lines_written == 1 {
            written.extend(&l);
        }
        dropped += out.dropped_bytes;
    }
    a.wait_idle();
    let s = a.close();
    assert!(dropped > 0, "the disk never filled");
    assert_eq!(s.dropped_bytes, dropped);
    assert!(s.write_errors > 0);
    // Every line reported written is there exactly once, in order, compressed or not.
    assert!(read_archive(&dir) == written);
    // Space returns; the next open records whatever the full disk kept out of the manifest.
    fs::remove_file(&filler).unwrap();
    let a = Archive::open(cfg(&dir)).unwrap();
    a.wait_idle();
    drop(a);
    let report = verify(&dir).unwrap();
    assert!(report.ok(), "{report}");
    assert!(read_archive(&dir) == written);
    assert_private(&dir);
}
