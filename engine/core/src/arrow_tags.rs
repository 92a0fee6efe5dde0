//! The tag columns of an Arrow batch, taken together as one tuple per row.
//!
//! Sensor batches repeat a few series many times: a batch of 5000 rows from 100 devices has 100
//! distinct tag tuples. [`TagTuples::build`] gives every distinct tuple (the values of all tag
//! columns of a row, nulls included) a number, in order of first appearance. Each tag column
//! then becomes a `Dictionary(Int32, Utf8)` array whose dictionary holds each value once (the
//! form the table stores), built once per new tuple instead of once per row; and the series
//! hash (`crate::prepare::series_hash`), which depends only on the table and the tags, is
//! computed once per tuple by the caller.
//!
//! A row's tuple is found in three passes. The first hashes the tag columns a column at a
//! time into one running hash per row: a plain string column hashes each row's value, a
//! dictionary column each of its values once and then looks a row's up by its key. The second
//! numbers the distinct hashes in order of first appearance. The third checks every row, a
//! column at a time, against the first row of its hash's tuple. Tuples are told apart by their
//! values, not by their hash alone: should two tuples share a hash, the third pass finds it
//! and the rows are numbered again one at a time, each compared value by value with the tuples
//! in its hash's chain.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, DictionaryArray, Int32Array, StringArray};
use arrow::buffer::NullBuffer;
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int32Type};
use arrow::error::ArrowError;
use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::prepare::Prehashed;

/// No tuple follows in a hash chain.
const CHAIN_END: u32 = u32::MAX;

/// What a null value adds to a row's hash (any value's hash may equal it: rows are compared
/// value by value before they share a tuple).
const NULL_HASH: u64 = 0x6e75_6c6c_7461_6721;

/// Folds the hash of a row's next tag value into the row's running hash; the order of the
/// columns counts.
#[inline]
fn fold(acc: u64, value: u64) -> u64 {
    (acc.rotate_left(23) ^ value).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// The words a value of at most 16 bytes is read as: together they cover every byte, so
/// two values of one length are equal exactly when their words are.
#[inline]
fn words(v: &[u8]) -> (u64, u64) {
    let n = v.len();
    if n >= 8 {
        let a = u64::from_le_bytes(v[..8].try_into().expect("8 bytes"));
        let b = u64::from_le_bytes(v[n - 8..].try_into().expect("8 bytes"));
        (a, b)
    } else if n >= 4 {
        let a = u32::from_le_bytes(v[..4].try_into().expect("4 bytes"));
        let b = u32::from_le_bytes(v[n - 4..].try_into().expect("4 bytes"));
        (u64::from(a), u64::from(b))
    } else if n > 0 {
        let a = u64::from(v[0]) | u64::from(v[n / 2]) << 8 | u64::from(v[n - 1]) << 16;
        (a, 0)
    } else {
        (0, 0)
    }
}

/// The keys of [`value_hash`], from the process's random key: without them a client cannot
/// choose tag values whose hashes collide (a batch of colliding tuples would be numbered
/// through a long chain, in time growing with the square of its rows).
#[derive(Clone, Copy)]
struct ValueKeys {
    a: u64,
    b: u64,
}

impl ValueKeys {
    fn of_process() -> ValueKeys {
        let key = crate::prepare::process_key();
        ValueKeys {
            a: key,
            b: key.rotate_left(32) ^ 0xe703_7ed1_a0b4_28db,
        }
    }
}

/// The hash of one tag value: values of at most 16 bytes (most tags) by one multiply of their
/// words, each xored with a key, longer ones through XXH3 seeded with a key.
#[inline]
fn value_hash(v: &[u8], keys: ValueKeys) -> u64 {
    if v.len() > 16 {
        return xxh3_64_with_seed(v, keys.a);
    }
    let (a, b) = words(v);
    let x = u128::from(a ^ keys.a) * u128::from(b ^ keys.b ^ v.len() as u64);
    (x as u64) ^ ((x >> 64) as u64)
}

/// Whether two values hold the same bytes; values of at most 16 bytes without a call.
#[inline]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && if a.len() <= 16 {
            words(a) == words(b)
        } else {
            a == b
        }
}

/// One input tag column, read a row at a time.
enum Values<'a> {
    Plain(&'a StringArray),
    Dict(&'a [i32], &'a StringArray),
}

/// One tag column as the passes read it.
struct Column<'a> {
    values: Values<'a>,
    /// Rows with no value (for a dictionary, also keys to a null value).
    nulls: Option<&'a NullBuffer>,
}

