//! `auditwatch tail` end to end: the real binary following a real file on
//! the work disk while a Vault-like writer appends and rotates it
//! (reliability.md §2.3 T1–T7, T10 and §2.4 D1–D2, short variants). The
//! payload is real OpenBao entries made unique (see `tail_support`). The
//! fallback archive is the record checked: every entry written must be in
//! it, and duplicates may only come from a kill.
//!
//! The tests run one at a time (they time a live process on 2 cores).

#[path = "tail_support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sequence numbers in the archive (cheap: for waiting).
fn archived(dir: &Path) -> BTreeMap<u64, usize> {
    let mut m = BTreeMap::new();
    for f in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let n = f.file_name().to_string_lossy().into_owned();
        if !(n == "audit.log" || n.starts_with("audit-") && n.ends_with(".log")) {
            continue;
        }
        let bytes = std::fs::read(f.path()).unwrap_or_default();
        for l in bytes.split_inclusive(|b| *b == b'\n') {
            if let Some(s) = seq_of(l) {
                *m.entry(s).or_insert(0) += 1;
            }
        }
    }
    m
}

/// Waits until every seq in `want` is archived.
fn wait_archived(dir: &Path, want: impl IntoIterator<Item = u64> + Clone, limit: Duration) {
    let ok = wait_for(limit, || {
        let got = archived(dir);
        want.clone().into_iter().all(|s| got.contains_key(&s))
    });
    if !ok {
        let got = archived(dir);
        let missing: Vec<u64> = want
            .into_iter()
            .filter(|s| !got.contains_key(s))
            .take(20)
            .collect();
        panic!("not archived within {limit:?}: {missing:?}…");
    }
}

