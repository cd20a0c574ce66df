//! Sinks against real local receivers (HTTP, syslog over UDP/TCP/unix, files), all on
//! 127.0.0.1 or in temporary directories, each bounded in time.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use auditwatch::finding::{Actor, Finding, Severity, SourceKind, SourceRef};
use auditwatch::sink::{Filter, SinkConfig, SinkStats, Sinks};
use hmac::{Hmac, Mac};
use sha2::Sha256;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn finding(tag: &str, i: u64, severity: Severity, category: &str, rule: &str) -> Finding {
    Finding {
        id: format!("{tag}-{i:08}"),
        rule: rule.into(),
        category: category.into(),
        severity,
        title: format!("Finding {i} <of> {tag} & co"),
        time: Some("2026-11-25T22:47:06.681947058Z".into()),
        entry_type: Some("request".into()),
        request_id: Some(format!("req-{i}")),
        operation: Some("update".into()),
        path: Some("sys/policies/acl/ops".into()),
        namespace: "root".into(),
        actor: Actor {
            display_name: Some("token".into()),
            entity_id: None,
            remote_address: Some("127.0.0.1".into()),
            accessor: Some("hmac-sha256:abc".into()),
            policies: Some(vec!["root".into()]),
        },
        source: SourceRef {
            kind: SourceKind::File,
            name: "audit.log".into(),
            line: i + 1,
            offset: i * 100,
        },
        detail: Default::default(),
    }
}

fn high(tag: &str, i: u64) -> Finding {
    finding(
        tag,
        i,
        Severity::High,
        "privileged_endpoint",
        "privileged.policy_write",
    )
}

