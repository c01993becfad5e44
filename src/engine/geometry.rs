//! The sizes of one stream's frames: input, output (the input times the scale)
//! and padded (the output grown to the model's grid of `SIZE_MULTIPLE` pixels).

use super::{EngineError, SIZE_MULTIPLE};

/// Sizes of one stream's frames: input, upscaled (the output) and padded (the model's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub in_width: usize,
    pub in_height: usize,
    pub out_width: usize,
    pub out_height: usize,
    pub padded_width: usize,
    pub padded_height: usize,
}

impl Geometry {
    pub fn new(in_width: u32, in_height: u32, scale: u32) -> Result<Self, EngineError> {
        let too_large = || {
            EngineError::InvalidFrame(format!(
                "{in_width}x{in_height} frames are too large to upscale x{scale}"
            ))
        };
        let out_width = (in_width as usize)
            .checked_mul(scale as usize)
            .ok_or_else(too_large)?;
        let out_height = (in_height as usize)
            .checked_mul(scale as usize)
            .ok_or_else(too_large)?;
        let padded_width = out_width.div_ceil(SIZE_MULTIPLE) * SIZE_MULTIPLE;
        let padded_height = out_height.div_ceil(SIZE_MULTIPLE) * SIZE_MULTIPLE;
        padded_width
            .checked_mul(padded_height)
            .and_then(|n| n.checked_mul(3))
            .ok_or_else(too_large)?;
        Ok(Self {
            in_width: in_width as usize,
            in_height: in_height as usize,
            out_width,
            out_height,
            padded_width,
            padded_height,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_pads_to_multiples_of_128() {
        let g = Geometry::new(17, 9, 4).unwrap();
        assert_eq!((g.out_width, g.out_height), (68, 36));
        assert_eq!((g.padded_width, g.padded_height), (128, 128));
        let g = Geometry::new(176, 144, 4).unwrap();
        assert_eq!((g.padded_width, g.padded_height), (768, 640));
        let g = Geometry::new(64, 96, 4).unwrap();
        assert_eq!((g.padded_width, g.padded_height), (256, 384));
        assert!(Geometry::new(u32::MAX, u32::MAX, 4).is_err());
    }
}
