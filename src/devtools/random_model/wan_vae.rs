//! The Wan2.1 video VAE of a random model folder (`Wan2.1_VAE.pth`): the tensors and
//! modules of the official `VideoVAE_(dim, z_dim)` (dim_mult [1, 2, 4, 4], two residual
//! blocks per stage, no attention but the middle block's, temporal downsampling
//! [False, True, True]), encoder and decoder both, in the order torch registers them, so
//! that the file is what `torch.save(vae.state_dict())` writes for the same values.
//!
//! Causal 3-D convs hold 5-D weights [out, in, kt, kh, kw]; the RMS norms' gammas are
//! [C, 1, 1, 1] (video, `images=False`) or [C, 1, 1] (the attention block's norm).

use candle_core::Result;

use super::{RandomTensor, SCALE_STD};
use crate::model::schedule::LATENT_CHANNELS;
use crate::weights::pth::message;

/// Width multipliers of the encoder's stages (the decoder's, reversed).
const DIM_MULT: [usize; 4] = [1, 2, 4, 4];
/// Residual blocks per encoder stage (the decoder has one more).
const RES_BLOCKS: usize = 2;
/// Which encoder stages halve time as well as space (the decoder's upsamplings double
/// it in the reverse order).
const TEMPORAL_DOWNSAMPLE: [bool; 3] = [false, true, true];

/// Sizes of the Wan2.1 VAE: [`WanVaeSpec::released`] is the released one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WanVaeSpec {
    /// Base width: the decoder's stages are 4 * dim, 4 * dim, 2 * dim and dim wide.
    pub dim: usize,
    /// Latent channels (the encoder outputs twice as many: mean and log-variance).
    pub z_dim: usize,
}

impl WanVaeSpec {
    /// The released base width.
    pub const RELEASED_DIM: usize = 96;

    /// The released VAE: `VideoVAE_(dim=96, z_dim=16)`, 126.9 M parameters.
    pub fn released() -> Self {
        Self::with_dim(Self::RELEASED_DIM)
    }

    /// The released structure and latent width at base width `dim` (small ones for
    /// tests).
    pub fn with_dim(dim: usize) -> Self {
        Self {
            dim,
            z_dim: LATENT_CHANNELS,
        }
    }

    /// The decoder's stage widths, first (at latent resolution) to last.
    pub fn decoder_widths(&self) -> [usize; 4] {
        let d = self.dim;
        [4 * d, 4 * d, 2 * d, d]
    }

    pub fn validate(&self) -> Result<()> {
        for (name, value) in [("dim", self.dim), ("z_dim", self.z_dim)] {
            if value == 0 {
                return Err(message(format!(
                    "random model: Wan VAE {name} must be at least 1"
                )));
            }
        }
        Ok(())
    }

    /// The state dict's tensors and the modules of its `_metadata`, both in torch's
    /// registration order.
    pub(super) fn layout(&self) -> (Vec<RandomTensor>, Vec<String>) {
        let mut tree = Tree::default();
        tree.leaf("");
        self.encoder(&mut tree, "encoder");
        let z = self.z_dim;
        tree.causal_conv("conv1", 2 * z, 2 * z, 1);
        tree.causal_conv("conv2", z, z, 1);
        self.decoder(&mut tree, "decoder");
        (tree.tensors, tree.modules)
    }

    /// `Encoder3d(dim, 2 * z_dim, ...)`.
    fn encoder(&self, tree: &mut Tree, name: &str) {
        tree.leaf(name);
        let dims: Vec<usize> = [1].iter().chain(&DIM_MULT).map(|m| m * self.dim).collect();
        tree.causal_conv(&format!("{name}.conv1"), dims[0], 3, 3);
        let downsamples = format!("{name}.downsamples");
        tree.leaf(&downsamples);
        let mut index = 0;
        let mut layer = || {
            index += 1;
            format!("{downsamples}.{}", index - 1)
        };
        for (stage, pair) in dims.windows(2).enumerate() {
            let (mut in_dim, out_dim) = (pair[0], pair[1]);
            for _ in 0..RES_BLOCKS {
                tree.residual_block(&layer(), in_dim, out_dim);
                in_dim = out_dim;
            }
            if let Some(&temporal) = TEMPORAL_DOWNSAMPLE.get(stage) {
                let mode = if temporal {
                    Resample::Down3d
                } else {
                    Resample::Down2d
                };
                tree.resample(&layer(), out_dim, mode);
            }
        }
        let top = dims[dims.len() - 1];
        tree.middle(&format!("{name}.middle"), top);
        tree.head(&format!("{name}.head"), top, 2 * self.z_dim);
    }

    /// `Decoder3d(dim, z_dim, ...)`.
    fn decoder(&self, tree: &mut Tree, name: &str) {
        tree.leaf(name);
        let dims: Vec<usize> = [DIM_MULT[DIM_MULT.len() - 1]]
            .iter()
            .chain(DIM_MULT.iter().rev())
            .map(|m| m * self.dim)
            .collect();
        tree.causal_conv(&format!("{name}.conv1"), dims[0], self.z_dim, 3);
        tree.middle(&format!("{name}.middle"), dims[0]);
        let upsamples = format!("{name}.upsamples");
        tree.leaf(&upsamples);
        let mut index = 0;
        let mut layer = || {
            index += 1;
            format!("{upsamples}.{}", index - 1)
        };
        for (stage, pair) in dims.windows(2).enumerate() {
            // After the first stage the input is the upsampling's halved width.
            let (mut in_dim, out_dim) = if stage == 0 {
                (pair[0], pair[1])
            } else {
                (pair[0] / 2, pair[1])
            };
            for _ in 0..=RES_BLOCKS {
                tree.residual_block(&layer(), in_dim, out_dim);
                in_dim = out_dim;
            }
            let temporal_upsample = TEMPORAL_DOWNSAMPLE.iter().rev().nth(stage);
            if let Some(&temporal) = temporal_upsample {
                let mode = if temporal {
                    Resample::Up3d
                } else {
                    Resample::Up2d
                };
                tree.resample(&layer(), out_dim, mode);
            }
        }
        tree.head(&format!("{name}.head"), dims[dims.len() - 1], 3);
    }
}

