//! Window rules (brute force, spray, …) on real captured entries whose
//! times are adjusted to control the timing (the entries are otherwise the
//! real OpenBao lines; where a test needs many users or addresses it also
//! rewrites the user in the path or the remote address, and says so).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use serde_json::Value;

use auditwatch::analyze::Analyzer;
use auditwatch::engine::{Judge, StreamPos};
use auditwatch::finding::SourceKind;
use auditwatch::rules::RuleSet;

fn capture_line(scenario: &str, step: &str, k: usize) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/openbao");
    let steps = std::fs::read_to_string(dir.join("scenarios.steps.tsv")).unwrap();
    let first: usize = steps
        .lines()
        .find_map(|l| {
            let c: Vec<&str> = l.split('\t').collect();
            (c[0] == scenario && c[1] == step).then(|| c[2].parse().unwrap())
        })
        .unwrap();
    let log = std::fs::read_to_string(dir.join("scenarios.log")).unwrap();
    log.lines().nth(first - 1 + k).unwrap().to_owned()
}

/// The same entry with its `time` set to `secs` seconds after a fixed start.
fn at(line: &str, secs: f64) -> String {
    let start = line.find("\"time\":\"").unwrap() + 8;
    let end = start + line[start..].find('"').unwrap();
    let whole = secs.floor() as u64;
    let nanos = ((secs - secs.floor()) * 1e9) as u64;
    let t = format!(
        "2026-11-25T10:{:02}:{:02}.{:09}Z",
        whole / 60,
        whole % 60,
        nanos
    );
    format!("{}{}{}", &line[..start], t, &line[end..])
}

fn replay(lines: &[String]) -> Vec<Value> {
    replay_with(lines, &[])
}

fn replay_with(lines: &[String], extra: &[&str]) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("w.log");
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_auditwatch"))
        .args(["replay", "-q"])
        .args(extra)
        .arg(&p)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn fired<'a>(findings: &'a [Value], rule: &str) -> Vec<&'a Value> {
    findings.iter().filter(|f| f["rule"] == rule).collect()
}

fn wrong_password() -> String {
    // userpass, alice, wrong password: a real failed-login response.
    capture_line("01-userpass", "wrong_password", 1)
}

#[test]
fn brute_force_by_address_fires_at_the_threshold_and_not_below() {
    let fail = wrong_password();
    let nine: Vec<String> = (0..9).map(|i| at(&fail, i as f64 * 5.0)).collect();
    assert!(fired(&replay(&nine), "brute_force.address").is_empty());
    let ten: Vec<String> = (0..10).map(|i| at(&fail, i as f64 * 5.0)).collect();
    let f = replay(&ten);
    let hits = fired(&f, "brute_force.address");
    assert_eq!(hits.len(), 1);
    let w = &hits[0]["detail"]["window"];
    assert_eq!(w["count"], 10);
    assert_eq!(w["threshold"], 10);
    assert_eq!(w["key"][0], "127.0.0.1");
    assert_eq!(w["first"]["line"], 1);
    assert_eq!(w["last"]["line"], 10);
    // `first.time` is rendered from the counted time as Vault writes times (zeros trimmed);
    // `last.time` is the entry's own.
    assert_eq!(w["first"]["time"], "2026-11-25T10:00:00Z");
    assert_eq!(w["last"]["time"], "2026-11-25T10:00:45.000000000Z");
    assert_eq!(w["last"]["time"], hits[0]["time"]);
    assert_eq!(
        hits[0]["source"]["line"], 10,
        "reported on the entry that crossed the threshold"
    );
    // Ten failures spread over more than the minute: no burst.
    let slow: Vec<String> = (0..10).map(|i| at(&fail, i as f64 * 7.0)).collect();
    assert!(fired(&replay(&slow), "brute_force.address").is_empty());
    // Slightly out of order is still the same window.
    let mut shuffled = ten.clone();
    shuffled.swap(3, 7);
    assert_eq!(fired(&replay(&shuffled), "brute_force.address").len(), 1);
}

