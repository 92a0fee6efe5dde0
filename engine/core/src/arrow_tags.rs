//! The tag columns of an Arrow batch, taken a row at a time as one tuple.
//!
//! Sensor batches repeat a few series many times: a batch of 5000 rows from 100 devices has 100
//! distinct tag tuples. [`TagTuples::build`] gives every distinct tuple (the values of all tag
//! columns of a row, nulls included) a number, in order of first appearance, by hashing the
//! row's tag bytes once and comparing them with the tuple's first row. Each tag column then
//! becomes a `Dictionary(Int32, Utf8)` array whose dictionary holds each value once (the form
//! the table stores), built once per new tuple instead of once per row; and the series hash
//! (`crate::prepare::series_hash`), which depends only on the table and the tags, is computed
//! once per tuple by the caller.
//!
//! Tuples are told apart by their bytes, not by their hash alone: two tuples whose hashes
//! collide stay two tuples (a chain of tuples per hash).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, DictionaryArray, Int32Array, StringArray};
use arrow::buffer::NullBuffer;
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int32Type};
use arrow::error::ArrowError;
use xxhash_rust::xxh3::xxh3_64;

/// No tuple follows in a hash chain.
const CHAIN_END: u32 = u32::MAX;

/// A `u64` that is already a good hash (xxh3) keys the map as it is.
#[derive(Debug, Default, Clone, Copy)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed with it; fold anything else in rather than panic.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// One input tag column, read a row at a time.
enum Values<'a> {
    Plain(&'a StringArray),
    Dict(&'a [i32], &'a StringArray),
}

/// A tag column as `Utf8` or `Dictionary(Int32, Utf8)` (other string types are cast first).
fn normalize(array: &ArrayRef) -> Result<ArrayRef, ArrowError> {
    match array.data_type() {
        DataType::Utf8 => Ok(array.clone()),
        DataType::Dictionary(k, v) if **k == DataType::Int32 && **v == DataType::Utf8 => {
            Ok(array.clone())
        }
        DataType::Dictionary(_, _) => cast(
            array,
            &DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
        ),
        _ => cast(array, &DataType::Utf8),
    }
}

/// Distinct tag tuples of a batch and its tag columns as dictionaries.
#[derive(Debug)]
pub(crate) struct TagTuples {
    /// Each input column as `Dictionary(Int32, Utf8)`, dictionary values unique, in order of
    /// first use; a column that is null in every row is returned as it came.
    pub columns: Vec<ArrayRef>,
    /// The tuple of each row.
    pub tuple_of: Vec<u32>,
    /// The first row of each tuple.
    pub first_row: Vec<u32>,
}

impl TagTuples {
    /// Numbers the tag tuples of `n` rows of `inputs` (tag columns of any string type, or
    /// dictionaries of them). `Err((column, error))`: column `column` cannot be read as strings.
    pub(crate) fn build(inputs: &[&ArrayRef], n: usize) -> Result<TagTuples, (usize, ArrowError)> {
        Self::build_with(inputs, n, xxh3_64)
    }

