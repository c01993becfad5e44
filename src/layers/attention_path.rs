//! Which implementation the portable path uses for block-sparse
//! self-attention and its mask (docs/device-path.md, section
//! "Self-attention"): masked, gathered or the fused CUDA kernel, and the
//! one-launch selection kernel for the mask's threshold.
//!
//! The user's setting is an [`AttentionKernel`]; the model resolves it once at
//! load, after checking the CUDA kernels against the portable ops
//! (`model::attention_check`), into the [`DeviceKernels`] its chunks run
//! with. As with [`kernels`](super::kernels), the choice is per thread, set
//! around a chunk, because the layers see only tensors. The CPU fast path
//! (f32 on the CPU) never looks at it.

use std::cell::Cell;

/// The attention setting: what the user asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AttentionKernel {
    /// The fused kernel on CUDA in bf16/f16 when its check at load passes,
    /// else the gathered path; on the CPU, what it always ran (the CPU fast
    /// path in f32, the masked path otherwise).
    #[default]
    Auto,
    /// The fused CUDA kernel (bf16 or f16 on CUDA only), unchecked.
    Fused,
    /// The gathered portable path.
    Gathered,
    /// The masked portable path (dense scores with the mask as a bias).
    Masked,
}

/// The portable path's block-sparse attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AttentionPath {
    #[default]
    Masked,
    Gathered,
    Fused,
}

impl AttentionPath {
    pub fn name(self) -> &'static str {
        match self {
            AttentionPath::Masked => "masked",
            AttentionPath::Gathered => "gathered",
            AttentionPath::Fused => "fused",
        }
    }
}

/// What a model's chunks run with on the portable path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct DeviceKernels {
    pub attention: AttentionPath,
    /// The mask's top-k threshold by the selection kernel (CUDA), not by
    /// bisection.
    pub select_kernel: bool,
}

impl std::fmt::Display for DeviceKernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let threshold = if self.select_kernel {
            "selection kernel"
        } else {
            "bisection"
        };
        write!(
            f,
            "{} attention, mask threshold by {threshold}",
            self.attention.name()
        )
    }
}

thread_local! {
    static CURRENT: Cell<DeviceKernels> = const {
        Cell::new(DeviceKernels {
            attention: AttentionPath::Masked,
            select_kernel: false,
        })
    };
}

/// Runs `f` with `kernels` on this thread, then restores the previous choice
/// (also when `f` panics).
pub fn run_with<T>(kernels: DeviceKernels, f: impl FnOnce() -> T) -> T {
    struct Restore(DeviceKernels);
    impl Drop for Restore {
        fn drop(&mut self) {
            CURRENT.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(CURRENT.with(|c| c.replace(kernels)));
    f()
}

/// The choice in force on this thread.
pub fn current() -> DeviceKernels {
    CURRENT.with(Cell::get)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scoped_to_the_call() {
        assert_eq!(current(), DeviceKernels::default());
        let gathered = DeviceKernels {
            attention: AttentionPath::Gathered,
            select_kernel: true,
        };
        assert_eq!(run_with(gathered, current), gathered);
        assert_eq!(current(), DeviceKernels::default());
        assert_eq!(
            gathered.to_string(),
            "gathered attention, mask threshold by selection kernel"
        );
    }
}
