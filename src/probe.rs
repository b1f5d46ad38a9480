//! The synthetic transaction of an `http` check ("verify business logic via synthetic
//! transaction"): one request per poll, passed when it answers `expect_status` in time.
//!
//! Thin on purpose: it reports passed or failed and why, as the sample the decision core reads
//! (0 passed, 1 failed, against `above 0.5`), so `for` applies to it as to any check and one
//! failure is never a rollback. No retries, no redirects followed, no body read beyond the
//! status.

use std::time::Duration;

use crate::config::{HttpMethod, HttpProbe};
use crate::error::{Error, Result};

/// Sends the probes. One client for every guard.
#[derive(Clone)]
pub struct Prober {
    http: reqwest::Client,
}

/// One probe's result: the sample's value (0 passed, 1 failed), and what was seen.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub value: f64,
    pub seen: String,
}

impl Prober {
    pub fn new() -> Result<Self> {
        crate::tls::ring_as_default();
        let http = reqwest::Client::builder()
            .user_agent(crate::USER_AGENT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(Error::HttpClient)?;
        Ok(Self { http })
    }

    /// `probe` for the window from `previous` to `version`.
    pub async fn run(&self, probe: &HttpProbe, version: &str, previous: &str) -> Outcome {
        let failed = |seen: String| Outcome { value: 1.0, seen };
        let url = match probe.url.render(version, previous) {
            Ok(url) => url,
            Err(unbound) => return failed(unbound.to_string()),
        };
        let method = match probe.method {
            HttpMethod::Get => reqwest::Method::GET,
            HttpMethod::Head => reqwest::Method::HEAD,
            HttpMethod::Post => reqwest::Method::POST,
        };
        let sent = self
            .http
            .request(method, &url)
            .timeout(probe.timeout)
            .send()
            .await;
        match sent {
            Ok(answer) if answer.status().as_u16() == probe.expect_status => Outcome {
                value: 0.0,
                seen: format!("HTTP {}", answer.status().as_u16()),
            },
            Ok(answer) => failed(format!(
                "HTTP {}, expected {}",
                answer.status().as_u16(),
                probe.expect_status
            )),
            Err(e) if e.is_timeout() => failed(format!(
                "no answer within {}",
                humantime::format_duration(Duration::from_millis(
                    u64::try_from(probe.timeout.as_millis()).unwrap_or(u64::MAX)
                ))
            )),
            // Without the URL: a token in its query string must not reach status or logs.
            Err(e) => failed(crate::error::chain(&e.without_url())),
        }
    }
}
