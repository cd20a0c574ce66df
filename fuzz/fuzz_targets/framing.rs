#![no_main]
//! Model check of `auditwatch::framing::Framer`.
//!
//! The input is split into reads at fuzzer-chosen sizes and driven through a
//! framer exactly like the unit test `frame_all` in `src/framing.rs`. What
//! the framer reports must equal what a trivial splitter computes on the
//! whole input at once, and the bytes it hands out (Lines frames, Oversize
//! pieces, the tail fragment) concatenated must be the input, byte for byte
//! (the fallback archive stores exactly those bytes).
//!
//! Input layout (read with `arbitrary::Unstructured`, missing bytes read as 0;
//! `make_seeds.py` writes seeds in this layout):
//!
//! | bytes | meaning |
//! |---|---|
//! | 2, u16 LE | `max_line` = 1 + v % 4096 |
//! | 2, u16 LE | buffer size for `BufPool::new(size, 4)` = 16 + v % 8177 (16..=8192) |
//! | 1 | flags: bit 0 keep every frame alive until the end (no buffer reuse), bit 1 a start offset follows |
//! | 4, u32 LE | start offset for `set_start_offset` (only with flag bit 1) |
//! | 1 | number of read sizes n = v % 33 (0: one read as large as `spare()` allows) |
//! | 2·n, u16 LE | read sizes, each 1 + v, used in turn |
//! | rest | the stream |

use arbitrary::{Result, Unstructured};
use auditwatch::framing::{lines, BufPool, Frame, FrameKind, Framer, Tail};
use libfuzzer_sys::fuzz_target;

/// Everything a framer reports, flattened to comparable values (as in
/// `frame_all`). `Line` bytes include the `\n`; `total` counts it too.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Line(u64, Vec<u8>),
    Oversize { line_offset: u64, total: u64 },
    Fragment(u64, Vec<u8>),
}

#[derive(Debug)]
struct Config {
    max_line: usize,
    buf_size: usize,
    keep_frames: bool,
    start: u64,
    reads: Vec<usize>,
}

fn config(u: &mut Unstructured<'_>) -> Result<Config> {
    let max_line = 1 + usize::from(u16::from_le_bytes(u.arbitrary()?)) % 4096;
    let buf_size = 16 + usize::from(u16::from_le_bytes(u.arbitrary()?)) % (8192 - 16 + 1);
    let flags: u8 = u.arbitrary()?;
    let start = if flags & 2 != 0 {
        u64::from(u32::from_le_bytes(u.arbitrary()?))
    } else {
        0
    };
    let n = usize::from(u.arbitrary::<u8>()?) % 33;
    let mut reads = Vec::with_capacity(n);
    for _ in 0..n {
        reads.push(1 + usize::from(u16::from_le_bytes(u.arbitrary()?)));
    }
    Ok(Config {
        max_line,
        buf_size,
        keep_frames: flags & 1 != 0,
        start,
        reads,
    })
}

/// The reference: split the whole input at once.
fn reference(input: &[u8], max_line: usize, start: u64) -> Vec<Seen> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < input.len() {
        let offset = start + pos as u64;
        match input[pos..].iter().position(|&b| b == b'\n') {
            Some(p) => {
                let line = &input[pos..pos + p + 1];
                if p > max_line {
                    out.push(Seen::Oversize {
                        line_offset: offset,
                        total: line.len() as u64,
                    });
                } else {
                    out.push(Seen::Line(offset, line.to_vec()));
                }
                pos += p + 1;
            }
            None => {
                let rest = &input[pos..];
                if rest.len() > max_line {
                    // Spec: `max_line + 1` bytes without a newline make a line oversize.
                    out.push(Seen::Oversize {
                        line_offset: offset,
                        total: rest.len() as u64,
                    });
                } else {
                    out.push(Seen::Fragment(offset, rest.to_vec()));
                }
                pos = input.len();
            }
        }
    }
    out
}

/// Checks each frame as it comes and records what it reports.
struct Checker {
    max_line: usize,
    /// Stream offset of the next byte to be handed out.
    next_offset: u64,
    /// Every byte handed out, in order.
    handed: Vec<u8>,
    seen: Vec<Seen>,
    /// An oversize line in progress: (line_offset, total so far).
    open: Option<(u64, u64)>,
}

