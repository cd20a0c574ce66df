//! `auditwatch listen`: the target of Vault's socket audit device.
//!
//! Vault writes every audit device synchronously inside each request, so a
//! reader that stalls makes Vault stall (up to the device's `write_timeout`,
//! 2 s by default). Every connection task here therefore only reads, frames
//! and hands frames on with `try_send` ([`crate::pipeline::send_ingest`]);
//! nothing downstream can make it wait more than a few milliseconds.
//!
//! Connections: TCP, unix stream and UDP, any number of addresses. Each
//! connection is framed on its own; at EOF or reset an unterminated tail is a
//! *fragment*: counted, never parsed, never archived (Vault re-sends that entry
//! whole on its next connection). Hostile clients: memory per connection is
//! bounded by the maximum line size; a connection that holds a partial line, or
//! never sent a complete entry, for longer than `idle_timeout` is closed, but a
//! connection that has delivered entries is never closed for being quiet
//! (Vault's next write into a closed socket is lost silently); beyond
//! `max_connections` the oldest never-productive connection is evicted, or the
//! new one refused; `EMFILE` backs off instead of spinning.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use crossbeam_channel::Sender;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

use crate::analyze::ErrorKind;
use crate::engine::LocatedError;
use crate::finding::SourceKind;
use crate::framing::{Block, BufPool, FrameKind, Framer, Tail};
use crate::pipeline::{send_ingest, Counters, Ingest, SourceInfo};

/// Per-connection read buffer (grows only for a long line).
pub const CONN_READ_SIZE: usize = 64 << 10;
/// How long a shutting-down connection keeps reading what is already sent.
const DRAIN_WAIT: Duration = Duration::from_millis(200);

#[derive(Debug, Clone)]
pub struct ListenConfig {
    pub tcp: Vec<SocketAddr>,
    pub unix: Vec<PathBuf>,
    pub udp: Vec<SocketAddr>,
    pub max_line: usize,
    pub max_connections: usize,
    pub idle_timeout: Duration,
    /// Vault's optional `prefix`, stripped before parsing (the archive keeps it).
    pub strip_prefix: Option<String>,
}

/// The bound listeners, ready to serve.
pub struct Listeners {
    tcp: Vec<tokio::net::TcpListener>,
    unix: Vec<(tokio::net::UnixListener, PathBuf)>,
    udp: Vec<tokio::net::UdpSocket>,
    /// What was bound, for the start-up message (`tcp 127.0.0.1:9090`).
    pub bound: Vec<String>,
    /// Receive buffer the kernel granted each UDP socket.
    pub udp_rcvbuf: Vec<usize>,
}

