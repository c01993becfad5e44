pub mod bicubic;
pub mod color_fix;
pub mod frames;
