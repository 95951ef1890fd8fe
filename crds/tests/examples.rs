//! Every example under `examples/` is valid, and every file under `examples/invalid/` is
//! refused with the error its `# expect:` line names — by the shared validation and, where the
//! schema can express the check, by the CRD's CEL rules too.

use std::path::{Path, PathBuf};

use mirrornet_api::MirrorNetwork;
use mirrornet_api::file::{FileError, load_path};

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn valid_examples_load_and_pass_cel() {
    let files = yaml_files(&examples_dir());
    assert!(
        files.len() >= 3,
        "seed, three sides and IPv6 examples exist"
    );
    for file in files {
        let loaded = load_path(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for net in loaded {
            net.object.validate_cel().unwrap_or_else(|e| {
                panic!("{}: CEL rejects a valid example: {e:?}", file.display())
            });
        }
    }
}

#[test]
fn invalid_examples_fail_with_the_expected_error() {
    let files = yaml_files(&examples_dir().join("invalid"));
    assert!(files.len() >= 8);
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let expect = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} has no '# expect:' line", file.display()));
        match load_path(&file) {
            Err(FileError::Invalid { errors, .. }) => {
                let shown = errors.to_string();
                assert!(
                    shown.contains(expect),
                    "{}: expected error containing\n  {expect}\ngot\n  {shown}",
                    file.display()
                );
            }
            other => panic!(
                "{}: expected a validation error, got {other:?}",
                file.display()
            ),
        }
    }
}

/// The same invalid specs that the shared validation refuses are refused by the CEL rules in
/// the CRD, so `kubectl apply` stops them before any controller runs — except misspelt
/// fields, which the API server prunes instead.
#[test]
fn cel_rules_refuse_the_invalid_examples() {
    for file in yaml_files(&examples_dir().join("invalid")) {
        if file.ends_with("misspelt-field.yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let object: MirrorNetwork =
            serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let schema_ok = schema_accepts(&object);
        let cel = object.validate_cel();
        assert!(
            cel.is_err() || !schema_ok,
            "{}: neither CEL nor the structural schema rejects it",
            file.display()
        );
    }
}

/// Limits the structural schema itself enforces (minItems, maxLength): checked here by hand
/// because the client-side CEL evaluator only runs CEL rules.
fn schema_accepts(object: &MirrorNetwork) -> bool {
    object.spec.sides.len() >= 2 && object.spec.sides.iter().all(|s| s.interface.len() <= 15)
}
