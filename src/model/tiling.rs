//! Overlapping spatial tiles and their blending, shared by the tiled streams and
//! the tiled decoder (docs/model.md, section "Tiles").
//!
//! Along each axis, tiles of one size cover the frame; neighbours share at least
//! the requested overlap, spread evenly. Across an overlap each tile's weight
//! falls smoothly (a raised cosine) and the weights are normalised to sum to 1 at
//! every pixel, so a blend of identical tiles gives the same image back and no
//! step shows at a tile border. A grid's weights are separable (row weight times
//! column weight), and so is their sum, so the normalisation is per axis.
//! Blending uses only tensor ops every device has (mul, pad, add).

use std::f64::consts::PI;
use std::ops::Range;

use candle_core::{DType, Device, Result, Tensor};

/// Tile placements along one axis of length `len`: tiles of `tile` (the whole
/// axis when `tile >= len`), neighbours overlapping by at least `overlap`, every
/// start a multiple of `align`. `len` and `tile` must be multiples of `align`,
/// and `overlap` less than `tile`.
pub fn spans(len: usize, tile: usize, overlap: usize, align: usize) -> Result<Vec<Range<usize>>> {
    if align == 0 || tile == 0 || !len.is_multiple_of(align) || !tile.is_multiple_of(align) {
        candle_core::bail!(
            "tiles of {tile} over {len} pixels: both must be non-zero multiples of {align}"
        )
    }
    if tile >= len {
        return Ok(std::iter::once(0..len).collect());
    }
    if overlap >= tile {
        candle_core::bail!("a tile overlap of {overlap} must be less than the tile size {tile}")
    }
    // The largest stride that keeps the overlap, in whole alignment steps.
    let stride = ((tile - overlap) / align).max(1) * align;
    let count = 1 + (len - tile).div_ceil(stride);
    let last = len - tile;
    // Starts spread evenly between 0 and `last`, rounded down to the alignment:
    // consecutive starts then differ by at most `stride`.
    Ok((0..count)
        .map(|i| {
            let start = (last * i / (count - 1)) / align * align;
            start..start + tile
        })
        .collect())
}

/// A raised-cosine ramp from near 0 to near 1 over `width` pixels, sampled at
/// pixel centres (never exactly 0, so every pixel of a tile keeps some weight).
fn ramp(position: usize, width: usize) -> f64 {
    0.5 - 0.5 * (PI * (position as f64 + 0.5) / width as f64).cos()
}

/// The unnormalised weight of each pixel of `spans[index]`: 1 inside, ramping
/// down across the overlap with each neighbour.
fn raw_weights(spans: &[Range<usize>], index: usize) -> Vec<f64> {
    let span = &spans[index];
    let left = index
        .checked_sub(1)
        .map(|i| spans[i].end.saturating_sub(span.start));
    let right = spans
        .get(index + 1)
        .map(|next| span.end.saturating_sub(next.start));
    span.clone()
        .map(|x| {
            let mut w = 1.0;
            if let Some(width) = left.filter(|&w| w > 0) {
                let offset = x - span.start;
                if offset < width {
                    w *= ramp(offset, width);
                }
            }
            if let Some(width) = right.filter(|&w| w > 0) {
                let offset = span.end - 1 - x;
                if offset < width {
                    w *= ramp(offset, width);
                }
            }
            w
        })
        .collect()
}

/// Per-axis blend weights of every span, normalised so that at every position
/// the weights of the spans covering it sum to 1.
pub fn axis_weights(spans: &[Range<usize>]) -> Vec<Vec<f32>> {
    let len = spans.iter().map(|s| s.end).max().unwrap_or(0);
    let raw: Vec<Vec<f64>> = (0..spans.len()).map(|i| raw_weights(spans, i)).collect();
    let mut total = vec![0.0f64; len];
    for (span, weights) in spans.iter().zip(&raw) {
        for (x, w) in span.clone().zip(weights) {
            total[x] += w;
        }
    }
    spans
        .iter()
        .zip(&raw)
        .map(|(span, weights)| {
            span.clone()
                .zip(weights)
                .map(|(x, w)| (w / total[x]) as f32)
                .collect()
        })
        .collect()
}

/// One tile of a grid: its rows and columns, and its normalised weights.
#[derive(Debug, Clone, PartialEq)]
pub struct Tile {
    pub rows: Range<usize>,
    pub cols: Range<usize>,
    pub row_weights: Vec<f32>,
    pub col_weights: Vec<f32>,
}

impl Tile {
    pub fn height(&self) -> usize {
        self.rows.len()
    }
    pub fn width(&self) -> usize {
        self.cols.len()
    }
    /// The weights as a `[1, 1, h, w]` f32 tensor.
    pub fn weight_tensor(&self, device: &Device) -> Result<Tensor> {
        let rows = Tensor::from_slice(&self.row_weights, (self.height(), 1), device)?;
        let cols = Tensor::from_slice(&self.col_weights, (1, self.width()), device)?;
        rows.broadcast_mul(&cols)?
            .reshape((1, 1, self.height(), self.width()))
    }
}

