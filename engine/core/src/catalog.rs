//! Table schemas inferred from writes.
//!
//! A table is `<db>/<measurement>`. Its columns are added in the order writes first name them
//! and never change kind: a write that names an existing column with another kind is refused
//! and writes nothing. Reads are lock-free (`ArcSwap` of an immutable map); adding columns
//! takes one mutex, persists `catalog.json` atomically, then publishes the new map.
//!
//! Each table has a JSON-LD context ([`crate::jsonld`]): the default one until a user sets
//! another ([`Catalog::set_context`]). `catalog.json` names it by hash; its bytes are in
//! `contexts/<hash>.jsonld`, written durably before the catalog names them. The writer reads
//! the table's context hash when it seals a block, so a new context applies to every block
//! sealed after it is published, including a block that was already open.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use annals_format::hash::{to_hex, Hash};
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
    #[error("JSON-LD context of table {table:?}: {source}")]
    Context {
        table: String,
        source: jsonld::ContextError,
    },
    #[error("invalid table name {0:?}: use <db>/<measurement>, the database 1-64 characters of A-Z a-z 0-9 _ -, the measurement 1-256 bytes without control characters")]
    TableName(String),
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
    /// Hex `H(context)`; the bytes are in `contexts/<hash>.jsonld`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    context_hash: Option<String>,
    /// The context itself, as catalogs written before `contexts/` held it; moved to
    /// `contexts/` when the catalog is opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    context: Option<String>,
}

/// Longest measurement name (as the line-protocol parser allows).
const MEASUREMENT_LEN_MAX: usize = 256;

/// Checks a `<db>/<measurement>` name given through the API rather than by a write.
fn validate_table_name(table: &str) -> Result<(), SchemaError> {
    let bad = || SchemaError::TableName(table.to_owned());
    let (db, m) = table.split_once('/').ok_or_else(bad)?;
    crate::prepare::validate_db(db).map_err(|_| bad())?;
    if m.is_empty() || m.len() > MEASUREMENT_LEN_MAX || m.chars().any(char::is_control) {
        return Err(bad());
    }
    Ok(())
}

/// All tables of a node.
#[derive(Debug)]
pub struct Catalog {
    path: PathBuf,
    data_dir: PathBuf,
    tables: ArcSwap<HashMap<String, Arc<TableSchema>>>,
    write: Mutex<()>,
}

