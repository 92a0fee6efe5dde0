//! A tag column's Parquet column chunk, encoded from its Arrow dictionary.
//!
//! A block's tag column arrives as `Dictionary(Int32, Utf8)`, in pieces (the chunks the block
//! was written in), each with a few distinct values and one key per row. Parquet stores the
//! same shape (a dictionary page, then data pages of indices into it), but parquet-rs's writer
//! does not reuse an Arrow dictionary: it interns every row's string again (hashing and
//! comparing its bytes) to build its own, which was the largest single cost of sealing TSBS
//! rows. Here the Parquet dictionary is built from the pieces' Arrow ones (each dictionary
//! value looked at once, duplicates merged), a row costs one array lookup, and the pages are
//! laid out exactly as parquet-rs lays them out for this column:
//!
//! - one dictionary page, `PLAIN` (each value as `u32` length and bytes), first;
//! - data pages (format v1) of [`PAGE_ROWS`](crate::block_file::PAGE_ROWS) rows, each the
//!   definition levels (nullable columns: `u32` byte length, then the RLE / bit-packed hybrid at
//!   bit width 1) followed by the bit width of the indices and their RLE / bit-packed hybrid,
//!   the page Snappy-compressed as a whole;
//! - no statistics (tag columns carry none, see `block_file::writer_properties`), and an offset
//!   index with every page's location, as parquet-rs writes for every column.
//!
//! The chunk is handed to parquet-rs's row-group writer as an already-encoded column
//! (`SerializedRowGroupWriter::append_column`), which writes it and its page index like any
//! other. The tests read chunks back through parquet-rs's Arrow reader, with and without the
//! page index, for every shape a block's tag column can take.

use arrow::array::{Array, AsArray, BooleanBufferBuilder, DictionaryArray};
use arrow::buffer::NullBuffer;
use arrow::datatypes::Int32Type;
use bytes::Bytes;
use parquet::basic::{Compression, Encoding};
use parquet::column::page::{CompressedPage, Page, PageWriter};
use parquet::column::writer::ColumnCloseResult;
use parquet::errors::{ParquetError, Result};
use parquet::file::metadata::ColumnChunkMetaData;
use parquet::file::page_index::offset_index::{OffsetIndexMetaData, PageLocation};
use parquet::file::writer::{SerializedPageWriter, TrackedWrite};
use parquet::schema::types::ColumnDescPtr;

/// No Parquet index assigned yet to an Arrow dictionary slot.
const UNSEEN: u32 = u32::MAX;

/// The encoded chunk: its bytes (dictionary page first) and what the row-group writer records.
pub(crate) struct TagChunk<'a> {
    pub(crate) bytes: Bytes,
    pub(crate) close: ColumnCloseResult,
    /// The Parquet dictionary: the column's distinct values, each once.
    pub(crate) distinct: Vec<&'a str>,
}

