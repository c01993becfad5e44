//! Measures the tiled TCDecoder against whole frames (docs/model.md, section
//! "Tiles").
//!
//! decoder_tiles speed --width W --height H [--tile N --overlap M --halo P]
//!     [--latent-frames F] [--save FILE | --compare FILE | --interleave N]
//!   A decoder with the released widths [512, 256, 128, 128] and seeded random
//!   weights decodes one chunk of F latent frames (a stream's second chunk: its
//!   memory is warmed by one chunk first, not timed) at W x H output. Prints
//!   `decode_s=` and `peak_rss_mib=` (the process's VmHWM; `rss_with_weights_mib=`
//!   is the resident memory before decoding); `--save` writes the
//!   frames, `--compare` prints `max_diff=` and `mean_diff=` against saved ones.
//!   Run whole frames and tiles as separate processes, so each peak is its own.
//!   `--interleave N` times both in one process instead, alternating chunks.
//!
//! decoder_tiles halo [--case DIR] [--tile N --overlap M] [--halos 0,16,...]
//!   The golden fixture's decoder on that case's latents and LQ frames, every
//!   chunk in stream order: per halo and chunk, `max_diff=` and `mean_diff=`
//!   of the tiled frames against whole frames (values in [-1, 1]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use candle_core::{D, DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use clap::{Args as ClapArgs, Parser, Subcommand};
use gstflashvsr::devtools::random_model::{NormalSource, RandomModelSpec, ValueEncoding};
use gstflashvsr::layers::kernels::KernelPath;
use gstflashvsr::model::decoder::Decoder;
use gstflashvsr::model::tcdecoder::{
    COND_UNSHUFFLE, DecoderTiling, FRAMES_PER_LATENT, TcDecoder, TcDecoderConfig, TcDecoderState,
};
use gstflashvsr::model::{CancelToken, FlashVsrModel, ModelOptions, schedule};
use gstflashvsr::weights::DECODER_FILE;

/// Latent channels of the released DiT.
const LATENT_CHANNELS: usize = 16;

#[derive(Parser, Debug)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Time and peak memory of one chunk at the released widths
    Speed(SpeedArgs),
    /// Tiled against whole frames on a golden case, for several halos
    Halo {
        /// Golden case folder (model/ and io.safetensors)
        #[arg(long, value_name = "DIR", default_value = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/golden/sparse-v1.1"
        ))]
        case: PathBuf,
        /// Tile size in output pixels
        #[arg(long, default_value_t = 128)]
        tile: usize,
        /// Tile overlap in output pixels
        #[arg(long, default_value_t = 32)]
        overlap: usize,
        /// Halo schedules to measure, each A/B/C/D (see `speed --halo`)
        #[arg(
            long,
            value_delimiter = ',',
            value_parser = parse_halo,
            default_value = "0/0/0/0,32/32/24/8,64/64/24/8,96/64/24/8,152/64/24/8,64/64/64/64"
        )]
        halos: Vec<[usize; 4]>,
    },
}

#[derive(ClapArgs, Debug)]
struct SpeedArgs {
    /// Output width, a multiple of 8
    #[arg(long, default_value_t = 512)]
    width: usize,
    /// Output height, a multiple of 8
    #[arg(long, default_value_t = 512)]
    height: usize,
    /// Tile size in output pixels (0: whole frames)
    #[arg(long, default_value_t = 0)]
    tile: usize,
    /// Tile overlap in output pixels
    #[arg(long, default_value_t = 32)]
    overlap: usize,
    /// Context around each tile in output pixels at the decoder's input and
    /// after stages 0, 1 and 2, as A/B/C/D (default: DecoderTiling::HALO)
    #[arg(long, value_parser = parse_halo)]
    halo: Option<[usize; 4]>,
    /// Latent frames in the chunk (4 output frames each)
    #[arg(long, default_value_t = 2)]
    latent_frames: usize,
    /// Write the decoded frames to this safetensors file
    #[arg(long, value_name = "FILE")]
    save: Option<PathBuf>,
    /// Compare the decoded frames with those of this file
    #[arg(long, value_name = "FILE")]
    compare: Option<PathBuf>,
    /// Time whole frames and tiles in this one process instead, alternating,
    /// for this many chunks each (so that both see the same machine load);
    /// prints `whole_s=` and `tiled_s=` per chunk (peaks are not separate)
    #[arg(long, value_name = "CHUNKS")]
    interleave: Option<u64>,
}

/// `A/B/C/D` output pixels.
fn parse_halo(text: &str) -> std::result::Result<[usize; 4], String> {
    let values: Vec<usize> = text
        .split('/')
        .map(|v| v.parse().map_err(|e| format!("halo '{text}': {e}")))
        .collect::<std::result::Result<_, _>>()?;
    values
        .try_into()
        .map_err(|_| format!("halo '{text}': want four values A/B/C/D"))
}