fn configs(toml_src: &str) -> Vec<SinkConfig> {
    #[derive(serde::Deserialize)]
    struct Doc {
        sinks: Vec<SinkConfig>,
    }
    toml::from_str::<Doc>(toml_src)
        .unwrap_or_else(|e| panic!("{e}\n{toml_src}"))
        .sinks
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn start(toml_src: &str) -> Sinks {
    Sinks::start(configs(toml_src), runtime().handle()).unwrap()
}

fn stat(sinks: &Sinks, name: &str) -> SinkStats {
    sinks.stats().into_iter().find(|s| s.name == name).unwrap()
}

fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Emits `high(tag, i)` for i in 0..n.
fn emit_high(sinks: &Sinks, tag: &str, n: u64) {
    for i in 0..n {
        sinks.emit(&high(tag, i));
    }
}

/// Waits (20 s at most) until sink `name` has delivered `n` findings.
fn wait_delivered(sinks: &Sinks, name: &str, n: u64) {
    wait_until(
        Duration::from_secs(20),
        &format!("{n} deliveries by {name}"),
        || stat(sinks, name).delivered == n,
    );
}

/// A `[[sinks]]` table: webhook sink `name` posting to `url`, its spool in `spool`, with more
/// `settings` (TOML `key = value` lines).
fn webhook(name: &str, url: &str, spool: &Path, settings: &str) -> String {
    format!(
        "[[sinks]]\nname = \"{name}\"\ntype = \"webhook\"\nurl = \"{url}\"\n\
         spool_dir = \"{}\"\n{settings}\n",
        spool.display()
    )
}

/// A receiver checking signatures with `key` (if any), and sinks with one webhook sink `name`
/// posting to it with `settings`, spooling in a new temporary directory (returned to be kept).
fn webhook_to_receiver(
    name: &str,
    key: Option<&[u8]>,
    settings: &str,
) -> (HttpServer, tempfile::TempDir, Sinks) {
    let server = HttpServer::start(key);
    let tmp = tempfile::tempdir().unwrap();
    let sinks = start(&webhook(
        name,
        &server.url(),
        &tmp.path().join("spool"),
        settings,
    ));
    (server, tmp, sinks)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs the calling test in a child process (for process-wide state: umask, environment,
/// stdout). Returns None in the child, which then runs the test body; in the parent, the
/// child's output once it passed.
fn in_child(test: &str, umask: Option<&str>) -> Option<String> {
    if std::env::var("SINKS_TEST_CHILD").as_deref() == Ok(test) {
        return None;
    }
    let exe = std::env::current_exe().unwrap();
    let script = format!("umask {} && exec \"$0\" \"$@\"", umask.unwrap_or("022"));
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env("SINKS_TEST_CHILD", test)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child {test} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(stdout)
}

// ---------------------------------------------------------------------------------------------
// A small HTTP/1.1 receiver
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Answer {
    Ok,
    Status(u16, Option<u64>),
}

#[derive(Debug, Clone)]
struct Req {
    at: Instant,
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
    /// The signature checked out (None: no key configured in the server).
    signed_ok: Option<bool>,
}

struct HttpServer {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<Req>>>,
    answer: Arc<Mutex<Answer>>,
    stop: Arc<AtomicBool>,
}

impl HttpServer {
    fn start(key: Option<&[u8]>) -> HttpServer {
        Self::start_on(TcpListener::bind("127.0.0.1:0").unwrap(), key)
    }

    /// On 127.0.0.1:`port` (free again after a test used it as a dead address).
    fn start_at(port: u16, key: Option<&[u8]>) -> HttpServer {
        Self::start_on(TcpListener::bind(("127.0.0.1", port)).unwrap(), key)
    }

    fn start_on(listener: TcpListener, key: Option<&[u8]>) -> HttpServer {
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let answer = Arc::new(Mutex::new(Answer::Ok));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, a, s) = (log.clone(), answer.clone(), stop.clone());
        let key = key.map(<[u8]>::to_vec);
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (l, a, s, k) = (l.clone(), a.clone(), s.clone(), key.clone());
                        std::thread::spawn(move || serve_conn(conn, &l, &a, &s, k.as_deref()));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        HttpServer {
            addr,
            log,
            answer,
            stop,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn set(&self, a: Answer) {
        *self.answer.lock().unwrap() = a;
    }

    fn requests(&self) -> Vec<Req> {
        self.log.lock().unwrap().clone()
    }

    /// Finding ids in the bodies of requests answered 2xx.
    fn delivered_ids(&self) -> Vec<String> {
        let mut ids = Vec::new();
        for r in self.requests().iter().filter(|r| r.status == 200) {
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            match v.get("findings") {
                Some(list) => {
                    for f in list.as_array().unwrap() {
                        ids.push(f["id"].as_str().unwrap().to_string());
                    }
                }
                None => ids.push(v["id"].as_str().unwrap().to_string()),
            }
        }
        ids
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve_conn(
    conn: TcpStream,
    log: &Mutex<Vec<Req>>,
    answer: &Mutex<Answer>,
    stop: &AtomicBool,
    key: Option<&[u8]>,
) {
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut w = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    'requests: loop {
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            match r.read_line(&mut line) {
                Ok(0) => return,
                Ok(_) => {}
                Err(_) if stop.load(Ordering::Relaxed) => return,
                Err(_) if line.is_empty() && head.is_empty() => continue,
                Err(_) => return,
            }
            if line == "\r\n" {
                break;
            }
            head.push(line.trim_end().to_string());
            if head.len() > 100 {
                return;
            }
        }
        let mut headers = HashMap::new();
        for h in &head[1..] {
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let len: usize = headers
            .get("content-length")
            .map_or(0, |v| v.parse().unwrap());
        let mut body = vec![0u8; len];
        let mut got = 0;
        while got < len {
            match r.read(&mut body[got..]) {
                Ok(0) => return,
                Ok(n) => got += n,
                Err(_) if stop.load(Ordering::Relaxed) => return,
                Err(_) => continue,
            }
        }
        let signed_ok = key.map(|k| {
            let (Some(ts), Some(sig)) = (
                headers.get("x-auditwatch-timestamp"),
                headers.get("x-auditwatch-signature"),
            ) else {
                return false;
            };
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let Ok(t) = ts.parse::<u64>() else {
                return false;
            };
            let mut mac = Hmac::<Sha256>::new_from_slice(k).unwrap();
            mac.update(format!("{ts}.").as_bytes());
            mac.update(&body);
            let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
            now.abs_diff(t) <= 60 && expected == *sig
        });
        let a = *answer.lock().unwrap();
        let (status, retry_after) = match a {
            Answer::Ok => (200, None),
            Answer::Status(s, ra) => (s, ra),
        };
        log.lock().unwrap().push(Req {
            at: Instant::now(),
            status,
            headers,
            body,
            signed_ok,
        });
        let mut resp = format!("HTTP/1.1 {status} X\r\ncontent-length: 2\r\n");
        if let Some(ra) = retry_after {
            resp.push_str(&format!("retry-after: {ra}\r\n"));
        }
        resp.push_str("\r\nok");
        if w.write_all(resp.as_bytes()).is_err() {
            break 'requests;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Webhook
// ---------------------------------------------------------------------------------------------

#[test]
fn webhook_single_signed_with_secret_env_and_headers() {
    // The secret comes from the environment: set it in a child process of its own.
    if in_child("webhook_single_signed_with_secret_env_and_headers", None).is_some() {
        return;
    }
    std::env::set_var("AUDITWATCH_TEST_HOOK_SECRET", "s3cr3t-key");
    let (server, _tmp, sinks) = webhook_to_receiver(
        "hook",
        Some(b"s3cr3t-key"),
        r#"secret_env = "AUDITWATCH_TEST_HOOK_SECRET"
        headers = { Authorization = "Bearer t0k", X-Team = "sec" }"#,
    );
    let n = 20;
    emit_high(&sinks, "single", n);
    wait_delivered(&sinks, "hook", n);
    let stats = sinks.shutdown(Duration::from_secs(5));
    assert_eq!(stats[0].delivered, n);
    assert_eq!(stats[0].dropped, 0);
    let reqs = server.requests();
    assert_eq!(reqs.len() as u64, n, "one request per finding");
    for r in &reqs {
        assert_eq!(r.signed_ok, Some(true), "signature and timestamp verify");
        assert_eq!(r.headers["content-type"], "application/json");
        assert_eq!(r.headers["authorization"], "Bearer t0k");
        assert_eq!(r.headers["x-team"], "sec");
        let f: Finding = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(f.rule, "privileged.policy_write");
    }
    let ids: HashSet<_> = server.delivered_ids().into_iter().collect();
    let want: HashSet<_> = (0..n).map(|i| format!("single-{i:08}")).collect();
    assert_eq!(ids, want);
}

#[test]
fn sinks_can_be_shared_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Sinks>();
    send_sync::<SinkConfig>();
}

#[test]
fn webhook_missing_secret_env_fails_at_start() {
    let cfg = configs(
        r#"
        [[sinks]]
        name = "hook"
        type = "webhook"
        url = "http://127.0.0.1:9/"
        secret_env = "AUDITWATCH_TEST_SURELY_UNSET_VARIABLE"
        spool_max_bytes = 0
        "#,
    );
    let e = Sinks::start(cfg, runtime().handle()).unwrap_err();
    assert!(
        format!("{e:#}").contains("AUDITWATCH_TEST_SURELY_UNSET_VARIABLE"),
        "{e:#}"
    );
}

#[test]
fn webhook_batches_generic_template() {
    let (server, _tmp, sinks) = webhook_to_receiver(
        "batched",
        Some(b"k"),
        r#"secret = "k"
        batch_max = 10
        batch_wait = "300ms""#,
    );
    let n = 35;
    emit_high(&sinks, "batch", n);
    wait_delivered(&sinks, "batched", n);
    sinks.shutdown(Duration::from_secs(5));
    let reqs = server.requests();
    assert!(reqs.len() <= 8, "batched: {} requests", reqs.len());
    for r in &reqs {
        assert_eq!(r.signed_ok, Some(true));
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        let list = v["findings"].as_array().expect("{\"findings\":[…]}");
        assert!(!list.is_empty() && list.len() <= 10);
        assert_eq!(v.as_object().unwrap().len(), 1);
    }
    let ids = server.delivered_ids();
    assert_eq!(ids.len() as u64, n);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len() as u64, n);
}

#[test]
fn webhook_slack_template_is_json_with_text() {
    let server = HttpServer::start(None);
    let tmp = tempfile::tempdir().unwrap();
    let (url, dir) = (server.url(), tmp.path());
    let batched = "template = \"slack\"\nbatch_max = 5\nbatch_wait = \"200ms\"";
    let sinks = start(&format!(
        "{}{}",
        webhook("slack", &url, &dir.join("a"), "template = \"slack\""),
        webhook("slack-batched", &url, &dir.join("b"), batched)
    ));
    let mut f = finding(
        "slack",
        1,
        Severity::Critical,
        "root_token",
        "root.token_use",
    );
    f.title = "Root token <used> & \x1b[31mred\x1b[0m\nnext".into();
    f.path = Some("sys/raw/<x>".into());
    sinks.emit(&f);
    sinks.emit(&high("slack", 2));
    wait_until(Duration::from_secs(20), "delivery", || {
        stat(&sinks, "slack").delivered == 2 && stat(&sinks, "slack-batched").delivered == 2
    });
    sinks.shutdown(Duration::from_secs(5));
    let reqs = server.requests();
    assert_eq!(reqs.len(), 3, "2 single + 1 batch");
    let texts: Vec<String> = reqs
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            let o = v.as_object().unwrap();
            assert_eq!(o.len(), 1, "only `text`: {v}");
            o["text"].as_str().unwrap().to_string()
        })
        .collect();
    let crit = texts
        .iter()
        .find(|t| t.contains("[CRITICAL]") && !t.contains("2 findings"))
        .unwrap();
    assert!(crit.contains("root.token_use"), "{crit}");
    assert!(crit.contains("Root token &lt;used&gt; &amp;"), "{crit}");
    assert!(crit.contains("sys/raw/&lt;x&gt;"), "{crit}");
    assert!(!crit.chars().any(|c| c.is_control()), "{crit:?}");
    assert!(
        !crit.contains("hmac-sha256:abc"),
        "no accessor HMACs or data"
    );
    let batch = texts.iter().find(|t| t.contains("2 findings")).unwrap();
    assert_eq!(batch.lines().count(), 3, "{batch}");
    assert!(batch.contains("[HIGH]") && batch.contains("[CRITICAL]"));
}

#[test]
fn webhook_permanent_rejection_is_dropped_not_retried_forever() {
    let server = HttpServer::start(None);
    server.set(Answer::Status(400, None));
    let sinks = start(&format!(
        r#"
        [[sinks]]
        name = "hook"
        type = "webhook"
        url = "{}"
        spool_max_bytes = 0
        backoff_initial = "10ms"
        "#,
        server.url()
    ));
    emit_high(&sinks, "rej", 3);
    wait_until(Duration::from_secs(10), "rejections", || {
        stat(&sinks, "hook").dropped == 3
    });
    let s = sinks.shutdown(Duration::from_secs(2));
    assert_eq!((s[0].delivered, s[0].rejected, s[0].dropped), (0, 3, 3));
    assert_eq!(s[0].retries, 0);
    assert_eq!(server.requests().len(), 3);
    assert_eq!(s[0].last_error.as_deref(), Some("HTTP 400 Bad Request"));
}

/// The receiver refuses connections (no listener), then answers 503 with `Retry-After: 1`,
/// then recovers. Every finding is delivered or counted as dropped, memory and spool stay in
/// their bounds, and a local sink in the same `Sinks` never waits.
#[test]
fn webhook_outage_spools_then_recovers_without_slowing_local_sink() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let key = b"outage-key";
    let queue_max = 40u64;
    let spool_max = 48 * 1024u64;
    let sinks = start(&format!(
        r#"
        [[sinks]]
        name = "hook"
        type = "webhook"
        url = "http://127.0.0.1:{port}/hook"
        secret = "outage-key"
        batch_max = 10
        batch_wait = "20ms"
        queue_max = {queue_max}
        spool_dir = "{dir}/spool"
        spool_max_bytes = {spool_max}
        timeout = "2s"
        backoff_initial = "50ms"
        backoff_max = "300ms"

        [[sinks]]
        name = "local"
        type = "file"
        path = "{dir}/out/findings.jsonl"
        "#,
        dir = tmp.path().display()
    ));
    let mut produced = 0u64;
    let mut emit_times = Vec::new();
    let check = |sinks: &Sinks| {
        let s = stat(sinks, "hook");
        assert!(
            s.queue_depth <= queue_max,
            "queue {} > {queue_max}",
            s.queue_depth
        );
        assert!(
            s.spool_bytes <= spool_max,
            "spool {} > {spool_max}",
            s.spool_bytes
        );
    };
    let mut emit_for = |sinks: &Sinks, d: Duration, produced: &mut u64| {
        let end = Instant::now() + d;
        while Instant::now() < end {
            let f = high("outage", *produced);
            let t = Instant::now();
            sinks.emit(&f);
            emit_times.push(t.elapsed());
            *produced += 1;
            check(sinks);
            std::thread::sleep(Duration::from_millis(2));
        }
    };

    // 1. Nobody listens: connection refused.
    emit_for(&sinks, Duration::from_millis(1500), &mut produced);
    let h = sinks
        .health()
        .into_iter()
        .find(|h| h.name == "hook")
        .unwrap();
    assert!(!h.healthy);
    let reason = h.reason.unwrap();
    assert!(
        reason.starts_with("webhook: ")
            && reason.contains("consecutive failures: connection refused"),
        "{reason}"
    );
    let s = stat(&sinks, "hook");
    assert!(s.spooled > 0, "the outage spilled to disk: {s:?}");
    assert!(s.dropped > 0, "more than the budget was produced: {s:?}");
    assert!(s.failed_attempts >= 3 && s.retries >= 3, "{s:?}");
    assert!(
        sinks
            .health()
            .iter()
            .find(|h| h.name == "local")
            .unwrap()
            .healthy
    );

    // 2. The receiver is back but overloaded: 503, Retry-After: 1.
    let server = HttpServer::start_at(port, Some(key));
    server.set(Answer::Status(503, Some(1)));
    emit_for(&sinks, Duration::from_millis(2500), &mut produced);
    let unavailable: Vec<Instant> = server
        .requests()
        .iter()
        .filter(|r| r.status == 503)
        .map(|r| r.at)
        .collect();
    assert!(unavailable.len() >= 2, "{} 503s", unavailable.len());
    for w in unavailable.windows(2) {
        assert!(
            w[1] - w[0] >= Duration::from_millis(950),
            "Retry-After honoured: {:?}",
            w[1] - w[0]
        );
    }
    assert!(stat(&sinks, "hook").last_error.unwrap().contains("503"));

    // 3. Recovered.
    server.set(Answer::Ok);
    emit_for(&sinks, Duration::from_millis(500), &mut produced);
    wait_until(Duration::from_secs(30), "the backlog to drain", || {
        check(&sinks);
        let s = stat(&sinks, "hook");
        s.queue_depth == 0
            && s.inflight == 0
            && s.spool_pending == 0
            && s.delivered + s.dropped == produced
    });
    let h = sinks
        .health()
        .into_iter()
        .find(|h| h.name == "hook")
        .unwrap();
    assert!(
        h.reason.as_deref().is_none_or(|r| r.contains("dropping")),
        "{h:?}"
    );
    let stats = sinks.shutdown(Duration::from_secs(5));
    let hook = stats.iter().find(|s| s.name == "hook").unwrap();
    let local = stats.iter().find(|s| s.name == "local").unwrap();
    emit_times.sort();
    let worst_emit = *emit_times.last().unwrap();
    let p99 = emit_times[emit_times.len() * 99 / 100];
    eprintln!("outage: produced {produced}, emit p99 {p99:?}, max {worst_emit:?}\n{hook:#?}");
    assert_eq!(hook.accepted, produced);
    assert_eq!(hook.delivered + hook.dropped, produced, "{hook:?}");
    assert!(hook.delivered > 0 && hook.dropped > 0, "{hook:?}");
    assert_eq!(hook.rejected, 0);
    assert_eq!(hook.spool_pending, 0);
    assert!(server.requests().iter().all(|r| r.signed_ok == Some(true)));
    let ids = server.delivered_ids();
    let distinct: HashSet<_> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "no duplicates without a crash");
    assert_eq!(ids.len() as u64, hook.delivered);
    assert!(ids.iter().all(|id| id.starts_with("outage-")));

    // The local sink got everything, and emit never waited.
    assert_eq!(local.delivered, produced);
    assert_eq!(local.dropped, 0);
    let lines = std::fs::read_to_string(tmp.path().join("out/findings.jsonl")).unwrap();
    assert_eq!(lines.lines().count() as u64, produced);
    // A sink waiting on the network would stall for its timeout (2 s) or Retry-After (1 s);
    // the bounds leave room for a loaded 2-core CI machine.
    assert!(
        p99 < Duration::from_millis(10),
        "emit p99 {p99:?} during the outage"
    );
    assert!(
        worst_emit < Duration::from_millis(250),
        "emit took up to {worst_emit:?} during the outage"
    );
    // The spool directory is private.
    let md = std::fs::metadata(tmp.path().join("spool")).unwrap();
    assert_eq!(md.mode() & 0o777, 0o700);
}

/// A receiver that accepts but never answers: attempts time out, `emit` does not notice.
#[test]
fn webhook_hanging_receiver_times_out() {
    // Connections complete in the kernel's backlog; nobody ever reads or answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let sinks = start(&webhook(
        "hook",
        &format!("http://{}/hook", silent.local_addr().unwrap()),
        &tmp.path().join("spool"),
        r#"timeout = "300ms"
        backoff_initial = "10ms"
        backoff_max = "20ms"
        queue_max = 20
        spool_max_bytes = "16KiB""#,
    ));
    let mut worst = Duration::ZERO;
    let end = Instant::now() + Duration::from_millis(1500);
    let mut n = 0;
    while Instant::now() < end {
        let t = Instant::now();
        sinks.emit(&high("hang", n));
        worst = worst.max(t.elapsed());
        n += 1;
        std::thread::sleep(Duration::from_millis(3));
    }
    let s = stat(&sinks, "hook");
    assert!(s.failed_attempts >= 3, "{s:?}");
    assert!(
        s.last_error.as_deref().unwrap().contains("timed out"),
        "{s:?}"
    );
    assert!(s.queue_depth <= 20 && s.spool_bytes <= 16 * 1024, "{s:?}");
    assert!(!sinks.health()[0].healthy);
    assert!(worst < Duration::from_millis(250), "emit took {worst:?}");
    let t = Instant::now();
    let s = sinks.shutdown(Duration::from_millis(600));
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "shutdown kept its deadline"
    );
    assert_eq!(s[0].delivered, 0);
    assert_eq!(s[0].accepted, n);
    drop(silent);
}

