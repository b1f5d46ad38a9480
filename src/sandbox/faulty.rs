//! A fault-injecting HTTP proxy to put between the watchdog and the real Prometheus.
//!
//! It listens on a free loopback port and, per connection, either passes the request through to
//! the upstream Prometheus or answers with the fault a test set: an error status, a 200 with a
//! body no Prometheus would send, no answer at all (hang), or a closed connection (reset), or
//! reset and pass-through in turn (flapping); or it passes only requests that carry the headers
//! it requires (a gateway checking a token and a tenant), answering 401 to the rest. The mode can change at any time and applies to the
//! next connection. Every connection carries exactly one request, because the proxy asks both
//! sides to close after it (`Connection: close`): otherwise a pooled keep-alive connection would
//! carry requests past a mode change.
//!
//! Deliberately raw TCP with just enough HTTP/1.1 to find the end of a request: it is a test
//! double for a network path, not a general proxy. No TLS, no chunked request bodies (the
//! watchdog sends form bodies with a `Content-Length`), no pipelining.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::error::{Error, Result};

/// A request head larger than this is not the watchdog's; the connection is dropped.
const MAX_HEAD: usize = 64 * 1024;

/// What the proxy does with the next connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Forward the request to Prometheus and its answer back.
    Pass,
    /// Answer `code` with `body` (as `text/html`), without asking Prometheus.
    Status { code: u16, body: String },
    /// Answer 200 with `body` (as `application/json`), whatever it is.
    Body(String),
    /// Read the request and never answer, until the client gives up or the proxy stops.
    Hang,
    /// Close the connection at once, before reading anything.
    Reset,
    /// Reset and pass in turn, one request each, starting with whichever the request count's
    /// parity picks.
    Flapping,
    /// Pass requests that carry every one of these headers (name, exact value), answer 401 to
    /// the others: a gateway checking a bearer token and a tenant header.
    Require(Vec<(String, String)>),
}

struct Shared {
    mode: Mutex<Mode>,
    upstream: SocketAddr,
    /// Connections accepted, which is requests seen (one per connection).
    requests: AtomicU64,
    /// Requests passed through and answered by Prometheus.
    passed: AtomicU64,
}

