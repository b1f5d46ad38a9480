//! An in-process Kubernetes API server double, served over HTTP on loopback.
//!
//! It keeps what cutover-watchdog and kubectl rely on: legacy discovery, a global
//! resourceVersion that every write bumps, `409 Conflict` with a `Status` body on a stale
//! precondition, JSON merge and strategic-merge patches (maps merge; lists of known kinds merge
//! by key), list+watch with initial events and bookmarks, label and field selectors, and
//! `Status` error bodies, and `SelfSubjectAccessReview`s answered from a deny list. It does not
//! do authentication, admission, defaulting, pagination, JSON
//! patch or server-side apply; those answer 415 or are ignored. Faults can be injected per
//! request for tests.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Map, Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

mod managed;

use self::managed::Manager;

/// A resource type the double serves.
#[derive(Debug, Clone, Copy)]
struct ResourceType {
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    short: &'static [&'static str],
}

const KINDS: &[ResourceType] = &[
    kind("", "services", "Service", &["svc"]),
    kind("", "pods", "Pod", &["po"]),
    kind("", "events", "Event", &["ev"]),
    kind("events.k8s.io", "events", "Event", &["ev"]),
    kind("coordination.k8s.io", "leases", "Lease", &[]),
];

const fn kind(
    group: &'static str,
    plural: &'static str,
    kind: &'static str,
    short: &'static [&'static str],
) -> ResourceType {
    ResourceType {
        group,
        version: "v1",
        plural,
        kind,
        short,
    }
}

impl ResourceType {
    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The store key prefix: `services`, `events.k8s.io/events`.
    fn resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_owned()
        } else {
            format!("{}/{}", self.group, self.plural)
        }
    }

    fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
        KINDS
            .iter()
            .find(|k| k.group == group && k.version == version && k.plural == plural)
    }
}

/// One request the double answered, for assertions.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub user_agent: String,
    pub body: String,
    pub status: u16,
    /// When the request arrived.
    pub at: jiff::Timestamp,
}

impl RequestRecord {
    /// A PATCH of `resource` (e.g. `services`) named `name`.
    #[must_use]
    pub fn is_patch_of(&self, plural: &str, name: &str) -> bool {
        self.method == "PATCH" && self.path.ends_with(&format!("/{plural}/{name}"))
    }

    /// The patch body parsed as JSON, if it is JSON.
    #[must_use]
    pub fn json(&self) -> Option<Value> {
        serde_json::from_str(&self.body).ok()
    }
}

/// What an injected fault does.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this status and a `Status` body.
    Status(u16),
    /// Another writer touches the object just before this request is served, so a
    /// `resourceVersion` precondition taken before it is stale.
    ConcurrentWrite,
    /// Wait this long before serving.
    Delay(Duration),
    /// Serve the request (a write takes effect, watches see it), then wait this long before
    /// answering: an API server whose answer is lost or late.
    DelayAnswer(Duration),
}

/// When a fault applies, and how many times.
#[derive(Debug, Clone)]
pub struct FaultRule {
    pub method: Method,
    /// Plural resource name, e.g. `services`.
    pub plural: String,
    pub name: Option<String>,
    pub times: usize,
    pub fault: Fault,
}

#[derive(Debug, Clone)]
struct WatchRecord {
    rv: u64,
    resource: String,
    namespace: String,
    event: &'static str,
    object: Value,
}

#[derive(Default)]
struct Store {
    rv: u64,
    uid: u64,
    /// (resource, namespace, name) -> object
    objects: BTreeMap<(String, String, String), Value>,
    log: Vec<WatchRecord>,
    requests: Vec<RequestRecord>,
    /// (method, path) of every request as it arrives, before it is answered.
    arrivals: Vec<(String, String)>,
    faults: Vec<FaultRule>,
    /// Live watches deliver nothing while set (a partition between client and server).
    watches_paused: bool,
    /// Watches from a resourceVersion older than this get `410 Gone` (history compacted).
    compacted: u64,
    /// Wakes watchers: one channel per resource (`services`) and one per watched object
    /// (`services/default/svc-production`), so a write wakes only the watches it may concern.
    wakers: BTreeMap<String, watch::Sender<u64>>,
    /// (verb, resource) pairs that access reviews deny, e.g. `("patch", "services")`.
    denied: Vec<(String, String)>,
}

