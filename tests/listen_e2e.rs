//! `auditwatch listen` end to end with a real OpenBao server.
//!
//! Starts `auditwatch listen` on an ephemeral loopback port, then `bao server -dev` with two
//! config-declared audit devices: a file device and a socket device aimed at the listener. Drives
//! logins (good and bad), a root token, generate-root, a policy, a mount and KV traffic with the
//! `bao` CLI, stops the server, stops the listener with SIGTERM and checks:
//!
//! * the expected rules fired, from `tcp` sources, and no failed-login finding for a good login;
//!   the findings equal those of `auditwatch replay` on the archive (same ids) and on the file
//!   device's log (same rule, type, request id and path; HMACs and times differ per device);
//! * the archive holds exactly the file device's entries, in the same order;
//! * the listener exited 0 and its `--stats-json` counters agree with the archive and stdout.
//!
//! Needs `bao` (OpenBao 2.7.x, `scripts/install-openbao.sh`). Without it the test is skipped with
//! a message, unless `CI` is set, where it fails. `AUDITWATCH_BAO=/path/to/bao` picks a binary.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

mod support;
use support::{
    event_keys, openbao_test, replay, run_timeout, s, AuditDevice, BaoTest, Lines, Proc,
    START_TIMEOUT, STOP_TIMEOUT,
};

const FINDING_TIMEOUT: Duration = Duration::from_secs(20);

// ------------------------------------------------------------------ entries and findings

fn read_json_lines(path: &Path) -> Vec<Value> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert!(
        bytes.is_empty() || bytes.ends_with(b"\n"),
        "{} does not end with a newline",
        path.display()
    );
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_slice(l)
                .unwrap_or_else(|e| panic!("{}:{}: not JSON: {e}", path.display(), i + 1))
        })
        .collect()
}

/// The device's token-less `sys/audit/test` probe, written when a device is (re)built.
fn is_probe(e: &Value) -> bool {
    e["request"]["path"] == "sys/audit/test" && e["request"]["client_token"].is_null()
}

/// (type, request.id, request.path) of an entry.
fn key(e: &Value) -> (String, String, String) {
    (
        s(&e["type"]),
        s(&e["request"]["id"]),
        s(&e["request"]["path"]),
    )
}

fn parse_findings(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("finding not JSON ({e}): {l}")))
        .collect()
}

fn count_by<K: Ord>(items: impl IntoIterator<Item = K>) -> BTreeMap<K, usize> {
    let mut m = BTreeMap::new();
    for k in items {
        *m.entry(k).or_insert(0) += 1;
    }
    m
}

fn with_rule<'a>(f: &'a [Value], rule: &str) -> Vec<&'a Value> {
    f.iter().filter(|f| f["rule"] == rule).collect()
}

/// A counter of the stats object: top level first, then one level down (for example
/// `listener.connections`).
fn counter(stats: &Value, name: &str) -> Option<u64> {
    if let Some(v) = stats.get(name).and_then(Value::as_u64) {
        return Some(v);
    }
    stats
        .as_object()?
        .values()
        .filter_map(|v| v.get(name).and_then(Value::as_u64))
        .next()
}

// ------------------------------------------------------------------ the test

#[test]
fn listen_with_real_openbao_socket_and_file_devices() {
    openbao_test(Some("auditwatch listen"), scenario);
}

