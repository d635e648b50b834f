//! `fpt experiment`: a small grid on a tiny backbone writes its table, CSV, report and plots, and a
//! second run finds the finished runs and does not redo them.
mod common;

use std::process::Command;

#[test]
fn a_grid_writes_its_results_and_resumes() {
    let dir = common::tempdir();
    let out = dir.path().join("out");
    let report = dir.path().join("report.md");
    let spec = dir.path().join("spec.toml");
    std::fs::write(
        &spec,
        format!(
            r#"name = "tiny"
out_dir = "{out}"
report = "{report}"
preamble = "The paper's numbers would go here."
args = ["--model", "tiny-gpt2", "--models-dir", "{models}", "--precision", "fp32", "--batch-size", "8"]

[[group]]
name = "xor"
task = '{{"type":"bit_xor","n_bits":3,"n_valid":32}}'
args = ["--steps", "20", "--eval-every", "10"]
seeds = [0, 1]

[[group]]
name = "xor_unfreezing"
task = '{{"type":"bit_xor","n_bits":3,"n_valid":32}}'
args = ["--steps", "10", "--eval-every", "10"]
inits = ["pretrained"]
freeze = ["output_only", "+ln"]
"#,
            out = out.display(),
            report = report.display(),
            models = common::tiny_models().display()
        ),
    )
    .unwrap();
    let run = || Command::new(env!("CARGO_BIN_EXE_fpt")).args(["experiment", spec.to_str().unwrap()]).output().unwrap();
    let first = run();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let results: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(results.len(), 6, "2 inits x 2 seeds + 2 freeze presets");
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 7);
    let md = std::fs::read_to_string(&report).unwrap();
    assert!(
        md.contains("The paper's numbers would go here.")
            && md.contains("| xor | default | random |")
            && md.contains("| xor_unfreezing | output_only | pretrained |"),
        "{md}"
    );
    for plot in ["curve-xor.svg", "curve-xor_unfreezing.svg", "accuracy_vs_parameters.svg"] {
        assert!(std::fs::read_to_string(out.join(plot)).unwrap().contains("<svg"), "{plot}");
    }
    // The output-only preset trains fewer parameters than the default.
    let trained =
        |freeze: &str| results.iter().find(|r| r["freeze"] == freeze).unwrap()["summary"]["trainable_parameters"].as_i64().unwrap();
    assert!(trained("output_only") < trained("+ln") && trained("+ln") < trained("default"));
    let second = run();
    assert!(second.status.success());
    assert_eq!(String::from_utf8_lossy(&second.stderr).matches("done before").count(), 6);
}
