//! The fleet: which guards run, started and stopped as the config and the Services change.
//!
//! One list+watch of Services per namespace the config names, or one cluster-wide when a
//! template says `["*"]`, feeds every guard: a guard costs a task and a queue, not a
//! connection. For each Service the fleet asks [`coverage`] what covers it, then starts a guard
//! (its decision task and executor lane) for a new one, reconfigures one whose config changed,
//! and stops one that is gone, deleting its metric series. It publishes the running set
//! ([`GuardSet`]) for the webhook, the poller and the HTTP side.
//!
//! It decides nothing about windows and never writes to Kubernetes: a guard that stops leaves
//! its Service's annotations as they are, and a guard that starts resumes from them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Service, ServiceSpec};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{Config, GuardConfig, TemplateConfig};
use crate::coverage::{self, Coverage, Source};
use crate::executor::{Baselines, Lanes, Writers};
use crate::guard::{Bound, Clock, GuardHandle, GuardTask};
use crate::metrics::Metrics;
use crate::service::ServiceHandle;
use crate::webhook::Routes;

/// The guards running now, and the index the webhook routes alerts by.
pub struct GuardSet {
    /// `guards[]` first, in file order, then template guards by namespace and name.
    pub guards: Vec<GuardHandle>,
    /// The Service watches not listed yet (`namespace shop`), or the fleet not started: until
    /// they are, a Service may be unguarded only because it has not been seen.
    pub waiting: Vec<String>,
    pub(crate) routes: Routes,
}

impl GuardSet {
    #[must_use]
    pub fn new(guards: Vec<GuardHandle>) -> Self {
        let routes = Routes::new(&guards);
        Self {
            guards,
            waiting: Vec::new(),
            routes,
        }
    }

    /// No guards yet: the fleet has not started (a follower's, or a leader's first moment).
    #[must_use]
    pub fn starting() -> Self {
        Self {
            waiting: vec!["the guards to start".into()],
            ..Self::new(Vec::new())
        }
    }

    /// The guard named `name`, of either kind (`checkout`, `shop/cart`).
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&GuardHandle> {
        self.guards.iter().find(|g| g.config.name == name)
    }
}

/// Where the running set is read: a snapshot per request or poll round.
pub type Registry = watch::Receiver<Arc<GuardSet>>;

/// A registry that never changes: for tests and tools that build their guards by hand.
#[must_use]
pub fn fixed(guards: Vec<GuardHandle>) -> Registry {
    watch::channel(Arc::new(GuardSet::new(guards))).1
}

/// What one watch covers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Scope {
    All,
    Namespace(String),
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::All => f.write_str("all namespaces"),
            Self::Namespace(ns) => write!(f, "namespace {ns}"),
        }
    }
}

impl Scope {
    /// The Services in this scope.
    pub(crate) fn services(&self, client: &Client) -> Api<Service> {
        match self {
            Self::All => Api::all(client.clone()),
            Self::Namespace(ns) => Api::namespaced(client.clone(), ns),
        }
    }

    fn covers(&self, namespace: &str) -> bool {
        match self {
            Self::All => true,
            Self::Namespace(ns) => ns == namespace,
        }
    }

    /// The watches `config` needs: one cluster-wide if any template covers every namespace,
    /// else one per namespace a guard or template names.
    pub(crate) fn needed(config: &Config) -> BTreeSet<Self> {
        if config.templates.iter().any(TemplateConfig::all_namespaces) {
            return BTreeSet::from([Self::All]);
        }
        let guards = config.guards.iter().map(|g| g.namespace.clone());
        let templates = config.templates.iter().flat_map(|t| t.namespaces.clone());
        guards.chain(templates).map(Self::Namespace).collect()
    }
}

/// A Service's namespace and name.
pub(crate) type Key = (String, String);

pub(crate) fn key_of(svc: &Service) -> Key {
    (
        svc.metadata.namespace.clone().unwrap_or_default(),
        svc.metadata.name.clone().unwrap_or_default(),
    )
}

/// One watch's task and what it has listed.
struct Watch {
    /// Told apart from an earlier watch of the same scope, whose last events may still queue.
    generation: u64,
    stop: CancellationToken,
    services: BTreeMap<Key, Arc<Service>>,
    /// Filled between `Init` and `InitDone`: a (re-)list in progress.
    pending: Option<BTreeMap<Key, Arc<Service>>>,
    listed: bool,
}

