//! Table schemas inferred from writes.
//!
//! A table is `<db>/<measurement>`. Its columns are added in the order writes first name them
//! and never change kind: a write that names an existing column with another kind is refused
//! and writes nothing. Reads are lock-free (`ArcSwap` of an immutable map); adding columns
//! takes one mutex, persists `catalog.json` atomically, then publishes the new map.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use annals_format::hash::Hash;
use annals_format::row::Kind;
use arc_swap::ArcSwap;
use arrow::datatypes::SchemaRef;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::error::EngineError;
use crate::jsonld;

/// Most tables a node holds.
pub const TABLES_MAX: usize = 10_000;
/// Most columns (tags and fields) a table holds.
pub const TABLE_COLUMNS_MAX: usize = 2_000;
/// File name of the catalog inside the data directory.
pub const CATALOG_FILE: &str = "catalog.json";

/// One immutable version of a table's schema.
#[derive(Debug)]
pub struct TableSchema {
    /// `<db>/<measurement>`.
    pub name: String,
    /// Columns in the order they were added (the `time` column is implicit).
    pub columns: Vec<(String, Kind)>,
    index: HashMap<String, usize>,
    /// Arrow schema: `time` then `columns`.
    pub arrow: SchemaRef,
    /// `H(JSON-LD context document)` that goes into block headers.
    pub context_hash: Hash,
    /// The JSON-LD context document.
    pub context: Arc<str>,
}

impl TableSchema {
    fn new(name: String, columns: Vec<(String, Kind)>, context: Arc<str>) -> Self {
        let index = columns
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (n.clone(), i))
            .collect();
        let arrow =
            annals_storage::block_file::table_schema(columns.iter().map(|(n, k)| (n.as_str(), *k)));
        let context_hash = *blake3::hash(context.as_bytes()).as_bytes();
        Self {
            name,
            columns,
            index,
            arrow,
            context_hash,
            context,
        }
    }

    /// Position of a column in [`columns`](Self::columns).
    #[inline]
    pub fn column(&self, name: &str) -> Option<(usize, Kind)> {
        self.index.get(name).map(|&i| (i, self.columns[i].1))
    }

    /// The database part of the name.
    pub fn db(&self) -> &str {
        self.name.split_once('/').map(|(d, _)| d).unwrap_or("")
    }
}

/// A refused schema change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    #[error(
        "column {column:?} of table {table:?} is {existing}, this write has it as {attempted}"
    )]
    KindConflict {
        table: String,
        column: String,
        existing: Kind,
        attempted: Kind,
    },
    #[error("table {table:?} would have more than {max} columns")]
    TooManyColumns { table: String, max: usize },
    #[error("more than {max} tables")]
    TooManyTables { max: usize },
}

#[derive(Serialize, Deserialize)]
struct CatalogFile {
    version: u32,
    tables: Vec<TableFile>,
}

#[derive(Serialize, Deserialize)]
struct TableFile {
    name: String,
    columns: Vec<(String, String)>,
    context: String,
}

/// All tables of a node.
#[derive(Debug)]
pub struct Catalog {
    path: PathBuf,
    tables: ArcSwap<HashMap<String, Arc<TableSchema>>>,
    write: Mutex<()>,
}

