#![no_main]
//! One audit line through the parser, and a block of lines through the
//! analyzer with the built-in rules, strict and not.
//!
//! Invariants: no panic; `parse_line` accepts only UTF-8; `scan_block`
//! counts every line (empty ones and an unterminated last one included),
//! `candidates <= entries <= lines`; and strict mode (every line parsed)
//! finds exactly the hits the prefilter-driven mode finds (the prefilter
//! "may say maybe too often, never too rarely").

use std::sync::{Arc, OnceLock};

use auditwatch::analyze::{Analyzer, BlockResult};
use auditwatch::parse::parse_line;
use auditwatch::rules::RuleSet;
use libfuzzer_sys::fuzz_target;

fn rules() -> &'static Arc<RuleSet> {
    static RULES: OnceLock<Arc<RuleSet>> = OnceLock::new();
    RULES.get_or_init(|| Arc::new(RuleSet::builtin().expect("built-in rules load")))
}

fn line_count(data: &[u8]) -> u64 {
    let newlines = data.iter().filter(|&&b| b == b'\n').count() as u64;
    newlines + u64::from(data.last().is_some_and(|&b| b != b'\n'))
}

fn scan(data: &[u8], strict: bool) -> BlockResult {
    let r = Analyzer::new(rules().clone(), strict, 1 << 20).scan_block(data);
    assert_eq!(r.lines, line_count(data), "lines (strict {strict})");
    assert_eq!(r.bytes, data.len() as u64, "bytes (strict {strict})");
    assert!(
        r.candidates <= r.entries && r.entries <= r.lines,
        "candidates {} entries {} lines {} (strict {strict})",
        r.candidates,
        r.entries,
        r.lines
    );
    if strict {
        assert_eq!(r.candidates, r.entries, "strict mode parses every entry");
    }
    for h in &r.hits {
        assert!(
            h.line_idx < r.lines && h.offset < r.bytes,
            "hit outside the block"
        );
    }
    for e in &r.errors {
        assert!(
            e.line_idx < r.lines && e.offset < r.bytes,
            "error outside the block"
        );
    }
    r
}

/// `AUDITWATCH_FUZZ_NO_PREFILTER_CHECK=1` skips the strict-versus-prefilter
/// comparison (to fuzz past a known prefilter miss, see fuzz/README.md).
fn prefilter_check_enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("AUDITWATCH_FUZZ_NO_PREFILTER_CHECK").is_none())
}

fuzz_target!(|data: &[u8]| {
    if let Ok(entry) = parse_line(data) {
        assert!(
            std::str::from_utf8(data).is_ok(),
            "parse_line accepted invalid UTF-8"
        );
        // Every rule evaluates without panicking.
        let _ = rules().matches(&entry).count();
    }

    let strict = scan(data, true);
    let lax = scan(data, false);
    if !prefilter_check_enabled() {
        return;
    }
    let hits = |r: &BlockResult| -> Vec<(usize, u64)> {
        r.hits.iter().map(|h| (h.rule, h.line_idx)).collect()
    };
    assert_eq!(
        hits(&strict),
        hits(&lax),
        "the prefilter skipped a line that a rule matches"
    );
});