/// Binds everything (start-up errors name the address).
pub async fn bind(cfg: &ListenConfig) -> Result<Listeners> {
    let mut l = Listeners {
        tcp: Vec::new(),
        unix: Vec::new(),
        udp: Vec::new(),
        bound: Vec::new(),
        udp_rcvbuf: Vec::new(),
    };
    for addr in &cfg.tcp {
        warn_if_exposed(addr);
        let sock = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on tcp {addr}"))?;
        l.bound.push(format!("tcp {}", sock.local_addr()?));
        l.tcp.push(sock);
    }
    for path in &cfg.unix {
        let sock = bind_unix(path)?;
        l.bound.push(format!("unix {}", path.display()));
        l.unix.push((sock, path.clone()));
    }
    for addr in &cfg.udp {
        warn_if_exposed(addr);
        let s = socket2::Socket::new(
            socket2::Domain::for_address(*addr),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        // Bursts must wait in the kernel, not be dropped: ask for 8 MiB
        // (the kernel caps it at net.core.rmem_max).
        let _ = s.set_recv_buffer_size(8 << 20);
        s.set_nonblocking(true)?;
        s.bind(&(*addr).into())
            .with_context(|| format!("cannot listen on udp {addr}"))?;
        l.udp_rcvbuf.push(s.recv_buffer_size().unwrap_or(0));
        let std_sock: std::net::UdpSocket = s.into();
        let sock = tokio::net::UdpSocket::from_std(std_sock)?;
        l.bound.push(format!("udp {}", sock.local_addr()?));
        l.udp.push(sock);
    }
    if l.bound.is_empty() {
        bail!("no listener configured");
    }
    Ok(l)
}

fn warn_if_exposed(addr: &SocketAddr) {
    if !addr.ip().is_loopback() {
        tracing::warn!(
            %addr,
            "listening on a non-loopback address: audit entries (and whoever can connect) reach it from the network"
        );
        eprintln!("auditwatch listen: warning: {addr} is not a loopback address");
    }
}

/// Binds a unix socket, removing a stale socket file but never anything else.
fn bind_unix(path: &Path) -> Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!(
                    "unix socket {} is in use by another process",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
        }
        Ok(_) => bail!(
            "{} exists and is not a socket: refusing to replace it",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", path.display())),
    }
    let sock = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("cannot listen on unix {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("cannot set mode 0660 on {}", path.display()))?;
    Ok(sock)
}

/// Live connections, for the connection limit.
#[derive(Default)]
struct Registry {
    conns: Mutex<HashMap<u64, ConnHandle>>,
}

struct ConnHandle {
    started: Instant,
    productive: Arc<AtomicBool>,
    evict: Arc<Notify>,
    /// Told to go; no longer counts against the limit.
    evicted: bool,
}

impl Registry {
    /// Registers a new connection, making room first: `None` when it must
    /// be refused. Done in the accept loop, before the task runs, so the
    /// count is exact however fast connections arrive.
    fn admit(
        &self,
        id: u64,
        max: usize,
        counters: &Counters,
    ) -> Option<(Arc<AtomicBool>, Arc<Notify>)> {
        let mut conns = self.conns.lock().expect("registry lock");
        let live = conns.values().filter(|c| !c.evicted).count();
        if live >= max {
            // Evict the oldest connection that never delivered an entry.
            let victim = conns
                .values_mut()
                .filter(|c| !c.evicted && !c.productive.load(Ordering::Relaxed))
                .min_by_key(|c| c.started);
            match victim {
                Some(c) => {
                    c.evicted = true;
                    c.evict.notify_one();
                    Counters::add(&counters.connections_evicted, 1);
                }
                None => {
                    Counters::add(&counters.connections_refused, 1);
                    return None;
                }
            }
        }
        let productive = Arc::new(AtomicBool::new(false));
        let evict = Arc::new(Notify::new());
        conns.insert(
            id,
            ConnHandle {
                started: Instant::now(),
                productive: productive.clone(),
                evict: evict.clone(),
                evicted: false,
            },
        );
        Some((productive, evict))
    }
}

/// Shared by every listener task.
struct Ctx {
    cfg: ListenConfig,
    ingest: Sender<Ingest>,
    counters: Arc<Counters>,
    pool: BufPool,
    registry: Registry,
    next_id: AtomicU64,
    shutdown: watch::Receiver<bool>,
}

/// Serves until `shutdown` turns true, then drains every connection and
/// returns once all of them have handed their last frame to the pipeline.
pub async fn serve(
    listeners: Listeners,
    cfg: ListenConfig,
    ingest: Sender<Ingest>,
    counters: Arc<Counters>,
    shutdown: watch::Receiver<bool>,
) {
    let ctx = Arc::new(Ctx {
        cfg,
        ingest,
        counters,
        pool: BufPool::new(CONN_READ_SIZE, 256),
        registry: Registry::default(),
        next_id: AtomicU64::new(1),
        shutdown,
    });
    let mut tasks = JoinSet::new();
    for l in listeners.tcp {
        let ctx = ctx.clone();
        let l = Arc::new(l);
        tasks.spawn(async move {
            accept_loop(
                ctx,
                move || {
                    let l = l.clone();
                    async move { l.accept().await.map(|(s, peer)| (s, peer.to_string())) }
                },
                SourceKind::Tcp,
            )
            .await
        });
    }
    for (l, path) in listeners.unix {
        let ctx = ctx.clone();
        let l = Arc::new(l);
        tasks.spawn(async move {
            let name = path.display().to_string();
            accept_loop(
                ctx,
                move || {
                    let l = l.clone();
                    let name = name.clone();
                    async move {
                        l.accept().await.map(|(s, peer)| {
                            let who = peer
                                .as_pathname()
                                .map(|p| p.display().to_string())
                                .unwrap_or_else(|| name.clone());
                            (s, who)
                        })
                    }
                },
                SourceKind::Unix,
            )
            .await;
            let _ = std::fs::remove_file(&path);
        });
    }
    for sock in listeners.udp {
        let ctx = ctx.clone();
        tasks.spawn(async move { udp_loop(ctx, sock).await });
    }
    while tasks.join_next().await.is_some() {}
}

async fn accept_loop<S, F, Fut>(ctx: Arc<Ctx>, accept: F, kind: SourceKind)
where
    S: AsyncRead + Unpin + Send + 'static,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<(S, String)>>,
{
    let mut shutdown = ctx.shutdown.clone();
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            r = accept() => match r {
                Ok((stream, peer)) => {
                    Counters::add(&ctx.counters.connections_total, 1);
                    let id = ctx.next_id.fetch_add(1, Ordering::Relaxed);
                    let Some((productive, evict)) = ctx.registry.admit(id, ctx.cfg.max_connections, &ctx.counters) else {
                        drop(stream);
                        continue;
                    };
                    let ctx2 = ctx.clone();
                    conns.spawn(async move { serve_conn(ctx2, stream, peer, kind, id, productive, evict).await });
                }
                Err(e) => {
                    Counters::add(&ctx.counters.accept_errors, 1);
                    // Out of descriptors: back off instead of spinning.
                    let pause = match e.raw_os_error() {
                        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM) => 100,
                        _ => 10,
                    };
                    tracing::warn!("accept failed: {e}; retrying in {pause} ms");
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
            }
        }
    }
    while conns.join_next().await.is_some() {}
}

