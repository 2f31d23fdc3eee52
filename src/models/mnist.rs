//! The seed study's nine MNIST models, defined once as data. Every backend executes the
//! same `ModelSpec`; parameter names follow the seed's PyTorch modules (`conv1.weight`,
//! `fc2_bn.running_var`, ...) so a PyTorch `state_dict` maps onto them one to one.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use super::program::{Op, Program, ValueId};
use super::rng::SplitMix64;
use crate::error::{Error, Result};
use crate::host::HostTensor;

pub const IMAGE_SIDE: usize = 28;
pub const PIXELS: usize = IMAGE_SIDE * IMAGE_SIDE;
pub const CLASSES: usize = 10;
/// Batch-norm settings of the seed (PyTorch's defaults).
pub const BN_EPS: f64 = 1e-5;
pub const BN_MOMENTUM: f64 = 0.1;
/// Dropout probability of the `_Dropout` variants.
pub const DROPOUT_P: f64 = 0.5;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, schemars::JsonSchema)]
pub enum Family {
    #[serde(rename = "CNN")]
    Cnn,
    #[serde(rename = "MLP")]
    Mlp,
    Softmax,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, schemars::JsonSchema)]
pub enum Variant {
    Plain,
    Dropout,
    BatchNorm,
}

/// One step of a model. Layers own their parameter names.
#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
#[serde(tag = "layer", rename_all = "snake_case")]
pub enum Layer {
    Conv2d { name: &'static str, in_ch: usize, out_ch: usize, kernel: usize, padding: usize },
    MaxPool2d { kernel: usize },
    Relu,
    Flatten,
    /// `site` numbers the dropout layers of a model from 0; the harness draws one mask
    /// per site and step and hands it to every backend.
    Dropout { site: usize, p: f64 },
    /// Over `[N, C]` (1-d) or `[N, C, H, W]` (2-d, `spatial`).
    BatchNorm { name: &'static str, features: usize, spatial: bool },
    Linear { name: &'static str, in_f: usize, out_f: usize },
    Softmax,
}

/// What kind of tensor a parameter is; decides its initialisation and whether the
/// optimiser updates it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ParamKind {
    Weight { fan_in: usize },
    Bias { fan_in: usize },
    BnWeight,
    BnBias,
    RunningMean,
    RunningVar,
}

impl ParamKind {
    pub fn trainable(self) -> bool {
        !matches!(self, ParamKind::RunningMean | ParamKind::RunningVar)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
pub struct ParamDecl {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: ParamKind,
}

#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct ModelSpec {
    pub name: String,
    pub family: Family,
    pub variant: Variant,
    pub layers: Vec<Layer>,
}

/// The seed's model names, in the seed's order.
pub const SEED_MODELS: [&str; 9] = [
    "CNN",
    "CNN_Dropout",
    "CNN_BatchNorm",
    "MLP",
    "MLP_Dropout",
    "MLP_BatchNorm",
    "Softmax",
    "Softmax_Dropout",
    "Softmax_BatchNorm",
];

impl FromStr for ModelSpec {
    type Err = Error;
    fn from_str(name: &str) -> Result<Self> {
        let (family, variant) = match name.split_once('_') {
            None => (name, Variant::Plain),
            Some((f, "Dropout")) => (f, Variant::Dropout),
            Some((f, "BatchNorm")) => (f, Variant::BatchNorm),
            Some(_) => return Err(unknown_model(name)),
        };
        let family = match family {
            "CNN" => Family::Cnn,
            "MLP" => Family::Mlp,
            "Softmax" => Family::Softmax,
            _ => return Err(unknown_model(name)),
        };
        Ok(ModelSpec::seed(family, variant))
    }
}

fn unknown_model(name: &str) -> Error {
    Error::Invalid(format!("--models: unknown model '{name}': expected one of {}", SEED_MODELS.join(", ")))
}

impl fmt::Display for ModelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl ModelSpec {
    /// The seed's architecture for a family and variant.
    pub fn seed(family: Family, variant: Variant) -> ModelSpec {
        let bn = variant == Variant::BatchNorm;
        let p = if variant == Variant::Dropout { DROPOUT_P } else { 0.0 };
        let mut b = Builder { layers: Vec::new(), sites: 0 };
        match family {
            Family::Cnn => {
                b.push(Layer::Conv2d { name: "conv1", in_ch: 1, out_ch: 16, kernel: 5, padding: 2 });
                b.push(Layer::Relu);
                b.push(Layer::MaxPool2d { kernel: 2 });
                b.push(Layer::Conv2d { name: "conv2", in_ch: 16, out_ch: 32, kernel: 5, padding: 2 });
                b.bn(bn, "conv2_bn", 32, true);
                b.push(Layer::Relu);
                b.push(Layer::MaxPool2d { kernel: 2 });
                b.push(Layer::Flatten);
                b.dropout(p);
                b.push(Layer::Linear { name: "fc1", in_f: 32 * 7 * 7, out_f: 120 });
                b.bn(bn, "fc1_bn", 120, false);
                b.push(Layer::Relu);
                b.dropout(p);
                b.push(Layer::Linear { name: "fc2", in_f: 120, out_f: 120 });
                b.bn(bn, "fc2_bn", 120, false);
                b.push(Layer::Relu);
                b.dropout(p);
                b.push(Layer::Linear { name: "fc3", in_f: 120, out_f: CLASSES });
            }
            Family::Mlp => {
                b.push(Layer::Flatten);
                b.push(Layer::Linear { name: "fc1", in_f: PIXELS, out_f: 120 });
                b.push(Layer::Relu);
                b.push(Layer::Linear { name: "fc2", in_f: 120, out_f: 120 });
                b.bn(bn, "fc2_bn", 120, false);
                b.push(Layer::Relu);
                b.dropout(p);
                b.push(Layer::Linear { name: "fc3", in_f: 120, out_f: 120 });
                b.bn(bn, "fc3_bn", 120, false);
                b.push(Layer::Relu);
                b.dropout(p);
                b.push(Layer::Linear { name: "fc4", in_f: 120, out_f: CLASSES });
            }
            Family::Softmax => {
                b.push(Layer::Flatten);
                b.dropout(p);
                b.bn(bn, "input_bn", PIXELS, false);
                b.push(Layer::Linear { name: "fc1", in_f: PIXELS, out_f: CLASSES });
                // The seed feeds these probabilities to a cross-entropy that applies
                // log-softmax again (a "double softmax"): reproduced on purpose.
                b.push(Layer::Softmax);
            }
        }
        let family_name = match family {
            Family::Cnn => "CNN",
            Family::Mlp => "MLP",
            Family::Softmax => "Softmax",
        };
        let name = match variant {
            Variant::Plain => family_name.to_string(),
            Variant::Dropout => format!("{family_name}_Dropout"),
            Variant::BatchNorm => format!("{family_name}_BatchNorm"),
        };
        ModelSpec { name, family, variant, layers: b.layers }
    }

    /// All nine, in the seed's order.
    pub fn all_seed() -> Vec<ModelSpec> {
        SEED_MODELS.iter().map(|n| n.parse().expect("seed names parse")).collect()
    }

    /// Parameters and batch-norm buffers in state_dict order.
    pub fn params(&self) -> Vec<ParamDecl> {
        let mut out = Vec::new();
        let decl = |name: &str, suffix: &str, shape: Vec<usize>, kind| ParamDecl { name: format!("{name}.{suffix}"), shape, kind };
        for layer in &self.layers {
            match *layer {
                Layer::Conv2d { name, in_ch, out_ch, kernel, .. } => {
                    let fan_in = in_ch * kernel * kernel;
                    out.push(decl(name, "weight", vec![out_ch, in_ch, kernel, kernel], ParamKind::Weight { fan_in }));
                    out.push(decl(name, "bias", vec![out_ch], ParamKind::Bias { fan_in }));
                }
                Layer::Linear { name, in_f, out_f } => {
                    out.push(decl(name, "weight", vec![out_f, in_f], ParamKind::Weight { fan_in: in_f }));
                    out.push(decl(name, "bias", vec![out_f], ParamKind::Bias { fan_in: in_f }));
                }
                Layer::BatchNorm { name, features, .. } => {
                    out.push(decl(name, "weight", vec![features], ParamKind::BnWeight));
                    out.push(decl(name, "bias", vec![features], ParamKind::BnBias));
                    out.push(decl(name, "running_mean", vec![features], ParamKind::RunningMean));
                    out.push(decl(name, "running_var", vec![features], ParamKind::RunningVar));
                }
                _ => {}
            }
        }
        out
    }

    /// Names of the trainable parameters, in the order backends report gradients.
    pub fn trainable_names(&self) -> Vec<String> {
        self.params().into_iter().filter(|p| p.kind.trainable()).map(|p| p.name).collect()
    }

    /// Shape of the activation entering each dropout site, for a batch of `n`.
    pub fn dropout_shapes(&self, n: usize) -> Vec<(usize, f64, Vec<usize>)> {
        let mut shape = vec![n, 1, IMAGE_SIDE, IMAGE_SIDE];
        let mut out = Vec::new();
        for layer in &self.layers {
            match *layer {
                Layer::Conv2d { out_ch, kernel, padding, .. } => {
                    let side = shape[2] + 2 * padding + 1 - kernel;
                    shape = vec![n, out_ch, side, side];
                }
                Layer::MaxPool2d { kernel } => shape = vec![n, shape[1], shape[2] / kernel, shape[3] / kernel],
                Layer::Flatten => shape = vec![n, shape[1..].iter().product()],
                Layer::Linear { out_f, .. } => shape = vec![n, out_f],
                Layer::Dropout { site, p } => out.push((site, p, shape.clone())),
                _ => {}
            }
        }
        out
    }

    /// The model as a program for a batch of `n`: inputs `x` `[n, 1, 28, 28]`, `labels`
    /// `[n]`, then every parameter and buffer under its state_dict name (state_dict
    /// order), then one mask per dropout site (`dropout<site>.mask`); nodes named after
    /// the seed's modules; output: the last layer's value (the logits), loss `loss` (mean cross-entropy).
    pub fn program(&self, n: usize) -> Program {
        let mut p = Program { description: Some(format!("the seed study's {} model, batch {n}", self.name)), ..Program::default() };
        let mut x = p.input("x", &[n, 1, IMAGE_SIDE, IMAGE_SIDE]);
        let labels = p.labels("labels", n);
        let mut ids = std::collections::HashMap::new();
        for d in self.params() {
            let v = if d.kind.trainable() { p.param(&d.name, &d.shape) } else { p.state(&d.name, &d.shape) };
            ids.insert(d.name.clone(), v);
        }
        let masks: Vec<ValueId> = {
            let mut sites = self.dropout_shapes(n);
            sites.sort_by_key(|s| s.0);
            sites.into_iter().map(|(site, _, shape)| p.state(&mask_name(site), &shape)).collect()
        };
        let get = |ids: &std::collections::HashMap<String, ValueId>, layer: &str, field: &str| ids[&format!("{layer}.{field}")].clone();
        let mut count: std::collections::HashMap<&'static str, usize> = std::collections::HashMap::new();
        let mut fresh = |op: &'static str| {
            let c = count.entry(op).or_insert(0);
            *c += 1;
            format!("{op}{c}")
        };
        for layer in &self.layers {
            x = match *layer {
                Layer::Conv2d { name, padding, .. } => {
                    let (w, b) = (get(&ids, name, "weight"), get(&ids, name, "bias"));
                    p.node(name, Op::Conv2d { stride: 1, padding, dilation: 1, groups: 1 }, &[Some(&x), Some(&w), Some(&b)])
                }
                Layer::MaxPool2d { kernel } => p.node(&fresh("pool"), Op::MaxPool2d { kernel, stride: Some(kernel), padding: 0, ceil_mode: false }, &[Some(&x)]),
                Layer::Relu => p.node(&fresh("relu"), Op::Relu {}, &[Some(&x)]),
                Layer::Flatten => p.node("flatten", Op::Flatten { start_dim: 1, end_dim: -1 }, &[Some(&x)]),
                Layer::Dropout { site, p: prob } => p.node(&format!("dropout{site}"), Op::Dropout { p: prob, training: true }, &[Some(&x), Some(&masks[site])]),
                Layer::BatchNorm { name, .. } => {
                    let [w, b, rm, rv] = ["weight", "bias", "running_mean", "running_var"].map(|f| get(&ids, name, f));
                    let op = Op::BatchNorm { training: true, momentum: BN_MOMENTUM, eps: BN_EPS };
                    p.node(name, op, &[Some(&x), Some(&w), Some(&b), Some(&rm), Some(&rv)])
                }
                Layer::Linear { name, .. } => {
                    let (w, b) = (get(&ids, name, "weight"), get(&ids, name, "bias"));
                    p.node(name, Op::Linear {}, &[Some(&x), Some(&w), Some(&b)])
                }
                Layer::Softmax => p.node("softmax", Op::Softmax { dim: 1 }, &[Some(&x)]),
            };
        }
        let loss = p.node("loss", Op::CrossEntropy { reduction: Default::default(), label_smoothing: 0.0 }, &[Some(&x), Some(&labels)]);
        p.set_loss(&loss);
        // The last layer's output: the logits (the softmax probabilities for Softmax models).
        p.add_output(&x);
        p
    }

    pub fn has_dropout(&self) -> bool {
        self.layers.iter().any(|l| matches!(l, Layer::Dropout { .. }))
    }
}

/// The program input that holds dropout site `site`'s mask.
pub fn mask_name(site: usize) -> String {
    format!("dropout{site}.mask")
}

struct Builder {
    layers: Vec<Layer>,
    sites: usize,
}

impl Builder {
    fn push(&mut self, l: Layer) {
        self.layers.push(l);
    }
    fn bn(&mut self, on: bool, name: &'static str, features: usize, spatial: bool) {
        if on {
            self.push(Layer::BatchNorm { name, features, spatial });
        }
    }
    /// Dropout with p = 0 is the identity, so the plain variants have no dropout layer.
    fn dropout(&mut self, p: f64) {
        if p > 0.0 {
            let site = self.sites;
            self.sites += 1;
            self.push(Layer::Dropout { site, p });
        }
    }
}

/// Named tensors: a model's parameters and buffers, or its gradients.
#[derive(Clone, Debug, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct ParamSet {
    pub tensors: Vec<(String, HostTensor)>,
}

impl ParamSet {
    pub fn get(&self, name: &str) -> Option<&HostTensor> {
        self.tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.iter().map(|(n, _)| n.as_str())
    }

