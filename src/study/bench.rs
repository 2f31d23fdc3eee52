//! Speed, measured side by side: per model and backend the median time of a training
//! step (forward, backward, optimiser update) at batch 25 and of an evaluation batch of
//! 100, with the backends interleaved step by step (A, B, C, A, B, C, ...) so that drift
//! in the machine's speed hits all of them alike; and matrix-product throughput on the
//! shapes these models use, next to the machine's measured FMA peak.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;

use super::lockstep::{backend, instantiate, make_batch, step_masks, BackendOptions};
use crate::backends::{median, BackendKind, ModelRunner, SWITCH_WARMUP};
use crate::data::Dataset;
use crate::dtype::DType;
use crate::error::Result;
use crate::models::mnist::{ModelSpec, ParamSet};

pub struct BenchOptions {
    pub models: Vec<ModelSpec>,
    pub backends: Vec<BackendKind>,
    pub options: BackendOptions,
    pub warmup: usize,
    pub steps: usize,
    /// Consecutive steps of one backend before the next one runs.
    pub block: usize,
    /// Training images of the epoch whose peak memory is measured (0: not measured),
    /// and the program that runs it in a child process (`parity-report` itself).
    pub memory_images: usize,
    pub exe: Option<std::path::PathBuf>,
    pub threads: usize,
    /// Generated programs of the fuzz-throughput campaign (0: none).
    pub fuzz_cases: u64,
    /// Ops to time one call of (forward and backward of their first case).
    pub ops: Vec<&'static str>,
}

#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct ModelBench {
    /// Median milliseconds of one training step at batch 25.
    pub step_ms: BTreeMap<BackendKind, f64>,
    /// Median milliseconds of one evaluation batch of 100.
    pub eval_ms: BTreeMap<BackendKind, f64>,
    /// Step-time ratios keyed by pair (`engine-torch`, `engine-candle`): the engine's time over
    /// the other's (below 1: the engine is faster).
    pub ratios: BTreeMap<String, f64>,
    /// One epoch in a child process per backend (empty when not measured): resident
    /// size before the first step, peak over the epoch, wall time of the epoch.
    pub baseline_rss_mb: BTreeMap<BackendKind, f64>,
    pub peak_rss_mb: BTreeMap<BackendKind, f64>,
    pub epoch_s: BTreeMap<BackendKind, f64>,
}

#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct GemmBench {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub what: &'static str,
    pub gflops: BTreeMap<BackendKind, f64>,
}

#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct BenchReport {
    pub threads: usize,
    pub steps: usize,
    /// Training images of the epochs whose memory was measured (0: none).
    pub memory_images: usize,
    pub models: BTreeMap<String, ModelBench>,
    pub gemm: Vec<GemmBench>,
    /// The machine's f32 FMA peak, next to which the `gemm` rates are read.
    pub peak: super::peak::Peak,
    /// Differential fuzzing throughput: a fixed-seed campaign on the bench's backends.
    pub fuzz: Option<FuzzThroughput>,
    /// One row per op of the program format (empty when not measured).
    pub ops: Vec<OpBench>,
}

/// One op's time per call on each backend: forward and backward of the op's first
/// generated case (`parity-report ops`'s case 0, seed 0) in f32, in one executor.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct OpBench {
    pub op: String,
    /// The case's input shapes and attributes.
    pub case: String,
    /// Median microseconds per call.
    pub micros: BTreeMap<BackendKind, f64>,
    /// Backends that refused or failed on the case, with the first line of the message.
    pub refused: BTreeMap<BackendKind, String>,
}

/// Generated programs per second through the whole oracle, and where the time goes.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct FuzzThroughput {
    pub cases: u64,
    pub seconds: f64,
    pub cases_per_second: f64,
    pub backend_seconds: BTreeMap<BackendKind, f64>,
    /// Node checks and finite differences.
    pub oracle_seconds: f64,
    pub shrink_seconds: f64,
}

/// Cases of the bench's fuzz campaign (seed 0, f64).
pub const FUZZ_CASES: u64 = 1000;

/// Rounds of the interleaved matrix-product timing.
const GEMM_ROUNDS: usize = 8;

/// The matrix products of the nine models (f32): a linear layer's forward and its
/// weight gradient at batch 25, and the CNN's convolutions as im2col products.
pub const GEMM_SHAPES: [(usize, usize, usize, &str); 5] = [
    (25, 784, 120, "MLP fc1 forward"),
    (120, 25, 784, "MLP fc1 weight gradient"),
    (16, 25, 784, "CNN conv1 per image (16×25 · 25×784)"),
    (32, 400, 196, "CNN conv2 per image (32×400 · 400×196)"),
    (25, 1568, 120, "CNN fc1 forward"),
];

