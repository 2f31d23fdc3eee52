//! `parity-report study`: the seed's protocol for real, over seeds and datasets, one run
//! per (dataset, model, seed, backends). Each run records every finished epoch on disk
//! (its results and a checkpoint of parameters, running statistics and SGD momentum), so
//! a killed run resumes at its last finished epoch and ends with the bits of an
//! uninterrupted one: data order and dropout masks are functions of (seed, epoch, step),
//! so nothing else needs saving. `--shard I/N` runs a deterministic slice of the runs;
//! the report is built from the records of one or many folders (`--merge`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::lockstep::{instantiate, make_batch, step_masks, BackendOptions};
use super::mnist::EpochResult;
use super::pair_name;
use crate::backends::{BackendKind, ModelRunner};
use crate::data::{batches, epoch_order, file_order, Dataset, DatasetKind};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::models::mnist::{ModelSpec, ParamSet};
use crate::models::safetensors_io;
use crate::parity::worst_scaled_over;
use crate::report::write_atomic;

pub mod summary;

/// One run of the study: what trains, from which seed, on which backends in lockstep.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RunKey {
    pub dataset: DatasetKind,
    pub model: String,
    pub seed: u64,
    /// Backends trained in lockstep from the same start (the engine first).
    pub backends: Vec<BackendKind>,
    /// The settings of the backends that have any (`maxpool-builtin` for candle): two
    /// settings are two runs (what candle's released max-pool backward costs in accuracy
    /// is the difference of its two runs).
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "candle_maxpool", deserialize_with = "variant_of_old_records")]
    pub variant: Option<String>,
}

/// Records written before backends carried their own settings name candle's max-pool
/// mode alone (`"candle_maxpool": "builtin"`); it reads as the variant `maxpool-builtin`.
fn variant_of_old_records<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<String>, D::Error> {
    let v: Option<String> = Option::deserialize(d)?;
    Ok(v.map(|v| if v == "builtin" || v == "exact" { format!("maxpool-{v}") } else { v }))
}

/// The same for a run's settings: `"candle_maxpool": "exact"` is candle's `maxpool`.
fn options_of_old_records<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<BackendOptions, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Mode(String),
        Options(BackendOptions),
    }
    Ok(match Either::deserialize(d)? {
        Either::Mode(mode) => BackendOptions::default().with("candle", "maxpool", &mode),
        Either::Options(o) => o,
    })
}

/// `maxpool-builtin`: the settings of every backend of a run that has settings, or None.
pub fn variant_of(backends: &[BackendKind], options: &BackendOptions) -> Option<String> {
    let parts: Vec<String> = backends
        .iter()
        .filter_map(|k| k.create_with(options).ok())
        .flat_map(|b| b.settings())
        .map(|(k, v)| format!("{k}-{v}"))
        .collect();
    (!parts.is_empty()).then(|| parts.join("-"))
}

impl RunKey {
    /// `<dataset>/<model>/seed-<seed>/<backend>+<backend>[-maxpool-<mode>]`: where its
    /// records live.
    pub fn dir(&self, records: &Path) -> PathBuf {
        records.join(self.dataset.to_string()).join(&self.model).join(format!("seed-{}", self.seed)).join(self.backends_name())
    }

    pub fn label(&self) -> String {
        format!("{} {} seed {} on {}", self.dataset, self.model, self.seed, self.backends_name())
    }

    fn backends_name(&self) -> String {
        let backends: Vec<&str> = self.backends.iter().map(|k| k.name()).collect();
        match &self.variant {
            Some(variant) => format!("{}-{variant}", backends.join("+")),
            None => backends.join("+"),
        }
    }
}

/// Everything that decides a run's bits; a run resumes only into records made with the
/// same settings (`run.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunSettings {
    pub key: RunKey,
    pub epochs: usize,
    pub train_images: usize,
    pub test_images: usize,
    pub dtype: DType,
    pub lr: f64,
    pub momentum: f64,
    pub train_batch: usize,
    pub test_batch: usize,
    #[serde(alias = "candle_maxpool", deserialize_with = "options_of_old_records")]
    pub backend_options: BackendOptions,
}

