//! The `webhook` sink: HTTP(S) POST of findings as JSON (`ureq` with rustls and ring; the
//! built-in Mozilla roots or `ca_file`), optionally HMAC-signed (see the module docs of
//! [`crate::sink`] for the signature and how to check it).
//!
//! Bodies: `generic` sends the finding JSON, or `{"findings":[…]}` when `batch_max > 1`;
//! `slack` sends `{"text":"…"}`, one readable line per finding (no data values: findings
//! carry none; control characters escaped, and `& < >` as Slack requires).
//!
//! Answers: 2xx is delivered; 400, 413, 415 and 422 reject the findings for good (the body is
//! at fault, sending it again cannot help: counted as `rejected` and `dropped`); anything
//! else (connection errors, timeouts, 3xx, 401, 403, 404, 408, 429, 5xx…) is retried with
//! backoff, honouring `Retry-After` (seconds or an HTTP date). Redirects are not followed.
//! `HTTPS_PROXY` / `HTTP_PROXY` / `ALL_PROXY` and `NO_PROXY` are honoured.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use ureq::http::{HeaderName, HeaderValue};

use super::net::{Failure, Transport};
use super::unix_now;
use crate::finding::Finding;
use crate::output::sanitize;

/// Header with the Unix time (seconds) of a signed request.
pub const TIMESTAMP_HEADER: &str = "X-Auditwatch-Timestamp";
/// Header with `sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`.
pub const SIGNATURE_HEADER: &str = "X-Auditwatch-Signature";
/// Most findings in one request.
pub const BATCH_MAX_LIMIT: usize = 1000;
/// Longest Slack text sent (Slack cuts at 40 000 characters).
const SLACK_TEXT_MAX: usize = 35_000;

/// `type = "webhook"`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `https://…` (or `http://…`).
    pub url: String,
    #[serde(default)]
    pub template: WebhookTemplate,
    /// Findings per request (default 1: one request per finding, body = the finding).
    #[serde(default = "default_batch_max")]
    pub batch_max: usize,
    /// Longest wait for a batch to fill (default 1s).
    #[serde(
        default = "default_batch_wait",
        deserialize_with = "super::de_duration"
    )]
    pub batch_wait: Duration,
    /// The signing key, in the configuration file (prefer `secret_env`).
    #[serde(default)]
    pub secret: Option<String>,
    /// The environment variable holding the signing key.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// Extra request headers (e.g. `Authorization`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// PEM file of the root certificates to trust instead of the built-in Mozilla roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

fn default_batch_max() -> usize {
    1
}

fn default_batch_wait() -> Duration {
    Duration::from_secs(1)
}

impl WebhookConfig {
    pub fn new(url: impl Into<String>) -> WebhookConfig {
        WebhookConfig {
            url: url.into(),
            template: WebhookTemplate::Generic,
            batch_max: 1,
            batch_wait: default_batch_wait(),
            secret: None,
            secret_env: None,
            headers: BTreeMap::new(),
            ca_file: None,
        }
    }
}

/// Secrets and header values stay out of logs.
impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .field("template", &self.template)
            .field("batch_max", &self.batch_max)
            .field("batch_wait", &self.batch_wait)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("secret_env", &self.secret_env)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// The request body's shape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookTemplate {
    /// The finding JSON, or `{"findings":[…]}` when batched.
    #[default]
    Generic,
    /// `{"text":"…"}` for Slack-compatible incoming webhooks (Slack, Mattermost, Rocket.Chat…).
    Slack,
}

pub(crate) struct Webhook {
    agent: ureq::Agent,
    url: String,
    template: WebhookTemplate,
    batched: bool,
    batch_max: usize,
    batch_wait: Duration,
    headers: Vec<(HeaderName, HeaderValue)>,
    key: Option<Vec<u8>>,
}

