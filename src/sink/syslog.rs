//! The `syslog` sink: RFC 5424 messages over UDP (RFC 5426), TCP with octet-counted framing
//! (RFC 6587), or unix sockets (datagram, like `/dev/log`, or stream). The message body is the
//! finding JSON, ASCII-only (see the module docs of [`crate::sink`]).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use super::net::{Failure, Transport};
use crate::finding::{Finding, Severity};

/// `type = "syslog"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogConfig {
    /// `udp` (default), `tcp`, `unix_datagram` or `unix_stream`.
    #[serde(default)]
    pub protocol: SyslogProtocol,
    /// `host:port` for udp and tcp, a socket path for unix.
    pub address: String,
    #[serde(default)]
    pub facility: Facility,
    /// APP-NAME (default `auditwatch`).
    #[serde(default = "default_app_name")]
    pub app_name: String,
    /// HOSTNAME (default: the machine's host name).
    #[serde(default)]
    pub hostname: Option<String>,
    /// Stream protocols: `octet_counting` (default) or `newline`.
    #[serde(default)]
    pub framing: Option<SyslogFraming>,
}

fn default_app_name() -> String {
    "auditwatch".into()
}

impl SyslogConfig {
    pub fn new(protocol: SyslogProtocol, address: impl Into<String>) -> SyslogConfig {
        SyslogConfig {
            protocol,
            address: address.into(),
            facility: Facility::default(),
            app_name: default_app_name(),
            hostname: None,
            framing: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyslogProtocol {
    #[default]
    Udp,
    Tcp,
    UnixDatagram,
    UnixStream,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyslogFraming {
    /// `LENGTH SP MESSAGE` (RFC 6587 3.4.1): any message size, any content.
    OctetCounting,
    /// `MESSAGE LF` (the message never contains a newline).
    Newline,
}

/// Syslog facilities (RFC 5424 6.2.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Facility {
    Kern,
    User,
    Mail,
    Daemon,
    #[default]
    Auth,
    Syslog,
    Lpr,
    News,
    Uucp,
    Cron,
    Authpriv,
    Ftp,
    Local0,
    Local1,
    Local2,
    Local3,
    Local4,
    Local5,
    Local6,
    Local7,
}

impl Facility {
    pub fn code(self) -> u8 {
        match self {
            Facility::Kern => 0,
            Facility::User => 1,
            Facility::Mail => 2,
            Facility::Daemon => 3,
            Facility::Auth => 4,
            Facility::Syslog => 5,
            Facility::Lpr => 6,
            Facility::News => 7,
            Facility::Uucp => 8,
            Facility::Cron => 9,
            Facility::Authpriv => 10,
            Facility::Ftp => 11,
            Facility::Local0 => 16,
            Facility::Local1 => 17,
            Facility::Local2 => 18,
            Facility::Local3 => 19,
            Facility::Local4 => 20,
            Facility::Local5 => 21,
            Facility::Local6 => 22,
            Facility::Local7 => 23,
        }
    }
}

/// Syslog severity of a finding: critical → crit (2), high → err (3), medium → warning (4),
/// low → notice (5), info → info (6).
pub fn syslog_severity(s: Severity) -> u8 {
    match s {
        Severity::Critical => 2,
        Severity::High => 3,
        Severity::Medium => 4,
        Severity::Low => 5,
        Severity::Info => 6,
    }
}

enum Conn {
    Udp(UdpSocket),
    Tcp(TcpStream),
    UnixDgram(UnixDatagram),
    UnixStream(UnixStream),
}

pub(crate) struct Syslog {
    protocol: SyslogProtocol,
    address: String,
    facility: u8,
    app_name: String,
    hostname: String,
    procid: String,
    framing: SyslogFraming,
    timeout: Duration,
    conn: Option<Conn>,
    buf: Vec<u8>,
}

impl Syslog {
    pub fn new(cfg: &SyslogConfig, timeout: Duration) -> anyhow::Result<Syslog> {
        let stream = matches!(
            cfg.protocol,
            SyslogProtocol::Tcp | SyslogProtocol::UnixStream
        );
        if cfg.framing.is_some() && !stream {
            anyhow::bail!("framing applies to tcp and unix_stream only");
        }
        if cfg.address.is_empty() {
            anyhow::bail!("address is empty");
        }
        let hostname = cfg.hostname.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        });
        Ok(Syslog {
            protocol: cfg.protocol,
            address: cfg.address.clone(),
            facility: cfg.facility.code(),
            app_name: header_field(&cfg.app_name, 48),
            hostname: header_field(&hostname, 255),
            procid: std::process::id().to_string(),
            framing: cfg.framing.unwrap_or(SyslogFraming::OctetCounting),
            timeout,
            conn: None,
            buf: Vec::with_capacity(4096),
        })
    }

    fn connect(&self) -> io::Result<Conn> {
        let t = Some(self.timeout);
        Ok(match self.protocol {
            SyslogProtocol::Udp => {
                let addr = resolve(&self.address)?;
                let local: SocketAddr = if addr.is_ipv4() {
                    ([0, 0, 0, 0], 0).into()
                } else {
                    ([0u16; 8], 0).into()
                };
                let s = UdpSocket::bind(local)?;
                s.connect(addr)?;
                s.set_write_timeout(t)?;
                Conn::Udp(s)
            }
            SyslogProtocol::Tcp => {
                let addr = resolve(&self.address)?;
                let s = TcpStream::connect_timeout(&addr, self.timeout)?;
                s.set_write_timeout(t)?;
                s.set_nodelay(true)?;
                Conn::Tcp(s)
            }
            SyslogProtocol::UnixDatagram => {
                let s = UnixDatagram::unbound()?;
                s.connect(&self.address)?;
                s.set_write_timeout(t)?;
                Conn::UnixDgram(s)
            }
            SyslogProtocol::UnixStream => {
                let s = UnixStream::connect(&self.address)?;
                s.set_write_timeout(t)?;
                Conn::UnixStream(s)
            }
        })
    }

    /// Formats one finding into `self.buf`, framed for the transport.
    fn format(&mut self, f: &Finding) {
        let msg = message(
            self.facility,
            f,
            SystemTime::now(),
            &self.hostname,
            &self.app_name,
            &self.procid,
        );
        self.buf.clear();
        let stream = matches!(self.conn, Some(Conn::Tcp(_) | Conn::UnixStream(_)));
        if stream && self.framing == SyslogFraming::OctetCounting {
            self.buf
                .extend_from_slice(format!("{} ", msg.len()).as_bytes());
        }
        self.buf.extend_from_slice(&msg);
        if stream && self.framing == SyslogFraming::Newline {
            self.buf.push(b'\n');
        }
    }
}

fn resolve(address: &str) -> io::Result<SocketAddr> {
    address
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{address}: no address")))
}

/// A stream socket whose peer closed it reads EOF (a syslog receiver never writes): find out
/// before writing into it, since the first write to a closed peer "succeeds" and is lost.
fn peer_closed<S>(s: &S, set_nonblocking: impl Fn(&S, bool) -> io::Result<()>) -> bool
where
    for<'a> &'a S: Read,
{
    if set_nonblocking(s, true).is_err() {
        return true;
    }
    let mut b = [0u8; 1];
    let mut r: &S = s;
    let closed = match r.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != io::ErrorKind::WouldBlock,
    };
    closed || set_nonblocking(s, false).is_err()
}