/// One finished epoch of one run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EpochRecord {
    pub epoch: usize,
    pub results: BTreeMap<BackendKind, EpochResult>,
    /// Wall time of the epoch's steps and evaluation, per backend.
    pub seconds: BTreeMap<BackendKind, f64>,
    /// Per lockstep pair: how far apart the backends are after this epoch.
    pub drift: BTreeMap<String, Drift>,
}

/// How far two backends trained in lockstep have drifted apart.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Drift {
    /// Largest |a-b|/|b| of the step losses in this epoch.
    pub step_loss_rel: f64,
    /// The largest |a-b| over every parameter and buffer after the epoch, over the
    /// largest |b|.
    pub params_scaled: f64,
    /// Test accuracy of the first backend minus the second's, in points.
    pub accuracy_points: f64,
}

/// A shard spec `I/N` (1 ≤ I ≤ N): runs whose index in the plan is I-1 modulo N.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("--shard {s}: expected I/N with 1 <= I <= N (e.g. 2/4)");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count): (usize, usize) = (i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
        if index == 0 || count == 0 || index > count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

#[derive(Clone, Debug)]
pub struct StudyOptions {
    pub datasets: Vec<DatasetKind>,
    pub models: Vec<ModelSpec>,
    pub seeds: Vec<u64>,
    /// Seeds whose runs train every backend of `backends` in lockstep; other seeds train
    /// the engine alone.
    pub lockstep_seeds: Vec<u64>,
    pub backends: Vec<BackendKind>,
    pub backend_options: BackendOptions,
    pub epochs: usize,
    pub train_limit: Option<usize>,
    pub test_limit: Option<usize>,
    pub shard: Shard,
}

/// Every run of the study, in the plan's fixed order, then this shard's slice.
pub fn plan(opts: &StudyOptions) -> Vec<RunKey> {
    let mut keys = Vec::new();
    for &dataset in &opts.datasets {
        for spec in &opts.models {
            for &seed in &opts.seeds {
                let backends = if opts.lockstep_seeds.contains(&seed) { opts.backends.clone() } else { vec![BackendKind::ENGINE] };
                let variant = variant_of(&backends, &opts.backend_options);
                keys.push(RunKey { dataset, model: spec.name.clone(), seed, backends, variant });
            }
        }
    }
    keys.into_iter().enumerate().filter(|(i, _)| i % opts.shard.count == opts.shard.index - 1).map(|(_, k)| k).collect()
}

/// What a finished or resumed run reports to the caller.
pub struct RunDone {
    pub key: RunKey,
    pub resumed_from: usize,
    pub last: EpochRecord,
    pub seconds: f64,
}

/// Runs (or resumes) one run into `records`; `epoch_done` after every epoch it trains.
pub fn run_one(data: &Dataset, spec: &ModelSpec, settings: &RunSettings, records: &Path, mut epoch_done: impl FnMut(&EpochRecord)) -> Result<RunDone> {
    let start = Instant::now();
    let dir = settings.key.dir(records);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    claim(&dir, settings)?;
    let done = finished_epochs(&dir, settings.epochs)?;
    let key = &settings.key;
    if done == settings.epochs && done > 0 {
        // Finished: its records are the result; its checkpoint may be gone (git ignores them).
        return Ok(RunDone { key: key.clone(), resumed_from: done, last: read_epoch(&dir, done)?, seconds: start.elapsed().as_secs_f64() });
    }
    let init = ParamSet::init(spec, key.seed);
    let mut runners: Vec<(BackendKind, Box<dyn ModelRunner>)> =
        key.backends.iter().map(|&k| Ok((k, instantiate(k, &settings.backend_options, spec, &init, settings.dtype)?))).collect::<Result<_>>()?;
    for (kind, runner) in runners.iter_mut() {
        runner.track_optimizer_state();
        if done > 0 {
            restore(runner.as_mut(), *kind, &checkpoint_path(&dir, done))?;
        }
    }
    let mut last = if done > 0 { Some(read_epoch(&dir, done)?) } else { None };
    for epoch in done..settings.epochs {
        let record = train_epoch(data, spec, settings, &mut runners, epoch)?;
        save_checkpoint(&runners, &checkpoint_path(&dir, epoch + 1))?;
        write_atomic(&epoch_path(&dir, epoch + 1), crate::report::to_json(&record)?)?;
        if epoch > 0 {
            // The previous checkpoint is not needed once this epoch's record is in place.
            let _ = std::fs::remove_file(checkpoint_path(&dir, epoch));
        }
        epoch_done(&record);
        last = Some(record);
    }
    let last = last.ok_or_else(|| Error::Invalid("a study run needs at least one epoch".into()))?;
    Ok(RunDone { key: key.clone(), resumed_from: done, last, seconds: start.elapsed().as_secs_f64() })
}

