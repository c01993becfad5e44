//! The Wan decoder in spatial tiles: each tile decodes its latent rectangle plus a
//! halo of context with its own caches, narrowed after every upsampling, and the
//! tiles, halo cropped off, are blended over their overlap (as the TCDecoder's
//! tiles, docs/model.md, "Tiles").

use candle_core::{Result, Tensor};

use super::{SPATIAL_UPSAMPLES, WanDecoder, WanDecoderState};
use crate::model::cancel::CancelToken;
use crate::model::tcdecoder::{COND_UNSHUFFLE, DecoderTiling, FRAMES_PER_LATENT};
use crate::model::tiling::{Blender, Crop, Region};

/// Context kept around each tile, in output pixels, at the decoder's input and
/// after each of its three upsamplings. Counted in 3x3 convolutions
/// (docs/model.md, "The Wan decoder"): 11 at latent resolution, 7 at 2x, 7 at
/// 4x and 8 at 8x, so what is left after each upsampling spans 46, 20 and 7
/// output pixels and the whole field 138, rounded up to whole latent pixels. The
/// middle's attention sees the whole tile, so no halo makes tiles exact: the
/// halo only gives each tile the convolutions' context; the measured difference
/// from whole frames is in docs/model.md.
pub const WAN_HALO: [usize; 4] = [144, 48, 24, 8];

impl WanDecoder {
    /// Decodes `x` `[f, z, h, w]` tile by tile with the state's tiling and halo,
    /// one cache list per tile.
    pub(super) fn decode_tiled(
        &self,
        x: &Tensor,
        tiling: &DecoderTiling,
        state: &mut WanDecoderState,
        cancel: &CancelToken,
    ) -> Result<Tensor> {
        let s = COND_UNSHUFFLE;
        let (f, _, h, w) = x.dims4()?;
        let (height, width) = (s * h, s * w);
        let tiles = tiling.tiles(width, height)?;
        state
            .regions
            .resize_with(tiles.len(), || vec![None; self.slots]);
        let frames = FRAMES_PER_LATENT * f - if state.started { 0 } else { 3 };
        let mut blender = Blender::new(frames, 3, height, width, x.device())?;
        for (tile, caches) in tiles.iter().zip(state.regions.iter_mut()) {
            cancel.check()?;
            let regions = state
                .halo
                .map(|halo| Region::around(tile, halo, height, width));
            let input = x
                .narrow(2, regions[0].rows.start / s, regions[0].rows.len() / s)?
                .narrow(3, regions[0].cols.start / s, regions[0].cols.len() / s)?;
            // After upsampling k the activations have 2^(k+1) pixels per latent pixel.
            let crops: [Crop; SPATIAL_UPSAMPLES] =
                std::array::from_fn(|k| regions[k].crop_to(&regions[k + 1], s >> (k + 1)));
            let decoded = self.decode_region(&input, caches, state.started, &crops, cancel)?;
            let full = &regions[3];
            let cropped = decoded
                .narrow(2, tile.rows.start - full.rows.start, tile.height())?
                .narrow(3, tile.cols.start - full.cols.start, tile.width())?;
            blender.add(&cropped, tile)?;
        }
        blender.finish()
    }
}
