//! A cancellation flag a running chunk polls between its stages, so that a flush,
//! a seek or a state change does not wait for a whole chunk (docs/element.md).
//! Cloning shares the flag: the element keeps one clone and the sequences the
//! other. A sequence holds it in its `SequenceConfig`, and hands it as an
//! argument to the stages that poll it (the DiT between blocks, the decoder
//! between stages and tiles).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The error a cancelled chunk returns ([`CancelToken::check`]), recognised by
/// its type ([`Cancelled::is`]) under whatever candle wraps around it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cancelled;

impl fmt::Display for Cancelled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("cancelled (flush, seek or state change)")
    }
}

impl std::error::Error for Cancelled {}

impl Cancelled {
    /// As a candle error, the one type the model's functions return.
    pub fn error() -> candle_core::Error {
        candle_core::Error::WrappedContext {
            wrapped: Box::new(Cancelled),
            context: "the chunk was stopped".to_owned(),
        }
    }

    /// Whether `err` is a cancellation, under candle's context, path and
    /// backtrace wrappers.
    pub fn is(err: &candle_core::Error) -> bool {
        use candle_core::Error;
        match err {
            Error::WrappedContext { wrapped, .. } => wrapped.downcast_ref::<Cancelled>().is_some(),
            Error::WithBacktrace { inner, .. }
            | Error::Context { inner, .. }
            | Error::WithPath { inner, .. } => Self::is(inner),
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks every sequence sharing this token to stop at its next check.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Lets work run again (after a flush has completed).
    pub fn clear(&self) {
        self.0.store(false, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// `Err` of [`Cancelled`] once cancelled.
    pub fn check(&self) -> candle_core::Result<()> {
        if self.is_cancelled() {
            Err(Cancelled::error())
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_the_flag() {
        let a = CancelToken::new();
        let b = a.clone();
        assert!(b.check().is_ok());
        a.cancel();
        assert!(b.is_cancelled());
        assert!(Cancelled::is(&b.check().unwrap_err()));
        b.clear();
        assert!(!a.is_cancelled());
    }

    #[test]
    fn a_cancellation_is_recognised_by_type_under_any_wrapper() {
        let cancelled = CancelToken::new();
        cancelled.cancel();
        let err = cancelled.check().unwrap_err();
        assert!(Cancelled::is(&err));
        assert!(Cancelled::is(
            &err.context("running chunk 3").with_path("/m")
        ));
        let wrapped = candle_core::Error::WithBacktrace {
            inner: Box::new(Cancelled::error()),
            backtrace: Box::new(std::backtrace::Backtrace::disabled()),
        };
        assert!(Cancelled::is(&wrapped));
        // the same words from anything else are not a cancellation
        assert!(!Cancelled::is(&candle_core::Error::Msg(
            Cancelled.to_string()
        )));
        assert!(!Cancelled::is(&candle_core::Error::Msg("cancelled".into())));
    }
}
