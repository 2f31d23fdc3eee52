//! Training the nine models in lockstep: every backend starts from the same parameters,
//! sees the same batches in the same order and applies the same dropout masks. Per step
//! the loss of each backend (the trajectory); per epoch test accuracy and loss; and a
//! re-synchronised phase where every backend is reset to the reference's parameters
//! before each step, so each step's error is measured without compounding.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;

use super::grads::{compare_model, grad_tolerance};
use super::lockstep::{instantiate, make_batch, step_masks, BackendOptions};
use super::{backend_pairs, pair_name};
use crate::backends::{BackendKind, ModelRunner};
use crate::data::{batches, epoch_order, file_order, Dataset, DatasetKind};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::models::mnist::{ModelSpec, ParamSet};
use crate::parity::{compare_traces, Tolerance, TraceDiff};

/// The seed's optimiser and batch sizes.
pub const LR: f64 = 0.001;
pub const MOMENTUM: f64 = 0.9;
pub const TRAIN_BATCH: usize = 25;
pub const TEST_BATCH: usize = 100;

#[derive(Clone, Debug)]
pub struct MnistOptions {
    pub models: Vec<ModelSpec>,
    pub dtype: DType,
    pub backends: Vec<BackendKind>,
    pub backend_options: BackendOptions,
    pub dataset: DatasetKind,
    pub epochs: usize,
    pub train_limit: Option<usize>,
    pub test_limit: Option<usize>,
    pub seed: u64,
    pub params: Option<ParamSet>,
    pub params_origin: Option<String>,
    /// Steps of the re-synchronised phase (0 skips it).
    pub resync_steps: usize,
}

#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct MnistSettings {
    pub dataset: DatasetKind,
    pub dtype: DType,
    pub backends: Vec<BackendKind>,
    pub backend_options: BackendOptions,
    pub epochs: usize,
    pub train_images: usize,
    pub test_images: usize,
    pub seed: u64,
    pub params: String,
    pub lr: f64,
    pub momentum: f64,
    pub train_batch: usize,
    pub test_batch: usize,
    pub resync_steps: usize,
    pub tolerance: Tolerance,
}

#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct EpochResult {
    pub epoch: usize,
    /// Percent of test images classified correctly.
    pub test_accuracy: f64,
    /// The seed's definition: the sum of per-batch mean losses divided by the number of
    /// test images (100 times smaller than the mean for batches of 100).
    pub test_loss_seed: f64,
    /// The plain mean cross-entropy over the test images.
    pub test_loss_mean: f64,
    /// Mean of the training-batch losses of the epoch.
    pub train_loss_mean: f64,
}

#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct BackendTraining {
    /// Loss of every training step, before its update.
    pub step_loss: Vec<f64>,
    pub epochs: Vec<EpochResult>,
    /// Wall time of this backend's steps and evaluations.
    pub seconds: f64,
}

#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct ResyncResult {
    pub steps: usize,
    /// Per backend pair: per step, the relative loss difference, from identical parameters.
    pub loss_rel: BTreeMap<String, Vec<f64>>,
    /// Per backend pair: per step, the worst gradient difference relative to scale.
    pub grad_scaled: BTreeMap<String, Vec<f64>>,
    /// Per backend pair: the first step whose gradients break the scaled tolerance.
    pub first_grad_disagreement: BTreeMap<String, Option<usize>>,
}

#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct ModelRun {
    pub backends: BTreeMap<BackendKind, BackendTraining>,
    /// Per backend pair: the loss trajectories compared step by step.
    pub trajectory: BTreeMap<String, TraceDiff>,
    pub resync: Option<ResyncResult>,
    /// Every re-synchronised step's gradients agree between every pair, and every loss
    /// and accuracy is finite. (Free-running f32 trajectories part after a few hundred
    /// steps from one-ulp differences, so they are reported, not judged.)
    pub agree: bool,
}

#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct MnistStudy {
    pub settings: MnistSettings,
    pub reference: BackendKind,
    pub models: BTreeMap<String, ModelRun>,
    /// Every model agrees (see `ModelRun::agree`).
    pub agree: bool,
}

/// The images a `--train-limit`/`--test-limit` keeps: 1 to all of the split, else refused
/// (never clamped without a word).
fn limit(flag: &str, given: Option<usize>, available: usize, split: &str) -> Result<usize> {
    match given {
        None => Ok(available),
        Some(n) if (1..=available).contains(&n) => Ok(n),
        Some(n) => Err(Error::Invalid(format!("{flag} {n}: expected 1 to {available}, the {split} images this dataset has"))),
    }
}

