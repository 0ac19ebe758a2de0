//! Moving files and small JSON documents between local disk and the object
//! store, with errors that name the object and the local file.

use std::path::{Path as LocalPath, PathBuf};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Files larger than this are uploaded with a multipart upload.
pub const MULTIPART_THRESHOLD: u64 = 16 * 1024 * 1024;
/// Part size of multipart uploads.
const PART_SIZE: usize = 8 * 1024 * 1024;
/// Read buffer size when streaming a file into a multipart upload.
const READ_CHUNK: usize = 1024 * 1024;
/// Parts of one multipart upload in flight at once.
const PARTS_IN_FLIGHT: usize = 4;
/// Deletes in flight at once.
const DELETES_IN_FLIGHT: usize = 16;

/// A failed transfer, naming the object or local file involved.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// An object store operation failed.
    #[error("{op} {location}: {source}")]
    Store {
        /// The operation (put, get, copy, delete, list, ...).
        op: &'static str,
        /// The object (for copy: the destination).
        location: Path,
        /// The object_store error.
        source: object_store::Error,
    },
    /// A local file operation failed.
    #[error("{op} {}: {source}", path.display())]
    Local {
        /// The operation (read, write, create, ...).
        op: &'static str,
        /// The local file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// An object is not the JSON document it should be.
    #[error("decode {location}: {source}")]
    Decode {
        /// The object.
        location: Path,
        /// The JSON error.
        source: serde_json::Error,
    },
}

impl TransferError {
    fn store(op: &'static str, location: &Path) -> impl FnOnce(object_store::Error) -> Self {
        let location = location.clone();
        move |source| Self::Store {
            op,
            location,
            source,
        }
    }

    fn local(op: &'static str, path: &LocalPath) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| Self::Local { op, path, source }
    }
}

/// Uploads a local file to `location`, streaming it through a multipart
/// upload when it is larger than [`MULTIPART_THRESHOLD`]. Returns its size.
pub async fn upload_file(
    store: &dyn ObjectStore,
    local: &LocalPath,
    location: &Path,
) -> Result<u64, TransferError> {
    let mut file = tokio::fs::File::open(local)
        .await
        .map_err(TransferError::local("open", local))?;
    let size = file
        .metadata()
        .await
        .map_err(TransferError::local("stat", local))?
        .len();
    if size <= MULTIPART_THRESHOLD {
        let mut data = Vec::with_capacity(size as usize);
        file.read_to_end(&mut data)
            .await
            .map_err(TransferError::local("read", local))?;
        store
            .put(location, PutPayload::from(data))
            .await
            .map_err(TransferError::store("put", location))?;
        return Ok(size);
    }
    let upload = store
        .put_multipart(location)
        .await
        .map_err(TransferError::store("start multipart upload", location))?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let read = match file.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                // Best effort: the read error is the one worth reporting.
                let _ = writer.abort().await;
                return Err(TransferError::local("read", local)(e));
            }
        };
        if let Err(e) = writer.wait_for_capacity(PARTS_IN_FLIGHT).await {
            let _ = writer.abort().await;
            return Err(TransferError::store("upload part", location)(e));
        }
        writer.write(&buf[..read]);
    }
    writer
        .finish()
        .await
        .map_err(TransferError::store("finish multipart upload", location))?;
    Ok(size)
}

/// Downloads `location` into the local file `local` (created or truncated),
/// streaming. Returns the number of bytes written.
pub async fn download_file(
    store: &dyn ObjectStore,
    location: &Path,
    local: &LocalPath,
) -> Result<u64, TransferError> {
    let result = store
        .get(location)
        .await
        .map_err(TransferError::store("get", location))?;
    let mut file = tokio::fs::File::create(local)
        .await
        .map_err(TransferError::local("create", local))?;
    let mut stream = result.into_stream();
    let mut written = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(TransferError::store("get", location))?;
        file.write_all(&chunk)
            .await
            .map_err(TransferError::local("write", local))?;
        written += chunk.len() as u64;
    }
    file.flush()
        .await
        .map_err(TransferError::local("write", local))?;
    Ok(written)
}

/// Writes `value` as JSON to `location`.
pub async fn put_json<T: Serialize + ?Sized>(
    store: &dyn ObjectStore,
    location: &Path,
    value: &T,
) -> Result<(), TransferError> {
    let data = serde_json::to_vec_pretty(value).map_err(|source| TransferError::Decode {
        location: location.clone(),
        source,
    })?;
    put_bytes(store, location, Bytes::from(data)).await
}