struct Shared {
    store: Mutex<Store>,
    /// Bumped to end every live watch.
    generation: watch::Sender<u64>,
    addr: SocketAddr,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Store> {
        // A panicked request handler leaves the store consistent (writes are single statements),
        // so a poisoned lock is still usable.
        self.store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A running API server double. Dropping it stops the server.
pub struct ApiServer {
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl ApiServer {
    /// Starts on a free loopback port.
    pub async fn start() -> Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    pub async fn start_on(addr: SocketAddr) -> Result<Self> {
        // Whoever starts the double talks HTTP to it next, with reqwest, which needs one.
        crate::tls::ring_as_default();
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind {
                what: "api server double",
                addr,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| Error::Io {
            context: "failed to read the api double's address".into(),
            source,
        })?;
        let (generation, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            generation,
            addr,
        });
        let stop = CancellationToken::new();
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let until = stop.clone().cancelled_owned();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(until)
                .await;
        });
        Ok(Self { shared, stop })
    }

    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    #[must_use]
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// Writes a kubeconfig for this server to `path` (plain http, no credentials).
    pub fn write_kubeconfig(&self, path: &Path) -> Result<()> {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: sandbox\n  cluster:\n    server: {}\n\
             contexts:\n- name: sandbox\n  context:\n    cluster: sandbox\n    user: sandbox\n    namespace: default\n\
             users:\n- name: sandbox\n  user: {{}}\ncurrent-context: sandbox\n",
            self.url()
        );
        std::fs::write(path, text).map_err(|source| Error::Io {
            context: format!("failed to write kubeconfig {}", path.display()),
            source,
        })
    }

    /// A kube client configuration for this server.
    pub fn config(&self) -> Result<kube::Config> {
        let uri = self
            .url()
            .parse()
            .map_err(|e| Error::Sandbox(format!("bad api double url: {e}")))?;
        let mut config = kube::Config::new(uri);
        config.default_namespace = "default".into();
        Ok(config)
    }

    /// A plain kube client for this server (no User-Agent: it stands for "someone else").
    pub fn client(&self) -> Result<kube::Client> {
        kube::Client::try_from(self.config()?).map_err(|e| Error::KubeClient(Box::new(e)))
    }

    /// Creates or replaces an object directly, as another controller would. `apiVersion`, `kind`,
    /// `metadata.name` and `metadata.namespace` (default `default`) pick the resource.
    pub fn apply(&self, object: Value) -> Result<Value> {
        let kind =
            kind_of(&object).ok_or_else(|| Error::Sandbox(format!("unknown kind in {object}")))?;
        let ns = str_at(&object, &["metadata", "namespace"])
            .unwrap_or("default")
            .to_owned();
        let name = str_at(&object, &["metadata", "name"])
            .ok_or_else(|| Error::Sandbox("object has no metadata.name".into()))?
            .to_owned();
        let mut store = self.shared.lock();
        let key = (kind.resource(), ns.clone(), name);
        let existing = store.objects.get(&key).cloned();
        let stored = store.write(kind, &ns, (object, &Manager::sandbox()), existing.as_ref());
        drop(store);
        Ok(stored)
    }

    /// The stored object, if any.
    #[must_use]
    pub fn get(&self, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        let store = self.shared.lock();
        store
            .objects
            .iter()
            .find(|((r, ns, n), _)| r.ends_with(plural) && ns == namespace && n == name)
            .map(|(_, v)| v.clone())
    }

    /// Every stored object of a resource (`services`, `events.k8s.io/events`) in a namespace.
    #[must_use]
    pub fn list(&self, resource: &str, namespace: &str) -> Vec<Value> {
        let store = self.shared.lock();
        store
            .objects
            .iter()
            .filter(|((r, ns, _), _)| r == resource && ns == namespace)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Every request served so far.
    #[must_use]
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.lock().requests.clone()
    }

    /// (method, path) of every request received, answered or not.
    #[must_use]
    pub fn arrivals(&self) -> Vec<(String, String)> {
        self.shared.lock().arrivals.clone()
    }

    /// Injects a fault for matching requests.
    pub fn inject(&self, rule: FaultRule) {
        self.shared.lock().faults.push(rule);
    }

    /// Live watches stop delivering events, as if the connection were partitioned; see
    /// [`Self::expire_watches`].
    pub fn pause_watches(&self) {
        self.shared.lock().watches_paused = true;
    }

    /// Ends every live watch and compacts the history, so a client that resumes from the
    /// resourceVersion it had gets `410 Gone` ("too old resource version") and must re-list.
    pub fn expire_watches(&self) {
        let mut store = self.shared.lock();
        store.watches_paused = false;
        // Other objects were written meanwhile (the global resourceVersion moved on), then the
        // history was compacted: every client's resourceVersion is now too old.
        store.rv += 1;
        store.compacted = store.rv;
        drop(store);
        self.shared.generation.send_modify(|g| *g += 1);
    }

    /// Ends every live watch; clients resume from their last resourceVersion.
    pub fn drop_watches(&self) {
        self.shared.lock().watches_paused = false;
        self.shared.generation.send_modify(|g| *g += 1);
    }

    /// Makes `SelfSubjectAccessReview`s deny `verb` on `resource` (plural, e.g. `services`),
    /// as a Role without that rule would. Requests themselves are not authorized: inject a
    /// 403 fault for that.
    pub fn deny(&self, verb: &str, resource: &str) {
        self.shared
            .lock()
            .denied
            .push((verb.to_owned(), resource.to_owned()));
    }
}

