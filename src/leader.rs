//! Leader election on a `coordination.k8s.io/v1` Lease, and the [`Fence`] every write checks.
//!
//! Built on kube's typed `Api<Lease>` rather than a crate. `kube-leader-election` says of itself
//! that it has no fencing; `kube-lease-manager` judges expiry by comparing the holder's
//! `renewTime` with the local wall clock, keeps reporting "leader" while renewals fail, and
//! needs server-side apply. What we need is small: client-go's rule, a `resourceVersion`
//! precondition on every Lease write, and a monotonic deadline.
//!
//! The rule ([`next_step`], pure): a replica renews a Lease it holds, takes one that is free or
//! that it has seen unchanged for `lease_duration` by its own clock, and otherwise follows.
//! The fence: after a renewal that succeeded, the leader may write until
//! `sent + lease_duration - fence_margin`, where `sent` is when that renewal *started*. Another
//! replica takes over only `lease_duration` after it *saw* the renewal, which is later, so the
//! two never act at once while a write takes less than `fence_margin` to land.
//!
//! Losing the Lease is final: [`Elector::run`] returns [`Error::LeadershipLost`] and the process
//! stops, to come back as a follower. It does not decide readiness or what a follower does;
//! that is `app`'s and `http`'s.
//!
//! The leader writes where it takes requests on the Lease, in the annotation
//! [`LEADER_ADDRESS`], and every replica publishes the Lease's holder and address as it last
//! read them ([`Lead`]), so that a follower can forward what only the leader may act on.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::LeaderElectionConfig;
use crate::error::{Error, Result, chain};
use crate::metrics::Metrics;

/// The Lease annotation where the leader says where it takes requests: `POD_IP:port`.
pub const LEADER_ADDRESS: &str = "cutover-watchdog.io/leader-address";

/// Who leads, as this replica last read the Lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lead {
    /// The Lease has not been read yet.
    Unknown,
    /// Nobody holds the Lease.
    Vacant,
    /// `holder` (its Pod name) holds it and takes requests at `address`, if it said where.
    Held {
        holder: String,
        address: Option<String>,
    },
}

impl Lead {
    /// Who holds the Lease now, with the address it published.
    fn of(lease: Option<&Lease>) -> Self {
        let holder = lease
            .and_then(|l| l.spec.as_ref())
            .and_then(|s| s.holder_identity.as_deref())
            .filter(|h| !h.is_empty());
        let Some(holder) = holder else {
            return Self::Vacant;
        };
        let address = lease
            .and_then(|l| l.metadata.annotations.as_ref())
            .and_then(|a| a.get(LEADER_ADDRESS))
            .cloned();
        Self::Held {
            holder: pod_of(holder).to_owned(),
            address,
        }
    }
}

/// The Pod name in a holder identity, `<pod>_<per-process suffix>`.
#[must_use]
pub fn pod_of(identity: &str) -> &str {
    identity.rsplit_once('_').map_or(identity, |(pod, _)| pod)
}

/// Whether this replica may write now. Cheap to clone and to check.
#[derive(Clone, Debug)]
pub struct Fence(Option<watch::Receiver<Option<Instant>>>);

impl Fence {
    /// A fence that always allows: no leader election, one replica.
    #[must_use]
    pub fn open() -> Self {
        Self(None)
    }

    /// A fence that never allows: a follower's.
    #[must_use]
    pub fn closed() -> Self {
        let (_, rx) = watch::channel(None);
        Self(Some(rx))
    }

    /// Whether a write may start now.
    #[must_use]
    pub fn allows(&self) -> bool {
        self.remaining().is_some()
    }

    /// How long writes may still start; `None` once they may not. Unbounded without election.
    #[must_use]
    pub fn remaining(&self) -> Option<Duration> {
        match &self.0 {
            None => Some(Duration::MAX),
            Some(rx) => {
                let until = (*rx.borrow())?;
                let left = until.saturating_duration_since(Instant::now());
                (!left.is_zero()).then_some(left)
            }
        }
    }

