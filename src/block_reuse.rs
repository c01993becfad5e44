//! The crate's global allocator: the system allocator, with large freed blocks
//! kept for the next allocation of the same size class.
//!
//! glibc maps every block above 32 MiB afresh and unmaps it when freed, so each
//! first touch of each of its pages is a page fault in which the kernel zeroes
//! the page. The decoder allocates and frees tensors of a few hundred MB per
//! frame, in the same sizes frame after frame: on a 2-core Zen 4 the faults cost
//! nearly a quarter of the TCDecoder's time at 512x512 (`decoder_bench`;
//! README.md, "Performance"). A thread other than the process's first (the
//! element's model thread) fares worse: glibc serves it from an arena that
//! grows in heaps of 64 MiB, and blocks of a quarter of that and up come and go
//! with fresh pages there (`element_bench`: about 20 % more faults than the
//! same run on the main thread, 2-3 % of its time). Blocks from [`MIN_KEPT`]
//! up are rounded to a size class (at most 1/16 larger than asked for) and,
//! when freed, kept in a small cache while it holds at most [`cache_cap`]
//! bytes; the oldest go back to the system first.
//! Smaller blocks are the system allocator's, untouched.
//!
//! The cache lives in the process: in a GStreamer application it serves this
//! plugin's own allocations (Rust code), never the application's.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// The smallest block kept for reuse: glibc maps blocks above 32 MiB afresh,
/// and a thread's own arena (64 MiB heaps) does no better from 16 MiB.
pub const MIN_KEPT: usize = 16 << 20;

/// Freed blocks held at most at once.
const SLOTS: usize = 16;

/// At most this share of physical memory is held in freed blocks, and at most
/// [`MAX_CAP`].
const CAP_SHARE: usize = 8;
const MAX_CAP: usize = 4 << 30;

#[derive(Clone, Copy)]
struct Kept {
    ptr: *mut u8,
    /// The size class (what the system allocated) and alignment.
    size: usize,
    align: usize,
    /// When it was freed (a counter): the oldest goes first.
    freed: u64,
}

impl Kept {
    /// Back to the system.
    fn release(self) {
        // SAFETY: the cache owned the block, which the system allocated with
        // this size and alignment.
        unsafe {
            System.dealloc(
                self.ptr,
                Layout::from_size_align_unchecked(self.size, self.align),
            )
        };
    }
}

struct Cache {
    slots: [Option<Kept>; SLOTS],
    bytes: usize,
    clock: u64,
}

// The pointers are owned by the cache alone while they are in it.
unsafe impl Send for Cache {}

/// The global allocator (see the module's documentation).
pub struct BlockReuse {
    cache: Mutex<Cache>,
    /// The cap in bytes, computed on first use (0: not yet).
    cap: AtomicUsize,
    /// While above 0 freed blocks go straight back to the system
    /// ([`BlockReuse::without_keeping`]).
    suspended: AtomicUsize,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// What the cache has done so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Large allocations served from a kept block.
    pub hits: u64,
    /// Large allocations the system served.
    pub misses: u64,
    /// Bytes held in kept blocks now.
    pub kept_bytes: usize,
    /// The most bytes it holds ([`cache_cap`]).
    pub cap: usize,
}

/// `reused=H fresh=M kept_mib=K (cap C MiB, FLASHVSR_BLOCK_CACHE_MIB)`, as
/// the benchmarks print it.
impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "reused={} fresh={} kept_mib={} (cap {} MiB, {CAP_ENV})",
            self.hits,
            self.misses,
            self.kept_bytes >> 20,
            self.cap >> 20
        )
    }
}

