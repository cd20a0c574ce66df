//! The stateful, ordered half of analysis: [`Judge`] sees the blocks of one
//! stream in order, turns block-relative positions into lines and offsets,
//! applies throttles, and counts everything into [`Stats`].
//!
//! # Window state and its memory cap
//!
//! Window rules (`[rule.window]`, see [`crate::rules::Window`]) keep, per rule, one
//! `WindowState` per group key: the events still inside the window (entry time, the hash of
//! the `distinct` value, source and line), the newest time seen and the end of the quiet
//! period after a finding. The state is bounded three ways, all per rule:
//!
//! * **events per key**: at most `max(4 × count, 64)`; the oldest go first
//!   ([`Stats::window_events_dropped`]).
//! * **keys**: at most `max_keys` (default [`crate::rules::WINDOW_KEYS_MAX`]).
//! * **bytes**: at most `max_state` (default [`crate::rules::WINDOW_STATE_MAX`]), as accounted
//!   below.
//!
//! When a new key would pass `max_keys` or `max_state`, or an event pushes the rule past
//! `max_state`, the **less valuable half** of the rule's keys is evicted (repeatedly, until
//! the rule is under its caps). Value is, first, how close a key is to firing (its events,
//! capped at `count`, when its newest is still inside the window; a key in its quiet period
//! counts as full), then how recent its newest event is. So an attacker who sprays random
//! addresses or users (one event per key) evicts the stalest of their own keys, not a key that
//! is building up to a real finding. Every eviction is counted ([`Stats::window_evictions`],
//! [`Stats::window_keys_evicted`]); nothing is dropped silently.
//!
//! Keys are stored as 64-bit SipHash values under random keys (the group values themselves
//! are not kept: the finding takes them from the entry that fires), so long attacker-chosen
//! user names cost nothing, and collisions cannot be aimed at.
//!
//! Accounting ([`Judge::window_state_bytes`], [`Stats::window_state_bytes`]) is approximate
//! but errs high: the hash table by its capacity (`capacity × 8/7` buckets of
//! `size_of::<(u64, WindowState)>() + 1` bytes, hashbrown's layout), the event queues by their
//! capacity (`size_of::<WindowEvent>()` each, plus 16 bytes of allocator overhead per queue),
//! and each held event's source name as if it had its own copy (it shares one `Arc<str>` per
//! stream). A table never grows past half of `max_state`, so evicting always makes room; while
//! an eviction rebuilds the table, the old one is held too for a moment (not counted).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
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
    /// Keys window rules hold now (all rules).
    pub window_keys: u64,
    /// Bytes of window state now (see the module docs for what is counted).
    pub window_state_bytes: u64,
    /// The most bytes of window state held at once.
    pub window_state_bytes_peak: u64,
    /// The sum of the window rules' `max_state`: the cap of `window_state_bytes`.
    pub window_state_cap: u64,
    /// Times a window rule's keys were halved because of `max_keys` or `max_state`.
    pub window_evictions: u64,
    /// Keys dropped by those evictions (their counts are lost).
    pub window_keys_evicted: u64,
    /// Events dropped because their key held its most events (`4 × count`, at least 64).
    pub window_events_dropped: u64,
    /// Events older than their key's window when they arrived (out of order), not counted.
    pub window_late_events: u64,
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

/// One counted event of a window (40 bytes).
#[derive(Debug, Clone)]
struct WindowEvent {
    /// Entry time (unix ns; the newest time seen when the entry's own does not parse).
    time_ns: i64,
    /// Hash of the distinct value (SipHash, random keys: attacker-proof); 0: none.
    distinct: u64,
    line: u64,
    /// The stream's name, shared by its events.
    source: Arc<str>,
}

impl WindowEvent {
    /// Bytes accounted for the event beyond its queue slot: its source name as if it were its
    /// own copy (plus an `Arc`'s counters).
    fn owned_bytes(&self) -> usize {
        self.source.len() + 2 * std::mem::size_of::<usize>()
    }
}

/// What a heap block costs beyond the bytes asked for (glibc: an 8-byte header, sizes rounded
/// up to 16).
const ALLOC_OVERHEAD: usize = 16;

/// Accounted bytes of an event queue of `capacity`: its block and the allocator's overhead.
fn queue_bytes(capacity: usize) -> usize {
    match capacity {
        0 => 0,
        c => c * std::mem::size_of::<WindowEvent>() + ALLOC_OVERHEAD,
    }
}