/// A `Key:` line of /proc/self/status in MiB (Linux).
fn status_mib(key: &str) -> Option<f64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: f64 = text
        .lines()
        .find_map(|line| line.strip_prefix(key))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

fn show(halo: &[usize; 4]) -> String {
    halo.map(|h| h.to_string()).join("/")
}

fn differences(a: &Tensor, b: &Tensor) -> Result<(f32, f32)> {
    let diff = (a - b)?.abs()?.flatten_all()?;
    Ok((
        diff.max(D::Minus1)?.to_scalar()?,
        diff.mean(D::Minus1)?.to_scalar()?,
    ))
}

/// `count` seeded normal values times `std`, clamped to +-`limit`.
fn seeded(shape: &[usize], seed: u64, std: f32, limit: f32) -> Result<Tensor> {
    let mut source = NormalSource::new(seed);
    let count = shape.iter().product();
    let data: Vec<f32> = (0..count)
        .map(|_| (std * source.next_normal()).clamp(-limit, limit))
        .collect();
    Tensor::from_vec(data, shape, &Device::Cpu)
}

/// A TCDecoder with the released widths and the random model's seeded weights.
fn released_decoder() -> Result<TcDecoder> {
    let spec = RandomModelSpec::released(1);
    let file = spec
        .files()
        .into_iter()
        .find(|f| f.name == DECODER_FILE)
        .ok_or_else(|| candle_core::Error::Msg("the random model has no decoder".into()))?;
    let mut tensors = HashMap::new();
    for t in &file.tensors {
        let bytes = t.values(spec.seed).to_bytes(ValueEncoding::F32);
        let tensor = Tensor::from_raw_buffer(&bytes, DType::F32, &t.shape, &Device::Cpu)?;
        tensors.insert(t.name.clone(), tensor);
    }
    let cfg = TcDecoderConfig::from_shapes(|name| {
        tensors
            .get(name)
            .map(|t| t.dims().to_vec())
            .ok_or_else(|| candle_core::Error::Msg(format!("no tensor '{name}'")))
    })?;
    TcDecoder::new(
        cfg,
        VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu),
    )
}

fn speed(args: SpeedArgs) -> Result<()> {
    let SpeedArgs {
        width,
        height,
        tile,
        overlap,
        halo,
        latent_frames,
        save,
        compare,
        interleave,
    } = args;
    let s = COND_UNSHUFFLE;
    if !width.is_multiple_of(s) || !height.is_multiple_of(s) {
        candle_core::bail!("{width}x{height} is not a multiple of {s}")
    }
    let decoder = released_decoder()?;
    let weights_rss = status_mib("VmRSS:").unwrap_or(f64::NAN);
    let tiling = (tile > 0).then_some(DecoderTiling { tile, overlap });
    let halo = halo.unwrap_or(DecoderTiling::HALO);
    let mut state = TcDecoderState::new(tiling).with_halo(halo)?;
    let (h, w, f) = (height / s, width / s, latent_frames);
    let chunk = |k: u64| -> Result<(Tensor, Tensor)> {
        Ok((
            seeded(&[1, LATENT_CHANNELS, f, h, w], 2 * k + 1, 1.0, 3.0)?,
            seeded(
                &[FRAMES_PER_LATENT * f, 3, height, width],
                2 * k + 2,
                0.5,
                1.0,
            )?,
        ))
    };
    if let Some(chunks) = interleave {
        let Some(tiling) = tiling else {
            candle_core::bail!("--interleave compares with tiles: give --tile")
        };
        return interleaved(&decoder, tiling, halo, chunks, chunk);
    }
    // The first chunk warms the memory (and is trimmed); the second is measured.
    let (latents, cond) = chunk(0)?;
    decoder.decode(&latents, &cond, &mut state, &CancelToken::new())?;
    let (latents, cond) = chunk(1)?;
    let start = Instant::now();
    let out = decoder.decode(&latents, &cond, &mut state, &CancelToken::new())?;
    let decode_s = start.elapsed().as_secs_f64();
    let peak = status_mib("VmHWM:").unwrap_or(f64::NAN);
    let tiles = match tiling {
        Some(t) => t.decoded_sizes(width, height)?.len(),
        None => 1,
    };
    println!(
        "size={width}x{height} tiling={} tiles={tiles} \
         latent_frames={f} decode_s={decode_s:.2} peak_rss_mib={peak:.0} \
         rss_with_weights_mib={weights_rss:.0}",
        match tiling {
            Some(t) => format!("{}/{}/halo={}", t.tile, t.overlap, show(&halo)),
            None => "none".to_owned(),
        }
    );
    if let Some(path) = save {
        candle_core::safetensors::save(&HashMap::from([("frames", out.clone())]), &path)?;
    }
    if let Some(path) = compare {
        let saved = candle_core::safetensors::load(&path, &Device::Cpu)?;
        let reference = saved.get("frames").ok_or_else(|| {
            candle_core::Error::Msg(format!("{}: no tensor 'frames'", path.display()))
        })?;
        let (max, mean) = differences(&out, reference)?;
        println!("max_diff={max:.3e} mean_diff={mean:.3e}");
    }
    Ok(())
}

