//! The Wan decoder against the golden case made with the official module
//! (tests/golden/wan-v1.1: the VAE at reduced width on latents of the
//! sparse-v1.1 golden run, tests/golden/README.md), on the CPU fast path and the
//! portable path, chunk by chunk; and its tiles, caches and errors.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor};

use super::*;
use crate::layers::kernels::{self, KernelPath};
use crate::model::cancel::{CancelToken, Cancelled};
use crate::model::color_fix::ColorFix;
use crate::pixels::frames::tensor_to_rgb;
use crate::test_util::max_abs_diff;
use crate::weights::{WAN_VAE_FILE, WeightFile};

fn case_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/wan-v1.1")
}

struct Case {
    decoder: WanDecoder,
    io: HashMap<String, Tensor>,
}

fn load_case(dtype: DType) -> Result<Case> {
    let file = Arc::new(WeightFile::open(
        &case_dir().join("model").join(WAN_VAE_FILE),
    )?);
    let cfg = WanDecoderConfig::from_shapes(&file.names(), |n| file.shape(n))?;
    let decoder = WanDecoder::new(cfg, file.var_builder(dtype, &Device::Cpu))?;
    let io = candle_core::safetensors::load(case_dir().join("io.safetensors"), &Device::Cpu)?;
    Ok(Case { decoder, io })
}

impl Case {
    fn tensor(&self, name: &str) -> &Tensor {
        &self.io[name]
    }

    /// Decodes the case's latents in its chunks (6, 2, 2, 2 latent frames),
    /// checking each chunk's frame count; returns all frames `[45, 3, 64, 96]`.
    fn decode_in_chunks(&self, state: &mut WanDecoderState) -> Result<Tensor> {
        let latents = self.tensor("latents");
        let counts = self.tensor("chunk_latent_frames").to_vec1::<i64>()?;
        let outputs = self.tensor("chunk_output_frames").to_vec1::<i64>()?;
        let mut start = 0;
        let mut frames = Vec::new();
        for (&n, &want) in counts.iter().zip(&outputs) {
            let chunk = latents.narrow(2, start, n as usize)?;
            let out = self.decoder.decode(&chunk, state, &CancelToken::new())?;
            assert_eq!(out.dim(0)?, want as usize, "chunk from latent {start}");
            frames.push(out);
            start += n as usize;
        }
        Tensor::cat(&frames, 0)
    }

    /// `decoded` as `[45, 3, 64, 96]` f32.
    fn expected_decoded(&self) -> Result<Tensor> {
        self.tensor("decoded")
            .squeeze(0)?
            .transpose(0, 1)?
            .to_dtype(DType::F32)
    }
}

/// The golden tolerances (tests/golden/README.md): decoded within 5e-3 (it is
/// stored in f16), and after the AdaIN colour fix the u8 frames within mean
/// 0.05, 99.9% within 1, none off by more than 8.
fn check_against_golden(case: &Case, decoded: &Tensor, what: &str) -> Result<()> {
    let err = max_abs_diff(decoded, &case.expected_decoded()?)?;
    assert!(err <= 5e-3, "{what}: decoded max error {err}");
    let lq = (case
        .tensor("lq_u8")
        .permute((0, 3, 1, 2))?
        .to_dtype(DType::F32)?
        / 127.5)?
        - 1.0;
    let fixed = ColorFix::Adain.apply(decoded, &lq?)?;
    let ours: Vec<u8> = tensor_to_rgb(&fixed)?.concat();
    let want = case
        .tensor("out.frames_u8")
        .flatten_all()?
        .to_vec1::<u8>()?;
    assert_eq!(ours.len(), want.len());
    let diffs: Vec<u32> = ours
        .iter()
        .zip(&want)
        .map(|(a, b)| a.abs_diff(*b) as u32)
        .collect();
    let mean = diffs.iter().sum::<u32>() as f64 / diffs.len() as f64;
    let within_one = diffs.iter().filter(|d| **d <= 1).count() as f64 / diffs.len() as f64;
    let worst = diffs.iter().max().copied().unwrap_or(0);
    assert!(
        mean <= 0.05 && within_one >= 0.999 && worst <= 8,
        "{what}: frames mean {mean}, within 1 {within_one}, worst {worst}"
    );
    Ok(())
}

#[test]
fn reads_the_layers_from_the_shapes() -> Result<()> {
    let case = load_case(DType::F32)?;
    let cfg = case.decoder.config();
    assert_eq!((cfg.z_dim, cfg.middle, cfg.head), (16, 32, 8));
    assert_eq!(cfg.upsamples.len(), 15);
    assert_eq!(
        cfg.upsamples[3],
        WanLayer::Upsample {
            c: 32,
            temporal: true
        }
    );
    assert_eq!(
        cfg.upsamples[4],
        WanLayer::Residual {
            in_c: 16,
            out_c: 32
        }
    );
    assert_eq!(
        cfg.upsamples[11],
        WanLayer::Upsample {
            c: 16,
            temporal: false
        }
    );
    assert_eq!(case.decoder.temporal_upsamplings(), 2);
    // the same layout as the official decoder's at this base width
    assert_eq!(*cfg, WanDecoderConfig::official(8));
    WanDecoderConfig::official(96).check_chain()?;
    let levels = cfg.levels();
    assert_eq!(levels.map(|l| l.frames), [1, 2, 4, 4]);
    // the time convs' doubled widths at latent and 2x size, the upsampled inputs
    assert_eq!(levels.map(|l| l.widest), [64, 64, 32, 16]);
    // conv1 + 2 middle blocks + 3 blocks, all of 32 channels, and the time conv
    assert_eq!(levels[0].cached_channels, 16 + 4 * 32 + 6 * 32 + 32);
    Ok(())
}

