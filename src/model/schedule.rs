//! The streaming schedule of FlashVSR: which LQ frames, noise frames and output
//! frames belong to each chunk (docs/model.md, section "The streaming schedule").
//!
//! Chunk 0 consumes LQ frames 0..25 and outputs frames 0..21; chunk k >= 1 consumes
//! 8 more (up to 8k+25) and outputs 8k+13..8k+21, a 4-frame look-ahead.

use std::ops::Range;

/// Input frames needed before the first chunk can run.
pub const FIRST_CHUNK_INPUT: usize = 25;
/// Frames added and output by every chunk after the first.
pub const CHUNK_STRIDE: usize = 8;
/// Frames output by the first chunk.
pub const FIRST_CHUNK_OUTPUT: usize = 21;
/// Channels of the VAE latent space the DiT works in.
pub const LATENT_CHANNELS: usize = 16;
/// LQ frames per LQ-projection clip (one latent frame each).
pub const CLIP_FRAMES: usize = 4;

/// LQ frames that `run_chunk` takes for chunk `k`: the projection's input followed by
/// nothing else; it starts at the first frame used as decoder condition.
pub fn chunk_lq_span(k: usize) -> Range<usize> {
    if k == 0 {
        0..FIRST_CHUNK_INPUT
    } else {
        8 * k + 13..8 * k + 25
    }
}

/// LQ frames fed to the LQ projection in chunk `k` (a subrange of `chunk_lq_span`).
pub fn chunk_projection_span(k: usize) -> Range<usize> {
    if k == 0 {
        0..FIRST_CHUNK_INPUT
    } else {
        8 * k + 17..8 * k + 25
    }
}

/// Output frames of chunk `k`; also the LQ frames its decoder takes as condition.
pub fn chunk_output_span(k: usize) -> Range<usize> {
    if k == 0 {
        0..FIRST_CHUNK_OUTPUT
    } else {
        8 * k + 13..8 * k + 21
    }
}

/// Latent frames of the whole-stream noise that chunk `k` denoises; their indices are
/// also the chunk's RoPE time positions.
pub fn chunk_noise_frames(k: usize) -> Range<usize> {
    if k == 0 { 0..6 } else { 4 + 2 * k..6 + 2 * k }
}

/// Number of chunks that must run so that frames `0..n_frames` are all output.
pub fn chunks_for(n_frames: usize) -> usize {
    if n_frames == 0 {
        0
    } else if n_frames <= FIRST_CHUNK_OUTPUT {
        1
    } else {
        1 + (n_frames - FIRST_CHUNK_OUTPUT).div_ceil(CHUNK_STRIDE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_tile_the_stream_without_gaps() {
        let mut next = 0;
        for k in 0..50 {
            let out = chunk_output_span(k);
            assert_eq!(out.start, next, "chunk {k}");
            next = out.end;
            let lq = chunk_lq_span(k);
            assert_eq!(lq.start, out.start);
            assert_eq!(chunk_projection_span(k).end, lq.end);
            // a 4-frame look-ahead after the first chunk
            if k > 0 {
                assert_eq!(lq.end - out.end, 4);
                assert_eq!(chunk_noise_frames(k).len(), 2);
            }
        }
    }

    #[test]
    fn chunk_count_covers_every_frame() {
        for n in 1..300 {
            let c = chunks_for(n);
            assert!(chunk_output_span(c - 1).end >= n, "n={n}");
            if c > 1 {
                assert!(chunk_output_span(c - 2).end < n, "n={n}");
            }
        }
        assert_eq!(chunks_for(21), 1);
        assert_eq!(chunks_for(22), 2);
        assert_eq!(chunks_for(37), 3);
        assert_eq!(chunks_for(45), 4);
    }
}
