//! The inference thread's state and one batch's execution.
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tch::{Kind, Tensor};

use super::{publish_loaded, PredictError, ServeConfig, ServeStats};
use crate::model::fpt::{AdapterLayers, FptModel};
use crate::model::params::FreezeSwitches;
use crate::model::Readout;
use crate::model::{Backbone, ModelRegistry};
use crate::tasks::samples::{batch_from_samples, SampleError};
use crate::tasks::{Objective, Prediction, TaskSpec};

/// A backbone as an adapter needs it: the base model's weights, or its random init from a seed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct BackboneKey {
    base: String,
    init_seed: Option<u64>,
}

struct Shared {
    backbone: Box<dyn Backbone>,
    /// The backbone's own layer-norm and position tensors, restored after each batch.
    originals: HashMap<String, Tensor>,
    max_positions: i64,
}

/// A loaded adapter: its own layers, plus a whole model when it trained attention or feed-forward
/// weights (those cannot share the frozen matmuls).
struct Loaded {
    key: BackboneKey,
    layers: AdapterLayers,
    spec: TaskSpec,
    objective: Objective,
    own_model: Option<FptModel>,
    last_used: u64,
}

/// A slice of one request's samples, run in a batch.
pub(crate) struct Part<'a> {
    pub request_id: &'a str,
    pub model_id: &'a str,
    pub adapter: &'a Path,
    pub samples: &'a [Value],
    /// Where `samples` start in the request, so that errors name the request's own index.
    pub offset: usize,
}

impl Part<'_> {
    fn invalid(&self, e: SampleError) -> PredictError {
        PredictError::Invalid(SampleError { index: e.index + self.offset, ..e }.to_string())
    }
}

pub(crate) struct Worker {
    pub cfg: ServeConfig,
    registry: ModelRegistry,
    stats: Arc<ServeStats>,
    loaded_ids: Arc<Mutex<Vec<String>>>,
    backbones: HashMap<BackboneKey, Shared>,
    adapters: HashMap<String, Loaded>,
    clock: u64,
}

impl Worker {
    pub fn new(cfg: ServeConfig, registry: ModelRegistry, stats: Arc<ServeStats>, loaded_ids: Arc<Mutex<Vec<String>>>) -> Self {
        Self { cfg, registry, stats, loaded_ids, backbones: HashMap::new(), adapters: HashMap::new(), clock: 0 }
    }

    pub fn stats(&self) -> Arc<ServeStats> {
        self.stats.clone()
    }

    /// Loads an adapter ahead of its first prediction.
    pub fn load(&mut self, model_id: &str, adapter: &Path) -> Result<(), PredictError> {
        self.ensure(model_id, adapter, &HashSet::new()).map_err(|e| PredictError::Adapter(format!("{e:#}")))
    }

    /// Drops an adapter from the cache; whether it was loaded.
    pub fn unload(&mut self, model_id: &str) -> bool {
        let was = self.adapters.remove(model_id).is_some();
        self.publish();
        was
    }

    fn publish(&self) {
        publish_loaded(&self.loaded_ids, self.adapters.keys().cloned());
    }

    /// Drops every loaded adapter and backbone: after a batch failed half-way, a backbone may still
    /// hold that batch's per-row slots. They load again on first use.
    pub fn reset(&mut self) {
        self.adapters.clear();
        self.backbones.clear();
        self.publish();
    }

    /// Loads an adapter (and its backbone) if needed; evicts the least recently used beyond the
    /// caps, never `id` nor one of `pinned` (the adapters the batch being run still needs).
    fn ensure(&mut self, id: &str, path: &Path, pinned: &HashSet<&str>) -> Result<()> {
        self.clock += 1;
        if let Some(a) = self.adapters.get_mut(id) {
            a.last_used = self.clock;
            return Ok(());
        }
        let layers = AdapterLayers::read(path, self.cfg.device)?;
        let spec: TaskSpec =
            serde_json::from_value(layers.meta.task.clone()).context("the adapter's task is not one this version knows")?;
        let key = BackboneKey {
            base: layers.meta.base_model.clone(),
            init_seed: (!layers.meta.switches.pretrained).then_some(layers.meta.init_seed),
        };
        let own_model = if layers.batchable() {
            self.ensure_backbone(&key, &layers)?;
            None
        } else {
            Some(FptModel::load_adapter(path, &self.registry, self.cfg.device, self.cfg.frozen_kind)?)
        };
        let objective = spec.task().objective(&layers.meta.shape, &layers.meta.task_state);
        self.adapters.insert(id.to_string(), Loaded { key, layers, spec, objective, own_model, last_used: self.clock });
        self.stats.adapter_loads.fetch_add(1, Ordering::Relaxed);
        let mut keep = pinned.clone();
        keep.insert(id);
        self.evict(&keep);
        self.publish();
        Ok(())
    }

