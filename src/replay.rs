//! `auditwatch replay`: offline forensics over archived logs.
//!
//! ```text
//! reader threads (one per input at a time: plain, .gz, .zst, stdin)
//!     │  Framer → pooled blocks of complete lines (no copy)
//!     ▼  bounded crossbeam channel (block when full: replay can wait)
//! analysis workers ×N  (prefilter → parse → rules)
//!     │  BlockResult (hits + counts; the line bytes of deferred and gated hits only)
//!     ▼
//! collector (this thread): reorders by (input, block), Judge, output
//! ```
//! Several inputs are read in parallel and one large input is split across
//! every worker; the collector restores order, so findings of one input come
//! in file order and inputs in the order given. Memory stays bounded: a few
//! blocks in flight per worker plus the longest line.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver};

use crate::analyze::{Analyzer, BlockResult};
use crate::engine::{Judge, StreamPos};
use crate::finding::{Finding, SourceKind};
use crate::framing::{BufPool, FrameKind, Framer, Tail, DEFAULT_READ_SIZE};
use crate::rules::RuleSet;

/// One thing to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Stdin,
    File(PathBuf),
}

impl Input {
    pub fn name(&self) -> String {
        match self {
            Input::Stdin => "-".into(),
            Input::File(p) => p.display().to_string(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ReplayOptions {
    pub max_line: usize,
    pub read_size: usize,
    /// Analysis worker threads (≥ 1).
    pub threads: usize,
    /// Parse every line, not only prefilter candidates.
    pub strict: bool,
    /// Show a progress line on stderr.
    pub progress: bool,
    /// Map settled plain files into memory instead of reading them.
    pub mmap: bool,
    /// How long a request's finding waits for its response (entry time);
    /// zero: one finding per entry. See [`crate::correlate`].
    pub correlate_wait: Duration,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions {
            max_line: crate::framing::DEFAULT_MAX_LINE,
            read_size: DEFAULT_READ_SIZE,
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            strict: false,
            progress: false,
            mmap: true,
            correlate_wait: crate::correlate::DEFAULT_WAIT,
        }
    }
}

/// Expands the command-line paths: directories recursively (sorted),
/// `-` for stdin. Paths that do not exist are returned as errors, in order.
pub fn expand_inputs(args: &[String]) -> (Vec<Input>, Vec<(String, String)>) {
    let mut inputs = Vec::new();
    let mut errors = Vec::new();
    for a in args {
        if a == "-" {
            inputs.push(Input::Stdin);
            continue;
        }
        let p = Path::new(a);
        match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => match walk(p) {
                Ok(files) => inputs.extend(files.into_iter().map(Input::File)),
                Err(e) => errors.push((a.clone(), e.to_string())),
            },
            Ok(_) => inputs.push(Input::File(p.to_path_buf())),
            Err(e) => errors.push((a.clone(), e.to_string())),
        }
    }
    (inputs, errors)
}

fn walk(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let ft = e.file_type()?;
        if ft.is_dir() {
            out.extend(walk(&e.path())?);
        } else if ft.is_file() || ft.is_symlink() && e.path().is_file() {
            out.push(e.path());
        }
    }
    Ok(out)
}

/// Compression detected by magic bytes, not by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

pub fn detect(magic: &[u8]) -> Compression {
    if magic.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// Opens a reader that yields the decompressed bytes of `raw`.
pub fn open_decoded(mut raw: Box<dyn Read + Send>) -> io::Result<Box<dyn Read + Send>> {
    let mut magic = [0u8; 4];
    let mut got = 0;
    while got < magic.len() {
        match raw.read(&mut magic[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let head = io::Cursor::new(magic[..got].to_vec());
    let joined = head.chain(raw);
    Ok(match detect(&magic[..got]) {
        Compression::None => Box::new(joined),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(
            io::BufReader::with_capacity(1 << 16, joined),
        )),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(joined)?),
    })
}

/// A piece of work for one thread: a whole input, or a byte range of a
/// large plain file (it owns the lines that *start* inside the range).
#[derive(Debug, Clone)]
struct Unit {
    input: usize,
    range: Option<(u64, u64)>,
    /// The last unit of its input (reports the unterminated tail).
    last: bool,
}

/// Plain files at least this large are split across threads.
pub const SPLIT_MIN: u64 = 32 << 20;

fn plan_units(inputs: &[Input], threads: usize) -> Vec<Unit> {
    let mut units = Vec::new();
    for (i, input) in inputs.iter().enumerate() {
        let size = match input {
            Input::File(p) if threads > 1 => plain_file_size(p),
            _ => None,
        };
        match size {
            Some(size) if size >= SPLIT_MIN => {
                let parts = (threads as u64).min(size / (SPLIT_MIN / 2)).max(1);
                let step = size.div_ceil(parts);
                for k in 0..parts {
                    let from = k * step;
                    let to = ((k + 1) * step).min(size);
                    units.push(Unit {
                        input: i,
                        range: Some((from, if k + 1 == parts { u64::MAX } else { to })),
                        last: k + 1 == parts,
                    });
                }
            }
            _ => units.push(Unit {
                input: i,
                range: None,
                last: true,
            }),
        }
    }
    units
}

/// The size of a regular, uncompressed file (only those can be split).
fn plain_file_size(p: &Path) -> Option<u64> {
    let meta = std::fs::metadata(p).ok()?;
    if !meta.is_file() {
        return None;
    }
    let mut magic = [0u8; 4];
    let n = File::open(p).ok()?.read(&mut magic).ok()?;
    (detect(&magic[..n]) == Compression::None).then_some(meta.len())
}

enum Msg {
    Analysed {
        offset: u64,
        result: Box<BlockResult>,
        tail: bool,
    },
    Oversize {
        line_offset: u64,
        total: u64,
    },
    ReadError {
        offset: u64,
        message: String,
    },
    /// The unit is done; nothing with a higher seq follows.
    End,
}

struct Envelope {
    unit: usize,
    seq: u64,
    msg: Msg,
}

impl Msg {
    /// About the heap bytes the message holds (see [`BlockResult::held_bytes`]).
    fn held_bytes(&self) -> usize {
        match self {
            Msg::Analysed { result, .. } => result.held_bytes(),
            _ => 0,
        }
    }
}

/// Results the collector holds for units after its current one wait until it gets there. On
/// a log where most lines are hits (a flood of failed logins), or where many lines are kept
/// for lazy triggers, that could be half a file's results: past [`AHEAD_BYTES_MAX`] bytes
/// of results sent and not yet judged, the workers on later units pause. The worker on the
/// collector's current unit never waits.
#[derive(Default)]
struct Ahead {
    /// The collector's current unit.
    current: AtomicUsize,
    /// Bytes of results sent and not yet judged.
    bytes: AtomicUsize,
}

const AHEAD_BYTES_MAX: usize = 64 << 20;

impl Ahead {
    fn wait_for_room(&self, unit: usize) {
        while unit > self.current.load(Ordering::Acquire)
            && self.bytes.load(Ordering::Relaxed) > AHEAD_BYTES_MAX
        {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// What a replay did.
pub struct ReplayOutcome {
    pub stats: crate::engine::Stats,
    pub elapsed: Duration,
    /// Inputs that could not be read to their end.
    pub failed_inputs: Vec<String>,
}

/// Replays `inputs`, calling `emit` for each finding in order.
pub fn replay(
    inputs: &[Input],
    rules: Arc<RuleSet>,
    opts: &ReplayOptions,
    emit: &mut dyn FnMut(&Finding) -> io::Result<()>,
) -> io::Result<ReplayOutcome> {
    let start = Instant::now();
    let threads = opts.threads.max(1);
    let units = Arc::new(plan_units(inputs, threads));
    let pool = BufPool::new(opts.read_size, threads * 4);
    // A few results per thread: results wait here only while the collector
    // catches up, and bounding them bounds memory.
    let (msg_tx, msg_rx) = bounded::<Envelope>(threads * 8);
    let analyzer = Analyzer::new(rules.clone(), opts.strict, opts.max_line)
        .with_correlation(!opts.correlate_wait.is_zero());
    let ahead = Arc::new(Ahead::default());
    let next_unit = Arc::new(AtomicUsize::new(0));
    let inputs_arc: Arc<Vec<Input>> = Arc::new(inputs.to_vec());

    // Each thread reads and analyses its unit inline: no hand-off, and the
    // kernel's copy into our buffers is spread over every core too.
    let mut handles = Vec::new();
    for _ in 0..threads.min(units.len().max(1)) {
        let msg_tx = msg_tx.clone();
        let pool = pool.clone();
        let next_unit = next_unit.clone();
        let inputs = inputs_arc.clone();
        let units = units.clone();
        let analyzer = analyzer.clone();
        let ahead = ahead.clone();
        let max_line = opts.max_line;
        let (mmap, chunk) = (opts.mmap, opts.read_size);
        handles.push(std::thread::spawn(move || loop {
            let u = next_unit.fetch_add(1, Ordering::Relaxed);
            let Some(unit) = units.get(u) else { break };
            let mut send = |seq: u64, msg: Msg| {
                ahead.wait_for_room(u);
                ahead.bytes.fetch_add(msg.held_bytes(), Ordering::Relaxed);
                msg_tx.send(Envelope { unit: u, seq, msg }).is_ok()
            };
            let input = &inputs[unit.input];
            if mmap {
                if let Some(map) = settled_map(input) {
                    scan_mapped(unit, &map, chunk, &analyzer, &mut send);
                    continue;
                }
            }
            read_unit(unit, input, &pool, max_line, &analyzer, &mut send);
        }));
    }
    drop(msg_tx);

    let mut judge = Judge::new(rules);
    judge.set_correlation(opts.correlate_wait, false);
    let outcome = collect(
        inputs,
        &units,
        msg_rx,
        &ahead,
        &mut judge,
        opts.progress,
        opts.max_line,
        start,
        emit,
    );
    for h in handles {
        let _ = h.join();
    }
    let failed_inputs = outcome?;
    Ok(ReplayOutcome {
        stats: judge.stats,
        elapsed: start.elapsed(),
        failed_inputs,
    })
}

/// Files modified this recently may still be written (a live audit.log):
/// they are read, never mapped.
pub const SETTLED: Duration = Duration::from_secs(10);

/// Maps a plain, regular file that has not changed for [`SETTLED`].
/// Mapping skips the kernel's copy into our buffers (40% of the CPU time of
/// a replay); like ripgrep's, it assumes the file is not truncated while
/// mapped, hence only settled archives, and `--no-mmap` turns it off.
fn settled_map(input: &Input) -> Option<memmap2::Mmap> {
    let Input::File(p) = input else { return None };
    let file = File::open(p).ok()?;
    let meta = file.metadata().ok()?;
    let age = meta.modified().ok()?.elapsed().unwrap_or_default();
    if !meta.is_file() || meta.len() == 0 || age < SETTLED {
        return None;
    }
    // SAFETY: the map is read-only and private to this process. The one
    // hazard is another process truncating or rewriting the file while it is
    // mapped (SIGBUS, or bytes changing under a shared slice); only files
    // unmodified for `SETTLED` (archives, rotated logs) are mapped, and the
    // hazard is documented with the `--no-mmap` switch. Exercised by every
    // replay test on the capture files.
    let map = unsafe { memmap2::Mmap::map(&file) }.ok()?;
    if detect(&map[..map.len().min(4)]) != Compression::None {
        return None;
    }
    let _ = map.advise(memmap2::Advice::Sequential);
    Some(map)
}

/// Analyses a mapped unit in chunks of about `chunk` bytes, each ending at a
/// line end; the unit owns the lines that start inside its range.
fn scan_mapped(
    unit: &Unit,
    map: &memmap2::Mmap,
    chunk: usize,
    analyzer: &Analyzer,
    send: &mut dyn FnMut(u64, Msg) -> bool,
) {
    let data: &[u8] = map;
    let len = data.len();
    // Pages already analysed are released as we go, so the resident set
    // stays a few chunks whatever the file size.
    let page = 4096usize;
    let mut released = 0usize;
    let (from, to) = unit.range.unwrap_or((0, u64::MAX));
    let from = (from as usize).min(len);
    let to = usize::try_from(to).unwrap_or(usize::MAX).min(len);
    let begin = if from == 0 || data[from - 1] == b'\n' {
        from
    } else {
        memchr::memchr(b'\n', &data[from..]).map_or(len, |i| from + i + 1)
    };
    // Up to the end of the line that holds the range's last byte.
    let region_end = if to >= len || to == 0 {
        len
    } else {
        memchr::memchr(b'\n', &data[to - 1..]).map_or(len, |i| to + i)
    };
    let mut seq = 0u64;
    let mut pos = begin;
    while pos < region_end {
        let target = (pos + chunk.max(1)).min(region_end);
        let cut = if target >= region_end {
            region_end
        } else {
            memchr::memchr(b'\n', &data[target..region_end]).map_or(region_end, |i| target + i + 1)
        };
        let block = &data[pos..cut];
        // Only the file's very end can lack its newline.
        let (whole, tail) = match block.last() {
            Some(b'\n') => (block, None),
            _ => {
                let split = memchr::memrchr(b'\n', block).map_or(0, |i| i + 1);
                (&block[..split], Some((pos + split, &block[split..])))
            }
        };
        if !whole.is_empty() {
            let msg = Msg::Analysed {
                offset: pos as u64,
                result: Box::new(analyzer.scan_block(whole)),
                tail: false,
            };
            if !send(seq, msg) {
                return;
            }
            seq += 1;
        }
        if let Some((at, rest)) = tail {
            if unit.last {
                let msg = Msg::Analysed {
                    offset: at as u64,
                    result: Box::new(analyzer.scan_block(rest)),
                    tail: true,
                };
                if !send(seq, msg) {
                    return;
                }
                seq += 1;
            }
        }
        pos = cut;
        let upto = pos / page * page;
        if upto > released {
            // SAFETY: a read-only private file map: DONTNEED only drops this
            // process's page table entries; touching the pages again would
            // fault the same file contents back in. Nothing below `pos` is
            // read again (analysis of those bytes is done), and no slice into
            // the range outlives this point.
            let _ = unsafe {
                map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    released,
                    upto - released,
                )
            };
            released = upto;
        }
    }
    send(seq, Msg::End);
}

/// Where a byte range's first line starts: `from` itself when the byte
/// before it is a newline, else just after the next newline.
fn first_line_start(f: &mut File, from: u64) -> io::Result<Option<u64>> {
    use std::io::{Seek, SeekFrom};
    if from == 0 {
        return Ok(Some(0));
    }
    f.seek(SeekFrom::Start(from - 1))?;
    let mut buf = vec![0u8; 64 << 10];
    let mut pos = from - 1;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(None);
        }
        if let Some(i) = memchr::memchr(b'\n', &buf[..n]) {
            return Ok(Some(pos + i as u64 + 1));
        }
        pos += n as u64;
    }
}

fn read_unit(
    unit: &Unit,
    input: &Input,
    pool: &BufPool,
    max_line: usize,
    analyzer: &Analyzer,
    send: &mut dyn FnMut(u64, Msg) -> bool,
) {
    let mut seq = 0u64;
    let mut put = |seq: &mut u64, msg: Msg| {
        let ok = send(*seq, msg);
        *seq += 1;
        ok
    };
    let (mut reader, begin, end): (Box<dyn Read + Send>, u64, u64) = match (input, unit.range) {
        (Input::File(p), Some((from, to))) => {
            let opened = File::open(p).and_then(|mut f| {
                let begin = first_line_start(&mut f, from)?;
                if let Some(b) = begin {
                    use std::io::{Seek, SeekFrom};
                    f.seek(SeekFrom::Start(b))?;
                }
                Ok((f, begin))
            });
            match opened {
                Ok((f, Some(b))) if b < to => (Box::new(f), b, to),
                // No line starts inside this range.
                Ok(_) => {
                    put(&mut seq, Msg::End);
                    return;
                }
                Err(e) => {
                    put(
                        &mut seq,
                        Msg::ReadError {
                            offset: from,
                            message: format!("cannot read: {e}"),
                        },
                    );
                    put(&mut seq, Msg::End);
                    return;
                }
            }
        }
        _ => {
            let raw: io::Result<Box<dyn Read + Send>> = match input {
                Input::Stdin => Ok(Box::new(io::stdin())),
                Input::File(p) => File::open(p).map(|f| Box::new(f) as Box<dyn Read + Send>),
            };
            match raw.and_then(open_decoded) {
                Ok(r) => (r, 0, u64::MAX),
                Err(e) => {
                    put(
                        &mut seq,
                        Msg::ReadError {
                            offset: 0,
                            message: format!("cannot open: {e}"),
                        },
                    );
                    put(&mut seq, Msg::End);
                    return;
                }
            }
        }
    };
    let mut framer = Framer::new(pool.clone(), max_line);
    framer.set_start_offset(begin);
    // Past `end` only the line already begun is ours: read up to its newline.
    let mut finishing = false;
    loop {
        let pos = framer.stream_position();
        if pos >= end && !framer.mid_line() {
            break;
        }
        let spare = framer.spare();
        let room = if pos < end {
            spare
                .len()
                .min(usize::try_from(end - pos).unwrap_or(usize::MAX))
        } else {
            finishing = true;
            spare.len().min(64 << 10)
        };
        let n = match reader.read(&mut spare[..room]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                put(
                    &mut seq,
                    Msg::ReadError {
                        offset: pos,
                        message: format!("read failed after {pos} bytes (decompressed): {e}"),
                    },
                );
                break;
            }
        };
        let n = if finishing {
            match memchr::memchr(b'\n', &spare[..n]) {
                Some(i) => i + 1,
                None => n,
            }
        } else {
            n
        };
        framer.commit(n);
        while let Some(frame) = framer.next_frame() {
            let msg = match frame.kind {
                FrameKind::Lines => {
                    let result = Box::new(analyzer.scan_block(&frame.data));
                    Msg::Analysed {
                        offset: frame.offset,
                        result,
                        tail: false,
                    }
                }
                FrameKind::Oversize {
                    line_offset,
                    done: true,
                    total,
                } => Msg::Oversize { line_offset, total },
                FrameKind::Oversize { .. } => continue,
            };
            if !put(&mut seq, msg) {
                return;
            }
        }
    }
    if !unit.last && framer.mid_line() {
        put(
            &mut seq,
            Msg::ReadError {
                offset: framer.stream_position(),
                message: "the file shrank while it was being read".into(),
            },
        );
    }
    if unit.last {
        match framer.finish() {
            Some(Tail::Fragment { offset, data }) => {
                let result = Box::new(analyzer.scan_block(&data));
                put(
                    &mut seq,
                    Msg::Analysed {
                        offset,
                        result,
                        tail: true,
                    },
                );
            }
            Some(Tail::Oversize {
                line_offset, total, ..
            }) => {
                put(&mut seq, Msg::Oversize { line_offset, total });
            }
            None => {}
        }
    }
    put(&mut seq, Msg::End);
}

#[allow(clippy::too_many_arguments)]
fn collect(
    inputs: &[Input],
    units: &[Unit],
    rx: Receiver<Envelope>,
    ahead: &Ahead,
    judge: &mut Judge,
    progress: bool,
    max_line: usize,
    start: Instant,
    emit: &mut dyn FnMut(&Finding) -> io::Result<()>,
) -> io::Result<Vec<String>> {
    let mut pending: Vec<BTreeMap<u64, Msg>> = (0..units.len()).map(|_| BTreeMap::new()).collect();
    let mut next_seq = vec![0u64; units.len()];
    let mut current = 0usize;
    let mut failed: Vec<String> = Vec::new();
    let mut pos = units.first().map(|u| stream_pos(&inputs[u.input]));
    let mut last_progress = Instant::now();
    let mut write_err: Option<io::Error> = None;

    for env in rx {
        pending[env.unit].insert(env.seq, env.msg);
        // Process everything that is now in order.
        while current < units.len() {
            let Some(msg) = pending[current].remove(&next_seq[current]) else {
                break;
            };
            next_seq[current] += 1;
            ahead.bytes.fetch_sub(msg.held_bytes(), Ordering::Relaxed);
            let p = pos.as_mut().expect("position of current input");
            match msg {
                Msg::Analysed {
                    offset,
                    result,
                    tail,
                } => {
                    judge.block(p, offset, *result, tail, &mut |f| {
                        if write_err.is_none() {
                            if let Err(e) = emit(&f) {
                                write_err = Some(e);
                            }
                        }
                    });
                }
                Msg::Oversize { line_offset, total } => {
                    judge.oversize(p, line_offset, total, max_line);
                }
                Msg::ReadError { offset, message } => {
                    judge.read_error(p, offset, message);
                    if failed.last() != Some(&p.name) {
                        failed.push(p.name.clone());
                    }
                }
                Msg::End => {
                    current += 1;
                    ahead.current.store(current, Ordering::Release);
                    // The next range of the same input carries on its line count.
                    let next_input = units.get(current).map(|u| u.input);
                    if next_input != Some(units[current - 1].input) {
                        // An input's findings all come before the next
                        // input's: its requests still waiting got no
                        // response in it.
                        judge.release_held(false, &mut |f| {
                            if write_err.is_none() {
                                if let Err(e) = emit(&f) {
                                    write_err = Some(e);
                                }
                            }
                        });
                    }
                    if let Some(u) = next_input {
                        if u != units[current - 1].input {
                            pos = Some(stream_pos(&inputs[u]));
                        }
                    }
                }
            }
        }
        if let Some(e) = write_err.take() {
            return Err(e);
        }
        if progress && last_progress.elapsed() > Duration::from_millis(200) {
            last_progress = Instant::now();
            let s = &judge.stats;
            let secs = start.elapsed().as_secs_f64().max(1e-9);
            eprint!(
                "\r{:>10.1} MB  {:>12} entries  {:>8.1} MB/s  {} findings  [{}/{} inputs]",
                s.bytes as f64 / 1e6,
                s.entries,
                s.bytes as f64 / 1e6 / secs,
                s.findings,
                units.get(current).map_or(inputs.len(), |u| u.input),
                inputs.len()
            );
            let _ = io::stderr().flush();
        }
    }
    // The log ended: requests still waiting got no response in it.
    judge.release_held(false, &mut |f| {
        if write_err.is_none() {
            if let Err(e) = emit(&f) {
                write_err = Some(e);
            }
        }
    });
    if let Some(e) = write_err.take() {
        return Err(e);
    }
    if progress {
        eprint!("\r\x1b[2K");
    }
    Ok(failed)
}

fn stream_pos(input: &Input) -> StreamPos {
    StreamPos {
        kind: match input {
            Input::Stdin => SourceKind::Stdin,
            Input::File(_) => SourceKind::File,
        },
        name: input.name(),
        lines_before: 0,
    }
}

/// Whether stderr is a terminal (for the progress line).
pub fn stderr_is_terminal() -> bool {
    io::stderr().is_terminal()
}
