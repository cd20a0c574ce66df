//! # auditwatch
//!
//! Watches the audit stream of HashiCorp Vault and OpenBao and reports, at
//! once, when someone touches the keys to the kingdom: root tokens created or
//! used, privileged `sys/` endpoints, failed and brute-forced logins.
//!
//! ## The pipeline
//!
//! ```text
//! tcp / unix / udp connections ─┐  (read continuously, never wait on analysis)
//! file tailer ──────────────────┤
//! replay files (.log .gz .zst) ─┘
//!             │  framing::Framer → pooled Blocks of complete lines (zero copy)
//!             ▼
//!    archive ── the raw bytes first (byte-for-byte fallback copy)
//!             ▼
//!    analyze::Analyzer ×N ── prefilter → parse::AuditEntry<'a> → rules → Hit
//!             ▼
//!    engine::Judge ── stream order: lines, offsets, throttles, windows,
//!             │         request/response correlation (correlate), Stats → Finding
//!             ▼
//!    output / sinks
//! ```
//!
//! ## Reading order
//! 1. [`framing`]: newline framing, oversize lines, pooled blocks.
//! 2. [`parse`]: the borrowed entry view and raw-JSON helpers.
//! 3. [`rules`]: the rule format, conditions, the literal prefilter;
//!    [`watchlist`]: known HMACs of one audit device, bound into the rules
//!    of the streams that device writes.
//! 4. [`analyze`] and [`engine`]: stateless matching, then ordered judging;
//!    [`correlate`]: request findings wait (bounded) for their response.
//! 5. [`replay`]: the offline mode.
//! 6. [`listen`] and [`pipeline`]: the live mode and its never-block
//!    pipeline; [`archive`]: the byte-for-byte fallback copy.
//! 7. [`tail`]: following a file across logrotate (file identity,
//!    checkpoints riding on pipeline markers).
//! 8. [`finding`] and [`output`]: what is reported and how it is written.
//! 9. [`sink`]: delivering findings (stdout, files, webhooks, syslog) with
//!    queues, retries and an on-disk spool.
//!
//! ## When a queue is full
//! | edge | when full |
//! |---|---|
//! | replay reader → analysis workers | block (files wait on disk) |
//! | analysis workers → collector | block (the collector never waits on them) |
//! | socket connection → ingest | retry ≤ 5 ms, then shed and count; reading never stops |
//! | archive stage → analysis | shed analysis and count it (the bytes are archived) |
//! | analysis → judge → output | block (backs up into analysis shedding, never into Vault) |
//! | request findings held for their response | at 65,536 the oldest is reported at once (counted) |

pub mod analyze;
pub mod app;
pub mod archive;
pub mod config;
pub mod correlate;
pub mod engine;
pub mod finding;
pub mod framing;
pub mod listen;
pub mod metrics;
pub mod output;
pub mod parse;
pub mod pipeline;
pub mod replay;
pub mod rules;
pub mod sink;
pub mod suppress;
pub mod tail;
pub mod watchlist;
