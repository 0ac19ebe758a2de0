//! The job's repartition topic: its name, its creation, and the two kinds
//! of records on it.
//!
//! A pipeline whose `keyBy` is not `sourcePartitioned` is cut there (see
//! [`crate::engine::pipeline`]). Every task writes the records it keyed to partition
//! `murmur2(key) mod N` of `weir.<namespace>.<job>.<step>` (N: the source
//! partition count, so task `t` reads partition `t` of it as of every source
//! topic), inside its transaction under exactly-once. Besides those data
//! records, each task broadcasts its source watermark to every partition (at
//! every checkpoint, and at most every second under at-least-once when it
//! changed): a *watermark record* with an empty value and the headers
//! [`UPSTREAM_HEADER`], [`WATERMARK_HEADER`] (absent while the task has
//! none) and [`IDLE_HEADER`]. Data records carry their event time in
//! [`TIME_HEADER`] (not as the Kafka timestamp, which brokers may reject or
//! overwrite and which drives time-based retention) and their source
//! position in the dead-letter headers of [`crate::kafka::client`]: a dead letter or
//! late event further on names the record the user produced, and a task
//! skips source records it applied already.
//!
//! The topic keeps records until the tasks reading them have committed a
//! checkpoint past them: retention is unlimited and each worker deletes the
//! records before its tasks' committed offsets ([`Purger`]), as Kafka
//! Streams does.

use std::sync::mpsc;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::FromClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::{Offset, TopicPartitionList};
use thiserror::Error;

use crate::engine::record::SourcePosition;
use crate::engine::watermark::UpstreamReport;
use crate::kafka::client::{SOURCE_OFFSET_HEADER, SOURCE_PARTITION_HEADER, SOURCE_TOPIC_HEADER};

/// Header of a watermark record: the task that sent it.
pub const UPSTREAM_HEADER: &str = "weir.upstream";
/// Header of a watermark record: the sender's watermark in epoch
/// milliseconds.
pub const WATERMARK_HEADER: &str = "weir.watermark";
/// Header of a watermark record: `true` when all the sender's source
/// partitions are idle.
pub const IDLE_HEADER: &str = "weir.idle";
/// Header of a data record: its event time in epoch milliseconds.
pub const TIME_HEADER: &str = "weir.time";
/// Header of a watermark record sent when a stop-with-savepoint drains the
/// topic: the savepoint id. The sender has stopped reading its sources and
/// wrote nothing to the partition after it.
pub const DRAINED_HEADER: &str = "weir.drained";
/// Header of a watermark record: present when the sender read its
/// partition of the join's table to where it stood at start, and the rows
/// it forwarded are written before this record.
pub const TABLE_READ_HEADER: &str = "weir.table-read";

/// Timeout of a request deleting records.
const PURGE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long topic metadata may take to show a topic just created.
const METADATA_PROPAGATION: Duration = Duration::from_secs(10);

/// Why the repartition topic could not be set up.
#[derive(Debug, Error)]
pub enum RepartitionError {
    /// The admin or metadata client could not be created.
    #[error("cannot create the Kafka client that creates the repartition topic: {0}")]
    Client(#[source] KafkaError),
    /// The broker refused to create the topic.
    #[error("cannot create the repartition topic {topic}: {source}")]
    Create {
        /// The topic.
        topic: String,
        /// The broker's or client's error.
        source: KafkaError,
    },
    /// The topic exists with another partition count than the source.
    #[error(
        "repartition topic {topic} has {found} partitions but the source topics have {expected}: task t reads partition t of both, so the counts must be equal"
    )]
    PartitionCount {
        /// The topic.
        topic: String,
        /// Its partition count.
        found: usize,
        /// The source's.
        expected: i32,
    },
    /// The purging thread could not be started.
    #[error("cannot start the thread that purges the repartition topic: {0}")]
    Thread(#[source] std::io::Error),
    /// Its metadata could not be read.
    #[error("cannot read the metadata of repartition topic {topic}: {source}")]
    Metadata {
        /// The topic.
        topic: String,
        /// The client's error.
        source: KafkaError,
    },
}

/// The name of the repartition topic of step `step` of job `job` in
/// `namespace`. Dots separate the parts: namespaces and step names cannot
/// contain one, so no two jobs share a topic (with dashes, job `a` step
/// `b-c` and job `a-b` step `c` would).
pub fn topic_name(namespace: &str, job: &str, step: &str) -> String {
    format!("weir.{namespace}.{job}.{step}")
}

