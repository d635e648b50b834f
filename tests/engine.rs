//! The FPT model and training engine: freezing, adapters (reproduced by PyTorch + transformers),
//! exact resume, determinism, learning a bit task.
mod common;

use std::collections::HashMap;

use fpt::model::fpt::{paper_param_count, FptModel, HeadShape, InputKind, ModelSpec};
use fpt::model::params::{FreezeSwitches, Group};
use fpt::model::weights::{read_safetensors, write_safetensors};
use fpt::model::{seeded, BaseModel, ModelRegistry};
use fpt::tasks::{DataSources, TaskData, TaskSpec};
use fpt::train::{Command, Control, Metrics, Progress, TrainConfig, Trainer};
use tch::{Device, Kind, Tensor};

fn xor_task(seed: u64) -> TaskData {
    let spec = TaskSpec::parse_cli(r#"{"type":"bit_xor","n_bits":3,"n_valid":64}"#).unwrap();
    TaskData::load(
        &spec,
        &DataSources { train: None, valid: None, test: None, valid_fraction: 0.1, seed, max_positions: 1024, fitted: None },
    )
    .unwrap()
}

fn model(base: &BaseModel, task: &TaskData, switches: FreezeSwitches, seed: u64) -> FptModel {
    FptModel::new(ModelSpec {
        base,
        shape: task.shape,
        switches,
        task: serde_json::to_value(&task.spec).unwrap(),
        device: Device::Cpu,
        seed,
        frozen_kind: None,
    })
    .unwrap()
}

fn tiny() -> BaseModel {
    common::registry().resolve("tiny-gpt2").unwrap()
}

fn run(
    m: &FptModel,
    task: &TaskData,
    cfg: &TrainConfig,
    seed: u64,
    dir: &std::path::Path,
    stop_at: Option<u64>,
) -> (Vec<Metrics>, fpt::train::Outcome) {
    let control = Control::default();
    let mut metrics = Vec::new();
    let trainer =
        Trainer { model: m, task, cfg: cfg.clone(), seed, checkpoint_dir: dir.to_path_buf(), metadata: HashMap::new(), stop_at: None };
    let out = trainer
        .run(&control, &mut |p| {
            if let Progress::Metrics(mm) = p {
                if Some(mm.step) == stop_at {
                    control.set(Command::Pause);
                }
                metrics.push(mm);
            }
        })
        .unwrap();
    (metrics, out)
}

fn snapshot(m: &FptModel) -> HashMap<String, Tensor> {
    m.params.iter().map(|p| (p.name.clone(), p.tensor.detach().copy())).collect()
}

fn small_cfg(steps: u64) -> TrainConfig {
    TrainConfig { n_steps: steps, batch_size: 8, eval_every: 10, checkpoint_every: 10, log_every: 5, ..TrainConfig::default() }
}

#[test]
fn training_changes_exactly_the_trained_groups() {
    let base = tiny();
    let task = xor_task(0);
    for switches in [
        FreezeSwitches::default(),
        FreezeSwitches { freeze_attn: false, ..FreezeSwitches::default() },
        FreezeSwitches { freeze_ln: true, ..FreezeSwitches::default() },
    ] {
        let m = model(&base, &task, switches, 0);
        let before = snapshot(&m);
        let dir = common::tempdir();
        run(&m, &task, &small_cfg(5), 0, dir.path(), None);
        for p in &m.params {
            let same = p.tensor.detach().equal(&before[&p.name]);
            if switches.trains(p.group) {
                assert!(!same, "{} ({:?}) is trained but did not change", p.name, p.group);
            } else {
                assert!(same, "{} ({:?}) is frozen but changed", p.name, p.group);
            }
        }
        // Frozen tensors are bit-identical to the base checkpoint.
        let ck = fpt::model::weights::Checkpoint::open(&base.weights_path(), &[]).unwrap();
        for p in m.params.iter().filter(|p| !switches.trains(p.group) && !matches!(p.group, Group::Input | Group::Output)) {
            assert!(p.checkpoint_tensor().equal(&ck.tensor(&p.name, Device::Cpu).unwrap()), "{} differs from the checkpoint", p.name);
        }
    }
}

#[test]
fn paper_parameter_count_for_gpt2_small_on_cifar10() {
    let cfg: fpt::model::gpt2::Gpt2Config = serde_json::from_value(fpt::model::gpt2_config(12, 768, 12, 1024)).unwrap();
    let c = cfg.backbone_config().unwrap();
    assert_eq!(paper_param_count(c.hidden, c.layers, 16, 10, 64), 106_752);
}

#[test]
fn adapter_holds_exactly_the_trained_tensors_and_round_trips() {
    let base = tiny();
    let task = xor_task(1);
    let m = model(&base, &task, FreezeSwitches::default(), 1);
    let dir = common::tempdir();
    run(&m, &task, &small_cfg(3), 1, dir.path(), None);
    let path = dir.path().join("a.safetensors");
    m.save_adapter(&path, &HashMap::new()).unwrap();
    let (tensors, meta) = read_safetensors(&path, Device::Cpu).unwrap();
    let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.contains(&"h.0.ln_1.weight") && names.contains(&"ln_f.bias") && names.contains(&"wpe.weight"));
    assert!(names.contains(&"input.weight") && names.contains(&"output.bias"));
    assert!(!names.iter().any(|n| n.contains("attn") || n.contains("mlp")), "{names:?}");
    assert_eq!(meta["format"], "fpt-adapter/2");
    assert_eq!(meta["task_state"], "{}");
    assert_eq!(meta["base_model_sha256"], base.sha256().unwrap());
    let loaded = FptModel::load_adapter(&path, &common::registry(), Device::Cpu, None).unwrap();
    let x = task.eval_batches(fpt::tasks::EvalSplit::Valid, 16).remove(0);
    let (a, b) = tch::no_grad(|| (m.forward(&x.inputs, None, false), loaded.forward(&x.inputs, None, false)));
    assert!(a.equal(&b));
    // An adapter of the first format (no task_state) still loads, as having fitted nothing.
    let mut old_meta = meta.clone();
    old_meta.insert("format".into(), "fpt-adapter/1".into());
    old_meta.remove("task_state");
    let old = dir.path().join("old.safetensors");
    write_safetensors(&old, &tensors, old_meta).unwrap();
    let loaded = FptModel::load_adapter(&old, &common::registry(), Device::Cpu, None).unwrap();
    assert_eq!(loaded.task_state, serde_json::json!({}));
    assert!(tch::no_grad(|| loaded.forward(&x.inputs, None, false)).equal(&a));
}