impl Webhook {
    pub fn new(cfg: &WebhookConfig, timeout: Duration) -> anyhow::Result<Webhook> {
        let uri: ureq::http::Uri = cfg
            .url
            .parse()
            .with_context(|| format!("url {:?}", cfg.url))?;
        let host = uri.host().unwrap_or_default().to_string();
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") => {
                let loopback = host == "localhost"
                    || host
                        .trim_matches(|c| c == '[' || c == ']')
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback());
                if !loopback {
                    tracing::warn!(url = %cfg.url, "webhook over plain http: findings travel unencrypted");
                }
            }
            _ => bail!("url {:?}: use http:// or https://", cfg.url),
        }
        if host.is_empty() {
            bail!("url {:?} has no host", cfg.url);
        }
        if !(1..=BATCH_MAX_LIMIT).contains(&cfg.batch_max) {
            bail!("batch_max must be 1 to {BATCH_MAX_LIMIT}");
        }
        let key = match (&cfg.secret, &cfg.secret_env) {
            (Some(_), Some(_)) => bail!("set secret or secret_env, not both"),
            (Some(s), None) => Some(s.clone()),
            (None, Some(var)) => Some(std::env::var(var).map_err(|_| {
                anyhow::anyhow!("secret_env: environment variable {var} is not set")
            })?),
            (None, None) => None,
        };
        if key.as_deref() == Some("") {
            bail!("the webhook secret is empty");
        }
        let mut headers = Vec::new();
        for (k, v) in &cfg.headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .with_context(|| format!("header name {k:?}"))?;
            if name.as_str().starts_with("x-auditwatch-")
                || ["host", "content-length", "transfer-encoding"].contains(&name.as_str())
            {
                bail!("header {k:?} is set by auditwatch");
            }
            let mut value =
                HeaderValue::from_str(v).with_context(|| format!("value of header {k:?}"))?;
            value.set_sensitive(true);
            headers.push((name, value));
        }
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(path) = &cfg.ca_file {
            let pem = std::fs::read(path).with_context(|| format!("ca_file {}", path.display()))?;
            let mut certs = Vec::new();
            for item in ureq::tls::parse_pem(&pem) {
                if let ureq::tls::PemItem::Certificate(c) =
                    item.with_context(|| format!("ca_file {}", path.display()))?
                {
                    certs.push(c);
                }
            }
            if certs.is_empty() {
                bail!("ca_file {}: no certificate found", path.display());
            }
            tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certs));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(concat!("auditwatch/", env!("CARGO_PKG_VERSION")))
            .tls_config(tls.build())
            .build()
            .into();
        Ok(Webhook {
            agent,
            url: cfg.url.clone(),
            template: cfg.template,
            batched: cfg.batch_max > 1,
            batch_max: cfg.batch_max,
            batch_wait: cfg.batch_wait,
            headers,
            key: key.map(String::into_bytes),
        })
    }

    fn body(&self, batch: &[Arc<Finding>]) -> Vec<u8> {
        match self.template {
            WebhookTemplate::Generic if !self.batched => {
                serde_json::to_vec(&*batch[0]).unwrap_or_default()
            }
            WebhookTemplate::Generic => {
                let findings: Vec<&Finding> = batch.iter().map(|f| &**f).collect();
                serde_json::to_vec(&serde_json::json!({ "findings": findings })).unwrap_or_default()
            }
            WebhookTemplate::Slack => {
                serde_json::to_vec(&serde_json::json!({ "text": slack_text(batch) }))
                    .unwrap_or_default()
            }
        }
    }
}

impl Transport for Webhook {
    fn batch_max(&self) -> usize {
        self.batch_max
    }

    fn batch_wait(&self) -> Duration {
        self.batch_wait
    }

    fn deliver(&mut self, batch: &[Arc<Finding>]) -> Result<(), Failure> {
        let body = self.body(batch);
        let mut req = self
            .agent
            .post(&self.url)
            .header("Content-Type", "application/json");
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        if let Some(key) = &self.key {
            let ts = unix_now();
            req = req
                .header(TIMESTAMP_HEADER, ts.to_string())
                .header(SIGNATURE_HEADER, signature(key, ts, &body));
        }
        let mut resp = match req.send(&body[..]) {
            Ok(r) => r,
            Err(e) => return Err(Failure::retry(describe(&e))),
        };
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, unix_now()));
        // Read the (small) answer so the connection can be reused.
        let _ = resp.body_mut().with_config().limit(64 << 10).read_to_vec();
        if status.is_success() {
            return Ok(());
        }
        let message = format!(
            "HTTP {}{}",
            status.as_u16(),
            status
                .canonical_reason()
                .map(|r| format!(" {r}"))
                .unwrap_or_default()
        );
        Err(Failure {
            delivered: 0,
            permanent: matches!(status.as_u16(), 400 | 413 | 415 | 422),
            retry_after,
            message,
        })
    }
}

