//! The worker's fault model, proven against real servers on 127.0.0.1 (see
//! `crates/worker/src/failure.rs`): bad records end as exactly one dead letter each, without
//! stalling anything; infrastructure faults (Elasticsearch answering 401 or gone, the broker
//! restarting, the engine failing, a worker killed with SIGKILL) never produce a dead letter,
//! never move a commit past unfinished work, turn `/readyz` to 503 while they last, and end with
//! everything indexed. Faults are injected on purpose: an image server with faulty routes, a
//! lying raw HTTP server, a proxy in front of Elasticsearch, `noida-db stop`, SIGKILL, and the
//! worker's hidden `--test-engine-fault` hook (no real GPU can be broken on this machine).
//!
//! Waits have generous deadlines for liveness only; nothing asserts on speed.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;

/// `n` good messages with ids `{tag}-{i}`, cycling through the worker fixtures.
fn messages(srv: &ImageServer, n: usize, tag: &str) -> Vec<String> {
    const IMGS: [&str; 6] = [
        "invoice.png",
        "park.png",
        "hello.png",
        "coffee.png",
        "train.png",
        "lake.png",
    ];
    (0..n)
        .map(|i| {
            serde_json::json!({"url": srv.url(&format!("img/{}", IMGS[i % IMGS.len()])), "id": format!("{tag}-{i}")})
                .to_string()
        })
        .collect()
}

/// Creates `topic` (group `g-{topic}`, index `{topic}-idx`) and its dead-letter topic, produces
/// 20 messages, starts a worker that indexes into Elasticsearch at `es`, and waits until they
/// are indexed and committed.
fn first_batch_done(nd: &Noida, srv: &ImageServer, es: &str, topic: &str, parts: i32) -> Worker {
    let (group, index) = (format!("g-{topic}"), format!("{topic}-idx"));
    create_topics(&nd.brokers(), topic, parts);
    produce(&nd.brokers(), topic, parts, &messages(srv, 20, "a"));
    let w = Worker::start(&nd.brokers(), es, topic, &group, &index, &[]);
    wait_until("first batch indexed", Duration::from_secs(300), || {
        es_count(&nd.es_url(), &index) == Some(20)
    });
    wait_until("first batch committed", Duration::from_secs(60), || {
        lag(&nd.brokers(), &group, topic, parts) == 0
    });
    w
}

/// After an infrastructure fault: everything indexed (`n` documents), committed to the end,
/// ready again, and not one dead letter.
fn recovered_cleanly(nd: &Noida, w: &Worker, topic: &str, parts: i32, n: u64) {
    let (group, index) = (format!("g-{topic}"), format!("{topic}-idx"));
    wait_until(
        "everything indexed after the fault",
        Duration::from_secs(300),
        || es_count(&nd.es_url(), &index) == Some(n),
    );
    wait_until("committed to the end", Duration::from_secs(120), || {
        lag(&nd.brokers(), &group, topic, parts) == 0
    });
    wait_until("ready again", Duration::from_secs(60), || w.ready());
    assert_eq!(w.metric("ocrfleet_messages_dead_lettered_total"), 0.0);
    assert_eq!(
        read_all(
            &nd.brokers(),
            &format!("{topic}.dlq"),
            1,
            Duration::from_secs(2)
        )
        .len(),
        0,
        "no dead letters"
    );
}

