//! The Prometheus adapter: check templates and instant queries over the HTTP API.
//!
//! Deliberately thin: it renders a query, sends it, and returns the numbers. What a number means
//! (breach, no data, worst of several series) is decided in [`crate::decision`]. It never retries:
//! the next poll is the retry, and an error is never a breach.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use serde::Deserialize;
use url::Url;

use crate::config::PrometheusConfig;
use crate::error::{Error, Result};

pub mod connection;

use connection::Connection;

/// A check's query with its placeholders located. Read from config as a string, and refused
/// there if it does not parse.
///
/// Two kinds of placeholder: the window's versions (`{{version}}`, `{{previous_version}}`),
/// filled at every poll, and the guarded Service's own ([`Placeholder`]), filled once when the
/// guard is bound to its Service ([`Template::bind`]). A query with a Service placeholder left
/// unfilled is never sent ([`Template::render`] refuses it).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "String")]
pub struct Template {
    parts: Vec<Part>,
}

impl TryFrom<String> for Template {
    type Error = String;

    fn try_from(query: String) -> std::result::Result<Self, String> {
        Self::parse(&query)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Version,
    PreviousVersion,
    Service(Placeholder),
}

/// A placeholder filled from the guarded Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placeholder {
    /// `{{namespace}}`
    Namespace,
    /// `{{service}}`
    Service,
    /// `{{selector.KEY}}`: a key of the Service's `spec.selector`.
    Selector(String),
    /// `{{label.KEY}}`: a key of the Service's `metadata.labels`.
    Label(String),
}

impl std::fmt::Display for Placeholder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Namespace => f.write_str("{{namespace}}"),
            Self::Service => f.write_str("{{service}}"),
            Self::Selector(key) => write!(f, "{{{{selector.{key}}}}}"),
            Self::Label(key) => write!(f, "{{{{label.{key}}}}}"),
        }
    }
}

/// What a guarded Service gives the placeholders. `selector` and `labels` are `None` until the
/// Service has been seen.
#[derive(Debug, Clone, Copy)]
pub struct ServiceVars<'a> {
    pub namespace: &'a str,
    pub service: &'a str,
    pub selector: Option<&'a BTreeMap<String, String>>,
    pub labels: Option<&'a BTreeMap<String, String>>,
}

impl Placeholder {
    fn value<'a>(&self, vars: &ServiceVars<'a>) -> Option<&'a str> {
        match self {
            Self::Namespace => Some(vars.namespace),
            Self::Service => Some(vars.service),
            Self::Selector(key) => vars.selector?.get(key).map(String::as_str),
            Self::Label(key) => vars.labels?.get(key).map(String::as_str),
        }
    }

    fn parse(name: &str) -> Option<Self> {
        let key = |k: &str| {
            let ok = !k.is_empty()
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'));
            ok.then(|| k.to_owned())
        };
        match name {
            "namespace" => Some(Self::Namespace),
            "service" => Some(Self::Service),
            _ => {
                if let Some(k) = name.strip_prefix("selector.") {
                    key(k).map(Self::Selector)
                } else {
                    key(name.strip_prefix("label.")?).map(Self::Label)
                }
            }
        }
    }
}

/// Where a template is written, which decides the placeholders it may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Context {
    /// A check's query: the window's versions and the Service's placeholders.
    Query,
    /// An `alerts.match` value: the Service's placeholders only (the alert's version is matched
    /// by `version_label`).
    Label,
}

impl Template {
    /// Splits `query` at its placeholders; an unknown `{{name}}` is an error, as it is a typo.
    pub fn parse(query: &str) -> std::result::Result<Self, String> {
        Self::parse_in(query, Context::Query)
    }

