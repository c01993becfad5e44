//! The mask's top-k threshold in one launch: the (k+1)-th largest value of
//! every row by radix selection (`cuda/kth_largest.cu`), exactly the value a
//! descending sort puts at index k, ties included.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

/// The (k+1)-th largest value (index `k` in descending order) of every row of
/// `rows` `[r, n]` f32, as `[r, 1]`. Values must be finite and non-negative;
/// `k` below `n`. On CUDA one kernel launch; the CPU implementation (a
/// selection per row) is the reference the tests hold it to.
pub fn kth_largest(rows: &Tensor, k: usize) -> Result<Tensor> {
    let (_, n) = rows.dims2()?;
    if k >= n {
        candle_core::bail!("kth_largest: k = {k} for rows of {n} values (k must be below n)")
    }
    if n > i32::MAX as usize {
        candle_core::bail!("kth_largest: rows of {n} values exceed the kernel's i32 count")
    }
    rows.to_dtype(DType::F32)?
        .contiguous()?
        .apply_op1_no_bwd(&KthLargest { k })
}

struct KthLargest {
    k: usize,
}

impl CustomOp1 for KthLargest {
    fn name(&self) -> &'static str {
        "kth-largest"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (r, n) = layout.shape().dims2()?;
        let values = match storage {
            CpuStorage::F32(v) => &v[layout.start_offset()..layout.start_offset() + r * n],
            _ => candle_core::bail!("kth-largest: f32 rows expected"),
        };
        let out = values
            .chunks_exact(n)
            .map(|row| {
                let mut row: Vec<f32> = row.iter().map(|v| v + 0.0).collect();
                *row.select_nth_unstable_by(self.k, |a, b| b.total_cmp(a)).1
            })
            .collect();
        Ok((CpuStorage::F32(out), Shape::from((r, 1))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::cuda_backend::WrapErr;
        use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};

        let (r, n) = layout.shape().dims2()?;
        let dev = &storage.device;
        let rows = storage
            .as_cuda_slice::<f32>()?
            .slice(layout.start_offset()..);
        // SAFETY: every element is written by the kernel (one per block).
        let out = unsafe { dev.alloc::<f32>(r) }?;
        let func = dev.get_or_load_custom_func(
            "kth_largest_f32",
            "flashvsr_kth_largest",
            super::ptx::KTH_LARGEST,
        )?;
        let cfg = LaunchConfig {
            grid_dim: (r as u32, 1, 1),
            block_dim: (512, 1, 1),
            shared_mem_bytes: 0,
        };
        let (n, k) = (n as i32, self.k as i32);
        let mut builder = func.builder();
        builder.arg(&rows);
        builder.arg(&out);
        builder.arg(&n);
        builder.arg(&k);
        // SAFETY: the arguments match the kernel's signature; `rows` holds r x n
        // values and `out` r.
        unsafe { builder.launch(cfg) }.w()?;
        Ok((
            candle_core::CudaStorage::wrap_cuda_slice(out, dev.clone()),
            Shape::from((r, 1)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn the_reference_is_the_sorted_value_with_ties_and_zeros() -> Result<()> {
        let rows = Tensor::new(
            &[
                [0.5f32, 0.25, 0.25, 0.0, -0.0, 1.0],
                [3.0, 3.0, 3.0, 2.0, 0.0, 0.0],
            ],
            &Device::Cpu,
        )?;
        for k in 0..6 {
            let sorted = rows.sort_last_dim(false)?.0.narrow(1, k, 1)?;
            assert_eq!(
                kth_largest(&rows, k)?.to_vec2::<f32>()?,
                sorted.to_vec2::<f32>()?,
                "k = {k}"
            );
        }
        let err = kth_largest(&rows, 6).expect_err("k = n accepted");
        assert!(err.to_string().contains("k = 6"), "{err}");
        Ok(())
    }
}
