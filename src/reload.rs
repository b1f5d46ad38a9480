//! Rotation without a restart: the webhook's secret file and the TLS certificate and key are
//! re-read when their contents change, and swapped in atomically.
//!
//! One task checks every `webhook.reload_interval`. It reads the files (following symlinks, so a
//! Kubernetes Secret volume's `..data` swap reads as the new files) and compares a SHA-256 of
//! their contents with the last one seen: a rewrite of the same length within the same mtime
//! tick is still noticed, and an unchanged file costs one small read. New contents that cannot be
//! used (an unreadable or empty file, a key that does not match its certificate) keep the
//! previous secret in force, warn once per change and count
//! `secret_reload_errors_total{file}`. Log lines name the config key and the path, never the
//! contents.
//!
//! It deliberately does not use inotify: polling behaves the same on every volume type and needs
//! no special case for symlink swaps. It does not reload the config file itself.

use std::io::ErrorKind;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::error::{Error, Result, chain};
use crate::metrics::Metrics;

/// Which secret a file holds: the closed label set of `secret_reload_errors_total{file}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretKind {
    /// `webhook.bearer_token_file`.
    Token,
    /// `webhook.basic_auth.password_file`.
    Password,
    /// `webhook.tls.cert_file` with `webhook.tls.key_file`, as one pair.
    Tls,
    /// `prometheus.bearer_token_file`.
    PrometheusToken,
    /// `prometheus.basic_auth.password_file`.
    PrometheusPassword,
    /// `prometheus.tls.ca_file`, `cert_file` and `key_file`, as one.
    PrometheusTls,
    /// `notifications[].url_file`.
    NotificationUrl,
    /// `notifications[].bearer_token_file`.
    NotificationToken,
}

impl SecretKind {
    /// Every label value, for metrics that start at zero.
    pub const ALL: [Self; 8] = [
        Self::Token,
        Self::Password,
        Self::Tls,
        Self::PrometheusToken,
        Self::PrometheusPassword,
        Self::PrometheusTls,
        Self::NotificationUrl,
        Self::NotificationToken,
    ];

    /// The metric label value.
    #[must_use]
    pub fn as_label(self) -> &'static str {
        match self {
            Self::Token => "token",
            Self::Password => "password",
            Self::Tls => "tls",
            Self::PrometheusToken => "prometheus_token",
            Self::PrometheusPassword => "prometheus_password",
            Self::PrometheusTls => "prometheus_tls",
            Self::NotificationUrl => "notification_url",
            Self::NotificationToken => "notification_token",
        }
    }
}

/// What the watcher last saw. Unreadable states are remembered too, so a file that stays
/// missing warns once, not at every check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Contents([u8; 32]),
    Unreadable { file: usize, kind: ErrorKind },
}

/// The outcome of one check of a [`Watched`] set.
#[derive(Debug)]
pub enum Polled {
    /// Same contents, or the same failure, as last time.
    Unchanged,
    /// New contents, one entry per file in order.
    Changed(Vec<Vec<u8>>),
    /// A file could not be read (newly so, or differently from last time).
    Unreadable(Error),
}

