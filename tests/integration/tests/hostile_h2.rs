//! Hostile HTTP/2 clients (issue 24): floods, resets, bombs, a client that never reads, invalid
//! frames and header fields, each against the outbound plaintext listener and the inbound
//! mTLS listener of one proxy. Whatever the client does, the proxy's CPU and memory stay
//! bounded, the offending stream or connection is closed, nothing malformed reaches the app,
//! and a well-behaved client on another connection keeps getting 200s throughout.
//!
//! The figures each case measured are printed (`cargo test … -- --nocapture`); docs/testing.md
//! "HTTP/2 hostile input" lists them.

use std::time::{Duration, Instant};

use weft_integration::client::H2Conn;
use weft_integration::h2raw::{self, Block, Dial, Frame, RawH2, Seen};
use weft_integration::mesh::{IdentityFiles, Pki, spiffe};
use weft_integration::{Backend, Proxy, ProxyConfig, Req, document, service};

/// Frames in each flood.
const FLOOD: u32 = 20_000;
/// CPU the proxy may spend on one flood of `FLOOD` frames (it spends tens of milliseconds).
const FLOOD_CPU: Duration = Duration::from_secs(2);
/// Growth of the proxy's resident memory allowed over one case.
const RSS_GROWTH: u64 = 16 * 1024 * 1024;
/// `headerReadTimeout` and `clientIdleTimeout` of the proxy under test.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(1);
const IDLE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the proxy may take to close a connection it should close: well past any of its
/// timeouts.
const CLOSE_LIMIT: Duration = Duration::from_secs(15);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Side {
    /// h2c on the outbound listener (the local app's calls).
    Outbound,
    /// HTTP/2 over mTLS on the inbound listener (a peer proxy's calls).
    Inbound,
}

const SIDES: [Side; 2] = [Side::Outbound, Side::Inbound];

/// One proxy with both listeners, its app, and a caller identity for the inbound side.
struct World {
    app: Backend,
    proxy: Proxy,
    caller: IdentityFiles,
    _pki: Pki,
}

impl World {
    async fn start() -> World {
        let pki = Pki::new("hostile-h2");
        let own = pki.issue("server", &spiffe("server"), "1h");
        let caller = pki.issue("client", &spiffe("client"), "1h");
        let app = Backend::start("app").await;
        // The concurrent-streams case keeps 1024 requests open: the service's concurrency
        // limit (1024 by default) must not be what refuses the control client's, and the
        // app, in this test's process on a loaded machine, may take over a second to accept
        // 1024 connections at once. Outbound the service is `api`; inbound, the proxy's own.
        let policy = |name: &str| {
            let spec = format!("service: {name}\nconnectTimeout: 5s\nlimits: {{maxConcurrentRequests: 4096}}\n");
            document("TrafficPolicy", name, &spec)
        };
        let limits = format!("{}{}", policy("api"), policy("server"));
        let proxy = Proxy::start(ProxyConfig {
            service: "server".to_string(),
            inbound_app: Some(app.addr()),
            proxy_spec: format!(
                "{}\nhttp: {{headerReadTimeout: {}s, clientIdleTimeout: {}s}}",
                own.tls_line(),
                HEADER_READ_TIMEOUT.as_secs(),
                IDLE_TIMEOUT.as_secs()
            ),
            policy: format!("{}{limits}", service("api", "http", &[app.addr()])),
            ..Default::default()
        })
        .await;
        World { app, proxy, caller, _pki: pki }
    }

    fn dial(&self, side: Side) -> Dial {
        match side {
            Side::Outbound => Dial::Plain(self.proxy.outbound()),
            Side::Inbound => Dial::Mtls(self.proxy.inbound(), self.caller.clone()),
        }
    }

    /// A raw connection with the client's `settings`, its frames recorded.
    async fn raw(&self, side: Side, settings: &[(u16, u32)]) -> RawH2 {
        RawH2::connect(&self.dial(side), settings).await
    }

    fn usage(&self) -> Usage {
        Usage { cpu: self.proxy.cpu_time(), rss: self.proxy.rss_bytes(), at: Instant::now() }
    }
}

