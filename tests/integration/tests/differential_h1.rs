//! Differential HTTP/1.1 parsing: what the proxy forwards must mean, to a second and
//! independent parser, what the client's bytes meant to that parser.
//!
//! The second parser is h11 (Python, `tools/h11_peer.py`), which shares no code with Weft's
//! own parser or with httparse. Each case's bytes are read twice by h11: once as the client
//! sent them, and once as the proxy forwarded them to an h11 backend. The proxy may refuse
//! anything (it is stricter than h11 in places, on purpose); what it forwards must be exactly
//! the requests h11 read from the client, in order (method, target, fields, body, trailers),
//! never one more, and never one h11 refused. Each request carries `X-Case: <n>` right after its
//! request line, so every forwarded request is traced to its case. Without python3 and h11
//! (`pip install h11`; `.ci/run` does) the test says why it was skipped.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use weft_integration::{Proxy, ProxyConfig, service};

const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/h11_peer.py");
/// Fields a proxy may add, drop or rewrite by RFC 9110 §7.6.1 and RFC 9112 §6-7: connection
/// management and message framing (the body is compared instead).
const HOP_BY_HOP: [&str; 7] =
    ["connection", "keep-alive", "proxy-connection", "te", "transfer-encoding", "content-length", "trailer"];

/// Trailer fields a recipient could mistake for header fields (framing, routing, credentials,
/// handling: RFC 9110 §6.5.1), which the proxy drops rather than forwards.
const NOT_IN_TRAILERS: [&str; 14] = [
    "authorization",
    "cache-control",
    "connection",
    "content-encoding",
    "content-length",
    "content-range",
    "content-type",
    "expect",
    "host",
    "proxy-authorization",
    "range",
    "te",
    "trailer",
    "transfer-encoding",
];

fn h11_available() -> bool {
    std::process::Command::new("python3")
        .args(["-c", "import h11"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The h11 backend: every request it reads, as JSON, in arrival order.
struct H11Backend {
    _child: Child,
    port: u16,
    seen: Arc<Mutex<Vec<Value>>>,
}

impl H11Backend {
    async fn start() -> H11Backend {
        let mut child = Command::new("python3")
            .args([PEER, "serve"])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 h11_peer.py serve");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let port = lines.next_line().await.unwrap().expect("h11 backend port").parse().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().unwrap().push(serde_json::from_str(&line).expect("h11 backend JSON"));
            }
        });
        H11Backend { _child: child, port, seen }
    }
}

/// What h11 reads from each case's bytes as a server: `{case, requests, end}` per case.
async fn h11_reading(cases: &[Vec<u8>]) -> Vec<Value> {
    let mut child = Command::new("python3")
        .args([PEER, "parse"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 h11_peer.py parse");
    let mut input = String::new();
    for (n, bytes) in cases.iter().enumerate() {
        let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
        input.push_str(&json!({"case": n, "bytes": encoded}).to_string());
        input.push('\n');
    }
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    assert!(out.status.success(), "h11_peer.py parse failed");
    let readings: Vec<Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(readings.len(), cases.len());
    readings
}

/// A small deterministic generator (xorshift64*), so a failing case is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len())]
    }
}

