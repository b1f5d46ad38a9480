//! Notifications: what the watchdog did, with the evidence, to the receivers in
//! `notifications[]` (a Slack incoming webhook, or any endpoint that takes JSON).
//!
//! Off the decision path by design: the executor hands a [`Notice`] over without waiting (each
//! receiver has a bounded queue; a full one drops it, counted), and each receiver's task delivers
//! with a timeout and retries with backoff, so a receiver that is down or slow never delays a
//! revert. Only the leader's executor publishes Events, so only the leader notifies. A URL is
//! logged by its scheme and host only: a Slack webhook's secret is its path. It never decides
//! anything, and it reads the cluster only for the green Pods' names, best effort.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::Api;
use kube::api::ListParams;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use url::Url;

use crate::config::{NotifyFormat, ReceiverConfig};
use crate::decision::Trigger;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::reload::{Reload, SecretKind, Watched};

/// Notices waiting for one receiver: a burst of rollbacks fits; more is dropped, counted.
const QUEUE: usize = 256;
/// Attempts per notice, with doubling backoff between them from [`FIRST_BACKOFF`].
const ATTEMPTS: u32 = 3;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// One Event the watchdog published, with what a person needs to act on it.
#[derive(Debug, Clone)]
pub struct Notice {
    /// The Event's reason, e.g. `RolledBack`.
    pub event: String,
    pub warning: bool,
    pub guard: String,
    pub namespace: String,
    pub service: String,
    pub version_label: String,
    pub green: String,
    pub blue: String,
    pub trigger: Option<Trigger>,
    pub cutover_at: Timestamp,
    pub at: Timestamp,
    /// From the rollback's decision to its confirmed patch.
    pub took: Option<Duration>,
    /// The Event's note.
    pub note: String,
}

/// How a delivery ended: the closed set of `notifications_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Sent,
    Failed,
    Dropped,
}

impl Delivery {
    pub const ALL: [Self; 3] = [Self::Sent, Self::Failed, Self::Dropped];

    #[must_use]
    pub fn as_label(self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::Failed => "failed",
            Self::Dropped => "dropped",
        }
    }
}

/// Hands notices to the receivers' queues.
#[derive(Clone, Default)]
pub struct Notifier {
    receivers: Vec<Arc<Receiver>>,
}

struct Receiver {
    config: ReceiverConfig,
    queue: mpsc::Sender<Arc<Notice>>,
    /// The URL and the token in force: from the config, or read from their files (rotated).
    url: RwLock<Url>,
    token: RwLock<Option<String>>,
    metrics: Metrics,
}

impl Receiver {
    fn count(&self, result: Delivery) {
        self.metrics
            .notifications_total
            .with_label_values(&[self.config.name.as_str(), result.as_label()])
            .inc();
    }
}

