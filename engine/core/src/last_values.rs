//! The last-value cache: the newest rows of every series, kept at ingest.
//!
//! Each shard owns the series routed to it, so each shard has its own cache behind its own
//! lock: the writer updates it once per chunk (after the turn's fsync, with the chunk's newest
//! row per series worked out on the connection task) and queries read it. An entry points at a
//! row of an ingested chunk; to keep old chunks from being pinned by a few quiet series, a
//! table's entries are copied into one compact batch once as many rows have been ingested as
//! the cache holds (so the copying costs at most one row per row ingested).
//!
//! After a restart the cache starts cold; the first reader seeds it from the stored rows
//! ([`LastValues::seed`]) and marks the table warm.
//!
//! Reads materialize the cached rows into one batch (and, for `last_values('m', 'tag')`, the
//! caller derives the newest rows per key from it). That result is kept until the cache
//! changes, so dashboards polling a quiet table pay for it once: every change bumps one
//! counter, under the shard's lock and before the entries change, and a kept result is used
//! only while the counter still has the value it had before that result was read.

use arrow::array::{new_null_array, ArrayRef};
use arrow::compute::interleave_record_batch;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// Rows kept per series by default.
pub const DEFAULT_COUNT: usize = 1;
/// Rows ingested into a table before its cache is compacted, at least.
const COMPACT_ROWS_MIN: usize = 16_384;
/// Materialized reads kept (per table and key columns); all are dropped when it is reached.
const KEPT_READS_MAX: usize = 64;

/// One cached row.
#[derive(Debug, Clone)]
struct Entry {
    time: i64,
    batch: usize,
    row: u32,
}

/// A table's cache in one shard.
#[derive(Debug)]
struct TableCache {
    /// Batches entries point into, by id.
    batches: HashMap<usize, RecordBatch>,
    next_batch: usize,
    /// Per series: up to `count` newest rows, newest first.
    series: HashMap<u64, Vec<Entry>>,
    rows_since_compact: usize,
    compact_after: usize,
}

impl Default for TableCache {
    fn default() -> Self {
        Self {
            batches: HashMap::new(),
            next_batch: 0,
            series: HashMap::new(),
            rows_since_compact: 0,
            compact_after: COMPACT_ROWS_MIN,
        }
    }
}

impl TableCache {
    fn add_batch(&mut self, batch: RecordBatch) -> usize {
        let id = self.next_batch;
        self.next_batch += 1;
        self.batches.insert(id, batch);
        id
    }

    /// `seeded`: the row comes from storage and may already be cached from ingest.
    fn offer(&mut self, count: usize, series: u64, e: Entry, seeded: bool) {
        let v = self.series.entry(series).or_default();
        if seeded && v.iter().any(|x| x.time == e.time) {
            return;
        }
        // Newest first; a later row with the same time wins (it came later in the ledger).
        let pos = v.iter().position(|x| e.time >= x.time).unwrap_or(v.len());
        if pos < count {
            v.insert(pos, e);
            v.truncate(count);
        }
    }

    /// The widest schema among the cached batches: a table's older schemas are prefixes of
    /// its newer ones.
    fn widest_schema(&self) -> SchemaRef {
        self.batches
            .values()
            .map(|b| b.schema())
            .max_by_key(|s| s.fields().len())
            .expect("called after a batch was added")
    }

    fn entries(&self) -> usize {
        self.series.values().map(|v| v.len()).sum()
    }

    /// Copies every entry's row into one batch and drops the batches no longer needed.
    fn compact(&mut self, schema: &SchemaRef) {
        let mut ids: Vec<usize> = self.batches.keys().copied().collect();
        ids.sort_unstable();
        let widened: Vec<RecordBatch> = ids
            .iter()
            .map(|id| widen(&self.batches[id], schema))
            .collect();
        let pos: HashMap<usize, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        let mut picks = Vec::with_capacity(self.entries());
        for v in self.series.values() {
            for e in v {
                picks.push((pos[&e.batch], e.row as usize));
            }
        }
        let refs: Vec<&RecordBatch> = widened.iter().collect();
        let Ok(compact) = interleave_record_batch(&refs, &picks) else {
            return;
        };
        self.batches.clear();
        let id = self.add_batch(compact);
        let mut i = 0u32;
        for v in self.series.values_mut() {
            for e in v.iter_mut() {
                e.batch = id;
                e.row = i;
                i += 1;
            }
        }
        self.rows_since_compact = 0;
    }
}

