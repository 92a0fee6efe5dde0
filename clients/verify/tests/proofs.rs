//! Signed proofs built by the test-side ledger (`support`): every row verifies, quorum edges,
//! trust mistakes, every single-bit change, checkpoints on their own, consistency paths.

extern crate alloc;

mod support;

use annals_verify::*;
use ed25519_dalek::SigningKey;
use support::tamper::check_all;
use support::{key_of, sign, Doc, Fixture, H};

fn verify(doc: &Doc, trust: &Trust) -> Result<Verified, VerifyError> {
    verify_proof(doc.to_json().as_bytes(), trust)
}

fn step(doc: &Doc, trust: &Trust) -> Step {
    verify(doc, trust).expect_err("must fail").step()
}

#[test]
fn every_row_of_every_block_of_every_branch_verifies() {
    let fx = Fixture::new(&[1, 1, 1, 1]);
    let trust = fx.trust();
    let mut rows = 0;
    for (b, br) in fx.branches.iter().enumerate() {
        for (h, blk) in br.blocks.iter().enumerate() {
            for i in 0..blk.rows.len() {
                let doc = fx.proof(b, h, i, &[3, 0, 1]);
                let ok = verify(&doc, &trust)
                    .unwrap_or_else(|e| panic!("branch {b} height {h} row {i}: {e}"));
                assert_eq!(ok.tx_id.to_vec(), doc.tx_id);
                assert_eq!(
                    (ok.branch, ok.height, ok.index),
                    (br.id, h as u64, i as u32)
                );
                assert_eq!(ok.block_hash, blk.hash);
                assert_eq!(ok.block_signer, Some(key_of(&fx.node)));
                assert_eq!(ok.branch_size, br.blocks.len() as u64);
                assert_eq!(ok.row.table, br.table);
                assert_eq!(ok.row.time, blk.rows[i].time);
                assert!(ok.row.columns.windows(2).all(|w| w[0].name < w[1].name));
                assert_eq!(ok.checkpoint.hash, fx.cp_hash);
                assert_eq!((ok.checkpoint.epoch, ok.checkpoint.branch_count), (7, 3));
                let q = ok.checkpoint.quorum.as_ref().unwrap();
                let keys: Vec<[u8; 32]> = [3, 0, 1]
                    .iter()
                    .map(|&v| key_of(&fx.validators[v].0))
                    .collect();
                assert_eq!(
                    (q.signers.clone(), q.signed_power, q.total_power),
                    (keys, 3, 4)
                );
                assert!(ok.is_final());
                rows += 1;
            }
        }
    }
    assert_eq!(rows, 5 + 1 + 7 + 2 + 3 + 3 + 3 + 4);
}

#[test]
fn quorum_needs_more_than_two_thirds_of_the_power() {
    for (powers, signers, final_) in [
        (&[1][..], &[0][..], true),
        (&[1], &[], false),
        (&[1, 1, 1], &[0, 1], false), // exactly 2/3
        (&[1, 1, 1], &[0, 1, 2], true),
        (&[1, 1, 1, 1], &[1, 2], false),
        (&[1, 1, 1, 1], &[0, 1, 3], true), // 3/4
        (&[1, 1, 1, 1], &[0, 1, 2, 3], true),
        (&[1, 2, 3], &[2], false),
        (&[1, 2, 3], &[0, 2], false), // 4/6: exactly 2/3
        (&[1, 2, 3], &[1, 2], true),  // 5/6
        (&[1, 2, 3], &[0, 1], false),
        (&[u64::MAX, u64::MAX, u64::MAX], &[0, 1], false), // no overflow
        (&[u64::MAX, u64::MAX, u64::MAX], &[0, 1, 2], true),
    ] {
        let fx = Fixture::new(powers);
        let r = verify(&fx.proof(1, 0, 1, signers), &fx.trust());
        match (final_, r) {
            (true, Ok(v)) => assert!(v.is_final()),
            (false, Err(e)) => {
                assert_eq!(e.step(), Step::Quorum, "{powers:?} {signers:?}: {e}");
                assert!(e.to_string().starts_with("step quorum: "), "{e}");
            }
            (f, r) => panic!("{powers:?} signed by {signers:?}: expected final={f}, got {r:?}"),
        }
    }
}