impl Transport for Syslog {
    fn batch_max(&self) -> usize {
        100
    }

    fn batch_wait(&self) -> Duration {
        Duration::ZERO
    }

    fn deliver(&mut self, batch: &[Arc<Finding>]) -> Result<(), Failure> {
        let closed = match &self.conn {
            Some(Conn::Tcp(s)) => peer_closed(s, TcpStream::set_nonblocking),
            Some(Conn::UnixStream(s)) => peer_closed(s, UnixStream::set_nonblocking),
            _ => false,
        };
        if closed {
            self.conn = None;
        }
        if self.conn.is_none() {
            match self.connect() {
                Ok(c) => self.conn = Some(c),
                Err(e) => {
                    return Err(Failure::retry(format!(
                        "connect {}: {}",
                        self.address,
                        describe(&e)
                    )))
                }
            }
        }
        for (i, f) in batch.iter().enumerate() {
            self.format(f);
            let r = match self.conn.as_mut() {
                Some(Conn::Udp(s)) => s.send(&self.buf).map(drop),
                Some(Conn::UnixDgram(s)) => s.send(&self.buf).map(drop),
                Some(Conn::Tcp(s)) => s.write_all(&self.buf),
                Some(Conn::UnixStream(s)) => s.write_all(&self.buf),
                None => Err(io::ErrorKind::NotConnected.into()),
            };
            if let Err(e) = r {
                let too_big = e.raw_os_error() == Some(libc::EMSGSIZE);
                if !too_big {
                    self.conn = None;
                }
                return Err(Failure {
                    delivered: i,
                    permanent: too_big,
                    retry_after: None,
                    message: format!(
                        "send to {}: {}{}",
                        self.address,
                        describe(&e),
                        if too_big {
                            " (use tcp for large findings)"
                        } else {
                            ""
                        }
                    ),
                });
            }
        }
        Ok(())
    }
}

