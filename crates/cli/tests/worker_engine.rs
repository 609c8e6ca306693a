//! The engine as a source of faults, end to end against real servers on 127.0.0.1: an image on
//! which the engine panics, a call that hangs, a process that dies on an image (a crash that is
//! not a panic), and a worker stuck with work pending. The faults come from the worker's hidden
//! `--test-engine-fault` hook, keyed on an image size that no fixture has (no real GPU or ONNX
//! Runtime can be broken on purpose here; everything else is real: Kafka and Elasticsearch
//! protocols, HTTP, ONNX Runtime on the real weights).
//!
//! Waits have generous deadlines for liveness only; nothing asserts on speed.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// The size of the poison image (no fixture has it).
const POISON: (u32, u32) = (333, 97);

/// Good messages around one poison image (hello.png on a 333×97 canvas) at `at`: the values
/// and the poison's id.
fn with_poison(srv: &ImageServer, n: usize, at: usize, tag: &str) -> (Vec<String>, String) {
    let poison_url = srv.put("poison.png", sized_fixture("hello.png", POISON.0, POISON.1));
    let good = [
        "invoice.png",
        "park.png",
        "coffee.png",
        "train.png",
        "lake.png",
    ];
    let values = (0..n)
        .map(|i| {
            let url = if i == at {
                poison_url.clone()
            } else {
                srv.url(&format!("img/{}", good[i % good.len()]))
            };
            serde_json::json!({"url": url, "id": format!("{tag}-{i}")}).to_string()
        })
        .collect();
    (values, format!("{tag}-{at}"))
}

/// An image on which the engine panics is dead-lettered alone (`ocr/panic`); its batch-mates
/// are indexed, the worker stays up and ready, and the partition is committed to its end.
#[test]
fn an_image_that_panics_the_engine_is_dead_lettered_alone_and_the_worker_goes_on() {
    let stack = Stack::start("engpanic");
    let (nd, srv) = (&stack.noida, &stack.images);
    let (topic, group, index) = ("engpanic", "g-engpanic", "engpanic-idx");
    create_topics(&nd.brokers(), topic, 1);
    let (values, poison) = with_poison(srv, 8, 3, "p");
    produce(&nd.brokers(), topic, 1, &values);
    let fault = format!("panic:{}x{}", POISON.0, POISON.1);
    let mut w = Worker::start(
        &nd.brokers(),
        &nd.es_url(),
        topic,
        group,
        index,
        &["--test-engine-fault", &fault, "--ocr-batch", "4"],
    );
    let dlq = read_all(&nd.brokers(), "engpanic.dlq", 1, Duration::from_secs(180));
    assert_eq!(dlq.len(), 1, "one dead letter; log:\n{}", w.log_tail());
    let h = &dlq[0].headers;
    assert_eq!(
        (
            h["ocrfleet.error.stage"].as_str(),
            h["ocrfleet.error.class"].as_str()
        ),
        ("ocr", "panic"),
        "{h:?}"
    );
    assert!(dlq[0].value.as_deref().unwrap().contains(&poison));
    wait_until("the 7 others indexed", Duration::from_secs(120), || {
        es_count(&nd.es_url(), index) == Some(7)
    });
    wait_until("committed to the end", Duration::from_secs(60), || {
        lag(&nd.brokers(), group, topic, 1) == 0
    });
    assert_eq!(w.exited(), None, "the worker keeps running");
    assert!(w.ready() && w.healthy());
}

