//! How a stream's frames are split into tiles, and the choice the memory budget
//! makes (docs/element.md, section "Memory and tiles").
//!
//! A tiled stream runs one model sequence per tile of the padded frame: each is
//! exactly an untiled stream of tile-sized frames (its own LQ-projection cache,
//! KV cache and decoder memory), fed the tile's crop of the LQ frames and of the
//! noise; the outputs are blended over the overlaps (`model::tiling`).

use std::fmt;

use crate::model::tcdecoder::DecoderTiling;
use crate::model::tiling::{self, Tile};

use super::geometry::Geometry;
use super::memory::{self, MemoryEstimate, ModelShape, human_bytes};
use super::{EngineError, EngineSettings, SIZE_MULTIPLE};

/// Tile starts are multiples of this: a DiT token (16 output pixels), so that
/// every tile's tokens and latent pixels lie on the frame's grid (and the noise,
/// at 1/8 size, crops with them).
pub const TILE_ALIGN: usize = 16;
/// How one stream splits its padded frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TileLayout {
    /// Side of the square tiles in output pixels; `None`: whole frames. A tile
    /// larger than a side of the frame spans that side.
    pub tile: Option<usize>,
    /// Output pixels neighbouring tiles share, at least.
    pub overlap: usize,
    /// Spatial tiles of each sequence's decoder (`None`: whole frames).
    pub decoder: Option<DecoderTiling>,
    /// Each tile's state waits in host memory between the tile's turns, so the
    /// device holds one tile's (a model on a GPU whose tiles' states do not all
    /// fit in the budget).
    pub park: bool,
}

impl TileLayout {
    /// Whole frames, no decoder tiles.
    pub const WHOLE: Self = Self {
        tile: None,
        overlap: 0,
        decoder: None,
        park: false,
    };

    /// The tiles of a padded `width x height` frame (one covering it for whole
    /// frames, or when the tile is at least the frame).
    pub fn grid(&self, width: usize, height: usize) -> candle_core::Result<Vec<Tile>> {
        match self.tile {
            None => tiling::grid(
                width,
                height,
                width.max(height),
                0,
                TILE_ALIGN,
                SIZE_MULTIPLE,
            ),
            Some(tile) => {
                tiling::grid(width, height, tile, self.overlap, TILE_ALIGN, SIZE_MULTIPLE)
            }
        }
    }
}

/// What a stream of one size will run as, and its memory estimate.
#[derive(Debug, Clone, PartialEq)]
pub struct TilePlan {
    pub layout: TileLayout,
    /// Tiles across and down (1 x 1 for whole frames).
    pub columns: usize,
    pub rows: usize,
    /// Width and height of each tile, in padded output pixels (at most the
    /// tile setting, shorter where fewer pixels cover an axis: `tiling::spans`).
    pub tile_width: usize,
    pub tile_height: usize,
    pub estimate: MemoryEstimate,
    /// The budget the estimate was checked against (`None`: no check).
    pub budget: Option<u64>,
    /// The budget, not the settings, chose the tiles (model or decoder tiles).
    pub automatic: bool,
}

impl TilePlan {
    /// Model sequences the stream runs.
    pub fn sequences(&self) -> usize {
        self.columns * self.rows
    }
}

