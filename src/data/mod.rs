//! Dataset file parsers: the shared in-memory dataset types, the error type every parser returns, and format sniffing.
//!
//! Each submodule owns one family of files (IDX, CIFAR-10, ListOps, FASTA, generic records). Parsers take bytes,
//! never panic on bad input, and report failures as a `DataError` naming where in the file the problem is.

pub mod arrays;
pub mod cifar;
pub mod fasta;
pub mod idx;
pub mod listops;
pub mod parquet;
pub mod records;
pub mod series;
pub mod ts;

use std::borrow::Cow;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes one file may decompress to (gzip, a tar's members, an npz's arrays together): a small
/// compressed upload must not become gigabytes in memory. The service sets it from
/// `--max-inflated-mb`; everything else keeps the default.
static MAX_INFLATED_BYTES: AtomicU64 = AtomicU64::new(1 << 30);

pub fn set_max_inflated_bytes(bytes: u64) {
    MAX_INFLATED_BYTES.store(bytes.max(1), Ordering::Relaxed);
}

pub fn max_inflated_bytes() -> u64 {
    MAX_INFLATED_BYTES.load(Ordering::Relaxed)
}

/// Reads a decompressing reader to its end, refusing it past [`max_inflated_bytes`] (`already`
/// bytes of the same file were decompressed before). `what` names the data in the error.
pub(crate) fn read_inflated(r: impl Read, already: u64, what: &str) -> Result<Vec<u8>, DataError> {
    let limit = max_inflated_bytes().saturating_sub(already);
    let mut out = Vec::new();
    r.take(limit.saturating_add(1)).read_to_end(&mut out).map_err(|e| DataError::file(format!("corrupt {what}: {e}")))?;
    if out.len() as u64 > limit {
        return Err(too_inflated(what));
    }
    Ok(out)
}

/// The error of a file that decompresses past the limit.
pub(crate) fn too_inflated(what: &str) -> DataError {
    DataError::file(format!("{what} decompresses to more than {} bytes, the most one file may hold decompressed", max_inflated_bytes()))
}

/// Where in a file a problem is, and what is wrong.
/// Display: "{location}: {message}" e.g. "line 7: input has 15 values, expected a multiple of 16 (input_dim)".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {message}")]
pub struct DataError {
    pub location: String,
    pub message: String,
}

impl DataError {
    pub fn new(location: impl Into<String>, message: impl Into<String>) -> Self {
        DataError { location: location.into(), message: message.into() }
    }

    /// A problem on a text line; `line` is 1-based, as editors show it.
    pub fn at_line(line: usize, message: impl Into<String>) -> Self {
        Self::new(format!("line {line}"), message)
    }

    /// A problem in a record of a binary or array file; `index` is 0-based, and the message
    /// counts from 1, as line numbers do (the first record is record 1).
    pub fn at_record(index: usize, message: impl Into<String>) -> Self {
        Self::new(format!("record {}", index + 1), message)
    }

    /// A problem with the file as a whole (size, header, missing parts).
    pub fn file(message: impl Into<String>) -> Self {
        Self::new("file", message)
    }

    /// Prefixes the location with the name of the member file it came from (a batch inside a tar, an array inside an npz).
    pub fn within(self, member: &str) -> Self {
        Self::new(format!("{member}, {}", self.location), self.message)
    }
}

/// Images, HWC row-major, channels innermost, u8 pixels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSet {
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    pub pixels: Vec<u8>,
    pub labels: Vec<i64>,
}

impl ImageSet {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Bytes in one image (height * width * channels).
    pub fn image_size(&self) -> usize {
        self.height * self.width * self.channels
    }

    /// Pixels of image `i`, HWC. Panics if `i >= len()`, like slice indexing.
    pub fn image(&self, i: usize) -> &[u8] {
        let size = self.image_size();
        &self.pixels[i * size..(i + 1) * size]
    }
}

