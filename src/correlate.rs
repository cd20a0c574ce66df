//! Request/response correlation by `request.id`.
//!
//! Vault writes a request entry before it handles a request and a response
//! entry after, both with the same `request.id`. A finding on the request
//! alone cannot say what happened (`detail.outcome = "attempted"`), so the
//! judge holds such findings for a short wait (`--correlate-wait`, default
//! [`DEFAULT_WAIT`]) and reports each request once:
//!
//! * the response matched the same rule: the response's finding is reported
//!   (it knows the outcome and what was issued) with `detail.request` =
//!   `{time, line, offset}` of the request entry; the request's finding is
//!   not reported on its own;
//! * the response did not match the rule: the request's finding is reported
//!   when the response arrives, its `detail.outcome` taken from the response
//!   and `detail.response` = `{time, line, offset}`;
//! * no response within the wait (entries' own time; in live modes also the
//!   wall clock): reported with `detail.response = null` and
//!   `detail.outcome = "no_response"` (or `failed`/`denied` when the request
//!   entry itself shows the failure, like an invalid wrapping token). Vault writes
//!   requests without responses (a device's own disable, rate-limited
//!   requests, a server that died mid-request), and a log can end between the
//!   two.
//!
//! Memory is bounded: at most [`PENDING_MAX`] findings wait; beyond that the
//! oldest is reported at once as `no_response` and counted (`evicted`).
//! Nothing held is ever dropped: the end of a run, and a tail checkpoint
//! while the archive is off, release every held finding first.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::finding::{Finding, SourceRef};

/// How long a request's finding waits for its response by default.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(2);
/// Findings waiting at most (the oldest beyond it are reported at once).
pub const PENDING_MAX: usize = 65_536;

/// A parsed response entry, as the analysis threads saw it.
#[derive(Debug, Clone)]
pub struct ResponseNote {
    /// 0-based line index within the block.
    pub line_idx: u64,
    /// Byte offset of the line within the block.
    pub offset: u64,
    /// [`id_hash`] of its `request.id`.
    pub id_hash: u64,
    /// `denied`, `failed` or `succeeded`.
    pub outcome: &'static str,
    pub time: Option<String>,
    pub time_ns: Option<i64>,
}

/// A fixed-key hash of a request id: the analysis threads and the judge
/// must agree on it. Request ids are Vault's random UUIDs, not chosen by
/// clients, so a fixed key is safe.
pub fn id_hash(id: &str) -> u64 {
    BuildHasherDefault::<DefaultHasher>::default().hash_one(id)
}

/// Counters of the correlation, in `--stats-json` under `correlation`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CorrelationStats {
    /// Request findings held for their response.
    pub held: u64,
    /// Reported as the response's finding (the rule matched both entries).
    pub merged: u64,
    /// Reported when a response that did not match the rule arrived.
    pub answered: u64,
    /// Reported with `no_response` after the wait (or at the end).
    pub no_response: u64,
    /// Reported early because [`PENDING_MAX`] findings were waiting.
    pub evicted: u64,
    /// Released before their response by a checkpoint (tail without archive).
    pub released_early: u64,
}

struct Held {
    rule: usize,
    finding: Finding,
    time_ns: i64,
    held_at: Instant,
    seq: u64,
}

/// The waiting request findings of one judge.
pub struct Correlator {
    wait: Duration,
    /// Expire on the wall clock too (live modes; never in replay, whose
    /// result must not depend on its speed).
    wall_clock: bool,
    pending: HashMap<u64, Vec<Held>>,
    /// (seq, id hash) in holding order, for expiry; entries already
    /// reported are skipped when met.
    order: VecDeque<(u64, u64)>,
    len: usize,
    next_seq: u64,
    pub stats: CorrelationStats,
}