impl Checker {
    fn frame(&mut self, f: &Frame) {
        let data: &[u8] = &f.data;
        assert!(!data.is_empty(), "empty frame {:?}", f.kind);
        assert_eq!(f.offset, self.next_offset, "frames not contiguous");
        self.next_offset += data.len() as u64;
        self.handed.extend_from_slice(data);
        match f.kind {
            FrameKind::Lines => {
                assert!(self.open.is_none(), "Lines frame inside an oversize line");
                assert_eq!(
                    data.last(),
                    Some(&b'\n'),
                    "Lines frame does not end in a newline (a fragment emitted as a line)"
                );
                for (s, l) in lines(data) {
                    assert_eq!(l.last(), Some(&b'\n'));
                    let line_offset = f.offset + s as u64;
                    if l.len() - 1 > self.max_line {
                        // Consumers apply the maximum to whole lines too.
                        self.seen.push(Seen::Oversize {
                            line_offset,
                            total: l.len() as u64,
                        });
                    } else {
                        self.seen.push(Seen::Line(line_offset, l.to_vec()));
                    }
                }
            }
            FrameKind::Oversize {
                line_offset,
                done,
                total,
            } => {
                match self.open {
                    Some((lo, so_far)) => {
                        assert_eq!(line_offset, lo, "oversize piece of another line");
                        assert_eq!(total, so_far + data.len() as u64, "oversize total");
                    }
                    None => {
                        assert_eq!(line_offset, f.offset, "first oversize piece offset");
                        assert_eq!(total, data.len() as u64, "first oversize piece total");
                        assert!(
                            data.len() > self.max_line,
                            "line declared oversize after {} bytes, max {}",
                            data.len(),
                            self.max_line
                        );
                    }
                }
                let newlines = data.iter().filter(|&&b| b == b'\n').count();
                if done {
                    assert_eq!(newlines, 1, "last oversize piece holds {newlines} newlines");
                    assert_eq!(data.last(), Some(&b'\n'), "last oversize piece");
                    self.seen.push(Seen::Oversize { line_offset, total });
                    self.open = None;
                } else {
                    assert_eq!(newlines, 0, "oversize piece holds a newline");
                    self.open = Some((line_offset, total));
                }
            }
        }
    }
}

fn run(cfg: &Config, input: &[u8]) {
    let pool = BufPool::new(cfg.buf_size, 4);
    let mut framer = Framer::new(pool, cfg.max_line);
    if cfg.start != 0 {
        framer.set_start_offset(cfg.start);
    }
    let mut ck = Checker {
        max_line: cfg.max_line,
        next_offset: cfg.start,
        handed: Vec::with_capacity(input.len()),
        seen: Vec::new(),
        open: None,
    };
    let mut kept: Vec<Frame> = Vec::new();
    let mut pos = 0;
    let mut read_idx = 0;
    while pos < input.len() {
        let want = if cfg.reads.is_empty() {
            usize::MAX
        } else {
            cfg.reads[read_idx % cfg.reads.len()]
        };
        read_idx += 1;
        let spare = framer.spare();
        assert!(!spare.is_empty(), "spare() is empty");
        let n = spare.len().min(want).min(input.len() - pos);
        spare[..n].copy_from_slice(&input[pos..pos + n]);
        framer.commit(n);
        pos += n;
        assert_eq!(framer.stream_position(), cfg.start + pos as u64);
        while let Some(f) = framer.next_frame() {
            ck.frame(&f);
            if cfg.keep_frames {
                kept.push(f);
            }
        }
        // Memory stays bounded by max_line plus one read.
        assert!(
            framer.pending() <= cfg.max_line.max(cfg.buf_size),
            "{} bytes pending (max_line {}, buffer {})",
            framer.pending(),
            cfg.max_line,
            cfg.buf_size
        );
    }
    match framer.finish() {
        Some(Tail::Fragment { offset, data }) => {
            assert!(ck.open.is_none(), "fragment tail inside an oversize line");
            assert_eq!(offset, ck.next_offset, "tail fragment offset");
            assert!(!data.is_empty(), "empty tail fragment");
            assert!(!data.contains(&b'\n'), "tail fragment holds a newline");
            ck.next_offset += data.len() as u64;
            ck.handed.extend_from_slice(&data);
            ck.seen.push(Seen::Fragment(offset, data.to_vec()));
        }
        Some(Tail::Oversize {
            line_offset,
            total,
            data,
        }) => {
            let (lo, so_far) = ck
                .open
                .take()
                .expect("oversize tail without an open oversize line");
            assert_eq!(line_offset, lo, "oversize tail offset");
            assert_eq!(total, so_far + data.len() as u64, "oversize tail total");
            ck.handed.extend_from_slice(&data);
            ck.seen.push(Seen::Oversize { line_offset, total });
        }
        None => assert!(
            ck.open.is_none(),
            "open oversize line not reported at the end"
        ),
    }
    assert_eq!(framer.stream_position(), cfg.start + input.len() as u64);

    assert_eq!(
        ck.seen,
        reference(input, cfg.max_line, cfg.start),
        "framer disagrees with the reference splitter ({cfg:?})"
    );
    // Nothing lost or duplicated: the archive stores exactly these bytes.
    let expected = input;
    if ck.handed != expected {
        let at = ck
            .handed
            .iter()
            .zip(expected)
            .position(|(a, b)| a != b)
            .unwrap_or(ck.handed.len().min(expected.len()));
        panic!(
            "bytes handed out differ from the input: {} handed, {} expected, first difference at {at} ({cfg:?})",
            ck.handed.len(),
            expected.len()
        );
    }
    // Frames kept alive until now were not overwritten through the pool.
    if cfg.keep_frames {
        for f in &kept {
            let at = (f.offset - cfg.start) as usize;
            assert_eq!(
                &f.data[..],
                &input[at..at + f.data.len()],
                "kept frame changed"
            );
        }
    }
}

fuzz_target!(|bytes: &[u8]| {
    let mut u = Unstructured::new(bytes);
    let Ok(cfg) = config(&mut u) else { return };
    let input = u.take_rest();
    run(&cfg, input);
});
