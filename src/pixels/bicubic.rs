//! Bicubic resize of packed RGB24 frames, bit-exact with Pillow's
//! `Image.resize(size, Image.BICUBIC)` (the pre-upscale the official FlashVSR
//! scripts apply to every low-resolution frame).
//!
//! Pillow resamples separably: a horizontal pass into an 8-bit image, then a
//! vertical pass. Each output sample is a fixed-point weighted sum of its
//! input window, rounded and clipped to 0..=255. A pass whose dimension does
//! not change is skipped, which matters for exactness: running it would still
//! be an identity only up to the filter's fixed-point rounding.

use super::frames::{try_filled, try_with_capacity};
use candle_core::{Result, bail};

/// Fractional bits of Pillow's fixed-point coefficients for 8-bit images:
/// 32 bits minus 8 for the sample and 2 of headroom for the filter's lobes.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's bicubic kernel uses `a = -0.5` (Keys' cubic convolution).
const BICUBIC_A: f64 = -0.5;

/// Radius of the bicubic kernel in input pixels, before scaling for downsizing.
const BICUBIC_SUPPORT: f64 = 2.0;

/// Bytes per packed RGB24 pixel.
const CHANNELS: usize = 3;

fn bicubic_kernel(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        ((BICUBIC_A + 2.0) * x - (BICUBIC_A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * BICUBIC_A
    } else {
        0.0
    }
}

/// Fixed-point filter taps of one resampling pass (one axis), computed the way
/// Pillow's `precompute_coeffs` and `normalize_coeffs_8bpc` do.
#[derive(Debug, Clone)]
struct AxisTaps {
    /// Taps stored per output sample (the widest window, zero-filled).
    stride: usize,
    /// First input index of each output sample's window.
    starts: Vec<usize>,
    /// Length of each output sample's window.
    lens: Vec<usize>,
    /// `out_size * stride` fixed-point weights.
    weights: Vec<i32>,
}

impl AxisTaps {
    fn new(in_size: usize, out_size: usize) -> Self {
        let scale = in_size as f64 / out_size as f64;
        // Shrinking widens the kernel so that it low-passes; enlarging keeps it.
        let filter_scale = scale.max(1.0);
        let support = BICUBIC_SUPPORT * filter_scale;
        let stride = support.ceil() as usize * 2 + 1;
        let inv_filter_scale = 1.0 / filter_scale;

        let mut starts = Vec::with_capacity(out_size);
        let mut lens = Vec::with_capacity(out_size);
        let mut weights = vec![0i32; out_size * stride];
        let mut taps = vec![0f64; stride];
        for (out_index, row) in weights.chunks_exact_mut(stride).enumerate() {
            let center = (out_index as f64 + 0.5) * scale;
            // `as i64` truncates toward zero like Pillow's C `(int)` cast.
            let start = ((center - support + 0.5) as i64).max(0) as usize;
            let end = ((center + support + 0.5) as i64).clamp(0, in_size as i64) as usize;
            let len = end.saturating_sub(start).min(stride);

            let mut total = 0.0;
            for (tap_index, tap) in taps[..len].iter_mut().enumerate() {
                let offset = (start + tap_index) as f64 - center + 0.5;
                *tap = bicubic_kernel(offset * inv_filter_scale);
                total += *tap;
            }
            for (fixed, &tap) in row.iter_mut().zip(&taps[..len]) {
                let normalised = if total != 0.0 { tap / total } else { tap };
                *fixed = to_fixed_point(normalised);
            }
            starts.push(start);
            lens.push(len);
        }
        Self {
            stride,
            starts,
            lens,
            weights,
        }
    }

    fn window(&self, out_index: usize) -> (usize, &[i32]) {
        let base = out_index * self.stride;
        let len = self.lens[out_index];
        (self.starts[out_index], &self.weights[base..base + len])
    }

    /// One past the last input index any output sample reads.
    fn input_end(&self) -> usize {
        self.starts
            .iter()
            .zip(&self.lens)
            .map(|(start, len)| start + len)
            .max()
            .unwrap_or(0)
    }
}

/// Rounds half away from zero, as Pillow's `(int)(x +/- 0.5)` does.
fn to_fixed_point(weight: f64) -> i32 {
    let scaled = weight * f64::from(1u32 << PRECISION_BITS);
    if weight < 0.0 {
        (scaled - 0.5) as i32
    } else {
        (scaled + 0.5) as i32
    }
}

/// Pillow's `clip8`: drop the fraction bits and saturate to a byte.
fn fixed_to_u8(accumulator: i32) -> u8 {
    (accumulator >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Rounding bias added to every accumulator (0.5 in fixed point).
const ROUNDING_BIAS: i32 = 1 << (PRECISION_BITS - 1);

/// A bicubic resize between two fixed frame sizes, with its filter taps
/// computed once so that it can be applied to every frame of a stream.
#[derive(Debug, Clone)]
pub struct BicubicResizer {
    width: usize,
    height: usize,
    dst_width: usize,
    dst_height: usize,
    /// `None` when the width is unchanged (Pillow skips that pass).
    horizontal: Option<AxisTaps>,
    /// `None` when the height is unchanged.
    vertical: Option<AxisTaps>,
}

impl BicubicResizer {
    /// Prepares a `width x height -> dst_width x dst_height` resize.
    /// Every size must be at least 1.
    pub fn new(width: usize, height: usize, dst_width: usize, dst_height: usize) -> Result<Self> {
        if width == 0 || height == 0 {
            bail!("bicubic resize: source size {width}x{height} is empty");
        }
        if dst_width == 0 || dst_height == 0 {
            bail!("bicubic resize: destination size {dst_width}x{dst_height} is empty");
        }
        let horizontal = (dst_width != width).then(|| AxisTaps::new(width, dst_width));
        let vertical = (dst_height != height).then(|| AxisTaps::new(height, dst_height));
        Ok(Self {
            width,
            height,
            dst_width,
            dst_height,
            horizontal,
            vertical,
        })
    }

    /// Source (width, height).
    pub fn src_size(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    /// Destination (width, height).
    pub fn dst_size(&self) -> (usize, usize) {
        (self.dst_width, self.dst_height)
    }

    /// Resizes one packed RGB24 frame of the source size.
    pub fn resize(&self, src: &[u8]) -> Result<Vec<u8>> {
        let expected = self.width * self.height * CHANNELS;
        if src.len() != expected {
            bail!(
                "bicubic resize: frame of {} bytes, expected {expected} for {}x{} RGB24",
                src.len(),
                self.width,
                self.height
            );
        }
        // Like Pillow, run the horizontal pass only on the rows the vertical
        // pass reads.
        let (first_row, row_end) = match &self.vertical {
            Some(taps) => (
                taps.starts.iter().copied().min().unwrap_or(0),
                taps.input_end(),
            ),
            None => (0, self.height),
        };
        let rows = &src[first_row * self.width * CHANNELS..row_end * self.width * CHANNELS];
        let widened = match &self.horizontal {
            Some(taps) => resample_rows(rows, self.width, taps, self.dst_width)?,
            None => {
                let mut copy = try_with_capacity(rows.len(), "bicubic resize")?;
                copy.extend_from_slice(rows);
                copy
            }
        };
        match &self.vertical {
            Some(taps) => resample_columns(&widened, self.dst_width, first_row, taps),
            None => Ok(widened),
        }
    }
}

/// Horizontal pass: every row of `src` (width `in_width`) to `out_width`.
fn resample_rows(
    src: &[u8],
    in_width: usize,
    taps: &AxisTaps,
    out_width: usize,
) -> Result<Vec<u8>> {
    let in_stride = in_width * CHANNELS;
    let row_count = src.len() / in_stride;
    let mut out = try_filled(
        row_count * out_width * CHANNELS,
        0u8,
        "bicubic resize: the widened rows",
    )?;
    for (src_row, out_row) in src
        .chunks_exact(in_stride)
        .zip(out.chunks_exact_mut(out_width * CHANNELS))
    {
        for (out_index, out_pixel) in out_row.chunks_exact_mut(CHANNELS).enumerate() {
            let (start, weights) = taps.window(out_index);
            let window = &src_row[start * CHANNELS..(start + weights.len()) * CHANNELS];
            let mut sums = [ROUNDING_BIAS; CHANNELS];
            for (pixel, &weight) in window.chunks_exact(CHANNELS).zip(weights) {
                for (sum, &sample) in sums.iter_mut().zip(pixel) {
                    *sum += i32::from(sample) * weight;
                }
            }
            for (dst, sum) in out_pixel.iter_mut().zip(sums) {
                *dst = fixed_to_u8(sum);
            }
        }
    }
    Ok(out)
}

/// Vertical pass: `src` holds rows `first_row..` of the image (packed, width
/// `width`); produces every output row.
fn resample_columns(
    src: &[u8],
    width: usize,
    first_row: usize,
    taps: &AxisTaps,
) -> Result<Vec<u8>> {
    let stride = width * CHANNELS;
    let out_rows = taps.starts.len();
    let mut out = try_filled(out_rows * stride, 0u8, "bicubic resize: the output frame")?;
    // Row-at-a-time accumulation keeps the inner loop contiguous (vectorisable).
    let mut sums = vec![0i32; stride];
    for (out_index, out_row) in out.chunks_exact_mut(stride).enumerate() {
        let (start, weights) = taps.window(out_index);
        sums.fill(ROUNDING_BIAS);
        for (tap_index, &weight) in weights.iter().enumerate() {
            let row_start = (start + tap_index - first_row) * stride;
            let src_row = &src[row_start..row_start + stride];
            for (sum, &sample) in sums.iter_mut().zip(src_row) {
                *sum += i32::from(sample) * weight;
            }
        }
        for (dst, &sum) in out_row.iter_mut().zip(&sums) {
            *dst = fixed_to_u8(sum);
        }
    }
    Ok(out)
}

/// Resizes a packed RGB24 frame like Pillow's `Image.resize((dst_width,
/// dst_height), Image.BICUBIC)`. For a stream, build a [`BicubicResizer`] once.
pub fn resize_rgb(
    src: &[u8],
    width: usize,
    height: usize,
    dst_width: usize,
    dst_height: usize,
) -> Result<Vec<u8>> {
    BicubicResizer::new(width, height, dst_width, dst_height)?.resize(src)
}

/// The size the official scripts upscale to: `(round(w * s), round(h * s))`
/// with Python's `round` (ties to even). Negative or non-finite products
/// saturate to 0, which [`BicubicResizer::new`] then rejects.
pub fn upscaled_size(width: usize, height: usize, scale: f64) -> (usize, usize) {
    let scaled = |size: usize| (size as f64 * scale).round_ties_even() as usize;
    (scaled(width), scaled(height))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_matches_keys_cubic() {
        assert_eq!(bicubic_kernel(0.0), 1.0);
        assert_eq!(bicubic_kernel(1.0), 0.0);
        assert_eq!(bicubic_kernel(2.0), 0.0);
        assert_eq!(bicubic_kernel(-0.5), 0.5625);
        assert_eq!(bicubic_kernel(1.5), -0.0625);
    }

    #[test]
    fn fixed_point_rounds_half_away_from_zero() {
        assert_eq!(to_fixed_point(1.0), 1 << PRECISION_BITS);
        assert_eq!(to_fixed_point(-0.0625), -(1 << (PRECISION_BITS - 4)));
        let half_unit = 0.5 / f64::from(1u32 << PRECISION_BITS);
        assert_eq!(to_fixed_point(half_unit), 1);
        assert_eq!(to_fixed_point(-half_unit), -1);
    }

    #[test]
    fn clip_saturates() {
        assert_eq!(fixed_to_u8(-5), 0);
        assert_eq!(fixed_to_u8(ROUNDING_BIAS + (200 << PRECISION_BITS)), 200);
        assert_eq!(fixed_to_u8(i32::MAX), 255);
    }

    #[test]
    fn upscale_taps_match_pillow_bounds() {
        // 4x enlargement: center = (i + 0.5) / 4, support 2.
        let taps = AxisTaps::new(10, 40);
        assert_eq!(taps.stride, 5);
        // i = 0: center 0.125 -> [int(-1.375), int(2.625)) -> [0, 2).
        assert_eq!(taps.window(0).0, 0);
        assert_eq!(taps.window(0).1.len(), 2);
        // i = 20: center 5.125 -> [3, 7).
        assert_eq!(taps.window(20).0, 3);
        assert_eq!(taps.window(20).1.len(), 4);
        // The last window is cut at the right edge: center 9.875 -> [8, 10).
        assert_eq!(taps.window(39).0, 8);
        assert_eq!(taps.window(39).1.len(), 2);
        for index in 0..40 {
            let sum: i64 = taps.window(index).1.iter().map(|&w| i64::from(w)).sum();
            assert!(
                (sum - (1 << PRECISION_BITS)).abs() <= 4,
                "taps of {index} sum to {sum}"
            );
        }
    }

    #[test]
    fn downscale_taps_widen_the_kernel() {
        // Halving doubles the support to 4 input pixels each side.
        let taps = AxisTaps::new(40, 20);
        assert_eq!(taps.stride, 9);
        // i = 10: center 21 -> [int(17.5), int(25.5)) -> [17, 25).
        assert_eq!(taps.window(10).0, 17);
        assert_eq!(taps.window(10).1.len(), 8);
    }

    #[test]
    fn constant_frames_stay_constant() {
        for &(w, h, dw, dh) in &[(5, 3, 20, 12), (1, 1, 4, 4), (17, 9, 5, 4), (7, 7, 7, 3)] {
            let src: Vec<u8> = [12u8, 200, 255].repeat(w * h);
            let out = resize_rgb(&src, w, h, dw, dh).unwrap();
            assert_eq!(
                out,
                [12u8, 200, 255].repeat(dw * dh),
                "{w}x{h} -> {dw}x{dh}"
            );
        }
    }

    #[test]
    fn same_size_is_a_copy() {
        let src: Vec<u8> = (0..5 * 4 * 3).map(|v| (v * 37 % 256) as u8).collect();
        assert_eq!(resize_rgb(&src, 5, 4, 5, 4).unwrap(), src);
    }

    #[test]
    fn horizontal_only_resize_keeps_rows_independent() {
        // Height unchanged: no vertical pass, so each row resizes on its own.
        let row_a: Vec<u8> = (0..6 * 3).map(|v| (v * 13) as u8).collect();
        let row_b: Vec<u8> = (0..6 * 3).map(|v| (250 - v * 7) as u8).collect();
        let both = [row_a.clone(), row_b.clone()].concat();
        let out = resize_rgb(&both, 6, 2, 15, 2).unwrap();
        let out_a = resize_rgb(&row_a, 6, 1, 15, 1).unwrap();
        let out_b = resize_rgb(&row_b, 6, 1, 15, 1).unwrap();
        assert_eq!(out, [out_a, out_b].concat());
    }

    #[test]
    fn step_edge_overshoots_and_clips() {
        // A black/white step: bicubic rings, and the ringing must clip at 0/255.
        let mut src = vec![0u8; 8 * 3];
        src[4 * 3..].fill(255);
        let out = resize_rgb(&src, 8, 1, 32, 1).unwrap();
        assert_eq!(&out[..3], &[0, 0, 0]);
        assert_eq!(&out[out.len() - 3..], &[255, 255, 255]);
        let reds: Vec<u8> = out.chunks_exact(3).map(|p| p[0]).collect();
        assert!(reds.windows(2).all(|pair| pair[0] <= pair[1]), "{reds:?}");
    }

    #[test]
    fn rejects_bad_input() {
        assert!(resize_rgb(&[0; 5], 1, 2, 4, 8).is_err());
        assert!(resize_rgb(&[], 0, 2, 4, 8).is_err());
        assert!(resize_rgb(&[0; 3], 1, 1, 0, 8).is_err());
        let message = resize_rgb(&[0; 7], 1, 2, 4, 8).unwrap_err().to_string();
        assert!(
            message.contains("7 bytes") && message.contains("1x2"),
            "{message}"
        );
    }

    #[test]
    fn odd_sizes_and_downscales_do_not_panic() {
        let src: Vec<u8> = (0..13 * 7 * 3).map(|v| (v * 31 % 256) as u8).collect();
        for &(dw, dh) in &[(1, 1), (2, 1), (1, 9), (6, 3), (40, 21), (13, 1), (99, 7)] {
            let out = resize_rgb(&src, 13, 7, dw, dh).unwrap();
            assert_eq!(out.len(), dw * dh * 3);
        }
    }

    #[test]
    fn upscaled_size_rounds_half_to_even() {
        assert_eq!(upscaled_size(176, 144, 4.0), (704, 576));
        assert_eq!(upscaled_size(5, 3, 2.5), (12, 8)); // 12.5 -> 12, 7.5 -> 8
        assert_eq!(upscaled_size(7, 1, 1.5), (10, 2)); // 10.5 -> 10, 1.5 -> 2
        assert_eq!(upscaled_size(3, 3, -1.0), (0, 0));
    }
}