/// Requests written by hand: the framing and field shapes smuggling depends on, and the
/// well-formed shapes around them. `{c}` becomes the case number.
const WRITTEN: &[&str] = &[
    "GET / HTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\n\r\n",
    "GET /a/b?q=1&r=%2F HTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\nAccept: */*\r\n\r\n",
    "POST /up HTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\nContent-Length: 5\r\n\r\nhello",
    "POST /up HTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "POST /up HTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1;b=\"q\"\r\nhello\r\n0\r\n\r\n",
    "POST /up HTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n0005\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n",
    "POST /up HTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nContent-Length: 9\r\n\r\n",
    "GET /1 HTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\n\r\nPOST /2 HTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\nContent-Length: 2\r\n\r\nhiGET /3 HTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\n\r\n",
    "GET /1 HTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\nConnection: close\r\n\r\nGET /after-close HTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\n\r\n",
    "GET / HTTP/1.0\r\nX-Case: {c}\r\nHost: api\r\n\r\n",
    "GET /ows HTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\nX-Ows: \t padded \t\r\nX-Empty:\r\n\r\n",
    "POST /e HTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
    "GET /body-on-get HTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\nContent-Length: 3\r\n\r\nabc",
    "GET http://api/absolute HTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\n\r\n",
    "GET http://elsewhere/absolute HTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\n\r\n",
    "GET / HTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\nHost: elsewhere\r\n\r\n",
    "GET / HTTP/1.1\r\nX-Case: {c}\r\n\r\n",
    "GET / HTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\nConnection: keep-alive\r\nConnection: x-secret\r\nX-Secret: 1\r\n\r\n",
    // Both framings, in either order, and their look-alikes.
    "POST / HTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\n\r\n",
    "POST / HTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\nTransfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\n\r\n",
    "POST / HTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\nTransfer-Encoding: xchunked\r\nContent-Length: 5\r\n\r\nhello",
    "POST / HTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\nTransfer-Encoding: chunked, identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "POST / HTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\nTransfer-Encoding: identity, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "POST / HTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "POST / HTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\nTransfer-Encoding:\tchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "POST / HTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\nTransfer-Encoding : chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "POST / HTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\nX: y\r\nTransfer-Encoding:\r\n chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    // Lengths: repeated, listed, signed, spaced, hex, huge.
    "POST / HTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    "POST / HTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\nContent-Length: 5, 5\r\n\r\nhello",
    "POST / HTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\nContent-Length: 2\r\nContent-Length: 5\r\n\r\nhello",
    "POST / HTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\nContent-Length: +5\r\n\r\nhello",
    "POST / HTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\nContent-Length: -5\r\n\r\nhello",
    "POST / HTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\nContent-Length:  5 \r\n\r\nhello",
    "POST / HTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\nContent-Length: 0x5\r\n\r\nhello",
    "POST / HTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\nContent-Length: 99999999999999999999\r\n\r\nhello",
    "POST / HTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\nContent-Length : 5\r\n\r\nhello",
    // Chunk sizes and extensions.
    "POST / HTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n5x\r\nhello\r\n0\r\n\r\n",
    "POST / HTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
    "POST / HTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff5\r\nhello\r\n0\r\n\r\n",
    "POST / HTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n",
    "POST / HTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n5;a\rb\r\nhello\r\n0\r\n\r\n",
    "POST / HTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n5;a\nb\r\nhello\r\n0\r\n\r\n",
    "POST / HTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
    "POST / HTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n",
    "POST / HTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nTransfer-Encoding: chunked\r\n\r\n",
    // Line endings, folding, control bytes, request-line shapes.
    "GET / HTTP/1.1\nX-Case: {c}\nHost: api\n\n",
    "GET / HTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\nX-A: one\r\n two\r\n\r\n",
    "GET / HTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\nX-Cr: a\rb\r\n\r\n",
    "GET / HTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\nX-Nul: a\0b\r\n\r\n",
    "GET / HTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\nX Y: 1\r\n\r\n",
    "GET / HTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\n: empty-name\r\n\r\n",
    "GET  / HTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\n\r\n",
    "GET / HTTP/1.1 \r\nX-Case: {c}\r\nHost: api\r\n\r\n",
    "GET /\tHTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\n\r\n",
    "GET / HTTP/1.2\r\nX-Case: {c}\r\nHost: api\r\n\r\n",
    "get / HTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\n\r\n",
    "GET /a b HTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\n\r\n",
    "GET / HTTP/1.1\r\n X-Case: {c}\r\nHost: api\r\n\r\n",
    "\r\nGET /leading-crlf HTTP/1.1\r\nX-Case: {c}\r\nHost: api\r\n\r\n",
];

/// One generated request: well-formed pieces in varied shapes (field case, whitespace, framing,
/// chunk splits and extensions, pipelining), ending in `Connection: close` one time in eight.
fn generated(rng: &mut Rng, case: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..=rng.below(3) {
        let method = rng.pick(&["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]);
        let path = rng.pick(&["/", "/a", "/a/b/c", "/x?y=1", "/%7Euser", "/a;p=1", "/q?a=b&c=%20"]);
        out.extend_from_slice(format!("{method} {path} HTTP/1.1\r\nX-Case: {case}\r\n").as_bytes());
        let host = rng.pick(&["Host: api", "host: api", "HOST:api", "Host: api:80", "Host:\tapi\t"]);
        out.extend_from_slice(format!("{host}\r\n").as_bytes());
        for _ in 0..rng.below(4) {
            let name = rng.pick(&["X-Thing", "accept", "User-Agent", "x-list", "Cookie", "X-Weird"]);
            let value = rng.pick(&["a", "a, b", "  spaced  ", "q=\"x,y\"", "", "ünïcode", "%00", "a;b=c"]);
            out.extend_from_slice(format!("{name}:{}{value}\r\n", rng.pick(&["", " ", "\t"])).as_bytes());
        }
        let body: Vec<u8> = (0..rng.below(40)).map(|i| b'a' + (i % 26) as u8).collect();
        let chunked = !body.is_empty() && rng.below(2) == 0;
        if chunked {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
        } else if !body.is_empty() {
            out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
        }
        let close = rng.below(8) == 0;
        if close {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if chunked {
            let mut rest = &body[..];
            while !rest.is_empty() {
                let n = 1 + rng.below(rest.len());
                let ext = rng.pick(&["", ";e", ";e=1", ";e=\"v\""]);
                out.extend_from_slice(format!("{n:x}{ext}\r\n").as_bytes());
                out.extend_from_slice(&rest[..n]);
                out.extend_from_slice(b"\r\n");
                rest = &rest[n..];
            }
            out.extend_from_slice(b"0\r\n");
            if rng.below(4) == 0 {
                out.extend_from_slice(b"X-Trailer: done\r\n");
            }
            out.extend_from_slice(b"\r\n");
        } else {
            out.extend_from_slice(&body);
        }
        if close {
            break;
        }
    }
    out
}

/// Where the answer to request `i` of case `n` is in `answer` (the h11 backend names it in
/// `x-answer`, which HEAD answers carry too).
fn answered(answer: &[u8], n: usize, i: usize) -> Option<usize> {
    weft_integration::net::find(&answer.to_ascii_lowercase(), format!("\r\nx-answer: {n}-{i}\r\n").as_bytes())
}

/// A request target as the proxy routes, authorizes and forwards it: in origin form (an
/// absolute-form target's authority is the Host it sends, RFC 9112 §3.2.2), percent-encoded
/// unreserved characters decoded and other escapes in upper case (RFC 3986 §6.2.2).
fn normalized(target: &str) -> String {
    let origin = match target.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |at| &rest[at..]),
        None => target,
    };
    let bytes = origin.as_bytes();
    let (mut out, mut i) = (String::new(), 0);
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(c)) if c.is_ascii_alphanumeric() || b"-._~".contains(&c) => out.push(c as char),
            (b'%', Some(c)) => out.push_str(&format!("%{c:02X}")),
            (b, _) => out.push(b as char),
        }
        i += if bytes[i] == b'%' && hex.is_some() { 3 } else { 1 };
    }
    out
}

