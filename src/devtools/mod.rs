//! Developer tools, built only with the `devtools` feature (the examples and the
//! tests turn it on; the plugin leaves it out): the golden-fixture parity check,
//! model folders with random weights in the released formats, and replays of
//! logged product shapes for the benchmarks, and the seam check of tiled streams.

pub mod parity;
pub mod random_model;
pub mod replay;
pub mod seams;