#[test]
fn duplicate_signatures_count_once_and_unknown_keys_are_ignored() {
    let fx = Fixture::new(&[1, 1, 1]);
    let trust = fx.trust();
    let mut doc = fx.proof(0, 1, 0, &[0, 0, 1, 1, 0]);
    assert_eq!(step(&doc, &trust), Step::Quorum);
    doc.sigs.push(doc.sigs[0].clone());
    assert_eq!(step(&doc, &trust), Step::Quorum);

    // Valid signatures by keys outside the set do not help...
    let strangers: Vec<SigningKey> = (0..5)
        .map(|i| SigningKey::from_bytes(&[0x90 + i; 32]))
        .collect();
    doc.sigs
        .extend(strangers.iter().map(|k| sign(k, &fx.cp_hash)));
    assert_eq!(step(&doc, &trust), Step::Quorum);
    // ...and garbage under unknown keys does not hurt.
    let mut junk = sign(&strangers[0], &[0; 32]);
    junk.sig[0] ^= 1;
    doc.sigs.insert(0, junk);
    doc.sigs.push(sign(&fx.validators[2].0, &fx.cp_hash));
    let ok = verify(&doc, &trust).unwrap();
    let q = ok.checkpoint.quorum.unwrap();
    assert_eq!((q.signers.len(), q.signed_power), (3, 3));

    // A trusted key with a bad signature is refused even when a quorum is there without it.
    let mut bad = sign(&fx.validators[1].0, &[0; 32]);
    bad.sig[5] ^= 0x10;
    doc.sigs.push(bad);
    let e = verify(&doc, &trust).unwrap_err();
    assert_eq!(e.step(), Step::Quorum);
    assert!(
        e.detail()
            .contains(&support::hex(&key_of(&fx.validators[1].0))),
        "{e}"
    );
}

#[test]
fn the_wrong_trust_fails_at_validators() {
    let fx = Fixture::new(&[1, 1, 1]);
    let doc = fx.proof(2, 3, 3, &[0, 1, 2]);
    let set: Vec<Validator> = fx.trust().set().to_vec();
    // Another key, another power, one validator fewer: each is another set.
    let mut other_key = set.clone();
    other_key[0].key = key_of(&SigningKey::from_bytes(&[0x77; 32]));
    let mut other_power = set.clone();
    other_power[2].power = 2;
    for t in [other_key, other_power, set[..2].to_vec()] {
        let e = verify(&doc, &Trust::validators(t).unwrap()).unwrap_err();
        assert_eq!(e.step(), Step::Validators, "{e}");
        assert!(e
            .detail()
            .contains(&support::hex(&fx.trust().validators_hash().unwrap())));
    }
}

#[test]
fn structure_only_is_explicit_and_says_so() {
    let fx = Fixture::new(&[1, 1, 1, 1]);
    let mut doc = fx.proof(0, 2, 6, &[]);
    assert_eq!(step(&doc, &fx.trust()), Step::Quorum);
    let ok = verify(&doc, &Trust::structure_only()).unwrap();
    assert!(!ok.is_final());
    assert_eq!(ok.block_signer, Some(key_of(&fx.node)));
    // A block signature may be absent in structure-only mode, never with a trust set.
    doc.block_sig = None;
    assert_eq!(
        verify(&doc, &Trust::structure_only()).unwrap().block_signer,
        None
    );
    doc.sigs = fx.proof(0, 2, 6, &[0, 1, 2]).sigs;
    let e = verify(&doc, &fx.trust()).unwrap_err();
    assert_eq!(e.step(), Step::BlockSignature);
    assert!(e.detail().contains("missing"), "{e}");
}

