//! Secret values at rest: each is sealed with ChaCha20-Poly1305 (ring's) under the node's
//! sealing key, with a fresh random nonce, and bound to where it belongs (namespace, secret,
//! key and version are the associated data): a sealed value copied into another secret, or
//! back into an older version, does not open.
//!
//! The key is 32 random bytes in `secrets.key` in the data directory (mode 0600, made at
//! first start), or given in hex by `GUST_SECRETS_KEY`; a cluster's nodes need the same one.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use base64::Engine;
use gust_model::{Name, Namespace};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use crate::StoreError;

/// The environment variable that gives the sealing key (64 hex digits) instead of the file.
pub const SEALING_KEY_ENV: &str = "GUST_SECRETS_KEY";
const KEY_FILE: &str = "secrets.key";
const KEY_BYTES: usize = 32;

pub struct Sealer {
    key: LessSafeKey,
    random: SystemRandom,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(***)")
    }
}

/// Where a value belongs: what it is sealed to.
fn place(namespace: &Namespace, secret: &Name, key: &str, version: u32) -> String {
    format!("gust-secret\0{namespace}\0{secret}\0{key}\0{version}")
}

impl Sealer {
    /// The key from `GUST_SECRETS_KEY` if set, else `secrets.key` in `data_dir`, made on first
    /// use.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let invalid = |what: String| StoreError::Database(what);
        let bytes = match std::env::var(SEALING_KEY_ENV) {
            Ok(hex_key) if !hex_key.trim().is_empty() => hex::decode(hex_key.trim())
                .ok()
                .filter(|k| k.len() == KEY_BYTES)
                .ok_or_else(|| invalid(format!("{SEALING_KEY_ENV} is not 64 hex digits")))?,
            _ => Self::key_file(data_dir)?,
        };
        Self::from_key(&bytes)
    }

    fn key_file(data_dir: &Path) -> Result<Vec<u8>, StoreError> {
        let path = data_dir.join(KEY_FILE);
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => hex::decode(text.trim())
                .ok()
                .filter(|k| k.len() == KEY_BYTES)
                .ok_or_else(|| {
                    StoreError::Database(format!(
                        "{} is not 64 hex digits; secrets sealed with it cannot be opened",
                        path.display()
                    ))
                }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; KEY_BYTES];
                SystemRandom::new()
                    .fill(&mut key)
                    .map_err(|_| StoreError::Database("no randomness for a key".into()))?;
                // Written whole under another name, then renamed: never a half key.
                let temp = data_dir.join(format!(".{KEY_FILE}.{}", std::process::id()));
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&temp)
                    .map_err(io)?;
                file.write_all(format!("{}\n", hex::encode(key)).as_bytes())
                    .and_then(|()| file.sync_all())
                    .map_err(io)?;
                std::fs::rename(&temp, &path).map_err(io)?;
                Ok(key.to_vec())
            }
            Err(err) => Err(io(err)),
        }
    }

    pub fn from_key(bytes: &[u8]) -> Result<Self, StoreError> {
        let key = UnboundKey::new(&CHACHA20_POLY1305, bytes)
            .map_err(|_| StoreError::Database("a sealing key is 32 bytes".into()))?;
        Ok(Self {
            key: LessSafeKey::new(key),
            random: SystemRandom::new(),
        })
    }

    /// `value` sealed for its place, as base64 of nonce, ciphertext and tag.
    pub fn seal(
        &self,
        (namespace, secret, key, version): (&Namespace, &Name, &str, u32),
        value: &[u8],
    ) -> Result<String, StoreError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .map_err(|_| StoreError::Database("no randomness for a nonce".into()))?;
        let mut sealed = value.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(place(namespace, secret, key, version).as_bytes()),
                &mut sealed,
            )
            .map_err(|_| StoreError::Database("sealing failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(base64::engine::general_purpose::STANDARD.encode(out))
    }

    /// The value sealed for this place, or an error saying it cannot be opened here.
    pub fn open_value(
        &self,
        (namespace, secret, key, version): (&Namespace, &Name, &str, u32),
        sealed: &str,
    ) -> Result<Vec<u8>, StoreError> {
        let unopenable = || {
            StoreError::Database(format!(
                "secret {secret} key {key:?} cannot be opened with this node's key (sealed with another {SEALING_KEY_ENV} or secrets.key?)"
            ))
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .map_err(|_| unopenable())?;
        if bytes.len() < NONCE_LEN {
            return Err(unopenable());
        }
        let (nonce, rest) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| unopenable())?;
        let mut rest = rest.to_vec();
        let opened = self
            .key
            .open_in_place(
                nonce,
                Aad::from(place(namespace, secret, key, version).as_bytes()),
                &mut rest,
            )
            .map_err(|_| unopenable())?;
        Ok(opened.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_opens_only_where_it_was_sealed_and_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let sealer = Sealer::open(dir.path()).unwrap();
        let key_file = dir.path().join(KEY_FILE);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (ns, db) = (
            Namespace::parse("team-a").unwrap(),
            Name::parse("secret", "db").unwrap(),
        );
        let sealed = sealer
            .seal((&ns, &db, "password", 1), b"canary-42")
            .unwrap();
        assert!(!sealed.contains("canary"));
        assert_eq!(
            sealer
                .open_value((&ns, &db, "password", 1), &sealed)
                .unwrap(),
            b"canary-42"
        );
        // Same value twice: different text (fresh nonce).
        assert_ne!(
            sealed,
            sealer
                .seal((&ns, &db, "password", 1), b"canary-42")
                .unwrap()
        );
        // Another place, another version, another key file: does not open.
        let other = Name::parse("secret", "other").unwrap();
        assert!(
            sealer
                .open_value((&ns, &other, "password", 1), &sealed)
                .is_err()
        );
        assert!(sealer.open_value((&ns, &db, "user", 1), &sealed).is_err());
        assert!(
            sealer
                .open_value((&ns, &db, "password", 2), &sealed)
                .is_err()
        );
        let stranger = Sealer::from_key(&[7u8; 32]).unwrap();
        let refused = stranger.open_value((&ns, &db, "password", 1), &sealed);
        assert!(
            refused
                .unwrap_err()
                .to_string()
                .contains("cannot be opened")
        );
        // The key file is read again, not replaced.
        let again = Sealer::open(dir.path()).unwrap();
        assert_eq!(
            again
                .open_value((&ns, &db, "password", 1), &sealed)
                .unwrap(),
            b"canary-42"
        );
        assert_eq!(format!("{again:?}"), "Sealer(***)");
    }
}
