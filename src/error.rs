//! The crate's one error type and `Result` alias.
//!
//! Messages name what failed ("failed to patch service default/svc-production") and keep the
//! cause as a `#[source]`, so a chain printer shows each layer once. Nothing here is used as a
//! metric label: labels come from closed sets elsewhere.

use std::path::PathBuf;

/// Everything the library can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read config file {path}")]
    ReadConfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("invalid config {path}: {key}: {message}")]
    InvalidConfig {
        path: PathBuf,
        /// Where in the document, e.g. `guards[0].checks[1].for`.
        key: String,
        message: String,
    },

    #[error("failed to build the Kubernetes client")]
    KubeClient(#[source] Box<kube::Error>),

    #[error("failed to load Kubernetes configuration (KUBECONFIG, else in-cluster)")]
    KubeConfig(#[source] Box<kube::config::InferConfigError>),

    #[error("failed to {verb} {what} {namespace}/{name}")]
    Kube {
        verb: &'static str,
        what: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },

    #[error("failed to list {what} in {scope}")]
    List {
        what: &'static str,
        /// `namespace shop`, or `all namespaces`.
        scope: String,
        #[source]
        source: Box<kube::Error>,
    },

    #[error("timed out after {seconds}s trying to {verb} {namespace}/{name}")]
    KubeTimeout {
        verb: &'static str,
        namespace: String,
        name: String,
        seconds: u64,
    },

    #[error(
        "gave up patching service {namespace}/{name}: it changed under {attempts} attempts in a row (409)"
    )]
    Conflicts {
        namespace: String,
        name: String,
        attempts: usize,
    },

    #[error(
        "missing Kubernetes permissions: {}; grant them in the watchdog's Role (manifests/role.yaml) or, for templates across namespaces, its ClusterRole (manifests/components/cluster-wide), bound to its ServiceAccount",
        missing.join(", ")
    )]
    Forbidden { missing: Vec<String> },

    #[error(
        "not writing to service {namespace}/{name}: this replica does not hold the leader lease"
    )]
    NotLeader { namespace: String, name: String },

    #[error(
        "lost the leader lease {namespace}/{name}: {reason}; stopping so that only the new leader acts"
    )]
    LeadershipLost {
        namespace: String,
        name: String,
        reason: String,
    },

    #[error("the {what} task failed")]
    Task {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },

    #[error("failed to bind {what} listener on {addr}")]
    Bind {
        what: &'static str,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },

    #[error("{what} listener failed")]
    Serve {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error("failed to build metrics registry")]
    Metrics(#[from] prometheus::Error),

    #[error("failed to build HTTP client")]
    HttpClient(#[source] reqwest::Error),

    /// `check-config --connect`: the query failed; the source says why, with its reason.
    #[error("failed to query prometheus at {url}")]
    Connect {
        url: String,
        #[source]
        source: crate::promql::QueryFailure,
    },

    #[error("failed to set up logging: {0}")]
    Telemetry(String),

    /// TLS could not use a certificate or key (a key that does not fit its certificate).
    #[error("{context}")]
    Tls {
        context: String,
        #[source]
        source: rustls::Error,
    },

    /// A PEM file did not parse.
    #[error("{context}")]
    Pem {
        context: String,
        #[source]
        source: rustls::pki_types::pem::Error,
    },

    /// A setting that passed the config check but cannot be used, e.g. an empty secret file.
    #[error("{0}")]
    Unusable(String),
    /// The command line named something that does not exist: exit code 2.
    #[error("{0}")]
    Usage(String),

    /// The local sandbox (demo and tests) could not be set up.
    #[cfg(feature = "sandbox")]
    #[error("{0}")]
    Sandbox(String),

    #[error("I/O error: {context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Whether a write that failed this way may still have been applied: no answer came (a
    /// connection that failed, maybe after sending), or the API server's own 504, which it
    /// sends when a request outlives its deadline, done or not. Any other status is a refusal.
    #[must_use]
    pub fn leaves_write_in_doubt(&self) -> bool {
        match self {
            Self::Kube { source, .. } => match source.as_ref() {
                kube::Error::Api(status) => status.code == 504,
                _ => true,
            },
            _ => false,
        }
    }

    /// Whether retrying may help: a 5xx or 429 from the API server, a broken connection, or a
    /// call that timed out. A 4xx other than 429 is an answer, not a fault.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Kube { source, .. } => match source.as_ref() {
                kube::Error::Api(status) => status.code >= 500 || status.code == 429,
                kube::Error::HyperError(_) | kube::Error::Service(_) => true,
                _ => false,
            },
            Self::KubeTimeout { .. } => true,
            _ => false,
        }
    }
}

/// The crate's `Result`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `outer: inner: root` in one line, for a single log field or event note.
#[must_use]
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}
