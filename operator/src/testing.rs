//! Fixtures shared by the unit tests.

use weir_crds::StreamingJob;

/// A valid job `streams/clicks` with parallelism 2, as the API server
/// returns it (uid, generation 1, the operator's finalizer).
pub fn sample_job() -> StreamingJob {
    let yaml = r#"
apiVersion: weir.dev/v1alpha1
kind: StreamingJob
metadata:
  name: clicks
  namespace: streams
  uid: 6f1c2a52-8d4e-4c1e-9a57-0c1d2e3f4a5b
  generation: 1
  resourceVersion: "100"
  finalizers: [weir.dev/cleanup]
spec:
  kafka:
    bootstrapServers: kafka:9092
  source:
    topics: [clicks]
  sink:
    topic: clicks-out
  checkpoint:
    storage: s3://bucket/weir
  parallelism: 2
"#;
    serde_yaml::from_str(yaml).expect("the fixture is a StreamingJob")
}
