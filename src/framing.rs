//! Newline framing over large reads, shared by every source.
//!
//! A [`Framer`] owns one read buffer. The caller reads into [`Framer::spare`],
//! reports the count with [`Framer::commit`], then drains [`Framer::next_frame`].
//! Frames are *owned* pooled buffers holding one or more complete lines, so a
//! block moves to an analysis thread without being copied: only the unfinished
//! tail of the read (part of one line) is copied into the next buffer.
//!
//! Lines longer than `max_line` (default 16 MiB) are never held whole: once
//! the buffer holds `max_line + 1` bytes without a newline the line is
//! *oversize*, and it is handed out in pieces ([`FrameKind::Oversize`]) so a
//! fallback archive can still store it byte for byte while analysis counts and
//! skips it. Memory per framer is therefore bounded by `max_line` plus one
//! read.
//!
//! A line that arrives whole within one buffer may still be longer than
//! `max_line`: consumers compare each line's length (the analyzer does), so
//! the outcome never depends on how the stream was split into reads.
//!
//! `\r\n` endings are left in the bytes (the archive must be byte-exact);
//! [`trim_line`] strips them for the parser.

use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

/// Default size of one read buffer: larger buffers measured no faster.
pub const DEFAULT_READ_SIZE: usize = 1 << 20;
/// Default maximum line length (real entries reach several MiB).
pub const DEFAULT_MAX_LINE: usize = 16 << 20;

/// A recycling pool of equally sized, zero-initialised buffers.
///
/// Blocks return their buffer here when dropped, so a steady stream
/// allocates nothing after warm-up.
#[derive(Clone)]
pub struct BufPool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    size: usize,
    tx: Sender<Vec<u8>>,
    rx: Receiver<Vec<u8>>,
}

impl BufPool {
    /// A pool of buffers of `size` bytes keeping at most `keep` idle ones.
    pub fn new(size: usize, keep: usize) -> Self {
        let (tx, rx) = crossbeam_channel::bounded(keep.max(1));
        BufPool {
            inner: Arc::new(PoolInner { size, tx, rx }),
        }
    }

    /// The size of a fresh buffer.
    pub fn size(&self) -> usize {
        self.inner.size
    }

    fn get(&self) -> Vec<u8> {
        match self.inner.rx.try_recv() {
            Ok(buf) => buf,
            Err(_) => vec![0; self.inner.size],
        }
    }

    fn put(&self, mut buf: Vec<u8>) {
        // A buffer grown for a huge line goes back to its normal size so an
        // idle pool never pins megabytes.
        if buf.len() != self.inner.size {
            if buf.len() > self.inner.size * 2 {
                return;
            }
            buf.resize(self.inner.size, 0);
        }
        let _ = self.inner.tx.try_send(buf);
    }
}

/// Bytes handed out by a [`Framer`]; the buffer returns to its pool on drop.
pub struct Block {
    buf: Vec<u8>,
    len: usize,
    pool: BufPool,
}

impl Block {
    /// A block holding a copy of `bytes` (tests, single lines, small inputs).
    pub fn from_slice(bytes: &[u8], pool: &BufPool) -> Block {
        let mut buf = pool.get();
        if buf.len() < bytes.len() {
            buf.resize(bytes.len(), 0);
        }
        buf[..bytes.len()].copy_from_slice(bytes);
        Block {
            buf,
            len: bytes.len(),
            pool: pool.clone(),
        }
    }
}

impl std::ops::Deref for Block {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        self.pool.put(buf);
    }
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Block({} bytes)", self.len)
    }
}

/// What a frame holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// One or more complete lines, each ending in `\n`.
    Lines,
    /// A piece of a line longer than the maximum. `line_offset` is where that
    /// line starts; `done` marks the last piece (it ends with `\n`); `total`
    /// is the line's length so far, this piece included.
    Oversize {
        line_offset: u64,
        done: bool,
        total: u64,
    },
}

/// A framed piece of the stream.
#[derive(Debug)]
pub struct Frame {
    pub data: Block,
    /// Stream offset of `data[0]`.
    pub offset: u64,
    pub kind: FrameKind,
}