#[test]
fn brute_force_by_user_counts_across_addresses() {
    let fail = wrong_password();
    // Rewritten: the remote address varies (10 addresses, one failure each).
    let lines: Vec<String> = (0..10)
        .map(|i| {
            at(&fail, i as f64 * 20.0).replace(
                "\"remote_address\":\"127.0.0.1\"",
                &format!("\"remote_address\":\"127.0.0.{}\"", i + 2),
            )
        })
        .collect();
    let f = replay(&lines);
    assert!(fired(&f, "brute_force.address").is_empty());
    let by_user = fired(&f, "brute_force.user");
    assert_eq!(by_user.len(), 1);
    assert_eq!(by_user[0]["detail"]["window"]["key"][1], "alice");
    assert_eq!(
        fired(&f, "brute_force.distributed").len(),
        1,
        "5+ distinct addresses for alice"
    );
    let four: Vec<String> = lines[..4].to_vec();
    assert!(fired(&replay(&four), "brute_force.distributed").is_empty());
}

#[test]
fn password_spray_needs_distinct_users() {
    let fail = wrong_password();
    // Rewritten: the user in the path varies.
    let users = |n: usize| -> Vec<String> {
        (0..n)
            .map(|i| {
                at(&fail, i as f64).replace(
                    "auth/userpass/login/alice",
                    &format!("auth/userpass/login/user{i}"),
                )
            })
            .collect()
    };
    assert_eq!(
        fired(&replay(&users(5)), "brute_force.password_spray").len(),
        1
    );
    assert!(fired(&replay(&users(4)), "brute_force.password_spray").is_empty());
    // The same user 8 times is no spray.
    let same: Vec<String> = (0..8).map(|i| at(&fail, i as f64)).collect();
    assert!(fired(&replay(&same), "brute_force.password_spray").is_empty());
}

#[test]
fn success_after_failures_fires_on_the_success() {
    const RULE: &str = "brute_force.success_after_failures";
    let fail = wrong_password();
    let ok = capture_line("01-userpass", "login_ok", 1);
    // Its trigger is lazy: the successful login is parsed only because its
    // address has failures. `--strict` parses every line (the trigger then
    // judged at once): both must agree.
    let both = |lines: &[String]| {
        let lazy = replay(lines);
        let strict = replay_with(lines, &["--strict"]);
        // (Each run writes the lines to its own temporary file.)
        let names = |v: &[Value]| {
            let mut v = v.to_vec();
            v.iter_mut().for_each(same_file_name);
            v
        };
        assert_eq!(names(&lazy), names(&strict), "lazy and strict differ");
        lazy
    };
    let mut lines: Vec<String> = (0..5).map(|i| at(&fail, i as f64 * 10.0)).collect();
    lines.push(at(&ok, 120.0));
    let f = both(&lines);
    let hits = fired(&f, RULE);
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0]["source"]["line"], 6);
    assert_eq!(hits[0]["detail"]["window"]["count"], 5);
    // Four failures, or a success long after, stay quiet.
    let mut four: Vec<String> = (0..4).map(|i| at(&fail, i as f64 * 10.0)).collect();
    four.push(at(&ok, 60.0));
    assert!(fired(&both(&four), RULE).is_empty());
    let mut late: Vec<String> = (0..5).map(|i| at(&fail, i as f64)).collect();
    late.push(at(&ok, 20.0 * 60.0));
    assert!(fired(&both(&late), RULE).is_empty());
    // The success from another address (rewritten) stays quiet.
    let mut other = lines.clone();
    other[5] = other[5].replace(
        "\"remote_address\":\"127.0.0.1\"",
        "\"remote_address\":\"192.0.2.9\"",
    );
    assert_ne!(other[5], lines[5]);
    assert!(fired(&both(&other), RULE).is_empty());
}

/// Every string ending in `/w.log` (the temporary input) becomes `w.log`.
fn same_file_name(v: &mut Value) {
    match v {
        Value::String(s) if s.ends_with("/w.log") => *s = "w.log".into(),
        Value::Array(a) => a.iter_mut().for_each(same_file_name),
        Value::Object(o) => o.values_mut().for_each(same_file_name),
        _ => {}
    }
}