/// Findings spooled while the receiver was down are delivered by the next start.
#[test]
fn webhook_spool_survives_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = webhook(
        "hook",
        &format!("http://127.0.0.1:{port}/hook"),
        &tmp.path().join("spool"),
        r#"backoff_initial = "50ms"
        backoff_max = "200ms""#,
    );
    let sinks = start(&cfg);
    emit_high(&sinks, "restart", 30);
    std::thread::sleep(Duration::from_millis(200));
    let s = sinks.shutdown(Duration::from_millis(800));
    assert_eq!(s[0].delivered, 0);
    assert_eq!(s[0].dropped, 0);
    assert_eq!(s[0].spool_pending, 30, "{:?}", s[0]);
    for e in std::fs::read_dir(tmp.path().join("spool")).unwrap() {
        let md = e.unwrap().metadata().unwrap();
        assert_eq!(md.mode() & 0o777, 0o600);
    }

    let server = HttpServer::start_at(port, None);
    let sinks = start(&cfg);
    assert_eq!(stat(&sinks, "hook").recovered, 30);
    wait_delivered(&sinks, "hook", 30);
    let s = sinks.shutdown(Duration::from_secs(2));
    assert_eq!(s[0].spool_pending, 0);
    let ids: HashSet<_> = server.delivered_ids().into_iter().collect();
    assert_eq!(ids.len(), 30);
    assert!(ids.contains("restart-00000000") && ids.contains("restart-00000029"));
}

