//! 3-D rotary position embedding of the Wan DiT.
//!
//! Each 128-wide head is split into a time part (44 dims), a row part (42) and a
//! column part (42); within each part, adjacent pairs `(x[2j], x[2j+1])` are
//! rotated by `position * 10000^(-2j/d)`. The official code reads the angles from
//! a 1,024-entry table and stops after ~4,000 frames; only position differences
//! matter to attention, so angles are computed for any position, in f64 as the
//! reference does, and streams never stop.

use candle_core::{DType, Device, Result, Tensor};

/// Sizes of the time, row and column parts of a head of `head_dim` dims.
pub fn rope_part_dims(head_dim: usize) -> [usize; 3] {
    let hw = 2 * (head_dim / 6);
    [head_dim - 2 * hw, hw, hw]
}

fn part_angles(dim: usize, pos: f64) -> impl Iterator<Item = f64> {
    (0..dim / 2).map(move |j| pos / 10000f64.powf(2.0 * j as f64 / dim as f64))
}

/// Rotation tables for a `frames x rows x cols` token grid whose first frame has
/// time position `time_offset`. Returns `(cos, sin)`, each `[tokens, head_dim / 2]`
/// in f32, tokens in (t, y, x) order.
pub fn rope_tables(
    head_dim: usize,
    time_offset: usize,
    frames: usize,
    rows: usize,
    cols: usize,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let [dt, dh, dw] = rope_part_dims(head_dim);
    let half = head_dim / 2;
    let tokens = frames * rows * cols;
    let mut cos = Vec::with_capacity(tokens * half);
    let mut sin = Vec::with_capacity(tokens * half);
    for t in 0..frames {
        let t_angles: Vec<f64> = part_angles(dt, (time_offset + t) as f64).collect();
        for y in 0..rows {
            let y_angles: Vec<f64> = part_angles(dh, y as f64).collect();
            for x in 0..cols {
                let angles = t_angles
                    .iter()
                    .chain(&y_angles)
                    .copied()
                    .chain(part_angles(dw, x as f64));
                for a in angles {
                    cos.push(a.cos() as f32);
                    sin.push(a.sin() as f32);
                }
            }
        }
    }
    let cos = Tensor::from_vec(cos, (tokens, half), device)?;
    let sin = Tensor::from_vec(sin, (tokens, half), device)?;
    Ok((cos, sin))
}

/// Rotates `x` of shape `[tokens, heads, head_dim]` (any float dtype) with tables
/// from [`rope_tables`]; the product is formed in f32.
pub fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (tokens, heads, head_dim) = x.dims3()?;
    let dtype = x.dtype();
    let pairs = x
        .to_dtype(DType::F32)?
        .reshape((tokens, heads, head_dim / 2, 2))?;
    let re = pairs.narrow(3, 0, 1)?;
    let im = pairs.narrow(3, 1, 1)?;
    let cos = cos.reshape((tokens, 1, head_dim / 2, 1))?;
    let sin = sin.reshape((tokens, 1, head_dim / 2, 1))?;
    let out_re = (re.broadcast_mul(&cos)? - im.broadcast_mul(&sin)?)?;
    let out_im = (re.broadcast_mul(&sin)? + im.broadcast_mul(&cos)?)?;
    Tensor::cat(&[out_re, out_im], 3)?
        .reshape((tokens, heads, head_dim))?
        .to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_split_matches_wan() {
        assert_eq!(rope_part_dims(128), [44, 42, 42]);
    }

    #[test]
    fn rotation_preserves_norm_and_relative_angles() -> Result<()> {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (1, 1, 128), &dev)?;
        let k = Tensor::randn(0f32, 1.0, (1, 1, 128), &dev)?;
        let dot = |offset: usize, dq: usize| -> Result<f32> {
            // q at frame offset + dq, k at frame offset: their product depends on dq only.
            let (cq, sq) = rope_tables(128, offset + dq, 1, 1, 1, &dev)?;
            let (ck, sk) = rope_tables(128, offset, 1, 1, 1, &dev)?;
            let rq = apply_rope(&q, &cq, &sq)?;
            let rk = apply_rope(&k, &ck, &sk)?;
            (rq * rk)?.sum_all()?.to_scalar::<f32>()
        };
        let near = dot(3, 2)?;
        let far = dot(1_000_003, 2)?;
        assert!((near - far).abs() < 1e-4, "{near} vs {far}");
        let (c, s) = rope_tables(128, 7, 1, 1, 1, &dev)?;
        let n0 = q.sqr()?.sum_all()?.to_scalar::<f32>()?;
        let n1 = apply_rope(&q, &c, &s)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f32>()?;
        assert!((n0 - n1).abs() < 1e-3);
        Ok(())
    }

    #[test]
    fn tables_follow_token_order() -> Result<()> {
        let (cos, _) = rope_tables(128, 0, 2, 3, 4, &Device::Cpu)?;
        assert_eq!(cos.dims(), &[24, 64]);
        let cos = cos.to_vec2::<f32>()?;
        // token (t=1, y=2, x=3): time part uses position 1, row part 2, column part 3
        let tok = &cos[12 + 2 * 4 + 3];
        assert!((tok[0] - 1f32.cos()).abs() < 1e-6);
        assert!((tok[22] - 2f32.cos()).abs() < 1e-6);
        assert!((tok[43] - 3f32.cos()).abs() < 1e-6);
        Ok(())
    }
}
