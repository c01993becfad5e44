//! What a stream needs from the model: the seam that lets the schedule, drain and
//! cropping be tested with a stand-in model, without weights.

use candle_core::{Device, Result, Tensor};

use crate::model::{ChunkTrace, FlashVsrModel, SequenceConfig, SequenceState};

pub trait ChunkModel {
    /// Per-stream temporal state.
    type State;
    fn device(&self) -> &Device;
    fn new_sequence(&self, config: &SequenceConfig) -> Result<Self::State>;
    /// Moves what `state` holds between chunks to `device`
    /// (`SequenceState::move_to`).
    fn move_state(&self, state: &mut Self::State, device: &Device) -> Result<()>;
    /// Runs the next chunk (see `FlashVsrModel::run_chunk_traced`).
    fn run_chunk(
        &self,
        state: &mut Self::State,
        lq: &Tensor,
        noise: &Tensor,
        trace: Option<&mut ChunkTrace>,
    ) -> Result<Tensor>;
}

impl ChunkModel for FlashVsrModel {
    type State = SequenceState;

    fn device(&self) -> &Device {
        FlashVsrModel::device(self)
    }

    fn new_sequence(&self, config: &SequenceConfig) -> Result<SequenceState> {
        FlashVsrModel::new_sequence(self, config)
    }

    fn move_state(&self, state: &mut SequenceState, device: &Device) -> Result<()> {
        state.move_to(device)
    }

    fn run_chunk(
        &self,
        state: &mut SequenceState,
        lq: &Tensor,
        noise: &Tensor,
        trace: Option<&mut ChunkTrace>,
    ) -> Result<Tensor> {
        FlashVsrModel::run_chunk_traced(self, state, lq, noise, trace)
    }
}
