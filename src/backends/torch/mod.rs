//! libtorch (through tch 0.26, PyTorch 2.13) as a backend: real PyTorch autograd.

use tch::{Kind, TchError, Tensor};

use super::{check_inputs, Backend, BackendKind, Trajectory};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::host::HostTensor;
use crate::models::mnist::{ModelSpec, ParamSet, BN_EPS, BN_MOMENTUM};
use crate::models::{Prim, Program};

mod model;

pub struct TorchBackend;

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
        BackendKind::Torch
    }

    fn train_sgd(&self, program: &Program, inputs: &[HostTensor], lr: f64, steps: usize, dtype: DType) -> Result<Trajectory> {
        check_inputs(program, inputs)?;
        train(program, inputs, lr, steps, dtype).map_err(err)
    }

    fn matmul_seconds(&self, m: usize, k: usize, n: usize, reps: usize) -> Result<f64> {
        let a = Tensor::f_ones([m as i64, k as i64], (tch::Kind::Float, tch::Device::Cpu)).map_err(err)?;
        let b = Tensor::f_ones([k as i64, n as i64], (tch::Kind::Float, tch::Device::Cpu)).map_err(err)?;
        super::time_median(reps, || {
            let _ = std::hint::black_box(a.f_matmul(&b).map_err(err)?);
            Ok(())
        })
    }

    fn model(&self, spec: &ModelSpec, params: &ParamSet, dtype: DType) -> Result<Box<dyn super::ModelRunner>> {
        Ok(Box::new(model::TorchModel::new(spec, params, dtype).map_err(err)?))
    }
}

fn train(program: &Program, inputs: &[HostTensor], lr: f64, steps: usize, dtype: DType) -> Result<Trajectory, TchError> {
    let mut leaves: Vec<Tensor> = program
        .inputs
        .iter()
        .zip(inputs)
        .map(|(decl, t)| Ok(to_torch(t, dtype)?.set_requires_grad(decl.trainable)))
        .collect::<Result<_, TchError>>()?;
    let trainable: Vec<usize> = program.trainable().map(|(i, _)| i).collect();
    let mut out = Trajectory { loss: Vec::with_capacity(steps), grads: Vec::with_capacity(steps), final_params: vec![] };
    for _ in 0..steps {
        let loss = run_program(program, leaves.iter().map(Tensor::shallow_clone).collect())?;
        loss.f_backward()?;
        out.loss.push(loss.f_double_value(&[])?);
        let mut step_grads = Vec::with_capacity(trainable.len());
        for &i in &trainable {
            let p = &mut leaves[i];
            let g = p.grad();
            let g = if g.defined() { g } else { p.f_zeros_like()? };
            step_grads.push(to_host(&g)?);
            // The seed's update, `P -= lr * P.grad`, outside autograd.
            tch::no_grad(|| -> Result<(), TchError> {
                let step = g.f_mul_scalar(lr)?;
                let _ = p.f_sub_(&step)?;
                Ok(())
            })?;
            p.zero_grad();
        }
        out.grads.push(step_grads);
    }
    out.final_params = trainable.iter().map(|&i| to_host(&leaves[i])).collect::<Result<_, TchError>>()?;
    Ok(out)
}

/// Interprets the program with torch ops.
pub fn run_program(program: &Program, mut values: Vec<Tensor>) -> Result<Tensor, TchError> {
    for instr in &program.instrs {
        let a = &values[instr.args[0].0];
        let b = instr.args.get(1).map(|v| &values[v.0]);
        let b = || b.expect("arity checked");
        let v = match instr.prim {
            Prim::MatMul => a.f_matmul(b())?,
            Prim::Add => a.f_add(b())?,
            Prim::Sub => a.f_sub(b())?,
            Prim::Mul => a.f_mul(b())?,
            Prim::Neg => a.f_neg()?,
            Prim::Sigmoid => a.f_sigmoid()?,
            Prim::Square => a.f_square()?,
            Prim::Relu => a.f_relu()?,
            Prim::Tanh => a.f_tanh()?,
            Prim::Exp => a.f_exp()?,
            Prim::Log => a.f_log()?,
            Prim::Sum => a.f_sum(a.kind())?,
            Prim::Mean => a.f_mean(a.kind())?,
            Prim::MaxPool2d => a.f_max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false)?,
            Prim::Conv2d => a.f_conv2d(b(), None::<Tensor>, [1, 1], [1, 1], [1, 1], 1)?,
            Prim::Linear => a.f_linear(b(), None::<Tensor>)?,
            Prim::BatchNorm => a.f_batch_norm(None::<Tensor>, None::<Tensor>, None::<Tensor>, None::<Tensor>, true, BN_MOMENTUM, BN_EPS, false)?,
            Prim::Softmax => a.f_softmax(1, None::<tch::Kind>)?,
        };
        values.push(v);
    }
    Ok(values.pop().expect("a program has instructions"))
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
