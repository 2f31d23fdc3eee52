//! The tape: every op appends a node that owns its value and names its inputs. Backward
//! sorts the nodes reachable from the loss topologically and walks them once in reverse,
//! so a node passes its gradient on only after every consumer has added to it.

use std::sync::Arc;

use ndarray::ArrayD;

use super::ops::{avg_pool, conv, dropout, elementwise, index, layer_norm, linear, matmul, norm, pool, reduce, shape, softmax};
use super::faults::{self, Fault};
use super::{Float, Tensor};
use crate::error::{Error, Result};

/// A handle to a node of one `Graph`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Var(pub(crate) usize);

impl Var {
    pub fn index(self) -> usize {
        self.0
    }
}

/// How a node was computed. Variants own their inputs, so the graph is plain data.
/// Per-op data that is not a graph value (targets, masks, saved statistics) is shared
/// behind `Arc`; element data is kept as f64, which holds f32 and f64 values exactly.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    Leaf,
    MatMul(Var, Var),
    Binary(elementwise::BinaryOp, Var, Var),
    Unary(elementwise::UnaryOp, Var),
    Sum(Var),
    Mean(Var),
    /// A reduction over `axes` (sorted), the output without them unless `keepdim`.
    ReduceDim { kind: reduce::DimReduce, x: Var, axes: Arc<[usize]>, keepdim: bool },
    Conv2d { x: Var, w: Var, b: Option<Var>, stride: usize, padding: usize },
    /// Convolution with dilation or groups, or transposed (`conv::general`).
    ConvGeneral { x: Var, w: Var, b: Option<Var>, geo: conv::general::Geometry },
    /// Average pooling, adaptive average pooling, nearest upsampling (`avg_pool`).
    AvgWindows { x: Var, windows: Arc<avg_pool::Windows> },
    /// `argmax[i]` is the flat input index output element `i` was taken from.
    /// `window`: kernel, stride, padding.
    MaxPool2d { x: Var, argmax: Arc<[usize]>, window: [usize; 3] },
    Linear { x: Var, w: Var, b: Option<Var> },
    /// `mean` and `invstd` per channel, as the backward kernel uses them.
    BatchNorm { x: Var, gamma: Var, beta: Var, mean: Arc<[f64]>, invstd: Arc<[f64]>, training: bool },
    /// Layer, RMS and group normalisation: weight and bias optional.
    RowNorm { x: Var, w: Option<Var>, b: Option<Var>, saved: Arc<layer_norm::Saved> },
    /// `noise = mask / (1-p)`, the factor each element was multiplied by.
    Dropout { x: Var, noise: Arc<[f64]> },
    /// Over the given axis.
    Softmax(Var, usize),
    LogSoftmax(Var, usize),
    NllLoss { input: Var, targets: Arc<[usize]>, reduction: softmax::Reduction },
    MseLoss { input: Var, target: Var, reduction: softmax::Reduction },
    Reshape(Var),
    /// Output axis i is input axis `dims[i]`.
    Permute {
        x: Var,
        dims: Arc<[usize]>,
    },
    Concat {
        xs: Arc<[Var]>,
        axis: usize,
    },
    Narrow {
        x: Var,
        axis: usize,
        start: usize,
    },
    IndexSelect {
        x: Var,
        axis: usize,
        index: Arc<[usize]>,
    },
    Embedding {
        weight: Var,
        indices: Arc<[usize]>,
        padding: Option<usize>,
    },
    /// `cond` broadcast to the output's shape, row-major.
    Where {
        a: Var,
        b: Var,
        cond: Arc<[bool]>,
    },
}

