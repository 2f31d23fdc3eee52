//! The program interpreter of burn: each node is the burn op a burn user would call
//! (burn-tensor's `Tensor` method or burn-nn's module, as the primitives they dispatch
//! to), differentiated by burn-autodiff.
//!
//! Sources cited below are burn 0.22.1's, as published on crates.io.
#![allow(deprecated)]

use burn_backend::ops::{ActivationOps, ConvOptions, FloatTensorOps, IntTensorOps, ModuleOps};
use burn_backend::tensor::{FloatTensor, IntTensor};
use burn_backend::{get_or_init_device_settings, AutodiffBackend, BoolDType, FloatDType, Scalar, Shape, Slice, TensorData};
use burn_ndarray::NdArrayDevice;

use super::{err, inner_to_host, to_host, to_inner, Inner, B};
use crate::backends::executor::{Executor, Outcome, Request};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::host::HostTensor;
use crate::models::program::{check, labels_of, reduced_dims, Checked, GeluApproximate, Reduction};
use crate::models::{Op, Program, Role, ValueType};

type Ft = FloatTensor<B>;
type InnerFt = FloatTensor<Inner>;

/// An input's value between executions, on the backend under the autodiff.
#[derive(Clone)]
enum Slot {
    Empty,
    Float(InnerFt),
    /// Class labels and indices (burn's int tensors).
    Index(IntTensor<Inner>),
}

/// A value during one execution.
#[derive(Clone)]
enum Value {
    Float(Ft),
    Index(IntTensor<B>),
}

impl Value {
    fn float(&self) -> std::result::Result<Ft, String> {
        match self {
            Value::Float(t) => Ok(t.clone()),
            Value::Index(_) => Err("an index tensor where a float one was expected".into()),
        }
    }
    fn index(&self) -> std::result::Result<IntTensor<B>, String> {
        match self {
            Value::Index(t) => Ok(t.clone()),
            Value::Float(_) => Err("a float tensor where an index one was expected".into()),
        }
    }
}

pub struct BurnExecutor {
    program: Program,
    checked: Checked,
    dtype: DType,
    device: NdArrayDevice,
    slots: Vec<Slot>,
    /// Per input: the shape of its current value (a batch may differ from the
    /// program's declared size: the models feed batches of any size).
    slot_shapes: Vec<Vec<usize>>,
    grads: Vec<Option<InnerFt>>,
    velocity: Vec<Option<InnerFt>>,
    /// Per input: whether the program's dataflow carries it to the differentiated scalar
    /// (a gradient burn does not produce for such an input is missing, not zero).
    reaches_root: Vec<bool>,
}

/// A refusal or failure inside the interpreter, named after the op.
type R<T> = std::result::Result<T, String>;

fn refuse<T>(msg: impl Into<String>) -> R<T> {
    Err(msg.into())
}

/// A PyTorch `dim` (negative counts from the back) as an axis.
fn axis(dim: i64, rank: usize) -> usize {
    if dim < 0 {
        (dim + rank as i64) as usize
    } else {
        dim as usize
    }
}

/// burn's shapes have rank >= 1: a 0-d value is held as `[1]`.
fn held(shape: &[usize]) -> Shape {
    if shape.is_empty() {
        Shape::from(vec![1])
    } else {
        Shape::from(shape.to_vec())
    }
}

/// `shape` with leading 1s up to `rank` (burn broadcasts equal ranks only: a burn user
/// unsqueezes first).
fn padded(shape: &[usize], rank: usize) -> Shape {
    let mut s = vec![1; rank.saturating_sub(shape.len())];
    s.extend_from_slice(shape);
    if s.is_empty() {
        s.push(1);
    }
    Shape::from(s)
}

fn bool_dtype(device: &NdArrayDevice) -> BoolDType {
    get_or_init_device_settings::<B>(device).bool_dtype
}

fn float_dtype(dtype: DType) -> FloatDType {
    match dtype {
        DType::F32 => FloatDType::F32,
        DType::F64 => FloatDType::F64,
    }
}

impl BurnExecutor {
    pub fn new(program: &Program, inputs: &[HostTensor], dtype: DType) -> Result<Self> {
        let checked = check(program)?;
        let n = program.inputs.len();
        let mut e = BurnExecutor {
            program: program.clone(),
            checked,
            dtype,
            device: NdArrayDevice::Cpu,
            slots: vec![Slot::Empty; n],
            slot_shapes: program.inputs.iter().map(|d| d.shape.clone()).collect(),
            grads: vec![None; n],
            velocity: vec![None; n],
            reaches_root: program.reaches_root(),
        };
        for (i, t) in inputs.iter().enumerate() {
            e.set_input(i, t)?;
        }
        Ok(e)
    }

