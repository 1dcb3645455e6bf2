//! A JSON Web Key Set, turned into verification keys: asymmetric signing keys only, each bound
//! to the algorithms its type and curve allow, so that a token cannot pick a weaker use of a key
//! (an `HS256` token "signed" with an RSA public key finds no key at all).

use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

/// The signature algorithms a token may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    Es256,
    Es384,
    EdDsa,
}

impl Alg {
    pub const ALL: [Alg; 9] = [
        Alg::Rs256,
        Alg::Rs384,
        Alg::Rs512,
        Alg::Ps256,
        Alg::Ps384,
        Alg::Ps512,
        Alg::Es256,
        Alg::Es384,
        Alg::EdDsa,
    ];

    /// The JOSE name (`none`, `HS*` and anything else: None).
    pub fn parse(name: &str) -> Option<Alg> {
        Some(match name {
            "RS256" => Alg::Rs256,
            "RS384" => Alg::Rs384,
            "RS512" => Alg::Rs512,
            "PS256" => Alg::Ps256,
            "PS384" => Alg::Ps384,
            "PS512" => Alg::Ps512,
            "ES256" => Alg::Es256,
            "ES384" => Alg::Es384,
            "EdDSA" => Alg::EdDsa,
            _ => return None,
        })
    }

    pub fn jose(self) -> Algorithm {
        match self {
            Alg::Rs256 => Algorithm::RS256,
            Alg::Rs384 => Algorithm::RS384,
            Alg::Rs512 => Algorithm::RS512,
            Alg::Ps256 => Algorithm::PS256,
            Alg::Ps384 => Algorithm::PS384,
            Alg::Ps512 => Algorithm::PS512,
            Alg::Es256 => Algorithm::ES256,
            Alg::Es384 => Algorithm::ES384,
            Alg::EdDsa => Algorithm::EdDSA,
        }
    }
}

/// What a key is, which decides the algorithms it verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl Kind {
    fn allows(self, alg: Alg) -> bool {
        match self {
            Kind::Rsa => matches!(
                alg,
                Alg::Rs256 | Alg::Rs384 | Alg::Rs512 | Alg::Ps256 | Alg::Ps384 | Alg::Ps512
            ),
            Kind::P256 => alg == Alg::Es256,
            Kind::P384 => alg == Alg::Es384,
            Kind::Ed25519 => alg == Alg::EdDsa,
        }
    }
}

/// One verification key.
pub struct Key {
    pub kid: Option<String>,
    kind: Kind,
    /// The key's own `alg`, when the set names one: then only that.
    alg: Option<Alg>,
    pub decoding: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("kind", &self.kind)
            .field("alg", &self.alg)
            .finish()
    }
}

impl Key {
    pub fn allows(&self, alg: Alg) -> bool {
        self.kind.allows(alg) && self.alg.is_none_or(|a| a == alg)
    }
}

/// The keys of one fetch of a JWKS.
#[derive(Debug, Default)]
pub struct KeySet {
    pub keys: Vec<Key>,
    /// Tells sets apart, so that a token verified with an older one is verified again.
    pub generation: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("not a JWKS document: {0}")]
    Json(String),
    #[error("the JWKS has no usable signing key ({0} skipped)")]
    Empty(usize),
}

impl KeySet {
    /// Parses a JWKS document; keys it cannot use (symmetric, encryption, unknown curves) are
    /// skipped and counted in the log, the set must keep at least one.
    pub fn parse(json: &[u8], generation: u64) -> Result<KeySet, KeysError> {
        let doc: Value =
            serde_json::from_slice(json).map_err(|e| KeysError::Json(e.to_string()))?;
        let list = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| KeysError::Json("no `keys` array".into()))?;
        let mut keys = Vec::new();
        let mut skipped = 0;
        for jwk in list {
            match key(jwk) {
                Ok(k) => keys.push(k),
                Err(why) => {
                    skipped += 1;
                    tracing::debug!(kid = ?jwk.get("kid"), why, "JWKS key skipped");
                }
            }
        }
        if keys.is_empty() {
            return Err(KeysError::Empty(skipped));
        }
        Ok(KeySet { keys, generation })
    }
}

fn key(jwk: &Value) -> Result<Key, &'static str> {
    let field = |name: &str| jwk.get(name).and_then(Value::as_str);
    if field("use").is_some_and(|u| u != "sig") {
        return Err("not a signing key");
    }
    if let Some(ops) = jwk.get("key_ops").and_then(Value::as_array)
        && !ops.iter().any(|o| o.as_str() == Some("verify"))
    {
        return Err("key_ops does not include verify");
    }
    let b64 = |name: &str| field(name).ok_or("a key parameter is missing");
    let (kind, decoding) = match (field("kty"), field("crv")) {
        (Some("RSA"), _) => (
            Kind::Rsa,
            DecodingKey::from_rsa_components(b64("n")?, b64("e")?),
        ),
        (Some("EC"), Some(crv @ ("P-256" | "P-384"))) => (
            if crv == "P-256" {
                Kind::P256
            } else {
                Kind::P384
            },
            DecodingKey::from_ec_components(b64("x")?, b64("y")?),
        ),
        (Some("OKP"), Some("Ed25519")) => {
            (Kind::Ed25519, DecodingKey::from_ed_components(b64("x")?))
        }
        _ => return Err("not an RSA, P-256, P-384 or Ed25519 key"),
    };
    let decoding = decoding.map_err(|_| "bad key parameters")?;
    let alg = match field("alg") {
        Some(a) => {
            let alg = Alg::parse(a).ok_or("its alg is not allowed")?;
            if !kind.allows(alg) {
                return Err("its alg does not fit its type");
            }
            Some(alg)
        }
        None => None,
    };
    Ok(Key {
        kid: field("kid").map(str::to_owned),
        kind,
        alg,
        decoding,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symmetric_and_unknown_keys_are_skipped() {
        let doc = br#"{"keys":[
            {"kty":"oct","k":"c2VjcmV0","kid":"h"},
            {"kty":"EC","crv":"P-521","x":"AA","y":"AA","kid":"p521"},
            {"kty":"RSA","use":"enc","n":"AQAB","e":"AQAB","kid":"enc"},
            {"kty":"EC","crv":"P-256","kid":"e","alg":"ES256",
             "x":"mF03tFCLKHrWUEQlVSgBE8-2cXgAEw5bAN64xS7qr60",
             "y":"mRKDB2vLyn44nDdcjldWbulGj6LOvgArk43OPSXgyqo"}]}"#;
        let set = KeySet::parse(doc, 1).unwrap();
        assert_eq!(set.keys.len(), 1);
        assert_eq!(set.keys[0].kid.as_deref(), Some("e"));
        assert!(set.keys[0].allows(Alg::Es256));
        assert!(!set.keys[0].allows(Alg::Es384) && !set.keys[0].allows(Alg::Rs256));
        assert!(matches!(
            KeySet::parse(br#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#, 1),
            Err(KeysError::Empty(1))
        ));
        assert!(KeySet::parse(b"garbage", 1).is_err());
        assert!(Alg::parse("none").is_none() && Alg::parse("HS256").is_none());
    }
}
