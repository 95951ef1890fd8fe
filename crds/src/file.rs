//! Reading MirrorNetworks from a file, for the agent's file mode and for tests.
//!
//! A file holds one or more YAML (or JSON) documents, each a complete MirrorNetwork object as
//! `kubectl apply -f` would take it. Unlike the API server, which prunes unknown fields, a file
//! has no schema in front of it, so a misspelt field is an error here rather than a silent
//! default.

use std::collections::BTreeSet;

use serde::de::DeserializeOwned;

use crate::v1alpha1::MirrorNetwork;
use crate::validation::{FieldError, ValidNetwork, validate};

/// Why a file was refused.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not valid YAML: {message}")]
    Syntax { path: String, message: String },
    #[error("{path}: holds no MirrorNetwork")]
    Empty { path: String },
    #[error("{path}: document {document} ({name}): {errors}")]
    Invalid {
        path: String,
        /// 1-based index of the document in the file.
        document: usize,
        /// `metadata.name`, or `<unnamed>`.
        name: String,
        errors: crate::validation::SpecErrors,
    },
}

/// A network read from a file and validated.
#[derive(Debug, Clone)]
pub struct LoadedNetwork {
    pub object: MirrorNetwork,
    pub valid: ValidNetwork,
}

impl LoadedNetwork {
    pub fn name(&self) -> &str {
        self.object.metadata.name.as_deref().unwrap_or_default()
    }
}

/// Reads and validates every MirrorNetwork in the file at `path`.
pub fn load_path(path: &std::path::Path) -> Result<Vec<LoadedNetwork>, FileError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: shown.clone(),
        source,
    })?;
    load_str(&shown, &text)
}

/// Parses and validates every MirrorNetwork in `text`; `path` only names the source in errors.
pub fn load_str(path: &str, text: &str) -> Result<Vec<LoadedNetwork>, FileError> {
    let documents: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(text).map_err(|e| FileError::Syntax {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    let documents: Vec<serde_json::Value> =
        documents.into_iter().filter(|d| !d.is_null()).collect();
    if documents.is_empty() {
        return Err(FileError::Empty {
            path: path.to_owned(),
        });
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (i, doc) in documents.into_iter().enumerate() {
        let name = doc
            .pointer("/metadata/name")
            .and_then(|n| n.as_str())
            .unwrap_or("<unnamed>")
            .to_owned();
        let invalid = |errors: Vec<FieldError>| FileError::Invalid {
            path: path.to_owned(),
            document: i + 1,
            name: name.clone(),
            errors: crate::validation::SpecErrors(errors),
        };
        let loaded = parse_document(doc, &mut seen).map_err(invalid)?;
        out.push(loaded);
    }
    Ok(out)
}

/// `x` of serde's "missing field `x`".
fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.split('`').next()
}

fn field(field: impl Into<String>, reason: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        reason: reason.into(),
    }
}

fn parse_document(
    doc: serde_json::Value,
    seen: &mut BTreeSet<String>,
) -> Result<LoadedNetwork, Vec<FieldError>> {
    let api_version = doc.get("apiVersion").and_then(|v| v.as_str());
    if api_version != Some("mirrornet.io/v1alpha1") {
        return Err(vec![field(
            "apiVersion",
            format!("is {api_version:?}; expected \"mirrornet.io/v1alpha1\""),
        )]);
    }
    let kind = doc.get("kind").and_then(|v| v.as_str());
    if kind != Some("MirrorNetwork") {
        return Err(vec![field(
            "kind",
            format!("is {kind:?}; expected \"MirrorNetwork\""),
        )]);
    }
    let object: MirrorNetwork = strict_from_value(doc)?;
    let name = object.metadata.name.clone().unwrap_or_default();
    if let Err(reason) = check_object_name(&name) {
        return Err(vec![field("metadata.name", reason)]);
    }
    if !seen.insert(name.clone()) {
        return Err(vec![field(
            "metadata.name",
            format!("{name:?} appears twice in the file"),
        )]);
    }
    let valid = validate(&object.spec).map_err(|e| e.0)?;
    Ok(LoadedNetwork { object, valid })
}

/// Deserializes with the path of the first type error and refuses fields the type does not
/// know (typos), naming each.
fn strict_from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, Vec<FieldError>> {
    let mut unknown = Vec::new();
    let mut note_unknown = |path: serde_ignored::Path<'_>| {
        let path = bracket_indices(&path.to_string());
        // Status is not the user's to write, and other metadata is Kubernetes' business.
        if !matches!(path.as_str(), "apiVersion" | "kind")
            && !path.starts_with("status")
            && !path.starts_with("metadata")
        {
            unknown.push(path)
        }
    };
    let de = serde_ignored::Deserializer::new(value, &mut note_unknown);
    let parsed: Result<T, _> = serde_path_to_error::deserialize(de);
    match parsed {
        Err(e) => {
            let path = e.path().to_string();
            let message = e.into_inner().to_string();
            // At the root the path is empty; a missing field then names itself.
            let path = match (path.as_str(), missing_field(&message)) {
                (".", Some(missing)) => missing.to_owned(),
                (".", None) => "(document)".to_owned(),
                _ => path,
            };
            Err(vec![field(path, message)])
        }
        Ok(_) if !unknown.is_empty() => Err(unknown
            .into_iter()
            .map(|p| field(p, "unknown field (misspelt?)"))
            .collect()),
        Ok(v) => Ok(v),
    }
}

/// Names of MirrorNetworks are DNS labels here (not full subdomains) because they name kernel
/// objects (nft chains) and must stay short.
pub fn check_object_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is missing; every MirrorNetwork needs a name".into());
    }
    crate::validation::SideName::new(name).map(|_| ())
}

/// `spec.sides.1.aliasPrefx` (serde_ignored's form) -> `spec.sides[1].aliasPrefx`, the form
/// every other error uses.
fn bracket_indices(path: &str) -> String {
    let mut out = String::new();
    for segment in path.split('.') {
        if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{segment}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(segment);
        }
    }
    out
}