#[test]
fn adapter_on_a_changed_backbone_is_refused() {
    let base = tiny();
    let task = xor_task(2);
    let m = model(&base, &task, FreezeSwitches::default(), 2);
    let dir = common::tempdir();
    let path = dir.path().join("a.safetensors");
    m.save_adapter(&path, &HashMap::new()).unwrap();
    // Same name, different weights.
    let other = dir.path().join("models");
    fpt::model::write_random_checkpoint(&other.join("tiny-gpt2"), &fpt::model::gpt2_config(2, 32, 2, 1024), 99).unwrap();
    // The adapter recorded the folder its base came from: found there, past the changed one.
    FptModel::load_adapter(&path, &ModelRegistry::new(&other), Device::Cpu, None).expect("found at the recorded folder");
    let (tensors, mut meta) = read_safetensors(&path, Device::Cpu).unwrap();
    assert!(meta.remove("base_model_path").is_some(), "a command-line base records its folder");
    write_safetensors(&path, &tensors, meta).unwrap();
    let err = FptModel::load_adapter(&path, &ModelRegistry::new(&other), Device::Cpu, None).err().unwrap();
    assert!(format!("{err:#}").contains("different or changed backbone"), "{err:#}");
    // Same name and hash check passing, wrong shapes: a wider backbone.
    let mut tensors = m.adapter_tensors();
    tensors.retain(|(n, _)| n != "wpe.weight");
    tensors.push(("wpe.weight".into(), Tensor::zeros([10, 32], (Kind::Float, Device::Cpu))));
    let (_, meta) = read_safetensors(&path, Device::Cpu).unwrap();
    let bad = dir.path().join("bad.safetensors");
    write_safetensors(&bad, &tensors, meta).unwrap();
    let err = FptModel::load_adapter(&bad, &common::registry(), Device::Cpu, None).err().unwrap();
    assert!(format!("{err:#}").contains("wpe.weight") && format!("{err:#}").contains("shape"), "{err:#}");
}

