//! The fuzzing report: `fuzz.md`, `fuzz.json`, `findings.json`, and per finding a folder
//! `findings/<op>-<backend>-<kind>/` with the shrunk program (`parity-report run` replays
//! it), a standalone PyTorch script that prints the reference values, and `finding.md`.

use serde::Serialize;

use super::fmt::table;
use super::{Output, Provenance, ReportSet};
use crate::backends::BackendOptions;
use crate::error::Result;
use crate::models::{Op, Program, Role, ValueType};
use crate::study::fuzz::{Finding, FuzzReport};

/// One line of `findings.json`.
#[derive(Serialize)]
struct Listed<'a> {
    op: &'a str,
    implementation: String,
    odd_backend: Option<String>,
    kind: &'a str,
    program: String,
    cases_to_find: u64,
    cases: u64,
    nodes: usize,
    input_entries: usize,
}

pub fn outputs(report: &FuzzReport, options: &BackendOptions, provenance: &Provenance) -> Result<ReportSet> {
    let mut files = Vec::new();
    let mut listed = Vec::new();
    for f in &report.findings {
        let dir = format!("findings/{}", slug(f));
        files.push(Output { file_name: format!("{dir}/program.json"), contents: f.program.to_json() + "\n" });
        files.push(Output { file_name: format!("{dir}/reference.py"), contents: torch_script(&f.program) });
        let snippet = super::snippet::candle_snippet(&f.program);
        if let Ok(rs) = &snippet {
            files.push(Output { file_name: format!("{dir}/candle.rs"), contents: rs.clone() });
        }
        files.push(Output { file_name: format!("{dir}/finding.md"), contents: finding_md(f, snippet.err()) });
        listed.push(Listed {
            op: &f.key.op,
            implementation: implementation(f, options),
            odd_backend: f.key.odd_backend.map(|k| k.to_string()),
            kind: &f.key.kind,
            program: format!("{dir}/program.json"),
            cases_to_find: f.cases_to_find,
            cases: f.cases,
            nodes: f.nodes,
            input_entries: f.input_entries,
        });
    }
    files.push(Output { file_name: "findings.json".into(), contents: super::to_json(&listed)? });
    super::set("fuzz", provenance, report, markdown(report, options), files)
}

/// The finding's folder: op, backend and kind in letters, digits and dashes only.
fn slug(f: &Finding) -> String {
    let backend = f.key.odd_backend.map_or("unattributed".to_string(), |k| k.to_string());
    let raw = format!("{}-{}-{}", f.key.op, backend, f.key.kind.to_lowercase());
    let mut out = String::new();
    for c in raw.chars() {
        let c = if c.is_ascii_alphanumeric() || c == '_' { c } else { '-' };
        if !(c == '-' && out.ends_with('-')) {
            out.push(c);
        }
    }
    out.trim_end_matches('-').chars().take(80).collect()
}

/// Which of a framework's implementations ran: the backend's settings name it (candle's
/// max-pool has two backward rules here).
fn implementation(f: &Finding, options: &BackendOptions) -> String {
    match (f.key.odd_backend, f.key.op.as_str()) {
        (Some(b), op) => {
            let settings = options.of(b.name());
            if settings.is_empty() {
                format!("{b} {op}")
            } else {
                format!("{b} {op} ({})", settings.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", "))
            }
        }
        (None, op) => op.to_string(),
    }
}

fn markdown(r: &FuzzReport, options: &BackendOptions) -> String {
    let mut md = format!(
        "# Differential gradient fuzzing\n\n{} generated programs (seed {}, shard {}/{}, at most {} nodes, {}, backends {}): \
         {} agreed, {} showed a disagreement, {} distinct finding(s), in {:.1} s.\n\n",
        r.cases,
        r.seed,
        r.shard.0,
        r.shard.1,
        r.max_nodes,
        r.dtype,
        r.backends.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(", "),
        r.agreed,
        r.disagreed,
        r.findings.len(),
        r.seconds
    );
    if r.nonfinite {
        md.push_str(
            "With `--nonfinite`: a quarter of the cases draw NaN and ±inf into their inputs (regime NonFinite) and are compared by non-finite \
             pattern (NaN, +inf, -inf or finite must match entry by entry; the finite entries as usual); no finite differences where NaN or \
             infinity is involved. A backend with NaN or infinity where another has something else is a `NaN/inf` finding.\n\n",
        );
    }
    let rows: Vec<Vec<String>> = r
        .findings
        .iter()
        .map(|f| {
            vec![
                f.key.kind.clone(),
                f.key.op.clone(),
                implementation(f, options),
                f.key.odd_backend.map_or("-".into(), |k| k.to_string()),
                f.cases.to_string(),
                f.cases_to_find.to_string(),
                format!("{} nodes, {} entries", f.nodes, f.input_entries),
                format!("[finding](findings/{}/finding.md)", slug(f)),
            ]
        })
        .collect();
    md.push_str(&table(&["kind", "op", "implementation", "backend at fault", "cases", "cases to find", "shrunk to", ""], &rows));
    md.push_str(&format!("\n{}\n", throughput(r)));
    if !r.accepted.is_empty() {
        md.push_str("\nAccepted differences (reference/accepted-differences.json), not findings:\n\n");
        let rows: Vec<Vec<String>> = r.accepted.iter().map(|(a, n)| vec![a.clone(), n.to_string()]).collect();
        md.push_str(&table(&["difference", "cases"], &rows));
    }
    md.push_str("\nCases per op (an op counted once per case):\n\n");
    let rows: Vec<Vec<String>> = r.op_cases.iter().map(|(op, n)| vec![op.clone(), n.to_string()]).collect();
    md.push_str(&table(&["op", "cases"], &rows));
    md
}

