//! The stateful, ordered half of analysis: [`Judge`] sees the blocks of one
//! stream in order, turns block-relative positions into lines and offsets,
//! applies throttles, and counts everything into [`Stats`].

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::analyze::{BlockResult, ErrorKind};
use crate::correlate::{Correlator, DEFAULT_WAIT};
use crate::finding::{Finding, SourceKind, SourceRef};
use crate::rules::{Role, RuleSet, Window};

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
    /// Request/response correlation (see [`crate::correlate`]).
    pub correlation: crate::correlate::CorrelationStats,
    /// Lines left unparsed for lazy window triggers, and how many of them
    /// the judge parsed (their group key had window state).
    pub lazy_trigger_lines: u64,
    pub lazy_trigger_parsed: u64,
    /// The first located errors.
    pub errors: Vec<LocatedError>,
}

impl Stats {
    /// Counts a reported finding (total, by rule, by severity).
    pub fn count_finding(&mut self, f: &Finding) {
        self.findings += 1;
        *self.findings_by_rule.entry(f.rule.clone()).or_default() += 1;
        *self
            .findings_by_severity
            .entry(f.severity.as_str().to_owned())
            .or_default() += 1;
    }

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

/// One counted event of a window.
#[derive(Debug, Clone)]
struct WindowEvent {
    time_ns: i64,
    /// Hash of the distinct value (SipHash, random keys: attacker-proof).
    distinct: Option<u64>,
    time: Option<String>,
    source: String,
    line: u64,
}

#[derive(Debug, Default)]
struct WindowState {
    events: VecDeque<WindowEvent>,
    latest: i64,
    /// After a finding the key stays quiet for one window (a sustained
    /// attack gives one finding per window, not one per `count` events).
    quiet_until: Option<i64>,
}

impl WindowState {
    fn expire(&mut self, within: i64) {
        while self
            .events
            .front()
            .is_some_and(|e| e.time_ns < self.latest - within)
        {
            self.events.pop_front();
        }
    }

    fn measure(&self, w: &Window) -> u32 {
        if w.distinct.is_some() {
            let set: HashSet<u64> = self.events.iter().filter_map(|e| e.distinct).collect();
            set.len() as u32
        } else {
            self.events.len() as u32
        }
    }
}

/// The ordered, stateful stage. One per run (replay) or per service.
pub struct Judge {
    rules: Arc<RuleSet>,
    /// (rule index, key) → window bucket of the last reported finding.
    throttle: HashMap<(usize, String), i64>,
    /// Per window rule: group key → its window.
    windows: HashMap<usize, HashMap<String, WindowState>>,
    hasher: RandomState,
    /// The newest entry time seen (for entries whose time does not parse).
    clock: i64,
    /// Request findings waiting for their response.
    correlator: Correlator,
    /// Held findings of rules a reload removed, reported at the next call
    /// that can report.
    deferred: Vec<Finding>,
    pub stats: Stats,
}

impl Judge {
    pub fn new(rules: Arc<RuleSet>) -> Self {
        Judge {
            rules,
            throttle: HashMap::new(),
            windows: HashMap::new(),
            hasher: RandomState::new(),
            clock: 0,
            correlator: Correlator::new(DEFAULT_WAIT, false),
            deferred: Vec::new(),
            stats: Stats::default(),
        }
    }

    /// How long request findings wait for their response (zero: no
    /// correlation, one finding per entry); `wall_clock` also ends waits on
    /// the wall clock (live modes: a quiet stream must not hold findings).
    pub fn set_correlation(&mut self, wait: Duration, wall_clock: bool) {
        let mut c = Correlator::new(wait, wall_clock);
        c.stats = self.correlator.stats.clone();
        self.correlator = c;
    }

    pub fn rules(&self) -> &Arc<RuleSet> {
        &self.rules
    }