/// One group key's window.
#[derive(Debug)]
struct WindowState {
    events: VecDeque<WindowEvent>,
    latest: i64,
    /// After a finding the key stays quiet for one window (a sustained
    /// attack gives one finding per window, not one per `count` events);
    /// `i64::MIN`: not quiet.
    quiet_until: i64,
}

impl WindowState {
    fn new() -> Self {
        WindowState {
            events: VecDeque::with_capacity(1),
            latest: i64::MIN,
            quiet_until: i64::MIN,
        }
    }

    /// Accounted bytes: queue capacity plus the held events' names.
    fn bytes(&self) -> usize {
        queue_bytes(self.events.capacity())
            + self
                .events
                .iter()
                .map(WindowEvent::owned_bytes)
                .sum::<usize>()
    }

    /// Drops the events older than the window; returns the bytes freed.
    fn expire(&mut self, within: i64) -> usize {
        let mut freed = 0;
        let oldest = self.latest.saturating_sub(within);
        while self.events.front().is_some_and(|e| e.time_ns < oldest) {
            if let Some(e) = self.events.pop_front() {
                freed += e.owned_bytes();
            }
        }
        freed
    }

    /// Events, or distinct values, in the window. `scratch` is reused.
    fn measure(&self, w: &Window, scratch: &mut Vec<u64>) -> u32 {
        if w.distinct.is_some() {
            scratch.clear();
            scratch.extend(self.events.iter().map(|e| e.distinct).filter(|&d| d != 0));
            scratch.sort_unstable();
            scratch.dedup();
            scratch.len() as u32
        } else {
            self.events.len() as u32
        }
    }

    /// How much the key is worth keeping at `now`: `count` while it is quiet after a finding;
    /// else its events (capped at `count`) when its newest is still inside the window, 0 when
    /// not. O(1): the queue itself is not read (it only holds events within one window of the
    /// newest).
    fn value(&self, w: &Window, now: i64, within: i64) -> u32 {
        if now < self.quiet_until {
            w.count
        } else if self.latest < now.saturating_sub(within) {
            0
        } else {
            (self.events.len() as u32).min(w.count)
        }
    }
}

/// The first event of a window that fired: time, source, line.
type FirstEvent = (i64, Arc<str>, u64);
/// A window that fired: its measure and first event.
type Fired = (u32, Option<FirstEvent>);

/// Keys are already SipHash values: the table uses them as they are.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed; keep a correct fallback anyway.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type KeyMap = HashMap<u64, WindowState, BuildHasherDefault<KeyHasher>>;

/// One window rule's keys and their accounted event bytes.
#[derive(Default)]
struct RuleWindows {
    keys: KeyMap,
    /// Σ `WindowState::bytes` over the keys.
    event_bytes: usize,
}

/// Accounted bytes of a key table of `capacity` (hashbrown: buckets ≈ capacity × 8/7, each a
/// slot and a control byte).
fn table_bytes(capacity: usize) -> usize {
    buckets(capacity) * (std::mem::size_of::<(u64, WindowState)>() + 1)
}

/// hashbrown's buckets for a table of `capacity`.
fn buckets(capacity: usize) -> usize {
    match capacity {
        0 => 0,
        1..8 => (capacity + 1).next_power_of_two(),
        _ => (capacity * 8 / 7).next_power_of_two(),
    }
}

/// Keys a table may hold so that it stays within `bytes`.
fn keys_within(bytes: usize) -> usize {
    let per_bucket = std::mem::size_of::<(u64, WindowState)>() + 1;
    let buckets = (bytes / per_bucket).max(1);
    // Largest power of two of buckets that fits, and hashbrown's 7/8 load.
    let pow = if buckets.is_power_of_two() {
        buckets
    } else {
        buckets.next_power_of_two() / 2
    };
    if pow < 8 {
        pow.saturating_sub(1).max(1)
    } else {
        pow / 8 * 7
    }
}

impl RuleWindows {
    fn bytes(&self) -> usize {
        table_bytes(self.keys.capacity()) + self.event_bytes
    }