/// Variable-length token-id sequences: sample i is tokens[offsets[i]..offsets[i+1]].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequenceSet {
    pub tokens: Vec<i64>,
    pub offsets: Vec<usize>,
    pub labels: Vec<i64>,
    pub vocab_size: usize,
    /// How many sequences were cut to `max_len` while reading.
    pub truncated: usize,
}

impl SequenceSet {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Token ids of sample `i`. Panics if `i >= len()`, like slice indexing.
    pub fn sequence(&self, i: usize) -> &[i64] {
        &self.tokens[self.offsets[i]..self.offsets[i + 1]]
    }

    /// Length of the longest sequence (0 for an empty set).
    pub fn max_sequence_len(&self) -> usize {
        self.offsets.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0)
    }
}

/// Accumulates sequences for the text-sequence readers (ListOps, FASTA) so truncation is counted in one place.
pub(crate) struct SequenceSetBuilder {
    set: SequenceSet,
    max_len: usize,
}

impl SequenceSetBuilder {
    pub(crate) fn new(vocab_size: usize, max_len: usize) -> Result<Self, DataError> {
        if max_len == 0 {
            return Err(DataError::file("max_len must be at least 1"));
        }
        let set = SequenceSet { tokens: Vec::new(), offsets: vec![0], labels: Vec::new(), vocab_size, truncated: 0 };
        Ok(SequenceSetBuilder { set, max_len })
    }

    /// Adds one sample, cutting it to `max_len` tokens; a cut sample is kept and counted, never dropped.
    pub(crate) fn push(&mut self, tokens: &[i64], label: i64) {
        let kept = if tokens.len() > self.max_len {
            self.set.truncated += 1;
            &tokens[..self.max_len]
        } else {
            tokens
        };
        self.set.tokens.extend_from_slice(kept);
        self.set.offsets.push(self.set.tokens.len());
        self.set.labels.push(label);
    }

    /// The finished set; a file that held no samples is an error, since training on nothing is always a mistake.
    pub(crate) fn finish(self, what: &str) -> Result<SequenceSet, DataError> {
        if self.set.labels.is_empty() {
            return Err(DataError::file(format!("no {what} found")));
        }
        Ok(self.set)
    }
}

/// Inputs of generic user records: real-valued tokens of `token_dim` values each, or integer token ids.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordInputs {
    Continuous { values: Vec<f32>, token_dim: usize },
    Tokens { ids: Vec<i64> },
}

/// Labels of generic user records: one class per sample, a fixed number of 0/1 bits per sample, or
/// a fixed number of real-valued regression targets per sample.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordLabels {
    Class(Vec<i64>),
    Bits { bits: Vec<u8>, per_sample: usize },
    Targets { values: Vec<f32>, per_sample: usize },
}

/// Generic user records (JSONL / npz / safetensors).
#[derive(Debug, Clone, PartialEq)]
pub struct RecordSet {
    pub inputs: RecordInputs,
    /// Token offsets, n+1 entries: record i holds tokens offsets[i]..offsets[i+1].
    pub offsets: Vec<usize>,
    pub labels: RecordLabels,
    /// The class names, in index order, when the labels were names (`"cat"`) rather than indices.
    pub label_names: Option<Vec<String>>,
}

impl RecordSet {
    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of tokens in record `i`. Panics if `i >= len()`, like slice indexing.
    pub fn token_count(&self, i: usize) -> usize {
        self.offsets[i + 1] - self.offsets[i]
    }

    /// Values per token: `token_dim` for continuous inputs, 1 for token ids.
    pub fn values_per_token(&self) -> usize {
        match &self.inputs {
            RecordInputs::Continuous { token_dim, .. } => *token_dim,
            RecordInputs::Tokens { .. } => 1,
        }
    }
}

