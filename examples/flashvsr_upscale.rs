//! An application that embeds the `flashvsr` element: registers the plugin statically
//! (no GST_PLUGIN_PATH needed), upscales a file to MP4, prints progress every second
//! and exits with status 1 on any error the pipeline reports.
//!
//! ```text
//! cargo run --release --example flashvsr_upscale -- \
//!     --model-dir /path/to/FlashVSR-v1.1 [--model-version v1-1] [--scale 4] \
//!     [--device cpu|cuda:N] [--precision f32|bf16|f16] IN.mp4 OUT.mp4
//! ```
//!
//! `--model-dir` defaults to `$FLASHVSR_MODEL_DIR`; the other options left out keep
//! the element's defaults.
//!
//! The video is decoded, upscaled and encoded with x264; an audio track, when the input
//! has one, is decoded and re-encoded to AAC.

#[path = "common/cli.rs"]
mod cli;

use std::process::ExitCode;

use clap::Parser;
use gst::prelude::*;
use gstflashvsr::engine::ModelVersion;

/// Upscales a video file to MP4 with the flashvsr element (registered
/// statically), printing progress every second.
#[derive(Parser, Debug)]
struct Options {
    /// Folder with the FlashVSR weight files [default: $FLASHVSR_MODEL_DIR]
    #[arg(long, value_name = "DIR")]
    model_dir: Option<String>,

    /// Release of the weights in the model folder [default: v1.1]
    #[arg(long, value_name = "v1|v1-1")]
    model_version: Option<ModelVersion>,

    /// Upscaling factor: 2, 3 or 4 [default: 4]
    #[arg(long, value_name = "S")]
    scale: Option<u32>,

    #[command(flatten)]
    compute: cli::ComputeArgs,

    /// The video file to upscale
    #[arg(value_name = "IN")]
    input: String,

    /// The MP4 file to write
    #[arg(value_name = "OUT.mp4")]
    output: String,
}

/// Sets the element's properties from the options; unset options keep the
/// element's defaults.
fn configure(element: &gst::Element, options: &Options) -> Result<(), String> {
    if let Some(dir) = &options.model_dir {
        element.set_property("model-dir", dir);
    }
    if let Some(version) = options.model_version {
        element.set_property("model-version", version);
    }
    if let Some(scale) = options.scale {
        set_scale(element, scale)?;
    }
    element.set_property("device", options.compute.device.to_string());
    element.set_property("precision", options.compute.precision);
    Ok(())
}

/// Sets `scale`, refusing values outside the range the property accepts.
fn set_scale(element: &gst::Element, scale: u32) -> Result<(), String> {
    let pspec = element
        .find_property("scale")
        .and_then(|p| p.downcast::<gst::glib::ParamSpecUInt>().ok())
        .ok_or("flashvsr has no unsigned integer property scale")?;
    if !(pspec.minimum()..=pspec.maximum()).contains(&scale) {
        return Err(format!(
            "--scale: {scale} is out of range ({})",
            pspec.blurb().unwrap_or_default()
        ));
    }
    element.set_property("scale", scale);
    Ok(())
}

fn make(factory: &str) -> Result<gst::Element, String> {
    gst::ElementFactory::make(factory).build().map_err(|_| {
        format!("GStreamer element {factory} is missing: install the plugin that provides it")
    })
}

/// filesrc ! decodebin, then per decoded stream:
/// video: queue ! flashvsr ! queue ! x264enc ! mp4mux ! filesink
/// audio: queue ! audioconvert ! audioresample ! avenc_aac ! mp4mux
fn build_pipeline(options: &Options) -> Result<gst::Pipeline, String> {
    let pipeline = gst::Pipeline::new();
    let src = make("filesrc")?;
    src.set_property("location", &options.input);
    let decode = make("decodebin")?;
    let upscale = make("flashvsr")?;
    configure(&upscale, options)?;
    let video_queue = make("queue")?;
    let encode_queue = make("queue")?;
    let encode = make("x264enc")?;
    let mux = make("mp4mux")?;
    let sink = make("filesink")?;
    sink.set_property("location", &options.output);

    pipeline
        .add_many([
            &src,
            &decode,
            &video_queue,
            &upscale,
            &encode_queue,
            &encode,
            &mux,
            &sink,
        ])
        .map_err(|e| e.to_string())?;
    src.link(&decode).map_err(|e| e.to_string())?;
    gst::Element::link_many([&video_queue, &upscale, &encode_queue, &encode, &mux, &sink])
        .map_err(|e| e.to_string())?;

    let queue_sink = video_queue
        .static_pad("sink")
        .ok_or("queue without sink pad")?;
    let pipeline_weak = pipeline.downgrade();
    decode.connect_no_more_pads(move |_| {
        let Some(pipeline) = pipeline_weak.upgrade() else {
            return;
        };
        if !queue_sink.is_linked() {
            gst::element_error!(
                pipeline,
                gst::StreamError::WrongType,
                ("The input has no video stream to upscale")
            );
        }
    });

    let pipeline_weak = pipeline.downgrade();
    decode.connect_pad_added(move |_, pad| {
        let Some(pipeline) = pipeline_weak.upgrade() else {
            return;
        };
        let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
        let Some(media) = caps.structure(0).map(|s| s.name().to_string()) else {
            return;
        };
        let linked = if media.starts_with("video/") {
            link_video(pad, &video_queue)
        } else if media.starts_with("audio/") {
            link_audio(&pipeline, pad, &mux)
        } else {
            Ok(())
        };
        if let Err(err) = linked {
            gst::element_error!(pipeline, gst::CoreError::Negotiation, ("{}", err));
        }
    });
    Ok(pipeline)
}