/// Writes `run.json` for a new run, or checks that an existing one was made with the same
/// settings (a mismatch would mix two studies' epochs in one record).
fn claim(dir: &Path, settings: &RunSettings) -> Result<()> {
    let path = dir.join("run.json");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let recorded: RunSettings =
                serde_json::from_str(&text).map_err(|e| Error::file(&path, format!("not a study run's settings ({e}); move the folder away")))?;
            if &recorded != settings {
                return Err(Error::file(
                    &path,
                    format!(
                        "recorded with other settings ({}); its epochs cannot be resumed by this run: use another --records folder",
                        differences(&recorded, settings)
                    ),
                ));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => write_atomic(&path, crate::report::to_json(settings)?),
        Err(e) => Err(Error::io(&path, e)),
    }
}

fn differences(a: &RunSettings, b: &RunSettings) -> String {
    let (va, vb) = (serde_json::to_value(a).unwrap_or_default(), serde_json::to_value(b).unwrap_or_default());
    let mut out = Vec::new();
    if let (Some(ma), Some(mb)) = (va.as_object(), vb.as_object()) {
        for (k, x) in ma {
            if mb.get(k) != Some(x) {
                out.push(format!("{k}: recorded {x}, asked {}", mb.get(k).cloned().unwrap_or_default()));
            }
        }
    }
    out.join("; ")
}

fn epoch_path(dir: &Path, epoch: usize) -> PathBuf {
    dir.join(format!("epoch-{epoch:03}.json"))
}

fn checkpoint_path(dir: &Path, epoch: usize) -> PathBuf {
    dir.join(format!("checkpoint-{epoch:03}.safetensors"))
}

/// Where the run resumes: after the last recorded epoch (records are contiguous from
/// epoch 1; a kill between writing a checkpoint and its record trains that epoch again).
/// A finished run needs no checkpoint; an unfinished one whose checkpoint is gone (records
/// committed without their checkpoints, which git ignores) is trained again from the
/// start, which rewrites its records with the same bits.
fn finished_epochs(dir: &Path, epochs: usize) -> Result<usize> {
    let mut done = 0;
    while done < epochs && epoch_path(dir, done + 1).is_file() {
        done += 1;
    }
    if done > 0 && done < epochs && !checkpoint_path(dir, done).is_file() {
        return Ok(0);
    }
    Ok(done)
}

pub fn read_epoch(dir: &Path, epoch: usize) -> Result<EpochRecord> {
    let path = epoch_path(dir, epoch);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let record: EpochRecord = serde_json::from_str(&text).map_err(|e| Error::file(&path, format!("not an epoch record: {e}")))?;
    if record.epoch != epoch {
        return Err(Error::file(&path, format!("holds epoch {}; expected {epoch}", record.epoch)));
    }
    Ok(record)
}

/// Names in a checkpoint: `<backend>/<tensor>` for parameters and buffers,
/// `<backend>/momentum/<tensor>` for SGD's momentum buffers.
fn save_checkpoint(runners: &[(BackendKind, Box<dyn ModelRunner>)], path: &Path) -> Result<()> {
    let mut tensors = Vec::new();
    for (kind, runner) in runners {
        tensors.extend(runner.params()?.tensors.into_iter().map(|(n, t)| (format!("{kind}/{n}"), t)));
        tensors.extend(runner.optimizer_state()?.into_iter().map(|(n, t)| (format!("{kind}/momentum/{n}"), t)));
    }
    // f64 holds every f32 value exactly: the checkpoint restores the bits of either dtype.
    safetensors_io::write(path, &ParamSet { tensors }, DType::F64)
}