/// Encodes `parts` (the pieces of one `Dictionary(Int32, Utf8)` column, in row order, each
/// with its own dictionary) as the column chunk `descr` names, in data pages of `page_rows`
/// rows. `None` when the column is not such a dictionary or has no value at all: the caller
/// then writes it the ordinary way.
pub(crate) fn encode<'a>(
    descr: &ColumnDescPtr,
    parts: &[&'a dyn Array],
    page_rows: usize,
) -> Result<Option<TagChunk<'a>>> {
    let mut dicts: Vec<(&'a DictionaryArray<Int32Type>, Option<NullBuffer>)> =
        Vec::with_capacity(parts.len());
    for &part in parts {
        let Some(dict) = part.as_dictionary_opt::<Int32Type>() else {
            return Ok(None);
        };
        if dict.values().as_string_opt::<i32>().is_none() {
            return Ok(None);
        }
        dicts.push((dict, dict.logical_nulls()));
    }
    let rows: usize = dicts.iter().map(|(d, _)| d.len()).sum();
    let nulls: usize = dicts
        .iter()
        .map(|(_, v)| v.as_ref().map_or(0, NullBuffer::null_count))
        .sum();
    if rows == 0 || nulls == rows {
        return Ok(None);
    }
    if nulls > 0 && descr.max_def_level() == 0 {
        return Err(ParquetError::General(format!(
            "column {} is required but has nulls",
            descr.path()
        )));
    }
    // The whole column's validity, when some row is null.
    let validity = (nulls > 0).then(|| {
        let mut b = BooleanBufferBuilder::new(rows);
        for (d, v) in &dicts {
            match v {
                Some(v) => b.append_buffer(v.inner()),
                None => b.append_n(d.len(), true),
            }
        }
        b.finish()
    });
    let (indices, distinct) = parquet_indices(&dicts, rows - nulls);
    let bit_width = bit_width(distinct.len());

    let mut sink = TrackedWrite::new(Vec::new());
    let mut locations = Vec::with_capacity(rows.div_ceil(page_rows));
    let mut uncompressed_total = 0usize;
    let mut compressed_total = 0usize;
    let mut snappy = snap::raw::Encoder::new();
    let mut compress = |raw: &[u8]| -> Result<Bytes> {
        snappy
            .compress_vec(raw)
            .map(Bytes::from)
            .map_err(|e| ParquetError::External(Box::new(e)))
    };
    let data_page_offset;
    {
        let mut pages = SerializedPageWriter::new(&mut sink);
        let mut raw = Vec::new();
        for v in &distinct {
            raw.extend_from_slice(&(v.len() as u32).to_le_bytes());
            raw.extend_from_slice(v.as_bytes());
        }
        let dict_page = Page::DictionaryPage {
            buf: compress(&raw)?,
            num_values: distinct.len() as u32,
            encoding: Encoding::PLAIN,
            is_sorted: false,
        };
        let spec = pages.write_page(CompressedPage::new(dict_page, raw.len()))?;
        uncompressed_total += spec.uncompressed_size;
        compressed_total += spec.compressed_size;
        data_page_offset = spec.offset + spec.bytes_written;

        let mut levels = Vec::new();
        // Where the next page's indices start: they are those of non-null rows only.
        let mut next_index = 0usize;
        for start in (0..rows).step_by(page_rows) {
            let end = (start + page_rows).min(rows);
            raw.clear();
            let mut count = end - start;
            match &validity {
                _ if descr.max_def_level() == 0 => {}
                None => {
                    // Every row defined: one run of ones.
                    raw.extend_from_slice(&[0; 4]);
                    varint(((end - start) as u64) << 1, &mut raw);
                    raw.push(1);
                }
                Some(v) => {
                    levels.clear();
                    levels.extend((start..end).map(|r| u32::from(v.value(r))));
                    count = levels.iter().filter(|&&l| l == 1).count();
                    raw.extend_from_slice(&[0; 4]);
                    rle_hybrid(&levels, 1, &mut raw);
                }
            }
            if descr.max_def_level() > 0 {
                // The levels' byte length comes first.
                let len = (raw.len() - 4) as u32;
                raw[..4].copy_from_slice(&len.to_le_bytes());
            }
            raw.push(bit_width);
            rle_hybrid(
                &indices[next_index..next_index + count],
                bit_width,
                &mut raw,
            );
            next_index += count;
            let page = Page::DataPage {
                buf: compress(&raw)?,
                num_values: (end - start) as u32,
                encoding: Encoding::RLE_DICTIONARY,
                def_level_encoding: Encoding::RLE,
                rep_level_encoding: Encoding::RLE,
                statistics: None,
            };
            let spec = pages.write_page(CompressedPage::new(page, raw.len()))?;
            uncompressed_total += spec.uncompressed_size;
            compressed_total += spec.compressed_size;
            locations.push(PageLocation {
                offset: spec.offset as i64,
                compressed_page_size: spec.bytes_written as i32,
                first_row_index: start as i64,
            });
        }
        pages.close()?;
    }
    let bytes = Bytes::from(sink.into_inner()?);
    debug_assert_eq!(bytes.len(), compressed_total);
    let metadata = ColumnChunkMetaData::builder(descr.clone())
        .set_compression(Compression::SNAPPY)
        .set_encodings(vec![
            Encoding::PLAIN,
            Encoding::RLE,
            Encoding::RLE_DICTIONARY,
        ])
        .set_total_compressed_size(compressed_total as i64)
        .set_total_uncompressed_size(uncompressed_total as i64)
        .set_num_values(rows as i64)
        .set_dictionary_page_offset(Some(0))
        .set_data_page_offset(data_page_offset as i64)
        .build()?;
    Ok(Some(TagChunk {
        close: ColumnCloseResult {
            bytes_written: bytes.len() as u64,
            rows_written: rows as u64,
            metadata,
            bloom_filter: None,
            column_index: None,
            offset_index: Some(OffsetIndexMetaData {
                page_locations: locations,
                unencoded_byte_array_data_bytes: None,
            }),
        },
        bytes,
        distinct,
    }))
}

