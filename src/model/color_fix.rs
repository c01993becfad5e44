//! Colour correction of decoded frames against their LQ (bicubic-upscaled)
//! frames, as the official FlashVSR pipeline's `TorchColorCorrectorWavelet`
//! does after decoding: per frame, either AdaIN statistics transfer or a
//! wavelet split (decoded high frequencies + reference low frequencies), then
//! a clamp to [-1, 1].
//!
//! Everything is built from portable tensor ops so that it runs on the
//! model's device. Computation is in f32 whatever the input dtype (the
//! reference disables autocast here), and the result is f32.

use candle_core::{DType, Result, Tensor, bail};

/// Added to the variance before the square root, as the reference does.
const ADAIN_EPS: f64 = 1e-5;

/// Levels of the wavelet decomposition; level `i` blurs with dilation `2^i`.
const WAVELET_LEVELS: usize = 5;

/// Checks that `decoded` and `reference` are matching `[n, c, h, w]` tensors
/// and returns both in f32.
fn f32_pair(what: &str, decoded: &Tensor, reference: &Tensor) -> Result<(Tensor, Tensor)> {
    if decoded.rank() != 4 {
        bail!(
            "{what}: decoded frames must be [n, c, h, w], got shape {:?}",
            decoded.shape()
        );
    }
    if decoded.shape() != reference.shape() {
        bail!(
            "{what}: decoded frames {:?} and reference frames {:?} differ in shape",
            decoded.shape(),
            reference.shape()
        );
    }
    Ok((
        decoded.to_dtype(DType::F32)?,
        reference.to_dtype(DType::F32)?,
    ))
}

/// Per frame and channel mean and standard deviation, `[n, c, 1]` each, with
/// std = sqrt(population variance + 1e-5).
fn mean_std(x: &Tensor) -> Result<(Tensor, Tensor)> {
    let mean = x.mean_keepdim(2)?;
    let variance = x.broadcast_sub(&mean)?.sqr()?.mean_keepdim(2)?;
    Ok((mean, (variance + ADAIN_EPS)?.sqrt()?))
}

/// AdaIN colour fix: gives every frame and channel of `decoded` the mean and
/// standard deviation of the same frame and channel of `reference`, then
/// clamps to [-1, 1]. Both `[n, c, h, w]` in [-1, 1]; returns f32.
pub fn adain(decoded: &Tensor, reference: &Tensor) -> Result<Tensor> {
    let (decoded, reference) = f32_pair("adain colour fix", decoded, reference)?;
    let (n, c, h, w) = decoded.dims4()?;
    let decoded = decoded.reshape((n, c, h * w))?;
    let reference = reference.reshape((n, c, h * w))?;
    let (decoded_mean, decoded_std) = mean_std(&decoded)?;
    let (reference_mean, reference_std) = mean_std(&reference)?;
    // Same operation order as the reference: normalise, then rescale.
    decoded
        .broadcast_sub(&decoded_mean)?
        .broadcast_div(&decoded_std)?
        .broadcast_mul(&reference_std)?
        .broadcast_add(&reference_mean)?
        .clamp(-1f32, 1f32)?
        .reshape((n, c, h, w))
}

/// Extends `x` by `pad` copies of its first and last slice along `dim`
/// (PyTorch's `replicate` padding; `pad` may exceed the size).
fn replicate_pad(x: &Tensor, dim: usize, pad: usize) -> Result<Tensor> {
    let size = x.dim(dim)?;
    let mut edge_shape = x.dims().to_vec();
    edge_shape[dim] = pad;
    let first = x.narrow(dim, 0, 1)?.broadcast_as(edge_shape.as_slice())?;
    let last = x
        .narrow(dim, size - 1, 1)?
        .broadcast_as(edge_shape.as_slice())?;
    Tensor::cat(&[&first.contiguous()?, x, &last.contiguous()?], dim)
}

