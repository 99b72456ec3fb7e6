//! Identity tokens of the Lucky Orange bridge: `v1.<payload>.<mac>`, both parts base64url
//! without padding; the payload is `{"sub","aud","exp","kid"}` (a GHL contact id, the site's
//! audience, expiry in Unix seconds, the key id) and the MAC is HMAC-SHA256 under the key named
//! by `kid` over `"v1." + payload`. Never personal data in a token. Two key ids are accepted at
//! once so keys can rotate (reference/lucky-orange.md §3.1). Pure: the clock is a parameter.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Tokens longer than this are malformed without further parsing.
pub const MAX_TOKEN_LEN: usize = 512;

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// The GHL contact id.
    pub sub: String,
    pub aud: String,
    /// Expiry, Unix seconds.
    pub exp: i64,
    pub kid: String,
}

/// Why a token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a token of ours at all (shape, encoding, JSON): 400.
    #[error("malformed token")]
    Malformed,
    /// Well formed, but the signature does not verify, the key id is unknown or the audience
    /// is another site's: 401.
    #[error("token signature does not verify")]
    Forged,
    /// Genuine but past its expiry: 204, like an unknown contact.
    #[error("token expired")]
    Expired,
}

/// The signing keys: new tokens are minted with `current`; `current` and the previous key id
/// verify. Debug never shows a key.
#[derive(Clone)]
pub struct TokenKeys {
    current: String,
    keys: BTreeMap<String, SecretString>,
    audience: String,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys")
            .field("current", &self.current)
            .field("kids", &self.keys.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl TokenKeys {
    /// `keys` by key id (at most two); `None` when `current` has no key.
    pub fn new(current: &str, keys: BTreeMap<String, SecretString>, audience: &str) -> Option<Self> {
        keys.contains_key(current).then(|| Self { current: current.to_owned(), keys, audience: audience.to_owned() })
    }

    pub fn current_kid(&self) -> &str {
        &self.current
    }

    /// A token for `contact_id` valid until `exp` (Unix seconds), signed with the current key.
    pub fn mint(&self, contact_id: &str, exp: i64) -> String {
        let claims = Claims { sub: contact_id.to_owned(), aud: self.audience.clone(), exp, kid: self.current.clone() };
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap_or_default());
        let signed = format!("v1.{payload}");
        let mac = self.mac(&self.current, signed.as_bytes()).map(|m| URL_SAFE_NO_PAD.encode(m)).unwrap_or_default();
        format!("{signed}.{mac}")
    }

    /// Checks shape, signature (constant time), audience and expiry against `now` (Unix seconds).
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        let claims = self.verify_signature(token)?;
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }

