//! parity-report: runs the parity studies and writes `reports/`. A thin CLI: it parses
//! arguments, calls the library, and prints where the results went.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use backprop_parity::backends::BackendKind;
use backprop_parity::models::abc::{AbcSpec, InitSource, SEED_LR, SEED_STEPS};
use backprop_parity::parity::Tolerance;
use backprop_parity::report;
use backprop_parity::study;
use backprop_parity::DType;

#[derive(Parser)]
#[command(name = "parity-report", version, about = "Does a handwritten backprop engine compute what real autograd computes? Measures it against candle and libtorch.")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// The seed's A/B/C problem trained on every backend from the same start.
    Abc(AbcArgs),
}

/// Options every study shares.
#[derive(Args, Clone)]
struct Common {
    /// Comma-separated backends to run: engine, candle, torch. Default: every backend built.
    #[arg(long, value_name = "LIST")]
    backends: Option<String>,
    /// Element type of every backend's computation.
    #[arg(long, default_value = "f64", value_name = "f32|f64")]
    dtype: DType,
    /// Also write the JSON result to PATH ('-' for stdout).
    #[arg(long, value_name = "PATH")]
    json: Option<String>,
    /// Directory for the Markdown, JSON and SVG report.
    #[arg(long, default_value = "reports", value_name = "DIR")]
    out: PathBuf,
    /// Relative tolerance (default: PyTorch's assert_close default for the dtype).
    #[arg(long)]
    rtol: Option<f64>,
    /// Absolute tolerance (default: PyTorch's assert_close default for the dtype).
    #[arg(long)]
    atol: Option<f64>,
}

impl Common {
    fn backends(&self) -> Result<Vec<BackendKind>> {
        Ok(match &self.backends {
            Some(list) => BackendKind::parse_list(list)?,
            None => BackendKind::built(),
        })
    }

    fn tolerance(&self) -> Result<Tolerance> {
        let mut tol = Tolerance::torch_default(self.dtype);
        for (flag, given, slot) in [("--rtol", self.rtol, &mut tol.rtol), ("--atol", self.atol, &mut tol.atol)] {
            if let Some(v) = given {
                anyhow::ensure!(v.is_finite() && v >= 0.0, "{flag} {v}: expected a finite number >= 0");
                *slot = v;
            }
        }
        Ok(tol)
    }
}

#[derive(Args, Clone)]
struct AbcArgs {
    /// Size K of x (K) and of A, B, C (K×K). Default 3, or the file's size with --init PATH.
    #[arg(long)]
    k: Option<usize>,
    #[arg(long, default_value_t = SEED_LR)]
    lr: f64,
    #[arg(long, default_value_t = SEED_STEPS)]
    steps: usize,
    /// Starting values: ones | seed:N | PATH of a JSON file {"x": [..], "A": [[..]], "B": [[..]], "C": [[..]]}.
    #[arg(long, default_value = "ones", value_name = "ones|seed:N|PATH")]
    init: InitSource,
    #[command(flatten)]
    common: Common,
}

impl Default for AbcArgs {
    fn default() -> Self {
        AbcArgs {
            k: None,
            lr: SEED_LR,
            steps: SEED_STEPS,
            init: InitSource::Ones,
            common: Common { backends: None, dtype: DType::F64, json: None, out: "reports".into(), rtol: None, atol: None },
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Abc(args)) => run_abc(&args),
        None => run_abc(&AbcArgs::default()),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run_abc(args: &AbcArgs) -> Result<ExitCode> {
    let c = &args.common;
    let spec = AbcSpec::new(args.init.clone(), args.k, args.lr, args.steps)?;
    let kinds = c.backends()?;
    let tol = c.tolerance()?;
    let result = study::abc::run(&spec, c.dtype, &kinds, tol).context("the A/B/C study failed")?;
    let outputs = report::abc::outputs(&result, "abc")?;
    emit_json(c.json.as_deref(), &outputs[0].contents)?;
    let written = report::write_all(&c.out, &outputs)?;
    for (name, p) in &result.parity {
        eprintln!(
            "{name:>14}: max rel. loss diff {:.2e}, first step beyond tolerance {}, {}",
            p.loss.max_rel,
            p.loss.first_divergence.map_or("none".into(), |s| s.to_string()),
            if p.agree { "agree" } else { "DISAGREE" }
        );
    }
    print_written(&written);
    Ok(ExitCode::SUCCESS)
}

fn emit_json(target: Option<&str>, json: &str) -> Result<()> {
    match target {
        None => {}
        Some("-") => {
            let mut out = std::io::stdout().lock();
            out.write_all(json.as_bytes()).context("writing JSON to stdout")?;
        }
        Some(path) => report::write_atomic(Path::new(path), json).with_context(|| format!("--json {path}"))?,
    }
    Ok(())
}

fn print_written(paths: &[PathBuf]) {
    let list: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    eprintln!("wrote {}", list.join(", "));
}
