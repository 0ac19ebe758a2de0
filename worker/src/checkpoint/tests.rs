//! Tests of checkpoint, restore, savepoint and retention together, with
//! RocksDB in temp dirs and object_store in memory or on local disk.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path as LocalPath;
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::memory::InMemory;
use object_store::path::Path;
use rocksdb::{DB, Options};

use crate::checkpoint::evidence::{CommitToken, Evidence, GroupOffset, GroupOffsets};
use crate::checkpoint::layout::JobLayout;
use crate::checkpoint::manifest::{SourceOffset, TaskManifest};
use crate::checkpoint::restore::{RestoreError, RestoreSource, RestoredFrom, restore_task};
use crate::checkpoint::retention::collect_garbage;
use crate::checkpoint::savepoint;
use crate::checkpoint::storage::open_store;
use crate::checkpoint::transfer;
use crate::checkpoint::upload::{
    CheckpointRequest, TaskCheckpointer, mark_committed, next_checkpoint_id,
};

type State = BTreeMap<Vec<u8>, Vec<u8>>;

fn open_db(dir: &LocalPath) -> DB {
    let mut options = Options::default();
    options.create_if_missing(true);
    // Deterministic SST files: only explicit flushes and compactions.
    options.set_disable_auto_compactions(true);
    DB::open(&options, dir).unwrap()
}

fn write(db: &DB, task: u32, keys: std::ops::Range<u32>, tag: &str) {
    for k in keys {
        db.put(
            format!("t{task}-key-{k:06}"),
            format!("{tag}-{k}-{}", "v".repeat(64)),
        )
        .unwrap();
    }
}

fn read_all(db: &DB) -> State {
    db.iterator(rocksdb::IteratorMode::Start)
        .map(|kv| {
            let (k, v) = kv.unwrap();
            (k.to_vec(), v.to_vec())
        })
        .collect()
}

fn live_ssts(db: &DB) -> BTreeMap<String, u64> {
    db.live_files()
        .unwrap()
        .into_iter()
        .map(|f| (f.name.trim_start_matches('/').to_owned(), f.size as u64))
        .collect()
}

/// A group without committed offsets.
fn no_offsets() -> GroupOffsets {
    GroupOffsets::new()
}

/// A group whose offset of partition `partition` of `in` is `offset` with
/// `metadata`.
fn group_at(partition: i32, offset: i64, metadata: String) -> GroupOffsets {
    [(
        ("in".to_owned(), partition),
        GroupOffset { offset, metadata },
    )]
    .into_iter()
    .collect()
}

fn layout() -> JobLayout {
    JobLayout::new(&Path::from("prefix"), "ns", "job")
}

fn request(checkpoint_id: u64, task: u32, offset: i64) -> CheckpointRequest {
    CheckpointRequest {
        checkpoint_id,
        generation: 1,
        offsets: vec![SourceOffset {
            topic: "in".into(),
            partition: task as i32,
            offset,
        }],
        engine: serde_json::json!({ "watermark": offset }),
        origin: "latest".into(),
        steps: Vec::new(),
        source_partitions: 8,
    }
}

async fn count_objects(store: &dyn ObjectStore, prefix: &Path) -> (usize, u64) {
    let objects = transfer::list(store, prefix).await.unwrap();
    (objects.len(), objects.iter().map(|o| o.size).sum())
}

async fn restore_state(
    store: &dyn ObjectStore,
    layout: &JobLayout,
    task: u32,
    source: &RestoreSource,
    dir: &LocalPath,
) -> (TaskManifest, RestoredFrom, State) {
    let restored = restore_task(store, layout, task, source, 1, &no_offsets(), dir)
        .await
        .unwrap()
        .expect("something to restore");
    let db = open_db(dir);
    (restored.manifest, restored.from, read_all(&db))
}

