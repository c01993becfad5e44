//! Replays of logged product shapes (`layers::shape_log`) on fresh tensors, so
//! that a benchmark can compare the model's products with the same arithmetic
//! run alone.

use std::time::{Duration, Instant};

use candle_core::{Device, Result, Tensor};

use crate::layers::conv::Conv2d;
use crate::layers::shape_log::{ConvShape, MatmulShape};

/// Runs every convolution of `log`, and the matrix product with the same
/// arithmetic, on fresh tensors (the faster of two runs each); returns
/// (convolution time, matmul time).
pub fn replay_convs(log: &[ConvShape], device: &Device) -> Result<(Duration, Duration)> {
    let (mut conv, mut mm) = (Duration::ZERO, Duration::ZERO);
    for s in log {
        let x = Tensor::randn(0f32, 1.0, (s.n, s.c_in, s.h, s.w), device)?.to_dtype(s.dtype)?;
        let w = Tensor::randn(0f32, 1.0, (s.c_out, s.c_in, s.k, s.k), device)?.to_dtype(s.dtype)?;
        let layer = Conv2d::new(&w, None)?;
        conv += fastest_of_two(device, || layer.forward(&x))?;
        mm += replay_matmuls(&[s.as_matmul()], device)?;
    }
    Ok((conv, mm))
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
