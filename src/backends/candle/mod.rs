//! candle (candle-core 0.11) as a backend: candle's own ops and its own autograd.

use candle_core::{DType as CDType, Device, Tensor, Var};

use super::{check_inputs, Backend, BackendKind, Trajectory};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::host::HostTensor;
use crate::models::mnist::{ModelSpec, ParamSet};
use crate::models::{Prim, Program};

mod maxpool;
mod model;

/// Which max-pool backward the candle adapter uses (`--candle-maxpool`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MaxPoolMode {
    /// candle-core's own `max_pool2d`, as released.
    #[default]
    Builtin,
    /// A custom op with PyTorch's backward (the whole gradient to the first maximum).
    Exact,
}

impl std::str::FromStr for MaxPoolMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "builtin" => Ok(MaxPoolMode::Builtin),
            "exact" => Ok(MaxPoolMode::Exact),
            _ => Err(format!("unknown max-pool mode '{s}': expected builtin or exact")),
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct CandleBackend {
    pub maxpool: MaxPoolMode,
}

pub(crate) fn err(e: candle_core::Error) -> Error {
    Error::backend("candle", e)
}

impl Backend for CandleBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Candle
    }

    fn train_sgd(&self, program: &Program, inputs: &[HostTensor], lr: f64, steps: usize, dtype: DType) -> Result<Trajectory> {
        check_inputs(program, inputs)?;
        train(program, inputs, lr, steps, dtype, self.maxpool).map_err(err)
    }

    fn matmul_seconds(&self, m: usize, k: usize, n: usize, reps: usize) -> Result<f64> {
        let device = Device::Cpu;
        let a = Tensor::ones((m, k), CDType::F32, &device).map_err(err)?;
        let b = Tensor::ones((k, n), CDType::F32, &device).map_err(err)?;
        super::time_median(reps, || {
            std::hint::black_box(a.matmul(&b).map_err(err)?);
            Ok(())
        })
    }

    fn model(&self, spec: &ModelSpec, params: &ParamSet, dtype: DType) -> Result<Box<dyn super::ModelRunner>> {
        Ok(Box::new(model::CandleModel::new(spec, params, dtype, self.maxpool).map_err(err)?))
    }
}

fn train(program: &Program, inputs: &[HostTensor], lr: f64, steps: usize, dtype: DType, maxpool: MaxPoolMode) -> candle_core::Result<Trajectory> {
    let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(&to_candle(t, dtype)?)).collect::<candle_core::Result<_>>()?;
    let trainable: Vec<usize> = program.trainable().map(|(i, _)| i).collect();
    let mut out = Trajectory { loss: Vec::with_capacity(steps), grads: Vec::with_capacity(steps), final_params: vec![] };
    for _ in 0..steps {
        // Constants enter as detached tensors, so candle records no gradient for them.
        let leaves: Vec<Tensor> = program
            .inputs
            .iter()
            .zip(&vars)
            .map(|(decl, v)| if decl.trainable { v.as_tensor().clone() } else { v.as_detached_tensor() })
            .collect();
        let loss = run_program(program, leaves, maxpool)?;
        let grads = loss.backward()?;
        out.loss.push(to_host(&loss)?.data[0]);
        let mut step_grads = Vec::with_capacity(trainable.len());
        for &i in &trainable {
            let p = vars[i].as_tensor();
            let g = match grads.get(p) {
                Some(g) => g.detach(),
                None => p.zeros_like()?,
            };
            step_grads.push(to_host(&g)?);
            // p - lr * g: candle's scalar multiply rounds lr to the dtype first, like torch.
            vars[i].set(&p.sub(&(g * lr)?)?)?;
        }
        out.grads.push(step_grads);
    }
    out.final_params = trainable.iter().map(|&i| to_host(vars[i].as_tensor())).collect::<candle_core::Result<_>>()?;
    Ok(out)
}

/// Interprets the program with candle ops.
pub fn run_program(program: &Program, mut values: Vec<Tensor>, maxpool: MaxPoolMode) -> candle_core::Result<Tensor> {
    for instr in &program.instrs {
        let a = &values[instr.args[0].0];
        let b = instr.args.get(1).map(|v| &values[v.0]);
        let b = || b.expect("arity checked");
        let v = match instr.prim {
            Prim::MatMul => matmul(a, b())?,
            Prim::Add => a.broadcast_add(b())?,
            Prim::Sub => a.broadcast_sub(b())?,
            Prim::Mul => a.broadcast_mul(b())?,
            Prim::Neg => a.neg()?,
            Prim::Sigmoid => candle_nn::ops::sigmoid(a)?,
            Prim::Square => a.sqr()?,
            Prim::Relu => a.relu()?,
            Prim::Tanh => a.tanh()?,
            Prim::Exp => a.exp()?,
            Prim::Log => a.log()?,
            Prim::Sum => a.sum_all()?,
            Prim::Mean => a.mean_all()?,
            Prim::MaxPool2d => match maxpool {
                MaxPoolMode::Builtin => a.max_pool2d(2)?,
                MaxPoolMode::Exact => maxpool::exact_max_pool2d(a, 2)?,
            },
            Prim::Conv2d => a.conv2d(b(), 1, 1, 1, 1)?,
            Prim::Linear => a.matmul(&b().t()?)?,
            Prim::BatchNorm => model::batch_norm_train(a)?,
            Prim::Softmax => candle_nn::ops::softmax(a, 1)?,
        };
        values.push(v);
    }
    Ok(values.pop().expect("a program has instructions"))
}

/// candle's matmul takes matrices only: a vector operand becomes a one-row (left) or
/// one-column (right) matrix and the added axis is dropped again, as torch.matmul does.
fn matmul(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    let (va, vb) = (a.rank() == 1, b.rank() == 1);
    let a2 = if va { a.unsqueeze(0)? } else { a.clone() };
    let b2 = if vb { b.unsqueeze(1)? } else { b.clone() };
    let mut y = a2.matmul(&b2)?;
    if vb {
        y = y.squeeze(1)?;
    }
    if va {
        y = y.squeeze(0)?;
    }
    Ok(y)
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
