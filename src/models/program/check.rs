//! Validation of a program before any backend sees it: references, arity, shapes and
//! attributes, each problem one message that names the node and what was expected.

use std::collections::HashMap;

use super::{InputDecl, Op, Program, Reduction, Role, ValueType};
use crate::error::{Error, Result};
use crate::host::HostTensor;

/// A program whose references are resolved and whose shapes are known.
#[derive(Clone, Debug)]
pub struct Checked {
    /// Per node, the value index of each input (`None` for an absent optional one).
    /// Values are numbered inputs first, then nodes.
    pub args: Vec<Vec<Option<usize>>>,
    /// The shape of every value.
    pub shapes: Vec<Vec<usize>>,
    /// The differentiated scalar, when the program has one.
    pub loss: Option<usize>,
    /// The reported values, with their cotangents.
    pub outputs: Vec<(usize, Option<HostTensor>)>,
}

fn bad(node: &str, op: &Op, msg: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("node '{node}' ({}): {msg}", op.name()))
}

/// Checks `program` and resolves its references: what an interpreter of your own reads.
///
/// ```
/// use backprop_parity::models::program::check;
/// use backprop_parity::models::{Op, Program};
///
/// let mut p = Program::default();
/// let x = p.param("x", &[2, 3]);
/// let w = p.param("w", &[3, 4]);
/// let y = p.op(Op::MatMul {}, &[&x, &w]);
/// let loss = p.op(Op::Sum {}, &[&y]);
/// p.set_loss(&loss);
///
/// let c = check(&p).unwrap();
/// // Values are numbered inputs first (x = 0, w = 1), then nodes (y = 2, loss = 3).
/// assert_eq!(c.args[0], [Some(0), Some(1)]);
/// assert_eq!(c.shapes[2], [2, 4]);
/// assert_eq!(c.loss, Some(3));
/// ```
pub fn check(program: &Program) -> Result<Checked> {
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut shapes: Vec<Vec<usize>> = Vec::new();
    for d in &program.inputs {
        if d.name.is_empty() {
            return Err(Error::Invalid("an input has an empty name".into()));
        }
        if index.insert(&d.name, shapes.len()).is_some() {
            return Err(Error::Invalid(format!("input '{}' is declared twice", d.name)));
        }
        if d.value_type == ValueType::Index && (d.role != Role::Input || d.requires_grad == Some(true)) {
            return Err(Error::Invalid(format!("input '{}': index inputs are data (role \"input\") without gradient", d.name)));
        }
        if d.role == Role::State && d.requires_grad == Some(true) {
            return Err(Error::Invalid(format!("input '{}': a state input never has a gradient; use role \"param\" or \"input\"", d.name)));
        }
        shapes.push(d.shape.clone());
    }
    let n_inputs = program.inputs.len();
    let mut args_all = Vec::with_capacity(program.nodes.len());
    for node in &program.nodes {
        let op = &node.op;
        let id = node.id.as_str();
        if id.is_empty() {
            return Err(Error::Invalid(format!("a {} node has an empty id", op.name())));
        }
        let arity = op.arity();
        if node.inputs.len() < arity.min || node.inputs.len() > arity.max {
            let expected = if arity.min == arity.max { format!("{}", arity.min) } else { format!("{} to {}", arity.min, arity.max) };
            return Err(bad(id, op, format!("takes {expected} inputs, {} given", node.inputs.len())));
        }
        let mut args = Vec::with_capacity(node.inputs.len());
        for (pos, name) in node.inputs.iter().enumerate() {
            match name {
                None if op.required(pos) => return Err(bad(id, op, format!("input {pos} is required and may not be null"))),
                None => args.push(None),
                Some(name) => {
                    let Some(&v) = index.get(name.as_str()) else {
                        let later = program.nodes.iter().any(|n| &n.id == name);
                        return Err(if later || name == id {
                            bad(id, op, format!("input '{name}' is defined later or by this node: nodes may only use earlier values (no cycles)"))
                        } else {
                            bad(id, op, format!("input '{name}' is not defined: expected an input or an earlier node"))
                        });
                    };
                    let is_index = v < n_inputs && program.inputs[v].value_type == ValueType::Index;
                    if op.takes_index(pos) != is_index {
                        let want = match op {
                            _ if !op.takes_index(pos) => "a float value",
                            Op::NllLoss { .. } | Op::CrossEntropy { .. } => {
                                "class labels (an input with \"dtype\": \"index\")"
                            }
                            _ => "indices (an input with \"dtype\": \"index\")",
                        };
                        return Err(bad(id, op, format!("input {pos} ('{name}') must be {want}")));
                    }
                    let is_state = v < n_inputs && program.inputs[v].role == Role::State;
                    if op.takes_state(pos) && !is_state {
                        let what = if matches!(op, Op::Where {} | Op::MaskedFill { .. }) {
                            "a 0/1 mask"
                        } else {
                            "a running statistic or a dropout mask"
                        };
                        return Err(bad(
                            id,
                            op,
                            format!("input {pos} ('{name}') must be an input with role \"state\" ({what})"),
                        ));
                    }
                    if is_state && !op.takes_state(pos) {
                        return Err(bad(id, op, format!(
                            "input '{name}' has role \"state\", which only batch norm's running statistics and masks (dropout, where, masked_fill) have; give it role \"input\" to use it here"
                        )));
                    }
                    args.push(Some(v));
                }
            }
        }
        let arg_shapes: Vec<Option<&[usize]>> = args.iter().map(|a| a.map(|v| shapes[v].as_slice())).collect();
        let out = infer(op, &arg_shapes).map_err(|m| bad(id, op, m))?;
        if index.insert(id, shapes.len()).is_some() {
            return Err(bad(id, op, "this id is already used by an input or an earlier node"));
        }
        shapes.push(out);
        args_all.push(args);
    }
    let find = |what: &str, name: &str| -> Result<usize> {
        index.get(name).copied().ok_or_else(|| Error::Invalid(format!("{what} '{name}' is not an input or node of the program")))
    };
    let loss = match &program.loss {
        Some(name) => {
            let v = find("loss", name)?;
            if !shapes[v].is_empty() {
                return Err(Error::Invalid(format!("loss '{name}' has shape {:?}; a loss must be a scalar (shape [])", shapes[v])));
            }
            Some(v)
        }
        None => None,
    };
    let mut outputs = Vec::new();
    for o in &program.outputs {
        let v = find("output", &o.value)?;
        let cot = match &o.cotangent {
            Some(c) => {
                if loss.is_some() {
                    return Err(Error::Invalid(format!("output '{}': a cotangent and a loss exclude each other", o.value)));
                }
                Some(values_to_tensor(c, &shapes[v], false).map_err(|m| Error::Invalid(format!("output '{}': cotangent: {m}", o.value)))?)
            }
            None => None,
        };
        outputs.push((v, cot));
    }
    if loss.is_none() && outputs.iter().all(|(_, c)| c.is_none()) && program.inputs.iter().any(InputDecl::needs_grad) {
        return Err(Error::Invalid("the program has inputs that need a gradient but neither a \"loss\" nor an output with a \"cotangent\"".into()));
    }
    if let Some(t) = &program.train {
        if t.steps == 0 || t.steps > super::MAX_TRAIN_STEPS {
            return Err(Error::Invalid(format!("train.steps: {}; expected 1 to {}", t.steps, super::MAX_TRAIN_STEPS)));
        }
        if !(t.lr.is_finite() && t.lr > 0.0) {
            return Err(Error::Invalid(format!("train.lr: {}; expected a finite number > 0", t.lr)));
        }
        if let Some(m) = t.momentum.filter(|m| !(m.is_finite() && (0.0..1.0).contains(m))) {
            return Err(Error::Invalid(format!("train.momentum: {m}; expected a number in [0, 1)")));
        }
        if !program.inputs.iter().any(|d| d.role == Role::Param && d.needs_grad()) {
            return Err(Error::Invalid("train: the program has no \"param\" input to update".into()));
        }
    }
    Ok(Checked { args: args_all, shapes, loss, outputs })
}

