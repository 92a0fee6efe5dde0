//! Open prepared statements: a bounded map from handle to database, SQL and result schema.
//!
//! A handle is usable only with the token that created it. When the map is full the oldest
//! statement is dropped (a client still holding its handle gets `NotFound`), so clients that
//! never close their statements cannot grow the server's memory.

use std::collections::BTreeMap;

use annals_auth::Grant;
use arrow::datatypes::SchemaRef;
use parking_lot::Mutex;
use prost::bytes::Bytes;
use tonic::Status;

/// A handle is this prefix, then the statement number (8 bytes, little-endian).
const PREFIX: &[u8] = b"annals-ps/1:";

/// One prepared statement.
#[derive(Debug, Clone)]
pub(crate) struct Statement {
    pub(crate) db: String,
    pub(crate) sql: String,
    pub(crate) schema: SchemaRef,
    /// Token id of its creator (`None` without authentication).
    owner: Option<String>,
}

#[derive(Debug)]
struct Inner {
    next: u64,
    by_id: BTreeMap<u64, Statement>,
}

/// The open prepared statements of the server.
#[derive(Debug)]
pub(crate) struct Prepared {
    max: usize,
    inner: Mutex<Inner>,
}

fn handle_id(handle: &[u8]) -> Result<u64, Status> {
    let rest = handle
        .strip_prefix(PREFIX)
        .filter(|r| r.len() == 8)
        .ok_or_else(|| Status::invalid_argument("not an annals prepared statement handle"))?;
    let mut b = [0u8; 8];
    b.copy_from_slice(rest);
    Ok(u64::from_le_bytes(b))
}

impl Prepared {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            inner: Mutex::new(Inner {
                next: 1,
                by_id: BTreeMap::new(),
            }),
        }
    }

    /// Keeps a statement; returns its handle.
    pub(crate) fn insert(
        &self,
        db: String,
        sql: String,
        schema: SchemaRef,
        grant: &Grant,
    ) -> Bytes {
        let mut g = self.inner.lock();
        while g.by_id.len() >= self.max {
            g.by_id.pop_first();
        }
        let id = g.next;
        g.next += 1;
        g.by_id.insert(
            id,
            Statement {
                db,
                sql,
                schema,
                owner: grant.id.clone(),
            },
        );
        assert!(
            g.by_id.len() <= self.max,
            "prepared statements over their bound"
        );
        let mut h = PREFIX.to_vec();
        h.extend_from_slice(&id.to_le_bytes());
        h.into()
    }

    /// The statement behind `handle`, if `grant`'s token created it.
    pub(crate) fn get(&self, handle: &[u8], grant: &Grant) -> Result<Statement, Status> {
        let id = handle_id(handle)?;
        let g = self.inner.lock();
        match g.by_id.get(&id) {
            Some(s) if s.owner == grant.id => Ok(s.clone()),
            _ => Err(Status::not_found(
                "prepared statement not found (closed, dropped to bound the server's memory, or made by another token)",
            )),
        }
    }

    /// Closes the statement behind `handle`.
    pub(crate) fn remove(&self, handle: &[u8], grant: &Grant) -> Result<(), Status> {
        self.get(handle, grant)?;
        let id = handle_id(handle)?;
        self.inner.lock().by_id.remove(&id);
        Ok(())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().by_id.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::Schema;
    use std::sync::Arc;

    fn grant(id: &str) -> Grant {
        Grant {
            id: Some(id.into()),
            ..Grant::all()
        }
    }

    #[test]
    fn bounded_owned_and_closable() {
        let p = Prepared::new(2);
        let s = Arc::new(Schema::empty());
        let a = p.insert("db".into(), "SELECT 1".into(), s.clone(), &grant("t1"));
        let b = p.insert("db".into(), "SELECT 2".into(), s.clone(), &grant("t1"));
        assert_eq!(p.get(&a, &grant("t1")).unwrap().sql, "SELECT 1");
        // Another token cannot use it.
        assert_eq!(
            p.get(&a, &grant("t2")).unwrap_err().code(),
            tonic::Code::NotFound
        );
        // A third statement drops the oldest.
        let c = p.insert("db".into(), "SELECT 3".into(), s, &grant("t1"));
        assert_eq!(p.len(), 2);
        assert_eq!(
            p.get(&a, &grant("t1")).unwrap_err().code(),
            tonic::Code::NotFound
        );
        assert_eq!(p.get(&c, &grant("t1")).unwrap().sql, "SELECT 3");
        p.remove(&b, &grant("t1")).unwrap();
        assert!(p.get(&b, &grant("t1")).is_err());
        assert_eq!(
            p.get(b"garbage", &grant("t1")).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }
}
