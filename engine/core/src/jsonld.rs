//! JSON-LD contexts of tables: the default (W3C SOSA/SSN terms), validation of a user's
//! context, and the content-addressed store `<data-dir>/contexts/<hex H(bytes)>.jsonld`.
//!
//! A context's BLAKE3 hash goes into the `context` field of every block header of its table
//! (FORMAT.md: "of the table at sealing"), so a block commits to the meaning of its columns as
//! well as to their values. The hash is over the exact bytes a user sent (after validation), and
//! a stored context is never deleted or rewritten, so every block's `context` stays resolvable:
//! an auditor fetches `contexts/<hash>.jsonld` (or `GET /api/v3/contexts/{hash}`) and re-hashes.
//!
//! Invariant: a context file is durable (written to a temporary file, fsynced, renamed, the
//! directory fsynced) before any catalog entry, hence any block header, names its hash.

use std::path::{Path, PathBuf};

use annals_format::hash::{to_hex, Hash};

use crate::error::EngineError;

/// Directory of stored contexts inside the data directory.
pub const CONTEXTS_DIR: &str = "contexts";
/// File name suffix of a stored context.
pub const CONTEXT_SUFFIX: &str = ".jsonld";
/// Largest context document accepted.
pub const CONTEXT_BYTES_MAX: usize = 64 << 10;

/// The default context document. Rows export as `sosa:Observation`s: `time` is
/// `sosa:resultTime`, the series tags identify the sensor (`sosa:madeBySensor`), each field is
/// an `sosa:observedProperty` with its `sosa:hasSimpleResult`.
pub fn default_context() -> &'static str {
    r#"{"@context":{"sosa":"http://www.w3.org/ns/sosa/","ssn":"http://www.w3.org/ns/ssn/","xsd":"http://www.w3.org/2001/XMLSchema#","annals":"urn:annals:","Observation":"sosa:Observation","time":{"@id":"sosa:resultTime","@type":"xsd:dateTime"},"sensor":{"@id":"sosa:madeBySensor","@type":"@id"},"property":{"@id":"sosa:observedProperty","@type":"@id"},"result":"sosa:hasSimpleResult","tx_id":"annals:txId","table":"annals:table"}}"#
}

/// `H(context bytes)`, the value of a block header's `context` field.
pub fn context_hash(bytes: &[u8]) -> Hash {
    *blake3::hash(bytes).as_bytes()
}

/// Why a context document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ContextError {
    #[error("the context document is empty: send a JSON object such as {{\"@context\": {{...}}}}")]
    Empty,
    #[error("the context document has {len} bytes, more than the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("the context document is not valid JSON: {0}")]
    NotJson(String),
    #[error("the context document must be a JSON object with an \"@context\" member, got {0}")]
    NotObject(&'static str),
    #[error("the context document has no \"@context\" member")]
    MissingContext,
    #[error(
        "the context document may only have the member \"@context\", it also has {0:?}: \
         query results are exported as this document plus \"@graph\""
    )]
    ExtraMember(String),
    #[error("\"@context\" must be an object, an IRI string or an array of those, got {0}")]
    BadContext(&'static str),
    #[error(
        "term {term:?}: a term definition must be a string (IRI), an object or null, got {got}"
    )]
    BadTerm { term: String, got: &'static str },
    #[error("a term must not be the empty string")]
    EmptyTerm,
}

fn kind_of(v: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Checks a context document: at most [`CONTEXT_BYTES_MAX`] bytes of JSON, an object whose only
/// member is `@context`, whose value is a context object, an IRI string, or an array of those
/// (JSON-LD 1.1, section 3.1); in a context object every term (a key not starting with `@`) is
/// defined by a string, an object or null. Keywords (`@vocab`, `@base`, `@version`, ...) are
/// left to the JSON-LD processor.
pub fn validate(bytes: &[u8]) -> Result<(), ContextError> {
    use serde_json::Value;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ContextError::Empty);
    }
    if bytes.len() > CONTEXT_BYTES_MAX {
        return Err(ContextError::TooLarge {
            len: bytes.len(),
            max: CONTEXT_BYTES_MAX,
        });
    }
    let doc: Value =
        serde_json::from_slice(bytes).map_err(|e| ContextError::NotJson(e.to_string()))?;
    let Value::Object(doc) = doc else {
        return Err(ContextError::NotObject(kind_of(&doc)));
    };
    let ctx = doc.get("@context").ok_or(ContextError::MissingContext)?;
    if let Some(k) = doc.keys().find(|k| *k != "@context") {
        return Err(ContextError::ExtraMember(k.clone()));
    }
    let check_object = |m: &serde_json::Map<String, Value>| -> Result<(), ContextError> {
        for (term, def) in m {
            if term.is_empty() {
                return Err(ContextError::EmptyTerm);
            }
            if term.starts_with('@') {
                continue;
            }
            if !matches!(def, Value::String(_) | Value::Object(_) | Value::Null) {
                return Err(ContextError::BadTerm {
                    term: term.clone(),
                    got: kind_of(def),
                });
            }
        }
        Ok(())
    };
    match ctx {
        Value::Object(m) => check_object(m),
        Value::String(_) => Ok(()),
        Value::Array(items) => {
            for item in items {
                match item {
                    Value::Object(m) => check_object(m)?,
                    Value::String(_) | Value::Null => {}
                    other => return Err(ContextError::BadContext(kind_of(other))),
                }
            }
            Ok(())
        }
        other => Err(ContextError::BadContext(kind_of(other))),
    }
}

