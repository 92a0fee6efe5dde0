//! One integer per combination of tag values: the group key [`crate::groupkeys`] puts in place
//! of several tag columns.
//!
//! `annals_tag_key(name, fleet, model)` gives each distinct tuple of tag values (NULL
//! included) a dense `UInt32` id; `annals_tag_value(key)` gives one of the tuple's values back.
//! Both belong to one [`TagKeys`], which holds the ids of one rewritten aggregate: ids are
//! assigned in the order tuples are first met, so they mean nothing outside that plan, and
//! every id a key function returned can be decoded by its value functions, wherever the
//! optimizer puts them.
//!
//! A batch's tags are dictionaries, so most of the work is on dictionary indexes, not strings:
//! 1. each row's dictionary indexes are combined into a dense local id, a column at a time,
//!    through a table of (local id so far × the next column's dictionary size) entries;
//! 2. only one row per local id is looked up in the shared maps (its strings to value ids, its
//!    value ids to a tuple id), under the lock once per batch;
//! 3. each row gets its local id's tuple id.
//!
//! The maps grow with the distinct tag tuples of the input (at most the series of the tables
//! read), not with its rows.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use arrow::array::{Array, ArrayRef, AsArray, StringBuilder, UInt32Array};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int32Type, UInt32Type};
use datafusion::common::{exec_err, plan_err};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

/// Largest (local ids × dictionary size) table a batch combines through; past it, a hash map.
const DENSE_TABLE_MAX: usize = 1 << 16;

/// The ids of one rewritten aggregate, shared by its key and value functions.
#[derive(Debug, Clone)]
pub struct TagKeys {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    /// Per tag column (argument position).
    columns: Vec<ValueIds>,
    /// Tuple of value ids → tuple id.
    tuples: HashMap<Box<[u32]>, u32>,
    /// Tuple id → tuple of value ids.
    by_id: Vec<Box<[u32]>>,
}

/// The values of one tag column; id 0 is NULL.
#[derive(Debug)]
struct ValueIds {
    ids: HashMap<Box<str>, u32>,
    by_id: Vec<Option<Box<str>>>,
    /// The dictionaries of recent batches, oldest first.
    dictionaries: Vec<Dictionary>,
}

/// What one batch dictionary's slots stand for. Batches read from one column chunk share one
/// dictionary array, so after its first batch, a batch's strings are not looked at again.
#[derive(Debug)]
struct Dictionary {
    /// The dictionary's values, held so that they (and so their address, the identity
    /// compared) stay what they are while cached.
    values: ArrayRef,
    /// Slot → value id, `u32::MAX` until met; the last slot is NULL.
    value_ids: Vec<u32>,
    /// Slot → tuple id of a one-column key, `u32::MAX` until met.
    tuple_ids: Vec<u32>,
}

impl Dictionary {
    fn new(values: ArrayRef, slots: usize) -> Self {
        let mut value_ids = vec![u32::MAX; slots];
        if let Some(null) = value_ids.last_mut() {
            *null = 0;
        }
        Self {
            values,
            value_ids,
            tuple_ids: vec![u32::MAX; slots],
        }
    }
}

/// Dictionaries remembered per tag column (a few partitions read at once, each from its own
/// column chunk).
const CACHED_DICTIONARIES: usize = 8;

impl Default for ValueIds {
    fn default() -> Self {
        Self {
            ids: HashMap::new(),
            by_id: vec![None],
            dictionaries: Vec::new(),
        }
    }
}

impl ValueIds {
    fn id(&mut self, value: Option<&str>) -> Result<u32> {
        let Some(v) = value else { return Ok(0) };
        if let Some(&id) = self.ids.get(v) {
            return Ok(id);
        }
        let id = u32::try_from(self.by_id.len()).map_err(|_| {
            DataFusionError::ResourcesExhausted("annals_tag_key: too many tag values".into())
        })?;
        self.ids.insert(v.into(), id);
        self.by_id.push(Some(v.into()));
        Ok(id)
    }