#[test]
fn attestation_is_checked_and_reported() {
    let fx = Fixture::new(&[1]);
    let mut doc = fx.proof(2, 1, 2, &[0]);
    fx.attest(&mut doc, 2, 1, 3);
    let ok = verify(&doc, &fx.trust()).unwrap();
    let a = ok.attestation.unwrap();
    assert_eq!(
        (a.device_key, a.seq, a.batch_size, a.index),
        (key_of(&fx.device), 4242, 6, 2)
    );
    // Signed by someone else: the device key must be the signer.
    let mut forged = doc.clone();
    forged.att.as_mut().unwrap().device_key = key_of(&fx.node);
    assert_eq!(step(&forged, &fx.trust()), Step::Attestation);
    // Checked in structure-only mode too: it needs no trusted key.
    assert_eq!(step(&forged, &Trust::structure_only()), Step::Attestation);
}

/// Every single-bit change to a proof signed by one, three and four validators (each with a
/// minimal quorum), from different branches, heights and positions, fails at its step.
fn every_bit(powers: &[u64], signers: &[usize], (b, h, i): (usize, usize, usize)) {
    let fx = Fixture::new(powers);
    let doc = fx.proof(b, h, i, signers);
    let n = check_all(&doc, &fx.trust());
    eprintln!("{n} mutations");
    assert!(n > 9_000, "{n} mutations");
}

#[test]
fn every_bit_one_validator_first_row() {
    every_bit(&[1], &[0], (0, 0, 0));
}

#[test]
fn every_bit_three_validators_last_row_of_two() {
    every_bit(&[1, 1, 1], &[2, 0, 1], (1, 0, 1));
}

#[test]
fn every_bit_four_validators_last_row_of_last_block() {
    every_bit(&[1, 1, 1, 1], &[1, 3, 2], (2, 3, 3));
}

#[test]
fn every_bit_attested_single_row_block_trusted_and_structure_only() {
    let fx = Fixture::new(&[1, 2, 3]);
    let mut doc = fx.proof(0, 1, 0, &[1, 2]);
    fx.attest(&mut doc, 0, 1, 4);
    let n = (
        check_all(&doc, &fx.trust()),
        check_all(&doc, &Trust::structure_only()),
    );
    eprintln!("{n:?} mutations");
    assert!(n.0 > 10_000 && n.1 == n.0, "{n:?} mutations");
}

#[test]
fn a_checkpoint_on_its_own() {
    let fx = Fixture::new(&[1, 2, 3]);
    let sigs = |vs: &[usize]| -> Vec<KeySignature> {
        vs.iter()
            .map(|&v| {
                let s = sign(&fx.validators[v].0, &fx.cp_hash);
                KeySignature {
                    key: s.key,
                    sig: s.sig.try_into().unwrap(),
                }
            })
            .collect()
    };
    let info = verify_checkpoint(&fx.cp_header, &sigs(&[2, 1]), &fx.trust()).unwrap();
    assert_eq!(
        (info.hash, info.epoch, info.branch_count, info.time),
        (fx.cp_hash, 7, 3, 1_700_000_200_000_000_000)
    );
    assert_eq!(info.validators, fx.trust().validators_hash().unwrap());
    assert_eq!(info.quorum.unwrap().signed_power, 5);
    assert_eq!(
        verify_checkpoint(&fx.cp_header, &sigs(&[2, 0]), &fx.trust())
            .unwrap_err()
            .step(),
        Step::Quorum
    );
    assert_eq!(
        verify_checkpoint(&fx.cp_header[1..], &sigs(&[2, 1]), &fx.trust())
            .unwrap_err()
            .step(),
        Step::Parse
    );
    let other = Fixture::new(&[1, 2]);
    assert_eq!(
        verify_checkpoint(&fx.cp_header, &sigs(&[2, 1]), &other.trust())
            .unwrap_err()
            .step(),
        Step::Validators
    );
    assert_eq!(
        verify_checkpoint(&fx.cp_header, &[], &Trust::structure_only())
            .unwrap()
            .quorum,
        None
    );
}

