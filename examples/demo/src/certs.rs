//! A demo certificate authority and one SPIFFE identity per pod.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};

pub const TRUST_DOMAIN: &str = "demo.local";

/// The files of one identity.
#[derive(Debug, Clone)]
pub struct IdentityFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    pub spiffe_id: String,
}

pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    ca_file: PathBuf,
}

impl Authority {
    pub fn create(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "sidecars demo CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key)?;
        let ca_file = dir.join("ca.crt");
        std::fs::write(&ca_file, cert.pem())
            .with_context(|| format!("writing {}", ca_file.display()))?;
        Ok(Self {
            issuer: Issuer::new(params, key),
            ca_file,
        })
    }

    /// Issues `spiffe://demo.local/ns/demo/sa/<name>` into `dir/<name>/`.
    pub fn issue(&self, dir: &Path, name: &str) -> anyhow::Result<IdentityFiles> {
        let out = dir.join(name);
        std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
        let spiffe_id = format!("spiffe://{TRUST_DOMAIN}/ns/demo/sa/{name}");
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![format!("{name}.demo.local")])?;
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .subject_alt_names
            .push(SanType::URI(spiffe_id.as_str().try_into()?));
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer)?;
        let files = IdentityFiles {
            cert: out.join("tls.crt"),
            key: out.join("tls.key"),
            ca: self.ca_file.clone(),
            spiffe_id,
        };
        std::fs::write(&files.cert, cert.pem())
            .with_context(|| format!("writing {}", files.cert.display()))?;
        std::fs::write(&files.key, key.serialize_pem())
            .with_context(|| format!("writing {}", files.key.display()))?;
        Ok(files)
    }
}
