//! Named n-d arrays read from `.npz` (zip of `.npy`) and `.safetensors` containers, with a minimal `.npy` parser.

use std::io::Cursor;

use safetensors::{Dtype, SafeTensors};

use super::DataError;

/// Element types the record readers accept; everything else is refused with the supported list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElementType {
    F32,
    F64,
    I64,
    I32,
    U8,
}

impl ElementType {
    fn size(self) -> usize {
        match self {
            ElementType::F32 | ElementType::I32 => 4,
            ElementType::F64 | ElementType::I64 => 8,
            ElementType::U8 => 1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ElementType::F32 => "float32",
            ElementType::F64 => "float64",
            ElementType::I64 => "int64",
            ElementType::I32 => "int32",
            ElementType::U8 => "uint8",
        }
    }
}

/// Array elements, kept in their stored type so callers decide how to convert and what to refuse.
#[derive(Debug, Clone, PartialEq)]
pub enum ArrayData {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    U8(Vec<u8>),
}

impl ArrayData {
    pub fn element_type(&self) -> ElementType {
        match self {
            ArrayData::F32(_) => ElementType::F32,
            ArrayData::F64(_) => ElementType::F64,
            ArrayData::I64(_) => ElementType::I64,
            ArrayData::I32(_) => ElementType::I32,
            ArrayData::U8(_) => ElementType::U8,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            ArrayData::F32(v) => v.len(),
            ArrayData::F64(v) => v.len(),
            ArrayData::I64(v) => v.len(),
            ArrayData::I32(v) => v.len(),
            ArrayData::U8(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One named array, row-major (C order).
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: ArrayData,
}

fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |count, &dim| count.checked_mul(dim))
}

/// Decodes little-endian elements; `bytes` must hold exactly `shape`'s elements.
fn decode_little_endian(element: ElementType, shape: &[usize], bytes: &[u8]) -> Result<ArrayData, String> {
    let needed = element_count(shape).and_then(|count| count.checked_mul(element.size()));
    if needed != Some(bytes.len()) {
        let needed = needed.map_or("more than memory allows".to_string(), |n| format!("{n} bytes"));
        return Err(format!("shape {shape:?} of {} needs {needed}, found {} bytes", element.name(), bytes.len()));
    }
    fn words<const N: usize>(bytes: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
        bytes.chunks_exact(N).map(|chunk| chunk.try_into().unwrap_or([0; N]))
    }
    Ok(match element {
        ElementType::F32 => ArrayData::F32(words(bytes).map(f32::from_le_bytes).collect()),
        ElementType::F64 => ArrayData::F64(words(bytes).map(f64::from_le_bytes).collect()),
        ElementType::I64 => ArrayData::I64(words(bytes).map(i64::from_le_bytes).collect()),
        ElementType::I32 => ArrayData::I32(words(bytes).map(i32::from_le_bytes).collect()),
        ElementType::U8 => ArrayData::U8(bytes.to_vec()),
    })
}

/// The fields of an `.npy` header dict, e.g. `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }`.
#[derive(Debug, Default)]
struct NpyHeader {
    descr: Option<String>,
    fortran_order: Option<bool>,
    shape: Option<Vec<usize>>,
}

/// A cursor over the Python-literal header dict; it understands just the literals numpy writes there.
struct LiteralCursor<'a> {
    rest: &'a str,
}

impl<'a> LiteralCursor<'a> {
    fn skip_space(&mut self) {
        self.rest = self.rest.trim_start();
    }

    fn eat(&mut self, expected: char) -> bool {
        self.skip_space();
        match self.rest.strip_prefix(expected) {
            Some(rest) => {
                self.rest = rest;
                true
            }
            None => false,
        }
    }

    fn expect(&mut self, expected: char) -> Result<(), String> {
        if self.eat(expected) {
            Ok(())
        } else {
            Err(format!("expected '{expected}' at '{}'", self.rest.chars().take(20).collect::<String>()))
        }
    }

