//! A job's hyperparameters and method as clients word them, brought to fpt's [`TrainConfig`] and
//! [`Method`] for [`super::TrainSpec::parse`]: fpt's own form (`n_steps`, `learning_rate`,
//! `method: {"type": "fpt", "fpt": {…}}`) and OpenAI's (`n_epochs`, `batch_size`,
//! `learning_rate_multiplier`, each a number or `"auto"`, in `hyperparameters` or in
//! `method: {"type": "supervised", "supervised": {"hyperparameters": …}}`).
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::spec::Method;
use crate::model::params::FreezeSwitches;
use crate::tasks::SpecError;
use crate::train::TrainConfig;

/// An OpenAI hyperparameter given as `"auto"`: [`super::auto`] resolves it once the data is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AutoField {
    NSteps,
    NEpochs,
    BatchSize,
    LearningRateMultiplier,
    /// fpt's own name for a searched learning rate (OpenAI's is the multiplier's `"auto"`).
    LearningRate,
}

impl AutoField {
    const ALL: [AutoField; 5] =
        [AutoField::NSteps, AutoField::NEpochs, AutoField::BatchSize, AutoField::LearningRateMultiplier, AutoField::LearningRate];

    /// `"auto"` for `name` (`n_steps`, `n_epochs`, `batch_size`, `learning_rate_multiplier`,
    /// `learning_rate`).
    pub fn named(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    /// `"auto"` here asks for the learning-rate search ([`crate::train::lr_search`]).
    pub fn searches_learning_rate(self) -> bool {
        matches!(self, AutoField::LearningRate | AutoField::LearningRateMultiplier)
    }

    pub fn name(self) -> &'static str {
        match self {
            AutoField::NSteps => "n_steps",
            AutoField::NEpochs => "n_epochs",
            AutoField::BatchSize => "batch_size",
            AutoField::LearningRateMultiplier => "learning_rate_multiplier",
            AutoField::LearningRate => "learning_rate",
        }
    }
}

/// The learning rate a `learning_rate_multiplier` of 1 stands for: the recipe's.
pub fn base_learning_rate() -> f64 {
    TrainConfig::default().learning_rate
}

/// Most a `learning_rate_multiplier` may be (the learning rate itself stays below 10).
const MAX_MULTIPLIER: f64 = 1000.0;

/// What a request's `hyperparameters` and `method` come to.
#[derive(Debug, Clone, PartialEq)]
pub struct Requested {
    pub hyperparameters: TrainConfig,
    pub method: Method,
    /// The fields given as `"auto"`, in [`AutoField::ALL`]'s order.
    pub auto: Vec<AutoField>,
}

fn bad(field: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError { field: field.into(), message: message.into() }
}

impl Requested {
    /// Parses a request's `hyperparameters` and `method` (either may be absent); errors name the
    /// field as the request spells it.
    pub fn parse(hyperparameters: Option<Value>, method: Option<Value>) -> Result<Self, SpecError> {
        let (method, nested) = parse_method(method)?;
        let (value, at) = match (hyperparameters, nested) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    "method.supervised.hyperparameters",
                    "hyperparameters are given both here and in `hyperparameters`: give them once",
                ))
            }
            (Some(h), None) => (h, "hyperparameters"),
            (None, Some(h)) => (h, "method.supervised.hyperparameters"),
            (None, None) => (Value::Object(Default::default()), "hyperparameters"),
        };
        let (hyperparameters, auto) = parse_hyperparameters(value, at)?;
        Ok(Self { hyperparameters, method, auto })
    }
}

/// `{"type": "fpt", "fpt": {…}}` or `{"type": "supervised", "supervised": {"hyperparameters": …},
/// "fpt": {…}}`; the second also hands back the hyperparameters it holds.
fn parse_method(method: Option<Value>) -> Result<(Method, Option<Value>), SpecError> {
    let Some(method) = method else { return Ok((Method::default(), None)) };
    let Value::Object(mut m) = method else { return Err(bad("method", "must be an object")) };
    let kind = match m.remove("type") {
        None => "fpt".to_string(),
        Some(Value::String(k)) => k,
        Some(_) => return Err(bad("method.type", "must be a string: fpt or supervised")),
    };
    let nested = match kind.as_str() {
        "fpt" => None,
        "supervised" => match m.remove("supervised") {
            None | Some(Value::Null) => None,
            Some(Value::Object(mut s)) => {
                let h = s.remove("hyperparameters").filter(|h| !h.is_null());
                if let Some(k) = s.keys().next() {
                    return Err(bad(format!("method.supervised.{k}"), "unknown field (method.supervised takes hyperparameters)"));
                }
                h
            }
            Some(_) => return Err(bad("method.supervised", "must be an object")),
        },
        other => {
            return Err(bad("method.type", format!("method `{other}` is not supported: fpt (or supervised, its OpenAI name)")));
        }
    };
    let switches: FreezeSwitches = match m.remove("fpt") {
        None | Some(Value::Null) => FreezeSwitches::default(),
        Some(v) => from_value(v, "method.fpt")?,
    };
    if let Some(k) = m.keys().next() {
        return Err(bad(
            format!("method.{k}"),
            format!("unknown field (method `{kind}` takes fpt{})", if kind == "fpt" { "" } else { " and supervised" }),
        ));
    }
    Ok((Method::fpt(switches), nested))
}