impl Store {
    /// Stores `object` as a create or an update, bumping the resourceVersion and logging a
    /// watch event. Returns the stored object.
    fn write(
        &mut self,
        kind: &ResourceType,
        ns: &str,
        (mut object, manager): (Value, &Manager),
        existing: Option<&Value>,
    ) -> Value {
        self.rv += 1;
        let rv = self.rv;
        let fields = managed::after_write(
            existing,
            &object,
            manager,
            &kind.api_version(),
            &now_rfc3339(),
        );
        let meta = object
            .as_object_mut()
            .map(|o| o.entry("metadata").or_insert_with(|| json!({})));
        if let Some(Value::Object(meta)) = meta {
            meta.insert("namespace".into(), json!(ns));
            meta.insert("resourceVersion".into(), json!(rv.to_string()));
            meta.insert("managedFields".into(), fields);
            if let Some(old) = existing.and_then(|e| e.get("metadata")) {
                for k in ["uid", "creationTimestamp"] {
                    if let Some(v) = old.get(k) {
                        meta.insert(k.into(), v.clone());
                    }
                }
            } else {
                self.uid += 1;
                meta.insert(
                    "uid".into(),
                    json!(format!("00000000-0000-4000-8000-{:012}", self.uid)),
                );
                meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
            }
        }
        if let Some(o) = object.as_object_mut() {
            o.insert("apiVersion".into(), json!(kind.api_version()));
            o.insert("kind".into(), json!(kind.kind));
        }
        let name = str_at(&object, &["metadata", "name"])
            .unwrap_or_default()
            .to_owned();
        self.objects.insert(
            (kind.resource(), ns.to_owned(), name.clone()),
            object.clone(),
        );
        self.log.push(WatchRecord {
            rv,
            resource: kind.resource(),
            namespace: ns.to_owned(),
            event: if existing.is_some() {
                "MODIFIED"
            } else {
                "ADDED"
            },
            object: object.clone(),
        });
        self.wake(&kind.resource(), ns, &name, rv);
        object
    }

