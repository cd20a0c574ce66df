//! Helpers shared by the end-to-end tests (`listen_e2e`, `run`, `watchlist_e2e`): child
//! processes killed on drop, their pipes read line by line, commands run with a timeout, and a
//! real OpenBao dev server (`bao server -dev`) with audit devices declared in its config file.
//!
//! A test file includes it with `mod support;` and uses only part of it, hence the
//! `allow(dead_code)`.
//!
//! The OpenBao tests need `bao` (OpenBao 2.7.x, `scripts/install-openbao.sh`); see
//! [`bao_or_skip`] for what happens without it. `AUDITWATCH_BAO=/path/to/bao` picks a binary.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long one CLI run may take.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server or service may take to be ready.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a server or service may take to exit once asked to.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Lines shared between a reader (a pipe, the `bao` CLI) and a failure report.
pub type SharedLines = Arc<Mutex<Vec<String>>>;

/// The name of the test crate (`listen_e2e`, `run`, …), to prefix messages with.
fn test_crate() -> &'static str {
    module_path!().split("::").next().unwrap_or("test")
}

// ------------------------------------------------------------------ processes

/// A child process that is killed (SIGKILL) and reaped when dropped, so a failing assertion
/// never leaves a server or service behind.
pub struct Proc {
    name: &'static str,
    pub child: Child,
    status: Option<ExitStatus>,
}

impl Proc {
    pub fn new(name: &'static str, child: Child) -> Proc {
        Proc {
            name,
            child,
            status: None,
        }
    }

    /// Spawns `cmd`; panics if it cannot be started.
    pub fn spawn(name: &'static str, cmd: &mut Command) -> Proc {
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Proc::new(name, child)
    }

    pub fn pid(&self) -> libc::pid_t {
        self.child.id() as libc::pid_t
    }

    pub fn signal(&self, sig: libc::c_int) {
        if self.status.is_none() {
            // SAFETY: kill(2) on our own, not yet reaped child.
            unsafe {
                libc::kill(self.pid(), sig);
            }
        }
    }

    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status
    }

    /// Waits up to `t` for the process to exit.
    pub fn wait_timeout(&mut self, t: Duration) -> Option<ExitStatus> {
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

    pub fn kill(&mut self) {
        if self.try_status().is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            eprintln!(
                "{}: killing {} (pid {})",
                test_crate(),
                self.name,
                self.pid()
            );
            self.kill();
        }
    }
}

/// Reads a child's pipe line by line on a thread: every line is kept (for diagnostics and
/// assertions) and also sent on a channel.
pub struct Lines {
    pub all: SharedLines,
    pub rx: Receiver<String>,
    thread: Option<JoinHandle<()>>,
}

impl Lines {
    pub fn spawn(pipe: impl Read + Send + 'static) -> Lines {
        Lines::spawn_into(pipe, SharedLines::default())
    }

