//! `ocrfleet replay`: reads the dead-letter topic and re-publishes the original records to the
//! source topic once the fault that sent them there is fixed.
//!
//! - **What is read.** A snapshot: every partition of the dead-letter topic up to its high
//!   watermark as it was at start. Records that arrive meanwhile are left for the next run.
//!   Without `--group` it starts at the low watermark and nothing is committed: the dead-letter
//!   topic stays as it was, and a second run reads the same records again (records that keep
//!   failing come back to the dead-letter topic and would be replayed once more each run). With
//!   `--group NAME` it starts where the last run of that group stopped and commits, per
//!   partition, up to the first record whose delivery failed (or the end of the snapshot), so
//!   that a run resumes and nothing is replayed twice. The group is only used for its commits
//!   (partitions are assigned, never subscribed).
//! - **An aborted run** (a read error or time-out) waits for the deliveries already sent, counts
//!   them, and commits (with `--group`) what is safe, before it reports the error.
//! - **Filters** (all optional, all must match): stage, class (prefix), the time the record was
//!   dead-lettered (`ocrfleet.error.time`, else the record's timestamp), source partition.
//! - **What is sent.** The original key, value and headers, minus every `ocrfleet.error.*`,
//!   `ocrfleet.source.*` and `ocrfleet.replay.*` header, `ocrfleet.worker` and
//!   `ocrfleet.dlq.minimal`, plus three replay headers:
//!   - `ocrfleet.replay.count`: 1 on the first replay, one more on each replay of a record that
//!     failed again, so such a record is recognisable in the dead-letter topic;
//!   - `ocrfleet.replay.of`: `<topic>-<partition>-<offset>` of the original record (kept
//!     across replays);
//!   - `ocrfleet.replay.timestamp`: the original record's timestamp (kept across replays);
//!   - `ocrfleet.replay.signature`: with `--replay-key`, an HMAC-SHA256 of the two above and
//!     the value.
//!
//!   A worker with the same `--replay-key` takes its document id and version from `of` and
//!   `timestamp` when the message has no `id` of its own, so a replayed message gets the
//!   document its original would have had, a second replay overwrites it instead of adding one,
//!   and a replay cannot overwrite a newer record's document for the same id (external
//!   versioning, see `es::document`). Unsigned (no key), the headers are ignored by the worker:
//!   any producer could write them (see `message::ReplayOrigin`).
//! - **Minimal dead letters** (sent without key and value because Kafka refused the full
//!   record as too large) cannot be replayed: they are counted and listed with the original's
//!   coordinates, and the run exits non-zero.
//! - **Target.** `--to`, else the record's `ocrfleet.source.topic`, else the source topic.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::KafkaConfig;
use crate::kafka::dlq::headers as h;
use crate::kafka::headers::{raw_headers, value as header, RawHeader};
use crate::kafka::QuietContext;
use crate::message::{ReplayKey, ReplayOrigin};

/// Which dead letters to replay; an empty list or `None` matches everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub stages: Vec<String>,
    /// Class prefixes (`http_4` matches `http_404` and `http_410`).
    pub classes: Vec<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub source_partitions: Vec<i32>,
}

/// What one dead letter says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Letter {
    pub stage: String,
    pub class: String,
    pub time: Option<DateTime<Utc>>,
    pub source_topic: Option<String>,
    pub source_partition: Option<i32>,
    pub source_offset: Option<i64>,
    pub minimal: bool,
}