impl Notifier {
    /// Reads the receivers' secret files (an unusable one is an error at start-up), starts one
    /// delivery task per receiver until `stop`, and returns the files to rotate.
    pub fn start(
        configs: &[ReceiverConfig],
        client: &kube::Client,
        metrics: &Metrics,
        stop: &CancellationToken,
    ) -> Result<(Self, Vec<Arc<dyn Reload>>)> {
        crate::tls::ring_as_default();
        let http = reqwest::Client::builder()
            .user_agent(crate::USER_AGENT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(Error::HttpClient)?;
        let mut receivers = Vec::new();
        let mut rotation: Vec<Arc<dyn Reload>> = Vec::new();
        for config in configs {
            for result in Delivery::ALL {
                metrics
                    .notifications_total
                    .with_label_values(&[config.name.as_str(), result.as_label()]);
            }
            let url_file = config.url_file.as_ref().map(|path| {
                Arc::new(Watched::new(vec![(
                    "notifications[].url_file",
                    path.clone(),
                )]))
            });
            let token_file = config.bearer_token_file.as_ref().map(|path| {
                Arc::new(Watched::new(vec![(
                    "notifications[].bearer_token_file",
                    path.clone(),
                )]))
            });
            let url = match (&config.url, &url_file) {
                (Some(url), _) => url.clone(),
                (None, Some(watched)) => parse_url(&watched.read()?)?,
                (None, None) => {
                    return Err(Error::Unusable(format!(
                        "notifications receiver {} has no url",
                        config.name
                    )));
                }
            };
            let token = match &token_file {
                Some(watched) => Some(parse_token(&watched.read()?)?),
                None => None,
            };
            let (queue, notices) = mpsc::channel(QUEUE);
            let receiver = Arc::new(Receiver {
                config: config.clone(),
                queue,
                url: RwLock::new(url),
                token: RwLock::new(token),
                metrics: metrics.clone(),
            });
            if let Some(watched) = url_file {
                rotation.push(Arc::new(Secret {
                    kind: SecretKind::NotificationUrl,
                    watched,
                    receiver: receiver.clone(),
                }));
            }
            if let Some(watched) = token_file {
                rotation.push(Arc::new(Secret {
                    kind: SecretKind::NotificationToken,
                    watched,
                    receiver: receiver.clone(),
                }));
            }
            tokio::spawn(deliver(
                receiver.clone(),
                notices,
                (http.clone(), client.clone()),
                stop.clone(),
            ));
            receivers.push(receiver);
        }
        Ok((Self { receivers }, rotation))
    }

    /// Queues `notice` for every receiver that takes its Event; never waits.
    pub fn notify(&self, notice: Notice) {
        let notice = Arc::new(notice);
        for r in self
            .receivers
            .iter()
            .filter(|r| r.config.wants(&notice.event))
        {
            if r.queue.try_send(notice.clone()).is_err() {
                r.count(Delivery::Dropped);
                warn!(receiver = %r.config.name, event = %notice.event, "notification queue full; notification dropped");
            }
        }
    }
}

/// A receiver's delivery task: each notice in turn, retried with backoff, until `stop`.
async fn deliver(
    receiver: Arc<Receiver>,
    mut notices: mpsc::Receiver<Arc<Notice>>,
    (http, client): (reqwest::Client, kube::Client),
    stop: CancellationToken,
) {
    loop {
        let notice = tokio::select! {
            () = stop.cancelled() => return,
            notice = notices.recv() => match notice {
                Some(n) => n,
                None => return,
            },
        };
        // Best effort, and bounded: a slow API server must not hold the queue.
        let pods = tokio::time::timeout(receiver.config.timeout, green_pods(&client, &notice))
            .await
            .unwrap_or_default();
        let dashboard = receiver
            .config
            .dashboard_url
            .as_deref()
            .map(|t| dashboard(t, &notice));
        let body = match receiver.config.format {
            NotifyFormat::Json => json_payload(&notice, &pods, dashboard.as_deref()),
            NotifyFormat::Slack => slack_payload(&notice, &pods, dashboard.as_deref()),
        };
        let mut backoff = FIRST_BACKOFF;
        let mut result = Delivery::Failed;
        for attempt in 1..=ATTEMPTS {
            let url = receiver
                .url
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            let mut headers = HeaderMap::new();
            for (name, value) in &receiver.config.headers {
                if let (Ok(n), Ok(v)) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(value),
                ) {
                    headers.insert(n, v);
                }
            }
            let token = receiver
                .token
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            if let Some(mut v) =
                token.and_then(|t| HeaderValue::from_str(&format!("Bearer {t}")).ok())
            {
                v.set_sensitive(true);
                headers.insert(AUTHORIZATION, v);
            }
            let sent = http
                .post(url.clone())
                .headers(headers)
                .timeout(receiver.config.timeout)
                .json(&body)
                .send()
                .await;
            let failure = match sent {
                Ok(answer) if answer.status().is_success() => None,
                Ok(answer) => Some(format!("HTTP {}", answer.status().as_u16())),
                Err(e) if e.is_timeout() => Some(format!(
                    "no answer within {}",
                    humantime::format_duration(receiver.config.timeout)
                )),
                // The chain could quote the URL, path and all: say only what kind of failure.
                Err(e) if e.is_connect() => Some("connection failed".to_owned()),
                Err(_) => Some("request failed".to_owned()),
            };
            let Some(failure) = failure else {
                result = Delivery::Sent;
                debug!(receiver = %receiver.config.name, event = %notice.event, to = %redacted(&url), "notification sent");
                break;
            };
            warn!(receiver = %receiver.config.name, event = %notice.event, to = %redacted(&url), attempt, error = %failure, "notification not delivered");
            if attempt < ATTEMPTS {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff *= 2;
            }
        }
        receiver.count(result);
    }
}

