//! Property-based fuzzing of every file parser (stable toolchain, proptest): valid files of each
//! format, mutated (bytes flipped, spliced in, cut short) and random bytes, must come back as a
//! value or a `DataError`, never a panic, and never more memory than the bounds allow. A short,
//! bounded run of each parser; `PROPTEST_CASES=5000 cargo test --test fuzz` runs longer.
use std::io::Write;

use fpt::data::records::{InputSpec, RecordSpec};
use fpt::data::{cifar, fasta, idx, listops, records};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256), ..ProptestConfig::default() }
}

fn jsonl() -> Vec<u8> {
    b"{\"input\": [0.5, -1.0, 2.0, 0.0], \"label\": 1}\n{\"input\": [1, 2, 3, 4, 5, 6, 7, 8], \"label\": 0}\n{\"input\": [1e3, 2, 3, 4], \"label\": 1}\n".to_vec()
}

fn npz() -> Vec<u8> {
    let npy = |descr: &str, shape: &str, data: &[u8]| {
        let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + h.len() + 1) % 64 != 0 {
            h.push(' ');
        }
        h.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(h.len() as u16).to_le_bytes());
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out
    };
    let inputs: Vec<u8> = [0.5f32, 1.0, -1.0, 2.0, 0.0, 3.0, 1.5, -2.5].iter().flat_map(|v| v.to_le_bytes()).collect();
    let labels: Vec<u8> = [0i64, 1].iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    zip.start_file("inputs.npy", opts).unwrap();
    zip.write_all(&npy("<f4", "(2, 4)", &inputs)).unwrap();
    zip.start_file("labels.npy", opts).unwrap();
    zip.write_all(&npy("<i8", "(2,)", &labels)).unwrap();
    zip.finish().unwrap().into_inner()
}

fn safetensors_file() -> Vec<u8> {
    use safetensors::tensor::{Dtype, TensorView};
    let inputs: Vec<u8> = [0.5f32, 1.0, -1.0, 2.0, 0.0, 3.0, 1.0, 1.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let labels: Vec<u8> = [0i64, 1].iter().flat_map(|v| v.to_le_bytes()).collect();
    let views = vec![
        ("inputs", TensorView::new(Dtype::F32, vec![2, 4], &inputs).unwrap()),
        ("labels", TensorView::new(Dtype::I64, vec![2], &labels).unwrap()),
    ];
    safetensors::serialize(views, None).unwrap()
}

fn idx_pair() -> (Vec<u8>, Vec<u8>) {
    (idx::write_idx_images(2, 3, 3, &[7u8; 18]).unwrap(), idx::write_idx_labels(&[3, 9]).unwrap())
}

fn cifar_bin() -> Vec<u8> {
    let mut out = Vec::new();
    for label in [3u8, 7] {
        out.push(label);
        out.extend(std::iter::repeat_n(label * 10, 3072));
    }
    out
}

fn cifar_targz() -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let bin = cifar_bin();
    let names =
        (1..=5).map(|i| format!("cifar-10-batches-bin/data_batch_{i}.bin")).chain(["cifar-10-batches-bin/test_batch.bin".to_string()]);
    for name in names {
        let mut h = tar::Header::new_gnu();
        h.set_size(bin.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, &name, &bin[..]).unwrap();
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar.into_inner().unwrap()).unwrap();
    gz.finish().unwrap()
}

fn fasta_file() -> Vec<u8> {
    b">d1 3\nMKTAYIAKQR\nQISFVKSHFS\n>d2 0\nMSLLQK\n".to_vec()
}

fn tape_json() -> Vec<u8> {
    b"[{\"primary\": \"MKTAYIAK\", \"fold_label\": 2}, {\"primary\": \"MSLL\", \"fold_label\": 0}]".to_vec()
}

fn listops_tsv() -> Vec<u8> {
    b"Source\tTarget\n( ( [MAX 2 9 ] 4 ) )\t9\n( [MIN 3 ( [SM 1 2 ] ) ] )\t3\n".to_vec()
}