// ---------------------------------------------------------------------------------------------
// Syslog
// ---------------------------------------------------------------------------------------------

/// Checks an RFC 5424 message and returns its finding.
fn parse_syslog(msg: &[u8], facility: u8, app: &str) -> Finding {
    let s = std::str::from_utf8(msg).unwrap();
    assert!(s.is_ascii(), "{s}");
    let (pri, rest) = s.strip_prefix('<').unwrap().split_once('>').unwrap();
    let pri: u8 = pri.parse().unwrap();
    let fields: Vec<&str> = rest.splitn(7, ' ').collect();
    assert_eq!(fields[0], "1", "version");
    assert!(
        fields[1].ends_with('Z') && fields[1].contains('T'),
        "{}",
        fields[1]
    );
    assert_eq!(fields[3], app);
    assert_eq!(fields[4], std::process::id().to_string());
    let body = fields[6].strip_prefix("- ").unwrap();
    let f: Finding = serde_json::from_str(body).unwrap();
    assert_eq!(fields[5], f.rule);
    let sev = match f.severity {
        Severity::Critical => 2,
        Severity::High => 3,
        Severity::Medium => 4,
        Severity::Low => 5,
        Severity::Info => 6,
    };
    assert_eq!(pri, facility * 8 + sev);
    f
}