    fn subscribe(&mut self, key: String) -> watch::Receiver<u64> {
        self.wakers
            .entry(key)
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    fn wake(&self, resource: &str, ns: &str, name: &str, rv: u64) {
        for key in [resource.to_owned(), format!("{resource}/{ns}/{name}")] {
            if let Some(waker) = self.wakers.get(&key) {
                waker.send_replace(rv);
            }
        }
    }

    fn take_fault(&mut self, method: &Method, plural: &str, name: Option<&str>) -> Option<Fault> {
        let rule = self.faults.iter_mut().find(|r| {
            r.times > 0
                && r.method == method
                && r.plural == plural
                && (r.name.is_none() || r.name.as_deref() == name)
        })?;
        rule.times -= 1;
        Some(rule.fault.clone())
    }
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn kind_of(object: &Value) -> Option<&'static ResourceType> {
    let api_version = object.get("apiVersion")?.as_str()?;
    let kind = object.get("kind")?.as_str()?;
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    KINDS
        .iter()
        .find(|k| k.group == group && k.version == version && k.kind == kind)
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

/// A `Status` failure body.
fn status(code: u16, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, axum::Json(body)).into_response()
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    (code, axum::Json(v.clone())).into_response()
}

/// The parsed target of a request path.
struct Target {
    kind: &'static ResourceType,
    namespace: Option<String>,
    name: Option<String>,
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 16 << 20)
        .await
        .unwrap_or_default();
    let header = |h: header::HeaderName| {
        parts
            .headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let mut record = RequestRecord {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or_default().to_owned(),
        content_type: header(header::CONTENT_TYPE),
        user_agent: header(header::USER_AGENT),
        body: String::from_utf8_lossy(&body).into_owned(),
        status: 0,
        at: jiff::Timestamp::now(),
    };
    shared
        .lock()
        .arrivals
        .push((record.method.clone(), record.path.clone()));
    let query: BTreeMap<String, String> = url::form_urlencoded::parse(record.query.as_bytes())
        .into_owned()
        .collect();
    let mut answer_after = None;
    let response = route(
        &shared,
        &parts.method,
        &parts.headers,
        &record.path,
        &query,
        body,
        &mut answer_after,
    )
    .await;
    record.status = response.status().as_u16();
    shared.lock().requests.push(record);
    // Logged as served: a late answer, or one the client gave up on, changes nothing done.
    if let Some(delay) = answer_after {
        tokio::time::sleep(delay).await;
    }
    response
}

/// The answer to one request; `answer_after` is set to how long to hold it back, for
/// [`Fault::DelayAnswer`].
async fn route(
    shared: &Arc<Shared>,
    method: &Method,
    headers: &HeaderMap,
    path: &str,
    query: &BTreeMap<String, String>,
    body: Bytes,
    answer_after: &mut Option<Duration>,
) -> Response {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    if method == Method::GET
        && let Some(doc) = discovery(&segments, shared.addr)
    {
        return json_response(StatusCode::OK, &doc);
    }
    if method == Method::POST
        && segments
            == [
                "apis",
                "authorization.k8s.io",
                "v1",
                "selfsubjectaccessreviews",
            ]
    {
        return access_review(shared, &body);
    }
    let Some(target) = parse_target(&segments) else {
        return status(
            404,
            "NotFound",
            &format!("the server could not find the requested resource ({path})"),
        );
    };
    let fault = shared
        .lock()
        .take_fault(method, target.kind.plural, target.name.as_deref());
    match fault {
        Some(Fault::Status(code)) => {
            let reason = match code {
                403 => "Forbidden",
                404 => "NotFound",
                409 => "Conflict",
                429 => "TooManyRequests",
                503 => "ServiceUnavailable",
                504 => "Timeout",
                _ => "InternalError",
            };
            return status(code, reason, &format!("injected fault: {code} {reason}"));
        }
        Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
        Some(Fault::ConcurrentWrite) => touch(shared, &target),
        Some(Fault::DelayAnswer(d)) => *answer_after = Some(d),
        None => {}
    }
    serve(shared, method, headers, path, query, &body, &target)
}

/// Serves one parsed request with no fault.
fn serve(
    shared: &Arc<Shared>,
    method: &Method,
    headers: &HeaderMap,
    path: &str,
    query: &BTreeMap<String, String>,
    body: &Bytes,
    target: &Target,
) -> Response {
    let ns = target.namespace.clone().unwrap_or_default();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    // JSON only: protobuf and CBOR clients get 415, on which client-go falls back to JSON.
    if matches!(*method, Method::POST | Method::PUT)
        && !content_type.starts_with("application/json")
    {
        return status(
            415,
            "UnsupportedMediaType",
            &format!(
                "the body of the request was in an unknown format - accepted media types include: application/json (got {content_type:?})"
            ),
        );
    }
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let manager = Manager::of(query.get("fieldManager").map(String::as_str), user_agent);
    // `dryRun=All`: everything checked and answered, nothing stored.
    let dry_run = query.get("dryRun").is_some_and(|v| v == "All");
    match (method.clone(), target.name.clone()) {
        (Method::GET, None) if is_true(query.get("watch")) => watch_response(shared, target, query),
        (Method::GET, None) => list(shared, target, query),
        (Method::GET, Some(name)) => match shared.lock().objects.get(&key(target, &name)) {
            Some(v) => json_response(StatusCode::OK, v),
            None => not_found(target.kind, &name),
        },
        (Method::POST, None) => create(shared, (target.kind, &ns), body, &manager),
        (Method::PATCH, Some(name)) => patch(
            shared,
            (target, &name),
            (content_type, body),
            (&manager, dry_run),
        ),
        (Method::PUT, Some(name)) => replace(shared, (target, &name), body, &manager),
        (Method::DELETE, Some(name)) => delete(shared, target, &name),
        _ => status(
            405,
            "MethodNotAllowed",
            &format!("{method} is not supported on {path}"),
        ),
    }
}

fn is_true(v: Option<&String>) -> bool {
    v.is_some_and(|v| v == "true" || v == "1")
}

fn key(target: &Target, name: &str) -> (String, String, String) {
    (
        target.kind.resource(),
        target.namespace.clone().unwrap_or_default(),
        name.to_owned(),
    )
}

fn not_found(kind: &ResourceType, name: &str) -> Response {
    status(
        404,
        "NotFound",
        &format!("{} \"{name}\" not found", kind.plural),
    )
}

fn parse_target(s: &[&str]) -> Option<Target> {
    // /api/v1/namespaces/{ns}/{plural}[/{name}]
    // /apis/{group}/{version}/namespaces/{ns}/{plural}[/{name}]
    let (group, version, rest) = match s {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let (namespace, plural, name) = match rest {
        ["namespaces", ns, plural] => (Some(*ns), *plural, None),
        ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name)),
        [plural] => (None, *plural, None),
        _ => return None,
    };
    Some(Target {
        kind: ResourceType::find(group, version, plural)?,
        namespace: namespace.map(str::to_owned),
        name: name.map(str::to_owned),
    })
}