fn describe(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        io::ErrorKind::ConnectionReset => "connection reset".into(),
        io::ErrorKind::NotFound => "no such socket".into(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => "timed out".into(),
        _ => e.to_string(),
    }
}

/// An RFC 5424 header field: printable ASCII, at most `max` characters, `-` when empty.
fn header_field(s: &str, max: usize) -> String {
    let v: String = s
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if v.is_empty() {
        "-".into()
    } else {
        v
    }
}

/// `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG` (unframed).
pub(crate) fn message(
    facility: u8,
    f: &Finding,
    now: SystemTime,
    hostname: &str,
    app_name: &str,
    procid: &str,
) -> Vec<u8> {
    let pri = u16::from(facility) * 8 + u16::from(syslog_severity(f.severity));
    let mut out = format!(
        "<{pri}>1 {} {hostname} {app_name} {procid} {} - ",
        rfc3339_micros(now),
        header_field(&f.rule, 32)
    )
    .into_bytes();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, AsciiFormatter);
    let _ = serde::Serialize::serialize(f, &mut ser);
    out
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
fn rfc3339_micros(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, m, day) = crate::archive::civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    )
}

/// JSON with every non-ASCII character escaped as `\uXXXX` (surrogate pairs beyond the BMP).
struct AsciiFormatter;

impl serde_json::ser::Formatter for AsciiFormatter {
    fn write_string_fragment<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            if !c.is_ascii() {
                w.write_all(&fragment.as_bytes()[start..i])?;
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    write!(w, "\\u{u:04x}")?;
                }
                start = i + c.len_utf8();
            }
        }
        w.write_all(&fragment.as_bytes()[start..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finding::{Actor, SourceKind, SourceRef};

    #[test]
    fn message_shape_and_ascii_body() {
        let f = Finding {
            id: "ab".into(),
            rule: "root.token_use with spaces and a very long tail beyond 32".into(),
            category: "c".into(),
            severity: Severity::Critical,
            title: "Zürich 🔑\n".into(),
            time: None,
            entry_type: None,
            request_id: None,
            operation: None,
            path: None,
            namespace: "root".into(),
            actor: Actor::default(),
            source: SourceRef {
                kind: SourceKind::Tcp,
                name: "x".into(),
                line: 1,
                offset: 0,
            },
            detail: Default::default(),
        };
        let t = UNIX_EPOCH + Duration::from_micros(1_764_110_826_123_456);
        let m = message(Facility::Auth.code(), &f, t, "host", "auditwatch", "42");
        let s = String::from_utf8(m).unwrap();
        assert!(
            s.starts_with("<34>1 2025-11-25T22:47:06.123456Z host auditwatch 42 root.token_usewithspacesandavery - {"),
            "{s}"
        );
        assert!(s.is_ascii());
        let body = &s[s.find(" - ").unwrap() + 3..];
        let back: Finding = serde_json::from_str(body).unwrap();
        assert_eq!(back, f);
        assert!(body.contains("Z\\u00fcrich \\ud83d\\udd11\\n"), "{body}");
    }

    #[test]
    fn severities_map() {
        let v: Vec<u8> = Severity::ALL.iter().map(|s| syslog_severity(*s)).collect();
        assert_eq!(v, [6, 5, 4, 3, 2]);
        assert_eq!(Facility::Local7.code(), 23);
    }
}
