//! `fpt experiment <spec.toml>`: a grid of training runs (tasks x backbones x pretrained/random x
//! freeze settings x learning rates x seeds) through the same engine as `fpt train`, collected into
//! a results table (CSV, JSON, Markdown) and SVG plots: learning curves per group (pretrained vs
//! random, by freeze setting) and accuracy against trained parameters.
//!
//! A run is written as `fpt train` arguments, so a spec reads like the command lines it stands for.
//! Runs train in this process, or with `--server` as jobs of a running fpt service (`service`).
mod service;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Parser};
use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::flags::{LearningRate, ModelArgs};
use crate::job::train_to_file;

#[derive(Args)]
pub struct ExperimentArgs {
    /// The spec (TOML).
    pub spec: PathBuf,
    /// Where results, adapters, plots and the report (`report.md`) go (default: the spec's
    /// `out_dir`, and its `report`).
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Only rebuild the table and plots from an earlier run's results.json.
    #[arg(long)]
    pub report_only: bool,
    /// Submit the runs as fine-tuning jobs to this fpt service (e.g. http://127.0.0.1:8080) and
    /// wait on them, instead of training here; data files are uploaded to it.
    #[arg(long)]
    pub server: Option<String>,
    /// The service's API key, when it has keys.
    #[arg(long, env = "FPT_API_KEY")]
    pub api_key: Option<String>,
    /// Print each run's `fpt train` arguments and stop.
    #[arg(long)]
    pub dry_run: bool,
    /// Run only these groups (comma-separated); the other groups' finished runs stay in the
    /// results and the report as they were, each with the commit that ran it.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    name: String,
    #[serde(default)]
    description: String,
    out_dir: PathBuf,
    /// The report regenerated from the results (Markdown), e.g. docs/results.md.
    report: Option<PathBuf>,
    /// Markdown placed before the results table in the report (the paper's figures, what differs).
    #[serde(default)]
    preamble: String,
    /// `fpt train` arguments every run gets.
    #[serde(default)]
    args: Vec<String>,
    group: Vec<Group>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Group {
    name: String,
    task: String,
    #[serde(default)]
    args: Vec<String>,
    /// Backbones to run the group on (`--model` values); empty: the one the arguments name.
    #[serde(default)]
    backbones: Vec<String>,
    #[serde(default = "both_inits")]
    inits: Vec<String>,
    #[serde(default = "default_freeze")]
    freeze: Vec<String>,
    /// Learning rates, each a number or `"auto"` (searched inside the run).
    #[serde(default = "default_lr")]
    lrs: Vec<LearningRate>,
    #[serde(default = "default_seeds")]
    seeds: Vec<u64>,
    /// Classic baselines on the group's split, each a command that prints one JSON object
    /// `{"name", "metric", "test", "metrics"}` (see scripts/baselines.py).
    #[serde(default)]
    baselines: Vec<Vec<String>>,
}

fn both_inits() -> Vec<String> {
    vec!["pretrained".into(), "random".into()]
}
fn default_freeze() -> Vec<String> {
    vec!["default".into()]
}
fn default_lr() -> Vec<LearningRate> {
    vec![LearningRate::Fixed(1e-3)]
}
fn default_seeds() -> Vec<u64> {
    vec![0]
}

/// Freeze presets: the recipe's default, the paper's successive unfreezing (Table 10), the default
/// with the feed-forward layers trained too (its CIFAR-10 ablation), and everything trained.
fn freeze_flags(preset: &str) -> Result<Vec<&'static str>> {
    Ok(match preset {
        "default" | "+positions" => vec![],
        "output_only" => vec!["--freeze-ln", "--freeze-pos", "--freeze-in"],
        "+ln" => vec!["--freeze-pos", "--freeze-in"],
        "+input" => vec!["--freeze-pos"],
        "+ff" => vec!["--freeze-ff=false"],
        "full" => vec!["--freeze-attn=false", "--freeze-ff=false"],
        other => anyhow::bail!("unknown freeze preset `{other}` (default, output_only, +ln, +input, +positions, +ff, full)"),
    })
}

/// A run's arguments: the spec's, then the group's, then the grid's; a later one wins.
#[derive(Parser)]
#[command(args_override_self = true)]
struct Wrap {
    #[command(flatten)]
    m: ModelArgs,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RunRecord {
    group: String,
    task: String,
    #[serde(default)]
    backbone: String,
    init: String,
    freeze: String,
    lr: LearningRate,
    seed: u64,
    /// The run's `fpt train` arguments: a run whose spec changed is run again, and so is one from
    /// results written before they were recorded (empty here).
    #[serde(default)]
    args: Vec<String>,
    /// The commit that ran it (`git rev-parse --short HEAD`), so that a report made later, or from
    /// runs of several commits, names the code behind its numbers.
    #[serde(default)]
    commit: String,
    summary: Value,
    curve: Vec<(u64, f64, Option<f64>)>,
}

/// A finished run: its summary (`fpt train`'s JSON) and its curve (step, train loss, valid accuracy).
struct Finished {
    summary: Value,
    curve: Vec<(u64, f64, Option<f64>)>,
}

impl Finished {
    fn of(r: &crate::job::LocalRun) -> Result<Self> {
        let valid = format!("valid_{}", r.summary.primary_metric);
        // A searched run's curve is its winning trial's, continued by the run.
        let winner = r.summary.learning_rate_search.as_ref().and_then(|s| s.trials.iter().position(|t| Some(t.learning_rate) == s.chosen));
        let curve = r
            .curve
            .iter()
            .filter(|c| c.trial.is_none() || c.trial == winner)
            .map(|c| (c.step, c.get("train_loss").unwrap_or(f64::NAN), c.get(&valid)))
            .collect();
        Ok(Finished { summary: serde_json::to_value(&r.summary)?, curve })
    }

