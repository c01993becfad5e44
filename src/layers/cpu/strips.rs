//! Work cut into strips of output rows, computed and written out on the
//! threads, shared by the CPU convolution paths.

use std::marker::PhantomData;
use std::mem::MaybeUninit;

/// Work cut into `strips`, each computed into a scratch buffer and written out
/// by the thread that computed it. With at least as many strips as threads,
/// each thread takes whole strips, `threads` at a time, with its products on
/// its own (`compute`'s last argument is 1): one hand-out to the threads per
/// batch rather than one per product, each scratch stays in its own core's
/// cache, and no thread waits while another copies its strip out. A batch of
/// fewer strips, and every strip when there are fewer than threads, runs one
/// by one with each product split between the threads instead. Scratch
/// buffers are kept from strip to strip, one per thread.
pub(crate) fn strips_on_threads<J: Sync, S: Send + Default>(
    strips: &[J],
    threads: usize,
    compute: impl Fn(&J, &mut S, usize) -> candle_core::Result<()> + Sync,
    write: impl Fn(&J, &S) + Sync,
) -> candle_core::Result<()> {
    use rayon::prelude::*;
    let whole_strips = threads > 1 && strips.len() >= threads;
    let mut scratch: Vec<S> = (0..if whole_strips { threads } else { 1 })
        .map(|_| S::default())
        .collect();
    for batch in strips.chunks(threads.max(1)) {
        if whole_strips && batch.len() == threads {
            batch
                .par_iter()
                .zip(scratch.par_iter_mut())
                .try_for_each(|(strip, s)| {
                    compute(strip, s, 1)?;
                    write(strip, s);
                    candle_core::Result::Ok(())
                })?;
        } else {
            for strip in batch {
                compute(strip, &mut scratch[0], threads)?;
                write(strip, &scratch[0]);
            }
        }
    }
    Ok(())
}

/// The output of a strip-wise computation, written in disjoint ranges from
/// several threads ([`strips_on_threads`]' `write`), allocated without being
/// cleared: the convolutions write every value of their outputs, so zeroing
/// them first (a single-threaded `memset` of up to hundreds of megabytes when
/// the allocator hands back a used block) was time spent for nothing.
pub(crate) struct StripOutput<'a> {
    ptr: *mut MaybeUninit<f32>,
    len: usize,
    _values: PhantomData<&'a mut [MaybeUninit<f32>]>,
}

// SAFETY: a `StripOutput` is a `&mut [MaybeUninit<f32>]` whose ranges are
// handed out through `range`, whose callers guarantee they are disjoint.
unsafe impl Send for StripOutput<'_> {}
// SAFETY: as above.
unsafe impl Sync for StripOutput<'_> {}

impl<'a> StripOutput<'a> {
    /// The `len` values `values` has room for, none initialised yet.
    pub(crate) fn new(values: &'a mut Vec<f32>, len: usize) -> Self {
        values.clear();
        values.reserve_exact(len);
        let spare = &mut values.spare_capacity_mut()[..len];
        StripOutput {
            ptr: spare.as_mut_ptr(),
            len,
            _values: PhantomData,
        }
    }

    /// `values`, to be overwritten (tests fill them first to see what is not).
    #[cfg(test)]
    pub(crate) fn over(values: &'a mut [f32]) -> Self {
        StripOutput {
            ptr: values.as_mut_ptr().cast(),
            len: values.len(),
            _values: PhantomData,
        }
    }

    /// Values `at..at + len`.
    ///
    /// # Safety
    ///
    /// No range handed out and still in use may overlap this one: each strip
    /// takes its own output rows.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn range(&self, at: usize, len: usize) -> &mut [MaybeUninit<f32>] {
        assert!(
            at.checked_add(len).is_some_and(|end| end <= self.len),
            "strip output range {at}+{len} past {} values",
            self.len
        );
        // SAFETY: in bounds (checked above) of the spare capacity this was made
        // from, which `'a` keeps borrowed; disjoint from every other range in
        // use, as the caller guarantees.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(at), len) }
    }
}

/// Sets the length of `values` to the `len` that a [`StripOutput`] over it
/// was made for, once every one of them has been written.
///
/// # Safety
///
/// Every value `0..len` was written through the `StripOutput`.
pub(crate) unsafe fn assume_written(values: &mut Vec<f32>, len: usize) {
    assert!(len <= values.capacity());
    // SAFETY: the caller guarantees the first `len` values are initialised.
    unsafe { values.set_len(len) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Strips written from the threads land where they belong, whichever path
    /// (whole strips per thread or one by one) runs them.
    #[test]
    fn strips_write_their_own_rows() {
        let row = 5;
        for (strips, threads) in [(7, 2), (1, 2), (4, 1), (6, 3)] {
            let jobs: Vec<usize> = (0..strips).collect();
            let mut values = Vec::new();
            let out = StripOutput::new(&mut values, strips * row);
            strips_on_threads(
                &jobs,
                threads,
                |&j, s: &mut Vec<f32>, _| {
                    s.clear();
                    s.extend((0..row).map(|i| (j * row + i) as f32));
                    Ok(())
                },
                |&j, s| {
                    // SAFETY: strip `j` alone writes values j*row..(j+1)*row.
                    let dst = unsafe { out.range(j * row, row) };
                    for (d, &v) in dst.iter_mut().zip(s) {
                        d.write(v);
                    }
                },
            )
            .unwrap();
            // SAFETY: the strips cover every value.
            unsafe { assume_written(&mut values, strips * row) };
            let want: Vec<f32> = (0..strips * row).map(|v| v as f32).collect();
            assert_eq!(values, want, "{strips} strips on {threads} threads");
        }
    }

    #[test]
    #[should_panic(expected = "past")]
    fn ranges_past_the_end_panic() {
        let mut values = Vec::new();
        let out = StripOutput::new(&mut values, 4);
        // SAFETY: no other range is in use.
        let _ = unsafe { out.range(2, 3) };
    }
}
