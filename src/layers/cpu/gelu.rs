//! The in-place bias + GELU of `layers::activation` for f32 CPU tensors.

use candle_core::{CpuStorage, InplaceOp2, Layout, Result};
use rayon::prelude::*;

use super::fast_math::{self, simd_kernel};

pub(crate) struct BiasGelu;

impl InplaceOp2 for BiasGelu {
    fn name(&self) -> &'static str {
        "bias-gelu-in-place"
    }

    fn cpu_fwd(
        &self,
        x: &mut CpuStorage,
        x_layout: &Layout,
        bias: &CpuStorage,
        bias_layout: &Layout,
    ) -> Result<()> {
        let (CpuStorage::F32(x), CpuStorage::F32(bias)) = (x, bias) else {
            candle_core::bail!("bias gelu: f32 only")
        };
        let (Some((x0, x1)), Some((b0, b1))) = (
            x_layout.contiguous_offsets(),
            bias_layout.contiguous_offsets(),
        ) else {
            candle_core::bail!("bias gelu: operands must be contiguous")
        };
        let bias = &bias[b0..b1];
        let features = bias.len().max(1);
        if (x1 - x0) % features != 0 {
            candle_core::bail!("bias gelu: {} values for {features} features", x1 - x0)
        }
        x[x0..x1]
            .par_chunks_mut(features)
            .with_min_len((4096 / features).max(1))
            .for_each(|row| bias_gelu_row(row, bias));
        Ok(())
    }
}

simd_kernel! {
    fn bias_gelu_row(row: &mut [f32], bias: &[f32]) {
        for (v, &b) in row.iter_mut().zip(bias) {
            *v = fast_math::gelu_tanh(*v + b);
        }
    }
}
