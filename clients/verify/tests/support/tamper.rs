//! Every single-bit change to every field of a proof document, each with the step that must
//! catch it.
//!
//! Where a change is caught depends on the field: a byte of `row_hex` at `row_encoding`, a
//! block header's `prev` at the block signature, and so on. Tree sizes are the one subtle
//! case: an RFC 9162 path binds a size only as far as the tree's shape goes (leaf 0 has the same
//! path in trees of 6 and 7 leaves), so for sizes the expected step is worked out with
//! [`root_from_path`], an independent recursive oracle: the first consumer if the path no
//! longer fits, otherwise the step that checks whatever commits to that size.

use super::*;
use annals_verify::Step;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Fail(Step),
    /// Not detectable in this mode (documented: structure-only mode does not authenticate the
    /// checkpoint; an attestation's batch size is not signed).
    Pass,
}

/// Each single-bit change of `bytes`: (bit number, changed bytes).
pub fn bit_flips(bytes: &[u8]) -> impl Iterator<Item = (usize, Vec<u8>)> + '_ {
    (0..bytes.len() * 8).map(move |bit| {
        let mut b = bytes.to_vec();
        b[bit / 8] ^= 1 << (bit % 8);
        (bit, b)
    })
}

/// Each change of one bit of one character's code point that is still a character.
pub fn string_flips(s: &str) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    for i in 0..chars.len() {
        for bit in 0..21 {
            if let Some(c) = char::from_u32(chars[i] as u32 ^ (1 << bit)) {
                let mut v = chars.clone();
                v[i] = c;
                out.push(v.into_iter().collect());
            }
        }
    }
    out
}

fn u64_flips(x: u64) -> impl Iterator<Item = (usize, u64)> {
    (0..64).map(move |b| (b, x ^ (1 << b)))
}

fn path_mutations(p: &[H]) -> Vec<(String, Vec<H>)> {
    let mut out = Vec::new();
    for (i, h) in p.iter().enumerate() {
        for (bit, b) in bit_flips(h) {
            let mut q = p.to_vec();
            q[i] = b.try_into().unwrap();
            out.push((format!("[{i}] bit {bit}"), q));
        }
    }
    if !p.is_empty() {
        out.push(("without its last hash".into(), p[..p.len() - 1].to_vec()));
    }
    let mut longer = p.to_vec();
    longer.push([0u8; 32]);
    out.push(("with an extra hash".into(), longer));
    out
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b.try_into().unwrap())
}

fn le_i64(b: &[u8]) -> i64 {
    i64::from_le_bytes(b.try_into().unwrap())
}

