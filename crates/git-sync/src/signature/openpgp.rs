//! OpenPGP signatures (GnuPG's, git's default `gpg.format`) checked with rPGP (the `pgp` crate),
//! against public keys from files.
//!
//! A signature is good when it verifies with a trusted key, primary or subkey, that was able to
//! sign (key flags), is not revoked, and has not expired, neither when it signed nor now: the
//! checks GnuPG makes before git accepts a signature (`%G?` = `G`; git refuses `R`, `Y`, `X`).
//! Only the key's own self-signatures are taken into account; third-party certifications are
//! ignored (trust comes from the file, not from a web of trust), and so are revocations by a
//! designated revoker.

use std::io::Cursor;
use std::time::{Duration, SystemTime};

use pgp::composed::{Deserializable, DetachedSignature, SignedPublicKey};
use pgp::packet::{Signature, SignatureType, SubpacketData};
use pgp::types::{KeyDetails, Tag};

use super::{Reason, Refusal, Signer};

/// Trusted OpenPGP keys, with what their self-signatures say, worked out once at load.
#[derive(Debug, Clone, Default)]
pub struct OpenPgpKeys {
    certs: Vec<Cert>,
}

#[derive(Debug, Clone)]
struct Cert {
    key: SignedPublicKey,
    /// The primary user id, for log lines.
    user: String,
    origin: String,
    /// Why the whole key is unusable (a self-revocation), if it is.
    revoked: Option<String>,
    /// The primary key's expiry, if it has one.
    expires: Option<SystemTime>,
    /// Whether the primary key may sign (key flags of its latest self-signature).
    primary_signs: bool,
    subkeys: Vec<Subkey>,
}

#[derive(Debug, Clone)]
struct Subkey {
    index: usize,
    revoked: Option<String>,
    expires: Option<SystemTime>,
    signs: bool,
    /// A valid binding signature was found (with a primary-key binding back-signature when it signs).
    bound: bool,
}

impl OpenPgpKeys {
    /// Parses armoured (several blocks may follow each other) or binary public keys.
    pub fn parse(data: &[u8], origin: &str) -> Result<OpenPgpKeys, String> {
        let mut keys = Vec::new();
        if data.trim_ascii_start().starts_with(b"-----BEGIN PGP") {
            let text = String::from_utf8_lossy(data);
            for block in armour_blocks(&text) {
                let (parsed, _headers) =
                    SignedPublicKey::from_armor_many(Cursor::new(block.as_bytes()))
                        .map_err(|e| format!("{origin}: not OpenPGP public keys: {e}"))?;
                for key in parsed {
                    keys.push(key.map_err(|e| format!("{origin}: unreadable OpenPGP key: {e}"))?);
                }
            }
        } else {
            for key in SignedPublicKey::from_bytes_many(Cursor::new(data))
                .map_err(|e| format!("{origin}: not OpenPGP public keys: {e}"))?
            {
                keys.push(key.map_err(|e| format!("{origin}: unreadable OpenPGP key: {e}"))?);
            }
        }
        if keys.is_empty() {
            return Err(format!("{origin}: holds no OpenPGP public key"));
        }
        let certs = keys
            .into_iter()
            .map(|key| Cert::new(key, origin))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(OpenPgpKeys { certs })
    }

