//! parity-report: runs the parity studies and writes `reports/`. A thin CLI: it parses
//! arguments, calls the library, and prints where the results went.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use backprop_parity::backends::{BackendKind, MaxPoolMode};
use backprop_parity::data::{self, Dataset, DatasetKind};
use backprop_parity::engine::faults::Fault;
use backprop_parity::models::abc::{AbcSpec, InitSource, SEED_LR, SEED_STEPS};
use backprop_parity::models::mnist::{ModelSpec, ParamSet, SEED_MODELS};
use backprop_parity::models::program::{check as check_program, resolve_inputs};
use backprop_parity::models::safetensors_io;
use backprop_parity::models::{Op, Program};
use backprop_parity::parity::Tolerance;
use backprop_parity::report::{self, JsonTarget, Provenance, ReportSet};
use backprop_parity::study::campaign::Shard;
use backprop_parity::study::run::RunOptions;
use backprop_parity::study::gate::{self, Baseline};
use backprop_parity::study::suite::SuiteConfig;
use backprop_parity::study::{self, grads::GradsOptions, lockstep::BackendOptions, mnist::MnistOptions};
use backprop_parity::DType;

#[derive(Parser)]
#[command(
    name = "parity-report",
    version,
    about = "Does a handwritten backprop engine compute what real autograd computes? Measures it against candle and libtorch.",
    after_help = "Without a subcommand: the A/B/C study, step-0 gradients of the nine models, and a quick MNIST profile on every built backend (--full: `parity-report study`, the seed's whole study over seeds).\n\nExit codes: 0 agreement, 1 disagreement or gate failure, 2 bad input or usage, 3 a backend or the run itself failed (--exit-zero: 0 once the report is written)."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Without a subcommand only: `parity-report study` with its defaults (the seed's 25 epochs of nine models, seeds 0, 1, 2) instead of the quick profile.
    #[arg(long)]
    full: bool,
    /// Folder of the reports: each study replaces its own set, DIR/<study>/, as a whole (default: reports).
    #[arg(long, global = true, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Nothing on stderr (no progress bars, no summaries) except the one line of an error.
    #[arg(long, short, global = true)]
    quiet: bool,
    /// A backend's own setting, `BACKEND.KEY=VALUE` (repeatable): e.g. candle.maxpool=exact (what --candle-maxpool sets), or a setting of a backend you registered. Applied after --candle-maxpool.
    #[arg(long = "backend-option", global = true, value_name = "BACKEND.KEY=VALUE")]
    backend_option: Vec<String>,
}

/// `--backend-option`s, parsed once in `main`.
static BACKEND_OPTIONS: std::sync::OnceLock<BackendOptions> = std::sync::OnceLock::new();

/// The backends' settings: candle's max-pool mode from `--candle-maxpool`, then every
/// `--backend-option`.
fn backend_options(maxpool: MaxPoolMode) -> BackendOptions {
    let mut o = BackendOptions::default().with("candle", "maxpool", maxpool.name());
    for (backend, settings) in &BACKEND_OPTIONS.get().cloned().unwrap_or_default().0 {
        for (k, v) in settings {
            o.set(backend, k, v);
        }
    }
    o
}

#[derive(Subcommand)]
enum Command {
    /// The seed's A/B/C problem trained on every backend from the same start.
    Abc(AbcArgs),
    /// Gradients of every parameter of each model at one step, every backend pair compared.
    Grads(GradsArgs),
    /// The nine models trained in lockstep on every backend, evaluated after each epoch.
    Mnist(MnistArgs),
    /// The CI gate: the quick parity suite against reference/baseline.json (exit 1 if agreement regressed).
    Check(CheckArgs),
    /// The seed's study for real: 25 epochs, several seeds, MNIST and Fashion-MNIST; resumable and shardable (--full is its alias).
    Study(StudyArgs),
    /// Differential gradient fuzzing: generated programs on every backend, findings shrunk to reproducers.
    Fuzz(FuzzArgs),
    /// Every op and every implementation a backend offers, on random cases over the op's valid domain: agreement with finite differences and with each other backend (exit 0: no finding, 1: findings).
    Ops(OpsArgs),
    /// Mutation testing: each catalogued backprop fault switched on in the engine, the suite rerun.
    Mutants(MutantsArgs),
    /// Speed: median training-step and eval times per model and backend, interleaved; matrix-product GFLOP/s.
    Bench(BenchArgs),
    /// Runs a program file on every backend; compares every output and gradient (exit 0: agree, 1: disagree, 2: bad input, 3: a backend failed).
    Run(RunArgs),
    /// Prints a seed model (or `abc`) as a program file to edit and run; --write-inputs saves its parameters and first batch.
    Program(ProgramArgs),
    /// Writes the JSON Schema of every JSON output (and of the baseline) into DIR as <kind>.schema.json.
    Schemas(SchemasArgs),
    /// (internal) One training epoch of one model on one backend; prints its memory use as JSON.
    #[command(hide = true)]
    MemoryChild(MemoryChildArgs),
}

#[derive(Args, Clone)]
struct RunArgs {
    /// The program (JSON, format `backprop-parity/program`, version 1; see the README).
    file: PathBuf,
    /// A safetensors file with values for inputs by name (they take precedence over the program's own values).
    #[arg(long, value_name = "FILE.safetensors")]
    inputs: Option<PathBuf>,
    /// candle's max-pool backward: `builtin` (candle-core as released) or `exact` (PyTorch's rule).
    #[arg(long, default_value = "builtin", value_name = "builtin|exact")]
    candle_maxpool: MaxPoolMode,
    /// Write each backend's gradients as DIR/<program>-<backend>.safetensors.
    #[arg(long, value_name = "DIR")]
    save_grads: Option<PathBuf>,
    /// Run one backend with another of its implementations of an op, as `parity-report ops`
    /// lists them: BACKEND:OP:NAME, e.g. candle:softmax:softmax_last_dim.
    #[arg(long, value_name = "BACKEND:OP:NAME")]
    implementation: Option<String>,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Clone)]
struct ProgramArgs {
    /// A seed model or `abc`.
    #[arg(help = format!("A seed model ({}) or `abc`", names(SEED_MODELS)))]
    model: String,
    /// Batch size of the model's program.
    #[arg(long, default_value_t = 25)]
    batch: usize,
    /// Also write the values `parity-report grads` starts from (seeded or --params parameters, the first
    /// --batch training images and labels, step-0 dropout masks) as a safetensors file for `run --inputs`.
    #[arg(long, value_name = "FILE.safetensors")]
    write_inputs: Option<PathBuf>,
    #[command(flatten)]
    model_args: ModelArgs,
}

