//! What the engine is asked to do, checked before any weight is loaded.

use std::fmt;
use std::ops::RangeInclusive;
use std::path::PathBuf;

use candle_core::{DType, Device};

use super::{EngineError, SIZE_MULTIPLE};
use crate::layers::attention_path::AttentionKernel;
use crate::layers::kernels::KernelPath;
use crate::model::ModelVersion;
use crate::model::color_fix::ColorFix;
use crate::model::decoder::DecoderKind;

/// The dtype the model computes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Precision {
    #[default]
    F32,
    Bf16,
    F16,
}

impl Precision {
    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::Bf16 => DType::BF16,
            Self::F16 => DType::F16,
        }
    }
}

/// A parsed `device` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
}

impl DeviceSpec {
    /// Accepts "cpu", "cuda" (GPU 0) and "cuda:N". CUDA needs a build with the `cuda`
    /// feature; without it the error says so rather than failing later.
    pub fn parse(s: &str) -> Result<Self, EngineError> {
        let text = s.trim().to_ascii_lowercase();
        let spec = match text.as_str() {
            "cpu" => Self::Cpu,
            "cuda" => Self::Cuda(0),
            _ => match text.strip_prefix("cuda:") {
                Some(n) => Self::Cuda(n.parse().map_err(|_| {
                    EngineError::setting(
                        "device",
                        format!("{s:?}: the GPU index after \"cuda:\" must be a number"),
                    )
                })?),
                None => {
                    return Err(EngineError::setting(
                        "device",
                        format!("unknown device {s:?}; expected \"cpu\" or \"cuda:N\""),
                    ));
                }
            },
        };
        if matches!(spec, Self::Cuda(_)) && !cfg!(feature = "cuda") {
            return Err(EngineError::setting(
                "device",
                format!("{s:?}: this build has no CUDA support (build with `--features cuda`)"),
            ));
        }
        Ok(spec)
    }

    /// Opens the device; fails when the GPU is absent or its driver cannot start.
    pub fn open(self) -> Result<Device, EngineError> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(n) => super::cuda_device::open(n).map_err(|e| EngineError::device(self, e)),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

// The accepted range of each numeric setting: `validate` checks them, the
// element's property specs and caps, and the examples' help take them from here.
pub const SCALE_RANGE: RangeInclusive<u32> = 2..=4;
pub const SPARSE_RATIO_RANGE: RangeInclusive<f64> = 0.1..=16.0;
pub const KV_RATIO_RANGE: RangeInclusive<f64> = 1.0..=16.0;
pub const LOCAL_RANGE_RANGE: RangeInclusive<u32> = 1..=63;
/// `tile_size`: 0 (tiles only when the memory budget needs them) or a multiple of
/// `SIZE_MULTIPLE` (the model's frame sides are) up to 8192 output pixels.
pub const TILE_SIZE_RANGE: RangeInclusive<u32> = 0..=8192;
/// `tile_overlap`: a multiple of `TILE_OVERLAP_MULTIPLE`, less than the tile.
pub const TILE_OVERLAP_RANGE: RangeInclusive<u32> = 0..=8184;
/// Tile starts and overlaps are multiples of this: the noise is cropped with
/// the frame at 1/8 size.
pub const TILE_OVERLAP_MULTIPLE: u32 = 8;

/// Everything the engine needs to know; `Default` gives the official settings
/// (v1.1 weights, x4, f32 on the CPU, adain colour fix) with no model folder.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineSettings {
    /// Folder with the released weight files.
    pub model_dir: PathBuf,
    pub model_version: ModelVersion,
    /// Upscaling factor: 2, 3 or 4.
    pub scale: u32,
    pub precision: Precision,
    /// "cpu", or "cuda:N" in a build with the `cuda` feature.
    pub device: String,
    pub color_fix: ColorFix,
    /// Share of attention blocks kept (scaled to the frame size by the model).
    pub sparse_ratio: f64,
    /// Time windows of 2 latent frames kept in the KV cache.
    pub kv_ratio: f64,
    /// Width, in 8x8-token blocks, of the spatial window attention may look at.
    pub local_range: u32,
    /// Seed of the per-stream noise.
    pub seed: u64,
    /// Latent frames every stream's noise is shifted by
    /// (`SeededNoise::with_offset`): a segment of a file rendered from frame
    /// `8 k` passes `2 k` to draw the whole file's noise.
    pub noise_offset: u64,
    /// `Portable` runs the candle-op path that CUDA takes even on the CPU (to
    /// prove the device path here); `Fast` (default) uses the CPU fast paths.
    pub kernels: KernelPath,
    /// The portable path's block-sparse attention (`model::attention_check`):
    /// `Auto` checks the fused CUDA kernel at load and falls back to the
    /// gathered path; the others force a path.
    pub attention: AttentionKernel,
    /// The decoder: the TCDecoder (`Tiny`, default) or the Wan2.1 VAE's (`Wan`,
    /// FlashVSR's "full" mode; the folder must also hold `Wan2.1_VAE.pth`).
    pub decoder: DecoderKind,
    /// Bytes a stream may take (`engine::memory`): a frame size whose estimate is
    /// larger runs in tiles, or is refused. `None`: `MemAvailable` when the
    /// stream starts, on the CPU; the device's free memory on CUDA.
    pub max_memory: Option<u64>,
    /// Side, in output pixels, of the square tiles a stream runs as separate model
    /// sequences (`engine::tiles`); 0: whole frames, unless the memory budget
    /// needs tiles, then the largest that fit. A tile larger than the frame
    /// covers it whole.
    pub tile_size: u32,
    /// Output pixels neighbouring tiles share and blend over (at least; the
    /// tiles are spread evenly).
    pub tile_overlap: u32,
    /// Side, in output pixels, of the square tiles the decoder decodes each
    /// sequence's frames in (`model::tcdecoder::DecoderTiling`, overlapping by
    /// `DecoderTiling::OVERLAP`, whatever `tile_overlap`); 0: whole
    /// frames, unless the memory budget needs decoder tiles, then the largest
    /// that fit.
    pub decoder_tile_size: u32,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            model_dir: PathBuf::new(),
            model_version: ModelVersion::V1_1,
            scale: 4,
            precision: Precision::F32,
            device: "cpu".to_owned(),
            color_fix: ColorFix::Adain,
            sparse_ratio: 2.0,
            kv_ratio: 3.0,
            local_range: 11,
            seed: 0,
            noise_offset: 0,
            kernels: KernelPath::Fast,
            attention: AttentionKernel::Auto,
            decoder: DecoderKind::Tiny,
            max_memory: None,
            tile_size: 0,
            tile_overlap: 64,
            decoder_tile_size: 0,
        }
    }
}

