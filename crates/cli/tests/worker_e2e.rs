//! End-to-end tests of `ocrfleet worker` against real servers on 127.0.0.1: noida-db (Kafka and
//! Elasticsearch protocols), tansu (Kafka, for rebalance cases, because noida-db never evicts a
//! crashed member), a fault-injecting image server, real ONNX Runtime and weights. The
//! infrastructure faults (kill -9, outages, engine faults) are in `worker_faults.rs`.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;

const IMAGES: [(&str, &str); 6] = [
    ("invoice.png", "发票"),
    ("park.png", "公园"),
    ("hello.png", "HELLO"),
    ("coffee.png", "咖啡"),
    ("train.png", "火车站"),
    ("lake.png", "湖泊"),
];

/// `n` good messages cycling through the known images; every third carries an explicit id.
fn good_messages(srv: &ImageServer, n: usize, tag: &str) -> Vec<String> {
    good_messages_at(srv, "img", n, tag)
}

/// [`good_messages`] served from `route` of the image server (`img`, or `late/MS` for images
/// that arrive after MS ms).
fn good_messages_at(srv: &ImageServer, route: &str, n: usize, tag: &str) -> Vec<String> {
    (0..n)
        .map(|i| {
            let (img, _) = IMAGES[i % IMAGES.len()];
            let url = srv.url(&format!("{route}/{img}"));
            match i % 3 {
                0 => serde_json::json!({"url": url, "id": format!("{tag}-{i}"), "metadata": {"n": i}}).to_string(),
                1 => serde_json::json!({"url": url}).to_string(),
                _ => url,
            }
        })
        .collect()
}