/// The unterminated end of a stream (no final newline).
#[derive(Debug)]
pub enum Tail {
    /// Bytes after the last newline: a fragment, or a final line whose
    /// newline was never written.
    Fragment { offset: u64, data: Block },
    /// An oversize line that never ended: `data` holds its last bytes (the
    /// earlier pieces were handed out as frames), `total` its whole length.
    Oversize {
        line_offset: u64,
        total: u64,
        data: Block,
    },
}

/// Splits a byte stream into complete lines. See the module docs.
pub struct Framer {
    pool: BufPool,
    buf: Vec<u8>,
    filled: usize,
    /// `buf[..scanned]` holds no newline (saves rescans of a growing line).
    scanned: usize,
    /// Stream offset of `buf[0]`.
    offset: u64,
    max_line: usize,
    oversize: Option<(u64, u64)>,
}

impl Framer {
    pub fn new(pool: BufPool, max_line: usize) -> Self {
        let buf = pool.get();
        Framer {
            pool,
            buf,
            filled: 0,
            scanned: 0,
            offset: 0,
            max_line: max_line.max(1),
            oversize: None,
        }
    }

    /// The maximum line length this framer keeps whole.
    pub fn max_line(&self) -> usize {
        self.max_line
    }

    /// Stream offset of the next byte to be read.
    pub fn stream_position(&self) -> u64 {
        self.offset + self.filled as u64
    }

    /// Start counting offsets from `offset` (resuming a file mid-way).
    /// Only valid before any byte was committed.
    pub fn set_start_offset(&mut self, offset: u64) {
        debug_assert_eq!(self.filled, 0);
        self.offset = offset;
    }

    /// Bytes buffered that do not yet form a complete line.
    pub fn pending(&self) -> usize {
        self.filled
    }

    /// Whether the stream is inside a line: bytes pending, or an oversize
    /// line whose pieces were handed out but whose newline has not come.
    pub fn mid_line(&self) -> bool {
        self.filled > 0 || self.oversize.is_some()
    }

    /// Room to read into. Never empty: call [`Framer::next_frame`] until it
    /// returns `None` before reading again.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.filled == self.buf.len() {
            // Only reachable for a line still shorter than the maximum (a
            // full buffer is otherwise framed by next_frame): grow it.
            let want = (self.buf.len() * 2).min(self.max_line + 1);
            self.buf.resize(want.max(self.filled + 1), 0);
        }
        &mut self.buf[self.filled..]
    }

    /// Record that `n` bytes were read into [`Framer::spare`].
    pub fn commit(&mut self, n: usize) {
        assert!(self.filled + n <= self.buf.len(), "commit past spare");
        self.filled += n;
    }

    /// Takes the buffer up to `cut`, moving `buf[cut..filled]` to a fresh one.
    fn split_off(&mut self, cut: usize) -> (Block, u64) {
        let mut fresh = self.pool.get();
        let rest = self.filled - cut;
        if fresh.len() < rest + 1 {
            fresh.resize(rest + 1, 0);
        }
        fresh[..rest].copy_from_slice(&self.buf[cut..self.filled]);
        let old = std::mem::replace(&mut self.buf, fresh);
        let offset = self.offset;
        self.offset += cut as u64;
        self.filled = rest;
        self.scanned = 0;
        (
            Block {
                buf: old,
                len: cut,
                pool: self.pool.clone(),
            },
            offset,
        )
    }

    /// The next frame, or `None` when more input is needed.
    pub fn next_frame(&mut self) -> Option<Frame> {
        if let Some((line_offset, seen)) = self.oversize {
            if self.filled == 0 {
                return None;
            }
            let newline = memchr::memchr(b'\n', &self.buf[..self.filled]);
            let (cut, done) = match newline {
                Some(p) => (p + 1, true),
                // Hand out a piece only when the buffer is full, so small
                // reads do not make tiny pieces.
                None if self.filled == self.buf.len() => (self.filled, false),
                None => return None,
            };
            let total = seen + cut as u64;
            let (data, offset) = self.split_off(cut);
            self.oversize = if done {
                None
            } else {
                Some((line_offset, total))
            };
            return Some(Frame {
                data,
                offset,
                kind: FrameKind::Oversize {
                    line_offset,
                    done,
                    total,
                },
            });
        }

        if let Some(p) = memchr::memrchr(b'\n', &self.buf[self.scanned..self.filled]) {
            let cut = self.scanned + p + 1;
            let (data, offset) = self.split_off(cut);
            return Some(Frame {
                data,
                offset,
                kind: FrameKind::Lines,
            });
        }
        self.scanned = self.filled;
        if self.filled > self.max_line {
            // No newline within max_line + 1 bytes: the line is oversize.
            let line_offset = self.offset;
            let total = self.filled as u64;
            let (data, offset) = self.split_off(self.filled);
            self.oversize = Some((line_offset, total));
            return Some(Frame {
                data,
                offset,
                kind: FrameKind::Oversize {
                    line_offset,
                    done: false,
                    total,
                },
            });
        }
        None
    }

    /// At end of stream: whatever did not end in a newline.
    pub fn finish(&mut self) -> Option<Tail> {
        if let Some((line_offset, seen)) = self.oversize.take() {
            let total = seen + self.filled as u64;
            let filled = self.filled;
            let (data, _) = self.split_off(filled);
            return Some(Tail::Oversize {
                line_offset,
                total,
                data,
            });
        }
        if self.filled == 0 {
            return None;
        }
        let filled = self.filled;
        let (data, offset) = self.split_off(filled);
        Some(Tail::Fragment { offset, data })
    }
}