/// One timed training step (forward, backward, update) on the batch of `step`; seconds.
fn train_step(runner: &mut dyn ModelRunner, data: &Dataset, spec: &ModelSpec, step: usize) -> Result<f64> {
    let idx: Vec<usize> = (0..25).map(|i| (step * 25 + i) % data.train.n).collect();
    let batch = make_batch(&data.train, &idx);
    let masks = step_masks(spec, 25, 0, step);
    let t = Instant::now();
    runner.forward_backward(&batch, &masks, false)?;
    runner.sgd_step(super::mnist::LR, super::mnist::MOMENTUM)?;
    Ok(t.elapsed().as_secs_f64())
}

pub fn run(data: &Dataset, opts: &BenchOptions, mut progress: impl FnMut(&str)) -> Result<BenchReport> {
    let mut models = BTreeMap::new();
    let eval = make_batch(&data.test, &(0..100).collect::<Vec<_>>());
    for spec in &opts.models {
        progress(&spec.name);
        let params = ParamSet::init(spec, 0);
        let mut runners: Vec<(BackendKind, Box<dyn ModelRunner>)> = opts
            .backends
            .iter()
            .map(|&k| Ok((k, instantiate(k, &opts.options, spec, &params, DType::F32)?)))
            .collect::<Result<_>>()?;
        let mut step_samples: BTreeMap<BackendKind, Vec<f64>> = BTreeMap::new();
        let mut eval_samples: BTreeMap<BackendKind, Vec<f64>> = BTreeMap::new();
        // Warm-up: every backend's first steps (allocator, thread pools, caches).
        let mut step = 0;
        for _ in 0..opts.warmup {
            for (_, runner) in runners.iter_mut() {
                train_step(runner.as_mut(), data, spec, step)?;
            }
            step += 1;
        }
        // Rounds of one block per backend (A×b, B×b, C×b, A×b, ...): drift hits all
        // alike, and within a block each backend runs back to back as in training.
        // Before its block, a backend runs untimed steps for `SWITCH_WARMUP` (on the
        // same batches): they pay for the switch (the previous backend's worker threads
        // still spinning, caches holding its data).
        let block = opts.block.max(1);
        let rounds = opts.steps.div_ceil(block);
        for _ in 0..rounds {
            for (kind, runner) in runners.iter_mut() {
                let switched = Instant::now();
                let mut i = 0;
                while i == 0 || switched.elapsed() < SWITCH_WARMUP {
                    train_step(runner.as_mut(), data, spec, step + i % block)?;
                    i += 1;
                }
                for i in 0..block {
                    let dt = train_step(runner.as_mut(), data, spec, step + i)?;
                    step_samples.entry(*kind).or_default().push(dt * 1e3);
                }
                let t = Instant::now();
                runner.evaluate(&eval)?;
                eval_samples.entry(*kind).or_default().push(t.elapsed().as_secs_f64() * 1e3);
            }
            step += block;
        }
        let step_ms: BTreeMap<BackendKind, f64> = step_samples.into_iter().map(|(k, v)| (k, median(v))).collect();
        let eval_ms = eval_samples.into_iter().map(|(k, v)| (k, median(v))).collect();
        let mut ratios = BTreeMap::new();
        for &other in step_ms.keys().filter(|&&k| k != BackendKind::ENGINE) {
            if let (Some(e), Some(o)) = (step_ms.get(&BackendKind::ENGINE), step_ms.get(&other)) {
                ratios.insert(super::pair_name(BackendKind::ENGINE, other), e / o);
            }
        }
        let (mut baseline_rss_mb, mut peak_rss_mb, mut epoch_s) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
        if let (Some(exe), true) = (&opts.exe, opts.memory_images > 0) {
            for &kind in &opts.backends {
                progress(&format!("{} epoch memory on {kind}", spec.name));
                let m = super::memory::epoch_in_child(exe, spec, kind, opts.memory_images, opts.threads)?;
                baseline_rss_mb.insert(kind, m.baseline_mb);
                peak_rss_mb.insert(kind, m.peak_mb);
                epoch_s.insert(kind, m.seconds);
            }
        }
        models.insert(spec.name.clone(), ModelBench { step_ms, eval_ms, ratios, baseline_rss_mb, peak_rss_mb, epoch_s });
    }
    progress("matrix products");
    // Interleaved like the steps: rounds of 25 timed products per backend (each after the
    // 30 ms switch warm-up), the median of the round medians per backend, so that a slow
    // stretch of the machine does not land on one backend's products only.
    let backends: Vec<(BackendKind, Box<dyn crate::backends::Backend>)> =
        opts.backends.iter().map(|&kind| Ok((kind, backend(kind, &opts.options)?))).collect::<Result<_>>()?;
    let mut gemm = Vec::new();
    for (m, k, n, what) in GEMM_SHAPES {
        let mut rounds: BTreeMap<BackendKind, Vec<f64>> = BTreeMap::new();
        for _ in 0..GEMM_ROUNDS {
            // A backend without raw-kernel hooks (a user's engine) has no row here.
            for (kind, b) in &backends {
                if let Some(hooks) = b.bench_hooks() {
                    rounds.entry(*kind).or_default().push(hooks.matmul_seconds(m, k, n, 25)?);
                }
            }
        }
        let gflops = rounds.into_iter().map(|(kind, r)| (kind, 2.0 * (m * k * n) as f64 / median(r) / 1e9)).collect();
        gemm.push(GemmBench { m, k, n, what, gflops });
    }
    progress("fuzz throughput");
    let campaign = (opts.fuzz_cases > 0).then(|| super::fuzz::run(
        &super::fuzz::FuzzOptions {
            cases: opts.fuzz_cases,
            seed: 0,
            max_nodes: 4,
            ops: super::fuzz::gen::OPS.to_vec(),
            dtype: DType::F64,
            backends: opts.backends.clone(),
            backend_options: opts.options.clone(),
            shard: (1, 1),
            time_limit: None,
            nonfinite: false,
        },
        |_, _| {},
    )).transpose()?;
    let fuzz = campaign.map(|campaign| FuzzThroughput {
        cases: campaign.cases,
        seconds: campaign.seconds,
        cases_per_second: campaign.cases as f64 / campaign.seconds.max(1e-9),
        backend_seconds: campaign.backend_seconds,
        oracle_seconds: campaign.oracle_seconds,
        shrink_seconds: campaign.shrink_seconds,
    });
    progress("ops");
    let ops = opts.ops.iter().map(|name| op_bench(name, &backends)).collect::<Result<Vec<_>>>()?;
    progress("machine peak");
    let peak = super::peak::measure(opts.threads);
    Ok(BenchReport {
        threads: opts.threads,
        steps: opts.steps,
        memory_images: opts.memory_images,
        models,
        gemm,
        peak,
        fuzz,
        ops,
    })
}