/// Where the context with `hash` is stored.
pub fn context_path(data_dir: &Path, hash: &Hash) -> PathBuf {
    data_dir
        .join(CONTEXTS_DIR)
        .join(format!("{}{CONTEXT_SUFFIX}", to_hex(hash)))
}

/// The hash a stored context file's name claims, if `name` is `<64 hex>.jsonld`.
pub fn hash_of_file_name(name: &str) -> Option<Hash> {
    let hex_part = name.strip_suffix(CONTEXT_SUFFIX)?;
    let mut h = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut h).ok()?;
    // Only the lowercase spelling is ours.
    (to_hex(&h) == hex_part).then_some(h)
}

/// Stores `bytes` under their hash (durably; a file already there with the right bytes is kept
/// as it is) and returns the hash. The caller has validated them.
pub fn store(data_dir: &Path, bytes: &[u8]) -> Result<Hash, EngineError> {
    let hash = context_hash(bytes);
    let dir = data_dir.join(CONTEXTS_DIR);
    annals_storage::fsutil::create_dir_durable(&dir).map_err(|e| EngineError::io(&dir, e))?;
    let path = context_path(data_dir, &hash);
    match std::fs::read(&path) {
        Ok(existing) if existing == bytes => return Ok(hash),
        // A damaged copy is replaced: its name says what its bytes must be.
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(EngineError::io(&path, e)),
    }
    annals_storage::fsutil::atomic_write(&path, bytes).map_err(|e| EngineError::io(&path, e))?;
    // Read back what a block header will name (assert after writing durable data).
    let back = std::fs::read(&path).map_err(|e| EngineError::io(&path, e))?;
    if context_hash(&back) != hash {
        return Err(EngineError::Corrupt(format!(
            "{}: read back with another hash right after writing it",
            path.display()
        )));
    }
    Ok(hash)
}

/// Loads the stored context with `hash`: `None` if there is none, an error if the file's bytes
/// do not hash to its name.
pub fn load(data_dir: &Path, hash: &Hash) -> Result<Option<Vec<u8>>, EngineError> {
    let path = context_path(data_dir, hash);
    match std::fs::read(&path) {
        Ok(bytes) if context_hash(&bytes) == *hash => Ok(Some(bytes)),
        Ok(_) => Err(EngineError::Corrupt(format!(
            "{}: its bytes do not hash to its name",
            path.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(EngineError::io(&path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_context_is_valid() {
        validate(default_context().as_bytes()).unwrap();
    }

    #[test]
    fn contexts_are_validated_with_clear_errors() {
        let err = |s: &str| validate(s.as_bytes()).unwrap_err();
        assert_eq!(err(" \n"), ContextError::Empty);
        assert!(matches!(err("{"), ContextError::NotJson(_)));
        assert_eq!(err("[1]"), ContextError::NotObject("an array"));
        assert_eq!(err(r#"{"a": 1}"#), ContextError::MissingContext);
        assert_eq!(
            err(r#"{"@context": {}, "@graph": []}"#),
            ContextError::ExtraMember("@graph".into())
        );
        assert_eq!(
            err(r#"{"@context": 5}"#),
            ContextError::BadContext("a number")
        );
        assert_eq!(
            err(r#"{"@context": [{}, true]}"#),
            ContextError::BadContext("a boolean")
        );
        assert_eq!(
            err(r#"{"@context": {"time": 5}}"#),
            ContextError::BadTerm {
                term: "time".into(),
                got: "a number"
            }
        );
        assert_eq!(err(r#"{"@context": {"": "x"}}"#), ContextError::EmptyTerm);
        let big = format!(
            r#"{{"@context": {{"x": "{}"}}}}"#,
            "a".repeat(CONTEXT_BYTES_MAX)
        );
        assert!(matches!(err(&big), ContextError::TooLarge { .. }));
        // What JSON-LD allows.
        for ok in [
            r#"{"@context": "https://schema.org/"}"#,
            r#"{"@context": ["https://example.org/ctx", {"@vocab": "urn:x:", "v": null}]}"#,
            r#"{"@context": {"@version": 1.1, "t": {"@id": "urn:t", "@type": "@id"}}}"#,
        ] {
            validate(ok.as_bytes()).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn contexts_are_stored_under_their_hash() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = br#"{"@context": {"v": "urn:v"}}"#;
        let h = store(dir.path(), bytes).unwrap();
        assert_eq!(h, *blake3::hash(bytes).as_bytes());
        assert_eq!(load(dir.path(), &h).unwrap().as_deref(), Some(&bytes[..]));
        assert_eq!(store(dir.path(), bytes).unwrap(), h);
        let name = context_path(dir.path(), &h);
        let name = name.file_name().unwrap().to_str().unwrap();
        assert_eq!(hash_of_file_name(name), Some(h));
        assert_eq!(hash_of_file_name(&name.to_uppercase()), None);
        assert_eq!(load(dir.path(), &[7; 32]).unwrap(), None);
        // A file whose bytes changed is an error, not a context.
        std::fs::write(context_path(dir.path(), &h), b"{}").unwrap();
        assert!(load(dir.path(), &h).is_err());
        // Storing again repairs it.
        store(dir.path(), bytes).unwrap();
        assert_eq!(load(dir.path(), &h).unwrap().as_deref(), Some(&bytes[..]));
    }
}
