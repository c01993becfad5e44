//! Upscales frames with the engine, without GStreamer (for debugging).
//!
//! Raw RGB24 file:   upscale_frames --model-dir DIR --input in.rgb --output out.rgb
//!                       --width W --height H [--frames N] [settings]
//! PPM (P6) folder:  upscale_frames --model-dir DIR --input frames/ --output out/
//!                       [--frames N] [settings]
//! Settings: --scale S --version v1|v1.1 --precision f32|bf16|f16 --device cpu|cuda:N
//!           --color-fix none|adain|wavelet --sparse-ratio R --kv-ratio R
//!           --local-range L --seed S

mod ppm;

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use gstflashvsr::engine::{Engine, EngineSettings, RgbFrame};

const USAGE: &str = "usage:
  upscale_frames --model-dir DIR --input in.rgb --output out.rgb --width W --height H [--frames N] [settings]
  upscale_frames --model-dir DIR --input ppm_folder/ --output out_folder/ [--frames N] [settings]
settings: --scale 2|3|4 --version v1|v1.1 --precision f32|bf16|f16 --device cpu|cuda:N
          --color-fix none|adain|wavelet --sparse-ratio R --kv-ratio R --local-range L --seed S";

struct Args {
    settings: EngineSettings,
    input: PathBuf,
    output: PathBuf,
    size: Option<(u32, u32)>,
    max_frames: Option<usize>,
}

/// `None` when help was asked for.
fn parse_args(mut argv: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut settings = EngineSettings::default();
    let (mut input, mut output, mut width, mut height, mut max_frames) =
        (None, None, None, None, None);
    while let Some(flag) = argv.next() {
        if flag == "--help" || flag == "-h" {
            println!("{USAGE}");
            return Ok(None);
        }
        let value = argv.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = |what: &str| -> Result<u64, String> {
            value
                .parse()
                .map_err(|_| format!("{what}: {value:?} is not a number"))
        };
        let real = |what: &str| -> Result<f64, String> {
            value
                .parse()
                .map_err(|_| format!("{what}: {value:?} is not a number"))
        };
        match flag.as_str() {
            "--model-dir" => settings.model_dir = PathBuf::from(&value),
            "--input" => input = Some(PathBuf::from(&value)),
            "--output" => output = Some(PathBuf::from(&value)),
            "--width" => width = Some(number("--width")? as u32),
            "--height" => height = Some(number("--height")? as u32),
            "--frames" => max_frames = Some(number("--frames")? as usize),
            "--scale" => settings.scale = number("--scale")? as u32,
            "--version" => settings.model_version = value.parse().map_err(|e| format!("{e}"))?,
            "--precision" => settings.precision = value.parse().map_err(|e| format!("{e}"))?,
            "--device" => settings.device = value,
            "--color-fix" => {
                settings.color_fix = value
                    .parse()
                    .map_err(|e: gstflashvsr::engine::EngineError| e.to_string())?
            }
            "--sparse-ratio" => settings.sparse_ratio = real("--sparse-ratio")?,
            "--kv-ratio" => settings.kv_ratio = real("--kv-ratio")?,
            "--local-range" => settings.local_range = number("--local-range")? as u32,
            "--seed" => settings.seed = number("--seed")?,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    let size = match (width, height) {
        (Some(w), Some(h)) => Some((w, h)),
        (None, None) => None,
        _ => return Err("--width and --height go together".into()),
    };
    Ok(Some(Args {
        settings,
        input: input.ok_or("--input is required (see --help)")?,
        output: output.ok_or("--output is required (see --help)")?,
        size,
        max_frames,
    }))
}

/// Reports progress on stderr each time frames come out.
fn progress(received: usize, written: usize) {
    eprintln!("frames in: {received}, out: {written}");
}

fn upscale_raw(args: &Args, engine: &mut Engine<usize>, (w, h): (u32, u32)) -> Result<(), String> {
    let frame_len = w as usize * h as usize * 3;
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
        let mut data = vec![0u8; frame_len];
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
    Ok(())
}

fn run() -> Result<(), String> {
    let Some(args) = parse_args(std::env::args().skip(1))? else {
        return Ok(());
    };
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