    pub fn rounded(&self, dtype: crate::DType) -> ParamSet {
        ParamSet { tensors: self.tensors.iter().map(|(n, t)| (n.clone(), t.rounded(dtype))).collect() }
    }

    /// PyTorch's default initialisation, drawn from SplitMix64(seed) in state_dict order:
    /// Linear and Conv2d weights and biases uniform in ±1/sqrt(fan_in) (what
    /// kaiming_uniform with a = sqrt(5) amounts to), batch-norm weight 1 and bias 0,
    /// running mean 0 and running variance 1.
    pub fn init(spec: &ModelSpec, seed: u64) -> ParamSet {
        let mut rng = SplitMix64::new(seed);
        let tensors = spec
            .params()
            .into_iter()
            .map(|p| {
                let n: usize = p.shape.iter().product();
                let data = match p.kind {
                    ParamKind::Weight { fan_in } | ParamKind::Bias { fan_in } => {
                        let bound = 1.0 / (fan_in as f64).sqrt();
                        (0..n).map(|_| rng.uniform(-bound, bound)).collect()
                    }
                    ParamKind::BnWeight | ParamKind::RunningVar => vec![1.0; n],
                    ParamKind::BnBias | ParamKind::RunningMean => vec![0.0; n],
                };
                (p.name, HostTensor { shape: p.shape, data })
            })
            .collect();
        ParamSet { tensors }
    }

