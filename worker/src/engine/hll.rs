//! A small HyperLogLog sketch for the `approxDistinct` aggregate.
//!
//! 2^14 registers (standard error 1.04 / sqrt(16384) ≈ 0.8%), a sparse form
//! while few registers are set (a sorted list of `(register, rank)` pairs, so
//! a sketch per key and window stays small in RocksDB), the raw estimator with
//! linear counting for small cardinalities. The hash is fixed here (FNV-1a
//! followed by the murmur3 finaliser) so that a sketch written by one build
//! of the worker merges correctly with values hashed by another.

use thiserror::Error;

/// Number of index bits: 2^14 registers.
const PRECISION: u32 = 14;
/// Number of registers.
const REGISTERS: usize = 1 << PRECISION;
/// The sparse form turns dense once it holds this many entries (4 bytes each,
/// a quarter of the dense size).
const SPARSE_LIMIT: usize = REGISTERS / 4;

const TAG_SPARSE: u8 = 0;
const TAG_DENSE: u8 = 1;

/// A serialized sketch could not be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum HllError {
    /// The bytes do not hold a sketch.
    #[error("corrupt HyperLogLog sketch: {0}")]
    Corrupt(&'static str),
}

/// An approximate distinct counter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HyperLogLog {
    /// Entries `register << 8 | rank`, sorted by register, one per register.
    Sparse(Vec<u32>),
    /// One rank per register.
    Dense(Box<[u8]>),
}

impl Default for HyperLogLog {
    fn default() -> Self {
        HyperLogLog::Sparse(Vec::new())
    }
}

/// The 64-bit hash of `bytes` the sketch uses: FNV-1a, then the murmur3
/// 64-bit finaliser to spread the bits.
pub fn hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

impl HyperLogLog {
    /// Adds a value, given as its canonical bytes.
    pub fn insert(&mut self, value: &[u8]) {
        self.insert_hash(hash64(value));
    }

    /// Adds a value given as its 64-bit hash.
    pub fn insert_hash(&mut self, hash: u64) {
        let register = (hash >> (64 - PRECISION)) as usize;
        // Rank: position of the first set bit in the remaining 50 bits, 1-based.
        let rest = (hash << PRECISION) | (1 << (PRECISION - 1));
        let rank = (rest.leading_zeros() + 1) as u8;
        self.set(register, rank);
    }

    fn set(&mut self, register: usize, rank: u8) {
        match self {
            HyperLogLog::Dense(registers) => {
                if registers[register] < rank {
                    registers[register] = rank;
                }
            }
            HyperLogLog::Sparse(entries) => {
                let probe = (register as u32) << 8;
                match entries.binary_search_by(|e| (e & !0xff).cmp(&probe)) {
                    Ok(i) => {
                        if (entries[i] & 0xff) < u32::from(rank) {
                            entries[i] = probe | u32::from(rank);
                        }
                    }
                    Err(i) => {
                        entries.insert(i, probe | u32::from(rank));
                        if entries.len() > SPARSE_LIMIT {
                            self.densify();
                        }
                    }
                }
            }
        }
    }

    fn densify(&mut self) {
        if let HyperLogLog::Sparse(entries) = self {
            let mut registers = vec![0u8; REGISTERS].into_boxed_slice();
            for e in entries.iter() {
                registers[(e >> 8) as usize] = (e & 0xff) as u8;
            }
            *self = HyperLogLog::Dense(registers);
        }
    }

    /// Adds every value of `other` to this sketch.
    pub fn merge(&mut self, other: &HyperLogLog) {
        match other {
            HyperLogLog::Sparse(entries) => {
                for e in entries {
                    self.set((e >> 8) as usize, (e & 0xff) as u8);
                }
            }
            HyperLogLog::Dense(registers) => {
                self.densify();
                for (i, &r) in registers.iter().enumerate() {
                    self.set(i, r);
                }
            }
        }
    }

    /// The estimated number of distinct values added.
    pub fn estimate(&self) -> u64 {
        let m = REGISTERS as f64;
        let (zeros, sum) = match self {
            HyperLogLog::Sparse(entries) => {
                let set: f64 = entries
                    .iter()
                    .map(|e| 2f64.powi(-((e & 0xff) as i32)))
                    .sum();
                let zeros = REGISTERS - entries.len();
                (zeros, set + zeros as f64)
            }
            HyperLogLog::Dense(registers) => {
                let mut zeros = 0;
                let mut sum = 0.0;
                for &r in registers.iter() {
                    if r == 0 {
                        zeros += 1;
                    }
                    sum += 2f64.powi(-i32::from(r));
                }
                (zeros, sum)
            }
        };
        let alpha = 0.7213 / (1.0 + 1.079 / m);
        let raw = alpha * m * m / sum;
        let estimate = if raw <= 2.5 * m && zeros > 0 {
            m * (m / zeros as f64).ln()
        } else {
            raw
        };
        estimate.round() as u64
    }

