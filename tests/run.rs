//! `auditwatch run` and `auditwatch config`, end to end.
//!
//! * `config example | config check -` passes; a bad file is reported with file, line and key.
//! * With no configuration, in an empty directory, the service starts on its defaults
//!   (tcp 127.0.0.1:9090, metrics 127.0.0.1:9102, archive in ./auditwatch-data) and `/health`
//!   answers 200. Skipped (with a message) when those ports are taken, unless `CI` is set.
//! * With a real OpenBao dev server writing a file device and a socket device: one `run` listens
//!   on the socket device and tails the file device, with a file sink and a webhook sink.
//!   Every event is reported once despite the two sources, to both sinks; `/metrics` counts
//!   match what the server wrote; a SIGHUP with a broken rules file is rejected and the service
//!   keeps running (and reporting). Needs `bao` (see tests/support/mod.rs): skipped without it
//!   unless `CI` is set.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

mod support;
use support::{
    event_keys, openbao_test, replay, run_timeout, s, AuditDevice, BaoTest, EventKey, Lines, Proc,
    SharedLines, START_TIMEOUT, STOP_TIMEOUT,
};

const WAIT: Duration = Duration::from_secs(30);

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_auditwatch")
}

/// `auditwatch run -c CFG` in `dir`, once ready ([`start_service`]).
fn start_with_config(name: &'static str, dir: &Path, cfg: &Path) -> (Proc, Lines, String, String) {
    start_service(name, dir, "-c", cfg, &[], &SharedLines::default())
}

/// Starts `auditwatch run CONFIG_FLAG CFG` in `dir` with `env` added, stdout discarded and
/// stderr kept in `stderr_keep`; waits until it printed its first listener's address, its
/// metrics address and `ready`. Returns the process, its stderr and the two addresses.
fn start_service(
    name: &'static str,
    dir: &Path,
    config_flag: &str,
    cfg: &Path,
    env: &[(&str, &str)],
    stderr_keep: &SharedLines,
) -> (Proc, Lines, String, String) {
    let mut c = Command::new(bin());
    c.current_dir(dir)
        .arg("run")
        .arg(config_flag)
        .arg(cfg)
        .env_remove("AUDITWATCH_LOG")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut proc = Proc::spawn(name, &mut c);
    let err = Lines::spawn_into(proc.child.stderr.take().unwrap(), Arc::clone(stderr_keep));
    let listen_line = err.wait_for("listening on tcp ", START_TIMEOUT);
    let addr = listen_line
        .split("tcp ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {listen_line:?}"))
        .to_string();
    let metrics_line = err.wait_for("metrics on http://", START_TIMEOUT);
    let maddr = metrics_line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .expect("metrics address")
        .to_string();
    err.wait_for("ready", START_TIMEOUT);
    (proc, err, addr, maddr)
}

// ------------------------------------------------------------------ http

/// `GET path` → (status, body).
fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// `/metrics` as `series → value` (`name{labels}` exactly as exposed).
fn scrape(addr: &str) -> BTreeMap<String, f64> {
    let (status, body) = http_get(addr, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200, "{body}");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').expect("sample line");
            (k.to_string(), v.parse::<f64>().expect("value"))
        })
        .collect()
}

fn m(map: &BTreeMap<String, f64>, series: &str) -> f64 {
    *map.get(series)
        .unwrap_or_else(|| panic!("no series {series} in /metrics"))
}

/// A webhook receiver: records each request's headers and body, answers 200.
struct Receiver200 {
    addr: String,
    got: Arc<Requests>,
}

impl Receiver200 {
    fn start() -> Receiver200 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let got = Arc::new(Mutex::new(Vec::new()));
        let keep = got.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(conn) = conn else { continue };
                let keep = keep.clone();
                std::thread::spawn(move || serve_http(conn, &keep));
            }
        });
        Receiver200 { addr, got }
    }

    fn bodies(&self) -> Vec<Value> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|(_, b)| serde_json::from_slice(b).expect("webhook body JSON"))
            .collect()
    }
}

