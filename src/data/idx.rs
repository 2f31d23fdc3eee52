//! IDX files (the MNIST container format), optionally gzip-compressed.
//!
//! Layout, all integers big-endian u32:
//! - images: magic `0x00000803`, count, rows, cols, then `count*rows*cols` bytes;
//! - labels: magic `0x00000801`, count, then `count` bytes, each 0..=9.
//!
//! Every check fails with [`Error::File`] naming the file and what was expected: the
//! data decides what every backend trains on, so nothing is guessed or skipped.

use std::io::Read;
use std::path::Path;

use flate2::read::MultiGzDecoder;

use crate::error::{Error, Result};

pub const IMAGES_MAGIC: u32 = 0x0000_0803;
pub const LABELS_MAGIC: u32 = 0x0000_0801;
const IMAGES_HEADER: usize = 16;
const LABELS_HEADER: usize = 8;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// A decoded image file: `pixels` holds `n*rows*cols` bytes, row-major, image after image.
#[derive(Clone, Debug)]
pub struct Images {
    pub n: usize,
    pub rows: usize,
    pub cols: usize,
    pub pixels: Vec<u8>,
}

/// Read the raw bytes of a file; a missing file gets its own message rather than the
/// bare OS error, because it is the most common mistake.
pub fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::file(path, "file not found; expected an IDX file (gzip-compressed or not)")
        } else {
            Error::io(path, e)
        }
    })
}

/// Undo gzip if the bytes are gzip. The decision is made on the gzip magic, not on the
/// name, so an uncompressed copy works too; but a `.gz` name with other content is an
/// error, since that means a damaged or mislabelled file.
pub fn decompress(path: &Path, bytes: &[u8]) -> Result<Vec<u8>> {
    if bytes.starts_with(&GZIP_MAGIC) {
        let mut out = Vec::new();
        // MultiGzDecoder follows the gzip spec (several members are one stream) and so
        // rejects garbage after the last member instead of silently ignoring it.
        MultiGzDecoder::new(bytes).read_to_end(&mut out).map_err(|e| {
            Error::file(
                path,
                format!("corrupt or truncated gzip data ({e}); expected a valid gzip stream, re-copy the file"),
            )
        })?;
        Ok(out)
    } else if path.extension().is_some_and(|x| x == "gz") {
        Err(Error::file(
            path,
            format!(
                "not a gzip file: starts with {:02x?}, expected the gzip magic 1f 8b",
                &bytes[..bytes.len().min(2)]
            ),
        ))
    } else {
        Ok(bytes.to_vec())
    }
}

pub fn read_images(path: &Path) -> Result<Images> {
    parse_images(path, &decompress(path, &read_bytes(path)?)?)
}

pub fn read_labels(path: &Path) -> Result<Vec<u8>> {
    parse_labels(path, &decompress(path, &read_bytes(path)?)?)
}

/// Parse decompressed image-file bytes; `path` is only used in messages.
pub fn parse_images(path: &Path, data: &[u8]) -> Result<Images> {
    check_magic(path, data, IMAGES_MAGIC)?;
    let header = header(path, data, IMAGES_HEADER, "image")?;
    let (n, rows, cols) = (header[1], header[2], header[3]);
    // Checked: a damaged header can claim more bytes than usize holds.
    let body = rows.checked_mul(cols).and_then(|p| p.checked_mul(n));
    let Some(body) = body else {
        return Err(Error::file(path, format!("header promises {n} images of {rows}x{cols}, too large to hold")));
    };
    let pixels = body_of(path, data, IMAGES_HEADER, body, &format!("{n} images of {rows}x{cols}"))?;
    Ok(Images { n, rows, cols, pixels: pixels.to_vec() })
}

/// Parse decompressed label-file bytes; every label must be a digit class 0..=9.
pub fn parse_labels(path: &Path, data: &[u8]) -> Result<Vec<u8>> {
    check_magic(path, data, LABELS_MAGIC)?;
    let n = header(path, data, LABELS_HEADER, "label")?[1];
    let labels = body_of(path, data, LABELS_HEADER, n, &format!("{n} labels"))?;
    if let Some((i, v)) = labels.iter().enumerate().find(|(_, &v)| v > 9) {
        return Err(Error::file(path, format!("label {v} at index {i} is out of range; expected 0..=9")));
    }
    Ok(labels.to_vec())
}

fn kind_of(magic: u32) -> &'static str {
    match magic {
        IMAGES_MAGIC => " (an IDX image file)",
        LABELS_MAGIC => " (an IDX label file)",
        _ => "",
    }
}

fn check_magic(path: &Path, data: &[u8], expected: u32) -> Result<()> {
    let Some(head) = data.get(..4) else {
        return Err(Error::file(path, format!("truncated: {} bytes, expected at least a 4-byte IDX magic number", data.len())));
    };
    let found = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    if found != expected {
        return Err(Error::file(
            path,
            format!(
                "wrong IDX magic number: expected 0x{expected:08x}{}, found 0x{found:08x}{}",
                kind_of(expected),
                kind_of(found)
            ),
        ));
    }
    Ok(())
}

/// The header's big-endian u32 fields (magic first), as usize.
fn header(path: &Path, data: &[u8], len: usize, what: &str) -> Result<Vec<usize>> {
    let Some(head) = data.get(..len) else {
        return Err(Error::file(
            path,
            format!("truncated: {} bytes, expected a {len}-byte IDX {what} header", data.len()),
        ));
    };
    Ok(head.chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize).collect())
}

/// The `body` bytes after the header, which must be exactly what is left.
fn body_of<'a>(
    path: &Path,
    data: &'a [u8],
    header: usize,
    body: usize,
    promised: &str,
) -> Result<&'a [u8]> {
    let rest = &data[header..];
    if rest.len() < body {
        return Err(Error::file(
            path,
            format!(
                "truncated: the header promises {promised} ({body} bytes after the header), but only {} bytes follow",
                rest.len()
            ),
        ));
    }
    if rest.len() > body {
        return Err(Error::file(
            path,
            format!(
                "{} unexpected trailing bytes: the header promises {promised} ({body} bytes after the header), found {}",
                rest.len() - body,
                rest.len()
            ),
        ));
    }
    Ok(rest)
}