/// A watch's event, tagged with the watch it came from.
type Tagged = (Scope, u64, watcher::Event<Service>);

/// One running guard.
struct Running {
    source: Source,
    config: Arc<GuardConfig>,
    handle: GuardHandle,
    /// Stops the guard's task.
    stop: CancellationToken,
    /// Stops its executor lane, after the command in hand.
    lane_stop: CancellationToken,
    bind: watch::Sender<Bound>,
    observe: watch::Sender<Option<Arc<Service>>>,
    /// Marks the next Service handed over as coming from a re-list.
    relisted: Arc<AtomicBool>,
}

/// Events from the watches waiting for the fleet; the watches wait when it is full.
const EVENTS: usize = 1024;
/// Events handled before the running set is published again, during a long list.
const PUBLISH_EVERY: usize = 512;

/// What every guard's tasks share.
pub struct Parts {
    pub client: Client,
    pub metrics: Metrics,
    /// Where the guards' executor lanes run.
    pub lanes: Lanes,
    /// The guards' shared baseline writer.
    pub baselines: Baselines,
    /// Notified when a window opens, for the poller.
    pub wake: Arc<Notify>,
    pub clock: Clock,
}

/// The task that keeps the running guards in line with the config and the Services.
pub struct Fleet {
    parts: Parts,
    config: Arc<Config>,
    configs: watch::Receiver<Arc<Config>>,
    publish: watch::Sender<Arc<GuardSet>>,
    watches: BTreeMap<Scope, Watch>,
    /// Watches of the config before the last reload, kept until the new ones have listed, so
    /// their Services' guards do not stop in between.
    retiring: BTreeMap<Scope, Watch>,
    generations: u64,
    guards: BTreeMap<Key, Running>,
    events: mpsc::Sender<Tagged>,
    inbox: mpsc::Receiver<Tagged>,
    tasks: JoinSet<()>,
    /// Guard tasks and watches stop on this.
    stop: CancellationToken,
    /// Executor lanes stop on this, after the command in hand.
    shutdown: CancellationToken,
    dirty: bool,
}

impl Fleet {
    /// A fleet that follows `configs` and publishes to `publish`. Guard tasks and watches stop
    /// on `stop`; executor lanes on `shutdown`, after the write in hand.
    #[must_use]
    pub fn new(
        parts: Parts,
        mut configs: watch::Receiver<Arc<Config>>,
        publish: watch::Sender<Arc<GuardSet>>,
        stop: CancellationToken,
        shutdown: CancellationToken,
    ) -> Self {
        let (events, inbox) = mpsc::channel(EVENTS);
        let config = configs.borrow_and_update().clone();
        Self {
            parts,
            config,
            configs,
            publish,
            watches: BTreeMap::new(),
            retiring: BTreeMap::new(),
            generations: 0,
            guards: BTreeMap::new(),
            events,
            inbox,
            tasks: JoinSet::new(),
            stop,
            shutdown,
            dirty: false,
        }
    }

    /// Runs until `stop`. Its guard tasks and watches end with it; the executor lanes the
    /// guards opened go on in [`Lanes`], to finish their writes.
    pub async fn run(mut self) {
        let config = self.config.clone();
        self.apply(config);
        self.publish_now();
        let mut configs_open = true;
        loop {
            tokio::select! {
                () = self.stop.cancelled() => break,
                changed = self.configs.changed(), if configs_open => {
                    if changed.is_err() {
                        configs_open = false;
                        continue;
                    }
                    let config = self.configs.borrow_and_update().clone();
                    self.apply(config);
                }
                Some((scope, generation, event)) = self.inbox.recv() => {
                    self.on_event(&scope, generation, event);
                    // Take what else is queued before publishing, so a list of thousands of
                    // Services publishes a few times, not once per Service.
                    for _ in 0..PUBLISH_EVERY {
                        let Ok((scope, generation, event)) = self.inbox.try_recv() else {
                            break;
                        };
                        self.on_event(&scope, generation, event);
                    }
                }
            }
            if self.dirty {
                self.publish_now();
            }
            // Tasks of stopped guards end on their own; collect them so they do not pile up.
            while self.tasks.try_join_next().is_some() {}
        }
    }