    /// Switches to another rule set (a reload). Throttle and window state follow the rules by
    /// id; the state of rules that are gone is dropped.
    pub fn set_rules(&mut self, rules: Arc<RuleSet>) {
        let new_ids: HashMap<&str, usize> = rules
            .rules()
            .iter()
            .enumerate()
            .map(|(i, r)| (r.id.as_str(), i))
            .collect();
        let map: HashMap<usize, usize> = self
            .rules
            .rules()
            .iter()
            .enumerate()
            .filter_map(|(i, r)| new_ids.get(r.id.as_str()).map(|&j| (i, j)))
            .collect();
        self.throttle = std::mem::take(&mut self.throttle)
            .into_iter()
            .filter_map(|((i, k), t)| map.get(&i).map(|&j| ((j, k), t)))
            .collect();
        self.windows = std::mem::take(&mut self.windows)
            .into_iter()
            .filter_map(|(i, w)| map.get(&i).map(|&j| (j, w)))
            .collect();
        drop(new_ids);
        let mut gone = Vec::new();
        self.correlator.remap(&map, &mut |f| gone.push(f));
        self.deferred.extend(gone);
        self.rules = rules;
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
        s.suppressed += result.suppressed;
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
        // Hits, lazily judged lines and responses, in line order. A
        // response's own hits come before its note (they may merge with a
        // held request).
        let mut hits = result.hits.into_iter().peekable();
        let gated_arena = result.gated;
        let mut gated = gated_arena.lines.iter().peekable();
        let mut notes = result.responses.into_iter().peekable();
        loop {
            let h = hits.peek().map(|x| x.line_idx);
            let g = gated.peek().map(|x| x.line_idx);
            let n = notes.peek().map(|x| x.line_idx);
            let Some(first) = [h, g, n].into_iter().flatten().min() else {
                break;
            };
            if h == Some(first) {
                let hit = hits.next().expect("peeked");
                self.judge_hit(pos, offset, hit, emit);
            } else if g == Some(first) {
                let line = gated.next().expect("peeked");
                for hit in self.resolve_gated(&gated_arena, line) {
                    self.judge_hit(pos, offset, hit, emit);
                }
            } else {
                let note = notes.next().expect("peeked");
                self.answer(pos, offset, &note, emit);
            }
        }
        self.expire_held(emit);
        pos.lines_before += result.lines;
    }

    /// A line left unparsed for lazy triggers: parsed only when one of its
    /// possible group keys holds a full window already (else no trigger can
    /// fire: a window only loses events as time goes on).
    fn resolve_gated(
        &mut self,
        arena: &crate::analyze::Gated,
        line: &crate::analyze::GatedLine,
    ) -> Vec<crate::analyze::Hit> {
        self.stats.lazy_trigger_lines += 1;
        let mut wanted: Vec<usize> = Vec::new();
        for k in arena.keys(line) {
            if wanted.contains(&k.rule) {
                continue;
            }
            let full = k.unknown
                || match (
                    self.rules.get(k.rule).window.as_ref(),
                    self.windows.get(&k.rule),
                ) {
                    (Some(w), Some(m)) => m
                        .get(arena.key_text(k))
                        .is_some_and(|st| st.measure(w) >= w.count),
                    _ => false,
                };
            if full {
                wanted.push(k.rule);
            }
        }
        if wanted.is_empty() {
            return Vec::new();
        }
        self.stats.lazy_trigger_parsed += 1;
        let raw = arena.raw(line);
        // Not valid JSON: counted by the analysis already (as a non-candidate).
        let Ok(entry) = crate::parse::parse_line(raw) else {
            return Vec::new();
        };
        crate::analyze::lazy_trigger_hits(
            &self.rules,
            &wanted,
            &entry,
            raw,
            line.line_idx,
            line.offset,
        )
    }

