//! Encryption at rest for tokens and connector secrets (ChaCha20-Poly1305, random nonces).

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use secrecy::{ExposeSecret, SecretString};

const NONCE_LEN: usize = 12;
/// Format marker so a future cipher change can be told apart.
const VERSION: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("the master key must be 32 bytes, written as 64 hex digits or base64")]
    BadKey,
    #[error("a stored secret could not be decrypted: wrong master key, or the database was altered")]
    Decrypt,
    #[error("encryption failed")]
    Encrypt,
}

/// The key that protects secrets in the store. Never printed.
#[derive(Clone)]
pub struct MasterKey(Key);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey([REDACTED])")
    }
}

impl MasterKey {
    /// Parses 64 hex digits or base64 of 32 bytes.
    pub fn parse(text: &SecretString) -> Result<Self, CryptoError> {
        let text = text.expose_secret().trim();
        let bytes = if text.len() == 64 && text.chars().all(|c| c.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&text[i * 2..i * 2 + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|_| CryptoError::BadKey)?
        } else {
            base64::engine::general_purpose::STANDARD.decode(text).map_err(|_| CryptoError::BadKey)?
        };
        if bytes.len() != 32 {
            return Err(CryptoError::BadKey);
        }
        Ok(Self(*Key::from_slice(&bytes)))
    }

    /// Encrypts `plain` into `version || nonce || ciphertext+tag`.
    pub fn seal(&self, plain: &str) -> Result<Vec<u8>, CryptoError> {
        let cipher = ChaCha20Poly1305::new(&self.0);
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = cipher.encrypt(&nonce, plain.as_bytes()).map_err(|_| CryptoError::Encrypt)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Reverses [`MasterKey::seal`].
    pub fn open(&self, sealed: &[u8]) -> Result<SecretString, CryptoError> {
        if sealed.len() < 1 + NONCE_LEN || sealed[0] != VERSION {
            return Err(CryptoError::Decrypt);
        }
        let cipher = ChaCha20Poly1305::new(&self.0);
        let nonce = Nonce::from_slice(&sealed[1..1 + NONCE_LEN]);
        let plain = cipher.decrypt(nonce, &sealed[1 + NONCE_LEN..]).map_err(|_| CryptoError::Decrypt)?;
        String::from_utf8(plain).map(SecretString::from).map_err(|_| CryptoError::Decrypt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> MasterKey {
        MasterKey::parse(&SecretString::from(text.to_owned())).unwrap()
    }

    #[test]
    fn sealed_secrets_round_trip_and_do_not_contain_the_plain_text() {
        let key = key(&"ab".repeat(32));
        let sealed = key.seal("refresh-token-123").unwrap();
        assert!(!sealed.windows(7).any(|w| w == b"refresh"));
        assert_eq!(key.open(&sealed).unwrap().expose_secret(), "refresh-token-123");
    }

    #[test]
    fn a_wrong_key_or_altered_bytes_fail_to_open() {
        let sealed = key(&"ab".repeat(32)).seal("x").unwrap();
        assert!(key(&"cd".repeat(32)).open(&sealed).is_err());
        let mut altered = sealed.clone();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        assert!(key(&"ab".repeat(32)).open(&altered).is_err());
    }

    #[test]
    fn keys_are_accepted_as_hex_or_base64_of_32_bytes_only() {
        assert!(
            MasterKey::parse(&SecretString::from("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".to_owned())).is_ok()
        );
        assert!(MasterKey::parse(&SecretString::from("abcd".to_owned())).is_err());
        assert!(MasterKey::parse(&SecretString::from("zz".repeat(32))).is_err());
    }
}
