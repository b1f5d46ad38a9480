//! The configuration file: its schema, defaults and validation.
//!
//! The keys here are a contract with operators, the shipped manifests and the docs: keys may be
//! added, never renamed. Every error names the offending key (`guards[0].checks[1].for`).
//! This module only reads and checks; it does not watch the file for changes.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use url::Url;

use crate::error::{Error, Result};
use crate::promql::{LabelTemplate, Placeholder, ServiceVars, Template};
use crate::selector::LabelSelector;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Main listener: `GET /v1/guards` (and the Alertmanager webhook).
    #[serde(default = "defaults::listen")]
    pub listen: SocketAddr,
    /// Admin listener: `GET /metrics`, `/healthz`, `/readyz`.
    #[serde(default = "defaults::admin_listen")]
    pub admin_listen: SocketAddr,
    /// How often each open window's checks are queried.
    #[serde(default = "defaults::poll_interval", with = "duration")]
    pub poll_interval: Duration,
    /// Where the version-labelled metrics live.
    pub prometheus: PrometheusConfig,
    /// How long a Kubernetes write may take, retries included, before it is reported failed.
    #[serde(default = "defaults::kube_timeout", with = "duration")]
    pub kube_timeout: Duration,
    /// The Alertmanager webhook on `listen`.
    #[serde(default)]
    pub webhook: WebhookConfig,
    /// The guarded Services, by name.
    #[serde(default)]
    pub guards: Vec<GuardConfig>,
    /// Guards for every Service that matches, in the namespaces each template lists.
    #[serde(default)]
    pub templates: Vec<TemplateConfig>,
    /// How often the config file is checked for new contents (SIGHUP reloads at once).
    #[serde(default = "defaults::reload_interval", with = "duration")]
    pub config_reload_interval: Duration,
    /// Leader election, for two or more replicas. Absent: this replica acts alone.
    #[serde(default)]
    pub leader_election: Option<LeaderElectionConfig>,
    /// Where to tell people what the watchdog did, with the evidence.
    #[serde(default)]
    pub notifications: Vec<ReceiverConfig>,
}

/// One receiver of notifications: a webhook that takes a JSON POST.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReceiverConfig {
    /// Unique; the `receiver` label of `notifications_total`.
    pub name: String,
    /// The URL, when it is not a secret.
    #[serde(default)]
    pub url: Option<Url>,
    /// A file holding the URL, when it is one (a Slack webhook's secret is its path).
    #[serde(default)]
    pub url_file: Option<PathBuf>,
    #[serde(default)]
    pub format: NotifyFormat,
    /// A file holding a bearer token to send.
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    /// Plain headers on every delivery; not for secrets.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The Event reasons to send; without it, every Warning Event the watchdog emits.
    #[serde(default)]
    pub events: Option<Vec<String>>,
    /// A link to the dashboard for the window: `{{guard}}`, `{{from_ms}}` and `{{to_ms}}` are
    /// filled in, URL-encoded.
    #[serde(default)]
    pub dashboard_url: Option<String>,
    /// One delivery attempt's bound (three attempts, with backoff).
    #[serde(default = "defaults::notify_timeout", with = "duration")]
    pub timeout: Duration,
}

/// The payload a receiver takes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyFormat {
    /// The facts as one JSON object.
    #[default]
    Json,
    /// Slack's incoming-webhook payload: blocks, and a text fallback.
    Slack,
}

/// Every Event reason the watchdog emits, and whether it is a Warning.
pub const EVENT_REASONS: [(&str, bool); 16] = [
    ("CutoverDetected", false),
    ("CutoverStable", false),
    ("WouldRollBack", false),
    ("WindowSuperseded", false),
    ("RollbackTriggered", true),
    ("RolledBack", true),
    ("RollbackBlocked", true),
    ("RollbackOutcomeUnknown", true),
    ("RollbackFailed", true),
    ("WindowExpired", true),
    ("CutoverMissed", true),
    ("PreviousVersionScaledDown", true),
    ("TrafficNotSwitched", true),
    ("RollbackTrafficNotRestored", true),
    ("TrafficVolumeDropped", true),
    ("RollbackOverridden", true),
];

impl ReceiverConfig {
    /// Whether this receiver takes Events with `reason`.
    #[must_use]
    pub fn wants(&self, reason: &str) -> bool {
        match &self.events {
            Some(events) => events.iter().any(|e| e == reason),
            None => EVENT_REASONS
                .iter()
                .any(|(r, warning)| *r == reason && *warning),
        }
    }

