//! `--set PROPERTY=VALUE`: any property of the flashvsr element, checked
//! against the element itself (its name, type and range) before any work.

use gst::glib;
use gst::prelude::*;

/// Splits `NAME=VALUE`.
pub fn parse(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once('=')
        .ok_or_else(|| format!("--set {text:?}: expected PROPERTY=VALUE"))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(format!("--set {text:?}: no property name"));
    }
    Ok((name.to_owned(), value.to_owned()))
}

/// Sets every `(name, value)` on `element`; an unknown property, a value that
/// does not parse or is out of range is an error naming it (and, for an
/// unknown name, listing the properties there are).
pub fn apply(element: &gst::Element, settings: &[(String, String)]) -> Result<(), String> {
    for (name, value) in settings {
        let Some(pspec) = element.find_property(name) else {
            let names: Vec<String> = element
                .list_properties()
                .iter()
                .filter(|p| p.flags().contains(glib::ParamFlags::WRITABLE))
                .filter(|p| p.owner_type() == element.type_())
                .map(|p| p.name().to_string())
                .collect();
            return Err(format!(
                "--set {name}={value}: flashvsr has no property {name:?} (it has: {})",
                names.join(", ")
            ));
        };
        let parsed = glib::Value::deserialize_with_pspec(value, &pspec).map_err(|_| {
            format!(
                "--set {name}={value}: not a value of {name} ({})",
                pspec.blurb().unwrap_or_default()
            )
        })?;
        if !in_range(&pspec, &parsed) {
            return Err(format!(
                "--set {name}={value}: out of range for {name} ({})",
                pspec.blurb().unwrap_or_default()
            ));
        }
        element.set_property_from_value(name, &parsed);
    }
    Ok(())
}

/// Whether `value` is within `pspec`'s range (GLib's own validation, which
/// would clamp an out-of-range value).
fn in_range(pspec: &glib::ParamSpec, value: &glib::Value) -> bool {
    use glib::translate::{ToGlibPtr, ToGlibPtrMut};
    let mut copy = value.clone();
    // SAFETY: both pointers are valid for the call; `copy` is ours to modify.
    let modified = unsafe {
        glib::gobject_ffi::g_param_value_validate(pspec.to_glib_none().0, copy.to_glib_none_mut().0)
    };
    modified == glib::ffi::GFALSE
}

/// The value `settings` give `name` (the last one set).
pub fn value<'a>(settings: &'a [(String, String)], name: &str) -> Option<&'a str> {
    settings
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// `settings` with `device` set to `device` (the only setting `run` may
/// change: each worker has its own GPU).
pub fn with_device(settings: &[(String, String)], device: Option<&str>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = settings
        .iter()
        .filter(|(k, _)| device.is_none() || k != "device")
        .cloned()
        .collect();
    if let Some(device) = device {
        out.push(("device".into(), device.into()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn element() -> gst::Element {
        gst::init().unwrap();
        let _ = gstflashvsr::plugin_register_static();
        gst::ElementFactory::make("flashvsr").build().unwrap()
    }

    #[test]
    fn properties_are_set_and_bad_ones_named() {
        let e = element();
        let set = |s: &str| apply(&e, &[parse(s).unwrap()]);
        set("scale=2").unwrap();
        assert_eq!(e.property::<u32>("scale"), 2);
        set("precision=bf16").unwrap();
        set("model-dir=/models/a=b").unwrap();
        assert_eq!(
            e.property::<Option<String>>("model-dir").as_deref(),
            Some("/models/a=b")
        );
        let err = set("scale=9").unwrap_err();
        assert!(
            err.contains("scale=9") && err.contains("out of range"),
            "{err}"
        );
        let err = set("precision=f64").unwrap_err();
        assert!(err.contains("precision=f64"), "{err}");
        let err = set("scael=2").unwrap_err();
        assert!(err.contains("\"scael\"") && err.contains("scale"), "{err}");
        assert!(parse("scale").unwrap_err().contains("PROPERTY=VALUE"));
    }

    #[test]
    fn run_may_change_only_the_device() {
        let s = vec![
            ("device".to_string(), "cpu".to_string()),
            ("scale".into(), "2".into()),
        ];
        let d = with_device(&s, Some("cuda:1"));
        assert_eq!(
            d,
            [
                ("scale".to_string(), "2".to_string()),
                ("device".into(), "cuda:1".into())
            ]
        );
        assert_eq!(with_device(&s, None), s);
        assert_eq!(value(&d, "device"), Some("cuda:1"));
        assert_eq!(value(&d, "seed"), None);
    }
}