/// Values as the JSON of a program's input: numbers, and NaN and infinities as the
/// strings "NaN", "Infinity" and "-Infinity" (JSON has no such numbers), which
/// `values_to_tensor` reads back.
pub fn values_json(data: &[f64]) -> serde_json::Value {
    serde_json::Value::Array(
        data.iter()
            .map(|&v| {
                if v.is_nan() {
                    serde_json::json!("NaN")
                } else if v == f64::INFINITY {
                    serde_json::json!("Infinity")
                } else if v == f64::NEG_INFINITY {
                    serde_json::json!("-Infinity")
                } else {
                    serde_json::json!(v)
                }
            })
            .collect(),
    )
}

/// Values given in the JSON: a number fills the shape, a list is flat or nested.
pub fn values_to_tensor(v: &serde_json::Value, shape: &[usize], allow_non_finite: bool) -> std::result::Result<HostTensor, String> {
    let n: usize = shape.iter().product();
    let mut flat = Vec::with_capacity(n);
    fn walk(v: &serde_json::Value, out: &mut Vec<f64>) -> std::result::Result<(), String> {
        match v {
            serde_json::Value::Number(x) => out.push(x.as_f64().ok_or("a number out of range")?),
            // JSON has no NaN or infinity: they are written as strings (`values_json`).
            serde_json::Value::String(t) => out.push(match t.as_str() {
                "NaN" | "nan" => f64::NAN,
                "Infinity" | "inf" | "+inf" => f64::INFINITY,
                "-Infinity" | "-inf" => f64::NEG_INFINITY,
                other => return Err(format!("expected numbers (or \"NaN\", \"Infinity\", \"-Infinity\"), found \"{other}\"")),
            }),
            serde_json::Value::Array(items) => items.iter().try_for_each(|i| walk(i, out))?,
            other => return Err(format!("expected numbers, found {other}")),
        }
        Ok(())
    }
    walk(v, &mut flat)?;
    if v.is_number() || v.is_string() {
        flat = vec![flat[0]; n];
    }
    if flat.len() != n {
        return Err(format!("{} values given; shape {shape:?} holds {n}", flat.len()));
    }
    if !allow_non_finite && flat.iter().any(|x| !x.is_finite()) {
        return Err("holds NaN or infinity".into());
    }
    Ok(HostTensor { shape: shape.to_vec(), data: flat })
}

