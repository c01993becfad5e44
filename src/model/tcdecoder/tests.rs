use super::*;
use crate::model::cancel::{CancelToken, Cancelled};
use candle_core::{Device, Tensor};
use std::collections::HashMap;

/// A decoder with small random weights of the released layout.
/// Deterministic pseudo-random values, uniform in [-scale, scale]: candle's
/// CPU `randn` cannot be seeded, and some draws of a 4-channel network are
/// dead (all-zero after its ReLUs), which made these tests flaky.
fn values(shape: &[usize], seed: u64, scale: f32) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let data: Vec<f32> = (0..n)
        .map(|_| {
            // xorshift64*
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let bits = state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
            (bits as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect();
    Tensor::from_vec(data, shape, &Device::Cpu)
}

fn random_decoder(c: usize) -> Result<TcDecoder> {
    let dev = Device::Cpu;
    let mut t = HashMap::new();
    let mut seed = 0u64;
    let mut add = |name: String, shape: &[usize]| -> Result<()> {
        let fan_in: usize = shape[1..].iter().product::<usize>().max(1);
        // uniform in [-a, a] has deviation a / sqrt(3)
        let scale = (3.0 / fan_in as f64).sqrt() as f32;
        seed += 1;
        t.insert(name, values(shape, seed, scale)?);
        Ok(())
    };
    add("decoder.1.weight".into(), &[c, 784, 3, 3])?;
    add("decoder.1.bias".into(), &[c])?;
    add("decoder.3.weight".into(), &[c, c, 3, 3])?;
    for (first, grow, stride) in [(5, 9, 1), (11, 15, 2), (17, 21, 2)] {
        for m in first..first + 3 {
            for (j, cin) in [(0, 2 * c), (2, c), (4, c)] {
                add(format!("decoder.{m}.conv.{j}.weight"), &[c, cin, 3, 3])?;
                add(format!("decoder.{m}.conv.{j}.bias"), &[c])?;
            }
        }
        // stage 1's TGrow holds extra rows, as released checkpoints may
        add(
            format!("decoder.{grow}.conv.weight"),
            &[c * stride.max(2), c, 1, 1],
        )?;
        add(format!("decoder.{}.weight", grow + 1), &[c, c, 3, 3])?;
    }
    add("decoder.24.weight".into(), &[c, c, 3, 3])?;
    add("decoder.26.weight".into(), &[3, c, 3, 3])?;
    add("decoder.26.bias".into(), &[3])?;
    let vb = VarBuilder::from_tensors(t, DType::F32, &dev);
    TcDecoder::new(
        TcDecoderConfig {
            in_channels: 784,
            channels: [c; 4],
        },
        vb,
    )
}

/// Under bf16 products only the middle stage takes them: the input convs, the
/// first and last stages and the output convs stay f32.
#[test]
fn bf16_products_go_to_the_middle_stage_only() -> Result<()> {
    // 64 channels: every 3x3 layer takes the Winograd path (the one to RGB
    // where the processor lacks AVX-512)
    let dec = products::load_with(CpuProducts::Bf16, || random_decoder(64))?;
    let stage_products = |stage: &Stage| {
        let mut all: Vec<CpuProducts> = stage
            .mem
            .iter()
            .flat_map(|m| m.convs.iter().map(|c| c.0.cpu_products()))
            .collect();
        all.push(stage.conv.0.cpu_products());
        all
    };
    for conv in [&dec.conv_in, &dec.conv_in2, &dec.conv_out1, &dec.conv_out2] {
        assert_eq!(conv.0.cpu_products(), CpuProducts::F32);
    }
    for (s, want) in [CpuProducts::F32, CpuProducts::Bf16, CpuProducts::F32]
        .into_iter()
        .enumerate()
    {
        assert!(
            stage_products(&dec.stages[s]).iter().all(|&p| p == want),
            "stage {s}: {want:?}"
        );
    }
    // the same decoder loaded for f32 products has none in bf16
    let f32_dec = random_decoder(64)?;
    assert!(
        f32_dec.stages[1..]
            .iter()
            .flat_map(stage_products)
            .all(|p| p == CpuProducts::F32)
    );
    Ok(())
}

#[test]
fn memory_carries_across_chunks() -> Result<()> {
    let dec = random_decoder(4)?;
    let latents = values(&[1, 16, 4, 2, 2], 101, 1.7)?;
    let cond = values(&[16, 3, 16, 16], 102, 0.85)?;
    // all at once
    let mut whole = TcDecoderState::default();
    let all = dec.decode(&latents, &cond, &mut whole, &CancelToken::new())?;
    assert_eq!(all.dims(), &[16 - FIRST_CHUNK_TRIM, 3, 16, 16]);
    // in two chunks with the same state: identical frames
    let mut split = TcDecoderState::default();
    let a = dec.decode(
        &latents.narrow(2, 0, 2)?,
        &cond.narrow(0, 0, 8)?,
        &mut split,
        &CancelToken::new(),
    )?;
    let b = dec.decode(
        &latents.narrow(2, 2, 2)?,
        &cond.narrow(0, 8, 8)?,
        &mut split,
        &CancelToken::new(),
    )?;
    assert_eq!(a.dim(0)?, 8 - FIRST_CHUNK_TRIM);
    assert_eq!(b.dim(0)?, 8);
    let joined = Tensor::cat(&[a, b], 0)?;
    let err = (joined - &all)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert!(err < 1e-5, "{err}");
    // without the memory, the second chunk comes out different
    let mut fresh = TcDecoderState {
        started: true,
        ..Default::default()
    };
    let cold = dec.decode(
        &latents.narrow(2, 2, 2)?,
        &cond.narrow(0, 8, 8)?,
        &mut fresh,
        &CancelToken::new(),
    )?;
    let diff = (cold - all.narrow(0, 5, 8)?)?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?;
    assert!(diff > 1e-4, "memory had no effect");
    // a new stream starts over: the first chunk is trimmed again
    split = TcDecoderState::default();
    let again = dec.decode(
        &latents.narrow(2, 0, 2)?,
        &cond.narrow(0, 0, 8)?,
        &mut split,
        &CancelToken::new(),
    )?;
    assert_eq!(again.dim(0)?, 8 - FIRST_CHUNK_TRIM);
    Ok(())
}

#[test]
fn short_condition_is_padded_with_its_first_frame() -> Result<()> {
    let dec = random_decoder(4)?;
    let latents = values(&[1, 16, 2, 2, 2], 103, 1.7)?;
    let cond = values(&[6, 3, 16, 16], 104, 0.85)?;
    let padded = Tensor::cat(
        &[cond.narrow(0, 0, 1)?, cond.narrow(0, 0, 1)?, cond.clone()],
        0,
    )?;
    let a = dec.decode(
        &latents,
        &cond,
        &mut TcDecoderState::default(),
        &CancelToken::new(),
    )?;
    let b = dec.decode(
        &latents,
        &padded,
        &mut TcDecoderState::default(),
        &CancelToken::new(),
    )?;
    assert_eq!((a - b)?.abs()?.max_all()?.to_scalar::<f32>()?, 0.0);
    assert!(
        dec.decode(
            &latents,
            &Tensor::cat(&[&padded, &padded], 0)?,
            &mut TcDecoderState::default(),
            &CancelToken::new()
        )
        .is_err()
    );
    Ok(())
}

use crate::test_util::max_abs_diff as max_abs;

/// Decodes `chunks` chunks of 2 latent frames of `latents`/`cond` (4 chunks'
/// worth: [1, 16, 8, h, w] and [32, 3, 8h, 8w]) with `state`.
fn decode_chunks(
    dec: &TcDecoder,
    latents: &Tensor,
    cond: &Tensor,
    chunks: usize,
    state: &mut TcDecoderState,
) -> Result<Vec<Tensor>> {
    (0..chunks)
        .map(|k| {
            dec.decode(
                &latents.narrow(2, 2 * k, 2)?,
                &cond.narrow(0, 8 * k, 8)?,
                state,
                &CancelToken::new(),
            )
        })
        .collect()
}

fn tiled(tile: usize, overlap: usize, halo: [usize; 4]) -> Result<TcDecoderState> {
    TcDecoderState::new(Some(DecoderTiling { tile, overlap })).with_halo(halo)
}

#[test]
fn a_whole_frame_tile_decodes_bit_for_bit_like_whole_frames() -> Result<()> {
    let dec = random_decoder(4)?;
    // 48 x 24 output
    let latents = values(&[1, 16, 8, 3, 6], 105, 1.7)?;
    let cond = values(&[32, 3, 24, 48], 106, 0.85)?;
    let mut whole = TcDecoderState::default();
    let expected = decode_chunks(&dec, &latents, &cond, 3, &mut whole)?;
    // a tile as large as the frame's longer side, and one larger
    for tile in [48, 64] {
        let mut state = tiled(tile, 16, DecoderTiling::HALO)?;
        let got = decode_chunks(&dec, &latents, &cond, 3, &mut state)?;
        assert_eq!(state.memories.len(), 1);
        for (g, e) in got.iter().zip(&expected) {
            assert_eq!(g.dims(), e.dims());
            let same = g.flatten_all()?.to_vec1::<f32>()? == e.flatten_all()?.to_vec1::<f32>()?;
            assert!(same, "tile {tile}: {}", max_abs(g, e)?);
        }
    }
    Ok(())
}

#[test]
fn tiles_with_their_own_memory_match_whole_frames_given_enough_halo() -> Result<()> {
    let dec = random_decoder(4)?;
    // 64 x 48 output in 3 x 2 tiles of 32 overlapping by 16
    let latents = values(&[1, 16, 8, 6, 8], 107, 1.7)?;
    let cond = values(&[32, 3, 48, 64], 108, 0.85)?;
    let mut whole = TcDecoderState::default();
    let expected = decode_chunks(&dec, &latents, &cond, 4, &mut whole)?;
    // A halo as large as the frame: every tile decodes the whole frame, and
    // only the blend's rounding differs, in every chunk (each tile's memory is
    // kept and placed right).
    let mut wide = tiled(32, 16, [64; 4])?;
    let got = decode_chunks(&dec, &latents, &cond, 4, &mut wide)?;
    assert_eq!(wide.memories.len(), 6);
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(g.dims(), e.dims());
        assert!(max_abs(g, e)? < 1e-5, "{}", max_abs(g, e)?);
    }
    // The region may narrow after each stage by what the later layers no
    // longer need (their receptive field: 59 output pixels after stage 0, 21
    // after stage 1, 2 after stage 2; docs/model.md, "Tiles").
    let mut narrowing = tiled(32, 16, [64, 64, 24, 8])?;
    let got = decode_chunks(&dec, &latents, &cond, 4, &mut narrowing)?;
    for (g, e) in got.iter().zip(&expected) {
        assert!(max_abs(g, e)? < 1e-5, "{}", max_abs(g, e)?);
    }
    // Without a halo, tile borders see zero padding instead of their neighbours.
    let mut bare = tiled(32, 16, [0; 4])?;
    let got = decode_chunks(&dec, &latents, &cond, 4, &mut bare)?;
    let err = max_abs(&got[3], &expected[3])?;
    assert!(err > 1e-3, "no halo made no difference: {err}");
    Ok(())
}

#[test]
fn a_stream_keeps_its_frame_size() -> Result<()> {
    let dec = random_decoder(4)?;
    let mut state = tiled(32, 16, [16; 4])?;
    let small = (
        values(&[1, 16, 2, 3, 6], 109, 1.7)?,
        values(&[8, 3, 24, 48], 110, 0.85)?,
    );
    let large = (
        values(&[1, 16, 2, 6, 8], 111, 1.7)?,
        values(&[8, 3, 48, 64], 112, 0.85)?,
    );
    dec.decode(&small.0, &small.1, &mut state, &CancelToken::new())?;
    let err = dec
        .decode(&large.0, &large.1, &mut state, &CancelToken::new())
        .unwrap_err()
        .to_string();
    assert!(err.contains("64x48") && err.contains("48x24"), "{err}");
    // a new stream may have another size
    let mut state = tiled(32, 16, [16; 4])?;
    let out = dec.decode(&large.0, &large.1, &mut state, &CancelToken::new())?;
    assert_eq!(out.dims(), &[8 - FIRST_CHUNK_TRIM, 3, 48, 64]);
    // a condition of another size than the latents is refused with both sizes
    let err = dec
        .decode(&large.0, &small.1, &mut state, &CancelToken::new())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("[3, 24, 48]") && err.contains("[3, 48, 64]"),
        "{err}"
    );
    Ok(())
}

