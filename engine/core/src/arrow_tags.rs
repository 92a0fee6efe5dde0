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
//! When every tag column comes as a dictionary (pyarrow's `dictionary_encode`, categorical
//! columns), a row's dictionary keys name its tuple without a string being read: each distinct
//! tuple of keys is looked up once as tag bytes, since two keys of one column may hold the same
//! value (several key tuples can then share one tuple).
//!
//! Tuples (and key tuples) are told apart by their bytes, not by their hash alone: two whose
//! hashes collide stay two (a chain per hash, [`ByteSet`]).

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, DictionaryArray, Int32Array, StringArray};
use arrow::buffer::NullBuffer;
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int32Type};
use arrow::error::ArrowError;
use xxhash_rust::xxh3::xxh3_64;

use crate::prepare::Prehashed;

/// No tuple follows in a hash chain.
const CHAIN_END: u32 = u32::MAX;

/// Distinct byte strings, numbered in order of insertion, found by a hash given with them.
/// Strings whose hashes collide stay apart: each hash heads a chain of the strings with it.
#[derive(Default)]
struct ByteSet {
    heads: HashMap<u64, u32, Prehashed>,
    /// The next string with the same hash, per string.
    chain: Vec<u32>,
    bytes: Vec<u8>,
    /// Where each string starts in `bytes`, and one past the last.
    bounds: Vec<usize>,
}