    /// Evicts the less valuable half of the keys (see the module docs); returns the keys
    /// dropped.
    fn evict_half(&mut self, w: &Window, now: i64) -> usize {
        let within = w.within.as_nanos().min(i64::MAX as u128) as i64;
        let mut ranked: Vec<(u32, i64, u64)> = self
            .keys
            .iter()
            .map(|(k, st)| (st.value(w, now, within), st.latest, *k))
            .collect();
        if ranked.is_empty() {
            return 0;
        }
        let mid = ranked.len() / 2;
        let (_, cut, _) = ranked.select_nth_unstable(mid);
        let cut = *cut;
        let before = self.keys.len();
        let mut freed = 0;
        self.keys.retain(|k, st| {
            let keep = (st.value(w, now, within), st.latest, *k) > cut;
            if !keep {
                freed += st.bytes();
            }
            keep
        });
        self.event_bytes -= freed;
        // Rebuilt without the tombstones `retain` may leave, so that `capacity()` tells the
        // table's real size (and the next growth is a doubling, not a surprise).
        self.keys.shrink_to_fit();
        before - self.keys.len()
    }
}

/// One window rule's state ([`Judge::window_usage`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowUsage {
    pub rule: String,
    pub keys: usize,
    /// Accounted bytes (see the module docs).
    pub bytes: usize,
    pub max_keys: usize,
    pub max_state: usize,
}

