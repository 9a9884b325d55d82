//! Stage 1, authentication: find the caller's key in the request and map it to a client.
//!
//! Accepted credentials (the contract's three forms): `Authorization: APIKey <key>` (scheme
//! case-insensitive, so a Gcore SDK pointed at the gateway works unchanged), `Authorization:
//! Bearer <key>`, and `X-Api-Key: <key>`. Keys in the query string are never read. A key is
//! hashed with SHA-256 and looked up among the configured hashes; the final comparison is
//! constant-time. Plaintext keys exist only in the request being served. The brute-force
//! throttle lives in `rate_limit`, the header stripping for upstream in `upstream`.

use std::fmt;

use std::collections::HashMap;

use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The SHA-256 of a caller key, as stored in `clients.keys` (`sha256:<64 hex>`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyHash(pub [u8; 32]);

impl std::hash::Hash for KeyHash {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // The first 8 bytes of a digest are as good a hash as any hasher would make of it.
        let mut prefix = [0u8; 8];
        prefix.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(prefix));
    }
}

/// Caller-key hashes to what they open: the map is hashed by the digests' own first bytes
/// ([`DigestHasher`]) instead of SipHash over 32 bytes per request. No flooding concern: the
/// map is built from the config and only looked up by requests (a lookup's probe ends at the
/// first empty group whatever hash a caller's key has).
pub type KeyMap<V> = HashMap<KeyHash, V, std::hash::BuildHasherDefault<DigestHasher>>;

/// The hasher of a [`KeyMap`]: passes a [`KeyHash`]'s prefix through (other input, which a
/// `KeyMap` never hashes, is mixed FNV-style so the hasher stays a correct one).
#[derive(Default)]
pub struct DigestHasher(u64);

impl std::hash::Hasher for DigestHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 ^= v;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A hash is not a secret, but there is no reason to print it either.
        f.write_str("KeyHash(..)")
    }
}

impl KeyHash {
    /// Hashes a plaintext key.
    pub fn of(key: &[u8]) -> KeyHash {
        KeyHash(Sha256::digest(key).into())
    }

    /// Parses `sha256:<64 hex>`. The error never quotes the input: a plaintext key pasted by
    /// mistake must not end up in a log.
    pub fn parse(s: &str) -> Result<KeyHash, String> {
        let hex_part = s.strip_prefix("sha256:").ok_or_else(|| {
            "must be \"sha256:<64 hex digits>\" (plaintext keys are not accepted; run `gcore-gateway hash-key`)"
                .to_string()
        })?;
        let mut out = [0u8; 32];
        if hex_part.len() != 64 || hex::decode_to_slice(hex_part, &mut out).is_err() {
            return Err("must be \"sha256:\" followed by exactly 64 hex digits".to_string());
        }
        Ok(KeyHash(out))
    }

    /// Constant-time equality.
    pub fn ct_eq(&self, other: &KeyHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Display for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

/// What the request presented. `Debug` never shows the key.
#[derive(PartialEq, Eq)]
pub enum Credential<'a> {
    /// No credential header at all.
    Missing,
    /// A credential header that is not in an accepted form (wrong scheme, empty key, several).
    Malformed,
    /// A key (not yet checked).
    Key(&'a [u8]),
}

impl fmt::Debug for Credential<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Missing => f.write_str("Missing"),
            Credential::Malformed => f.write_str("Malformed"),
            Credential::Key(k) => write!(f, "Key([REDACTED; {} bytes])", k.len()),
        }
    }
}

/// Extracts the caller key. Exactly one credential must be present: a request carrying both
/// `Authorization` and `X-Api-Key`, or either twice, is malformed (ambiguous).
pub fn credential(headers: &HeaderMap) -> Credential<'_> {
    let mut auth = headers.get_all(http::header::AUTHORIZATION).iter();
    static X_API_KEY: http::HeaderName = http::HeaderName::from_static("x-api-key");
    let mut xkey = headers.get_all(&X_API_KEY).iter();
    let (a, a2, x, x2) = (auth.next(), auth.next(), xkey.next(), xkey.next());
    match (a, a2, x, x2) {
        (None, _, None, _) => Credential::Missing,
        (Some(v), None, None, _) => parse_authorization(v.as_bytes()),
        (None, _, Some(v), None) => key_token(trim(v.as_bytes())),
        _ => Credential::Malformed,
    }
}

