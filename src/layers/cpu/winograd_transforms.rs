//! The three transforms of the Winograd F(2x2, 3x3) convolution
//! ([`super::winograd`]): weight `U = G g G^T` (once, at load), input
//! `V = B^T d B` per 4x4 tile, output `Y = A^T M A` per tile, with
//!
//! ```text
//!       | 1    0    0  |          | 1  0 -1  0 |
//!   G = | 1/2  1/2  1/2|   B^T =  | 0  1  1  0 |   A^T = | 1  1  1  0 |
//!       | 1/2 -1/2  1/2|          | 0 -1  1  0 |         | 0  1 -1 -1 |
//!       | 0    0    1  |          | 0  1  0 -1 |
//! ```
//!
//! The 16 transformed values of a tile are indexed `xi = 4 i + j` (row `i`,
//! column `j` of the 4x4 result). Transformed inputs are laid out
//! `[16, c_in, tiles]` and products `[16, c_out, tiles]`, so the loops here run
//! over contiguous tiles and vectorise across them.

use super::fast_math::simd_kernel;

/// `[c_out, c_in, 3, 3]` kernels to `[16, c_out, c_in]` transformed weights,
/// each `G g G^T` summed in f64 so the transform adds no f32 rounding of its own
/// beyond the final one.
pub(crate) fn weights(kernel: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    const G: [[f64; 3]; 4] = [
        [1.0, 0.0, 0.0],
        [0.5, 0.5, 0.5],
        [0.5, -0.5, 0.5],
        [0.0, 0.0, 1.0],
    ];
    let pairs = c_out * c_in;
    let mut u = vec![0f32; 16 * pairs];
    for (pair, g) in kernel.chunks_exact(9).enumerate() {
        for i in 0..4 {
            for j in 0..4 {
                let mut sum = 0f64;
                for a in 0..3 {
                    for b in 0..3 {
                        sum += G[i][a] * f64::from(g[3 * a + b]) * G[j][b];
                    }
                }
                u[(4 * i + j) * pairs + pair] = sum as f32;
            }
        }
    }
    u
}