    fn constant(&self, t: &HostTensor) -> Ft {
        B::from_inner(to_inner(t, self.dtype))
    }

    fn filled(&self, shape: &[usize], v: f64) -> Ft {
        self.constant(&HostTensor::filled(shape, v))
    }

    /// One forward pass. Returns the reported values, the differentiated scalar, the
    /// autodiff leaves of the inputs that need gradients, and running-statistics updates.
    #[allow(clippy::type_complexity)]
    fn forward(&self, req: Request) -> R<(Vec<(Ft, Vec<usize>)>, Option<Ft>, Vec<Option<Ft>>, Vec<(usize, InnerFt)>)> {
        let n_inputs = self.program.inputs.len();
        let mut values: Vec<Value> = Vec::with_capacity(n_inputs + self.program.nodes.len());
        let mut leaves: Vec<Option<Ft>> = vec![None; n_inputs];
        for (i, d) in self.program.inputs.iter().enumerate() {
            values.push(match &self.slots[i] {
                Slot::Empty => return refuse(format!("input '{}' has no value", d.name)),
                Slot::Index(t) => Value::Index(B::int_from_inner(t.clone())),
                Slot::Float(t) => {
                    let t = B::from_inner(t.clone());
                    if req.backward && d.needs_grad() {
                        let t = B::float_set_require_grad(t, true);
                        leaves[i] = Some(t.clone());
                        Value::Float(t)
                    } else {
                        Value::Float(t)
                    }
                }
            });
        }
        let mut updates: Vec<(usize, InnerFt)> = Vec::new();
        // The shapes of this execution's values (inferred from the inputs' actual shapes).
        let mut shapes: Vec<Vec<usize>> = self.slot_shapes.clone();
        for (k, node) in self.program.nodes.iter().enumerate() {
            let args = &self.checked.args[k];
            let op = if req.eval { node.op.in_eval_mode() } else { node.op.clone() };
            let given: Vec<Option<&[usize]>> = args.iter().map(|a| a.map(|v| shapes[v].as_slice())).collect();
            let out_shape = &crate::models::program::infer(&op, &given).map_err(|e| format!("{}: {e}", op.name()))?;
            let arg = |i: usize| args.get(i).copied().flatten();
            let f = |i: usize| -> R<Ft> { values[arg(i).ok_or("a required input is absent")?].float() };
            let fo = |i: usize| -> R<Option<Ft>> { arg(i).map(|v| values[v].float()).transpose() };
            let shape_of = |i: usize| -> &[usize] { arg(i).map(|v| shapes[v].as_slice()).unwrap_or(&[]) };
            let rank = |i: usize| shape_of(i).len();
            // Operands brought to the rank of the output.
            let lifted = |i: usize| -> R<Ft> { Ok(B::float_reshape(f(i)?, padded(shape_of(i), out_shape.len()))) };
            // Operands expanded to the output's shape (burn's mask ops take equal shapes).
            let expanded = |i: usize| -> R<Ft> { Ok(B::float_expand(lifted(i)?, held(out_shape))) };
            let name = op.name();
            let y: Ft = (|| -> R<Ft> {
                Ok(match op {
                    Op::MatMul {} => matmul(f(0)?, shape_of(0), f(1)?, shape_of(1), out_shape),
                    Op::Add {} => B::float_add(lifted(0)?, lifted(1)?),
                    Op::Sub {} => B::float_sub(lifted(0)?, lifted(1)?),
                    Op::Mul {} => B::float_mul(lifted(0)?, lifted(1)?),
                    Op::Div {} => B::float_div(lifted(0)?, lifted(1)?),
                    // burn-tensor's `max_pair` (src/tensor/api/orderable.rs):
                    // `self.mask_where(self.lower(other), other)`.
                    Op::Maximum {} => {
                        let (a, b) = (expanded(0)?, expanded(1)?);
                        let mask = B::float_lower(a.clone(), b.clone(), bool_dtype(&self.device));
                        B::float_mask_where(a, mask, b)
                    }
                    Op::Neg {} => B::float_neg(f(0)?),
                    Op::Sigmoid {} => B::sigmoid(f(0)?),
                    // burn-tensor's `square` is `powi_scalar(2)` (src/bridge/ops/float.rs).
                    Op::Square {} => B::float_powi_scalar(f(0)?, Scalar::from(2i64)),
                    Op::Relu {} => B::relu(f(0)?),
                    Op::Tanh {} => B::float_tanh(f(0)?),
                    Op::Exp {} => B::float_exp(f(0)?),
                    Op::Log {} => B::float_log(f(0)?),
                    Op::Gelu { approximate: GeluApproximate::None } => B::gelu(f(0)?),
                    // burn-tensor's `activation::gelu_approximate`
                    // (src/tensor/activation/base.rs).
                    Op::Gelu { approximate: GeluApproximate::Tanh } => {
                        const SQRT_2_OVER_PI: f64 = core::f64::consts::FRAC_2_SQRT_PI * core::f64::consts::FRAC_1_SQRT_2;
                        let x = f(0)?;
                        let cube = B::float_powf_scalar(x.clone(), Scalar::from(3.0f64));
                        let inner = B::float_add(x.clone(), B::float_mul_scalar(cube, Scalar::from(0.044715f64)));
                        let inner = B::float_mul_scalar(inner, Scalar::from(SQRT_2_OVER_PI));
                        let t = B::float_add_scalar(B::float_tanh(inner), Scalar::from(1i64));
                        B::float_mul_scalar(B::float_mul(x, t), Scalar::from(0.5f64))
                    }
                    // burn-tensor's `activation::silu`: `x * sigmoid(x)`.
                    Op::Silu {} => {
                        let x = f(0)?;
                        B::float_mul(x.clone(), B::sigmoid(x))
                    }
                    // burn-tensor's `activation::elu`: `x.mask_where(x <= 0, (exp(x) - 1) * alpha)`.
                    Op::Elu { alpha } => {
                        let x = f(0)?;
                        let mask = B::float_lower_equal_elem(x.clone(), Scalar::from(0i64), bool_dtype(&self.device));
                        let scaled = B::float_mul_scalar(B::float_sub_scalar(B::float_exp(x.clone()), Scalar::from(1i64)), Scalar::from(alpha));
                        B::float_mask_where(x, mask, scaled)
                    }
                    Op::LeakyRelu { negative_slope } => B::leaky_relu(f(0)?, Scalar::from(negative_slope)),
                    Op::Softplus { beta, threshold } => softplus(f(0)?, beta, threshold, self.dtype, &self.device),
                    Op::Sqrt {} => B::float_sqrt(f(0)?),
                    Op::Abs {} => B::float_abs(f(0)?),
                    Op::Clamp { min, max } => match (min, max) {
                        (Some(lo), Some(hi)) => B::float_clamp(f(0)?, Scalar::from(lo), Scalar::from(hi)),
                        (Some(lo), None) => B::float_clamp_min(f(0)?, Scalar::from(lo)),
                        (None, Some(hi)) => B::float_clamp_max(f(0)?, Scalar::from(hi)),
                        (None, None) => return refuse("neither min nor max given"),
                    },
                    Op::Pow { exponent } => B::float_powf_scalar(f(0)?, Scalar::from(exponent)),
                    Op::Sum {} => B::float_sum(f(0)?),
                    Op::Mean {} => B::float_mean(f(0)?),
                    // burn's sum_dim / mean_dim / max_dim keep the reduced dimension; without
                    // keepdim a burn user reshapes (squeezes) afterwards.
                    Op::SumDim { ref dim, .. } | Op::MeanDim { ref dim, .. } | Op::Amax { ref dim, .. } => {
                        let axes = reduced_dims(dim, rank(0))?;
                        let mut y = f(0)?;
                        for &d in &axes {
                            y = match op {
                                Op::SumDim { .. } => B::float_sum_dim(y, d),
                                Op::MeanDim { .. } => B::float_mean_dim(y, d),
                                _ => B::float_max_dim(y, d),
                            };
                        }
                        B::float_reshape(y, held(out_shape))
                    }
                    Op::MaxPool2d { kernel, stride, padding, ceil_mode } => {
                        let s = stride.unwrap_or(kernel);
                        B::max_pool2d(f(0)?, [kernel, kernel], [s, s], [padding, padding], [1, 1], ceil_mode)
                    }
                    Op::ConvTranspose2d { stride, padding, output_padding, dilation, groups } => {
                        let options = burn_backend::ops::ConvTransposeOptions::new([stride, stride], [padding, padding], [output_padding, output_padding], [dilation, dilation], groups);
                        B::conv_transpose2d(f(0)?, f(1)?, fo(2)?, options)
                    }
                    Op::AvgPool2d { kernel, stride, padding, ceil_mode, count_include_pad } => {
                        let s = stride.unwrap_or(kernel);
                        B::avg_pool2d(f(0)?, [kernel, kernel], [s, s], [padding, padding], count_include_pad, ceil_mode)
                    }
                    Op::AdaptiveAvgPool2d { output_size } => B::adaptive_avg_pool2d(f(0)?, output_size),
                    // burn-tensor's `interpolate` with a scale factor resolves the output size
                    // as floor(size · factor) and hands it to the backend, as here.
                    Op::UpsampleNearest2d { scale_factor } => {
                        let sh = shape_of(0);
                        let size = [sh[2] * scale_factor, sh[3] * scale_factor];
                        let options = burn_backend::ops::InterpolateOptions::new(burn_backend::ops::InterpolateMode::Nearest);
                        B::interpolate(f(0)?, size, options)
                    }
                    Op::Conv2d { stride, padding, dilation, groups } => {
                        B::conv2d(f(0)?, f(1)?, fo(2)?, ConvOptions::new([stride, stride], [padding, padding], [dilation, dilation], groups))
                    }
                    // burn's Linear keeps its weight as `[in, out]` (burn-import transposes
                    // PyTorch's `[out, in]` on loading): the weight enters transposed.
                    Op::Linear {} => B::linear(f(0)?, B::float_swap_dims(f(1)?, 0, 1), fo(2)?),
                    Op::BatchNorm { training, momentum, eps } => {
                        let x = f(0)?;
                        let c = shape_of(0)[1];
                        // burn's batch norm always has gamma and beta (burn-nn's BatchNorm
                        // creates them): absent ones are the constants 1 and 0 (exact).
                        let gamma = fo(1)?.unwrap_or_else(|| self.filled(&[c], 1.0));
                        let beta = fo(2)?.unwrap_or_else(|| self.filled(&[c], 0.0));
                        let stats = match (arg(3), arg(4)) {
                            (Some(rm), Some(rv)) => Some((rm, rv)),
                            _ => None,
                        };
                        if training {
                            let out = B::batch_norm_train(x, gamma, beta, eps);
                            if let Some((rm_v, rv_v)) = stats {
                                // PyTorch's rule, with burn ops: the running variance takes the
                                // *unbiased* batch variance. (burn-nn's BatchNorm::forward_train,
                                // src/modules/norm/batch.rs, takes the biased one: a difference
                                // from PyTorch, not followed here.)
                                let m = shapes[arg(0).expect("checked")].iter().product::<usize>() / c;
                                let (Slot::Float(rm), Slot::Float(rv)) = (&self.slots[rm_v], &self.slots[rv_v]) else {
                                    return refuse("running statistics are float state");
                                };
                                let mean = B::inner(out.mean);
                                let var = B::inner(out.variance);
                                let unbiased = Inner::float_mul_scalar(var, Scalar::from(m as f64 / (m as f64 - 1.0)));
                                let new_rm = Inner::float_add(Inner::float_mul_scalar(rm.clone(), Scalar::from(1.0 - momentum)), Inner::float_mul_scalar(mean, Scalar::from(momentum)));
                                let new_rv = Inner::float_add(Inner::float_mul_scalar(rv.clone(), Scalar::from(1.0 - momentum)), Inner::float_mul_scalar(unbiased, Scalar::from(momentum)));
                                updates.push((rm_v, new_rm));
                                updates.push((rv_v, new_rv));
                            }
                            out.output
                        } else {
                            let (rm, rv) = stats.ok_or("eval mode needs running statistics")?;
                            B::batch_norm(x, gamma, beta, values[rm].float()?, values[rv].float()?, eps)
                        }
                    }
                    // burn-nn's LayerNorm normalises the last dimension (`ModuleOps::layer_norm`):
                    // over several trailing dimensions the input is viewed as rows of their
                    // product. Its gamma always exists: an absent weight is the constant 1.
                    Op::LayerNorm { ref normalized_shape, eps } => {
                        let len: usize = normalized_shape.iter().product();
                        let rows = B::float_reshape(f(0)?, Shape::from(vec![shapes[arg(0).expect("checked")].iter().product::<usize>() / len.max(1), len]));
                        let gamma = match fo(1)? {
                            Some(w) => B::float_reshape(w, Shape::from(vec![len])),
                            None => self.filled(&[len], 1.0),
                        };
                        let beta = fo(2)?.map(|b| B::float_reshape(b, Shape::from(vec![len])));
                        B::float_reshape(B::layer_norm(rows, gamma, beta, eps), held(out_shape))
                    }
                    Op::RmsNorm { ref normalized_shape, eps } => {
                        let eps = eps.unwrap_or(self.dtype.epsilon());
                        let len: usize = normalized_shape.iter().product();
                        let rows = B::float_reshape(f(0)?, Shape::from(vec![shapes[arg(0).expect("checked")].iter().product::<usize>() / len.max(1), len]));
                        let gamma = match fo(1)? {
                            Some(w) => B::float_reshape(w, Shape::from(vec![1, len])),
                            None => self.filled(&[1, len], 1.0),
                        };
                        B::float_reshape(rms_norm(rows, gamma, eps, self.dtype), held(out_shape))
                    }
                    Op::GroupNorm { num_groups, eps } => group_norm(f(0)?, shape_of(0), fo(1)?, fo(2)?, num_groups, eps, |s, v| self.filled(s, v))?,
                    Op::Softmax { dim } => B::softmax(f(0)?, axis(dim, rank(0))),
                    Op::LogSoftmax { dim } => B::log_softmax(f(0)?, axis(dim, rank(0))),
                    Op::NllLoss { .. } => {
                        return refuse("burn 0.22.1 has no nll_loss: burn-nn's CrossEntropyLoss takes logits (log_softmax inside) or probabilities (log inside), never log-probabilities")
                    }
                    Op::CrossEntropy { reduction, label_smoothing } => {
                        if reduction != Reduction::Mean {
                            return refuse(format!("burn-nn's CrossEntropyLoss averages only (reduction {reduction:?} asked for)"));
                        }
                        let labels = values[arg(1).expect("checked")].index()?;
                        cross_entropy(f(0)?, labels, shape_of(0), label_smoothing, |t| self.constant(t))
                    }
                    // burn-nn's MseLoss (src/loss/mse.rs): `logits.sub(targets).square()`,
                    // then mean, sum, or nothing (`forward_no_reduction`).
                    Op::MseLoss { reduction } => {
                        let sq = B::float_powi_scalar(B::float_sub(f(0)?, f(1)?), Scalar::from(2i64));
                        match reduction {
                            Reduction::Mean => B::float_mean(sq),
                            Reduction::Sum => B::float_sum(sq),
                            Reduction::None => sq,
                        }
                    }
                    // burn-nn's Dropout::forward (src/modules/dropout.rs), with the given mask in
                    // place of its Bernoulli draw: `(input * mask) * (1 / prob_keep)`.
                    Op::Dropout { p, training } => {
                        if training {
                            let x = B::float_mul(lifted(0)?, lifted(1)?);
                            B::float_mul_scalar(x, Scalar::from(1.0 / (1.0 - p)))
                        } else {
                            f(0)?
                        }
                    }
                    Op::Reshape { .. } | Op::Flatten { .. } => B::float_reshape(f(0)?, held(out_shape)),
                    Op::Permute { ref dims } => {
                        let axes: Vec<usize> = dims.iter().map(|&d| axis(d, rank(0))).collect();
                        B::float_permute(f(0)?, &axes)
                    }
                    Op::Transpose { dim0, dim1 } => {
                        if rank(0) == 0 {
                            f(0)?
                        } else {
                            B::float_swap_dims(f(0)?, axis(dim0, rank(0)), axis(dim1, rank(0)))
                        }
                    }
                    Op::Concat { dim } => {
                        let xs: Vec<Ft> = (0..args.len()).map(f).collect::<R<_>>()?;
                        B::float_cat(xs, axis(dim, rank(0)))
                    }
                    // burn-tensor's `narrow` (src/tensor/api/base.rs): a slice.
                    Op::Narrow { dim, start, length } => {
                        let s = shape_of(0);
                        let d = axis(dim, s.len());
                        let start = if start < 0 { start + s[d] as i64 } else { start } as usize;
                        let slices: Vec<Slice> =
                            s.iter().enumerate().map(|(i, &n)| if i == d { Slice::from(start..start + length) } else { Slice::from(0..n) }).collect();
                        B::float_slice(f(0)?, &slices)
                    }
                    Op::IndexSelect { dim } => B::float_select(f(0)?, axis(dim, rank(0)), values[arg(1).expect("checked")].index()?),
                    // burn's embedding takes `[batch, seq]` indices (burn-nn's Embedding takes a
                    // `Tensor<2, Int>`): others are viewed as one row. It has no padding_idx.
                    Op::Embedding { padding_idx } => {
                        if let Some(p) = padding_idx {
                            return refuse(format!("burn-nn's Embedding has no padding_idx (padding_idx {p} asked for)"));
                        }
                        let n: usize = shape_of(1).iter().product();
                        let idx = B::int_reshape(values[arg(1).expect("checked")].index()?, Shape::from(vec![1, n]));
                        B::float_reshape(B::embedding(f(0)?, idx), held(out_shape))
                    }
                    // torch.where(cond, a, b) is burn's `b.mask_where(cond, a)`.
                    Op::Where {} => {
                        let cond = B::float_not_equal_elem(expanded(0)?, Scalar::from(0i64), bool_dtype(&self.device));
                        B::float_mask_where(expanded(2)?, cond, expanded(1)?)
                    }
                    Op::MaskedFill { value } => {
                        let mask = B::float_not_equal_elem(expanded(1)?, Scalar::from(0i64), bool_dtype(&self.device));
                        B::float_mask_fill(expanded(0)?, mask, Scalar::from(value))
                    }
                })
            })()
            .map_err(|e| format!("{name}: {e}"))?;
            values.push(Value::Float(y));
            shapes.push(out_shape.clone());
        }
        let out: Vec<(Ft, Vec<usize>)> = if req.all_values {
            (n_inputs..values.len()).map(|v| Ok((values[v].float()?, shapes[v].clone()))).collect::<R<_>>()?
        } else {
            self.checked.outputs.iter().map(|(v, _)| Ok((values[*v].float()?, shapes[*v].clone()))).collect::<R<_>>()?
        };
        let root = match self.checked.loss {
            Some(l) => Some(values[l].float()?),
            None => {
                let mut total: Option<Ft> = None;
                for (v, cot) in &self.checked.outputs {
                    let Some(cot) = cot else { continue };
                    let s = B::float_sum(B::float_mul(values[*v].float()?, self.constant(cot)));
                    total = Some(match total {
                        None => s,
                        Some(t) => B::float_add(t, s),
                    });
                }
                total
            }
        };
        Ok((out, root, leaves, updates))
    }

