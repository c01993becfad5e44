//! Stage timings of a chunk, for benchmarks.
//!
//! Timings are wall-clock durations around a stage, with the device synchronised
//! at both ends so that asynchronous devices (CUDA) report real work. The shapes
//! of the heavy products are logged by `layers::shape_log`.

use std::time::{Duration, Instant};

use candle_core::{Device, Result};

/// The stages a chunk goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Bicubic pre-upscale of the input frames (CPU, 8-bit).
    PreUpscale,
    /// u8 frames to tensors and back, padding and cropping.
    Conversions,
    LqProjection,
    /// The whole DiT pass, mask building and attention included.
    Dit,
    /// Sparse-attention block-mask building (part of `Dit`).
    Mask,
    /// Self-attention products and softmax (part of `Dit`).
    Attention,
    Decoder,
    ColorFix,
}

impl Stage {
    pub const ALL: [Stage; 8] = [
        Stage::PreUpscale,
        Stage::Conversions,
        Stage::LqProjection,
        Stage::Dit,
        Stage::Mask,
        Stage::Attention,
        Stage::Decoder,
        Stage::ColorFix,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Stage::PreUpscale => "pre_upscale",
            Stage::Conversions => "conversions",
            Stage::LqProjection => "lq_projection",
            Stage::Dit => "dit",
            Stage::Mask => "dit_mask",
            Stage::Attention => "dit_attention",
            Stage::Decoder => "decoder",
            Stage::ColorFix => "color_fix",
        }
    }
    fn index(self) -> usize {
        Self::ALL.iter().position(|s| *s == self).unwrap_or(0)
    }
}

/// Accumulated time per stage.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StageTimes {
    totals: [Duration; 8],
}

impl StageTimes {
    pub fn add(&mut self, stage: Stage, d: Duration) {
        self.totals[stage.index()] += d;
    }
    pub fn get(&self, stage: Stage) -> Duration {
        self.totals[stage.index()]
    }
    pub fn merge(&mut self, other: &StageTimes) {
        for s in Stage::ALL {
            self.add(s, other.get(s));
        }
    }
}

/// Runs `f` as `stage`, adding its time to `times` when given. The device is
/// synchronised before and after, only when timing.
pub fn timed<T>(
    times: Option<&mut StageTimes>,
    stage: Stage,
    device: &Device,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    match times {
        None => f(),
        Some(times) => {
            device.synchronize()?;
            let start = Instant::now();
            let out = f()?;
            device.synchronize()?;
            times.add(stage, start.elapsed());
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timed_accumulates() -> Result<()> {
        let mut t = StageTimes::default();
        timed(Some(&mut t), Stage::Decoder, &Device::Cpu, || {
            std::thread::sleep(Duration::from_millis(2));
            Ok(())
        })?;
        assert!(t.get(Stage::Decoder) >= Duration::from_millis(2));
        assert_eq!(t.get(Stage::Dit), Duration::ZERO);
        Ok(())
    }
}
