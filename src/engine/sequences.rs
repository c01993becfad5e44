//! The model sequences of one stream: one per tile of the padded frame, one
//! covering it for whole frames (`TileLayout`). Each chunk runs every sequence
//! the same way: its crop of the LQ frames and of the noise (at 1/8 size: tile
//! starts are multiples of 16), its own state (parked in host memory between
//! its turns when the layout says so), as an untiled stream of that size
//! would; the outputs are then placed back into whole frames, blended over the
//! overlaps when there are several.

use candle_core::Tensor;

use crate::model::profile::Stage;
use crate::model::tiling::{Blender, Tile};
use crate::model::{CancelToken, ChunkTrace, SequenceConfig};
use crate::pixels::frames::rgb_to_tensor;

use super::chunk_model::ChunkModel;
use super::geometry::Geometry;
use super::tiles::TileLayout;
use super::{EngineError, EngineSettings};

/// The sequences of one stream, and the padded frame they cover.
pub struct Sequences<S> {
    geometry: Geometry,
    tiles: Vec<TileSequence<S>>,
}

/// One tile's place in the padded frame and its own model sequence: exactly the
/// state of an untiled stream of tile-sized frames.
pub(super) struct TileSequence<S> {
    pub(super) tile: Tile,
    pub(super) state: S,
    /// Where the state waits between the tile's turns: host memory when the
    /// layout parks the tiles (a model on a GPU, several tiles, a budget their
    /// states do not fit together), so that the device holds one tile's state
    /// at a time (`None`: it stays on the model's device).
    pub(super) parking: Option<candle_core::Device>,
}

impl<S> Sequences<S> {
    /// One sequence per tile of `layout` over `geometry`'s padded frame.
    pub fn new<M: ChunkModel<State = S>>(
        model: &M,
        settings: &EngineSettings,
        geometry: Geometry,
        layout: TileLayout,
        cancel: &CancelToken,
    ) -> Result<Self, EngineError> {
        let context = format!(
            "starting a stream of {}x{} frames",
            geometry.in_width, geometry.in_height
        );
        let grid = layout
            .grid(geometry.padded_width, geometry.padded_height)
            .map_err(|e| EngineError::model(context.clone(), e))?;
        let mut tiles = Vec::with_capacity(grid.len());
        // Parked states wait in host memory (`TileLayout::park`, which the plan
        // sets only for a model on a GPU whose tiles' states do not all fit).
        let parking = (grid.len() > 1 && layout.park).then_some(candle_core::Device::Cpu);
        for tile in grid {
            let config = SequenceConfig {
                height: tile.height(),
                width: tile.width(),
                version: settings.model_version,
                sparse_ratio: settings.sparse_ratio,
                kv_ratio: settings.kv_ratio,
                local_range: settings.local_range as usize,
                color_fix: settings.color_fix,
                decoder_tiling: layout.decoder,
                cancel: cancel.clone(),
            };
            let state = model
                .new_sequence(&config)
                .map_err(|e| EngineError::model(context.clone(), e))?;
            tiles.push(TileSequence {
                tile,
                state,
                parking: parking.clone(),
            });
        }
        Ok(Self { geometry, tiles })
    }

    /// How many sequences (tiles) there are.
    pub fn len(&self) -> usize {
        self.tiles.len()
    }

    /// The sequences, for the stream's tests to look at their states.
    #[cfg(test)]
    pub(super) fn tiles(&self) -> &[TileSequence<S>] {
        &self.tiles
    }

