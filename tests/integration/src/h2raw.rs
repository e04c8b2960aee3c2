//! A raw HTTP/2 peer for hostile-input tests: writes any frame, well-formed or not, over plain
//! TCP or mutual TLS, and records the frames the server sends back (GOAWAY and RST_STREAM
//! codes, response statuses).
//!
//! Frames follow RFC 9113 §4.1 and header blocks RFC 7541 (HPACK). The peer announces a
//! header table size of 0, so the server's encoder never refers to its dynamic table and a
//! response's `:status` can be read from the block alone.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::watch;

use crate::mesh::IdentityFiles;

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const PRIORITY: u8 = 0x2;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PADDED: u8 = 0x8;

/// Error codes (RFC 9113 §7).
pub const NO_ERROR: u32 = 0x0;
pub const PROTOCOL_ERROR: u32 = 0x1;
pub const FLOW_CONTROL_ERROR: u32 = 0x3;
pub const FRAME_SIZE_ERROR: u32 = 0x6;
pub const REFUSED_STREAM: u32 = 0x7;
pub const CANCEL: u32 = 0x8;
pub const COMPRESSION_ERROR: u32 = 0x9;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// SETTINGS identifiers.
pub const HEADER_TABLE_SIZE: u16 = 0x1;
pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const INITIAL_WINDOW_SIZE: u16 = 0x4;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// A write the server does not take within this long is reported as an error (the server
/// stopped reading, which is how it pushes back on a flood).
const WRITE_DEADLINE: Duration = Duration::from_secs(5);
/// Frames kept for inspection; later ones are counted only.
const KEPT_FRAMES: usize = 100_000;

