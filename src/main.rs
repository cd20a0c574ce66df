//! The `auditwatch` command line. See README.md for every command and flag.

use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use auditwatch::engine::Stats;
use auditwatch::finding::Severity;
use auditwatch::output::{FindingWriter, Format};
use auditwatch::replay::{self, ReplayOptions};
use auditwatch::rules::RuleSet;

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
    /// List or test the loaded rules.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
}

#[derive(clap::Args)]
struct RulesArgs {
    /// Extra rule files (`*.toml`, recursive); same ids replace built-ins.
    #[arg(long, value_name = "DIR")]
    patterns: Option<PathBuf>,
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
}

#[derive(clap::Args)]
struct ReplayArgs {
    /// Files or directories to read; `-` reads stdin. Compression is detected by content.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<String>,
    #[command(flatten)]
    rules: RulesArgs,
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
    /// Do not print the summary on stderr.
    #[arg(long, short)]
    quiet: bool,
}

/// `16MiB`, `512KiB`, `1GiB`, `1000` (bytes).
fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num
        .parse()
        .map_err(|_| format!("bad size {s:?} (e.g. 16MiB)"))?;
    let mult = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        "g" | "gib" | "gb" => 1 << 30,
        _ => return Err(format!("bad size unit in {s:?} (B, KiB, MiB, GiB)")),
    };
    n.checked_mul(mult)
        .filter(|v| *v > 0)
        .ok_or_else(|| format!("bad size {s:?}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AUDITWATCH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let result = match cli.command {
        Command::Replay(args) => run_replay(args),
        Command::Rules { command } => run_rules(command),
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
    Ok(RuleSet::load(args.patterns.as_deref())?)
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
    let rules = Arc::new(load_rules(&args.rules)?);
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
        progress: !args.no_progress && !args.quiet && replay::stderr_is_terminal(),
        ..ReplayOptions::default()
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
