//! CIFAR-10 binary batches (single `.bin`, the official `.tar.gz`, or an unpacked directory), converted to HWC images.

use std::collections::HashMap;
use std::path::Path;

use super::{DataError, ImageSet};

const SIDE: usize = 32;
const CHANNELS: usize = 3;
const PIXELS_PER_PLANE: usize = SIDE * SIDE;
const IMAGE_BYTES: usize = PIXELS_PER_PLANE * CHANNELS;
/// One label byte, then the red, green and blue planes.
pub const RECORD_LEN: usize = 1 + IMAGE_BYTES;
const NUM_CLASSES: u8 = 10;
/// Folder the official archive unpacks to.
const ARCHIVE_DIR: &str = "cifar-10-batches-bin";

/// Which batches make up a split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CifarSplit {
    Train,
    Test,
}

impl CifarSplit {
    /// Batch file names in the order their records are concatenated.
    pub fn batch_names(self) -> &'static [&'static str] {
        match self {
            CifarSplit::Train => &["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"],
            CifarSplit::Test => &["test_batch.bin"],
        }
    }
}

/// Whether `len` bytes could be a non-empty run of CIFAR-10 records (used by format sniffing).
pub(crate) fn is_whole_records(len: usize) -> bool {
    len > 0 && len.is_multiple_of(RECORD_LEN)
}

fn empty_set() -> ImageSet {
    ImageSet { height: SIDE, width: SIDE, channels: CHANNELS, pixels: Vec::new(), labels: Vec::new() }
}

/// Appends planar (CHW) pixels to `out` interleaved (HWC): pixel p of plane c lands at p * channels + c.
fn append_planar_as_interleaved(planes: &[u8], channels: usize, out: &mut Vec<u8>) {
    let plane_len = planes.len() / channels;
    out.extend((0..plane_len).flat_map(|pixel| (0..channels).map(move |c| planes[c * plane_len + pixel])));
}

/// Validates one batch's bytes and appends its records to `set`.
fn append_batch(set: &mut ImageSet, bytes: &[u8]) -> Result<(), DataError> {
    if bytes.is_empty() {
        return Err(DataError::file("empty: no CIFAR-10 records"));
    }
    if !is_whole_records(bytes.len()) {
        return Err(DataError::file(format!(
            "truncated: {} bytes is not a whole number of {RECORD_LEN}-byte CIFAR-10 records",
            bytes.len()
        )));
    }
    set.pixels.reserve(bytes.len() / RECORD_LEN * IMAGE_BYTES);
    for (index, record) in bytes.chunks_exact(RECORD_LEN).enumerate() {
        let label = record[0];
        if label >= NUM_CLASSES {
            return Err(DataError::at_record(index, format!("label {label} out of range 0..9")));
        }
        set.labels.push(i64::from(label));
        append_planar_as_interleaved(&record[1..], CHANNELS, &mut set.pixels);
    }
    Ok(())
}

/// Reads one CIFAR-10 binary batch (e.g. `data_batch_1.bin`).
pub fn read_cifar10_bin(bytes: &[u8]) -> Result<ImageSet, DataError> {
    let mut set = empty_set();
    append_batch(&mut set, bytes)?;
    Ok(set)
}

/// Concatenates the split's batches in order; `load` fetches one batch's bytes by file name.
fn read_split(split: CifarSplit, mut load: impl FnMut(&str) -> Result<Vec<u8>, DataError>) -> Result<ImageSet, DataError> {
    let mut set = empty_set();
    for name in split.batch_names() {
        let bytes = load(name)?;
        append_batch(&mut set, &bytes).map_err(|e| e.within(name))?;
    }
    Ok(set)
}

fn tar_error(e: std::io::Error) -> DataError {
    DataError::file(format!("corrupt tar.gz archive: {e}"))
}

/// Batch files found in an archive, and every file path seen (to list when a batch is missing).
struct ArchiveBatches {
    by_name: HashMap<String, Vec<u8>>,
    seen_paths: Vec<String>,
}