impl Letter {
    /// Reads the `ocrfleet.*` headers; `timestamp_ms` (the record's) stands in for a missing
    /// error time.
    pub fn read(hs: &[RawHeader], timestamp_ms: Option<i64>) -> Letter {
        let time = header(hs, h::TIME)
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc))
            .or_else(|| timestamp_ms.and_then(DateTime::from_timestamp_millis));
        Letter {
            stage: header(hs, h::STAGE).unwrap_or("unknown").to_owned(),
            class: header(hs, h::CLASS).unwrap_or("unknown").to_owned(),
            time,
            source_topic: header(hs, h::TOPIC).map(str::to_owned),
            source_partition: header(hs, h::PARTITION).and_then(|p| p.parse().ok()),
            source_offset: header(hs, h::OFFSET).and_then(|p| p.parse().ok()),
            minimal: header(hs, h::MINIMAL) == Some("true"),
        }
    }

    pub fn matches(&self, f: &Filter) -> bool {
        (f.stages.is_empty() || f.stages.contains(&self.stage))
            && (f.classes.is_empty() || f.classes.iter().any(|c| self.class.starts_with(c)))
            && f.since.is_none_or(|s| self.time.is_some_and(|t| t >= s))
            && f.until.is_none_or(|u| self.time.is_some_and(|t| t < u))
            && (f.source_partitions.is_empty()
                || self
                    .source_partition
                    .is_some_and(|p| f.source_partitions.contains(&p)))
    }

    /// `<topic>-<partition>-<offset>` of the record that was dead-lettered.
    fn coordinates(&self) -> String {
        format!(
            "{}-{}-{}",
            self.source_topic.as_deref().unwrap_or("?"),
            self.source_partition.map_or("?".into(), |p| p.to_string()),
            self.source_offset.map_or("?".into(), |o| o.to_string())
        )
    }
}

/// The headers of the replayed record: the original's, without the dead-letter and replay
/// headers, plus the new replay headers (see the module documentation).
pub fn replay_headers(
    hs: &[RawHeader],
    value: Option<&[u8]>,
    key: Option<&ReplayKey>,
) -> Vec<RawHeader> {
    let drop = |k: &[u8]| {
        let k = String::from_utf8_lossy(k);
        k.starts_with("ocrfleet.error.")
            || k.starts_with("ocrfleet.source.")
            || k.starts_with("ocrfleet.replay.")
            || k == h::WORKER
            || k == h::MINIMAL
    };
    // What is signed comes only from what the worker wrote: the replay headers of an earlier
    // replay when their signature checks (the worker keeps those), else the coordinates and
    // timestamp the worker gave the dead letter. A producer's `ocrfleet.replay.*` headers on
    // its own record were never signed, so they are ignored here even in dead letters written
    // before the worker moved them aside.
    let earlier = key.is_some_and(|k| ReplayOrigin::read(hs, value, Some(k)).of.is_some());
    let count = header(hs, h::REPLAY_COUNT)
        .filter(|_| earlier)
        .and_then(|c| c.parse::<u64>().ok())
        .unwrap_or(0)
        + 1;
    let of = header(hs, h::REPLAY_OF)
        .filter(|_| earlier)
        .map(str::to_owned)
        .or_else(|| {
            Some(format!(
                "{}-{}-{}",
                header(hs, h::TOPIC)?,
                header(hs, h::PARTITION)?,
                header(hs, h::OFFSET)?
            ))
        });
    let ts = header(hs, h::REPLAY_TIMESTAMP)
        .filter(|_| earlier)
        .or_else(|| header(hs, h::TIMESTAMP))
        .map(str::to_owned);
    let mut out: Vec<RawHeader> = hs.iter().filter(|(k, _)| !drop(k)).cloned().collect();
    out.push((h::REPLAY_COUNT.into(), Some(count.to_string().into_bytes())));
    if let (Some(key), Some(of)) = (key, &of) {
        let sig = key.sign(of, ts.as_deref().unwrap_or(""), value);
        out.push((h::REPLAY_SIGNATURE.into(), Some(sig.into_bytes())));
    }
    if let Some(of) = of {
        out.push((h::REPLAY_OF.into(), Some(of.into_bytes())));
    }
    if let Some(ts) = ts {
        out.push((h::REPLAY_TIMESTAMP.into(), Some(ts.into_bytes())));
    }
    out
}

/// The settings of one run.
#[derive(Debug, Clone)]
pub struct Options {
    pub dlq_topic: String,
    /// Where records go when neither `to` nor the record names a topic.
    pub source_topic: String,
    pub to: Option<String>,
    pub filter: Filter,
    pub dry_run: bool,
    /// Start-up check and per-record delivery limit; also how long a read may wait for the
    /// next record before the run fails.
    pub timeout: Duration,
    /// Signs the replay headers (the workers' `--replay-key`).
    pub key: Option<Vec<u8>>,
    /// Resume from, and commit to, this consumer group (see the module documentation).
    pub group: Option<String>,
}

