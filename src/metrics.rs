//! Named metrics, shared by the tasks (which compute them) and the engine (which reports them and
//! picks checkpoints by them). Each task names its metrics (`accuracy`, `exact_accuracy`, later
//! `rmse`, …) and one primary metric with a direction; batches add their sums to a [`Tally`], the
//! task turns a tally into a [`MetricMap`], and everything downstream (events, early stopping, the
//! kept checkpoint, summaries, reports) reads the map by name.
use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

/// Metric values by name (`accuracy`), or prefixed by split in events and summaries (`valid_accuracy`).
pub type MetricMap = BTreeMap<String, f64>;

/// Which way a metric improves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    #[default]
    Higher,
    Lower,
}

impl Direction {
    /// Whether `new` improves on `old`.
    pub fn better(self, new: f64, old: f64) -> bool {
        match self {
            Direction::Higher => new > old,
            Direction::Lower => new < old,
        }
    }
}

/// A task's primary metric: what picks the kept checkpoint and stops a run early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Primary {
    pub name: &'static str,
    pub direction: Direction,
}

/// Sums over batches (correct predictions, counted targets, squared errors, …) that a task's
/// metrics are computed from at the end of a window or an evaluation.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Tally(BTreeMap<String, f64>);

impl Tally {
    pub fn add(&mut self, key: &str, value: f64) {
        *self.0.entry(key.to_string()).or_default() += value;
    }

    pub fn merge(&mut self, other: &Tally) {
        for (k, v) in &other.0 {
            self.add(k, *v);
        }
    }

    pub fn get(&self, key: &str) -> f64 {
        self.0.get(key).copied().unwrap_or(0.0)
    }

    /// `sum / count`, or None when nothing was counted.
    pub fn ratio(&self, sum: &str, count: &str) -> Option<f64> {
        let n = self.get(count);
        (n > 0.0).then(|| self.get(sum) / n)
    }
}

/// `values` with every name prefixed (`valid_` + `accuracy`); values that are not finite are left
/// out, so that a map always reads back from JSON.
pub fn prefixed(prefix: &str, values: &MetricMap) -> MetricMap {
    values.iter().filter(|(_, v)| v.is_finite()).map(|(k, v)| (format!("{prefix}{k}"), *v)).collect()
}

/// A metric map read back from JSON, where a missing value may have been written as `null`.
pub fn deserialize_map<'de, D: Deserializer<'de>>(d: D) -> Result<MetricMap, D::Error> {
    let m: BTreeMap<String, Option<f64>> = BTreeMap::deserialize(d)?;
    Ok(m.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direction_says_which_value_is_better() {
        assert!(Direction::Higher.better(0.9, 0.8));
        assert!(!Direction::Higher.better(0.8, 0.8));
        assert!(Direction::Lower.better(0.1, 0.2));
        assert!(!Direction::Lower.better(0.3, 0.2));
    }

    #[test]
    fn tallies_add_up_and_prefixes_drop_non_finite_values() {
        let mut a = Tally::default();
        a.add("correct", 3.0);
        a.add("total", 4.0);
        let mut b = Tally::default();
        b.add("correct", 1.0);
        b.add("total", 4.0);
        a.merge(&b);
        assert_eq!(a.ratio("correct", "total"), Some(0.5));
        assert_eq!(Tally::default().ratio("correct", "total"), None);
        let m = MetricMap::from([("accuracy".to_string(), 0.5), ("loss".to_string(), f64::NAN)]);
        assert_eq!(prefixed("valid_", &m), MetricMap::from([("valid_accuracy".to_string(), 0.5)]));
    }
}