/// A PNG whose header claims `w`×`h` pixels (with `depth`-bit RGB and, optionally, an EXIF
/// rotation) and whose data is a few bytes: refused from the header, before any allocation.
fn claimed_png(w: u32, h: u32, depth: u8, rotate: bool) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut c = kind.to_vec();
        c.extend_from_slice(data);
        out.extend_from_slice(&c);
        out.extend_from_slice(&crc32(&c).to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[depth, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    if rotate {
        // eXIf: big-endian TIFF, one entry, Orientation = 6 (rotate 90).
        let exif = [
            b'M', b'M', 0, 42, 0, 0, 0, 8, 0, 1, 0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0, 0, 0, 0,
            0,
        ];
        chunk(&mut out, b"eXIf", &exif);
    }
    chunk(
        &mut out,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    chunk(&mut out, b"IEND", &[]);
    out
}

/// A record with no value at all (a tombstone).
fn produce_tombstone(brokers: &str, topic: &str, partition: i32) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let p: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    rt().block_on(async {
        let rec: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic)
            .key("tombstone")
            .partition(partition);
        p.send(rec, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    });
}

/// A record with raw (maybe non-UTF-8) value bytes.
fn produce_bytes(brokers: &str, topic: &str, partition: i32, value: &[u8]) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let p: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    rt().block_on(async {
        let rec: FutureRecord<'_, str, [u8]> =
            FutureRecord::to(topic).payload(value).partition(partition);
        p.send(rec, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    });
}

/// The 16 poison classes added to the 11 of `worker_e2e.rs`: each one ends as exactly one dead
/// letter with the right stage and class, the good messages around them are indexed, and the
/// partition is committed to its end. The worker runs with `message.max.bytes` at 300 kB, so the
/// 600 KB-URL record's full dead letter is refused by Kafka and the minimal one is sent instead.
#[test]
fn poison_records_each_give_one_dead_letter_and_nothing_stalls() {
    let stack = Stack::start("poison");
    let (nd, srv) = (&stack.noida, &stack.images);
    let liar = lying_server();
    let (topic, group, index) = ("poison", "g-poison", "poison-idx");
    create_topics(&nd.brokers(), topic, 1);
    let b = nd.brokers();

    // (what, expected stage, expected class); a None stage means "indexed".
    let mut expect: Vec<(&str, Option<&str>, &str)> = Vec::new();
    let mut send =
        |what: &'static str, stage: Option<&'static str>, class: &'static str, value: &str| {
            produce(&b, topic, 1, &[value.to_owned()]);
            expect.push((what, stage, class));
        };
    send("good before", None, "", &srv.url("img/invoice.png"));
    let long_url = format!(
        "{}?sig={}",
        srv.url("img/hello.png"),
        "a".repeat(600 * 1024)
    );
    send("600 KB URL", Some("parse"), "url_too_long", &long_url);
    send(
        "redirect loop",
        Some("fetch"),
        "redirects",
        &srv.url("loop"),
    );
    send(
        "10-hop redirect chain",
        Some("fetch"),
        "redirects",
        &srv.url("chain/10"),
    );
    send("slow drip", Some("fetch"), "timeout", &srv.url("drip"));
    send(
        "lying Content-Length",
        Some("fetch"),
        "transfer",
        &format!("http://{liar}/a.png"),
    );
    send("zero-byte 200", Some("decode"), "empty", &srv.url("empty"));
    send(
        "HTML as image/png",
        Some("decode"),
        "unknown_format",
        &srv.url("html"),
    );
    let bomb = srv.put("bomb.png", claimed_png(100_000, 100_000, 8, false));
    send("decompression-bomb PNG", Some("decode"), "too_large", &bomb);
    let big16 = srv.put("big16.png", claimed_png(7200, 7200, 16, true));
    send(
        "16-bit rotated 52 MP PNG",
        Some("decode"),
        "too_large",
        &big16,
    );
    // A valid 10x10 GIF header, then bytes that are no GIF blocks.
    let mut gif = b"GIF89a\x0a\x00\x0a\x00\x00\x00\x00".to_vec();
    gif.extend((0..2000u32).map(|i| (i * 7919 % 251) as u8));
    let gif = srv.put("garbage.gif", gif);
    send("GIF garbage", Some("decode"), "corrupt", &gif);
    let meta = serde_json::json!({"url": srv.url("img/park.png"), "metadata": {"blob": "x".repeat(50 * 1024)}});
    send(
        "50 KB of metadata",
        Some("parse"),
        "metadata_too_large",
        &meta.to_string(),
    );
    let arr = serde_json::json!([srv.url("img/park.png"), "id", {}]).to_string();
    send("JSON array", Some("parse"), "bad_json", &arr);
    produce_raw_header(
        &b,
        topic,
        0,
        &[0xff, 0xfe, b'k'],
        srv.url("img/park.png").as_bytes(),
    );
    expect.push(("non-UTF-8 header key", Some("parse"), "header_key_not_utf8"));
    produce_tombstone(&b, topic, 0);
    expect.push(("tombstone", Some("parse"), "empty"));
    produce_bytes(&b, topic, 0, b"");
    expect.push(("empty value", Some("parse"), "empty"));
    produce_bytes(&b, topic, 0, &[0xc3, 0x28, 0xff]);
    expect.push(("non-UTF-8 value", Some("parse"), "not_utf8"));
    produce(&b, topic, 1, &[srv.url("img/coffee.png")]);
    expect.push(("good after", None, ""));

    let failing = expect.iter().filter(|e| e.1.is_some()).count();
    assert_eq!(failing, 16);
    let w = Worker::start(
        &b,
        &nd.es_url(),
        topic,
        group,
        index,
        &["--kafka-option", "message.max.bytes=300000"],
    );
    let dlq = read_all(&b, "poison.dlq", failing, Duration::from_secs(180));
    wait_until("good documents indexed", Duration::from_secs(120), || {
        es_count(&nd.es_url(), index) == Some(2)
    });
    wait_until("committed to the end", Duration::from_secs(60), || {
        lag(&b, group, topic, 1) == 0
    });
    let again = read_all(&b, "poison.dlq", failing + 1, Duration::from_secs(3));
    assert_eq!(
        again.len(),
        failing,
        "exactly one dead letter per poison record"
    );
    let by_offset: HashMap<i64, &DlqRecord> = dlq
        .iter()
        .map(|r| (r.headers["ocrfleet.source.offset"].parse().unwrap(), r))
        .collect();
    println!("{:<26} {:<7} {:<20} minimal", "poison", "stage", "class");
    for (offset, (what, stage, class)) in expect.iter().enumerate() {
        let rec = by_offset.get(&(offset as i64));
        match stage {
            None => assert!(rec.is_none(), "{what} should be indexed"),
            Some(stage) => {
                let r = rec.unwrap_or_else(|| panic!("no dead letter for {what}"));
                println!(
                    "{what:<26} {:<7} {:<20} {}",
                    r.headers["ocrfleet.error.stage"],
                    r.headers["ocrfleet.error.class"],
                    r.headers.contains_key("ocrfleet.dlq.minimal")
                );
                assert_eq!(
                    r.headers["ocrfleet.error.stage"], *stage,
                    "{what}: {:?}",
                    r.headers
                );
                assert_eq!(
                    r.headers["ocrfleet.error.class"], *class,
                    "{what}: {:?}",
                    r.headers
                );
                assert!(
                    r.headers["ocrfleet.error.message"].len() <= 1024,
                    "{what}: the error message header is bounded"
                );
            }
        }
    }
    // The 600 KB-URL record: the full dead letter was too large, the minimal one arrived.
    let long = by_offset[&1];
    assert_eq!(
        long.headers.get("ocrfleet.dlq.minimal").map(String::as_str),
        Some("true")
    );
    assert!(long.value.is_none(), "the minimal record has no value");
    assert_eq!(w.metric("ocrfleet_dead_letters_minimal_total"), 1.0);
    // A redirect loop is one attempt (not retried); the lying server was retried (transfer).
    assert!(
        srv.hits("loop") <= 7,
        "1 request + at most 5 redirects, then refused, not retried: {}",
        srv.hits("loop")
    );
    assert!(
        w.ready(),
        "bad records are not infrastructure faults: {:?}",
        w.readyz()
    );
    assert!(w.healthy());
}

