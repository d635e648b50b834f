//! What a command-line run is, recorded in its checkpoint folder (`run.json`) so that running the
//! same command again resumes it, a larger step budget continues it, and anything else is refused
//! with what differs instead of silently handing back the old result. The service needs none of
//! this: its jobs have ids and folders of their own.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use sha2::Digest;

use super::TrainSpec;
use crate::model::BaseModel;

/// Everything that changes a run's result, by the spec's field paths: the task, the base model
/// and its weights, the hyperparameters but the step budget (and those that only change how
/// often it logs or checkpoints, or how it splits a batch to fit memory), the freeze switches,
/// the data files' contents, the seed and the frozen weights' precision.
#[derive(Debug, Clone, PartialEq)]
pub struct Fingerprint(BTreeMap<String, Value>);

/// Hyperparameters that leave the result as it is, or that a rerun may change (the budget).
const NOT_IDENTIFYING: [&str; 6] = ["n_steps", "n_epochs", "checkpoint_every", "log_every", "micro_batch_size", "eval_batch_size"];

const FILE: &str = "run.json";

impl Fingerprint {
    pub fn of(spec: &TrainSpec<PathBuf>, base: &BaseModel, precision: &str) -> Result<Self> {
        let mut m = BTreeMap::new();
        m.insert("task".to_string(), serde_json::to_value(&spec.task)?);
        m.insert("model".into(), json!(base.name));
        m.insert("model.sha256".into(), json!(base.sha256()?));
        let h = serde_json::to_value(&spec.hyperparameters)?;
        // A schedule that decays over the run changes with its length: then the budget identifies it.
        let scheduled = spec.hyperparameters.schedule != crate::train::optim::Schedule::Constant || spec.hyperparameters.warmup_steps > 0;
        let identifies = |k: &str| !NOT_IDENTIFYING.contains(&k) || (scheduled && k == "n_steps");
        for (k, v) in h.as_object().into_iter().flatten().filter(|(k, _)| identifies(k)) {
            m.insert(format!("hyperparameters.{k}"), v.clone());
        }
        for (k, v) in serde_json::to_value(spec.switches)?.as_object().into_iter().flatten() {
            m.insert(format!("method.fpt.{k}"), v.clone());
        }
        m.insert("seed".into(), json!(spec.seed));
        m.insert("precision".into(), json!(precision));
        let files = [("training_file", &spec.files.train), ("validation_file", &spec.files.valid), ("test_file", &spec.files.test)];
        for (field, path) in files {
            let hash = path.as_deref().map(data_hash).transpose()?;
            m.insert(format!("{field}.sha256"), json!(hash));
        }
        Ok(Self(m))
    }

    /// What differs from `before`, field by field.
    fn differences(&self, before: &Self) -> Vec<Difference> {
        let keys: std::collections::BTreeSet<&String> = self.0.keys().chain(before.0.keys()).collect();
        let shown = |v: Option<&Value>| v.map_or("(none)".to_string(), |v| v.to_string());
        keys.into_iter()
            .filter(|k| self.0.get(*k) != before.0.get(*k))
            .map(|k| Difference { field: k.clone(), before: shown(before.0.get(k)), now: shown(self.0.get(k)) })
            .collect()
    }
}

/// The sha256 of what a data path holds: a file with the files a task reads beside it (MNIST's
/// labels beside its images), or a folder (CIFAR-10's batches) as its files' names and hashes.
fn data_hash(path: &Path) -> Result<String> {
    let file = |p: &Path| crate::fsutil::sha256_file(p).with_context(|| format!("reading {}", p.display()));
    if !path.is_dir() {
        let own = file(path)?;
        return Ok(match crate::tasks::files::labels_beside(path) {
            Some(labels) => format!("{own}+{}", file(&labels)?),
            None => own,
        });
    }
    let mut entries: Vec<PathBuf> = walk(path)?;
    entries.sort();
    let mut listing = String::new();
    for e in &entries {
        listing.push_str(&format!("{} {}\n", e.strip_prefix(path).unwrap_or(e).display(), file(e)?));
    }
    Ok(hex::encode(sha2::Sha256::digest(listing.as_bytes())))
}

