//! flashvsr-upscale: files through the flashvsr element (registered
//! statically: no GST_PLUGIN_PATH needed), whole or as segment jobs over many
//! GPUs and machines (docs/segments.md).
//!
//! ```text
//! flashvsr-upscale IN OUT [--set PROPERTY=VALUE]... [--encoder DESCRIPTION]
//! flashvsr-upscale plan IN --work DIR (--segments N | --segment-frames F) [--warmup W] [--set ...] [--encoder ...]
//! flashvsr-upscale run DIR [--index I] [--device D]
//! flashvsr-upscale run DIR --all [--devices cpu|cuda:0,cuda:1,...]
//! flashvsr-upscale join DIR OUT
//! flashvsr-upscale status DIR
//! ```

mod pipeline;
mod plan;
mod probe;
mod progress;
mod records;
mod settings;

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use clap::{Parser, Subcommand};
use gst::prelude::*;

use pipeline::{DEFAULT_ENCODER, Transcode, Window};
use plan::{DEFAULT_WARMUP, Plan, Segment, Split};
use progress::Progress;
use records::SegmentState;

/// Upscales video files with FlashVSR: a whole file in one process, or a long
/// one as segment jobs that resume, on one machine's GPUs or a cluster's.
#[derive(Parser, Debug)]
#[command(
    name = "flashvsr-upscale",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// The video file to upscale
    #[arg(value_name = "IN", required = true)]
    input: Option<PathBuf>,

    /// The file to write (.mp4, .m4v, .mov or .mkv)
    #[arg(value_name = "OUT", required = true)]
    output: Option<PathBuf>,

    #[command(flatten)]
    element: ElementArgs,
}

/// How the element and the encoder are set up.
#[derive(clap::Args, Debug, Clone)]
struct ElementArgs {
    /// A property of the flashvsr element, e.g. --set model-dir=/models/FlashVSR-v1.1
    /// --set scale=4 --set device=cuda:0 --set precision=bf16 (repeatable; see
    /// `gst-inspect-1.0 flashvsr`)
    #[arg(long = "set", value_name = "PROPERTY=VALUE")]
    set: Vec<String>,

    /// The video encoder, as a gst-launch description
    #[arg(long, value_name = "DESCRIPTION", default_value = DEFAULT_ENCODER)]
    encoder: String,
}

