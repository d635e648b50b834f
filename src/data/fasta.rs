//! Protein sequences for remote homology: FASTA with fold labels in the headers, and TAPE's JSON layout.

use serde_json::Value;

use super::records::{class_label, parse_json_document, parse_json_line};
use super::{numbered_lines, utf8_text, DataError, SequenceSet, SequenceSetBuilder};

/// Residue letters by id, starting at 1 (id 0 is padding): the 20 standard amino acids, then X B Z U O.
pub const AMINO_ACIDS: &str = "ACDEFGHIKLMNPQRSTVWYXBZUO";
pub const PAD_ID: i64 = 0;
/// Header keys that name the label anywhere in a FASTA header.
const LABEL_KEYS: [&str; 2] = ["fold=", "label="];

pub fn vocab_size() -> usize {
    1 + AMINO_ACIDS.len()
}

/// The id of one residue letter; lowercase (soft-masked) letters mean the same residue.
fn residue_id(letter: char) -> Option<i64> {
    let upper = letter.to_ascii_uppercase();
    AMINO_ACIDS.find(upper).filter(|_| upper.is_ascii()).map(|index| index as i64 + 1)
}

/// Appends the ids of `text`'s residues to `ids`, skipping whitespace (some files group residues in blocks).
fn append_residues(text: &str, ids: &mut Vec<i64>) -> Result<(), String> {
    for letter in text.chars().filter(|c| !c.is_whitespace()) {
        let id = residue_id(letter).ok_or_else(|| format!("unknown residue '{letter}' at position {}", ids.len() + 1))?;
        ids.push(id);
    }
    Ok(())
}

/// Token ids of a protein sequence string.
pub fn encode_protein(sequence: &str) -> Result<Vec<i64>, String> {
    let mut ids = Vec::with_capacity(sequence.len());
    append_residues(sequence, &mut ids)?;
    Ok(ids)
}

fn parse_label_value(text: &str) -> Result<i64, String> {
    let label: i64 = text.parse().map_err(|_| format!("label '{text}' is not an integer"))?;
    if label < 0 {
        return Err(format!("label {label} is negative"));
    }
    Ok(label)
}

/// The fold class in a header (without '>'): `fold=N` / `label=N` anywhere, else the last field after the name.
fn header_label(fields: &[&str]) -> Result<i64, String> {
    let keyed = fields.iter().find_map(|field| LABEL_KEYS.iter().find_map(|key| field.strip_prefix(key)));
    if let Some(value) = keyed {
        return parse_label_value(value);
    }
    match fields {
        [_name, .., last] => parse_label_value(last)
            .map_err(|problem| format!("{problem}; write the fold class as the header's last field, or fold=N / label=N")),
        _ => Err("missing label: write the header as '>name label', or add fold=N / label=N".to_string()),
    }
}

/// A FASTA record being read: its header's line, name and label, and the residues so far.
struct PendingRecord {
    header_line: usize,
    name: String,
    label: i64,
    ids: Vec<i64>,
}

impl PendingRecord {
    fn from_header(line_number: usize, header: &str) -> Result<Self, DataError> {
        let fields: Vec<&str> = header.split_whitespace().collect();
        let name = fields.first().ok_or_else(|| DataError::at_line(line_number, "header has no name"))?.to_string();
        let label = header_label(&fields).map_err(|message| DataError::at_line(line_number, format!("record '{name}': {message}")))?;
        Ok(PendingRecord { header_line: line_number, name, label, ids: Vec::new() })
    }

    fn add_line(&mut self, line_number: usize, line: &str) -> Result<(), DataError> {
        append_residues(line, &mut self.ids)
            .map_err(|message| DataError::at_line(line_number, format!("record '{}': {message}", self.name)))
    }

    fn finish_into(self, builder: &mut SequenceSetBuilder) -> Result<(), DataError> {
        if self.ids.is_empty() {
            return Err(DataError::at_line(self.header_line, format!("record '{}' has an empty sequence", self.name)));
        }
        builder.push(&self.ids, self.label);
        Ok(())
    }
}

/// Reads protein FASTA; sequences longer than `max_len` are cut and counted in `truncated`, never dropped.
/// Lines starting with ';' are comments.
pub fn read_fasta(bytes: &[u8], max_len: usize) -> Result<SequenceSet, DataError> {
    let text = utf8_text(bytes)?;
    let mut builder = SequenceSetBuilder::new(vocab_size(), max_len)?;
    let mut pending: Option<PendingRecord> = None;
    for (line_number, line) in numbered_lines(text) {
        let line = line.trim();
        if line.is_empty() || line.starts_with(';') {
            continue;
        }
        if let Some(header) = line.strip_prefix('>') {
            if let Some(done) = pending.replace(PendingRecord::from_header(line_number, header)?) {
                done.finish_into(&mut builder)?;
            }
        } else {
            let record = pending.as_mut().ok_or_else(|| DataError::at_line(line_number, "sequence line before any '>' header"))?;
            record.add_line(line_number, line)?;
        }
    }
    if let Some(done) = pending {
        done.finish_into(&mut builder)?;
    }
    builder.finish("FASTA records")
}

/// One TAPE sample: (residue ids, fold label) from `{"primary": "...", "fold_label": N}`.
fn tape_sample(item: &Value) -> Result<(Vec<i64>, i64), String> {
    let object = item.as_object().ok_or("expected an object with \"primary\" and \"fold_label\"")?;
    let primary = object.get("primary").ok_or("missing \"primary\"")?;
    let primary = primary.as_str().ok_or("\"primary\" must be a string of residue letters")?;
    let ids = encode_protein(primary)?;
    if ids.is_empty() {
        return Err("empty sequence".to_string());
    }
    let label = class_label(object.get("fold_label").ok_or("missing \"fold_label\"")?, None)?;
    Ok((ids, label))
}

