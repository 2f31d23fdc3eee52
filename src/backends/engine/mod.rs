//! The from-scratch engine as a backend.

use ndarray::IxDyn;

mod model;

use super::{check_inputs, Backend, BackendKind, ModelRunner, Trajectory};
use crate::dtype::DType;
use crate::engine::RunningStats;
use crate::engine::{optim::Sgd, Float, Graph, Tensor, Var};
use crate::error::{Error, Result};
use crate::host::HostTensor;
use crate::models::mnist::{ModelSpec, ParamSet, BN_EPS, BN_MOMENTUM};
use crate::models::{Prim, Program};

pub struct EngineBackend;

impl Backend for EngineBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Engine
    }

    fn train_sgd(
        &self,
        program: &Program,
        inputs: &[HostTensor],
        lr: f64,
        steps: usize,
        dtype: DType,
    ) -> Result<Trajectory> {
        check_inputs(program, inputs)?;
        match dtype {
            DType::F32 => train::<f32>(program, inputs, lr, steps),
            DType::F64 => train::<f64>(program, inputs, lr, steps),
        }
    }

    fn matmul_seconds(&self, m: usize, k: usize, n: usize, reps: usize) -> Result<f64> {
        let a = ndarray::Array2::<f32>::from_shape_fn((m, k), |(i, j)| ((i * 7 + j * 3) % 11) as f32 / 11.0);
        let b = ndarray::Array2::<f32>::from_shape_fn((k, n), |(i, j)| ((i * 5 + j) % 13) as f32 / 13.0);
        super::time_median(reps, || {
            std::hint::black_box(crate::engine::ops::gemm::gemm(a.view(), b.view()));
            Ok(())
        })
    }

    fn model(&self, spec: &ModelSpec, params: &ParamSet, dtype: DType) -> Result<Box<dyn ModelRunner>> {
        Ok(match dtype {
            DType::F32 => Box::new(model::EngineModel::<f32>::new(spec, params)?),
            DType::F64 => Box::new(model::EngineModel::<f64>::new(spec, params)?),
        })
    }
}

fn train<F: Float>(program: &Program, inputs: &[HostTensor], lr: f64, steps: usize) -> Result<Trajectory> {
    let mut values: Vec<Tensor<F>> = inputs.iter().map(to_engine).collect::<Result<_>>()?;
    let trainable: Vec<usize> = program.trainable().map(|(i, _)| i).collect();
    let sgd = Sgd { lr };
    let mut out =
        Trajectory { loss: Vec::with_capacity(steps), grads: Vec::with_capacity(steps), final_params: vec![] };
    for _ in 0..steps {
        let mut g = Graph::<F>::new();
        let leaves: Vec<Var> =
            program.inputs.iter().zip(&values).map(|(decl, v)| g.leaf(v.clone(), decl.trainable)).collect();
        let loss = run_program(&mut g, program, leaves.clone())?;
        let grads = g.backward(loss)?;
        out.loss.push(g.value(loss).iter().next().copied().unwrap_or_else(F::zero).as_f64());
        let step_grads: Vec<Tensor<F>> = trainable.iter().map(|&i| grads.get_or_zeros(leaves[i], &values[i])).collect();
        out.grads.push(step_grads.iter().map(to_host).collect());
        for (&i, grad) in trainable.iter().zip(&step_grads) {
            sgd.step(&mut values[i], grad);
        }
    }
    out.final_params = trainable.iter().map(|&i| to_host(&values[i])).collect();
    Ok(out)
}

/// Records the program on the graph and returns its output.
pub fn run_program<F: Float>(g: &mut Graph<F>, program: &Program, mut values: Vec<Var>) -> Result<Var> {
    for instr in &program.instrs {
        let a = values[instr.args[0].0];
        let b = instr.args.get(1).map(|v| values[v.0]);
        let binary =
            |g: &mut Graph<F>, f: fn(&mut Graph<F>, Var, Var) -> Result<Var>| f(g, a, b.expect("arity checked"));
        let v = match instr.prim {
            Prim::MatMul => binary(g, Graph::matmul)?,
            Prim::Add => binary(g, Graph::add)?,
            Prim::Sub => binary(g, Graph::sub)?,
            Prim::Mul => binary(g, Graph::mul)?,
            Prim::Neg => g.neg(a),
            Prim::Sigmoid => g.sigmoid(a),
            Prim::Square => g.square(a),
            Prim::Relu => g.relu(a),
            Prim::Tanh => g.tanh(a),
            Prim::Exp => g.exp(a),
            Prim::Log => g.log(a),
            Prim::Sum => g.sum(a),
            Prim::Mean => g.mean(a),
            Prim::MaxPool2d => g.max_pool2d(a, 2)?,
            Prim::Conv2d => g.conv2d(a, b.expect("arity checked"), None, 1, 1)?,
            Prim::Linear => g.linear(a, b.expect("arity checked"), None)?,
            Prim::BatchNorm => {
                let c = g.value(a).shape().get(1).copied().unwrap_or(0);
                let gamma = g.constant(Tensor::from_elem(vec![c], F::one()));
                let beta = g.constant(Tensor::zeros(vec![c]));
                let mut stats = RunningStats::new(c);
                g.batch_norm(a, gamma, beta, &mut stats, true, BN_MOMENTUM, BN_EPS)?
            }
            Prim::Softmax => g.softmax(a)?,
        };
        values.push(v);
    }
    values.last().copied().ok_or_else(|| Error::Invalid("the program has no instructions".into()))
}

pub fn to_engine<F: Float>(t: &HostTensor) -> Result<Tensor<F>> {
    Tensor::from_shape_vec(IxDyn(&t.shape), t.data.iter().map(|&v| F::of(v)).collect())
        .map_err(|e| Error::Shape(e.to_string()))
}

pub fn to_host<F: Float>(t: &Tensor<F>) -> HostTensor {
    HostTensor { shape: t.shape().to_vec(), data: t.iter().map(|v| v.as_f64()).collect() }
}
