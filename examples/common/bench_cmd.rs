//! The body of the `bench` example, shared with `gpu_check` (its `bench`
//! subcommand); the example's own file documents its usage.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::cli;
use clap::Parser;
use gstflashvsr::devtools::replay;
use gstflashvsr::engine::{
    ChunkProfile, Engine, EngineSettings, KernelPath, Precision, RgbFrame, memory,
};
use gstflashvsr::model::profile::Stage;

/// Streams synthetic frames through the engine and prints per-chunk stage
/// timings, fps and how close the DiT and decoder come to their matrix products.
#[derive(Parser, Debug)]
pub struct Cli {
    #[command(flatten)]
    engine: cli::EngineArgs,

    #[command(flatten)]
    kernels: cli::KernelArgs,

    /// Width of the input frames
    #[arg(long, value_name = "W")]
    width: u32,

    /// Height of the input frames
    #[arg(long, value_name = "H")]
    height: u32,

    /// Number of frames to stream (at least 33 for a steady-state chunk)
    #[arg(long, value_name = "N", default_value_t = 41)]
    frames: usize,

    /// Skip replaying the DiT's matrix products and the decoder's convolutions
    /// (no efficiency figures)
    #[arg(long)]
    no_replays: bool,

    /// Side of the tiles, in output pixels (a multiple of 128); 0: whole frames
    /// unless the memory budget needs tiles
    #[arg(long, value_name = "T", default_value_t = EngineSettings::default().tile_size)]
    tile_size: u32,

    /// Output pixels neighbouring tiles overlap by (a multiple of 8)
    #[arg(long, value_name = "O", default_value_t = EngineSettings::default().tile_overlap)]
    tile_overlap: u32,

    /// Side of the decoder's tiles, in output pixels (a multiple of 128); 0:
    /// whole frames unless the memory budget needs decoder tiles
    #[arg(long, value_name = "D", default_value_t = EngineSettings::default().decoder_tile_size)]
    decoder_tile_size: u32,

    /// Memory budget of the stream in bytes; 0: the available memory
    #[arg(long, value_name = "BYTES", default_value_t = 0)]
    max_memory: u64,

    /// Memory budget of the stream as a share (0 to 1) of what whole frames
    /// are estimated to need on this model and device (replaces --max-memory):
    /// 0.4 measures the plan within 40 % of whole frames
    #[arg(long, value_name = "SHARE", conflicts_with = "max_memory")]
    memory_share: Option<f64>,
}

/// A `Key:` line of /proc/self/status in MiB (VmHWM, VmRSS).
fn status_mib(key: &str) -> Option<f64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    memory::parse_meminfo(&text, key).map(|b| b as f64 / (1024.0 * 1024.0))
}