/// A URL as logs may show it: its scheme and host, never its path or query.
#[must_use]
pub fn redacted(url: &Url) -> String {
    format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default())
}

/// The green Pods' names, to preserve their logs; empty if they cannot be read.
async fn green_pods(client: &kube::Client, n: &Notice) -> Vec<String> {
    let services: Api<Service> = Api::namespaced(client.clone(), &n.namespace);
    let Ok(svc) = services.get(&n.service).await else {
        return Vec::new();
    };
    let mut selector = crate::service::selector(&svc);
    selector.insert(n.version_label.clone(), n.green.clone());
    let labels = selector_text(&selector);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &n.namespace);
    pods.list(&ListParams::default().labels(&labels))
        .await
        .map(|list| {
            list.items
                .into_iter()
                .filter_map(|p| p.metadata.name)
                .collect()
        })
        .unwrap_or_default()
}

fn selector_text(selector: &std::collections::BTreeMap<String, String>) -> String {
    selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The commands that show what happened.
fn commands(n: &Notice) -> Vec<String> {
    let (ns, svc) = (&n.namespace, &n.service);
    vec![
        format!("kubectl -n {ns} get svc {svc} -o yaml"),
        format!("kubectl -n {ns} get events --field-selector involvedObject.name={svc}"),
        format!(
            "kubectl -n {ns} logs -l {}={} --all-containers --prefix --since=1h",
            n.version_label, n.green
        ),
    ]
}

/// `template` with `{{guard}}`, `{{from_ms}}` (the cutover) and `{{to_ms}}` (the Event, plus a
/// minute) filled in, URL-encoded: a template guard's name holds a `/`.
#[must_use]
pub fn dashboard(template: &str, n: &Notice) -> String {
    let encode = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let to = n.at.as_millisecond() + 60_000;
    template
        .replace("{{guard}}", &encode(&n.guard))
        .replace("{{from_ms}}", &n.cutover_at.as_millisecond().to_string())
        .replace("{{to_ms}}", &to.to_string())
}

fn trigger_json(trigger: Option<&Trigger>) -> Value {
    match trigger {
        None => Value::Null,
        Some(Trigger::Check {
            name,
            observed,
            threshold,
            for_,
        }) => json!({"kind": "check", "check": name, "observed": observed, "threshold": threshold,
                     "for_seconds": for_.as_secs_f64()}),
        Some(Trigger::Alert {
            alertname,
            severity,
        }) => json!({"kind": "alert", "alertname": alertname, "severity": severity}),
        Some(Trigger::Traffic { detail }) => json!({"kind": "traffic", "detail": detail}),
    }
}

/// The `json` format: every fact, as one object.
#[must_use]
pub fn json_payload(n: &Notice, pods: &[String], dashboard: Option<&str>) -> Value {
    json!({
        "guard": n.guard,
        "namespace": n.namespace,
        "service": n.service,
        "event": n.event,
        "type": if n.warning { "Warning" } else { "Normal" },
        "green_version": n.green,
        "blue_version": n.blue,
        "trigger": trigger_json(n.trigger.as_ref()),
        "cutover_at": n.cutover_at,
        "event_at": n.at,
        "time_to_revert_seconds": n.took.map(|d| d.as_secs_f64()),
        "green_pods": pods,
        "note": n.note,
        "commands": commands(n),
        "dashboard_url": dashboard,
    })
}

/// The `slack` format: the same facts as blocks, with a text fallback for notifications.
#[must_use]
pub fn slack_payload(n: &Notice, pods: &[String], dashboard: Option<&str>) -> Value {
    let text = format!(
        "{} {}/{} ({}): {}",
        n.event, n.namespace, n.service, n.guard, n.note
    );
    let trigger = n
        .trigger
        .as_ref()
        .map_or_else(|| "none".to_owned(), Trigger::describe);
    let mut facts = vec![
        format!("*Versions:* green `{}`, blue `{}`", n.green, n.blue),
        format!("*Trigger:* {trigger}"),
        format!("*Cutover:* {}  *Event:* {}", n.cutover_at, n.at),
    ];
    if let Some(took) = n.took {
        facts.push(format!("*Time to revert:* {:.1}s", took.as_secs_f64()));
    }
    if !pods.is_empty() {
        facts.push(format!(
            "*Green pods (preserve their logs):* {}",
            pods.join(", ")
        ));
    }
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": format!("{}: {}/{}", n.event, n.namespace, n.service)}}),
        json!({"type": "section", "text": {"type": "mrkdwn", "text": n.note}}),
        json!({"type": "section", "text": {"type": "mrkdwn", "text": facts.join("\n")}}),
        json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("```{}```", commands(n).join("\n"))}}),
    ];
    if let Some(url) = dashboard {
        blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": format!("<{url}|Dashboard for this window>")}]}));
    }
    json!({"text": text, "blocks": blocks})
}