fn mixed(tag: &str, i: u64) -> Finding {
    let sev = Severity::ALL[(i % 5) as usize];
    finding(
        tag,
        i,
        sev,
        "privileged_endpoint",
        "privileged.policy_write",
    )
}

#[test]
fn syslog_udp() {
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let sinks = start(&format!(
        r#"
        [[sinks]]
        name = "udp"
        type = "syslog"
        address = "{}"
        facility = "local3"
        app_name = "aw-test"
        hostname = "vault-1"
        spool_dir = "{}"
        "#,
        rx.local_addr().unwrap(),
        tmp.path().join("spool").display()
    ));
    let n = 20;
    for i in 0..n {
        sinks.emit(&mixed("udp", i));
    }
    let mut ids = HashSet::new();
    let mut buf = vec![0u8; 65536];
    while ids.len() < n as usize {
        let k = rx.recv(&mut buf).expect("a datagram within 10 s");
        let msg = &buf[..k];
        assert!(std::str::from_utf8(msg)
            .unwrap()
            .contains(" vault-1 aw-test "));
        ids.insert(parse_syslog(msg, 19, "aw-test").id);
    }
    let s = sinks.shutdown(Duration::from_secs(2));
    assert_eq!(s[0].delivered, n);
}

/// Reads octet-counted frames (`LEN SP MSG`).
fn read_frames(conn: impl Read, want: usize) -> Vec<Vec<u8>> {
    let mut r = BufReader::new(conn);
    let mut out = Vec::new();
    while out.len() < want {
        let mut len = Vec::new();
        if r.read_until(b' ', &mut len).unwrap() == 0 {
            break;
        }
        let n: usize = std::str::from_utf8(&len[..len.len() - 1])
            .unwrap()
            .parse()
            .unwrap();
        let mut msg = vec![0u8; n];
        r.read_exact(&mut msg).unwrap();
        out.push(msg);
    }
    out
}

