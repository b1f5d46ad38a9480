//! A follower's way to the leader: requests only the leader can answer (Alertmanager's webhook,
//! `/v1/guards`) are sent on to the address the leader published on the Lease, and the leader's
//! answer is passed back.
//!
//! Every replica is Ready, so the Service spreads webhooks over all of them; this is what lets
//! an alert delivered to a follower act, on the leader, once. A forward is bounded by
//! `leader_election.forward_timeout` and marked [`FORWARDED`]: a replica never forwards a
//! request that carries it, so a stale address (a follower, an old version) costs one 503,
//! never a loop. With `webhook.tls` the forward is https, and the leader's certificate is
//! verified for `leader_election.forward_server_name` while the connection goes to its IP.
//! Deliberately not here: authentication (the caller did it; the leader does it again, with the
//! same credentials passed on) and retries (Alertmanager retries a 503).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::json;
use tokio::sync::watch;

use crate::config::LeaderElectionConfig;
use crate::error::{Error, Result};
use crate::leader::Lead;

/// Marks a request one replica sent on to another; such a request is never sent on again.
pub const FORWARDED: HeaderName = HeaderName::from_static("x-cutover-watchdog-forwarded");

/// Names the leader that answered a request a follower forwarded.
pub const LEADER: HeaderName = HeaderName::from_static("x-cutover-watchdog-leader");

/// The headers of the leader's answer that are passed back: what Alertmanager and the
/// watchdog's clients read. Hop-by-hop and length headers are the listener's own business.
const ANSWER_HEADERS: [HeaderName; 3] = [
    header::CONTENT_TYPE,
    header::RETRY_AFTER,
    header::WWW_AUTHENTICATE,
];

/// How a forward ended: the closed set of `webhook_forwarded_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The leader answered 2xx.
    Ok,
    /// The leader answered otherwise, or could not be reached.
    LeaderError,
    /// No answer within `forward_timeout`.
    Timeout,
    /// No leader known, or it published no address.
    NoLeader,
}

impl Outcome {
    pub const ALL: [Self; 4] = [Self::Ok, Self::LeaderError, Self::Timeout, Self::NoLeader];

    #[must_use]
    pub fn as_label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::LeaderError => "leader_error",
            Self::Timeout => "timeout",
            Self::NoLeader => "no_leader",
        }
    }
}

/// Why the leader's answer could not be had. Its text names the leader and its address.
#[derive(Debug, thiserror::Error)]
pub enum Unreachable {
    #[error("no leader known to forward to")]
    NoLeader,
    #[error("leader {holder} published no address to forward to (is POD_IP set?)")]
    NoAddress { holder: String },
    #[error("leader {holder} at {address} did not answer within {}ms", .after.as_millis())]
    Timeout {
        holder: String,
        address: String,
        after: Duration,
    },
    #[error("leader {holder} at {address} could not be reached: {message}")]
    Failed {
        holder: String,
        address: String,
        message: String,
    },
}

impl Unreachable {
    #[must_use]
    pub fn outcome(&self) -> Outcome {
        match self {
            Self::NoLeader | Self::NoAddress { .. } => Outcome::NoLeader,
            Self::Timeout { .. } => Outcome::Timeout,
            Self::Failed { .. } => Outcome::LeaderError,
        }
    }
}

/// 503 with `Retry-After: 1` and `{"error": ...}`: Alertmanager retries, by then perhaps to a
/// new leader.
impl IntoResponse for Unreachable {
    fn into_response(self) -> Response {
        let mut response = axum::Json(json!({ "error": self.to_string() })).into_response();
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        response
    }
}

/// Sends requests on to the leader.
pub struct Forwarder {
    http: reqwest::Client,
    scheme: &'static str,
    timeout: Duration,
    lead: watch::Receiver<Lead>,
}