/// A running proxy. Dropping it stops it, hung connections included.
pub struct FaultyProxy {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for FaultyProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl FaultyProxy {
    /// Starts a proxy in [`Mode::Pass`] to `upstream` on a free loopback port.
    pub async fn start(upstream: SocketAddr) -> Result<Self> {
        let bind = SocketAddr::from(([127, 0, 0, 1], 0));
        let listener = TcpListener::bind(bind)
            .await
            .map_err(|source| Error::Bind {
                what: "fault proxy",
                addr: bind,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| Error::Io {
            context: "failed to read the fault proxy's address".into(),
            source,
        })?;
        let shared = Arc::new(Shared {
            mode: Mutex::new(Mode::Pass),
            upstream,
            requests: AtomicU64::new(0),
            passed: AtomicU64::new(0),
        });
        let stop = CancellationToken::new();
        tokio::spawn(accept(listener, shared.clone(), stop.clone()));
        Ok(Self { shared, addr, stop })
    }

    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL to give the watchdog as `prometheus.url`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Switches the mode; connections accepted from now on get it.
    pub fn set(&self, mode: Mode) {
        *lock(&self.shared.mode) = mode;
    }

    /// Requests seen so far, whatever happened to them.
    #[must_use]
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Requests passed through to Prometheus and answered.
    #[must_use]
    pub fn passed(&self) -> u64 {
        self.shared.passed.load(Ordering::SeqCst)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn accept(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let client = match accepted {
            Ok((client, _)) => client,
            Err(e) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                debug!(error = %e, "fault proxy failed to accept");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let n = shared.requests.fetch_add(1, Ordering::SeqCst);
        let mode = match lock(&shared.mode).clone() {
            Mode::Flapping if n.is_multiple_of(2) => Mode::Reset,
            Mode::Flapping => Mode::Pass,
            mode => mode,
        };
        let (shared, stop) = (shared.clone(), stop.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                result = handle(client, &mode, &shared) => {
                    if let Err(e) = result {
                        debug!(error = %e, mode = ?mode, "fault proxy connection ended with an error");
                    }
                }
            }
        });
    }
}

async fn handle(mut client: TcpStream, mode: &Mode, shared: &Shared) -> std::io::Result<()> {
    match mode {
        // Dropping the socket unread closes it; the client sees the connection go away.
        Mode::Reset | Mode::Flapping => Ok(()),
        Mode::Hang => {
            // Read (and discard) until the client gives up: a server that took the request and
            // never answers.
            let mut sink = [0u8; 4096];
            while client.read(&mut sink).await? > 0 {}
            Ok(())
        }
        Mode::Status { code, body } => {
            read_request(&mut client).await?;
            respond(&mut client, *code, "text/html", body).await
        }
        Mode::Body(body) => {
            read_request(&mut client).await?;
            respond(&mut client, 200, "application/json", body).await
        }
        Mode::Require(headers) => {
            let (head, rest) = read_head(&mut client).await?;
            let carries = |(name, value): &(String, String)| {
                head.split("\r\n").skip(1).any(|line| {
                    line.split_once(':').is_some_and(|(n, v)| {
                        n.trim().eq_ignore_ascii_case(name) && v.trim() == value
                    })
                })
            };
            if !headers.iter().all(carries) {
                return respond(
                    &mut client,
                    401,
                    "text/plain",
                    "no valid credentials or tenant",
                )
                .await;
            }
            pass(client, &head, &rest, shared).await
        }
        Mode::Pass => {
            let (head, rest) = read_head(&mut client).await?;
            pass(client, &head, &rest, shared).await
        }
    }
}

/// Forwards a request whose head has been read to Prometheus, and its answer back.
async fn pass(
    mut client: TcpStream,
    head: &str,
    rest: &[u8],
    shared: &Shared,
) -> std::io::Result<()> {
    let mut upstream = TcpStream::connect(shared.upstream).await?;
    upstream.write_all(&close_after(head)).await?;
    upstream.write_all(rest).await?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    shared.passed.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

/// Reads up to the end of the request head; returns the head (without the blank line) and
/// whatever of the body came with it.
async fn read_head(client: &mut TcpStream) -> std::io::Result<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            return Ok((head, buf[end + 4..].to_vec()));
        }
        if buf.len() > MAX_HEAD {
            return Err(std::io::Error::other("request head too large"));
        }
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads a whole request, so that answering and closing does not reset the connection under
/// the answer (closing a socket with unread input sends RST).
async fn read_request(client: &mut TcpStream) -> std::io::Result<()> {
    let (head, rest) = read_head(client).await?;
    let length = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut remaining = length.saturating_sub(rest.len());
    let mut chunk = [0u8; 4096];
    while remaining > 0 {
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        remaining = remaining.saturating_sub(n);
    }
    Ok(())
}

/// The head with any connection headers replaced by `Connection: close`, and its blank line.
fn close_after(head: &str) -> Vec<u8> {
    let mut out = String::new();
    for line in head.split("\r\n") {
        let name = line.split_once(':').map(|(n, _)| n.trim());
        if name.is_some_and(|n| {
            n.eq_ignore_ascii_case("connection") || n.eq_ignore_ascii_case("keep-alive")
        }) {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    out.into_bytes()
}

async fn respond(
    client: &mut TcpStream,
    code: u16,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let response = format!(
        "HTTP/1.1 {code} Fault\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    client.write_all(response.as_bytes()).await?;
    client.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_headers_are_replaced_by_close() {
        let head =
            "POST /api/v1/query HTTP/1.1\r\nHost: x\r\nconnection: keep-alive\r\nKeep-Alive: 5";
        let got = String::from_utf8(close_after(head)).unwrap();
        assert_eq!(
            got,
            "POST /api/v1/query HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        );
    }
}
