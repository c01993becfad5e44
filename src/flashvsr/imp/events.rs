//! Events, caps and queries of the `flashvsr` element: flushes, the caps
//! handshake between the sink pad and the model thread, serialized events kept
//! in order with the frames (docs/element.md, "Threading" and "Events").

use super::*;

impl FlashVsr {
    /// A serialized event the model thread reached: EOS, segment and stream
    /// changes drain the model first; the others wait behind the frames before
    /// them.
    pub(super) fn handle_event(&self, state: &mut State, event: gst::Event) -> Vec<Item> {
        use gst::EventView;
        match event.view() {
            EventView::Eos(_)
            | EventView::SegmentDone(_)
            | EventView::StreamStart(_)
            | EventView::Segment(_) => {
                let mut items = match self.drain(state) {
                    Ok(items) => items,
                    Err(err) => {
                        let error = self.stream_error(err);
                        if error.is_some() {
                            self.input.fail(gst::FlowError::Error);
                        }
                        return error.map(Item::Error).into_iter().collect();
                    }
                };
                if let EventView::Segment(s) = event.view()
                    && let Some(segment) = s.segment().downcast_ref::<gst::ClockTime>()
                {
                    state.segment = segment.clone();
                }
                items.push(Item::Event(event));
                items
            }
            _ => self.forward_in_order(state, event),
        }
    }

    /// Sends a serialized event behind the frames that arrived before it.
    pub(super) fn forward_in_order(&self, state: &mut State, event: gst::Event) -> Vec<Item> {
        if state.frames_out < state.frames_in || !state.held_events.is_empty() {
            gst::debug!(
                CAT,
                imp = self,
                "Holding {:?} behind {} frames",
                event.type_(),
                state.frames_in - state.frames_out
            );
            let after = state.frames_in;
            state.held_events.push_back((after, event));
            return Vec::new();
        }
        vec![Item::Event(event)]
    }

    /// FLUSH_START: stops the chunk in progress and the output task; nothing is
    /// pushed after the flush.
    pub(super) fn flush_start(&self, event: gst::Event) -> bool {
        let kept: Vec<Work> = self
            .input
            .flush()
            .into_iter()
            .filter(Work::survives_flush)
            .collect();
        self.kept.lock().extend(kept);
        self.output.flush();
        if let Some(token) = self.cancel.lock().as_ref() {
            token.cancel();
        }
        let forwarded = self.srcpad.push_event(event);
        if let Err(err) = self.srcpad.pause_task() {
            gst::debug!(CAT, imp = self, "Could not pause the output task: {}", err);
        }
        gst::debug!(CAT, imp = self, "Flush started");
        forwarded
    }

    /// FLUSH_STOP: drops every held frame (waiting for the model thread's item in
    /// progress, which the cancel token cuts short) and restarts the queues with
    /// the caps and sticky events that must survive.
    pub(super) fn flush_stop(&self, event: gst::Event) -> bool {
        let _ = self.srcpad.pause_task();
        let mut kept: Vec<Work> = self
            .input
            .flush()
            .into_iter()
            .filter(Work::survives_flush)
            .collect();
        self.output.flush();
        let mut guard = self.state.lock();
        let held = guard.as_mut().map(State::reset).unwrap_or_default();
        let mut requeue: Vec<Work> = held.into_iter().map(Work::Event).collect();
        requeue.append(&mut self.kept.lock());
        requeue.append(&mut kept);
        if let Some(token) = self.cancel.lock().as_ref() {
            token.clear();
        }
        {
            let mut timing = self.timing.lock();
            timing.qos_earliest = None;
            timing.qos_proportion = 1.0;
        }
        gst::debug!(CAT, imp = self, "Flushed the frames held");
        let forwarded = self.srcpad.push_event(event);
        let active = guard.is_some();
        if active {
            self.output.start(Vec::new());
            self.input.start(requeue);
        }
        drop(guard);
        if active && let Err(err) = self.start_output_task() {
            gst::error!(
                CAT,
                imp = self,
                "Could not restart the output task: {}",
                err
            );
            return false;
        }
        forwarded
    }

