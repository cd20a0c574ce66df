//! `auditwatch listen` with real sockets on 127.0.0.1 (the OpenBao
//! end-to-end run is in listen_e2e.rs).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn scenarios() -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/openbao/scenarios.log"))
        .unwrap()
}

/// A running `auditwatch listen`, stopped with SIGTERM on drop.
struct Listener {
    child: Option<Child>,
    dir: tempfile::TempDir,
    bound: Vec<String>,
}

impl Listener {
    fn start(extra: &[&str]) -> Listener {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_auditwatch"))
            .arg("listen")
            .args(extra)
            .arg("--archive")
            .arg(dir.path().join("arch"))
            .arg("--stats-json")
            .arg(dir.path().join("stats.json"))
            .arg("--output")
            .arg(dir.path().join("findings.json"))
            .env("AUDITWATCH_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut bound = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut line = String::new();
            assert!(Instant::now() < deadline, "listener did not become ready");
            if err.read_line(&mut line).unwrap() == 0 {
                panic!("listener exited before ready: {bound:?}");
            }
            if let Some(b) = line.trim().strip_prefix("auditwatch listen: listening on ") {
                bound.push(b.to_owned());
            }
            if line.contains("auditwatch listen: ready") {
                break;
            }
        }
        // Keep draining stderr (into a file, for failures) so the child never blocks on it.
        let log = dir.path().join("stderr.log");
        std::thread::spawn(move || {
            let mut rest = Vec::new();
            let _ = err.read_to_end(&mut rest);
            let _ = std::fs::write(log, rest);
        });
        Listener {
            child: Some(child),
            dir,
            bound,
        }
    }

    fn addr(&self, kind: &str) -> String {
        self.bound
            .iter()
            .find_map(|b| b.strip_prefix(&format!("{kind} ")))
            .unwrap()
            .to_owned()
    }