    /// Resolves once this replica leads (at once without election); `false` if the elector
    /// stopped first.
    pub async fn leading(&mut self) -> bool {
        let Some(rx) = &mut self.0 else { return true };
        rx.wait_for(Option::is_some).await.is_ok()
    }
}

/// What to do with the Lease as last read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// There is no Lease yet.
    Create,
    /// We hold it: renew.
    Renew,
    /// It is free, or its holder stopped renewing: take it.
    Acquire,
    /// Someone else holds it and renews it.
    Follow { holder: String },
}

/// The election rule. `unchanged_for` is how long this replica has seen the Lease unchanged,
/// by its own monotonic clock: never the holder's timestamps, so clock skew cannot matter.
#[must_use]
pub fn next_step(
    me: &str,
    spec: Option<&LeaseSpec>,
    unchanged_for: Duration,
    lease_duration: Duration,
) -> Step {
    let Some(spec) = spec else {
        return Step::Create;
    };
    match spec.holder_identity.as_deref() {
        Some(holder) if holder == me => Step::Renew,
        None | Some("") => Step::Acquire,
        Some(_) if unchanged_for >= lease_duration => Step::Acquire,
        Some(holder) => Step::Follow {
            holder: holder.to_owned(),
        },
    }
}

/// Campaigns for the Lease, renews it while leading, and publishes the fence deadline.
pub struct Elector {
    leases: Api<Lease>,
    namespace: String,
    name: String,
    identity: String,
    config: LeaderElectionConfig,
    metrics: Metrics,
    deadline: watch::Sender<Option<Instant>>,
    /// Where this replica takes requests, published on the Lease while it leads.
    address: Option<String>,
    lead: watch::Sender<Lead>,
}

/// The Lease as this replica last saw it change.
struct Seen {
    resource_version: Option<String>,
    at: Instant,
}