#[derive(Args, Clone)]
struct StudyArgs {
    /// Comma-separated datasets: mnist, fashion.
    #[arg(long, default_value = "mnist", value_name = "LIST")]
    datasets: String,
    /// Comma-separated seed models (default: all nine).
    #[arg(long, value_name = "LIST", help = models_help())]
    models: Option<String>,
    /// Comma-separated seeds (parameter init, data order and dropout masks of each run).
    #[arg(long, default_value = "0,1,2", value_name = "LIST")]
    seeds: String,
    /// Seeds whose runs train every --backends backend in lockstep from the same start
    /// (default: the first seed); the other seeds train the engine alone.
    #[arg(long, value_name = "LIST")]
    lockstep_seeds: Option<String>,
    #[command(flatten)]
    budget: Budget,
    /// candle's max-pool backward when candle is among --backends: `builtin` or `exact`.
    #[arg(long, default_value = "builtin", value_name = "builtin|exact")]
    candle_maxpool: MaxPoolMode,
    /// Folder of the runs' records and checkpoints; a rerun resumes every run from it
    /// (default: <out>/study-records).
    #[arg(long, value_name = "DIR")]
    records: Option<PathBuf>,
    /// Run only the runs of shard I of N (runs I, I+N, I+2N, ... of the plan).
    #[arg(long, value_name = "I/N")]
    shard: Option<Shard>,
    /// Train nothing: build the report from these record folders (the shards' --records).
    #[arg(long, num_args = 1.., value_name = "DIR")]
    merge: Vec<PathBuf>,
    /// Threads for every backend; 1 to the number of cores (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Clone)]
struct FuzzArgs {
    /// Generated programs to run (at most 10000000; default 1000, or 10000000 with --time-limit).
    #[arg(long)]
    cases: Option<u64>,
    /// Stop after this many seconds (the cases run so far, in order: a prefix of the campaign).
    #[arg(long, value_name = "S", allow_negative_numbers = true)]
    time_limit: Option<f64>,
    /// Seed of the campaign: the same seed gives the same programs and the same findings.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Comma-separated ops the generator draws from (default: all of them).
    #[arg(long, value_name = "LIST", help = format!("Comma-separated ops the generator draws from, of {} (default: all)", names(backprop_parity::study::fuzz::gen::OPS)))]
    ops: Option<String>,
    /// Largest number of nodes of a generated program (1 to 32; a final sum is added).
    #[arg(long, default_value_t = 4)]
    max_nodes: usize,
    /// candle's max-pool backward: `builtin` (candle-core as released) or `exact` (PyTorch's rule).
    #[arg(long, default_value = "builtin", value_name = "builtin|exact")]
    candle_maxpool: MaxPoolMode,
    /// Run only cases I, I+N, ... of the campaign.
    #[arg(long, value_name = "I/N")]
    shard: Option<Shard>,
    /// Also draw the NaN/infinity regime (a quarter of the cases; the others stay as they
    /// are): NaN and ±inf in the inputs, outputs and gradients compared by non-finite pattern.
    #[arg(long)]
    nonfinite: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Clone)]
struct OpsArgs {
    /// Comma-separated ops (default: every op of the program format).
    #[arg(long, value_name = "LIST", help = format!("Comma-separated ops, of {} (default: all)", names(Op::NAMES)))]
    ops: Option<String>,
    /// Random cases per op (1 to 100000).
    #[arg(long, default_value_t = 100)]
    cases: usize,
    /// Seed of the cases: the same seed gives the same cases.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// candle's max-pool backward: `builtin` (candle-core as released) or `exact` (PyTorch's rule).
    #[arg(long, default_value = "builtin", value_name = "builtin|exact")]
    candle_maxpool: MaxPoolMode,
    #[command(flatten)]
    common: Common,
}

/// `study` with every default, for `parity-report --full`.
#[derive(Parser)]
struct StudyDefaults {
    #[command(flatten)]
    args: StudyArgs,
}

/// How long a model trains and on how much data.
#[derive(Args, Clone)]
struct Budget {
    /// Epochs of every run (the seed's 25; at most 1000).
    #[arg(long, default_value_t = 25)]
    epochs: usize,
    /// Train on the first N training images only (1 to the training set's size).
    #[arg(long, value_name = "N")]
    train_limit: Option<usize>,
    /// Evaluate on the first N test images only (1 to the test set's size).
    #[arg(long, value_name = "N")]
    test_limit: Option<usize>,
}

#[derive(Args, Clone)]
struct SchemasArgs {
    /// The folder (the committed copies are in reference/schemas).
    dir: PathBuf,
}

#[derive(Args, Clone)]
struct MemoryChildArgs {
    #[arg(long)]
    model: String,
    #[arg(long)]
    backend: String,
    #[arg(long)]
    images: usize,
    #[arg(long)]
    threads: usize,
}

#[derive(Args, Clone)]
struct BenchArgs {
    /// Comma-separated seed models (default: all nine).
    #[arg(long, value_name = "LIST", help = models_help())]
    models: Option<String>,
    /// Timed training steps per model and backend (at most 100000).
    #[arg(long, default_value_t = 40)]
    steps: usize,
    /// Untimed training steps per model and backend before the timed ones (at most 10000).
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Consecutive timed steps of one backend before the next runs (each block follows
    /// 30 ms of untimed steps, which pay for the switch).
    #[arg(long, default_value_t = 8)]
    block: usize,
    /// Training images of the epoch whose peak resident memory is measured per model and
    /// backend, each in a child process (0: skip; the default is MNIST's full epoch).
    #[arg(long, default_value_t = 60_000, value_name = "N")]
    memory_images: usize,
    /// Threads for every backend: the engine's team, candle's rayon pool, libtorch's
    /// intra-op threads; 1 to the number of cores (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    /// Generated programs of the fuzz-throughput campaign (0: skip it; at most 1000000).
    #[arg(long, default_value_t = study::bench::FUZZ_CASES)]
    fuzz_cases: u64,
    /// Comma-separated ops whose first generated case is timed, forward and backward, on
    /// every backend (default: all; `none` skips the per-op rows).
    #[arg(long, value_name = "LIST")]
    ops: Option<String>,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Clone)]
struct CheckArgs {
    /// The accepted metrics (default: reference/baseline.json of the checkout this runs in).
    #[arg(long, value_name = "FILE")]
    baseline: Option<PathBuf>,
    /// Rewrite the baseline from this run (on purpose), and say what changed.
    #[arg(long)]
    update_baseline: bool,
    /// Generated programs of the gate's fixed-seed fuzz campaign (0: skip it, and say so;
    /// at most 1000000).
    #[arg(long, default_value_t = gate::GATE_FUZZ_CASES)]
    fuzz_cases: u64,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Clone)]
struct MutantsArgs {
    /// The accepted metrics (default: reference/baseline.json of the checkout this runs in).
    #[arg(long, value_name = "FILE")]
    baseline: Option<PathBuf>,
    /// Comma-separated faults (default: all of them).
    #[arg(long, value_name = "LIST", help = format!("Comma-separated faults, of {} (default: all of them)", names(Fault::ALL.map(Fault::name))))]
    faults: Option<String>,
    #[command(flatten)]
    common: Common,
}

/// Options every study shares.
#[derive(Args, Clone, Default)]
struct Common {
    /// Comma-separated backends to run (default: every backend built).
    #[arg(long, value_name = "LIST", help = format!("Comma-separated backends to run, of {} (default: {}; a backend built but not listed here runs when named)", names(BackendKind::all().iter().map(|k| k.name())), names(BackendKind::defaults().iter().map(|k| k.name()))))]
    backends: Option<String>,
    /// Element type of every backend's computation (default: f64 for abc, grads and run, f32 for mnist).
    #[arg(long, value_name = "f32|f64")]
    dtype: Option<DType>,
    /// Also write the JSON document to PATH, a regular file or a new path ('-' for stdout).
    #[arg(long, value_name = "PATH")]
    json: Option<String>,
    /// Relative tolerance, 0 to 1 (default: PyTorch's assert_close default for the dtype).
    #[arg(long, allow_negative_numbers = true)]
    rtol: Option<f64>,
    /// Absolute tolerance, finite and >= 0 (default: PyTorch's assert_close default for the dtype).
    #[arg(long, allow_negative_numbers = true)]
    atol: Option<f64>,
    /// Exit 0 once the report is written even when backends disagree (bad input still exits 2, a failed backend 3).
    #[arg(long)]
    exit_zero: bool,
}

fn models_help() -> String {
    format!("Comma-separated seed models, of {} (default: all nine)", names(SEED_MODELS))
}

/// `a, b, c` for a help text.
fn names<'a>(list: impl IntoIterator<Item = &'a str>) -> String {
    list.into_iter().collect::<Vec<_>>().join(", ")
}

impl Common {
    fn backends(&self) -> Result<Vec<BackendKind>> {
        Ok(match &self.backends {
            Some(list) => BackendKind::parse_list(list)?,
            None => BackendKind::defaults(),
        })
    }

    fn dtype(&self, default: DType) -> DType {
        self.dtype.unwrap_or(default)
    }