/// One HTTP/2 frame.
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn new(kind: u8, flags: u8, stream: u32, payload: impl Into<Vec<u8>>) -> Frame {
        Frame { kind, flags, stream, payload: payload.into() }
    }

    pub fn settings(settings: &[(u16, u32)]) -> Frame {
        let payload = settings.iter().flat_map(|(id, v)| [id.to_be_bytes().as_slice(), &v.to_be_bytes()].concat());
        Frame::new(SETTINGS, 0, 0, payload.collect::<Vec<u8>>())
    }

    pub fn settings_ack() -> Frame {
        Frame::new(SETTINGS, ACK, 0, [])
    }

    /// HEADERS carrying the whole `block` (END_HEADERS set), with `flags` (END_STREAM…).
    pub fn headers(stream: u32, flags: u8, block: &Block) -> Frame {
        Frame::new(HEADERS, flags | END_HEADERS, stream, block.bytes())
    }

    /// HEADERS without END_HEADERS: the block continues in CONTINUATION frames.
    pub fn headers_open(stream: u32, flags: u8, block: &Block) -> Frame {
        Frame::new(HEADERS, flags & !END_HEADERS, stream, block.bytes())
    }

    pub fn continuation(stream: u32, end_headers: bool, fragment: impl Into<Vec<u8>>) -> Frame {
        Frame::new(CONTINUATION, if end_headers { END_HEADERS } else { 0 }, stream, fragment)
    }

    pub fn data(stream: u32, end_stream: bool, data: impl Into<Vec<u8>>) -> Frame {
        Frame::new(DATA, if end_stream { END_STREAM } else { 0 }, stream, data)
    }

    pub fn rst_stream(stream: u32, code: u32) -> Frame {
        Frame::new(RST_STREAM, 0, stream, code.to_be_bytes())
    }

    pub fn ping(data: [u8; 8]) -> Frame {
        Frame::new(PING, 0, 0, data)
    }

    pub fn window_update(stream: u32, increment: u32) -> Frame {
        Frame::new(WINDOW_UPDATE, 0, stream, increment.to_be_bytes())
    }

    /// PRIORITY: `stream` depends on `depends_on` (non-exclusive) with `weight`.
    pub fn priority(stream: u32, depends_on: u32, weight: u8) -> Frame {
        Frame::new(PRIORITY, 0, stream, [depends_on.to_be_bytes().as_slice(), &[weight]].concat())
    }

    pub fn goaway(last_stream: u32, code: u32) -> Frame {
        Frame::new(GOAWAY, 0, 0, [last_stream.to_be_bytes(), code.to_be_bytes()].concat())
    }

    /// The frame on the wire: 9-byte header, then the payload (whatever its length).
    pub fn encode(&self) -> Vec<u8> {
        let len = self.payload.len() as u32;
        let mut out = Vec::with_capacity(9 + self.payload.len());
        out.extend_from_slice(&len.to_be_bytes()[1..]);
        out.push(self.kind);
        out.push(self.flags);
        out.extend_from_slice(&(self.stream & 0x7fff_ffff).to_be_bytes());
        out.extend_from_slice(&self.payload);
        out
    }

    /// `(last stream id, error code)` of a GOAWAY.
    pub fn goaway_fields(&self) -> Option<(u32, u32)> {
        (self.kind == GOAWAY && self.payload.len() >= 8)
            .then(|| (be32(&self.payload[0..4]) & 0x7fff_ffff, be32(&self.payload[4..8])))
    }

    /// The error code of a RST_STREAM.
    pub fn rst_code(&self) -> Option<u32> {
        (self.kind == RST_STREAM && self.payload.len() == 4).then(|| be32(&self.payload))
    }

    /// The `:status` of a response HEADERS frame, when its block says it plainly (see
    /// [`status_of_block`]).
    pub fn status(&self) -> Option<u16> {
        if self.kind != HEADERS {
            return None;
        }
        let mut block = self.payload.as_slice();
        if self.flags & PADDED != 0 {
            let pad = usize::from(*block.first()?);
            block = block.get(1..block.len().checked_sub(pad)?)?;
        }
        if self.flags & 0x20 != 0 {
            block = block.get(5..)?;
        }
        status_of_block(block)
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// An HPACK header block, field by field.
#[derive(Clone, Debug, Default)]
pub struct Block(Vec<u8>);

impl Block {
    /// A request's pseudo-header fields, each a literal without indexing.
    pub fn request(method: &str, path: &str, authority: &str) -> Block {
        Block::default()
            .field(":method", method)
            .field(":scheme", "http")
            .field(":path", path)
            .field(":authority", authority)
    }

    /// A literal field without indexing, with a literal name (RFC 7541 §6.2.2).
    pub fn field(mut self, name: &str, value: &str) -> Block {
        self.0.push(0x00);
        self.string(name.as_bytes());
        self.string(value.as_bytes());
        self
    }

    /// A literal field with incremental indexing (§6.2.1): the server adds it to its dynamic
    /// table, where the first entry is index 62.
    pub fn insert(mut self, name: &str, value: &str) -> Block {
        self.0.push(0x40);
        self.string(name.as_bytes());
        self.string(value.as_bytes());
        self
    }

    /// An indexed field (§6.1): a reference to the static (1–61) or dynamic (62…) table.
    pub fn indexed(mut self, index: usize) -> Block {
        integer(&mut self.0, 0x80, 7, index);
        self
    }

    /// Bytes added as they are, valid HPACK or not.
    pub fn raw(mut self, bytes: &[u8]) -> Block {
        self.0.extend_from_slice(bytes);
        self
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.0.clone()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A string literal without Huffman coding (§5.2).
    fn string(&mut self, s: &[u8]) {
        integer(&mut self.0, 0x00, 7, s.len());
        self.0.extend_from_slice(s);
    }
}

/// An HPACK integer with an `prefix`-bit prefix, the first byte's other bits from `high` (§5.1).
fn integer(out: &mut Vec<u8>, high: u8, prefix: u32, mut value: usize) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.push(high | value as u8);
        return;
    }
    out.push(high | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128 + 128) as u8);
        value /= 128;
    }
    out.push(value as u8);
}