    fn run_unguarded(&mut self, req: Request) -> Result<Outcome> {
        let n = self.program.inputs.len();
        let (values, root, leaves, updates) = self.forward(req).map_err(err)?;
        for (i, t) in updates {
            self.slots[i] = Slot::Float(t);
        }
        let mut out = Outcome {
            loss: None,
            values: values.into_iter().map(|(v, s)| to_host(v, &s)).collect::<Result<_>>()?,
            grads: vec![None; n],
        };
        if self.checked.loss.is_some() {
            if let Some(r) = &root {
                out.loss = Some(to_host(r.clone(), &[])?.data[0]);
            }
        }
        if let (true, Some(root)) = (req.backward, root) {
            let grads = B::backward(root);
            for i in 0..n {
                let Some(leaf) = &leaves[i] else { continue };
                let g = match B::grad(leaf, &grads) {
                    Some(g) => g,
                    // A gradient burn's backward never produced, for an input the program
                    // carries to the loss: missing, not zero.
                    None if self.reaches_root[i] => {
                        return Err(err(format!("gradient missing: no gradient reached input '{}' (an op on its path to the loss has no backward)", self.program.inputs[i].name)))
                    }
                    None => to_inner(&HostTensor::filled(&self.slot_shapes[i], 0.0), self.dtype),
                };
                if req.host_grads {
                    out.grads[i] = Some(inner_to_host(g.clone(), &self.slot_shapes[i])?);
                }
                self.grads[i] = Some(g);
            }
        }
        Ok(out)
    }

