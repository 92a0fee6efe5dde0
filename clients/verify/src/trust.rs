//! What the verifier trusts: a validator set, or explicitly nothing ("structure only").
//!
//! A checkpoint is final when valid signatures from distinct validators of the set it names
//! carry *more than* two thirds of that set's voting power (FORMAT.md "Checkpoint"). The set is
//! the caller's, obtained out of band; the checkpoint's `validators` field must equal its hash.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::hex::{decode_hex, Hex};
use crate::json::{self, Value as Json};
use crate::merkle::{hash_parts, VALIDATOR_SET};
use crate::Hash;

/// Most validators a trust set may hold (the set's hash counts them in a `u32`; this is far
/// below that and far above any real set).
pub const VALIDATORS_MAX: usize = 10_000;

/// A validator: Ed25519 public key and voting power.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validator {
    pub key: [u8; 32],
    pub power: u64,
}

/// An Ed25519 signature with the public key that claims it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySignature {
    pub key: [u8; 32],
    pub sig: [u8; 64],
}

/// Why a validator set or trust file is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TrustError {
    /// No validators at all.
    Empty,
    /// More than [`VALIDATORS_MAX`] validators.
    TooMany(usize),
    /// The same key twice.
    DuplicateKey([u8; 32]),
    /// A key that is not a valid Ed25519 public key (it could never sign anything).
    InvalidKey([u8; 32]),
    /// Every validator has power 0: no checkpoint could ever be final.
    NoPower,
    /// The trust file could not be read; `line` is 1-based (0 when not line-oriented).
    Syntax { line: usize, detail: String },
}

impl fmt::Display for TrustError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrustError::Empty => write!(f, "the trusted validator set is empty"),
            TrustError::TooMany(n) => {
                write!(f, "{n} validators; at most {VALIDATORS_MAX} are accepted")
            }
            TrustError::DuplicateKey(k) => write!(f, "validator key {} is listed twice", Hex(k)),
            TrustError::InvalidKey(k) => {
                write!(f, "validator key {} is not an Ed25519 public key", Hex(k))
            }
            TrustError::NoPower => write!(f, "every trusted validator has power 0"),
            TrustError::Syntax { line: 0, detail } => write!(f, "trust file: {detail}"),
            TrustError::Syntax { line, detail } => write!(f, "trust file line {line}: {detail}"),
        }
    }
}

impl core::error::Error for TrustError {}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Mode {
    StructureOnly,
    Validators {
        /// Sorted by key, unique.
        set: Vec<Validator>,
        hash: Hash,
        total: u128,
    },
}

/// The verifier's trust anchor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trust {
    mode: Mode,
}

impl Trust {
    /// Trust exactly this validator set (any order; sorted by key here, as the set hash needs).
    pub fn validators(set: impl IntoIterator<Item = Validator>) -> Result<Trust, TrustError> {
        let mut set: Vec<Validator> = set.into_iter().collect();
        if set.is_empty() {
            return Err(TrustError::Empty);
        }
        if set.len() > VALIDATORS_MAX {
            return Err(TrustError::TooMany(set.len()));
        }
        set.sort_by_key(|v| v.key);
        if let Some(w) = set.windows(2).find(|w| w[0].key == w[1].key) {
            return Err(TrustError::DuplicateKey(w[0].key));
        }
        if let Some(v) = set
            .iter()
            .find(|v| ed25519_dalek::VerifyingKey::from_bytes(&v.key).is_err())
        {
            return Err(TrustError::InvalidKey(v.key));
        }
        let total: u128 = set.iter().map(|v| u128::from(v.power)).sum();
        if total == 0 {
            return Err(TrustError::NoPower);
        }
        let hash = validators_hash(&set);
        Ok(Trust {
            mode: Mode::Validators { set, hash, total },
        })
    }

    /// Trust nothing: check every hash and path, and any block or device signature against the
    /// key the proof itself names, but skip the validator-set and quorum steps. Such a result
    /// says the proof is well-formed and self-consistent, *not* that the ledger finalized it.
    pub fn structure_only() -> Trust {
        Trust {
            mode: Mode::StructureOnly,
        }
    }

    /// Reads a trust file. Two forms:
    /// - JSON: `{"validators": [{"key": "<64 hex>", "power": 1}, ...]}`;
    /// - text: one hex public key per line, power 1 each; blank lines and `#` comments ignored.
    ///
    /// The JSON form is recognised by its first non-blank character, `{`.
    pub fn from_file_bytes(bytes: &[u8]) -> Result<Trust, TrustError> {
        let text = core::str::from_utf8(bytes).map_err(|e| TrustError::Syntax {
            line: 0,
            detail: alloc::format!("not UTF-8 (byte {})", e.valid_up_to()),
        })?;
        if text.trim_start().starts_with('{') {
            Trust::validators(parse_json_trust(bytes)?)
        } else {
            let mut set = Vec::new();
            for (i, line) in text.lines().enumerate() {
                let line = line.split('#').next().unwrap_or("").trim();
                if line.is_empty() {
                    continue;
                }
                let key = decode_hex::<32>(line).map_err(|detail| TrustError::Syntax {
                    line: i + 1,
                    detail: alloc::format!("public key: {detail}"),
                })?;
                set.push(Validator { key, power: 1 });
            }
            Trust::validators(set)
        }
    }