/// Progress of a long run, for a progress bar: (model, backend, done, total).
pub type Progress<'a> = &'a mut dyn FnMut(&str, BackendKind, usize, usize);

pub fn run(data: &Dataset, opts: &MnistOptions, progress: Progress) -> Result<MnistStudy> {
    if opts.epochs == 0 {
        return Err(Error::Invalid("--epochs 0: at least one epoch is needed".into()));
    }
    let (n_train, n_test) = (limit("--train-limit", opts.train_limit, data.train.n, "training")?, limit("--test-limit", opts.test_limit, data.test.n, "test")?);
    let steps = n_train.div_ceil(TRAIN_BATCH);
    if opts.resync_steps > steps {
        return Err(Error::Invalid(format!(
            "--resync-steps {}: at most {steps}, the steps of one epoch on {n_train} images (the re-synchronised phase replays the first epoch)",
            opts.resync_steps
        )));
    }
    let tol = Tolerance::torch_default(opts.dtype);
    let reference = BackendKind::reference_among(&opts.backends).expect("at least one backend");
    let mut models = BTreeMap::new();
    for spec in &opts.models {
        let params = match &opts.params {
            Some(p) => p.ordered(spec).map_err(|e| Error::Invalid(format!("--params {}: {e}", opts.params_origin.as_deref().unwrap_or(""))))?,
            None => ParamSet::init(spec, opts.seed),
        };
        let resync = (opts.resync_steps > 0)
            .then(|| resync(data, opts, spec, &params, reference, n_train))
            .transpose()?;
        let backends = train(data, opts, spec, &params, n_train, n_test, progress)?;
        let mut trajectory = BTreeMap::new();
        for (a, b) in backend_pairs(&opts.backends) {
            trajectory.insert(pair_name(a, b), compare_traces(&backends[&a].step_loss, &backends[&b].step_loss, tol));
        }
        let finite = backends.values().all(|b: &BackendTraining| {
            b.step_loss.iter().all(|v| v.is_finite()) && b.epochs.iter().all(|e| e.test_accuracy.is_finite() && e.test_loss_mean.is_finite())
        });
        let resync_agrees = resync.as_ref().is_none_or(|r| r.first_grad_disagreement.values().all(Option::is_none) && r.grad_scaled.values().flatten().all(|v| v.is_finite()));
        models.insert(spec.name.clone(), ModelRun { backends, trajectory, resync, agree: finite && resync_agrees });
    }
    Ok(MnistStudy {
        settings: MnistSettings {
            dataset: opts.dataset,
            dtype: opts.dtype,
            backends: opts.backends.clone(),
            backend_options: opts.backend_options.clone(),
            epochs: opts.epochs,
            train_images: n_train,
            test_images: n_test,
            seed: opts.seed,
            params: opts.params_origin.clone().unwrap_or_else(|| format!("seeded PyTorch-default init, seed {}", opts.seed)),
            lr: LR,
            momentum: MOMENTUM,
            train_batch: TRAIN_BATCH,
            test_batch: TEST_BATCH,
            resync_steps: opts.resync_steps,
            tolerance: tol,
        },
        reference,
        agree: models.values().all(|m| m.agree),
        models,
    })
}

