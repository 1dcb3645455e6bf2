//! Test certificates, made with rcgen when the test runs (nothing checked in, nothing that
//! expires in the repository).
//!
//! ```
//! use test_support::certs::Ca;
//!
//! let ca = Ca::new("test mesh CA");
//! let server = ca
//!     .leaf()
//!     .spiffe("spiffe://test.example/ns/prod/sa/server")
//!     .dns("peer.test")
//!     .sign();
//! let expired = ca.leaf().dns("old.test").expired().sign();
//! let stranger = Ca::new("someone else's CA").leaf().dns("peer.test").sign();
//! let dir = tempfile::tempdir().unwrap();
//! let files = server.write(dir.path(), "server");
//! assert!(files.cert.exists() && files.key.exists());
//! # let _ = (expired, stranger);
//! ```

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};

/// A certificate authority: signs leaves, and its certificate (PEM) is the trust bundle.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

impl Ca {
    /// A self-signed CA with this common name.
    pub fn new(common_name: &str) -> Ca {
        let key = KeyPair::generate().expect("generate the CA's key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("self-sign the CA");
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA's certificate, PEM: what a peer trusts.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// Writes the CA's certificate to `path` and returns it.
    pub fn write(&self, path: &Path) -> PathBuf {
        write_file(path, &self.pem);
        path.to_path_buf()
    }

    /// A leaf certificate to describe, then [`LeafBuilder::sign`]. Valid from a day ago for 30
    /// days, for both server and client authentication, unless told otherwise.
    pub fn leaf(&self) -> LeafBuilder<'_> {
        LeafBuilder {
            ca: self,
            common_name: None,
            spiffe: Vec::new(),
            dns: Vec::new(),
            ips: Vec::new(),
            valid_days: (-1, 30),
        }
    }
}

/// What a leaf certificate says; [`LeafBuilder::sign`] makes it.
#[derive(Debug)]
pub struct LeafBuilder<'a> {
    ca: &'a Ca,
    common_name: Option<String>,
    spiffe: Vec<String>,
    dns: Vec<String>,
    ips: Vec<IpAddr>,
    valid_days: (i64, i64),
}