    fn validate(&self, at: &str) -> Checked {
        let key = |k: &str| format!("{at}.{k}");
        check_name(&key("name"), &self.name)?;
        match (&self.url, &self.url_file) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(refuse(
                    at.into(),
                    "exactly one of `url` or `url_file` is required".into(),
                ));
            }
            (Some(url), None) if !matches!(url.scheme(), "http" | "https") => {
                return Err(refuse(
                    key("url"),
                    format!("must be http or https, got {}", url.scheme()),
                ));
            }
            _ => {}
        }
        headers(
            &key("headers"),
            &self.headers,
            &format!("{at}.bearer_token_file"),
        )?;
        nonzero(&key("timeout"), self.timeout)?;
        for (i, event) in self.events.iter().flatten().enumerate() {
            if !EVENT_REASONS.iter().any(|(r, _)| r == event) {
                let known: Vec<&str> = EVENT_REASONS.iter().map(|(r, _)| *r).collect();
                return Err(refuse(
                    format!("{at}.events[{i}]"),
                    format!(
                        "{event:?} is not an Event the watchdog emits ({})",
                        known.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Leader election on a `coordination.k8s.io/v1` Lease: only the holder writes, and it stops
/// writing `fence_margin` before any other replica could consider the Lease expired.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LeaderElectionConfig {
    /// The Lease's name.
    #[serde(default = "defaults::lease_name")]
    pub lease_name: String,
    /// The Lease's namespace; defaults to the client's (the Pod's own, in cluster).
    #[serde(default)]
    pub namespace: Option<String>,
    /// How long the Lease holds without renewal before another replica may take it.
    #[serde(default = "defaults::lease_duration", with = "duration")]
    pub lease_duration: Duration,
    /// How often the leader renews, and a follower looks again.
    #[serde(default = "defaults::renew_interval", with = "duration")]
    pub renew_interval: Duration,
    /// The leader stops writing this long before the Lease could expire: time for a write in
    /// flight to land, and for clocks that run at different rates.
    #[serde(default = "defaults::fence_margin", with = "duration")]
    pub fence_margin: Duration,
    /// How long a follower waits for the leader's answer to a request it forwards.
    #[serde(default = "defaults::forward_timeout", with = "duration")]
    pub forward_timeout: Duration,
    /// With `webhook.tls`: the name verified in the leader's certificate when a follower
    /// forwards to it (a DNS name of the webhook certificate). Without it, the leader's IP.
    #[serde(default)]
    pub forward_server_name: Option<String>,
    /// With `webhook.tls`: PEM certificates of the CA that issued the webhook certificate, to
    /// verify the leader with. Without it, the system's roots.
    #[serde(default)]
    pub forward_ca_file: Option<PathBuf>,
}

/// `POST /webhook/alertmanager`: how it authenticates and how much it takes.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// File holding the bearer token Alertmanager sends (`http_config.authorization`).
    /// Surrounding whitespace is trimmed. Secrets never come from the config itself.
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    /// Alternatively, HTTP basic auth (`http_config.basic_auth`).
    #[serde(default)]
    pub basic_auth: Option<BasicAuthConfig>,
    /// Larger bodies get 413.
    #[serde(default = "defaults::max_body_bytes")]
    pub max_body_bytes: usize,
    /// One global limit, applied before authentication; above it requests get 429.
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
    /// How often the secret files and the TLS pair are checked for new contents, so a rotated
    /// secret takes effect without a restart.
    #[serde(default = "defaults::reload_interval", with = "duration")]
    pub reload_interval: Duration,
    /// HTTPS on `listen` (the main listener only; the admin listener stays plain HTTP).
    #[serde(default)]
    pub tls: TlsConfig,
}

/// The main listener's certificate and key, both PEM, both or neither. Re-read when they change.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, leaf first.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// The private key (PKCS#8, PKCS#1 or SEC1) for the leaf certificate.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

impl TlsConfig {
    /// The (certificate, key) paths when TLS is on. Only meaningful after [`Config::parse`],
    /// which refuses one without the other.
    #[must_use]
    pub fn files(&self) -> Option<(&Path, &Path)> {
        Some((self.cert_file.as_deref()?, self.key_file.as_deref()?))
    }
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            bearer_token_file: None,
            basic_auth: None,
            max_body_bytes: defaults::max_body_bytes(),
            rate_limit: RateLimitConfig::default(),
            reload_interval: defaults::reload_interval(),
            tls: TlsConfig::default(),
        }
    }
}

impl WebhookConfig {
    fn validate(&self) -> Checked {
        let w = self;
        if w.bearer_token_file.is_some() && w.basic_auth.is_some() {
            return Err(refuse(
                "webhook".into(),
                "set either `bearer_token_file` or `basic_auth`, not both".into(),
            ));
        }
        if w.max_body_bytes == 0 || w.max_body_bytes > 64 << 20 {
            return Err(refuse(
                "webhook.max_body_bytes".into(),
                "must be between 1 and 67108864".into(),
            ));
        }
        if w.rate_limit.per_second == 0 {
            return Err(refuse(
                "webhook.rate_limit.per_second".into(),
                "must be at least 1".into(),
            ));
        }
        if w.rate_limit.burst == 0 {
            return Err(refuse(
                "webhook.rate_limit.burst".into(),
                "must be at least 1".into(),
            ));
        }
        nonzero("webhook.reload_interval", w.reload_interval)?;
        pair(
            "webhook.tls",
            w.tls.cert_file.as_ref(),
            w.tls.key_file.as_ref(),
        )
    }
}

/// A certificate and its key under `at`: both or neither.
fn pair(at: &str, cert: Option<&PathBuf>, key: Option<&PathBuf>) -> Checked {
    match (cert, key) {
        (Some(_), None) => Err(refuse(
            format!("{at}.key_file"),
            format!("is required when {at}.cert_file is set"),
        )),
        (None, Some(_)) => Err(refuse(
            format!("{at}.cert_file"),
            format!("is required when {at}.key_file is set"),
        )),
        _ => Ok(()),
    }
}

/// HTTP basic auth: the webhook's, or the one sent to Prometheus.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthConfig {
    pub username: String,
    /// File holding the password; surrounding whitespace is trimmed.
    pub password_file: PathBuf,
}

/// A token bucket: `per_second` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub per_second: u32,
    pub burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            per_second: 20,
            burst: 40,
        }
    }
}

/// Which Alertmanager alerts act on a guard.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// Every label here must be equal on the alert. Values may use the Service's placeholders
    /// (`{{service}}`, `{{label.app}}`, ...), filled when the guard is bound to its Service.
    #[serde(rename = "match", default)]
    pub match_labels: BTreeMap<String, LabelTemplate>,
    /// The alert's `severity` label must be one of these.
    #[serde(default = "defaults::severities")]
    pub severities: Vec<String>,
}

impl AlertsConfig {
    /// Whether an alert with `labels` is about this guard (its severity aside).
    #[must_use]
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels.iter().all(|(k, v)| {
            v.literal()
                .is_some_and(|v| labels.get(k).map(String::as_str) == Some(v))
        })
    }

    /// The match values filled from `vars`, or the first placeholder `vars` lack.
    fn bind(&self, vars: &ServiceVars<'_>) -> std::result::Result<Self, Placeholder> {
        let match_labels = self
            .match_labels
            .iter()
            .map(|(k, v)| Ok((k.clone(), LabelTemplate::literal_of(v.fill(vars)?))))
            .collect::<std::result::Result<_, Placeholder>>()?;
        Ok(Self {
            match_labels,
            severities: self.severities.clone(),
        })
    }

    /// Whether `severity` is one that acts.
    #[must_use]
    pub fn acts_on(&self, severity: Option<&str>) -> bool {
        severity.is_some_and(|s| self.severities.iter().any(|x| x == s))
    }
}

/// The Prometheus HTTP API the checks are sent to, and how to reach it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusConfig {
    /// Base URL, http or https, e.g. `http://prometheus.monitoring:9090`. A path is kept as a
    /// prefix: `https://mimir/prometheus` queries `https://mimir/prometheus/api/v1/query`.
    pub url: Url,
    /// Per-query timeout; a query that takes longer counts as an error, never as a breach.
    #[serde(default = "defaults::prometheus_timeout", with = "duration")]
    pub timeout: Duration,
    /// File holding a bearer token (e.g. a projected `ServiceAccount` token), re-read when it
    /// changes.
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    /// Alternatively, HTTP basic auth, its password from a file.
    #[serde(default)]
    pub basic_auth: Option<BasicAuthConfig>,
    /// Headers sent with every query, e.g. `X-Scope-OrgID`: plain values, so not for secrets.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub tls: PrometheusTlsConfig,
    /// How often the token, password and TLS files are checked for new contents.
    #[serde(default = "defaults::reload_interval", with = "duration")]
    pub reload_interval: Duration,
}

/// How https to Prometheus is verified, and the client certificate, if one is required.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusTlsConfig {
    /// PEM certificates to trust instead of the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A client certificate chain (PEM, leaf first) for mTLS, with `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The name to send (SNI) and verify the certificate against, if not the URL's host.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Accept any certificate. Warned about at start-up and in `/readyz`.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

impl PrometheusConfig {
    fn validate(&self) -> Checked {
        match self.url.scheme() {
            "http" | "https" => {}
            other => {
                return Err(refuse(
                    "prometheus.url".into(),
                    format!("must be http or https, got {other}"),
                ));
            }
        }
        if self.url.cannot_be_a_base() || self.url.host().is_none() {
            return Err(refuse(
                "prometheus.url".into(),
                "must be an absolute http(s) URL with a host".into(),
            ));
        }
        if !self.url.username().is_empty() || self.url.password().is_some() {
            return Err(refuse(
                "prometheus.url".into(),
                "must not carry credentials: use prometheus.basic_auth with a password_file".into(),
            ));
        }
        nonzero("prometheus.timeout", self.timeout)?;
        nonzero("prometheus.reload_interval", self.reload_interval)?;
        if self.bearer_token_file.is_some() && self.basic_auth.is_some() {
            return Err(refuse(
                "prometheus".into(),
                "set either `bearer_token_file` or `basic_auth`, not both".into(),
            ));
        }
        headers(
            "prometheus.headers",
            &self.headers,
            "prometheus.bearer_token_file or prometheus.basic_auth",
        )?;
        let tls = &self.tls;
        pair(
            "prometheus.tls",
            tls.cert_file.as_ref(),
            tls.key_file.as_ref(),
        )?;
        server_name("prometheus.tls.server_name", tls.server_name.as_deref())?;
        let tls_set = tls.ca_file.is_some()
            || tls.cert_file.is_some()
            || tls.server_name.is_some()
            || tls.insecure_skip_verify;
        if tls_set && self.url.scheme() != "https" {
            return Err(refuse(
                "prometheus.tls".into(),
                "applies only to an https prometheus.url".into(),
            ));
        }
        Ok(())
    }
}