#[test]
fn a_cancelled_token_stops_the_decoder() -> Result<()> {
    let dec = random_decoder(4)?;
    let latents = values(&[1, 16, 2, 6, 8], 113, 1.7)?;
    let cond = values(&[8, 3, 48, 64], 114, 0.85)?;
    for tiling in [
        None,
        Some(DecoderTiling {
            tile: 32,
            overlap: 16,
        }),
    ] {
        let cancel = CancelToken::new();
        let mut state = TcDecoderState::new(tiling);
        dec.decode(&latents, &cond, &mut state, &cancel)?;
        cancel.cancel();
        let err = dec
            .decode(&latents, &cond, &mut state, &cancel)
            .unwrap_err();
        assert!(Cancelled::is(&err), "{tiling:?}: {err}");
        cancel.clear();
        assert!(dec.decode(&latents, &cond, &mut state, &cancel).is_ok());
    }
    Ok(())
}

#[test]
fn bad_tilings_are_refused_with_their_values() {
    for (tile, overlap, words) in [
        (0, 0, ["tile size 0", "multiple of 8"]),
        (100, 8, ["tile size 100", "multiple of 8"]),
        (128, 12, ["overlap 12", "multiple of 8"]),
        (128, 128, ["overlap 128", "tile size 128"]),
    ] {
        let err = DecoderTiling { tile, overlap }
            .validate()
            .unwrap_err()
            .to_string();
        assert!(words.iter().all(|w| err.contains(w)), "{err}");
    }
    assert!(
        DecoderTiling {
            tile: 256,
            overlap: 32
        }
        .validate()
        .is_ok()
    );
}