/// Reads an HPACK integer with a `prefix`-bit prefix from the front of `b`.
fn read_integer(b: &mut &[u8], prefix: u32) -> Option<usize> {
    let max = (1usize << prefix) - 1;
    let (first, rest) = b.split_first()?;
    *b = rest;
    let mut value = usize::from(*first) & max;
    if value < max {
        return Some(value);
    }
    for shift in (0..28).step_by(7) {
        let (byte, rest) = b.split_first()?;
        *b = rest;
        value += usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// The `:status` a response header block starts with, when it is a static-table entry
/// (200, 204, 206, 304, 400, 404, 500) or a literal whose value is digits (plain or Huffman
/// coded: the digits' codes are all this needs of RFC 7541 Appendix B). Dynamic-table
/// references, which a peer announcing a table size of 0 never receives, give `None`.
pub fn status_of_block(mut b: &[u8]) -> Option<u16> {
    // Dynamic table size updates (001xxxxx) may come first.
    while b.first()? & 0xe0 == 0x20 {
        read_integer(&mut b, 5)?;
    }
    let first = *b.first()?;
    if first & 0x80 != 0 {
        let index = read_integer(&mut b, 7)?;
        return [200, 204, 206, 304, 400, 404, 500].get(index.checked_sub(8)?).copied();
    }
    let name_index = if first & 0x40 != 0 { read_integer(&mut b, 6)? } else { read_integer(&mut b, 4)? };
    if !(8..=14).contains(&name_index) {
        return None;
    }
    let huffman = b.first()? & 0x80 != 0;
    let len = read_integer(&mut b, 7)?;
    let value = b.get(..len)?;
    let digits = if huffman { huffman_digits(value)? } else { String::from_utf8(value.to_vec()).ok()? };
    digits.parse().ok()
}

/// Decodes Huffman-coded digits: '0'–'2' are the 5-bit codes 0–2, '3'–'9' the 6-bit codes
/// 25–31; the end is padded with at most 7 one bits.
fn huffman_digits(bytes: &[u8]) -> Option<String> {
    let bits: Vec<u8> = bytes.iter().flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1)).collect();
    let value = |from: usize, n: usize| bits[from..from + n].iter().fold(0u8, |v, b| v << 1 | b);
    let mut out = String::new();
    let mut at = 0;
    while at < bits.len() {
        let left = bits.len() - at;
        if left < 8 && bits[at..].iter().all(|b| *b == 1) {
            break;
        }
        if left >= 5 && value(at, 5) <= 2 {
            out.push(char::from(b'0' + value(at, 5)));
            at += 5;
        } else if left >= 6 && (25..=31).contains(&value(at, 6)) {
            out.push(char::from(b'0' + value(at, 6) - 22));
            at += 6;
        } else {
            return None;
        }
    }
    Some(out)
}

/// Something to read and write HTTP/2 on: a TCP stream or a TLS stream over one.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// Where a raw (or well-behaved) HTTP/2 client connects.
#[derive(Clone, Debug)]
pub enum Dial {
    /// h2c with prior knowledge.
    Plain(SocketAddr),
    /// Mutual TLS presenting `identity`, trusting its bundle, offering ALPN `h2`.
    Mtls(SocketAddr, IdentityFiles),
}

impl Dial {
    pub async fn open(&self) -> Box<dyn Io> {
        match self {
            Dial::Plain(addr) => {
                let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
                tcp.set_nodelay(true).expect("nodelay");
                Box::new(tcp)
            }
            Dial::Mtls(addr, identity) => {
                let config = crate::tls::client_config_trusting(&identity.path("bundle.pem"), Some(identity), &[b"h2"]);
                Box::new(crate::tls::connect(*addr, config).await.expect("mTLS handshake"))
            }
        }
    }

    pub fn addr(&self) -> SocketAddr {
        match self {
            Dial::Plain(addr) | Dial::Mtls(addr, _) => *addr,
        }
    }
}

/// What the server has sent on a connection so far.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    /// The first `KEPT_FRAMES` frames.
    pub frames: Vec<Frame>,
    /// Every frame, kept or not.
    pub count: usize,
    /// The server closed the connection (or it broke).
    pub closed: bool,
}

impl Seen {
    /// `(last stream id, code)` of the first GOAWAY.
    pub fn goaway(&self) -> Option<(u32, u32)> {
        self.frames.iter().find_map(Frame::goaway_fields)
    }

    /// The RST_STREAM codes the server sent, by stream.
    pub fn resets(&self) -> Vec<(u32, u32)> {
        self.frames.iter().filter_map(|f| Some((f.stream, f.rst_code()?))).collect()
    }

    pub fn reset_of(&self, stream: u32) -> Option<u32> {
        self.frames.iter().filter(|f| f.stream == stream).find_map(Frame::rst_code)
    }

