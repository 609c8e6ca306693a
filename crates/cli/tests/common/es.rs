//! Elasticsearch from a test: a small blocking HTTP client, queries, and a proxy that injects faults.

use super::*;

/// The runtime of the blocking HTTP helpers below (tests are synchronous).
pub fn rt() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

/// GET with a 5 s timeout: status and body.
pub fn blocking_get(url: &str) -> Result<(u16, String), String> {
    rt().block_on(async {
        let r = ::reqwest::Client::new()
            .get(url)
            .timeout(std::time::Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let s = r.status().as_u16();
        Ok((s, r.text().await.map_err(|e| e.to_string())?))
    })
}

/// A JSON request with a 10 s timeout: status and JSON body (null when it is not JSON).
pub fn blocking_json(
    method: &str,
    url: &str,
    body: Option<serde_json::Value>,
) -> Result<(u16, serde_json::Value), String> {
    rt().block_on(async {
        let c = ::reqwest::Client::new();
        let mut req = match method {
            "POST" => c.post(url),
            "PUT" => c.put(url),
            "DELETE" => c.delete(url),
            _ => c.get(url),
        };
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req
            .timeout(std::time::Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let s = r.status().as_u16();
        Ok((s, r.json().await.unwrap_or(serde_json::Value::Null)))
    })
}

/// Elasticsearch: document count after a refresh (None when it does not answer).
pub fn es_count(es: &str, index: &str) -> Option<u64> {
    blocking_json("POST", &format!("{es}/{index}/_refresh"), None).ok()?;
    let (s, v) = blocking_json("GET", &format!("{es}/{index}/_count"), None).ok()?;
    if s != 200 {
        return None;
    }
    v["count"].as_u64()
}

/// Elasticsearch: ids of documents whose `text` matches `word`.
pub fn es_search(es: &str, index: &str, word: &str) -> Vec<String> {
    es_search_field(es, index, "text", word)
}

/// Elasticsearch: ids of the documents whose `field` matches `word`.
pub fn es_search_field(es: &str, index: &str, field: &str, word: &str) -> Vec<String> {
    let (_, v) = blocking_json(
        "POST",
        &format!("{es}/{index}/_search"),
        Some(serde_json::json!({"size": 1000, "query": {"match": {field: word}}})),
    )
    .unwrap();
    v["hits"]["hits"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|h| h["_id"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Elasticsearch: one document's source.
pub fn es_get(es: &str, index: &str, id: &str) -> Option<serde_json::Value> {
    let (s, v) = blocking_json("GET", &format!("{es}/{index}/_doc/{id}"), None).ok()?;
    (s == 200).then_some(v)
}

/// An HTTP proxy in front of Elasticsearch that can fail on purpose: every request is
/// forwarded unchanged, unless `fail_with` holds an HTTP status (then it answers that status
/// with an Elasticsearch-style error body, as an expired API key or a broken cluster would), or
/// a request body is larger than `max_body` bytes (then it answers 413 with an empty body, as a
/// load balancer in front of Elasticsearch does).
///
/// With [`EsProxy::refuse_bulk_items`] it answers every `_bulk` request itself with HTTP 200 and
/// each item refused with the given status, error type and reason, as Elasticsearch does for an
/// index with a write block, a missing privilege or a closed index.
pub struct EsProxy {
    pub addr: SocketAddr,
    pub fail_with: Arc<std::sync::atomic::AtomicU16>,
    pub max_body: Arc<AtomicUsize>,
    /// Requests answered with a failure.
    pub failed: Arc<AtomicUsize>,
    pub item_error: Arc<Mutex<Option<(u16, String, String)>>>,
}

impl EsProxy {
    pub fn start(upstream: String) -> EsProxy {
        use axum::body::{to_bytes, Body};
        use axum::extract::{Request, State};
        use axum::response::{IntoResponse, Response};
        #[derive(Clone)]
        struct S {
            upstream: String,
            fail_with: Arc<std::sync::atomic::AtomicU16>,
            max_body: Arc<AtomicUsize>,
            failed: Arc<AtomicUsize>,
            item_error: Arc<Mutex<Option<(u16, String, String)>>>,
            client: ::reqwest::Client,
        }
        async fn forward(State(s): State<S>, req: Request) -> Response {
            let fail = s.fail_with.load(Ordering::SeqCst);
            let (parts, body) = req.into_parts();
            let body = to_bytes(body, 512 << 20).await.unwrap_or_default();
            let item_error = s.item_error.lock().unwrap().clone();
            if let (Some((status, kind, reason)), true) =
                (item_error, parts.uri.path().ends_with("/_bulk"))
            {
                s.failed.fetch_add(1, Ordering::SeqCst);
                // One action line and one source line per document.
                let docs = body
                    .split(|&b| b == b'\n')
                    .filter(|l| !l.is_empty())
                    .count()
                    / 2;
                let items: Vec<serde_json::Value> = (0..docs)
                    .map(|_| serde_json::json!({"index": {"status": status, "error": {"type": kind, "reason": reason}}}))
                    .collect();
                let json = serde_json::json!({"took": 1, "errors": true, "items": items});
                return (
                    axum::http::StatusCode::OK,
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    json.to_string(),
                )
                    .into_response();
            }
            if fail != 0 {
                s.failed.fetch_add(1, Ordering::SeqCst);
                let status = axum::http::StatusCode::from_u16(fail).unwrap();
                let json = serde_json::json!({"error": {"type": "security_exception", "reason": format!("injected failure {fail}")}, "status": fail});
                return (
                    status,
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    json.to_string(),
                )
                    .into_response();
            }
            if body.len() > s.max_body.load(Ordering::SeqCst) {
                s.failed.fetch_add(1, Ordering::SeqCst);
                return axum::http::StatusCode::PAYLOAD_TOO_LARGE.into_response();
            }
            let url = format!(
                "{}{}",
                s.upstream,
                parts
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/")
            );
            let mut r = s
                .client
                .request(parts.method.clone(), url)
                .body(body.to_vec());
            for (k, v) in &parts.headers {
                if k != axum::http::header::HOST && k != axum::http::header::CONTENT_LENGTH {
                    r = r.header(k, v);
                }
            }
            match r.send().await {
                Ok(resp) => {
                    let mut b = Response::builder().status(resp.status().as_u16());
                    for (k, v) in resp.headers() {
                        if k != axum::http::header::CONTENT_LENGTH
                            && k != axum::http::header::TRANSFER_ENCODING
                        {
                            b = b.header(k, v);
                        }
                    }
                    b.body(Body::from(resp.bytes().await.unwrap_or_default()))
                        .unwrap()
                }
                Err(_) => axum::http::StatusCode::BAD_GATEWAY.into_response(),
            }
        }
        let state = S {
            upstream,
            fail_with: Arc::new(std::sync::atomic::AtomicU16::new(0)),
            max_body: Arc::new(AtomicUsize::new(usize::MAX)),
            failed: Arc::new(AtomicUsize::new(0)),
            item_error: Arc::new(Mutex::new(None)),
            client: ::reqwest::Client::new(),
        };
        let p = EsProxy {
            addr: "127.0.0.1:0".parse().unwrap(),
            fail_with: state.fail_with.clone(),
            max_body: state.max_body.clone(),
            failed: state.failed.clone(),
            item_error: state.item_error.clone(),
        };
        let app = axum::Router::new().fallback(forward).with_state(state);
        let listener = rt()
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        rt().spawn(async move { axum::serve(listener, app).await.unwrap() });
        EsProxy { addr, ..p }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn fail(&self, status: u16) {
        self.fail_with.store(status, Ordering::SeqCst);
    }

    /// Answers every `_bulk` with HTTP 200 and each item refused (`None`: forward again).
    pub fn refuse_bulk_items(&self, refusal: Option<(u16, &str, &str)>) {
        *self.item_error.lock().unwrap() = refusal.map(|(s, k, r)| (s, k.to_owned(), r.to_owned()));
    }
}
