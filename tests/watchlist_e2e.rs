//! Watch lists end to end with a real OpenBao server.
//!
//! Starts `bao server -dev` with two config-declared file audit devices (`file-audit` and
//! `file-audit-2`: two salts), asks `sys/audit-hash/<device>` of each for the hashes of
//! `root`, `invalid username or password` and `invalid role or secret ID`, and writes them as
//! watch lists. Then creates a wrapped root token and (near miss) a wrapped and an unwrapped
//! default token, looks up the root token by token and by accessor (and, near miss, a default
//! token), logs in with an unknown userpass user and an unknown AppRole role_id (and, near miss,
//! a good userpass login). After the server stopped, `auditwatch replay --device … --watchlist …`
//! on each device's log must find exactly those events, naming the hashed wrapped accessor the
//! server gives for the token it wrapped; with the other device's lists (or lists declared for
//! another device) nothing of the watch-list rules fires.
//!
//! Needs `bao` (OpenBao 2.7.x, `scripts/install-openbao.sh`). Without it the test is skipped with
//! a message, unless `CI` is set, where it fails. `AUDITWATCH_BAO=/path/to/bao` picks a binary.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

mod support;
use support::{openbao_test, replay, AuditDevice, Bao, BaoTest};

const WATCH_RULES: [&str; 4] = [
    "watchlist.match",
    "root_token.wrapped_created",
    "root_token.lookup",
    "login.failed_hashed_error",
];
const DEVICES: [&str; 2] = ["file-audit", "file-audit-2"];

/// What `device` writes for `input`, as the server says (`sys/audit-hash`).
fn audit_hash(bao: &Bao, device: &str, input: &str) -> String {
    let h = bao.ok(&[
        "write",
        "-field=hash",
        &format!("sys/audit-hash/{device}"),
        &format!("input={input}"),
    ]);
    assert!(h.starts_with("hmac-sha256:") && h.len() == 76, "{h}");
    h
}

// ------------------------------------------------------------------ the test

#[test]
fn watch_lists_with_real_openbao_devices() {
    openbao_test(None, scenario);
}

/// The hashes one device gave for the watch-list strings.
struct DeviceHashes {
    root: String,
    bad_password: String,
    bad_role: String,
}

/// Writes the lists of `hashes` into `dir/<tag>/`: (root list, login-errors list).
fn write_lists(dir: &Path, tag: &str, h: &DeviceHashes) -> (PathBuf, PathBuf) {
    let d = dir.join(tag);
    std::fs::create_dir_all(&d).unwrap();
    let root = d.join("root.list");
    std::fs::write(
        &root,
        format!(
            "# bao write sys/audit-hash/<device> input=root\n{}  root\n",
            h.root
        ),
    )
    .unwrap();
    let errors = d.join("login-errors.list");
    std::fs::write(
        &errors,
        format!(
            "{}  invalid username or password\n{}  invalid role or secret ID\n",
            h.bad_password, h.bad_role
        ),
    )
    .unwrap();
    (root, errors)
}

/// `auditwatch replay ARGS LOG`: the findings and stderr.
fn replay_log(dir: &Path, log: &Path, args: &[String]) -> (Vec<Value>, String) {
    let mut args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
    args.push(log.as_os_str());
    replay(dir, &args)
}

fn watch_args(device: &str, root: &Path, errors: &Path) -> Vec<String> {
    vec![
        "--device".into(),
        device.into(),
        "--watchlist".into(),
        format!("root={}", root.display()),
        "--watchlist".into(),
        format!("login-errors={}", errors.display()),
    ]
}

fn with_rule<'a>(f: &'a [Value], rule: &str) -> Vec<&'a Value> {
    f.iter().filter(|f| f["rule"] == rule).collect()
}

/// (rule, type, request id, path) of the watch-list findings.
fn watch_keys(f: &[Value]) -> BTreeSet<(String, String, String, String)> {
    f.iter()
        .filter(|f| WATCH_RULES.contains(&f["rule"].as_str().unwrap_or("")))
        .map(|f| {
            let s = |k: &str| f[k].as_str().unwrap_or("").to_owned();
            (s("rule"), s("type"), s("request_id"), s("path"))
        })
        .collect()
}