/// The official `Resample` modes the VAE uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resample {
    Down2d,
    Down3d,
    Up2d,
    Up3d,
}

/// Tensors and modules as a module tree is walked in registration order: a module is
/// listed before its own parameters, which come before its children's.
#[derive(Default)]
struct Tree {
    tensors: Vec<RandomTensor>,
    modules: Vec<String>,
}

impl Tree {
    /// A module (listed in the state dict's `_metadata`) whose parameters, if any,
    /// the caller adds next.
    fn leaf(&mut self, name: &str) {
        self.modules.push(name.to_string());
    }

    /// A weight scaled by its fan-in (inputs times kernel volume) and a small bias.
    fn conv(&mut self, name: &str, shape: &[usize]) {
        self.leaf(name);
        super::linear(&mut self.tensors, name, shape);
    }

    /// `CausalConv3d(in_dim, out_dim, kernel)`: weight [out, in, k, k, k].
    fn causal_conv(&mut self, name: &str, out_dim: usize, in_dim: usize, kernel: usize) {
        self.conv(name, &[out_dim, in_dim, kernel, kernel, kernel]);
    }

    /// `RMS_norm(width, images)`: gamma [C, 1, 1, 1] for video, [C, 1, 1] for images.
    fn rms_norm(&mut self, name: &str, width: usize, images: bool) {
        self.leaf(name);
        let shape: &[usize] = if images {
            &[width, 1, 1]
        } else {
            &[width, 1, 1, 1]
        };
        self.tensors.push(RandomTensor::normal(
            &format!("{name}.gamma"),
            shape,
            1.0,
            SCALE_STD,
        ));
    }

    /// `ResidualBlock(in_dim, out_dim)`: residual = norm, SiLU, conv, norm, SiLU,
    /// dropout, conv; a 1x1x1 shortcut conv when the widths differ (else identity).
    fn residual_block(&mut self, name: &str, in_dim: usize, out_dim: usize) {
        self.leaf(name);
        let residual = format!("{name}.residual");
        self.leaf(&residual);
        self.rms_norm(&format!("{residual}.0"), in_dim, false);
        self.leaf(&format!("{residual}.1"));
        self.causal_conv(&format!("{residual}.2"), out_dim, in_dim, 3);
        self.rms_norm(&format!("{residual}.3"), out_dim, false);
        self.leaf(&format!("{residual}.4"));
        self.leaf(&format!("{residual}.5"));
        self.causal_conv(&format!("{residual}.6"), out_dim, out_dim, 3);
        let shortcut = format!("{name}.shortcut");
        if in_dim == out_dim {
            self.leaf(&shortcut);
        } else {
            self.causal_conv(&shortcut, out_dim, in_dim, 1);
        }
    }

    /// `AttentionBlock(width)`: image norm, 1x1 qkv and output convs. The official
    /// init zeroes the output conv; here it is random like the rest, so that the
    /// block does something.
    fn attention_block(&mut self, name: &str, width: usize) {
        self.leaf(name);
        self.rms_norm(&format!("{name}.norm"), width, true);
        self.conv(&format!("{name}.to_qkv"), &[3 * width, width, 1, 1]);
        self.conv(&format!("{name}.proj"), &[width, width, 1, 1]);
    }

    /// `Resample(width, mode)`: a spatial 3x3 conv after a zero pad (down) or a
    /// nearest upsampling (up, to half the width), then for the 3-D modes a temporal
    /// (3, 1, 1) conv (down: width to width; up: width to twice the width, before the
    /// spatial part).
    fn resample(&mut self, name: &str, width: usize, mode: Resample) {
        self.leaf(name);
        let resample = format!("{name}.resample");
        self.leaf(&resample);
        self.leaf(&format!("{resample}.0"));
        let spatial_out = match mode {
            Resample::Down2d | Resample::Down3d => width,
            Resample::Up2d | Resample::Up3d => width / 2,
        };
        self.conv(&format!("{resample}.1"), &[spatial_out, width, 3, 3]);
        let time_out = match mode {
            Resample::Down2d | Resample::Up2d => return,
            Resample::Down3d => width,
            Resample::Up3d => 2 * width,
        };
        self.conv(&format!("{name}.time_conv"), &[time_out, width, 3, 1, 1]);
    }

    /// The middle: residual block, attention block, residual block.
    fn middle(&mut self, name: &str, width: usize) {
        self.leaf(name);
        self.residual_block(&format!("{name}.0"), width, width);
        self.attention_block(&format!("{name}.1"), width);
        self.residual_block(&format!("{name}.2"), width, width);
    }

    /// The head: norm, SiLU, 3x3x3 causal conv to `out_dim`.
    fn head(&mut self, name: &str, width: usize, out_dim: usize) {
        self.leaf(name);
        self.rms_norm(&format!("{name}.0"), width, false);
        self.leaf(&format!("{name}.1"));
        self.causal_conv(&format!("{name}.2"), out_dim, width, 3);
    }
}