    /// The response status on `stream`, if a readable response HEADERS came.
    pub fn status_of(&self, stream: u32) -> Option<u16> {
        self.frames.iter().filter(|f| f.stream == stream).find_map(Frame::status)
    }

    /// Every response status, by stream.
    pub fn statuses(&self) -> Vec<(u32, u16)> {
        self.frames.iter().filter_map(|f| Some((f.stream, f.status()?))).collect()
    }

    /// Whether `stream` got an answer of any kind: a response, a reset, or a GOAWAY that
    /// leaves it out.
    pub fn answered(&self, stream: u32) -> bool {
        self.status_of(stream).is_some()
            || self.reset_of(stream).is_some()
            || self.goaway().is_some_and(|(last, _)| last < stream)
    }

    /// A short account of what came, for assertion messages.
    pub fn summary(&self) -> String {
        format!(
            "{} frames, goaway {:?}, {} resets (first {:?}), statuses {:?}, closed {}",
            self.count,
            self.goaway(),
            self.resets().len(),
            self.resets().first(),
            self.statuses().iter().take(5).collect::<Vec<_>>(),
            self.closed
        )
    }
}

/// A raw HTTP/2 client connection. Once connected, a task reads and records every frame the
/// server sends (unless made with [`RawH2::connect_unread`]); the test writes what it likes.
pub struct RawH2 {
    writer: WriteHalf<Box<dyn Io>>,
    seen: watch::Receiver<Seen>,
    /// The read half of a connection whose frames are never read.
    _unread: Option<ReadHalf<Box<dyn Io>>>,
    reader: Option<tokio::task::JoinHandle<()>>,
}

impl RawH2 {
    /// Sends the preface and a SETTINGS frame with `settings` (plus a header table size of
    /// 0), waits for the server's SETTINGS and acknowledges it; then records what comes.
    pub async fn connect(dial: &Dial, settings: &[(u16, u32)]) -> RawH2 {
        RawH2::start(dial, settings, true).await
    }

    /// Like [`RawH2::connect`], but nothing after the server's SETTINGS is ever read: what
    /// the server sends piles up in the socket buffers until it stops writing.
    pub async fn connect_unread(dial: &Dial, settings: &[(u16, u32)]) -> RawH2 {
        RawH2::start(dial, settings, false).await
    }

    async fn start(dial: &Dial, settings: &[(u16, u32)], read: bool) -> RawH2 {
        let (mut reader, mut writer) = tokio::io::split(dial.open().await);
        let mut all = vec![(HEADER_TABLE_SIZE, 0)];
        all.extend_from_slice(settings);
        let hello = [PREFACE, &Frame::settings(&all).encode()].concat();
        writer.write_all(&hello).await.expect("write the preface");
        let (tx, seen) = watch::channel(Seen::default());
        let handshake = async {
            loop {
                let frame = read_frame(&mut reader).await.expect("the server's SETTINGS");
                let is_settings = frame.kind == SETTINGS && frame.flags & ACK == 0;
                record(&tx, Some(frame));
                if is_settings {
                    return;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), handshake).await.expect("the server's SETTINGS within 10 s");
        writer.write_all(&Frame::settings_ack().encode()).await.expect("write SETTINGS ACK");
        let (unread, task) = if read {
            let task = tokio::spawn(async move {
                loop {
                    let frame = read_frame(&mut reader).await;
                    let done = frame.is_none();
                    record(&tx, frame);
                    if done {
                        return;
                    }
                }
            });
            (None, Some(task))
        } else {
            (Some(reader), None)
        };
        RawH2 { writer, seen, _unread: unread, reader: task }
    }

    /// Writes `frames` in one go; an error if the connection broke or the server did not
    /// take them within `WRITE_DEADLINE`.
    pub async fn send(&mut self, frames: &[Frame]) -> std::io::Result<()> {
        let bytes: Vec<u8> = frames.iter().flat_map(Frame::encode).collect();
        self.send_bytes(&bytes).await
    }

    /// Writes bytes as they are.
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match tokio::time::timeout(WRITE_DEADLINE, self.writer.write_all(bytes)).await {
            Ok(written) => written,
            Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the server stopped reading")),
        }
    }

