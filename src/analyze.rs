//! The stateless half of analysis: a block of complete lines in, matches and
//! located parse errors out. Runs on any number of worker threads; the
//! stateful half (line numbering, throttles, output order) is
//! [`crate::engine::Judge`], which sees blocks in stream order.
//!
//! Per line: the rule set's prefilter decides whether the line can match
//! anything. Candidates are parsed ([`crate::parse`]) and judged by every
//! rule. Other lines only get cheap checks (UTF-8 for the whole block at once,
//! and the `{`…`}` shape) unless `strict` asks for a full parse of every line.

use std::sync::Arc;

use crate::correlate::ResponseNote;

use crate::finding::{finding_id, Actor, Finding, SourceKind, SourceRef};
use crate::framing::{lines, trim_line};
use crate::parse::{self, array_strings, object_keys, AuditEntry, ParseErrorKind};
use crate::rules::cond::value_string;
use crate::rules::field::{namespace_of, Field};
use crate::rules::prefilter::Evidence;
use crate::rules::{Role, Rule, RuleSet};

/// How many located errors one block keeps (counts stay exact).
pub const ERRORS_KEPT_PER_BLOCK: usize = 16;

/// A rule matched an entry; the judge decides whether it is reported.
#[derive(Debug, Clone)]
pub struct Hit {
    pub rule: usize,
    /// 0-based line index within the block.
    pub line_idx: u64,
    /// Byte offset of the line within the block.
    pub offset: u64,
    /// The finding; `None` for throttled and window rules, whose findings are
    /// mostly held back: the judge builds it from `raw` only when it is reported.
    /// Boxed: a hit is small, so a block's hits are cheap to move and hold.
    pub finding: Option<Box<Finding>>,
    /// The entry's bytes, kept for throttled and window rules (see `finding`).
    /// Shared by the hits of one line.
    pub raw: Option<std::sync::Arc<[u8]>>,
    /// Throttle key, when the rule has a throttle.
    pub throttle_key: Option<String>,
    /// Entry time in unix nanoseconds, when it parses.
    pub time_ns: Option<i64>,
    /// For window rules: counted event or trigger, the group key (`None`
    /// when a group field is missing) and the distinct value.
    pub role: Role,
    pub group: Option<String>,
    pub distinct: Option<String>,
}

/// A line left unparsed for lazy window triggers: the judge parses it only
/// if one of its group keys holds a full window. Its bytes and keys live in
/// the block's [`Gated`] arena (one allocation per block, not per line).
#[derive(Debug, Clone)]
pub struct GatedLine {
    pub line_idx: u64,
    pub offset: u64,
    raw: std::ops::Range<usize>,
    keys: std::ops::Range<usize>,
}

/// One possible window key of a [`GatedLine`] for one lazy rule: a string
/// value of the group field's JSON key, as the analysis would build the key,
/// or `unknown` when a value could not be read exactly (escapes): then the
/// line is always parsed.
#[derive(Debug, Clone)]
pub struct GatedKey {
    pub rule: usize,
    text: std::ops::Range<usize>,
    pub unknown: bool,
}

/// The lines of a block left for lazy triggers, in line order.
#[derive(Debug, Default)]
pub struct Gated {
    pub lines: Vec<GatedLine>,
    bytes: Vec<u8>,
    keys: Vec<GatedKey>,
    text: String,
}

impl Gated {
    pub fn raw(&self, l: &GatedLine) -> &[u8] {
        &self.bytes[l.raw.clone()]
    }

    pub fn keys(&self, l: &GatedLine) -> &[GatedKey] {
        &self.keys[l.keys.clone()]
    }

    pub fn key_text(&self, k: &GatedKey) -> &str {
        &self.text[k.text.clone()]
    }
}

/// A line that is not a usable entry.
#[derive(Debug, Clone)]
pub struct LineError {
    pub line_idx: u64,
    pub offset: u64,
    pub kind: ErrorKind,
    pub message: String,
}

/// Kinds of bad input, counted separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    InvalidUtf8,
    InvalidJson,
    Oversize,
    Truncated,
    ReadError,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidUtf8 => "invalid_utf8",
            ErrorKind::InvalidJson => "invalid_json",
            ErrorKind::Oversize => "oversize",
            ErrorKind::Truncated => "truncated",
            ErrorKind::ReadError => "read_error",
        }
    }
}

