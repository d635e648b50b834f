//! Generic user records (inputs plus class or bit labels) from JSONL, `.npz` and `.safetensors`, validated against
//! a `RecordSpec`. All three formats feed one `RecordSetBuilder`, so every check is written once.

use std::ops::Range;

use serde_json::Value;

use super::arrays::{self, Array, ArrayData};
use super::series::Missing;
use super::{numbered_lines, utf8_text, DataError, RecordInputs, RecordLabels, RecordSet};

/// What the inputs of a dataset are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputSpec {
    /// Real-valued tokens; `None` takes the token size from `[L][D]` / `[N, L, D]` shaped inputs.
    Continuous { token_dim: Option<usize> },
    /// Integer token ids in 0..vocab_size.
    Tokens { vocab_size: usize },
}

/// What a dataset must look like. With neither `num_classes` nor `bits` nor `targets`, the label
/// kind is taken from the data (`"label"`: classes or bits; `"target"`: regression targets).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecordSpec {
    pub input: InputSpec,
    pub num_classes: Option<usize>,
    pub bits: Option<usize>,
    /// Records carry real-valued `"target"`s (a number or an array of them), `num_targets` each when given.
    pub targets: Option<Option<usize>>,
    /// In a CSV file, the column that holds the label (or the target); default `label` (`target`).
    pub label_column: Option<String>,
    /// Multi-label records over this many labels: a label is a list of label indices or a 0/1
    /// vector of this length (an array of this length holding only 0 and 1 is read as the vector).
    /// `Some(0)`: the number is not known yet (an upload's check); each label must be a list of
    /// distinct indices, and is counted, not kept.
    pub multilabel: Option<usize>,
    /// The class names (in index order) that named labels must be among: the training file's,
    /// when a validation or test file is read. None: the names are the file's own, sorted.
    pub label_names: Option<Vec<String>>,
    /// Missing input values (a `.ts` file's `?`, a table's empty cell): refused, the record
    /// dropped, or (within a `.ts` case's channel) interpolated.
    pub missing: super::series::Missing,
}

impl Default for InputSpec {
    fn default() -> Self {
        InputSpec::Continuous { token_dim: None }
    }
}

/// Array names read from npz and safetensors files.
const INPUTS_ARRAY: &str = "inputs";
const LABELS_ARRAY: &str = "labels";

/// How JSON values are described in errors ("is a string (\"NaN\")").
fn describe_json(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(b) => format!("a boolean ({b})"),
        Value::Number(n) => format!("a number ({n})"),
        Value::String(s) => format!("a string ({s:?})"),
        Value::Array(_) => "an array".to_string(),
        Value::Object(_) => "an object".to_string(),
    }
}

/// A value that fits f32 and is finite; JSON cannot hold NaN, but float arrays and huge numbers can go wrong.
fn checked_f32(index: usize, value: f64) -> Result<f32, String> {
    checked_f32_of("input value", index, value)
}

pub(super) fn checked_f32_of(what: &str, index: usize, value: f64) -> Result<f32, String> {
    if value.is_nan() {
        return Err(format!("{what} {index} is NaN"));
    }
    if value.is_infinite() {
        return Err(format!("{what} {index} is infinite"));
    }
    let narrowed = value as f32;
    if narrowed.is_infinite() {
        return Err(format!("{what} {index} ({value:e}) does not fit in float32"));
    }
    Ok(narrowed)
}

/// A JSON integer, or a message saying why the value is not one.
fn json_integer(value: &Value, what: &str) -> Result<i64, String> {
    let found = match value {
        Value::Number(n) if n.is_f64() => format!("{n}"),
        Value::Number(n) => return n.as_i64().ok_or_else(|| format!("{what} {n} is too large")),
        other => describe_json(other),
    };
    Err(format!("{what} must be an integer, found {found}"))
}

/// A class index from JSON: an integer >= 0, and below `num_classes` when given.
pub(crate) fn class_label(value: &Value, num_classes: Option<usize>) -> Result<i64, String> {
    check_class(json_integer(value, "label")?, num_classes)
}

fn check_class(label: i64, num_classes: Option<usize>) -> Result<i64, String> {
    match num_classes {
        Some(n) if usize::try_from(label).map_or(true, |l| l >= n) => Err(format!("label {label} out of range 0..{n} (num_classes)")),
        None if label < 0 => Err(format!("label {label} is negative")),
        _ => Ok(label),
    }
}

/// serde_json's message without its "at line 1 column 5" tail, which would misstate the file position.
fn json_error_message(error: &serde_json::Error) -> String {
    let full = error.to_string();
    let message = full.rsplit_once(" at line ").map_or(full.as_str(), |(message, _)| message);
    format!("invalid JSON: {message} (column {})", error.column())
}

/// Runs `push` on each element of a JSON array as it is parsed, so that one record at a time is
/// held as JSON; an error names the record (0-based), a syntax error its line.
fn each_array_element(text: &str, push: &mut dyn FnMut(&Value) -> Result<(), String>) -> Result<(), DataError> {
    use serde::de::{DeserializeSeed, Error, SeqAccess, Visitor};
    struct Each<'a> {
        push: &'a mut dyn FnMut(&Value) -> Result<(), String>,
        failed: &'a mut Option<DataError>,
    }
    impl<'de> Visitor<'de> for Each<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an array of records")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            let mut i = 0;
            while let Some(record) = seq.next_element::<Value>()? {
                if let Err(m) = (self.push)(&record) {
                    *self.failed = Some(DataError::at_record(i, m));
                    return Err(A::Error::custom("a bad record"));
                }
                i += 1;
            }
            Ok(())
        }
    }
    impl<'de> DeserializeSeed<'de> for Each<'_> {
        type Value = ();
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_seq(self)
        }
    }
    let mut failed = None;
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = Each { push, failed: &mut failed }.deserialize(&mut de).and_then(|()| de.end());
    match (failed, parsed) {
        (Some(e), _) => Err(e),
        (None, Err(e)) => Err(DataError::at_line(e.line(), json_error_message(&e))),
        (None, Ok(())) => Ok(()),
    }
}

/// One line of a JSON-lines file.
pub(crate) fn parse_json_line(line_number: usize, line: &str) -> Result<Value, DataError> {
    serde_json::from_str(line).map_err(|e| DataError::at_line(line_number, json_error_message(&e)))
}

/// A whole JSON document; errors point at serde's line.
pub(crate) fn parse_json_document(text: &str) -> Result<Value, DataError> {
    serde_json::from_str(text).map_err(|e| DataError::at_line(e.line(), json_error_message(&e)))
}

/// Which labels the dataset has; fixed by the spec, or by the first record when the spec leaves it open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LabelKind {
    Undecided,
    Class { num_classes: Option<usize> },
    Bits { per_sample: Option<usize>, from_spec: bool },
    Targets { per_sample: Option<usize>, from_spec: bool },
}

/// Accumulates validated records from any format.
pub(super) struct RecordSetBuilder<'a> {
    spec: &'a RecordSpec,
    values: Vec<f32>,
    ids: Vec<i64>,
    /// Token size learned from shaped inputs, when the spec does not fix it.
    learned_token_dim: Option<usize>,
    offsets: Vec<usize>,
    label_kind: LabelKind,
    classes: Vec<i64>,
    bits: Vec<u8>,
    targets: Vec<f32>,
    /// Labels given as names, record by record (then `classes` is filled at the finish).
    names: Vec<String>,
}

