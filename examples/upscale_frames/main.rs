//! Upscales frames with the engine, without GStreamer (for debugging).
//!
//! Raw RGB24 file:   upscale_frames --model-dir DIR --input in.rgb --output out.rgb
//!                       --width W --height H [--frames N] [settings]
//! PPM (P6) folder:  upscale_frames --model-dir DIR --input frames/ --output out/
//!                       [--frames N] [settings]
//! Settings: --scale S --version v1|v1.1 --precision f32|bf16|f16 --device cpu|cuda:N
//!           --color-fix none|adain|wavelet --sparse-ratio R --kv-ratio R
//!           --local-range L --seed S
//! (`--help` lists them with their defaults, `EngineSettings::default()`'s.)

#[path = "../common/cli.rs"]
mod cli;
mod ppm;

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use gstflashvsr::engine::memory::{self, human_bytes};
use gstflashvsr::engine::{Engine, EngineSettings, ModelVersion, RgbFrame};
use gstflashvsr::model::color_fix::ColorFix;
use gstflashvsr::pixels::frames::try_filled;

/// Upscales a raw RGB24 file, or a folder of PPM (P6) frames, with the engine.
#[derive(Parser, Debug)]
struct Cli {
    /// A raw RGB24 file (needs --width and --height) or a folder of .ppm frames
    #[arg(long, value_name = "PATH")]
    input: PathBuf,

    /// The raw RGB24 file, or the folder of .ppm frames, to write
    #[arg(long, value_name = "PATH")]
    output: PathBuf,

    /// Width of the raw input frames
    #[arg(long, value_name = "W", requires = "height")]
    width: Option<u32>,

    /// Height of the raw input frames
    #[arg(long, value_name = "H", requires = "width")]
    height: Option<u32>,

    /// Upscale at most this many frames [default: all]
    #[arg(long, value_name = "N")]
    frames: Option<usize>,

    #[command(flatten)]
    engine: cli::EngineArgs,

    /// Release of the weights in the model folder
    #[arg(long, value_name = "v1|v1-1", default_value_t = EngineSettings::default().model_version)]
    version: ModelVersion,

    /// Colour correction of the output towards the input
    #[arg(long, value_name = "none|adain|wavelet", default_value_t = EngineSettings::default().color_fix)]
    color_fix: ColorFix,

    /// Seed of the per-stream noise
    #[arg(long, value_name = "S", default_value_t = EngineSettings::default().seed)]
    seed: u64,

    /// Print the memory estimate of the first frame size and, at the end, the
    /// process's peak resident memory (VmHWM) to compare with it
    #[arg(long)]
    memory_report: bool,
}

struct Args {
    settings: EngineSettings,
    input: PathBuf,
    output: PathBuf,
    size: Option<(u32, u32)>,
    max_frames: Option<usize>,
    memory_report: bool,
}

impl From<Cli> for Args {
    fn from(cli: Cli) -> Self {
        Self {
            settings: EngineSettings {
                model_version: cli.version,
                color_fix: cli.color_fix,
                seed: cli.seed,
                ..cli.engine.settings()
            },
            input: cli.input,
            output: cli.output,
            size: cli.width.zip(cli.height),
            max_frames: cli.frames,
            memory_report: cli.memory_report,
        }
    }
}

/// Reports progress on stderr each time frames come out.
fn progress(received: usize, written: usize) {
    eprintln!("frames in: {received}, out: {written}");
}

/// Refuses a frame size the engine could not hold (`Engine::check_size`) before
/// anything of that size is allocated; prints the estimate with `--memory-report`.
fn check_size<T>(args: &Args, engine: &Engine<T>, (w, h): (u32, u32)) -> Result<(), String> {
    let estimate = engine.check_size(w, h).map_err(|e| e.to_string())?;
    if args.memory_report {
        eprintln!(
            "memory estimate for {w}x{h} (padded output {}x{}): {} in all = weights {} + held {} + working {} ({})",
            estimate.padded_width,
            estimate.padded_height,
            human_bytes(estimate.total()),
            human_bytes(estimate.weights),
            human_bytes(estimate.held),
            human_bytes(estimate.working),
            estimate.peak_stage
        );
    }
    Ok(())
}

/// A `Key:` line of /proc/self/status in bytes (VmRSS, VmHWM).
fn status_bytes(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    memory::parse_meminfo(&text, key)
}

/// With `--memory-report`, once the weights are loaded: prints the resident memory
/// and resets the peak (VmHWM), so that the peak reported at the end is the
/// streaming's, not the loader's.
fn start_peak(args: &Args) {
    if !args.memory_report {
        return;
    }
    if let Some(bytes) = status_bytes("VmRSS:") {
        eprintln!("resident after loading (VmRSS): {}", human_bytes(bytes));
    }
    if let Err(e) = std::fs::write("/proc/self/clear_refs", "5") {
        eprintln!("could not reset the peak (/proc/self/clear_refs): {e}");
    }
}

