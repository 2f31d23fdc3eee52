//! The seed study's first problem: three K×K matrices trained by gradient descent.
//!
//! ```text
//! y = x·A     v = x·B     u = sigmoid(y)     z = u + v     w = z·C     loss = Σ w²
//! ```
//!
//! `x` is a vector of K values (the seed used ones, K = 3), so `x·A` is the vector·matrix
//! product whose gradient the original graph library reduced to an inner product.

use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::program::{Op, Program};
use super::rng::SplitMix64;
use crate::error::{Error, Result};
use crate::host::HostTensor;

/// The seed study's settings.
pub const SEED_K: usize = 3;
pub const SEED_LR: f64 = 0.01;
pub const SEED_STEPS: usize = 30;

/// Names of the program's inputs, in order: `x` and the three trained matrices.
pub const INPUTS: [&str; 4] = ["x", "A", "B", "C"];

/// The computation, once, for every backend.
pub fn program(k: usize) -> Program {
    let mut p = Program { description: Some("the seed's A/B/C problem: loss = Σ ((sigmoid(x·A) + x·B)·C)²".into()), ..Program::default() };
    let x = p.input("x", &[k]);
    let a = p.param("A", &[k, k]);
    let b = p.param("B", &[k, k]);
    let c = p.param("C", &[k, k]);
    let y = p.node("y", Op::MatMul {}, &[Some(&x), Some(&a)]);
    let u = p.node("u", Op::Sigmoid {}, &[Some(&y)]);
    let v = p.node("v", Op::MatMul {}, &[Some(&x), Some(&b)]);
    let z = p.node("z", Op::Add {}, &[Some(&u), Some(&v)]);
    let w = p.node("w", Op::MatMul {}, &[Some(&z), Some(&c)]);
    let w2 = p.node("w2", Op::Square {}, &[Some(&w)]);
    let loss = p.node("loss", Op::Sum {}, &[Some(&w2)]);
    p.set_loss(&loss);
    p
}

/// Where the starting values come from (`--init`).
#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum InitSource {
    /// Every entry 1, as in the seed study.
    Ones,
    /// Every entry of x, A, B, C uniform in [-1, 1) from SplitMix64(seed), in that order,
    /// row by row.
    Seed(u64),
    /// A JSON file `{"x": [...], "A": [[...]], "B": [[...]], "C": [[...]]}`.
    File(String),
}

impl FromStr for InitSource {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s == "ones" {
            Ok(InitSource::Ones)
        } else if let Some(n) = s.strip_prefix("seed:") {
            n.parse()
                .map(InitSource::Seed)
                .map_err(|_| format!("'{s}': expected seed:N with N a non-negative integer"))
        } else if s.is_empty() {
            Err("expected ones, seed:N or the path of a JSON file".into())
        } else {
            Ok(InitSource::File(s.to_string()))
        }
    }
}

impl std::fmt::Display for InitSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InitSource::Ones => f.write_str("ones"),
            InitSource::Seed(n) => write!(f, "seed:{n}"),
            InitSource::File(p) => f.write_str(p),
        }
    }
}

/// The starting point of an A/B/C run, in `f64`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AbcInit {
    pub x: Vec<f64>,
    #[serde(rename = "A")]
    pub a: Vec<Vec<f64>>,
    #[serde(rename = "B")]
    pub b: Vec<Vec<f64>>,
    #[serde(rename = "C")]
    pub c: Vec<Vec<f64>>,
}

impl AbcInit {
    pub fn ones(k: usize) -> Self {
        let m = vec![vec![1.0; k]; k];
        AbcInit { x: vec![1.0; k], a: m.clone(), b: m.clone(), c: m }
    }

    pub fn seeded(k: usize, seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed);
        let mut vec = |n: usize| (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect::<Vec<_>>();
        let x = vec(k);
        let mut mat = || (0..k).map(|_| vec(k)).collect::<Vec<_>>();
        let (a, b, c) = (mat(), mat(), mat());
        AbcInit { x, a, b, c }
    }

