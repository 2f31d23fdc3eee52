//! The data the models train on, and every random choice made about it.
//!
//! - [`idx`]: IDX file decoding (gzip or not), strict about every byte.
//! - [`mnist`]: MNIST / Fashion-MNIST loading, SHA-256 verification, batches of
//!   normalised pixels.
//! - [`normalize`]: the f32 `ToTensor` + `Normalize` pipeline of the seed study.
//! - [`batches`]: seeded epoch shuffles and batching.
//! - [`masks`]: dropout masks, drawn once by the harness and shared by every backend.
//! - [`seed`]: how (seed, epoch, step, site) become SplitMix64 streams (the rule a
//!   Python reference must reproduce).

pub mod batches;
pub mod idx;
pub mod masks;
pub mod mnist;
pub mod normalize;
pub mod seed;
pub mod sums;

pub use batches::{batch_count, batches, epoch_order, file_order};
pub use masks::dropout_mask;
pub use mnist::{default_dir, load, Dataset, DatasetKind, Split};
pub use normalize::{normalize_pixel, MEAN, STD};