    /// Puts `config` in force: the watches it needs, then every guard it implies.
    fn apply(&mut self, config: Arc<Config>) {
        self.config = config;
        let needed = Scope::needed(&self.config);
        let gone: Vec<Scope> = self
            .watches
            .keys()
            .filter(|s| !needed.contains(s))
            .cloned()
            .collect();
        for scope in gone {
            if let Some(w) = self.watches.remove(&scope) {
                self.retiring.insert(scope, w);
            }
        }
        for scope in needed {
            if self.watches.contains_key(&scope) {
                continue;
            }
            // Back before it was retired: it is still watching, and has listed.
            if let Some(w) = self.retiring.remove(&scope) {
                self.watches.insert(scope, w);
            } else {
                self.start_watch(scope);
            }
        }
        // Whatever it returns is among the guards' keys below.
        let _ = self.retire_if_listed();
        let keys: BTreeSet<Key> = self
            .guards
            .keys()
            .cloned()
            .chain(self.all_services().map(|(k, _)| k.clone()))
            .chain(
                self.config
                    .guards
                    .iter()
                    .map(|g| (g.namespace.clone(), g.service.clone())),
            )
            .collect();
        for key in keys {
            self.reconcile(&key, false);
        }
    }

    fn start_watch(&mut self, scope: Scope) {
        self.generations += 1;
        let generation = self.generations;
        let api = scope.services(&self.parts.client);
        let stop = self.stop.child_token();
        self.tasks.spawn(watch_services(
            api,
            scope.clone(),
            generation,
            self.events.clone(),
            stop.clone(),
        ));
        self.watches.insert(
            scope,
            Watch {
                generation,
                stop,
                services: BTreeMap::new(),
                pending: None,
                listed: false,
            },
        );
        // Not listed yet: `/readyz` says so until it is.
        self.dirty = true;
    }

    /// Drops the previous config's watches once every current one has listed; returns what
    /// to bring in line then: every guard, and every Service the dropped watches held.
    fn retire_if_listed(&mut self) -> Vec<Key> {
        if self.retiring.is_empty() || !self.watches.values().all(|w| w.listed) {
            return Vec::new();
        }
        let mut keys: Vec<Key> = self.guards.keys().cloned().collect();
        for (scope, w) in std::mem::take(&mut self.retiring) {
            w.stop.cancel();
            debug!(%scope, "service watch stopped");
            keys.extend(w.services.into_keys());
        }
        keys
    }

    fn all_services(&self) -> impl Iterator<Item = (&Key, &Arc<Service>)> {
        self.watches
            .values()
            .chain(self.retiring.values())
            .flat_map(|w| w.services.iter())
    }

    /// The Service at `key`: from a current watch that has listed its namespace; else, while
    /// a reload's new watches list, from whichever watch holds it.
    fn service(&self, key: &Key) -> Option<Arc<Service>> {
        let listed = self
            .watches
            .iter()
            .find(|(scope, w)| w.listed && scope.covers(&key.0));
        match listed {
            Some((_, w)) => w.services.get(key).cloned(),
            None => self
                .watches
                .values()
                .chain(self.retiring.values())
                .find_map(|w| w.services.get(key))
                .cloned(),
        }
    }

    /// Whether a listed watch covers `namespace`.
    fn listed(&self, namespace: &str) -> bool {
        self.watches
            .iter()
            .chain(self.retiring.iter())
            .any(|(scope, w)| w.listed && scope.covers(namespace))
    }

