//! `parity-report ops`: every op of the program format, and every implementation a
//! framework offers of it, on random cases drawn over the op's valid domain (`cases`).
//! Each case is the op alone with a weighted-sum loss (`Program::weighted`); every
//! implementation's output and input gradients are compared with every other backend's
//! default implementation and with central finite differences in f64. A disagreement is
//! a finding about an implementation when finite differences side with another backend
//! and against it; the first disagreeing case of each implementation is kept as a
//! program file that `parity-report run` replays.

pub mod cases;

use std::collections::BTreeMap;

use serde::Serialize;

use super::grads::grad_tolerance;
use super::lockstep::{backend, BackendOptions};
use crate::backends::{Backend, BackendKind, Request};
use crate::dtype::DType;
use crate::error::Result;
use crate::host::HostTensor;
use crate::models::{Op, Program};
use crate::parity::{compare, largest_magnitude, numeric_gradient, Tolerance};

pub struct OpsOptions {
    pub ops: Vec<&'static str>,
    pub cases: usize,
    pub seed: u64,
    pub dtype: DType,
    pub backends: Vec<BackendKind>,
    pub backend_options: BackendOptions,
}

/// One implementation of one op: a backend's default, or one of its alternatives.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct ImplRow {
    pub op: String,
    pub backend: BackendKind,
    /// `default`, or the alternative's name (`Backend::implementations`).
    pub implementation: String,
    pub cases: usize,
    /// Cases the implementation refused or failed on, and the first message.
    pub refused: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_refusal: Option<String>,
    /// Cases whose gradient lacked an input's entry or held NaN/infinity.
    pub missing_or_non_finite: usize,
    /// Cases judged by finite differences, and how many agreed.
    pub fd_checked: usize,
    pub fd_agree: usize,
    /// Per other backend (its default implementation): cases both computed, and how
    /// many agreed within the dtype's tolerance.
    pub compared: BTreeMap<BackendKind, usize>,
    pub agree: BTreeMap<BackendKind, usize>,
    /// The worst scaled difference of output or gradient against any other backend, and
    /// against finite differences.
    pub worst_scaled: f64,
    pub worst_fd_scaled: f64,
    /// Cases where this implementation disagrees with finite differences while another
    /// backend agrees with them: a finding about this implementation.
    pub findings: usize,
    /// Cases where it disagrees with two or more other backends that agree with each
    /// other: a finding too, where finite differences are too coarse to judge.
    pub odd_one_out: usize,
    /// The first case with a disagreement (any cause), as a replayable program (path
    /// inside the report set), with the inputs inline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_disagreement: Option<String>,
    /// Why the backend does not take this op at all (its declared capabilities): every
    /// case skipped, none counted as a refusal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unsupported: Option<String>,
}

impl ImplRow {
    /// A row with nothing counted yet.
    fn empty(op: &str, backend: BackendKind, implementation: &str, cases: usize) -> Self {
        ImplRow {
            op: op.to_string(),
            backend,
            implementation: implementation.to_string(),
            cases,
            refused: 0,
            first_refusal: None,
            missing_or_non_finite: 0,
            fd_checked: 0,
            fd_agree: 0,
            compared: BTreeMap::new(),
            agree: BTreeMap::new(),
            worst_scaled: 0.0,
            worst_fd_scaled: 0.0,
            findings: 0,
            odd_one_out: 0,
            first_disagreement: None,
            unsupported: None,
        }
    }
}

#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct OpsReport {
    pub cases: usize,
    pub seed: u64,
    pub dtype: DType,
    pub backends: Vec<BackendKind>,
    /// Agreement: max |a - b| <= this × the compared tensor's largest entry.
    pub scaled_tolerance: f64,
    /// Against finite differences (computed in f64 with the most trusted backend that
    /// computes the case): max |analytic - numeric| <= this × max(1, largest entry).
    pub fd_tolerance: f64,
    pub rows: Vec<ImplRow>,
    /// The first disagreeing case of each implementation: (file name, program JSON).
    #[serde(skip)]
    pub programs: Vec<(String, String)>,
    pub seconds: f64,
}

/// What one implementation computed on one case.
struct Computed {
    output: HostTensor,
    grads: Vec<Option<HostTensor>>,
}

