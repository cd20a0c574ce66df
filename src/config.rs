//! The configuration of `auditwatch run`: one TOML file (see [`EXAMPLE`], printed by
//! `auditwatch config example`, for every key with its default and meaning).
//!
//! * Unknown keys are errors, reported as `FILE:LINE:COLUMN: unknown key `k` …`; so are
//!   values of the wrong type or out of range.
//! * Relative paths are relative to the working directory (the systemd unit in README.md sets
//!   `WorkingDirectory=/var/lib/auditwatch`).
//! * Secrets stay out of the file: a webhook sink takes its signing key from `secret_env`, and
//!   `${NAME}` in a webhook's `url` or `headers` values is replaced by the environment variable
//!   `NAME` (an unset variable is an error at start; `config check` only warns, since it often
//!   runs where the secrets are not). Values are never logged nor printed.
//! * With no file, `auditwatch run` uses [`DEFAULT_CONFIG`]: listen on TCP `127.0.0.1:9090`, the
//!   built-in rules, findings to stdout, the archive in `./auditwatch-data`, metrics on
//!   `127.0.0.1:9102`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::archive::{ArchiveConfig, Compression, FsyncPolicy};
use crate::rules::{RuleError, RuleSelection, RuleSet};
use crate::sink::{SinkConfig, SinkKind};
use crate::tail::{StartFrom, TailConfig};

/// The configuration used when `auditwatch run` is given no `--config`.
pub const DEFAULT_CONFIG: &str = r#"# The embedded default of `auditwatch run` (no --config given).
data_dir = "auditwatch-data"

[[sources]]
name = "socket"
type = "listen"
tcp = ["127.0.0.1:9090"]

[suppress]
window = "1m"
[suppress.rules]
"login.failed" = true
"login.unresolved_token" = true
"acl.permission_denied" = true

[metrics]
listen = "127.0.0.1:9102"

[[sinks]]
name = "stdout"
type = "stdout"
"#;

/// A complete, commented configuration (`auditwatch config example`). It passes
/// `auditwatch config check` (tested).
pub const EXAMPLE: &str = r#"# auditwatch run — configuration (TOML). Every key is shown; the values are the defaults
# unless the comment says otherwise. Unknown keys are errors. Relative paths are relative to
# the working directory. Durations: "250ms", "10s", "5m", "1h", "1d" (or integer seconds);
# sizes: "512KiB", "16MiB", "1GiB" (or integer bytes).
#
#   auditwatch config check /etc/auditwatch/auditwatch.toml   # validate (exit 0 when valid)
#   auditwatch run --config /etc/auditwatch/auditwatch.toml   # SIGHUP re-reads it

# Root of auditwatch's own state: the archive (unless [archive] dir says otherwise), tail
# checkpoints (<data_dir>/tail-state) and the spools of network sinks (<data_dir>/spool/<sink>).
data_dir = "/var/lib/auditwatch"

[log]
format = "human"            # "human" or "json" (one JSON object per line, on stderr)
level = "info"              # error, warn, info, debug, trace, or a tracing filter such as
                            # "info,auditwatch::sink=debug"; AUDITWATCH_LOG overrides it.
                            # Logs never contain values of audit entries.

[rules]
# Extra rule files (*.toml, recursive) beside the built-in pack; a rule with a built-in id
# replaces it. Re-read on SIGHUP; a directory that does not load keeps the running rules.
# patterns = "/etc/auditwatch/rules"
# Which rules run: globs over rule ids (`auditwatch rules list`). With `only`, just the rules
# matching one of its globs; `disable` then switches off those matching one of its globs.
# A glob that matches no rule id is an error (a typo must not leave a rule on).
only = []                   # e.g. ["privileged.*", "root_token.*"]
disable = []                # e.g. ["brute_force.*", "acl.denied_paths"]

[analysis]
threads = 0                 # analysis threads per source; 0: one per core
max_line_bytes = "16MiB"    # longer entries are archived and counted, not analysed
# strip_prefix = "vault:"   # the audit device's `prefix` option, if you set one
correlate_wait = "2s"       # a request's finding waits this long for its response; "0s": off

# ---- sources: any number of listen and tail sources ----------------------------------------

# The target of the socket audit device: low latency, never makes Vault wait.
[[sources]]
name = "socket"             # unique: A-Z a-z 0-9 . _ - (metrics label `source`)
type = "listen"
tcp = ["127.0.0.1:9090"]    # any of tcp, unix, udp (each a list); at least one address
unix = []                   # e.g. ["/run/auditwatch/audit.sock"] (created 0660)
udp = []
max_connections = 1024
idle_timeout = "60s"        # for connections holding a partial line or never productive
archive = true              # keep the byte-for-byte fallback archive of what arrives here:
                            # true ([archive] dir), false, or a directory of its own
# device = "auditwatch"     # the audit device that sends here (its name in Vault/OpenBao):
                            # the [[watchlist]] tables of this device apply to this source

# The file audit device's log: complete, resumes exactly after a restart.
[[sources]]
name = "file"
type = "tail"
path = "/var/log/vault/audit.log"
rotated = ["/var/log/vault/audit.log.*"]   # where logrotate puts rotated files
from = "beginning"          # first start only (no checkpoint): "beginning" or "end"
poll_interval = "250ms"
checkpoint_interval = "1s"
rotate_wait = "5s"
# state_dir = "/var/lib/auditwatch/tail-state"   # default: <data_dir>/tail-state
archive = false             # the file already is on disk
# device = "file-audit"     # the file audit device writing `path`

# ---- watch lists: HMACs as one audit device writes them --------------------------------------

# Each device has its own salt, so a list belongs to one device (`device` of a source). Lines:
# `hmac-sha256:<hex> [label]`, `#` comments. Get the hashes with
# `bao write sys/audit-hash/file-audit input=root`. Re-read on SIGHUP. Built-in rules use the
# lists `root` (hash of "root") and `login-errors` ("invalid username or password", "invalid role
# or secret ID"); watchlist.match reports any other list's values anywhere in an entry.
# [[watchlist]]
# device = "file-audit"
# name = "root"
# file = "/etc/auditwatch/watchlists/file-audit/root.list"

