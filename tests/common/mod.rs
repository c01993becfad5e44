use std::path::PathBuf;

/// The shared fixtures folder (`../shared`), or `None` with a printed reason when it is
/// absent. With `CI=true` its absence is a failure.
pub fn shared_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared"));
    if dir.is_dir() {
        return Some(dir);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "CI=true but the shared fixtures folder {} is missing",
            dir.display()
        );
    }
    eprintln!(
        "skipping: shared fixtures folder {} is absent",
        dir.display()
    );
    None
}
