//! One connection's DataFusion session: the query service's session for its database, seen
//! through a catalog that shows only what the token may read, plus `pg_catalog` and the
//! PostgreSQL functions clients call.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use annals_auth::{Action, Grant};
use annals_query::service::CATALOG;
use annals_query::system::SCHEMA as SYSTEM;
use annals_query::QueryService;
use datafusion::arrow::array::{ArrayRef, ListBuilder, StringBuilder};
use datafusion::arrow::datatypes::{DataType, Field};
use datafusion::catalog::{CatalogProvider, SchemaProvider};
use datafusion::common::cast::as_string_array;
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{create_udf, ColumnarValue, ScalarUDF, Volatility};
use datafusion::prelude::SessionContext;
use datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use pgwire::types::format::FormatOptions;

/// Session parameters a client may `SET` (beyond DataFusion's own options).
const SETTINGS_MAX: usize = 128;
/// Longest name or value of a session parameter.
const SETTING_BYTES_MAX: usize = 1024;

/// What `server_version` says: PostgreSQL 16 catalog queries are what psql sends to it.
pub(crate) const SERVER_VERSION: &str = "16.6";

/// A connection's state after startup.
pub(crate) struct Session {
    pub(crate) db: String,
    pub(crate) ctx: SessionContext,
    pub(crate) settings: Arc<Settings>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("db", &self.db).finish()
    }
}

impl Session {
    pub(crate) fn open(service: &QueryService, db: &str, grant: &Grant) -> Result<Session> {
        let ctx = service.session(db);
        let inner = ctx
            .catalog(CATALOG)
            .ok_or_else(|| DataFusionError::Internal(format!("catalog {CATALOG} missing")))?;
        let mut visible = vec![db.to_string()];
        if db != SYSTEM && grant.allows(Action::Read, Some(SYSTEM)) {
            visible.push(SYSTEM.to_string());
        }
        ctx.register_catalog(
            CATALOG,
            Arc::new(ConnCatalog {
                inner,
                visible,
                extra: Mutex::new(BTreeMap::new()),
            }),
        );
        datafusion_pg_catalog::setup_pg_catalog(&ctx, CATALOG, EmptyContextProvider)
            .map_err(|e| *e)?;
        let settings = Arc::new(Settings::new(db));
        // The database is a schema of the one catalog; PG clients expect it as the database
        // and as the current schema.
        ctx.register_udf(text_udf("current_database", db));
        ctx.register_udf(text_udf("current_schema", db));
        ctx.register_udf(text_udf(
            "version",
            &format!(
                "PostgreSQL {SERVER_VERSION} (annals {} over DataFusion)",
                env!("CARGO_PKG_VERSION")
            ),
        ));
        ctx.register_udf(current_schemas_udf(db));
        ctx.register_udf(current_setting_udf(settings.clone()));
        Ok(Session {
            db: db.to_string(),
            ctx,
            settings,
        })
    }
}

/// Session parameters: client `SET`s over fixed defaults.
#[derive(Debug)]
pub(crate) struct Settings {
    defaults: BTreeMap<&'static str, String>,
    set: Mutex<BTreeMap<String, String>>,
}

impl Settings {
    fn new(db: &str) -> Self {
        let fmt = FormatOptions::default();
        let defaults = BTreeMap::from([
            ("server_version", SERVER_VERSION.to_string()),
            ("server_version_num", "160006".to_string()),
            ("server_encoding", "UTF8".to_string()),
            ("client_encoding", "UTF8".to_string()),
            ("datestyle", fmt.date_style),
            ("intervalstyle", fmt.interval_style),
            ("timezone", fmt.time_zone),
            ("search_path", db.to_string()),
            ("transaction_isolation", "read committed".to_string()),
            (
                "default_transaction_isolation",
                "read committed".to_string(),
            ),
            ("transaction_read_only", "on".to_string()),
            ("default_transaction_read_only", "on".to_string()),
            ("standard_conforming_strings", "on".to_string()),
            ("integer_datetimes", "on".to_string()),
            ("is_superuser", "off".to_string()),
            ("max_identifier_length", "63".to_string()),
            ("lc_collate", "C".to_string()),
            ("lc_ctype", "C".to_string()),
            ("extra_float_digits", "1".to_string()),
            ("application_name", String::new()),
            ("statement_timeout", "0".to_string()),
        ]);
        Self {
            defaults,
            set: Mutex::new(BTreeMap::new()),
        }
    }

