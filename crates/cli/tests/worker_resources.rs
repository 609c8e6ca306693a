//! Memory and inputs that stretch the worker, end to end against real servers on 127.0.0.1:
//! an image that needs more than the whole memory budget, multi-page TIFFs, and the image
//! hosts becoming unreachable (an egress outage) and coming back.
//!
//! Waits have generous deadlines for liveness only; nothing asserts on speed.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// A 3000×2000 RGBA PNG of one colour: a few KB on the wire, 24 MB as RGBA plus 18 MB as RGB
/// once decoded.
fn big_solid_png() -> Vec<u8> {
    let img = image::RgbaImage::from_pixel(3000, 2000, image::Rgba([200, 180, 90, 255]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// With a 16 MiB budget, an image whose decode needs 40 MiB could never be granted: it is
/// dead-lettered at once (`decode/over_memory_budget`, with its need and the budget), and the
/// small image behind it is indexed. (Before, it waited for the whole budget while holding
/// part of it, and everything behind it waited too: consumed 2, indexed 0, `/readyz` 200.)
#[test]
fn an_image_over_the_whole_memory_budget_is_dead_lettered_and_the_next_one_runs() {
    let stack = Stack::start("budget");
    let (nd, srv) = (&stack.noida, &stack.images);
    let (topic, group, index) = ("budget", "g-budget", "budget-idx");
    create_topics(&nd.brokers(), topic, 1);
    let big = srv.put("big.png", big_solid_png());
    let values = [
        serde_json::json!({"url": big, "id": "big"}).to_string(),
        serde_json::json!({"url": srv.url("img/hello.png"), "id": "small"}).to_string(),
    ];
    produce(&nd.brokers(), topic, 1, &values);
    let w = Worker::start(
        &nd.brokers(),
        &nd.es_url(),
        topic,
        group,
        index,
        &["--memory-budget", "16MiB"],
    );
    let dlq = read_all(&nd.brokers(), "budget.dlq", 1, Duration::from_secs(120));
    assert_eq!(dlq.len(), 1, "log:\n{}", w.log_tail());
    let h = &dlq[0].headers;
    assert_eq!(h["ocrfleet.error.stage"], "decode");
    assert_eq!(h["ocrfleet.error.class"], "over_memory_budget");
    let msg = &h["ocrfleet.error.message"];
    assert!(
        msg.contains("--memory-budget of 16.0 MiB") && msg.contains("3000x2000"),
        "{msg}"
    );
    wait_until("the small image indexed", Duration::from_secs(120), || {
        es_get(&nd.es_url(), index, "small").is_some()
    });
    wait_until("committed to the end", Duration::from_secs(60), || {
        lag(&nd.brokers(), group, topic, 1) == 0
    });
    assert!(w.ready());
    assert_eq!(w.metric("ocrfleet_memory_budget_used_bytes"), 0.0);
}

/// Every page of a multi-page TIFF is read, into one document with `pages` and each line's page;
/// a file over `--max-pages` is dead-lettered whole (`decode/too_many_pages`), never read in
/// part.
#[test]
fn every_page_of_a_multi_page_tiff_is_indexed_in_one_document() {
    let stack = Stack::start("pages");
    let (nd, srv) = (&stack.noida, &stack.images);
    let (topic, group, index) = ("pages", "g-pages", "pages-idx");
    create_topics(&nd.brokers(), topic, 1);
    let two = srv.put(
        "two.tif",
        multipage_tiff(&[fixture_image("invoice.png"), fixture_image("park.png")]),
    );
    let three = srv.put(
        "three.tif",
        multipage_tiff(&[
            fixture_image("hello.png"),
            fixture_image("lake.png"),
            fixture_image("train.png"),
        ]),
    );
    let values = [
        serde_json::json!({"url": two, "id": "two"}).to_string(),
        serde_json::json!({"url": three, "id": "three"}).to_string(),
    ];
    produce(&nd.brokers(), topic, 1, &values);
    let w = Worker::start(
        &nd.brokers(),
        &nd.es_url(),
        topic,
        group,
        index,
        &["--max-pages", "2"],
    );
    wait_until(
        "the two-page file indexed",
        Duration::from_secs(120),
        || es_get(&nd.es_url(), index, "two").is_some(),
    );
    let doc = es_get(&nd.es_url(), index, "two").unwrap();
    let src = &doc["_source"];
    assert_eq!(src["pages"], 2, "{src}");
    let lines: Vec<(String, u64)> = src["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["text"].as_str().unwrap().to_owned(),
                l["page"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(
        lines.iter().any(|(t, p)| t.contains("INVOICE") && *p == 1),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|(t, p)| t.contains("PARK") && *p == 2),
        "{lines:?}"
    );
    es_count(&nd.es_url(), index); // refreshes the index
    assert_eq!(
        es_search(&nd.es_url(), index, "公园"),
        vec!["two"],
        "page 2 is searchable"
    );
    let dlq = read_all(&nd.brokers(), "pages.dlq", 1, Duration::from_secs(60));
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].headers["ocrfleet.error.class"], "too_many_pages");
    assert!(dlq[0].value.as_deref().unwrap().contains("three"));
    wait_until("committed to the end", Duration::from_secs(60), || {
        lag(&nd.brokers(), group, topic, 1) == 0
    });
    assert!(w.ready());
}

/// Every image host unreachable at once (here: nothing listens on the images' port; in
/// production a DNS or egress-proxy outage, or the one object store being down): an
/// infrastructure fault, not 20 bad records. Nothing is dead-lettered or committed while it
/// lasts, `/readyz` names `image_hosts`; once the host answers, everything is indexed.
#[test]
fn an_egress_outage_dead_letters_nothing_and_resumes_when_the_hosts_answer() {
    let _g = serial();
    let nd = Noida::start("egress");
    let port = free_port();
    let (topic, group, index, parts) = ("egress", "g-egress", "egress-idx", 2);
    create_topics(&nd.brokers(), topic, parts);
    let names = [
        "invoice.png",
        "park.png",
        "hello.png",
        "coffee.png",
        "train.png",
    ];
    let values: Vec<String> = (0..20)
        .map(|i| {
            let url = format!("http://127.0.0.1:{port}/img/{}", names[i % names.len()]);
            serde_json::json!({"url": url, "id": format!("e-{i}")}).to_string()
        })
        .collect();
    produce(&nd.brokers(), topic, parts, &values);
    let w = Worker::start(&nd.brokers(), &nd.es_url(), topic, group, index, &[]);
    wait_until(
        "readyz names the image hosts",
        Duration::from_secs(120),
        || {
            let (s, body) = w.readyz();
            s == 503 && body.contains("image_hosts: down")
        },
    );
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        assert_eq!(w.metric("ocrfleet_messages_dead_lettered_total"), 0.0);
        assert_eq!(committed(&nd.brokers(), group, topic, parts), 0);
        std::thread::sleep(Duration::from_secs(1));
    }
    let _srv = ImageServer::start_at(repo_root().join("tests/fixtures/worker"), port);
    wait_until("everything indexed", Duration::from_secs(180), || {
        es_count(&nd.es_url(), index) == Some(20)
    });
    wait_until("committed to the end", Duration::from_secs(60), || {
        lag(&nd.brokers(), group, topic, parts) == 0
    });
    wait_until("ready again", Duration::from_secs(60), || w.ready());
    assert_eq!(
        read_all(&nd.brokers(), "egress.dlq", 1, Duration::from_secs(2)).len(),
        0
    );
}

/// A panic while preparing a record (its header parsers read untrusted bytes; here the hidden
/// `--test-prepare-panic` hook) becomes one dead letter of the stage it happened in (class
/// `panic`). Before, the task died with its message: no done event, so its partition's commits
/// froze for good while `/readyz` said 200.
#[test]
fn a_panic_while_preparing_a_record_is_its_dead_letter_and_commits_go_on() {
    let stack = Stack::start("prepanic");
    let (nd, srv) = (&stack.noida, &stack.images);
    let (topic, group, index) = ("prepanic", "g-prepanic", "prepanic-idx");
    create_topics(&nd.brokers(), topic, 1);
    let poison = srv.put("poison-prepare.png", png(&fixture_image("hello.png")));
    let values = [
        serde_json::json!({"url": srv.url("img/invoice.png"), "id": "a"}).to_string(),
        serde_json::json!({"url": poison, "id": "poison"}).to_string(),
        serde_json::json!({"url": srv.url("img/park.png"), "id": "b"}).to_string(),
    ];
    produce(&nd.brokers(), topic, 1, &values);
    let w = Worker::start(
        &nd.brokers(),
        &nd.es_url(),
        topic,
        group,
        index,
        &["--test-prepare-panic", "poison-prepare"],
    );
    let dlq = read_all(&nd.brokers(), "prepanic.dlq", 1, Duration::from_secs(120));
    assert_eq!(dlq.len(), 1, "log:\n{}", w.log_tail());
    let h = &dlq[0].headers;
    assert_eq!(
        (
            h["ocrfleet.error.stage"].as_str(),
            h["ocrfleet.error.class"].as_str()
        ),
        ("decode", "panic"),
        "{h:?}"
    );
    wait_until("the others indexed", Duration::from_secs(120), || {
        es_count(&nd.es_url(), index) == Some(2)
    });
    wait_until("committed past the panic", Duration::from_secs(60), || {
        lag(&nd.brokers(), group, topic, 1) == 0
    });
    assert!(w.ready() && w.healthy());
}