/// Checks a value for an input: shape, finiteness, and for labels integer values.
pub fn check_input_value(d: &InputDecl, t: &HostTensor, origin: &str) -> Result<()> {
    if t.shape != d.shape {
        return Err(Error::Invalid(format!("input '{}' from {origin}: shape {:?}; the program declares {:?}", d.name, t.shape, d.shape)));
    }
    if !d.allow_non_finite && !t.all_finite() {
        return Err(Error::Invalid(format!(
            "input '{}' from {origin}: holds NaN or infinity (set \"allow_non_finite\": true on the input if that is meant)",
            d.name
        )));
    }
    if d.value_type == ValueType::Index && t.data.iter().any(|v| *v < 0.0 || v.fract() != 0.0 || *v > u32::MAX as f64) {
        return Err(Error::Invalid(format!("input '{}' from {origin}: labels must be non-negative integers", d.name)));
    }
    Ok(())
}

fn broadcast(a: &[usize], b: &[usize]) -> std::result::Result<Vec<usize>, String> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let x = if i + a.len() >= n { a[i + a.len() - n] } else { 1 };
        let y = if i + b.len() >= n { b[i + b.len() - n] } else { 1 };
        out[i] = match (x, y) {
            _ if x == y => x,
            (1, _) => y,
            (_, 1) => x,
            _ => return Err(format!("shapes {a:?} and {b:?} do not broadcast")),
        };
    }
    Ok(out)
}

fn dim(d: i64, rank: usize) -> std::result::Result<usize, String> {
    let r = rank as i64;
    let v = if d < 0 { d + r } else { d };
    if v < 0 || v >= r.max(1) {
        return Err(format!("dimension {d} is out of range for rank {rank}"));
    }
    Ok(v as usize)
}

/// The dimensions a reduction's `dim` list names, resolved and sorted; an empty list
/// names every dimension (PyTorch's rule). A dimension named twice is an error.
pub fn reduced_dims(list: &[i64], rank: usize) -> std::result::Result<Vec<usize>, String> {
    if rank == 0 {
        return Err("expected an input of rank >= 1".into());
    }
    if list.is_empty() {
        return Ok((0..rank).collect());
    }
    let mut out = Vec::with_capacity(list.len());
    for &d in list {
        let v = dim(d, rank)?;
        if out.contains(&v) {
            return Err(format!("dim {d} appears more than once in {list:?}"));
        }
        out.push(v);
    }
    out.sort_unstable();
    Ok(out)
}

/// `x`'s shape reduced over `dims` (kept as size 1 with `keepdim`).
fn reduced_shape(x: &[usize], dims: &[usize], keepdim: bool) -> Vec<usize> {
    x.iter().enumerate().filter_map(|(i, &n)| if dims.contains(&i) { keepdim.then_some(1) } else { Some(n) }).collect()
}

