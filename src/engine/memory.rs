//! A conservative estimate of the memory one stream needs, so that a frame size the
//! machine cannot hold is refused with the figures instead of aborting the process
//! when an allocation fails (docs/element.md, section "Memory").
//!
//! The estimate is the weights (fixed, `FlashVsrModel::weight_bytes`) plus the
//! stream's peak: what the stream holds between chunks plus the largest of the
//! working sets of the stages of chunk 0, the largest chunk (25 input frames, 6
//! latent frames, 21 output frames). Everything is counted per padded output pixel `P` (tokens per
//! latent frame `T = P / 256`), except the DiT's block mask, which grows with
//! `T^2`. The widths come from the loaded model's configuration. A tiled stream
//! (`engine::tiles`) holds one sequence's state per tile and works on one tile at
//! a time, next to the whole-frame window, LQ tensor and blend
//! (`estimate_tiled`).

use crate::model::FlashVsrModel;
use crate::model::decoder::Decoder;
use crate::model::dit::DitConfig;
use crate::model::lq_proj::{LqProjConfig, UNSHUFFLE};
use crate::model::schedule::{
    FIRST_CHUNK_INPUT, FIRST_CHUNK_OUTPUT, LATENT_CHANNELS, chunk_noise_frames,
};
use crate::model::tcdecoder::{DecoderTiling, FRAMES_PER_LATENT, TcDecoderConfig};
use crate::model::wan_decoder::{WAN_HALO, WanDecoderConfig};

/// Output pixels per DiT token (one token per 2x2 latent patch of 8x8 pixels).
const PIXELS_PER_TOKEN: f64 = 256.0;
/// Tokens per sparse-attention window.
const WINDOW_TOKENS: f64 = crate::layers::sparse_attention::WINDOW_TOKENS as f64;

/// The sizes of a model that the estimate reads.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelShape {
    pub dit: DitConfig,
    pub lq_proj: LqProjConfig,
    pub decoder: DecoderShape,
    /// Bytes per value of the DiT weights and activations (the precision).
    pub dtype_bytes: usize,
    /// Bytes per value of the convolutions (f32 on the CPU, the precision elsewhere).
    pub conv_bytes: usize,
    /// The loaded weights (`FlashVsrModel::weight_bytes`).
    pub weight_bytes: u64,
    /// The model runs on a GPU: a tiled stream may park its tiles' states in
    /// host memory between their turns, so that the device holds one tile's
    /// state (`TileLayout::park`; the plan parks only when it must).
    pub can_park: bool,
    /// The most elements one tensor may have on the model's device, `None`
    /// for no limit. candle's CUDA kernels count elements in 32 bits (and
    /// index with `int`), so a tensor of 2^31 elements or more gives wrong
    /// values without an error there: the plan keeps every tensor below this
    /// (`ELEMENT_LIMIT_CUDA`), with decoder tiles where needed.
    pub element_limit: Option<u64>,
}

/// The element limit of a tensor on a CUDA device: below 2^31.
pub const ELEMENT_LIMIT_CUDA: u64 = 1 << 31;

/// The loaded decoder's widths: what its memory terms read.
#[derive(Debug, Clone, PartialEq)]
pub enum DecoderShape {
    Tiny(TcDecoderConfig),
    Wan(WanDecoderConfig),
}

impl DecoderShape {
    /// Held between chunks, per output pixel of a region of `w x h` output
    /// pixels (clamped to the `frame`), in values: the TCDecoder's MemBlocks
    /// remember one frame of their input (3 per stage, at 1/8, 1/4 and 1/2
    /// size); each of the Wan decoder's time-3 convolutions its last 2 input
    /// frames, at its resolution. A decoder tile's region is wider at the
    /// lower resolutions by that resolution's halo.
    fn held_values(&self, w: usize, h: usize, frame: (usize, usize), tiled: bool) -> f64 {
        let widened = |halo: &[usize; 4], level: usize| -> f64 {
            if !tiled {
                return (w * h) as f64;
            }
            let extra = 2 * (halo[level] - halo[3]);
            ((w + extra).min(frame.0) * (h + extra).min(frame.1)) as f64
        };
        match self {
            Self::Tiny(c) => {
                let [c0, c1, c2, _] = c.channels.map(|c| c as f64);
                let halo = &DecoderTiling::HALO;
                3.0 * (c0 / 64.0 * widened(halo, 0)
                    + c1 / 16.0 * widened(halo, 1)
                    + c2 / 4.0 * widened(halo, 2))
            }
            Self::Wan(c) => c
                .levels()
                .iter()
                .enumerate()
                .map(|(level, l)| {
                    let per_pixel = (1usize << (2 * level)) as f64 / 64.0;
                    2.0 * l.cached_channels as f64 * per_pixel * widened(&WAN_HALO, level)
                })
                .sum(),
        }
    }

