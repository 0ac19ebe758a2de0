//! Fakes for the checkpoint protocol: a broker with Kafka's exactly-once
//! semantics (the ones librdkafka's mock cluster lacks: offsets sent to a
//! transaction are stored with their metadata, aborted output is never
//! visible, a fenced producer cannot commit), and an object store that fails
//! at a chosen operation.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures::stream::BoxStream;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use weir_worker::checkpoint::coordinator::{CommitError, CommittedOffsets, OutputCommitter};
use weir_worker::checkpoint::evidence::{CommitToken, GroupOffset, GroupOffsets};
use weir_worker::checkpoint::manifest::SourceOffset;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What the fake broker holds: per-task producer epochs, the committed
/// output (what a read_committed consumer sees) and the group's offsets.
#[derive(Default)]
pub struct BrokerState {
    epochs: HashMap<u32, u64>,
    /// Committed output records, in commit order.
    pub log: Vec<Vec<u8>>,
    /// The group's committed offsets with their metadata.
    pub group: GroupOffsets,
    /// Tasks fenced since their offsets were last read: a worker must fence
    /// a task before it reads the task's offsets, or the previous owner
    /// could still commit in between.
    fenced_since_read: HashMap<u32, bool>,
}

/// A broker shared by every worker of a test.
#[derive(Clone, Default)]
pub struct Broker(pub Arc<Mutex<BrokerState>>);

impl Broker {
    /// The committed output.
    pub fn log(&self) -> Vec<Vec<u8>> {
        lock(&self.0).log.clone()
    }

    /// The output side of a new worker.
    pub fn output(&self, exactly_once: bool, faults: Faults) -> FakeOutput {
        FakeOutput {
            broker: self.clone(),
            exactly_once,
            epochs: HashMap::new(),
            pending: BTreeMap::new(),
            faults,
        }
    }
}

impl CommittedOffsets for Broker {
    fn committed(&self, partitions: &[(String, i32)]) -> Result<GroupOffsets, CommitError> {
        let mut state = lock(&self.0);
        for (_, partition) in partitions {
            let fenced = state.fenced_since_read.insert(*partition as u32, false);
            assert_eq!(
                fenced,
                Some(true),
                "the offsets of task {partition} were read before the task was fenced"
            );
        }
        Ok(partitions
            .iter()
            .filter_map(|p| state.group.get(p).map(|g| (p.clone(), g.clone())))
            .collect())
    }
}

/// Failures to inject: the n-th matching operation fails (0 = the first).
#[derive(Clone, Default)]
pub struct Faults(pub Arc<Mutex<Vec<Fault>>>);

/// A rescale that happens while a checkpoint uploads: when the first
/// manifest is created, `fence.json` is first set to `generation` (as the
/// operator would write it).
#[derive(Clone, Default)]
pub struct FenceDuringUpload(pub Arc<Mutex<Option<(Path, u64)>>>);

/// One injected failure.
#[derive(Clone, Debug)]
pub struct Fault {
    /// The operation: `put`, `create`, `get`, `copy`, `list`, `commit`,
    /// `flush`.
    pub op: &'static str,
    /// A part of the object path (or the task number, for `commit`).
    pub path_contains: String,
    /// How many matching operations pass before one fails.
    pub skip: usize,
}

impl Faults {
    /// Adds a failure.
    pub fn fail(&self, op: &'static str, path_contains: &str, skip: usize) {
        lock(&self.0).push(Fault {
            op,
            path_contains: path_contains.to_owned(),
            skip,
        });
    }

    /// Whether this operation fails (and the failure is then used up).
    fn hit(&self, op: &str, path: &str) -> bool {
        let mut faults = lock(&self.0);
        let Some(i) = faults
            .iter()
            .position(|f| f.op == op && path.contains(&f.path_contains))
        else {
            return false;
        };
        if faults[i].skip == 0 {
            faults.remove(i);
            true
        } else {
            faults[i].skip -= 1;
            false
        }
    }

    /// Whether any failure is still armed.
    pub fn armed(&self) -> bool {
        !lock(&self.0).is_empty()
    }
}

/// A worker's producers against the fake broker.
pub struct FakeOutput {
    broker: Broker,
    exactly_once: bool,
    epochs: HashMap<u32, u64>,
    /// Output not yet committed (exactly-once) or not yet flushed.
    pending: BTreeMap<u32, Vec<Vec<u8>>>,
    faults: Faults,
}