impl ByteSet {
    /// The number of `s` (whose hash is `h`), and whether it was inserted just now.
    fn find_or_insert(&mut self, h: u64, s: &[u8]) -> (u32, bool) {
        if self.bounds.is_empty() {
            self.bounds.push(0);
        }
        let mut at = self.heads.get(&h).copied().unwrap_or(CHAIN_END);
        while at != CHAIN_END {
            let i = at as usize;
            if &self.bytes[self.bounds[i]..self.bounds[i + 1]] == s {
                return (at, false);
            }
            at = self.chain[i];
        }
        let i = self.chain.len() as u32;
        self.bytes.extend_from_slice(s);
        self.bounds.push(self.bytes.len());
        self.chain
            .push(self.heads.insert(h, i).unwrap_or(CHAIN_END));
        (i, true)
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
        // A row's tag bytes: per column 0 for null, or 1, length and value.
        let tag_bytes = |row: usize, out: &mut Vec<u8>| {
            out.clear();
            for c in 0..width {
                match value(c, row) {
                    None => out.push(0),
                    Some(v) => {
                        out.push(1);
                        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
                        out.extend_from_slice(v.as_bytes());
                    }
                }
            }
        };
        // When every column is a dictionary, a row's keys (u32::MAX for null) name its tuple
        // without reading a string: only a key tuple not seen before is read as tag bytes (two
        // keys of one column may hold the same value, so key tuples map to tuples, not 1:1).
        let dict_keys: Option<Vec<(&[i32], Option<&NullBuffer>)>> = values
            .iter()
            .zip(&nulls)
            .map(|(v, n)| match v {
                Values::Dict(keys, _) => Some((*keys, n.as_ref())),
                Values::Plain(_) => None,
            })
            .collect();

        let mut tuples = ByteSet::default();
        let mut first_row: Vec<u32> = Vec::new();
        // Per column: each value's dictionary key, and the values in key order.
        let mut interned: Vec<HashMap<&str, i32>> = vec![HashMap::new(); width];
        let mut dict_values: Vec<Vec<&str>> = vec![Vec::new(); width];
        // Each tuple's key per column (0 for null: the null buffer hides it).
        let mut tuple_keys: Vec<i32> = Vec::new();
        let mut tuple_of: Vec<u32> = Vec::with_capacity(n);
        // The tuple of `row`, numbering it (and interning its values) when it is new.
        let mut tuple_at = |row: usize, row_bytes: &mut Vec<u8>| -> u32 {
            tag_bytes(row, row_bytes);
            let (t, new) = tuples.find_or_insert(hash(row_bytes), row_bytes);
            if new {
                first_row.push(row as u32);
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
            }
            t
        };

        let mut row_bytes: Vec<u8> = Vec::with_capacity(256);
        match dict_keys {
            Some(dict_keys) => {
                let mut key_tuples = ByteSet::default();
                let mut key_tuple_to_tuple: Vec<u32> = Vec::new();
                let mut key_bytes: Vec<u8> = Vec::with_capacity(4 * width);
                for row in 0..n {
                    key_bytes.clear();
                    for (keys, nulls) in &dict_keys {
                        let k = if nulls.is_some_and(|b| b.is_null(row)) {
                            u32::MAX
                        } else {
                            keys[row] as u32
                        };
                        key_bytes.extend_from_slice(&k.to_le_bytes());
                    }
                    let (k, new) = key_tuples.find_or_insert(hash(&key_bytes), &key_bytes);
                    if new {
                        key_tuple_to_tuple.push(tuple_at(row, &mut row_bytes));
                    }
                    tuple_of.push(key_tuple_to_tuple[k as usize]);
                }
            }
            None => {
                for row in 0..n {
                    let t = tuple_at(row, &mut row_bytes);
                    tuple_of.push(t);
                }
            }
        }
        // Each column's keys: its key in the row's tuple.
        let keys: Vec<Vec<i32>> = (0..width)
            .map(|c| {
                tuple_of
                    .iter()
                    .map(|&t| tuple_keys[t as usize * width + c])
                    .collect()
            })
            .collect();

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

    /// Tuples numbered by first appearance, the obvious way.
    fn reference(cols: &[Vec<Option<String>>], n: usize) -> Vec<u32> {
        let mut seen: HashMap<Vec<Option<String>>, u32> = HashMap::new();
        (0..n)
            .map(|r| {
                let tuple: Vec<Option<String>> = cols.iter().map(|c| c[r].clone()).collect();
                let next = seen.len() as u32;
                *seen.entry(tuple).or_insert(next)
            })
            .collect()
    }

    #[test]
    fn tuples_are_those_a_map_of_whole_tuples_gives() {
        // Rounds over 40 devices (one of whose second tag changes), then runs of one device,
        // then a scramble, with nulls: the tuples are those a map of whole tuples gives.
        let n = 4000;
        let device = |r: usize| -> usize {
            match r {
                0..=1999 => r % 40,
                2000..=2999 => (r - 2000) / 25,
                _ => (r * 7919 / 13) % 40,
            }
        };
        let a: Vec<Option<String>> = (0..n)
            .map(|r| (r % 97 != 3).then(|| format!("d{}", device(r))))
            .collect();
        let b: Vec<Option<String>> = (0..n)
            .map(|r| {
                Some(format!(
                    "m{}",
                    device(r) % 3 + usize::from(r > 1500 && device(r) == 5)
                ))
            })
            .collect();
        let cols = [a, b];
        let arrays: Vec<ArrayRef> = cols
            .iter()
            .map(|c| Arc::new(StringArray::from(c.clone())) as ArrayRef)
            .collect();
        let t = TagTuples::build(&[&arrays[0], &arrays[1]], n).unwrap();
        let expect = reference(&cols, n);
        assert_eq!(t.tuple_of, expect);
        assert!(t.count() > 40, "{} tuples", t.count());
        for (c, col) in cols.iter().enumerate() {
            assert_eq!(&strings(&t.columns[c]), col);
        }
        for (tup, &first) in t.first_row.iter().enumerate() {
            assert_eq!(expect[first as usize], tup as u32);
            assert!(expect[..first as usize].iter().all(|&e| e != tup as u32));
        }
    }

    #[test]
    fn sliced_and_mixed_inputs_give_the_tuples_their_strings_give() {
        // A plain column and a dictionary column (the row-at-a-time path takes both), each a
        // slice of a longer array, with nulls and values long and short.
        let n = 600;
        let a: Vec<Option<String>> = (0..n + 50)
            .map(|r| (r % 11 != 4).then(|| format!("{}{}", "x".repeat(r % 40), r % 9)))
            .collect();
        let b: Vec<Option<String>> = (0..n + 50)
            .map(|r| (r % 13 != 2).then(|| format!("m{}", r % 5)))
            .collect();
        let plain: ArrayRef = Arc::new(StringArray::from(a.clone()));
        let dict: ArrayRef = Arc::new(
            b.iter()
                .map(|v| v.as_deref())
                .collect::<DictionaryArray<Int32Type>>(),
        );
        let (plain, dict) = (plain.slice(30, n), dict.slice(30, n));
        let cols = [a[30..30 + n].to_vec(), b[30..30 + n].to_vec()];
        let t = TagTuples::build(&[&plain, &dict], n).unwrap();
        assert_eq!(t.tuple_of, reference(&cols, n));
        for (c, col) in cols.iter().enumerate() {
            assert_eq!(&strings(&t.columns[c]), col);
        }
    }

    /// The same column as `Utf8` and as a dictionary whose values repeat (keys 2k and 2k + 1
    /// name the same string) and include a null value.
    fn plain_and_dict(vals: &[Option<String>]) -> (ArrayRef, ArrayRef) {
        let plain: ArrayRef = Arc::new(StringArray::from(vals.to_vec()));
        let mut distinct: Vec<&str> = vals.iter().flatten().map(String::as_str).collect();
        distinct.sort_unstable();
        distinct.dedup();
        // Values: each distinct string twice, then a null value.
        let mut dict_values: Vec<Option<&str>> =
            distinct.iter().flat_map(|v| [Some(*v), Some(*v)]).collect();
        dict_values.push(None);
        let null_value = (dict_values.len() - 1) as i32;
        let keys: Vec<Option<i32>> = vals
            .iter()
            .enumerate()
            .map(|(r, v)| match v {
                // Nulls both ways: a null key, or a key to the null value.
                None if r % 2 == 0 => None,
                None => Some(null_value),
                Some(v) => {
                    let k = distinct.binary_search(&v.as_str()).unwrap() as i32;
                    Some(2 * k + (r % 2) as i32)
                }
            })
            .collect();
        let dict: ArrayRef = Arc::new(
            DictionaryArray::<Int32Type>::try_new(
                Int32Array::from(keys),
                Arc::new(StringArray::from(dict_values)),
            )
            .unwrap(),
        );
        (plain, dict)
    }

    #[test]
    fn dictionary_keys_give_the_tuples_their_strings_give() {
        let n = 3000;
        let col = |m: usize, salt: usize| -> Vec<Option<String>> {
            (0..n)
                .map(|r| {
                    (!((r * salt) % 97).is_multiple_of(m)).then(|| format!("s{}", (r * salt) % m))
                })
                .collect()
        };
        let (a_plain, a_dict) = plain_and_dict(&col(7, 13));
        let (b_plain, b_dict) = plain_and_dict(&col(5, 31));
        let plain = TagTuples::build(&[&a_plain, &b_plain], n).unwrap();
        let dict = TagTuples::build(&[&a_dict, &b_dict], n).unwrap();
        let colliding = TagTuples::build_with(&[&a_dict, &b_dict], n, |_| 7).unwrap();
        assert!(plain.count() > 10, "{} tuples", plain.count());
        for t in [&dict, &colliding] {
            assert_eq!(t.tuple_of, plain.tuple_of);
            assert_eq!(t.first_row, plain.first_row);
            for c in 0..2 {
                assert_eq!(strings(&t.columns[c]), strings(&plain.columns[c]));
                let values = t.columns[c].as_dictionary::<Int32Type>().values().len();
                let expect = plain.columns[c].as_dictionary::<Int32Type>().values().len();
                assert_eq!(
                    values, expect,
                    "each value once, whatever the input repeats"
                );
            }
        }
    }
}
