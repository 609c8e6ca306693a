//! `ocrfleet replay` end to end (issue 10): dead-letter on a fault, fix the fault, replay,
//! indexed. Real noida-db (Kafka and Elasticsearch protocols), a real image server that answers
//! 404 until the test gives it the images, the real worker and the real `produce` and `replay`
//! commands as child processes.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

/// Runs `ocrfleet args` (with `stdin`) to its end: (exit code, stdout, stderr).
fn ocrfleet(args: &[&str], stdin: &str) -> (Option<i32>, String, String) {
    run_cli(args, &[], stdin, Duration::from_secs(180))
}

fn partitions(brokers: &str, topic: &str) -> usize {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    md.topics()[0].partitions().len()
}

/// The line of the replay summary table for (stage, class), as (stage, class, count).
fn table_row(out: &str, stage: &str, class: &str) -> Option<u64> {
    out.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() == 3 && f[0] == stage && f[1] == class).then(|| f[2].parse().unwrap())
    })
}

#[test]
fn dead_letters_replayed_after_the_fault_is_fixed_are_indexed_once() {
    let stack = Stack::start("replay");
    let (nd, srv) = (&stack.noida, &stack.images);
    let (topic, group, index) = ("replay", "g-replay", "replay-idx");
    let brokers = nd.brokers();
    let hello = std::fs::read(repo_root().join("tests/fixtures/worker/hello.png")).unwrap();
    let coffee = std::fs::read(repo_root().join("tests/fixtures/worker/coffee.png")).unwrap();

    // `produce --create-partitions 2` makes both topics with 2 partitions each, and sends
    // three messages whose images are not there yet (404), one that is, and one bad line.
    let late_a = srv.url("blob/late-a.png");
    let late_b = srv.url("blob/late-b.png");
    let input = format!(
        "{late_a}\n{}\n{}\n",
        serde_json::json!({"url": late_b, "id": "late-b"}),
        srv.url("img/invoice.png"),
    );
    let (code, out, err) = ocrfleet(
        &[
            "produce",
            "--brokers",
            &brokers,
            "--topic",
            topic,
            "--create-partitions",
            "2",
        ],
        &input,
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(partitions(&brokers, topic), 2);
    assert_eq!(
        partitions(&brokers, "replay.dlq"),
        2,
        "the DLQ gets the same partitions"
    );
    // A record with a producer header (kept through the dead-letter topic and the replay), and
    // one that is bad for good (parse stage: not replayed with --stage fetch).
    produce_raw_header(
        &brokers,
        topic,
        0,
        b"trace",
        srv.url("blob/late-c.png").as_bytes(),
    );
    produce(&brokers, topic, 2, &["{not json".to_owned()]);

    let w = Worker::start(
        &brokers,
        &nd.es_url(),
        topic,
        group,
        index,
        &["--replay-key", KEY],
    );
    let dlq = read_all(&brokers, "replay.dlq", 4, Duration::from_secs(180));
    assert_eq!(dlq.len(), 4, "three 404s and one bad line dead-lettered");
    wait_until("the good image indexed", Duration::from_secs(120), || {
        es_count(&nd.es_url(), index) == Some(1)
    });
    // The coordinates each 404 came from, by URL.
    let origin: HashMap<String, String> = dlq
        .iter()
        .filter(|r| r.headers["ocrfleet.error.stage"] == "fetch")
        .map(|r| {
            let v = r.value.clone().unwrap();
            let url = if v.starts_with('{') {
                serde_json::from_str::<serde_json::Value>(&v).unwrap()["url"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            } else {
                v
            };
            let coords = format!(
                "{topic}-{}-{}",
                r.headers["ocrfleet.source.partition"], r.headers["ocrfleet.source.offset"]
            );
            (url, coords)
        })
        .collect();
    assert_eq!(origin.len(), 3, "{dlq:?}");

    // Fix the fault: the images are there now.
    for name in ["late-a.png", "late-c.png"] {
        srv.put(name, hello.clone());
    }
    srv.put("late-b.png", coffee.clone());

    // Dry run: counts by stage and class, sends nothing.
    let replay = |extra: &[&str]| {
        let mut args = vec![
            "replay",
            "--brokers",
            &brokers,
            "--topic",
            topic,
            "--timeout",
            "20s",
            "--replay-key",
            KEY,
        ];
        args.extend_from_slice(extra);
        ocrfleet(&args, "")
    };
    let (code, out, err) = replay(&["--dry-run"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(table_row(&out, "fetch", "http_404"), Some(3), "{out}");
    assert_eq!(table_row(&out, "parse", "bad_json"), Some(1), "{out}");
    assert!(
        out.contains("read 4 of 4, 4 matching would be replayed"),
        "{out}"
    );
    let (code, out, _) = replay(&["--dry-run", "--stage", "fetch", "--since", "1h"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("3 matching would be replayed"), "{out}");
    let (_, out, _) = replay(&["--dry-run", "--until", "1h"]);
    assert!(out.contains("0 matching would be replayed"), "{out}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        es_count(&nd.es_url(), index),
        Some(1),
        "a dry run sends nothing"
    );

    // The replay: only the fetch failures go back, and are indexed.
    let (code, out, err) = replay(&["--stage", "fetch"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("matching 3, replayed 3, failed 0"), "{out}");
    wait_until(
        "the replayed images indexed",
        Duration::from_secs(180),
        || es_count(&nd.es_url(), index) == Some(4),
    );
    // A message without an id gets the document its original would have had; one with an id
    // keeps it; the producer's header came through, with the replay count.
    let a = es_get(&nd.es_url(), index, &origin[&late_a]).expect("late-a under its original id");
    assert!(a["_source"]["text"].as_str().unwrap().contains("HELLO"));
    assert_eq!(a["_source"]["headers"]["ocrfleet.replay.count"], "1");
    assert_eq!(
        a["_source"]["headers"]["ocrfleet.replay.of"],
        origin[&late_a]
    );
    assert!(a["_source"]["headers"]
        .as_object()
        .unwrap()
        .keys()
        .all(|k| !k.starts_with("ocrfleet.error.")));
    let b = es_get(&nd.es_url(), index, "late-b").expect("late-b under its own id");
    assert!(b["_source"]["text"].as_str().unwrap().contains("咖啡"));
    let c = es_get(&nd.es_url(), index, &origin[&srv.url("blob/late-c.png")])
        .expect("late-c under its original id");
    assert_eq!(c["_source"]["headers"]["trace"], "v");

    // Replaying again overwrites the same documents instead of adding any.
    let (code, out, err) = replay(&["--stage", "fetch"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("replayed 3"), "{out}");
    wait_until(
        "the second replay consumed",
        Duration::from_secs(180),
        || w.metric("ocrfleet_messages_indexed_total") == 7.0,
    );
    assert_eq!(es_count(&nd.es_url(), index), Some(4));

    // The bad line, replayed, fails again and is recognisable in the dead-letter topic.
    let (code, out, err) = replay(&["--stage", "parse"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let dlq = read_all(&brokers, "replay.dlq", 5, Duration::from_secs(120));
    assert_eq!(dlq.len(), 5);
    let again: Vec<&DlqRecord> = dlq
        .iter()
        .filter(|r| r.headers.get("ocrfleet.replay.count").map(String::as_str) == Some("1"))
        .collect();
    assert_eq!(again.len(), 1, "{dlq:?}");
    assert_eq!(again[0].headers["ocrfleet.error.class"], "bad_json");
    assert_eq!(again[0].value.as_deref(), Some("{not json"));
    assert_eq!(w.metric("ocrfleet_messages_dead_lettered_total"), 5.0);

    // With a group, a run resumes where the last one stopped: the first reads all five dead
    // letters and replays the two bad lines (which fail again), the second only those two new
    // dead letters.
    let (code, out, err) = replay(&["--stage", "parse", "--group", "rg"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("read 5 of 5, matching 2, replayed 2"), "{out}");
    assert_eq!(
        read_all(&brokers, "replay.dlq", 7, Duration::from_secs(120)).len(),
        7
    );
    let (code, out, err) = replay(&["--stage", "parse", "--group", "rg", "--dry-run"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("read 2 of 2"), "{out}");

    // Replay headers from another producer are not replay's (no signature): ignored, so they
    // cannot take over a document id.
    produce_raw_header(
        &brokers,
        topic,
        0,
        b"ocrfleet.replay.of",
        srv.url("blob/late-a.png").as_bytes(),
    );
    wait_until(
        "the forged record indexed",
        Duration::from_secs(120),
        || es_count(&nd.es_url(), index) == Some(5),
    );
    assert!(
        es_get(&nd.es_url(), index, "v").is_none(),
        "the forged ocrfleet.replay.of (\"v\") was not used as the id"
    );

    // Nor can they be laundered through the dead-letter topic: a forged record that fails
    // keeps its header only as `producer.ocrfleet.replay.of`, and `replay` signs the
    // coordinates the worker wrote, not the forged id.
    let since = chrono::Utc::now().to_rfc3339();
    produce_raw_header(
        &brokers,
        topic,
        0,
        b"ocrfleet.replay.of",
        srv.url("blob/late-d.png").as_bytes(),
    );
    let dlq = read_all(&brokers, "replay.dlq", 8, Duration::from_secs(120));
    assert_eq!(dlq.len(), 8);
    let forged = dlq
        .iter()
        .find(|r| r.value.as_deref() == Some(srv.url("blob/late-d.png").as_str()))
        .expect("the forged record's dead letter");
    assert_eq!(
        forged.headers["producer.ocrfleet.replay.of"], "v",
        "{forged:?}"
    );
    assert!(
        !forged.headers.contains_key("ocrfleet.replay.of"),
        "{forged:?}"
    );
    let coords = format!(
        "{topic}-{}-{}",
        forged.headers["ocrfleet.source.partition"], forged.headers["ocrfleet.source.offset"]
    );
    srv.put("late-d.png", hello.clone());
    let (code, out, err) = replay(&["--stage", "fetch", "--since", &since]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("replayed 1"), "{out}");
    wait_until(
        "the replayed forged record indexed",
        Duration::from_secs(120),
        || es_get(&nd.es_url(), index, &coords).is_some(),
    );
    assert!(
        es_get(&nd.es_url(), index, "v").is_none(),
        "replay did not sign the forged id"
    );
    assert!(w.healthy());
}

/// The replay key shared by the worker and `ocrfleet replay` in this test.
const KEY: &str = "test-replay-key";