/// Legacy (non-aggregated) discovery, as kubectl reads it.
fn discovery(s: &[&str], addr: SocketAddr) -> Option<Value> {
    let resources = |group: &str, version: &str| {
        let list: Vec<Value> = KINDS
            .iter()
            .filter(|k| k.group == group && k.version == version)
            .map(|k| {
                json!({
                    "name": k.plural, "singularName": k.kind.to_lowercase(), "namespaced": true,
                    "kind": k.kind, "shortNames": k.short,
                    "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
                })
            })
            .collect();
        let gv = if group.is_empty() {
            version.to_owned()
        } else {
            format!("{group}/{version}")
        };
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list})
    };
    match s {
        ["version"] => Some(json!({
            "major": "1", "minor": "33", "gitVersion": "v1.33.0-cutover-watchdog-double",
            "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
            "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc",
            "platform": "linux/amd64",
        })),
        ["api"] => Some(json!({
            "kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": addr.to_string()}],
        })),
        ["api", "v1"] => Some(resources("", "v1")),
        ["apis"] => {
            let mut groups: Vec<&str> = KINDS
                .iter()
                .map(|k| k.group)
                .filter(|g| !g.is_empty())
                .collect();
            groups.dedup();
            let groups: Vec<Value> = groups
                .iter()
                .map(|g| {
                    let gv = json!({"groupVersion": format!("{g}/v1"), "version": "v1"});
                    json!({"name": g, "versions": [gv], "preferredVersion": gv})
                })
                .collect();
            Some(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
        }
        ["apis", group, version]
            if KINDS
                .iter()
                .any(|k| k.group == *group && k.version == *version) =>
        {
            Some(resources(group, version))
        }
        _ => None,
    }
}