    /// burn-optim's SGD (src/optim/sgd.rs, `Sgd::step`): `tensor - grad.mul_scalar(lr)`,
    /// the gradient passed first through burn-optim's `Momentum::transform`
    /// (src/optim/momentum.rs) when there is momentum, configured with PyTorch's
    /// hyper-parameters (dampening 0, no Nesterov):
    /// `velocity = grad·(1 - dampening) + velocity·momentum`, the first step's velocity the
    /// gradient itself: PyTorch's rule. burn-optim keeps `momentum` as an `f32`
    /// (`Momentum { momentum: f32, .. }`, `config.momentum.elem()`), so the factor is
    /// rounded to f32 here too. burn-optim cannot be linked (it depends on burn-core and
    /// so on burn-tensor, see `mod.rs`): this is its rule transcribed with the same ops.
    fn sgd_unguarded(&mut self, lr: f64, momentum: Option<f64>) -> Result<()> {
        for i in 0..self.slots.len() {
            if self.program.inputs[i].role != Role::Param {
                continue;
            }
            let (Some(g), Slot::Float(p)) = (&self.grads[i], &self.slots[i]) else { continue };
            let grad = match momentum {
                None => g.clone(),
                Some(m) => {
                    let m32 = m as f32;
                    let dampening = 0.0f64;
                    let v = match self.velocity[i].take() {
                        None => g.clone(),
                        Some(v) => Inner::float_add(Inner::float_mul_scalar(g.clone(), Scalar::from(1.0 - dampening)), Inner::float_mul_scalar(v, Scalar::from(m32))),
                    };
                    self.velocity[i] = Some(v.clone());
                    v
                }
            };
            let delta = Inner::float_mul_scalar(grad, Scalar::from(lr));
            self.slots[i] = Slot::Float(Inner::float_sub(p.clone(), delta));
        }
        Ok(())
    }
}