    pub fn extend(&mut self, other: OpenPgpKeys) {
        self.certs.extend(other.certs);
    }

    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }

    /// Fingerprints and user ids of the keys, for the start-up log line.
    pub fn describe(&self) -> Vec<String> {
        self.certs
            .iter()
            .map(|c| {
                format!(
                    "{:X} {} ({})",
                    c.key.primary_key.fingerprint(),
                    c.user,
                    c.origin
                )
            })
            .collect()
    }

    /// Verifies an armoured detached signature over `payload`, judged at `now`.
    pub fn verify(
        &self,
        armored: &[u8],
        payload: &[u8],
        now: SystemTime,
    ) -> Result<Signer, Refusal> {
        let (detached, _) =
            DetachedSignature::from_armor_single(Cursor::new(armored)).map_err(|e| {
                Refusal::new(
                    Reason::BadSignature,
                    format!("unreadable OpenPGP signature: {e}"),
                )
            })?;
        let sig = &detached.signature;
        if !matches!(sig.typ(), Some(SignatureType::Binary | SignatureType::Text)) {
            return Err(Refusal::new(
                Reason::BadSignature,
                format!(
                    "an OpenPGP signature of type {:?} does not sign data",
                    sig.typ()
                ),
            ));
        }
        let issuer = issuer_text(sig);
        let Some((cert, sub)) = self.find(sig) else {
            return Err(Refusal::new(
                Reason::UnknownKey,
                format!("no trusted OpenPGP key {issuer}"),
            ));
        };
        let who = format!("{:X} {}", cert.key.primary_key.fingerprint(), cert.user);
        let verified = match sub {
            None => sig.verify(&cert.key.primary_key, payload),
            Some(s) => sig.verify(&cert.key.public_subkeys[s.index].key, payload),
        };
        verified.map_err(|e| {
            Refusal::new(
                Reason::BadSignature,
                format!("the OpenPGP signature by {who} does not verify: {e}"),
            )
        })?;
        let created: SystemTime = sig.created().map(Into::into).ok_or_else(|| {
            Refusal::new(
                Reason::BadSignature,
                "the OpenPGP signature has no creation time",
            )
        })?;
        if let Some(reason) = &cert.revoked {
            return Err(Refusal::new(
                Reason::RevokedKey,
                format!("the OpenPGP key {who} is revoked: {reason}"),
            ));
        }
        let (component_created, expires, signs, what) = match sub {
            None => (
                SystemTime::from(cert.key.primary_key.created_at()),
                cert.expires,
                cert.primary_signs,
                "primary key",
            ),
            Some(s) => {
                if let Some(reason) = &s.revoked {
                    return Err(Refusal::new(
                        Reason::RevokedKey,
                        format!("the signing subkey {issuer} of {who} is revoked: {reason}"),
                    ));
                }
                if !s.bound {
                    return Err(Refusal::new(
                        Reason::NotAllowed,
                        format!("the subkey {issuer} of {who} has no valid binding signature"),
                    ));
                }
                (
                    SystemTime::from(cert.key.public_subkeys[s.index].key.created_at()),
                    s.expires.min_some(cert.expires),
                    s.signs,
                    "subkey",
                )
            }
        };
        if !signs {
            return Err(Refusal::new(
                Reason::NotAllowed,
                format!("the {what} {issuer} of {who} is not a signing key"),
            ));
        }
        if created < component_created {
            return Err(Refusal::new(
                Reason::BadSignature,
                format!("the OpenPGP signature predates its key {who}"),
            ));
        }
        if let Some(expires) = expires
            && (now >= expires || created >= expires)
        {
            return Err(Refusal::new(
                Reason::ExpiredKey,
                format!("the OpenPGP key {who} expired at {}", show(expires)),
            ));
        }
        if let Some(valid_for) = sig.signature_expiration_time().map(Duration::from)
            && !valid_for.is_zero()
            && now >= created + valid_for
        {
            return Err(Refusal::new(
                Reason::ExpiredKey,
                format!(
                    "the OpenPGP signature by {who} expired at {}",
                    show(created + valid_for)
                ),
            ));
        }
        Ok(Signer {
            key: format!("{:X}", cert.key.primary_key.fingerprint()),
            identity: cert.user.clone(),
        })
    }

    /// The key (primary, or which subkey) the signature names as its issuer.
    fn find(&self, sig: &Signature) -> Option<(&Cert, Option<&Subkey>)> {
        let fingerprints = sig.issuer_fingerprint();
        let key_ids = sig.issuer_key_id();
        let names = |fp: pgp::types::Fingerprint, id: pgp::types::KeyId| {
            fingerprints.iter().any(|f| **f == fp) || key_ids.iter().any(|k| **k == id)
        };
        for cert in &self.certs {
            let primary = &cert.key.primary_key;
            if names(primary.fingerprint(), primary.legacy_key_id()) {
                return Some((cert, None));
            }
            for sub in &cert.subkeys {
                let key = &cert.key.public_subkeys[sub.index].key;
                if names(key.fingerprint(), key.legacy_key_id()) {
                    return Some((cert, Some(sub)));
                }
            }
        }
        None
    }
}