    /// What the server has sent so far.
    pub fn seen(&self) -> Seen {
        self.seen.borrow().clone()
    }

    /// Waits up to `limit` for `what` to hold of what the server has sent; the record then.
    pub async fn wait_for(&mut self, limit: Duration, what: impl Fn(&Seen) -> bool) -> Result<Seen, Seen> {
        let waited = tokio::time::timeout(limit, self.seen.wait_for(|s| what(s))).await;
        let held = matches!(waited, Ok(Ok(_)));
        drop(waited);
        if held { Ok(self.seen()) } else { Err(self.seen()) }
    }

    /// Waits up to `limit` for the server to close the connection.
    pub async fn closed_within(&mut self, limit: Duration) -> Result<Seen, Seen> {
        self.wait_for(limit, |s| s.closed).await
    }
}

impl Drop for RawH2 {
    fn drop(&mut self) {
        if let Some(task) = self.reader.take() {
            task.abort();
        }
    }
}

fn record(tx: &watch::Sender<Seen>, frame: Option<Frame>) {
    tx.send_modify(|seen| match frame {
        Some(frame) => {
            seen.count += 1;
            if seen.frames.len() < KEPT_FRAMES {
                seen.frames.push(frame);
            }
        }
        None => seen.closed = true,
    });
}

/// Reads one frame; `None` at the end of the connection (or an error, a reset included).
pub async fn read_frame(r: &mut (impl AsyncRead + Unpin)) -> Option<Frame> {
    let mut head = [0u8; 9];
    r.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await.ok()?;
    // DATA is counted, not kept: a large response must not fill the test's memory.
    if head[3] == DATA {
        payload.clear();
    }
    Some(Frame { kind: head[3], flags: head[4], stream: be32(&head[5..9]) & 0x7fff_ffff, payload })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_round_trip_across_the_prefix() {
        for (prefix, value) in [(5, 10), (5, 31), (5, 1337), (7, 126), (7, 127), (7, 70_000), (4, 15)] {
            let mut out = Vec::new();
            integer(&mut out, 0, prefix, value);
            let mut b = out.as_slice();
            assert_eq!(read_integer(&mut b, prefix), Some(value), "prefix {prefix} value {value}: {out:?}");
            assert!(b.is_empty());
        }
        // RFC 7541 C.1.2: 1337 with a 5-bit prefix.
        let mut out = Vec::new();
        integer(&mut out, 0, 5, 1337);
        assert_eq!(out, [31, 154, 10]);
    }

    #[test]
    fn statuses_read_from_static_entries_and_literals() {
        assert_eq!(status_of_block(&[0x88]), Some(200));
        assert_eq!(status_of_block(&[0x8d]), Some(404));
        // A table size update to 0, then :status 200.
        assert_eq!(status_of_block(&[0x20, 0x88]), Some(200));
        // RFC 7541 C.6.1: `:status: 302` as a Huffman-coded literal with indexing.
        assert_eq!(status_of_block(&[0x48, 0x82, 0x64, 0x02]), Some(302));
        // C.5.1: the same, not Huffman coded.
        assert_eq!(status_of_block(&[0x48, 0x03, b'3', b'0', b'2']), Some(302));
        // Literal without indexing, name index 8, Huffman "431": 011010 011001 00001 + pad.
        assert_eq!(status_of_block(&[0x08, 0x82, 0b0110_1001, 0b1001_0000, 0b1111_1111][..4]), None);
        assert_eq!(status_of_block(&[0x08, 0x83, 0b0110_1001, 0b1001_0000, 0b1111_1111]), Some(431));
        // A dynamic-table reference cannot be read without the table.
        assert_eq!(status_of_block(&[0xbe]), None);
    }

    #[test]
    fn a_frame_is_its_nine_byte_head_and_payload() {
        let f = Frame::rst_stream(3, CANCEL).encode();
        assert_eq!(f, [0, 0, 4, RST_STREAM, 0, 0, 0, 0, 3, 0, 0, 0, 8]);
        let goaway = Frame::goaway(7, ENHANCE_YOUR_CALM);
        assert_eq!(goaway.goaway_fields(), Some((7, ENHANCE_YOUR_CALM)));
    }
}
