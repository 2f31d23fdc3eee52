//! The data layer: the shipped MNIST loads and verifies, every kind of bad file is
//! rejected with a message naming the file and the problem, and the seeded shuffles and
//! masks behave.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use backprop_parity::data::{self, idx, mnist, Dataset, DatasetKind};
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use sha2::{Digest, Sha256};

/// The shipped MNIST, loaded once per test binary.
fn shipped() -> &'static Dataset {
    static DATA: OnceLock<Dataset> = OnceLock::new();
    DATA.get_or_init(|| {
        let dir = data::default_dir(DatasetKind::Mnist);
        data::load(DatasetKind::Mnist, &dir).unwrap_or_else(|e| panic!("shipped MNIST must load: {e}"))
    })
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let unique = format!(
            "backprop-parity-data-{name}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(unique);
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    GzDecoder::new(bytes).read_to_end(&mut out).unwrap();
    out
}

/// IDX image bytes whose header claims `claimed` images but which hold `n` (varied pixels).
fn images_idx(claimed: u32, n: usize) -> Vec<u8> {
    let mut v = Vec::new();
    for x in [idx::IMAGES_MAGIC, claimed, 28, 28] {
        v.extend(x.to_be_bytes());
    }
    v.extend((0..n * 784).map(|i| (i * 7 % 256) as u8));
    v
}

fn labels_idx(labels: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend(idx::LABELS_MAGIC.to_be_bytes());
    v.extend((labels.len() as u32).to_be_bytes());
    v.extend(labels);
    v
}

/// A small valid dataset in `dir`: 6 training and 5 test examples, gzip-compressed.
fn write_synthetic(dir: &TempDir) {
    let files = [
        ("train-images-idx3-ubyte.gz", images_idx(6, 6)),
        ("train-labels-idx1-ubyte.gz", labels_idx(&[5, 0, 4, 1, 9, 2])),
        ("t10k-images-idx3-ubyte.gz", images_idx(5, 5)),
        ("t10k-labels-idx1-ubyte.gz", labels_idx(&[7, 2, 1, 0, 4])),
    ];
    for (name, content) in files {
        std::fs::write(dir.join(name), gzip(&content)).unwrap();
    }
}

/// Load from `dir` and return the error message, which must exist.
fn load_error(kind: DatasetKind, dir: &Path) -> String {
    match data::load(kind, dir) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn assert_mentions(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(message.contains(part), "error message should mention '{part}': {message}");
    }
}

#[test]
fn shipped_mnist_loads_with_the_known_shape_and_labels() {
    let d = shipped();
    assert_eq!((d.train.n, d.train.rows, d.train.cols), (60000, 28, 28));
    assert_eq!((d.test.n, d.test.rows, d.test.cols), (10000, 28, 28));
    assert_eq!(d.train.images.len(), 60000 * 784);
    assert_eq!(d.test.labels.len(), 10000);
    assert_eq!(d.train.labels[0], 5, "the first MNIST training digit is a 5");
    assert_eq!(d.test.labels[0], 7, "the first MNIST test digit is a 7");
    let mut histogram = [0usize; 10];
    for &l in &d.test.labels {
        histogram[l as usize] += 1;
    }
    assert_eq!(histogram.iter().sum::<usize>(), 10000);
    assert!(histogram.iter().all(|&c| c > 800), "every class is well represented: {histogram:?}");
}

#[test]
fn shipped_checksums_are_present_and_match() {
    let dir = data::default_dir(DatasetKind::Mnist);
    let sums_path = dir.join(mnist::SUMS_FILE);
    let sums = data::sums::Sums::read(&sums_path).unwrap();
    for name in ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"] {
        let path = dir.join(name);
        sums.verify(&sums_path, &path, &std::fs::read(&path).unwrap()).unwrap();
    }
}

#[test]
fn synthetic_dataset_loads_and_limits() {
    let dir = TempDir::new("synthetic");
    write_synthetic(&dir);
    let mut d = data::load(DatasetKind::Mnist, &dir.0).unwrap();
    assert_eq!((d.train.n, d.test.n), (6, 5));
    d.limit_train(4);
    assert_eq!((d.train.n, d.train.images.len(), d.train.labels.len()), (4, 4 * 784, 4));
    d.limit_train(100);
    assert_eq!(d.train.n, 4, "limit never grows a split");
}

#[test]
fn uncompressed_files_are_accepted() {
    let dir = TempDir::new("plain");
    write_synthetic(&dir);
    let gz = dir.join("t10k-images-idx3-ubyte.gz");
    std::fs::write(dir.join("t10k-images-idx3-ubyte"), gunzip(&std::fs::read(&gz).unwrap())).unwrap();
    std::fs::remove_file(gz).unwrap();
    let d = data::load(DatasetKind::Fashion, &dir.0).unwrap();
    assert_eq!(d.test.n, 5);
}

