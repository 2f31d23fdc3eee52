//! The program interpreter of the from-scratch engine: each node is one engine op with
//! its handwritten backward.

use super::{to_engine, to_host};
use crate::backends::executor::{Executor, Outcome, Request};
use crate::engine::ops::avg_pool::Windows;
use crate::engine::ops::conv::general::Attrs as ConvAttrs;
use crate::engine::ops::elementwise::UnaryOp;
use crate::engine::ops::reduce::DimReduce;
use crate::engine::ops::softmax::Reduction as EngineReduction;
use crate::engine::ops::layer_norm::Rows as RowLayout;
use crate::engine::optim::{Sgd, SgdMomentum};
use crate::engine::{Float, Graph, RunningStats, Tensor, Var};
use crate::error::{Error, Result};
use crate::host::HostTensor;
use crate::models::program::{check, labels_of, reduced_dims, Checked, GeluApproximate, Reduction};
use crate::models::{Op, Program, Role, ValueType};

pub struct EngineExecutor<F: Float> {
    program: Program,
    checked: Checked,
    /// Float inputs (parameters, data, state); `None` for label inputs.
    values: Vec<Option<Tensor<F>>>,
    labels: Vec<Option<Vec<usize>>>,
    grads: Vec<Option<Tensor<F>>>,
    velocity: Vec<Option<Tensor<F>>>,
}

impl<F: Float> EngineExecutor<F> {
    pub fn new(program: &Program, inputs: &[HostTensor]) -> Result<Self> {
        let checked = check(program)?;
        let n = program.inputs.len();
        let mut e = EngineExecutor { program: program.clone(), checked, values: vec![None; n], labels: vec![None; n], grads: vec![None; n], velocity: vec![None; n] };
        for (i, t) in inputs.iter().enumerate() {
            e.set_input(i, t)?;
        }
        Ok(e)
    }

    /// Class count of the node that reads labels `v`, for the label check.
    fn labels_for(&self, v: usize, classes: usize) -> Result<&[usize]> {
        let labels = self.labels[v].as_deref().ok_or_else(|| Error::Invalid(format!("input '{}' is not labels", self.program.inputs[v].name)))?;
        if let Some(bad) = labels.iter().find(|&&l| l >= classes) {
            return Err(Error::Invalid(format!("input '{}': label {bad} is not a class index in 0..{classes}", self.program.inputs[v].name)));
        }
        Ok(labels)
    }
}

impl<F: Float> EngineExecutor<F> {
    /// The indices of index input `v`.
    fn indices(&self, v: usize) -> Result<&[usize]> {
        self.labels[v]
            .as_deref()
            .ok_or_else(|| Error::Invalid(format!("input '{}' is not indices", self.program.inputs[v].name)))
    }

    /// A 0/1 mask (state input `v`): non-zero is true.
    fn mask(&self, v: usize) -> Vec<bool> {
        self.values[v].as_ref().expect("state has a value").iter().map(|&m| m != F::zero()).collect()
    }
}

/// A PyTorch dimension (negative from the back) of a rank-`r` tensor; checked before.
fn axis_of(d: i64, r: usize) -> usize {
    if d < 0 {
        (d + r as i64) as usize
    } else {
        d as usize
    }
}

impl<F: Float> Executor for EngineExecutor<F> {
    fn set_input(&mut self, index: usize, value: &HostTensor) -> Result<()> {
        let d = self.program.inputs.get(index).ok_or_else(|| Error::Invalid(format!("no input {index}")))?;
        if d.value_type == ValueType::Index {
            self.labels[index] = Some(labels_of(value, usize::MAX, &d.name)?);
        } else {
            self.values[index] = Some(to_engine(value)?);
        }
        Ok(())
    }

    fn input(&self, index: usize) -> Result<HostTensor> {
        match (&self.values[index], &self.labels[index]) {
            (Some(t), _) => Ok(to_host(t)),
            (None, Some(l)) => Ok(HostTensor { shape: vec![l.len()], data: l.iter().map(|&v| v as f64).collect() }),
            _ => Err(Error::Invalid(format!("input '{}' has no value", self.program.inputs[index].name))),
        }
    }