/// Rounds of the interleaved per-op timing, and calls timed per round.
pub const OP_ROUNDS: usize = 5;
pub const OP_CALLS: usize = 20;

/// One op's first generated case timed on every backend: in rounds (every backend's
/// calls after the others', as the matrix products), the median of the round medians.
fn op_bench(name: &str, backends: &[(BackendKind, Box<dyn crate::backends::Backend>)]) -> Result<OpBench> {
    use crate::backends::Request;
    let (op, given) = super::ops::cases::cases(name, 1, 0).remove(0);
    let case = format!(
        "{} on {}",
        serde_json::to_string(&op).unwrap_or_default(),
        given.iter().map(|t| t.as_ref().map_or("-".into(), |t| format!("{:?}", t.shape))).collect::<Vec<_>>().join(", ")
    );
    let (program, inputs) = super::ops::program_of(&op, &given)?;
    let inputs: Vec<_> = inputs.iter().map(|t| t.rounded(DType::F32)).collect();
    let request = Request { backward: true, ..Request::default() };
    let mut refused = BTreeMap::new();
    let mut executors = Vec::new();
    for (kind, b) in backends {
        let first_line = |e: crate::error::Error| e.to_string().lines().next().unwrap_or_default().to_string();
        match b.executor(&program, &inputs, DType::F32) {
            Ok(mut exec) => match (0..3).try_for_each(|_| exec.run(request).map(drop)) {
                Ok(()) => executors.push((*kind, exec)),
                Err(e) => {
                    refused.insert(*kind, first_line(e));
                }
            },
            Err(e) => {
                refused.insert(*kind, first_line(e));
            }
        }
    }
    let mut rounds: BTreeMap<BackendKind, Vec<f64>> = BTreeMap::new();
    for _ in 0..OP_ROUNDS {
        for (kind, exec) in executors.iter_mut() {
            let mut samples = Vec::with_capacity(OP_CALLS);
            for _ in 0..OP_CALLS {
                let t = Instant::now();
                exec.run(request)?;
                samples.push(t.elapsed().as_secs_f64() * 1e6);
            }
            rounds.entry(*kind).or_default().push(median(samples));
        }
    }
    let micros = rounds.into_iter().map(|(k, r)| (k, median(r))).collect();
    Ok(OpBench { op: name.to_string(), case, micros, refused })
}
