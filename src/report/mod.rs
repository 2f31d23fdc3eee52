//! Formatting only: JSON, Markdown and SVG built in memory from a study's result, then
//! written as one report set: `<out>/<kind>/` is replaced as a whole or not at all (see
//! `output`), so that a failed or killed run never leaves a half-written report.

pub mod abc;
pub mod bench;
pub mod fmt;
pub mod fuzz;
pub mod gate;
pub mod grads;
pub mod mnist;
pub mod ops;
pub mod output;
pub mod plot;
pub mod provenance;
pub mod run;
pub mod schema;
pub mod snippet;
pub mod study;

pub use output::{check_dir, check_json_target, check_out_dir, write_atomic, write_set, JsonTarget};
pub use provenance::{Provenance, SCHEMA_VERSION};

use schemars::JsonSchema;
use serde::Serialize;

use crate::error::{Error, Result};

/// One file of a report, fully rendered.
pub struct Output {
    pub file_name: String,
    pub contents: String,
}

/// A study's whole report: its JSON document, Markdown and plots. `kind` names the study
/// (`abc`, `grads`, ...), the folder the set goes into and the JSON's `kind` field.
pub struct ReportSet {
    pub kind: &'static str,
    pub outputs: Vec<Output>,
}

impl ReportSet {
    /// The set's JSON document (every report has one).
    pub fn json(&self) -> &str {
        let name = format!("{}.json", self.kind);
        &self.outputs.iter().find(|o| o.file_name == name).expect("every report set has its JSON document").contents
    }
}

/// The envelope of every JSON output: the layout's version, what it is, what produced
/// it, then the study's own fields.
#[derive(Serialize, JsonSchema)]
pub struct Document<'a, T: Serialize + JsonSchema> {
    /// Raised whenever a field changes meaning or goes (`SCHEMA_VERSION`).
    pub schema_version: u32,
    /// The study: abc, grads, mnist, check, mutants, bench, run.
    pub kind: &'a str,
    pub provenance: &'a Provenance,
    #[serde(flatten)]
    pub body: &'a T,
}

/// A set of files from a study's result: the JSON document and the Markdown (with the
/// provenance footer appended), then any plots.
pub fn set<T: Serialize + JsonSchema>(kind: &'static str, provenance: &Provenance, body: &T, markdown: String, plots: Vec<Output>) -> Result<ReportSet> {
    let doc = Document { schema_version: SCHEMA_VERSION, kind, provenance, body };
    let mut outputs = vec![
        Output { file_name: format!("{kind}.json"), contents: to_json(&doc)? },
        Output { file_name: format!("{kind}.md"), contents: markdown + &provenance.markdown_footer() },
    ];
    outputs.extend(plots);
    Ok(ReportSet { kind, outputs })
}

/// Pretty JSON; non-finite numbers become `null` (serde_json's rule), never a number.
pub fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string_pretty(value).map(|s| s + "\n").map_err(|e| Error::Invalid(format!("JSON encoding failed: {e}")))
}