/// Widens a batch of an older schema of the table (fewer columns) to `schema`.
pub fn widen(batch: &RecordBatch, schema: &SchemaRef) -> RecordBatch {
    if batch.schema() == *schema {
        return batch.clone();
    }
    let cols: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|f| match batch.column_by_name(f.name()) {
            Some(c) => c.clone(),
            None => new_null_array(f.data_type(), batch.num_rows()),
        })
        .collect();
    RecordBatch::try_new(schema.clone(), cols).expect("an older schema is a prefix of the table's")
}

/// The caches of every shard.
#[derive(Debug)]
pub struct LastValues {
    count: usize,
    shards: Vec<Mutex<HashMap<String, TableCache>>>,
    /// Tables that had rows before this start and have not been seeded yet.
    cold: Mutex<std::collections::HashSet<String>>,
    /// Bumped by every change of any table's entries (see the module docs).
    changes: AtomicU64,
    /// (table, key columns) → the `changes` value read before the result was made, the
    /// schema it was widened to, and the result.
    kept: Mutex<HashMap<(String, Vec<String>), KeptRead>>,
}

#[derive(Debug)]
struct KeptRead {
    changes: u64,
    schema: SchemaRef,
    batch: RecordBatch,
}

/// A chunk's newest row per series: (series hash, time, row).
pub type Newest = Vec<(u64, i64, u32)>;

impl LastValues {
    /// `existing`: tables that already have rows (the cache must be seeded before use).
    pub fn new(shards: usize, count: usize, existing: impl IntoIterator<Item = String>) -> Self {
        Self {
            count: count.max(1),
            shards: (0..shards).map(|_| Mutex::new(HashMap::new())).collect(),
            cold: Mutex::new(existing.into_iter().collect()),
            changes: AtomicU64::new(0),
            kept: Mutex::new(HashMap::new()),
        }
    }

    pub fn count(&self) -> usize {
        self.count
    }

    /// Offers a durable chunk's newest row per series.
    pub fn update(
        &self,
        shard: usize,
        table: &str,
        schema: &SchemaRef,
        batch: &RecordBatch,
        newest: &Newest,
    ) {
        if newest.is_empty() {
            return;
        }
        let mut caches = self.shards[shard].lock();
        self.changes.fetch_add(1, Ordering::SeqCst);
        let c = caches.entry(table.to_string()).or_default();
        let id = c.add_batch(batch.clone());
        for &(s, time, row) in newest {
            c.offer(
                self.count,
                s,
                Entry {
                    time,
                    batch: id,
                    row,
                },
                false,
            );
        }
        c.rows_since_compact += batch.num_rows();
        // Amortized: a compaction copies `entries` rows after at least as many were ingested.
        if c.rows_since_compact >= c.compact_after && c.batches.len() > 1 {
            c.compact(schema);
            c.compact_after = c.entries().max(COMPACT_ROWS_MIN);
        }
    }

    /// The tables whose cache is not seeded yet (sorted).
    pub fn cold_tables(&self) -> Vec<String> {
        let mut v: Vec<String> = self.cold.lock().iter().cloned().collect();
        v.sort_unstable();
        v
    }

    /// Whether the cache of `table` holds everything (seeded since start).
    pub fn is_warm(&self, table: &str) -> bool {
        !self.cold.lock().contains(table)
    }

    /// Adds rows read from storage (newest rows per series, with their series hashes and
    /// shards) and marks the table warm. Rows already superseded by newer cached ones are
    /// ignored.
    pub fn seed(&self, table: &str, batch: &RecordBatch, rows: &[(usize, u64, i64)]) {
        let mut by_shard: HashMap<usize, Vec<(u64, i64, u32)>> = HashMap::new();
        for (i, &(shard, s, t)) in rows.iter().enumerate() {
            by_shard.entry(shard).or_default().push((s, t, i as u32));
        }
        for (shard, newest) in by_shard {
            let mut caches = self.shards[shard].lock();
            self.changes.fetch_add(1, Ordering::SeqCst);
            let c = caches.entry(table.to_string()).or_default();
            let id = c.add_batch(batch.clone());
            for (s, time, row) in newest {
                c.offer(
                    self.count,
                    s,
                    Entry {
                        time,
                        batch: id,
                        row,
                    },
                    true,
                );
            }
            // The seed batch comes from a scan: its tag dictionaries hold the values of every
            // batch the scan read. Copy this shard's rows out once, so each read of the cache
            // interleaves small batches with small dictionaries. Ingest may have added columns
            // since the scan was planned: compact to the widest schema cached, not the seed's.
            let schema = c.widest_schema();
            c.compact(&schema);
        }
        self.cold.lock().remove(table);
    }

