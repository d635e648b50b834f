//! The sktime/aeon/UEA time-series format (`.ts`): comment lines (`#`), header keywords
//! (`@problemName`, `@timeStamps`, `@univariate`, `@dimensions`, `@equalLength`,
//! `@classLabel true <names…>`, `@targetLabel true`; case-insensitive), then `@data` and one case
//! per line: its channels separated by `:`, each a comma-separated series, and last the class
//! label (or the regression target). A case becomes one record whose tokens are its time steps,
//! each holding one value per channel; cases may differ in length. Class labels are names even
//! when they look like digits, numbered in the order the header declares them.
use super::records::{checked_f32_of, RecordSetBuilder, RecordSpec};
use super::series::{interpolate, Missing};
use super::{numbered_lines, utf8_text, DataError, RecordSet};

/// What the header says about the cases.
#[derive(Default)]
struct Header {
    class_labels: Option<Vec<String>>,
    target: bool,
    time_stamps: bool,
}

fn flag(value: Option<&str>, line: usize, keyword: &str) -> Result<bool, DataError> {
    match value.map(str::to_ascii_lowercase).as_deref() {
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        _ => Err(DataError::at_line(line, format!("{keyword} must be followed by true or false"))),
    }
}

fn read_header<'t>(lines: &mut impl Iterator<Item = (usize, &'t str)>) -> Result<Header, DataError> {
    let mut h = Header::default();
    for (n, line) in lines.by_ref() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let keyword = words.next().unwrap_or("").to_ascii_lowercase();
        match keyword.as_str() {
            "@data" => return Ok(h),
            "@classlabel" => {
                if flag(words.next(), n, "@classLabel")? {
                    let names: Vec<String> = words.map(String::from).collect();
                    if names.is_empty() {
                        return Err(DataError::at_line(n, "@classLabel true must list the class names"));
                    }
                    h.class_labels = Some(names);
                }
            }
            "@targetlabel" => h.target = flag(words.next(), n, "@targetLabel")?,
            "@timestamps" => h.time_stamps = flag(words.next(), n, "@timeStamps")?,
            k if k.starts_with('@') => {}
            _ => return Err(DataError::at_line(n, format!("expected a header keyword (@…) before @data, found `{}`", truncate(line)))),
        }
    }
    Err(DataError::file("no @data line"))
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

