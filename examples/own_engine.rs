//! Bring your own engine: a tiny reverse-mode autodiff engine written outside the
//! harness (flat `Vec<f64>` values, a tape walked backwards), plugged into it through the
//! open backend interface and compared with the references in one call.
//!
//!     cargo run --release --example own_engine                  # the engine as written
//!     cargo run --release --example own_engine -- --planted-bug # tanh's backward as 1 - y
//!
//! It is deliberately limited: element-wise ops with NumPy broadcasting, 2-D matrix
//! products, sums and means, in f64 only. It declares exactly that
//! (`Backend::capabilities`), so the harness checks those ops and skips the rest with the
//! reason. Everything a backend must provide is in `impl Backend for Tiny` and
//! `impl Executor for TinyExecutor` below; the rest is the engine itself.

use backprop_parity::backends::{register, Backend, BackendKind, Capabilities, Executor, Outcome, Registration, Request};
use backprop_parity::error::{Error, Result};
use backprop_parity::host::HostTensor;
use backprop_parity::models::program::{check, Checked};
use backprop_parity::models::{Op, Program, Role};
use backprop_parity::study::own::{check_backend, OwnCheck, OwnCheckOptions};
use backprop_parity::DType;

/// The ops the engine has, in the program format's spelling.
pub const TINY_OPS: [&str; 14] = ["add", "sub", "mul", "div", "neg", "square", "exp", "log", "relu", "tanh", "sigmoid", "matmul", "sum", "mean"];

/// The engine as a backend. `planted_bug` gives tanh the backward `1 - y` instead of
/// `1 - y²`: the kind of slip the harness is for.
pub struct Tiny {
    pub name: &'static str,
    pub planted_bug: bool,
}

impl Backend for Tiny {
    fn kind(&self) -> BackendKind {
        BackendKind::named(self.name).expect("registered before use")
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { ops: Some(TINY_OPS.to_vec()), dtypes: Some(vec![DType::F64]) }
    }

    fn executor(&self, program: &Program, inputs: &[HostTensor], dtype: DType) -> Result<Box<dyn Executor>> {
        if dtype != DType::F64 {
            return Err(Error::Unsupported(format!("{} computes in f64 only", self.name)));
        }
        let checked = check(program)?;
        Ok(Box::new(TinyExecutor { program: program.clone(), checked, values: inputs.to_vec(), grads: vec![None; inputs.len()], velocity: vec![None; inputs.len()], planted_bug: self.planted_bug }))
    }
}

/// Registers the engine under `name` (once per process) and returns its handle.
pub fn register_tiny(name: &'static str, planted_bug: bool) -> BackendKind {
    BackendKind::named(name).unwrap_or_else(|| {
        let mut reg = Registration::new(name, "tiny (examples/own_engine.rs)", "0.1", move |_| Ok(Box::new(Tiny { name, planted_bug }) as Box<dyn Backend>));
        reg.framework = if planted_bug { "tiny with a planted tanh bug".into() } else { reg.framework };
        register(reg).expect("a new name")
    })
}

pub struct TinyExecutor {
    program: Program,
    checked: Checked,
    /// The current value of every input.
    values: Vec<HostTensor>,
    grads: Vec<Option<HostTensor>>,
    velocity: Vec<Option<HostTensor>>,
    planted_bug: bool,
}

impl Executor for TinyExecutor {
    fn set_input(&mut self, index: usize, value: &HostTensor) -> Result<()> {
        *self.values.get_mut(index).ok_or_else(|| Error::Invalid(format!("no input {index}")))? = value.clone();
        Ok(())
    }

    fn input(&self, index: usize) -> Result<HostTensor> {
        self.values.get(index).cloned().ok_or_else(|| Error::Invalid(format!("no input {index}")))
    }

    fn run(&mut self, request: Request) -> Result<Outcome> {
        let n = self.program.inputs.len();
        let mut vals: Vec<HostTensor> = self.values.clone();
        for (k, node) in self.program.nodes.iter().enumerate() {
            let args: Vec<&HostTensor> = self.checked.args[k].iter().map(|a| &vals[a.expect("no optional inputs here")]).collect();
            let y = forward(&node.op, &args).map_err(|e| Error::backend("tiny", format!("node '{}': {e}", node.id)))?;
            vals.push(y);
        }
        let outputs: Vec<HostTensor> = if request.all_values { vals[n..].to_vec() } else { self.checked.outputs.iter().map(|(v, _)| vals[*v].clone()).collect() };
        let loss = self.checked.loss.map(|l| vals[l].data[0]);
        let mut out = Outcome { loss, values: outputs, grads: vec![None; n] };
        if request.backward {
            // Seeds: 1 for the loss, or each output's cotangent.
            let mut adj: Vec<Option<Vec<f64>>> = vec![None; vals.len()];
            match self.checked.loss {
                Some(l) => adj[l] = Some(vec![1.0]),
                None => {
                    for (v, cot) in &self.checked.outputs {
                        if let Some(c) = cot {
                            accumulate(&mut adj[*v], &c.data);
                        }
                    }
                }
            }
            for (k, node) in self.program.nodes.iter().enumerate().rev() {
                let Some(g) = adj[n + k].take() else { continue };
                let ids: Vec<usize> = self.checked.args[k].iter().map(|a| a.expect("no optional inputs here")).collect();
                let args: Vec<&HostTensor> = ids.iter().map(|&i| &vals[i]).collect();
                let grads = backward(&node.op, &args, &vals[n + k], &g, self.planted_bug);
                for (&i, gi) in ids.iter().zip(grads) {
                    accumulate(&mut adj[i], &gi);
                }
            }
            for (i, d) in self.program.inputs.iter().enumerate() {
                if d.needs_grad() {
                    let g = HostTensor { shape: d.shape.clone(), data: adj[i].take().unwrap_or_else(|| vec![0.0; vals[i].data.len()]) };
                    if request.host_grads {
                        out.grads[i] = Some(g.clone());
                    }
                    self.grads[i] = Some(g);
                }
            }
        }
        Ok(out)
    }

