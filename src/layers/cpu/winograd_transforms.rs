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

/// Tiles the transforms (F(2x2)'s and F(4x4)'s) take at once: one AVX-512
/// vector of each value.
pub(super) const LANES: usize = 16;

simd_kernel! {
    /// One tile row of one channel: `rows` are the 4 input rows of the tiles,
    /// each as its `tiles + 1` even columns then its `tiles + 1` odd ones; tile
    /// `t` reads columns `2 t..2 t + 4`, i.e. even `t`, odd `t`, even `t + 1`,
    /// odd `t + 1`. Writes `V` of tile `t` to `out[xi * stride + t]` for the 16 `xi`.
    ///
    /// Runs [`LANES`] tiles at a time through fixed-size arrays, each of the 16
    /// results then stored as one run: written tile by tile, with 16 stores a
    /// tile into one slice, the compiler kept a scalar loop for most calls.
    pub(crate) fn input_tile_row(rows: [&[f32]; 4], tiles: usize, out: &mut [f32], stride: usize) {
        let half = tiles + 1;
        let [r0, r1, r2, r3] = rows;
        let phases = [
            r0[..2 * half].split_at(half),
            r1[..2 * half].split_at(half),
            r2[..2 * half].split_at(half),
            r3[..2 * half].split_at(half),
        ];
        let out = &mut out[..15 * stride + tiles];
        let whole = tiles - tiles % LANES;
        for t in (0..whole).step_by(LANES) {
            // a constant length: one vector per value, stores the compiler inlines
            input_block(&phases, t, LANES, out, stride);
        }
        if whole < tiles {
            input_block(&phases, whole, tiles - whole, out, stride);
        }
    }
}

/// Tiles `t..t + n` of [`input_tile_row`], stored one run per value.
#[inline(always)]
fn input_block(phases: &[(&[f32], &[f32]); 4], t: usize, n: usize, out: &mut [f32], stride: usize) {
    let mut v = [[0f32; LANES]; 16];
    transform_lanes(phases, t, n, &mut v);
    for (xi, v) in v.iter().enumerate() {
        out[xi * stride + t..][..n].copy_from_slice(&v[..n]);
    }
}

/// `V = B^T d B` of tiles `t..t + n` (`n <= LANES`) of one tile row
/// ([`input_tile_row`]'s `(even, odd)` column phases of the 4 input rows),
/// tile `t + l` into lane `l` of `v[4 i + j]`.
#[inline(always)]
fn transform_lanes(phases: &[(&[f32], &[f32]); 4], t: usize, n: usize, v: &mut [[f32; LANES]; 16]) {
    let [(e0, o0), (e1, o1), (e2, o2), (e3, o3)] = *phases;
    let (e0, o0, e1, o1) = (
        &e0[t..t + n + 1],
        &o0[t..t + n + 1],
        &e1[t..t + n + 1],
        &o1[t..t + n + 1],
    );
    let (e2, o2, e3, o3) = (
        &e2[t..t + n + 1],
        &o2[t..t + n + 1],
        &e3[t..t + n + 1],
        &o3[t..t + n + 1],
    );
    for l in 0..n {
        // the tile's 4x4 inputs, row by row
        let d0 = [e0[l], o0[l], e0[l + 1], o0[l + 1]];
        let d1 = [e1[l], o1[l], e1[l + 1], o1[l + 1]];
        let d2 = [e2[l], o2[l], e2[l + 1], o2[l + 1]];
        let d3 = [e3[l], o3[l], e3[l + 1], o3[l + 1]];
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
            v[4 * i][l] = r[0] - r[2];
            v[4 * i + 1][l] = r[1] + r[2];
            v[4 * i + 2][l] = r[2] - r[1];
            v[4 * i + 3][l] = r[1] - r[3];
        }
    }
}