/// Equality-based label selectors (`a=b,c==d,e!=f`) and `metadata.name`/`metadata.namespace`
/// field selectors.
fn matches(object: &Value, query: &BTreeMap<String, String>) -> std::result::Result<bool, String> {
    if let Some(sel) = query.get("labelSelector").filter(|s| !s.is_empty()) {
        let labels = object.pointer("/metadata/labels");
        for term in sel.split(',') {
            let (k, v, equal) = if let Some((k, v)) = term.split_once("!=") {
                (k, v, false)
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (k, v, true)
            } else {
                return Err(format!("unsupported label selector term {term:?}"));
            };
            let actual = labels.and_then(|l| l.get(k.trim())).and_then(Value::as_str);
            if (actual == Some(v.trim())) != equal {
                return Ok(false);
            }
        }
    }
    if let Some(sel) = query.get("fieldSelector").filter(|s| !s.is_empty()) {
        for term in sel.split(',') {
            let (k, v) = term
                .split_once('=')
                .ok_or_else(|| format!("unsupported field selector term {term:?}"))?;
            let path = match k.trim_end_matches('=') {
                "metadata.name" => "/metadata/name",
                "metadata.namespace" => "/metadata/namespace",
                other => return Err(format!("field label not supported: {other}")),
            };
            if object.pointer(path).and_then(Value::as_str) != Some(v) {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

fn selected(
    store: &Store,
    target: &Target,
    query: &BTreeMap<String, String>,
) -> std::result::Result<Vec<Value>, String> {
    let resource = target.kind.resource();
    let mut out = Vec::new();
    for ((r, ns, _), v) in &store.objects {
        if *r == resource && target.namespace.as_ref().is_none_or(|t| t == ns) && matches(v, query)?
        {
            out.push(v.clone());
        }
    }
    Ok(out)
}

fn list(shared: &Shared, target: &Target, query: &BTreeMap<String, String>) -> Response {
    let store = shared.lock();
    match selected(&store, target, query) {
        Ok(items) => json_response(
            StatusCode::OK,
            &json!({
                "kind": format!("{}List", target.kind.kind),
                "apiVersion": target.kind.api_version(),
                "metadata": {"resourceVersion": store.rv.to_string()},
                "items": items,
            }),
        ),
        Err(m) => status(400, "BadRequest", &m),
    }
}

fn create(
    shared: &Shared,
    (kind, ns): (&ResourceType, &str),
    body: &[u8],
    manager: &Manager,
) -> Response {
    let Ok(mut object) = serde_json::from_slice::<Value>(body) else {
        return status(400, "BadRequest", "the request body is not valid JSON");
    };
    let name = match (
        str_at(&object, &["metadata", "name"]),
        str_at(&object, &["metadata", "generateName"]),
    ) {
        (Some(n), _) if !n.is_empty() => n.to_owned(),
        (_, Some(prefix)) => format!("{prefix}{:05}", shared.lock().rv + 1),
        _ => {
            return status(
                422,
                "Invalid",
                "metadata.name: Required value: name or generateName is required",
            );
        }
    };
    if kind.plural == "events" && kind.group == "events.k8s.io" {
        for field in [
            "eventTime",
            "reportingController",
            "reportingInstance",
            "action",
            "reason",
            "type",
        ] {
            if object.get(field).is_none_or(Value::is_null) {
                return status(
                    422,
                    "Invalid",
                    &format!("Event.events.k8s.io \"{name}\" is invalid: {field}: Required value"),
                );
            }
        }
    }
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("name".into(), json!(name));
    }
    let mut store = shared.lock();
    let k = (kind.resource(), ns.to_owned(), name.clone());
    if store.objects.contains_key(&k) {
        return status(
            409,
            "AlreadyExists",
            &format!("{} \"{name}\" already exists", kind.plural),
        );
    }
    let stored = store.write(kind, ns, (object, manager), None);
    drop(store);
    json_response(StatusCode::CREATED, &stored)
}

/// Answers a `SelfSubjectAccessReview` from the deny list: allowed unless denied.
fn access_review(shared: &Shared, body: &[u8]) -> Response {
    let Ok(mut review) = serde_json::from_slice::<Value>(body) else {
        return status(400, "BadRequest", "the request body is not valid JSON");
    };
    let attributes = &review["spec"]["resourceAttributes"];
    let verb = attributes["verb"].as_str().unwrap_or_default().to_owned();
    let resource = attributes["resource"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let denied = shared
        .lock()
        .denied
        .iter()
        .any(|(v, r)| *v == verb && *r == resource);
    review["status"] = if denied {
        json!({"allowed": false, "denied": true, "reason": format!("no RBAC rule allows {verb} on {resource}")})
    } else {
        json!({"allowed": true, "reason": "allowed by the sandbox"})
    };
    json_response(StatusCode::CREATED, &review)
}

fn conflict(kind: &ResourceType, name: &str) -> Response {
    status(
        409,
        "Conflict",
        &format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
             please apply your changes to the latest version and try again",
            kind.plural
        ),
    )
}

fn patch(
    shared: &Shared,
    (target, name): (&Target, &str),
    (content_type, body): (&str, &[u8]),
    (manager, dry_run): (&Manager, bool),
) -> Response {
    let strategic = match content_type.split(';').next().unwrap_or_default().trim() {
        "application/merge-patch+json" => false,
        "application/strategic-merge-patch+json" => true,
        other => {
            return status(
                415,
                "UnsupportedMediaType",
                &format!(
                    "the body of the request was in an unknown format - accepted media types include: application/merge-patch+json, application/strategic-merge-patch+json (got {other:?})"
                ),
            );
        }
    };
    let Ok(patch) = serde_json::from_slice::<Value>(body) else {
        return status(400, "BadRequest", "the request body is not valid JSON");
    };
    if !patch.is_object() {
        return status(400, "BadRequest", "a merge patch must be a JSON object");
    }
    let mut store = shared.lock();
    let k = key(target, name);
    let Some(current) = store.objects.get(&k).cloned() else {
        return not_found(target.kind, name);
    };
    if let Some(rv) = str_at(&patch, &["metadata", "resourceVersion"])
        && rv != str_at(&current, &["metadata", "resourceVersion"]).unwrap_or_default()
    {
        return conflict(target.kind, name);
    }
    if let Some(uid) = str_at(&patch, &["metadata", "uid"])
        && uid != str_at(&current, &["metadata", "uid"]).unwrap_or_default()
    {
        return conflict(target.kind, name);
    }
    let mut merged = current.clone();
    merge(&mut merged, &patch, strategic, "");
    // Name and namespace cannot change; resourceVersion is the server's.
    if let Some(meta) = merged.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("name".into(), json!(name));
        meta.insert(
            "resourceVersion".into(),
            current["metadata"]["resourceVersion"].clone(),
        );
    }
    if merged == current {
        return json_response(StatusCode::OK, &current); // a no-op write does not bump anything
    }
    if dry_run {
        return json_response(StatusCode::OK, &merged);
    }
    let ns = target.namespace.clone().unwrap_or_default();
    let stored = store.write(target.kind, &ns, (merged, manager), Some(&current));
    drop(store);
    json_response(StatusCode::OK, &stored)
}

/// Lists that strategic merge merges by key; every other list is replaced.
fn merge_key(field: &str) -> Option<&'static str> {
    match field {
        "ports" => Some("port"),
        "containers" | "initContainers" | "env" | "volumes" => Some("name"),
        "conditions" => Some("type"),
        _ => None,
    }
}

/// RFC 7386 JSON merge; with `strategic`, lists of known fields merge by key, as kubectl's
/// strategic-merge does for those types.
fn merge(target: &mut Value, patch: &Value, strategic: bool, field: &str) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v, strategic, k);
                }
            }
        }
        (Value::Array(t), Value::Array(p)) if strategic && merge_key(field).is_some() => {
            let key = merge_key(field).unwrap_or_default();
            for item in p {
                match t
                    .iter_mut()
                    .find(|x| x.get(key).is_some() && x.get(key) == item.get(key))
                {
                    Some(existing) => merge(existing, item, true, ""),
                    None => t.push(item.clone()),
                }
            }
        }
        (t, p) => {
            let mut p = p.clone();
            if p.is_object() {
                // A new map: strip nulls the way a merge into an empty map would.
                let mut fresh = Value::Object(Map::new());
                merge(&mut fresh, &p, strategic, field);
                p = fresh;
            }
            *t = p;
        }
    }
}

