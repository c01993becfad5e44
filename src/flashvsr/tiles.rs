//! The element's side of the memory budget: at caps time the engine plans the
//! stream (whole frames or tiles, `engine::TilePlan`) and the choice is logged;
//! a size that does not fit even in the smallest tiles is refused by the caller.

use super::imp::CAT;
use crate::engine::{Engine, EngineError, TilePlan};

/// Plans a stream of `info`'s frame size and logs the plan (INFO) on `element`.
pub fn check_caps<T>(
    element: &gst::Element,
    engine: &Engine<T>,
    info: &gst_video::VideoInfo,
) -> Result<TilePlan, EngineError> {
    let plan = engine.plan(info.width(), info.height())?;
    gst::info!(
        CAT,
        obj = element,
        "{}x{} input: {plan}",
        info.width(),
        info.height()
    );
    Ok(plan)
}