#[test]
fn branch_growth_between_two_checkpoints() {
    let fx = Fixture::with_blocks(&[1], &[&[1, 2, 3, 1, 1, 2, 5, 1, 1, 1, 2], &[1, 1]]);
    let br = &fx.branches[0];
    let hashes: Vec<H> = br.blocks.iter().map(|b| support::leaf(&b.hash)).collect();
    let n = hashes.len();
    for m in 1..=n {
        let older = support::entry(&br.id, m as u64, &support::root(&hashes[..m]));
        let newer = support::entry(&br.id, n as u64, &support::root(&hashes));
        let p = support::consistency(&hashes, m);
        verify_entry_consistency(&older, &newer, &p).unwrap_or_else(|e| panic!("{m} -> {n}: {e}"));
        if m < n {
            // Shrinking is refused; so is a path for another history.
            assert_eq!(
                verify_entry_consistency(&newer, &older, &p)
                    .unwrap_err()
                    .step(),
                Step::Consistency
            );
            let mut q = p.clone();
            q[0][31] ^= 0x80;
            assert_eq!(
                verify_entry_consistency(&older, &newer, &q)
                    .unwrap_err()
                    .step(),
                Step::Consistency
            );
        }
    }
    let a = support::entry(&fx.branches[0].id, 1, &hashes[0]);
    let b = support::entry(&fx.branches[1].id, 2, &hashes[0]);
    let e = verify_entry_consistency(&a, &b, &[]).unwrap_err();
    assert_eq!(e.step(), Step::Consistency);
    assert!(e.detail().contains("different branches"), "{e}");
    assert_eq!(
        verify_entry_consistency(&a[1..], &b, &[])
            .unwrap_err()
            .step(),
        Step::Parse
    );
}

#[test]
fn inclusion_and_consistency_for_all_sizes_to_64() {
    let all: Vec<H> = (0u32..64).map(|i| leaf_hash(&i.to_le_bytes())).collect();
    let roots: Vec<H> = (0..=64).map(|n| support::root(&all[..n])).collect();
    for n in 1..=64usize {
        assert_eq!(
            roots[n],
            mth(&(0u32..n as u32)
                .map(|i| i.to_le_bytes())
                .collect::<Vec<_>>())
        );
        for i in 0..n {
            let p = support::path(&all[..n], i);
            assert!(
                verify_inclusion(&all[i], i as u64, n as u64, &p, &roots[n]),
                "leaf {i} of {n}"
            );
            assert!(
                !verify_inclusion(&all[(i + 1) % n], i as u64, n as u64, &p, &roots[n]) || n == 1
            );
            if !p.is_empty() {
                let mut q = p.clone();
                q[p.len() - 1][0] ^= 1;
                assert!(!verify_inclusion(
                    &all[i], i as u64, n as u64, &q, &roots[n]
                ));
            }
        }
        for m in 1..=n {
            let p = support::consistency(&all[..n], m);
            assert!(
                verify_consistency(m as u64, n as u64, &roots[m], &roots[n], &p),
                "{m} -> {n}"
            );
            if m == n {
                continue;
            }
            // Another old root, another new root, a changed path element, a shorter or longer
            // path, swapped sizes: all refused.
            let mut bad = roots[m];
            bad[3] ^= 4;
            assert!(!verify_consistency(m as u64, n as u64, &bad, &roots[n], &p));
            assert!(!verify_consistency(m as u64, n as u64, &roots[m], &bad, &p));
            for k in 0..p.len() {
                for bit in [0, 7, 255] {
                    let mut q = p.clone();
                    q[k][bit / 8] ^= 1 << (bit % 8);
                    assert!(
                        !verify_consistency(m as u64, n as u64, &roots[m], &roots[n], &q),
                        "{m} -> {n} [{k}] bit {bit}"
                    );
                }
            }
            assert!(!verify_consistency(
                m as u64,
                n as u64,
                &roots[m],
                &roots[n],
                &p[..p.len() - 1]
            ));
            let mut longer = p.clone();
            longer.push(roots[n]);
            assert!(!verify_consistency(
                m as u64, n as u64, &roots[m], &roots[n], &longer
            ));
            assert!(!verify_consistency(
                n as u64, m as u64, &roots[n], &roots[m], &p
            ));
        }
    }
}

