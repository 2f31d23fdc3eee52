//! The program interpreter of libtorch: each node is the ATen op a PyTorch user would
//! call (`torch.nn.functional`), differentiated by PyTorch's autograd; the momentum SGD
//! is `torch::optim::SGD` itself.

use tch::{COptimizer, Kind, TchError, Tensor};

use super::{err, to_host, to_torch};
use crate::backends::executor::{Executor, Outcome, Request};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::host::HostTensor;
use crate::models::program::{check, labels_of, Checked, Reduction};
use crate::models::{Op, Program, Role, ValueType};

pub struct TorchExecutor {
    program: Program,
    checked: Checked,
    dtype: DType,
    /// Per input: parameters and other inputs that need a gradient have requires_grad.
    tensors: Vec<Option<Tensor>>,
    /// Created on the first momentum step, so its hyper-parameters come from `sgd_step`.
    optimizer: Option<(COptimizer, f64, f64)>,
    /// With `track_velocity`: a copy of the optimiser's momentum buffers, updated with
    /// the very ops `torch::optim::SGD` runs (`buf.mul_(m).add_(g)`, a clone of the first
    /// gradient), since the C++ optimiser does not hand its state out.
    mirror: Option<Vec<Option<Tensor>>>,
    /// Momentum buffers to install when the optimiser is created (a resumed run).
    pending: Vec<Option<Tensor>>,
    /// Another implementation of libtorch's to use for its op (`alternatives.rs`).
    pub alternative: Option<crate::backends::Implementation>,
}

impl TorchExecutor {
    pub fn new(program: &Program, inputs: &[HostTensor], dtype: DType) -> Result<Self> {
        let checked = check(program)?;
        let n = program.inputs.len();
        let mut e = TorchExecutor {
            program: program.clone(),
            checked,
            dtype,
            tensors: (0..n).map(|_| None).collect(),
            optimizer: None,
            mirror: None,
            pending: (0..n).map(|_| None).collect(),
            alternative: None,
        };
        for (i, t) in inputs.iter().enumerate() {
            e.set_input(i, t)?;
        }
        Ok(e)
    }