    fn string(&mut self) -> Result<&'a str, String> {
        self.skip_space();
        let quote = self.rest.chars().next().filter(|c| *c == '\'' || *c == '"').ok_or("expected a quoted string")?;
        let body = &self.rest[1..];
        let end = body.find(quote).ok_or("unterminated string")?;
        self.rest = &body[end + 1..];
        Ok(&body[..end])
    }

    fn boolean(&mut self) -> Result<bool, String> {
        self.skip_space();
        for (word, value) in [("True", true), ("False", false)] {
            if let Some(rest) = self.rest.strip_prefix(word) {
                self.rest = rest;
                return Ok(value);
            }
        }
        Err("expected True or False".to_string())
    }

    fn unsigned(&mut self) -> Result<usize, String> {
        self.skip_space();
        let digits = self.rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(self.rest.len());
        let value = self.rest[..digits].parse().map_err(|_| "expected a dimension".to_string())?;
        self.rest = &self.rest[digits..];
        Ok(value)
    }

    /// A tuple of dimensions such as `()`, `(5,)` or `(3, 4)`.
    fn shape_tuple(&mut self) -> Result<Vec<usize>, String> {
        self.expect('(')?;
        let mut dims = Vec::new();
        while !self.eat(')') {
            dims.push(self.unsigned()?);
            if !self.eat(',') {
                self.expect(')')?;
                break;
            }
        }
        Ok(dims)
    }
}

fn parse_npy_header(text: &str) -> Result<NpyHeader, String> {
    let mut cursor = LiteralCursor { rest: text };
    let mut header = NpyHeader::default();
    cursor.expect('{')?;
    while !cursor.eat('}') {
        let key = cursor.string()?;
        cursor.expect(':')?;
        match key {
            "descr" => {
                let descr = cursor.string().map_err(|_| "unsupported dtype: structured arrays are not supported")?;
                header.descr = Some(descr.to_string());
            }
            "fortran_order" => header.fortran_order = Some(cursor.boolean()?),
            "shape" => header.shape = Some(cursor.shape_tuple()?),
            other => return Err(format!("unexpected header key '{other}'")),
        }
        if !cursor.eat(',') {
            cursor.expect('}')?;
            break;
        }
    }
    Ok(header)
}

const NPY_MAGIC: &[u8] = b"\x93NUMPY";
const NPY_DTYPES: &str = "<f4, <f8, <i8, <i4, |u1, |b1";

fn npy_element_type(descr: &str) -> Result<ElementType, String> {
    match descr {
        "<f4" => Ok(ElementType::F32),
        "<f8" => Ok(ElementType::F64),
        "<i8" => Ok(ElementType::I64),
        "<i4" => Ok(ElementType::I32),
        // Booleans are stored one byte each, 0 or 1, so they read as uint8 (handy for bit labels).
        "|u1" | "|b1" => Ok(ElementType::U8),
        other => Err(format!("unsupported dtype '{other}' (supported: {NPY_DTYPES})")),
    }
}

/// Splits an `.npy` file into its header text and data bytes (format versions 1, 2 and 3).
fn split_npy(bytes: &[u8]) -> Result<(&str, &[u8]), String> {
    if !bytes.starts_with(NPY_MAGIC) {
        return Err("not an .npy file (missing \\x93NUMPY magic)".to_string());
    }
    let (length_field, start) = match bytes.get(6) {
        Some(1) => (bytes.get(8..10).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize), 10),
        Some(2 | 3) => (bytes.get(8..12).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize), 12),
        other => return Err(format!("unsupported .npy format version {other:?}")),
    };
    let header_len = length_field.ok_or("truncated .npy header")?;
    let header = bytes.get(start..start + header_len).ok_or("truncated .npy header")?;
    let header = std::str::from_utf8(header).map_err(|_| ".npy header is not text")?;
    Ok((header, &bytes[start + header_len..]))
}

