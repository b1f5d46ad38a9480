//! How requests reach Prometheus: https, credentials and headers.
//!
//! https goes through the rustls and ring the binary already carries for the webhook listener
//! and the Kubernetes client: reqwest is built without a TLS provider of its own and handed a
//! ring `ClientConfig` (the system's roots through `rustls-platform-verifier`, or
//! `prometheus.tls.ca_file`; a client certificate for mTLS). `prometheus.tls.server_name`
//! names the server in SNI, in verification and in the `Host` header: requests go to that name,
//! which resolves to the URL's host. The bearer token or basic-auth password is read from its
//! file, and the files rotate through [`crate::reload`]: each secret is one [`Reload`] target,
//! and new contents swap in a new client or `Authorization` header atomically; requests in
//! flight finish on the old one. It sends nothing itself; `promql.rs` does.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use url::Url;

use crate::config::PrometheusConfig;
use crate::error::{Error, Result};
use crate::reload::{Reload, SecretKind, Watched};

/// The client and headers in force.
pub struct Current {
    pub http: reqwest::Client,
    /// The URL requests go to: the configured one, its host replaced by `tls.server_name`.
    pub base: Url,
    pub headers: HeaderMap,
}

/// What requests to Prometheus go through; rebuilt when a secret file changes.
pub struct Connection {
    config: PrometheusConfig,
    /// Each secret's files, last read when the contents in force were: a later check reloads
    /// only what changed since, however long until rotation starts (a follower's wait to lead).
    files: Vec<(SecretKind, Arc<Watched>)>,
    secrets: Mutex<Secrets>,
    current: RwLock<Arc<Current>>,
}

/// The secret files' contents in force.
#[derive(Clone, Default)]
struct Secrets {
    token: Option<String>,
    password: Option<String>,
    /// The CA, the client certificate and its key, those configured, in that order.
    tls: Vec<Vec<u8>>,
}

impl Secrets {
    /// Takes new contents of one secret's files.
    fn take(&mut self, kind: SecretKind, contents: &[Vec<u8>]) -> Result<()> {
        match kind {
            SecretKind::PrometheusToken => {
                self.token = Some(secret_text(contents, "prometheus.bearer_token_file")?);
            }
            SecretKind::PrometheusPassword => {
                self.password = Some(secret_text(
                    contents,
                    "prometheus.basic_auth.password_file",
                )?);
            }
            _ => self.tls = contents.to_vec(),
        }
        Ok(())
    }
}

impl Connection {
    /// Reads every secret file and builds the client: a file that cannot be used is an error
    /// here, at start-up, unlike a bad rotation later.
    pub fn new(config: &PrometheusConfig) -> Result<Arc<Self>> {
        let files: Vec<(SecretKind, Arc<Watched>)> = [
            (SecretKind::PrometheusToken, token_files(config)),
            (SecretKind::PrometheusPassword, password_files(config)),
            (SecretKind::PrometheusTls, tls_files(config)),
        ]
        .into_iter()
        .filter_map(|(kind, watched)| Some((kind, Arc::new(watched?))))
        .collect();
        let mut secrets = Secrets::default();
        for (kind, watched) in &files {
            secrets.take(*kind, &watched.read()?)?;
        }
        let current = build(config, &secrets)?;
        Ok(Arc::new(Self {
            config: config.clone(),
            files,
            secrets: Mutex::new(secrets),
            current: RwLock::new(Arc::new(current)),
        }))
    }

    /// The client and headers to send the next request with.
    #[must_use]
    pub fn current(&self) -> Arc<Current> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The secrets to re-read when they change, one [`Reload`] target each.
    #[must_use]
    pub fn rotation(self: &Arc<Self>) -> Vec<Arc<dyn Reload>> {
        self.files
            .iter()
            .map(|(kind, watched)| {
                Arc::new(Secret {
                    kind: *kind,
                    watched: watched.clone(),
                    connection: self.clone(),
                }) as Arc<dyn Reload>
            })
            .collect()
    }

