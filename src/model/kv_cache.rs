//! The DiT's rolling key / value cache: the windows of past chunks that the next
//! chunk's self-attention may still see (docs/model.md, section "The DiT KV cache").

use candle_core::{Result, Tensor};

/// Per-block rolling cache of past key / value windows, `[heads, windows, 128, d]`.
#[derive(Debug, Default, Clone)]
pub struct KvCache {
    k: Option<Tensor>,
    v: Option<Tensor>,
}

impl KvCache {
    /// Moves the held windows to `device`.
    pub fn move_to(&mut self, device: &candle_core::Device) -> Result<()> {
        super::move_held(&mut self.k, device)?;
        super::move_held(&mut self.v, device)
    }

    /// Windows held.
    pub fn windows(&self) -> usize {
        self.k.as_ref().and_then(|k| k.dim(1).ok()).unwrap_or(0)
    }

    /// Cached windows followed by this chunk's.
    pub fn extend(&self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        match (&self.k, &self.v) {
            (Some(ck), Some(cv)) => Ok((Tensor::cat(&[ck, k], 1)?, Tensor::cat(&[cv, v], 1)?)),
            _ => Ok((k.clone(), v.clone())),
        }
    }

    /// Stores `k`/`v` (all windows this chunk attended to), then drops the oldest
    /// time window if more than `max_time_windows` are held: one per call, as the
    /// reference does.
    pub fn store(
        &mut self,
        k: Tensor,
        v: Tensor,
        blocks_per_time_window: usize,
        max_time_windows: usize,
    ) -> Result<()> {
        let windows = k.dim(1)?;
        let (k, v) = if windows / blocks_per_time_window > max_time_windows {
            let keep = windows - blocks_per_time_window;
            (
                // copies of their own (`contiguous` would keep a view of a
                // contiguous narrow, and with it the whole old cache)
                k.narrow(1, blocks_per_time_window, keep)?
                    .force_contiguous()?,
                v.narrow(1, blocks_per_time_window, keep)?
                    .force_contiguous()?,
            )
        } else {
            (k, v)
        };
        self.k = Some(k);
        self.v = Some(v);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn kv_cache_drops_one_time_window_per_call() -> Result<()> {
        let dev = Device::Cpu;
        let mut cache = KvCache::default();
        let nb = 3;
        let chunk = |n: usize, tag: f32| Tensor::full(tag, (1, n * nb, 128, 4), &dev);
        let (k, v) = cache.extend(&chunk(3, 0.)?, &chunk(3, 0.)?)?;
        cache.store(k, v, nb, 1)?;
        // kv_ratio 1 still keeps 2 time windows after the first chunk of 3
        assert_eq!(cache.windows(), 2 * nb);
        let (k, v) = cache.extend(&chunk(1, 1.)?, &chunk(1, 1.)?)?;
        cache.store(k, v, nb, 1)?;
        assert_eq!(cache.windows(), 2 * nb);
        let (k, v) = cache.extend(&chunk(1, 2.)?, &chunk(1, 2.)?)?;
        cache.store(k, v, nb, 3)?;
        assert_eq!(cache.windows(), 3 * nb);
        Ok(())
    }
}