#[tokio::test]
async fn round_trip_restores_every_key() {
    let tmp = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let layout = layout();
    let db = open_db(&tmp.path().join("db"));
    write(&db, 0, 0..5000, "a");
    db.delete("t0-key-000007").unwrap();
    let mut checkpointer =
        TaskCheckpointer::new(store.clone(), layout.clone(), 0, tmp.path().join("staging"));
    let (manifest, stats) = checkpointer
        .checkpoint(&db, request(1, 0, 5000))
        .await
        .unwrap();
    assert_eq!(stats.files_reused, 0);
    assert!(stats.shared_files_uploaded >= 1);
    assert_eq!(stats.state_bytes, manifest.state_size());
    mark_committed(store.as_ref(), &layout, 1, 0).await.unwrap();

    let expected = read_all(&db);
    assert_eq!(expected.len(), 4999);
    let restore_dir = tmp.path().join("restored");
    let (restored, from, state) = restore_state(
        store.as_ref(),
        &layout,
        0,
        &RestoreSource::Latest,
        &restore_dir,
    )
    .await;
    assert_eq!(from, RestoredFrom::Checkpoint(1));
    assert_eq!(restored, manifest);
    assert_eq!(restored.engine, serde_json::json!({ "watermark": 5000 }));
    assert_eq!(state, expected);
    assert!(!tmp.path().join("staging/checkpoint-1").exists());
}

