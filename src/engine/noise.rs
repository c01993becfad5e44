//! The Gaussian noise the one-step DiT starts from.
//!
//! Drawn on the CPU from a small self-contained generator (xoshiro256** seeded through
//! SplitMix64, Box-Muller in f64) so that a seed gives the same bits on every run, build
//! and device. The noise is defined for the whole stream, one latent frame at a time:
//! latent frame `t` has its own generator seeded from `(seed, t)`, and chunk `k` takes
//! the frames `schedule::chunk_noise_frames(k)`. A chunk's noise therefore depends only
//! on the seed, the chunk index and the frame size, never on what ran before.

use candle_core::{DType, Device, Result, Tensor};

use crate::model::schedule::{LATENT_CHANNELS, chunk_noise_frames};

/// Where the engine gets each chunk's noise from.
pub trait NoiseSource: Send {
    /// The noise of chunk `chunk`, of shape `shape` = `[1, 16, f, H/8, W/8]` with
    /// `f = schedule::chunk_noise_frames(chunk).len()`, as f32 on any device (the engine
    /// moves it to the model's). Must depend only on `chunk` and `shape`: every new
    /// stream asks again from chunk 0.
    fn chunk_noise(&mut self, chunk: usize, shape: [usize; 5]) -> Result<Tensor>;
}

/// SplitMix64: expands one 64-bit seed into well-mixed words to seed xoshiro.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// xoshiro256**: fast, 256 bits of state, good statistical quality.
struct Xoshiro256StarStar([u64; 4]);

impl Xoshiro256StarStar {
    /// The generator of latent frame `frame` of a stream seeded with `seed`.
    fn for_frame(seed: u64, frame: u64) -> Self {
        let stream_key = SplitMix64(seed).next();
        let mut mix = SplitMix64(stream_key ^ frame.wrapping_mul(0xD1B5_4A32_D192_ED03));
        Self([mix.next(), mix.next(), mix.next(), mix.next()])
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1) with 53 random bits.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Fills `out` with standard normal values (Box-Muller, both outputs used).
    fn fill_normal(&mut self, out: &mut [f32]) {
        for pair in out.chunks_mut(2) {
            // 1 - u lies in (0, 1], so the logarithm is finite
            let radius = (-2.0 * (1.0 - self.next_f64()).ln()).sqrt();
            let angle = std::f64::consts::TAU * self.next_f64();
            pair[0] = (radius * angle.cos()) as f32;
            if let Some(second) = pair.get_mut(1) {
                *second = (radius * angle.sin()) as f32;
            }
        }
    }
}

/// Standard normal noise drawn from a seed; see the module documentation.
#[derive(Debug, Clone)]
pub struct SeededNoise {
    seed: u64,
    /// Latent frames the stream's noise is shifted by (`with_offset`).
    offset: u64,
}

impl SeededNoise {
    pub fn new(seed: u64) -> Self {
        Self::with_offset(seed, 0)
    }

    /// Noise whose latent frame `t` is latent frame `t + offset` of a stream
    /// from the same seed: a stream that starts at frame `8 k` of another (a
    /// segment of a file) and passes `offset = 2 k` draws, from its second
    /// chunk on, the noise the whole stream drew for the same frames
    /// (docs/segments.md, "Seams").
    pub fn with_offset(seed: u64, offset: u64) -> Self {
        Self { seed, offset }
    }
}

impl NoiseSource for SeededNoise {
    fn chunk_noise(&mut self, chunk: usize, shape: [usize; 5]) -> Result<Tensor> {
        let frames = chunk_noise_frames(chunk);
        let [one, channels, f, h, w] = shape;
        if one != 1 || channels != LATENT_CHANNELS || f != frames.len() {
            candle_core::bail!(
                "noise of chunk {chunk}: asked for shape {shape:?}, expected [1, {LATENT_CHANNELS}, {}, h, w]",
                frames.len()
            );
        }
        // generated per latent frame as [c, y, x], stored as [c, f, y, x]
        let plane = h * w;
        let mut frame_values = vec![0f32; channels * plane];
        let mut data = vec![0f32; channels * f * plane];
        for (i, t) in frames.enumerate() {
            Xoshiro256StarStar::for_frame(self.seed, t as u64 + self.offset)
                .fill_normal(&mut frame_values);
            for c in 0..channels {
                let dst = (c * f + i) * plane;
                data[dst..dst + plane].copy_from_slice(&frame_values[c * plane..(c + 1) * plane]);
            }
        }
        Tensor::from_vec(data, shape.to_vec(), &Device::Cpu)
    }
}

/// Noise taken from a whole-stream tensor `[1, 16, F', h, w]`, e.g. the golden
/// fixtures' `noise`: chunk `k` gets latent frames `chunk_noise_frames(k)` of it.
#[derive(Debug, Clone)]
pub struct FixedNoise {
    noise: Tensor,
}

impl FixedNoise {
    pub fn new(noise: Tensor) -> Result<Self> {
        let dims = noise.dims();
        if dims.len() != 5 || dims[0] != 1 || dims[1] != LATENT_CHANNELS {
            candle_core::bail!(
                "whole-stream noise must be [1, {LATENT_CHANNELS}, frames, h, w], got {dims:?}"
            );
        }
        Ok(Self {
            noise: noise.to_dtype(DType::F32)?,
        })
    }
}

