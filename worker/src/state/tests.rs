//! Tests of the task state: the cache, durability, timers and values.

use super::*;
use crate::engine::aggregate::{Accumulator, Accumulators};
use crate::engine::window::Window;
use proptest::prelude::*;
use weir_crds::job::AggregateFunction;

/// Options with a cache budget of about `entries` small entries.
fn options(entries: usize) -> StateOptions {
    StateOptions::new(8 << 20, 1 << 20).with_cache_bytes(entries * small_entry())
}

/// What one entry of [`key`] and [`count`] costs.
fn small_entry() -> usize {
    entry_bytes(&key(100), Some(&count(1)))
}

fn count(n: u64) -> StateValue {
    StateValue::Accumulators(Accumulators(vec![Accumulator::Count(n)]))
}

fn key(i: u32) -> Vec<u8> {
    let mut payload = Vec::new();
    keyed_payload(&mut payload, format!("user-{i}").as_bytes(), Some(60_000));
    let mut k = Vec::new();
    state_key(&mut k, 3, &payload);
    k
}

#[test]
fn cache_is_bounded_and_writes_back_on_eviction() {
    let dir = tempfile::tempdir().unwrap();
    let mut state = TaskState::open(dir.path(), &options(100)).unwrap();
    for i in 0..1000 {
        *state.get_mut(&key(i)).unwrap() = Some(count(u64::from(i)));
        assert!(state.cached_bytes() <= 100 * small_entry());
        assert!(state.cached_entries() <= 110);
    }
    assert!(state.cached_entries() >= 50, "the budget is used");
    for i in 0..1000 {
        assert_eq!(state.get(&key(i)).unwrap(), Some(&count(u64::from(i))));
    }
    // Deletions reach RocksDB too.
    for i in 0..500 {
        *state.get_mut(&key(i)).unwrap() = None;
    }
    state.flush_cache().unwrap();
    for i in 0..1000 {
        let expected = (i >= 500).then(|| count(u64::from(i)));
        assert_eq!(state.get(&key(i)).unwrap(), expected.as_ref());
    }
}

/// A reopened (restored) instance's window values are read from RocksDB,
/// whether they were flushed (for a checkpoint) or evicted: every window
/// up to the latest it stored. A window of a fresh instance no eviction
/// wrote is not read (see `stored_windows`).
#[test]
fn a_reopened_instance_reads_the_windows_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    let later = |i: u32| {
        let mut payload = Vec::new();
        keyed_payload(&mut payload, format!("user-{i}").as_bytes(), Some(120_000));
        let mut k = Vec::new();
        state_key(&mut k, 3, &payload);
        k
    };
    {
        let mut state = TaskState::open(dir.path(), &options(10)).unwrap();
        *state.get_mut(&key(1)).unwrap() = Some(count(7));
        state.flush_cache().unwrap();
        // Values of a later window, evicted by the next ones.
        for i in 0..100 {
            *state.get_mut(&later(i)).unwrap() = Some(count(u64::from(i)));
        }
    }
    let mut state = TaskState::open(dir.path(), &options(1000)).unwrap();
    assert_eq!(state.get(&key(1)).unwrap(), Some(&count(7)));
    assert_eq!(state.get(&later(0)).unwrap(), Some(&count(0)), "evicted");
}

/// A value created and deleted between two flushes (a window that opened
/// and fired) leaves nothing behind: not in the cache, where it would
/// crowd out live values, and not in RocksDB; one deleted after a flush is
/// deleted from RocksDB at the next.
#[test]
fn values_deleted_before_reaching_rocksdb_leave_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let mut state = TaskState::open(dir.path(), &options(1000)).unwrap();
    for i in 0..100 {
        *state.get_mut(&key(i)).unwrap() = Some(count(1));
        *state.get_mut(&key(i)).unwrap() = None;
    }
    // The last one is dropped at the next access.
    assert_eq!(state.get(&key(1000)).unwrap(), None);
    assert_eq!(state.cached_entries(), 1, "only the key just read");
    *state.get_mut(&key(7)).unwrap() = Some(count(7));
    state.flush_cache().unwrap();
    *state.get_mut(&key(7)).unwrap() = None;
    assert_eq!(state.get(&key(8)).unwrap(), None);
    state.flush_cache().unwrap();
    drop(state);
    let mut state = TaskState::open(dir.path(), &options(1000)).unwrap();
    assert_eq!(
        state.get(&key(7)).unwrap(),
        None,
        "the deletion reached RocksDB"
    );
    assert_eq!(state.get(&key(3)).unwrap(), None);
}

