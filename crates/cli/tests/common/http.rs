//! The loopback HTTP image server with fault injection, and a server that lies about its body.

use super::*;

/// The image server with fault injection.
pub struct ImageServer {
    pub addr: SocketAddr,
    pub hits: Arc<Mutex<HashMap<String, usize>>>,
    /// Bodies served under `/blob/NAME` (set with [`ImageServer::put`]).
    pub blobs: Arc<Mutex<HashMap<String, Vec<u8>>>>,
}

impl ImageServer {
    /// Serves files of `dir` under `/img/NAME`, and faults:
    /// `/status/CODE`, `/flaky/NAME` (500 on the first request, then the image),
    /// `/slow/NAME` (stalls 30 s), `/big` (4 MiB of bytes), `/text` (not an image),
    /// `/truncated/NAME` (first half of the file), `/loop` (redirects to itself), `/chain/N`
    /// (N redirects, then an image), `/drip` (one byte every 300 ms, for ever), `/empty` (200
    /// with no body), `/html` (HTML sent as `image/png`), `/blob/NAME` (bytes given by the test),
    /// `/late/MS/NAME` (the image after MS ms), `/late-status/MS/CODE` (that status after MS ms).
    pub fn start(dir: PathBuf) -> ImageServer {
        Self::start_at(dir, 0)
    }

    /// [`ImageServer::start`] on a given loopback port (0: any free one).
    pub fn start_at(dir: PathBuf, port: u16) -> ImageServer {
        use axum::extract::{Path as AxPath, State};
        use axum::http::StatusCode;
        use axum::response::IntoResponse;
        use axum::routing::get;
        #[derive(Clone)]
        struct S {
            dir: PathBuf,
            hits: Arc<Mutex<HashMap<String, usize>>>,
            blobs: Arc<Mutex<HashMap<String, Vec<u8>>>>,
        }
        fn count(s: &S, key: String) -> usize {
            let mut h = s.hits.lock().unwrap();
            let n = h.entry(key).or_default();
            *n += 1;
            *n
        }
        let hits = Arc::new(Mutex::new(HashMap::new()));
        let blobs = Arc::new(Mutex::new(HashMap::new()));
        let state = S {
            dir,
            hits: hits.clone(),
            blobs: blobs.clone(),
        };
        let app = axum::Router::new()
            .route(
                "/img/{name}",
                get(|State(s): State<S>, AxPath(n): AxPath<String>| async move {
                    count(&s, format!("img/{n}"));
                    match std::fs::read(s.dir.join(&n)) {
                        Ok(b) => b.into_response(),
                        Err(_) => StatusCode::NOT_FOUND.into_response(),
                    }
                }),
            )
            .route(
                "/status/{code}",
                get(|State(s): State<S>, AxPath(c): AxPath<u16>| async move {
                    count(&s, format!("status/{c}"));
                    StatusCode::from_u16(c).unwrap_or(StatusCode::IM_A_TEAPOT)
                }),
            )
            .route(
                "/flaky/{name}",
                get(|State(s): State<S>, AxPath(n): AxPath<String>| async move {
                    if count(&s, format!("flaky/{n}")) == 1 {
                        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
                    }
                    std::fs::read(s.dir.join(&n))
                        .map(|b| b.into_response())
                        .unwrap_or_else(|_| StatusCode::NOT_FOUND.into_response())
                }),
            )
            .route(
                "/slow/{name}",
                get(|State(s): State<S>, AxPath(n): AxPath<String>| async move {
                    count(&s, format!("slow/{n}"));
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    std::fs::read(s.dir.join(&n))
                        .map(|b| b.into_response())
                        .unwrap_or_else(|_| StatusCode::NOT_FOUND.into_response())
                }),
            )
            .route(
                "/late/{ms}/{name}",
                get(
                    |State(s): State<S>, AxPath((ms, n)): AxPath<(u64, String)>| async move {
                        count(&s, format!("late/{n}"));
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        std::fs::read(s.dir.join(&n))
                            .map(|b| b.into_response())
                            .unwrap_or_else(|_| StatusCode::NOT_FOUND.into_response())
                    },
                ),
            )
            .route(
                "/late-status/{ms}/{code}",
                get(
                    |State(s): State<S>, AxPath((ms, c)): AxPath<(u64, u16)>| async move {
                        count(&s, format!("late-status/{c}"));
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        StatusCode::from_u16(c).unwrap_or(StatusCode::IM_A_TEAPOT)
                    },
                ),
            )
            .route("/big", get(|| async { vec![0u8; 4 << 20] }))
            .route(
                "/text",
                get(|| async { "this is not an image, just text\n" }),
            )
            .route(
                "/truncated/{name}",
                get(|State(s): State<S>, AxPath(n): AxPath<String>| async move {
                    let b = std::fs::read(s.dir.join(&n)).unwrap_or_default();
                    b[..b.len() / 2].to_vec()
                }),
            )
            .route(
                "/loop",
                get(|State(s): State<S>| async move {
                    count(&s, "loop".into());
                    axum::response::Redirect::temporary("/loop")
                }),
            )
            .route(
                "/chain/{n}",
                get(|State(s): State<S>, AxPath(n): AxPath<u32>| async move {
                    count(&s, "chain".into());
                    if n == 0 {
                        let b = std::fs::read(s.dir.join("hello.png")).unwrap_or_default();
                        return b.into_response();
                    }
                    axum::response::Redirect::temporary(&format!("/chain/{}", n - 1))
                        .into_response()
                }),
            )
            .route(
                "/drip",
                get(|State(s): State<S>| async move {
                    count(&s, "drip".into());
                    let stream = futures::stream::unfold((), |()| async {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        Some((Ok::<_, std::io::Error>(vec![0x89u8]), ()))
                    });
                    axum::body::Body::from_stream(stream)
                }),
            )
            .route("/empty", get(|| async { Vec::<u8>::new() }))
            .route(
                "/html",
                get(|| async {
                    (
                        [(axum::http::header::CONTENT_TYPE, "image/png")],
                        "<!doctype html><html><body>Not found</body></html>",
                    )
                }),
            )
            .route(
                "/blob/{name}",
                get(|State(s): State<S>, AxPath(n): AxPath<String>| async move {
                    count(&s, format!("blob/{n}"));
                    match s.blobs.lock().unwrap().get(&n) {
                        Some(b) => b.clone().into_response(),
                        None => StatusCode::NOT_FOUND.into_response(),
                    }
                }),
            )
            .with_state(state);
        let listener = rt()
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        rt().spawn(async move { axum::serve(listener, app).await.unwrap() });
        ImageServer { addr, hits, blobs }
    }

    /// Serves `bytes` under `/blob/NAME`; returns the URL.
    pub fn put(&self, name: &str, bytes: Vec<u8>) -> String {
        self.blobs.lock().unwrap().insert(name.to_owned(), bytes);
        self.url(&format!("blob/{name}"))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.addr)
    }

    pub fn hits(&self, key: &str) -> usize {
        self.hits.lock().unwrap().get(key).copied().unwrap_or(0)
    }
}

/// A raw HTTP server that promises a 100 000-byte body, sends 100 bytes and hangs up (hyper
/// would not send such an answer). Returns its address.
pub fn lying_server() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { continue };
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf);
            let _ = c.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n",
            );
            let _ = c.write_all(&[0x89; 100]);
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    });
    addr
}

/// The image server over `tests/fixtures/worker`.
pub fn images_server() -> ImageServer {
    ImageServer::start(repo_root().join("tests/fixtures/worker"))
}