/// A syslog receiver on a unix datagram socket at `path` (like /dev/log), with a 10 s read
/// timeout.
fn dev_log_receiver(path: &Path) -> UnixDatagram {
    let rx = UnixDatagram::bind(path).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    rx
}

/// A syslog receiver on a stream socket: on a thread, accepts one connection (`accept`), gives
/// it a 10 s read timeout (`set_read_timeout`) and reads `n` octet-counted frames from it.
fn frames_receiver<C: Read + 'static>(
    n: u64,
    accept: impl FnOnce() -> C + Send + 'static,
    set_read_timeout: fn(&C, Option<Duration>) -> std::io::Result<()>,
) -> std::thread::JoinHandle<Vec<Vec<u8>>> {
    std::thread::spawn(move || {
        let conn = accept();
        set_read_timeout(&conn, Some(Duration::from_secs(10))).unwrap();
        read_frames(conn, n as usize)
    })
}

#[test]
fn syslog_tcp_octet_counting_with_large_messages() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let sinks = start(&format!(
        r#"
        [[sinks]]
        name = "tcp"
        type = "syslog"
        protocol = "tcp"
        address = "{addr}"
        spool_dir = "{}"
        "#,
        tmp.path().join("spool").display()
    ));
    let n = 12u64;
    let reader = frames_receiver(
        n,
        move || listener.accept().unwrap().0,
        TcpStream::set_read_timeout,
    );
    for i in 0..n {
        let mut f = mixed("tcp", i);
        // Large: far beyond a datagram, with newlines and non-ASCII inside.
        f.detail.insert(
            "note".into(),
            serde_json::Value::String(format!("line\nbreak é {}", "x".repeat(100_000))),
        );
        sinks.emit(&f);
    }
    let frames = reader.join().unwrap();
    assert_eq!(frames.len() as u64, n);
    let ids: HashSet<_> = frames
        .iter()
        .map(|m| {
            assert!(m.len() > 100_000);
            let f = parse_syslog(m, 4, "auditwatch");
            assert!(f.detail["note"]
                .as_str()
                .unwrap()
                .starts_with("line\nbreak é"));
            f.id
        })
        .collect();
    assert_eq!(ids.len() as u64, n);
    let s = sinks.shutdown(Duration::from_secs(2));
    assert_eq!(s[0].delivered, n);
}

#[test]
fn syslog_unix_datagram_and_stream() {
    let tmp = tempfile::tempdir().unwrap();
    let dgram_path = tmp.path().join("log.sock");
    let stream_path = tmp.path().join("stream.sock");
    let dgram = dev_log_receiver(&dgram_path);
    let listener = UnixListener::bind(&stream_path).unwrap();
    let sinks = start(&format!(
        r#"
        [[sinks]]
        name = "dev-log"
        type = "syslog"
        protocol = "unix_datagram"
        address = "{}"
        facility = "authpriv"
        spool_dir = "{dir}/s1"

        [[sinks]]
        name = "stream"
        type = "syslog"
        protocol = "unix_stream"
        address = "{}"
        facility = "daemon"
        spool_dir = "{dir}/s2"
        "#,
        dgram_path.display(),
        stream_path.display(),
        dir = tmp.path().display()
    ));
    let n = 10u64;
    let reader = frames_receiver(
        n,
        move || listener.accept().unwrap().0,
        UnixStream::set_read_timeout,
    );
    for i in 0..n {
        sinks.emit(&mixed("unix", i));
    }
    let mut buf = vec![0u8; 65536];
    let mut got = HashSet::new();
    for _ in 0..n {
        let k = dgram.recv(&mut buf).expect("a datagram within 10 s");
        got.insert(parse_syslog(&buf[..k], 10, "auditwatch").id);
    }
    assert_eq!(got.len() as u64, n);
    let frames = reader.join().unwrap();
    let ids: HashSet<_> = frames
        .iter()
        .map(|m| parse_syslog(m, 3, "auditwatch").id)
        .collect();
    assert_eq!(ids, got);
    let s = sinks.shutdown(Duration::from_secs(2));
    assert!(s.iter().all(|s| s.delivered == n), "{s:?}");
}