#[test]
fn flushed_state_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut state = TaskState::open(dir.path(), &options(10_000)).unwrap();
        *state.get_mut(&key(1)).unwrap() = Some(count(7));
        state
            .register_timer(TimeDomain::Event, 500, 3, 1, b"p")
            .unwrap();
        state.flush_cache().unwrap();
    }
    let mut state = TaskState::open(dir.path(), &options(10_000)).unwrap();
    assert_eq!(state.get(&key(1)).unwrap(), Some(&count(7)));
    assert_eq!(state.next_timer(TimeDomain::Event), Some(500));
    assert_eq!(state.next_timer(TimeDomain::Processing), None);
}

/// Timer keys stored in RocksDB.
fn stored_timers(state: &TaskState) -> Vec<Vec<u8>> {
    state
        .db()
        .iterator(rocksdb::IteratorMode::Start)
        .map(|item| item.unwrap().0.to_vec())
        .filter(|key| TimeDomain::ALL.iter().any(|d| d.prefix() == key[0]))
        .collect()
}

#[test]
fn rocksdb_holds_the_pending_timers_as_of_the_last_flush() {
    let dir = tempfile::tempdir().unwrap();
    let mut due = Vec::new();
    {
        let mut state = TaskState::open(dir.path(), &options(10)).unwrap();
        for t in [10, 20, 30] {
            state
                .register_timer(TimeDomain::Event, t, 1, 2, b"k")
                .unwrap();
        }
        state
            .take_due_timers(TimeDomain::Event, 10, usize::MAX, &mut due)
            .unwrap();
        assert!(
            stored_timers(&state).is_empty(),
            "nothing written before a flush"
        );
        state.flush_cache().unwrap();
        assert_eq!(stored_timers(&state).len(), 2, "the pending 20 and 30");
        // 20 fires and comes again, 30 fires, 40 comes and fires: none of
        // it is written before the next flush.
        state
            .take_due_timers(TimeDomain::Event, 30, usize::MAX, &mut due)
            .unwrap();
        state
            .register_timer(TimeDomain::Event, 20, 1, 2, b"k")
            .unwrap();
        state
            .register_timer(TimeDomain::Event, 40, 1, 2, b"k")
            .unwrap();
        state
            .take_due_timers(TimeDomain::Event, 45, 1, &mut due)
            .unwrap();
        assert_eq!(state.next_timer(TimeDomain::Event), Some(40));
        state
            .take_due_timers(TimeDomain::Event, 45, 1, &mut due)
            .unwrap();
        assert_eq!(stored_timers(&state).len(), 2);
        state
            .register_timer(TimeDomain::Processing, 7, 1, 2, b"p")
            .unwrap();
        state.flush_cache().unwrap();
        assert_eq!(stored_timers(&state).len(), 1);
    }
    let times: Vec<i64> = due.iter().map(|t| t.time).collect();
    assert_eq!(times, [10, 20, 30, 20, 40]);
    let state = TaskState::open(dir.path(), &options(10)).unwrap();
    assert_eq!(state.next_timer(TimeDomain::Event), None);
    assert_eq!(state.next_timer(TimeDomain::Processing), Some(7));
}

