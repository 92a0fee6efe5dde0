//! The node's Ed25519 identity: created on first start, then loaded.

use std::path::Path;

use annals_format::sign::SigningKey;

use crate::error::EngineError;

/// File name of the node key inside the data directory (32-byte seed, mode 0600).
pub const NODE_KEY_FILE: &str = "node.key";

/// Loads `node.key`, or creates it with fresh randomness. Returns the key and whether it is new.
pub fn load_or_create(data_dir: &Path) -> Result<(SigningKey, bool), EngineError> {
    let path = data_dir.join(NODE_KEY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let seed: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                EngineError::Corrupt(format!(
                    "{}: expected a 32-byte Ed25519 seed, found {} bytes",
                    path.display(),
                    bytes.len()
                ))
            })?;
            Ok((SigningKey::from_bytes(&seed), false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SigningKey::generate(&mut rand::rngs::OsRng);
            annals_storage::fsutil::atomic_write(&path, key.as_bytes())
                .map_err(|e| EngineError::io(&path, e))?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| EngineError::io(&path, e))?;
            }
            Ok((key, true))
        }
        Err(e) => Err(EngineError::io(&path, e)),
    }
}