# ---- what happens to findings ----------------------------------------------------------------

[merge]
# A socket source and a tail source watching the same Vault node see every event twice.
# Findings with the same (rule, type, request.id, path) from different sources within this
# window are reported once (the first to arrive); findings of one source are never merged.
# "0s" turns merging off.
window = "10s"

[suppress]
# Identical findings (same rule and actor) within a window: the first is reported at once;
# the repeats are collapsed into one summary finding at the end of the window, with
# detail.suppression = {count, repeats, first_time, last_time, window_seconds, paths, first_id}.
window = "1m"               # the window of rules set to `true` below (and of all, with all = true)
all = false                 # true: every rule, except those set to false below
[suppress.rules]            # rule id (or "prefix*") = true | false | a window of its own
"login.failed" = true
"login.unresolved_token" = true
"acl.permission_denied" = "10m"
# "root_token.used" = false

# ---- the fallback archive (of sources with archive = true) ---------------------------------

[archive]
# dir = "/var/lib/auditwatch"   # default: data_dir
rotate_size = "256MiB"
# rotate_age = "1d"
# keep_files = 30
# keep_bytes = "20GiB"
compress = "none"           # "none", "gzip" or "zstd" (rotated segments, in the background)
fsync = "1s"                # "always", "never", or an interval

# ---- metrics and health ----------------------------------------------------------------------

[metrics]
listen = "127.0.0.1:9102"   # GET /metrics (Prometheus text), GET /health (200 or 503 + JSON);
                            # "" turns the endpoint off. Keep it on loopback.

[shutdown]
drain_timeout = "10s"       # SIGTERM: longest wait for sources, analysis and sinks to drain

# ---- sinks: where findings go (each with its own filter, queue, retries and spool) ---------

[[sinks]]
name = "console"
type = "stdout"
format = "json"             # "json" (the finding schema, one per line) or "text"

[[sinks]]
name = "findings-file"
type = "file"
path = "/var/lib/auditwatch/findings.jsonl"   # 0600; rotated by size
max_bytes = "64MiB"
keep = 5

[[sinks]]
name = "siem"
type = "webhook"
url = "https://siem.example.com/hooks/auditwatch"
template = "generic"        # or "slack"
batch_max = 1
batch_wait = "1s"
secret_env = "AUDITWATCH_WEBHOOK_SECRET"     # HMAC-SHA256 signing key, from the environment
headers = { Authorization = "Bearer ${AUDITWATCH_WEBHOOK_TOKEN}" }   # ${NAME}: from the environment
timeout = "10s"
queue_max = 10000
backoff_initial = "500ms"
backoff_max = "60s"
degraded_after = 3
spool_max_bytes = "64MiB"   # disk budget while the receiver is down; 0: no spool
[sinks.filter]
min_severity = "medium"
# categories = ["root_token_created", "root_token_used", "privileged_endpoint"]
# rules = ["privileged.*"]

# [[sinks]]
# name = "slack"
# type = "webhook"
# url = "${AUDITWATCH_SLACK_URL}"
# template = "slack"
# filter = { min_severity = "critical" }

# [[sinks]]
# name = "syslog"
# type = "syslog"
# protocol = "unix_datagram"  # udp, tcp, unix_datagram, unix_stream
# address = "/dev/log"
# facility = "auth"
"#;

/// A configuration error, located when the TOML parser knows where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file (or `<default>`, `<stdin>`).
    pub origin: String,
    /// 1-based line and column.
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "{}:{l}:{c}: {}", self.origin, self.message),
            (Some(l), None) => write!(f, "{}:{l}: {}", self.origin, self.message),
            _ => write!(f, "{}: {}", self.origin, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Log output of the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter (`info`, `warn,auditwatch::sink=debug`).
    pub level: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnalysisConfig {
    /// Analysis threads per source (at least 1).
    pub threads: usize,
    pub max_line_bytes: usize,
    pub strip_prefix: Option<String>,
    /// How long a request's finding waits for its response (zero: off).
    pub correlate_wait: Duration,
}

/// A socket source (see [`crate::listen`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenSource {
    pub tcp: Vec<SocketAddr>,
    pub unix: Vec<PathBuf>,
    pub udp: Vec<SocketAddr>,
    pub max_connections: usize,
    pub idle_timeout: Duration,
}

/// A file source (see [`crate::tail`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailSource {
    pub path: PathBuf,
    pub rotated: Vec<String>,
    pub from: StartFrom,
    pub poll_interval: Duration,
    pub checkpoint_interval: Duration,
    pub rotate_wait: Duration,
    pub state_dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    Listen(ListenSource),
    Tail(TailSource),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceConfig {
    pub name: String,
    pub spec: SourceSpec,
    /// The archive directory of this source, if it keeps one.
    pub archive: Option<PathBuf>,
    /// The audit device whose entries this source receives (its watch lists apply).
    pub device: Option<String>,
}

/// `[[watchlist]]`: a watch list file of one audit device (see [`crate::watchlist`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchlistConfig {
    /// The device (`device` of a source) the hashes were computed for.
    pub device: String,
    /// The list's name, as rules name it (`in_watchlist = "root"`).
    pub name: String,
    /// `hmac-sha256:<hex> [label]` lines; re-read on SIGHUP.
    pub file: PathBuf,
}

impl SourceConfig {
    /// `listen` or `tail`.
    pub fn kind(&self) -> &'static str {
        match self.spec {
            SourceSpec::Listen(_) => "listen",
            SourceSpec::Tail(_) => "tail",
        }
    }

    /// The tailer settings of a tail source.
    pub fn tail_config(&self, max_line: usize) -> Option<TailConfig> {
        let SourceSpec::Tail(t) = &self.spec else {
            return None;
        };
        let mut c = TailConfig::new(&t.path, &t.state_dir);
        c.from = t.from;
        c.rotated = t.rotated.clone();
        c.poll_interval = t.poll_interval;
        c.checkpoint_interval = t.checkpoint_interval;
        c.rotate_wait = t.rotate_wait;
        c.max_line = max_line;
        Some(c)
    }
}