/// A `Verifier` checks a checkpoint's quorum once; every other step still runs per proof.
#[test]
fn a_verifier_remembers_final_checkpoints_only() {
    let fx = Fixture::new(&[1, 1, 1]);
    let trust = fx.trust();
    let mut v = Verifier::new(&trust);
    // Not final (2 of 3 signers): refused, and not remembered.
    let weak = fx.proof(1, 0, 1, &[0, 1]);
    assert_eq!(
        v.verify_proof(weak.to_json().as_bytes())
            .unwrap_err()
            .step(),
        Step::Quorum
    );
    assert_eq!(
        v.verify_proof(weak.to_json().as_bytes())
            .unwrap_err()
            .step(),
        Step::Quorum
    );
    // Final: remembered; another row under the same checkpoint needs no signatures of it.
    let good = fx.proof(1, 0, 1, &[0, 1, 2]);
    let first = v.verify_proof(good.to_json().as_bytes()).unwrap();
    assert!(first.is_final());
    let mut other = fx.proof(0, 0, 0, &[0, 1, 2]);
    other.sigs.clear();
    let again = v.verify_proof(other.to_json().as_bytes()).unwrap();
    assert_eq!(again.checkpoint.quorum, first.checkpoint.quorum);
    assert_eq!(
        verify(&other, &trust).unwrap_err().step(),
        Step::Quorum,
        "without the verifier's memory the quorum is missing"
    );
    // Every other step still runs.
    let mut bad = fx.proof(0, 0, 0, &[0, 1, 2]);
    bad.row_hex[3] ^= 1;
    assert_eq!(
        v.verify_proof(bad.to_json().as_bytes()).unwrap_err().step(),
        Step::RowEncoding
    );
}

/// A `Verifier` checks a block's signature once per (block hash, key, signature): another
/// signature or another key over the same block is checked again, and the memory is bounded.
#[test]
fn a_verifier_remembers_block_signatures_that_verified() {
    let fx = Fixture::with_blocks(&[1], &[&[3, 2, 4]]);
    let trust = fx.trust();
    let mut v = Verifier::with_block_memo(&trust, 2);
    let first = fx.proof(0, 0, 0, &[0]);
    v.verify_proof(&first.to_binary().unwrap()).unwrap();
    // The same block, another row: fine. The same block with a bad signature: refused, even
    // though a good one over that block hash is remembered.
    let row2 = fx.proof(0, 0, 2, &[0]);
    v.verify_proof(&row2.to_binary().unwrap()).unwrap();
    let mut forged = fx.proof(0, 0, 1, &[0]);
    forged.block_sig.as_mut().unwrap().sig[5] ^= 1;
    assert_eq!(
        v.verify_proof(&forged.to_binary().unwrap())
            .unwrap_err()
            .step(),
        Step::BlockSignature
    );
    // A block whose signature was never seen is checked: a bad one fails.
    let mut other = fx.proof(0, 1, 0, &[0]);
    other.block_sig.as_mut().unwrap().sig[0] ^= 1;
    assert_eq!(
        v.verify_proof(other.to_json().as_bytes())
            .unwrap_err()
            .step(),
        Step::BlockSignature
    );
    // With no memory every proof checks its block signature, and still verifies.
    let mut none = Verifier::with_block_memo(&trust, 0);
    for (h, i) in [(0, 0), (0, 1), (1, 1), (2, 3)] {
        none.verify_proof(&fx.proof(0, h, i, &[0]).to_binary().unwrap())
            .unwrap();
    }
}