/// A moving colour pattern, so that every frame differs.
fn synthetic_frame(w: u32, h: u32, i: usize) -> RgbFrame {
    let mut data = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h as usize {
        for x in 0..w as usize {
            data.push(((x * 3 + i * 5) % 256) as u8);
            data.push(((y * 2 + i * 3) % 256) as u8);
            data.push((((x + y) / 2 + i * 7) % 256) as u8);
        }
    }
    RgbFrame {
        width: w,
        height: h,
        data,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs the example on parsed arguments (also `gpu_check`'s subcommand).
pub fn run(args: Cli) -> ExitCode {
    let settings = EngineSettings {
        kernels: args.kernels.path(),
        attention: args.kernels.attention,
        tile_size: args.tile_size,
        tile_overlap: args.tile_overlap,
        decoder_tile_size: args.decoder_tile_size,
        max_memory: (args.max_memory > 0).then_some(args.max_memory),
        ..args.engine.settings()
    };
    let mut engine = match Engine::<usize>::new(settings.clone()) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(share) = args.memory_share {
        if !(share > 0.0 && share <= 1.0) {
            eprintln!("error: --memory-share must be in (0, 1], got {share}");
            return ExitCode::FAILURE;
        }
        let whole = match engine.memory_estimate(args.width, args.height) {
            Ok(e) => e.stream(),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        let budget = (whole as f64 * share) as u64;
        println!(
            "memory budget: {} ({:.0} % of the {} whole frames are estimated to need)",
            memory::human_bytes(budget),
            share * 100.0,
            memory::human_bytes(whole)
        );
        let budgeted = EngineSettings {
            max_memory: Some(budget),
            ..settings.clone()
        };
        if let Err(e) = engine.reconfigure(budgeted) {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    }
    engine.set_profiling(true);
    let (out_w, out_h) = (args.width * settings.scale, args.height * settings.scale);
    println!(
        "input {}x{} -> output {out_w}x{out_h}, {} frames, precision {}, sparse_ratio {}, local_range {}, kv_ratio {}",
        args.width,
        args.height,
        args.frames,
        settings.precision,
        settings.sparse_ratio,
        settings.local_range,
        settings.kv_ratio
    );
    let choice = engine.kernel_choice();
    // bf16 products keep the activations in f32, and with them the CPU path
    let cpu_fast = settings.kernels == KernelPath::Fast
        && settings.device == "cpu"
        && (settings.precision == Precision::F32
            || engine.cpu_products() == gstflashvsr::layers::products::CpuProducts::Bf16);
    let attention = if cpu_fast {
        "CPU fast path (kept blocks read in place)".to_owned()
    } else {
        choice.kernels.to_string()
    };
    println!("attention: {attention} (setting {})", settings.attention);
    println!("cpu products: {:?}", engine.cpu_products());
    if engine.device().is_cpu() {
        // what each stage runs on this processor
        let cpu = gstflashvsr::layers::CpuFeatures::detect();
        println!("cpu: {}", cpu.summary());
        for (stage, runs_on) in cpu.stages(settings.kernels, settings.precision.dtype()) {
            println!("cpu stage {stage}: {runs_on}");
        }
    }
    for note in &choice.notes {
        println!("warning: {note}");
    }
    match engine.plan(args.width, args.height) {
        Ok(plan) => println!("tile plan: {plan}"),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    }
    let peak_after_loading = status_mib("VmHWM:");
    // On a GPU: the tensors' memory once the weights are in, and the stream's peak.
    let device_after_loading = memory::device_pool_usage(engine.device());
    memory::reset_device_peak(engine.device());
    // The streaming's own peak: reset the high-water mark once the weights are in.
    let peak_reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let start = Instant::now();
    let mut produced = 0usize;
    let mut profiles: Vec<ChunkProfile> = Vec::new();
    for i in 0..args.frames {
        let frame = synthetic_frame(args.width, args.height, i);
        match engine.push(frame, i) {
            Ok(out) => produced += out.len(),
            Err(e) => {
                eprintln!("error at frame {i}: {e}");
                return ExitCode::FAILURE;
            }
        }
        profiles.extend(engine.take_profiles());
    }
    match engine.finish() {
        Ok(out) => produced += out.len(),
        Err(e) => {
            eprintln!("error at end of stream: {e}");
            return ExitCode::FAILURE;
        }
    }
    profiles.extend(engine.take_profiles());
    let wall = start.elapsed();
    if produced != args.frames {
        eprintln!("error: {produced} frames out for {} in", args.frames);
        return ExitCode::FAILURE;
    }

    print!("chunk frames");
    for s in Stage::ALL {
        print!(" {}_ms", s.name());
    }
    println!(" total_ms");
    let mut dit_time = Duration::ZERO;
    let mut matmul_time = Duration::ZERO;
    let mut matmul_flops = 0.0;
    let (mut conv_time, mut conv_matmul_time) = (Duration::ZERO, Duration::ZERO);
    let (mut steady_frames, mut steady_time) = (0usize, Duration::ZERO);
    for p in &profiles {
        print!("{:>5} {:>6}", p.chunk, p.frames);
        for s in Stage::ALL {
            print!(" {:>10.1}", ms(p.times.get(s)));
        }
        println!(" {:>9.1}", ms(p.total));
        // Steady state: chunks after the first.
        if p.chunk > 0 {
            steady_frames += p.frames;
            steady_time += p.total;
            if args.no_replays {
                continue;
            }
            dit_time += p.times.get(Stage::Dit);
            match replay::replay_matmuls(&p.dit_matmuls, engine.device()) {
                Ok(t) => matmul_time += t,
                Err(e) => {
                    eprintln!("error replaying the DiT's matmuls: {e}");
                    return ExitCode::FAILURE;
                }
            }
            matmul_flops += p.dit_matmuls.iter().map(|m| m.flops()).sum::<f64>();
            match replay::replay_convs(&p.decoder_convs, engine.device()) {
                Ok((c, m)) => {
                    conv_time += c;
                    conv_matmul_time += m;
                }
                Err(e) => {
                    eprintln!("error replaying the decoder's convolutions: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    println!("fps={:.4}", produced as f64 / wall.as_secs_f64());
    if steady_time > Duration::ZERO {
        println!(
            "steady_fps={:.4}",
            steady_frames as f64 / steady_time.as_secs_f64()
        );
    } else {
        println!("steady_fps=n/a (fewer than two chunks: give at least 33 frames)");
    }
    if args.no_replays {
        println!("efficiency replays skipped (--no-replays)");
    } else if dit_time > Duration::ZERO {
        println!(
            "dit_matmul_gflops={:.1}",
            matmul_flops / matmul_time.as_secs_f64() / 1e9
        );
        println!(
            "dit_efficiency={:.3}",
            matmul_time.as_secs_f64() / dit_time.as_secs_f64()
        );
        // The decoder's convolutions against matrix products of the same arithmetic.
        println!(
            "decoder_conv_efficiency={:.3}",
            conv_matmul_time.as_secs_f64() / conv_time.as_secs_f64()
        );
    } else {
        println!("dit_efficiency=n/a (fewer than two chunks: give at least 33 frames)");
    }
    match status_mib("VmHWM:") {
        Some(peak) => {
            let overall = peak_after_loading.map_or(peak, |p| p.max(peak));
            println!("peak_rss_mib={overall:.0}");
            if peak_reset {
                println!("stream_peak_rss_mib={peak:.0}");
            }
        }
        None => println!("peak_rss_mib=n/a (no VmHWM in /proc/self/status)"),
    }
    println!("large_blocks {}", gstflashvsr::allocator_stats());
    if let (Some(loaded), Some(now)) = (
        device_after_loading,
        memory::device_pool_usage(engine.device()),
    ) {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        println!("device_weights_mib={:.0}", mib(loaded.current));
        println!("device_peak_mib={:.0}", mib(now.peak.max(loaded.peak)));
        println!(
            "device_stream_peak_mib={:.0}",
            mib(now.peak.saturating_sub(loaded.current))
        );
    }
    ExitCode::SUCCESS
}
