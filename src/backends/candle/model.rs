//! The nine models in candle: candle's layers and autograd, PyTorch's optimiser rule.

use candle_core::{DType as CDType, Device, Tensor, Var, D};

use super::maxpool::exact_max_pool2d;
use super::{err, to_candle, to_host, MaxPoolMode};
use crate::backends::{count_correct, Batch, EvalOutput, ModelRunner, StepOutput};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::host::HostTensor;
use crate::models::mnist::{Layer, ModelSpec, ParamSet, BN_EPS, BN_MOMENTUM, CLASSES};

pub struct CandleModel {
    spec: ModelSpec,
    dtype: DType,
    maxpool: MaxPoolMode,
    /// Trainable parameters as Vars; buffers (running statistics) as plain tensors.
    names: Vec<String>,
    vars: Vec<Option<Var>>,
    buffers: Vec<Option<Tensor>>,
    grads: Vec<Option<Tensor>>,
    velocity: Vec<Option<Tensor>>,
}

impl CandleModel {
    pub fn new(spec: &ModelSpec, params: &ParamSet, dtype: DType, maxpool: MaxPoolMode) -> candle_core::Result<Self> {
        let mut m = CandleModel {
            spec: spec.clone(),
            dtype,
            maxpool,
            names: vec![],
            vars: vec![],
            buffers: vec![],
            grads: vec![],
            velocity: vec![],
        };
        for decl in spec.params() {
            let t = to_candle(params.get(&decl.name).expect("validated by the caller"), dtype)?;
            m.names.push(decl.name.clone());
            if decl.kind.trainable() {
                m.vars.push(Some(Var::from_tensor(&t)?));
                m.buffers.push(None);
            } else {
                m.vars.push(None);
                m.buffers.push(Some(t));
            }
            m.grads.push(None);
            m.velocity.push(None);
        }
        Ok(m)
    }

    fn index(&self, name: &str) -> usize {
        self.names.iter().position(|n| n == name).expect("declared parameter")
    }

    fn var(&self, name: &str) -> Tensor {
        self.vars[self.index(name)].as_ref().expect("trainable").as_tensor().clone()
    }

    /// Runs the layers; in training mode updates running statistics and applies masks.
    fn forward(&mut self, x: &Tensor, masks: &[Tensor], training: bool) -> candle_core::Result<Tensor> {
        let mut x = x.clone();
        for layer in self.spec.layers.clone() {
            x = match layer {
                Layer::Conv2d { name, out_ch, padding, .. } => {
                    let w = self.var(&format!("{name}.weight"));
                    let b = self.var(&format!("{name}.bias")).reshape((1, out_ch, 1, 1))?;
                    x.conv2d(&w, padding, 1, 1, 1)?.broadcast_add(&b)?
                }
                Layer::MaxPool2d { kernel } => match self.maxpool {
                    MaxPoolMode::Builtin => x.max_pool2d(kernel)?,
                    MaxPoolMode::Exact => exact_max_pool2d(&x, kernel)?,
                },
                Layer::Relu => x.relu()?,
                Layer::Flatten => x.flatten_from(1)?,
                Layer::Dropout { site, p } => {
                    if training {
                        // torch: input * (mask / (1 - p))
                        x.broadcast_mul(&masks[site].affine(1.0 / (1.0 - p), 0.0)?)?
                    } else {
                        x
                    }
                }
                Layer::BatchNorm { name, features, spatial } => self.batch_norm(&x, name, features, spatial, training)?,
                Layer::Linear { name, .. } => {
                    let w = self.var(&format!("{name}.weight"));
                    let b = self.var(&format!("{name}.bias"));
                    x.matmul(&w.t()?)?.broadcast_add(&b)?
                }
                Layer::Softmax => candle_nn::ops::softmax(&x, 1)?,
            };
        }
        Ok(x)
    }

    fn batch_norm(&mut self, x: &Tensor, name: &str, c: usize, spatial: bool, training: bool) -> candle_core::Result<Tensor> {
        let bshape: Vec<usize> = if spatial { vec![1, c, 1, 1] } else { vec![1, c] };
        let w = self.var(&format!("{name}.weight")).reshape(bshape.as_slice())?;
        let b = self.var(&format!("{name}.bias")).reshape(bshape.as_slice())?;
        let (rm_i, rv_i) = (self.index(&format!("{name}.running_mean")), self.index(&format!("{name}.running_var")));
        let (mean, var) = if training {
            let (mean, var, m) = batch_stats(x)?;
            let unbiased = var.affine(m as f64 / (m as f64 - 1.0), 0.0)?;
            let rm = self.buffers[rm_i].as_ref().expect("buffer");
            let rv = self.buffers[rv_i].as_ref().expect("buffer");
            let new_rm = (mean.detach().affine(BN_MOMENTUM, 0.0)? + rm.affine(1.0 - BN_MOMENTUM, 0.0)?)?;
            let new_rv = (unbiased.detach().affine(BN_MOMENTUM, 0.0)? + rv.affine(1.0 - BN_MOMENTUM, 0.0)?)?;
            self.buffers[rm_i] = Some(new_rm);
            self.buffers[rv_i] = Some(new_rv);
            (mean, var)
        } else {
            (self.buffers[rm_i].clone().expect("buffer"), self.buffers[rv_i].clone().expect("buffer"))
        };
        let mean = mean.reshape(bshape.as_slice())?;
        let inv_std = (var + BN_EPS)?.sqrt()?.recip()?.reshape(bshape.as_slice())?;
        x.broadcast_sub(&mean)?.broadcast_mul(&inv_std)?.broadcast_mul(&w)?.broadcast_add(&b)
    }