    fn on_event(&mut self, scope: &Scope, generation: u64, event: watcher::Event<Service>) {
        // A retiring watch still counts until the new ones have listed.
        let Some(w) = self
            .watches
            .get_mut(scope)
            .or_else(|| self.retiring.get_mut(scope))
            .filter(|w| w.generation == generation)
        else {
            return;
        };
        match event {
            watcher::Event::Init => w.pending = Some(BTreeMap::new()),
            watcher::Event::InitApply(svc) => {
                if let Some(pending) = &mut w.pending {
                    pending.insert(key_of(&svc), Arc::new(svc));
                }
            }
            watcher::Event::InitDone => {
                let fresh = w.pending.take().unwrap_or_default();
                let old = std::mem::replace(&mut w.services, fresh);
                let relisted = std::mem::replace(&mut w.listed, true);
                let count = w.services.len();
                let mut keys: BTreeSet<Key> = old
                    .into_keys()
                    .chain(w.services.keys().cloned())
                    .chain(self.guards.keys().filter(|k| scope.covers(&k.0)).cloned())
                    .collect();
                keys.extend(self.retire_if_listed());
                // Every Service is fed again: whatever changed while the watch was down is the
                // current state now, and may have changed a while ago.
                if relisted {
                    for (key, r) in &self.guards {
                        if scope.covers(&key.0) {
                            r.relisted.store(true, Ordering::SeqCst);
                        }
                    }
                }
                for key in keys {
                    self.reconcile(&key, true);
                }
                for (key, r) in &self.guards {
                    if scope.covers(&key.0) {
                        r.handle.ready.store(true, Ordering::Relaxed);
                        if relisted {
                            self.parts
                                .metrics
                                .service_relists_total
                                .with_label_values(&[&r.config.name])
                                .inc();
                        }
                    }
                }
                if relisted {
                    info!(%scope, services = count, "service watch re-listed");
                } else {
                    info!(%scope, services = count, "service watch established");
                    self.dirty = true;
                }
            }
            watcher::Event::Apply(svc) => {
                let key = key_of(&svc);
                w.services.insert(key.clone(), Arc::new(svc));
                if w.listed {
                    self.reconcile(&key, true);
                }
            }
            watcher::Event::Delete(svc) => {
                let key = key_of(&svc);
                w.services.remove(&key);
                if let Some(r) = self.guards.get(&key).filter(|r| r.source == Source::Config) {
                    warn!(guard = %r.config.name, namespace = %key.0, service = %key.1, "guarded service was deleted");
                }
                self.reconcile(&key, false);
            }
        }
    }

    /// The guard `key` should have under the config in force, if any.
    fn desired(
        &self,
        key: &Key,
        svc: Option<&Service>,
    ) -> Option<(GuardConfig, Source, Option<String>)> {
        let Some(svc) = svc else {
            // Before its Service is seen, or after it is gone, only an explicit guard stays.
            let g = self
                .config
                .guards
                .iter()
                .find(|g| g.namespace == key.0 && g.service == key.1)?;
            return Some((coverage::bind_explicit(g, None).0, Source::Config, None));
        };
        match coverage::cover(&self.config, svc) {
            Coverage::Guarded {
                guard,
                source,
                warning,
            } => Some((*guard, source, warning)),
            Coverage::Unguarded { reason } => {
                debug!(namespace = %key.0, service = %key.1, reason, "service not guarded");
                None
            }
        }
    }

    /// Brings the guard of the Service at `key` in line: starts, rebinds or stops it. `feed`
    /// hands a running guard the Service as it is now; a new guard always gets it. Never waits
    /// on a guard: both go through the guard's own `watch` channels, newest wins.
    fn reconcile(&mut self, key: &Key, feed: bool) {
        let svc = self.service(key);
        let desired = self.desired(key, svc.as_deref());
        let Some((guard, source, warning)) = desired else {
            self.stop_guard(key);
            return;
        };
        let same = self.guards.get(key).is_some_and(|r| {
            r.config.name == guard.name && r.config.version_label == guard.version_label
        });
        if !same {
            self.stop_guard(key);
            if let Some(warning) = &warning {
                warn!(guard = %guard.name, "{warning}");
            }
            self.start_guard(key.clone(), guard, source);
        } else if let Some(r) = self.guards.get_mut(key)
            && (*r.config != guard || r.source != source)
        {
            if let Some(warning) = &warning {
                warn!(guard = %guard.name, "{warning}");
            }
            let config = Arc::new(guard);
            r.config = config.clone();
            r.handle.config = config.clone();
            r.source = source.clone();
            r.bind.send_replace(Bound { config, source });
            self.dirty = true;
        } else if !feed {
            return;
        }
        if let (Some(r), Some(svc)) = (self.guards.get(key), svc) {
            r.observe.send_replace(Some(svc));
        }
    }

    fn start_guard(&mut self, key: Key, guard: GuardConfig, source: Source) {
        let config = Arc::new(guard);
        let p = &self.parts;
        let service = ServiceHandle::new(&p.client, &config);
        let lane_stop = self.shutdown.child_token();
        let (task, ends) = GuardTask::new(
            config.clone(),
            source.clone(),
            service,
            Writers {
                lane: p.lanes.opener(lane_stop.clone()),
                baselines: p.baselines.clone(),
            },
            p.metrics.clone(),
            p.wake.clone(),
            p.clock.clone(),
        );
        let stop = self.stop.child_token();
        self.tasks.spawn(task.run(stop.clone()));
        ends.handle
            .ready
            .store(self.listed(&key.0), Ordering::Relaxed);
        p.metrics.guards.with_label_values(&[kind(&source)]).inc();
        info!(guard = %config.name, source = %source, namespace = %key.0, service = %key.1, "guard started");
        self.guards.insert(
            key,
            Running {
                source,
                config,
                handle: ends.handle,
                stop,
                lane_stop,
                bind: ends.bind,
                observe: ends.observe,
                relisted: ends.relisted,
            },
        );
        self.dirty = true;
    }