    pub(crate) fn get(&self, name: &str) -> Option<String> {
        let name = name.to_ascii_lowercase();
        if let Some(v) = lock(&self.set).get(&name) {
            return Some(v.clone());
        }
        self.defaults.get(name.as_str()).cloned()
    }

    /// Records `SET name = value`; refuses beyond the bounds.
    pub(crate) fn set(&self, name: &str, value: String) -> Result<(), String> {
        if name.len() > SETTING_BYTES_MAX || value.len() > SETTING_BYTES_MAX {
            return Err(format!(
                "parameter name and value are limited to {SETTING_BYTES_MAX} bytes"
            ));
        }
        let name = name.to_ascii_lowercase();
        let mut set = lock(&self.set);
        if !set.contains_key(&name) && set.len() >= SETTINGS_MAX {
            return Err(format!(
                "at most {SETTINGS_MAX} parameters can be SET per connection"
            ));
        }
        set.insert(name, value);
        Ok(())
    }

    pub(crate) fn reset(&self, name: &str) {
        lock(&self.set).remove(&name.to_ascii_lowercase());
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The annals catalog limited to the connection's visible schemas, with room for
/// `pg_catalog` (the query service's catalog takes no new schemas).
#[derive(Debug)]
struct ConnCatalog {
    inner: Arc<dyn CatalogProvider>,
    visible: Vec<String>,
    extra: Mutex<BTreeMap<String, Arc<dyn SchemaProvider>>>,
}

impl CatalogProvider for ConnCatalog {
    fn schema_names(&self) -> Vec<String> {
        let inner = self.inner.schema_names();
        let mut names: Vec<String> = self
            .visible
            .iter()
            .filter(|v| inner.contains(v))
            .cloned()
            .collect();
        names.extend(lock(&self.extra).keys().cloned());
        names
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        if let Some(s) = lock(&self.extra).get(name) {
            return Some(s.clone());
        }
        if self.visible.iter().any(|v| v == name) {
            return self.inner.schema(name);
        }
        None
    }

    fn register_schema(
        &self,
        name: &str,
        schema: Arc<dyn SchemaProvider>,
    ) -> Result<Option<Arc<dyn SchemaProvider>>> {
        if self.inner.schema(name).is_some() {
            return Err(DataFusionError::Plan(format!(
                "schema {name} is an annals database"
            )));
        }
        Ok(lock(&self.extra).insert(name.to_string(), schema))
    }
}

fn text_udf(name: &str, value: &str) -> ScalarUDF {
    let value = value.to_string();
    create_udf(
        name,
        vec![],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(move |_args: &[ColumnarValue]| {
            Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(
                value.clone(),
            ))))
        }),
    )
}

/// `current_schemas(include_implicit)`.
fn current_schemas_udf(db: &str) -> ScalarUDF {
    let db = db.to_string();
    create_udf(
        "current_schemas",
        vec![DataType::Boolean],
        DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
        Volatility::Stable,
        Arc::new(move |args: &[ColumnarValue]| {
            let implicit = match args.first() {
                Some(ColumnarValue::Scalar(s)) => {
                    matches!(s, ScalarValue::Boolean(Some(true)))
                }
                _ => false,
            };
            let mut b = ListBuilder::new(StringBuilder::new());
            if implicit {
                b.values().append_value("pg_catalog");
            }
            b.values().append_value(&db);
            b.append(true);
            Ok(ColumnarValue::Scalar(ScalarValue::List(Arc::new(
                b.finish(),
            ))))
        }),
    )
}

/// `current_setting(name)`: the session's parameters (Grafana reads `search_path`).
fn current_setting_udf(settings: Arc<Settings>) -> ScalarUDF {
    create_udf(
        "current_setting",
        vec![DataType::Utf8],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(move |args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let names = as_string_array(&arrays[0])?;
            let mut out = StringBuilder::new();
            for name in names.iter() {
                match name {
                    None => out.append_null(),
                    Some(n) => match settings.get(n) {
                        Some(v) => out.append_value(v),
                        None => {
                            return Err(DataFusionError::Plan(format!(
                                "unrecognized configuration parameter \"{n}\""
                            )))
                        }
                    },
                }
            }
            Ok(ColumnarValue::Array(Arc::new(out.finish()) as ArrayRef))
        }),
    )
}
