//! 3-D rotary position embedding of the Wan DiT.
//!
//! Each 128-wide head is split into a time part (44 dims), a row part (42) and a
//! column part (42); within each part, adjacent pairs `(x[2j], x[2j+1])` are
//! rotated by `position * 10000^(-2j/d)`. The official code reads the angles from
//! a 1,024-entry table and stops after ~4,000 frames; only position differences
//! matter to attention, so angles are computed for any position, in f64 as the
//! reference does, and streams never stop.

use candle_core::{DType, Device, Result, Tensor};
use parking_lot::Mutex;

use crate::layers::kernels;
use crate::layers::sparse_attention::{self, TokenGrid};

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
///
/// Only the time part changes from chunk to chunk: it is computed here on the
/// host (`frames x dt / 2` angles), while the row and column part of the grid
/// comes from [`spatial_tables`], built once per grid and device. The two are
/// joined on `device` by broadcasting, so a chunk uploads a few hundred values.
pub fn rope_tables(
    head_dim: usize,
    time_offset: usize,
    frames: usize,
    rows: usize,
    cols: usize,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let [dt, dh, dw] = rope_part_dims(head_dim);
    let (spatial_cos, spatial_sin) = spatial_tables(head_dim, rows, cols, device)?;
    let (time_cos, time_sin) = host_tables(frames, dt / 2, |t| {
        part_angles(dt, (time_offset + t) as f64).collect()
    });
    let spatial = rows * cols;
    let join = |time: Vec<f32>, space: &Tensor| -> Result<Tensor> {
        let time = Tensor::from_vec(time, (frames, 1, dt / 2), device)?.broadcast_as((
            frames,
            spatial,
            dt / 2,
        ))?;
        let space = space
            .unsqueeze(0)?
            .broadcast_as((frames, spatial, (dh + dw) / 2))?;
        Tensor::cat(&[time, space], 2)?.reshape((frames * spatial, head_dim / 2))
    };
    Ok((join(time_cos, &spatial_cos)?, join(time_sin, &spatial_sin)?))
}

/// `(cos, sin)` of `rows_of(i)` for `i < n`, each row `width` angles, as f32
/// computed from the f64 angles.
fn host_tables(
    n: usize,
    width: usize,
    rows_of: impl Fn(usize) -> Vec<f64>,
) -> (Vec<f32>, Vec<f32>) {
    let mut cos = Vec::with_capacity(n * width);
    let mut sin = Vec::with_capacity(n * width);
    for i in 0..n {
        for a in rows_of(i) {
            cos.push(a.cos() as f32);
            sin.push(a.sin() as f32);
        }
    }
    (cos, sin)
}

/// Row and column part of the tables for a `rows x cols` grid:
/// `(cos, sin)`, each `[rows * cols, (dh + dw) / 2]` on `device`, tokens in
/// (y, x) order. A stream's grid never changes, so the few most recent grids
/// are kept (per device) and a chunk reuses its stream's.
fn spatial_tables(
    head_dim: usize,
    rows: usize,
    cols: usize,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let key = (head_dim, rows, cols);
    let mut cache = SPATIAL_CACHE.lock();
    if let Some(hit) = cache
        .iter()
        .find(|e| e.key == key && e.cos.device().same_device(device))
    {
        return Ok((hit.cos.clone(), hit.sin.clone()));
    }
    let [_, dh, dw] = rope_part_dims(head_dim);
    let width = (dh + dw) / 2;
    let (cos, sin) = host_tables(rows * cols, width, |i| {
        part_angles(dh, (i / cols) as f64)
            .chain(part_angles(dw, (i % cols) as f64))
            .collect()
    });
    let cos = Tensor::from_vec(cos, (rows * cols, width), device)?;
    let sin = Tensor::from_vec(sin, (rows * cols, width), device)?;
    if cache.len() == SPATIAL_CACHE_ENTRIES {
        cache.remove(0);
    }
    cache.push(SpatialEntry {
        key,
        cos: cos.clone(),
        sin: sin.clone(),
    });
    Ok((cos, sin))
}

/// Grids whose spatial tables stay cached: a few concurrent streams of
/// different sizes; each entry is `2 x rows x cols x 42` f32 (2.7 MB for the 68 x 120
/// token grid of 1080p).
const SPATIAL_CACHE_ENTRIES: usize = 4;

struct SpatialEntry {
    /// `(head_dim, rows, cols)`.
    key: (usize, usize, usize),
    cos: Tensor,
    sin: Tensor,
}

static SPATIAL_CACHE: Mutex<Vec<SpatialEntry>> = Mutex::new(Vec::new());

/// Rotates `x` of shape `[tokens, heads, head_dim]` (any float dtype) with tables
/// from [`rope_tables`]; the product is formed in f32.
pub fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if let Some(fast) = cpu_rope(x, cos, sin, None)? {
        return Ok(fast);
    }
    portable_rope(x, cos, sin)
}