    /// SIGTERM, wait, and return (exit code, stats, findings, archive bytes).
    fn stop(&mut self) -> (i32, Value, Vec<Value>, Vec<u8>) {
        let mut child = self.child.take().unwrap();
        unsafe_kill(child.id(), libc::SIGTERM);
        let status = wait_timeout(&mut child, Duration::from_secs(20));
        let stats: Value = serde_json::from_str(
            &std::fs::read_to_string(self.dir.path().join("stats.json")).unwrap(),
        )
        .unwrap();
        let findings = std::fs::read_to_string(self.dir.path().join("findings.json"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let archive = std::fs::read(self.dir.path().join("arch/audit.log")).unwrap_or_default();
        (status, stats, findings, archive)
    }

    fn archive_dir(&self) -> PathBuf {
        self.dir.path().join("arch")
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn unsafe_kill(pid: u32, sig: i32) {
    // SAFETY: kill(2) with a pid we spawned and a valid signal number has no
    // memory-safety preconditions.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

fn wait_timeout(child: &mut Child, limit: Duration) -> i32 {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("auditwatch did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sorted_lines(bytes: &[u8]) -> Vec<&[u8]> {
    let mut v: Vec<&[u8]> = bytes.split_inclusive(|b| *b == b'\n').collect();
    v.sort();
    v
}

fn replay_findings(input: &[u8]) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("in.log");
    std::fs::write(&p, input).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_auditwatch"))
        .args(["replay", "-q"])
        .arg(&p)
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn tcp_entries_are_archived_byte_for_byte_and_judged_like_replay() {
    let mut l = Listener::start(&["--tcp", "127.0.0.1:0"]);
    let data = scenarios();
    let mut s = TcpStream::connect(l.addr("tcp")).unwrap();
    // Odd chunk sizes: entries split across reads.
    for chunk in data.chunks(7777) {
        s.write_all(chunk).unwrap();
    }
    drop(s);
    std::thread::sleep(Duration::from_millis(300));
    let (code, stats, findings, archive) = l.stop();
    assert_eq!(code, 0);
    assert_eq!(archive, data, "the archive is a byte-for-byte copy");
    let expected = replay_findings(&data);
    let ids = |v: &[Value]| {
        v.iter()
            .map(|f| f["id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&findings), ids(&expected));
    assert_eq!(findings[0]["source"]["kind"], "tcp");
    assert!(findings[0]["source"]["name"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert_eq!(
        findings
            .iter()
            .map(|f| f["source"]["line"].clone())
            .collect::<Vec<_>>(),
        expected
            .iter()
            .map(|f| f["source"]["line"].clone())
            .collect::<Vec<_>>(),
        "line = the entry's ordinal on its connection"
    );
    assert_eq!(stats["listener"]["lines_received"], 427);
    assert_eq!(stats["archive"]["lines_written"], 427);
}

#[test]
fn reconnect_fragment_is_counted_and_the_resent_entry_gives_one_finding() {
    let mut l = Listener::start(&["--tcp", "127.0.0.1:0"]);
    let data = scenarios();
    let entry = data
        .split_inclusive(|b| *b == b'\n')
        .find(|e| {
            e.windows(17).any(|w| w == b"\"sys/raw/audit/\",")
                || e.windows(14).any(|w| w == b"sys/raw/audit/")
        })
        .unwrap()
        .to_vec();
    // Like Vault after a write timeout: the old connection ends mid-entry…
    let mut a = TcpStream::connect(l.addr("tcp")).unwrap();
    a.write_all(&entry[..entry.len() / 2]).unwrap();
    a.shutdown(Shutdown::Both).unwrap();
    drop(a);
    std::thread::sleep(Duration::from_millis(200));
    // …and the entry comes whole on a new one; a byte-identical re-send too.
    let mut b = TcpStream::connect(l.addr("tcp")).unwrap();
    b.write_all(&entry).unwrap();
    b.write_all(&entry).unwrap();
    drop(b);
    std::thread::sleep(Duration::from_millis(300));
    let (code, stats, findings, archive) = l.stop();
    assert_eq!(code, 0);
    assert_eq!(stats["listener"]["fragments"], 1);
    assert_eq!(
        stats["listener"]["fragment_bytes"],
        (entry.len() / 2) as u64
    );
    let raw: Vec<&Value> = findings
        .iter()
        .filter(|f| f["rule"] == "privileged.raw_storage")
        .collect();
    assert_eq!(
        raw.len(),
        1,
        "one finding for the entry, however often it came"
    );
    assert_eq!(stats["listener"]["duplicates_dropped"], 1);
    // The archive holds complete lines only: the fragment is not in it.
    assert_eq!(archive, [entry.clone(), entry].concat());
}

#[test]
fn hostile_clients_never_stop_the_good_connection() {
    let mut l = Listener::start(&[
        "--tcp",
        "127.0.0.1:0",
        "--idle-timeout",
        "1s",
        "--max-line-bytes",
        "1MiB",
    ]);
    let addr = l.addr("tcp");
    // Slowloris: connections that trickle bytes and never finish a line.
    let mut slow: Vec<TcpStream> = (0..50)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    for s in &mut slow {
        s.write_all(b"{\"type\":").unwrap();
    }
    // Garbage, a giant line and a flood of short-lived connections.
    let mut garbage = TcpStream::connect(&addr).unwrap();
    garbage
        .write_all(&[0xff, 0x00, 0x7b, 0x0a, 0x13, 0x37, b'\n'])
        .unwrap();
    let giant = std::thread::spawn({
        let addr = addr.clone();
        move || {
            // Built before connecting: a connection silent past the idle
            // timeout would rightly be closed.
            let mut line =
                br#"{"type":"request","request":{"path":"sys/raw/x","data":{"x":""#.to_vec();
            line.resize(line.len() + (64 << 20), b'a');
            line.extend(b"\"}}}\n");
            let mut g = TcpStream::connect(&addr).unwrap();
            g.write_all(&line)
        }
    });
    for _ in 0..300 {
        let _ = TcpStream::connect(&addr);
    }
    // The well-behaved connection.
    let data = scenarios();
    let mut good = TcpStream::connect(&addr).unwrap();
    for chunk in data.chunks(4096) {
        good.write_all(chunk).unwrap();
    }
    let giant_sent = giant.join().unwrap();
    drop(garbage);
    // Past the idle timeout, the slowloris connections are closed by the listener.
    std::thread::sleep(Duration::from_millis(2500));
    let mut closed = 0;
    for s in &mut slow {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut b = [0u8; 1];
        if matches!(s.read(&mut b), Ok(0)) {
            closed += 1;
        }
    }
    assert_eq!(closed, 50, "idle partial-line connections are closed");
    // The good one delivered entries: it is never closed for being quiet.
    good.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut b = [0u8; 1];
    assert!(
        good.read(&mut b).is_err(),
        "the productive connection is still open"
    );
    drop(good);
    std::thread::sleep(Duration::from_millis(300));
    let (code, stats, findings, archive) = l.stop();
    assert_eq!(code, 0);
    let log = std::fs::read_to_string(l.dir.path().join("stderr.log")).unwrap_or_default();
    assert!(giant_sent.is_ok(), "giant line cut: {giant_sent:?}\n{log}");
    let lines = sorted_lines(&archive);
    // Every good entry is there, plus the garbage lines and the giant line.
    for entry in data.split_inclusive(|b| *b == b'\n') {
        assert!(lines.binary_search(&entry).is_ok());
    }
    assert_eq!(lines.len(), 427 + 2 + 1);
    assert!(
        lines.iter().any(|l| l.len() > 64 << 20),
        "the oversize line is archived whole"
    );
    assert_eq!(stats["oversize"], 1);
    assert!(stats["listener"]["connections_timed_out"].as_u64().unwrap() >= 50);
    assert!(stats["invalid_json"].as_u64().unwrap() + stats["invalid_utf8"].as_u64().unwrap() >= 1);
    assert_eq!(findings.len(), replay_findings(&data).len());
}

#[test]
fn connection_limit_evicts_never_productive_connections_first() {
    let mut l = Listener::start(&["--tcp", "127.0.0.1:0", "--max-connections", "3"]);
    let addr = l.addr("tcp");
    let data = scenarios();
    let first = data
        .split_inclusive(|b| *b == b'\n')
        .next()
        .unwrap()
        .to_vec();
    let mut productive = TcpStream::connect(&addr).unwrap();
    productive.write_all(&first).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let idle: Vec<TcpStream> = (0..5).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    // The productive connection still works after the limit was hit.
    productive.write_all(&first).unwrap();
    drop(productive);
    drop(idle);
    std::thread::sleep(Duration::from_millis(300));
    let (code, stats, _, archive) = l.stop();
    assert_eq!(code, 0);
    assert_eq!(archive, [first.clone(), first].concat());
    assert!(stats["listener"]["connections_evicted"].as_u64().unwrap() >= 3);
}

#[test]
fn unix_socket_is_0660_and_never_replaces_a_regular_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("audit.sock");
    // A regular file at the path is refused (exit 2, clear message).
    std::fs::write(&sock, b"precious").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_auditwatch"))
        .args(["listen", "--no-archive", "--unix"])
        .arg(&sock)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a socket"));
    assert_eq!(std::fs::read(&sock).unwrap(), b"precious");
    std::fs::remove_file(&sock).unwrap();
    // A stale socket file is replaced.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let mut l = Listener::start(&["--unix", sock.to_str().unwrap()]);
    assert_eq!(
        std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
        0o660
    );
    let data = scenarios();
    let mut s = UnixStream::connect(&sock).unwrap();
    s.write_all(&data).unwrap();
    drop(s);
    std::thread::sleep(Duration::from_millis(300));
    let (code, _, findings, archive) = l.stop();
    assert_eq!(code, 0);
    assert_eq!(archive, data);
    assert_eq!(findings[0]["source"]["kind"], "unix");
}

#[test]
fn udp_datagrams_are_entries_and_cut_ones_are_counted() {
    let mut l = Listener::start(&["--udp", "127.0.0.1:0"]);
    let data = scenarios();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut sent = Vec::new();
    for entry in data.split_inclusive(|b| *b == b'\n').take(60) {
        sock.send_to(entry, l.addr("udp")).unwrap();
        sent.extend_from_slice(entry);
        std::thread::sleep(Duration::from_millis(1));
    }
    sock.send_to(b"{\"type\":\"request\",\"request\":{\"pa", l.addr("udp"))
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let (code, stats, findings, archive) = l.stop();
    assert_eq!(code, 0);
    assert_eq!(archive, sent);
    assert_eq!(stats["listener"]["udp_truncated"], 1);
    assert_eq!(stats["listener"]["udp_datagrams"], 61);
    assert!(findings.iter().all(|f| f["source"]["kind"] == "udp"));
    assert!(!findings.is_empty());
}

#[test]
fn address_in_use_exits_2_with_a_clear_message() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_auditwatch"))
        .args(["listen", "--no-archive", "--tcp", &addr])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&addr));
}

#[test]
fn prefix_is_stripped_for_analysis_and_kept_in_the_archive() {
    let mut l = Listener::start(&["--tcp", "127.0.0.1:0", "--strip-prefix", "vault:"]);
    let data = scenarios();
    let prefixed: Vec<u8> = data
        .split_inclusive(|b| *b == b'\n')
        .flat_map(|e| [b"vault:".as_slice(), e].concat())
        .collect();
    let mut s = TcpStream::connect(l.addr("tcp")).unwrap();
    s.write_all(&prefixed).unwrap();
    drop(s);
    std::thread::sleep(Duration::from_millis(300));
    let (code, stats, findings, archive) = l.stop();
    assert_eq!(code, 0);
    assert_eq!(archive, prefixed);
    assert_eq!(stats["parse_errors"], 0);
    assert_eq!(findings.len(), replay_findings(&data).len());
}

#[test]
fn verify_reports_an_intact_archive() {
    let mut l = Listener::start(&["--tcp", "127.0.0.1:0", "--archive-rotate-size", "64KiB"]);
    let data = scenarios();
    let mut s = TcpStream::connect(l.addr("tcp")).unwrap();
    s.write_all(&data).unwrap();
    drop(s);
    std::thread::sleep(Duration::from_millis(300));
    let dir = l.archive_dir();
    let (code, stats, _, _) = l.stop();
    assert_eq!(code, 0);
    assert!(stats["archive"]["rotations"].as_u64().unwrap() >= 5);
    let out = Command::new(env!("CARGO_BIN_EXE_auditwatch"))
        .arg("verify")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Tamper with one rotated segment: verify fails and names it.
    let seg = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("audit-")
        })
        .unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&seg, bytes).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_auditwatch"))
        .arg("verify")
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(seg.file_name().unwrap().to_str().unwrap()),
        "{text}"
    );
}

/// Findings of `rule` written so far (the listener is still running).
fn findings_now(l: &Listener, rule: &str) -> Vec<Value> {
    std::fs::read_to_string(l.dir.path().join("findings.json"))
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|f| f["rule"] == rule)
        .collect()
}

fn wait_findings(l: &Listener, rule: &str, n: usize, limit: Duration) -> Vec<Value> {
    let deadline = Instant::now() + limit;
    loop {
        let f = findings_now(l, rule);
        if f.len() >= n || Instant::now() > deadline {
            return f;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn request_findings_wait_for_their_response_and_never_for_ever() {
    let mut l = Listener::start(&["--tcp", "127.0.0.1:0", "--correlate-wait", "1s"]);
    let data = scenarios();
    let lines: Vec<&[u8]> = data.split_inclusive(|b| *b == b'\n').collect();
    // scenarios.log lines 10 and 11: a policy write's request and response.
    let (request, response) = (lines[9], lines[10]);
    let mut s = TcpStream::connect(l.addr("tcp")).unwrap();
    s.write_all(request).unwrap();
    s.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    const RULE: &str = "privileged.policy_change";
    assert!(findings_now(&l, RULE).is_empty(), "held for its response");
    s.write_all(response).unwrap();
    let got = wait_findings(&l, RULE, 1, Duration::from_secs(10));
    assert_eq!(got.len(), 1, "one finding for the pair: {got:?}");
    assert_eq!(got[0]["type"], "response");
    assert_eq!(got[0]["source"]["line"], 2);
    assert_eq!(got[0]["detail"]["request"]["line"], 1);
    assert_eq!(got[0]["detail"]["outcome"], "succeeded");

    // A request whose response never comes is reported after the wait,
    // on the wall clock, while the stream stays quiet.
    s.write_all(request).unwrap();
    let sent = Instant::now();
    let got = wait_findings(&l, RULE, 2, Duration::from_secs(10));
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(sent.elapsed() >= Duration::from_millis(900));
    assert_eq!(got[1]["type"], "request");
    assert_eq!(got[1]["detail"]["outcome"], "no_response");
    assert!(got[1]["detail"]["response"].is_null());
    drop(s);
    let (code, stats, findings, _) = l.stop();
    assert_eq!(code, 0);
    let held: Vec<&Value> = findings.iter().filter(|f| f["rule"] == RULE).collect();
    assert_eq!(held.len(), 2);
    assert_eq!(stats["correlation"]["held"], 2);
    assert_eq!(stats["correlation"]["merged"], 1);
    assert_eq!(stats["correlation"]["no_response"], 1);
}