    /// Puts `change` into the secrets and rebuilds; on error nothing changes.
    fn update(&self, change: impl FnOnce(&mut Secrets) -> Result<()>) -> Result<()> {
        let mut secrets = self.secrets.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next = secrets.clone();
        change(&mut next)?;
        let current = build(&self.config, &next)?;
        *secrets = next;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(current);
        Ok(())
    }
}

/// One of the connection's secrets, re-read when its files change.
struct Secret {
    kind: SecretKind,
    watched: Arc<Watched>,
    connection: Arc<Connection>,
}

impl Reload for Secret {
    fn kind(&self) -> SecretKind {
        self.kind
    }

    fn watched(&self) -> &Watched {
        &self.watched
    }

    fn apply(&self, contents: &[Vec<u8>]) -> Result<()> {
        self.connection.update(|s| s.take(self.kind, contents))
    }
}

fn token_files(config: &PrometheusConfig) -> Option<Watched> {
    let path = config.bearer_token_file.clone()?;
    Some(Watched::new(vec![("prometheus.bearer_token_file", path)]))
}

fn password_files(config: &PrometheusConfig) -> Option<Watched> {
    let path = config.basic_auth.as_ref()?.password_file.clone();
    Some(Watched::new(vec![(
        "prometheus.basic_auth.password_file",
        path,
    )]))
}

/// The CA, the client certificate and its key, those that are set, as one secret: a
/// certificate and its key must change together.
fn tls_files(config: &PrometheusConfig) -> Option<Watched> {
    let tls = &config.tls;
    let files: Vec<(&'static str, PathBuf)> = [
        ("prometheus.tls.ca_file", &tls.ca_file),
        ("prometheus.tls.cert_file", &tls.cert_file),
        ("prometheus.tls.key_file", &tls.key_file),
    ]
    .into_iter()
    .filter_map(|(key, path)| Some((key, path.clone()?)))
    .collect();
    (!files.is_empty()).then(|| Watched::new(files))
}

/// A secret file's text, trimmed; an empty one is refused, never sent. Errors never quote it.
fn secret_text(contents: &[Vec<u8>], key: &str) -> Result<String> {
    let text = contents
        .first()
        .and_then(|c| std::str::from_utf8(c).ok())
        .map(str::trim)
        .unwrap_or_default();
    if text.is_empty() || HeaderValue::from_str(text).is_err() {
        return Err(Error::Unusable(format!(
            "{key} holds no usable secret (empty, or not visible ASCII)"
        )));
    }
    Ok(text.to_owned())
}

fn build(config: &PrometheusConfig, secrets: &Secrets) -> Result<Current> {
    crate::tls::ring_as_default();
    let mut headers = HeaderMap::new();
    for (name, value) in &config.headers {
        // Checked by `Config::parse`; a header that fails here is dropped, never half-sent.
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
    if let Some(authorization) = authorization(config, secrets)? {
        headers.insert(AUTHORIZATION, authorization);
    }
    let mut http = reqwest::Client::builder()
        .timeout(config.timeout)
        .user_agent(crate::USER_AGENT);
    let mut base = config.url.clone();
    if config.url.scheme() == "https" {
        http = http.tls_backend_preconfigured(tls_config(config, &secrets.tls)?);
        if let (Some(name), Some(host)) = (&config.tls.server_name, config.url.host_str()) {
            base.set_host(Some(name))
                .map_err(|e| Error::Unusable(format!("prometheus.tls.server_name {name}: {e}")))?;
            http = http.dns_resolver(Arc::new(Via {
                name: name.clone(),
                host: host.trim_matches(['[', ']']).to_owned(),
            }));
        }
    }
    let http = http.build().map_err(Error::HttpClient)?;
    Ok(Current {
        http,
        base,
        headers,
    })
}

fn authorization(config: &PrometheusConfig, secrets: &Secrets) -> Result<Option<HeaderValue>> {
    use base64::Engine as _;
    let value = match (&secrets.token, &config.basic_auth, &secrets.password) {
        (Some(token), _, _) => format!("Bearer {token}"),
        (None, Some(auth), Some(password)) => {
            let pair = format!("{}:{password}", auth.username);
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )
        }
        _ => return Ok(None),
    };
    let mut value = HeaderValue::from_str(&value).map_err(|_| {
        Error::Unusable("prometheus.basic_auth.username is not visible ASCII".into())
    })?;
    value.set_sensitive(true);
    Ok(Some(value))
}