#[test]
fn lazy_triggers_parse_only_lines_whose_key_has_state() {
    // 50 successful logins from an address that never failed, then 5
    // failures and one success from 127.0.0.1: only that success is parsed
    // by the judge (successes are not prefilter candidates of any rule).
    let fail = wrong_password();
    let ok = capture_line("01-userpass", "login_ok", 1);
    let mut lines: Vec<String> = (0..50)
        .map(|i| {
            at(&ok, i as f64).replace(
                "\"remote_address\":\"127.0.0.1\"",
                "\"remote_address\":\"192.0.2.1\"",
            )
        })
        .collect();
    lines.extend((0..5).map(|i| at(&fail, 60.0 + i as f64)));
    lines.push(at(&ok, 70.0));
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("w.log");
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    let stats = dir.path().join("s.json");
    let out = Command::new(env!("CARGO_BIN_EXE_auditwatch"))
        .args(["replay", "-q", "--stats-json"])
        .arg(&stats)
        .arg(&p)
        .output()
        .unwrap();
    assert!(out.status.success());
    let s: Value = serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    assert_eq!(s["lazy_trigger_lines"], 51);
    assert_eq!(s["lazy_trigger_parsed"], 1);
    assert_eq!(
        s["findings_by_rule"]["brute_force.success_after_failures"],
        1
    );
}

#[test]
fn acl_denial_bursts_per_token() {
    let denied = capture_line("05-acl-denied", "limited_read", 1);
    let ten: Vec<String> = (0..10).map(|i| at(&denied, i as f64)).collect();
    assert_eq!(fired(&replay(&ten), "acl.denied_burst").len(), 1);
    assert!(fired(&replay(&ten[..9]), "acl.denied_burst").is_empty());
    // Rewritten: the path varies.
    let paths: Vec<String> = (0..10)
        .map(|i| {
            at(&denied, i as f64 * 20.0)
                .replace("secret/data/prod/db", &format!("secret/data/prod/db{i}"))
        })
        .collect();
    assert_eq!(fired(&replay(&paths), "acl.denied_paths").len(), 1);
}

/// A flood of distinct keys never grows window state past its cap.
#[test]
fn window_state_is_bounded_under_a_flood_of_addresses() {
    let pack = r#"
[[rule]]
id = "t.burst"
title = "t"
category = "brute_force"
severity = "high"
description = "d"
[rule.window]
group_by = ["request.remote_address"]
count = 3
within = "1h"
max_keys = 1000
[rule.when]
field = "path"
glob = "auth/**/login/*"
"#;
    let rules = Arc::new(RuleSet::from_toml("t.toml", pack).unwrap());
    let analyzer = Analyzer::new(rules.clone(), false, 1 << 20);
    let mut judge = Judge::new(rules);
    let fail = wrong_password();
    let mut pos = StreamPos {
        kind: SourceKind::File,
        name: "flood".into(),
        lines_before: 0,
    };
    let mut fired = 0;
    let mut max_keys = 0;
    for chunk in 0..50 {
        let mut block = String::new();
        for i in 0..2000 {
            let n = chunk * 2000 + i;
            let addr = format!(
                "\"remote_address\":\"10.{}.{}.{}\"",
                n >> 16,
                (n >> 8) & 255,
                n & 255
            );
            block.push_str(
                &at(&fail, n as f64 / 1000.0).replace("\"remote_address\":\"127.0.0.1\"", &addr),
            );
            block.push('\n');
        }
        let result = analyzer.scan_block(block.as_bytes());
        judge.block(&mut pos, 0, result, false, &mut |_| fired += 1);
        max_keys = max_keys.max(judge.window_keys());
    }
    assert_eq!(fired, 0, "every address failed once");
    assert!(max_keys <= 1000, "window keys grew to {max_keys}");
    assert!(max_keys >= 500);
}