    /// Checks that every declared tensor is present with its shape; extra entries are an
    /// error too, except PyTorch's `num_batches_tracked`, which no backend uses.
    pub fn validate(&self, spec: &ModelSpec, origin: &str) -> Result<()> {
        for p in spec.params() {
            match self.get(&p.name) {
                None => return Err(Error::Invalid(format!("{origin}: {} needs tensor '{}' of shape {:?}; it is missing", spec.name, p.name, p.shape))),
                Some(t) if t.shape != p.shape => {
                    return Err(Error::Invalid(format!("{origin}: '{}' has shape {:?}; {} expects {:?}", p.name, t.shape, spec.name, p.shape)))
                }
                Some(t) if !t.all_finite() => return Err(Error::Invalid(format!("{origin}: '{}' holds NaN or infinity", p.name))),
                _ => {}
            }
        }
        let declared: Vec<String> = spec.params().into_iter().map(|p| p.name).collect();
        if let Some(extra) = self.names().find(|n| !declared.iter().any(|d| d == n) && !n.ends_with("num_batches_tracked")) {
            return Err(Error::Invalid(format!("{origin}: tensor '{extra}' is not a parameter of {}", spec.name)));
        }
        Ok(())
    }

    /// The subset of `spec`'s parameters in spec order (drops extras such as
    /// `num_batches_tracked`).
    pub fn ordered(&self, spec: &ModelSpec) -> Result<ParamSet> {
        self.validate(spec, "parameters")?;
        Ok(ParamSet { tensors: spec.params().into_iter().map(|p| (p.name.clone(), self.get(&p.name).expect("validated").clone())).collect() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_names_follow_the_seed_modules() {
        let cnn: ModelSpec = "CNN_BatchNorm".parse().unwrap();
        let names: Vec<String> = cnn.params().into_iter().map(|p| p.name).collect();
        assert!(names.contains(&"conv2_bn.running_var".to_string()));
        assert!(names.contains(&"fc2_bn.weight".to_string()));
        assert_eq!(ModelSpec::all_seed().len(), 9);
        let count: usize = cnn.params().iter().filter(|p| p.kind.trainable()).map(|p| p.shape.iter().product::<usize>()).sum();
        // conv1 416 + conv2 12832 + bn 64 + fc1 188280 + bn 240 + fc2 14520 + bn 240 + fc3 1210
        assert_eq!(count, 416 + 12832 + 64 + 188280 + 240 + 14520 + 240 + 1210);
    }

    #[test]
    fn dropout_sites_and_shapes() {
        let m: ModelSpec = "CNN_Dropout".parse().unwrap();
        let shapes = m.dropout_shapes(25);
        assert_eq!(shapes.iter().map(|s| s.2.clone()).collect::<Vec<_>>(), vec![vec![25, 1568], vec![25, 120], vec![25, 120]]);
        let s: ModelSpec = "Softmax_Dropout".parse().unwrap();
        assert_eq!(s.dropout_shapes(4)[0].2, vec![4, 784]);
        assert!(!"MLP".parse::<ModelSpec>().unwrap().has_dropout());
        assert!("MLP_Foo".parse::<ModelSpec>().is_err());
    }

    #[test]
    fn init_is_pytorch_default_and_deterministic() {
        let m: ModelSpec = "MLP_BatchNorm".parse().unwrap();
        let (a, b) = (ParamSet::init(&m, 3), ParamSet::init(&m, 3));
        assert_eq!(a, b);
        let w = a.get("fc1.weight").unwrap();
        let bound = 1.0 / (784f64).sqrt();
        assert!(w.data.iter().all(|v| v.abs() <= bound));
        assert_eq!(a.get("fc2_bn.running_var").unwrap().data, vec![1.0; 120]);
        a.validate(&m, "test").unwrap();
    }
}