impl LeafBuilder<'_> {
    /// The subject's common name (without one, rcgen's default subject is kept).
    pub fn common_name(mut self, name: &str) -> Self {
        self.common_name = Some(name.to_owned());
        self
    }

    /// A URI SAN, e.g. a SPIFFE ID `spiffe://trust.domain/ns/x/sa/y`.
    pub fn spiffe(mut self, uri: &str) -> Self {
        self.spiffe.push(uri.to_owned());
        self
    }

    /// A DNS name SAN.
    pub fn dns(mut self, name: &str) -> Self {
        self.dns.push(name.to_owned());
        self
    }

    /// An IP address SAN.
    pub fn ip(mut self, ip: IpAddr) -> Self {
        self.ips.push(ip);
        self
    }

    /// Valid from `from` days to `to` days around now (negative: in the past).
    pub fn valid_days(mut self, from: i64, to: i64) -> Self {
        self.valid_days = (from, to);
        self
    }

    /// Expired yesterday (valid from 30 days ago).
    pub fn expired(self) -> Self {
        self.valid_days(-30, -1)
    }

    /// Valid only from the day after tomorrow.
    pub fn not_yet_valid(self) -> Self {
        self.valid_days(2, 30)
    }

    /// Signs it with the CA.
    pub fn sign(self) -> Leaf {
        let key = KeyPair::generate().expect("generate a leaf key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("leaf parameters");
        if let Some(name) = &self.common_name {
            params.distinguished_name.push(DnType::CommonName, name);
        }
        for uri in &self.spiffe {
            let uri = uri
                .as_str()
                .try_into()
                .unwrap_or_else(|e| panic!("URI SAN {uri:?}: {e}"));
            params.subject_alt_names.push(SanType::URI(uri));
        }
        for name in &self.dns {
            let name = name
                .as_str()
                .try_into()
                .unwrap_or_else(|e| panic!("DNS SAN {name:?}: {e}"));
            params.subject_alt_names.push(SanType::DnsName(name));
        }
        for ip in &self.ips {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now + time::Duration::days(self.valid_days.0);
        params.not_after = now + time::Duration::days(self.valid_days.1);
        let cert = params
            .signed_by(&key, &self.ca.issuer)
            .expect("sign the leaf with the CA");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// A leaf certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Where [`Leaf::write`] put a certificate and its key.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Leaf {
    /// Writes `<dir>/<name>.crt` and `<dir>/<name>.key`.
    pub fn write(&self, dir: &Path, name: &str) -> CertFiles {
        let files = CertFiles {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        };
        write_file(&files.cert, &self.cert_pem);
        write_file(&files.key, &self.key_pem);
        files
    }
}

/// A directory laid out as the kubelet lays out a Secret volume: `tls.crt`, `tls.key` and
/// `ca.crt` are links into `..data`, itself a link to the current `..vN` directory. An update
/// writes a new `..vN` and swaps `..data` in one rename, so a reader never sees a mix.
#[derive(Debug)]
pub struct SecretVolume {
    root: PathBuf,
    version: u32,
}

impl SecretVolume {
    /// Creates the volume in `root` (made if missing) holding `leaf` and `ca_pem`.
    pub fn create(root: &Path, leaf: &Leaf, ca_pem: &str) -> SecretVolume {
        std::fs::create_dir_all(root).unwrap_or_else(|e| panic!("create {}: {e}", root.display()));
        let mut volume = SecretVolume {
            root: root.to_path_buf(),
            version: 0,
        };
        volume.update(&leaf.cert_pem, &leaf.key_pem, ca_pem);
        for name in ["tls.crt", "tls.key", "ca.crt"] {
            std::os::unix::fs::symlink(format!("..data/{name}"), root.join(name))
                .unwrap_or_else(|e| panic!("link {name} in {}: {e}", root.display()));
        }
        volume
    }

    /// Swaps in new contents atomically, as the kubelet does when the Secret changes. Any text
    /// is accepted: tests use this to deliver bad certificates too.
    pub fn update(&mut self, cert_pem: &str, key_pem: &str, ca_pem: &str) {
        self.version += 1;
        let version = format!("..v{}", self.version);
        let dir = self.root.join(&version);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        write_file(&dir.join("tls.crt"), cert_pem);
        write_file(&dir.join("tls.key"), key_pem);
        write_file(&dir.join("ca.crt"), ca_pem);
        let tmp = self.root.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&version, &tmp)
            .unwrap_or_else(|e| panic!("link {}: {e}", tmp.display()));
        std::fs::rename(&tmp, self.root.join("..data"))
            .unwrap_or_else(|e| panic!("swap ..data in {}: {e}", self.root.display()));
    }

    /// [`SecretVolume::update`] with a leaf.
    pub fn update_leaf(&mut self, leaf: &Leaf, ca_pem: &str) {
        self.update(&leaf.cert_pem, &leaf.key_pem, ca_pem);
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn cert(&self) -> PathBuf {
        self.root.join("tls.crt")
    }

    pub fn key(&self) -> PathBuf {
        self.root.join("tls.key")
    }

    pub fn ca(&self) -> PathBuf {
        self.root.join("ca.crt")
    }
}

fn write_file(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leaf_carries_what_it_was_given() {
        let ca = Ca::new("unit CA");
        let leaf = ca
            .leaf()
            .common_name("web")
            .spiffe("spiffe://td/ns/a/sa/web")
            .dns("web.test")
            .ip(IpAddr::from([127, 0, 0, 1]))
            .sign();
        let der = rustls_pem(&leaf.cert_pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("parse");
        let sans = cert
            .subject_alternative_name()
            .expect("SAN extension")
            .expect("SANs")
            .value
            .general_names
            .iter()
            .map(|n| format!("{n}"))
            .collect::<Vec<_>>();
        assert_eq!(
            sans,
            [
                "URI(spiffe://td/ns/a/sa/web)",
                "DNSName(web.test)",
                "IPAddress(7f:00:00:01)"
            ],
            "{sans:?}"
        );
        assert_eq!(cert.subject().to_string(), "CN=web");
        assert!(cert.validity().is_valid());
        let expired = ca.leaf().dns("x").expired().sign();
        let der = rustls_pem(&expired.cert_pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("parse");
        assert!(!cert.validity().is_valid());
    }

    #[test]
    fn a_secret_volume_swaps_its_contents_through_the_data_link() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::new("unit CA");
        let first = ca.leaf().dns("one").sign();
        let mut volume = SecretVolume::create(&dir.path().join("secret"), &first, ca.pem());
        assert_eq!(
            std::fs::read_to_string(volume.cert()).expect("cert"),
            first.cert_pem
        );
        volume.update("new cert", "new key", "new ca");
        assert_eq!(
            std::fs::read_to_string(volume.cert()).expect("cert"),
            "new cert"
        );
        assert_eq!(
            std::fs::read_to_string(volume.key()).expect("key"),
            "new key"
        );
        assert_eq!(std::fs::read_to_string(volume.ca()).expect("ca"), "new ca");
        assert_eq!(
            std::fs::read_link(volume.root().join("..data")).expect("..data"),
            PathBuf::from("..v2")
        );
    }

    fn rustls_pem(pem: &str) -> Vec<u8> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("PEM");
        pem.contents
    }
}