/// Plain headers under `at`: valid names and values, and no credentials, which belong in
/// `instead` (keys that read them from files).
fn headers(at: &str, headers: &BTreeMap<String, String>, instead: &str) -> Checked {
    for (name, value) in headers {
        let at = format!("{at}.{name}");
        if name.eq_ignore_ascii_case("authorization") {
            return Err(refuse(
                at,
                format!(
                    "credentials do not go in headers: use {instead}, which read them from files"
                ),
            ));
        }
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(refuse(at, "is not a valid HTTP header name".into()));
        }
        if reqwest::header::HeaderValue::from_str(value).is_err() {
            return Err(refuse(
                at,
                "must be visible ASCII (no control characters)".into(),
            ));
        }
    }
    Ok(())
}

/// A name TLS can verify a certificate for, if one is given.
fn server_name(key: &str, name: Option<&str>) -> Checked {
    match name {
        Some(name) if rustls::pki_types::ServerName::try_from(name).is_err() => Err(refuse(
            key.into(),
            format!("{name:?} is not a DNS name or IP address"),
        )),
        _ => Ok(()),
    }
}

impl LeaderElectionConfig {
    fn validate(&self) -> Checked {
        check_dns_label("leader_election.lease_name", &self.lease_name)?;
        if let Some(ns) = &self.namespace {
            check_dns_label("leader_election.namespace", ns)?;
        }
        nonzero("leader_election.renew_interval", self.renew_interval)?;
        nonzero("leader_election.forward_timeout", self.forward_timeout)?;
        // A forward must end before the request's own deadline, which would answer 503 for it.
        if self.forward_timeout >= crate::http::REQUEST_TIMEOUT {
            return Err(refuse(
                "leader_election.forward_timeout".into(),
                format!(
                    "must be shorter than the {}s every request is given",
                    crate::http::REQUEST_TIMEOUT.as_secs()
                ),
            ));
        }
        server_name(
            "leader_election.forward_server_name",
            self.forward_server_name.as_deref(),
        )?;
        // The leader acts for lease_duration - fence_margin after each renewal; a renewal must
        // fit in that, or leadership would lapse between two healthy renewals.
        if self.fence_margin + self.renew_interval >= self.lease_duration {
            return Err(refuse(
                "leader_election".into(),
                format!(
                    "renew_interval ({}) + fence_margin ({}) must be shorter than lease_duration ({})",
                    humantime::format_duration(self.renew_interval),
                    humantime::format_duration(self.fence_margin),
                    humantime::format_duration(self.lease_duration),
                ),
            ));
        }
        Ok(())
    }

    /// How long the leader may act after starting a renewal that succeeded.
    #[must_use]
    pub fn term(&self) -> Duration {
        self.lease_duration.saturating_sub(self.fence_margin)
    }
}

/// One guarded Service.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardConfig {
    /// Unique name; used in logs, metrics labels and `/v1/guards`.
    pub name: String,
    #[serde(default = "defaults::namespace")]
    pub namespace: String,
    /// The Service whose selector is switched between versions.
    pub service: String,
    /// The selector key that names the version.
    #[serde(default = "defaults::version_label")]
    pub version_label: String,
    /// Post-cutover window: checks run, and a rollback may happen, only inside it.
    #[serde(default = "defaults::window", with = "duration")]
    pub window: Duration,
    /// Clean for this long after the cutover means stable.
    #[serde(default = "defaults::stabilization", with = "duration")]
    pub stabilization: Duration,
    /// Record `WouldRollBack` instead of patching.
    #[serde(default)]
    pub dry_run: bool,
    /// Ready pods the rollback target must have, else the rollback is refused.
    #[serde(default = "defaults::min_ready_previous")]
    pub min_ready_previous: u32,
    #[serde(default)]
    pub checks: Vec<CheckConfig>,
    /// Alertmanager alerts that revert at once; without this key, none do.
    #[serde(default)]
    pub alerts: Option<AlertsConfig>,
    /// Whether traffic really moved at the cutover, and back at a rollback.
    #[serde(default)]
    pub traffic: Option<TrafficConfig>,
}

/// `traffic:` on a guard or a template.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficConfig {
    /// The request rate of `{{version}}`, with the checks' placeholders.
    pub query: Template,
    /// Green's share of green plus blue must reach this after the cutover (blue's, after a
    /// rollback).
    #[serde(default = "defaults::min_share")]
    pub min_share: f64,
    /// ... within this long.
    #[serde(default = "defaults::within", with = "duration")]
    pub within: Duration,
    /// Green's rate falling below blue's just before the switch by more than this fraction is
    /// the runbook's lost request volume parity.
    #[serde(default = "defaults::volume_drop")]
    pub volume_drop: f64,
    /// What a failed traffic check does besides warning.
    #[serde(default)]
    pub action: TrafficAction,
}

/// `traffic.action`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrafficAction {
    #[default]
    Warn,
    /// Also roll back, with `trigger="traffic"`.
    Rollback,
}

impl GuardConfig {
    /// This guard bound to its Service: every Service placeholder `vars` can fill is filled.
    /// Also returns the first one it could not: a query with it left is never sent, and
    /// `alerts` with it left is dropped, so that no alert can match a half-filled value.
    #[must_use]
    pub fn bind(&self, vars: &ServiceVars<'_>) -> (Self, Option<Placeholder>) {
        let mut missing = None;
        let checks = self
            .checks
            .iter()
            .map(|c| {
                let (probe, lacks) = c.probe.bind(vars);
                if missing.is_none() {
                    missing = lacks;
                }
                CheckConfig { probe, ..c.clone() }
            })
            .collect();
        let alerts = match self.alerts.as_ref().map(|a| a.bind(vars)) {
            Some(Ok(a)) => Some(a),
            Some(Err(lacks)) => {
                missing.get_or_insert(lacks);
                None
            }
            None => None,
        };
        let traffic = self.traffic.as_ref().map(|t| {
            let (query, lacks) = t.query.bind(vars);
            if missing.is_none() {
                missing = lacks;
            }
            TrafficConfig { query, ..t.clone() }
        });
        let bound = Self {
            checks,
            alerts,
            traffic,
            ..self.clone()
        };
        (bound, missing)
    }
}

/// Guards for every Service that matches, in the template's namespaces. A template has every
/// guard key but `name`, `namespace` and `service`: those come from each Service it guards.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(from = "TemplateFields")]
pub struct TemplateConfig {
    pub name: String,
    /// Namespaces to look in; `["*"]` is every namespace.
    pub namespaces: Vec<String>,
    /// Which Services, by their own labels; empty matches all.
    pub service_selector: LabelSelector,
    /// The guard keys; `name`, `namespace` and `service` are left empty.
    pub guard: GuardConfig,
}