    /// A run that diverged: its summary says why, and it has no values.
    fn diverged(why: &str) -> Self {
        Finished { summary: serde_json::json!({"diverged": why}), curve: Vec::new() }
    }
}

/// Where the runs train.
enum Runner {
    Here,
    Service(service::Service),
}

/// Whether `--only` (empty: every group) takes group `g`.
fn chosen(only: &[String], g: &str) -> bool {
    only.is_empty() || only.iter().any(|o| o == g)
}

pub fn run(a: ExperimentArgs) -> Result<()> {
    let text = std::fs::read_to_string(&a.spec).with_context(|| format!("reading {}", a.spec.display()))?;
    let spec: Spec = toml::from_str(&text).with_context(|| format!("{} is not a valid experiment spec", a.spec.display()))?;
    let out = a.out_dir.clone().unwrap_or_else(|| spec.out_dir.clone());
    if let Some(unknown) = a.only.iter().find(|g| !spec.group.iter().any(|s| &s.name == *g)) {
        anyhow::bail!("--only: the spec has no group `{unknown}`");
    }
    if a.dry_run {
        let mut noted = std::collections::HashSet::new();
        for run in plan(&spec)?.into_iter().filter(|r| chosen(&a.only, &r.group)) {
            if !run.dropped.is_empty() && noted.insert(run.group.clone()) {
                println!("# group `{}`: its task generates its data; the shared `{}` is left out", run.group, run.dropped.join(" "));
            }
            let adapter = out.join("runs").join(format!("{}.safetensors", run.name));
            let args: Vec<String> = run.argv[1..].iter().map(|a| shell_quote(a)).collect();
            println!(
                "fpt train {} --lr {} --seed {} --out {}",
                args.join(" "),
                run.lr,
                run.seed,
                shell_quote(&adapter.display().to_string())
            );
        }
        return Ok(());
    }
    let results_path = out.join("results.json");
    // Finished runs are kept in results.json as they complete: a stopped suite resumes where it was.
    let done: Vec<RunRecord> = match std::fs::read_to_string(&results_path) {
        Ok(t) => serde_json::from_str(&t).with_context(|| format!("{} is corrupt", results_path.display()))?,
        Err(_) => Vec::new(),
    };
    let records: Vec<RunRecord> = if a.report_only {
        anyhow::ensure!(!done.is_empty(), "--report-only: no finished runs in {}", results_path.display());
        done
    } else {
        let mut runner = match &a.server {
            Some(url) => Runner::Service(service::Service::new(url, a.api_key.clone())?),
            None => Runner::Here,
        };
        std::fs::create_dir_all(out.join("runs"))?;
        run_grid(&spec, &out, done, &results_path, &mut runner, &a.only)?
    };
    std::fs::write(&results_path, serde_json::to_string_pretty(&records)?)?;
    write_csv(&out.join("results.csv"), &records)?;
    std::fs::write(out.join("results.md"), table(&spec, &records))?;
    // A run elsewhere (--out-dir) reports there, and leaves the spec's report as it was.
    let report = spec.report.as_ref().map(|r| a.out_dir.as_ref().map_or_else(|| r.clone(), |dir| dir.join("report.md")));
    if let Some(report) = report {
        let dir = report.parent().unwrap_or(Path::new(""));
        std::fs::write(&report, report_text(&spec, &records, &out, dir))?;
    }
    plot_curves(&out, &records)?;
    plot_params(&out.join("accuracy_vs_parameters.svg"), &records)?;
    println!("{}", table(&spec, &records));
    eprintln!("results in {}", out.display());
    Ok(())
}

/// A word as a POSIX shell reads it back: quoted when it holds anything but plain characters.
fn shell_quote(a: &str) -> String {
    if !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c)) {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', r"'\''"))
    }
}

/// One cell of the grid, with the `fpt train` arguments it stands for, parsed.
struct PlannedRun {
    name: String,
    group: String,
    task: String,
    backbone: String,
    init: String,
    freeze: String,
    lr: LearningRate,
    seed: u64,
    argv: Vec<String>,
    m: ModelArgs,
    /// The spec's shared arguments this run's task ignores, left out.
    dropped: Vec<String>,
}