    /// Reads and validates an init file; errors name the file and the problem.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let init: AbcInit = serde_json::from_str(&text).map_err(|e| {
            let lower = text.to_ascii_lowercase();
            if ["nan", "inf"].iter().any(|w| lower.contains(w)) || e.to_string().contains("out of range") {
                Error::file(path, format!("holds NaN, infinity or an out-of-range number ({e}): every value must be a finite number"))
            } else {
                Error::file(path, format!("not a valid init file ({e}); expected {{\"x\": [..K numbers], \"A\": [[..]], \"B\": [[..]], \"C\": [[..]]}} with K×K matrices"))
            }
        })?;
        init.validate().map_err(|m| Error::file(path, m))?;
        Ok(init)
    }

    pub fn k(&self) -> usize {
        self.x.len()
    }

    /// K ≥ 1, every matrix K×K, every value finite.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let k = self.k();
        if k == 0 {
            return Err("x is empty: K must be at least 1".into());
        }
        for (name, m) in [("A", &self.a), ("B", &self.b), ("C", &self.c)] {
            if m.len() != k || m.iter().any(|row| row.len() != k) {
                let shape: Vec<usize> = m.iter().map(Vec::len).collect();
                return Err(format!(
                    "{name} must be {k}×{k} to match x of length {k}, got {} rows of lengths {shape:?}",
                    m.len()
                ));
            }
        }
        let values = self.x.iter().chain([&self.a, &self.b, &self.c].into_iter().flatten().flatten());
        if let Some(pos) = values.clone().position(|v| !v.is_finite()) {
            return Err(format!("value #{pos} (counting x, then A, B, C row by row) is not finite"));
        }
        Ok(())
    }

    /// The program's inputs in order: x, A, B, C.
    pub fn tensors(&self) -> Vec<HostTensor> {
        let k = self.k();
        let mat = |m: &Vec<Vec<f64>>| HostTensor { shape: vec![k, k], data: m.concat() };
        vec![HostTensor { shape: vec![k], data: self.x.clone() }, mat(&self.a), mat(&self.b), mat(&self.c)]
    }
}

/// One A/B/C study: where to start, how to train.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct AbcSpec {
    pub init_source: InitSource,
    pub init: AbcInit,
    pub lr: f64,
    pub steps: usize,
}

/// Largest K of `abc --k`.
pub const MAX_K: usize = 512;
const WHY_MAX_K: &str = "three K×K matrices and their gradients at every step are kept for the report; larger problems belong in a program file for `run`";
/// Most steps of `abc --steps`.
pub const MAX_STEPS: usize = 100_000;
/// Most gradient entries (3·K²·steps) one backend keeps for the report (80 MB in f64).
pub const MAX_KEPT_VALUES: usize = 10_000_000;

impl AbcSpec {
    /// Resolves `--init`, `--k`, `--lr` and `--steps` into a checked spec.
    pub fn new(source: InitSource, k: Option<usize>, lr: f64, steps: usize) -> Result<Self> {
        if k == Some(0) {
            return Err(Error::Invalid("--k 0: K must be at least 1".into()));
        }
        if let Some(k) = k.filter(|&k| k > MAX_K) {
            return Err(Error::Invalid(format!("--k {k}: at most {MAX_K} ({WHY_MAX_K})")));
        }
        if steps == 0 {
            return Err(Error::Invalid("--steps 0: at least one step is needed".into()));
        }
        if steps > MAX_STEPS {
            return Err(Error::Invalid(format!("--steps {steps}: at most {MAX_STEPS} (every step's loss and gradients are kept and plotted)")));
        }
        if !(lr.is_finite() && lr > 0.0) {
            return Err(Error::Invalid(format!("--lr {lr:e}: expected a finite learning rate > 0 (a negative one climbs the loss)")));
        }
        let init = match &source {
            InitSource::Ones => AbcInit::ones(k.unwrap_or(SEED_K)),
            InitSource::Seed(n) => AbcInit::seeded(k.unwrap_or(SEED_K), *n),
            InitSource::File(p) => {
                let init = AbcInit::from_file(Path::new(p))?;
                if let Some(k) = k.filter(|&k| k != init.k()) {
                    return Err(Error::file(p, format!("--k {k} conflicts with the file, whose x has {} entries", init.k())));
                }
                init
            }
        };
        if init.k() > MAX_K {
            return Err(Error::Invalid(format!("--init {}: K = {} is above the limit of {MAX_K} ({WHY_MAX_K})", source, init.k())));
        }
        let kept = 3 * init.k() * init.k() * steps;
        if kept > MAX_KEPT_VALUES {
            return Err(Error::Invalid(format!(
                "--k {} with --steps {steps}: {kept} gradient entries would be kept per backend; at most {MAX_KEPT_VALUES} (3·K²·steps), so lower one of them",
                init.k()
            )));
        }
        Ok(AbcSpec { init_source: source, init, lr, steps })
    }

    pub fn seed(steps: usize) -> Self {
        AbcSpec { init_source: InitSource::Ones, init: AbcInit::ones(SEED_K), lr: SEED_LR, steps }
    }
}