/// `torch.matmul` with burn's matmul: a vector operand becomes a one-row (left) or
/// one-column (right) matrix, ranks are made equal with leading 1s (burn's matmul takes
/// equal ranks and broadcasts batch dimensions), and the result takes the program's
/// shape. The `[.., 1, k] @ [1, k, ..]` case is burn-tensor's `Tensor::matmul`
/// (src/tensor/api/numeric.rs), which swaps the dimensions first.
fn matmul(a: Ft, sa: &[usize], b: Ft, sb: &[usize], out: &[usize]) -> Ft {
    let mut sa2 = sa.to_vec();
    let mut sb2 = sb.to_vec();
    if sa.len() == 1 {
        sa2.insert(0, 1);
    }
    if sb.len() == 1 {
        sb2.push(1);
    }
    let r = sa2.len().max(sb2.len());
    let (pa, pb) = (padded(&sa2, r), padded(&sb2, r));
    let (a, b) = (B::float_reshape(a, pa.clone()), B::float_reshape(b, pb.clone()));
    let y = if r >= 3 && pa[r - 2] == 1 && pb[r - 3] == 1 && pa[r - 1] == pb[r - 2] {
        B::float_swap_dims(B::float_matmul(B::float_swap_dims(a, r - 3, r - 2), b), r - 3, r - 2)
    } else {
        B::float_matmul(a, b)
    };
    B::float_reshape(y, held(out))
}