async fn serve_conn<S: AsyncRead + Unpin>(
    ctx: Arc<Ctx>,
    mut stream: S,
    peer: String,
    kind: SourceKind,
    id: u64,
    productive: Arc<AtomicBool>,
    evict: Arc<Notify>,
) {
    let source = Arc::new(SourceInfo {
        id,
        kind,
        name: peer,
    });
    let started = Instant::now();
    Counters::add(&ctx.counters.connections_open, 1);
    let mut framer = Framer::new(ctx.pool.clone(), ctx.cfg.max_line);
    let mut shutdown = ctx.shutdown.clone();
    // Since when a partial line (or nothing complete yet) has been waiting.
    let mut waiting_since = started;
    let mut draining = *shutdown.borrow();
    loop {
        let idle = !productive.load(Ordering::Relaxed) || framer.pending() > 0;
        let deadline = if draining {
            tokio::time::Instant::now() + DRAIN_WAIT
        } else if idle {
            tokio::time::Instant::from_std(waiting_since + ctx.cfg.idle_timeout)
        } else {
            tokio::time::Instant::now() + Duration::from_secs(86_400)
        };
        let n = tokio::select! {
            r = stream.read(framer.spare()) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            _ = tokio::time::sleep_until(deadline) => {
                if draining {
                    break;
                }
                if idle {
                    Counters::add(&ctx.counters.connections_timed_out, 1);
                    tracing::info!(peer = %source.name, "closing a connection idle with no complete entry");
                    break;
                }
                continue;
            }
            _ = evict.notified() => {
                tracing::info!(peer = %source.name, "evicted: connection limit reached and this connection never sent an entry");
                break;
            }
            _ = shutdown.changed(), if !draining => {
                draining = true;
                continue;
            }
        };
        Counters::add(&ctx.counters.bytes_received, n as u64);
        framer.commit(n);
        let had_pending = framer.pending();
        while let Some(frame) = framer.next_frame() {
            let msg = match frame.kind {
                FrameKind::Lines => {
                    productive.store(true, Ordering::Relaxed);
                    Ingest::Lines {
                        source: source.clone(),
                        lines: memchr::memchr_iter(b'\n', &frame.data).count() as u64,
                        block: frame.data,
                        offset: frame.offset,
                    }
                }
                FrameKind::Oversize {
                    line_offset, done, ..
                } => {
                    if done {
                        productive.store(true, Ordering::Relaxed);
                    }
                    Ingest::Oversize {
                        source: source.clone(),
                        piece: frame.data,
                        line_offset,
                        done,
                    }
                }
            };
            send_ingest(&ctx.ingest, msg, &ctx.counters).await;
        }
        if framer.pending() == 0 || framer.pending() < had_pending {
            // Progress: the wait for the next complete entry starts now.
            waiting_since = Instant::now();
        }
    }
    match framer.finish() {
        Some(Tail::Fragment { offset, data }) => {
            note_fragment(&ctx.counters, &source, offset, &data)
        }
        Some(Tail::Oversize { total, .. }) => {
            // Its pieces went to the archive stage's spool; `Closed` discards them.
            Counters::add(&ctx.counters.fragments, 1);
            Counters::add(&ctx.counters.fragment_bytes, total);
        }
        None => {}
    }
    send_ingest(&ctx.ingest, Ingest::Closed { source }, &ctx.counters).await;
    ctx.registry
        .conns
        .lock()
        .expect("registry lock")
        .remove(&id);
    ctx.counters
        .connections_open
        .fetch_sub(1, Ordering::Relaxed);
}

