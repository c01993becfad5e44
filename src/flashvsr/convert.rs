//! Pixel conversion between the negotiated raw format and the engine's packed RGB24,
//! done by gstreamer-video's converter (matrix, range and chroma siting from the caps).

use gst::glib;
use gst_video::prelude::*;
use gst_video::{VideoConverter, VideoFormat, VideoFrameRef, VideoInfo};

use crate::engine::RgbFrame;
use crate::pixels::frames::try_with_capacity;

/// Reads input buffers as packed RGB frames (the sink pad's streaming thread).
pub struct InputConverter {
    in_info: VideoInfo,
    /// RGB at the input size, GStreamer's layout (rows padded to 4 bytes).
    rgb_info: VideoInfo,
    /// `None` when the input is packed RGB already: its rows are copied out
    /// as they are.
    to_rgb: Option<VideoConverter>,
}

/// Writes packed RGB frames into output buffers (the model thread).
pub struct OutputConverter {
    out_info: VideoInfo,
    /// Packed RGB at the output size with the engine's rows (`width * 3` bytes),
    /// so that a frame's own bytes are the converter's source.
    rgb_info: VideoInfo,
    /// `None` when the output is that same packed RGB: the frame's bytes are
    /// the output buffer.
    from_rgb: Option<VideoConverter>,
}

/// The converters of one pair of caps, one per direction, built once.
pub fn converters(
    in_info: &VideoInfo,
    out_info: &VideoInfo,
) -> Result<(InputConverter, OutputConverter), glib::BoolError> {
    Ok((
        InputConverter::new(in_info)?,
        OutputConverter::new(out_info)?,
    ))
}

impl InputConverter {
    pub fn new(in_info: &VideoInfo) -> Result<Self, glib::BoolError> {
        let rgb_info = rgb_info_like(in_info, None)?;
        Ok(Self {
            to_rgb: match in_info.format() {
                VideoFormat::Rgb => None,
                _ => Some(VideoConverter::new(in_info, &rgb_info, None)?),
            },
            in_info: in_info.clone(),
            rgb_info,
        })
    }

    pub fn info(&self) -> &VideoInfo {
        &self.in_info
    }

    /// The input frame in `buffer` as packed RGB24 (stride `width * 3`).
    pub fn input_to_rgb(&self, buffer: &gst::BufferRef) -> Result<RgbFrame, glib::BoolError> {
        let input = VideoFrameRef::from_buffer_ref_readable(buffer, &self.in_info)?;
        let (width, height) = (self.in_info.width(), self.in_info.height());
        let row = width as usize * 3;
        let mut data = try_with_capacity(row * height as usize, "an RGB input frame")
            .map_err(|e| glib::bool_error!("{}", e))?;
        let mut copy_rows =
            |frame: &VideoFrameRef<&gst::BufferRef>| -> Result<(), glib::BoolError> {
                let stride = frame.plane_stride()[0] as usize;
                let plane = frame.plane_data(0)?;
                for y in 0..height as usize {
                    data.extend_from_slice(&plane[y * stride..y * stride + row]);
                }
                Ok(())
            };
        match &self.to_rgb {
            None => copy_rows(&input)?,
            Some(to_rgb) => {
                let mut rgb = gst::Buffer::with_size(self.rgb_info.size())?;
                {
                    let rgb_mut = rgb.make_mut();
                    let mut rgb_frame =
                        VideoFrameRef::from_buffer_ref_writable(rgb_mut, &self.rgb_info)?;
                    to_rgb.frame_ref(&input, &mut rgb_frame);
                }
                copy_rows(&VideoFrameRef::from_buffer_ref_readable(
                    &rgb,
                    &self.rgb_info,
                )?)?;
            }
        }
        Ok(RgbFrame {
            width,
            height,
            data,
        })
    }
}

impl OutputConverter {
    pub fn new(out_info: &VideoInfo) -> Result<Self, glib::BoolError> {
        let row = out_info.width() as usize * 3;
        let rgb_info = rgb_info_like(out_info, Some(row))?;
        let same = out_info.format() == VideoFormat::Rgb
            && out_info.stride()[0] as usize == row
            && out_info.size() == rgb_info.size();
        Ok(Self {
            from_rgb: match same {
                true => None,
                false => Some(VideoConverter::new(&rgb_info, out_info, None)?),
            },
            out_info: out_info.clone(),
            rgb_info,
        })
    }

    /// A new output buffer holding `frame`, which must have the output size:
    /// the frame's bytes themselves when the output is packed RGB with rows of
    /// `width * 3` bytes, else converted from them straight into the buffer.
    pub fn rgb_to_output(&self, frame: RgbFrame) -> Result<gst::Buffer, glib::BoolError> {
        let (width, height) = (self.out_info.width(), self.out_info.height());
        let row = width as usize * 3;
        if frame.width != width
            || frame.height != height
            || frame.data.len() != row * height as usize
        {
            return Err(glib::bool_error!(
                "engine returned a {}x{} frame of {} bytes, expected {}x{} packed RGB ({} bytes)",
                frame.width,
                frame.height,
                frame.data.len(),
                width,
                height,
                row * height as usize
            ));
        }
        let rgb = gst::Buffer::from_mut_slice(frame.data);
        let Some(from_rgb) = &self.from_rgb else {
            return Ok(rgb);
        };
        let rgb_frame = VideoFrameRef::from_buffer_ref_readable(&rgb, &self.rgb_info)?;
        let mut out = gst::Buffer::with_size(self.out_info.size())?;
        {
            let out_mut = out.make_mut();
            let mut out_frame = VideoFrameRef::from_buffer_ref_writable(out_mut, &self.out_info)?;
            from_rgb.frame_ref(&rgb_frame, &mut out_frame);
        }
        Ok(out)
    }
}

