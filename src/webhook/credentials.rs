//! The webhook's credentials: the one `Authorization` header value it accepts (a bearer token or
//! basic auth), kept as a SHA-256 digest and compared in constant time, and swapped in place when
//! its secret file is rotated.
//!
//! [`crate::reload`] decides when a file has changed; this only turns new contents into the
//! accepted digest, or refuses them. It deliberately does not answer requests (the handler turns
//! a refusal into a 401) and never logs or returns a secret: errors name the key and path only.

use std::path::{Path, PathBuf};
use std::sync::{PoisonError, RwLock};

use axum::http::HeaderValue;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::WebhookConfig;
use crate::error::{Error, Result};
use crate::reload::{Reload, SecretKind, Watched};

fn digest(value: &[u8]) -> [u8; 32] {
    Sha256::digest(value).into()
}

/// A secret file's contents: trimmed of surrounding whitespace and the trailing newline, and
/// never empty. Errors name the key and path, never the contents.
fn parse_secret(key: &str, path: &Path, bytes: &[u8]) -> Result<String> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| Error::Unusable(format!("{key} {} is not UTF-8 text", path.display())))?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(Error::Unusable(format!(
            "{key} {} is empty",
            path.display()
        )));
    }
    Ok(secret.to_owned())
}

/// SHA-256 of the `Authorization` header value `contents` (the secret file's) make.
fn header_digest(
    scheme: &Scheme,
    key: &str,
    path: &Path,
    contents: &[Vec<u8>],
) -> Result<[u8; 32]> {
    let bytes = contents.first().map_or(&[][..], Vec::as_slice);
    let secret = parse_secret(key, path, bytes)?;
    Ok(match scheme {
        Scheme::Bearer => digest(format!("Bearer {secret}").as_bytes()),
        Scheme::Basic { username } => {
            let encoded =
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{secret}"));
            digest(format!("Basic {encoded}").as_bytes())
        }
    })
}

/// How the accepted `Authorization` header is built from the secret.
enum Scheme {
    Bearer,
    Basic { username: String },
}

/// The `Authorization` header the webhook accepts, from a file that may be rotated.
pub struct Credentials {
    kind: SecretKind,
    key: &'static str,
    path: PathBuf,
    scheme: Scheme,
    watched: Watched,
    /// SHA-256 of the exact `Authorization` header value that is accepted. Comparing digests
    /// keeps the comparison constant-time whatever the lengths, and keeps no secret in memory
    /// longer than a load.
    expected: RwLock<[u8; 32]>,
}

impl Credentials {
    /// The credentials `config` asks for, loaded; `None` when the endpoint is open.
    pub fn from_config(config: &WebhookConfig) -> Result<Option<Self>> {
        let (kind, key, path, scheme) = if let Some(path) = &config.bearer_token_file {
            (
                SecretKind::Token,
                "webhook.bearer_token_file",
                path,
                Scheme::Bearer,
            )
        } else if let Some(basic) = &config.basic_auth {
            let scheme = Scheme::Basic {
                username: basic.username.clone(),
            };
            (
                SecretKind::Password,
                "webhook.basic_auth.password_file",
                &basic.password_file,
                scheme,
            )
        } else {
            return Ok(None);
        };
        let watched = Watched::new(vec![(key, path.clone())]);
        let expected = header_digest(&scheme, key, path, &watched.read()?)?;
        Ok(Some(Self {
            kind,
            key,
            path: path.clone(),
            scheme,
            watched,
            expected: RwLock::new(expected),
        }))
    }

    /// Whether `given` (the raw header value) is the accepted one, in constant time.
    pub(super) fn accepts(&self, given: &[u8]) -> bool {
        let expected = *self.expected.read().unwrap_or_else(PoisonError::into_inner);
        digest(given).ct_eq(&expected).into()
    }

    /// The `WWW-Authenticate` challenge of a 401: the scheme that would be accepted, so a client
    /// that sent the wrong kind of credentials learns which kind to send.
    pub(super) fn challenge(&self) -> HeaderValue {
        HeaderValue::from_static(match self.scheme {
            Scheme::Bearer => "Bearer realm=\"cutover-watchdog\"",
            Scheme::Basic { .. } => "Basic realm=\"cutover-watchdog\"",
        })
    }
}

impl Reload for Credentials {
    fn kind(&self) -> SecretKind {
        self.kind
    }

    fn watched(&self) -> &Watched {
        &self.watched
    }

    fn apply(&self, contents: &[Vec<u8>]) -> Result<()> {
        let expected = header_digest(&self.scheme, self.key, &self.path, contents)?;
        *self
            .expected
            .write()
            .unwrap_or_else(PoisonError::into_inner) = expected;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::config::Config;
    use crate::metrics::Metrics;
    use crate::reload::Reloader;

    /// Every line logged while a test runs, at every level.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn token_rotation_and_its_failures_are_logged_without_the_token() {
        const FIRST: &str = "first-unit-token-5b1e";
        const SECOND: &str = "second-unit-token-90d2";
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, format!("{FIRST}\n")).unwrap();
        let config = Config::from_yaml(&format!(
            "prometheus: {{url: 'http://127.0.0.1:9090'}}\nwebhook: {{bearer_token_file: {}}}\nguards:\n- {{name: g, service: s}}\n",
            token.display()
        ))
        .unwrap();
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let metrics = Metrics::new().unwrap();
        tracing::subscriber::with_default(subscriber, || {
            let credentials = Arc::new(Credentials::from_config(&config.webhook).unwrap().unwrap());
            let reloader = Reloader {
                targets: vec![credentials.clone()],
                metrics: metrics.clone(),
                interval: std::time::Duration::from_secs(1),
            };
            let accepts = |t: &str| credentials.accepts(format!("Bearer {t}").as_bytes());
            assert!(accepts(FIRST) && !accepts(SECOND));

            std::fs::write(&token, SECOND).unwrap();
            reloader.check();
            assert!(accepts(SECOND) && !accepts(FIRST), "rotated");

            std::fs::write(&token, " \n").unwrap();
            reloader.check();
            reloader.check(); // the same bad contents warn once
            std::fs::remove_file(&token).unwrap();
            reloader.check();
            assert!(
                accepts(SECOND),
                "an empty or missing file keeps the previous token"
            );

            std::fs::write(&token, FIRST).unwrap();
            reloader.check();
            assert!(
                accepts(FIRST) && !accepts(SECOND),
                "back after the failures"
            );
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.matches("secret reloaded").count(), 2, "{text}");
        assert_eq!(text.matches("secret reload failed").count(), 2, "{text}");
        assert!(
            text.contains("is empty") && text.contains("failed to read"),
            "{text}"
        );
        for secret in [FIRST, SECOND] {
            assert!(!text.contains(secret), "{secret} logged:\n{text}");
        }
        let series = "cutover_watchdog_secret_reload_errors_total{file=\"token\"} 2";
        assert!(metrics.render().contains(series), "{}", metrics.render());
    }
}
