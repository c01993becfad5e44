//! What the element does with a frame the model cannot finish before its
//! deadline (`late-policy`), and the deadline arithmetic (docs/element.md, "Late
//! frames"). No locking here: the model thread passes the figures in.

use crate::engine::{Choice, ChoiceValue};

/// The `late-policy` property.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LatePolicy {
    /// Every frame goes through the model, however long it takes (files).
    #[default]
    Wait,
    /// A frame the model would finish after its deadline goes out as the bicubic
    /// upscale of its input, and the model stream restarts (live).
    Bicubic,
}

impl Choice for LatePolicy {
    const SETTING: &'static str = "late_policy";
    const VALUES: &'static [ChoiceValue<Self>] = &[
        ChoiceValue {
            value: LatePolicy::Wait,
            nick: "wait",
            aliases: &[],
            description: "Every frame is upscaled by the model; latency is whatever it takes",
        },
        ChoiceValue {
            value: LatePolicy::Bicubic,
            nick: "bicubic",
            aliases: &[],
            description: "A frame the model cannot finish before its deadline is output as its bicubic upscale",
        },
    ];
}

/// When the next chunk could end, against when its oldest frame is due, all in
/// clock nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkForecast {
    /// The clock now.
    pub now: u64,
    /// When the last input frame the chunk needs is expected (`now` if it is
    /// already queued).
    pub inputs_ready: u64,
    /// How long a chunk takes (the longest measured so far).
    pub chunk_time: u64,
    /// When the oldest frame the chunk outputs must be pushed downstream.
    pub oldest_due: u64,
}

impl ChunkForecast {
    /// True when the chunk would end after its oldest frame is due: that frame
    /// and the ones held with it must go out as their bicubic upscale instead.
    pub fn misses_deadline(&self) -> bool {
        self.inputs_ready
            .max(self.now)
            .saturating_add(self.chunk_time)
            > self.oldest_due
    }
}

/// The running time before which downstream wants no frame, from a QoS event
/// (as `GstVideoDecoder` computes it): a late sink (`diff > 0`) skips twice its
/// lateness plus a frame, an early one only its advance.
pub fn qos_earliest(timestamp: u64, diff: i64, frame_duration: u64) -> u64 {
    if diff > 0 {
        timestamp
            .saturating_add(diff.unsigned_abs().saturating_mul(2))
            .saturating_add(frame_duration)
    } else {
        timestamp.saturating_sub(diff.unsigned_abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_misses_when_it_would_end_after_the_oldest_frame_is_due() {
        let forecast = ChunkForecast {
            now: 1_000,
            inputs_ready: 1_500,
            chunk_time: 400,
            oldest_due: 2_000,
        };
        assert!(!forecast.misses_deadline());
        assert!(
            ChunkForecast {
                chunk_time: 501,
                ..forecast
            }
            .misses_deadline()
        );
        // inputs already queued: only the clock and the chunk count
        assert!(
            ChunkForecast {
                now: 1_700,
                inputs_ready: 0,
                ..forecast
            }
            .misses_deadline()
        );
    }

    #[test]
    fn qos_earliest_time_follows_the_video_decoder() {
        assert_eq!(qos_earliest(1_000, 100, 40), 1_240);
        assert_eq!(qos_earliest(1_000, -100, 40), 900);
        assert_eq!(qos_earliest(50, -100, 40), 0);
    }

    #[test]
    fn policies_parse_from_their_nicks() {
        assert_eq!(
            LatePolicy::parse_choice("bicubic").unwrap(),
            LatePolicy::Bicubic
        );
        assert_eq!(LatePolicy::default().nick(), "wait");
    }
}