/// The `:authority` that reaches the app: the service's name outbound; inbound, anything.
fn authority(side: Side) -> &'static str {
    match side {
        Side::Outbound => "api",
        Side::Inbound => "server",
    }
}

/// A well-formed GET of `path`.
fn get(side: Side, path: &str) -> Block {
    Block::request("GET", path, authority(side))
}

/// Odd client stream ids: the `n`th stream a client opens (from 0).
fn stream(n: u32) -> u32 {
    2 * n + 1
}

/// The proxy's CPU time and memory at one moment.
struct Usage {
    cpu: Duration,
    rss: u64,
    at: Instant,
}

impl Usage {
    /// What the proxy used since `self`: asserts the bounds and prints the figures.
    fn check(&self, world: &World, case: &str, side: Side, outcome: &str) {
        let now = world.usage();
        let cpu = now.cpu.saturating_sub(self.cpu);
        let growth = now.rss.saturating_sub(self.rss);
        eprintln!(
            "FIGURES {case} {side:?}: {outcome}; proxy CPU {} ms, RSS {} -> {} KiB (+{} KiB), {:?}",
            cpu.as_millis(),
            self.rss / 1024,
            now.rss / 1024,
            growth / 1024,
            self.at.elapsed()
        );
        assert!(cpu < FLOOD_CPU, "{case} {side:?}: the proxy spent {cpu:?} of CPU ({outcome})");
        assert!(growth < RSS_GROWTH, "{case} {side:?}: the proxy grew by {} KiB ({outcome})", growth / 1024);
    }
}

/// A well-behaved client (hyper's) on a connection of its own, calling every 20 ms while a
/// case runs: every call must get a 200.
struct Control {
    stop: tokio::sync::oneshot::Sender<()>,
    /// Calls answered 200, and the others: the proxy's error reason (`weft-proxy-error`), or
    /// what went wrong.
    task: tokio::task::JoinHandle<(usize, Vec<String>)>,
}

impl Control {
    async fn start(world: &World, side: Side) -> Control {
        let conn = H2Conn::over(world.dial(side).open().await).await.expect("control connection");
        let req = Req::get("/control").host(authority(side));
        let first = conn.send(&req).await.expect("control request");
        assert_eq!(first.status, 200, "the control client before the case: {first:?}");
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let (mut ok, mut failures) = (1, Vec::new());
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tick.tick() => {}
                }
                match conn.send(&req).await {
                    Ok(resp) if resp.status == 200 => ok += 1,
                    Ok(resp) => failures.push(resp.proxy_error().unwrap_or("no reason").to_string()),
                    Err(e) => failures.push(e.to_string()),
                }
            }
            // One more after the case, on the same connection.
            match conn.send(&req).await {
                Ok(resp) if resp.status == 200 => ok += 1,
                other => failures.push(format!("after the case: {other:?}")),
            }
            (ok, failures)
        });
        Control { stop, task }
    }

    /// Stops the client; asserts that every call it made got a 200.
    async fn finish(self, case: &str, side: Side) {
        self.finish_tolerating(case, side, &[]).await;
    }

    /// Like [`Control::finish`], accepting answers the proxy made itself for one of `reasons`
    /// (limits shared by every connection); returns how many there were.
    async fn finish_tolerating(self, case: &str, side: Side, reasons: &[&str]) -> usize {
        let _ = self.stop.send(());
        let (ok, failures) = self.task.await.expect("control task");
        let unexpected: Vec<&String> = failures.iter().filter(|f| !reasons.contains(&f.as_str())).collect();
        assert!(unexpected.is_empty(), "{case} {side:?}: the control client was affected: {failures:?}");
        assert!(ok >= 2, "{case} {side:?}: the control client made {ok} calls");
        failures.len()
    }
}

/// Sends `frames` in batches of `batch` until all are sent or the proxy stops taking them
/// (it closed the connection, or stopped reading); returns how many were sent.
async fn flood(h2: &mut RawH2, frames: impl Iterator<Item = Frame>, batch: usize) -> usize {
    let frames: Vec<Frame> = frames.collect();
    let mut sent = 0;
    for chunk in frames.chunks(batch) {
        if h2.send(chunk).await.is_err() {
            break;
        }
        sent += chunk.len();
    }
    sent
}