/// Parses one `.npy` file into (shape, data). Only C-order little-endian arrays of the supported dtypes are read.
pub fn parse_npy(bytes: &[u8]) -> Result<(Vec<usize>, ArrayData), String> {
    let (header_text, data) = split_npy(bytes)?;
    let header = parse_npy_header(header_text)?;
    let descr = header.descr.ok_or(".npy header has no 'descr'")?;
    let shape = header.shape.ok_or(".npy header has no 'shape'")?;
    if header.fortran_order.ok_or(".npy header has no 'fortran_order'")? {
        return Err("Fortran-order arrays are not supported; save with np.ascontiguousarray".to_string());
    }
    let element = npy_element_type(&descr)?;
    Ok((shape.clone(), decode_little_endian(element, &shape, data)?))
}

fn array_error(name: &str, message: impl Into<String>) -> DataError {
    DataError::new(format!("array '{name}'"), message)
}

fn missing_array(container: &str, name: &str, mut available: Vec<String>) -> DataError {
    available.sort();
    let listing = if available.is_empty() { "none".to_string() } else { available.join(", ") };
    DataError::file(format!("{container} has no array named '{name}' (found: {listing})"))
}

/// Reads the named arrays from an `.npz` archive (plain or compressed), in the order asked for.
pub fn read_npz(bytes: &[u8], names: &[&str]) -> Result<Vec<Array>, DataError> {
    let mut archive =
        zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| DataError::file(format!("not a readable npz (zip) archive: {e}")))?;
    let available: Vec<String> = archive.file_names().map(|file| file.strip_suffix(".npy").unwrap_or(file).to_string()).collect();
    let mut inflated = 0u64;
    names
        .iter()
        .map(|&name| {
            let member = archive.by_name(&format!("{name}.npy")).map_err(|_| missing_array("npz archive", name, available.clone()))?;
            // The declared size is checked before anything is read; the read itself is bounded too,
            // in case the declaration lies.
            if inflated.saturating_add(member.size()) > super::max_inflated_bytes() {
                return Err(super::too_inflated("the npz archive"));
            }
            let npy = super::read_inflated(member, inflated, &format!("array '{name}'"))?;
            inflated += npy.len() as u64;
            let (shape, data) = parse_npy(&npy).map_err(|message| array_error(name, message))?;
            Ok(Array { name: name.to_string(), shape, data })
        })
        .collect()
}

fn safetensors_element_type(dtype: Dtype) -> Result<ElementType, String> {
    match dtype {
        Dtype::F32 => Ok(ElementType::F32),
        Dtype::F64 => Ok(ElementType::F64),
        Dtype::I64 => Ok(ElementType::I64),
        Dtype::I32 => Ok(ElementType::I32),
        Dtype::U8 | Dtype::BOOL => Ok(ElementType::U8),
        other => Err(format!("unsupported dtype {other:?} (supported: F32, F64, I64, I32, U8, BOOL)")),
    }
}

/// Reads the named tensors from a `.safetensors` file, in the order asked for.
pub fn read_safetensors(bytes: &[u8], names: &[&str]) -> Result<Vec<Array>, DataError> {
    let tensors = SafeTensors::deserialize(bytes).map_err(|e| DataError::file(format!("not a readable safetensors file: {e}")))?;
    names
        .iter()
        .map(|&name| {
            let view = tensors
                .tensor(name)
                .map_err(|_| missing_array("safetensors file", name, tensors.names().into_iter().map(String::from).collect()))?;
            let element = safetensors_element_type(view.dtype()).map_err(|message| array_error(name, message))?;
            let data = decode_little_endian(element, view.shape(), view.data()).map_err(|m| array_error(name, m))?;
            Ok(Array { name: name.to_string(), shape: view.shape().to_vec(), data })
        })
        .collect()
}