/// The ring `ClientConfig` for https to Prometheus.
fn tls_config(config: &PrometheusConfig, files: &[Vec<u8>]) -> Result<rustls::ClientConfig> {
    let tls = &config.tls;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|source| tls_error("prometheus.tls", source))?;
    // The files come in the order `tls_files` lists the keys that are set.
    let mut files = files.iter();
    let ca = tls.ca_file.as_ref().and_then(|_| files.next());
    let identity = match (&tls.cert_file, files.next(), files.next()) {
        (Some(cert_path), Some(cert), Some(key)) => Some((cert_path, cert, key)),
        _ => None,
    };
    let verifier: Arc<dyn ServerCertVerifier> = if tls.insecure_skip_verify {
        Arc::new(AcceptAny(provider.signature_verification_algorithms))
    } else {
        let ca = tls.ca_file.as_deref().zip(ca);
        crate::tls::verifier(&provider, "prometheus.tls.ca_file", ca)?
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut client = match identity {
        Some((cert_path, cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert)
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|source| Error::Pem {
                    context: format!(
                        "failed to parse prometheus.tls.cert_file {}",
                        cert_path.display()
                    ),
                    source,
                })?;
            // No source on purpose: a PEM parse error may quote a line of the key file.
            let key = PrivateKeyDer::from_pem_slice(key).map_err(|_| {
                Error::Unusable("prometheus.tls.key_file holds no usable PEM private key".into())
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|source| tls_error("prometheus.tls.cert_file and key_file", source))?
        }
        None => builder.with_no_client_auth(),
    };
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(client)
}

fn tls_error(what: &str, source: rustls::Error) -> Error {
    Error::Tls {
        context: format!("cannot use {what}"),
        source,
    }
}

/// Resolves `tls.server_name` to the URL's host, so that a request addressed to the name
/// reaches the configured server.
struct Via {
    name: String,
    host: String,
}

impl Resolve for Via {
    fn resolve(&self, name: Name) -> Resolving {
        let target = if name.as_str().eq_ignore_ascii_case(&self.name) {
            self.host.clone()
        } else {
            name.as_str().to_owned()
        };
        Box::pin(async move {
            // The port is the URL's: the connector sets it on every address.
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((target.as_str(), 0))
                .await?
                .collect();
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// `insecure_skip_verify`: accepts any certificate, still checking the handshake's signatures.
#[derive(Debug)]
struct AcceptAny(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// Whether a request error is TLS failing: an unknown CA, a name mismatch, a client
/// certificate refused (under TLS 1.3 that arrives as an alert after the handshake, as a read
/// error), anywhere in the error's chain.
pub fn is_tls(error: &(dyn std::error::Error + 'static)) -> bool {
    if error.is::<rustls::Error>() {
        return true;
    }
    // rustls errors travel inside io errors.
    let inner = error
        .downcast_ref::<std::io::Error>()
        .and_then(std::io::Error::get_ref)
        .map(|e| e as &(dyn std::error::Error + 'static));
    inner.is_some_and(is_tls) || error.source().is_some_and(is_tls)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reload::Polled;

    #[test]
    fn a_token_rotated_before_rotation_starts_is_still_taken_at_the_first_check() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "first\n").unwrap();
        let config = crate::config::Config::from_yaml(&format!(
            "prometheus: {{url: 'http://127.0.0.1:9', bearer_token_file: {}}}\n\
             templates: [{{name: t, namespaces: ['*'], service_selector: a=b}}]\n",
            token.display()
        ))
        .unwrap();
        let connection = Connection::new(&config.prometheus).unwrap();
        // Rotated while a follower waits to lead, before its rotation task starts.
        std::fs::write(&token, "second\n").unwrap();
        let [secret] = <[_; 1]>::try_from(connection.rotation()).ok().unwrap();
        let Polled::Changed(contents) = secret.watched().poll() else {
            panic!("the rotation was not seen");
        };
        secret.apply(&contents).unwrap();
        let current = connection.current();
        assert_eq!(current.headers[AUTHORIZATION], "Bearer second");
    }
}