impl fmt::Display for TilePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = &self.estimate;
        match self.layout.tile {
            Some(_) if self.sequences() > 1 => write!(
                f,
                "{} tiles of {}x{} ({} x {}) overlapping by {} over {}x{} padded output",
                self.sequences(),
                self.tile_width,
                self.tile_height,
                self.columns,
                self.rows,
                self.layout.overlap,
                e.padded_width,
                e.padded_height
            )?,
            _ => write!(
                f,
                "whole frames of {}x{} padded output",
                e.padded_width, e.padded_height
            )?,
        }
        if let Some(decoder) = self.layout.decoder {
            write!(
                f,
                ", decoder tiles of {}x{} overlapping by {}",
                decoder.tile, decoder.tile, decoder.overlap
            )?;
        }
        if self.layout.park && self.sequences() > 1 {
            write!(
                f,
                ", each tile's state parked in host memory between its turns"
            )?;
        }
        write!(
            f,
            "{}: estimated {} (weights {} + held {} + working {}, {})",
            if self.automatic {
                " (chosen for the memory budget)"
            } else {
                ""
            },
            human_bytes(e.total()),
            human_bytes(e.weights),
            human_bytes(e.held),
            human_bytes(e.working),
            e.peak_stage
        )?;
        match self.budget {
            Some(budget) => write!(f, ", budget {}", human_bytes(budget)),
            None => write!(f, ", no budget"),
        }
    }
}

/// A layout's grid and estimate.
pub struct TileEstimate {
    pub estimate: MemoryEstimate,
    pub columns: usize,
    pub rows: usize,
    pub tile_width: usize,
    pub tile_height: usize,
}

/// The estimate of a stream of `geometry` split by `layout`.
pub fn estimate(
    shape: &ModelShape,
    geometry: &Geometry,
    layout: TileLayout,
    kv_time_windows: usize,
) -> Result<TileEstimate, EngineError> {
    let (w, h) = (geometry.padded_width, geometry.padded_height);
    let grid = layout
        .grid(w, h)
        .map_err(|e| EngineError::model(format!("tiling {w}x{h} frames"), e))?;
    let columns = grid.iter().filter(|t| t.rows.start == 0).count();
    let rows = grid.len() / columns.max(1);
    let sizes: Vec<(usize, usize)> = grid.iter().map(|t| (t.width(), t.height())).collect();
    let sequences = sizes
        .iter()
        .map(|&(tw, th)| {
            let decoder_regions = layout
                .decoder
                .map(|d| d.decoded_sizes(tw, th))
                .transpose()
                .map_err(|e| EngineError::model(format!("decoder tiles of {tw}x{th} frames"), e))?;
            Ok(memory::SequenceShape {
                width: tw,
                height: th,
                decoder_regions,
            })
        })
        .collect::<Result<Vec<_>, EngineError>>()?;
    let estimate = memory::estimate_tiled(shape, w, h, &sequences, kv_time_windows, layout.park);
    let (tile_width, tile_height) = sizes.first().copied().unwrap_or((w, h));
    Ok(TileEstimate {
        estimate,
        columns,
        rows,
        tile_width,
        tile_height,
    })
}