/// Calls `add(label, changed document, expected outcome)` for every mutation of `doc`, which
/// must verify as it is. `trusted`: checked against a validator set with `doc.sigs` a minimal
/// quorum (drop any one and it is no longer final).
pub fn mutations(doc: &Doc, trusted: bool, add: &mut dyn FnMut(String, Doc, Expect)) {
    let fail = Expect::Fail;
    // Where a change to bytes that only the block hash commits to is caught.
    let after_block = if doc.block_sig.is_some() {
        fail(Step::BlockSignature)
    } else {
        fail(Step::BlockInclusion)
    };
    // Where a change to bytes that only the checkpoint signatures commit to is caught.
    let signed_only = |step: Step| if trusted { fail(step) } else { Expect::Pass };

    for s in string_flips(&doc.format) {
        let mut d = doc.clone();
        d.format = s.clone();
        add(format!("format {s:?}"), d, fail(Step::Parse));
    }

    // The row: any change is caught when it is encoded and compared with row_hex.
    for s in string_flips(&doc.row.table) {
        let mut d = doc.clone();
        d.row.table = s;
        add("row.table".into(), d, fail(Step::RowEncoding));
    }
    for (bit, t) in u64_flips(doc.row.time as u64) {
        let mut d = doc.clone();
        d.row.time = t as i64;
        add(format!("row.time bit {bit}"), d, fail(Step::RowEncoding));
    }
    for (ci, c) in doc.row.cols.iter().enumerate() {
        let mut variants: Vec<(String, Col)> = Vec::new();
        for s in string_flips(&c.name) {
            variants.push((
                format!("name {s:?}"),
                Col {
                    name: s,
                    ..c.clone()
                },
            ));
        }
        for s in string_flips(&c.kind) {
            variants.push((
                format!("kind {s:?}"),
                Col {
                    kind: s,
                    ..c.clone()
                },
            ));
        }
        let values: Vec<V> = match &c.v {
            V::Tag(s) => string_flips(s).into_iter().map(V::Tag).collect(),
            V::Str(s) => string_flips(s).into_iter().map(V::Str).collect(),
            V::F64(x) => u64_flips(x.to_bits())
                .map(|(_, b)| f64::from_bits(b))
                .filter(|x| x.is_finite())
                .map(V::F64)
                .collect(),
            V::I64(x) => u64_flips(*x as u64)
                .map(|(_, b)| V::I64(b as i64))
                .collect(),
            V::U64(x) => u64_flips(*x).map(|(_, b)| V::U64(b)).collect(),
            V::Bool(b) => vec![V::Bool(!b)],
        };
        for v in values {
            variants.push((format!("value {v:?}"), Col { v, ..c.clone() }));
        }
        for (what, nc) in variants {
            let mut d = doc.clone();
            d.row.cols[ci] = nc;
            add(
                format!("row.columns[{ci}] {what}"),
                d,
                fail(Step::RowEncoding),
            );
        }
    }
    for (bit, b) in bit_flips(&doc.row_hex) {
        let mut d = doc.clone();
        d.row_hex = b;
        add(format!("row_hex bit {bit}"), d, fail(Step::RowEncoding));
    }
    for (bit, b) in bit_flips(&doc.tx_id) {
        let mut d = doc.clone();
        d.tx_id = b;
        add(format!("tx_id bit {bit}"), d, fail(Step::TxId));
    }

    // The block header, field by field.
    let row_leaf = leaf(&doc.row_hex);
    let table_len = le_u32(&doc.header[1..5]) as usize;
    let lay = header_layout(table_len);
    let rows_root: H = doc.header[lay.rows_root.clone()].try_into().unwrap();
    for (bit, b) in bit_flips(&doc.header) {
        let byte = bit / 8;
        let expect = if byte < 5 {
            fail(Step::Parse) // version, table length
        } else if lay.table.contains(&byte) {
            fail(Step::BlockHeader)
        } else if lay.branch.contains(&byte) || lay.height.contains(&byte) {
            fail(Step::TxId)
        } else if lay.rows_root.contains(&byte) {
            fail(Step::RowInclusion)
        } else if lay.row_count.contains(&byte) {
            let n = le_u32(&b[lay.row_count.clone()]);
            if root_from_path(doc.index, u64::from(n), &row_leaf, &doc.block_path)
                == Some(rows_root)
            {
                after_block
            } else {
                fail(Step::RowInclusion)
            }
        } else if lay.time_min.contains(&byte) || lay.time_max.contains(&byte) {
            let (lo, hi) = (
                le_i64(&b[lay.time_min.clone()]),
                le_i64(&b[lay.time_max.clone()]),
            );
            if doc.row.time < lo || doc.row.time > hi {
                fail(Step::BlockHeader)
            } else {
                after_block
            }
        } else {
            assert!(
                lay.prev.contains(&byte)
                    || lay.context.contains(&byte)
                    || lay.sealed_at.contains(&byte)
            );
            after_block
        };
        let mut d = doc.clone();
        d.header = b;
        add(format!("block.header_hex bit {bit}"), d, expect);
    }
    for (bit, i) in u64_flips(doc.index) {
        let mut d = doc.clone();
        d.index = i;
        add(format!("block.index bit {bit}"), d, fail(Step::TxId));
    }
    for (what, p) in path_mutations(&doc.block_path) {
        let mut d = doc.clone();
        d.block_path = p;
        add(format!("block.path {what}"), d, fail(Step::RowInclusion));
    }
    if let Some(ks) = &doc.block_sig {
        for (bit, b) in bit_flips(&ks.key) {
            let mut d = doc.clone();
            d.block_sig.as_mut().unwrap().key = b.try_into().unwrap();
            add(
                format!("block.signature.key bit {bit}"),
                d,
                fail(Step::BlockSignature),
            );
        }
        for (bit, b) in bit_flips(&ks.sig) {
            let mut d = doc.clone();
            d.block_sig.as_mut().unwrap().sig = b;
            add(
                format!("block.signature.sig bit {bit}"),
                d,
                fail(Step::BlockSignature),
            );
        }
        let mut d = doc.clone();
        d.block_sig = None;
        add(
            "block.signature removed".into(),
            d,
            signed_only(Step::BlockSignature),
        );
    }

    // The branch log.
    for (bit, s) in u64_flips(doc.branch_size) {
        let mut d = doc.clone();
        d.branch_size = s;
        add(
            format!("branch.size bit {bit}"),
            d,
            fail(Step::BlockInclusion),
        );
    }
    for (what, p) in path_mutations(&doc.branch_path) {
        let mut d = doc.clone();
        d.branch_path = p;
        add(format!("branch.path {what}"), d, fail(Step::BlockInclusion));
    }

    // The checkpoint header: 1 version | 8 epoch | 32 prev | 32 branches_root | 4 count | 8 time | 32 validators.
    let entry_leaf = leaf(&doc.entry);
    let branches_root: H = doc.cp_header[41..73].try_into().unwrap();
    for (bit, b) in bit_flips(&doc.cp_header) {
        let expect = match bit / 8 {
            0 => fail(Step::Parse),
            1..=40 | 77..=84 => signed_only(Step::Quorum),
            41..=72 => fail(Step::EntryInclusion),
            73..=76 => {
                let n = le_u32(&b[73..77]);
                if root_from_path(doc.entry_index, u64::from(n), &entry_leaf, &doc.cp_path)
                    == Some(branches_root)
                {
                    signed_only(Step::Quorum)
                } else {
                    fail(Step::EntryInclusion)
                }
            }
            _ => signed_only(Step::Validators),
        };
        let mut d = doc.clone();
        d.cp_header = b;
        add(format!("checkpoint.header_hex bit {bit}"), d, expect);
    }
    // The entry: 16 branch | 8 size | 32 root.
    for (bit, b) in bit_flips(&doc.entry) {
        let expect = if bit / 8 < 16 {
            fail(Step::BranchEntry)
        } else {
            fail(Step::BlockInclusion)
        };
        let mut d = doc.clone();
        d.entry = b;
        add(format!("checkpoint.entry_hex bit {bit}"), d, expect);
    }
    for (bit, i) in u64_flips(doc.entry_index) {
        let mut d = doc.clone();
        d.entry_index = i;
        add(
            format!("checkpoint.entry_index bit {bit}"),
            d,
            fail(Step::EntryInclusion),
        );
    }
    for (what, p) in path_mutations(&doc.cp_path) {
        let mut d = doc.clone();
        d.cp_path = p;
        add(
            format!("checkpoint.path {what}"),
            d,
            fail(Step::EntryInclusion),
        );
    }
    for (si, ks) in doc.sigs.iter().enumerate() {
        for (bit, b) in bit_flips(&ks.key) {
            let mut d = doc.clone();
            d.sigs[si].key = b.try_into().unwrap();
            add(
                format!("checkpoint.signatures[{si}].key bit {bit}"),
                d,
                signed_only(Step::Quorum),
            );
        }
        for (bit, b) in bit_flips(&ks.sig) {
            let mut d = doc.clone();
            d.sigs[si].sig = b;
            add(
                format!("checkpoint.signatures[{si}].sig bit {bit}"),
                d,
                signed_only(Step::Quorum),
            );
        }
        let mut d = doc.clone();
        d.sigs.remove(si);
        add(
            format!("checkpoint.signatures[{si}] removed"),
            d,
            signed_only(Step::Quorum),
        );
    }

    if let Some(a) = &doc.att {
        let batch_root = root_from_path(a.index, a.batch_size, &row_leaf, &a.path)
            .expect("attestation path fits");
        let mut att = |label: String, f: &dyn Fn(&mut Att), expect: Expect| {
            let mut d = doc.clone();
            f(d.att.as_mut().unwrap());
            add(format!("attestation.{label}"), d, expect);
        };
        for (bit, b) in bit_flips(&a.device_key) {
            att(
                format!("device_key bit {bit}"),
                &|x| x.device_key = b.clone().try_into().unwrap(),
                fail(Step::Attestation),
            );
        }
        for (bit, s) in u64_flips(a.seq) {
            att(
                format!("seq bit {bit}"),
                &|x| x.seq = s,
                fail(Step::Attestation),
            );
        }
        for (bit, n) in u64_flips(a.batch_size) {
            // The device signs the batch root, not its size: a size with the same tree shape for
            // this index leads to the same root and cannot be told apart.
            let expect = if root_from_path(a.index, n, &row_leaf, &a.path) == Some(batch_root) {
                Expect::Pass
            } else {
                fail(Step::Attestation)
            };
            att(
                format!("batch_size bit {bit}"),
                &|x| x.batch_size = n,
                expect,
            );
        }
        for (bit, i) in u64_flips(a.index) {
            att(
                format!("index bit {bit}"),
                &|x| x.index = i,
                fail(Step::Attestation),
            );
        }
        for (what, p) in path_mutations(&a.path) {
            att(
                format!("path {what}"),
                &|x| x.path = p.clone(),
                fail(Step::Attestation),
            );
        }
        for (bit, b) in bit_flips(&a.sig) {
            att(
                format!("sig bit {bit}"),
                &|x| x.sig = b.clone(),
                fail(Step::Attestation),
            );
        }
    }
}

