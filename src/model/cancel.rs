//! A cancellation flag a running chunk polls between its stages, so that a flush,
//! a seek or a state change does not wait for a whole chunk (docs/element.md).
//! Cloning shares the flag: the element keeps one clone and the sequences the
//! other.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The text of the error a cancelled chunk returns (see [`CancelToken::check`]).
pub const CANCELLED: &str = "cancelled";

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

    /// `Err` with the message [`CANCELLED`] once cancelled.
    pub fn check(&self) -> candle_core::Result<()> {
        if self.is_cancelled() {
            Err(candle_core::Error::Msg(CANCELLED.to_owned()))
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
        assert_eq!(b.check().unwrap_err().to_string(), CANCELLED);
        b.clear();
        assert!(!a.is_cancelled());
    }
}