/// `[archive]`: how archives are written (each source with `archive` set keeps one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveSettings {
    pub dir: PathBuf,
    pub rotate_size: u64,
    pub rotate_age: Option<Duration>,
    pub keep_files: Option<usize>,
    pub keep_bytes: Option<u64>,
    pub compress: Compression,
    pub fsync: FsyncPolicy,
}

impl ArchiveSettings {
    /// The archive configuration for `dir`.
    pub fn for_dir(&self, dir: &Path) -> ArchiveConfig {
        let mut c = ArchiveConfig::new(dir);
        c.rotate_bytes = Some(self.rotate_size);
        c.rotate_age = self.rotate_age;
        c.keep_files = self.keep_files;
        c.keep_bytes = self.keep_bytes;
        c.compress = self.compress;
        c.fsync = self.fsync;
        c
    }
}

/// Whether and how long a rule's repeats are collapsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleSuppress {
    Off,
    Window(Duration),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuppressConfig {
    /// Window of rules set to `true` (and of every rule with `all`).
    pub window: Duration,
    pub all: bool,
    /// Rule id or `prefix*`, in file order; exact ids win over prefixes, longer prefixes over
    /// shorter ones.
    pub rules: Vec<(String, RuleSuppress)>,
}

impl SuppressConfig {
    /// Nothing is suppressed.
    pub fn off() -> SuppressConfig {
        SuppressConfig {
            window: Duration::from_secs(60),
            all: false,
            rules: Vec::new(),
        }
    }

    /// The window for `rule`, or `None` when its findings are never collapsed.
    pub fn window_for(&self, rule: &str) -> Option<Duration> {
        let mut best: Option<(usize, RuleSuppress)> = None;
        for (pat, s) in &self.rules {
            let rank = match pat.strip_suffix('*') {
                None if pat == rule => usize::MAX,
                Some(prefix) if rule.starts_with(prefix) => prefix.len(),
                _ => continue,
            };
            let better = match best {
                None => true,
                Some((r, _)) => rank >= r,
            };
            if better {
                best = Some((rank, *s));
            }
        }
        match best {
            Some((_, RuleSuppress::Off)) => None,
            Some((_, RuleSuppress::Window(w))) => Some(w),
            None if self.all => Some(self.window),
            None => None,
        }
        .filter(|w| !w.is_zero())
    }
}

/// The whole configuration of `auditwatch run`.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it came from (a path, `<default>` or `<stdin>`).
    pub origin: String,
    pub data_dir: PathBuf,
    pub log: LogConfig,
    /// Extra rule directory.
    pub patterns: Option<PathBuf>,
    /// `[rules] only` / `disable`: which rules run.
    pub rule_selection: RuleSelection,
    pub analysis: AnalysisConfig,
    pub sources: Vec<SourceConfig>,
    pub archive: ArchiveSettings,
    /// Window of the cross-source merge (zero: off).
    pub merge_window: Duration,
    pub suppress: SuppressConfig,
    /// `/metrics` and `/health` (none: off).
    pub metrics: Option<SocketAddr>,
    pub drain_timeout: Duration,
    pub sinks: Vec<SinkConfig>,
    /// Each sink's table as written (to tell which sinks a reload changed).
    pub sink_tables: Vec<toml::Value>,
    /// Environment variables named by the file that are not set (secret_env, `${NAME}`).
    /// `run` refuses to start with any; `config check` warns.
    pub missing_env: Vec<String>,
    /// Watch lists, each of the device of some source (files read by [`Config::watch_lists`]).
    pub watchlists: Vec<WatchlistConfig>,
}

impl Config {
    /// Reads and validates a configuration file (`-`: stdin).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let (origin, text) = if path == Path::new("-") {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).map_err(|e| {
                ConfigError {
                    origin: "<stdin>".into(),
                    line: None,
                    column: None,
                    message: format!("cannot read: {e}"),
                }
            })?;
            ("<stdin>".to_string(), s)
        } else {
            let origin = path.display().to_string();
            let meta = std::fs::metadata(path).map_err(|e| plain(&origin, e))?;
            if meta.len() > MAX_CONFIG_BYTES {
                return Err(plain(&origin, "larger than 1 MiB"));
            }
            let text = std::fs::read_to_string(path).map_err(|e| plain(&origin, e))?;
            (origin, text)
        };
        Self::parse(&origin, &text)
    }

    /// The embedded default ([`DEFAULT_CONFIG`]).
    pub fn embedded_default() -> Config {
        Self::parse("<default>", DEFAULT_CONFIG).expect("the embedded default config is valid")
    }

    /// Parses and validates configuration text; `${NAME}` is looked up in the process
    /// environment.
    pub fn parse(origin: &str, text: &str) -> Result<Config, ConfigError> {
        Self::parse_with_env(origin, text, &|k| std::env::var(k).ok())
    }

    /// As [`Config::parse`], with the environment given.
    pub fn parse_with_env(
        origin: &str,
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| located(origin, text, &e))?;
        let table: toml::Table = toml::from_str(text).map_err(|e| located(origin, text, &e))?;
        let sink_tables = match table.get("sinks") {
            Some(toml::Value::Array(a)) => a.clone(),
            _ => Vec::new(),
        };
        build(origin, text, raw, sink_tables, env)
    }

    /// The rules this configuration runs: the built-in pack, `[rules] patterns`, then
    /// `[rules] only` / `disable`.
    pub fn load_rules(&self) -> Result<RuleSet, RuleError> {
        RuleSet::load_selected(self.patterns.as_deref(), &self.rule_selection)
    }

    /// Names of the sources, in file order.
    pub fn source_names(&self) -> Vec<&str> {
        self.sources.iter().map(|s| s.name.as_str()).collect()
    }

    /// Reads every `[[watchlist]]` file: device → its lists.
    pub fn watch_lists(
        &self,
    ) -> Result<BTreeMap<String, crate::watchlist::DeviceLists>, crate::watchlist::WatchError> {
        let mut out: BTreeMap<String, crate::watchlist::DeviceLists> = BTreeMap::new();
        for w in &self.watchlists {
            let list = crate::watchlist::WatchList::load(&w.name, &w.file)?;
            crate::watchlist::insert(
                out.entry(w.device.clone()).or_default(),
                Some(&w.device),
                list,
            )?;
        }
        Ok(out)
    }
}