/// The inverse of [`weights`]: `[16, c_out, c_in]` back to `[c_out, c_in, 3, 3]`
/// through the left inverse of `G` (rows 0, 1 - 2 and 3 of `U`), for the portable
/// path forced on a CPU-loaded layer.
pub(crate) fn kernels_from_weights(u: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    // g = L U L^T with L = [[1, 0, 0, 0], [0, 1, -1, 0], [0, 0, 0, 1]].
    const L: [[f64; 4]; 3] = [
        [1.0, 0.0, 0.0, 0.0],
        [0.0, 1.0, -1.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    let pairs = c_out * c_in;
    let mut kernel = vec![0f32; 9 * pairs];
    for (pair, g) in kernel.chunks_exact_mut(9).enumerate() {
        for a in 0..3 {
            for b in 0..3 {
                let mut sum = 0f64;
                for i in 0..4 {
                    for j in 0..4 {
                        sum += L[a][i] * f64::from(u[(4 * i + j) * pairs + pair]) * L[b][j];
                    }
                }
                g[3 * a + b] = sum as f32;
            }
        }
    }
    kernel
}

simd_kernel! {
    /// One tile row of one channel: `rows` are the 4 input rows of the tiles,
    /// each as its `tiles + 1` even columns then its `tiles + 1` odd ones; tile
    /// `t` reads columns `2 t..2 t + 4`, i.e. even `t`, odd `t`, even `t + 1`,
    /// odd `t + 1`. Writes `V` of tile `t` to `out[xi * stride + t]` for the 16 `xi`.
    pub(crate) fn input_tile_row(rows: [&[f32]; 4], tiles: usize, out: &mut [f32], stride: usize) {
        let half = tiles + 1;
        let (e0, o0) = rows[0][..2 * half].split_at(half);
        let (e1, o1) = rows[1][..2 * half].split_at(half);
        let (e2, o2) = rows[2][..2 * half].split_at(half);
        let (e3, o3) = rows[3][..2 * half].split_at(half);
        let out = &mut out[..15 * stride + tiles];
        for t in 0..tiles {
            let column = |e: &[f32], o: &[f32]| [e[t], o[t], e[t + 1], o[t + 1]];
            let (d0, d1, d2, d3) = (column(e0, o0), column(e1, o1), column(e2, o2), column(e3, o3));
            // B^T d: down the tile's 4 columns.
            let mut r = [[0f32; 4]; 4];
            for j in 0..4 {
                r[0][j] = d0[j] - d2[j];
                r[1][j] = d1[j] + d2[j];
                r[2][j] = d2[j] - d1[j];
                r[3][j] = d1[j] - d3[j];
            }
            // (B^T d) B: along each row.
            for (i, r) in r.iter().enumerate() {
                let v = [r[0] - r[2], r[1] + r[2], r[2] - r[1], r[1] - r[3]];
                for (j, v) in v.into_iter().enumerate() {
                    out[(4 * i + j) * stride + t] = v;
                }
            }
        }
    }
}

simd_kernel! {
    /// One tile row of one output channel: `m[xi * stride + t]` are the products
    /// of tile `t`; writes `A^T M A + bias`, the tile's 2x2 outputs, to
    /// `top[2 t..2 t + 2]` and `bottom[2 t..2 t + 2]` (each `2 * tiles` long).
    pub(crate) fn output_tile_row(m: &[f32], stride: usize, tiles: usize, bias: f32, top: &mut [f32], bottom: &mut [f32]) {
        let (top, bottom) = (&mut top[..2 * tiles], &mut bottom[..2 * tiles]);
        for t in 0..tiles {
            let at = |xi: usize| m[xi * stride + t];
            // A^T M: rows 0 + 1 + 2 and 1 - 2 - 3, per column j.
            let mut s = [0f32; 4];
            let mut d = [0f32; 4];
            for j in 0..4 {
                let (a, b, c, e) = (at(j), at(4 + j), at(8 + j), at(12 + j));
                s[j] = a + b + c;
                d[j] = b - c - e;
            }
            top[2 * t] = s[0] + s[1] + s[2] + bias;
            top[2 * t + 1] = s[1] - s[2] - s[3] + bias;
            bottom[2 * t] = d[0] + d[1] + d[2] + bias;
            bottom[2 * t + 1] = d[1] - d[2] - d[3] + bias;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The weight transform and its inverse give back the kernel.
    #[test]
    fn weight_transform_inverts() {
        let kernel: Vec<f32> = (0..2 * 3 * 9).map(|i| (i as f32 * 0.37).sin()).collect();
        let back = kernels_from_weights(&weights(&kernel, 2, 3), 2, 3);
        for (a, b) in kernel.iter().zip(&back) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    /// One tile through all three transforms equals the direct 3x3 correlation
    /// of a 4x4 patch.
    #[test]
    fn one_tile_equals_direct_convolution() {
        let d: Vec<f32> = (0..16).map(|i| (i as f32 * 0.71).cos()).collect();
        let g: Vec<f32> = (0..9).map(|i| (i as f32 * 1.3).sin()).collect();
        let u = weights(&g, 1, 1);
        // Two tiles in a row of 6 columns, as 3 even then 3 odd ones; only the
        // first tile is checked.
        let rows: Vec<Vec<f32>> = (0..4)
            .map(|r| {
                let p = &d[4 * r..4 * r + 4];
                vec![p[0], p[2], 0.0, p[1], p[3], 0.0]
            })
            .collect();
        let mut v = vec![0f32; 16 * 2];
        input_tile_row([&rows[0], &rows[1], &rows[2], &rows[3]], 2, &mut v, 2);
        let m: Vec<f32> = (0..32).map(|i| v[i] * u[i / 2]).collect();
        let (mut top, mut bottom) = (vec![0f32; 4], vec![0f32; 4]);
        output_tile_row(&m, 2, 2, 0.5, &mut top, &mut bottom);
        for (y, x, got) in [
            (0, 0, top[0]),
            (0, 1, top[1]),
            (1, 0, bottom[0]),
            (1, 1, bottom[1]),
        ] {
            let mut want = 0.5f32;
            for a in 0..3 {
                for b in 0..3 {
                    want += d[4 * (y + a) + x + b] * g[3 * a + b];
                }
            }
            assert!((got - want).abs() < 1e-5, "({y}, {x}): {got} vs {want}");
        }
    }
}
