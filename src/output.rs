//! Writing findings: JSON lines (the stable schema) or a readable text table.

use std::io::{self, Write};

use crate::finding::{Finding, Severity};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON object per line (the documented finding schema).
    Json,
    /// A readable line per finding; colours only on a terminal.
    Text,
}

/// Writes findings to any writer.
pub struct FindingWriter {
    out: Box<dyn Write + Send>,
    format: Format,
    color: bool,
    /// Flush after every finding (live modes).
    flush_each: bool,
}

impl FindingWriter {
    pub fn new(out: Box<dyn Write + Send>, format: Format, color: bool, flush_each: bool) -> Self {
        FindingWriter {
            out,
            format,
            color,
            flush_each,
        }
    }

    pub fn write(&mut self, f: &Finding) -> io::Result<()> {
        match self.format {
            Format::Json => {
                // One write per line: writers sharing stdout (two stdout
                // sinks, the tests' harness) never cut into each other's lines.
                let mut line = serde_json::to_vec(f)?;
                line.push(b'\n');
                self.out.write_all(&line)?;
            }
            Format::Text => {
                let line = text_line(f, self.color);
                self.out.write_all(line.as_bytes())?;
            }
        }
        if self.flush_each {
            self.out.flush()?;
        }
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Findings waiting for a slow output at most (then the judge waits).
pub const OUTPUT_QUEUE: usize = 65_536;

/// A writer on its own thread behind a bounded queue: a stalled stdout (a
/// reader that stopped reading) holds back up to [`OUTPUT_QUEUE`] findings
/// before it backs up into analysis, and never into the sources.
pub struct OutputThread {
    handle: std::thread::JoinHandle<io::Result<u64>>,
    queued: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// What became of the findings at shutdown.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct OutputReport {
    pub written: u64,
    /// Findings still queued when the deadline passed (the output was blocked).
    pub undelivered: u64,
    pub error: Option<String>,
}

impl OutputThread {
    /// Starts the thread; the returned function queues one finding.
    pub fn spawn(mut writer: FindingWriter) -> (crate::pipeline::EmitFn, OutputThread) {
        use std::sync::atomic::Ordering;
        let (tx, rx) = crossbeam_channel::bounded::<Finding>(OUTPUT_QUEUE);
        let queued = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let q = queued.clone();
        let handle = std::thread::Builder::new()
            .name("output".into())
            .spawn(move || {
                let mut written = 0u64;
                for f in rx {
                    q.fetch_sub(1, Ordering::Relaxed);
                    writer.write(&f)?;
                    written += 1;
                }
                writer.flush()?;
                Ok(written)
            })
            .expect("spawn output thread");
        let q = queued.clone();
        let emit = Box::new(move |f: &Finding| {
            q.fetch_add(1, Ordering::Relaxed);
            tx.send(f.clone())
                .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "findings output closed"))
        });
        (emit, OutputThread { handle, queued })
    }

    /// Waits until everything queued is written, at most until `deadline`.
    /// The queue's sender must be dropped first (the pipeline finished).
    pub fn finish(self, deadline: std::time::Instant) -> OutputReport {
        use std::sync::atomic::Ordering;
        while !self.handle.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        if !self.handle.is_finished() {
            return OutputReport {
                written: 0,
                undelivered: self.queued.load(Ordering::Relaxed),
                error: Some("findings output blocked at shutdown".into()),
            };
        }
        match self.handle.join() {
            Ok(Ok(written)) => OutputReport {
                written,
                undelivered: 0,
                error: None,
            },
            Ok(Err(e)) => OutputReport {
                written: 0,
                undelivered: self.queued.load(Ordering::Relaxed),
                error: Some(e.to_string()),
            },
            Err(_) => OutputReport {
                error: Some("output thread panicked".into()),
                ..Default::default()
            },
        }
    }
}

/// Escapes control characters so hostile entry text cannot drive a terminal.
pub fn sanitize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

fn color_of(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "\x1b[1;31m",
        Severity::High => "\x1b[31m",
        Severity::Medium => "\x1b[33m",
        Severity::Low => "\x1b[36m",
        Severity::Info => "\x1b[2m",
    }
}

/// `TIME SEVERITY RULE TYPE PATH ns=… actor=…@addr SOURCE:LINE`
pub fn text_line(f: &Finding, color: bool) -> String {
    let dash = || "-".to_string();
    let sev = format!("{:<8}", f.severity.as_str().to_uppercase());
    let sev = if color {
        format!("{}{}\x1b[0m", color_of(f.severity), sev)
    } else {
        sev
    };
    let actor = format!(
        "{}@{}",
        f.actor
            .display_name
            .as_deref()
            .map(sanitize)
            .unwrap_or_else(dash),
        f.actor
            .remote_address
            .as_deref()
            .map(sanitize)
            .unwrap_or_else(dash)
    );
    format!(
        "{} {} {:<34} {:<8} {} ns={} actor={} {}:{}\n",
        f.time.as_deref().map(sanitize).unwrap_or_else(dash),
        sev,
        sanitize(&f.rule),
        f.entry_type.as_deref().map(sanitize).unwrap_or_else(dash),
        f.path.as_deref().map(sanitize).unwrap_or_else(dash),
        sanitize(&f.namespace),
        actor,
        sanitize(&f.source.name),
        f.source.line
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(sanitize("a\x1b[2Jb\n"), "a\\u{1b}[2Jb\\n");
    }
}