fn replace(
    shared: &Shared,
    (target, name): (&Target, &str),
    body: &[u8],
    manager: &Manager,
) -> Response {
    let Ok(object) = serde_json::from_slice::<Value>(body) else {
        return status(400, "BadRequest", "the request body is not valid JSON");
    };
    let mut store = shared.lock();
    let k = key(target, name);
    let Some(current) = store.objects.get(&k).cloned() else {
        return not_found(target.kind, name);
    };
    let want = str_at(&object, &["metadata", "resourceVersion"]).unwrap_or_default();
    if !want.is_empty()
        && want != str_at(&current, &["metadata", "resourceVersion"]).unwrap_or_default()
    {
        return conflict(target.kind, name);
    }
    let ns = target.namespace.clone().unwrap_or_default();
    let stored = store.write(target.kind, &ns, (object, manager), Some(&current));
    drop(store);
    json_response(StatusCode::OK, &stored)
}

fn delete(shared: &Shared, target: &Target, name: &str) -> Response {
    let mut store = shared.lock();
    let Some(object) = store.objects.remove(&key(target, name)) else {
        return not_found(target.kind, name);
    };
    store.rv += 1;
    let rv = store.rv;
    let mut gone = object.clone();
    gone["metadata"]["resourceVersion"] = json!(rv.to_string());
    store.log.push(WatchRecord {
        rv,
        resource: target.kind.resource(),
        namespace: target.namespace.clone().unwrap_or_default(),
        event: "DELETED",
        object: gone,
    });
    store.wake(
        &target.kind.resource(),
        target.namespace.as_deref().unwrap_or_default(),
        name,
        rv,
    );
    drop(store);
    json_response(StatusCode::OK, &object)
}

/// Another writer touches the object: its resourceVersion moves on.
fn touch(shared: &Shared, target: &Target) {
    let Some(name) = &target.name else { return };
    let mut store = shared.lock();
    let k = key(target, name);
    let Some(current) = store.objects.get(&k).cloned() else {
        return;
    };
    let mut touched = current.clone();
    touched["metadata"]["annotations"]["sandbox.cutover-watchdog.io/touched"] =
        json!(store.rv.to_string());
    let ns = target.namespace.clone().unwrap_or_default();
    store.write(
        target.kind,
        &ns,
        (touched, &Manager::sandbox()),
        Some(&current),
    );
    drop(store);
}