    /// New caps on the sink pad: refuses what cannot be converted here, and hands
    /// the rest to the model thread, which drains the old caps' frames, checks the
    /// memory budget and sends the upscaled caps downstream. Waits for the answer.
    pub(super) fn set_caps(&self, caps: &gst::Caps) -> bool {
        // one converter per direction, built once: the input one for the sink
        // pad, the output one for the model thread
        let (work, sink_side) = match self.check_caps(caps) {
            Some((in_info, out_caps, input, output)) => (
                Work::Caps(Box::new(NewCaps {
                    caps: caps.clone(),
                    out_caps,
                    in_info,
                    converter: output,
                })),
                Some(SinkSide { converter: input }),
            ),
            None => (Work::Refuse(None), None),
        };
        let answer = match self.input.push(work, false) {
            Ok(seq) => self.input.wait_for(seq),
            Err(_) => Answer::Dropped,
        };
        // Dropped by a flush, the caps stay queued for after it (`Work::survives_flush`):
        // the frames that follow them are read with them.
        let keep = matches!(answer, Answer::Done(true) | Answer::Dropped);
        *self.sink_side.lock() = if keep { sink_side } else { None };
        answer == Answer::Done(true)
    }

    /// Checks that `caps` are progressive raw video in a supported format whose
    /// upscale fits; returns the input info, the output caps and the converters.
    pub(super) fn check_caps(
        &self,
        caps: &gst::Caps,
    ) -> Option<(
        gst_video::VideoInfo,
        gst::Caps,
        InputConverter,
        OutputConverter,
    )> {
        let Ok(in_info) = gst_video::VideoInfo::from_caps(caps) else {
            gst::debug!(
                CAT,
                imp = self,
                "Refusing caps that are not raw video: {}",
                caps
            );
            return None;
        };
        if in_info.interlace_mode() != gst_video::VideoInterlaceMode::Progressive {
            gst::debug!(
                CAT,
                imp = self,
                "Refusing interlaced caps {}: deinterlace first",
                caps
            );
            return None;
        }
        if !caps::FORMATS.contains(&in_info.format()) {
            gst::debug!(
                CAT,
                imp = self,
                "Refusing unsupported format {:?}",
                in_info.format()
            );
            return None;
        }
        let scale = self.scale();
        let Some(out_caps) = caps::output_caps(caps, scale) else {
            gst::debug!(
                CAT,
                imp = self,
                "Refusing caps {}: x{} output exceeds {} pixels a side",
                caps,
                scale,
                caps::MAX_OUTPUT_DIM
            );
            return None;
        };
        let out_info = match gst_video::VideoInfo::from_caps(&out_caps) {
            Ok(info) => info,
            Err(err) => {
                gst::debug!(
                    CAT,
                    imp = self,
                    "Refusing caps {}: output caps {}: {}",
                    caps,
                    out_caps,
                    err
                );
                return None;
            }
        };
        match convert::converters(&in_info, &out_info) {
            Ok((input, output)) => Some((in_info, out_caps, input, output)),
            Err(err) => {
                gst::debug!(
                    CAT,
                    imp = self,
                    "Refusing caps {}: no converter: {}",
                    caps,
                    err
                );
                None
            }
        }
    }