    fn ensure_backbone(&mut self, key: &BackboneKey, layers: &AdapterLayers) -> Result<()> {
        if self.backbones.contains_key(key) {
            return Ok(());
        }
        let base = self.registry.resolve(&key.base)?;
        if layers.meta.switches.pretrained && base.sha256()? != layers.meta.base_sha256 {
            bail!("the adapter was trained on other weights of base model `{}` (sha256 mismatch)", key.base);
        }
        let draws = key.init_seed.map(crate::model::seed_torch);
        let switches = FreezeSwitches { pretrained: key.init_seed.is_none(), ..FreezeSwitches::default() };
        let (mut backbone, _) = base.build(&switches, self.cfg.device, self.cfg.frozen_kind)?;
        drop(draws);
        let max_positions = backbone.config().max_positions;
        let originals = backbone.adapter_slots_mut().into_iter().map(|(n, t)| (n, t.shallow_clone())).collect();
        self.backbones.insert(key.clone(), Shared { backbone, originals, max_positions });
        Ok(())
    }

    /// Evicts the least recently used adapters until the cache is within its caps, keeping `keep`:
    /// a batch with more adapters than the cache holds keeps them all until it has run.
    fn evict(&mut self, keep: &HashSet<&str>) {
        loop {
            let bytes: usize = self.adapters.values().map(|a| a.layers.bytes).sum();
            if self.adapters.len() <= self.cfg.cache_count.max(1) && bytes <= self.cfg.cache_bytes {
                return;
            }
            let victim =
                self.adapters.iter().filter(|(k, _)| !keep.contains(k.as_str())).min_by_key(|(_, a)| a.last_used).map(|(k, _)| k.clone());
            match victim {
                Some(v) => {
                    self.adapters.remove(&v);
                    self.stats.adapter_evictions.fetch_add(1, Ordering::Relaxed);
                }
                None => return,
            }
        }
    }

