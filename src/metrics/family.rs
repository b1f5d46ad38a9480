//! Per-guard metric families, kept small: each series is its label values and one atomic.
//!
//! The prometheus crate's vectors keep, for every series, a copy of the family's descriptor
//! (name, help text, label names) and its labels as protobuf pairs: some 450 bytes in nine
//! allocations. A guard has ten or so series, so with thousands of guards that was a third of
//! the watchdog's memory. A [`Family`] builds the exposition at scrape time instead. It offers
//! only what the watchdog uses: get-or-create by label values, remove, and the three value
//! kinds below; no histograms, no constant labels.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, LabelPair, MetricFamily, MetricType};

/// One series' value.
pub trait Value: Default + Send + Sync + 'static {
    const TYPE: MetricType;
    fn fill(&self, metric: &mut proto::Metric);
}

/// A monotonic count.
#[derive(Default, Debug)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    #[must_use]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Value for Counter {
    const TYPE: MetricType = MetricType::COUNTER;
    fn fill(&self, metric: &mut proto::Metric) {
        let mut c = proto::Counter::default();
        #[allow(clippy::cast_precision_loss)] // counts stay far below 2^53
        c.set_value(self.get() as f64);
        metric.set_counter(c);
    }
}

/// A whole-number gauge.
#[derive(Default, Debug)]
pub struct IntGauge(AtomicI64);

impl IntGauge {
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }

    #[must_use]
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Value for IntGauge {
    const TYPE: MetricType = MetricType::GAUGE;
    fn fill(&self, metric: &mut proto::Metric) {
        let mut g = proto::Gauge::default();
        #[allow(clippy::cast_precision_loss)] // 0/1 flags
        g.set_value(self.get() as f64);
        metric.set_gauge(g);
    }
}

/// A gauge of any float value.
#[derive(Default, Debug)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }

    #[must_use]
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

impl Value for Gauge {
    const TYPE: MetricType = MetricType::GAUGE;
    fn fill(&self, metric: &mut proto::Metric) {
        let mut g = proto::Gauge::default();
        g.set_value(self.get());
        metric.set_gauge(g);
    }
}

/// Each series: its label values, in label order, and its value.
type Series<V> = HashMap<Box<[Box<str>]>, Arc<V>>;

/// A metric family whose series are told apart by label values; clones share the series.
pub struct Family<V>(Arc<Inner<V>>);

impl<V> Clone for Family<V> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

struct Inner<V> {
    desc: Desc,
    /// Label names, and the order they are written in (by name, as Prometheus sorts them).
    labels: Vec<String>,
    order: Vec<usize>,
    series: RwLock<Series<V>>,
}

impl<V: Value> Family<V> {
    /// A family `name` (already prefixed) with `labels`.
    ///
    /// # Errors
    /// If the name or a label name is not a valid Prometheus name.
    pub fn new(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<Self> {
        let labels: Vec<String> = labels.iter().map(|&l| l.to_owned()).collect();
        let desc = Desc::new(
            name.to_owned(),
            help.to_owned(),
            labels.clone(),
            HashMap::new(),
        )?;
        let mut order: Vec<usize> = (0..labels.len()).collect();
        order.sort_by_key(|&i| &labels[i]);
        Ok(Self(Arc::new(Inner {
            desc,
            labels,
            order,
            series: RwLock::default(),
        })))
    }

    /// The series with these label values, created at zero if it does not exist.
    ///
    /// # Panics
    /// If the number of values is not the number of labels: a bug at the call site, as with
    /// the prometheus crate's `with_label_values`.
    pub fn with_label_values<S: AsRef<str>>(&self, values: &[S]) -> Arc<V> {
        assert_eq!(
            values.len(),
            self.0.labels.len(),
            "{}: label values {} for labels {:?}",
            self.0.desc.fq_name,
            values.len(),
            self.0.labels
        );
        let key: Box<[Box<str>]> = values.iter().map(|v| v.as_ref().into()).collect();
        if let Some(v) = self.read().get(&key) {
            return v.clone();
        }
        let mut series = self
            .0
            .series
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        series.entry(key).or_default().clone()
    }

    /// Deletes the series with these label values; false if there was none.
    pub fn remove_label_values<S: AsRef<str>>(&self, values: &[S]) -> bool {
        let key: Box<[Box<str>]> = values.iter().map(|v| v.as_ref().into()).collect();
        self.0
            .series
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&key)
            .is_some()
    }

    /// Deletes every series whose first label value is `first` (a guard's, whatever its other
    /// labels hold); how many there were.
    pub fn remove_first(&self, first: &str) -> usize {
        let mut series = self
            .0
            .series
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let before = series.len();
        series.retain(|key, _| key.first().is_none_or(|k| &**k != first));
        before - series.len()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Series<V>> {
        // A panic while holding the lock cannot leave the map inconsistent.
        self.0.series.read().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<V: Value> Collector for Family<V> {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.0.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let series = self.read();
        let metrics = series
            .iter()
            .map(|(values, value)| {
                let mut m = proto::Metric::default();
                m.set_label(
                    self.0
                        .order
                        .iter()
                        .map(|&i| {
                            let mut pair = LabelPair::default();
                            pair.set_name(self.0.labels[i].clone());
                            pair.set_value(values[i].to_string());
                            pair
                        })
                        .collect(),
                );
                value.fill(&mut m);
                m
            })
            .collect();
        let mut family = MetricFamily::default();
        family.set_name(self.0.desc.fq_name.clone());
        family.set_help(self.0.desc.help.clone());
        family.set_field_type(V::TYPE);
        family.set_metric(metrics);
        vec![family]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_series_is_created_once_and_removed_by_its_label_values() {
        let f = Family::<Counter>::new("f_total", "help", &["guard", "check"]).unwrap();
        f.with_label_values(&["g", "c"]).inc();
        f.with_label_values(&["g", "c"]).inc();
        assert_eq!(f.with_label_values(&["g", "c"]).get(), 2);
        assert!(f.remove_label_values(&["g", "c"]));
        assert!(!f.remove_label_values(&["g", "c"]));
        assert_eq!(f.with_label_values(&["g", "c"]).get(), 0);
    }

    #[test]
    fn labels_are_exposed_sorted_by_name_with_the_family_type() {
        let f = Family::<Gauge>::new("f", "help", &["guard", "check"]).unwrap();
        f.with_label_values(&["g", "c"]).set(0.5);
        let [family] = f.collect().try_into().unwrap();
        assert_eq!(family.get_field_type(), MetricType::GAUGE);
        let metric = &family.get_metric()[0];
        let labels: Vec<(&str, &str)> = metric
            .get_label()
            .iter()
            .map(|l| (l.name(), l.value()))
            .collect();
        assert_eq!(labels, [("check", "c"), ("guard", "g")]);
        assert!((metric.get_gauge().get_value() - 0.5).abs() < f64::EPSILON);
    }
}
