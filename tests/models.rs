//! The nine models: step-0 gradient parity on a small batch, lockstep training, the
//! candle max-pool finding, and PyTorch state_dicts loaded with `--params`.

mod common;

use std::sync::OnceLock;

use backprop_parity::backends::{BackendKind, MaxPoolMode};
use backprop_parity::data::{self, Dataset, DatasetKind};
use backprop_parity::models::mnist::{ModelSpec, ParamSet};
use backprop_parity::models::safetensors_io;
use backprop_parity::study::grads::{self, GradsOptions};
use backprop_parity::study::lockstep::{instantiate, make_batch, BackendOptions};
use backprop_parity::study::mnist::{self as mnist_study, MnistOptions};
use backprop_parity::DType;
use common::repo_path;

fn mnist() -> &'static Dataset {
    static DATA: OnceLock<Dataset> = OnceLock::new();
    DATA.get_or_init(|| data::load(DatasetKind::Mnist, &data::default_dir(DatasetKind::Mnist)).expect("shipped MNIST loads"))
}

fn grads_options(models: Vec<ModelSpec>, dtype: DType, backends: Vec<BackendKind>, maxpool: MaxPoolMode) -> GradsOptions {
    GradsOptions {
        models,
        dtype,
        backends,
        backend_options: BackendOptions::default().with("candle", "maxpool", maxpool.name()),
        batch: 4,
        seed: 11,
        params: None,
        params_origin: None,
        save_grads: None,
    }
}

#[test]
fn step_zero_gradients_of_every_model_agree_across_backends_in_f64() {
    let study = grads::run(mnist(), &grads_options(ModelSpec::all_seed(), DType::F64, BackendKind::defaults(), MaxPoolMode::Exact), |_| {}).unwrap();
    assert_eq!(study.models.len(), 9);
    for (name, m) in &study.models {
        for (pair, worst) in &m.worst_scaled {
            assert!(*worst <= 1e-10, "{name} {pair}: worst scaled gradient difference {worst:e}");
        }
        assert!(m.agree, "{name}");
        assert_eq!(m.params.len(), m.order.len());
    }
}

#[test]
fn step_zero_gradients_agree_in_f32_within_the_f32_tolerance() {
    let study = grads::run(mnist(), &grads_options(ModelSpec::all_seed(), DType::F32, BackendKind::defaults(), MaxPoolMode::Exact), |_| {}).unwrap();
    for (name, m) in &study.models {
        assert!(m.agree, "{name}: {:?}", m.worst_scaled);
    }
}

#[test]
fn candles_max_pool_is_found_by_measurement() {
    let models = vec!["CNN".parse().unwrap(), "MLP".parse().unwrap()];
    let study = grads::run(mnist(), &grads_options(models, DType::F64, BackendKind::defaults(), MaxPoolMode::Builtin), |_| {}).unwrap();
    let cnn = &study.models["CNN"];
    assert!(!cnn.agree, "candle 0.11.1's max-pool backward should make the CNN disagree");
    let d = cnn.diagnosis.as_ref().unwrap();
    assert!(d.suspects.iter().any(|s| s == "max_pool2d"), "suspects {:?}", d.suspects);
    // Run alone, ReLU agrees and the max-pool does not: the culprit, by measurement.
    assert_eq!(d.culprit.as_deref(), Some("max_pool2d"), "probes {:?}", d.probes);
    // Everything after the last pool (fc1, fc2, fc3) still agrees.
    assert_eq!(d.last_agreeing_layer.as_deref(), Some("fc1"));
    if cfg!(feature = "torch") {
        assert_eq!(d.odd_one_out, Some(BackendKind::CANDLE));
    }
    assert!(study.models["MLP"].agree, "no pool, no disagreement");
}

#[test]
fn lockstep_training_keeps_backends_together() {
    let opts = MnistOptions {
        models: vec!["MLP_Dropout".parse().unwrap(), "CNN_BatchNorm".parse().unwrap()],
        dtype: DType::F64,
        backends: BackendKind::defaults(),
        backend_options: BackendOptions::default().with("candle", "maxpool", "exact"),
        dataset: DatasetKind::Mnist,
        epochs: 2,
        train_limit: Some(100),
        test_limit: Some(200),
        seed: 5,
        params: None,
        params_origin: None,
        resync_steps: 2,
    };
    let study = mnist_study::run(mnist(), &opts, &mut |_, _, _, _| {}).unwrap();
    for (name, run) in &study.models {
        for (kind, b) in &run.backends {
            assert_eq!(b.step_loss.len(), 8, "{name} {kind}: 2 epochs of 4 batches");
            assert_eq!(b.epochs.len(), 2);
            let e = &b.epochs[1];
            assert!((0.0..=100.0).contains(&e.test_accuracy));
            // The seed's test loss is the mean loss divided by the test batch size.
            assert!((e.test_loss_seed * 100.0 - e.test_loss_mean).abs() < 1e-9, "{name}: {e:?}");
        }
        for (pair, t) in &run.trajectory {
            assert!(t.max_rel <= 1e-10, "{name} {pair}: trajectories drift by {:e}", t.max_rel);
        }
        let r = run.resync.as_ref().unwrap();
        assert_eq!(r.steps, 2);
        assert!(r.first_grad_disagreement.values().all(Option::is_none), "{name}: {:?}", r.grad_scaled);
    }
}