    /// [`TagTuples::build`] with the hash of a row's tag bytes given (tests force collisions).
    fn build_with(
        inputs: &[&ArrayRef],
        n: usize,
        hash: impl Fn(&[u8]) -> u64,
    ) -> Result<TagTuples, (usize, ArrowError)> {
        let normalized: Vec<ArrayRef> = inputs
            .iter()
            .enumerate()
            .map(|(c, a)| normalize(a).map_err(|e| (c, e)))
            .collect::<Result<_, _>>()?;
        let nulls: Vec<Option<NullBuffer>> = normalized
            .iter()
            .map(|a| a.logical_nulls().filter(|b| b.null_count() > 0))
            .collect();
        let values: Vec<Values<'_>> = normalized
            .iter()
            .map(|a| match a.data_type() {
                DataType::Utf8 => Values::Plain(a.as_string::<i32>()),
                _ => {
                    let d = a.as_dictionary::<Int32Type>();
                    Values::Dict(d.keys().values(), d.values().as_string::<i32>())
                }
            })
            .collect();
        let value = |c: usize, row: usize| -> Option<&str> {
            if nulls[c].as_ref().is_some_and(|b| b.is_null(row)) {
                return None;
            }
            Some(match &values[c] {
                Values::Plain(s) => s.value(row),
                Values::Dict(keys, s) => s.value(keys[row] as usize),
            })
        };
        let width = inputs.len();

        // Each tuple's bytes (per column: 0 for null, or 1, length and value), its hash chain.
        let mut heads: HashMap<u64, u32, BuildHasherDefault<Prehashed>> = HashMap::default();
        let mut chain: Vec<u32> = Vec::new();
        let mut bytes: Vec<u8> = Vec::new();
        let mut bounds: Vec<usize> = vec![0];
        let mut first_row: Vec<u32> = Vec::new();
        // Per column: each value's dictionary key, and the values in key order.
        let mut interned: Vec<HashMap<&str, i32>> = vec![HashMap::new(); width];
        let mut dict_values: Vec<Vec<&str>> = vec![Vec::new(); width];
        // Each tuple's key per column (0 for null: the null buffer hides it).
        let mut tuple_keys: Vec<i32> = Vec::new();
        let mut tuple_of: Vec<u32> = Vec::with_capacity(n);
        let mut keys: Vec<Vec<i32>> = vec![Vec::with_capacity(n); width];

        let mut row_bytes: Vec<u8> = Vec::with_capacity(256);
        for row in 0..n {
            row_bytes.clear();
            for c in 0..width {
                match value(c, row) {
                    None => row_bytes.push(0),
                    Some(v) => {
                        row_bytes.push(1);
                        row_bytes.extend_from_slice(&(v.len() as u32).to_le_bytes());
                        row_bytes.extend_from_slice(v.as_bytes());
                    }
                }
            }
            let h = hash(&row_bytes);
            let mut at = heads.get(&h).copied().unwrap_or(CHAIN_END);
            while at != CHAIN_END {
                let t = at as usize;
                if bytes[bounds[t]..bounds[t + 1]] == row_bytes[..] {
                    break;
                }
                at = chain[t];
            }
            let t = if at != CHAIN_END {
                at as usize
            } else {
                // A new tuple: its values join their columns' dictionaries.
                let t = first_row.len();
                bytes.extend_from_slice(&row_bytes);
                bounds.push(bytes.len());
                first_row.push(row as u32);
                chain.push(heads.insert(h, t as u32).unwrap_or(CHAIN_END));
                for c in 0..width {
                    let key = match value(c, row) {
                        None => 0,
                        Some(v) => *interned[c].entry(v).or_insert_with(|| {
                            dict_values[c].push(v);
                            (dict_values[c].len() - 1) as i32
                        }),
                    };
                    tuple_keys.push(key);
                }
                t
            };
            tuple_of.push(t as u32);
            for (k, &key) in keys.iter_mut().zip(&tuple_keys[t * width..(t + 1) * width]) {
                k.push(key);
            }
        }

        let columns = normalized
            .iter()
            .zip(keys)
            .zip(dict_values)
            .zip(nulls)
            .enumerate()
            .map(|(c, (((input, keys), dict), nulls))| {
                if dict.is_empty() {
                    // Null in every row: nothing to index.
                    return Ok(input.clone());
                }
                let values: ArrayRef = Arc::new(StringArray::from_iter_values(dict));
                let keys = Int32Array::new(keys.into(), nulls);
                DictionaryArray::<Int32Type>::try_new(keys, values)
                    .map(|d| Arc::new(d) as ArrayRef)
                    .map_err(|e| (c, e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TagTuples {
            columns,
            tuple_of,
            first_row,
        })
    }

    /// How many distinct tuples the rows have.
    #[cfg(test)]
    fn count(&self) -> usize {
        self.first_row.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{LargeStringArray, StringViewArray};

    fn strings(a: &ArrayRef) -> Vec<Option<String>> {
        let d = a.as_dictionary::<Int32Type>();
        let values = d.values().as_string::<i32>();
        (0..a.len())
            .map(|r| {
                d.is_valid(r)
                    .then(|| values.value(d.keys().value(r) as usize).to_owned())
            })
            .collect()
    }

    fn owned(v: &[Option<&str>]) -> Vec<Option<String>> {
        v.iter().map(|s| s.map(str::to_owned)).collect()
    }

    #[test]
    fn rows_with_the_same_tags_share_a_tuple() {
        let a: ArrayRef = Arc::new(StringArray::from(vec![
            Some("x"),
            Some("y"),
            Some("x"),
            None,
            Some("x"),
        ]));
        let b: ArrayRef = Arc::new(LargeStringArray::from(vec![
            Some("1"),
            Some("1"),
            Some("1"),
            Some("1"),
            Some("2"),
        ]));
        let t = TagTuples::build(&[&a, &b], 5).unwrap();
        assert_eq!(t.tuple_of, vec![0, 1, 0, 2, 3]);
        assert_eq!(t.first_row, vec![0, 1, 3, 4]);
        assert_eq!(t.count(), 4);
        assert_eq!(
            strings(&t.columns[0]),
            owned(&[Some("x"), Some("y"), Some("x"), None, Some("x")])
        );
        assert_eq!(t.columns[0].null_count(), 1);
        let d = t.columns[1].as_dictionary::<Int32Type>();
        assert_eq!(d.values().len(), 2, "each value once");
        assert_eq!(
            strings(&t.columns[1]),
            owned(&[Some("1"), Some("1"), Some("1"), Some("1"), Some("2")])
        );
    }

    #[test]
    fn value_boundaries_are_part_of_the_tuple() {
        // ("ab", "c") and ("a", "bc") concatenate alike; the length prefix keeps them apart,
        // and an empty value is not a null.
        let a: ArrayRef = Arc::new(StringArray::from(vec![
            Some("ab"),
            Some("a"),
            Some(""),
            None,
        ]));
        let b: ArrayRef = Arc::new(StringArray::from(vec![
            Some("c"),
            Some("bc"),
            Some("c"),
            Some("c"),
        ]));
        let t = TagTuples::build(&[&a, &b], 4).unwrap();
        assert_eq!(t.tuple_of, vec![0, 1, 2, 3]);
    }

    #[test]
    fn dictionary_and_view_inputs_read_as_their_strings() {
        let keys = arrow::array::Int8Array::from(vec![Some(1), Some(0), None, Some(1)]);
        let dict: ArrayRef = Arc::new(
            DictionaryArray::<arrow::datatypes::Int8Type>::try_new(
                keys,
                Arc::new(StringArray::from(vec!["p", "q"])),
            )
            .unwrap(),
        );
        let view: ArrayRef = Arc::new(StringViewArray::from(vec!["m", "m", "m", "m"]));
        let t = TagTuples::build(&[&dict, &view], 4).unwrap();
        assert_eq!(t.tuple_of, vec![0, 1, 2, 0]);
        assert_eq!(
            strings(&t.columns[0]),
            owned(&[Some("q"), Some("p"), None, Some("q")])
        );
    }

    #[test]
    fn a_column_null_everywhere_comes_back_as_it_was() {
        let a: ArrayRef = Arc::new(StringArray::from(vec![None::<&str>, None]));
        let t = TagTuples::build(&[&a], 2).unwrap();
        assert_eq!(t.tuple_of, vec![0, 0]);
        assert_eq!(t.columns[0].data_type(), &DataType::Utf8);
    }

    #[test]
    fn colliding_hashes_keep_tuples_apart() {
        let vals: Vec<String> = (0..2000).map(|i| format!("v{}", i % 77)).collect();
        let a: ArrayRef = Arc::new(StringArray::from_iter_values(vals.iter()));
        // Every tuple hashes alike: the chain must still tell them apart by their bytes.
        for t in [
            TagTuples::build_with(&[&a], vals.len(), |_| 42).unwrap(),
            TagTuples::build(&[&a], vals.len()).unwrap(),
        ] {
            assert_eq!(t.count(), 77);
            for (r, &tup) in t.tuple_of.iter().enumerate() {
                assert_eq!(vals[t.first_row[tup as usize] as usize], vals[r]);
            }
            assert_eq!(
                strings(&t.columns[0]),
                vals.iter().map(|v| Some(v.clone())).collect::<Vec<_>>()
            );
        }
    }
}