    /// `derive(rows)` for the cached rows of `table` (see [`rows`](Self::rows)), computed
    /// once per change of the cache: `keys` names the derivation (e.g. the key columns it
    /// groups by; the same `keys` must always mean the same `derive`).
    pub fn read<E>(
        &self,
        table: &str,
        schema: &SchemaRef,
        keys: &[String],
        derive: impl FnOnce(RecordBatch) -> Result<RecordBatch, E>,
    ) -> Result<RecordBatch, E> {
        let at = self.changes.load(Ordering::SeqCst);
        let id = (table.to_string(), keys.to_vec());
        if let Some(k) = self.kept.lock().get(&id) {
            if k.changes == at && k.schema == *schema {
                return Ok(k.batch.clone());
            }
        }
        let batch = derive(self.rows(table, schema))?;
        let mut kept = self.kept.lock();
        if kept.len() >= KEPT_READS_MAX {
            kept.clear();
        }
        kept.insert(
            id,
            KeptRead {
                changes: at,
                schema: schema.clone(),
                batch: batch.clone(),
            },
        );
        Ok(batch)
    }

    /// Every cached row of `table`, widened to `schema`, newest first per series.
    pub fn rows(&self, table: &str, schema: &SchemaRef) -> RecordBatch {
        let mut parts = Vec::new();
        for shard in &self.shards {
            let caches = shard.lock();
            let Some(c) = caches.get(table) else { continue };
            let mut ids: Vec<usize> = c.batches.keys().copied().collect();
            ids.sort_unstable();
            let widened: Vec<RecordBatch> =
                ids.iter().map(|id| widen(&c.batches[id], schema)).collect();
            let pos: HashMap<usize, usize> =
                ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
            let picks: Vec<(usize, usize)> = c
                .series
                .values()
                .flat_map(|v| v.iter().map(|e| (pos[&e.batch], e.row as usize)))
                .collect();
            let refs: Vec<&RecordBatch> = widened.iter().collect();
            if let Ok(b) = interleave_record_batch(&refs, &picks) {
                parts.push(b);
            }
        }
        arrow::compute::concat_batches(schema, &parts)
            .unwrap_or_else(|_| RecordBatch::new_empty(schema.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, TimestampNanosecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use std::cell::Cell;
    use std::sync::Arc;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new(
                "time",
                DataType::Timestamp(TimeUnit::Nanosecond, None),
                false,
            ),
            Field::new("v", DataType::Int64, true),
        ]))
    }

    fn batch(times: &[i64], values: &[i64]) -> RecordBatch {
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(TimestampNanosecondArray::from(times.to_vec())),
                Arc::new(Int64Array::from(values.to_vec())),
            ],
        )
        .unwrap()
    }

    fn values(b: &RecordBatch) -> Vec<i64> {
        let mut v = b
            .column(1)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .values()
            .to_vec();
        v.sort_unstable();
        v
    }

    #[test]
    fn reads_are_kept_until_the_cache_changes() {
        let lv = LastValues::new(2, 1, Vec::<String>::new());
        let s = schema();
        let derived = Cell::new(0);
        let read = |keys: &[String]| {
            lv.read::<()>("t", &s, keys, |b| {
                derived.set(derived.get() + 1);
                Ok(b)
            })
            .unwrap()
        };
        // Series 7 in shard 0, series 8 in shard 1.
        lv.update(0, "t", &s, &batch(&[1, 2], &[10, 20]), &vec![(7, 2, 1)]);
        lv.update(1, "t", &s, &batch(&[5], &[50]), &vec![(8, 5, 0)]);
        assert_eq!(values(&read(&[])), [20, 50]);
        assert_eq!(values(&read(&[])), [20, 50]);
        assert_eq!(derived.get(), 1, "the second read is the kept one");
        // Another derivation is kept apart.
        read(&["k".to_string()]);
        assert_eq!(derived.get(), 2);
        // A newer row of series 7: the next read sees it.
        lv.update(0, "t", &s, &batch(&[3], &[30]), &vec![(7, 3, 0)]);
        assert_eq!(values(&read(&[])), [30, 50]);
        assert_eq!(derived.get(), 3);
        // An older one changes nothing visible, but is still a change.
        lv.update(0, "t", &s, &batch(&[0], &[1]), &vec![(7, 0, 0)]);
        assert_eq!(values(&read(&[])), [30, 50]);
        assert_eq!(derived.get(), 4);
        // A wider schema (a column added to the table) is a different read.
        let wide: SchemaRef = Arc::new(Schema::new(
            s.fields()
                .iter()
                .cloned()
                .chain([Arc::new(Field::new("w", DataType::Int64, true))])
                .collect::<Vec<_>>(),
        ));
        let b = lv.read::<()>("t", &wide, &[], Ok).unwrap();
        assert_eq!(b.num_columns(), 3);
        assert_eq!(b.column(2).null_count(), 2);
    }

    #[test]
    fn a_seed_planned_before_a_new_column_keeps_the_column_of_ingested_rows() {
        let lv = LastValues::new(1, 1, ["t".to_string()]);
        let narrow = schema();
        let wide: SchemaRef = Arc::new(Schema::new(
            narrow
                .fields()
                .iter()
                .cloned()
                .chain([Arc::new(Field::new("w", DataType::Int64, true))])
                .collect::<Vec<_>>(),
        ));
        // Ingest adds column `w` (series 8) while a seed planned on the old schema runs.
        let ingested = RecordBatch::try_new(
            wide.clone(),
            vec![
                Arc::new(TimestampNanosecondArray::from(vec![9])),
                Arc::new(Int64Array::from(vec![90])),
                Arc::new(Int64Array::from(vec![99])),
            ],
        )
        .unwrap();
        lv.update(0, "t", &wide, &ingested, &vec![(8, 9, 0)]);
        lv.seed("t", &batch(&[1], &[10]), &[(0, 7, 1)]);
        assert!(lv.is_warm("t"));
        let b = lv.rows("t", &wide);
        assert_eq!(values(&b), [10, 90]);
        let w = b.column(2).as_any().downcast_ref::<Int64Array>().unwrap();
        let mut got: Vec<Option<i64>> = w.iter().collect();
        got.sort_unstable();
        assert_eq!(got, [None, Some(99)]);
    }

    #[test]
    fn compaction_keeps_the_newest_rows_of_every_series() {
        let lv = LastValues::new(1, 2, Vec::<String>::new());
        let s = schema();
        const ROWS: i64 = 6_000;
        // Six batches; in batch b, series k's newest row is row 100 * k + b.
        for b in 0..6i64 {
            let times: Vec<i64> = (0..ROWS).map(|r| b * ROWS + r).collect();
            let values: Vec<i64> = times.iter().map(|t| t * 10).collect();
            let newest: Newest = (1..=3u64)
                .map(|k| {
                    let row = 100 * k as i64 + b;
                    (k, b * ROWS + row, row as u32)
                })
                .collect();
            lv.update(0, "t", &s, &batch(&times, &values), &newest);
        }
        // Compacted after the third batch and again after the sixth (18,000 rows each time).
        assert_eq!(lv.shards[0].lock()["t"].batches.len(), 1);
        let mut want: Vec<i64> = (4..6i64)
            .flat_map(|b| (1..=3i64).map(move |k| (b * ROWS + 100 * k + b) * 10))
            .collect();
        want.sort_unstable();
        assert_eq!(values(&lv.rows("t", &s)), want);
        // A newer row after compaction replaces the older of its series' two.
        lv.update(
            0,
            "t",
            &s,
            &batch(&[1 << 40], &[-1]),
            &vec![(2, 1 << 40, 0)],
        );
        let got = values(&lv.rows("t", &s));
        assert_eq!(got.len(), 6);
        assert!(got.contains(&-1));
        assert!(!got.contains(&((4 * ROWS + 200 + 4) * 10)));
    }
}
