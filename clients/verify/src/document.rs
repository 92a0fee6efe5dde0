//! Reading an `annals-proof/1` document into typed fields (the `parse` step).
//!
//! Strict: unknown fields, missing fields, wrong JSON types, non-lowercase hex, wrong lengths and
//! over-long lists are all refused, so two readers can never disagree on what a document says.
//! The row's *contents* are read by the `row_encoding` step ([`read_row`]).

use alloc::string::String;
use alloc::vec::Vec;

use crate::encoding::{BlockHeader, BranchEntry, CheckpointHeader, Column, Row, Value};
use crate::hex::{decode_hex, decode_hex_vec};
use crate::json::{self, Value as Json};
use crate::merkle::PATH_LEN_MAX;
use crate::trust::KeySignature;
use crate::{Hash, Step, VerifyError};

/// The value of the `format` field.
pub const PROOF_FORMAT: &str = "annals-proof/1";
/// Largest proof document accepted.
pub const PROOF_BYTES_MAX: usize = 16 << 20;
/// Most checkpoint signatures accepted in one document.
pub const SIGNATURES_MAX: usize = 10_000;

/// How a proof states its row besides `row_hex`.
#[derive(Debug)]
pub(crate) enum RowStated {
    /// The JSON form's `row` object.
    Json(Json),
    /// The binary form: only the encoding, which is decoded.
    Encoding,
}

/// Every field of a proof document, decoded.
#[derive(Debug)]
pub(crate) struct Document {
    pub(crate) row: RowStated,
    pub(crate) row_hex: Vec<u8>,
    pub(crate) tx_id: Hash,
    pub(crate) header_bytes: Vec<u8>,
    pub(crate) header: BlockHeader,
    pub(crate) index: u64,
    pub(crate) block_path: Vec<Hash>,
    pub(crate) block_signature: Option<KeySignature>,
    pub(crate) branch_size: u64,
    pub(crate) branch_path: Vec<Hash>,
    pub(crate) checkpoint_bytes: Vec<u8>,
    pub(crate) checkpoint: CheckpointHeader,
    pub(crate) entry_bytes: Vec<u8>,
    pub(crate) entry: BranchEntry,
    pub(crate) entry_index: u64,
    pub(crate) checkpoint_path: Vec<Hash>,
    pub(crate) signatures: Vec<KeySignature>,
    pub(crate) attestation: Option<AttestationDoc>,
}

/// The optional `attestation` object (FORMAT.md "Device attestation").
#[derive(Debug)]
pub(crate) struct AttestationDoc {
    pub(crate) device_key: [u8; 32],
    pub(crate) seq: u64,
    pub(crate) batch_size: u64,
    pub(crate) index: u64,
    pub(crate) path: Vec<Hash>,
    pub(crate) sig: [u8; 64],
}

/// A field failure of `step`, naming the field by its path in the document.
pub(crate) fn field_err(step: Step, field: &str, detail: impl core::fmt::Display) -> VerifyError {
    VerifyError::new(step, alloc::format!("{field}: {detail}"))
}

/// An object's members, refusing any key not in `allowed`.
fn object<'a>(
    step: Step,
    field: &str,
    v: &'a Json,
    allowed: &[&str],
) -> Result<&'a Json, VerifyError> {
    let Json::Object(members) = v else {
        return Err(field_err(
            step,
            field,
            alloc::format!("expected an object, found {}", v.type_name()),
        ));
    };
    if let Some((k, _)) = members.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
        return Err(field_err(
            step,
            field,
            alloc::format!("unknown field {k:?}"),
        ));
    }
    Ok(v)
}

/// A required member. `null` counts as missing.
fn member<'a>(step: Step, obj: &'a Json, field: &str, key: &str) -> Result<&'a Json, VerifyError> {
    match obj.get(key) {
        None | Some(Json::Null) => Err(field_err(
            step,
            field,
            alloc::format!("missing field {key:?}"),
        )),
        Some(v) => Ok(v),
    }
}