/// The ordered, stateful stage. One per run (replay) or per service.
pub struct Judge {
    rules: Arc<RuleSet>,
    /// (rule index, hash of the key) → window bucket of the last reported finding.
    throttle: HashMap<(usize, u64), i64>,
    /// Per window rule: hash of the group key → its window.
    windows: HashMap<usize, RuleWindows>,
    /// Σ `RuleWindows::bytes`.
    window_bytes: usize,
    hasher: RandomState,
    /// The current stream's name, shared by the window events it counts.
    source: Arc<str>,
    /// Reused by distinct counts.
    scratch: Vec<u64>,
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
        let mut judge = Judge {
            rules,
            throttle: HashMap::new(),
            windows: HashMap::new(),
            window_bytes: 0,
            hasher: RandomState::new(),
            source: Arc::from(""),
            scratch: Vec::new(),
            clock: 0,
            correlator: Correlator::new(DEFAULT_WAIT, false),
            deferred: Vec::new(),
            stats: Stats::default(),
        };
        judge.window_gauges();
        judge
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
            // A rule that lost its window keeps no state.
            .filter(|(j, _)| rules.get(*j).window.is_some())
            .collect();
        drop(new_ids);
        let mut gone = Vec::new();
        self.correlator.remap(&map, &mut |f| gone.push(f));
        self.deferred.extend(gone);
        self.rules = rules;
        self.window_bytes = self.windows.values().map(RuleWindows::bytes).sum();
        self.window_gauges();
    }

    /// Copies the window state's size into the stats.
    fn window_gauges(&mut self) {
        let s = &mut self.stats;
        s.window_keys = self.windows.values().map(|r| r.keys.len() as u64).sum();
        s.window_state_bytes = self.window_bytes as u64;
        s.window_state_bytes_peak = s.window_state_bytes_peak.max(s.window_state_bytes);
        s.window_state_cap = self
            .rules
            .rules()
            .iter()
            .filter_map(|r| r.window.as_ref())
            .map(|w| w.max_state as u64)
            .sum();
    }

    fn hash_key(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
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
        if *self.source != *pos.name {
            self.source = Arc::from(pos.name.as_str());
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
        self.window_gauges();
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
                        .keys
                        .get(&self.hasher.hash_one(arena.key_text(k)))
                        .is_some_and(|st| st.measure(w, &mut self.scratch) >= w.count),
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
        hit: crate::analyze::Hit,
        emit: &mut dyn FnMut(Finding),
    ) {
        if let Some(t) = hit.time_ns {
            self.clock = self.clock.max(t);
        }
        // Expired waits go out in entry order, wherever blocks are cut.
        self.expire_held(emit);
        // An Arc clone so the window state can be borrowed mutably.
        let rules = self.rules.clone();
        let mut window = None;
        if let Some(w) = &rules.get(hit.rule).window {
            let line = pos.lines_before + hit.line_idx + 1;
            let Some(detail) = self.window_event(hit.rule, w, &hit, line) else {
                return;
            };
            window = Some(detail);
        } else if hit.role == Role::Trigger {
            return;
        }
        let rule = self.rules.get(hit.rule);
        if let (Some(t), Some(key), Some(now)) = (&rule.throttle, &hit.throttle_key, hit.time_ns) {
            // One finding per key per window of entry time, windows
            // aligned to the clock (`1h`: each clock hour), so the
            // analysis threads can drop repeats inside a block on their
            // own. A late entry of an earlier window counts as a repeat.
            let bucket = now.div_euclid(t.window.as_nanos().max(1) as i64);
            let slot = (hit.rule, self.hash_key(key));
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
            (Some(f), _) => Some(*f),
            (None, Some(raw)) => crate::parse::parse_line(&raw)
                .ok()
                .map(|e| crate::analyze::build_finding(rule, &e, &raw)),
            (None, None) => None,
        };
        let Some(mut f) = built else { return };
        if let Some(mut detail) = window {
            detail["last"]["time"] = f.time.clone().into();
            f.detail.insert("window".into(), detail);
        }
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
        // Every run ends here (replay per input, the pipeline at its end):
        // the counters are copied once, not per finding.
        self.stats.correlation = self.correlator.stats.clone();
    }

    /// Counts a finding and hands it to `emit`.
    fn report(&mut self, f: Finding, emit: &mut dyn FnMut(Finding)) {
        self.stats.count_finding(&f);
        emit(f);
    }

    /// Counts a window rule's event (or checks its trigger); returns the
    /// window's description when the rule fires (`last.time` is left for the
    /// caller, which has the finding).
    fn window_event(
        &mut self,
        rule: usize,
        w: &Window,
        hit: &crate::analyze::Hit,
        line: u64,
    ) -> Option<serde_json::Value> {
        let key = hit.group.as_deref()?;
        let hkey = self.hash_key(key);
        let now = hit.time_ns.unwrap_or(self.clock);
        let within = w.within.as_nanos().min(i64::MAX as u128) as i64;
        let distinct = hit
            .distinct
            .as_ref()
            .map_or(0, |d| self.hasher.hash_one(d).max(1));
        let rw = self.windows.entry(rule).or_default();
        let bytes_before = rw.bytes();
        let fired = if hit.role == Role::Trigger {
            Self::window_trigger(rw, w, hkey, now, within, &mut self.scratch, &mut self.stats)
        } else {
            let source = self.source.clone();
            Self::window_count(
                rw,
                w,
                hkey,
                now,
                within,
                WindowEvent {
                    time_ns: now,
                    distinct,
                    line,
                    source,
                },
                &mut self.scratch,
                &mut self.stats,
            )
        };
        let bytes_after = rw.bytes();
        self.window_bytes = self.window_bytes - bytes_before + bytes_after;
        // The peak is kept per event; the other gauges are copied once per block.
        let peak = &mut self.stats.window_state_bytes_peak;
        *peak = (*peak).max(self.window_bytes as u64);
        let (measure, first) = fired?;
        Some(window_detail(w, key, measure, first, &self.source, line))
    }

    /// A trigger entry: fires when its key's window is full. Returns the measure and the
    /// first event.
    fn window_trigger(
        rw: &mut RuleWindows,
        w: &Window,
        key: u64,
        now: i64,
        within: i64,
        scratch: &mut Vec<u64>,
        stats: &mut Stats,
    ) -> Option<Fired> {
        let st = rw.keys.get_mut(&key)?;
        st.latest = st.latest.max(now);
        rw.event_bytes -= st.expire(within);
        let measure = st.measure(w, scratch);
        if measure < w.count {
            return None;
        }
        if now < st.quiet_until {
            stats.suppressed += 1;
            return None;
        }
        Some(Self::window_fire(rw, key, now, within, measure))
    }

    /// Reports a key's window and starts its quiet period.
    fn window_fire(rw: &mut RuleWindows, key: u64, now: i64, within: i64, measure: u32) -> Fired {
        let st = rw.keys.get_mut(&key).expect("the key is present");
        let first = st
            .events
            .front()
            .map(|e| (e.time_ns, e.source.clone(), e.line));
        rw.event_bytes -= st.bytes();
        st.events = VecDeque::new();
        st.quiet_until = now.saturating_add(within);
        (measure, first)
    }

    /// A counted entry: adds it to its key's window (making room under the caps) and fires
    /// when the window holds `count` events or distinct values.
    #[allow(clippy::too_many_arguments)]
    fn window_count(
        rw: &mut RuleWindows,
        w: &Window,
        key: u64,
        now: i64,
        within: i64,
        event: WindowEvent,
        scratch: &mut Vec<u64>,
        stats: &mut Stats,
    ) -> Option<Fired> {
        if !rw.keys.contains_key(&key) {
            Self::window_make_room(rw, w, now, event.owned_bytes(), stats);
            let st = WindowState::new();
            rw.event_bytes += st.bytes();
            rw.keys.insert(key, st);
        }
        let st = rw.keys.get_mut(&key).expect("the key is present");
        st.latest = st.latest.max(now);
        if now < st.latest.saturating_sub(within) {
            // Too late for its window (out of order by more than the window).
            stats.window_late_events += 1;
            return None;
        }
        let queue_before = queue_bytes(st.events.capacity());
        let mut added = event.owned_bytes();
        let mut freed = 0;
        st.events.push_back(event);
        // Bounded whatever the rate: the oldest events beyond a margin go.
        let cap = (w.count as usize).saturating_mul(4).max(64);
        while st.events.len() > cap {
            if let Some(e) = st.events.pop_front() {
                freed += e.owned_bytes();
            }
            stats.window_events_dropped += 1;
        }
        freed += st.expire(within);
        added += queue_bytes(st.events.capacity()) - queue_before;
        rw.event_bytes = rw.event_bytes + added - freed;
        if w.trigger.is_none() {
            let measure = st.measure(w, scratch);
            if measure >= w.count {
                if now < st.quiet_until {
                    stats.suppressed += 1;
                } else {
                    return Some(Self::window_fire(rw, key, now, within, measure));
                }
            }
        }
        // Events of an existing key may pass the byte cap: halve until under it.
        while rw.bytes() > w.max_state && !rw.keys.is_empty() {
            stats.window_evictions += 1;
            stats.window_keys_evicted += rw.evict_half(w, now) as u64;
        }
        None
    }

    /// Before a new key goes in: evicts until the key count, and the bytes with the new key
    /// (and the table grown, if it must grow), are within the rule's caps.
    fn window_make_room(
        rw: &mut RuleWindows,
        w: &Window,
        now: i64,
        event_owned: usize,
        stats: &mut Stats,
    ) {
        // The table stays within half the byte cap, so evicting always makes room.
        let max_keys = w.max_keys.min(keys_within(w.max_state / 2)).max(1);
        let new_key = queue_bytes(1) + event_owned;
        loop {
            let len = rw.keys.len();
            let capacity = rw.keys.capacity();
            let table = if len >= capacity {
                // The insert grows the table: hashbrown doubles its buckets (4 at first).
                buckets(capacity).max(2) * 2 * (std::mem::size_of::<(u64, WindowState)>() + 1)
            } else {
                table_bytes(capacity)
            };
            let over = len >= max_keys || table + rw.event_bytes + new_key > w.max_state;
            if len == 0 || !over {
                return;
            }
            stats.window_evictions += 1;
            stats.window_keys_evicted += rw.evict_half(w, now) as u64;
        }
    }

    /// Keys tracked by window rules (for memory tests and metrics).
    pub fn window_keys(&self) -> usize {
        self.windows.values().map(|r| r.keys.len()).sum()
    }

    /// Accounted bytes of window state, all rules (see the module docs).
    pub fn window_state_bytes(&self) -> usize {
        self.window_bytes
    }

    /// Each window rule's state now, in rule order.
    pub fn window_usage(&self) -> Vec<WindowUsage> {
        self.rules
            .rules()
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let w = r.window.as_ref()?;
                let rw = self.windows.get(&i);
                Some(WindowUsage {
                    rule: r.id.clone(),
                    keys: rw.map_or(0, |rw| rw.keys.len()),
                    bytes: rw.map_or(0, RuleWindows::bytes),
                    max_keys: w.max_keys,
                    max_state: w.max_state,
                })
            })
            .collect()
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
    first: Option<FirstEvent>,
    source: &str,
    line: u64,
) -> serde_json::Value {
    let values: Vec<&str> = key.split('\u{1f}').filter(|s| !s.is_empty()).collect();
    serde_json::json!({
        "group_by": w.group_names,
        "key": values,
        "within_seconds": w.within.as_secs_f64(),
        "threshold": w.count,
        "count": measure,
        "distinct": w.distinct.as_ref().map(|(n, _)| n),
        "first": first.map(|(t, source, line)| serde_json::json!({
            "time": rfc3339_nanos(t), "source": &*source, "line": line
        })),
        "last": { "time": null, "source": source, "line": line },
    })
}

