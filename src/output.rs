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
                serde_json::to_writer(&mut self.out, f)?;
                self.out.write_all(b"\n")?;
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
