//! The `auditwatch` command line. See README.md for every command and flag.

use std::io::{self, BufRead, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use auditwatch::analyze::Analyzer;
use auditwatch::archive::{self, Archive, ArchiveConfig, Compression, FsyncPolicy};
use auditwatch::engine::Stats;
use auditwatch::finding::Severity;
use auditwatch::listen::{self, ListenConfig};
use auditwatch::output::{FindingWriter, Format, OutputReport, OutputThread};
use auditwatch::pipeline::{Backpressure, CountersSnapshot, Pipeline};
use auditwatch::replay::{self, ReplayOptions};
use auditwatch::rules::{RuleSelection, RuleSet};
use auditwatch::tail::{self, StartFrom, TailConfig, TailCounters, Tailer};

/// Watches HashiCorp Vault / OpenBao audit streams and reports privileged
/// access, root tokens and failed logins.
#[derive(Parser)]
#[command(name = "auditwatch", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Analyse archived audit logs (plain, .gz, .zst; files, directories, `-` for stdin).
    Replay(ReplayArgs),
    /// Receive Vault's socket audit device (tcp, unix, udp): archive, analyse, report.
    Listen(Box<ListenArgs>),
    /// Follow a file audit device's log across logrotate; resume exactly after a restart.
    Tail(Box<TailArgs>),
    /// The service: listen and tail sources, rules, archive, sinks, metrics and health from one config file.
    Run(RunArgs),
    /// Validate a `run` configuration file, or print a complete example.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Check a fallback archive's manifest chain and segments; exit 1 on any problem.
    Verify {
        /// The archive directory (holds audit.log and manifest.jsonl).
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// List or test the loaded rules.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Print the HMAC an audit device writes for each value (`hmac-sha256:<hex>`), for watch lists.
    Hash(HashArgs),
}

#[derive(clap::Args)]
struct HashArgs {
    /// The audit device's salt. It stays in shell history and shows in `ps`: prefer --salt-file.
    #[arg(long, value_name = "SALT", required_unless_present = "salt_file")]
    salt: Option<String>,
    /// A file holding the device's salt (a trailing newline is ignored).
    #[arg(long, value_name = "FILE", conflicts_with = "salt")]
    salt_file: Option<PathBuf>,
    /// Values to hash; `-` reads values from stdin, one per line.
    #[arg(required = true, value_name = "VALUE")]
    values: Vec<String>,
}

/// The audit device a stream comes from, and its watch lists.
#[derive(clap::Args)]
struct WatchArgs {
    /// The audit device that wrote the stream (its name in Vault/OpenBao, e.g. file-audit): the
    /// watch lists of this device apply.
    #[arg(long, value_name = "NAME", value_parser = parse_device)]
    device: Option<String>,
    /// A watch list (repeatable): NAME=FILE for this stream's device, or DEVICE=NAME=FILE (used
    /// only when DEVICE is the --device given). FILE holds `hmac-sha256:<hex> [label]` lines.
    #[arg(long, value_name = "[DEVICE=]NAME=FILE")]
    watchlist: Vec<auditwatch::watchlist::WatchSpec>,
}

fn parse_device(s: &str) -> Result<String, String> {
    if auditwatch::watchlist::valid_name(s) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?}: use 1-64 of A-Z a-z 0-9 . _ - (not starting with '.')"
        ))
    }
}

#[derive(clap::Args)]
struct RulesArgs {
    /// Extra rule files (`*.toml`, recursive); same ids replace built-ins.
    #[arg(long, value_name = "DIR")]
    patterns: Option<PathBuf>,
    /// Switch off the rules whose id matches GLOB, e.g. 'brute_force.*' (repeatable).
    /// A glob that matches no rule id is an error.
    #[arg(long, value_name = "GLOB")]
    disable: Vec<String>,
    /// Run only the rules whose id matches GLOB (repeatable); --disable applies after it.
    #[arg(long, value_name = "GLOB")]
    only: Vec<String>,
}

