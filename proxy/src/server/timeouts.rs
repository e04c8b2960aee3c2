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
//! request but counting it. `h2server` then closes it after a short grace whether or not the
//! client answers. A header block (HEADERS and its CONTINUATION frames) must arrive whole
//! within `headerReadTimeout`: h2 buffers a partial one silently, so `HeaderBlockWatch`
//! follows the frame headers the client sends (payloads are skipped, not read) and says
//! when one is open.

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
pub(crate) struct ReadWatch<S> {
    io: S,
    prefix: Bytes,
    read: Arc<AtomicBool>,
}

impl<S> ReadWatch<S> {
    pub(crate) fn new(io: S, prefix: Bytes, timer: &HeadTimer) -> ReadWatch<S> {
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

/// The read-side wrappers pass writes straight through to the socket they wrap.
macro_rules! pass_writes_through {
    ($wrapper:ident) => {
        impl<S: AsyncWrite + Unpin> AsyncWrite for $wrapper<S> {
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
    };
}

pass_writes_through!(ReadWatch);

/// The timer hyper's HTTP/1.1 server runs while it waits for a request head (one per client
/// connection; hyper is configured with `headerReadTimeout` as its header read timeout).
pub(crate) struct HeadTimer {
    read: Arc<AtomicBool>,
    head: Duration,
    idle: Duration,
}

impl HeadTimer {
    pub(crate) fn new(header_read_timeout: Duration, client_idle_timeout: Duration) -> HeadTimer {
        HeadTimer { read: Arc::new(AtomicBool::new(false)), head: header_read_timeout, idle: client_idle_timeout }
    }

    /// Whether a byte of the head being waited for has arrived: after hyper's header read
    /// timeout error, `false` means the connection was idle (closed by `clientIdleTimeout`),
    /// `true` that its head was too slow.
    pub(crate) fn head_begun(&self) -> Arc<AtomicBool> {
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
pub(crate) struct IdleTicker {
    tick: Pin<Box<tokio::time::Sleep>>,
    period: Duration,
    accepted: u64,
    accepted_at_tick: u64,
    idle_ticks: u8,
}

impl IdleTicker {
    pub(crate) fn new(client_idle_timeout: Duration) -> IdleTicker {
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
    pub(crate) fn stream_started(&mut self) {
        self.accepted += 1;
    }

    /// `Ready` once the connection has been idle long enough; `has_streams` says whether any
    /// stream is open now.
    pub(crate) fn poll_idle(&mut self, cx: &mut Context<'_>, has_streams: impl Fn() -> bool) -> Poll<()> {
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

/// An HTTP/2 client socket that says, through a flag `h2server` reads, whether the client is
/// in the middle of a header block. It looks at the bytes h2 reads, so the flag is exact
/// whenever h2 has read all that arrived. The cost is a few operations per frame.
pub(crate) struct HeaderBlockWatch<S> {
    io: S,
    scan: FrameScan,
    open: Arc<AtomicBool>,
}

impl<S> HeaderBlockWatch<S> {
    /// Watches `io` from its first byte (the client's preface); `open` is the flag.
    pub(crate) fn new(io: S, open: Arc<AtomicBool>) -> HeaderBlockWatch<S> {
        HeaderBlockWatch { io, scan: FrameScan::new(), open }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for HeaderBlockWatch<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            let was = this.scan.in_block;
            if this.scan.feed(&buf.filled()[before..]) != was {
                this.open.store(this.scan.in_block, Ordering::Relaxed);
            }
        }
        polled
    }
}

pass_writes_through!(HeaderBlockWatch);

/// Frame types that carry a header block (RFC 9113 §6.2, §6.6, §6.10), and its end flag.
const HEADERS: u8 = 0x1;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;

/// Where a client's HTTP/2 byte stream is: in a frame's payload (skipped), or in a frame
/// header (kept, 9 bytes); and whether a header block has begun and not ended.
pub(crate) struct FrameScan {
    /// Bytes to pass over before the next frame header: the preface, then each payload.
    skip: usize,
    head: [u8; 9],
    have: usize,
    /// The frame being passed over ends its header block.
    ends_block: bool,
    in_block: bool,
}

impl FrameScan {
    pub(crate) fn new() -> FrameScan {
        FrameScan { skip: 24, head: [0; 9], have: 0, ends_block: false, in_block: false }
    }

    /// Follows the next `bytes` of the stream; returns whether a header block is open after them.
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) -> bool {
        loop {
            let n = self.skip.min(bytes.len());
            self.skip -= n;
            bytes = &bytes[n..];
            if self.skip > 0 {
                break;
            }
            if self.ends_block {
                self.ends_block = false;
                self.in_block = false;
            }
            if bytes.is_empty() {
                break;
            }
            let n = (self.head.len() - self.have).min(bytes.len());
            self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have < self.head.len() {
                break;
            }
            self.have = 0;
            let [l0, l1, l2, kind, flags, ..] = self.head;
            self.skip = usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2);
            if matches!(kind, HEADERS | PUSH_PROMISE | CONTINUATION) {
                self.in_block = true;
                self.ends_block = flags & END_HEADERS != 0;
            }
        }
        self.in_block
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

    /// A frame header: payload length, type, flags, stream 1.
    fn frame(len: usize, kind: u8, flags: u8) -> Vec<u8> {
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags, 0, 0, 0, 1];
        f.resize(9 + len, 0xab);
        f
    }

    #[test]
    fn a_header_block_is_open_from_its_first_frame_to_the_end_of_the_one_that_ends_it() {
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        let settings = frame(6, 0x4, 0);
        let whole = frame(5, HEADERS, END_HEADERS | 0x1);
        let begun = frame(5, HEADERS, 0);
        let more = frame(3, CONTINUATION, 0);
        let last = frame(2, CONTINUATION, END_HEADERS);
        let data = frame(4, 0x0, 0x1);
        // (what arrives, in pieces of this size) -> a header block is open after each piece.
        let cases: [(Vec<&[u8]>, usize, bool); 6] = [
            (vec![preface, &settings], 1, false),
            (vec![preface, &settings, &whole, &data], 7, false),
            (vec![preface, &settings, &begun], 100, true),
            (vec![preface, &begun, &more], 3, true),
            (vec![preface, &begun, &more, &last, &data], 2, false),
            // A HEADERS frame that declares END_HEADERS but whose payload has not all come.
            (vec![preface, &whole[..whole.len() - 1]], 100, true),
        ];
        for (i, (frames, piece, open)) in cases.into_iter().enumerate() {
            let stream: Vec<u8> = frames.concat();
            let mut scan = FrameScan::new();
            let mut after = false;
            for chunk in stream.chunks(piece) {
                after = scan.feed(chunk);
            }
            assert_eq!(after, open, "case {i}");
        }
        // The flag follows every read: open during the block, closed once its last byte is in.
        let mut scan = FrameScan::new();
        assert!(!scan.feed(preface));
        assert!(scan.feed(&begun));
        assert!(scan.feed(&last[..last.len() - 1]));
        assert!(!scan.feed(&last[last.len() - 1..]));
    }
}