/// `2026-11-25T22:47:06.681947058Z` (UTC, trailing zeros of the fraction trimmed, as Vault
/// writes times).
fn rfc3339_nanos(ns: i64) -> String {
    use std::fmt::Write as _;
    let secs = ns.div_euclid(1_000_000_000);
    let frac = ns.rem_euclid(1_000_000_000);
    let (y, m, d) = crate::archive::civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    let mut out = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    );
    if frac != 0 {
        let digits = format!("{frac:09}");
        let _ = write!(out, ".{}", digits.trim_end_matches('0'));
    }
    out.push('Z');
    out
}

/// Drops the half of the throttle state with the oldest times: bounded
/// memory whatever an attacker sprays.
fn evict_stalest(map: &mut HashMap<(usize, u64), i64>) {
    let mut times: Vec<i64> = map.values().copied().collect();
    let mid = times.len() / 2;
    let (_, median, _) = times.select_nth_unstable(mid);
    let cut = *median;
    map.retain(|_, t| *t > cut);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_render_as_vault_writes_them() {
        let t = crate::parse::parse_time_nanos("2026-11-25T22:47:06.68194705Z").unwrap();
        assert_eq!(rfc3339_nanos(t), "2026-11-25T22:47:06.68194705Z");
        let t = crate::parse::parse_time_nanos("2026-11-25T22:47:06Z").unwrap();
        assert_eq!(rfc3339_nanos(t), "2026-11-25T22:47:06Z");
        assert_eq!(rfc3339_nanos(-1), "1969-12-31T23:59:59.999999999Z");
    }

    use crate::analyze::{Analyzer, BlockResult, Hit};
    use crate::rules::{RuleSelection, WINDOW_STATE_MAX};

    /// A compact failed userpass login for `user` from `addr`, `micros` µs after a start.
    fn failure(micros: u64, addr: &str, user: &str) -> String {
        let t = format!(
            "2026-11-25T10:{:02}:{:02}.{:06}Z",
            micros / 60_000_000,
            micros / 1_000_000 % 60,
            micros % 1_000_000
        );
        format!(
            r#"{{"time":"{t}","type":"response","auth":{{"token_type":"default"}},"request":{{"id":"r","operation":"update","mount_point":"auth/userpass/","mount_type":"userpass","namespace":{{"id":"root"}},"path":"auth/userpass/login/{user}","remote_address":"{addr}"}},"response":{{"mount_point":"auth/userpass/","data":{{"error":"hmac-sha256:00"}}}},"error":"invalid credentials"}}"#
        )
    }

    /// A million failed logins, each from its own address and for its own user (an attacker
    /// spraying every window rule's key), through the built-in window rules with their
    /// default caps. The flood's hits are made from the analyser's hits for one template
    /// line (the analyser itself is too slow for a million lines in a debug build); real
    /// attacks go through the analyser. Keys and bytes stay within each rule's caps after
    /// every block, evictions are counted, and a slow brute force inside the flood and a
    /// fast one after it still fire.
    #[test]
    fn a_million_sprayed_keys_stay_under_the_caps_and_real_attacks_still_fire() {
        let rules = Arc::new(
            RuleSet::load_selected(
                None,
                &RuleSelection {
                    only: vec!["brute_force.*".into(), "acl.denied_*".into()],
                    disable: Vec::new(),
                },
            )
            .unwrap(),
        );
        let analyzer = Analyzer::new(rules.clone(), false, 1 << 20);
        let template =
            analyzer.scan_block(format!("{}\n", failure(0, "192.0.2.1", "tmpl")).as_bytes());
        let login_rules = rules
            .rules()
            .iter()
            .filter(|r| r.id.starts_with("brute_force."))
            .count();
        assert_eq!(
            template.hits.len(),
            login_rules,
            "every login window rule counts it"
        );
        let flood_hit = |t: &Hit, idx: u64, n: u64| -> Hit {
            let addr = format!("10.{}.{}.{}", n >> 16, (n >> 8) & 255, n & 255);
            let user = format!("u{n:x}");
            let swap = |v: &Option<String>| {
                v.as_ref()
                    .map(|v| v.replace("192.0.2.1", &addr).replace("tmpl", &user))
            };
            Hit {
                rule: t.rule,
                line_idx: idx,
                offset: 0,
                finding: None,
                raw: None,
                throttle_key: None,
                // 10 µs apart: the whole flood stays inside every window.
                time_ns: t.time_ns.map(|t0| t0 + n as i64 * 10_000),
                role: t.role,
                group: swap(&t.group),
                distinct: swap(&t.distinct),
            }
        };
        let mut judge = Judge::new(rules.clone());
        let mut pos = StreamPos {
            kind: SourceKind::Stdin,
            name: "-".into(),
            lines_before: 0,
        };
        let mut fired = Vec::new();
        type Fired = Vec<(String, Option<String>)>;
        let judge_block =
            |judge: &mut Judge, pos: &mut StreamPos, result: BlockResult, fired: &mut Fired| {
                judge.block(pos, 0, result, false, &mut |f| {
                    fired.push((f.rule.clone(), f.actor.remote_address.clone()))
                });
                for u in judge.window_usage() {
                    assert!(u.keys <= u.max_keys, "{u:?}");
                    assert!(u.bytes <= u.max_state, "{u:?}");
                }
                assert!(judge.window_state_bytes() as u64 <= judge.stats.window_state_cap);
            };
        const FLOOD: u64 = 1_000_000;
        const BLOCK: u64 = 20_000;
        for b in 0..FLOOD / BLOCK {
            let mut result = BlockResult {
                lines: BLOCK,
                entries: BLOCK,
                ..Default::default()
            };
            for i in 0..BLOCK {
                let n = b * BLOCK + i;
                for t in &template.hits {
                    result.hits.push(flood_hit(t, i, n));
                }
            }
            judge_block(&mut judge, &mut pos, result, &mut fired);
            // A slow brute force inside the flood: one failure per 5,000 sprayed entries.
            if b < 3 {
                for k in 1..=4 {
                    let n = b * BLOCK + k * 5_000;
                    let line = failure(n * 10, "198.51.100.9", "alice") + "\n";
                    let result = analyzer.scan_block(line.as_bytes());
                    judge_block(&mut judge, &mut pos, result, &mut fired);
                }
            }
        }
        let s = judge.stats.clone();
        assert_eq!(
            s.window_state_cap,
            rules.rules().len() as u64 * WINDOW_STATE_MAX as u64
        );
        assert!(s.window_evictions >= 4, "{s:?}");
        assert!(s.window_keys_evicted > 3 * FLOOD, "{s:?}");
        assert!(s.window_state_bytes_peak <= s.window_state_cap, "{s:?}");
        for u in judge.window_usage() {
            if u.rule.starts_with("brute_force.") {
                assert!(u.keys > 10_000, "the caps bind, not an empty table: {u:?}");
            }
        }
        // Twelve failures for alice from one address: by address and by user.
        let slow = Some("198.51.100.9".to_string());
        assert_eq!(
            fired,
            [
                ("brute_force.address".to_string(), slow.clone()),
                ("brute_force.user".to_string(), slow)
            ],
            "the slow brute force fires, the spray does not"
        );
        // A real brute force right after the flood.
        fired.clear();
        let burst: String = (0..10)
            .map(|i| failure(FLOOD * 10 + i * 1_000_000, "203.0.113.7", "bob") + "\n")
            .collect();
        let result = analyzer.scan_block(burst.as_bytes());
        judge_block(&mut judge, &mut pos, result, &mut fired);
        assert!(
            fired.contains(&(
                "brute_force.address".to_string(),
                Some("203.0.113.7".to_string())
            )),
            "{fired:?}"
        );
    }

    #[test]
    fn table_accounting_matches_the_key_limit() {
        for cap in [1usize << 10, 1 << 20, 8 << 20, 16 << 20] {
            let keys = keys_within(cap);
            let mut m = KeyMap::default();
            m.reserve(keys);
            assert!(table_bytes(m.capacity()) <= cap, "{cap}: {keys} keys");
            assert!(table_bytes(keys) <= cap);
            assert!(keys * 4 > cap / (std::mem::size_of::<(u64, WindowState)>() + 1));
        }
        assert_eq!(std::mem::size_of::<WindowEvent>(), 40);
    }
}
