//! Training checkpoints: the adapter plus optimiser state, step and early-stopping state, written
//! atomically; `latest.json` is renamed into place last, so it only ever names complete files.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::optim::Adam;
use crate::model::fpt::FptModel;
use crate::model::weights::{read_safetensors, write_safetensors};

/// Everything besides tensors that a resumed run needs to continue exactly.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LoopState {
    /// Steps completed.
    pub step: u64,
    /// The best validation value of the task's primary metric (named for accuracy by runs
    /// checkpointed before metrics had names).
    #[serde(alias = "best_valid_accuracy")]
    pub best_valid: Option<f64>,
    /// The validation loss of the best evaluation, which breaks ties of the primary metric.
    #[serde(default)]
    pub best_valid_loss: Option<f64>,
    pub best_step: Option<u64>,
    /// Evaluations since the best one (early stopping).
    pub evals_since_best: u64,
    /// The open report window (steps since the last progress report), so a run paused mid-window
    /// reports the same averages after resuming.
    #[serde(default)]
    pub window: WindowSums,
    /// The first step's loss, and the evaluations in a row since whose window's loss has been far
    /// above it (see [`super::Diverged`]).
    #[serde(default)]
    pub start_loss: Option<f64>,
    #[serde(default)]
    pub evals_diverging: u64,
    /// The step of the last evaluation that bettered the primary metric (a tie does not), from
    /// which a plateau counts.
    #[serde(default)]
    pub improved_step: Option<u64>,
    /// The run stopped early here: resumed (the same command again), it is finished.
    #[serde(default)]
    pub stopped_early: bool,
    /// The training metrics of the last report (`train_loss`, `train_<metric>`), so that a run
    /// resumed at its end (an ensemble's finished member, when its job resumes) ends with them.
    #[serde(default)]
    pub last_train: crate::metrics::MetricMap,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct WindowSums {
    pub loss: f64,
    #[serde(default)]
    pub tally: crate::metrics::Tally,
    pub steps: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Latest {
    pub step: u64,
    pub adapter: String,
    pub state: String,
}

pub fn adapter_path(dir: &Path, step: u64) -> PathBuf {
    dir.join(format!("step-{step:08}.adapter.safetensors"))
}

pub fn best_path(dir: &Path) -> PathBuf {
    dir.join("best.adapter.safetensors")
}

/// Writes the checkpoint of `state.step`; returns the adapter's path.
pub fn save(dir: &Path, model: &FptModel, adam: &Adam, state: &LoopState, meta: &HashMap<String, String>) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let adapter = adapter_path(dir, state.step);
    let mut m = meta.clone();
    m.insert("step".into(), state.step.to_string());
    model.save_adapter(&adapter, &m)?;
    let names: Vec<String> = model.trained().map(|p| p.name.clone()).collect();
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let (m, v) = adam.moments(i);
        tensors.push((format!("m/{n}"), m));
        tensors.push((format!("v/{n}"), v));
    }
    let state_meta = HashMap::from([("loop".to_string(), serde_json::to_string(state)?), ("adam_t".to_string(), adam.t.to_string())]);
    let state_file = dir.join(format!("step-{:08}.state.safetensors", state.step));
    write_safetensors(&state_file, &tensors, state_meta)?;
    let latest = Latest {
        step: state.step,
        adapter: adapter.file_name().unwrap().to_string_lossy().into(),
        state: state_file.file_name().unwrap().to_string_lossy().into(),
    };
    crate::fsutil::write_atomic(&dir.join("latest.json"), serde_json::to_string(&latest)?.as_bytes())?;
    // A resume needs the latest checkpoint alone (and the kept best, which has its own name): the
    // folder does not grow with the run. A service copies each checkpoint out before the next.
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("step-") && name != latest.adapter && name != latest.state {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(adapter)
}

/// The optimiser-state file saved beside a checkpoint's adapter file (same step).
pub fn state_name_of(adapter_name: &str) -> Option<String> {
    adapter_name.strip_suffix(".adapter.safetensors").filter(|s| s.starts_with("step-")).map(|s| format!("{s}.state.safetensors"))
}

pub fn latest(dir: &Path) -> Result<Option<Latest>> {
    let p = dir.join("latest.json");
    if !p.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&p)?;
    Ok(Some(serde_json::from_str(&text).with_context(|| format!("{} is corrupt", p.display()))?))
}

/// Restores model tensors and optimiser state from the latest checkpoint in `dir`.
pub fn restore(dir: &Path, model: &FptModel, adam: &mut Adam) -> Result<Option<LoopState>> {
    let Some(latest) = latest(dir)? else { return Ok(None) };
    let (adapter, _) = read_safetensors(&dir.join(&latest.adapter), model.device)?;
    model.assign(&adapter)?;
    let (state, meta) = read_safetensors(&dir.join(&latest.state), model.device)?;
    let by_name: HashMap<String, Tensor> = state.into_iter().collect();
    let names: Vec<String> = model.trained().map(|p| p.name.clone()).collect();
    tch::no_grad(|| -> Result<()> {
        for (i, n) in names.iter().enumerate() {
            let m = by_name.get(&format!("m/{n}")).with_context(|| format!("checkpoint lacks optimiser state for `{n}`"))?;
            let v = by_name.get(&format!("v/{n}")).with_context(|| format!("checkpoint lacks optimiser state for `{n}`"))?;
            let (mut am, mut av) = adam.moments(i);
            am.copy_(m);
            av.copy_(v);
        }
        Ok(())
    })?;
    adam.t = meta.get("adam_t").and_then(|s| s.parse().ok()).context("checkpoint lacks adam_t")?;
    let state: LoopState = serde_json::from_str(meta.get("loop").context("checkpoint lacks loop state")?)?;
    Ok(Some(state))
}
