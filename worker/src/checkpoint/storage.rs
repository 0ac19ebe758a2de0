//! Opens the object store named by a job's checkpoint storage URL.
//!
//! Supported schemes:
//! - `file:///dir/prefix`: a local directory (created if missing);
//! - `memory://<name>/prefix`: an in-memory store shared by every open of the
//!   same `<name>` in this process (tests and local mode run several workers
//!   in one process);
//! - `s3://bucket/prefix`: [`AmazonS3Builder::from_env`], so the standard AWS
//!   variables apply, including `AWS_ENDPOINT`,
//!   `AWS_VIRTUAL_HOSTED_STYLE_REQUEST=false` (path style, MinIO) and
//!   `AWS_ALLOW_HTTP=true`;
//! - `gs://bucket/prefix`: [`GoogleCloudStorageBuilder::from_env`];
//! - `az://container/prefix`: [`MicrosoftAzureBuilder::from_env`].

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use url::Url;

/// Why a checkpoint storage URL could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The URL does not parse, or its path is not a valid object path.
    #[error("invalid checkpoint storage URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The scheme is none of file, memory, s3, gs, az.
    #[error(
        "unsupported checkpoint storage URL {url:?}: scheme {scheme:?} is not one of file, memory, s3, gs, az"
    )]
    UnsupportedScheme {
        /// The URL as given.
        url: String,
        /// Its scheme.
        scheme: String,
    },
    /// The local directory of a `file://` URL could not be created.
    #[error("cannot create directory {dir:?} for checkpoint storage URL {url:?}: {source}")]
    CreateDir {
        /// The URL as given.
        url: String,
        /// The directory.
        dir: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The object store client could not be built (missing credentials,
    /// bad configuration, ...).
    #[error("cannot open checkpoint storage URL {url:?}: {source}")]
    Build {
        /// The URL as given.
        url: String,
        /// The object_store error.
        source: object_store::Error,
    },
}

/// In-memory stores by URL host, shared by every `memory://` open in the
/// process.
static MEMORY_STORES: LazyLock<Mutex<HashMap<String, Arc<InMemory>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// Opens the store for a checkpoint storage URL and returns it with the base
/// path (the URL's path) under which job roots live.
pub fn open_store(url: &str) -> Result<(Arc<dyn ObjectStore>, Path), StorageError> {
    let parsed = Url::parse(url).map_err(|e| StorageError::InvalidUrl {
        url: url.to_owned(),
        reason: e.to_string(),
    })?;
    let build_error = |source| StorageError::Build {
        url: url.to_owned(),
        source,
    };
    let store: Arc<dyn ObjectStore> = match parsed.scheme() {
        "file" => {
            let dir = parsed
                .to_file_path()
                .map_err(|()| StorageError::InvalidUrl {
                    url: url.to_owned(),
                    reason: "not an absolute local path".to_owned(),
                })?;
            std::fs::create_dir_all(&dir).map_err(|source| StorageError::CreateDir {
                url: url.to_owned(),
                dir: dir.clone(),
                source,
            })?;
            let local = LocalFileSystem::new_with_prefix(&dir)
                .map_err(build_error)?
                .with_automatic_cleanup(true);
            // The directory is the store's prefix: the base path is empty.
            return Ok((Arc::new(local), Path::ROOT));
        }
        "memory" => {
            let host = parsed.host_str().unwrap_or_default().to_owned();
            let mut stores = MEMORY_STORES
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            stores
                .entry(host)
                .or_insert_with(|| Arc::new(InMemory::new()))
                .clone()
        }
        "s3" | "s3a" => Arc::new(
            AmazonS3Builder::from_env()
                .with_url(url)
                .build()
                .map_err(build_error)?,
        ),
        "gs" => Arc::new(
            GoogleCloudStorageBuilder::from_env()
                .with_url(url)
                .build()
                .map_err(build_error)?,
        ),
        "az" | "azure" | "abfs" | "abfss" => Arc::new(
            MicrosoftAzureBuilder::from_env()
                .with_url(url)
                .build()
                .map_err(build_error)?,
        ),
        other => {
            return Err(StorageError::UnsupportedScheme {
                url: url.to_owned(),
                scheme: other.to_owned(),
            });
        }
    };
    let base = Path::from_url_path(parsed.path()).map_err(|e| StorageError::InvalidUrl {
        url: url.to_owned(),
        reason: e.to_string(),
    })?;
    Ok((store, base))
}

#[cfg(test)]
mod tests {
    use object_store::{ObjectStoreExt, PutPayload};

    use super::*;

    #[tokio::test]
    async fn memory_stores_are_shared_by_host() {
        let (a, base_a) = open_store("memory://storage-shared/some/prefix").unwrap();
        let (b, base_b) = open_store("memory://storage-shared/other").unwrap();
        let (c, _) = open_store("memory://storage-other").unwrap();
        assert_eq!(base_a.as_ref(), "some/prefix");
        assert_eq!(base_b.as_ref(), "other");
        let p = Path::from("x");
        a.put(&p, PutPayload::from_static(b"1")).await.unwrap();
        assert!(b.head(&p).await.is_ok());
        assert!(c.head(&p).await.is_err());
    }

    #[tokio::test]
    async fn file_urls_create_the_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        let url = Url::from_directory_path(&dir).unwrap().to_string();
        let (store, base) = open_store(&url).unwrap();
        assert_eq!(base, Path::ROOT);
        store
            .put(&Path::from("k/v"), PutPayload::from_static(b"1"))
            .await
            .unwrap();
        assert!(dir.join("k/v").is_file());
    }

    #[test]
    fn bad_urls_name_the_url_and_reason() {
        let err = open_store("ftp://host/x").err().unwrap().to_string();
        assert!(
            err.contains("ftp://host/x") && err.contains("\"ftp\""),
            "{err}"
        );
        let err = open_store("not a url").err().unwrap().to_string();
        assert!(err.contains("not a url"), "{err}");
    }

    #[test]
    fn cloud_urls_build_from_the_environment() {
        // Building a client does not contact the service.
        let (_, base) = open_store("s3://bucket/weir/ckpt").unwrap();
        assert_eq!(base.as_ref(), "weir/ckpt");
    }
}
