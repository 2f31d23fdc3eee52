//! The open set of backends. A backend is a value behind the `Backend` trait; this
//! registry gives each one a name, the facts a report records about it (framework and
//! version), how much its gradients are trusted when judging the others, and a factory
//! that builds it from its own settings. The built-in ones (engine, candle, libtorch,
//! burn) are registered here; a crate outside this one adds its engine with [`register`],
//! and from then on every study, report and gate takes it by name like any other
//! (`--backends engine,torch,mine`). No study names a concrete backend: they hold
//! `BackendKind`s and ask this registry.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, OnceLock, RwLock};

use serde::{Deserialize, Serialize};

use super::Backend;
use crate::error::{Error, Result};

/// A backend's name, as the command line, the reports and the records spell it. It is a
/// handle into the registry: cheap to copy, ordered by registration (the built-in ones
/// first, in the order engine, candle, torch, burn), serialised as its name.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKind {
    order: u32,
    name: &'static str,
}

/// Builds a backend from the settings addressed to it (`--backend-option NAME.KEY=VALUE`).
pub type Factory = Arc<dyn Fn(&Settings) -> Result<Box<dyn Backend>> + Send + Sync>;

/// The settings of one backend: key to value, as given on the command line.
pub type Settings = BTreeMap<String, String>;

/// What the registry knows about one backend.
///
/// ```
/// use backprop_parity::backends::{register, Backend, Registration};
/// # use backprop_parity::backends::{BackendKind, Executor};
/// # use backprop_parity::{dtype::DType, host::HostTensor, models::Program, error::Result};
/// # struct Mine;
/// # impl Backend for Mine {
/// #     fn kind(&self) -> BackendKind { BackendKind::named("doc_mine").unwrap() }
/// #     fn executor(&self, p: &Program, i: &[HostTensor], d: DType) -> Result<Box<dyn Executor>> {
/// #         BackendKind::ENGINE.create()?.executor(p, i, d)
/// #     }
/// # }
/// let kind = register(Registration::new("doc_mine", "my engine", "0.1", |_settings| {
///     Ok(Box::new(Mine) as Box<dyn Backend>)
/// }))
/// .unwrap();
/// assert_eq!(kind.name(), "doc_mine");
/// assert!(kind.is_built());
/// ```
#[derive(Clone)]
pub struct Registration {
    /// The name on the command line and in reports (letters, digits and `_`).
    pub name: &'static str,
    /// The framework it runs, as a report names it (`candle-core`, `libtorch`).
    pub framework: String,
    pub version: String,
    /// The binding between this crate and the framework, when there is one (`tch 0.26`).
    pub binding: Option<String>,
    /// How far its gradients are trusted to judge the others: the most trusted backend in
    /// a run is its reference (libtorch 3, candle and burn 2, the engine 1, yours 0).
    pub trust: u8,
    /// Why it cannot run in this build (a cargo feature left out), if it cannot.
    pub unavailable: Option<String>,
    /// The settings it accepts, with their values (`maxpool` → `builtin|exact`).
    pub settings: Vec<(&'static str, &'static str)>,
    /// Whether a study without `--backends` runs it (`BackendKind::defaults`). A built
    /// backend left out still runs wherever it is named, and the gate runs every
    /// backend its baseline lists.
    pub in_default_runs: bool,
    pub factory: Factory,
}

impl Registration {
    /// A backend with no settings, trust 0, available.
    pub fn new(
        name: &'static str,
        framework: impl Into<String>,
        version: impl Into<String>,
        factory: impl Fn(&Settings) -> Result<Box<dyn Backend>> + Send + Sync + 'static,
    ) -> Self {
        Registration {
            name,
            framework: framework.into(),
            version: version.into(),
            binding: None,
            trust: 0,
            unavailable: None,
            settings: Vec::new(),
            in_default_runs: true,
            factory: Arc::new(factory),
        }
    }
}

struct Entry {
    kind: BackendKind,
    reg: Registration,
}