#[test]
fn decoded_sizes_are_the_tiles_widened_by_the_halo_within_the_frame() -> Result<()> {
    let halo = DecoderTiling::HALO[3];
    let tiling = DecoderTiling {
        tile: 256,
        overlap: 64,
    };
    // 640 x 256: one row of 3 tiles, at 0, 192 and 384 (the last ends at 640)
    let sizes = tiling.decoded_sizes(640, 256)?;
    let width = |start: usize| (start + 256 + halo).min(640) - start.saturating_sub(halo);
    assert_eq!(
        sizes,
        vec![(width(0), 256), (width(192), 256), (width(384), 256)]
    );
    assert_eq!(tiling.decoded_sizes(128, 128)?, vec![(128, 128)]);
    assert!(
        DecoderTiling {
            tile: 250,
            overlap: 0
        }
        .decoded_sizes(640, 256)
        .is_err()
    );
    Ok(())
}

#[test]
fn a_sequence_with_a_bad_decoder_tiling_is_refused() {
    use crate::model::SequenceConfig;
    let config = |decoder_tiling| SequenceConfig {
        height: 256,
        width: 384,
        version: Default::default(),
        sparse_ratio: 2.0,
        kv_ratio: 3.0,
        local_range: 11,
        color_fix: Default::default(),
        decoder_tiling,
        cancel: CancelToken::new(),
    };
    assert!(config(None).validate().is_ok());
    assert!(
        config(Some(DecoderTiling {
            tile: 128,
            overlap: 32
        }))
        .validate()
        .is_ok()
    );
    let err = config(Some(DecoderTiling {
        tile: 64,
        overlap: 64,
    }))
    .validate()
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("overlap 64") && err.contains("tile size 64"),
        "{err}"
    );
}
