//! Time for the `flashvsr` element: the deadlines of `late-policy=bicubic`
//! (docs/element.md, "Late frames"), the QoS messages for degraded frames, and the
//! latency it reports (docs/element.md, "Latency").

use super::*;

impl FlashVsr {
    /// Whether the model would output the frames it holds, or `tag`'s frame if
    /// none, after they are due downstream (or downstream's QoS already skips
    /// this frame): then they go out as their bicubic upscale.
    pub(super) fn is_late(&self, state: &State, tag: &FrameTag) -> bool {
        let obj = self.obj();
        let (Some(clock), Some(base_time)) = (obj.clock(), obj.base_time()) else {
            return false;
        };
        let running_time = |pts: Option<gst::ClockTime>| {
            pts.and_then(|pts| state.segment.to_running_time(pts))
                .map(gst::ClockTime::nseconds)
        };
        let Some(this) = running_time(tag.pts) else {
            return false;
        };
        let frame_ns = self.frame_duration(state, tag);
        let timing = *self.timing.lock();
        if let Some(earliest) = timing.qos_earliest
            && this.saturating_add(frame_ns) <= earliest
        {
            gst::debug!(CAT, imp = self, "QoS: downstream skips frame at {}", this);
            return true;
        }
        let oldest = state
            .held_inputs
            .front()
            .and_then(|(_, t)| running_time(t.pts))
            .unwrap_or(this);
        let now = clock.time().nseconds();
        let base = base_time.nseconds();
        // frames still to come after this one before the chunk that outputs
        // it can run
        let ahead = state.engine.frames_to_next_chunk() as u64 - 1;
        let inputs_ready = if ahead as usize <= self.input.waiting() {
            now
        } else {
            base.saturating_add(this)
                .saturating_add(ahead.saturating_mul(frame_ns))
                .saturating_add(timing.upstream_latency.nseconds())
        };
        let forecast = ChunkForecast {
            now,
            inputs_ready,
            chunk_time: self.chunk_time(state, tag),
            oldest_due: base
                .saturating_add(oldest)
                .saturating_add(self.pipeline_latency(&timing).nseconds()),
        };
        let late = forecast.misses_deadline();
        if late {
            gst::debug!(CAT, imp = self, "The model would be late: {:?}", forecast);
        }
        late
    }

    /// The latency the sinks render with: the pipeline's, once its LATENCY event
    /// has arrived, else what this element and upstream report.
    pub(super) fn pipeline_latency(&self, timing: &Timing) -> gst::ClockTime {
        timing.pipeline_latency.unwrap_or_else(|| {
            timing
                .upstream_latency
                .saturating_add(self.reported_latency())
        })
    }

    pub(super) fn frame_duration(&self, state: &State, tag: &FrameTag) -> u64 {
        state
            .negotiated
            .as_ref()
            .and_then(|n| caps::frame_duration(&n.in_info))
            .or(tag.duration)
            .map_or(0, gst::ClockTime::nseconds)
    }

    /// How long the next chunk will take: the longest measured, or until one is
    /// measured the `CHUNK_STRIDE` frame durations the latency counts.
    pub(super) fn chunk_time(&self, state: &State, tag: &FrameTag) -> u64 {
        match self.processing_ns.load(Ordering::Relaxed) {
            0 => self
                .frame_duration(state, tag)
                .saturating_mul(CHUNK_STRIDE as u64),
            ns => ns,
        }
    }

    /// Posts a QoS message per degraded frame, as `GstVideoDecoder` does per
    /// dropped frame ("dropped" counts the degraded ones).
    pub(super) fn post_qos(&self, state: &State, degraded: &[FrameTag]) {
        let obj = self.obj();
        let timing = *self.timing.lock();
        let now_running = obj.current_running_time();
        for tag in degraded {
            let running_time = tag.pts.and_then(|p| state.segment.to_running_time(p));
            let jitter = match (now_running, running_time) {
                (Some(now), Some(rt)) => now.nseconds() as i64 - rt.nseconds() as i64,
                _ => 0,
            };
            let message = gst::message::Qos::builder(timing.live)
                .running_time(running_time)
                .stream_time(tag.pts.and_then(|p| state.segment.to_stream_time(p)))
                .timestamp(tag.pts)
                .duration(tag.duration)
                .values(jitter, timing.qos_proportion, 0)
                .stats(
                    gst::format::Buffers::from_u64(state.processed),
                    gst::format::Buffers::from_u64(state.degraded),
                )
                .src(&*obj)
                .build();
            let _ = obj.post_message(message);
        }
    }