    /// Like [`Lines::spawn`], keeping the lines in `all` (which a failure report may print).
    pub fn spawn_into(pipe: impl Read + Send + 'static, all: SharedLines) -> Lines {
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

    pub fn snapshot(&self) -> Vec<String> {
        self.all.lock().unwrap().clone()
    }

    /// Waits up to `t` for a line containing `needle`; returns it.
    pub fn wait_for(&self, needle: &str, t: Duration) -> String {
        let deadline = Instant::now() + t;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => {}
                Err(_) => panic!(
                    "no line with {needle:?} within {t:?}; so far:\n{}",
                    self.snapshot().join("\n")
                ),
            }
        }
    }

    /// Waits for EOF (the child exited and closed the pipe), at most `t`.
    pub fn join(&mut self, t: Duration) {
        let deadline = Instant::now() + t;
        while let Some(h) = &self.thread {
            if h.is_finished() {
                let _ = self.thread.take().unwrap().join();
                return;
            }
            assert!(
                Instant::now() < deadline,
                "pipe reader did not reach EOF within {t:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Output of one command run.
pub struct Out {
    pub ok: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` with [`CLI_TIMEOUT`], feeding it `stdin` (or nothing), capturing its output.
pub fn run_timeout(mut cmd: Command, stdin: Option<&[u8]>, what: &str) -> Out {
    let mut p = Proc::spawn(
        "cli",
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped()),
    );
    if let Some(input) = stdin {
        let mut w = p.child.stdin.take().unwrap();
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = w.write_all(&input);
        });
    }
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
        code: status.code(),
        stdout: to.join().unwrap(),
        stderr: te.join().unwrap(),
    }
}

// ------------------------------------------------------------------ auditwatch

/// `auditwatch replay --quiet ARGS` in `cwd`, which must succeed: its findings (every stdout
/// line is one) and its stderr.
pub fn replay<S: AsRef<std::ffi::OsStr>>(cwd: &Path, args: &[S]) -> (Vec<Value>, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_auditwatch"));
    c.current_dir(cwd).arg("replay").arg("--quiet").args(args);
    let out = run_timeout(c, None, "auditwatch replay");
    assert!(out.ok, "auditwatch replay failed: {}", out.stderr);
    let findings = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("finding not JSON ({e}): {l}")))
        .collect();
    (findings, out.stderr)
}

/// A string field of a finding or an entry ("" when absent).
pub fn s(v: &Value) -> String {
    v.as_str().unwrap_or("").to_owned()
}

/// A finding's event: (rule, type, request_id, path).
pub type EventKey = (String, String, String, String);

/// The events of `findings`, counted; the audit devices' own probes are left out (each
/// device writes its own, with its own request id).
pub fn event_keys(findings: &[Value]) -> BTreeMap<EventKey, usize> {
    let mut out = BTreeMap::new();
    for f in findings {
        if f["rule"] == "privileged.audit_device_probe" {
            continue;
        }
        let k = (
            s(&f["rule"]),
            s(&f["type"]),
            s(&f["request_id"]),
            s(&f["path"]),
        );
        *out.entry(k).or_insert(0) += 1;
    }
    out
}

// ------------------------------------------------------------------ failure reports

/// Runs `scenario`; if it panics, runs `report` (which prints what helps to see why) and
/// panics again with the same payload.
fn report_on_panic<R>(scenario: impl FnOnce() -> R, report: impl FnOnce()) -> R {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(scenario)) {
        Ok(r) => r,
        Err(e) => {
            report();
            std::panic::resume_unwind(e)
        }
    }
}

/// Prints `lines` under a heading.
fn print_lines(title: &str, lines: &[impl std::fmt::Display]) {
    eprintln!("---- {title} ----");
    for l in lines {
        eprintln!("{l}");
    }
}

/// The last `n` of `items`.
fn last<T>(items: &[T], n: usize) -> &[T] {
    &items[items.len().saturating_sub(n)..]
}

/// Prints the last `n` lines of what the server of [`BaoServer::start`] in `dir` wrote.
fn print_server_output(dir: &Path, n: usize) {
    if let Ok(t) = std::fs::read_to_string(BaoServer::output_path(dir)) {
        let lines: Vec<&str> = t.lines().collect();
        print_lines(
            &format!("bao server output (last {n} lines)"),
            last(&lines, n),
        );
    }
}

/// Prints the last `n` commands of a `bao` CLI transcript ([`Bao`]).
fn print_transcript(transcript: &SharedLines, n: usize) {
    let t = transcript.lock().unwrap();
    print_lines(
        &format!("bao CLI transcript (last {n} commands)"),
        last(&t, n),
    );
}

// ------------------------------------------------------------------ bao

/// The `bao` binary: `AUDITWATCH_BAO`, then PATH, pip's scripts directory and ~/.local/bin.
pub fn find_bao() -> Option<PathBuf> {
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

/// What a test against a real OpenBao server gets from [`openbao_test`].
pub struct BaoTest<'a> {
    /// The `bao` binary.
    pub bin: &'a Path,
    /// A fresh temporary directory.
    pub dir: &'a Path,
    /// Where to keep the stderr of the service under test (see [`Lines::spawn_into`]).
    pub stderr: &'a SharedLines,
    /// The transcript for the `bao` CLI ([`BaoServer::start`]).
    pub transcript: &'a SharedLines,
}

impl BaoTest<'_> {
    /// Starts the test's server ([`BaoServer::start`]) with `devices`.
    pub fn start_server(&self, devices: Vec<AuditDevice>) -> BaoServer {
        BaoServer::start(self.bin, self.dir, devices, self.transcript)
    }
}

/// Runs `scenario` with `bao` ([`bao_or_skip`]: without it, skipped, or failed under `CI`) in a
/// fresh temporary directory. If it panics, prints what helps to see why: the stderr of the
/// service under test (`service`, if any), the server's output and the CLI transcript. Children
/// are killed by their guards as the scenario unwinds.
pub fn openbao_test(service: Option<&str>, scenario: impl FnOnce(&BaoTest)) {
    let Some(bin) = bao_or_skip() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let stderr = SharedLines::default();
    let transcript = SharedLines::default();
    let t = BaoTest {
        bin: &bin,
        dir: tmp.path(),
        stderr: &stderr,
        transcript: &transcript,
    };
    report_on_panic(
        || scenario(&t),
        || {
            if let Some(service) = service {
                print_lines(&format!("{service} stderr"), &stderr.lock().unwrap());
            }
            print_server_output(t.dir, 60);
            print_transcript(&transcript, 40);
        },
    );
}

/// The `bao` binary ([`find_bao`]). Without one, the test is to be skipped (None, after a
/// message), unless `CI` is set (to anything), where it fails.
pub fn bao_or_skip() -> Option<PathBuf> {
    let bin = find_bao();
    if bin.is_none() {
        skip_or_fail(
            "`bao` (OpenBao 2.7.x) not found on PATH, in pip's scripts directory or \
             ~/.local/bin; install it with scripts/install-openbao.sh",
        );
    }
    bin
}

/// For a test that cannot run here (`why`): panics when `CI` is set (to anything), otherwise
/// prints that the test is skipped; the caller then returns.
pub fn skip_or_fail(why: &str) {
    let msg = format!("{}: {why}", test_crate());
    if std::env::var_os("CI").is_some() {
        panic!("{msg} (CI is set, so this is a failure)");
    }
    eprintln!("{msg}: SKIPPING");
}

/// No inherited BAO_* / VAULT_* settings, a private HOME, no colours.
pub fn clean_env(c: &mut Command, home: &Path) {
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("BAO_") || k.starts_with("VAULT_") {
            c.env_remove(&k);
        }
    }
    c.env("HOME", home).env("NO_COLOR", "1");
}

/// Whether TCP port `p` on 127.0.0.1 can be bound now.
pub fn port_free(p: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
}

/// A port p on 127.0.0.1 such that p and p+1 (the dev server's cluster port) are free.
pub fn free_port_pair() -> u16 {
    let mut seed = u64::from(std::process::id())
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
    for _ in 0..500 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let p = 20000 + ((seed >> 33) % 40000) as u16;
        if port_free(p) && port_free(p + 1) {
            return p;
        }
    }
    panic!("no free port pair on 127.0.0.1");
}

/// The `bao` CLI against one server, in a clean environment ([`clean_env`]). Every command and
/// its output go to a transcript, for failure reports.
#[derive(Clone)]
pub struct Bao {
    bin: PathBuf,
    addr: String,
    home: PathBuf,
    transcript: SharedLines,
}

impl Bao {
    /// The server's address (`http://127.0.0.1:PORT`).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `bao` with BAO_ADDR set and, if given, BAO_TOKEN.
    pub fn command(&self, token: Option<&str>) -> Command {
        let mut c = Command::new(&self.bin);
        clean_env(&mut c, &self.home);
        c.env("BAO_ADDR", &self.addr);
        if let Some(t) = token {
            c.env("BAO_TOKEN", t);
        }
        c
    }

    /// Runs `bao ARGS` with `token` (or none), succeed or fail.
    pub fn exec(&self, token: Option<&str>, args: &[&str]) -> Out {
        let mut c = self.command(token);
        c.args(args);
        let what = format!("bao {}", args.join(" "));
        let out = run_timeout(c, None, &what);
        self.transcript.lock().unwrap().push(format!(
            "+ {what} -> {}\n{}{}",
            if out.ok { "ok" } else { "FAILED" },
            out.stdout,
            out.stderr
        ));
        out
    }

    /// Runs a command with the root token that must succeed; returns its stdout, trimmed.
    pub fn ok(&self, args: &[&str]) -> String {
        self.ok_as(Some("root"), args)
    }

    /// Runs a command that must succeed; returns its stdout, trimmed.
    pub fn ok_as(&self, token: Option<&str>, args: &[&str]) -> String {
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
    pub fn fails_as(&self, token: Option<&str>, args: &[&str]) {
        let out = self.exec(token, args);
        assert!(
            !out.ok,
            "bao {} should have failed:\n{}",
            args.join(" "),
            out.stdout
        );
    }

    /// Enables the userpass auth method and adds `users` (name, password) with the default
    /// policy.
    pub fn userpass_users(&self, users: &[(&str, &str)]) {
        self.ok(&["auth", "enable", "userpass"]);
        for (user, password) in users {
            self.ok(&[
                "write",
                &format!("auth/userpass/users/{user}"),
                &format!("password={password}"),
                "token_policies=default",
            ]);
        }
    }

    /// A userpass login without a token, its new token not stored, that must succeed.
    pub fn login_ok(&self, user: &str, password: &str) {
        self.login(user, password, true);
    }

    /// A userpass login without a token that must fail.
    pub fn login_fails(&self, user: &str, password: &str) {
        self.login(user, password, false);
    }

    fn login(&self, user: &str, password: &str, succeeds: bool) {
        let (user, password) = (format!("username={user}"), format!("password={password}"));
        let args = ["login", "-no-store", "-method=userpass", &user, &password];
        if succeeds {
            self.ok_as(None, &args);
        } else {
            self.fails_as(None, &args);
        }
    }

    /// Runs a command with the root token that must succeed and print JSON; the JSON.
    pub fn json(&self, args: &[&str]) -> Value {
        let text = self.ok(args);
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("bao {args:?}: not JSON ({e}): {text}"))
    }
}

/// An audit device declared in the dev server's config file.
pub enum AuditDevice {
    /// A file device writing `path`.
    File { name: String, path: PathBuf },
    /// A socket device sending to `address` over TCP.
    Socket { name: String, address: String },
}

impl AuditDevice {
    pub fn file(name: &str, path: impl Into<PathBuf>) -> AuditDevice {
        AuditDevice::File {
            name: name.to_owned(),
            path: path.into(),
        }
    }

    pub fn tcp_socket(name: &str, address: impl Into<String>) -> AuditDevice {
        AuditDevice::Socket {
            name: name.to_owned(),
            address: address.into(),
        }
    }

    /// A file device `file-audit` writing `file_log` and a socket device `sock-audit` sending
    /// to a listener on 127.0.0.1:`port`: the same events reach auditwatch twice.
    pub fn file_and_socket(file_log: &Path, port: u16) -> Vec<AuditDevice> {
        vec![
            AuditDevice::file("file-audit", file_log),
            AuditDevice::tcp_socket("sock-audit", format!("127.0.0.1:{port}")),
        ]
    }

    /// Its `audit` block of the server's HCL config.
    fn hcl(&self) -> String {
        match self {
            AuditDevice::File { name, path } => format!(
                "audit \"file\" \"{name}\" {{\n  options {{\n    file_path = {:?}\n  }}\n}}\n",
                path.to_str().expect("a UTF-8 path")
            ),
            AuditDevice::Socket { name, address } => format!(
                "audit \"socket\" \"{name}\" {{\n  options {{\n    address     = {address:?}\n    \
                 socket_type = \"tcp\"\n  }}\n}}\n"
            ),
        }
    }
}

/// A real OpenBao dev server (`bao server -dev`, root token `root`) on a free 127.0.0.1 port,
/// with its audit devices declared in a config file. Killed when dropped; [`BaoServer::stop`]
/// stops it cleanly.
pub struct BaoServer {
    proc: Proc,
    bao: Bao,
    port: u16,
    unseal_key: String,
    devices: Vec<AuditDevice>,
}

impl BaoServer {
    /// Where the server of `dir` writes its output (stdout and stderr).
    pub fn output_path(dir: &Path) -> PathBuf {
        dir.join("bao-server.out")
    }

    /// Starts `bin` in `dir` (config `dir/bao.hcl`, output [`BaoServer::output_path`], the
    /// CLI's HOME `dir/home`) with `devices`, and waits until it has printed its unseal key and
    /// answers `bao status`. The CLI's commands go to `transcript`.
    pub fn start(
        bin: &Path,
        dir: &Path,
        devices: Vec<AuditDevice>,
        transcript: &SharedLines,
    ) -> BaoServer {
        let home = dir.join("home");
        std::fs::create_dir_all(&home).unwrap();
        let hcl = dir.join("bao.hcl");
        std::fs::write(
            &hcl,
            devices.iter().map(AuditDevice::hcl).collect::<String>(),
        )
        .unwrap();
        let port = free_port_pair();
        let out_path = BaoServer::output_path(dir);
        let out = File::create(&out_path).unwrap();
        let mut c = Command::new(bin);
        clean_env(&mut c, &home);
        c.arg("server")
            .arg("-dev")
            .arg("-dev-root-token-id=root")
            .arg("-dev-no-store-token")
            .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
            .arg(format!("-config={}", hcl.display()))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        let mut proc = Proc::spawn("bao server", &mut c);
        let bao = Bao {
            bin: bin.to_owned(),
            addr: format!("http://127.0.0.1:{port}"),
            home,
            transcript: Arc::clone(transcript),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        let unseal_key = loop {
            if let Some(st) = proc.try_status() {
                panic!("bao server exited during startup: {st}");
            }
            let text = std::fs::read_to_string(&out_path).unwrap_or_default();
            let key = text
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
        BaoServer {
            proc,
            bao,
            port,
            unseal_key,
            devices,
        }
    }

    /// The CLI against this server.
    pub fn bao(&self) -> &Bao {
        &self.bao
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The dev server's single unseal key (shares 1, threshold 1).
    pub fn unseal_key(&self) -> &str {
        &self.unseal_key
    }

    /// The log file of the file device `device`.
    pub fn log_path(&self, device: &str) -> &Path {
        self.devices
            .iter()
            .find_map(|d| match d {
                AuditDevice::File { name, path } if name == device => Some(path.as_path()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no file audit device {device:?}"))
    }

    /// Stops the server (SIGINT; SIGKILL if it has not exited within [`STOP_TIMEOUT`]).
    pub fn stop(&mut self) {
        self.proc.signal(libc::SIGINT);
        if self.proc.wait_timeout(STOP_TIMEOUT).is_none() {
            eprintln!(
                "{}: bao server did not stop on SIGINT, killing it",
                test_crate()
            );
            self.proc.kill();
        }
    }
}