simd_kernel! {
    /// One tile row of one output channel: `m[xi * stride + t]` are the products
    /// of tile `t`; writes `A^T M A + bias`, the tile's 2x2 outputs, to
    /// `top[2 t..2 t + 2]` and `bottom[2 t..2 t + 2]` (each `2 * tiles` long).
    pub(crate) fn output_tile_row(m: &[f32], stride: usize, tiles: usize, bias: f32, top: &mut [f32], bottom: &mut [f32]) {
        let (top, bottom) = (&mut top[..2 * tiles], &mut bottom[..2 * tiles]);
        let whole = tiles - tiles % LANES;
        for t in (0..whole).step_by(LANES) {
            // a constant length: whole vectors, copies the compiler inlines
            output_block(m, stride, t, LANES, bias, (top, bottom));
        }
        if whole < tiles {
            output_block(m, stride, whole, tiles - whole, bias, (top, bottom));
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
    (top, bottom): (&mut [f32], &mut [f32]),
) {
    // block[xi][lane]: the products of the tiles side by side
    let mut block = [[0f32; LANES]; 16];
    for (xi, b) in block.iter_mut().enumerate() {
        b[..n].copy_from_slice(&m[xi * stride + t..][..n]);
    }
    let mut y = [[0f32; 2 * LANES]; 2];
    inverse_lanes(&block, n, bias, &mut y);
    top[2 * t..][..2 * n].copy_from_slice(&y[0][..2 * n]);
    bottom[2 * t..][..2 * n].copy_from_slice(&y[1][..2 * n]);
}

/// `A^T M A + bias` of the first `n` lanes of `m` (`m[xi][lane]`): the top
/// and bottom output rows of each tile, its two columns side by side
/// (`y[row][2 lane + column]`).
#[inline(always)]
fn inverse_lanes(m: &[[f32; LANES]; 16], n: usize, bias: f32, y: &mut [[f32; 2 * LANES]; 2]) {
    for l in 0..n {
        // A^T M: rows 0 + 1 + 2 and 1 - 2 - 3, per column j.
        let mut s = [0f32; 4];
        let mut d = [0f32; 4];
        for j in 0..4 {
            let (a, b, c, e) = (m[j][l], m[4 + j][l], m[8 + j][l], m[12 + j][l]);
            s[j] = a + b + c;
            d[j] = b - c - e;
        }
        y[0][2 * l] = s[0] + s[1] + s[2] + bias;
        y[0][2 * l + 1] = s[1] - s[2] - s[3] + bias;
        y[1][2 * l] = d[0] + d[1] + d[2] + bias;
        y[1][2 * l + 1] = d[1] - d[2] - d[3] + bias;
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

    /// The input transform of a row of tiles, in whole vectors of tiles and a
    /// shorter last one, equals `B^T d B` tile by tile.
    #[test]
    fn input_tile_row_equals_each_tile_transformed() {
        const BT: [[f32; 4]; 4] = [
            [1.0, 0.0, -1.0, 0.0],
            [0.0, 1.0, 1.0, 0.0],
            [0.0, -1.0, 1.0, 0.0],
            [0.0, 1.0, 0.0, -1.0],
        ];
        let tiles = 2 * LANES + 5;
        let width = 2 * (tiles + 1);
        let rows: Vec<Vec<f32>> = (0..4)
            .map(|r| {
                (0..width)
                    .map(|x| ((r * width + x) as f32 * 0.37).sin())
                    .collect()
            })
            .collect();
        // each row as its even then its odd columns
        let phased: Vec<Vec<f32>> = rows
            .iter()
            .map(|row| {
                row.iter()
                    .step_by(2)
                    .chain(row.iter().skip(1).step_by(2))
                    .copied()
                    .collect()
            })
            .collect();
        let stride = tiles + 3;
        let mut out = vec![f32::NAN; 16 * stride];
        input_tile_row(
            [&phased[0], &phased[1], &phased[2], &phased[3]],
            tiles,
            &mut out,
            stride,
        );
        for t in 0..tiles {
            let d = |i: usize, j: usize| rows[i][2 * t + j];
            for i in 0..4 {
                for j in 0..4 {
                    let want: f32 = (BT[i].iter().enumerate())
                        .map(|(a, &ia)| {
                            let row = BT[j].iter().enumerate();
                            row.map(|(b, &jb)| ia * d(a, b) * jb).sum::<f32>()
                        })
                        .sum();
                    let got = out[(4 * i + j) * stride + t];
                    assert!(
                        (got - want).abs() < 1e-5,
                        "tile {t}, ({i}, {j}): {got} vs {want}"
                    );
                }
            }
        }
    }

    /// The output transform of a row of tiles, in whole vectors of tiles and
    /// a shorter last one, equals `A^T M A + bias` tile by tile.
    #[test]
    fn output_tile_row_equals_each_tile_transformed() {
        const AT: [[f32; 4]; 2] = [[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, -1.0, -1.0]];
        let tiles = 2 * LANES + 5;
        let stride = tiles + 3;
        let m: Vec<f32> = (0..16 * stride).map(|i| (i as f32 * 0.61).cos()).collect();
        let (mut top, mut bottom) = (vec![f32::NAN; 2 * tiles], vec![f32::NAN; 2 * tiles]);
        output_tile_row(&m, stride, tiles, 0.25, &mut top, &mut bottom);
        for t in 0..tiles {
            for (y, row) in [&top, &bottom].into_iter().enumerate() {
                for x in 0..2 {
                    let want: f32 = (AT[y].iter().enumerate())
                        .map(|(i, &yi)| {
                            let cols = AT[x].iter().enumerate();
                            cols.map(|(j, &xj)| yi * m[(4 * i + j) * stride + t] * xj)
                                .sum::<f32>()
                        })
                        .sum::<f32>()
                        + 0.25;
                    let got = row[2 * t + x];
                    assert!(
                        (got - want).abs() < 1e-5,
                        "tile {t}, ({y}, {x}): {got} vs {want}"
                    );
                }
            }
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