impl TemplateConfig {
    /// Whether the template looks in every namespace.
    #[must_use]
    pub fn all_namespaces(&self) -> bool {
        self.namespaces.iter().any(|n| n == ALL_NAMESPACES)
    }

    /// Whether the template looks in `namespace`.
    #[must_use]
    pub fn covers(&self, namespace: &str) -> bool {
        self.all_namespaces() || self.namespaces.iter().any(|n| n == namespace)
    }
}

/// `namespaces: ["*"]`.
pub const ALL_NAMESPACES: &str = "*";

/// A template as written in the file. It repeats [`GuardConfig`]'s keys because serde cannot
/// flatten a struct that refuses unknown keys.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateFields {
    name: String,
    namespaces: Vec<String>,
    #[serde(default)]
    service_selector: LabelSelector,
    #[serde(default = "defaults::version_label")]
    version_label: String,
    #[serde(default = "defaults::window", with = "duration")]
    window: Duration,
    #[serde(default = "defaults::stabilization", with = "duration")]
    stabilization: Duration,
    #[serde(default)]
    dry_run: bool,
    #[serde(default = "defaults::min_ready_previous")]
    min_ready_previous: u32,
    #[serde(default)]
    checks: Vec<CheckConfig>,
    #[serde(default)]
    alerts: Option<AlertsConfig>,
    #[serde(default)]
    traffic: Option<TrafficConfig>,
}

impl From<TemplateFields> for TemplateConfig {
    fn from(t: TemplateFields) -> Self {
        Self {
            name: t.name,
            namespaces: t.namespaces,
            service_selector: t.service_selector,
            guard: GuardConfig {
                name: String::new(),
                namespace: String::new(),
                service: String::new(),
                version_label: t.version_label,
                window: t.window,
                stabilization: t.stabilization,
                dry_run: t.dry_run,
                min_ready_previous: t.min_ready_previous,
                checks: t.checks,
                alerts: t.alerts,
                traffic: t.traffic,
            },
        }
    }
}

/// One check, validated as it is read: a PromQL query that parses, with exactly one finite
/// threshold, or an HTTP probe (a synthetic transaction), which has none.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "CheckFields")]
pub struct CheckConfig {
    pub name: String,
    pub probe: Probe,
    /// For an HTTP probe, `above 0.5` of its sample: 1 when it failed, 0 when it passed.
    pub threshold: Threshold,
    /// Breached at every poll for this long trips the check.
    pub for_: Duration,
    pub on_no_data: NoDataPolicy,
}

/// What a check asks each poll.
#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    /// PromQL; `{{version}}` is the green version, `{{previous_version}}` the blue one, and
    /// `{{namespace}}`, `{{service}}`, `{{selector.KEY}}`, `{{label.KEY}}` the Service's.
    Query(Template),
    /// A synthetic transaction: breached on any status but `expect_status`, a connection
    /// error or a timeout.
    Http(HttpProbe),
}

impl Probe {
    /// The probe with every Service placeholder `vars` can fill filled, and the first it could
    /// not.
    #[must_use]
    pub fn bind(&self, vars: &ServiceVars<'_>) -> (Self, Option<Placeholder>) {
        match self {
            Self::Query(q) => {
                let (q, lacks) = q.bind(vars);
                (Self::Query(q), lacks)
            }
            Self::Http(h) => {
                let (url, lacks) = h.url.bind(vars);
                (Self::Http(HttpProbe { url, ..h.clone() }), lacks)
            }
        }
    }
}

/// `http:` on a check.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpProbe {
    /// With the query placeholders: `{{version}}`, `{{previous_version}}`, the Service's.
    pub url: Template,
    #[serde(default = "defaults::http_method")]
    pub method: HttpMethod,
    #[serde(default = "defaults::expect_status")]
    pub expect_status: u16,
    /// Longer than this is a failure.
    #[serde(default = "defaults::http_timeout", with = "duration")]
    pub timeout: Duration,
}

/// The methods a synthetic transaction may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    Get,
    Head,
    Post,
}

/// A check as written in the file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckFields {
    name: String,
    #[serde(default)]
    query: Option<Template>,
    #[serde(default)]
    http: Option<HttpProbe>,
    /// Breached when the value is above this.
    above: Option<f64>,
    /// Breached when the value is below this.
    below: Option<f64>,
    #[serde(rename = "for", default, with = "duration")]
    for_: Duration,
    #[serde(default)]
    on_no_data: NoDataPolicy,
}

impl TryFrom<CheckFields> for CheckConfig {
    type Error = String;

    fn try_from(c: CheckFields) -> std::result::Result<Self, String> {
        let (probe, threshold) = match (c.query, c.http) {
            (Some(_), Some(_)) | (None, None) => {
                return Err("exactly one of `query` or `http` is required".into());
            }
            (None, Some(http)) => {
                if c.above.is_some() || c.below.is_some() {
                    return Err(
                        "an `http` check has no `above` or `below`: it is breached by any status but `expect_status`, a connection error or a timeout"
                            .into(),
                    );
                }
                if !(100..=599).contains(&http.expect_status) {
                    return Err(format!(
                        "http.expect_status {} is not an HTTP status",
                        http.expect_status
                    ));
                }
                if http.timeout.is_zero() {
                    return Err("http.timeout must be greater than zero".into());
                }
                (Probe::Http(http), Threshold::Above(0.5))
            }
            (Some(query), None) => {
                let threshold = match (c.above, c.below) {
                    (Some(t), None) | (None, Some(t)) if !t.is_finite() => {
                        return Err("the threshold must be a finite number".into());
                    }
                    (Some(t), None) => Threshold::Above(t),
                    (None, Some(t)) => Threshold::Below(t),
                    (Some(_), Some(_)) | (None, None) => {
                        return Err("exactly one of `above` or `below` is required".into());
                    }
                };
                (Probe::Query(query), threshold)
            }
        };
        Ok(Self {
            name: c.name,
            probe,
            threshold,
            for_: c.for_,
            on_no_data: c.on_no_data,
        })
    }
}

/// What an empty result or NaN means.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoDataPolicy {
    /// No data is not a breach, and resets `for`.
    #[default]
    Ignore,
    /// No data counts as a breach.
    Breach,
}

/// A check's threshold, with exactly one direction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    Above(f64),
    Below(f64),
}

impl Threshold {
    /// Whether `value` is on the wrong side of the threshold.
    #[must_use]
    pub fn breached_by(self, value: f64) -> bool {
        match self {
            Self::Above(t) => value > t,
            Self::Below(t) => value < t,
        }
    }

    /// Of several values, the one that counts: the largest for `above`, the smallest for `below`.
    #[must_use]
    pub fn worst(self, a: f64, b: f64) -> f64 {
        match self {
            Self::Above(_) => a.max(b),
            Self::Below(_) => a.min(b),
        }
    }

    #[must_use]
    pub fn value(self) -> f64 {
        match self {
            Self::Above(t) | Self::Below(t) => t,
        }
    }
}

