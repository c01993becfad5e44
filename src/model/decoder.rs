//! The two decoders the network can end with, behind one type the chunk calls:
//! the tiny causal TCDecoder (the default) and the Wan2.1 VAE's decoder (FlashVSR's
//! "full" mode, docs/model.md, "The Wan decoder"). Both turn one chunk's latents
//! into the same frames (21 for the stream's first chunk, 8 after), each with its
//! own per-stream state.

use candle_core::{Device, Result, Tensor};

use super::cancel::CancelToken;
use super::tcdecoder::{DecoderTiling, TcDecoder, TcDecoderState};
use super::wan_decoder::{WanDecoder, WanDecoderState};

/// Which decoder a model loads (the `decoder` setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DecoderKind {
    /// The TCDecoder (`TCDecoder.ckpt`), conditioned on the LQ frames.
    #[default]
    Tiny,
    /// The Wan2.1 VAE decoder (`Wan2.1_VAE.pth`): slower, larger, the reference
    /// quality.
    Wan,
}

/// Boxed: the loaded layers are kilobytes of handles, held once per model.
pub enum Decoder {
    Tiny(Box<TcDecoder>),
    Wan(Box<WanDecoder>),
}

/// A stream's decoder state, of the loaded decoder's kind.
#[derive(Debug, Clone)]
pub enum DecoderState {
    Tiny(TcDecoderState),
    Wan(WanDecoderState),
}

impl std::fmt::Debug for Decoder {
    /// The loaded decoder's configuration.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tiny(d) => d.config().fmt(f),
            Self::Wan(d) => d.config().fmt(f),
        }
    }
}

impl Decoder {
    pub fn kind(&self) -> DecoderKind {
        match self {
            Self::Tiny(_) => DecoderKind::Tiny,
            Self::Wan(_) => DecoderKind::Wan,
        }
    }

    /// A fresh stream's state, decoded in `tiling`'s tiles (`None`: whole frames).
    pub fn new_state(&self, tiling: Option<DecoderTiling>) -> DecoderState {
        match self {
            Self::Tiny(_) => DecoderState::Tiny(TcDecoderState::new(tiling)),
            Self::Wan(_) => DecoderState::Wan(WanDecoderState::new(tiling)),
        }
    }

    /// Decodes one chunk's `latents` `[1, 16, f, h, w]`; `cond` `[n, 3, 8h, 8w]`,
    /// the LQ frames of the chunk's output span, conditions the TCDecoder (the Wan
    /// decoder takes none). Returns `[m, 3, 8h, 8w]` f32 in [-1, 1].
    pub fn decode(
        &self,
        latents: &Tensor,
        cond: &Tensor,
        state: &mut DecoderState,
        cancel: &CancelToken,
    ) -> Result<Tensor> {
        match (self, state) {
            (Self::Tiny(d), DecoderState::Tiny(s)) => d.decode(latents, cond, s, cancel),
            (Self::Wan(d), DecoderState::Wan(s)) => d.decode(latents, s, cancel),
            (d, _) => candle_core::bail!(
                "a {:?} decoder was given another decoder's stream state",
                d.kind()
            ),
        }
    }
}

impl DecoderState {
    /// Moves every held tensor to `device`.
    pub fn move_to(&mut self, device: &Device) -> Result<()> {
        match self {
            Self::Tiny(s) => s.move_to(device),
            Self::Wan(s) => s.move_to(device),
        }
    }
}