/// What a file is, sniffed from its bytes (magic numbers, then text shape) and name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jsonl,
    Npz,
    Safetensors,
    IdxImages,
    IdxLabels,
    Cifar10Bin,
    Cifar10TarGz,
    ListopsTsv,
    Fasta,
    /// TAPE protein JSON: an array of objects with "primary" and "fold_label", or JSON lines of them.
    TapeJson,
    /// A table with a header row, comma- or tab-separated: a label (or target) column and numeric inputs.
    Csv,
    /// The sktime/aeon/UEA time-series format: `@` header keywords, then `@data` and a case per line.
    Ts,
    /// Apache Parquet: records with an `input` column, or a table.
    Parquet,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Jsonl => "JSONL",
            Format::Npz => "npz",
            Format::Safetensors => "safetensors",
            Format::IdxImages => "IDX images",
            Format::IdxLabels => "IDX labels",
            Format::Cifar10Bin => "CIFAR-10 binary batch",
            Format::Cifar10TarGz => "CIFAR-10 tar.gz",
            Format::ListopsTsv => "ListOps TSV",
            Format::Fasta => "FASTA",
            Format::TapeJson => "TAPE JSON",
            Format::Csv => "CSV",
            Format::Ts => "UCR/UEA .ts",
            Format::Parquet => "Parquet",
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The bytes as UTF-8 text without a leading byte-order mark; invalid UTF-8 is reported at its line.
pub(crate) fn utf8_text(bytes: &[u8]) -> Result<&str, DataError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    std::str::from_utf8(bytes).map_err(|e| {
        let line = 1 + bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count();
        DataError::at_line(line, "not valid UTF-8 text")
    })
}

/// Lines numbered from 1, with Windows line endings removed.
pub(crate) fn numbered_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().map(|(index, line)| (index + 1, line))
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZIP_MAGIC: [u8; 4] = *b"PK\x03\x04";
const EMPTY_ZIP_MAGIC: [u8; 4] = *b"PK\x05\x06";
/// Enough decompressed bytes to see a tar header's "ustar" marker (offset 257) or an IDX magic.
const GZIP_PEEK_BYTES: u64 = 512;

pub(crate) fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&GZIP_MAGIC)
}

/// Decompresses gzip input, passing other bytes through untouched, so readers accept both forms.
pub(crate) fn gunzip_if_compressed(bytes: &[u8]) -> Result<Cow<'_, [u8]>, DataError> {
    if !is_gzip(bytes) {
        return Ok(Cow::Borrowed(bytes));
    }
    Ok(Cow::Owned(read_inflated(flate2::read::MultiGzDecoder::new(bytes), 0, "gzip data")?))
}

/// The first few decompressed bytes of a gzip stream; a stream that ends early just yields fewer bytes.
fn gunzip_prefix(bytes: &[u8]) -> Result<Vec<u8>, DataError> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(bytes)
        .take(GZIP_PEEK_BYTES)
        .read_to_end(&mut out)
        .map_err(|e| DataError::file(format!("corrupt gzip data: {e}")))?;
    Ok(out)
}

fn looks_like_tar(bytes: &[u8]) -> bool {
    bytes.get(257..262) == Some(b"ustar")
}

fn has_suffix(filename: &str, suffixes: &[&str]) -> bool {
    let lower = filename.to_ascii_lowercase();
    suffixes.iter().any(|s| lower.ends_with(s))
}

/// An 8-byte little-endian header length, then a JSON header that fits in the file.
fn looks_like_safetensors(bytes: &[u8]) -> bool {
    let Some(len_bytes) = bytes.get(..8) else {
        return false;
    };
    let header_len = u64::from_le_bytes(len_bytes.try_into().unwrap_or([0; 8]));
    let fits = usize::try_from(header_len).is_ok_and(|n| n >= 2 && n <= bytes.len() - 8);
    fits && bytes[8] == b'{'
}