    /// True for [`Trust::structure_only`].
    pub fn is_structure_only(&self) -> bool {
        self.mode == Mode::StructureOnly
    }

    /// The trusted set, sorted by key (empty for structure only).
    pub fn set(&self) -> &[Validator] {
        match &self.mode {
            Mode::StructureOnly => &[],
            Mode::Validators { set, .. } => set,
        }
    }

    /// `H(0x05 || count || (key | power)*)` of the trusted set (`None` for structure only).
    pub fn validators_hash(&self) -> Option<Hash> {
        match &self.mode {
            Mode::StructureOnly => None,
            Mode::Validators { hash, .. } => Some(*hash),
        }
    }

    /// Checks signatures over `checkpoint_hash` against the trusted set. Signatures by keys
    /// outside the set are ignored; a key counts once however often it signs; a signature by a
    /// trusted key that does not verify is an error (it can only be tampering or a bug).
    /// `Ok(None)` for structure only.
    pub(crate) fn quorum(
        &self,
        checkpoint_hash: &Hash,
        sigs: &[KeySignature],
    ) -> Result<Option<Quorum>, String> {
        let Mode::Validators { set, total, .. } = &self.mode else {
            return Ok(None);
        };
        let mut signers: Vec<[u8; 32]> = Vec::new();
        let mut power: u128 = 0;
        for s in sigs {
            let Ok(i) = set.binary_search_by(|v| v.key.cmp(&s.key)) else {
                continue;
            };
            verify_signature(&s.key, checkpoint_hash, &s.sig)
                .map_err(|e| alloc::format!("signature by validator {}: {e}", Hex(&s.key)))?;
            if !signers.contains(&s.key) {
                signers.push(s.key);
                power += u128::from(set[i].power);
            }
        }
        // Final iff power > 2/3 total, in integers: 3 * power > 2 * total.
        if power * 3 > total * 2 {
            Ok(Some(Quorum {
                signers,
                signed_power: power,
                total_power: *total,
            }))
        } else {
            Err(alloc::format!(
                "valid signatures from {} trusted validators carry power {power} of {total}; more than 2/3 is needed",
                signers.len()
            ))
        }
    }
}

/// The signatures that made a checkpoint final.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quorum {
    /// Distinct trusted validators whose signature verified, in proof order.
    pub signers: Vec<[u8; 32]>,
    pub signed_power: u128,
    pub total_power: u128,
}

/// `validators = H(0x05 || count:u32 || (pubkey:32 | power:u64) * count)`, sorted by pubkey.
pub fn validators_hash(set: &[Validator]) -> Hash {
    let mut sorted: Vec<Validator> = set.to_vec();
    sorted.sort_by_key(|v| v.key);
    let mut buf = Vec::with_capacity(4 + 40 * sorted.len());
    // A set beyond u32::MAX members cannot be hashed; `Trust` caps it at VALIDATORS_MAX.
    let count = u32::try_from(sorted.len()).unwrap_or(u32::MAX);
    buf.extend_from_slice(&count.to_le_bytes());
    for v in &sorted {
        buf.extend_from_slice(&v.key);
        buf.extend_from_slice(&v.power.to_le_bytes());
    }
    hash_parts(VALIDATOR_SET, &[&buf])
}

/// Strict Ed25519 verification (no malleable signatures, no small-order keys) of `sig` by `key`
/// over a 32-byte digest.
pub fn verify_signature(key: &[u8; 32], digest: &Hash, sig: &[u8; 64]) -> Result<(), &'static str> {
    let vk = ed25519_dalek::VerifyingKey::from_bytes(key)
        .map_err(|_| "the key is not an Ed25519 public key")?;
    vk.verify_strict(digest, &ed25519_dalek::Signature::from_bytes(sig))
        .map_err(|_| "the signature does not verify")
}