    fn forward(&self, req: Request) -> Result<(Vec<Tensor>, Option<Tensor>), TchError> {
        let n_inputs = self.program.inputs.len();
        let mut values: Vec<Option<Tensor>> = self.tensors.iter().map(|t| t.as_ref().map(Tensor::shallow_clone)).collect();
        for (k, node) in self.program.nodes.iter().enumerate() {
            let args = &self.checked.args[k];
            let op = if req.eval { node.op.in_eval_mode() } else { node.op.clone() };
            let a = |i: usize| args.get(i).copied().flatten().map(|v| values[v].as_ref().expect("computed"));
            let x = a(0).expect("checked");
            let mut other = match self.alternative {
                Some(which) if which.op == op.name() => super::alternatives::apply(which.name, &op, x, a(1), a(2))?,
                _ => None,
            };
            let y = match op {
                _ if other.is_some() => other.take().expect("just checked"),
                Op::MatMul {} => x.f_matmul(a(1).expect("checked"))?,
                Op::Add {} => x.f_add(a(1).expect("checked"))?,
                Op::Sub {} => x.f_sub(a(1).expect("checked"))?,
                Op::Mul {} => x.f_mul(a(1).expect("checked"))?,
                Op::Div {} => x.f_div(a(1).expect("checked"))?,
                Op::Maximum {} => x.f_maximum(a(1).expect("checked"))?,
                Op::Neg {} => x.f_neg()?,
                Op::Sigmoid {} => x.f_sigmoid()?,
                Op::Square {} => x.f_square()?,
                Op::Relu {} => x.f_relu()?,
                Op::Tanh {} => x.f_tanh()?,
                Op::Exp {} => x.f_exp()?,
                Op::Log {} => x.f_log()?,
                Op::Gelu { approximate } => x.f_gelu(approximate.name())?,
                Op::Silu {} => x.f_silu()?,
                // tch 0.26 binds elu, leaky_relu and softplus with their default attributes
                // only (`atg_elu(self)`, ...): other values are refused, not emulated.
                Op::Elu { alpha } if alpha == 1.0 => x.f_elu()?,
                Op::Elu { alpha } => return Err(unbound("elu", format!("alpha {alpha}"))),
                Op::LeakyRelu { negative_slope } if negative_slope == 0.01 => x.f_leaky_relu()?,
                Op::LeakyRelu { negative_slope } => return Err(unbound("leaky_relu", format!("negative_slope {negative_slope}"))),
                Op::Softplus { beta, threshold } if beta == 1.0 && threshold == 20.0 => x.f_softplus()?,
                Op::Softplus { beta, threshold } => return Err(unbound("softplus", format!("beta {beta}, threshold {threshold}"))),
                Op::Sqrt {} => x.f_sqrt()?,
                Op::Abs {} => x.f_abs()?,
                Op::Clamp { min, max } => match (min, max) {
                    (Some(lo), Some(hi)) => x.f_clamp(lo, hi)?,
                    (Some(lo), None) => x.f_clamp_min(lo)?,
                    (None, Some(hi)) => x.f_clamp_max(hi)?,
                    (None, None) => return Err(TchError::Kind("clamp: neither min nor max given".into())),
                },
                Op::Pow { exponent } => x.f_pow_tensor_scalar(exponent)?,
                Op::Sum {} => x.f_sum(x.kind())?,
                Op::Mean {} => x.f_mean(x.kind())?,
                Op::SumDim { ref dim, keepdim } => x.f_sum_dim_intlist(dim.as_slice(), keepdim, x.kind())?,
                Op::MeanDim { ref dim, keepdim } => x.f_mean_dim(dim.as_slice(), keepdim, x.kind())?,
                Op::Amax { ref dim, keepdim } => x.f_amax(dim.as_slice(), keepdim)?,
                Op::MaxPool2d { kernel, stride, padding, ceil_mode } => {
                    let (k, s, p) = (kernel as i64, stride.unwrap_or(kernel) as i64, padding as i64);
                    x.f_max_pool2d([k, k], [s, s], [p, p], [1, 1], ceil_mode)?
                }
                Op::Conv2d { stride, padding, dilation, groups } => {
                    let (s, p, d) = (stride as i64, padding as i64, dilation as i64);
                    x.f_conv2d(a(1).expect("checked"), a(2), [s, s], [p, p], [d, d], groups as i64)?
                }
                Op::ConvTranspose2d { stride, padding, output_padding, dilation, groups } => {
                    let (s, p, op, d) = (stride as i64, padding as i64, output_padding as i64, dilation as i64);
                    x.f_conv_transpose2d(a(1).expect("checked"), a(2), [s, s], [p, p], [op, op], groups as i64, [d, d])?
                }
                Op::AvgPool2d { kernel, stride, padding, ceil_mode, count_include_pad } => {
                    let (k, s, p) = (kernel as i64, stride.unwrap_or(kernel) as i64, padding as i64);
                    x.f_avg_pool2d([k, k], [s, s], [p, p], ceil_mode, count_include_pad, None::<i64>)?
                }
                Op::AdaptiveAvgPool2d { output_size: [oh, ow] } => x.f_adaptive_avg_pool2d([oh as i64, ow as i64])?,
                // F.interpolate(x, scale_factor=s, mode="nearest"): the output size and the scales.
                Op::UpsampleNearest2d { scale_factor } => {
                    let size = x.size();
                    let (s, h, w) = (scale_factor as i64, size[2], size[3]);
                    x.f_upsample_nearest2d([h * s, w * s], scale_factor as f64, scale_factor as f64)?
                }
                Op::Linear {} => x.f_linear(a(1).expect("checked"), a(2))?,
                Op::BatchNorm { training, momentum, eps } => x.f_batch_norm(a(1), a(2), a(3), a(4), training, momentum, eps, false)?,
                Op::LayerNorm { ref normalized_shape, eps } => {
                    let shape: Vec<i64> = normalized_shape.iter().map(|&d| d as i64).collect();
                    x.f_layer_norm(shape.as_slice(), a(1), a(2), eps, false)?
                }
                // eps None: ATen's rms_norm takes its dtype's machine epsilon.
                Op::RmsNorm { ref normalized_shape, eps } => {
                    let shape: Vec<i64> = normalized_shape.iter().map(|&d| d as i64).collect();
                    x.f_rms_norm(shape.as_slice(), a(1), eps)?
                }
                // A finding: libtorch 2.13's CPU native_group_norm_backward fails with a bias
                // and no weight ("tensor does not have a device": empty_like of the undefined
                // weight); F.group_norm(x, G, None, b).sum().backward() fails the same way in
                // Python. Refused up front where a backward pass will run.
                Op::GroupNorm { .. } if req.backward && a(1).is_none() && a(2).is_some() => {
                    return Err(TchError::Kind("group_norm: libtorch 2.13's native_group_norm_backward fails with a bias and no weight (\"tensor does not have a device\")".into()))
                }
                Op::GroupNorm { num_groups, eps } => x.f_group_norm(num_groups as i64, a(1), a(2), eps, false)?,
                Op::Softmax { dim } => x.f_softmax(dim, None::<Kind>)?,
                Op::LogSoftmax { dim } => x.f_log_softmax(dim, None::<Kind>)?,
                Op::NllLoss { reduction } => {
                    x.f_nll_loss(a(1).expect("checked"), None::<Tensor>, reduction_of(reduction), -100)?
                }
                Op::CrossEntropy { reduction, label_smoothing } => x.f_cross_entropy_loss(
                    a(1).expect("checked"),
                    None::<Tensor>,
                    reduction_of(reduction),
                    -100,
                    label_smoothing,
                )?,
                Op::MseLoss { reduction } => x.f_mse_loss(a(1).expect("checked"), reduction_of(reduction))?,
                Op::Dropout { p, training } => {
                    if training {
                        // ATen's dropout: input * (mask / (1 - p))
                        x.f_mul(&a(1).expect("checked").f_div_scalar(1.0 - p)?)?
                    } else {
                        x.shallow_clone()
                    }
                }
                Op::Reshape { shape } => x.f_reshape(&shape)?,
                Op::Flatten { start_dim, end_dim } => x.f_flatten(start_dim, end_dim)?,
                Op::Permute { ref dims } => x.f_permute(dims.as_slice())?,
                Op::Transpose { dim0, dim1 } => x.f_transpose(dim0, dim1)?,
                Op::Concat { dim } => {
                    let xs: Vec<&Tensor> = (0..args.len()).map(|i| a(i).expect("checked")).collect();
                    Tensor::f_cat(&xs, dim)?
                }
                Op::Narrow { dim, start, length } => x.f_narrow(dim, start, length as i64)?,
                Op::IndexSelect { dim } => x.f_index_select(dim, a(1).expect("checked"))?,
                // ATen's embedding(weight, indices, padding_idx = -1 for none).
                Op::Embedding { padding_idx } => {
                    let rows = x.size()[0];
                    let p = padding_idx.map_or(-1, |p| if p < 0 { p + rows } else { p });
                    Tensor::f_embedding(x, a(1).expect("checked"), p, false, false)?
                }
                Op::Where {} => a(1).expect("checked").f_where_self(&x.f_ne(0)?, a(2).expect("checked"))?,
                // The out-of-place masked_fill broadcasts the input with the mask.
                Op::MaskedFill { value } => x.f_masked_fill(&a(1).expect("checked").f_ne(0)?, value)?,
            };
            values.push(Some(y));
        }
        let out: Vec<Tensor> = if req.all_values {
            values[n_inputs..].iter().map(|v| v.as_ref().expect("computed").shallow_clone()).collect()
        } else {
            self.checked.outputs.iter().map(|(v, _)| values[*v].as_ref().expect("computed").shallow_clone()).collect()
        };
        let root = match self.checked.loss {
            Some(l) => values[l].as_ref().map(Tensor::shallow_clone),
            None => {
                let mut total: Option<Tensor> = None;
                for (v, cot) in &self.checked.outputs {
                    let Some(cot) = cot else { continue };
                    let s = values[*v].as_ref().expect("computed").f_mul(&to_torch(cot, self.dtype)?)?.f_sum(tch::Kind::from(self.kind()))?;
                    total = Some(match total {
                        None => s,
                        Some(t) => t.f_add(&s)?,
                    });
                }
                total
            }
        };
        Ok((out, root))
    }