/// Counts of one run, with matching dead letters by (stage, class).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Records in the snapshot.
    pub total: u64,
    pub read: u64,
    pub matched: u64,
    pub replayed: u64,
    pub failed: u64,
    /// Matching minimal dead letters (no payload to replay).
    pub minimal: u64,
    pub by_class: BTreeMap<(String, String), u64>,
}

/// Reads the snapshot and replays what matches (or only counts it, with `dry_run`).
pub async fn replay(
    kafka: &KafkaConfig,
    opts: &Options,
    mut progress: impl FnMut(&Counts),
) -> anyhow::Result<Counts> {
    let mut wanted = vec![opts.dlq_topic.clone()];
    if !opts.dry_run {
        wanted.push(opts.to.clone().unwrap_or_else(|| opts.source_topic.clone()));
    }
    let (checked, timeout) = (kafka.clone(), opts.timeout);
    tokio::task::spawn_blocking(move || {
        let names: Vec<&str> = wanted.iter().map(String::as_str).collect();
        crate::kafka::check_topics(&checked, &names, timeout)
    })
    .await?
    .map_err(|e| e.context("nothing was replayed"))?;

    let consumer = reader(kafka, opts)?;
    let Snapshot {
        assign,
        mut ends,
        mut progress_at,
        total,
    } = snapshot(&consumer, opts)?;
    let mut counts = Counts {
        total,
        ..Counts::default()
    };
    progress(&counts);
    if ends.is_empty() {
        return Ok(counts);
    }
    consumer.assign(&assign)?;
    let key = opts.key.as_deref().map(ReplayKey::new);

    let producer = if opts.dry_run {
        None
    } else {
        Some(writer(kafka, opts)?)
    };
    let mut pending = crate::kafka::InFlight::new();
    let mut aborted: Option<anyhow::Error> = None;
    while !ends.is_empty() {
        let m = match tokio::time::timeout(opts.timeout, consumer.recv()).await {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => {
                aborted = Some(anyhow::anyhow!("reading {:?} failed: {e}", opts.dlq_topic));
                break;
            }
            Err(_) => {
                aborted = Some(anyhow::anyhow!(
                    "no record from {:?} within {:?} although {} partition(s) have more (read {} of {})",
                    opts.dlq_topic,
                    opts.timeout,
                    ends.len(),
                    counts.read,
                    counts.total
                ));
                break;
            }
        };
        let (p, o) = (m.partition(), m.offset());
        match ends.get(&p) {
            Some(&end) if o < end => {}
            // Past the snapshot (records deleted by retention make offsets jump).
            _ => {
                ends.remove(&p);
                continue;
            }
        }
        if o + 1 >= ends[&p] {
            ends.remove(&p);
        }
        counts.read += 1;
        if let Some(pos) = progress_at.get_mut(&p) {
            pos.read(o);
        }
        let hs = raw_headers(&m);
        let letter = Letter::read(&hs, m.timestamp().to_millis());
        if letter.matches(&opts.filter) {
            counts.matched += 1;
            *counts
                .by_class
                .entry((letter.stage.clone(), letter.class.clone()))
                .or_default() += 1;
            if letter.minimal {
                counts.minimal += 1;
                tracing::warn!(dlq_partition = p, dlq_offset = o, original = %letter.coordinates(), "a minimal dead letter has no payload to replay; the original is still at these coordinates until retention removes it");
            } else if let Some(producer) = &producer {
                let topic = opts
                    .to
                    .clone()
                    .or(letter.source_topic.clone())
                    .unwrap_or_else(|| opts.source_topic.clone());
                let record_key = m.key().map(<[u8]>::to_vec);
                let value = m.payload().map(<[u8]>::to_vec);
                let headers = replay_headers(&hs, value.as_deref(), key.as_ref());
                let done = pending.push(deliver(
                    producer.clone(),
                    topic,
                    Outgoing {
                        key: record_key,
                        value,
                        headers,
                    },
                    (p, o),
                ));
                if let Some(r) = done.await {
                    tally(&mut counts, &mut progress_at, r);
                }
            }
        }
        progress(&counts);
    }
    // Every delivery already sent is waited for, an aborted run's too.
    while let Some(r) = pending.next().await {
        tally(&mut counts, &mut progress_at, r);
        progress(&counts);
    }
    if !opts.dry_run {
        commit_progress(&consumer, opts, &progress_at)?;
    }
    match aborted {
        Some(e) => Err(e.context(format!(
            "replay aborted after {} of {} read ({} replayed, {} failed; deliveries already sent were awaited{})",
            counts.read,
            counts.total,
            counts.replayed,
            counts.failed,
            if opts.group.is_some() { ", and the progress committed" } else { "" }
        ))),
        None => Ok(counts),
    }
}