#[test]
fn resumed_run_matches_an_uninterrupted_one() {
    let base = tiny();
    let task = xor_task(3);
    let cfg = small_cfg(40);
    let full_dir = common::tempdir();
    let (full, full_out) = run(&model(&base, &task, FreezeSwitches::default(), 3), &task, &cfg, 3, full_dir.path(), None);
    let dir = common::tempdir();
    let (first, out1) = run(&model(&base, &task, FreezeSwitches::default(), 3), &task, &cfg, 3, dir.path(), Some(20));
    assert_eq!(out1.steps, 20);
    // A new model in a new "process": everything comes from the checkpoint.
    let (second, out2) = run(&model(&base, &task, FreezeSwitches::default(), 3), &task, &cfg, 3, dir.path(), None);
    let strip = |v: Vec<Metrics>| v.into_iter().map(|m| (m.step, m.values)).collect::<Vec<_>>();
    let mut resumed = strip(first);
    resumed.extend(strip(second));
    assert_eq!(resumed, strip(full));
    assert_eq!(out2.valid.unwrap(), full_out.valid.unwrap());
}

#[test]
fn models_built_at_once_on_many_threads_draw_as_if_built_alone() {
    // Random init (not pretrained) draws every backbone tensor from torch's shared generator.
    let base = tiny();
    let task = xor_task(0);
    let (shape, spec) = (task.shape, serde_json::to_value(&task.spec).unwrap());
    let switches = FreezeSwitches { pretrained: false, ..FreezeSwitches::default() };
    let build = |seed: u64| {
        let spec = ModelSpec { base: &base, shape, switches, task: spec.clone(), device: Device::Cpu, seed, frozen_kind: None };
        FptModel::new(spec).unwrap().params.iter().map(|p| (p.name.clone(), p.tensor.copy())).collect::<Vec<_>>()
    };
    let at_once: Vec<Vec<_>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4u64).map(|seed| s.spawn(move || (0..3).map(|_| build(seed)).collect::<Vec<_>>())).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let alone: Vec<_> = (0..4u64).map(build).collect();
    for (seed, builds) in at_once.iter().enumerate() {
        for built in builds {
            for ((name, t), (_, reference)) in built.iter().zip(&alone[seed]) {
                assert!(t.equal(reference), "seed {seed}: {name} differs from a build alone");
            }
        }
    }
    assert!(!alone[0][0].1.equal(&alone[1][0].1), "different seeds draw different weights");
}

#[test]
fn the_same_seed_gives_identical_metrics() {
    let base = tiny();
    let task = xor_task(4);
    let (a, _) = run(&model(&base, &task, FreezeSwitches::default(), 4), &task, &small_cfg(15), 4, common::tempdir().path(), None);
    let (b, _) = run(&model(&base, &task, FreezeSwitches::default(), 4), &task, &small_cfg(15), 4, common::tempdir().path(), None);
    let strip = |v: &[Metrics]| v.iter().map(|m| (m.get("train_loss"), m.get("valid_accuracy"))).collect::<Vec<_>>();
    assert_eq!(strip(&a), strip(&b));
    let (c, _) = run(&model(&base, &task, FreezeSwitches::default(), 5), &task, &small_cfg(15), 5, common::tempdir().path(), None);
    assert_ne!(strip(&a), strip(&c), "another seed gives another run");
}

#[test]
fn backbone_dropout_overrides_the_checkpoints_own() {
    let base = tiny();
    let task = xor_task(7);
    let m = model(&base, &task, FreezeSwitches::default(), 7);
    assert!(m.backbone.config().hidden_dropout > 0.0, "the tiny checkpoint keeps transformers' 0.1");
    let x = seeded(1, || Tensor::randn([4, 6, m.hidden()], (Kind::Float, Device::Cpu)));
    let twice = |m: &FptModel| (m.backbone.forward(&x, None, true), m.backbone.forward(&x, None, true));
    let (a, b) = twice(&m);
    assert!(!a.allclose(&b, 1e-6, 1e-6, false), "the checkpoint's dropout draws differ between passes");
    let m = m.with_backbone_dropout(Some(0.0));
    let (a, b) = twice(&m);
    assert!(a.equal(&b), "no dropout: training passes agree");
    assert!(a.allclose(&m.backbone.forward(&x, None, false), 1e-6, 1e-6, false), "and equal the evaluation pass");
}

#[test]
fn a_tiny_backbone_learns_bit_xor() {
    // A random 2-layer backbone cannot route bits between tokens while frozen; trained whole it
    // learns XOR quickly (the pretrained, frozen case is shown with all-MiniLM-L6-v2 in the README).
    let base = tiny();
    let task = xor_task(6);
    let all = FreezeSwitches { freeze_attn: false, freeze_ff: false, ..FreezeSwitches::default() };
    let m = model(&base, &task, all, 6);
    let cfg =
        TrainConfig { n_steps: 400, batch_size: 32, eval_every: 100, checkpoint_every: 0, learning_rate: 3e-3, ..TrainConfig::default() };
    let (_, out) = run(&m, &task, &cfg, 6, common::tempdir().path(), None);
    let best = out.best_valid.unwrap();
    assert!(best >= 0.97, "bit accuracy {best}");
}

