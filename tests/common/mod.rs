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

/// Panics listing every comparison of a golden run outside its bounds, after
/// `context` (the case, the path taken).
pub fn assert_comparisons_pass(
    context: &str,
    results: &[gstflashvsr::devtools::parity::Comparison],
) {
    let failed: Vec<String> = results
        .iter()
        .filter(|c| !c.ok)
        .map(|c| c.to_string())
        .collect();
    assert!(failed.is_empty(), "{context}:\n{}", failed.join("\n"));
}

/// A folder under the system temp dir, unique to this process and call,
/// removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// The path, not yet created.
    pub fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "gst-flashvsr-test-{}-{n}-{tag}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        Self(dir)
    }

    /// The folder, created empty.
    pub fn created(tag: &str) -> Self {
        let scratch = Self::new(tag);
        std::fs::create_dir_all(&scratch.0).expect("create scratch dir");
        scratch
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Takes `element` (a `flashvsr` that cannot start) to PAUSED, checks that the
/// state change fails, and returns the text of the error it posted.
pub fn start_error_text(element: &gst::Element) -> String {
    use gst::prelude::*;
    let bus = gst::Bus::new();
    element.set_bus(Some(&bus));
    assert!(element.set_state(gst::State::Paused).is_err());
    let msg = bus
        .pop_filtered(&[gst::MessageType::Error])
        .expect("an error message");
    element.set_state(gst::State::Null).unwrap();
    let gst::MessageView::Error(err) = msg.view() else {
        unreachable!()
    };
    err.error().to_string()
}

/// Initialises GStreamer and registers the plugin from this crate, once per
/// test binary.
pub fn init() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        gst::init().unwrap();
        gstflashvsr::plugin_register_static().expect("registering the flashvsr plugin");
    });
}

/// A model folder with the sizes of the `tiny-v1` fixture (DiT width 256, 2
/// blocks, LQ widths 48/64, decoder widths 48/32/16/16) and random weights
/// (`RandomModelSpec`), in the released file formats: what the element, engine,
/// tile and live tests run on, so that they need no `../shared`. Written once
/// into the build's temporary folder and shared by the test binaries.
pub fn tiny_model() -> PathBuf {
    random_model(11)
}

/// The folder of `tiny_model`'s sizes with the random weights of `seed`
/// (another model, for tests that switch weights).
pub fn random_model(seed: u64) -> PathBuf {
    use gstflashvsr::devtools::random_model::{RandomModelSpec, write_model_dir};
    static DIRS: std::sync::Mutex<Vec<(u64, PathBuf)>> = std::sync::Mutex::new(Vec::new());
    let mut dirs = DIRS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, dir)) = dirs.iter().find(|(s, _)| *s == seed) {
        return dir.clone();
    }
    let spec = RandomModelSpec::tiny_fixture(seed);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("tiny-model-seed-{seed}"));
    if !dir.join("posi_prompt.pth").is_file() {
        // written beside, then renamed: a test binary running at the same time
        // never reads half a folder
        let partial = dir.with_extension(format!("partial-{}", std::process::id()));
        write_model_dir(&spec, &partial).expect("writing a tiny model");
        if std::fs::rename(&partial, &dir).is_err() {
            let _ = std::fs::remove_dir_all(&partial);
        }
    }
    assert!(dir.join("posi_prompt.pth").is_file(), "{}", dir.display());
    dirs.push((seed, dir.clone()));
    dir
}