/// What a file is, sniffed from its bytes (magic numbers, then text shape) and name.
pub fn detect_format(filename: &str, bytes: &[u8]) -> Result<Format, DataError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(DataError::file("empty"));
    }
    if is_gzip(bytes) {
        return detect_gzip_format(filename, bytes);
    }
    if parquet::is_parquet(bytes) {
        return Ok(Format::Parquet);
    }
    if bytes.starts_with(&ZIP_MAGIC) || bytes.starts_with(&EMPTY_ZIP_MAGIC) {
        return Ok(Format::Npz);
    }
    if let Some(format) = idx::sniff_magic(bytes) {
        return Ok(format);
    }
    if looks_like_safetensors(bytes) {
        return Ok(Format::Safetensors);
    }
    if has_suffix(filename, &[".bin"]) && cifar::is_whole_records(bytes.len()) {
        return Ok(Format::Cifar10Bin);
    }
    detect_text_format(bytes).ok_or_else(|| {
        DataError::file(
            "unrecognised format (expected JSONL, TAPE JSON, CSV/TSV with a header row, UCR/UEA .ts, Parquet, npz, safetensors, IDX \
             (optionally gzipped), CIFAR-10 .bin or .tar.gz, ListOps TSV or FASTA)",
        )
    })
}

fn detect_gzip_format(filename: &str, bytes: &[u8]) -> Result<Format, DataError> {
    if has_suffix(filename, &[".tar.gz", ".tgz"]) {
        return Ok(Format::Cifar10TarGz);
    }
    let prefix = gunzip_prefix(bytes)?;
    if looks_like_tar(&prefix) {
        return Ok(Format::Cifar10TarGz);
    }
    idx::sniff_magic(&prefix).ok_or_else(|| DataError::file("gzip file holds neither a tar archive nor IDX data"))
}

/// Text formats are told apart by their first meaningful characters; only the first line is looked at.
fn detect_text_format(bytes: &[u8]) -> Option<Format> {
    let text = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let start = text.iter().position(|b| !b.is_ascii_whitespace())?;
    let text = &text[start..];
    let first_line = text.split(|&b| b == b'\n').next().unwrap_or(text);
    let first_line = first_line.strip_suffix(b"\r").unwrap_or(first_line);
    match text[0] {
        b'>' => Some(Format::Fasta),
        b'@' | b'#' => Some(Format::Ts),
        _ if listops::is_tsv_line(first_line) => Some(Format::ListopsTsv),
        b'{' if fasta::looks_like_tape_object(first_line) => Some(Format::TapeJson),
        b'{' => Some(Format::Jsonl),
        // An array of objects: TAPE's proteins (they have a "primary"), or records.
        b'[' if text[1..].iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') => {
            let head = &text[..text.len().min(4096)];
            Some(if head.windows(9).any(|w| w == b"\"primary\"") { Format::TapeJson } else { Format::Jsonl })
        }
        _ if records::csv_delimiter(first_line).is_some() => Some(Format::Csv),
        _ => None,
    }
}

