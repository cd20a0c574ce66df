//! The `stdout` sink: JSON lines (the finding schema) or readable text lines, through
//! [`crate::output::FindingWriter`].

use std::io::{self, IsTerminal};

use serde::Deserialize;

use super::local::LocalWriter;
use crate::finding::Finding;
use crate::output::{FindingWriter, Format};

/// `type = "stdout"`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutConfig {
    /// `json` (default) or `text`.
    #[serde(default)]
    pub format: StdoutFormat,
    /// Text only: colour the severity (default: when stdout is a terminal).
    #[serde(default)]
    pub color: Option<bool>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StdoutFormat {
    #[default]
    Json,
    Text,
}

pub(crate) struct StdoutWriter(FindingWriter);

impl StdoutWriter {
    pub fn new(cfg: &StdoutConfig) -> StdoutWriter {
        let format = match cfg.format {
            StdoutFormat::Json => Format::Json,
            StdoutFormat::Text => Format::Text,
        };
        let color =
            format == Format::Text && cfg.color.unwrap_or_else(|| io::stdout().is_terminal());
        StdoutWriter(FindingWriter::new(
            Box::new(io::stdout()),
            format,
            color,
            false,
        ))
    }
}

impl LocalWriter for StdoutWriter {
    fn write(&mut self, f: &Finding) -> io::Result<()> {
        self.0.write(f)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}