impl<'a> RecordSetBuilder<'a> {
    pub(super) fn new(spec: &'a RecordSpec) -> Result<Self, DataError> {
        let label_kind = match (spec.num_classes, spec.bits, spec.targets) {
            (Some(_), Some(_), _) => return Err(DataError::new("spec", "num_classes and bits cannot both be set")),
            (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
                return Err(DataError::new("spec", "regression targets cannot be set with num_classes or bits"))
            }
            (Some(0), None, None) => return Err(DataError::new("spec", "num_classes must be at least 1")),
            (None, Some(0), None) => return Err(DataError::new("spec", "bits must be at least 1")),
            (None, None, Some(Some(0))) => return Err(DataError::new("spec", "num_targets must be at least 1")),
            (Some(n), None, None) => LabelKind::Class { num_classes: Some(n) },
            (None, Some(k), None) => LabelKind::Bits { per_sample: Some(k), from_spec: true },
            (None, None, Some(k)) => LabelKind::Targets { per_sample: k, from_spec: k.is_some() },
            (None, None, None) => LabelKind::Undecided,
        };
        match spec.input {
            InputSpec::Continuous { token_dim: Some(0) } => return Err(DataError::new("spec", "token_dim must be at least 1")),
            InputSpec::Tokens { vocab_size: 0 } => return Err(DataError::new("spec", "vocab_size must be at least 1")),
            _ => {}
        }
        Ok(RecordSetBuilder {
            spec,
            values: Vec::new(),
            ids: Vec::new(),
            learned_token_dim: None,
            offsets: vec![0],
            label_kind,
            classes: Vec::new(),
            bits: Vec::new(),
            targets: Vec::new(),
            names: Vec::new(),
        })
    }

    fn token_total(&self) -> usize {
        self.offsets.last().copied().unwrap_or(0)
    }

    /// The token size for this record: from the spec, else from the record's own shape, which must match earlier ones.
    fn resolve_token_dim(&mut self, spec_dim: Option<usize>, shape_dim: Option<usize>, count: usize) -> Result<usize, String> {
        match (spec_dim, shape_dim) {
            (Some(expected), Some(found)) if found != expected => {
                Err(format!("tokens have {found} values, expected {expected} (token_dim)"))
            }
            (Some(expected), _) if !count.is_multiple_of(expected) => {
                Err(format!("input has {count} values, expected a multiple of {expected} (token_dim)"))
            }
            (Some(expected), _) => Ok(expected),
            // A flat list with no token size given is a series of single values.
            (None, None) => self.resolve_token_dim(None, Some(1), count),
            (None, Some(0)) => Err("tokens have 0 values".to_string()),
            (None, Some(found)) => match self.learned_token_dim.replace(found) {
                Some(earlier) if earlier != found => {
                    Err(format!("tokens have {found} values but earlier records have {earlier} (mixed shapes)"))
                }
                _ => Ok(found),
            },
        }
    }

    /// Adds a record of real values; `shape_dim` is the token size the record's own shape states, if any.
    pub(super) fn push_values(&mut self, values: &[f32], shape_dim: Option<usize>) -> Result<(), String> {
        let InputSpec::Continuous { token_dim } = self.spec.input else {
            return Err("input holds real values, but the dataset expects token ids".to_string());
        };
        if values.is_empty() {
            return Err("input is empty".to_string());
        }
        let dim = self.resolve_token_dim(token_dim, shape_dim, values.len())?;
        self.values.extend_from_slice(values);
        self.offsets.push(self.token_total() + values.len() / dim);
        Ok(())
    }

    /// Adds a record of token ids, each in 0..vocab_size.
    fn push_ids(&mut self, ids: &[i64]) -> Result<(), String> {
        let InputSpec::Tokens { vocab_size } = self.spec.input else {
            return Err("input holds token ids, but the dataset expects real values (tokens of token_dim)".to_string());
        };
        if ids.is_empty() {
            return Err("input is empty".to_string());
        }
        let out_of_range = ids.iter().enumerate().find(|(_, &id)| usize::try_from(id).map_or(true, |id| id >= vocab_size));
        if let Some((index, id)) = out_of_range {
            return Err(format!("token id {id} at index {index} out of range 0..{vocab_size} (vocab_size)"));
        }
        self.ids.extend_from_slice(ids);
        self.offsets.push(self.token_total() + ids.len());
        Ok(())
    }

    /// A class given by name: an index into the spec's names, or collected for the finish to number.
    fn push_class_name(&mut self, name: &str) -> Result<(), String> {
        if name.is_empty() || name.chars().count() > 256 {
            return Err("a class name is 1 to 256 characters".to_string());
        }
        if let Some(known) = &self.spec.label_names {
            if known.is_empty() {
                return Err(format!("label `{name}` is a name, but the training file's labels are class indices"));
            }
            let index = known
                .iter()
                .position(|n| n == name)
                .ok_or_else(|| format!("label `{name}` is not one of the training file's classes ({})", known.join(", ")))?;
            return self.push_class_checked(index as i64);
        }
        if !self.classes.is_empty() && self.names.is_empty() {
            return Err(format!("label `{name}` is a name, but earlier records have class indices"));
        }
        self.push_class_checked(0)?;
        self.names.push(name.to_string());
        Ok(())
    }

    fn push_class(&mut self, label: i64) -> Result<(), String> {
        if !self.names.is_empty() {
            return Err(format!("label {label} is a class index, but earlier records have class names"));
        }
        self.push_class_checked(label)
    }

    pub(super) fn push_class_checked(&mut self, label: i64) -> Result<(), String> {
        let num_classes = match self.label_kind {
            LabelKind::Bits { .. } => return Err("label is a class index, but the dataset has bit labels".to_string()),
            LabelKind::Targets { .. } => return Err(TARGETS_NOT_LABELS.to_string()),
            LabelKind::Undecided => None,
            LabelKind::Class { num_classes } => num_classes,
        };
        self.label_kind = LabelKind::Class { num_classes };
        self.classes.push(check_class(label, num_classes)?);
        Ok(())
    }

    fn push_bits(&mut self, bits: &[i64]) -> Result<(), String> {
        let (per_sample, from_spec) = match self.label_kind {
            LabelKind::Class { .. } => return Err("label is a bit array, but the dataset has class labels".to_string()),
            LabelKind::Targets { .. } => return Err(TARGETS_NOT_LABELS.to_string()),
            LabelKind::Undecided => (None, false),
            LabelKind::Bits { per_sample, from_spec } => (per_sample, from_spec),
        };
        match per_sample {
            Some(expected) if bits.len() != expected && from_spec => {
                return Err(format!("label has {} bits, expected {expected} (bits)", bits.len()))
            }
            Some(expected) if bits.len() != expected => {
                return Err(format!("label has {} bits but earlier records have {expected} (mixed shapes)", bits.len()))
            }
            _ if bits.is_empty() => return Err("label is an empty bit array".to_string()),
            _ => {}
        }
        if let Some((index, value)) = bits.iter().enumerate().find(|(_, &b)| b != 0 && b != 1) {
            return Err(format!("bit label {index} is {value}, expected 0 or 1"));
        }
        self.label_kind = LabelKind::Bits { per_sample: Some(bits.len()), from_spec };
        self.bits.extend(bits.iter().map(|&b| b as u8));
        Ok(())
    }