/// Packed RGB at `info`'s size, with its framerate and interlacing (the converter
/// requires both to match); RGB's own colorimetry (full range sRGB). Rows of
/// `row_bytes` when given (the engine's packed rows), else GStreamer's default
/// (padded to 4 bytes).
fn rgb_info_like(info: &VideoInfo, row_bytes: Option<usize>) -> Result<VideoInfo, glib::BoolError> {
    let builder = VideoInfo::builder(VideoFormat::Rgb, info.width(), info.height())
        .fps(info.fps())
        .par(info.par())
        .interlace_mode(info.interlace_mode());
    match row_bytes {
        Some(row) => {
            let stride = [row as i32];
            let offset = [0usize];
            let size = row * info.height() as usize;
            builder.stride(&stride).offset(&offset).size(size).build()
        }
        None => builder.build(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(format: VideoFormat, w: u32, h: u32) -> VideoInfo {
        VideoInfo::builder(format, w, h)
            .fps(gst::Fraction::new(25, 1))
            .build()
            .unwrap()
    }

    /// A packed RGB gradient whose rows are not a multiple of 4 bytes (width 5).
    fn gradient(w: u32, h: u32) -> RgbFrame {
        let mut data = Vec::new();
        for y in 0..h {
            for x in 0..w {
                data.extend_from_slice(&[(x * 40) as u8, (y * 30) as u8, 128]);
            }
        }
        RgbFrame {
            width: w,
            height: h,
            data,
        }
    }

    #[test]
    fn rgb_round_trip_is_exact_with_padded_rows() {
        gst::init().unwrap();
        let rgb = info(VideoFormat::Rgb, 5, 3);
        let (input, output) = converters(&rgb, &rgb).unwrap();
        let frame = gradient(5, 3);
        let buffer = output.rgb_to_output(frame.clone()).unwrap();
        assert_eq!(buffer.size(), rgb.size());
        let back = input.input_to_rgb(&buffer).unwrap();
        assert_eq!(back.data, frame.data);
    }

    #[test]
    fn bgrx_round_trip_swaps_channels_only() {
        gst::init().unwrap();
        let bgrx = info(VideoFormat::Bgrx, 5, 3);
        let (input, output) = converters(&bgrx, &bgrx).unwrap();
        let frame = gradient(5, 3);
        let buffer = output.rgb_to_output(frame.clone()).unwrap();
        let map = buffer.map_readable().unwrap();
        assert_eq!(&map[..4], &[128, 0, 0, map[3]]);
        assert_eq!(&map[4..7], &[128, 0, 40]);
        assert_eq!(input.input_to_rgb(&buffer).unwrap().data, frame.data);
    }

    /// gstreamer-video's 8-bit matrix truncates: videoconvert turns grey 100 into 97
    /// through I420 the same way, so that is the bound here.
    #[test]
    fn i420_round_trip_stays_close() {
        gst::init().unwrap();
        let i420 = info(VideoFormat::I420, 6, 4);
        let (input, output) = converters(&i420, &i420).unwrap();
        let grey = RgbFrame {
            width: 6,
            height: 4,
            data: vec![100; 6 * 4 * 3],
        };
        let back = input
            .input_to_rgb(&output.rgb_to_output(grey).unwrap())
            .unwrap();
        assert!(
            back.data.iter().all(|&v| v.abs_diff(100) <= 4),
            "{:?}",
            back.data
        );
    }

    #[test]
    fn wrong_frame_size_is_an_error() {
        gst::init().unwrap();
        let rgb = info(VideoFormat::Rgb, 5, 3);
        let (_, output) = converters(&rgb, &rgb).unwrap();
        let err = output.rgb_to_output(gradient(4, 3)).unwrap_err();
        assert!(err.to_string().contains("4x3"), "{err}");
    }

    /// Packed RGB whose rows need no padding goes out as the frame's own bytes;
    /// with padded rows (width 5) it is converted into GStreamer's layout.
    #[test]
    fn packed_rgb_output_is_the_frame_itself() {
        gst::init().unwrap();
        let rgb = info(VideoFormat::Rgb, 4, 3);
        let (_, output) = converters(&rgb, &rgb).unwrap();
        assert!(output.from_rgb.is_none());
        let frame = gradient(4, 3);
        let buffer = output.rgb_to_output(frame.clone()).unwrap();
        assert_eq!(&buffer.map_readable().unwrap()[..], &frame.data[..]);
        let padded = info(VideoFormat::Rgb, 5, 3);
        assert!(converters(&padded, &padded).unwrap().1.from_rgb.is_some());
    }
}
