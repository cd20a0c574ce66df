//! Watch lists end to end on the real capture (`tests/data/openbao/scenarios.log`, whose
//! device's salt and server-computed hashes are in `scenarios.hashes.json`):
//!
//! * `auditwatch hash` prints what `sys/audit-hash` returned, from `--salt`, `--salt-file` and
//!   stdin;
//! * `auditwatch replay --device file-audit --watchlist …` finds exactly the entries an
//!   independent reading of the log says the lists reveal, and names list, label and field;
//!   with another device's lists nothing of the watch-list rules fires;
//! * `auditwatch config check` validates `device` and `[[watchlist]]`;
//! * `auditwatch run` binds each source's device's lists, and a SIGHUP re-reads them.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);
const WATCH_RULES: [&str; 4] = [
    "watchlist.match",
    "root_token.wrapped_created",
    "root_token.lookup",
    "login.failed_hashed_error",
];

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_auditwatch"))
}

fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/openbao")
        .join(rel)
}

fn hashes_json(capture: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(data(&format!("{capture}.hashes.json"))).unwrap())
        .unwrap()
}

/// The capture's device's hash of `input`.
fn hash(capture: &str, input: &str) -> String {
    hashes_json(capture)["hashes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["input"] == input)
        .unwrap_or_else(|| panic!("no hash of {input:?} in {capture}.hashes.json"))["hash"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn entries() -> Vec<Value> {
    std::fs::read_to_string(data("scenarios.log"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// 1-based lines of a step (scenarios.steps.tsv).
fn step(scenario: &str, name: &str) -> std::ops::RangeInclusive<u64> {
    let tsv = std::fs::read_to_string(data("scenarios.steps.tsv")).unwrap();
    for l in tsv.lines().skip(1) {
        let c: Vec<&str> = l.split('\t').collect();
        if c[0] == scenario && c[1] == name {
            return c[2].parse().unwrap()..=c[3].parse().unwrap();
        }
    }
    panic!("no step {scenario}/{name}");
}

fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        Value::Object(m) => m.values().for_each(|x| strings(x, out)),
        _ => {}
    }
}

fn holds(v: &Value, h: &str) -> bool {
    let mut all = Vec::new();
    strings(v, &mut all);
    all.iter().any(|s| s == h)
}

fn findings(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a finding is JSON"))
        .collect()
}

/// Lines of the findings of each watch-list rule.
fn watch_lines(f: &[Value]) -> BTreeMap<String, BTreeSet<u64>> {
    let mut m: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for f in f {
        let rule = f["rule"].as_str().unwrap();
        if WATCH_RULES.contains(&rule) {
            m.entry(rule.to_owned())
                .or_default()
                .insert(f["source"]["line"].as_u64().unwrap());
        }
    }
    m
}

#[test]
fn hash_prints_what_the_server_computed() {
    let j = hashes_json("scenarios");
    let salt = j["salt"].as_str().unwrap();
    let served: Vec<(&str, &str)> = j["hashes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["source"] == "sys/audit-hash")
        .map(|h| (h["input"].as_str().unwrap(), h["hash"].as_str().unwrap()))
        .collect();
    assert!(served.len() >= 10);
    let out = bin()
        .args(["hash", "--salt", salt])
        .args(served.iter().map(|(i, _)| *i))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let want: Vec<&str> = served.iter().map(|(_, h)| *h).collect();
    assert_eq!(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .collect::<Vec<_>>(),
        want
    );

    // --salt-file (as `bao read -field=value sys/raw/…` writes it, with a newline) and values
    // from stdin, one per line, mixed with arguments.
    let dir = tempfile::tempdir().unwrap();
    let salt_file = dir.path().join("salt");
    std::fs::write(&salt_file, format!("{salt}\n")).unwrap();
    let mut child = bin()
        .arg("hash")
        .arg("--salt-file")
        .arg(&salt_file)
        .args(["root", "-", "bogus"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"invalid username or password\r\ninvalid role or secret ID\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let got: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let want: Vec<String> = [
        "root",
        "invalid username or password",
        "invalid role or secret ID",
        "bogus",
    ]
    .iter()
    .map(|i| hash("scenarios", i))
    .collect();
    assert_eq!(got, want);

    // No salt, or an empty one: a usage error.
    let out = bin().args(["hash", "root"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = bin().args(["hash", "--salt", "", "root"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// List files for the capture's device: `root`, `login-errors`, and `leaked` (the bogus
/// token, with a label).
fn write_lists(dir: &Path, capture: &str) -> (PathBuf, PathBuf, PathBuf) {
    let root = dir.join(format!("{capture}-root.list"));
    std::fs::write(
        &root,
        format!("# sys/audit-hash input=root\n{}\n", hash(capture, "root")),
    )
    .unwrap();
    let errors = dir.join(format!("{capture}-login-errors.list"));
    let bogus = dir.join(format!("{capture}-leaked.list"));
    if capture == "scenarios" {
        std::fs::write(
            &errors,
            format!(
                "{}  invalid username or password\n\n{}  invalid role or secret ID\n",
                hash(capture, "invalid username or password"),
                hash(capture, "invalid role or secret ID")
            ),
        )
        .unwrap();
        std::fs::write(
            &bogus,
            format!("{}  leaked token of ci-runner\n", hash(capture, "bogus")),
        )
        .unwrap();
    } else {
        std::fs::write(&errors, format!("{}\n", hash(capture, "default"))).unwrap();
        std::fs::write(&bogus, format!("{}\n", hash(capture, "ops-admin"))).unwrap();
    }
    (root, errors, bogus)
}

fn replay_with(args: &[String]) -> Output {
    let out = bin()
        .arg("replay")
        .arg("--quiet")
        .args(args)
        .arg(data("scenarios.log"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn replay_finds_what_the_lists_reveal_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let (root, errors, leaked) = write_lists(dir.path(), "scenarios");
    let out = replay_with(&[
        "--device".into(),
        "file-audit".into(),
        "--watchlist".into(),
        format!("root={}", root.display()),
        "--watchlist".into(),
        format!("login-errors={}", errors.display()),
        "--watchlist".into(),
        format!("file-audit=leaked={}", leaked.display()),
    ]);
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let f = findings(&out);
    let got = watch_lines(&f);

    // An independent reading of the log.
    let (h_root, h_bogus) = (hash("scenarios", "root"), hash("scenarios", "bogus"));
    let errs = [
        hash("scenarios", "invalid username or password"),
        hash("scenarios", "invalid role or secret ID"),
    ];
    let mut want: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for (i, e) in entries().iter().enumerate() {
        let line = i as u64 + 1;
        let path = e["request"]["path"].as_str().unwrap_or("");
        let response = e["type"] == "response";
        let mut add = |rule: &str| {
            want.entry(rule.into()).or_default().insert(line);
        };
        if response
            && (path == "auth/token/create" || path.starts_with("auth/token/create"))
            && !e["response"]["wrap_info"].is_null()
            && holds(&e["request"]["data"]["policies"], &h_root)
        {
            add("root_token.wrapped_created");
        }
        if response
            && ["auth/token/lookup", "auth/token/lookup-accessor"].contains(&path)
            && holds(&e["response"]["data"]["policies"], &h_root)
        {
            add("root_token.lookup");
        }
        if response
            && e["response"]["auth"].is_null()
            && errs
                .iter()
                .any(|h| e["response"]["data"]["error"] == h.as_str())
        {
            add("login.failed_hashed_error");
        }
        if holds(e, &h_bogus) {
            add("watchlist.match");
        }
    }
    // A request and its response (same request.id) firing the same rule
    // are reported once, as the response naming the request's line.
    let log = entries();
    let id_of = |line: u64| log[line as usize - 1]["request"]["id"].as_str();
    let mut paired = BTreeMap::new();
    for (rule, lines) in &mut want {
        let requests: Vec<u64> = lines
            .iter()
            .copied()
            .filter(|l| log[*l as usize - 1]["type"] == "request" && id_of(*l).is_some())
            .collect();
        for req in requests {
            let resp = lines.iter().copied().find(|l| {
                *l > req && log[*l as usize - 1]["type"] == "response" && id_of(*l) == id_of(req)
            });
            if let Some(resp) = resp {
                lines.remove(&req);
                paired.insert((rule.clone(), resp), req);
            }
        }
    }
    assert!(!paired.is_empty());
    assert_eq!(got, want);
    for x in &f {
        let key = (
            x["rule"].as_str().unwrap().to_owned(),
            x["source"]["line"].as_u64().unwrap(),
        );
        if let Some(req) = paired.get(&key) {
            assert_eq!(x["detail"]["request"]["line"], *req, "{x}");
        }
    }

    // What the scenarios were made to show is in it.
    let first = |s: &str, n: &str| *step(s, n).start();
    assert!(want["root_token.wrapped_created"]
        .contains(&(first("06-root-tokens", "wrapped_create") + 1)));
    for k in [1, 5] {
        assert!(
            want["root_token.lookup"].contains(&(first("06-root-tokens", "root_token_lookup") + k))
        );
    }
    for (s, n) in [
        ("01-userpass", "wrong_password"),
        ("01-userpass", "unknown_user"),
        ("02-approle", "bad_secret_id"),
        ("02-approle", "bad_role_id"),
        ("12-namespace", "login_unknown_user"),
    ] {
        assert!(
            want["login.failed_hashed_error"].contains(&(first(s, n) + 1)),
            "{s}/{n}"
        );
    }
    // (Its request and response both hold the leaked token: one finding, the response.)
    assert!(want["watchlist.match"].contains(&(first("04-bad-token", "bad_token_read") + 1)));
    // Near misses: the wrapped default token, the lookup-self of a root token, another reason.
    assert!(
        !want["root_token.wrapped_created"].contains(&(first("14-wrapping-replay", "wrap") + 1))
    );
    assert!(
        !want["root_token.lookup"].contains(&(first("06-root-tokens", "root_token_lookup") + 7))
    );
    assert!(!want["login.failed_hashed_error"]
        .contains(&(first("01-userpass", "root_policy_user") + 1)));

    // The detail names device, list, label, field and list line.
    let wrapped = f
        .iter()
        .find(|f| f["rule"] == "root_token.wrapped_created")
        .unwrap();
    let w = &wrapped["detail"]["watchlist"][0];
    assert_eq!(w["device"], "file-audit");
    assert_eq!(w["list"], "root");
    assert_eq!(w["label"], Value::Null);
    assert_eq!(w["field"], "request.data.policies[0]");
    assert_eq!(w["entry"], format!("{}:2", root.display()));
    let leak = f.iter().find(|f| f["rule"] == "watchlist.match").unwrap();
    let w = &leak["detail"]["watchlist"];
    assert!(w
        .as_array()
        .unwrap()
        .iter()
        .all(|w| w["label"] == "leaked token of ci-runner" && w["list"] == "leaked"));
    assert!(w
        .as_array()
        .unwrap()
        .iter()
        .any(|w| w["field"] == "request.client_token"));
    let e = f
        .iter()
        .find(|f| f["rule"] == "login.failed_hashed_error")
        .unwrap();
    assert_eq!(e["detail"]["watchlist"][0]["field"], "response.data.error");
    assert_eq!(
        e["detail"]["watchlist"][0]["label"],
        "invalid username or password"
    );

    // The other findings are those of a replay without lists.
    let plain = findings(&replay_with(&[]));
    let ids = |f: &[Value]| -> BTreeSet<String> {
        f.iter()
            .filter(|f| !WATCH_RULES.contains(&f["rule"].as_str().unwrap()))
            .map(|f| f["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&f), ids(&plain));
    assert!(watch_lines(&plain).is_empty());
}

#[test]
fn lists_of_another_device_reveal_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // The right files, but declared for another device: ignored, with a warning.
    let (root, errors, leaked) = write_lists(dir.path(), "scenarios");
    let out = replay_with(&[
        "--device".into(),
        "file-audit".into(),
        "--watchlist".into(),
        format!("socket-audit=root={}", root.display()),
        "--watchlist".into(),
        format!("socket-audit=login-errors={}", errors.display()),
        "--watchlist".into(),
        format!("socket-audit=leaked={}", leaked.display()),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(watch_lines(&findings(&out)).is_empty());
    assert!(
        stderr.contains("belongs to device \"socket-audit\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("device \"file-audit\" has no watch list \"root\": root_token.wrapped_created, root_token.lookup cannot fire"),
        "{stderr}"
    );

    // Another device's hashes of the same strings (another salt), declared as this device's.
    let (root, errors, leaked) = write_lists(dir.path(), "signals");
    let out = replay_with(&[
        "--device".into(),
        "file-audit".into(),
        "--watchlist".into(),
        format!("root={}", root.display()),
        "--watchlist".into(),
        format!("login-errors={}", errors.display()),
        "--watchlist".into(),
        format!("leaked={}", leaked.display()),
    ]);
    assert!(watch_lines(&findings(&out)).is_empty());
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_list_files_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain.list");
    std::fs::write(&plain, "# the root token\nroot\n").unwrap();
    let out = bin()
        .arg("replay")
        .arg("--watchlist")
        .arg(format!("root={}", plain.display()))
        .arg(data("scenarios.log"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:2", plain.display())), "{err}");
    assert!(err.contains("not an audit-log HMAC"), "{err}");
    let out = bin()
        .args(["replay", "--watchlist", "root"])
        .arg(data("scenarios.log"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

fn config(dir: &Path, extra: &str) -> PathBuf {
    let p = dir.join("aw.toml");
    std::fs::write(
        &p,
        format!(
            "data_dir = \"{data}\"\n\
             [[sources]]\nname = \"a\"\ntype = \"listen\"\ntcp = [\"127.0.0.1:0\"]\ndevice = \"dev-a\"\narchive = false\n\
             [[sources]]\nname = \"b\"\ntype = \"listen\"\ntcp = [\"127.0.0.1:0\"]\ndevice = \"dev-b\"\narchive = false\n\
             [merge]\nwindow = \"0s\"\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\n\
             [[sinks]]\nname = \"out\"\ntype = \"file\"\npath = \"{out}\"\n{extra}",
            data = dir.join("data").display(),
            out = dir.join("out.jsonl").display()
        ),
    )
    .unwrap();
    p
}

#[test]
fn config_check_validates_devices_and_lists() {
    let dir = tempfile::tempdir().unwrap();
    let (root, _, _) = write_lists(dir.path(), "scenarios");
    let ok = config(
        dir.path(),
        &format!(
            "[[watchlist]]\ndevice = \"dev-a\"\nname = \"root\"\nfile = \"{}\"\n",
            root.display()
        ),
    );
    let out = bin().args(["config", "check"]).arg(&ok).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("1 watch lists"), "{text}");

    for (extra, needle) in [
        (
            format!(
                "[[watchlist]]\ndevice = \"dev-c\"\nname = \"root\"\nfile = \"{}\"\n",
                root.display()
            ),
            "no source has `device = \"dev-c\"`",
        ),
        (
            format!(
                "[[watchlist]]\ndevice = \"dev-a\"\nname = \"root\"\nfile = \"{0}\"\n\
                 [[watchlist]]\ndevice = \"dev-a\"\nname = \"root\"\nfile = \"{0}\"\n",
                root.display()
            ),
            "configured twice",
        ),
        (
            "[[watchlist]]\ndevice = \"dev-a\"\nname = \"root\"\nfile = \"x\"\nlabel = 1\n".into(),
            "unknown key `label`",
        ),
        (
            "[[watchlist]]\ndevice = \"dev-a\"\nname = \"root\"\nfile = \"missing.list\"\n".into(),
            "missing.list",
        ),
    ] {
        let p = config(dir.path(), &extra);
        let out = bin().args(["config", "check"]).arg(&p).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{extra}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{extra}: {err}");
    }
}

/// A child killed and reaped when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// stderr of the service, line by line.
struct Stderr {
    all: Arc<Mutex<Vec<String>>>,
    rx: Receiver<String>,
}

impl Stderr {
    fn spawn(pipe: impl Read + Send + 'static) -> Stderr {
        let all = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let keep = all.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(pipe).lines() {
                let Ok(l) = l else { break };
                keep.lock().unwrap().push(l.clone());
                let _ = tx.send(l);
            }
        });
        Stderr { all, rx }
    }

    fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            match self
                .rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => {}
                Err(_) => panic!(
                    "no line with {needle:?}; so far:\n{}",
                    self.all.lock().unwrap().join("\n")
                ),
            }
        }
    }
}

fn out_findings(dir: &Path, rule: &str) -> Vec<Value> {
    std::fs::read_to_string(dir.join("out.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|f| f["rule"] == rule)
        .collect()
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn run_binds_each_sources_device_and_reloads_lists() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (root, _, _) = write_lists(dir, "scenarios");
    let list_a = |r: &Path| {
        format!(
            "[[watchlist]]\ndevice = \"dev-a\"\nname = \"root\"\nfile = \"{}\"\n",
            r.display()
        )
    };
    let cfg = config(dir, &list_a(&root));
    let mut c = bin();
    c.current_dir(dir)
        .arg("run")
        .arg("-c")
        .arg(&cfg)
        .env_remove("AUDITWATCH_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut svc = Proc(c.spawn().expect("spawn auditwatch run"));
    let err = Stderr::spawn(svc.0.stderr.take().unwrap());
    let addr_of = |l: String| {
        l.split("tcp ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap()
            .to_owned()
    };
    let a = addr_of(err.wait_for("(source \"a\")"));
    let b = addr_of(err.wait_for("(source \"b\")"));
    err.wait_for("ready");
    let warned = err.all.lock().unwrap().join("\n");
    assert!(
        warned.contains("no watch list \"root\"") && warned.contains("dev-b"),
        "{warned}"
    );

    let log: Vec<String> = std::fs::read_to_string(data("scenarios.log"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let wrapped = &log[*step("06-root-tokens", "wrapped_create").start() as usize]; // +1, 0-based
    let lookup = &log[*step("06-root-tokens", "root_token_lookup").start() as usize];
    // The same entry reaches both sources: only dev-a has the list.
    let mut ca = TcpStream::connect(&a).unwrap();
    let mut cb = TcpStream::connect(&b).unwrap();
    writeln!(cb, "{wrapped}").unwrap();
    writeln!(ca, "{wrapped}").unwrap();
    wait_until("the wrapped root token of dev-a", || {
        !out_findings(dir, "root_token.wrapped_created").is_empty()
    });
    std::thread::sleep(Duration::from_millis(500));
    let got = out_findings(dir, "root_token.wrapped_created");
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["detail"]["watchlist"][0]["device"], "dev-a");

    // dev-b gets a list (here the same hash; a real device has its own salt): SIGHUP.
    let list_b = format!(
        "{}[[watchlist]]\ndevice = \"dev-b\"\nname = \"root\"\nfile = \"{}\"\n",
        list_a(&root),
        root.display()
    );
    config(dir, &list_b);
    // SAFETY: kill(2) on our own, not yet reaped child.
    unsafe {
        libc::kill(svc.0.id() as libc::pid_t, libc::SIGHUP);
    }
    let done = err.wait_for("configuration reloaded");
    assert!(done.contains("2 watch lists"), "{done}");
    writeln!(cb, "{lookup}").unwrap();
    wait_until("the root-token lookup of dev-b", || {
        !out_findings(dir, "root_token.lookup").is_empty()
    });
    let got = out_findings(dir, "root_token.lookup");
    assert_eq!(got[0]["detail"]["watchlist"][0]["device"], "dev-b");

    drop((ca, cb));
    // SAFETY: as above.
    unsafe {
        libc::kill(svc.0.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = svc.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        status.code(),
        Some(0),
        "{}",
        err.all.lock().unwrap().join("\n")
    );
}