    /// Values of the decoder's input for one chunk of `latents` latent frames
    /// per output pixel: the TCDecoder's condition frames reordered beside
    /// the latents; the Wan decoder's rescaled latents (twice).
    fn input_values(&self, latents: f64) -> f64 {
        match self {
            Self::Tiny(c) => latents * c.in_channels as f64 / 64.0,
            Self::Wan(c) => 2.0 * latents * c.z_dim as f64 / 64.0,
        }
    }

    /// Values alive while one latent frame goes through the full-resolution
    /// stages, per output pixel. TCDecoder: its 4 full-size frames in 5 live
    /// tensors of the last widths, and 2 half-size frames through a MemBlock.
    /// Wan decoder: the last upsampling's input at full size (twice, with its
    /// padded copy) and output, then through a residual block the input, two
    /// normalised copies, the convolutions' outputs and the sum (6 tensors of
    /// the head's width), and one frame's stacked time taps (3x).
    fn stage_values(&self) -> f64 {
        match self {
            Self::Tiny(c) => {
                let [_, _, c2, c3] = c.channels.map(|c| c as f64);
                FRAMES_PER_LATENT as f64 * 5.0 * c2.max(c3) + 2.0 * 8.0 * c2 / 4.0
            }
            Self::Wan(c) => {
                let last = c.levels()[3];
                let frames = last.frames as f64;
                let head = c.head as f64;
                (2.0 * last.widest as f64 + 6.0 * head) * frames + 3.0 * head
            }
        }
    }

    /// Elements of the decoder's largest activation on `width x height` frames:
    /// one latent frame's output frames at the widest full-resolution width,
    /// zero-padded by one pixel for a 3x3 convolution.
    fn activation_elements(&self, width: usize, height: usize) -> f64 {
        let (frames, widest) = match self {
            Self::Tiny(c) => (FRAMES_PER_LATENT, c.channels[2].max(c.channels[3])),
            Self::Wan(c) => {
                let last = c.levels()[3];
                (last.frames, last.widest)
            }
        };
        frames as f64 * widest as f64 * (width + 2) as f64 * (height + 2) as f64
    }
}

impl ModelShape {
    pub fn of(model: &FlashVsrModel) -> Self {
        let dtype_bytes = model.dtype().size_in_bytes();
        Self {
            dit: model.dit().config().clone(),
            lq_proj: model.lq_proj().config().clone(),
            decoder: match model.decoder() {
                Decoder::Tiny(d) => DecoderShape::Tiny(d.config().clone()),
                Decoder::Wan(d) => DecoderShape::Wan(d.config().clone()),
            },
            dtype_bytes,
            conv_bytes: if model.device().is_cpu() {
                4
            } else {
                dtype_bytes
            },
            weight_bytes: model.weight_bytes(),
            can_park: !model.device().is_cpu(),
            element_limit: (!model.device().is_cpu()).then_some(ELEMENT_LIMIT_CUDA),
        }
    }
}

/// The estimate for one output size, in bytes, with the parts it adds up.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryEstimate {
    pub padded_width: usize,
    pub padded_height: usize,
    /// Model sequences the stream runs: 1 for whole frames, else one per tile.
    pub tiles: usize,
    /// The loaded weights (already resident when a stream starts).
    pub weights: u64,
    /// Held between chunks: the pre-upscaled frames, the DiT's KV cache, the
    /// decoder's and the LQ projection's per-stream memories.
    pub held: u64,
    /// The largest working set of one chunk's stages.
    pub working: u64,
    /// Which stage `working` is.
    pub peak_stage: &'static str,
    /// Elements of the largest single tensor the stream makes (the decoder's
    /// padded full-resolution activations at any size worth tiling), checked
    /// against `ModelShape::element_limit`.
    pub largest_tensor: u64,
}

impl MemoryEstimate {
    /// Whether the largest tensor stays below the device's element limit.
    pub fn within_element_limit(&self, shape: &ModelShape) -> bool {
        shape
            .element_limit
            .is_none_or(|limit| self.largest_tensor < limit)
    }