/// The [1, 2, 1] / 4 taps at dilation `dilation` along `dim`, replicate-padded.
fn blur_axis(x: &Tensor, dim: usize, dilation: usize) -> Result<Tensor> {
    let size = x.dim(dim)?;
    let padded = replicate_pad(x, dim, dilation)?;
    let before = padded.narrow(dim, 0, size)?;
    let centre = padded.narrow(dim, dilation, size)?;
    let after = padded.narrow(dim, 2 * dilation, size)?;
    (before.affine(0.25, 0.0)? + centre.affine(0.5, 0.0)?)? + after.affine(0.25, 0.0)?
}

/// The reference's depthwise 3x3 Gaussian ([[1,2,1],[2,4,2],[1,2,1]] / 16)
/// with dilation and replicate padding `dilation`. The kernel is the outer
/// product of [1, 2, 1] / 4 with itself, so it runs as two 1-D passes.
fn wavelet_blur(x: &Tensor, dilation: usize) -> Result<Tensor> {
    blur_axis(&blur_axis(x, 3, dilation)?, 2, dilation)
}

/// Splits `x` into (high, low): low is `x` blurred at dilations 1, 2, 4, 8,
/// 16 in turn, high the sum of what each blur removed (summed per level, as
/// the reference does, rather than `x - low`).
fn wavelet_decompose(x: &Tensor) -> Result<(Tensor, Tensor)> {
    let mut high = x.zeros_like()?;
    let mut low = x.clone();
    for level in 0..WAVELET_LEVELS {
        let blurred = wavelet_blur(&low, 1 << level)?;
        high = (high + (&low - &blurred)?)?;
        low = blurred;
    }
    Ok((high, low))
}

/// Wavelet colour fix: the high frequencies of `decoded` plus the low
/// frequencies of `reference` (5 levels), clamped to [-1, 1]. Both
/// `[n, c, h, w]` in [-1, 1]; returns f32.
pub fn wavelet(decoded: &Tensor, reference: &Tensor) -> Result<Tensor> {
    let (decoded, reference) = f32_pair("wavelet colour fix", decoded, reference)?;
    let (decoded_high, _) = wavelet_decompose(&decoded)?;
    let (_, reference_low) = wavelet_decompose(&reference)?;
    (decoded_high + reference_low)?.clamp(-1f32, 1f32)
}

/// Which colour fix to apply to decoded frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ColorFix {
    /// No correction; values are only clamped to [-1, 1].
    None,
    /// AdaIN statistics transfer (the official pipeline's choice).
    #[default]
    Adain,
    /// Wavelet low-frequency transfer.
    Wavelet,
}