const MAX_CONFIG_BYTES: u64 = 1 << 20;

fn plain(origin: &str, e: impl fmt::Display) -> ConfigError {
    ConfigError {
        origin: origin.to_string(),
        line: None,
        column: None,
        message: e.to_string(),
    }
}

/// 1-based (line, column) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |p| p + 1);
    let col = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    (line, col)
}

/// A TOML or serde error with its line; "unknown field" becomes "unknown key", located at the
/// key itself even when the parser only knows the enclosing table.
fn located(origin: &str, text: &str, e: &toml::de::Error) -> ConfigError {
    let mut message = e.message().trim().replace("unknown field", "unknown key");
    let mut at = e.span().map(|s| s.start);
    if let (Some(span), Some(key)) = (e.span(), unknown_key(&message)) {
        // Point at `key =` itself: in the table of the sink the message names, else inside
        // the span, else in the body of the table the span starts (the sink tables only know
        // a coarse span).
        let table_of = |start: usize| -> (usize, usize) {
            let end = text[start..]
                .match_indices('\n')
                .map(|(i, _)| start + i + 1)
                .find(|&i| text[i..].trim_start().starts_with('['))
                .unwrap_or(text.len());
            (start, end)
        };
        let mut regions = Vec::new();
        if let Some(name) = message
            .strip_prefix("sink \"")
            .and_then(|r| r.split('"').next())
        {
            let needle = format!("\"{name}\"");
            let mut off = 0;
            for l in text.split_inclusive('\n') {
                let t = l.trim_start();
                if t.starts_with("name") && t.contains(&needle) {
                    regions.push(table_of(off));
                }
                off += l.len();
            }
        }
        let start = span.start.min(text.len());
        regions.push((start, span.end.min(text.len())));
        regions.push(table_of(start));
        if let Some(i) = regions
            .into_iter()
            .find_map(|(a, b)| find_key(&text[a..b.max(a)], &key).map(|i| a + i))
        {
            at = Some(i);
        }
    }
    if message.is_empty() {
        message = e.to_string();
    }
    let (line, column) = match at {
        Some(o) => {
            let (l, c) = line_col(text, o);
            (Some(l), Some(c))
        }
        None => (None, None),
    };
    ConfigError {
        origin: origin.to_string(),
        line,
        column,
        message,
    }
}

/// Where `key =` (possibly quoted) starts a line or follows `{` or `,` in `region`.
fn find_key(region: &str, key: &str) -> Option<usize> {
    region
        .match_indices(key)
        .find(|(i, _)| {
            let after = region[i + key.len()..]
                .trim_start_matches(['"', '\''])
                .trim_start_matches([' ', '\t']);
            let before = region[..*i]
                .trim_end_matches(['"', '\''])
                .trim_end_matches([' ', '\t']);
            after.starts_with('=')
                && (before.is_empty()
                    || before.ends_with('\n')
                    || before.ends_with('{')
                    || before.ends_with(','))
        })
        .map(|(i, _)| i)
}

/// The key named by "unknown key `x`".
fn unknown_key(message: &str) -> Option<String> {
    let rest = &message[message.find("unknown key `")? + "unknown key `".len()..];
    Some(rest[..rest.find('`')?].to_string())
}