fn restore(runner: &mut dyn ModelRunner, kind: BackendKind, path: &Path) -> Result<()> {
    let set = safetensors_io::read(path)?;
    let prefix = format!("{kind}/");
    let momentum = format!("{kind}/momentum/");
    let params = ParamSet { tensors: set.tensors.iter().filter(|(n, _)| n.starts_with(&prefix) && !n.starts_with(&momentum)).map(|(n, t)| (n[prefix.len()..].to_string(), t.clone())).collect() };
    let state: Vec<(String, crate::HostTensor)> =
        set.tensors.iter().filter(|(n, _)| n.starts_with(&momentum)).map(|(n, t)| (n[momentum.len()..].to_string(), t.clone())).collect();
    let mismatch = |e: Error| Error::file(path, format!("does not fit this run's {kind} model: {e}"));
    runner.load_params(&params).map_err(mismatch)?;
    runner.set_optimizer_state(&state).map_err(mismatch)
}

/// One epoch of every backend in lockstep, then its evaluation.
fn train_epoch(data: &Dataset, spec: &ModelSpec, s: &RunSettings, runners: &mut [(BackendKind, Box<dyn ModelRunner>)], epoch: usize) -> Result<EpochRecord> {
    let seed = s.key.seed;
    let order = epoch_order(s.train_images, seed, epoch);
    let steps_per_epoch = s.train_images.div_ceil(s.train_batch);
    let mut losses: BTreeMap<BackendKind, Vec<f64>> = BTreeMap::new();
    let mut seconds: BTreeMap<BackendKind, f64> = BTreeMap::new();
    for (i, idx) in batches(&order, s.train_batch).enumerate() {
        let batch = make_batch(&data.train, idx);
        let masks = step_masks(spec, idx.len(), seed, epoch * steps_per_epoch + i);
        for (kind, runner) in runners.iter_mut() {
            let t = Instant::now();
            let out = runner.forward_backward(&batch, &masks, false)?;
            runner.sgd_step(s.lr, s.momentum)?;
            *seconds.entry(*kind).or_default() += t.elapsed().as_secs_f64();
            losses.entry(*kind).or_default().push(out.loss);
        }
    }
    let mut results = BTreeMap::new();
    let test_order = file_order(s.test_images);
    for (kind, runner) in runners.iter_mut() {
        let t = Instant::now();
        let (mut batch_means, mut weighted, mut correct) = (0.0, 0.0, 0usize);
        for idx in batches(&test_order, s.test_batch) {
            let e = runner.evaluate(&make_batch(&data.test, idx))?;
            batch_means += e.loss;
            weighted += e.loss * idx.len() as f64;
            correct += e.correct;
        }
        *seconds.entry(*kind).or_default() += t.elapsed().as_secs_f64();
        let train = &losses[kind];
        results.insert(
            *kind,
            EpochResult {
                epoch: epoch + 1,
                test_accuracy: 100.0 * correct as f64 / s.test_images as f64,
                test_loss_seed: batch_means / s.test_images as f64,
                test_loss_mean: weighted / s.test_images as f64,
                train_loss_mean: train.iter().sum::<f64>() / train.len() as f64,
            },
        );
    }
    let mut drift = BTreeMap::new();
    for i in 0..runners.len() {
        for j in i + 1..runners.len() {
            let (a, b) = (runners[i].0, runners[j].0);
            let rel = losses[&a].iter().zip(&losses[&b]).map(|(x, y)| if x.is_finite() && y.is_finite() { (x - y).abs() / y.abs().max(f64::MIN_POSITIVE) } else { f64::NAN });
            let step_loss_rel = rel.fold(0.0f64, |m, r| if m.is_nan() || r.is_nan() { f64::NAN } else { m.max(r) });
            let (pa, pb) = (runners[i].1.params()?, runners[j].1.params()?);
            let a_tensors: Vec<crate::HostTensor> = pa.tensors.iter().map(|(_, t)| t.clone()).collect();
            let b_tensors: Vec<crate::HostTensor> = pa.tensors.iter().map(|(n, _)| pb.get(n).expect("one spec").clone()).collect();
            let params_scaled = worst_scaled_over(&a_tensors, &b_tensors, s.dtype)?;
            let accuracy_points = results[&a].test_accuracy - results[&b].test_accuracy;
            drift.insert(pair_name(a, b), Drift { step_loss_rel, params_scaled, accuracy_points });
        }
    }
    Ok(EpochRecord { epoch: epoch + 1, results, seconds, drift })
}

/// A run's records as read back for the report.
#[derive(Clone, Debug)]
pub struct RunRecords {
    pub settings: RunSettings,
    pub epochs: Vec<EpochRecord>,
    pub dir: PathBuf,
}