#[test]
fn missing_file_is_named() {
    let dir = TempDir::new("missing");
    write_synthetic(&dir);
    std::fs::remove_file(dir.join("t10k-labels-idx1-ubyte.gz")).unwrap();
    let msg = load_error(DatasetKind::Mnist, &dir.0);
    assert_mentions(&msg, &["t10k-labels-idx1-ubyte.gz", "missing", "--data-dir"]);
    let msg = load_error(DatasetKind::Fashion, &dir.0);
    assert_mentions(&msg, &["t10k-labels-idx1-ubyte", "missing", "apt-get install dataset-fashion-mnist", "--data-dir"]);
}

#[test]
fn missing_fashion_directory_says_how_to_install() {
    let dir = TempDir::new("nodir");
    let absent = dir.join("fashion-mnist");
    let msg = load_error(DatasetKind::Fashion, &absent);
    assert_mentions(&msg, &["fashion-mnist", "not found", "apt-get install dataset-fashion-mnist", "--data-dir"]);
}

#[test]
fn corrupted_gzip_is_rejected() {
    let dir = TempDir::new("corrupt");
    let path = dir.join("t10k-labels-idx1-ubyte.gz");
    let mut bytes = std::fs::read(data::default_dir(DatasetKind::Mnist).join("t10k-labels-idx1-ubyte.gz")).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 16] {
        *b ^= 0xff;
    }
    std::fs::write(&path, bytes).unwrap();
    let msg = idx::read_labels(&path).unwrap_err().to_string();
    assert_mentions(&msg, &["t10k-labels-idx1-ubyte.gz", "corrupt", "gzip"]);
}

#[test]
fn gz_name_without_gzip_content_is_rejected() {
    let dir = TempDir::new("notgzip");
    write_synthetic(&dir);
    std::fs::write(dir.join("train-labels-idx1-ubyte.gz"), labels_idx(&[1, 2, 3, 4, 5, 6])).unwrap();
    let msg = load_error(DatasetKind::Mnist, &dir.0);
    assert_mentions(&msg, &["train-labels-idx1-ubyte.gz", "not a gzip file", "1f 8b"]);
}

#[test]
fn truncated_file_is_rejected() {
    let dir = TempDir::new("truncated");
    write_synthetic(&dir);
    // The header promises 5 images; only 3 are there.
    std::fs::write(dir.join("t10k-images-idx3-ubyte.gz"), gzip(&images_idx(5, 3))).unwrap();
    let msg = load_error(DatasetKind::Mnist, &dir.0);
    assert_mentions(&msg, &["t10k-images-idx3-ubyte.gz", "truncated", "5 images"]);
}

#[test]
fn trailing_bytes_are_rejected() {
    let dir = TempDir::new("trailing");
    write_synthetic(&dir);
    let mut labels = labels_idx(&[7, 2, 1, 0, 4]);
    labels.extend([0, 0, 0]);
    std::fs::write(dir.join("t10k-labels-idx1-ubyte.gz"), gzip(&labels)).unwrap();
    let msg = load_error(DatasetKind::Mnist, &dir.0);
    assert_mentions(&msg, &["t10k-labels-idx1-ubyte.gz", "3 unexpected trailing bytes"]);
}

#[test]
fn wrong_magic_is_rejected() {
    let dir = TempDir::new("magic");
    write_synthetic(&dir);
    // A label file where the training images should be.
    std::fs::write(dir.join("train-images-idx3-ubyte.gz"), gzip(&labels_idx(&[1, 2, 3]))).unwrap();
    let msg = load_error(DatasetKind::Mnist, &dir.0);
    assert_mentions(&msg, &["train-images-idx3-ubyte.gz", "magic", "expected 0x00000803", "found 0x00000801"]);
}

#[test]
fn label_out_of_range_is_rejected() {
    let dir = TempDir::new("label");
    write_synthetic(&dir);
    std::fs::write(dir.join("train-labels-idx1-ubyte.gz"), gzip(&labels_idx(&[5, 0, 4, 12, 9, 2]))).unwrap();
    let msg = load_error(DatasetKind::Mnist, &dir.0);
    assert_mentions(&msg, &["train-labels-idx1-ubyte.gz", "label 12 at index 3", "0..=9"]);
}

#[test]
fn image_label_count_mismatch_is_rejected() {
    let dir = TempDir::new("count");
    write_synthetic(&dir);
    std::fs::write(dir.join("t10k-labels-idx1-ubyte.gz"), gzip(&labels_idx(&[7, 2, 1, 0]))).unwrap();
    let msg = load_error(DatasetKind::Mnist, &dir.0);
    assert_mentions(&msg, &["t10k-labels-idx1-ubyte.gz", "count mismatch", "4 labels", "5 images"]);
}