    pub(super) fn push_targets(&mut self, values: &[f32]) -> Result<(), String> {
        let (per_sample, from_spec) = match self.label_kind {
            LabelKind::Class { .. } | LabelKind::Bits { .. } => {
                return Err("record has a \"target\", but the dataset has class or bit labels (\"label\")".to_string())
            }
            LabelKind::Undecided => (None, false),
            LabelKind::Targets { per_sample, from_spec } => (per_sample, from_spec),
        };
        match per_sample {
            _ if values.is_empty() => return Err("target is an empty array".to_string()),
            Some(expected) if values.len() != expected && from_spec => {
                return Err(format!("target has {} values, expected {expected} (num_targets)", values.len()))
            }
            Some(expected) if values.len() != expected => {
                return Err(format!("target has {} values but earlier records have {expected} (mixed shapes)", values.len()))
            }
            _ => {}
        }
        self.label_kind = LabelKind::Targets { per_sample: Some(values.len()), from_spec };
        self.targets.extend_from_slice(values);
        Ok(())
    }

    pub(super) fn finish(self) -> Result<RecordSet, DataError> {
        if self.offsets.len() == 1 {
            return Err(DataError::file("no records found"));
        }
        let inputs = match self.spec.input {
            InputSpec::Continuous { token_dim } => {
                let token_dim = token_dim.or(self.learned_token_dim).unwrap_or(1);
                RecordInputs::Continuous { values: self.values, token_dim }
            }
            InputSpec::Tokens { .. } => RecordInputs::Tokens { ids: self.ids },
        };
        let labels = match self.label_kind {
            LabelKind::Bits { per_sample, .. } => RecordLabels::Bits { bits: self.bits, per_sample: per_sample.unwrap_or(0) },
            LabelKind::Targets { per_sample, .. } => RecordLabels::Targets { values: self.targets, per_sample: per_sample.unwrap_or(0) },
            _ => RecordLabels::Class(self.classes),
        };
        let (labels, label_names) = match labels {
            RecordLabels::Class(_) if !self.names.is_empty() => {
                let (classes, names) = number_names(&self.names, self.spec.num_classes)?;
                (RecordLabels::Class(classes), Some(names))
            }
            other => (other, self.spec.label_names.clone().filter(|n| !n.is_empty())),
        };
        Ok(RecordSet { inputs, offsets: self.offsets, labels, label_names })
    }
}

/// Class names numbered in sorted order; the labels as those numbers.
fn number_names(names: &[String], num_classes: Option<usize>) -> Result<(Vec<i64>, Vec<String>), DataError> {
    let mut sorted: Vec<String> = names.to_vec();
    sorted.sort();
    sorted.dedup();
    if let Some(n) = num_classes.filter(|&n| sorted.len() > n) {
        return Err(DataError::file(format!("{} class names, more than num_classes ({n})", sorted.len())));
    }
    let classes = names.iter().map(|n| sorted.binary_search(n).expect("a collected name") as i64).collect();
    Ok((classes, sorted))
}

/// Real values of a flat JSON array.
fn json_values(items: &[Value]) -> Result<Vec<f32>, String> {
    items
        .iter()
        .enumerate()
        .map(|(index, item)| match item.as_f64() {
            Some(value) => checked_f32(index, value),
            None => Err(format!("input value {index} is {}, expected a number", describe_json(item))),
        })
        .collect()
}

/// Real values of a `[L][D]` JSON array, and D; every row must have the same length.
fn json_rows(rows: &[Value]) -> Result<(Vec<f32>, usize), String> {
    let mut values = Vec::new();
    let mut row_len = None;
    for (row_index, row) in rows.iter().enumerate() {
        let items = row.as_array().ok_or_else(|| format!("input row {row_index} is {}, expected an array", describe_json(row)))?;
        match row_len {
            Some(first) if items.len() != first => {
                return Err(format!("input row {row_index} has {} values but row 0 has {first}", items.len()))
            }
            _ => row_len = Some(items.len()),
        }
        let row_values = json_values(items).map_err(|problem| format!("input row {row_index}: {problem}"))?;
        values.extend(row_values);
    }
    Ok((values, row_len.unwrap_or(0)))
}

fn push_json_input(builder: &mut RecordSetBuilder, input: &Value) -> Result<(), String> {
    let items = input.as_array().ok_or_else(|| format!("\"input\" is {}, expected an array", describe_json(input)))?;
    match builder.spec.input {
        InputSpec::Tokens { .. } => {
            let ids = items
                .iter()
                .enumerate()
                .map(|(index, item)| json_integer(item, &format!("token id at index {index}")))
                .collect::<Result<Vec<_>, _>>()?;
            builder.push_ids(&ids)
        }
        InputSpec::Continuous { .. } if items.first().is_some_and(Value::is_array) => {
            let (values, dim) = json_rows(items)?;
            builder.push_values(&values, Some(dim))
        }
        InputSpec::Continuous { .. } => builder.push_values(&json_values(items)?, None),
    }
}

/// A multi-label record's labels as a 0/1 vector over `k`: from a list of distinct indices below `k`,
/// or from a 0/1 vector of length `k`.
fn multilabel_vector(items: &[Value], k: usize) -> Result<Vec<i64>, String> {
    let values =
        items.iter().enumerate().map(|(index, item)| json_integer(item, &format!("label {index}"))).collect::<Result<Vec<_>, _>>()?;
    if values.len() == k && values.iter().all(|&v| v == 0 || v == 1) {
        return Ok(values);
    }
    let mut vector = vec![0i64; k];
    for (index, &v) in values.iter().enumerate() {
        let slot =
            usize::try_from(v).ok().filter(|&v| v < k).ok_or_else(|| format!("label {index} is {v}, out of range 0..{k} (num_labels)"))?;
        if vector[slot] == 1 {
            return Err(format!("label {v} is listed twice"));
        }
        vector[slot] = 1;
    }
    Ok(vector)
}

fn push_json_label(builder: &mut RecordSetBuilder, label: &Value) -> Result<(), String> {
    if builder.spec.multilabel == Some(0) {
        let items = label
            .as_array()
            .ok_or_else(|| format!("\"label\" is {}, expected a list of label indices or a 0/1 vector", describe_json(label)))?;
        let mut seen = std::collections::HashSet::new();
        for (index, item) in items.iter().enumerate() {
            let v = json_integer(item, &format!("label {index}"))?;
            if v < 0 {
                return Err(format!("label {index} is {v}, a label index is 0 or more"));
            }
            if !seen.insert(v) && !(v == 0 || v == 1) {
                return Err(format!("label {v} is listed twice"));
            }
        }
        return builder.push_class_checked(0);
    }
    if let Some(k) = builder.spec.multilabel {
        let items = label
            .as_array()
            .ok_or_else(|| format!("\"label\" is {}, expected a list of label indices or a 0/1 vector", describe_json(label)))?;
        return builder.push_bits(&multilabel_vector(items, k)?);
    }
    match label {
        Value::Array(items) => {
            let bits = items
                .iter()
                .enumerate()
                .map(|(index, item)| json_integer(item, &format!("bit label {index}")))
                .collect::<Result<Vec<_>, _>>()?;
            builder.push_bits(&bits)
        }
        Value::Number(_) => builder.push_class(json_integer(label, "label")?),
        Value::String(name) => builder.push_class_name(name),
        other => Err(format!("\"label\" is {}, expected a class index, a class name or an array of 0/1 bits", describe_json(other))),
    }
}

