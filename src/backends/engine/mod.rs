//! The from-scratch engine as a backend.

use ndarray::IxDyn;

mod interp;

use super::executor::Executor;
use super::{check_inputs, Backend, BackendKind, BenchHooks};
use crate::dtype::DType;
use crate::engine::{Float, Tensor};
use crate::error::{Error, Result};
use crate::host::HostTensor;
use crate::models::Program;

pub struct EngineBackend;

impl Backend for EngineBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::ENGINE
    }

    fn bench_hooks(&self) -> Option<&dyn BenchHooks> {
        Some(self)
    }

    fn executor(&self, program: &Program, inputs: &[HostTensor], dtype: DType) -> Result<Box<dyn Executor>> {
        check_inputs(program, inputs)?;
        Ok(match dtype {
            DType::F32 => Box::new(interp::EngineExecutor::<f32>::new(program, inputs)?),
            DType::F64 => Box::new(interp::EngineExecutor::<f64>::new(program, inputs)?),
        })
    }
}

impl BenchHooks for EngineBackend {
    fn matmul_seconds(&self, m: usize, k: usize, n: usize, reps: usize) -> Result<f64> {
        let a = ndarray::Array2::<f32>::from_shape_fn((m, k), |(i, j)| ((i * 7 + j * 3) % 11) as f32 / 11.0);
        let b = ndarray::Array2::<f32>::from_shape_fn((k, n), |(i, j)| ((i * 5 + j) % 13) as f32 / 13.0);
        super::time_median(reps, || {
            std::hint::black_box(crate::engine::ops::gemm::gemm(a.view(), b.view()));
            Ok(())
        })
    }
}

pub fn to_engine<F: Float>(t: &HostTensor) -> Result<Tensor<F>> {
    Tensor::from_shape_vec(IxDyn(&t.shape), t.data.iter().map(|&v| F::of(v)).collect())
        .map_err(|e| Error::Shape(e.to_string()))
}

pub fn to_host<F: Float>(t: &Tensor<F>) -> HostTensor {
    HostTensor { shape: t.shape().to_vec(), data: t.iter().map(|v| v.as_f64()).collect() }
}
