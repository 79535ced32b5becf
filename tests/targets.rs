//! Every test file in this directory is a target of this crate: a file missing from
//! tests/Cargo.toml would never be built or run, and nothing else would say so.

#[test]
fn every_test_file_is_listed_in_cargo_toml() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let manifest = std::fs::read_to_string(format!("{dir}/Cargo.toml")).unwrap();
    let mut missing = Vec::new();
    let mut files = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".rs") {
            files += 1;
            if !manifest.contains(&format!("path = \"{name}\"")) {
                missing.push(name);
            }
        }
    }
    assert!(files > 20, "found only {files} test files in {dir}");
    assert!(
        missing.is_empty(),
        "not listed as [[test]] in tests/Cargo.toml (never run): {missing:?}"
    );
}