/// Elasticsearch answers 401 to everything for 30 s (an expired API key, through a proxy in
/// front of noida-db): no dead letter, no commit past unindexed work, `/readyz` 503 naming
/// Elasticsearch, then everything indexed once the key works again.
#[test]
fn elasticsearch_401_for_15s_pauses_the_worker_and_loses_nothing() {
    let _g = serial();
    let nd = Noida::start("es401");
    let proxy = EsProxy::start(nd.es_url());
    let srv = images_server();
    let (topic, group, parts) = ("es401", "g-es401", 2);
    let w = first_batch_done(&nd, &srv, &proxy.url(), topic, parts);

    proxy.fail(401);
    produce(&nd.brokers(), topic, parts, &messages(&srv, 20, "b"));
    let t = Instant::now();
    let mut saw_503 = false;
    while t.elapsed() < Duration::from_secs(15) {
        let (status, body) = w.readyz();
        if status == 503 && body.contains("elasticsearch: down") && body.contains("401") {
            saw_503 = true;
        }
        assert_eq!(
            committed(&nd.brokers(), group, topic, parts),
            20,
            "no commit during the fault"
        );
        assert_eq!(w.metric("ocrfleet_messages_dead_lettered_total"), 0.0);
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(
        saw_503,
        "readyz must say Elasticsearch is down: {:?}",
        w.readyz()
    );
    assert!(proxy.failed.load(std::sync::atomic::Ordering::SeqCst) > 0);
    assert_eq!(
        w.metric("ocrfleet_component_up{component=\"elasticsearch\"}"),
        0.0
    );

    proxy.fail(0);
    recovered_cleanly(&nd, &w, topic, parts, 40);
}

/// An index with a write block (disk flood stage, `index.blocks.write`): Elasticsearch answers
/// every bulk request with HTTP 200 and each item refused with 403 `cluster_block_exception`.
/// That is the index refusing writes, not 30 bad documents: nothing is dead-lettered or
/// committed while it lasts, `/readyz` says why, and everything is indexed once it is lifted.
#[test]
fn an_index_write_block_refusing_every_item_dead_letters_nothing() {
    let _g = serial();
    let nd = Noida::start("esblock");
    let proxy = EsProxy::start(nd.es_url());
    let srv = images_server();
    let (topic, group, parts) = ("esblock", "g-esblock", 2);
    let w = first_batch_done(&nd, &srv, &proxy.url(), topic, parts);

    proxy.refuse_bulk_items(Some((
        403,
        "cluster_block_exception",
        "index [esblock-idx-000001] blocked by: [FORBIDDEN/8/index write (api)];",
    )));
    produce(&nd.brokers(), topic, parts, &messages(&srv, 30, "b"));
    wait_until(
        "readyz names the write block",
        Duration::from_secs(120),
        || {
            let (s, body) = w.readyz();
            s == 503 && body.contains("cluster_block_exception")
        },
    );
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(8) {
        assert_eq!(
            committed(&nd.brokers(), group, topic, parts),
            20,
            "no commit during the block"
        );
        assert_eq!(w.metric("ocrfleet_messages_dead_lettered_total"), 0.0);
        assert_eq!(w.readyz().0, 503);
        std::thread::sleep(Duration::from_secs(1));
    }
    proxy.refuse_bulk_items(None);
    recovered_cleanly(&nd, &w, topic, parts, 50);
}

/// A fault that is open when the partitions it concerned are revoked must not outlive them.
/// Elasticsearch is unreachable while messages arrive (the sink retries them with its `bulk`
/// fault open), then the broker stops for longer than the session time-out, so the group takes
/// the partitions away; when both come back, the worker must resume, not stay paused for good
/// with `/readyz` 503 and nothing indexed.
#[test]
fn a_fault_open_when_its_partitions_are_revoked_does_not_outlive_them() {
    let _g = serial();
    let nd = Noida::start("revfault");
    let proxy = EsProxy::start(nd.es_url());
    let srv = images_server();
    let (topic, group, index, parts) = ("revfault", "g-revfault", "revfault-idx", 2);
    create_topics(&nd.brokers(), topic, parts);
    produce(&nd.brokers(), topic, parts, &messages(&srv, 10, "a"));
    let w = Worker::start(
        &nd.brokers(),
        &proxy.url(),
        topic,
        group,
        index,
        &[
            "--kafka-option",
            "session.timeout.ms=6000,heartbeat.interval.ms=1000",
        ],
    );
    wait_until("first batch indexed", Duration::from_secs(300), || {
        es_count(&nd.es_url(), index) == Some(10)
    });
    proxy.fail(503);
    produce(&nd.brokers(), topic, parts, &messages(&srv, 20, "b"));
    wait_until(
        "the sink's bulk fault is open",
        Duration::from_secs(120),
        || w.readyz().1.contains("bulk: HTTP 503"),
    );
    nd.stop_kafka();
    // Past the 6 s session time-out: librdkafka revokes the assignment as lost.
    std::thread::sleep(Duration::from_secs(12));
    nd.start_kafka();
    proxy.fail(0);
    recovered_cleanly(&nd, &w, topic, parts, 30);
    assert!(
        w.metric("ocrfleet_rebalances_total") >= 3.0,
        "revoked and assigned again"
    );
}

/// Elasticsearch refuses the key from the start: the worker stays not ready and `/readyz` says
/// which start-up step waits and why; once the key works it starts and indexes everything.
#[test]
fn elasticsearch_refusing_at_start_keeps_the_worker_starting_and_says_why() {
    let _g = serial();
    let nd = Noida::start("es401start");
    let proxy = EsProxy::start(nd.es_url());
    let srv = images_server();
    let (topic, group, parts) = ("es401start", "g-es401start", 2);
    let index = format!("{topic}-idx");
    create_topics(&nd.brokers(), topic, parts);
    produce(&nd.brokers(), topic, parts, &messages(&srv, 10, "a"));
    proxy.fail(401);
    let w = Worker::start(&nd.brokers(), &proxy.url(), topic, group, &index, &[]);
    wait_until(
        "readyz names the waiting step and the fault",
        Duration::from_secs(120),
        || {
            let (status, body) = w.readyz();
            status == 503
                && body.contains("starting: preparing the Elasticsearch index")
                && body.contains("401")
        },
    );
    assert_eq!(w.metric("ocrfleet_messages_consumed_total"), 0.0);
    assert!(w.healthy(), "alive while it waits");
    proxy.fail(0);
    recovered_cleanly(&nd, &w, topic, parts, 10);
    assert!(!w.readyz().1.contains("starting"));
}

/// Elasticsearch is stopped for 20 s while messages keep arriving.
#[test]
fn elasticsearch_down_20s_holds_commits_and_everything_is_indexed_after_it_returns() {
    let stack = Stack::start("esdown");
    let (nd, srv) = (&stack.noida, &stack.images);
    let (topic, group, parts) = ("esdown", "g-esdown", 2);
    let w = first_batch_done(nd, srv, &nd.es_url(), topic, parts);
    nd.stop_es();
    produce(&nd.brokers(), topic, parts, &messages(srv, 20, "b"));
    let t = Instant::now();
    let mut saw_503 = false;
    while t.elapsed() < Duration::from_secs(20) {
        saw_503 |= w.readyz().0 == 503;
        assert_eq!(
            committed(&nd.brokers(), group, topic, parts),
            20,
            "no commit during the outage"
        );
        assert_eq!(w.metric("ocrfleet_messages_dead_lettered_total"), 0.0);
        assert!(w.healthy());
        std::thread::sleep(Duration::from_secs(2));
    }
    assert!(saw_503);
    assert!(
        w.metric("ocrfleet_messages_consumed_total") >= 40.0,
        "the second batch was taken"
    );
    nd.start_es();
    recovered_cleanly(nd, &w, topic, parts, 40);
    assert!(w.metric("ocrfleet_es_retries_total") > 0.0);
}

/// The broker (noida-db's Kafka service, whose data survives a restart; tansu keeps its topics
/// in memory and loses them) is stopped for 15 s: the worker reports it, then resumes alone.
#[test]
fn broker_restart_the_worker_resumes() {
    let stack = Stack::start("brk");
    let (nd, srv) = (&stack.noida, &stack.images);
    let (topic, group, index, parts) = ("brk", "g-brk", "brk-idx", 2);
    create_topics(&nd.brokers(), topic, parts);
    produce(&nd.brokers(), topic, parts, &messages(srv, 12, "a"));
    let w = Worker::start(&nd.brokers(), &nd.es_url(), topic, group, index, &[]);
    wait_until("first batch indexed", Duration::from_secs(300), || {
        es_count(&nd.es_url(), index) == Some(12)
    });
    nd.stop_kafka();
    wait_until("readyz reports the broker", Duration::from_secs(60), || {
        let (s, body) = w.readyz();
        s == 503 && body.contains("broker: down")
    });
    std::thread::sleep(Duration::from_secs(15));
    assert!(w.healthy());
    nd.start_kafka();
    produce(&nd.brokers(), topic, parts, &messages(srv, 12, "b"));
    recovered_cleanly(nd, &w, topic, parts, 24);
}

/// The engine fails every call for 8 s after 6 images (the test-only fault hook; on a GPU host
/// this is a device fault): the probe tells it from a bad image, so nothing is dead-lettered;
/// intake pauses, `/readyz` names the engine, and the same batches run again once it recovers.
/// Then the same with the device out of memory for pages for 8 s (every detector run, down to
/// one image alone, while the probe's tiny run fits): held and run again, never dead-lettered.
#[test]
fn an_engine_fault_that_clears_loses_nothing() {
    let stack = Stack::start("engfail");
    let (nd, srv) = (&stack.noida, &stack.images);
    for (topic, fault, source) in [
        ("engfail", "fail:6:8", "probe"),
        ("engoom", "oom:6:8", "memory"),
    ] {
        let (group, index) = (format!("g-{topic}"), format!("{topic}-idx"));
        create_topics(&nd.brokers(), topic, 1);
        produce(&nd.brokers(), topic, 1, &messages(srv, 30, topic));
        let w = Worker::start(
            &nd.brokers(),
            &nd.es_url(),
            topic,
            &group,
            &index,
            &["--test-engine-fault", fault, "--ocr-batch", "4"],
        );
        wait_until("readyz names the engine", Duration::from_secs(120), || {
            let (s, body) = w.readyz();
            s == 503 && body.contains("engine: down") && body.contains(source)
        });
        let during = committed(&nd.brokers(), &group, topic, 1);
        assert!(
            during <= 6,
            "{fault}: nothing past the fault is committed: {during}"
        );
        recovered_cleanly(nd, &w, topic, 1, 30);
        assert!(w.metric("ocrfleet_component_faults_total{component=\"engine\"}") > 0.0);
    }
}

/// An engine that never comes back (and one whose thread exits): the worker exits non-zero so
/// that Kubernetes restarts it, with nothing dead-lettered and nothing unfinished committed.
#[test]
fn an_engine_that_cannot_recover_ends_the_process_non_zero() {
    let stack = Stack::start("engdead");
    let (nd, srv) = (&stack.noida, &stack.images);
    for (name, fault, extra) in [
        (
            "engdeadf",
            "fail:4:inf",
            &["--engine-fault-timeout", "10s"][..],
        ),
        ("engdeadx", "exit:4", &[][..]),
    ] {
        let (group, index) = (format!("g-{name}"), format!("{name}-idx"));
        create_topics(&nd.brokers(), name, 1);
        produce(&nd.brokers(), name, 1, &messages(srv, 16, name));
        let mut args = vec!["--test-engine-fault", fault, "--ocr-batch", "2"];
        args.extend_from_slice(extra);
        let mut w = Worker::start(&nd.brokers(), &nd.es_url(), name, &group, &index, &args);
        let code = w.wait(Duration::from_secs(180));
        assert_ne!(
            code,
            0,
            "{fault}: must exit non-zero; log:\n{}",
            w.log_tail()
        );
        let indexed = es_count(&nd.es_url(), &index).unwrap_or(0) as i64;
        let done = committed(&nd.brokers(), &group, name, 1);
        assert!(
            done <= indexed,
            "{fault}: committed {done} but only {indexed} indexed"
        );
        assert!(done < 16, "{fault}: the rest is left for the next process");
        assert_eq!(
            read_all(
                &nd.brokers(),
                &format!("{name}.dlq"),
                1,
                Duration::from_secs(2)
            )
            .len(),
            0,
            "{fault}: no dead letters"
        );
        assert!(w.log_tail().contains("fatal"), "{}", w.log_tail());
    }
}

/// Ten SIGKILLs of one of two workers while 1 000 messages go through (tansu evicts a killed
/// member after its session time-out). Nothing is lost: the index holds exactly the unique ids,
/// and the group's commits reach the high watermark of every partition.
#[test]
fn ten_kill_9s_of_one_of_two_workers_lose_nothing_tansu() {
    let _g = serial();
    let nd = Noida::start("kill9");
    let tansu = Tansu::start();
    let srv = images_server();
    let brokers = tansu.brokers();
    let (topic, group, index, parts, n) = ("kill9", "g-kill9", "kill9-idx", 4, 1000);
    create_topics(&brokers, topic, parts);
    // One small image for all, so that 1 000 messages fit a CI run on two cores; they take
    // longer than the ten kills (2-6 s apart) on this machine.
    let values = same_image_messages(&srv.url("img/hello.png"), n, "k");
    produce(&brokers, topic, parts, &values);
    let extra = ["--max-messages", "50", "--ocr-batch", "16"];
    let start = |_: usize| Worker::start(&brokers, &nd.es_url(), topic, group, index, &extra);
    let mut workers = [start(0), start(1)];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut kills = 0;
    while kills < 10 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(2000 + seed % 4000));
        if es_count(&nd.es_url(), index).unwrap_or(0) >= n as u64 {
            break;
        }
        let victim = (seed >> 32) as usize % 2;
        workers[victim].sigkill();
        kills += 1;
        workers[victim] = start(kills);
    }
    println!("{kills} kills before the end");
    assert!(
        kills >= 5,
        "the run was long enough to kill at least 5 times"
    );
    wait_until("everything indexed", Duration::from_secs(900), || {
        es_count(&nd.es_url(), index) == Some(n as u64)
    });
    wait_until(
        "commits at the high watermark",
        Duration::from_secs(180),
        || {
            committed_and_high(&brokers, group, topic, parts)
                .iter()
                .all(|(c, h)| c == h)
        },
    );
    let ids: HashSet<String> = (0..n).map(|i| format!("k-{i}")).collect();
    for id in ids.iter().step_by(97) {
        assert!(es_get(&nd.es_url(), index, id).is_some(), "{id} is indexed");
    }
    assert_eq!(
        es_count(&nd.es_url(), index),
        Some(ids.len() as u64),
        "no duplicates"
    );
    assert_eq!(
        read_all(&brokers, "kill9.dlq", 1, Duration::from_secs(2)).len(),
        0
    );
}

