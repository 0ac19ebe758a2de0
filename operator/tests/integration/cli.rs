//! The `weir crd` and `weir validate` commands as a user runs them.

use std::path::Path;
use std::process::Command;

fn weir() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weir"))
}

fn repository() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

#[test]
fn crd_prints_the_checked_in_definition() {
    let output = weir().arg("crd").output().unwrap();
    assert!(output.status.success());
    let checked_in = std::fs::read(repository().join("crds/streamingjob.yaml")).unwrap();
    assert!(
        output.stdout == checked_in,
        "crds/streamingjob.yaml differs from `weir crd`"
    );
}

#[test]
fn validate_accepts_the_samples() {
    let samples = repository().join("config/samples");
    let mut files: Vec<_> = std::fs::read_dir(&samples)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let output = weir().arg("validate").args(&files).output().unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "{stdout}");
    assert_eq!(stdout.lines().count(), files.len());
    assert!(
        stdout.lines().all(|line| line.ends_with(": valid")),
        "{stdout}"
    );
}

#[test]
fn validate_reports_each_problem_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.yaml");
    let sample =
        std::fs::read_to_string(repository().join("config/samples/clickstream-counts.yaml"))
            .unwrap();
    let broken = sample
        .replace("size: 1m", "size: 0s")
        .replace("topics: [clicks]", "topics: [clicks, clicks]");
    std::fs::write(&file, broken).unwrap();
    let output = weir().arg("validate").arg(&file).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let name = file.display();
    assert!(
        stdout.contains(&format!(
            "{name}: spec.source.topics[1]: \"clicks\" is listed twice"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "{name}: spec.pipeline[2].window.size: must be greater than 0"
        )),
        "{stdout}"
    );
}

#[test]
fn validate_reports_an_unreadable_file() {
    let output = weir()
        .args(["validate", "/nonexistent/job.yaml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        stdout.starts_with("/nonexistent/job.yaml: cannot read:"),
        "{stdout}"
    );
}

#[test]
fn render_writes_every_built_object_of_the_samples() {
    let dir = tempfile::tempdir().unwrap();
    let sample = repository().join("config/samples/clickstream-counts.yaml");
    let output = weir()
        .args(["render", "--output-dir"])
        .arg(dir.path())
        .arg(&sample)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let job = dir.path().join("analytics-clickstream-counts");
    for kind in [
        "secret",
        "configmap",
        "service",
        "statefulset",
        "poddisruptionbudget",
    ] {
        let file = job.join(format!("{kind}.yaml"));
        assert!(file.is_file(), "{} missing", file.display());
    }
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 5, "{stdout}");
}

#[test]
fn render_refuses_an_invalid_job() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.yaml");
    let sample =
        std::fs::read_to_string(repository().join("config/samples/clickstream-counts.yaml"))
            .unwrap();
    std::fs::write(&file, sample.replace("size: 1m", "size: 0s")).unwrap();
    let output = weir()
        .args(["render", "--output-dir"])
        .arg(dir.path().join("out"))
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("spec.pipeline[2].window.size: must be greater than 0"),
        "{stderr}"
    );
}