impl BlockReuse {
    pub const fn new() -> Self {
        Self {
            cache: Mutex::new(Cache {
                slots: [None; SLOTS],
                bytes: 0,
                clock: 0,
            }),
            cap: AtomicUsize::new(0),
            suspended: AtomicUsize::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// With a fixed cap (tests).
    #[cfg(test)]
    const fn with_cap(cap: usize) -> Self {
        let mut this = Self::new();
        this.cap = AtomicUsize::new(cap);
        this
    }

    pub fn stats(&self) -> Stats {
        Stats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            kept_bytes: self.lock().bytes,
            cap: self.cap(),
        }
    }

    /// Sends the kept blocks back, then runs `f` with no freed block kept (in
    /// any thread): for loading weights, whose temporaries come in sizes no
    /// stream asks for again and would otherwise add to the load's peak.
    pub fn without_keeping<T>(&self, f: impl FnOnce() -> T) -> T {
        struct Resume<'a>(&'a AtomicUsize);
        impl Drop for Resume<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        self.suspended.fetch_add(1, Ordering::AcqRel);
        self.release_kept();
        let resume = Resume(&self.suspended);
        let out = f();
        drop(resume);
        out
    }

    /// Sends every kept block back to the system: when a stream ends, so
    /// that what it freed is not held while idle.
    pub fn release_kept(&self) {
        let mut released: [Option<Kept>; SLOTS] = [None; SLOTS];
        {
            let mut cache = self.lock();
            for (slot, out) in cache.slots.iter_mut().zip(released.iter_mut()) {
                *out = slot.take();
            }
            cache.bytes = 0;
        }
        for kept in released.into_iter().flatten() {
            kept.release();
        }
    }