/// Gzips bytes, for the parsers' tests.
#[cfg(test)]
pub(crate) fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_display_names_location() {
        let err = DataError::at_line(7, "input has 15 values");
        assert_eq!(err.to_string(), "line 7: input has 15 values");
        assert_eq!(DataError::at_record(3, "bad").within("test_batch.bin").to_string(), "test_batch.bin, record 4: bad");
        assert_eq!(DataError::file("empty").to_string(), "file: empty");
    }

    #[test]
    fn an_array_of_records_is_json_records_and_one_of_proteins_is_tape() {
        assert_eq!(detect_format("r.json", b"[{\"input\": [1], \"label\": 0}]").unwrap(), Format::Jsonl);
        assert_eq!(detect_format("p.json", b"[\n {\"primary\": \"MKV\", \"fold_label\": 3}]").unwrap(), Format::TapeJson);
    }

    #[test]
    fn detects_binary_formats_by_magic() {
        let images = idx::write_idx_images(1, 2, 2, &[0, 1, 2, 3]).unwrap();
        let labels = idx::write_idx_labels(&[4]).unwrap();
        assert_eq!(detect_format("x", &images).unwrap(), Format::IdxImages);
        assert_eq!(detect_format("x", &labels).unwrap(), Format::IdxLabels);
        assert_eq!(detect_format("train-images.gz", &gzip(&images)).unwrap(), Format::IdxImages);
        assert_eq!(detect_format("x.npz", b"PK\x03\x04rest").unwrap(), Format::Npz);
        let mut st = 4u64.to_le_bytes().to_vec();
        st.extend_from_slice(b"{}  ");
        assert_eq!(detect_format("m.safetensors", &st).unwrap(), Format::Safetensors);
        assert_eq!(detect_format("data_batch_1.bin", &vec![1u8; 3073 * 2]).unwrap(), Format::Cifar10Bin);
        assert_eq!(detect_format("c.tar.gz", &gzip(b"anything")).unwrap(), Format::Cifar10TarGz);
    }

    #[test]
    fn detects_tar_inside_gzip_without_name_hint() {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(3);
        header.set_cksum();
        builder.append_data(&mut header, "a.bin", &b"abc"[..]).unwrap();
        let tar_bytes = builder.into_inner().unwrap();
        assert_eq!(detect_format("upload", &gzip(&tar_bytes)).unwrap(), Format::Cifar10TarGz);
    }

    #[test]
    fn detects_text_formats() {
        assert_eq!(detect_format("a", b">seq1 3\nMKV\n").unwrap(), Format::Fasta);
        assert_eq!(detect_format("a", b"Source\tTarget\n[MAX 1 2 ]\t2\n").unwrap(), Format::ListopsTsv);
        assert_eq!(detect_format("a", b"( [MAX 1 2 ] )\t2\n").unwrap(), Format::ListopsTsv);
        assert_eq!(detect_format("a", b"{\"input\": [1, 2], \"label\": 0}\n").unwrap(), Format::Jsonl);
        assert_eq!(detect_format("a", b"\xEF\xBB\xBF  {\"input\": [1], \"label\": 0}").unwrap(), Format::Jsonl);
        assert_eq!(detect_format("a", b"[{\"primary\": \"MKV\", \"fold_label\": 1}]").unwrap(), Format::TapeJson);
        assert_eq!(detect_format("a", b"{\"primary\": \"MKV\", \"fold_label\": 1}\n").unwrap(), Format::TapeJson);
    }

    #[test]
    fn unknown_bytes_are_an_error() {
        let err = detect_format("notes.txt", b"hello world").unwrap_err();
        assert!(err.to_string().starts_with("file: unrecognised format"), "{err}");
        let err = detect_format("x.gz", &gzip(b"plain text")).unwrap_err();
        assert!(err.to_string().contains("neither a tar archive nor IDX"), "{err}");
    }

    #[test]
    fn text_helpers_number_lines_and_locate_bad_utf8() {
        let lines: Vec<_> = numbered_lines("a\r\nb\n").collect();
        assert_eq!(lines, vec![(1, "a"), (2, "b")]);
        assert_eq!(utf8_text(b"\xEF\xBB\xBFok").unwrap(), "ok");
        assert_eq!(utf8_text(b"ok\nfine\nbad \xff").unwrap_err().to_string(), "line 3: not valid UTF-8 text");
    }

    #[test]
    fn sequence_builder_cuts_and_counts() {
        let mut builder = SequenceSetBuilder::new(5, 3).unwrap();
        builder.push(&[1, 2, 3, 4, 1], 0);
        builder.push(&[2], 1);
        let set = builder.finish("sequences").unwrap();
        assert_eq!(set.sequence(0), &[1, 2, 3]);
        assert_eq!(set.sequence(1), &[2]);
        assert_eq!(set.truncated, 1);
        assert_eq!(set.max_sequence_len(), 3);
        assert!(SequenceSetBuilder::new(5, 0).is_err());
        let empty = SequenceSetBuilder::new(5, 3).unwrap().finish("sequences").unwrap_err();
        assert_eq!(empty.to_string(), "file: no sequences found");
    }
}