    fn sgd_step(&mut self, lr: f64, momentum: Option<f64>) -> Result<()> {
        for i in 0..self.values.len() {
            let (Role::Param, Some(g)) = (self.program.inputs[i].role, &self.grads[i]) else { continue };
            // PyTorch's rule: v = m·v + g (the first buffer is g itself), p -= lr·v.
            let step: Vec<f64> = match (momentum, &self.velocity[i]) {
                (None, _) => g.data.clone(),
                (Some(_), None) => g.data.clone(),
                (Some(m), Some(v)) => v.data.iter().zip(&g.data).map(|(v, g)| m * v + g).collect(),
            };
            if momentum.is_some() {
                self.velocity[i] = Some(HostTensor { shape: g.shape.clone(), data: step.clone() });
            }
            for (p, s) in self.values[i].data.iter_mut().zip(&step) {
                *p -= lr * s;
            }
        }
        Ok(())
    }

    fn velocity(&self, index: usize) -> Result<Option<HostTensor>> {
        Ok(self.velocity.get(index).cloned().flatten())
    }

    fn set_velocity(&mut self, index: usize, value: &HostTensor) -> Result<()> {
        self.velocity[index] = Some(value.clone());
        Ok(())
    }
}

fn accumulate(slot: &mut Option<Vec<f64>>, g: &[f64]) {
    match slot {
        Some(acc) => acc.iter_mut().zip(g).for_each(|(a, b)| *a += b),
        None => *slot = Some(g.to_vec()),
    }
}

/// NumPy broadcasting: the output shape, and for each operand the flat index it reads
/// at each output position.
fn broadcast(a: &[usize], b: &[usize]) -> std::result::Result<(Vec<usize>, Vec<usize>, Vec<usize>), String> {
    let r = a.len().max(b.len());
    let pad = |s: &[usize]| std::iter::repeat_n(1, r - s.len()).chain(s.iter().copied()).collect::<Vec<_>>();
    let (pa, pb) = (pad(a), pad(b));
    let mut shape = Vec::with_capacity(r);
    for (&x, &y) in pa.iter().zip(&pb) {
        if x != y && x != 1 && y != 1 {
            return Err(format!("shapes {a:?} and {b:?} do not broadcast"));
        }
        shape.push(x.max(y));
    }
    let index = |p: &[usize]| -> Vec<usize> {
        let total: usize = shape.iter().product();
        (0..total)
            .map(|mut flat| {
                let (mut idx, mut stride) = (0, 1);
                for d in (0..r).rev() {
                    let c = flat % shape[d];
                    flat /= shape[d];
                    if p[d] != 1 {
                        idx += c * stride;
                    }
                    stride *= p[d];
                }
                idx
            })
            .collect()
    };
    Ok((shape.clone(), index(&pa), index(&pb)))
}

fn unary(x: &HostTensor, f: impl Fn(f64) -> f64) -> HostTensor {
    HostTensor { shape: x.shape.clone(), data: x.data.iter().map(|&v| f(v)).collect() }
}