    fn parse_in(text: &str, context: Context) -> std::result::Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            let Some(len) = rest[start..].find("}}") else {
                return Err("unclosed `{{` in query".into());
            };
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_owned()));
            }
            let name = rest[start + 2..start + len].trim();
            parts.push(match (name, context) {
                ("version", Context::Query) => Part::Version,
                ("previous_version", Context::Query) => Part::PreviousVersion,
                _ => {
                    let Some(p) = Placeholder::parse(name) else {
                        let versions = match context {
                            Context::Query => "{{version}}, {{previous_version}}, ",
                            Context::Label => "",
                        };
                        return Err(format!(
                            "unknown placeholder {{{{{name}}}}}; use {versions}{{{{namespace}}}}, {{{{service}}}}, {{{{selector.KEY}}}} or {{{{label.KEY}}}}"
                        ));
                    };
                    Part::Service(p)
                }
            });
            rest = &rest[start + len + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Self { parts })
    }

    /// The Service placeholders filled from `vars` (escaped for a PromQL string, as in
    /// [`Template::render`]); those `vars` lack stay, and the first is returned with it.
    #[must_use]
    pub fn bind(&self, vars: &ServiceVars<'_>) -> (Self, Option<Placeholder>) {
        self.bind_with(vars, escape_into)
    }

    fn bind_with(
        &self,
        vars: &ServiceVars<'_>,
        fill: fn(&mut String, &str),
    ) -> (Self, Option<Placeholder>) {
        let mut parts: Vec<Part> = Vec::with_capacity(self.parts.len());
        let mut missing = None;
        for part in &self.parts {
            let text = match part {
                Part::Service(p) => {
                    let Some(value) = p.value(vars) else {
                        missing.get_or_insert_with(|| p.clone());
                        parts.push(part.clone());
                        continue;
                    };
                    let mut t = String::new();
                    fill(&mut t, value);
                    t
                }
                Part::Text(t) => t.clone(),
                Part::Version | Part::PreviousVersion => {
                    parts.push(part.clone());
                    continue;
                }
            };
            // Adjacent text merges, so a bound template renders as fast as a plain one.
            if let Some(Part::Text(last)) = parts.last_mut() {
                last.push_str(&text);
            } else {
                parts.push(Part::Text(text));
            }
        }
        (Self { parts }, missing)
    }

    /// The first Service placeholder not yet filled, if any.
    #[must_use]
    pub fn unbound(&self) -> Option<&Placeholder> {
        self.parts.iter().find_map(|p| match p {
            Part::Service(p) => Some(p),
            _ => None,
        })
    }

    /// The query for a window from `previous` to `version`, with both values escaped as the
    /// contents of a PromQL string literal, so a label value can never change the query's shape.
    /// A Service placeholder left unbound is an error: that query is never sent.
    pub fn render(&self, version: &str, previous: &str) -> std::result::Result<String, Unbound> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Version => escape_into(&mut out, version),
                Part::PreviousVersion => escape_into(&mut out, previous),
                Part::Service(p) => return Err(Unbound(p.clone())),
            }
        }
        Ok(out)
    }
}

/// A query that cannot be sent: the guarded Service lacks what this placeholder needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("placeholder {0} missing: the service has no such key")]
pub struct Unbound(pub Placeholder);

/// An `alerts.match` value: text with the Service's placeholders, compared as it is (no
/// escaping: an alert's labels are matched, not parsed).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "String")]
pub struct LabelTemplate(Template);

impl TryFrom<String> for LabelTemplate {
    type Error = String;

    fn try_from(text: String) -> std::result::Result<Self, String> {
        Template::parse_in(&text, Context::Label).map(Self)
    }
}

impl LabelTemplate {
    /// A value with no placeholders.
    #[must_use]
    pub fn literal_of(value: String) -> Self {
        Self(Template {
            parts: vec![Part::Text(value)],
        })
    }

    /// The value, if it has no placeholder left to fill.
    #[must_use]
    pub fn literal(&self) -> Option<&str> {
        match self.0.parts.as_slice() {
            [] => Some(""),
            [Part::Text(t)] => Some(t),
            _ => None,
        }
    }

    /// The value with every placeholder filled from `vars`, or the first one `vars` lack.
    pub fn fill(&self, vars: &ServiceVars<'_>) -> std::result::Result<String, Placeholder> {
        let (bound, missing) = self.0.bind_with(vars, String::push_str);
        if let Some(p) = missing {
            return Err(p);
        }
        Ok(bound
            .parts
            .iter()
            .map(|p| match p {
                Part::Text(t) => t.as_str(),
                _ => "",
            })
            .collect())
    }
}

/// Escapes for a PromQL `"…"` or `'…'` string. Kubernetes label values cannot hold any of these
/// characters, so this is defence in depth, not a path real values take.
fn escape_into(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str(r"\\"),
            '"' => out.push_str("\\\""),
            '\'' => out.push_str("\\'"),
            '`' => out.push_str("\\x60"),
            '\n' => out.push_str(r"\n"),
            '\r' => out.push_str(r"\r"),
            '{' | '}' => {} // never part of a label value; dropping them keeps the braces balanced
            c => out.push(c),
        }
    }
}