    /// The cached entry of `column`'s dictionary, taken out, or a new one.
    fn take_dictionary(&mut self, column: &Slots) -> Dictionary {
        let slots = column.strings.len() + 1;
        match &column.dictionary {
            Some(d) => match self
                .dictionaries
                .iter()
                .position(|e| Arc::ptr_eq(&e.values, d))
            {
                Some(i) => self.dictionaries.remove(i),
                None => Dictionary::new(Arc::clone(d), slots),
            },
            None => Dictionary::new(Arc::clone(&column.strings), slots),
        }
    }

    /// Puts back (as the newest) an entry [`Self::take_dictionary`] gave.
    fn put_dictionary(&mut self, column: &Slots, entry: Dictionary) {
        if column.dictionary.is_none() {
            return;
        }
        if self.dictionaries.len() >= CACHED_DICTIONARIES {
            self.dictionaries.remove(0);
        }
        self.dictionaries.push(entry);
    }
}

impl TagKeys {
    /// Ids for a group of `columns` tag columns.
    pub fn new(columns: usize) -> Self {
        let state = State {
            columns: (0..columns).map(|_| ValueIds::default()).collect(),
            ..State::default()
        };
        Self {
            state: Arc::new(Mutex::new(state)),
        }
    }

    /// `annals_tag_key(args..)`: the id of each row's tuple of tag values.
    pub fn key(&self, args: Vec<Expr>) -> Expr {
        ScalarUDF::from(TagKey {
            keys: self.clone(),
            signature: Signature::any(args.len(), Volatility::Immutable),
        })
        .call(args)
    }

