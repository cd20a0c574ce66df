//! What reaches the sinks once: the cross-source **merge** and the per-rule **suppression**
//! of `auditwatch run`.
//!
//! ```text
//! judge (per source) ──▶ Merger ──first report of an event──▶ Suppressor ──▶ sinks
//!                          │ same (rule, type, request.id, path)   │ same (rule, actor) within
//!                          ▼ within the merge window: dropped      ▼ the window: held, then one
//!                            (counted as merged)                    summary at the window's end
//! ```
//!
//! **Merge.** A socket source and a tail source on the same Vault node see every event twice
//! (each audit device writes its own entry: other HMACs, other `time`, the same `request.id`).
//! Findings are keyed by `(rule, type, request.id, path)` and counted per source; a finding
//! is passed on when its source has now reported that key more often than any other source
//! (within `window` of arrival time from the key's first report), and dropped otherwise: it is
//! the second report of an event another source reported first. So N sources watching one
//! node report each event once, and two distinct entries with the same key (Vault writes some
//! internal requests with an empty `request.id`) are both reported. Findings of one source are
//! never merged with each other (byte-identical re-sends are dropped by the pipeline already).

//! **Suppression.** Identical findings, the same rule and the same actor (`display_name`,
//! `entity_id`, `remote_address`, `accessor`), inside a rule's window: the first is passed on at
//! once (an alert never waits for a window); the following ones are held and, when the window
//! (counted from the first) ends, reported as **one** summary finding: the last held finding
//! with `detail.suppression = {count, repeats, first_time, last_time, window_seconds, paths,
//! first_id}` (`count` all findings of the window, the first included; `repeats` those the
//! summary stands for; times are the entries' own `time`; `paths` up to 16 distinct request
//! paths) and an id of its own. A window with no repeat reports nothing more. Both stages keep
//! at most [`MAX_KEYS`] keys (the oldest windows are closed early beyond that).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::config::SuppressConfig;
use crate::finding::Finding;

/// Most keys either stage remembers.
pub const MAX_KEYS: usize = 65_536;
/// Most distinct paths listed in a summary.
pub const MAX_PATHS: usize = 16;

type MergeKey = (String, Option<String>, String, Option<String>);

struct Seen {
    first: Instant,
    /// (source, findings of that source with this key).
    counts: Vec<(u32, u32)>,
}

/// Drops the second report of one event (see the module docs).
pub struct Merger {
    window: Duration,
    seen: HashMap<MergeKey, Seen>,
    order: VecDeque<(Instant, MergeKey)>,
}