#[test]
fn syslog_unix_datagram_waits_for_the_daemon() {
    // /dev/log missing at first (daemon restarting): findings wait, then go through.
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("log.sock");
    let sinks = start(&format!(
        r#"
        [[sinks]]
        name = "dev-log"
        type = "syslog"
        protocol = "unix_datagram"
        address = "{}"
        spool_dir = "{}"
        backoff_initial = "20ms"
        backoff_max = "100ms"
        "#,
        path.display(),
        tmp.path().join("spool").display()
    ));
    emit_high(&sinks, "later", 5);
    wait_until(Duration::from_secs(5), "failures", || {
        stat(&sinks, "dev-log").failed_attempts >= 3
    });
    assert!(!sinks.health()[0].healthy);
    let rx = dev_log_receiver(&path);
    let mut buf = vec![0u8; 65536];
    let mut ids = HashSet::new();
    while ids.len() < 5 {
        let k = rx.recv(&mut buf).unwrap();
        ids.insert(parse_syslog(&buf[..k], 4, "auditwatch").id);
    }
    wait_until(Duration::from_secs(5), "health", || {
        sinks.health()[0].healthy
    });
    sinks.shutdown(Duration::from_secs(2));
}

// ---------------------------------------------------------------------------------------------
// Filters
// ---------------------------------------------------------------------------------------------

#[test]
fn filters_by_severity_category_and_rule() {
    let f = |sev, cat: &str, rule: &str| finding("flt", 0, sev, cat, rule);
    let by_sev = Filter {
        min_severity: Some(Severity::High),
        ..Filter::default()
    };
    assert!(by_sev.accepts(&f(Severity::High, "a", "r")));
    assert!(by_sev.accepts(&f(Severity::Critical, "a", "r")));
    assert!(!by_sev.accepts(&f(Severity::Medium, "a", "r")));
    let by_cat = Filter {
        categories: vec!["root_token".into(), "auth_failure".into()],
        ..Filter::default()
    };
    assert!(by_cat.accepts(&f(Severity::Info, "auth_failure", "r")));
    assert!(!by_cat.accepts(&f(Severity::Critical, "privileged_endpoint", "r")));
    let by_rule = Filter {
        rules: vec!["root.token_use".into(), "auth.*".into()],
        ..Filter::default()
    };
    assert!(by_rule.accepts(&f(Severity::Info, "x", "root.token_use")));
    assert!(by_rule.accepts(&f(Severity::Info, "x", "auth.brute_force")));
    assert!(!by_rule.accepts(&f(Severity::Info, "x", "root.token_create")));
    assert!(Filter::default().accepts(&f(Severity::Info, "x", "y")));

    // End to end: two file sinks with different filters.
    let tmp = tempfile::tempdir().unwrap();
    let sinks = start(&format!(
        r#"
        [[sinks]]
        name = "urgent"
        type = "file"
        path = "{dir}/urgent.jsonl"
        filter = {{ min_severity = "high", categories = ["root_token", "privileged_endpoint"] }}

        [[sinks]]
        name = "auth"
        type = "file"
        path = "{dir}/auth.jsonl"
        [sinks.filter]
        rules = ["auth.*"]
        "#,
        dir = tmp.path().display()
    ));
    let all = [
        f(Severity::Critical, "root_token", "root.token_use"),
        f(
            Severity::High,
            "privileged_endpoint",
            "privileged.policy_write",
        ),
        f(
            Severity::Medium,
            "privileged_endpoint",
            "privileged.audit_list",
        ),
        f(Severity::High, "auth_failure", "auth.brute_force"),
        f(Severity::Low, "auth_failure", "auth.login_failed"),
    ];
    for x in &all {
        sinks.emit(x);
    }
    let s = sinks.shutdown(Duration::from_secs(5));
    assert_eq!((s[0].accepted, s[0].filtered, s[0].delivered), (2, 3, 2));
    assert_eq!((s[1].accepted, s[1].filtered, s[1].delivered), (2, 3, 2));
    let rules = |file: &str| -> Vec<String> {
        std::fs::read_to_string(tmp.path().join(file))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Finding>(l).unwrap().rule)
            .collect()
    };
    assert_eq!(
        rules("urgent.jsonl"),
        ["root.token_use", "privileged.policy_write"]
    );
    assert_eq!(
        rules("auth.jsonl"),
        ["auth.brute_force", "auth.login_failed"]
    );
}

// ---------------------------------------------------------------------------------------------
// File and stdout
// ---------------------------------------------------------------------------------------------