    /// Judges one hit: windows, throttles, correlation, then reports.
    fn judge_hit(
        &mut self,
        pos: &StreamPos,
        offset: u64,
        mut hit: crate::analyze::Hit,
        emit: &mut dyn FnMut(Finding),
    ) {
        if let Some(t) = hit.time_ns {
            self.clock = self.clock.max(t);
        }
        // Expired waits go out in entry order, wherever blocks are cut.
        self.expire_held(emit);
        // An Arc clone so the window state can be borrowed mutably.
        let rules = self.rules.clone();
        if let Some(w) = &rules.get(hit.rule).window {
            let line = pos.lines_before + hit.line_idx + 1;
            let Some(detail) = self.window_event(hit.rule, w, &hit, &pos.name, line) else {
                return;
            };
            if let Some(f) = hit.finding.as_mut() {
                f.detail.insert("window".into(), detail);
            }
        } else if hit.role == Role::Trigger {
            return;
        }
        let rule = self.rules.get(hit.rule);
        if let (Some(t), Some(key), Some(now)) = (&rule.throttle, hit.throttle_key, hit.time_ns) {
            // One finding per key per window of entry time, windows
            // aligned to the clock (`1h`: each clock hour), so the
            // analysis threads can drop repeats inside a block on their
            // own. A late entry of an earlier window counts as a repeat.
            let bucket = now.div_euclid(t.window.as_nanos().max(1) as i64);
            let slot = (hit.rule, key);
            if self.throttle.get(&slot).is_some_and(|&last| bucket <= last) {
                self.stats.suppressed += 1;
                return;
            }
            if self.throttle.len() >= THROTTLE_KEYS_MAX {
                evict_stalest(&mut self.throttle);
            }
            self.throttle.insert(slot, bucket);
        }
        let built = match (hit.finding, hit.raw) {
            (Some(f), _) => Some(f),
            (None, Some(raw)) => crate::parse::parse_line(&raw)
                .ok()
                .map(|e| crate::analyze::build_finding(rule, &e, &raw)),
            (None, None) => None,
        };
        let Some(mut f) = built else { return };
        f.source = SourceRef {
            kind: pos.kind,
            name: pos.name.clone(),
            line: pos.lines_before + hit.line_idx + 1,
            offset: offset + hit.offset,
        };
        let stateless = rule.window.is_none() && rule.throttle.is_none();
        if !stateless {
            self.report(f, emit);
            return;
        }
        let mut released = Vec::new();
        let time_ns = hit.time_ns.unwrap_or(self.clock);
        if let Some(f) = self
            .correlator
            .route(hit.rule, f, time_ns, &mut |old| released.push(old))
        {
            released.push(f);
        }
        for f in released {
            self.report(f, emit);
        }
    }

    /// A parsed response: request findings waiting for it are reported.
    fn answer(
        &mut self,
        pos: &StreamPos,
        offset: u64,
        note: &crate::correlate::ResponseNote,
        emit: &mut dyn FnMut(Finding),
    ) {
        if let Some(t) = note.time_ns {
            self.clock = self.clock.max(t);
        }
        let at = SourceRef {
            kind: pos.kind,
            name: pos.name.clone(),
            line: pos.lines_before + note.line_idx + 1,
            offset: offset + note.offset,
        };
        self.expire_held(emit);
        let mut out = Vec::new();
        self.correlator.answer(note, &at, &mut |f| out.push(f));
        for f in out {
            self.report(f, emit);
        }
    }

    /// Reports held request findings whose wait is over.
    pub fn expire_held(&mut self, emit: &mut dyn FnMut(Finding)) {
        for f in std::mem::take(&mut self.deferred) {
            self.report(f, emit);
        }
        if self.correlator.pending() == 0 {
            return;
        }
        let mut out = Vec::new();
        self.correlator.expire(self.clock, &mut |f| out.push(f));
        for f in out {
            self.report(f, emit);
        }
    }

    /// Reports every held request finding now: `early` before a checkpoint
    /// (outcome still `attempted`), else at the end of a run (`no_response`).
    pub fn release_held(&mut self, early: bool, emit: &mut dyn FnMut(Finding)) {
        let mut out = std::mem::take(&mut self.deferred);
        self.correlator.release_all(early, &mut |f| out.push(f));
        for f in out {
            self.report(f, emit);
        }
    }

    /// Request findings waiting for their response.
    pub fn held(&self) -> usize {
        self.correlator.pending()
    }

