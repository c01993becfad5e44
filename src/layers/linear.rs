//! The linear layer of every projection in the model. Plain candle ops, so it
//! runs on every candle device; `forward_gelu` adds the fused CPU activation of
//! `layers::activation` beside them. A layer built for bf16 CPU products
//! (`layers::products`) holds its weight packed in bf16 and multiplies f32
//! inputs with `cpu::bf16_gemm`.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Module, Result, Shape, Tensor};

use super::cpu::bf16_gemm::{PackedLhs, PackedRhs, Start, matmul};
use super::cpu::gemm::contiguous_f32;
use super::products::{self, CpuProducts};
use super::{activation, kernels, shape_log};

/// The weight, transposed once at load so that every forward is a plain product.
#[derive(Debug, Clone)]
enum Weight {
    /// `W^T` `[in, out]`, multiplied by candle's matmul.
    Tensor(Tensor),
    /// `W^T` packed in bf16 for the CPU's bf16 products, and the bias's values,
    /// which the product starts its sums from.
    CpuBf16 {
        packed: Arc<PackedRhs>,
        bias: Option<Arc<[f32]>>,
    },
}

/// A linear layer `x W^T + b` that accepts inputs of any rank.
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
}

impl Linear {
    pub(crate) fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        let weight_t = weight.t()?.contiguous()?;
        if !(weight_t.device().is_cpu() && products::at_load() == CpuProducts::Bf16) {
            return Ok(Self {
                weight: Weight::Tensor(weight_t),
                bias,
            });
        }
        let (k, n) = weight_t.dims2()?;
        let weight_values = weight_t
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        // The bf16 products return f32: the bias joins them in f32.
        let bias = bias.map(|b| b.to_dtype(DType::F32)).transpose()?;
        let bias_values = bias
            .as_ref()
            .map(|b| b.flatten_all()?.to_vec1::<f32>())
            .transpose()?;
        if bias_values.as_ref().is_some_and(|b| b.len() != n) {
            candle_core::bail!(
                "linear: a bias of {:?} for {n} outputs",
                bias.map(|b| b.shape().clone())
            )
        }
        Ok(Self {
            weight: Weight::CpuBf16 {
                packed: Arc::new(PackedRhs::pack(&weight_values, k, n)),
                bias: bias_values.map(Arc::from),
            },
            bias,
        })
    }

    pub(crate) fn load(
        vb: &candle_nn::VarBuilder,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
    ) -> Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = if bias {
            Some(vb.get(out_dim, "bias")?)
        } else {
            None
        };
        Self::new(weight, bias)
    }
}

impl Linear {
    /// `x W^T` as `[rows, out]`, the output shape for `x`'s leading dims, and
    /// whether the bias is in (the CPU's bf16 product starts from it).
    fn product(&self, x: &Tensor) -> Result<(Tensor, Vec<usize>, bool)> {
        let dims = x.dims();
        let in_dim = dims[dims.len() - 1];
        let rows = x.elem_count() / in_dim.max(1);
        let x = x.reshape((rows, in_dim))?;
        let (y, out, biased) = match &self.weight {
            Weight::Tensor(weight_t) => {
                // Inputs from f32-only stages (e.g. CPU convolutions) meet
                // half-precision weights.
                let x = x.to_dtype(weight_t.dtype())?;
                (shape_log::matmul(&x, weight_t)?, weight_t.dim(1)?, false)
            }
            Weight::CpuBf16 { packed, bias } => {
                let x = x.to_dtype(DType::F32)?;
                if kernels::cpu_fast_path(&x) {
                    let op = Bf16Product {
                        weight: packed,
                        bias: bias.as_deref(),
                    };
                    let y = x.contiguous()?.apply_op1_no_bwd(&op)?;
                    (y, packed.n, bias.is_some())
                } else {
                    // The portable path forced on a layer packed for the CPU
                    // (tests): the packed values as a tensor, per call.
                    let weight_t =
                        Tensor::from_vec(packed.unpack(), (packed.k, packed.n), x.device())?;
                    (x.matmul(&weight_t)?, packed.n, false)
                }
            }
        };
        let mut out_dims = dims.to_vec();
        out_dims[dims.len() - 1] = out;
        Ok((y, out_dims, biased))
    }

    /// The bias, where the product has not added it.
    fn bias_left(&self, biased: bool) -> Option<&Tensor> {
        if biased { None } else { self.bias.as_ref() }
    }