impl Catalog {
    /// Loads `catalog.json` from `data_dir`, or starts empty.
    pub fn open(data_dir: &Path) -> Result<Catalog, EngineError> {
        let path = data_dir.join(CATALOG_FILE);
        let mut tables = HashMap::new();
        match std::fs::read(&path) {
            Ok(bytes) => {
                let file: CatalogFile = serde_json::from_slice(&bytes)
                    .map_err(|e| EngineError::Corrupt(format!("{}: {e}", path.display())))?;
                if file.version != 1 {
                    return Err(EngineError::Corrupt(format!(
                        "{}: unknown catalog version {}",
                        path.display(),
                        file.version
                    )));
                }
                for t in file.tables {
                    let mut columns = Vec::with_capacity(t.columns.len());
                    for (n, k) in t.columns {
                        let kind = Kind::from_name(&k).ok_or_else(|| {
                            EngineError::Corrupt(format!(
                                "{}: column {n:?} has unknown kind {k:?}",
                                path.display()
                            ))
                        })?;
                        columns.push((n, kind));
                    }
                    tables.insert(
                        t.name.clone(),
                        Arc::new(TableSchema::new(t.name, columns, t.context.into())),
                    );
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(EngineError::io(&path, e)),
        }
        Ok(Catalog {
            path,
            tables: ArcSwap::from_pointee(tables),
            write: Mutex::new(()),
        })
    }

    /// The current schema of a table.
    #[inline]
    pub fn table(&self, name: &str) -> Option<Arc<TableSchema>> {
        self.tables.load().get(name).cloned()
    }

    /// A snapshot of every table.
    pub fn tables(&self) -> Vec<Arc<TableSchema>> {
        let mut v: Vec<_> = self.tables.load().values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Ensures `table` exists with at least `columns` (kinds must agree with existing ones).
    /// Returns the (possibly new) schema. Persists before publishing.
    pub fn ensure(
        &self,
        table: &str,
        columns: &[(&str, Kind)],
    ) -> Result<Arc<TableSchema>, EngineError> {
        // Fast path: nothing new.
        if let Some(t) = self.table(table) {
            if Self::check(&t, columns)?.is_empty() {
                return Ok(t);
            }
        }
        let _guard = self.write.lock();
        let current = self.tables.load_full();
        let (base_cols, context) = match current.get(table) {
            Some(t) => (t.columns.clone(), t.context.clone()),
            None => {
                if current.len() >= TABLES_MAX {
                    return Err(SchemaError::TooManyTables { max: TABLES_MAX }.into());
                }
                (Vec::new(), jsonld::default_context().into())
            }
        };
        let mut cols = base_cols;
        let mut changed = current.get(table).is_none();
        for (name, kind) in columns {
            match cols.iter().find(|(n, _)| n == name) {
                Some((_, k)) if k != kind => {
                    return Err(SchemaError::KindConflict {
                        table: table.to_owned(),
                        column: (*name).to_owned(),
                        existing: *k,
                        attempted: *kind,
                    }
                    .into())
                }
                Some(_) => {}
                None => {
                    cols.push(((*name).to_owned(), *kind));
                    changed = true;
                }
            }
        }
        if cols.len() > TABLE_COLUMNS_MAX {
            return Err(SchemaError::TooManyColumns {
                table: table.to_owned(),
                max: TABLE_COLUMNS_MAX,
            }
            .into());
        }
        if !changed {
            return Ok(current.get(table).cloned().expect("unchanged table exists"));
        }
        let schema = Arc::new(TableSchema::new(table.to_owned(), cols, context));
        let mut next = (*current).clone();
        next.insert(table.to_owned(), schema.clone());
        self.persist(&next)?;
        self.tables.store(Arc::new(next));
        Ok(schema)
    }

    /// Columns of `columns` the table does not have yet; an error if a kind disagrees.
    pub fn check<'a>(
        t: &TableSchema,
        columns: &[(&'a str, Kind)],
    ) -> Result<Vec<(&'a str, Kind)>, SchemaError> {
        let mut missing = Vec::new();
        for &(name, kind) in columns {
            match t.column(name) {
                Some((_, k)) if k != kind => {
                    return Err(SchemaError::KindConflict {
                        table: t.name.clone(),
                        column: name.to_owned(),
                        existing: k,
                        attempted: kind,
                    })
                }
                Some(_) => {}
                None => missing.push((name, kind)),
            }
        }
        Ok(missing)
    }

    fn persist(&self, tables: &HashMap<String, Arc<TableSchema>>) -> Result<(), EngineError> {
        let mut list: Vec<TableFile> = tables
            .values()
            .map(|t| TableFile {
                name: t.name.clone(),
                columns: t
                    .columns
                    .iter()
                    .map(|(n, k)| (n.clone(), k.name().to_owned()))
                    .collect(),
                context: t.context.to_string(),
            })
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        let bytes = serde_json::to_vec_pretty(&CatalogFile {
            version: 1,
            tables: list,
        })
        .expect("catalog serializes");
        annals_storage::fsutil::atomic_write(&self.path, &bytes)
            .map_err(|e| EngineError::io(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_added_and_kinds_are_fixed() {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::open(dir.path()).unwrap();
        let t = c
            .ensure("db/m", &[("host", Kind::Tag), ("v", Kind::F64)])
            .unwrap();
        assert_eq!(t.columns.len(), 2);
        let t2 = c
            .ensure("db/m", &[("v", Kind::F64), ("n", Kind::I64)])
            .unwrap();
        assert_eq!(t2.column("n"), Some((2, Kind::I64)));
        let err = c.ensure("db/m", &[("v", Kind::I64)]).unwrap_err();
        assert!(err.to_string().contains("is f64"), "{err}");
        // Reopen: the schema survived, the refused change did not happen.
        drop(c);
        let c = Catalog::open(dir.path()).unwrap();
        let t = c.table("db/m").unwrap();
        assert_eq!(
            t.columns,
            vec![
                ("host".into(), Kind::Tag),
                ("v".into(), Kind::F64),
                ("n".into(), Kind::I64)
            ]
        );
        assert_eq!(
            t.context_hash,
            *blake3::hash(jsonld::default_context().as_bytes()).as_bytes()
        );
    }
}
