//! The one error type of the engine: what the caller did wrong (a setting, a frame)
//! or what the model reported, with the model's own message kept intact.

use std::fmt;

use super::memory::{MemoryEstimate, human_bytes};
use crate::model::cancel::Cancelled;

#[derive(Debug)]
pub enum EngineError {
    /// A setting is out of range or malformed; `field` is the `EngineSettings` field.
    InvalidSetting {
        field: &'static str,
        message: String,
    },
    /// A pushed frame does not describe a valid packed RGB24 image.
    InvalidFrame(String),
    /// Frames of this size would need more memory than there is (the estimate of
    /// `engine::memory`); sizes are the output's. The figures are those of the
    /// least demanding layout the plan tried (`engine::tiles::plan`): its
    /// `estimate` (what the stream needs is `estimate.stream()`) and `tile`, the
    /// side of its tiles (`None`: whole frames).
    TooLarge {
        out_width: usize,
        out_height: usize,
        available: u64,
        tile: Option<usize>,
        estimate: Box<MemoryEstimate>,
    },
    /// Frames of this size would make a tensor of `elements` values, at or
    /// above what the device can index (`limit`, `memory::ELEMENT_LIMIT_CUDA`),
    /// in every layout the plan can choose (the `decoder_tile_size` or
    /// `tile_size` setting, or the smallest decoder tiles); sizes are the output's.
    TensorTooLarge {
        out_width: usize,
        out_height: usize,
        elements: u64,
        limit: u64,
    },
    /// The chunk in progress was stopped through `Engine::cancel_token` (a flush, a
    /// seek, a state change); the stream was dropped, nothing of it is returned.
    Cancelled,
    /// The model failed (loading weights, running a chunk); `context` says what the
    /// engine was doing, `source` is the model's error.
    Model {
        context: String,
        source: candle_core::Error,
    },
}

impl EngineError {
    pub(crate) fn setting(field: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidSetting {
            field,
            message: message.into(),
        }
    }

    /// A model error, or `Cancelled` when the model stopped at a cancellation check.
    pub(crate) fn model(context: impl Into<String>, source: candle_core::Error) -> Self {
        if Cancelled::is(&source) {
            return Self::Cancelled;
        }
        Self::Model {
            context: context.into(),
            source,
        }
    }

    /// A device that could not be opened, as one readable sentence. candle appends
    /// a captured backtrace to the text of most of its errors (`Error::bt`, whenever
    /// `RUST_BACKTRACE` or `RUST_LIB_BACKTRACE` is set), which in an element's error
    /// message or a command's output buries the reason under dozens of frames;
    /// only the first line of candle's message is kept, the backtrace is dropped.
    pub(crate) fn device(device: impl fmt::Display, source: candle_core::Error) -> Self {
        let reason = match without_backtrace(source) {
            candle_core::Error::NotCompiledWithCudaSupport => {
                "this build has no CUDA support (build with `--features cuda`)".to_owned()
            }
            other => {
                let text = other.to_string();
                let first = text.lines().next().unwrap_or_default().trim();
                format!("CUDA could not be initialised: {first}")
            }
        };
        Self::Model {
            context: format!("device {device}"),
            source: candle_core::Error::Msg(reason),
        }
    }
}

/// candle's error with the backtraces `Error::bt` wrapped around it removed, at
/// the top and under the context and path wrappers.
fn without_backtrace(err: candle_core::Error) -> candle_core::Error {
    use candle_core::Error;
    match err {
        Error::WithBacktrace { inner, .. } => without_backtrace(*inner),
        Error::Context { inner, context } => Error::Context {
            inner: Box::new(without_backtrace(*inner)),
            context,
        },
        Error::WithPath { inner, path } => Error::WithPath {
            inner: Box::new(without_backtrace(*inner)),
            path,
        },
        other => other,
    }
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidSetting { field, message } => {
                write!(f, "invalid setting `{field}`: {message}")
            }
            Self::InvalidFrame(message) => write!(f, "invalid frame: {message}"),
            Self::TooLarge {
                out_width,
                out_height,
                available,
                tile,
                estimate,
            } => {
                write!(
                    f,
                    "FlashVSR needs about {} for {out_width}x{out_height} output, {} available",
                    human_bytes(estimate.stream()),
                    human_bytes(*available)
                )?;
                if let Some(tile) = tile {
                    write!(f, " (in tiles of {tile}x{tile})")?;
                }
                f.write_str(": lower the scale or the input size")
            }
            Self::TensorTooLarge {
                out_width,
                out_height,
                elements,
                limit,
            } => write!(
                f,
                "FlashVSR would make a tensor of {elements} elements for {out_width}x{out_height} \
                 output, and the device indexes fewer than {limit}: set a smaller \
                 decoder-tile-size or tile-size, or lower the scale or the input size"
            ),
            Self::Cancelled => write!(f, "cancelled (flush, seek or state change)"),
            Self::Model { context, source } => write!(f, "{context}: {source}"),
        }
    }
}

