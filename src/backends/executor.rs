//! What every backend offers: a program instantiated in the framework (`Executor`), and
//! the drivers written once on top of it: plain SGD for the A/B/C problem, one
//! evaluation for the op tests, and the nine models' runner.

use super::{count_correct, Backend, Batch, EvalOutput, Evaluation, ModelRunner, StepOutput, Trajectory};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::host::HostTensor;
use crate::models::mnist::{ModelSpec, ParamSet, CLASSES};
use crate::models::{Program, Role};

/// What one execution computes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Request {
    /// Every batch norm on running statistics and every dropout off, whatever the
    /// nodes say.
    pub eval: bool,
    /// Run the backward pass (of the loss, or of the outputs' cotangents).
    pub backward: bool,
    /// Copy the gradients out to the host (they stay inside the framework for
    /// `sgd_step` either way).
    pub host_grads: bool,
    /// Report every node's value instead of the program's outputs.
    pub all_values: bool,
}

/// What one execution returned.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// The differentiated scalar.
    pub loss: Option<f64>,
    /// The program's outputs in order, or every node's value with `all_values`.
    pub values: Vec<HostTensor>,
    /// Per input: its gradient when it needs one and `host_grads` was asked for.
    pub grads: Vec<Option<HostTensor>>,
}

/// A program living inside one framework: its inputs' values (parameters, running
/// statistics, optimiser state) stay there between executions.
///
/// Driving one by hand (the studies do this for you):
///
/// ```
/// use backprop_parity::backends::{BackendKind, Request};
/// use backprop_parity::models::{Op, Program};
/// use backprop_parity::{DType, HostTensor};
///
/// // loss = sum(tanh(a)), with `a` a parameter.
/// let mut p = Program::default();
/// let a = p.param("a", &[2]);
/// let t = p.op(Op::Tanh {}, &[&a]);
/// let loss = p.op(Op::Sum {}, &[&t]);
/// p.set_loss(&loss);
///
/// let x = HostTensor { shape: vec![2], data: vec![0.5, -1.0] };
/// let engine = BackendKind::ENGINE.create()?;
/// let mut exec = engine.executor(&p, &[x], DType::F64)?;
/// let out = exec.run(Request { backward: true, host_grads: true, ..Request::default() })?;
/// let g = out.grads[0].clone().expect("a parameter has a gradient");
/// assert!((g.data[0] - (1.0 - 0.5f64.tanh().powi(2))).abs() < 1e-15);
///
/// // Plain SGD: a <- a - 0.1 * g, kept inside the executor.
/// exec.sgd_step(0.1, None)?;
/// assert_eq!(exec.input(0)?.data[0], 0.5 - 0.1 * g.data[0]);
/// # Ok::<(), backprop_parity::Error>(())
/// ```
pub trait Executor {
    /// Replaces input `index`'s value (a batch, a mask, reset parameters).
    fn set_input(&mut self, index: usize, value: &HostTensor) -> Result<()>;
    /// The current value of input `index` (a parameter after updates, a running
    /// statistic).
    fn input(&self, index: usize) -> Result<HostTensor>;
    fn run(&mut self, request: Request) -> Result<Outcome>;
    /// Updates every `param` input with the gradients of the last backward pass:
    /// `p - lr·g` without momentum (the seed's A/B/C rule), PyTorch's SGD
    /// (`v = m·v + g; p -= lr·v`) with it.
    fn sgd_step(&mut self, lr: f64, momentum: Option<f64>) -> Result<()>;
    /// Asks the executor to keep SGD's momentum buffers where `velocity` can read them
    /// (libtorch's optimiser keeps them out of reach, so its interpreter mirrors them
    /// from then on; the others always can). Call before the first step.
    fn track_velocity(&mut self) {}
    /// SGD's momentum buffer of input `index`; None before its first momentum step.
    fn velocity(&self, index: usize) -> Result<Option<HostTensor>>;
    /// Restores a momentum buffer (a resumed run), so that the next step is the one an
    /// uninterrupted run would take.
    fn set_velocity(&mut self, index: usize, value: &HostTensor) -> Result<()>;
}

/// Trains a program's parameters with `p = p - lr·g` for `steps` steps.
pub fn train_sgd<B: Backend + ?Sized>(backend: &B, program: &Program, inputs: &[HostTensor], lr: f64, steps: usize, dtype: DType) -> Result<Trajectory> {
    let mut exec = backend.executor(program, inputs, dtype)?;
    let params: Vec<usize> = program.params().map(|(i, _)| i).collect();
    let mut out = Trajectory { loss: Vec::with_capacity(steps), grads: Vec::with_capacity(steps), final_params: vec![] };
    for _ in 0..steps {
        let o = exec.run(Request { backward: true, host_grads: true, ..Request::default() })?;
        out.loss.push(o.loss.ok_or_else(|| Error::Invalid("the program has no loss to train".into()))?);
        out.grads.push(params.iter().map(|&i| o.grads[i].clone().expect("parameters have gradients")).collect());
        exec.sgd_step(lr, None)?;
    }
    out.final_params = params.iter().map(|&i| exec.input(i)).collect::<Result<_>>()?;
    Ok(out)
}

