//! The bounds a parity run is held to: the fixtures' own for f32, looser measured
//! ones for the half types.

use candle_core::DType;

/// Bounds on output frames, in u8 levels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrameTolerance {
    pub mean_abs: f32,
    /// Share of values (0..=1) that must be within 1 of the fixture.
    pub within_1_share: f64,
    pub max_abs: u32,
}

/// The bounds a parity run is held to, chosen by the dtype the model computes in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerances {
    /// Max abs error on the f32 intermediate tensors (time embeddings, LQ latents,
    /// block 0 output, noise prediction, latents).
    pub intermediate: f32,
    /// Max abs error on the decoder output (stored as f16 in the fixtures).
    pub decoded: f32,
    /// Entries that may differ in one block mask.
    pub mask_entries: usize,
    pub frames: FrameTolerance,
}

impl Tolerances {
    /// The fixtures' own bounds for a float32 run (`../shared/golden/README.md`):
    /// a near-tie in the top-k may flip one mask entry, no more.
    pub const F32: Self = Self {
        intermediate: 1e-3,
        decoded: 5e-3,
        mask_entries: 1,
        frames: FrameTolerance {
            mean_abs: 0.05,
            within_1_share: 0.999,
            max_abs: 8,
        },
    };

    /// bfloat16 keeps 8 bits of mantissa (a relative step of 2^-8), so values of
    /// order 1 move in the second decimal. Measured on both golden cases against
    /// the f32 fixtures (CPU, fast and portable paths): intermediate max_abs
    /// 6.1e-2, decoded 8.7e-3, no mask entry flipped, frames mean_abs 0.141 with
    /// 99.91% within 1 and max_abs 6. The bounds leave about 4x room for other
    /// kernels' rounding (cuBLAS, fused GPU ops); a wrong layer misses them by far.
    pub const BF16: Self = Self {
        intermediate: 0.25,
        decoded: 0.05,
        mask_entries: 16,
        frames: FrameTolerance {
            mean_abs: 0.6,
            within_1_share: 0.99,
            max_abs: 32,
        },
    };

    /// float16 keeps 11 bits of mantissa. Measured as for `BF16`: intermediate
    /// max_abs 1.2e-2, decoded 2.2e-3, no mask entry flipped, frames mean_abs
    /// 0.034 with all values within 1. The bounds leave room as `BF16`'s do.
    pub const F16: Self = Self {
        intermediate: 0.05,
        decoded: 0.01,
        mask_entries: 8,
        frames: FrameTolerance {
            mean_abs: 0.15,
            within_1_share: 0.995,
            max_abs: 16,
        },
    };

    /// The bounds for a model computing in `dtype`: the fixtures' own for f32 (and
    /// wider), the looser `BF16` / `F16` ones for the half types. (`tests/precision.rs`
    /// bounds the half types' drift from an f32 run far more loosely, at a mean of
    /// 4 levels; these bounds are the measured drift with room to spare.)
    pub fn for_dtype(dtype: DType) -> Self {
        match dtype {
            DType::BF16 => Self::BF16,
            DType::F16 => Self::F16,
            _ => Self::F32,
        }
    }
}

impl std::fmt::Display for Tolerances {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "tolerances: intermediate max_abs <= {:e}, decoded max_abs <= {:e}, \
             <= {} mask entries differ, frames mean_abs <= {} with >= {}% within 1 and \
             max_abs <= {}",
            self.intermediate,
            self.decoded,
            self.mask_entries,
            self.frames.mean_abs,
            self.frames.within_1_share * 100.0,
            self.frames.max_abs
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_types_get_looser_bounds_than_f32() {
        assert_eq!(Tolerances::for_dtype(DType::F32), Tolerances::F32);
        for dtype in [DType::BF16, DType::F16] {
            let half = Tolerances::for_dtype(dtype);
            assert!(half.intermediate > Tolerances::F32.intermediate);
            assert!(half.frames.mean_abs > Tolerances::F32.frames.mean_abs);
        }
    }
}