/// A regression target: a number, or an array of numbers.
fn push_json_target(builder: &mut RecordSetBuilder, target: &Value) -> Result<(), String> {
    let number = |index: usize, v: &Value| match v.as_f64() {
        Some(x) => checked_f32_of("target value", index, x),
        None => Err(format!("target value {index} is {}, expected a number", describe_json(v))),
    };
    let values = match target {
        Value::Array(items) => items.iter().enumerate().map(|(i, v)| number(i, v)).collect::<Result<Vec<_>, _>>()?,
        Value::Number(_) => vec![number(0, target)?],
        other => return Err(format!("\"target\" is {}, expected a number or an array of numbers", describe_json(other))),
    };
    builder.push_targets(&values)
}

pub(super) fn push_json_record(builder: &mut RecordSetBuilder, record: &Value) -> Result<(), String> {
    let object = record
        .as_object()
        .ok_or_else(|| format!("expected a JSON object with \"input\" and \"label\" (or \"target\"), found {}", describe_json(record)))?;
    let input = object.get("input").ok_or("missing \"input\"")?;
    let regression = matches!(builder.label_kind, LabelKind::Targets { .. })
        || (builder.label_kind == LabelKind::Undecided && object.contains_key("target") && !object.contains_key("label"));
    push_json_input(builder, input)?;
    if regression {
        return match object.get("target") {
            Some(target) => push_json_target(builder, target),
            None if object.contains_key("label") => Err(TARGETS_NOT_LABELS.to_string()),
            None => Err("missing \"target\" (a regression record carries a number or an array of numbers)".to_string()),
        };
    }
    let label = object.get("label").ok_or("missing \"label\"")?;
    push_json_label(builder, label)
}

const TARGETS_NOT_LABELS: &str = "record has a \"label\", but the dataset has regression targets (\"target\")";

/// Reads JSON lines of `{"input": ..., "label": ...}` (extra keys allowed, blank lines ignored).
pub fn read_jsonl(bytes: &[u8], spec: &RecordSpec) -> Result<RecordSet, DataError> {
    let mut builder = RecordSetBuilder::new(spec)?;
    for_each_json_record(utf8_text(bytes)?, |record| push_json_record(&mut builder, record))?;
    builder.finish()
}

/// Runs `push` on each record of JSON lines (an error names the line) or of one JSON array of
/// objects (an error names the record, 0-based as array indices are).
pub(crate) fn for_each_json_record(text: &str, mut push: impl FnMut(&Value) -> Result<(), String>) -> Result<(), DataError> {
    let array_of_objects = text.trim_start().strip_prefix('[').is_some_and(|rest| rest.trim_start().starts_with('{'));
    if array_of_objects {
        return each_array_element(text, &mut push);
    }
    for (line_number, line) in numbered_lines(text).filter(|(_, line)| !line.trim().is_empty()) {
        push(&parse_json_line(line_number, line)?).map_err(|m| DataError::at_line(line_number, m))?;
    }
    Ok(())
}

/// Record `index`'s real values from a float or integer array, checked to be finite float32.
fn record_values(data: &ArrayData, range: std::ops::Range<usize>) -> Result<Vec<f32>, String> {
    let widen = |values: Vec<f64>| -> Result<Vec<f32>, String> {
        values.into_iter().enumerate().map(|(index, value)| checked_f32(index, value)).collect()
    };
    match data {
        ArrayData::F32(v) => widen(v[range].iter().map(|&x| f64::from(x)).collect()),
        ArrayData::F64(v) => widen(v[range].to_vec()),
        ArrayData::I64(v) => widen(v[range].iter().map(|&x| x as f64).collect()),
        ArrayData::I32(v) => Ok(v[range].iter().map(|&x| x as f32).collect()),
        ArrayData::U8(v) => Ok(v[range].iter().map(|&x| f32::from(x)).collect()),
    }
}

/// Integer elements of an array as i64; float arrays cannot hold ids or labels.
fn integer_elements(array: &Array) -> Result<Vec<i64>, DataError> {
    match &array.data {
        ArrayData::I64(v) => Ok(v.clone()),
        ArrayData::I32(v) => Ok(v.iter().map(|&x| i64::from(x)).collect()),
        ArrayData::U8(v) => Ok(v.iter().map(|&x| i64::from(x)).collect()),
        other => Err(DataError::new(
            format!("array '{}'", array.name),
            format!("has dtype {}, but it must hold integers", other.element_type().name()),
        )),
    }
}

fn shape_error(array: &Array, expected: &str) -> DataError {
    DataError::new(format!("array '{}'", array.name), format!("has shape {:?}, expected {expected}", array.shape))
}

/// Each record's index and element range in an array whose first dimension counts records.
fn record_ranges(shape: &[usize]) -> impl Iterator<Item = (usize, Range<usize>)> {
    let count = shape.first().copied().unwrap_or(0);
    let per_record = shape.iter().skip(1).product::<usize>();
    (0..count).map(move |index| (index, index * per_record..(index + 1) * per_record))
}

/// Runs `push` on every record, naming the record in any error.
fn for_each_record(shape: &[usize], mut push: impl FnMut(Range<usize>) -> Result<(), String>) -> Result<(), DataError> {
    for (index, range) in record_ranges(shape) {
        push(range).map_err(|message| DataError::at_record(index, message))?;
    }
    Ok(())
}

/// Adds every record's inputs from an `inputs` array shaped [N, L, D] or [N, F] (continuous) or [N, L] (token ids).
fn push_array_inputs(builder: &mut RecordSetBuilder, inputs: &Array) -> Result<(), DataError> {
    let rank = inputs.shape.len();
    match builder.spec.input {
        InputSpec::Tokens { .. } if rank == 2 => {
            let ids = integer_elements(inputs)?;
            for_each_record(&inputs.shape, |range| builder.push_ids(&ids[range]))
        }
        InputSpec::Tokens { .. } => Err(shape_error(inputs, "[N, L] token ids")),
        InputSpec::Continuous { .. } if rank == 2 || rank == 3 => {
            let shape_dim = inputs.shape.get(2).copied();
            for_each_record(&inputs.shape, |range| builder.push_values(&record_values(&inputs.data, range)?, shape_dim))
        }
        InputSpec::Continuous { .. } => Err(shape_error(inputs, "[N, L, D] or [N, F] real values")),
    }
}

/// Adds every record's label from a `labels` array shaped [N] (classes) or [N, k] (bits), or, as
/// regression targets, a float array shaped [N] or [N, k].
fn push_array_labels(builder: &mut RecordSetBuilder, labels: &Array) -> Result<(), DataError> {
    let float = matches!(labels.data, ArrayData::F32(_) | ArrayData::F64(_));
    if matches!(builder.label_kind, LabelKind::Targets { .. }) || (float && builder.label_kind == LabelKind::Undecided) {
        if !matches!(labels.shape.len(), 1 | 2) {
            return Err(shape_error(labels, "[N] or [N, k] regression targets"));
        }
        return for_each_record(&labels.shape, |range| builder.push_targets(&record_values(&labels.data, range)?));
    }
    let values = integer_elements(labels)?;
    match labels.shape.len() {
        1 => for_each_record(&labels.shape, |range| builder.push_class(values[range.start])),
        2 => for_each_record(&labels.shape, |range| builder.push_bits(&values[range])),
        _ => Err(shape_error(labels, "[N] class indices or [N, k] bits")),
    }
}

