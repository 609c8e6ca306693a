//! Image hosts that do not answer, end to end against real servers on 127.0.0.1: one dead host
//! among live ones (its records are held, without download slots, for `--host-hold`, then
//! dead-lettered; nobody else waits), an egress outage across many hosts (an infrastructure
//! fault: nothing dead-lettered, and a stray answer from one host clears nothing for the
//! others), and a rebalance while records are held and a slow download is at the head of a
//! partition (held work of the revoked partition is dropped; the crash-loop journal is left
//! clean).
//!
//! A dead host is a loopback port nothing listens on (connection refused): distinct ports are
//! distinct hosts (origin = scheme, host, port). Waits have generous deadlines for liveness
//! only; nothing asserts on speed.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;

/// A loopback port with nothing listening.
fn dead_port() -> u16 {
    free_port()
}

fn msg(url: &str, id: &str) -> String {
    serde_json::json!({"url": url, "id": id}).to_string()
}

const NAMES: [&str; 5] = [
    "invoice.png",
    "park.png",
    "hello.png",
    "coffee.png",
    "train.png",
];

/// The reproduction of the fleet halt: 70 records for a dead host, then 5 for a live one, on
/// one partition. Before, every download slot was held by the dead host's records, intake
/// paused for good, nothing was indexed or dead-lettered, and `/healthz` said 200. Now the 5
/// are indexed while the 70 are still held (they take no slot), `/readyz` and `/healthz` stay
/// 200 (one host is not an outage), and after `--host-hold` the 70 are dead letters of class
/// `fetch/host_unreachable` that name the host; the partition is committed to its end.
#[test]
fn a_dead_host_holds_only_its_own_records_for_the_hold_then_dead_letters_them() {
    let stack = Stack::start("deadhost");
    let (nd, srv) = (&stack.noida, &stack.images);
    let (topic, group, index) = (&stack.topic, &stack.group, &stack.index);
    create_topics(&nd.brokers(), topic, 1);
    let port = dead_port();
    let mut values: Vec<String> = (0..70)
        .map(|i| {
            msg(
                &format!("http://127.0.0.1:{port}/img/{i}.png"),
                &format!("dead-{i}"),
            )
        })
        .collect();
    values
        .extend((0..5).map(|i| msg(&srv.url(&format!("img/{}", NAMES[i])), &format!("good-{i}"))));
    produce(&nd.brokers(), topic, 1, &values);
    let w = Worker::start(
        &nd.brokers(),
        &nd.es_url(),
        topic,
        group,
        index,
        &["--host-hold", "40s", "--liveness-timeout", "60s"],
    );
    wait_until(
        "the 5 live-host records indexed",
        Duration::from_secs(180),
        || {
            if let Ok((status, body)) =
                blocking_get(&format!("http://127.0.0.1:{}/healthz", w.http_port))
            {
                assert_eq!(status, 200, "/healthz failed: {body}");
            }
            es_count(&nd.es_url(), index) == Some(5)
        },
    );
    // They did not wait for the dead host's records: those are still held.
    assert_eq!(
        w.metric("ocrfleet_messages_dead_lettered_total"),
        0.0,
        "indexed before the hold ended; log:\n{}",
        w.log_tail()
    );
    assert_eq!(w.metric("ocrfleet_fetch_records_held"), 70.0);
    assert_eq!(w.metric("ocrfleet_fetch_hosts_open"), 1.0);
    let (status, body) = w.readyz();
    assert_eq!(status, 200, "one dead host is not an outage: {body}");
    let dlq = read_all(&nd.brokers(), "deadhost.dlq", 70, Duration::from_secs(180));
    assert_eq!(dlq.len(), 70, "log:\n{}", w.log_tail());
    for d in &dlq {
        assert_eq!(d.stage_class(), ("fetch", "host_unreachable"), "{d:?}");
        let m = &d.headers["ocrfleet.error.message"];
        assert!(
            m.contains(&format!("127.0.0.1:{port}")) && m.contains("--host-hold"),
            "{m}"
        );
    }
    wait_until("committed to the end", Duration::from_secs(60), || {
        lag(&nd.brokers(), group, topic, 1) == 0
    });
    assert!(w.healthy() && w.ready());
    assert_eq!(w.metric("ocrfleet_fetch_records_held"), 0.0);
}