/// A call that never returns (a stuck device call): first `/healthz` fails, because work is
/// pending and nothing moves (the liveness probe Kubernetes restarts a stuck pod on); then the
/// call's deadline (`--engine-timeout`) ends the process non-zero, with nothing of the batch
/// committed and nothing dead-lettered. Restarted, the records of the hung call are suspects:
/// each runs alone, no death counted; the image that hangs the device every time then hangs
/// alone, and after three such hangs it is dead-lettered (`ocr/crash_loop`) while its
/// neighbours, never charged, are indexed.
#[test]
fn a_hung_engine_fails_liveness_ends_the_process_and_only_the_hanging_image_is_dead_lettered() {
    let stack = Stack::start("enghang");
    let (nd, srv) = (&stack.noida, &stack.images);
    let (topic, group, index) = ("enghang", "g-enghang", "enghang-idx");
    create_topics(&nd.brokers(), topic, 1);
    let (values, poison) = with_poison(srv, 6, 2, "h");
    produce(&nd.brokers(), topic, 1, &values);
    let fault = format!("hang:{}x{}", POISON.0, POISON.1);
    let mut w = Worker::start(
        &nd.brokers(),
        &nd.es_url(),
        topic,
        group,
        index,
        &[
            "--test-engine-fault",
            &fault,
            "--ocr-batch",
            "8",
            "--engine-timeout",
            "25s",
            "--liveness-timeout",
            "5s",
        ],
    );
    let t = Instant::now();
    wait_until("/healthz says stuck", Duration::from_secs(120), || {
        matches!(
            blocking_get(&format!("http://127.0.0.1:{}/healthz", w.http_port)),
            Ok((503, body)) if body.contains("stuck")
        )
    });
    let code = w.wait(Duration::from_secs(180));
    assert_ne!(
        code,
        0,
        "a hung engine ends the process; log:\n{}",
        w.log_tail()
    );
    assert!(
        t.elapsed() >= Duration::from_secs(15),
        "the process waited for the call's deadline"
    );
    assert!(
        w.log_tail().contains("--engine-timeout"),
        "{}",
        w.log_tail()
    );
    let indexed = es_count(&nd.es_url(), index).unwrap_or(0) as i64;
    assert!(committed(&nd.brokers(), group, topic, 1) <= indexed);
    assert_eq!(
        read_all(&nd.brokers(), "enghang.dlq", 1, Duration::from_secs(2)).len(),
        0,
        "a hang is the engine's fault, not the records'"
    );
    // Restarted as Kubernetes would (a short deadline to keep the test short).
    let args = [
        "--test-engine-fault",
        &fault,
        "--ocr-batch",
        "8",
        "--engine-timeout",
        "6s",
    ];
    let mut hangs = 1;
    'runs: loop {
        assert!(hangs <= 6, "still hanging after {hangs} runs");
        let mut w = Worker::start(&nd.brokers(), &nd.es_url(), topic, group, index, &args);
        let t = Instant::now();
        loop {
            if let Some(code) = w.exited() {
                assert_ne!(code, 0);
                hangs += 1;
                continue 'runs;
            }
            if es_count(&nd.es_url(), index) == Some(5) && lag(&nd.brokers(), group, topic, 1) == 0
            {
                break 'runs;
            }
            assert!(
                t.elapsed() < Duration::from_secs(180),
                "neither finished nor hung; log:\n{}",
                w.log_tail()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    assert_eq!(hangs, 4, "one hang in its batch, three alone");
    let dlq = read_all(&nd.brokers(), "enghang.dlq", 2, Duration::from_secs(10));
    assert_eq!(dlq.len(), 1, "only the hanging image: {dlq:?}");
    assert_eq!(dlq[0].headers["ocrfleet.error.class"], "crash_loop");
    assert!(dlq[0].value.as_deref().unwrap().contains(&poison));
}

/// A record that kills the process (an abort, as a segfault inside ONNX Runtime or an
/// out-of-memory kill would; not a panic, which the engine catches), with two engine lanes.
/// Restarted as Kubernetes would, the workers do not crash-loop for ever: the committed
/// offset's metadata records what is in the engine, so the next owner makes suspects of a
/// batch that died (each runs alone, with nothing beside it on any lane) and counts a death
/// for a record that died alone; the record that died `--crash-loop-attempts` (3) times alone
/// is dead-lettered (`ocr/crash_loop`); everything else is indexed. noida-db keeps commit metadata (tansu does not) but never evicts a dead member, so
/// the restarted worker takes the dead one's place with the same static member id
/// (`group.instance.id`), as a pod restarted in place can.
#[test]
fn a_record_that_crashes_the_process_is_dead_lettered_instead_of_crash_looping() {
    let stack = Stack::start("engcrash");
    let (nd, srv) = (&stack.noida, &stack.images);
    let brokers = nd.brokers();
    let (topic, group, index) = ("engcrash", "g-engcrash", "engcrash-idx");
    create_topics(&brokers, topic, 1);
    let (values, poison) = with_poison(srv, 6, 2, "c");
    produce(&brokers, topic, 1, &values);
    let fault = format!("abort:{}x{}", POISON.0, POISON.1);
    // Two engine lanes: a record that runs alone must still run with nothing beside it.
    let args = [
        "--test-engine-fault",
        &fault,
        "--ocr-batch",
        "2",
        "--device-streams",
        "2",
        "--kafka-option",
        "group.instance.id=engcrash-pod-0",
    ];
    let mut starts = 0;
    'runs: loop {
        starts += 1;
        assert!(starts <= 8, "still crash-looping after {starts} starts");
        let mut w = Worker::start(&brokers, &nd.es_url(), topic, group, index, &args);
        let t = Instant::now();
        loop {
            if let Some(code) = w.exited() {
                assert_ne!(code, 0, "an abort is not a clean exit");
                continue 'runs;
            }
            if es_count(&nd.es_url(), index) == Some(5) && lag(&brokers, group, topic, 1) == 0 {
                break 'runs;
            }
            assert!(
                t.elapsed() < Duration::from_secs(240),
                "neither finished nor died; log:\n{}",
                w.log_tail()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    println!("{starts} process starts");
    // One crash in its batch (its batch-mates become suspects, run alone once, and are
    // indexed: never charged a death), three alone, then the dead letter.
    assert_eq!(
        starts, 5,
        "a batch crash, three crashes alone, then the dead letter"
    );
    let dlq = read_all(&brokers, "engcrash.dlq", 2, Duration::from_secs(10));
    assert_eq!(dlq.len(), 1, "only the poison is dead-lettered: {dlq:?}");
    let h = &dlq[0].headers;
    assert_eq!(
        (
            h["ocrfleet.error.stage"].as_str(),
            h["ocrfleet.error.class"].as_str()
        ),
        ("ocr", "crash_loop"),
        "{h:?}"
    );
    assert!(dlq[0].value.as_deref().unwrap().contains(&poison));
}
