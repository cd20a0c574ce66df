//! `auditwatch replay` end to end: the real binary on real captured logs.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_auditwatch"))
}

fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(rel)
}

const SCENARIOS: &str = "openbao/scenarios.log";

struct Run {
    out: Output,
    findings: Vec<Value>,
    stats: Value,
}

fn replay(args: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let stats_path = dir.path().join("stats.json");
    let out = bin()
        .arg("replay")
        .args(args)
        .arg("--stats-json")
        .arg(&stats_path)
        .output()
        .unwrap();
    let findings = String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("finding is JSON"))
        .collect();
    let stats = std::fs::read_to_string(&stats_path)
        .map(|s| serde_json::from_str(&s).unwrap())
        .unwrap_or(Value::Null);
    Run {
        out,
        findings,
        stats,
    }
}

fn code(r: &Run) -> i32 {
    r.out.status.code().unwrap_or(-1)
}

/// (rule, line) of every finding.
fn rule_lines(findings: &[Value]) -> Vec<(String, u64)> {
    findings
        .iter()
        .map(|f| {
            (
                f["rule"].as_str().unwrap().to_owned(),
                f["source"]["line"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The scenario step index written by scripts/capture-openbao.sh.
fn steps() -> Vec<(String, String, u64, u64)> {
    let text = std::fs::read_to_string(data("openbao/scenarios.steps.tsv")).unwrap();
    text.lines()
        .skip(1)
        .map(|l| {
            let c: Vec<&str> = l.split('\t').collect();
            (
                c[0].to_owned(),
                c[1].to_owned(),
                c[2].parse().unwrap(),
                c[3].parse().unwrap(),
            )
        })
        .collect()
}

/// Every entry of the capture, parsed.
fn scenario_entries() -> Vec<Value> {
    std::fs::read_to_string(data(SCENARIOS))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn lines_of(scenario: &str, step: &str) -> std::ops::RangeInclusive<u64> {
    let s = steps()
        .into_iter()
        .find(|(sc, st, ..)| sc == scenario && st == step)
        .unwrap_or_else(|| panic!("no step {scenario}/{step} in scenarios.steps.tsv"));
    s.2..=s.3
}

#[test]
fn finding_schema_is_complete_and_stable() {
    let r = replay(&[data(SCENARIOS).to_str().unwrap()]);
    assert_eq!(code(&r), 0, "{}", String::from_utf8_lossy(&r.out.stderr));
    assert!(!r.findings.is_empty());
    let keys: BTreeSet<&str> = [
        "id",
        "rule",
        "category",
        "severity",
        "title",
        "time",
        "type",
        "request_id",
        "operation",
        "path",
        "namespace",
        "actor",
        "source",
        "detail",
    ]
    .into();
    for f in &r.findings {
        let obj = f.as_object().unwrap();
        assert_eq!(
            obj.keys().map(String::as_str).collect::<BTreeSet<_>>(),
            keys
        );
        let actor: BTreeSet<&str> = f["actor"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            actor,
            [
                "accessor",
                "display_name",
                "entity_id",
                "policies",
                "remote_address"
            ]
            .into()
        );
        let source: BTreeSet<&str> = f["source"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(source, ["kind", "line", "name", "offset"].into());
        assert_eq!(f["source"]["kind"], "file");
        assert_eq!(f["id"].as_str().unwrap().len(), 64);
    }
    // The offset points at the line.
    let log = std::fs::read(data(SCENARIOS)).unwrap();
    for f in &r.findings {
        let off = f["source"]["offset"].as_u64().unwrap() as usize;
        let line = f["source"]["line"].as_u64().unwrap() as usize;
        assert!(off == 0 || log[off - 1] == b'\n');
        assert_eq!(log[..off].iter().filter(|b| **b == b'\n').count() + 1, line);
    }
}

#[test]
fn findings_never_copy_data_values() {
    // Every HMAC in request/response data of the capture must stay out of findings.
    let log = std::fs::read_to_string(data(SCENARIOS)).unwrap();
    let mut data_values = BTreeSet::new();
    let mut elsewhere = BTreeSet::new();
    for l in log.lines() {
        let mut v: Value = serde_json::from_str(l).unwrap();
        for part in ["request", "response"] {
            collect_strings(&v[part]["data"], &mut data_values);
            if let Some(obj) = v[part].as_object_mut() {
                obj.remove("data");
            }
        }
        // The same HMAC may also stand outside data (a token lookup returns
        // the accessor that `auth.accessor` shows): those may be reported.
        collect_strings(&v, &mut elsewhere);
    }
    let data_values: BTreeSet<String> = data_values.difference(&elsewhere).cloned().collect();
    assert!(data_values.len() > 50);
    let r = replay(&[data(SCENARIOS).to_str().unwrap()]);
    let out = String::from_utf8(r.out.stdout).unwrap();
    for v in &data_values {
        if v.len() > 8 {
            assert!(
                !out.contains(v.as_str()),
                "finding output contains a data value {v}"
            );
        }
    }
}

fn collect_strings(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::String(s) => {
            out.insert(s.clone());
        }
        Value::Array(a) => a.iter().for_each(|x| collect_strings(x, out)),
        Value::Object(m) => m.values().for_each(|x| collect_strings(x, out)),
        _ => {}
    }
}

#[test]
fn compressed_and_stdin_inputs_give_the_same_findings() {
    let plain = std::fs::read(data(SCENARIOS)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Multi-member gzip: two members back to back, named without .gz.
    let half = plain.len() / 2;
    let cut = half + plain[half..].iter().position(|b| *b == b'\n').unwrap() + 1;
    let mut gz = Vec::new();
    for part in [&plain[..cut], &plain[cut..]] {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(part).unwrap();
        gz.extend(e.finish().unwrap());
    }
    let gz_path = dir.path().join("audit-archive");
    std::fs::write(&gz_path, gz).unwrap();
    let zst_path = dir.path().join("audit.log.zst");
    std::fs::write(&zst_path, zstd::encode_all(&plain[..], 3).unwrap()).unwrap();

    let strip = |r: &Run| -> Vec<Value> {
        r.findings
            .iter()
            .map(|f| {
                let mut f = f.clone();
                f["source"]["name"] = Value::Null;
                f["source"]["kind"] = Value::Null;
                // Window findings name the input of their first and last entries.
                if f["detail"].get("window").is_some() {
                    f["detail"]["window"]["first"]["source"] = Value::Null;
                    f["detail"]["window"]["last"]["source"] = Value::Null;
                }
                f
            })
            .collect()
    };
    let reference = replay(&[data(SCENARIOS).to_str().unwrap()]);
    for p in [&gz_path, &zst_path] {
        let r = replay(&[p.to_str().unwrap()]);
        assert_eq!(code(&r), 0);
        assert_eq!(strip(&r), strip(&reference), "{}", p.display());
    }
    let mut child = bin()
        .args(["replay", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&plain).unwrap();
    let out = child.wait_with_output().unwrap();
    let from_stdin: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(from_stdin[0]["source"]["kind"], "stdin");
    assert_eq!(from_stdin[0]["source"]["name"], "-");
    let wrap = Run {
        out: Output {
            status: out.status,
            stdout: vec![],
            stderr: vec![],
        },
        findings: from_stdin,
        stats: Value::Null,
    };
    assert_eq!(strip(&wrap), strip(&reference));
}

#[test]
fn many_inputs_keep_order_and_a_missing_one_exits_2_after_the_rest() {
    let a = data(SCENARIOS);
    let b = data("openbao-smoke/openbao-2.7.2-smoke.log");
    let r = replay(&[
        a.to_str().unwrap(),
        "/nonexistent/audit.log",
        b.to_str().unwrap(),
    ]);
    assert_eq!(code(&r), 2);
    let names: Vec<&str> = r
        .findings
        .iter()
        .map(|f| f["source"]["name"].as_str().unwrap())
        .collect();
    let first_b = names.iter().position(|n| n.ends_with("smoke.log")).unwrap();
    assert!(names[..first_b]
        .iter()
        .all(|n| n.ends_with("scenarios.log")));
    assert!(names[first_b..].iter().all(|n| n.ends_with("smoke.log")));
    // In line order, but for request findings held for their response
    // (`detail.response` present), which come out when it arrives.
    let in_order: Vec<&Value> = r
        .findings
        .iter()
        .filter(|f| f["detail"].get("response").is_none())
        .collect();
    for w in in_order.windows(2) {
        if w[0]["source"]["name"] == w[1]["source"]["name"] {
            assert!(w[0]["source"]["line"].as_u64() <= w[1]["source"]["line"].as_u64());
        }
    }
    assert!(String::from_utf8_lossy(&r.out.stderr).contains("/nonexistent/audit.log"));
    assert_eq!(r.stats["failed_inputs"][0], "/nonexistent/audit.log");
}

#[test]
fn fail_on_sets_exit_code_1_only_at_or_above_the_threshold() {
    let smoke = data("openbao-smoke/openbao-2.7.2-smoke.log");
    let s = smoke.to_str().unwrap();
    assert_eq!(code(&replay(&[s, "--fail-on", "critical"])), 1);
    assert_eq!(
        code(&replay(&[s])),
        0,
        "findings alone never change the exit code"
    );
    // A log with only low findings.
    let dir = tempfile::tempdir().unwrap();
    let probe_only = dir.path().join("probe.log");
    let first = std::fs::read_to_string(&smoke)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_owned()
        + "\n";
    std::fs::write(&probe_only, first).unwrap();
    let p = probe_only.to_str().unwrap();
    assert_eq!(code(&replay(&[p, "--fail-on", "high"])), 0);
    assert_eq!(code(&replay(&[p, "--fail-on", "low"])), 1);
    assert_eq!(code(&replay(&[p, "--fail-on", "bogus"])), 2);
}

#[test]
fn hostile_lines_are_counted_located_and_never_abort() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hostile.log");
    let good = std::fs::read_to_string(data(SCENARIOS))
        .unwrap()
        .lines()
        .find(|l| l.contains("\"path\":\"sys/raw/"))
        .unwrap()
        .to_owned();
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let mut expect_errors = Vec::new();
    let mut line = 0u64;
    let mut put = |f: &mut std::io::BufWriter<std::fs::File>, bytes: &[u8], kind: Option<&str>| {
        line += 1;
        f.write_all(bytes).unwrap();
        f.write_all(b"\n").unwrap();
        if let Some(k) = kind {
            expect_errors.push((line, k.to_owned()));
        }
    };
    put(&mut f, good.as_bytes(), None);
    put(
        &mut f,
        br#"{"type":"request","request":{"path":"sys/raw/x""#,
        Some("invalid_json"),
    );
    put(
        &mut f,
        b"{\"type\":\"request\",\"request\":{\"path\":\"sys/raw/\xff\xfe\"}}",
        Some("invalid_utf8"),
    );
    put(&mut f, b"not json at all", Some("invalid_json"));
    let mut deep = br#"{"type":"request","request":{"path":"sys/raw/deep","data":{"x":"#.to_vec();
    deep.extend(std::iter::repeat_n(b'[', 1_000_000));
    deep.extend(std::iter::repeat_n(b']', 1_000_000));
    deep.extend(b"}}}");
    put(&mut f, &deep, None); // valid JSON: parses, fires privileged.raw_storage
    let mut deep_bad = br#"{"type":"request","auth":{"display_name":"#.to_vec();
    deep_bad.extend(std::iter::repeat_n(b'[', 1_000_000));
    deep_bad.extend(b"\"sys/raw\"}");
    put(&mut f, &deep_bad, Some("invalid_json"));
    let mut huge = br#"{"type":"request","request":{"path":"sys/raw/huge","data":{"x":""#.to_vec();
    huge.extend(std::iter::repeat_n(b'a', 64 << 20));
    huge.extend(b"\"}}}");
    put(&mut f, &huge, Some("oversize"));
    put(&mut f, good.as_bytes(), None);
    f.write_all(br#"{"type":"request","request":{"path":"sys/raw/cut"#)
        .unwrap();
    drop(f);

    let r = replay(&[path.to_str().unwrap(), "--threads", "2"]);
    assert_eq!(code(&r), 0, "{}", String::from_utf8_lossy(&r.out.stderr));
    let s = &r.stats;
    assert_eq!(s["invalid_json"], 3);
    assert_eq!(s["invalid_utf8"], 1);
    assert_eq!(s["oversize"], 1);
    assert_eq!(s["truncated"], 1);
    assert_eq!(s["entries"], 9);
    let located: Vec<(u64, String)> = s["errors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] != "truncated")
        .map(|e| {
            (
                e["line"].as_u64().unwrap(),
                e["kind"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(located, expect_errors);
    for e in s["errors"].as_array().unwrap() {
        assert!(e["source"].as_str().unwrap().ends_with("hostile.log"));
        assert!(e["offset"].as_u64().is_some());
    }
    // The good lines and the deep-but-valid one still fire.
    // (Lines 1 and 8 are requests with no response in this file: they are
    // held for it and reported at the end.)
    let mut fired: Vec<u64> = rule_lines(&r.findings)
        .into_iter()
        .filter(|(rule, _)| rule == "privileged.raw_storage")
        .map(|(_, l)| l)
        .collect();
    fired.sort_unstable();
    assert_eq!(fired, vec![1, 5, 8]);
    let stderr = String::from_utf8_lossy(&r.out.stderr);
    assert!(
        stderr.contains("hostile.log: line 2, byte offset"),
        "{stderr}"
    );
}

#[test]
fn shared_corpora_parse_without_errors() {
    let r = replay(&[
        data("openbao").to_str().unwrap(),
        data("openbao-smoke").to_str().unwrap(),
        data("thirdparty").to_str().unwrap(),
        "--strict",
    ]);
    // Directories hold notes (.md/.tsv/.json) too: only .log/.ndjson files are logs.
    let errors: Vec<&Value> = r.stats["errors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            let s = e["source"].as_str().unwrap();
            s.ends_with(".log") || s.ends_with(".ndjson")
        })
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    assert!(r.stats["entries"].as_u64().unwrap() > 1800);
}

#[test]
fn text_format_is_one_readable_line_per_finding() {
    let r = bin()
        .args(["replay", "--format", "text"])
        .arg(data("openbao-smoke/openbao-2.7.2-smoke.log"))
        .output()
        .unwrap();
    let text = String::from_utf8(r.stdout).unwrap();
    let json = replay(&[data("openbao-smoke/openbao-2.7.2-smoke.log")
        .to_str()
        .unwrap()]);
    assert_eq!(text.lines().count(), json.findings.len());
    assert!(!text.contains('\x1b'), "no colours when not a terminal");
    assert!(text.contains("CRITICAL"));
}

#[test]
fn rules_test_and_list_commands() {
    let out = bin().args(["rules", "test"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains(" 0 failed"), "{text}");
    let out = bin()
        .args(["rules", "list", "--format", "json"])
        .output()
        .unwrap();
    let ids: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert!(ids.contains(&"root_token.created".to_owned()));

    // A broken fixture in an extra directory is reported with file and rule id.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mine.toml"),
        r#"
[[rule]]
id = "mine.kv_read"
title = "KV read"
category = "custom"
severity = "info"
description = "test"
[rule.when]
field = "path"
prefix = "secret/data/"
[[rule.fixture]]
expect = "fire"
line = '{"type":"request","request":{"path":"kv/data/x"}}'
[[rule.fixture]]
expect = "quiet"
line = '{"type":"request","request":{"path":"other/x"}}'
"#,
    )
    .unwrap();
    let out = bin()
        .args(["rules", "test", "--patterns"])
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text.contains("mine.toml:3: rule mine.kv_read fixture 1: expected to fire"),
        "{text}"
    );
}

#[test]
fn root_token_use_is_reported_once_per_accessor_per_hour() {
    let r = replay(&[data(SCENARIOS).to_str().unwrap()]);
    let used: Vec<&Value> = r
        .findings
        .iter()
        .filter(|f| f["rule"] == "root_token.used")
        .collect();
    let mut per_accessor: BTreeMap<String, usize> = BTreeMap::new();
    for f in &used {
        *per_accessor
            .entry(f["actor"]["accessor"].to_string())
            .or_default() += 1;
    }
    // The capture lasts minutes: one finding per distinct root token.
    assert!(per_accessor.values().all(|n| *n == 1), "{per_accessor:?}");
    assert!(used.len() >= 3);
    assert!(r.stats["suppressed"].as_u64().unwrap() > 50);
}

#[test]
fn scenario_failed_logins_are_all_found_and_nothing_else() {
    let r = replay(&[data(SCENARIOS).to_str().unwrap()]);
    let got: BTreeSet<u64> = r
        .findings
        .iter()
        .filter(|f| f["category"] == "failed_login")
        .map(|f| f["source"]["line"].as_u64().unwrap())
        .collect();
    let log = scenario_entries();
    let responses_in = |scenario: &str, step: &str| -> Vec<u64> {
        lines_of(scenario, step)
            .filter(|n| log[*n as usize - 1]["type"] == "response")
            .collect()
    };
    let mut want = BTreeSet::new();
    for (sc, st) in [
        ("01-userpass", "wrong_password"),
        ("01-userpass", "unknown_user"),
        ("01-userpass", "lockout_failures"),
        ("01-userpass", "lockout_right_password"),
        ("01-userpass", "root_policy_user"),
        ("02-approle", "bad_secret_id"),
        ("02-approle", "bad_role_id"),
        ("02-approle", "with_caller_token"),
        ("03-unmounted-method", "write_ldap_login"),
        ("03-unmounted-method", "login_ldap_path"),
        ("03-unmounted-method", "approle_unmounted"),
        ("03-unmounted-method", "with_root_token"),
        ("04-bad-token", "bad_token_kv_get"),
        ("04-bad-token", "bad_token_read"),
        ("04-bad-token", "bad_token_lookup_self"),
        ("04-bad-token", "bad_token_realistic"),
        ("04-bad-token", "missing_token_kv_get"),
        ("04-bad-token", "missing_token_read"),
        ("04-bad-token", "revoked_token_use"),
        ("12-namespace", "login_wrong_password"),
        ("12-namespace", "login_unknown_user"),
    ] {
        let lines = responses_in(sc, st);
        assert!(!lines.is_empty(), "{sc}/{st}");
        want.extend(lines);
    }
    assert_eq!(got, want);
}

#[test]
fn scenario_root_tokens_created_are_all_found_and_nothing_else() {
    let r = replay(&[data(SCENARIOS).to_str().unwrap()]);
    let got: BTreeSet<u64> = r
        .findings
        .iter()
        .filter(|f| f["category"] == "root_token_created")
        .map(|f| f["source"]["line"].as_u64().unwrap())
        .collect();
    let last_of = |sc: &str, st: &str| *lines_of(sc, st).end();
    let mut want = BTreeSet::from([3u64]); // dev bootstrap, request id dev-gen-root
    for (sc, st) in [
        ("06-root-tokens", "create_policy_root"),
        ("06-root-tokens", "create_inherit_root"),
        ("06-root-tokens", "create_orphan"),
        ("06-root-tokens", "create_no_parent"),
        ("06-root-tokens", "create_orphan_endpoint"),
        ("06-root-tokens", "role_create"),
        ("06-root-tokens", "wrapped_unwrap"),
        ("07-generate-root", "update_complete"),
    ] {
        want.insert(last_of(sc, st));
    }
    assert_eq!(got, want);
}

#[test]
fn scenario_privileged_endpoints_are_all_found_and_nothing_else() {
    let r = replay(&[data(SCENARIOS).to_str().unwrap()]);
    let got: BTreeSet<(String, u64)> = rule_lines(&r.findings)
        .into_iter()
        .filter(|(rule, _)| rule.starts_with("privileged."))
        .collect();
    let log = scenario_entries();
    let mut want = BTreeSet::new();
    for (i, e) in log.iter().enumerate() {
        let path = e["request"]["path"]
            .as_str()
            .unwrap_or("")
            .trim_end_matches('/');
        let op = e["request"]["operation"].as_str().unwrap_or("");
        let write = matches!(op, "create" | "update" | "delete" | "patch");
        let rule = if path == "sys/audit/test" && e["request"]["client_token"].is_null() {
            Some("privileged.audit_device_probe")
        } else if path.starts_with("sys/generate-root") && write {
            Some("privileged.generate_root")
        } else if path.starts_with("sys/rotate/root") && write {
            Some("privileged.root_key_rotation")
        } else if (path == "sys/rotate"
            || path.starts_with("sys/rotate/keyring")
            || path == "sys/rotate/config")
            && write
        {
            Some("privileged.barrier_rotation")
        } else if path.starts_with("sys/audit/") && write {
            Some("privileged.audit_device_change")
        } else if path.starts_with("sys/raw") {
            Some("privileged.raw_storage")
        } else if path.starts_with("sys/audit-hash/") {
            Some("privileged.audit_hash")
        } else if (path.starts_with("sys/policies/acl/") || path.starts_with("sys/policy/"))
            && write
        {
            Some("privileged.policy_change")
        } else if (path.starts_with("sys/auth/") || path.starts_with("sys/mounts/auth/")) && write {
            Some("privileged.auth_method_change")
        } else if (path.starts_with("sys/mounts/") || path == "sys/remount") && write {
            Some("privileged.mount_change")
        } else if path.starts_with("sys/namespaces/") && write {
            Some("privileged.namespace_change")
        } else if path.starts_with("sys/plugins/catalog/") && write {
            Some("privileged.plugin_catalog")
        } else if path.starts_with("sys/config/") && write {
            Some("privileged.config_change")
        } else if path == "sys/seal" && write {
            Some("privileged.seal_or_step_down")
        } else if path.starts_with("sys/leases/revoke-") && write {
            Some("privileged.lease_mass_revoke")
        } else {
            None
        };
        if let Some(rule) = rule {
            want.insert((rule.to_owned(), i as u64 + 1));
        }
    }
    assert!(want.len() > 60);
    // Correlation: a request whose response (same request.id) fires the same
    // rule is reported once, as the response, naming the request's line.
    let id_of = |line: u64| log[line as usize - 1]["request"]["id"].as_str();
    let type_of = |line: u64| log[line as usize - 1]["type"].as_str().unwrap_or("");
    let mut paired = BTreeMap::new();
    for (rule, line) in &want {
        if type_of(*line) != "request" || id_of(*line).is_none() {
            continue;
        }
        let response = want.iter().find(|(r, l)| {
            r == rule && *l > *line && type_of(*l) == "response" && id_of(*l) == id_of(*line)
        });
        if let Some((_, resp)) = response {
            paired.insert((rule.clone(), *resp), *line);
        }
    }
    assert!(paired.len() > 30, "{}", paired.len());
    for ((rule, _), req) in &paired {
        want.remove(&(rule.clone(), *req));
    }
    assert_eq!(got, want);
    for f in &r.findings {
        let key = (
            f["rule"].as_str().unwrap().to_owned(),
            f["source"]["line"].as_u64().unwrap(),
        );
        let request = f["detail"]["request"]["line"].as_u64();
        if key.0.starts_with("privileged.") {
            assert_eq!(request, paired.get(&key).copied(), "{f}");
        }
        // A request reported alone (held for its response: every rule
        // without a window or throttle) says whether a response came.
        if key.0.starts_with("privileged.") && f["type"] == "request" && f["request_id"].is_string()
        {
            assert!(f["detail"].get("response").is_some(), "{f}");
            match f["detail"]["response"]["line"].as_u64() {
                Some(resp) => {
                    assert_eq!(type_of(resp), "response");
                    assert_eq!(id_of(resp), f["request_id"].as_str());
                    assert_ne!(f["detail"]["outcome"], "attempted");
                }
                None => {
                    let id = f["request_id"].as_str();
                    assert!(
                        !log.iter()
                            .any(|e| e["type"] == "response" && e["request"]["id"].as_str() == id),
                        "{f}"
                    );
                }
            }
        }
    }
}

#[test]
fn threads_and_read_sizes_do_not_change_the_result() {
    // Many copies of the capture: blocks split across workers out of order.
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.log");
    let one = std::fs::read(data(SCENARIOS)).unwrap();
    let mut all = Vec::new();
    for _ in 0..12 {
        all.extend_from_slice(&one);
    }
    std::fs::write(&big, &all).unwrap();
    let a = replay(&[big.to_str().unwrap(), "--threads", "1"]);
    let b = replay(&[big.to_str().unwrap(), "--threads", "4"]);
    assert_eq!(a.findings, b.findings);
    assert_eq!(a.stats["entries"], b.stats["entries"]);
}

/// Settled files are memory-mapped and split across threads; fresh ones are
/// read. Both paths, and any split, must give the same findings and counts,
/// hostile lines and an unterminated last line included.
#[test]
fn mapped_and_read_files_give_identical_results() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.log");
    let one = std::fs::read(data(SCENARIOS)).unwrap();
    let mut all = Vec::new();
    // Over the 32 MiB split threshold, with bad lines near the split points.
    while all.len() < 40 << 20 {
        all.extend_from_slice(&one);
        all.extend_from_slice(b"not json\n{\"type\":\xff}\n");
    }
    let mut huge = br#"{"type":"request","request":{"path":"sys/raw/huge"}}"#.to_vec();
    huge.resize(huge.len() + (2 << 20), b' ');
    all.extend_from_slice(&huge);
    all.push(b'\n');
    all.extend_from_slice(br#"{"type":"request","request":{"path":"sys/raw/cut"#);
    std::fs::write(&path, &all).unwrap();
    let p = path.to_str().unwrap();
    let fresh = replay(&[p, "--max-line-bytes", "1MiB"]);
    // Ten minutes old: settled, so mapped.
    let f = std::fs::File::options().write(true).open(&path).unwrap();
    f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(600))
        .unwrap();
    drop(f);
    let mapped = replay(&[p, "--max-line-bytes", "1MiB", "--threads", "2"]);
    let mapped1 = replay(&[p, "--max-line-bytes", "1MiB", "--threads", "1"]);
    let read = replay(&[p, "--max-line-bytes", "1MiB", "--threads", "2", "--no-mmap"]);
    for other in [&mapped, &mapped1, &read] {
        assert_eq!(code(other), 0);
        assert_eq!(other.findings, fresh.findings);
        for k in [
            "entries",
            "lines",
            "bytes",
            "invalid_json",
            "invalid_utf8",
            "oversize",
            "truncated",
            "candidates",
        ] {
            assert_eq!(other.stats[k], fresh.stats[k], "{k}");
        }
    }
    assert_eq!(fresh.stats["oversize"], 1);
    assert_eq!(fresh.stats["truncated"], 1);
    assert!(fresh.stats["invalid_utf8"].as_u64().unwrap() > 40);
}

#[test]
fn rules_explain_shows_needs_fixtures_and_definition() {
    let out = bin()
        .args(["rules", "explain", "privileged.raw_storage"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    for want in [
        "privileged.raw_storage (",
        "What it needs:",
        "waits for its response",
        "expect fire [ok]",
        "expect quiet [ok]",
        "[[rule]]\nid = \"privileged.raw_storage\"",
    ] {
        assert!(text.contains(want), "{want:?} not in:\n{text}");
    }
    let json = bin()
        .args([
            "rules",
            "explain",
            "brute_force.address",
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["needs"]["window"]["count"], 10);
    assert!(v["fixtures"].as_array().unwrap().len() >= 2);
    let missing = bin().args(["rules", "explain", "nope"]).output().unwrap();
    assert_eq!(missing.status.code(), Some(2));
}
