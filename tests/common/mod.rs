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

/// The tiny fixture model folder, or `None` (skip) when the shared fixtures are
/// absent.
pub fn tiny_model() -> Option<PathBuf> {
    let dir = shared_dir()?.join("golden/tiny-v1/model");
    assert!(
        dir.is_dir(),
        "{} is missing from the shared fixtures",
        dir.display()
    );
    Some(dir)
}