impl From<ParseErrorKind> for ErrorKind {
    fn from(k: ParseErrorKind) -> Self {
        match k {
            ParseErrorKind::InvalidUtf8 => ErrorKind::InvalidUtf8,
            ParseErrorKind::InvalidJson => ErrorKind::InvalidJson,
        }
    }
}

/// What one block produced.
#[derive(Debug, Default)]
pub struct BlockResult {
    /// Lines in the block, empty ones included.
    pub lines: u64,
    /// Non-empty lines (entries, good or bad).
    pub entries: u64,
    pub bytes: u64,
    /// Lines the prefilter passed (and that were parsed).
    pub candidates: u64,
    pub invalid_utf8: u64,
    pub invalid_json: u64,
    /// Lines longer than the maximum that arrived whole in one block.
    pub oversize: u64,
    /// Hits of throttled rules dropped here: a repeat, within this block, of
    /// a (rule, key, window bucket) that has a hit already (the judge would
    /// hold it back whatever it decides for the first).
    pub suppressed: u64,
    /// (rule, throttle key, bucket) of this block's throttled hits.
    #[doc(hidden)]
    pub throttled: std::collections::HashSet<(usize, String, i64)>,
    pub hits: Vec<Hit>,
    /// Parsed response entries with a request id, in line order (the judge
    /// joins them to the request findings it holds).
    pub responses: Vec<crate::correlate::ResponseNote>,
    /// Lines only a lazy trigger's literals selected, left unparsed for the
    /// judge (see [`crate::rules::Window::lazy_trigger_key`]), in line order.
    pub gated: Gated,
    /// The first [`ERRORS_KEPT_PER_BLOCK`] errors, located.
    pub errors: Vec<LineError>,
}

impl BlockResult {
    /// About how many heap bytes the result holds (hits with their strings and lines, the
    /// gated lines' arena); a shared line is counted once per hit.
    pub fn held_bytes(&self) -> usize {
        let hits: usize = self
            .hits
            .iter()
            .map(|h| {
                std::mem::size_of::<Hit>()
                    + h.raw.as_ref().map_or(0, |r| r.len())
                    + h.group.as_ref().map_or(0, String::len)
                    + h.distinct.as_ref().map_or(0, String::len)
                    + h.throttle_key.as_ref().map_or(0, String::len)
                    + h.finding.as_ref().map_or(0, |_| 1024)
            })
            .sum();
        let g = &self.gated;
        hits + g.bytes.len()
            + g.text.len()
            + g.keys.len() * std::mem::size_of::<GatedKey>()
            + g.lines.len() * std::mem::size_of::<GatedLine>()
    }

    fn error(&mut self, line_idx: u64, offset: u64, kind: ErrorKind, message: String) {
        match kind {
            ErrorKind::InvalidUtf8 => self.invalid_utf8 += 1,
            ErrorKind::Oversize => self.oversize += 1,
            _ => self.invalid_json += 1,
        }
        if self.errors.len() < ERRORS_KEPT_PER_BLOCK {
            self.errors.push(LineError {
                line_idx,
                offset,
                kind,
                message,
            });
        }
    }
}

/// Judges blocks of lines against a rule set.
#[derive(Clone)]
pub struct Analyzer {
    rules: Arc<RuleSet>,
    strict: bool,
    max_line: usize,
    /// Vault's optional device `prefix`, stripped before parsing.
    prefix: Option<Arc<[u8]>>,
    /// Note parsed responses for the judge's request/response correlation.
    correlate: bool,
}

impl Analyzer {
    pub fn new(rules: Arc<RuleSet>, strict: bool, max_line: usize) -> Self {
        Analyzer {
            rules,
            strict,
            max_line,
            prefix: None,
            correlate: true,
        }
    }

    /// Whether to note parsed responses for correlation (off when the judge
    /// does not correlate: `--correlate-wait 0`).
    pub fn with_correlation(mut self, on: bool) -> Self {
        self.correlate = on;
        self
    }

    /// Strips `prefix` from the start of lines that carry it. A `str`, so a
    /// strip can never split a UTF-8 character (lines are then viewed as
    /// `str` without a second check).
    pub fn with_prefix(mut self, prefix: &str) -> Self {
        self.prefix = (!prefix.is_empty()).then(|| Arc::from(prefix.as_bytes()));
        self
    }

    pub fn rules(&self) -> &Arc<RuleSet> {
        &self.rules
    }

    /// The same analyzer with other rules (a reload).
    pub fn with_rules(&self, rules: Arc<RuleSet>) -> Analyzer {
        Analyzer {
            rules,
            ..self.clone()
        }
    }

