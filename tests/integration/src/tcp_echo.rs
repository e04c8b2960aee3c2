//! A TCP echo server: writes back every byte it reads, then closes its side after the peer's EOF.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

pub struct TcpEcho {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl TcpEcho {
    pub async fn start() -> TcpEcho {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind tcp echo");
        let addr = listener.local_addr().expect("tcp echo addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((mut stream, _)) = accepted else { continue };
                        counter.fetch_add(1, Ordering::SeqCst);
                        conns.spawn(async move {
                            let (mut reader, mut writer) = stream.split();
                            let _ = tokio::io::copy(&mut reader, &mut writer).await;
                            let _ = writer.shutdown().await;
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        TcpEcho { addr, connections, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Writes `bytes` on `stream` and half-closes it while reading everything that comes back
/// until EOF (both directions at once, so a large payload cannot deadlock on full buffers).
/// Panics when EOF does not arrive within `deadline`.
pub async fn send_and_read_to_eof(stream: TcpStream, bytes: &[u8], deadline: Duration) -> Vec<u8> {
    let (mut reader, mut writer) = stream.into_split();
    let to_send = bytes.to_vec();
    let write = tokio::spawn(async move {
        writer.write_all(&to_send).await.unwrap();
        writer.shutdown().await.unwrap();
        writer
    });
    let mut received = Vec::new();
    tokio::time::timeout(deadline, reader.read_to_end(&mut received)).await.expect("EOF in time").unwrap();
    drop(write.await.unwrap());
    received
}

/// What the server-first test apps send before reading anything (like an SMTP greeting).
pub const GREETING: &[u8; 11] = b"220 ready\r\n";

/// Reads the app's `GREETING` through the proxy without sending a byte first: a proxy that
/// waits to sniff the client's first bytes stalls here. Panics after 3 s or on other bytes.
pub async fn expect_greeting(stream: &mut TcpStream) {
    let mut greeting = [0u8; GREETING.len()];
    tokio::time::timeout(Duration::from_secs(3), stream.read_exact(&mut greeting))
        .await
        .expect("greeting within 3 s without the client sending anything")
        .unwrap();
    assert_eq!(&greeting, GREETING);
}
