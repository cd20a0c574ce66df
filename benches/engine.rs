//! Criterion benches for the engine's stages, on the real OpenBao capture
//! (`tests/data/openbao/scenarios.log`) repeated to a few MiB:
//! framing, parsing (serde_json borrowed vs simd-json), prefilter and rules.
//!
//! `cargo bench --bench engine` (long); CI only builds it (`cargo bench --no-run`).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use auditwatch::analyze::Analyzer;
use auditwatch::framing::{lines, trim_line, BufPool, FrameKind, Framer};
use auditwatch::parse::{self, AuditEntry};
use auditwatch::rules::RuleSet;

fn corpus() -> Vec<u8> {
    let one = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/openbao/scenarios.log"
    ))
    .expect("tests/data/openbao/scenarios.log");
    let mut out = Vec::with_capacity(8 << 20);
    while out.len() < (8 << 20) {
        out.extend_from_slice(&one);
    }
    out
}

fn framing(c: &mut Criterion) {
    let data = corpus();
    let mut g = c.benchmark_group("framing");
    g.throughput(Throughput::Bytes(data.len() as u64));
    for read in [64 << 10, 1 << 20] {
        g.bench_with_input(BenchmarkId::new("framer_lines", read), &read, |b, &read| {
            let pool = BufPool::new(read, 8);
            b.iter(|| {
                let mut framer = Framer::new(pool.clone(), 16 << 20);
                let mut pos = 0;
                let mut n = 0usize;
                while pos < data.len() {
                    let spare = framer.spare();
                    let k = spare.len().min(data.len() - pos);
                    spare[..k].copy_from_slice(&data[pos..pos + k]);
                    framer.commit(k);
                    pos += k;
                    while let Some(f) = framer.next_frame() {
                        if f.kind == FrameKind::Lines {
                            n += lines(&f.data).count();
                        }
                    }
                }
                black_box(n)
            })
        });
    }
    g.finish();
}

fn parsing(c: &mut Criterion) {
    let data = corpus();
    let all: Vec<&[u8]> = lines(&data)
        .map(|(_, l)| trim_line(l))
        .filter(|l| !l.is_empty())
        .collect();
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("serde_json_borrowed", |b| {
        b.iter(|| {
            let mut ok = 0usize;
            for l in &all {
                if let Ok(e) = parse::parse_line(l) {
                    ok += e.request.is_some() as usize;
                }
            }
            black_box(ok)
        })
    });
    g.bench_function("simd_json_borrowed", |b| {
        // simd-json parses in place: it needs a mutable copy of every line.
        let mut scratch = Vec::new();
        b.iter(|| {
            let mut ok = 0usize;
            for l in &all {
                scratch.clear();
                scratch.extend_from_slice(l);
                if let Ok(e) = simd_json::serde::from_slice::<AuditEntry<'_>>(&mut scratch) {
                    ok += e.request.is_some() as usize;
                }
            }
            black_box(ok)
        })
    });
    g.finish();
}

fn rules(c: &mut Criterion) {
    let data = corpus();
    let set = Arc::new(RuleSet::builtin().expect("built-in rules"));
    let mut g = c.benchmark_group("analyze");
    g.throughput(Throughput::Bytes(data.len() as u64));
    for strict in [false, true] {
        let a = Analyzer::new(set.clone(), strict, 16 << 20);
        let name = if strict {
            "every_line_parsed"
        } else {
            "prefiltered"
        };
        g.bench_function(name, |b| {
            b.iter(|| black_box(a.scan_block(&data).hits.len()))
        });
    }
    g.bench_function("prefilter_only", |b| {
        b.iter(|| {
            let mut pos = 0;
            let mut n = 0usize;
            let mut scanner = set.scanner(&data);
            while let Some(p) = scanner.next(pos) {
                n += 1;
                pos = p + memchr::memchr(b'\n', &data[p..]).map_or(data.len() - p, |x| x + 1);
            }
            black_box(n)
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(std::time::Duration::from_secs(3));
    targets = framing, parsing, rules
}
criterion_main!(benches);
