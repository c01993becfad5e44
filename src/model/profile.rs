//! Stage timings and matrix-multiplication logs for benchmarks.
//!
//! Timings are wall-clock durations around a stage, with the device synchronised
//! at both ends so that asynchronous devices (CUDA) report real work. The matmul
//! log records the shapes every DiT matrix product ran with, so a benchmark can
//! replay the same products alone and compare.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Result, Tensor};

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

/// Shape of one (batched) matrix product: `batch x [m, k] @ [k, n]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MatmulShape {
    pub batch: usize,
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub dtype: DType,
}

impl MatmulShape {
    /// One f32 product `[m, k] @ [k, n]`.
    pub fn f32(m: usize, k: usize, n: usize) -> Self {
        Self {
            batch: 1,
            m,
            k,
            n,
            dtype: DType::F32,
        }
    }
    pub fn flops(&self) -> f64 {
        2.0 * (self.batch * self.m * self.k * self.n) as f64
    }
}

/// Shape of one 2-D convolution: `[n, c_in, h, w]` input, `c_out x c_in x k x k`
/// kernel, stride 1, output `h x w` (same padding).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConvShape {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub k: usize,
    pub dtype: DType,
}

impl ConvShape {
    pub fn flops(&self) -> f64 {
        2.0 * (self.n * self.h * self.w * self.c_out * self.c_in * self.k * self.k) as f64
    }
    /// The matrix product with the same arithmetic:
    /// `[c_out, c_in * k * k] @ [c_in * k * k, n * h * w]`.
    pub fn as_matmul(&self) -> MatmulShape {
        MatmulShape {
            batch: 1,
            m: self.c_out,
            k: self.c_in * self.k * self.k,
            n: self.n * self.h * self.w,
            dtype: self.dtype,
        }
    }
}

thread_local! {
    static MATMUL_LOG: RefCell<Option<Vec<MatmulShape>>> = const { RefCell::new(None) };
    static CONV_LOG: RefCell<Option<Vec<ConvShape>>> = const { RefCell::new(None) };
}

/// Starts recording the shapes of the convolutions this thread runs.
pub fn start_conv_log() {
    CONV_LOG.with(|l| *l.borrow_mut() = Some(Vec::new()));
}

/// Stops recording and returns what was recorded.
pub fn take_conv_log() -> Vec<ConvShape> {
    CONV_LOG.with(|l| l.borrow_mut().take()).unwrap_or_default()
}

/// Records a convolution when a log is open on this thread.
pub(crate) fn log_conv(shape: ConvShape) {
    CONV_LOG.with(|l| {
        if let Some(log) = l.borrow_mut().as_mut() {
            log.push(shape);
        }
    });
}

/// Runs every convolution of `log`, and the matrix product with the same
/// arithmetic, on fresh tensors (the faster of two runs each); returns
/// (convolution time, matmul time).
pub fn replay_convs(log: &[ConvShape], device: &Device) -> Result<(Duration, Duration)> {
    let (mut conv, mut mm) = (Duration::ZERO, Duration::ZERO);
    for s in log {
        let x = Tensor::randn(0f32, 1.0, (s.n, s.c_in, s.h, s.w), device)?.to_dtype(s.dtype)?;
        let w = Tensor::randn(0f32, 1.0, (s.c_out, s.c_in, s.k, s.k), device)?.to_dtype(s.dtype)?;
        let layer = crate::model::conv::Conv2d::new(&w, None)?;
        conv += fastest_of_two(device, || layer.forward(&x))?;
        mm += replay_matmuls(&[s.as_matmul()], device)?;
    }
    Ok((conv, mm))
}

/// Starts recording the shapes of the matmuls this thread runs through [`matmul`].
pub fn start_matmul_log() {
    MATMUL_LOG.with(|l| *l.borrow_mut() = Some(Vec::new()));
}

/// Stops recording and returns what was recorded.
pub fn take_matmul_log() -> Vec<MatmulShape> {
    MATMUL_LOG
        .with(|l| l.borrow_mut().take())
        .unwrap_or_default()
}

/// Records a product computed outside [`matmul`] (e.g. by a fused kernel) when
/// a log is open on this thread.
pub(crate) fn log_matmul(shape: MatmulShape) {
    MATMUL_LOG.with(|l| {
        if let Some(log) = l.borrow_mut().as_mut() {
            log.push(shape);
        }
    });
}

/// `a.matmul(b)`, logged when a log is open on this thread.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let dims = a.dims();
    if dims.len() >= 2 && b.rank() >= 2 {
        let (m, k) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        log_matmul(MatmulShape {
            batch: a.elem_count() / (m * k).max(1),
            m,
            k,
            n: b.dims()[b.rank() - 1],
            dtype: a.dtype(),
        });
    }
    a.matmul(b)
}

/// Runs every product of `log` on fresh tensors of the same shapes and dtypes on
/// `device`, twice, keeping the faster run of each (the first one pays for page
/// faults and cold caches); returns the total time.
pub fn replay_matmuls(log: &[MatmulShape], device: &Device) -> Result<Duration> {
    let mut total = Duration::ZERO;
    for s in log {
        let a = Tensor::randn(0f32, 1.0, (s.batch, s.m, s.k), device)?.to_dtype(s.dtype)?;
        let b = Tensor::randn(0f32, 1.0, (s.batch, s.k, s.n), device)?.to_dtype(s.dtype)?;
        total += fastest_of_two(device, || a.matmul(&b))?;
    }
    Ok(total)
}

/// Runs `f` twice with `device` synchronised around each run and returns the
/// shorter time: the first run pays for page faults and cold caches.
fn fastest_of_two<T>(device: &Device, mut f: impl FnMut() -> Result<T>) -> Result<Duration> {
    let mut best = Duration::MAX;
    for _ in 0..2 {
        device.synchronize()?;
        let start = Instant::now();
        let out = f()?;
        device.synchronize()?;
        best = best.min(start.elapsed());
        drop(out);
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_shapes_only_while_open() -> Result<()> {
        let dev = Device::Cpu;
        let a = Tensor::zeros((3, 4, 5), DType::F32, &dev)?;
        let b = Tensor::zeros((3, 5, 6), DType::F32, &dev)?;
        matmul(&a, &b)?;
        assert!(take_matmul_log().is_empty());
        start_matmul_log();
        matmul(&a, &b)?;
        let log = take_matmul_log();
        assert_eq!(
            log,
            vec![MatmulShape {
                batch: 3,
                m: 4,
                k: 5,
                n: 6,
                dtype: DType::F32
            }]
        );
        assert_eq!(log[0].flops(), 720.0);
        Ok(())
    }

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