impl std::fmt::Display for Threshold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Above(t) => write!(f, "> {t}"),
            Self::Below(t) => write!(f, "< {t}"),
        }
    }
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Self> {
        Self::load_text(path).map(|(config, _)| config)
    }

    /// Reads and validates the file at `path`; returns the text read too, the baseline a
    /// reload compares the file with.
    pub fn load_text(path: &Path) -> Result<(Self, String)> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ReadConfig {
            path: path.to_owned(),
            source,
        })?;
        Ok((Self::parse(&text, path)?, text))
    }

    /// Parses and validates `text`; `path` only labels errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let invalid = |key: String, message: String| Error::InvalidConfig {
            path: path.to_owned(),
            key,
            message,
        };
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let config: Self = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." {
                "(top level)".to_owned()
            } else {
                key
            };
            // The YAML error repeats the path before its message; drop it, keep the position.
            let message = e.into_inner().to_string();
            let message = match message.split_once(": ") {
                Some((prefix, rest)) if !prefix.contains(' ') => rest.to_owned(),
                _ => message,
            };
            invalid(key, message)
        })?;
        config
            .validate()
            .map_err(|Invalid { key, message }| invalid(key, message))?;
        Ok(config)
    }

    fn validate(&self) -> Checked {
        self.prometheus.validate()?;
        nonzero("poll_interval", self.poll_interval)?;
        nonzero("kube_timeout", self.kube_timeout)?;
        self.webhook.validate()?;
        if let Some(le) = &self.leader_election {
            le.validate()?;
        }
        nonzero("config_reload_interval", self.config_reload_interval)?;
        let mut receivers = HashSet::new();
        for (i, r) in self.notifications.iter().enumerate() {
            let at = format!("notifications[{i}]");
            r.validate(&at)?;
            if !receivers.insert(r.name.as_str()) {
                return Err(refuse(
                    format!("{at}.name"),
                    format!("duplicate receiver name {:?}", r.name),
                ));
            }
        }
        if self.guards.is_empty() && self.templates.is_empty() {
            return Err(refuse(
                "guards".into(),
                "at least one guard, or one template, is required".into(),
            ));
        }
        let mut names = HashSet::new();
        let mut services = HashSet::new();
        for (i, g) in self.guards.iter().enumerate() {
            let at = |k: &str| format!("guards[{i}].{k}");
            check_name(&at("name"), &g.name)?;
            if !names.insert(g.name.as_str()) {
                return Err(refuse(
                    at("name"),
                    format!("duplicate guard name {:?}", g.name),
                ));
            }
            check_dns_label(&at("namespace"), &g.namespace)?;
            check_dns_label(&at("service"), &g.service)?;
            if !services.insert((g.namespace.as_str(), g.service.as_str())) {
                return Err(refuse(
                    at("service"),
                    format!("service {}/{} is guarded twice", g.namespace, g.service),
                ));
            }
            validate_keys(&format!("guards[{i}]"), g)?;
        }
        let mut templates = HashSet::new();
        for (i, t) in self.templates.iter().enumerate() {
            let at = |k: &str| format!("templates[{i}].{k}");
            check_name(&at("name"), &t.name)?;
            if !templates.insert(t.name.as_str()) {
                return Err(refuse(
                    at("name"),
                    format!("duplicate template name {:?}", t.name),
                ));
            }
            if t.namespaces.is_empty() {
                return Err(refuse(
                    at("namespaces"),
                    "must list at least one namespace, or [\"*\"] for every namespace".into(),
                ));
            }
            if t.all_namespaces() && t.namespaces.len() > 1 {
                return Err(refuse(
                    at("namespaces"),
                    "\"*\" already means every namespace: list it alone".into(),
                ));
            }
            for (j, ns) in t.namespaces.iter().enumerate() {
                if ns != ALL_NAMESPACES {
                    check_dns_label(&at(&format!("namespaces[{j}]")), ns)?;
                }
            }
            validate_keys(&format!("templates[{i}]"), &t.guard)?;
        }
        Ok(())
    }

    /// The keys that only take effect at start-up and differ between `self` (in force) and
    /// `new`: a reload keeps their old values.
    #[must_use]
    pub fn restart_keys_changed(&self, new: &Self) -> Vec<&'static str> {
        let mut changed = Vec::new();
        if self.listen != new.listen {
            changed.push("listen");
        }
        if self.admin_listen != new.admin_listen {
            changed.push("admin_listen");
        }
        if self.kube_timeout != new.kube_timeout {
            changed.push("kube_timeout");
        }
        if self.webhook != new.webhook {
            changed.push("webhook");
        }
        if self.leader_election != new.leader_election {
            changed.push("leader_election");
        }
        if self.notifications != new.notifications {
            changed.push("notifications");
        }
        changed
    }

    /// `new` with the restart-only keys of `self` (in force): what a reload puts in force.
    #[must_use]
    pub fn reloaded(&self, new: Self) -> Self {
        Self {
            listen: self.listen,
            admin_listen: self.admin_listen,
            kube_timeout: self.kube_timeout,
            webhook: self.webhook.clone(),
            leader_election: self.leader_election.clone(),
            notifications: self.notifications.clone(),
            ..new
        }
    }

    /// Reads a config for tests and examples from a YAML string, labelled `<inline>`.
    pub fn from_yaml(text: &str) -> Result<Self> {
        Self::parse(text, Path::new("<inline>"))
    }
}

/// The guard keys a guard and a template share, under `prefix` (`guards[0]`, `templates[1]`).
fn validate_keys(prefix: &str, g: &GuardConfig) -> Checked {
    let at = |k: &str| format!("{prefix}.{k}");
    if g.version_label.is_empty() || g.version_label.len() > 316 {
        return Err(refuse(at("version_label"), "must be a label key".into()));
    }
    nonzero(&at("window"), g.window)?;
    if g.stabilization > g.window {
        return Err(refuse(
            at("stabilization"),
            "must not be longer than `window`".into(),
        ));
    }
    if let Some(a) = &g.alerts {
        if a.match_labels.is_empty() {
            return Err(refuse(
                at("alerts.match"),
                "must name at least one label, or every alert would match".into(),
            ));
        }
        if a.severities.is_empty() {
            return Err(refuse(
                at("alerts.severities"),
                "must list at least one severity".into(),
            ));
        }
    }
    validate_traffic(prefix, g)?;
    validate_checks(prefix, g)
}

/// `traffic`: shares and fractions between 0 and 1, a window to reach them in.
fn validate_traffic(prefix: &str, g: &GuardConfig) -> Checked {
    let Some(t) = &g.traffic else {
        return Ok(());
    };
    let at = |k: &str| format!("{prefix}.traffic.{k}");
    for (key, value) in [("min_share", t.min_share), ("volume_drop", t.volume_drop)] {
        if !(value > 0.0 && value <= 1.0) {
            return Err(refuse(at(key), format!("{value} is not in (0, 1]")));
        }
    }
    nonzero(&at("within"), t.within)?;
    if t.within >= g.window {
        return Err(refuse(
            at("within"),
            "must be shorter than the guard's `window`: traffic is checked inside it".into(),
        ));
    }
    Ok(())
}

/// The checks of a guard or template: valid, unique names (each check's own fields were
/// checked as it was read).
fn validate_checks(prefix: &str, g: &GuardConfig) -> Checked {
    let mut checks = HashSet::new();
    for (j, c) in g.checks.iter().enumerate() {
        let at = |k: &str| format!("{prefix}.checks[{j}].{k}");
        check_name(&at("name"), &c.name)?;
        // They name the other triggers in `rollbacks_total{trigger}` and in Events.
        if matches!(c.name.as_str(), "traffic" | "alert") {
            return Err(refuse(
                at("name"),
                format!(
                    "{:?} is reserved: it names a trigger that is not a check",
                    c.name
                ),
            ));
        }
        if !checks.insert(c.name.as_str()) {
            return Err(refuse(
                at("name"),
                format!("duplicate check name {:?}", c.name),
            ));
        }
    }
    Ok(())
}