fn string<'a>(step: Step, field: &str, v: &'a Json) -> Result<&'a str, VerifyError> {
    match v {
        Json::String(s) => Ok(s),
        other => Err(field_err(
            step,
            field,
            alloc::format!("expected a string, found {}", other.type_name()),
        )),
    }
}

/// A JSON integer in `0..=u64::MAX`, read exactly.
pub(crate) fn unsigned(step: Step, field: &str, v: &Json) -> Result<u64, VerifyError> {
    match v {
        Json::Number(n) => n.parse::<u64>().map_err(|_| {
            field_err(
                step,
                field,
                alloc::format!("expected an integer in 0..=18446744073709551615, found {n}"),
            )
        }),
        other => Err(field_err(
            step,
            field,
            alloc::format!("expected an integer, found {}", other.type_name()),
        )),
    }
}

fn hex_vec(field: &str, v: &Json) -> Result<Vec<u8>, VerifyError> {
    decode_hex_vec(string(Step::Parse, field, v)?).map_err(|e| field_err(Step::Parse, field, e))
}

fn hex_n<const N: usize>(field: &str, v: &Json) -> Result<[u8; N], VerifyError> {
    decode_hex::<N>(string(Step::Parse, field, v)?).map_err(|e| field_err(Step::Parse, field, e))
}

/// [`hex_n`] for a field whose name is only built when it is needed (an error).
fn hex_n_named<const N: usize>(
    field: impl Fn() -> String,
    v: &Json,
) -> Result<[u8; N], VerifyError> {
    match v {
        Json::String(s) => decode_hex::<N>(s).map_err(|e| field_err(Step::Parse, &field(), e)),
        _ => hex_n::<N>(&field(), v),
    }
}