/// [`apply_rope`], then `sparse_attention::to_windows`: on the CPU fast path
/// in one pass that writes the windows directly.
pub fn apply_rope_to_windows(
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    grid: TokenGrid,
) -> Result<Tensor> {
    if let Some(fast) = cpu_rope(x, cos, sin, Some(grid))? {
        return Ok(fast);
    }
    sparse_attention::to_windows(&portable_rope(x, cos, sin)?, grid)
}

/// The CPU's one-pass rotation, where the fast path applies.
fn cpu_rope(
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    windows: Option<TokenGrid>,
) -> Result<Option<Tensor>> {
    if !kernels::cpu_fast_path(x) || cos.dtype() != DType::F32 || sin.dtype() != DType::F32 {
        return Ok(None);
    }
    let op = crate::layers::cpu::rope::Rope { windows };
    x.contiguous()?
        .apply_op3_no_bwd(&cos.contiguous()?, &sin.contiguous()?, &op)
        .map(Some)
}

fn portable_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
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

    /// The CPU's one-pass rotation gives the portable candle ops' result.
    #[test]
    fn cpu_fast_path_matches_the_portable_ops() -> Result<()> {
        let dev = Device::Cpu;
        let (cos, sin) = rope_tables(128, 5, 2, 3, 4, &dev)?;
        let x = Tensor::randn(0f32, 1.0, (24, 3, 128), &dev)?;
        let fast = apply_rope(&x, &cos, &sin)?;
        let portable =
            kernels::run_with(kernels::KernelPath::Portable, || apply_rope(&x, &cos, &sin))?;
        assert_eq!(fast.dims(), &[24, 3, 128]);
        let err = (fast - portable)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(err <= 1e-6, "max difference {err}");
        // straight into attention windows: 2 frames of 16 x 24 tokens
        let grid = TokenGrid {
            frames: 2,
            rows: 16,
            cols: 24,
        };
        let (cos, sin) = rope_tables(128, 5, 2, 16, 24, &dev)?;
        let x = Tensor::randn(0f32, 1.0, (2 * 16 * 24, 3, 128), &dev)?;
        let fast = apply_rope_to_windows(&x, &cos, &sin, grid)?;
        let portable = kernels::run_with(kernels::KernelPath::Portable, || {
            apply_rope_to_windows(&x, &cos, &sin, grid)
        })?;
        assert_eq!(fast.dims(), &[3, 6, 128, 128]);
        let err = (fast - portable)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(err <= 1e-6, "max difference in windows {err}");
        Ok(())
    }

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

    /// The whole table on the host, every angle in f64: what the tables were
    /// before the spatial part was cached.
    fn host_reference(
        head_dim: usize,
        time_offset: usize,
        frames: usize,
        rows: usize,
        cols: usize,
    ) -> (Vec<f32>, Vec<f32>) {
        let [dt, dh, dw] = rope_part_dims(head_dim);
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        for t in 0..frames {
            for y in 0..rows {
                for x in 0..cols {
                    let angles = part_angles(dt, (time_offset + t) as f64)
                        .chain(part_angles(dh, y as f64))
                        .chain(part_angles(dw, x as f64));
                    for a in angles {
                        cos.push(a.cos() as f32);
                        sin.push(a.sin() as f32);
                    }
                }
            }
        }
        (cos, sin)
    }

    /// Bit-for-bit the full host computation, for fresh and cached grids,
    /// grids taking turns, and time positions up to a million.
    #[test]
    fn tables_equal_the_full_host_computation() -> Result<()> {
        let dev = Device::Cpu;
        for (offset, frames, rows, cols) in [
            (0, 2, 3, 4),
            (6, 2, 3, 4),
            (1_000_000, 3, 5, 7),
            (17, 1, 3, 4),
            (1_000_002, 2, 5, 7),
            (0, 1, 1, 1),
        ] {
            let (cos, sin) = rope_tables(128, offset, frames, rows, cols, &dev)?;
            let (want_cos, want_sin) = host_reference(128, offset, frames, rows, cols);
            assert_eq!(cos.dims(), &[frames * rows * cols, 64]);
            let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
            assert_eq!(
                bits(cos.flatten_all()?.to_vec1()?),
                bits(want_cos),
                "cos at {offset}"
            );
            assert_eq!(
                bits(sin.flatten_all()?.to_vec1()?),
                bits(want_sin),
                "sin at {offset}"
            );
        }
        Ok(())
    }

    /// More grids than the cache holds: the oldest is dropped, results stay exact.
    #[test]
    fn spatial_cache_stays_bounded() -> Result<()> {
        let dev = Device::Cpu;
        for cols in 1..=SPATIAL_CACHE_ENTRIES + 2 {
            let (cos, _) = rope_tables(128, 3, 1, 2, cols + 100, &dev)?;
            let (want, _) = host_reference(128, 3, 1, 2, cols + 100);
            assert_eq!(cos.flatten_all()?.to_vec1::<f32>()?, want);
        }
        assert!(SPATIAL_CACHE.lock().len() <= SPATIAL_CACHE_ENTRIES);
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
