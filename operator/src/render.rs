//! `weir render`: the objects the operator would apply for StreamingJob
//! manifests, as YAML files, so that they can be reviewed, snapshot-tested
//! and validated against the Kubernetes schemas without a cluster.

use std::path::{Path, PathBuf};

use serde::Serialize;
use weir_crds::StreamingJob;

use crate::builders::{self, BuildError, Settings};

/// The uid given to a manifest without one (owner references need a uid;
/// the API server assigns the real one).
pub const PLACEHOLDER_UID: &str = "00000000-0000-0000-0000-000000000000";
/// The control token written into rendered Secrets instead of a random one.
pub const PLACEHOLDER_TOKEN: &str = "rendered-placeholder-token";

/// Why manifests cannot be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// A document is not a valid StreamingJob.
    #[error("{file}: document {index} is invalid:\n  {problems}")]
    Invalid {
        /// The file.
        file: String,
        /// Position of the document, from 1.
        index: usize,
        /// The validation problems, one per line.
        problems: String,
    },
    /// The file holds no StreamingJob.
    #[error("{0}: no StreamingJob found")]
    Empty(String),
    /// The objects could not be built.
    #[error("{file}: {source}")]
    Build {
        /// The file.
        file: String,
        /// The builder's error.
        #[source]
        source: BuildError,
    },
    /// An object could not be serialized.
    #[error("cannot serialize {what}: {source}")]
    Serialize {
        /// The object.
        what: String,
        /// The serializer's error.
        #[source]
        source: serde_yaml::Error,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// The rendered objects of one job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderedJob {
    /// `<namespace>-<name>`: the directory the files go to.
    pub id: String,
    /// `(file name, YAML)` of each object, in apply order.
    pub files: Vec<(String, String)>,
}

fn yaml<T: Serialize>(what: &str, object: &T) -> Result<String, RenderError> {
    serde_yaml::to_string(object).map_err(|source| RenderError::Serialize {
        what: what.to_owned(),
        source,
    })
}

/// Renders every StreamingJob of the YAML `text` (read from `file`). A job
/// without a namespace goes to `default`; one without a uid gets
/// [`PLACEHOLDER_UID`]; the control Secret holds [`PLACEHOLDER_TOKEN`].
pub fn render_text(
    file: &str,
    text: &str,
    settings: &Settings,
) -> Result<Vec<RenderedJob>, RenderError> {
    let mut rendered = Vec::new();
    for document in weir_crds::validate::parse_documents(text) {
        if !document.problems.is_empty() {
            return Err(RenderError::Invalid {
                file: file.to_owned(),
                index: document.index,
                problems: document
                    .problems
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n  "),
            });
        }
        let Some(mut job) = document.job else {
            continue;
        };
        job.metadata
            .namespace
            .get_or_insert_with(|| "default".to_owned());
        job.metadata
            .uid
            .get_or_insert_with(|| PLACEHOLDER_UID.to_owned());
        rendered.push(render_job(file, &job, settings)?);
    }
    if rendered.is_empty() {
        return Err(RenderError::Empty(file.to_owned()));
    }
    Ok(rendered)
}

fn render_job(
    file: &str,
    job: &StreamingJob,
    settings: &Settings,
) -> Result<RenderedJob, RenderError> {
    let build = |source| RenderError::Build {
        file: file.to_owned(),
        source,
    };
    let names = builders::Names::of(job).map_err(build)?;
    let rollout = builders::Rollout::initial(job);
    let children = builders::children(job, settings, &rollout, PLACEHOLDER_TOKEN).map_err(build)?;
    Ok(RenderedJob {
        id: format!("{}-{}", names.namespace, names.job),
        files: vec![
            (
                "secret.yaml".to_owned(),
                yaml("Secret", &children.control_secret)?,
            ),
            (
                "configmap.yaml".to_owned(),
                yaml("ConfigMap", &children.config_map)?,
            ),
            (
                "service.yaml".to_owned(),
                yaml("Service", &children.service)?,
            ),
            (
                "statefulset.yaml".to_owned(),
                yaml("StatefulSet", &children.stateful_set)?,
            ),
            (
                "poddisruptionbudget.yaml".to_owned(),
                yaml("PodDisruptionBudget", &children.pdb)?,
            ),
        ],
    })
}

/// Renders the jobs of `files` into `out/<namespace>-<name>/<kind>.yaml` and
/// returns the paths written.
pub fn render_files(
    files: &[PathBuf],
    out: &Path,
    settings: &Settings,
) -> Result<Vec<PathBuf>, RenderError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| RenderError::Io { path, source }
    };
    let mut written = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).map_err(io(file))?;
        for job in render_text(&file.display().to_string(), &text, settings)? {
            let dir = out.join(&job.id);
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
            for (name, body) in job.files {
                let path = dir.join(name);
                std::fs::write(&path, body).map_err(io(&path))?;
                written.push(path);
            }
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            worker_image: "weir-worker:test".into(),
        }
    }

    const JOB: &str = r#"
apiVersion: weir.dev/v1alpha1
kind: StreamingJob
metadata:
  name: copy
spec:
  kafka: {bootstrapServers: "kafka:9092"}
  source: {topics: [in]}
  sink: {topic: out}
  checkpoint: {storage: "file:///tmp/weir"}
"#;

    #[test]
    fn renders_every_child_with_defaults_for_namespace_and_uid() {
        let jobs = render_text("job.yaml", JOB, &settings()).unwrap();
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].id, "default-copy");
        let names: Vec<_> = jobs[0].files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "secret.yaml",
                "configmap.yaml",
                "service.yaml",
                "statefulset.yaml",
                "poddisruptionbudget.yaml"
            ]
        );
        let sts = &jobs[0].files[3].1;
        assert!(sts.contains(PLACEHOLDER_UID), "{sts}");
        assert!(sts.contains("namespace: default"), "{sts}");
    }

    #[test]
    fn refuses_an_invalid_job() {
        let broken = JOB.replace("topics: [in]", "topics: [out]");
        let error = render_text("job.yaml", &broken, &settings()).unwrap_err();
        assert!(
            matches!(error, RenderError::Invalid { index: 1, .. }),
            "{error}"
        );
    }

    #[test]
    fn refuses_a_file_without_jobs() {
        let error = render_text("empty.yaml", "---\n", &settings()).unwrap_err();
        assert!(matches!(error, RenderError::Empty(_)), "{error}");
    }
}