/// The dead-letter topic's reader. A group id is required by librdkafka, but partitions are
/// assigned, never subscribed, and only `--group`'s progress is committed: the group is never
/// joined.
fn reader(kafka: &KafkaConfig, opts: &Options) -> anyhow::Result<StreamConsumer<QuietContext>> {
    Ok(kafka
        .client_config_with(
            &[],
            &[
                (
                    "group.id",
                    opts.group
                        .clone()
                        .unwrap_or_else(|| format!("ocrfleet-replay-{}", std::process::id())),
                ),
                ("enable.auto.commit", "false".into()),
                ("enable.auto.offset.store", "false".into()),
            ],
        )
        .create_with_context(QuietContext::default())?)
}

/// What one run reads: per partition of the dead-letter topic, from where the group stopped
/// last time (with `--group`) or the start, up to the high watermark when the run began.
struct Snapshot {
    assign: TopicPartitionList,
    /// Per partition: the end of the snapshot (exclusive).
    ends: HashMap<i32, i64>,
    progress_at: HashMap<i32, Position>,
    total: u64,
}

fn snapshot(consumer: &StreamConsumer<QuietContext>, opts: &Options) -> anyhow::Result<Snapshot> {
    let md = consumer.fetch_metadata(Some(&opts.dlq_topic), opts.timeout)?;
    let partitions: Vec<i32> = md
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    // Where the group stopped last time (with --group).
    let resumed: HashMap<i32, i64> = match &opts.group {
        Some(_) => {
            let mut q = TopicPartitionList::new();
            for &p in &partitions {
                q.add_partition(&opts.dlq_topic, p);
            }
            consumer
                .committed_offsets(q, opts.timeout)?
                .elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) => Some((e.partition(), o)),
                    _ => None,
                })
                .collect()
        }
        None => HashMap::new(),
    };
    // The snapshot: [start, high) per partition.
    let mut ends: HashMap<i32, i64> = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    let mut total = 0u64;
    let mut progress_at: HashMap<i32, Position> = HashMap::new();
    for p in partitions {
        let (low, high) = consumer.fetch_watermarks(&opts.dlq_topic, p, opts.timeout)?;
        let start = resumed.get(&p).copied().unwrap_or(low).clamp(low, high);
        if high > start {
            tpl.add_partition_offset(&opts.dlq_topic, p, Offset::Offset(start))?;
            ends.insert(p, high);
            progress_at.insert(p, Position::new(start));
            total += (high - start) as u64;
        }
    }
    Ok(Snapshot {
        assign: tpl,
        ends,
        progress_at,
        total,
    })
}

/// The producer that re-publishes: idempotent, every replica acknowledging.
fn writer(kafka: &KafkaConfig, opts: &Options) -> anyhow::Result<FutureProducer<QuietContext>> {
    Ok(kafka
        .client_config_with(
            &[
                ("linger.ms", "5".into()),
                ("message.timeout.ms", opts.timeout.as_millis().to_string()),
            ],
            &[
                ("enable.idempotence", "true".into()),
                ("acks", "all".into()),
            ],
        )
        .create_with_context(QuietContext::default())?)
}