#[test]
fn happy_path_indexes_everything_commits_and_exits_cleanly_on_sigterm() {
    let stack = Stack::start("happy");
    let (nd, srv) = (&stack.noida, &stack.images);
    let (topic, group, index, parts, n) = ("happy", "g-happy", "happy-idx", 3, 210);
    create_topics(&nd.brokers(), topic, parts);
    let msgs = good_messages(srv, n, "h");
    produce(&nd.brokers(), topic, parts, &msgs);

    let mut w = Worker::start(
        &nd.brokers(),
        &nd.es_url(),
        topic,
        group,
        index,
        &["--ocr-batch", "16"],
    );
    // The engine is the slow stage here (downloads are on loopback), so images wait in the
    // `ready` queue while it works, and the queue-depth gauge shows them.
    let mut most_ready = 0.0f64;
    wait_until("all documents indexed", Duration::from_secs(600), || {
        most_ready = most_ready.max(w.metric("ocrfleet_queue_depth{queue=\"ready\"}"));
        es_count(&nd.es_url(), index) == Some(n as u64)
    });
    wait_until(
        "offsets committed to the end",
        Duration::from_secs(60),
        || lag(&nd.brokers(), group, topic, parts) == 0,
    );
    assert!(most_ready > 0.0, "no image ever waited for the engine");
    // Drained: every queue is empty once everything is indexed (sampled every second).
    std::thread::sleep(Duration::from_millis(1500));
    for queue in ["chunks", "ready", "outcomes"] {
        let line = format!("ocrfleet_queue_depth{{queue=\"{queue}\"}}");
        assert!(w.metrics().contains(&format!("{line} 0")), "{line} not 0");
    }
    assert!(
        w.ready(),
        "readyz must be 200 with broker, ES and engine up"
    );
    assert_eq!(w.metric("ocrfleet_messages_indexed_total"), n as f64);
    assert_eq!(w.metric("ocrfleet_messages_consumed_total"), n as f64);
    assert_eq!(w.metric("ocrfleet_messages_dead_lettered_total"), 0.0);
    assert!(w.metric("ocrfleet_downloaded_bytes_total") > 0.0);
    // On CPU every shape shares one session per model, so there is nothing to warm up.
    assert_eq!(w.metric("ocrfleet_engine_sessions"), 3.0);
    assert_eq!(w.metric("ocrfleet_engine_warmup_seconds"), 0.0);
    let metrics = w.metrics();
    let build = metrics
        .lines()
        .find(|l| l.starts_with("ocrfleet_build_info{"))
        .expect("ocrfleet_build_info");
    for label in [
        "onnxruntime=\"1.32.0\"",
        "models=\"PP-OCRv4-mobile-det+PP-OCRv6-small-rec\"",
        "device=\"CPUExecutionProvider\"",
        "fp16=\"false\"",
    ] {
        assert!(build.contains(label), "{label} missing: {build}");
    }
    assert!(build.ends_with(" 1"), "{build}");
    assert!(w.metric("process_resident_memory_bytes") > 0.0);
    assert!(w.metric("process_open_fds") > 0.0);
    for stage in ["det", "crop", "cls", "rec"] {
        let line = format!("ocrfleet_engine_stage_seconds_total{{stage=\"{stage}\"}}");
        let v: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(line.as_str()))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{line} missing from /metrics"));
        assert!(v > 0.0, "{line} is {v}");
    }
    assert!(w
        .metrics()
        .contains("ocrfleet_batch_size_bucket{stage=\"ocr\""));

    // The right text for known images: each word finds exactly the documents of its image.
    for (k, (img, word)) in IMAGES.iter().enumerate() {
        let ids: HashSet<String> = es_search(&nd.es_url(), index, word).into_iter().collect();
        let expected = (0..n).filter(|i| i % IMAGES.len() == k).count();
        assert_eq!(
            ids.len(),
            expected,
            "search {word:?} should find every {img} document"
        );
    }
    // Part of a word, which the `text` field cannot find, is found through `text.grams` (the
    // subfield for words that OCR glued to a neighbour).
    let hello = (0..n).filter(|i| i % IMAGES.len() == 2).count();
    assert!(es_search(&nd.es_url(), index, "hell").is_empty());
    assert_eq!(
        es_search_field(&nd.es_url(), index, "text.grams", "hell").len(),
        hello
    );
    // Each line carries its words with boxes inside the image.
    let doc = es_get(&nd.es_url(), index, "h-0").expect("document with explicit id");
    let (w_img, h_img) = (
        doc["_source"]["width"].as_i64().unwrap(),
        doc["_source"]["height"].as_i64().unwrap(),
    );
    for line in doc["_source"]["lines"].as_array().unwrap() {
        let words = line["words"].as_array().unwrap();
        assert!(!words.is_empty(), "{line}");
        let joined: String = words.iter().map(|w| w["text"].as_str().unwrap()).collect();
        let squashed: String = line["text"].as_str().unwrap().split_whitespace().collect();
        assert_eq!(joined, squashed, "the words are the line's text: {line}");
        for w in words {
            for p in w["box"].as_array().unwrap() {
                let (x, y) = (p[0].as_i64().unwrap(), p[1].as_i64().unwrap());
                assert!((0..=w_img).contains(&x) && (0..=h_img).contains(&y), "{w}");
            }
        }
    }
    // Explicit ids are used as document ids; others use topic-partition-offset.
    let doc = es_get(&nd.es_url(), index, "h-0").expect("document with explicit id");
    assert_eq!(doc["_source"]["metadata"]["n"], 0);
    assert_eq!(doc["_source"]["source"]["topic"], topic);
    assert!(es_get(&nd.es_url(), index, &format!("{topic}-1-0")).is_some());

    // Per-partition commits are at the end: lag 0 on all 3 partitions.
    for (p, (c, h)) in committed_and_high(&nd.brokers(), group, topic, parts)
        .into_iter()
        .enumerate()
    {
        assert_eq!(c, h, "partition {p} committed {c} of {h}");
        assert!(h > 0);
    }
    w.sigterm();
    assert_eq!(
        w.wait(Duration::from_secs(60)),
        0,
        "graceful exit code; log:\n{}",
        w.log_tail()
    );
    let log = w.log_tail();
    assert!(log.contains("left the consumer group"));
    // One summary line on exit (issue 10).
    assert!(
        log.contains(&format!(
            "worker stopped: consumed {n}, indexed {n}, superseded 0, dead-lettered 0 in "
        )),
        "{log}"
    );
}

