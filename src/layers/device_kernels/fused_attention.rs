//! Fused block-sparse attention on CUDA (`cuda/block_sparse_attention.cu`):
//! per head and 128-token query window, an online softmax over only the key
//! windows its mask row keeps, on tensor cores, with no score in global
//! memory.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};

use crate::layers::masked_attention::WINDOW_TOKENS;

/// The head width the kernel is written for (Wan2.1's, `dim / heads`).
pub const HEAD_DIM: usize = 128;

/// Attention of `q_win` `[heads, nq, 128, 128]` over the key windows that
/// `mask` `[heads, nq, nk]` (nonzero = attend) allows in `k_win` / `v_win`
/// `[heads, nk, 128, 128]`, softmax scale 1/sqrt(128), in bf16 or f16 with f32
/// accumulation; a query window with no allowed key window gets zeros. CUDA
/// only.
pub fn fused_attention(
    q_win: &Tensor,
    k_win: &Tensor,
    v_win: &Tensor,
    mask: &Tensor,
) -> Result<Tensor> {
    let (heads, nq, wt, d) = q_win.dims4()?;
    let (k_heads, nk, k_wt, k_d) = k_win.dims4()?;
    if (wt, d) != (WINDOW_TOKENS, HEAD_DIM) || (k_heads, k_wt, k_d) != (heads, wt, d) {
        candle_core::bail!(
            "fused attention: queries {:?} and keys {:?} must be [heads, windows, \
             {WINDOW_TOKENS}, {HEAD_DIM}] with the same heads",
            q_win.dims(),
            k_win.dims()
        )
    }
    if v_win.dims() != k_win.dims() || mask.dims() != [heads, nq, nk] {
        candle_core::bail!(
            "fused attention: values {:?} must match keys {:?}, and the mask {:?} \
             be [{heads}, {nq}, {nk}]",
            v_win.dims(),
            k_win.dims(),
            mask.dims()
        )
    }
    if !matches!(q_win.dtype(), DType::BF16 | DType::F16)
        || k_win.dtype() != q_win.dtype()
        || v_win.dtype() != q_win.dtype()
    {
        candle_core::bail!(
            "fused attention takes bf16 or f16 queries, keys and values, got {:?}, {:?}, {:?}",
            q_win.dtype(),
            k_win.dtype(),
            v_win.dtype()
        )
    }
    if heads > u16::MAX as usize || nq > i32::MAX as usize || nk > i32::MAX as usize {
        candle_core::bail!(
            "fused attention: {heads} heads x {nq} x {nk} windows is beyond its grid"
        )
    }
    let op = BlockSparseAttention {
        mask: mask.to_dtype(DType::U8)?.contiguous()?,
    };
    aligned(q_win)?.apply_op3_no_bwd(&aligned(k_win)?, &aligned(v_win)?, &op)
}

/// `t` contiguous and starting on a 16-byte boundary (the kernel reads 8
/// elements at a time): a view into a larger tensor at another offset is
/// copied.
fn aligned(t: &Tensor) -> Result<Tensor> {
    if t.is_contiguous() && t.layout().start_offset().is_multiple_of(8) {
        Ok(t.clone())
    } else {
        t.force_contiguous()
    }
}

struct BlockSparseAttention {
    /// `[heads, nq, nk]` u8, contiguous, on the operands' device.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    mask: Tensor,
}

impl CustomOp3 for BlockSparseAttention {
    fn name(&self) -> &'static str {
        "block-sparse-attention"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!(
            "the fused block-sparse attention kernel runs on CUDA only (the CPU runs \
             the fast path or the gathered or masked portable path)"
        )
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        q: &candle_core::CudaStorage,
        q_l: &Layout,
        k: &candle_core::CudaStorage,
        k_l: &Layout,
        v: &candle_core::CudaStorage,
        v_l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        use half::{bf16, f16};

        let (mask_storage, mask_l) = self.mask.storage_and_layout();
        let mask = super::cuda_storage(self.name(), &mask_storage)?;
        let operands = Operands {
            q: (q, q_l),
            k: (k, k_l),
            v: (v, v_l),
            mask: (mask, mask_l),
        };
        match q.dtype() {
            DType::BF16 => operands.launch::<bf16>("block_sparse_attention_bf16"),
            DType::F16 => operands.launch::<f16>("block_sparse_attention_f16"),
            dtype => candle_core::bail!("fused attention: no kernel for {dtype:?}"),
        }
    }
}

