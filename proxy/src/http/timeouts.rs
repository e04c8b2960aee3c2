//! How long a client connection may wait: `headerReadTimeout` for a request head that has
//! started to arrive, `clientIdleTimeout` for a connection with nothing to do.
//!
//! HTTP/1.1 served by `h1server` has its own timer for both (see there); what follows is for
//! the connections it hands to hyper.
//!
//! HTTP/1.1 on hyper: hyper runs one timer while it waits for a request head, from the moment it starts
//! waiting, so an idle keep-alive connection was closed after `headerReadTimeout` (10 s) and
//! `clientIdleTimeout` did nothing. Apps keep pooled connections for longer (Go 90 s, OkHttp
//! 5 min): each close after 10 s idle is one more chance of the app reusing a connection just as
//! the proxy closes it. `HeadTimer` gives hyper a timer that lasts `clientIdleTimeout` while no
//! byte of the next head has arrived, and `headerReadTimeout` from the first one (`ReadWatch`
//! sees it). Either way hyper closes the connection without an answer; only the slow head
//! counts as a protocol error. Known gap: bytes of a next head that hyper has already read
//! with the previous request (pipelining) are not seen as a start, so such a head gets the
//! idle deadline.
//!
//! HTTP/2: `IdleTicker` checks the connection four times per `clientIdleTimeout`; with no
//! stream open and none started for four whole periods, the connection is sent GOAWAY (so
//! between 1 and 1.5 times `clientIdleTimeout` after its last stream). Nothing is done per
//! request but counting it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A client socket that notes when bytes arrive, for `HeadTimer`. Its first reads return
/// `prefix`: what `h1server` had read before it handed the connection to hyper.
pub struct ReadWatch<S> {
    io: S,
    prefix: Bytes,
    read: Arc<AtomicBool>,
}

impl<S> ReadWatch<S> {
    pub fn new(io: S, prefix: Bytes, timer: &HeadTimer) -> ReadWatch<S> {
        ReadWatch { io, prefix, read: timer.read.clone() }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadWatch<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            if this.prefix.is_empty() {
                // An empty slice would still hold the whole read buffer.
                this.prefix = Bytes::new();
            }
            this.read.store(true, Ordering::Relaxed);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.read.store(true, Ordering::Relaxed);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadWatch<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// The timer hyper's HTTP/1.1 server runs while it waits for a request head (one per client
/// connection; hyper is configured with `headerReadTimeout` as its header read timeout).
pub struct HeadTimer {
    read: Arc<AtomicBool>,
    head: Duration,
    idle: Duration,
}

impl HeadTimer {
    pub fn new(header_read_timeout: Duration, client_idle_timeout: Duration) -> HeadTimer {
        HeadTimer { read: Arc::new(AtomicBool::new(false)), head: header_read_timeout, idle: client_idle_timeout }
    }

    /// Whether a byte of the head being waited for has arrived: after hyper's header read
    /// timeout error, `false` means the connection was idle (closed by `clientIdleTimeout`),
    /// `true` that its head was too slow.
    pub fn head_begun(&self) -> Arc<AtomicBool> {
        self.read.clone()
    }
}

impl hyper::rt::Timer for HeadTimer {
    /// Any other wait hyper asks for is a plain one.
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        hyper_util::rt::TokioTimer::new().sleep(duration)
    }

    /// hyper asks for this when it starts waiting for a head, `headerReadTimeout` from now.
    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.read.store(false, Ordering::Relaxed);
        let waiting_since = deadline.checked_sub(self.head).unwrap_or(deadline);
        Box::pin(HeadSleep {
            sleep: tokio::time::sleep_until((waiting_since + self.idle).into()),
            read: self.read.clone(),
            head: self.head,
            head_started: false,
        })
    }
}

pin_project_lite::pin_project! {
    /// Waits `clientIdleTimeout`, or `headerReadTimeout` from the first byte of the head.
    /// hyper polls it only when a read left the head incomplete, so a head that arrives whole
    /// never touches it beyond creating it.
    struct HeadSleep {
        #[pin]
        sleep: tokio::time::Sleep,
        read: Arc<AtomicBool>,
        head: Duration,
        head_started: bool,
    }
}

impl Future for HeadSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        if !*this.head_started && this.read.load(Ordering::Relaxed) {
            // The head began with the read just made: its own deadline replaces the idle one.
            *this.head_started = true;
            this.sleep.as_mut().reset(tokio::time::Instant::now() + *this.head);
        }
        this.sleep.poll(cx)
    }
}

impl hyper::rt::Sleep for HeadSleep {}

/// Checks per `clientIdleTimeout`: an HTTP/2 connection is closed between 1 and 1.5 times it.
const IDLE_CHECKS: u32 = 4;

/// Tells when an HTTP/2 connection has been idle for `clientIdleTimeout`: no stream open and
/// none started over it, checked every quarter of it.
pub struct IdleTicker {
    tick: Pin<Box<tokio::time::Sleep>>,
    period: Duration,
    accepted: u64,
    accepted_at_tick: u64,
    idle_ticks: u8,
}

impl IdleTicker {
    pub fn new(client_idle_timeout: Duration) -> IdleTicker {
        let period = client_idle_timeout / IDLE_CHECKS;
        IdleTicker {
            tick: Box::pin(tokio::time::sleep(period)),
            period,
            accepted: 0,
            accepted_at_tick: 0,
            idle_ticks: 0,
        }
    }

    /// A stream was accepted.
    pub fn stream_started(&mut self) {
        self.accepted += 1;
    }

    /// `Ready` once the connection has been idle long enough; `has_streams` says whether any
    /// stream is open now.
    pub fn poll_idle(&mut self, cx: &mut Context<'_>, has_streams: impl Fn() -> bool) -> Poll<()> {
        if self.tick.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        // A tick with nothing open and nothing started since the last one. A stream open
        // before the first of a row may have ended just before it, so a row of
        // IDLE_CHECKS + 1 such ticks means nothing was open for IDLE_CHECKS whole periods.
        if has_streams() || self.accepted != self.accepted_at_tick {
            self.idle_ticks = 0;
        } else {
            self.idle_ticks += 1;
        }
        self.accepted_at_tick = self.accepted;
        if u32::from(self.idle_ticks) > IDLE_CHECKS {
            return Poll::Ready(());
        }
        self.tick.as_mut().reset(tokio::time::Instant::now() + self.period);
        // Registers the waker for the new deadline.
        let _ = self.tick.as_mut().poll(cx);
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_read_before_a_handover_come_first_count_as_a_head_begun_and_are_let_go() {
        let read = Bytes::from(b"GET / HTTP/1.1\r\n".to_vec());
        let probe = read.clone();
        let (mut client, server) = tokio::io::duplex(1024);
        let timer = HeadTimer::new(Duration::from_secs(1), Duration::from_secs(1));
        let mut io = ReadWatch::new(server, read, &timer);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"Host: a\r\n").await.unwrap();
        let mut got = [0u8; 25];
        tokio::io::AsyncReadExt::read_exact(&mut io, &mut got).await.unwrap();
        assert_eq!(&got, b"GET / HTTP/1.1\r\nHost: a\r\n", "the replayed bytes, then the socket's");
        assert!(timer.head_begun().load(Ordering::Relaxed));
        assert!(probe.is_unique(), "the replayed bytes' memory is let go once they are read");
    }
}
