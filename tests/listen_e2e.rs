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
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

const CLI_TIMEOUT: Duration = Duration::from_secs(30);
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
const FINDING_TIMEOUT: Duration = Duration::from_secs(20);

// ------------------------------------------------------------------ processes

/// A child process that is killed (SIGKILL) and reaped when dropped, so a failing assertion
/// never leaves a server or listener behind.
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

    fn pid(&self) -> libc::pid_t {
        self.child.id() as libc::pid_t
    }

    fn signal(&self, sig: libc::c_int) {
        if self.status.is_none() {
            // SAFETY: kill(2) on our own, not yet reaped child.
            unsafe {
                libc::kill(self.pid(), sig);
            }
        }
    }

    fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status
    }

    /// Waits up to `t` for the process to exit.
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
            eprintln!("listen_e2e: killing {} (pid {})", self.name, self.pid());
            self.kill();
        }
    }
}

/// Reads a child's pipe line by line on a thread: every line is kept (for diagnostics and
/// assertions) and also sent on a channel.
struct Lines {
    all: Arc<Mutex<Vec<String>>>,
    rx: Receiver<String>,
    thread: Option<JoinHandle<()>>,
}

impl Lines {
    fn spawn(pipe: impl Read + Send + 'static) -> Lines {
        let all = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let keep = Arc::clone(&all);
        let thread = std::thread::spawn(move || {
            let mut r = BufReader::new(pipe);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf)
                            .trim_end_matches(['\n', '\r'])
                            .to_owned();
                        keep.lock().unwrap().push(line.clone());
                        let _ = tx.send(line);
                    }
                }
            }
        });
        Lines {
            all,
            rx,
            thread: Some(thread),
        }
    }

    fn snapshot(&self) -> Vec<String> {
        self.all.lock().unwrap().clone()
    }

    /// Waits for EOF (the child exited and closed the pipe), at most `t`.
    fn join(&mut self, t: Duration) {
        let deadline = Instant::now() + t;
        while let Some(h) = &self.thread {
            if h.is_finished() {
                let _ = self.thread.take().unwrap().join();
                return;
            }
            if Instant::now() >= deadline {
                panic!("pipe reader did not reach EOF within {t:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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

/// Output of one CLI run.
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
    let status = match p.wait_timeout(CLI_TIMEOUT) {
        Some(s) => s,
        None => {
            p.kill();
            panic!("{what}: no exit within {CLI_TIMEOUT:?}");
        }
    };
    Out {
        ok: status.success(),
        stdout: to.join().unwrap(),
        stderr: te.join().unwrap(),
    }
}

/// The `bao` CLI against one dev server, in a clean environment.
struct Bao {
    bin: PathBuf,
    addr: String,
    home: PathBuf,
    transcript: Arc<Mutex<Vec<String>>>,
}

impl Bao {
    fn command(&self, token: Option<&str>) -> Command {
        let mut c = Command::new(&self.bin);
        clean_env(&mut c, &self.home);
        c.env("BAO_ADDR", &self.addr);
        if let Some(t) = token {
            c.env("BAO_TOKEN", t);
        }
        c
    }

    fn exec(&mut self, token: Option<&str>, args: &[&str]) -> Out {
        let mut c = self.command(token);
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

    /// Runs a command with the root token that must succeed; returns its stdout, trimmed.
    fn ok(&mut self, args: &[&str]) -> String {
        self.ok_as(Some("root"), args)
    }

    fn ok_as(&mut self, token: Option<&str>, args: &[&str]) -> String {
        let out = self.exec(token, args);
        assert!(
            out.ok,
            "bao {} failed:\n{}\n{}",
            args.join(" "),
            out.stdout,
            out.stderr
        );
        out.stdout.trim().to_owned()
    }

    /// Runs a command that must fail.
    fn fails_as(&mut self, token: Option<&str>, args: &[&str]) {
        let out = self.exec(token, args);
        assert!(
            !out.ok,
            "bao {} should have failed:\n{}",
            args.join(" "),
            out.stdout
        );
    }
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
    let mut seed = (std::process::id() as u64) ^ (Instant::now().elapsed().as_nanos() as u64);
    seed ^= std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
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

fn s(v: &Value) -> String {
    v.as_str().unwrap_or("").to_owned()
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

/// (rule, type, request_id, path) of each finding, counted; the device probe's own finding is
/// left out (its request id differs per device).
fn finding_keys(f: &[Value]) -> BTreeMap<(String, String, String, String), usize> {
    count_by(
        f.iter()
            .filter(|f| f["rule"] != "privileged.audit_device_probe")
            .map(|f| {
                (
                    s(&f["rule"]),
                    s(&f["type"]),
                    s(&f["request_id"]),
                    s(&f["path"]),
                )
            }),
    )
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

fn replay(args: &[&Path], cwd: &Path) -> Vec<Value> {
    let mut c = Command::new(env!("CARGO_BIN_EXE_auditwatch"));
    c.current_dir(cwd).arg("replay").arg("--quiet").args(args);
    let out = run_timeout(c, "auditwatch replay");
    assert!(out.ok, "auditwatch replay failed: {}", out.stderr);
    parse_findings(&out.stdout.lines().map(str::to_owned).collect::<Vec<_>>())
}

// ------------------------------------------------------------------ the test

#[test]
fn listen_with_real_openbao_socket_and_file_devices() {
    let Some(bao_bin) = find_bao() else {
        let msg = "listen_e2e: `bao` (OpenBao 2.7.x) not found on PATH, in pip's scripts \
                   directory or ~/.local/bin; install it with scripts/install-openbao.sh";
        if std::env::var_os("CI").is_some() {
            panic!("{msg} (CI is set, so this is a failure)");
        }
        eprintln!("{msg}: SKIPPING");
        return;
    };

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let home = dir.join("home");
    std::fs::create_dir(&home).unwrap();
    let arch = dir.join("arch");
    let stats_path = dir.join("stats.json");
    let file_log = dir.join("file-audit.log");
    let mut ctx = Ctx::default();

    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        scenario(
            &bao_bin,
            dir,
            &home,
            &arch,
            &stats_path,
            &file_log,
            &mut ctx,
        )
    }));
    if let Err(e) = result {
        // Everything that helps to see why: the listener's stderr, the server log, the CLI
        // transcript. Children are killed by their guards as `ctx` goes away.
        eprintln!("---- auditwatch listen stderr ----");
        for l in ctx.listen_stderr.lock().unwrap().iter() {
            eprintln!("{l}");
        }
        if let Ok(t) = std::fs::read_to_string(dir.join("bao-server.out")) {
            eprintln!("---- bao server output (last 60 lines) ----");
            let lines: Vec<&str> = t.lines().collect();
            for l in &lines[lines.len().saturating_sub(60)..] {
                eprintln!("{l}");
            }
        }
        eprintln!("---- bao CLI transcript (last 40 commands) ----");
        let t = ctx.transcript.lock().unwrap();
        for l in &t[t.len().saturating_sub(40)..] {
            eprintln!("{l}");
        }
        drop(t);
        drop(ctx);
        std::panic::resume_unwind(e);
    }
}

/// What the failure report prints.
#[derive(Default)]
struct Ctx {
    listen_stderr: Arc<Mutex<Vec<String>>>,
    transcript: Arc<Mutex<Vec<String>>>,
}

#[allow(clippy::too_many_lines)]
fn scenario(
    bao_bin: &Path,
    dir: &Path,
    home: &Path,
    arch: &Path,
    stats_path: &Path,
    file_log: &Path,
    ctx: &mut Ctx,
) {
    // ---------------------------------------------------------- the listener
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_auditwatch"));
    cmd.current_dir(dir)
        .arg("listen")
        .args(["--tcp", "127.0.0.1:0", "--archive"])
        .arg(arch)
        .arg("--stats-json")
        .arg(stats_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("RUST_BACKTRACE", "1");
    let child = cmd.spawn().expect("spawn auditwatch listen");
    let mut listen = Proc::new("auditwatch listen", child);
    let mut findings_out = Lines::spawn(listen.child.stdout.take().unwrap());
    let mut listen_err = Lines::spawn(listen.child.stderr.take().unwrap());
    ctx.listen_stderr = Arc::clone(&listen_err.all);

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
    let bao_port = free_port_pair();
    let hcl = dir.join("bao.hcl");
    std::fs::write(
        &hcl,
        format!(
            r#"audit "file" "file-audit" {{
  options {{
    file_path = {file:?}
  }}
}}
audit "socket" "sock-audit" {{
  options {{
    address     = "127.0.0.1:{port}"
    socket_type = "tcp"
  }}
}}
"#,
            file = file_log.to_str().unwrap()
        ),
    )
    .unwrap();
    let server_out_path = dir.join("bao-server.out");
    let server_out = File::create(&server_out_path).unwrap();
    let mut c = Command::new(bao_bin);
    clean_env(&mut c, home);
    c.arg("server")
        .arg("-dev")
        .arg("-dev-root-token-id=root")
        .arg("-dev-no-store-token")
        .arg(format!("-dev-listen-address=127.0.0.1:{bao_port}"))
        .arg(format!("-config={}", hcl.display()))
        .stdin(Stdio::null())
        .stdout(server_out.try_clone().unwrap())
        .stderr(server_out);
    let mut server = Proc::new("bao server", c.spawn().expect("spawn bao server"));

    let mut bao = Bao {
        bin: bao_bin.to_owned(),
        addr: format!("http://127.0.0.1:{bao_port}"),
        home: home.to_owned(),
        transcript: Arc::clone(&ctx.transcript),
    };
    let deadline = Instant::now() + START_TIMEOUT;
    let unseal_key = loop {
        if let Some(st) = server.try_status() {
            panic!("bao server exited during startup: {st}");
        }
        let out = std::fs::read_to_string(&server_out_path).unwrap_or_default();
        let key = out
            .lines()
            .find_map(|l| l.strip_prefix("Unseal Key:"))
            .map(|k| k.trim().to_owned());
        if let Some(key) = key {
            if bao.exec(None, &["status"]).ok {
                break key;
            }
        }
        assert!(
            Instant::now() < deadline,
            "bao server not ready within {START_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let version = bao.ok(&["version"]);
    eprintln!(
        "listen_e2e: {version}, listener on 127.0.0.1:{port}, server on 127.0.0.1:{bao_port}"
    );

    // ---------------------------------------------------------- drive it
    // logins: alice good (twice), bob wrong password (twice), mallory unknown (once)
    bao.ok(&["auth", "enable", "userpass"]);
    bao.ok(&[
        "write",
        "auth/userpass/users/alice",
        "password=alice-pass-1",
        "token_policies=default",
    ]);
    bao.ok(&[
        "write",
        "auth/userpass/users/bob",
        "password=bob-pass-1",
        "token_policies=default",
    ]);
    for _ in 0..2 {
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
    }
    let bad_logins: [(&str, &str); 3] = [
        ("bob", "wrong-1"),
        ("bob", "wrong-2"),
        ("mallory", "whatever"),
    ];
    for (user, pass) in bad_logins {
        bao.fails_as(
            None,
            &[
                "login",
                "-no-store",
                "-method=userpass",
                &format!("username={user}"),
                &format!("password={pass}"),
            ],
        );
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
    server.signal(libc::SIGINT);
    if server.wait_timeout(STOP_TIMEOUT).is_none() {
        eprintln!("listen_e2e: bao server did not stop on SIGINT, killing it");
        server.kill();
    }

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
    let mut segments: Vec<String> = std::fs::read_dir(arch)
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
    let file_entries = read_json_lines(file_log);
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
    c.current_dir(dir).arg("verify").arg(arch);
    let v = run_timeout(c, "auditwatch verify");
    assert!(
        v.ok,
        "auditwatch verify {}:\n{}{}",
        arch.display(),
        v.stdout,
        v.stderr
    );

    // the findings agree with replay of the archive (same bytes, so the same ids) ...
    let from_archive = replay(&[&live], dir);
    let ids = |v: &[Value]| count_by(v.iter().map(|f| (s(&f["rule"]), s(&f["id"]))));
    assert_eq!(
        ids(&findings),
        ids(&from_archive),
        "listen findings vs `auditwatch replay` of the archive (rule, id)"
    );
    // ... and with replay of the file device's log (other HMACs and times, same events)
    let from_file = replay(&[file_log], dir);
    assert_eq!(
        finding_keys(&findings),
        finding_keys(&from_file),
        "listen findings vs `auditwatch replay` of the file device's log \
         (rule, type, request_id, path)"
    );
    assert_eq!(
        with_rule(&findings, "privileged.audit_device_probe").len(),
        with_rule(&from_file, "privileged.audit_device_probe").len(),
        "probe findings"
    );

    // ---------------------------------------------------------- (c) stats
    let stats_text = std::fs::read_to_string(stats_path)
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