    fn run(&mut self, req: Request) -> Result<Outcome> {
        crate::backends::guarded("engine", || self.run_unguarded(req))
    }

    fn velocity(&self, index: usize) -> Result<Option<HostTensor>> {
        Ok(self.velocity.get(index).and_then(|v| v.as_ref()).map(to_host))
    }

    fn set_velocity(&mut self, index: usize, value: &HostTensor) -> Result<()> {
        let slot = self.velocity.get_mut(index).ok_or_else(|| Error::Invalid(format!("no input {index}")))?;
        *slot = Some(to_engine(value)?);
        Ok(())
    }

    fn sgd_step(&mut self, lr: f64, momentum: Option<f64>) -> Result<()> {
        self.sgd_unguarded(lr, momentum);
        Ok(())
    }
}

impl<F: Float> EngineExecutor<F> {
    fn run_unguarded(&mut self, req: Request) -> Result<Outcome> {
        let mut g = Graph::<F>::new();
        let n_inputs = self.program.inputs.len();
        let mut vars: Vec<Option<Var>> = Vec::with_capacity(n_inputs + self.program.nodes.len());
        // Float inputs move into the graph and back out afterwards (also when a node
        // fails), instead of being copied into every run's graph. State stays outside.
        for (i, d) in self.program.inputs.iter().enumerate() {
            let on_graph = d.value_type == ValueType::Float && d.role != Role::State;
            if !on_graph {
                vars.push(None);
                continue;
            }
            let v = self.values[i].take().ok_or_else(|| Error::Invalid(format!("input '{}' has no value", d.name)))?;
            vars.push(Some(g.leaf(v, d.needs_grad() && req.backward)));
        }
        // Backward reads the leaves' values, so they come back out only after it.
        let result = self.record(&mut g, &mut vars, req).and_then(|root| match (req.backward, root) {
            (true, Some(root)) => Ok(Some(g.backward(root)?)),
            _ => Ok(None),
        });
        // Outputs are read before the leaves' values move back out: a node's value may be
        // a leaf's own (eval-mode dropout is the identity).
        let read = result.map(|grads| {
            let loss = self.checked.loss.map(|l| g.value(vars[l].expect("computed")).iter().next().copied().unwrap_or_else(F::zero).as_f64());
            let wanted: Vec<usize> = if req.all_values { (n_inputs..vars.len()).collect() } else { self.checked.outputs.iter().map(|(v, _)| *v).collect() };
            let values = wanted.into_iter().map(|v| to_host(g.value(vars[v].expect("computed")))).collect();
            (grads, loss, values)
        });
        for (i, d) in self.program.inputs.iter().enumerate() {
            if d.value_type == ValueType::Float && d.role != Role::State {
                self.values[i] = Some(g.take_value(vars[i].expect("on the graph")));
            }
        }
        let (grads, loss, values) = read?;
        let mut out = Outcome { loss, values, grads: vec![None; n_inputs] };
        if let Some(mut grads) = grads {
            for (i, d) in self.program.inputs.iter().enumerate() {
                if d.needs_grad() {
                    let like = self.values[i].as_ref().expect("just returned");
                    let grad = grads.take_or_zeros(vars[i].expect("on the graph"), like);
                    if req.host_grads {
                        out.grads[i] = Some(to_host(&grad));
                    }
                    self.grads[i] = Some(grad);
                }
            }
        }
        Ok(out)
    }

    fn sgd_unguarded(&mut self, lr: f64, momentum: Option<f64>) {
        for (i, d) in self.program.inputs.iter().enumerate() {
            if d.role != Role::Param {
                continue;
            }
            let (Some(p), Some(grad)) = (self.values[i].as_mut(), self.grads[i].as_ref()) else { continue };
            match momentum {
                None => Sgd { lr }.step(p, grad),
                Some(m) => SgdMomentum { lr, momentum: m }.step(p, grad, &mut self.velocity[i]),
            }
        }
    }
}