/// The output shape of `op` on inputs of `shapes`, or what was expected.
/// `normalized_shape` must be non-empty and the input's trailing dimensions.
/// The output shape of a 2-D pooling over `x` (PyTorch's `pooling_output_shape`).
fn pooled(x: &[usize], k: usize, st: usize, p: usize, ceil_mode: bool) -> std::result::Result<Vec<usize>, String> {
    if x.len() != 4 {
        return Err(format!("input {x:?}: expected [N, C, H, W]"));
    }
    if k == 0 || st == 0 {
        return Err(format!("kernel {k} and stride {st} must be at least 1"));
    }
    if 2 * p > k {
        return Err(format!("padding {p} must be at most half the kernel ({k})"));
    }
    match (pooled_len(x[2], k, st, p, ceil_mode), pooled_len(x[3], k, st, p, ceil_mode)) {
        (Some(oh), Some(ow)) => Ok(vec![x[0], x[1], oh, ow]),
        _ => Err(format!("input {x:?} with padding {p} is smaller than the kernel {k}")),
    }
}

/// Outputs of a pooling along one axis of `len` entries: PyTorch's
/// `pooling_output_shape` (ceil mode rounds up, but the last window must start inside
/// the image or its left padding). `None` when the padded axis is shorter than the kernel.
pub fn pooled_len(len: usize, k: usize, st: usize, p: usize, ceil_mode: bool) -> Option<usize> {
    let span = (len + 2 * p).checked_sub(k)?;
    let mut out = (span + if ceil_mode { st - 1 } else { 0 }) / st + 1;
    if ceil_mode && (out - 1) * st >= len + p {
        out -= 1;
    }
    Some(out)
}

fn trailing(x: &[usize], normalized_shape: &[usize], name: &str) -> std::result::Result<(), String> {
    if normalized_shape.is_empty() || normalized_shape.len() > x.len() || x[x.len() - normalized_shape.len()..] != *normalized_shape {
        return Err(format!("{name}: normalized_shape {normalized_shape:?} must be non-empty and the trailing dimensions of input {x:?}"));
    }
    Ok(())
}

/// A normalisation's weight (input 1) and, with `bias`, its bias (input 2): each
/// optional, each of shape `want`.
fn affine(shapes: &[Option<&[usize]>], want: &[usize], bias: bool) -> std::result::Result<(), String> {
    let names: &[&str] = if bias { &["weight", "bias"] } else { &["weight"] };
    for (i, what) in names.iter().enumerate() {
        if let Some(t) = shapes.get(i + 1).copied().flatten() {
            if t != want {
                return Err(format!("{what} {t:?}: expected {want:?}"));
            }
        }
    }
    Ok(())
}

