//! The element's enum properties: the engine's own setting types
//! (`engine::Choice`), registered as GEnums from their tables, so that every
//! value, nick and description is written once, in the engine.

use std::ffi::{CString, c_char};

use gst::glib;
use gst::glib::translate::{FromGlib, IntoGlib, ToGlibPtr, ToGlibPtrMut, TryFromGlib, from_glib};

use super::late::LatePolicy;
use crate::engine::{AttentionKernel, Choice, ColorFix, DecoderKind, ModelVersion, Precision};

/// Registers a GEnum named `type_name` whose values are `T::VALUES` (value =
/// index, nick and name from the table). Called once per type.
fn register<T: Choice>(type_name: &str) -> glib::Type {
    // GLib keeps pointers to the names for the life of the process, as it does
    // for every statically registered type: the strings are leaked on purpose.
    let leak = |s: &str| -> *const c_char {
        CString::new(s)
            .unwrap_or_else(|_| c"invalid".to_owned())
            .into_raw()
    };
    let mut values: Vec<glib::gobject_ffi::GEnumValue> = T::VALUES
        .iter()
        .enumerate()
        .map(|(i, v)| glib::gobject_ffi::GEnumValue {
            value: i as i32,
            value_name: leak(v.description),
            value_nick: leak(v.nick),
        })
        .collect();
    values.push(glib::gobject_ffi::GEnumValue {
        value: 0,
        value_name: std::ptr::null(),
        value_nick: std::ptr::null(),
    });
    let values = Box::leak(values.into_boxed_slice());
    let name = leak(type_name);
    // SAFETY: `values` is zero-terminated and, like `name`, lives forever; the
    // callers register each type once (behind a `OnceLock`).
    unsafe {
        from_glib(glib::gobject_ffi::g_enum_register_static(
            name,
            values.as_ptr(),
        ))
    }
}

/// The glib traits a property value type needs, for an engine `Choice` type.
macro_rules! choice_genum {
    ($ty:ty, $type_name:literal) => {
        impl glib::prelude::StaticType for $ty {
            fn static_type() -> glib::Type {
                static TYPE: std::sync::OnceLock<glib::Type> = std::sync::OnceLock::new();
                *TYPE.get_or_init(|| register::<$ty>($type_name))
            }
        }

        impl IntoGlib for $ty {
            type GlibType = i32;
            fn into_glib(self) -> i32 {
                self.index() as i32
            }
        }

        impl TryFromGlib<i32> for $ty {
            type Error = i32;
            unsafe fn try_from_glib(value: i32) -> Result<Self, i32> {
                usize::try_from(value)
                    .ok()
                    .and_then(|i| <$ty as Choice>::VALUES.get(i))
                    .map(|v| v.value)
                    .ok_or(value)
            }
        }

        impl FromGlib<i32> for $ty {
            unsafe fn from_glib(value: i32) -> Self {
                // GLib only hands out values it was registered with; fall back
                // to the first one rather than trust anything else.
                unsafe { <Self as TryFromGlib<i32>>::try_from_glib(value) }
                    .unwrap_or(<$ty as Choice>::VALUES[0].value)
            }
        }

        impl glib::value::ValueType for $ty {
            type Type = Self;
        }

        unsafe impl<'a> glib::value::FromValue<'a> for $ty {
            type Checker = glib::value::GenericValueTypeChecker<Self>;
            unsafe fn from_value(value: &'a glib::Value) -> Self {
                unsafe { from_glib(glib::gobject_ffi::g_value_get_enum(value.to_glib_none().0)) }
            }
        }

        impl glib::prelude::ToValue for $ty {
            fn to_value(&self) -> glib::Value {
                let mut value = glib::Value::for_value_type::<Self>();
                // SAFETY: `value` was initialised with this enum type just above.
                unsafe {
                    glib::gobject_ffi::g_value_set_enum(
                        value.to_glib_none_mut().0,
                        self.into_glib(),
                    )
                }
                value
            }
            fn value_type(&self) -> glib::Type {
                <Self as glib::prelude::StaticType>::static_type()
            }
        }

        impl From<$ty> for glib::Value {
            fn from(v: $ty) -> Self {
                glib::prelude::ToValue::to_value(&v)
            }
        }
    };
}

choice_genum!(ModelVersion, "GstFlashVsrModelVersion");
choice_genum!(Precision, "GstFlashVsrPrecision");
choice_genum!(AttentionKernel, "GstFlashVsrAttention");
choice_genum!(ColorFix, "GstFlashVsrColorFix");
choice_genum!(DecoderKind, "GstFlashVsrDecoder");
choice_genum!(LatePolicy, "GstFlashVsrLatePolicy");

#[cfg(test)]
mod tests {
    use super::*;
    use glib::prelude::*;

    fn check<T>()
    where
        T: Choice + StaticType + ToValue + for<'a> glib::value::FromValue<'a> + std::fmt::Debug,
    {
        let class = glib::EnumClass::with_type(T::static_type()).expect("an enum type");
        assert_eq!(class.values().len(), T::VALUES.len());
        for (i, v) in T::VALUES.iter().enumerate() {
            let value = class.value_by_nick(v.nick).expect("the nick is registered");
            assert_eq!(value.value(), i as i32);
            assert_eq!(value.name(), v.description);
            let gvalue = v.value.to_value();
            assert_eq!(gvalue.get::<T>().expect("same type"), v.value);
        }
    }

    #[test]
    fn genums_come_from_the_engine_tables() {
        gst::init().expect("GStreamer initialises");
        check::<ModelVersion>();
        check::<Precision>();
        check::<AttentionKernel>();
        check::<ColorFix>();
        check::<DecoderKind>();
        check::<LatePolicy>();
        assert_eq!(
            ModelVersion::static_type().name(),
            "GstFlashVsrModelVersion"
        );
    }
}