    /// What the stream adds to the process: `held + working`.
    pub fn stream(&self) -> u64 {
        self.held.saturating_add(self.working)
    }

    /// Peak of the whole process running one stream.
    pub fn total(&self) -> u64 {
        self.weights.saturating_add(self.stream())
    }
}

/// The estimate for a stream whose frames are padded to `padded_width x
/// padded_height`, run whole (one model sequence); `kv_time_windows` is the
/// setting `kv_ratio` rounded down.
pub fn estimate(
    shape: &ModelShape,
    padded_width: usize,
    padded_height: usize,
    kv_time_windows: usize,
) -> MemoryEstimate {
    SequenceParts::new(shape, padded_width, padded_height, kv_time_windows).whole_frames(
        shape,
        padded_width,
        padded_height,
        &STAGES,
    )
}

/// One model sequence of a stream: its padded frame size, and the regions its
/// decoder decodes when it works in tiles (`DecoderTiling::decoded_sizes`,
/// output pixels, halo included; `None`: whole frames).
#[derive(Debug, Clone, PartialEq)]
pub struct SequenceShape {
    pub width: usize,
    pub height: usize,
    pub decoder_regions: Option<Vec<(usize, usize)>>,
}

impl SequenceShape {
    /// A sequence of `width x height` frames whose decoder decodes whole frames.
    pub fn whole(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            decoder_regions: None,
        }
    }

    fn parts(&self, shape: &ModelShape, kv_time_windows: usize) -> SequenceParts {
        let parts = SequenceParts::new(shape, self.width, self.height, kv_time_windows);
        match &self.decoder_regions {
            Some(regions) => parts.with_decoder_regions(shape, self.width, self.height, regions),
            None => parts,
        }
    }
}

/// The estimate for a stream of `padded_width x padded_height` frames run as one
/// model sequence per tile of `tiles`, blended into the whole frame. Held: the
/// whole-frame window plus every tile's sequence state (the largest tile's when
/// `parked`: the others wait in host memory). Working: the chunk's whole-frame
/// noise, plus the largest of a tile's chunk (its LQ tensor, built from its crop
/// of the frames, and its stages, while the blend accumulator is alive), the
/// blend step (the accumulator, plus one frame's placed tile and sum, with the
/// tile's output and its weighted copy) and the output conversion (the
/// accumulator and one frame's copies). One tile is the untiled estimate (with
/// its decoder in tiles if the tile's is).
pub fn estimate_tiled(
    shape: &ModelShape,
    padded_width: usize,
    padded_height: usize,
    tiles: &[SequenceShape],
    kv_time_windows: usize,
    parked: bool,
) -> MemoryEstimate {
    if let [one] = tiles {
        let stages = match one.decoder_regions {
            Some(_) => &DECODER_TILED_STAGES,
            None => &STAGES,
        };
        return one.parts(shape, kv_time_windows).whole_frames(
            shape,
            padded_width,
            padded_height,
            stages,
        );
    }
    let p = padded_width as f64 * padded_height as f64;
    let whole = SequenceParts::new(shape, padded_width, padded_height, kv_time_windows);
    let tile_parts: Vec<SequenceParts> = tiles
        .iter()
        .map(|t| t.parts(shape, kv_time_windows))
        .collect();
    // Parked tiles wait in host memory: the device holds the running one's.
    let tile_held = tile_parts.iter().map(|t| t.sequence_held);
    let held = whole.window
        + if parked {
            tile_held.fold(0.0, f64::max)
        } else {
            tile_held.sum::<f64>()
        };

    let stage_names = match tiles.iter().any(|t| t.decoder_regions.is_some()) {
        true => &TILE_STAGES_DECODER_TILED,
        false => &TILE_STAGES,
    };
    let accumulator = blend_accumulator(padded_width, padded_height);
    let (tile_stage, tile_run) = tile_parts
        .iter()
        .map(|t| {
            let (stage, largest) = t.largest_stage(stage_names);
            // the crops of the frames (RGB24) and the tile's LQ tensor
            (stage, t.window + t.lq_tensor + largest)
        })
        .fold(("", 0.0), |best, s| if s.1 > best.1 { s } else { best });
    let largest_tile = tiles.iter().map(|t| t.width * t.height).max().unwrap_or(0);
    // the sum is kept frame by frame, so placing a tile adds one frame's
    // temporaries (the padded tile twice and the new sum) to the accumulator
    let one_frame = blend_accumulator(padded_width, padded_height) / FIRST_CHUNK_OUTPUT as f64;
    let blend = accumulator + 3.0 * one_frame + 2.0 * blend_accumulator(largest_tile, 1);
    // one frame through the conversion: f32 in RGB order, on the host, RGB24
    let output = accumulator + (4.0 + 4.0 + 2.0 * 1.0) * 3.0 * p;
    let stages = [
        (tile_stage, accumulator + tile_run),
        ("tile blend", blend),
        ("output conversion", output),
    ];
    let (peak_stage, largest) = largest_of(stages);
    // What the allocator keeps of the tiles run before the peak: at 4 tiles of
    // 384 (released widths) the itemised estimate was 8% under the measured
    // peak. A tenth of a tile's chunk per tile, at most 4 tenths (more tiles
    // were not measured; docs/element.md, "Memory and tiles").
    let allocator = 0.1 * tiles.len().min(4) as f64 * tile_run;
    let noise = LATENT_CHANNELS as f64 * chunk_noise_frames(0).len() as f64 * p / 64.0 * 4.0;
    // the blend accumulator is the largest whole-frame tensor of a tiled stream
    let largest_tensor = tile_parts
        .iter()
        .map(|t| t.largest_tensor)
        .fold(FIRST_CHUNK_OUTPUT as f64 * 3.0 * p, f64::max);
    MemoryEstimate {
        padded_width,
        padded_height,
        tiles: tiles.len(),
        weights: shape.weight_bytes,
        held: to_bytes(held),
        working: to_bytes(noise + largest + allocator),
        peak_stage,
        largest_tensor: largest_tensor.ceil() as u64,
    }
}