#[test]
fn timers_fire_in_time_order_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut state = TaskState::open(dir.path(), &options(10)).unwrap();
    for t in [30i64, -5, 10, 20, 10, i64::MAX, i64::MIN] {
        state
            .register_timer(TimeDomain::Event, t, 1, 2, &t.to_be_bytes())
            .unwrap();
    }
    state
        .register_timer(TimeDomain::Processing, 0, 1, 2, b"")
        .unwrap();
    let mut due = Vec::new();
    let more = state
        .take_due_timers(TimeDomain::Event, 10, usize::MAX, &mut due)
        .unwrap();
    assert!(!more);
    let times: Vec<i64> = due.iter().map(|t| t.time).collect();
    assert_eq!(times, vec![i64::MIN, -5, 10]);
    assert_eq!(due[1].payload, (-5i64).to_be_bytes());
    assert_eq!((due[1].step, due[1].kind), (1, 2));
    assert_eq!(state.next_timer(TimeDomain::Event), Some(20));
    due.clear();
    state
        .take_due_timers(TimeDomain::Event, 10, usize::MAX, &mut due)
        .unwrap();
    assert!(due.is_empty());
    state
        .take_due_timers(TimeDomain::Event, i64::MAX, usize::MAX, &mut due)
        .unwrap();
    let times: Vec<i64> = due.iter().map(|t| t.time).collect();
    assert_eq!(times, vec![20, 30, i64::MAX]);
    assert_eq!(state.next_timer(TimeDomain::Event), None);
    assert_eq!(state.next_timer(TimeDomain::Processing), Some(0));
}

#[test]
fn due_timers_are_taken_in_bounded_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let mut state = TaskState::open(dir.path(), &options(10)).unwrap();
    for t in 0..10_000i64 {
        state
            .register_timer(TimeDomain::Event, t % 1000, 1, 2, &t.to_be_bytes())
            .unwrap();
    }
    state
        .register_timer(TimeDomain::Event, 5000, 1, 2, b"later")
        .unwrap();
    let mut all = Vec::new();
    let mut chunk = Vec::new();
    let mut chunks = 0;
    loop {
        let more = state
            .take_due_timers(TimeDomain::Event, 999, 3000, &mut chunk)
            .unwrap();
        assert!(chunk.len() <= 3000, "a chunk holds {}", chunk.len());
        chunks += 1;
        all.append(&mut chunk);
        if !more {
            break;
        }
    }
    assert_eq!(chunks, 4);
    assert_eq!(all.len(), 10_000, "every due timer once");
    assert!(all.windows(2).all(|w| w[0].time <= w[1].time));
    assert_eq!(state.next_timer(TimeDomain::Event), Some(5000));
    let mut rest = Vec::new();
    assert!(
        !state
            .take_due_timers(TimeDomain::Event, i64::MAX, 3000, &mut rest)
            .unwrap()
    );
    assert_eq!(rest.len(), 1);
}

/// A sparse sketch of `n` distinct values.
fn distinct(n: u64) -> StateValue {
    let mut hll = crate::engine::hll::HyperLogLog::default();
    for i in 0..n {
        hll.insert(&i.to_le_bytes());
    }
    StateValue::Accumulators(Accumulators(vec![Accumulator::Distinct(hll)]))
}

#[test]
fn the_cache_is_bounded_in_bytes_as_values_grow() {
    // 64 KiB holds hundreds of small sketches but only a few dense ones
    // (16 KiB each): values that grow in place must be measured again.
    let budget = 64 << 10;
    let dir = tempfile::tempdir().unwrap();
    let options = StateOptions::new(8 << 20, 1 << 20).with_cache_bytes(budget);
    let mut state = TaskState::open(dir.path(), &options).unwrap();
    for i in 0..200 {
        *state.get_mut(&key(i)).unwrap() = Some(distinct(1));
    }
    assert!(state.cached_entries() > 100);
    let dense = distinct(20_000);
    for i in 0..200 {
        *state.get_mut(&key(i)).unwrap() = Some(dense.clone());
        assert!(
            state.cached_bytes() <= budget + (20 << 10),
            "{} bytes cached",
            state.cached_bytes()
        );
    }
    assert!(state.cached_entries() <= 4, "{}", state.cached_entries());
    // Nothing was lost to eviction.
    // The last value grew after its load: the next load makes room.
    state.flush_cache().unwrap();
    assert!(state.cached_bytes() > budget);
    assert_eq!(state.get(&key(3)).unwrap(), Some(&dense));
    assert!(state.cached_bytes() <= budget);
}

