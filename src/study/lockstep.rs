//! What every MNIST study shares: batches and dropout masks drawn once by the harness
//! and handed to every backend, and backends instantiated from the same parameters.

pub use crate::backends::BackendOptions;
use crate::backends::{Backend, BackendKind, Batch, ModelRunner};
use crate::data::{dropout_mask, Split};
use crate::dtype::DType;
use crate::error::Result;
use crate::host::HostTensor;
use crate::models::mnist::{ModelSpec, ParamSet, IMAGE_SIDE};

/// The batch of `indices` from `split`, normalised, as `[n, 1, 28, 28]`.
pub fn make_batch(split: &Split, indices: &[usize]) -> Batch {
    let (pixels, labels) = split.normalized_batch(indices);
    Batch { images: HostTensor { shape: vec![indices.len(), 1, IMAGE_SIDE, IMAGE_SIDE], data: pixels }, labels }
}

/// The dropout masks of one training step, one per site in site order.
pub fn step_masks(spec: &ModelSpec, n: usize, seed: u64, step: usize) -> Vec<HostTensor> {
    let mut sites = spec.dropout_shapes(n);
    sites.sort_by_key(|s| s.0);
    sites
        .into_iter()
        .map(|(site, p, shape)| {
            let len = shape.iter().product();
            HostTensor { data: dropout_mask(len, p, seed, step, site), shape }
        })
        .collect()
}

/// The backend `kind`, configured by `opts`.
pub fn backend(kind: BackendKind, opts: &BackendOptions) -> Result<Box<dyn Backend>> {
    kind.create_with(opts)
}

/// `spec` instantiated in `kind` from `params` rounded to `dtype`.
pub fn instantiate(kind: BackendKind, opts: &BackendOptions, spec: &ModelSpec, params: &ParamSet, dtype: DType) -> Result<Box<dyn ModelRunner>> {
    backend(kind, opts)?.model(spec, &params.rounded(dtype), dtype)
}
