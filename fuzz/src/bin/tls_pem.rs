//! The sidecar kit's certificate loading: a PEM chain (NUL) a PEM key, parsed as an identity
//! and as a trust bundle, checked as a credential rotation checks them; and the bytes as a
//! peer's DER certificate.
use std::path::Path;
use std::time::SystemTime;

use sidecar_kit::tls::{Identity, PeerIdentity, TrustBundle, check_credentials};

fn main() {
    sidecar_kit::tls::install_default_provider();
    afl::fuzz!(|data: &[u8]| {
        let _ = PeerIdentity::from_der(data);
        let (cert, key) = sidecars_fuzz::split2(data);
        let identity = Identity::from_pem(cert, key, Path::new("cert.pem"), Path::new("key.pem"));
        let bundle = TrustBundle::from_pem(cert, Path::new("ca.pem"));
        if let Ok(identity) = &identity {
            let _ = identity.certified_key();
        }
        if let (Ok(identity), Ok(bundle)) = (&identity, &bundle) {
            let _ = check_credentials(identity, bundle, SystemTime::now());
        }
    });
}