/// Sends case `n` on its own connection and reads until the proxy closes it, the answers to
/// all `expected` requests have come, or nothing has come for 2 s. The connection is not
/// half-closed: a client's FIN is its going away, which cancels what it asked for.
async fn exchange(proxy: std::net::SocketAddr, n: usize, bytes: Vec<u8>, expected: usize) -> Vec<u8> {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    let _ = stream.write_all(&bytes).await;
    let (mut got, mut buf) = (Vec::new(), [0u8; 8192]);
    loop {
        if expected > 0 && answered(&got, n, expected - 1).is_some() {
            return got;
        }
        match tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await {
            Ok(Ok(read)) if read > 0 => got.extend_from_slice(&buf[..read]),
            _ => return got,
        }
    }
}

/// The fields a forwarded request must carry as the client sent them: all but hop-by-hop ones
/// and those the `Connection` field names. Names are compared case-insensitively (h11 lowers
/// them), values exactly, order kept per name.
fn end_to_end_fields(request: &Value) -> BTreeMap<String, Vec<String>> {
    let fields = request["headers"].as_array().unwrap();
    let named: Vec<String> = fields
        .iter()
        .filter(|f| f[0].as_str().unwrap().eq_ignore_ascii_case("connection"))
        .flat_map(|f| f[1].as_str().unwrap().split(',').map(|t| t.trim().to_ascii_lowercase()).collect::<Vec<_>>())
        .collect();
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for field in fields {
        let name = field[0].as_str().unwrap().to_ascii_lowercase();
        if HOP_BY_HOP.contains(&name.as_str()) || named.contains(&name) {
            continue;
        }
        out.entry(name).or_default().push(field[1].as_str().unwrap().to_string());
    }
    out
}