    /// The heap memory the sketch holds: its entries or registers.
    pub fn heap_bytes(&self) -> usize {
        match self {
            HyperLogLog::Sparse(entries) => entries.capacity() * std::mem::size_of::<u32>(),
            HyperLogLog::Dense(registers) => registers.len(),
        }
    }

    /// Appends the serialized sketch to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            HyperLogLog::Sparse(entries) => {
                out.push(TAG_SPARSE);
                out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
                for e in entries {
                    out.extend_from_slice(&e.to_le_bytes());
                }
            }
            HyperLogLog::Dense(registers) => {
                out.push(TAG_DENSE);
                out.extend_from_slice(registers);
            }
        }
    }

    /// Reads a sketch written by [`HyperLogLog::encode`] from the front of
    /// `bytes`, returning it and the number of bytes read.
    pub fn decode(bytes: &[u8]) -> Result<(HyperLogLog, usize), HllError> {
        match bytes.first() {
            Some(&TAG_SPARSE) => {
                let len_bytes: [u8; 4] = bytes
                    .get(1..5)
                    .and_then(|b| b.try_into().ok())
                    .ok_or(HllError::Corrupt("truncated sparse length"))?;
                let len = u32::from_le_bytes(len_bytes) as usize;
                if len > SPARSE_LIMIT {
                    return Err(HllError::Corrupt("sparse sketch too long"));
                }
                let end = 5 + len * 4;
                let body = bytes
                    .get(5..end)
                    .ok_or(HllError::Corrupt("truncated sparse entries"))?;
                let entries = body
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect::<Vec<_>>();
                let sorted = entries.windows(2).all(|w| (w[0] >> 8) < (w[1] >> 8));
                let in_range = entries.iter().all(|e| ((e >> 8) as usize) < REGISTERS);
                if !sorted || !in_range {
                    return Err(HllError::Corrupt("sparse entries out of order"));
                }
                Ok((HyperLogLog::Sparse(entries), end))
            }
            Some(&TAG_DENSE) => {
                let body = bytes
                    .get(1..1 + REGISTERS)
                    .ok_or(HllError::Corrupt("truncated registers"))?;
                Ok((HyperLogLog::Dense(body.into()), 1 + REGISTERS))
            }
            _ => Err(HllError::Corrupt("unknown tag")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn relative_error(n: u64) -> f64 {
        let mut hll = HyperLogLog::default();
        for i in 0..n {
            hll.insert(format!("user-{i}").as_bytes());
        }
        (hll.estimate() as f64 - n as f64).abs() / n as f64
    }

    #[test]
    fn error_below_two_percent_on_100k_distinct() {
        let err = relative_error(100_000);
        assert!(err < 0.02, "relative error {err}");
    }

    #[test]
    fn small_cardinalities_are_nearly_exact() {
        for n in [0u64, 1, 10, 100, 1000] {
            let mut hll = HyperLogLog::default();
            for i in 0..n {
                hll.insert(&i.to_le_bytes());
                hll.insert(&i.to_le_bytes());
            }
            let est = hll.estimate();
            assert!(est.abs_diff(n) <= n / 50 + 1, "n={n} est={est}");
        }
    }

    #[test]
    fn sparse_turns_dense_and_agrees() {
        let mut sparse = HyperLogLog::default();
        for i in 0..3000u32 {
            sparse.insert(&i.to_le_bytes());
        }
        assert!(matches!(sparse, HyperLogLog::Sparse(_)));
        let mut dense = sparse.clone();
        dense.densify();
        assert_eq!(sparse.estimate(), dense.estimate());
        for i in 3000..20000u32 {
            sparse.insert(&i.to_le_bytes());
        }
        assert!(matches!(sparse, HyperLogLog::Dense(_)));
    }

    #[test]
    fn merge_equals_union() {
        let mut a = HyperLogLog::default();
        let mut b = HyperLogLog::default();
        let mut both = HyperLogLog::default();
        for i in 0..20_000u32 {
            let target = if i % 2 == 0 { &mut a } else { &mut b };
            target.insert(&i.to_le_bytes());
            both.insert(&i.to_le_bytes());
        }
        a.merge(&b);
        assert_eq!(a.estimate(), both.estimate());
    }

    #[test]
    fn rejects_garbage() {
        assert!(HyperLogLog::decode(&[]).is_err());
        assert!(HyperLogLog::decode(&[7]).is_err());
        assert!(HyperLogLog::decode(&[TAG_SPARSE, 1, 0, 0, 0]).is_err());
        assert!(HyperLogLog::decode(&[TAG_DENSE, 0]).is_err());
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(values in proptest::collection::vec(any::<u64>(), 0..6000)) {
            let mut hll = HyperLogLog::default();
            for v in &values {
                hll.insert_hash(*v);
            }
            let mut bytes = Vec::new();
            hll.encode(&mut bytes);
            let (back, used) = HyperLogLog::decode(&bytes).unwrap();
            prop_assert_eq!(used, bytes.len());
            prop_assert_eq!(back, hll);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = HyperLogLog::decode(&bytes);
        }
    }
}