fn parse_url(contents: &[Vec<u8>]) -> Result<Url> {
    let text = std::str::from_utf8(contents.first().map_or(&[][..], Vec::as_slice))
        .map_err(|_| Error::Unusable("notifications[].url_file is not UTF-8".into()))?;
    // No source: a parse error could quote the URL.
    let url = Url::parse(text.trim())
        .map_err(|_| Error::Unusable("notifications[].url_file holds no usable URL".into()))?;
    if matches!(url.scheme(), "http" | "https") {
        Ok(url)
    } else {
        Err(Error::Unusable(
            "notifications[].url_file holds a URL that is not http or https".into(),
        ))
    }
}

fn parse_token(contents: &[Vec<u8>]) -> Result<String> {
    let token = std::str::from_utf8(contents.first().map_or(&[][..], Vec::as_slice))
        .map(str::trim)
        .unwrap_or_default();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::Unusable(
            "notifications[].bearer_token_file holds no usable token".into(),
        ));
    }
    Ok(token.to_owned())
}

/// A receiver's URL or token file, rotated in place.
struct Secret {
    kind: SecretKind,
    watched: Arc<Watched>,
    receiver: Arc<Receiver>,
}

impl Reload for Secret {
    fn kind(&self) -> SecretKind {
        self.kind
    }

    fn watched(&self) -> &Watched {
        &self.watched
    }