#[tokio::test]
async fn second_checkpoint_uploads_only_new_ssts() {
    let tmp = tempfile::tempdir().unwrap();
    let url = url::Url::from_directory_path(tmp.path().join("store")).unwrap();
    let (store, base) = open_store(url.as_str()).unwrap();
    let layout = JobLayout::new(&base, "ns", "job");
    let shared = layout.shared_dir(0);
    let db = open_db(&tmp.path().join("db"));
    let mut checkpointer =
        TaskCheckpointer::new(store.clone(), layout.clone(), 0, tmp.path().join("staging"));

    write(&db, 0, 0..3000, "a");
    let (first, stats1) = checkpointer
        .checkpoint(&db, request(1, 0, 3000))
        .await
        .unwrap();
    let ssts1 = live_ssts(&db);
    assert_eq!(stats1.shared_files_uploaded, ssts1.len());
    assert_eq!(stats1.shared_bytes_uploaded, ssts1.values().sum::<u64>());
    assert_eq!(
        count_objects(store.as_ref(), &shared).await,
        (ssts1.len(), ssts1.values().sum::<u64>())
    );

    write(&db, 0, 3000..4000, "b");
    db.flush().unwrap();
    let ssts2 = live_ssts(&db);
    let new: BTreeMap<_, _> = ssts2
        .iter()
        .filter(|(name, _)| !ssts1.contains_key(*name))
        .collect();
    assert_eq!(new.len(), 1, "one flush, one new SST");
    let new_bytes: u64 = new.values().copied().sum();

    let (second, stats2) = checkpointer
        .checkpoint(&db, request(2, 0, 4000))
        .await
        .unwrap();
    assert_eq!(stats2.shared_files_uploaded, 1);
    assert_eq!(stats2.shared_bytes_uploaded, new_bytes);
    assert_eq!(stats2.files_reused, ssts1.len());
    let metadata_files = second.files.len() - ssts2.len();
    assert_eq!(stats2.files_uploaded, 1 + metadata_files);
    assert_eq!(
        count_objects(store.as_ref(), &shared).await,
        (ssts2.len(), ssts2.values().sum::<u64>())
    );
    // Unchanged SSTs are the very objects of the first checkpoint.
    for file in first.files.iter().filter(|f| f.name.ends_with(".sst")) {
        assert!(second.files.contains(file), "{file:?} reused");
    }

    // Restored, reopened and seeded: nothing new to upload.
    let restore_dir = tmp.path().join("restored");
    mark_committed(store.as_ref(), &layout, 2, 0).await.unwrap();
    let restored = restore_task(
        store.as_ref(),
        &layout,
        0,
        &RestoreSource::Latest,
        1,
        &no_offsets(),
        &restore_dir,
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(restored.files_downloaded, second.files.len());
    assert_eq!(restored.bytes_downloaded, second.state_size());
    let db2 = open_db(&restore_dir);
    let mut next = TaskCheckpointer::new(store.clone(), layout.clone(), 0, tmp.path().join("s2"));
    assert_ne!(next.incarnation(), checkpointer.incarnation());
    next.adopt(&restored.manifest).await.unwrap();
    let (_, stats3) = next.checkpoint(&db2, request(3, 0, 4000)).await.unwrap();
    assert_eq!(stats3.shared_files_uploaded, 0);
    assert_eq!(stats3.files_reused, ssts2.len());
}

#[tokio::test]
async fn restore_picks_newest_committed_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let layout = layout();
    let db = open_db(&tmp.path().join("db"));
    let mut checkpointer =
        TaskCheckpointer::new(store.clone(), layout.clone(), 2, tmp.path().join("staging"));
    let mut states = Vec::new();
    for (id, tag) in [(1, "a"), (2, "b"), (3, "c")] {
        write(&db, 2, 0..100, tag);
        checkpointer
            .checkpoint(&db, request(id, 2, id as i64 * 100))
            .await
            .unwrap();
        states.push(read_all(&db));
        if id < 3 {
            mark_committed(store.as_ref(), &layout, id, 2)
                .await
                .unwrap();
        }
    }
    // Nothing restorable for another task, or with `none`.
    let dir = tmp.path().join("r");
    let empty = no_offsets();
    let none = restore_task(
        store.as_ref(),
        &layout,
        5,
        &RestoreSource::Latest,
        1,
        &empty,
        &dir,
    );
    assert!(none.await.unwrap().is_none());
    let none = restore_task(
        store.as_ref(),
        &layout,
        2,
        &RestoreSource::None,
        1,
        &empty,
        &dir,
    );
    assert!(none.await.unwrap().is_none());
    assert!(!dir.exists());

    // Checkpoint 3 has no marker: checkpoint 2 wins.
    let (_, from, state) =
        restore_state(store.as_ref(), &layout, 2, &RestoreSource::Latest, &dir).await;
    assert_eq!(from, RestoredFrom::Checkpoint(2));
    assert_eq!(state, states[1]);

    // The group's offsets carry checkpoint 3's token: it committed, marker
    // lost.
    let token = CommitToken {
        checkpoint_id: 3,
        incarnation: checkpointer.incarnation().to_owned(),
    };
    let restored = restore_task(
        store.as_ref(),
        &layout,
        2,
        &RestoreSource::Latest,
        1,
        &group_at(2, 300, token.encode()),
        &dir,
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(restored.from, RestoredFrom::Checkpoint(3));
    assert_eq!(restored.evidence, Some(Evidence::Token));
    assert_eq!(read_all(&open_db(&dir)), states[2]);

    // Equal offsets without the token prove nothing (an aborted
    // transaction can leave the group at the same offsets), nor do other
    // offsets with it.
    for group in [
        group_at(2, 300, String::new()),
        group_at(2, 250, token.encode()),
    ] {
        let restored = restore_task(
            store.as_ref(),
            &layout,
            2,
            &RestoreSource::Latest,
            1,
            &group,
            &dir,
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(restored.from, RestoredFrom::Checkpoint(2));
    }

    assert_eq!(
        next_checkpoint_id(store.as_ref(), &layout).await.unwrap(),
        4
    );
}

#[tokio::test]
async fn savepoint_stands_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let layout = layout();
    let mut expected = Vec::new();
    for task in 0..2 {
        let db = open_db(&tmp.path().join(format!("db{task}")));
        write(&db, task, 0..2000, "sp");
        let mut checkpointer = TaskCheckpointer::new(
            store.clone(),
            layout.clone(),
            task,
            tmp.path().join("staging"),
        );
        checkpointer
            .checkpoint(&db, request(7, task, 2000))
            .await
            .unwrap();
        mark_committed(store.as_ref(), &layout, 7, task)
            .await
            .unwrap();
        expected.push(read_all(&db));
    }
    let sp = RestoreSource::Savepoint("sp-1".into());

    let stats = savepoint::copy_task(store.as_ref(), &layout, 7, 0, "sp-1")
        .await
        .unwrap();
    assert!(!stats.already_done && stats.files_copied > 0);
    // Task 1 not copied yet: not complete, not restorable.
    assert_eq!(
        savepoint::complete(store.as_ref(), &layout, "sp-1", 2)
            .await
            .unwrap(),
        None
    );
    let err = restore_task(
        store.as_ref(),
        &layout,
        0,
        &sp,
        1,
        &no_offsets(),
        &tmp.path().join("x"),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, RestoreError::SavepointNotFound { .. }),
        "{err}"
    );

    savepoint::copy_task(store.as_ref(), &layout, 7, 1, "sp-1")
        .await
        .unwrap();
    let again = savepoint::copy_task(store.as_ref(), &layout, 7, 1, "sp-1")
        .await
        .unwrap();
    assert!(again.already_done, "retry is a no-op");
    let metadata = savepoint::complete(store.as_ref(), &layout, "sp-1", 2)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(metadata.tasks.len(), 2);
    assert!(metadata.tasks.iter().all(|t| t.checkpoint_id == 7));

    // Delete every checkpoint and shared file: the savepoint still restores.
    for dir in [
        layout.checkpoints_dir(),
        layout.shared_dir(0),
        layout.shared_dir(1),
    ] {
        let all = transfer::list(store.as_ref(), &dir).await.unwrap();
        transfer::delete_all(
            store.as_ref(),
            all.into_iter().map(|o| o.location).collect(),
        )
        .await
        .unwrap();
    }
    let root = transfer::list(store.as_ref(), layout.root()).await.unwrap();
    assert!(
        root.iter()
            .all(|o| o.location.prefix_matches(&layout.savepoint_dir("sp-1"))),
        "only the savepoint is left"
    );
    for task in 0..2 {
        let dir = tmp.path().join(format!("restored{task}"));
        let (manifest, from, state) = restore_state(store.as_ref(), &layout, task, &sp, &dir).await;
        assert_eq!(from, RestoredFrom::Savepoint("sp-1".into()));
        assert_eq!(manifest.offsets[0].offset, 2000);
        assert_eq!(state, expected[task as usize]);

        // Adopting the savepoint copies its SSTs server-side into the task's
        // shared directory before processing resumes, so the first
        // checkpoint after it uploads nothing it already has, and does not
        // depend on the savepoint, which may be deleted.
        let db = open_db(&dir);
        let mut next =
            TaskCheckpointer::new(store.clone(), layout.clone(), task, tmp.path().join("s2"));
        let copied = next.adopt(&manifest).await.unwrap();
        assert!(copied > 0);
        let (checkpoint, stats) = next.checkpoint(&db, request(8, task, 2000)).await.unwrap();
        assert_eq!(stats.shared_files_uploaded, 0);
        assert_eq!(stats.files_reused, live_ssts(&db).len());
        let shared = layout.shared_dir(task);
        assert!(
            checkpoint
                .files
                .iter()
                .filter(|f| f.name.ends_with(".sst"))
                .all(|f| layout.resolve(&f.path).unwrap().prefix_matches(&shared)),
            "the checkpoint references the savepoint's files"
        );
    }

    // Complete savepoints are immutable.
    let err = savepoint::copy_task(store.as_ref(), &layout, 8, 0, "sp-1")
        .await
        .unwrap_err();
    assert!(
        matches!(err, savepoint::SavepointError::AlreadyComplete { .. }),
        "{err}"
    );
    let deleted = savepoint::delete(store.as_ref(), &layout, "sp-1")
        .await
        .unwrap();
    assert!(deleted > 0);
    assert_eq!(
        count_objects(store.as_ref(), &layout.savepoint_dir("sp-1")).await,
        (0, 0)
    );
}

