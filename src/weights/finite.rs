//! The check that a tensor's stored values are all finite, on its raw bytes before the
//! tensor is made (so it costs one read of bytes that are being read anyway, on any
//! device, with no temporary tensor). A NaN or infinity in a weight would turn every
//! output frame into garbage; refusing it at load names the file and tensor at fault.

use candle_core::DType;
use rayon::prelude::*;

/// Elements checked per parallel task.
const CHUNK_ELEMENTS: usize = 1 << 20;

/// The index of the first element of `bytes` (elements of `dtype`, little- or
/// big-endian) that is NaN or infinite, if any. Types without non-finite values (and
/// those this loader does not read) give `None`.
pub fn first_non_finite(bytes: &[u8], dtype: DType, little_endian: bool) -> Option<usize> {
    // A float is NaN or infinite exactly when its exponent bits are all ones.
    match dtype {
        DType::F32 => find::<4>(bytes, little_endian, 0x7f80_0000),
        DType::BF16 => find::<2>(bytes, little_endian, 0x7f80),
        DType::F16 => find::<2>(bytes, little_endian, 0x7c00),
        DType::F64 => find::<8>(bytes, little_endian, 0x7ff0_0000_0000_0000),
        _ => None,
    }
}

fn find<const N: usize>(bytes: &[u8], little_endian: bool, exponent: u64) -> Option<usize> {
    let is_non_finite = |element: &[u8]| {
        let mut word = [0u8; 8];
        if little_endian {
            word[..N].copy_from_slice(element);
        } else {
            for (w, b) in word[..N].iter_mut().zip(element.iter().rev()) {
                *w = *b;
            }
        }
        u64::from_le_bytes(word) & exponent == exponent
    };
    bytes
        .par_chunks(CHUNK_ELEMENTS * N)
        .enumerate()
        .find_map_first(|(chunk, data)| {
            data.chunks_exact(N)
                .position(is_non_finite)
                .map(|i| chunk * CHUNK_ELEMENTS + i)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    #[test]
    fn finds_nan_and_infinity_in_each_float_type() {
        let f32s = [1.0f32, -0.0, f32::MAX, f32::MIN_POSITIVE, f32::NAN];
        let le: Vec<u8> = f32s.iter().flat_map(|v| v.to_le_bytes()).collect();
        let be: Vec<u8> = f32s.iter().flat_map(|v| v.to_be_bytes()).collect();
        assert_eq!(first_non_finite(&le, DType::F32, true), Some(4));
        assert_eq!(first_non_finite(&be, DType::F32, false), Some(4));
        assert_eq!(first_non_finite(&le[..16], DType::F32, true), None);
        assert_eq!(first_non_finite(&be[..16], DType::F32, false), None);

        let bf: Vec<u8> = [bf16::ONE, bf16::MAX, bf16::NEG_INFINITY]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(first_non_finite(&bf, DType::BF16, true), Some(2));
        assert_eq!(first_non_finite(&bf[..4], DType::BF16, true), None);

        let hf: Vec<u8> = [f16::MAX, f16::INFINITY, f16::ONE]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(first_non_finite(&hf, DType::F16, true), Some(1));
        // The exponent field differs per type: bf16's largest value is a NaN as f16.
        let bf_max = bf16::MAX.to_le_bytes();
        assert_eq!(first_non_finite(&bf_max, DType::BF16, true), None);
        assert_eq!(first_non_finite(&bf_max, DType::F16, true), Some(0));
    }

    #[test]
    fn index_counts_across_parallel_chunks() {
        let mut values = vec![0.5f32; CHUNK_ELEMENTS * 3];
        let at = CHUNK_ELEMENTS * 2 + 17;
        values[at] = f32::INFINITY;
        values[at + 5] = f32::NAN;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(first_non_finite(&bytes, DType::F32, true), Some(at));
    }
}
