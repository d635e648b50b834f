//! Every task loads its data, batches it, and trains end to end for a few steps on a tiny backbone;
//! bad input is refused with the record and the problem named.
mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use fpt::model::fpt::{FptModel, ModelSpec};
use fpt::model::params::FreezeSwitches;
use fpt::tasks::{DataSources, EvalSplit, TaskData, TaskSpec};
use fpt::train::{Control, TrainConfig, Trainer};
use tch::Device;

fn sources<'a>(train: Option<&'a Path>, valid: Option<&'a Path>, positions: usize) -> DataSources<'a> {
    DataSources { train, valid, test: None, valid_fraction: 0.2, seed: 0, max_positions: positions, fitted: None }
}

/// Loads `task` and trains 3 steps on the tiny GPT-2; returns the task for further checks.
fn trains(task_json: &str, train: Option<&Path>, valid: Option<&Path>) -> TaskData {
    let spec = TaskSpec::parse_cli(task_json).unwrap();
    let base = common::registry().resolve("tiny-gpt2").unwrap();
    let task = TaskData::load(&spec, &sources(train, valid, 1024)).unwrap_or_else(|e| panic!("{task_json}: {e:#}"));
    let model = FptModel::new(ModelSpec {
        base: &base,
        shape: task.shape,
        switches: FreezeSwitches::default(),
        task: serde_json::to_value(&spec).unwrap(),
        device: Device::Cpu,
        seed: 0,
        frozen_kind: None,
    })
    .unwrap();
    let cfg = TrainConfig { n_steps: 3, batch_size: 4, eval_every: 3, eval_batch_size: 16, checkpoint_every: 0, ..TrainConfig::default() };
    let dir = common::tempdir();
    let out =
        Trainer { model: &model, task: &task, cfg, seed: 0, checkpoint_dir: dir.path().into(), metadata: HashMap::new(), stop_at: None }
            .run(&Control::default(), &mut |_| {})
            .unwrap();
    assert_eq!(out.steps, 3);
    let v = out.valid.expect("evaluated on the validation split");
    assert!(v.loss.is_finite() && (0.0..=1.0).contains(&v.metrics["accuracy"]), "{task_json}: {v:?}");
    task
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn mnist(name: &str) -> PathBuf {
    let p = common::root().join("datasets/mnist").join(name);
    assert!(p.exists(), "{} missing: run `make setup`", p.display());
    p
}

#[test]
fn real_mnist_digits_load_as_10000_images_with_labels_0_to_9() {
    let set = fpt::tasks::files::read_mnist(&mnist("mnist-images-idx3-ubyte")).unwrap();
    assert_eq!((set.len(), set.height, set.width, set.channels), (10_000, 28, 28, 1));
    let mut counts = [0usize; 10];
    for &l in &set.labels {
        counts[l as usize] += 1;
    }
    assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
}

#[test]
fn mnist_trains_on_real_digits_with_49_tokens_of_16() {
    let t = trains(r#"{"type":"mnist"}"#, Some(&mnist("train-images-idx3-ubyte")), Some(&mnist("test-images-idx3-ubyte")));
    assert_eq!((t.info.train_samples, t.info.valid_samples, t.info.seq_len), (8000, 2000, 49));
    let b = t.eval_batches(EvalSplit::Valid, 5).remove(0);
    assert_eq!(b.inputs.size(), [5, 49, 16]);
}

#[test]
fn mnist_in_7x7_patches_is_16_tokens_of_49_and_other_sides_are_refused() {
    let t = trains(r#"{"type":"mnist","patch_size":7}"#, Some(&mnist("train-images-idx3-ubyte")), Some(&mnist("test-images-idx3-ubyte")));
    let b = t.eval_batches(EvalSplit::Valid, 5).remove(0);
    assert_eq!(b.inputs.size(), [5, 16, 49]);
    let e = TaskSpec::parse_cli(r#"{"type":"mnist","patch_size":5}"#).unwrap().validate(&Default::default()).unwrap_err();
    assert_eq!(e.field, "task.patch_size");
    assert!(e.message.contains("28"), "{}", e.message);
}

#[test]
fn mnist_without_its_labels_file_is_refused() {
    let dir = common::tempdir();
    let p = write(dir.path(), "digits-images-idx3-ubyte", &std::fs::read(mnist("test-images-idx3-ubyte")).unwrap());
    let spec = TaskSpec::parse_cli("mnist").unwrap();
    let err = TaskData::load(&spec, &sources(Some(&p), None, 1024)).err().unwrap();
    assert!(format!("{err:#}").contains("no labels file"), "{err:#}");
}

/// CIFAR-10 binary records: label byte then 1024 R, 1024 G, 1024 B.
fn cifar_bin(n: usize, seed: u8) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push((i % 10) as u8);
        out.extend((0..3072).map(|j| ((i * 7 + j * 13) as u8).wrapping_add(seed)));
    }
    out
}

#[test]
fn cifar10_trains_with_augmentation_on_64_tokens_of_48() {
    let dir = common::tempdir();
    let tr = write(dir.path(), "data_batch_1.bin", &cifar_bin(20, 0));
    let va = write(dir.path(), "test_batch.bin", &cifar_bin(10, 3));
    let t = trains(r#"{"type":"cifar10"}"#, Some(&tr), Some(&va));
    // Augmentation is seeded: the same step gives the same batch. The generator is held, as the
    // trainer holds it, so another test's training cannot draw in between.
    let augmented = |size| fpt::model::seeded(5, || t.train_batch(1, size).inputs);
    assert_eq!(augmented(2).size(), [2, 64, 48]);
    assert!(augmented(4).equal(&augmented(4)));
}

#[test]
fn cifar10_lra_is_greyscale_one_pixel_per_token() {
    let dir = common::tempdir();
    let tr = write(dir.path(), "data_batch_1.bin", &cifar_bin(12, 0));
    let t = trains(r#"{"type":"cifar10_lra"}"#, Some(&tr), None);
    assert_eq!(t.eval_batches(EvalSplit::Valid, 2).remove(0).inputs.size()[1..], [1024, 1]);
}

#[test]
fn truncated_cifar_file_is_refused_naming_the_problem() {
    let dir = common::tempdir();
    let mut bytes = cifar_bin(3, 0);
    bytes.truncate(5000);
    let p = write(dir.path(), "data_batch_1.bin", &bytes);
    let err = TaskData::load(&TaskSpec::parse_cli("cifar10").unwrap(), &sources(Some(&p), None, 1024)).err().unwrap();
    assert!(format!("{err:#}").contains("truncated"), "{err:#}");
}

#[test]
fn listops_from_tsv_and_from_the_generator() {
    let dir = common::tempdir();
    let tsv = "Source\tTarget\n[MAX 4 3 [MIN 2 3 ] 1 0 [MED 1 5 8 9 2 ] ]\t5\n[SM 9 9 1 ]\t9\n[MIN 7 [MAX 1 8 ] ]\t7\n[MED 1 2 3 4 ]\t2\n[MAX 1 2 ]\t2\n";
    let p = write(dir.path(), "train.tsv", tsv.as_bytes());
    let t = trains(r#"{"type":"listops"}"#, Some(&p), Some(&p));
    let b = t.eval_batches(EvalSplit::Valid, 8).remove(0);
    let labels: Vec<i64> = Vec::try_from(&b.targets).unwrap();
    assert_eq!(labels, vec![5, 9, 7, 2, 2]);
    // Brackets are tokens: the first expression keeps its 3 closing brackets (17 tokens).
    let lengths: Vec<i64> = Vec::try_from(b.lengths.as_ref().unwrap()).unwrap();
    assert_eq!(lengths[0], 17);
    let g = trains(r#"{"type":"listops","generate":true,"n_train":40,"n_valid":10,"max_len":64,"max_depth":3,"max_args":4}"#, None, None);
    assert_eq!((g.info.train_samples, g.info.valid_samples), (40, 10));
    assert!(g.info.seq_len <= 64);
}

#[test]
fn listops_with_an_unknown_token_names_the_line() {
    let dir = common::tempdir();
    let p = write(dir.path(), "bad.tsv", b"Source\tTarget\n[MAX 1 2 ]\t2\n[FOO 1 ]\t1\n");
    let err = TaskData::load(&TaskSpec::parse_cli("listops").unwrap(), &sources(Some(&p), None, 1024)).err().unwrap();
    let msg = format!("{err:#}");
    assert!(msg.contains("line 3") && msg.contains("FOO"), "{msg}");
}

#[test]
fn remote_homology_cuts_long_proteins_and_counts_them() {
    let dir = common::tempdir();
    let fasta = ">p1 3\nMKVLAAGIVG\n>p2 fold=1\nMKV\n>p3 0\nACDEFGHIKLMNPQRSTVWYACDEFGHIKLMNPQRSTVWY\n>p4 2\nMKKL\n>p5 1\nGGGA\n";
    let p = write(dir.path(), "train.fasta", fasta.as_bytes());
    let t = trains(r#"{"type":"remote_homology","num_classes":4,"max_len":16}"#, Some(&p), Some(&p));
    assert_eq!(t.info.truncated, 2, "the 40-residue protein is cut, in train and valid");
    assert_eq!(t.info.seq_len, 16);
}

#[test]
fn sequence_classification_continuous_and_token_ids() {
    let dir = common::tempdir();
    let cont: String = (0..10)
        .map(|i| {
            format!(
                "{{\"input\": [{}], \"label\": {}}}\n",
                (0..(4 * (1 + i % 3))).map(|j| format!("{}", (i * j) as f32 / 10.0)).collect::<Vec<_>>().join(","),
                i % 2
            )
        })
        .collect();
    let p = write(dir.path(), "cont.jsonl", cont.as_bytes());
    let t = trains(r#"{"type":"sequence_classification","input_dim":4,"num_classes":2}"#, Some(&p), Some(&p));
    let b = t.eval_batches(EvalSplit::Valid, 3).remove(0);
    assert_eq!(b.inputs.size(), [3, 3, 4], "padded to the longest row of the batch");
    let ids: String = (0..10)
        .map(|i| {
            format!(
                "{{\"input\": [{}], \"label\": {}}}\n",
                (0..(2 + i % 4)).map(|j| ((i + j) % 7).to_string()).collect::<Vec<_>>().join(","),
                i % 3
            )
        })
        .collect();
    let p = write(dir.path(), "ids.jsonl", ids.as_bytes());
    trains(r#"{"type":"sequence_classification","vocab_size":7,"num_classes":3}"#, Some(&p), None);
}

#[test]
fn bad_jsonl_record_names_its_line() {
    let dir = common::tempdir();
    let p = write(dir.path(), "bad.jsonl", b"{\"input\": [1,2,3,4], \"label\": 0}\n{\"input\": [1,2,3], \"label\": 1}\n");
    let spec = TaskSpec::parse_cli(r#"{"type":"sequence_classification","input_dim":4,"num_classes":2}"#).unwrap();
    let err = TaskData::load(&spec, &sources(Some(&p), None, 1024)).err().unwrap();
    assert!(format!("{err:#}").contains("line 2"), "{err:#}");
    let p = write(dir.path(), "label.jsonl", b"{\"input\": [1,2,3,4], \"label\": 5}\n");
    let err = TaskData::load(&spec, &sources(Some(&p), None, 1024)).err().unwrap();
    assert!(format!("{err:#}").contains("line 1") && format!("{err:#}").contains("label"), "{err:#}");
}

#[test]
fn image_classification_patches_user_images() {
    let dir = common::tempdir();
    let rows: String = (0..10)
        .map(|i| {
            format!(
                "{{\"input\": [{}], \"label\": {}}}\n",
                (0..(8 * 8 * 2)).map(|j| ((i + j) % 5).to_string()).collect::<Vec<_>>().join(","),
                i % 2
            )
        })
        .collect();
    let p = write(dir.path(), "img.jsonl", rows.as_bytes());
    let t = trains(r#"{"type":"image_classification","height":8,"width":8,"channels":2,"patch_size":4,"num_classes":2}"#, Some(&p), None);
    assert_eq!(t.eval_batches(EvalSplit::Valid, 2).remove(0).inputs.size()[1..], [4, 32]);
}

#[test]
fn bit_tasks_generate_and_train() {
    let t = trains(r#"{"type":"bit_memory","n_bits":20,"patch_size":5,"n_valid":8}"#, None, None);
    assert_eq!(t.train_batch(0, 2).inputs.size(), [2, 24, 5]);
    assert_eq!(t.shape.readout_tokens, 4);
    assert_eq!(t.shape.output_dim, 10);
    let x = trains(r#"{"type":"bit_xor"}"#, None, None);
    assert_eq!(x.train_batch(0, 2).inputs.size(), [2, 10, 1]);
    // Batches are a function of (seed, step).
    assert!(x.train_batch(7, 4).inputs.equal(&x.train_batch(7, 4).inputs));
    assert!(!x.train_batch(7, 4).inputs.equal(&x.train_batch(8, 4).inputs));
}

#[test]
fn a_task_longer_than_the_backbone_is_refused() {
    let spec = TaskSpec::parse_cli("bit_memory").unwrap();
    let err = TaskData::load(&spec, &sources(None, None, 64)).err().unwrap();
    assert!(format!("{err:#}").contains("120 tokens"), "{err:#}");
}

#[test]
fn unknown_task_fields_are_refused() {
    let err = TaskSpec::parse_cli(r#"{"type":"bit_xor","nbits":5}"#).err().unwrap();
    assert!(err.contains("nbits"), "{err}");
}