#[test]
fn the_budget_is_split_among_open_tasks() {
    let budget = 300 * small_entry();
    let options = StateOptions::new(8 << 20, 1 << 20).with_cache_bytes(budget);
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut first = TaskState::open(dirs[0].path(), &options).unwrap();
    let fill = |state: &mut TaskState| {
        for i in 0..1000 {
            *state.get_mut(&key(i)).unwrap() = Some(count(1));
        }
        state.cached_bytes()
    };
    assert!(fill(&mut first) > budget / 2);
    let mut others: Vec<TaskState> = dirs[1..]
        .iter()
        .map(|d| TaskState::open(d.path(), &options).unwrap())
        .collect();
    assert_eq!(options.cache.tasks(), 3);
    for state in &mut others {
        assert!(fill(state) <= budget / 3);
    }
    // The first task's share shrank: it evicts down to it as it loads.
    assert!(fill(&mut first) <= budget / 3);
    let total: usize =
        first.cached_bytes() + others.iter().map(TaskState::cached_bytes).sum::<usize>();
    assert!(total <= budget);
    drop(others);
    assert_eq!(options.cache.tasks(), 1);
    assert_eq!(options.cache.per_task(), budget);
}

/// A value RocksDB holds that does not decode is an error. It is written
/// behind the state's back, into an instance opened again (as a restored
/// one: windows up to the latest it holds are read).
#[test]
fn corrupt_values_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let state = TaskState::open(dir.path(), &options(10)).unwrap();
    state.db().put(key(1), [9u8, 9]).unwrap();
    drop(state);
    let mut state = TaskState::open(dir.path(), &options(10)).unwrap();
    assert!(matches!(
        state.get(&key(1)),
        Err(StateError::Corrupt { .. })
    ));
}

#[test]
fn state_values_round_trip() {
    let sessions = StateValue::Sessions(vec![Session {
        window: Window { start: -3, end: 9 },
        fired: true,
        accumulators: Accumulators(vec![Accumulator::new(AggregateFunction::Last)]),
    }]);
    let panes = StateValue::CountPanes {
        events: 12,
        panes: vec![
            Accumulators(vec![Accumulator::new(AggregateFunction::Sum)]),
            Accumulators(vec![Accumulator::new(AggregateFunction::Max)]),
        ],
    };
    let pattern = StateValue::Pattern {
        pending: vec![crate::state::PendingEvent {
            time: 5,
            holds: 0b10,
            value: b"{\"a\":1}".to_vec(),
        }],
        partials: vec![crate::engine::pattern::Partial {
            stage: 1,
            count: 2,
            start: -4,
            events: vec![crate::engine::pattern::Captured {
                stage: 0,
                time: -4,
                value: bytes::Bytes::from_static(b"{}"),
            }],
        }],
    };
    let join = StateValue::Join {
        own: vec![crate::state::JoinRow {
            time: -2,
            value: b"{\"o\":1}".to_vec(),
        }],
        other: vec![
            crate::state::JoinRow {
                time: 7,
                value: Vec::new(),
            },
            crate::state::JoinRow {
                time: 9,
                value: b"{}".to_vec(),
            },
        ],
    };
    for v in [
        count(3),
        sessions,
        StateValue::Expiry(-17),
        panes,
        pattern,
        join,
    ] {
        let mut bytes = Vec::new();
        v.encode(&mut bytes);
        assert_eq!(StateValue::decode(&bytes).unwrap(), v);
    }
}