/// Every host unreachable at once, across five distinct hosts (in production a DNS or
/// egress-proxy outage): an infrastructure fault, not 20 bad records. Nothing is
/// dead-lettered while it lasts and `/readyz` names `image_hosts`. A stray answer from another
/// host in the middle (a 404, as the old rule's close-and-judge step turned into a dead letter
/// for every held record) closes the outage but holds no verdict on the five hosts: their
/// records stay held. Once the hosts answer, everything is indexed; the 404 is the one dead
/// letter.
#[test]
fn an_egress_outage_across_hosts_dead_letters_nothing_and_a_stray_answer_clears_no_host() {
    let stack = Stack::start("egress");
    let (nd, srv) = (&stack.noida, &stack.images);
    let (topic, group, index) = (&stack.topic, &stack.group, &stack.index);
    let parts = 2;
    create_topics(&nd.brokers(), topic, parts);
    let ports: Vec<u16> = (0..5).map(|_| dead_port()).collect();
    let mut values: Vec<String> = (0..20)
        .map(|i| {
            let url = format!("http://127.0.0.1:{}/img/{}", ports[i % 5], NAMES[i % 5]);
            msg(&url, &format!("e-{i}"))
        })
        .collect();
    // Answers 404 well after the outage has opened (connection refusals are instant).
    values.push(msg(&srv.url("late-status/1500/404"), "stray"));
    produce(&nd.brokers(), topic, parts, &values);
    let w = Worker::start(&nd.brokers(), &nd.es_url(), topic, group, index, &[]);
    wait_until(
        "readyz names the image hosts",
        Duration::from_secs(120),
        || {
            let (s, body) = w.readyz();
            s == 503 && body.contains("image_hosts: down") && body.contains("egress outage")
        },
    );
    let stray = read_all(&nd.brokers(), "egress.dlq", 1, Duration::from_secs(60));
    assert_eq!(stray.len(), 1);
    assert_eq!(stray[0].headers["ocrfleet.error.class"], "http_404");
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        assert_eq!(
            w.metric("ocrfleet_messages_dead_lettered_total"),
            1.0,
            "only the stray 404; log:\n{}",
            w.log_tail()
        );
        assert_eq!(w.metric("ocrfleet_fetch_records_held"), 20.0);
        std::thread::sleep(Duration::from_secs(1));
    }
    let _servers: Vec<ImageServer> = ports
        .iter()
        .map(|&p| ImageServer::start_at(repo_root().join("tests/fixtures/worker"), p))
        .collect();
    wait_until("everything indexed", Duration::from_secs(180), || {
        es_count(&nd.es_url(), index) == Some(20)
    });
    wait_until("committed to the end", Duration::from_secs(60), || {
        lag(&nd.brokers(), group, topic, parts) == 0
    });
    wait_until("ready again", Duration::from_secs(60), || w.ready());
    assert_eq!(
        read_all(&nd.brokers(), "egress.dlq", 2, Duration::from_secs(2)).len(),
        1
    );
}

/// A rebalance while records are held for a dead host and a slow download sits at the head of
/// each partition, with the records behind it already through the engine. Worker A holds the
/// dead host's records of both partitions; when B joins and A loses one partition, A drops that
/// partition's held records at once, and its orderly revoke leaves the partition's crash-loop
/// journal clean although the position could not move (before, `run=` stayed on the broker and
/// B counted a death for each record that had merely been in A's engine). In the end every
/// record is in exactly one place: 12 documents, 10 dead letters (one per dead-host record),
/// and nothing ran alone.
#[test]
fn a_rebalance_drops_held_work_and_leaves_no_crash_loop_journal_behind() {
    let stack = Stack::start("heldrev");
    let (nd, srv) = (&stack.noida, &stack.images);
    let (topic, group, index) = (&stack.topic, &stack.group, &stack.index);
    let parts = 2;
    create_topics(&nd.brokers(), topic, parts);
    let port = dead_port();
    // Round-robin over the 2 partitions: each gets a slow head, 5 good records, 5 dead-host ones.
    let mut values = Vec::new();
    for p in 0..2 {
        values.push(msg(&srv.url("late/25000/lake.png"), &format!("slow-{p}")));
    }
    for i in 0..10 {
        values.push(msg(
            &srv.url(&format!("img/{}", NAMES[i % 5])),
            &format!("good-{i}"),
        ));
    }
    for i in 0..10 {
        values.push(msg(
            &format!("http://127.0.0.1:{port}/img/{i}.png"),
            &format!("dead-{i}"),
        ));
    }
    produce(&nd.brokers(), topic, parts, &values);
    let args = [
        "--fetch-timeout",
        "40s",
        "--host-hold",
        "45s",
        "--liveness-timeout",
        "2m",
        "--kafka-option",
        "session.timeout.ms=10000,max.poll.interval.ms=20000",
    ];
    let a = Worker::start(&nd.brokers(), &nd.es_url(), topic, group, index, &args);
    wait_until(
        "A indexed the 10 good records",
        Duration::from_secs(180),
        || es_count(&nd.es_url(), index) == Some(10),
    );
    assert_eq!(
        a.metric("ocrfleet_fetch_records_held"),
        10.0,
        "{}",
        a.log_tail()
    );
    let b = Worker::start(&nd.brokers(), &nd.es_url(), topic, group, index, &args);
    wait_until("A gave a partition to B", Duration::from_secs(120), || {
        a.log().contains("partitions revoked")
    });
    wait_until(
        "A dropped the revoked partition's held records",
        Duration::from_secs(30),
        || a.metric("ocrfleet_fetch_records_held") == 5.0,
    );
    wait_until("everything indexed", Duration::from_secs(240), || {
        es_count(&nd.es_url(), index) == Some(12)
    });
    let dlq = read_all(&nd.brokers(), "heldrev.dlq", 10, Duration::from_secs(240));
    let offsets: HashSet<(String, String)> = dlq
        .iter()
        .map(|d| {
            (
                d.headers["ocrfleet.source.partition"].clone(),
                d.headers["ocrfleet.source.offset"].clone(),
            )
        })
        .collect();
    assert_eq!(
        (dlq.len(), offsets.len()),
        (10, 10),
        "each dead-host record once: {dlq:?}"
    );
    assert!(dlq
        .iter()
        .all(|d| d.headers["ocrfleet.error.class"] == "host_unreachable"));
    wait_until("committed to the end", Duration::from_secs(60), || {
        lag(&nd.brokers(), group, topic, parts) == 0
    });
    assert_eq!(
        read_all(&nd.brokers(), "heldrev.dlq", 11, Duration::from_secs(3)).len(),
        10,
        "nothing dead-lettered twice"
    );
    for w in [&a, &b] {
        let log = w.log();
        assert!(
            !log.contains("running a record alone") && !log.contains("when a worker process died"),
            "no record was in an engine when a process died:\n==> A\n{}\n==> B\n{}",
            a.log(),
            b.log()
        );
    }
    let journal = committed_metadata(&nd.brokers(), group, topic, parts);
    assert!(
        journal.iter().all(String::is_empty),
        "nothing left in the journal: {journal:?}"
    );
}
