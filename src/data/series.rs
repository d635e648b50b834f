//! Time series for forecasting: a CSV table with one numeric column per channel (rows in time
//! order; a date or time column is recognised and skipped), or JSON lines of `{"series": …}`
//! records (a flat array for one channel, `[T][C]` for several). Missing values (empty cells,
//! `NA`, `NaN`, `null`) are refused with their line and column, or dropped or interpolated as the
//! task's `missing` says.
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::records::{csv_reader, for_each_json_record};
use super::{utf8_text, DataError};

/// What to do with a missing value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Missing {
    /// Refuse the file, naming the first missing value.
    #[default]
    Refuse,
    /// Drop every time step where a channel is missing.
    Drop,
    /// Linear interpolation within each series and channel; the ends take their nearest value.
    Interpolate,
}

/// Series of one channel layout.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesSet {
    /// The channels' names: a CSV's column names, `channel_<c>` for JSON lines.
    pub channels: Vec<String>,
    /// Each series time-major (`[T][C]` flattened), missing values already handled.
    pub series: Vec<Vec<f32>>,
    /// What the reader decided that the user should hear (a time column skipped, values interpolated).
    pub notes: Vec<String>,
}

impl SeriesSet {
    pub fn steps(&self, i: usize) -> usize {
        self.series[i].len() / self.channels.len()
    }
}

/// Cell texts that mean "no value".
pub(crate) fn is_missing_text(s: &str) -> bool {
    matches!(s, "" | "NA" | "N/A" | "NaN" | "nan" | "null" | "NULL" | "?")
}

/// A column of time stamps, by its name: `date`, `Time`, `order_date`, `timestamp`, `ds`, … (a
/// word of it, so that `uptime` or `update_rate` stay values).
fn is_time_name(name: &str) -> bool {
    let word = |w: &str| {
        matches!(w, "date" | "time" | "timestamp" | "datetime" | "ds" | "period" | "year" | "month" | "week" | "day" | "hour" | "minute")
    };
    name.to_ascii_lowercase().split(|c: char| !c.is_ascii_alphanumeric()).any(word)
}

/// A value shaped like a date or time (`1949-01`, `2020/03/01 10:00`), not a number.
fn looks_like_time(s: &str) -> bool {
    s.parse::<f64>().is_err()
        && s.chars().any(|c| c.is_ascii_digit())
        && s.chars().any(|c| matches!(c, '-' | '/' | ':'))
        && s.chars().all(|c| c.is_ascii_digit() || " -/:.TZ+".contains(c))
}

fn missing_hint() -> &'static str {
    "(a missing value; set the task's `missing` to \"drop\" or \"interpolate\")"
}

/// A table of series values: every column a channel but one time column, which is skipped.
pub fn read_csv_series(bytes: &[u8], missing: Missing) -> Result<SeriesSet, DataError> {
    let (header, mut reader) = csv_reader(bytes)?;
    let mut rows: Vec<(usize, csv::StringRecord)> = Vec::new();
    for row in reader.records() {
        let row = row.map_err(|e| DataError::at_line(e.position().map_or(0, |p| p.line() as usize), format!("invalid CSV: {e}")))?;
        rows.push((row.position().map_or(0, |p| p.line() as usize), row));
    }
    let Some((_, first)) = rows.first() else { return Err(DataError::file("no rows below the header")) };
    let time = header.iter().position(|h| is_time_name(h)).or_else(|| first.iter().position(looks_like_time));
    let channels: Vec<usize> = (0..header.len()).filter(|&j| Some(j) != time).collect();
    if channels.is_empty() {
        return Err(DataError::at_line(1, "no value columns: the only column is the time column"));
    }
    let mut values = Vec::with_capacity(rows.len() * channels.len());
    let mut lines = Vec::with_capacity(rows.len());
    for (line, row) in &rows {
        for &j in &channels {
            let field = &row[j];
            let v = if is_missing_text(field) {
                if missing == Missing::Refuse {
                    return Err(DataError::at_line(*line, format!("column `{}` is empty {}", header[j], missing_hint())));
                }
                f32::NAN
            } else {
                let v: f64 = field.parse().map_err(|_| {
                    DataError::at_line(
                        *line,
                        format!("column `{}`: `{field}` is not a number (only one column, the time, may hold other values)", header[j]),
                    )
                })?;
                finite(v).map_err(|m| DataError::at_line(*line, format!("column `{}`: {m}", header[j])))?
            };
            values.push(v);
        }
        lines.push(*line);
    }
    let mut notes = Vec::new();
    if let Some(t) = time {
        notes.push(format!("column `{}` read as the time stamps and skipped; the rows are taken in file order", header[t]));
    }
    let names = channels.iter().map(|&j| header[j].clone()).collect();
    let mut set = SeriesSet { channels: names, series: vec![values], notes };
    handle_missing(&mut set, missing, &|_, step| format!("line {}", lines[step]))?;
    Ok(set)
}