impl Op {
    pub fn inputs(&self) -> Vec<Var> {
        match *self {
            Op::Leaf => vec![],
            Op::MatMul(a, b) | Op::Binary(_, a, b) => vec![a, b],
            Op::Unary(_, a) | Op::Sum(a) | Op::Mean(a) | Op::Softmax(a, _) | Op::LogSoftmax(a, _) | Op::Reshape(a) => vec![a],
            Op::MseLoss { input, target, .. } => vec![input, target],
            Op::Conv2d { x, w, b, .. } | Op::ConvGeneral { x, w, b, .. } | Op::Linear { x, w, b } => [Some(x), Some(w), b].into_iter().flatten().collect(),
            Op::MaxPool2d { x, .. } | Op::AvgWindows { x, .. } | Op::Dropout { x, .. } | Op::ReduceDim { x, .. } => vec![x],
            Op::BatchNorm { x, gamma, beta, .. } => vec![x, gamma, beta],
            Op::RowNorm { x, w, b, .. } => [Some(x), w, b].into_iter().flatten().collect(),
            Op::NllLoss { input, .. } => vec![input],
            Op::Permute { x, .. } | Op::Narrow { x, .. } | Op::IndexSelect { x, .. } => vec![x],
            Op::Concat { ref xs, .. } => xs.to_vec(),
            Op::Embedding { weight, .. } => vec![weight],
            Op::Where { a, b, .. } => vec![a, b],
        }
    }
}

struct Node<F> {
    value: Tensor<F>,
    op: Op,
    requires_grad: bool,
    /// Intermediate values the forward kept for the backward: a convolution's unfolded
    /// images, so that the weight gradient does not unfold them again.
    saved: Vec<F>,
}

/// A recorded computation over `F` (`f32` or `f64`).
pub struct Graph<F> {
    nodes: Vec<Node<F>>,
}

impl<F: Float> Default for Graph<F> {
    fn default() -> Self {
        Self::new()
    }
}

impl<F: Float> Graph<F> {
    pub fn new() -> Self {
        Graph { nodes: Vec::new() }
    }

    /// A trainable leaf: backward computes its gradient.
    pub fn param(&mut self, value: Tensor<F>) -> Var {
        self.leaf(value, true)
    }

    /// A leaf that receives no gradient.
    pub fn constant(&mut self, value: Tensor<F>) -> Var {
        self.leaf(value, false)
    }

    pub fn leaf(&mut self, value: Tensor<F>, requires_grad: bool) -> Var {
        self.nodes.push(Node { value, op: Op::Leaf, requires_grad, saved: Vec::new() });
        Var(self.nodes.len() - 1)
    }

    pub fn value(&self, v: Var) -> &Tensor<F> {
        &self.nodes[v.0].value
    }

    /// Moves the value of `v` out of the graph (leaving an empty tensor), so a caller that
    /// handed its parameters over with `param` gets them back without a copy.
    pub fn take_value(&mut self, v: Var) -> Tensor<F> {
        std::mem::replace(&mut self.nodes[v.0].value, Tensor::zeros(ndarray::IxDyn(&[0])))
    }

