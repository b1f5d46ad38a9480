//! Alertmanager's webhook body (payload version 4), as the watchdog reads it, and its parsing.
//!
//! Only the fields the watchdog reads are declared; every other field is ignored unparsed, so
//! no value in it can get a payload refused. It deliberately knows nothing of HTTP, guards or
//! what an alert means for a guard: the handler answers, [`super::routing`] routes.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::Deserialize;

/// Alertmanager's webhook body, version 4: only the fields the watchdog reads. The others
/// (`status`, `receiver`, `groupLabels`, an alert's `endsAt`, `annotations`, ...) are ignored
/// unparsed, so no value in them can get a payload refused.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Payload {
    pub version: String,
    /// For the debug log of alerts that do not act.
    #[serde(default)]
    pub group_key: String,
    pub alerts: Vec<PayloadAlert>,
}

/// One alert of a [`Payload`].
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PayloadAlert {
    /// `firing` or `resolved`; only a firing alert acts.
    pub status: String,
    pub labels: BTreeMap<String, String>,
    /// An alert without the guard's version label that started before the cutover does not act.
    #[serde(default)]
    pub starts_at: Option<Timestamp>,
    /// Kept for `/v1/guards`.
    #[serde(default)]
    pub fingerprint: Option<String>,
}

/// Why a body is not a payload the watchdog takes; the text is the 400's `error`.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("malformed JSON: {0}")]
    Malformed(serde_json::Error),
    #[error("not an Alertmanager webhook payload: {0}")]
    NotAPayload(serde_json::Error),
    #[error("unsupported payload version {0:?}; expected \"4\"")]
    Version(String),
}

impl Payload {
    /// A version 4 payload from the request body.
    pub fn parse(bytes: &[u8]) -> Result<Self, PayloadError> {
        let payload: Self = serde_json::from_slice(bytes).map_err(|e| {
            if e.is_data() {
                PayloadError::NotAPayload(e)
            } else {
                PayloadError::Malformed(e)
            }
        })?;
        if payload.version != "4" {
            return Err(PayloadError::Version(payload.version));
        }
        Ok(payload)
    }
}
