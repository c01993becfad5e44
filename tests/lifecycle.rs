//! Starting and stopping `flashvsr` over and over leaves nothing behind: 20
//! PLAYING -> NULL cycles of a live pipeline, each stopped while frames are in
//! flight, end with as many threads as after the first and no growing memory.
//! Alone in its test binary, so that no other test's threads are counted.

mod common;

use gst::prelude::*;

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .count()
}

/// Resident memory of this process, in KiB.
fn resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// One cycle: PLAYING until 30 frames have entered flashvsr (its first chunk is
/// then running: the model thread, the output task and the queues are all busy),
/// then NULL. Returns a weak reference to the element, which must be gone.
fn cycle(model: &std::path::Path) -> gst::glib::WeakRef<gst::Element> {
    let pipeline = gst::parse::launch(&format!(
        "videotestsrc is-live=true ! video/x-raw,format=I420,width=32,height=24,framerate=100/1 \
         ! flashvsr name=vsr model-version=v1 model-dir=\"{}\" ! fakesink sync=false",
        model.display()
    ))
    .unwrap();
    let vsr = pipeline
        .downcast_ref::<gst::Bin>()
        .unwrap()
        .by_name("vsr")
        .unwrap();
    let (sender, receiver) = std::sync::mpsc::sync_channel::<()>(1);
    let seen = std::sync::atomic::AtomicU32::new(0);
    vsr.static_pad("sink")
        .unwrap()
        .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            if seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1 == 30 {
                let _ = sender.try_send(());
            }
            gst::PadProbeReturn::Ok
        });
    pipeline.set_state(gst::State::Playing).unwrap();
    let bus = pipeline.bus().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while receiver.try_recv().is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "no 30 frames in a minute"
        );
        if let Some(msg) = bus.timed_pop_filtered(
            gst::ClockTime::from_mseconds(10),
            &[gst::MessageType::Error],
        ) {
            panic!("{msg:?}");
        }
    }
    pipeline.set_state(gst::State::Null).unwrap();
    vsr.downgrade()
}

#[test]
fn twenty_play_stop_cycles_leave_no_thread_or_memory_behind() {
    gst::init().unwrap();
    gstflashvsr::plugin_register_static().expect("registering the flashvsr plugin");
    let model = common::tiny_model();
    // The first cycles create what lives for the process (GStreamer's thread
    // pools, the allocator's arenas).
    for _ in 0..3 {
        cycle(&model);
    }
    let (threads_before, memory_before) = (threads(), resident_kib());
    for i in 0..20 {
        let element = cycle(&model);
        assert!(
            element.upgrade().is_none(),
            "cycle {i} left the element alive"
        );
    }
    let (threads_after, memory_after) = (threads(), resident_kib());
    // GStreamer's task pool keeps a few idle threads for reuse.
    assert!(
        threads_after <= threads_before + 2,
        "{threads_before} threads before the cycles, {threads_after} after"
    );
    assert!(
        memory_after < memory_before + 32 * 1024,
        "resident memory grew from {memory_before} KiB to {memory_after} KiB"
    );
    eprintln!(
        "threads {threads_before} -> {threads_after}, resident {memory_before} -> {memory_after} KiB"
    );
}