#[allow(clippy::too_many_lines)]
fn scenario(t: &BaoTest) {
    let dir = t.dir;
    let logs: Vec<PathBuf> = DEVICES
        .iter()
        .map(|d| dir.join(format!("{d}.log")))
        .collect();
    let mut server = t.start_server(
        DEVICES
            .iter()
            .zip(&logs)
            .map(|(d, log)| AuditDevice::file(d, log))
            .collect(),
    );
    let bao = server.bao().clone();
    let port = server.port();
    eprintln!(
        "watchlist_e2e: {}, server on 127.0.0.1:{port}",
        bao.ok(&["version"])
    );

    // ---------------------------------------------------------- the hashes, from the server
    let hashes: Vec<DeviceHashes> = DEVICES
        .iter()
        .map(|d| DeviceHashes {
            root: audit_hash(&bao, d, "root"),
            bad_password: audit_hash(&bao, d, "invalid username or password"),
            bad_role: audit_hash(&bao, d, "invalid role or secret ID"),
        })
        .collect();
    assert_ne!(
        hashes[0].root, hashes[1].root,
        "each device has its own salt"
    );

    // ---------------------------------------------------------- drive it
    // A wrapped root token (the event), a wrapped and an unwrapped default token (near misses).
    let wrapped = bao.json(&[
        "token",
        "create",
        "-policy=root",
        "-wrap-ttl=60s",
        "-format=json",
    ]);
    let wrapped_accessor = wrapped["wrap_info"]["wrapped_accessor"]
        .as_str()
        .unwrap_or_else(|| panic!("no wrap_info.wrapped_accessor: {wrapped}"))
        .to_owned();
    bao.ok(&["token", "create", "-policy=default", "-wrap-ttl=60s"]);
    let default_token = bao.ok(&["token", "create", "-policy=default", "-field=token"]);

    // The root token looked up by token and by accessor; a default token looked up.
    let root_info = bao.json(&["token", "lookup", "-format=json", "root"]);
    let root_accessor = root_info["data"]["accessor"].as_str().unwrap().to_owned();
    bao.ok(&["token", "lookup", "-accessor", &root_accessor]);
    bao.ok(&["token", "lookup", &default_token]);

    // Logins: a good one, an unknown user, an unknown AppRole role_id.
    bao.userpass_users(&[("alice", "alice-pass-1")]);
    bao.login_ok("alice", "alice-pass-1");
    bao.login_fails("nobody", "whatever");
    bao.ok(&["auth", "enable", "approle"]);
    bao.ok(&["write", "auth/approle/role/ci", "token_policies=default"]);
    bao.fails_as(
        None,
        &[
            "write",
            "auth/approle/login",
            "role_id=not-a-role-id",
            "secret_id=not-a-secret-id",
        ],
    );
    // What the finding must name: the wrapped accessor, as each device writes it.
    let wrapped_accessor_h: Vec<String> = DEVICES
        .iter()
        .map(|d| audit_hash(&bao, d, &wrapped_accessor))
        .collect();

    server.stop();

    // ---------------------------------------------------------- each device, its own lists
    let mut per_device = Vec::new();
    for (i, d) in DEVICES.iter().enumerate() {
        let (root, errors) = write_lists(dir, d, &hashes[i]);
        let (f, stderr) = replay_log(dir, &logs[i], &watch_args(d, &root, &errors));
        assert!(stderr.is_empty(), "{d}: {stderr}");

        let w = with_rule(&f, "root_token.wrapped_created");
        assert_eq!(
            w.len(),
            1,
            "{d}: one wrapped root token (not the wrapped default one): {w:?}"
        );
        assert_eq!(w[0]["path"], "auth/token/create");
        assert_eq!(
            w[0]["detail"]["response.wrap_info.wrapped_accessor"], wrapped_accessor_h[i],
            "{d}: the token the server wrapped"
        );
        let hit = &w[0]["detail"]["watchlist"][0];
        assert_eq!(hit["device"], *d);
        assert_eq!(hit["list"], "root");
        assert_eq!(hit["label"], "root");
        assert_eq!(hit["field"], "request.data.policies[0]");

        let l = with_rule(&f, "root_token.lookup");
        let paths: BTreeSet<&str> = l.iter().map(|f| f["path"].as_str().unwrap()).collect();
        assert_eq!(
            l.len(),
            2,
            "{d}: by token and by accessor, not the default token: {l:?}"
        );
        assert_eq!(
            paths,
            BTreeSet::from(["auth/token/lookup", "auth/token/lookup-accessor"])
        );
        assert!(l
            .iter()
            .all(|f| f["detail"]["watchlist"][0]["field"] == "response.data.policies[0]"));

        let e = with_rule(&f, "login.failed_hashed_error");
        let got: BTreeSet<(&str, &str)> = e
            .iter()
            .map(|f| {
                (
                    f["path"].as_str().unwrap(),
                    f["detail"]["watchlist"][0]["label"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            BTreeSet::from([
                ("auth/userpass/login/nobody", "invalid username or password"),
                ("auth/approle/login", "invalid role or secret ID"),
            ]),
            "{d}: the good login of alice is not one"
        );
        assert!(
            with_rule(&f, "watchlist.match").is_empty(),
            "{d}: only root and login-errors lists"
        );
        per_device.push(watch_keys(&f));
    }
    // Both devices saw the same events.
    assert_eq!(per_device[0], per_device[1]);
    assert_eq!(per_device[0].len(), 5, "{:?}", per_device[0]);

    // ---------------------------------------------------------- wrong lists
    // file-audit's log with file-audit-2's hashes (another salt) declared as its own.
    let (root2, errors2) = write_lists(dir, "file-audit-2", &hashes[1]);
    let (f, stderr) = replay_log(dir, &logs[0], &watch_args("file-audit", &root2, &errors2));
    assert!(stderr.is_empty(), "{stderr}");
    assert!(watch_keys(&f).is_empty(), "{:?}", watch_keys(&f));
    // file-audit's own lists, declared for another device: ignored, with a warning.
    let (root1, errors1) = write_lists(dir, "file-audit", &hashes[0]);
    let (f, stderr) = replay_log(
        dir,
        &logs[0],
        &[
            "--device".into(),
            "file-audit".into(),
            "--watchlist".into(),
            format!("file-audit-2=root={}", root1.display()),
            "--watchlist".into(),
            format!("file-audit-2=login-errors={}", errors1.display()),
        ],
    );
    assert!(watch_keys(&f).is_empty(), "{:?}", watch_keys(&f));
    assert!(
        stderr.contains("belongs to device \"file-audit-2\""),
        "{stderr}"
    );
    // Without lists, nothing either.
    let (f, _) = replay_log(dir, &logs[0], &[]);
    assert!(watch_keys(&f).is_empty());
}