impl Catalog {
    /// Loads `catalog.json` from `data_dir`, or starts empty. Makes sure the default context
    /// and every table's context are in `contexts/` (a catalog written before `contexts/`
    /// existed has them inline and is rewritten to name them by hash).
    pub fn open(data_dir: &Path) -> Result<Catalog, EngineError> {
        let path = data_dir.join(CATALOG_FILE);
        let mut tables = HashMap::new();
        let default = jsonld::default_context();
        let default_hash = jsonld::store(data_dir, default.as_bytes())?;
        let mut contexts: HashMap<Hash, Arc<str>> = HashMap::new();
        contexts.insert(default_hash, default.into());
        let mut migrate = false;
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
                    let context = match (t.context_hash, t.context) {
                        (Some(h), _) => {
                            let hash = hash_from_hex(&h).ok_or_else(|| {
                                EngineError::Corrupt(format!(
                                    "{}: table {:?} has context hash {h:?}, not 64 hex digits",
                                    path.display(),
                                    t.name
                                ))
                            })?;
                            match contexts.get(&hash) {
                                Some(c) => c.clone(),
                                None => {
                                    let c = load_context(data_dir, &hash, &t.name)?;
                                    contexts.insert(hash, c.clone());
                                    c
                                }
                            }
                        }
                        (None, Some(inline)) => {
                            migrate = true;
                            let hash = jsonld::store(data_dir, inline.as_bytes())?;
                            contexts
                                .entry(hash)
                                .or_insert_with(|| inline.into())
                                .clone()
                        }
                        (None, None) => {
                            return Err(EngineError::Corrupt(format!(
                                "{}: table {:?} has no context",
                                path.display(),
                                t.name
                            )))
                        }
                    };
                    tables.insert(
                        t.name.clone(),
                        Arc::new(TableSchema::new(t.name, columns, context)),
                    );
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(EngineError::io(&path, e)),
        }
        let catalog = Catalog {
            path,
            data_dir: data_dir.to_owned(),
            tables: ArcSwap::from_pointee(tables),
            write: Mutex::new(()),
        };
        if migrate {
            catalog.persist(&catalog.tables.load())?;
        }
        Ok(catalog)
    }

    /// Sets the JSON-LD context of `table` (created without columns if it does not exist yet,
    /// so its first block already carries the context). `bytes` are validated
    /// ([`jsonld::validate`]), stored in `contexts/` and named in the catalog, durably, before
    /// the new schema is published; blocks sealed from then on carry `H(bytes)`. Returns the
    /// new schema.
    pub fn set_context(&self, table: &str, bytes: &[u8]) -> Result<Arc<TableSchema>, EngineError> {
        jsonld::validate(bytes).map_err(|source| SchemaError::Context {
            table: table.to_owned(),
            source,
        })?;
        let text = std::str::from_utf8(bytes).expect("valid JSON is UTF-8");
        let _guard = self.write.lock();
        let current = self.tables.load_full();
        let columns = match current.get(table) {
            Some(t) => t.columns.clone(),
            None => {
                validate_table_name(table)?;
                if current.len() >= TABLES_MAX {
                    return Err(SchemaError::TooManyTables { max: TABLES_MAX }.into());
                }
                Vec::new()
            }
        };
        let hash = jsonld::store(&self.data_dir, bytes)?;
        let schema = Arc::new(TableSchema::new(table.to_owned(), columns, text.into()));
        assert_eq!(
            schema.context_hash, hash,
            "stored context hashes as the schema's"
        );
        let mut next = (*current).clone();
        next.insert(table.to_owned(), schema.clone());
        self.persist(&next)?;
        self.tables.store(Arc::new(next));
        Ok(schema)
    }

    /// A context by its hash: a table's current one, else one stored in `contexts/` (an
    /// earlier context of some table). `None` if there is none.
    pub fn context_by_hash(&self, hash: &Hash) -> Result<Option<Arc<str>>, EngineError> {
        if let Some(t) = self
            .tables
            .load()
            .values()
            .find(|t| t.context_hash == *hash)
        {
            return Ok(Some(t.context.clone()));
        }
        match jsonld::load(&self.data_dir, hash)? {
            None => Ok(None),
            Some(bytes) => String::from_utf8(bytes)
                .map(|s| Some(s.into()))
                .map_err(|_| {
                    EngineError::Corrupt(format!(
                        "{}: not UTF-8",
                        jsonld::context_path(&self.data_dir, hash).display()
                    ))
                }),
        }
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
                context_hash: Some(to_hex(&t.context_hash)),
                context: None,
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

fn hash_from_hex(s: &str) -> Option<Hash> {
    let mut h = [0u8; 32];
    hex::decode_to_slice(s, &mut h).ok()?;
    Some(h)
}

/// A table's context named by the catalog: it must be in `contexts/` with the right bytes.
fn load_context(data_dir: &Path, hash: &Hash, table: &str) -> Result<Arc<str>, EngineError> {
    let path = jsonld::context_path(data_dir, hash);
    let bytes = jsonld::load(data_dir, hash)?.ok_or_else(|| {
        EngineError::Corrupt(format!(
            "{}: missing (the context of table {table:?})",
            path.display()
        ))
    })?;
    String::from_utf8(bytes)
        .map(Arc::from)
        .map_err(|_| EngineError::Corrupt(format!("{}: not UTF-8", path.display())))
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

    #[test]
    fn a_table_context_is_stored_by_hash_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::open(dir.path()).unwrap();
        let default_hash = jsonld::context_hash(jsonld::default_context().as_bytes());
        // The default context is resolvable from the start.
        assert!(jsonld::context_path(dir.path(), &default_hash).is_file());
        c.ensure("db/m", &[("host", Kind::Tag), ("v", Kind::F64)])
            .unwrap();
        let ctx = br#"{ "@context": {"v": "urn:example:v"} }"#;
        let t = c.set_context("db/m", ctx).unwrap();
        assert_eq!(t.context_hash, jsonld::context_hash(ctx));
        assert_eq!(t.columns.len(), 2, "columns are kept");
        assert_eq!(
            std::fs::read(jsonld::context_path(dir.path(), &t.context_hash)).unwrap(),
            ctx
        );
        // A table that does not exist yet gets the context and no columns.
        let n = c.set_context("db/new", ctx).unwrap();
        assert!(n.columns.is_empty());
        // Invalid documents and names are refused and change nothing.
        let err = c.set_context("db/m", b"{\"v\": 1}").unwrap_err();
        assert!(err.to_string().contains("no \"@context\""), "{err}");
        let err = c.set_context("bad db/m", ctx).unwrap_err();
        assert!(err.to_string().contains("invalid table name"), "{err}");
        assert_eq!(c.table("db/m").unwrap().context_hash, t.context_hash);
        // Found by hash: the current ones and the default.
        assert_eq!(
            c.context_by_hash(&t.context_hash).unwrap().as_deref(),
            Some(std::str::from_utf8(ctx).unwrap())
        );
        assert!(c.context_by_hash(&default_hash).unwrap().is_some());
        assert!(c.context_by_hash(&[1; 32]).unwrap().is_none());
        drop(c);
        let c = Catalog::open(dir.path()).unwrap();
        let t = c.table("db/m").unwrap();
        assert_eq!(t.context_hash, jsonld::context_hash(ctx));
        assert_eq!(t.context.as_bytes(), ctx);
        assert_eq!(t.columns.len(), 2);
        assert!(c.table("db/new").unwrap().columns.is_empty());
        // catalog.json names the context by hash only.
        let file = std::fs::read_to_string(dir.path().join(CATALOG_FILE)).unwrap();
        assert!(file.contains(&to_hex(&t.context_hash)), "{file}");
        assert!(!file.contains("urn:example:v"), "{file}");
        // A context file that goes missing stops the open with its name.
        drop(c);
        std::fs::remove_file(jsonld::context_path(dir.path(), &t.context_hash)).unwrap();
        let err = Catalog::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn an_inline_context_of_an_older_catalog_moves_to_contexts() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = r#"{"@context":{"v":"urn:v"}}"#;
        let old = serde_json::json!({"version": 1, "tables": [
            {"name": "db/m", "columns": [["v", "f64"]], "context": ctx}
        ]});
        std::fs::write(dir.path().join(CATALOG_FILE), old.to_string()).unwrap();
        let c = Catalog::open(dir.path()).unwrap();
        let h = jsonld::context_hash(ctx.as_bytes());
        assert_eq!(c.table("db/m").unwrap().context_hash, h);
        assert_eq!(
            jsonld::load(dir.path(), &h).unwrap().as_deref(),
            Some(ctx.as_bytes())
        );
        let file = std::fs::read_to_string(dir.path().join(CATALOG_FILE)).unwrap();
        assert!(file.contains("context_hash"), "{file}");
    }
}