#[test]
fn sha256_mismatch_is_rejected() {
    let dir = TempDir::new("sha");
    let shipped_dir = data::default_dir(DatasetKind::Mnist);
    for name in ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "SHA256SUMS"] {
        std::fs::copy(shipped_dir.join(name), dir.join(name)).unwrap();
    }
    // One pixel changed, re-gzipped: still a valid file, but not the shipped one.
    let target = dir.join("t10k-images-idx3-ubyte.gz");
    let mut raw = gunzip(&std::fs::read(&target).unwrap());
    raw[16 + 400] ^= 0x01;
    let altered = gzip(&raw);
    std::fs::write(&target, &altered).unwrap();
    let actual: String = Sha256::digest(&altered).iter().map(|b| format!("{b:02x}")).collect();
    let expected = "1a1a05eab793c14bb050b398624a11b0ffd1a2953baed553b1b9bd079e2a20be";
    let msg = load_error(DatasetKind::Mnist, &dir.0);
    assert_mentions(&msg, &["t10k-images-idx3-ubyte.gz", "SHA-256 mismatch", expected, &actual]);
}

#[test]
fn fashion_mnist_loads_when_installed() {
    let dir = data::default_dir(DatasetKind::Fashion);
    if !dir.is_dir() {
        eprintln!("skipped: {} not present (apt-get install dataset-fashion-mnist)", dir.display());
        return;
    }
    let d = data::load(DatasetKind::Fashion, &dir).unwrap();
    assert_eq!((d.train.n, d.test.n, d.train.rows, d.train.cols), (60000, 10000, 28, 28));
}

#[test]
fn dataset_kind_parses_and_displays() {
    for kind in [DatasetKind::Mnist, DatasetKind::Fashion] {
        assert_eq!(kind.to_string().parse::<DatasetKind>().unwrap(), kind);
    }
    let msg = "kmnist".parse::<DatasetKind>().unwrap_err().to_string();
    assert_mentions(&msg, &["kmnist", "'mnist' or 'fashion'"]);
}

#[test]
fn epoch_order_is_a_seeded_permutation() {
    let n = 1000;
    let a = data::epoch_order(n, 42, 0);
    let mut sorted = a.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..n).collect::<Vec<_>>(), "a permutation of 0..n");
    assert_eq!(a, data::epoch_order(n, 42, 0), "same (seed, epoch), same order");
    assert_ne!(a, data::epoch_order(n, 42, 1), "epochs differ");
    assert_ne!(a, data::epoch_order(n, 43, 0), "seeds differ");
    assert_ne!(a, (0..n).collect::<Vec<_>>(), "actually shuffled");
}

#[test]
fn batches_keep_the_last_partial_batch() {
    let order = data::epoch_order(10, 1, 0);
    let got: Vec<&[usize]> = data::batches(&order, 4).collect();
    assert_eq!(got.iter().map(|b| b.len()).collect::<Vec<_>>(), vec![4, 4, 2]);
    assert_eq!(got.concat(), order);
}

#[test]
fn normalisation_is_torchvision_f32() {
    let zero = ((0.0f32 - 0.1307f32) / 0.3081f32) as f64;
    assert_eq!(data::normalize_pixel(0) as f64, zero);
    assert_eq!((data::MEAN, data::STD), (0.1307, 0.3081));
    let d = shipped();
    // Pixel 0 of the first image is background (0).
    assert_eq!(d.train.images[0], 0);
    let (pixels, labels) = d.train.normalized_batch(&[3, 0]);
    assert_eq!(pixels.len(), 2 * 784);
    assert_eq!(labels, vec![d.train.labels[3] as usize, 5]);
    assert_eq!(pixels[784], zero, "layout [b, 1, 28, 28]: example 0 starts at 784");
    for (k, &p) in d.train.image(3).iter().enumerate() {
        assert_eq!(pixels[k], ((p as f32 / 255.0 - 0.1307) / 0.3081) as f64);
    }
}

#[test]
fn dropout_masks_have_the_right_density() {
    assert!(data::dropout_mask(1000, 0.0, 9, 3, 1).iter().all(|&m| m == 1.0));
    let p = 0.3;
    let mut kept = 0.0;
    let mut total = 0.0;
    for step in 0..20 {
        let mask = data::dropout_mask(5000, p, 9, step, 0);
        assert!(mask.iter().all(|&m| m == 0.0 || m == 1.0));
        kept += mask.iter().sum::<f64>();
        total += mask.len() as f64;
    }
    let density = kept / total;
    assert!((density - (1.0 - p)).abs() < 0.01, "kept fraction {density}, expected ~{}", 1.0 - p);
    assert_eq!(data::dropout_mask(64, p, 9, 0, 0), data::dropout_mask(64, p, 9, 0, 0));
}

#[test]
fn streams_match_the_documented_rule() {
    // Computed by an independent Python implementation of the rule in `data::seed`
    // (SplitMix64 chained over (domain, seed, ...), multiply-shift Fisher–Yates, u >= p):
    // if these change, every recorded run's batches and masks change with them.
    assert_eq!(data::epoch_order(10, 42, 0), vec![4, 7, 1, 5, 2, 6, 8, 0, 3, 9]);
    assert_eq!(data::epoch_order(10, 42, 1), vec![9, 6, 0, 5, 7, 3, 2, 8, 1, 4]);
    let mask = data::dropout_mask(12, 0.5, 7, 3, 1);
    assert_eq!(mask, vec![1., 1., 0., 1., 1., 0., 0., 0., 1., 1., 0., 1.]);
}