/// The wanted batch files in a tar.gz, keyed by file name; whatever folder they sit in is accepted.
fn extract_batches(bytes: &[u8], wanted: &[&str]) -> Result<ArchiveBatches, DataError> {
    // The whole decompressed stream is bounded, so a bomb costs neither memory nor unbounded time.
    let mut archive = tar::Archive::new(std::io::Read::take(flate2::read::MultiGzDecoder::new(bytes), super::max_inflated_bytes()));
    let mut kept = 0u64;
    let mut batches = HashMap::new();
    let mut seen = Vec::new();
    for entry in archive.entries().map_err(tar_error)? {
        let mut entry = entry.map_err(tar_error)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path().map_err(tar_error)?.to_string_lossy().into_owned();
        let name = path.rsplit('/').next().unwrap_or(&path).to_string();
        seen.push(path);
        if !wanted.contains(&name.as_str()) {
            continue;
        }
        if kept.saturating_add(entry.header().size().unwrap_or(u64::MAX)) > super::max_inflated_bytes() {
            return Err(super::too_inflated("the tar archive"));
        }
        let data = super::read_inflated(&mut entry, kept, &name)?;
        kept += data.len() as u64;
        if batches.insert(name.clone(), data).is_some() {
            return Err(DataError::file(format!("tar archive holds {name} twice")));
        }
    }
    Ok(ArchiveBatches { by_name: batches, seen_paths: seen })
}

/// Reads a split from `cifar-10-binary.tar.gz` (batches under `cifar-10-batches-bin/`).
pub fn read_cifar10_targz(bytes: &[u8], split: CifarSplit) -> Result<ImageSet, DataError> {
    let ArchiveBatches { mut by_name, seen_paths } = extract_batches(bytes, split.batch_names())?;
    read_split(split, |name| {
        by_name.remove(name).ok_or_else(|| {
            let listing = if seen_paths.is_empty() { "nothing".to_string() } else { seen_paths.join(", ") };
            DataError::file(format!("tar archive has no {ARCHIVE_DIR}/{name} (found: {listing})"))
        })
    })
}

