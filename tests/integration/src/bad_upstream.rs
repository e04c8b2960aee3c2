//! Upstreams that misbehave on purpose, for one request in `n` (or one connection in `n`):
//! HTTP/1.1 written by hand over raw TCP, so they can send what no HTTP library would.
//!
//! When it behaves, a bad upstream answers like [`Backend`](crate::Backend): `200`, a
//! `Content-Length` body, `x-backend: <name>` and `x-echo-path: <the request's target>`, so a
//! caller can tell whether the response it got is the one for its own request. A forged
//! response (the smuggling kinds) says `x-backend: forged` and `x-echo-path: /forged`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use crate::net::find;

/// What a bad upstream does when it misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Misbehaviour {
    /// Reads the request and never answers (the connection stays open until the peer closes).
    Hang,
    /// Sends the head and part of a `Content-Length` body, then resets the connection (RST:
    /// `SO_LINGER` 0 and close).
    ResetMidBody,
    /// Sends bytes that are not HTTP, then closes.
    Garbage,
    /// Both `Content-Length` and `Transfer-Encoding: chunked`: read as chunked, the body ends
    /// and a forged response follows; read by its length, the forged response is body.
    BothFramings,
    /// Two different `Content-Length`s: the first ends the body before a forged response, the
    /// second takes the forged response in as body.
    TwoLengths,
    /// A body longer than its `Content-Length`: a forged response right after it, in the same
    /// write, on a connection kept open.
    BodyPastLength,
    /// Answers normally, but only after this long.
    Slow(Duration),
    /// Counts per connection: after `n - 1` answers with keep-alive, reads the next request
    /// and closes without answering, as a server whose idle timeout fires just as the
    /// connection is reused.
    CloseOnReuse,
}

impl Misbehaviour {
    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Misbehaviour::Hang => "hangs after accepting",
            Misbehaviour::ResetMidBody => "resets mid-body",
            Misbehaviour::Garbage => "garbage response",
            Misbehaviour::BothFramings => "Content-Length + chunked",
            Misbehaviour::TwoLengths => "two Content-Lengths",
            Misbehaviour::BodyPastLength => "body past its length + forged",
            Misbehaviour::Slow(_) => "slow sometimes",
            Misbehaviour::CloseOnReuse => "closes idle conn on reuse",
        }
    }
}

/// The response a smuggling-shaped answer hides after (or inside) the genuine one.
const FORGED: &[u8] =
    b"HTTP/1.1 200 OK\r\nx-backend: forged\r\nx-echo-path: /forged\r\ncontent-length: 7\r\n\r\nforged\n";