fn path(field: &str, v: &Json) -> Result<Vec<Hash>, VerifyError> {
    let Json::Array(items) = v else {
        return Err(field_err(
            Step::Parse,
            field,
            alloc::format!("expected an array, found {}", v.type_name()),
        ));
    };
    if items.len() > PATH_LEN_MAX {
        return Err(field_err(
            Step::Parse,
            field,
            alloc::format!("{} hashes; at most {PATH_LEN_MAX}", items.len()),
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, h)| hex_n_named::<32>(|| alloc::format!("{field}[{i}]"), h))
        .collect()
}

fn key_signature(field: &str, v: &Json) -> Result<KeySignature, VerifyError> {
    let o = object(Step::Parse, field, v, &["key", "sig"])?;
    Ok(KeySignature {
        key: hex_n_named::<32>(
            || alloc::format!("{field}.key"),
            member(Step::Parse, o, field, "key")?,
        )?,
        sig: hex_n_named::<64>(
            || alloc::format!("{field}.sig"),
            member(Step::Parse, o, field, "sig")?,
        )?,
    })
}

/// The `parse` step: JSON, shape, hex, and the three binary structures the document carries.
pub(crate) fn parse_document(bytes: &[u8]) -> Result<Document, VerifyError> {
    let p = Step::Parse;
    if bytes.len() > PROOF_BYTES_MAX {
        return Err(VerifyError::new(
            p,
            alloc::format!(
                "document is {} bytes; at most {PROOF_BYTES_MAX}",
                bytes.len()
            ),
        ));
    }
    let doc = json::parse(bytes).map_err(|e| VerifyError::new(p, alloc::format!("{e}")))?;
    let top = object(
        p,
        "document",
        &doc,
        &[
            "format",
            "row",
            "row_hex",
            "tx_id",
            "block",
            "branch",
            "checkpoint",
            "attestation",
        ],
    )?;
    let format = string(p, "format", member(p, top, "document", "format")?)?;
    if format != PROOF_FORMAT {
        return Err(field_err(
            p,
            "format",
            alloc::format!("{format:?} is not {PROOF_FORMAT:?}"),
        ));
    }
    let row = object(
        p,
        "row",
        member(p, top, "document", "row")?,
        &["table", "time", "columns"],
    )?
    .clone();

    let block = object(
        p,
        "block",
        member(p, top, "document", "block")?,
        &["header_hex", "index", "path", "signature"],
    )?;
    let header_bytes = hex_vec("block.header_hex", member(p, block, "block", "header_hex")?)?;
    let header =
        BlockHeader::decode(&header_bytes).map_err(|e| field_err(p, "block.header_hex", e))?;
    let block_signature = match block.get("signature") {
        None | Some(Json::Null) => None,
        Some(s) => Some(key_signature("block.signature", s)?),
    };

    let branch = object(
        p,
        "branch",
        member(p, top, "document", "branch")?,
        &["size", "path"],
    )?;

    let cp = object(
        p,
        "checkpoint",
        member(p, top, "document", "checkpoint")?,
        &[
            "header_hex",
            "entry_hex",
            "entry_index",
            "path",
            "signatures",
        ],
    )?;
    let checkpoint_bytes = hex_vec(
        "checkpoint.header_hex",
        member(p, cp, "checkpoint", "header_hex")?,
    )?;
    let checkpoint = CheckpointHeader::decode(&checkpoint_bytes)
        .map_err(|e| field_err(p, "checkpoint.header_hex", e))?;
    let entry_bytes = hex_vec(
        "checkpoint.entry_hex",
        member(p, cp, "checkpoint", "entry_hex")?,
    )?;
    let entry =
        BranchEntry::decode(&entry_bytes).map_err(|e| field_err(p, "checkpoint.entry_hex", e))?;
    let signatures = match member(p, cp, "checkpoint", "signatures")? {
        Json::Array(items) if items.len() <= SIGNATURES_MAX => items
            .iter()
            .enumerate()
            .map(|(i, s)| key_signature(&alloc::format!("checkpoint.signatures[{i}]"), s))
            .collect::<Result<Vec<_>, _>>()?,
        Json::Array(items) => {
            return Err(field_err(
                p,
                "checkpoint.signatures",
                alloc::format!("{} signatures; at most {SIGNATURES_MAX}", items.len()),
            ))
        }
        other => {
            return Err(field_err(
                p,
                "checkpoint.signatures",
                alloc::format!("expected an array, found {}", other.type_name()),
            ))
        }
    };

    let attestation = match top.get("attestation") {
        None | Some(Json::Null) => None,
        Some(a) => {
            let a = object(
                p,
                "attestation",
                a,
                &["device_key", "seq", "batch_size", "index", "path", "sig"],
            )?;
            Some(AttestationDoc {
                device_key: hex_n::<32>(
                    "attestation.device_key",
                    member(p, a, "attestation", "device_key")?,
                )?,
                seq: unsigned(p, "attestation.seq", member(p, a, "attestation", "seq")?)?,
                batch_size: unsigned(
                    p,
                    "attestation.batch_size",
                    member(p, a, "attestation", "batch_size")?,
                )?,
                index: unsigned(
                    p,
                    "attestation.index",
                    member(p, a, "attestation", "index")?,
                )?,
                path: path("attestation.path", member(p, a, "attestation", "path")?)?,
                sig: hex_n::<64>("attestation.sig", member(p, a, "attestation", "sig")?)?,
            })
        }
    };

    Ok(Document {
        row: RowStated::Json(row),
        row_hex: hex_vec("row_hex", member(p, top, "document", "row_hex")?)?,
        tx_id: hex_n::<32>("tx_id", member(p, top, "document", "tx_id")?)?,
        header_bytes,
        header,
        index: unsigned(p, "block.index", member(p, block, "block", "index")?)?,
        block_path: path("block.path", member(p, block, "block", "path")?)?,
        block_signature,
        branch_size: unsigned(p, "branch.size", member(p, branch, "branch", "size")?)?,
        branch_path: path("branch.path", member(p, branch, "branch", "path")?)?,
        checkpoint_bytes,
        checkpoint,
        entry_bytes,
        entry,
        entry_index: unsigned(
            p,
            "checkpoint.entry_index",
            member(p, cp, "checkpoint", "entry_index")?,
        )?,
        checkpoint_path: path("checkpoint.path", member(p, cp, "checkpoint", "path")?)?,
        signatures,
        attestation,
    })
}

/// The first half of the `row_encoding` step: the row object as typed columns, sorted by name.
pub(crate) fn read_row(row: &Json) -> Result<Row, VerifyError> {
    let r = Step::RowEncoding;
    let table = string(r, "row.table", member(r, row, "row", "table")?)?;
    let time = match member(r, row, "row", "time")? {
        Json::Number(n) => n.parse::<i64>().map_err(|_| {
            field_err(
                r,
                "row.time",
                alloc::format!("expected an i64 integer, found {n}"),
            )
        })?,
        other => {
            return Err(field_err(
                r,
                "row.time",
                alloc::format!("expected an integer, found {}", other.type_name()),
            ))
        }
    };
    let Json::Array(items) = member(r, row, "row", "columns")? else {
        return Err(field_err(r, "row.columns", "expected an array"));
    };
    let mut columns = Vec::with_capacity(items.len());
    for (i, c) in items.iter().enumerate() {
        let field = alloc::format!("row.columns[{i}]");
        let c = object(r, &field, c, &["name", "kind", "value"])?;
        let name = String::from(string(r, &field, member(r, c, &field, "name")?)?);
        let kind = string(r, &field, member(r, c, &field, "kind")?)?;
        let v = member(r, c, &field, "value")?;
        let field = || alloc::format!("row.columns[{i}] ({name:?})");
        let wrong = |want: &str| {
            field_err(
                r,
                &field(),
                alloc::format!("a {kind} value must be {want}, found {}", v.type_name()),
            )
        };
        let value =
            match (kind, v) {
                ("tag", Json::String(s)) => Value::Tag(s.clone()),
                ("string", Json::String(s)) => Value::Str(s.clone()),
                ("bool", Json::Bool(b)) => Value::Bool(*b),
                ("i64", Json::Number(n)) => Value::I64(n.parse::<i64>().map_err(|_| {
                    field_err(r, &field(), alloc::format!("{n} is not an i64 integer"))
                })?),
                ("u64", Json::Number(n)) => Value::U64(n.parse::<u64>().map_err(|_| {
                    field_err(r, &field(), alloc::format!("{n} is not a u64 integer"))
                })?),
                ("f64", Json::Number(n)) => {
                    // `core`'s parser rounds correctly, so a round-trip-exact decimal gives back the
                    // writer's bits. JSON has no NaN or infinity; an overflowing literal is refused.
                    let x = n
                        .parse::<f64>()
                        .map_err(|_| field_err(r, &field(), alloc::format!("{n} is not an f64")))?;
                    if !x.is_finite() {
                        return Err(field_err(r, &field(), alloc::format!("{n} overflows f64")));
                    }
                    Value::F64(x)
                }
                ("tag" | "string", _) => return Err(wrong("a string")),
                ("bool", _) => return Err(wrong("true or false")),
                ("i64" | "u64" | "f64", _) => return Err(wrong("a number")),
                (k, _) => {
                    return Err(field_err(
                        r,
                        &field(),
                        alloc::format!(
                            "unknown kind {k:?} (expected tag, f64, i64, u64, bool or string)"
                        ),
                    ))
                }
            };
        columns.push(Column { name, value });
    }
    // Columns are encoded in name order; the document may list them in any order.
    columns.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    Ok(Row {
        table: String::from(table),
        time,
        columns,
    })
}
