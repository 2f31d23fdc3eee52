//! One `Backend` trait and one adapter per framework. An adapter interprets a shared
//! definition (`models::Program`) with its framework's own autograd; it never carries a
//! model of its own.

mod builtin;
#[cfg(feature = "burn")]
mod burn;
mod candle;
mod engine;
pub mod executor;
mod guard;
pub mod registry;
#[cfg(feature = "torch")]
mod torch;

use serde::Serialize;

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::host::HostTensor;
use crate::models::mnist::{ModelSpec, ParamSet};
use crate::models::Program;

pub use self::candle::{CandleBackend, MaxPoolMode};
pub use self::executor::{Executor, Outcome, Request};
pub use self::guard::guarded;
pub use self::engine::EngineBackend;
pub use self::builtin::TORCH_BUILD_HINT;
pub use self::registry::{register, BackendKind, BackendOptions, Registration, Settings};
#[cfg(feature = "torch")]
pub use self::torch::TorchBackend;
#[cfg(feature = "burn")]
pub use self::burn::BurnBackend;

/// What one backend computed over a training run.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Trajectory {
    /// The loss before each update.
    pub loss: Vec<f64>,
    /// Per step, the gradient of each trainable input (in program order).
    pub grads: Vec<Vec<HostTensor>>,
    /// The trainable inputs after the last update.
    pub final_params: Vec<HostTensor>,
}

/// The scalar output of a program and the gradient of each trainable input.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Evaluation {
    pub output: f64,
    pub grads: Vec<HostTensor>,
}

/// One mini-batch: images `[n, 1, 28, 28]` (normalised) and their class labels.
#[derive(Clone, Debug)]
pub struct Batch {
    pub images: HostTensor,
    pub labels: Vec<usize>,
}

/// What a training forward and backward pass produced.
#[derive(Clone, Debug)]
pub struct StepOutput {
    /// Mean cross-entropy over the batch.
    pub loss: f64,
    /// Gradients of the trainable parameters (spec order), when asked for.
    pub grads: Option<ParamSet>,
}

/// An evaluation batch: no dropout, batch norm on running statistics.
#[derive(Clone, Copy, Debug)]
pub struct EvalOutput {
    /// Mean cross-entropy over the batch.
    pub loss: f64,
    /// Images whose largest output is their label.
    pub correct: usize,
}

/// A model instantiated in one backend, holding its parameters, batch-norm buffers and
/// optimiser state inside the framework.
pub trait ModelRunner {
    /// Forward and backward in training mode: batch statistics (and running-statistics
    /// updates) in batch norm, and `masks[site]` (0/1, one per dropout site) in dropout.
    fn forward_backward(&mut self, batch: &Batch, masks: &[HostTensor], want_grads: bool) -> Result<StepOutput>;
    /// PyTorch's SGD with momentum (`v = m·v + g; p -= lr·v`), using the gradients of the
    /// last `forward_backward`.
    fn sgd_step(&mut self, lr: f64, momentum: f64) -> Result<()>;
    fn evaluate(&mut self, batch: &Batch) -> Result<EvalOutput>;
    /// Parameters and buffers, in spec order.
    fn params(&self) -> Result<ParamSet>;
    /// Overwrites parameters and buffers (optimiser state is kept).
    fn load_params(&mut self, params: &ParamSet) -> Result<()>;
    /// Keep SGD's momentum buffers readable (see `Executor::track_velocity`).
    fn track_optimizer_state(&mut self);
    /// SGD's momentum buffers by parameter name (none before the first step).
    fn optimizer_state(&self) -> Result<Vec<(String, HostTensor)>>;
    /// Restores momentum buffers saved by `optimizer_state`.
    fn set_optimizer_state(&mut self, state: &[(String, HostTensor)]) -> Result<()>;
}

/// Median of timing samples in seconds.
pub fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    samples.get(samples.len() / 2).copied().unwrap_or(f64::NAN)
}

/// How long a backend runs untimed after another one ran: libtorch's OpenMP workers
/// keep spinning for milliseconds after their last parallel region (libgomp's default
/// spin count), and would otherwise slow whatever is timed next.
pub const SWITCH_WARMUP: std::time::Duration = std::time::Duration::from_millis(30);

/// Runs `f` untimed for `SWITCH_WARMUP` (at least once), then `reps` times; the median
/// in seconds.
pub fn time_median(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let start = std::time::Instant::now();
    f()?;
    while start.elapsed() < SWITCH_WARMUP {
        f()?;
    }
    let mut samples = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = std::time::Instant::now();
        f()?;
        samples.push(t.elapsed().as_secs_f64());
    }
    Ok(median(samples))
}

/// Counts the rows of `logits` (`[n, classes]`, row-major) whose first largest entry is
/// the label.
pub fn count_correct(logits: &[f64], classes: usize, labels: &[usize]) -> usize {
    logits
        .chunks(classes)
        .zip(labels)
        .filter(|(row, &label)| {
            let best = row.iter().enumerate().fold(0, |b, (i, &v)| if v > row[b] { i } else { b });
            best == label
        })
        .count()
}

/// A second implementation of an op that a framework offers next to the one its
/// interpreter uses by default (a fused kernel next to a composition of primitives, or
/// the reverse). `parity-report ops` checks each one as an implementation of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Implementation {
    /// The program-format op it implements.
    pub op: &'static str,
    /// Its name in reports (`softmax_last_dim`, `composition`).
    pub name: &'static str,
    /// What it is, in the framework's own terms.
    pub about: &'static str,
}

/// What a backend can run: `None` for "every op of the program format" and "both
/// dtypes". A study skips what a backend does not support, with this as the reason,
/// instead of counting it as a failure.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Capabilities {
    /// The program-format ops it implements (`Op::NAMES` spellings).
    pub ops: Option<Vec<&'static str>>,
    pub dtypes: Option<Vec<DType>>,
}

