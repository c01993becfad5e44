//! The three transforms of the Winograd F(4x4, 3x3) convolution
//! ([`super::winograd`] with 6x6 tiles 4 apart): 36 multiplications per 4x4
//! outputs (2.25 per output, against 4 for F(2x2, 3x3) and 9 for the taps), with
//!
//! ```text
//!       |  1/4    0     0  |         | 4  0 -5  0  1  0 |
//!       | -1/6  -1/6  -1/6 |         | 0 -4 -4  1  1  0 |         | 1  1  1  1  1  0 |
//!   G = | -1/6   1/6  -1/6 |  B^T =  | 0  4 -4 -1  1  0 |  A^T =  | 0  1 -1  2 -2  0 |
//!       | 1/24  1/12   1/6 |         | 0 -2 -1  2  1  0 |         | 0  1  1  4  4  0 |
//!       | 1/24 -1/12   1/6 |         | 0  2 -1 -2  1  0 |         | 0  1 -1  8 -8  1 |
//!       |   0     0     1  |         | 0  4  0 -5  0  1 |
//! ```
//!
//! The 36 transformed values of a tile are indexed `xi = 6 i + j`. The larger
//! interpolation points cost accuracy: on unit-scale data the outputs differ from
//! the tap path by about 10x what F(2x2, 3x3) gives (measured in the tests and by
//! `conv_bench`), still far inside the golden tolerances.

use super::fast_math::simd_kernel;
use super::winograd_transforms::LANES;

/// Output pixels per tile side.
pub(crate) const M: usize = 4;
/// Input pixels per tile side.
pub(crate) const ALPHA: usize = 6;