    /// `gelu_tanh(x W^T + b)`, the bias and activation fused on the CPU.
    pub(crate) fn forward_gelu(&self, x: &Tensor) -> Result<Tensor> {
        let (y, out_dims, biased) = self.product(x)?;
        activation::bias_gelu_in_place(y, self.bias_left(biased))?.reshape(out_dims)
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (y, out_dims, biased) = self.product(x)?;
        let y = match self.bias_left(biased) {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        y.reshape(out_dims)
    }
}

/// `x [rows, in] @ W^T (+ bias)` with `W^T` packed in bf16: the rows are
/// packed per call and the sums, started from the bias, come back in f32.
struct Bf16Product<'a> {
    weight: &'a PackedRhs,
    bias: Option<&'a [f32]>,
}

impl CustomOp1 for Bf16Product<'_> {
    fn name(&self) -> &'static str {
        "bf16-linear"
    }

    fn cpu_fwd(&self, x: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(x, layout, "bf16 linear", "input")?;
        let (rows, k) = layout.shape().dims2()?;
        let rhs = self.weight.as_ref();
        if k != rhs.k {
            candle_core::bail!(
                "bf16 linear: input of {k} features for a weight of {}",
                rhs.k
            )
        }
        let mut lhs = PackedLhs::default();
        lhs.repack_rows(rows, k, x, k);
        let mut y = vec![0f32; rows * rhs.n];
        matmul(
            &lhs,
            rhs,
            &mut y,
            rhs.n,
            self.bias.map_or(Start::Zero, Start::Bias),
            crate::layers::cpu::threads(),
        );
        Ok((CpuStorage::F32(y), Shape::from((rows, rhs.n))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn linear_keeps_leading_dims() -> Result<()> {
        let w = Tensor::new(&[[1f32, 0.], [0., 2.], [1., 1.]], &Device::Cpu)?;
        let b = Tensor::new(&[0f32, 0., 1.], &Device::Cpu)?;
        let lin = Linear::new(w, Some(b))?;
        let x = Tensor::new(&[[[1f32, 2.]]], &Device::Cpu)?;
        let y = lin.forward(&x)?;
        assert_eq!(y.dims(), &[1, 1, 3]);
        assert_eq!(y.flatten_all()?.to_vec1::<f32>()?, vec![1., 4., 4.]);
        Ok(())
    }

    /// Built for bf16 products, the layer returns f32 within bf16 rounding of
    /// the f32 layer, on the fast and the forced portable path.
    #[test]
    fn bf16_products_stay_within_rounding() -> Result<()> {
        let dev = Device::Cpu;
        // Fixed values of unit spread: the bound is statistical, and candle's
        // CPU generator cannot be seeded, so random ones missed it now and then.
        let values = |n: usize, seed: usize| -> Vec<f32> {
            // a sine of amplitude sqrt(2) has unit spread
            let amplitude = std::f32::consts::SQRT_2;
            (0..n)
                .map(|i| amplitude * ((i * 7919 + seed * 104_729) as f32 * 0.618).sin())
                .collect()
        };
        let w = Tensor::from_vec(values(70 * 129, 1), (70, 129), &dev)?;
        let b = Tensor::from_vec(values(70, 2), 70, &dev)?;
        let x = Tensor::from_vec(values(2 * 25 * 129, 3), (2, 25, 129), &dev)?;
        let f32_layer = Linear::new(w.clone(), Some(b.clone()))?;
        let bf16_layer = products::load_with(CpuProducts::Bf16, || Linear::new(w, Some(b)))?;
        assert!(matches!(
            bf16_layer.weight,
            Weight::CpuBf16 { bias: Some(_), .. }
        ));
        let want = f32_layer.forward(&x)?;
        // bf16 keeps 8 bits: each of the 129 terms moves by up to 2^-8 of itself
        let bound = 129f32.sqrt() * 3.0 * 2f32.powi(-8);
        for path in [kernels::KernelPath::Fast, kernels::KernelPath::Portable] {
            let got = kernels::run_with(path, || bf16_layer.forward(&x))?;
            assert_eq!(got.dims(), &[2, 25, 70]);
            assert_eq!(got.dtype(), DType::F32);
            let err = (&got - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(err > 0.0 && err < bound, "{path:?}: {err} (bound {bound})");
            let gelu = kernels::run_with(path, || bf16_layer.forward_gelu(&x))?;
            let err = (gelu - got.gelu()?)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(err < 1e-3, "{path:?}: gelu {err}");
        }
        Ok(())
    }
}