impl EngineSettings {
    /// Checks every field; the error names the first field at fault and its value.
    pub fn validate(&self) -> Result<(), EngineError> {
        if self.model_dir.as_os_str().is_empty() {
            return Err(EngineError::setting(
                "model_dir",
                "no model folder given (it must hold the FlashVSR weight files)",
            ));
        }
        if !SCALE_RANGE.contains(&self.scale) {
            return Err(EngineError::setting(
                "scale",
                format!(
                    "must be in {}..={}, got {}",
                    SCALE_RANGE.start(),
                    SCALE_RANGE.end(),
                    self.scale
                ),
            ));
        }
        DeviceSpec::parse(&self.device)?;
        check_ratio("sparse_ratio", self.sparse_ratio, SPARSE_RATIO_RANGE)?;
        check_ratio("kv_ratio", self.kv_ratio, KV_RATIO_RANGE)?;
        if !LOCAL_RANGE_RANGE.contains(&self.local_range) {
            return Err(EngineError::setting(
                "local_range",
                format!(
                    "must be in {}..={}, got {}",
                    LOCAL_RANGE_RANGE.start(),
                    LOCAL_RANGE_RANGE.end(),
                    self.local_range
                ),
            ));
        }
        self.validate_tiles()
    }

    fn validate_tiles(&self) -> Result<(), EngineError> {
        let (tile, overlap) = (self.tile_size, self.tile_overlap);
        for (field, side) in [
            ("tile_size", tile),
            ("decoder_tile_size", self.decoder_tile_size),
        ] {
            if !TILE_SIZE_RANGE.contains(&side) || !side.is_multiple_of(SIZE_MULTIPLE as u32) {
                return Err(EngineError::setting(
                    field,
                    format!(
                        "must be 0 (automatic) or a multiple of {SIZE_MULTIPLE} up to {}, got {side}",
                        TILE_SIZE_RANGE.end()
                    ),
                ));
            }
        }
        if !TILE_OVERLAP_RANGE.contains(&overlap) || !overlap.is_multiple_of(TILE_OVERLAP_MULTIPLE)
        {
            return Err(EngineError::setting(
                "tile_overlap",
                format!(
                    "must be a multiple of {TILE_OVERLAP_MULTIPLE} up to {}, got {overlap}",
                    TILE_OVERLAP_RANGE.end()
                ),
            ));
        }
        if tile > 0 && overlap >= tile {
            return Err(EngineError::setting(
                "tile_overlap",
                format!("must be less than the tile size {tile}, got {overlap}"),
            ));
        }
        Ok(())
    }

    pub fn device_spec(&self) -> Result<DeviceSpec, EngineError> {
        DeviceSpec::parse(&self.device)
    }
}