fn parse_json_trust(bytes: &[u8]) -> Result<Vec<Validator>, TrustError> {
    let err = |detail: String| TrustError::Syntax { line: 0, detail };
    let doc = json::parse(bytes).map_err(|e| err(alloc::format!("{e}")))?;
    let Json::Object(members) = &doc else {
        return Err(err(String::from("expected an object")));
    };
    if let Some((k, _)) = members.iter().find(|(k, _)| k != "validators") {
        return Err(err(alloc::format!("unknown field {k:?}")));
    }
    let Some(Json::Array(items)) = doc.get("validators") else {
        return Err(err(String::from("expected \"validators\": [...]")));
    };
    let mut set = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = |what: &str| err(alloc::format!("validators[{i}]: {what}"));
        let Json::Object(fields) = item else {
            return Err(at("expected {\"key\": ..., \"power\": ...}"));
        };
        if let Some((k, _)) = fields.iter().find(|(k, _)| k != "key" && k != "power") {
            return Err(at(&alloc::format!("unknown field {k:?}")));
        }
        let key = match item.get("key") {
            Some(Json::String(s)) => {
                decode_hex::<32>(s).map_err(|e| at(&alloc::format!("key: {e}")))?
            }
            _ => return Err(at("\"key\" must be a hex string")),
        };
        let power = match item.get("power") {
            Some(Json::Number(n)) => n
                .parse::<u64>()
                .map_err(|_| at("\"power\" must be an integer in 0..=18446744073709551615"))?,
            None => 1,
            Some(_) => return Err(at("\"power\" must be an integer")),
        };
        set.push(Validator { key, power });
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn key(i: u8) -> [u8; 32] {
        SigningKey::from_bytes(&[i; 32]).verifying_key().to_bytes()
    }

    #[test]
    fn set_is_sorted_and_checked() {
        let (a, b) = (key(1), key(2));
        let t = Trust::validators([
            Validator { key: b, power: 2 },
            Validator { key: a, power: 1 },
        ])
        .unwrap();
        assert!(t.set().windows(2).all(|w| w[0].key < w[1].key));
        assert_eq!(
            t.validators_hash(),
            Some(validators_hash(&[
                Validator { key: a, power: 1 },
                Validator { key: b, power: 2 }
            ]))
        );
        assert_eq!(Trust::validators([]), Err(TrustError::Empty));
        assert_eq!(
            Trust::validators([
                Validator { key: a, power: 1 },
                Validator { key: a, power: 3 }
            ]),
            Err(TrustError::DuplicateKey(a))
        );
        assert_eq!(
            Trust::validators([Validator { key: a, power: 0 }]),
            Err(TrustError::NoPower)
        );
        // y = 2 is not on the curve: the encoding does not decompress.
        let mut bad = [0u8; 32];
        bad[0] = 2;
        assert_eq!(
            Trust::validators([Validator { key: bad, power: 1 }]),
            Err(TrustError::InvalidKey(bad))
        );
        assert!(Trust::structure_only().is_structure_only());
        assert_eq!(Trust::structure_only().validators_hash(), None);
    }

    #[test]
    fn trust_files_in_both_forms() {
        let (a, b) = (key(1), key(2));
        let text = alloc::format!("# validators\n{}\n\n  {}  # second\n", Hex(&a), Hex(&b));
        let t = Trust::from_file_bytes(text.as_bytes()).unwrap();
        assert_eq!(t.set().len(), 2);
        assert!(t.set().iter().all(|v| v.power == 1));
        let js = alloc::format!(
            r#" {{"validators": [{{"key": "{}", "power": 5}}, {{"key": "{}"}}]}}"#,
            Hex(&a),
            Hex(&b)
        );
        let t = Trust::from_file_bytes(js.as_bytes()).unwrap();
        assert_eq!(t.set().iter().find(|v| v.key == a).unwrap().power, 5);
        assert_eq!(t.set().iter().find(|v| v.key == b).unwrap().power, 1);

        let e = Trust::from_file_bytes(b"# x\nzz\n").unwrap_err();
        assert!(matches!(e, TrustError::Syntax { line: 2, .. }), "{e}");
        let e = Trust::from_file_bytes(br#"{"validators": [], "x": 1}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        let e =
            Trust::from_file_bytes(br#"{"validators": [{"key": "00", "power": -1}]}"#).unwrap_err();
        assert!(matches!(e, TrustError::Syntax { .. }), "{e}");
        assert_eq!(
            Trust::from_file_bytes(b"# nothing\n"),
            Err(TrustError::Empty)
        );
    }

    #[test]
    fn quorum_needs_more_than_two_thirds() {
        let sks: Vec<SigningKey> = (1..=3).map(|i| SigningKey::from_bytes(&[i; 32])).collect();
        let t = Trust::validators(sks.iter().map(|k| Validator {
            key: k.verifying_key().to_bytes(),
            power: 1,
        }))
        .unwrap();
        let digest = [7u8; 32];
        let sig = |k: &SigningKey| KeySignature {
            key: k.verifying_key().to_bytes(),
            sig: k.sign(&digest).to_bytes(),
        };
        assert!(t.quorum(&digest, &[sig(&sks[0]), sig(&sks[1])]).is_err());
        let q = t
            .quorum(&digest, &[sig(&sks[0]), sig(&sks[1]), sig(&sks[2])])
            .unwrap()
            .unwrap();
        assert_eq!((q.signed_power, q.total_power, q.signers.len()), (3, 3, 3));
        assert_eq!(Trust::structure_only().quorum(&digest, &[]), Ok(None));
    }
}