fn finite(v: f64) -> Result<f32, String> {
    let f = v as f32;
    if f.is_finite() {
        Ok(f)
    } else {
        Err(format!("{v} is not a finite float32"))
    }
}

/// JSON lines (or a JSON array) of `{"series": [...]}` records: numbers (one channel) or `[T][C]`
/// arrays; `null` is missing.
pub fn read_jsonl_series(bytes: &[u8], missing: Missing) -> Result<SeriesSet, DataError> {
    let mut channels: Option<usize> = None;
    let mut series = Vec::new();
    for_each_json_record(utf8_text(bytes)?, |record| {
        let values = series_values(record, &mut channels, missing)?;
        series.push(values);
        Ok(())
    })?;
    let c = channels.ok_or_else(|| DataError::file("no records found"))?;
    let mut set = SeriesSet { channels: (0..c).map(|i| format!("channel_{i}")).collect(), series, notes: Vec::new() };
    handle_missing(&mut set, missing, &|s, _| format!("series {s}"))?;
    Ok(set)
}

/// One record's series, time-major; its channel count must be the earlier records'.
fn series_values(record: &Value, channels: &mut Option<usize>, missing: Missing) -> Result<Vec<f32>, String> {
    let steps = record.get("series").and_then(Value::as_array).ok_or("expected an object with a \"series\" array")?;
    if steps.is_empty() {
        return Err("the series is empty".into());
    }
    let c = steps[0].as_array().map_or(1, Vec::len);
    match *channels {
        None if c == 0 => return Err("step 0 has no values".into()),
        None => *channels = Some(c),
        Some(k) if k != c => return Err(format!("{c} channels, the earlier records have {k}")),
        _ => {}
    }
    let mut values = Vec::with_capacity(steps.len() * c);
    for (t, step) in steps.iter().enumerate() {
        let cells: &[Value] = match step {
            Value::Array(a) if a.len() == c => a,
            Value::Array(a) => return Err(format!("step {t} has {} values, step 0 has {c}", a.len())),
            v if c == 1 && !steps[0].is_array() => std::slice::from_ref(v),
            _ => return Err(format!("step {t} is not an array of {c} values")),
        };
        for (ch, v) in cells.iter().enumerate() {
            values.push(match v {
                Value::Null if missing == Missing::Refuse => return Err(format!("step {t}, channel {ch} is null {}", missing_hint())),
                Value::Null => f32::NAN,
                Value::Number(n) => finite(n.as_f64().unwrap_or(f64::NAN)).map_err(|m| format!("step {t}, channel {ch}: {m}"))?,
                _ => return Err(format!("step {t}, channel {ch} is not a number")),
            });
        }
    }
    Ok(values)
}

/// Whether JSON records are series: the first holds a `"series"` (read from the start of the
/// text, for a JSON array as for lines).
pub fn holds_series(bytes: &[u8]) -> bool {
    let Ok(text) = utf8_text(bytes) else { return false };
    let text = text.trim_start().trim_start_matches('[').trim_start();
    let mut first = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    first.next().and_then(Result::ok).is_some_and(|v| v.get("series").is_some())
}

/// Drops or interpolates the missing (NaN) values as `missing` says, and notes how many there were.
/// `place(series, step)` names where a value is in the file.
fn handle_missing(set: &mut SeriesSet, missing: Missing, place: &dyn Fn(usize, usize) -> String) -> Result<(), DataError> {
    let c = set.channels.len();
    let count: usize = set.series.iter().map(|s| s.iter().filter(|v| v.is_nan()).count()).sum();
    if count == 0 {
        return Ok(());
    }
    for (i, s) in set.series.iter_mut().enumerate() {
        match missing {
            Missing::Refuse => unreachable!("refused as read"),
            Missing::Drop => {
                *s = s.chunks_exact(c).filter(|step| step.iter().all(|v| !v.is_nan())).flatten().copied().collect();
                if s.is_empty() {
                    return Err(DataError::new(place(i, 0), "every time step of this series has a missing value"));
                }
            }
            Missing::Interpolate => {
                for ch in 0..c {
                    interpolate(s, c, ch).map_err(|m| DataError::new(place(i, 0), format!("channel `{}` {m}", set.channels[ch])))?;
                }
            }
        }
    }
    let how = if missing == Missing::Drop { "time steps holding them dropped" } else { "interpolated linearly within each series" };
    set.notes.push(format!("{count} missing values, {how}"));
    Ok(())
}