type Requests = Mutex<Vec<(BTreeMap<String, String>, Vec<u8>)>>;

fn serve_http(conn: TcpStream, got: &Requests) {
    let mut w = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut headers = BTreeMap::new();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        got.lock().unwrap().push((headers, body));
        if w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .is_err()
        {
            return;
        }
    }
}

// ------------------------------------------------------------------ config

#[test]
fn config_example_passes_config_check() {
    let ex = run_timeout(
        {
            let mut c = Command::new(bin());
            c.args(["config", "example"]);
            c
        },
        None,
        "config example",
    );
    assert!(ex.ok, "{}", ex.stderr);
    assert!(ex.stdout.contains("[[sources]]") && ex.stdout.contains("[[sinks]]"));
    let check = run_timeout(
        {
            let mut c = Command::new(bin());
            c.args(["config", "check", "-"]);
            c
        },
        Some(ex.stdout.as_bytes()),
        "config check -",
    );
    assert!(
        check.ok,
        "config example | config check - failed:\n{}{}",
        check.stdout, check.stderr
    );
    assert!(check.stdout.contains("valid"), "{}", check.stdout);

    // the embedded default too
    let def = run_timeout(
        {
            let mut c = Command::new(bin());
            c.args(["config", "default"]);
            c
        },
        None,
        "config default",
    );
    let check = run_timeout(
        {
            let mut c = Command::new(bin());
            c.args(["config", "check", "-"]);
            c
        },
        Some(def.stdout.as_bytes()),
        "config check - (default)",
    );
    assert!(check.ok, "{}", check.stderr);

    // an unknown key: file, line and key; exit 1
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[sources]]\nname = \"s\"\ntype = \"listen\"\ntcp = [\"127.0.0.1:9090\"]\nmax_conections = 3\n\
         [[sinks]]\nname = \"o\"\ntype = \"stdout\"\n",
    )
    .unwrap();
    let out = run_timeout(
        {
            let mut c = Command::new(bin());
            c.arg("config").arg("check").arg(&bad);
            c
        },
        None,
        "config check bad",
    );
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let want = format!("{}:5:1: unknown key `max_conections`", bad.display());
    assert!(out.stderr.contains(&want), "{want:?} in {:?}", out.stderr);
}

// ------------------------------------------------------------------ defaults