#[derive(Subcommand)]
enum RulesCommand {
    /// List the loaded rules.
    List {
        #[command(flatten)]
        rules: RulesArgs,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Run every rule's fixtures; exit 1 on any failure.
    Test {
        #[command(flatten)]
        rules: RulesArgs,
    },
    /// Print a rule: why it matters, what a line needs to match it, its state, its fixtures
    /// (run now) and its definition; exit 1 if a fixture fails, 2 if there is no such rule.
    Explain {
        /// The rule id (`auditwatch rules list`).
        #[arg(value_name = "RULE")]
        id: String,
        #[command(flatten)]
        rules: RulesArgs,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
}

#[derive(clap::Args)]
struct ReplayArgs {
    /// Files or directories to read; `-` reads stdin. Compression is detected by content.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<String>,
    #[command(flatten)]
    rules: RulesArgs,
    #[command(flatten)]
    watch: WatchArgs,
    /// Write findings here instead of stdout.
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Findings format.
    #[arg(long, value_enum, default_value = "json")]
    format: Format,
    /// Also write the run's counters as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    stats_json: Option<PathBuf>,
    /// Exit 1 when a finding at or above this severity occurred.
    #[arg(long, value_name = "SEVERITY")]
    fail_on: Option<Severity>,
    /// Longest line kept whole (e.g. 16MiB); longer ones are counted and skipped.
    #[arg(long, value_name = "SIZE", default_value = "16MiB", value_parser = parse_size)]
    max_line_bytes: usize,
    /// Analysis threads (default: all cores).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Parse every line, not only those the prefilter passes (validates the whole input).
    #[arg(long)]
    strict: bool,
    /// Never show the progress line.
    #[arg(long)]
    no_progress: bool,
    /// Read files instead of mapping them. By default plain files unchanged
    /// for 10 s (archives) are memory-mapped, which is faster but assumes no
    /// one truncates them during the replay.
    #[arg(long)]
    no_mmap: bool,
    /// Read buffer size (tuning; 1MiB measured best here).
    #[arg(long, value_name = "SIZE", default_value = "1MiB", value_parser = parse_size, hide = true)]
    read_size: usize,
    /// Do not print the summary on stderr.
    #[arg(long, short)]
    quiet: bool,
    /// A request's finding waits this long (entry time) for its response, to report it once with its outcome; 0 turns it off.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = auditwatch::config::parse_duration_or_zero)]
    correlate_wait: Duration,
}

#[derive(clap::Args)]
struct ArchiveArgs {
    /// Fallback archive directory: every complete line received is appended byte for byte to DIR/audit.log.
    #[arg(long, value_name = "DIR", default_value = "auditwatch-data")]
    archive: PathBuf,
    /// Do not keep a fallback archive.
    #[arg(long)]
    no_archive: bool,
    /// Rotate the archive's live file at this size.
    #[arg(long, value_name = "SIZE", default_value = "256MiB", value_parser = parse_size)]
    archive_rotate_size: usize,
    /// Also rotate when the live file is this old (e.g. 1h, 1d).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    archive_rotate_age: Option<Duration>,
    /// Keep at most this many rotated segments.
    #[arg(long, value_name = "N")]
    archive_keep_files: Option<usize>,
    /// Keep rotated segments up to this many bytes in total.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    archive_keep_bytes: Option<usize>,
    /// Compress rotated segments.
    #[arg(long, value_enum, default_value = "none")]
    archive_compress: CompressArg,
    /// When to fsync the live file: `always`, `never`, or an interval such as `1s`.
    #[arg(long, value_name = "POLICY", default_value = "1s", value_parser = parse_fsync)]
    archive_fsync: FsyncPolicy,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CompressArg {
    None,
    Gzip,
    Zstd,
}

impl ArchiveArgs {
    fn config(&self) -> Option<ArchiveConfig> {
        if self.no_archive {
            return None;
        }
        let mut c = ArchiveConfig::new(&self.archive);
        c.rotate_bytes = Some(self.archive_rotate_size as u64);
        c.rotate_age = self.archive_rotate_age;
        c.keep_files = self.archive_keep_files;
        c.keep_bytes = self.archive_keep_bytes.map(|b| b as u64);
        c.compress = match self.archive_compress {
            CompressArg::None => Compression::None,
            CompressArg::Gzip => Compression::Gzip,
            CompressArg::Zstd => Compression::Zstd,
        };
        c.fsync = self.archive_fsync;
        Some(c)
    }
}

#[derive(clap::Args)]
struct ListenArgs {
    /// TCP address to listen on (repeatable). Default 127.0.0.1:9090 when no listener is given.
    #[arg(long, value_name = "ADDR")]
    tcp: Vec<SocketAddr>,
    /// Unix stream socket to listen on (repeatable; created with mode 0660).
    #[arg(long, value_name = "PATH")]
    unix: Vec<PathBuf>,
    /// UDP address to listen on (repeatable; one datagram per entry).
    #[arg(long, value_name = "ADDR")]
    udp: Vec<SocketAddr>,
    #[command(flatten)]
    archive: ArchiveArgs,
    #[command(flatten)]
    rules: RulesArgs,
    /// Most connections at once; beyond it, never-productive connections are evicted first.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    max_connections: usize,
    /// Close a connection that holds a partial line, or never sent a complete entry, this long.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    idle_timeout: Duration,
    #[command(flatten)]
    live: LiveArgs,
}

/// Options shared by the live modes (`listen`, `tail`).
#[derive(clap::Args)]
struct LiveArgs {
    /// Strip Vault's `prefix` from lines before parsing (the archive keeps it).
    #[arg(long, value_name = "PREFIX")]
    strip_prefix: Option<String>,
    /// Longest line kept whole; longer ones are archived and counted, not analysed.
    #[arg(long, value_name = "SIZE", default_value = "16MiB", value_parser = parse_size)]
    max_line_bytes: usize,
    /// Findings format.
    #[arg(long, value_enum, default_value = "json")]
    format: Format,
    /// Write findings here instead of stdout (`listen` replaces the file, `tail` appends to it).
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
    /// At exit, write the run's counters as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    stats_json: Option<PathBuf>,
    /// Analysis threads (default: all cores).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// On SIGTERM/SIGINT, give up draining after this long (exit 1).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// A request's finding waits this long for its response, to report it once with its outcome; 0 turns it off.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = auditwatch::config::parse_duration_or_zero)]
    correlate_wait: Duration,
    #[command(flatten)]
    watch: WatchArgs,
}

impl LiveArgs {
    fn analyzer(&self, rules: Arc<RuleSet>) -> Analyzer {
        let analyzer = Analyzer::new(rules, false, self.max_line_bytes)
            .with_correlation(!self.correlate_wait.is_zero());
        match &self.strip_prefix {
            Some(p) => analyzer.with_prefix(p),
            None => analyzer,
        }
    }

    fn threads(&self) -> usize {
        self.threads
            .unwrap_or_else(|| ReplayOptions::default().threads)
            .max(1)
    }

    /// The findings writer: stdout, or `--output` (appended to or replaced).
    fn writer(&self, append: bool) -> Result<FindingWriter> {
        let to_terminal = self.output.is_none() && io::stdout().is_terminal();
        let out: Box<dyn Write + Send> = match &self.output {
            Some(p) => Box::new(io::BufWriter::new(
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .append(append)
                    .truncate(!append)
                    .open(p)
                    .with_context(|| format!("cannot open {}", p.display()))?,
            )),
            None => Box::new(io::BufWriter::new(io::stdout())),
        };
        Ok(FindingWriter::new(out, self.format, to_terminal, true))
    }
}

// ---- tail (begin) ----
#[derive(Clone, Copy, clap::ValueEnum)]
enum FromArg {
    Beginning,
    End,
}

#[derive(clap::Args)]
#[command(mut_arg("archive", |a| a
    .hide_default_value(true)
    .help("Fallback archive directory (off unless given): every line read is appended byte for byte to DIR/audit.log")))]