/// Creates the repartition topic with `partitions` partitions unless it
/// exists, and checks the partition count of an existing one. Every worker
/// does this at start-up; the first one creates it. A topic created
/// beforehand (by an administrator, where workers may not create topics) is
/// used as it is.
pub async fn ensure_topic(
    base: &ClientConfig,
    topic: &str,
    partitions: i32,
    timeout: Duration,
) -> Result<(), RepartitionError> {
    let client: BaseConsumer = BaseConsumer::from_config(base).map_err(RepartitionError::Client)?;
    if let Some(found) = partition_count(&client, topic, timeout)? {
        return check_count(topic, found, partitions);
    }
    let admin: AdminClient<DefaultClientContext> =
        AdminClient::from_config(base).map_err(RepartitionError::Client)?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(-1))
        .set("cleanup.policy", "delete")
        .set("message.timestamp.type", "CreateTime")
        .set("retention.ms", "-1");
    let options = AdminOptions::new()
        .operation_timeout(Some(timeout))
        .request_timeout(Some(timeout));
    let create_error = |source| RepartitionError::Create {
        topic: topic.to_owned(),
        source,
    };
    let results = admin
        .create_topics([&new], &options)
        .await
        .map_err(create_error)?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(create_error(KafkaError::AdminOp(code))),
        }
    }
    // Metadata may lag behind a topic just created.
    let deadline = std::time::Instant::now() + METADATA_PROPAGATION;
    loop {
        match partition_count(&client, topic, timeout)? {
            Some(found) => return check_count(topic, found, partitions),
            None if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            None => return check_count(topic, 0, partitions),
        }
    }
}

/// The partition count of `topic`, `None` if it does not exist.
fn partition_count(
    client: &BaseConsumer,
    topic: &str,
    timeout: Duration,
) -> Result<Option<usize>, RepartitionError> {
    let metadata = client
        .fetch_metadata(Some(topic), timeout)
        .map_err(|source| RepartitionError::Metadata {
            topic: topic.to_owned(),
            source,
        })?;
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len())
        .filter(|n| *n > 0))
}

fn check_count(topic: &str, found: usize, expected: i32) -> Result<(), RepartitionError> {
    if i32::try_from(found).ok() == Some(expected) {
        Ok(())
    } else {
        Err(RepartitionError::PartitionCount {
            topic: topic.to_owned(),
            found,
            expected,
        })
    }
}

/// Deletes the records of the repartition topic before the offsets the
/// worker's tasks committed, on a thread of its own: a slow broker, or one
/// that does not support deleting records, never holds up processing; the
/// next request covers what a failed one did not.
pub struct Purger {
    requests: mpsc::Sender<Vec<(i32, i64)>>,
}

impl Purger {
    /// Starts the purging thread for `topic`.
    pub fn start(base: &ClientConfig, topic: String) -> Result<Purger, RepartitionError> {
        let admin: AdminClient<DefaultClientContext> =
            AdminClient::from_config(base).map_err(RepartitionError::Client)?;
        let (requests, received) = mpsc::channel::<Vec<(i32, i64)>>();
        std::thread::Builder::new()
            .name("weir-purge".to_owned())
            .spawn(move || purge_loop(&admin, &topic, &received))
            .map_err(RepartitionError::Thread)?;
        Ok(Purger { requests })
    }

    /// Asks for the records before `offset` of each `(partition, offset)`
    /// to be deleted. The thread ends when the purger is dropped.
    pub fn purge(&self, before: Vec<(i32, i64)>) {
        // The thread only stops when this sender is dropped.
        let _ = self.requests.send(before);
    }
}

