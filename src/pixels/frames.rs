//! Conversions between packed RGB24 frames and the model's pixel tensors
//! (`[n, 3, h, w]`, values in [-1, 1]), and the edge-replicate padding and
//! top-left cropping that let any frame size run on a model that needs
//! multiples of 128.

use candle_core::{DType, Device, Result, Tensor, bail};

/// Bytes per packed RGB24 pixel.
const CHANNELS: usize = 3;

/// A buffer of `len` copies of `value`, or an error naming `what` when the memory
/// cannot be had: a frame too large for the machine fails the stream instead of
/// aborting the process.
pub fn try_filled<T: Clone>(len: usize, value: T, what: &str) -> Result<Vec<T>> {
    let mut out = try_with_capacity(len, what)?;
    out.resize(len, value);
    Ok(out)
}

/// An empty buffer with room for exactly `len` values, or an error naming `what`.
pub fn try_with_capacity<T>(len: usize, what: &str) -> Result<Vec<T>> {
    let mut out = Vec::new();
    out.try_reserve_exact(len).map_err(|e| {
        candle_core::Error::Msg(format!(
            "{what}: could not allocate {} bytes ({e})",
            len.saturating_mul(std::mem::size_of::<T>())
        ))
    })?;
    Ok(out)
}

fn check_frame(what: &str, len: usize, width: usize, height: usize) -> Result<()> {
    let expected = width * height * CHANNELS;
    if len != expected {
        bail!("{what}: {len} bytes, expected {expected} for a {width}x{height} RGB24 frame");
    }
    Ok(())
}

/// Packs RGB24 frames into a `[n, 3, height, width]` f32 tensor on `device`,
/// each value `u8 / 255 * 2 - 1` computed in f32 as the reference does.
pub fn rgb_to_tensor(
    frames: &[&[u8]],
    width: usize,
    height: usize,
    device: &Device,
) -> Result<Tensor> {
    if frames.is_empty() {
        bail!("rgb_to_tensor: no frames");
    }
    if width == 0 || height == 0 {
        bail!("rgb_to_tensor: empty frame size {width}x{height}");
    }
    let plane = width * height;
    let mut data = try_filled(
        frames.len() * CHANNELS * plane,
        0f32,
        "rgb_to_tensor: the frames as floats",
    )?;
    for (index, (frame, planes)) in frames
        .iter()
        .zip(data.chunks_exact_mut(CHANNELS * plane))
        .enumerate()
    {
        check_frame(
            &format!("rgb_to_tensor frame {index}"),
            frame.len(),
            width,
            height,
        )?;
        for (pixel_index, pixel) in frame.chunks_exact(CHANNELS).enumerate() {
            for (channel, &value) in pixel.iter().enumerate() {
                planes[channel * plane + pixel_index] = f32::from(value) / 255.0 * 2.0 - 1.0;
            }
        }
    }
    Tensor::from_vec(data, (frames.len(), CHANNELS, height, width), device)
}

/// Unpacks a `[n, 3, h, w]` tensor in [-1, 1] (any float dtype, any device)
/// into n packed RGB24 frames: `round((x + 1) * 127.5)` in f32, ties to even
/// like `torch.round`, clamped to 0..=255.
pub fn tensor_to_rgb(t: &Tensor) -> Result<Vec<Vec<u8>>> {
    let (n, channels, height, width) = t.dims4()?;
    if channels != CHANNELS {
        bail!(
            "tensor_to_rgb: expected 3 channels, got shape {:?}",
            t.shape()
        );
    }
    if !t.dtype().is_float() {
        bail!(
            "tensor_to_rgb: expected a float tensor, got {:?}",
            t.dtype()
        );
    }
    // Interleave the channels on the tensor's own device, so that the host
    // receives the values already in packed RGB order.
    let values = t
        .to_dtype(DType::F32)?
        .permute((0, 2, 3, 1))?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let frame_len = height * width * CHANNELS;
    if frame_len == 0 {
        return Ok(vec![Vec::new(); n]);
    }
    values
        .chunks_exact(frame_len)
        .map(|frame| {
            let mut bytes = try_with_capacity(frame_len, "tensor_to_rgb: an output frame")?;
            bytes.extend(frame.iter().map(|&x| to_byte(x)));
            Ok(bytes)
        })
        .collect()
}