#[test]
fn file_sink_is_0600_under_umask_000() {
    // umask is process-wide: run in a child process started with umask 000.
    if in_child("file_sink_is_0600_under_umask_000", Some("000")).is_some() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("new/dir");
    let sinks = start(&format!(
        r#"
        [[sinks]]
        name = "f"
        type = "file"
        path = "{}"
        max_bytes = 2000
        keep = 2
        "#,
        dir.join("findings.jsonl").display()
    ));
    emit_high(&sinks, "mode", 10);
    sinks.shutdown(Duration::from_secs(5));
    // Probe: without our care, a file made now would be 0666.
    let probe = tmp.path().join("probe");
    std::fs::write(&probe, b"").unwrap();
    assert_eq!(
        std::fs::metadata(&probe).unwrap().mode() & 0o777,
        0o666,
        "umask is 000"
    );
    for d in [tmp.path().join("new"), dir.clone()] {
        assert_eq!(
            std::fs::metadata(&d).unwrap().mode() & 0o777,
            0o700,
            "{d:?}"
        );
    }
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let e = e.unwrap();
        assert_eq!(
            e.metadata().unwrap().mode() & 0o777,
            0o600,
            "{:?}",
            e.path()
        );
        n += 1;
    }
    assert_eq!(n, 3, "live file and two rotated ones");
}

#[test]
fn file_sink_rotates_and_keeps_n() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("findings.jsonl");
    let n = 42u64;
    // Lines grow with the numbers in them: size the file for 5 of the longest.
    let line_len = serde_json::to_vec(&high("rot", n - 1)).unwrap().len() as u64 + 1;
    let max = line_len * 5 + 10;
    let sinks = start(&format!(
        r#"
        [[sinks]]
        name = "f"
        type = "file"
        path = "{}"
        max_bytes = {max}
        keep = 3
        "#,
        path.display()
    ));
    emit_high(&sinks, "rot", n);
    let s = sinks.shutdown(Duration::from_secs(5));
    assert_eq!(s[0].delivered, n);
    let read = |p: &Path| -> Vec<u64> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Finding>(l).unwrap().source.line - 1)
            .collect()
    };
    let rotated = |i: u32| tmp.path().join(format!("findings.jsonl.{i}"));
    assert!(!rotated(4).exists(), "keep = 3");
    let mut all = Vec::new();
    for p in [rotated(3), rotated(2), rotated(1), path.clone()] {
        assert!(std::fs::metadata(&p).unwrap().len() <= max);
        all.extend(read(&p));
    }
    // The newest 5 × 3 + the live file's findings, in order, ending with the last one.
    assert_eq!(all.last(), Some(&(n - 1)));
    assert!(all.windows(2).all(|w| w[1] == w[0] + 1), "{all:?}");
    assert_eq!(read(&rotated(1)).len(), 5);
}

#[test]
fn file_sink_refuses_symlink() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("elsewhere");
    std::fs::write(&target, b"").unwrap();
    let link = tmp.path().join("findings.jsonl");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let cfg = configs(&format!(
        r#"
        [[sinks]]
        name = "f"
        type = "file"
        path = "{}"
        "#,
        link.display()
    ));
    let e = Sinks::start(cfg, runtime().handle()).unwrap_err();
    assert!(format!("{e:#}").contains("symbolic link"), "{e:#}");
    assert_eq!(std::fs::metadata(&target).unwrap().len(), 0);
    // An existing file with loose permissions is tightened.
    let loose = tmp.path().join("loose.jsonl");
    std::fs::write(&loose, b"").unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let sinks = start(&format!(
        "[[sinks]]\nname = \"f\"\ntype = \"file\"\npath = \"{}\"\n",
        loose.display()
    ));
    sinks.shutdown(Duration::from_secs(1));
    assert_eq!(std::fs::metadata(&loose).unwrap().mode() & 0o777, 0o600);
}

#[test]
fn stdout_sink_json_and_text() {
    // Writes to the real stdout: run in a child process and read its output.
    let Some(out) = in_child("stdout_sink_json_and_text", None) else {
        let sinks = start(
            r#"
            [[sinks]]
            name = "json"
            type = "stdout"

            [[sinks]]
            name = "text"
            type = "stdout"
            format = "text"
            filter = { min_severity = "critical" }
            "#,
        );
        sinks.emit(&high("out", 1));
        let mut crit = finding("out", 2, Severity::Critical, "root_token", "root.token_use");
        crit.path = Some("sys/\x1b[2Jevil".into());
        sinks.emit(&crit);
        let s = sinks.shutdown(Duration::from_secs(5));
        assert_eq!((s[0].delivered, s[1].delivered, s[1].filtered), (2, 1, 1));
        return;
    };
    let json: Vec<Finding> = out
        .lines()
        // The test harness may print on the same line before the first finding.
        .filter_map(|l| serde_json::from_str(&l[l.find('{')?..]).ok())
        .collect();
    assert_eq!(json.len(), 2, "{out}");
    let text: Vec<&str> = out.lines().filter(|l| l.contains("CRITICAL")).collect();
    assert_eq!(text.len(), 1, "{out}");
    assert!(
        text[0].contains("root.token_use") && text[0].contains("\\u{1b}[2Jevil"),
        "{out}"
    );
    assert!(
        !out.contains('\x1b'),
        "no colour, no raw escapes when not a terminal"
    );
}