/// With `--memory-report`: the peak resident memory since `start_peak`.
fn report_peak(args: &Args) {
    if !args.memory_report {
        return;
    }
    match status_bytes("VmHWM:") {
        Some(bytes) => eprintln!(
            "peak resident memory while streaming (VmHWM): {}",
            human_bytes(bytes)
        ),
        None => eprintln!("peak resident memory: /proc/self/status has no VmHWM"),
    }
}

fn upscale_raw(args: &Args, engine: &mut Engine<usize>, (w, h): (u32, u32)) -> Result<(), String> {
    check_size(args, engine, (w, h))?;
    start_peak(args);
    let frame_len = (w as usize)
        .checked_mul(h as usize)
        .and_then(|n| n.checked_mul(3))
        .ok_or_else(|| format!("{w}x{h} frames are too large"))?;
    let open = |p: &Path| File::open(p).map_err(|e| format!("{}: {e}", p.display()));
    let mut reader = BufReader::new(open(&args.input)?);
    let out_file =
        File::create(&args.output).map_err(|e| format!("{}: {e}", args.output.display()))?;
    let mut writer = BufWriter::new(out_file);
    let mut write = |ready: Vec<(RgbFrame, usize)>, written: &mut usize| -> Result<(), String> {
        for (frame, _) in ready {
            writer
                .write_all(&frame.data)
                .map_err(|e| format!("{}: {e}", args.output.display()))?;
            *written += 1;
        }
        Ok(())
    };
    let (mut received, mut written) = (0, 0);
    while args.max_frames.is_none_or(|n| received < n) {
        let mut data = try_filled(frame_len, 0u8, "an input frame").map_err(|e| e.to_string())?;
        let got = read_full(&mut reader, &mut data)
            .map_err(|e| format!("{}: {e}", args.input.display()))?;
        if got == 0 {
            break;
        }
        if got < frame_len {
            return Err(format!(
                "{}: ends with a partial frame ({got} of {frame_len} bytes)",
                args.input.display()
            ));
        }
        let ready = engine
            .push(
                RgbFrame {
                    width: w,
                    height: h,
                    data,
                },
                received,
            )
            .map_err(|e| e.to_string())?;
        received += 1;
        if !ready.is_empty() {
            write(ready, &mut written)?;
            progress(received, written);
        }
    }
    write(engine.finish().map_err(|e| e.to_string())?, &mut written)?;
    progress(received, written);
    report_peak(args);
    writer
        .flush()
        .map_err(|e| format!("{}: {e}", args.output.display()))
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

fn upscale_ppm_folder(args: &Args, engine: &mut Engine<PathBuf>) -> Result<(), String> {
    let in_dir = &args.input;
    let mut names: Vec<PathBuf> = std::fs::read_dir(in_dir)
        .map_err(|e| format!("{}: {e}", in_dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x.eq_ignore_ascii_case("ppm")))
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(format!("{}: no .ppm files", in_dir.display()));
    }
    names.truncate(args.max_frames.unwrap_or(usize::MAX));
    std::fs::create_dir_all(&args.output).map_err(|e| format!("{}: {e}", args.output.display()))?;
    let write = |ready: Vec<(RgbFrame, PathBuf)>, written: &mut usize| -> Result<(), String> {
        for (frame, source) in ready {
            let name = source.file_name().ok_or("input file without a name")?;
            ppm::write_ppm(&args.output.join(name), &frame)?;
            *written += 1;
        }
        Ok(())
    };
    let mut written = 0;
    for (received, path) in names.iter().enumerate() {
        let frame = ppm::read_ppm(path)?;
        if received == 0 {
            check_size(args, engine, (frame.width, frame.height))?;
            start_peak(args);
        }
        let ready = engine
            .push(frame, path.clone())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if !ready.is_empty() {
            write(ready, &mut written)?;
            progress(received + 1, written);
        }
    }
    write(engine.finish().map_err(|e| e.to_string())?, &mut written)?;
    progress(names.len(), written);
    report_peak(args);
    Ok(())
}

fn run() -> Result<(), String> {
    let args = Args::from(Cli::parse());
    if args.input.is_dir() {
        let mut engine = Engine::new(args.settings.clone()).map_err(|e| e.to_string())?;
        upscale_ppm_folder(&args, &mut engine)
    } else {
        let size = args
            .size
            .ok_or("a raw RGB24 input needs --width and --height")?;
        let mut engine = Engine::new(args.settings.clone()).map_err(|e| e.to_string())?;
        upscale_raw(&args, &mut engine, size)
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
