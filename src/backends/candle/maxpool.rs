//! A correct 2-D max-pool for candle (`--candle-maxpool exact`).
//!
//! candle-core 0.11.1's own `max_pool2d` backward scales the gradient by the number of
//! tied maxima divided by the kernel area, so a unique maximum in a 2×2 window receives a
//! quarter of its gradient. This custom op keeps candle's forward and routes each
//! window's whole gradient to its first maximum in row-major order, PyTorch's rule.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

pub struct ExactMaxPool2d {
    pub kernel: usize,
}

/// For each output position, the flat input index of its window's first maximum.
fn argmax_indices(x: &[f64], dims: &[usize], k: usize) -> Vec<usize> {
    let (n, c, h, w) = (dims[0], dims[1], dims[2], dims[3]);
    let (oh, ow) = (h / k, w / k);
    let mut idx = Vec::with_capacity(n * c * oh * ow);
    for plane in 0..n * c {
        let base = plane * h * w;
        for i in 0..oh {
            for j in 0..ow {
                let mut best = base + i * k * w + j * k;
                for di in 0..k {
                    for dj in 0..k {
                        let p = base + (i * k + di) * w + j * k + dj;
                        if x[p] > x[best] || x[p].is_nan() && !x[best].is_nan() {
                            best = p;
                        }
                    }
                }
                idx.push(best);
            }
        }
    }
    idx
}

impl CustomOp1 for ExactMaxPool2d {
    fn name(&self) -> &'static str {
        "exact-max-pool2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = layout.shape().dims().to_vec();
        if dims.len() != 4 {
            candle_core::bail!("exact-max-pool2d expects [N, C, H, W], got {dims:?}");
        }
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("exact-max-pool2d expects a contiguous input");
        };
        let k = self.kernel;
        let out_shape = Shape::from(vec![dims[0], dims[1], dims[2] / k, dims[3] / k]);
        let out = match storage {
            CpuStorage::F32(v) => {
                let x: Vec<f64> = v[start..end].iter().map(|&a| a as f64).collect();
                CpuStorage::F32(argmax_indices(&x, &dims, k).into_iter().map(|i| v[start + i]).collect())
            }
            CpuStorage::F64(v) => {
                let x = &v[start..end];
                CpuStorage::F64(argmax_indices(x, &dims, k).into_iter().map(|i| x[i]).collect())
            }
            other => candle_core::bail!("exact-max-pool2d supports f32 and f64, got {:?}", other.dtype()),
        };
        Ok((out, out_shape))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let dims = arg.dims().to_vec();
        let x = arg.flatten_all()?.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?;
        let g = grad_res.flatten_all()?.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?;
        let mut dx = vec![0.0f64; x.len()];
        for (o, i) in argmax_indices(&x, &dims, self.kernel).into_iter().enumerate() {
            dx[i] += g[o];
        }
        Ok(Some(Tensor::from_vec(dx, dims, arg.device())?.to_dtype(arg.dtype())?))
    }
}

/// Max-pool with `kernel` = stride through the exact op.
pub fn exact_max_pool2d(x: &Tensor, kernel: usize) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(ExactMaxPool2d { kernel })
}