#[tokio::test]
async fn restore_at_a_different_parallelism() {
    const TASKS: u32 = 6;
    let tmp = tempfile::tempdir().unwrap();
    let url = "memory://storage-tests-rescale/ckpt";
    let mut expected = BTreeMap::new();
    // Two workers: worker i owns tasks t with t % 2 == i.
    for worker in 0..2 {
        let (store, base) = open_store(url).unwrap();
        let layout = JobLayout::new(&base, "ns", "job");
        let checkpoint_id = next_checkpoint_id(store.as_ref(), &layout).await.unwrap();
        for task in (0..TASKS).filter(|t| t % 2 == worker) {
            let db = open_db(&tmp.path().join(format!("w{worker}/t{task}")));
            write(&db, task, 0..(500 + task * 100), "p2");
            let mut checkpointer = TaskCheckpointer::new(
                store.clone(),
                layout.clone(),
                task,
                tmp.path().join(format!("w{worker}/staging{task}")),
            );
            checkpointer
                .checkpoint(&db, request(checkpoint_id, task, 10))
                .await
                .unwrap();
            mark_committed(store.as_ref(), &layout, checkpoint_id, task)
                .await
                .unwrap();
            savepoint::copy_task(store.as_ref(), &layout, checkpoint_id, task, "rescale")
                .await
                .unwrap();
            expected.insert(task, read_all(&db));
        }
        let done = savepoint::complete(store.as_ref(), &layout, "rescale", TASKS)
            .await
            .unwrap();
        assert_eq!(done.is_some(), worker == 1, "the last worker completes it");
    }
    // Three workers restore their tasks, from the savepoint and from the
    // latest checkpoints.
    for source in [
        RestoreSource::Savepoint("rescale".into()),
        RestoreSource::Latest,
    ] {
        let mut restored = BTreeMap::new();
        for worker in 0..3 {
            let (store, base) = open_store(url).unwrap();
            let layout = JobLayout::new(&base, "ns", "job");
            for task in (0..TASKS).filter(|t| t % 3 == worker) {
                let dir = tmp.path().join(format!("p3/{source:?}/w{worker}/t{task}"));
                let (manifest, _, state) =
                    restore_state(store.as_ref(), &layout, task, &source, &dir).await;
                assert_eq!(manifest.task, task);
                restored.insert(task, state);
            }
        }
        assert_eq!(restored, expected, "{source:?}");
    }
}

