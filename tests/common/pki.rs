//! A private CA and what it signed, made by rcgen in the test: for the TLS a user's own PKI
//! would give (Prometheus's `web.config.file`, the webhook's certificate).

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// A private CA and what it signed, as PEM files in one directory.
pub struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// A CA named `name`; a server certificate for `server_names`; a client
    /// certificate. Files: `<name>-ca.crt`, `server.crt`/`.key`, `client.crt`/`.key`.
    pub fn new(dir: &Path, name: &str, server_names: &[&str]) -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, name);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        std::fs::write(dir.join(format!("{name}-ca.crt")), ca_cert.pem()).unwrap();
        for (file, names) in [
            (
                "server",
                server_names.iter().map(|n| (*n).to_owned()).collect(),
            ),
            ("client", vec!["cutover-watchdog".to_owned()]),
        ] {
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(names)
                .unwrap()
                .signed_by(&key, &issuer)
                .unwrap();
            std::fs::write(dir.join(format!("{file}.crt")), cert.pem()).unwrap();
            std::fs::write(dir.join(format!("{file}.key")), key.serialize_pem()).unwrap();
        }
        Self {
            dir: dir.to_owned(),
        }
    }

    pub fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }
}

/// A ring `ClientConfig` trusting only the CA certificate `ca` (PEM): a client of a server
/// this PKI signed.
pub fn client_config(ca: &[u8]) -> rustls::ClientConfig {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}