fn watch_line(event: &str, object: &Value) -> Bytes {
    let mut line =
        serde_json::to_vec(&json!({"type": event, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

/// The channel a watch wakes on: a watch of one object by name wakes only on that object's
/// writes, any other on every write of its resource.
fn waker_key(target: &Target, query: &BTreeMap<String, String>) -> String {
    let resource = target.kind.resource();
    match query
        .get("fieldSelector")
        .and_then(|f| f.strip_prefix("metadata.name="))
    {
        Some(name) if !name.contains(',') => {
            let ns = target.namespace.as_deref().unwrap_or_default();
            format!("{resource}/{ns}/{name}")
        }
        _ => resource,
    }
}

/// How long a watch lasts: the client's `timeoutSeconds`, else 30 minutes.
fn watch_timeout(query: &BTreeMap<String, String>) -> Duration {
    query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(Duration::from_mins(30), Duration::from_secs)
}

/// A watch from a compacted resourceVersion: one `ERROR` event with a 410 `Status`, as the API
/// server streams it.
fn gone(from: u64, compacted: u64) -> Response {
    let status_body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("too old resource version: {from} ({compacted})"),
        "reason": "Expired", "code": 410,
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(watch_line("ERROR", &status_body)))
        .unwrap_or_else(|_| status(500, "InternalError", "failed to build watch response"))
}

fn watch_response(
    shared: &Arc<Shared>,
    target: &Target,
    query: &BTreeMap<String, String>,
) -> Response {
    let mut store = shared.lock();
    // Validate selectors up front, so a bad one is a 400 rather than a silent empty stream.
    if let Err(m) = selected(&store, target, &BTreeMap::new())
        .and_then(|_| matches(&json!({}), query).map(drop))
    {
        return status(400, "BadRequest", &m);
    }
    let initial = is_true(query.get("sendInitialEvents"));
    let from: Option<u64> = query
        .get("resourceVersion")
        .filter(|rv| !rv.is_empty() && *rv != "0")
        .and_then(|rv| rv.parse().ok());
    if let Some(from) = from.filter(|rv| *rv < store.compacted) {
        return gone(from, store.compacted);
    }
    let mut first: Vec<Bytes> = Vec::new();
    let cursor = if initial || from.is_none() {
        for v in selected(&store, target, query).unwrap_or_default() {
            first.push(watch_line("ADDED", &v));
        }
        if initial {
            let bookmark = json!({
                "kind": target.kind.kind, "apiVersion": target.kind.api_version(),
                "metadata": {"resourceVersion": store.rv.to_string(),
                             "annotations": {"k8s.io/initial-events-end": "true"}},
            });
            first.push(watch_line("BOOKMARK", &bookmark));
        }
        store.rv
    } else {
        from.unwrap_or(0)
    };
    let latest = store.subscribe(waker_key(target, query));
    drop(store);
    let deadline = tokio::time::Instant::now() + watch_timeout(query);
    let shared = shared.clone();
    let resource = target.kind.resource();
    let namespace = target.namespace.clone();
    let query = query.clone();
    let mut generation = shared.generation.subscribe();
    generation.borrow_and_update();
    let state = (cursor, latest, generation);
    let live = futures::stream::unfold(state, move |(mut cursor, mut latest, mut generation)| {
        let shared = shared.clone();
        let resource = resource.clone();
        let namespace = namespace.clone();
        let query = query.clone();
        async move {
            loop {
                if generation.has_changed().unwrap_or(true) {
                    return None; // dropped by the test
                }
                let batch: Vec<Bytes> = {
                    let store = shared.lock();
                    if store.watches_paused {
                        Vec::new()
                    } else {
                        // The log is in resourceVersion order: find the new tail, don't scan.
                        let from = store.log.partition_point(|r| r.rv <= cursor);
                        let fresh: Vec<&WatchRecord> = store.log[from..].iter().collect();
                        if let Some(last) = fresh.last() {
                            cursor = last.rv;
                        }
                        fresh
                            .into_iter()
                            .filter(|r| {
                                r.resource == resource
                                    && namespace.as_ref().is_none_or(|n| *n == r.namespace)
                                    && matches(&r.object, &query).unwrap_or(false)
                            })
                            .map(|r| watch_line(r.event, &r.object))
                            .collect()
                    }
                };
                if !batch.is_empty() {
                    return Some((batch, (cursor, latest, generation)));
                }
                let woken = tokio::time::timeout_at(deadline, async {
                    tokio::select! {
                        _ = latest.changed() => true,
                        _ = generation.changed() => false,
                    }
                });
                match woken.await {
                    Ok(true) => {}
                    // Dropped by the test, or timeoutSeconds reached: the server closes the watch.
                    Ok(false) | Err(_) => return None,
                }
            }
        }
    });
    let stream = futures::stream::once(async move { first })
        .chain(live)
        .flat_map(futures::stream::iter)
        .map(Ok::<Bytes, std::convert::Infallible>);
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| status(500, "InternalError", "failed to build watch response"))
}

/// A Service selecting `selector`, with one HTTP port.
#[must_use]
pub fn service(namespace: &str, name: &str, selector: &[(&str, &str)]) -> Value {
    let selector: Map<String, Value> = selector
        .iter()
        .map(|(k, v)| ((*k).into(), json!(v)))
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"selector": selector, "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
                 "type": "ClusterIP", "clusterIP": "10.96.0.10"},
    })
}

/// A running Pod with `labels`, whose Ready condition is `ready`.
#[must_use]
pub fn pod(namespace: &str, name: &str, labels: &[(&str, &str)], ready: bool) -> Value {
    let labels: Map<String, Value> = labels
        .iter()
        .map(|(k, v)| ((*k).into(), json!(v)))
        .collect();
    let status = if ready { "True" } else { "False" };
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"containers": [{"name": "app", "image": "registry.example/app:latest"}]},
        "status": {"phase": "Running", "conditions": [
            {"type": "Ready", "status": status}, {"type": "ContainersReady", "status": status}],
            "containerStatuses": [{"name": "app", "ready": ready, "restartCount": 0,
                "image": "registry.example/app:latest", "imageID": "",
                "state": {"running": {"startedAt": now_rfc3339()}}}]},
    })
}

/// `pod` after its container restarted `count` times, the last one ending at `at`: what the
/// kubelet reports of a crash-looping container.
#[must_use]
pub fn restarted(mut pod: Value, count: u32, at: jiff::Timestamp) -> Value {
    let at = at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    pod["status"]["containerStatuses"][0]["restartCount"] = json!(count);
    pod["status"]["containerStatuses"][0]["lastState"] =
        json!({"terminated": {"exitCode": 1, "reason": "Error", "finishedAt": at}});
    pod
}
