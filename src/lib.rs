//! gst-flashvsr: streaming video super-resolution with FlashVSR as a GStreamer
//! element. `model` is the network, `engine` turns it into frames in / frames out,
//! `flashvsr` is the element.

use gst::glib;

pub mod engine;
mod flashvsr;
pub mod model;

pub use flashvsr::{ColorFix, FlashVsr, MODEL_DIR_ENV, ModelVersion, Precision};

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    flashvsr::register(plugin)
}

gst::plugin_define!(
    flashvsr,
    env!("CARGO_PKG_DESCRIPTION"),
    plugin_init,
    concat!(env!("CARGO_PKG_VERSION"), "-", env!("COMMIT_ID")),
    "MIT/X11",
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_REPOSITORY"),
    env!("BUILD_REL_DATE")
);