    /// Checks shape, signature and audience, not expiry (to read an old token's expiry).
    pub fn verify_signature(&self, token: &str) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN || !token.is_ascii() {
            return Err(TokenError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some("v1"), Some(payload), Some(mac), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let json = URL_SAFE_NO_PAD.decode(payload).map_err(|_| TokenError::Malformed)?;
        let mac = URL_SAFE_NO_PAD.decode(mac).map_err(|_| TokenError::Malformed)?;
        let claims: Claims = serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
        if claims.sub.is_empty() || claims.sub.len() > 64 {
            return Err(TokenError::Malformed);
        }
        let Some(key) = self.keys.get(&claims.kid) else { return Err(TokenError::Forged) };
        let mut verifier =
            Hmac::<Sha256>::new_from_slice(key.expose_secret().as_bytes()).map_err(|_| TokenError::Forged)?;
        verifier.update(b"v1.");
        verifier.update(payload.as_bytes());
        verifier.verify_slice(&mac).map_err(|_| TokenError::Forged)?;
        if claims.aud != self.audience {
            return Err(TokenError::Forged);
        }
        Ok(claims)
    }

    fn mac(&self, kid: &str, data: &[u8]) -> Option<Vec<u8>> {
        let key = self.keys.get(kid)?;
        let mut mac = Hmac::<Sha256>::new_from_slice(key.expose_secret().as_bytes()).ok()?;
        mac.update(data);
        Some(mac.finalize().into_bytes().to_vec())
    }
}

/// Whether a token expiring at `exp` should be replaced at `now`: less than half of `ttl`
/// (seconds) is left.
pub fn needs_remint(exp: i64, now: i64, ttl_secs: i64) -> bool {
    exp - now < ttl_secs / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(pairs: &[(&str, &str)], current: &str) -> TokenKeys {
        let map = pairs.iter().map(|(k, v)| ((*k).to_owned(), SecretString::from((*v).to_owned()))).collect();
        TokenKeys::new(current, map, "site").unwrap()
    }

    const K1: &str = "key-one-0123456789-0123456789-0123456789";
    const K2: &str = "key-two-0123456789-0123456789-0123456789";

    #[test]
    fn a_minted_token_verifies_and_carries_no_personal_data() {
        let keys = keys(&[("k1", K1)], "k1");
        let token = keys.mint("c_123", 2_000);
        let claims = keys.verify(&token, 1_000).unwrap();
        assert_eq!(claims, Claims { sub: "c_123".into(), aud: "site".into(), exp: 2_000, kid: "k1".into() });
        assert!(token.starts_with("v1.") && !token.contains('=') && !token.contains('+') && !token.contains('/'));
    }

    #[test]
    fn expired_tokens_are_told_apart_from_forged_ones() {
        let keys = keys(&[("k1", K1)], "k1");
        let token = keys.mint("c_1", 1_000);
        assert_eq!(keys.verify(&token, 1_000), Err(TokenError::Expired));
        assert_eq!(keys.verify(&token, 5_000), Err(TokenError::Expired));
        assert!(keys.verify_signature(&token).is_ok());
    }

    #[test]
    fn forged_tampered_and_wrong_key_tokens_are_refused() {
        let good = keys(&[("k1", K1)], "k1");
        let token = good.mint("c_1", 9_000);
        // A token signed with another key under the same kid.
        let other = keys(&[("k1", K2)], "k1");
        assert_eq!(other.verify(&token, 1), Err(TokenError::Forged));
        // Tampered payload: another contact id, the original MAC.
        let parts: Vec<&str> = token.split('.').collect();
        let json = String::from_utf8(URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        let evil = URL_SAFE_NO_PAD.encode(json.replace("c_1", "c_2"));
        assert_eq!(good.verify(&format!("v1.{evil}.{}", parts[2]), 1), Err(TokenError::Forged));
        // Tampered expiry.
        let later = URL_SAFE_NO_PAD.encode(json.replace("9000", "99999"));
        assert_eq!(good.verify(&format!("v1.{later}.{}", parts[2]), 1), Err(TokenError::Forged));
        // An unknown key id.
        let unknown = keys(&[("k9", K1)], "k9").mint("c_1", 9_000);
        assert_eq!(good.verify(&unknown, 1), Err(TokenError::Forged));
        // Another site's audience, same key.
        let map = [("k1".to_owned(), SecretString::from(K1.to_owned()))].into_iter().collect();
        let elsewhere = TokenKeys::new("k1", map, "other-site").unwrap().mint("c_1", 9_000);
        assert_eq!(good.verify(&elsewhere, 1), Err(TokenError::Forged));
        // A forged MAC of the right length.
        let zeros = URL_SAFE_NO_PAD.encode([0u8; 32]);
        assert_eq!(good.verify(&format!("v1.{}.{zeros}", parts[1]), 1), Err(TokenError::Forged));
    }

    #[test]
    fn malformed_tokens_are_told_apart() {
        let keys = keys(&[("k1", K1)], "k1");
        for token in ["", "v1", "v1.", "v1.a.b.c", "v2.eyJ9.AAAA", "v1.!!!.AAAA", "v1.e30.AAAA", "ünïcode"] {
            assert_eq!(keys.verify(token, 1), Err(TokenError::Malformed), "{token}");
        }
        assert_eq!(keys.verify(&"a".repeat(MAX_TOKEN_LEN + 1), 1), Err(TokenError::Malformed));
    }

    #[test]
    fn the_previous_key_id_still_verifies_while_new_tokens_use_the_current_one() {
        let old = keys(&[("k1", K1)], "k1");
        let issued_before_rotation = old.mint("c_1", 9_000);
        let rotated = keys(&[("k1", K1), ("k2", K2)], "k2");
        assert_eq!(rotated.verify(&issued_before_rotation, 1).unwrap().kid, "k1");
        let fresh = rotated.mint("c_1", 9_000);
        assert_eq!(rotated.verify(&fresh, 1).unwrap().kid, "k2");
        // Once k1 is dropped, its tokens are refused.
        let after = keys(&[("k2", K2)], "k2");
        assert_eq!(after.verify(&issued_before_rotation, 1), Err(TokenError::Forged));
    }

    #[test]
    fn remint_when_less_than_half_the_life_is_left() {
        assert!(!needs_remint(1_000 + 600, 1_000, 1_000));
        assert!(needs_remint(1_000 + 499, 1_000, 1_000));
        assert!(needs_remint(0, 1_000, 1_000));
    }
}
