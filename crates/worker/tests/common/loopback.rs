//! The one loopback HTTP/1.1 server of the worker's tests (the fetcher's unit tests include this
//! file by path; `tests/ssrf.rs` and `tests/fetch_ca.rs` as a module). It reads each request's
//! head, answers it with `reply(n, request_line)` (`n` counts requests from 0) and closes the
//! connection; it counts connections and requests, so that a test can show it was never reached.
//! Over plain TCP, or over TLS with the caller's acceptor.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How a request is answered: from its number (from 0) and its request line, the whole
/// response's bytes.
pub type Reply = Arc<dyn Fn(usize, &str) -> Vec<u8> + Send + Sync>;

pub struct Loopback {
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

impl Loopback {
    /// A server on `ip` (any port), plain HTTP.
    pub async fn start(
        ip: &str,
        reply: impl Fn(usize, &str) -> Vec<u8> + Send + Sync + 'static,
    ) -> Loopback {
        Self::spawn(ip, reply, |sock| async move { Some(sock) }).await
    }

    /// A server on `ip` (any port), HTTPS with `acceptor`; a handshake the client refuses ends
    /// the connection (it still counts as a connection, not as a request).
    pub async fn start_tls(
        ip: &str,
        acceptor: tokio_rustls::TlsAcceptor,
        reply: impl Fn(usize, &str) -> Vec<u8> + Send + Sync + 'static,
    ) -> Loopback {
        Self::spawn(ip, reply, move |sock| {
            let acceptor = acceptor.clone();
            async move { acceptor.accept(sock).await.ok() }
        })
        .await
    }

    async fn spawn<S, F, Fut>(
        ip: &str,
        reply: impl Fn(usize, &str) -> Vec<u8> + Send + Sync + 'static,
        wrap: F,
    ) -> Loopback
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Option<S>> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (connections, requests) =
            (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (conns, reqs) = (connections.clone(), requests.clone());
        let reply: Reply = Arc::new(reply);
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                conns.fetch_add(1, Ordering::SeqCst);
                let (reqs, reply, wrapped) = (reqs.clone(), reply.clone(), wrap(sock));
                tokio::spawn(async move {
                    if let Some(mut sock) = wrapped.await {
                        answer(&mut sock, &reqs, &reply).await;
                    }
                });
            }
        });
        Loopback {
            addr,
            connections,
            requests,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    sock: &mut S,
    requests: &AtomicUsize,
    reply: &Reply,
) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let n = requests.fetch_add(1, Ordering::SeqCst);
    let text = String::from_utf8_lossy(&head);
    let line = text.lines().next().unwrap_or_default().to_owned();
    let _ = sock.write_all(&reply(n, &line)).await;
    let _ = sock.shutdown().await;
}

/// A whole HTTP/1.1 response that closes its connection.
pub fn response(status: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}