/// `--disable` switches window rules off (the stateless ones keep running); `--only` keeps
/// just the matching rules; a glob that matches no rule stops the run, naming it.
#[test]
fn disable_and_only_select_rules_and_typos_are_errors() {
    let fail = wrong_password();
    let ten: Vec<String> = (0..10).map(|i| at(&fail, i as f64 * 5.0)).collect();
    let all = replay(&ten);
    assert_eq!(fired(&all, "brute_force.address").len(), 1);
    let off = replay_with(&ten, &["--disable", "brute_force.*", "--disable", "acl.*"]);
    assert!(off
        .iter()
        .all(|f| !f["rule"].as_str().unwrap().starts_with("brute_force.")));
    assert_eq!(
        fired(&off, "login.failed").len(),
        fired(&all, "login.failed").len()
    );
    let only = replay_with(&ten, &["--only", "brute_force.address"]);
    assert_eq!(only.len(), 1, "{only:?}");

    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("w.log");
    std::fs::write(&p, ten.join("\n") + "\n").unwrap();
    for (flag, glob) in [("--disable", "brute_forse.*"), ("--only", "nope.*")] {
        let out = Command::new(env!("CARGO_BIN_EXE_auditwatch"))
            .args(["replay", "-q", flag, glob])
            .arg(&p)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag} {glob}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("\"{glob}\" matches no rule")),
            "{err}"
        );
        assert!(out.stdout.is_empty());
    }
    // `rules list` and `rules test` take them too.
    let out = Command::new(env!("CARGO_BIN_EXE_auditwatch"))
        .args([
            "rules",
            "list",
            "--only",
            "brute_force.*",
            "--disable",
            "*.user",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let ids: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.split_whitespace().next().unwrap().to_owned())
        .collect();
    assert_eq!(
        ids,
        [
            "brute_force.address",
            "brute_force.password_spray",
            "brute_force.distributed",
            "brute_force.success_after_failures"
        ]
    );
    let out = Command::new(env!("CARGO_BIN_EXE_auditwatch"))
        .args(["rules", "test", "--disable", "nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// A compact failed userpass login (the shape of the captured ones, fewer fields) for `user`
/// from `addr`, `micros` µs after a fixed start.
fn compact_failure(micros: u64, addr: &str, user: &str) -> String {
    let t = format!(
        "2026-11-25T10:{:02}:{:02}.{:06}Z",
        micros / 60_000_000,
        micros / 1_000_000 % 60,
        micros % 1_000_000
    );
    format!(
        r#"{{"time":"{t}","type":"response","auth":{{"token_type":"default"}},"request":{{"id":"r","operation":"update","mount_point":"auth/userpass/","mount_type":"userpass","namespace":{{"id":"root"}},"path":"auth/userpass/login/{user}","remote_address":"{addr}"}},"response":{{"mount_point":"auth/userpass/","data":{{"error":"hmac-sha256:00"}}}},"error":"invalid credentials"}}"#
    )
}

/// End to end with a byte cap: a replay of 40,000 failed logins from distinct addresses
/// through a window rule with `max_state = "128KiB"` keeps its accounted state under the cap
/// (reported in `--stats-json`), counts its evictions, and still reports the brute force that
/// follows. (The million-key flood is a unit test in `engine.rs`.)
#[test]
fn max_state_caps_window_bytes_in_a_replay() {
    let dir = tempfile::tempdir().unwrap();
    let pack = r#"
[[rule]]
id = "t.burst"
title = "t"
category = "brute_force"
severity = "high"
description = "d"
[rule.window]
group_by = ["request.remote_address"]
count = 10
within = "1h"
max_state = "128KiB"
[rule.when]
all = [
  { field = "kind", equals = "response" },
  { field = "path", glob = "auth/**/login/*" },
]
"#;
    std::fs::write(dir.path().join("t.toml"), pack).unwrap();
    let mut log = String::new();
    for n in 0..40_000u64 {
        let addr = format!("10.{}.{}.{}", n >> 16, (n >> 8) & 255, n & 255);
        log.push_str(&compact_failure(n * 10, &addr, "alice"));
        log.push('\n');
    }
    for i in 0..10 {
        log.push_str(&compact_failure(400_000 + i * 1_000, "203.0.113.7", "bob"));
        log.push('\n');
    }
    let p = dir.path().join("flood.log");
    std::fs::write(&p, log).unwrap();
    let stats = dir.path().join("stats.json");
    let out = Command::new(env!("CARGO_BIN_EXE_auditwatch"))
        .args(["replay", "-q", "--only", "t.*", "--patterns"])
        .arg(dir.path())
        .arg("--stats-json")
        .arg(&stats)
        .arg(&p)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let findings: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert_eq!(findings[0]["detail"]["window"]["key"][0], "203.0.113.7");
    let s: Value = serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    assert_eq!(s["window_state_cap"], 128 * 1024);
    let peak = s["window_state_bytes_peak"].as_u64().unwrap();
    assert!(peak <= 128 * 1024 && peak > 64 * 1024, "{s}");
    assert!(s["window_evictions"].as_u64().unwrap() > 0, "{s}");
    assert!(s["window_keys_evicted"].as_u64().unwrap() > 35_000, "{s}");
    assert!(s["window_keys"].as_u64().unwrap() < 2_000, "{s}");
    // A cap below 64KiB, or not a size, is refused with the rule's location.
    for bad in ["1KiB", "lots"] {
        std::fs::write(
            dir.path().join("t.toml"),
            pack.replace("\"128KiB\"", &format!("{bad:?}")),
        )
        .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_auditwatch"))
            .args(["rules", "list", "--patterns"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("t.toml:") && err.contains("window.max_state"),
            "{err}"
        );
    }
}

#[test]
fn audit_device_change_then_plugin_by_the_same_token_fires_within_the_hour() {
    // Real responses (root token): `bao audit enable` (refused) and the
    // registration of a plugin in the catalog (failed: no plugin directory).
    let audit = capture_line("13-sys-privileged", "audit_enable_refused", 1);
    let plugin = capture_line("13-sys-privileged", "plugin_catalog", 5);
    const RULE: &str = "audit.device_then_plugin";
    let f = replay(&[at(&audit, 0.0), at(&plugin, 50.0 * 60.0)]);
    let hits = fired(&f, RULE);
    assert_eq!(hits.len(), 1);
    assert_eq!(
        hits[0]["source"]["line"], 2,
        "reported on the plugin registration"
    );
    assert_eq!(hits[0]["path"], "sys/plugins/catalog/secret/evil");
    assert_eq!(hits[0]["detail"]["window"]["first"]["line"], 1);

    // The plugin first, then the audit change: not the sequence.
    assert!(fired(&replay(&[at(&plugin, 0.0), at(&audit, 60.0)]), RULE).is_empty());
    // A plugin registered alone.
    assert!(fired(&replay(&[at(&plugin, 0.0)]), RULE).is_empty());
    // More than an hour apart (time rewritten to the next day).
    let next_day = at(&plugin, 0.0).replace("2026-11-25T10:", "2026-11-26T10:");
    assert!(fired(&replay(&[at(&audit, 0.0), next_day]), RULE).is_empty());
    // Another token (accessor rewritten) registering the plugin.
    let accessor = |l: &str| {
        let v: Value = serde_json::from_str(l).unwrap();
        v["auth"]["accessor"].as_str().unwrap().to_owned()
    };
    let other = at(&plugin, 60.0).replace(
        &accessor(&plugin),
        "hmac-sha256:0000000000000000000000000000000000000000000000000000000000000000",
    );
    assert!(fired(&replay(&[at(&audit, 0.0), other]), RULE).is_empty());
}

/// The built-in `kv.mass_secret_read` (off by default: it needs every KV
/// read parsed) turned on by a copy in a `--patterns` directory.
fn with_mass_read_rule() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let pack = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("patterns/windows.toml"),
    )
    .unwrap();
    let at = pack.find("id = \"kv.mass_secret_read\"").unwrap();
    let start = pack[..at].rfind("[[rule]]").unwrap();
    let end = pack[at..].find("\n[[rule]]").map_or(pack.len(), |i| at + i);
    let rule = pack[start..end].replace("enabled = false", "enabled = true");
    assert!(rule.contains("enabled = true"));
    std::fs::write(dir.path().join("on.toml"), rule).unwrap();
    dir
}

#[test]
fn mass_secret_read_counts_distinct_kv_paths_of_one_token() {
    const RULE: &str = "kv.mass_secret_read";
    // A real KV v2 read (request entry, root token) of secret/data/app/db;
    // the path is rewritten to make each read a distinct secret.
    let read = capture_line("11-kv", "get", 2);
    assert!(read.contains("\"path\":\"secret/data/app/db\""));
    let patterns = with_mass_read_rule();
    let p = patterns.path().to_str().unwrap().to_owned();
    let reads = |n: usize, distinct: bool| -> Vec<String> {
        (0..n)
            .map(|i| {
                let path = if distinct {
                    format!("secret/data/app/db{i}")
                } else {
                    "secret/data/app/db".into()
                };
                at(&read, i as f64).replace(
                    "\"path\":\"secret/data/app/db\"",
                    &format!("\"path\":\"{path}\""),
                )
            })
            .collect()
    };
    assert!(
        fired(&replay(&reads(100, true)), RULE).is_empty(),
        "off by default"
    );
    let f = replay_with(&reads(100, true), &["--patterns", &p]);
    let hits = fired(&f, RULE);
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0]["detail"]["window"]["count"], 100);
    assert_eq!(hits[0]["source"]["line"], 100);
    // 99 distinct paths, or 100 reads of the same secret, stay quiet.
    assert!(fired(&replay_with(&reads(99, true), &["--patterns", &p]), RULE).is_empty());
    assert!(fired(&replay_with(&reads(100, false), &["--patterns", &p]), RULE).is_empty());
}
