//! Fencing: `fence.json` holds the generation allowed to commit. The
//! operator bumps it before starting the workers of a rescale; a worker
//! checks it before every commit and stops if its own generation is older.

use object_store::ObjectStore;
use serde::{Deserialize, Serialize};

use crate::checkpoint::layout::JobLayout;
use crate::checkpoint::transfer::{self, TransferError};

/// The content of `fence.json`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fence {
    /// The current generation: workers of older generations must not commit.
    pub generation: u64,
}

/// A refused commit, or a fence that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// A newer generation owns the job: this worker must stop.
    #[error("fenced: this worker is generation {mine}, the job is at generation {current}")]
    Stale {
        /// This worker's generation.
        mine: u64,
        /// The generation in `fence.json`.
        current: u64,
    },
    /// `fence.json` could not be read or written.
    #[error("fence: {0}")]
    Transfer(#[from] TransferError),
}

/// Whether a worker of generation `mine` may commit under `fence` (no fence:
/// yes). Pure.
pub fn check_generation(mine: u64, fence: Option<Fence>) -> Result<(), FenceError> {
    match fence {
        Some(Fence { generation }) if generation > mine => Err(FenceError::Stale {
            mine,
            current: generation,
        }),
        _ => Ok(()),
    }
}

/// Reads `fence.json`; `None` if absent.
pub async fn read_fence(
    store: &dyn ObjectStore,
    layout: &JobLayout,
) -> Result<Option<Fence>, FenceError> {
    Ok(transfer::get_json(store, &layout.fence()).await?)
}

/// Writes `fence.json` with `generation` (the operator, before new workers
/// start).
pub async fn write_fence(
    store: &dyn ObjectStore,
    layout: &JobLayout,
    generation: u64,
) -> Result<(), FenceError> {
    Ok(transfer::put_json(store, &layout.fence(), &Fence { generation }).await?)
}

/// Refuses with [`FenceError::Stale`] if `fence.json` names a generation
/// newer than `mine`. Call it before committing.
pub async fn check_fence(
    store: &dyn ObjectStore,
    layout: &JobLayout,
    mine: u64,
) -> Result<(), FenceError> {
    check_generation(mine, read_fence(store, layout).await?)
}

#[cfg(test)]
mod tests {
    use object_store::memory::InMemory;
    use object_store::path::Path;

    use super::*;

    #[test]
    fn only_newer_generations_fence() {
        assert!(check_generation(3, None).is_ok());
        assert!(check_generation(3, Some(Fence { generation: 2 })).is_ok());
        assert!(check_generation(3, Some(Fence { generation: 3 })).is_ok());
        assert!(matches!(
            check_generation(3, Some(Fence { generation: 4 })),
            Err(FenceError::Stale {
                mine: 3,
                current: 4
            })
        ));
    }

    #[tokio::test]
    async fn stale_generation_is_refused() {
        let store = InMemory::new();
        let layout = JobLayout::new(&Path::ROOT, "ns", "job");
        assert_eq!(read_fence(&store, &layout).await.unwrap(), None);
        check_fence(&store, &layout, 1).await.unwrap();
        write_fence(&store, &layout, 2).await.unwrap();
        assert_eq!(
            read_fence(&store, &layout).await.unwrap(),
            Some(Fence { generation: 2 })
        );
        let err = check_fence(&store, &layout, 1).await.unwrap_err();
        assert!(matches!(
            err,
            FenceError::Stale {
                mine: 1,
                current: 2
            }
        ));
        assert_eq!(
            err.to_string(),
            "fenced: this worker is generation 1, the job is at generation 2"
        );
        check_fence(&store, &layout, 2).await.unwrap();
        check_fence(&store, &layout, 3).await.unwrap();
    }
}