/// The grid, expanded in the spec's order; every run's arguments are parsed here, so a bad spec
/// fails before the first run starts.
fn plan(spec: &Spec) -> Result<Vec<PlannedRun>> {
    let mut runs = Vec::new();
    for g in &spec.group {
        let backbones: Vec<Option<&String>> = if g.backbones.is_empty() { vec![None] } else { g.backbones.iter().map(Some).collect() };
        let cells = backbones.iter().flat_map(|&b| {
            g.inits.iter().flat_map(move |init| {
                g.freeze
                    .iter()
                    .flat_map(move |preset| g.lrs.iter().flat_map(move |&lr| g.seeds.iter().map(move |&seed| (b, init, preset, lr, seed))))
            })
        });
        let (shared, dropped) = shared_args_for(&spec.args, &g.task);
        for (backbone, init, preset, lr, seed) in cells {
            let mut argv: Vec<String> = vec!["fpt".into(), "--task".into(), g.task.clone()];
            argv.extend(shared.iter().cloned());
            argv.extend(g.args.iter().cloned());
            if let Some(b) = backbone {
                argv.extend(["--model".to_string(), b.clone()]);
            }
            match init.as_str() {
                "pretrained" => {}
                "random" => argv.push("--no-pretrained".into()),
                "no_backbone" => argv.push("--no-backbone".into()),
                other => anyhow::bail!("group `{}`: unknown init `{other}` (pretrained, random, no_backbone)", g.name),
            }
            argv.extend(freeze_flags(preset)?.iter().map(|s| s.to_string()));
            let m = Wrap::try_parse_from(&argv).with_context(|| format!("group `{}`: bad arguments {argv:?}", g.name))?.m;
            let tag = backbone.map(|b| format!("-{}", b.replace(['/', ':'], "_"))).unwrap_or_default();
            runs.push(PlannedRun {
                name: format!("{}{tag}-{init}-{}-lr{lr}-s{seed}", g.name, preset.replace('+', "plus_")),
                group: g.name.clone(),
                task: g.task.clone(),
                backbone: m.model.clone(),
                init: init.clone(),
                freeze: preset.clone(),
                lr,
                seed,
                argv,
                m,
                dropped: dropped.clone(),
            });
        }
    }
    Ok(runs)
}

/// The spec's shared arguments for a group: a task that generates its data reads no file, so the
/// shared data files (`--train`, `--valid`, `--test`) are dropped for it (and returned, to be
/// said). A group's own arguments are never dropped: a file there is refused.
fn shared_args_for(args: &[String], task: &str) -> (Vec<String>, Vec<String>) {
    let generated = crate::tasks::TaskSpec::parse_cli(task).is_ok_and(|t| !t.needs_file());
    if !generated {
        return (args.to_vec(), Vec::new());
    }
    let is_file_flag = |a: &str| ["--train", "--valid", "--test"].iter().any(|f| a == *f || a.starts_with(&format!("{f}=")));
    let (mut kept, mut dropped) = (Vec::new(), Vec::new());
    let mut words = args.iter();
    while let Some(a) = words.next() {
        if is_file_flag(a) {
            dropped.push(a.clone());
            if !a.contains('=') {
                dropped.extend(words.next().cloned());
            }
        } else {
            kept.push(a.clone());
        }
    }
    (kept, dropped)
}

/// Init of the records that are a group's classic baselines (their name is `summary.baseline`).
const BASELINE: &str = "baseline";