/// Read-ahead is bounded in messages: with chunks of 20 (so at most 40 in flight), the worker
/// never holds much more than that, however long the backlog, and its commits follow.
#[test]
fn read_ahead_is_bounded_and_commits_follow_the_work() {
    let stack = Stack::start("bound");
    let (nd, srv) = (&stack.noida, &stack.images);
    let (topic, group, index, n) = ("bound", "g-bound", "bound-idx", 300);
    create_topics(&nd.brokers(), topic, 1);
    let values = same_image_messages(&srv.url("img/hello.png"), n, "b");
    produce(&nd.brokers(), topic, 1, &values);
    let w = Worker::start(
        &nd.brokers(),
        &nd.es_url(),
        topic,
        group,
        index,
        &["--max-messages", "20", "--ocr-batch", "8"],
    );
    let mut max_gap = 0.0f64;
    let mut max_behind = 0i64;
    let t = Instant::now();
    while es_count(&nd.es_url(), index).unwrap_or(0) < n as u64 {
        assert!(t.elapsed() < Duration::from_secs(600), "timed out");
        let consumed = w.metric("ocrfleet_messages_consumed_total");
        let done = w.metric("ocrfleet_messages_indexed_total");
        max_gap = max_gap.max(consumed - done);
        max_behind = max_behind.max(done as i64 - committed(&nd.brokers(), group, topic, 1));
        std::thread::sleep(Duration::from_millis(300));
    }
    println!("max consumed - indexed: {max_gap}; max indexed - committed: {max_behind}");
    // 40 in flight, plus what one poll returns after the pause takes effect.
    assert!(max_gap <= 60.0, "read-ahead went to {max_gap} messages");
    assert!(max_behind <= 60, "commits trailed by {max_behind} messages");
    wait_until("lag 0", Duration::from_secs(60), || {
        lag(&nd.brokers(), group, topic, 1) == 0
    });
}