/// A key whose value is refused, and why; [`Config::parse`] adds the file's path.
#[derive(Debug)]
struct Invalid {
    key: String,
    message: String,
}

/// The outcome of one validation step.
type Checked = std::result::Result<(), Invalid>;

fn refuse(key: String, message: String) -> Invalid {
    Invalid { key, message }
}

fn nonzero(key: &str, d: Duration) -> Checked {
    if d.is_zero() {
        return Err(refuse(key.into(), "must be longer than zero".into()));
    }
    Ok(())
}

/// Names become metric label values and event text: keep them short and plain.
fn check_name(key: &str, name: &str) -> Checked {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(refuse(
            key.into(),
            format!("{name:?} must be 1-63 characters of [A-Za-z0-9._-]"),
        ))
    }
}

fn check_dns_label(key: &str, name: &str) -> Checked {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(refuse(
            key.into(),
            format!("{name:?} is not a valid Kubernetes name"),
        ))
    }
}

/// Durations in Go/Prometheus style: `15s`, `2m`, `1h30m`, `500ms`.
mod duration {
    use super::{Deserialize, Deserializer, Duration};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {s:?}: {e}")))
    }
}

mod defaults {
    use super::{Duration, SocketAddr};
    use std::net::{IpAddr, Ipv4Addr};

