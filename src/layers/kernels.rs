//! Which implementation the layers run: the CPU fast paths (`layers::cpu`) where
//! they apply, or the portable candle-op path that every other device takes.
//!
//! Forcing the portable path on the CPU runs, on this machine, exactly the
//! operations a CUDA device would run, so tests can prove the device path
//! without a GPU. The choice is per thread, set around a chunk by the model
//! (`ModelOptions::kernels`), because the layers see only tensors.

use std::cell::Cell;

use candle_core::{DType, Tensor};

/// The implementation the layers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KernelPath {
    /// CPU fast paths for f32 CPU tensors, the portable path elsewhere.
    #[default]
    Fast,
    /// The portable path everywhere, CPU included.
    Portable,
}

thread_local! {
    static PORTABLE_FORCED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with the layers on `path` on this thread, then restores the
/// previous choice (also when `f` panics).
pub fn run_with<T>(path: KernelPath, f: impl FnOnce() -> T) -> T {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            PORTABLE_FORCED.with(|p| p.set(self.0));
        }
    }
    let _restore = Restore(PORTABLE_FORCED.with(|p| p.replace(path == KernelPath::Portable)));
    f()
}

/// The path in force on this thread.
pub fn current() -> KernelPath {
    if PORTABLE_FORCED.with(Cell::get) {
        KernelPath::Portable
    } else {
        KernelPath::Fast
    }
}

/// Whether a layer may take its CPU fast path for `t`: an f32 CPU tensor, with
/// the portable path not forced.
pub(crate) fn cpu_fast_path(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32 && current() == KernelPath::Fast
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn portable_is_scoped_to_the_call() -> candle_core::Result<()> {
        let t = Tensor::zeros(4, DType::F32, &Device::Cpu)?;
        assert!(cpu_fast_path(&t));
        let inside = run_with(KernelPath::Portable, || cpu_fast_path(&t));
        assert!(!inside);
        assert!(cpu_fast_path(&t));
        assert!(!cpu_fast_path(&t.to_dtype(DType::BF16)?));
        Ok(())
    }
}