fn parse_authorization(v: &[u8]) -> Credential<'_> {
    let v = trim(v);
    let Some(space) = v.iter().position(|b| *b == b' ') else {
        return Credential::Malformed;
    };
    let (scheme, rest) = v.split_at(space);
    if scheme.eq_ignore_ascii_case(b"apikey") || scheme.eq_ignore_ascii_case(b"bearer") {
        key_token(trim(rest))
    } else {
        Credential::Malformed
    }
}

/// A key is 1..=512 visible ASCII characters with no spaces.
fn key_token(k: &[u8]) -> Credential<'_> {
    if k.is_empty() || k.len() > 512 || k.iter().any(|b| !(0x21..=0x7e).contains(b)) {
        Credential::Malformed
    } else {
        Credential::Key(k)
    }
}

fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// Looks a plaintext key up among the configured hashes; returns what the map holds for it
/// (the gateway's map holds the client and which of its keys).
pub fn lookup<V: Copy>(keys: &KeyMap<V>, key: &[u8]) -> Option<V> {
    let hash = KeyHash::of(key);
    // The map finds the candidate by hash; the final equality is checked in constant time so
    // that no comparison in our code depends on how much of the hash matched.
    keys.get_key_value(&hash)
        .filter(|(stored, _)| stored.ct_eq(&hash))
        .map(|(_, client)| *client)
}

/// A new random caller key: 32 bytes from the OS CSPRNG, URL-safe base64 without padding,
/// prefixed `gk_` so it is recognisable in secret scanners.
pub fn generate_key() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    format!(
        "gk_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn hash_of_abc_matches_sha256() {
        assert_eq!(
            KeyHash::of(b"abc").to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn parse_rejects_plaintext_without_echoing_it() {
        let err = KeyHash::parse("my-secret-team-key").unwrap_err();
        assert!(!err.contains("my-secret-team-key"));
        assert!(KeyHash::parse("sha256:zz").is_err());
        let ok = KeyHash::of(b"x").to_string();
        assert_eq!(KeyHash::parse(&ok).unwrap(), KeyHash::of(b"x"));
    }

    #[test]
    fn credential_forms() {
        let k = Credential::Key(b"k1");
        assert_eq!(credential(&headers(&[("authorization", "APIKey k1")])), k);
        assert_eq!(credential(&headers(&[("authorization", "apikey k1")])), k);
        assert_eq!(credential(&headers(&[("authorization", "Bearer k1")])), k);
        assert_eq!(credential(&headers(&[("x-api-key", "k1")])), k);
        assert_eq!(credential(&headers(&[])), Credential::Missing);
        assert_eq!(
            credential(&headers(&[("authorization", "Basic k1")])),
            Credential::Malformed
        );
        assert_eq!(
            credential(&headers(&[("authorization", "APIKey")])),
            Credential::Malformed
        );
        assert_eq!(
            credential(&headers(&[
                ("authorization", "APIKey a"),
                ("x-api-key", "b")
            ])),
            Credential::Malformed
        );
        assert_eq!(
            credential(&headers(&[("x-api-key", "a"), ("x-api-key", "b")])),
            Credential::Malformed
        );
    }

    #[test]
    fn debug_never_shows_the_key() {
        let h = headers(&[("authorization", "APIKey super-secret-team-key")]);
        let printed = format!("{:?}", credential(&h));
        assert!(!printed.contains("super-secret"), "{printed}");
    }

    #[test]
    fn generated_keys_are_long_and_distinct() {
        let (a, b) = (generate_key(), generate_key());
        assert_ne!(a, b);
        assert!(a.len() >= 3 + 43);
        assert!(a[3..]
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
    }
}