/// Why a forwarded request does not mean what the client's request meant to h11, if it does not.
fn differs(sent: &Value, forwarded: &Value, proxy_fields: &[&str]) -> Option<String> {
    let (want, got) = (normalized(sent["target"].as_str().unwrap()), forwarded["target"].as_str().unwrap());
    if want != got {
        return Some(format!("target: sent {} (normalized {want:?}) forwarded {got:?}", sent["target"]));
    }
    let trailers: Vec<&Value> = sent["trailers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| !NOT_IN_TRAILERS.contains(&f[0].as_str().unwrap().to_ascii_lowercase().as_str()))
        .collect();
    if trailers != forwarded["trailers"].as_array().unwrap().iter().collect::<Vec<_>>() {
        return Some(format!("trailers: sent {} forwarded {}", sent["trailers"], forwarded["trailers"]));
    }
    for key in ["method", "body"] {
        if sent[key] != forwarded[key] {
            return Some(format!("{key}: sent {} forwarded {}", sent[key], forwarded[key]));
        }
    }
    let want = end_to_end_fields(sent);
    let mut got = end_to_end_fields(forwarded);
    got.retain(|name, _| want.contains_key(name) || !proxy_fields.contains(&name.as_str()));
    (want != got).then(|| format!("fields: sent {want:?} forwarded {got:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_proxy_forwards_means_to_an_independent_parser_what_the_client_sent() {
    if !h11_available() {
        eprintln!("skipped: python3 with h11 is not installed (pip install h11; .ci/run does)");
        return;
    }
    let backend = H11Backend::start().await;

    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], backend.port));
    let proxy = Proxy::start(ProxyConfig {
        proxy_spec: "http: {clientIdleTimeout: 2s, headerReadTimeout: 2s}".to_string(),
        policy: service("api", "http", &[addr]),
        ..Default::default()
    })
    .await;

    let mut cases: Vec<Vec<u8>> =
        WRITTEN.iter().enumerate().map(|(n, c)| c.replace("{c}", &n.to_string())).map(String::into_bytes).collect();
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    while cases.len() < 300 {
        let n = cases.len();
        cases.push(generated(&mut rng, n));
    }
    let readings = h11_reading(&cases).await;

    let started = std::time::Instant::now();
    let exchanges: Vec<_> = cases
        .iter()
        .zip(&readings)
        .enumerate()
        .map(|(n, (c, r))| {
            tokio::spawn(exchange(proxy.outbound(), n, c.clone(), r["requests"].as_array().unwrap().len()))
        })
        .collect();
    let mut answers = Vec::with_capacity(cases.len());
    for e in exchanges {
        answers.push(e.await.unwrap());
    }
    let took = started.elapsed();
    // Each answer the client got was sent after its request was printed; a request the proxy
    // forwarded after the client stopped reading would show up here a moment later.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let seen = backend.seen.lock().unwrap().clone();

    let mut by_case: BTreeMap<usize, Vec<Value>> = BTreeMap::new();
    let mut cut = Vec::new();
    for request in &seen {
        if let Some(why) = request.get("refused") {
            // A body the proxy had begun to stream and then ended, because the client's bytes
            // went bad (or stopped) after its head: never complete at the backend, so never
            // served, but only allowed where h11 found the client's bytes bad or short too.
            let case: Option<usize> = request["case"].as_str().and_then(|c| c.parse().ok());
            let bad_input = case.is_some_and(|n| !readings[n]["end"].as_str().unwrap().starts_with("closed"));
            assert!(
                why.as_str().unwrap().contains("incomplete") && bad_input,
                "h11 refused what the proxy forwarded: {request}"
            );
            cut.extend(case);
            continue;
        }
        let case = end_to_end_fields(request).get("x-case").and_then(|v| v.first()?.parse().ok());
        let Some(case) = case else { panic!("a forwarded request no case sent: {request}") };
        by_case.entry(case).or_default().push(request.clone());
    }
    // Fields the proxy itself adds to what it forwards (its own, never taken from the client).
    let proxy_fields = ["weft-client-id", "x-forwarded-for", "x-forwarded-proto", "forwarded", "via"];
    let (mut forwarded_total, mut refused_total, mut failures) = (0, 0, Vec::new());
    for (n, reading) in readings.iter().enumerate() {
        let sent = reading["requests"].as_array().unwrap();
        let forwarded = by_case.remove(&n).unwrap_or_default();
        let shown = String::from_utf8_lossy(&cases[n]);
        forwarded_total += forwarded.len();
        if forwarded.len() < sent.len() || reading["end"].as_str().unwrap().starts_with("refused") {
            refused_total += 1;
        }
        if forwarded.len() > sent.len() {
            failures.push(format!(
                "case {n} {shown:?}: {} forwarded, h11 read {} ({})",
                forwarded.len(),
                sent.len(),
                reading["end"]
            ));
            continue;
        }
        for (i, (s, f)) in sent.iter().zip(&forwarded).enumerate() {
            if let Some(why) = differs(s, f, &proxy_fields) {
                failures.push(format!("case {n} request {i} {shown:?}: {why}"));
            }
        }
        // The client got each forwarded request's answer, in order.
        let mut at = 0;
        for i in 0..forwarded.len() {
            match answered(&answers[n][at..], n, i) {
                Some(found) => at += found,
                None => failures.push(format!(
                    "case {n} {shown:?}: answer {i} missing from {:?}",
                    String::from_utf8_lossy(&answers[n])
                )),
            }
        }
    }
    assert!(by_case.is_empty(), "forwarded requests of no case: {by_case:?}");
    assert!(failures.is_empty(), "{} disagreements:\n{}", failures.len(), failures.join("\n"));
    // The cases must exercise both outcomes, or the comparison proves little.
    assert!(forwarded_total > 250, "only {forwarded_total} requests forwarded");
    assert!(refused_total > 30, "only {refused_total} cases refused in part or whole");
    eprintln!(
        "{} cases, {forwarded_total} requests forwarded, {refused_total} cases refused in part or whole, {} cut short, in {took:?}",
        cases.len(),
        cut.len()
    );
}