/// The loss (or the first output) and the gradient of every input that needs one.
pub fn evaluate<B: Backend + ?Sized>(backend: &B, program: &Program, inputs: &[HostTensor], dtype: DType) -> Result<Evaluation> {
    let mut exec = backend.executor(program, inputs, dtype)?;
    let o = exec.run(Request { backward: true, host_grads: true, ..Request::default() })?;
    let output = match o.loss {
        Some(l) => l,
        None => o.values.first().and_then(|v| v.data.first().copied()).unwrap_or(f64::NAN),
    };
    Ok(Evaluation { output, grads: o.grads.into_iter().flatten().collect() })
}

/// A seed model run through its program: the harness feeds images, labels and masks.
pub struct ProgramModel {
    exec: Box<dyn Executor>,
    /// (name, input index) of every parameter and buffer, in spec order.
    tensors: Vec<(String, usize)>,
    trainable: Vec<(String, usize)>,
    masks: Vec<usize>,
}

impl ProgramModel {
    pub fn new<B: Backend + ?Sized>(backend: &B, spec: &ModelSpec, params: &ParamSet, dtype: DType) -> Result<Self> {
        // The batch size is only a placeholder (2: batch norm trains on more than one
        // value per channel): every step hands its own batch in.
        let program = spec.program(2);
        let mut values = Vec::with_capacity(program.inputs.len());
        for d in &program.inputs {
            values.push(match params.get(&d.name) {
                Some(t) => t.clone(),
                None if d.role == Role::Param || d.name.ends_with("running_mean") || d.name.ends_with("running_var") => {
                    return Err(Error::Invalid(format!("parameters: '{}' is missing", d.name)))
                }
                None => HostTensor::filled(&d.shape, 0.0),
            });
        }
        let exec = backend.executor(&program, &values, dtype)?;
        let index = |name: &str| program.input_index(name).expect("declared by the spec");
        let tensors: Vec<(String, usize)> = spec.params().into_iter().map(|p| (p.name.clone(), index(&p.name))).collect();
        let trainable = spec.params().into_iter().filter(|p| p.kind.trainable()).map(|p| (p.name.clone(), index(&p.name))).collect();
        let masks = (0..spec.dropout_shapes(2).len()).map(|s| index(&crate::models::mnist::mask_name(s))).collect();
        Ok(ProgramModel { exec, tensors, trainable, masks })
    }

    fn feed(&mut self, batch: &Batch, masks: &[HostTensor]) -> Result<()> {
        self.exec.set_input(0, &batch.images)?;
        let labels = HostTensor { shape: vec![batch.labels.len()], data: batch.labels.iter().map(|&l| l as f64).collect() };
        self.exec.set_input(1, &labels)?;
        for (&i, m) in self.masks.iter().zip(masks) {
            self.exec.set_input(i, m)?;
        }
        Ok(())
    }
}

impl ModelRunner for ProgramModel {
    fn forward_backward(&mut self, batch: &Batch, masks: &[HostTensor], want_grads: bool) -> Result<StepOutput> {
        self.feed(batch, masks)?;
        let o = self.exec.run(Request { backward: true, host_grads: want_grads, ..Request::default() })?;
        let grads = want_grads.then(|| ParamSet {
            tensors: self.trainable.iter().map(|(n, i)| (n.clone(), o.grads[*i].clone().expect("parameters have gradients"))).collect(),
        });
        Ok(StepOutput { loss: o.loss.expect("models have a loss"), grads })
    }

    fn sgd_step(&mut self, lr: f64, momentum: f64) -> Result<()> {
        self.exec.sgd_step(lr, Some(momentum))
    }

    fn evaluate(&mut self, batch: &Batch) -> Result<EvalOutput> {
        let masks: Vec<HostTensor> = vec![];
        self.feed(batch, &masks)?;
        let o = self.exec.run(Request { eval: true, ..Request::default() })?;
        Ok(EvalOutput { loss: o.loss.expect("models have a loss"), correct: count_correct(&o.values[0].data, CLASSES, &batch.labels) })
    }

    fn params(&self) -> Result<ParamSet> {
        Ok(ParamSet { tensors: self.tensors.iter().map(|(n, i)| Ok((n.clone(), self.exec.input(*i)?))).collect::<Result<_>>()? })
    }

    fn load_params(&mut self, params: &ParamSet) -> Result<()> {
        for (n, i) in &self.tensors {
            let t = params.get(n).ok_or_else(|| Error::Invalid(format!("load_params: missing '{n}'")))?;
            self.exec.set_input(*i, t)?;
        }
        Ok(())
    }

    fn track_optimizer_state(&mut self) {
        self.exec.track_velocity();
    }

    fn optimizer_state(&self) -> Result<Vec<(String, HostTensor)>> {
        let mut out = Vec::new();
        for (n, i) in &self.trainable {
            if let Some(v) = self.exec.velocity(*i)? {
                out.push((n.clone(), v));
            }
        }
        Ok(out)
    }

    fn set_optimizer_state(&mut self, state: &[(String, HostTensor)]) -> Result<()> {
        for (name, v) in state {
            let i = self.trainable.iter().find(|(n, _)| n == name).map(|(_, i)| *i).ok_or_else(|| Error::Invalid(format!("momentum buffer '{name}' names no trainable parameter")))?;
            self.exec.set_velocity(i, v)?;
        }
        Ok(())
    }
}