/// Builds records from `inputs` and `labels` arrays, whichever container they came from.
fn records_from_arrays(inputs: &Array, labels: &Array, spec: &RecordSpec) -> Result<RecordSet, DataError> {
    let mut builder = RecordSetBuilder::new(spec)?;
    let (input_count, label_count) = (inputs.shape.first().copied(), labels.shape.first().copied());
    if input_count != label_count {
        let count = |n: Option<usize>| n.map_or("no records (a scalar)".to_string(), |n| format!("{n} records"));
        return Err(DataError::file(format!("inputs hold {} but labels hold {}", count(input_count), count(label_count))));
    }
    push_array_inputs(&mut builder, inputs)?;
    push_array_labels(&mut builder, labels)?;
    builder.finish()
}

fn records_from_named(arrays: Vec<Array>, spec: &RecordSpec) -> Result<RecordSet, DataError> {
    match &arrays[..] {
        [inputs, labels] => records_from_arrays(inputs, labels, spec),
        _ => Err(DataError::file("expected arrays 'inputs' and 'labels'")),
    }
}

/// Reads records from an `.npz` holding `inputs` and `labels` arrays.
pub fn read_npz(bytes: &[u8], spec: &RecordSpec) -> Result<RecordSet, DataError> {
    records_from_named(arrays::read_npz(bytes, &[INPUTS_ARRAY, LABELS_ARRAY])?, spec)
}

/// Reads records from a `.safetensors` file holding `inputs` and `labels` tensors.
pub fn read_safetensors(bytes: &[u8], spec: &RecordSpec) -> Result<RecordSet, DataError> {
    records_from_named(arrays::read_safetensors(bytes, &[INPUTS_ARRAY, LABELS_ARRAY])?, spec)
}

/// Most columns a CSV file may have.
const MAX_CSV_COLUMNS: usize = 65_536;

/// The delimiter of a CSV/TSV header line (a tab when it has tabs, else a comma), when the line
/// looks like a header: at least two fields, at least one of them not a number.
pub(crate) fn csv_delimiter(line: &[u8]) -> Option<u8> {
    let delimiter = if line.contains(&b'\t') { b'\t' } else { b',' };
    let text = std::str::from_utf8(line).ok()?;
    let fields: Vec<&str> = text.split(delimiter as char).map(|f| f.trim().trim_matches('"')).collect();
    let named = fields.iter().any(|f| !f.is_empty() && f.parse::<f64>().is_err());
    (fields.len() >= 2 && named).then_some(delimiter)
}

/// Checks an uploaded table before any task names its columns; returns its rows. With a `label`
/// or `target` column it is read as a task would read it; otherwise (a task may name its
/// `label_column` later, or it is a forecasting task's series) every row must be whole, with at
/// most one column (a label or a time stamp) that is not all numbers; gaps are left to the task.
pub fn inspect_csv(bytes: &[u8]) -> Result<usize, DataError> {
    let (header, mut reader) = csv_reader(bytes)?;
    if header.iter().any(|h| h == "label" || h == "target") {
        let spec = RecordSpec { input: InputSpec::Continuous { token_dim: Some(1) }, ..RecordSpec::default() };
        return read_csv(bytes, &spec).map(|s| s.len());
    }
    let mut words: Option<usize> = None;
    let mut rows = 0;
    for row in reader.records() {
        let row = row.map_err(|e| DataError::at_line(e.position().map_or(0, |p| p.line() as usize), format!("invalid CSV: {e}")))?;
        let line = row.position().map_or(0, |p| p.line() as usize);
        for (j, field) in row.iter().enumerate() {
            // A gap may be a series' missing value, which a forecasting task's `missing` handles.
            if super::series::is_missing_text(field) {
                continue;
            }
            if field.parse::<f64>().is_err() {
                match words {
                    Some(w) if w != j => {
                        return Err(DataError::at_line(
                            line,
                            format!("column `{}`: `{field}` is not a number (only one column, the label, may hold names)", header[j]),
                        ))
                    }
                    _ => words = Some(j),
                }
            }
        }
        rows += 1;
    }
    if rows == 0 {
        return Err(DataError::file("no records found"));
    }
    Ok(rows)
}

/// A CSV reader past the header, and the header's names.
pub(super) fn csv_reader(bytes: &[u8]) -> Result<(Vec<String>, csv::Reader<&[u8]>), DataError> {
    let text = utf8_text(bytes)?;
    let first = text.lines().find(|l| !l.trim().is_empty()).ok_or_else(|| DataError::file("empty"))?;
    let delimiter = csv_delimiter(first.as_bytes()).ok_or_else(|| DataError::at_line(1, "expected a header row naming the columns"))?;
    let mut reader = csv::ReaderBuilder::new().delimiter(delimiter).trim(csv::Trim::All).flexible(false).from_reader(text.as_bytes());
    let header: Vec<String> =
        reader.headers().map_err(|e| DataError::at_line(1, format!("invalid CSV: {e}")))?.iter().map(String::from).collect();
    if header.len() > MAX_CSV_COLUMNS {
        return Err(DataError::at_line(1, format!("{} columns, at most {MAX_CSV_COLUMNS}", header.len())));
    }
    Ok((header, reader))
}

