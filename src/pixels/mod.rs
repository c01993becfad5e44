//! Pixel work outside the network: the PIL-exact bicubic pre-upscale and the
//! conversions between packed 8-bit RGB frames and the model's tensors.

pub mod bicubic;
pub mod frames;