impl Capabilities {
    /// Why `program` in `dtype` is out of reach, if it is: the first op it lacks, or the
    /// dtype.
    pub fn unsupported(&self, program: &Program, dtype: DType) -> Option<String> {
        program.nodes.iter().find_map(|n| self.lacks(n.op.name(), dtype)).or_else(|| self.lacks_dtype(dtype))
    }

    /// Why `op` in `dtype` is out of reach, if it is.
    ///
    /// ```
    /// use backprop_parity::backends::Capabilities;
    /// use backprop_parity::DType;
    ///
    /// let caps = Capabilities { ops: Some(vec!["add", "matmul", "sum"]), dtypes: Some(vec![DType::F64]) };
    /// assert_eq!(caps.lacks("conv2d", DType::F64).as_deref(), Some("has no conv2d"));
    /// assert_eq!(caps.lacks("add", DType::F32).as_deref(), Some("does not compute in f32"));
    /// assert!(caps.lacks("matmul", DType::F64).is_none());
    /// ```
    pub fn lacks(&self, op: &str, dtype: DType) -> Option<String> {
        if let Some(ops) = &self.ops {
            if !ops.contains(&op) {
                return Some(format!("has no {op}"));
            }
        }
        self.lacks_dtype(dtype)
    }

    fn lacks_dtype(&self, dtype: DType) -> Option<String> {
        match &self.dtypes {
            Some(dtypes) if !dtypes.contains(&dtype) => Some(format!("does not compute in {dtype}")),
            _ => None,
        }
    }
}

/// Hooks only `parity-report bench` uses: raw throughput of the framework's kernels,
/// outside the program interpreter.
pub trait BenchHooks {
    /// Median seconds of `reps` f32 products of an `m×k` and a `k×n` matrix (after one
    /// warm-up).
    fn matmul_seconds(&self, m: usize, k: usize, n: usize, reps: usize) -> Result<f64>;
}

/// A framework (or your own engine) that runs programs of the program format with its
/// own automatic differentiation. Implement `kind` and `executor`; everything else has a
/// default. Register it (`registry::register`) to make every study take it by name.
///
/// ```
/// use backprop_parity::backends::{Backend, BackendKind};
/// use backprop_parity::models::{Op, Program};
/// use backprop_parity::{DType, HostTensor};
///
/// // Any backend evaluates any program: here the engine, d/dx sum(tanh(x)).
/// let engine = BackendKind::ENGINE.create().unwrap();
/// let program = Program::single(Op::Tanh {}, &[Some(vec![2])]);
/// let x = HostTensor { shape: vec![2], data: vec![0.0, 1.0] };
/// let e = engine.evaluate(&program, &[x], DType::F64).unwrap();
/// assert_eq!(e.grads[0].data[0], 1.0);
/// assert!(engine.capabilities().lacks("conv2d", DType::F64).is_none());
/// ```
pub trait Backend {
    /// Its name in the registry.
    fn kind(&self) -> BackendKind;

    /// The ops and dtypes it supports (default: all).
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    /// The settings it runs with (`maxpool=builtin`), as reports name its variant.
    fn settings(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// The framework's other implementations of ops, beyond the default ones its
    /// interpreter uses.
    fn implementations(&self) -> Vec<Implementation> {
        Vec::new()
    }

    /// This backend with `which` (one of `implementations`) used for its op.
    fn with_implementation(&self, which: &Implementation) -> Result<Box<dyn Backend>> {
        Err(Error::Invalid(format!("{} has no other implementation '{}' of {}", self.kind(), which.name, which.op)))
    }

    /// Raw-kernel timings for `parity-report bench`, when it offers them.
    fn bench_hooks(&self) -> Option<&dyn BenchHooks> {
        None
    }

    /// The program instantiated in this framework with `inputs` as its starting values,
    /// computing natively in `dtype`.
    fn executor(&self, program: &Program, inputs: &[HostTensor], dtype: DType) -> Result<Box<dyn Executor>>;

    /// Instantiates `spec` with `params` (rounded to `dtype` by the caller): its program,
    /// fed a batch at a time.
    fn model(&self, spec: &ModelSpec, params: &ParamSet, dtype: DType) -> Result<Box<dyn ModelRunner>>
    {
        Ok(Box::new(executor::ProgramModel::new(self, spec, params, dtype)?))
    }

    /// Trains the program's parameters with `p = p - lr * g` for `steps` steps,
    /// computing natively in `dtype` and keeping the parameters inside the framework.
    fn train_sgd(&self, program: &Program, inputs: &[HostTensor], lr: f64, steps: usize, dtype: DType) -> Result<Trajectory>
    {
        executor::train_sgd(self, program, inputs, lr, steps, dtype)
    }

    /// Output and gradients at `inputs`: the first step of a run, without its update.
    fn evaluate(&self, program: &Program, inputs: &[HostTensor], dtype: DType) -> Result<Evaluation>
    {
        executor::evaluate(self, program, inputs, dtype)
    }
}

/// Checks that inputs match the program before a backend sees them.
pub(crate) fn check_inputs(program: &Program, inputs: &[HostTensor]) -> Result<()> {
    if program.inputs.len() != inputs.len() {
        return Err(Error::Invalid(format!("the program takes {} inputs, {} were given", program.inputs.len(), inputs.len())));
    }
    for (decl, t) in program.inputs.iter().zip(inputs) {
        if t.data.len() != t.shape.iter().product::<usize>() {
            return Err(Error::Shape(format!("input {}: shape {:?} does not hold {} values", decl.name, t.shape, t.data.len())));
        }
        crate::models::program::check_input_value(decl, t, "the caller")?;
    }
    Ok(())
}