    /// `annals_tag_value(key)`: the `column`th value of each key's tuple, as `data_type` (a
    /// string type, or a dictionary of strings).
    pub fn value(&self, key: Expr, column: usize, data_type: DataType) -> Expr {
        ScalarUDF::from(TagValue {
            keys: self.clone(),
            column,
            data_type,
            signature: Signature::any(1, Volatility::Immutable),
        })
        .call(vec![key])
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>> {
        self.state
            .lock()
            .map_err(|_| DataFusionError::Internal("annals_tag_key: poisoned".into()))
    }

    /// Tuple ids of the rows of `columns` (equal lengths).
    fn encode(&self, columns: &[ArrayRef]) -> Result<UInt32Array> {
        let rows = columns.first().map_or(0, |c| c.len());
        let parts: Vec<Slots> = columns
            .iter()
            .map(dictionary_slots)
            .collect::<Result<_>>()?;
        // 1. Dense local ids, a column at a time (a one-column key's are its slots).
        let mut local = parts.first().map(|p| p.slots.clone()).unwrap_or_default();
        let mut width = parts.first().map_or(1, |p| p.strings.len() + 1);
        for p in parts.iter().skip(1) {
            let w = p.strings.len() + 1;
            let mut next = 0u32;
            if width.saturating_mul(w) <= DENSE_TABLE_MAX {
                let mut table = vec![u32::MAX; width * w];
                for (l, &slot) in local.iter_mut().zip(&p.slots) {
                    let e = &mut table[*l as usize * w + slot as usize];
                    if *e == u32::MAX {
                        *e = next;
                        next += 1;
                    }
                    *l = *e;
                }
            } else {
                let mut table: HashMap<u64, u32> = HashMap::new();
                for (l, &slot) in local.iter_mut().zip(&p.slots) {
                    let k = (u64::from(*l) << 32) | u64::from(slot);
                    *l = *table.entry(k).or_insert_with(|| {
                        next += 1;
                        next - 1
                    });
                }
            }
            width = next as usize;
        }
        // One row per local id.
        let mut first_row = vec![usize::MAX; width];
        for (row, &l) in local.iter().enumerate() {
            let f = &mut first_row[l as usize];
            if *f == usize::MAX {
                *f = row;
            }
        }
        // 2. Their tuple ids, under the lock.
        let mut tuple_of_local = vec![0u32; width];
        {
            let mut state = self.lock()?;
            let state = &mut *state;
            let mut dictionaries: Vec<Dictionary> = parts
                .iter()
                .zip(&mut state.columns)
                .map(|(p, c)| c.take_dictionary(p))
                .collect();
            let one_column = parts.len() == 1;
            let mut tuple = vec![0u32; parts.len()];
            let result = (|| -> Result<()> {
                for (l, &row) in first_row.iter().enumerate() {
                    if row == usize::MAX {
                        continue;
                    }
                    if one_column {
                        let known = dictionaries[0].tuple_ids[parts[0].slots[row] as usize];
                        if known != u32::MAX {
                            tuple_of_local[l] = known;
                            continue;
                        }
                    }
                    for (c, t) in tuple.iter_mut().enumerate() {
                        let slot = parts[c].slots[row] as usize;
                        let cached = &mut dictionaries[c].value_ids[slot];
                        if *cached == u32::MAX {
                            let s = parts[c].strings.as_string::<i32>();
                            let v = (slot < s.len() && s.is_valid(slot)).then(|| s.value(slot));
                            *cached = state.columns[c].id(v)?;
                        }
                        *t = *cached;
                    }
                    let id = match state.tuples.get(tuple.as_slice()) {
                        Some(&id) => id,
                        None => {
                            let id = u32::try_from(state.by_id.len()).map_err(|_| {
                                DataFusionError::ResourcesExhausted(
                                    "annals_tag_key: too many tag tuples".into(),
                                )
                            })?;
                            let t: Box<[u32]> = tuple.clone().into();
                            state.tuples.insert(t.clone(), id);
                            state.by_id.push(t);
                            id
                        }
                    };
                    if one_column {
                        dictionaries[0].tuple_ids[parts[0].slots[row] as usize] = id;
                    }
                    tuple_of_local[l] = id;
                }
                Ok(())
            })();
            for ((p, c), d) in parts.iter().zip(&mut state.columns).zip(dictionaries) {
                c.put_dictionary(p, d);
            }
            result?;
        }
        // 3. Each row's.
        debug_assert_eq!(local.len(), rows);
        Ok(UInt32Array::from_iter_values(
            local.iter().map(|&l| tuple_of_local[l as usize]),
        ))
    }

    /// The `column`th values of the tuples `keys`.
    fn decode(&self, keys: &UInt32Array, column: usize) -> Result<ArrayRef> {
        let state = self.lock()?;
        let values = &state.columns[column];
        let mut out = StringBuilder::with_capacity(keys.len(), keys.len() * 8);
        for k in keys.iter() {
            let value = match k {
                None => None,
                Some(k) => {
                    let Some(tuple) = state.by_id.get(k as usize) else {
                        return exec_err!("annals_tag_value: unknown key {k}");
                    };
                    values.by_id[tuple[column] as usize].as_deref()
                }
            };
            out.append_option(value);
        }
        Ok(Arc::new(out.finish()))
    }
}

/// One tag column of a batch, by dictionary slot.
struct Slots {
    /// Each row's slot: its dictionary index, or the dictionary's length for NULL.
    slots: Vec<u32>,
    /// The dictionary's values as `Utf8`.
    strings: ArrayRef,
    /// The column's own dictionary values, when it came as a dictionary: what identifies the
    /// dictionary from batch to batch.
    dictionary: Option<ArrayRef>,
}

/// A column's [`Slots`]. A column that is not a dictionary is dictionary-encoded first.
fn dictionary_slots(column: &ArrayRef) -> Result<Slots> {
    let encoded;
    let is_dictionary = column.as_any_dictionary_opt().is_some();
    let column = if is_dictionary {
        column
    } else {
        let t = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
        encoded = cast(column, &t)?;
        &encoded
    };
    let dict = column.as_any_dictionary();
    let strings = match dict.values().data_type() {
        DataType::Utf8 => Arc::clone(dict.values()),
        _ => cast(dict.values(), &DataType::Utf8)?,
    };
    let null_slot = u32::try_from(strings.len())
        .map_err(|_| DataFusionError::Internal("annals_tag_key: dictionary too large".into()))?;
    let mut slots: Vec<u32> = if strings.is_empty() {
        vec![null_slot; dict.keys().len()]
    } else if let Some(d) = column.as_dictionary_opt::<Int32Type>() {
        // The common case, without normalizing the keys to `usize` first.
        d.keys().values().iter().map(|&k| k as u32).collect()
    } else {
        dict.normalized_keys()
            .into_iter()
            .map(|k| k as u32)
            .collect()
    };
    if let Some(nulls) = dict.keys().logical_nulls() {
        for row in nulls
            .iter()
            .enumerate()
            .filter_map(|(i, v)| (!v).then_some(i))
        {
            slots[row] = null_slot;
        }
    }
    // A key may point past the values only under a NULL (whose slot was just replaced).
    if slots.iter().any(|&s| s > null_slot) {
        return exec_err!("annals_tag_key: dictionary key out of range");
    }
    Ok(Slots {
        slots,
        strings,
        dictionary: is_dictionary.then(|| Arc::clone(dict.values())),
    })
}

#[derive(Debug)]
struct TagKey {
    keys: TagKeys,
    signature: Signature,
}

#[derive(Debug)]
struct TagValue {
    keys: TagKeys,
    column: usize,
    data_type: DataType,
    signature: Signature,
}

// Two functions are the same only with the same ids.
impl PartialEq for TagKey {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.keys.state, &other.keys.state)
    }
}
impl Eq for TagKey {}
impl Hash for TagKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        Arc::as_ptr(&self.keys.state).hash(state);
    }
}
impl PartialEq for TagValue {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.keys.state, &other.keys.state)
            && self.column == other.column
            && self.data_type == other.data_type
    }
}
impl Eq for TagValue {}
impl Hash for TagValue {
    fn hash<H: Hasher>(&self, state: &mut H) {
        Arc::as_ptr(&self.keys.state).hash(state);
        self.column.hash(state);
    }
}