    fn tolerance(&self, dtype: DType) -> Result<Tolerance> {
        let mut tol = Tolerance::torch_default(dtype);
        for (flag, given, slot) in [("--rtol", self.rtol, &mut tol.rtol), ("--atol", self.atol, &mut tol.atol)] {
            if let Some(v) = given {
                anyhow::ensure!(v.is_finite() && v >= 0.0, "{flag} {v:e}: expected a finite number >= 0");
                // A relative tolerance above 1 accepts any value of the same sign as agreeing.
                anyhow::ensure!(flag != "--rtol" || v <= 1.0, "{flag} {v:e}: expected at most 1 (above it, any two values of one sign agree)");
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
    /// Learning rate of plain gradient descent, finite and > 0 (the seed's).
    #[arg(long, default_value_t = SEED_LR, allow_negative_numbers = true)]
    lr: f64,
    /// Gradient-descent steps (the seed's; at most 100000).
    #[arg(long, default_value_t = SEED_STEPS)]
    steps: usize,
    /// Starting values: ones | seed:N | PATH of a JSON file {"x": [..], "A": [[..]], "B": [[..]], "C": [[..]]}.
    #[arg(long, default_value = "ones", value_name = "ones|seed:N|PATH")]
    init: InitSource,
    /// Also run the engine with this catalogued fault switched on (vecmat-inner-product: the seed's Figure 0).
    #[arg(long, value_name = "FAULT", help = format!("Also run the engine with this catalogued fault switched on (vecmat-inner-product: the seed's Figure 0); one of {}", names(Fault::ALL.map(Fault::name))))]
    fault: Option<Fault>,
    #[command(flatten)]
    common: Common,
}

/// Options of the MNIST studies.
#[derive(Args, Clone)]
struct ModelArgs {
    /// Comma-separated seed models (default: all nine).
    #[arg(long, value_name = "LIST", help = models_help())]
    models: Option<String>,
    /// Seed of the parameter init, the batch order and the dropout masks.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Start from a PyTorch state_dict saved as safetensors (f32 or f64) instead of the seeded init.
    #[arg(long, value_name = "FILE")]
    params: Option<PathBuf>,
    /// The images: MNIST (shipped in data/mnist) or Fashion-MNIST (same format, 10 clothing classes).
    #[arg(long, default_value = "mnist", value_name = "mnist|fashion")]
    dataset: DatasetKind,
    /// Folder holding the four IDX files (default: data/mnist, or /usr/share/datasets/fashion-mnist).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// candle's max-pool backward: `builtin` (candle-core as released) or `exact` (PyTorch's rule).
    #[arg(long, default_value = "builtin", value_name = "builtin|exact")]
    candle_maxpool: MaxPoolMode,
}

#[derive(Args, Clone)]
struct GradsArgs {
    /// Gradients on the first N training images, in file order.
    #[arg(long, default_value_t = 25)]
    batch: usize,
    /// Write each backend's gradients as DIR/<model>-<backend>.safetensors.
    #[arg(long, value_name = "DIR")]
    save_grads: Option<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Clone)]
struct MnistArgs {
    #[command(flatten)]
    budget: Budget,
    /// Steps of the re-synchronised phase (every backend reset to the reference before each step;
    /// at most the steps of one epoch).
    #[arg(long, default_value_t = 20)]
    resync_steps: usize,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    common: Common,
}

/// `--quiet`: nothing on stderr but an error's line.
static QUIET: AtomicBool = AtomicBool::new(false);

/// eprintln! unless `--quiet`.
macro_rules! say {
    ($($arg:tt)*) => {
        if !QUIET.load(Ordering::Relaxed) {
            eprintln!($($arg)*);
        }
    };
}

/// Where a run's reports go, checked before any work starts.
struct Ctx {
    out: PathBuf,
    json: Option<JsonTarget>,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version print in full; a usage error is its first line only (clap
        // adds usage and a tip on further lines), exit 2 like every other bad input.
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let text = e.render().to_string();
            eprintln!("{}", text.lines().find(|l| !l.trim().is_empty()).unwrap_or("error: bad arguments"));
            return ExitCode::from(2);
        }
    };
    QUIET.store(cli.quiet, Ordering::Relaxed);
    // Freed blocks stay in the process for the next step (every backend alike; see
    // engine::memory for why and what it costs).
    backprop_parity::engine::memory::keep_freed_pages();
    match dispatch(cli) {
        Ok((Verdict::Agree, _)) | Ok((_, true)) => ExitCode::SUCCESS,
        Ok((Verdict::Disagree, false)) => ExitCode::from(1),
        Ok((Verdict::BackendFailed, false)) => ExitCode::from(3),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit_code_of(&e))
        }
    }
}

/// Checks where the reports go, then runs the command: its verdict and `--exit-zero`.
fn dispatch(cli: Cli) -> Result<(Verdict, bool)> {
    anyhow::ensure!(
        !cli.full || cli.command.is_none(),
        "--full: is `parity-report study` without a subcommand; give the subcommand's own flags instead (`mnist` takes --epochs, --train-limit and --test-limit)"
    );
    let mut options = BackendOptions::default();
    for o in &cli.backend_option {
        options.parse_one(o)?;
    }
    options.validate()?;
    let _ = BACKEND_OPTIONS.set(options);
    let out = cli.out.clone().unwrap_or_else(|| PathBuf::from("reports"));
    match &cli.command {
        Some(Command::Program(_)) => anyhow::ensure!(cli.out.is_none(), "--out: `program` prints to stdout (and --write-inputs to its file); it has no report folder"),
        Some(Command::Schemas(_)) => anyhow::ensure!(cli.out.is_none(), "--out: `schemas` writes into the folder it is given"),
        Some(Command::MemoryChild(_)) => {}
        _ => report::check_out_dir(&out)?,
    }
    let common = cli.command.as_ref().and_then(Command::common);
    let json = common.and_then(|c| c.json.as_deref()).map(report::check_json_target).transpose()?;
    let exit_zero = common.is_some_and(|c| c.exit_zero);
    let ctx = Ctx { out, json };
    let verdict = match &cli.command {
        Some(Command::Abc(args)) => run_abc(&ctx, args)?,
        Some(Command::Grads(args)) => run_grads(&ctx, args)?,
        Some(Command::Mnist(args)) => run_mnist(&ctx, args)?,
        Some(Command::Check(args)) => run_check(&ctx, args)?,
        Some(Command::Mutants(args)) => run_mutants(&ctx, args)?,
        Some(Command::Study(args)) => run_study(&ctx, args)?,
        Some(Command::Fuzz(args)) => run_fuzz(&ctx, args)?,
        Some(Command::Ops(args)) => run_ops(&ctx, args)?,
        Some(Command::Bench(args)) => run_bench(&ctx, args).map(|()| Verdict::Agree)?,
        Some(Command::MemoryChild(args)) => run_memory_child(args).map(|()| Verdict::Agree)?,
        Some(Command::Run(args)) => run_program(&ctx, args)?,
        Some(Command::Program(args)) => print_program(args).map(|()| Verdict::Agree)?,
        Some(Command::Schemas(args)) => write_schemas(&args.dir).map(|()| Verdict::Agree)?,
        None if cli.full => run_study(&ctx, &StudyDefaults::parse_from(["study"]).args)?,
        None => run_default(&ctx).map(|()| Verdict::Agree)?,
    };
    Ok((verdict, exit_zero))
}

impl Command {
    fn common(&self) -> Option<&Common> {
        match self {
            Command::Abc(a) => Some(&a.common),
            Command::Grads(a) => Some(&a.common),
            Command::Mnist(a) => Some(&a.common),
            Command::Check(a) => Some(&a.common),
            Command::Mutants(a) => Some(&a.common),
            Command::Study(a) => Some(&a.common),
            Command::Fuzz(a) => Some(&a.common),
            Command::Ops(a) => Some(&a.common),
            Command::Bench(a) => Some(&a.common),
            Command::Run(a) => Some(&a.common),
            Command::Program(_) | Command::Schemas(_) | Command::MemoryChild(_) => None,
        }
    }
}

/// What a finished run found: the exit codes 0, 1 and 3 (2 is bad input).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Agree,
    /// Backends disagree, or the gate failed, or a catalogued fault went unnoticed.
    Disagree,
    /// A backend refused or failed; the report says which and why.
    BackendFailed,
}

impl Verdict {
    fn of(agree: bool) -> Self {
        if agree {
            Verdict::Agree
        } else {
            Verdict::Disagree
        }
    }
}

