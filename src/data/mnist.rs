//! MNIST and Fashion-MNIST: the four IDX files of a dataset, verified and paired.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::idx::{self, Images};
use super::normalize;
use super::sums::Sums;
use crate::error::{Error, Result};

/// Base names of the four files, as both the original MNIST site and the Debian
/// `dataset-fashion-mnist` package name them (the package ships the `.gz` files in
/// `/usr/share/datasets/fashion-mnist`).
pub const TRAIN_IMAGES: &str = "train-images-idx3-ubyte";
pub const TRAIN_LABELS: &str = "train-labels-idx1-ubyte";
pub const TEST_IMAGES: &str = "t10k-images-idx3-ubyte";
pub const TEST_LABELS: &str = "t10k-labels-idx1-ubyte";
/// Checksum list verified when present in the data directory.
pub const SUMS_FILE: &str = "SHA256SUMS";
/// The models take 28x28 single-channel images; other shapes are rejected at load.
pub const SIDE: usize = 28;
pub const FASHION_DIR: &str = "/usr/share/datasets/fashion-mnist";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DatasetKind {
    Mnist,
    Fashion,
}

impl DatasetKind {
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Mnist => "mnist",
            DatasetKind::Fashion => "fashion",
        }
    }

    /// What to do when files are missing, appended to the error message.
    fn install_hint(self) -> &'static str {
        match self {
            DatasetKind::Mnist => {
                "the project ships MNIST in data/mnist (with SHA256SUMS); pass --data-dir to use another copy"
            }
            DatasetKind::Fashion => {
                "install it with `apt-get install dataset-fashion-mnist` (files go to /usr/share/datasets/fashion-mnist) or pass --data-dir"
            }
        }
    }
}

impl fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DatasetKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "mnist" => Ok(DatasetKind::Mnist),
            "fashion" => Ok(DatasetKind::Fashion),
            _ => Err(Error::Invalid(format!("unknown dataset '{s}'; expected 'mnist' or 'fashion'"))),
        }
    }
}

/// Where the data lives unless `--data-dir` says otherwise. The shipped MNIST is looked up
/// at run time (see [`crate::paths`]), so an installed binary finds it too.
pub fn default_dir(kind: DatasetKind) -> PathBuf {
    match kind {
        DatasetKind::Mnist => crate::paths::find_or_relative("data/mnist"),
        DatasetKind::Fashion => PathBuf::from(FASHION_DIR),
    }
}

#[derive(Clone, Debug)]
pub struct Dataset {
    pub train: Split,
    pub test: Split,
}

/// One split: `images` holds `n*rows*cols` bytes row-major, `labels` `n` classes 0..=9.
#[derive(Clone, Debug)]
pub struct Split {
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
    pub n: usize,
    pub rows: usize,
    pub cols: usize,
}

impl Split {
    /// Keep only the first `n` examples (file order); no-op if there are fewer.
    pub fn limit(&mut self, n: usize) {
        self.n = self.n.min(n);
        self.images.truncate(self.n * self.rows * self.cols);
        self.labels.truncate(self.n);
    }

    /// Pixels of one example.
    pub fn image(&self, i: usize) -> &[u8] {
        let len = self.rows * self.cols;
        &self.images[i * len..(i + 1) * len]
    }

    /// The examples at `indices`, normalised (see [`super::normalize`]): pixels of
    /// layout `[b, 1, rows, cols]` as f32-normalised values widened to f64, and labels.
    ///
    /// # Panics
    /// If an index is `>= n` (indices come from the harness, not from a file).
    pub fn normalized_batch(&self, indices: &[usize]) -> (Vec<f64>, Vec<usize>) {
        let table = normalize::table();
        let mut pixels = Vec::with_capacity(indices.len() * self.rows * self.cols);
        for &i in indices {
            assert!(i < self.n, "example index {i} out of range for a split of {}", self.n);
            pixels.extend(self.image(i).iter().map(|&p| table[p as usize]));
        }
        let labels = indices.iter().map(|&i| self.labels[i] as usize).collect();
        (pixels, labels)
    }
}

impl Dataset {
    /// Keep only the first `n` training examples (for quick runs).
    pub fn limit_train(&mut self, n: usize) {
        self.train.limit(n);
    }
}

