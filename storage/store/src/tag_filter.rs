//! A per-block Bloom filter over `(tag column, value)` pairs, kept in the block file's footer.
//!
//! Queries with `tag = 'v'` or `tag IN (...)` skip a block whose filter says no listed value is
//! in it. False positives only cost a read; there are no false negatives. Blocks with more
//! distinct tag values than [`DISTINCT_MAX`] get no filter (a filter that says "maybe" to
//! everything is not worth its bytes).

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_128;

/// Bits per distinct value (about 1% false positives with [`HASHES`] probes).
const BITS_PER_VALUE: usize = 10;
const HASHES: u32 = 7;
/// Above this many distinct `(column, value)` pairs a block gets no filter.
pub const DISTINCT_MAX: usize = 4096;

/// The filter: `bits.len() * 8` bits, a power of two.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagFilter {
    #[serde(with = "hex_bytes")]
    bits: Vec<u8>,
}

fn probes(column: &str, value: &str) -> (u64, u64) {
    let mut key = Vec::with_capacity(column.len() + value.len() + 1);
    key.extend_from_slice(column.as_bytes());
    key.push(0xff); // never in UTF-8: "a"+"bc" and "ab"+"c" differ
    key.extend_from_slice(value.as_bytes());
    let h = xxh3_128(&key);
    (h as u64, ((h >> 64) as u64) | 1)
}

impl TagFilter {
    /// Builds a filter over the given distinct pairs; `None` if there are too many.
    pub fn build<'a>(pairs: &HashSet<(&'a str, &'a str)>) -> Option<Self> {
        if pairs.len() > DISTINCT_MAX {
            return None;
        }
        let nbits = (pairs.len() * BITS_PER_VALUE).next_power_of_two().max(64);
        let mut f = TagFilter {
            bits: vec![0; nbits / 8],
        };
        for (c, v) in pairs {
            let (h1, h2) = probes(c, v);
            for i in 0..HASHES as u64 {
                let bit = (h1.wrapping_add(i.wrapping_mul(h2)) as usize) & (nbits - 1);
                f.bits[bit / 8] |= 1 << (bit % 8);
            }
        }
        Some(f)
    }

    /// Builds the filter of a block's rows: every dictionary-encoded (tag) column's values.
    /// The block file writer builds the same filter from the values its tag chunks found; this
    /// is what the tests compare it with.
    #[cfg(test)]
    pub(crate) fn of_batch(batch: &arrow::record_batch::RecordBatch) -> Option<Self> {
        use arrow::array::{Array, AsArray, DictionaryArray, StringArray};
        use arrow::datatypes::{DataType, Int32Type};
        let schema = batch.schema();
        let mut pairs: HashSet<(&str, &str)> = HashSet::new();
        for (field, col) in schema.fields().iter().zip(batch.columns()) {
            if !matches!(field.data_type(), DataType::Dictionary(_, _)) {
                continue;
            }
            let dict: &DictionaryArray<Int32Type> = col.as_dictionary();
            let values: &StringArray = dict.values().as_string();
            // Only the values the block's rows use: a block sliced from a larger chunk shares
            // the chunk's whole dictionary.
            let mut used = vec![false; values.len()];
            for k in dict.keys().iter().flatten() {
                if let Some(u) = usize::try_from(k).ok().and_then(|k| used.get_mut(k)) {
                    *u = true;
                }
            }
            for (i, v) in values.iter().enumerate() {
                let Some(v) = v else { continue };
                if !used[i] {
                    continue;
                }
                pairs.insert((field.name().as_str(), v));
                if pairs.len() > DISTINCT_MAX {
                    return None;
                }
            }
        }
        Self::build(&pairs)
    }

    /// False: `value` is certainly not in `column` in this block.
    pub fn may_contain(&self, column: &str, value: &str) -> bool {
        let nbits = self.bits.len() * 8;
        if nbits == 0 || !nbits.is_power_of_two() {
            return true; // malformed: prune nothing
        }
        let (h1, h2) = probes(column, value);
        (0..HASHES as u64).all(|i| {
            let bit = (h1.wrapping_add(i.wrapping_mul(h2)) as usize) & (nbits - 1);
            self.bits[bit / 8] & (1 << (bit % 8)) != 0
        })
    }
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};
    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, DictionaryArray};
    use arrow::datatypes::Int32Type;
    use arrow::record_batch::RecordBatch;

    #[test]
    fn members_are_found_and_most_others_are_not() {
        let names: Vec<String> = (0..500).map(|i| format!("truck_{i}")).collect();
        let pairs: HashSet<(&str, &str)> = names.iter().map(|n| ("name", n.as_str())).collect();
        let f = TagFilter::build(&pairs).unwrap();
        assert!(names.iter().all(|n| f.may_contain("name", n)));
        let others: Vec<String> = (500..10_500).map(|i| format!("truck_{i}")).collect();
        let fp = others.iter().filter(|n| f.may_contain("name", n)).count();
        assert!(fp < 300, "{fp} false positives in 10000");
        // The column is part of the key.
        let fp_col = names.iter().filter(|n| f.may_contain("fleet", n)).count();
        assert!(fp_col < 30, "{fp_col}");
    }

    #[test]
    fn a_slice_lists_only_the_values_its_rows_use() {
        use arrow::datatypes::{Field, Schema};
        use std::sync::Arc;
        let dict: DictionaryArray<Int32Type> =
            vec!["a", "a", "b", "b", "c", "c"].into_iter().collect();
        let schema = Arc::new(Schema::new(vec![Field::new(
            "host",
            dict.data_type().clone(),
            true,
        )]));
        let batch = RecordBatch::try_new(schema, vec![Arc::new(dict)]).unwrap();
        let f = TagFilter::of_batch(&batch.slice(2, 2)).unwrap();
        assert!(f.may_contain("host", "b"));
        assert!(!f.may_contain("host", "a"));
        assert!(!f.may_contain("host", "c"));
    }

    #[test]
    fn too_many_values_give_no_filter() {
        let names: Vec<String> = (0..=DISTINCT_MAX).map(|i| format!("v{i}")).collect();
        let pairs: HashSet<(&str, &str)> = names.iter().map(|n| ("t", n.as_str())).collect();
        assert!(TagFilter::build(&pairs).is_none());
    }

    #[test]
    fn round_trips_through_json() {
        let pairs: HashSet<(&str, &str)> = [("a", "x"), ("b", "y")].into_iter().collect();
        let f = TagFilter::build(&pairs).unwrap();
        let back: TagFilter = serde_json::from_str(&serde_json::to_string(&f).unwrap()).unwrap();
        assert_eq!(f, back);
    }
}
