//! `weir generate`: a job's generated events produced to a Kafka broker at
//! the rate of a profile, and nothing else: the load generator of the kind
//! suite (a Kubernetes Job running the operator image) and of a user's own
//! load tests against a deployed StreamingJob.
//!
//! The events are the ones `weir run` feeds (see [`super::generator`]),
//! keyed and partitioned as the job's producers would key them, so a job's
//! output can be checked against [`super::model::Model`] fed with what the
//! source topic holds afterwards.

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context as _;

use super::feed::{Events, Feed};
use super::generator::{EventShape, EventSource};
use super::kafka::LocalKafka;
use super::profile::RateProfile;

/// What `weir generate` produces, and where.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// The StreamingJob manifest whose source the events are for.
    pub file: PathBuf,
    /// The broker (HOST:PORT[,HOST:PORT...]).
    pub kafka: String,
    /// The topic; default: the job's first source topic (it must exist).
    /// The join's topic gets records shaped as the join reads them.
    pub topic: Option<String>,
    /// The rate over time; the run lasts the profile's length.
    pub profile: RateProfile,
    /// Distinct keys of the events.
    pub keys: u32,
    /// Seed of the events: the same seed draws the same keys and values.
    pub seed: u64,
}

/// What a finished `weir generate` produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generated {
    /// The topic written to.
    pub topic: String,
    /// Its partitions.
    pub partitions: i32,
    /// Events produced, every one acknowledged by the broker.
    pub events: u64,
}

/// How often the run checks whether the feed is done.
const POLL: Duration = Duration::from_millis(50);

/// Produces the events of `options` for the profile's length; returns once
/// every event is acknowledged.
pub fn generate(options: &GenerateOptions) -> anyhow::Result<Generated> {
    let text = std::fs::read_to_string(&options.file)
        .with_context(|| format!("cannot read {}", options.file.display()))?;
    let job = weir_worker::config::parse_job(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", options.file.display()))?;
    let topic = match &options.topic {
        Some(topic) => topic.clone(),
        None => job
            .spec
            .source
            .topics
            .first()
            .cloned()
            .context("the job has no source topic")?,
    };
    let kafka = LocalKafka::connect(&options.kafka)?;
    let partitions = kafka.partitions(&topic)?;
    anyhow::ensure!(
        partitions > 0,
        "topic {topic} at {} has no partitions (create it first)",
        options.kafka
    );
    // The join's topic gets the records the join reads there.
    let shape = match job.spec.join().filter(|join| join.topic == topic) {
        Some(_) => EventShape::infer_join(&job.spec, options.keys)
            .context("the steps after the join read no key to generate its records by")?,
        None => EventShape::infer(&job.spec, options.keys),
    };
    let events = Events::Generated(Box::new(EventSource::new(shape, options.seed)));
    // No model: whoever checks the output reads the topic back.
    let (model, _) = mpsc::channel();
    let total = options.profile.events_until(options.profile.length());
    let feed = Feed::start(
        &options.kafka,
        &topic,
        partitions,
        events,
        options.profile.clone(),
        Some(total),
        model,
    )
    .map_err(anyhow::Error::msg)?;
    while !feed.ended() {
        std::thread::sleep(POLL);
    }
    let events = feed.stop().map_err(anyhow::Error::msg)?;
    Ok(Generated {
        topic,
        partitions,
        events,
    })
}

#[cfg(test)]
mod tests {
    use rdkafka::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::mocking::MockCluster;

    use super::*;

    fn sample(name: &str) -> PathBuf {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/samples")).join(name)
    }

    #[test]
    fn produces_the_profiles_events_to_the_jobs_source_topic_and_nothing_more() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("clicks", 4, 1).unwrap();
        let options = GenerateOptions {
            file: sample("clickstream-counts.yaml"),
            kafka: cluster.bootstrap_servers(),
            topic: None,
            profile: "500:1s,1k:1s".parse().unwrap(),
            keys: 20,
            seed: 3,
        };

        let generated = generate(&options).unwrap();

        assert_eq!(
            generated,
            Generated {
                topic: "clicks".to_owned(),
                partitions: 4,
                events: 1_500
            }
        );
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .create()
            .unwrap();
        let mut on_broker = 0;
        for partition in 0..4 {
            let (low, high) = consumer
                .fetch_watermarks("clicks", partition, Duration::from_secs(5))
                .unwrap();
            on_broker += high - low;
        }
        assert_eq!(on_broker, 1_500, "every event acknowledged, none twice");
    }

    #[test]
    fn a_missing_topic_is_an_error_naming_it() {
        let cluster = MockCluster::new(1).unwrap();
        let options = GenerateOptions {
            file: sample("clickstream-counts.yaml"),
            kafka: cluster.bootstrap_servers(),
            topic: Some("no-such-topic".to_owned()),
            profile: "10:1s".parse().unwrap(),
            keys: 5,
            seed: 1,
        };

        let error = format!("{:#}", generate(&options).unwrap_err());

        assert!(error.contains("no-such-topic"), "{error}");
    }
}