fn purge_loop(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    received: &mpsc::Receiver<Vec<(i32, i64)>>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the repartition purger: records are kept");
            return;
        }
    };
    let options = AdminOptions::new()
        .operation_timeout(Some(PURGE_TIMEOUT))
        .request_timeout(Some(PURGE_TIMEOUT));
    let mut warned = false;
    while let Ok(mut request) = received.recv() {
        // Each request covers every task of the worker: the newest wins.
        while let Ok(newer) = received.try_recv() {
            request = newer;
        }
        let mut list = TopicPartitionList::new();
        for (partition, offset) in request {
            if list
                .add_partition_offset(topic, partition, Offset::Offset(offset))
                .is_err()
            {
                continue;
            }
        }
        let failed = match rt.block_on(admin.delete_records(&list, &options)) {
            Ok(result) => result
                .elements()
                .iter()
                .find_map(|e| e.error().err())
                .map(|e| e.to_string()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(error) = failed {
            if warned {
                tracing::debug!(%topic, %error, "purging the repartition topic");
            } else {
                tracing::warn!(%topic, %error, "cannot purge the repartition topic: its records are kept until this succeeds");
                warned = true;
            }
        }
    }
}

/// The headers of a data record: its source position and event time.
pub fn data_headers(source: &SourcePosition, time: Option<i64>) -> OwnedHeaders {
    let partition = source.partition.to_string();
    let offset = source.offset.to_string();
    let time = time.map(|t| t.to_string());
    let headers = OwnedHeaders::new_with_capacity(4)
        .insert(Header {
            key: SOURCE_TOPIC_HEADER,
            value: Some(source.topic.as_bytes()),
        })
        .insert(Header {
            key: SOURCE_PARTITION_HEADER,
            value: Some(partition.as_bytes()),
        })
        .insert(Header {
            key: SOURCE_OFFSET_HEADER,
            value: Some(offset.as_bytes()),
        });
    match &time {
        Some(t) => headers.insert(Header {
            key: TIME_HEADER,
            value: Some(t.as_bytes()),
        }),
        None => headers,
    }
}

/// The headers of the watermark record of task `upstream`; `drained`
/// names the savepoint whose drain it ends the sender's output for;
/// `table_read` says the sender read and forwarded its partition of the
/// join's table.
pub fn watermark_headers(
    upstream: i32,
    report: UpstreamReport,
    drained: Option<&str>,
    table_read: bool,
) -> OwnedHeaders {
    let upstream = upstream.to_string();
    let watermark = report.watermark.map(|w| w.to_string());
    let mut headers = OwnedHeaders::new_with_capacity(3)
        .insert(Header {
            key: UPSTREAM_HEADER,
            value: Some(upstream.as_bytes()),
        })
        .insert(Header {
            key: IDLE_HEADER,
            value: Some(if report.idle { &b"true"[..] } else { b"false" }),
        });
    if let Some(w) = &watermark {
        headers = headers.insert(Header {
            key: WATERMARK_HEADER,
            value: Some(w.as_bytes()),
        });
    }
    if let Some(id) = drained {
        headers = headers.insert(Header {
            key: DRAINED_HEADER,
            value: Some(id.as_bytes()),
        });
    }
    if table_read {
        headers = headers.insert(Header {
            key: TABLE_READ_HEADER,
            value: Some(b"true"),
        });
    }
    headers
}

/// A record read from the repartition topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RepartitionMessage<'a> {
    /// A keyed record.
    Data {
        /// The topic, partition and offset of its source record.
        source: (&'a str, i32, i64),
        /// Its event time, if the source has event time.
        time: Option<i64>,
    },
    /// A watermark report of upstream task `upstream`.
    Watermark {
        /// The task that sent it.
        upstream: usize,
        /// What it reported.
        report: UpstreamReport,
        /// The savepoint whose drain this report ends the sender's output
        /// for, if any.
        drained: Option<&'a str>,
        /// The sender read its partition of the join's table and the rows
        /// it forwarded come before this report.
        table_read: bool,
    },
}

/// Tells a record of the repartition topic from its headers; `Err` names
/// what is wrong with them.
pub fn classify<'a>(
    headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
) -> Result<RepartitionMessage<'a>, String> {
    let mut upstream = None;
    let mut watermark = None;
    let mut idle = None;
    let mut topic = None;
    let mut partition = None;
    let mut offset = None;
    let mut time = None;
    let mut drained = None;
    let mut table_read = false;
    for (key, value) in headers {
        let text = value.and_then(|v| std::str::from_utf8(v).ok());
        match key {
            UPSTREAM_HEADER => upstream = Some(text),
            WATERMARK_HEADER => watermark = Some(text),
            IDLE_HEADER => idle = Some(text),
            SOURCE_TOPIC_HEADER => topic = text,
            SOURCE_PARTITION_HEADER => partition = text.and_then(|t| t.parse().ok()),
            SOURCE_OFFSET_HEADER => offset = text.and_then(|t| t.parse().ok()),
            TIME_HEADER => time = Some(text.and_then(|t| t.parse::<i64>().ok())),
            DRAINED_HEADER => drained = Some(text),
            TABLE_READ_HEADER => table_read = true,
            _ => {}
        }
    }
    let Some(upstream) = upstream else {
        let Some(((topic, partition), offset)) = topic.zip(partition).zip(offset) else {
            return Err(format!(
                "repartitioned record without valid {SOURCE_TOPIC_HEADER}, {SOURCE_PARTITION_HEADER} and {SOURCE_OFFSET_HEADER} headers"
            ));
        };
        let time = match time {
            None => None,
            Some(Some(t)) => Some(t),
            Some(None) => {
                return Err(format!(
                    "repartitioned record: invalid {TIME_HEADER} header"
                ));
            }
        };
        return Ok(RepartitionMessage::Data {
            source: (topic, partition, offset),
            time,
        });
    };
    let upstream = upstream
        .and_then(|u| u.parse().ok())
        .ok_or_else(|| format!("watermark record: invalid {UPSTREAM_HEADER} header"))?;
    let watermark = match watermark {
        None => None,
        Some(w) => Some(
            w.and_then(|w| w.parse().ok())
                .ok_or_else(|| format!("watermark record: invalid {WATERMARK_HEADER} header"))?,
        ),
    };
    let idle = match idle {
        Some(Some("true")) => true,
        Some(Some("false")) | None => false,
        Some(_) => return Err(format!("watermark record: invalid {IDLE_HEADER} header")),
    };
    let drained = match drained {
        None => None,
        Some(Some(id)) => Some(id),
        Some(None) => return Err(format!("watermark record: invalid {DRAINED_HEADER} header")),
    };
    Ok(RepartitionMessage::Watermark {
        upstream,
        report: UpstreamReport { watermark, idle },
        drained,
        table_read,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Headers;

    fn pairs(headers: &OwnedHeaders) -> Vec<(&str, Option<&[u8]>)> {
        headers.iter().map(|h| (h.key, h.value)).collect()
    }

    #[test]
    fn watermark_records_round_trip() {
        for report in [
            UpstreamReport {
                watermark: Some(-5),
                idle: false,
            },
            UpstreamReport {
                watermark: None,
                idle: true,
            },
            UpstreamReport {
                watermark: Some(1_700_000_000_000),
                idle: true,
            },
        ] {
            for (drained, table_read) in [(None, false), (Some("rescale-3"), false), (None, true)] {
                let headers = watermark_headers(7, report, drained, table_read);
                assert_eq!(
                    classify(pairs(&headers)),
                    Ok(RepartitionMessage::Watermark {
                        upstream: 7,
                        report,
                        drained,
                        table_read,
                    })
                );
            }
        }
    }

    #[test]
    fn data_records_name_their_source() {
        let source = SourcePosition {
            topic: "orders".into(),
            partition: 3,
            offset: 42,
        };
        let headers = data_headers(&source, Some(-86_400_000));
        assert_eq!(
            classify(pairs(&headers)),
            Ok(RepartitionMessage::Data {
                source: ("orders", 3, 42),
                time: Some(-86_400_000),
            })
        );
        let headers = data_headers(&source, None);
        assert_eq!(
            classify(pairs(&headers)),
            Ok(RepartitionMessage::Data {
                source: ("orders", 3, 42),
                time: None,
            })
        );
        let err = classify([]).unwrap_err();
        assert!(err.contains(SOURCE_TOPIC_HEADER), "{err}");
        let err = classify([
            (SOURCE_TOPIC_HEADER, Some(&b"orders"[..])),
            (SOURCE_PARTITION_HEADER, Some(&b"1"[..])),
            (SOURCE_OFFSET_HEADER, Some(&b"2"[..])),
            (TIME_HEADER, Some(&b"noon"[..])),
        ])
        .unwrap_err();
        assert!(err.contains(TIME_HEADER), "{err}");
    }

    #[test]
    fn broken_watermark_headers_are_named() {
        let err = classify([(UPSTREAM_HEADER, Some(&b"x"[..]))]).unwrap_err();
        assert!(err.contains(UPSTREAM_HEADER), "{err}");
        let err = classify([
            (UPSTREAM_HEADER, Some(&b"1"[..])),
            (WATERMARK_HEADER, Some(&b"soon"[..])),
        ])
        .unwrap_err();
        assert!(err.contains(WATERMARK_HEADER), "{err}");
        let err = classify([
            (UPSTREAM_HEADER, Some(&b"1"[..])),
            (IDLE_HEADER, Some(&b"maybe"[..])),
        ])
        .unwrap_err();
        assert!(err.contains(IDLE_HEADER), "{err}");
    }

    #[test]
    fn topic_names_follow_the_design() {
        assert_eq!(
            topic_name("prod", "clicks", "by-user"),
            "weir.prod.clicks.by-user"
        );
        assert_ne!(topic_name("ns", "a", "b-c"), topic_name("ns", "a-b", "c"));
    }
}