/// Why a query produced no number. A closed set: it is a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryError {
    Timeout,
    Connect,
    /// The TLS handshake failed, or the server refused the client certificate.
    Tls,
    /// Prometheus (or the way to it) answered 401 or 403.
    Auth,
    /// Prometheus answered with a non-2xx status.
    Status,
    /// Prometheus answered 2xx but the body was not a query result we understand.
    Body,
    /// Never sent: the query has a placeholder its Service lacks.
    Unbound,
}

/// Why a query gave no values: its kind (the closed set of the metric's `reason` label) and
/// what was seen, for logs and `/v1/guards`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", kind.as_label())]
pub struct QueryFailure {
    pub kind: QueryError,
    pub message: String,
}

impl QueryFailure {
    fn new(kind: QueryError, message: String) -> Self {
        Self { kind, message }
    }
}

impl QueryError {
    /// The kinds a request can fail with: the metric's label set. [`QueryError::Unbound`] is
    /// never a request, and never counted.
    pub const ALL: [Self; 6] = [
        Self::Timeout,
        Self::Connect,
        Self::Tls,
        Self::Auth,
        Self::Status,
        Self::Body,
    ];

    #[must_use]
    pub fn as_label(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Connect => "connect",
            Self::Tls => "tls",
            Self::Auth => "auth",
            Self::Status => "status",
            Self::Body => "body",
            Self::Unbound => "unbound",
        }
    }
}

/// The server's version as `/api/v1/status/buildinfo` tells it, with why it is unknown when it
/// is (`None`: the endpoint does not exist).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerVersion {
    Known(String),
    Unknown(Option<String>),
}

impl std::fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Known(version) => write!(f, "Prometheus {version}"),
            Self::Unknown(None) => f.write_str("Prometheus version unknown"),
            Self::Unknown(Some(why)) => write!(f, "Prometheus version unknown (buildinfo: {why})"),
        }
    }
}

/// A Prometheus HTTP API client for instant queries.
#[derive(Clone)]
pub struct Prometheus {
    connection: Arc<Connection>,
    /// What it was built from, to tell whether a reload changes it.
    config: PrometheusConfig,
}

impl std::fmt::Debug for Prometheus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prometheus")
            .field("url", &self.config.url.as_str())
            .finish_non_exhaustive()
    }
}

impl Prometheus {
    /// A client for `config`, its secret files read now.
    pub fn new(config: &PrometheusConfig) -> Result<Self> {
        api_url(&config.url, "query")?;
        Ok(Self {
            connection: Connection::new(config)?,
            config: config.clone(),
        })
    }

    /// A client for `url` with nothing else configured: plain http, for tools and tests.
    pub fn plain(url: &Url, timeout: Duration) -> Result<Self> {
        Self::new(&PrometheusConfig {
            url: url.clone(),
            timeout,
            bearer_token_file: None,
            basic_auth: None,
            headers: BTreeMap::new(),
            tls: crate::config::PrometheusTlsConfig::default(),
            reload_interval: Duration::from_secs(5),
        })
    }

    /// The settings it was built from.
    #[must_use]
    pub fn settings(&self) -> &PrometheusConfig {
        &self.config
    }

    /// The secret files to re-read when they change (see [`crate::reload`]).
    #[must_use]
    pub fn rotation(&self) -> Vec<Arc<dyn crate::reload::Reload>> {
        self.connection.rotation()
    }

    /// Runs `query` as an instant query and returns every series' value (NaN included), with
    /// how long it took.
    pub async fn instant(&self, query: &str) -> (QueryResult<Vec<f64>>, Duration) {
        let started = Instant::now();
        let result = match self.send(query).await {
            Ok(body) => parse_values(&body).map_err(|m| QueryFailure::new(QueryError::Body, m)),
            Err(failure) => Err(failure.into()),
        };
        (result, started.elapsed())
    }

    /// Runs several instant queries in one request (see [`batch_query`]) and returns each
    /// query's series values, in order, with how long it took. If Prometheus refuses the batch
    /// (some query in it is a scalar, a range vector or a syntax error) the result is
    /// [`BatchFailure::Refused`], and callers fall back to single queries; any other failure is
    /// Prometheus (or the way to it) failing, which asking once per query would only multiply.
    pub async fn batch(&self, queries: &[&str]) -> (Result<Vec<Vec<f64>>, BatchFailure>, Duration) {
        let started = Instant::now();
        let result = match self.send(&batch_query(queries)).await {
            Ok(body) => parse_batch(&body, queries.len())
                .map_err(|m| BatchFailure::Failed(QueryFailure::new(QueryError::Body, m))),
            Err(Failure::Refused(message)) => Err(BatchFailure::Refused(message)),
            Err(Failure::Failed(failure)) => Err(BatchFailure::Failed(failure)),
        };
        (result, started.elapsed())
    }

