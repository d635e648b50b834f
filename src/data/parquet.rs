//! Apache Parquet files (arrow-rs's `parquet` crate), read row by row into what the other formats
//! give. A file with an `input` column holds records: each row's `input` a list (a flat sequence)
//! or a list of lists (`[L][D]`), beside its `label` (a class, a name, or a list of labels) or
//! `target`, exactly as a JSON line would. Any other file is a table and reads as a CSV table
//! does: a label (or target) column and numeric inputs for the sequence tasks, a column per channel
//! (a date or time column skipped) for forecasting. Errors name the row (1 is the first).
use parquet::file::reader::{FileReader, SerializedFileReader};
use serde_json::{Map, Value};

use super::records::{push_json_record, read_csv, RecordSetBuilder, RecordSpec};
use super::series::{read_csv_series, Missing, SeriesSet};
use super::{max_inflated_bytes, too_inflated, DataError, RecordSet};

const MAGIC: &[u8] = b"PAR1";

/// A Parquet file starts and ends with its magic.
pub fn is_parquet(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes.starts_with(MAGIC) && bytes.ends_with(MAGIC)
}

/// Cells a file may hold (rows x columns, from its metadata): each is read as JSON on its way in.
const MAX_CELLS: i64 = 1 << 25;

type Reader = SerializedFileReader<bytes::Bytes>;

/// The file's reader, its sizes checked against the bounds before any row is read.
fn open(bytes: &[u8]) -> Result<Reader, DataError> {
    let reader =
        SerializedFileReader::new(bytes::Bytes::copy_from_slice(bytes)).map_err(|e| DataError::file(format!("invalid Parquet: {e}")))?;
    let meta = reader.metadata();
    let inflated: i64 = meta.row_groups().iter().map(|g| g.total_byte_size().max(0)).sum();
    if inflated as u64 > max_inflated_bytes() {
        return Err(too_inflated("the Parquet data"));
    }
    let cells = meta.file_metadata().num_rows().max(0).saturating_mul(columns(&reader).len() as i64);
    if cells > MAX_CELLS {
        return Err(DataError::file(format!("{cells} cells (rows x columns), at most {MAX_CELLS}")));
    }
    if meta.file_metadata().num_rows() <= 0 {
        return Err(DataError::file("no rows"));
    }
    Ok(reader)
}

fn columns(reader: &Reader) -> Vec<String> {
    reader.metadata().file_metadata().schema_descr().root_schema().get_fields().iter().map(|f| f.name().to_string()).collect()
}

/// Runs `each` on every row (numbered from 1) as a JSON object. A malformed file that makes the
/// reader panic is refused like any other invalid file.
fn each_row(reader: Reader, each: &mut dyn FnMut(usize, Map<String, Value>) -> Result<(), DataError>) -> Result<(), DataError> {
    let read = std::panic::AssertUnwindSafe(|| -> Result<(), DataError> {
        let iter = reader.get_row_iter(None).map_err(|e| DataError::file(format!("invalid Parquet: {e}")))?;
        for (i, row) in iter.enumerate() {
            let row = row.map_err(|e| DataError::new(format!("row {}", i + 1), format!("invalid Parquet: {e}")))?;
            match row.to_json_value() {
                Value::Object(m) => each(i + 1, m)?,
                other => return Err(DataError::new(format!("row {}", i + 1), format!("not a record: {other}"))),
            }
        }
        Ok(())
    });
    std::panic::catch_unwind(read).unwrap_or_else(|_| Err(DataError::file("invalid Parquet: the reader failed on a malformed file")))
}

/// Whether a file holds records with an `input` column (rather than a plain table).
pub fn holds_records(bytes: &[u8]) -> bool {
    SerializedFileReader::new(bytes::Bytes::copy_from_slice(bytes))
        .is_ok_and(|r| r.metadata().file_metadata().schema_descr().root_schema().get_fields().iter().any(|f| f.name() == "input"))
}

/// A plain table as CSV text (a header, then a line per row), so that it is read as a CSV table
/// is; a cell holding a list is refused, naming its row and column.
fn as_csv(reader: Reader) -> Result<Vec<u8>, DataError> {
    let columns = columns(&reader);
    let mut w = csv::Writer::from_writer(Vec::new());
    let io = |e: csv::Error| DataError::file(e.to_string());
    w.write_record(&columns).map_err(io)?;
    each_row(reader, &mut |i, row| {
        let mut cells = Vec::with_capacity(columns.len());
        for c in &columns {
            cells.push(match row.get(c).unwrap_or(&Value::Null) {
                Value::Null => String::new(),
                Value::String(s) => s.clone(),
                v @ (Value::Number(_) | Value::Bool(_)) => v.to_string(),
                _ => {
                    return Err(DataError::new(
                        format!("row {i}"),
                        format!("column `{c}` holds a list: a record's sequence goes in a column named `input`"),
                    ))
                }
            });
        }
        w.write_record(&cells).map_err(io)
    })?;
    w.into_inner().map_err(|e| DataError::file(e.to_string()))
}

/// An error of the CSV reading of a table, named by the table's row (its line less the header's).
fn in_rows(e: DataError) -> DataError {
    match e.location.strip_prefix("line ").and_then(|n| n.parse::<usize>().ok()) {
        Some(1) => DataError::new("header", e.message),
        Some(line) => DataError::new(format!("row {}", line - 1), e.message),
        None => e,
    }
}

/// Records (`input` with `label` or `target`), or a table read as a CSV table is.
pub fn read_parquet(bytes: &[u8], spec: &RecordSpec) -> Result<RecordSet, DataError> {
    let reader = open(bytes)?;
    if !columns(&reader).iter().any(|c| c == "input") {
        return read_csv(&as_csv(reader)?, spec).map_err(in_rows);
    }
    let mut builder = RecordSetBuilder::new(spec)?;
    each_row(reader, &mut |i, row| push_json_record(&mut builder, &Value::Object(row)).map_err(|m| DataError::new(format!("row {i}"), m)))?;
    builder.finish()
}

/// A table of series values, a column per channel, read as a CSV series is.
pub fn read_parquet_series(bytes: &[u8], missing: Missing) -> Result<SeriesSet, DataError> {
    read_csv_series(&as_csv(open(bytes)?)?, missing).map_err(in_rows)
}

/// An upload's check of a plain table before a task names its columns, as a CSV table's; returns
/// the rows. (Files of records are checked as records.)
pub fn inspect_parquet_table(bytes: &[u8]) -> Result<usize, DataError> {
    super::records::inspect_csv(&as_csv(open(bytes)?)?).map_err(in_rows)
}