/// The run itself failed after it started (a report could not be written): exit 3.
#[derive(Debug)]
struct RunFailed(String);

impl std::fmt::Display for RunFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RunFailed {}

/// 3 when a backend or the run itself failed, 2 for bad input or usage.
fn exit_code_of(e: &anyhow::Error) -> u8 {
    let failed = e.chain().any(|c| {
        c.downcast_ref::<RunFailed>().is_some() || matches!(c.downcast_ref::<backprop_parity::Error>(), Some(backprop_parity::Error::Backend { .. }))
    });
    if failed {
        3
    } else {
        2
    }
}

/// The A/B/C study, step-0 gradients, and a quick (or, with --full, the seed's) MNIST run.
fn run_default(ctx: &Ctx) -> Result<()> {
    let start = Instant::now();
    let mut findings = Vec::new();
    // The seed's Figure 0: the correct backends next to the engine with the seed's bug.
    let abc = run_abc(
        ctx,
        &AbcArgs { k: None, lr: SEED_LR, steps: SEED_STEPS, init: InitSource::Ones, fault: Some(Fault::VecMatInnerProduct), common: Common::default() },
    )?;
    if abc != Verdict::Agree {
        findings.push("abc");
    }
    let model = ModelArgs {
        models: None,
        seed: 0,
        params: None,
        dataset: DatasetKind::Mnist,
        data_dir: None,
        candle_maxpool: MaxPoolMode::Builtin,
    };
    if run_grads(ctx, &GradsArgs { batch: 25, save_grads: None, model: model.clone(), common: Common::default() })? != Verdict::Agree {
        findings.push("grads");
    }
    let (train_limit, test_limit, epochs) = (Some(QUICK_TRAIN), Some(QUICK_TEST), QUICK_EPOCHS);
    {
        say!(
            "quick profile: {QUICK_EPOCHS} epoch on the first {QUICK_TRAIN} of 60000 training images, tested on the first {QUICK_TEST} of 10000 \
             (the seed's study, 25 epochs on all of them over seeds: `parity-report study`)"
        );
    }
    if run_mnist(ctx, &MnistArgs { budget: Budget { epochs, train_limit, test_limit }, resync_steps: 10, model, common: Common::default() })? != Verdict::Agree {
        findings.push("mnist");
    }
    // The default run shows known disagreements on purpose (candle's max-pool as
    // released), so a complete report exits 0 and says what it holds.
    say!(
        "done in {:.0} s; the report is complete and holds disagreements in {} of 3 studies{}",
        start.elapsed().as_secs_f64(),
        findings.len(),
        if findings.is_empty() { String::new() } else { format!(" ({}; see {})", findings.join(", "), ctx.out.display()) }
    );
    Ok(())
}

/// The quick profile of the default run: small enough to finish in about a minute.
const QUICK_TRAIN: usize = 3000;
const QUICK_TEST: usize = 2000;
const QUICK_EPOCHS: usize = 1;

fn run_abc(ctx: &Ctx, args: &AbcArgs) -> Result<Verdict> {
    let c = &args.common;
    let dtype = c.dtype(DType::F64);
    let spec = AbcSpec::new(args.init.clone(), args.k, args.lr, args.steps)?;
    let kinds = c.backends()?;
    let tol = c.tolerance(dtype)?;
    let result = study::abc::run_with_fault(&spec, dtype, &kinds, tol, args.fault).context("the A/B/C study failed")?;
    if let Some(f) = &result.faulty {
        say!(
            "abc engine with fault {}: first step beyond tolerance {}, max rel. loss diff {:.2e}",
            f.fault.name(),
            f.vs_reference.first_divergence.map_or("none".into(), |s| s.to_string()),
            f.vs_reference.max_rel
        );
    }
    for (name, p) in &result.parity {
        say!(
            "abc {name:>14}: max rel. loss diff {:.2e}, first step beyond tolerance {}, {}",
            p.loss.max_rel,
            p.loss.first_divergence.map_or("none".into(), |s| s.to_string()),
            if p.agree { "agree" } else { "DISAGREE" }
        );
    }
    finish(ctx, report::abc::outputs(&result, &Provenance::collect(&kinds, &[dtype]))?)?;
    Ok(Verdict::of(result.agree))
}

fn load_data(m: &ModelArgs) -> Result<Dataset> {
    let dir = m.data_dir.clone().unwrap_or_else(|| data::default_dir(m.dataset));
    Ok(data::load(m.dataset, &dir)?)
}

fn parse_models(m: &ModelArgs) -> Result<Vec<ModelSpec>> {
    match &m.models {
        None => Ok(ModelSpec::all_seed()),
        Some(list) => {
            let specs: Vec<ModelSpec> = list.split(',').map(|s| s.trim().parse()).collect::<Result<_, _>>()?;
            anyhow::ensure!(!specs.is_empty(), "--models: expected one or more of {}", SEED_MODELS.join(", "));
            Ok(specs)
        }
    }
}

fn load_params(m: &ModelArgs) -> Result<(Option<ParamSet>, Option<String>)> {
    match &m.params {
        None => Ok((None, None)),
        Some(p) => Ok((Some(safetensors_io::read(p)?), Some(p.display().to_string()))),
    }
}

fn run_grads(ctx: &Ctx, args: &GradsArgs) -> Result<Verdict> {
    let c = &args.common;
    let (models, backends) = (parse_models(&args.model)?, c.backends()?);
    if let Some(dir) = &args.save_grads {
        report::check_dir("--save-grads", dir)?;
    }
    let dtype = c.dtype(DType::F64);
    let (params, params_origin) = load_params(&args.model)?;
    let data = load_data(&args.model)?;
    let bar = progress_bar(models.len(), "grads");
    let opts = GradsOptions {
        models,
        dtype,
        backends: backends.clone(),
        backend_options: backend_options(args.model.candle_maxpool),
        batch: args.batch,
        seed: args.model.seed,
        params,
        params_origin,
        save_grads: args.save_grads.clone(),
    };
    let result = study::grads::run(&data, &opts, |m| step(&bar, m))?;
    bar.finish_and_clear();
    for (name, m) in &result.models {
        let worst: Vec<String> = m.worst_scaled.iter().map(|(p, v)| format!("{p} {v:.1e}")).collect();
        let why = m.diagnosis.as_ref().map_or(String::new(), |d| {
            format!(
                " — odd one out: {}, from {} down (suspects: {}; probed alone: {})",
                d.odd_one_out.map_or("none".into(), |k| k.to_string()),
                d.first_disagreeing_param,
                d.suspects.join(", "),
                d.culprit.as_ref().map_or("no single culprit".into(), |c| format!("{c} disagrees"))
            )
        });
        say!("grads {name:>17}: {} [{}]{why}", if m.agree { "agree" } else { "DISAGREE" }, worst.join(", "));
    }
    finish(ctx, report::grads::outputs(&result, &Provenance::collect(&backends, &[dtype]))?)?;
    Ok(Verdict::of(result.agree))
}

