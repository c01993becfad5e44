//! What the CPU fast paths run on this processor, for benchmark reports: the
//! vector extensions detected at run time, the ones each kind of kernel uses,
//! and so what each stage of the network runs on.

use candle_core::DType;

use super::super::kernels::KernelPath;

/// The vector extensions of this processor that the fast paths can use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuFeatures {
    /// `model name` of /proc/cpuinfo, when readable.
    pub model: Option<String>,
    pub avx512f: bool,
    pub avx512bf16: bool,
    pub avx2_fma: bool,
    pub amx_bf16: bool,
}

impl CpuFeatures {
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |key: &str| {
            cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        };
        let model = field("model name");
        // std's AMX detection is unstable: the kernel's flag list tells.
        let amx_bf16 = field("flags").is_some_and(|f| f.split(' ').any(|x| x == "amx_bf16"));
        #[cfg(target_arch = "x86_64")]
        let (avx512f, avx512bf16, avx2_fma) = (
            std::is_x86_feature_detected!("avx512f"),
            std::is_x86_feature_detected!("avx512bf16"),
            std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma"),
        );
        #[cfg(not(target_arch = "x86_64"))]
        let (avx512f, avx512bf16, avx2_fma) = (false, false, false);
        Self {
            model,
            avx512f,
            avx512bf16,
            avx2_fma,
            amx_bf16,
        }
    }

    /// The extension the crate's own vector kernels (norms, softmax, GELU, the
    /// Winograd transforms: `fast_math::simd_kernel`) are compiled for and run.
    pub fn vector_kernels(&self) -> &'static str {
        if self.avx512f {
            "AVX-512"
        } else if self.avx2_fma {
            "AVX2+FMA"
        } else {
            "plain"
        }
    }

    /// The extension the `gemm` crate's f32 microkernels run with (its
    /// `x86-v4` build, which this crate enables, has AVX-512 kernels).
    pub fn matrix_products(&self) -> &'static str {
        if self.avx512f {
            "gemm f32, AVX-512 microkernels"
        } else if self.avx2_fma {
            "gemm f32, AVX2+FMA microkernels"
        } else {
            "gemm f32, scalar"
        }
    }

    /// One line of detected extensions.
    pub fn summary(&self) -> String {
        let mut flags = Vec::new();
        for (on, name) in [
            (self.avx512f, "avx512f"),
            (self.avx512bf16, "avx512_bf16"),
            (self.amx_bf16, "amx_bf16"),
            (self.avx2_fma, "avx2+fma"),
        ] {
            if on {
                flags.push(name);
            }
        }
        format!(
            "{}: {}",
            self.model.as_deref().unwrap_or("unknown CPU"),
            if flags.is_empty() {
                "no vector extension the fast paths use".to_owned()
            } else {
                flags.join(" ")
            }
        )
    }

    /// What each stage runs on for a model computing in `dtype` on the CPU
    /// through `kernels`: (stage, description).
    pub fn stages(&self, kernels: KernelPath, dtype: DType) -> Vec<(&'static str, String)> {
        if kernels == KernelPath::Portable {
            let all = "candle's CPU ops (the portable path, as a GPU runs it)".to_owned();
            return ["LQ projection", "DiT", "decoder", "colour fix"]
                .into_iter()
                .map(|s| (s, all.clone()))
                .collect();
        }
        let (f32_products, vector) = (self.matrix_products(), self.vector_kernels());
        let emulated = !self.avx512bf16 && super::super::products::bf16_emulated();
        if dtype == DType::BF16 && (self.avx512bf16 || emulated) {
            // `FlashVsrModel::load`: bf16 products in the LQ projection and the
            // DiT, f32 everywhere else.
            let bf16 = if emulated {
                "bf16 products with f32 sums (vdpbf16ps emulated in f32 arithmetic: a numerics check, not a speed path)"
            } else {
                "bf16 products with f32 sums (AVX512_BF16 vdpbf16ps)"
            };
            return vec![
                (
                    "LQ projection",
                    format!(
                        "3x3 convs as Winograd F(2x2, 3x3) ({vector} transforms, {bf16}) and taps ({f32_products}); channel norms {vector}; linear on {bf16}"
                    ),
                ),
                (
                    "DiT",
                    format!(
                        "linears and block-sparse self-attention on {bf16}; cross-attention on {f32_products}; norms, softmax, GELU {vector}; activations f32"
                    ),
                ),
                (
                    "decoder",
                    format!(
                        "3x3 convs as Winograd F(4x4, 3x3) ({vector} transforms, {f32_products}), the middle stage's as F(2x2, 3x3) with {bf16} (the other stages' bf16 rounding misses the golden bound), and taps ({f32_products}); channel norms {vector}"
                    ),
                ),
                ("colour fix", "candle's CPU ops".to_owned()),
            ];
        }
        let products = f32_products;
        let half = match dtype {
            DType::F32 => String::new(),
            DType::BF16 => "; BF16 on the CPU: candle ops (this CPU has no AVX512_BF16)".to_owned(),
            _ => format!("; {dtype:?} on the CPU: candle ops (no fast path in {dtype:?})"),
        };
        // `layers::conv::default_winograd_tile`: F(4x4) within its weight cap
        let convs = |tile: &str| {
            format!(
                "3x3 convs as Winograd {tile} ({vector} transforms) and taps, products on {products}"
            )
        };
        vec![
            (
                "LQ projection",
                format!(
                    "{}; channel norms {vector}; linear on {products}",
                    convs("F(2x2, 3x3)")
                ),
            ),
            (
                "DiT",
                format!("linears and attention on {products}; norms, softmax, GELU {vector}{half}"),
            ),
            (
                "decoder",
                format!(
                    "{}; channel norms {vector}{half}",
                    // `layers::conv::prefers_winograd`: the layer to RGB
                    convs(if self.avx512f {
                        "F(4x4, 3x3)"
                    } else {
                        "F(4x4, 3x3) (F(2x2) for the layer to RGB)"
                    })
                ),
            ),
            ("colour fix", "candle's CPU ops".to_owned()),
        ]
    }
}