    /// Analyses a block of complete lines (the last may lack its newline).
    pub fn scan_block(&self, block: &[u8]) -> BlockResult {
        let mut out = BlockResult {
            bytes: block.len() as u64,
            ..Default::default()
        };
        let block_is_utf8 = simdutf8::basic::from_utf8(block).is_ok();
        let mut scanner = self.rules.scanner(block);
        // Candidate and gate evidence come from one pass (see `Scanner::next_any`).
        let gating = !self.strict && self.rules.has_gate();
        let mut next = if self.strict {
            Some((0, Evidence::Candidate))
        } else {
            scanner.next_any(0)
        };
        for (idx, (start, line)) in lines(block).enumerate() {
            let idx = idx as u64;
            out.lines += 1;
            let mut content = trim_line(line);
            if let Some(p) = &self.prefix {
                content = content.strip_prefix(&p[..]).unwrap_or(content);
            }
            if content.is_empty() {
                continue;
            }
            out.entries += 1;
            let end = start + line.len();
            if content.len() > self.max_line {
                out.error(
                    idx,
                    start as u64,
                    ErrorKind::Oversize,
                    format!(
                        "line of {} bytes exceeds the maximum of {}; skipped",
                        line.len(),
                        self.max_line
                    ),
                );
                if next.is_some_and(|(p, _)| p < end) {
                    next = scanner.next_any(end);
                }
                continue;
            }
            // The evidence inside this line: a candidate hit ends the search (the line is
            // parsed); a gate hit only marks it, and the search goes on in the line.
            let mut candidate = self.strict;
            let mut gated = false;
            while let Some((p, kind)) = next.filter(|&(p, _)| p < end && !self.strict) {
                if kind == Evidence::Candidate {
                    candidate = true;
                    next = scanner.next_any(end);
                    break;
                }
                gated = true;
                next = scanner.next_any(p + 1);
            }
            if gating && gated && !candidate {
                self.gate_line(content, idx, start as u64, &mut out);
            }
            if candidate {
                out.candidates += 1;
                let text = if block_is_utf8 {
                    // SAFETY: `block` is valid UTF-8 (checked above), and
                    // `content` starts at the block start or right after a
                    // `\n` and ends before `\r`/`\n` or at the block end;
                    // ASCII bytes are always char boundaries, so the
                    // sub-slice is valid UTF-8 too. Tested by
                    // `unchecked_utf8_slices_are_char_boundaries`.
                    Some(unsafe { std::str::from_utf8_unchecked(content) })
                } else {
                    None
                };
                let parsed = match text {
                    Some(t) => parse::parse_str(t),
                    None => parse::parse_line(content),
                };
                match parsed {
                    Ok(entry) => {
                        self.judge_line(&entry, content, idx, start as u64, &mut out);
                        if self.correlate {
                            if let Some(note) = response_note(&entry, idx, start as u64) {
                                out.responses.push(note);
                            }
                        }
                    }
                    Err(e) => out.error(idx, start as u64, e.kind.into(), e.to_string()),
                }
                if self.strict {
                    next = Some((end, Evidence::Candidate));
                }
            } else if !block_is_utf8 && simdutf8::basic::from_utf8(content).is_err() {
                let at = simdutf8::compat::from_utf8(content)
                    .err()
                    .map(|e| e.valid_up_to())
                    .unwrap_or(0);
                out.error(
                    idx,
                    start as u64,
                    ErrorKind::InvalidUtf8,
                    format!("invalid UTF-8 at byte {at} of the line"),
                );
            } else if content[0] != b'{' || content[content.len() - 1] != b'}' {
                out.error(
                    idx,
                    start as u64,
                    ErrorKind::InvalidJson,
                    "not a JSON object (must start with `{` and end with `}`)".into(),
                );
            }
        }
        out
    }

    /// Keeps a line for the judge's lazy triggers with the keys it may have.
    fn gate_line(&self, content: &[u8], idx: u64, offset: u64, out: &mut BlockResult) {
        let g = &mut out.gated;
        let keys_start = g.keys.len();
        for (rule, finder) in self.rules.lazy_trigger_finders() {
            let mut unknown = false;
            for value in string_values_of_key(content, finder, &mut unknown) {
                let start = g.text.len();
                g.text.push_str(value);
                g.text.push('\u{1f}');
                g.keys.push(GatedKey {
                    rule,
                    text: start..g.text.len(),
                    unknown: false,
                });
            }
            if unknown {
                g.keys.push(GatedKey {
                    rule,
                    text: 0..0,
                    unknown: true,
                });
            }
        }
        if g.keys.len() > keys_start {
            let raw_start = g.bytes.len();
            g.bytes.extend_from_slice(content);
            g.lines.push(GatedLine {
                line_idx: idx,
                offset,
                raw: raw_start..g.bytes.len(),
                keys: keys_start..g.keys.len(),
            });
        }
    }