const DECODER_TILED_STAGES: [&str; 4] = [
    "LQ projection",
    "DiT",
    "decoder (in tiles)",
    "colour fix and output",
];

/// The blended output of one chunk: its output frames, f32 RGB.
fn blend_accumulator(width: usize, height: usize) -> f64 {
    FIRST_CHUNK_OUTPUT as f64 * 3.0 * 4.0 * width as f64 * height as f64
}

const STAGES: [&str; 4] = ["LQ projection", "DiT", "decoder", "colour fix and output"];
const TILE_STAGES: [&str; 4] = [
    "LQ projection (largest tile)",
    "DiT (largest tile)",
    "decoder (largest tile)",
    "colour fix (largest tile)",
];
const TILE_STAGES_DECODER_TILED: [&str; 4] = [
    "LQ projection (largest tile)",
    "DiT (largest tile)",
    "decoder (largest tile, in decoder tiles)",
    "colour fix (largest tile)",
];

fn largest_of<const N: usize>(stages: [(&'static str, f64); N]) -> (&'static str, f64) {
    stages.into_iter().fold(
        (stages[0].0, 0.0),
        |best, s| if s.1 > best.1 { s } else { best },
    )
}

/// The memory model of one model sequence at one padded frame size, in bytes.
struct SequenceParts {
    /// The pre-upscaled frames the stream holds (whole frames only).
    window: f64,
    /// Held between chunks by the sequence: KV cache, decoder and LQ memories.
    sequence_held: f64,
    /// The decoder's part of `sequence_held`.
    decoder_memory: f64,
    /// The chunk's LQ tensor, alive through its stages.
    lq_tensor: f64,
    lq_proj: f64,
    dit: f64,
    decoder: f64,
    output: f64,
    /// Elements of the largest single tensor.
    largest_tensor: f64,
    /// Elements of the largest tensor outside the decoder's full-size
    /// activations, which decoder tiles do not shrink.
    largest_besides_decoder: f64,
}

impl SequenceParts {
    /// The estimate of one sequence of whole frames: the window and the
    /// sequence's state held, the LQ tensor and the largest of `stages` working.
    fn whole_frames(
        &self,
        shape: &ModelShape,
        padded_width: usize,
        padded_height: usize,
        stages: &[&'static str; 4],
    ) -> MemoryEstimate {
        let (peak_stage, largest) = self.largest_stage(stages);
        MemoryEstimate {
            padded_width,
            padded_height,
            tiles: 1,
            weights: shape.weight_bytes,
            held: to_bytes(self.window + self.sequence_held),
            working: to_bytes(self.lq_tensor + largest),
            peak_stage,
            largest_tensor: self.largest_tensor.ceil() as u64,
        }
    }

    fn new(
        shape: &ModelShape,
        padded_width: usize,
        padded_height: usize,
        kv_time_windows: usize,
    ) -> Self {
        let p = padded_width as f64 * padded_height as f64;
        let t = p / PIXELS_PER_TOKEN;
        let e = shape.dtype_bytes as f64;
        let ec = shape.conv_bytes as f64;
        let d = &shape.dit;
        let dim = d.dim as f64;
        let layers = d.num_layers as f64;
        let first_latents = chunk_noise_frames(0).len() as f64;
        let lq_frames = FIRST_CHUNK_INPUT as f64;
        let out_frames = FIRST_CHUNK_OUTPUT as f64;
        let decoded_frames = FRAMES_PER_LATENT as f64 * first_latents;

        // Held: 25 padded RGB24 frames (by the stream); K and V of every block for the time windows
        // kept (chunk 0 leaves 3, each of 2 latent frames); the decoder MemBlocks' last inputs (3 per stage, at 1/8, 1/4 and 1/2 size).
        let windows = kv_time_windows.max(3) as f64;
        let kv = 2.0 * layers * 2.0 * windows * t * dim * e;
        let frame = (padded_width, padded_height);
        let decoder_memory = shape
            .decoder
            .held_values(padded_width, padded_height, frame, false)
            * ec;
        let lq_cache = 2.0 * (shape.lq_proj.hidden1 + shape.lq_proj.in_channels) as f64 * p
            / (UNSHUFFLE * UNSHUFFLE) as f64
            * ec;

        // The LQ tensor of the chunk (f32) is alive through all its stages.
        let lq_tensor = lq_frames * 3.0 * 4.0 * p;

        // LQ projection: a 4-frame clip converted and unshuffled, both 3-D
        // convolutions' outputs with their normalised copies.
        let l = &shape.lq_proj;
        let lq_proj = 2.0 * 4.0 * 3.0 * p * ec
            + 4.0 * 3.0 * (l.hidden1 + l.hidden2) as f64 * p / (UNSHUFFLE * UNSHUFFLE) as f64 * ec
            + l.layers as f64 * first_latents * t / 4.0 * l.out_dim as f64 * e;

        // DiT, over chunk 0's tokens: about 10 rows of width D (input, norm, q, k, v,
        // attention output, residuals) and 2 of the feed-forward width per token, the
        // LQ features added to the leading blocks, and the block mask: pooled scores,
        // bias and their softmax, 3 f32 values per pair of windows and head.
        let tokens = first_latents * t;
        let query_windows = tokens / WINDOW_TOKENS;
        let key_windows = (first_latents.max(2.0 * (windows + 1.0))) * t / WINDOW_TOKENS;
        // One block at a time extends its K and V with the chunk's (the cached
        // time windows plus one, concatenated): working memory, not held, so a
        // tiled stream counts it once rather than once per tile.
        let dit = tokens * (10.0 * dim + 2.0 * d.ffn_dim as f64) * e
            + l.layers as f64 * tokens * dim * e
            + 3.0 * d.heads as f64 * query_windows * key_windows * 4.0
            + 2.0 * 2.0 * (windows + 1.0) * t * dim * e;

        // Decoder: the condition frames (padded to 24), its input at latent size,
        // one latent frame through the full-resolution stages
        // (`DecoderShape::stage_values`); then the decoded frames (collected,
        // concatenated, rescaled or clamped, f32), the colour fix (up to 6 copies)
        // and the RGB24 output (3 copies).
        let decoder = 2.0 * decoded_frames * 3.0 * p * ec
            + shape.decoder.input_values(first_latents) * p * ec
            + shape.decoder.stage_values() * p * ec
            + 4.0 * decoded_frames * 3.0 * p * 4.0;
        let output = 6.0 * out_frames * 3.0 * p * 4.0 + 3.0 * out_frames * 4.0 * p;
        // The largest single tensors: the decoder's last stage (one latent
        // frame's 4 full-size frames of the widest last channels zero-padded by
        // 1 for a 3x3 convolution), and besides it the decoded frames, the LQ
        // tensor, the DiT's feed-forward activations and the LQ projection's
        // widest activations.
        let largest_besides_decoder = [
            decoded_frames * 3.0 * p,
            lq_frames * 3.0 * p,
            tokens * d.ffn_dim as f64,
            4.0 * (l.hidden1.max(l.hidden2)) as f64 * p / (UNSHUFFLE * UNSHUFFLE) as f64,
        ]
        .into_iter()
        .fold(0.0, f64::max);
        let largest_tensor = largest_besides_decoder.max(
            shape
                .decoder
                .activation_elements(padded_width, padded_height),
        );
        Self {
            window: lq_frames * 3.0 * p,
            sequence_held: kv + decoder_memory + lq_cache,
            decoder_memory,
            lq_tensor,
            lq_proj,
            dit,
            decoder,
            output,
            largest_tensor,
            largest_besides_decoder,
        }
    }

    /// The same sequence with its decoder in tiles that decode `regions`
    /// (`DecoderTiling::decoded_sizes`, output pixels, halo included): the
    /// decoder holds one memory per tile (at the tile's region widened by the
    /// input halo) and works on one region at a time, beside the whole frame's
    /// condition frames and latents, the blend of the decoded frames
    /// (accumulator, placed tile and sum) and the decoded frames after it.
    fn with_decoder_regions(
        mut self,
        shape: &ModelShape,
        padded_width: usize,
        padded_height: usize,
        regions: &[(usize, usize)],
    ) -> Self {
        let p = padded_width as f64 * padded_height as f64;
        let ec = shape.conv_bytes as f64;
        // each stage's memories cover its input region: the tile widened by
        // that stage's halo (the regions given are widened by the last one)
        let frame = (padded_width, padded_height);
        let memory: f64 = regions
            .iter()
            .map(|&(w, h)| shape.decoder.held_values(w, h, frame, true) * ec)
            .sum();
        let largest = regions
            .iter()
            .map(|&(w, h)| SequenceParts::new(shape, w, h, 3).decoder)
            .fold(0.0, f64::max);
        let first_latents = chunk_noise_frames(0).len() as f64;
        let decoded_frames = FRAMES_PER_LATENT as f64 * first_latents;
        let decoded = decoded_frames * 3.0 * 4.0 * p;
        let whole_frame = 2.0 * decoded_frames * 3.0 * p * ec
            + shape.decoder.input_values(first_latents) * p * ec
            + 3.0 * decoded
            + 4.0 * decoded;
        self.sequence_held += memory - self.decoder_memory;
        self.decoder_memory = memory;
        self.decoder = largest + whole_frame;
        // the full-resolution activations shrink to the largest region's; the
        // other tensors (the whole frame's decoded frames among them) remain
        self.largest_tensor = regions
            .iter()
            .map(|&(w, h)| shape.decoder.activation_elements(w, h))
            .fold(self.largest_besides_decoder, f64::max);
        self
    }

    /// The largest stage working set, named from `names` (LQ projection, DiT,
    /// decoder, output).
    fn largest_stage(&self, names: &[&'static str; 4]) -> (&'static str, f64) {
        largest_of([
            (names[0], self.lq_proj),
            (names[1], self.dit),
            (names[2], self.decoder),
            (names[3], self.output),
        ])
    }
}

fn to_bytes(x: f64) -> u64 {
    // `as` saturates: an absurd size gives u64::MAX, never a wrapped small value.
    x.ceil() as u64
}

/// `MemAvailable` of /proc/meminfo in bytes (what the kernel can give without
/// swapping), less what the allocator's cache of freed blocks may still grow
/// by (`block_reuse`): a stream's plan counts its live memory only. `None`
/// where it cannot be read (not Linux).
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let available = parse_meminfo(&text, "MemAvailable:")?;
    let blocks = crate::allocator_stats();
    let growth = blocks.cap.saturating_sub(blocks.kept_bytes) as u64;
    Some(available.saturating_sub(growth))
}

/// Memory of the GPU `device` runs on that a stream may still use, in bytes
/// (`cuda_device::free_memory`). `None` on the CPU, in a build without CUDA,
/// or when the driver does not answer.
pub fn device_free_memory(device: &candle_core::Device) -> Option<u64> {
    super::cuda_device::free_memory(device)
}

/// Bytes of tensors on the GPU `device` runs on now and at most since the
/// last `reset_device_peak` (`cuda_device::pool_usage`); `None` on the CPU.
pub fn device_pool_usage(device: &candle_core::Device) -> Option<super::PoolUsage> {
    super::cuda_device::pool_usage(device)
}

/// Starts `device_pool_usage`'s peak again from what is in use now.
pub fn reset_device_peak(device: &candle_core::Device) {
    super::cuda_device::reset_peak_memory(device)
}

/// Reads a `Key:   123 kB` line of /proc/meminfo or /proc/self/status, in bytes.
pub fn parse_meminfo(text: &str, key: &str) -> Option<u64> {
    let value = text.lines().find_map(|line| line.strip_prefix(key))?;
    let kib: u64 = value.trim().trim_end_matches("kB").trim().parse().ok()?;
    kib.checked_mul(1024)
}

/// `bytes` with one decimal in GiB, or MiB below 1 GiB: "41.2 GiB", "12.5 MiB".
pub fn human_bytes(bytes: u64) -> String {
    const MIB: f64 = (1u64 << 20) as f64;
    let b = bytes as f64;
    if b >= 1024.0 * MIB {
        format!("{:.1} GiB", b / (1024.0 * MIB))
    } else {
        format!("{:.1} MiB", b / MIB)
    }
}

/// Model shapes for the memory model's and the tile plan's tests.
#[cfg(test)]
pub(crate) mod test_shapes {
    use super::{DecoderShape, ModelShape};
    use crate::model::dit::DitConfig;
    use crate::model::lq_proj::LqProjConfig;
    use crate::model::tcdecoder::TcDecoderConfig;
    use crate::model::wan_decoder::WanDecoderConfig;

    /// The released FlashVSR v1.1 widths (`RandomModelSpec::released`) with `layers`
    /// DiT blocks, in f32 on the CPU; the weights as a 30-block model's, scaled.
    pub(crate) fn released(layers: usize) -> ModelShape {
        ModelShape {
            dit: DitConfig {
                dim: 1536,
                ffn_dim: 8960,
                heads: 12,
                num_layers: layers,
                text_dim: 4096,
                freq_dim: 256,
                in_channels: 16,
                out_channels: 16,
            },
            lq_proj: LqProjConfig {
                in_channels: 768,
                hidden1: 2048,
                hidden2: 3072,
                out_dim: 1536,
                layers: 1,
            },
            decoder: DecoderShape::Tiny(TcDecoderConfig {
                in_channels: 784,
                channels: [512, 256, 128, 128],
            }),
            dtype_bytes: 4,
            conv_bytes: 4,
            can_park: false,
            element_limit: None,
            weight_bytes: 1_300_000_000 + 170_000_000 * layers as u64,
        }
    }

    /// [`released`] with the Wan2.1 VAE decoder at its released widths (its
    /// 73 M parameters in f32 instead of the TCDecoder's).
    pub(crate) fn released_wan(layers: usize) -> ModelShape {
        let tiny = released(layers);
        ModelShape {
            decoder: DecoderShape::Wan(WanDecoderConfig::official(96)),
            weight_bytes: tiny.weight_bytes + 220_000_000,
            ..tiny
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::test_shapes::{released, released_wan};

    #[test]
    fn grows_with_the_pixels_and_saturates() {
        let shape = released(30);
        let small = estimate(&shape, 128, 128, 3);
        let big = estimate(&shape, 1280, 768, 3);
        // 60x the pixels: at least 60x the per-stream memory (the block mask grows
        // faster)
        assert!(big.stream() >= 60 * small.stream(), "{small:?} {big:?}");
        assert_eq!(small.weights, big.weights);
        assert_eq!(big.total(), big.weights + big.held + big.working);
        let absurd = estimate(&shape, usize::MAX, usize::MAX, 3);
        assert_eq!(absurd.total(), u64::MAX);
        // 8192x8192 is far beyond any machine's memory
        assert!(estimate(&shape, 8192, 8192, 3).stream() > 1 << 40);
    }

    /// Decoder tiles shrink only the decoder's activations: the largest tensor
    /// left is then the largest of the others (the DiT's feed-forward
    /// activations of chunk 0 at 3840x2176 with the released widths).
    #[test]
    fn decoder_tiles_leave_the_other_tensors_as_they_are() {
        let shape = released(30);
        let (w, h) = (3840, 2176);
        let whole = estimate(&shape, w, h, 3);
        assert_eq!(whole.largest_tensor, 4 * 128 * 3842 * 2178);
        let tiled = estimate_tiled(
            &shape,
            w,
            h,
            &[SequenceShape {
                width: w,
                height: h,
                decoder_regions: Some(vec![(256, 256); 150]),
            }],
            3,
            false,
        );
        let ffn = 6 * (w * h / 256) as u64 * 8960;
        assert_eq!(tiled.largest_tensor, ffn);
        assert!(tiled.largest_tensor < whole.largest_tensor);
    }

    #[test]
    fn parked_tiles_hold_one_tiles_state_on_the_device() {
        let shape = released(30);
        let tiles = vec![SequenceShape::whole(1024, 640); 4];
        let kept = estimate_tiled(&shape, 1920, 1152, &tiles, 3, false);
        let parked = estimate_tiled(&shape, 1920, 1152, &tiles, 3, true);
        let one = estimate(&shape, 1024, 640, 3);
        let window = 25 * 3 * 1920 * 1152;
        // all four tiles' states against one tile's; the working set is the same
        assert!(
            kept.held > 3 * one.held && kept.held <= 4 * one.held + window,
            "{kept:?}"
        );
        assert!(parked.held <= one.held + window, "{parked:?} {one:?}");
        assert_eq!(kept.working, parked.working);
        // one tile is the untiled estimate, parked or not
        let whole = [SequenceShape::whole(1920, 1152)];
        assert_eq!(
            estimate_tiled(&shape, 1920, 1152, &whole, 3, true),
            estimate_tiled(&shape, 1920, 1152, &whole, 3, false)
        );
    }

    /// The Wan decoder's causal caches hold 2 frames of every time-3
    /// convolution's input, most of them at full resolution: at the released
    /// widths 2,364.5 values per output pixel, against the TCDecoder's 168.
    #[test]
    fn the_wan_decoder_holds_its_caches_per_pixel() {
        let (w, h) = (1920, 1152);
        let tiny = estimate(&released(30), w, h, 3);
        let wan = estimate(&released_wan(30), w, h, 3);
        let per_pixel = |e: &MemoryEstimate| e.held as f64 / (w * h) as f64 / 4.0;
        let (tiny_held, wan_held) = (per_pixel(&tiny), per_pixel(&wan));
        assert_eq!(
            wan_held - tiny_held,
            2364.5 - 168.0,
            "{tiny_held} {wan_held}"
        );
        assert!(wan.working > tiny.working);
        // its largest tensor: the last upsampling's input, 4 frames of 192
        // channels at full size, padded
        assert_eq!(wan.largest_tensor, 4 * 192 * 1922 * 1154);
        // decoder tiles shrink the working set, not the caches (each tile keeps
        // its own, and halos add to them)
        let tiled = estimate_tiled(
            &released_wan(30),
            w,
            h,
            &[SequenceShape {
                width: w,
                height: h,
                decoder_regions: Some(
                    DecoderTiling {
                        tile: 512,
                        overlap: DecoderTiling::OVERLAP,
                    }
                    .decoded_sizes(w, h)
                    .unwrap(),
                ),
            }],
            3,
            false,
        );
        assert!(tiled.working < wan.working, "{tiled:?} {wan:?}");
        assert!(tiled.held >= wan.held, "{tiled:?} {wan:?}");
    }

    #[test]
    fn more_kv_windows_need_more() {
        let shape = released(2);
        assert!(estimate(&shape, 512, 512, 8).held > estimate(&shape, 512, 512, 3).held);
        // kv_ratio below 3 still holds chunk 0's 3 windows
        assert_eq!(estimate(&shape, 512, 512, 1), estimate(&shape, 512, 512, 3));
    }

    #[test]
    fn meminfo_lines_parse() {
        let text = "MemTotal:       32768000 kB\nMemAvailable:   24000000 kB\n";
        assert_eq!(
            parse_meminfo(text, "MemAvailable:"),
            Some(24_000_000 * 1024)
        );
        assert_eq!(parse_meminfo(text, "VmHWM:"), None);
        assert_eq!(parse_meminfo("MemAvailable: lots", "MemAvailable:"), None);
        assert_eq!(human_bytes(44_236_955_238), "41.2 GiB");
        assert_eq!(human_bytes(13_107_200), "12.5 MiB");
        if cfg!(target_os = "linux") {
            assert!(available_memory().is_some_and(|b| b > 0));
        }
        // the CPU's budget is MemAvailable, not a device's free memory
        assert_eq!(device_free_memory(&candle_core::Device::Cpu), None);
    }
}
