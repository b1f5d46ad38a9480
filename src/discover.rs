//! `cutover-watchdog discover`: what the config guards in the cluster, Service by Service.
//!
//! It lists the Services in every namespace the config names (all of them for `["*"]`) and
//! asks [`coverage`] about each, exactly as the running watchdog does, so what it prints is what
//! a watchdog with this config would guard, and why it would leave the rest alone. It reads;
//! it never writes, and it does not look at Prometheus.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use k8s_openapi::api::core::v1::Service;
use kube::api::ListParams;
use serde::Serialize;

use crate::config::Config;
use crate::coverage::{self, Coverage};
use crate::error::{Error, Result};
use crate::fleet::{Scope, key_of};

/// One Service and what covers it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub namespace: String,
    pub service: String,
    /// The version its selector serves, under the covering guard's (or template's) key.
    pub version: Option<String>,
    /// The guard's name, when one covers it.
    pub guard: Option<String>,
    /// `config` or `template:<name>`, when a guard covers it.
    pub source: Option<String>,
    /// Why no guard covers it.
    pub reason: Option<String>,
    /// What the operator should know about the guard that covers it.
    pub warning: Option<String>,
}

/// Every Service in the config's namespaces, and every `guards[]` entry whose Service is
/// missing, sorted by namespace and name.
pub async fn discover(config: &Config, client: &kube::Client) -> Result<Vec<Row>> {
    let mut services: BTreeMap<(String, String), Service> = BTreeMap::new();
    for scope in Scope::needed(config) {
        let list = scope
            .services(client)
            .list(&ListParams::default())
            .await
            .map_err(|e| Error::List {
                what: "services",
                scope: scope.to_string(),
                source: Box::new(e),
            })?;
        for svc in list.items {
            services.insert(key_of(&svc), svc);
        }
    }
    Ok(rows(config, &services))
}

/// The rows for `services`, as [`discover`] reports them.
#[must_use]
pub fn rows(config: &Config, services: &BTreeMap<(String, String), Service>) -> Vec<Row> {
    let mut rows: Vec<Row> = services
        .iter()
        .map(|((namespace, service), svc)| {
            let coverage = coverage::cover(config, svc);
            let version = coverage::serving_version(svc, &coverage, config).map(str::to_owned);
            let (guard, source, reason, warning) = match coverage {
                Coverage::Guarded {
                    guard,
                    source,
                    warning,
                } => (Some(guard.name), Some(source.to_string()), None, warning),
                Coverage::Unguarded { reason } => (None, None, Some(reason), None),
            };
            Row {
                namespace: namespace.clone(),
                service: service.clone(),
                version,
                guard,
                source,
                reason,
                warning,
            }
        })
        .collect();
    for g in &config.guards {
        if !services.contains_key(&(g.namespace.clone(), g.service.clone())) {
            rows.push(Row {
                namespace: g.namespace.clone(),
                service: g.service.clone(),
                version: None,
                guard: Some(g.name.clone()),
                source: Some("config".into()),
                reason: None,
                warning: Some("service not found".into()),
            });
        }
    }
    rows.sort_by(|a, b| (&a.namespace, &a.service).cmp(&(&b.namespace, &b.service)));
    rows
}

/// The rows as an aligned table, with a one-line summary.
#[must_use]
pub fn table(rows: &[Row]) -> String {
    let cells: Vec<[String; 4]> = rows
        .iter()
        .map(|r| {
            let covered = match (&r.source, &r.reason) {
                (Some(source), _) => source.clone(),
                (None, _) => "-".to_owned(),
            };
            let why = r
                .reason
                .clone()
                .or_else(|| r.warning.clone().map(|w| format!("warning: {w}")))
                .unwrap_or_default();
            [
                format!("{}/{}", r.namespace, r.service),
                r.version.clone().unwrap_or_else(|| "-".into()),
                covered,
                why,
            ]
        })
        .collect();
    let header = ["SERVICE", "VERSION", "GUARDED BY", "REASON"].map(str::to_owned);
    let mut widths = header.clone().map(|h| h.len());
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&cells) {
        let line = format!(
            "{:w0$}  {:w1$}  {:w2$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
        );
        let _ = writeln!(out, "{}", line.trim_end());
    }
    let guarded = rows.iter().filter(|r| r.guard.is_some()).count();
    let _ = writeln!(out, "{guarded} of {} services guarded", rows.len());
    out
}
