//! The `flashvsr` GStreamer element (see `docs/element.md`).

use gst::glib;
use gst::prelude::*;

mod caps;
mod convert;
mod enums;
mod imp;
mod late;
mod queue;
mod state;

pub use imp::MODEL_DIR_ENV;

glib::wrapper! {
    pub struct FlashVsr(ObjectSubclass<imp::FlashVsr>) @extends gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "flashvsr",
        gst::Rank::NONE,
        FlashVsr::static_type(),
    )
}