impl Cert {
    fn new(key: SignedPublicKey, origin: &str) -> Result<Cert, String> {
        let primary = &key.primary_key;
        let fingerprint = format!("{:X}", primary.fingerprint());
        let revoked = key
            .details
            .revocation_signatures
            .iter()
            .find(|s| {
                s.typ() == Some(SignatureType::KeyRevocation) && s.verify_key(primary).is_ok()
            })
            .map(revocation_text);
        // The latest valid self-signature decides expiry and flags: a direct-key signature or a
        // certification of a user id, preferring the primary user id.
        let mut latest: Option<(bool, SystemTime, &Signature)> = None;
        let mut user = String::new();
        for sig in &key.details.direct_signatures {
            if sig.typ() == Some(SignatureType::Key) && sig.verify_key(primary).is_ok() {
                consider(&mut latest, false, sig);
            }
        }
        for signed_user in &key.details.users {
            for sig in &signed_user.signatures {
                if sig.typ() == Some(SignatureType::CertRevocation) || !sig.is_certification() {
                    continue;
                }
                if sig
                    .verify_certification(primary, Tag::UserId, &signed_user.id)
                    .is_ok()
                {
                    if user.is_empty() || sig.is_primary() {
                        user = String::from_utf8_lossy(signed_user.id.id()).into_owned();
                    }
                    consider(&mut latest, sig.is_primary(), sig);
                }
            }
        }
        let Some((_, _, self_sig)) = latest else {
            return Err(format!(
                "{origin}: the OpenPGP key {fingerprint} has no valid self-signature"
            ));
        };
        let created = SystemTime::from(primary.created_at());
        let expires = expiry(created, self_sig);
        let primary_signs = may_sign(self_sig);
        let subkeys = key
            .public_subkeys
            .iter()
            .enumerate()
            .map(|(index, sub)| {
                let revoked = sub
                    .signatures
                    .iter()
                    .find(|s| {
                        s.typ() == Some(SignatureType::SubkeyRevocation)
                            && s.verify_subkey_binding(primary, &sub.key).is_ok()
                    })
                    .map(revocation_text);
                let binding = sub
                    .signatures
                    .iter()
                    .filter(|s| {
                        s.typ() == Some(SignatureType::SubkeyBinding)
                            && s.verify_subkey_binding(primary, &sub.key).is_ok()
                    })
                    .max_by_key(|s| s.created().map(|t| t.as_secs()).unwrap_or(0));
                let (bound, signs, expires) = match binding {
                    None => (false, false, None),
                    Some(b) => {
                        let signs = b.key_flags().sign();
                        // A signing subkey must sign the primary back (RFC 9580 5.2.1).
                        let back = !signs
                            || b.embedded_signature().is_some_and(|e| {
                                e.verify_primary_key_binding(&sub.key, primary).is_ok()
                            });
                        (
                            back,
                            signs,
                            expiry(SystemTime::from(sub.key.created_at()), b),
                        )
                    }
                };
                Subkey {
                    index,
                    revoked,
                    expires,
                    signs,
                    bound,
                }
            })
            .collect();
        Ok(Cert {
            user,
            origin: origin.to_string(),
            revoked,
            expires,
            primary_signs,
            subkeys,
            key,
        })
    }
}

fn consider<'s>(
    latest: &mut Option<(bool, SystemTime, &'s Signature)>,
    primary: bool,
    sig: &'s Signature,
) {
    let at: SystemTime = sig.created().map_or(SystemTime::UNIX_EPOCH, Into::into);
    let better = match latest {
        None => true,
        Some((was_primary, was_at, _)) => (primary, at) > (*was_primary, *was_at),
    };
    if better {
        *latest = Some((primary, at, sig));
    }
}

/// `created` + the signature's key expiration time (0 or none: never).
fn expiry(created: SystemTime, sig: &Signature) -> Option<SystemTime> {
    sig.key_expiration_time()
        .map(Duration::from)
        .filter(|d| !d.is_zero())
        .map(|d| created + d)
}

/// Without a key-flags subpacket nothing restricts the key (keys older than RFC 4880's flags).
fn may_sign(sig: &Signature) -> bool {
    let has_flags = sig.config().is_some_and(|c| {
        c.hashed_subpackets()
            .any(|p| matches!(p.data, SubpacketData::KeyFlags(_)))
    });
    !has_flags || sig.key_flags().sign()
}

fn revocation_text(sig: &Signature) -> String {
    let code = sig
        .revocation_reason_code()
        .map_or_else(|| "no reason given".to_string(), |c| format!("{c:?}"));
    match sig.revocation_reason_string() {
        Some(text) if !text.is_empty() => format!("{code}: {}", String::from_utf8_lossy(text)),
        _ => code,
    }
}

fn issuer_text(sig: &Signature) -> String {
    if let Some(fp) = sig.issuer_fingerprint().first() {
        format!("{fp:X}")
    } else if let Some(id) = sig.issuer_key_id().first() {
        format!("key id {}", hex::encode_upper(id.as_ref()))
    } else {
        "(the signature names no issuer)".to_string()
    }
}

fn show(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The ASCII-armoured blocks of a file, each from its BEGIN line to its END line.
fn armour_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if line.starts_with("-----BEGIN PGP") {
            current = Some(String::new());
        }
        if let Some(block) = &mut current {
            block.push_str(line);
            block.push('\n');
            if line.starts_with("-----END PGP") {
                blocks.extend(current.take());
            }
        }
    }
    blocks
}

trait MinSome {
    fn min_some(self, other: Self) -> Self;
}

impl MinSome for Option<SystemTime> {
    /// The earlier of two optional deadlines (None: no deadline).
    fn min_some(self, other: Self) -> Self {
        match (self, other) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}
