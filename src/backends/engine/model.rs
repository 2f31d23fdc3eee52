//! The nine models on the from-scratch engine.

use super::{to_engine, to_host};
use crate::backends::{count_correct, Batch, EvalOutput, ModelRunner, StepOutput};
use crate::engine::ops::norm::RunningStats;
use crate::engine::optim::SgdMomentum;
use crate::engine::{Float, Graph, Tensor, Var};
use crate::error::{Error, Result};
use crate::host::HostTensor;
use crate::models::mnist::{Layer, ModelSpec, ParamSet, BN_EPS, BN_MOMENTUM, CLASSES};

pub struct EngineModel<F: Float> {
    spec: ModelSpec,
    /// Trainable parameters in spec order.
    names: Vec<String>,
    values: Vec<Tensor<F>>,
    grads: Vec<Option<Tensor<F>>>,
    velocity: Vec<Option<Tensor<F>>>,
    /// Running statistics per batch-norm layer, by layer name.
    stats: Vec<(String, RunningStats<F>)>,
}

impl<F: Float> EngineModel<F> {
    pub fn new(spec: &ModelSpec, params: &ParamSet) -> Result<Self> {
        let mut m = EngineModel { spec: spec.clone(), names: vec![], values: vec![], grads: vec![], velocity: vec![], stats: vec![] };
        m.load(params)?;
        m.grads = vec![None; m.values.len()];
        m.velocity = vec![None; m.values.len()];
        Ok(m)
    }

    fn load(&mut self, params: &ParamSet) -> Result<()> {
        let get = |name: &str| params.get(name).ok_or_else(|| Error::Invalid(format!("parameters: '{name}' is missing")));
        let (mut names, mut values, mut stats) = (vec![], vec![], vec![]);
        for decl in self.spec.params() {
            if decl.kind.trainable() {
                values.push(to_engine::<F>(get(&decl.name)?)?);
                names.push(decl.name);
            }
        }
        for layer in &self.spec.layers {
            if let Layer::BatchNorm { name, .. } = layer {
                let mean = to_engine::<F>(get(&format!("{name}.running_mean"))?)?;
                let var = to_engine::<F>(get(&format!("{name}.running_var"))?)?;
                stats.push((name.to_string(), RunningStats { mean, var }));
            }
        }
        (self.names, self.values, self.stats) = (names, values, stats);
        Ok(())
    }

    fn index(&self, name: &str) -> usize {
        self.names.iter().position(|n| n == name).expect("declared parameter")
    }

    /// Records the model on `g`; `leaves[i]` holds trainable parameter i.
    fn forward(&mut self, g: &mut Graph<F>, x: Var, leaves: &[Var], masks: &[Tensor<F>], training: bool) -> Result<Var> {
        let n = g.value(x).shape()[0];
        let mut x = x;
        for layer in self.spec.layers.clone() {
            x = match layer {
                Layer::Conv2d { name, padding, .. } => {
                    let (w, b) = (leaves[self.index(&format!("{name}.weight"))], leaves[self.index(&format!("{name}.bias"))]);
                    g.conv2d(x, w, Some(b), 1, padding)?
                }
                Layer::MaxPool2d { kernel } => g.max_pool2d(x, kernel)?,
                Layer::Relu => g.relu(x),
                Layer::Flatten => {
                    let rest: usize = g.value(x).shape()[1..].iter().product();
                    g.reshape(x, &[n, rest])?
                }
                Layer::Dropout { site, p } => {
                    if training {
                        g.dropout(x, &masks[site], p)?
                    } else {
                        x
                    }
                }
                Layer::BatchNorm { name, .. } => {
                    let (w, b) = (leaves[self.index(&format!("{name}.weight"))], leaves[self.index(&format!("{name}.bias"))]);
                    let stats = &mut self.stats.iter_mut().find(|(n, _)| n == name).expect("declared layer").1;
                    g.batch_norm(x, w, b, stats, training, BN_MOMENTUM, BN_EPS)?
                }
                Layer::Linear { name, .. } => {
                    let (w, b) = (leaves[self.index(&format!("{name}.weight"))], leaves[self.index(&format!("{name}.bias"))]);
                    g.linear(x, w, Some(b))?
                }
                Layer::Softmax => g.softmax(x)?,
            };
        }
        Ok(x)
    }
}