/// The tiles of a `width x height` frame, row-major.
pub fn grid(
    width: usize,
    height: usize,
    tile: usize,
    overlap: usize,
    align: usize,
) -> Result<Vec<Tile>> {
    let rows = spans(height, tile, overlap, align)?;
    let cols = spans(width, tile, overlap, align)?;
    let (row_weights, col_weights) = (axis_weights(&rows), axis_weights(&cols));
    let mut tiles = Vec::with_capacity(rows.len() * cols.len());
    for (r, rw) in rows.iter().zip(&row_weights) {
        for (c, cw) in cols.iter().zip(&col_weights) {
            tiles.push(Tile {
                rows: r.clone(),
                cols: c.clone(),
                row_weights: rw.clone(),
                col_weights: cw.clone(),
            });
        }
    }
    Ok(tiles)
}

/// Sums weighted tiles of `[n, c, h, w]` images into one `[n, c, H, W]` image.
pub struct Blender {
    acc: Tensor,
}

impl Blender {
    pub fn new(
        frames: usize,
        channels: usize,
        height: usize,
        width: usize,
        device: &Device,
    ) -> Result<Self> {
        Ok(Self {
            acc: Tensor::zeros((frames, channels, height, width), DType::F32, device)?,
        })
    }

    /// Adds `image` (`[n, c, h, w]`, any float dtype) at `tile`'s place, weighted.
    pub fn add(&mut self, image: &Tensor, tile: &Tile) -> Result<()> {
        let (_, _, height, width) = self.acc.dims4()?;
        let weighted = image
            .to_dtype(DType::F32)?
            .broadcast_mul(&tile.weight_tensor(image.device())?)?;
        let placed = weighted
            .pad_with_zeros(2, tile.rows.start, height - tile.rows.end)?
            .pad_with_zeros(3, tile.cols.start, width - tile.cols.end)?;
        self.acc = (&self.acc + placed)?;
        Ok(())
    }

    /// The blended image, f32.
    pub fn finish(self) -> Tensor {
        self.acc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_cover_the_axis_with_the_overlap() {
        for (len, tile, overlap, align) in [
            (1152, 256, 24, 8),
            (1920, 512, 128, 128),
            (640, 384, 128, 128),
            (1024, 256, 0, 128),
            (200, 64, 63, 1),
        ] {
            let spans = spans(len, tile, overlap, align).unwrap();
            assert_eq!(spans[0].start, 0);
            assert_eq!(spans.last().unwrap().end, len);
            for pair in spans.windows(2) {
                assert!(pair[0].end >= pair[1].start + overlap, "{spans:?}");
                assert!(pair[1].start > pair[0].start, "{spans:?}");
            }
            for s in &spans {
                assert_eq!(s.len(), tile);
                assert_eq!(s.start % align, 0);
            }
        }
        let whole = spans(512, 768, 64, 128).unwrap();
        assert_eq!((whole.len(), whole[0].clone()), (1, 0..512));
        assert!(spans(512, 100, 0, 128).is_err());
        assert!(spans(512, 128, 128, 128).is_err());
    }

    #[test]
    fn weights_sum_to_one_and_fall_smoothly() {
        let spans = spans(1152, 256, 64, 8).unwrap();
        let weights = axis_weights(&spans);
        let mut total = vec![0.0f32; 1152];
        for (s, w) in spans.iter().zip(&weights) {
            for (x, v) in s.clone().zip(w) {
                assert!(*v > 0.0);
                total[x] += v;
            }
        }
        assert!(total.iter().all(|t| (t - 1.0).abs() < 1e-6));
        // across an overlap the first tile's weight only falls, by small steps
        let (w0, alone) = (&weights[0], spans[1].start);
        assert!(w0[..alone].iter().all(|&v| v == 1.0));
        for pair in w0[alone..].windows(2) {
            assert!(pair[1] <= pair[0] && pair[0] - pair[1] < 0.05);
        }
    }

    #[test]
    fn a_whole_frame_tile_is_the_frame_and_blending_keeps_an_image() {
        let device = Device::Cpu;
        let image = Tensor::arange(0f32, (2 * 3 * 384 * 512) as f32, &device)
            .unwrap()
            .reshape((2, 3, 384, 512))
            .unwrap()
            .sin()
            .unwrap();
        for (tile, overlap) in [(512, 0), (256, 64), (128, 0), (256, 200)] {
            let tiles = grid(512, 384, tile, overlap, 8).unwrap();
            let mut blender = Blender::new(2, 3, 384, 512, &device).unwrap();
            for t in &tiles {
                let crop = image
                    .narrow(2, t.rows.start, t.height())
                    .unwrap()
                    .narrow(3, t.cols.start, t.width())
                    .unwrap();
                blender.add(&crop, t).unwrap();
            }
            let diff = (blender.finish() - &image)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let bound = if tiles.len() == 1 { 0.0 } else { 1e-5 };
            assert!(diff <= bound, "tile {tile} overlap {overlap}: {diff}");
        }
    }
}
