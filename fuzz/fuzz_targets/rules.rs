#![no_main]
//! Rule files: TOML text → `RuleSet::from_toml`, then the set's fixtures and
//! prefilter on a few fixed lines.
//!
//! Invariants: no panic, no stack overflow, returns in reasonable time (run
//! with `-max_len=65536`; the limits of `rules::cond` bound nesting and
//! regex size). Also: every fixed line and every fixture line that a rule
//! matches passes the prefilter (`is_candidate`, or `is_gate_candidate` for a
//! lazy window trigger): the prefilter "may say
//! maybe too often, never too rarely", else that rule silently never fires
//! in normal (non-strict) mode.

use auditwatch::parse::parse_str;
use auditwatch::rules::RuleSet;
use libfuzzer_sys::fuzz_target;

/// Lines the fuzzed rules are run on: real OpenBao entries plus edited ones
/// with JSON escapes, a LIST path (trailing `/`), a login path, and string
/// values inside `data`.
const LINES: &[&str] = &[
    r#"{"time":"2026-11-25T23:55:13.685331392Z","type":"request","auth":{"token_type":"default"},"request":{"id":"7ed649f4-ab49-0564-1104-d41c382d5409","operation":"update","namespace":{"id":"root"},"path":"sys/audit/test"}}"#,
    r#"{"time":"2026-11-25T23:44:57.126092716Z","type":"response","auth":{"token_type":"default"},"request":{"id":"23e8cab0-f0fb-ea85-07af-2580437b854c","operation":"update","mount_point":"auth/userpass/","mount_type":"userpass","mount_class":"auth","namespace":{"id":"root"},"path":"auth/userpass/login/alice","data":{"password":"hmac-sha256:5d74e5d8"},"remote_address":"127.0.0.1","remote_port":57936},"response":{"mount_point":"auth/userpass/","mount_type":"userpass","mount_class":"auth","data":{"error":"hmac-sha256:e1a78264"}},"error":"invalid credentials"}"#,
    r#"{"time":"2026-11-25T23:55:13.701927076Z","type":"response","auth":{"client_token":"hmac-sha256:a1353ae0","accessor":"hmac-sha256:8ff32f4b","display_name":"root","policies":["root"],"token_policies":["root"],"metadata":{"username":"root"},"policy_results":{"allowed":true},"token_type":"service","token_ttl":0,"num_uses":3},"request":{"id":"dev-gen-root","client_id":"0DHqvq2D","operation":"update","mount_point":"auth/token/","mount_type":"token","mount_class":"auth","client_token":"hmac-sha256:a1353ae0","client_token_accessor":"hmac-sha256:8ff32f4b","namespace":{"id":"root"},"path":"auth/token/create","data":{"no_parent":true,"policies":["root"]},"wrap_ttl":30,"policy_override":false},"response":{"auth":{"display_name":"token","policies":["root"],"token_policies":["root"]},"wrap_info":{"ttl":30,"token":"hmac-sha256:aa","accessor":"bb","creation_time":"2026-11-25T23:55:13Z","creation_path":"sys/wrapping/wrap","wrapped_accessor":"cc"},"data":{"keys":["a","b"],"complete":true}}}"#,
    r#"{"time":"2026-11-25T23:55:29.176346839Z","type":"response","auth":{"policies":["default","ops"]},"request":{"id":"x1","operation":"list","namespace":{"id":"3RhCow","path":"team-a/"},"path":"sys/policies/acl/"},"response":{"data":{"keys":["default","root"]}}}"#,
    r#"{"type":"request","request":{"operation":"read","path":"sys\/raw\/core\/\u0061udit","data":{"note":"a \"quoted\" value","path":"C:\\secret\\raw"}},"error":"1 error occurred:\n\t* permission denied\n\n"}"#,
    r#"{"type":"kmip-response","request":{"operation":"update","path":"auth/ldap/login/bob/"},"response":{"data":{"error":"invalid credentials","errors":["permission denied"]}},"error":""}"#,
];

fn check_prefilter(set: &RuleSet, line: &str) {
    let Ok(entry) = parse_str(line) else { return };
    // Any role (a rule's `when`, or a window rule's `trigger`).
    let first = set.matches(&entry).next().map(|(i, _role)| i);
    if let Some(i) = first {
        // A lazy window trigger's line goes to the judge through the
        // trigger gate instead.
        assert!(
            set.is_candidate(line.as_bytes()) || set.is_gate_candidate(line.as_bytes()),
            "rule {:?} matches a line the prefilter skips: {line}",
            set.get(i).id
        );
    }
}

/// `AUDITWATCH_FUZZ_NO_PREFILTER_CHECK=1` skips the prefilter check (to fuzz
/// past a known prefilter miss, see fuzz/README.md).
fn prefilter_check_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("AUDITWATCH_FUZZ_NO_PREFILTER_CHECK").is_none())
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(set) = RuleSet::from_toml("fuzz.toml", text) else {
        return;
    };
    let _ = set.test_fixtures();
    let _ = set.literal_count();
    for line in LINES {
        let _ = set.is_candidate(line.as_bytes());
        if let Ok(entry) = parse_str(line) {
            let _ = set.matches(&entry).count();
        }
    }
    if prefilter_check_enabled() {
        for line in LINES {
            check_prefilter(&set, line);
        }
        for rule in set.rules() {
            for fx in &rule.fixtures {
                check_prefilter(&set, fx.line.trim_end_matches(['\r', '\n']));
            }
        }
    }
});
