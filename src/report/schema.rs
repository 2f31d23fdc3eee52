//! The JSON Schema of every JSON output, generated from the Rust types that write it.
//! `parity-report schemas --out reference/schemas` writes them; a test checks that the
//! committed files are what the types generate, and validates every JSON the tests write.

use schemars::generate::SchemaSettings;
use schemars::JsonSchema;
use serde_json::Value;

use super::gate::CheckJson;
use super::Document;
use crate::study::abc::AbcStudy;
use crate::study::bench::BenchReport;
use crate::study::gate::Baseline;
use crate::study::grads::GradsStudy;
use crate::study::mnist::MnistStudy;
use crate::study::mutants::MutantsReport;
use crate::study::campaign::summary::StudySummary;
use crate::study::fuzz::FuzzReport;
use crate::study::run::RunStudy;

/// Every output kind with its schema, by file stem: `<kind>.schema.json`.
pub fn all() -> Vec<(&'static str, Value)> {
    vec![
        ("abc", document::<AbcStudy>("abc")),
        ("grads", document::<GradsStudy>("grads")),
        ("mnist", document::<MnistStudy>("mnist")),
        ("check", document::<CheckJson>("check")),
        ("mutants", document::<MutantsReport>("mutants")),
        ("bench", document::<BenchReport>("bench")),
        ("run", document::<RunStudy>("run")),
        ("study", document::<StudySummary>("study")),
        ("fuzz", document::<FuzzReport>("fuzz")),
        ("ops", document::<crate::study::ops::OpsReport>("ops")),
        ("baseline", finish::<Baseline>("reference/baseline.json: the gate's accepted metrics (`parity-report check --update-baseline`)")),
    ]
}

/// The schema of one kind's document: the envelope, with `kind` pinned to its name.
fn document<T: serde::Serialize + JsonSchema + 'static>(kind: &str) -> Value {
    let mut schema = finish::<Document<'static, T>>(&format!("parity-report {kind}: {kind}.json"));
    schema["properties"]["kind"] = serde_json::json!({ "const": kind });
    schema
}

fn finish<T: JsonSchema>(title: &str) -> Value {
    let generator = SchemaSettings::draft2020_12().into_generator();
    let mut schema = generator.into_root_schema_for::<T>().to_value();
    schema["title"] = Value::String(title.into());
    allow_null_numbers(&mut schema);
    close_objects(&mut schema);
    schema
}

/// Objects admit only the fields their type declares, so that a field written outside the
/// types (or renamed) fails validation instead of passing unseen.
fn close_objects(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            map.values_mut().for_each(close_objects);
        }
        Value::Array(items) => items.iter_mut().for_each(close_objects),
        _ => {}
    }
}

/// JSON has no NaN or infinity: serde_json writes a non-finite float as `null`, so every
/// float field also admits `null` (meaning "not a finite number", never agreement).
fn allow_null_numbers(v: &mut Value) {
    match v {
        Value::Object(map) => {
            match map.get_mut("type") {
                Some(t @ Value::String(_)) if t == "number" => *t = serde_json::json!(["number", "null"]),
                Some(Value::Array(types)) if types.iter().any(|t| t == "number") && !types.iter().any(|t| t == "null") => {
                    types.push(Value::String("null".into()))
                }
                _ => {}
            }
            map.values_mut().for_each(allow_null_numbers);
        }
        Value::Array(items) => items.iter_mut().for_each(allow_null_numbers),
        _ => {}
    }
}

/// The committed file's text for a schema (pretty, with a final newline).
pub fn to_text(schema: &Value) -> String {
    serde_json::to_string_pretty(schema).expect("a schema is plain JSON") + "\n"
}
