//! Live config: the config file is read again when its contents change, and on SIGHUP.
//!
//! Every `config_reload_interval` the file is read (following symlinks, so a
//! `ConfigMap` volume's `..data` swap reads as the new file) and compared by digest with the
//! last read. New contents are validated in full, and a namespace they add is access-checked, before anything
//! changes; a refusal keeps the old config in force, warns once naming the key or the
//! permission, and sets `config_last_reload_successful` to 0. Keys that only take effect at
//! start-up keep their old values, with a warning naming them.
//!
//! It only decides which config is in force and publishes it: the fleet and the poller put it
//! to work. It does not watch the secret files the config points at ([`crate::reload`] does).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::access;
use crate::config::Config;
use crate::error::{Error, Result, chain};
use crate::metrics::Metrics;
use crate::reload::{Polled, Watched};

/// The task that follows the config file.
pub struct ConfigReloader {
    path: PathBuf,
    watched: Arc<Watched>,
    in_force: Arc<Config>,
    configs: watch::Sender<Arc<Config>>,
    metrics: Metrics,
    client: kube::Client,
    /// SIGHUP, listened for from construction: a SIGHUP's default action ends the process, so
    /// the listener must be in place before the watchdog serves (and says it is ready), not
    /// whenever the task first runs.
    hangup: Option<tokio::signal::unix::Signal>,
}

impl ConfigReloader {
    /// Follows the file at `path`, whose contents `loaded` gave `in_force`; publishes to
    /// `configs`. Listens for SIGHUP from here on, so it must be called inside the runtime.
    #[must_use]
    pub fn new(
        path: PathBuf,
        loaded: &str,
        in_force: Config,
        configs: watch::Sender<Arc<Config>>,
        metrics: Metrics,
        client: kube::Client,
    ) -> Self {
        let watched = Arc::new(Watched::new(vec![("config", path.clone())]));
        // What was loaded is the baseline, not what the file holds when the task first runs: an
        // edit in between is then a change like any other.
        watched.seed(&[loaded.as_bytes().to_vec()]);
        let hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGHUP; the config file is still checked every config_reload_interval");
                None
            }
        };
        Self {
            path,
            watched,
            in_force: Arc::new(in_force),
            configs,
            metrics,
            client,
            hangup,
        }
    }

    /// Checks every `config_reload_interval`, and at each SIGHUP, until `stop`.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut hangup = self.hangup.take();
        let mut interval = self.in_force.config_reload_interval;
        let mut ticks = ticker(interval);
        loop {
            let forced = tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => false,
                Some(()) = async { hangup.as_mut()?.recv().await } => true,
            };
            if forced {
                info!(path = %self.path.display(), "SIGHUP: reading the config file");
            }
            let text = match self.read(forced).await {
                Ok(Some(text)) => text,
                Ok(None) => continue,
                Err(e) => {
                    self.refuse(&e);
                    continue;
                }
            };
            match self.consider(&text).await {
                Ok(()) => {
                    if self.in_force.config_reload_interval != interval {
                        interval = self.in_force.config_reload_interval;
                        ticks = ticker(interval);
                    }
                }
                Err(e) => self.refuse(&e),
            }
        }
    }

    /// The file's contents if they changed since the last read (or whatever they are, when
    /// `forced`); an unreadable file is an error once, not at every check.
    async fn read(&self, forced: bool) -> Result<Option<Vec<u8>>> {
        let watched = self.watched.clone();
        let polled = tokio::task::spawn_blocking(move || {
            if forced {
                watched
                    .read()
                    .map_or_else(Polled::Unreadable, Polled::Changed)
            } else {
                watched.poll()
            }
        })
        .await
        .map_err(|source| Error::Task {
            what: "config reload",
            source,
        })?;
        match polled {
            Polled::Unchanged => Ok(None),
            Polled::Changed(mut files) => Ok(files.pop()),
            Polled::Unreadable(e) => Err(e),
        }
    }

    /// Validates `text` in full, checks the access a new namespace needs, and puts it in force.
    async fn consider(&mut self, text: &[u8]) -> Result<()> {
        let text = String::from_utf8_lossy(text);
        let new = Config::parse(&text, &self.path)?;
        let restart = self.in_force.restart_keys_changed(&new);
        let new = self.in_force.reloaded(new);
        let lease = access::lease_namespace(&new, &self.client);
        let before = access::needed_in(&self.in_force, lease.as_deref());
        let added: std::collections::BTreeSet<_> = access::needed_in(&new, lease.as_deref())
            .into_iter()
            .filter(|p| !before.contains(p))
            .collect();
        if !added.is_empty() {
            access::check(&self.client, added, new.kube_timeout).await?;
        }
        if !restart.is_empty() {
            warn!(
                keys = %restart.join(", "),
                "config reloaded, but these keys only take effect at a restart; they keep their old values"
            );
        }
        info!(
            path = %self.path.display(),
            guards = new.guards.len(),
            templates = new.templates.len(),
            "config reloaded"
        );
        self.in_force = Arc::new(new);
        self.configs.send_replace(self.in_force.clone());
        self.metrics.config_last_reload_successful.set(1);
        self.metrics
            .config_last_reload_success_timestamp_seconds
            .set(jiff::Timestamp::now().as_millisecond() as f64 / 1000.0);
        Ok(())
    }

    fn refuse(&self, e: &Error) {
        warn!(error = %chain(e), "config reload refused; the config in force stays");
        self.metrics.config_last_reload_successful.set(0);
    }
}

fn ticker(every: Duration) -> tokio::time::Interval {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticks
}