/// An older record for an id (reordered, or a stale worker after an outage) cannot overwrite the
/// document of a newer one: the record timestamp is the external version.
#[test]
fn an_older_record_never_overwrites_a_newer_document() {
    let stack = Stack::start("order");
    let (nd, srv) = (&stack.noida, &stack.images);
    let (topic, group, index) = ("order", "g-order", "order-idx");
    create_topics(&nd.brokers(), topic, 2);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let newer = serde_json::json!({"url": srv.url("img/park.png"), "id": "same"}).to_string();
    let older = serde_json::json!({"url": srv.url("img/lake.png"), "id": "same"}).to_string();
    produce_at(&nd.brokers(), topic, 0, &newer, now);
    let w = Worker::start(&nd.brokers(), &nd.es_url(), topic, group, index, &[]);
    wait_until("newer indexed", Duration::from_secs(120), || {
        es_count(&nd.es_url(), index) == Some(1)
    });
    produce_at(&nd.brokers(), topic, 1, &older, now - 3_600_000);
    wait_until("older one processed", Duration::from_secs(120), || {
        w.metric("ocrfleet_messages_superseded_total") == 1.0
    });
    let doc = es_get(&nd.es_url(), index, "same").unwrap();
    assert!(
        doc["_source"]["url"]
            .as_str()
            .unwrap()
            .ends_with("park.png"),
        "{doc}"
    );
    assert_eq!(doc["_version"].as_i64(), Some(now));
    assert_eq!(w.metric("ocrfleet_messages_dead_lettered_total"), 0.0);
    wait_until("lag 0", Duration::from_secs(60), || {
        lag(&nd.brokers(), group, topic, 2) == 0
    });
}

