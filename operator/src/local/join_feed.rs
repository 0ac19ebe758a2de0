//! The records of a job's join topic in `weir run`, drawn from the shape
//! the steps after the join read ([`EventShape::infer_join`]):
//!
//! - a table join (latest row) gets its table first: one row per draw of
//!   the key pool, produced, then read by the workers (and through the
//!   repartition topic) before the first event is produced, so every
//!   event meets the same table in the run and in the model;
//! - a temporal table join gets row updates alongside the events, at a
//!   hundredth of their rate, and an interval join a second stream at their
//!   rate: both are joined by event time, so the order they are read in
//!   does not change the result.

use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use weir_crds::job::{JoinKind, StreamingJobSpec};

use super::feed::{Events, Feed, Produced};
use super::generator::{EventShape, EventSource};
use super::kafka::LocalKafka;
use super::profile::RateProfile;
use super::{LocalController, Reading, TICK, read};

/// Share of the events' rate at which a temporal table's rows change.
const TEMPORAL_UPDATE_SHARE: f64 = 0.01;
/// The rate a table's rows are produced at before the events.
const TABLE_PROFILE: &str = "20k:600s";
/// How long the workers may take to read the table before the events.
const TABLE_READ_TIMEOUT: Duration = Duration::from_secs(120);

/// What feeds the join topic while the events flow.
pub struct JoinFeed {
    alongside: Option<Feed>,
    /// Rows produced before the events.
    table_rows: u64,
}

impl JoinFeed {
    /// Feeds the join topic of `controller`'s job, if it has a join: a
    /// table is produced and read before this returns; other joins get a
    /// feed running alongside the events. `profile` is the events' rate.
    pub async fn start(
        controller: &mut LocalController,
        kafka: &LocalKafka,
        (partitions, keys, seed): (i32, u32, u64),
        profile: &RateProfile,
        model: Sender<Produced>,
    ) -> anyhow::Result<JoinFeed> {
        let spec: &StreamingJobSpec = &controller.job.spec;
        let (Some(join), Some(shape)) = (spec.join(), EventShape::infer_join(spec, keys)) else {
            return Ok(JoinFeed {
                alongside: None,
                table_rows: 0,
            });
        };
        let topic = join.topic.clone();
        let rows = Events::Generated(Box::new(EventSource::new(shape, seed ^ 0x5eed)));
        if join.kind == JoinKind::Table && !join.temporal {
            let table = Feed::start(
                kafka.bootstrap(),
                &topic,
                partitions,
                rows,
                TABLE_PROFILE.parse().map_err(anyhow::Error::msg)?,
                Some(u64::from(keys.max(1))),
                model,
            )
            .map_err(anyhow::Error::msg)?;
            while !table.ended() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let table_rows = table.stop().map_err(anyhow::Error::msg)?;
            wait_until_read(controller, kafka, partitions).await?;
            return Ok(JoinFeed {
                alongside: None,
                table_rows,
            });
        }
        let share = match join.kind {
            JoinKind::Interval => 1.0,
            JoinKind::Table => TEMPORAL_UPDATE_SHARE,
        };
        let feed = Feed::start(
            kafka.bootstrap(),
            &topic,
            partitions,
            rows,
            profile.scaled(share),
            None,
            model,
        )
        .map_err(anyhow::Error::msg)?;
        Ok(JoinFeed {
            alongside: Some(feed),
            table_rows: 0,
        })
    }

    /// Stops the feed; returns the records produced to the join topic.
    pub fn stop(self) -> anyhow::Result<u64> {
        let alongside = match self.alongside {
            Some(feed) => feed.stop().map_err(anyhow::Error::msg)?,
            None => 0,
        };
        Ok(self.table_rows + alongside)
    }
}

/// Ticks the job until its workers have read the join topic to its end
/// and applied what crossed the repartition topic.
async fn wait_until_read(
    controller: &mut LocalController,
    kafka: &LocalKafka,
    partitions: i32,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let topic = controller.job.spec.source.topics[0].clone();
    let mut reading = Reading::default();
    loop {
        controller.tick().await?;
        let (next, _) = read(controller, kafka, &topic, partitions, &reading)?;
        reading = next;
        if reading.in_transit == 0 && !reading.join_positions.is_empty() {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < TABLE_READ_TIMEOUT,
            "the workers did not read the join's table within {}s: {} records unread",
            TABLE_READ_TIMEOUT.as_secs(),
            reading.in_transit
        );
        tokio::time::sleep(TICK).await;
    }
}