impl ColorFix {
    /// Corrects `decoded` against `reference` (both `[n, 3, h, w]` in [-1, 1],
    /// frame i of one matching frame i of the other); returns f32 in [-1, 1].
    pub fn apply(self, decoded: &Tensor, reference: &Tensor) -> Result<Tensor> {
        match self {
            ColorFix::None => decoded.to_dtype(DType::F32)?.clamp(-1f32, 1f32),
            ColorFix::Adain => adain(decoded, reference),
            ColorFix::Wavelet => wavelet(decoded, reference),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Deterministic, irregular values in [-amplitude, amplitude].
    fn texture(shape: (usize, usize, usize, usize), seed: u32, amplitude: f32) -> Tensor {
        let (n, c, h, w) = shape;
        let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(12_345);
        let values: Vec<f32> = (0..n * c * h * w)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state as f32 / u32::MAX as f32 * 2.0 - 1.0) * amplitude
            })
            .collect();
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
    }

    /// Per frame and channel (mean, population std) of a [n, c, h, w] tensor.
    fn stats(t: &Tensor) -> Vec<(f32, f32)> {
        let (n, c, h, w) = t.dims4().unwrap();
        let values = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(values.len(), n * c * h * w);
        values
            .chunks_exact(h * w)
            .map(|plane| {
                let len = plane.len() as f64;
                let mean = plane.iter().map(|&v| f64::from(v)).sum::<f64>() / len;
                let var = plane
                    .iter()
                    .map(|&v| (f64::from(v) - mean).powi(2))
                    .sum::<f64>()
                    / len;
                (mean as f32, var.sqrt() as f32)
            })
            .collect()
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        crate::test_util::max_abs_diff(a, b).unwrap()
    }

    #[test]
    fn adain_transfers_reference_statistics() {
        let shape = (2, 3, 12, 10);
        let decoded = (texture(shape, 1, 0.9) * 0.5).unwrap();
        // Reference frames with their own offsets, small enough not to clamp.
        let offsets = Tensor::new(&[0.2f32, -0.1, 0.05, -0.3, 0.0, 0.25], &Device::Cpu)
            .unwrap()
            .reshape((2, 3, 1, 1))
            .unwrap();
        let reference = texture(shape, 2, 0.3).broadcast_add(&offsets).unwrap();
        let out = adain(&decoded, &reference).unwrap();
        assert_eq!(out.dims(), &[2, 3, 12, 10]);
        let want = stats(&reference);
        let got = stats(&out);
        for (index, ((gm, gs), (wm, ws))) in got.iter().zip(&want).enumerate() {
            assert!((gm - wm).abs() < 1e-4, "plane {index}: mean {gm} vs {wm}");
            assert!((gs - ws).abs() < 1e-4, "plane {index}: std {gs} vs {ws}");
        }
    }

    #[test]
    fn adain_keeps_the_decoded_shape_of_each_plane() {
        // An affine change of a plane is undone exactly by AdaIN.
        let reference = texture((1, 3, 8, 8), 3, 0.5);
        let decoded = reference.affine(1.5, 0.1).unwrap();
        let out = adain(&decoded, &reference).unwrap();
        assert!(max_abs_diff(&out, &reference) < 1e-4);
    }

    #[test]
    fn adain_constant_inputs_stay_finite() {
        let decoded = Tensor::full(0.3f32, (1, 3, 4, 5), &Device::Cpu).unwrap();
        let reference = Tensor::full(-0.2f32, (1, 3, 4, 5), &Device::Cpu).unwrap();
        let out = adain(&decoded, &reference).unwrap();
        let values = out.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(values.iter().all(|v| (v + 0.2).abs() < 1e-6), "{values:?}");
    }

    #[test]
    fn adain_clamps_to_unit_range() {
        let decoded = texture((1, 3, 6, 6), 4, 1.0);
        let reference = (texture((1, 3, 6, 6), 5, 1.0) * 3.0).unwrap();
        let values = adain(&decoded, &reference)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(values.iter().all(|v| (-1.0..=1.0).contains(v)));
        assert!(values.contains(&1.0) && values.contains(&-1.0));
    }

    #[test]
    fn adain_accepts_bf16_and_rejects_mismatched_shapes() {
        let decoded = texture((1, 3, 4, 4), 6, 0.5);
        let reference = texture((1, 3, 4, 4), 7, 0.5);
        let half = decoded.to_dtype(DType::BF16).unwrap();
        assert_eq!(adain(&half, &reference).unwrap().dtype(), DType::F32);
        let other = texture((1, 3, 4, 5), 8, 0.5);
        let err = adain(&decoded, &other).unwrap_err().to_string();
        assert!(err.contains("differ in shape"), "{err}");
        let flat = decoded.flatten_all().unwrap();
        assert!(adain(&flat, &flat).is_err());
    }

    #[test]
    fn replicate_pad_repeats_edges() {
        let x = Tensor::new(&[1f32, 2., 3.], &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 1, 3))
            .unwrap();
        let padded = replicate_pad(&x, 3, 4).unwrap();
        let values = padded.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(values, vec![1., 1., 1., 1., 1., 2., 3., 3., 3., 3., 3.]);
    }

    #[test]
    fn wavelet_blur_matches_the_dilated_kernel() {
        // Impulse in a 9x9 plane, dilation 2: the 3x3 kernel lands on a grid
        // of step 2 around the impulse.
        let mut values = vec![0f32; 81];
        values[4 * 9 + 4] = 16.0;
        let x = Tensor::from_vec(values, (1, 1, 9, 9), &Device::Cpu).unwrap();
        let out = wavelet_blur(&x, 2)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let at = |y: usize, x: usize| out[y * 9 + x];
        assert_eq!(at(4, 4), 4.0);
        assert_eq!(
            (at(2, 4), at(6, 4), at(4, 2), at(4, 6)),
            (2.0, 2.0, 2.0, 2.0)
        );
        assert_eq!(
            (at(2, 2), at(6, 6), at(2, 6), at(6, 2)),
            (1.0, 1.0, 1.0, 1.0)
        );
        assert_eq!(out.iter().sum::<f32>(), 16.0);
    }

    #[test]
    fn wavelet_of_identical_inputs_is_the_input() {
        let x = texture((2, 3, 20, 17), 9, 0.95);
        let out = wavelet(&x, &x).unwrap();
        assert!(max_abs_diff(&out, &x) < 1e-5);
    }

    #[test]
    fn wavelet_keeps_detail_and_takes_reference_colour() {
        // decoded = smooth base + checkerboard + colour cast; reference = base.
        // Far enough from the borders (all levels reach 1+2+4+8+16 = 31
        // pixels), the checkerboard survives untouched and the cast is gone.
        let size = 96;
        let base: Vec<f32> = (0..3 * size * size)
            .map(|i| {
                let (c, y, x) = (i / (size * size), (i / size) % size, i % size);
                0.3 * ((x as f32 * 0.05 + c as f32).sin() * (y as f32 * 0.03).cos())
            })
            .collect();
        let checker: Vec<f32> = (0..3 * size * size)
            .map(|i| if ((i / size) + i) % 2 == 0 { 0.1 } else { -0.1 })
            .collect();
        let base = Tensor::from_vec(base, (1, 3, size, size), &Device::Cpu).unwrap();
        let checker = Tensor::from_vec(checker, (1, 3, size, size), &Device::Cpu).unwrap();
        let decoded = ((&base + &checker).unwrap() + 0.2).unwrap();
        let out = wavelet(&decoded, &base).unwrap();
        let interior = |t: &Tensor| t.narrow(2, 32, 32).unwrap().narrow(3, 32, 32).unwrap();
        let want = (&base + &checker).unwrap();
        assert!(max_abs_diff(&interior(&out), &interior(&want)) < 1e-5);
        // Near the borders the cast is still mostly removed.
        let mean_shift = (out - &want)
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(mean_shift.abs() < 0.01, "{mean_shift}");
    }

    #[test]
    fn wavelet_handles_frames_smaller_than_the_dilation() {
        let x = texture((1, 3, 3, 2), 10, 0.5);
        let y = texture((1, 3, 3, 2), 11, 0.5);
        let out = wavelet(&x, &y).unwrap();
        assert_eq!(out.dims(), &[1, 3, 3, 2]);
        assert!(max_abs_diff(&wavelet(&x, &x).unwrap(), &x) < 1e-5);
    }

    #[test]
    fn color_fix_dispatches() {
        assert_eq!(ColorFix::default(), ColorFix::Adain);

        let decoded = (texture((1, 3, 8, 8), 12, 1.0) * 1.5).unwrap();
        let reference = texture((1, 3, 8, 8), 13, 0.5);
        let none = ColorFix::None.apply(&decoded, &reference).unwrap();
        assert_eq!(
            max_abs_diff(&none, &decoded.clamp(-1f32, 1f32).unwrap()),
            0.0
        );
        let via_enum = ColorFix::Adain.apply(&decoded, &reference).unwrap();
        assert_eq!(
            max_abs_diff(&via_enum, &adain(&decoded, &reference).unwrap()),
            0.0
        );
        let via_enum = ColorFix::Wavelet.apply(&decoded, &reference).unwrap();
        assert_eq!(
            max_abs_diff(&via_enum, &wavelet(&decoded, &reference).unwrap()),
            0.0
        );
    }
}