impl Forwarder {
    /// A forwarder to whoever `lead` says leads; https when the main listener is (`tls`).
    pub fn new(
        config: &LeaderElectionConfig,
        tls: bool,
        lead: watch::Receiver<Lead>,
    ) -> Result<Self> {
        crate::tls::ring_as_default();
        // No idle connections kept: a forward is rare, and a kept one could outlive a change
        // of leader at the same address.
        let mut http = reqwest::Client::builder()
            .user_agent(crate::USER_AGENT)
            .pool_max_idle_per_host(0)
            .redirect(reqwest::redirect::Policy::none());
        if tls {
            http = http.tls_backend_preconfigured(client_config(config)?);
        }
        Ok(Self {
            http: http.build().map_err(Error::HttpClient)?,
            scheme: if tls { "https" } else { "http" },
            timeout: config.forward_timeout,
            lead,
        })
    }

    /// Who leads, as this replica last read the Lease.
    #[must_use]
    pub fn lead(&self) -> Lead {
        self.lead.borrow().clone()
    }

    /// The leader's answer to `method path` with these headers and body, marked
    /// [`FORWARDED`] and with a [`LEADER`] header naming it.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> std::result::Result<Response, Unreachable> {
        let lead = self.lead.borrow().clone();
        let (holder, address) = match lead {
            Lead::Unknown | Lead::Vacant => return Err(Unreachable::NoLeader),
            Lead::Held {
                holder,
                address: None,
            } => return Err(Unreachable::NoAddress { holder }),
            Lead::Held {
                holder,
                address: Some(address),
            } => (holder, address),
        };
        let url = format!("{}://{address}{path}", self.scheme);
        let sent = self
            .http
            .request(method, url)
            .headers(headers)
            .header(FORWARDED, "1")
            .timeout(self.timeout)
            .body(body)
            .send();
        let failed = |e: &reqwest::Error| {
            if e.is_timeout() {
                Unreachable::Timeout {
                    holder: holder.clone(),
                    address: address.clone(),
                    after: self.timeout,
                }
            } else {
                Unreachable::Failed {
                    holder: holder.clone(),
                    address: address.clone(),
                    message: crate::error::chain(e),
                }
            }
        };
        let answer = sent.await.map_err(|e| failed(&e))?;
        let status = answer.status();
        let mut passed = HeaderMap::new();
        for name in ANSWER_HEADERS {
            if let Some(value) = answer.headers().get(&name) {
                passed.insert(name, value.clone());
            }
        }
        let body = answer.bytes().await.map_err(|e| failed(&e))?;
        let mut response = (status, passed, body).into_response();
        if let Ok(name) = HeaderValue::from_str(&holder) {
            response.headers_mut().insert(LEADER, name);
        }
        Ok(response)
    }
}

/// The ring `ClientConfig` for forwards over https: the leader's certificate verified against
/// `forward_ca_file` (else the system's roots) for `forward_server_name` (else its IP).
fn client_config(config: &LeaderElectionConfig) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let ca = match &config.forward_ca_file {
        Some(path) => Some((
            path.as_path(),
            std::fs::read(path).map_err(|source| Error::Io {
                context: format!(
                    "failed to read leader_election.forward_ca_file {}",
                    path.display()
                ),
                source,
            })?,
        )),
        None => None,
    };
    let verifier = crate::tls::verifier(
        &provider,
        "leader_election.forward_ca_file",
        ca.as_ref().map(|(path, pem)| (*path, pem)),
    )?;
    let verifier: Arc<dyn ServerCertVerifier> = match &config.forward_server_name {
        Some(name) => Arc::new(Named {
            inner: verifier,
            name: ServerName::try_from(name.clone()).map_err(|_| {
                Error::Unusable(format!(
                    "leader_election.forward_server_name {name:?} is not a DNS name or IP address"
                ))
            })?,
        }),
        None => verifier,
    };
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| Error::Tls {
            context: "cannot build the forward's TLS configuration".into(),
            source,
        })?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(client)
}

/// Verifies the certificate for a configured name, whatever address the connection went to:
/// the leader is reached at its Pod IP, and its certificate names the Service.
#[derive(Debug)]
struct Named {
    inner: Arc<dyn ServerCertVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for Named {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