struct TailArgs {
    /// The file to follow (the file audit device's `file_path`); a symlink is followed to its current target.
    #[arg(value_name = "PATH")]
    path: PathBuf,
    /// Directory for the checkpoints (created 0700).
    #[arg(long, value_name = "DIR", default_value = "auditwatch-data/tail-state")]
    state: PathBuf,
    /// Where a first start (no checkpoint) begins; ignored when a checkpoint exists.
    #[arg(long, value_enum, default_value = "beginning")]
    from: FromArg,
    /// Rotated siblings to drain after a restart or a copytruncate (repeatable), e.g. '/var/log/vault/audit.log.*'.
    #[arg(long, value_name = "GLOB")]
    rotated: Vec<String>,
    /// Look at the file at least this often (inotify only wakes it earlier).
    #[arg(long, value_name = "DURATION", default_value = "250ms", value_parser = parse_duration)]
    poll_interval: Duration,
    /// Persist the position this often (once the lines it covers are durable).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    checkpoint_interval: Duration,
    /// Keep a rotated-away or deleted file open until it was quiet this long at its end.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    rotate_wait: Duration,
    #[command(flatten)]
    archive: ArchiveArgs,
    #[command(flatten)]
    rules: RulesArgs,
    #[command(flatten)]
    live: LiveArgs,
}
// ---- tail (end) ----

fn parse_duration(s: &str) -> Result<Duration, String> {
    auditwatch::rules::parse_duration(s)
}

fn parse_fsync(s: &str) -> Result<FsyncPolicy, String> {
    match s {
        "always" => Ok(FsyncPolicy::Always),
        "never" => Ok(FsyncPolicy::Never),
        d => parse_duration(d).map(FsyncPolicy::Interval),
    }
}

/// `16MiB`, `512KiB`, `1GiB`, `1000` (bytes), positive.
fn parse_size(s: &str) -> Result<usize, String> {
    auditwatch::config::parse_size(s)?
        .try_into()
        .ok()
        .filter(|v: &usize| *v > 0)
        .ok_or_else(|| format!("bad size {s:?}"))
}

