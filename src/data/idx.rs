//! MNIST IDX files (images and labels), raw or gzip-compressed: reading with strict size checks, and writing raw files.

use super::{gunzip_if_compressed, DataError, Format, ImageSet};

/// Magic of a 3-d unsigned-byte IDX array (count x height x width).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic of a 1-d unsigned-byte IDX array (count).
pub const LABELS_MAGIC: u32 = 0x0000_0801;

const IMAGES_HEADER_LEN: usize = 16;
const LABELS_HEADER_LEN: usize = 8;

/// Which IDX file the first four bytes announce, if any.
pub(crate) fn sniff_magic(bytes: &[u8]) -> Option<Format> {
    match read_u32_be(bytes, 0)? {
        IMAGES_MAGIC => Some(Format::IdxImages),
        LABELS_MAGIC => Some(Format::IdxLabels),
        _ => None,
    }
}

fn read_u32_be(bytes: &[u8], offset: usize) -> Option<u32> {
    let word = bytes.get(offset..offset + 4)?;
    Some(u32::from_be_bytes(word.try_into().ok()?))
}

/// Reads the big-endian header words after checking the magic, so later reads cannot run off the end.
fn read_header(bytes: &[u8], magic: u32, header_len: usize, what: &str) -> Result<Vec<usize>, DataError> {
    // The magic is checked first: a wrong file type is a more useful message than "too short".
    if let Some(found) = read_u32_be(bytes, 0).filter(|&found| found != magic) {
        return Err(DataError::file(format!("wrong magic number {found:#010x} (expected {magic:#010x} for IDX {what})")));
    }
    if bytes.len() < header_len {
        return Err(DataError::file(format!("truncated: IDX {what} header needs {header_len} bytes, found {}", bytes.len())));
    }
    Ok((4..header_len).step_by(4).filter_map(|offset| read_u32_be(bytes, offset)).map(|v| v as usize).collect())
}

/// The payload after the header, which must be exactly `expected` bytes.
fn payload(bytes: &[u8], header_len: usize, expected: usize, describe: impl Fn() -> String) -> Result<&[u8], DataError> {
    let found = bytes.len() - header_len;
    if found < expected {
        return Err(DataError::file(format!("truncated: header says {}, found {found}", describe())));
    }
    if found > expected {
        return Err(DataError::file(format!("{} unexpected bytes after {}", found - expected, describe())));
    }
    Ok(&bytes[header_len..])
}

/// Reads an IDX images file: (count, height, width, pixels row-major per image).
pub fn read_idx_images(bytes: &[u8]) -> Result<(usize, usize, usize, Vec<u8>), DataError> {
    let bytes = gunzip_if_compressed(bytes)?;
    let dims = read_header(&bytes, IMAGES_MAGIC, IMAGES_HEADER_LEN, "images")?;
    let (count, height, width) = (dims[0], dims[1], dims[2]);
    let expected = count
        .checked_mul(height)
        .and_then(|n| n.checked_mul(width))
        .ok_or_else(|| DataError::file(format!("header says {count} images of {height}x{width}, too large")))?;
    let describe = || format!("{count} images of {height}x{width} = {expected} bytes");
    let pixels = payload(&bytes, IMAGES_HEADER_LEN, expected, describe)?;
    Ok((count, height, width, pixels.to_vec()))
}

/// Reads an IDX labels file; every byte value is kept as a label.
pub fn read_idx_labels(bytes: &[u8]) -> Result<Vec<i64>, DataError> {
    let bytes = gunzip_if_compressed(bytes)?;
    let dims = read_header(&bytes, LABELS_MAGIC, LABELS_HEADER_LEN, "labels")?;
    let count = dims[0];
    let describe = || format!("{count} labels = {count} bytes");
    let labels = payload(&bytes, LABELS_HEADER_LEN, count, describe)?;
    Ok(labels.iter().map(|&b| i64::from(b)).collect())
}

/// Reads an images file and its labels file into one single-channel `ImageSet`.
pub fn load_idx_pair(images_bytes: &[u8], labels_bytes: &[u8]) -> Result<ImageSet, DataError> {
    let (count, height, width, pixels) = read_idx_images(images_bytes).map_err(|e| e.within("images"))?;
    let labels = read_idx_labels(labels_bytes).map_err(|e| e.within("labels"))?;
    if labels.len() != count {
        return Err(DataError::file(format!("{count} images but {} labels", labels.len())));
    }
    Ok(ImageSet { height, width, channels: 1, pixels, labels })
}

fn dim_as_u32(value: usize, what: &str) -> Result<[u8; 4], DataError> {
    u32::try_from(value).map(u32::to_be_bytes).map_err(|_| DataError::file(format!("{what} {value} does not fit an IDX header")))
}