fn registry() -> &'static RwLock<Vec<Entry>> {
    static REGISTRY: OnceLock<RwLock<Vec<Entry>>> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let entries = super::builtin::registrations()
            .into_iter()
            .enumerate()
            .map(|(i, reg)| Entry { kind: BackendKind { order: i as u32, name: reg.name }, reg })
            .collect();
        RwLock::new(entries)
    })
}

fn with_entry<T>(kind: BackendKind, f: impl FnOnce(&Registration) -> T) -> T {
    let entries = registry().read().unwrap_or_else(|e| e.into_inner());
    let entry = entries.iter().find(|e| e.kind == kind).expect("a BackendKind comes from the registry");
    f(&entry.reg)
}

/// Adds a backend; from then on `BackendKind::named(name)`, `--backends` and every study
/// take it. Fails when the name is taken or malformed.
///
/// ```
/// use backprop_parity::backends::{register, BackendKind, Registration};
///
/// // A name is taken once, and has no '-' (reports name pairs `a-b`).
/// let again = register(Registration::new("engine", "again", "0", |_| BackendKind::ENGINE.create()));
/// assert!(again.unwrap_err().to_string().contains("already registered"));
/// let dashed = register(Registration::new("my-engine", "mine", "0", |_| BackendKind::ENGINE.create()));
/// assert!(dashed.unwrap_err().to_string().contains("'-'"));
/// ```
pub fn register(reg: Registration) -> Result<BackendKind> {
    // No '-': pairs of backends are named `a-b` in every report and split on it.
    if reg.name.is_empty() || !reg.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(Error::Invalid(format!("backend name '{}': expected letters, digits or '_' ('-' joins the names of a pair)", reg.name)));
    }
    let mut entries = registry().write().unwrap_or_else(|e| e.into_inner());
    if entries.iter().any(|e| e.kind.name == reg.name) {
        return Err(Error::Invalid(format!("a backend named '{}' is already registered", reg.name)));
    }
    let kind = BackendKind { order: 1000 + entries.len() as u32, name: reg.name };
    entries.push(Entry { kind, reg });
    Ok(kind)
}

impl BackendKind {
    /// The harness's own engine: the subject of the mutation study and of the seed's
    /// study, the one every other backend is compared with in `bench`.
    pub const ENGINE: BackendKind = BackendKind { order: 0, name: "engine" };
    pub const CANDLE: BackendKind = BackendKind { order: 1, name: "candle" };
    pub const TORCH: BackendKind = BackendKind { order: 2, name: "torch" };
    pub const BURN: BackendKind = BackendKind { order: 3, name: "burn" };