    /// Whether finishing the model stream now would output its oldest frame late.
    pub(super) fn drain_is_late(&self, state: &State) -> bool {
        let Some((_, tag)) = state.held_inputs.front() else {
            return false;
        };
        let obj = self.obj();
        let (Some(clock), Some(base_time)) = (obj.clock(), obj.base_time()) else {
            return false;
        };
        let Some(oldest) = tag.pts.and_then(|p| state.segment.to_running_time(p)) else {
            return false;
        };
        let timing = *self.timing.lock();
        let now = clock.time().nseconds();
        // the held frames plus the padding `finish` adds take this many chunks
        let chunks = (state.held_inputs.len() as u64)
            .div_ceil(CHUNK_STRIDE as u64)
            .max(1);
        ChunkForecast {
            now,
            inputs_ready: now,
            chunk_time: self.chunk_time(state, tag).saturating_mul(chunks),
            oldest_due: base_time
                .nseconds()
                .saturating_add(oldest.nseconds())
                .saturating_add(self.pipeline_latency(&timing).nseconds()),
        }
        .misses_deadline()
    }

    /// Records how long a chunk took; when it exceeds what the last LATENCY answer
    /// included, asks the pipeline to query the latency again.
    pub(super) fn note_processing_time(&self, took: Duration) {
        gst::debug!(CAT, imp = self, "Chunk processed in {:?}", took);
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let previous = self.processing_ns.fetch_max(ns, Ordering::Relaxed);
        let reported = self.reported_processing_ns.load(Ordering::Relaxed);
        if ns > previous && ns > reported + reported / 10 + 1_000_000 {
            gst::debug!(
                CAT,
                imp = self,
                "A chunk took {:?}, more than the latency allowed for",
                took
            );
            self.post_latency_message();
        }
    }

    pub(super) fn post_latency_message(&self) {
        let obj = self.obj();
        let _ = obj.post_message(gst::message::Latency::builder().src(&*obj).build());
    }

    /// The latency this element adds: the frames held before the first output, plus
    /// the time a chunk takes. Until a chunk has been timed that is the budget of
    /// `CHUNK_STRIDE` frame durations (a slower chunk could not keep up with a live
    /// source anyway); a chunk that took longer raises it.
    pub(super) fn added_latency(&self) -> gst::ClockTime {
        let (held, processing) = self.latency_terms();
        self.reported_processing_ns
            .store(processing.nseconds(), Ordering::Relaxed);
        held.saturating_add(processing)
    }

    /// What the last LATENCY answer added (the deadlines of `late-policy`
    /// count on it until the pipeline's LATENCY event arrives).
    pub(super) fn reported_latency(&self) -> gst::ClockTime {
        let (held, _) = self.latency_terms();
        let processing =
            gst::ClockTime::from_nseconds(self.reported_processing_ns.load(Ordering::Relaxed));
        held.saturating_add(processing)
    }

    /// The two terms of the added latency: the frames held, and the time a chunk
    /// takes (measured, or its budget).
    pub(super) fn latency_terms(&self) -> (gst::ClockTime, gst::ClockTime) {
        let fps = self
            .sinkpad
            .current_caps()
            .and_then(|caps| gst_video::VideoInfo::from_caps(&caps).ok())
            .map(|info| info.fps());
        // Absurd framerates (1/2147483647) overflow: every step saturates at
        // `ClockTime::MAX` rather than wrapping or dropping a term.
        let frames = |n: u64| match fps {
            Some(fps) if fps.numer() > 0 && fps.denom() > 0 => {
                let (numer, denom) = (fps.numer() as u64, fps.denom() as u64);
                n.checked_mul(denom)
                    .and_then(|frames| gst::ClockTime::SECOND.mul_div_ceil(frames, numer))
                    .unwrap_or(gst::ClockTime::MAX)
            }
            _ => gst::ClockTime::ZERO,
        };
        match fps {
            Some(fps) if fps.numer() == 0 => gst::warning!(
                CAT,
                imp = self,
                "Variable framerate: the {} frames held cannot be expressed as latency",
                LATENCY_FRAMES
            ),
            None => gst::debug!(
                CAT,
                imp = self,
                "No caps yet: the frames held are not counted"
            ),
            _ => {}
        }
        let measured = gst::ClockTime::from_nseconds(self.processing_ns.load(Ordering::Relaxed));
        let processing = measured.max(frames(CHUNK_STRIDE as u64));
        (frames(LATENCY_FRAMES), processing)
    }
}