    /// Runs one batch: a result per part, in order. Parts whose adapter cannot be loaded, or whose
    /// group fails, are answered with that error; the others go on. The adapters of `waiting`
    /// (requests with rows still to run) are not evicted after it.
    pub fn predict(&mut self, parts: &[Part<'_>], waiting: &HashSet<&str>) -> Vec<Result<Vec<Prediction>, PredictError>> {
        let request_ids: Vec<&str> = parts.iter().map(|p| p.request_id).collect();
        let span = tracing::info_span!("batch", requests = parts.len(), request_ids = %request_ids.join(","));
        let _in_batch = span.enter();
        let mut results: Vec<Option<Result<Vec<Prediction>, PredictError>>> = parts.iter().map(|_| None).collect();
        // Load every adapter first; a part whose adapter fails is answered alone. The batch's
        // adapters are pinned: loading the last must not evict the first.
        let pinned: HashSet<&str> = parts.iter().map(|p| p.model_id).collect();
        let mut groups: HashMap<Option<BackboneKey>, Vec<usize>> = HashMap::new();
        for (i, p) in parts.iter().enumerate() {
            match self.ensure(p.model_id, p.adapter, &pinned) {
                Ok(()) => {
                    // Group by backbone; adapters with their own model run alone.
                    let a = &self.adapters[p.model_id];
                    let key = if a.own_model.is_some() { None } else { Some(a.key.clone()) };
                    groups.entry(key).or_default().push(i);
                }
                Err(e) => results[i] = Some(Err(PredictError::Adapter(format!("{e:#}")))),
            }
        }
        let mut failed = false;
        for (key, members) in groups {
            let runs: Vec<Vec<usize>> = match key {
                Some(_) => vec![members],
                None => members.into_iter().map(|i| vec![i]).collect(),
            };
            for run in runs {
                let group: Vec<&Part> = run.iter().map(|&i| &parts[i]).collect();
                // A panic (a libtorch error) fails this group's requests with its message; the
                // rest of the batch, and every later one, goes on.
                let answers = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match &key {
                    Some(k) => self.run_shared(k, &group),
                    None => vec![self.run_own(group[0])],
                }));
                let answers = answers.unwrap_or_else(|panic| {
                    let message = super::panic_message(&*panic);
                    tracing::error!(error = %message, "a prediction batch failed");
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    failed = true;
                    group.iter().map(|_| Err(PredictError::Failed(message.clone()))).collect()
                });
                for (i, r) in run.into_iter().zip(answers) {
                    results[i] = Some(r);
                }
            }
        }
        if failed {
            // The failed group's backbone may still hold its per-row slots; the other groups ran
            // on other backbones (one group per backbone) and are done.
            self.reset();
        }
        self.evict(waiting);
        self.publish();
        results.into_iter().map(|r| r.expect("every part is answered")).collect()
    }

    fn run_own(&self, j: &Part) -> Result<Vec<Prediction>, PredictError> {
        let a = &self.adapters[j.model_id];
        let m = a.own_model.as_ref().expect("grouped as an adapter with its own model");
        let b = batch_from_samples(&a.spec, &a.layers.meta.shape, &a.layers.meta.task_state, m.max_positions(), j.samples)
            .map_err(|e| j.invalid(e))?;
        let dev = self.cfg.device;
        let logits = a.objective.answer(m, &b.inputs.to_device(dev), b.lengths.map(|l| l.to_device(dev)).as_ref());
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats.batch_rows.fetch_add(logits.size()[0] as u64, Ordering::Relaxed);
        Ok(a.objective.predictions(&logits, b.context.as_ref()))
    }

    /// Many adapters, one pass of the shared backbone; one result per job, in order.
    fn run_shared(&mut self, key: &BackboneKey, jobs: &[&Part]) -> Vec<Result<Vec<Prediction>, PredictError>> {
        let dev = self.cfg.device;
        let max_positions = self.backbones[key].max_positions;
        // Validate and embed each request with its own input layer.
        let mut results: Vec<Result<Vec<Prediction>, PredictError>> = Vec::with_capacity(jobs.len());
        let mut parts = Vec::new();
        let mut contexts = Vec::new();
        let mut good = Vec::new();
        for (i, j) in jobs.iter().enumerate() {
            let a = &self.adapters[j.model_id];
            match batch_from_samples(&a.spec, &a.layers.meta.shape, &a.layers.meta.task_state, max_positions, j.samples) {
                Ok(b) => {
                    let n = b.inputs.size()[0];
                    let l = b.inputs.size()[1];
                    let lengths = b.lengths.unwrap_or_else(|| Tensor::full([n], l, (Kind::Int64, tch::Device::Cpu)));
                    let emb = a.layers.embed(&b.inputs.to_device(dev));
                    parts.push((emb, lengths));
                    contexts.push(b.context);
                    good.push(i);
                    results.push(Ok(Vec::new()));
                }
                Err(e) => results.push(Err(j.invalid(e))),
            }
        }
        if good.is_empty() {
            return results;
        }
        let lmax = parts.iter().map(|(e, _)| e.size()[1]).max().unwrap();
        let embeds: Vec<Tensor> = parts
            .iter()
            .map(|(e, _)| if e.size()[1] < lmax { e.constant_pad_nd([0, 0, 0, lmax - e.size()[1]]) } else { e.shallow_clone() })
            .collect();
        let embeds = Tensor::cat(&embeds, 0);
        let lengths = Tensor::cat(&parts.iter().map(|(_, l)| l.shallow_clone()).collect::<Vec<_>>(), 0).to_device(dev);
        let b = embeds.size()[0];
        let padded = i64::try_from(lengths.min()).unwrap() < lmax;
        let key_mask =
            padded.then(|| Tensor::arange(lmax, (Kind::Int64, dev)).unsqueeze(0).lt_tensor(&lengths.unsqueeze(1)).view([b, 1, 1, lmax]));
        let row_counts: Vec<i64> = parts.iter().map(|(e, _)| e.size()[0]).collect();
        // Every row reads out its batch's largest k last tokens; each head then takes its own last k.
        let kmax = good.iter().map(|&i| self.adapters[jobs[i].model_id].layers.meta.shape.readout_tokens).max().unwrap();
        // Rows of one length (and at least kmax tokens) slice their last kmax tokens; others gather.
        let positions = (padded || kmax > lmax)
            .then(|| (lengths.unsqueeze(1) - kmax + Tensor::arange(kmax, (Kind::Int64, dev)).unsqueeze(0)).clamp_min(0));
        let readout = positions.as_ref().map_or(Readout::Last(kmax), Readout::At);
        let ids: Vec<String> = good.iter().map(|&i| jobs[i].model_id.to_string()).collect();
        let hs = {
            let slots = self.row_slots(key, &ids, &row_counts, lmax);
            let shared = self.backbones.get_mut(key).unwrap();
            set_slots(shared.backbone.as_mut(), &slots);
            let hs = shared.backbone.forward_readout(&embeds, key_mask.as_ref(), false, readout);
            set_slots(shared.backbone.as_mut(), &shared.originals);
            hs
        };
        // Answer each request with its own head on its own read-out rows.
        let mut start = 0;
        for ((&i, n), context) in good.iter().zip(row_counts).zip(&contexts) {
            let a = &self.adapters[jobs[i].model_id];
            let k = a.layers.meta.shape.readout_tokens;
            let h = hs.narrow(0, start, n).narrow(1, kmax - k, k);
            results[i] = Ok(a.objective.predictions(&a.layers.project(&h), context.as_ref()));
            start += n;
        }
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats.batch_rows.fetch_add(b as u64, Ordering::Relaxed);
        results
    }

    /// Each slot's tensor for this batch: the adapter's own when every row uses one adapter, else
    /// stacked per row (rows of adapters that did not train a slot take the backbone's). Position
    /// tables (the 2-D slots) keep only the batch's `len` positions: the backbone reads no others,
    /// and stacking GPT-2's 1,024 rows per request would copy megabytes for 49 tokens.
    fn row_slots(&self, key: &BackboneKey, ids: &[String], rows: &[i64], len: i64) -> HashMap<String, Tensor> {
        let originals = &self.backbones[key].originals;
        let adapters: Vec<HashMap<&str, &Tensor>> =
            ids.iter().map(|id| self.adapters[id].layers.slots.iter().map(|(n, t)| (n.as_str(), t)).collect()).collect();
        let single = ids.windows(2).all(|w| w[0] == w[1]);
        originals
            .iter()
            .filter(|(name, _)| adapters.iter().any(|a| a.contains_key(name.as_str())))
            .map(|(name, orig)| {
                let pick = |i: usize| {
                    let t = adapters[i].get(name.as_str()).copied().unwrap_or(orig);
                    if t.dim() == 2 {
                        t.narrow(0, 0, len)
                    } else {
                        t.shallow_clone()
                    }
                };
                let t = if single {
                    pick(0)
                } else {
                    let per_row: Vec<Tensor> = (0..ids.len())
                        .map(|i| {
                            let t = pick(i);
                            t.unsqueeze(0).expand(expand_shape(rows[i], &t), false)
                        })
                        .collect();
                    let stacked = Tensor::cat(&per_row, 0);
                    // [d] -> [B, 1, d] broadcasts over tokens; [P, d] -> [B, P, d] already does.
                    if orig.dim() == 1 {
                        stacked.unsqueeze(1)
                    } else {
                        stacked
                    }
                };
                (name.clone(), t)
            })
            .collect()
    }
}

fn expand_shape(rows: i64, orig: &Tensor) -> Vec<i64> {
    let mut s = vec![rows];
    s.extend(orig.size());
    s
}

fn set_slots(backbone: &mut dyn Backbone, values: &HashMap<String, Tensor>) {
    for (name, slot) in backbone.adapter_slots_mut() {
        if let Some(t) = values.get(&name) {
            *slot = t.shallow_clone();
        }
    }
}