/// The files under a folder, however deep.
fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = entry?.path();
        if p.is_dir() {
            out.extend(walk(&p)?);
        } else {
            out.push(p);
        }
    }
    Ok(out)
}

/// One field of a run that differs from the run a checkpoint folder holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Difference {
    /// The fingerprint's field path (`hyperparameters.learning_rate`, `training_file.sha256`).
    pub field: String,
    pub before: String,
    pub now: String,
}

/// Why a checkpoint folder cannot take a run; each edge names the fields its own way (the
/// command line by flag).
#[derive(Debug, thiserror::Error)]
pub enum FolderRefused {
    #[error("{} holds a checkpoint of another run ({}); {FRESH}", dir.display(), fields(differences))]
    AnotherRun { dir: PathBuf, differences: Vec<Difference> },
    #[error("{} holds a checkpoint of a run that did not record what it was: {FRESH}", dir.display())]
    Unrecorded { dir: PathBuf },
    #[error("{} holds this run checkpointed at step {step}, past the {n_steps} steps asked for: ask for at least {step}, or {FRESH}", dir.display())]
    PastBudget { dir: PathBuf, step: u64, n_steps: u64 },
}

/// Empties a checkpoint folder: only what a run writes there goes, and a folder holding anything
/// else (`--checkpoint-dir .`) is refused rather than emptied.
fn clear(dir: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    let names: Vec<(PathBuf, String)> = entries.flatten().map(|e| (e.path(), e.file_name().to_string_lossy().into_owned())).collect();
    let ours = |n: &str| n == FILE || n == "latest.json" || n.ends_with(".safetensors") || n.starts_with(".tmp-");
    // The learning-rate search's folder (its record and its trials' checkpoints) is a run's too.
    let search = |p: &Path, n: &str| p.is_dir() && n == super::run::SEARCH_DIR && is_search_folder(p);
    if let Some((_, other)) = names.iter().find(|(p, n)| !search(p, n) && (p.is_dir() || !ours(n))) {
        bail!("{} holds `{other}`, which no run wrote: it is not a checkpoint folder; give another --checkpoint-dir", dir.display());
    }
    for (p, _) in names {
        if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) }
            .with_context(|| format!("clearing {}", p.display()))?;
    }
    Ok(())
}

/// A folder holding only what a learning-rate search writes: its record, its initial adapter and
/// its trials' checkpoint folders.
fn is_search_folder(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else { return false };
    entries.flatten().all(|e| {
        let n = e.file_name().to_string_lossy().into_owned();
        let p = e.path();
        (p.is_file() && (n == crate::train::lr_search::RECORD || n.ends_with(".safetensors") || n.starts_with(".tmp-")))
            || (p.is_dir() && n.starts_with("trial-"))
    })
}

const FRESH: &str = "run with --force to start afresh there, or give another --out (or --checkpoint-dir)";

fn fields(differences: &[Difference]) -> String {
    lines(differences, &|f: &str| f.to_string()).join("; ")
}

fn lines(differences: &[Difference], name: &dyn Fn(&str) -> String) -> Vec<String> {
    differences.iter().map(|d| format!("{}: {} before, {} now", name(&d.field), d.before, d.now)).collect()
}

impl FolderRefused {
    /// The message, with each differing field named by `name` (a flag, on the command line).
    pub fn describe(&self, name: impl Fn(&str) -> String) -> String {
        match self {
            FolderRefused::AnotherRun { dir, differences } => {
                format!("{} holds a checkpoint of another run:\n  {}\n{FRESH}", dir.display(), lines(differences, &name).join("\n  "))
            }
            other => other.to_string(),
        }
    }
}

