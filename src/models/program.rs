//! A tiny straight-line program of primitive ops: the shared definition of a computation
//! that every backend interprets with its own autograd. The A/B/C problem is one such
//! program; the per-op parity tests are one-op programs.

use serde::Serialize;

/// The primitives a program may use, with `torch.matmul`/NumPy broadcasting semantics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Prim {
    MatMul,
    Add,
    Sub,
    Mul,
    Neg,
    Sigmoid,
    Square,
    Relu,
    Tanh,
    Exp,
    Log,
    Sum,
    Mean,
    /// 2×2 max-pool with stride 2 over the last two axes of `[N, C, H, W]`.
    MaxPool2d,
    /// `conv2d(x, w)`: x `[N, C, H, W]`, w `[O, C, k, k]`, stride 1, padding 1, no bias.
    Conv2d,
    /// `x · wᵀ` for x `[N, in]`, w `[out, in]` (torch.nn.functional.linear, no bias).
    Linear,
    /// Batch norm in training mode with unit scale and zero shift over `[N, C(, H, W)]`.
    BatchNorm,
    /// Softmax along axis 1 of `[N, C]`.
    Softmax,
}

impl Prim {
    pub const ALL: [Prim; 18] = [
        Prim::MatMul,
        Prim::Add,
        Prim::Sub,
        Prim::Mul,
        Prim::Neg,
        Prim::Sigmoid,
        Prim::Square,
        Prim::Relu,
        Prim::Tanh,
        Prim::Exp,
        Prim::Log,
        Prim::Sum,
        Prim::Mean,
        Prim::MaxPool2d,
        Prim::Conv2d,
        Prim::Linear,
        Prim::BatchNorm,
        Prim::Softmax,
    ];

    pub fn arity(self) -> usize {
        match self {
            Prim::MatMul | Prim::Add | Prim::Sub | Prim::Mul | Prim::Conv2d | Prim::Linear => 2,
            _ => 1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Prim::MatMul => "matmul",
            Prim::Add => "add",
            Prim::Sub => "sub",
            Prim::Mul => "mul",
            Prim::Neg => "neg",
            Prim::Sigmoid => "sigmoid",
            Prim::Square => "square",
            Prim::Relu => "relu",
            Prim::Tanh => "tanh",
            Prim::Exp => "exp",
            Prim::Log => "log",
            Prim::Sum => "sum",
            Prim::Mean => "mean",
            Prim::MaxPool2d => "max_pool2d",
            Prim::Conv2d => "conv2d",
            Prim::Linear => "linear",
            Prim::BatchNorm => "batch_norm",
            Prim::Softmax => "softmax",
        }
    }
}

/// Index of a value: inputs first, in declaration order, then one per instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct ValueId(pub usize);

#[derive(Clone, Debug, Serialize)]
pub struct Input {
    pub name: String,
    /// Trainable inputs receive gradients and are updated by the optimiser.
    pub trainable: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Instr {
    pub prim: Prim,
    pub args: Vec<ValueId>,
}

/// A computation whose last instruction yields the scalar that training minimises.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Program {
    pub inputs: Vec<Input>,
    pub instrs: Vec<Instr>,
}

impl Program {
    pub fn input(&mut self, name: &str) -> ValueId {
        self.declare(name, false)
    }

    pub fn param(&mut self, name: &str) -> ValueId {
        self.declare(name, true)
    }

    fn declare(&mut self, name: &str, trainable: bool) -> ValueId {
        assert!(self.instrs.is_empty(), "declare every input before the first instruction");
        self.inputs.push(Input { name: name.to_string(), trainable });
        ValueId(self.inputs.len() - 1)
    }

    /// Appends `prim(args)` and returns its value.
    pub fn op(&mut self, prim: Prim, args: &[ValueId]) -> ValueId {
        assert_eq!(args.len(), prim.arity(), "{} takes {} argument(s)", prim.name(), prim.arity());
        let next = self.inputs.len() + self.instrs.len();
        assert!(args.iter().all(|a| a.0 < next), "an argument refers to a later value");
        self.instrs.push(Instr { prim, args: args.to_vec() });
        ValueId(next)
    }

    /// The value of the last instruction: the program's scalar output.
    pub fn output(&self) -> ValueId {
        ValueId(self.inputs.len() + self.instrs.len() - 1)
    }

    pub fn trainable(&self) -> impl Iterator<Item = (usize, &Input)> {
        self.inputs.iter().enumerate().filter(|(_, i)| i.trainable)
    }

    /// A program of one primitive applied to fresh trainable inputs and reduced with
    /// `sum` when the primitive does not already give a scalar: the per-op test harness.
    pub fn single(prim: Prim) -> Program {
        let mut p = Program::default();
        let args: Vec<ValueId> = (0..prim.arity()).map(|i| p.param(["a", "b"][i])).collect();
        let mut out = p.op(prim, &args);
        // Batch norm's outputs always sum to 0 and softmax's rows to 1: a plain sum would
        // have a zero gradient, so those are bent through tanh first.
        if matches!(prim, Prim::BatchNorm | Prim::Softmax) {
            out = p.op(Prim::Tanh, &[out]);
        }
        if !matches!(prim, Prim::Sum | Prim::Mean) {
            p.op(Prim::Sum, &[out]);
        }
        p
    }
}