    pub fn name(self) -> &'static str {
        self.name
    }

    /// The registered backend called `name`.
    ///
    /// ```
    /// use backprop_parity::backends::BackendKind;
    ///
    /// assert_eq!(BackendKind::named("candle"), Some(BackendKind::CANDLE));
    /// assert_eq!(BackendKind::named("nope"), None);
    /// ```
    pub fn named(name: &str) -> Option<BackendKind> {
        registry().read().unwrap_or_else(|e| e.into_inner()).iter().find(|e| e.kind.name == name).map(|e| e.kind)
    }

    /// Every registered backend, built or not, in registration order.
    pub fn all() -> Vec<BackendKind> {
        registry().read().unwrap_or_else(|e| e.into_inner()).iter().map(|e| e.kind).collect()
    }

    /// Every backend this build can run, engine first.
    pub fn built() -> Vec<BackendKind> {
        Self::all().into_iter().filter(|k| k.is_built()).collect()
    }

    /// What a study runs when no `--backends` is given: every built backend whose
    /// registration asks to be in default runs.
    ///
    /// ```
    /// use backprop_parity::backends::BackendKind;
    ///
    /// let defaults = BackendKind::defaults();
    /// assert_eq!(defaults[0], BackendKind::ENGINE);
    /// // burn is built by default but runs only where it is named (README, burn section).
    /// assert!(!defaults.contains(&BackendKind::BURN));
    /// assert!(defaults.iter().all(|k| BackendKind::built().contains(k)));
    /// ```
    pub fn defaults() -> Vec<BackendKind> {
        Self::built().into_iter().filter(|k| with_entry(*k, |r| r.in_default_runs)).collect()
    }

    pub fn is_built(self) -> bool {
        with_entry(self, |r| r.unavailable.is_none())
    }

    /// Why this build cannot run it, when it cannot (how to get a build that can).
    pub fn build_hint(self) -> String {
        with_entry(self, |r| r.unavailable.clone().unwrap_or_default())
    }

    /// How much its gradients are trusted (`Registration::trust`).
    pub fn trust(self) -> u8 {
        with_entry(self, |r| r.trust)
    }

    /// The framework, its version and its binding, as reports record them.
    pub fn framework(self) -> (String, String, Option<String>) {
        with_entry(self, |r| (r.framework.clone(), r.version.clone(), r.binding.clone()))
    }

    /// The autograd that judges the others: the most trusted of `kinds` (libtorch when
    /// built, else candle or burn, else the engine).
    ///
    /// ```
    /// use backprop_parity::backends::BackendKind;
    ///
    /// let kinds = [BackendKind::ENGINE, BackendKind::CANDLE];
    /// assert_eq!(BackendKind::reference_among(&kinds), Some(BackendKind::CANDLE));
    /// ```
    pub fn reference_among(kinds: &[BackendKind]) -> Option<BackendKind> {
        kinds.iter().copied().max_by_key(|k| (k.trust(), std::cmp::Reverse(*k)))
    }

    /// `kinds` from the most trusted to the least (ties in registration order).
    pub fn by_trust(kinds: &[BackendKind]) -> Vec<BackendKind> {
        let mut v = kinds.to_vec();
        v.sort_by_key(|k| (std::cmp::Reverse(k.trust()), *k));
        v
    }

    /// This backend with its default settings.
    pub fn create(self) -> Result<Box<dyn Backend>> {
        self.create_with(&BackendOptions::default())
    }

    /// This backend with the settings `options` address to it.
    pub fn create_with(self, options: &BackendOptions) -> Result<Box<dyn Backend>> {
        let (factory, unavailable, accepted) = with_entry(self, |r| (r.factory.clone(), r.unavailable.clone(), r.settings.clone()));
        if let Some(hint) = unavailable {
            return Err(Error::Unavailable(self.name.into(), hint));
        }
        let settings = options.of(self.name);
        for (key, value) in &settings {
            match accepted.iter().find(|(k, _)| k == key) {
                None if accepted.is_empty() => {
                    return Err(Error::Invalid(format!("--backend-option {}.{key}={value}: {} has no settings", self.name, self.name)))
                }
                None => {
                    let names: Vec<&str> = accepted.iter().map(|(k, _)| *k).collect();
                    return Err(Error::Invalid(format!(
                        "--backend-option {}.{key}={value}: {} has no setting '{key}' (it has {})",
                        self.name,
                        self.name,
                        names.join(", ")
                    )));
                }
                Some(_) => {}
            }
        }
        factory(&settings)
    }

    /// Parses `engine,candle,torch`; rejects unknown, repeated and unbuilt backends.
    ///
    /// ```
    /// use backprop_parity::backends::BackendKind;
    ///
    /// assert_eq!(BackendKind::parse_list("engine, candle").unwrap(), [BackendKind::ENGINE, BackendKind::CANDLE]);
    /// assert!(BackendKind::parse_list("engine,engine").is_err());
    /// assert!(BackendKind::parse_list("tensorflow").is_err());
    /// ```
    pub fn parse_list(s: &str) -> Result<Vec<BackendKind>> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim) {
            let kind: BackendKind = part.parse().map_err(Error::Invalid)?;
            if out.contains(&kind) {
                return Err(Error::Invalid(format!("--backends names '{part}' twice")));
            }
            if let Some(hint) = with_entry(kind, |r| r.unavailable.clone()) {
                return Err(Error::Unavailable(part.into(), hint));
            }
            out.push(kind);
        }
        Ok(out)
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

impl fmt::Debug for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

impl FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        BackendKind::named(s).ok_or_else(|| {
            let names: Vec<&str> = BackendKind::all().iter().map(|k| k.name).collect();
            format!("--backends: unknown backend '{s}': expected one of {}", names.join(", "))
        })
    }
}