impl std::error::Error for EngineError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Model { source, .. } => Some(source),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancelled_model_is_cancelled_under_wrappers() {
        let token = crate::model::CancelToken::new();
        token.cancel();
        let err = token.check().unwrap_err().context("DiT block 3").bt();
        assert!(matches!(
            EngineError::model("chunk 1", err),
            EngineError::Cancelled
        ));
        let other = candle_core::Error::Msg("out of memory".into());
        assert!(matches!(
            EngineError::model("chunk 1", other),
            EngineError::Model { .. }
        ));
    }

    #[test]
    fn display_names_the_field_and_keeps_the_model_message() {
        let e = EngineError::setting("scale", "must be 2, 3 or 4, got 5");
        assert_eq!(
            e.to_string(),
            "invalid setting `scale`: must be 2, 3 or 4, got 5"
        );
        let e = EngineError::model(
            "loading /m",
            candle_core::Error::Msg("TCDecoder.ckpt: tensor decoder.1.weight missing".into()),
        );
        let text = e.to_string();
        assert!(text.starts_with("loading /m: "), "{text}");
        assert!(text.contains("decoder.1.weight missing"), "{text}");
        assert!(std::error::Error::source(&e).is_some());
        let needing = |bytes: u64| MemoryEstimate {
            padded_width: 8192,
            padded_height: 8192,
            tiles: 1,
            weights: 1 << 30,
            held: bytes / 4,
            working: bytes - bytes / 4,
            peak_stage: "decoder",
            largest_tensor: 0,
        };
        let e = EngineError::TooLarge {
            out_width: 8192,
            out_height: 8192,
            available: 24_588_563_251,
            tile: None,
            estimate: Box::new(needing(44_236_955_238)),
        };
        assert_eq!(
            e.to_string(),
            "FlashVSR needs about 41.2 GiB for 8192x8192 output, 22.9 GiB available: lower the scale or the input size"
        );
        let e = EngineError::TooLarge {
            out_width: 8192,
            out_height: 8192,
            available: 24_588_563_251,
            tile: Some(128),
            estimate: Box::new(needing(44_236_955_238)),
        };
        assert_eq!(
            e.to_string(),
            "FlashVSR needs about 41.2 GiB for 8192x8192 output, 22.9 GiB available (in tiles of 128x128): lower the scale or the input size"
        );
    }

    #[test]
    fn device_errors_are_one_sentence_without_the_backtrace() {
        // What candle returns for a CUDA device in a build without the feature, with
        // a backtrace attached the way `Error::bt` attaches one.
        let source = candle_core::Error::WithBacktrace {
            inner: Box::new(candle_core::Error::NotCompiledWithCudaSupport),
            backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
        };
        let text = EngineError::device("cuda:0", source).to_string();
        assert_eq!(
            text,
            "device cuda:0: this build has no CUDA support (build with `--features cuda`)"
        );

        // A driver failure keeps the first line of candle's message only.
        let source = candle_core::Error::WithBacktrace {
            inner: Box::new(candle_core::Error::Msg(
                "DriverError(CUDA_ERROR_NO_DEVICE, \"no CUDA-capable device is detected\")\nmore"
                    .into(),
            )),
            backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
        };
        let text = EngineError::device("cuda:1", source).to_string();
        assert_eq!(
            text,
            "device cuda:1: CUDA could not be initialised: \
             DriverError(CUDA_ERROR_NO_DEVICE, \"no CUDA-capable device is detected\")"
        );
    }

    /// A `cuda:0` device in a build without the `cuda` feature: one line that says
    /// what to do, even with backtraces enabled as a test run may have them.
    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_one_line() {
        let err = crate::engine::DeviceSpec::Cuda(0).open().unwrap_err();
        let text = err.to_string();
        assert_eq!(
            text,
            "device cuda:0: this build has no CUDA support (build with `--features cuda`)"
        );
        assert_eq!(text.lines().count(), 1, "{text}");
        let lower = text.to_lowercase();
        assert!(
            !lower.contains("backtrace") && !lower.contains("stack"),
            "{text}"
        );
    }
}
