//! Fast seeded pseudo-random tensor values, streamed as little-endian bytes.
//!
//! Generating 1.4 G values for the full-size DiT must take seconds, not minutes: one
//! xorshift64* step per value, and an approximate normal from the four 16-bit lanes of
//! that one draw (an Irwin-Hall sum, which is also bounded, so no value is extreme).

use std::io::{self, Write};

use candle_core::DType;
use half::{bf16, f16};

/// Values generated (and converted) per write: 256 KiB of f32.
const CHUNK_VALUES: usize = 1 << 16;

/// Mean of the sum of four uniform 16-bit lanes.
const LANES_MEAN: f32 = 4.0 * 65535.0 / 2.0;
/// Standard deviation of that sum: sqrt(4 * (65536^2 - 1) / 12).
const LANES_STD: f32 = 37_837.227;

/// xorshift64* (Vigna): a small, fast generator, good enough for weights.
#[derive(Debug, Clone)]
pub struct NormalSource {
    state: u64,
}

impl NormalSource {
    /// A generator for `seed`; different seeds give unrelated streams.
    pub fn new(seed: u64) -> Self {
        // splitmix64 spreads similar seeds apart; xorshift must not start at zero.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        Self { state: z.max(1) }
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Approximately standard normal (mean 0, variance 1), within +-3.47.
    pub fn next_normal(&mut self) -> f32 {
        let r = self.next_u64();
        let lanes = (r & 0xffff) + ((r >> 16) & 0xffff) + ((r >> 32) & 0xffff) + (r >> 48);
        (lanes as f32 - LANES_MEAN) * (1.0 / LANES_STD)
    }
}

/// How generated values are stored: the dtypes the weight files hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueEncoding {
    F32,
    Bf16,
    F16,
}

impl ValueEncoding {
    pub fn of(dtype: DType) -> Option<Self> {
        match dtype {
            DType::F32 => Some(Self::F32),
            DType::BF16 => Some(Self::Bf16),
            DType::F16 => Some(Self::F16),
            _ => None,
        }
    }
}

/// `count` values `mean + std * normal` from one generator.
#[derive(Debug)]
pub struct NormalValues {
    pub source: NormalSource,
    pub count: usize,
    pub mean: f32,
    pub std: f32,
}

impl NormalValues {
    /// Passes the values to `sink` as little-endian bytes in `encoding`, a chunk at a
    /// time; stops at the first error of `sink`.
    pub fn emit<E>(
        self,
        encoding: ValueEncoding,
        sink: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        match encoding {
            ValueEncoding::F32 => self.emit_as(sink, |v, b| b.extend_from_slice(&v.to_le_bytes())),
            ValueEncoding::Bf16 => self.emit_as(sink, |v, b| {
                b.extend_from_slice(&bf16::from_f32(v).to_le_bytes())
            }),
            ValueEncoding::F16 => self.emit_as(sink, |v, b| {
                b.extend_from_slice(&f16::from_f32(v).to_le_bytes())
            }),
        }
    }

    /// `encode` appends one value's bytes (an instance per encoding, so that the inner
    /// loop has no branch on it).
    fn emit_as<E>(
        mut self,
        mut sink: impl FnMut(&[u8]) -> Result<(), E>,
        encode: impl Fn(f32, &mut Vec<u8>),
    ) -> Result<(), E> {
        let mut bytes = Vec::with_capacity(CHUNK_VALUES.min(self.count) * 4);
        let mut left = self.count;
        while left > 0 {
            let n = left.min(CHUNK_VALUES);
            bytes.clear();
            for _ in 0..n {
                encode(self.mean + self.std * self.source.next_normal(), &mut bytes);
            }
            sink(&bytes)?;
            left -= n;
        }
        Ok(())
    }

    /// Writes the values to `out`.
    pub fn write(self, encoding: ValueEncoding, out: &mut dyn Write) -> io::Result<()> {
        self.emit(encoding, |bytes| out.write_all(bytes))
    }

    /// The values as bytes in memory.
    pub fn to_bytes(self, encoding: ValueEncoding) -> Vec<u8> {
        let mut all = Vec::new();
        let Ok(()) = self.emit(encoding, |bytes| {
            all.extend_from_slice(bytes);
            Ok::<(), std::convert::Infallible>(())
        });
        all
    }
}
