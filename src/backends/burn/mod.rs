//! burn 0.22.1 as a backend: its ndarray backend under its autodiff
//! (`Autodiff<NdArray>`), burn's own ops and its own autograd.
//!
//! The `burn` umbrella crate and `burn-tensor` cannot be linked next to tch 0.26:
//! burn-tensor depends on burn-dispatch, whose optional burn-tch pulls torch-sys 0.22, and
//! cargo rejects two `links = "tch"` packages in one lockfile even with the feature off.
//! So the interpreter calls the backend-level primitives (`FloatTensorOps`,
//! `ActivationOps`, `ModuleOps`, `AutodiffBackend`) from burn-backend, burn-autodiff and
//! burn-ndarray directly: exactly what burn-tensor's `Tensor` methods dispatch to. Where a
//! burn-tensor function or a burn-nn module is a composition of primitives, the
//! interpreter transcribes burn's own composition and cites the file.
//!
//! burn 0.22 marks burn-ndarray deprecated ("use burn-flex for pure-Rust CPU execution");
//! it is still the released CPU backend of 0.22.1 and the one this adapter runs.
#![allow(deprecated)]

use burn_backend::ops::FloatTensorOps;
use burn_backend::tensor::FloatTensor;
use burn_backend::{read_sync, Shape, TensorData};
use burn_ndarray::{NdArray, NdArrayDevice};

use super::executor::Executor;
use super::{check_inputs, Backend, BackendKind, BenchHooks};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::host::HostTensor;
use crate::models::Program;

mod interp;

/// The autodiff backend every program runs on.
pub(crate) type B = burn_autodiff::Autodiff<NdArray>;
/// The backend under the autodiff decorator: gradients, optimiser state and stored
/// inputs live here.
pub(crate) type Inner = NdArray;

#[derive(Clone, Copy, Debug, Default)]
pub struct BurnBackend;

pub(crate) fn err(message: impl std::fmt::Display) -> Error {
    Error::backend("burn", message)
}

impl Backend for BurnBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::BURN
    }

    fn executor(&self, program: &Program, inputs: &[HostTensor], dtype: DType) -> Result<Box<dyn Executor>> {
        check_inputs(program, inputs)?;
        crate::backends::guarded("burn", || Ok(Box::new(interp::BurnExecutor::new(program, inputs, dtype)?) as Box<dyn Executor>))
    }

    fn bench_hooks(&self) -> Option<&dyn BenchHooks> {
        Some(self)
    }
}

impl BenchHooks for BurnBackend {
    fn matmul_seconds(&self, m: usize, k: usize, n: usize, reps: usize) -> Result<f64> {
        crate::backends::guarded("burn", || {
            let device = NdArrayDevice::Cpu;
            let a = <Inner as FloatTensorOps<Inner>>::float_from_data(TensorData::new(vec![1f32; m * k], [m, k]), &device);
            let b = <Inner as FloatTensorOps<Inner>>::float_from_data(TensorData::new(vec![1f32; k * n], [k, n]), &device);
            super::time_median(reps, || {
                std::hint::black_box(<Inner as FloatTensorOps<Inner>>::float_matmul(a.clone(), b.clone()));
                Ok(())
            })
        })
    }
}

/// A host tensor as an ndarray tensor of `dtype` (a 0-d value becomes `[1]`: burn has no
/// rank-0 tensors).
pub(crate) fn to_inner(t: &HostTensor, dtype: DType) -> FloatTensor<Inner> {
    let shape = if t.shape.is_empty() { vec![1] } else { t.shape.clone() };
    let data = match dtype {
        DType::F32 => TensorData::new(t.to_f32(), Shape::from(shape)),
        DType::F64 => TensorData::new(t.data.clone(), Shape::from(shape)),
    };
    <Inner as FloatTensorOps<Inner>>::float_from_data(data, &NdArrayDevice::Cpu)
}

/// Values of any float tensor, as f64, with the program's `shape` for it.
pub(crate) fn to_host_data(data: TensorData, shape: &[usize]) -> Result<HostTensor> {
    let data: Vec<f64> = data.convert::<f64>().try_into_vec::<f64>().map_err(|e| err(format!("reading a tensor: {e:?}")))?;
    if data.len() != shape.iter().product::<usize>() {
        return Err(err(format!("a tensor of {} values where shape {shape:?} was expected", data.len())));
    }
    Ok(HostTensor { shape: shape.to_vec(), data })
}

pub(crate) fn inner_to_host(t: FloatTensor<Inner>, shape: &[usize]) -> Result<HostTensor> {
    let data = read_sync(<Inner as FloatTensorOps<Inner>>::float_into_data(t)).map_err(|e| err(format!("reading a tensor: {e:?}")))?;
    to_host_data(data, shape)
}

pub(crate) fn to_host(t: FloatTensor<B>, shape: &[usize]) -> Result<HostTensor> {
    let data = read_sync(<B as FloatTensorOps<B>>::float_into_data(t)).map_err(|e| err(format!("reading a tensor: {e:?}")))?;
    to_host_data(data, shape)
}

/// An index tensor's entries (labels, indices; never negative in a checked program).
pub(crate) fn to_host_int(t: burn_backend::tensor::IntTensor<B>) -> Vec<usize> {
    use burn_backend::ops::IntTensorOps;
    read_sync(<B as IntTensorOps<B>>::int_into_data(t))
        .map(|d| d.convert::<i64>().try_into_vec::<i64>().unwrap_or_default())
        .unwrap_or_default()
        .into_iter()
        .map(|v| v.max(0) as usize)
        .collect()
}