/// burn-tensor's `activation::softplus_with_threshold` (src/tensor/activation/base.rs):
/// the threshold lowered to the dtype's finite `exp` range (709 in f64, 88 in f32),
/// `log1p(exp(min(beta·x, threshold))) / beta` where `beta·x <= threshold`, else `x`.
fn softplus(x: Ft, beta: f64, threshold: f64, dtype: DType, device: &NdArrayDevice) -> Ft {
    let limit = match dtype {
        DType::F64 => 709.0,
        DType::F32 => 88.0,
    };
    let threshold = threshold.min(limit);
    let scaled = B::float_mul_scalar(x.clone(), Scalar::from(beta));
    let mask = B::float_greater_elem(scaled.clone(), Scalar::from(threshold), bool_dtype(device));
    let nonlinear = B::float_div_scalar(B::float_log1p(B::float_exp(B::float_mask_fill(scaled, mask.clone(), Scalar::from(threshold)))), Scalar::from(beta));
    B::float_mask_where(nonlinear, mask, x)
}

/// burn-nn's `RmsNorm::forward` (src/modules/norm/rms.rs) over rows: the root mean
/// square computed in f32 whatever the input's dtype
/// (`x.cast(F32).square().mean_dim(last) + eps).sqrt()`), cast back, then
/// `x / rms * gamma`.
fn rms_norm(rows: Ft, gamma: Ft, eps: f64, dtype: DType) -> Ft {
    let x32 = B::float_cast(rows.clone(), FloatDType::F32);
    let ms = B::float_mean_dim(B::float_powi_scalar(x32, Scalar::from(2i64)), 1);
    let rms = B::float_sqrt(B::float_add_scalar(ms, Scalar::from(eps)));
    let rms = B::float_cast(rms, float_dtype(dtype));
    B::float_mul(B::float_div(rows, rms), gamma)
}