    pub(super) fn listen() -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080)
    }
    pub(super) fn admin_listen() -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9091)
    }
    pub(super) fn poll_interval() -> Duration {
        Duration::from_secs(15)
    }
    pub(super) fn prometheus_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub(super) fn kube_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub(super) fn lease_name() -> String {
        "cutover-watchdog".into()
    }
    pub(super) fn lease_duration() -> Duration {
        Duration::from_secs(15)
    }
    pub(super) fn renew_interval() -> Duration {
        Duration::from_secs(2)
    }
    pub(super) fn fence_margin() -> Duration {
        Duration::from_secs(5)
    }
    pub(super) fn forward_timeout() -> Duration {
        Duration::from_secs(2)
    }
    pub(super) fn notify_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub(super) fn min_share() -> f64 {
        0.95
    }
    pub(super) fn within() -> Duration {
        Duration::from_mins(2)
    }
    pub(super) fn volume_drop() -> f64 {
        0.5
    }
    pub(super) fn http_method() -> super::HttpMethod {
        super::HttpMethod::Get
    }
    pub(super) fn expect_status() -> u16 {
        200
    }
    pub(super) fn http_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub(super) fn namespace() -> String {
        "default".into()
    }
    pub(super) fn version_label() -> String {
        "version".into()
    }
    pub(super) fn window() -> Duration {
        Duration::from_mins(10)
    }
    pub(super) fn stabilization() -> Duration {
        Duration::from_mins(5)
    }
    pub(super) fn min_ready_previous() -> u32 {
        1
    }
    pub(super) fn max_body_bytes() -> usize {
        1 << 20
    }
    pub(super) fn reload_interval() -> Duration {
        Duration::from_secs(5)
    }
    pub(super) fn severities() -> Vec<String> {
        vec!["critical".into()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
prometheus: {url: "http://127.0.0.1:9090"}
guards:
- name: checkout
  service: svc-production
  checks:
  - name: error_rate
    query: 'sum(rate(x{version="{{version}}"}[1m]))'
    above: 0.02
    for: 2m
"#;

    fn error_of(text: &str) -> String {
        Config::from_yaml(text).unwrap_err().to_string()
    }

    #[test]
    fn defaults_follow_the_runbook() {
        let c = Config::from_yaml(MINIMAL).unwrap();
        assert_eq!(c.poll_interval, Duration::from_secs(15));
        assert_eq!(c.prometheus.timeout, Duration::from_secs(5));
        let g = &c.guards[0];
        assert_eq!(g.window, Duration::from_mins(10));
        assert_eq!(g.stabilization, Duration::from_mins(5));
        assert_eq!(g.namespace, "default");
        assert_eq!(g.version_label, "version");
        assert_eq!(g.min_ready_previous, 1);
        assert!(!g.dry_run);
        assert_eq!(g.checks[0].on_no_data, NoDataPolicy::Ignore);
        assert_eq!(g.checks[0].threshold, Threshold::Above(0.02));
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.admin_listen.to_string(), "127.0.0.1:9091");
    }

    #[test]
    fn unknown_key_is_named() {
        let e = error_of(&MINIMAL.replace("    for: 2m", "    for: 2m\n    fro: 1m"));
        assert!(
            e.contains("guards[0].checks[0]") && e.contains("fro"),
            "{e}"
        );
    }

    #[test]
    fn bad_duration_is_named() {
        let e = error_of(&MINIMAL.replace("for: 2m", "for: 2 fortnights"));
        assert!(e.contains("guards[0].checks[0].for"), "{e}");
        assert!(e.contains("invalid duration"), "{e}");
    }

    #[test]
    fn bad_url_is_named() {
        let e = error_of(&MINIMAL.replace("http://127.0.0.1:9090", "not a url"));
        assert!(e.contains("prometheus.url"), "{e}");
        let e = error_of(&MINIMAL.replace("http://127.0.0.1:9090", "ftp://x"));
        assert!(e.contains("prometheus.url"), "{e}");
    }

    /// MINIMAL with `prometheus:` replaced by `prometheus` (a YAML flow mapping).
    fn with_prometheus(prometheus: &str) -> String {
        MINIMAL.replace(r#"{url: "http://127.0.0.1:9090"}"#, prometheus)
    }

    #[test]
    fn an_https_prometheus_takes_credentials_headers_and_tls_from_files() {
        let c = Config::from_yaml(&with_prometheus(
            "{url: 'https://mimir.example/prometheus', bearer_token_file: /t, \
             headers: {X-Scope-OrgID: tenant-a}, \
             tls: {ca_file: /ca, cert_file: /c, key_file: /k, server_name: prom.svc}}",
        ))
        .unwrap();
        let p = &c.prometheus;
        assert_eq!(p.url.path(), "/prometheus");
        assert_eq!(p.headers["X-Scope-OrgID"], "tenant-a");
        assert_eq!(p.tls.server_name.as_deref(), Some("prom.svc"));
        assert_eq!(p.reload_interval, Duration::from_secs(5));
    }

    #[test]
    fn prometheus_connection_mistakes_are_refused_naming_the_key() {
        for (prometheus, expected) in [
            (
                "{url: 'ftp://p'}",
                "prometheus.url: must be http or https, got ftp",
            ),
            (
                "{url: 'http://u:pw@p:9090'}",
                "prometheus.url: must not carry credentials",
            ),
            (
                "{url: 'http://p', bearer_token_file: /t, basic_auth: {username: u, password_file: /p}}",
                "prometheus: set either `bearer_token_file` or `basic_auth`, not both",
            ),
            (
                "{url: 'http://p', headers: {authorization: 'Bearer x'}}",
                "prometheus.headers.authorization: credentials do not go in headers",
            ),
            (
                "{url: 'http://p', headers: {'bad name': x}}",
                "prometheus.headers.bad name: is not a valid HTTP header name",
            ),
            (
                "{url: 'https://p', tls: {cert_file: /c}}",
                "prometheus.tls.key_file: is required when prometheus.tls.cert_file is set",
            ),
            (
                "{url: 'https://p', tls: {server_name: 'not a name'}}",
                "prometheus.tls.server_name: \"not a name\" is not a DNS name or IP address",
            ),
            (
                "{url: 'http://p', tls: {ca_file: /ca}}",
                "prometheus.tls: applies only to an https prometheus.url",
            ),
            (
                "{url: 'http://p', reload_interval: 0s}",
                "prometheus.reload_interval",
            ),
        ] {
            let e = error_of(&with_prometheus(prometheus));
            assert!(e.contains(expected), "{prometheus}: {e}");
        }
    }

    #[test]
    fn forwarding_to_the_leader_defaults_to_two_seconds_and_refuses_what_cannot_work() {
        let c = Config::from_yaml(&format!("{MINIMAL}leader_election: {{}}\n")).unwrap();
        let le = c.leader_election.unwrap();
        assert_eq!(le.forward_timeout, Duration::from_secs(2));
        assert_eq!((le.forward_server_name, le.forward_ca_file), (None, None));
        for (keys, expected) in [
            (
                "{forward_timeout: 10s}",
                "leader_election.forward_timeout: must be shorter than the 10s every request is given",
            ),
            ("{forward_timeout: 0s}", "leader_election.forward_timeout"),
            (
                "{forward_server_name: 'two words'}",
                "leader_election.forward_server_name: \"two words\" is not a DNS name or IP address",
            ),
        ] {
            let e = error_of(&format!("{MINIMAL}leader_election: {keys}\n"));
            assert!(e.contains(expected), "{keys}: {e}");
        }
    }

    #[test]
    fn an_http_check_has_a_probe_and_no_threshold_and_a_query_check_has_no_probe() {
        let http = MINIMAL.replace(
            "    query: 'sum(rate(x{version=\"{{version}}\"}[1m]))'\n    above: 0.02\n",
            "    http: {url: 'http://shop-{{version}}.default.svc/checkout', expect_status: 204}\n",
        );
        let c = Config::from_yaml(&http).unwrap();
        let check = &c.guards[0].checks[0];
        let Probe::Http(probe) = &check.probe else {
            panic!("{check:?}");
        };
        assert_eq!(probe.method, HttpMethod::Get);
        assert_eq!(probe.expect_status, 204);
        assert_eq!(probe.timeout, Duration::from_secs(5));
        assert_eq!(check.threshold, Threshold::Above(0.5));
        for (yaml, expected) in [
            (
                http.replace("expect_status: 204}", "expect_status: 204}\n    above: 1"),
                "an `http` check has no `above` or `below`",
            ),
            (
                MINIMAL.replace(
                    "    above: 0.02\n",
                    "    above: 0.02\n    http: {url: 'http://x'}\n",
                ),
                "exactly one of `query` or `http` is required",
            ),
            (
                http.replace("expect_status: 204", "expect_status: 42"),
                "http.expect_status 42 is not an HTTP status",
            ),
            (
                http.replace("expect_status: 204", "method: DELETE"),
                "guards[0].checks[0]",
            ),
            (
                MINIMAL.replace("name: error_rate", "name: traffic"),
                "guards[0].checks[0].name: \"traffic\" is reserved",
            ),
        ] {
            let e = error_of(&yaml);
            assert!(e.contains(expected), "{yaml}\n{e}");
        }
    }

    #[test]
    fn traffic_takes_its_defaults_and_refuses_shares_outside_zero_to_one() {
        let with = |keys: &str| {
            format!(
                "{MINIMAL}  traffic: {{query: 'sum(rate(r{{version=\"{{{{version}}}}\"}}[1m]))'{keys}}}\n"
            )
        };
        let c = Config::from_yaml(&with("")).unwrap();
        let t = c.guards[0].traffic.as_ref().unwrap();
        assert_eq!((t.min_share, t.volume_drop), (0.95, 0.5));
        assert_eq!(t.within, Duration::from_mins(2));
        assert_eq!(t.action, TrafficAction::Warn);
        let c = Config::from_yaml(&with(", action: rollback")).unwrap();
        assert_eq!(
            c.guards[0].traffic.as_ref().unwrap().action,
            TrafficAction::Rollback
        );
        for (keys, expected) in [
            (
                ", min_share: 1.5",
                "guards[0].traffic.min_share: 1.5 is not in (0, 1]",
            ),
            (
                ", volume_drop: 0",
                "guards[0].traffic.volume_drop: 0 is not in (0, 1]",
            ),
            (", within: 0s", "guards[0].traffic.within"),
            (", action: page", "guards[0].traffic"),
        ] {
            let e = error_of(&with(keys));
            assert!(e.contains(expected), "{keys}: {e}");
        }
    }

    #[test]
    fn notification_receivers_take_their_defaults_and_refuse_what_cannot_work() {
        let with = |r: &str| format!("{MINIMAL}notifications:\n- {r}\n");
        let c = Config::from_yaml(&with("{name: sre, url: 'https://hooks.example/x'}")).unwrap();
        let r = &c.notifications[0];
        assert_eq!(r.format, NotifyFormat::Json);
        assert_eq!(r.timeout, Duration::from_secs(5));
        assert!(r.wants("RolledBack") && r.wants("RollbackOverridden"));
        assert!(
            !r.wants("CutoverDetected"),
            "Normal Events only when listed"
        );
        let listed = Config::from_yaml(&with(
            "{name: sre, url: 'https://x', events: [CutoverStable], format: slack}",
        ))
        .unwrap();
        assert!(listed.notifications[0].wants("CutoverStable"));
        assert!(!listed.notifications[0].wants("RolledBack"));
        for (r, expected) in [
            (
                "{name: a}",
                "notifications[0]: exactly one of `url` or `url_file` is required",
            ),
            (
                "{name: a, url: 'https://x', url_file: /u}",
                "exactly one of `url` or `url_file`",
            ),
            (
                "{name: a, url: 'ftp://x'}",
                "notifications[0].url: must be http or https",
            ),
            (
                "{name: a, url: 'https://x', events: [RolledBak]}",
                "notifications[0].events[0]: \"RolledBak\" is not an Event the watchdog emits",
            ),
            (
                "{name: a, url: 'https://x', headers: {Authorization: 'Bearer t'}}",
                "notifications[0].headers.Authorization: credentials do not go in headers",
            ),
            (
                "{name: a, url: 'https://x', format: teams}",
                "notifications[0]",
            ),
        ] {
            let e = error_of(&with(r));
            assert!(e.contains(expected), "{r}: {e}");
        }
        let twice = format!(
            "{MINIMAL}notifications:\n- {{name: a, url: 'https://x'}}\n- {{name: a, url: 'https://y'}}\n"
        );
        assert!(error_of(&twice).contains("notifications[1].name: duplicate receiver name"));
    }

    #[test]
    fn a_check_needs_exactly_one_of_above_and_below() {
        let both = error_of(&MINIMAL.replace("above: 0.02", "above: 0.02\n    below: 0.01"));
        assert!(
            both.contains("guards[0].checks[0]") && both.contains("exactly one"),
            "{both}"
        );
        let neither = error_of(&MINIMAL.replace("    above: 0.02\n", ""));
        assert!(neither.contains("exactly one"), "{neither}");
    }

    #[test]
    fn duplicate_guard_names_are_refused() {
        let twice = MINIMAL.to_owned() + "- name: checkout\n  service: svc-other\n";
        let e = error_of(&twice);
        assert!(
            e.contains("guards[1].name") && e.contains("duplicate"),
            "{e}"
        );
    }

    #[test]
    fn unknown_template_placeholder_is_refused() {
        let e = error_of(&MINIMAL.replace("{{version}}", "{{verison}}"));
        assert!(e.contains("guards[0].checks[0].query"), "{e}");
    }

    #[test]
    fn webhook_and_alerts_take_their_defaults_and_the_contract_keys() {
        let c = Config::from_yaml(MINIMAL).unwrap();
        assert_eq!(c.webhook.max_body_bytes, 1_048_576);
        assert_eq!(
            (c.webhook.rate_limit.per_second, c.webhook.rate_limit.burst),
            (20, 40)
        );
        assert!(c.guards[0].alerts.is_none());
        let text = MINIMAL.to_owned()
            + "  alerts:\n    match: {app: my-microservice}\n"
            + "webhook:\n  bearer_token_file: /etc/t\n  max_body_bytes: 10\n  rate_limit: {per_second: 1, burst: 2}\n";
        let c = Config::from_yaml(&text).unwrap();
        let a = c.guards[0].alerts.as_ref().unwrap();
        assert_eq!(a.severities, vec!["critical".to_owned()]);
        let labels = BTreeMap::from([("app".to_owned(), "my-microservice".to_owned())]);
        assert!(a.matches(&labels) && a.acts_on(Some("critical")) && !a.acts_on(Some("info")));
        assert_eq!(
            c.webhook.bearer_token_file.as_deref(),
            Some(Path::new("/etc/t"))
        );
    }

    #[test]
    fn secrets_are_checked_for_rotation_every_five_seconds_by_default() {
        let c = Config::from_yaml(MINIMAL).unwrap();
        assert_eq!(c.webhook.reload_interval, Duration::from_secs(5));
        assert!(c.webhook.tls.files().is_none());
        let c = Config::from_yaml(&(MINIMAL.to_owned() + "webhook: {reload_interval: 250ms}\n"))
            .unwrap();
        assert_eq!(c.webhook.reload_interval, Duration::from_millis(250));
        let e = error_of(&(MINIMAL.to_owned() + "webhook: {reload_interval: 0s}\n"));
        assert!(e.contains("webhook.reload_interval"), "{e}");
    }

    #[test]
    fn tls_needs_both_the_certificate_and_the_key_and_names_the_missing_one() {
        let both = MINIMAL.to_owned() + "webhook:\n  tls: {cert_file: /c.pem, key_file: /k.pem}\n";
        let c = Config::from_yaml(&both).unwrap();
        assert_eq!(
            c.webhook.tls.files(),
            Some((Path::new("/c.pem"), Path::new("/k.pem")))
        );
        let e = error_of(&(MINIMAL.to_owned() + "webhook:\n  tls: {cert_file: /c.pem}\n"));
        assert!(e.contains("webhook.tls.key_file"), "{e}");
        let e = error_of(&(MINIMAL.to_owned() + "webhook:\n  tls: {key_file: /k.pem}\n"));
        assert!(e.contains("webhook.tls.cert_file"), "{e}");
        let e = error_of(&(MINIMAL.to_owned() + "webhook:\n  tls: {cert: /c.pem}\n"));
        assert!(e.contains("webhook.tls") && e.contains("cert"), "{e}");
    }

    const TEMPLATE: &str = r#"
prometheus: {url: "http://127.0.0.1:9090"}
templates:
- name: backend
  namespaces: [shop, payments]
  service_selector: tier=backend,app.kubernetes.io/part-of in (shop)
  window: 5m
  stabilization: 1m
  checks:
  - name: errors
    query: 'x{service="{{service}}",version="{{version}}"}'
    above: 0.02
"#;

    #[test]
    fn a_template_takes_every_guard_key_and_guards_may_then_be_empty() {
        let c = Config::from_yaml(TEMPLATE).unwrap();
        assert!(c.guards.is_empty());
        let t = &c.templates[0];
        assert_eq!(t.namespaces, ["shop", "payments"]);
        assert!(t.covers("shop") && !t.covers("web") && !t.all_namespaces());
        assert_eq!(
            t.service_selector.to_string(),
            "app.kubernetes.io/part-of in (shop),tier=backend"
        );
        assert_eq!(t.guard.window, Duration::from_mins(5));
        assert_eq!(t.guard.version_label, "version");
        assert_eq!(c.config_reload_interval, Duration::from_secs(5));
    }

    #[test]
    fn template_mistakes_are_named_by_key() {
        let table: &[(&str, &str, &str)] = &[
            (
                "namespaces: [shop, payments]",
                "namespaces: []",
                "templates[0].namespaces",
            ),
            (
                "namespaces: [shop, payments]",
                "namespaces: ['*', shop]",
                "list it alone",
            ),
            (
                "namespaces: [shop, payments]",
                "namespaces: [Shop]",
                "templates[0].namespaces[0]",
            ),
            (
                "service_selector: tier=backend,",
                "service_selector: tier in (),",
                "templates[0].service_selector",
            ),
            ("- name: backend", "- name: back/end", "templates[0].name"),
            (
                "stabilization: 1m",
                "stabilization: 10m",
                "templates[0].stabilization",
            ),
            ("{{service}}", "{{servce}}", "templates[0].checks[0].query"),
            (
                "  window: 5m\n",
                "  window: 5m\n  service: x\n",
                "unknown field `service`",
            ),
        ];
        for (from, to, want) in table {
            let e = error_of(&TEMPLATE.replace(from, to));
            assert!(e.contains(want), "{to}: {e}");
        }
        let twice = TEMPLATE.to_owned() + "- {name: backend, namespaces: [x]}\n";
        assert!(error_of(&twice).contains("duplicate template name"));
        let e = error_of("prometheus: {url: 'http://127.0.0.1:9090'}\n");
        assert!(
            e.contains("guards: at least one guard, or one template"),
            "{e}"
        );
    }

    #[test]
    fn a_reload_keeps_the_restart_only_keys_and_names_those_that_changed() {
        let old = Config::from_yaml(MINIMAL).unwrap();
        let text = MINIMAL.to_owned()
            + "listen: 0.0.0.0:1\nkube_timeout: 1s\npoll_interval: 1s\nwebhook: {max_body_bytes: 10}\n";
        let new = Config::from_yaml(&text).unwrap();
        assert_eq!(
            old.restart_keys_changed(&new),
            ["listen", "kube_timeout", "webhook"]
        );
        let in_force = old.reloaded(new);
        assert_eq!(in_force.listen, old.listen);
        assert_eq!(in_force.kube_timeout, old.kube_timeout);
        assert_eq!(in_force.webhook, old.webhook);
        assert_eq!(in_force.poll_interval, Duration::from_secs(1), "live");
    }

    #[test]
    fn stabilization_longer_than_window_is_refused() {
        let e = error_of(&MINIMAL.replace(
            "  service: svc-production\n",
            "  service: svc-production\n  window: 1m\n  stabilization: 2m\n",
        ));
        assert!(e.contains("guards[0].stabilization"), "{e}");
    }
}
