//! Checkpoint and restore of a large RocksDB through a local (`file://`)
//! object store: full upload, incremental upload after 1% new data, and
//! restore (download + open). Prints one line per phase.
//!
//! `cargo bench -p weir-worker --bench checkpoint` (release build). The state
//! size is `WEIR_BENCH_STATE_MB` (default 1024); the work directory is
//! `WEIR_BENCH_DIR` (default: a temporary directory).

use std::sync::Arc;
use std::time::Instant;

use rand::RngCore;
use rocksdb::{DB, Options, WriteBatch, WriteOptions};
use weir_worker::checkpoint::evidence::GroupOffsets;
use weir_worker::checkpoint::layout::JobLayout;
use weir_worker::checkpoint::restore::{RestoreSource, restore_task};
use weir_worker::checkpoint::storage::open_store;
use weir_worker::checkpoint::upload::{CheckpointRequest, TaskCheckpointer, mark_committed};

const VALUE_BYTES: usize = 1024;

fn open_db(dir: &std::path::Path) -> DB {
    let mut options = Options::default();
    options.create_if_missing(true);
    options.set_max_background_jobs(2);
    DB::open(&options, dir).expect("open RocksDB")
}

/// Writes `count` keys from `first` with incompressible values, without WAL.
fn fill(db: &DB, first: u64, count: u64) {
    let mut rng = rand::rng();
    let mut value = vec![0u8; VALUE_BYTES];
    let mut no_wal = WriteOptions::default();
    no_wal.disable_wal(true);
    let mut batch = WriteBatch::default();
    for k in first..first + count {
        rng.fill_bytes(&mut value);
        batch.put(k.to_be_bytes(), &value);
        if batch.len() == 1000 {
            db.write_opt(std::mem::take(&mut batch), &no_wal)
                .expect("write");
        }
    }
    db.write_opt(batch, &no_wal).expect("write");
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn request(checkpoint_id: u64) -> CheckpointRequest {
    CheckpointRequest {
        checkpoint_id,
        generation: 1,
        offsets: Vec::new(),
        engine: serde_json::Value::Null,
        origin: "latest".into(),
        steps: Vec::new(),
        source_partitions: 1,
    }
}

#[tokio::main]
async fn main() {
    let state_mb: u64 = std::env::var("WEIR_BENCH_STATE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let tmp = match std::env::var_os("WEIR_BENCH_DIR") {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
    .expect("work directory");
    let url = url::Url::from_directory_path(tmp.path().join("store")).expect("store URL");
    let (store, base) = open_store(url.as_str()).expect("open store");
    let layout = JobLayout::new(&base, "bench", "job");
    let keys = state_mb * 1024 * 1024 / VALUE_BYTES as u64;

    let db = open_db(&tmp.path().join("db"));
    let started = Instant::now();
    fill(&db, 0, keys);
    db.flush().expect("flush");
    println!(
        "fill: {keys} keys, {:.0} MiB of values in {:.1} s",
        mb(keys * VALUE_BYTES as u64),
        started.elapsed().as_secs_f64()
    );

    let mut checkpointer = TaskCheckpointer::new(
        Arc::clone(&store),
        layout.clone(),
        0,
        tmp.path().join("staging"),
    );
    let (_, full) = checkpointer
        .checkpoint(&db, request(1))
        .await
        .expect("checkpoint 1");
    println!(
        "full checkpoint: {:.0} MiB state, {} files uploaded ({:.0} MiB) in {:.2} s = {:.0} MiB/s",
        mb(full.state_bytes),
        full.files_uploaded,
        mb(full.bytes_uploaded),
        full.duration.as_secs_f64(),
        mb(full.bytes_uploaded) / full.duration.as_secs_f64()
    );

    fill(&db, keys, keys / 100);
    let (_, incremental) = checkpointer
        .checkpoint(&db, request(2))
        .await
        .expect("checkpoint 2");
    println!(
        "incremental checkpoint (+1% keys): {} files uploaded ({:.1} MiB, {} SSTs), {} reused, in {:.2} s",
        incremental.files_uploaded,
        mb(incremental.bytes_uploaded),
        incremental.shared_files_uploaded,
        incremental.files_reused,
        incremental.duration.as_secs_f64()
    );
    mark_committed(store.as_ref(), &layout, 2, 0)
        .await
        .expect("mark committed");
    drop(db);

    let dir = tmp.path().join("restored");
    let restored = restore_task(
        store.as_ref(),
        &layout,
        0,
        &RestoreSource::Latest,
        1,
        &GroupOffsets::new(),
        &dir,
    )
    .await
    .expect("restore")
    .expect("a committed checkpoint");
    let opened = Instant::now();
    let db = open_db(&dir);
    let open_time = opened.elapsed();
    let last = (keys + keys / 100 - 1).to_be_bytes();
    assert!(db.get(last).expect("read").is_some(), "last key restored");
    println!(
        "restore: {} files, {:.0} MiB downloaded in {:.2} s = {:.0} MiB/s; RocksDB open {:.3} s; total {:.2} s",
        restored.files_downloaded,
        mb(restored.bytes_downloaded),
        restored.duration.as_secs_f64(),
        mb(restored.bytes_downloaded) / restored.duration.as_secs_f64(),
        open_time.as_secs_f64(),
        (restored.duration + open_time).as_secs_f64()
    );
}