/// A record to re-publish.
struct Outgoing {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// One record's delivery to `topic`, answered with the dead letter's coordinates it came from.
async fn deliver(
    producer: FutureProducer<QuietContext>,
    topic: String,
    Outgoing {
        key,
        value,
        headers,
    }: Outgoing,
    (p, o): (i32, i64),
) -> (i32, i64, Result<(), String>) {
    let mut oh = OwnedHeaders::new();
    for (k, v) in &headers {
        oh = oh.insert(Header {
            key: &String::from_utf8_lossy(k),
            value: v.as_deref(),
        });
    }
    let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&topic).headers(oh);
    if let Some(k) = &key {
        rec = rec.key(k.as_slice());
    }
    if let Some(v) = &value {
        rec = rec.payload(v.as_slice());
    }
    // Waits up to 30 s for room in librdkafka's queue; delivery itself is bounded by
    // message.timeout.ms (--timeout).
    let r = producer
        .send(rec, Duration::from_secs(30))
        .await
        .map(|_| ())
        .map_err(|(e, _)| format!("{e}"));
    (p, o, r)
}

/// With `--group`, commits how far each partition may be resumed from.
fn commit_progress(
    consumer: &StreamConsumer<QuietContext>,
    opts: &Options,
    progress_at: &HashMap<i32, Position>,
) -> anyhow::Result<()> {
    let Some(group) = &opts.group else {
        return Ok(());
    };
    let mut tpl = TopicPartitionList::new();
    for (p, pos) in progress_at {
        tpl.add_partition_offset(&opts.dlq_topic, *p, Offset::Offset(pos.safe()))?;
    }
    consumer
        .commit(&tpl, rdkafka::consumer::CommitMode::Sync)
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot commit the progress of group {group:?}: {e}; the next run repeats this one"
            )
        })?;
    Ok(())
}

/// How far a partition of the dead-letter topic may be committed: past every record read,
/// but never past one whose delivery failed (the next run of the group tries it again).
#[derive(Debug, Clone, Copy)]
struct Position {
    next: i64,
    first_failed: Option<i64>,
}

impl Position {
    fn new(start: i64) -> Position {
        Position {
            next: start,
            first_failed: None,
        }
    }

    fn read(&mut self, offset: i64) {
        self.next = self.next.max(offset + 1);
    }

    fn failed(&mut self, offset: i64) {
        self.first_failed = Some(self.first_failed.map_or(offset, |f| f.min(offset)));
    }

    fn safe(&self) -> i64 {
        self.first_failed.unwrap_or(self.next).min(self.next)
    }
}