fn temp_file(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("bp-models-{}-{name}", std::process::id()))
}

#[test]
fn a_params_file_gives_the_same_gradients_as_the_params_it_holds() {
    let spec: ModelSpec = "MLP_BatchNorm".parse().unwrap();
    let path = temp_file("mlp.safetensors");
    safetensors_io::write(&path, &ParamSet::init(&spec, 11), DType::F64).unwrap();
    let from_seed = grads::run(mnist(), &grads_options(vec![spec.clone()], DType::F64, vec![BackendKind::ENGINE], MaxPoolMode::Exact), |_| {}).unwrap();
    let mut opts = grads_options(vec![spec], DType::F64, vec![BackendKind::ENGINE], MaxPoolMode::Exact);
    opts.params = Some(safetensors_io::read(&path).unwrap());
    opts.params_origin = Some(path.display().to_string());
    let from_file = grads::run(mnist(), &opts, |_| {}).unwrap();
    assert_eq!(from_seed.models["MLP_BatchNorm"].loss, from_file.models["MLP_BatchNorm"].loss);
    std::fs::remove_file(path).ok();
}

#[test]
fn a_params_file_that_does_not_fit_is_a_clear_error() {
    let spec: ModelSpec = "Softmax".parse().unwrap();
    let mut params = ParamSet::init(&spec, 1);
    params.tensors.retain(|(n, _)| n != "fc1.bias");
    let err = params.ordered(&spec).unwrap_err().to_string();
    assert!(err.contains("fc1.bias") && err.contains("missing"), "{err}");
    let mut params = ParamSet::init(&spec, 1);
    params.tensors[0].1.shape = vec![784, 10];
    let err = params.ordered(&spec).unwrap_err().to_string();
    assert!(err.contains("fc1.weight") && err.contains("[10, 784]"), "{err}");
    let garbage = temp_file("garbage.safetensors");
    std::fs::write(&garbage, b"not a safetensors file").unwrap();
    let err = safetensors_io::read(&garbage).unwrap_err().to_string();
    assert!(err.contains("garbage.safetensors") && err.contains("safetensors"), "{err}");
    std::fs::remove_file(garbage).ok();
}

/// Gradients from a PyTorch state_dict (`reference/make_state_dict.py`) against the
/// gradients PyTorch itself computed for it on the first 25 training images.
fn check_against_pytorch_state_dict(kind: BackendKind) {
    for model in ["CNN_BatchNorm", "MLP_BatchNorm", "Softmax"] {
        let spec: ModelSpec = model.parse().unwrap();
        let state = safetensors_io::read(&repo_path(&format!("reference/mnist/{model}.safetensors"))).unwrap();
        let params = state.ordered(&spec).unwrap();
        let indices: Vec<usize> = (0..25).collect();
        let batch = make_batch(&mnist().train, &indices);
        for dtype in DType::ALL {
            let want = safetensors_io::read(&repo_path(&format!("reference/mnist/{model}-grads-{dtype}.safetensors"))).unwrap();
            let opts = BackendOptions::default().with("candle", "maxpool", "exact");
            let mut runner = instantiate(kind, &opts, &spec, &params, dtype).unwrap();
            let got = runner.forward_backward(&batch, &[], true).unwrap().grads.unwrap();
            let scale = want.tensors.iter().flat_map(|(_, t)| t.data.iter()).fold(0.0f64, |m, v| m.max(v.abs()));
            let tol = grads::grad_tolerance(dtype) * scale.max(1e-300);
            for (name, g) in &got.tensors {
                let w = want.get(name).unwrap_or_else(|| panic!("PyTorch saved no gradient for {name}"));
                let worst = g.data.iter().zip(&w.data).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
                let floor = (w.data.iter().fold(0.0f64, |m, v| m.max(v.abs()))).max(grads::MODEL_SCALE_FLOOR * scale);
                assert!(worst <= tol.max(grads::grad_tolerance(dtype) * floor), "{kind} {model} {dtype} {name}: off by {worst:e} (scale {scale:e})");
            }
        }
    }
}

#[test]
fn engine_reproduces_pytorch_gradients_from_a_pytorch_state_dict() {
    check_against_pytorch_state_dict(BackendKind::ENGINE);
}

#[test]
fn candle_with_exact_max_pool_reproduces_pytorch_gradients_from_a_pytorch_state_dict() {
    check_against_pytorch_state_dict(BackendKind::CANDLE);
}

#[cfg(feature = "torch")]
#[test]
fn libtorch_reproduces_pytorch_gradients_from_a_pytorch_state_dict() {
    check_against_pytorch_state_dict(BackendKind::TORCH);
}