/// Writes `data` to `location`.
pub async fn put_bytes(
    store: &dyn ObjectStore,
    location: &Path,
    data: Bytes,
) -> Result<(), TransferError> {
    store
        .put(location, PutPayload::from(data))
        .await
        .map_err(TransferError::store("put", location))?;
    Ok(())
}

/// Writes `data` to `location` only if no object is there yet: an existing
/// object is an error ([`TransferError::Store`] with `AlreadyExists`).
pub async fn put_bytes_create(
    store: &dyn ObjectStore,
    location: &Path,
    data: Bytes,
) -> Result<(), TransferError> {
    store
        .put_opts(
            location,
            PutPayload::from(data),
            object_store::PutMode::Create.into(),
        )
        .await
        .map_err(TransferError::store("create", location))?;
    Ok(())
}

/// Reads the JSON document at `location`; `None` if there is no object.
pub async fn get_json<T: DeserializeOwned>(
    store: &dyn ObjectStore,
    location: &Path,
) -> Result<Option<T>, TransferError> {
    let data = match store.get(location).await {
        Ok(result) => result
            .bytes()
            .await
            .map_err(TransferError::store("get", location))?,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(TransferError::store("get", location)(e)),
    };
    serde_json::from_slice(&data)
        .map(Some)
        .map_err(|source| TransferError::Decode {
            location: location.clone(),
            source,
        })
}

/// Whether an object exists at `location`.
pub async fn exists(store: &dyn ObjectStore, location: &Path) -> Result<bool, TransferError> {
    match store.head(location).await {
        Ok(_) => Ok(true),
        Err(object_store::Error::NotFound { .. }) => Ok(false),
        Err(e) => Err(TransferError::store("head", location)(e)),
    }
}

/// Copies `from` to `to` server-side.
pub async fn copy(store: &dyn ObjectStore, from: &Path, to: &Path) -> Result<(), TransferError> {
    store
        .copy(from, to)
        .await
        .map_err(TransferError::store("copy", to))
}

/// Every object under `prefix` (recursively), in no particular order.
pub async fn list(
    store: &dyn ObjectStore,
    prefix: &Path,
) -> Result<Vec<ObjectMeta>, TransferError> {
    store
        .list(Some(prefix))
        .try_collect()
        .await
        .map_err(TransferError::store("list", prefix))
}

/// Deletes the given objects, a few at a time; objects already gone are not
/// an error.
pub async fn delete_all(
    store: &dyn ObjectStore,
    locations: Vec<Path>,
) -> Result<(), TransferError> {
    futures::stream::iter(locations)
        .map(|location| async move {
            match store.delete(&location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(TransferError::store("delete", &location)(e)),
            }
        })
        .buffer_unordered(DELETES_IN_FLIGHT)
        .try_collect()
        .await
}

/// Removes a local directory tree; a missing directory is not an error.
pub fn remove_dir_if_present(dir: &LocalPath) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use object_store::memory::InMemory;

    use super::*;

    #[tokio::test]
    async fn large_files_round_trip_through_multipart_upload() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("big");
        let data: Vec<u8> = (0..MULTIPART_THRESHOLD + 3 * 1024 * 1024 + 17)
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&src, &data).unwrap();
        let store = InMemory::new();
        let location = Path::from("x/big");
        assert_eq!(
            upload_file(&store, &src, &location).await.unwrap(),
            data.len() as u64
        );
        let dst = tmp.path().join("copy");
        assert_eq!(
            download_file(&store, &location, &dst).await.unwrap(),
            data.len() as u64
        );
        assert_eq!(std::fs::read(dst).unwrap(), data);
    }

    #[tokio::test]
    async fn missing_json_is_none_and_errors_name_the_object() {
        let store = InMemory::new();
        let location = Path::from("a/b.json");
        assert_eq!(get_json::<u32>(&store, &location).await.unwrap(), None);
        put_bytes(&store, &location, Bytes::from_static(b"{"))
            .await
            .unwrap();
        let err = get_json::<u32>(&store, &location).await.unwrap_err();
        assert!(err.to_string().contains("a/b.json"), "{err}");
        let err = download_file(&store, &Path::from("nope"), &std::env::temp_dir().join("x"))
            .await
            .unwrap_err();
        assert!(err.to_string().starts_with("get nope"), "{err}");
    }
}