/// Finite differences are taken on cases with at most this many differentiated entries.
const FD_MAX_ENTRIES: usize = 2048;

pub fn run(opts: &OpsOptions, mut progress: impl FnMut(&str, usize, usize)) -> Result<OpsReport> {
    let start = std::time::Instant::now();
    let dtype = opts.dtype;
    let tol = grad_tolerance(dtype);
    let fd_tol = match dtype {
        DType::F64 => 1e-6,
        DType::F32 => 1e-3,
    };
    // Every backend's default, then its other implementations (each for one op).
    let impls: Vec<(BackendKind, &'static str, Option<&'static str>, Box<dyn Backend>)> = {
        let mut v = Vec::new();
        for &k in &opts.backends {
            let b = backend(k, &opts.backend_options)?;
            for i in b.implementations() {
                v.push((k, i.name, Some(i.op), b.with_implementation(&i)?));
            }
            v.push((k, "default", None, b));
        }
        v.sort_by_key(|(k, name, _, _)| (*k, *name != "default", *name));
        v
    };
    // Finite differences from the most trusted backend that computes the case.
    let fd_source: Vec<BackendKind> = BackendKind::by_trust(&opts.backends);
    let mut rows = Vec::new();
    let mut programs = Vec::new();
    for (op_index, &name) in opts.ops.iter().enumerate() {
        progress(name, op_index, opts.ops.len());
        let cases = cases::cases(name, opts.cases, opts.seed);
        // The implementations that concern this op: every default, and the alternatives
        // for this op.
        let concerned: Vec<usize> = (0..impls.len()).filter(|&i| impls[i].2.is_none_or(|op| op == name)).collect();
        // A backend that declares it lacks the op (or the dtype) is skipped with its reason.
        let lacks = |i: usize| impls[i].3.capabilities().lacks(name, dtype);
        let here: Vec<usize> = concerned.iter().copied().filter(|&i| lacks(i).is_none()).collect();
        let skipped: Vec<(usize, String)> = concerned.iter().filter_map(|&i| lacks(i).map(|why| (i, why))).collect();
        let mut op_rows: Vec<ImplRow> = here
            .iter()
            .map(|&i| ImplRow::empty(name, impls[i].0, impls[i].1, cases.len()))
            .collect();
        for (case_index, (op, given)) in cases.iter().enumerate() {
            let (program, inputs) = program_of(op, given)?;
            let inputs: Vec<HostTensor> = inputs.iter().map(|t| t.rounded(dtype)).collect();
            let computed: Vec<std::result::Result<Computed, String>> = here.iter().map(|&i| compute(impls[i].3.as_ref(), &program, &inputs, dtype)).collect();
            // Finite differences from the most trusted backend that computes the case.
            let fd = fd_source.iter().find_map(|k| {
                let j = here.iter().position(|&i| impls[i].0 == *k && impls[i].1 == "default")?;
                computed[j].is_ok().then(|| finite_differences(impls[here[j]].3.as_ref(), &program, &inputs))
            });
            let mut fd = fd.transpose()?.flatten();
            if let Some(fd) = fd.as_mut() {
                definitional_zeros(op, &inputs, fd);
            }
            let mut fd_ok = vec![None; here.len()];
            for (r, c) in computed.iter().enumerate() {
                let (Ok(c), Some(fd)) = (c, &fd) else { continue };
                let worst = c.grads.iter().zip(fd).map(|(a, n)| scaled_vs_fd(a.as_ref(), n.as_ref())).fold(0.0, crate::parity::max_nan);
                op_rows[r].fd_checked += 1;
                op_rows[r].worst_fd_scaled = crate::parity::max_nan(op_rows[r].worst_fd_scaled, worst);
                let ok = worst <= fd_tol;
                op_rows[r].fd_agree += ok as usize;
                fd_ok[r] = Some(ok);
            }
            for (r, c) in computed.iter().enumerate() {
                let row = &mut op_rows[r];
                let c = match c {
                    Ok(c) => c,
                    // A gradient the framework did not produce is a result of its own,
                    // not a refusal.
                    Err(e) if e.contains("gradient missing") => {
                        row.missing_or_non_finite += 1;
                        row.first_refusal.get_or_insert_with(|| e.clone());
                        if row.first_disagreement.is_none() {
                            let file = case_file(name, row, case_index);
                            programs.push((file.clone(), inline(&program, &inputs).to_json() + "\n"));
                            row.first_disagreement = Some(file);
                        }
                        continue;
                    }
                    Err(e) => {
                        row.refused += 1;
                        row.first_refusal.get_or_insert_with(|| e.clone());
                        continue;
                    }
                };
                if c.grads.iter().any(|g| g.as_ref().is_none_or(|g| !g.all_finite())) || !c.output.all_finite() {
                    row.missing_or_non_finite += 1;
                }
                let mut disagrees = fd_ok[r] == Some(false);
                let mut agreeing_others = Vec::new();
                let mut others = Vec::new();
                for (o, other) in computed.iter().enumerate() {
                    let (kind, name) = (impls[here[o]].0, impls[here[o]].1);
                    if o == r || name != "default" || kind == row.backend {
                        continue;
                    }
                    let Ok(other) = other else { continue };
                    let worst = difference(c, other, dtype)?;
                    *row.compared.entry(kind).or_default() += 1;
                    others.push(other);
                    if worst <= tol {
                        *row.agree.entry(kind).or_default() += 1;
                        agreeing_others.push(o);
                    } else {
                        disagrees = true;
                    }
                    row.worst_scaled = crate::parity::max_nan(row.worst_scaled, worst);
                }
                // Odd one out: it disagrees with two or more other backends that agree with
                // each other (finite differences may be too coarse to tell, as for an error
                // of 1e-7 of scale).
                let others_agree = others.iter().enumerate().all(|(i, a)| others[i + 1..].iter().all(|b| difference(a, b, dtype).is_ok_and(|d| d <= tol)));
                let odd = others.len() >= 2 && agreeing_others.is_empty() && others_agree;
                if odd {
                    row.odd_one_out += 1;
                }
                if fd_ok[r] == Some(false) && fd_ok.iter().enumerate().any(|(o, ok)| o != r && *ok == Some(true)) {
                    row.findings += 1;
                }
                // The case is kept for the implementation under suspicion: one finite
                // differences contradict, the odd one out, or, without finite differences,
                // one that disagrees.
                let suspect = fd_ok[r] == Some(false) || odd || (fd_ok[r].is_none() && disagrees);
                if suspect && row.first_disagreement.is_none() {
                    let file = case_file(name, row, case_index);
                    programs.push((file.clone(), inline(&program, &inputs).to_json() + "\n"));
                    row.first_disagreement = Some(file);
                }
            }
        }
        for (i, why) in skipped {
            op_rows.push(ImplRow { unsupported: Some(format!("{} {why}", impls[i].0)), ..ImplRow::empty(name, impls[i].0, impls[i].1, 0) });
        }
        rows.extend(op_rows);
    }
    Ok(OpsReport {
        cases: opts.cases,
        seed: opts.seed,
        dtype,
        backends: opts.backends.clone(),
        scaled_tolerance: tol,
        fd_tolerance: fd_tol,
        rows,
        programs,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Where the first suspect case of an implementation is written, inside the report set.
fn case_file(op: &str, row: &ImplRow, case_index: usize) -> String {
    format!("cases/{op}-{}-{}-case{case_index}.json", row.backend, row.implementation.replace(['/', ' ', ':'], "-"))
}

/// The case as a weighted single-op program and its inputs (the cotangent last).
pub(crate) fn program_of(op: &Op, given: &[Option<HostTensor>]) -> Result<(Program, Vec<HostTensor>)> {
    let shapes: Vec<Option<Vec<usize>>> = given.iter().map(|t| t.as_ref().map(|t| t.shape.clone())).collect();
    let (program, w) = Program::weighted(op.clone(), &shapes).map_err(|e| crate::error::Error::Invalid(format!("{}: {e}", op.name())))?;
    let mut inputs: Vec<HostTensor> = given.iter().flatten().cloned().collect();
    inputs.extend(w.map(|s| Program::cotangent(&s)));
    Ok((program, inputs))
}

/// The program with `inputs` written into it, so that `run` replays it alone.
fn inline(program: &Program, inputs: &[HostTensor]) -> Program {
    let mut p = program.clone();
    for (d, t) in p.inputs.iter_mut().zip(inputs) {
        d.values = Some(serde_json::json!(t.data));
    }
    p.outputs = vec![crate::models::program::Output { value: "y".into(), cotangent: None }];
    p
}

fn compute(b: &dyn Backend, program: &Program, inputs: &[HostTensor], dtype: DType) -> std::result::Result<Computed, String> {
    let run = || -> Result<Computed> {
        let mut exec = b.executor(program, inputs, dtype)?;
        let o = exec.run(Request { backward: true, host_grads: true, all_values: true, ..Request::default() })?;
        let output = o.values.first().cloned().unwrap_or_else(|| HostTensor::scalar(f64::NAN));
        let grads = program.inputs.iter().zip(o.grads).filter(|(d, _)| d.needs_grad()).map(|(_, g)| g).collect();
        Ok(Computed { output, grads })
    };
    run().map_err(|e| super::fuzz::first_line(&e.to_string()))
}

/// Central differences of the weighted loss in f64, for every differentiated input;
/// None when the case has too many entries.
fn finite_differences(b: &dyn Backend, program: &Program, inputs: &[HostTensor]) -> Result<Option<Vec<Option<HostTensor>>>> {
    let wanted: Vec<usize> = program.grad_inputs().map(|(i, _)| i).collect();
    if wanted.iter().map(|&i| inputs[i].data.len()).sum::<usize>() > FD_MAX_ENTRIES {
        return Ok(None);
    }
    let failed = std::cell::Cell::new(false);
    let f = |xs: &[HostTensor]| match b.evaluate(program, xs, DType::F64) {
        Ok(e) => e.output,
        Err(_) => {
            failed.set(true);
            f64::NAN
        }
    };
    let grads = wanted.iter().map(|&i| Some(numeric_gradient(&f, inputs, i, 1e-6))).collect();
    Ok((!failed.get()).then_some(grads))
}

/// Where an op's gradient is zero by definition rather than by derivative: embedding's
/// `padding_idx` row receives none (PyTorch's rule), whatever finite differences say.
fn definitional_zeros(op: &Op, inputs: &[HostTensor], fd: &mut [Option<HostTensor>]) {
    if let (Op::Embedding { padding_idx: Some(p) }, Some(Some(g))) = (op, fd.first_mut()) {
        let (v, d) = (inputs[0].shape[0] as i64, inputs[0].shape[1]);
        let row = if *p < 0 { p + v } else { *p };
        if (0..v).contains(&row) {
            g.data[row as usize * d..(row as usize + 1) * d].iter_mut().for_each(|x| *x = 0.0);
        }
    }
}

/// max |a - n| over max(1, max |n|); NaN when a is missing or not finite.
fn scaled_vs_fd(a: Option<&HostTensor>, n: Option<&HostTensor>) -> f64 {
    let (Some(a), Some(n)) = (a, n) else { return f64::NAN };
    if a.data.len() != n.data.len() || !a.all_finite() {
        return f64::NAN;
    }
    let scale = n.data.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    a.data.iter().zip(&n.data).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max) / scale
}

/// The worst scaled difference of output and gradients between two implementations
/// (NaN or infinity, a missing gradient or a shape mismatch: NaN, never agreement).
fn difference(a: &Computed, b: &Computed, dtype: DType) -> Result<f64> {
    let close = Tolerance::torch_default(dtype);
    let scaled = |x: &HostTensor, y: &HostTensor| -> Result<f64> {
        if x.shape != y.shape {
            return Ok(f64::NAN);
        }
        let d = compare(x, y, dtype, close)?;
        let scale = largest_magnitude(std::slice::from_ref(y));
        Ok(if d.non_finite {
            f64::NAN
        } else if d.max_abs == 0.0 {
            0.0
        } else {
            d.max_abs / scale.max(f64::MIN_POSITIVE)
        })
    };
    let mut worst = scaled(&a.output, &b.output)?;
    for (x, y) in a.grads.iter().zip(&b.grads) {
        let w = match (x, y) {
            (Some(x), Some(y)) => scaled(x, y)?,
            _ => f64::NAN,
        };
        worst = crate::parity::max_nan(worst, w);
    }
    Ok(worst)
}