/// Chooses how a stream of `geometry` runs within `budget` bytes (what the stream
/// may add to the process; `None`: no limit). The layouts are tried in order of
/// the work they add, and the first that fits is taken:
/// - the model tiles: the `tile_size` setting if set, else whole frames, then
///   square tiles (multiples of 128 output pixels, larger than the overlap),
///   largest first: each smaller tile adds overlap and per-tile work;
/// - for each, the tiles' states resident on the model's device, then (a model
///   on a GPU, several tiles) parked in host memory between their turns, which
///   moves each tile's state in and out every chunk;
/// - for each, the decoder tiles of the `decoder_tile_size` setting if set,
///   else the decoder on whole tiles, then in its own tiles, largest first
///   (the decoder's full-resolution activations are the largest stage, and its
///   tiles only add a halo to the decoder's work);
/// - with no budget, or when the first fits, the first: the setting, or whole
///   frames;
/// - else `EngineError::TooLarge` with the figure for the smallest layout tried.
///
/// On a device whose tensors are limited in elements (`ModelShape::element_limit`,
/// CUDA), a layout fits only when its largest tensor is below the limit, with
/// or without a budget: at 4K the decoder's full-resolution activations pass
/// 2^31 elements, so whole frames take decoder tiles there. When no layout
/// does, `EngineError::TensorTooLarge`.
pub fn plan(
    shape: &ModelShape,
    geometry: &Geometry,
    settings: &EngineSettings,
    budget: Option<u64>,
) -> Result<TilePlan, EngineError> {
    let kv = settings.kv_ratio as usize;
    let overlap = settings.tile_overlap as usize;
    let make = |layout: TileLayout, automatic: bool| -> Result<TilePlan, EngineError> {
        let e = estimate(shape, geometry, layout, kv)?;
        Ok(TilePlan {
            layout,
            columns: e.columns,
            rows: e.rows,
            tile_width: e.tile_width,
            tile_height: e.tile_height,
            estimate: e.estimate,
            budget,
            automatic,
        })
    };
    let within_limit = |plan: &TilePlan| plan.estimate.within_element_limit(shape);
    let fits =
        |plan: &TilePlan| within_limit(plan) && budget.is_none_or(|b| plan.estimate.stream() <= b);

    let longest = geometry.padded_width.max(geometry.padded_height);
    let model_tiles: Vec<Option<usize>> = if settings.tile_size > 0 {
        vec![Some(settings.tile_size as usize)]
    } else {
        std::iter::once(None)
            .chain(candidate_tiles(longest, overlap).map(Some))
            .collect()
    };
    let decoder_setting = (settings.decoder_tile_size > 0).then_some(DecoderTiling {
        tile: settings.decoder_tile_size as usize,
        overlap: DecoderTiling::OVERLAP,
    });
    let layout = |tile: Option<usize>, park: bool, decoder: Option<DecoderTiling>| TileLayout {
        tile,
        overlap: if tile.is_some() { overlap } else { 0 },
        decoder,
        park,
    };
    let first = make(layout(model_tiles[0], false, decoder_setting), false)?;
    if fits(&first) {
        return Ok(first);
    }
    let mut smallest = first.clone();
    let mut smallest_tensor = first.clone();
    for &tile in &model_tiles {
        // only a model on a GPU parks, and only when it has several tiles
        for park in [false, true].into_iter().filter(|&p| !p || shape.can_park) {
            let mut candidate = make(layout(tile, park, decoder_setting), true)?;
            if park && candidate.sequences() < 2 {
                break;
            }
            // decoder tiles to try, largest first, unless the setting fixes
            // them: below the longer side of the sequences' frames
            let side = candidate.tile_width.max(candidate.tile_height);
            let mut decoder_tiles = candidate_tiles(side, DecoderTiling::OVERLAP)
                .filter(|_| decoder_setting.is_none())
                .map(|decoder_tile| {
                    let decoder = DecoderTiling {
                        tile: decoder_tile,
                        overlap: DecoderTiling::OVERLAP,
                    };
                    layout(tile, park, Some(decoder))
                });
            loop {
                if fits(&candidate) {
                    return Ok(candidate);
                }
                // the decoder's activations are the largest tensor wherever
                // one passes the element limit
                let decoder_bound =
                    candidate.estimate.peak_stage.contains("decoder") || !within_limit(&candidate);
                if candidate.estimate.largest_tensor < smallest_tensor.estimate.largest_tensor {
                    smallest_tensor = candidate.clone();
                }
                if candidate.estimate.stream() < smallest.estimate.stream() {
                    smallest = candidate;
                }
                // smaller decoder tiles help only while the decoder is the peak
                let Some(next) = decoder_tiles.next().filter(|_| decoder_bound) else {
                    break;
                };
                candidate = make(next, true)?;
            }
        }
    }
    match (budget, shape.element_limit) {
        (Some(available), _) if within_limit(&smallest) => Err(EngineError::TooLarge {
            out_width: geometry.out_width,
            out_height: geometry.out_height,
            available,
            tile: smallest.layout.tile.filter(|_| smallest.sequences() > 1),
            estimate: Box::new(smallest.estimate.clone()),
        }),
        (_, limit) => Err(EngineError::TensorTooLarge {
            out_width: geometry.out_width,
            out_height: geometry.out_height,
            elements: smallest_tensor.estimate.largest_tensor,
            limit: limit.unwrap_or(u64::MAX),
        }),
    }
}