fn link_video(pad: &gst::Pad, video_queue: &gst::Element) -> Result<(), String> {
    let sink = video_queue
        .static_pad("sink")
        .ok_or("queue without sink pad")?;
    if sink.is_linked() {
        eprintln!("warning: the input has more than one video stream; upscaling the first");
        return Ok(());
    }
    pad.link(&sink)
        .map(|_| ())
        .map_err(|e| format!("cannot feed the decoded video to flashvsr: {e:?}"))
}

fn link_audio(pipeline: &gst::Pipeline, pad: &gst::Pad, mux: &gst::Element) -> Result<(), String> {
    // Unbounded: the muxer takes audio only as fast as the (slow) video arrives.
    let queue = make("queue")?;
    for property in ["max-size-buffers", "max-size-bytes"] {
        queue.set_property(property, 0u32);
    }
    queue.set_property("max-size-time", 0u64);
    let elements = [
        queue,
        make("audioconvert")?,
        make("audioresample")?,
        make("avenc_aac")?,
    ];
    pipeline.add_many(&elements).map_err(|e| e.to_string())?;
    gst::Element::link_many(&elements).map_err(|e| e.to_string())?;
    elements[3].link(mux).map_err(|e| e.to_string())?;
    for element in &elements {
        element
            .sync_state_with_parent()
            .map_err(|e| e.to_string())?;
    }
    let sink = elements[0]
        .static_pad("sink")
        .ok_or("queue without sink pad")?;
    pad.link(&sink)
        .map(|_| ())
        .map_err(|e| format!("cannot link the audio: {e:?}"))
}

/// Runs until EOS or an error, printing progress every second.
fn run(pipeline: &gst::Pipeline) -> Result<(), String> {
    let bus = pipeline.bus().ok_or("pipeline without bus")?;
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|_| bus_error(&bus).unwrap_or_else(|| "the pipeline could not start".into()))?;
    loop {
        match bus.timed_pop(gst::ClockTime::SECOND) {
            Some(msg) => match msg.view() {
                gst::MessageView::Eos(_) => return Ok(()),
                gst::MessageView::Error(err) => return Err(describe_error(err)),
                gst::MessageView::Warning(w) => eprintln!("warning: {}", w.error()),
                gst::MessageView::Latency(_) => {
                    let _ = pipeline.recalculate_latency();
                }
                _ => {}
            },
            None => print_progress(pipeline),
        }
    }
}

fn print_progress(pipeline: &gst::Pipeline) {
    let position = pipeline.query_position::<gst::ClockTime>();
    let duration = pipeline.query_duration::<gst::ClockTime>();
    match (position, duration) {
        (Some(pos), Some(dur)) if dur > gst::ClockTime::ZERO => println!(
            "progress: {:.1} s / {:.1} s ({:.0} %)",
            pos.seconds_f64(),
            dur.seconds_f64(),
            100.0 * pos.seconds_f64() / dur.seconds_f64()
        ),
        (Some(pos), _) => println!("progress: {:.1} s", pos.seconds_f64()),
        _ => println!("progress: starting (the first frames need 25 inputs)"),
    }
}

fn bus_error(bus: &gst::Bus) -> Option<String> {
    let msg = bus.pop_filtered(&[gst::MessageType::Error])?;
    match msg.view() {
        gst::MessageView::Error(err) => Some(describe_error(err)),
        _ => None,
    }
}

fn describe_error(err: &gst::message::Error) -> String {
    let source = err
        .src()
        .map(|s| s.path_string().to_string())
        .unwrap_or_default();
    match err.debug() {
        Some(debug) => format!("{source}: {}\n({debug})", err.error()),
        None => format!("{source}: {}", err.error()),
    }
}

fn main() -> ExitCode {
    let options = Options::parse();
    if let Err(err) = gst::init() {
        eprintln!("error: GStreamer could not start: {err}");
        return ExitCode::FAILURE;
    }
    if let Err(err) = gstflashvsr::plugin_register_static() {
        eprintln!("error: registering the flashvsr plugin: {err}");
        return ExitCode::FAILURE;
    }
    let result = build_pipeline(&options).and_then(|pipeline| {
        let result = run(&pipeline);
        let _ = pipeline.set_state(gst::State::Null);
        result
    });
    match result {
        Ok(()) => {
            println!("done: wrote {}", options.output);
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