fn check_ratio(
    field: &'static str,
    value: f64,
    range: RangeInclusive<f64>,
) -> Result<(), EngineError> {
    if value.is_finite() && range.contains(&value) {
        Ok(())
    } else {
        Err(EngineError::setting(
            field,
            format!(
                "must be in {}..={}, got {value}",
                range.start(),
                range.end()
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> EngineSettings {
        EngineSettings {
            model_dir: PathBuf::from("/models/FlashVSR-v1.1"),
            ..EngineSettings::default()
        }
    }

    fn field_of(result: Result<(), EngineError>) -> &'static str {
        match result {
            Err(EngineError::InvalidSetting { field, .. }) => field,
            other => panic!("expected an invalid setting, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_the_official_settings() {
        let s = EngineSettings::default();
        assert_eq!(s.model_version, ModelVersion::V1_1);
        assert_eq!(s.scale, 4);
        assert_eq!(s.precision, Precision::F32);
        assert_eq!(s.device, "cpu");
        assert_eq!(s.color_fix, ColorFix::Adain);
        assert_eq!(
            (s.sparse_ratio, s.kv_ratio, s.local_range, s.seed),
            (2.0, 3.0, 11, 0)
        );
        // no folder: invalid until the caller names one
        assert_eq!(field_of(s.validate()), "model_dir");
        valid().validate().unwrap();
    }

    #[test]
    fn each_out_of_range_field_is_named() {
        /// Makes one field of valid settings invalid.
        type Breaker = fn(&mut EngineSettings);
        let cases: [(&str, Breaker); 19] = [
            ("model_dir", |s| s.model_dir = PathBuf::new()),
            ("scale", |s| s.scale = 1),
            ("scale", |s| s.scale = 5),
            ("device", |s| s.device = "tpu".into()),
            ("device", |s| s.device = "cuda:x".into()),
            ("sparse_ratio", |s| s.sparse_ratio = 0.0),
            ("sparse_ratio", |s| s.sparse_ratio = f64::NAN),
            ("sparse_ratio", |s| s.sparse_ratio = 17.0),
            ("kv_ratio", |s| s.kv_ratio = 0.5),
            ("kv_ratio", |s| s.kv_ratio = f64::INFINITY),
            ("local_range", |s| s.local_range = 0),
            ("local_range", |s| s.local_range = 64),
            ("tile_size", |s| s.tile_size = 100),
            ("tile_size", |s| s.tile_size = 8320),
            ("tile_overlap", |s| s.tile_overlap = 12),
            ("tile_overlap", |s| s.tile_overlap = 8192),
            ("decoder_tile_size", |s| s.decoder_tile_size = 200),
            ("decoder_tile_size", |s| s.decoder_tile_size = 8320),
            ("tile_overlap", |s| {
                s.tile_size = 256;
                s.tile_overlap = 256
            }),
        ];
        for (field, break_it) in cases {
            let mut s = valid();
            break_it(&mut s);
            let err = s.validate();
            let text = err
                .as_ref()
                .map_err(|e| e.to_string())
                .err()
                .unwrap_or_default();
            assert_eq!(field_of(err), field, "{text}");
            assert!(text.contains(field), "{text}");
        }
        let mut edge = valid();
        edge.scale = 2;
        edge.sparse_ratio = 0.1;
        edge.kv_ratio = 1.0;
        edge.local_range = 63;
        edge.tile_size = 128;
        edge.tile_overlap = 120;
        edge.validate().unwrap();
        // without tiles any overlap in range is accepted (it applies to the
        // tiles the budget may pick)
        edge.tile_size = 0;
        edge.tile_overlap = 512;
        edge.validate().unwrap();
    }

    #[test]
    fn precision_dtypes() {
        assert_eq!(Precision::F32.dtype(), DType::F32);
        assert_eq!(Precision::Bf16.dtype(), DType::BF16);
        assert_eq!(Precision::F16.dtype(), DType::F16);
    }

    #[test]
    fn devices_parse() {
        assert_eq!(DeviceSpec::parse("cpu").unwrap(), DeviceSpec::Cpu);
        assert_eq!(DeviceSpec::parse(" CPU ").unwrap(), DeviceSpec::Cpu);
        for text in ["gpu", "cuda:", "cuda:-1", "cuda0"] {
            assert!(DeviceSpec::parse(text).is_err(), "{text}");
        }
        if cfg!(feature = "cuda") {
            assert_eq!(DeviceSpec::parse("cuda").unwrap(), DeviceSpec::Cuda(0));
            assert_eq!(DeviceSpec::parse("cuda:1").unwrap(), DeviceSpec::Cuda(1));
            assert_eq!(DeviceSpec::Cuda(1).to_string(), "cuda:1");
        } else {
            let err = DeviceSpec::parse("cuda:0").unwrap_err().to_string();
            assert!(err.contains("no CUDA support"), "{err}");
        }
    }
}