/// Cases per second and where the time went, in one sentence.
pub fn throughput(r: &FuzzReport) -> String {
    let total: f64 = r.backend_seconds.values().sum();
    let shares: Vec<String> = r.backend_seconds.iter().map(|(k, t)| format!("{k} {t:.1} s ({:.0}%)", 100.0 * t / r.seconds.max(1e-9))).collect();
    format!(
        "Throughput: {:.0} cases per second. Time: the backends' runs of the generated programs {total:.1} s ({}), the rest of the oracle \
         (each node alone, finite differences) {:.1} s, attributing and shrinking findings {:.1} s, of {:.1} s in all.",
        r.cases as f64 / r.seconds.max(1e-9),
        shares.join(", "),
        r.oracle_seconds,
        r.shrink_seconds,
        r.seconds
    )
}

fn finding_md(f: &Finding, no_snippet: Option<String>) -> String {
    let candle = match no_snippet {
        None => "`candle.rs` is the same program in candle-core/candle-nn alone (a `main.rs` for an upstream issue)".to_string(),
        Some(why) => format!("no candle snippet ({why} is not in the snippet emitter)"),
    };
    let mut md = format!(
        "# {} in {} ({})\n\nFirst seen in case {} ({} cases into the campaign, regime {:?}), in {} case(s) in all. Shrunk to {} node(s) \
         and {} input entries: `program.json` (run it with `parity-report run program.json`), `reference.py` prints what PyTorch \
         computes for it, {candle}.\n\n",
        f.key.kind,
        f.key.op,
        f.key.odd_backend.map_or("no single backend".into(), |k| k.to_string()),
        f.first_case,
        f.cases_to_find,
        f.regime,
        f.cases,
        f.nodes,
        f.input_entries
    );
    md.push_str("## What each backend returned\n\n");
    for line in &f.summary {
        md.push_str(&format!("- {line}\n"));
    }
    if let Some(e) = &f.evidence {
        md.push_str("\n## Gradients\n\n");
        for (k, r) in &e.backends {
            for (name, g) in &r.grads {
                md.push_str(&format!("- {k} d/d{name}: {:?}\n", g.data.iter().map(|v| (v * 1e6).round() / 1e6).collect::<Vec<_>>()));
            }
        }
    }
    md
}

/// A number as Python reads it (infinities included; NaN is refused by the format).
fn py_num(v: f64) -> String {
    if v.is_infinite() {
        format!("float('{}inf')", if v < 0.0 { "-" } else { "" })
    } else {
        format!("{v:?}")
    }
}

/// A program input's JSON values as a Python list (NaN and infinities, strings in the
/// JSON, as `float(...)`).
fn py_values(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Array(items) => format!("[{}]", items.iter().map(py_values).collect::<Vec<_>>().join(", ")),
        serde_json::Value::String(t) => match t.as_str() {
            "NaN" | "nan" => "float('nan')".into(),
            "-Infinity" | "-inf" => "float('-inf')".into(),
            _ => "float('inf')".into(),
        },
        other => other.to_string(),
    }
}