fn to_byte(x: f32) -> u8 {
    // NaN maps to 0 (`as u8` saturates and sends NaN to 0).
    ((x + 1.0) * 127.5).round_ties_even().clamp(0.0, 255.0) as u8
}

/// Grows a `width x height` RGB24 frame to `padded_width x padded_height` by
/// repeating its last column to the right and its last row below.
pub fn pad_frame_rgb(
    src: &[u8],
    width: usize,
    height: usize,
    padded_width: usize,
    padded_height: usize,
) -> Result<Vec<u8>> {
    check_frame("pad_frame_rgb source", src.len(), width, height)?;
    if width == 0 || height == 0 {
        bail!("pad_frame_rgb: cannot pad an empty {width}x{height} frame");
    }
    if padded_width < width || padded_height < height {
        bail!(
            "pad_frame_rgb: padded size {padded_width}x{padded_height} is smaller than the frame {width}x{height}"
        );
    }
    let row_len = width * CHANNELS;
    let padded_row_len = padded_width * CHANNELS;
    let mut out = try_with_capacity(padded_row_len * padded_height, "pad_frame_rgb")?;
    for row in src.chunks_exact(row_len) {
        out.extend_from_slice(row);
        let last_pixel = &row[row_len - CHANNELS..];
        for _ in width..padded_width {
            out.extend_from_slice(last_pixel);
        }
    }
    let last_row_start = out.len() - padded_row_len;
    for _ in height..padded_height {
        out.extend_from_within(last_row_start..last_row_start + padded_row_len);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(width: usize, height: usize) -> Vec<u8> {
        (0..width * height * CHANNELS)
            .map(|v| (v * 29 % 256) as u8)
            .collect()
    }

    fn flat(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    #[test]
    fn buffers_too_large_for_memory_are_errors_not_aborts() {
        let err = try_with_capacity::<u8>(usize::MAX, "a test buffer")
            .unwrap_err()
            .to_string();
        assert!(err.contains("a test buffer: could not allocate"), "{err}");
        // 3 * 2^60 bytes: the padding fails cleanly instead of aborting
        let err = pad_frame_rgb(&[1, 2, 3], 1, 1, 1 << 40, 1 << 20)
            .unwrap_err()
            .to_string();
        assert!(err.contains("pad_frame_rgb: could not allocate"), "{err}");
        assert_eq!(try_filled(4, 7u8, "small").unwrap(), vec![7; 4]);
    }

    #[test]
    fn rgb_to_tensor_layout_and_scale() {
        // 2x1 frame: pixel 0 = (0, 255, 51), pixel 1 = (102, 153, 204).
        let frame = [0u8, 255, 51, 102, 153, 204];
        let t = rgb_to_tensor(&[&frame, &frame], 2, 1, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[2, 3, 1, 2]);
        let expect = |u: u8| f32::from(u) / 255.0 * 2.0 - 1.0;
        // Channel-major: R of both pixels, then G, then B.
        let first: Vec<f32> = [0u8, 102, 255, 153, 51, 204].map(expect).to_vec();
        let values = flat(&t);
        assert_eq!(&values[..6], first.as_slice());
        assert_eq!(&values[6..], first.as_slice());
        assert_eq!(values[0], -1.0);
        assert_eq!(values[2], 1.0);
    }

    #[test]
    fn round_trip_is_lossless() {
        let frames = [
            pattern(7, 5),
            (0..=255u8).cycle().skip(3).take(105).collect(),
        ];
        let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        let t = rgb_to_tensor(&refs, 7, 5, &Device::Cpu).unwrap();
        assert_eq!(tensor_to_rgb(&t).unwrap(), frames.to_vec());
        let half = t.to_dtype(DType::BF16).unwrap();
        let back = tensor_to_rgb(&half).unwrap();
        let worst = back[0]
            .iter()
            .zip(&frames[0])
            .map(|(&a, &b)| a.abs_diff(b))
            .max();
        // bf16 keeps 8 significant bits: at most 1 step off after rounding.
        assert!(worst <= Some(1), "{worst:?}");
    }

    /// An f32 `x` for which `(x + 1) * 127.5` is exactly `target` (a tie).
    fn tie_input(target: f32) -> f32 {
        let guess = target / 127.5 - 1.0;
        (-64i32..=64)
            .map(|step| f32::from_bits(guess.to_bits().wrapping_add_signed(step)))
            .find(|&x| (x + 1.0) * 127.5 == target)
            .unwrap_or_else(|| panic!("no f32 input gives exactly {target}"))
    }

    fn one_pixel(x: f32) -> u8 {
        let t = Tensor::from_vec(vec![x; 3], (1, 3, 1, 1), &Device::Cpu).unwrap();
        let frames = tensor_to_rgb(&t).unwrap();
        assert_eq!(frames[0], vec![frames[0][0]; 3]);
        frames[0][0]
    }

    #[test]
    fn tensor_to_rgb_rounds_ties_to_even_and_clamps() {
        assert_eq!(one_pixel(0.0), 128); // 127.5
        assert_eq!(one_pixel(tie_input(128.5)), 128);
        assert_eq!(one_pixel(tie_input(129.5)), 130);
        assert_eq!(one_pixel(tie_input(200.5)), 200);
        assert_eq!(one_pixel(tie_input(253.5)), 254);
        assert_eq!(one_pixel(-1.0), 0);
        assert_eq!(one_pixel(1.0), 255);
        assert_eq!(one_pixel(-3.0), 0);
        assert_eq!(one_pixel(2.0), 255);
        assert_eq!(one_pixel(f32::NAN), 0);
    }

    #[test]
    fn tensor_to_rgb_interleaves_channels() {
        let planes: Vec<f32> = [0u8, 10, 20, 30, 40, 50]
            .iter()
            .map(|&u| f32::from(u) / 127.5 - 1.0)
            .collect();
        // [1, 3, 1, 2]: R = (0, 10), G = (20, 30), B = (40, 50).
        let t = Tensor::from_vec(planes, (1, 3, 1, 2), &Device::Cpu).unwrap();
        assert_eq!(
            tensor_to_rgb(&t).unwrap(),
            vec![vec![0, 20, 40, 10, 30, 50]]
        );
    }

    #[test]
    fn tensor_to_rgb_rejects_bad_shapes() {
        let t = Tensor::zeros((1, 4, 2, 2), DType::F32, &Device::Cpu).unwrap();
        assert!(tensor_to_rgb(&t).is_err());
        let t = Tensor::zeros((3, 2, 2), DType::F32, &Device::Cpu).unwrap();
        assert!(tensor_to_rgb(&t).is_err());
        let t = Tensor::zeros((1, 3, 2, 2), DType::U8, &Device::Cpu).unwrap();
        assert!(tensor_to_rgb(&t).is_err());
    }

    #[test]
    fn rgb_to_tensor_rejects_bad_frames() {
        let good = pattern(2, 2);
        let short = vec![0u8; 11];
        let err = rgb_to_tensor(&[&good, &short], 2, 2, &Device::Cpu).unwrap_err();
        assert!(err.to_string().contains("frame 1"), "{err}");
        assert!(rgb_to_tensor(&[], 2, 2, &Device::Cpu).is_err());
        assert!(rgb_to_tensor(&[&[]], 0, 2, &Device::Cpu).is_err());
    }

    #[test]
    fn pad_replicates_the_edges() {
        // 2x2 frame, pixels a b / c d, padded to 3x3.
        let src = [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4];
        let out = pad_frame_rgb(&src, 2, 2, 3, 3).unwrap();
        let pixels: Vec<u8> = out.chunks_exact(3).map(|p| p[0]).collect();
        assert_eq!(pixels, vec![1, 2, 2, 3, 4, 4, 3, 4, 4]);
        assert_eq!(pad_frame_rgb(&src, 2, 2, 2, 2).unwrap(), src.to_vec());
    }

    #[test]
    fn padding_keeps_the_frame_in_the_top_left() {
        let src = pattern(5, 3);
        let padded = pad_frame_rgb(&src, 5, 3, 128, 130).unwrap();
        assert_eq!(padded.len(), 128 * 130 * 3);
        for y in 0..3 {
            assert_eq!(
                &padded[y * 128 * 3..y * 128 * 3 + 15],
                &src[y * 15..y * 15 + 15]
            );
        }
    }

    #[test]
    fn pad_rejects_bad_sizes() {
        let src = pattern(4, 3);
        assert!(pad_frame_rgb(&src, 4, 3, 3, 3).is_err());
        assert!(pad_frame_rgb(&src, 4, 2, 8, 8).is_err());
        assert!(pad_frame_rgb(&[], 0, 0, 8, 8).is_err());
    }
}
