//! The Wan decoder in spatial tiles: each tile decodes its latent rectangle plus a
//! halo of context with its own caches, narrowed after every upsampling, and the
//! tiles, halo cropped off, are blended over their overlap (as the TCDecoder's
//! tiles, docs/model.md, "Tiles").

use candle_core::{Result, Tensor};

use super::{WanDecoder, WanDecoderState};
use crate::model::cancel::CancelToken;
use crate::model::tcdecoder::{DecoderTiling, FIRST_CHUNK_TRIM, FRAMES_PER_LATENT};

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
        let started = state.started;
        let frames = FRAMES_PER_LATENT * x.dim(0)? - if started { 0 } else { FIRST_CHUNK_TRIM };
        tiling.decode_tiles(
            x,
            &state.halo,
            frames,
            &mut state.regions,
            || vec![None; self.slots],
            cancel,
            |input, caches, crops| self.decode_region(input, caches, started, crops, cancel),
        )
    }
}