    fn kind(&self) -> Kind {
        match self.dtype {
            DType::F32 => Kind::Float,
            DType::F64 => Kind::Double,
        }
    }

    fn step(&mut self, req: Request) -> Result<Outcome, TchError> {
        let n = self.program.inputs.len();
        for (t, d) in self.tensors.iter_mut().zip(&self.program.inputs) {
            if d.needs_grad() {
                if let Some(t) = t {
                    t.zero_grad();
                }
            }
        }
        let (values, root) = if req.backward { self.forward(req)? } else { tch::no_grad(|| self.forward(req))? };
        let mut out = Outcome { loss: None, values: values.iter().map(to_host).collect::<Result<_, _>>()?, grads: vec![None; n] };
        if self.checked.loss.is_some() {
            out.loss = root.as_ref().map(|r| r.f_double_value(&[])).transpose()?;
        }
        if let (true, Some(root)) = (req.backward, root) {
            root.f_backward()?;
            if req.host_grads {
                for (i, d) in self.program.inputs.iter().enumerate() {
                    if d.needs_grad() {
                        let t = self.tensors[i].as_ref().expect("has a value");
                        let g = t.grad();
                        let g = if g.defined() { g } else { t.f_zeros_like()? };
                        out.grads[i] = Some(to_host(&g)?);
                    }
                }
            }
        }
        Ok(out)
    }