/// Writes a raw (uncompressed) IDX images file from `count` images of `height` x `width` bytes.
pub fn write_idx_images(count: usize, height: usize, width: usize, pixels: &[u8]) -> Result<Vec<u8>, DataError> {
    let expected = count.checked_mul(height).and_then(|n| n.checked_mul(width));
    if expected != Some(pixels.len()) {
        return Err(DataError::file(format!("{} pixel bytes do not make {count} images of {height}x{width}", pixels.len())));
    }
    let mut out = Vec::with_capacity(IMAGES_HEADER_LEN + pixels.len());
    out.extend_from_slice(&IMAGES_MAGIC.to_be_bytes());
    out.extend_from_slice(&dim_as_u32(count, "image count")?);
    out.extend_from_slice(&dim_as_u32(height, "height")?);
    out.extend_from_slice(&dim_as_u32(width, "width")?);
    out.extend_from_slice(pixels);
    Ok(out)
}

/// Writes a raw (uncompressed) IDX labels file; labels must fit a byte.
pub fn write_idx_labels(labels: &[i64]) -> Result<Vec<u8>, DataError> {
    let mut out = Vec::with_capacity(LABELS_HEADER_LEN + labels.len());
    out.extend_from_slice(&LABELS_MAGIC.to_be_bytes());
    out.extend_from_slice(&dim_as_u32(labels.len(), "label count")?);
    for (index, &label) in labels.iter().enumerate() {
        let byte = u8::try_from(label).map_err(|_| DataError::at_record(index, format!("label {label} does not fit IDX's 0..=255")))?;
        out.push(byte);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::gzip;

    fn two_images() -> Vec<u8> {
        // Two 2x3 images whose pixel values are their flat index, so placement is checkable.
        write_idx_images(2, 2, 3, &(0..12).collect::<Vec<u8>>()).unwrap()
    }

    #[test]
    fn round_trips_images_and_labels() {
        let (count, height, width, pixels) = read_idx_images(&two_images()).unwrap();
        assert_eq!((count, height, width), (2, 2, 3));
        assert_eq!(pixels, (0..12).collect::<Vec<u8>>());
        assert_eq!(read_idx_labels(&write_idx_labels(&[7, 200]).unwrap()).unwrap(), vec![7, 200]);
    }

    #[test]
    fn header_bytes_are_big_endian() {
        let bytes = two_images();
        assert_eq!(&bytes[..8], &[0, 0, 8, 3, 0, 0, 0, 2]);
        assert_eq!(&bytes[8..16], &[0, 0, 0, 2, 0, 0, 0, 3]);
    }

    #[test]
    fn reads_gzipped_files_and_pairs_them() {
        let labels = write_idx_labels(&[3, 9]).unwrap();
        let set = load_idx_pair(&gzip(&two_images()), &gzip(&labels)).unwrap();
        assert_eq!((set.len(), set.height, set.width, set.channels), (2, 2, 3, 1));
        assert_eq!(set.image(1), &[6, 7, 8, 9, 10, 11]);
        assert_eq!(set.labels, vec![3, 9]);
    }

    #[test]
    fn rejects_wrong_magic() {
        let labels = write_idx_labels(&[1]).unwrap();
        let err = read_idx_images(&[labels.clone(), vec![0; 8]].concat()).unwrap_err();
        assert_eq!(err.to_string(), "file: wrong magic number 0x00000801 (expected 0x00000803 for IDX images)");
        let err = read_idx_labels(&two_images()).unwrap_err();
        assert!(err.to_string().contains("expected 0x00000801 for IDX labels"), "{err}");
    }

    #[test]
    fn rejects_truncated_and_padded_files() {
        let mut bytes = two_images();
        bytes.truncate(IMAGES_HEADER_LEN + 5);
        let err = read_idx_images(&bytes).unwrap_err();
        assert_eq!(err.to_string(), "file: truncated: header says 2 images of 2x3 = 12 bytes, found 5");
        let err = read_idx_images(&bytes[..10]).unwrap_err();
        assert!(err.to_string().contains("header needs 16 bytes, found 10"), "{err}");
        let mut padded = write_idx_labels(&[1, 2]).unwrap();
        padded.push(0);
        assert!(read_idx_labels(&padded).unwrap_err().to_string().contains("1 unexpected bytes"));
    }

    #[test]
    fn rejects_count_mismatch_and_bad_gzip() {
        let labels = write_idx_labels(&[1, 2, 3]).unwrap();
        let err = load_idx_pair(&two_images(), &labels).unwrap_err();
        assert_eq!(err.to_string(), "file: 2 images but 3 labels");
        let err = read_idx_labels(&[0x1f, 0x8b, 0, 0]).unwrap_err();
        assert!(err.to_string().contains("corrupt gzip"), "{err}");
    }

    #[test]
    fn writer_refuses_inconsistent_input() {
        assert!(write_idx_images(2, 2, 2, &[0; 7]).is_err());
        let err = write_idx_labels(&[1, 256]).unwrap_err();
        assert_eq!(err.to_string(), "record 2: label 256 does not fit IDX's 0..=255");
    }
}