/// Trains every backend in lockstep and evaluates after each epoch.
fn train(data: &Dataset, opts: &MnistOptions, spec: &ModelSpec, params: &ParamSet, n_train: usize, n_test: usize, progress: Progress) -> Result<BTreeMap<BackendKind, BackendTraining>> {
    let mut runners: Vec<(BackendKind, Box<dyn ModelRunner>)> = opts
        .backends
        .iter()
        .map(|&k| Ok((k, instantiate(k, &opts.backend_options, spec, params, opts.dtype)?)))
        .collect::<Result<_>>()?;
    let mut out: BTreeMap<BackendKind, BackendTraining> =
        opts.backends.iter().map(|&k| (k, BackendTraining { step_loss: vec![], epochs: vec![], seconds: 0.0 })).collect();
    let steps_per_epoch = n_train.div_ceil(TRAIN_BATCH);
    let total = opts.epochs * (steps_per_epoch + n_test.div_ceil(TEST_BATCH));
    let mut done = 0;
    let mut step = 0;
    for epoch in 0..opts.epochs {
        let order = epoch_order(n_train, opts.seed, epoch);
        let mut epoch_loss: BTreeMap<BackendKind, f64> = BTreeMap::new();
        for idx in batches(&order, TRAIN_BATCH) {
            let batch = make_batch(&data.train, idx);
            let masks = step_masks(spec, idx.len(), opts.seed, step);
            for (kind, runner) in runners.iter_mut() {
                let t = Instant::now();
                let s = runner.forward_backward(&batch, &masks, false)?;
                runner.sgd_step(LR, MOMENTUM)?;
                let rec = out.get_mut(kind).expect("every backend");
                rec.seconds += t.elapsed().as_secs_f64();
                rec.step_loss.push(s.loss);
                *epoch_loss.entry(*kind).or_default() += s.loss;
            }
            step += 1;
            done += 1;
            for (kind, _) in runners.iter() {
                progress(&spec.name, *kind, done, total);
            }
        }
        let test_order = file_order(n_test);
        let mut sums: BTreeMap<BackendKind, (f64, f64, usize)> = BTreeMap::new();
        for idx in batches(&test_order, TEST_BATCH) {
            let batch = make_batch(&data.test, idx);
            for (kind, runner) in runners.iter_mut() {
                let t = Instant::now();
                let e = runner.evaluate(&batch)?;
                out.get_mut(kind).expect("every backend").seconds += t.elapsed().as_secs_f64();
                let s = sums.entry(*kind).or_default();
                s.0 += e.loss;
                s.1 += e.loss * idx.len() as f64;
                s.2 += e.correct;
            }
            done += 1;
            for (kind, _) in runners.iter() {
                progress(&spec.name, *kind, done, total);
            }
        }
        for (kind, (batch_mean_sum, weighted, correct)) in sums {
            out.get_mut(&kind).expect("every backend").epochs.push(EpochResult {
                epoch: epoch + 1,
                test_accuracy: 100.0 * correct as f64 / n_test as f64,
                test_loss_seed: batch_mean_sum / n_test as f64,
                test_loss_mean: weighted / n_test as f64,
                train_loss_mean: epoch_loss[&kind] / steps_per_epoch as f64,
            });
        }
    }
    Ok(out)
}

/// Before each step every backend takes the reference's parameters and buffers; the
/// loss and gradients of that step are then compared.
fn resync(data: &Dataset, opts: &MnistOptions, spec: &ModelSpec, params: &ParamSet, reference: BackendKind, n_train: usize) -> Result<ResyncResult> {
    let mut runners: BTreeMap<BackendKind, Box<dyn ModelRunner>> = opts
        .backends
        .iter()
        .map(|&k| Ok((k, instantiate(k, &opts.backend_options, spec, params, opts.dtype)?)))
        .collect::<Result<_>>()?;
    let order = epoch_order(n_train, opts.seed, 0);
    let tol = grad_tolerance(opts.dtype);
    let pairs = backend_pairs(&opts.backends);
    let mut r = ResyncResult { steps: 0, loss_rel: BTreeMap::new(), grad_scaled: BTreeMap::new(), first_grad_disagreement: BTreeMap::new() };
    for (a, b) in &pairs {
        r.first_grad_disagreement.insert(pair_name(*a, *b), None);
    }
    for (step, idx) in batches(&order, TRAIN_BATCH).take(opts.resync_steps).enumerate() {
        let batch = make_batch(&data.train, idx);
        let masks = step_masks(spec, idx.len(), opts.seed, step);
        let start = runners[&reference].params()?;
        let (mut grads, mut loss) = (BTreeMap::new(), BTreeMap::new());
        for (kind, runner) in runners.iter_mut() {
            if *kind != reference {
                runner.load_params(&start)?;
            }
            let s = runner.forward_backward(&batch, &masks, true)?;
            runner.sgd_step(LR, MOMENTUM)?;
            loss.insert(*kind, s.loss);
            grads.insert(*kind, s.grads.expect("asked for gradients"));
        }
        let cmp = compare_model(spec, &grads, loss.clone(), opts.dtype, tol)?;
        for (a, b) in &pairs {
            let name = pair_name(*a, *b);
            let rel = (loss[a] - loss[b]).abs() / loss[b].abs().max(f64::MIN_POSITIVE);
            r.loss_rel.entry(name.clone()).or_default().push(rel);
            let g = cmp.worst_scaled[&name];
            r.grad_scaled.entry(name.clone()).or_default().push(g);
            let first = r.first_grad_disagreement.get_mut(&name).expect("inserted");
            if first.is_none() && !(g <= tol) {
                *first = Some(step);
            }
        }
        r.steps = step + 1;
    }
    Ok(r)
}