#[test]
fn python_and_transformers_reproduce_the_adapter_logits() {
    for (name, task_json) in
        [("gpt2-b", r#"{"type":"sequence_classification","input_dim":6,"num_classes":3}"#), ("bert-a", r#"{"type":"bit_xor","n_bits":4}"#)]
    {
        let models = common::models_dir();
        let base = ModelRegistry::new(&models).resolve(name).unwrap();
        let spec = TaskSpec::parse_cli(task_json).unwrap();
        let shape = match &spec {
            TaskSpec::BitXor { .. } => HeadShape { input: InputKind::Continuous { dim: 1 }, output_dim: 2, readout_tokens: 4 },
            _ => HeadShape { input: InputKind::Continuous { dim: 6 }, output_dim: 3, readout_tokens: 1 },
        };
        let m = FptModel::new(ModelSpec {
            base: &base,
            shape,
            switches: FreezeSwitches::default(),
            task: serde_json::to_value(&spec).unwrap(),
            device: Device::Cpu,
            seed: 9,
            frozen_kind: None,
        })
        .unwrap();
        // Move the trained tensors off their init so the check means something.
        tch::no_grad(|| {
            for p in m.trained() {
                let _ = p.tensor.shallow_clone().g_add_(&(p.tensor.randn_like() * 0.05));
            }
        });
        let dir = common::tempdir();
        let adapter = dir.path().join("adapter.safetensors");
        m.save_adapter(&adapter, &HashMap::new()).unwrap();
        let l = if name == "bert-a" { 8 } else { 12 };
        let d = if name == "bert-a" { 1 } else { 6 };
        let x = seeded(2, || Tensor::randn([3, l, d], (Kind::Float, Device::Cpu)));
        let lengths = Tensor::from_slice(&[l, l - 2, l - 3]);
        write_safetensors(
            &dir.path().join("in.safetensors"),
            &[("inputs".into(), x.shallow_clone()), ("lengths".into(), lengths.shallow_clone())],
            HashMap::new(),
        )
        .unwrap();
        let out = dir.path().join("out.safetensors");
        common::run_python(&[
            "scripts/adapter_reference.py",
            "--adapter",
            adapter.to_str().unwrap(),
            "--base",
            base.dir.to_str().unwrap(),
            "--inputs",
            dir.path().join("in.safetensors").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        let (o, _) = read_safetensors(&out, Device::Cpu).unwrap();
        let want = o[0].1.shallow_clone();
        let got = tch::no_grad(|| m.forward(&x, Some(&lengths), false));
        let got = if shape.readout_tokens == 1 { got.squeeze_dim(1) } else { got };
        let diff = f64::try_from((got - want).abs().max().to_kind(Kind::Double)).unwrap();
        assert!(diff < 1e-4, "{name}: logits differ by {diff:e}");
    }
}

#[test]
fn rows_of_one_length_read_out_by_slicing_as_by_positions() {
    // Without lengths the model slices the last k tokens (no gather, no mask for k = 1); with
    // full lengths it gathers positions under a causal mask: the same logits either way.
    let models = common::models_dir();
    for (name, k) in [("gpt2-b", 1), ("gpt2-b", 3), ("bert-a", 4)] {
        let base = ModelRegistry::new(&models).resolve(name).unwrap();
        let shape = HeadShape { input: InputKind::Continuous { dim: 5 }, output_dim: 3, readout_tokens: k };
        let spec = ModelSpec {
            base: &base,
            shape,
            switches: FreezeSwitches::default(),
            task: serde_json::json!({}),
            device: Device::Cpu,
            seed: 2,
            frozen_kind: None,
        };
        let m = FptModel::new(spec).unwrap();
        let x = seeded(3, || Tensor::randn([4, 9, 5], (Kind::Float, Device::Cpu)));
        let full = Tensor::full([4], 9, (Kind::Int64, Device::Cpu));
        let (sliced, gathered) = tch::no_grad(|| (m.forward(&x, None, false), m.forward(&x, Some(&full), false)));
        assert_eq!(sliced.size(), [4, k, 3]);
        let diff = f64::try_from((sliced - gathered).abs().max().to_kind(Kind::Double)).unwrap();
        assert!(diff < 1e-5, "{name}, k = {k}: logits differ by {diff:e}");
    }
}
