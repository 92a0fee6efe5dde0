//! Reads a proof document (from the vectors or from a real engine) into the test model [`Doc`],
//! with the crate's own strict JSON reader compiled into the test, so no JSON crate joins the
//! verifier's dependency graph.

#[path = "../../src/json.rs"]
#[allow(dead_code, unreachable_pub)]
mod json;

#[allow(unused_imports)] // not every test that includes `support` parses JSON
pub(crate) use json::{parse, Value as J};

use super::{col, unhex, unhex32, Att, Doc, TRow, H, KS, V};

pub fn s(v: &J) -> &str {
    match v {
        J::String(s) => s,
        other => panic!("expected a string, found {other:?}"),
    }
}

pub fn num<T: std::str::FromStr>(v: &J) -> T {
    match v {
        J::Number(n) => n.parse().unwrap_or_else(|_| panic!("bad number {n}")),
        other => panic!("expected a number, found {other:?}"),
    }
}

pub fn arr(v: &J) -> &[J] {
    match v {
        J::Array(a) => a,
        other => panic!("expected an array, found {other:?}"),
    }
}

pub fn g<'a>(v: &'a J, k: &str) -> &'a J {
    v.get(k).unwrap_or_else(|| panic!("no {k}"))
}

pub fn h(v: &J) -> H {
    unhex32(s(v))
}

pub fn hashes(v: &J) -> Vec<H> {
    arr(v).iter().map(h).collect()
}

/// A document's `row` object.
pub fn trow(r: &J) -> TRow {
    TRow {
        table: s(g(r, "table")).into(),
        time: num(g(r, "time")),
        cols: arr(g(r, "columns"))
            .iter()
            .map(|c| {
                let v = g(c, "value");
                let v = match s(g(c, "kind")) {
                    "tag" => V::Tag(s(v).into()),
                    "string" => V::Str(s(v).into()),
                    "f64" => V::F64(num(v)),
                    "i64" => V::I64(num(v)),
                    "u64" => V::U64(num(v)),
                    "bool" => V::Bool(*v == J::Bool(true)),
                    k => panic!("kind {k}"),
                };
                col(s(g(c, "name")), v)
            })
            .collect(),
    }
}

pub fn ks(v: &J) -> KS {
    KS {
        key: h(g(v, "key")),
        sig: unhex(s(g(v, "sig"))),
    }
}

/// A whole `annals-proof/1` document, field by field.
pub fn doc(p: &J) -> Doc {
    let b = g(p, "block");
    let c = g(p, "checkpoint");
    Doc {
        format: s(g(p, "format")).into(),
        row: trow(g(p, "row")),
        row_hex: unhex(s(g(p, "row_hex"))),
        tx_id: unhex(s(g(p, "tx_id"))),
        header: unhex(s(g(b, "header_hex"))),
        index: num(g(b, "index")),
        block_path: hashes(g(b, "path")),
        block_sig: b.get("signature").map(ks),
        branch_size: num(g(g(p, "branch"), "size")),
        branch_path: hashes(g(g(p, "branch"), "path")),
        cp_header: unhex(s(g(c, "header_hex"))),
        entry: unhex(s(g(c, "entry_hex"))),
        entry_index: num(g(c, "entry_index")),
        cp_path: hashes(g(c, "path")),
        sigs: arr(g(c, "signatures")).iter().map(ks).collect(),
        att: p.get("attestation").map(|a| Att {
            device_key: h(g(a, "device_key")),
            seq: num(g(a, "seq")),
            batch_size: num(g(a, "batch_size")),
            index: num(g(a, "index")),
            path: hashes(g(a, "path")),
            sig: unhex(s(g(a, "sig"))),
        }),
    }
}