    /// Runs the next chunk of every sequence on `lq_frames` (the padded frames
    /// of the chunk's LQ span, packed RGB) and the chunk's whole-frame `noise`;
    /// returns its `frames` output frames, each `[1, 3, H, W]` over the padded
    /// frame. Building the LQ tensors counts as the trace's conversions.
    pub fn run_chunk<M: ChunkModel<State = S>>(
        &mut self,
        model: &M,
        lq_frames: &[&[u8]],
        noise: &Tensor,
        frames: usize,
        mut trace: Option<&mut ChunkTrace>,
        context: &dyn Fn(&str) -> String,
    ) -> Result<Vec<Tensor>, EngineError> {
        let g = self.geometry;
        let model_error = |what: &str, e| EngineError::model(context(what), e);
        let device = model.device();
        // One sequence covers the frame: its output is the frames, no blend.
        let mut blender = match self.tiles.len() {
            1 => None,
            _ => Some(
                Blender::new(frames, 3, g.padded_height, g.padded_width, device)
                    .map_err(|e| model_error("preparing the tile blend", e))?,
            ),
        };
        let mut whole = None;
        for sequence in &mut self.tiles {
            let t = &sequence.tile;
            let converting = std::time::Instant::now();
            // Each sequence builds its own LQ tensor, so no whole-frame one is
            // alive while tiles run; whole frames convert the frames as they are.
            let (lq, noise) = if blender.is_none() {
                let lq = rgb_to_tensor(lq_frames, g.padded_width, g.padded_height, device)
                    .map_err(|e| model_error("building the LQ tensor", e))?;
                (lq, noise.clone())
            } else {
                let lq = tile_lq(lq_frames, g.padded_width, t, device)
                    .map_err(|e| model_error("building a tile's LQ tensor", e))?;
                let noise = crop(noise, 3, t, 8).map_err(|e| model_error("cropping a tile", e))?;
                (lq, noise)
            };
            if let Some(trace) = trace.as_deref_mut() {
                trace.times.add(Stage::Conversions, converting.elapsed());
            }
            let out = run_tile(
                model,
                sequence,
                &lq,
                &noise,
                frames,
                trace.as_deref_mut(),
                context,
            )?;
            match &mut blender {
                Some(blender) => blender
                    .add(&out, &sequence.tile)
                    .map_err(|e| model_error("blending the tiles", e))?,
                None => whole = Some(out),
            }
        }
        match (blender, whole) {
            (Some(blender), _) => Ok(blender.into_frames()),
            (None, Some(out)) => (0..frames)
                .map(|slot| out.narrow(0, slot, 1))
                .collect::<candle_core::Result<_>>()
                .map_err(|e| model_error("splitting the output", e)),
            (None, None) => Err(model_error(
                "running the model",
                candle_core::Error::Msg("the stream has no model sequence".into()),
            )),
        }
    }
}

/// Runs the next chunk of one tile's sequence and checks the output's shape.
fn run_tile<M: ChunkModel>(
    model: &M,
    sequence: &mut TileSequence<M::State>,
    lq: &Tensor,
    noise: &Tensor,
    frames: usize,
    trace: Option<&mut ChunkTrace>,
    context: &dyn Fn(&str) -> String,
) -> Result<Tensor, EngineError> {
    let t = &sequence.tile;
    let move_state = |state: &mut M::State, device: &candle_core::Device| {
        model
            .move_state(state, device)
            .map_err(|e| EngineError::model(context("moving a tile's state"), e))
    };
    if sequence.parking.is_some() {
        move_state(&mut sequence.state, model.device())?;
    }
    let decoded = model
        .run_chunk(&mut sequence.state, lq, noise, trace)
        .map_err(|e| EngineError::model(context("running the model"), e))?;
    if let Some(host) = &sequence.parking {
        move_state(&mut sequence.state, host)?;
    }
    let expected = [frames, 3, t.height(), t.width()];
    if decoded.dims() != expected {
        return Err(EngineError::model(
            context("checking the model output"),
            candle_core::Error::Msg(format!(
                "the model returned {:?} for the tile at rows {:?}, columns {:?}, expected {expected:?}",
                decoded.dims(),
                t.rows,
                t.cols
            )),
        ));
    }
    Ok(decoded)
}

/// The LQ tensor of one tile: its crop of each padded frame (packed RGB, `width`
/// pixels a row), converted as the whole frames are.
fn tile_lq(
    frames: &[&[u8]],
    width: usize,
    tile: &Tile,
    device: &candle_core::Device,
) -> candle_core::Result<Tensor> {
    let (row, tile_row) = (width * 3, tile.width() * 3);
    let crops: Vec<Vec<u8>> = frames
        .iter()
        .map(|frame| {
            tile.rows
                .clone()
                .flat_map(|y| {
                    let start = y * row + tile.cols.start * 3;
                    frame[start..start + tile_row].iter().copied()
                })
                .collect()
        })
        .collect();
    let crops: Vec<&[u8]> = crops.iter().map(Vec::as_slice).collect();
    rgb_to_tensor(&crops, tile.width(), tile.height(), device)
}

/// `tensor`'s part under `tile`, whose pixel rows are on dimension `row_dim` and
/// columns on the next one, at `1 / downscale` of the tile's pixel coordinates.
fn crop(
    tensor: &Tensor,
    row_dim: usize,
    tile: &Tile,
    downscale: usize,
) -> candle_core::Result<Tensor> {
    tensor
        .narrow(
            row_dim,
            tile.rows.start / downscale,
            tile.height() / downscale,
        )?
        .narrow(
            row_dim + 1,
            tile.cols.start / downscale,
            tile.width() / downscale,
        )?
        .contiguous()
}
