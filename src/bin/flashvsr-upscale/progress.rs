//! Progress of a run: a bar redrawn in place on a terminal, a plain line every
//! ten seconds otherwise (logs of batch jobs).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

pub struct Progress {
    label: String,
    total: u64,
    started: Instant,
    terminal: bool,
    last_line: Option<Instant>,
}

impl Progress {
    pub fn new(label: impl Into<String>, total: u64) -> Self {
        Self {
            label: label.into(),
            total,
            started: Instant::now(),
            terminal: std::io::stderr().is_terminal(),
            last_line: None,
        }
    }

    /// The progress text for `done` frames.
    fn text(&self, done: u64) -> String {
        let secs = self.started.elapsed().as_secs_f64();
        let fps = if secs > 0.0 { done as f64 / secs } else { 0.0 };
        let eta = if done > 0 && done < self.total {
            let left = (self.total - done) as f64 / fps;
            format!("ETA {}", clock(left))
        } else {
            "ETA --".to_owned()
        };
        format!(
            "{}: {done}/{} frames, {fps:.2} fps, {} elapsed, {eta}",
            self.label,
            self.total,
            clock(secs)
        )
    }

    pub fn update(&mut self, done: u64) {
        if self.terminal {
            let width = 30usize;
            let filled = (done.min(self.total) as usize * width) / self.total.max(1) as usize;
            eprint!(
                "\r[{}{}] {}   ",
                "#".repeat(filled),
                ".".repeat(width - filled),
                self.text(done)
            );
            let _ = std::io::stderr().flush();
        } else if self
            .last_line
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
        {
            eprintln!("{}", self.text(done));
            self.last_line = Some(Instant::now());
        }
    }

    pub fn finish(&mut self, done: u64) {
        if self.terminal {
            self.update(done);
            eprintln!();
        } else {
            eprintln!("{}", self.text(done));
        }
    }
}

/// Seconds as H:MM:SS or M:SS.
fn clock(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_and_text() {
        assert_eq!(clock(5.4), "0:05");
        assert_eq!(clock(3725.0), "1:02:05");
        let p = Progress::new("upscaling", 100);
        assert!(p.text(0).starts_with("upscaling: 0/100 frames"));
        assert!(p.text(0).ends_with("ETA --"));
    }
}