    /// The model thread's side of new caps (see `set_caps`).
    pub(super) fn handle_caps(
        &self,
        state: &mut State,
        caps: &gst::Caps,
        out_caps: gst::Caps,
        in_info: gst_video::VideoInfo,
        converter: OutputConverter,
    ) -> (Vec<Item>, Option<bool>) {
        if state
            .negotiated
            .as_ref()
            .is_some_and(|s| s.in_info == in_info)
        {
            gst::debug!(CAT, imp = self, "Caps unchanged");
            return (Vec::new(), Some(true));
        }
        // The old caps' frames go out first, so that the plan of the new stream
        // is made with the old stream's memory freed.
        let mut items = Vec::new();
        if state.negotiated.is_some() {
            match self.drain(state) {
                Ok(drained) => items = drained,
                Err(err) => {
                    items.extend(self.stream_error(err).map(Item::Error));
                    self.input.fail(gst::FlowError::Error);
                    return (items, Some(false));
                }
            }
        }
        // The one plan the stream runs (the engine keeps it), logged here; or
        // the refusal, whose message and details give the same layout's figures.
        match state.engine.plan_stream(in_info.width(), in_info.height()) {
            Ok(plan) => gst::info!(
                CAT,
                imp = self,
                "{}x{} input: {plan}",
                in_info.width(),
                in_info.height()
            ),
            Err(err) => {
                let (message, _) = engine_error_text(&err);
                let details = refusal_details(caps, &err);
                items.extend(self.refuse_caps(
                    state,
                    Some(gst::error_msg!(
                        gst::CoreError::Negotiation,
                        ("{}", message),
                        ["{}", details]
                    )),
                ));
                return (items, Some(false));
            }
        }
        state.negotiate(Some(Negotiated { in_info, converter }));
        gst::info!(CAT, imp = self, "Configured {} -> {}", caps, out_caps);
        items.push(Item::Event(gst::event::Caps::new(&out_caps)));
        // Live pipelines query the latency before any caps: the frames held are only
        // known now.
        self.post_latency_message();
        // answered by whether downstream takes the caps
        (items, None)
    }

    pub(super) fn sink_event(&self, pad: &gst::Pad, event: gst::Event) -> bool {
        use gst::EventView;
        gst::log!(CAT, obj = pad, "Handling {:?}", event);
        match event.view() {
            EventView::Caps(c) => {
                let caps = c.caps_owned();
                self.set_caps(&caps)
            }
            EventView::FlushStart(_) => self.flush_start(event),
            EventView::FlushStop(_) => self.flush_stop(event),
            _ if event.is_serialized() => {
                // A sticky event refused while flushing is stored on the pad and
                // sent again with the next data; the others are dropped.
                let sticky = survives_flush(&event);
                match self.input.push(Work::Event(event), false) {
                    Ok(_) => true,
                    Err(err) => {
                        gst::debug!(CAT, imp = self, "Serialized event refused: {:?}", err);
                        sticky && err == gst::FlowError::Flushing
                    }
                }
            }
            _ => gst::Pad::event_default(pad, Some(&*self.obj()), event),
        }
    }

    pub(super) fn src_event(&self, pad: &gst::Pad, event: gst::Event) -> bool {
        use gst::EventView;
        gst::log!(CAT, obj = pad, "Handling {:?}", event);
        match event.view() {
            EventView::Qos(qos) => {
                let (_, proportion, diff, timestamp) = qos.get();
                if let Some(timestamp) = timestamp {
                    let frame_ns = self
                        .sinkpad
                        .current_caps()
                        .and_then(|c| gst_video::VideoInfo::from_caps(&c).ok())
                        .and_then(|info| caps::frame_duration(&info))
                        .map_or(0, gst::ClockTime::nseconds);
                    let mut timing = self.timing.lock();
                    timing.qos_earliest =
                        Some(late::qos_earliest(timestamp.nseconds(), diff, frame_ns));
                    timing.qos_proportion = proportion;
                }
            }
            EventView::Latency(l) => {
                gst::debug!(CAT, imp = self, "Pipeline latency {}", l.latency());
                self.timing.lock().pipeline_latency = Some(l.latency());
            }
            _ => {}
        }
        gst::Pad::event_default(pad, Some(&*self.obj()), event)
    }

