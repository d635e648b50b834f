//! A finished job's results file, as OpenAI's `result_files` hold one: a CSV of its metrics
//! reports, one row per report, `step` first and then every metric any report carried (the
//! training window's `train_*`, the evaluations' `valid_*`), empty where a report lacks one. A
//! learning-rate search's trials have their rows too, with their `trial` and `learning_rate`, and
//! an ensemble's later members theirs, with their `member`.
use std::collections::BTreeSet;

use serde_json::Value;

/// Keys of a metrics report that are not a metric of that step.
const NOT_METRICS: [&str; 2] = ["step", "total_steps"];

/// The CSV of `reports` (the `data` of a job's metrics events, oldest first) and its row count.
pub fn results_csv(reports: &[Value]) -> (String, usize) {
    let columns: BTreeSet<&str> = reports
        .iter()
        .filter_map(Value::as_object)
        .flat_map(|m| m.iter().filter(|(k, v)| v.is_number() && !NOT_METRICS.contains(&k.as_str())).map(|(k, _)| k.as_str()))
        .collect();
    let mut out = String::from("step");
    for c in &columns {
        out.push(',');
        out.push_str(c);
    }
    out.push('\n');
    let mut rows = 0;
    for r in reports {
        let Some(step) = r["step"].as_u64() else { continue };
        out.push_str(&step.to_string());
        for c in &columns {
            out.push(',');
            if let Some(v) = r[*c].as_f64() {
                out.push_str(&v.to_string());
            }
        }
        out.push('\n');
        rows += 1;
    }
    (out, rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_report_is_a_row_and_every_metric_a_column() {
        let reports = [
            json!({"step": 10, "total_steps": 20, "train_loss": 0.5, "train_accuracy": 0.75}),
            json!({"step": 20, "total_steps": 20, "train_loss": 0.25, "valid_loss": 0.5, "valid_accuracy": 1.0}),
            json!({"note": "no step: not a report"}),
        ];
        let (csv, rows) = results_csv(&reports);
        assert_eq!(rows, 2);
        assert_eq!(
            csv, "step,train_accuracy,train_loss,valid_accuracy,valid_loss\n10,0.75,0.5,,\n20,,0.25,1,0.5\n",
            "columns sorted after step; a missing value is empty"
        );
    }
}
