//! The precision of the CPU's large matrix products (linear layers and the
//! Winograd convolutions' products): f32, or bf16 operands with f32 sums where
//! the processor has AVX512_BF16 (`cpu::bf16_gemm`). Everything else (the
//! activations, norms, attention, transforms) stays in f32 either way.
//!
//! The choice belongs to a loaded model (`precision=bf16` on such a CPU), and
//! the layers take it when they are built, packing their weights once. Layers
//! see only tensors and `VarBuilder`s, so, as with [`super::kernels`], the
//! model's loader sets it for the calls it makes on its thread
//! ([`load_with`]); layers built outside it keep f32.

use std::cell::Cell;

use super::cpu::bf16_gemm;

/// The precision of a layer's CPU products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CpuProducts {
    /// f32 operands through `gemm`.
    #[default]
    F32,
    /// bf16 operands, f32 sums (`vdpbf16ps`); weights held in bf16.
    Bf16,
}

impl CpuProducts {
    /// The products a model loaded for `precision` on the CPU runs: bf16 for a
    /// bf16 model where this processor has AVX512_BF16, f32 otherwise.
    pub fn for_cpu_precision(bf16: bool) -> Self {
        if bf16 && bf16_available() {
            Self::Bf16
        } else {
            Self::F32
        }
    }
}

/// Whether bf16 products run here: this processor has the bf16 product
/// kernel's instructions (AVX-512F and AVX512_BF16), or their emulation was
/// asked for ([`emulate_bf16_products`]).
pub fn bf16_available() -> bool {
    bf16_gemm::available()
}

/// Whether the bf16 products run emulated: asked for, on a processor without
/// AVX512_BF16.
pub fn bf16_emulated() -> bool {
    !bf16_gemm::native() && bf16_gemm::emulating()
}

/// Has bf16 products run where the processor lacks AVX512_BF16, on an exact
/// emulation of its instruction in f32 arithmetic (`cpu::bf16_emulated`), for
/// the whole process: models loaded afterwards for `precision=bf16` compute as
/// they would on such a processor, slower than in f32. For
/// checking the bf16 path's numerics (the golden cases' bf16 bounds) and its
/// control flow on any machine; never a speed path. Where the processor has
/// the instruction, this changes nothing.
pub fn emulate_bf16_products(on: bool) {
    bf16_gemm::emulate(on)
}

thread_local! {
    static AT_LOAD: Cell<CpuProducts> = const { Cell::new(CpuProducts::F32) };
}

/// Builds layers inside `f` with CPU products in `products` (on this thread),
/// then restores the previous choice (also when `f` panics).
pub fn load_with<T>(products: CpuProducts, f: impl FnOnce() -> T) -> T {
    struct Restore(CpuProducts);
    impl Drop for Restore {
        fn drop(&mut self) {
            AT_LOAD.with(|p| p.set(self.0));
        }
    }
    let _restore = Restore(AT_LOAD.with(|p| p.replace(products)));
    f()
}

/// The precision a layer built now packs its CPU weights for. bf16 only where
/// the processor runs it, whatever the caller asked.
pub(crate) fn at_load() -> CpuProducts {
    match AT_LOAD.with(Cell::get) {
        CpuProducts::Bf16 if bf16_available() => CpuProducts::Bf16,
        _ => CpuProducts::F32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_choice_is_scoped_to_the_load() {
        assert_eq!(at_load(), CpuProducts::F32);
        let inside = load_with(CpuProducts::Bf16, at_load);
        // unit tests emulate the bf16 products where the processor lacks them
        assert!(bf16_available());
        let want = CpuProducts::Bf16;
        assert_eq!(inside, want);
        assert_eq!(at_load(), CpuProducts::F32);
        assert_eq!(CpuProducts::for_cpu_precision(false), CpuProducts::F32);
        assert_eq!(CpuProducts::for_cpu_precision(true), want);
    }
}