pub fn infer(op: &Op, shapes: &[Option<&[usize]>]) -> std::result::Result<Vec<usize>, String> {
    let s = |i: usize| shapes.get(i).copied().flatten();
    let x = s(0).expect("the first input is required");
    Ok(match op {
        Op::MatMul {} => {
            let b = s(1).expect("required");
            match (x.len(), b.len()) {
                (1, 1) if x[0] == b[0] => vec![],
                (1, 2) if x[0] == b[0] => vec![b[1]],
                (2, 1) if x[1] == b[0] => vec![x[0]],
                (2, 2) if x[1] == b[0] => vec![x[0], b[1]],
                (ra, rb) if ra >= 1 && rb >= 1 && ra.max(rb) >= 3 => {
                    // torch.matmul's batched rule: a vector is a one-row (left) or one-column
                    // (right) matrix whose added axis is dropped again; batch axes broadcast.
                    let a2: Vec<usize> = if ra == 1 { vec![1, x[0]] } else { x.to_vec() };
                    let b2: Vec<usize> = if rb == 1 { vec![b[0], 1] } else { b.to_vec() };
                    let (pa, pb) = (a2.len(), b2.len());
                    if a2[pa - 1] != b2[pb - 2] {
                        return Err(format!("cannot multiply {x:?} by {b:?}: inner sizes {} and {} differ", a2[pa - 1], b2[pb - 2]));
                    }
                    let mut out = broadcast(&a2[..pa - 2], &b2[..pb - 2]).map_err(|_| format!("cannot multiply {x:?} by {b:?}: batch dimensions {:?} and {:?} do not broadcast", &a2[..pa - 2], &b2[..pb - 2]))?;
                    if ra > 1 {
                        out.push(a2[pa - 2]);
                    }
                    if rb > 1 {
                        out.push(b2[pb - 1]);
                    }
                    out
                }
                _ => return Err(format!("cannot multiply {x:?} by {b:?}: expected 1-D or 2-D operands with matching inner sizes (or batched ones of rank >= 3)")),
            }
        }
        Op::Add {} | Op::Sub {} | Op::Mul {} | Op::Div {} | Op::Maximum {} => broadcast(x, s(1).expect("required"))?,
        Op::Neg {} | Op::Sigmoid {} | Op::Square {} | Op::Relu {} | Op::Tanh {} | Op::Exp {} | Op::Log {} => x.to_vec(),
        Op::Gelu { .. } | Op::Silu {} | Op::Sqrt {} | Op::Abs {} => x.to_vec(),
        Op::Elu { alpha } => {
            if !alpha.is_finite() {
                return Err(format!("alpha {alpha} must be a finite number"));
            }
            x.to_vec()
        }
        Op::LeakyRelu { negative_slope } => {
            if !negative_slope.is_finite() {
                return Err(format!("negative_slope {negative_slope} must be a finite number"));
            }
            x.to_vec()
        }
        Op::Softplus { beta, threshold } => {
            if !(beta.is_finite() && *beta != 0.0) || threshold.is_nan() {
                return Err(format!("beta {beta} must be a finite non-zero number and threshold {threshold} a number"));
            }
            x.to_vec()
        }
        Op::Clamp { min, max } => {
            if min.is_none() && max.is_none() {
                return Err("at least one of min and max must be given".into());
            }
            if min.is_some_and(f64::is_nan) || max.is_some_and(f64::is_nan) {
                return Err("min and max must be numbers (not NaN)".into());
            }
            x.to_vec()
        }
        Op::Pow { exponent } => {
            if !exponent.is_finite() {
                return Err(format!("exponent {exponent} must be a finite number"));
            }
            x.to_vec()
        }
        Op::Sum {} | Op::Mean {} => vec![],
        Op::SumDim { dim: d, keepdim } | Op::MeanDim { dim: d, keepdim } => {
            reduced_shape(x, &reduced_dims(d, x.len())?, *keepdim)
        }
        Op::Amax { dim: d, keepdim } => {
            let dims = reduced_dims(d, x.len())?;
            if let Some(&e) = dims.iter().find(|&&e| x[e] == 0) {
                return Err(format!("input {x:?}: amax over dimension {e} of size 0 has no identity"));
            }
            reduced_shape(x, &dims, *keepdim)
        }
        Op::MaxPool2d { kernel, stride, padding, ceil_mode } => {
            let (k, st, p) = (*kernel, stride.unwrap_or(*kernel), *padding);
            pooled(x, k, st, p, *ceil_mode)?
        }
        Op::AvgPool2d { kernel, stride, padding, ceil_mode, .. } => {
            let (k, st, p) = (*kernel, stride.unwrap_or(*kernel), *padding);
            pooled(x, k, st, p, *ceil_mode)?
        }
        Op::AdaptiveAvgPool2d { output_size: [oh, ow] } => {
            if x.len() != 4 {
                return Err(format!("input {x:?}: expected [N, C, H, W]"));
            }
            if *oh == 0 || *ow == 0 {
                return Err(format!("output_size [{oh}, {ow}] must be at least 1 in each dimension"));
            }
            if x[2] == 0 || x[3] == 0 {
                return Err(format!("input {x:?}: an empty image has nothing to average"));
            }
            vec![x[0], x[1], *oh, *ow]
        }
        Op::UpsampleNearest2d { scale_factor } => {
            if x.len() != 4 {
                return Err(format!("input {x:?}: expected [N, C, H, W]"));
            }
            if *scale_factor == 0 {
                return Err("scale_factor must be at least 1".into());
            }
            vec![x[0], x[1], x[2] * scale_factor, x[3] * scale_factor]
        }
        Op::Conv2d { stride, padding, dilation, groups } => {
            let w = s(1).expect("required");
            if x.len() != 4 || w.len() != 4 {
                return Err(format!("input {x:?} and weight {w:?}: expected [N, C, H, W] and [O, C/groups, kh, kw]"));
            }
            if *stride == 0 || *dilation == 0 || *groups == 0 {
                return Err(format!("stride {stride}, dilation {dilation} and groups {groups} must be at least 1"));
            }
            if x[1] % groups != 0 || w[0] % groups != 0 || w[1] * groups != x[1] {
                return Err(format!(
                    "weight {w:?} does not fit input {x:?} with {groups} group(s): expected [O, C/groups, kh, kw] with groups dividing C and O"
                ));
            }
            if let Some(b) = s(2) {
                if b != [w[0]] {
                    return Err(format!("bias {b:?}: expected [{}]", w[0]));
                }
            }
            let (eh, ew) = (dilation * (w[2].max(1) - 1) + 1, dilation * (w[3].max(1) - 1) + 1);
            if w[2] == 0 || w[3] == 0 || x[2] + 2 * padding < eh || x[3] + 2 * padding < ew {
                return Err(format!("input {x:?} with padding {padding} is smaller than the (dilated) kernel {eh}x{ew}"));
            }
            vec![x[0], w[0], (x[2] + 2 * padding - eh) / stride + 1, (x[3] + 2 * padding - ew) / stride + 1]
        }
        Op::ConvTranspose2d { stride, padding, output_padding, dilation, groups } => {
            let w = s(1).expect("required");
            if x.len() != 4 || w.len() != 4 {
                return Err(format!("input {x:?} and weight {w:?}: expected [N, C, H, W] and [C, O/groups, kh, kw]"));
            }
            if *stride == 0 || *dilation == 0 || *groups == 0 {
                return Err(format!("stride {stride}, dilation {dilation} and groups {groups} must be at least 1"));
            }
            if w[0] != x[1] || x[1] % groups != 0 {
                return Err(format!("weight {w:?} does not fit input {x:?} with {groups} group(s): expected [C, O/groups, kh, kw] with groups dividing C"));
            }
            if output_padding >= stride && output_padding >= dilation {
                return Err(format!("output_padding {output_padding} must be smaller than the stride {stride} or the dilation {dilation}"));
            }
            let o = w[1] * groups;
            if let Some(b) = s(2) {
                if b != [o] {
                    return Err(format!("bias {b:?}: expected [{o}]"));
                }
            }
            let size = |len: usize, k: usize| ((len.max(1) - 1) * stride + dilation * (k.max(1) - 1) + output_padding + 1).checked_sub(2 * padding).filter(|&l| l > 0);
            match (size(x[2], w[2]), size(x[3], w[3])) {
                (Some(oh), Some(ow)) if x[2] > 0 && x[3] > 0 && w[2] > 0 && w[3] > 0 => vec![x[0], o, oh, ow],
                _ => return Err(format!("input {x:?}, weight {w:?}, stride {stride}, padding {padding}, dilation {dilation}, output_padding {output_padding}: the output would be empty")),
            }
        }
        Op::Linear {} => {
            let w = s(1).expect("required");
            if x.len() != 2 || w.len() != 2 || w[1] != x[1] {
                return Err(format!("input {x:?} and weight {w:?}: expected [N, in] and [out, in]"));
            }
            if let Some(b) = s(2) {
                if b != [w[0]] {
                    return Err(format!("bias {b:?}: expected [{}]", w[0]));
                }
            }
            vec![x[0], w[0]]
        }
        Op::BatchNorm { training, momentum, eps } => {
            if x.len() != 2 && x.len() != 4 {
                return Err(format!("input {x:?}: expected [N, C] or [N, C, H, W]"));
            }
            let c = x[1];
            for (i, what) in [(1, "weight"), (2, "bias"), (3, "running_mean"), (4, "running_var")] {
                if let Some(t) = s(i) {
                    if t != [c] {
                        return Err(format!("{what} {t:?}: expected [{c}]"));
                    }
                }
            }
            if s(1).is_some() != s(2).is_some() {
                return Err("weight and bias come together (both or neither)".into());
            }
            if s(3).is_some() != s(4).is_some() {
                return Err("running_mean and running_var come together (both or neither)".into());
            }
            if !training && s(3).is_none() {
                return Err("eval mode (\"training\": false) needs running_mean and running_var".into());
            }
            let per_channel: usize = x.iter().enumerate().filter(|(i, _)| *i != 1).map(|(_, v)| v).product();
            if *training && per_channel < 2 {
                return Err(format!("input {x:?}: training mode needs more than one value per channel"));
            }
            if !(eps.is_finite() && *eps > 0.0) || !(0.0..=1.0).contains(momentum) {
                return Err(format!("eps {eps} must be positive and momentum {momentum} within [0, 1]"));
            }
            x.to_vec()
        }
        Op::LayerNorm { normalized_shape, eps } | Op::RmsNorm { normalized_shape, eps: Some(eps) } => {
            trailing(x, normalized_shape, op.name())?;
            affine(shapes, normalized_shape, matches!(op, Op::LayerNorm { .. }))?;
            if !(eps.is_finite() && *eps >= 0.0) {
                return Err(format!("eps {eps} must be finite and not negative"));
            }
            x.to_vec()
        }
        Op::RmsNorm { normalized_shape, eps: None } => {
            trailing(x, normalized_shape, op.name())?;
            affine(shapes, normalized_shape, false)?;
            x.to_vec()
        }
        Op::GroupNorm { num_groups, eps } => {
            if x.len() < 2 {
                return Err(format!("input {x:?}: expected [N, C, *]"));
            }
            let c = x[1];
            if *num_groups == 0 || c % num_groups != 0 {
                return Err(format!("num_groups {num_groups} must divide the {c} channels of input {x:?}"));
            }
            affine(shapes, &[c], true)?;
            // F.group_norm's `_verify_batch_norm_size` on [N·C/G, G, *].
            let per_group: usize = x[0] * (c / num_groups) * x[2..].iter().product::<usize>();
            if per_group == 1 {
                return Err(format!("input {x:?} with {num_groups} groups: expected more than 1 value per channel (F.group_norm's check)"));
            }
            if !(eps.is_finite() && *eps >= 0.0) {
                return Err(format!("eps {eps} must be finite and not negative"));
            }
            x.to_vec()
        }
        Op::Softmax { dim: d } | Op::LogSoftmax { dim: d } => {
            if x.is_empty() {
                return Err(format!("input {x:?}: expected an input of rank >= 1"));
            }
            dim(*d, x.len())?;
            x.to_vec()
        }
        Op::NllLoss { reduction } | Op::CrossEntropy { reduction, .. } => {
            let l = s(1).expect("required");
            if x.len() != 2 || l != [x[0]] {
                return Err(format!("input {x:?} and labels {l:?}: expected [N, C] and [N]"));
            }
            if let Op::CrossEntropy { label_smoothing: ls, .. } = op {
                if !(0.0..=1.0).contains(ls) {
                    return Err(format!("label_smoothing {ls} must be within [0, 1]"));
                }
            }
            if *reduction == Reduction::None {
                vec![x[0]]
            } else {
                vec![]
            }
        }
        Op::MseLoss { reduction } => {
            let t = s(1).expect("required");
            if t != x {
                return Err(format!("target {t:?} must have the input's shape {x:?}"));
            }
            if *reduction == Reduction::None {
                x.to_vec()
            } else {
                vec![]
            }
        }
        Op::Dropout { p, training } => {
            let m = s(1).expect("required");
            // Off (evaluation), the mask is not read: it may still hold a training
            // batch's shape.
            if *training && m != x {
                return Err(format!("mask {m:?} must have the input's shape {x:?}"));
            }
            if !(0.0..1.0).contains(p) {
                return Err(format!("p {p} must be within [0, 1)"));
            }
            x.to_vec()
        }
        Op::Permute { dims } => {
            if dims.len() != x.len() {
                return Err(format!("dims {dims:?} must name each of the input's {} dimensions once", x.len()));
            }
            let ds = reduced_dims(dims, x.len()).map_err(|m| format!("dims {dims:?}: {m}"))?;
            debug_assert_eq!(ds.len(), x.len());
            dims.iter().map(|&d| x[dim(d, x.len()).expect("checked")]).collect()
        }
        Op::Transpose { dim0, dim1 } => {
            if x.is_empty() {
                return Err(format!("input {x:?}: expected an input of rank >= 1"));
            }
            let (a, b) = (dim(*dim0, x.len())?, dim(*dim1, x.len())?);
            let mut out = x.to_vec();
            out.swap(a, b);
            out
        }
        Op::Concat { dim: d } => {
            if x.is_empty() {
                return Err(format!("input 0 {x:?}: expected inputs of rank >= 1"));
            }
            let a = dim(*d, x.len())?;
            let mut out = x.to_vec();
            for i in 1..shapes.len() {
                let t = s(i).expect("required");
                if t.len() != x.len() || t.iter().zip(x).enumerate().any(|(j, (p, q))| j != a && p != q) {
                    return Err(format!(
                        "input {i} {t:?} does not fit input 0 {x:?}: expected the same sizes except at dimension {a}"
                    ));
                }
                out[a] += t[a];
            }
            out
        }
        Op::Narrow { dim: d, start, length } => {
            if x.is_empty() {
                return Err(format!("input {x:?}: expected an input of rank >= 1"));
            }
            let a = dim(*d, x.len())?;
            let n = x[a] as i64;
            let st = if *start < 0 { start + n } else { *start };
            if st < 0 || st > n || st + *length as i64 > n {
                return Err(format!("start {start} and length {length} do not fit dimension {a} of size {n}"));
            }
            let mut out = x.to_vec();
            out[a] = *length;
            out
        }
        Op::IndexSelect { dim: d } => {
            let i = s(1).expect("required");
            if x.is_empty() || i.len() != 1 {
                return Err(format!("input {x:?} and index {i:?}: expected an input of rank >= 1 and a 1-D index"));
            }
            let a = dim(*d, x.len())?;
            let mut out = x.to_vec();
            out[a] = i[0];
            out
        }
        Op::Embedding { padding_idx } => {
            let i = s(1).expect("required");
            if x.len() != 2 {
                return Err(format!("weight {x:?}: expected [V, D] (ATen's order: weight first, then the indices)"));
            }
            if let Some(p) = padding_idx {
                let v = x[0] as i64;
                if *p < -v || *p >= v {
                    return Err(format!("padding_idx {p} must be within [-{v}, {v})"));
                }
            }
            let mut out = i.to_vec();
            out.push(x[1]);
            out
        }
        Op::Where {} => {
            let (a, b) = (s(1).expect("required"), s(2).expect("required"));
            broadcast(&broadcast(x, a)?, b)?
        }
        Op::MaskedFill { value } => {
            if !value.is_finite() {
                return Err(format!("value {value} must be finite"));
            }
            broadcast(x, s(1).expect("required"))?
        }
        Op::Reshape { shape } => {
            let n: usize = x.iter().product();
            let free = shape.iter().filter(|&&d| d == -1).count();
            if free > 1 || shape.iter().any(|&d| d < -1) {
                return Err(format!("shape {shape:?}: entries must be sizes, with at most one -1"));
            }
            let known: usize = shape.iter().filter(|&&d| d >= 0).map(|&d| d as usize).product();
            let out: Vec<usize> = shape
                .iter()
                .map(|&d| if d == -1 { if known == 0 { 0 } else { n / known } } else { d as usize })
                .collect();
            if out.iter().product::<usize>() != n {
                return Err(format!("cannot reshape {x:?} ({n} values) to {shape:?}"));
            }
            out
        }
        Op::Flatten { start_dim, end_dim } => {
            if x.is_empty() {
                return Ok(vec![1]);
            }
            let (a, b) = (dim(*start_dim, x.len())?, dim(*end_dim, x.len())?);
            if a > b {
                return Err(format!("start_dim {start_dim} comes after end_dim {end_dim}"));
            }
            let mut out = x[..a].to_vec();
            out.push(x[a..=b].iter().product());
            out.extend_from_slice(&x[b + 1..]);
            out
        }
    })
}

