#![allow(dead_code)]
use std::path::PathBuf;

/// The shared fixtures folder (`../shared` next to the crate), or `None` with
/// a printed notice when it is absent. Under `CI=true` its absence is a
/// failure instead.
pub fn shared_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared"));
    if dir.is_dir() {
        return Some(dir);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "CI=true but the shared fixtures are missing at {}",
            dir.display()
        );
    }
    eprintln!("skipping: shared fixtures not found at {}", dir.display());
    None
}

/// `../shared/golden/<case>`, when present.
pub fn golden_case(case: &str) -> Option<PathBuf> {
    shared_dir().map(|d| d.join("golden").join(case))
}