/// Reads a split from an unpacked directory: either `cifar-10-batches-bin/` itself or the folder holding it.
pub fn read_cifar10_dir(path: &Path, split: CifarSplit) -> Result<ImageSet, DataError> {
    let nested = path.join(ARCHIVE_DIR);
    let dir = if nested.is_dir() { nested } else { path.to_path_buf() };
    read_split(split, |name| {
        let file = dir.join(name);
        std::fs::read(&file).map_err(|e| DataError::new(file.display().to_string(), format!("cannot read: {e}")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A record whose red plane is all `r`, green all `g`, blue all `b`, except red pixel (row 1, col 2) = 255.
    fn record(label: u8, r: u8, g: u8, b: u8) -> Vec<u8> {
        let mut bytes = vec![label];
        bytes.extend(std::iter::repeat_n(r, PIXELS_PER_PLANE));
        bytes.extend(std::iter::repeat_n(g, PIXELS_PER_PLANE));
        bytes.extend(std::iter::repeat_n(b, PIXELS_PER_PLANE));
        bytes[1 + SIDE + 2] = 255;
        bytes
    }

    fn targz(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, data) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, path, &data[..]).unwrap();
        }
        let tar_bytes = builder.into_inner().unwrap();
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(&tar_bytes).unwrap();
        encoder.finish().unwrap()
    }

    fn all_batches() -> Vec<(String, Vec<u8>)> {
        let mut files: Vec<(String, Vec<u8>)> =
            (1..=5u8).map(|i| (format!("{ARCHIVE_DIR}/data_batch_{i}.bin"), record(i, i, 0, 0))).collect();
        files.push((format!("{ARCHIVE_DIR}/test_batch.bin"), [record(0, 0, 1, 2), record(9, 0, 1, 2)].concat()));
        files.push((format!("{ARCHIVE_DIR}/batches.meta.txt"), b"airplane\n".to_vec()));
        files
    }

    fn as_refs(files: &[(String, Vec<u8>)]) -> Vec<(&str, Vec<u8>)> {
        files.iter().map(|(p, d)| (p.as_str(), d.clone())).collect()
    }

    #[test]
    fn converts_planar_to_hwc() {
        let set = read_cifar10_bin(&record(4, 10, 20, 30)).unwrap();
        assert_eq!((set.len(), set.height, set.width, set.channels), (1, 32, 32, 3));
        assert_eq!(set.labels, vec![4]);
        let image = set.image(0);
        assert_eq!(&image[..3], &[10, 20, 30]);
        // Red of pixel (row 1, col 2) is at ((1 * 32) + 2) * 3 + 0 in HWC.
        assert_eq!(&image[(SIDE + 2) * 3..(SIDE + 2) * 3 + 3], &[255, 20, 30]);
    }

    #[test]
    fn rejects_partial_records_and_bad_labels() {
        let mut bytes = vec![record(1, 0, 0, 0); 10].concat();
        bytes.push(0);
        let err = read_cifar10_bin(&bytes).unwrap_err();
        assert_eq!(err.to_string(), "file: truncated: 30731 bytes is not a whole number of 3073-byte CIFAR-10 records");
        let mut records = vec![record(1, 0, 0, 0); 13];
        records[12][0] = 11;
        let err = read_cifar10_bin(&records.concat()).unwrap_err();
        assert_eq!(err.to_string(), "record 13: label 11 out of range 0..9");
        assert!(read_cifar10_bin(&[]).is_err());
    }

    #[test]
    fn reads_splits_from_targz_in_order() {
        let archive = targz(&as_refs(&all_batches()));
        let train = read_cifar10_targz(&archive, CifarSplit::Train).unwrap();
        assert_eq!(train.labels, vec![1, 2, 3, 4, 5]);
        assert_eq!(train.image(2)[0], 3, "third image is from data_batch_3");
        let test = read_cifar10_targz(&archive, CifarSplit::Test).unwrap();
        assert_eq!(test.labels, vec![0, 9]);
        assert_eq!(&test.image(1)[..3], &[0, 1, 2]);
    }

    #[test]
    fn targz_errors_name_the_missing_or_bad_batch() {
        let mut files = all_batches();
        files.retain(|(p, _)| !p.ends_with("data_batch_4.bin"));
        let err = read_cifar10_targz(&targz(&as_refs(&files)), CifarSplit::Train).unwrap_err();
        assert!(err.to_string().contains("tar archive has no cifar-10-batches-bin/data_batch_4.bin"), "{err}");
        assert!(read_cifar10_targz(&targz(&as_refs(&files)), CifarSplit::Test).is_ok());
        let mut files = all_batches();
        files[5].1[RECORD_LEN] = 10;
        let err = read_cifar10_targz(&targz(&as_refs(&files)), CifarSplit::Test).unwrap_err();
        assert_eq!(err.to_string(), "test_batch.bin, record 2: label 10 out of range 0..9");
        assert!(read_cifar10_targz(b"\x1f\x8bnot really", CifarSplit::Test).is_err());
    }

    #[test]
    fn reads_unpacked_directory() {
        let root = std::env::temp_dir().join(format!("fpt-cifar-test-{}", std::process::id()));
        let dir = root.join(ARCHIVE_DIR);
        std::fs::create_dir_all(&dir).unwrap();
        for (path, data) in all_batches() {
            std::fs::write(root.join(path), data).unwrap();
        }
        let from_root = read_cifar10_dir(&root, CifarSplit::Test).map(|s| s.labels);
        let from_dir = read_cifar10_dir(&dir, CifarSplit::Train).map(|s| s.len());
        std::fs::remove_file(dir.join("data_batch_1.bin")).unwrap();
        let missing = read_cifar10_dir(&dir, CifarSplit::Train).unwrap_err();
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(from_root.unwrap(), vec![0, 9]);
        assert_eq!(from_dir.unwrap(), 5);
        assert!(missing.location.ends_with("data_batch_1.bin"), "{missing}");
    }
}
