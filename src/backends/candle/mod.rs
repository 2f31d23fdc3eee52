//! candle (candle-core 0.11) as a backend: candle's own ops and its own autograd.

use candle_core::{DType as CDType, Device, Tensor};

use super::executor::Executor;
use super::{check_inputs, Backend, BackendKind, BenchHooks};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::host::HostTensor;
use crate::models::Program;

mod alternatives;
mod interp;
mod maxpool;

/// Which max-pool backward the candle adapter uses (`--candle-maxpool`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MaxPoolMode {
    /// candle-core's own `max_pool2d`, as released.
    #[default]
    Builtin,
    /// A custom op with PyTorch's backward (the whole gradient to the first maximum).
    Exact,
}

impl MaxPoolMode {
    pub const ALL: [MaxPoolMode; 2] = [MaxPoolMode::Builtin, MaxPoolMode::Exact];

    /// The one spelling of the mode: the command line's, JSON's and the records' folders.
    pub fn name(self) -> &'static str {
        match self {
            MaxPoolMode::Builtin => "builtin",
            MaxPoolMode::Exact => "exact",
        }
    }
}

impl std::str::FromStr for MaxPoolMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        MaxPoolMode::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| format!("unknown max-pool mode '{s}': expected builtin or exact"))
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct CandleBackend {
    pub maxpool: MaxPoolMode,
}

pub(crate) fn err(e: candle_core::Error) -> Error {
    Error::backend("candle", e)
}

/// candle with one of its other implementations (`alternatives.rs`) in place of the
/// default one for its op.
#[derive(Clone, Copy, Debug)]
pub struct CandleAlternative {
    pub base: CandleBackend,
    pub which: super::Implementation,
}

impl Backend for CandleAlternative {
    fn kind(&self) -> BackendKind {
        BackendKind::CANDLE
    }

    fn executor(&self, program: &Program, inputs: &[HostTensor], dtype: DType) -> Result<Box<dyn Executor>> {
        check_inputs(program, inputs)?;
        let mut e = interp::CandleExecutor::new(program, inputs, dtype, self.base.maxpool)?;
        e.alternative = Some(self.which);
        Ok(Box::new(e))
    }

    fn settings(&self) -> Vec<(String, String)> {
        self.base.settings()
    }

    fn bench_hooks(&self) -> Option<&dyn BenchHooks> {
        Some(&self.base)
    }
}

impl Backend for CandleBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::CANDLE
    }

    fn implementations(&self) -> Vec<super::Implementation> {
        alternatives::IMPLEMENTATIONS.to_vec()
    }

    fn with_implementation(&self, which: &super::Implementation) -> Result<Box<dyn Backend>> {
        if !alternatives::IMPLEMENTATIONS.contains(which) {
            return Err(Error::Invalid(format!("candle has no other implementation '{}' of {}", which.name, which.op)));
        }
        Ok(Box::new(CandleAlternative { base: *self, which: *which }))
    }

    fn executor(&self, program: &Program, inputs: &[HostTensor], dtype: DType) -> Result<Box<dyn Executor>> {
        check_inputs(program, inputs)?;
        Ok(Box::new(interp::CandleExecutor::new(program, inputs, dtype, self.maxpool)?))
    }

    fn settings(&self) -> Vec<(String, String)> {
        vec![("maxpool".into(), self.maxpool.name().into())]
    }

    fn bench_hooks(&self) -> Option<&dyn BenchHooks> {
        Some(self)
    }
}

impl BenchHooks for CandleBackend {
    fn matmul_seconds(&self, m: usize, k: usize, n: usize, reps: usize) -> Result<f64> {
        let device = Device::Cpu;
        let a = Tensor::ones((m, k), CDType::F32, &device).map_err(err)?;
        let b = Tensor::ones((k, n), CDType::F32, &device).map_err(err)?;
        super::time_median(reps, || {
            std::hint::black_box(a.matmul(&b).map_err(err)?);
            Ok(())
        })
    }
}

pub fn to_candle(t: &HostTensor, dtype: DType) -> candle_core::Result<Tensor> {
    let device = Device::Cpu;
    match dtype {
        DType::F32 => Tensor::from_vec(t.to_f32(), t.shape.as_slice(), &device),
        DType::F64 => Tensor::from_vec(t.data.clone(), t.shape.as_slice(), &device),
    }
}

pub fn to_host(t: &Tensor) -> candle_core::Result<HostTensor> {
    let data = t.flatten_all()?.to_dtype(CDType::F64)?.to_vec1::<f64>()?;
    Ok(HostTensor { shape: t.dims().to_vec(), data })
}