impl NoiseSource for FixedNoise {
    fn chunk_noise(&mut self, chunk: usize, shape: [usize; 5]) -> Result<Tensor> {
        let frames = chunk_noise_frames(chunk);
        let dims = self.noise.dims();
        let expected = [1, LATENT_CHANNELS, frames.len(), dims[3], dims[4]];
        if shape != expected {
            candle_core::bail!(
                "noise of chunk {chunk}: asked for shape {shape:?}, the given noise {dims:?} provides {expected:?}"
            );
        }
        if frames.end > dims[2] {
            candle_core::bail!(
                "noise of chunk {chunk}: needs latent frames {frames:?}, the given noise has only {}",
                dims[2]
            );
        }
        self.noise
            .narrow(2, frames.start, frames.len())?
            .contiguous()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// A stream starting at frame 8 m of another, with offset 2 m, draws the
    /// other's noise from its second chunk on.
    #[test]
    fn an_offset_stream_draws_the_longer_streams_noise() {
        let shape = [1, LATENT_CHANNELS, 2, 3, 4];
        let (mut whole, mut segment) = (SeededNoise::new(5), SeededNoise::with_offset(5, 2 * 3));
        for k in 1..4 {
            assert_eq!(
                values(&segment.chunk_noise(k, shape).unwrap()),
                values(&whole.chunk_noise(k + 3, shape).unwrap()),
                "chunk {k}"
            );
        }
        let first = [1, LATENT_CHANNELS, 6, 3, 4];
        assert_ne!(
            values(&segment.chunk_noise(0, first).unwrap()),
            values(&SeededNoise::new(5).chunk_noise(0, first).unwrap())
        );
    }

    #[test]
    fn xoshiro_matches_its_reference_output() {
        // xoshiro256** from state [1, 2, 3, 4] (reference values of the algorithm)
        let mut rng = Xoshiro256StarStar([1, 2, 3, 4]);
        let first: Vec<u64> = (0..3).map(|_| rng.next_u64()).collect();
        assert_eq!(first, [11520, 0, 1509978240]);
        // SplitMix64 from 0 (reference value of the algorithm)
        assert_eq!(SplitMix64(0).next(), 0xE220_A839_7B1D_CDAF);
    }

    #[test]
    fn seeded_noise_is_standard_normal() {
        let mut source = SeededNoise::new(7);
        let t = source.chunk_noise(0, [1, 16, 6, 32, 32]).unwrap();
        let v = values(&t);
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var.sqrt() - 1.0).abs() < 0.01, "std {}", var.sqrt());
        let beyond_3_sigma = v.iter().filter(|x| x.abs() > 3.0).count() as f64 / n;
        assert!((beyond_3_sigma - 0.0027).abs() < 0.001, "{beyond_3_sigma}");
        assert!(v.iter().all(|x| x.is_finite()));
    }

    #[test]
    fn seeded_noise_is_reproducible_and_seed_dependent() {
        let a = SeededNoise::new(1)
            .chunk_noise(3, [1, 16, 2, 8, 8])
            .unwrap();
        let b = SeededNoise::new(1)
            .chunk_noise(3, [1, 16, 2, 8, 8])
            .unwrap();
        let c = SeededNoise::new(2)
            .chunk_noise(3, [1, 16, 2, 8, 8])
            .unwrap();
        assert_eq!(values(&a), values(&b));
        assert_ne!(values(&a), values(&c));
    }

    #[test]
    fn chunks_are_slices_of_one_whole_stream_noise() {
        let mut seeded = SeededNoise::new(11);
        let chunks: Vec<Tensor> = (0..4)
            .map(|k| {
                let f = chunk_noise_frames(k).len();
                seeded.chunk_noise(k, [1, 16, f, 4, 8]).unwrap()
            })
            .collect();
        let whole = Tensor::cat(&chunks, 2).unwrap();
        assert_eq!(whole.dims(), [1, 16, 12, 4, 8]);
        // feeding the concatenation back as fixed noise gives the same chunks
        let mut fixed = FixedNoise::new(whole).unwrap();
        for (k, chunk) in chunks.iter().enumerate() {
            let again = fixed
                .chunk_noise(k, chunk.dims().try_into().unwrap())
                .unwrap();
            assert_eq!(values(&again), values(chunk), "chunk {k}");
        }
        // distinct latent frames get distinct values
        let f0 = values(&chunks[1].narrow(2, 0, 1).unwrap());
        let f1 = values(&chunks[1].narrow(2, 1, 1).unwrap());
        assert_ne!(f0, f1);
    }

    #[test]
    fn wrong_shapes_are_errors() {
        assert!(
            SeededNoise::new(0)
                .chunk_noise(0, [1, 16, 2, 8, 8])
                .is_err()
        );
        assert!(SeededNoise::new(0).chunk_noise(1, [1, 4, 2, 8, 8]).is_err());
        let whole = Tensor::zeros((1, 16, 8, 4, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(FixedNoise::new(whole.narrow(1, 0, 8).unwrap()).is_err());
        let mut fixed = FixedNoise::new(whole).unwrap();
        assert!(fixed.chunk_noise(1, [1, 16, 2, 4, 4]).is_ok());
        assert!(fixed.chunk_noise(1, [1, 16, 2, 8, 8]).is_err());
        let err = fixed
            .chunk_noise(2, [1, 16, 2, 4, 4])
            .unwrap_err()
            .to_string();
        assert!(err.contains("8..10"), "{err}");
    }
}
