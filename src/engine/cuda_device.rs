//! The CUDA device as a long-running stream needs it (docs/device-path.md,
//! section "The device and its memory").
//!
//! candle's `Device::new_cuda` issues work on the calling thread's default
//! stream and lets cudarc record two events on every tensor it makes, so that
//! a tensor used from another thread's stream waits for its writes. The engine
//! makes about 70,000 tensors per steady chunk; loads its weights on one thread
//! and runs them on another. Here instead:
//!
//! - every thread issues to one explicit stream of the device, so work is
//!   ordered by the stream whatever thread issued it, and the per-tensor events
//!   are not needed: they are turned off;
//! - cudarc allocates from the device's stream-ordered memory pool, whose
//!   release threshold is 0 by default: every synchronisation (each host read)
//!   hands the freed memory back to the driver, and the next chunk allocates it
//!   again. The threshold is raised so that the pool keeps what the stream
//!   freed, as frameworks' caching allocators do;
//! - the free memory a stream may still use is the driver's free memory plus
//!   what the pool holds unused, read after the stream has finished its work.

use candle_core::{Device, Result};

/// Opens CUDA device `ordinal` with one explicit stream, no per-tensor events
/// and a memory pool that keeps what it frees.
#[cfg(feature = "cuda")]
pub fn open(ordinal: usize) -> Result<Device> {
    let cuda = candle_core::CudaDevice::new_with_stream(ordinal)?;
    // SAFETY: every tensor of this device is made and used on its one stream
    // (`new_with_stream`, shared by all threads through the `Device`), so
    // stream order alone keeps each use after its writes and each free after
    // its uses; the events would only order work against other streams.
    unsafe { cuda.disable_event_tracking() };
    pool::keep_freed_memory(&cuda)?;
    Ok(Device::Cuda(cuda))
}

/// Opens CUDA device `ordinal`: in a build without the `cuda` feature, candle's
/// "not compiled with CUDA support" error.
#[cfg(not(feature = "cuda"))]
pub fn open(ordinal: usize) -> Result<Device> {
    Device::new_cuda(ordinal)
}

/// Memory of the GPU `device` runs on, in bytes, that a stream may still use:
/// the driver's free memory plus what the device's pool holds unused, after
/// the work queued on the device has finished (so that what it frees counts).
/// `None` on the CPU, in a build without CUDA, or when the driver does not
/// answer.
pub fn free_memory(device: &Device) -> Option<u64> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(cuda) => {
            device.synchronize().ok()?;
            let (free, _total) = cuda.cuda_stream().context().mem_get_info().ok()?;
            Some(free as u64 + pool::idle_bytes(cuda).unwrap_or(0))
        }
        _ => None,
    }
}

/// Bytes of the device's memory pool in use by tensors now (`current`) and at
/// most since the last `reset_peak_memory` (`peak`), read after the queued work
/// has finished. `None` on the CPU, in a build without CUDA, or when the
/// driver does not answer.
pub fn pool_usage(device: &Device) -> Option<PoolUsage> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(cuda) => {
            device.synchronize().ok()?;
            pool::usage(cuda).ok()
        }
        _ => None,
    }
}

/// Starts the pool's peak (`PoolUsage::peak`) again from what is in use now.
pub fn reset_peak_memory(device: &Device) {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(cuda) = device
        && device.synchronize().is_ok()
    {
        // a driver that does not answer leaves the peak as it was
        let _ = pool::reset_peak(cuda);
    }
    #[cfg(not(feature = "cuda"))]
    let _ = device;
}

/// What `pool_usage` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolUsage {
    pub current: u64,
    pub peak: u64,
}

#[cfg(feature = "cuda")]
mod pool {
    use candle_core::cuda_backend::cudarc::driver::sys;
    use candle_core::{CudaDevice, Result};

    fn driver_error(what: &str, e: impl std::fmt::Debug) -> candle_core::Error {
        candle_core::Error::Msg(format!("CUDA {what}: {e:?}"))
    }

    /// The device's default memory pool, the one cudarc's stream-ordered
    /// allocations take from.
    fn default_pool(cuda: &CudaDevice) -> Result<sys::CUmemoryPool> {
        let stream = cuda.cuda_stream();
        let context = stream.context();
        context
            .bind_to_thread()
            .map_err(|e| driver_error("context", e))?;
        let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
        // SAFETY: `pool` is a valid out-pointer; the device handle is the
        // context's own.
        unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, context.cu_device()) }
            .result()
            .map_err(|e| driver_error("default memory pool", e))?;
        Ok(pool)
    }

    /// Raises the pool's release threshold to its maximum: freed memory stays
    /// in the pool for the next allocation instead of going back to the driver
    /// at each synchronisation.
    pub fn keep_freed_memory(cuda: &CudaDevice) -> Result<()> {
        set_attribute(
            default_pool(cuda)?,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            u64::MAX,
        )
    }

    /// Sets one of the pool's u64 attributes: the release threshold, or a
    /// high-water mark (which takes only 0, a reset).
    fn set_attribute(
        pool: sys::CUmemoryPool,
        attr: sys::CUmemPool_attribute,
        mut value: u64,
    ) -> Result<()> {
        // SAFETY: these attributes take a pointer to a u64.
        unsafe { sys::cuMemPoolSetAttribute(pool, attr, (&mut value as *mut u64).cast()) }
            .result()
            .map_err(|e| driver_error("memory pool attribute", e))
    }

    fn attribute(pool: sys::CUmemoryPool, attr: sys::CUmemPool_attribute) -> Result<u64> {
        let mut value = 0u64;
        // SAFETY: the reserved and used memory attributes write a u64.
        unsafe { sys::cuMemPoolGetAttribute(pool, attr, (&mut value as *mut u64).cast()) }
            .result()
            .map_err(|e| driver_error("memory pool attribute", e))?;
        Ok(value)
    }

    pub fn usage(cuda: &CudaDevice) -> Result<super::PoolUsage> {
        let pool = default_pool(cuda)?;
        Ok(super::PoolUsage {
            current: attribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT,
            )?,
            peak: attribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
            )?,
        })
    }

    /// Sets the pool's high-water mark of used memory back to what is in use.
    pub fn reset_peak(cuda: &CudaDevice) -> Result<()> {
        set_attribute(
            default_pool(cuda)?,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
            0,
        )
    }

    /// Bytes the pool holds that no allocation uses.
    pub fn idle_bytes(cuda: &CudaDevice) -> Result<u64> {
        let pool = default_pool(cuda)?;
        let reserved = attribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT,
        )?;
        let used = attribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT,
        )?;
        Ok(reserved.saturating_sub(used))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_has_no_device_memory_to_report() {
        assert_eq!(free_memory(&Device::Cpu), None);
        assert_eq!(pool_usage(&Device::Cpu), None);
        reset_peak_memory(&Device::Cpu);
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn without_the_cuda_feature_opening_says_so() {
        let err = open(0).unwrap_err();
        assert!(
            matches!(err, candle_core::Error::NotCompiledWithCudaSupport),
            "{err:?}"
        );
    }
}