impl Column<'_> {
    fn is_null(&self, row: usize) -> bool {
        self.nulls.is_some_and(|b| b.is_null(row))
    }

    /// The value of a row known not to be null.
    #[inline]
    fn str(&self, row: usize) -> &str {
        match &self.values {
            Values::Plain(s) => s.value(row),
            Values::Dict(keys, s) => s.value(keys[row] as usize),
        }
    }

    fn value(&self, row: usize) -> Option<&str> {
        (!self.is_null(row)).then(|| self.str(row))
    }

    /// Whether rows `a` and `b` hold the same value (both null counts as the same).
    #[inline(always)]
    fn same(&self, a: usize, b: usize) -> bool {
        match (self.is_null(a), self.is_null(b)) {
            (true, true) => true,
            (false, false) => match &self.values {
                Values::Plain(s) => same_bytes(s.value(a).as_bytes(), s.value(b).as_bytes()),
                Values::Dict(keys, s) => {
                    keys[a] == keys[b]
                        || same_bytes(
                            s.value(keys[a] as usize).as_bytes(),
                            s.value(keys[b] as usize).as_bytes(),
                        )
                }
            },
            _ => false,
        }
    }

    /// Whether every row holds the value of its tuple's first row.
    fn matches_first(&self, tuple_of: &[u32], first_row: &[u32]) -> bool {
        let first = |t: u32| first_row[t as usize] as usize;
        match (&self.values, self.nulls) {
            // The common case without a call or a test per value.
            (Values::Plain(s), None) => {
                let (offs, data) = (s.value_offsets(), s.value_data());
                let at = |row: usize| &data[offs[row] as usize..offs[row + 1] as usize];
                tuple_of
                    .iter()
                    .enumerate()
                    .all(|(row, &t)| same_bytes(at(row), at(first(t))))
            }
            _ => tuple_of
                .iter()
                .enumerate()
                .all(|(row, &t)| self.same(row, first(t))),
        }
    }

    /// Folds each row's value hash into `hashes`.
    fn fold_into(&self, hashes: &mut [u64], hash: &impl Fn(&[u8]) -> u64) {
        match &self.values {
            Values::Plain(s) => {
                let (offs, data) = (s.value_offsets(), s.value_data());
                for (row, acc) in hashes.iter_mut().enumerate() {
                    let h = if self.is_null(row) {
                        NULL_HASH
                    } else {
                        hash(&data[offs[row] as usize..offs[row + 1] as usize])
                    };
                    *acc = fold(*acc, h);
                }
            }
            Values::Dict(keys, s) => {
                if s.len() > hashes.len() {
                    // A dictionary longer than the batch (one kept across a stream): hash
                    // the values the rows name.
                    for (row, acc) in hashes.iter_mut().enumerate() {
                        let h = match self.value(row) {
                            None => NULL_HASH,
                            Some(v) => hash(v.as_bytes()),
                        };
                        *acc = fold(*acc, h);
                    }
                    return;
                }
                // Each dictionary value once; a null value's slot is never read (its rows
                // are null).
                let value_hashes: Vec<u64> =
                    (0..s.len()).map(|k| hash(s.value(k).as_bytes())).collect();
                for (row, acc) in hashes.iter_mut().enumerate() {
                    let h = if self.is_null(row) {
                        NULL_HASH
                    } else {
                        value_hashes[keys[row] as usize]
                    };
                    *acc = fold(*acc, h);
                }
            }
        }
    }
}

/// The tuple of each row and the first row of each tuple, taking rows with one hash as one
/// tuple.
fn by_hash(hashes: &[u64]) -> (Vec<u32>, Vec<u32>) {
    let mut tuples: HashMap<u64, u32, Prehashed> = HashMap::default();
    let mut first_row: Vec<u32> = Vec::new();
    let tuple_of = hashes
        .iter()
        .enumerate()
        .map(|(row, &h)| {
            let next = first_row.len() as u32;
            *tuples.entry(h).or_insert_with(|| {
                first_row.push(row as u32);
                next
            })
        })
        .collect();
    (tuple_of, first_row)
}