    pub(super) fn sink_query(&self, pad: &gst::Pad, query: &mut gst::QueryRef) -> bool {
        use gst::QueryViewMut;
        match query.view_mut() {
            QueryViewMut::Caps(q) => {
                let caps = self.peer_caps(q.filter(), Direction::Downscale);
                q.set_result(&caps);
                true
            }
            QueryViewMut::Allocation(q) => {
                // Upstream may give us frames with any strides; we map them with
                // their video meta. Never forwarded: downstream buffers are larger.
                q.add_allocation_meta::<gst_video::VideoMeta>(None);
                true
            }
            _ => gst::Pad::query_default(pad, Some(&*self.obj()), query),
        }
    }

    pub(super) fn src_query(&self, pad: &gst::Pad, query: &mut gst::QueryRef) -> bool {
        use gst::QueryViewMut;
        match query.view_mut() {
            QueryViewMut::Caps(q) => {
                let caps = self.peer_caps(q.filter(), Direction::Upscale);
                q.set_result(&caps);
                true
            }
            QueryViewMut::Latency(q) => {
                let mut upstream = gst::query::Latency::new();
                if !self.sinkpad.peer_query(&mut upstream) {
                    return false;
                }
                let (live, min, max) = upstream.result();
                {
                    let mut timing = self.timing.lock();
                    timing.live = live;
                    timing.upstream_latency = min;
                }
                let added = self.added_latency();
                gst::debug!(
                    CAT,
                    imp = self,
                    "Upstream latency {} - {}, adding {}",
                    min,
                    max.display(),
                    added
                );
                q.set(
                    live,
                    min.saturating_add(added),
                    max.map(|m| m.saturating_add(added)),
                );
                true
            }
            _ => gst::Pad::query_default(pad, Some(&*self.obj()), query),
        }
    }
    /// Caps for one pad: what the other pad's peer can take, mapped through the scale
    /// (`Downscale` answers for the sink pad, `Upscale` for the src pad).
    pub(super) fn peer_caps(
        &self,
        filter: Option<&gst::CapsRef>,
        direction: Direction,
    ) -> gst::Caps {
        let scale = self.scale();
        let (this_pad, other_pad, other_direction) = match direction {
            Direction::Downscale => (&self.sinkpad, &self.srcpad, Direction::Upscale),
            Direction::Upscale => (&self.srcpad, &self.sinkpad, Direction::Downscale),
        };
        let template = this_pad.pad_template_caps();
        let peer_filter = filter.map(|f| caps::transform(f, other_direction, scale));
        let peer = other_pad.peer_query_caps(peer_filter.as_ref());
        let mut result = if peer.is_any() {
            template
        } else {
            caps::transform(&peer, direction, scale)
                .intersect_with_mode(&template, gst::CapsIntersectMode::First)
        };
        if let Some(filter) = filter {
            result = filter.intersect_with_mode(&result, gst::CapsIntersectMode::First);
        }
        gst::log!(CAT, obj = this_pad, "Caps for {:?}: {}", direction, result);
        result
    }
}

/// The details of a refused size: the figures of the layout the refusal's
/// message gives (the least demanding one the plan tried).
fn refusal_details(caps: &gst::Caps, err: &EngineError) -> String {
    match err {
        EngineError::TooLarge { tile, estimate, .. } => format!(
            "caps {caps}: {}, padded to {}x{}, weights {}, held between chunks {}, peak working set {} ({}): {} in all",
            tile.map_or_else(
                || "whole frames".to_owned(),
                |t| format!("{} tiles of {t}x{t}", estimate.tiles)
            ),
            estimate.padded_width,
            estimate.padded_height,
            memory::human_bytes(estimate.weights),
            memory::human_bytes(estimate.held),
            memory::human_bytes(estimate.working),
            estimate.peak_stage,
            memory::human_bytes(estimate.stream()),
        ),
        other => format!("caps {caps}: {other}"),
    }
}