fn main() -> ExitCode {
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let cli =
        <Cli as clap::FromArgMatches>::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // `run` installs its own logging (human or JSON, from its config).
    if !matches!(cli.command, Command::Run(_)) {
        tracing_subscriber::fmt()
            .with_writer(io::stderr)
            .with_ansi(io::stderr().is_terminal())
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("AUDITWATCH_LOG")
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .init();
    }
    let result = match cli.command {
        Command::Replay(args) => run_replay(args),
        Command::Rules { command } => run_rules(command),
        Command::Listen(args) => run_listen(*args),
        Command::Verify { dir } => run_verify(&dir),
        Command::Tail(args) => {
            // tail keeps no archive unless --archive is given.
            let archive_given = matches
                .subcommand_matches("tail")
                .and_then(|m| m.value_source("archive"))
                == Some(clap::parser::ValueSource::CommandLine);
            run_tail(*args, archive_given)
        }
        Command::Run(args) => run_service(args),
        Command::Config { command } => run_config(command),
        Command::Hash(args) => run_hash(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("auditwatch: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn load_rules(args: &RulesArgs) -> Result<RuleSet> {
    let selection = RuleSelection {
        only: args.only.clone(),
        disable: args.disable.clone(),
    };
    Ok(RuleSet::load_selected(
        args.patterns.as_deref(),
        &selection,
    )?)
}

/// The rules for one stream: those of `args`, with the watch lists of `--device` bound.
fn load_stream_rules(args: &RulesArgs, watch: &WatchArgs) -> Result<RuleSet> {
    use auditwatch::watchlist::{self, WatchList};
    let set = load_rules(args)?;
    if watch.watchlist.is_empty() {
        return Ok(set);
    }
    let device = watch.device.as_deref();
    let mut lists = watchlist::DeviceLists::new();
    for spec in &watch.watchlist {
        let list = WatchList::load(&spec.name, &spec.file)?;
        match spec.device.as_deref() {
            Some(d) if Some(d) != device => tracing::warn!(
                "watch list {:?} ({}) belongs to device {d:?}, not to this stream's device ({}): ignored",
                spec.name,
                spec.file.display(),
                device.map_or_else(|| "none given: --device".to_owned(), |d| format!("{d:?}"))
            ),
            _ => watchlist::insert(&mut lists, device, list)?,
        }
    }
    let (bound, missing) = set.with_watchlists(device, &lists)?;
    for (name, ids) in missing {
        tracing::warn!(
            "device {} has no watch list {name:?}: {} cannot fire",
            device.map_or_else(|| "(unnamed)".to_owned(), |d| format!("{d:?}")),
            ids.join(", ")
        );
    }
    Ok(bound)
}

fn run_hash(args: HashArgs) -> Result<ExitCode> {
    let salt = match (&args.salt, &args.salt_file) {
        (Some(s), _) => s.clone(),
        (None, Some(p)) => std::fs::read_to_string(p)
            .with_context(|| format!("cannot read the salt from {}", p.display()))?
            .trim_end_matches(['\r', '\n'])
            .to_owned(),
        (None, None) => anyhow::bail!("--salt or --salt-file is required"),
    };
    if salt.is_empty() {
        anyhow::bail!("the salt is empty");
    }
    let mut out = io::BufWriter::new(io::stdout().lock());
    for v in &args.values {
        if v == "-" {
            for line in io::stdin().lock().lines() {
                let line = line.context("reading values from stdin")?;
                let value = line.strip_suffix('\r').unwrap_or(&line);
                writeln!(out, "{}", auditwatch::watchlist::hmac_sha256(&salt, value))?;
            }
        } else {
            writeln!(out, "{}", auditwatch::watchlist::hmac_sha256(&salt, v))?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn run_rules(cmd: RulesCommand) -> Result<ExitCode> {
    match cmd {
        RulesCommand::List { rules, format } => {
            let set = load_rules(&rules)?;
            let mut out = io::stdout().lock();
            for r in set.rules() {
                match format {
                    Format::Json => {
                        let v = serde_json::json!({
                            "id": r.id, "title": r.title, "category": r.category,
                            "severity": r.severity, "description": r.description,
                            "references": r.references, "origin": r.origin,
                            "fixtures": r.fixtures.len(),
                            "throttle": r.throttle.as_ref().map(|t| serde_json::json!({
                                "key": t.key_names, "window_seconds": t.window.as_secs()})),
                            "window": r.window.as_ref().map(|w| serde_json::json!({
                                "group_by": w.group_names, "count": w.count,
                                "within_seconds": w.within.as_secs_f64(),
                                "distinct": w.distinct.as_ref().map(|(n, _)| n),
                                "max_keys": w.max_keys, "max_state": w.max_state})),
                        });
                        writeln!(out, "{v}")?;
                    }
                    Format::Text => writeln!(
                        out,
                        "{:<36} {:<9} {:<20} {}",
                        r.id,
                        r.severity.as_str(),
                        r.category,
                        r.title
                    )?,
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        RulesCommand::Explain { id, rules, format } => {
            let set = load_rules(&rules)?;
            let Some(e) = auditwatch::rules::explain::explain(&set, &id) else {
                eprintln!("auditwatch: error: no rule {id:?} (see `auditwatch rules list`)");
                return Ok(ExitCode::from(2));
            };
            let mut out = io::stdout().lock();
            match format {
                Format::Json => writeln!(out, "{}", serde_json::to_string(&e)?)?,
                Format::Text => write!(out, "{}", auditwatch::rules::explain::render_text(&e))?,
            }
            Ok(if e.fixtures.iter().all(|f| f.failure.is_none()) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        RulesCommand::Test { rules } => {
            let set = load_rules(&rules)?;
            let failures = set.test_fixtures();
            let fixtures: usize = set.rules().iter().map(|r| r.fixtures.len()).sum();
            for f in &failures {
                println!("FAIL {f}");
            }
            println!(
                "{} rules, {} fixtures: {} passed, {} failed",
                set.rules().len(),
                fixtures,
                fixtures.saturating_sub(failures.iter().filter(|f| f.index > 0).count()),
                failures.len()
            );
            Ok(if failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

#[derive(serde::Serialize)]
struct StatsDoc<'a> {
    #[serde(flatten)]
    stats: &'a Stats,
    inputs: usize,
    failed_inputs: &'a [String],
    elapsed_seconds: f64,
    mb_per_second: f64,
    rules: usize,
    prefilter_literals: usize,
}

fn run_replay(args: ReplayArgs) -> Result<ExitCode> {
    let rules = Arc::new(load_stream_rules(&args.rules, &args.watch)?);
    let (inputs, missing) = replay::expand_inputs(&args.paths);
    for (path, e) in &missing {
        eprintln!("auditwatch: error: {path}: {e}");
    }
    let to_terminal = args.output.is_none() && io::stdout().is_terminal();
    let out: Box<dyn Write + Send> = match &args.output {
        Some(p) => Box::new(io::BufWriter::with_capacity(
            1 << 16,
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => Box::new(io::BufWriter::with_capacity(1 << 16, io::stdout())),
    };
    let mut writer = FindingWriter::new(out, args.format, to_terminal, to_terminal);
    let opts = ReplayOptions {
        max_line: args.max_line_bytes,
        threads: args
            .threads
            .unwrap_or_else(|| ReplayOptions::default().threads)
            .max(1),
        strict: args.strict,
        read_size: args.read_size,
        mmap: !args.no_mmap,
        progress: !args.no_progress && !args.quiet && replay::stderr_is_terminal(),
        correlate_wait: args.correlate_wait,
    };
    let mut worst: Option<Severity> = None;
    let outcome = replay::replay(&inputs, rules.clone(), &opts, &mut |f| {
        worst = worst.max(Some(f.severity));
        writer.write(f)
    });
    let outcome = match outcome {
        Ok(o) => o,
        // A closed stdout (`| head`) ends the run quietly.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
        Err(e) => return Err(e).context("writing findings"),
    };
    match writer.flush() {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
        r => r.context("writing findings")?,
    }
    let mut failed = outcome.failed_inputs.clone();
    failed.extend(missing.iter().map(|(p, _)| p.clone()));
    let secs = outcome.elapsed.as_secs_f64();
    let doc = StatsDoc {
        stats: &outcome.stats,
        inputs: inputs.len() + missing.len(),
        failed_inputs: &failed,
        elapsed_seconds: secs,
        mb_per_second: outcome.stats.bytes as f64 / 1e6 / secs.max(1e-9),
        rules: rules.rules().len(),
        prefilter_literals: rules.literal_count(),
    };
    if let Some(p) = &args.stats_json {
        let text = serde_json::to_string_pretty(&doc)?;
        std::fs::write(p, text + "\n").with_context(|| format!("cannot write {}", p.display()))?;
    }
    if !args.quiet {
        print_summary(&doc);
    }
    Ok(if !failed.is_empty() {
        ExitCode::from(2)
    } else if args.fail_on.is_some_and(|t| worst.is_some_and(|w| w >= t)) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn print_summary(doc: &StatsDoc<'_>) {
    let s = doc.stats;
    let mut e = io::stderr().lock();
    let _ = writeln!(
        e,
        "auditwatch replay: {} inputs, {} entries, {:.1} MB in {:.2} s ({:.1} MB/s), {} candidates parsed",
        doc.inputs,
        s.entries,
        s.bytes as f64 / 1e6,
        doc.elapsed_seconds,
        doc.mb_per_second,
        s.candidates
    );
    let by_sev: Vec<String> = Severity::ALL
        .iter()
        .rev()
        .filter_map(|sev| {
            s.findings_by_severity
                .get(sev.as_str())
                .map(|n| format!("{sev} {n}"))
        })
        .collect();
    let _ = writeln!(
        e,
        "findings: {}{}{}",
        s.findings,
        if by_sev.is_empty() { "" } else { " — " },
        by_sev.join(", ")
    );
    if s.suppressed > 0 {
        let _ = writeln!(
            e,
            "  ({} repeats held back by rule throttles)",
            s.suppressed
        );
    }
    for (rule, n) in &s.findings_by_rule {
        let _ = writeln!(e, "  {rule:<40} {n}");
    }
    let _ = writeln!(
        e,
        "bad input: {} parse errors ({} invalid JSON, {} invalid UTF-8), {} oversize, {} truncated, {} read errors",
        s.parse_errors, s.invalid_json, s.invalid_utf8, s.oversize, s.truncated, s.read_errors
    );
    for err in s.errors.iter().take(10) {
        let _ = writeln!(e, "  {}", auditwatch::output::sanitize(&err.to_string()));
    }
    if s.errors.len() > 10 {
        let _ = writeln!(e, "  … (see --stats-json for the first {})", s.errors.len());
    }
    for f in doc.failed_inputs {
        let _ = writeln!(e, "not read to its end: {f}");
    }
}

fn run_verify(dir: &Path) -> Result<ExitCode> {
    let report =
        archive::verify(dir).with_context(|| format!("cannot verify {}", dir.display()))?;
    print!("{report}");
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[derive(serde::Serialize)]
struct ListenStatsDoc<'a> {
    #[serde(flatten)]
    stats: &'a Stats,
    listener: &'a CountersSnapshot,
    archive: Option<archive::ArchiveStats>,
    /// Findings written, and those an output blocked at shutdown kept back.
    output: &'a OutputReport,
    elapsed_seconds: f64,
}

fn run_listen(args: ListenArgs) -> Result<ExitCode> {
    let rules = Arc::new(load_stream_rules(&args.rules, &args.live.watch)?);
    let mut cfg = ListenConfig {
        tcp: args.tcp.clone(),
        unix: args.unix.clone(),
        udp: args.udp.clone(),
        max_line: args.live.max_line_bytes,
        max_connections: args.max_connections.max(1),
        idle_timeout: args.idle_timeout,
        strip_prefix: args.live.strip_prefix.clone(),
    };
    if cfg.tcp.is_empty() && cfg.unix.is_empty() && cfg.udp.is_empty() {
        cfg.tcp.push(SocketAddr::from(([127, 0, 0, 1], 9090)));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("listen")
        .enable_all()
        .build()?;
    let listeners = rt.block_on(listen::bind(&cfg))?;
    let archive = match args.archive.config() {
        Some(c) => {
            let dir = c.dir.clone();
            Some(
                Archive::open(c)
                    .with_context(|| format!("cannot open the archive in {}", dir.display()))?,
            )
        }
        None => None,
    };
    let writer = args.live.writer(false)?;
    let analyzer = args.live.analyzer(rules);
    let threads = args.live.threads();
    let (emit, output) = OutputThread::spawn(writer);
    let pipeline = Pipeline::start(
        archive,
        analyzer,
        threads,
        Backpressure::ShedAnalysis,
        args.live.correlate_wait,
        emit,
    );
    for b in &listeners.bound {
        eprintln!("auditwatch listen: listening on {b}");
    }
    for (i, granted) in listeners.udp_rcvbuf.iter().enumerate() {
        eprintln!("auditwatch listen: udp socket {i}: kernel receive buffer {granted} bytes");
    }
    eprintln!("auditwatch listen: ready");
    let started = Instant::now();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let reopen = pipeline.reopen.clone();
    rt.spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        let mut stopping = false;
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
                _ = hup.recv() => {
                    reopen.store(true, Ordering::Relaxed);
                    continue;
                }
            }
            if stopping {
                eprintln!("auditwatch listen: second signal, exiting at once");
                std::process::exit(130);
            }
            stopping = true;
            eprintln!("auditwatch listen: stopping: draining connections and flushing the archive");
            let _ = stop_tx.send(true);
        }
    });
    let ingest = pipeline.ingest.clone();
    let counters = pipeline.counters.clone();
    rt.block_on(listen::serve(listeners, cfg, ingest, counters, stop_rx));
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(pipeline.finish());
    });
    let deadline = Instant::now() + args.live.drain_timeout;
    let outcome = match done_rx.recv_timeout(args.live.drain_timeout) {
        Ok(r) => r,
        Err(_) => {
            eprintln!(
                "auditwatch listen: the pipeline did not drain within {:?}; exiting",
                args.live.drain_timeout
            );
            return Ok(ExitCode::from(1));
        }
    };
    let delivery = output.finish(deadline);
    let outcome = outcome.context("writing findings")?;
    rt.shutdown_timeout(Duration::from_millis(100));
    let doc = ListenStatsDoc {
        stats: &outcome.stats,
        listener: &outcome.counters,
        archive: outcome.archive,
        output: &delivery,
        elapsed_seconds: started.elapsed().as_secs_f64(),
    };
    if let Some(p) = &args.live.stats_json {
        let text = serde_json::to_string_pretty(&doc)?;
        std::fs::write(p, text + "\n").with_context(|| format!("cannot write {}", p.display()))?;
    }
    let c = &outcome.counters;
    eprintln!(
        "auditwatch listen: {} connections, {} entries ({:.1} MB) received, {} findings, {} fragments, {} shed before analysis, {} shed at ingest",
        c.connections_total,
        c.lines_received,
        c.bytes_received as f64 / 1e6,
        outcome.stats.findings,
        c.fragments,
        c.analysis_shed_lines,
        c.ingest_shed_lines
    );
    if let Some(a) = &doc.archive {
        eprintln!(
            "auditwatch listen: archive: {} lines ({} bytes) written, {} bytes dropped, {} rotations",
            a.lines_written, a.bytes_written, a.dropped_bytes, a.rotations
        );
    }
    if let Some(e) = &delivery.error {
        eprintln!(
            "auditwatch listen: {e}: {} findings were not written (they are in the stats counts)",
            delivery.undelivered
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

// ---- tail (begin) ----
#[derive(serde::Serialize)]
struct TailStatsDoc<'a> {
    #[serde(flatten)]
    stats: &'a Stats,
    tail: tail::TailStats,
    pipeline: &'a CountersSnapshot,
    archive: Option<archive::ArchiveStats>,
    elapsed_seconds: f64,
}

fn run_tail(args: TailArgs, archive_given: bool) -> Result<ExitCode> {
    let rules = Arc::new(load_stream_rules(&args.rules, &args.live.watch)?);
    let counters = Arc::new(TailCounters::default());
    let mut cfg = TailConfig::new(&args.path, &args.state);
    cfg.from = match args.from {
        FromArg::Beginning => StartFrom::Beginning,
        FromArg::End => StartFrom::End,
    };
    cfg.rotated = args.rotated.clone();
    cfg.poll_interval = args.poll_interval;
    cfg.checkpoint_interval = args.checkpoint_interval;
    cfg.rotate_wait = args.rotate_wait;
    cfg.max_line = args.live.max_line_bytes;
    let mut tailer = Tailer::open(cfg, counters.clone())
        .with_context(|| format!("cannot follow {}", args.path.display()))?;
    let archive = match args.archive.config().filter(|_| archive_given) {
        Some(c) => {
            let dir = c.dir.clone();
            Some(
                Archive::open(c)
                    .with_context(|| format!("cannot open the archive in {}", dir.display()))?,
            )
        }
        None => None,
    };
    let mut writer = args.live.writer(true)?;
    // A corrupt checkpoint is reported through the same output, first.
    let startup = tailer.take_findings();
    for f in &startup {
        writer.write(f).context("writing findings")?;
    }
    let analyzer = args.live.analyzer(rules);
    let threads = args.live.threads();
    let failed = counters.clone();
    let pipeline = Pipeline::start(
        archive,
        analyzer,
        threads,
        Backpressure::Wait,
        args.live.correlate_wait,
        Box::new(move |f| {
            let r = writer.write(f);
            if r.is_err() {
                failed.output_failed.store(true, Ordering::Relaxed);
            }
            r
        }),
    );
    eprintln!(
        "auditwatch tail: following {} ({}; checkpoint {}; archive {})",
        args.path.display(),
        if tailer.first_start() {
            "first start"
        } else {
            "resuming"
        },
        tailer.checkpoint_file().display(),
        if archive_given && !args.archive.no_archive {
            args.archive.archive.display().to_string()
        } else {
            "off".into()
        }
    );
    tailer.on_caught_up(Box::new(|s| {
        eprintln!("auditwatch tail: caught up: {s}");
    }));
    let mut wake = tail::watch::Wake::new(counters.clone());
    wake.watch_path(&args.path);
    let wake_rx = wake.receiver().clone();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let stop = stop.clone();
        let waker = wake.sender();
        let reopen = pipeline.reopen.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                rt.block_on(async move {
                    use tokio::signal::unix::{signal, SignalKind};
                    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
                        signal(SignalKind::terminate()),
                        signal(SignalKind::interrupt()),
                        signal(SignalKind::hangup()),
                    ) else {
                        tracing::error!("cannot install signal handlers");
                        return;
                    };
                    loop {
                        tokio::select! {
                            _ = term.recv() => {}
                            _ = int.recv() => {}
                            _ = hup.recv() => {
                                reopen.store(true, Ordering::Relaxed);
                                continue;
                            }
                        }
                        if stop.swap(true, Ordering::Relaxed) {
                            eprintln!("auditwatch tail: second signal, exiting at once");
                            std::process::exit(130);
                        }
                        eprintln!("auditwatch tail: stopping: writing the final checkpoint");
                        let _ = waker.try_send(());
                    }
                })
            })?;
    }
    eprintln!("auditwatch tail: ready");
    let started = Instant::now();
    let mut last_watch = Instant::now();
    tail::run(&mut tailer, &pipeline.ingest, &wake_rx, &stop, |_| {
        if counters.output_failed.load(Ordering::Relaxed) {
            stop.store(true, Ordering::Relaxed);
        }
        if last_watch.elapsed() >= Duration::from_secs(1) {
            // A symlinked path may now point into another directory.
            last_watch = Instant::now();
            wake.watch_path(&args.path);
        }
    });
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(pipeline.finish());
    });
    let mut outcome = match done_rx.recv_timeout(args.live.drain_timeout) {
        Ok(r) => r.context("writing findings")?,
        Err(_) => {
            eprintln!(
                "auditwatch tail: the pipeline did not drain within {:?} (a stuck findings output?); exiting",
                args.live.drain_timeout
            );
            return Ok(ExitCode::from(1));
        }
    };
    for f in &startup {
        outcome.stats.count_finding(f);
    }
    let t = counters.snapshot();
    let doc = TailStatsDoc {
        stats: &outcome.stats,
        tail: t.clone(),
        pipeline: &outcome.counters,
        archive: outcome.archive,
        elapsed_seconds: started.elapsed().as_secs_f64(),
    };
    if let Some(p) = &args.live.stats_json {
        let text = serde_json::to_string_pretty(&doc)?;
        std::fs::write(p, text + "\n").with_context(|| format!("cannot write {}", p.display()))?;
    }
    eprintln!(
        "auditwatch tail: {} lines ({:.1} MB) read from {} files, {} findings, {} rotations, {} truncations, {} fragments, {} checkpoints written",
        t.lines_read,
        t.bytes_read as f64 / 1e6,
        t.files_opened + t.rotated_files_drained,
        outcome.stats.findings,
        t.rotations_detected,
        t.truncations_detected,
        t.fragments,
        t.checkpoints_written
    );
    if counters.output_failed.load(Ordering::Relaxed) {
        anyhow::bail!("writing findings failed; the checkpoint was not moved past them");
    }
    Ok(ExitCode::SUCCESS)
}
// ---- tail (end) ----

// ---- run (begin) ----
#[derive(clap::Args)]
struct RunArgs {
    /// The configuration file (TOML; `auditwatch config example` prints a complete one).
    /// Without it: listen on tcp 127.0.0.1:9090, the built-in rules, findings to stdout, the
    /// archive in ./auditwatch-data, metrics on 127.0.0.1:9102.
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file and the rules it names (`-` reads stdin); exit 1 when invalid.
    Check {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Print a complete, commented configuration.
    Example,
    /// Print the embedded default (what `auditwatch run` uses without --config).
    Default,
}

fn run_service(args: RunArgs) -> Result<ExitCode> {
    let code = auditwatch::app::run(auditwatch::app::RunOptions {
        config: args.config,
    })?;
    Ok(ExitCode::from(code))
}

fn run_config(cmd: ConfigCommand) -> Result<ExitCode> {
    use auditwatch::config::{Config, DEFAULT_CONFIG, EXAMPLE};
    match cmd {
        ConfigCommand::Example => {
            print!("{EXAMPLE}");
            Ok(ExitCode::SUCCESS)
        }
        ConfigCommand::Default => {
            print!("{DEFAULT_CONFIG}");
            Ok(ExitCode::SUCCESS)
        }
        ConfigCommand::Check { file } => {
            let cfg = match Config::load(&file) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("auditwatch config: {e}");
                    return Ok(ExitCode::from(1));
                }
            };
            for v in &cfg.missing_env {
                eprintln!(
                    "auditwatch config: warning: environment variable {v} is not set here (auditwatch run needs it)"
                );
            }
            let rules = match cfg.load_rules() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("auditwatch config: {}: rules: {e}", cfg.origin);
                    return Ok(ExitCode::from(1));
                }
            };
            let lists = match cfg.watch_lists() {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("auditwatch config: {}: watch lists: {e}", cfg.origin);
                    return Ok(ExitCode::from(1));
                }
            };
            for (device, lists) in &lists {
                if let Err(e) = rules.with_watchlists(Some(device), lists) {
                    eprintln!("auditwatch config: {}: watch lists: {e}", cfg.origin);
                    return Ok(ExitCode::from(1));
                }
            }
            println!(
                "{}: valid: {} sources ({}), {} sinks, {} rules, {} watch lists",
                cfg.origin,
                cfg.sources.len(),
                cfg.source_names().join(", "),
                cfg.sinks.len(),
                rules.rules().len(),
                cfg.watchlists.len()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
// ---- run (end) ----