#[test]
fn matches_the_official_decoder_on_the_fast_path_chunk_by_chunk() -> Result<()> {
    let case = load_case(DType::F32)?;
    let decoded = case.decode_in_chunks(&mut WanDecoderState::default())?;
    check_against_golden(&case, &decoded, "fast path")
}

#[test]
fn matches_the_official_decoder_on_the_portable_path() -> Result<()> {
    kernels::run_with(KernelPath::Portable, || {
        let case = load_case(DType::F32)?;
        let decoded = case.decode_in_chunks(&mut WanDecoderState::default())?;
        check_against_golden(&case, &decoded, "portable path")
    })
}

/// The portable path in bf16 (what a GPU runs with `precision=bf16`) within the
/// bound stated in docs/device-path.md for decoded frames: 0.1.
#[test]
fn bf16_on_the_portable_path_stays_within_its_bound() -> Result<()> {
    kernels::run_with(KernelPath::Portable, || {
        let case = load_case(DType::BF16)?;
        let decoded = case.decode_in_chunks(&mut WanDecoderState::default())?;
        let err = max_abs_diff(&decoded, &case.expected_decoded()?)?;
        assert!(err <= 0.1, "bf16 decoded max error {err}");
        Ok(())
    })
}

/// With halos that cover what each stage's remaining convolutions see (and an
/// input halo as wide as the frame, so the middle's attention sees it whole),
/// tiles give the whole-frame result; each keeps its own caches across chunks.
#[test]
fn tiles_with_whole_context_equal_whole_frames() -> Result<()> {
    let case = load_case(DType::F32)?;
    let whole = case.decode_in_chunks(&mut WanDecoderState::default())?;
    let tiling = DecoderTiling {
        tile: 40,
        overlap: 16,
    };
    let mut state = WanDecoderState::new(Some(tiling));
    let tiled = case.decode_in_chunks(&mut state)?;
    assert_eq!(state.regions.len(), tiling.tiles(96, 64)?.len());
    assert!(state.regions.len() >= 4);
    let err = max_abs_diff(&tiled, &whole)?;
    assert!(err < 1e-4, "tiles vs whole frames: {err}");
    // a halo too narrow for the convolutions' reach shows at the tile borders
    let mut narrow = WanDecoderState::new(Some(tiling)).with_halo([8, 8, 8, 0])?;
    let err = max_abs_diff(&case.decode_in_chunks(&mut narrow)?, &whole)?;
    assert!(err > 1e-3, "a narrow halo changed nothing: {err}");
    Ok(())
}

#[test]
fn a_cancelled_token_stops_the_decoder() -> Result<()> {
    let case = load_case(DType::F32)?;
    let cancel = CancelToken::new();
    cancel.cancel();
    let latents = case.tensor("latents").narrow(2, 0, 6)?;
    let err = case
        .decoder
        .decode(&latents, &mut WanDecoderState::default(), &cancel)
        .unwrap_err();
    assert!(Cancelled::is(&err), "{err}");
    Ok(())
}

#[test]
fn a_new_frame_size_mid_stream_is_an_error() -> Result<()> {
    let case = load_case(DType::F32)?;
    let mut state = WanDecoderState::default();
    let latents = case.tensor("latents");
    case.decoder
        .decode(&latents.narrow(2, 0, 1)?, &mut state, &CancelToken::new())?;
    let smaller = latents.narrow(2, 1, 2)?.narrow(3, 0, 4)?;
    let err = case
        .decoder
        .decode(&smaller, &mut state, &CancelToken::new())
        .unwrap_err()
        .to_string();
    assert!(err.contains("reset the stream"), "{err}");
    Ok(())
}

#[test]
fn malformed_shapes_name_the_tensor() {
    let file = WeightFile::open(&case_dir().join("model").join(WAN_VAE_FILE)).unwrap();
    let names = file.names();
    let shapes = |bad: &'static str, shape: Vec<usize>| {
        let file = &file;
        move |n: &str| -> Result<Vec<usize>> {
            if n == bad {
                Ok(shape.clone())
            } else {
                file.shape(n)
            }
        }
    };
    for (bad, shape) in [
        ("conv2.weight", vec![16, 16, 1, 1]),
        ("decoder.conv1.weight", vec![32, 16, 3, 3]),
        (
            "decoder.upsamples.4.residual.2.weight",
            vec![32, 8, 3, 3, 3],
        ),
        ("decoder.head.2.weight", vec![4, 8, 3, 3, 3]),
    ] {
        let err = WanDecoderConfig::from_shapes(&names, shapes(bad, shape))
            .unwrap_err()
            .to_string();
        let layer = bad.trim_end_matches(".residual.2.weight");
        assert!(err.contains(layer), "{bad}: {err}");
    }
    // a decoder with one upsampling fewer cannot make FlashVSR's frames
    let fewer: Vec<String> = names
        .iter()
        .filter(|n| !n.starts_with("decoder.upsamples.11."))
        .cloned()
        .collect();
    let err = WanDecoderConfig::from_shapes(&fewer, |n| file.shape(n))
        .unwrap_err()
        .to_string();
    assert!(err.contains("decoder.upsamples.11"), "{err}");
}