/// Reads a `.ts` file into records (see the module's doc); errors name the line and the case.
pub fn read_ts(bytes: &[u8], spec: &RecordSpec) -> Result<RecordSet, DataError> {
    let text = utf8_text(bytes)?;
    let mut lines = numbered_lines(text);
    let header = read_header(&mut lines)?;
    if header.time_stamps {
        return Err(DataError::file("@timeStamps true is not supported: give the series as plain values"));
    }
    if header.class_labels.is_none() && !header.target {
        return Err(DataError::file("the file has neither @classLabel true nor @targetLabel true: nothing to learn"));
    }
    // The header's class names number the labels, unless the task brings the training file's.
    let spec = match (&header.class_labels, &spec.label_names) {
        (Some(declared), None) => RecordSpec { label_names: Some(declared.clone()), ..spec.clone() },
        _ => spec.clone(),
    };
    let mut builder = RecordSetBuilder::new(&spec)?;
    let mut case = 0usize;
    for (n, line) in lines {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = |m: String| DataError::at_line(n, format!("case {case}: {m}"));
        let mut fields: Vec<&str> = line.split(':').collect();
        let label =
            fields.pop().filter(|_| !fields.is_empty()).ok_or_else(|| at("expected channels and a label, separated by `:`".into()))?.trim();
        let mut channels: Vec<Vec<f32>> = Vec::with_capacity(fields.len());
        for (c, field) in fields.iter().enumerate() {
            let mut series = field
                .split(',')
                .enumerate()
                .map(|(t, v)| match v.trim() {
                    "?" | "NaN" | "nan" if spec.missing == Missing::Refuse => {
                        Err(format!("channel {c}, step {t}: a missing value (set the task's `missing` to \"drop\" or \"interpolate\")"))
                    }
                    "?" | "NaN" | "nan" => Ok(f32::NAN),
                    v => v
                        .parse::<f64>()
                        .map_err(|_| format!("channel {c}, step {t}: `{}` is not a number", truncate(v)))
                        .and_then(|x| checked_f32_of("value", t, x)),
                })
                .collect::<Result<Vec<f32>, String>>()
                .map_err(at)?;
            if let Some(first) = channels.first().filter(|f| f.len() != series.len()) {
                return Err(at(format!("channel {c} has {} steps, channel 0 has {}", series.len(), first.len())));
            }
            if spec.missing == Missing::Interpolate {
                interpolate(&mut series, 1, 0).map_err(|m| at(format!("channel {c} {m}")))?;
            }
            channels.push(series);
        }
        if spec.missing == Missing::Drop && channels.iter().flatten().any(|v| v.is_nan()) {
            case += 1;
            continue;
        }
        let steps = channels[0].len();
        let tokens: Vec<f32> = (0..steps).flat_map(|t| channels.iter().map(move |ch| ch[t])).collect();
        builder.push_values(&tokens, Some(channels.len())).map_err(at)?;
        let pushed = match &spec.label_names {
            Some(names) if header.class_labels.is_some() => match names.iter().position(|x| x == label) {
                Some(i) => builder.push_class_checked(i as i64),
                None => Err(format!("class `{}` is not among {}", truncate(label), names.join(", "))),
            },
            _ => label
                .parse::<f64>()
                .map_err(|_| format!("target `{}` is not a number", truncate(label)))
                .and_then(|v| checked_f32_of("target", 0, v))
                .and_then(|v| builder.push_targets(&[v])),
        };
        pushed.map_err(at)?;
        case += 1;
    }
    builder.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::records::InputSpec;
    use crate::data::{RecordInputs, RecordLabels};

    const VOWELS: &str = "# a comment\n@problemName toy\n@timeStamps false\n@univariate false\n@dimensions 2\n\
        @equalLength false\n@classLabel true 2 1\n@data\n1,2,3:4,5,6:1\n7,8:9,10:2\n";

    #[test]
    fn reads_channels_as_tokens_and_names_in_declared_order() {
        let set = read_ts(VOWELS.as_bytes(), &RecordSpec::default()).unwrap();
        assert_eq!(set.offsets, vec![0, 3, 5], "cases of 3 and 2 steps");
        assert_eq!(set.inputs, RecordInputs::Continuous { values: vec![1., 4., 2., 5., 3., 6., 7., 9., 8., 10.], token_dim: 2 });
        // `@classLabel true 2 1`: "2" is class 0, "1" class 1, as declared (not as numbers).
        assert_eq!(set.labels, RecordLabels::Class(vec![1, 0]));
        assert_eq!(set.label_names, Some(vec!["2".to_string(), "1".to_string()]));
    }

    #[test]
    fn targets_and_bad_cases_are_named() {
        let reg = "@problemName t\n@targetLabel true\n@data\n1,2,3:0.5\n4,5,6:1.5\n";
        let set = read_ts(reg.as_bytes(), &RecordSpec { targets: Some(None), ..RecordSpec::default() }).unwrap();
        assert_eq!(set.labels, RecordLabels::Targets { values: vec![0.5, 1.5], per_sample: 1 });
        let err = |text: &str| read_ts(text.as_bytes(), &RecordSpec::default()).unwrap_err().to_string();
        let head = "@classLabel true a b\n@data\n";
        assert_eq!(
            err(&format!("{head}1,2:a\n1,?:b\n")),
            "line 4: case 1: channel 0, step 1: a missing value (set the task's `missing` to \"drop\" or \"interpolate\")"
        );
        assert_eq!(err(&format!("{head}1,2:3,4:c\n")), "line 3: case 0: class `c` is not among a, b");
        assert_eq!(err(&format!("{head}1,2:3,4,5:a\n")), "line 3: case 0: channel 1 has 3 steps, channel 0 has 2");
        assert_eq!(
            err("@classLabel false\n@data\n1:2\n"),
            "file: the file has neither @classLabel true nor @targetLabel true: nothing to learn"
        );
        assert_eq!(err("@problemName x\n"), "file: no @data line");
        let three = RecordSpec { input: InputSpec::Continuous { token_dim: Some(3) }, ..RecordSpec::default() };
        assert!(read_ts(VOWELS.as_bytes(), &three).unwrap_err().to_string().contains("expected 3 (token_dim)"));
    }
}