impl<F: Float> EngineExecutor<F> {
    /// Records every node; returns the scalar to differentiate.
    fn record(&mut self, g: &mut Graph<F>, vars: &mut Vec<Option<Var>>, req: Request) -> Result<Option<Var>> {
        // The nodes are lent out of the program for the walk (the ops need `self`
        // mutably for the running statistics) and always put back.
        let nodes = std::mem::take(&mut self.program.nodes);
        let result = self.record_nodes(&nodes, g, vars, req);
        self.program.nodes = nodes;
        result
    }

    fn record_nodes(&mut self, nodes: &[crate::models::Node], g: &mut Graph<F>, vars: &mut Vec<Option<Var>>, req: Request) -> Result<Option<Var>> {
        for (k, node) in nodes.iter().enumerate() {
            let args = &self.checked.args[k];
            // An op is a few numbers (a reshape's shape aside): cheap to copy.
            let op = if req.eval { node.op.in_eval_mode() } else { node.op.clone() };
            let a = |i: usize| args.get(i).copied().flatten().map(|v| vars[v].expect("float value"));
            // `where`'s first input is its mask (state, off the graph).
            if let Op::Where {} = op {
                let c = args[0].expect("checked");
                let cond = self.mask(c);
                let v = g.where_(&cond, &self.checked.shapes[c], a(1).expect("checked"), a(2).expect("checked"))?;
                vars.push(Some(v));
                continue;
            }
            let x = a(0).expect("checked");
            let v = match op {
                Op::MatMul {} => g.matmul(x, a(1).expect("checked"))?,
                Op::Add {} => g.add(x, a(1).expect("checked"))?,
                Op::Sub {} => g.sub(x, a(1).expect("checked"))?,
                Op::Mul {} => g.mul(x, a(1).expect("checked"))?,
                Op::Div {} => g.div(x, a(1).expect("checked"))?,
                Op::Maximum {} => g.maximum(x, a(1).expect("checked"))?,
                Op::Neg {} => g.neg(x),
                Op::Sigmoid {} => g.sigmoid(x),
                Op::Square {} => g.square(x),
                Op::Relu {} => g.relu(x),
                Op::Tanh {} => g.tanh(x),
                Op::Exp {} => g.exp(x),
                Op::Log {} => g.log(x),
                Op::Gelu { approximate } => g.unary(UnaryOp::Gelu { tanh: approximate == GeluApproximate::Tanh }, x),
                Op::Silu {} => g.unary(UnaryOp::Silu, x),
                Op::Elu { alpha } => g.unary(UnaryOp::Elu { alpha }, x),
                Op::LeakyRelu { negative_slope } => g.unary(UnaryOp::LeakyRelu { negative_slope }, x),
                Op::Softplus { beta, threshold } => g.unary(UnaryOp::Softplus { beta, threshold }, x),
                Op::Sqrt {} => g.unary(UnaryOp::Sqrt, x),
                Op::Abs {} => g.unary(UnaryOp::Abs, x),
                Op::Clamp { min, max } => g.unary(UnaryOp::Clamp { min, max }, x),
                Op::Pow { exponent } => g.unary(UnaryOp::Pow { exponent }, x),
                Op::Sum {} => g.sum(x),
                Op::Mean {} => g.mean(x),
                Op::SumDim { ref dim, keepdim } | Op::MeanDim { ref dim, keepdim } | Op::Amax { ref dim, keepdim } => {
                    let axes =
                        reduced_dims(dim, g.value(x).ndim()).map_err(|m| Error::Shape(format!("{}: {m}", node.id)))?;
                    let kind = match op {
                        Op::SumDim { .. } => DimReduce::Sum,
                        Op::MeanDim { .. } => DimReduce::Mean,
                        _ => DimReduce::Amax,
                    };
                    g.reduce_dim(kind, x, &axes, keepdim)?
                }
                Op::MaxPool2d { kernel, stride, padding, ceil_mode } => g.max_pool2d_mode(x, kernel, stride.unwrap_or(kernel), padding, ceil_mode)?,
                // The models' convolutions keep the im2col / implicit-GEMM kernels; dilation
                // and groups take the direct loops of `conv::general`.
                Op::Conv2d { stride, padding, dilation: 1, groups: 1 } => g.conv2d(x, a(1).expect("checked"), a(2), stride, padding)?,
                Op::Conv2d { stride, padding, dilation, groups } => {
                    let attrs = ConvAttrs { stride, padding, dilation, groups, output_padding: 0 };
                    g.conv2d_general(x, a(1).expect("checked"), a(2), false, attrs)?
                }
                Op::ConvTranspose2d { stride, padding, output_padding, dilation, groups } => {
                    let attrs = ConvAttrs { stride, padding, dilation, groups, output_padding };
                    g.conv2d_general(x, a(1).expect("checked"), a(2), true, attrs)?
                }
                Op::AvgPool2d { kernel, stride, padding, ceil_mode, count_include_pad } => {
                    let w = Windows::avg_pool(g.value(x).shape(), kernel, stride.unwrap_or(kernel), padding, ceil_mode, count_include_pad)?;
                    g.avg_windows(x, w)
                }
                Op::AdaptiveAvgPool2d { output_size: [oh, ow] } => {
                    let w = Windows::adaptive(g.value(x).shape(), oh, ow)?;
                    g.avg_windows(x, w)
                }
                Op::UpsampleNearest2d { scale_factor } => {
                    let w = Windows::nearest(g.value(x).shape(), scale_factor)?;
                    g.avg_windows(x, w)
                }
                Op::Linear {} => g.linear(x, a(1).expect("checked"), a(2))?,
                Op::BatchNorm { training, momentum, eps } => {
                    let c = g.value(x).shape()[1];
                    let gamma = a(1).unwrap_or_else(|| g.constant(Tensor::from_elem(vec![c], F::one())));
                    let beta = a(2).unwrap_or_else(|| g.constant(Tensor::zeros(vec![c])));
                    match (args.get(3).copied().flatten(), args.get(4).copied().flatten()) {
                        (Some(rm), Some(rv)) => {
                            let mut stats = RunningStats {
                                mean: self.values[rm].take().expect("state has a value"),
                                var: self.values[rv].take().expect("state has a value"),
                            };
                            let r = g.batch_norm(x, gamma, beta, &mut stats, training, momentum, eps);
                            self.values[rm] = Some(stats.mean);
                            self.values[rv] = Some(stats.var);
                            r?
                        }
                        _ => g.batch_norm(x, gamma, beta, &mut RunningStats::new(c), training, momentum, eps)?,
                    }
                }
                Op::LayerNorm { ref normalized_shape, eps } => {
                    let rows = RowLayout::trailing(g.value(x).len(), normalized_shape.iter().product());
                    g.row_norm("layer_norm", x, a(1), a(2), rows, true, eps)?
                }
                // PyTorch's default eps: the machine epsilon of the input's dtype.
                Op::RmsNorm { ref normalized_shape, eps } => {
                    let rows = RowLayout::trailing(g.value(x).len(), normalized_shape.iter().product());
                    g.row_norm("rms_norm", x, a(1), None, rows, false, eps.unwrap_or(F::epsilon().as_f64()))?
                }
                Op::GroupNorm { num_groups, eps } => {
                    let rows = RowLayout::groups(g.value(x).shape(), num_groups);
                    g.row_norm("group_norm", x, a(1), a(2), rows, true, eps)?
                }
                Op::Softmax { dim } | Op::LogSoftmax { dim } => {
                    let rank = g.value(x).ndim() as i64;
                    let axis = if dim < 0 { dim + rank } else { dim } as usize;
                    if matches!(op, Op::Softmax { .. }) {
                        g.softmax_dim(x, axis)?
                    } else {
                        g.log_softmax_dim(x, axis)?
                    }
                }
                Op::NllLoss { reduction } | Op::CrossEntropy { reduction, .. } => {
                    let classes = g.value(x).shape()[1];
                    let labels = self.labels_for(args[1].expect("checked"), classes)?.to_vec();
                    let reduction = engine_reduction(reduction);
                    match op {
                        Op::NllLoss { .. } => g.nll_loss_with(x, &labels, reduction)?,
                        Op::CrossEntropy { label_smoothing, .. } => {
                            g.cross_entropy_with(x, &labels, reduction, label_smoothing)?
                        }
                        _ => unreachable!("matched above"),
                    }
                }
                Op::MseLoss { reduction } => g.mse_loss(x, a(1).expect("checked"), engine_reduction(reduction))?,
                Op::Dropout { p, training } => {
                    if training {
                        let mask = self.values[args[1].expect("checked")].as_ref().expect("state has a value");
                        g.dropout(x, mask, p)?
                    } else {
                        x
                    }
                }
                Op::Permute { ref dims } => {
                    let r = g.value(x).ndim();
                    let dims: Vec<usize> = dims.iter().map(|&d| axis_of(d, r)).collect();
                    g.permute(x, &dims)?
                }
                Op::Transpose { dim0, dim1 } => {
                    let r = g.value(x).ndim();
                    g.transpose(x, axis_of(dim0, r), axis_of(dim1, r))?
                }
                Op::Concat { dim } => {
                    let xs: Vec<Var> = (0..args.len()).map(|i| a(i).expect("checked")).collect();
                    g.concat(&xs, axis_of(dim, g.value(x).ndim()))?
                }
                Op::Narrow { dim, start, length } => {
                    let axis = axis_of(dim, g.value(x).ndim());
                    let n = g.value(x).shape()[axis] as i64;
                    g.narrow(x, axis, (if start < 0 { start + n } else { start }) as usize, length)?
                }
                Op::IndexSelect { dim } => {
                    let index = self.indices(args[1].expect("checked"))?.to_vec();
                    g.index_select(x, axis_of(dim, g.value(x).ndim()), &index)?
                }
                Op::Embedding { padding_idx } => {
                    let i = args[1].expect("checked");
                    let indices = self.indices(i)?.to_vec();
                    let rows = g.value(x).shape()[0] as i64;
                    let padding = padding_idx.map(|p| (if p < 0 { p + rows } else { p }) as usize);
                    g.embedding(x, &indices, &self.checked.shapes[i], padding)?
                }
                Op::Where {} => unreachable!("handled above"),
                Op::MaskedFill { value } => {
                    let m = args[1].expect("checked");
                    let mask = self.mask(m);
                    g.masked_fill(x, &mask, &self.checked.shapes[m], value)?
                }
                Op::Reshape { .. } | Op::Flatten { .. } => {
                    let shape = crate::models::program::infer(&op, &[Some(g.value(x).shape())]).map_err(|m| Error::Shape(format!("{}: {m}", node.id)))?;
                    g.reshape(x, &shape)?
                }
            };
            vars.push(Some(v));
        }
        if let Some(l) = self.checked.loss {
            return Ok(Some(vars[l].expect("computed")));
        }
        // Without a loss: Σ output ⊙ cotangent, the vector-Jacobian product's scalar.
        let mut total: Option<Var> = None;
        for (v, cot) in &self.checked.outputs {
            let Some(cot) = cot else { continue };
            let c = g.constant(to_engine(cot)?);
            let prod = g.mul(vars[*v].expect("computed"), c)?;
            let s = g.sum(prod);
            total = Some(match total {
                None => s,
                Some(t) => g.add(t, s)?,
            });
        }
        Ok(total)
    }
}

fn engine_reduction(r: Reduction) -> EngineReduction {
    match r {
        Reduction::Mean => EngineReduction::Mean,
        Reduction::Sum => EngineReduction::Sum,
        Reduction::None => EngineReduction::None,
    }
}