/// Every run under each folder of `records` (a study's or a shard's `--records`). The same
/// run (key and epoch budget) in two folders must hold the same records; the same key
/// with another budget (a longer training) is another run.
pub fn collect(records: &[PathBuf]) -> Result<Vec<RunRecords>> {
    let mut runs: BTreeMap<(RunKey, usize), RunRecords> = BTreeMap::new();
    for root in records {
        if !root.is_dir() {
            return Err(Error::file(root, "not a folder of study records (expected <dataset>/<model>/seed-<n>/<backends>/run.json below it)"));
        }
        for path in run_files(root)? {
            let dir = path.parent().expect("a file in a folder").to_path_buf();
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            let settings: RunSettings = serde_json::from_str(&text).map_err(|e| Error::file(&path, format!("not a study run's settings: {e}")))?;
            let mut epochs = Vec::new();
            while epoch_path(&dir, epochs.len() + 1).is_file() && epochs.len() < settings.epochs {
                epochs.push(read_epoch(&dir, epochs.len() + 1)?);
            }
            let run = RunRecords { settings, epochs, dir };
            match runs.get(&(run.settings.key.clone(), run.settings.epochs)) {
                Some(prev) if prev.settings != run.settings || prev.epochs != run.epochs => {
                    return Err(Error::file(&run.dir, format!("conflicts with {}: the same run with other records", prev.dir.display())));
                }
                Some(_) => {}
                None => {
                    runs.insert((run.settings.key.clone(), run.settings.epochs), run);
                }
            }
        }
    }
    Ok(runs.into_values().collect())
}

/// `run.json` files four folders below `root`, sorted.
fn run_files(root: &Path) -> Result<Vec<PathBuf>> {
    let mut level = vec![root.to_path_buf()];
    for _ in 0..4 {
        let mut next = Vec::new();
        for dir in &level {
            let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
            for e in entries.flatten() {
                if e.path().is_dir() && !e.file_name().to_string_lossy().starts_with('.') {
                    next.push(e.path());
                }
            }
        }
        level = next;
    }
    let mut files: Vec<PathBuf> = level.into_iter().map(|d| d.join("run.json")).filter(|p| p.is_file()).collect();
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(backends: Vec<BackendKind>, shard: Shard) -> StudyOptions {
        StudyOptions {
            datasets: vec![DatasetKind::Mnist, DatasetKind::Fashion],
            models: ["CNN", "MLP"].iter().map(|m| m.parse().unwrap()).collect(),
            seeds: vec![0, 1, 2],
            lockstep_seeds: vec![1],
            backends,
            backend_options: BackendOptions::default(),
            epochs: 1,
            train_limit: None,
            test_limit: None,
            shard,
        }
    }

    #[test]
    fn shards_partition_the_plan_in_order() {
        let whole = plan(&options(vec![BackendKind::ENGINE, BackendKind::TORCH], Shard { index: 1, count: 1 }));
        assert_eq!(whole.len(), 12);
        assert_eq!(whole.iter().filter(|k| k.backends.len() == 2).count(), 4, "one lockstep seed per dataset and model");
        let mut merged: Vec<RunKey> = (1..=5).flat_map(|i| plan(&options(vec![BackendKind::ENGINE, BackendKind::TORCH], Shard { index: i, count: 5 }))).collect();
        merged.sort();
        let mut sorted = whole.clone();
        sorted.sort();
        assert_eq!(merged, sorted);
        assert!("3/2".parse::<Shard>().is_err() && "0/1".parse::<Shard>().is_err() && "1/0".parse::<Shard>().is_err());
        assert_eq!("2/4".parse::<Shard>(), Ok(Shard { index: 2, count: 4 }));
    }

    #[test]
    fn candle_runs_name_their_max_pool_mode() {
        let keys = plan(&options(vec![BackendKind::ENGINE, BackendKind::CANDLE], Shard { index: 1, count: 1 }));
        let lockstep = keys.iter().find(|k| k.backends.len() == 2).unwrap();
        assert!(lockstep.dir(Path::new("r")).ends_with("engine+candle-maxpool-builtin"));
        let solo = keys.iter().find(|k| k.backends.len() == 1).unwrap();
        assert!(solo.dir(Path::new("r")).ends_with("engine") && solo.variant.is_none());
    }
}