/// burn-nn's `group_norm` (src/modules/norm/group.rs): `[N, G, rest]`, the mean
/// subtracted, divided by `sqrt(mean(square) + eps)`, then the affine. burn-nn takes a
/// weight and a bias together or neither (`affine`); one without the other is given the
/// constant 1 or 0 for the missing one (exact). burn-nn refuses inputs of at most two
/// elements (its rank check counts elements: `shape.num_elements() <= 2` panics).
fn group_norm(x: Ft, shape: &[usize], w: Option<Ft>, b: Option<Ft>, groups: usize, eps: f64, filled: impl Fn(&[usize], f64) -> Ft) -> R<Ft> {
    let elements: usize = shape.iter().product();
    if elements <= 2 {
        return refuse(format!(
            "burn-nn's group_norm refuses an input of {elements} elements (shape {shape:?}): it checks `num_elements() <= 2` where it means the rank"
        ));
    }
    let (n, c) = (shape[0], shape[1]);
    let hidden = shape[2..].iter().product::<usize>() * c / groups;
    let input = B::float_reshape(x, Shape::from(vec![n, groups, hidden]));
    let mean = B::float_mean_dim(input.clone(), 2);
    let input = B::float_sub(input, mean);
    let var = B::float_mean_dim(B::float_powi_scalar(input.clone(), Scalar::from(2i64)), 2);
    let normalized = B::float_div(input, B::float_sqrt(B::float_add_scalar(var, Scalar::from(eps))));
    let normalized = B::float_reshape(normalized, Shape::from(shape.to_vec()));
    if w.is_none() && b.is_none() {
        return Ok(normalized);
    }
    let mut affine = vec![1; shape.len()];
    affine[1] = c;
    let w = w.unwrap_or_else(|| filled(&[c], 1.0));
    let b = b.unwrap_or_else(|| filled(&[c], 0.0));
    Ok(B::float_add(B::float_mul(normalized, B::float_reshape(w, Shape::from(affine.clone()))), B::float_reshape(b, Shape::from(affine))))
}