    fn images(&self, batch: &Batch) -> candle_core::Result<Tensor> {
        to_candle(&batch.images, self.dtype)
    }

    fn targets(batch: &Batch) -> candle_core::Result<Tensor> {
        let t: Vec<u32> = batch.labels.iter().map(|&l| l as u32).collect();
        Tensor::from_vec(t, batch.labels.len(), &Device::Cpu)
    }

    fn run_step(&mut self, batch: &Batch, masks: &[HostTensor], want_grads: bool) -> candle_core::Result<StepOutput> {
        let x = self.images(batch)?;
        let masks: Vec<Tensor> = masks.iter().map(|m| to_candle(m, self.dtype)).collect::<candle_core::Result<_>>()?;
        let logits = self.forward(&x, &masks, true)?;
        let loss = candle_nn::loss::cross_entropy(&logits, &Self::targets(batch)?)?;
        let store = loss.backward()?;
        let mut grads = Vec::new();
        for (i, v) in self.vars.iter().enumerate() {
            self.grads[i] = match v {
                Some(v) => Some(match store.get(v.as_tensor()) {
                    // Detached: a gradient keeps the backward graph (and every activation)
                    // alive, and the momentum buffer would chain one step's graph to the next.
                    Some(g) => g.detach(),
                    None => v.as_tensor().zeros_like()?,
                }),
                None => None,
            };
            if let (true, Some(g)) = (want_grads, &self.grads[i]) {
                grads.push((self.names[i].clone(), to_host(g)?));
            }
        }
        Ok(StepOutput { loss: to_host(&loss)?.data[0], grads: want_grads.then_some(ParamSet { tensors: grads }) })
    }

    fn run_sgd(&mut self, lr: f64, momentum: f64) -> candle_core::Result<()> {
        for i in 0..self.vars.len() {
            let (Some(var), Some(g)) = (&self.vars[i], &self.grads[i]) else { continue };
            // PyTorch's rule: the first step's buffer is the gradient itself.
            let v = match &self.velocity[i] {
                None => g.clone(),
                Some(v) => (v.affine(momentum, 0.0)? + g)?,
            };
            var.set(&(var.as_tensor() - v.affine(lr, 0.0)?)?)?;
            self.velocity[i] = Some(v);
        }
        Ok(())
    }

    fn run_eval(&mut self, batch: &Batch) -> candle_core::Result<EvalOutput> {
        let x = self.images(batch)?;
        let logits = self.forward(&x, &[], false)?.detach();
        let loss = candle_nn::loss::cross_entropy(&logits, &Self::targets(batch)?)?;
        let flat = logits.to_dtype(CDType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        Ok(EvalOutput { loss: to_host(&loss)?.data[0], correct: count_correct(&flat, CLASSES, &batch.labels) })
    }
}

impl ModelRunner for CandleModel {
    fn forward_backward(&mut self, batch: &Batch, masks: &[HostTensor], want_grads: bool) -> Result<StepOutput> {
        self.run_step(batch, masks, want_grads).map_err(err)
    }

    fn sgd_step(&mut self, lr: f64, momentum: f64) -> Result<()> {
        self.run_sgd(lr, momentum).map_err(err)
    }

    fn evaluate(&mut self, batch: &Batch) -> Result<EvalOutput> {
        self.run_eval(batch).map_err(err)
    }

    fn params(&self) -> Result<ParamSet> {
        let mut out = Vec::new();
        for i in 0..self.names.len() {
            let t = match (&self.vars[i], &self.buffers[i]) {
                (Some(v), _) => to_host(v.as_tensor()),
                (None, Some(b)) => to_host(b),
                _ => unreachable!("every parameter is a var or a buffer"),
            }
            .map_err(err)?;
            out.push((self.names[i].clone(), t));
        }
        Ok(ParamSet { tensors: out })
    }

    fn load_params(&mut self, params: &ParamSet) -> Result<()> {
        for i in 0..self.names.len() {
            let t = params.get(&self.names[i]).ok_or_else(|| Error::Invalid(format!("load_params: missing '{}'", self.names[i])))?;
            let t = to_candle(t, self.dtype).map_err(err)?;
            match &self.vars[i] {
                Some(v) => v.set(&t).map_err(err)?,
                None => self.buffers[i] = Some(t),
            }
        }
        Ok(())
    }
}

/// Per-channel batch mean and biased variance over every axis but 1, with the number of
/// values per channel. Built from candle ops, so candle's autograd differentiates them.
fn batch_stats(x: &Tensor) -> candle_core::Result<(Tensor, Tensor, usize)> {
    let per_channel = x.transpose(0, 1)?.flatten_from(1)?;
    let m = per_channel.dim(1)?;
    let mean = per_channel.mean_keepdim(D::Minus1)?;
    let var = per_channel.broadcast_sub(&mean)?.sqr()?.mean_keepdim(D::Minus1)?;
    Ok((mean.flatten_all()?, var.flatten_all()?, m))
}

/// Training-mode batch norm with unit scale and zero shift (the `batch_norm` primitive).
pub fn batch_norm_train(x: &Tensor) -> candle_core::Result<Tensor> {
    let (mean, var, _) = batch_stats(x)?;
    let c = mean.dim(0)?;
    let shape: Vec<usize> = (0..x.rank()).map(|i| if i == 1 { c } else { 1 }).collect();
    let inv_std = (var + BN_EPS)?.sqrt()?.recip()?.reshape(shape.as_slice())?;
    x.broadcast_sub(&mean.reshape(shape.as_slice())?)?.broadcast_mul(&inv_std)
}
