//! The settings that take one of a fixed set of values (model version, precision,
//! colour fix): each value's one spelling, its aliases and its description, in
//! one table per type. `Display`, `FromStr`, the examples' parsers and the
//! element's GEnum properties are all built from these tables.

use std::fmt;
use std::str::FromStr;

use super::EngineError;
use super::settings::Precision;
use crate::layers::attention_path::AttentionKernel;
use crate::model::ModelVersion;
use crate::model::color_fix::ColorFix;
use crate::model::decoder::DecoderKind;

/// One value of a [`Choice`] type.
#[derive(Debug)]
pub struct ChoiceValue<T: 'static> {
    pub value: T,
    /// The spelling written everywhere (property nick, `Display`, docs).
    pub nick: &'static str,
    /// Other spellings `FromStr` accepts.
    pub aliases: &'static [&'static str],
    /// One line for humans (the GEnum value name, help texts).
    pub description: &'static str,
}

/// A setting with a fixed set of values.
pub trait Choice: Copy + PartialEq + Sized + 'static {
    /// The `EngineSettings` field, for error messages.
    const SETTING: &'static str;
    /// Every value, in a fixed order (its index is its GEnum value).
    const VALUES: &'static [ChoiceValue<Self>];

    /// Position of `self` in [`Self::VALUES`].
    fn index(self) -> usize {
        Self::VALUES
            .iter()
            .position(|v| v.value == self)
            .unwrap_or_default()
    }

    fn nick(self) -> &'static str {
        Self::VALUES[self.index()].nick
    }

    /// Reads a nick or alias, case-insensitively; the error lists the nicks.
    fn parse_choice(text: &str) -> Result<Self, EngineError> {
        let wanted = text.trim();
        Self::VALUES
            .iter()
            .find(|v| {
                v.nick.eq_ignore_ascii_case(wanted)
                    || v.aliases.iter().any(|a| a.eq_ignore_ascii_case(wanted))
            })
            .map(|v| v.value)
            .ok_or_else(|| {
                let nicks: Vec<String> = Self::VALUES
                    .iter()
                    .map(|v| format!("\"{}\"", v.nick))
                    .collect();
                EngineError::setting(
                    Self::SETTING,
                    format!(
                        "unknown value {text:?}; expected one of {}",
                        nicks.join(", ")
                    ),
                )
            })
    }
}

impl Choice for ModelVersion {
    const SETTING: &'static str = "model_version";
    const VALUES: &'static [ChoiceValue<Self>] = &[
        ChoiceValue {
            value: ModelVersion::V1,
            nick: "v1",
            aliases: &[],
            description: "FlashVSR v1 (each clip's LQ-projection cache is its own last frames)",
        },
        ChoiceValue {
            value: ModelVersion::V1_1,
            nick: "v1-1",
            aliases: &["v1.1"],
            description: "FlashVSR v1.1 (the LQ-projection cache is the previous clip's last frames)",
        },
    ];
}

impl Choice for Precision {
    const SETTING: &'static str = "precision";
    const VALUES: &'static [ChoiceValue<Self>] = &[
        ChoiceValue {
            value: Precision::F32,
            nick: "f32",
            aliases: &[],
            description: "32-bit float",
        },
        ChoiceValue {
            value: Precision::Bf16,
            nick: "bf16",
            aliases: &[],
            description: "bfloat16",
        },
        ChoiceValue {
            value: Precision::F16,
            nick: "f16",
            aliases: &[],
            description: "16-bit float",
        },
    ];
}

impl Choice for ColorFix {
    const SETTING: &'static str = "color_fix";
    const VALUES: &'static [ChoiceValue<Self>] = &[
        ChoiceValue {
            value: ColorFix::None,
            nick: "none",
            aliases: &[],
            description: "No correction",
        },
        ChoiceValue {
            value: ColorFix::Adain,
            nick: "adain",
            aliases: &[],
            description: "Per-channel mean and deviation of the input (AdaIN)",
        },
        ChoiceValue {
            value: ColorFix::Wavelet,
            nick: "wavelet",
            aliases: &[],
            description: "Low frequencies of the input (wavelet)",
        },
    ];
}

impl Choice for AttentionKernel {
    const SETTING: &'static str = "attention";
    const VALUES: &'static [ChoiceValue<Self>] = &[
        ChoiceValue {
            value: AttentionKernel::Auto,
            nick: "auto",
            aliases: &[],
            description: "The fused CUDA kernel in bf16/f16 when its check at load passes, else the gathered path; the CPU's own paths on the CPU",
        },
        ChoiceValue {
            value: AttentionKernel::Fused,
            nick: "fused",
            aliases: &[],
            description: "The fused block-sparse CUDA kernel (bf16/f16 on CUDA), even if its check at load fails",
        },
        ChoiceValue {
            value: AttentionKernel::Gathered,
            nick: "gathered",
            aliases: &[],
            description: "Kept key windows gathered per query window, in candle ops",
        },
        ChoiceValue {
            value: AttentionKernel::Masked,
            nick: "masked",
            aliases: &[],
            description: "Dense scores with the mask as a bias, in candle ops",
        },
    ];
}

impl Choice for DecoderKind {
    const SETTING: &'static str = "decoder";
    const VALUES: &'static [ChoiceValue<Self>] = &[
        ChoiceValue {
            value: DecoderKind::Tiny,
            nick: "tiny",
            aliases: &["tcdecoder"],
            description: "The tiny causal decoder (TCDecoder.ckpt): fast, little memory",
        },
        ChoiceValue {
            value: DecoderKind::Wan,
            nick: "wan",
            aliases: &["full", "vae"],
            description: "The Wan2.1 VAE decoder (Wan2.1_VAE.pth, FlashVSR's full mode): best quality, slower, more memory",
        },
    ];
}

/// `Display` (the nick) and `FromStr` (nick or alias) from the table.
macro_rules! text_from_table {
    ($($ty:ty),*) => {$(
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.nick())
            }
        }

        impl FromStr for $ty {
            type Err = EngineError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse_choice(s)
            }
        }
    )*};
}

text_from_table!(
    ModelVersion,
    Precision,
    ColorFix,
    AttentionKernel,
    DecoderKind
);

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trips<T: Choice + fmt::Display + FromStr<Err = EngineError> + fmt::Debug>() {
        for (i, v) in T::VALUES.iter().enumerate() {
            assert_eq!(v.value.index(), i);
            assert_eq!(v.value.to_string(), v.nick);
            assert_eq!(v.nick.to_uppercase().parse::<T>().unwrap(), v.value);
            for alias in v.aliases {
                assert_eq!(alias.parse::<T>().unwrap(), v.value);
            }
        }
        let err = "sepia".parse::<T>().unwrap_err().to_string();
        assert!(
            err.contains(T::SETTING) && err.contains(T::VALUES[0].nick),
            "{err}"
        );
    }

    #[test]
    fn every_choice_round_trips_through_its_nick() {
        round_trips::<ModelVersion>();
        round_trips::<Precision>();
        round_trips::<ColorFix>();
        round_trips::<AttentionKernel>();
        round_trips::<DecoderKind>();
    }

    #[test]
    fn the_release_name_is_an_alias_of_the_nick() {
        assert_eq!("v1.1".parse::<ModelVersion>().unwrap(), ModelVersion::V1_1);
        assert_eq!(ModelVersion::V1_1.to_string(), "v1-1");
    }
}
