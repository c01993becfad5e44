//! The one error type of the engine: what the caller did wrong (a setting, a frame)
//! or what the model reported, with the model's own message kept intact.

use std::fmt;

use super::memory::human_bytes;

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
    /// `engine::memory`); sizes are the output's.
    TooLarge {
        out_width: usize,
        out_height: usize,
        needed: u64,
        available: u64,
    },
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

    pub(crate) fn model(context: impl Into<String>, source: candle_core::Error) -> Self {
        Self::Model {
            context: context.into(),
            source,
        }
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
                needed,
                available,
            } => write!(
                f,
                "FlashVSR needs about {} for {out_width}x{out_height} output, {} available: lower the scale or the input size",
                human_bytes(*needed),
                human_bytes(*available)
            ),
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
        let e = EngineError::TooLarge {
            out_width: 8192,
            out_height: 8192,
            needed: 44_236_955_238,
            available: 24_588_563_251,
        };
        assert_eq!(
            e.to_string(),
            "FlashVSR needs about 41.2 GiB for 8192x8192 output, 22.9 GiB available: lower the scale or the input size"
        );
    }
}