    fn stop_guard(&mut self, key: &Key) {
        let Some(r) = self.guards.remove(key) else {
            return;
        };
        // The lane finishes the write in hand, if any, and takes no other: the guard that
        // decided them is gone, and the Service may no longer be its to write.
        r.stop.cancel();
        r.lane_stop.cancel();
        r.handle.retired.store(true, Ordering::SeqCst);
        let metrics = &self.parts.metrics;
        // Another guard by that name (its Service renamed in the config) keeps the series.
        if !self.guards.values().any(|g| g.config.name == r.config.name) {
            metrics.remove_guard(&r.config);
        }
        metrics.guards.with_label_values(&[kind(&r.source)]).dec();
        info!(guard = %r.config.name, source = %r.source, "guard stopped");
        self.dirty = true;
    }

    fn publish_now(&mut self) {
        self.dirty = false;
        let order: std::collections::HashMap<&str, usize> = self
            .config
            .guards
            .iter()
            .enumerate()
            .map(|(i, g)| (g.name.as_str(), i))
            .collect();
        let mut explicit: Vec<(usize, GuardHandle)> = Vec::new();
        let mut templated = Vec::new();
        for r in self.guards.values() {
            match r.source {
                Source::Config => {
                    let at = order
                        .get(r.config.name.as_str())
                        .copied()
                        .unwrap_or(usize::MAX);
                    explicit.push((at, r.handle.clone()));
                }
                Source::Template(_) => templated.push(r.handle.clone()),
            }
        }
        explicit.sort_by_key(|(at, _)| *at);
        let guards = explicit
            .into_iter()
            .map(|(_, h)| h)
            .chain(templated)
            .collect();
        let waiting = self
            .watches
            .iter()
            .filter(|(_, w)| !w.listed)
            .map(|(scope, _)| format!("the service watch of {scope}"))
            .collect();
        self.publish.send_replace(Arc::new(GuardSet {
            waiting,
            ..GuardSet::new(guards)
        }));
    }
}

/// The `source` label of the guards gauge: a closed set.
fn kind(source: &Source) -> &'static str {
    match source {
        Source::Config => "config",
        Source::Template(_) => "template",
    }
}

/// Feeds one scope's Services to the fleet until `stop`, re-listing on 410 and reopening
/// closed watches with backoff.
async fn watch_services(
    api: Api<Service>,
    scope: Scope,
    generation: u64,
    events: mpsc::Sender<Tagged>,
    stop: CancellationToken,
) {
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => return,
            event = stream.next() => event,
        };
        let event = match event {
            None => return,
            Some(Ok(event)) => event,
            Some(Err(e)) => {
                warn!(%scope, error = %crate::error::chain(&e), "service watch failed; retrying with backoff");
                continue;
            }
        };
        // Nothing here reads kubectl's last-applied copy or most of managedFields, often the
        // largest parts of a Service, and every Service in scope is kept.
        let event = match event {
            watcher::Event::Apply(svc) => watcher::Event::Apply(slim(svc)),
            watcher::Event::InitApply(svc) => watcher::Event::InitApply(slim(svc)),
            watcher::Event::Delete(svc) => watcher::Event::Delete(slim(svc)),
            other => other,
        };
        if events
            .send((scope.clone(), generation, event))
            .await
            .is_err()
        {
            return;
        }
    }
}

/// The Service as kept: its metadata and selector, all that coverage and the guards read, and
/// of its managed fields only who wrote the selector when. Of a real Service, the rest of the
/// spec, the status and the rest of the managed fields are most of it.
fn slim(mut svc: Service) -> Service {
    svc.metadata.managed_fields = svc
        .metadata
        .managed_fields
        .take()
        .and_then(crate::service::selector_fields);
    svc.spec = svc.spec.map(|spec| ServiceSpec {
        selector: spec.selector,
        ..ServiceSpec::default()
    });
    svc.status = None;
    if let Some(a) = &mut svc.metadata.annotations {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
    svc
}