#[cfg(feature = "cuda")]
struct Operands<'a> {
    q: (&'a candle_core::CudaStorage, &'a Layout),
    k: (&'a candle_core::CudaStorage, &'a Layout),
    v: (&'a candle_core::CudaStorage, &'a Layout),
    mask: (&'a candle_core::CudaStorage, &'a Layout),
}

/// The elements of an operand from its layout's start.
#[cfg(feature = "cuda")]
fn view<'a, T: candle_core::cuda_backend::CudaDType>(
    (storage, layout): (&'a candle_core::CudaStorage, &Layout),
) -> Result<candle_core::cuda_backend::cudarc::driver::CudaView<'a, T>> {
    Ok(storage.as_cuda_slice::<T>()?.slice(layout.start_offset()..))
}

#[cfg(feature = "cuda")]
impl Operands<'_> {
    fn launch<T>(&self, kernel: &str) -> Result<(candle_core::CudaStorage, Shape)>
    where
        T: candle_core::cuda_backend::CudaDType
            + candle_core::cuda_backend::cudarc::driver::DeviceRepr,
    {
        use candle_core::cuda_backend::WrapErr;
        use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};

        let (heads, nq, _, _) = self.q.1.shape().dims4()?;
        let nk = self.k.1.shape().dims()[1];
        let dev = &self.q.0.device;
        let (q, k, v) = (view::<T>(self.q)?, view::<T>(self.k)?, view::<T>(self.v)?);
        let mask = self
            .mask
            .0
            .as_cuda_slice::<u8>()?
            .slice(self.mask.1.start_offset()..);
        let shape = self.q.1.shape().clone();
        // SAFETY: the kernel writes every element (each block its window).
        let out = unsafe { dev.alloc::<T>(shape.elem_count()) }?;
        let func = dev.get_or_load_custom_func(
            kernel,
            "flashvsr_block_sparse_attention",
            super::ptx::BLOCK_SPARSE_ATTENTION,
        )?;
        let cfg = LaunchConfig {
            grid_dim: (nq as u32, heads as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let (nq, nk) = (nq as i32, nk as i32);
        let scale_log2 = std::f32::consts::LOG2_E / (HEAD_DIM as f32).sqrt();
        let mut builder = func.builder();
        builder.arg(&q);
        builder.arg(&k);
        builder.arg(&v);
        builder.arg(&mask);
        builder.arg(&out);
        builder.arg(&nq);
        builder.arg(&nk);
        builder.arg(&scale_log2);
        // SAFETY: the arguments match the kernel's signature and the shapes
        // checked by `fused_attention`; every operand is contiguous.
        unsafe { builder.launch(cfg) }.w()?;
        Ok((
            candle_core::CudaStorage::wrap_cuda_slice(out, dev.clone()),
            shape,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn shapes_and_dtypes_are_checked_and_the_cpu_refused() -> Result<()> {
        let dev = Device::Cpu;
        let q = Tensor::zeros((2, 3, 128, 128), DType::BF16, &dev)?;
        let k = Tensor::zeros((2, 5, 128, 128), DType::BF16, &dev)?;
        let mask = Tensor::ones((2, 3, 5), DType::U8, &dev)?;
        let err = fused_attention(&q, &k, &k, &mask).expect_err("ran on the CPU");
        assert!(err.to_string().contains("CUDA only"), "{err}");
        let f32_q = q.to_dtype(DType::F32)?;
        let err = fused_attention(&f32_q, &k, &k, &mask).expect_err("f32 accepted");
        assert!(err.to_string().contains("bf16 or f16"), "{err}");
        let narrow = Tensor::zeros((2, 3, 128, 64), DType::BF16, &dev)?;
        let err = fused_attention(&narrow, &k, &k, &mask).expect_err("head width 64");
        assert!(err.to_string().contains("128"), "{err}");
        let wrong = Tensor::ones((2, 5, 3), DType::U8, &dev)?;
        let err = fused_attention(&q, &k, &k, &wrong).expect_err("wrong mask");
        assert!(err.to_string().contains("[2, 3, 5]"), "{err}");
        Ok(())
    }
}