    fn judge_line(
        &self,
        entry: &AuditEntry<'_>,
        raw: &[u8],
        idx: u64,
        offset: u64,
        out: &mut BlockResult,
    ) {
        // One parse of the line's time, one copy of the line for all its deferred hits.
        let mut time: Option<Option<i64>> = None;
        let mut shared: Option<std::sync::Arc<[u8]>> = None;
        for (rule_idx, role) in self.rules.matches(entry) {
            let rule = self.rules.get(rule_idx);
            let time_ns = *time
                .get_or_insert_with(|| entry.time.as_deref().and_then(parse::parse_time_nanos));
            let key = rule.throttle.as_ref().map(|t| throttle_key(t, entry));
            if let (Some(t), Some(key), Some(now)) = (&rule.throttle, &key, time_ns) {
                // Repeats within the block go no further (the judge would
                // hold them back whatever it decides for the first).
                let bucket = now.div_euclid(t.window.as_nanos().max(1) as i64);
                if !out.throttled.insert((rule_idx, key.clone(), bucket)) {
                    out.suppressed += 1;
                    continue;
                }
            }
            out.hits.push(hit_for(
                rule_idx,
                rule,
                role,
                entry,
                raw,
                idx,
                offset,
                time_ns,
                key,
                &mut shared,
            ));
        }
    }
}

fn throttle_key(t: &crate::rules::Throttle, entry: &AuditEntry<'_>) -> String {
    let mut key = String::new();
    for f in &t.key {
        if let Some(v) = value_string(&f.get(entry)) {
            key.push_str(&v);
        }
        key.push('\u{1f}');
    }
    key
}

