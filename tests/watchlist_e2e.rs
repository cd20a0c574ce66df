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
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

const CLI_TIMEOUT: Duration = Duration::from_secs(30);
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
const WATCH_RULES: [&str; 4] = [
    "watchlist.match",
    "root_token.wrapped_created",
    "root_token.lookup",
    "login.failed_hashed_error",
];
const DEVICES: [&str; 2] = ["file-audit", "file-audit-2"];

// ------------------------------------------------------------------ processes

/// A child process killed (SIGKILL) and reaped when dropped.
struct Proc {
    name: &'static str,
    child: Child,
    status: Option<ExitStatus>,
}

impl Proc {
    fn new(name: &'static str, child: Child) -> Proc {
        Proc {
            name,
            child,
            status: None,
        }
    }

    fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status
    }

    fn wait_timeout(&mut self, t: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + t;
        loop {
            if let Some(s) = self.try_status() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, sig: libc::c_int) {
        if self.status.is_none() {
            // SAFETY: kill(2) on our own, not yet reaped child.
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, sig);
            }
        }
    }

    fn kill(&mut self) {
        if self.try_status().is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            eprintln!("watchlist_e2e: killing {}", self.name);
            self.kill();
        }
    }
}

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` with a timeout, capturing its output.
fn run_timeout(mut cmd: Command, what: &str) -> Out {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let mut p = Proc::new("cli", child);
    let mut so = p.child.stdout.take().unwrap();
    let mut se = p.child.stderr.take().unwrap();
    let to = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let te = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    let Some(status) = p.wait_timeout(CLI_TIMEOUT) else {
        p.kill();
        panic!("{what}: no exit within {CLI_TIMEOUT:?}");
    };
    Out {
        ok: status.success(),
        stdout: to.join().unwrap(),
        stderr: te.join().unwrap(),
    }
}

// ------------------------------------------------------------------ bao

/// The `bao` binary: `AUDITWATCH_BAO`, then PATH, pip's scripts directory and ~/.local/bin.
fn find_bao() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("AUDITWATCH_BAO") {
        return Some(PathBuf::from(p));
    }
    let mut dirs: Vec<PathBuf> =
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).collect();
    if let Ok(out) = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .stderr(Stdio::null())
        .output()
    {
        let d = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if out.status.success() && !d.is_empty() {
            dirs.push(PathBuf::from(d));
        }
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".local/bin"));
    }
    dirs.into_iter().map(|d| d.join("bao")).find(|p| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    })
}

/// No inherited BAO_* / VAULT_* settings, a private HOME, no colours.
fn clean_env(c: &mut Command, home: &Path) {
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("BAO_") || k.starts_with("VAULT_") {
            c.env_remove(&k);
        }
    }
    c.env("HOME", home).env("NO_COLOR", "1");
}

/// A port p on 127.0.0.1 such that p and p+1 (the dev server's cluster port) are free.
fn free_port_pair() -> u16 {
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        ^ u64::from(std::process::id()) << 32;
    for _ in 0..500 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let p = 20000 + ((seed >> 33) % 40000) as u16;
        let a = std::net::TcpListener::bind(("127.0.0.1", p));
        let b = std::net::TcpListener::bind(("127.0.0.1", p + 1));
        if a.is_ok() && b.is_ok() {
            return p;
        }
    }
    panic!("no free port pair on 127.0.0.1");
}

/// The `bao` CLI against one dev server, in a clean environment.
struct Bao {
    bin: PathBuf,
    addr: String,
    home: PathBuf,
    transcript: Arc<Mutex<Vec<String>>>,
}

impl Bao {
    fn exec(&self, token: Option<&str>, args: &[&str]) -> Out {
        let mut c = Command::new(&self.bin);
        clean_env(&mut c, &self.home);
        c.env("BAO_ADDR", &self.addr);
        if let Some(t) = token {
            c.env("BAO_TOKEN", t);
        }
        c.args(args);
        let what = format!("bao {}", args.join(" "));
        let out = run_timeout(c, &what);
        self.transcript.lock().unwrap().push(format!(
            "+ {what} -> {}\n{}{}",
            if out.ok { "ok" } else { "FAILED" },
            out.stdout,
            out.stderr
        ));
        out
    }

    /// A command as the root token that must succeed; its stdout, trimmed.
    fn ok(&self, args: &[&str]) -> String {
        self.ok_as(Some("root"), args)
    }

    fn ok_as(&self, token: Option<&str>, args: &[&str]) -> String {
        let out = self.exec(token, args);
        assert!(out.ok, "bao {} failed:\n{}", args.join(" "), out.stderr);
        out.stdout.trim().to_owned()
    }

    fn fails_as(&self, token: Option<&str>, args: &[&str]) {
        let out = self.exec(token, args);
        assert!(!out.ok, "bao {} should have failed", args.join(" "));
    }

    fn json(&self, args: &[&str]) -> Value {
        let text = self.ok(args);
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("bao {args:?}: not JSON ({e}): {text}"))
    }

    /// What `device` writes for `input`, as the server says (`sys/audit-hash`).
    fn audit_hash(&self, device: &str, input: &str) -> String {
        let h = self.ok(&[
            "write",
            "-field=hash",
            &format!("sys/audit-hash/{device}"),
            &format!("input={input}"),
        ]);
        assert!(h.starts_with("hmac-sha256:") && h.len() == 76, "{h}");
        h
    }
}

// ------------------------------------------------------------------ the test

#[test]
fn watch_lists_with_real_openbao_devices() {
    let Some(bao_bin) = find_bao() else {
        let msg = "watchlist_e2e: `bao` (OpenBao 2.7.x) not found on PATH, in pip's scripts \
                   directory or ~/.local/bin; install it with scripts/install-openbao.sh";
        if std::env::var_os("CI").is_some() {
            panic!("{msg} (CI is set, so this is a failure)");
        }
        eprintln!("{msg}: SKIPPING");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let transcript = Arc::new(Mutex::new(Vec::new()));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        scenario(&bao_bin, dir, &transcript)
    }));
    if let Err(e) = result {
        if let Ok(t) = std::fs::read_to_string(dir.join("bao-server.out")) {
            eprintln!("---- bao server output (last 40 lines) ----");
            let lines: Vec<&str> = t.lines().collect();
            for l in &lines[lines.len().saturating_sub(40)..] {
                eprintln!("{l}");
            }
        }
        eprintln!("---- bao CLI transcript (last 30 commands) ----");
        let t = transcript.lock().unwrap();
        for l in &t[t.len().saturating_sub(30)..] {
            eprintln!("{l}");
        }
        drop(t);
        std::panic::resume_unwind(e);
    }
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

fn replay(log: &Path, args: &[String]) -> (Vec<Value>, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_auditwatch"));
    c.arg("replay").arg("--quiet").args(args).arg(log);
    let out = run_timeout(c, "auditwatch replay");
    assert!(out.ok, "auditwatch replay failed: {}", out.stderr);
    let f = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a finding is JSON"))
        .collect();
    (f, out.stderr)
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
fn scenario(bao_bin: &Path, dir: &Path, transcript: &Arc<Mutex<Vec<String>>>) {
    let home = dir.join("home");
    std::fs::create_dir(&home).unwrap();
    let logs: Vec<PathBuf> = DEVICES
        .iter()
        .map(|d| dir.join(format!("{d}.log")))
        .collect();
    let hcl = dir.join("bao.hcl");
    let mut text = String::new();
    for (d, log) in DEVICES.iter().zip(&logs) {
        text.push_str(&format!(
            "audit \"file\" \"{d}\" {{\n  options {{\n    file_path = {:?}\n  }}\n}}\n",
            log.to_str().unwrap()
        ));
    }
    std::fs::write(&hcl, text).unwrap();

    let port = free_port_pair();
    let server_out = File::create(dir.join("bao-server.out")).unwrap();
    let mut c = Command::new(bao_bin);
    clean_env(&mut c, &home);
    c.arg("server")
        .arg("-dev")
        .arg("-dev-root-token-id=root")
        .arg("-dev-no-store-token")
        .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
        .arg(format!("-config={}", hcl.display()))
        .stdin(Stdio::null())
        .stdout(server_out.try_clone().unwrap())
        .stderr(server_out);
    let mut server = Proc::new("bao server", c.spawn().expect("spawn bao server"));
    let bao = Bao {
        bin: bao_bin.to_owned(),
        addr: format!("http://127.0.0.1:{port}"),
        home: home.clone(),
        transcript: Arc::clone(transcript),
    };
    let deadline = Instant::now() + START_TIMEOUT;
    while !bao.exec(None, &["status"]).ok {
        if let Some(st) = server.try_status() {
            panic!("bao server exited during startup: {st}");
        }
        assert!(
            Instant::now() < deadline,
            "bao server not ready within {START_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "watchlist_e2e: {}, server on 127.0.0.1:{port}",
        bao.ok(&["version"])
    );

    // ---------------------------------------------------------- the hashes, from the server
    let hashes: Vec<DeviceHashes> = DEVICES
        .iter()
        .map(|d| DeviceHashes {
            root: bao.audit_hash(d, "root"),
            bad_password: bao.audit_hash(d, "invalid username or password"),
            bad_role: bao.audit_hash(d, "invalid role or secret ID"),
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
    bao.ok(&["auth", "enable", "userpass"]);
    bao.ok(&[
        "write",
        "auth/userpass/users/alice",
        "password=alice-pass-1",
        "token_policies=default",
    ]);
    bao.ok_as(
        None,
        &[
            "login",
            "-no-store",
            "-method=userpass",
            "username=alice",
            "password=alice-pass-1",
        ],
    );
    bao.fails_as(
        None,
        &[
            "login",
            "-no-store",
            "-method=userpass",
            "username=nobody",
            "password=whatever",
        ],
    );
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
        .map(|d| bao.audit_hash(d, &wrapped_accessor))
        .collect();

    server.signal(libc::SIGINT);
    if server.wait_timeout(STOP_TIMEOUT).is_none() {
        eprintln!("watchlist_e2e: bao server did not stop on SIGINT, killing it");
        server.kill();
    }

    // ---------------------------------------------------------- each device, its own lists
    let mut per_device = Vec::new();
    for (i, d) in DEVICES.iter().enumerate() {
        let (root, errors) = write_lists(dir, d, &hashes[i]);
        let (f, stderr) = replay(&logs[i], &watch_args(d, &root, &errors));
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
    let (f, stderr) = replay(&logs[0], &watch_args("file-audit", &root2, &errors2));
    assert!(stderr.is_empty(), "{stderr}");
    assert!(watch_keys(&f).is_empty(), "{:?}", watch_keys(&f));
    // file-audit's own lists, declared for another device: ignored, with a warning.
    let (root1, errors1) = write_lists(dir, "file-audit", &hashes[0]);
    let (f, stderr) = replay(
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
    let (f, _) = replay(&logs[0], &[]);
    assert!(watch_keys(&f).is_empty());
}
