//! Helpers shared by the unit tests.

use candle_core::{DType, Result, Tensor};

/// The largest absolute difference between two tensors of one shape, compared
/// in f32 whatever their dtypes.
pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    (a.to_dtype(DType::F32)? - b.to_dtype(DType::F32)?)?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()
}