/// Reads TAPE remote-homology JSON: one array of objects, or one object per line.
pub fn read_tape_json(bytes: &[u8], max_len: usize) -> Result<SequenceSet, DataError> {
    let text = utf8_text(bytes)?;
    let mut builder = SequenceSetBuilder::new(vocab_size(), max_len)?;
    if text.trim_start().starts_with('[') {
        let document = parse_json_document(text)?;
        let items = document.as_array().map(Vec::as_slice).unwrap_or_default();
        for (index, item) in items.iter().enumerate() {
            let (ids, label) = tape_sample(item).map_err(|message| DataError::at_record(index, message))?;
            builder.push(&ids, label);
        }
    } else {
        for (line_number, line) in numbered_lines(text).filter(|(_, line)| !line.trim().is_empty()) {
            let item = parse_json_line(line_number, line)?;
            let (ids, label) = tape_sample(&item).map_err(|message| DataError::at_line(line_number, message))?;
            builder.push(&ids, label);
        }
    }
    builder.finish("TAPE records")
}

/// Whether a first line is a TAPE object, which has a "primary" sequence (used by format sniffing).
pub(crate) fn looks_like_tape_object(line: &[u8]) -> bool {
    serde_json::from_slice::<Value>(line).is_ok_and(|value| value.get("primary").is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocabulary_has_pad_and_25_letters() {
        assert_eq!(vocab_size(), 26);
        assert_eq!(encode_protein("ACY O").unwrap(), vec![1, 2, 20, 25]);
        assert_eq!(encode_protein("mkv").unwrap(), encode_protein("MKV").unwrap());
    }

    #[test]
    fn reads_records_with_each_label_style() {
        let fasta = b">d1a1x_ 3\nMKV\nLLA\n\n>d2 fold=7 species=x\nACD\n; comment\n>d3 label=0 extra 99\nW\n";
        let set = read_fasta(fasta, 100).unwrap();
        assert_eq!(set.len(), 3);
        assert_eq!(set.labels, vec![3, 7, 0]);
        assert_eq!(set.sequence(0), &encode_protein("MKVLLA").unwrap()[..]);
        assert_eq!(set.sequence(1), &[1, 2, 3]);
        assert_eq!(set.truncated, 0);
    }

    #[test]
    fn long_sequences_are_cut_and_counted() {
        let set = read_fasta(b">a 1\nACDEFGHIK\n>b 2\nAC\n", 4).unwrap();
        assert_eq!(set.sequence(0).len(), 4);
        assert_eq!(set.sequence(1).len(), 2);
        assert_eq!(set.truncated, 1);
        assert_eq!(set.len(), 2);
    }

    #[test]
    fn fasta_errors_name_line_and_record() {
        let err = read_fasta(b">a 1\nMKV\n>b 2\nMKJV\n", 10).unwrap_err();
        assert_eq!(err.to_string(), "line 4: record 'b': unknown residue 'J' at position 3");
        let err = read_fasta(b"MKV\n>a 1\nMKV\n", 10).unwrap_err();
        assert_eq!(err.to_string(), "line 1: sequence line before any '>' header");
        let err = read_fasta(b">a 1\n>b 2\nMKV\n", 10).unwrap_err();
        assert_eq!(err.to_string(), "line 1: record 'a' has an empty sequence");
        let err = read_fasta(b">a\nMKV\n", 10).unwrap_err();
        assert!(err.to_string().starts_with("line 1: record 'a': missing label"), "{err}");
        let err = read_fasta(b">a fold=-2\nMKV\n", 10).unwrap_err();
        assert_eq!(err.to_string(), "line 1: record 'a': label -2 is negative");
        let err = read_fasta(b">a human\nMKV\n", 10).unwrap_err();
        assert!(err.to_string().contains("label 'human' is not an integer"), "{err}");
    }

    #[test]
    fn reads_tape_json_array_and_lines() {
        let array = br#"[{"primary": "MKV", "fold_label": 3, "id": "x"}, {"primary": "AC", "fold_label": 0}]"#;
        let set = read_tape_json(array, 2).unwrap();
        assert_eq!(set.labels, vec![3, 0]);
        assert_eq!(set.truncated, 1);
        let lines = b"{\"primary\": \"MKV\", \"fold_label\": 5}\n\n{\"primary\": \"W\", \"fold_label\": 1}\n";
        let set = read_tape_json(lines, 10).unwrap();
        assert_eq!(set.labels, vec![5, 1]);
        assert_eq!(set.sequence(1), &[19]);
    }

    #[test]
    fn tape_errors_name_record_or_line() {
        let err = read_tape_json(br#"[{"primary": "MKV", "fold_label": 3}, {"primary": "MK"}]"#, 10).unwrap_err();
        assert_eq!(err.to_string(), "record 2: missing \"fold_label\"");
        let err = read_tape_json(b"{\"primary\": \"MKV\", \"fold_label\": 1}\n{\"primary\": \"M1\", \"fold_label\": 1}\n", 10).unwrap_err();
        assert_eq!(err.to_string(), "line 2: unknown residue '1' at position 2");
        let err = read_tape_json(b"{\"primary\": \"MKV\", \"fold_label\": -1}\n", 10).unwrap_err();
        assert!(err.to_string().contains("label -1"), "{err}");
        assert!(read_tape_json(b"[]", 10).is_err());
        assert!(read_tape_json(b"[{\"primary\": 5, \"fold_label\": 1}", 10).is_err());
    }
}
