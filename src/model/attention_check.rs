//! The attention setting resolved at load (docs/device-path.md, section
//! "Checked at load"): on CUDA the crate's own kernels run once on small
//! problems against the portable ops before any chunk trusts them, and a
//! kernel that fails or differs beyond its bound is replaced by the portable
//! op, with a note saying why. On the CPU nothing runs and nothing changes.

use candle_core::{DType, Device, Result, Tensor};

use crate::layers::attention_path::{AttentionKernel, AttentionPath, DeviceKernels};
use crate::layers::device_kernels::{fused_attention, kth_largest};
use crate::layers::gathered_attention::gathered_attention;
use crate::layers::masked_attention::WINDOW_TOKENS;
use crate::layers::topk;

/// Largest difference the fused kernel may show from the f32 result on the
/// check problem, per dtype. Its inputs are the same half-precision values as
/// the reference's; the output's own rounding is 2^-9 (bf16) or 2^-12 (f16) of
/// values below 1, and the probabilities are rounded to the dtype before the
/// value product, as the gathered path rounds them: a few times those.
pub fn fused_bound(dtype: DType) -> f32 {
    match dtype {
        DType::F16 => 4e-3,
        _ => 2e-2,
    }
}

/// The kernels a model runs with, and why any asked-for kernel is not used.
#[derive(Debug, Clone, Default)]
pub struct KernelChoice {
    pub kernels: DeviceKernels,
    /// Warnings for the log: a kernel that failed its check, with the figures.
    pub notes: Vec<String>,
}

/// What `setting` means on `device` with weights in `dtype`, checking the CUDA
/// kernels there. A setting the device cannot honour (the fused kernel on the
/// CPU or in f32) is an error naming it.
pub fn resolve(setting: AttentionKernel, device: &Device, dtype: DType) -> Result<KernelChoice> {
    let half = matches!(dtype, DType::BF16 | DType::F16);
    if setting == AttentionKernel::Fused && !(device.is_cuda() && half) {
        candle_core::bail!(
            "attention \"fused\" needs a CUDA device and precision bf16 or f16 \
             (got {device:?}, {dtype:?}); use \"auto\", \"gathered\" or \"masked\""
        )
    }
    let mut choice = KernelChoice::default();
    let path = match setting {
        AttentionKernel::Gathered => AttentionPath::Gathered,
        AttentionKernel::Masked => AttentionPath::Masked,
        // the CPU keeps what it always ran
        AttentionKernel::Auto if !device.is_cuda() => AttentionPath::Masked,
        AttentionKernel::Auto if !half => AttentionPath::Gathered,
        AttentionKernel::Auto | AttentionKernel::Fused => match check_fused(device, dtype) {
            Ok(report) if report.passes() => AttentionPath::Fused,
            outcome => {
                let why = match outcome {
                    Ok(report) => report.to_string(),
                    Err(e) => format!("the fused attention kernel failed to run: {e}"),
                };
                if setting == AttentionKernel::Fused {
                    choice
                        .notes
                        .push(format!("{why}; kept, as attention=fused forces it"));
                    AttentionPath::Fused
                } else {
                    choice
                        .notes
                        .push(format!("{why}; using the gathered path instead"));
                    AttentionPath::Gathered
                }
            }
        },
    };
    choice.kernels.attention = path;
    if device.is_cuda() && path != AttentionPath::Masked {
        match check_select(device) {
            Ok(None) => choice.kernels.select_kernel = true,
            Ok(Some(mismatch)) => choice.notes.push(format!(
                "{mismatch}; the mask's threshold is found by bisection instead"
            )),
            Err(e) => choice.notes.push(format!(
                "the top-k selection kernel failed to run: {e}; the mask's threshold \
                 is found by bisection instead"
            )),
        }
    }
    Ok(choice)
}

/// Deterministic values in [-1, 1) (a bug report reproduces the check).
fn pseudo_random(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// The check problem's mask `[heads, nq, nk]`: rows keeping a few scattered
/// windows, none, a run, and windows past the kernel's first list chunk.
fn check_mask(heads: usize, nq: usize, nk: usize) -> Vec<u8> {
    let mut bits = vec![0u8; heads * nq * nk];
    for h in 0..heads {
        for q in 0..nq {
            let row = &mut bits[(h * nq + q) * nk..(h * nq + q + 1) * nk];
            match q % 4 {
                0 => [0, 1, nk / 2, nk - 1].iter().for_each(|&j| row[j] = 1),
                1 => {} // keeps nothing: zeros
                2 => row[..8].fill(1),
                _ => row.iter_mut().step_by(25 + h).for_each(|b| *b = 1),
            }
        }
    }
    bits
}

/// The fused kernel's and the gathered path's largest differences from the
/// f32 result on the check problem.
#[derive(Debug, Clone, Copy)]
pub struct FusedReport {
    pub dtype: DType,
    pub fused_error: f32,
    pub gathered_error: f32,
}

impl FusedReport {
    pub fn passes(&self) -> bool {
        self.fused_error <= fused_bound(self.dtype)
    }
}

impl std::fmt::Display for FusedReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the fused attention kernel differs from the f32 result by {:.3e} in {:?} \
             (bound {:.1e}; the gathered path by {:.3e})",
            self.fused_error,
            self.dtype,
            fused_bound(self.dtype),
            self.gathered_error
        )
    }
}