/// A missing dead-letter topic is found at start, with a message that says what to do.
#[test]
fn a_missing_dead_letter_topic_fails_fast() {
    let _g = serial();
    let nd = Noida::start("nodlq");
    create_topic(&nd.brokers(), "nodlq", 1);
    let mut w = Worker::start(
        &nd.brokers(),
        &nd.es_url(),
        "nodlq",
        "g-nodlq",
        "nodlq-idx",
        &[],
    );
    let code = w.wait(Duration::from_secs(60));
    assert_ne!(code, 0);
    let log = std::fs::read_to_string(&w.log).unwrap();
    assert!(log.contains("\"nodlq.dlq\" does not exist"), "{log}");
    assert!(log.contains("--create-partitions"), "{log}");
}

/// An operator's own strict template (`--manage-template false`) with `metadata` mapped as a
/// strict object: a message whose `metadata` has a key the mapping does not know is refused
/// by Elasticsearch (item 400 `strict_dynamic_mapping_exception` within `metadata`). That is
/// the document's error, a dead letter (stage `index`), not an infrastructure fault retried
/// for ever behind which the sink stops; the messages around it are indexed.
#[test]
fn a_strict_template_refusing_a_producers_metadata_key_dead_letters_that_record_only() {
    let stack = Stack::start("strict");
    let (nd, srv) = (&stack.noida, &stack.images);
    let (topic, group, index) = (&stack.topic, &stack.group, &stack.index);
    create_topics(&nd.brokers(), topic, 1);
    // The worker's own mappings, with `metadata` a strict object of one known key.
    let template = ocrfleet_worker::es::document::index_template(index);
    let mut mappings = template["template"]["mappings"].clone();
    mappings["properties"]["metadata"] = serde_json::json!({
        "type": "object", "dynamic": "strict", "properties": {"shop": {"type": "keyword"}}
    });
    let (s, v) = blocking_json(
        "PUT",
        &format!("{}/{index}", nd.es_url()),
        Some(serde_json::json!({
            "settings": template["template"]["settings"].clone(),
            "mappings": mappings
        })),
    )
    .unwrap();
    assert_eq!(s, 200, "{v}");
    let url = srv.url("img/hello.png");
    let values = [
        serde_json::json!({"url": url, "id": "known", "metadata": {"shop": "a"}}).to_string(),
        serde_json::json!({"url": url, "id": "unknown", "metadata": {"evil": 1}}).to_string(),
        serde_json::json!({"url": url, "id": "none"}).to_string(),
    ];
    produce(&nd.brokers(), topic, 1, &values);
    let w = Worker::start(
        &nd.brokers(),
        &nd.es_url(),
        topic,
        group,
        index,
        &["--manage-template", "false"],
    );
    let dlq = read_all(&nd.brokers(), "strict.dlq", 1, Duration::from_secs(180));
    assert_eq!(dlq.len(), 1, "log:\n{}", w.log_tail());
    assert_eq!(
        dlq[0].stage_class(),
        ("index", "strict_dynamic_mapping_exception"),
        "{:?}",
        dlq[0]
    );
    assert!(dlq[0].value.as_deref().unwrap().contains("evil"));
    wait_until("the other two indexed", Duration::from_secs(120), || {
        es_count(&nd.es_url(), index) == Some(2)
    });
    wait_until("committed to the end", Duration::from_secs(60), || {
        lag(&nd.brokers(), group, topic, 1) == 0
    });
    assert!(w.ready(), "no fault left open");
}
