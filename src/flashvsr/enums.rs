//! The element's enum properties as GEnums, and their engine counterparts.

use gst::glib;

use crate::engine;
use crate::model::color_fix::ColorFix as EngineColorFix;

/// Which FlashVSR release the weights in `model-dir` come from. Both releases use the
/// same file names and tensor shapes, so this cannot be read from the files.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstFlashVsrModelVersion")]
pub enum ModelVersion {
    #[enum_value(name = "FlashVSR v1 (Buffer LQ projection)", nick = "v1")]
    V1 = 0,
    #[enum_value(name = "FlashVSR v1.1 (Causal LQ projection)", nick = "v1-1")]
    V1_1 = 1,
}

impl From<ModelVersion> for engine::ModelVersion {
    fn from(v: ModelVersion) -> Self {
        match v {
            ModelVersion::V1 => engine::ModelVersion::V1,
            ModelVersion::V1_1 => engine::ModelVersion::V1_1,
        }
    }
}

/// Lets applications that parse settings the engine's way set the property.
impl From<engine::ModelVersion> for ModelVersion {
    fn from(v: engine::ModelVersion) -> Self {
        match v {
            engine::ModelVersion::V1 => ModelVersion::V1,
            engine::ModelVersion::V1_1 => ModelVersion::V1_1,
        }
    }
}

/// Floating-point type the weights are run in.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstFlashVsrPrecision")]
pub enum Precision {
    #[enum_value(name = "32-bit float", nick = "f32")]
    F32 = 0,
    #[enum_value(name = "bfloat16", nick = "bf16")]
    Bf16 = 1,
    #[enum_value(name = "16-bit float", nick = "f16")]
    F16 = 2,
}

impl From<Precision> for engine::Precision {
    fn from(p: Precision) -> Self {
        match p {
            Precision::F32 => engine::Precision::F32,
            Precision::Bf16 => engine::Precision::Bf16,
            Precision::F16 => engine::Precision::F16,
        }
    }
}

/// Lets applications that parse settings the engine's way set the property.
impl From<engine::Precision> for Precision {
    fn from(p: engine::Precision) -> Self {
        match p {
            engine::Precision::F32 => Precision::F32,
            engine::Precision::Bf16 => Precision::Bf16,
            engine::Precision::F16 => Precision::F16,
        }
    }
}

/// Colour correction of the output towards the input.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstFlashVsrColorFix")]
pub enum ColorFix {
    #[enum_value(name = "No correction", nick = "none")]
    None = 0,
    #[enum_value(
        name = "Per-channel mean and deviation of the input (AdaIN)",
        nick = "adain"
    )]
    Adain = 1,
    #[enum_value(name = "Low frequencies of the input (wavelet)", nick = "wavelet")]
    Wavelet = 2,
}

impl From<ColorFix> for EngineColorFix {
    fn from(c: ColorFix) -> Self {
        match c {
            ColorFix::None => EngineColorFix::None,
            ColorFix::Adain => EngineColorFix::Adain,
            ColorFix::Wavelet => EngineColorFix::Wavelet,
        }
    }
}
