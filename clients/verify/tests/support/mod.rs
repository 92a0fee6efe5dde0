//! Test-side fixtures, written again from FORMAT.md and independent of the crate's code: hashing,
//! recursive Merkle trees and paths (RFC 9162 2.1.3.1 and 2.1.4.1 as written, not the
//! verifier's loops), row and header encodings, a small signed ledger, and a proof document
//! model with its own JSON writer so single fields can be changed.
#![allow(dead_code, unreachable_pub)]

use ed25519_dalek::{Signer, SigningKey};

pub mod doc_json;
pub mod tamper;

pub type H = [u8; 32];

pub fn hd(domain: u8, parts: &[&[u8]]) -> H {
    let mut h = blake3::Hasher::new();
    h.update(&[domain]);
    for p in parts {
        h.update(p);
    }
    *h.finalize().as_bytes()
}

pub fn leaf(d: &[u8]) -> H {
    hd(0, &[d])
}

pub fn node(l: &H, r: &H) -> H {
    hd(1, &[l, r])
}

fn split(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// `MTH` over leaf hashes, recursively.
pub fn root(l: &[H]) -> H {
    match l.len() {
        0 => *blake3::hash(b"").as_bytes(),
        1 => l[0],
        n => {
            let k = split(n);
            node(&root(&l[..k]), &root(&l[k..]))
        }
    }
}

/// RFC 9162 2.1.3.1 `PATH(m, D[n])`, leaf-first.
pub fn path(l: &[H], m: usize) -> Vec<H> {
    if l.len() <= 1 {
        return Vec::new();
    }
    let k = split(l.len());
    if m < k {
        let mut p = path(&l[..k], m);
        p.push(root(&l[k..]));
        p
    } else {
        let mut p = path(&l[k..], m - k);
        p.push(root(&l[..k]));
        p
    }
}

/// RFC 9162 2.1.4.1 `PROOF(m, D[n])`.
pub fn consistency(l: &[H], m: usize) -> Vec<H> {
    fn sub(l: &[H], m: usize, whole: bool) -> Vec<H> {
        let n = l.len();
        if m == n {
            return if whole { Vec::new() } else { vec![root(l)] };
        }
        let k = split(n);
        if m <= k {
            let mut p = sub(&l[..k], m, whole);
            p.push(root(&l[k..]));
            p
        } else {
            let mut p = sub(&l[k..], m - k, false);
            p.push(root(&l[..k]));
            p
        }
    }
    if m == 0 || m == l.len() {
        return Vec::new();
    }
    sub(l, m, true)
}

/// The root a path leads to, by the tree's recursive shape (the oracle for which size changes a
/// path can detect at all).
pub fn root_from_path(index: u64, size: u64, leaf: &H, p: &[H]) -> Option<H> {
    if index >= size {
        return None;
    }
    if size == 1 {
        return p.is_empty().then_some(*leaf);
    }
    let mut k = 1u64;
    while k <= (size - 1) / 2 {
        k *= 2;
    }
    let (top, rest) = p.split_last()?;
    if index < k {
        Some(node(&root_from_path(index, k, leaf, rest)?, top))
    } else {
        Some(node(top, &root_from_path(index - k, size - k, leaf, rest)?))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum V {
    Tag(String),
    F64(f64),
    I64(i64),
    U64(u64),
    Bool(bool),
    Str(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Col {
    pub name: String,
    /// Written as the document's `kind`; normally the value's own kind.
    pub kind: String,
    pub v: V,
}

pub fn col(name: &str, v: V) -> Col {
    let kind = match v {
        V::Tag(_) => "tag",
        V::F64(_) => "f64",
        V::I64(_) => "i64",
        V::U64(_) => "u64",
        V::Bool(_) => "bool",
        V::Str(_) => "string",
    };
    Col {
        name: name.into(),
        kind: kind.into(),
        v,
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TRow {
    pub table: String,
    pub time: i64,
    /// In document order (not sorted).
    pub cols: Vec<Col>,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

pub fn encode_row(r: &TRow) -> Vec<u8> {
    let mut cols = r.cols.clone();
    cols.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    let mut out = vec![1u8];
    put_str(&mut out, &r.table);
    out.extend_from_slice(&r.time.to_le_bytes());
    out.extend_from_slice(&(cols.len() as u16).to_le_bytes());
    for c in &cols {
        put_str(&mut out, &c.name);
        match &c.v {
            V::Tag(s) => {
                out.push(1);
                put_str(&mut out, s)
            }
            V::F64(x) => {
                out.push(2);
                out.extend_from_slice(&x.to_bits().to_le_bytes())
            }
            V::I64(x) => {
                out.push(3);
                out.extend_from_slice(&x.to_le_bytes())
            }
            V::U64(x) => {
                out.push(4);
                out.extend_from_slice(&x.to_le_bytes())
            }
            V::Bool(b) => {
                out.push(5);
                out.push(*b as u8)
            }
            V::Str(s) => {
                out.push(6);
                put_str(&mut out, s)
            }
        }
    }
    out
}

/// Byte offsets of the fixed fields of a block header whose table is `table_len` bytes.
pub struct HeaderLayout {
    pub table: std::ops::Range<usize>,
    pub branch: std::ops::Range<usize>,
    pub height: std::ops::Range<usize>,
    pub prev: std::ops::Range<usize>,
    pub rows_root: std::ops::Range<usize>,
    pub row_count: std::ops::Range<usize>,
    pub time_min: std::ops::Range<usize>,
    pub time_max: std::ops::Range<usize>,
    pub context: std::ops::Range<usize>,
    pub sealed_at: std::ops::Range<usize>,
}

pub fn header_layout(table_len: usize) -> HeaderLayout {
    let mut at = 5;
    let mut next = |n: usize| {
        let r = at..at + n;
        at += n;
        r
    };
    HeaderLayout {
        table: next(table_len),
        branch: next(16),
        height: next(8),
        prev: next(32),
        rows_root: next(32),
        row_count: next(4),
        time_min: next(8),
        time_max: next(8),
        context: next(32),
        sealed_at: next(8),
    }
}

#[allow(clippy::too_many_arguments)]
pub fn encode_header(
    table: &str,
    branch: &[u8; 16],
    height: u64,
    prev: &H,
    rows_root: &H,
    row_count: u32,
    time_min: i64,
    time_max: i64,
    context: &H,
    sealed_at: i64,
) -> Vec<u8> {
    let mut out = vec![1u8];
    put_str(&mut out, table);
    out.extend_from_slice(branch);
    out.extend_from_slice(&height.to_le_bytes());
    out.extend_from_slice(prev);
    out.extend_from_slice(rows_root);
    out.extend_from_slice(&row_count.to_le_bytes());
    out.extend_from_slice(&time_min.to_le_bytes());
    out.extend_from_slice(&time_max.to_le_bytes());
    out.extend_from_slice(context);
    out.extend_from_slice(&sealed_at.to_le_bytes());
    out
}

pub fn tx_id(branch: &[u8; 16], height: u64, index: u32, leaf_hash: &H) -> H {
    hd(
        3,
        &[
            branch,
            &height.to_le_bytes(),
            &index.to_le_bytes(),
            leaf_hash,
        ],
    )
}

pub fn entry(branch: &[u8; 16], size: u64, root: &H) -> Vec<u8> {
    let mut out = branch.to_vec();
    out.extend_from_slice(&size.to_le_bytes());
    out.extend_from_slice(root);
    out
}

pub fn encode_checkpoint(
    epoch: u64,
    prev: &H,
    branches_root: &H,
    count: u32,
    time: i64,
    validators: &H,
) -> Vec<u8> {
    let mut out = vec![1u8];
    out.extend_from_slice(&epoch.to_le_bytes());
    out.extend_from_slice(prev);
    out.extend_from_slice(branches_root);
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&time.to_le_bytes());
    out.extend_from_slice(validators);
    out
}

pub fn validators_hash(set: &[([u8; 32], u64)]) -> H {
    let mut s = set.to_vec();
    s.sort();
    let mut buf = (s.len() as u32).to_le_bytes().to_vec();
    for (k, p) in &s {
        buf.extend_from_slice(k);
        buf.extend_from_slice(&p.to_le_bytes());
    }
    hd(5, &[&buf])
}

pub fn key_of(sk: &SigningKey) -> [u8; 32] {
    sk.verifying_key().to_bytes()
}

pub fn sign(sk: &SigningKey, digest: &H) -> KS {
    KS {
        key: key_of(sk),
        sig: sk.sign(digest).to_bytes().to_vec(),
    }
}

/// A key and a signature as a document carries them (bytes, so any bit can change).
#[derive(Debug, Clone, PartialEq)]
pub struct KS {
    pub key: [u8; 32],
    pub sig: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Att {
    pub device_key: [u8; 32],
    pub seq: u64,
    pub batch_size: u64,
    pub index: u64,
    pub path: Vec<H>,
    pub sig: Vec<u8>,
}

/// A proof document, field by field.
#[derive(Debug, Clone, PartialEq)]
pub struct Doc {
    pub format: String,
    pub row: TRow,
    pub row_hex: Vec<u8>,
    pub tx_id: Vec<u8>,
    pub header: Vec<u8>,
    pub index: u64,
    pub block_path: Vec<H>,
    pub block_sig: Option<KS>,
    pub branch_size: u64,
    pub branch_path: Vec<H>,
    pub cp_header: Vec<u8>,
    pub entry: Vec<u8>,
    pub entry_index: u64,
    pub cp_path: Vec<H>,
    pub sigs: Vec<KS>,
    pub att: Option<Att>,
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

pub fn unhex32(s: &str) -> H {
    unhex(s).try_into().unwrap()
}

/// A JSON string literal; control characters and (every third) non-ASCII character escaped.
pub fn jstr(s: &str) -> String {
    let mut out = String::from("\"");
    for (i, c) in s.chars().enumerate() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if (c as u32) > 0x7f && i % 3 == 0 => {
                let mut buf = [0u16; 2];
                for u in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn jpath(p: &[H]) -> String {
    let items: Vec<String> = p.iter().map(|h| format!("\"{}\"", hex(h))).collect();
    format!("[{}]", items.join(","))
}

fn jks(k: &KS) -> String {
    format!(
        "{{\"key\":\"{}\",\"sig\":\"{}\"}}",
        hex(&k.key),
        hex(&k.sig)
    )
}

impl Doc {
    pub fn to_json(&self) -> String {
        let cols: Vec<String> = self
            .row
            .cols
            .iter()
            .map(|c| {
                let v = match &c.v {
                    V::Tag(s) | V::Str(s) => jstr(s),
                    V::F64(x) => {
                        assert!(x.is_finite());
                        format!("{x:?}")
                    }
                    V::I64(x) => x.to_string(),
                    V::U64(x) => x.to_string(),
                    V::Bool(b) => b.to_string(),
                };
                format!(
                    "{{\"name\":{},\"kind\":{},\"value\":{v}}}",
                    jstr(&c.name),
                    jstr(&c.kind)
                )
            })
            .collect();
        let mut s = format!(
            "{{\"format\":{},\"row\":{{\"table\":{},\"time\":{},\"columns\":[{}]}},\"row_hex\":\"{}\",\"tx_id\":\"{}\",",
            jstr(&self.format),
            jstr(&self.row.table),
            self.row.time,
            cols.join(","),
            hex(&self.row_hex),
            hex(&self.tx_id)
        );
        s += &format!(
            "\"block\":{{\"header_hex\":\"{}\",\"index\":{},\"path\":{}{}}},",
            hex(&self.header),
            self.index,
            jpath(&self.block_path),
            match &self.block_sig {
                Some(k) => format!(",\"signature\":{}", jks(k)),
                None => String::new(),
            }
        );
        s += &format!(
            "\"branch\":{{\"size\":{},\"path\":{}}},",
            self.branch_size,
            jpath(&self.branch_path)
        );
        let sigs: Vec<String> = self.sigs.iter().map(jks).collect();
        s += &format!(
            "\"checkpoint\":{{\"header_hex\":\"{}\",\"entry_hex\":\"{}\",\"entry_index\":{},\"path\":{},\"signatures\":[{}]}}",
            hex(&self.cp_header),
            hex(&self.entry),
            self.entry_index,
            jpath(&self.cp_path),
            sigs.join(",")
        );
        if let Some(a) = &self.att {
            s += &format!(
                ",\"attestation\":{{\"device_key\":\"{}\",\"seq\":{},\"batch_size\":{},\"index\":{},\"path\":{},\"sig\":\"{}\"}}",
                hex(&a.device_key),
                a.seq,
                a.batch_size,
                a.index,
                jpath(&a.path),
                hex(&a.sig)
            );
        }
        s.push('}');
        s
    }
}

impl Doc {
    /// The proof in the binary form `annals-proof-bin/1`, written from docs/PROOF-BINARY.md
    /// (not by the engine's writer). `None` when the document states something the binary
    /// form cannot hold (an index over `u32`, a signature that is not 64 bytes, a path over
    /// 255 hashes); the binary form has no `format` or `row` object.
    pub fn to_binary(&self) -> Option<Vec<u8>> {
        fn bytes(out: &mut Vec<u8>, b: &[u8]) {
            out.extend_from_slice(&(b.len() as u32).to_le_bytes());
            out.extend_from_slice(b);
        }
        fn path(out: &mut Vec<u8>, p: &[H]) -> Option<()> {
            out.push(u8::try_from(p.len()).ok()?);
            p.iter().for_each(|h| out.extend_from_slice(h));
            Some(())
        }
        fn ks(out: &mut Vec<u8>, k: &KS) -> Option<()> {
            if k.sig.len() != 64 {
                return None;
            }
            out.extend_from_slice(&k.key);
            out.extend_from_slice(&k.sig);
            Some(())
        }
        let mut out = b"APRF\x01".to_vec();
        bytes(&mut out, &self.row_hex);
        if self.tx_id.len() != 32 || self.entry.len() != 56 {
            return None;
        }
        out.extend_from_slice(&self.tx_id);
        bytes(&mut out, &self.header);
        out.extend_from_slice(&u32::try_from(self.index).ok()?.to_le_bytes());
        path(&mut out, &self.block_path)?;
        match &self.block_sig {
            None => out.push(0),
            Some(k) => {
                out.push(1);
                ks(&mut out, k)?;
            }
        }
        out.extend_from_slice(&self.branch_size.to_le_bytes());
        path(&mut out, &self.branch_path)?;
        bytes(&mut out, &self.cp_header);
        out.extend_from_slice(&self.entry);
        out.extend_from_slice(&self.entry_index.to_le_bytes());
        path(&mut out, &self.cp_path)?;
        out.extend_from_slice(&(self.sigs.len() as u32).to_le_bytes());
        for k in &self.sigs {
            ks(&mut out, k)?;
        }
        match &self.att {
            None => out.push(0),
            Some(a) => {
                if a.sig.len() != 64 {
                    return None;
                }
                out.push(1);
                out.extend_from_slice(&a.device_key);
                out.extend_from_slice(&a.seq.to_le_bytes());
                out.extend_from_slice(&a.batch_size.to_le_bytes());
                out.extend_from_slice(&a.index.to_le_bytes());
                path(&mut out, &a.path)?;
                out.extend_from_slice(&a.sig);
            }
        }
        Some(out)
    }
}

pub struct FxBlock {
    pub rows: Vec<TRow>,
    pub header: Vec<u8>,
    pub hash: H,
    pub sig: KS,
}

pub struct FxBranch {
    pub id: [u8; 16],
    pub table: String,
    pub blocks: Vec<FxBlock>,
}

/// A small ledger: several branches and tables, blocks of different sizes, one checkpoint over
/// every branch, signed by any subset of its validators.
pub struct Fixture {
    pub node: SigningKey,
    pub device: SigningKey,
    pub validators: Vec<(SigningKey, u64)>,
    pub branches: Vec<FxBranch>,
    pub entries: Vec<Vec<u8>>,
    pub cp_header: Vec<u8>,
    pub cp_hash: H,
}

fn sample_row(table: &str, b: usize, h: usize, i: usize) -> TRow {
    let n = (b * 100 + h * 10 + i) as i64;
    let mut cols = vec![
        col("velocity", V::F64(n as f64 * 0.1 - 3.3)),
        col("truck", V::Tag(format!("truck_{n}"))),
        col("fleet", V::Tag(["East", "Wést", "北"][i % 3].into())),
    ];
    match i % 4 {
        0 => cols.push(col("odometer", V::U64(u64::MAX - n as u64))),
        1 => cols.push(col("status", V::I64(-n))),
        2 => cols.push(col("note", V::Str(format!("line \"{n}\"\n\u{1F69A} ok")))),
        _ => cols.push(col("moving", V::Bool(n % 2 == 0))),
    }
    TRow {
        table: table.into(),
        time: 1_700_000_000_000_000_000 + n * 1_000_000 - (b as i64) * 7,
        cols,
    }
}

impl Fixture {
    /// Validators with these powers; three branches (two tables) with blocks of
    /// `[5, 1, 7]`, `[2]` and `[3, 3, 3, 4]` rows.
    pub fn new(powers: &[u64]) -> Fixture {
        Fixture::with_blocks(powers, &[&[5, 1, 7], &[2], &[3, 3, 3, 4]])
    }

    pub fn with_blocks(powers: &[u64], shape: &[&[usize]]) -> Fixture {
        let node = SigningKey::from_bytes(&[0x11; 32]);
        let device = SigningKey::from_bytes(&[0x22; 32]);
        let validators: Vec<(SigningKey, u64)> = powers
            .iter()
            .enumerate()
            .map(|(i, p)| (SigningKey::from_bytes(&[0x40 + i as u8; 32]), *p))
            .collect();
        let branches: Vec<FxBranch> = shape
            .iter()
            .enumerate()
            .map(|(b, sizes)| {
                let table = if b % 2 == 0 {
                    "fleet/readings"
                } else {
                    "fleet/diagnostics"
                };
                let mut id = [0u8; 16];
                id.copy_from_slice(&hd(9, &[&[b as u8]])[..16]);
                id[0] = 0x10 * (b as u8 + 1); // ids ascend with `b`: entries sort as built
                let mut prev = [0u8; 32];
                let mut blocks = Vec::new();
                for (h, &n) in sizes.iter().enumerate() {
                    let rows: Vec<TRow> = (0..n).map(|i| sample_row(table, b, h, i)).collect();
                    let leaves: Vec<H> = rows.iter().map(|r| leaf(&encode_row(r))).collect();
                    let times: Vec<i64> = rows.iter().map(|r| r.time).collect();
                    let header = encode_header(
                        table,
                        &id,
                        h as u64,
                        &prev,
                        &root(&leaves),
                        n as u32,
                        *times.iter().min().unwrap(),
                        *times.iter().max().unwrap(),
                        &hd(9, &[table.as_bytes()]),
                        1_700_000_100_000_000_000 + h as i64,
                    );
                    let hash = hd(2, &[&header]);
                    let sig = sign(&node, &hash);
                    prev = hash;
                    blocks.push(FxBlock {
                        rows,
                        header,
                        hash,
                        sig,
                    });
                }
                FxBranch {
                    id,
                    table: table.into(),
                    blocks,
                }
            })
            .collect();
        assert!(branches.windows(2).all(|w| w[0].id < w[1].id));
        let entries: Vec<Vec<u8>> = branches
            .iter()
            .map(|b| {
                // The branch log's leaf data are the block hashes.
                let log: Vec<H> = b.blocks.iter().map(|x| leaf(&x.hash)).collect();
                entry(&b.id, log.len() as u64, &root(&log))
            })
            .collect();
        let entry_leaves: Vec<H> = entries.iter().map(|e| leaf(e)).collect();
        let set: Vec<([u8; 32], u64)> = validators.iter().map(|(k, p)| (key_of(k), *p)).collect();
        let cp_header = encode_checkpoint(
            7,
            &hd(9, &[b"epoch 6"]),
            &root(&entry_leaves),
            entries.len() as u32,
            1_700_000_200_000_000_000,
            &validators_hash(&set),
        );
        let cp_hash = hd(4, &[&cp_header]);
        Fixture {
            node,
            device,
            validators,
            branches,
            entries,
            cp_header,
            cp_hash,
        }
    }

    pub fn trust(&self) -> annals_verify::Trust {
        annals_verify::Trust::validators(self.validators.iter().map(|(k, p)| {
            annals_verify::Validator {
                key: key_of(k),
                power: *p,
            }
        }))
        .unwrap()
    }

    /// The proof of row `i` of block `h` of branch `b`, signed by validators `signers`.
    pub fn proof(&self, b: usize, h: usize, i: usize, signers: &[usize]) -> Doc {
        let br = &self.branches[b];
        let blk = &br.blocks[h];
        let row = blk.rows[i].clone();
        let enc = encode_row(&row);
        let leaves: Vec<H> = blk.rows.iter().map(|r| leaf(&encode_row(r))).collect();
        let log: Vec<H> = br.blocks.iter().map(|x| leaf(&x.hash)).collect();
        let entry_leaves: Vec<H> = self.entries.iter().map(|e| leaf(e)).collect();
        Doc {
            format: "annals-proof/1".into(),
            row,
            tx_id: tx_id(&br.id, h as u64, i as u32, &leaf(&enc)).to_vec(),
            row_hex: enc,
            header: blk.header.clone(),
            index: i as u64,
            block_path: path(&leaves, i),
            block_sig: Some(blk.sig.clone()),
            branch_size: log.len() as u64,
            branch_path: path(&log, h),
            cp_header: self.cp_header.clone(),
            entry: self.entries[b].clone(),
            entry_index: b as u64,
            cp_path: path(&entry_leaves, b),
            sigs: signers
                .iter()
                .map(|&v| sign(&self.validators[v].0, &self.cp_hash))
                .collect(),
            att: None,
        }
    }

    /// Adds a device attestation: the device signed a batch made of the block's rows followed
    /// by `extra` rows of its own.
    pub fn attest(&self, doc: &mut Doc, b: usize, h: usize, extra: usize) {
        let blk = &self.branches[b].blocks[h];
        let mut batch: Vec<H> = blk.rows.iter().map(|r| leaf(&encode_row(r))).collect();
        batch.extend((0..extra).map(|i| leaf(&[i as u8, 0xAA])));
        let batch_root = root(&batch);
        let seq = 4242u64;
        let dk = key_of(&self.device);
        let digest = hd(6, &[&dk, &seq.to_le_bytes(), &batch_root]);
        doc.att = Some(Att {
            device_key: dk,
            seq,
            batch_size: batch.len() as u64,
            index: doc.index,
            path: path(&batch, doc.index as usize),
            sig: self.device.sign(&digest).to_bytes().to_vec(),
        });
    }
}
