//! Deletion of a deleted job's checkpoints and savepoints from object storage
//! (`spec.savepoint.disposeOnDelete`).
//!
//! The store is opened the way the workers open it: the checkpoint storage
//! URL through object_store, configured with the same variables the workers
//! get (the keys of `checkpoint.credentialsSecret`, such as
//! AWS_ACCESS_KEY_ID or AWS_ENDPOINT, and the plain values of
//! `podTemplate.env`). Everything under the job root
//! `<storage>/<namespace>/<name>/` is deleted, and nothing else.

use std::collections::BTreeMap;

use futures::{StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use url::Url;

/// Why a job's storage could not be used (opened, read, written or
/// disposed of).
#[derive(Debug, thiserror::Error)]
pub enum DisposeError {
    /// The storage URL cannot be parsed or names no supported store.
    #[error("invalid checkpoint storage URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL.
        url: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The store could not be opened, listed or deleted from.
    #[error("object storage {url}: {source}")]
    Store {
        /// The URL.
        url: String,
        /// The object_store error.
        #[source]
        source: object_store::Error,
    },
}

/// An opened store and the job root inside it.
pub struct JobStorage {
    url: String,
    store: Option<Box<dyn ObjectStore>>,
    root: Path,
}

impl JobStorage {
    /// Opens the checkpoint storage at `url` for the job `namespace/name`,
    /// configured by `options` (environment-style keys, case-insensitive).
    /// A `file://` directory that does not exist here and a `memory://` store
    /// (private to the worker processes) hold nothing this process can delete.
    pub fn open(
        url: &str,
        namespace: &str,
        name: &str,
        options: &BTreeMap<String, String>,
    ) -> Result<Self, DisposeError> {
        let invalid = |reason: String| DisposeError::InvalidUrl {
            url: url.to_owned(),
            reason,
        };
        let store_error = |source| DisposeError::Store {
            url: url.to_owned(),
            source,
        };
        let parsed = Url::parse(url).map_err(|e| invalid(e.to_string()))?;
        let (store, base): (Option<Box<dyn ObjectStore>>, Path) = match parsed.scheme() {
            "file" => {
                let dir = parsed
                    .to_file_path()
                    .map_err(|()| invalid("not an absolute local path".to_owned()))?;
                if dir.is_dir() {
                    let local = LocalFileSystem::new_with_prefix(&dir)
                        .map_err(store_error)?
                        .with_automatic_cleanup(true);
                    (Some(Box::new(local)), Path::ROOT)
                } else {
                    (None, Path::ROOT)
                }
            }
            "memory" => (None, Path::ROOT),
            _ => {
                let (store, base) =
                    object_store::parse_url_opts(&parsed, options).map_err(store_error)?;
                (Some(store), base)
            }
        };
        Ok(Self {
            url: url.to_owned(),
            store,
            // The worker's job root: `<prefix>/<namespace>/<name>`.
            root: base.join(namespace).join(name),
        })
    }

    /// The job root inside the store.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether savepoint `id` is complete: its `_metadata` exists under the
    /// job root. A store this process cannot see (see [`JobStorage::open`])
    /// is taken at the workers' word: true.
    pub async fn savepoint_complete(&self, id: &str) -> Result<bool, DisposeError> {
        let Some(store) = &self.store else {
            return Ok(true);
        };
        let location = self
            .root
            .clone()
            .join("savepoints")
            .join(id)
            .join("_metadata");
        match store.head(&location).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(source) => Err(DisposeError::Store {
                url: self.url.clone(),
                source,
            }),
        }
    }

    /// Writes `fence.json` = `{"generation": N}` under the job root: workers
    /// of an older generation refuse to start and to commit from then on. A
    /// store this process cannot see is left alone.
    pub async fn write_fence(&self, generation: i64) -> Result<(), DisposeError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let body = serde_json::json!({ "generation": generation }).to_string();
        store
            .put(&self.root.clone().join("fence.json"), body.into())
            .await
            .map_err(|source| DisposeError::Store {
                url: self.url.clone(),
                source,
            })?;
        Ok(())
    }

    /// Deletes every object under the job root; returns how many.
    pub async fn dispose(&self) -> Result<usize, DisposeError> {
        let Some(store) = &self.store else {
            return Ok(0);
        };
        let store_error = |source| DisposeError::Store {
            url: self.url.clone(),
            source,
        };
        let locations = store
            .list(Some(&self.root))
            .map_ok(|meta| meta.location)
            .boxed();
        let deleted: Vec<Path> = store
            .delete_stream(locations)
            .try_collect()
            .await
            .map_err(store_error)?;
        Ok(deleted.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(dir: &std::path::Path, file: &str) {
        let path = dir.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"x").unwrap();
    }

    #[tokio::test]
    async fn deletes_the_job_root_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        touch(
            dir.path(),
            "streams/clicks/checkpoints/00000001/task-0.json",
        );
        touch(dir.path(), "streams/clicks/savepoints/sp-1/_metadata");
        touch(dir.path(), "streams/clicks2/fence.json");
        touch(dir.path(), "other/job/fence.json");
        // Namespace `streams-clicks` with a job `x` is another job.
        touch(dir.path(), "streams-clicks/x/fence.json");
        let url = format!("file://{}", dir.path().display());
        let storage = JobStorage::open(&url, "streams", "clicks", &BTreeMap::new()).unwrap();
        assert_eq!(storage.dispose().await.unwrap(), 2);
        assert!(
            !dir.path()
                .join("streams/clicks/checkpoints/00000001/task-0.json")
                .exists()
        );
        assert!(dir.path().join("streams/clicks2/fence.json").exists());
        assert!(dir.path().join("other/job/fence.json").exists());
        assert!(dir.path().join("streams-clicks/x/fence.json").exists());
        // Idempotent: a second run finds nothing.
        assert_eq!(storage.dispose().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn fences_and_savepoint_manifests() {
        let dir = tempfile::tempdir().unwrap();
        touch(dir.path(), "streams/clicks/savepoints/sp-1/_metadata");
        touch(
            dir.path(),
            "streams/clicks/savepoints/sp-2/tasks/0/manifest.json",
        );
        let url = format!("file://{}", dir.path().display());
        let storage = JobStorage::open(&url, "streams", "clicks", &BTreeMap::new()).unwrap();
        assert!(storage.savepoint_complete("sp-1").await.unwrap());
        assert!(!storage.savepoint_complete("sp-2").await.unwrap());
        storage.write_fence(4).await.unwrap();
        let fence = std::fs::read_to_string(dir.path().join("streams/clicks/fence.json")).unwrap();
        assert_eq!(fence, r#"{"generation":4}"#);

        let unseen = JobStorage::open("memory://", "ns", "job", &BTreeMap::new()).unwrap();
        assert!(unseen.savepoint_complete("sp").await.unwrap());
        unseen.write_fence(2).await.unwrap();
    }

    #[tokio::test]
    async fn a_missing_local_directory_holds_nothing() {
        let storage =
            JobStorage::open("file:///nonexistent/weir", "ns", "job", &BTreeMap::new()).unwrap();
        assert_eq!(storage.dispose().await.unwrap(), 0);
    }

    #[test]
    fn cloud_urls_are_configured_from_the_options() {
        let options = BTreeMap::from([
            ("AWS_ACCESS_KEY_ID".to_owned(), "id".to_owned()),
            ("AWS_SECRET_ACCESS_KEY".to_owned(), "secret".to_owned()),
            ("AWS_REGION".to_owned(), "eu-west-1".to_owned()),
        ]);
        let storage = JobStorage::open("s3://bucket/prefix/weir", "ns", "job", &options).unwrap();
        assert_eq!(storage.root().as_ref(), "prefix/weir/ns/job");
        let error = JobStorage::open("not a url", "ns", "job", &options)
            .err()
            .unwrap();
        assert!(matches!(error, DisposeError::InvalidUrl { .. }), "{error}");
    }
}
