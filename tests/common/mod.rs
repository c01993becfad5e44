//! Shared by the integration tests: where the fixtures live.

use std::path::PathBuf;

/// `../shared` (golden fixtures, media), or `None` with a printed note when it is
/// absent. Under `CI=true` its absence is a failure.
pub fn shared_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared"));
    if dir.is_dir() {
        return Some(dir);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{} is missing; CI must provide the fixtures", dir.display());
    }
    eprintln!("skipping: {} is absent", dir.display());
    None
}