#[test]
fn defaults_start_the_service_and_health_answers_200() {
    if !support::port_free(9090) || !support::port_free(9102) {
        support::skip_or_fail(
            "127.0.0.1:9090 or 127.0.0.1:9102 is in use, cannot start on the defaults",
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Command::new(bin());
    c.current_dir(tmp.path())
        .arg("run")
        .env_remove("AUDITWATCH_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut svc = Proc::spawn("auditwatch run (defaults)", &mut c);
    let out = Lines::spawn(svc.child.stdout.take().unwrap());
    let mut err = Lines::spawn(svc.child.stderr.take().unwrap());

    let deadline = Instant::now() + START_TIMEOUT;
    let health = loop {
        if let Some(st) = svc.try_status() {
            panic!(
                "auditwatch run exited on its defaults: {st}\n{}",
                err.snapshot().join("\n")
            );
        }
        if let Ok((200, body)) = http_get("127.0.0.1:9102", "/health") {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "/health did not answer 200 within {START_TIMEOUT:?}:\n{}",
            err.snapshot().join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let h: Value = serde_json::from_str(&health).expect("health JSON");
    assert_eq!(h["status"], "ok", "{health}");
    assert!(
        tmp.path().join("auditwatch-data/audit.log").is_file(),
        "the archive in ./auditwatch-data"
    );
    let stderr = err.snapshot().join("\n");
    assert!(
        stderr.contains("listening on tcp 127.0.0.1:9090"),
        "{stderr}"
    );

    // one root-token request through the default listener → a finding on stdout
    let line = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/openbao/scenarios.log"),
    )
    .unwrap()
    .lines()
    .find(|l| l.contains("\"sys/raw"))
    .expect("a sys/raw entry in the capture")
    .to_string();
    let mut s = TcpStream::connect("127.0.0.1:9090").unwrap();
    s.write_all(format!("{line}\n").as_bytes()).unwrap();
    out.wait_for("privileged.raw_storage", WAIT);
    let metrics = scrape("127.0.0.1:9102");
    assert_eq!(
        m(
            &metrics,
            "auditwatch_source_entries_total{source=\"socket\",type=\"listen\"}"
        ),
        1.0
    );
    drop(s);

    svc.signal(libc::SIGTERM);
    let st = svc.wait_timeout(STOP_TIMEOUT).expect("exit after SIGTERM");
    err.join(STOP_TIMEOUT);
    assert_eq!(
        st.code(),
        Some(0),
        "exit status: {st}\n{}",
        err.snapshot().join("\n")
    );
}

// ------------------------------------------------------------------ reload

/// The capture's first `sys/raw` request, with another request id (distinct entries, same
/// rule and actor).
fn raw_entry(request_id: &str) -> String {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/openbao/scenarios.log"),
    )
    .unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("\"sys/raw"))
        .expect("a sys/raw entry in the capture");
    let mut v: Value = serde_json::from_str(line).unwrap();
    v["request"]["id"] = Value::String(request_id.into());
    serde_json::to_string(&v).unwrap()
}

fn raw_findings(path: &Path) -> Vec<Value> {
    json_lines(path)
        .into_iter()
        .filter(|f| f["rule"] == "privileged.raw_storage")
        .collect()
}

#[test]
fn sighup_applies_a_valid_file_and_rejects_an_invalid_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cfg = dir.join("aw.toml");
    let (a, b) = (dir.join("a.jsonl"), dir.join("b.jsonl"));
    let base = format!(
        "data_dir = \"{data}\"\n\n[[sources]]\nname = \"socket\"\ntype = \"listen\"\ntcp = [\"127.0.0.1:0\"]\n\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n\n[[sinks]]\nname = \"a\"\ntype = \"file\"\npath = \"{a}\"\n",
        data = dir.join("data").display(),
        a = a.display()
    );
    std::fs::write(&cfg, &base).unwrap();
    let (mut svc, mut err, addr, maddr) = start_with_config("auditwatch run (reload)", dir, &cfg);
    let mut conn = TcpStream::connect(&addr).unwrap();
    writeln!(conn, "{}", raw_entry("req-0")).unwrap();
    wait_until("the first finding in sink a", WAIT, || {
        raw_findings(&a).len() == 1
    });

    // a valid change: a second sink and suppression for every rule
    std::fs::write(
        &cfg,
        format!(
            "{base}\n[[sinks]]\nname = \"b\"\ntype = \"file\"\npath = \"{b}\"\n\n\
             [suppress]\nwindow = \"1h\"\nall = true\n",
            b = b.display()
        ),
    )
    .unwrap();
    svc.signal(libc::SIGHUP);
    let done = err.wait_for("configuration reloaded", WAIT);
    assert!(done.contains("sink \"b\" started"), "{done}");
    for id in ["req-1", "req-2", "req-3"] {
        writeln!(conn, "{}", raw_entry(id)).unwrap();
    }
    wait_until("the first of three in both sinks", WAIT, || {
        raw_findings(&a).len() == 2 && raw_findings(&b).len() == 1
    });
    let metrics = scrape(&maddr);
    assert_eq!(
        m(
            &metrics,
            "auditwatch_config_reloads_total{result=\"success\"}"
        ),
        1.0
    );
    assert_eq!(
        m(&metrics, "auditwatch_suppression_windows_open"),
        1.0,
        "raw_storage (root_token.used is throttled by its rule)"
    );

    // an invalid file: rejected with file, line and key; the running configuration is kept
    std::fs::write(
        &cfg,
        format!("{base}\n[[sinks]]\nname = \"c\"\ntype = \"file\"\npaht = \"x\"\n"),
    )
    .unwrap();
    svc.signal(libc::SIGHUP);
    let rejected = err.wait_for("reload rejected", WAIT);
    let want = format!("{}:19:1: sink \"c\": unknown key `paht`", cfg.display());
    assert!(rejected.contains(&want), "{want:?} in {rejected:?}");
    let metrics = scrape(&maddr);
    assert_eq!(
        m(
            &metrics,
            "auditwatch_config_reloads_total{result=\"failure\"}"
        ),
        1.0
    );
    assert_eq!(m(&metrics, "auditwatch_config_last_reload_successful"), 0.0);
    writeln!(conn, "{}", raw_entry("req-4")).unwrap();
    drop(conn);
    wait_until("the fourth held by suppression (still on)", WAIT, || {
        scrape(&maddr)
            .get("auditwatch_findings_total{rule=\"privileged.raw_storage\",severity=\"critical\"}")
            == Some(&5.0)
    });
    assert_eq!(raw_findings(&b).len(), 1, "held, not reported");

    // stop: open windows are reported as summaries
    svc.signal(libc::SIGTERM);
    let st = svc.wait_timeout(STOP_TIMEOUT).expect("exit after SIGTERM");
    err.join(STOP_TIMEOUT);
    assert_eq!(st.code(), Some(0), "{}", err.snapshot().join("\n"));
    for (path, n) in [(&a, 3), (&b, 2)] {
        let f = raw_findings(path);
        assert_eq!(f.len(), n, "{}: {f:?}", path.display());
        let sum = &f[n - 1]["detail"]["suppression"];
        assert_eq!(sum["count"], 4, "{sum}");
        assert_eq!(sum["repeats"], 3, "{sum}");
        assert_eq!(f[n - 1]["request_id"], "req-4");
        assert_eq!(sum["first_id"], f[n - 2]["id"]);
    }
}

#[test]
fn sighup_swaps_the_rules_of_running_pipelines() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let rules = dir.join("rules");
    std::fs::create_dir(&rules).unwrap();
    let cfg = dir.join("aw.toml");
    let out = dir.join("out.jsonl");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"{data}\"\n[rules]\npatterns = \"{rules}\"\n[[sources]]\nname = \"socket\"\n\
             type = \"listen\"\ntcp = [\"127.0.0.1:0\"]\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
             [[sinks]]\nname = \"out\"\ntype = \"file\"\npath = \"{out}\"\n",
            data = dir.join("data").display(),
            rules = rules.display(),
            out = out.display()
        ),
    )
    .unwrap();
    let (mut svc, mut err, addr, maddr) = start_with_config("auditwatch run (rules)", dir, &cfg);
    let mut conn = TcpStream::connect(&addr).unwrap();
    writeln!(conn, "{}", raw_entry("req-0")).unwrap();
    wait_until("the critical finding", WAIT, || {
        raw_findings(&out).len() == 1
    });
    assert_eq!(raw_findings(&out)[0]["severity"], "critical");

    // the built-in rule replaced by one of severity low
    let pack = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("patterns/privileged.toml"),
    )
    .unwrap();
    let start = pack.find("id = \"privileged.raw_storage\"").unwrap();
    let start = pack[..start].rfind("[[rule]]").unwrap();
    let end = start + 8 + pack[start + 8..].find("[[rule]]").unwrap();
    let rule = pack[start..end].replace("severity = \"critical\"", "severity = \"low\"");
    std::fs::write(rules.join("raw.toml"), rule).unwrap();
    svc.signal(libc::SIGHUP);
    let done = err.wait_for("configuration reloaded", WAIT);
    assert!(done.contains("rules"), "{done}");
    writeln!(conn, "{}", raw_entry("req-1")).unwrap();
    wait_until("the finding under the new rules", WAIT, || {
        raw_findings(&out).len() == 2
    });
    assert_eq!(raw_findings(&out)[1]["severity"], "low");
    let metrics = scrape(&maddr);
    assert_eq!(m(&metrics, "auditwatch_rules_reload_pending"), 0.0);
    assert_eq!(
        m(
            &metrics,
            "auditwatch_source_parse_errors_total{source=\"socket\",type=\"listen\"}"
        ),
        0.0
    );
    wait_until("the archive's live counters", WAIT, || {
        scrape(&maddr).get("auditwatch_archive_lines_total{source=\"socket\"}") == Some(&2.0)
    });
    drop(conn);
    svc.signal(libc::SIGTERM);
    let st = svc.wait_timeout(STOP_TIMEOUT).expect("exit after SIGTERM");
    err.join(STOP_TIMEOUT);
    assert_eq!(st.code(), Some(0), "{}", err.snapshot().join("\n"));
}