/// The tuple of each row and the first row of each tuple, comparing each row value by value
/// with the tuples whose hash it has.
fn chained(cols: &[Column<'_>], hashes: &[u64]) -> (Vec<u32>, Vec<u32>) {
    let mut heads: HashMap<u64, u32, Prehashed> = HashMap::default();
    // The next tuple with the same hash, per tuple.
    let mut chain: Vec<u32> = Vec::new();
    let mut first_row: Vec<u32> = Vec::new();
    let mut tuple_of: Vec<u32> = Vec::with_capacity(hashes.len());
    for (row, &h) in hashes.iter().enumerate() {
        let mut at = heads.get(&h).copied().unwrap_or(CHAIN_END);
        while at != CHAIN_END {
            let first = first_row[at as usize] as usize;
            if cols.iter().all(|c| c.same(row, first)) {
                break;
            }
            at = chain[at as usize];
        }
        if at == CHAIN_END {
            at = first_row.len() as u32;
            first_row.push(row as u32);
            chain.push(heads.insert(h, at).unwrap_or(CHAIN_END));
        }
        tuple_of.push(at);
    }
    (tuple_of, first_row)
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
        let keys = ValueKeys::of_process();
        Self::build_with(inputs, n, |v| value_hash(v, keys))
    }

    /// [`TagTuples::build`] with the hash of a tag value given (tests force collisions).
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
        let cols: Vec<Column<'_>> = normalized
            .iter()
            .zip(&nulls)
            .map(|(a, nulls)| Column {
                values: match a.data_type() {
                    DataType::Utf8 => Values::Plain(a.as_string::<i32>()),
                    _ => {
                        let d = a.as_dictionary::<Int32Type>();
                        Values::Dict(d.keys().values(), d.values().as_string::<i32>())
                    }
                },
                nulls: nulls.as_ref(),
            })
            .collect();
        let width = cols.len();

        // Pass 1: each row's hash of its tag values, a column at a time.
        let mut hashes: Vec<u64> = vec![width as u64; n];
        for col in &cols {
            col.fold_into(&mut hashes, &hash);
        }

        // Pass 2: a tuple per distinct hash, numbered in order of first appearance. Pass 3: every
        // row checked against its tuple's first row, a column at a time. Should two different
        // tuples share a hash, the rows are numbered again one at a time, a chain per hash.
        let (mut tuple_of, mut first_row) = by_hash(&hashes);
        if !cols.iter().all(|c| c.matches_first(&tuple_of, &first_row)) {
            (tuple_of, first_row) = chained(&cols, &hashes);
        }
        // Per column: each value's dictionary key, and the values in key order (the order of
        // first use).
        let mut interned: Vec<HashMap<&str, i32>> = vec![HashMap::new(); width];
        let mut dict_values: Vec<Vec<&str>> = vec![Vec::new(); width];
        // Per column, each tuple's key (0 for null: the null buffer hides it).
        let mut tuple_keys: Vec<Vec<i32>> = vec![Vec::with_capacity(first_row.len()); width];
        for &row in &first_row {
            for (c, col) in cols.iter().enumerate() {
                let key = match col.value(row as usize) {
                    None => 0,
                    Some(v) => *interned[c].entry(v).or_insert_with(|| {
                        dict_values[c].push(v);
                        (dict_values[c].len() - 1) as i32
                    }),
                };
                tuple_keys[c].push(key);
            }
        }
        // Each column's keys: its key in the row's tuple.
        let keys: Vec<Vec<i32>> = tuple_keys
            .iter()
            .map(|of_tuple| tuple_of.iter().map(|&t| of_tuple[t as usize]).collect())
            .collect();

        let columns = normalized
            .iter()
            .zip(keys)
            .zip(dict_values)
            .zip(&nulls)
            .enumerate()
            .map(|(c, (((input, keys), dict), nulls))| {
                if dict.is_empty() {
                    // Null in every row: nothing to index.
                    return Ok(input.clone());
                }
                let values: ArrayRef = Arc::new(StringArray::from_iter_values(dict));
                let keys = Int32Array::new(keys.into(), nulls.clone());
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

    #[test]
    fn values_are_equal_exactly_when_their_words_are() {
        // Every length up to 20, and for each a change of any one byte: equal words must mean
        // equal bytes. The change (or one more byte) also changes the value's hash, short
        // values and long, and another key hashes the value differently.
        let keys = ValueKeys::of_process();
        let other_keys = ValueKeys {
            a: keys.a ^ 1,
            b: keys.b,
        };
        for len in 0..=20usize {
            let base: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            assert!(same_bytes(&base, &base.clone()));
            for at in 0..len {
                let mut other = base.clone();
                other[at] ^= 0x20;
                assert!(!same_bytes(&base, &other), "len {len}, byte {at}");
                assert_ne!(value_hash(&base, keys), value_hash(&other, keys));
            }
            let longer = [&base[..], b"x"].concat();
            assert!(!same_bytes(&base, &longer));
            assert_ne!(value_hash(&base, keys), value_hash(&longer, keys));
            assert_ne!(value_hash(&base, keys), value_hash(&base, other_keys));
        }
    }

    #[test]
    fn a_dictionary_longer_than_the_batch_gives_the_tuples_its_strings_give() {
        // One dictionary of 1,000 values (each twice) for 40 rows: the rows' values are
        // hashed through their keys, not the whole dictionary.
        let values: Vec<String> = (0..1000).map(|k| format!("v{}", k / 2)).collect();
        let keys: Vec<Option<i32>> = (0..40)
            .map(|r| (r % 9 != 4).then_some((r * 37) % 1000))
            .collect();
        let dict: ArrayRef = Arc::new(
            DictionaryArray::<Int32Type>::try_new(
                Int32Array::from(keys.clone()),
                Arc::new(StringArray::from_iter_values(values.iter())),
            )
            .unwrap(),
        );
        let col: Vec<Option<String>> = keys
            .iter()
            .map(|k| k.map(|k| values[k as usize].clone()))
            .collect();
        for t in [
            TagTuples::build(&[&dict], 40).unwrap(),
            TagTuples::build_with(&[&dict], 40, |_| 3).unwrap(),
        ] {
            assert_eq!(t.tuple_of, reference(std::slice::from_ref(&col), 40));
            assert_eq!(strings(&t.columns[0]), col);
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
