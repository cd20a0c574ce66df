//! `auditwatch replay`: offline forensics over archived logs.
//!
//! ```text
//! reader threads (one per input at a time: plain, .gz, .zst, stdin)
//!     │  Framer → pooled blocks of complete lines (no copy)
//!     ▼  bounded crossbeam channel (block when full: replay can wait)
//! analysis workers ×N  (prefilter → parse → rules)
//!     │  BlockResult (hits + counts, no line bytes)
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

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::analyze::{Analyzer, BlockResult};
use crate::engine::{Judge, StreamPos};
use crate::finding::{Finding, SourceKind};
use crate::framing::{Block, BufPool, FrameKind, Framer, Tail, DEFAULT_READ_SIZE};
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

enum Job {
    Block {
        input: usize,
        seq: u64,
        offset: u64,
        block: Block,
        tail: bool,
    },
}

enum Msg {
    Analysed {
        offset: u64,
        result: BlockResult,
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
    /// The input is done; nothing with a higher seq follows.
    End,
}

struct Envelope {
    input: usize,
    seq: u64,
    msg: Msg,
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
    let workers = opts.threads.max(1);
    let readers = inputs.len().clamp(1, workers);
    let pool = BufPool::new(opts.read_size, workers * 4 + readers * 2);
    let (job_tx, job_rx) = bounded::<Job>(workers * 2);
    let (msg_tx, msg_rx) = bounded::<Envelope>(1024);
    let analyzer = Analyzer::new(rules.clone(), opts.strict, opts.max_line);
    let next_input = Arc::new(AtomicUsize::new(0));
    let inputs_arc: Arc<Vec<Input>> = Arc::new(inputs.to_vec());

    let mut handles = Vec::new();
    for _ in 0..workers {
        let rx = job_rx.clone();
        let tx = msg_tx.clone();
        let analyzer = analyzer.clone();
        handles.push(std::thread::spawn(move || worker(rx, tx, analyzer)));
    }
    drop(job_rx);
    for _ in 0..readers {
        let job_tx = job_tx.clone();
        let msg_tx = msg_tx.clone();
        let pool = pool.clone();
        let next_input = next_input.clone();
        let inputs = inputs_arc.clone();
        let max_line = opts.max_line;
        handles.push(std::thread::spawn(move || loop {
            let i = next_input.fetch_add(1, Ordering::Relaxed);
            let Some(input) = inputs.get(i) else { break };
            read_input(i, input, &pool, max_line, &job_tx, &msg_tx);
        }));
    }
    drop(job_tx);
    drop(msg_tx);

    let mut judge = Judge::new(rules);
    let outcome = collect(
        inputs,
        msg_rx,
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

fn worker(rx: Receiver<Job>, tx: Sender<Envelope>, analyzer: Analyzer) {
    for job in rx {
        let Job::Block {
            input,
            seq,
            offset,
            block,
            tail,
        } = job;
        let result = analyzer.scan_block(&block);
        drop(block);
        if tx
            .send(Envelope {
                input,
                seq,
                msg: Msg::Analysed {
                    offset,
                    result,
                    tail,
                },
            })
            .is_err()
        {
            return;
        }
    }
}

fn read_input(
    idx: usize,
    input: &Input,
    pool: &BufPool,
    max_line: usize,
    jobs: &Sender<Job>,
    msgs: &Sender<Envelope>,
) {
    let mut seq = 0u64;
    let send_msg = |seq: &mut u64, msg: Msg| {
        let _ = msgs.send(Envelope {
            input: idx,
            seq: *seq,
            msg,
        });
        *seq += 1;
    };
    let raw: io::Result<Box<dyn Read + Send>> = match input {
        Input::Stdin => Ok(Box::new(io::stdin())),
        Input::File(p) => File::open(p).map(|f| Box::new(f) as Box<dyn Read + Send>),
    };
    let mut reader = match raw.and_then(open_decoded) {
        Ok(r) => r,
        Err(e) => {
            send_msg(
                &mut seq,
                Msg::ReadError {
                    offset: 0,
                    message: format!("cannot open: {e}"),
                },
            );
            send_msg(&mut seq, Msg::End);
            return;
        }
    };
    let mut framer = Framer::new(pool.clone(), max_line);
    loop {
        let n = match reader.read(framer.spare()) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let offset = framer.stream_position();
                send_msg(
                    &mut seq,
                    Msg::ReadError {
                        offset,
                        message: format!("read failed after {offset} bytes (decompressed): {e}"),
                    },
                );
                break;
            }
        };
        framer.commit(n);
        while let Some(frame) = framer.next_frame() {
            match frame.kind {
                FrameKind::Lines => {
                    let job = Job::Block {
                        input: idx,
                        seq,
                        offset: frame.offset,
                        block: frame.data,
                        tail: false,
                    };
                    seq += 1;
                    if jobs.send(job).is_err() {
                        return;
                    }
                }
                FrameKind::Oversize {
                    line_offset,
                    done: true,
                    total,
                } => send_msg(&mut seq, Msg::Oversize { line_offset, total }),
                FrameKind::Oversize { .. } => {}
            }
        }
    }
    match framer.finish() {
        Some(Tail::Fragment { offset, data }) => {
            let job = Job::Block {
                input: idx,
                seq,
                offset,
                block: data,
                tail: true,
            };
            seq += 1;
            let _ = jobs.send(job);
        }
        Some(Tail::Oversize { line_offset, total }) => {
            send_msg(&mut seq, Msg::Oversize { line_offset, total })
        }
        None => {}
    }
    send_msg(&mut seq, Msg::End);
}

fn collect(
    inputs: &[Input],
    rx: Receiver<Envelope>,
    judge: &mut Judge,
    progress: bool,
    max_line: usize,
    start: Instant,
    emit: &mut dyn FnMut(&Finding) -> io::Result<()>,
) -> io::Result<Vec<String>> {
    let mut pending: Vec<BTreeMap<u64, Msg>> = (0..inputs.len()).map(|_| BTreeMap::new()).collect();
    let mut next_seq = vec![0u64; inputs.len()];
    let mut current = 0usize;
    let mut failed = Vec::new();
    let mut pos = inputs.first().map(stream_pos);
    let mut last_progress = Instant::now();
    let mut write_err: Option<io::Error> = None;

    for env in rx {
        pending[env.input].insert(env.seq, env.msg);
        // Process everything that is now in order.
        while current < inputs.len() {
            let Some(msg) = pending[current].remove(&next_seq[current]) else {
                break;
            };
            next_seq[current] += 1;
            let p = pos.as_mut().expect("position of current input");
            match msg {
                Msg::Analysed {
                    offset,
                    result,
                    tail,
                } => {
                    judge.block(p, offset, result, tail, &mut |f| {
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
                    failed.push(p.name.clone());
                }
                Msg::End => {
                    current += 1;
                    pos = inputs.get(current).map(stream_pos);
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
                current.min(inputs.len()),
                inputs.len()
            );
            let _ = io::stderr().flush();
        }
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