impl ScalarUDFImpl for TagKey {
    fn name(&self) -> &str {
        "annals_tag_key"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        if args.is_empty() {
            return plan_err!("annals_tag_key takes at least one tag column");
        }
        Ok(DataType::UInt32)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let columns = ColumnarValue::values_to_arrays(&args.args)?;
        if columns.len() != self.keys.lock()?.columns.len() {
            return exec_err!("annals_tag_key: wrong number of columns");
        }
        Ok(ColumnarValue::Array(Arc::new(self.keys.encode(&columns)?)))
    }
}

impl ScalarUDFImpl for TagValue {
    fn name(&self) -> &str {
        "annals_tag_value"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(self.data_type.clone())
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let keys = ColumnarValue::values_to_arrays(&args.args)?;
        let Some(keys) = keys
            .first()
            .and_then(|k| k.as_primitive_opt::<UInt32Type>())
        else {
            return exec_err!("annals_tag_value takes the UInt32 of annals_tag_key");
        };
        let strings = self.keys.decode(keys, self.column)?;
        Ok(ColumnarValue::Array(cast(&strings, &self.data_type)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{DictionaryArray, Int32Array, StringArray};

    fn dict(values: &[Option<&str>]) -> ArrayRef {
        Arc::new(
            values
                .iter()
                .copied()
                .collect::<DictionaryArray<Int32Type>>(),
        )
    }

    /// Keys equal exactly when the tuples are equal, across batches with different
    /// dictionaries (and plain strings), and decode back to the tuples.
    #[test]
    fn keys_are_equal_exactly_for_equal_tuples_and_decode_back() {
        let keys = TagKeys::new(2);
        let a = [
            Some("a"),
            Some("b"),
            None,
            Some("a"),
            Some("b"),
            None,
            Some("a"),
        ];
        let b = [
            Some("x"),
            Some("x"),
            Some("x"),
            None,
            Some("x"),
            None,
            Some("x"),
        ];
        let k1 = keys.encode(&[dict(&a), dict(&b)]).unwrap();
        // Same tuples, other dictionary orders; the second column as plain strings.
        let a2 = [None, Some("a"), Some("b"), Some("c")];
        let b2: ArrayRef = Arc::new(StringArray::from(vec![
            None,
            Some("x"),
            Some("x"),
            Some("x"),
        ]));
        let k2 = keys.encode(&[dict(&a2), b2]).unwrap();
        let tuples: Vec<(Option<&str>, Option<&str>)> = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (*x, *y))
            .chain([
                (None, None),
                (Some("a"), Some("x")),
                (Some("b"), Some("x")),
                (Some("c"), Some("x")),
            ])
            .collect();
        let all: Vec<u32> = k1.values().iter().chain(k2.values()).copied().collect();
        for i in 0..tuples.len() {
            for j in 0..tuples.len() {
                assert_eq!(
                    tuples[i] == tuples[j],
                    all[i] == all[j],
                    "{:?} {:?}",
                    tuples[i],
                    tuples[j]
                );
            }
        }
        let k = UInt32Array::from(all);
        let first = keys.decode(&k, 0).unwrap();
        let second = keys.decode(&k, 1).unwrap();
        for (i, (x, y)) in tuples.iter().enumerate() {
            let s = first.as_string::<i32>();
            let t = second.as_string::<i32>();
            assert_eq!(s.is_valid(i).then(|| s.value(i)), *x);
            assert_eq!(t.is_valid(i).then(|| t.value(i)), *y);
        }
    }

    /// Large dictionaries take the hash-map path and give the same keys.
    #[test]
    fn large_dictionaries_combine_through_a_map() {
        let keys = TagKeys::new(2);
        let n = 3000;
        let names: Vec<String> = (0..n).map(|i| format!("truck_{i}")).collect();
        let a: Vec<Option<&str>> = names.iter().map(|s| Some(s.as_str())).collect();
        let b: Vec<Option<&str>> = names.iter().rev().map(|s| Some(s.as_str())).collect();
        assert!((n + 1) * (n + 1) > DENSE_TABLE_MAX);
        let k = keys.encode(&[dict(&a), dict(&b)]).unwrap();
        let again = keys.encode(&[dict(&a), dict(&b)]).unwrap();
        assert_eq!(k, again);
        let distinct: std::collections::HashSet<u32> = k.values().iter().copied().collect();
        assert_eq!(distinct.len(), n);
        let back = keys.decode(&k, 1).unwrap();
        assert_eq!(back.as_string::<i32>().value(0), names[n - 1]);
    }

    /// A column of NULLs only (an empty dictionary) is one value.
    #[test]
    fn an_all_null_column_is_one_value() {
        let keys = TagKeys::new(2);
        let k = keys
            .encode(&[
                dict(&[None, None, None]),
                dict(&[Some("x"), Some("y"), Some("x")]),
            ])
            .unwrap();
        assert_eq!(k.value(0), k.value(2));
        assert_ne!(k.value(0), k.value(1));
    }

    /// Batches that share a dictionary array (as those of one Parquet column chunk do) reuse
    /// what its slots stand for, for one-column and several-column keys alike, past more
    /// dictionaries than are cached, and give the keys a fresh dictionary would.
    #[test]
    fn batches_sharing_a_dictionary_get_the_keys_of_fresh_ones() {
        let names: ArrayRef = Arc::new(StringArray::from(vec!["c", "a", "b"]));
        let shared = |keys: Vec<Option<i32>>| -> ArrayRef {
            Arc::new(DictionaryArray::new(
                Int32Array::from(keys),
                Arc::clone(&names),
            ))
        };
        let batches = [
            vec![Some(0), Some(1), None, Some(0)],
            vec![Some(2), Some(2), Some(1)],
            vec![None, Some(0), Some(2), Some(1)],
        ];
        let strings = |keys: &[Option<i32>]| -> Vec<Option<&str>> {
            keys.iter()
                .map(|k| k.map(|k| ["c", "a", "b"][k as usize]))
                .collect()
        };
        for columns in [1, 2] {
            let cached = TagKeys::new(columns);
            let fresh = TagKeys::new(columns);
            // More other dictionaries between uses than are cached, on the last round.
            for round in 0..3 {
                for keys in &batches {
                    let other = dict(&[Some("x"), Some("y"), None, Some("x")][..keys.len().min(4)]);
                    let args: Vec<ArrayRef> = match columns {
                        1 => vec![shared(keys.clone())],
                        _ => vec![shared(keys.clone()), other.clone()],
                    };
                    let plain: Vec<ArrayRef> = match columns {
                        1 => vec![dict(&strings(keys))],
                        _ => vec![dict(&strings(keys)), other],
                    };
                    assert_eq!(cached.encode(&args).unwrap(), fresh.encode(&plain).unwrap());
                    if round == 2 {
                        for i in 0..=CACHED_DICTIONARIES {
                            let filler = dict(&[Some(["p", "q"][i % 2]); 2]);
                            let args: Vec<ArrayRef> = vec![filler; columns];
                            cached.encode(&args).unwrap();
                            fresh.encode(&args).unwrap();
                        }
                    }
                }
            }
            let cached = cached.lock().unwrap();
            assert!(cached.columns[0].dictionaries.len() <= CACHED_DICTIONARIES);
        }
    }
}
