//! A golden case's settings, read from its `case.json` with `serde_json`.

use candle_core::Result;
use serde_json::Value;

use crate::model::ModelVersion;

/// The settings of a case, from its `case.json`.
#[derive(Debug, Clone)]
pub struct CaseSettings {
    pub scale: usize,
    pub sparse_ratio: f64,
    pub kv_ratio: f64,
    pub local_range: usize,
    pub variant: ModelVersion,
    pub height: usize,
    pub width: usize,
    pub chunks: usize,
}

/// The value at `path` (keys from the top level down) of a parsed `case.json`;
/// `file` and the dotted path name what is missing.
fn json_field<'a>(root: &'a Value, path: &[&str], file: &str) -> Result<&'a Value> {
    path.iter()
        .try_fold(root, |value, key| value.get(key))
        .ok_or_else(|| candle_core::Error::Msg(format!("{file}: no field '{}'", path.join("."))))
}

fn json_count(root: &Value, path: &[&str], file: &str) -> Result<usize> {
    let value = json_field(root, path, file)?;
    value
        .as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "{file}: field '{}' must be a whole number, got {value}",
                path.join(".")
            ))
        })
}

fn json_number(root: &Value, path: &[&str], file: &str) -> Result<f64> {
    let value = json_field(root, path, file)?;
    value.as_f64().ok_or_else(|| {
        candle_core::Error::Msg(format!(
            "{file}: field '{}' must be a number, got {value}",
            path.join(".")
        ))
    })
}

impl CaseSettings {
    /// Reads the settings from the text of a `case.json`; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Self> {
        let root: Value = serde_json::from_str(text)
            .map_err(|e| candle_core::Error::Msg(format!("{file}: not valid JSON: {e}")))?;
        let variant = json_field(&root, &["model", "lq_variant"], file)?;
        // The fixtures spell the releases "v1" and "v1.1" (an alias of "v1-1").
        let variant = match variant.as_str().map(str::parse::<ModelVersion>) {
            Some(Ok(version)) => version,
            _ => candle_core::bail!(
                "{file}: field 'model.lq_variant' must be \"v1\" or \"v1.1\", got {variant}"
            ),
        };
        Ok(Self {
            scale: json_count(&root, &["scale"], file)?,
            sparse_ratio: json_number(&root, &["sparse_ratio"], file)?,
            kv_ratio: json_number(&root, &["kv_ratio"], file)?,
            local_range: json_count(&root, &["local_range"], file)?,
            variant,
            height: json_count(&root, &["H"], file)?,
            width: json_count(&root, &["W"], file)?,
            chunks: json_count(&root, &["chunks"], file)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_case_json_values() -> Result<()> {
        let text = r#"{ "model": { "dim": 256, "lq_variant": "v1.1" }, "scale": 4, "sparse_ratio": 0.25,
            "kv_ratio": 3.0, "local_range": 3, "H": 256, "W": 384, "chunks": 4 }"#;
        let s = CaseSettings::parse(text, "case.json")?;
        assert_eq!(
            (s.scale, s.local_range, s.height, s.width, s.chunks),
            (4, 3, 256, 384, 4)
        );
        assert_eq!(s.variant, ModelVersion::V1_1);
        assert!((s.sparse_ratio - 0.25).abs() < 1e-12);
        Ok(())
    }

    #[test]
    fn case_json_errors_name_the_file_and_field() {
        let error = |text: &str| match CaseSettings::parse(text, "x/case.json") {
            Ok(s) => panic!("{text} parsed as {s:?}"),
            Err(e) => e.to_string(),
        };
        let missing = error("{}");
        assert!(missing.contains("x/case.json") && missing.contains("model.lq_variant"));
        let bad = error(r#"{ "model": { "lq_variant": "v1" }, "scale": "four" }"#);
        assert!(bad.contains("x/case.json") && bad.contains("'scale'") && bad.contains("four"));
        let variant = error(r#"{ "model": { "lq_variant": "v2" } }"#);
        assert!(variant.contains("model.lq_variant") && variant.contains("v2"));
        assert!(error("{ not json").contains("not valid JSON"));
    }
}