fn describe(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Io(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
            std::io::ErrorKind::ConnectionReset => "connection reset".into(),
            std::io::ErrorKind::TimedOut => "timed out".into(),
            _ => io.to_string(),
        },
        ureq::Error::Timeout(_) => "timed out".into(),
        other => other.to_string(),
    }
}

/// `sha256=` and the hex HMAC-SHA256 of `<timestamp>.<body>` keyed with `key`.
pub fn signature(key: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// `Retry-After`: delay-seconds or an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn parse_retry_after(v: &str, now: u64) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let parts: Vec<&str> = v.split_ascii_whitespace().collect();
    if parts.len() != 6 || parts[5] != "GMT" {
        return None;
    }
    let day: i64 = parts[1].parse().ok()?;
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| *m == parts[2])? as i64 + 1;
    let year: i64 = parts[3].parse().ok()?;
    let hms: Vec<i64> = parts[4]
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    if hms.len() != 3 {
        return None;
    }
    let at = days_from_civil(year, month, day) * 86_400 + hms[0] * 3600 + hms[1] * 60 + hms[2];
    Some(Duration::from_secs(
        at.saturating_sub(now as i64).max(0) as u64
    ))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
pub(crate) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Slack mrkdwn text: control characters escaped, then `&`, `<`, `>`.
fn slack_escape(s: &str) -> String {
    sanitize(s)
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// One readable line: `[HIGH] rule: title · operation path (ns …) · actor name@addr · time ·
/// source file:line · id 1a2b3c4d5e6f`.
fn slack_line(f: &Finding) -> String {
    let dash = |o: &Option<String>| o.as_deref().map_or("-".to_string(), slack_escape);
    format!(
        "*[{}]* {}: {} · {} {} (ns {}) · actor {}@{} · {} · source {}:{} · id {}",
        f.severity.as_str().to_uppercase(),
        slack_escape(&f.rule),
        slack_escape(&f.title),
        dash(&f.operation),
        dash(&f.path),
        slack_escape(&f.namespace),
        dash(&f.actor.display_name),
        dash(&f.actor.remote_address),
        dash(&f.time),
        slack_escape(&f.source.name),
        f.source.line,
        slack_escape(f.id.get(..12).unwrap_or(&f.id)),
    )
}

fn slack_text(batch: &[Arc<Finding>]) -> String {
    if batch.len() == 1 {
        return format!("auditwatch: {}", slack_line(&batch[0]));
    }
    let mut text = format!("auditwatch: {} findings", batch.len());
    for (i, f) in batch.iter().enumerate() {
        let line = slack_line(f);
        if text.len() + line.len() + 3 > SLACK_TEXT_MAX {
            text.push_str(&format!("\n… and {} more", batch.len() - i));
            break;
        }
        text.push_str("\n• ");
        text.push_str(&line);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after(" 7 ", 0), Some(Duration::from_secs(7)));
        // 1994-11-06 08:49:37 UTC = 784111777
        let at = 784_111_777;
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", at - 30),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", at + 30),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", 0), None);
    }

    #[test]
    fn signature_is_hmac_of_timestamp_dot_body() {
        // RFC 4231-style check against an independent computation.
        let s = signature(b"key", 1_700_000_000, b"{\"a\":1}");
        let mut mac = Hmac::<Sha256>::new_from_slice(b"key").unwrap();
        mac.update(b"1700000000.{\"a\":1}");
        assert_eq!(
            s,
            format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
        );
    }

    #[test]
    fn slack_escaping() {
        assert_eq!(
            slack_escape("a<b>&\x1b[2J\n"),
            "a&lt;b&gt;&amp;\\u{1b}[2J\\n"
        );
    }

    #[test]
    fn debug_redacts_secrets() {
        let mut c = WebhookConfig::new("https://x");
        c.secret = Some("hunter2".into());
        c.headers
            .insert("Authorization".into(), "Bearer tok".into());
        let d = format!("{c:?}");
        assert!(!d.contains("hunter2") && !d.contains("Bearer tok"), "{d}");
    }
}