#[tokio::test]
async fn retention_deletes_only_unreferenced_files() {
    let tmp = tempfile::tempdir().unwrap();
    let url = url::Url::from_directory_path(tmp.path().join("store")).unwrap();
    let (store, base) = open_store(url.as_str()).unwrap();
    let layout = JobLayout::new(&base, "ns", "job");
    let db = open_db(&tmp.path().join("db"));
    let mut checkpointer =
        TaskCheckpointer::new(store.clone(), layout.clone(), 0, tmp.path().join("staging"));
    let mut manifests = BTreeMap::new();
    for id in 1..=5u64 {
        write(&db, 0, (id as u32 * 100)..(id as u32 * 100 + 300), "r");
        if id == 3 {
            // Compaction replaces every SST: those of 1 and 2 become garbage.
            db.compact_range::<&[u8], &[u8]>(None, None);
        }
        let (manifest, _) = checkpointer
            .checkpoint(&db, request(id, 0, id as i64))
            .await
            .unwrap();
        // Checkpoint 5 is in flight: not committed.
        if id < 5 {
            mark_committed(store.as_ref(), &layout, id, 0)
                .await
                .unwrap();
        }
        manifests.insert(id, manifest);
    }
    // Another task's files are not this task's business.
    let other = layout.shared_file(1, "x", "000001.sst");
    transfer::put_bytes(store.as_ref(), &other, bytes::Bytes::from_static(b"x"))
        .await
        .unwrap();

    let referenced = |ids: &[u64]| -> BTreeSet<Path> {
        ids.iter()
            .flat_map(|id| manifests[id].files.iter())
            .filter(|f| f.name.ends_with(".sst"))
            .map(|f| layout.resolve(&f.path).unwrap())
            .collect()
    };
    let kept = referenced(&[3, 4, 5]);
    let dropped: BTreeSet<Path> = referenced(&[1, 2]).difference(&kept).cloned().collect();
    assert!(!dropped.is_empty(), "compaction made files unreferenced");

    let stats = collect_garbage(store.as_ref(), &layout, 0, 2, &BTreeSet::new())
        .await
        .unwrap();
    assert_eq!(stats.checkpoints_deleted, 2);
    assert_eq!(stats.shared_files_deleted, dropped.len());

    let shared: BTreeSet<Path> = transfer::list(store.as_ref(), &layout.shared_dir(0))
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.location)
        .collect();
    assert_eq!(shared, kept);
    for id in [1, 2] {
        assert_eq!(
            count_objects(store.as_ref(), &layout.checkpoint_dir(id)).await,
            (0, 0),
            "checkpoint {id} deleted"
        );
    }
    for id in [3, 4, 5] {
        assert!(
            transfer::exists(store.as_ref(), &layout.checkpoint_manifest(id, 0))
                .await
                .unwrap()
        );
    }
    assert!(transfer::exists(store.as_ref(), &other).await.unwrap());

    // Still restorable, and a second run finds nothing to do.
    let dir = tmp.path().join("restored");
    let (_, from, state) =
        restore_state(store.as_ref(), &layout, 0, &RestoreSource::Latest, &dir).await;
    assert_eq!(from, RestoredFrom::Checkpoint(4));
    assert_eq!(state.len(), 600, "keys 100..700");
    let again = collect_garbage(store.as_ref(), &layout, 0, 2, &BTreeSet::new())
        .await
        .unwrap();
    assert_eq!(again.checkpoints_deleted + again.shared_files_deleted, 0);
}