/// Builds `.npy` bytes (format 1.0) for tests: header padded with spaces to a multiple of 64, as numpy does.
#[cfg(test)]
pub(crate) fn npy_bytes(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let shape_text = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_text}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = NPY_MAGIC.to_vec();
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// Builds an `.npz` archive for tests from (array name, .npy bytes) pairs.
#[cfg(test)]
pub(crate) fn npz_bytes(members: &[(&str, Vec<u8>)]) -> Vec<u8> {
    use std::io::Write;
    let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for (name, npy) in members {
        writer.start_file(format!("{name}.npy"), zip::write::SimpleFileOptions::default()).unwrap();
        writer.write_all(npy).unwrap();
    }
    writer.finish().unwrap().into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32_bytes(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn parses_npy_header_and_data() {
        let npy = npy_bytes("<f4", &[2, 2], &f32_bytes(&[1.0, 2.0, 3.5, -4.0]));
        assert_eq!(npy.len() % 64, 16, "header padded to 64 bytes before 16 data bytes");
        let (shape, data) = parse_npy(&npy).unwrap();
        assert_eq!(shape, vec![2, 2]);
        assert_eq!(data, ArrayData::F32(vec![1.0, 2.0, 3.5, -4.0]));
        let (shape, data) = parse_npy(&npy_bytes("<i8", &[2], &[5, 0, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255, 255, 255, 255, 255])).unwrap();
        assert_eq!((shape, data), (vec![2], ArrayData::I64(vec![5, -1])));
    }

    #[test]
    fn header_parser_accepts_numpy_spellings() {
        let header = parse_npy_header("{\"descr\": \"|u1\", \"shape\": (), \"fortran_order\": False}").unwrap();
        assert_eq!(header.shape, Some(vec![]));
        assert_eq!(header.descr.as_deref(), Some("|u1"));
        assert!(parse_npy_header("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,)}").unwrap_err().contains("structured"));
    }

    #[test]
    fn refuses_unsupported_npy() {
        let err = parse_npy(&npy_bytes("<f2", &[1], &[0, 0])).unwrap_err();
        assert_eq!(err, "unsupported dtype '<f2' (supported: <f4, <f8, <i8, <i4, |u1, |b1)");
        let mut fortran = npy_bytes("<f4", &[1], &f32_bytes(&[1.0]));
        let at = fortran.windows(5).position(|w| w == b"False").unwrap();
        fortran[at..at + 5].copy_from_slice(b"True ");
        assert!(parse_npy(&fortran).unwrap_err().contains("Fortran"));
        assert!(parse_npy(&npy_bytes("<f4", &[3], &f32_bytes(&[1.0]))).unwrap_err().contains("needs 12 bytes, found 4"));
        assert!(parse_npy(b"\x93NUMPY\x01\x00\xff").is_err());
        assert!(parse_npy(b"PK").is_err());
    }

    #[test]
    fn reads_named_arrays_from_npz() {
        let archive = npz_bytes(&[("labels", npy_bytes("|u1", &[3], &[1, 0, 1])), ("x", npy_bytes("<f4", &[0], &[]))]);
        let arrays = read_npz(&archive, &["labels"]).unwrap();
        assert_eq!(arrays[0].data, ArrayData::U8(vec![1, 0, 1]));
        let err = read_npz(&archive, &["inputs"]).unwrap_err();
        assert_eq!(err.to_string(), "file: npz archive has no array named 'inputs' (found: labels, x)");
        assert!(read_npz(b"PK\x03\x04junk", &["inputs"]).unwrap_err().to_string().contains("npz"));
    }

    #[test]
    fn reads_named_tensors_from_safetensors() {
        let values = f32_bytes(&[0.5, 1.5]);
        let halves = [0u8; 4];
        let file = safetensors::serialize(
            [
                ("inputs", safetensors::tensor::TensorView::new(Dtype::F32, vec![1, 2], &values).unwrap()),
                ("half", safetensors::tensor::TensorView::new(Dtype::F16, vec![2], &halves).unwrap()),
            ],
            None,
        )
        .unwrap();
        let arrays = read_safetensors(&file, &["inputs"]).unwrap();
        assert_eq!((arrays[0].shape.clone(), arrays[0].data.clone()), (vec![1, 2], ArrayData::F32(vec![0.5, 1.5])));
        let err = read_safetensors(&file, &["half"]).unwrap_err();
        assert!(err.to_string().starts_with("array 'half': unsupported dtype F16"), "{err}");
        let err = read_safetensors(&file, &["labels"]).unwrap_err();
        assert_eq!(err.to_string(), "file: safetensors file has no array named 'labels' (found: half, inputs)");
    }
}