    /// One instant query, `vector(1)`, and the server's version from
    /// `/api/v1/status/buildinfo`: for `check-config --connect`. Only the query decides success:
    /// servers that answer queries but not buildinfo (a 404 from some Prometheus-compatible
    /// servers, a 403 from a managed one whose role lacks that permission) are still usable.
    pub async fn probe(&self) -> QueryResult<ServerVersion> {
        let (answer, _) = self.instant("vector(1)").await;
        answer?;
        Ok(self.build_info().await)
    }

    async fn build_info(&self) -> ServerVersion {
        #[derive(Deserialize)]
        struct BuildInfo {
            data: Version,
        }
        #[derive(Deserialize)]
        struct Version {
            version: String,
        }
        let current = self.connection.current();
        let Ok(url) = api_url(&current.base, "status/buildinfo") else {
            return ServerVersion::Unknown(None);
        };
        let sent = current
            .http
            .get(url)
            .headers(current.headers.clone())
            .send()
            .await;
        let response = match sent {
            Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => {
                return ServerVersion::Unknown(None);
            }
            Ok(r) if !r.status().is_success() => {
                return ServerVersion::Unknown(Some(format!("HTTP {}", r.status())));
            }
            Ok(r) => r,
            Err(e) => return ServerVersion::Unknown(Some(request_failure(&e).to_string())),
        };
        match response.bytes().await {
            Ok(body) => serde_json::from_slice::<BuildInfo>(&body).map_or_else(
                |_| ServerVersion::Unknown(Some(format!("unreadable: {}", snippet(&body)))),
                |b| ServerVersion::Known(b.data.version),
            ),
            Err(e) => ServerVersion::Unknown(Some(request_failure(&e).to_string())),
        }
    }

    /// `query` over `[start, end]` at `step` (`/api/v1/query_range`): each series' points, as
    /// (Unix seconds, value). For `replay`.
    pub async fn range(
        &self,
        query: &str,
        (start, end): (jiff::Timestamp, jiff::Timestamp),
        step: Duration,
    ) -> QueryResult<Vec<Series>> {
        let (start, end) = (start.to_string(), end.to_string());
        let step = format!("{}", step.as_secs_f64());
        let form = [
            ("query", query),
            ("start", start.as_str()),
            ("end", end.as_str()),
            ("step", step.as_str()),
        ];
        let body = self
            .send_to("query_range", &form)
            .await
            .map_err(QueryFailure::from)?;
        parse_matrix(&body).map_err(|m| QueryFailure::new(QueryError::Body, m))
    }

    async fn send(&self, query: &str) -> Result<Bytes, Failure> {
        self.send_to("query", &[("query", query)]).await
    }

    async fn send_to(&self, endpoint: &str, form: &[(&str, &str)]) -> Result<Bytes, Failure> {
        let current = self.connection.current();
        let endpoint = api_url(&current.base, endpoint)
            .map_err(|e| Failure::Failed(QueryFailure::new(QueryError::Connect, e.to_string())))?;
        let response = current
            .http
            .post(endpoint)
            .headers(current.headers.clone())
            .form(form)
            .send()
            .await
            .map_err(|e| Failure::Failed(request_failure(&e)))?;
        let status = response.status();
        // A body cut short is the connection breaking, not a body we failed to understand.
        let body = response
            .bytes()
            .await
            .map_err(|e| Failure::Failed(request_failure(&e)))?;
        if status.is_success() {
            return Ok(body);
        }
        let detail = match serde_json::from_slice::<ApiResponse>(&body) {
            Ok(ApiResponse {
                error: Some(error),
                error_type,
                ..
            }) => format!("{}: {error}", error_type.as_deref().unwrap_or("error")),
            _ => snippet(&body),
        };
        let message = format!("HTTP {status}: {detail}");
        // Prometheus answers 400 (bad_data) for a query it cannot parse or type, and 422
        // (execution) for one it cannot evaluate: answers about the query. Every other status
        // (5xx, or a proxy's 4xx) is about Prometheus or the way to it.
        Err(match status.as_u16() {
            400 | 422 => Failure::Refused(message),
            // Credentials refused or missing, a tenant header Mimir needs among them.
            401 | 403 => Failure::Failed(QueryFailure::new(QueryError::Auth, message)),
            _ => Failure::Failed(QueryFailure::new(QueryError::Status, message)),
        })
    }
}