    fn apply(&self, contents: &[Vec<u8>]) -> Result<()> {
        if self.kind == SecretKind::NotificationUrl {
            let url = parse_url(contents)?;
            *self
                .receiver
                .url
                .write()
                .unwrap_or_else(PoisonError::into_inner) = url;
        } else {
            let token = parse_token(contents)?;
            *self
                .receiver
                .token
                .write()
                .unwrap_or_else(PoisonError::into_inner) = Some(token);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice() -> Notice {
        Notice {
            event: "RolledBack".into(),
            warning: true,
            guard: "shop/svc-production".into(),
            namespace: "shop".into(),
            service: "svc-production".into(),
            version_label: "version".into(),
            green: "v2".into(),
            blue: "v1".into(),
            trigger: Some(Trigger::Check {
                name: "error_rate".into(),
                observed: Some(0.05),
                threshold: "> 0.02".into(),
                for_: Duration::from_mins(2),
            }),
            cutover_at: "2026-11-30T12:00:00Z".parse().unwrap(),
            at: "2026-11-30T12:03:00Z".parse().unwrap(),
            took: Some(Duration::from_millis(420)),
            note: "reverted selector to v1".into(),
        }
    }

    #[test]
    fn the_json_payload_carries_every_fact_and_the_dashboard_link_is_encoded() {
        let n = notice();
        let link = dashboard(
            "https://grafana.example/d/cw?var-guard={{guard}}&from={{from_ms}}&to={{to_ms}}",
            &n,
        );
        assert_eq!(
            link,
            "https://grafana.example/d/cw?var-guard=shop%2Fsvc-production&from=1796040000000&to=1796040240000"
        );
        let p = json_payload(&n, &["app-v2-0".into()], Some(&link));
        assert_eq!(p["trigger"]["check"], "error_rate");
        assert_eq!(p["trigger"]["observed"], 0.05);
        assert_eq!(p["trigger"]["for_seconds"], 120.0);
        assert_eq!(p["green_version"], "v2");
        assert_eq!(p["blue_version"], "v1");
        assert_eq!(p["time_to_revert_seconds"], 0.42);
        assert_eq!(p["green_pods"][0], "app-v2-0");
        assert_eq!(p["cutover_at"], "2026-11-30T12:00:00Z");
        assert!(
            p["commands"][2]
                .as_str()
                .unwrap()
                .contains("logs -l version=v2")
        );
        let s = slack_payload(&n, &["app-v2-0".into()], Some(&link));
        assert!(
            s["text"]
                .as_str()
                .unwrap()
                .starts_with("RolledBack shop/svc-production")
        );
        let blocks = s["blocks"].to_string();
        assert!(blocks.contains("check error_rate: observed 0.0500") && blocks.contains(&link));
    }

    #[tokio::test]
    async fn a_rotated_url_or_token_takes_effect_and_an_unusable_one_keeps_the_previous() {
        let dir = tempfile::tempdir().unwrap();
        let (url_path, token_path) = (dir.path().join("url"), dir.path().join("token"));
        std::fs::write(&url_path, "https://hooks.example/one\n").unwrap();
        std::fs::write(&token_path, "t1").unwrap();
        let config: crate::config::Config = crate::config::Config::from_yaml(&format!(
            "prometheus: {{url: 'http://p'}}\nguards: [{{name: g, service: s}}]\nnotifications:\n- {{name: r, url_file: {}, bearer_token_file: {}}}\n",
            url_path.display(),
            token_path.display()
        ))
        .unwrap();
        let client =
            kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap()))
                .unwrap();
        let metrics = Metrics::new().unwrap();
        let stop = CancellationToken::new();
        let (notifier, rotation) =
            Notifier::start(&config.notifications, &client, &metrics, &stop).unwrap();
        assert_eq!(rotation.len(), 2);
        let receiver = &notifier.receivers[0];
        std::fs::write(&url_path, "https://hooks.example/two").unwrap();
        std::fs::write(&token_path, "t2").unwrap();
        for r in &rotation {
            if let crate::reload::Polled::Changed(c) = r.watched().poll() {
                r.apply(&c).unwrap();
            }
        }
        assert_eq!(
            receiver.url.read().unwrap().as_str(),
            "https://hooks.example/two"
        );
        assert_eq!(receiver.token.read().unwrap().as_deref(), Some("t2"));
        std::fs::write(&url_path, "not a url").unwrap();
        let url = rotation
            .iter()
            .find(|r| r.kind() == SecretKind::NotificationUrl)
            .unwrap();
        let crate::reload::Polled::Changed(c) = url.watched().poll() else {
            panic!("a change");
        };
        let e = url.apply(&c).unwrap_err().to_string();
        assert!(
            !e.contains("not a url"),
            "the contents are never quoted: {e}"
        );
        assert_eq!(
            receiver.url.read().unwrap().as_str(),
            "https://hooks.example/two"
        );
        stop.cancel();
    }

    #[test]
    fn a_url_is_logged_by_scheme_and_host_only() {
        let url = Url::parse("https://hooks.slack.com/services/T000/B000/XXXX").unwrap();
        assert_eq!(redacted(&url), "https://hooks.slack.com");
    }
}