#[allow(clippy::too_many_lines)]
fn scenario(t: &BaoTest) {
    let dir = t.dir;
    let arch = dir.join("arch");
    let stats_path = dir.join("stats.json");
    let file_log = dir.join("file-audit.log");

    // ---------------------------------------------------------- the listener
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_auditwatch"));
    cmd.current_dir(dir)
        .arg("listen")
        .args(["--tcp", "127.0.0.1:0", "--archive"])
        .arg(&arch)
        .arg("--stats-json")
        .arg(&stats_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("RUST_BACKTRACE", "1");
    let mut listen = Proc::spawn("auditwatch listen", &mut cmd);
    let mut findings_out = Lines::spawn(listen.child.stdout.take().unwrap());
    let mut listen_err =
        Lines::spawn_into(listen.child.stderr.take().unwrap(), Arc::clone(t.stderr));

    let mut port: Option<u16> = None;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match listen_err.rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(rest) = line.strip_prefix("auditwatch listen: listening on tcp ") {
                    let addr: std::net::SocketAddr = rest
                        .trim()
                        .parse()
                        .unwrap_or_else(|e| panic!("bad listening line {line:?}: {e}"));
                    assert!(addr.ip().is_loopback(), "{line}");
                    assert_ne!(addr.port(), 0, "{line}");
                    port = Some(addr.port());
                }
                if line.trim() == "auditwatch listen: ready" {
                    break;
                }
            }
            Err(_) => {
                panic!(
                    "auditwatch listen did not print `ready` within {START_TIMEOUT:?} \
                     (exited: {:?})",
                    listen.try_status()
                );
            }
        }
    }
    let port = port.expect("no `listening on tcp` line before `ready`");

    // ---------------------------------------------------------- the server
    let mut server = t.start_server(AuditDevice::file_and_socket(&file_log, port));
    let bao = server.bao().clone();
    let unseal_key = server.unseal_key().to_owned();
    let bao_port = server.port();
    let version = bao.ok(&["version"]);
    eprintln!(
        "listen_e2e: {version}, listener on 127.0.0.1:{port}, server on 127.0.0.1:{bao_port}"
    );

    // ---------------------------------------------------------- drive it
    // logins: alice good (twice), bob wrong password (twice), mallory unknown (once)
    bao.userpass_users(&[("alice", "alice-pass-1"), ("bob", "bob-pass-1")]);
    for _ in 0..2 {
        bao.login_ok("alice", "alice-pass-1");
    }
    let bad_logins: [(&str, &str); 3] = [
        ("bob", "wrong-1"),
        ("bob", "wrong-2"),
        ("mallory", "whatever"),
    ];
    for (user, pass) in bad_logins {
        bao.login_fails(user, pass);
    }

    // a root token, used once
    let root1 = bao.ok(&["token", "create", "-policy=root", "-field=token"]);
    assert!(!root1.is_empty());
    bao.ok_as(
        Some(&root1),
        &["kv", "put", "secret/rt/marker", "note=by-root1"],
    );

    // generate-root, to completion, and a use of the generated token
    let otp = bao.ok(&["operator", "generate-root", "-generate-otp"]);
    bao.ok(&["operator", "generate-root", "-init", &format!("-otp={otp}")]);
    let status: Value =
        serde_json::from_str(&bao.ok(&["operator", "generate-root", "-status", "-format=json"]))
            .expect("generate-root status JSON");
    let nonce = s(&status["nonce"]);
    assert!(!nonce.is_empty(), "no nonce: {status}");
    let done: Value = serde_json::from_str(&bao.ok(&[
        "operator",
        "generate-root",
        "-format=json",
        &format!("-nonce={nonce}"),
        &unseal_key,
    ]))
    .expect("generate-root update JSON");
    assert_eq!(done["complete"], true, "{done}");
    let encoded = s(&done["encoded_token"]);
    let gen_root = bao.ok(&[
        "operator",
        "generate-root",
        &format!("-decode={encoded}"),
        &format!("-otp={otp}"),
    ]);
    bao.ok_as(Some(&gen_root), &["token", "lookup"]);

    // a policy written and deleted
    let policy = dir.join("app-read.hcl");
    std::fs::write(
        &policy,
        "path \"secret/data/app/*\" { capabilities = [\"read\"] }\n",
    )
    .unwrap();
    bao.ok(&["policy", "write", "app-read", policy.to_str().unwrap()]);
    bao.ok(&["policy", "delete", "app-read"]);

    // a mount enabled and disabled
    bao.ok(&["secrets", "enable", "-path=kv2", "kv-v2"]);
    bao.ok(&["secrets", "disable", "kv2"]);

    // findings are written as they happen: the last privileged event's finding must show up
    // on stdout while the listener is still running
    let deadline = Instant::now() + FINDING_TIMEOUT;
    loop {
        let f = parse_findings(&findings_out.snapshot());
        if f.iter().any(|f| {
            f["rule"] == "privileged.mount_change"
                && f["path"] == "sys/mounts/kv2"
                && f["operation"] == "delete"
        }) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no finding for `bao secrets disable kv2` on stdout within {FINDING_TIMEOUT:?} \
             (findings are to be flushed one by one); {} findings so far",
            f.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // ordinary KV traffic (no findings beyond root_token.used, which is throttled)
    for i in 0..3 {
        bao.ok(&["kv", "put", "secret/app/one", &format!("k=v{i}")]);
        bao.ok(&["kv", "get", "secret/app/one"]);
    }

    // ---------------------------------------------------------- stop both
    server.stop();

    listen.signal(libc::SIGTERM);
    let status = listen.wait_timeout(STOP_TIMEOUT);
    let status = status.unwrap_or_else(|| {
        panic!("auditwatch listen did not exit within {STOP_TIMEOUT:?} of SIGTERM")
    });
    findings_out.join(STOP_TIMEOUT);
    listen_err.join(STOP_TIMEOUT);
    assert_eq!(
        status.code(),
        Some(0),
        "auditwatch listen exit status after SIGTERM: {status}"
    );

    // ---------------------------------------------------------- (a) findings
    let findings = parse_findings(&findings_out.snapshot());
    let by_rule = count_by(findings.iter().map(|f| s(&f["rule"])));
    eprintln!("listen_e2e: findings by rule: {by_rule:?}");

    for f in &findings {
        assert_eq!(f["source"]["kind"], "tcp", "finding source: {f}");
        let name = s(&f["source"]["name"]);
        let peer: std::net::SocketAddr = name
            .parse()
            .unwrap_or_else(|e| panic!("source.name {name:?} is not a peer address: {e}"));
        assert!(peer.ip().is_loopback(), "source.name {name}");
        assert!(
            f["source"]["line"].as_u64().unwrap_or(0) >= 1,
            "source.line: {f}"
        );
    }
    // per connection, entry ordinals increase in output order
    let mut last_line: BTreeMap<String, u64> = BTreeMap::new();
    for f in &findings {
        let name = s(&f["source"]["name"]);
        let line = f["source"]["line"].as_u64().unwrap();
        if let Some(prev) = last_line.insert(name.clone(), line) {
            assert!(
                line >= prev,
                "source.line went back on {name}: {prev} then {line}"
            );
        }
    }

    let failed = with_rule(&findings, "login.failed");
    let failed_users = count_by(failed.iter().map(|f| s(&f["path"])));
    let want_failed = count_by(
        bad_logins
            .iter()
            .map(|(u, _)| format!("auth/userpass/login/{u}")),
    );
    assert_eq!(
        failed_users, want_failed,
        "login.failed findings by path (one per bad login)"
    );
    for f in &failed {
        assert_eq!(f["type"], "response", "{f}");
    }
    let alice_fail: Vec<_> = findings
        .iter()
        .filter(|f| f["category"] == "failed_login" && s(&f["path"]).ends_with("/login/alice"))
        .collect();
    assert!(
        alice_fail.is_empty(),
        "failed_login findings for alice's good logins: {alice_fail:?}"
    );

    let created: Vec<_> = with_rule(&findings, "root_token.created")
        .into_iter()
        .filter(|f| f["path"] == "auth/token/create" && f["request_id"] != "dev-gen-root")
        .collect();
    assert_eq!(
        created.len(),
        1,
        "root_token.created for `bao token create -policy=root`: {created:?}"
    );
    assert_eq!(
        with_rule(&findings, "root_token.generated").len(),
        1,
        "root_token.generated (one completed generate-root)"
    );
    let gen = with_rule(&findings, "privileged.generate_root");
    assert!(
        gen.iter()
            .any(|f| f["path"] == "sys/generate-root-token/attempt"),
        "privileged.generate_root for -init: {gen:?}"
    );
    assert!(
        gen.iter()
            .any(|f| f["path"] == "sys/generate-root-token/update"),
        "privileged.generate_root for the update: {gen:?}"
    );
    let pol = with_rule(&findings, "privileged.policy_change");
    for op in ["update", "delete"] {
        assert!(
            pol.iter()
                .any(|f| f["path"] == "sys/policies/acl/app-read" && f["operation"] == op),
            "privileged.policy_change {op} of app-read: {pol:?}"
        );
    }
    let mnt = with_rule(&findings, "privileged.mount_change");
    assert!(
        mnt.iter()
            .any(|f| f["path"] == "sys/mounts/kv2" && f["operation"] != "delete"),
        "privileged.mount_change for the enable: {mnt:?}"
    );
    assert!(
        mnt.iter()
            .any(|f| f["path"] == "sys/mounts/kv2" && f["operation"] == "delete"),
        "privileged.mount_change for the disable: {mnt:?}"
    );

    // ---------------------------------------------------------- (b) archive
    let live = arch.join("audit.log");
    let mut segments: Vec<String> = std::fs::read_dir(&arch)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("audit") && n != "audit.log")
        .collect();
    segments.sort();
    assert!(
        segments.is_empty(),
        "unexpected rotation of a small archive: {segments:?}"
    );
    let archived = read_json_lines(&live);
    let file_entries = read_json_lines(&file_log);
    let arch_probes = archived.iter().filter(|e| is_probe(e)).count();
    let file_probes = file_entries.iter().filter(|e| is_probe(e)).count();
    assert!(file_probes >= 1, "the file device wrote no probe");
    assert_eq!(
        arch_probes, file_probes,
        "device probes: archive (socket device) vs file device"
    );
    let a: Vec<_> = archived.iter().filter(|e| !is_probe(e)).map(key).collect();
    let f: Vec<_> = file_entries
        .iter()
        .filter(|e| !is_probe(e))
        .map(key)
        .collect();
    if a != f {
        let first = a
            .iter()
            .zip(&f)
            .position(|(x, y)| x != y)
            .unwrap_or(a.len().min(f.len()));
        panic!(
            "archive and file device differ: {} vs {} entries (probes excluded); first \
             difference at entry {}: archive {:?}, file {:?}",
            a.len(),
            f.len(),
            first + 1,
            a.get(first),
            f.get(first)
        );
    }
    assert!(a.len() > 50, "suspiciously few entries: {}", a.len());

    // the archive's manifest chain checks out
    let mut c = Command::new(env!("CARGO_BIN_EXE_auditwatch"));
    c.current_dir(dir).arg("verify").arg(&arch);
    let v = run_timeout(c, None, "auditwatch verify");
    assert!(
        v.ok,
        "auditwatch verify {}:\n{}{}",
        arch.display(),
        v.stdout,
        v.stderr
    );

    // the findings agree with replay of the archive (same bytes, so the same ids) ...
    let (from_archive, _) = replay(dir, &[&live]);
    let ids = |v: &[Value]| count_by(v.iter().map(|f| (s(&f["rule"]), s(&f["id"]))));
    assert_eq!(
        ids(&findings),
        ids(&from_archive),
        "listen findings vs `auditwatch replay` of the archive (rule, id)"
    );
    // ... and with replay of the file device's log (other HMACs and times, same events)
    let (from_file, _) = replay(dir, &[&file_log]);
    assert_eq!(
        event_keys(&findings),
        event_keys(&from_file),
        "listen findings vs `auditwatch replay` of the file device's log \
         (rule, type, request_id, path)"
    );
    assert_eq!(
        with_rule(&findings, "privileged.audit_device_probe").len(),
        with_rule(&from_file, "privileged.audit_device_probe").len(),
        "probe findings"
    );

    // ---------------------------------------------------------- (c) stats
    let stats_text = std::fs::read_to_string(&stats_path)
        .unwrap_or_else(|e| panic!("--stats-json {}: {e}", stats_path.display()));
    let stats: Value = serde_json::from_str(&stats_text).expect("stats JSON");
    eprintln!("listen_e2e: stats {stats_text}");
    let archive_bytes = std::fs::metadata(&live).unwrap().len();
    // listener counters may be spelled `connections` or `connections_total`, at the top level
    // or under `listener`
    let need = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| counter(&stats, n))
            .unwrap_or_else(|| panic!("stats has no counter {names:?}"))
    };
    assert_eq!(
        need(&["entries"]),
        archived.len() as u64,
        "entries vs archive lines"
    );
    assert_eq!(
        need(&["findings"]),
        findings.len() as u64,
        "findings vs stdout lines"
    );
    assert_eq!(need(&["parse_errors"]), 0, "parse_errors");
    assert_eq!(need(&["oversize"]), 0, "oversize");
    let connections = need(&["connections", "connections_total"]);
    let peers: std::collections::BTreeSet<String> =
        findings.iter().map(|f| s(&f["source"]["name"])).collect();
    assert!(
        connections >= 1 && connections >= peers.len() as u64,
        "connections {connections}, peers seen in findings {}",
        peers.len()
    );
    assert_eq!(
        need(&["fragments"]),
        0,
        "fragments: bao closed its connections cleanly"
    );
    assert_eq!(
        need(&["analysis_shed", "analysis_shed_lines"]),
        0,
        "analysis shed on a tiny load"
    );
    for (names, want) in [
        (&["ingest_shed", "ingest_shed_lines"][..], 0),
        (&["lines_received"][..], archived.len() as u64),
        (&["bytes_received"][..], archive_bytes),
    ] {
        if let Some(v) = names.iter().find_map(|n| counter(&stats, n)) {
            assert_eq!(v, want, "stats {names:?}");
        }
    }
    let archive_stats = stats
        .get("archive")
        .filter(|v| v.is_object())
        .expect("stats has an `archive` object");
    assert_eq!(
        archive_stats["lines_written"].as_u64(),
        Some(archived.len() as u64),
        "archive.lines_written"
    );
    assert_eq!(
        archive_stats["bytes_written"].as_u64(),
        Some(archive_bytes),
        "archive.bytes_written"
    );
    assert_eq!(
        archive_stats["dropped_lines"].as_u64(),
        Some(0),
        "archive.dropped_lines"
    );
    assert_eq!(
        archive_stats["dropped_bytes"].as_u64(),
        Some(0),
        "archive.dropped_bytes"
    );
    if let Some(b) = counter(&stats, "bytes") {
        assert_eq!(b, archive_bytes, "bytes vs archive size");
    }
}