impl Merger {
    /// A merger; a zero window passes everything.
    pub fn new(window: Duration) -> Merger {
        Merger {
            window,
            seen: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    pub fn set_window(&mut self, window: Duration) {
        self.window = window;
    }

    /// True when `f`, from `source`, is to be passed on; false when another source already
    /// reported its event.
    pub fn admit(&mut self, f: &Finding, source: u32, now: Instant) -> bool {
        if self.window.is_zero() {
            return true;
        }
        self.expire(now);
        let key = (
            f.rule.clone(),
            f.entry_type.clone(),
            f.request_id.clone().unwrap_or_default(),
            f.path.clone(),
        );
        if let Some(seen) = self.seen.get_mut(&key) {
            let others = seen
                .counts
                .iter()
                .filter(|(s, _)| *s != source)
                .map(|(_, n)| *n)
                .max()
                .unwrap_or(0);
            let mine = match seen.counts.iter_mut().find(|(s, _)| *s == source) {
                Some((_, n)) => {
                    *n += 1;
                    *n
                }
                None => {
                    seen.counts.push((source, 1));
                    1
                }
            };
            return mine > others;
        }
        if self.seen.len() >= MAX_KEYS {
            if let Some((_, k)) = self.order.pop_front() {
                self.seen.remove(&k);
            }
        }
        self.seen.insert(
            key.clone(),
            Seen {
                first: now,
                counts: vec![(source, 1)],
            },
        );
        self.order.push_back((now, key));
        true
    }

    fn expire(&mut self, now: Instant) {
        while let Some((t, _)) = self.order.front() {
            if now.saturating_duration_since(*t) < self.window {
                break;
            }
            if let Some((t, k)) = self.order.pop_front() {
                if self.seen.get(&k).is_some_and(|s| s.first == t) {
                    self.seen.remove(&k);
                }
            }
        }
    }

    /// Keys remembered now.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

type SuppressKey = (
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

struct Window {
    opened: Instant,
    length: Duration,
    count: u64,
    first_id: String,
    first_time: Option<String>,
    last_time: Option<String>,
    last: Option<Finding>,
    paths: BTreeSet<String>,
}

impl Window {
    /// The summary finding, when the window held repeats.
    fn summary(self) -> Option<Finding> {
        let mut f = self.last?;
        let repeats = self.count - 1;
        let mut h = Sha256::new();
        h.update(b"auditwatch.suppressed\0");
        h.update(self.first_id.as_bytes());
        h.update([0]);
        h.update(f.id.as_bytes());
        h.update([0]);
        h.update(self.count.to_string().as_bytes());
        f.id = hex::encode(h.finalize());
        f.detail.insert(
            "suppression".into(),
            serde_json::json!({
                "count": self.count,
                "repeats": repeats,
                "first_time": self.first_time,
                "last_time": self.last_time,
                "window_seconds": self.length.as_secs_f64(),
                "paths": self.paths,
                "first_id": self.first_id,
            }),
        );
        Some(f)
    }
}

/// Collapses identical findings (see the module docs).
pub struct Suppressor {
    cfg: SuppressConfig,
    open: HashMap<SuppressKey, Window>,
    /// Summaries of windows closed early (memory bound), returned by the next [`Suppressor::expire`].
    ready: Vec<Finding>,
    /// Findings held (not passed on) so far.
    pub held: u64,
}

impl Suppressor {
    pub fn new(cfg: SuppressConfig) -> Suppressor {
        Suppressor {
            cfg,
            open: HashMap::new(),
            ready: Vec::new(),
            held: 0,
        }
    }

    /// New settings; open windows are closed first (their summaries are returned).
    pub fn reconfigure(&mut self, cfg: SuppressConfig) -> Vec<Finding> {
        let out = self.flush();
        self.cfg = cfg;
        out
    }

    /// True when `f` is to be passed on now; false when it is held for a summary.
    pub fn offer(&mut self, f: &Finding, now: Instant) -> bool {
        let Some(length) = self.cfg.window_for(&f.rule) else {
            return true;
        };
        let key = (
            f.rule.clone(),
            f.actor.display_name.clone(),
            f.actor.entity_id.clone(),
            f.actor.remote_address.clone(),
            f.actor.accessor.clone(),
        );
        if let Some(w) = self.open.get_mut(&key) {
            if now.saturating_duration_since(w.opened) < w.length {
                w.count += 1;
                w.last_time = f.time.clone();
                if let Some(p) = &f.path {
                    if w.paths.len() < MAX_PATHS {
                        w.paths.insert(p.clone());
                    }
                }
                w.last = Some(f.clone());
                self.held += 1;
                return false;
            }
            // Its time is over: report it and open a new window with this finding.
            if let Some(old) = self.open.remove(&key) {
                self.ready.extend(old.summary());
            }
        }
        if self.open.len() >= MAX_KEYS {
            self.close_oldest(MAX_KEYS / 8);
        }
        self.open.insert(
            key,
            Window {
                opened: now,
                length,
                count: 1,
                first_id: f.id.clone(),
                first_time: f.time.clone(),
                last_time: f.time.clone(),
                last: None,
                paths: f.path.iter().cloned().collect(),
            },
        );
        true
    }

    fn close_oldest(&mut self, n: usize) {
        let mut by_age: Vec<(Instant, SuppressKey)> = self
            .open
            .iter()
            .map(|(k, w)| (w.opened, k.clone()))
            .collect();
        by_age.sort_by_key(|(t, _)| *t);
        for (_, k) in by_age.into_iter().take(n) {
            if let Some(w) = self.open.remove(&k) {
                self.ready.extend(w.summary());
            }
        }
    }

    /// Summaries of the windows that ended by `now` (call about once a second).
    pub fn expire(&mut self, now: Instant) -> Vec<Finding> {
        let mut out = std::mem::take(&mut self.ready);
        let due: Vec<SuppressKey> = self
            .open
            .iter()
            .filter(|(_, w)| now.saturating_duration_since(w.opened) >= w.length)
            .map(|(k, _)| k.clone())
            .collect();
        for k in due {
            if let Some(w) = self.open.remove(&k) {
                out.extend(w.summary());
            }
        }
        out
    }

    /// Closes every window now (shutdown, reload) and returns the summaries.
    pub fn flush(&mut self) -> Vec<Finding> {
        let mut out = std::mem::take(&mut self.ready);
        let mut windows: Vec<Window> = self.open.drain().map(|(_, w)| w).collect();
        windows.sort_by_key(|w| w.opened);
        out.extend(windows.into_iter().filter_map(Window::summary));
        out
    }

    /// Windows open now.
    pub fn open_windows(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RuleSuppress;
    use crate::finding::{Actor, Severity, SourceKind, SourceRef};

    fn finding(rule: &str, rid: &str, path: &str, who: &str, time: &str) -> Finding {
        Finding {
            id: format!("{rule}/{rid}/{time}/{who}"),
            rule: rule.into(),
            category: "failed_login".into(),
            severity: Severity::Medium,
            title: "t".into(),
            time: Some(time.into()),
            entry_type: Some("response".into()),
            request_id: Some(rid.into()),
            operation: Some("update".into()),
            path: Some(path.into()),
            namespace: "root".into(),
            actor: Actor {
                remote_address: Some(who.into()),
                ..Actor::default()
            },
            source: SourceRef {
                kind: SourceKind::Tcp,
                name: "peer".into(),
                line: 1,
                offset: 0,
            },
            detail: serde_json::Map::new(),
        }
    }

    #[test]
    fn merge_drops_the_second_source_within_the_window() {
        let t0 = Instant::now();
        let mut m = Merger::new(Duration::from_secs(10));
        let a = finding("r", "req-1", "p", "1.2.3.4", "t1");
        let mut b = a.clone();
        b.id = "other-device".into();
        b.source.kind = SourceKind::File;
        assert!(m.admit(&a, 0, t0));
        assert!(!m.admit(&b, 1, t0 + Duration::from_secs(2)));
        let mut resp = a.clone();
        resp.entry_type = Some("request".into());
        assert!(m.admit(&resp, 0, t0), "request and response are two events");
        let mut other_rule = a.clone();
        other_rule.rule = "r2".into();
        assert!(m.admit(&other_rule, 0, t0));
        assert!(m.admit(&b, 1, t0 + Duration::from_secs(11)), "window over");
        let mut off = Merger::new(Duration::ZERO);
        assert!(off.admit(&a, 0, t0) && off.admit(&a, 1, t0));
    }

    #[test]
    fn merge_counts_entries_without_request_id_per_source() {
        let t0 = Instant::now();
        let mut m = Merger::new(Duration::from_secs(10));
        let mut e = finding("r", "", "sys/mounts/secret", "a", "t");
        e.request_id = None;
        // two distinct entries with the same key, seen by both sources in any order
        assert!(m.admit(&e, 0, t0), "socket: first");
        assert!(!m.admit(&e, 1, t0), "file: the same event");
        assert!(m.admit(&e, 1, t0), "file: a second event, first seen here");
        assert!(!m.admit(&e, 0, t0), "socket: the second event again");
        assert!(m.admit(&e, 0, t0), "socket: a third one");
        // one source alone is never merged with itself
        let mut solo = Merger::new(Duration::from_secs(10));
        assert!(solo.admit(&e, 3, t0) && solo.admit(&e, 3, t0));
    }

    #[test]
    fn merge_memory_is_bounded() {
        let t0 = Instant::now();
        let mut m = Merger::new(Duration::from_secs(3600));
        for i in 0..MAX_KEYS + 10 {
            assert!(m.admit(&finding("r", &i.to_string(), "p", "a", "t"), 0, t0));
        }
        assert_eq!(m.len(), MAX_KEYS);
    }

    fn cfg(window: u64, rules: &[(&str, RuleSuppress)]) -> SuppressConfig {
        SuppressConfig {
            window: Duration::from_secs(window),
            all: false,
            rules: rules.iter().map(|(r, s)| (r.to_string(), *s)).collect(),
        }
    }

    #[test]
    fn repeats_collapse_into_one_summary() {
        let t0 = Instant::now();
        let w = Duration::from_secs(60);
        let mut s = Suppressor::new(cfg(60, &[("login.failed", RuleSuppress::Window(w))]));
        let f1 = finding(
            "login.failed",
            "a",
            "auth/userpass/login/bob",
            "10.0.0.1",
            "T1",
        );
        let f2 = finding(
            "login.failed",
            "b",
            "auth/userpass/login/bob",
            "10.0.0.1",
            "T2",
        );
        let f3 = finding(
            "login.failed",
            "c",
            "auth/userpass/login/eve",
            "10.0.0.1",
            "T3",
        );
        let other_actor = finding("login.failed", "d", "auth/x", "10.9.9.9", "T4");
        let other_rule = finding("acl.permission_denied", "e", "x", "10.0.0.1", "T5");
        assert!(s.offer(&f1, t0), "the first is reported at once");
        assert!(!s.offer(&f2, t0 + Duration::from_secs(1)));
        assert!(!s.offer(&f3, t0 + Duration::from_secs(2)));
        assert!(s.offer(&other_actor, t0 + Duration::from_secs(2)));
        assert!(
            s.offer(&other_rule, t0 + Duration::from_secs(2)),
            "rule off"
        );
        assert!(s.expire(t0 + Duration::from_secs(59)).is_empty());
        let out = s.expire(t0 + Duration::from_secs(60));
        assert_eq!(out.len(), 1, "one summary; the other actor had no repeat");
        let sum = &out[0];
        assert_eq!(sum.rule, "login.failed");
        let d = &sum.detail["suppression"];
        assert_eq!(d["count"], 3);
        assert_eq!(d["repeats"], 2);
        assert_eq!(d["first_time"], "T1");
        assert_eq!(d["last_time"], "T3");
        assert_eq!(d["first_id"], f1.id);
        assert_eq!(
            d["paths"],
            serde_json::json!(["auth/userpass/login/bob", "auth/userpass/login/eve"])
        );
        assert_eq!(sum.request_id.as_deref(), Some("c"), "the last repeat");
        assert_eq!(sum.id.len(), 64);
        assert_ne!(sum.id, f3.id);
        assert_eq!(s.held, 2);
        // a new window starts with a finding reported at once
        assert!(s.offer(&f2, t0 + Duration::from_secs(61)));
        assert!(s.flush().is_empty(), "no repeats in the new window");
    }

    #[test]
    fn a_late_repeat_closes_the_old_window_and_opens_a_new_one() {
        let t0 = Instant::now();
        let mut s = Suppressor::new(cfg(
            10,
            &[("r*", RuleSuppress::Window(Duration::from_secs(10)))],
        ));
        let f = finding("rx", "a", "p", "h", "T");
        assert!(s.offer(&f, t0));
        assert!(!s.offer(&f, t0 + Duration::from_secs(5)));
        // the ticker has not run yet; the next one after the window is reported at once
        assert!(s.offer(&f, t0 + Duration::from_secs(12)));
        let out = s.expire(t0 + Duration::from_secs(12));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].detail["suppression"]["count"], 2);
    }

    #[test]
    fn reconfigure_flushes() {
        let t0 = Instant::now();
        let mut s = Suppressor::new(cfg(
            60,
            &[("r", RuleSuppress::Window(Duration::from_secs(60)))],
        ));
        let f = finding("r", "a", "p", "h", "T");
        assert!(s.offer(&f, t0));
        assert!(!s.offer(&f, t0));
        let out = s.reconfigure(SuppressConfig::off());
        assert_eq!(out.len(), 1);
        assert!(s.offer(&f, t0) && s.offer(&f, t0), "off now");
    }
}