fn tally(
    c: &mut Counts,
    positions: &mut HashMap<i32, Position>,
    (p, o, r): (i32, i64, Result<(), String>),
) {
    match r {
        Ok(()) => c.replayed += 1,
        Err(e) => {
            c.failed += 1;
            if let Some(pos) = positions.get_mut(&p) {
                pos.failed(o);
            }
            tracing::warn!(error = %e, dlq_partition = p, dlq_offset = o, "replay send failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs(pairs: &[(&str, &str)]) -> Vec<RawHeader> {
        pairs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), Some(v.as_bytes().to_vec())))
            .collect()
    }

    fn dead_letter() -> Vec<RawHeader> {
        hs(&[
            ("trace", "abc"),
            (h::STAGE, "fetch"),
            (h::CLASS, "http_404"),
            (h::MESSAGE, "not found"),
            (h::TOPIC, "ocr.requests"),
            (h::PARTITION, "2"),
            (h::OFFSET, "41"),
            (h::TIMESTAMP, "1700000000000"),
            (h::ATTEMPTS, "1"),
            (h::WORKER, "w1"),
            (h::TIME, "2026-11-27T10:00:00+00:00"),
        ])
    }

    #[test]
    fn first_replay_keeps_the_producer_headers_and_names_the_original() {
        let out = replay_headers(&dead_letter(), None, None);
        assert_eq!(
            out,
            hs(&[
                ("trace", "abc"),
                (h::REPLAY_COUNT, "1"),
                (h::REPLAY_OF, "ocr.requests-2-41"),
                (h::REPLAY_TIMESTAMP, "1700000000000"),
            ])
        );
    }

    #[test]
    fn a_replayed_record_that_failed_again_keeps_its_origin_and_counts_up() {
        // The second dead letter: the replayed record's headers plus new error headers for
        // the replayed record's own coordinates.
        let key = ReplayKey::new(b"k");
        let mut second = replay_headers(&dead_letter(), Some(b"v"), Some(&key));
        second.extend(hs(&[
            (h::STAGE, "fetch"),
            (h::CLASS, "http_404"),
            (h::TOPIC, "ocr.requests"),
            (h::PARTITION, "0"),
            (h::OFFSET, "977"),
            (h::TIMESTAMP, "1800000000000"),
        ]));
        let out = replay_headers(&second, Some(b"v"), Some(&key));
        assert_eq!(header(&out, h::REPLAY_COUNT), Some("2"));
        assert_eq!(header(&out, h::REPLAY_OF), Some("ocr.requests-2-41"));
        assert_eq!(header(&out, h::REPLAY_TIMESTAMP), Some("1700000000000"));
        assert_eq!(out.iter().filter(|(k, _)| k == b"trace").count(), 1);
        assert_eq!(out.len(), 5, "{out:?}");
        // Signed with the key, so a worker with that key honours the origin.
        let origin = crate::message::ReplayOrigin::read(&out, Some(b"v"), Some(&key));
        assert_eq!(origin.of.as_deref(), Some("ocr.requests-2-41"));
        assert_eq!(origin.timestamp_ms, Some(1_700_000_000_000));
    }

    /// A producer's own `ocrfleet.replay.*` headers in a dead letter (as a worker before the
    /// move-aside wrote them, before the worker's own headers) are never signed: replay signs
    /// the coordinates and timestamp the worker wrote.
    #[test]
    fn a_forged_origin_in_a_dead_letter_is_not_signed() {
        let key = ReplayKey::new(b"k");
        let mut forged = hs(&[
            (h::REPLAY_OF, "victim-id"),
            (h::REPLAY_TIMESTAMP, "99999999999999"),
            (h::REPLAY_COUNT, "7"),
        ]);
        forged.extend(dead_letter());
        let out = replay_headers(&forged, Some(b"v"), Some(&key));
        let origin = crate::message::ReplayOrigin::read(&out, Some(b"v"), Some(&key));
        assert_eq!(origin.of.as_deref(), Some("ocr.requests-2-41"));
        assert_eq!(origin.timestamp_ms, Some(1_700_000_000_000));
        assert_eq!(header(&out, h::REPLAY_COUNT), Some("1"));
        assert!(!out
            .iter()
            .any(|(_, v)| v.as_deref() == Some(&b"victim-id"[..])));
    }

    #[test]
    fn a_group_commits_up_to_the_first_failed_delivery() {
        let mut p = Position::new(10);
        for o in 10..20 {
            p.read(o);
        }
        assert_eq!(p.safe(), 20);
        p.failed(15);
        p.failed(17);
        assert_eq!(p.safe(), 15, "the failed record is tried again next run");
    }

    #[test]
    fn filters() {
        let l = Letter::read(&dead_letter(), None);
        assert_eq!(l.stage, "fetch");
        assert_eq!(l.source_partition, Some(2));
        assert!(l.matches(&Filter::default()));
        let at = |s: &str| Some(DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc));
        for (f, want) in [
            (
                Filter {
                    stages: vec!["decode".into(), "fetch".into()],
                    ..Filter::default()
                },
                true,
            ),
            (
                Filter {
                    stages: vec!["decode".into()],
                    ..Filter::default()
                },
                false,
            ),
            (
                Filter {
                    classes: vec!["http_4".into()],
                    ..Filter::default()
                },
                true,
            ),
            (
                Filter {
                    classes: vec!["timeout".into()],
                    ..Filter::default()
                },
                false,
            ),
            (
                Filter {
                    since: at("2026-11-27T09:00:00Z"),
                    until: at("2026-11-27T11:00:00Z"),
                    ..Filter::default()
                },
                true,
            ),
            (
                Filter {
                    until: at("2026-11-27T10:00:00Z"),
                    ..Filter::default()
                },
                false,
            ),
            (
                Filter {
                    source_partitions: vec![0, 1],
                    ..Filter::default()
                },
                false,
            ),
        ] {
            assert_eq!(l.matches(&f), want, "{f:?}");
        }
        // Without an error-time header the record's timestamp is the time.
        let l = Letter::read(&hs(&[(h::STAGE, "parse")]), Some(1_700_000_000_000));
        assert_eq!(l.time, DateTime::from_timestamp_millis(1_700_000_000_000));
        assert_eq!(l.class, "unknown");
    }
}
