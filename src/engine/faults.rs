//! Realistic backprop bugs that can be switched on at run time, so the harness can
//! measure its own power to catch them (`parity-report mutants`).
//!
//! A fault is active only on the thread that switched it on (tests run in parallel), and
//! checking one costs a thread-local read per op: nothing measurable when all are off.

use std::cell::Cell;

/// Each fault names where it lives (`site`): the op or layer a good localisation
/// should point at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    /// Matrix product: dB computed as (Aᵀ·G)ᵀ's transpose mix-up, i.e. Gᵀ·A.
    MatmulGradTransposed,
    /// The seed's bug: for `y = x·B` with a vector x, dB is the inner product x·g (one
    /// number for every entry) instead of the outer product.
    VecMatInnerProduct,
    /// A value used twice keeps only the last gradient instead of the sum.
    NoFanOutAccumulation,
    /// Backward visits nodes breadth-first from the loss instead of in reverse
    /// topological order.
    BreadthFirstOrder,
    /// Sigmoid's derivative taken on its input, `x(1-x)`, instead of its output.
    SigmoidDerivativeOnInput,
    /// ReLU lets the gradient through where its output is 0 (x <= 0 treated as active).
    ReluGradAtZeroFlipped,
    /// Batch-norm backward in training without the mean and variance terms.
    BatchNormNoMeanVarTerms,
    /// Running variance updated with the biased batch variance.
    RunningVarBiased,
    /// Dropout backward passes the gradient without the mask (only the scale).
    DropoutMaskIgnoredInBackward,
    /// Convolution weight gradient with the kernel flipped (true convolution instead of
    /// cross-correlation).
    ConvWeightGradFlipped,
    /// Max-pool sends the gradient to every position equal to the window's maximum.
    MaxPoolGradToAllTies,
    /// Cross-entropy (NLL) gradient not divided by the batch size.
    CrossEntropyGradUnscaled,
    /// Momentum with dampening: `v = m·v + (1 - m)·g`.
    MomentumWithDampening,
}

impl Fault {
    pub const ALL: [Fault; 13] = [
        Fault::MatmulGradTransposed,
        Fault::VecMatInnerProduct,
        Fault::NoFanOutAccumulation,
        Fault::BreadthFirstOrder,
        Fault::SigmoidDerivativeOnInput,
        Fault::ReluGradAtZeroFlipped,
        Fault::BatchNormNoMeanVarTerms,
        Fault::RunningVarBiased,
        Fault::DropoutMaskIgnoredInBackward,
        Fault::ConvWeightGradFlipped,
        Fault::MaxPoolGradToAllTies,
        Fault::CrossEntropyGradUnscaled,
        Fault::MomentumWithDampening,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::MatmulGradTransposed => "matmul-grad-transposed",
            Fault::VecMatInnerProduct => "vecmat-inner-product",
            Fault::NoFanOutAccumulation => "no-fan-out-accumulation",
            Fault::BreadthFirstOrder => "breadth-first-order",
            Fault::SigmoidDerivativeOnInput => "sigmoid-derivative-on-input",
            Fault::ReluGradAtZeroFlipped => "relu-grad-at-zero-flipped",
            Fault::BatchNormNoMeanVarTerms => "batchnorm-no-mean-var-terms",
            Fault::RunningVarBiased => "running-var-biased",
            Fault::DropoutMaskIgnoredInBackward => "dropout-mask-ignored-in-backward",
            Fault::ConvWeightGradFlipped => "conv-weight-grad-flipped",
            Fault::MaxPoolGradToAllTies => "maxpool-grad-to-all-ties",
            Fault::CrossEntropyGradUnscaled => "cross-entropy-grad-unscaled",
            Fault::MomentumWithDampening => "momentum-with-dampening",
        }
    }

    /// The op or layer kind the fault lives in.
    pub fn site(self) -> &'static str {
        match self {
            Fault::MatmulGradTransposed | Fault::VecMatInnerProduct => "matmul",
            Fault::NoFanOutAccumulation | Fault::BreadthFirstOrder => "graph",
            Fault::SigmoidDerivativeOnInput => "sigmoid",
            Fault::ReluGradAtZeroFlipped => "relu",
            Fault::BatchNormNoMeanVarTerms | Fault::RunningVarBiased => "batch_norm",
            Fault::DropoutMaskIgnoredInBackward => "dropout",
            Fault::ConvWeightGradFlipped => "conv2d",
            Fault::MaxPoolGradToAllTies => "max_pool2d",
            Fault::CrossEntropyGradUnscaled => "cross_entropy",
            Fault::MomentumWithDampening => "optimizer",
        }
    }

    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

/// JSON spells a fault as the command line does: `name()` is the one spelling.
impl serde::Serialize for Fault {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl schemars::JsonSchema for Fault {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Fault".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "string", "enum": Fault::ALL.map(Fault::name) })
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Fault::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| format!("unknown fault '{s}': expected one of {}", Fault::ALL.map(Fault::name).join(", ")))
    }
}

thread_local! {
    static ACTIVE: Cell<u32> = const { Cell::new(0) };
}

/// Whether `fault` is switched on for this thread.
#[inline]
pub fn on(fault: Fault) -> bool {
    ACTIVE.with(|a| a.get() & fault.bit() != 0)
}

/// The faults switched on for this thread, to hand to another thread with [`carry`].
pub fn active() -> u32 {
    ACTIVE.with(Cell::get)
}

/// Switches on exactly the set `active` (from [`active`] on another thread) for this
/// thread until the guard is dropped: the engine runs a step on its worker threads and
/// the faults of the caller must follow it there.
pub fn carry(active: u32) -> Guard {
    Guard { previous: ACTIVE.with(|a| a.replace(active)) }
}

/// Switches `fault` on for this thread until the guard is dropped.
pub fn inject(fault: Fault) -> Guard {
    let previous = ACTIVE.with(|a| a.replace(a.get() | fault.bit()));
    Guard { previous }
}

/// Restores the previous set of faults when dropped.
pub struct Guard {
    previous: u32,
}

impl Drop for Guard {
    fn drop(&mut self) {
        ACTIVE.with(|a| a.set(self.previous));
    }
}