/// A line without its `\n` or `\r\n` ending.
#[inline]
pub fn trim_line(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Iterates the lines of a block as `(start, line)`, `line` including its
/// `\n` (the last one may lack it).
pub fn lines(block: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    let mut start = 0;
    std::iter::from_fn(move || {
        if start >= block.len() {
            return None;
        }
        let end = match memchr::memchr(b'\n', &block[start..]) {
            Some(p) => start + p + 1,
            None => block.len(),
        };
        let s = start;
        start = end;
        Some((s, &block[s..end]))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything a framer reports, flattened to comparable values.
    #[derive(Debug, PartialEq)]
    enum Seen {
        Line(u64, Vec<u8>),
        Oversize { line_offset: u64, total: u64 },
        Fragment(u64, Vec<u8>),
    }

    fn frame_all(input: &[u8], read: usize, max_line: usize, buf: usize) -> Vec<Seen> {
        let mut framer = Framer::new(BufPool::new(buf, 4), max_line);
        let mut out = Vec::new();
        let mut pos = 0;
        let drain = |framer: &mut Framer, out: &mut Vec<Seen>| {
            while let Some(f) = framer.next_frame() {
                match f.kind {
                    FrameKind::Lines => {
                        for (s, l) in lines(&f.data) {
                            let line_offset = f.offset + s as u64;
                            if l.len() - 1 > max_line {
                                // Consumers apply the maximum to whole lines too.
                                out.push(Seen::Oversize {
                                    line_offset,
                                    total: l.len() as u64,
                                });
                            } else {
                                out.push(Seen::Line(line_offset, l.to_vec()));
                            }
                        }
                    }
                    FrameKind::Oversize {
                        line_offset,
                        done: true,
                        total,
                    } => out.push(Seen::Oversize { line_offset, total }),
                    FrameKind::Oversize { .. } => {}
                }
            }
        };
        while pos < input.len() {
            let spare = framer.spare();
            let n = spare.len().min(read).min(input.len() - pos);
            spare[..n].copy_from_slice(&input[pos..pos + n]);
            framer.commit(n);
            pos += n;
            drain(&mut framer, &mut out);
        }
        match framer.finish() {
            Some(Tail::Fragment { offset, data }) => {
                out.push(Seen::Fragment(offset, data.to_vec()))
            }
            Some(Tail::Oversize {
                line_offset, total, ..
            }) => out.push(Seen::Oversize { line_offset, total }),
            None => {}
        }
        out
    }

    fn sample() -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(b"{\"a\":1}\n");
        v.extend_from_slice(b"{\"b\":2}\r\n");
        v.extend_from_slice(b"\n");
        v.extend(std::iter::repeat_n(b'x', 300));
        v.push(b'\n');
        v.extend(std::iter::repeat_n(b'y', 5000));
        v.push(b'\n');
        v.extend_from_slice(b"{\"c\":3}\n");
        v.extend(std::iter::repeat_n(b'z', 70));
        v.push(b'\n');
        v.extend_from_slice(b"tail-without-newline");
        v
    }

    #[test]
    fn identical_lines_and_offsets_for_any_read_size() {
        let input = sample();
        let reference = frame_all(&input, usize::MAX, 1 << 20, 1 << 16);
        for read in [1, 2, 7, 4096, 65536] {
            for buf in [64, 4096, 1 << 16] {
                assert_eq!(
                    frame_all(&input, read, 1 << 20, buf),
                    reference,
                    "read size {read}, buffer {buf}"
                );
            }
        }
        // Offsets are those of the input.
        for seen in &reference {
            if let Seen::Line(off, bytes) = seen {
                assert_eq!(
                    &input[*off as usize..*off as usize + bytes.len()],
                    &bytes[..]
                );
            }
        }
        assert!(
            matches!(reference.last(), Some(Seen::Fragment(_, b)) if b == b"tail-without-newline")
        );
    }

    #[test]
    fn oversize_lines_are_reported_and_skipped_with_same_result_for_any_read_size() {
        let input = sample();
        // max_line 100: the 300 x's and the 5000 y's are oversize.
        let reference = frame_all(&input, usize::MAX, 100, 64);
        let oversize: Vec<_> = reference
            .iter()
            .filter(|s| matches!(s, Seen::Oversize { .. }))
            .collect();
        assert_eq!(
            oversize,
            vec![
                &Seen::Oversize {
                    line_offset: 18,
                    total: 301
                },
                &Seen::Oversize {
                    line_offset: 319,
                    total: 5001
                }
            ]
        );
        for read in [1, 2, 7, 4096, 65536] {
            for buf in [64, 4096] {
                assert_eq!(
                    frame_all(&input, read, 100, buf),
                    reference,
                    "read {read} buf {buf}"
                );
            }
        }
        // The line right after an oversize one is intact.
        assert!(reference.contains(&Seen::Line(5320, b"{\"c\":3}\n".to_vec())));
    }

    #[test]
    fn line_of_exactly_max_length_is_kept() {
        let mut input = vec![b'a'; 100];
        input.push(b'\n');
        let seen = frame_all(&input, 7, 100, 16);
        assert_eq!(seen, vec![Seen::Line(0, input.clone())]);
        input.insert(0, b'a');
        let seen = frame_all(&input, 7, 100, 16);
        assert_eq!(
            seen,
            vec![Seen::Oversize {
                line_offset: 0,
                total: 102
            }]
        );
    }

    #[test]
    fn unterminated_oversize_tail() {
        let input = vec![b'q'; 1000];
        assert_eq!(
            frame_all(&input, 13, 100, 64),
            vec![Seen::Oversize {
                line_offset: 0,
                total: 1000
            }]
        );
    }

    /// Every byte is handed out exactly once, in order (an archive copies
    /// frames byte for byte), also when the stream ends inside an oversize
    /// line (found by fuzzing: its last bytes were lost).
    #[test]
    fn every_byte_is_handed_out_once() {
        let mut inputs = vec![sample(), b"abc".to_vec(), vec![b'q'; 1000]];
        inputs.push([sample(), vec![b'z'; 333]].concat());
        for input in &inputs {
            for read in [1, 2, 7, 4096] {
                for max_line in [1, 5, 100, 1 << 20] {
                    let mut framer = Framer::new(BufPool::new(16, 4), max_line);
                    let mut out = Vec::new();
                    for chunk in input.chunks(read) {
                        let mut rest = chunk;
                        while !rest.is_empty() {
                            let spare = framer.spare();
                            let n = spare.len().min(rest.len());
                            spare[..n].copy_from_slice(&rest[..n]);
                            framer.commit(n);
                            rest = &rest[n..];
                            while let Some(f) = framer.next_frame() {
                                assert_eq!(f.offset as usize, out.len());
                                out.extend_from_slice(&f.data);
                            }
                        }
                    }
                    match framer.finish() {
                        Some(Tail::Fragment { data, .. }) | Some(Tail::Oversize { data, .. }) => {
                            out.extend_from_slice(&data)
                        }
                        None => {}
                    }
                    assert_eq!(&out, input, "read {read}, max_line {max_line}");
                }
            }
        }
    }

    #[test]
    fn trim_line_strips_crlf() {
        assert_eq!(trim_line(b"{}\r\n"), b"{}");
        assert_eq!(trim_line(b"{}\n"), b"{}");
        assert_eq!(trim_line(b"{}"), b"{}");
    }
}