/// Reads a table with a header row: the label column (`label_column`, default `label`; `target`
/// for regression targets, or when there is no `label` column) and every other column a number of
/// the input, in file order. Errors name the line (the header is line 1) and the column.
pub fn read_csv(bytes: &[u8], spec: &RecordSpec) -> Result<RecordSet, DataError> {
    let (header, mut reader) = csv_reader(bytes)?;
    let wanted = spec.label_column.clone().unwrap_or_else(|| if spec.targets.is_some() { "target".into() } else { "label".into() });
    let column = header
        .iter()
        .position(|h| *h == wanted)
        .or_else(|| {
            (spec.label_column.is_none() && spec.num_classes.is_none() && spec.bits.is_none())
                .then(|| header.iter().position(|h| h == "target"))
                .flatten()
        })
        .ok_or_else(|| {
            DataError::at_line(
                1,
                format!(
                    "no column `{wanted}` (the label; set label_column or target_column to name another); the columns are {}",
                    header.join(", ")
                ),
            )
        })?;
    let regression = spec.targets.is_some() || header[column] == "target" && spec.label_column.is_none();
    let mut builder = RecordSetBuilder::new(spec)?;
    for row in reader.records() {
        let row = row.map_err(|e| DataError::at_line(e.position().map_or(0, |p| p.line() as usize), format!("invalid CSV: {e}")))?;
        let line = row.position().map_or(0, |p| p.line() as usize);
        let mut values = Vec::with_capacity(row.len().saturating_sub(1));
        if spec.missing == Missing::Drop && row.iter().enumerate().any(|(j, f)| j != column && super::series::is_missing_text(f)) {
            continue;
        }
        for (j, field) in row.iter().enumerate().filter(|&(j, _)| j != column) {
            let v: f64 = match field {
                "" if spec.missing == Missing::Interpolate => {
                    return Err(DataError::at_line(
                        line,
                        format!(
                        "column `{}` is empty: a table's row is one sample, with no series to interpolate along; set `missing` to \"drop\"",
                        header[j]
                    ),
                    ))
                }
                "" => {
                    return Err(DataError::at_line(
                        line,
                        format!("column `{}` is empty (a missing value; set the task's `missing` to \"drop\")", header[j]),
                    ))
                }
                f => f.parse().map_err(|_| DataError::at_line(line, format!("column `{}`: `{f}` is not a number", header[j])))?,
            };
            values.push(checked_f32_of(&format!("column `{}`, value", header[j]), 0, v).map_err(|m| DataError::at_line(line, m))?);
        }
        builder.push_values(&values, None).map_err(|m| DataError::at_line(line, m))?;
        let label = &row[column];
        let pushed = if regression {
            label
                .parse::<f64>()
                .map_err(|_| format!("column `{}`: `{label}` is not a number", header[column]))
                .and_then(|v| checked_f32_of("target value", 0, v))
                .and_then(|v| builder.push_targets(&[v]))
        } else {
            match label.parse::<i64>() {
                Ok(l) => builder.push_class(l),
                Err(_) => builder.push_class_name(label),
            }
        };
        pushed.map_err(|m| DataError::at_line(line, m))?;
    }
    builder.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::arrays::{npy_bytes, npz_bytes};
    use safetensors::tensor::TensorView;
    use safetensors::Dtype;

    fn continuous(token_dim: Option<usize>, num_classes: Option<usize>) -> RecordSpec {
        RecordSpec { input: InputSpec::Continuous { token_dim }, num_classes, bits: None, ..RecordSpec::default() }
    }

    fn tokens(vocab_size: usize) -> RecordSpec {
        RecordSpec { input: InputSpec::Tokens { vocab_size }, num_classes: None, bits: None, ..RecordSpec::default() }
    }

    fn le_bytes<T: Copy, const N: usize>(values: &[T], to_bytes: fn(T) -> [u8; N]) -> Vec<u8> {
        values.iter().flat_map(|&v| to_bytes(v)).collect()
    }

    fn jsonl_error(text: &str, spec: &RecordSpec) -> String {
        read_jsonl(text.as_bytes(), spec).unwrap_err().to_string()
    }

    #[test]
    fn reads_flat_and_shaped_continuous_inputs() {
        let text = "{\"input\": [1, 2, 3, 4], \"label\": 1, \"id\": \"a\"}\n\n{\"input\": [0.5, -1e-3], \"label\": 0}\n";
        let set = read_jsonl(text.as_bytes(), &continuous(Some(2), Some(2))).unwrap();
        assert_eq!(set.len(), 2);
        assert_eq!(set.offsets, vec![0, 2, 3]);
        assert_eq!(set.token_count(0), 2);
        assert_eq!(set.inputs, RecordInputs::Continuous { values: vec![1.0, 2.0, 3.0, 4.0, 0.5, -0.001], token_dim: 2 });
        assert_eq!(set.labels, RecordLabels::Class(vec![1, 0]));

        let shaped = "{\"input\": [[1, 2, 3], [4, 5, 6]], \"label\": 3}\n{\"input\": [[7, 8, 9]], \"label\": 0}";
        let set = read_jsonl(shaped.as_bytes(), &continuous(None, None)).unwrap();
        assert_eq!(set.values_per_token(), 3);
        assert_eq!(set.offsets, vec![0, 2, 3]);
    }

    #[test]
    fn reads_token_ids_and_bit_labels() {
        let spec = RecordSpec { input: InputSpec::Tokens { vocab_size: 5 }, num_classes: None, bits: Some(3), ..RecordSpec::default() };
        let set = read_jsonl(b"{\"input\": [0, 4, 2], \"label\": [1, 0, 1]}\n{\"input\": [1], \"label\": [0, 0, 0]}", &spec).unwrap();
        assert_eq!(set.inputs, RecordInputs::Tokens { ids: vec![0, 4, 2, 1] });
        assert_eq!(set.labels, RecordLabels::Bits { bits: vec![1, 0, 1, 0, 0, 0], per_sample: 3 });
        assert_eq!(set.token_count(1), 1);
        let inferred = read_jsonl(b"{\"input\": [1], \"label\": [1, 1]}", &tokens(2)).unwrap();
        assert_eq!(inferred.labels, RecordLabels::Bits { bits: vec![1, 1], per_sample: 2 });
    }

    #[test]
    fn jsonl_shape_errors_name_the_line() {
        let spec = continuous(Some(16), None);
        let err = jsonl_error(&format!("{{\"input\": {:?}, \"label\": 0}}", vec![0.5f32; 15]), &spec);
        assert_eq!(err, "line 1: input has 15 values, expected a multiple of 16 (token_dim)");
        let mixed = "{\"input\": [[1, 2]], \"label\": 0}\n{\"input\": [[1, 2]], \"label\": 0}\n{\"input\": [[1, 2, 3]], \"label\": 0}";
        assert_eq!(jsonl_error(mixed, &continuous(None, None)), "line 3: tokens have 3 values but earlier records have 2 (mixed shapes)");
        let ragged = "{\"input\": [[1, 2], [3]], \"label\": 0}";
        assert_eq!(jsonl_error(ragged, &continuous(None, None)), "line 1: input row 1 has 1 values but row 0 has 2");
        let array = read_jsonl(b"[{\"input\": [1, 2], \"label\": 0},\n {\"input\": [3], \"label\": 1}]", &continuous(None, None)).unwrap();
        assert_eq!((array.len(), array.labels.clone()), (2, RecordLabels::Class(vec![0, 1])), "a JSON array of records");
        let err = read_jsonl(b"[{\"input\": [1], \"label\": 0}, {\"label\": 1}]", &continuous(None, None)).unwrap_err();
        assert!(err.to_string().starts_with("record 2: "), "{err}");
        let series = read_jsonl(b"{\"input\": [1, 2], \"label\": 0}", &continuous(None, None)).unwrap();
        assert_eq!((series.values_per_token(), series.token_count(0)), (1, 2), "a flat list is a series of single values");
        let mixed = "{\"input\": [[1, 2]], \"label\": 0}\n{\"input\": [1, 2], \"label\": 0}";
        assert_eq!(jsonl_error(mixed, &continuous(None, None)), "line 2: tokens have 1 values but earlier records have 2 (mixed shapes)");
        assert_eq!(jsonl_error("{\"input\": [], \"label\": 0}", &spec), "line 1: input is empty");
    }

    #[test]
    fn jsonl_value_errors_name_the_line() {
        let spec = continuous(Some(1), Some(3));
        let ok = "{\"input\": [1], \"label\": 0}\n";
        assert_eq!(
            jsonl_error(&format!("{ok}{ok}{{\"input\": [1, \"NaN\"], \"label\": 0}}"), &spec),
            "line 3: input value 1 is a string (\"NaN\"), expected a number"
        );
        assert_eq!(jsonl_error("{\"input\": [1e300], \"label\": 0}", &spec), "line 1: input value 0 (1e300) does not fit in float32");
        assert_eq!(jsonl_error("{\"input\": [1], \"label\": 3}", &spec), "line 1: label 3 out of range 0..3 (num_classes)");
        assert_eq!(jsonl_error("{\"input\": [1], \"label\": 1.5}", &spec), "line 1: label must be an integer, found 1.5");
        assert_eq!(jsonl_error(&format!("{ok}{{\"input\": [1]}}"), &spec), "line 2: missing \"label\"");
        assert_eq!(jsonl_error("{\"label\": 1}", &spec), "line 1: missing \"input\"");
        assert_eq!(
            jsonl_error("[1, 2]", &spec),
            "line 1: expected a JSON object with \"input\" and \"label\" (or \"target\"), found an array"
        );
        let err = jsonl_error(&format!("{ok}{ok}{{\"input\": [1,], \"label\": 0}}"), &spec);
        assert!(err.starts_with("line 3: invalid JSON: ") && !err.contains("at line"), "{err}");
        assert_eq!(jsonl_error("\n  \n", &spec), "file: no records found");
    }

    #[test]
    fn jsonl_token_and_bit_errors() {
        assert_eq!(
            jsonl_error("{\"input\": [1, 70], \"label\": 0}", &tokens(64)),
            "line 1: token id 70 at index 1 out of range 0..64 (vocab_size)"
        );
        assert_eq!(
            jsonl_error("{\"input\": [1, -1], \"label\": 0}", &tokens(64)),
            "line 1: token id -1 at index 1 out of range 0..64 (vocab_size)"
        );
        assert_eq!(
            jsonl_error("{\"input\": [1.5], \"label\": 0}", &tokens(64)),
            "line 1: token id at index 0 must be an integer, found 1.5"
        );
        let bits = RecordSpec { bits: Some(2), ..tokens(4) };
        assert_eq!(jsonl_error("{\"input\": [1], \"label\": [1, 2]}", &bits), "line 1: bit label 1 is 2, expected 0 or 1");
        assert_eq!(jsonl_error("{\"input\": [1], \"label\": [1]}", &bits), "line 1: label has 1 bits, expected 2 (bits)");
        assert_eq!(jsonl_error("{\"input\": [1], \"label\": 1}", &bits), "line 1: label is a class index, but the dataset has bit labels");
        let mixed = "{\"input\": [1], \"label\": 1}\n{\"input\": [1], \"label\": [1]}";
        assert_eq!(jsonl_error(mixed, &tokens(4)), "line 2: label is a bit array, but the dataset has class labels");
        assert_eq!(jsonl_error("{\"input\": [1], \"label\": -1}", &tokens(4)), "line 1: label -1 is negative");
        assert_eq!(
            jsonl_error("{\"input\": [18446744073709551615], \"label\": 0}", &tokens(4)),
            "line 1: token id at index 0 18446744073709551615 is too large"
        );
    }

    #[test]
    fn spec_contradictions_are_refused() {
        let both = RecordSpec { input: InputSpec::Tokens { vocab_size: 4 }, num_classes: Some(2), bits: Some(2), ..RecordSpec::default() };
        assert!(jsonl_error("{\"input\": [1], \"label\": 1}", &both).starts_with("spec: "));
        assert!(jsonl_error("{\"input\": [1], \"label\": 1}", &continuous(Some(0), None)).contains("token_dim must be at least 1"));
    }

    fn npz_records(inputs: Vec<u8>, labels: Vec<u8>, spec: &RecordSpec) -> Result<RecordSet, DataError> {
        read_npz(&npz_bytes(&[("inputs", inputs), ("labels", labels)]), spec)
    }

    #[test]
    fn reads_npz_shaped_and_flat_inputs() {
        let values: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let labels = npy_bytes("<i8", &[2], &le_bytes(&[1i64, 0], i64::to_le_bytes));
        let shaped = npy_bytes("<f4", &[2, 3, 2], &le_bytes(&values, f32::to_le_bytes));
        let set = npz_records(shaped, labels.clone(), &continuous(None, Some(2))).unwrap();
        assert_eq!(set.offsets, vec![0, 3, 6]);
        assert_eq!(set.values_per_token(), 2);
        assert_eq!(set.labels, RecordLabels::Class(vec![1, 0]));
        let flat = npy_bytes("<f8", &[2, 6], &le_bytes(&values.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(), f64::to_le_bytes));
        let set = npz_records(flat, labels, &continuous(Some(3), None)).unwrap();
        assert_eq!(set.offsets, vec![0, 2, 4]);
        assert!(matches!(&set.inputs, RecordInputs::Continuous { values: v, token_dim: 3 } if v[11] == 11.0));
    }

    #[test]
    fn reads_npz_token_ids_and_bool_bits() {
        let ids = npy_bytes("<i4", &[2, 2], &le_bytes(&[3i32, 1, 0, 2], i32::to_le_bytes));
        let bits = npy_bytes("|b1", &[2, 3], &[1, 0, 1, 0, 1, 1]);
        let set = npz_records(ids, bits, &tokens(4)).unwrap();
        assert_eq!(set.inputs, RecordInputs::Tokens { ids: vec![3, 1, 0, 2] });
        assert_eq!(set.labels, RecordLabels::Bits { bits: vec![1, 0, 1, 0, 1, 1], per_sample: 3 });
    }

    #[test]
    fn npz_errors_name_the_record() {
        let mut values = vec![0.0f32; 24];
        values[5 * 4] = f32::NAN; // first value of record 5, at 4 values per record
        let inputs = npy_bytes("<f4", &[6, 4], &le_bytes(&values, f32::to_le_bytes));
        let labels = npy_bytes("<i8", &[6], &le_bytes(&[0i64; 6], i64::to_le_bytes));
        let err = npz_records(inputs, labels.clone(), &continuous(Some(2), None)).unwrap_err();
        assert_eq!(err.to_string(), "record 6: input value 0 is NaN");
        let inputs = npy_bytes("<f4", &[5, 4], &le_bytes(&[1.0f32; 20], f32::to_le_bytes));
        let err = npz_records(inputs, labels.clone(), &continuous(Some(2), None)).unwrap_err();
        assert_eq!(err.to_string(), "file: inputs hold 5 records but labels hold 6 records");
        let floats = npy_bytes("<f4", &[6, 1], &le_bytes(&[1.0f32; 6], f32::to_le_bytes));
        let err = npz_records(floats, labels.clone(), &tokens(4)).unwrap_err();
        assert_eq!(err.to_string(), "array 'inputs': has dtype float32, but it must hold integers");
        let ids = npy_bytes("<i8", &[6, 1], &le_bytes(&[0i64, 1, 2, 3, 9, 0], i64::to_le_bytes));
        let err = npz_records(ids, labels, &tokens(4)).unwrap_err();
        assert_eq!(err.to_string(), "record 5: token id 9 at index 0 out of range 0..4 (vocab_size)");
    }

    #[test]
    fn npz_empty_records_and_bad_shapes_are_refused() {
        let labels = npy_bytes("<i8", &[2], &le_bytes(&[0i64, 1], i64::to_le_bytes));
        let no_tokens = npy_bytes("<i8", &[2, 0], &[]);
        let err = npz_records(no_tokens, labels.clone(), &tokens(4)).unwrap_err();
        assert_eq!(err.to_string(), "record 1: input is empty");
        let ids = npy_bytes("<i8", &[2, 1], &le_bytes(&[0i64, 1], i64::to_le_bytes));
        let no_bits = npy_bytes("|u1", &[2, 0], &[]);
        let err = npz_records(ids.clone(), no_bits, &tokens(4)).unwrap_err();
        assert_eq!(err.to_string(), "record 1: label is an empty bit array");
        let cube = npy_bytes("<i8", &[2, 1, 1], &le_bytes(&[0i64, 1], i64::to_le_bytes));
        let err = npz_records(cube, labels, &tokens(4)).unwrap_err();
        assert!(err.to_string().starts_with("array 'inputs': has shape [2, 1, 1]"), "{err}");
        let err = read_npz(&npz_bytes(&[("inputs", ids)]), &tokens(4)).unwrap_err();
        assert!(err.to_string().contains("no array named 'labels'"), "{err}");
    }

    #[test]
    fn reads_safetensors_records_and_checks_infinity() {
        let mut values = vec![0.25f32; 8];
        let labels = le_bytes(&[2i64, 1], i64::to_le_bytes);
        let serialize = |values: &[f32]| {
            let input_bytes = le_bytes(values, f32::to_le_bytes);
            safetensors::serialize(
                [
                    ("inputs", TensorView::new(Dtype::F32, vec![2, 2, 2], &input_bytes).unwrap()),
                    ("labels", TensorView::new(Dtype::I64, vec![2], &labels).unwrap()),
                ],
                None,
            )
            .unwrap()
        };
        let set = read_safetensors(&serialize(&values), &continuous(Some(2), Some(3))).unwrap();
        assert_eq!(set.offsets, vec![0, 2, 4]);
        assert_eq!(set.labels, RecordLabels::Class(vec![2, 1]));
        values[7] = f32::INFINITY;
        let err = read_safetensors(&serialize(&values), &continuous(Some(2), Some(3))).unwrap_err();
        assert_eq!(err.to_string(), "record 2: input value 3 is infinite");
        let err = read_safetensors(&serialize(&[0.0; 8]), &continuous(Some(4), Some(3))).unwrap_err();
        assert_eq!(err.to_string(), "record 1: tokens have 2 values, expected 4 (token_dim)");
    }

    #[test]
    fn reads_regression_targets_and_names_bad_ones() {
        let undecided = continuous(Some(2), None);
        let set = read_jsonl(b"{\"input\": [1, 2], \"target\": 3.5}\n{\"input\": [0, 1], \"target\": -2}", &undecided).unwrap();
        assert_eq!(set.labels, RecordLabels::Targets { values: vec![3.5, -2.0], per_sample: 1 });
        let two = read_jsonl(b"{\"input\": [1, 2], \"target\": [1, 2]}", &undecided).unwrap();
        assert_eq!(two.labels, RecordLabels::Targets { values: vec![1.0, 2.0], per_sample: 2 });
        let three = RecordSpec { targets: Some(Some(3)), ..undecided.clone() };
        assert_eq!(jsonl_error("{\"input\": [1, 2], \"target\": [1, 2]}", &three), "line 1: target has 2 values, expected 3 (num_targets)");
        let mixed = "{\"input\": [1, 2], \"target\": [1, 2]}\n{\"input\": [1, 2], \"target\": 1}";
        assert_eq!(jsonl_error(mixed, &undecided), "line 2: target has 1 values but earlier records have 2 (mixed shapes)");
        assert_eq!(
            jsonl_error("{\"input\": [1, 2], \"target\": \"7\"}", &undecided),
            "line 1: \"target\" is a string (\"7\"), expected a number or an array of numbers"
        );
        assert_eq!(
            jsonl_error("{\"input\": [1, 2], \"target\": [1e300]}", &undecided),
            "line 1: target value 0 (1e300) does not fit in float32"
        );
        let regression = RecordSpec { targets: Some(None), ..undecided.clone() };
        assert!(jsonl_error("{\"input\": [1, 2], \"label\": 1}", &regression).contains("regression targets (\"target\")"));
        let then_label = "{\"input\": [1, 2], \"target\": 1}\n{\"input\": [1, 2], \"label\": 1}";
        assert!(jsonl_error(then_label, &undecided).starts_with("line 2: "), "a label after targets is refused");
        // npz: a float `labels` array holds targets.
        let inputs = npy_bytes("<f4", &[2, 2], &le_bytes(&[1f32, 2.0, 3.0, 4.0], f32::to_le_bytes));
        let labels = npy_bytes("<f8", &[2], &le_bytes(&[0.5f64, 1.5], f64::to_le_bytes));
        let set = read_npz(&npz_bytes(&[("inputs", inputs), ("labels", labels)]), &continuous(Some(2), None)).unwrap();
        assert_eq!(set.labels, RecordLabels::Targets { values: vec![0.5, 1.5], per_sample: 1 });
    }

    #[test]
    fn csv_headers_are_told_from_data_rows() {
        assert_eq!(csv_delimiter(b"a,b,label"), Some(b','));
        assert_eq!(csv_delimiter(b"x\ty\ttarget"), Some(b'\t'));
        assert_eq!(csv_delimiter(b"1,2,3"), None, "a row of numbers is no header");
        assert_eq!(csv_delimiter(b"label"), None, "one column is no table");
        let set = read_csv(b"a,label,b\n1,0,2\n3,1,4\n", &continuous(Some(2), Some(2))).unwrap();
        assert_eq!(set.inputs, RecordInputs::Continuous { values: vec![1.0, 2.0, 3.0, 4.0], token_dim: 2 });
        assert_eq!(set.labels, RecordLabels::Class(vec![0, 1]));
        let named = RecordSpec { label_column: Some("y".into()), targets: Some(None), ..continuous(Some(1), None) };
        let set = read_csv(b"y,x\n2.5,1\n", &named).unwrap();
        assert_eq!(set.labels, RecordLabels::Targets { values: vec![2.5], per_sample: 1 });
        let err = read_csv(b"a,label\n1,2\n", &continuous(Some(1), Some(2))).unwrap_err().to_string();
        assert_eq!(err, "line 2: label 2 out of range 0..2 (num_classes)");
    }

    #[test]
    fn class_names_are_numbered_in_sorted_order_and_checked() {
        let undecided = continuous(Some(1), None);
        let set = read_jsonl(
            b"{\"input\": [1], \"label\": \"dog\"}\n{\"input\": [2], \"label\": \"cat\"}\n{\"input\": [3], \"label\": \"dog\"}",
            &undecided,
        )
        .unwrap();
        assert_eq!(set.labels, RecordLabels::Class(vec![1, 0, 1]));
        assert_eq!(set.label_names, Some(vec!["cat".to_string(), "dog".to_string()]));
        let known = RecordSpec { label_names: Some(vec!["cat".into(), "dog".into()]), ..continuous(Some(1), Some(2)) };
        let set = read_csv(b"x,label\n1,dog\n2,cat\n", &known).unwrap();
        assert_eq!(set.labels, RecordLabels::Class(vec![1, 0]));
        assert_eq!(
            jsonl_error("{\"input\": [1], \"label\": \"cow\"}", &known),
            "line 1: label `cow` is not one of the training file's classes (cat, dog)"
        );
        let mixed = "{\"input\": [1], \"label\": \"cat\"}\n{\"input\": [1], \"label\": 1}";
        assert_eq!(jsonl_error(mixed, &undecided), "line 2: label 1 is a class index, but earlier records have class names");
        let too_many = "{\"input\": [1], \"label\": \"a\"}\n{\"input\": [1], \"label\": \"b\"}\n{\"input\": [1], \"label\": \"c\"}";
        assert_eq!(jsonl_error(too_many, &continuous(Some(1), Some(2))), "file: 3 class names, more than num_classes (2)");
    }

    #[test]
    fn multilabel_labels_are_index_lists_or_vectors() {
        let spec = RecordSpec { bits: Some(3), multilabel: Some(3), ..continuous(Some(1), None) };
        let set = read_jsonl(
            b"{\"input\": [1], \"label\": [2, 0]}\n{\"input\": [1], \"label\": [0, 1, 1]}\n{\"input\": [1], \"label\": []}",
            &spec,
        )
        .unwrap();
        assert_eq!(set.labels, RecordLabels::Bits { bits: vec![1, 0, 1, 0, 1, 1, 0, 0, 0], per_sample: 3 });
        assert_eq!(jsonl_error("{\"input\": [1], \"label\": [1, 1]}", &spec), "line 1: label 1 is listed twice");
        assert_eq!(
            jsonl_error("{\"input\": [1], \"label\": 2}", &spec),
            "line 1: \"label\" is a number (2), expected a list of label indices or a 0/1 vector"
        );
    }
}