fn run_mnist(ctx: &Ctx, args: &MnistArgs) -> Result<Verdict> {
    let c = &args.common;
    let (models, backends) = (parse_models(&args.model)?, c.backends()?);
    anyhow::ensure!(args.budget.epochs <= MAX_EPOCHS, "--epochs {}: at most {MAX_EPOCHS} (the seed's study is 25)", args.budget.epochs);
    let dtype = c.dtype(DType::F32);
    let (params, params_origin) = load_params(&args.model)?;
    let data = load_data(&args.model)?;
    let opts = MnistOptions {
        models,
        dtype,
        backends: backends.clone(),
        backend_options: backend_options(args.model.candle_maxpool),
        dataset: args.model.dataset,
        epochs: args.budget.epochs,
        train_limit: args.budget.train_limit,
        test_limit: args.budget.test_limit,
        seed: args.model.seed,
        params,
        params_origin,
        resync_steps: args.resync_steps,
    };
    let bars = MultiProgress::with_draw_target(draw_target());
    let style = ProgressStyle::with_template("{prefix:>24} [{bar:30}] {pos}/{len} {elapsed} ETA {eta}")
        .expect("valid template")
        .progress_chars("=> ");
    let mut current: Vec<(String, BackendKind, ProgressBar)> = Vec::new();
    let mut progress = |model: &str, kind: BackendKind, done: usize, total: usize| {
        let bar = match current.iter().find(|(m, k, _)| m == model && *k == kind) {
            Some((_, _, b)) => b.clone(),
            None => {
                let b = bars.add(
                    ProgressBar::new(total as u64).with_style(style.clone()).with_prefix(format!("{model} {kind}")),
                );
                current.push((model.to_string(), kind, b.clone()));
                b
            }
        };
        bar.set_position(done as u64);
        if done == total {
            bar.finish();
        }
    };
    let result = study::mnist::run(&data, &opts, &mut progress)?;
    for (name, m) in &result.models {
        let accs: Vec<String> = m
            .backends
            .iter()
            .map(|(k, b)| format!("{k} {:.2}%", b.epochs.last().map_or(f64::NAN, |e| e.test_accuracy)))
            .collect();
        say!("mnist {name:>17}: {}", accs.join(", "));
    }
    finish(ctx, report::mnist::outputs(&result, &Provenance::collect(&backends, &[dtype]))?)?;
    Ok(Verdict::of(result.agree))
}

fn suite_config(c: &Common, baseline: Option<&Baseline>) -> Result<SuiteConfig> {
    let backends = match (&c.backends, baseline) {
        (Some(list), _) => BackendKind::parse_list(list)?,
        // The gate compares what the baseline holds: every one of its backends must run.
        (None, Some(b)) => b.backends.clone(),
        (None, None) => BackendKind::built(),
    };
    for k in &backends {
        anyhow::ensure!(
            k.is_built(),
            "the baseline needs backend '{k}', which is not in this build: {}",
            k.build_hint()
        );
    }
    anyhow::ensure!(c.dtype.is_none(), "--dtype: the suite always runs both f32 and f64");
    Ok(SuiteConfig { backends, options: backend_options(MaxPoolMode::Exact) })
}

/// Most epochs of `mnist --epochs`.
const MAX_EPOCHS: usize = 1000;

fn mnist_data() -> Result<Dataset> {
    Ok(data::load(DatasetKind::Mnist, &data::default_dir(DatasetKind::Mnist))?)
}

/// Whether the gate passed.
fn run_check(ctx: &Ctx, args: &CheckArgs) -> Result<Verdict> {
    let c = &args.common;
    anyhow::ensure!(args.fuzz_cases <= 1_000_000, "--fuzz-cases {}: expected 0 to 1000000", args.fuzz_cases);
    let path = baseline_path(&args.baseline);
    let old = match (path.exists(), args.update_baseline) {
        (false, _) => None,
        (true, true) => Baseline::read_unchecked(&path).ok(),
        (true, false) => Some(Baseline::read(&path)?),
    };
    anyhow::ensure!(
        old.is_some() || args.update_baseline,
        "{}: no baseline here. The gate compares with the committed reference/baseline.json: run inside the checkout, \
         set {} to its root, or pass --baseline PATH (a new one from --update-baseline would accept today's numbers, regressions included)",
        path.display(),
        backprop_parity::paths::HOME_VAR
    );
    let cfg = suite_config(c, if args.update_baseline { None } else { old.as_ref() })?;
    let data = mnist_data()?;
    let start = Instant::now();
    let outputs = study::suite::run(&cfg, &data)?;
    let current = study::suite::metrics(&cfg, &outputs)?;
    say!(
        "check: {} metrics from {} in {:.0} s",
        current.len(),
        cfg.backends.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(", "),
        start.elapsed().as_secs_f64()
    );
    if args.update_baseline {
        let new = Baseline::new(cfg.backends.clone(), current)?;
        for line in gate::describe_update(old.as_ref(), &new) {
            say!("baseline: {line}");
        }
        report::write_atomic(&path, report::to_json(&new)?).map_err(|e| RunFailed(e.to_string()))?;
        say!("wrote {}", path.display());
        return Ok(Verdict::Agree);
    }
    let baseline = old.expect("checked above");
    let mut result = gate::evaluate(&baseline, &current, &cfg.backends);
    if args.fuzz_cases == 0 {
        say!("check: the fuzz campaign is skipped (--fuzz-cases 0)");
        return report_gate(ctx, result, &path, &cfg.backends);
    }
    // The fixed-seed fuzz campaign: a finding in neither reviewed list fails the gate.
    let fuzz_opts = backprop_parity::study::fuzz::FuzzOptions {
        cases: args.fuzz_cases,
        seed: gate::GATE_FUZZ_SEED,
        max_nodes: 4,
        ops: backprop_parity::study::fuzz::gen::OPS.to_vec(),
        dtype: DType::F64,
        backends: cfg.backends.clone(),
        backend_options: BackendOptions::default(),
        shard: (1, 1),
        time_limit: None,
        nonfinite: false,
    };
    let bar = progress_bar(args.fuzz_cases as usize, "check: fuzz");
    let campaign = backprop_parity::study::fuzz::run(&fuzz_opts, |done, _| bar.set_position(done))?;
    bar.finish_and_clear();
    let fuzz = gate::judge_fuzz(&campaign, &gate::known_reference_bugs());
    say!(
        "check: fuzz {} cases in {:.0} s: {} known reference bug(s), {} new finding(s)",
        fuzz.cases,
        fuzz.seconds,
        fuzz.known.len(),
        fuzz.new.len()
    );
    for g in &fuzz.new {
        say!("check: new fuzz finding: {} in {} ({})", g.kind, g.op, g.backend.map_or("-".into(), |b| b.to_string()));
    }
    result = result.with_fuzz(fuzz);
    report_gate(ctx, result, &path, &cfg.backends)
}

/// The gate's verdict on the terminal and in its report set.
fn report_gate(ctx: &Ctx, result: gate::GateReport, path: &std::path::Path, backends: &[BackendKind]) -> Result<Verdict> {
    if result.passed {
        say!("check: pass ({} metrics compared with {})", result.compared, path.display());
    } else {
        say!(
            "check: FAIL, {} regression(s) against {} and {} new fuzz finding(s):\n{}",
            result.regressions.len(),
            path.display(),
            result.fuzz.as_ref().map_or(0, |f| f.new.len()),
            report::gate::regression_table(&result)
        );
    }
    let provenance = Provenance::collect(backends, &[DType::F32, DType::F64]);
    finish(ctx, report::gate::check_outputs(&result, &path.display().to_string(), &provenance)?)?;
    Ok(Verdict::of(result.passed))
}

/// `fuzz`: exit 0 when every generated program agreed, 1 with findings.
fn run_fuzz(ctx: &Ctx, args: &FuzzArgs) -> Result<Verdict> {
    use backprop_parity::study::fuzz::{self, gen::OPS, FuzzOptions};
    let c = &args.common;
    anyhow::ensure!(c.rtol.is_none() && c.atol.is_none(), "--rtol/--atol do not apply to fuzz: it judges as `run` does");
    let cases = args.cases.unwrap_or(if args.time_limit.is_some() { 10_000_000 } else { 1000 });
    anyhow::ensure!((1..=10_000_000).contains(&cases), "--cases {cases}: expected 1 to 10000000");
    if let Some(t) = args.time_limit {
        anyhow::ensure!(t.is_finite() && t > 0.0 && t <= 1e7, "--time-limit {t}: expected seconds, more than 0 and at most 10000000");
    }
    anyhow::ensure!((1..=32).contains(&args.max_nodes), "--max-nodes {}: expected 1 to 32", args.max_nodes);
    let ops: Vec<&'static str> = match &args.ops {
        None => OPS.to_vec(),
        Some(l) => list("--ops", l, |s| OPS.iter().copied().find(|o| *o == s).ok_or_else(|| format!("'{s}' is not an op the generator draws; expected some of {}", names(OPS))))?,
    };
    let backends = c.backends()?;
    anyhow::ensure!(backends.len() >= 2, "--backends: fuzzing compares backends, so it needs at least two (got {})", backends.len());
    let shard = args.shard.unwrap_or(Shard { index: 1, count: 1 });
    let dtype = c.dtype(DType::F64);
    let opts = FuzzOptions {
        cases,
        seed: args.seed,
        max_nodes: args.max_nodes,
        ops,
        dtype,
        backends: backends.clone(),
        backend_options: backend_options(args.candle_maxpool),
        shard: (shard.index as u64, shard.count as u64),
        time_limit: args.time_limit,
        nonfinite: args.nonfinite,
    };
    let bar = progress_bar(0, "fuzz");
    let report = fuzz::run(&opts, |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    say!("fuzz: {} cases, {} agreed, {} disagreed, {} finding(s) in {:.1} s", report.cases, report.agreed, report.disagreed, report.findings.len(), report.seconds);
    for f in &report.findings {
        say!("fuzz finding: {} in {} ({}), shrunk to {} node(s) and {} entries", f.key.kind, f.key.op, f.key.odd_backend.map_or("-".into(), |k| k.to_string()), f.nodes, f.input_entries);
    }
    finish(ctx, report::fuzz::outputs(&report, &backend_options(args.candle_maxpool), &Provenance::collect(&backends, &[dtype]))?)?;
    Ok(Verdict::of(report.findings.is_empty()))
}

