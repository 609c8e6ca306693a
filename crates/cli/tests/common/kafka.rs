//! Kafka from a test: topics, producing, reading the dead-letter topic, committed offsets and lag.

use super::*;

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

impl DlqRecord {
    /// Its `ocrfleet.error.stage` and `ocrfleet.error.class`.
    pub fn stage_class(&self) -> (&str, &str) {
        (
            self.headers["ocrfleet.error.stage"].as_str(),
            self.headers["ocrfleet.error.class"].as_str(),
        )
    }
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
pub fn group_consumer(brokers: &str, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .unwrap()
}

/// `group`'s committed offsets of `topic`'s partitions, and the consumer that read them.
fn committed_list(
    brokers: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> (BaseConsumer, TopicPartitionList) {
    let c = group_consumer(brokers, group);
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    (c, committed)
}

/// Per partition: (committed offset of `group`, high watermark).
pub fn committed_and_high(
    brokers: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> Vec<(i64, i64)> {
    let (c, committed) = committed_list(brokers, group, topic, partitions);
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

/// Per partition: the metadata of `group`'s committed offset (the crash-loop journal).
pub fn committed_metadata(brokers: &str, group: &str, topic: &str, partitions: i32) -> Vec<String> {
    let (_, committed) = committed_list(brokers, group, topic, partitions);
    (0..partitions)
        .map(|p| {
            committed
                .find_partition(topic, p)
                .map(|e| e.metadata().to_owned())
                .unwrap_or_default()
        })
        .collect()
}

/// Produces `n` records whose value is `value` and which carry `headers` headers each (empty
/// key, null value).
pub fn produce_with_headers(brokers: &str, topic: &str, n: usize, value: &str, headers: usize) {
    use rdkafka::message::{Header, OwnedHeaders};
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.max.bytes", "10000000")
        .create()
        .unwrap();
    rt().block_on(async {
        for _ in 0..n {
            let mut h = OwnedHeaders::new_with_capacity(headers);
            for _ in 0..headers {
                h = h.insert(Header::<&[u8]> {
                    key: "",
                    value: None,
                });
            }
            let rec: FutureRecord<'_, str, str> = FutureRecord::to(topic)
                .payload(value)
                .headers(h)
                .partition(0);
            p.send(rec, Duration::from_secs(30))
                .await
                .map_err(|(e, _)| e)
                .expect("produce");
        }
    });
}