/// fpt's [`TrainConfig`] fields plus OpenAI's three; `"auto"` leaves a field (these and `n_steps`)
/// to [`super::auto`].
fn parse_hyperparameters(value: Value, at: &str) -> Result<(TrainConfig, Vec<AutoField>), SpecError> {
    let Value::Object(mut m) = value else { return Err(bad(at, "must be an object")) };
    let auto: Vec<AutoField> = AutoField::ALL.into_iter().filter(|f| m.get(f.name()).is_some_and(|v| v == "auto")).collect();
    for f in &auto {
        m.remove(f.name());
    }
    let multiplier = match m.remove(AutoField::LearningRateMultiplier.name()) {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_f64().filter(|x| x.is_finite() && *x > 0.0 && *x <= MAX_MULTIPLIER).ok_or_else(|| {
            bad(format!("{at}.learning_rate_multiplier"), format!("must be a positive number of at most {MAX_MULTIPLIER}, or \"auto\""))
        })?),
    };
    // OpenAI's clients send `null` for a field they leave to the server.
    m.retain(|_, v| !v.is_null());
    let searched = auto.iter().any(|f| f.searches_learning_rate());
    if searched && (multiplier.is_some() || m.contains_key("learning_rate")) {
        return Err(bad(
            format!("{at}.learning_rate"),
            "the learning rate is \"auto\" (searched): give no other learning_rate or multiplier",
        ));
    }
    let mut config: TrainConfig = from_value(Value::Object(m), at)?;
    if let Some(x) = multiplier {
        config.learning_rate *= x;
    }
    Ok((config, auto))
}

/// `T` from JSON, an error naming the field under `at`.
fn from_value<T: serde::de::DeserializeOwned>(v: Value, at: &str) -> Result<T, SpecError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { at.to_string() } else { format!("{at}.{path}") };
        bad(field, e.inner().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field_of(h: Option<Value>, m: Option<Value>) -> String {
        Requested::parse(h, m).unwrap_err().field
    }

    #[test]
    fn openai_and_fpt_forms_come_to_one_config() {
        let r = Requested::parse(Some(json!({"n_epochs": 3, "batch_size": 8, "learning_rate_multiplier": 2.0})), None).unwrap();
        assert_eq!((r.hyperparameters.n_epochs, r.hyperparameters.batch_size), (Some(3), 8));
        assert!((r.hyperparameters.learning_rate - 2.0 * base_learning_rate()).abs() < 1e-12);
        assert!(r.auto.is_empty());
        let m = json!({"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": "auto", "batch_size": "auto"}},
                       "fpt": {"freeze_ln": true}});
        let r = Requested::parse(None, Some(m)).unwrap();
        assert_eq!(r.auto, vec![AutoField::NEpochs, AutoField::BatchSize]);
        assert!(r.method.fpt.freeze_ln);
        assert_eq!(r.method.kind, "fpt");
        let r = Requested::parse(Some(json!({"n_steps": 7, "learning_rate_multiplier": null, "n_epochs": null})), None).unwrap();
        assert_eq!((r.hyperparameters.n_steps, r.hyperparameters.n_epochs), (7, None));
        assert_eq!(Requested::parse(None, Some(json!({"type": "fpt"}))).unwrap().method, Method::default());
    }

    #[test]
    fn every_bad_form_names_its_field() {
        assert_eq!(field_of(Some(json!({"n_epochs": 2.5})), None), "hyperparameters.n_epochs");
        assert_eq!(Requested::parse(Some(json!({"ensemble": 3})), None).unwrap().hyperparameters.ensemble, 3);
        assert_eq!(field_of(Some(json!({"n_epochs": "many"})), None), "hyperparameters.n_epochs");
        assert_eq!(field_of(Some(json!({"batch_size": "big"})), None), "hyperparameters.batch_size");
        assert_eq!(field_of(Some(json!({"learning_rate_multiplier": -1})), None), "hyperparameters.learning_rate_multiplier");
        assert_eq!(field_of(Some(json!({"learning_rate_multiplier": "x"})), None), "hyperparameters.learning_rate_multiplier");
        assert_eq!(field_of(Some(json!({"n_stpes": 1})), None), "hyperparameters.n_stpes");
        assert_eq!(field_of(Some(json!([])), None), "hyperparameters");
        let nested = |h: Value| Some(json!({"type": "supervised", "supervised": {"hyperparameters": h}}));
        assert_eq!(field_of(None, nested(json!({"n_epochs": 0.5}))), "method.supervised.hyperparameters.n_epochs");
        assert_eq!(field_of(Some(json!({})), nested(json!({}))), "method.supervised.hyperparameters");
        assert_eq!(field_of(None, Some(json!({"type": "dpo"}))), "method.type");
        assert_eq!(field_of(None, Some(json!({"type": 3}))), "method.type");
        assert_eq!(field_of(None, Some(json!({"type": "fpt", "extra": 1}))), "method.extra");
        assert_eq!(field_of(None, Some(json!({"type": "supervised", "supervised": {"beta": 1}}))), "method.supervised.beta");
        assert_eq!(field_of(None, Some(json!({"fpt": {"freeze_everything": true}}))), "method.fpt.freeze_everything");
    }
}
