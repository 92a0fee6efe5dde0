//! Line protocol to Arrow: one body parsed by annals' own line-protocol parser (`annals-lp`)
//! into one [`RecordBatch`] per table, as a client would build them before a `DoPut` (and as
//! `gen --format parquet` projects them onto its fixed schema).

use std::collections::HashMap;
use std::sync::Arc;

use annals_lp::{FieldValue, Line, ParseOptions, Parser};
use anyhow::{bail, Context, Result};
use arrow::array::{
    ArrayBuilder as _, ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, StringBuilder,
    TimestampNanosecondArray, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;

/// Field metadata marking a tag column (annals-engine's `arrow_ingest::KIND_KEY` and
/// `KIND_TAG`; the benchmark binary talks to the server as any client would, so it does not
/// link the engine to read them).
pub(crate) const KIND_KEY: &str = "annals.kind";
pub(crate) const KIND_TAG: &str = "tag";
/// Name of the timestamp column.
pub(crate) const TIME_COLUMN: &str = "time";

/// The rows of one table in one line-protocol body, as one Arrow batch.
#[derive(Debug)]
pub(crate) struct TableBatch {
    pub(crate) table: String,
    pub(crate) batch: RecordBatch,
}

/// How `DoPut` batches carry their tag columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ArrowTags {
    /// Plain strings, as [`lp_to_arrow`] builds them.
    Utf8,
    /// `Dictionary(Int32, Utf8)`: each batch's distinct values once, an index per row.
    Dict,
}

impl ArrowTags {
    /// `batch` with its tag columns in this form (the field metadata kept).
    pub(crate) fn apply(self, batch: RecordBatch) -> Result<RecordBatch> {
        if self == Self::Utf8 {
            return Ok(batch);
        }
        let dict = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
        let schema = batch.schema();
        let mut fields = Vec::with_capacity(schema.fields().len());
        let mut arrays = Vec::with_capacity(schema.fields().len());
        for (f, a) in schema.fields().iter().zip(batch.columns()) {
            if f.metadata().get(KIND_KEY).map(String::as_str) == Some(KIND_TAG) {
                arrays.push(
                    arrow::compute::cast(a, &dict)
                        .with_context(|| format!("tag column {:?} to a dictionary", f.name()))?,
                );
                fields.push(f.as_ref().clone().with_data_type(dict.clone()));
            } else {
                arrays.push(a.clone());
                fields.push(f.as_ref().clone());
            }
        }
        let schema = Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()));
        RecordBatch::try_new(schema, arrays).context("the batch with dictionary tags")
    }
}

/// One column being built; nulls stand for rows that lack it.
#[derive(Debug)]
enum Values {
    Tag(StringBuilder),
    F64(Float64Builder),
    I64(Int64Builder),
    U64(UInt64Builder),
    Bool(BooleanBuilder),
    Str(StringBuilder),
}

impl Values {
    /// An empty column of the kind of `v`.
    fn for_field(v: &FieldValue<'_>) -> Self {
        match v {
            FieldValue::F64(_) => Self::F64(Float64Builder::new()),
            FieldValue::I64(_) => Self::I64(Int64Builder::new()),
            FieldValue::U64(_) => Self::U64(UInt64Builder::new()),
            FieldValue::Bool(_) => Self::Bool(BooleanBuilder::new()),
            FieldValue::Str(_) => Self::Str(StringBuilder::new()),
        }
    }

    fn is_tag(&self) -> bool {
        matches!(self, Self::Tag(_))
    }

    fn len(&self) -> usize {
        match self {
            Self::Tag(b) | Self::Str(b) => b.len(),
            Self::F64(b) => b.len(),
            Self::I64(b) => b.len(),
            Self::U64(b) => b.len(),
            Self::Bool(b) => b.len(),
        }
    }

    /// Appends nulls until the column has `rows` values.
    fn pad_to(&mut self, rows: usize) {
        let n = rows - self.len();
        match self {
            Self::Tag(b) | Self::Str(b) => b.append_nulls(n),
            Self::F64(b) => b.append_nulls(n),
            Self::I64(b) => b.append_nulls(n),
            Self::U64(b) => b.append_nulls(n),
            Self::Bool(b) => b.append_nulls(n),
        }
    }

    /// Appends a field value; false if the column holds another kind.
    fn push_field(&mut self, v: &FieldValue<'_>) -> bool {
        match (self, v) {
            (Self::F64(b), FieldValue::F64(x)) => b.append_value(*x),
            (Self::I64(b), FieldValue::I64(x)) => b.append_value(*x),
            (Self::U64(b), FieldValue::U64(x)) => b.append_value(*x),
            (Self::Bool(b), FieldValue::Bool(x)) => b.append_value(*x),
            (Self::Str(b), FieldValue::Str(x)) => b.append_value(x),
            _ => return false,
        }
        true
    }

