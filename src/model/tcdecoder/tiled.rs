//! The decoder in spatial tiles (docs/model.md, section "Tiles"): each tile
//! decodes its latent rectangle plus a halo of context, with its own temporal
//! memory, and the tiles, halo cropped off, are blended over their overlap.

use std::ops::Range;

use candle_core::{Result, Tensor};

use super::{COND_UNSHUFFLE, FRAMES_PER_LATENT, Memory, TcDecoder, TcDecoderState};
use crate::model::tiling::{self, Blender, Tile};

/// Spatial tiling of the decoder, in output pixels: tiles of `tile x tile`,
/// neighbours overlapping by `overlap`, blended over the overlap. Both are
/// multiples of 8 (whole latent pixels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderTiling {
    pub tile: usize,
    pub overlap: usize,
}

impl DecoderTiling {
    /// Context decoded around each tile on every side (clamped to the frame), in
    /// output pixels. One frame's receptive field is 19 latent pixels (152 output
    /// pixels): 11 3x3 convs at latent resolution (conv_in, conv_in2, 3 MemBlocks
    /// of 3), 1 + 9 at 2x, 1 + 9 at 4x, 3 at 8x; the MemBlocks' memory carries
    /// context further inward from one frame to the next. See docs/model.md,
    /// section "Tiles", for the measured error of each halo.
    pub const HALO: usize = 64;

    /// The halo in output pixels ([`Self::HALO`]).
    pub fn halo(&self) -> usize {
        Self::HALO
    }

    /// Checks that tile and overlap are whole latent pixels and the overlap is
    /// less than the tile; the error names the values.
    pub fn validate(&self) -> Result<()> {
        let s = COND_UNSHUFFLE;
        if self.tile == 0 || !self.tile.is_multiple_of(s) {
            candle_core::bail!(
                "decoder tile size {} is not a non-zero multiple of {s}",
                self.tile
            )
        }
        if !self.overlap.is_multiple_of(s) {
            candle_core::bail!(
                "decoder tile overlap {} is not a multiple of {s}",
                self.overlap
            )
        }
        if self.overlap >= self.tile {
            candle_core::bail!(
                "decoder tile overlap {} must be less than the tile size {}",
                self.overlap,
                self.tile
            )
        }
        Ok(())
    }

    /// The tiles of a `width x height` output frame (multiples of 8).
    pub fn tiles(&self, width: usize, height: usize) -> Result<Vec<Tile>> {
        self.validate()?;
        tiling::grid(width, height, self.tile, self.overlap, COND_UNSHUFFLE)
    }

    /// (width, height) in output pixels of the region each tile decodes, halo
    /// included, for a `width x height` (padded) frame; one entry per tile.
    pub fn decoded_sizes(&self, width: usize, height: usize) -> Result<Vec<(usize, usize)>> {
        let s = COND_UNSHUFFLE;
        let halo = self.halo() / s;
        Ok(self
            .tiles(width, height)?
            .iter()
            .map(|t| {
                let region = Region::around(t, halo, height / s, width / s);
                (s * region.cols.len(), s * region.rows.len())
            })
            .collect())
    }
}

/// The latent rectangle a tile decodes: the tile widened by the halo, clamped.
struct Region {
    rows: Range<usize>,
    cols: Range<usize>,
}

impl Region {
    /// `halo` and the frame size `h x w` in latent pixels.
    fn around(tile: &Tile, halo: usize, h: usize, w: usize) -> Self {
        let s = COND_UNSHUFFLE;
        let widen = |r: &Range<usize>, len: usize| {
            (r.start / s).saturating_sub(halo)..(r.end / s + halo).min(len)
        };
        Self {
            rows: widen(&tile.rows, h),
            cols: widen(&tile.cols, w),
        }
    }
}

impl TcDecoder {
    /// Decodes `x` `[f, in_channels, h, w]` tile by tile with the state's tiling
    /// and halo, one memory per tile: `[4f, 3, 8h, 8w]` in [-1, 1], f32.
    pub(super) fn decode_tiled(
        &self,
        x: &Tensor,
        tiling: &DecoderTiling,
        state: &mut TcDecoderState,
    ) -> Result<Tensor> {
        let s = COND_UNSHUFFLE;
        let (f, _, h, w) = x.dims4()?;
        let tiles = tiling.tiles(s * w, s * h)?;
        // The frame size is fixed for the stream (checked by `decode`), so is the grid.
        state.memories.resize_with(tiles.len(), Memory::default);
        let halo = state.halo / s;
        let mut blender = Blender::new(FRAMES_PER_LATENT * f, 3, s * h, s * w, x.device())?;
        for (tile, memory) in tiles.iter().zip(state.memories.iter_mut()) {
            state.cancel.check()?;
            let region = Region::around(tile, halo, h, w);
            let input = x.narrow(2, region.rows.start, region.rows.len())?.narrow(
                3,
                region.cols.start,
                region.cols.len(),
            )?;
            let decoded = self.decode_region(&input, memory, &state.cancel)?;
            let cropped = decoded
                .narrow(2, tile.rows.start - s * region.rows.start, tile.height())?
                .narrow(3, tile.cols.start - s * region.cols.start, tile.width())?;
            blender.add(&cropped, tile)?;
        }
        Ok(blender.finish())
    }
}