impl Elector {
    /// An elector for `identity`, which takes requests at `address`; the fence that follows it,
    /// and who leads as it last read the Lease.
    #[must_use]
    pub fn new(
        client: &Client,
        config: &LeaderElectionConfig,
        (identity, address): (&str, Option<String>),
        metrics: Metrics,
    ) -> (Self, Fence, watch::Receiver<Lead>) {
        let namespace = config
            .namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_owned());
        let (deadline, rx) = watch::channel(None);
        let (lead, leads) = watch::channel(Lead::Unknown);
        let elector = Self {
            leases: Api::namespaced(client.clone(), &namespace),
            namespace,
            name: config.lease_name.clone(),
            identity: identity.to_owned(),
            config: config.clone(),
            metrics,
            deadline,
            address,
            lead,
        };
        (elector, Fence(Some(rx)), leads)
    }

    /// Runs until `release` is cancelled (then gives the Lease up if held, so a follower takes
    /// over at once) or until leadership is lost, which is an error: the caller must stop.
    pub async fn run(self, release: CancellationToken) -> Result<()> {
        let mut seen: Option<Seen> = None;
        let mut term: Option<Instant> = None;
        info!(lease = %self.name, namespace = %self.namespace, identity = %self.identity, "campaigning for leadership");
        loop {
            let started = Instant::now();
            // A leader's attempt is worthless once its term is over; a follower's is bounded
            // by the lease duration, so a hung call cannot stall the campaign.
            let budget = term.map_or(self.config.lease_duration, |t| {
                t.saturating_duration_since(started)
            });
            let attempt = tokio::time::timeout(budget, self.attempt(&mut seen)).await;
            match attempt {
                Ok(Ok(Held::Yes)) => {
                    let until = started + self.config.term();
                    if term.is_none() {
                        info!(lease = %self.name, identity = %self.identity, "became leader");
                        self.metrics.leader.set(1);
                    }
                    term = Some(until);
                    self.deadline.send_replace(Some(until));
                }
                Ok(Ok(Held::No { holder })) => {
                    if term.is_some() {
                        return Err(self.lost(format!("{holder} holds it now")));
                    }
                    debug!(lease = %self.name, %holder, "following");
                }
                Ok(Ok(Held::Raced)) => {
                    debug!(lease = %self.name, "the lease changed under our write; reading again");
                }
                Ok(Err(e)) => {
                    warn!(lease = %self.name, error = %chain(&e), "lease call failed; retrying");
                }
                Err(_) => warn!(lease = %self.name, "lease call timed out; retrying"),
            }
            // Wake at the end of the term, too: a leader that could not renew stops there.
            let mut next = Instant::now() + self.config.renew_interval;
            if let Some(t) = term {
                next = next.min(t);
            }
            tokio::select! {
                () = release.cancelled() => break,
                () = tokio::time::sleep_until(next) => {}
            }
            if term.is_some_and(|t| Instant::now() >= t) {
                return Err(self.lost("it was not renewed in time".into()));
            }
        }
        if term.is_some_and(|t| Instant::now() < t) {
            self.release().await;
        }
        Ok(())
    }

    fn lost(&self, reason: String) -> Error {
        self.deadline.send_replace(None);
        self.metrics.leader.set(0);
        Error::LeadershipLost {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            reason,
        }
    }

    /// One read and, if the rule says so, one write.
    async fn attempt(&self, seen: &mut Option<Seen>) -> Result<Held> {
        let lease = self
            .leases
            .get_opt(&self.name)
            .await
            .map_err(|e| self.error("read", e))?;
        let now = Instant::now();
        self.lead.send_if_modified(|lead| {
            let read = Lead::of(lease.as_ref());
            let changed = *lead != read;
            *lead = read;
            changed
        });
        let rv = lease
            .as_ref()
            .and_then(|l| l.metadata.resource_version.clone());
        match seen {
            Some(s) if s.resource_version == rv => {}
            _ => {
                *seen = Some(Seen {
                    resource_version: rv,
                    at: now,
                });
            }
        }
        let unchanged_for = seen.as_ref().map_or(Duration::ZERO, |s| now - s.at);
        // A Lease without a spec has no holder: free to take.
        let spec = lease.as_ref().map(|l| l.spec.clone().unwrap_or_default());
        // The holder's own duration, if longer: during a rollout that shortens it, a new
        // replica must not take over before the old leader's term can have ended.
        let recorded = spec
            .as_ref()
            .and_then(|s| s.lease_duration_seconds)
            .and_then(|secs| u64::try_from(secs).ok())
            .map_or(Duration::ZERO, Duration::from_secs);
        let lease_duration = self.config.lease_duration.max(recorded);
        let step = next_step(&self.identity, spec.as_ref(), unchanged_for, lease_duration);
        let written = match (step, lease) {
            (Step::Follow { holder }, _) => return Ok(Held::No { holder }),
            (Step::Create, _) | (_, None) => {
                let mut lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        namespace: Some(self.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.spec(None, true)),
                };
                self.annotate(&mut lease.metadata);
                self.leases.create(&PostParams::default(), &lease).await
            }
            (step, Some(mut lease)) => {
                let acquire = step == Step::Acquire;
                if acquire {
                    info!(lease = %self.name, previous = lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref()).unwrap_or(""), "taking over the lease");
                }
                lease.spec = Some(self.spec(lease.spec.take(), acquire));
                self.annotate(&mut lease.metadata);
                // Carries the resourceVersion read above: a concurrent writer makes this a 409.
                self.leases
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match written {
            Ok(lease) => {
                self.lead.send_replace(Lead::of(Some(&lease)));
                Ok(Held::Yes)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Held::Raced),
            Err(e) => Err(self.error("write", e)),
        }
    }

    /// Says on the Lease where this replica takes requests (or that it did not say, so that a
    /// previous holder's address is never taken for ours).
    fn annotate(&self, metadata: &mut ObjectMeta) {
        let annotations = metadata.annotations.get_or_insert_default();
        match &self.address {
            Some(address) => annotations.insert(LEADER_ADDRESS.to_owned(), address.clone()),
            None => annotations.remove(LEADER_ADDRESS),
        };
    }

    fn spec(&self, previous: Option<LeaseSpec>, acquire: bool) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        let previous = previous.unwrap_or_default();
        let seconds = self.config.lease_duration.as_secs_f64().ceil();
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            // Whole seconds in the object, for humans and other tools; we time by our config.
            #[allow(clippy::cast_possible_truncation)]
            lease_duration_seconds: Some(seconds.min(f64::from(i32::MAX)) as i32),
            acquire_time: if acquire {
                Some(now.clone())
            } else {
                previous.acquire_time
            },
            renew_time: Some(now),
            lease_transitions: Some(previous.lease_transitions.unwrap_or(0) + i32::from(acquire)),
            ..previous
        }
    }

    /// Gives the Lease up, so a follower need not wait for it to expire.
    async fn release(&self) {
        self.deadline.send_replace(None);
        self.metrics.leader.set(0);
        let give_up = async {
            let Some(mut lease) = self.leases.get_opt(&self.name).await? else {
                return Ok(());
            };
            let Some(spec) = lease.spec.as_mut() else {
                return Ok(());
            };
            if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
                return Ok(());
            }
            spec.holder_identity = None;
            spec.renew_time = Some(MicroTime(Timestamp::now()));
            if let Some(annotations) = lease.metadata.annotations.as_mut() {
                annotations.remove(LEADER_ADDRESS);
            }
            self.leases
                .replace(&self.name, &PostParams::default(), &lease)
                .await
                .map(drop)
        };
        match tokio::time::timeout(self.config.renew_interval, give_up).await {
            Ok(Ok(())) => info!(lease = %self.name, "released the lease"),
            Ok(Err(e)) => {
                warn!(lease = %self.name, error = %chain(&e), "failed to release the lease; it expires on its own");
            }
            Err(_) => {
                warn!(lease = %self.name, "timed out releasing the lease; it expires on its own");
            }
        }
    }

    fn error(&self, verb: &'static str, source: kube::Error) -> Error {
        Error::Kube {
            verb,
            what: "lease",
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            source: Box::new(source),
        }
    }
}