    /// What the column holds, for errors.
    fn kind(&self) -> &'static str {
        match self {
            Self::Tag(_) => "tag",
            Self::F64(_) => "float field",
            Self::I64(_) => "integer field",
            Self::U64(_) => "unsigned field",
            Self::Bool(_) => "boolean field",
            Self::Str(_) => "string field",
        }
    }

    /// The column's schema field (a tag marked with [`KIND_KEY`]) and its values.
    fn finish(self, name: &str) -> (Field, ArrayRef) {
        let tag = self.is_tag();
        let (data_type, array): (DataType, ArrayRef) = match self {
            Self::Tag(mut b) | Self::Str(mut b) => (DataType::Utf8, Arc::new(b.finish())),
            Self::F64(mut b) => (DataType::Float64, Arc::new(b.finish())),
            Self::I64(mut b) => (DataType::Int64, Arc::new(b.finish())),
            Self::U64(mut b) => (DataType::UInt64, Arc::new(b.finish())),
            Self::Bool(mut b) => (DataType::Boolean, Arc::new(b.finish())),
        };
        let mut field = Field::new(name, data_type, true);
        if tag {
            field =
                field.with_metadata(HashMap::from([(KIND_KEY.to_owned(), KIND_TAG.to_owned())]));
        }
        (field, array)
    }
}

/// The rows of one table, a column per tag and field seen so far.
#[derive(Debug)]
struct TableBuilder {
    table: String,
    time: Vec<i64>,
    /// Columns in the order they first appeared.
    columns: Vec<(String, Values)>,
    by_name: HashMap<String, usize>,
}

impl TableBuilder {
    fn new(table: &str) -> Self {
        Self {
            table: table.to_owned(),
            time: Vec::new(),
            columns: Vec::new(),
            by_name: HashMap::new(),
        }
    }

    /// The column `name`, made by `make` if new, padded with nulls to the current row.
    fn column(&mut self, name: &str, make: impl FnOnce() -> Values) -> &mut Values {
        let row = self.time.len();
        let i = match self.by_name.get(name) {
            Some(&i) => i,
            None => {
                self.columns.push((name.to_owned(), make()));
                self.by_name.insert(name.to_owned(), self.columns.len() - 1);
                self.columns.len() - 1
            }
        };
        let values = &mut self.columns[i].1;
        values.pad_to(row);
        values
    }

    /// Appends one parsed line of this table.
    fn push(&mut self, line: &Line<'_>) -> Result<()> {
        let at = line.line_number;
        for (key, value) in &line.tags {
            match self.column(key, || Values::Tag(StringBuilder::new())) {
                Values::Tag(b) => b.append_value(value),
                other => bail!(
                    "line {at}: {key:?} is a tag here but a {} in earlier lines",
                    other.kind()
                ),
            }
        }
        for (key, value) in &line.fields {
            let column = self.column(key, || Values::for_field(value));
            if !column.push_field(value) {
                bail!(
                    "line {at}: {key:?} is a {} field here but a {} in earlier lines",
                    value.type_name(),
                    column.kind()
                );
            }
        }
        self.time.push(line.time_ns);
        Ok(())
    }

    /// The batch: the tags by name, the fields by name, then `time`. The order does not
    /// depend on which line came first, so batches with the same columns have the same schema
    /// and can share a `DoPut` call.
    fn finish(mut self) -> Result<TableBatch> {
        let rows = self.time.len();
        self.columns
            .sort_by(|(a, va), (b, vb)| (!va.is_tag(), a).cmp(&(!vb.is_tag(), b)));
        let mut fields = Vec::with_capacity(self.columns.len() + 1);
        let mut arrays = Vec::with_capacity(self.columns.len() + 1);
        for (name, mut values) in self.columns {
            values.pad_to(rows);
            let (field, array) = values.finish(&name);
            fields.push(field);
            arrays.push(array);
        }
        fields.push(Field::new(
            TIME_COLUMN,
            DataType::Timestamp(TimeUnit::Nanosecond, None),
            false,
        ));
        arrays.push(Arc::new(TimestampNanosecondArray::from(self.time)));
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
            .with_context(|| format!("building the Arrow batch of table {:?}", self.table))?;
        Ok(TableBatch {
            table: self.table,
            batch,
        })
    }
}