/// Runs a baseline's command; its JSON becomes a record's summary, its test value under
/// `test_<metric>` as a run's would be.
fn run_baseline(group: &Group, command: &[String], commit: &str) -> Result<RunRecord> {
    let (program, args) = command.split_first().context("a baseline's command is empty")?;
    let out = std::process::Command::new(program).args(args).output().with_context(|| format!("running {command:?}"))?;
    anyhow::ensure!(out.status.success(), "baseline {command:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).with_context(|| format!("baseline {command:?} printed no JSON object"))?;
    let metric = v["metric"].as_str().context("a baseline names its metric")?;
    let mut summary = serde_json::json!({"baseline": v["name"], "primary_metric": metric});
    for (k, x) in v["metrics"].as_object().into_iter().flatten() {
        summary[format!("test_{k}")] = x.clone();
    }
    summary[format!("test_{metric}")] = v["test"].clone();
    Ok(RunRecord {
        group: group.name.clone(),
        task: group.task.clone(),
        backbone: "-".into(),
        init: BASELINE.into(),
        freeze: "-".into(),
        lr: LearningRate::Fixed(0.0),
        seed: 0,
        args: command.to_vec(),
        commit: commit.to_string(),
        summary,
        curve: Vec::new(),
    })
}

fn run_grid(
    spec: &Spec,
    out: &Path,
    done: Vec<RunRecord>,
    results_path: &Path,
    runner: &mut Runner,
    only: &[String],
) -> Result<Vec<RunRecord>> {
    let commit = output_of("git", &["rev-parse", "--short", "HEAD"]);
    // The groups left out keep what they had.
    let mut records: Vec<RunRecord> = done.iter().filter(|r| !chosen(only, &r.group)).cloned().collect();
    for g in spec.group.iter().filter(|g| chosen(only, &g.name)) {
        for command in &g.baselines {
            match done.iter().find(|r| r.group == g.name && r.init == BASELINE && &r.args == command) {
                Some(r) => records.push(r.clone()),
                None => {
                    eprintln!("[{}] {} baseline: {}", spec.name, g.name, command.join(" "));
                    records.push(run_baseline(g, command, &commit)?);
                }
            }
        }
    }
    for run in plan(spec)?.into_iter().filter(|r| chosen(only, &r.group)) {
        let name = &run.name;
        let same = |r: &&RunRecord| {
            let cell = r.group == run.group && r.init == run.init && r.freeze == run.freeze && r.lr == run.lr && r.seed == run.seed;
            cell && r.args == run.argv
        };
        if let Some(r) = done.iter().find(same) {
            eprintln!("[{}] {name}: done before", spec.name);
            records.push(r.clone());
            continue;
        }
        eprintln!("[{}] {name}", spec.name);
        let m = &run.m;
        let r = match runner {
            Runner::Here => {
                let adapter = out.join("runs").join(format!("{name}.safetensors"));
                let ckpt = out.join("runs").join(format!("{name}.ckpt"));
                let _ = std::fs::remove_dir_all(&ckpt);
                let (registry, device) = m.common.open()?;
                let spec = m.spec(run.lr.value(), run.seed)?;
                let r = train_to_file(&spec, &registry, device, m.precision, &adapter, &ckpt, false, &m.auto_fields(run.lr), &mut |_| {});
                let _ = std::fs::remove_dir_all(&ckpt);
                match r {
                    Ok(r) => Finished::of(&r)?,
                    // A run that diverged is a result of the grid (its cell says so), not its end.
                    Err(e) if e.downcast_ref::<crate::train::Diverged>().is_some() => Finished::diverged(&e.to_string()),
                    Err(e) => return Err(e.context(format!("run {name} (the runs before it are kept in {})", results_path.display()))),
                }
            }
            Runner::Service(s) => s.run(&spec.name, name, m, run.lr, run.seed)?,
        };
        eprintln!("{}", r.summary);
        records.push(RunRecord {
            group: run.group,
            task: run.task,
            backbone: run.backbone,
            init: run.init,
            freeze: run.freeze,
            lr: run.lr,
            seed: run.seed,
            args: run.argv,
            commit: commit.clone(),
            summary: r.summary,
            curve: r.curve,
        });
        crate::fsutil::write_atomic(results_path, serde_json::to_string_pretty(&records)?.as_bytes())?;
    }
    Ok(records)
}

/// The run's primary metric (runs recorded before metrics had names were judged by accuracy).
fn primary(r: &RunRecord) -> &str {
    r.summary["primary_metric"].as_str().unwrap_or("accuracy")
}

/// The run's best validation value of its task's primary metric.
fn acc(r: &RunRecord) -> f64 {
    r.summary[format!("best_valid_{}", primary(r))].as_f64().unwrap_or(f64::NAN)
}

/// The run's test value of its primary metric (at the checkpoint chosen on validation).
fn test(r: &RunRecord) -> f64 {
    r.summary[format!("test_{}", primary(r))].as_f64().unwrap_or(f64::NAN)
}

/// What a run is judged by in the report: its test value when it has a test split, else its best
/// validation value.
fn score(r: &RunRecord) -> f64 {
    let t = test(r);
    if t.is_finite() {
        t
    } else {
        acc(r)
    }
}

/// Whether a metric is a fraction shown as a percentage.
fn is_fraction(metric: &str) -> bool {
    matches!(metric, "accuracy" | "exact_accuracy" | "micro_f1" | "macro_f1" | "subset_accuracy")
}

/// A metric's value as the report shows it: fractions as percentages, others as numbers.
fn shown(metric: &str, v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if is_fraction(metric) {
        format!("{:.2}%", 100.0 * v)
    } else {
        format!("{v:.4}")
    }
}

/// A difference of a metric as the report shows it (percentage points for fractions).
fn shown_gap(metric: &str, d: f64) -> String {
    if is_fraction(metric) {
        format!("{:.2} pts", 100.0 * d)
    } else {
        format!("{d:.4}")
    }
}

/// Whether lower values of the run's primary metric are better.
fn lower_is_better(r: &RunRecord) -> bool {
    r.summary["direction"] == "lower" || matches!(primary(r), "rmse" | "mae" | "mse" | "mase")
}

fn write_csv(path: &Path, records: &[RunRecord]) -> Result<()> {
    let mut s = String::from(
        "group,task,backbone,init,freeze,lr,seed,steps,primary_metric,best_valid,final_valid,train_loss,trainable_parameters,wall_seconds\n",
    );
    for r in records {
        let f = |k: &str| r.summary[k].to_string();
        s.push_str(&format!(
            "{},\"{}\",{},{},{},{},{},{},{},{},{},{},{},{}\n",
            r.group,
            r.task.replace('"', "\"\""),
            r.backbone,
            r.init,
            r.freeze,
            r.lr,
            r.seed,
            f("steps"),
            primary(r),
            f(&format!("best_valid_{}", primary(r))),
            f(&format!("valid_{}", primary(r))),
            f("train_loss"),
            f("trainable_parameters"),
            f("wall_seconds")
        ));
    }
    Ok(std::fs::write(path, s)?)
}

/// Per (group, backbone, freeze, init, lr): the primary metric's best validation and test values
/// (means over seeds) and the spread (max - min) of the reported one. Baselines are rows of their own.
fn table(spec: &Spec, records: &[RunRecord]) -> String {
    let mut cells: BTreeMap<(String, String, String, String, String), Vec<&RunRecord>> = BTreeMap::new();
    for r in records {
        let init = if r.init == BASELINE { r.summary["baseline"].as_str().unwrap_or(BASELINE).to_string() } else { r.init.clone() };
        let lr = if r.init == BASELINE { "-".into() } else { r.lr.to_string() };
        cells.entry((r.group.clone(), r.backbone.clone(), r.freeze.clone(), init, lr)).or_default().push(r);
    }
    let mut s = format!(
        "### {}\n\n{}\n\n| group | backbone | freeze | init | lr | runs | metric | best valid (mean) | test (mean) | spread over seeds |\n|---|---|---|---|---|---|---|---|---|---|\n",
        spec.name, spec.description
    );
    let mut last_group: Option<&str> = None;
    for ((g, b, f, i, lr), runs) in &cells {
        if last_group.is_some_and(|l| l != g) {
            s.push_str(&trivial_row(last_group.unwrap_or_default(), records));
        }
        last_group = Some(g);
        let metric = primary(runs[0]);
        let mean = |f: fn(&RunRecord) -> f64| mean_spread(&runs.iter().map(|r| f(r)).collect::<Vec<_>>());
        let (valid, test_mean, spread) = (mean(acc).0, mean(test).0, mean(score).1);
        let spread = if runs.len() > 1 { shown_gap(metric, spread) } else { "-".into() };
        s.push_str(&format!(
            "| {g} | {b} | {f} | {i} | {lr} | {} | {metric} | {} | {} | {spread} |\n",
            runs.len(),
            shown(metric, valid),
            shown(metric, test_mean)
        ));
    }
    if let Some(g) = last_group {
        s.push_str(&trivial_row(g, records));
    }
    s
}

/// The table's row of a group's trivial predictor (majority class, training mean, seasonal naive),
/// as its runs measured it on their splits; none for generated data.
fn trivial_row(g: &str, records: &[RunRecord]) -> String {
    let runs: Vec<&RunRecord> = records.iter().filter(|r| r.group == g && r.summary["trivial_predictor"].is_string()).collect();
    let Some(first) = runs.first() else { return String::new() };
    let metric = primary(first);
    let mean = |split: &str| {
        let v: Vec<f64> = runs.iter().filter_map(|r| r.summary[format!("trivial_{split}_{metric}")].as_f64()).collect();
        if v.is_empty() {
            f64::NAN
        } else {
            mean_spread(&v).0
        }
    };
    let name = first.summary["trivial_predictor"].as_str().unwrap_or_default();
    format!(
        "| {g} | - | - | trivial: {name} | - | - | {metric} | {} | {} | - |\n",
        shown(metric, mean("valid")),
        shown(metric, mean("test"))
    )
}

fn mean_spread(v: &[f64]) -> (f64, f64) {
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    (mean, v.iter().cloned().fold(f64::MIN, f64::max) - v.iter().cloned().fold(f64::MAX, f64::min))
}

/// A command's standard output, trimmed; empty when it cannot run.
fn output_of(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// The whole report: provenance (command, commit, machine), the spec's preamble, the table, plots
/// (linked from the report's folder, `report_dir`).
fn report_text(spec: &Spec, records: &[RunRecord], out: &Path, report_dir: &Path) -> String {
    let commits: std::collections::BTreeSet<&str> =
        records.iter().map(|r| if r.commit.is_empty() { "unrecorded" } else { r.commit.as_str() }).collect();
    let commit =
        format!("{} `{}`", if commits.len() > 1 { "commits" } else { "commit" }, commits.into_iter().collect::<Vec<_>>().join("`, `"));
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let wall: f64 = records.iter().filter_map(wall_seconds).sum();
    let rel = |p: &str| {
        let plot = out.join(p);
        plot.strip_prefix(report_dir).unwrap_or(&plot).display().to_string()
    };
    let mut s = format!(
        "# Results\n\n_Generated by `fpt experiment` from the spec `{}` at {commit} on {cores} cores of {cpu}; {} runs, {:.0} minutes of training in all. Regenerate with `make experiment`._\n\n{}\n\n",
        spec.name, records.len(), wall / 60.0, spec.preamble.trim()
    );
    s.push_str(&table(spec, records));
    s.push_str(&findings(records));
    s.push_str(&unfreezing(records));
    s.push_str("\n### Plots\n\n");
    let groups: std::collections::BTreeSet<&str> = records.iter().map(|r| r.group.as_str()).collect();
    for g in groups {
        s.push_str(&format!("![{g}]({})\n", rel(&format!("curve-{g}.svg"))));
    }
    s.push_str(&format!("![accuracy vs trained parameters]({})\n", rel("accuracy_vs_parameters.svg")));
    s
}

/// Plain sentences, per group and learning rate: does pretrained beat random init and the model
/// without a backbone by more than the spread over seeds, where does it stand against the trivial
/// predictor and the group's baselines (and, for forecasts, the seasonal-naive forecast of the same
/// windows), and how does a searched learning rate compare with the fixed ones? Test values where
/// the group has a test split.
fn findings(records: &[RunRecord]) -> String {
    let mut s = String::from("\n### Pretrained against random init, no backbone and the baselines\n\n");
    let cells: std::collections::BTreeSet<(&str, &str, String)> =
        records.iter().filter(|r| r.init != BASELINE).map(|r| (r.group.as_str(), r.backbone.as_str(), r.lr.to_string())).collect();
    let several = cells.iter().map(|c| c.1).collect::<std::collections::BTreeSet<_>>().len() > 1;
    for (g, b, lr) in &cells {
        let runs = |init: &str| -> Vec<&RunRecord> {
            records
                .iter()
                .filter(|r| r.group == *g && r.backbone == *b && r.lr.to_string() == *lr && r.init == init && r.freeze == "default")
                .collect()
        };
        let pretrained = runs("pretrained");
        let Some(first) = pretrained.first().copied() else { continue };
        let (metric, lower) = (primary(first), lower_is_better(first));
        let split = if test(first).is_finite() { "test" } else { "best validation" };
        let (p, sp) = stats(&pretrained);
        let name = if several { format!("{g} ({b})") } else { g.to_string() };
        let mut line = if p.is_finite() {
            format!("- {name}, lr {lr}: pretrained {split} {metric} {} over {} seed(s)", shown(metric, p), pretrained.len())
        } else {
            format!("- {name}, lr {lr}: no pretrained run finished")
        };
        for (init, label) in [("random", "random init"), ("no_backbone", "no backbone")] {
            let other = runs(init);
            if !other.is_empty() {
                line.push_str(&format!("; {}", versus(metric, lower, (p, sp, pretrained.len()), &other, label)));
            }
        }
        let trivial: Vec<f64> = pretrained.iter().map(|r| trivial_score(r)).filter(|v| v.is_finite()).collect();
        if !trivial.is_empty() {
            let v = mean_spread(&trivial).0;
            let who = first.summary["trivial_predictor"].as_str().unwrap_or("the trivial predictor");
            line.push_str(&format!("; {} {who} ({})", compared(lower, p, v), shown(metric, v)));
        }
        for base in records.iter().filter(|r| r.group == *g && r.init == BASELINE) {
            let v = base.summary[format!("test_{metric}")].as_f64().unwrap_or(f64::NAN);
            line.push_str(&format!(
                "; {} {} {} ({})",
                compared(lower, p, v),
                base.summary["baseline"].as_str().unwrap_or(BASELINE),
                shown(metric, v),
                base.args.join(" ")
            ));
        }
        let naive = pretrained.iter().filter_map(|r| r.summary["test_naive_mae"].as_f64()).collect::<Vec<_>>();
        if !naive.is_empty() && metric == "mae" {
            let v = mean_spread(&naive).0;
            line.push_str(&format!("; {} the seasonal-naive forecast of the same windows ({})", compared(true, p, v), shown(metric, v)));
        }
        let failed: Vec<String> = records
            .iter()
            .filter(|r| r.group == *g && r.backbone == *b && r.lr.to_string() == *lr)
            .filter_map(|r| r.summary["diverged"].as_str().map(|why| format!("{} seed {} diverged ({why})", r.init, r.seed)))
            .collect();
        if !failed.is_empty() {
            line.push_str(&format!("; {}", failed.join(", ")));
        }
        s.push_str(&line);
        s.push_str(".\n");
    }
    s.push_str(&searched_against_fixed(records));
    s
}

/// Mean and spread (max - min) of the runs' reported values (diverged runs have none).
fn stats(runs: &[&RunRecord]) -> (f64, f64) {
    let v: Vec<f64> = runs.iter().map(|r| score(r)).filter(|v| v.is_finite()).collect();
    if v.is_empty() {
        (f64::NAN, f64::NAN)
    } else {
        mean_spread(&v)
    }
}

/// `beats random init (84.58%) by 10.22 pts; larger than the spread over seeds (2.95 pts)`.
fn versus(metric: &str, lower: bool, (p, sp, n): (f64, f64, usize), other: &[&RunRecord], label: &str) -> String {
    let (r, sr) = stats(other);
    let margin = if lower { r - p } else { p - r };
    let spread = sp.max(sr);
    let verdict = if n < 2 || other.len() < 2 {
        "one seed, so no spread to compare with".to_string()
    } else if margin > spread {
        format!("larger than the spread over seeds ({})", shown_gap(metric, spread))
    } else {
        format!("**not** larger than the spread over seeds ({})", shown_gap(metric, spread))
    };
    if margin.abs() < 1e-12 {
        format!("ties with {label} ({})", shown(metric, r))
    } else if margin > 0.0 {
        format!("beats {label} ({}) by {}, {verdict}", shown(metric, r), shown_gap(metric, margin))
    } else {
        format!("does **not** beat {label} ({}): it is {} worse, {verdict}", shown(metric, r), shown_gap(metric, -margin))
    }
}

/// The trivial predictor's value on the split a run is reported on.
fn trivial_score(r: &RunRecord) -> f64 {
    let m = primary(r);
    let at = |split: &str| r.summary[format!("trivial_{split}_{m}")].as_f64().unwrap_or(f64::NAN);
    if test(r).is_finite() {
        at("test")
    } else {
        at("valid")
    }
}

/// How a mean `p` reads against a baseline's `v`: equal to the last bits (the same cases right,
/// summed in another order) is "the same as", not better.
fn compared(lower: bool, p: f64, v: f64) -> &'static str {
    if (p - v).abs() <= 1e-9 * v.abs().max(1.0) {
        "the same as"
    } else if (lower && p < v) || (!lower && p > v) {
        "better than"
    } else {
        "**not** better than"
    }
}

fn wall_seconds(r: &RunRecord) -> Option<f64> {
    r.summary["wall_seconds"].as_f64()
}

/// The samples a run trained (a search's trials included): what a search costs whatever else the
/// machine was doing, where the wall time also measures the machine's load.
fn samples_trained(r: &RunRecord) -> Option<f64> {
    Some(wall_seconds(r)? * r.summary["samples_per_second"].as_f64()?)
}

/// The mean of a value over the runs that have it.
fn mean_of(runs: &[&RunRecord], value: fn(&RunRecord) -> Option<f64>) -> f64 {
    mean_spread(&runs.iter().filter_map(|r| value(r)).collect::<Vec<_>>()).0
}

/// Per group with pretrained runs at `auto` and at a fixed learning rate (the same arguments
/// otherwise): the searched result against the fixed one, within the spread or not, and the
/// ratios of their mean wall times and of the samples they trained.
fn searched_against_fixed(records: &[RunRecord]) -> String {
    let pretrained = |g: &str, auto: bool| -> Vec<&RunRecord> {
        records
            .iter()
            .filter(|r| r.group == g && r.init == "pretrained" && r.freeze == "default" && (r.lr == LearningRate::Auto) == auto)
            .collect()
    };
    let groups: std::collections::BTreeSet<&str> =
        records.iter().filter(|r| r.lr == LearningRate::Auto).map(|r| r.group.as_str()).collect();
    let mut s = String::new();
    for g in groups {
        let (auto, fixed) = (pretrained(g, true), pretrained(g, false));
        let (Some(first), false) = (auto.first().copied(), fixed.is_empty()) else { continue };
        let (metric, lower) = (primary(first), lower_is_better(first));
        let ((a, sa), (f, sf)) = (stats(&auto), stats(&fixed));
        let gain = if lower { f - a } else { a - f };
        let spread = sa.max(sf);
        let verdict = if gain.abs() < 1e-12 {
            "the same".to_string()
        } else if gain > 0.0 {
            "better".to_string()
        } else if -gain <= spread {
            format!("within the spread ({})", shown_gap(metric, spread))
        } else {
            format!("**worse** by more than the spread ({})", shown_gap(metric, spread))
        };
        let chosen: Vec<String> = auto.iter().filter_map(|r| r.summary["lr"].as_f64()).map(|l| format!("{l:e}")).collect();
        s.push_str(&format!(
            "- {g}, learning rate `auto` (chose {}): {} against {} at lr {}, {verdict}; {:.2}x the wall time, {:.2}x the training samples.\n",
            chosen.join(", "),
            shown(metric, a),
            shown(metric, f),
            fixed[0].lr,
            mean_of(&auto, wall_seconds) / mean_of(&fixed, wall_seconds),
            mean_of(&auto, samples_trained) / mean_of(&fixed, samples_trained)
        ));
    }
    if s.is_empty() {
        s
    } else {
        format!("\n### The searched learning rate against the fixed one\n\n{s}")
    }
}

/// The successive-unfreezing chain (output only -> +LN -> +input -> +positions = default), for
/// every setting that ran the first preset: per preset, the mean over seeds of what the report
/// judges runs by (the test value where there is a test split, else the best validation value),
/// with the number of seeds and their spread. The default may come from another group whose runs
/// differ only in their freeze flags (same task, backbone, arguments).
fn unfreezing(records: &[RunRecord]) -> String {
    let chain = ["output_only", "+ln", "+input", "default"];
    // A run's setting: its arguments less the freeze flags (seed and lr are not among its
    // arguments), and its learning rate: a chain at 3e-3 and one at `auto` are two chains.
    let setting = |r: &RunRecord| -> (Vec<String>, String) {
        (r.args.iter().filter(|a| !a.starts_with("--freeze-")).cloned().collect(), r.lr.to_string())
    };
    let pretrained = || records.iter().filter(|r| r.init == "pretrained");
    let mut out = String::new();
    let cells: std::collections::BTreeSet<_> = pretrained()
        .filter(|r| r.freeze == "output_only")
        .map(|r| (r.group.as_str(), r.task.as_str(), r.backbone.as_str(), setting(r)))
        .collect();
    for (group, task, backbone, key) in cells {
        let runs = |preset: &str| -> Vec<&RunRecord> {
            pretrained().filter(|r| r.task == task && r.backbone == backbone && r.freeze == preset && setting(r) == key).collect()
        };
        let split = if runs("output_only").iter().any(|r| test(r).is_finite()) { "test" } else { "best validation" };
        let steps: Vec<String> = chain
            .iter()
            .map(|preset| {
                // Diverged runs have no value and are not counted.
                let v: Vec<f64> = runs(preset).into_iter().map(score).filter(|v| v.is_finite()).collect();
                let (m, spread) = if v.is_empty() { (f64::NAN, f64::NAN) } else { mean_spread(&v) };
                match v.len() {
                    0 => format!("{preset} -"),
                    1 => format!("{preset} {:.1}% (1 seed)", 100.0 * m),
                    n => format!("{preset} {:.1}% ({n} seeds, spread {:.1} pts)", 100.0 * m, 100.0 * spread),
                }
            })
            .collect();
        out.push_str(&format!("- {group}, `{task}` on {backbone}, lr {}, {split} accuracy: {}\n", key.1, steps.join(" -> ")));
    }
    if out.is_empty() {
        return out;
    }
    format!("\n### Successive unfreezing (pretrained; the paper on MNIST: 23 -> 96 -> 98 -> 98)\n\n{out}")
}

fn plot_curves(out: &Path, records: &[RunRecord]) -> Result<()> {
    let groups: Vec<String> = records.iter().map(|r| r.group.clone()).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    for g in groups {
        let runs: Vec<&RunRecord> = records.iter().filter(|r| r.group == g && r.init != BASELINE).collect();
        let Some(first) = runs.first() else { continue };
        let metric = primary(first);
        let path = out.join(format!("curve-{g}.svg"));
        let root = SVGBackend::new(&path, (720, 420)).into_drawing_area();
        root.fill(&WHITE)?;
        let xmax = runs.iter().flat_map(|r| r.curve.iter().map(|c| c.0)).max().unwrap_or(1) as f64;
        // Fractions on 0..1; other metrics (errors in the data's units) on the range they span.
        let values = || runs.iter().flat_map(|r| r.curve.iter().filter_map(|c| c.2)).filter(|v| v.is_finite());
        let (lo, hi) = if is_fraction(metric) {
            (0.0, 1.0)
        } else {
            let (lo, hi) = values().fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
            if lo < hi {
                (lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
            } else {
                (0.0, 1.0)
            }
        };
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("{g}: validation {metric} by step"), ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(32)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..xmax, lo..hi)?;
        chart.configure_mesh().x_desc("step").y_desc(metric).draw()?;
        for (i, r) in runs.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let pts: Vec<(f64, f64)> = r.curve.iter().filter_map(|c| c.2.map(|a| (c.0 as f64, a))).collect();
            chart
                .draw_series(LineSeries::new(pts, color.stroke_width(2)))?
                .label(format!("{} {} {} lr {} s{}", r.backbone, r.init, r.freeze, r.lr, r.seed))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw()?;
        root.present()?;
    }
    Ok(())
}

fn plot_params(path: &Path, records: &[RunRecord]) -> Result<()> {
    let pts: Vec<(f64, f64, String)> = records
        .iter()
        .filter(|r| r.init != BASELINE && is_fraction(primary(r)))
        .filter_map(|r| {
            r.summary["trainable_parameters"].as_f64().map(|p| (p.max(1.0).log10(), acc(r), format!("{} {}", r.group, r.freeze)))
        })
        .collect();
    if pts.is_empty() {
        return Ok(()); // no axis range to draw (plotters would never finish on an inverted one)
    }
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let (lo, hi) = pts.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let mut chart = ChartBuilder::on(&root)
        .caption("best validation accuracy (or F1) vs trained parameters (log10)", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(44)
        .build_cartesian_2d((lo - 0.2)..(hi + 0.2), 0f64..1.0)?;
    chart.configure_mesh().x_desc("log10 trained parameters").y_desc("accuracy").draw()?;
    chart.draw_series(pts.iter().map(|p| Circle::new((p.0, p.1), 4, BLUE.filled())))?;
    root.present()?;
    Ok(())
}
