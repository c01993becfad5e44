//! The decoder in spatial tiles (docs/model.md, section "Tiles"): each tile
//! decodes its latent rectangle plus a halo of context, with its own temporal
//! memory, and the tiles, halo cropped off, are blended over their overlap.

use crate::model::cancel::CancelToken;

use candle_core::{Result, Tensor};

use super::{COND_UNSHUFFLE, FRAMES_PER_LATENT, Memory, TcDecoder, TcDecoderState};
use crate::model::tiling::{self, Blender, Crop, Region, Tile};

/// Spatial tiling of the decoder, in output pixels: tiles of `tile x tile`,
/// neighbours overlapping by `overlap`, blended over the overlap. Both are
/// multiples of 8 (whole latent pixels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderTiling {
    pub tile: usize,
    pub overlap: usize,
}

impl DecoderTiling {
    /// Context kept around each tile on every side (clamped to the frame), in
    /// output pixels, at the decoder's four resolutions: its input (latent
    /// pixels), and after stage 0 (2x), 1 (4x) and 2 (8x). Each stage needs less
    /// context than the one before, so the region narrows as it goes up in
    /// resolution, where activations are largest.
    ///
    /// The receptive field, counted in 3x3 convs (docs/model.md, "The decoder"):
    /// 11 at latent resolution (decoder.1, .3 and 3 MemBlocks of 3), 10 at 2x,
    /// 10 at 4x, 3 at 8x: 151 output pixels in all; 59 left after stage 0's last
    /// conv, 21 after stage 1's, 2 after stage 2's. The MemBlocks' memory does not
    /// widen it: a block sees its own input one frame earlier, no further out. So
    /// 152/64/24/8 is exact (to float rounding); the input halo, where each
    /// pixel costs least, can be cut to 96 with no measurable change: on the
    /// sparse-v1.1 golden case (384x256, tiles of 128 overlapping by 32, 4
    /// chunks) the largest difference from whole frames is 3.6e-6 with 96 or
    /// 152, 7.3e-4 with 64, 2.7e-2 with 32 and 0.56 with none (docs/model.md,
    /// "Tiles").
    pub const HALO: [usize; 4] = [96, 64, 24, 8];

    /// The overlap of neighbouring decoder tiles that the engine uses, in
    /// output pixels. The halo, not the overlap, gives each tile its context:
    /// with no overlap at all the tiles differ from whole frames by at most
    /// 1.3e-4 (docs/model.md, "Tiles"), so the overlap only has to fade that
    /// over a few pixels, and every pixel more is decoded twice.
    pub const OVERLAP: usize = 16;

    /// The context decoded around each tile at the decoder's input, in output
    /// pixels (the widest of [`Self::HALO`]).
    pub fn halo(&self) -> usize {
        Self::HALO[0]
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
        tiling::grid(
            width,
            height,
            self.tile,
            self.overlap,
            COND_UNSHUFFLE,
            COND_UNSHUFFLE,
        )
    }

    /// (width, height) in output pixels of the region each tile decodes, halo
    /// included, for a `width x height` (padded) frame; one entry per tile. This
    /// is the region at full resolution, where the decoder's largest activations
    /// are (its input region is wider by `halo() - HALO[3]` on each inner side).
    pub fn decoded_sizes(&self, width: usize, height: usize) -> Result<Vec<(usize, usize)>> {
        Ok(self
            .tiles(width, height)?
            .iter()
            .map(|t| {
                let full = Region::around(t, Self::HALO[3], height, width);
                (full.cols.len(), full.rows.len())
            })
            .collect())
    }
}

/// Checks a halo schedule: multiples of 8 output pixels (whole latent pixels at
/// every resolution), none larger than the one before (regions only narrow).
pub(crate) fn check_halo(halo: &[usize; 4]) -> Result<()> {
    let whole = halo.iter().all(|h| h.is_multiple_of(COND_UNSHUFFLE));
    if !whole || halo.windows(2).any(|p| p[1] > p[0]) {
        candle_core::bail!(
            "decoder tile halo {halo:?}: want multiples of {COND_UNSHUFFLE}, none larger than the one before"
        )
    }
    Ok(())
}

impl DecoderTiling {
    /// Decodes the latent-resolution input `x` `[f, c, h, w]` tile by tile, for
    /// either decoder: for each tile, its region widened by `halo[0]` goes to
    /// `decode_region` with the tile's own state (`states`, one per tile, made
    /// with `fresh` the first time) and the crops that narrow the activations
    /// to `halo[k + 1]` after each of the decoder's three 2x upsamplings; the
    /// tile's part of the result `[frames, 3, 8h', 8w']` is blended into
    /// `[frames, 3, 8h, 8w]`. `cancel` is polled before every tile.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn decode_tiles<S>(
        &self,
        x: &Tensor,
        halo: &[usize; 4],
        frames: usize,
        states: &mut Vec<S>,
        fresh: impl Fn() -> S,
        cancel: &CancelToken,
        mut decode_region: impl FnMut(&Tensor, &mut S, &[Crop; 3]) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let s = COND_UNSHUFFLE;
        let (_, _, h, w) = x.dims4()?;
        let (height, width) = (s * h, s * w);
        let tiles = self.tiles(width, height)?;
        // The frame size is fixed for the stream (checked by the decoders), so is the grid.
        states.resize_with(tiles.len(), fresh);
        let mut blender = Blender::new(frames, 3, height, width, x.device())?;
        for (tile, state) in tiles.iter().zip(states.iter_mut()) {
            cancel.check()?;
            let regions = halo.map(|halo| Region::around(tile, halo, height, width));
            let input = x
                .narrow(2, regions[0].rows.start / s, regions[0].rows.len() / s)?
                .narrow(3, regions[0].cols.start / s, regions[0].cols.len() / s)?;
            // After upsampling k the activations have 2^(k+1) pixels per latent pixel.
            let crops: [Crop; 3] =
                std::array::from_fn(|k| regions[k].crop_to(&regions[k + 1], s >> (k + 1)));
            let decoded = decode_region(&input, state, &crops)?;
            let full = &regions[3];
            let cropped = decoded
                .narrow(2, tile.rows.start - full.rows.start, tile.height())?
                .narrow(3, tile.cols.start - full.cols.start, tile.width())?;
            blender.add(&cropped, tile)?;
        }
        blender.finish()
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
        cancel: &CancelToken,
    ) -> Result<Tensor> {
        let frames = FRAMES_PER_LATENT * x.dim(0)?;
        tiling.decode_tiles(
            x,
            &state.halo,
            frames,
            &mut state.memories,
            Memory::default,
            cancel,
            |input, memory, crops| self.decode_region(input, memory, crops, cancel),
        )
    }
}