#[tokio::test]
async fn two_owners_of_a_task_never_overwrite_each_others_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let layout = layout();
    let mut owners = Vec::new();
    for owner in ["zombie", "successor"] {
        let db = open_db(&tmp.path().join(owner));
        write(&db, 0, 0..50, owner);
        let checkpointer = TaskCheckpointer::new(
            store.clone(),
            layout.clone(),
            0,
            tmp.path().join(format!("s-{owner}")),
        );
        owners.push((db, checkpointer));
    }
    let (db, zombie) = &mut owners[0];
    let (first, _) = zombie.checkpoint(db, request(5, 0, 10)).await.unwrap();
    let (db, successor) = &mut owners[1];
    let err = successor
        .checkpoint(db, request(5, 0, 20))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("create"), "{err}");
    // The first manifest and every file it lists are intact.
    let manifest: TaskManifest =
        transfer::get_json(store.as_ref(), &layout.checkpoint_manifest(5, 0))
            .await
            .unwrap()
            .unwrap();
    assert_eq!(manifest, first);
    for file in &manifest.files {
        let location = layout.resolve(&file.path).unwrap();
        let meta = object_store::ObjectStoreExt::head(store.as_ref(), &location)
            .await
            .unwrap();
        assert_eq!(meta.size, file.size, "{location} was overwritten");
    }
}

#[tokio::test]
async fn purging_keeps_what_the_oldest_complete_savepoint_restores_from() {
    let tmp = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let layout = layout();
    let db = open_db(&tmp.path().join("db"));
    let mut checkpointer =
        TaskCheckpointer::new(store.clone(), layout.clone(), 0, tmp.path().join("staging"));
    // Savepoints at offsets 500 and 300 (complete), and 100 (incomplete).
    for (id, offset, complete) in [(1, 500, true), (2, 300, true), (3, 100, false)] {
        write(&db, 0, 0..10, &format!("v{id}"));
        checkpointer
            .checkpoint(&db, request(id, 0, offset))
            .await
            .unwrap();
        mark_committed(store.as_ref(), &layout, id, 0)
            .await
            .unwrap();
        let name = format!("sp-{id}");
        savepoint::copy_task(store.as_ref(), &layout, id, 0, &name)
            .await
            .unwrap();
        if complete {
            savepoint::complete(store.as_ref(), &layout, &name, 1)
                .await
                .unwrap()
                .unwrap();
        }
    }
    let lowest = savepoint::lowest_offsets(store.as_ref(), &layout, &[0, 1], "in")
        .await
        .unwrap();
    assert_eq!(lowest, [(0, 300)].into_iter().collect());
}
