//! libtorch (through tch 0.26, PyTorch 2.13) as a backend: real PyTorch autograd.

use tch::{Kind, TchError, Tensor};

use super::executor::Executor;
use super::{check_inputs, Backend, BackendKind, BenchHooks};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::host::HostTensor;
use crate::models::Program;

mod alternatives;
mod interp;

pub struct TorchBackend;

/// libtorch with one of its other implementations (`alternatives.rs`) in place of the
/// default one for its op.
pub struct TorchAlternative {
    pub which: super::Implementation,
}

impl Backend for TorchAlternative {
    fn kind(&self) -> BackendKind {
        BackendKind::TORCH
    }

    fn executor(&self, program: &Program, inputs: &[HostTensor], dtype: DType) -> Result<Box<dyn Executor>> {
        check_inputs(program, inputs)?;
        let mut e = interp::TorchExecutor::new(program, inputs, dtype)?;
        e.alternative = Some(self.which);
        Ok(Box::new(e))
    }

    fn bench_hooks(&self) -> Option<&dyn BenchHooks> {
        Some(&TorchBackend)
    }
}

impl TorchBackend {
    pub fn new() -> Self {
        TorchBackend
    }
}

impl Default for TorchBackend {
    fn default() -> Self {
        Self::new()
    }
}

pub(crate) fn err(e: TchError) -> Error {
    Error::backend("torch", e)
}

impl Backend for TorchBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::TORCH
    }

    fn implementations(&self) -> Vec<super::Implementation> {
        alternatives::IMPLEMENTATIONS.to_vec()
    }

    fn with_implementation(&self, which: &super::Implementation) -> Result<Box<dyn Backend>> {
        if !alternatives::IMPLEMENTATIONS.contains(which) {
            return Err(Error::Invalid(format!("torch has no other implementation '{}' of {}", which.name, which.op)));
        }
        Ok(Box::new(TorchAlternative { which: *which }))
    }

    fn executor(&self, program: &Program, inputs: &[HostTensor], dtype: DType) -> Result<Box<dyn Executor>> {
        check_inputs(program, inputs)?;
        Ok(Box::new(interp::TorchExecutor::new(program, inputs, dtype)?))
    }

    fn bench_hooks(&self) -> Option<&dyn BenchHooks> {
        Some(self)
    }
}

impl BenchHooks for TorchBackend {
    fn matmul_seconds(&self, m: usize, k: usize, n: usize, reps: usize) -> Result<f64> {
        let a = Tensor::f_ones([m as i64, k as i64], (tch::Kind::Float, tch::Device::Cpu)).map_err(err)?;
        let b = Tensor::f_ones([k as i64, n as i64], (tch::Kind::Float, tch::Device::Cpu)).map_err(err)?;
        super::time_median(reps, || {
            let _ = std::hint::black_box(a.f_matmul(&b).map_err(err)?);
            Ok(())
        })
    }
}

pub fn to_torch(t: &HostTensor, dtype: DType) -> Result<Tensor, TchError> {
    let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
    let flat = match dtype {
        DType::F32 => Tensor::f_from_slice(&t.to_f32())?,
        DType::F64 => Tensor::f_from_slice(&t.data)?,
    };
    flat.f_reshape(&shape)
}

pub fn to_host(t: &Tensor) -> Result<HostTensor, TchError> {
    let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
    let flat = t.f_detach()?.f_to_kind(Kind::Double)?.f_reshape([-1])?.f_contiguous()?;
    let data = Vec::<f64>::try_from(&flat)?;
    Ok(HostTensor { shape, data })
}