/// `ops`: exit 0 when no implementation has a finding or a missing gradient, 1 otherwise.
fn run_ops(ctx: &Ctx, args: &OpsArgs) -> Result<Verdict> {
    use backprop_parity::study::ops::{self, OpsOptions};
    let c = &args.common;
    anyhow::ensure!(c.rtol.is_none() && c.atol.is_none(), "--rtol/--atol do not apply to ops: it judges as `run` does");
    anyhow::ensure!((1..=100_000).contains(&args.cases), "--cases {}: expected 1 to 100000", args.cases);
    let op_names: Vec<&'static str> = match &args.ops {
        None => Op::NAMES.to_vec(),
        Some(l) => list("--ops", l, |s| Op::NAMES.iter().copied().find(|o| *o == s).ok_or_else(|| format!("'{s}' is not an op of the program format; expected some of {}", names(Op::NAMES))))?,
    };
    let backends = c.backends()?;
    let dtype = c.dtype(DType::F64);
    let opts = OpsOptions { ops: op_names, cases: args.cases, seed: args.seed, dtype, backends: backends.clone(), backend_options: backend_options(args.candle_maxpool) };
    let bar = progress_bar(opts.ops.len(), "ops");
    let report = ops::run(&opts, |op, done, _| {
        bar.set_message(op.to_string());
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    let bad: Vec<&ops::ImplRow> = report.rows.iter().filter(|r| r.findings > 0 || r.odd_one_out > 0 || r.missing_or_non_finite > 0).collect();
    say!("ops: {} implementations of {} ops, {} cases each, in {:.1} s; {} with findings or missing gradients", report.rows.len(), opts.ops.len(), report.cases, report.seconds, bad.len());
    for r in &bad {
        say!("ops: {} {} ({}): {}", r.op, r.backend, r.implementation, report::ops::verdict(r).replace("**", ""));
    }
    finish(ctx, report::ops::outputs(&report, &Provenance::collect(&backends, &[dtype]))?)?;
    Ok(Verdict::of(bad.is_empty()))
}

/// `study`: trains (or resumes) this shard's runs into the records, then reports on every
/// run the records hold; `--merge` only reports, from several record folders.
fn run_study(ctx: &Ctx, args: &StudyArgs) -> Result<Verdict> {
    use backprop_parity::study::campaign::{self, summary, RunSettings, StudyOptions};
    let c = &args.common;
    anyhow::ensure!(c.rtol.is_none() && c.atol.is_none(), "--rtol/--atol do not apply to study: it reports accuracies and drift, judged over seeds");
    let dtype = c.dtype(DType::F32);
    let records: Vec<PathBuf> = if args.merge.is_empty() {
        let dir = args.records.clone().unwrap_or_else(|| ctx.out.join("study-records"));
        report::check_dir("--records", &dir)?;
        let opts = study_options(args)?;
        let keys = campaign::plan(&opts);
        anyhow::ensure!(!keys.is_empty(), "--shard {}/{}: holds no run of this plan ({} runs in all)", opts.shard.index, opts.shard.count, campaign::plan(&StudyOptions { shard: Shard { index: 1, count: 1 }, ..opts.clone() }).len());
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        set_threads(checked_threads(args.threads, cores)?);
        let mut datasets = BTreeMap::new();
        for &d in &opts.datasets {
            let mut data = data::load(d, &data::default_dir(d))?;
            let (train, test) = (limit_of("--train-limit", args.budget.train_limit, data.train.n)?, limit_of("--test-limit", args.budget.test_limit, data.test.n)?);
            data.train.limit(train);
            data.test.limit(test);
            datasets.insert(d, data);
        }
        let bar = progress_bar(keys.len() * opts.epochs, "study");
        for key in &keys {
            let data = &datasets[&key.dataset];
            let spec: ModelSpec = key.model.parse()?;
            let settings = RunSettings {
                key: key.clone(),
                epochs: opts.epochs,
                train_images: data.train.n,
                test_images: data.test.n,
                dtype,
                lr: study::mnist::LR,
                momentum: study::mnist::MOMENTUM,
                train_batch: study::mnist::TRAIN_BATCH,
                test_batch: study::mnist::TEST_BATCH,
                backend_options: opts.backend_options.clone(),
            };
            bar.set_message(key.label());
            let before = bar.position();
            let done = campaign::run_one(data, &spec, &settings, &dir, |_| bar.inc(1))?;
            bar.set_position(before + opts.epochs as u64);
            let acc: Vec<String> = done.last.results.iter().map(|(k, r)| format!("{k} {:.2}%", r.test_accuracy)).collect();
            let resumed = if done.resumed_from > 0 { format!(", resumed after epoch {}", done.resumed_from) } else { String::new() };
            bar.suspend(|| say!("study {}: epoch {}: {} ({:.0} s{resumed})", key.label(), done.last.epoch, acc.join(", "), done.seconds));
        }
        bar.finish_and_clear();
        vec![dir]
    } else {
        anyhow::ensure!(args.records.is_none() && args.shard.is_none(), "--merge: reports from the folders it names; --records and --shard do not apply");
        args.merge.clone()
    };
    let runs = campaign::collect(&records)?;
    anyhow::ensure!(!runs.is_empty(), "{}: holds no study runs", records.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "));
    let summary = summary::summarise(&runs);
    let mut backends: Vec<BackendKind> = runs.iter().flat_map(|r| r.settings.key.backends.iter().copied()).collect();
    backends.sort();
    backends.dedup();
    finish(ctx, report::study::outputs(&summary, &Provenance::collect(&backends, &[dtype]))?)?;
    Ok(Verdict::Agree)
}

fn study_options(args: &StudyArgs) -> Result<backprop_parity::study::campaign::StudyOptions> {
    let datasets: Vec<DatasetKind> = list("--datasets", &args.datasets, |s| s.parse::<DatasetKind>().map_err(|e| e.to_string()))?;
    let seeds: Vec<u64> = list("--seeds", &args.seeds, |s| s.parse::<u64>().map_err(|_| format!("'{s}' is not a seed (a non-negative integer)")))?;
    let lockstep_seeds = match &args.lockstep_seeds {
        None => seeds[..1].to_vec(),
        Some(l) => list("--lockstep-seeds", l, |s| s.parse::<u64>().map_err(|_| format!("'{s}' is not a seed")))?,
    };
    if let Some(s) = lockstep_seeds.iter().find(|s| !seeds.contains(s)) {
        anyhow::bail!("--lockstep-seeds: seed {s} is not among --seeds");
    }
    anyhow::ensure!((1..=MAX_EPOCHS).contains(&args.budget.epochs), "--epochs {}: expected 1 to {MAX_EPOCHS}", args.budget.epochs);
    let mut backends = args.common.backends()?;
    if args.common.backends.is_none() {
        // candle's CNN epochs take minutes here: name it to include it.
        backends.retain(|&k| k != BackendKind::CANDLE);
    }
    anyhow::ensure!(backends.first() == Some(&BackendKind::ENGINE), "--backends: the study's runs are the engine's, with others in lockstep; list engine first");
    Ok(backprop_parity::study::campaign::StudyOptions {
        datasets,
        models: parse_models(&ModelArgs { models: args.models.clone(), seed: 0, params: None, dataset: DatasetKind::Mnist, data_dir: None, candle_maxpool: args.candle_maxpool })?,
        seeds,
        lockstep_seeds,
        backends,
        backend_options: backend_options(args.candle_maxpool),
        epochs: args.budget.epochs,
        train_limit: args.budget.train_limit,
        test_limit: args.budget.test_limit,
        shard: args.shard.unwrap_or(Shard { index: 1, count: 1 }),
    })
}

/// A comma-separated list, each item parsed, none twice, at least one.
fn list<T: PartialEq + std::fmt::Debug>(flag: &str, text: &str, parse: impl Fn(&str) -> std::result::Result<T, String>) -> Result<Vec<T>> {
    let mut out = Vec::new();
    for item in text.split(',').map(str::trim) {
        let v = parse(item).map_err(|e| anyhow::anyhow!("{flag} {text}: {e}"))?;
        anyhow::ensure!(!out.contains(&v), "{flag} {text}: '{item}' appears twice");
        out.push(v);
    }
    Ok(out)
}

/// `--train-limit`/`--test-limit`: 1 to what the split holds (refused, never clamped).
fn limit_of(flag: &str, given: Option<usize>, available: usize) -> Result<usize> {
    match given {
        None => Ok(available),
        Some(n) if (1..=available).contains(&n) => Ok(n),
        Some(n) => anyhow::bail!("{flag} {n}: expected 1 to {available}, the images this split holds"),
    }
}

/// Agreement here means every fault was caught and localised.
fn run_mutants(ctx: &Ctx, args: &MutantsArgs) -> Result<Verdict> {
    let c = &args.common;
    let baseline = Baseline::read(&baseline_path(&args.baseline))?;
    let cfg = suite_config(c, Some(&baseline))?;
    let list: Vec<Fault> = match &args.faults {
        None => Fault::ALL.to_vec(),
        Some(l) => {
            l.split(',').map(|s| s.trim().parse::<Fault>().map_err(anyhow::Error::msg)).collect::<Result<_>>()?
        }
    };
    let data = mnist_data()?;
    let bar = progress_bar(list.len(), "mutants");
    let result = study::mutants::run(&cfg, &data, &baseline, &list, |f| step(&bar, f.name()))?;
    bar.finish_and_clear();
    say!(
        "mutants: caught {} of {}, localised {} of {}",
        result.caught,
        result.faults.len(),
        result.localised,
        result.faults.len()
    );
    say!("{}", report::gate::mutants_table(&result));
    finish(ctx, report::gate::mutants_outputs(&result, &Provenance::collect(&cfg.backends, &[DType::F32, DType::F64]))?)?;
    Ok(Verdict::of(result.caught == result.faults.len() && result.localised == result.faults.len()))
}

/// `--baseline`, else the committed one of the checkout this runs in (see `paths`).
fn baseline_path(given: &Option<PathBuf>) -> PathBuf {
    given.clone().unwrap_or_else(|| backprop_parity::paths::find_or_relative("reference/baseline.json"))
}

/// Sets every backend's thread count (before any of them starts its threads).
fn set_threads(threads: usize) {
    // candle sizes its thread pool from this variable when it first runs.
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    backprop_parity::engine::parallel::set_threads(threads);
    #[cfg(feature = "torch")]
    tch::set_num_threads(threads as i32);
}

/// `--threads`: 1 to the number of cores (more only makes every backend switch threads).
fn checked_threads(given: Option<usize>, cores: usize) -> Result<usize> {
    let threads = given.unwrap_or(cores);
    anyhow::ensure!(threads > 0, "--threads 0: at least one thread is needed");
    anyhow::ensure!(
        threads <= cores,
        "--threads {threads}: at most {cores}, the cores of this machine (more threads than cores only adds switching and slows every backend down)"
    );
    Ok(threads)
}

fn run_memory_child(args: &MemoryChildArgs) -> Result<()> {
    anyhow::ensure!(args.threads > 0, "--threads 0: at least one thread is needed");
    set_threads(args.threads);
    let spec: ModelSpec = args.model.parse()?;
    let kind: BackendKind = args.backend.parse().map_err(|e: String| anyhow::anyhow!("--backend: {e}"))?;
    let data = mnist_data()?;
    let m = study::memory::epoch_here(&data, &spec, kind, &backend_options(MaxPoolMode::Exact), args.images)?;
    println!("{}", serde_json::to_string(&m)?);
    Ok(())
}

fn run_bench(ctx: &Ctx, args: &BenchArgs) -> Result<()> {
    let c = &args.common;
    anyhow::ensure!(args.steps > 0, "--steps 0: at least one timed step is needed");
    anyhow::ensure!(args.steps <= 100_000, "--steps {}: at most 100000 (the median settles long before)", args.steps);
    anyhow::ensure!(args.warmup <= 10_000, "--warmup {}: at most 10000", args.warmup);
    anyhow::ensure!(args.block >= 1, "--block 0: at least one step per block is needed");
    anyhow::ensure!(c.rtol.is_none() && c.atol.is_none() && c.dtype.is_none(), "--rtol/--atol/--dtype do not apply to bench: it times f32 training steps");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = checked_threads(args.threads, cores)?;
    set_threads(threads);
    let models = parse_models(&ModelArgs {
        models: args.models.clone(),
        seed: 0,
        params: None,
        dataset: DatasetKind::Mnist,
        data_dir: None,
        candle_maxpool: MaxPoolMode::Exact,
    })?;
    anyhow::ensure!(args.fuzz_cases <= 1_000_000, "--fuzz-cases {}: expected 0 to 1000000", args.fuzz_cases);
    let opts = study::bench::BenchOptions {
        models,
        backends: c.backends()?,
        options: backend_options(MaxPoolMode::Exact),
        warmup: args.warmup,
        steps: args.steps,
        block: args.block,
        memory_images: args.memory_images,
        exe: Some(std::env::current_exe().context("locating parity-report for the memory child processes")?),
        threads,
        fuzz_cases: args.fuzz_cases,
        ops: match args.ops.as_deref() {
            None => Op::NAMES.to_vec(),
            Some("none") => vec![],
            Some(l) => list("--ops", l, |s| Op::NAMES.iter().copied().find(|o| *o == s).ok_or_else(|| format!("'{s}' is not an op of the program format; expected some of {}", names(Op::NAMES))))?,
        },
    };
    let data = mnist_data()?;
    // One stage per model's timing, per model and backend's memory epoch, then the matrix
    // products and the machine's peak.
    let memory_stages = if opts.memory_images > 0 { opts.models.len() * opts.backends.len() } else { 0 };
    let bar = progress_bar(opts.models.len() + memory_stages + 3, "bench");
    let result = study::bench::run(&data, &opts, |m| step(&bar, m))?;
    bar.finish_and_clear();
    for (name, m) in &result.models {
        let steps: Vec<String> = m.step_ms.iter().map(|(k, v)| format!("{k} {v:.2} ms")).collect();
        say!("bench {name:>17}: {}", steps.join(", "));
    }
    let machine = format!("{cores} cores, {}", std::env::consts::ARCH);
    finish(ctx, report::bench::outputs(&result, &machine, &Provenance::collect(&opts.backends, &[DType::F32]))?)
}

/// `run FILE`: exit 0 when every backend agrees, 1 when they disagree, 3 when a backend
/// refused or failed (its message is in the report), 2 (from the caller) on bad input.
fn run_program(ctx: &Ctx, args: &RunArgs) -> Result<Verdict> {
    let c = &args.common;
    anyhow::ensure!(
        c.rtol.is_none() && c.atol.is_none(),
        "--rtol/--atol do not apply to run: it judges every value by max|a-b| <= 1e-10·max|b| (f64) or 1e-3·max|b| (f32)"
    );
    let backends = c.backends()?;
    anyhow::ensure!(backends.len() >= 2, "--backends: run compares backends, so it needs at least two (got {})", backends.len());
    let path = &args.file;
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let program = Program::from_json(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    check_program(&program).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let file_inputs = match &args.inputs {
        Some(p) => Some((safetensors_io::read(p)?, format!("--inputs {}", p.display()))),
        None => None,
    };
    let inputs = resolve_inputs(&program, file_inputs.as_ref().map(|(s, o)| (s, o.as_str()))).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let dtype = c.dtype(DType::F64);
    if let Some(dir) = &args.save_grads {
        report::check_dir("--save-grads", dir)?;
    }
    let backend_options = backend_options(args.candle_maxpool);
    let implementation = match &args.implementation {
        None => None,
        Some(spec) => Some(parse_implementation(spec, &backends, &backend_options)?),
    };
    let opts = RunOptions { program, origin: path.display().to_string(), inputs, dtype, backends: backends.clone(), backend_options, implementation };
    let result = study::run::run(&opts)?;
    if let Some(dir) = &args.save_grads {
        std::fs::create_dir_all(dir).map_err(|e| RunFailed(format!("--save-grads {}: {e}", dir.display())))?;
        let stem = path.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "program".into());
        for (kind, r) in result.backends.iter().filter(|(_, r)| r.ok) {
            let set = ParamSet { tensors: r.grads.iter().map(|(n, t)| (n.clone(), t.clone())).collect() };
            safetensors_io::write(&dir.join(format!("{stem}-{kind}.safetensors")), &set, dtype).map_err(|e| RunFailed(format!("--save-grads: {e}")))?;
        }
    }
    say!("run {}: {}", path.display(), report::run::summary(&result));
    finish(ctx, report::run::outputs(&result, &Provenance::collect(&backends, &[dtype]))?)?;
    Ok(if result.backend_failed { Verdict::BackendFailed } else { Verdict::of(result.agree) })
}

/// `--implementation BACKEND:OP:NAME`: one of the backend's other implementations.
fn parse_implementation(spec: &str, backends: &[BackendKind], options: &BackendOptions) -> Result<(BackendKind, backprop_parity::backends::Implementation)> {
    let parts: Vec<&str> = spec.split(':').collect();
    anyhow::ensure!(parts.len() == 3, "--implementation {spec}: expected BACKEND:OP:NAME, e.g. candle:softmax:softmax_last_dim");
    let kind: BackendKind = parts[0].parse().map_err(|e: String| anyhow::anyhow!("--implementation {spec}: {e}"))?;
    anyhow::ensure!(backends.contains(&kind), "--implementation {spec}: {kind} is not among --backends");
    let known = study::lockstep::backend(kind, options)?.implementations();
    let which = known.iter().find(|i| i.op == parts[1] && i.name == parts[2]).copied().ok_or_else(|| {
        let list: Vec<String> = known.iter().map(|i| format!("{kind}:{}:{}", i.op, i.name)).collect();
        anyhow::anyhow!("--implementation {spec}: {kind} has no such implementation; expected one of {}", if list.is_empty() { "none".into() } else { list.join(", ") })
    })?;
    Ok((kind, which))
}

/// `program MODEL`: the model's program on stdout, and with --write-inputs the values
/// `grads` would start from.
fn print_program(args: &ProgramArgs) -> Result<()> {
    if args.model == "abc" {
        let mut p = backprop_parity::models::abc::program(3);
        for d in &mut p.inputs {
            d.fill = Some(1.0);
        }
        p.description = Some("the seed's A/B/C problem with its starting values (all ones, K = 3)".into());
        return print_stdout(&(p.to_json() + "\n"));
    }
    let spec: ModelSpec = args.model.parse().map_err(|e| anyhow::anyhow!("{e}").context("program MODEL"))?;
    anyhow::ensure!(args.batch >= 2, "--batch {}: expected at least 2 (batch norm trains on more than one value per channel)", args.batch);
    let program = spec.program(args.batch);
    if let Some(path) = &args.write_inputs {
        let m = &args.model_args;
        let params = match load_params(m)? {
            (Some(p), origin) => p.ordered(&spec).with_context(|| format!("--params {}", origin.unwrap_or_default()))?,
            (None, _) => ParamSet::init(&spec, m.seed),
        };
        let data = load_data(m)?;
        anyhow::ensure!(args.batch <= data.train.n, "--batch {}: expected at most {}", args.batch, data.train.n);
        let batch = study::lockstep::make_batch(&data.train, &(0..args.batch).collect::<Vec<_>>());
        let mut tensors = vec![
            ("x".to_string(), batch.images),
            ("labels".to_string(), backprop_parity::host::HostTensor { shape: vec![args.batch], data: batch.labels.iter().map(|&l| l as f64).collect() }),
        ];
        tensors.extend(params.tensors);
        for (site, mask) in study::lockstep::step_masks(&spec, args.batch, m.seed, 0).into_iter().enumerate() {
            tensors.push((backprop_parity::models::mnist::mask_name(site), mask));
        }
        // f64 holds the f32 pixels and the f64 parameters exactly; `run` rounds to its dtype.
        safetensors_io::write(path, &ParamSet { tensors }, DType::F64).with_context(|| format!("--write-inputs {}", path.display()))?;
        say!("wrote {}", path.display());
    }
    print_stdout(&(program.to_json() + "\n"))
}

fn write_schemas(dir: &Path) -> Result<()> {
    report::check_dir("schemas DIR", dir)?;
    for (kind, schema) in report::schema::all() {
        let path = dir.join(format!("{kind}.schema.json"));
        report::write_atomic(&path, report::schema::to_text(&schema))?;
        say!("wrote {}", path.display());
    }
    Ok(())
}

/// Replaces the report set in `--out`, then emits its JSON where `--json` asked. A write
/// that fails here fails the run (exit 3): the computation is done, its record is not.
fn finish(ctx: &Ctx, set: ReportSet) -> Result<()> {
    let written = report::write_set(&ctx.out, &set).map_err(|e| RunFailed(format!("writing the {} report: {e}", set.kind)))?;
    match &ctx.json {
        None => {}
        Some(JsonTarget::Stdout) => print_stdout(set.json()).map_err(|e| RunFailed(format!("--json -: {e:#}")))?,
        Some(JsonTarget::File(path)) => report::write_atomic(path, set.json()).map_err(|e| RunFailed(format!("--json: {e}")))?,
    }
    let dir = written.first().and_then(|p| p.parent()).unwrap_or(&ctx.out);
    let names: Vec<String> = written.iter().filter_map(|p| p.file_name()).map(|n| n.to_string_lossy().to_string()).collect();
    say!("wrote {}/: {}", dir.display(), names.join(", "));
    Ok(())
}

/// Writes to stdout and flushes, so that a closed or full stdout is an error, not a
/// silent loss (Rust ignores SIGPIPE; `println!` would panic instead).
fn print_stdout(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).and_then(|()| out.flush()).context("writing to stdout failed")
}

/// The bar of a run made of `len` stages, hidden under `--quiet`.
fn progress_bar(len: usize, name: &str) -> ProgressBar {
    let style = ProgressStyle::with_template(&format!("{name} [{{bar:30}}] {{pos}}/{{len}} {{msg}} {{elapsed}} ETA {{eta}}"))
        .expect("valid template")
        .progress_chars("=> ");
    ProgressBar::with_draw_target(Some(len as u64), draw_target()).with_style(style)
}

/// A stage starts: the bar counts the stages done before it and names this one.
fn step(bar: &ProgressBar, stage: &str) {
    if bar.message().is_empty() && bar.position() == 0 {
        bar.set_message(stage.to_string());
        return;
    }
    bar.inc(1);
    bar.set_message(stage.to_string());
}

fn draw_target() -> ProgressDrawTarget {
    if QUIET.load(Ordering::Relaxed) {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    }
}
