//! HTTP clients for tests: HTTP/1.1 and h2c (prior knowledge) over hyper, each call bounded.
//!
//! A call that takes longer than [`REQUEST_DEADLINE`] is an error, so a hanging proxy fails the
//! test instead of stalling the suite.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Version};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::BoxError;

/// Upper bound for one request and its whole response body.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(30);

/// A request to send; `path` may also be an absolute URI (`http://host/path`).
#[derive(Clone, Debug)]
pub struct Req {
    pub method: Method,
    pub path: String,
    pub host: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Req {
    pub fn new(method: &str, path: &str) -> Req {
        Req {
            method: Method::from_bytes(method.as_bytes()).expect("valid method"),
            path: path.to_string(),
            host: "localhost".to_string(),
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    pub fn get(path: &str) -> Req {
        Req::new("GET", path)
    }

    pub fn post(path: &str, body: impl Into<Bytes>) -> Req {
        Req::new("POST", path).body(body)
    }

    /// The `Host` header (HTTP/1.1) or `:authority` (h2).
    pub fn host(mut self, host: &str) -> Req {
        self.host = host.to_string();
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Req {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Req {
        self.body = body.into();
        self
    }

    fn build(&self, uri: String, host_header: bool) -> Request<Full<Bytes>> {
        let mut builder = Request::builder().method(self.method.clone()).uri(uri);
        if host_header {
            builder = builder.header(http::header::HOST, &self.host);
        }
        for (name, value) in &self.headers {
            builder = builder.header(name, value);
        }
        builder.body(Full::new(self.body.clone())).expect("valid request")
    }

    fn to_h1(&self) -> Request<Full<Bytes>> {
        self.build(self.path.clone(), true)
    }

    fn to_h2(&self) -> Request<Full<Bytes>> {
        let uri = if self.path.starts_with("http") {
            self.path.clone()
        } else {
            format!("http://{}{}", self.host, self.path)
        };
        self.build(uri, false)
    }
}

/// A whole response, body read.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Which test backend answered (`x-backend`).
    pub fn backend(&self) -> Option<&str> {
        self.header("x-backend")
    }

    /// The reason the proxy gave for an error it made itself (`weft-proxy-error`).
    pub fn proxy_error(&self) -> Option<&str> {
        self.header("weft-proxy-error")
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn trailer(&self, name: &str) -> Option<&str> {
        self.trailers.as_ref()?.get(name)?.to_str().ok()
    }
}

async fn read_response(resp: http::Response<hyper::body::Incoming>) -> Result<Resp, BoxError> {
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await?;
    let trailers = collected.trailers().cloned();
    Ok(Resp {
        status: parts.status.as_u16(),
        version: parts.version,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    })
}

async fn bounded<T>(fut: impl Future<Output = Result<T, BoxError>>) -> Result<T, BoxError> {
    tokio::time::timeout(REQUEST_DEADLINE, fut).await.map_err(|_| format!("no response within {REQUEST_DEADLINE:?}"))?
}

/// An HTTP/1.1 keep-alive connection.
pub struct H1Conn {
    sender: http1::SendRequest<Full<Bytes>>,
}

impl H1Conn {
    pub async fn connect(addr: SocketAddr) -> Result<H1Conn, BoxError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(H1Conn { sender })
    }

    /// Whether the connection can take another request (false once the server closed it).
    pub async fn is_reusable(&mut self) -> bool {
        self.sender.ready().await.is_ok()
    }

    pub async fn send(&mut self, req: &Req) -> Result<Resp, BoxError> {
        bounded(async {
            self.sender.ready().await?;
            let resp = self.sender.send_request(req.to_h1()).await?;
            read_response(resp).await
        })
        .await
    }
}

/// An h2c (prior knowledge) connection; clones share it, so requests multiplex on one socket.
#[derive(Clone)]
pub struct H2Conn {
    sender: http2::SendRequest<Full<Bytes>>,
}

impl H2Conn {
    pub async fn connect(addr: SocketAddr) -> Result<H2Conn, BoxError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        H2Conn::over(stream).await
    }

    /// HTTP/2 on a stream already open (a TLS stream that negotiated `h2`, say).
    pub async fn over<S>(io: S) -> Result<H2Conn, BoxError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await?;
        tokio::spawn(conn);
        Ok(H2Conn { sender })
    }

    /// Whether the server has closed the connection (after GOAWAY, once it ends).
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    pub async fn send(&self, req: &Req) -> Result<Resp, BoxError> {
        let mut sender = self.sender.clone();
        bounded(async move {
            sender.ready().await?;
            let resp = sender.send_request(req.to_h2()).await?;
            read_response(resp).await
        })
        .await
    }
}

/// Sends one HTTP/1.1 request on a fresh connection.
pub async fn send(addr: SocketAddr, req: &Req) -> Result<Resp, BoxError> {
    H1Conn::connect(addr).await?.send(req).await
}

/// Sends one h2c request on a fresh connection.
pub async fn send_h2(addr: SocketAddr, req: &Req) -> Result<Resp, BoxError> {
    H2Conn::connect(addr).await?.send(req).await
}

/// Like [`send`], panicking with the error (for requests that must get an answer).
pub async fn must(addr: SocketAddr, req: &Req) -> Resp {
    match send(addr, req).await {
        Ok(resp) => resp,
        Err(e) => panic!("{} {} via {addr}: {e}", req.method, req.path),
    }
}