/// A standalone PyTorch script computing the program's loss and every gradient in f64.
pub fn torch_script(p: &Program) -> String {
    let mut py = String::from("# What PyTorch computes for this program (float64). Generated by parity-report fuzz.\nimport torch\nimport torch.nn.functional as F\n\n");
    for d in &p.inputs {
        let values = d.values.as_ref().map_or("[]".to_string(), py_values);
        let grad = if d.needs_grad() { ", requires_grad=True" } else { "" };
        py.push_str(&format!("{} = torch.tensor({values}, dtype=torch.float64).reshape({:?}).detach().requires_grad_({})\n", var(&d.name), d.shape, if grad.is_empty() { "False" } else { "True" }));
    }
    py.push_str(&torch_forward(p));
    if let Some(loss) = &p.loss {
        py.push_str(&format!("{}.backward()\nprint('loss', {}.item())\n", var(loss), var(loss)));
    }
    for d in p.inputs.iter().filter(|d| d.needs_grad()) {
        py.push_str(&format!("print('d/d{}', {}.grad.flatten().tolist())\n", d.name, var(&d.name)));
    }
    for d in p.inputs.iter().filter(|d| d.role == Role::State && d.value_type == ValueType::Float) {
        py.push_str(&format!("print('{} after the run', {}.flatten().tolist())\n", d.name, var(&d.name)));
    }
    if let (Some(t), Some(loss)) = (&p.train, &p.loss) {
        let params: Vec<String> = p.params().map(|(_, d)| var(&d.name)).collect();
        py.push_str(&format!(
            "\n# {} SGD step(s), lr {}, momentum {}: the first uses the gradient above.\nopt = torch.optim.SGD([{}], lr={}, momentum={})\nfor step in range({}):\n    if step > 0:\n        opt.zero_grad()\n",
            t.steps,
            t.lr,
            t.momentum.unwrap_or(0.0),
            params.join(", "),
            t.lr,
            t.momentum.unwrap_or(0.0),
            t.steps
        ));
        for line in torch_forward(p).lines() {
            py.push_str(&format!("        {line}\n"));
        }
        py.push_str(&format!("        {}.backward()\n    opt.step()\n", var(loss)));
        for d in p.params().map(|(_, d)| d) {
            py.push_str(&format!("print('{} after training', {}.detach().flatten().tolist())\n", d.name, var(&d.name)));
        }
    }
    py
}