/// Whether this replica holds the Lease after an attempt.
enum Held {
    Yes,
    No {
        holder: String,
    },
    /// The Lease changed between our read and our write (409). Not yet a loss: it may be our
    /// own earlier renewal landing late. The next attempt re-reads and tells; a leader's term
    /// covers the time until then.
    Raced,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_by(holder: Option<&str>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_owned),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn the_election_rule_as_a_table() {
        let d = Duration::from_secs(15);
        let s = Duration::from_secs;
        let follow = |h: &str| Step::Follow { holder: h.into() };
        let cases: &[(&str, Option<LeaseSpec>, Duration, Step)] = &[
            ("no lease: create it", None, s(0), Step::Create),
            ("ours: renew", Some(held_by(Some("a"))), s(0), Step::Renew),
            (
                "ours, even if stale: renew",
                Some(held_by(Some("a"))),
                s(60),
                Step::Renew,
            ),
            (
                "released: take it",
                Some(held_by(None)),
                s(0),
                Step::Acquire,
            ),
            (
                "empty holder: take it",
                Some(held_by(Some(""))),
                s(0),
                Step::Acquire,
            ),
            (
                "renewed lately: follow",
                Some(held_by(Some("b"))),
                s(14),
                follow("b"),
            ),
            (
                "unchanged a whole term: take it",
                Some(held_by(Some("b"))),
                s(15),
                Step::Acquire,
            ),
        ];
        for (name, spec, unchanged, want) in cases {
            assert_eq!(
                &next_step("a", spec.as_ref(), *unchanged, d),
                want,
                "{name}"
            );
        }
    }

    #[tokio::test]
    async fn an_open_fence_always_allows_and_a_lapsed_one_never_does() {
        assert!(Fence::open().allows());
        let (tx, rx) = watch::channel(None);
        let fence = Fence(Some(rx));
        assert!(!fence.allows(), "not leading yet");
        tx.send_replace(Some(Instant::now() + Duration::from_secs(5)));
        assert!(fence.allows());
        tx.send_replace(Some(
            Instant::now()
                .checked_sub(Duration::from_millis(1))
                .unwrap(),
        ));
        assert!(!fence.allows(), "the term is over");
    }
}
