//! Colour correction of decoded frames towards the LQ input (interface only; the
//! implementation lands from the `pixels` branch).

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ColorFix {
    None,
    #[default]
    Adain,
    Wavelet,
}