fn note_fragment(counters: &Counters, source: &SourceInfo, offset: u64, data: &[u8]) {
    Counters::add(&counters.fragments, 1);
    Counters::add(&counters.fragment_bytes, data.len() as u64);
    counters.error(LocatedError {
        kind: ErrorKind::Truncated,
        source: source.name.clone(),
        line: 0,
        offset,
        message: format!(
            "connection ended inside an entry: {} byte fragment dropped (Vault re-sends it whole)",
            data.len()
        ),
    });
}

/// One datagram per entry; a datagram without its final newline was cut.
async fn udp_loop(ctx: Arc<Ctx>, sock: tokio::net::UdpSocket) {
    let mut shutdown = ctx.shutdown.clone();
    let mut buf = vec![0u8; 65_536];
    let mut peers: HashMap<SocketAddr, (Arc<SourceInfo>, u64)> = HashMap::new();
    loop {
        let (n, peer) = tokio::select! {
            _ = shutdown.changed() => break,
            r = sock.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("udp receive failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        Counters::add(&ctx.counters.udp_datagrams, 1);
        Counters::add(&ctx.counters.bytes_received, n as u64);
        if peers.len() >= 4096 && !peers.contains_key(&peer) {
            // Bounded per-peer state whatever spoofed sources send.
            peers.clear();
        }
        let (source, offset) = peers
            .entry(peer)
            .or_insert_with(|| {
                let id = ctx.next_id.fetch_add(1, Ordering::Relaxed);
                (
                    Arc::new(SourceInfo {
                        id,
                        kind: SourceKind::Udp,
                        name: peer.to_string(),
                    }),
                    0,
                )
            })
            .clone();
        let data = &buf[..n];
        let end = memchr::memrchr(b'\n', data).map_or(0, |p| p + 1);
        if end > 0 {
            let block = Block::from_slice(&data[..end], &ctx.pool);
            send_ingest(
                &ctx.ingest,
                Ingest::Lines {
                    source: source.clone(),
                    lines: memchr::memchr_iter(b'\n', &block).count() as u64,
                    block,
                    offset,
                },
                &ctx.counters,
            )
            .await;
        }
        if end < n {
            Counters::add(&ctx.counters.udp_truncated, 1);
            ctx.counters.error(LocatedError {
                kind: ErrorKind::Truncated,
                source: source.name.clone(),
                line: 0,
                offset: offset + end as u64,
                message: format!(
                    "datagram of {n} bytes does not end in a newline: truncated entry dropped"
                ),
            });
        }
        if let Some(p) = peers.get_mut(&peer) {
            p.1 += n as u64;
        }
    }
}