// ------------------------------------------------------------------ OpenBao end to end

fn json_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn wait_until(what: &str, t: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + t;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {t:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the file sink writing `findings` holds a finding of (rule, path, operation).
fn wait_for_finding(what: &str, findings: &Path, (rule, path, operation): (&str, &str, &str)) {
    wait_until(what, WAIT, || {
        json_lines(findings)
            .iter()
            .any(|f| f["rule"] == rule && f["path"] == path && f["operation"] == operation)
    });
}

#[test]
fn run_with_real_openbao_socket_and_file_sources() {
    openbao_test(Some("auditwatch run"), scenario);
}

#[allow(clippy::too_many_lines)]
fn scenario(t: &BaoTest) {
    let dir = t.dir;
    let rules = dir.join("rules");
    std::fs::create_dir(&rules).unwrap();
    let file_log = dir.join("file-audit.log");
    let arch = dir.join("arch");
    let findings_path = dir.join("findings.jsonl");
    let hook = Receiver200::start();
    let cfg = dir.join("auditwatch.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"data_dir = "{data}"

[log]
level = "info"

[rules]
patterns = "{rules}"

[[sources]]
name = "socket"
type = "listen"
tcp = ["127.0.0.1:0"]
archive = "{arch}"

[[sources]]
name = "file"
type = "tail"
path = "{file_log}"
poll_interval = "100ms"
rotate_wait = "1s"

[merge]
window = "60s"

[metrics]
listen = "127.0.0.1:0"

[[sinks]]
name = "findings"
type = "file"
path = "{findings}"

[[sinks]]
name = "hook"
type = "webhook"
url = "http://{hook}/auditwatch"
headers = {{ Authorization = "Bearer ${{AW_RUN_TEST_TOKEN}}" }}
backoff_initial = "100ms"
backoff_max = "1s"
"#,
            data = dir.join("data").display(),
            rules = rules.display(),
            arch = arch.display(),
            file_log = file_log.display(),
            findings = findings_path.display(),
            hook = hook.addr,
        ),
    )
    .unwrap();

    // ---------------------------------------------------------- the service
    let (mut svc, mut err, addr, maddr) = start_service(
        "auditwatch run",
        dir,
        "--config",
        &cfg,
        &[("AW_RUN_TEST_TOKEN", "t0ken-123")],
        t.stderr,
    );
    let port: u16 = addr
        .rsplit("127.0.0.1:")
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr:?}"));

    // ---------------------------------------------------------- the server
    let mut server = t.start_server(AuditDevice::file_and_socket(&file_log, port));
    let bao = server.bao().clone();

    // ---------------------------------------------------------- events, part 1
    bao.userpass_users(&[("alice", "alice-pass-1")]);
    bao.login_ok("alice", "alice-pass-1");
    for pass in ["wrong-1", "wrong-2"] {
        bao.login_fails("bob", pass);
    }
    let root1 = bao.ok(&["token", "create", "-policy=root", "-field=token"]);
    assert!(!root1.is_empty());
    let policy = dir.join("app-read.hcl");
    std::fs::write(
        &policy,
        "path \"secret/data/app/*\" { capabilities = [\"read\"] }\n",
    )
    .unwrap();
    bao.ok(&["policy", "write", "app-read", policy.to_str().unwrap()]);
    bao.ok(&["policy", "delete", "app-read"]);
    wait_for_finding(
        "the policy delete in the file sink",
        &findings_path,
        (
            "privileged.policy_change",
            "sys/policies/acl/app-read",
            "delete",
        ),
    );
    let (status, body) = http_get(&maddr, "/health").unwrap();
    assert_eq!(status, 200, "/health while running: {body}");

    // ---------------------------------------------------------- SIGHUP with broken rules
    std::fs::write(
        rules.join("broken.toml"),
        "[[rule]]\nid = \"broken\"\ntitle = \n",
    )
    .unwrap();
    svc.signal(libc::SIGHUP);
    let rejected = err.wait_for("reload rejected", WAIT);
    assert!(rejected.contains("broken.toml"), "{rejected}");
    std::thread::sleep(Duration::from_millis(300));
    if let Some(st) = svc.try_status() {
        panic!("the service ended after SIGHUP: {st}");
    }
    let (status, body) = http_get(&maddr, "/health").unwrap();
    assert_eq!(status, 200, "/health after a rejected reload: {body}");
    let after_hup = scrape(&maddr);
    assert_eq!(
        m(
            &after_hup,
            "auditwatch_config_reloads_total{result=\"failure\"}"
        ),
        1.0
    );
    assert_eq!(
        m(&after_hup, "auditwatch_config_last_reload_successful"),
        0.0
    );

    // ---------------------------------------------------------- events, part 2: still reporting
    bao.ok(&["secrets", "enable", "-path=kv2", "kv-v2"]);
    bao.ok(&["secrets", "disable", "kv2"]);
    wait_for_finding(
        "the mount disable in the file sink",
        &findings_path,
        ("privileged.mount_change", "sys/mounts/kv2", "delete"),
    );

    // ---------------------------------------------------------- stop the server
    server.stop();
    let file_lines = std::fs::read_to_string(&file_log).unwrap().lines().count() as f64;
    let file_bytes = std::fs::metadata(&file_log).unwrap().len() as f64;
    let mut metrics = BTreeMap::new();
    wait_until(
        "/metrics entries of both sources to match the server's logs",
        WAIT,
        || {
            metrics = scrape(&maddr);
            let archive_lines = std::fs::read_to_string(arch.join("audit.log"))
                .unwrap_or_default()
                .lines()
                .count() as f64;
            metrics.get("auditwatch_source_entries_total{source=\"file\",type=\"tail\"}")
                == Some(&file_lines)
                && metrics.get("auditwatch_source_entries_total{source=\"socket\",type=\"listen\"}")
                    == Some(&archive_lines)
                && metrics.get("auditwatch_tail_lag_bytes{source=\"file\"}") == Some(&0.0)
        },
    );
    let archived = std::fs::read(arch.join("audit.log")).unwrap();
    let archive_lines = archived.iter().filter(|b| **b == b'\n').count() as f64;
    assert_eq!(
        archive_lines, file_lines,
        "the socket device and the file device wrote the same number of entries"
    );
    assert_eq!(
        m(
            &metrics,
            "auditwatch_source_bytes_total{source=\"file\",type=\"tail\"}"
        ),
        file_bytes
    );
    assert_eq!(
        m(
            &metrics,
            "auditwatch_source_bytes_total{source=\"socket\",type=\"listen\"}"
        ),
        archived.len() as f64
    );
    for src in ["socket\",type=\"listen", "file\",type=\"tail"] {
        for c in [
            "fragments_total",
            "oversize_lines_total",
            "analysis_shed_lines_total",
            "ingest_shed_lines_total",
        ] {
            assert_eq!(
                m(
                    &metrics,
                    &format!("auditwatch_source_{c}{{source=\"{src}\"}}")
                ),
                0.0,
                "{c} of {src}"
            );
        }
        if let Some(v) = metrics.get(&format!(
            "auditwatch_source_parse_errors_total{{source=\"{src}\"}}"
        )) {
            assert_eq!(*v, 0.0, "parse errors of {src}");
        }
    }

    // ---------------------------------------------------------- each event once
    let findings = json_lines(&findings_path);
    let keys = event_keys(&findings);
    let twice: Vec<_> = keys.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "events reported more than once: {twice:?}"
    );
    let probes = findings
        .iter()
        .filter(|f| f["rule"] == "privileged.audit_device_probe")
        .count();
    assert_eq!(probes, 2, "one probe per audit device");
    // the same events as replay of the file device's log
    let (replayed, _) = replay(dir, &[&file_log]);
    let want: BTreeMap<EventKey, usize> = event_keys(&replayed);
    assert_eq!(
        keys.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "run findings vs replay of the file device's log (rule, type, request_id, path)"
    );
    let failed: Vec<_> = findings
        .iter()
        .filter(|f| f["rule"] == "login.failed")
        .collect();
    assert_eq!(failed.len(), 2, "two bad logins: {failed:?}");
    assert!(
        findings.iter().any(|f| f["rule"] == "root_token.created"),
        "root_token.created"
    );
    let n = findings.len() as f64;
    let sum = |prefix: &str| -> f64 {
        metrics
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v)
            .sum()
    };
    assert_eq!(sum("auditwatch_findings_total{"), n, "findings_total");
    assert_eq!(
        sum("auditwatch_findings_reported_total{"),
        n,
        "findings_reported_total"
    );
    let per_source = m(
        &metrics,
        "auditwatch_source_findings_total{source=\"socket\",type=\"listen\"}",
    ) + m(
        &metrics,
        "auditwatch_source_findings_total{source=\"file\",type=\"tail\"}",
    );
    assert_eq!(
        per_source - m(&metrics, "auditwatch_findings_merged_total"),
        n,
        "source findings - merged = reported"
    );
    assert_eq!(
        m(&metrics, "auditwatch_findings_merged_total"),
        n - 2.0,
        "every event but the two probes was seen by both sources and merged"
    );

    // ---------------------------------------------------------- the webhook got the same
    wait_until("the webhook deliveries", WAIT, || {
        hook.bodies().len() >= findings.len()
    });
    let mut hook_ids: Vec<String> = hook.bodies().iter().map(|b| s(&b["id"])).collect();
    let mut file_ids: Vec<String> = findings.iter().map(|f| s(&f["id"])).collect();
    hook_ids.sort();
    file_ids.sort();
    assert_eq!(hook_ids, file_ids, "webhook vs file sink");
    for (h, _) in hook.got.lock().unwrap().iter() {
        assert_eq!(
            h.get("authorization").map(String::as_str),
            Some("Bearer t0ken-123"),
            "the header from the environment"
        );
    }
    let metrics = scrape(&maddr);
    assert_eq!(
        m(
            &metrics,
            "auditwatch_sink_deliveries_total{sink=\"hook\",type=\"webhook\"}"
        ),
        n
    );
    assert_eq!(
        m(
            &metrics,
            "auditwatch_sink_deliveries_total{sink=\"findings\",type=\"file\"}"
        ),
        n
    );
    assert_eq!(m(&metrics, "auditwatch_healthy"), 1.0);

    // ---------------------------------------------------------- stop
    svc.signal(libc::SIGTERM);
    let st = svc
        .wait_timeout(STOP_TIMEOUT)
        .expect("auditwatch run exits after SIGTERM");
    err.join(STOP_TIMEOUT);
    assert_eq!(st.code(), Some(0), "exit status {st}");
    assert_eq!(
        json_lines(&findings_path).len(),
        findings.len(),
        "nothing more at shutdown"
    );
    let logs = err.snapshot().join("\n");
    assert!(
        !logs.contains("t0ken-123") && !logs.contains("alice-pass-1"),
        "secrets or entry values in the logs"
    );
}