/// Load the four files of `kind` from `dir`. Each is looked up as `NAME.gz`, then `NAME`
/// (uncompressed). If `dir/SHA256SUMS` exists (the project ships one for MNIST) every
/// file is verified against it before anything is decoded.
pub fn load(kind: DatasetKind, dir: &Path) -> Result<Dataset> {
    if !dir.is_dir() {
        return Err(Error::file(
            dir,
            format!("{kind} data directory not found; expected the four IDX files ({TRAIN_IMAGES}.gz, ...) here; {}", kind.install_hint()),
        ));
    }
    let read = |name: &str| -> Result<(PathBuf, Vec<u8>)> {
        let path = locate(kind, dir, name)?;
        let bytes = idx::read_bytes(&path)?;
        Ok((path, bytes))
    };
    let files = [read(TRAIN_IMAGES)?, read(TRAIN_LABELS)?, read(TEST_IMAGES)?, read(TEST_LABELS)?];
    let sums_path = dir.join(SUMS_FILE);
    if sums_path.is_file() {
        let sums = Sums::read(&sums_path)?;
        for (path, bytes) in &files {
            sums.verify(&sums_path, path, bytes)?;
        }
    }
    let [train_images, train_labels, test_images, test_labels] = files;
    let dataset = Dataset { train: split(train_images, train_labels)?, test: split(test_images, test_labels)? };
    check_identity(kind, dir, &dataset.train)?;
    Ok(dataset)
}

/// The first ten training labels of each dataset as published: enough to tell the two
/// apart when a folder holds the other one (same file names, same format).
const FIRST_LABELS: [(DatasetKind, [u8; 10]); 2] =
    [(DatasetKind::Mnist, [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]), (DatasetKind::Fashion, [9, 0, 0, 3, 0, 2, 7, 2, 5, 5])];

/// Refuses a folder that holds the other dataset (`--dataset fashion --data-dir data/mnist`).
fn check_identity(kind: DatasetKind, dir: &Path, train: &Split) -> Result<()> {
    let first = train.labels.get(..10);
    for (other, labels) in FIRST_LABELS {
        if other != kind && train.n == 60_000 && first == Some(&labels[..]) {
            return Err(Error::file(dir, format!("holds {other}, not {kind} (its first training labels are {other}'s); pass the {kind} folder with --data-dir or use --dataset {other}")));
        }
    }
    Ok(())
}

/// Decode an (images, labels) pair of (path, raw bytes) into a split.
fn split((image_path, image_bytes): (PathBuf, Vec<u8>), (label_path, label_bytes): (PathBuf, Vec<u8>)) -> Result<Split> {
    let images = idx::parse_images(&image_path, &idx::decompress(&image_path, &image_bytes)?)?;
    let labels = idx::parse_labels(&label_path, &idx::decompress(&label_path, &label_bytes)?)?;
    pair(&image_path, images, &label_path, labels)
}

/// `dir/NAME.gz`, else `dir/NAME`; the error names the `.gz` path, the usual one.
fn locate(kind: DatasetKind, dir: &Path, name: &str) -> Result<PathBuf> {
    let gz = dir.join(format!("{name}.gz"));
    let plain = dir.join(name);
    if gz.is_file() {
        Ok(gz)
    } else if plain.is_file() {
        Ok(plain)
    } else {
        Err(Error::file(
            gz,
            format!("{kind} file missing: neither {name}.gz nor {name} is in {}; {}", dir.display(), kind.install_hint()),
        ))
    }
}

/// Join an image file with its label file, which must hold the same number of entries.
fn pair(image_path: &Path, images: Images, label_path: &Path, labels: Vec<u8>) -> Result<Split> {
    if (images.rows, images.cols) != (SIDE, SIDE) {
        return Err(Error::file(
            image_path,
            format!("images are {}x{}; expected {SIDE}x{SIDE} (the models take MNIST-shaped input)", images.rows, images.cols),
        ));
    }
    if labels.len() != images.n {
        return Err(Error::file(
            label_path,
            format!(
                "count mismatch: {} labels, but {} holds {} images; expected one label per image",
                labels.len(),
                image_path.display(),
                images.n
            ),
        ));
    }
    Ok(Split { images: images.pixels, labels, n: images.n, rows: images.rows, cols: images.cols })
}