/// Parses one body with annals' line-protocol parser and returns one batch per table, in the
/// order the tables first appear: columns are the union of that table's tags (`Utf8`, marked
/// `annals.kind = "tag"`, by name) and fields (typed as written, by name) in the body, null
/// where a line lacks them, then `time` (`Timestamp(Nanosecond)`, never null).
pub(crate) fn lp_to_arrow(body: &[u8]) -> Result<Vec<TableBatch>> {
    let mut parser = Parser::new(body, &ParseOptions::default());
    let mut line = Line::new();
    let mut tables: Vec<TableBuilder> = Vec::new();
    while parser
        .next_into(&mut line)
        .context("the generated line protocol does not parse")?
    {
        let table = match tables.iter().position(|t| t.table == line.measurement) {
            Some(i) => &mut tables[i],
            None => {
                tables.push(TableBuilder::new(&line.measurement));
                tables.last_mut().expect("just pushed")
            }
        };
        table
            .push(&line)
            .with_context(|| format!("table {:?}", line.measurement))?;
    }
    tables.into_iter().map(TableBuilder::finish).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Float64Type, Int64Type, TimestampNanosecondType};

    const BODY: &[u8] = b"readings,name=t0,fleet=East lat=1.5,lon=2 100\n\
        diagnostics,name=t0 status=3i 100\n\
        readings,name=t1 lat=3,speed=4 200\n\
        \n\
        # a comment\n\
        readings,name=t2,model=H-2 lon=5 300\n";

    fn column<'a>(b: &'a RecordBatch, name: &str) -> &'a ArrayRef {
        b.column_by_name(name)
            .unwrap_or_else(|| panic!("no column {name}"))
    }

    fn strings(b: &RecordBatch, name: &str) -> Vec<Option<String>> {
        column(b, name)
            .as_string::<i32>()
            .iter()
            .map(|v| v.map(str::to_owned))
            .collect()
    }

    #[test]
    fn lines_become_one_batch_per_table_with_nulls_where_absent() {
        let tables = lp_to_arrow(BODY).unwrap();
        let names: Vec<&str> = tables.iter().map(|t| t.table.as_str()).collect();
        assert_eq!(names, ["readings", "diagnostics"]);

        let r = &tables[0].batch;
        assert_eq!(r.num_rows(), 3);
        let schema = r.schema();
        let cols: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        // Union of the table's tags, then of its fields, each by name, then time.
        assert_eq!(
            cols,
            ["fleet", "model", "name", "lat", "lon", "speed", "time"]
        );
        for tag in ["name", "fleet", "model"] {
            let f = schema.field_with_name(tag).unwrap();
            assert_eq!(f.data_type(), &DataType::Utf8);
            assert_eq!(
                f.metadata().get(KIND_KEY).map(String::as_str),
                Some(KIND_TAG)
            );
        }
        for field in ["lat", "lon", "speed"] {
            let f = schema.field_with_name(field).unwrap();
            assert_eq!(f.data_type(), &DataType::Float64);
            assert!(f.metadata().is_empty(), "{field} is not a tag");
        }
        assert_eq!(
            strings(r, "name"),
            [Some("t0".into()), Some("t1".into()), Some("t2".into())]
        );
        assert_eq!(strings(r, "fleet"), [Some("East".into()), None, None]);
        assert_eq!(strings(r, "model"), [None, None, Some("H-2".into())]);
        let floats = |name: &str| -> Vec<Option<f64>> {
            column(r, name)
                .as_primitive::<Float64Type>()
                .iter()
                .collect()
        };
        assert_eq!(floats("lat"), [Some(1.5), Some(3.0), None]);
        assert_eq!(floats("lon"), [Some(2.0), None, Some(5.0)]);
        assert_eq!(floats("speed"), [None, Some(4.0), None]);

        let time = schema.field_with_name("time").unwrap();
        assert_eq!(
            time.data_type(),
            &DataType::Timestamp(TimeUnit::Nanosecond, None)
        );
        assert!(!time.is_nullable());
        let times = column(r, "time").as_primitive::<TimestampNanosecondType>();
        assert_eq!(times.null_count(), 0);
        assert_eq!(times.values().to_vec(), [100, 200, 300]);

        let d = &tables[1].batch;
        assert_eq!(d.num_rows(), 1);
        let status = column(d, "status").as_primitive::<Int64Type>();
        assert_eq!(status.value(0), 3);
        assert_eq!(
            column(d, "time")
                .as_primitive::<TimestampNanosecondType>()
                .value(0),
            100
        );
    }

    #[test]
    fn kind_conflicts_are_refused_with_the_line() {
        let err = lp_to_arrow(b"m v=1 1\nm v=2i 2\n").unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("line 2") && text.contains("\"v\""), "{text}");
        let err = lp_to_arrow(b"m,a=x v=1 1\nm a=2 2\n").unwrap_err();
        assert!(format!("{err:#}").contains("tag"), "{err:#}");
    }

    #[test]
    fn dictionary_tags_keep_values_and_metadata() {
        let utf8 = lp_to_arrow(BODY).unwrap().remove(0).batch;
        let dict = ArrowTags::Dict.apply(utf8.clone()).unwrap();
        assert_eq!(dict.num_rows(), utf8.num_rows());
        for (f, a) in dict.schema().fields().iter().zip(dict.columns()) {
            let before = utf8.schema().field_with_name(f.name()).unwrap().clone();
            assert_eq!(f.metadata(), before.metadata(), "{}", f.name());
            if f.metadata().contains_key(KIND_KEY) {
                assert!(
                    matches!(f.data_type(), DataType::Dictionary(..)),
                    "{}",
                    f.name()
                );
                let back = arrow::compute::cast(a, &DataType::Utf8).unwrap();
                assert_eq!(&back, column(&utf8, f.name()), "{}", f.name());
            } else {
                assert_eq!(a, column(&utf8, f.name()), "{}", f.name());
            }
        }
        assert_eq!(ArrowTags::Utf8.apply(utf8.clone()).unwrap(), utf8);
    }
}
