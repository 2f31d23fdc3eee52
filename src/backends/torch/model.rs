//! The nine models in libtorch: torch's functional layers, autograd, and its own C++
//! SGD optimiser (`torch::optim::SGD`, the same rule as Python's).

use tch::{COptimizer, Kind, TchError, Tensor};

use super::{err, to_host, to_torch};
use crate::backends::{count_correct, Batch, EvalOutput, ModelRunner, StepOutput};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::host::HostTensor;
use crate::models::mnist::{Layer, ModelSpec, ParamSet, BN_EPS, BN_MOMENTUM, CLASSES};

pub struct TorchModel {
    spec: ModelSpec,
    dtype: DType,
    names: Vec<String>,
    /// Parameters (requires_grad) and running statistics (plain tensors), spec order.
    tensors: Vec<Tensor>,
    trainable: Vec<bool>,
    /// Created on the first step, so its hyper-parameters come from `sgd_step`.
    optimizer: Option<(COptimizer, f64, f64)>,
}

impl TorchModel {
    pub fn new(spec: &ModelSpec, params: &ParamSet, dtype: DType) -> Result<Self, TchError> {
        let mut m = TorchModel { spec: spec.clone(), dtype, names: vec![], tensors: vec![], trainable: vec![], optimizer: None };
        for decl in spec.params() {
            let t = to_torch(params.get(&decl.name).expect("validated by the caller"), dtype)?;
            m.tensors.push(if decl.kind.trainable() { t.set_requires_grad(true) } else { t });
            m.trainable.push(decl.kind.trainable());
            m.names.push(decl.name);
        }
        Ok(m)
    }

    fn t(&self, name: &str) -> &Tensor {
        &self.tensors[self.names.iter().position(|n| n == name).expect("declared parameter")]
    }

    fn forward(&self, x: &Tensor, masks: &[Tensor], training: bool) -> Result<Tensor, TchError> {
        let mut x = x.shallow_clone();
        for layer in &self.spec.layers {
            x = match *layer {
                Layer::Conv2d { name, padding, .. } => {
                    let p = padding as i64;
                    x.f_conv2d(self.t(&format!("{name}.weight")), Some(self.t(&format!("{name}.bias"))), [1, 1], [p, p], [1, 1], 1)?
                }
                Layer::MaxPool2d { kernel } => {
                    let k = kernel as i64;
                    x.f_max_pool2d([k, k], [k, k], [0, 0], [1, 1], false)?
                }
                Layer::Relu => x.f_relu()?,
                Layer::Flatten => x.f_flatten(1, -1)?,
                Layer::Dropout { site, p } => {
                    if training {
                        // ATen's dropout: input * (mask / (1 - p))
                        x.f_mul(&masks[site].f_div_scalar(1.0 - p)?)?
                    } else {
                        x
                    }
                }
                Layer::BatchNorm { name, .. } => x.f_batch_norm(
                    Some(self.t(&format!("{name}.weight"))),
                    Some(self.t(&format!("{name}.bias"))),
                    Some(self.t(&format!("{name}.running_mean"))),
                    Some(self.t(&format!("{name}.running_var"))),
                    training,
                    BN_MOMENTUM,
                    BN_EPS,
                    false,
                )?,
                Layer::Linear { name, .. } => x.f_linear(self.t(&format!("{name}.weight")), Some(self.t(&format!("{name}.bias"))))?,
                Layer::Softmax => x.f_softmax(1, None::<Kind>)?,
            };
        }
        Ok(x)
    }

    fn targets(batch: &Batch) -> Result<Tensor, TchError> {
        let t: Vec<i64> = batch.labels.iter().map(|&l| l as i64).collect();
        Tensor::f_from_slice(&t)
    }

    fn run_step(&mut self, batch: &Batch, masks: &[HostTensor], want_grads: bool) -> Result<StepOutput, TchError> {
        for (t, &trainable) in self.tensors.iter_mut().zip(&self.trainable) {
            if trainable {
                t.zero_grad();
            }
        }
        let x = to_torch(&batch.images, self.dtype)?;
        let masks: Vec<Tensor> = masks.iter().map(|m| to_torch(m, self.dtype)).collect::<Result<_, _>>()?;
        let logits = self.forward(&x, &masks, true)?;
        let loss = logits.f_cross_entropy_loss(&Self::targets(batch)?, None::<Tensor>, tch::Reduction::Mean, -100, 0.0)?;
        loss.f_backward()?;
        let grads = if want_grads {
            let mut out = Vec::new();
            for (i, t) in self.tensors.iter().enumerate().filter(|(i, _)| self.trainable[*i]) {
                let g = t.grad();
                let g = if g.defined() { g } else { t.f_zeros_like()? };
                out.push((self.names[i].clone(), to_host(&g)?));
            }
            Some(ParamSet { tensors: out })
        } else {
            None
        };
        Ok(StepOutput { loss: loss.f_double_value(&[])?, grads })
    }

    fn run_sgd(&mut self, lr: f64, momentum: f64) -> Result<(), TchError> {
        let stale = !matches!(&self.optimizer, Some((_, l, m)) if *l == lr && *m == momentum);
        if stale {
            let mut opt = COptimizer::sgd(lr, momentum, 0.0, 0.0, false)?;
            for (t, &trainable) in self.tensors.iter().zip(&self.trainable) {
                if trainable {
                    opt.add_parameters(t, 0)?;
                }
            }
            self.optimizer = Some((opt, lr, momentum));
        }
        self.optimizer.as_ref().expect("just created").0.step()
    }

    fn run_eval(&self, batch: &Batch) -> Result<EvalOutput, TchError> {
        tch::no_grad(|| {
            let x = to_torch(&batch.images, self.dtype)?;
            let logits = self.forward(&x, &[], false)?;
            let loss = logits.f_cross_entropy_loss(&Self::targets(batch)?, None::<Tensor>, tch::Reduction::Mean, -100, 0.0)?.f_double_value(&[])?;
            let flat = to_host(&logits)?.data;
            Ok(EvalOutput { loss, correct: count_correct(&flat, CLASSES, &batch.labels) })
        })
    }
}

impl ModelRunner for TorchModel {
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
        let tensors = self.names.iter().zip(&self.tensors).map(|(n, t)| Ok((n.clone(), to_host(t).map_err(err)?))).collect::<Result<_>>()?;
        Ok(ParamSet { tensors })
    }

    fn load_params(&mut self, params: &ParamSet) -> Result<()> {
        for (name, t) in self.names.iter().zip(self.tensors.iter_mut()) {
            let src = params.get(name).ok_or_else(|| Error::Invalid(format!("load_params: missing '{name}'")))?;
            let src = to_torch(src, self.dtype).map_err(err)?;
            // In place, so the optimiser keeps pointing at the same tensors.
            tch::no_grad(|| t.f_copy_(&src)).map_err(err)?;
        }
        Ok(())
    }
}