/// Alternates whole-frame and tiled decodes of the same chunks, each with its
/// own stream state, after one warm-up chunk each.
fn interleaved(
    decoder: &TcDecoder,
    tiling: DecoderTiling,
    halo: [usize; 4],
    chunks: u64,
    chunk: impl Fn(u64) -> Result<(Tensor, Tensor)>,
) -> Result<()> {
    let mut whole = TcDecoderState::default();
    let mut tiled = TcDecoderState::new(Some(tiling)).with_halo(halo)?;
    let (mut whole_total, mut tiled_total) = (0.0, 0.0);
    for k in 0..=chunks {
        let (latents, cond) = chunk(k)?;
        let start = Instant::now();
        let a = decoder.decode(&latents, &cond, &mut whole, &CancelToken::new())?;
        let whole_s = start.elapsed().as_secs_f64();
        let start = Instant::now();
        let b = decoder.decode(&latents, &cond, &mut tiled, &CancelToken::new())?;
        let tiled_s = start.elapsed().as_secs_f64();
        let (max, mean) = differences(&a, &b)?;
        let warm_up = if k == 0 { " (warm-up)" } else { "" };
        println!(
            "chunk={k}{warm_up} whole_s={whole_s:.2} tiled_s={tiled_s:.2} \
             max_diff={max:.3e} mean_diff={mean:.3e}"
        );
        if k > 0 {
            whole_total += whole_s;
            tiled_total += tiled_s;
        }
    }
    println!(
        "tiling={}/{}/halo={} whole_s={whole_total:.2} tiled_s={tiled_total:.2} \
         tiled_over_whole={:.2}",
        tiling.tile,
        tiling.overlap,
        show(&halo),
        tiled_total / whole_total
    );
    Ok(())
}

fn halo(case: PathBuf, tile: usize, overlap: usize, halos: Vec<[usize; 4]>) -> Result<()> {
    let model = FlashVsrModel::load(
        &case.join("model"),
        &ModelOptions {
            device: Device::Cpu,
            dtype: DType::F32,
            kernels: KernelPath::Fast,
            attention: gstflashvsr::engine::AttentionKernel::Auto,
            decoder: gstflashvsr::model::decoder::DecoderKind::Tiny,
        },
    )?;
    let Decoder::Tiny(decoder) = model.decoder() else {
        candle_core::bail!("the halo measurement is for the TCDecoder")
    };
    let io_path = case.join("io.safetensors");
    let io = candle_core::safetensors::load(&io_path, &Device::Cpu)?;
    let get = |name: &str| {
        io.get(name).ok_or_else(|| {
            candle_core::Error::Msg(format!("{}: no tensor '{name}'", io_path.display()))
        })
    };
    // [F, H, W, 3] u8 -> [F, 3, H, W] in [-1, 1]
    let lq = ((get("lq_u8")?.to_dtype(DType::F32)?.permute((0, 3, 1, 2))? / 127.5)? - 1.0)?;
    let chunks = (0..)
        .take_while(|k| io.contains_key(&format!("chunk{k}.latents")))
        .count();
    let decode_all = |state: &mut TcDecoderState| -> Result<Vec<Tensor>> {
        (0..chunks)
            .map(|k| {
                let span = schedule::chunk_output_span(k);
                let cond = lq.narrow(0, span.start, span.len())?;
                let latents = get(&format!("chunk{k}.latents"))?;
                decoder.decode(latents, &cond, state, &CancelToken::new())
            })
            .collect()
    };
    let whole = decode_all(&mut TcDecoderState::default())?;
    let (_, _, height, width) = whole[0].dims4()?;
    let tiling = DecoderTiling { tile, overlap };
    let tiles = tiling.tiles(width, height)?.len();
    println!(
        "case={} size={width}x{height} tile={tile} overlap={overlap} tiles={tiles} chunks={chunks}",
        case.display()
    );
    for halo in halos {
        let mut state = TcDecoderState::new(Some(tiling)).with_halo(halo)?;
        let tiled = decode_all(&mut state)?;
        for (k, (t, w)) in tiled.iter().zip(&whole).enumerate() {
            let (max, mean) = differences(t, w)?;
            println!(
                "halo={} chunk={k} max_diff={max:.3e} mean_diff={mean:.3e}",
                show(&halo)
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let result = match Args::parse().command {
        Command::Speed(args) => speed(args),
        Command::Halo {
            case,
            tile,
            overlap,
            halos,
        } => halo(case, tile, overlap, halos),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("decoder_tiles: {e}");
            ExitCode::FAILURE
        }
    }
}
