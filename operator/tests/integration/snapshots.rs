//! Snapshot tests of every object the operator builds for the sample jobs
//! (config/samples) and the test fixtures (operator/tests/fixtures), and the
//! check that the chart ships the generated CRD.
//!
//! Snapshots live in operator/tests/snapshots/<namespace>-<name>/<kind>.yaml.
//! After an intended change, regenerate them with
//! `UPDATE_SNAPSHOTS=1 cargo test -p weir-operator --test integration snapshots` and
//! review the diff.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use weir_operator::builders::Settings;
use weir_operator::render::render_text;

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn updating() -> bool {
    std::env::var_os("UPDATE_SNAPSHOTS").is_some_and(|v| v == "1")
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn built_objects_match_the_snapshots() {
    let settings = Settings {
        worker_image: "ghcr.io/weir-dev/weir-worker:snapshot".into(),
    };
    let snapshots = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots");
    let mut inputs = yaml_files(&repository().join("config/samples"));
    inputs.extend(yaml_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"),
    ));
    assert!(inputs.len() >= 2, "no samples found");

    let mut drift = Vec::new();
    let mut seen = BTreeSet::new();
    for input in &inputs {
        let text = std::fs::read_to_string(input).unwrap();
        let jobs = render_text(&input.display().to_string(), &text, &settings)
            .unwrap_or_else(|e| panic!("{e}"));
        for job in jobs {
            let dir = snapshots.join(&job.id);
            assert!(seen.insert(job.id.clone()), "two jobs named {}", job.id);
            for (name, body) in job.files {
                let path = dir.join(name);
                if updating() {
                    std::fs::create_dir_all(&dir).unwrap();
                    std::fs::write(&path, &body).unwrap();
                } else if std::fs::read_to_string(&path).ok().as_deref() != Some(body.as_str()) {
                    drift.push(path.display().to_string());
                }
            }
        }
    }
    // Snapshots of jobs that no longer exist are drift too.
    for entry in std::fs::read_dir(&snapshots).unwrap() {
        let entry = entry.unwrap();
        let id = entry.file_name().to_string_lossy().into_owned();
        if entry.path().is_dir() && !seen.contains(&id) {
            if updating() {
                std::fs::remove_dir_all(entry.path()).unwrap();
            } else {
                drift.push(format!("{} (no such job)", entry.path().display()));
            }
        }
    }
    assert!(
        drift.is_empty(),
        "built objects differ from the snapshots (run with UPDATE_SNAPSHOTS=1 and review the diff):\n  {}",
        drift.join("\n  ")
    );
}

#[test]
fn chart_crd_is_the_generated_one() {
    let path = repository().join("charts/weir-operator/crds/streamingjob.yaml");
    let generated = weir_crds::crd::definition_yaml();
    if updating() {
        std::fs::write(&path, &generated).unwrap();
    }
    let shipped = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        shipped == generated,
        "{} differs from `weir crd`; regenerate it with \
         `cargo run -p weir-operator -- crd > charts/weir-operator/crds/streamingjob.yaml`",
        path.display()
    );
}
