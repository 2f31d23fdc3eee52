//! backprop-parity: does a handwritten backpropagation engine compute what real autograd
//! computes, and where exactly does it stop doing so?
//!
//! - [`engine`]: the from-scratch engine (tensors on `ndarray`, a recorded graph,
//!   handwritten backward rules).
//! - [`data`]: MNIST / Fashion-MNIST loading, normalisation, seeded batches and dropout masks.
//! - [`models`]: what is computed, defined once as data.
//! - [`backends`]: one `Backend` trait; the engine, candle and libtorch adapters.
//! - [`parity`]: comparison metrics, tolerances, trace diffs, verdicts.
//! - [`report`]: JSON, Markdown and SVG output.
//! - [`study`]: the studies that tie them together (what `parity-report` runs).
//! - [`paths`]: where the shipped data and baseline are found at run time.

pub mod backends;
pub mod data;
pub mod dtype;
pub mod engine;
pub mod error;
pub mod host;
pub mod models;
pub mod parity;
pub mod paths;
pub mod report;
pub mod study;

pub use dtype::DType;
pub use error::{Error, Result};
pub use host::HostTensor;