const G: [[f64; 3]; ALPHA] = [
    [0.25, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

/// `[c_out, c_in, 3, 3]` kernels to `[36, c_out, c_in]` transformed weights
/// `G g G^T`, summed in f64.
pub(crate) fn weights(kernel: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    let pairs = c_out * c_in;
    let mut u = vec![0f32; ALPHA * ALPHA * pairs];
    for (pair, g) in kernel.chunks_exact(9).enumerate() {
        for i in 0..ALPHA {
            for j in 0..ALPHA {
                let mut sum = 0f64;
                for a in 0..3 {
                    for b in 0..3 {
                        sum += G[i][a] * f64::from(g[3 * a + b]) * G[j][b];
                    }
                }
                u[(ALPHA * i + j) * pairs + pair] = sum as f32;
            }
        }
    }
    u
}

/// The inverse of [`weights`], through the left inverse `L` of `G` (`L G = I`:
/// rows `4 G_0`, `3 (G_2 - G_1)`, `G_5`), for the portable path forced on a
/// CPU-loaded layer.
pub(crate) fn kernels_from_weights(u: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    const L: [[f64; ALPHA]; 3] = [
        [4.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        [0.0, -3.0, 3.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
    ];
    let pairs = c_out * c_in;
    let mut kernel = vec![0f32; 9 * pairs];
    for (pair, g) in kernel.chunks_exact_mut(9).enumerate() {
        for a in 0..3 {
            for b in 0..3 {
                let mut sum = 0f64;
                for i in 0..ALPHA {
                    for j in 0..ALPHA {
                        sum += L[a][i] * f64::from(u[(ALPHA * i + j) * pairs + pair]) * L[b][j];
                    }
                }
                g[3 * a + b] = sum as f32;
            }
        }
    }
    kernel
}

/// `B^T x` for one 6-vector.
#[inline(always)]
fn input_1d(x: [f32; ALPHA]) -> [f32; ALPHA] {
    let [x0, x1, x2, x3, x4, x5] = x;
    [
        4.0 * x0 - 5.0 * x2 + x4,
        -4.0 * (x1 + x2) + x3 + x4,
        4.0 * (x1 - x2) - x3 + x4,
        2.0 * (x3 - x1) - x2 + x4,
        2.0 * (x1 - x3) - x2 + x4,
        4.0 * x1 - 5.0 * x3 + x5,
    ]
}

/// `A^T m` for one 6-vector.
#[inline(always)]
fn output_1d(m: [f32; ALPHA]) -> [f32; M] {
    let [m0, m1, m2, m3, m4, m5] = m;
    let (s12, d12, s34, d34) = (m1 + m2, m1 - m2, m3 + m4, m3 - m4);
    [
        m0 + s12 + s34,
        d12 + 2.0 * d34,
        s12 + 4.0 * s34,
        d12 + 8.0 * d34 + m5,
    ]
}

simd_kernel! {
    /// One tile row of one channel: `rows` are the 6 input rows of the tiles,
    /// each split into its 4 column phases of `tiles + 1` values (phase `p`
    /// holds columns `4 k + p`); tile `t` reads columns `4 t..4 t + 6`, i.e.
    /// phases 0-3 at `t` and 0-1 at `t + 1`. Writes `V` of tile `t` to
    /// `out[xi * stride + t]` for the 36 `xi`.
    ///
    /// Runs [`LANES`] tiles at a time through fixed-size arrays, each result
    /// stored as one run (as the F(2x2) transforms do, and for the same
    /// reason: tile by tile, the compiler kept a scalar loop).
    pub(crate) fn input_tile_row(rows: [&[f32]; ALPHA], tiles: usize, out: &mut [f32], stride: usize) {
        let np = tiles + 1;
        let out = &mut out[..(ALPHA * ALPHA - 1) * stride + tiles];
        let whole = tiles - tiles % LANES;
        for t in (0..whole).step_by(LANES) {
            // a constant length: whole vectors, copies the compiler inlines
            input_block(&rows, np, t, LANES, out, stride);
        }
        if whole < tiles {
            input_block(&rows, np, whole, tiles - whole, out, stride);
        }
    }
}

/// Tiles `t..t + n` of [`input_tile_row`] (rows in phases of `np` values),
/// stored one run per value.
#[inline(always)]
fn input_block(
    rows: &[&[f32]; ALPHA],
    np: usize,
    t: usize,
    n: usize,
    out: &mut [f32],
    stride: usize,
) {
    // d[row][column][lane]: the tiles' 6x6 inputs side by side
    let mut d = [[[0f32; LANES]; ALPHA]; ALPHA];
    for (d, row) in d.iter_mut().zip(rows) {
        for (j, d) in d.iter_mut().enumerate() {
            d[..n].copy_from_slice(&row[(j % M) * np + t + j / M..][..n]);
        }
    }
    let mut v = [[0f32; LANES]; ALPHA * ALPHA];
    transform_lanes(&d, n, &mut v);
    for (xi, v) in v.iter().enumerate() {
        out[xi * stride + t..][..n].copy_from_slice(&v[..n]);
    }
}

/// `B^T d B` of the first `n` lanes: `d[i][j][lane]`, into `v[6 i + j][lane]`.
#[inline(always)]
fn transform_lanes(
    d: &[[[f32; LANES]; ALPHA]; ALPHA],
    n: usize,
    v: &mut [[f32; LANES]; ALPHA * ALPHA],
) {
    for l in 0..n {
        // B^T d: down each of the tile's 6 columns.
        let mut r = [[0f32; ALPHA]; ALPHA];
        for j in 0..ALPHA {
            let column = [
                d[0][j][l], d[1][j][l], d[2][j][l], d[3][j][l], d[4][j][l], d[5][j][l],
            ];
            for (row, y) in r.iter_mut().zip(input_1d(column)) {
                row[j] = y;
            }
        }
        // (B^T d) B: along each row.
        for (i, row) in r.iter().enumerate() {
            for (j, y) in input_1d(*row).into_iter().enumerate() {
                v[ALPHA * i + j][l] = y;
            }
        }
    }
}

simd_kernel! {
    /// One tile row of one output channel: `m[xi * stride + t]` are the products
    /// of tile `t`; writes `A^T M A + bias`, the tile's 4x4 outputs, to
    /// `out[y][4 t..4 t + 4]` for its 4 output rows `y` (each `4 * tiles` long).
    pub(crate) fn output_tile_row(m: &[f32], stride: usize, tiles: usize, bias: f32, out: [&mut [f32]; M]) {
        let [o0, o1, o2, o3] = out;
        let mut lines = [&mut o0[..M * tiles], &mut o1[..M * tiles], &mut o2[..M * tiles], &mut o3[..M * tiles]];
        let whole = tiles - tiles % LANES;
        for t in (0..whole).step_by(LANES) {
            // a constant length: whole vectors, copies the compiler inlines
            output_block(m, stride, t, LANES, bias, &mut lines);
        }
        if whole < tiles {
            output_block(m, stride, whole, tiles - whole, bias, &mut lines);
        }
    }
}

/// Tiles `t..t + n` of [`output_tile_row`], read one run per value.
#[inline(always)]
fn output_block(
    m: &[f32],
    stride: usize,
    t: usize,
    n: usize,
    bias: f32,
    lines: &mut [&mut [f32]; M],
) {
    // block[xi][lane]: the products of the tiles side by side
    let mut block = [[0f32; LANES]; ALPHA * ALPHA];
    for (xi, b) in block.iter_mut().enumerate() {
        b[..n].copy_from_slice(&m[xi * stride + t..][..n]);
    }
    let mut y = [[0f32; M * LANES]; M];
    inverse_lanes(&block, n, bias, &mut y);
    for (line, y) in lines.iter_mut().zip(&y) {
        line[M * t..][..M * n].copy_from_slice(&y[..M * n]);
    }
}

/// `A^T M A + bias` of the first `n` lanes of `m` (`m[xi][lane]`): output row
/// `y` of each tile, its 4 columns side by side (`out[y][4 lane + x]`).
#[inline(always)]
fn inverse_lanes(
    m: &[[f32; LANES]; ALPHA * ALPHA],
    n: usize,
    bias: f32,
    out: &mut [[f32; M * LANES]; M],
) {
    for l in 0..n {
        // A^T M: per column j.
        let mut s = [[0f32; ALPHA]; M];
        for j in 0..ALPHA {
            let column = std::array::from_fn(|i| m[ALPHA * i + j][l]);
            for (y, v) in output_1d(column).into_iter().enumerate() {
                s[y][j] = v;
            }
        }
        for (y, line) in out.iter_mut().enumerate() {
            for (x, v) in output_1d(s[y]).into_iter().enumerate() {
                line[M * l + x] = v + bias;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_transform_inverts() {
        let kernel: Vec<f32> = (0..2 * 3 * 9).map(|i| (i as f32 * 0.37).sin()).collect();
        let back = kernels_from_weights(&weights(&kernel, 2, 3), 2, 3);
        for (a, b) in kernel.iter().zip(&back) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    /// Two tiles in a row through all three transforms equal the direct 3x3
    /// correlation of their 6x10 patch.
    #[test]
    fn tiles_equal_direct_convolution() {
        let (h, w, tiles) = (ALPHA, 2 * M + 2, 2);
        let d: Vec<f32> = (0..h * w).map(|i| (i as f32 * 0.71).cos()).collect();
        let g: Vec<f32> = (0..9).map(|i| (i as f32 * 1.3).sin()).collect();
        let u = weights(&g, 1, 1);
        let n = tiles + 1;
        // each row split into its 4 column phases of `tiles + 1` (zero beyond w)
        let rows: Vec<Vec<f32>> = (0..h)
            .map(|r| {
                let mut split = vec![0f32; M * n];
                for x in 0..w {
                    split[(x % M) * n + x / M] = d[r * w + x];
                }
                split
            })
            .collect();
        let row_refs: [&[f32]; ALPHA] = std::array::from_fn(|i| rows[i].as_slice());
        let mut v = vec![0f32; ALPHA * ALPHA * tiles];
        input_tile_row(row_refs, tiles, &mut v, tiles);
        let m: Vec<f32> = (0..v.len()).map(|i| v[i] * u[i / tiles]).collect();
        let mut out = vec![vec![0f32; M * tiles]; M];
        let [a, b, c, e] = &mut out[..] else {
            unreachable!()
        };
        output_tile_row(&m, tiles, tiles, 0.5, [a, b, c, e]);
        for (y, line) in out.iter().enumerate() {
            for (x, &got) in line.iter().enumerate() {
                let mut want = 0.5f32;
                for i in 0..3 {
                    for j in 0..3 {
                        want += d[(y + i) * w + x + j] * g[3 * i + j];
                    }
                }
                assert!((got - want).abs() < 1e-4, "({y}, {x}): {got} vs {want}");
            }
        }
    }
}