/// A mutation of a valid file: edits at positions (taken modulo its length), bytes spliced in,
/// and a cut.
fn mutated(seed: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    (prop::collection::vec((any::<usize>(), any::<u8>()), 0..8), prop::collection::vec(any::<u8>(), 0..16), any::<usize>(), any::<bool>())
        .prop_map(move |(edits, splice, cut, truncate)| {
            let mut b = seed.clone();
            for (pos, byte) in edits {
                if !b.is_empty() {
                    let n = b.len();
                    b[pos % n] = byte;
                }
            }
            if !splice.is_empty() {
                let at = cut % (b.len() + 1);
                b.splice(at..at, splice);
            }
            if truncate && !b.is_empty() {
                b.truncate(cut % b.len());
            }
            b
        })
}

fn specs() -> Vec<RecordSpec> {
    vec![
        RecordSpec { input: InputSpec::Continuous { token_dim: Some(4) }, num_classes: Some(2), ..RecordSpec::default() },
        RecordSpec { input: InputSpec::Continuous { token_dim: None }, num_classes: None, ..RecordSpec::default() },
        RecordSpec { input: InputSpec::Tokens { vocab_size: 8 }, num_classes: Some(2), ..RecordSpec::default() },
    ]
}

/// Every parser of a format, and the upload inspection that detects it, on the same bytes.
fn parse_everything(name: &str, bytes: &[u8]) {
    for spec in specs() {
        let _ = records::read_jsonl(bytes, &spec);
        let _ = records::read_npz(bytes, &spec);
        let _ = records::read_safetensors(bytes, &spec);
    }
    let _ = idx::load_idx_pair(bytes, &idx_pair().1);
    let _ = idx::load_idx_pair(&idx_pair().0, bytes);
    let _ = cifar::read_cifar10_bin(bytes);
    let _ = cifar::read_cifar10_targz(bytes, cifar::CifarSplit::Train);
    let _ = fasta::read_fasta(bytes, 64);
    let _ = fasta::read_tape_json(bytes, 64);
    let _ = listops::read_tsv(bytes, 64);
    let _ = fpt::tasks::files::inspect_file(name, bytes);
}

#[test]
fn the_valid_seeds_parse() {
    let spec = &specs()[0];
    assert_eq!(records::read_jsonl(&jsonl(), spec).unwrap().len(), 3);
    assert_eq!(records::read_npz(&npz(), spec).unwrap().len(), 2);
    assert_eq!(records::read_safetensors(&safetensors_file(), spec).unwrap().len(), 2);
    let (img, lab) = idx_pair();
    assert_eq!(idx::load_idx_pair(&img, &lab).unwrap().len(), 2);
    assert_eq!(cifar::read_cifar10_bin(&cifar_bin()).unwrap().len(), 2);
    assert_eq!(cifar::read_cifar10_targz(&cifar_targz(), cifar::CifarSplit::Train).unwrap().len(), 10);
    assert_eq!(fasta::read_fasta(&fasta_file(), 64).unwrap().len(), 2);
    assert_eq!(fasta::read_tape_json(&tape_json(), 64).unwrap().len(), 2);
    assert_eq!(listops::read_tsv(&listops_tsv(), 64).unwrap().len(), 2);
}

macro_rules! fuzz_format {
    ($name:ident, $file:literal, $seed:expr) => {
        proptest! {
            #![proptest_config(config())]
            #[test]
            fn $name(bytes in mutated($seed)) {
                parse_everything($file, &bytes);
            }
        }
    };
}

fuzz_format!(mutated_jsonl_never_panics, "train.jsonl", jsonl());
fuzz_format!(mutated_npz_never_panics, "train.npz", npz());
fuzz_format!(mutated_safetensors_never_panics, "train.safetensors", safetensors_file());
fuzz_format!(mutated_idx_never_panics, "train-images-idx3-ubyte", idx_pair().0);
fuzz_format!(mutated_cifar_bin_never_panics, "data_batch_1.bin", cifar_bin());
fuzz_format!(mutated_cifar_targz_never_panics, "cifar-10-binary.tar.gz", cifar_targz());
fuzz_format!(mutated_fasta_never_panics, "train.fasta", fasta_file());
fuzz_format!(mutated_tape_json_never_panics, "train.json", tape_json());
fuzz_format!(mutated_listops_never_panics, "train.tsv", listops_tsv());

proptest! {
    #![proptest_config(config())]
    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..4096), name in "[a-z]{1,8}\\.(jsonl|npz|safetensors|tsv|fasta|json|bin|gz)") {
        parse_everything(&name, &bytes);
    }
}
