//! The seam check of tiled streams: the mean gradient across tile borders
//! against the mean gradient everywhere else. A visible seam is a step at the
//! border, which shows as border gradients larger than the image's own.
//!
//! Tile borders fall on multiples of 16 output pixels (a DiT token,
//! `engine::TILE_ALIGN`), and the model's output has structure of that period
//! (its gradients differ between even and odd columns, and at token edges), so
//! a border is compared with the gradients at the same phase: between pixels
//! `x - 1` and `x` for `x` a multiple of `PHASE` that is not a border.

use std::ops::Range;

/// The period of the positions compared (tile starts are multiples of it).
pub const PHASE: usize = 16;

/// Mean absolute differences between neighbouring pixels (all channels), across
/// tile borders and elsewhere, kept per direction: a column border is compared
/// with the other horizontal differences, a row border with the vertical ones.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SeamStats {
    horizontal: Direction,
    vertical: Direction,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Direction {
    border_sum: f64,
    border_count: u64,
    inside_sum: f64,
    inside_count: u64,
}

impl Direction {
    fn record(&mut self, border: bool, difference: f64) {
        if border {
            self.border_sum += difference;
            self.border_count += 1;
        } else {
            self.inside_sum += difference;
            self.inside_count += 1;
        }
    }
}

impl SeamStats {
    /// Mean gradient across the borders (0 when there is none).
    pub fn border(&self) -> f64 {
        let (h, v) = (&self.horizontal, &self.vertical);
        mean(h.border_sum + v.border_sum, h.border_count + v.border_count)
    }

    /// Mean gradient between neighbours that no border separates, at positions
    /// that are multiples of `PHASE`, each direction weighted as in `border`.
    pub fn inside(&self) -> f64 {
        let (h, v) = (&self.horizontal, &self.vertical);
        let weighted = mean(h.inside_sum, h.inside_count) * h.border_count as f64
            + mean(v.inside_sum, v.inside_count) * v.border_count as f64;
        mean(weighted, h.border_count + v.border_count)
    }

    /// Differences measured across borders.
    pub fn border_samples(&self) -> u64 {
        self.horizontal.border_count + self.vertical.border_count
    }

    /// Adds one packed RGB24 frame of `width x height`. `columns` and `rows`:
    /// the borders, each the index of the first pixel after it (the gradient
    /// between pixels `x - 1` and `x` is a border's for `x` in `columns`).
    pub fn add_frame(
        &mut self,
        rgb: &[u8],
        width: usize,
        height: usize,
        columns: &[usize],
        rows: &[usize],
    ) {
        let at = |x: usize, y: usize, c: usize| rgb[(y * width + x) * 3 + c] as f64;
        for y in 0..height {
            for x in 0..width {
                for c in 0..3 {
                    if x > 0 && x % PHASE == 0 {
                        let d = (at(x, y, c) - at(x - 1, y, c)).abs();
                        self.horizontal.record(columns.contains(&x), d);
                    }
                    if y > 0 && y % PHASE == 0 {
                        let d = (at(x, y, c) - at(x, y - 1, c)).abs();
                        self.vertical.record(rows.contains(&y), d);
                    }
                }
            }
        }
    }
}

fn mean(sum: f64, count: u64) -> f64 {
    if count == 0 { 0.0 } else { sum / count as f64 }
}

/// The borders of tiles along one axis, inside `0..len`: where a tile other than
/// the first starts and where one other than the last ends, sorted, once each.
pub fn borders(spans: &[Range<usize>], len: usize) -> Vec<usize> {
    let mut out: Vec<usize> = spans
        .iter()
        .flat_map(|s| [s.start, s.end])
        .filter(|&x| x > 0 && x < len)
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_at_a_border_shows_and_a_smooth_image_does_not() {
        let (w, h) = (64, 4);
        // a ramp of 2 levels per pixel, with a step of 40 at column 16
        let frame = |step: u8| -> Vec<u8> {
            (0..h)
                .flat_map(|_| {
                    (0..w).flat_map(move |x| {
                        // odd columns step by 3, even ones by 1: only the
                        // even ones are compared with the border
                        let v = (x as u8 * 2 + x as u8 % 2) + if x >= 16 { step } else { 0 };
                        [v, v, v]
                    })
                })
                .collect()
        };
        let mut smooth = SeamStats::default();
        smooth.add_frame(&frame(0), w, h, &[16], &[]);
        assert!(smooth.border() <= smooth.inside(), "{smooth:?}");
        let mut seam = SeamStats::default();
        seam.add_frame(&frame(40), w, h, &[16], &[]);
        assert!(seam.border() > 10.0 * seam.inside(), "{seam:?}");
        assert_eq!(seam.border_samples(), (h * 3) as u64);
    }

    #[test]
    fn borders_are_tile_starts_and_ends_inside_the_frame() {
        assert_eq!(borders(&[0..256, 128..384], 384), vec![128, 256]);
        assert_eq!(borders(&[0..256, 128..384], 300), vec![128, 256]);
        let whole = std::iter::once(0..384).collect::<Vec<_>>();
        assert_eq!(borders(&whole, 384), Vec::<usize>::new());
    }
}