/// Runs the fused kernel on 2 heads x 8 query windows x 300 key windows on
/// `device` in `dtype`, against the gathered path in f32 and in `dtype`.
pub fn check_fused(device: &Device, dtype: DType) -> Result<FusedReport> {
    let (heads, nq, nk, d) = (2, 8, 300, fused_attention::HEAD_DIM);
    let tensor = |windows: usize, seed: u64| {
        Tensor::from_vec(
            pseudo_random(heads * windows * WINDOW_TOKENS * d, seed),
            (heads, windows, WINDOW_TOKENS, d),
            device,
        )?
        .affine(2.0, 0.0)?
        .to_dtype(dtype)
    };
    let (q, k, v) = (tensor(nq, 1)?, tensor(nk, 2)?, tensor(nk, 3)?);
    let mask = Tensor::from_vec(check_mask(heads, nq, nk), (heads, nq, nk), device)?;
    let wide = |t: &Tensor| t.to_dtype(DType::F32);
    let reference = gathered_attention(&wide(&q)?, &wide(&k)?, &wide(&v)?, &mask)?;
    let error = |t: &Tensor| -> Result<f32> {
        let diff = (t.to_dtype(DType::F32)? - &reference)?.abs()?.max_all()?;
        let e = diff.to_scalar::<f32>()?;
        // a NaN must fail the bound, not pass it
        Ok(if e.is_nan() { f32::INFINITY } else { e })
    };
    let fused = fused_attention::fused_attention(&q, &k, &v, &mask)?;
    let gathered = gathered_attention(&q, &k, &v, &mask)?;
    Ok(FusedReport {
        dtype,
        fused_error: error(&fused)?,
        gathered_error: error(&gathered)?,
    })
}

/// Runs the selection kernel on rows with ties, zeros and the width of a
/// 1920-wide steady chunk, against bisection: `None` when every threshold is
/// the same f32, else what differed.
pub fn check_select(device: &Device) -> Result<Option<String>> {
    let (rows, n) = (3, 72_900);
    // Quantised to 1/1024 so that ties are common; a quarter of them zero.
    let values: Vec<f32> = pseudo_random(rows * n, 4)
        .into_iter()
        .map(|v| ((v * 1024.0).floor().max(-256.0) + 256.0) / 1024.0)
        .collect();
    let t = Tensor::from_vec(values, (rows, n), device)?;
    for k in [0, 1, 999, n / 2, n - 1] {
        let selected = kth_largest::kth_largest(&t, k)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let bisected = topk::kth_largest_by_bisection(&t, k)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let same = selected
            .iter()
            .zip(&bisected)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        if !same {
            return Ok(Some(format!(
                "the top-k selection kernel gives {selected:?} where bisection gives \
                 {bisected:?} (k = {k} of {n})"
            )));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::sparse_attention::dense_masked_attention;

    #[test]
    fn the_cpu_keeps_its_paths_and_refuses_the_fused_kernel() -> Result<()> {
        let cpu = Device::Cpu;
        let auto = resolve(AttentionKernel::Auto, &cpu, DType::F32)?;
        assert_eq!(auto.kernels, DeviceKernels::default());
        assert!(auto.notes.is_empty());
        let gathered = resolve(AttentionKernel::Gathered, &cpu, DType::BF16)?;
        assert_eq!(gathered.kernels.attention, AttentionPath::Gathered);
        assert!(!gathered.kernels.select_kernel);
        let err = resolve(AttentionKernel::Fused, &cpu, DType::BF16).expect_err("fused on the CPU");
        assert!(err.to_string().contains("attention \"fused\""), "{err}");
        Ok(())
    }

    /// The check's reference is right (the gathered path against the dense
    /// reference on the check problem's mask, on the CPU), and the kernel's
    /// absence on the CPU is an error, which `resolve` turns into a note.
    #[test]
    fn the_check_problem_and_its_reference() -> Result<()> {
        let (heads, nq, nk) = (2, 8, 300);
        let bits = check_mask(heads, nq, nk);
        assert!(bits[nk..2 * nk].iter().all(|&b| b == 0), "an empty row");
        assert!(bits.iter().skip(256).any(|&b| b == 1));
        let mask = Tensor::from_vec(bits, (heads, nq, nk), &Device::Cpu)?;
        let t = |windows: usize, seed: u64| {
            Tensor::from_vec(
                pseudo_random(heads * windows * 128 * 16, seed),
                (heads, windows, 128, 16),
                &Device::Cpu,
            )
        };
        let (q, k, v) = (t(nq, 1)?, t(nk, 2)?, t(nk, 3)?);
        let err = (gathered_attention(&q, &k, &v, &mask)?
            - dense_masked_attention(&q, &k, &v, &mask)?)?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?;
        assert!(err < 1e-5, "{err}");
        assert!(check_fused(&Device::Cpu, DType::BF16).is_err());
        let report = FusedReport {
            dtype: DType::BF16,
            fused_error: 0.5,
            gathered_error: 0.004,
        };
        assert!(!report.passes());
        assert!(report.to_string().contains("5.000e-1"), "{report}");
        Ok(())
    }

    #[test]
    fn the_selection_check_passes_on_the_reference() -> Result<()> {
        // on the CPU the op runs its reference selection: it must agree with
        // bisection on the check's rows
        assert_eq!(check_select(&Device::Cpu)?, None);
        Ok(())
    }
}
