//! A scripted fake Kubernetes API server on loopback. Every request waits in a queue, one per
//! resource (the last segment of its path: `services`, `endpointslices`, `tokenreviews`…, or
//! `GROUP/resource` to tell a group's resource apart: `weft.dev/services`), until
//! the test answers it, call by call: a list (or one page of it), a watch stream the test writes
//! events into, an API error, any JSON. A resource nobody asked for gets 404.
//!
//! What it cannot prove: that a real API server's pagination, watch cache, bookmarks, RBAC and
//! TokenReview behave as scripted. docs/kubernetes.md says how to check those on a cluster.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, mpsc, oneshot};

/// How long [`FakeApi::next`] waits for a call.
pub const WAIT: Duration = Duration::from_secs(20);

/// A response body fed line by line by the test; it ends when the sender is dropped. The
/// streams of fake servers (watch streams, NDJSON) are made of it.
pub struct Lines(pub mpsc::UnboundedReceiver<Bytes>);

impl Body for Lines {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

enum Answer {
    Json(StatusCode, Value),
    Stream(mpsc::UnboundedReceiver<Bytes>),
}

/// One request the fake API server received, waiting for the test's answer. Dropping it
/// unanswered answers 503.
pub struct Call {
    pub method: Method,
    pub path: String,
    pub query: HashMap<String, String>,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    reply: oneshot::Sender<Answer>,
}

impl Call {
    pub fn is_watch(&self) -> bool {
        self.query.get("watch").is_some_and(|v| v == "true")
    }

    pub fn resource_version(&self) -> Option<&str> {
        self.query.get("resourceVersion").map(String::as_str)
    }

    /// The `continue` token of a list call asking for a further page.
    pub fn continue_token(&self) -> Option<&str> {
        self.query.get("continue").map(String::as_str)
    }

    /// The request body as JSON.
    pub fn json_body(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{} {}: body is not JSON: {e}", self.method, self.path))
    }

    /// Answers a list with `items` at `version`: the whole list, or its last page.
    pub fn list(self, kind: &str, version: &str, items: Vec<Value>) {
        self.page(kind, version, None, items);
    }

    /// Answers a list with one page; `more` is the `continue` token of the next one.
    pub fn page(self, kind: &str, version: &str, more: Option<&str>, items: Vec<Value>) {
        let mut metadata = json!({"resourceVersion": version});
        if let Some(token) = more {
            metadata["continue"] = json!(token);
        }
        self.json(StatusCode::OK, json!({"kind": kind, "apiVersion": "v1", "metadata": metadata, "items": items}));
    }

    /// Answers with an API error (a `Status` object).
    pub fn fail(self, code: u16, reason: &str) {
        let status = StatusCode::from_u16(code).expect("status code");
        self.json(status, status_object(code, reason));
    }

    pub fn json(self, status: StatusCode, body: Value) {
        let _ = self.reply.send(Answer::Json(status, body));
    }

    /// Answers a watch with a stream the test writes events into.
    pub fn stream(self) -> Events {
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = self.reply.send(Answer::Stream(rx));
        Events(tx)
    }
}

/// A `Status` object, as the API server sends with an error and in a watch's ERROR event.
pub fn status_object(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": format!("scripted {reason}"), "reason": reason, "code": code})
}

/// An open watch stream; it ends when dropped.
pub struct Events(mpsc::UnboundedSender<Bytes>);

impl Events {
    /// Sends one event: `ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK` or `ERROR`.
    pub fn send(&self, kind: &str, object: Value) {
        let line = json!({"type": kind, "object": object});
        self.0.send(Bytes::from(format!("{line}\n"))).expect("the watch is still open");
    }
}

type Queues = HashMap<String, mpsc::UnboundedSender<Call>>;

/// The fake API server.
pub struct FakeApi {
    addr: SocketAddr,
    queues: HashMap<String, Mutex<mpsc::UnboundedReceiver<Call>>>,
}

impl FakeApi {
    /// Starts a server that queues calls to these resources.
    pub async fn start(resources: &[&str]) -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the fake API server");
        let addr = listener.local_addr().expect("local addr");
        let mut senders = Queues::new();
        let mut queues = HashMap::new();
        for r in resources {
            let (tx, rx) = mpsc::unbounded_channel();
            senders.insert(r.to_string(), tx);
            queues.insert(r.to_string(), Mutex::new(rx));
        }
        let senders = Arc::new(senders);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let senders = senders.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let senders = senders.clone();
                        async move { Ok::<_, Infallible>(answer(req, &senders).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        FakeApi { addr, queues }
    }

    /// What `weft serve --kube-api` takes.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next call to `resource`; panics after [`WAIT`] without one.
    pub async fn next(&self, resource: &str) -> Call {
        let queue = self.queues.get(resource).unwrap_or_else(|| panic!("the fake was not started with {resource}"));
        let mut calls = queue.lock().await;
        tokio::time::timeout(WAIT, calls.recv())
            .await
            .unwrap_or_else(|_| panic!("no call to {resource} reached the API server in {WAIT:?}"))
            .expect("the fake API server is running")
    }
}

type Reply = Response<Either<Lines, Full<Bytes>>>;

fn json_response(status: StatusCode, body: &Value) -> Reply {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Either::Right(Full::from(body.to_string())))
        .expect("response")
}

async fn answer(req: Request<Incoming>, queues: &Queues) -> Reply {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let query = parts
        .uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    // A queue named `GROUP/resource` takes that group's calls (`weft.dev/services` apart from
    // the core `services`); otherwise the resource's name alone.
    let resource = path.rsplit('/').next().unwrap_or("");
    let group = path.strip_prefix("/apis/").and_then(|p| p.split('/').next()).unwrap_or("");
    let Some(queue) = queues.get(&format!("{group}/{resource}")).or_else(|| queues.get(resource)) else {
        return json_response(StatusCode::NOT_FOUND, &status_object(404, "NotFound"));
    };
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return json_response(StatusCode::BAD_REQUEST, &status_object(400, "BadRequest")),
    };
    let (reply, answered) = oneshot::channel();
    let call = Call { method: parts.method, path, query, headers: parts.headers, body, reply };
    let _ = queue.send(call);
    match answered.await {
        Ok(Answer::Json(status, body)) => json_response(status, &body),
        Ok(Answer::Stream(rx)) => Response::builder()
            .header("content-type", "application/json")
            .body(Either::Left(Lines(rx)))
            .expect("response"),
        Err(_) => json_response(StatusCode::SERVICE_UNAVAILABLE, &status_object(503, "ServiceUnavailable")),
    }
}