    fn sgd(&mut self, lr: f64, momentum: Option<f64>) -> Result<(), TchError> {
        let params: Vec<usize> = self.program.params().map(|(i, _)| i).collect();
        match momentum {
            None => {
                for i in params {
                    let p = self.tensors[i].as_mut().expect("has a value");
                    let g = p.grad();
                    if !g.defined() {
                        continue;
                    }
                    // The seed's update, `P -= lr * P.grad`, outside autograd.
                    tch::no_grad(|| -> Result<(), TchError> {
                        let step = g.f_mul_scalar(lr)?;
                        let _ = p.f_sub_(&step)?;
                        Ok(())
                    })?;
                }
                Ok(())
            }
            Some(m) => {
                let stale = !matches!(&self.optimizer, Some((_, l, mm)) if *l == lr && *mm == m);
                if stale {
                    let mut opt = COptimizer::sgd(lr, m, 0.0, 0.0, false)?;
                    for &i in &params {
                        opt.add_parameters(self.tensors[i].as_ref().expect("has a value"), 0)?;
                    }
                    self.optimizer = Some((opt, lr, m));
                    self.install_pending(&params)?;
                }
                self.optimizer.as_ref().expect("just created").0.step()?;
                if let Some(mirror) = self.mirror.as_mut() {
                    for &i in &params {
                        let g = self.tensors[i].as_ref().expect("has a value").grad();
                        if !g.defined() {
                            continue;
                        }
                        mirror[i] = Some(match mirror[i].take() {
                            None => g.copy(),
                            Some(mut v) => {
                                let _ = v.f_mul_scalar_(m)?;
                                let _ = v.f_add_(&g)?;
                                v
                            }
                        });
                    }
                }
                Ok(())
            }
        }
    }