/// The value of every input: from `file` (a safetensors file's tensors, by input name)
/// when it has one, else from the program's `values` or `fill`. Tensors in the file
/// that name no input are refused (a misspelt name would otherwise go unnoticed).
pub fn resolve_inputs(program: &Program, file: Option<(&crate::models::mnist::ParamSet, &str)>) -> Result<Vec<HostTensor>> {
    if let Some((set, origin)) = file {
        if let Some(extra) = set.names().find(|n| program.input_index(n).is_none()) {
            return Err(Error::Invalid(format!("{origin}: tensor '{extra}' is not an input of the program")));
        }
    }
    program
        .inputs
        .iter()
        .map(|d| {
            let from_file = file.and_then(|(set, origin)| set.get(&d.name).map(|t| (t.clone(), origin.to_string())));
            let (t, origin) = match (from_file, &d.values, d.fill) {
                (Some(t), _, _) => t,
                (None, Some(v), None) => {
                    let t = values_to_tensor(v, &d.shape, d.allow_non_finite).map_err(|m| Error::Invalid(format!("input '{}': values: {m}", d.name)))?;
                    (t, "the program".to_string())
                }
                (None, None, Some(f)) => (HostTensor::filled(&d.shape, f), "the program".to_string()),
                (None, Some(_), Some(_)) => return Err(Error::Invalid(format!("input '{}': give \"values\" or \"fill\", not both", d.name))),
                (None, None, None) => {
                    return Err(Error::Invalid(format!(
                        "input '{}' has no values: give \"values\" or \"fill\" in the program, or a tensor '{}' in --inputs",
                        d.name, d.name
                    )))
                }
            };
            check_input_value(d, &t, &origin)?;
            Ok(t)
        })
        .collect()
}

/// Class indices of a labels tensor, checked against the number of classes `c`.
pub fn labels_of(t: &HostTensor, c: usize, what: &str) -> Result<Vec<usize>> {
    t.data
        .iter()
        .map(|&v| {
            if v >= 0.0 && v.fract() == 0.0 && (v as usize) < c {
                Ok(v as usize)
            } else {
                Err(Error::Invalid(format!("{what}: label {v} is not a class index in 0..{c}")))
            }
        })
        .collect()
}