/// Every string value of a JSON key anywhere in `line`, without parsing:
/// `finder` looks for `"key"`, then blanks, `:`, blanks and a string must
/// follow. Values holding an escape (or not valid UTF-8) are not returned
/// but set `unknown`: the caller must then parse the line. Never misses a
/// value the parser would give for that key, except a key spelled with
/// escapes, and lines with `\u` escapes are prefilter candidates anyway.
pub fn string_values_of_key<'l>(
    line: &'l [u8],
    finder: &'l memchr::memmem::Finder<'static>,
    unknown: &'l mut bool,
) -> impl Iterator<Item = &'l str> + 'l {
    let blanks = |line: &[u8], mut i: usize| {
        while line
            .get(i)
            .is_some_and(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        {
            i += 1;
        }
        i
    };
    finder.find_iter(line).filter_map(move |at| {
        let mut i = blanks(line, at + finder.needle().len());
        if line.get(i) != Some(&b':') {
            return None; // a value "key", not a key
        }
        i = blanks(line, i + 1);
        if line.get(i) != Some(&b'"') {
            return None; // not a string value
        }
        let start = i + 1;
        let Some(len) = memchr::memchr2(b'"', b'\\', &line[start..]) else {
            *unknown = true;
            return None;
        };
        if line[start + len] == b'\\' {
            *unknown = true;
            return None;
        }
        match std::str::from_utf8(&line[start..start + len]) {
            Ok(v) => Some(v),
            Err(_) => {
                *unknown = true;
                None
            }
        }
    })
}

/// The trigger hits of lazy rules `rules_wanted` on a parsed entry (the
/// judge's side of [`GatedLine`]).
pub fn lazy_trigger_hits(
    rules: &RuleSet,
    rules_wanted: &[usize],
    entry: &AuditEntry<'_>,
    raw: &[u8],
    idx: u64,
    offset: u64,
) -> Vec<Hit> {
    rules_wanted
        .iter()
        .filter(|&&i| {
            rules
                .get(i)
                .window
                .as_ref()
                .and_then(|w| w.trigger.as_ref())
                .is_some_and(|t| t.eval(entry))
                && !rules.get(i).when.eval(entry)
        })
        .map(|&i| {
            let time_ns = entry.time.as_deref().and_then(parse::parse_time_nanos);
            let rule = rules.get(i);
            hit_for(
                i,
                rule,
                Role::Trigger,
                entry,
                raw,
                idx,
                offset,
                time_ns,
                rule.throttle.as_ref().map(|t| throttle_key(t, entry)),
                &mut None,
            )
        })
        .collect()
}

/// A hit of rule `rule_idx` on an entry, with what the judge needs. `shared` holds the
/// line's bytes once for all its deferred hits.
#[allow(clippy::too_many_arguments)]
fn hit_for(
    rule_idx: usize,
    rule: &Rule,
    role: Role,
    entry: &AuditEntry<'_>,
    raw: &[u8],
    idx: u64,
    offset: u64,
    time_ns: Option<i64>,
    throttle_key: Option<String>,
    shared: &mut Option<std::sync::Arc<[u8]>>,
) -> Hit {
    let (group, distinct) = match &rule.window {
        None => (None, None),
        Some(w) => {
            let mut key = String::new();
            let mut complete = true;
            for f in &w.group_by {
                match value_string(&f.get(entry)) {
                    Some(v) => key.push_str(&v),
                    None => complete = false,
                }
                key.push('\u{1f}');
            }
            let distinct = w
                .distinct
                .as_ref()
                .and_then(|(_, f)| value_string(&f.get(entry)));
            (complete.then_some(key), distinct)
        }
    };
    // Throttled rules report few of their hits, and window rules only the entry that fills a
    // window: their findings are built by the judge when reported.
    let deferred = rule.throttle.is_some() || rule.window.is_some();
    Hit {
        rule: rule_idx,
        line_idx: idx,
        offset,
        finding: (!deferred).then(|| Box::new(build_finding(rule, entry, raw))),
        raw: deferred.then(|| shared.get_or_insert_with(|| raw.into()).clone()),
        throttle_key,
        time_ns,
        role,
        group,
        distinct,
    }
}

fn owned(s: &Option<std::borrow::Cow<'_, str>>) -> Option<String> {
    s.as_deref().map(str::to_owned)
}

/// Everything of a finding that comes from the entry; `source` is filled in
/// by the judge, which knows the absolute line number.
pub fn build_finding(rule: &Rule, e: &AuditEntry<'_>, raw: &[u8]) -> Finding {
    let req = e.request.as_ref();
    let auth = e.auth.as_ref();
    let actor = Actor {
        display_name: auth.and_then(|a| owned(&a.display_name)),
        entity_id: auth.and_then(|a| owned(&a.entity_id)),
        remote_address: req.and_then(|r| owned(&r.remote_address)),
        accessor: auth.and_then(|a| owned(&a.accessor)),
        policies: auth.and_then(|a| a.policies).map(array_strings),
    };
    let mut detail = serde_json::Map::new();
    let error = match e.error.as_deref() {
        Some("") | None => None,
        Some(s) => Some(s),
    };
    detail.insert("error".into(), error.into());
    detail.insert("outcome".into(), outcome(e).into());
    if let Some(data) = req.and_then(|r| r.data) {
        let keys = object_keys(data);
        if !keys.is_empty() {
            detail.insert("request_data_keys".into(), keys.into());
        }
    }
    for (name, field) in &rule.detail {
        let v = match field.get(e) {
            parse::Value::Missing => serde_json::Value::Null,
            parse::Value::Str(s) => s.into_owned().into(),
            parse::Value::Bool(b) => b.into(),
            parse::Value::Num(n) => serde_json::Number::from_f64(n)
                .map(Into::into)
                .unwrap_or_default(),
            parse::Value::Array(r) => array_strings(r).into(),
            parse::Value::Object(r) => serde_json::from_str(r.get()).unwrap_or_default(),
        };
        detail.insert(name.clone(), v);
    }
    let watched = rule.when.watch_hits(e);
    if !watched.is_empty() {
        let hits: Vec<serde_json::Value> = watched
            .into_iter()
            .map(|h| {
                serde_json::json!({
                    "device": h.device, "list": h.list, "label": h.label,
                    "field": h.field, "entry": h.entry,
                })
            })
            .collect();
        detail.insert("watchlist".into(), hits.into());
    }
    Finding {
        id: finding_id(&rule.id, raw),
        rule: rule.id.clone(),
        category: rule.category.clone(),
        severity: rule.severity,
        title: rule.title.clone(),
        time: owned(&e.time),
        entry_type: owned(&e.kind),
        request_id: req.and_then(|r| owned(&r.id)),
        operation: req.and_then(|r| owned(&r.operation)),
        path: req.and_then(|r| owned(&r.path)),
        namespace: namespace_of(e).to_owned(),
        actor,
        source: SourceRef {
            kind: SourceKind::File,
            name: String::new(),
            line: 0,
            offset: 0,
        },
        detail,
    }
}

/// A response entry with a request id, for the judge's correlation.
fn response_note(e: &AuditEntry<'_>, line_idx: u64, offset: u64) -> Option<ResponseNote> {
    if !matches!(Field::Kind.get(e), parse::Value::Str(ref s) if s == "response") {
        return None;
    }
    let id = e.request.as_ref()?.id.as_deref()?;
    Some(ResponseNote {
        line_idx,
        offset,
        id_hash: crate::correlate::id_hash(id),
        outcome: outcome(e),
        time: owned(&e.time),
        time_ns: e.time.as_deref().and_then(parse::parse_time_nanos),
    })
}

/// `denied`, `failed` or `succeeded` for responses; `denied` or `attempted`
/// for requests (the outcome is not known yet).
fn outcome(e: &AuditEntry<'_>) -> &'static str {
    let denied = e
        .auth
        .as_ref()
        .and_then(|a| a.policy_results.as_ref())
        .and_then(|p| p.allowed)
        == Some(false);
    if denied {
        return "denied";
    }
    let is_response = matches!(Field::Kind.get(e), parse::Value::Str(ref s) if s == "response");
    let has_error = !Field::Error.get(e).is_missing()
        || !Field::ResponseData(vec!["error".into()])
            .get(e)
            .is_missing()
        || !Field::ResponseData(vec!["errors".into()])
            .get(e)
            .is_missing();
    match (is_response, has_error) {
        (_, true) => "failed",
        (true, false) => "succeeded",
        (false, false) => "attempted",
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn string_values_of_a_key_are_read_without_parsing() {
        let finder = memchr::memmem::Finder::new(b"\"remote_address\"").into_owned();
        let read = |line: &[u8]| {
            let mut unknown = false;
            let values: Vec<String> = string_values_of_key(line, &finder, &mut unknown)
                .map(str::to_owned)
                .collect();
            (values, unknown)
        };
        let line = br#"{"request":{"remote_address" : "10.0.0.1","data":{"x":"remote_address","remote_address":"a\"b"}},"auth":{"remote_address":7},"remote_address":"::1"}"#;
        let (values, unknown) = read(line);
        assert_eq!(values, ["10.0.0.1", "::1"]);
        assert!(unknown, "the escaped value must make the caller parse");
        assert_eq!(
            read(br#"{"remote_address":"1.2.3.4"}"#),
            (vec!["1.2.3.4".to_owned()], false)
        );
        assert_eq!(read(br#"{"a":"b"}"#), (vec![], false));
        // Cut at the end of the line: not readable, so parse.
        assert!(read(br#"{"remote_address":"1.2"#).1);
    }

    use super::*;

    #[test]
    fn unchecked_utf8_slices_are_char_boundaries() {
        let rules = Arc::new(RuleSet::builtin().unwrap());
        let a = Analyzer::new(rules, true, 1 << 20);
        // Multi-byte characters right before and after newlines.
        let block = "{\"error\":\"é\"}\n\u{1F600}\n{\"x\":\"日本\"}\r\n{}".as_bytes();
        let r = a.scan_block(block);
        assert_eq!(r.lines, 4);
        assert_eq!(r.invalid_json, 1, "the emoji line is not JSON");
        assert_eq!(r.invalid_utf8, 0);
    }

    #[test]
    fn bad_lines_are_counted_and_located() {
        let rules = Arc::new(RuleSet::builtin().unwrap());
        let a = Analyzer::new(rules, false, 1 << 20);
        let block = b"{\"type\":\"request\"}\n{\"type\":\xff}\n\n[1,2\n{\"request\":{\"path\":\"sys/raw/x\"\n";
        let r = a.scan_block(block);
        assert_eq!(r.lines, 5);
        assert_eq!(r.entries, 4);
        assert_eq!(r.invalid_utf8, 1);
        assert_eq!(r.invalid_json, 2);
        let located: Vec<(u64, u64, ErrorKind)> = r
            .errors
            .iter()
            .map(|e| (e.line_idx, e.offset, e.kind))
            .collect();
        assert_eq!(
            located,
            vec![
                (1, 19, ErrorKind::InvalidUtf8),
                (3, 31, ErrorKind::InvalidJson),
                (4, 36, ErrorKind::InvalidJson)
            ]
        );
    }
}
