//! Caps of the two pads and the mapping between them: the src pad carries the sink
//! caps with width and height multiplied by the scale, every other field unchanged.

use gst::glib;
use gst_video::VideoFormat;

use crate::engine::SCALE_RANGE;

/// Raw formats accepted on the sink pad and produced on the src pad (always the same
/// on both). The 8-bit RGB and 4:2:0 formats come first; the others are what common
/// decoders output (4:2:2, 4:4:4, 10-bit), so `decodebin ! flashvsr` needs no
/// videoconvert. Frames go through 8-bit RGB in every case: the network works on it.
pub const FORMATS: [VideoFormat; 16] = [
    VideoFormat::I420,
    VideoFormat::Nv12,
    VideoFormat::Rgb,
    VideoFormat::Bgr,
    VideoFormat::Rgba,
    VideoFormat::Bgra,
    VideoFormat::Rgbx,
    VideoFormat::Bgrx,
    VideoFormat::Yv12,
    VideoFormat::Nv21,
    VideoFormat::Y42b,
    VideoFormat::Y444,
    VideoFormat::I42010le,
    VideoFormat::I42210le,
    VideoFormat::Y44410le,
    VideoFormat::P01010le,
];

/// Largest output width or height the element produces.
pub const MAX_OUTPUT_DIM: i32 = 8192;
/// Smallest scale factor: bounds the largest input the sink template admits.
const MIN_SCALE: u32 = *SCALE_RANGE.start();

pub fn sink_template_caps() -> gst::Caps {
    gst_video::VideoCapsBuilder::new()
        .format_list(FORMATS)
        .width_range(1..=MAX_OUTPUT_DIM / MIN_SCALE as i32)
        .height_range(1..=MAX_OUTPUT_DIM / MIN_SCALE as i32)
        .build()
}

pub fn src_template_caps() -> gst::Caps {
    gst_video::VideoCapsBuilder::new()
        .format_list(FORMATS)
        .width_range(MIN_SCALE as i32..=MAX_OUTPUT_DIM)
        .height_range(MIN_SCALE as i32..=MAX_OUTPUT_DIM)
        .build()
}

/// Direction of a caps mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Sink caps to the src caps they produce (dimensions times the scale).
    Upscale,
    /// Src caps to the sink caps that produce them (dimensions divided by the scale).
    Downscale,
}

/// Maps every structure of `caps` in `direction`. Structures whose width or height
/// has no counterpart (an output size not divisible by the scale, or an input too
/// large for `MAX_OUTPUT_DIM`) are dropped. ANY stays ANY.
pub fn transform(caps: &gst::CapsRef, direction: Direction, scale: u32) -> gst::Caps {
    if caps.is_any() {
        return gst::Caps::new_any();
    }
    let mut out = gst::Caps::new_empty();
    let out_mut = out.make_mut();
    for (structure, features) in caps.iter_with_features() {
        let mut mapped = structure.to_owned();
        let mut keep = true;
        for field in ["width", "height"] {
            let Ok(value) = structure.value(field) else {
                continue;
            };
            match map_dimension(value, direction, scale as i32) {
                Some(v) => mapped.set_value(field, v),
                None => keep = false,
            }
        }
        if keep {
            out_mut.append_structure_full(mapped, Some(features.to_owned()));
        }
    }
    out
}

/// Maps one width or height value (an int, an int range or a list of those).
fn map_dimension(
    value: &glib::SendValue,
    direction: Direction,
    scale: i32,
) -> Option<glib::SendValue> {
    if let Ok(v) = value.get::<i32>() {
        return map_range(v, v, direction, scale).map(range_value);
    }
    if let Ok(range) = value.get::<gst::IntRange<i32>>() {
        return map_range(range.min(), range.max(), direction, scale).map(range_value);
    }
    if let Ok(list) = value.get::<gst::List>() {
        let mapped: Vec<glib::SendValue> = list
            .as_slice()
            .iter()
            .filter_map(|v| map_dimension(v, direction, scale))
            .collect();
        return match mapped.len() {
            0 => None,
            1 => mapped.into_iter().next(),
            _ => Some(glib::SendValue::from_owned(gst::List::from_values(mapped))),
        };
    }
    None
}

/// Maps the interval `[min, max]`; `None` when nothing in it has a counterpart.
fn map_range(min: i32, max: i32, direction: Direction, scale: i32) -> Option<(i32, i32)> {
    let (lo, hi) = match direction {
        Direction::Upscale => (
            min.checked_mul(scale)?,
            max.saturating_mul(scale).min(MAX_OUTPUT_DIM),
        ),
        Direction::Downscale => ((min + scale - 1) / scale, max / scale),
    };
    (lo >= 1 && lo <= hi).then_some((lo, hi))
}

fn range_value((lo, hi): (i32, i32)) -> glib::SendValue {
    if lo == hi {
        glib::SendValue::from_owned(lo)
    } else {
        glib::SendValue::from_owned(gst::IntRange::new(lo, hi))
    }
}