/// Runs every mutation, on the JSON document and on its binary form; returns how many
/// mutations there were (the raw bit flips of the binary form are not counted). Panics naming the first wrong outcome.
///
/// The binary form has no `format` and no `row` object, so those mutations are JSON-only. It
/// states the row only as `row_hex`, which the verifier decodes: a changed byte there that
/// still decodes to a canonical row is caught later, by the header's table or time range or by
/// the `tx_id`. Every other mutation must end at the same step in both forms. Then every bit of
/// the binary form itself is flipped (lengths, counts and presence bytes too): with a trusted
/// validator set, each flip must fail.
pub fn check_all(doc: &Doc, trust: &annals_verify::Trust) -> usize {
    let trusted = !trust.is_structure_only();
    let check = |label: &str,
                 got: Result<annals_verify::Verified, annals_verify::VerifyError>,
                 expect: Expect| {
        match (expect, &got) {
            (Expect::Pass, Ok(_)) => {}
            (Expect::Fail(step), Err(e)) if e.step() == step => {}
            _ => panic!(
                "{label}: expected {expect:?}, got {:?}",
                got.map(|_| "verified")
            ),
        }
    };
    let json = annals_verify::verify_proof(doc.to_json().as_bytes(), trust)
        .expect("the unchanged document verifies");
    let binary = doc.to_binary().expect("the document has a binary form");
    assert_eq!(
        annals_verify::verify_proof(&binary, trust).expect("its binary form verifies"),
        json
    );
    let mut n = 0;
    mutations(doc, trusted, &mut |label, d, expect| {
        check(
            &label,
            annals_verify::verify_proof(d.to_json().as_bytes(), trust),
            expect,
        );
        n += 1;
        if label.starts_with("format") || label.starts_with("row.") {
            return;
        }
        let Some(b) = d.to_binary() else { return };
        let got = annals_verify::verify_proof(&b, trust);
        if label.starts_with("row_hex") {
            match &got {
                Err(e)
                    if [Step::RowEncoding, Step::BlockHeader, Step::TxId].contains(&e.step()) => {}
                _ => panic!("binary {label}: got {:?}", got.map(|_| "verified")),
            }
        } else {
            check(&format!("binary {label}"), got, expect);
        }
    });
    if trusted {
        // The attestation's batch_size is not signed (see `mutations`): the one field whose
        // flips may pass, as the mutations above check exactly.
        let batch_size = doc.att.as_ref().map_or(0..0, |a| {
            let end = binary.len() - 64 - (1 + 32 * a.path.len()) - 8;
            end - 8..end
        });
        for (bit, b) in bit_flips(&binary) {
            if annals_verify::verify_proof(&b, trust).is_ok() && !batch_size.contains(&(bit / 8)) {
                panic!(
                    "binary form: bit {bit} (byte {}) flipped still verifies",
                    bit / 8
                );
            }
        }
    }
    n
}