impl<F: Float> ModelRunner for EngineModel<F> {
    fn forward_backward(&mut self, batch: &Batch, masks: &[HostTensor], want_grads: bool) -> Result<StepOutput> {
        let mut g = Graph::<F>::new();
        let x = g.constant(to_engine(&batch.images)?);
        let masks: Vec<Tensor<F>> = masks.iter().map(to_engine).collect::<Result<_>>()?;
        // The parameters move into the graph and back out afterwards (also when a step
        // fails), instead of being copied into every step's graph.
        let leaves: Vec<Var> = std::mem::take(&mut self.values).into_iter().map(|v| g.param(v)).collect();
        let run = |m: &mut Self, g: &mut Graph<F>| -> Result<_> {
            let logits = m.forward(g, x, &leaves, &masks, true)?;
            let loss = g.cross_entropy(logits, &batch.labels)?;
            Ok((loss, g.backward(loss)?))
        };
        let result = run(self, &mut g);
        self.values = leaves.iter().map(|&leaf| g.take_value(leaf)).collect();
        let (loss, mut grads) = result?;
        for (i, &leaf) in leaves.iter().enumerate() {
            self.grads[i] = Some(grads.take_or_zeros(leaf, &self.values[i]));
        }
        let loss_value = g.value(loss).iter().next().copied().unwrap_or_else(F::zero).as_f64();
        let grads = want_grads.then(|| ParamSet {
            tensors: self.names.iter().zip(&self.grads).map(|(n, g)| (n.clone(), to_host(g.as_ref().expect("just set")))).collect(),
        });
        Ok(StepOutput { loss: loss_value, grads })
    }

    fn sgd_step(&mut self, lr: f64, momentum: f64) -> Result<()> {
        let opt = SgdMomentum { lr, momentum };
        for i in 0..self.values.len() {
            if let Some(grad) = &self.grads[i] {
                opt.step(&mut self.values[i], grad, &mut self.velocity[i]);
            }
        }
        Ok(())
    }

    fn evaluate(&mut self, batch: &Batch) -> Result<EvalOutput> {
        let mut g = Graph::<F>::new();
        let x = g.constant(to_engine(&batch.images)?);
        let leaves: Vec<Var> = self.values.iter().map(|v| g.constant(v.clone())).collect();
        let logits = self.forward(&mut g, x, &leaves, &[], false)?;
        let flat: Vec<f64> = g.value(logits).iter().map(|v| v.as_f64()).collect();
        let loss = g.cross_entropy(logits, &batch.labels)?;
        let loss = g.value(loss).iter().next().copied().unwrap_or_else(F::zero).as_f64();
        Ok(EvalOutput { loss, correct: count_correct(&flat, CLASSES, &batch.labels) })
    }

    fn params(&self) -> Result<ParamSet> {
        let mut tensors = Vec::new();
        for decl in self.spec.params() {
            let t = if decl.kind.trainable() {
                to_host(&self.values[self.index(&decl.name)])
            } else {
                let (layer, field) = decl.name.rsplit_once('.').expect("layer.field");
                let stats = &self.stats.iter().find(|(n, _)| n == layer).expect("declared layer").1;
                to_host(if field == "running_mean" { &stats.mean } else { &stats.var })
            };
            tensors.push((decl.name, t));
        }
        Ok(ParamSet { tensors })
    }

    fn load_params(&mut self, params: &ParamSet) -> Result<()> {
        self.load(params)
    }
}