/// The program's nodes as PyTorch statements, one per node.
fn torch_forward(p: &Program) -> String {
    let mut py = String::new();
    for n in &p.nodes {
        let a: Vec<String> = n.inputs.iter().map(|i| i.as_deref().map_or("None".to_string(), var)).collect();
        let arg = |i: usize| a.get(i).cloned().unwrap_or_else(|| "None".into());
        let expr = match &n.op {
            Op::MatMul {} => format!("{} @ {}", arg(0), arg(1)),
            Op::Add {} => format!("{} + {}", arg(0), arg(1)),
            Op::Sub {} => format!("{} - {}", arg(0), arg(1)),
            Op::Mul {} => format!("{} * {}", arg(0), arg(1)),
            Op::Div {} => format!("{} / {}", arg(0), arg(1)),
            Op::Maximum {} => format!("torch.maximum({}, {})", arg(0), arg(1)),
            Op::Neg {} => format!("-{}", arg(0)),
            Op::Sigmoid {} => format!("torch.sigmoid({})", arg(0)),
            Op::Square {} => format!("torch.square({})", arg(0)),
            Op::Relu {} => format!("torch.relu({})", arg(0)),
            Op::Tanh {} => format!("torch.tanh({})", arg(0)),
            Op::Exp {} => format!("torch.exp({})", arg(0)),
            Op::Log {} => format!("torch.log({})", arg(0)),
            Op::Gelu { approximate } => format!("F.gelu({}, approximate='{}')", arg(0), approximate.name()),
            Op::Silu {} => format!("F.silu({})", arg(0)),
            Op::Elu { alpha } => format!("F.elu({}, {})", arg(0), py_num(*alpha)),
            Op::LeakyRelu { negative_slope } => format!("F.leaky_relu({}, {})", arg(0), py_num(*negative_slope)),
            Op::Softplus { beta, threshold } => format!("F.softplus({}, {}, {})", arg(0), py_num(*beta), py_num(*threshold)),
            Op::Sqrt {} => format!("torch.sqrt({})", arg(0)),
            Op::Abs {} => format!("torch.abs({})", arg(0)),
            Op::Clamp { min, max } => format!("torch.clamp({}, {}, {})", arg(0), min.map_or("None".into(), py_num), max.map_or("None".into(), py_num)),
            Op::Pow { exponent } => format!("{} ** {}", arg(0), py_num(*exponent)),
            Op::Sum {} => format!("{}.sum()", arg(0)),
            Op::Mean {} => format!("{}.mean()", arg(0)),
            Op::SumDim { dim, keepdim } => format!("torch.sum({}, {dim:?}, keepdim={})", arg(0), py_bool(*keepdim)),
            Op::MeanDim { dim, keepdim } => format!("torch.mean({}, {dim:?}, keepdim={})", arg(0), py_bool(*keepdim)),
            Op::Amax { dim, keepdim } => format!("torch.amax({}, {dim:?}, keepdim={})", arg(0), py_bool(*keepdim)),
            Op::MaxPool2d { kernel, stride, padding, ceil_mode } => {
                format!("F.max_pool2d({}, {kernel}, {}, {padding}, ceil_mode={})", arg(0), stride.unwrap_or(*kernel), py_bool(*ceil_mode))
            }
            Op::Conv2d { stride, padding, dilation, groups } => format!("F.conv2d({}, {}, {}, {stride}, {padding}, {dilation}, {groups})", arg(0), arg(1), arg(2)),
            Op::ConvTranspose2d { stride, padding, output_padding, dilation, groups } => {
                format!("F.conv_transpose2d({}, {}, {}, {stride}, {padding}, {output_padding}, {groups}, {dilation})", arg(0), arg(1), arg(2))
            }
            Op::AvgPool2d { kernel, stride, padding, ceil_mode, count_include_pad } => format!(
                "F.avg_pool2d({}, {kernel}, {}, {padding}, ceil_mode={}, count_include_pad={})",
                arg(0),
                stride.unwrap_or(*kernel),
                py_bool(*ceil_mode),
                py_bool(*count_include_pad)
            ),
            Op::AdaptiveAvgPool2d { output_size: [oh, ow] } => format!("F.adaptive_avg_pool2d({}, ({oh}, {ow}))", arg(0)),
            Op::UpsampleNearest2d { scale_factor } => format!("F.interpolate({}, scale_factor={scale_factor}, mode=\"nearest\")", arg(0)),
            Op::Linear {} => format!("F.linear({}, {}, {})", arg(0), arg(1), arg(2)),
            Op::BatchNorm { training, momentum, eps } => {
                format!("F.batch_norm({}, {}, {}, {}, {}, {}, {momentum}, {eps})", arg(0), arg(3), arg(4), arg(1), arg(2), if *training { "True" } else { "False" })
            }
            Op::LayerNorm { normalized_shape, eps } => format!("F.layer_norm({}, {normalized_shape:?}, {}, {}, {})", arg(0), arg(1), arg(2), py_num(*eps)),
            Op::RmsNorm { normalized_shape, eps } => format!("F.rms_norm({}, {normalized_shape:?}, {}, {})", arg(0), arg(1), eps.map_or("None".into(), py_num)),
            Op::GroupNorm { num_groups, eps } => format!("F.group_norm({}, {num_groups}, {}, {}, {})", arg(0), arg(1), arg(2), py_num(*eps)),
            Op::Softmax { dim } => format!("F.softmax({}, {dim})", arg(0)),
            Op::LogSoftmax { dim } => format!("F.log_softmax({}, {dim})", arg(0)),
            Op::NllLoss { reduction } => {
                format!("F.nll_loss({}, {}.long(), reduction='{}')", arg(0), arg(1), py_reduction(*reduction))
            }
            Op::CrossEntropy { reduction, label_smoothing } => {
                format!(
                    "F.cross_entropy({}, {}.long(), reduction='{}', label_smoothing={label_smoothing:?})",
                    arg(0),
                    arg(1),
                    py_reduction(*reduction)
                )
            }
            Op::MseLoss { reduction } => {
                format!("F.mse_loss({}, {}, reduction='{}')", arg(0), arg(1), py_reduction(*reduction))
            }
            Op::Dropout { p, training } => {
                if *training {
                    format!("{} * {} / (1 - {p})", arg(0), arg(1))
                } else {
                    arg(0)
                }
            }
            Op::Reshape { shape } => format!("{}.reshape({shape:?})", arg(0)),
            Op::Flatten { start_dim, end_dim } => format!("torch.flatten({}, {start_dim}, {end_dim})", arg(0)),
            Op::Permute { dims } => format!("{}.permute({dims:?})", arg(0)),
            Op::Transpose { dim0, dim1 } => format!("{}.transpose({dim0}, {dim1})", arg(0)),
            Op::Concat { dim } => format!("torch.cat([{}], {dim})", a.join(", ")),
            Op::Narrow { dim, start, length } => format!("{}.narrow({dim}, {start}, {length})", arg(0)),
            Op::IndexSelect { dim } => format!("{}.index_select({dim}, {}.long())", arg(0), arg(1)),
            Op::Embedding { padding_idx } => {
                format!(
                    "F.embedding({}.long(), {}, padding_idx={})",
                    arg(1),
                    arg(0),
                    padding_idx.map_or("None".to_string(), |p| p.to_string())
                )
            }
            Op::Where {} => format!("torch.where({} != 0, {}, {})", arg(0), arg(1), arg(2)),
            Op::MaskedFill { value } => format!("{}.masked_fill({} != 0, {value:?})", arg(0), arg(1)),
        };
        py.push_str(&format!("{} = {expr}\n", var(&n.id)));
    }
    py
}

/// A Python identifier for a program value.
fn var(name: &str) -> String {
    let s: String = name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    format!("v_{s}")
}

fn py_bool(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

fn py_reduction(r: crate::models::Reduction) -> &'static str {
    match r {
        crate::models::Reduction::Mean => "mean",
        crate::models::Reduction::Sum => "sum",
        crate::models::Reduction::None => "none",
    }
}