    /// Counts a finding and hands it to `emit`.
    fn report(&mut self, f: Finding, emit: &mut dyn FnMut(Finding)) {
        self.stats.count_finding(&f);
        self.stats.correlation = self.correlator.stats.clone();
        emit(f);
    }

    /// Counts a window rule's event (or checks its trigger); returns the
    /// window's description when the rule fires.
    fn window_event(
        &mut self,
        rule: usize,
        w: &Window,
        hit: &crate::analyze::Hit,
        source: &str,
        line: u64,
    ) -> Option<serde_json::Value> {
        let key = hit.group.as_ref()?;
        let now = hit.time_ns.unwrap_or(self.clock);
        let within = w.within.as_nanos() as i64;
        let rules = self.windows.entry(rule).or_default();
        if hit.role == Role::Trigger {
            let st = rules.get_mut(key)?;
            st.latest = st.latest.max(now);
            st.expire(within);
            let measure = st.measure(w);
            if measure < w.count {
                return None;
            }
            if st.quiet_until.is_some_and(|q| now < q) {
                self.stats.suppressed += 1;
                return None;
            }
            let detail = window_detail(w, key, measure, st.events.front(), hit, source, line);
            st.events.clear();
            st.quiet_until = Some(now + within);
            return Some(detail);
        }
        if !rules.contains_key(key) && rules.len() >= w.max_keys {
            evict_stalest_windows(rules);
        }
        let st = rules.entry(key.clone()).or_default();
        st.latest = st.latest.max(now);
        if now < st.latest - within {
            // Too late for its window (out of order by more than the window).
            return None;
        }
        st.events.push_back(WindowEvent {
            time_ns: now,
            distinct: hit.distinct.as_ref().map(|d| self.hasher.hash_one(d)),
            time: hit.finding.as_ref().and_then(|f| f.time.clone()),
            source: source.to_owned(),
            line,
        });
        st.expire(within);
        // Bounded whatever the rate: the oldest events beyond a margin go.
        let cap = (w.count as usize).saturating_mul(4).max(64);
        while st.events.len() > cap {
            st.events.pop_front();
        }
        if w.trigger.is_some() {
            return None;
        }
        let measure = st.measure(w);
        if measure < w.count {
            return None;
        }
        if st.quiet_until.is_some_and(|q| now < q) {
            self.stats.suppressed += 1;
            return None;
        }
        let detail = window_detail(w, key, measure, st.events.front(), hit, source, line);
        st.events.clear();
        st.quiet_until = Some(now + within);
        Some(detail)
    }

    /// Keys tracked by window rules (for memory tests and metrics).
    pub fn window_keys(&self) -> usize {
        self.windows.values().map(HashMap::len).sum()
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

fn window_detail(
    w: &Window,
    key: &str,
    measure: u32,
    first: Option<&WindowEvent>,
    hit: &crate::analyze::Hit,
    source: &str,
    line: u64,
) -> serde_json::Value {
    let values: Vec<&str> = key.split('\u{1f}').filter(|s| !s.is_empty()).collect();
    let entry = |time: &Option<String>, source: &str, line: u64| serde_json::json!({ "time": time, "source": source, "line": line });
    serde_json::json!({
        "group_by": w.group_names,
        "key": values,
        "within_seconds": w.within.as_secs_f64(),
        "threshold": w.count,
        "count": measure,
        "distinct": w.distinct.as_ref().map(|(n, _)| n),
        "first": first.map(|e| entry(&e.time, &e.source, e.line)),
        "last": entry(&hit.finding.as_ref().and_then(|f| f.time.clone()), source, line),
    })
}

/// Drops the stalest half of a window rule's keys: bounded memory against
/// an attacker who sprays random addresses or users.
fn evict_stalest_windows(map: &mut HashMap<String, WindowState>) {
    let mut times: Vec<i64> = map.values().map(|s| s.latest).collect();
    let mid = times.len() / 2;
    let (_, median, _) = times.select_nth_unstable(mid);
    let cut = *median;
    map.retain(|_, s| s.latest > cut);
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