impl FakeOutput {
    /// Sends one output record of `task`.
    pub fn send(&mut self, task: u32, value: Vec<u8>) {
        self.pending.entry(task).or_default().push(value);
    }
}

impl OutputCommitter for FakeOutput {
    fn fence(&mut self, tasks: &[u32]) -> Result<(), CommitError> {
        let mut state = lock(&self.broker.0);
        for &task in tasks {
            let epoch = state.epochs.entry(task).or_default();
            if self.exactly_once {
                // init_transactions: bumps the epoch, aborting the open
                // transaction of the previous owner.
                *epoch += 1;
            }
            self.epochs.insert(task, *epoch);
            state.fenced_since_read.insert(task, true);
        }
        self.pending.clear();
        Ok(())
    }

    fn flush(&mut self) -> Result<(), CommitError> {
        if self.faults.hit("flush", "") {
            return Err(CommitError::new("flush", "injected failure"));
        }
        if !self.exactly_once {
            let mut state = lock(&self.broker.0);
            for records in self.pending.values_mut() {
                state.log.append(records);
            }
        }
        Ok(())
    }

    fn commit(
        &mut self,
        task: u32,
        offsets: &[SourceOffset],
        token: &CommitToken,
    ) -> Result<(), CommitError> {
        if self.faults.hit("commit", &task.to_string()) {
            return Err(CommitError::new("commit", "injected failure"));
        }
        let mut state = lock(&self.broker.0);
        if self.exactly_once {
            if state.epochs.get(&task) != self.epochs.get(&task) {
                return Err(CommitError::new(
                    "commit transaction",
                    "fenced: a newer producer owns the transactional id",
                ));
            }
            let records = self.pending.remove(&task).unwrap_or_default();
            state.log.extend(records);
        }
        for o in offsets {
            state.group.insert(
                (o.topic.clone(), o.partition),
                GroupOffset {
                    offset: o.offset,
                    metadata: token.encode(),
                },
            );
        }
        Ok(())
    }

    fn abort(&mut self) {
        if self.exactly_once {
            self.pending.clear();
        }
    }
}

/// An in-memory object store that fails the operations [`Faults`] names.
#[derive(Debug)]
pub struct FaultyStore {
    inner: InMemory,
    faults: Faults,
    fence_during_upload: FenceDuringUpload,
    /// While set, copies wait (a slow server-side copy).
    copies_held: Arc<AtomicBool>,
}

impl fmt::Debug for FenceDuringUpload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", lock(&self.0))
    }
}

impl FaultyStore {
    /// A new empty store.
    pub fn new(faults: Faults) -> FaultyStore {
        FaultyStore {
            inner: InMemory::new(),
            faults,
            fence_during_upload: FenceDuringUpload::default(),
            copies_held: Arc::default(),
        }
    }

    /// Holds every copy until the returned flag is cleared.
    pub fn hold_copies(&self) -> Arc<AtomicBool> {
        self.copies_held.store(true, Ordering::SeqCst);
        self.copies_held.clone()
    }

    /// Sets `fence` (the job's `fence.json`) to `generation` when the next
    /// manifest is created.
    pub fn fence_during_upload(&self, fence: Path, generation: u64) {
        *lock(&self.fence_during_upload.0) = Some((fence, generation));
    }

    fn check(&self, op: &'static str, location: &Path) -> object_store::Result<()> {
        if self.faults.hit(op, location.as_ref()) {
            return Err(object_store::Error::Generic {
                store: "faulty",
                source: format!("injected failure of {op} {location}").into(),
            });
        }
        Ok(())
    }
}

impl fmt::Debug for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(lock(&self.0).iter()).finish()
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore")
    }
}

#[async_trait::async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let op = match opts.mode {
            object_store::PutMode::Create => "create",
            _ => "put",
        };
        self.check(op, location)?;
        let fence = lock(&self.fence_during_upload.0).take_if(|_| op == "create");
        if let Some((fence, generation)) = fence {
            let body = format!(r#"{{"generation": {generation}}}"#);
            self.inner
                .put_opts(
                    &fence,
                    PutPayload::from(body.into_bytes()),
                    PutOptions::default(),
                )
                .await?;
        }
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.check("put", location)?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.check("get", location)?;
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        if let Some(prefix) = prefix
            && let Err(e) = self.check("list", prefix)
        {
            return Box::pin(futures::stream::once(async move { Err(e) }));
        }
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.check("copy", to)?;
        while self.copies_held.load(Ordering::SeqCst) {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        self.inner.copy_opts(from, to, options).await
    }
}
