//! Every sample in config/samples is a valid StreamingJob.

use std::path::Path;

use weir_crds::validate::parse_documents;

#[test]
fn every_sample_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/samples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with('#'),
            "{}: a sample opens with a comment saying what it computes",
            path.display()
        );
        let documents = parse_documents(&text);
        assert!(!documents.is_empty(), "{}: no StreamingJob", path.display());
        for document in documents {
            let problems: Vec<String> = document.problems.iter().map(ToString::to_string).collect();
            assert!(problems.is_empty(), "{}: {problems:#?}", path.display());
            checked += 1;
        }
    }
    assert!(
        checked >= 3,
        "expected at least three samples, found {checked}"
    );
}
