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

/// Tile placements along one axis of length `len`: the fewest tiles of at most
/// `tile` (the whole axis when `tile >= len`) whose neighbours overlap by at
/// least `overlap`, each then shortened to the least multiple of `size_multiple`
/// that still covers the axis with that overlap (so tiles are as large as needed
/// and no larger: on a 1152-pixel side, tiles of at most 768 overlapping by 64
/// come out as two of 640, not two of 768), with starts spread evenly and every
/// start a multiple of `align`. `len` and `tile` must be multiples of
/// `size_multiple`, itself a multiple of `align`, and `overlap` less than `tile`.
pub fn spans(
    len: usize,
    tile: usize,
    overlap: usize,
    align: usize,
    size_multiple: usize,
) -> Result<Vec<Range<usize>>> {
    if align == 0
        || size_multiple == 0
        || tile == 0
        || !size_multiple.is_multiple_of(align)
        || !len.is_multiple_of(size_multiple)
        || !tile.is_multiple_of(size_multiple)
    {
        candle_core::bail!(
            "tiles of {tile} over {len} pixels: both must be non-zero multiples of {size_multiple} (a multiple of the alignment {align})"
        )
    }
    if tile >= len {
        return Ok(std::iter::once(0..len).collect());
    }
    // The overlap in whole alignment steps, so that rounded starts keep it.
    let overlap = overlap.div_ceil(align) * align;
    if overlap >= tile {
        candle_core::bail!(
            "a tile overlap of {overlap} (in steps of {align}) must be less than the tile size {tile}"
        )
    }
    let count = 1 + (len - tile).div_ceil(tile - overlap);
    // The shortest tile covering the axis with `count` tiles and their overlaps;
    // at most `tile`, since `count` tiles of `tile` cover it.
    let needed = (len + (count - 1) * overlap).div_ceil(count);
    let tile = needed.div_ceil(size_multiple) * size_multiple;
    let last = len - tile;
    // Starts spread evenly between 0 and `last`, rounded down to the alignment:
    // consecutive starts then differ by at most `tile - overlap` (a multiple of
    // the alignment, at least `last / (count - 1)`).
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

/// The tiles of a `width x height` frame, row-major (see `spans`: tiles may be
/// shorter than `tile` along either axis, so not square).
pub fn grid(
    width: usize,
    height: usize,
    tile: usize,
    overlap: usize,
    align: usize,
    size_multiple: usize,
) -> Result<Vec<Tile>> {
    let rows = spans(height, tile, overlap, align, size_multiple)?;
    let cols = spans(width, tile, overlap, align, size_multiple)?;
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
/// The sum is kept frame by frame: placing a tile then makes whole-frame
/// temporaries of one frame, not of all `n` (at 3840x2176 and 21 frames that is
/// 2 GiB less per temporary in f32).
pub struct Blender {
    frames: Vec<Tensor>,
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
            frames: (0..frames)
                .map(|_| Tensor::zeros((1, channels, height, width), DType::F32, device))
                .collect::<Result<_>>()?,
        })
    }

    /// Adds `image` (`[n, c, h, w]`, any float dtype) at `tile`'s place, weighted.
    pub fn add(&mut self, image: &Tensor, tile: &Tile) -> Result<()> {
        if image.dim(0)? != self.frames.len() {
            candle_core::bail!(
                "blending a tile of {} frames into {} frames",
                image.dim(0)?,
                self.frames.len()
            )
        }
        let weights = tile.weight_tensor(image.device())?;
        for (i, sum) in self.frames.iter_mut().enumerate() {
            let (_, _, height, width) = sum.dims4()?;
            let placed = image
                .narrow(0, i, 1)?
                .to_dtype(DType::F32)?
                .broadcast_mul(&weights)?
                .pad_with_zeros(2, tile.rows.start, height - tile.rows.end)?
                .pad_with_zeros(3, tile.cols.start, width - tile.cols.end)?;
            *sum = (&*sum + placed)?;
        }
        Ok(())
    }

    /// The blended image, `[n, c, H, W]` f32.
    pub fn finish(self) -> Result<Tensor> {
        Tensor::cat(&self.frames, 0)
    }

    /// The blended image frame by frame, each `[1, c, H, W]` f32 (no copy).
    pub fn into_frames(self) -> Vec<Tensor> {
        self.frames
    }
}

/// Pixels cut off each side of an activation `[n, c, h, w]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Crop {
    pub(crate) top: usize,
    pub(crate) bottom: usize,
    pub(crate) left: usize,
    pub(crate) right: usize,
}

