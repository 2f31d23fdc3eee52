//! `parity-report grads` and `parity-report mnist` end to end.

mod common;

use common::{parity_report, rejects, temp_dir};

#[test]
fn grads_json_names_every_parameter_and_pair_and_saves_gradients() {
    let dir = temp_dir("grads");
    let saved = dir.join("saved");
    let out = parity_report(&[
        "grads", "--models", "CNN,Softmax_BatchNorm", "--batch", "3", "--json", "-", "--out", dir.to_str().unwrap(),
        "--save-grads", saved.to_str().unwrap(),
    ]);
    // candle's max-pool makes the CNN disagree: exit 1, with the full report written.
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cnn = &v["models"]["CNN"]["params"];
    for p in ["conv1.weight", "conv2.bias", "fc3.weight"] {
        let d = &cnn[p]["engine-candle"];
        assert!(d["max_abs"].is_number() && d["max_rel"].is_number(), "{p}: {d}");
    }
    assert!(v["models"]["Softmax_BatchNorm"]["params"]["input_bn.weight"].is_object());
    // candle's own max-pool makes the CNN disagree, and the report says where.
    assert_eq!(v["models"]["CNN"]["agree"], false);
    assert!(v["models"]["CNN"]["diagnosis"]["suspects"].as_array().unwrap().iter().any(|s| s == "max_pool2d"));
    assert_eq!(v["models"]["CNN"]["diagnosis"]["culprit"], "max_pool2d");
    for name in ["grads.md", "grads.json", "grads_layers.svg"] {
        assert!(dir.join("grads").join(name).exists(), "{name}");
    }
    for f in ["CNN-engine.safetensors", "CNN-candle.safetensors", "Softmax_BatchNorm-engine.safetensors"] {
        assert!(saved.join(f).exists(), "{f}");
    }
}

#[test]
fn mnist_writes_the_report_with_every_plot() {
    let dir = temp_dir("mnist");
    let out = parity_report(&[
        "mnist", "--models", "MLP,MLP_Dropout,MLP_BatchNorm", "--epochs", "2", "--train-limit", "50", "--test-limit", "100",
        "--resync-steps", "2", "--out", dir.to_str().unwrap(), "--json", "-",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let epochs = v["models"]["MLP"]["backends"]["engine"]["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 2);
    for key in ["test_accuracy", "test_loss_seed", "test_loss_mean"] {
        assert!(epochs[1][key].is_number(), "{key}");
    }
    for name in [
        "mnist.md", "mnist.json", "mnist_fig2_all.svg", "mnist_fig3_cnn.svg", "mnist_fig4_mlp.svg", "mnist_fig5_softmax.svg",
        "mnist_loss_diff.svg", "mnist_resync.svg",
    ] {
        assert!(dir.join("mnist").join(name).metadata().map(|m| m.len() > 0).unwrap_or(false), "{name}");
    }
    let md = std::fs::read_to_string(dir.join("mnist/mnist.md")).unwrap();
    assert!(md.contains("Batch normalisation improved every classifier") && md.contains("92.12"));
}


#[test]
fn bad_mnist_arguments_are_clear_errors() {
    let empty = temp_dir("empty-data");
    rejects(&["grads", "--data-dir", empty.to_str().unwrap()], "train-images-idx3-ubyte");
    rejects(&["grads", "--models", "CNN,ResNet"], "ResNet");
    rejects(&["grads", "--batch", "0"], "--batch 0");
    rejects(&["mnist", "--epochs", "0"], "--epochs 0");
    rejects(&["mnist", "--dataset", "cifar"], "cifar");
    rejects(&["grads", "--candle-maxpool", "approx"], "approx");
    let missing = empty.join("nope.safetensors");
    rejects(&["grads", "--params", missing.to_str().unwrap()], "nope.safetensors");
}

#[test]
fn bench_reports_step_times_ratios_and_gemm_throughput() {
    let dir = temp_dir("bench");
    let out = parity_report(&[
        "bench", "--models", "Softmax", "--steps", "3", "--warmup", "1", "--memory-images", "100", "--json", "-", "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let m = &v["models"]["Softmax"];
    assert!(m["step_ms"]["engine"].as_f64().unwrap() > 0.0 && m["eval_ms"]["candle"].as_f64().unwrap() > 0.0);
    assert!(m["ratios"]["engine-candle"].as_f64().unwrap() > 0.0);
    assert!(v["gemm"].as_array().unwrap().iter().all(|g| g["gflops"]["engine"].as_f64().unwrap() > 0.0));
    // The machine's peak sits next to the products' rates.
    assert!(v["peak"]["one_thread_gflops"].as_f64().unwrap() > 0.0);
    assert!(v["peak"]["all_threads_gflops"].as_f64().unwrap() > 0.0);
    // One 100-image epoch per backend in a child process: the peak is at least the
    // resident size it started from, and both are plausible for this program.
    for backend in ["engine", "candle"] {
        let (before, peak) = (m["baseline_rss_mb"][backend].as_f64().unwrap(), m["peak_rss_mb"][backend].as_f64().unwrap());
        assert!(before > 1.0 && peak >= before && peak < 4096.0, "{backend}: before {before} MB, peak {peak} MB");
    }
    let md = std::fs::read_to_string(dir.join("bench/bench.md")).unwrap();
    assert!(md.contains("## Memory and epoch time") && md.contains("Machine peak, measured"));
    for name in ["bench.md", "bench.json", "bench.svg"] {
        assert!(dir.join("bench").join(name).exists(), "{name}");
    }
    rejects(&["bench", "--steps", "0"], "--steps 0");
}