/// The Parquet dictionary index of each non-null row (`valid` of them), in row order, and the
/// Parquet dictionary: each distinct value once, in order of first use. Equal values in several
/// slots (of one part's dictionary or of several parts') share one index; slots no row uses
/// get none.
fn parquet_indices<'a>(
    parts: &[(&'a DictionaryArray<Int32Type>, Option<NullBuffer>)],
    valid: usize,
) -> (Vec<u32>, Vec<&'a str>) {
    let mut by_value: std::collections::HashMap<&'a [u8], u32> = std::collections::HashMap::new();
    let mut distinct: Vec<&'a str> = Vec::new();
    let mut indices = Vec::with_capacity(valid);
    let mut slot_index = Vec::new();
    for (dict, validity) in parts {
        let values = dict.values().as_string::<i32>();
        let keys = dict.keys().values();
        slot_index.clear();
        slot_index.resize(values.len(), UNSEEN);
        let mut index_of = |slot: usize| {
            let ix = slot_index[slot];
            if ix != UNSEEN {
                return ix;
            }
            let value = values.value(slot);
            let ix = *by_value.entry(value.as_bytes()).or_insert_with(|| {
                distinct.push(value);
                (distinct.len() - 1) as u32
            });
            slot_index[slot] = ix;
            ix
        };
        match validity {
            None => indices.extend(keys.iter().map(|&k| index_of(k as usize))),
            Some(v) => indices.extend(
                keys.iter()
                    .zip(v.iter())
                    .filter(|(_, valid)| *valid)
                    .map(|(&k, _)| index_of(k as usize)),
            ),
        }
    }
    debug_assert_eq!(indices.len(), valid);
    (indices, distinct)
}

/// Bits per index into a dictionary of `len` values (0 for a dictionary of one).
fn bit_width(len: usize) -> u8 {
    (usize::BITS - len.saturating_sub(1).leading_zeros()) as u8
}

/// Appends `v` as an unsigned LEB128 varint.
fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Shortest repeat worth a run of its own: one group of bit-packed values.
const RUN_MIN: usize = 8;

/// Appends `values` (each below `2^bit_width`) in Parquet's RLE / bit-packed hybrid encoding
/// (the Parquet format's `Encodings.md`): repeats of at least [`RUN_MIN`] values as RLE runs,
/// everything between them bit-packed in groups of 8 (least significant bit first; the last
/// group of the input padded with zeros, which the page's value count leaves unread).
fn rle_hybrid(values: &[u32], bit_width: u8, out: &mut Vec<u8>) {
    let value_bytes = usize::from(bit_width).div_ceil(8);
    let run_at = |i: usize| -> usize {
        let v = values[i];
        values[i..].iter().take_while(|&&x| x == v).count()
    };
    let mut i = 0;
    // The length of the run at `i` when the bit-packed groups before it already measured it.
    let mut measured = None;
    while i < values.len() {
        let run = measured.take().unwrap_or_else(|| run_at(i));
        if run >= RUN_MIN {
            varint((run as u64) << 1, out);
            out.extend_from_slice(&values[i].to_le_bytes()[..value_bytes]);
            i += run;
            continue;
        }
        // Bit-packed groups of 8 until a long repeat starts at a group's end.
        let mut end = i;
        loop {
            end = (end + 8).min(values.len());
            if end == values.len() {
                break;
            }
            let run = run_at(end);
            if run >= RUN_MIN {
                measured = Some(run);
                break;
            }
        }
        let groups = (end - i).div_ceil(8);
        varint(((groups as u64) << 1) | 1, out);
        for group in values[i..end].chunks(8) {
            pack_group(group, bit_width, out);
        }
        i = end;
    }
}

/// Appends 8 values (fewer at the end of the input: zeros pad the group) bit-packed at
/// `bit_width` bits each, least significant bit first: exactly `bit_width` bytes.
#[inline]
fn pack_group(group: &[u32], bit_width: u8, out: &mut Vec<u8>) {
    debug_assert!(group.len() <= 8);
    let width = u32::from(bit_width);
    if width <= 8 {
        // The whole group in one word (dictionaries of up to 256 values: nearly every tag).
        let mut acc = 0u64;
        for (j, &v) in group.iter().enumerate() {
            acc |= u64::from(v) << (j as u32 * width);
        }
        out.extend_from_slice(&acc.to_le_bytes()[..usize::from(bit_width)]);
        return;
    }
    let mut acc = 0u64;
    let mut bits = 0u32;
    for j in 0..8 {
        acc |= u64::from(group.get(j).copied().unwrap_or(0)) << bits;
        bits += width;
        while bits >= 8 {
            out.push(acc as u8);
            acc >>= 8;
            bits -= 8;
        }
    }
    debug_assert_eq!(bits, 0, "8 values fill whole bytes");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes the hybrid encoding back (`count` values), as the format defines it.
    fn decode(mut bytes: &[u8], bit_width: u8, count: usize) -> Vec<u32> {
        let mut out = Vec::new();
        let value_bytes = usize::from(bit_width).div_ceil(8);
        while out.len() < count {
            let mut header = 0u64;
            let mut shift = 0;
            loop {
                let b = bytes[0];
                bytes = &bytes[1..];
                header |= u64::from(b & 0x7f) << shift;
                shift += 7;
                if b < 0x80 {
                    break;
                }
            }
            if header & 1 == 0 {
                let mut v = [0u8; 4];
                v[..value_bytes].copy_from_slice(&bytes[..value_bytes]);
                bytes = &bytes[value_bytes..];
                out.extend(std::iter::repeat_n(
                    u32::from_le_bytes(v),
                    (header >> 1) as usize,
                ));
            } else {
                let n = (header >> 1) as usize * 8;
                let mut bit = 0usize;
                for _ in 0..n {
                    let mut v = 0u32;
                    for b in 0..usize::from(bit_width) {
                        let at = bit + b;
                        v |= u32::from((bytes[at / 8] >> (at % 8)) & 1) << b;
                    }
                    bit += usize::from(bit_width);
                    out.push(v);
                }
                bytes = &bytes[n * usize::from(bit_width) / 8..];
            }
        }
        assert!(bytes.is_empty(), "{} bytes left over", bytes.len());
        out.truncate(count);
        out
    }

    #[test]
    fn hybrid_round_trips_runs_and_packed_values() {
        let mut seed = 7u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as u32
        };
        for bit_width in [0u8, 1, 2, 3, 7, 8, 9, 13, 16, 17, 31] {
            let max = if bit_width == 0 { 1 } else { 1u64 << bit_width };
            for len in [0usize, 1, 7, 8, 9, 15, 16, 17, 100, 1024, 1031] {
                let mut values = Vec::with_capacity(len);
                while values.len() < len {
                    let v = (u64::from(next()) % max) as u32;
                    // Runs of every length around RUN_MIN, and lone values.
                    let repeat = [1, 1, 1, 3, 7, 8, 9, 20][next() as usize % 8];
                    values.extend(std::iter::repeat_n(v, repeat.min(len - values.len())));
                }
                let mut out = Vec::new();
                rle_hybrid(&values, bit_width, &mut out);
                assert_eq!(
                    decode(&out, bit_width, len),
                    values,
                    "width {bit_width}, {len} values"
                );
            }
        }
    }

    #[test]
    fn long_repeats_become_runs() {
        let values = vec![5u32; 1000];
        let mut out = Vec::new();
        rle_hybrid(&values, 3, &mut out);
        // One run: header 1000 << 1 as a varint (2 bytes) and one value byte.
        assert_eq!(out, [0xd0, 0x0f, 5]);
    }

    #[test]
    fn bit_widths() {
        assert_eq!(bit_width(0), 0);
        assert_eq!(bit_width(1), 0);
        assert_eq!(bit_width(2), 1);
        assert_eq!(bit_width(3), 2);
        assert_eq!(bit_width(128), 7);
        assert_eq!(bit_width(129), 8);
    }
}