impl Crop {
    pub(crate) fn apply(&self, x: &Tensor) -> Result<Tensor> {
        if *self == Self::default() {
            return Ok(x.clone());
        }
        let (_, _, h, w) = x.dims4()?;
        if self.top + self.bottom >= h || self.left + self.right >= w {
            candle_core::bail!("decoder: crop {self:?} leaves nothing of a {w}x{h} activation")
        }
        x.narrow(2, self.top, h - self.top - self.bottom)?
            .narrow(3, self.left, w - self.left - self.right)?
            .contiguous()
    }
}

/// A tile widened by a halo and clamped to the frame, in output pixels.
pub(crate) struct Region {
    pub(crate) rows: Range<usize>,
    pub(crate) cols: Range<usize>,
}

impl Region {
    pub(crate) fn around(tile: &Tile, halo: usize, height: usize, width: usize) -> Self {
        let widen =
            |r: &Range<usize>, len: usize| r.start.saturating_sub(halo)..(r.end + halo).min(len);
        Self {
            rows: widen(&tile.rows, height),
            cols: widen(&tile.cols, width),
        }
    }

    /// What to cut off this region, at `scale` output pixels per activation
    /// pixel, to leave `inner`.
    pub(crate) fn crop_to(&self, inner: &Region, scale: usize) -> Crop {
        Crop {
            top: (inner.rows.start - self.rows.start) / scale,
            bottom: (self.rows.end - inner.rows.end) / scale,
            left: (inner.cols.start - self.cols.start) / scale,
            right: (self.cols.end - inner.cols.end) / scale,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_cover_the_axis_with_the_overlap() {
        for (len, tile, overlap, align, multiple) in [
            (1152, 256, 24, 8, 8),
            (1920, 512, 128, 128, 128),
            (640, 384, 128, 128, 128),
            (1024, 256, 0, 128, 128),
            (200, 64, 63, 1, 1),
            (1152, 768, 64, 16, 128),
            (1920, 512, 24, 16, 128),
        ] {
            let spans = spans(len, tile, overlap, align, multiple).unwrap();
            assert_eq!(spans[0].start, 0);
            assert_eq!(spans.last().unwrap().end, len);
            for pair in spans.windows(2) {
                assert!(pair[0].end >= pair[1].start + overlap, "{spans:?}");
                assert!(pair[1].start > pair[0].start, "{spans:?}");
            }
            for s in &spans {
                assert_eq!(s.len(), spans[0].len());
                assert!(s.len() <= tile && s.len().is_multiple_of(multiple));
                assert_eq!(s.start % align, 0);
            }
            // as few tiles as tiles of `tile` would need, and none shorter would do
            let stride = tile - overlap.div_ceil(align) * align;
            assert_eq!(spans.len(), 1 + (len - tile).div_ceil(stride), "{spans:?}");
            let shorter = spans[0].len() - multiple;
            assert!(
                spans.len() * shorter < len + (spans.len() - 1) * overlap,
                "{spans:?} could be shorter"
            );
        }
        // 1152 rows in tiles of at most 768 overlapping by 64: two of 640
        assert_eq!(spans(1152, 768, 64, 16, 128).unwrap(), [0..640, 512..1152]);
        let whole = spans(512, 768, 64, 128, 128).unwrap();
        assert_eq!((whole.len(), whole[0].clone()), (1, 0..512));
        assert!(spans(512, 100, 0, 128, 128).is_err());
        assert!(spans(512, 128, 128, 128, 128).is_err());
        assert!(spans(512, 128, 120, 16, 128).is_err());
    }

    #[test]
    fn weights_sum_to_one_and_fall_smoothly() {
        let spans = spans(1152, 256, 64, 8, 8).unwrap();
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
            let tiles = grid(512, 384, tile, overlap, 8, 8).unwrap();
            let mut blender = Blender::new(2, 3, 384, 512, &device).unwrap();
            for t in &tiles {
                let crop = image
                    .narrow(2, t.rows.start, t.height())
                    .unwrap()
                    .narrow(3, t.cols.start, t.width())
                    .unwrap();
                blender.add(&crop, t).unwrap();
            }
            let diff = crate::test_util::max_abs_diff(&blender.finish().unwrap(), &image).unwrap();
            let bound = if tiles.len() == 1 { 0.0 } else { 1e-5 };
            assert!(diff <= bound, "tile {tile} overlap {overlap}: {diff}");
        }
    }
}