/// burn-nn's `CrossEntropyLoss::forward` (src/loss/cross_entropy.rs) with logits, no
/// weights and no padding tokens. Without smoothing (`forward_default`):
/// `-mean(log_softmax(logits, 1).gather(1, targets))`. With it (`forward_smoothed`,
/// `smoothing: Option<f32>`): the one-hot targets times `(1 - alpha)` plus
/// `alpha / classes`, both computed in f32 as burn-nn does, then
/// `-mean(sum_dim(log_softmax · targets, 1))`.
fn cross_entropy(logits: Ft, labels: IntTensor<B>, shape: &[usize], label_smoothing: f64, constant: impl Fn(&HostTensor) -> Ft) -> Ft {
    let (n, c) = (shape[0], shape[1]);
    let logp = B::log_softmax(logits, 1);
    if label_smoothing == 0.0 {
        let idx = B::int_reshape(labels, Shape::from(vec![n, 1]));
        let picked = B::float_reshape(B::float_gather(1, logp, idx), Shape::from(vec![n]));
        return B::float_neg(B::float_mean(picked));
    }
    let alpha = label_smoothing as f32;
    // The one-hot matrix (burn-nn builds it with a scatter of ones: 0/1 entries, exact).
    let labels_host = super::to_host_int(labels);
    let mut onehot = HostTensor::filled(&[n, c], 0.0);
    for (row, &l) in labels_host.iter().enumerate() {
        onehot.data[row * c + l] = 1.0;
    }
    let targets = B::float_add_scalar(B::float_mul_scalar(constant(&onehot), Scalar::from((1.0f32 - alpha) as f64)), Scalar::from((alpha / c as f32) as f64));
    let summed = B::float_reshape(B::float_sum_dim(B::float_mul(logp, targets), 1), Shape::from(vec![n]));
    B::float_neg(B::float_mean(summed))
}

impl Executor for BurnExecutor {
    fn set_input(&mut self, index: usize, value: &HostTensor) -> Result<()> {
        let d = self.program.inputs.get(index).ok_or_else(|| Error::Invalid(format!("no input {index}")))?;
        self.slots[index] = if d.value_type == ValueType::Index {
            let l: Vec<i64> = labels_of(value, i64::MAX as usize, &d.name)?.into_iter().map(|v| v as i64).collect();
            let t = crate::backends::guarded("burn", || Ok(Inner::int_from_data(TensorData::new(l, held(&value.shape)), &self.device)))?;
            Slot::Index(t)
        } else {
            Slot::Float(crate::backends::guarded("burn", || Ok(to_inner(value, self.dtype)))?)
        };
        self.slot_shapes[index] = value.shape.clone();
        Ok(())
    }

    fn input(&self, index: usize) -> Result<HostTensor> {
        let shape = &self.slot_shapes[index];
        match &self.slots[index] {
            Slot::Float(t) => inner_to_host(t.clone(), shape),
            Slot::Index(t) => Ok(HostTensor { shape: shape.clone(), data: super::to_host_int(B::int_from_inner(t.clone())).into_iter().map(|v| v as f64).collect() }),
            Slot::Empty => Err(Error::Invalid(format!("input '{}' has no value", self.program.inputs[index].name))),
        }
    }

    fn run(&mut self, req: Request) -> Result<Outcome> {
        crate::backends::guarded("burn", || self.run_unguarded(req))
    }

    fn sgd_step(&mut self, lr: f64, momentum: Option<f64>) -> Result<()> {
        crate::backends::guarded("burn", || self.sgd_unguarded(lr, momentum))
    }

    fn velocity(&self, index: usize) -> Result<Option<HostTensor>> {
        let shape = &self.slot_shapes[index];
        self.velocity.get(index).and_then(|v| v.clone()).map(|v| inner_to_host(v, shape)).transpose()
    }

    fn set_velocity(&mut self, index: usize, value: &HostTensor) -> Result<()> {
        let t = to_inner(value, self.dtype);
        let slot = self.velocity.get_mut(index).ok_or_else(|| Error::Invalid(format!("no input {index}")))?;
        *slot = Some(t);
        Ok(())
    }
}
