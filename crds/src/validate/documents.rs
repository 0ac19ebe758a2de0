//! Reading StreamingJob manifests: YAML documents parsed with the path of
//! each error, validated, and reported as `weir validate` prints them.

use serde::de::DeserializeOwned;

use super::*;

/// One YAML document of a file, parsed and validated.
#[derive(Debug, Clone)]
pub struct Document {
    /// Position of the document in its file, from 1 (empty documents count).
    pub index: usize,
    /// The job, when the document could be read as one (even if invalid).
    pub job: Option<StreamingJob>,
    /// Everything wrong with the document; empty when it is valid.
    pub problems: Vec<Problem>,
}

/// Reads every StreamingJob in a YAML text (documents separated by `---`),
/// applies the defaults and validates each. Empty documents are skipped.
pub fn parse_documents(text: &str) -> Vec<Document> {
    let mut documents = Vec::new();
    for (position, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let index = position + 1;
        let value: serde_yaml::Value = match serde::Deserialize::deserialize(document) {
            Ok(value) => value,
            Err(error) => {
                documents.push(Document {
                    index,
                    job: None,
                    problems: vec![Problem::new("<document>", format!("not YAML: {error}"))],
                });
                // The YAML stream cannot be resynchronised after a syntax error.
                break;
            }
        };
        if value.is_null() {
            continue;
        }
        documents.push(parse_document(index, value));
    }
    documents
}

fn parse_document(index: usize, value: serde_yaml::Value) -> Document {
    let mut problems = Vec::new();
    let serde_yaml::Value::Mapping(mut fields) = value else {
        return Document {
            index,
            job: None,
            problems: vec![Problem::new("<document>", "must be a mapping")],
        };
    };
    let mut take = |name: &str| fields.remove(name);
    let api_version = take("apiVersion");
    let kind = take("kind");
    let metadata = take("metadata");
    let spec = take("spec");
    // A status in a manifest is ignored by the API server; accept it.
    take("status");
    match api_version.as_ref().and_then(|v| v.as_str()) {
        Some(API_VERSION) => {}
        Some(other) => problems.push(Problem::new(
            "apiVersion",
            format!("must be {API_VERSION}, not {other}"),
        )),
        None => problems.push(Problem::new(
            "apiVersion",
            format!("required ({API_VERSION})"),
        )),
    }
    match kind.as_ref().and_then(|v| v.as_str()) {
        Some(KIND) => {}
        Some(other) => problems.push(Problem::new("kind", format!("must be {KIND}, not {other}"))),
        None => problems.push(Problem::new("kind", format!("required ({KIND})"))),
    }
    for (key, _) in fields {
        let key = key.as_str().unwrap_or("<non-string key>").to_owned();
        problems.push(Problem::new(key, "unknown field"));
    }
    let metadata: Option<ObjectMeta> = match metadata {
        Some(value) => deserialize_at("metadata", value, &mut problems),
        None => {
            problems.push(Problem::new("metadata", "required"));
            None
        }
    };
    let spec: Option<StreamingJobSpec> = match spec {
        Some(value) => deserialize_at("spec", value, &mut problems),
        None => {
            problems.push(Problem::new("spec", "required"));
            None
        }
    };
    let job = match (metadata, spec) {
        (Some(metadata), Some(spec)) => {
            let mut job = StreamingJob::new("", spec);
            job.metadata = metadata;
            problems.extend(validate_job(&job));
            Some(job)
        }
        _ => None,
    };
    Document {
        index,
        job,
        problems,
    }
}

fn deserialize_at<T: DeserializeOwned>(
    root: &str,
    value: serde_yaml::Value,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    match serde_path_to_error::deserialize(value) {
        Ok(parsed) => Some(parsed),
        Err(error) => {
            let inner = error.path().to_string();
            let path = if inner == "." {
                root.to_owned()
            } else {
                format!("{root}.{inner}")
            };
            problems.push(Problem::new(path, error.into_inner().to_string()));
            None
        }
    }
}

/// The lines `weir validate` prints for one file: `FILE: valid`, or one line
/// per problem, `FILE: path: reason` (with the document number when the file
/// holds several documents). Returns the lines and whether the file is valid.
pub fn report(file: &str, text: &str) -> (Vec<String>, bool) {
    let documents = parse_documents(text);
    if documents.is_empty() {
        return (vec![format!("{file}: no StreamingJob in the file")], false);
    }
    let several = documents.len() > 1;
    let mut lines = Vec::new();
    for document in &documents {
        let origin = if several {
            format!("{file} (document {})", document.index)
        } else {
            file.to_owned()
        };
        lines.extend(
            document
                .problems
                .iter()
                .map(|problem| format!("{origin}: {problem}")),
        );
    }
    let valid = lines.is_empty();
    if valid {
        lines.push(format!("{file}: valid"));
    }
    (lines, valid)
}
