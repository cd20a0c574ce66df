//! The stateful, ordered half of analysis: [`Judge`] sees the blocks of one
//! stream in order, turns block-relative positions into lines and offsets,
//! applies throttles, and counts everything into [`Stats`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Serialize;

use crate::analyze::{BlockResult, ErrorKind};
use crate::finding::{Finding, SourceKind, SourceRef};
use crate::rules::RuleSet;

/// How many located errors a run keeps for its report (counts stay exact).
pub const ERRORS_KEPT: usize = 100;
/// Throttle state kept at most (keys beyond it evict the stalest).
pub const THROTTLE_KEYS_MAX: usize = 65_536;

/// A bad line or read problem, with where it happened.
#[derive(Debug, Clone, Serialize)]
pub struct LocatedError {
    pub kind: ErrorKind,
    pub source: String,
    pub line: u64,
    pub offset: u64,
    pub message: String,
}

impl std::fmt::Display for LocatedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: line {}, byte offset {}: {}: {}",
            self.source,
            self.line,
            self.offset,
            self.kind.as_str(),
            self.message
        )
    }
}

/// Counters of a run. Serialised as the `--stats-json` document.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    /// Non-empty lines seen (good or bad).
    pub entries: u64,
    pub lines: u64,
    pub bytes: u64,
    /// Lines that passed the prefilter and were parsed.
    pub candidates: u64,
    /// `invalid_utf8 + invalid_json`.
    pub parse_errors: u64,
    pub invalid_utf8: u64,
    pub invalid_json: u64,
    /// Lines longer than the maximum line size (skipped, never held whole).
    pub oversize: u64,
    /// A final line without its newline, or a fragment cut by a disconnect.
    pub truncated: u64,
    /// Inputs that could not be opened or read to their end.
    pub read_errors: u64,
    pub findings: u64,
    /// Findings held back by a rule's throttle.
    pub suppressed: u64,
    pub findings_by_rule: BTreeMap<String, u64>,
    pub findings_by_severity: BTreeMap<String, u64>,
    /// The first located errors.
    pub errors: Vec<LocatedError>,
}

impl Stats {
    pub fn record_error(&mut self, e: LocatedError) {
        match e.kind {
            ErrorKind::InvalidUtf8 => {
                self.invalid_utf8 += 1;
                self.parse_errors += 1
            }
            ErrorKind::InvalidJson => {
                self.invalid_json += 1;
                self.parse_errors += 1
            }
            ErrorKind::Oversize => self.oversize += 1,
            ErrorKind::Truncated => self.truncated += 1,
            ErrorKind::ReadError => self.read_errors += 1,
        }
        self.keep_error(e);
    }

    fn keep_error(&mut self, e: LocatedError) {
        if self.errors.len() < ERRORS_KEPT {
            self.errors.push(e);
        }
    }
}

/// Where the current stream is, for turning block positions into locations.
#[derive(Debug, Clone)]
pub struct StreamPos {
    pub kind: SourceKind,
    pub name: String,
    /// Lines before the current block.
    pub lines_before: u64,
}

/// The ordered, stateful stage. One per run (replay) or per service.
pub struct Judge {
    rules: Arc<RuleSet>,
    /// (rule index, key) → entry time (ns) of the last reported finding.
    throttle: HashMap<(usize, String), i64>,
    pub stats: Stats,
}

impl Judge {
    pub fn new(rules: Arc<RuleSet>) -> Self {
        Judge {
            rules,
            throttle: HashMap::new(),
            stats: Stats::default(),
        }
    }

    pub fn rules(&self) -> &Arc<RuleSet> {
        &self.rules
    }

    /// Takes one analysed block of `pos`'s stream, starting at byte
    /// `offset`, and calls `emit` for every finding to report, in order.
    /// `tail` marks an unterminated final line: counted as truncated, still
    /// judged, its parse errors not counted twice.
    pub fn block(
        &mut self,
        pos: &mut StreamPos,
        offset: u64,
        result: BlockResult,
        tail: bool,
        emit: &mut dyn FnMut(Finding),
    ) {
        let s = &mut self.stats;
        s.lines += result.lines;
        s.entries += result.entries;
        s.bytes += result.bytes;
        s.candidates += result.candidates;
        if tail {
            if result.entries > 0 {
                self.stats.record_error(LocatedError {
                    kind: ErrorKind::Truncated,
                    source: pos.name.clone(),
                    line: pos.lines_before + 1,
                    offset,
                    message: "the last line has no newline".into(),
                });
            }
        } else {
            s.oversize += result.oversize;
            s.invalid_utf8 += result.invalid_utf8;
            s.invalid_json += result.invalid_json;
            s.parse_errors += result.invalid_utf8 + result.invalid_json;
            for e in result.errors {
                self.stats.keep_error(LocatedError {
                    kind: e.kind,
                    source: pos.name.clone(),
                    line: pos.lines_before + e.line_idx + 1,
                    offset: offset + e.offset,
                    message: e.message,
                });
            }
        }
        for hit in result.hits {
            let rule = self.rules.get(hit.rule);
            if let (Some(t), Some(key), Some(now)) = (&rule.throttle, hit.throttle_key, hit.time_ns)
            {
                let window = t.window.as_nanos() as i64;
                let slot = (hit.rule, key);
                if let Some(&last) = self.throttle.get(&slot) {
                    // Entries may arrive slightly out of order: a finding
                    // within the window on either side is a repeat.
                    if (now - last).abs() < window {
                        self.stats.suppressed += 1;
                        continue;
                    }
                }
                if self.throttle.len() >= THROTTLE_KEYS_MAX {
                    evict_stalest(&mut self.throttle);
                }
                self.throttle.insert(slot, now);
            }
            let mut f = hit.finding;
            f.source = SourceRef {
                kind: pos.kind,
                name: pos.name.clone(),
                line: pos.lines_before + hit.line_idx + 1,
                offset: offset + hit.offset,
            };
            self.stats.findings += 1;
            *self
                .stats
                .findings_by_rule
                .entry(f.rule.clone())
                .or_default() += 1;
            *self
                .stats
                .findings_by_severity
                .entry(f.severity.as_str().to_owned())
                .or_default() += 1;
            emit(f);
        }
        pos.lines_before += result.lines;
    }

    /// An oversize line of `pos`'s stream at `offset` (counted as one line).
    pub fn oversize(&mut self, pos: &mut StreamPos, offset: u64, len: u64, max: usize) {
        self.stats.entries += 1;
        self.stats.lines += 1;
        self.stats.bytes += len;
        self.stats.record_error(LocatedError {
            kind: ErrorKind::Oversize,
            source: pos.name.clone(),
            line: pos.lines_before + 1,
            offset,
            message: format!("line of {len} bytes exceeds the maximum of {max}; skipped"),
        });
        pos.lines_before += 1;
    }

    /// A stream could not be read (to its end).
    pub fn read_error(&mut self, pos: &StreamPos, offset: u64, message: String) {
        self.stats.record_error(LocatedError {
            kind: ErrorKind::ReadError,
            source: pos.name.clone(),
            line: pos.lines_before + 1,
            offset,
            message,
        });
    }
}

/// Drops the half of the throttle state with the oldest times: bounded
/// memory whatever an attacker sprays.
fn evict_stalest(map: &mut HashMap<(usize, String), i64>) {
    let mut times: Vec<i64> = map.values().copied().collect();
    let mid = times.len() / 2;
    let (_, median, _) = times.select_nth_unstable(mid);
    let cut = *median;
    map.retain(|_, t| *t > cut);
}