/// `base` with `api/v1/<endpoint>` appended to its path, which is kept as a prefix.
fn api_url(base: &Url, endpoint: &str) -> Result<Url> {
    let mut url = base.clone();
    url.path_segments_mut()
        .map_err(|()| Error::Unusable(format!("prometheus.url {base} cannot be a base URL")))?
        .pop_if_empty()
        .extend(["api", "v1"])
        .extend(endpoint.split('/'));
    Ok(url)
}

/// Why a request got no answer: out of time, TLS, or the connection.
fn request_failure(e: &reqwest::Error) -> QueryFailure {
    let kind = if e.is_timeout() {
        QueryError::Timeout
    } else if connection::is_tls(e) {
        QueryError::Tls
    } else {
        QueryError::Connect
    };
    QueryFailure::new(kind, crate::error::chain(e))
}

/// How one request failed, before callers decide what it means.
enum Failure {
    /// Prometheus answered, and refused this query.
    Refused(String),
    Failed(QueryFailure),
}

impl From<Failure> for QueryFailure {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Refused(message) => Self::new(QueryError::Status, message),
            Failure::Failed(failure) => failure,
        }
    }
}

/// Why a batch gave no values.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchFailure {
    /// Prometheus refused the batch's query: some query in it cannot be batched or is wrong.
    /// Alone, each query gets its own answer.
    Refused(String),
    /// Prometheus, or the way to it, failed; every query in the batch failed with it.
    Failed(QueryFailure),
}

/// A query's outcome: the values, or why there are none.
pub type QueryResult<T> = std::result::Result<T, QueryFailure>;

/// The start of a body that is not what we expected, on one line, for error messages: enough to
/// tell an HTML error page from truncated JSON.
fn snippet(body: &[u8]) -> String {
    const KEEP: usize = 120;
    if body.is_empty() {
        return "empty body".into();
    }
    let text = String::from_utf8_lossy(body);
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut cut: String = line.chars().take(KEEP).collect();
    if line.chars().count() > KEEP {
        cut.push('…');
    }
    format!("body {cut:?}")
}

/// The label that tags each query's series in a batch.
const BATCH_LABEL: &str = "cutover_watchdog_query";

/// One query for several: each instant-vector query's series are tagged with its index, and the
/// tagged vectors are joined with `or`. Distinct tags mean no series of one query can hide
/// another's, so each query's result is exactly what it would be alone.
#[must_use]
pub fn batch_query(queries: &[&str]) -> String {
    queries
        .iter()
        .enumerate()
        .map(|(i, q)| format!("label_replace(({q}), \"{BATCH_LABEL}\", \"{i}\", \"\", \"\")"))
        .collect::<Vec<_>>()
        .join(" or ")
}

#[derive(Deserialize)]
struct TaggedSample {
    metric: std::collections::HashMap<String, String>,
    value: (f64, String),
}

