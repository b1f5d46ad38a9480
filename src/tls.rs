//! HTTPS on the main listener: a rustls (ring) acceptor whose certificate and key can be rotated
//! while it serves, and an axum [`Listener`] that runs TLS handshakes beside the accept loop.
//!
//! Each new connection gets the pair in force when its handshake starts; open connections keep
//! the one they began with. A new pair that does not parse, or whose key does not fit its
//! certificate, is refused and the previous pair stays ([`crate::reload`] decides when to look).
//! Deliberately not here: client certificates (mTLS), HTTP/2 (the router speaks HTTP/1.1), and
//! the admin listener, which stays plain HTTP for probes and scrapes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use axum::serve::Listener;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::{debug, error};

use crate::error::{Error, Result};
use crate::reload::{Reload, SecretKind, Watched};

const CERT_KEY: &str = "webhook.tls.cert_file";
const KEY_KEY: &str = "webhook.tls.key_file";

/// A client that connects and never finishes its handshake must not hold a task forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The certificate and key in force, swapped whole when the files change.
pub struct CertStore {
    cert_path: PathBuf,
    key_path: PathBuf,
    watched: Watched,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl std::fmt::Debug for CertStore {
    // By hand: only the paths, never anything derived from the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

impl CertStore {
    /// Loads the pair; an unusable one is an error at startup.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self> {
        let watched = Watched::new(vec![
            (CERT_KEY, cert_path.to_owned()),
            (KEY_KEY, key_path.to_owned()),
        ]);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let contents = watched.read()?;
        let pair = parse_pair(cert_path, key_path, &contents, &provider)?;
        Ok(Self {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            watched,
            provider,
            current: RwLock::new(Arc::new(pair)),
        })
    }

    /// The leaf certificate in force (DER).
    #[must_use]
    pub fn leaf(&self) -> Option<CertificateDer<'static>> {
        let current = self.current();
        current
            .end_entity_cert()
            .ok()
            .map(|c| c.clone().into_owned())
    }

    fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// An acceptor that asks this store for the pair at every handshake.
    pub fn acceptor(self: &Arc<Self>) -> Result<TlsAcceptor> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|source| Error::Tls {
                context: "failed to set up TLS for the main listener".into(),
                source,
            })?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl Reload for CertStore {
    fn kind(&self) -> SecretKind {
        SecretKind::Tls
    }

    fn watched(&self) -> &Watched {
        &self.watched
    }

    fn apply(&self, contents: &[Vec<u8>]) -> Result<()> {
        let pair = parse_pair(&self.cert_path, &self.key_path, contents, &self.provider)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(pair);
        Ok(())
    }
}

/// The certificate chain and the key, checked to fit each other.
fn parse_pair(
    cert_path: &Path,
    key_path: &Path,
    contents: &[Vec<u8>],
    provider: &CryptoProvider,
) -> Result<CertifiedKey> {
    let file = |i: usize| contents.get(i).map_or(&[][..], Vec::as_slice);
    let chain = CertificateDer::pem_slice_iter(file(0))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|source| Error::Pem {
            context: format!("failed to parse {CERT_KEY} {}", cert_path.display()),
            source,
        })?;
    if chain.is_empty() {
        return Err(Error::Unusable(format!(
            "{CERT_KEY} {} holds no PEM certificate",
            cert_path.display()
        )));
    }
    // No source on purpose: a PEM parse error may quote a line of the key file.
    let key = PrivateKeyDer::from_pem_slice(file(1)).map_err(|_| {
        Error::Unusable(format!(
            "{KEY_KEY} {} holds no usable PEM private key",
            key_path.display()
        ))
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|source| Error::Tls {
        context: format!(
            "{KEY_KEY} {} does not fit {CERT_KEY} {}",
            key_path.display(),
            cert_path.display()
        ),
        source,
    })
}

/// Accepts TCP connections and hands axum only those whose TLS handshake completed. Handshakes
/// run as their own tasks, so a slow client never holds up the next accept.
pub struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    handshakes: JoinSet<(SocketAddr, Option<std::io::Result<TlsStream<TcpStream>>>)>,
}

impl TlsListener {
    /// Serves TLS with `acceptor` on connections accepted from `tcp`.
    #[must_use]
    pub fn new(tcp: TcpListener, acceptor: TlsAcceptor) -> Self {
        Self {
            tcp,
            acceptor,
            handshakes: JoinSet::new(),
        }
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                accepted = self.tcp.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let acceptor = self.acceptor.clone();
                        self.handshakes.spawn(async move {
                            let done = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                            (peer, done.await.ok())
                        });
                    }
                    Err(e) => accept_error(e).await,
                },
                Some(done) = self.handshakes.join_next(), if !self.handshakes.is_empty() => match done {
                    Ok((peer, Some(Ok(stream)))) => return (stream, peer),
                    // A client speaking plain HTTP, or not trusting the certificate: its problem.
                    Ok((peer, Some(Err(e)))) => debug!(%peer, error = %e, "TLS handshake failed"),
                    Ok((peer, None)) => debug!(%peer, "TLS handshake timed out"),
                    Err(e) => error!(error = %e, "TLS handshake task failed"),
                },
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// As axum's own listener does: per-connection errors are the client's; anything else (out of
/// file descriptors) is logged and waited out, since accept would fail again at once.
async fn accept_error(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    error!(error = %e, "accept failed on the main listener");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// A verifier of servers' certificates: against the PEM certificates of the file at `ca`
/// (its path and contents; `key` names it in errors), else the system's roots.
pub fn verifier(
    provider: &Arc<CryptoProvider>,
    key: &str,
    ca: Option<(&Path, &Vec<u8>)>,
) -> Result<Arc<dyn ServerCertVerifier>> {
    let unusable = |source| Error::Tls {
        context: format!("cannot use {key}"),
        source,
    };
    let Some((path, pem)) = ca else {
        let verifier =
            rustls_platform_verifier::Verifier::new(provider.clone()).map_err(|source| {
                Error::Tls {
                    context: "cannot use the system's root certificates".into(),
                    source,
                }
            })?;
        return Ok(Arc::new(verifier));
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|source| Error::Pem {
            context: format!("failed to parse {key} {}", path.display()),
            source,
        })?;
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(Error::Unusable(format!(
            "{key} {} holds no usable PEM certificate",
            path.display()
        )));
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map(|v| v as Arc<dyn ServerCertVerifier>)
        .map_err(|e| unusable(rustls::Error::General(e.to_string())))
}

/// Makes ring the process's default rustls provider; later calls change nothing. reqwest is
/// built without a provider of its own (no aws-lc-rs), and building any reqwest client, plain
/// http included, needs a default one.
pub fn ring_as_default() {
    // An error means a default is already installed: the same ring, or one a caller chose.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