/// The duration of one frame at `info`'s framerate, rounded down as
/// GStreamer's own elements compute it (`gst_util_uint64_scale (GST_SECOND,
/// d, n)`); `None` for a variable rate (0/1). The one place the element turns
/// a framerate into a duration.
pub fn frame_duration(info: &gst_video::VideoInfo) -> Option<gst::ClockTime> {
    let fps = info.fps();
    if fps.numer() <= 0 || fps.denom() <= 0 {
        return None;
    }
    use gst::prelude::MulDiv;
    gst::ClockTime::SECOND.mul_div_floor(fps.denom() as u64, fps.numer() as u64)
}

/// The src caps for fixed sink caps: the same structure with width and height times
/// `scale` (format, framerate, pixel-aspect-ratio, colorimetry, chroma-site carried).
pub fn output_caps(input: &gst::CapsRef, scale: u32) -> Option<gst::Caps> {
    let out = transform(input, Direction::Upscale, scale);
    (out.is_fixed()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init() {
        let _ = gst::init();
    }

    #[test]
    fn a_frame_lasts_one_over_the_rate_rounded_down() {
        init();
        let info = |rate: &str| {
            let caps: gst::Caps =
                format!("video/x-raw,format=I420,width=16,height=16,framerate={rate}")
                    .parse()
                    .unwrap();
            gst_video::VideoInfo::from_caps(&caps).unwrap()
        };
        assert_eq!(
            frame_duration(&info("25/1")),
            Some(gst::ClockTime::from_mseconds(40))
        );
        assert_eq!(
            frame_duration(&info("30000/1001")),
            Some(gst::ClockTime::from_nseconds(33_366_666))
        );
        assert_eq!(frame_duration(&info("0/1")), None);
    }

    #[test]
    fn fixed_sizes_scale_up_and_down() {
        init();
        let sink: gst::Caps = "video/x-raw,format=I420,width=176,height=144,framerate=25/1,pixel-aspect-ratio=12/11,colorimetry=bt601"
            .parse()
            .unwrap();
        let src = transform(&sink, Direction::Upscale, 4);
        let s = src.structure(0).unwrap();
        assert_eq!(s.get::<i32>("width").unwrap(), 704);
        assert_eq!(s.get::<i32>("height").unwrap(), 576);
        assert_eq!(
            s.get::<gst::Fraction>("framerate").unwrap(),
            gst::Fraction::new(25, 1)
        );
        assert_eq!(
            s.get::<gst::Fraction>("pixel-aspect-ratio").unwrap(),
            gst::Fraction::new(12, 11)
        );
        assert_eq!(s.get::<&str>("colorimetry").unwrap(), "bt601");
        assert_eq!(transform(&src, Direction::Downscale, 4), sink);
    }

    #[test]
    fn sizes_not_divisible_by_the_scale_have_no_input() {
        init();
        let src: gst::Caps = "video/x-raw,width=705,height=576".parse().unwrap();
        assert!(transform(&src, Direction::Downscale, 4).is_empty());
        let list: gst::Caps = "video/x-raw,width={ 705, 708 },height=576".parse().unwrap();
        let sink = transform(&list, Direction::Downscale, 4);
        assert_eq!(sink.structure(0).unwrap().get::<i32>("width").unwrap(), 177);
    }

    #[test]
    fn ranges_map_to_ranges_within_the_limits() {
        init();
        let src: gst::Caps = "video/x-raw,width=[16,2147483647],height=[1,100]"
            .parse()
            .unwrap();
        let sink = transform(&src, Direction::Downscale, 3);
        let s = sink.structure(0).unwrap();
        let w = s.get::<gst::IntRange<i32>>("width").unwrap();
        assert_eq!((w.min(), w.max()), (6, i32::MAX / 3));
        let h = s.get::<gst::IntRange<i32>>("height").unwrap();
        assert_eq!((h.min(), h.max()), (1, 33));

        let up = transform(&sink_template_caps(), Direction::Upscale, 4);
        let w = up
            .structure(0)
            .unwrap()
            .get::<gst::IntRange<i32>>("width")
            .unwrap();
        assert_eq!((w.min(), w.max()), (4, MAX_OUTPUT_DIM));
        let too_big: gst::Caps = "video/x-raw,width=4000,height=10".parse().unwrap();
        assert!(transform(&too_big, Direction::Upscale, 4).is_empty());
    }

    #[test]
    fn any_and_missing_fields_pass_through() {
        init();
        assert!(transform(&gst::Caps::new_any(), Direction::Downscale, 2).is_any());
        let no_size: gst::Caps = "video/x-raw,format=NV12".parse().unwrap();
        assert_eq!(transform(&no_size, Direction::Upscale, 2), no_size);
        let open_range: gst::Caps = "video/x-raw,format=NV12,width=[1,10],height=4"
            .parse()
            .unwrap();
        assert!(output_caps(&open_range, 2).is_none());
    }
}