fn findings(base: &Path) -> Vec<Value> {
    std::fs::read_to_string(base.join("findings.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn assert_exactly_once(counts: &BTreeMap<u64, usize>, want: impl IntoIterator<Item = u64>) {
    let mut missing = Vec::new();
    let mut twice = Vec::new();
    for s in want {
        match counts.get(&s) {
            None => missing.push(s),
            Some(1) => {}
            Some(_) => twice.push(s),
        }
    }
    assert!(
        missing.is_empty() && twice.is_empty(),
        "missing {} (first {:?}), duplicated {} (first {:?})",
        missing.len(),
        &missing[..missing.len().min(10)],
        twice.len(),
        &twice[..twice.len().min(10)]
    );
}

/// The checkpointed offset of the live file.
fn live_offset(base: &Path) -> Option<u64> {
    let ck = std::fs::read_dir(base.join("state"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))?;
    let v: Value = serde_json::from_slice(&std::fs::read(ck).ok()?).ok()?;
    v["body"]["files"]
        .as_array()?
        .iter()
        .find(|f| f["role"] == "live")?["offset"]
        .as_u64()
}

fn glob_of(path: &Path) -> String {
    format!("{}.*", path.display())
}

/// T1 (short): a writer appends 1,000 entries/s; a rotator renames and
/// recreates the file every second (`.1` plain, older ones gzipped:
/// `delaycompress`) and tells the writer to reopen 20 ms later (until then
/// it appends to the renamed file, as Vault does until its SIGHUP);
/// auditwatch is killed with SIGKILL 5 times at random moments and
/// restarted at once. Also checks the checkpoint lag at the end.
#[test]
fn kill9_under_rotation_loses_nothing_and_repeats_only_the_checkpoint_window() {
    let _g = serial();
    let seed = Rng::seed();
    eprintln!("seed {seed} (AUDITWATCH_TEST_SEED reproduces the kill times)");
    let mut rng = Rng::new(seed);
    let dir = work_dir();
    let path = dir.path().join("audit.log");
    let arch = dir.path().join("arch");
    let glob = glob_of(&path);
    let args = ["--rotated", glob.as_str()];
    let mut tail = Tail::start(&path, dir.path(), &args);
    let writer = Writer::start(
        &path,
        0,
        1000,
        Duration::from_secs(1),
        Rotation::Rename {
            keep: 10,
            compress: true,
            reopen_after: Duration::from_millis(20),
        },
    );
    // AUDITWATCH_TAIL_KILLS=20 gives the long variant (reliability.md T1).
    let rounds: usize = std::env::var("AUDITWATCH_TAIL_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let mut kills = Vec::new();
    for _ in 0..rounds {
        std::thread::sleep(rng.millis(500, 2500));
        tail.kill9();
        kills.push(Instant::now());
        std::thread::sleep(rng.millis(0, 300));
        tail = Tail::start(&path, dir.path(), &args);
    }
    std::thread::sleep(Duration::from_millis(700));
    let log = writer.stop();
    wait_archived(&arch, 0..log.end(), Duration::from_secs(40));
    // Checkpoint lag: once everything is archived, the checkpoint covers the
    // live file's end within 2 s.
    let size = std::fs::metadata(&path).unwrap().len();
    let lag_ok = wait_for(Duration::from_secs(2), || {
        live_offset(dir.path()) == Some(size)
    });
    assert!(
        lag_ok,
        "checkpoint {:?}, file {size}",
        live_offset(dir.path())
    );
    assert_eq!(tail.term(), 0);
    let counts = archive_counts(&arch);
    let missing: Vec<u64> = (0..log.end()).filter(|s| !counts.contains_key(s)).collect();
    assert!(missing.is_empty(), "lost: {missing:?}");
    // Every duplicate was read after the last checkpoint before a kill: it
    // was written at most one checkpoint interval (1 s) plus the tailer's
    // lag before that kill. 3 s is the window allowed here.
    let window = Duration::from_secs(3);
    let dups: Vec<u64> = counts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(s, _)| *s)
        .collect();
    for s in &dups {
        let t = log.written[(s - log.first) as usize];
        assert!(
            kills
                .iter()
                .any(|k| t <= *k && k.duration_since(t) <= window),
            "entry {s} was repeated but written outside every kill's window"
        );
        assert!(counts[s] <= 1 + kills.len());
    }
    assert!(dups.len() as u64 <= kills.len() as u64 * 3 * 1000);
    eprintln!(
        "T1: {} entries, {} rotations, {} kills, {} entries repeated",
        log.end(),
        log.rotations,
        kills.len(),
        dups.len()
    );
    let st = tail.stats();
    assert!(st["tail"]["checkpoints_written"].as_u64().unwrap() >= 1);
}

/// D1 (short): SIGTERM / restart cycles while the writer appends and
/// rotates (also while auditwatch is down): nothing lost, nothing repeated.
#[test]
fn clean_stop_start_cycles_lose_nothing_and_repeat_nothing() {
    let _g = serial();
    let seed = Rng::seed();
    eprintln!("seed {seed}");
    let mut rng = Rng::new(seed);
    let dir = work_dir();
    let path = dir.path().join("audit.log");
    let arch = dir.path().join("arch");
    let glob = glob_of(&path);
    let args = ["--rotated", glob.as_str()];
    let mut tail = Tail::start(&path, dir.path(), &args);
    let writer = Writer::start(
        &path,
        0,
        1000,
        Duration::from_millis(1500),
        Rotation::Rename {
            keep: 10,
            compress: true,
            reopen_after: Duration::from_millis(5),
        },
    );
    for _ in 0..6 {
        std::thread::sleep(rng.millis(400, 1500));
        assert_eq!(tail.term(), 0);
        assert!(tail.saw("final checkpoint"));
        std::thread::sleep(rng.millis(0, 400));
        tail = Tail::start(&path, dir.path(), &args);
    }
    std::thread::sleep(Duration::from_millis(500));
    let log = writer.stop();
    wait_archived(&arch, 0..log.end(), Duration::from_secs(40));
    assert_eq!(tail.term(), 0);
    assert_exactly_once(&archive_counts(&arch), 0..log.end());
    eprintln!(
        "D1: {} entries, {} rotations, 6 restarts",
        log.end(),
        log.rotations
    );
}

/// T2 (short): copytruncate every second. logrotate itself loses what is
/// written between its copy and its truncate, so loss is measured against
/// the rotated copies and the live file together: nothing of them is lost,
/// nothing is read twice (the copy is drained from where the live file was
/// read up to), and each rotation counts one truncation.
#[test]
fn copytruncate_is_followed_without_loss_or_rereading() {
    let _g = serial();
    let dir = work_dir();
    let path = dir.path().join("audit.log");
    let arch = dir.path().join("arch");
    let glob = glob_of(&path);
    let mut tail = Tail::start(&path, dir.path(), &["--rotated", glob.as_str()]);
    let writer = Writer::start(
        &path,
        0,
        500,
        Duration::from_secs(1),
        Rotation::CopyTruncate { keep: 50 },
    );
    std::thread::sleep(Duration::from_millis(6500));
    let log = writer.stop();
    let union = copies_and_live(&path, 50);
    wait_archived(&arch, union.iter().copied(), Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(tail.term(), 0);
    let counts = archive_counts(&arch);
    assert_exactly_once(&counts, union.iter().copied());
    assert!(counts.values().all(|n| *n == 1), "something was read twice");
    let st = tail.stats();
    assert_eq!(
        st["tail"]["truncations_detected"].as_u64().unwrap(),
        log.rotations as u64,
        "one truncation per rotation"
    );
    eprintln!(
        "T2: {} written, {} in copies ∪ live, {} archived, {} rotations",
        log.end(),
        union.len(),
        counts.len(),
        log.rotations
    );
}

/// T2 with kills: copytruncate every second and 3 SIGKILLs: nothing of the
/// copies and the live file is lost; repeats only within a kill's window.
#[test]
fn copytruncate_with_kills_loses_nothing() {
    let _g = serial();
    let seed = Rng::seed();
    eprintln!("seed {seed}");
    let mut rng = Rng::new(seed);
    let dir = work_dir();
    let path = dir.path().join("audit.log");
    let arch = dir.path().join("arch");
    let glob = glob_of(&path);
    let args = ["--rotated", glob.as_str()];
    let mut tail = Tail::start(&path, dir.path(), &args);
    let writer = Writer::start(
        &path,
        0,
        500,
        Duration::from_secs(1),
        Rotation::CopyTruncate { keep: 50 },
    );
    let mut kills = Vec::new();
    for _ in 0..3 {
        std::thread::sleep(rng.millis(500, 2000));
        tail.kill9();
        kills.push(Instant::now());
        std::thread::sleep(rng.millis(0, 300));
        tail = Tail::start(&path, dir.path(), &args);
    }
    std::thread::sleep(Duration::from_millis(700));
    let log = writer.stop();
    let union = copies_and_live(&path, 50);
    wait_archived(&arch, union.iter().copied(), Duration::from_secs(30));
    assert_eq!(tail.term(), 0);
    let counts = archive_counts(&arch);
    for s in &union {
        assert!(counts.contains_key(s), "lost {s}");
    }
    for (s, n) in &counts {
        if *n > 1 {
            let t = log.written[(s - log.first) as usize];
            assert!(
                kills
                    .iter()
                    .any(|k| t <= *k && k.duration_since(t) <= Duration::from_secs(3)),
                "entry {s} repeated outside every kill's window"
            );
        }
    }
    eprintln!(
        "T2+kills: {} written, {} in copies ∪ live, {} repeated",
        log.end(),
        union.len(),
        counts.values().filter(|n| **n > 1).count()
    );
}

/// Sequence numbers in `path` and `path.1 … path.keep`.
fn copies_and_live(path: &Path, keep: usize) -> std::collections::BTreeSet<u64> {
    let mut union = std::collections::BTreeSet::new();
    for k in 0..=keep {
        let p = if k == 0 {
            path.to_path_buf()
        } else {
            rotated(path, k)
        };
        if let Ok(b) = std::fs::read(&p) {
            union.extend(b.split_inclusive(|c| *c == b'\n').filter_map(seq_of));
        }
    }
    union
}

/// T4: `: > audit.log` and at once more bytes than were read before: the
/// new content is read from byte 0 (its head differs), the old content is
/// not repeated. Then the same while auditwatch is down.
#[test]
fn truncate_in_place_even_when_grown_past_the_old_offset() {
    let _g = serial();
    let dir = work_dir();
    let path = dir.path().join("audit.log");
    let arch = dir.path().join("arch");
    append(&path, 0..50);
    let mut tail = Tail::start(&path, dir.path(), &[]);
    wait_archived(&arch, 0..50, Duration::from_secs(20));
    {
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(0).unwrap();
        let mut f = open_append(&path);
        let mut buf = Vec::new();
        for s in 1000..1080 {
            buf.extend(entry(s));
        }
        f.write_all(&buf).unwrap();
    }
    wait_archived(&arch, 1000..1080, Duration::from_secs(20));
    assert_eq!(tail.term(), 0);
    assert_eq!(tail.stats()["tail"]["truncations_detected"], 1);
    // While down: truncated and regrown past the checkpoint's offset.
    let size = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    append(&path, 2000..2120);
    assert!(std::fs::metadata(&path).unwrap().len() > size);
    let mut tail = Tail::start(&path, dir.path(), &[]);
    wait_archived(&arch, 2000..2120, Duration::from_secs(20));
    assert_eq!(tail.term(), 0);
    let counts = archive_counts(&arch);
    assert_exactly_once(&counts, (0..50).chain(1000..1080).chain(2000..2120));
    assert_eq!(counts.len(), 250);
    // Line numbers restart with the new content.
    let f = findings(dir.path());
    let first_new = f
        .iter()
        .find(|f| {
            f["request_id"]
                .as_str()
                .is_some_and(|r| r.starts_with("seq-00002"))
        })
        .expect("a finding in the regrown file");
    assert!(first_new["source"]["line"].as_u64().unwrap() <= 120);
}

/// T3: while auditwatch is down the file is deleted and recreated until the
/// new file gets the old inode number back (ext4 does that at once), with
/// more bytes than were read: it is read from byte 0 (head mismatch).
#[test]
fn inode_reuse_is_recognised_by_the_head_fingerprint() {
    let _g = serial();
    let dir = work_dir();
    let path = dir.path().join("audit.log");
    let arch = dir.path().join("arch");
    append(&path, 0..40);
    let mut tail = Tail::start(&path, dir.path(), &[]);
    wait_archived(&arch, 0..40, Duration::from_secs(20));
    assert_eq!(tail.term(), 0);
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(&path).unwrap().ino();
    let size = std::fs::metadata(&path).unwrap().len();
    let mut tries = 0u64;
    loop {
        std::fs::remove_file(&path).unwrap();
        tries += 1;
        // Different content each time (first entry differs).
        append(&path, 100_000 + tries..100_001 + tries);
        if std::fs::metadata(&path).unwrap().ino() == ino {
            break;
        }
        assert!(tries < 5000, "the filesystem never reused inode {ino}");
    }
    let first = 100_000 + tries;
    append(&path, 200..300);
    assert!(std::fs::metadata(&path).unwrap().len() > size);
    let mut tail = Tail::start(&path, dir.path(), &[]);
    wait_archived(&arch, 200..300, Duration::from_secs(20));
    assert_eq!(tail.term(), 0);
    let counts = archive_counts(&arch);
    assert_exactly_once(&counts, (0..40).chain([first]).chain(200..300));
    assert_eq!(
        counts.len(),
        141,
        "nothing else (the deleted files were never seen)"
    );
    eprintln!("T3: inode {ino} reused after {tries} tries");
}

/// T5: stopped; the file is rotated three times (`delaycompress`: `.1`
/// plain, older ones compressed, gzip and zstd) with entries written into
/// each; restarted with `--rotated`: the unread tail of the old file is found
/// by its fingerprint inside `.3.zst`, the files never seen are read whole.
#[test]
fn rotated_while_down_drains_plain_and_compressed_siblings() {
    let _g = serial();
    let dir = work_dir();
    let path = dir.path().join("audit.log");
    let arch = dir.path().join("arch");
    let glob = glob_of(&path);
    let args = ["--rotated", glob.as_str()];
    append(&path, 0..30);
    let mut tail = Tail::start(&path, dir.path(), &args);
    wait_archived(&arch, 0..30, Duration::from_secs(20));
    assert_eq!(tail.term(), 0);
    append(&path, 30..40); // unread tail of the checkpointed file
    let compress = |k: usize, zstd: bool| {
        let p = rotated(&path, k);
        let data = std::fs::read(&p).unwrap();
        let out = if zstd {
            std::fs::write(
                format!("{}.zst", p.display()),
                zstd::encode_all(&data[..], 3).unwrap(),
            )
        } else {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(&data).unwrap();
            std::fs::write(format!("{}.gz", p.display()), e.finish().unwrap())
        };
        out.unwrap();
        std::fs::remove_file(p).unwrap();
    };
    // Rotation 1: audit.log → .1 (plain).
    std::fs::rename(&path, rotated(&path, 1)).unwrap();
    append(&path, 100..120);
    // Rotation 2: .1 → .2 → .2.gz; audit.log → .1.
    std::fs::rename(rotated(&path, 1), rotated(&path, 2)).unwrap();
    compress(2, false);
    std::fs::rename(&path, rotated(&path, 1)).unwrap();
    append(&path, 200..220);
    // Rotation 3: .2.gz → .3.gz; .1 → .2 → .2.gz; the first file as .3.zst.
    let gz2 = format!("{}.2.gz", path.display());
    let first = zstd_of_gz(&gz2);
    std::fs::remove_file(&gz2).unwrap();
    std::fs::write(format!("{}.3.zst", path.display()), first).unwrap();
    std::fs::rename(rotated(&path, 1), rotated(&path, 2)).unwrap();
    compress(2, false);
    std::fs::rename(&path, rotated(&path, 1)).unwrap();
    append(&path, 300..320);
    let mut tail = Tail::start(&path, dir.path(), &args);
    let want: Vec<u64> = (0..40)
        .chain(100..120)
        .chain(200..220)
        .chain(300..320)
        .collect();
    wait_archived(&arch, want.clone(), Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(tail.term(), 0);
    let counts = archive_counts(&arch);
    assert_exactly_once(&counts, want.iter().copied());
    assert_eq!(counts.len(), want.len());
    // Entries of a rotated file are located in that file.
    let f = findings(dir.path());
    let in_zst: Vec<&Value> = f
        .iter()
        .filter(|f| f["source"]["name"].as_str().unwrap().ends_with(".3.zst"))
        .collect();
    assert!(
        !in_zst.is_empty(),
        "findings of the unread tail name the .zst file"
    );
    for x in in_zst {
        assert!(
            x["source"]["line"].as_u64().unwrap() > 30,
            "line numbers continue"
        );
    }
}

fn zstd_of_gz(gz: &str) -> Vec<u8> {
    let mut plain = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::MultiGzDecoder::new(std::fs::File::open(gz).unwrap()),
        &mut plain,
    )
    .unwrap();
    zstd::encode_all(&plain[..], 3).unwrap()
}

/// T6: the path is a symlink; it is swapped to a new target while the old
/// one still gets a few entries: the new target is followed, the old one
/// drained.
#[test]
fn symlink_retarget_follows_the_new_target_and_drains_the_old() {
    let _g = serial();
    let dir = work_dir();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let path = dir.path().join("audit.log");
    let arch = dir.path().join("arch");
    let a = data.join("audit-2026.log");
    let b = data.join("audit-2027.log");
    append(&a, 0..20);
    std::os::unix::fs::symlink(&a, &path).unwrap();
    let mut tail = Tail::start(&path, dir.path(), &[]);
    wait_archived(&arch, 0..20, Duration::from_secs(20));
    append(&b, 100..110);
    let tmp = dir.path().join("audit.log.new");
    std::os::unix::fs::symlink(&b, &tmp).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    append(&a, 20..25); // the writer has not reopened yet
    append(&b, 110..130);
    wait_archived(&arch, (0..25).chain(100..130), Duration::from_secs(20));
    assert_eq!(tail.term(), 0);
    let counts = archive_counts(&arch);
    assert_exactly_once(&counts, (0..25).chain(100..130));
    assert_eq!(counts.len(), 55);
    assert!(tail.stats()["tail"]["rotations_detected"].as_u64().unwrap() >= 1);
}

/// T7: half an entry, a pause, the rest: one entry, never before its
/// newline; a kill during the pause resumes from the start of that line;
/// lines of 4,095, 4,096 and 4,097 bytes written in page-sized pieces.
#[test]
fn partial_last_line_waits_for_its_newline() {
    let _g = serial();
    let dir = work_dir();
    let path = dir.path().join("audit.log");
    let arch = dir.path().join("arch");
    append(&path, 0..10);
    let mut tail = Tail::start(&path, dir.path(), &[]);
    wait_archived(&arch, 0..10, Duration::from_secs(20));
    let mut f = open_append(&path);
    let e = entry(10);
    let (head, rest) = e.split_at(e.len() / 2);
    f.write_all(head).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !archived(&arch).contains_key(&10),
        "half an entry was archived"
    );
    f.write_all(rest).unwrap();
    wait_archived(&arch, 10..11, Duration::from_secs(20));

    // A kill during the pause (after a checkpoint covered entries 0..=10).
    std::thread::sleep(Duration::from_millis(1500));
    let e = entry(11);
    let (head, rest) = e.split_at(e.len() / 3);
    f.write_all(head).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    tail.kill9();
    f.write_all(rest).unwrap();
    let mut tail = Tail::start(&path, dir.path(), &[]);
    wait_archived(&arch, 11..12, Duration::from_secs(20));

    // Lines around the page size, each written in 4096-byte pieces.
    for (i, len) in [4095usize, 4096, 4097, 8193].into_iter().enumerate() {
        let e = entry_of_len(20 + i as u64, len);
        for piece in e.chunks(4096) {
            f.write_all(piece).unwrap();
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    wait_archived(&arch, 20..24, Duration::from_secs(20));
    assert_eq!(tail.term(), 0);
    let counts = archive_counts(&arch);
    assert_exactly_once(&counts, (0..12).chain(20..24));
    assert_eq!(tail.stats()["parse_errors"], 0, "no fragment was parsed");
}

/// T10: the file is deleted while a backlog is being read: the open
/// descriptor is drained to its end, then the new file is picked up.
#[test]
fn file_deleted_while_reading_is_drained_then_the_new_one_followed() {
    let _g = serial();
    let dir = work_dir();
    let path = dir.path().join("audit.log");
    let arch = dir.path().join("arch");
    {
        let mut f = open_append(&path);
        let mut buf = Vec::new();
        for s in 0..20_000 {
            buf.extend(entry(s));
        }
        f.write_all(&buf).unwrap();
    }
    let mut tail = Tail::start(&path, dir.path(), &[]);
    std::fs::remove_file(&path).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    append(&path, 50_000..50_010);
    wait_archived(
        &arch,
        (0..20_000).chain(50_000..50_010),
        Duration::from_secs(50),
    );
    assert_eq!(tail.term(), 0);
    assert_exactly_once(&archive_counts(&arch), (0..20_000).chain(50_000..50_010));
}

/// D2: a corrupt checkpoint (garbage, then a torn one) falls back to
/// re-reading the file from byte 0 (duplicates, never loss) and raises one
/// critical `auditwatch.checkpoint_corrupt` finding.
#[test]
fn corrupt_checkpoint_rereads_and_raises_a_critical_finding() {
    let _g = serial();
    let dir = work_dir();
    let path = dir.path().join("audit.log");
    let arch = dir.path().join("arch");
    append(&path, 0..20);
    let mut tail = Tail::start(&path, dir.path(), &[]);
    wait_archived(&arch, 0..20, Duration::from_secs(20));
    assert_eq!(tail.term(), 0);
    let state = dir.path().join("state");
    let ck = std::fs::read_dir(&state)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .unwrap();
    let good = std::fs::read(&ck).unwrap();
    for (round, bad) in [b"\x00garbage{".to_vec(), good[..good.len() / 2].to_vec()]
        .into_iter()
        .enumerate()
    {
        std::fs::write(&ck, bad).unwrap();
        append(&path, 100 + round as u64..101 + round as u64);
        let mut tail = Tail::start(&path, dir.path(), &[]);
        wait_archived(&arch, 100..101 + round as u64, Duration::from_secs(20));
        assert_eq!(tail.term(), 0);
        let st = tail.stats();
        assert_eq!(st["tail"]["checkpoint_corrupt"], 1);
        assert_eq!(st["findings_by_rule"]["auditwatch.checkpoint_corrupt"], 1);
    }
    let counts = archive_counts(&arch);
    assert!(
        (0..20).all(|s| counts[&s] == 3),
        "re-read twice: duplicates, not loss"
    );
    let corrupt: Vec<Value> = findings(dir.path())
        .into_iter()
        .filter(|f| f["rule"] == "auditwatch.checkpoint_corrupt")
        .collect();
    assert_eq!(corrupt.len(), 2);
    assert_eq!(corrupt[0]["severity"], "critical");
    assert_eq!(corrupt[0]["category"], "integrity");
    assert_eq!(corrupt[0]["source"]["kind"], "file");
    let aside = std::fs::read_dir(&state)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
        .count();
    assert_eq!(aside, 2, "corrupt checkpoints are kept for inspection");
}

/// `--from end` starts after the last complete line (a last line still
/// being written is read whole); line numbers count the skipped lines;
/// `--from` is ignored once a checkpoint exists; findings locate entries.
#[test]
fn from_end_and_locations_in_the_file() {
    let _g = serial();
    let dir = work_dir();
    let path = dir.path().join("audit.log");
    append(&path, 0..30);
    let mut f = open_append(&path);
    let e = entry(30);
    f.write_all(&e[..100]).unwrap();
    let mut tail = Tail::start(&path, dir.path(), &["--from", "end"]);
    f.write_all(&e[100..]).unwrap();
    append(&path, 31..60);
    let arch = dir.path().join("arch");
    wait_archived(&arch, 30..60, Duration::from_secs(20));
    assert_eq!(tail.term(), 0);
    append(&path, 60..90);
    let mut tail = Tail::start(&path, dir.path(), &["--from", "beginning"]);
    wait_archived(&arch, 60..90, Duration::from_secs(20));
    assert_eq!(tail.term(), 0);
    let counts = archive_counts(&arch);
    assert_exactly_once(&counts, 30..90);
    assert_eq!(
        counts.len(),
        60,
        "--from end skipped 0..30; --from ignored on resume"
    );
    let file = std::fs::read(&path).unwrap();
    let f = findings(dir.path());
    assert!(f.len() > 10);
    for x in &f {
        let off = x["source"]["offset"].as_u64().unwrap() as usize;
        let line = x["source"]["line"].as_u64().unwrap() as usize;
        assert_eq!(x["source"]["kind"], "file");
        assert_eq!(x["source"]["name"], path.display().to_string());
        assert_eq!(
            memchr::memchr_iter(b'\n', &file[..off]).count() + 1,
            line,
            "line and offset agree"
        );
        let rid = x["request_id"].as_str().unwrap();
        let end = off + memchr::memchr(b'\n', &file[off..]).unwrap();
        assert!(
            memchr::memmem::find(&file[off..end], rid.as_bytes()).is_some(),
            "the offset points at the entry"
        );
    }
}

/// SIGHUP reopens the archive (an external logrotate of the archive).
#[test]
fn sighup_reopens_the_archive() {
    let _g = serial();
    let dir = work_dir();
    let path = dir.path().join("audit.log");
    let arch = dir.path().join("arch");
    append(&path, 0..5);
    let mut tail = Tail::start(&path, dir.path(), &[]);
    wait_archived(&arch, 0..5, Duration::from_secs(20));
    std::fs::rename(arch.join("audit.log"), dir.path().join("old-archive.log")).unwrap();
    tail.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    append(&path, 5..10);
    assert!(wait_for(Duration::from_secs(20), || {
        std::fs::read(arch.join("audit.log"))
            .map(|b| b.split_inclusive(|c| *c == b'\n').count() == 5)
            .unwrap_or(false)
    }));
    assert_eq!(tail.term(), 0);
}

/// A writer that reopens late (a logrotate without its SIGHUP): entries
/// appended to the renamed file after auditwatch closed it (quiet for
/// `rotate-wait`) are read on at the next scan of the rotated siblings.
#[test]
fn late_writes_to_a_closed_rotated_file_are_read_on() {
    let _g = serial();
    let dir = work_dir();
    let path = dir.path().join("audit.log");
    let arch = dir.path().join("arch");
    let glob = glob_of(&path);
    append(&path, 0..10);
    let mut tail = Tail::start(&path, dir.path(), &["--rotated", glob.as_str()]);
    wait_archived(&arch, 0..10, Duration::from_secs(20));
    std::fs::rename(&path, rotated(&path, 1)).unwrap();
    append(&path, 100..105);
    wait_archived(&arch, 100..105, Duration::from_secs(20));
    // rotate-wait is 1 s in these tests: the old file is closed by now.
    std::thread::sleep(Duration::from_millis(2500));
    append(&rotated(&path, 1), 10..15);
    wait_archived(&arch, 10..15, Duration::from_secs(20));
    assert_eq!(tail.term(), 0);
    assert_exactly_once(&archive_counts(&arch), (0..15).chain(100..105));
}