#[derive(Deserialize)]
struct BatchResponse {
    status: String,
    #[serde(default)]
    data: Option<BatchData>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct BatchData {
    result: Vec<TaggedSample>,
}

/// Splits a batch's vector back into `n` queries' values.
pub fn parse_batch(body: &[u8], n: usize) -> std::result::Result<Vec<Vec<f64>>, String> {
    let response: BatchResponse = serde_json::from_slice(body)
        .map_err(|e| format!("unparseable batch response: {e}; {}", snippet(body)))?;
    if response.status != "success" {
        return Err(format!(
            "batch query failed: {}",
            response.error.unwrap_or(response.status)
        ));
    }
    let data = response.data.ok_or("batch response has no data")?;
    let mut out = vec![Vec::new(); n];
    for sample in data.result {
        let index = sample
            .metric
            .get(BATCH_LABEL)
            .and_then(|i| i.parse::<usize>().ok())
            .filter(|i| *i < n)
            .ok_or_else(|| format!("batch series without a valid {BATCH_LABEL} label"))?;
        out[index].push(number(&sample.value.1)?);
    }
    Ok(out)
}

#[derive(Deserialize)]
struct ApiResponse {
    status: String,
    #[serde(default)]
    data: Option<ApiData>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
}

#[derive(Deserialize)]
#[serde(tag = "resultType", content = "result", rename_all = "lowercase")]
enum ApiData {
    Vector(Vec<VectorSample>),
    Scalar((f64, String)),
    Matrix(serde::de::IgnoredAny),
    String(serde::de::IgnoredAny),
}

#[derive(Deserialize)]
struct VectorSample {
    value: (f64, String),
}

/// One series of a range query: its labels, and its points as (Unix seconds, value).
pub type Series = (BTreeMap<String, String>, Vec<(f64, f64)>);

/// Parses a `query_range` response body into each series' labels and points.
pub fn parse_matrix(body: &[u8]) -> std::result::Result<Vec<Series>, String> {
    #[derive(Deserialize)]
    struct Range {
        status: String,
        error: Option<String>,
        data: Option<RangeData>,
    }
    #[derive(Deserialize)]
    struct RangeData {
        result: Vec<RangeSeries>,
    }
    #[derive(Deserialize)]
    struct RangeSeries {
        #[serde(default)]
        metric: BTreeMap<String, String>,
        values: Vec<(f64, String)>,
    }
    let response: Range = serde_json::from_slice(body)
        .map_err(|e| format!("unparseable response: {e}; {}", snippet(body)))?;
    if response.status != "success" {
        return Err(format!(
            "query failed: {}",
            response.error.unwrap_or(response.status)
        ));
    }
    let data = response.data.ok_or("response has no data")?;
    data.result
        .into_iter()
        .map(|s| {
            let points = s
                .values
                .into_iter()
                .map(|(t, v)| number(&v).map(|v| (t, v)))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            Ok((s.metric, points))
        })
        .collect()
}

/// Parses a query response body into the values of its series.
pub fn parse_values(body: &[u8]) -> std::result::Result<Vec<f64>, String> {
    let response: ApiResponse = serde_json::from_slice(body)
        .map_err(|e| format!("unparseable response: {e}; {}", snippet(body)))?;
    if response.status != "success" {
        return Err(format!(
            "query failed: {}",
            response.error.unwrap_or_else(|| response.status.clone())
        ));
    }
    match response.data {
        Some(ApiData::Vector(samples)) => samples.iter().map(|s| number(&s.value.1)).collect(),
        Some(ApiData::Scalar((_, v))) => Ok(vec![number(&v)?]),
        Some(ApiData::Matrix(_) | ApiData::String(_)) => {
            Err("query must return an instant vector or a scalar".into())
        }
        None => Err("response has no data".into()),
    }
}

fn number(s: &str) -> std::result::Result<f64, String> {
    // Prometheus spells special values as NaN, +Inf and -Inf, which Rust's parser accepts.
    s.parse::<f64>()
        .map_err(|_| format!("sample value {s:?} is not a number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_replaced_and_escaped() {
        let t =
            Template::parse(r#"x{version="{{version}}",old="{{ previous_version }}"}"#).unwrap();
        assert_eq!(t.render("v2", "v1").unwrap(), r#"x{version="v2",old="v1"}"#);
        assert_eq!(
            t.render(r#"v2"} or vector(1) #"#, "v1").unwrap(),
            r#"x{version="v2\" or vector(1) #",old="v1"}"#
        );
        assert_eq!(
            t.render(r"a\b", "v1").unwrap(),
            r#"x{version="a\\b",old="v1"}"#
        );
    }

    fn vars<'a>(
        selector: &'a BTreeMap<String, String>,
        labels: &'a BTreeMap<String, String>,
    ) -> ServiceVars<'a> {
        ServiceVars {
            namespace: "shop",
            service: "cart",
            selector: Some(selector),
            labels: Some(labels),
        }
    }

    #[test]
    fn service_placeholders_are_bound_once_and_escaped_and_versions_stay_for_each_poll() {
        let t = Template::parse(
            r#"x{ns="{{namespace}}",svc="{{service}}",app="{{selector.app}}",team="{{label.team}}",v="{{version}}"}"#,
        )
        .unwrap();
        let selector = BTreeMap::from([("app".to_owned(), r#"a"b"#.to_owned())]);
        let labels = BTreeMap::from([("team".to_owned(), "pay".to_owned())]);
        let (bound, missing) = t.bind(&vars(&selector, &labels));
        assert_eq!(missing, None);
        assert_eq!(bound.unbound(), None);
        assert_eq!(
            bound.render("v2", "v1").unwrap(),
            r#"x{ns="shop",svc="cart",app="a\"b",team="pay",v="v2"}"#
        );
    }

    #[test]
    fn a_placeholder_the_service_lacks_is_named_and_its_query_is_never_rendered() {
        let t = Template::parse(r#"x{app="{{selector.app}}",v="{{version}}"}"#).unwrap();
        let empty = BTreeMap::new();
        let (bound, missing) = t.bind(&vars(&empty, &empty));
        assert_eq!(missing, Some(Placeholder::Selector("app".into())));
        let err = bound.render("v2", "v1").unwrap_err();
        assert_eq!(
            err.to_string(),
            "placeholder {{selector.app}} missing: the service has no such key"
        );
    }

    #[test]
    fn alert_match_values_take_service_placeholders_unescaped_but_not_versions() {
        let l = LabelTemplate::try_from("{{label.team}}-{{service}}".to_owned()).unwrap();
        let labels = BTreeMap::from([("team".to_owned(), "pay".to_owned())]);
        let empty = BTreeMap::new();
        assert_eq!(l.fill(&vars(&empty, &labels)).unwrap(), "pay-cart");
        assert_eq!(
            l.fill(&vars(&empty, &empty)),
            Err(Placeholder::Label("team".into()))
        );
        let e = LabelTemplate::try_from("{{version}}".to_owned()).unwrap_err();
        assert!(e.contains("unknown placeholder {{version}}"), "{e}");
        assert_eq!(LabelTemplate::literal_of("x".into()).literal(), Some("x"));
    }

    #[test]
    fn unknown_or_unclosed_placeholders_are_errors() {
        assert!(
            Template::parse("x{{versoin}}")
                .unwrap_err()
                .contains("versoin")
        );
        assert!(
            Template::parse("x{{version")
                .unwrap_err()
                .contains("unclosed")
        );
        assert!(Template::parse("up").is_ok());
    }

    #[test]
    fn vector_scalar_and_special_values_parse() {
        let v = br#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"a":"1"},"value":[1.5,"0.05"]},{"metric":{},"value":[1.5,"NaN"]},
            {"metric":{},"value":[1.5,"+Inf"]}]}}"#;
        let got = parse_values(v).unwrap();
        assert!((got[0] - 0.05).abs() < 1e-12);
        assert!(got[1].is_nan());
        assert!(got[2].is_infinite() && got[2] > 0.0);
        let s = br#"{"status":"success","data":{"resultType":"scalar","result":[1.5,"2"]}}"#;
        assert_eq!(parse_values(s).unwrap(), vec![2.0]);
        let empty = br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert!(parse_values(empty).unwrap().is_empty());
    }

    #[test]
    fn a_batch_tags_each_query_and_splits_the_answer_back() {
        let q = batch_query(&["sum(a)", "b / c"]);
        assert_eq!(
            q,
            r#"label_replace((sum(a)), "cutover_watchdog_query", "0", "", "") or label_replace((b / c), "cutover_watchdog_query", "1", "", "")"#
        );
        let body = br#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"cutover_watchdog_query":"1","x":"a"},"value":[1,"0.5"]},
            {"metric":{"cutover_watchdog_query":"1","x":"b"},"value":[1,"NaN"]}]}}"#;
        let got = parse_batch(body, 3).unwrap();
        assert!(
            got[0].is_empty() && got[2].is_empty(),
            "no series is no data"
        );
        assert_eq!(got[1].len(), 2);
        let untagged = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"1"]}]}}"#;
        assert!(parse_batch(untagged, 1).is_err());
    }

    #[test]
    fn errors_and_garbage_are_errors_not_values() {
        let html = parse_values(b"<html>\n  <body>Sign in</body>").unwrap_err();
        assert!(
            html.contains(r#"body "<html> <body>Sign in</body>""#),
            "the message shows what came back: {html}"
        );
        assert!(parse_batch(b"", 1).unwrap_err().contains("empty body"));
        let long = format!("<p>{}</p>", "x".repeat(500));
        assert!(snippet(long.as_bytes()).chars().count() < 140);
        assert!(parse_values(br#"{"status":"error","error":"bad"}"#).is_err());
        let m = br#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
        assert!(parse_values(m).is_err());
    }
}