impl Correlator {
    pub fn new(wait: Duration, wall_clock: bool) -> Self {
        Correlator {
            wait,
            wall_clock,
            pending: HashMap::new(),
            order: VecDeque::new(),
            len: 0,
            next_seq: 0,
            stats: CorrelationStats::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        !self.wait.is_zero()
    }

    /// Findings waiting now.
    pub fn pending(&self) -> usize {
        self.len
    }

    /// Routes a finding of a stateless rule: a request with an id is held
    /// (`None`); anything else comes back to be reported now, a response
    /// having taken its held request of the same rule, if any. `evicted`
    /// receives findings pushed out by the memory cap.
    pub fn route(
        &mut self,
        rule: usize,
        mut f: Finding,
        time_ns: i64,
        evicted: &mut dyn FnMut(Finding),
    ) -> Option<Finding> {
        if !self.enabled() {
            return Some(f);
        }
        let Some(id) = f.request_id.as_deref() else {
            return Some(f);
        };
        let hash = id_hash(id);
        match entry_kind(&f) {
            Some(Kind::Request) => {
                if self.len >= PENDING_MAX {
                    if let Some(mut old) = self.pop_oldest() {
                        self.stats.evicted += 1;
                        mark_no_response(&mut old);
                        evicted(old);
                    }
                }
                let seq = self.next_seq;
                self.next_seq += 1;
                self.pending.entry(hash).or_default().push(Held {
                    rule,
                    finding: f,
                    time_ns,
                    held_at: Instant::now(),
                    seq,
                });
                self.order.push_back((seq, hash));
                self.len += 1;
                self.stats.held += 1;
                None
            }
            Some(Kind::Response) => {
                if let Some(req) = self.take(hash, |h| h.rule == rule && same_id(h, id)) {
                    f.detail.insert("request".into(), location(&req));
                    self.stats.merged += 1;
                }
                Some(f)
            }
            None => Some(f),
        }
    }

    /// A response entry arrived: every request finding still waiting for
    /// it (rules the response did not match) is reported with its outcome.
    pub fn answer(&mut self, note: &ResponseNote, at: &SourceRef, out: &mut dyn FnMut(Finding)) {
        let Some(list) = self.pending.get_mut(&note.id_hash) else {
            return;
        };
        let answered = std::mem::take(list);
        self.pending.remove(&note.id_hash);
        for h in answered {
            self.len -= 1;
            self.stats.answered += 1;
            let mut f = h.finding;
            f.detail.insert("outcome".into(), note.outcome.into());
            f.detail.insert(
                "response".into(),
                serde_json::json!({ "time": note.time, "line": at.line, "offset": at.offset }),
            );
            out(f);
        }
    }

    /// Reports the findings whose wait is over: entry time `clock` (the
    /// newest entry time judged), and the wall clock in live modes.
    pub fn expire(&mut self, clock: i64, out: &mut dyn FnMut(Finding)) {
        let wait_ns = self.wait.as_nanos().min(i64::MAX as u128) as i64;
        while let Some(&(seq, hash)) = self.order.front() {
            let Some(h) = self
                .pending
                .get(&hash)
                .and_then(|l| l.iter().find(|h| h.seq == seq))
            else {
                // Reported already (answered or merged).
                self.order.pop_front();
                continue;
            };
            let by_entry_time = h.time_ns.saturating_add(wait_ns) < clock;
            let by_wall = self.wall_clock && h.held_at.elapsed() >= self.wait;
            if !(by_entry_time || by_wall) {
                break;
            }
            self.order.pop_front();
            if let Some(mut old) = self.take(hash, |h| h.seq == seq) {
                self.stats.no_response += 1;
                mark_no_response(&mut old);
                out(old);
            }
        }
    }

    /// Reports every held finding now: at the end of a run (`no_response`),
    /// or before a checkpoint (`early`: the outcome stays `attempted`).
    pub fn release_all(&mut self, early: bool, out: &mut dyn FnMut(Finding)) {
        while let Some(mut old) = self.pop_oldest() {
            if early {
                self.stats.released_early += 1;
            } else {
                self.stats.no_response += 1;
                mark_no_response(&mut old);
            }
            out(old);
        }
    }

    fn pop_oldest(&mut self) -> Option<Finding> {
        while let Some((seq, hash)) = self.order.pop_front() {
            if let Some(f) = self.take(hash, |h| h.seq == seq) {
                return Some(f);
            }
        }
        None
    }

    fn take(&mut self, hash: u64, pick: impl Fn(&Held) -> bool) -> Option<Finding> {
        let list = self.pending.get_mut(&hash)?;
        let i = list.iter().position(pick)?;
        let h = list.remove(i);
        if list.is_empty() {
            self.pending.remove(&hash);
        }
        self.len -= 1;
        Some(h.finding)
    }

    /// A rule reload: held findings follow their rule's new index; those
    /// of rules that are gone are reported now (never dropped).
    pub fn remap(&mut self, map: &HashMap<usize, usize>, out: &mut dyn FnMut(Finding)) {
        let mut gone = Vec::new();
        for list in self.pending.values_mut() {
            let mut i = 0;
            while i < list.len() {
                match map.get(&list[i].rule) {
                    Some(&j) => {
                        list[i].rule = j;
                        i += 1;
                    }
                    None => gone.push(list.remove(i)),
                }
            }
        }
        self.pending.retain(|_, l| !l.is_empty());
        self.len = self.pending.values().map(Vec::len).sum();
        gone.sort_by_key(|h| h.seq);
        for h in gone {
            self.stats.released_early += 1;
            out(h.finding);
        }
    }
}

enum Kind {
    Request,
    Response,
}

fn entry_kind(f: &Finding) -> Option<Kind> {
    let t = f.entry_type.as_deref()?;
    if t == "request" || t.ends_with("-request") {
        Some(Kind::Request)
    } else if t == "response" || t.ends_with("-response") {
        Some(Kind::Response)
    } else {
        None
    }
}

fn same_id(h: &Held, id: &str) -> bool {
    h.finding.request_id.as_deref() == Some(id)
}

fn location(f: &Finding) -> serde_json::Value {
    serde_json::json!({ "time": f.time, "line": f.source.line, "offset": f.source.offset })
}

/// No response came: `attempted` becomes `no_response`; a request that
/// shows its own failure (`failed`, `denied`: Vault writes some refused
/// requests without a response) keeps it.
fn mark_no_response(f: &mut Finding) {
    if f.detail.get("outcome").and_then(|o| o.as_str()) == Some("attempted") {
        f.detail.insert("outcome".into(), "no_response".into());
    }
    f.detail.insert("response".into(), serde_json::Value::Null);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finding::{Actor, Severity, SourceKind};

    fn finding(kind: &str, id: &str, line: u64) -> Finding {
        let mut detail = serde_json::Map::new();
        detail.insert("outcome".into(), "attempted".into());
        Finding {
            id: format!("{kind}-{id}-{line}"),
            rule: "r".into(),
            category: "c".into(),
            severity: Severity::High,
            title: "t".into(),
            time: None,
            entry_type: Some(kind.into()),
            request_id: Some(id.into()),
            operation: None,
            path: None,
            namespace: "root".into(),
            actor: Actor::default(),
            source: SourceRef {
                kind: SourceKind::File,
                name: "f".into(),
                line,
                offset: 0,
            },
            detail,
        }
    }

    fn route(c: &mut Correlator, rule: usize, f: Finding, t: i64) -> Vec<Finding> {
        let mut out = Vec::new();
        if let Some(f) = c.route(rule, f, t, &mut |old| out.push(old)) {
            out.push(f);
        }
        out
    }

    #[test]
    fn a_response_of_the_same_rule_takes_its_request() {
        let mut c = Correlator::new(Duration::from_secs(2), false);
        assert!(route(&mut c, 0, finding("request", "a", 1), 0).is_empty());
        // Another rule's response does not take it.
        let other = route(&mut c, 1, finding("response", "a", 2), 1);
        assert!(other[0].detail.get("request").is_none());
        let got = route(&mut c, 0, finding("response", "a", 2), 1);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].detail["request"]["line"], 1);
        assert_eq!(c.pending(), 0);
        assert_eq!(c.stats.merged, 1);
    }

    #[test]
    fn waits_end_on_entry_time_and_are_bounded() {
        let mut c = Correlator::new(Duration::from_secs(2), false);
        let s = 1_000_000_000;
        route(&mut c, 0, finding("request", "a", 1), 0);
        route(&mut c, 0, finding("request", "b", 2), s);
        let mut out = Vec::new();
        c.expire(2 * s, &mut |f| out.push(f));
        assert!(out.is_empty(), "not over yet");
        c.expire(2 * s + 1, &mut |f| out.push(f));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].detail["outcome"], "no_response");
        assert!(out[0].detail["response"].is_null());
        assert_eq!(c.pending(), 1);

        // Far more requests than the cap: the oldest go out, counted.
        let mut evicted = 0;
        for i in 0..PENDING_MAX + 10 {
            evicted += route(&mut c, 0, finding("request", &i.to_string(), 9), 3 * s).len();
        }
        assert_eq!(c.pending(), PENDING_MAX);
        assert_eq!(evicted, 11);
        assert_eq!(c.stats.evicted, 11);
        let mut rest = Vec::new();
        c.release_all(true, &mut |f| rest.push(f));
        assert_eq!(rest.len(), PENDING_MAX);
        assert_eq!(rest[0].detail["outcome"], "attempted", "released early");
        assert_eq!(c.pending(), 0);
    }

    #[test]
    fn an_unmatched_response_answers_with_its_outcome_and_reloads_keep_nothing_back() {
        let mut c = Correlator::new(Duration::from_secs(2), false);
        route(&mut c, 3, finding("request", "a", 1), 0);
        route(&mut c, 4, finding("request", "b", 2), 0);
        let note = ResponseNote {
            line_idx: 4,
            offset: 0,
            id_hash: id_hash("a"),
            outcome: "denied",
            time: Some("t".into()),
            time_ns: Some(1),
        };
        let at = SourceRef {
            kind: SourceKind::File,
            name: "f".into(),
            line: 5,
            offset: 77,
        };
        let mut out = Vec::new();
        c.answer(&note, &at, &mut |f| out.push(f));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].detail["outcome"], "denied");
        assert_eq!(out[0].detail["response"]["line"], 5);
        // Rule 4 is gone after a reload: its held finding is reported.
        let mut gone = Vec::new();
        c.remap(&HashMap::from([(3, 0)]), &mut |f| gone.push(f));
        assert_eq!(gone.len(), 1);
        assert_eq!(c.pending(), 0);
    }

    #[test]
    fn zero_wait_passes_everything_through() {
        let mut c = Correlator::new(Duration::ZERO, true);
        assert_eq!(route(&mut c, 0, finding("request", "a", 1), 0).len(), 1);
        assert_eq!(c.pending(), 0);
    }
}