    fn cap(&self) -> usize {
        match self.cap.load(Ordering::Relaxed) {
            0 => {
                let cap = cache_cap();
                self.cap.store(cap, Ordering::Relaxed);
                cap
            }
            cap => cap,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        // nothing in the critical sections panics; a poisoned lock is still sound
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A kept block of `layout`'s class, taken out of the cache.
    fn take(&self, layout: Layout) -> Option<*mut u8> {
        let mut cache = self.lock();
        let newest = (0..SLOTS)
            .filter(|&i| {
                cache.slots[i].is_some_and(|k| k.size == layout.size() && k.align == layout.align())
            })
            .max_by_key(|&i| cache.slots[i].map_or(0, |k| k.freed))?;
        let kept = cache.slots[newest].take()?;
        cache.bytes -= kept.size;
        Some(kept.ptr)
    }

    /// Keeps `ptr` (a block of `layout`, already its class), sending the oldest
    /// kept blocks back to the system to stay within the cap and the slots.
    unsafe fn keep(&self, ptr: *mut u8, layout: Layout) {
        let cap = self.cap();
        if layout.size() > cap || self.suspended.load(Ordering::Acquire) > 0 {
            unsafe { System.dealloc(ptr, layout) };
            return;
        }
        let mut released: [Option<Kept>; SLOTS] = [None; SLOTS];
        {
            let mut cache = self.lock();
            let mut n = 0;
            while cache.bytes + layout.size() > cap || cache.slots.iter().all(Option::is_some) {
                let Some(oldest) = (0..SLOTS)
                    .filter(|&i| cache.slots[i].is_some())
                    .min_by_key(|&i| cache.slots[i].map_or(u64::MAX, |k| k.freed))
                else {
                    break;
                };
                let kept = cache.slots[oldest].take();
                cache.bytes -= kept.map_or(0, |k| k.size);
                released[n] = kept;
                n += 1;
            }
            cache.clock += 1;
            let freed = cache.clock;
            if let Some(slot) = cache.slots.iter_mut().find(|s| s.is_none()) {
                *slot = Some(Kept {
                    ptr,
                    size: layout.size(),
                    align: layout.align(),
                    freed,
                });
                cache.bytes += layout.size();
            }
        }
        // back to the system outside the lock
        for kept in released.into_iter().flatten() {
            kept.release();
        }
    }
}

impl Default for BlockReuse {
    fn default() -> Self {
        Self::new()
    }
}

/// `layout` rounded up to its size class when it is large enough to be kept:
/// to a multiple of 1/16 of the power of two at or below its size.
fn size_class(layout: Layout) -> Option<Layout> {
    let size = layout.size();
    if size < MIN_KEPT {
        return None;
    }
    let step = 1usize << (usize::BITS - 1 - size.leading_zeros() - 4);
    let rounded = size.checked_add(step - 1)? & !(step - 1);
    Layout::from_size_align(rounded, layout.align()).ok()
}

/// The environment variable that sets the cap in MiB (0: keep no block).
pub const CAP_ENV: &str = match CAP_ENV_C.to_str() {
    Ok(name) => name,
    Err(_) => panic!("an ASCII name"),
};
/// [`CAP_ENV`] as `getenv` takes it.
const CAP_ENV_C: &std::ffi::CStr = c"FLASHVSR_BLOCK_CACHE_MIB";

/// The most bytes held in freed blocks: [`CAP_ENV`] when set to a number, else
/// an eighth of physical memory, at most 4 GiB.
pub fn cache_cap() -> usize {
    if let Some(mib) = cap_from_env() {
        return mib.saturating_mul(1 << 20);
    }
    // SAFETY: sysconf reads system values and allocates nothing.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if pages <= 0 || page <= 0 {
        return MIN_KEPT;
    }
    (pages as usize)
        .saturating_mul(page as usize)
        .checked_div(CAP_SHARE)
        .unwrap_or(0)
        .clamp(MIN_KEPT, MAX_CAP)
}

/// [`CAP_ENV`]'s value, read without allocating (this runs inside the
/// allocator).
fn cap_from_env() -> Option<usize> {
    // SAFETY: a NUL-terminated name; the value is read before anything can
    // change the environment in this call.
    let value = unsafe { libc::getenv(CAP_ENV_C.as_ptr()) };
    if value.is_null() {
        return None;
    }
    unsafe { std::ffi::CStr::from_ptr(value) }
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

unsafe impl GlobalAlloc for BlockReuse {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(class) = size_class(layout) else {
            return unsafe { System.alloc(layout) };
        };
        if let Some(ptr) = self.take(class) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return ptr;
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(class) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let Some(class) = size_class(layout) else {
            return unsafe { System.alloc_zeroed(layout) };
        };
        if let Some(ptr) = self.take(class) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            unsafe { ptr.write_bytes(0, layout.size()) };
            return ptr;
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        // fresh pages from the system are zero already
        unsafe { System.alloc_zeroed(class) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match size_class(layout) {
            Some(class) => unsafe { self.keep(ptr, class) },
            None => unsafe { System.dealloc(ptr, layout) },
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (size_class(layout), size_class(new_layout)) {
            (None, None) => unsafe { System.realloc(ptr, layout, new_size) },
            // the same class: the block already holds the new size
            (Some(old), Some(new)) if old == new => ptr,
            _ => {
                let new_ptr = unsafe { self.alloc(new_layout) };
                if !new_ptr.is_null() {
                    let n = layout.size().min(new_size);
                    unsafe {
                        std::ptr::copy_nonoverlapping(ptr, new_ptr, n);
                        self.dealloc(ptr, layout);
                    }
                }
                new_ptr
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: usize = 1 << 20;

    fn layout(size: usize) -> Layout {
        Layout::from_size_align(size, 64).unwrap()
    }

    #[test]
    fn size_classes_round_up_by_at_most_a_sixteenth() {
        assert_eq!(size_class(layout(MIN_KEPT - 1)), None);
        for size in [MIN_KEPT, MIN_KEPT + 1, 100 * MB + 3, 536 * MB, 1 << 33] {
            let class = size_class(layout(size)).unwrap();
            assert!(
                class.size() >= size && class.size() - size <= size / 16,
                "{size}"
            );
            assert_eq!(size_class(class), Some(class), "a class is its own class");
        }
        assert_eq!(
            size_class(layout(40 * MB + 1)),
            size_class(layout(40 * MB + 5)),
            "sizes a little apart share a class"
        );
    }

    #[test]
    fn a_freed_large_block_serves_the_next_of_its_class_and_small_ones_are_not_kept() {
        let a = BlockReuse::with_cap(1 << 30);
        unsafe {
            let p = a.alloc(layout(40 * MB));
            p.write_bytes(7, 40 * MB);
            a.dealloc(p, layout(40 * MB));
            assert_eq!(
                a.stats().kept_bytes,
                size_class(layout(40 * MB)).unwrap().size()
            );
            let q = a.alloc(layout(40 * MB - 100));
            assert_eq!(p, q, "the kept block is reused");
            let z = a.alloc_zeroed(layout(48 * MB));
            assert!(
                std::slice::from_raw_parts(z, 48 * MB)
                    .iter()
                    .all(|&b| b == 0)
            );
            a.dealloc(z, layout(48 * MB));
            // reused for a zeroed allocation: zeroed again
            let z2 = a.alloc_zeroed(layout(48 * MB));
            assert!(
                std::slice::from_raw_parts(z2, 48 * MB)
                    .iter()
                    .all(|&b| b == 0)
            );
            a.dealloc(z2, layout(48 * MB));
            a.dealloc(q, layout(40 * MB - 100));
            let small = a.alloc(layout(MB));
            a.dealloc(small, layout(MB));
            let stats = a.stats();
            assert_eq!((stats.hits, stats.misses), (2, 2));
            assert!(stats.kept_bytes >= 88 * MB);
            a.release_kept();
        }
    }

    #[test]
    fn the_cap_sends_the_oldest_blocks_back() {
        let a = BlockReuse::with_cap(100 * MB);
        unsafe {
            let blocks: Vec<*mut u8> = (0..3).map(|_| a.alloc(layout(40 * MB))).collect();
            for &p in &blocks {
                a.dealloc(p, layout(40 * MB));
            }
            // two fit in 100 MB: the first freed went back
            assert_eq!(a.stats().kept_bytes, 80 * MB);
            assert_eq!(a.alloc(layout(40 * MB)), blocks[2], "the newest first");
            assert_eq!(a.alloc(layout(40 * MB)), blocks[1]);
            let fresh = a.alloc(layout(40 * MB));
            assert_eq!(a.stats().kept_bytes, 0);
            assert_eq!(a.stats().misses, 4);
            // larger than the cap: never kept
            let huge = a.alloc(layout(200 * MB));
            a.dealloc(huge, layout(200 * MB));
            assert_eq!(a.stats().kept_bytes, 0);
            for p in [blocks[2], blocks[1], fresh] {
                a.dealloc(p, layout(40 * MB));
            }
            a.release_kept();
        }
    }

    #[test]
    fn nothing_is_kept_while_suspended() {
        let a = BlockReuse::with_cap(1 << 30);
        unsafe {
            let before = a.alloc(layout(40 * MB));
            a.dealloc(before, layout(40 * MB));
            a.without_keeping(|| {
                assert_eq!(a.stats().kept_bytes, 0, "what was kept went back first");
                let p = a.alloc(layout(40 * MB));
                a.dealloc(p, layout(40 * MB));
                assert_eq!(a.stats().kept_bytes, 0);
            });
            let p = a.alloc(layout(40 * MB));
            a.dealloc(p, layout(40 * MB));
            assert!(a.stats().kept_bytes > 0, "kept again afterwards");
            a.release_kept();
        }
    }

    #[test]
    fn realloc_keeps_the_contents_across_classes() {
        let a = BlockReuse::with_cap(1 << 30);
        unsafe {
            let small = layout(MB);
            let p = a.alloc(small);
            for i in 0..MB {
                *p.add(i) = (i % 251) as u8;
            }
            let big = a.realloc(p, small, 64 * MB);
            let back = a.realloc(big, layout(64 * MB), 2 * MB);
            let data = std::slice::from_raw_parts(back, MB);
            assert!(data.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
            a.dealloc(back, layout(2 * MB));
            a.release_kept();
        }
    }

    #[test]
    fn alignment_is_part_of_the_class() {
        let a = BlockReuse::with_cap(1 << 30);
        unsafe {
            let wide = Layout::from_size_align(40 * MB, 4096).unwrap();
            let p = a.alloc(wide);
            assert_eq!(p as usize % 4096, 0);
            a.dealloc(p, wide);
            let q = a.alloc(layout(40 * MB));
            assert_ne!(p, q, "a 4096-aligned block is not given for 64");
            let r = a.alloc(wide);
            assert_eq!(p, r);
            a.dealloc(q, layout(40 * MB));
            a.dealloc(r, wide);
            a.release_kept();
        }
    }
}