/// Waits for the proxy to close `h2`; panics if it is still open after `CLOSE_LIMIT`.
async fn closed(h2: &mut RawH2, case: &str, side: Side) -> Seen {
    h2.closed_within(CLOSE_LIMIT)
        .await
        .unwrap_or_else(|seen| panic!("{case} {side:?}: still open after {CLOSE_LIMIT:?}: {}", seen.summary()))
}

/// Sends a well-formed GET on stream `id` and waits for its 200.
async fn served_after(h2: &mut RawH2, side: Side, id: u32, case: &str) {
    h2.send(&[Frame::headers(id, h2raw::END_STREAM, &get(side, "/after"))]).await.expect("write a request");
    let seen = h2.wait_for(Duration::from_secs(10), |s| s.answered(id)).await.unwrap_or_else(|s| s);
    assert_eq!(seen.status_of(id), Some(200), "{case} {side:?}: a request afterwards: {}", seen.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_is_refused_with_goaway_before_the_app_sees_it() {
    let world = World::start().await;
    for side in SIDES {
        let control = Control::start(&world, side).await;
        let before = world.usage();
        let mut h2 = world.raw(side, &[]).await;
        let block = get(side, "/reset");
        let pairs = (0..FLOOD / 2).flat_map(|n| {
            [Frame::headers(stream(n), h2raw::END_STREAM, &block), Frame::rst_stream(stream(n), h2raw::CANCEL)]
        });
        let sent = flood(&mut h2, pairs, 1000).await;
        let seen = closed(&mut h2, "rapid reset", side).await;
        let (last, code) = seen.goaway().unwrap_or_else(|| panic!("no GOAWAY: {}", seen.summary()));
        assert_eq!(code, h2raw::ENHANCE_YOUR_CALM, "{}", seen.summary());
        let reached = world.app.hits_at("reset");
        assert!(reached <= 50, "{reached} reset streams reached the app ({})", seen.summary());
        let outcome = format!(
            "{sent} frames written, GOAWAY ENHANCE_YOUR_CALM after stream {last} ({} streams), {reached} reached the app",
            last.div_ceil(2)
        );
        before.check(&world, "rapid reset", side, &outcome);
        control.finish("rapid reset", side).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuation_flood_closes_the_connection_with_memory_bounded() {
    let world = World::start().await;
    for side in SIDES {
        let control = Control::start(&world, side).await;
        // Shapes: full frames of header fields (16 KiB each), and empty frames.
        let field = Block::default().field("x-flood", &"a".repeat(16_000)).bytes();
        for (shape, fragment, count) in [("16 KiB", field, 5_000), ("empty", Vec::new(), FLOOD as usize)] {
            let before = world.usage();
            let mut h2 = world.raw(side, &[]).await;
            let open = Frame::headers_open(1, h2raw::END_STREAM, &get(side, "/continuation"));
            let frames =
                std::iter::once(open).chain((0..count).map(|_| Frame::continuation(1, false, fragment.clone())));
            let sent = flood(&mut h2, frames, 50).await;
            let seen = closed(&mut h2, "CONTINUATION flood", side).await;
            assert_eq!(seen.status_of(1), None, "no response to an unfinished header block: {}", seen.summary());
            let outcome = format!("{shape}: {sent} frames written, then closed, GOAWAY {:?}", seen.goaway());
            before.check(&world, "CONTINUATION flood", side, &outcome);
        }
        assert_eq!(world.app.hits_at("continuation"), 0);
        control.finish("CONTINUATION flood", side).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_ping_window_update_and_empty_data_floods_stay_bounded() {
    let world = World::start().await;
    for side in SIDES {
        let control = Control::start(&world, side).await;

        let before = world.usage();
        let mut h2 = world.raw(side, &[]).await;
        let settings = (0..FLOOD).map(|_| Frame::settings(&[(h2raw::INITIAL_WINDOW_SIZE, 65_535)]));
        let sent = flood(&mut h2, settings, 1000).await;
        let outcome = match h2.wait_for(Duration::from_secs(10), |s| s.closed || acks(s) > FLOOD as usize).await {
            Ok(seen) if seen.closed => format!("{sent} written, closed: {}", seen.summary()),
            Ok(seen) => {
                served_after(&mut h2, side, 1, "SETTINGS flood").await;
                format!("{sent} written, survived: {} acknowledged, then a request served", acks(&seen) - 1)
            }
            Err(seen) => panic!("SETTINGS flood {side:?}: neither acknowledged nor closed: {}", seen.summary()),
        };
        before.check(&world, "SETTINGS flood", side, &outcome);

        // PINGs whose acknowledgements are never read: the proxy must stop reading, not queue.
        let before = world.usage();
        let mut h2 = RawH2::connect_unread(&world.dial(side), &[]).await;
        let pings = (0..FLOOD).map(|n| Frame::ping(u64::from(n).to_be_bytes()));
        let sent = flood(&mut h2, pings, 1000).await;
        let outcome = if sent < FLOOD as usize { "the proxy stopped reading" } else { "all taken" };
        before.check(&world, "PING flood (acks unread)", side, &format!("{sent} of {FLOOD} written, {outcome}"));
        drop(h2);

        let before = world.usage();
        let mut h2 = world.raw(side, &[]).await;
        let updates = (0..FLOOD).map(|_| Frame::window_update(0, 1));
        let sent = flood(&mut h2, updates, 1000).await;
        served_after(&mut h2, side, 1, "WINDOW_UPDATE flood").await;
        // The connection window is now 65,535 + 20,000: one more 2^31-1 overflows it.
        h2.send(&[Frame::window_update(0, 0x7fff_ffff)]).await.expect("write the overflow");
        let seen = closed(&mut h2, "WINDOW_UPDATE overflow", side).await;
        assert_eq!(seen.goaway().map(|g| g.1), Some(h2raw::FLOW_CONTROL_ERROR), "{}", seen.summary());
        let outcome =
            format!("{sent} of 1-byte increments survived; the overflow past 2^31-1: GOAWAY FLOW_CONTROL_ERROR");
        before.check(&world, "WINDOW_UPDATE flood", side, &outcome);

        let before = world.usage();
        let mut h2 = world.raw(side, &[]).await;
        let open = Frame::headers(1, 0, &Block::request("POST", "/data", authority(side)));
        let empty = (0..FLOOD).map(|_| Frame::data(1, false, []));
        let sent = flood(&mut h2, std::iter::once(open).chain(empty), 1000).await;
        // h2 allows 100 empty DATA frames that do not end their stream (framing overhead
        // with nothing to deliver), then says goodbye.
        let seen = closed(&mut h2, "empty DATA flood", side).await;
        assert_eq!(seen.goaway().map(|g| g.1), Some(h2raw::ENHANCE_YOUR_CALM), "{}", seen.summary());
        let outcome = format!("{sent} written before the close was seen; GOAWAY ENHANCE_YOUR_CALM");
        assert!(world.app.hits_at("data") <= 1, "one request at most");
        before.check(&world, "empty DATA flood", side, &outcome);

        control.finish("floods", side).await;
    }
}

/// SETTINGS acknowledgements the proxy sent.
fn acks(seen: &Seen) -> usize {
    seen.frames.iter().filter(|f| f.kind == h2raw::SETTINGS && f.flags & h2raw::ACK != 0).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_max_concurrent_streams_are_refused_and_the_rest_served() {
    // The proxy's MAX_CONCURRENT_STREAMS: outbound, where the app is the only client, 1024;
    // inbound, where callers share the app's concurrency budget (1024 by default), 256.
    let limit = |side: Side| match side {
        Side::Outbound => 1024u32,
        Side::Inbound => 256,
    };
    const OPENED: u32 = 1024 + 76;
    let world = World::start().await;
    for side in SIDES {
        let max_streams = limit(side);
        let control = Control::start(&world, side).await;
        let before = world.usage();
        let mut h2 = world.raw(side, &[]).await;
        // Each request waits 2 s at the app, so all of them are open at once.
        let block = get(side, "/streams/delay/2000");
        let opens: Vec<Frame> = (0..OPENED).map(|n| Frame::headers(stream(n), h2raw::END_STREAM, &block)).collect();
        h2.send(&opens).await.expect("write the streams");
        let seen = h2
            .wait_for(Duration::from_secs(30), |s| (0..OPENED).all(|n| s.answered(stream(n))))
            .await
            .unwrap_or_else(|s| panic!("{side:?}: not every stream was answered: {}", s.summary()));
        let count = |wanted: &[u16]| seen.statuses().iter().filter(|(_, status)| wanted.contains(status)).count();
        let (served, shed) = (count(&[200]), count(&[502, 503]));
        let refused = seen.resets().iter().filter(|(_, code)| *code == h2raw::REFUSED_STREAM).count();
        assert_eq!(refused as u32, OPENED - max_streams, "{side:?}: {}", seen.summary());
        assert!(seen.goaway().is_none(), "the connection itself is fine: {}", seen.summary());
        // Every allowed stream gets an HTTP answer. Outbound the TrafficPolicy gives room for
        // all. Inbound the app's cluster has the fixed defaults (maxConcurrentRequests 1024,
        // connectTimeout 1s): the connection's 256 leave room for the control client, which
        // must never be refused for concurrency; 256 connections to the app at once on a
        // loaded machine may see a connect timeout, so a 502 is tolerated there.
        let tolerated: &[&str] = match side {
            Side::Outbound => {
                assert_eq!(served as u32, max_streams, "{}", seen.summary());
                &[]
            }
            Side::Inbound => {
                assert_eq!((served + shed) as u32, max_streams, "{}", seen.summary());
                &["connect-failed"]
            }
        };
        let control_shed = control.finish_tolerating("concurrent streams", side, tolerated).await;
        let outcome = format!(
            "{OPENED} opened: {served} served, {shed} shed by the proxy (502/503), {refused} REFUSED_STREAM; \
             control client: {control_shed} shed"
        );
        before.check(&world, "concurrent streams", side, &outcome);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hpack_bomb_is_refused_before_the_app_sees_it() {
    let world = World::start().await;
    for side in SIDES {
        let control = Control::start(&world, side).await;
        let before = world.usage();
        let mut h2 = world.raw(side, &[]).await;
        // One 4,000-byte field in the dynamic table (index 62), then 3,000 one-byte references
        // to it: a 7 KiB block that decodes to 12 MB.
        let mut bomb = get(side, "/bomb").insert("x-bomb", &"b".repeat(4000));
        for _ in 0..3000 {
            bomb = bomb.indexed(62);
        }
        h2.send(&[Frame::headers(1, h2raw::END_STREAM, &bomb)]).await.expect("write the bomb");
        let seen = h2.wait_for(Duration::from_secs(10), |s| s.answered(1) || s.closed).await.unwrap_or_else(|s| s);
        let refused = matches!(seen.status_of(1), Some(431)) || seen.reset_of(1).is_some() || seen.goaway().is_some();
        assert!(refused, "{side:?}: the bomb was not refused: {}", seen.summary());
        assert_eq!(world.app.hits_at("bomb"), 0, "the bomb reached the app");
        let outcome = format!(
            "{}-byte block: status {:?}, reset {:?}, GOAWAY {:?}",
            bomb.len(),
            seen.status_of(1),
            seen.reset_of(1),
            seen.goaway()
        );
        before.check(&world, "HPACK bomb", side, &outcome);
        control.finish("HPACK bomb", side).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_opens_its_window_is_closed_without_buffering_the_body() {
    const BODY: u64 = 50 * 1024 * 1024;
    let world = World::start().await;
    for side in SIDES {
        let control = Control::start(&world, side).await;
        let before = world.usage();
        let mut h2 = world.raw(side, &[(h2raw::INITIAL_WINDOW_SIZE, 0)]).await;
        h2.send(&[Frame::headers(1, h2raw::END_STREAM, &get(side, &format!("/large/bytes/{BODY}")))])
            .await
            .expect("write the request");
        let head = h2.wait_for(Duration::from_secs(10), |s| s.answered(1)).await.unwrap_or_else(|s| s);
        assert_eq!(head.status_of(1), Some(200), "{side:?}: the head comes without window: {}", head.summary());
        // Until the proxy gives up on the stream (clientIdleTimeout without window): its
        // memory, sampled meanwhile.
        let asked = Instant::now();
        let mut peak = world.proxy.rss_bytes();
        let ended = loop {
            let done = |s: &Seen| s.reset_of(1).is_some() || s.goaway().is_some() || s.closed;
            match h2.wait_for(Duration::from_millis(100), done).await {
                Ok(seen) => break seen,
                Err(_) if asked.elapsed() < CLOSE_LIMIT => {}
                Err(seen) => panic!("{side:?}: a zero-window stream was kept open: {}", seen.summary()),
            }
            peak = peak.max(world.proxy.rss_bytes());
        };
        let reset_after = asked.elapsed();
        assert_eq!(ended.reset_of(1), Some(h2raw::CANCEL), "{side:?}: {}", ended.summary());
        assert!(reset_after >= IDLE_TIMEOUT, "reset after {reset_after:?}, before clientIdleTimeout");
        let data = ended.frames.iter().filter(|f| f.kind == h2raw::DATA).count();
        assert_eq!(data, 0, "no DATA without window: {}", ended.summary());
        let growth = peak.saturating_sub(before.rss);
        assert!(growth < RSS_GROWTH, "{side:?}: the proxy grew by {} KiB holding a 50 MiB body", growth / 1024);
        // With its one stream gone the connection idles out too.
        let closed = closed(&mut h2, "zero window", side).await;
        let outcome = format!(
            "50 MiB asked, window 0: peak RSS +{} KiB; RST_STREAM CANCEL after {reset_after:?}, \
             connection closed after {:?} (GOAWAY {:?})",
            growth / 1024,
            asked.elapsed(),
            closed.goaway()
        );
        before.check(&world, "zero window", side, &outcome);
        control.finish("zero window", side).await;
    }
}

/// How the proxy must answer a connection-level violation.
enum Expect {
    /// GOAWAY with this code, then the close.
    GoAway(u32),
    /// The frame is ignored: a request on the same connection is then served.
    Ignored,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_frames_close_the_connection_with_the_right_error() {
    let world = World::start().await;
    for side in SIDES {
        let control = Control::start(&world, side).await;
        let before = world.usage();
        let req = get(side, "/invalid");
        let mut padded = vec![200u8];
        padded.extend_from_slice(&req.bytes());
        let cases: Vec<(&str, Vec<Frame>, Expect)> = vec![
            ("DATA on stream 0", vec![Frame::data(0, true, *b"x")], Expect::GoAway(h2raw::PROTOCOL_ERROR)),
            (
                "HEADERS on an even stream",
                vec![Frame::headers(2, h2raw::END_STREAM, &req)],
                Expect::GoAway(h2raw::PROTOCOL_ERROR),
            ),
            (
                "a frame over SETTINGS_MAX_FRAME_SIZE",
                vec![Frame::new(h2raw::HEADERS, h2raw::END_HEADERS, 1, vec![0x82; 16_385])],
                Expect::GoAway(h2raw::FRAME_SIZE_ERROR),
            ),
            (
                "padding longer than the frame",
                vec![Frame::new(h2raw::HEADERS, h2raw::END_HEADERS | h2raw::END_STREAM | h2raw::PADDED, 1, padded)],
                Expect::GoAway(h2raw::PROTOCOL_ERROR),
            ),
            // RFC 9113 §6.5 asks for FRAME_SIZE_ERROR; h2 says PROTOCOL_ERROR (and closes).
            (
                "SETTINGS of 5 bytes",
                vec![Frame::new(h2raw::SETTINGS, 0, 0, [0u8; 5])],
                Expect::GoAway(h2raw::PROTOCOL_ERROR),
            ),
            // §6.7 asks for FRAME_SIZE_ERROR here too; h2 says PROTOCOL_ERROR.
            ("PING of 7 bytes", vec![Frame::new(h2raw::PING, 0, 0, [0u8; 7])], Expect::GoAway(h2raw::PROTOCOL_ERROR)),
            ("WINDOW_UPDATE of 0", vec![Frame::window_update(0, 0)], Expect::GoAway(h2raw::PROTOCOL_ERROR)),
            (
                "CONTINUATION without HEADERS",
                vec![Frame::continuation(1, true, req.bytes())],
                Expect::GoAway(h2raw::PROTOCOL_ERROR),
            ),
            (
                "RST_STREAM on an idle stream",
                vec![Frame::rst_stream(5, h2raw::CANCEL)],
                Expect::GoAway(h2raw::PROTOCOL_ERROR),
            ),
            ("an unknown frame type", vec![Frame::new(0xfa, 0xff, 0, *b"whatever")], Expect::Ignored),
            ("PRIORITY of an idle stream", vec![Frame::priority(9, 0, 16)], Expect::Ignored),
        ];
        let mut outcomes = Vec::new();
        for (name, frames, expect) in cases {
            let mut h2 = world.raw(side, &[]).await;
            h2.send(&frames).await.expect("write the frame");
            match expect {
                Expect::GoAway(code) => {
                    let seen = closed(&mut h2, name, side).await;
                    assert_eq!(seen.goaway().map(|g| g.1), Some(code), "{name} {side:?}: {}", seen.summary());
                    outcomes.push(format!("{name}: GOAWAY {code:#x}"));
                }
                Expect::Ignored => {
                    served_after(&mut h2, side, 11, name).await;
                    outcomes.push(format!("{name}: ignored"));
                }
            }
        }
        assert_eq!(world.app.hits_at("invalid"), 0, "an invalid frame's request reached the app");
        before.check(&world, "invalid frames", side, &outcomes.join("; "));
        control.finish("invalid frames", side).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_header_fields_are_reset_and_never_forwarded() {
    let world = World::start().await;
    for side in SIDES {
        let control = Control::start(&world, side).await;
        let before = world.usage();
        let host = authority(side);
        let base = || Block::default().field(":method", "GET").field(":scheme", "http");
        let cases: Vec<(&str, Block)> = vec![
            ("no :path", base().field(":authority", host)),
            ("two :method", base().field(":method", "POST").field(":path", "/pseudo").field(":authority", host)),
            (
                "a pseudo-header after a field",
                base().field("x-a", "1").field(":path", "/pseudo").field(":authority", host),
            ),
            ("an unknown pseudo-header", get(side, "/pseudo").field(":bogus", "1")),
            (":status in a request", get(side, "/pseudo").field(":status", "200")),
            ("an empty :path", base().field(":path", "").field(":authority", host)),
            ("an uppercase field name", get(side, "/pseudo").field("X-Upper", "1")),
            ("connection", get(side, "/pseudo").field("connection", "keep-alive")),
            ("transfer-encoding", get(side, "/pseudo").field("transfer-encoding", "chunked")),
            ("keep-alive", get(side, "/pseudo").field("keep-alive", "timeout=5")),
            ("upgrade", get(side, "/pseudo").field("upgrade", "websocket")),
            ("te: gzip", get(side, "/pseudo").field("te", "gzip")),
        ];
        let mut outcomes = Vec::new();
        for (name, block) in cases {
            let mut h2 = world.raw(side, &[]).await;
            h2.send(&[Frame::headers(1, h2raw::END_STREAM, &block)]).await.expect("write the request");
            let seen = h2.wait_for(Duration::from_secs(10), |s| s.answered(1)).await.unwrap_or_else(|s| s);
            let answer = match (seen.status_of(1), seen.reset_of(1), seen.goaway()) {
                (Some(status), _, _) => {
                    assert_eq!(status, 400, "{name} {side:?}: {}", seen.summary());
                    "400"
                }
                (None, Some(code), _) => {
                    assert_eq!(code, h2raw::PROTOCOL_ERROR, "{name} {side:?}: {}", seen.summary());
                    "RST_STREAM PROTOCOL_ERROR"
                }
                // h2 takes some as a connection error, stricter than the stream error asked.
                (None, None, Some((0, code))) => {
                    assert_eq!(code, h2raw::PROTOCOL_ERROR, "{name} {side:?}: {}", seen.summary());
                    closed(&mut h2, name, side).await;
                    h2 = world.raw(side, &[]).await;
                    "GOAWAY PROTOCOL_ERROR"
                }
                _ => panic!("{name} {side:?}: neither refused nor reset: {}", seen.summary()),
            };
            assert_eq!(world.app.hits_at("pseudo"), 0, "{name} {side:?}: forwarded to the app");
            served_after(&mut h2, side, 3, name).await;
            outcomes.push(format!("{name}: {answer}"));
        }
        before.check(&world, "malformed header fields", side, &outcomes.join("; "));
        control.finish("malformed header fields", side).await;
    }
}