fn forward(op: &Op, args: &[&HostTensor]) -> std::result::Result<HostTensor, String> {
    let x = args[0];
    Ok(match op {
        Op::Add {} | Op::Sub {} | Op::Mul {} | Op::Div {} => {
            let y = args[1];
            let (shape, ia, ib) = broadcast(&x.shape, &y.shape)?;
            let f = |a: f64, b: f64| match op {
                Op::Add {} => a + b,
                Op::Sub {} => a - b,
                Op::Mul {} => a * b,
                _ => a / b,
            };
            HostTensor { shape, data: ia.iter().zip(&ib).map(|(&i, &j)| f(x.data[i], y.data[j])).collect() }
        }
        Op::Neg {} => unary(x, |v| -v),
        Op::Square {} => unary(x, |v| v * v),
        Op::Exp {} => unary(x, f64::exp),
        Op::Log {} => unary(x, f64::ln),
        Op::Relu {} => unary(x, |v| if v > 0.0 { v } else { 0.0 }),
        Op::Tanh {} => unary(x, f64::tanh),
        Op::Sigmoid {} => unary(x, |v| 1.0 / (1.0 + (-v).exp())),
        Op::MatMul {} => {
            let y = args[1];
            let (&[m, k], &[k2, n]) = (x.shape.as_slice(), y.shape.as_slice()) else { return Err(format!("matmul of {:?} and {:?}: tiny multiplies matrices only", x.shape, y.shape)) };
            if k != k2 {
                return Err(format!("matmul: inner sizes {k} and {k2}"));
            }
            let mut data = vec![0.0; m * n];
            for i in 0..m {
                for p in 0..k {
                    for j in 0..n {
                        data[i * n + j] += x.data[i * k + p] * y.data[p * n + j];
                    }
                }
            }
            HostTensor { shape: vec![m, n], data }
        }
        Op::Sum {} => HostTensor { shape: vec![], data: vec![x.data.iter().sum()] },
        Op::Mean {} => HostTensor { shape: vec![], data: vec![x.data.iter().sum::<f64>() / x.data.len() as f64] },
        other => return Err(format!("tiny has no {}", other.name())),
    })
}

/// The gradient of each argument, given the node's output `y` and its gradient `g`.
fn backward(op: &Op, args: &[&HostTensor], y: &HostTensor, g: &[f64], planted_bug: bool) -> Vec<Vec<f64>> {
    let x = args[0];
    let each = |f: &dyn Fn(usize) -> f64| (0..x.data.len()).map(f).collect::<Vec<f64>>();
    match op {
        Op::Add {} | Op::Sub {} | Op::Mul {} | Op::Div {} => {
            let b = args[1];
            let (_, ia, ib) = broadcast(&x.shape, &b.shape).expect("the forward broadcast");
            let (mut ga, mut gb) = (vec![0.0; x.data.len()], vec![0.0; b.data.len()]);
            // A broadcast operand sums its gradient over the positions it was read at.
            for (o, (&i, &j)) in ia.iter().zip(&ib).enumerate() {
                let (u, v) = (x.data[i], b.data[j]);
                let (da, db) = match op {
                    Op::Add {} => (1.0, 1.0),
                    Op::Sub {} => (1.0, -1.0),
                    Op::Mul {} => (v, u),
                    _ => (1.0 / v, -u / (v * v)),
                };
                ga[i] += g[o] * da;
                gb[j] += g[o] * db;
            }
            vec![ga, gb]
        }
        Op::Neg {} => vec![each(&|i| -g[i])],
        Op::Square {} => vec![each(&|i| 2.0 * x.data[i] * g[i])],
        Op::Exp {} => vec![each(&|i| y.data[i] * g[i])],
        Op::Log {} => vec![each(&|i| g[i] / x.data[i])],
        Op::Relu {} => vec![each(&|i| if x.data[i] > 0.0 { g[i] } else { 0.0 })],
        Op::Tanh {} if planted_bug => vec![each(&|i| (1.0 - y.data[i]) * g[i])],
        Op::Tanh {} => vec![each(&|i| (1.0 - y.data[i] * y.data[i]) * g[i])],
        Op::Sigmoid {} => vec![each(&|i| y.data[i] * (1.0 - y.data[i]) * g[i])],
        Op::MatMul {} => {
            let b = args[1];
            let (m, k, n) = (x.shape[0], x.shape[1], b.shape[1]);
            let (mut ga, mut gb) = (vec![0.0; m * k], vec![0.0; k * n]);
            for i in 0..m {
                for p in 0..k {
                    for j in 0..n {
                        ga[i * k + p] += g[i * n + j] * b.data[p * n + j];
                        gb[p * n + j] += x.data[i * k + p] * g[i * n + j];
                    }
                }
            }
            vec![ga, gb]
        }
        Op::Sum {} => vec![vec![g[0]; x.data.len()]],
        Op::Mean {} => vec![vec![g[0] / x.data.len() as f64; x.data.len()]],
        _ => unreachable!("forward refused it"),
    }
}

/// Registers the engine and compares it with the references (default: the other
/// backends of default runs).
pub fn check_tiny(planted_bug: bool, opts: &OwnCheckOptions) -> Result<OwnCheck> {
    let kind = register_tiny(if planted_bug { "tiny_buggy" } else { "tiny" }, planted_bug);
    check_backend(kind, opts)
}

#[allow(dead_code)]
fn main() {
    let planted_bug = std::env::args().any(|a| a == "--planted-bug");
    let opts = OwnCheckOptions { op_cases: 20, fuzz_cases: 300, ..OwnCheckOptions::default() };
    match check_tiny(planted_bug, &opts) {
        Ok(check) => {
            println!("{}", check.summary());
            std::process::exit(if check.agrees() { 0 } else { 1 });
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    }
}