proptest! {
    #[test]
    fn payload_order_is_key_then_window(
        a in proptest::collection::vec(any::<u8>(), 0..8),
        b in proptest::collection::vec(any::<u8>(), 0..8),
        s in any::<i64>(),
        t in any::<i64>(),
    ) {
        let mut pa = Vec::new();
        keyed_payload(&mut pa, &a, Some(s));
        let mut pb = Vec::new();
        keyed_payload(&mut pb, &a, Some(t));
        prop_assert_eq!(pa.cmp(&pb), s.cmp(&t));
        prop_assert_eq!(parse_keyed_payload(&pa), Some((&a[..], Some(s))));
        let mut pc = Vec::new();
        keyed_payload(&mut pc, &b, None);
        prop_assert_eq!(parse_keyed_payload(&pc), Some((&b[..], None)));
    }

    #[test]
    fn state_value_decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = StateValue::decode(&bytes);
    }
}

/// An operation on a task's timers.
#[derive(Clone, Debug)]
enum TimerOp {
    Register {
        processing: bool,
        time: i64,
        payload: u8,
    },
    Take {
        processing: bool,
        up_to: i64,
        limit: usize,
    },
    FlushAndReopen,
}

fn timer_op() -> impl Strategy<Value = TimerOp> {
    prop_oneof![
        4 => (any::<bool>(), 0i64..50, 0u8..4).prop_map(|(processing, time, payload)| TimerOp::Register { processing, time, payload }),
        2 => (any::<bool>(), 0i64..60, 1usize..6).prop_map(|(processing, up_to, limit)| TimerOp::Take { processing, up_to, limit }),
        1 => Just(TimerOp::FlushAndReopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// With room for only a few timers in memory, timers still fire in
    /// time order (those of one time in any order), once, and a flush then reopen keeps exactly the pending
    /// ones: those in memory and those spilled to RocksDB alike.
    #[test]
    fn timers_spilled_to_rocksdb_fire_like_the_model(ops in proptest::collection::vec(timer_op(), 1..120)) {
        let dir = tempfile::tempdir().unwrap();
        let open = || TaskState::open(dir.path(), &options(10).with_memory_timers(4)).unwrap();
        let mut state = open();
        let domain = |processing: bool| if processing { TimeDomain::Processing } else { TimeDomain::Event };
        let mut model: std::collections::BTreeSet<(bool, i64, u8)> = Default::default();
        for op in ops {
            match op {
                TimerOp::Register { processing, time, payload } => {
                    state.register_timer(domain(processing), time, 1, 2, &[payload]).unwrap();
                    model.insert((processing, time, payload));
                }
                TimerOp::Take { processing, up_to, limit } => {
                    let mut due = Vec::new();
                    let more = state.take_due_timers(domain(processing), up_to, limit, &mut due).unwrap();
                    // In time order, the earliest `limit`; those of one
                    // time in any order.
                    let due_before = model.iter().filter(|(p, t, _)| *p == processing && *t <= up_to).count();
                    prop_assert_eq!(due.len(), due_before.min(limit));
                    prop_assert!(due.windows(2).all(|pair| pair[0].time <= pair[1].time));
                    for timer in &due {
                        prop_assert!(timer.time <= up_to);
                        prop_assert!(model.remove(&(processing, timer.time, timer.payload[0])), "taken once");
                    }
                    if let Some(last) = due.last() {
                        prop_assert!(!model.iter().any(|(p, t, _)| *p == processing && *t < last.time), "an earlier timer was left");
                    }
                    prop_assert_eq!(more, model.iter().any(|(p, t, _)| *p == processing && *t <= up_to));
                }
                TimerOp::FlushAndReopen => {
                    state.flush_cache().unwrap();
                    drop(state);
                    state = open();
                }
            }
            for processing in [false, true] {
                prop_assert_eq!(
                    state.next_timer(domain(processing)),
                    model.iter().find(|(p, _, _)| *p == processing).map(|(_, t, _)| *t)
                );
            }
            prop_assert!(state.timers_in_memory() <= 4 + 2);
        }
    }
}
