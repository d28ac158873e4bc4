//! The JSON Schema of `gust.yaml` (`gust schema`), generated from the same types the file is
//! read into, so an editor checks exactly what `gust apply` accepts.

use utoipa::{PartialSchema, ToSchema};

use super::spec::AppFile;

/// A JSON Schema (draft 2020-12) document for `gust.yaml`.
pub fn json_schema() -> serde_json::Value {
    let mut parts = Vec::new();
    <AppFile as ToSchema>::schemas(&mut parts);
    let definitions: serde_json::Map<String, serde_json::Value> = parts
        .into_iter()
        .map(|(name, schema)| {
            let value = serde_json::to_value(schema).expect("a schema is JSON");
            (name, value)
        })
        .collect();
    let mut document =
        serde_json::to_value(<AppFile as PartialSchema>::schema()).expect("a schema is JSON");
    let object = document.as_object_mut().expect("an object schema");
    object.insert(
        "$schema".into(),
        "https://json-schema.org/draft/2020-12/schema".into(),
    );
    object.insert("title".into(), "gust.yaml".into());
    object.insert("$defs".into(), definitions.into());
    // utoipa writes OpenAPI references; a JSON Schema keeps its definitions under $defs.
    let text = document
        .to_string()
        .replace("#/components/schemas/", "#/$defs/");
    serde_json::from_str(&text).expect("still JSON")
}