impl Serialize for BackendKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name)
    }
}

impl<'de> Deserialize<'de> for BackendKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        BackendKind::named(&name).ok_or_else(|| serde::de::Error::custom(format!("unknown backend '{name}'")))
    }
}

impl schemars::JsonSchema for BackendKind {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "BackendKind".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "string", "description": "a registered backend's name (engine, candle, torch, burn, or one a user registered)" })
    }
}

/// Settings that change how a backend runs (not what it runs), per backend: candle's
/// max-pool backward is `candle` → `maxpool` → `builtin|exact`. Each backend reads and
/// checks its own (`--backend-option NAME.KEY=VALUE`); studies only carry them.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct BackendOptions(pub BTreeMap<String, Settings>);

impl BackendOptions {
    /// These options with `backend.key = value` (checked when the backend is created).
    ///
    /// ```
    /// use backprop_parity::backends::{BackendKind, BackendOptions};
    ///
    /// let opts = BackendOptions::default().with("candle", "maxpool", "exact");
    /// assert_eq!(opts.of("candle").get("maxpool").map(String::as_str), Some("exact"));
    /// assert!(BackendKind::CANDLE.create_with(&opts).is_ok());
    /// let typo = BackendOptions::default().with("candle", "maxpol", "exact");
    /// assert!(BackendKind::CANDLE.create_with(&typo).is_err());
    /// ```
    pub fn with(mut self, backend: &str, key: &str, value: &str) -> Self {
        self.set(backend, key, value);
        self
    }

    pub fn set(&mut self, backend: &str, key: &str, value: &str) {
        self.0.entry(backend.into()).or_default().insert(key.into(), value.into());
    }

    /// The settings addressed to `backend`.
    pub fn of(&self, backend: &str) -> Settings {
        self.0.get(backend).cloned().unwrap_or_default()
    }

    /// Parses `NAME.KEY=VALUE` (one `--backend-option`).
    ///
    /// ```
    /// use backprop_parity::backends::{BackendKind, BackendOptions};
    ///
    /// let mut o = BackendOptions::default();
    /// o.parse_one("candle.maxpool=exact").unwrap();
    /// assert_eq!(o.of("candle").get("maxpool").map(String::as_str), Some("exact"));
    /// let candle = BackendKind::CANDLE.create_with(&o).unwrap();
    /// assert_eq!(candle.settings(), [("maxpool".to_string(), "exact".to_string())]);
    /// // A setting the backend does not have is refused, naming it.
    /// let bad = BackendOptions::default().with("candle", "speed", "max");
    /// assert!(bad.validate().unwrap_err().to_string().contains("no setting 'speed'"));
    /// ```
    pub fn parse_one(&mut self, s: &str) -> Result<()> {
        let bad = || Error::Invalid(format!("--backend-option '{s}': expected BACKEND.KEY=VALUE (e.g. candle.maxpool=exact)"));
        let (lhs, value) = s.split_once('=').ok_or_else(bad)?;
        let (backend, key) = lhs.split_once('.').ok_or_else(bad)?;
        if backend.is_empty() || key.is_empty() || value.is_empty() {
            return Err(bad());
        }
        BackendKind::from_str(backend).map_err(|e| Error::Invalid(format!("--backend-option '{s}': {}", e.trim_start_matches("--backends: "))))?;
        self.set(backend, key, value);
        Ok(())
    }

    /// Checks every setting with the backend it addresses (each backend built in this
    /// build is created once): an unknown key or value is an error naming it.
    pub fn validate(&self) -> Result<()> {
        for backend in self.0.keys() {
            let kind = BackendKind::from_str(backend).map_err(Error::Invalid)?;
            if kind.is_built() {
                kind.create_with(self)?;
            }
        }
        Ok(())
    }

    /// `candle maxpool=exact; ...`, or `defaults`.
    pub fn describe(&self) -> String {
        if self.0.is_empty() {
            return "defaults".into();
        }
        self.0
            .iter()
            .map(|(b, s)| format!("{b} {}", s.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")))
            .collect::<Vec<_>>()
            .join("; ")
    }
}