    /// Gives a fresh optimiser the momentum buffers of `set_velocity`: one step with each
    /// buffer as the gradient makes the optimiser's buffer an exact clone of it (PyTorch's
    /// first-step rule); parameters and gradients are then put back as they were.
    fn install_pending(&mut self, params: &[usize]) -> Result<(), TchError> {
        if params.iter().all(|&i| self.pending[i].is_none()) {
            return Ok(());
        }
        let mut saved = Vec::new();
        for &i in params {
            let p = self.tensors[i].as_ref().expect("has a value");
            let g = p.grad();
            match (self.pending[i].take(), g.defined()) {
                (Some(v), true) => {
                    let (p_saved, g_saved) = (p.copy(), g.copy());
                    tch::no_grad(|| g.shallow_clone().f_copy_(&v))?;
                    saved.push((i, p_saved, g_saved));
                }
                (None, false) => {}
                (Some(_), false) | (None, true) => {
                    return Err(TchError::Kind(format!("momentum buffer of input {i}: restored buffers must cover exactly the parameters with gradients")))
                }
            }
        }
        self.optimizer.as_ref().expect("created").0.step()?;
        for (i, p_saved, g_saved) in saved {
            let p = self.tensors[i].as_mut().expect("has a value");
            tch::no_grad(|| p.f_copy_(&p_saved))?;
            tch::no_grad(|| p.grad().f_copy_(&g_saved))?;
        }
        Ok(())
    }
}

/// A refusal: the binding has no way to pass this attribute to the ATen op.
fn unbound(op: &str, attrs: String) -> TchError {
    TchError::Kind(format!("{op}: tch 0.26 binds {op} with its default attributes only ({attrs} asked for)"))
}

impl Executor for TorchExecutor {
    fn set_input(&mut self, index: usize, value: &HostTensor) -> Result<()> {
        let d = self.program.inputs.get(index).ok_or_else(|| Error::Invalid(format!("no input {index}")))?;
        if d.value_type == ValueType::Index {
            let l: Vec<i64> = labels_of(value, i64::MAX as usize, &d.name)?.into_iter().map(|v| v as i64).collect();
            let shape: Vec<i64> = value.shape.iter().map(|&d| d as i64).collect();
            self.tensors[index] =
                Some(Tensor::f_from_slice(&l).and_then(|t| t.f_reshape(shape.as_slice())).map_err(err)?);
            return Ok(());
        }
        let t = to_torch(value, self.dtype).map_err(err)?;
        match &mut self.tensors[index] {
            // In place, so the optimiser keeps pointing at the same tensors.
            Some(old) if d.role != Role::Input && old.size() == t.size() => {
                tch::no_grad(|| old.f_copy_(&t)).map_err(err)?;
            }
            slot => *slot = Some(if d.needs_grad() { t.set_requires_grad(true) } else { t }),
        }
        Ok(())
    }

    fn input(&self, index: usize) -> Result<HostTensor> {
        let t = self.tensors[index].as_ref().ok_or_else(|| Error::Invalid(format!("input '{}' has no value", self.program.inputs[index].name)))?;
        to_host(t).map_err(err)
    }

    fn run(&mut self, req: Request) -> Result<Outcome> {
        crate::backends::guarded("torch", || self.step(req).map_err(err))
    }

    fn sgd_step(&mut self, lr: f64, momentum: Option<f64>) -> Result<()> {
        crate::backends::guarded("torch", || self.sgd(lr, momentum).map_err(err))
    }

    fn track_velocity(&mut self) {
        if self.mirror.is_none() {
            self.mirror = Some((0..self.tensors.len()).map(|_| None).collect());
        }
    }

    fn velocity(&self, index: usize) -> Result<Option<HostTensor>> {
        let mirror = self.mirror.as_ref().ok_or_else(|| Error::Invalid("libtorch's momentum buffers are readable only after track_velocity".into()))?;
        mirror.get(index).and_then(|v| v.as_ref()).map(|v| to_host(v).map_err(err)).transpose()
    }

    fn set_velocity(&mut self, index: usize, value: &HostTensor) -> Result<()> {
        if self.optimizer.is_some() {
            return Err(Error::Invalid("libtorch: momentum buffers can be restored only before the first step".into()));
        }
        let t = to_torch(value, self.dtype).map_err(err)?;
        if let Some(mirror) = self.mirror.as_mut() {
            mirror[index] = Some(t.copy());
        }
        self.pending[index] = Some(t);
        Ok(())
    }
}

fn reduction_of(r: Reduction) -> tch::Reduction {
    match r {
        Reduction::Mean => tch::Reduction::Mean,
        Reduction::Sum => tch::Reduction::Sum,
        Reduction::None => tch::Reduction::None,
    }
}