impl ElementArgs {
    /// The `--set` pairs, with model-dir from $FLASHVSR_MODEL_DIR when not set.
    fn settings(&self) -> Result<Vec<(String, String)>, String> {
        let mut pairs = self
            .set
            .iter()
            .map(|s| settings::parse(s))
            .collect::<Result<Vec<_>, _>>()?;
        if !pairs.iter().any(|(k, _)| k == "model-dir")
            && let Ok(dir) = std::env::var("FLASHVSR_MODEL_DIR")
        {
            pairs.insert(0, ("model-dir".into(), dir));
        }
        Ok(pairs)
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Probes IN and writes DIR/plan.json: the segments and the settings
    Plan {
        #[arg(value_name = "IN")]
        input: PathBuf,
        /// The work folder (shared by every worker)
        #[arg(long, value_name = "DIR")]
        work: PathBuf,
        /// Number of segments
        #[arg(
            long,
            value_name = "N",
            conflicts_with = "segment_frames",
            required_unless_present = "segment_frames"
        )]
        segments: Option<usize>,
        /// Frames per segment
        #[arg(long, value_name = "F")]
        segment_frames: Option<usize>,
        /// Frames rendered before each segment's first and dropped
        #[arg(long, value_name = "W", default_value_t = DEFAULT_WARMUP)]
        warmup: usize,
        #[command(flatten)]
        element: ElementArgs,
    },
    /// Renders one segment (or --all unfinished ones) of a plan
    Run {
        #[arg(value_name = "DIR")]
        work: PathBuf,
        /// The segment; default $JOB_COMPLETION_INDEX, then $SLURM_ARRAY_TASK_ID
        #[arg(long, value_name = "I", conflicts_with = "all")]
        index: Option<usize>,
        /// The device for this worker (the one setting a run may change)
        #[arg(long, value_name = "D", conflicts_with = "all")]
        device: Option<String>,
        /// Every unfinished segment, one at a time per device
        #[arg(long)]
        all: bool,
        /// Devices for --all, comma-separated (default: the plan's)
        #[arg(long, value_name = "LIST", value_delimiter = ',', requires = "all")]
        devices: Vec<String>,
    },
    /// Checks every segment and writes them as one file with the source's audio
    Join {
        #[arg(value_name = "DIR")]
        work: PathBuf,
        #[arg(value_name = "OUT")]
        output: PathBuf,
    },
    /// Prints done / running / pending per segment
    Status {
        #[arg(value_name = "DIR")]
        work: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(err) = gst::init() {
        eprintln!("error: GStreamer could not start: {err}");
        return ExitCode::FAILURE;
    }
    if let Err(err) = gstflashvsr::plugin_register_static() {
        eprintln!("error: registering the flashvsr plugin: {err}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        None => match (cli.input, cli.output) {
            (Some(input), Some(output)) => upscale(&input, &output, &cli.element),
            _ => Err("give IN and OUT, or a command (see --help)".into()),
        },
        Some(Command::Plan {
            input,
            work,
            segments,
            segment_frames,
            warmup,
            element,
        }) => {
            let split = match (segments, segment_frames) {
                (Some(n), _) => Split::Segments(n),
                (None, Some(f)) => Split::Frames(f),
                (None, None) => unreachable!("clap requires one"),
            };
            make_plan(&input, &work, split, warmup, &element)
        }
        Some(Command::Run {
            work,
            index,
            device,
            all,
            devices,
        }) => {
            if all {
                run_all(&work, &devices)
            } else {
                run_one(&work, index, device.as_deref())
            }
        }
        Some(Command::Join { work, output }) => join(&work, &output),
        Some(Command::Status { work }) => status(&work),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a transcode to its end, with a progress bar over `total` frames;
/// returns what it wrote.
fn run_transcode(
    transcode: &Transcode,
    label: &str,
    total: u64,
) -> Result<Arc<pipeline::Counts>, String> {
    let (pipeline, counts) = transcode.build()?;
    let mut progress = Progress::new(label, total);
    let mut tick = || progress.update(counts.frames.load(Ordering::Relaxed));
    let result = pipeline::run_to_end(&pipeline, Some(&mut tick));
    let _ = pipeline.set_state(gst::State::Null);
    result?;
    progress.finish(counts.frames.load(Ordering::Relaxed));
    Ok(counts)
}

/// The whole file in one process, audio and subtitles kept.
fn upscale(input: &Path, output: &Path, element: &ElementArgs) -> Result<(), String> {
    let settings = element.settings()?;
    check_settings(&settings)?;
    let probe = probe::probe(input)?;
    pipeline::check_output(output)?;
    let transcode = Transcode {
        input,
        output: output.to_path_buf(),
        settings: &settings,
        encoder: &element.encoder,
        window: None,
        keep_other_streams: true,
        probe: &probe,
    };
    let frames = run_transcode(&transcode, "upscaling", probe.frames() as u64)?
        .frames
        .load(Ordering::Relaxed);
    if frames != probe.frames() as u64 {
        return Err(format!(
            "{} frames were written for the input's {}",
            frames,
            probe.frames()
        ));
    }
    println!("done: wrote {} ({frames} frames)", output.display());
    Ok(())
}

/// The settings are valid for the element (name, type, range) before any work.
fn check_settings(settings: &[(String, String)]) -> Result<(), String> {
    let element = pipeline::make("flashvsr")?;
    settings::apply(&element, settings)
}

fn make_plan(
    input: &Path,
    work: &Path,
    split: Split,
    warmup: usize,
    element: &ElementArgs,
) -> Result<(), String> {
    let settings = element.settings()?;
    check_settings(&settings)?;
    gst::parse::bin_from_description(&element.encoder, true)
        .map_err(|e| format!("--encoder {:?}: {e}", element.encoder))?;
    let probe = probe::probe(input)?;
    let segments = plan::segments(probe.frames(), split, warmup)?;
    let input = std::fs::canonicalize(input).unwrap_or_else(|_| input.to_path_buf());
    let plan = Plan {
        input,
        settings,
        encoder: element.encoder.clone(),
        warmup,
        probe,
        segments,
    };
    plan.write(work)?;
    println!(
        "plan: {} frames at {}/{} fps, {} segments, warm-up {} frames; {} keyframes",
        plan.probe.frames(),
        plan.probe.fps.0,
        plan.probe.fps.1,
        plan.segments.len(),
        warmup,
        plan.probe.keyframes.len()
    );
    for s in &plan.segments {
        println!(
            "segment {}: owns frames [{}, {}), renders from {}",
            s.index, s.start, s.end, s.render_from
        );
    }
    println!(
        "work: {:.3} frames rendered per frame owned (the warm-ups add {:.1} %)",
        plan.work_ratio(),
        (plan.work_ratio() - 1.0) * 100.0
    );
    println!("wrote {}", Plan::path(work).display());
    Ok(())
}

/// The segment index of this worker: --index, else the job system's.
fn worker_index(index: Option<usize>, segments: usize) -> Result<usize, String> {
    let (index, from) = match index {
        Some(i) => (i, "--index".to_owned()),
        None => {
            let (name, value) = ["JOB_COMPLETION_INDEX", "SLURM_ARRAY_TASK_ID"]
                .iter()
                .find_map(|name| std::env::var(name).ok().map(|v| (*name, v)))
                .ok_or(
                    "no segment index: give --index, or run as a Kubernetes Indexed Job \
                     ($JOB_COMPLETION_INDEX) or a Slurm array task ($SLURM_ARRAY_TASK_ID)",
                )?;
            let index = value
                .trim()
                .parse()
                .map_err(|_| format!("${name}={value:?} is not a segment index"))?;
            (index, format!("${name}"))
        }
    };
    if index >= segments {
        return Err(format!(
            "{from} = {index}, but the plan has {segments} segments (0 to {})",
            segments - 1
        ));
    }
    Ok(index)
}

fn run_one(work: &Path, index: Option<usize>, device: Option<&str>) -> Result<(), String> {
    let plan = Plan::read(work)?;
    let index = worker_index(index, plan.segments.len())?;
    let settings = settings::with_device(&plan.settings, device);
    render(work, &plan, &plan.segments[index], &settings)
}

/// Renders `segment` unless it is finished: its frames to a temporary file,
/// renamed when complete, then its record.
fn render(
    work: &Path,
    plan: &Plan,
    segment: &Segment,
    settings: &[(String, String)],
) -> Result<(), String> {
    if let SegmentState::Done(record) = records::state(work, segment) {
        println!(
            "segment {}: already finished ({} frames), skipped",
            segment.index, record.frames
        );
        return Ok(());
    }
    let partial = records::partial_file(work, segment.index);
    // the whole file's noise for the segment's frames
    let base_offset = settings::value(settings, "noise-offset")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let mut settings = settings.to_vec();
    settings.push((
        "noise-offset".into(),
        (base_offset + segment.noise_offset()).to_string(),
    ));
    let settings = settings.as_slice();
    let window = Window {
        seek: plan.seek_pts(segment),
        render_from: plan.pts(segment.render_from),
        start: plan.pts(segment.start),
        end: plan.pts(segment.end),
        partial: segment.render_from > 0 || segment.end < plan.probe.frames(),
    };
    let transcode = Transcode {
        input: &plan.input,
        output: partial.clone(),
        settings,
        encoder: &plan.encoder,
        window: Some(window),
        keep_other_streams: false,
        probe: &plan.probe,
    };
    let counts = run_transcode(
        &transcode,
        &format!("segment {}", segment.index),
        segment.owned() as u64,
    )
    .map_err(|e| format!("segment {}: {e}", segment.index))?;
    let frames = counts.frames.load(Ordering::Relaxed);
    let span = *counts.first_last.lock();
    let want = (
        segment.owned() as u64,
        Some((plan.pts(segment.start), plan.pts(segment.end - 1))),
    );
    if (frames, span) != want {
        return Err(format!(
            "segment {}: rendered {frames} frames spanning {span:?} ns, the plan wants {} \
             spanning {:?}",
            segment.index, want.0, want.1
        ));
    }
    let file = records::segment_file(work, segment.index);
    std::fs::rename(&partial, &file).map_err(|e| {
        format!(
            "cannot rename {} to {}: {e}",
            partial.display(),
            file.display()
        )
    })?;
    let (bytes, checksum) = records::checksum(&file)?;
    let record = records::Record {
        frames,
        first_pts: want.1.map_or(0, |s| s.0),
        last_pts: want.1.map_or(0, |s| s.1),
        bytes,
        checksum,
    };
    let text = serde_json::to_string_pretty(&record.to_json()).map_err(|e| e.to_string())?;
    records::write_atomically(&records::record_file(work, segment.index), text.as_bytes())?;
    println!(
        "segment {}: done, {frames} frames in {}",
        segment.index,
        file.display()
    );
    Ok(())
}

/// Every unfinished segment on this machine: one worker thread per device,
/// each taking the next segment when it is done with one; each device's
/// weights are loaded once (an element holding them stays started while its
/// worker runs, and the segments' elements share its model).
fn run_all(work: &Path, devices: &[String]) -> Result<(), String> {
    let plan = Arc::new(Plan::read(work)?);
    let plan_device = settings::value(&plan.settings, "device")
        .unwrap_or("cpu")
        .to_owned();
    let devices: Vec<String> = if devices.is_empty() {
        vec![plan_device]
    } else {
        devices.to_vec()
    };
    let pending: VecDeque<usize> = plan
        .segments
        .iter()
        .filter(|s| !matches!(records::state(work, s), SegmentState::Done(_)))
        .map(|s| s.index)
        .collect();
    println!(
        "{} of {} segments to render on {}",
        pending.len(),
        plan.segments.len(),
        devices.join(", ")
    );
    let queue = Arc::new(Mutex::new(pending));
    let errors = Arc::new(Mutex::new(Vec::new()));
    std::thread::scope(|scope| {
        for device in &devices {
            let (plan, queue, errors) = (plan.clone(), queue.clone(), errors.clone());
            scope.spawn(move || {
                let settings = settings::with_device(&plan.settings, Some(device));
                let holder = match hold_weights(&settings) {
                    Ok(h) => h,
                    Err(e) => {
                        errors.lock().push(format!("{device}: {e}"));
                        return;
                    }
                };
                loop {
                    let Some(index) = queue.lock().pop_front() else {
                        break;
                    };
                    if let Err(e) = render(work, &plan, &plan.segments[index], &settings) {
                        errors.lock().push(format!("{device}: {e}"));
                    }
                }
                let _ = holder.set_state(gst::State::Null);
            });
        }
    });
    let errors = errors.lock();
    if errors.is_empty() {
        println!("every segment is finished: join them with 'flashvsr-upscale join'");
        Ok(())
    } else {
        Err(errors.join("\n"))
    }
}

/// A flashvsr element with `settings`, started (READY->PAUSED loads the
/// weights); while it is, elements with the same settings share its model.
fn hold_weights(settings: &[(String, String)]) -> Result<gst::Element, String> {
    let element = pipeline::make("flashvsr")?;
    settings::apply(&element, settings)?;
    match element.set_state(gst::State::Paused) {
        Ok(_) => Ok(element),
        Err(_) => {
            let message = element
                .bus()
                .and_then(|bus| bus.pop_filtered(&[gst::MessageType::Error]))
                .and_then(|msg| match msg.view() {
                    gst::MessageView::Error(e) => Some(pipeline::describe_error(e)),
                    _ => None,
                });
            let _ = element.set_state(gst::State::Null);
            Err(message.unwrap_or_else(|| "the flashvsr element could not start".into()))
        }
    }
}

fn join(work: &Path, output: &Path) -> Result<(), String> {
    let plan = Plan::read(work)?;
    let mut files = Vec::with_capacity(plan.segments.len());
    for segment in &plan.segments {
        records::verify(work, &plan, segment)?;
        files.push(records::segment_file(work, segment.index));
    }
    pipeline::check_output(output)?;
    pipeline::join(&plan.input, &plan.probe, &files, output)?;
    let written = probe::probe(output)?;
    if written.frames() != plan.probe.frames() {
        return Err(format!(
            "{} holds {} frames, the input {}",
            output.display(),
            written.frames(),
            plan.probe.frames()
        ));
    }
    println!(
        "done: wrote {} ({} frames from {} segments)",
        output.display(),
        written.frames(),
        files.len()
    );
    Ok(())
}

fn status(work: &Path) -> Result<(), String> {
    let plan = Plan::read(work)?;
    let (mut done, mut running, mut pending) = (0, 0, 0);
    for segment in &plan.segments {
        let what = match records::state(work, segment) {
            SegmentState::Done(r) => {
                done += 1;
                format!("done ({} frames)", r.frames)
            }
            SegmentState::Running => {
                running += 1;
                "running (or stopped part-way: run it again)".to_owned()
            }
            SegmentState::Pending => {
                pending += 1;
                "pending".to_owned()
            }
        };
        println!(
            "segment {}: frames [{}, {}): {what}",
            segment.index, segment.start, segment.end
        );
    }
    println!("{done} done, {running} running, {pending} pending");
    Ok(())
}
