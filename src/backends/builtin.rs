//! The backends this crate brings: its own engine, candle, libtorch (with
//! `--features torch`) and burn (with `--features burn`). Each is registered like a user's backend would be; the only
//! difference is that these are there from the start.

use std::str::FromStr;

use super::registry::{Registration, Settings};
use super::{Backend, CandleBackend, EngineBackend, MaxPoolMode};
use crate::error::{Error, Result};

pub const TORCH_BUILD_HINT: &str = "run `scripts/setup-torch` once, then build with `--features torch`, \
    e.g. `cargo run --release --features torch -- ...` (`make report` and `make test` do both)";

pub(super) fn registrations() -> Vec<Registration> {
    let mut engine = Registration::new("engine", "backprop-parity engine", env!("CARGO_PKG_VERSION"), |_| Ok(Box::new(EngineBackend) as Box<dyn Backend>));
    engine.trust = 1;
    let mut candle = Registration::new("candle", "candle-core", env!("BP_CANDLE_VERSION"), |s| Ok(Box::new(candle_from(s)?) as Box<dyn Backend>));
    candle.trust = 2;
    candle.settings = vec![("maxpool", "builtin|exact: candle-core's released max-pool backward, or a custom op with PyTorch's")];
    let mut torch = Registration::new("torch", "libtorch", env!("BP_LIBTORCH_VERSION"), torch_factory);
    torch.trust = 3;
    torch.binding = Some(format!("tch {}", env!("BP_TCH_VERSION")));
    if !cfg!(feature = "torch") {
        torch.unavailable = Some(TORCH_BUILD_HINT.into());
    }
    let mut burn = Registration::new("burn", "burn", env!("BP_BURN_VERSION"), burn_factory);
    burn.trust = 2;
    burn.binding = Some("burn-ndarray under burn-autodiff".into());
    // burn computes sigmoid, RMS norm and several scalars in f32 inside f64 runs (README,
    // burn section): in every default run with a sigmoid it would be the odd one out for
    // that documented reason, hiding what the run is about. It runs where it is named.
    burn.in_default_runs = false;
    if !cfg!(feature = "burn") {
        burn.unavailable = Some(BURN_BUILD_HINT.into());
    }
    vec![engine, candle, torch, burn]
}

pub const BURN_BUILD_HINT: &str = "build with `--features burn` (with torch: `--features torch,burn`), \
    e.g. `cargo run --release --features torch,burn -- ...`";

#[cfg(feature = "burn")]
fn burn_factory(_: &Settings) -> Result<Box<dyn Backend>> {
    Ok(Box::new(super::BurnBackend))
}

#[cfg(not(feature = "burn"))]
fn burn_factory(_: &Settings) -> Result<Box<dyn Backend>> {
    Err(Error::Unavailable("burn".into(), BURN_BUILD_HINT.into()))
}

fn candle_from(settings: &Settings) -> Result<CandleBackend> {
    let maxpool = match settings.get("maxpool") {
        Some(v) => MaxPoolMode::from_str(v).map_err(|e| Error::Invalid(format!("--backend-option candle.maxpool={v}: {e}")))?,
        None => MaxPoolMode::default(),
    };
    Ok(CandleBackend { maxpool })
}

#[cfg(feature = "torch")]
fn torch_factory(_: &Settings) -> Result<Box<dyn Backend>> {
    Ok(Box::new(super::TorchBackend::new()))
}

#[cfg(not(feature = "torch"))]
fn torch_factory(_: &Settings) -> Result<Box<dyn Backend>> {
    Err(Error::Unavailable("torch".into(), TORCH_BUILD_HINT.into()))
}
