pub mod pth;
pub mod weights;