    pub fn op(&self, v: Var) -> &Op {
        &self.nodes[v.0].op
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Records a computed node. It needs a gradient if any input does.
    pub(crate) fn push(&mut self, value: Tensor<F>, op: Op) -> Var {
        self.push_saving(value, op, Vec::new())
    }

    /// `push`, keeping `saved` for the op's backward rule.
    pub(crate) fn push_saving(&mut self, value: Tensor<F>, op: Op, saved: Vec<F>) -> Var {
        let requires_grad = op.inputs().iter().any(|i| self.nodes[i.0].requires_grad);
        self.nodes.push(Node { value, op, requires_grad, saved });
        Var(self.nodes.len() - 1)
    }

    /// Whether `v` receives a gradient in `backward`.
    pub fn requires_grad(&self, v: Var) -> bool {
        self.nodes[v.0].requires_grad
    }

    /// Nodes reachable from `root`, each after all of its inputs (post-order DFS with an
    /// explicit stack, so deep graphs cannot overflow the call stack).
    pub fn topological_order(&self, root: Var) -> Vec<Var> {
        let mut order = Vec::new();
        let mut visited = vec![false; self.nodes.len()];
        let mut stack = vec![(root, false)];
        while let Some((v, inputs_done)) = stack.pop() {
            if inputs_done {
                order.push(v);
                continue;
            }
            if visited[v.0] {
                continue;
            }
            visited[v.0] = true;
            stack.push((v, true));
            for input in self.nodes[v.0].op.inputs().into_iter().rev() {
                if !visited[input.0] {
                    stack.push((input, false));
                }
            }
        }
        order
    }

    /// The seed study's order (a fault, `BreadthFirstOrder`): nodes as a breadth-first
    /// search from the root first reaches them, which can visit a node before all of
    /// its consumers have added their gradient to it.
    fn breadth_first_order(&self, root: Var) -> Vec<Var> {
        let mut seen = vec![false; self.nodes.len()];
        let mut order = vec![root];
        seen[root.0] = true;
        let mut next = 0;
        while next < order.len() {
            for input in self.nodes[order[next].0].op.inputs() {
                if !seen[input.0] {
                    seen[input.0] = true;
                    order.push(input);
                }
            }
            next += 1;
        }
        order
    }

    /// Gradients of the scalar `root` with respect to every node that requires one.
    pub fn backward(&self, root: Var) -> Result<Gradients<F>> {
        let root_value = self.value(root);
        if root_value.len() != 1 {
            return Err(Error::Shape(format!(
                "backward needs a scalar root, got shape {:?}",
                root_value.shape()
            )));
        }
        let mut grads: Vec<Option<Tensor<F>>> = vec![None; self.nodes.len()];
        grads[root.0] = Some(ArrayD::from_elem(root_value.raw_dim(), F::one()));

        let order = if faults::on(Fault::BreadthFirstOrder) { self.breadth_first_order(root) } else { self.topological_order(root).into_iter().rev().collect() };
        for v in order {
            let node = &self.nodes[v.0];
            if !node.requires_grad {
                continue;
            }
            let Some(g) = grads[v.0].as_ref() else { continue };
            let needs = |x: Var| self.nodes[x.0].requires_grad;
            let contributions: Vec<(Var, Tensor<F>)> = match node.op {
                Op::Leaf => continue,
                Op::MatMul(a, b) => {
                    let (ga, gb) = matmul::backward(self.value(a), self.value(b), g, needs(a), needs(b));
                    asked([(a, ga), (b, gb)])
                }
                Op::Binary(kind, a, b) => {
                    let (ga, gb) = elementwise::binary_backward(kind, self.value(a), self.value(b), g);
                    vec![(a, ga), (b, gb)].into_iter().filter(|(x, _)| needs(*x)).collect()
                }
                Op::Unary(kind, a) => vec![(a, elementwise::unary_backward(kind, self.value(a), &node.value, g))],
                Op::Sum(a) => vec![(a, reduce::sum_backward(self.value(a), g))],
                Op::Mean(a) => vec![(a, reduce::mean_backward(self.value(a), g))],
                Op::ReduceDim { kind, x, ref axes, keepdim } => {
                    vec![(x, reduce::reduce_dim_backward(kind, self.value(x), &node.value, g, axes, keepdim))]
                }
                Op::Conv2d { x, w, b, stride, padding } => {
                    let need_b = b.is_some_and(needs);
                    let (xv, wv) = (self.value(x), self.value(w));
                    let saved = (!node.saved.is_empty()).then_some(&node.saved[..]);
                    let needed = (needs(x), needs(w), need_b);
                    let (gx, gw, gb) = conv::backward_with_cols(xv, wv, g, stride, padding, needed, saved);
                    let mut out = asked([(x, gx), (w, gw)]);
                    out.extend(b.zip(gb));
                    out
                }
                Op::ConvGeneral { x, w, b, ref geo } => {
                    let need = (needs(x), needs(w), b.is_some_and(needs));
                    let (gx, gw, gb) = conv::general::backward(geo, self.value(x), self.value(w), g, need);
                    let mut out = asked([(x, gx), (w, gw)]);
                    out.extend(b.zip(gb));
                    out
                }
                Op::AvgWindows { x, ref windows } => vec![(x, avg_pool::backward(self.value(x), windows, g))],
                Op::MaxPool2d { x, ref argmax, window } => vec![(x, pool::backward(self.value(x), argmax, window, g))],
                Op::Linear { x, w, b } => {
                    let need_b = b.is_some_and(needs);
                    let (gx, gw, gb) = linear::backward(self.value(x), self.value(w), g, needs(x), needs(w), need_b);
                    let mut out = asked([(x, gx), (w, gw)]);
                    out.extend(b.zip(gb));
                    out
                }
                Op::BatchNorm { x, gamma, beta, ref mean, ref invstd, training } => {
                    let (gx, gg, gb) = norm::backward(
                        self.value(x),
                        self.value(gamma),
                        mean,
                        invstd,
                        training,
                        g,
                        needs(x),
                        needs(gamma),
                        needs(beta),
                    );
                    asked([(x, gx), (gamma, gg), (beta, gb)])
                }
                Op::RowNorm { x, w, b, ref saved } => {
                    let affine_shape = w.or(b).map(|v| self.value(v).shape().to_vec()).unwrap_or_default();
                    let need = (needs(x), w.is_some_and(needs), b.is_some_and(needs));
                    let (gx, gw, gb) = layer_norm::backward(self.value(x), w.map(|w| self.value(w)), &affine_shape, saved, g, need);
                    let mut out = asked([(x, gx)]);
                    out.extend(w.zip(gw));
                    out.extend(b.zip(gb));
                    out
                }
                Op::Dropout { x, ref noise } => vec![(x, dropout::backward(noise, g))],
                Op::Softmax(a, axis) => vec![(a, softmax::softmax_backward(&node.value, g, axis))],
                Op::LogSoftmax(a, axis) => vec![(a, softmax::log_softmax_backward(&node.value, g, axis))],
                Op::NllLoss { input, ref targets, reduction } => vec![(input, softmax::nll_backward(self.value(input), targets, g, reduction))],
                Op::MseLoss { input, target, reduction } => {
                    let (gx, gt) = softmax::mse_backward(self.value(input), self.value(target), g, reduction, needs(input), needs(target));
                    asked([(input, gx), (target, gt)])
                }
                Op::Reshape(a) => vec![(a, shape::reshape_backward(self.value(a), g))],
                Op::Permute { x, ref dims } => vec![(x, shape::permute_backward(g, dims))],
                Op::Concat { ref xs, axis } => {
                    let sizes: Vec<usize> = xs.iter().map(|&x| self.value(x).shape()[axis]).collect();
                    xs.iter().copied().zip(shape::concat_backward(&sizes, g, axis)).filter(|(x, _)| needs(*x)).collect()
                }
                Op::Narrow { x, axis, start } => vec![(x, shape::narrow_backward(self.value(x), g, axis, start))],
                Op::IndexSelect { x, axis, ref index } => {
                    vec![(x, index::index_select_backward(self.value(x), g, axis, index))]
                }
                Op::Embedding { weight, ref indices, padding } => {
                    vec![(weight, index::embedding_backward(self.value(weight), g, indices, padding))]
                }
                Op::Where { a, b, ref cond } => {
                    let (ga, gb) = index::where_backward(self.value(a), self.value(b), g, cond, needs(a), needs(b));
                    asked([(a, ga), (b, gb)])
                }
            };
            for (x, gx) in contributions {
                accumulate(&mut grads[x.0], gx);
            }
        }
        Ok(Gradients { grads })
    }
}

/// The gradients a backward rule computed; it skips the inputs that need none.
fn asked<F, const K: usize>(pairs: [(Var, Option<Tensor<F>>); K]) -> Vec<(Var, Tensor<F>)> {
    pairs.into_iter().filter_map(|(x, gx)| gx.map(|t| (x, t))).collect()
}

/// Fan-out is why gradients add: a value used twice receives both contributions.
fn accumulate<F: Float>(slot: &mut Option<Tensor<F>>, g: Tensor<F>) {
    match slot {
        Some(acc) if !faults::on(Fault::NoFanOutAccumulation) => *acc += &g,
        _ => *slot = Some(g),
    }
}

/// The result of `Graph::backward`.
pub struct Gradients<F> {
    grads: Vec<Option<Tensor<F>>>,
}

impl<F: Float> Gradients<F> {
    /// The gradient of `v`, or `None` when `v` does not influence the root.
    pub fn get(&self, v: Var) -> Option<&Tensor<F>> {
        self.grads.get(v.0).and_then(Option::as_ref)
    }

    /// Moves the gradient of `v` out, with zeros shaped like `like` when `v` does not
    /// influence the root; `get_or_zeros` without the copy.
    pub fn take_or_zeros(&mut self, v: Var, like: &Tensor<F>) -> Tensor<F> {
        self.grads.get_mut(v.0).and_then(Option::take).unwrap_or_else(|| Tensor::zeros(like.raw_dim()))
    }

    /// The gradient of `v`, with zeros when `v` does not influence the root.
    pub fn get_or_zeros(&self, v: Var, like: &Tensor<F>) -> Tensor<F> {
        self.get(v).cloned().unwrap_or_else(|| Tensor::zeros(like.raw_dim()))
    }
}
