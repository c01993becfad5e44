//! The DiT's residual connections for f32 CPU tensors, in place: the branch's
//! fresh output becomes `x + branch * gate` in one pass. With candle's ops it
//! is a broadcast product and a sum, each a pass with a new tensor (about 4 ms
//! each at 2048 tokens x 1536 on two Zen 4 cores, three residuals per block).

use candle_core::{CpuStorage, InplaceOp3, Layout, Result};
use rayon::prelude::*;

use super::fast_math::simd_kernel;
use super::gemm::contiguous_f32;

/// `y <- x + y * gate`: `y` and `x` `[rows, features]`, `gate` `[features]`.
pub(crate) struct GatedResidual;

impl InplaceOp3 for GatedResidual {
    fn name(&self) -> &'static str {
        "gated-residual-in-place"
    }

    fn cpu_fwd(
        &self,
        y: &mut CpuStorage,
        y_layout: &Layout,
        x: &CpuStorage,
        x_layout: &Layout,
        gate: &CpuStorage,
        gate_layout: &Layout,
    ) -> Result<()> {
        const OP: &str = "gated residual";
        let x = contiguous_f32(x, x_layout, OP, "residual")?;
        let gate = contiguous_f32(gate, gate_layout, OP, "gate")?;
        let CpuStorage::F32(y) = y else {
            candle_core::bail!("{OP}: the branch must be f32")
        };
        let Some((y0, y1)) = y_layout.contiguous_offsets() else {
            candle_core::bail!("{OP}: the branch must be contiguous")
        };
        let y = &mut y[y0..y1];
        let features = gate.len();
        if features == 0 || y.len() != x.len() || !y.len().is_multiple_of(features) {
            candle_core::bail!(
                "{OP}: branch {:?}, residual {:?}, gate {:?}",
                y_layout.shape().dims(),
                x_layout.shape().dims(),
                gate_layout.shape().dims()
            )
        }
        y.par_chunks_mut(features)
            .zip(x.par_chunks(features))
            .with_min_len((4096 / features).max(1))
            .for_each(|(y, x)| gated_add_row(y, x, gate));
        Ok(())
    }
}

simd_kernel! {
    fn gated_add_row(y: &mut [f32], x: &[f32], gate: &[f32]) {
        for ((y, &x), &g) in y.iter_mut().zip(x).zip(gate) {
            *y = x + *y * g;
        }
    }
}