#[test]
fn each_failure_gives_exactly_one_dead_letter_record_and_the_rest_is_indexed() {
    let stack = Stack::start("faults");
    let (nd, srv) = (&stack.noida, &stack.images);
    let (topic, group, index, parts) = ("faults", "g-faults", "faults-idx", 2);
    create_topics(&nd.brokers(), topic, parts);
    // (message, expected stage or None when it must be indexed, expected class prefix)
    let cases: Vec<(String, Option<&str>, &str)> = vec![
        (srv.url("status/404"), Some("fetch"), "http_404"),
        (srv.url("status/500"), Some("fetch"), "http_500"),
        (srv.url("flaky/hello.png"), None, ""),
        (srv.url("slow/park.png"), Some("fetch"), "timeout"),
        (srv.url("big"), Some("fetch"), "too_large"),
        (srv.url("text"), Some("decode"), "unknown_format"),
        (srv.url("truncated/lake.png"), Some("decode"), ""),
        ("{not json".into(), Some("parse"), "bad_json"),
        (r#"{"id":"no-url"}"#.into(), Some("parse"), "missing_url"),
        (
            r#"{"url":"ftp://127.0.0.1/a.png"}"#.into(),
            Some("fetch"),
            "scheme",
        ),
        (
            r#"{"url":"http://10.1.2.3/a.png"}"#.into(),
            Some("fetch"),
            "ssrf",
        ),
        (
            r#"{"url":"http://169.254.169.254/latest/meta-data/"}"#.into(),
            Some("fetch"),
            "ssrf",
        ),
        (srv.url("img/invoice.png"), None, ""),
        (srv.url("img/coffee.png"), None, ""),
    ];
    let values: Vec<String> = cases.iter().map(|c| c.0.clone()).collect();
    let coords = produce(&nd.brokers(), topic, parts, &values);
    let failing = cases.iter().filter(|c| c.1.is_some()).count();
    let good = cases.len() - failing;

    let w = Worker::start(
        &nd.brokers(),
        &nd.es_url(),
        topic,
        group,
        index,
        &["--fetch-max-bytes", "1MiB"],
    );
    let dlq = read_all(
        &nd.brokers(),
        "faults.dlq",
        failing,
        Duration::from_secs(180),
    );
    wait_until("good documents indexed", Duration::from_secs(120), || {
        es_count(&nd.es_url(), index) == Some(good as u64)
    });
    wait_until("lag 0", Duration::from_secs(60), || {
        lag(&nd.brokers(), group, topic, parts) == 0
    });
    // No extra records arrive later.
    let dlq_again = read_all(
        &nd.brokers(),
        "faults.dlq",
        failing + 1,
        Duration::from_secs(3),
    );
    assert_eq!(dlq_again.len(), failing, "exactly one record per failure");

    let by_offset: HashMap<(String, String), &DlqRecord> = dlq
        .iter()
        .map(|r| {
            (
                (
                    r.headers["ocrfleet.source.partition"].clone(),
                    r.headers["ocrfleet.source.offset"].clone(),
                ),
                r,
            )
        })
        .collect();
    for ((value, stage, class), (p, o)) in cases.iter().zip(&coords) {
        let rec = by_offset.get(&(p.to_string(), o.to_string()));
        match stage {
            None => assert!(
                rec.is_none(),
                "{value} should be indexed, not dead-lettered"
            ),
            Some(stage) => {
                let rec = rec.unwrap_or_else(|| panic!("no dead-letter record for {value}"));
                assert_eq!(
                    rec.headers["ocrfleet.error.stage"], *stage,
                    "{value}: {:?}",
                    rec.headers
                );
                assert!(
                    rec.headers["ocrfleet.error.class"].starts_with(class),
                    "{value}: {:?}",
                    rec.headers
                );
                assert!(!rec.headers["ocrfleet.error.message"].is_empty());
                assert_eq!(rec.headers["ocrfleet.source.topic"], topic);
                assert_eq!(
                    rec.value.as_deref(),
                    Some(value.as_str()),
                    "original value kept"
                );
                for h in [
                    "ocrfleet.error.attempts",
                    "ocrfleet.worker",
                    "ocrfleet.error.time",
                ] {
                    assert!(rec.headers.contains_key(h), "missing header {h}");
                }
            }
        }
    }
    // 500 forever was retried up to the attempt limit; 500-then-200 was retried once and indexed.
    assert_eq!(srv.hits("status/500"), 3);
    assert_eq!(srv.hits("flaky/hello.png"), 2);
    assert_eq!(srv.hits("status/404"), 1, "4xx is not retried");
    assert!(w.healthy(), "the worker keeps running");
    assert_eq!(
        w.metric("ocrfleet_messages_dead_lettered_total"),
        failing as f64
    );
}

#[test]
fn elasticsearch_rejections_are_dead_lettered_and_the_rest_indexed() {
    let stack = Stack::start("reject");
    let (nd, srv) = (&stack.noida, &stack.images);
    let (topic, group, index) = ("reject", "g-reject", "reject-idx");
    create_topics(&nd.brokers(), topic, 1);
    // An index that exists already with an older mapping (an operator's, or a previous template
    // version) where `message_id` is an integer: documents whose id is not a number are refused
    // item by item (HTTP 400 inside a 200 bulk answer), the others are indexed.
    let template = ocrfleet_worker::es::document::index_template(index);
    let mut mapping = template["template"]["mappings"].clone();
    mapping["properties"]["message_id"] = serde_json::json!({"type": "integer"});
    let (s, body) = blocking_json(
        "PUT",
        &format!("{}/{index}", nd.es_url()),
        Some(
            serde_json::json!({"settings": template["template"]["settings"], "mappings": mapping}),
        ),
    )
    .unwrap();
    assert_eq!(s, 200, "{body}");
    let url = srv.url("img/hello.png");
    let mut msgs = Vec::new();
    for i in 0..3 {
        msgs.push(serde_json::json!({"url": url, "id": format!("bad{i}")}).to_string());
        msgs.push(serde_json::json!({"url": url, "id": format!("{}", 100 + i)}).to_string());
    }
    produce(&nd.brokers(), topic, 1, &msgs);
    let w = Worker::start(&nd.brokers(), &nd.es_url(), topic, group, index, &[]);
    let dlq = read_all(&nd.brokers(), "reject.dlq", 3, Duration::from_secs(180));
    wait_until("the others indexed", Duration::from_secs(120), || {
        es_count(&nd.es_url(), index) == Some(3)
    });
    wait_until("lag 0", Duration::from_secs(60), || {
        lag(&nd.brokers(), group, topic, 1) == 0
    });
    assert_eq!(dlq.len(), 3);
    for r in &dlq {
        assert_eq!(r.headers["ocrfleet.error.stage"], "index");
        assert!(
            r.headers["ocrfleet.error.class"].ends_with("_exception"),
            "the class is Elasticsearch's error type: {:?}",
            r.headers
        );
        assert!(r.value.as_deref().unwrap().contains("\"bad"));
    }
    for i in 0..3 {
        assert!(es_get(&nd.es_url(), index, &format!("{}", 100 + i)).is_some());
        assert!(es_get(&nd.es_url(), index, &format!("bad{i}")).is_none());
    }
    assert!(
        w.ready(),
        "item-level rejections are not an infrastructure fault"
    );
}

#[test]
fn an_index_made_by_the_previous_template_gets_the_new_fields_and_nothing_is_dead_lettered() {
    let stack = Stack::start("oldmap");
    let (nd, srv) = (&stack.noida, &stack.images);
    let (topic, group, index) = ("oldmap", "g-oldmap", "oldmap-idx");
    create_topics(&nd.brokers(), topic, 1);
    // Template version 2's index: strict, no `lines.words`, no `text.grams` (nor its analyzer).
    let mut mapping =
        ocrfleet_worker::es::document::index_template(index)["template"]["mappings"].clone();
    mapping["properties"]["lines"]["properties"]
        .as_object_mut()
        .unwrap()
        .remove("words");
    mapping["properties"]["text"]["fields"]
        .as_object_mut()
        .unwrap()
        .remove("grams");
    let (s, body) = blocking_json(
        "PUT",
        &format!("{}/{index}", nd.es_url()),
        Some(serde_json::json!({"mappings": mapping})),
    )
    .unwrap();
    assert_eq!(s, 200, "{body}");
    // Without the worker's start-up mapping update, a document with words is refused.
    let (s, body) = blocking_json(
        "POST",
        &format!("{}/{index}/_doc/probe", nd.es_url()),
        Some(serde_json::json!({"lines": [{"text": "a", "words": [{"text": "a"}]}]})),
    )
    .unwrap();
    assert_eq!(s, 400, "{body}");
    let url = srv.url("img/hello.png");
    let msgs: Vec<String> = (0..6)
        .map(|i| serde_json::json!({"url": url, "id": format!("old{i}")}).to_string())
        .collect();
    produce(&nd.brokers(), topic, 1, &msgs);
    let w = Worker::start(&nd.brokers(), &nd.es_url(), topic, group, index, &[]);
    wait_until("all indexed", Duration::from_secs(300), || {
        es_count(&nd.es_url(), index) == Some(6)
    });
    assert_eq!(w.metric("ocrfleet_messages_dead_lettered_total"), 0.0);
    let doc = es_get(&nd.es_url(), index, "old0").expect("document");
    let words = &doc["_source"]["lines"][0]["words"];
    assert!(
        words.as_array().is_some_and(|w| !w.is_empty()),
        "the document keeps its words: {doc}"
    );
    assert!(w.ready());
}

#[test]
fn elasticsearch_outage_holds_commits_and_everything_is_indexed_after_it_returns() {
    let stack = Stack::start("outage");
    let (nd, srv) = (&stack.noida, &stack.images);
    let (topic, group, index, parts, n) = ("outage", "g-outage", "outage-idx", 2, 60);
    create_topics(&nd.brokers(), topic, parts);
    let first = good_messages(srv, n / 2, "a");
    produce(&nd.brokers(), topic, parts, &first);
    // Time for the late images of the second half (the harness's default is 2 s).
    let w = Worker::start(
        &nd.brokers(),
        &nd.es_url(),
        topic,
        group,
        index,
        &["--fetch-timeout", "30s"],
    );
    wait_until("first half indexed", Duration::from_secs(300), || {
        es_count(&nd.es_url(), index) == Some((n / 2) as u64)
    });
    wait_until("first half committed", Duration::from_secs(60), || {
        lag(&nd.brokers(), group, topic, parts) == 0
    });

    // The second half's images arrive 15 s late, so that the worker has taken all of them
    // before Elasticsearch goes down (once its probe sees the outage, intake pauses and would
    // take nothing more) and can index none of them: nothing past them may be committed.
    let second = good_messages_at(srv, "late/15000", n / 2, "b");
    produce(&nd.brokers(), topic, parts, &second);
    wait_until(
        "worker consumed the second half",
        Duration::from_secs(120),
        || w.metric("ocrfleet_messages_consumed_total") >= n as f64,
    );
    assert_eq!(
        es_count(&nd.es_url(), index),
        Some((n / 2) as u64),
        "the second half is still downloading when Elasticsearch stops"
    );
    nd.stop_es();
    wait_until("readyz reports the outage", Duration::from_secs(60), || {
        !w.ready()
    });
    // The late images have arrived and been read by now; their documents cannot be written.
    std::thread::sleep(Duration::from_secs(20));
    let committed: i64 = committed_and_high(&nd.brokers(), group, topic, parts)
        .iter()
        .map(|(c, _)| c)
        .sum();
    assert_eq!(
        committed,
        (n / 2) as i64,
        "commits must not move past unindexed messages during the outage"
    );
    assert!(!w.ready(), "readyz reports Elasticsearch down");
    assert!(w.healthy());

    nd.start_es();
    wait_until(
        "everything indexed after the outage",
        Duration::from_secs(300),
        || es_count(&nd.es_url(), index) == Some(n as u64),
    );
    wait_until("lag 0", Duration::from_secs(60), || {
        lag(&nd.brokers(), group, topic, parts) == 0
    });
    assert_eq!(w.metric("ocrfleet_messages_dead_lettered_total"), 0.0);
    assert!(w.metric("ocrfleet_es_retries_total") > 0.0);
}

#[test]
fn redelivery_without_commit_overwrites_and_never_duplicates() {
    let stack = Stack::start("redeliver");
    let (nd, srv) = (&stack.noida, &stack.images);
    let (topic, group, index, parts, n) = ("redeliver", "g-redeliver", "redeliver-idx", 3, 30);
    create_topics(&nd.brokers(), topic, parts);
    produce(&nd.brokers(), topic, parts, &good_messages(srv, n, "r"));
    let mut w = Worker::start(
        &nd.brokers(),
        &nd.es_url(),
        topic,
        group,
        index,
        &["--exit-when-idle", "3s"],
    );
    assert_eq!(w.wait(Duration::from_secs(300)), 0, "{}", w.log_tail());
    assert_eq!(es_count(&nd.es_url(), index), Some(n as u64));
    assert_eq!(lag(&nd.brokers(), group, topic, parts), 0);

    // As if the commits had been lost: every message is delivered again.
    reset_group(&nd.brokers(), group, topic, parts, 0);
    assert_eq!(lag(&nd.brokers(), group, topic, parts), n as i64);
    let mut w = Worker::start(
        &nd.brokers(),
        &nd.es_url(),
        topic,
        group,
        index,
        &["--exit-when-idle", "3s"],
    );
    assert_eq!(w.wait(Duration::from_secs(300)), 0, "{}", w.log_tail());
    assert_eq!(
        es_count(&nd.es_url(), index),
        Some(n as u64),
        "same count after redelivery"
    );
    // External versioning: the version is the record's timestamp, and the same record
    // written again overwrites (equal version), so the second worker indexed all n again.
    let doc = es_get(&nd.es_url(), index, "r-0").unwrap();
    assert_eq!(
        doc["_version"].as_i64(),
        doc["_source"]["source"]["timestamp"].as_i64(),
        "{doc}"
    );
    assert!(
        w.log_tail().contains(&format!("indexed {n}")),
        "{}",
        w.log_tail()
    );
    assert_eq!(lag(&nd.brokers(), group, topic, parts), 0);
}

/// Shared body of the join test, run against noida-db and tansu.
fn second_worker_joins(brokers: &str, es: &str, name: &str, check_lag: bool) {
    let srv = images_server();
    let (topic, group, index, parts, n) = (
        name.to_owned(),
        format!("g-{name}"),
        format!("{name}-idx"),
        4,
        120,
    );
    create_topics(brokers, &topic, parts);
    produce(brokers, &topic, parts, &good_messages(&srv, n, name));
    // noida-db's group coordinator was seen (CI, 2026-11-27) to hold a JoinGroup for the whole
    // rebalance timeout (max.poll.interval.ms, 5 min by default) when a member's commits were in
    // flight as the second member joined; twice that outlasts the test. A short rebalance timeout
    // bounds each such wait; the worker's poll loop never blocks for long, so it is safe.
    let args = [
        "--max-messages",
        "20",
        "--kafka-option",
        "session.timeout.ms=10000,max.poll.interval.ms=20000",
    ];
    let a = Worker::start(brokers, es, &topic, &group, &index, &args);
    wait_until("worker A made progress", Duration::from_secs(300), || {
        es_count(es, &index).unwrap_or(0) >= 20
    });
    let b = Worker::start(brokers, es, &topic, &group, &index, &args);
    wait_until(
        "everything indexed by A and B",
        Duration::from_secs(600),
        || es_count(es, &index) == Some(n as u64),
    );
    if check_lag {
        wait_until("lag 0", Duration::from_secs(60), || {
            lag(brokers, &group, &topic, parts) == 0
        });
    }
    // Duplicates appear only as overwrites: the count equals the messages.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(es_count(es, &index), Some(n as u64));
    let total =
        a.metric("ocrfleet_messages_indexed_total") + b.metric("ocrfleet_messages_indexed_total");
    assert!(total >= n as f64, "indexed {total} of {n}");
    assert!(
        a.metric("ocrfleet_rebalances_total") >= 2.0,
        "A saw the rebalance"
    );
}

#[test]
fn a_second_worker_joining_mid_run_loses_nothing_noida() {
    let _g = serial();
    let nd = Noida::start("join");
    second_worker_joins(&nd.brokers(), &nd.es_url(), "joinn", true);
}

#[test]
fn a_second_worker_joining_mid_run_loses_nothing_tansu() {
    let _g = serial();
    let nd = Noida::start("joint");
    let tansu = Tansu::start();
    // tansu's end offsets are wrong for multi-record batches, so lag is not checked there.
    second_worker_joins(&tansu.brokers(), &nd.es_url(), "joint", false);
}

/// Index lifecycle (issue 10): with nothing there, the worker creates `<index>-000001` behind
/// the write alias `<index>` and writes through it; an older ocrfleet template is upgraded with
/// the operator's settings kept, and a current one is left alone on the next start.
#[test]
fn the_worker_writes_through_an_alias_and_keeps_an_operators_template_settings() {
    let stack = Stack::start("alias");
    let (nd, srv) = (&stack.noida, &stack.images);
    let (topic, group, index) = ("alias", "g-alias", "alias-idx");
    let es = nd.es_url();
    create_topics(&nd.brokers(), topic, 1);
    // Template version 2 as a worker of that version left it, plus an operator's settings.
    let mut older = ocrfleet_worker::es::document::index_template(index);
    older["_meta"]["version"] = serde_json::json!(2);
    older["_meta"]["owner"] = serde_json::json!("search-team");
    older["template"]["settings"]["index"]["number_of_replicas"] = serde_json::json!("0");
    older["template"]["settings"]["index"]["refresh_interval"] = serde_json::json!("5s");
    let (s, body) =
        blocking_json("PUT", &format!("{es}/_index_template/{index}"), Some(older)).unwrap();
    assert_eq!(s, 200, "{body}");
    produce(&nd.brokers(), topic, 1, &good_messages(srv, 4, "al"));
    let mut w = Worker::start(&nd.brokers(), &es, topic, group, index, &[]);
    wait_until(
        "indexed through the alias",
        Duration::from_secs(300),
        || es_count(&es, index) == Some(4),
    );
    let (s, aliases) = blocking_json("GET", &format!("{es}/_alias/{index}"), None).unwrap();
    assert_eq!(s, 200, "{aliases}");
    assert_eq!(
        aliases,
        serde_json::json!({format!("{index}-000001"): {"aliases": {index: {"is_write_index": true}}}})
    );
    let template = |es: &str| {
        let (s, t) = blocking_json("GET", &format!("{es}/_index_template/{index}"), None).unwrap();
        assert_eq!(s, 200, "{t}");
        t["index_templates"][0]["index_template"].clone()
    };
    let t = template(&es);
    assert_eq!(
        t["_meta"]["version"],
        ocrfleet_worker::es::document::TEMPLATE_VERSION,
        "upgraded: {t}"
    );
    assert_eq!(t["_meta"]["owner"], "search-team", "{t}");
    let settings = &t["template"]["settings"]["index"];
    assert_eq!(settings["number_of_replicas"], "0", "{t}");
    assert_eq!(settings["refresh_interval"], "5s", "{t}");
    assert!(
        settings["analysis"]["analyzer"]["ocrfleet_grams"].is_object(),
        "{t}"
    );
    assert_eq!(
        t["index_patterns"],
        serde_json::json!([format!("{index}-*")])
    );
    // The write alias deleted by mistake: the probe says so, until it is put back.
    let first = format!("{index}-000001");
    let (s, body) = blocking_json("DELETE", &format!("{es}/{first}/_alias/{index}"), None).unwrap();
    assert_eq!(s, 200, "{body}");
    wait_until(
        "readyz says the alias is gone",
        Duration::from_secs(60),
        || {
            let (s, body) = w.readyz();
            s == 503 && body.contains("write alias") && body.contains("is gone")
        },
    );
    let (s, body) = blocking_json(
        "POST",
        &format!("{es}/_aliases"),
        Some(serde_json::json!({"actions": [{"add": {"index": first, "alias": index, "is_write_index": true}}]})),
    )
    .unwrap();
    assert_eq!(s, 200, "{body}");
    wait_until("ready again", Duration::from_secs(60), || w.ready());
    w.sigterm();
    assert_eq!(w.wait(Duration::from_secs(60)), 0);

    // The operator changes the current template; a restart leaves it as it is.
    let mut edited = t.clone();
    edited["template"]["settings"]["index"]["number_of_replicas"] = serde_json::json!("2");
    let (s, body) = blocking_json(
        "PUT",
        &format!("{es}/_index_template/{index}"),
        Some(edited),
    )
    .unwrap();
    assert_eq!(s, 200, "{body}");
    produce(&nd.brokers(), topic, 1, &good_messages(srv, 2, "al2"));
    let w = Worker::start(&nd.brokers(), &es, topic, group, index, &[]);
    wait_until(
        "indexed after the restart",
        Duration::from_secs(300),
        || es_count(&es, index) == Some(6),
    );
    let t = template(&es);
    assert_eq!(
        t["template"]["settings"]["index"]["number_of_replicas"], "2",
        "the operator's change survives a restart: {t}"
    );
    assert!(w
        .log_tail()
        .contains("index template is current; left as it is"));
}

/// `--manage-template false`: the worker changes nothing in Elasticsearch. While the index is
/// missing it waits, not ready, consuming nothing and dead-lettering nothing; once the operator
/// creates it, everything is indexed.
#[test]
fn without_template_management_a_missing_index_is_waited_for_not_dead_lettered() {
    let stack = Stack::start("nomanage");
    let (nd, srv) = (&stack.noida, &stack.images);
    let (topic, group, index) = ("nomanage", "g-nomanage", "nomanage-idx");
    let es = nd.es_url();
    create_topics(&nd.brokers(), topic, 1);
    produce(&nd.brokers(), topic, 1, &good_messages(srv, 3, "nm"));
    let w = Worker::start(
        &nd.brokers(),
        &es,
        topic,
        group,
        index,
        &["--manage-template", "false"],
    );
    wait_until(
        "readyz says what is missing",
        Duration::from_secs(120),
        || {
            let (status, body) = w.readyz();
            status == 503 && body.contains("--manage-template is false")
        },
    );
    assert!(w.healthy(), "alive while it waits");
    assert_eq!(w.metric("ocrfleet_messages_consumed_total"), 0.0);
    let (s, _) = blocking_json("GET", &format!("{es}/_index_template/{index}"), None).unwrap();
    assert_eq!(s, 404, "no template installed");
    // The operator creates the index (here with ocrfleet's mapping).
    let body = ocrfleet_worker::es::document::index_template(index)["template"].clone();
    let (s, r) = blocking_json("PUT", &format!("{es}/{index}"), Some(body)).unwrap();
    assert_eq!(s, 200, "{r}");
    wait_until(
        "indexed once the index exists",
        Duration::from_secs(300),
        || es_count(&es, index) == Some(3),
    );
    wait_until("ready", Duration::from_secs(60), || w.ready());
    assert_eq!(w.metric("ocrfleet_messages_dead_lettered_total"), 0.0);
}

#[test]
fn the_configuration_reference_matches_the_flags() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ocrfleet"))
        .args(["worker", "--print-reference"])
        .output()
        .unwrap();
    let table = String::from_utf8(out.stdout).unwrap();
    let doc = std::fs::read_to_string(repo_root().join("deploy/docs/configuration.md")).unwrap();
    assert!(table.lines().count() > 30);
    assert!(
        doc.contains(&table),
        "deploy/docs/configuration.md is out of date: regenerate its table with `ocrfleet worker --print-reference`"
    );
}