/// Readies `dir` for the run `now`, about to train to `n_steps`: with `force`, whatever it held
/// goes; a checkpoint of the same run stays, to resume from, unless it went past `n_steps`; a
/// checkpoint of another run, or of one that recorded nothing, is refused, saying what differs.
pub fn claim_folder(dir: &Path, now: &Fingerprint, n_steps: u64, force: bool) -> Result<()> {
    let latest = dir.join("latest.json");
    if force || !latest.exists() {
        clear(dir)?;
    }
    if latest.exists() {
        let before = match std::fs::read(dir.join(FILE)) {
            Ok(bytes) => {
                Fingerprint(serde_json::from_slice(&bytes).with_context(|| format!("{} is not a run record", dir.join(FILE).display()))?)
            }
            Err(_) => return Err(FolderRefused::Unrecorded { dir: dir.to_path_buf() }.into()),
        };
        let differences = now.differences(&before);
        if !differences.is_empty() {
            return Err(FolderRefused::AnotherRun { dir: dir.to_path_buf(), differences }.into());
        }
        let step = serde_json::from_slice::<Value>(&std::fs::read(&latest)?)?["step"].as_u64().unwrap_or(0);
        if step > n_steps {
            return Err(FolderRefused::PastBudget { dir: dir.to_path_buf(), step, n_steps }.into());
        }
        return Ok(());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    crate::fsutil::write_atomic(&dir.join(FILE), serde_json::to_string_pretty(&now.0)?.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn print(pairs: &[(&str, Value)]) -> Fingerprint {
        Fingerprint(pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
    }

    #[test]
    fn differences_are_listed_by_field() {
        let a = print(&[("hyperparameters.learning_rate", json!(0.001)), ("training_file.sha256", json!("aa")), ("seed", json!(0))]);
        let b = print(&[("hyperparameters.learning_rate", json!(0.01)), ("training_file.sha256", json!("bb")), ("seed", json!(0))]);
        let d = b.differences(&a);
        let shown: Vec<(&str, &str, &str)> = d.iter().map(|d| (d.field.as_str(), d.before.as_str(), d.now.as_str())).collect();
        assert_eq!(shown, [("hyperparameters.learning_rate", "0.001", "0.01"), ("training_file.sha256", "\"aa\"", "\"bb\"")]);
        assert!(a.differences(&a).is_empty());
    }

    #[test]
    fn a_folder_resumes_its_own_run_and_refuses_another() {
        let dir = tempfile::tempdir().unwrap();
        let ckpt = dir.path().join("run.ckpt");
        let a = print(&[("seed", json!(1))]);
        claim_folder(&ckpt, &a, 10, false).unwrap();
        std::fs::write(ckpt.join("latest.json"), r#"{"step": 10, "adapter": "x", "state": "y"}"#).unwrap();
        claim_folder(&ckpt, &a, 10, false).unwrap();
        claim_folder(&ckpt, &a, 20, false).expect("a larger budget continues");
        let fewer = claim_folder(&ckpt, &a, 5, false).unwrap_err().to_string();
        assert!(fewer.contains("step 10") && fewer.contains("--force"), "{fewer}");
        let b = print(&[("seed", json!(2))]);
        let other = claim_folder(&ckpt, &b, 10, false).unwrap_err();
        let refused = other.downcast_ref::<FolderRefused>().unwrap().describe(|f| format!("<{f}>"));
        assert!(refused.contains("<seed>: 1 before, 2 now") && refused.contains("--force"), "{refused}");
        claim_folder(&ckpt, &b, 10, true).unwrap();
        assert!(!ckpt.join("latest.json").exists(), "--force starts afresh");
        // A folder that is not a checkpoint folder is never emptied.
        std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
        let refused = claim_folder(dir.path(), &b, 10, true).unwrap_err().to_string();
        assert!(refused.contains("not a checkpoint folder") && dir.path().join("notes.txt").exists(), "{refused}");
    }
}