/// `plan` for `in_width x in_height` input frames at the settings' scale, for
/// any model shape (the memory model's predictions for other precisions or
/// devices, `examples/memory_plan.rs`).
pub fn plan_for_input(
    shape: &ModelShape,
    in_width: u32,
    in_height: u32,
    settings: &EngineSettings,
    budget: Option<u64>,
) -> Result<TilePlan, EngineError> {
    plan(
        shape,
        &Geometry::new(in_width, in_height, settings.scale)?,
        settings,
        budget,
    )
}

/// Tile sides to try, largest first: multiples of 128 below `longest` (a
/// frame's longer padded side), down to the smallest one larger than the
/// overlap.
fn candidate_tiles(longest: usize, overlap: usize) -> impl Iterator<Item = usize> {
    let step = SIZE_MULTIPLE;
    let smallest = (overlap / step + 1) * step;
    (smallest..longest).step_by(step).rev()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The released widths with one DiT block.
    fn released() -> ModelShape {
        crate::engine::memory::test_shapes::released(1)
    }

    fn settings(tile_size: u32, tile_overlap: u32) -> EngineSettings {
        EngineSettings {
            tile_size,
            tile_overlap,
            ..EngineSettings::default()
        }
    }

    #[test]
    fn whole_frames_when_they_fit_or_there_is_no_budget() {
        let g = Geometry::new(480, 270, 4).unwrap();
        let shape = released();
        let plan = plan(&shape, &g, &settings(0, 64), None).unwrap();
        assert_eq!((plan.layout, plan.sequences()), (TileLayout::WHOLE, 1));
        assert_eq!(
            plan.estimate,
            memory::estimate(&shape, g.padded_width, g.padded_height, 3)
        );
        let roomy = plan.estimate.stream();
        let again = super::plan(&shape, &g, &settings(0, 64), Some(roomy)).unwrap();
        assert_eq!(again.layout, TileLayout::WHOLE);
        assert!(again.to_string().starts_with("whole frames of 1920x1152"));
    }

    #[test]
    fn the_budget_picks_the_largest_tiles_that_fit() {
        let g = Geometry::new(480, 270, 4).unwrap();
        let shape = released();
        let whole = memory::estimate(&shape, 1920, 1152, 3).stream();
        let budget = whole / 3;
        let chosen = plan(&shape, &g, &settings(0, 64), Some(budget)).unwrap();
        let tile = chosen.layout.tile.expect("tiles");
        assert!(chosen.automatic && chosen.sequences() > 1, "{chosen}");
        assert!(chosen.estimate.stream() <= budget, "{chosen}");
        // the next larger tile does not fit
        let larger = estimate(
            &shape,
            &g,
            TileLayout {
                tile: Some(tile + 128),
                overlap: 64,
                decoder: None,
                park: false,
            },
            3,
        )
        .unwrap()
        .estimate;
        assert!(larger.stream() > budget || tile + 128 >= 1920);
        let text = chosen.to_string();
        assert!(
            text.contains(&format!(
                "tiles of {}x{}",
                chosen.tile_width, chosen.tile_height
            )) && text.contains("memory budget"),
            "{text}"
        );
    }

    #[test]
    fn too_small_a_budget_gives_the_figure_for_the_smallest_tiles() {
        let g = Geometry::new(480, 270, 4).unwrap();
        let shape = released();
        match plan(&shape, &g, &settings(0, 64), Some(1 << 20)) {
            Err(EngineError::TooLarge {
                out_width,
                out_height,
                available,
                tile,
                estimate: least,
            }) => {
                assert_eq!((out_width, out_height, available), (1920, 1080, 1 << 20));
                let needed = least.stream();
                // the least of every layout tried: no more than the smallest
                // model tiles with whole-tile decoding
                let tile = tile.expect("tiles");
                let smallest = |decoder: Option<DecoderTiling>| {
                    let layout = TileLayout {
                        tile: Some(128),
                        overlap: 64,
                        decoder,
                        park: false,
                    };
                    estimate(&shape, &g, layout, 3).unwrap().estimate.stream()
                };
                assert!(needed <= smallest(None), "{needed} for tiles of {tile}");
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        // an overlap of 128 leaves 256 as the smallest tile
        assert_eq!(
            candidate_tiles(g.padded_width, 128).last(),
            Some(256),
            "smallest tile above the overlap"
        );
    }

    #[test]
    fn an_explicit_tile_is_kept_or_refused_with_its_figures() {
        let g = Geometry::new(480, 270, 4).unwrap();
        let shape = released();
        let chosen = plan(&shape, &g, &settings(512, 64), None).unwrap();
        // 1920 wide: 5 columns of 512 (stride at most 448); 1152 high: 3 rows
        assert_eq!((chosen.columns, chosen.rows), (5, 3), "{chosen}");
        assert!(!chosen.automatic);
        let needed = chosen.estimate.stream();
        // just below their estimate, the tiles are kept and decoded in tiles
        let decoded = plan(&shape, &g, &settings(512, 64), Some(needed - 1)).unwrap();
        assert_eq!(decoded.layout.tile, Some(512), "{decoded}");
        assert!(
            decoded.layout.decoder.is_some() && decoded.automatic,
            "{decoded}"
        );
        // far below, refused with the figure for those tiles
        let err = plan(&shape, &g, &settings(512, 64), Some(needed / 4)).unwrap_err();
        assert!(
            matches!(
                err,
                EngineError::TooLarge {
                    tile: Some(512),
                    ..
                }
            ),
            "{err:?}"
        );
        // a tile covering the frame is whole frames
        let covering = plan(&shape, &g, &settings(2048, 64), None).unwrap();
        assert_eq!(covering.sequences(), 1);
        assert_eq!(
            covering.estimate,
            plan(&shape, &g, &settings(0, 64), None).unwrap().estimate
        );
    }

    #[test]
    fn tiles_hold_more_state_and_need_less_working_memory() {
        let shape = released();
        let g = Geometry::new(480, 270, 4).unwrap();
        let whole = memory::estimate(&shape, 1920, 1152, 3);
        let layout = TileLayout {
            tile: Some(512),
            overlap: 64,
            decoder: None,
            park: false,
        };
        let tiled = estimate(&shape, &g, layout, 3).unwrap().estimate;
        assert_eq!(tiled.tiles, 15);
        assert!(tiled.held > whole.held, "{tiled:?} {whole:?}");
        assert!(tiled.working * 2 < whole.working, "{tiled:?} {whole:?}");
        assert!(
            tiled.stream() * 5 < whole.stream() * 2,
            "{tiled:?} {whole:?}"
        );
    }

    #[test]
    fn decoder_tiles_alone_come_before_whole_model_tiles() {
        let g = Geometry::new(256, 144, 4).unwrap();
        let shape = released();
        let whole = memory::estimate(&shape, 1024, 640, 3);
        let layout = TileLayout {
            tile: None,
            overlap: 0,
            decoder: Some(DecoderTiling {
                tile: 512,
                overlap: 64,
            }),
            park: false,
        };
        let decoder_tiled = estimate(&shape, &g, layout, 3).unwrap().estimate;
        // the decoder is the peak stage whole; in tiles it holds a memory per
        // tile but works on one region
        assert_eq!(whole.peak_stage, "decoder");
        assert!(decoder_tiled.working < whole.working, "{decoder_tiled:?}");
        assert!(decoder_tiled.held >= whole.held, "{decoder_tiled:?}");
        let chosen = plan(&shape, &g, &settings(0, 64), Some(decoder_tiled.stream())).unwrap();
        let decoder = chosen.layout.decoder.expect("decoder tiles");
        assert_eq!(
            (chosen.layout.tile, chosen.sequences()),
            (None, 1),
            "{chosen}"
        );
        assert!(decoder.tile >= 512, "{chosen}");
        assert!(chosen.to_string().contains("decoder tiles of"), "{chosen}");
    }

    #[test]
    fn decoder_tiles_come_before_smaller_model_tiles() {
        // 1920x1080 output within 40% of the whole-frame estimate: whole frames
        // or the largest model tiles, with the decoder in tiles, rather than
        // many small model tiles
        let g = Geometry::new(480, 270, 4).unwrap();
        let shape = released();
        let whole = memory::estimate(&shape, 1920, 1152, 3);
        let budget = whole.total() * 2 / 5 - whole.weights;
        let chosen = plan(&shape, &g, &settings(0, 64), Some(budget)).unwrap();
        assert!(chosen.layout.decoder.is_some(), "{chosen}");
        assert!(chosen.estimate.stream() <= budget, "{chosen}");
        assert!(chosen.sequences() <= 4, "{chosen}");
        // the same model tiles with whole-frame decoding do not fit
        let plain = estimate(
            &shape,
            &g,
            TileLayout {
                decoder: None,
                ..chosen.layout
            },
            3,
        )
        .unwrap()
        .estimate;
        assert!(plain.stream() > budget, "{plain:?}");
    }

    #[test]
    fn the_decoder_tile_setting_applies_with_or_without_model_tiles() {
        let g = Geometry::new(480, 270, 4).unwrap();
        let shape = released();
        let decoder = Some(DecoderTiling {
            tile: 512,
            overlap: DecoderTiling::OVERLAP,
        });
        for tile_size in [0, 1024] {
            let settings = EngineSettings {
                decoder_tile_size: 512,
                ..settings(tile_size, 64)
            };
            let chosen = plan(&shape, &g, &settings, None).unwrap();
            assert_eq!(chosen.layout.decoder, decoder, "{chosen}");
            assert_eq!(chosen.sequences() > 1, tile_size > 0, "{chosen}");
            assert!(!chosen.automatic, "{chosen}");
            // a budget may still shrink the model tiles, never the decoder's
            let whole = plan(&shape, &g, &settings, None).unwrap().estimate.stream();
            let tight = plan(
                &shape,
                &g,
                &EngineSettings {
                    tile_size: 0,
                    ..settings
                },
                Some(whole / 2),
            );
            if let Ok(tight) = tight {
                assert_eq!(tight.layout.decoder, decoder, "{tight}");
            }
        }
    }

    #[test]
    fn a_gpu_parks_tile_states_only_when_they_do_not_fit_resident() {
        // the released model (30 blocks) in 2-byte values on a GPU, 1920x1080
        // in tiles of 1024: four tiles' KV caches resident, or one at a time
        let g = Geometry::new(480, 270, 4).unwrap();
        let gpu = ModelShape {
            dtype_bytes: 2,
            conv_bytes: 2,
            can_park: true,
            ..memory::test_shapes::released(30)
        };
        let settings = EngineSettings {
            decoder_tile_size: 512,
            ..settings(1024, 64)
        };
        let resident = plan(&gpu, &g, &settings, None).unwrap();
        assert!(
            !resident.layout.park && resident.sequences() == 4,
            "{resident}"
        );
        let parked_layout = TileLayout {
            park: true,
            ..resident.layout
        };
        let parked = estimate(&gpu, &g, parked_layout, 3).unwrap().estimate;
        assert!(parked.held < resident.estimate.held, "{parked:?}");
        // a budget the resident states fit: they stay on the device
        let roomy = plan(&gpu, &g, &settings, Some(resident.estimate.stream())).unwrap();
        assert!(!roomy.layout.park, "{roomy}");
        // a budget only parked states fit: parked, and said so
        let tight = plan(&gpu, &g, &settings, Some(parked.stream())).unwrap();
        assert!(tight.layout.park && tight.automatic, "{tight}");
        assert_eq!(tight.layout.tile, Some(1024), "{tight}");
        assert!(
            tight.to_string().contains("parked in host memory"),
            "{tight}"
        );
        // the CPU never parks: the same budget needs smaller model tiles there
        let cpu = ModelShape {
            can_park: false,
            ..gpu
        };
        match plan(&cpu, &g, &settings, Some(parked.stream())) {
            Ok(chosen) => assert!(!chosen.layout.park, "{chosen}"),
            Err(e) => assert!(matches!(e, EngineError::TooLarge { .. }), "{e:?}"),
        }
    }

    /// The released model in 2-byte values on a CUDA device (`element_limit`).
    fn cuda_released() -> ModelShape {
        ModelShape {
            dtype_bytes: 2,
            conv_bytes: 2,
            can_park: true,
            element_limit: Some(memory::ELEMENT_LIMIT_CUDA),
            ..memory::test_shapes::released(30)
        }
    }

    #[test]
    fn a_cuda_model_keeps_every_tensor_below_2_pow_31_elements() {
        let limit = memory::ELEMENT_LIMIT_CUDA;
        let gpu = cuda_released();
        // 3840x2176: the decoder's padded full-size activations of one latent
        // frame, 4 x 128 x 3842 x 2178, pass 2^31 (99.75 % of 2^32)
        let uhd = Geometry::new(960, 544, 4).unwrap();
        let whole = estimate(&gpu, &uhd, TileLayout::WHOLE, 3).unwrap().estimate;
        assert_eq!(whole.largest_tensor, 4 * 128 * 3842 * 2178);
        assert!(!whole.within_element_limit(&gpu));
        // with no budget at all, the plan still takes decoder tiles there
        let chosen = plan(&gpu, &uhd, &settings(0, 64), None).unwrap();
        assert!(chosen.estimate.largest_tensor < limit, "{chosen}");
        assert_eq!(chosen.layout.tile, None, "{chosen}");
        assert!(chosen.layout.decoder.is_some(), "{chosen}");
        assert!(chosen.automatic, "{chosen}");
        // the CPU indexes in 64 bits: whole frames
        let cpu = ModelShape {
            element_limit: None,
            ..gpu.clone()
        };
        let on_cpu = plan(&cpu, &uhd, &settings(0, 64), None).unwrap();
        assert_eq!(on_cpu.layout, TileLayout::WHOLE, "{on_cpu}");
        // 1080p is below the limit whole: nothing changes there
        let hd = Geometry::new(480, 270, 4).unwrap();
        assert_eq!(
            plan(&gpu, &hd, &settings(0, 64), None).unwrap().layout,
            TileLayout::WHOLE
        );
    }

    #[test]
    fn a_tensor_past_the_limit_in_every_allowed_layout_is_refused_with_its_size() {
        let gpu = cuda_released();
        let uhd = Geometry::new(960, 544, 4).unwrap();
        // tiles and decoder tiles both fixed larger than the frame: one layout
        let fixed = EngineSettings {
            decoder_tile_size: 4096,
            ..settings(4096, 64)
        };
        match plan(&gpu, &uhd, &fixed, None) {
            Err(EngineError::TensorTooLarge {
                out_width,
                out_height,
                elements,
                limit,
            }) => {
                assert_eq!((out_width, out_height), (3840, 2176));
                assert!(elements >= limit, "{elements} {limit}");
                let text = plan(&gpu, &uhd, &fixed, None).unwrap_err().to_string();
                assert!(text.contains(&elements.to_string()), "{text}");
                assert!(text.contains("decoder-tile-size"), "{text}");
            }
            other => panic!("expected TensorTooLarge, got {other:?}"),
        }
        // a decoder-tile-size that fits is taken as it is
        let fitting = EngineSettings {
            decoder_tile_size: 1024,
            ..settings(0, 64)
        };
        let chosen = plan(&gpu, &uhd, &fitting, None).unwrap();
        assert_eq!(chosen.layout.decoder.map(|d| d.tile), Some(1024));
        assert!(!chosen.automatic, "{chosen}");
    }
}
