//! The crate's own CUDA kernels, as candle custom ops: the fused block-sparse
//! attention and the selection of the mask's top-k threshold
//! (docs/device-path.md, sections "The fused kernel" and "The mask: one
//! selection kernel"). Their sources are in `cuda/`, compiled to PTX by
//! build.rs in builds with the `cuda` feature; without it the ops exist but
//! refuse to run, and the layers never call them (`attention_path`).

pub mod fused_attention;
pub mod kth_largest;

#[cfg(feature = "cuda")]
mod ptx {
    include!(concat!(env!("OUT_DIR"), "/ptx.rs"));
}

/// The CUDA storage of `t` (a tensor on a CUDA device), read-locked.
#[cfg(feature = "cuda")]
fn cuda_storage<'a>(
    op: &str,
    storage: &'a candle_core::Storage,
) -> candle_core::Result<&'a candle_core::CudaStorage> {
    match storage {
        candle_core::Storage::Cuda(s) => Ok(s),
        _ => candle_core::bail!("{op}: every operand must be on the CUDA device"),
    }
}
