//! Shrinking a finding: while the same finding (op, backend, kind) still reproduces,
//! cut the program to the fewest nodes (the shortest prefix whose last node still shows
//! it, then only that node's ancestors, then shape-preserving nodes bypassed), shrink
//! every input's dimensions, then simplify the values to small integers. Deterministic:
//! every step is tried in a fixed order.

use std::collections::BTreeSet;

use super::{judge, Case, FindingKey, FuzzOptions};
use crate::error::Result;
use crate::host::HostTensor;
use crate::models::program::{check, Node};
use crate::models::rng::SplitMix64;
use crate::models::{Op, Program};

/// A smaller program (values inline) and its inputs.
#[derive(Clone, Debug)]
pub struct Shrunk {
    pub program: Program,
    pub inputs: Vec<HostTensor>,
}

/// Attempts at most this many candidate programs per finding.
const BUDGET: usize = 400;

pub fn shrink(case: &Case, key: &FindingKey, opts: &FuzzOptions) -> Result<Shrunk> {
    let mut best = Shrunk { program: case.program.clone(), inputs: case.inputs.clone() };
    let mut tries = 0;
    let still = |s: &Shrunk, tries: &mut usize| -> Result<bool> {
        *tries += 1;
        if *tries > BUDGET || check(&s.program).is_err() {
            return Ok(false);
        }
        // A failure is the same when the same backend fails the same way (the op it was
        // attributed to is not the shrunk program's last node).
        let failure = key.kind.starts_with("refused") || key.kind.starts_with("failed");
        Ok(judge(&s.program, &s.inputs, opts)?.is_some_and(|(k, _)| k.kind == key.kind && k.odd_backend == key.odd_backend && (failure || k.op == key.op)))
    };
    // The shortest prefix that still shows it, cut to its last node's ancestors.
    for k in 0..best.program.nodes.len() {
        let candidate = ancestors_of(&best, k);
        if still(&candidate, &mut tries)? {
            best = candidate;
            break;
        }
    }
    // Shape-preserving nodes bypassed, one at a time.
    let mut j = 0;
    while j + 1 < best.program.nodes.len() {
        match bypass(&best, j) {
            Some(c) if still(&c, &mut tries)? => best = c,
            _ => j += 1,
        }
    }
    // Every dimension of every input made as small as the finding allows.
    let mut progress = true;
    while progress && tries < BUDGET {
        progress = false;
        for i in 0..best.inputs.len() {
            for d in 0..best.inputs[i].shape.len() {
                if best.inputs[i].shape[d] > 1 {
                    let c = resized(&best, i, d, case.regime);
                    if still(&c, &mut tries)? {
                        best = c;
                        progress = true;
                    }
                }
            }
        }
    }
    // Values: a few distinct small integers, then all entries of an input equal.
    for pattern in [Pattern::Cycle3, Pattern::Ones] {
        let c = with_values(&best, pattern);
        if still(&c, &mut tries)? {
            best = c;
        }
    }
    Ok(best)
}

/// The program cut after node `k`: its ancestors only, loss the sum of node `k`.
pub fn ancestors_of(s: &Shrunk, k: usize) -> Shrunk {
    let nodes = &s.program.nodes;
    let mut needed: BTreeSet<String> = BTreeSet::from([nodes[k].id.clone()]);
    for n in nodes[..=k].iter().rev() {
        if needed.contains(&n.id) {
            needed.extend(n.inputs.iter().flatten().cloned());
        }
    }
    let mut kept: Vec<Node> = nodes[..=k].iter().filter(|n| needed.contains(&n.id)).cloned().collect();
    let last = kept.last().expect("node k is kept").id.clone();
    let scalar = matches!(kept.last().map(|n| &n.op), Some(Op::Sum {} | Op::Mean {} | Op::CrossEntropy { .. } | Op::NllLoss { .. }));
    let loss = if scalar {
        last
    } else {
        let id = format!("{last}_sum");
        kept.push(Node { id: id.clone(), op: Op::Sum {}, inputs: vec![Some(last)] });
        id
    };
    let mut program = Program { nodes: kept, loss: Some(loss), ..s.program.clone() };
    let inputs = keep_used_inputs(&mut program, &s.inputs);
    Shrunk { program, inputs }
}

/// Node `j` removed, its uses reading its first input instead (kept only when that
/// leaves every shape as it was, which `check` decides).
fn bypass(s: &Shrunk, j: usize) -> Option<Shrunk> {
    let node = &s.program.nodes[j];
    let with = node.inputs.first()?.clone()?;
    let id = node.id.clone();
    let mut program = s.program.clone();
    program.nodes.remove(j);
    for n in &mut program.nodes {
        for i in n.inputs.iter_mut().flatten() {
            if *i == id {
                *i = with.clone();
            }
        }
    }
    if program.loss.as_deref() == Some(id.as_str()) {
        return None;
    }
    let inputs = keep_used_inputs(&mut program, &s.inputs);
    Some(Shrunk { program, inputs })
}

/// Input `i` with dimension `d` one smaller, values drawn again from the regime.
fn resized(s: &Shrunk, i: usize, d: usize, regime: super::Regime) -> Shrunk {
    let mut c = s.clone();
    c.inputs[i].shape[d] -= 1;
    let mut rng = SplitMix64::new(0x5EED ^ (i as u64) << 8 ^ d as u64);
    let n: usize = c.inputs[i].shape.iter().product();
    c.program.inputs[i].shape = c.inputs[i].shape.clone();
    // Labels, masks and variances are redrawn by their kind (the class count may have
    // changed with the scores' shape).
    let kinds = super::gen::input_kinds(&c.program);
    c.inputs[i].data = (0..n).map(|_| kinds[i].draw(regime, &mut rng)).collect();
    for (j, kind) in kinds.iter().enumerate() {
        for v in &mut c.inputs[j].data {
            *v = kind.clamp(*v);
        }
    }
    write_values(&mut c);
    c
}

#[derive(Clone, Copy)]
enum Pattern {
    /// 0, 1, 2, 0, 1, 2, ...
    Cycle3,
    Ones,
}

fn with_values(s: &Shrunk, pattern: Pattern) -> Shrunk {
    let mut c = s.clone();
    let kinds = super::gen::input_kinds(&c.program);
    for (t, kind) in c.inputs.iter_mut().zip(kinds) {
        for (e, v) in t.data.iter_mut().enumerate() {
            // NaN and infinities (the NaN/infinity regime) stay where they are.
            if !v.is_finite() {
                continue;
            }
            *v = kind.clamp(match pattern {
                Pattern::Cycle3 => (e % 3) as f64,
                Pattern::Ones => 1.0,
            });
        }
    }
    write_values(&mut c);
    c
}

fn write_values(s: &mut Shrunk) {
    for (d, t) in s.program.inputs.iter_mut().zip(&s.inputs) {
        d.values = Some(crate::models::program::values_json(&t.data));
    }
}

/// Drops inputs no node reads; returns the kept inputs' values in the new order.
fn keep_used_inputs(program: &mut Program, inputs: &[HostTensor]) -> Vec<HostTensor> {
    let used: BTreeSet<&String> = program.nodes.iter().flat_map(|n| n.inputs.iter().flatten()).collect();
    let keep: Vec<bool> = program.inputs.iter().map(|d| used.contains(&d.name)).collect();
    let values: Vec<HostTensor> = inputs.iter().zip(&keep).filter(|(_, k)| **k).map(|(t, _)| t.clone()).collect();
    let mut it = keep.iter();
    program.inputs.retain(|_| *it.next().expect("one flag per input"));
    values
}