/// Files read together as one secret (a certificate and its key are one), with a digest of the
/// contents last seen.
#[derive(Debug)]
pub struct Watched {
    files: Vec<(&'static str, PathBuf)>,
    last: Mutex<Option<Seen>>,
}

impl Watched {
    /// Files by config key and path, e.g. `("webhook.bearer_token_file", "/etc/.../token")`.
    #[must_use]
    pub fn new(files: Vec<(&'static str, PathBuf)>) -> Self {
        Self {
            files,
            last: Mutex::new(None),
        }
    }

    /// The files' config keys and paths, for log lines.
    #[must_use]
    pub fn describe(&self) -> String {
        self.files
            .iter()
            .map(|(key, path)| format!("{key} {}", path.display()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn read_all(&self) -> std::result::Result<Vec<Vec<u8>>, (usize, Error)> {
        self.files
            .iter()
            .enumerate()
            .map(|(i, (key, path))| {
                std::fs::read(path).map_err(|source| {
                    let context = format!("failed to read {key} {}", path.display());
                    (i, Error::Io { context, source })
                })
            })
            .collect()
    }

    fn digest(contents: &[Vec<u8>]) -> [u8; 32] {
        let mut hasher = Sha256::new();
        for c in contents {
            // Length-prefixed, so moving bytes from the certificate to the key is a change.
            hasher.update((c.len() as u64).to_le_bytes());
            hasher.update(c);
        }
        hasher.finalize().into()
    }

    fn remember(&self, seen: Seen) -> bool {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let changed = *last != Some(seen);
        *last = Some(seen);
        changed
    }

    /// Takes `contents`, read elsewhere, as the last seen: the next [`Watched::poll`] reports a
    /// change only if the files differ from them.
    pub fn seed(&self, contents: &[Vec<u8>]) {
        self.remember(Seen::Contents(Self::digest(contents)));
    }

    /// Reads every file now, as at startup, where an unreadable file is an error.
    pub fn read(&self) -> Result<Vec<Vec<u8>>> {
        let contents = self.read_all().map_err(|(_, e)| e)?;
        self.remember(Seen::Contents(Self::digest(&contents)));
        Ok(contents)
    }

    /// Reads every file and says whether anything changed since the last read.
    pub fn poll(&self) -> Polled {
        match self.read_all() {
            Ok(contents) => {
                if self.remember(Seen::Contents(Self::digest(&contents))) {
                    Polled::Changed(contents)
                } else {
                    Polled::Unchanged
                }
            }
            Err((file, error)) => {
                let kind = match &error {
                    Error::Io { source, .. } => source.kind(),
                    _ => ErrorKind::Other,
                };
                if self.remember(Seen::Unreadable { file, kind }) {
                    Polled::Unreadable(error)
                } else {
                    Polled::Unchanged
                }
            }
        }
    }
}

/// A secret that takes new file contents while the watchdog serves.
pub trait Reload: Send + Sync {
    /// Which secret this is, for the metric label.
    fn kind(&self) -> SecretKind;
    /// Its files.
    fn watched(&self) -> &Watched;
    /// Parses `contents` (one entry per file) and swaps them in; on error the previous secret
    /// stays in force. The error must not quote the contents.
    fn apply(&self, contents: &[Vec<u8>]) -> Result<()>;
}

/// Applies `contents`; if they do not fit, reads once more and applies that if it changed
/// meanwhile. Two files read one after the other can straddle a rotation (the old certificate
/// with the new key) even when the kubelet swaps them together.
fn apply_settled(target: &dyn Reload, contents: &[Vec<u8>]) -> Result<()> {
    let Err(first) = target.apply(contents) else {
        return Ok(());
    };
    match target.watched().poll() {
        Polled::Changed(settled) => target.apply(&settled),
        Polled::Unchanged | Polled::Unreadable(_) => Err(first),
    }
}

/// The task that checks every [`Reload`] each `reload_interval`.
pub struct Reloader {
    /// What to check; empty means the task ends at once.
    pub targets: Vec<Arc<dyn Reload>>,
    /// Where failed reloads are counted.
    pub metrics: Metrics,
    /// `webhook.reload_interval`.
    pub interval: Duration,
}

impl Reloader {
    /// One round: reads every target's files, applies new contents, warns about bad ones.
    /// Blocking file IO: call from a blocking context.
    pub fn check(&self) {
        for target in &self.targets {
            let kind = target.kind();
            let files = target.watched().describe();
            let failed = match target.watched().poll() {
                Polled::Unchanged => continue,
                Polled::Changed(contents) => match apply_settled(target.as_ref(), &contents) {
                    Ok(()) => {
                        info!(file = kind.as_label(), files, "secret reloaded");
                        continue;
                    }
                    Err(e) => e,
                },
                Polled::Unreadable(e) => e,
            };
            warn!(
                file = kind.as_label(),
                files,
                error = %chain(&failed),
                "secret reload failed; the previous one stays in force"
            );
            self.metrics
                .secret_reload_errors_total
                .with_label_values(&[kind.as_label()])
                .inc();
        }
    }

    /// Checks every `interval` until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        if self.targets.is_empty() {
            return;
        }
        let this = Arc::new(self);
        let mut ticks = tokio::time::interval(this.interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ticks.tick().await; // the first tick is immediate; the secrets were just loaded
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            // Secret volumes are local, but a stuck read must still not stall a runtime thread.
            let round = this.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || round.check()).await {
                warn!(error = %e, "secret reload round panicked");
            }
        }
    }
}