/// Fills channel `ch` of a time-major series of `c` channels: between two known values linearly,
/// before the first and after the last with that value.
pub(crate) fn interpolate(s: &mut [f32], c: usize, ch: usize) -> Result<(), String> {
    let t = s.len() / c;
    let known: Vec<usize> = (0..t).filter(|&i| !s[i * c + ch].is_nan()).collect();
    let (&first, &last) = (known.first().ok_or("has no values")?, known.last().unwrap());
    for i in 0..first {
        s[i * c + ch] = s[first * c + ch];
    }
    for i in last + 1..t {
        s[i * c + ch] = s[last * c + ch];
    }
    for pair in known.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        let (va, vb) = (s[a * c + ch], s[b * c + ch]);
        for i in a + 1..b {
            s[i * c + ch] = va + (vb - va) * (i - a) as f32 / (b - a) as f32;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_csv_skips_its_time_column_and_names_missing_values() {
        let csv = "date,co2,temp\n19580329,316.1,1\n19580405,,2\n19580412,317.6,\n19580419,318.0,4\n";
        let err = read_csv_series(csv.as_bytes(), Missing::Refuse).unwrap_err().to_string();
        assert!(err.starts_with("line 3: column `co2` is empty"), "{err}");
        let set = read_csv_series(csv.as_bytes(), Missing::Interpolate).unwrap();
        assert_eq!(set.channels, ["co2", "temp"]);
        assert_eq!(set.series[0], [316.1, 1.0, 316.85, 2.0, 317.6, 3.0, 318.0, 4.0]);
        assert!(set.notes[0].contains("`date`"), "{:?}", set.notes);
        assert!(set.notes[1].starts_with("2 missing values"), "{:?}", set.notes);
        let dropped = read_csv_series(csv.as_bytes(), Missing::Drop).unwrap();
        assert_eq!(dropped.series[0], [316.1, 1.0, 318.0, 4.0]);
        // Names that only hold the letters of one are values.
        let set = read_csv_series(b"uptime,update_rate\n1,2\n3,4\n", Missing::Refuse).unwrap();
        assert_eq!(set.channels, ["uptime", "update_rate"]);
        // A time column known by its values, whatever its name.
        let set = read_csv_series(b"when,passengers\n1949-01,112\n1949-02,118\n", Missing::Refuse).unwrap();
        assert_eq!(
            (set.channels.as_slice(), set.series[0].as_slice()),
            (["passengers".to_string()].as_slice(), [112.0f32, 118.0].as_slice())
        );
        let err = read_csv_series(b"date,a\n1,x\n", Missing::Refuse).unwrap_err().to_string();
        assert_eq!(err, "line 2: column `a`: `x` is not a number (only one column, the time, may hold other values)");
    }

    #[test]
    fn json_lines_hold_one_or_many_channels() {
        let set = read_jsonl_series(b"{\"series\": [1, 2, null, 4]}\n{\"series\": [5, 6]}\n", Missing::Interpolate).unwrap();
        assert_eq!(set.series, vec![vec![1.0, 2.0, 3.0, 4.0], vec![5.0, 6.0]]);
        let set = read_jsonl_series(b"{\"series\": [[1, 10], [2, 20]]}", Missing::Refuse).unwrap();
        assert_eq!((set.channels.len(), set.steps(0)), (2, 2));
        for (text, want) in [
            ("{\"series\": [1, null]}", "line 1: step 1, channel 0 is null"),
            ("{\"series\": [[1, 2]]}\n{\"series\": [3]}", "line 2: 1 channels, the earlier records have 2"),
            ("{\"series\": [[1, 2], [3]]}", "line 1: step 1 has 1 values, step 0 has 2"),
            ("{\"input\": [1]}", "line 1: expected an object with a \"series\" array"),
        ] {
            let err = read_jsonl_series(text.as_bytes(), Missing::Refuse).unwrap_err().to_string();
            assert!(err.starts_with(want), "{text}: {err}");
        }
        let err = read_jsonl_series(b"{\"series\": [null, null]}", Missing::Interpolate).unwrap_err().to_string();
        assert_eq!(err, "series 0: channel `channel_0` has no values");
        // A JSON array of records reads as the lines do.
        let set = read_jsonl_series(b"[{\"series\": [1, 2]}, {\"series\": [3]}]", Missing::Refuse).unwrap();
        assert_eq!(set.series, vec![vec![1.0, 2.0], vec![3.0]]);
    }
}