/// A running bad upstream; dropping it stops the listener and every connection.
pub struct BadUpstream {
    addr: SocketAddr,
    counts: Arc<Counts>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct Counts {
    requests: AtomicUsize,
    misbehaved: AtomicUsize,
}

impl BadUpstream {
    /// Starts an upstream called `name` on a fresh loopback port that does `kind` for one
    /// request in `n` (every `n`th; `n` = 1: every request), or for `CloseOnReuse` the `n`th
    /// request of each connection.
    pub async fn start(name: &str, kind: Misbehaviour, n: usize) -> BadUpstream {
        assert!(n >= 1, "one request in n, n >= 1");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind bad upstream");
        let addr = listener.local_addr().expect("bad upstream addr");
        let counts = Arc::new(Counts::default());
        let serving = Arc::new(Serving { name: name.to_string(), kind, n, counts: counts.clone() });
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let _ = stream.set_nodelay(true);
                        conns.spawn(serving.clone().connection(stream));
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        BadUpstream { addr, counts, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests read so far.
    pub fn requests(&self) -> usize {
        self.counts.requests.load(Ordering::SeqCst)
    }

    /// Requests it misbehaved on so far.
    pub fn misbehaved(&self) -> usize {
        self.counts.misbehaved.load(Ordering::SeqCst)
    }
}

impl Drop for BadUpstream {
    fn drop(&mut self) {
        // Dropping the accept task's JoinSet aborts every connection task with it.
        self.task.abort();
    }
}

struct Serving {
    name: String,
    kind: Misbehaviour,
    n: usize,
    counts: Arc<Counts>,
}

impl Serving {
    async fn connection(self: Arc<Self>, mut stream: TcpStream) {
        let mut buf = Vec::new();
        let mut on_connection = 0usize;
        while let Some(path) = read_request(&mut stream, &mut buf).await {
            let nth = self.counts.requests.fetch_add(1, Ordering::SeqCst) + 1;
            on_connection += 1;
            let misbehave = match self.kind {
                Misbehaviour::CloseOnReuse => on_connection.is_multiple_of(self.n),
                _ => nth.is_multiple_of(self.n),
            };
            if !misbehave {
                if stream.write_all(&self.response(&path)).await.is_err() {
                    return;
                }
                continue;
            }
            self.counts.misbehaved.fetch_add(1, Ordering::SeqCst);
            if !self.misbehave(&mut stream, &path).await {
                return;
            }
        }
    }

    /// The well-behaved answer to a request for `path`.
    fn response(&self, path: &str) -> Vec<u8> {
        let body = format!("{}\n", self.name);
        format!(
            "HTTP/1.1 200 OK\r\nx-backend: {}\r\nx-echo-path: {path}\r\ncontent-length: {}\r\n\r\n{body}",
            self.name,
            body.len()
        )
        .into_bytes()
    }

    /// Misbehaves on the request for `path`; false when the connection is done with.
    async fn misbehave(&self, stream: &mut TcpStream, path: &str) -> bool {
        let head = |framing: &str| {
            format!("HTTP/1.1 200 OK\r\nx-backend: {}\r\nx-echo-path: {path}\r\n{framing}\r\n", self.name).into_bytes()
        };
        let genuine = format!("{}\n", self.name).into_bytes();
        match self.kind {
            Misbehaviour::Hang => {
                // Never answers; holds the connection until the peer gives up on it.
                let mut sink = [0u8; 1024];
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                false
            }
            Misbehaviour::ResetMidBody => {
                let mut out = head("content-length: 1000\r\n");
                out.extend_from_slice(&[b'x'; 100]);
                let _ = stream.write_all(&out).await;
                let _ = stream.flush().await;
                let _ = stream.set_zero_linger();
                false
            }
            Misbehaviour::Garbage => {
                let _ = stream.write_all(b"\x16\x03\x01\x00\xffSSH-2.0-not-http\r\n\x00\x01\x02\r\n\r\n").await;
                false
            }
            Misbehaviour::BothFramings => {
                let mut chunked = format!("{:x}\r\n", genuine.len()).into_bytes();
                chunked.extend_from_slice(&genuine);
                chunked.extend_from_slice(b"\r\n0\r\n\r\n");
                let framing =
                    format!("content-length: {}\r\ntransfer-encoding: chunked\r\n", chunked.len() + FORGED.len());
                let mut out = head(&framing);
                out.extend_from_slice(&chunked);
                out.extend_from_slice(FORGED);
                stream.write_all(&out).await.is_ok()
            }
            Misbehaviour::TwoLengths => {
                let framing = format!(
                    "content-length: {}\r\ncontent-length: {}\r\n",
                    genuine.len(),
                    genuine.len() + FORGED.len()
                );
                let mut out = head(&framing);
                out.extend_from_slice(&genuine);
                out.extend_from_slice(FORGED);
                stream.write_all(&out).await.is_ok()
            }
            Misbehaviour::BodyPastLength => {
                let mut out = head(&format!("content-length: {}\r\n", genuine.len()));
                out.extend_from_slice(&genuine);
                out.extend_from_slice(FORGED);
                stream.write_all(&out).await.is_ok()
            }
            Misbehaviour::Slow(delay) => {
                tokio::time::sleep(delay).await;
                stream.write_all(&self.response(path)).await.is_ok()
            }
            // The request was read; closing now, unanswered, is the keep-alive race.
            Misbehaviour::CloseOnReuse => false,
        }
    }
}

/// Reads one request from `stream` (the head, and a `Content-Length` body, which is skipped)
/// and returns its target; `None` once the peer closes or sends something unreadable.
/// `buf` keeps what was read past the request.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(at) = find(buf, b"\r\n\r\n") {
            break at + 4;
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let target = head.split_whitespace().nth(1)?.to_string();
    let body_len: usize = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < end + body_len {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    buf.drain(..end + body_len);
    Some(target)
}