// ------------------------------------------------------------------------- raw TOML shapes

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    data_dir: Option<PathBuf>,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    rules: RawRules,
    #[serde(default)]
    analysis: RawAnalysis,
    #[serde(default)]
    sources: Vec<RawSource>,
    #[serde(default)]
    archive: RawArchive,
    #[serde(default)]
    merge: RawMerge,
    #[serde(default)]
    suppress: RawSuppress,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    shutdown: RawShutdown,
    #[serde(default)]
    sinks: Vec<SinkConfig>,
    #[serde(default)]
    watchlist: Vec<WatchlistConfig>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<LogFormat>,
    level: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRules {
    patterns: Option<PathBuf>,
    #[serde(default)]
    only: Vec<String>,
    #[serde(default)]
    disable: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAnalysis {
    threads: Option<usize>,
    max_line_bytes: Option<Size>,
    strip_prefix: Option<String>,
    correlate_wait: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    name: String,
    #[serde(rename = "type")]
    kind: RawSourceKind,
    archive: Option<ArchiveChoice>,
    device: Option<String>,
    // listen
    tcp: Option<Vec<String>>,
    unix: Option<Vec<PathBuf>>,
    udp: Option<Vec<String>>,
    max_connections: Option<usize>,
    idle_timeout: Option<Dur>,
    // tail
    path: Option<PathBuf>,
    rotated: Option<Vec<String>>,
    from: Option<RawFrom>,
    poll_interval: Option<Dur>,
    checkpoint_interval: Option<Dur>,
    rotate_wait: Option<Dur>,
    state_dir: Option<PathBuf>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum RawSourceKind {
    Listen,
    Tail,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RawFrom {
    Beginning,
    End,
}

#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum ArchiveChoice {
    On(bool),
    Dir(PathBuf),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawArchive {
    dir: Option<PathBuf>,
    rotate_size: Option<Size>,
    rotate_age: Option<Dur>,
    keep_files: Option<usize>,
    keep_bytes: Option<Size>,
    compress: Option<Compression>,
    fsync: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMerge {
    window: Option<Dur>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSuppress {
    window: Option<Dur>,
    all: Option<bool>,
    #[serde(default)]
    rules: BTreeMap<String, RawRuleSuppress>,
}

#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum RawRuleSuppress {
    On(bool),
    Window(Dur),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawShutdown {
    drain_timeout: Option<Dur>,
}

/// A duration: `"500ms"`, `"10s"`, `"5m"`, `"1h"`, `"1d"`, or integer seconds.
#[derive(Debug, Clone, Copy)]
struct Dur(Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum R {
            N(u64),
            S(String),
        }
        match R::deserialize(d)? {
            R::N(n) => Ok(Dur(Duration::from_secs(n))),
            R::S(s) => parse_duration_or_zero(&s)
                .map(Dur)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// A duration as [`crate::rules::parse_duration`] takes it, or zero (`0`, `0s`, `0ms`: it
/// turns a wait or a window off).
pub fn parse_duration_or_zero(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.trim_end_matches(|c: char| c.is_ascii_alphabetic()) == "0" {
        return Ok(Duration::ZERO);
    }
    crate::rules::parse_duration(t)
}

/// A size: `"64MiB"`, `"512KiB"`, `"1GiB"`, or integer bytes (also the sinks' settings).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Size(pub(crate) u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum R {
            N(u64),
            S(String),
        }
        match R::deserialize(d)? {
            R::N(n) => Ok(Size(n)),
            R::S(s) => parse_size(&s).map(Size).map_err(serde::de::Error::custom),
        }
    }
}

/// `16MiB`, `512KiB`, `1GiB`, `1000` (bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("bad size {s:?} (e.g. 16MiB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        "g" | "gib" | "gb" => 1 << 30,
        "t" | "tib" | "tb" => 1 << 40,
        _ => return Err(format!("bad size unit in {s:?} (B, KiB, MiB, GiB, TiB)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} too large"))
}

// ------------------------------------------------------------------------- validation

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && !n.starts_with('.')
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn build(
    origin: &str,
    text: &str,
    raw: RawConfig,
    sink_tables: Vec<toml::Value>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let fail = |msg: String| -> ConfigError { locate_semantic(origin, text, msg) };
    let data_dir = raw
        .data_dir
        .unwrap_or_else(|| PathBuf::from("auditwatch-data"));
    if data_dir.as_os_str().is_empty() {
        return Err(fail("`data_dir` must not be empty".into()));
    }

    let log = LogConfig {
        format: raw.log.format.unwrap_or_default(),
        level: raw.log.level.unwrap_or_else(|| "info".into()),
    };
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log.level) {
        return Err(fail(format!("log.level {:?}: {e}", log.level)));
    }

    let rule_selection = RuleSelection {
        only: raw.rules.only,
        disable: raw.rules.disable,
    };
    rule_selection
        .validate()
        .map_err(|m| fail(format!("rules: {m}")))?;

    let threads = match raw.analysis.threads {
        None | Some(0) => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        Some(n) if n > 256 => return Err(fail("analysis.threads: at most 256".into())),
        Some(n) => n,
    };
    let max_line_bytes = raw
        .analysis
        .max_line_bytes
        .map_or(crate::framing::DEFAULT_MAX_LINE as u64, |s| s.0);
    if !(1024..=1 << 30).contains(&max_line_bytes) {
        return Err(fail(
            "analysis.max_line_bytes: between 1KiB and 1GiB".into(),
        ));
    }
    let analysis = AnalysisConfig {
        threads,
        max_line_bytes: max_line_bytes as usize,
        strip_prefix: raw.analysis.strip_prefix.filter(|p| !p.is_empty()),
        correlate_wait: match raw.analysis.correlate_wait.as_deref() {
            None => crate::correlate::DEFAULT_WAIT,
            Some(d) => parse_duration_or_zero(d)
                .map_err(|e| fail(format!("analysis.correlate_wait: {e}")))?,
        },
    };

    let archive = ArchiveSettings {
        dir: raw.archive.dir.unwrap_or_else(|| data_dir.clone()),
        rotate_size: raw
            .archive
            .rotate_size
            .map_or(crate::archive::DEFAULT_ROTATE_BYTES, |s| s.0),
        rotate_age: raw.archive.rotate_age.map(|d| d.0).filter(|d| !d.is_zero()),
        keep_files: raw.archive.keep_files,
        keep_bytes: raw.archive.keep_bytes.map(|s| s.0),
        compress: raw.archive.compress.unwrap_or_default(),
        fsync: match raw.archive.fsync.as_deref().unwrap_or("1s") {
            "always" => FsyncPolicy::Always,
            "never" => FsyncPolicy::Never,
            d => FsyncPolicy::Interval(parse_duration_or_zero(d).map_err(|e| {
                fail(format!(
                    "archive.fsync: {e} (\"always\", \"never\" or a duration)"
                ))
            })?),
        },
    };
    if archive.rotate_size == 0 {
        return Err(fail("archive.rotate_size must be positive".into()));
    }

    let mut sources = Vec::new();
    for (i, s) in raw.sources.into_iter().enumerate() {
        let name = s.name.clone();
        let here = format!("sources[{i}] ({name:?})");
        if !valid_name(&name) {
            return Err(fail(format!(
                "{here}: name: use 1-64 of A-Z a-z 0-9 . _ - (not starting with '.')"
            )));
        }
        if sources.iter().any(|o: &SourceConfig| o.name == name) {
            return Err(fail(format!("{here}: two sources are named {name:?}")));
        }
        if let Some(d) = &s.device {
            if !valid_name(d) {
                return Err(fail(format!(
                    "{here}: device {d:?}: use 1-64 of A-Z a-z 0-9 . _ - (not starting with '.')"
                )));
            }
        }
        let listen_keys = [
            ("tcp", s.tcp.is_some()),
            ("unix", s.unix.is_some()),
            ("udp", s.udp.is_some()),
            ("max_connections", s.max_connections.is_some()),
            ("idle_timeout", s.idle_timeout.is_some()),
        ];
        let tail_keys = [
            ("path", s.path.is_some()),
            ("rotated", s.rotated.is_some()),
            ("from", s.from.is_some()),
            ("poll_interval", s.poll_interval.is_some()),
            ("checkpoint_interval", s.checkpoint_interval.is_some()),
            ("rotate_wait", s.rotate_wait.is_some()),
            ("state_dir", s.state_dir.is_some()),
        ];
        let (wrong, other) = match s.kind {
            RawSourceKind::Listen => (&tail_keys[..], "tail"),
            RawSourceKind::Tail => (&listen_keys[..], "listen"),
        };
        if let Some((k, _)) = wrong.iter().find(|(_, set)| *set) {
            return Err(fail(format!(
                "{here}: `{k}` applies to {other} sources only"
            )));
        }
        let archive_default = s.kind == RawSourceKind::Listen;
        let archive_dir = match s.archive.clone() {
            None if archive_default => Some(archive.dir.clone()),
            None | Some(ArchiveChoice::On(false)) => None,
            Some(ArchiveChoice::On(true)) => Some(archive.dir.clone()),
            Some(ArchiveChoice::Dir(d)) => Some(d),
        };
        let spec = match s.kind {
            RawSourceKind::Listen => {
                let addr = |v: &String, what: &str| -> Result<SocketAddr, ConfigError> {
                    v.parse().map_err(|_| {
                        fail(format!(
                            "{here}: {what} address {v:?} is not IP:PORT (e.g. 127.0.0.1:9090)"
                        ))
                    })
                };
                let tcp = s
                    .tcp
                    .unwrap_or_default()
                    .iter()
                    .map(|v| addr(v, "tcp"))
                    .collect::<Result<Vec<_>, _>>()?;
                let udp = s
                    .udp
                    .unwrap_or_default()
                    .iter()
                    .map(|v| addr(v, "udp"))
                    .collect::<Result<Vec<_>, _>>()?;
                let unix = s.unix.unwrap_or_default();
                if tcp.is_empty() && udp.is_empty() && unix.is_empty() {
                    return Err(fail(format!(
                        "{here}: a listen source needs at least one address in tcp, unix or udp"
                    )));
                }
                let max_connections = s.max_connections.unwrap_or(1024);
                if max_connections == 0 {
                    return Err(fail(format!("{here}: max_connections must be at least 1")));
                }
                SourceSpec::Listen(ListenSource {
                    tcp,
                    unix,
                    udp,
                    max_connections,
                    idle_timeout: s.idle_timeout.map_or(Duration::from_secs(60), |d| d.0),
                })
            }
            RawSourceKind::Tail => {
                let Some(path) = s.path else {
                    return Err(fail(format!("{here}: a tail source needs `path`")));
                };
                let nonzero = |d: Option<Dur>, dflt: Duration, key: &str| {
                    let v = d.map_or(dflt, |d| d.0);
                    if v.is_zero() {
                        Err(fail(format!("{here}: {key} must be positive")))
                    } else {
                        Ok(v)
                    }
                };
                SourceSpec::Tail(TailSource {
                    path,
                    rotated: s.rotated.unwrap_or_default(),
                    from: match s.from.unwrap_or(RawFrom::Beginning) {
                        RawFrom::Beginning => StartFrom::Beginning,
                        RawFrom::End => StartFrom::End,
                    },
                    poll_interval: nonzero(
                        s.poll_interval,
                        Duration::from_millis(250),
                        "poll_interval",
                    )?,
                    checkpoint_interval: nonzero(
                        s.checkpoint_interval,
                        Duration::from_secs(1),
                        "checkpoint_interval",
                    )?,
                    rotate_wait: s.rotate_wait.map_or(Duration::from_secs(5), |d| d.0),
                    state_dir: s.state_dir.unwrap_or_else(|| data_dir.join("tail-state")),
                })
            }
        };
        sources.push(SourceConfig {
            name,
            spec,
            archive: archive_dir,
            device: s.device,
        });
    }
    if sources.is_empty() {
        return Err(fail(
            "no [[sources]]: configure at least one listen or tail source".into(),
        ));
    }
    for (i, a) in sources.iter().enumerate() {
        for b in &sources[i + 1..] {
            if let (Some(x), Some(y)) = (&a.archive, &b.archive) {
                if x == y {
                    return Err(fail(format!(
                        "sources {:?} and {:?} would both archive into {}: give one `archive = \"<dir>\"` of its own or `archive = false`",
                        a.name,
                        b.name,
                        x.display()
                    )));
                }
            }
            if let (SourceSpec::Tail(x), SourceSpec::Tail(y)) = (&a.spec, &b.spec) {
                if x.path == y.path {
                    return Err(fail(format!(
                        "sources {:?} and {:?} tail the same path {}",
                        a.name,
                        b.name,
                        x.path.display()
                    )));
                }
            }
        }
    }

    let mut watchlists: Vec<WatchlistConfig> = Vec::new();
    for w in raw.watchlist {
        let here = format!("watchlist {:?} of device {:?}", w.name, w.device);
        if !valid_name(&w.name) || !valid_name(&w.device) {
            return Err(fail(format!(
                "{here}: names use 1-64 of A-Z a-z 0-9 . _ - (not starting with '.')"
            )));
        }
        if !sources
            .iter()
            .any(|s| s.device.as_deref() == Some(&w.device))
        {
            return Err(fail(format!(
                "{here}: no source has `device = {:?}` (a watch list holds the hashes of one audit device; name the device on the source that receives its entries)",
                w.device
            )));
        }
        if watchlists
            .iter()
            .any(|o| o.device == w.device && o.name == w.name)
        {
            return Err(fail(format!("{here}: configured twice")));
        }
        if w.file.as_os_str().is_empty() {
            return Err(fail(format!("{here}: `file` is empty")));
        }
        watchlists.push(w);
    }

    let merge_window = raw.merge.window.map_or(Duration::from_secs(10), |d| d.0);
    if merge_window > Duration::from_secs(3600) {
        return Err(fail("merge.window: at most 1h".into()));
    }

    let mut suppress = SuppressConfig {
        window: raw.suppress.window.map_or(Duration::from_secs(60), |d| d.0),
        all: raw.suppress.all.unwrap_or(false),
        rules: Vec::new(),
    };
    if suppress.window > Duration::from_secs(86_400) {
        return Err(fail("suppress.window: at most 1d".into()));
    }
    for (pat, v) in raw.suppress.rules {
        let id = pat.strip_suffix('*').unwrap_or(&pat);
        if (id.is_empty() && pat != "*")
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(fail(format!(
                "suppress.rules: {pat:?} is not a rule id or `prefix*`"
            )));
        }
        let s = match v {
            RawRuleSuppress::On(false) => RuleSuppress::Off,
            RawRuleSuppress::On(true) => RuleSuppress::Window(suppress.window),
            RawRuleSuppress::Window(d) if d.0 > Duration::from_secs(86_400) => {
                return Err(fail(format!("suppress.rules.{pat:?}: at most 1d")))
            }
            RawRuleSuppress::Window(d) => RuleSuppress::Window(d.0),
        };
        suppress.rules.push((pat, s));
    }

    let metrics = match raw.metrics.listen.as_deref() {
        None => Some(SocketAddr::from(([127, 0, 0, 1], 9102))),
        Some("") => None,
        Some(a) => Some(a.parse().map_err(|_| {
            fail(format!(
                "metrics.listen {a:?} is not IP:PORT (e.g. 127.0.0.1:9102; \"\" turns it off)"
            ))
        })?),
    };
    for s in &sources {
        if let SourceSpec::Listen(l) = &s.spec {
            if let Some(m) = metrics {
                if m.port() != 0 && l.tcp.contains(&m) {
                    return Err(fail(format!(
                        "metrics.listen {m} is also a tcp address of source {:?}",
                        s.name
                    )));
                }
            }
        }
    }

    let drain_timeout = raw
        .shutdown
        .drain_timeout
        .map_or(Duration::from_secs(10), |d| d.0);
    if drain_timeout < Duration::from_millis(100) {
        return Err(fail("shutdown.drain_timeout: at least 100ms".into()));
    }

    // Sinks: default spool directories under data_dir; secrets from the environment.
    let mut sinks = raw.sinks;
    let mut missing_env = Vec::new();
    let mut names = std::collections::HashSet::new();
    for s in &mut sinks {
        if !names.insert(s.name.clone()) {
            return Err(fail(format!("two sinks are named {:?}", s.name)));
        }
        if s.kind.is_network() && s.spool_dir.is_none() {
            s.spool_dir = Some(data_dir.join("spool").join(&s.name));
        }
        if let SinkKind::Webhook(w) = &mut s.kind {
            if let Some(var) = &w.secret_env {
                if env(var).is_none() {
                    missing_env.push(var.clone());
                }
            }
            w.url = expand(&w.url, env, &mut missing_env)
                .map_err(|m| fail(format!("sink {:?}: url: {m}", s.name)))?;
            for (k, v) in w.headers.iter_mut() {
                *v = expand(v, env, &mut missing_env)
                    .map_err(|m| fail(format!("sink {:?}: headers.{k}: {m}", s.name)))?;
            }
        }
    }
    if sinks.is_empty() {
        return Err(fail(
            "no [[sinks]]: findings would go nowhere (add e.g. a stdout sink)".into(),
        ));
    }
    missing_env.sort();
    missing_env.dedup();

    Ok(Config {
        origin: origin.to_string(),
        data_dir,
        log,
        patterns: raw.rules.patterns,
        rule_selection,
        analysis,
        sources,
        archive,
        merge_window,
        suppress,
        metrics,
        drain_timeout,
        sinks,
        sink_tables,
        missing_env,
        watchlists,
    })
}

/// Replaces `${NAME}` by the variable's value; an unset variable is noted in `missing` and
/// left as it is. `$$` is a literal `$`.
fn expand(
    s: &str,
    env: &dyn Fn(&str) -> Option<String>,
    missing: &mut Vec<String>,
) -> Result<String, String> {
    if !s.contains('$') {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = after.strip_prefix('{') {
            let Some(end) = r.find('}') else {
                return Err("`${` without its `}`".into());
            };
            let name = &r[..end];
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!("`${{{name}}}`: not an environment variable name"));
            }
            match env(name) {
                Some(v) => out.push_str(&v),
                None => {
                    missing.push(name.to_string());
                    out.push_str(&rest[i..i + 3 + end]);
                }
            }
            rest = &r[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// A semantic error: located at the first line naming the source or key it mentions, when one
/// can be found; otherwise just the file.
fn locate_semantic(origin: &str, text: &str, message: String) -> ConfigError {
    let mut line = None;
    // `sources[2] ("file")` or `sink "siem"`: the line of that name.
    if let Some(start) = message.find("(\"").or_else(|| message.find(" \"")) {
        let rest = &message[start + 2..];
        if let Some(end) = rest.find('"') {
            let name = &rest[..end];
            let needle = format!("\"{name}\"");
            line = text
                .lines()
                .position(|l| {
                    let t = l.trim_start();
                    t.starts_with("name") && t.contains(&needle)
                })
                .map(|p| p + 1);
        }
    }
    ConfigError {
        origin: origin.to_string(),
        line,
        column: None,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse_with_env("t.toml", text, &|k| (k == "TOKEN").then(|| "s3cret".into()))
    }

    const MIN: &str = "[[sources]]\nname = \"s\"\ntype = \"listen\"\ntcp = [\"127.0.0.1:9090\"]\n\
                       [[sinks]]\nname = \"o\"\ntype = \"stdout\"\n";

    #[test]
    fn embedded_default_and_example_are_valid() {
        let d = Config::embedded_default();
        assert_eq!(d.sources.len(), 1);
        assert_eq!(d.sources[0].archive, Some(PathBuf::from("auditwatch-data")));
        assert_eq!(d.metrics, Some(SocketAddr::from(([127, 0, 0, 1], 9102))));
        match &d.sources[0].spec {
            SourceSpec::Listen(l) => {
                assert_eq!(l.tcp, [SocketAddr::from(([127, 0, 0, 1], 9090))])
            }
            _ => unreachable!(),
        }
        assert_eq!(d.sinks[0].kind.name(), "stdout");
        let e = Config::parse_with_env("example", EXAMPLE, &|_| None).unwrap();
        assert_eq!(e.source_names(), ["socket", "file"]);
        assert_eq!(
            e.missing_env,
            ["AUDITWATCH_WEBHOOK_SECRET", "AUDITWATCH_WEBHOOK_TOKEN"]
        );
        assert_eq!(e.sinks.len(), 3);
        assert_eq!(
            e.sinks[2].spool_dir,
            Some(PathBuf::from("/var/lib/auditwatch/spool/siem"))
        );
        assert_eq!(
            e.suppress.window_for("acl.permission_denied"),
            Some(Duration::from_secs(600))
        );
        assert_eq!(e.suppress.window_for("privileged.raw_storage"), None);
    }

    #[test]
    fn unknown_keys_are_located() {
        let e = parse(&format!(
            "{MIN}\n[metrics]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n"
        ))
        .unwrap_err();
        assert_eq!(e.line, Some(11), "{e}");
        assert!(e.message.contains("unknown key `lisen`"), "{e}");
        assert!(e.to_string().starts_with("t.toml:11:1: "), "{e}");
        // inside a sink table (the sink module only knows the table's span)
        let e = parse(&format!("{MIN}formatt = \"json\"\n")).unwrap_err();
        assert_eq!(e.line, Some(8), "{e}");
        assert!(e.message.contains("formatt"), "{e}");
        let e = parse(&format!(
            "{MIN}\n[[sinks]]\nname = \"p\"\ntype = \"file\"\npath = \"/x\"\n\
             [[sinks]]\nname = \"q\"\ntype = \"file\"\npaht = \"/x\"\n"
        ))
        .unwrap_err();
        assert_eq!(e.line, Some(16), "{e}");
        // inside a source
        let e = parse(&format!(
            "{MIN}[[sources]]\nname = \"t\"\ntype = \"tail\"\npaht = \"x\"\n"
        ))
        .unwrap_err();
        assert_eq!(e.line, Some(11), "{e}");
        // top level
        let e = parse(&format!("dat_dir = 1\n{MIN}")).unwrap_err();
        assert_eq!(e.line, Some(1), "{e}");
    }

    #[test]
    fn semantic_errors() {
        for (extra, needle) in [
            (
                "[[sources]]\nname = \"s\"\ntype = \"tail\"\npath = \"/x\"\n",
                "two sources",
            ),
            (
                "[[sources]]\nname = \"t\"\ntype = \"listen\"\npath = \"/x\"\n",
                "`path` applies to tail",
            ),
            (
                "[[sources]]\nname = \"t\"\ntype = \"listen\"\nudp = [\"127.0.0.1:1\"]\n",
                "both archive",
            ),
            (
                "[[sources]]\nname = \"t\"\ntype = \"tail\"\n",
                "needs `path`",
            ),
            ("[suppress.rules]\n\"a b\" = true\n", "not a rule id"),
            ("[metrics]\nlisten = \"localhost\"\n", "not IP:PORT"),
            ("[log]\nlevel = \"info,[\"\n", "log.level"),
            (
                "[[watchlist]]\ndevice = \"file-audit\"\nname = \"root\"\nfile = \"x\"\n",
                "no source has `device = \"file-audit\"`",
            ),
            (
                "[[sources]]\nname = \"t\"\ntype = \"tail\"\npath = \"/x\"\ndevice = \"a b\"\n",
                "device \"a b\"",
            ),
        ] {
            let e = parse(&format!("{MIN}{extra}")).unwrap_err();
            assert!(e.message.contains(needle), "{extra:?}: {e}");
        }
        let e = parse("[[sinks]]\nname = \"o\"\ntype = \"stdout\"\n").unwrap_err();
        assert!(e.message.contains("no [[sources]]"), "{e}");
        let c = parse(&format!(
            "{MIN}[[sources]]\nname = \"t\"\ntype = \"tail\"\npath = \"/x\"\ndevice = \"file-audit\"\n\
             [[watchlist]]\ndevice = \"file-audit\"\nname = \"root\"\nfile = \"root.list\"\n"
        ))
        .unwrap();
        assert_eq!(c.sources[0].device, None);
        assert_eq!(c.sources[1].device.as_deref(), Some("file-audit"));
        assert_eq!(c.watchlists[0].file, PathBuf::from("root.list"));
    }

    #[test]
    fn environment_fills_secrets() {
        let c = parse(&format!(
            "{MIN}[[sinks]]\nname = \"w\"\ntype = \"webhook\"\nurl = \"http://h/x?t=${{TOKEN}}\"\n\
             headers = {{ Authorization = \"Bearer ${{TOKEN}}\", X = \"$${{lit}} ${{NOPE}}\" }}\n\
             secret_env = \"ALSO_NOPE\"\n"
        ))
        .unwrap();
        let SinkKind::Webhook(w) = &c.sinks[1].kind else {
            unreachable!()
        };
        assert_eq!(w.url, "http://h/x?t=s3cret");
        assert_eq!(w.headers["Authorization"], "Bearer s3cret");
        assert_eq!(w.headers["X"], "${lit} ${NOPE}");
        assert_eq!(c.missing_env, ["ALSO_NOPE", "NOPE"]);
        assert!(
            !format!("{:?}", c.sinks[1]).contains("Bearer"),
            "header values in Debug"
        );
    }

    #[test]
    fn rule_selection() {
        let c = parse(&format!(
            "[rules]\ndisable = [\"brute_force.*\"]\nonly = [\"*\"]\n{MIN}"
        ))
        .unwrap();
        assert_eq!(c.rule_selection.disable, ["brute_force.*"]);
        let rules = c.load_rules().unwrap();
        assert!(rules.find("privileged.raw_storage").is_some());
        assert!(rules.find("brute_force.address").is_none());
        // A bad glob is a configuration error; an unknown one fails when the rules load.
        let e = parse(&format!("[rules]\ndisable = [\"a{{\"]\n{MIN}")).unwrap_err();
        assert!(e.message.contains("rules: bad rule glob"), "{e}");
        let c = parse(&format!("[rules]\ndisable = [\"brute_forse.*\"]\n{MIN}")).unwrap();
        let e = c.load_rules().unwrap_err().to_string();
        assert!(e.contains("\"brute_forse.*\" matches no rule"), "{e}");
        assert!(Config::embedded_default().rule_selection.is_empty());
    }

    #[test]
    fn suppression_windows() {
        let c = parse(&format!(
            "{MIN}[suppress]\nwindow = \"30s\"\nall = true\n[suppress.rules]\n\"login.*\" = \"5m\"\n\
             \"login.failed\" = false\n\"root_token.used\" = true\n"
        ))
        .unwrap();
        let s = &c.suppress;
        assert_eq!(s.window_for("login.failed"), None);
        assert_eq!(
            s.window_for("login.unresolved_token"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            s.window_for("root_token.used"),
            Some(Duration::from_secs(30))
        );
        assert_eq!(s.window_for("x"), Some(Duration::from_secs(30)));
        assert_eq!(SuppressConfig::off().window_for("x"), None);
    }
}
