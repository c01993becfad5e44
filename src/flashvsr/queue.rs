//! The bounded queues of the element (docs/element.md, "Threading"): from the sink
//! pad (upstream's streaming thread) to the model thread, and from it to the src
//! pad task. Items go through in order; the producer blocks only while `bound`
//! bounded items wait, and a flush or a flow error wakes it. "Worker" below is
//! the consumer.

use std::collections::VecDeque;

use parking_lot::{Condvar, Mutex};

/// Where an item stands for a sink-side caller waiting on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The worker handled it and answered this.
    Done(bool),
    /// A flush or a state change dropped it, or the worker stopped on an error.
    Dropped,
}

struct Inner<I> {
    items: VecDeque<(u64, I)>,
    /// How many of `items` count against the bound (frames).
    bounded: usize,
    next_seq: u64,
    /// The last item the worker finished, and its answer.
    done: Option<(u64, bool)>,
    flushing: bool,
    /// Shut down (PAUSED->READY): `pop_through_flush` returns `None`.
    closed: bool,
    /// Counts flushes: an item popped in an earlier epoch is stale.
    epoch: u64,
    /// The worker's last downstream flow result; an error refuses new items.
    flow: Result<gst::FlowSuccess, gst::FlowError>,
}

pub struct WorkQueue<I> {
    inner: Mutex<Inner<I>>,
    changed: Condvar,
    bound: usize,
}

impl<I> WorkQueue<I> {
    /// A queue that blocks the sink side while `bound` bounded items wait. It
    /// starts flushing: `start` opens it.
    pub fn new(bound: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                items: VecDeque::new(),
                bounded: 0,
                next_seq: 0,
                done: None,
                flushing: true,
                closed: false,
                epoch: 0,
                flow: Err(gst::FlowError::Flushing),
            }),
            changed: Condvar::new(),
            bound,
        }
    }

    /// Opens the queue with `items` (kept over a flush) in it.
    pub fn start(&self, items: Vec<I>) {
        let mut inner = self.inner.lock();
        inner.flushing = false;
        inner.closed = false;
        inner.flow = Ok(gst::FlowSuccess::Ok);
        inner.done = None;
        inner.bounded = 0;
        inner.items.clear();
        for item in items {
            let seq = inner.next_seq;
            inner.next_seq += 1;
            inner.items.push_back((seq, item));
        }
        self.changed.notify_all();
    }

    /// Flush or stop: wakes every waiter, refuses new items and returns those
    /// left, for the caller to keep what must survive the flush.
    pub fn flush(&self) -> Vec<I> {
        let mut inner = self.inner.lock();
        inner.flushing = true;
        inner.epoch += 1;
        inner.flow = Err(gst::FlowError::Flushing);
        inner.bounded = 0;
        let left = inner.items.drain(..).map(|(_, item)| item).collect();
        self.changed.notify_all();
        left
    }

    /// Adds `item` behind the others; a `bounded` one first waits while the
    /// bound is reached. Returns its sequence number, or the flow that refuses
    /// it (flushing, or the worker's downstream error).
    pub fn push(&self, item: I, bounded: bool) -> Result<u64, gst::FlowError> {
        let mut inner = self.inner.lock();
        loop {
            inner.flow?;
            if !bounded || inner.bounded < self.bound {
                break;
            }
            self.changed.wait(&mut inner);
        }
        let seq = inner.next_seq;
        inner.next_seq += 1;
        inner.items.push_back((seq, item));
        inner.bounded += usize::from(bounded);
        self.changed.notify_all();
        Ok(seq)
    }

    /// Waits until the worker has handled item `seq`.
    pub fn wait_for(&self, seq: u64) -> Answer {
        let mut inner = self.inner.lock();
        loop {
            if let Some((done, answer)) = inner.done
                && done >= seq
            {
                return if done == seq {
                    Answer::Done(answer)
                } else {
                    Answer::Dropped
                };
            }
            if inner.flow.is_err() {
                return Answer::Dropped;
            }
            self.changed.wait(&mut inner);
        }
    }

    /// The worker's next item, waiting for one; `None` once flushing.
    /// `is_bounded` tells whether it counted against the bound.
    pub fn pop(&self, is_bounded: impl Fn(&I) -> bool) -> Option<(u64, I)> {
        let mut inner = self.inner.lock();
        loop {
            if inner.flushing {
                return None;
            }
            if let Some((seq, item)) = inner.items.pop_front() {
                if is_bounded(&item) {
                    inner.bounded = inner.bounded.saturating_sub(1);
                }
                self.changed.notify_all();
                return Some((seq, item));
            }
            self.changed.wait(&mut inner);
        }
    }

    /// Flush for good: `pop_through_flush` returns `None` until `start`.
    pub fn close(&self) -> Vec<I> {
        self.inner.lock().closed = true;
        self.flush()
    }

    /// The next item and the epoch it was popped in, waiting for one through
    /// flushes and flow errors; `None` once closed.
    pub fn pop_through_flush(&self, is_bounded: impl Fn(&I) -> bool) -> Option<(u64, u64, I)> {
        let mut inner = self.inner.lock();
        loop {
            if inner.closed {
                return None;
            }
            if !inner.flushing
                && inner.flow.is_ok()
                && let Some((seq, item)) = inner.items.pop_front()
            {
                if is_bounded(&item) {
                    inner.bounded = inner.bounded.saturating_sub(1);
                }
                self.changed.notify_all();
                return Some((inner.epoch, seq, item));
            }
            self.changed.wait(&mut inner);
        }
    }

    /// The number of flushes so far (see `pop_through_flush`).
    pub fn epoch(&self) -> u64 {
        self.inner.lock().epoch
    }

    /// A downstream flow error: refuses new items and wakes every waiter.
    pub fn fail(&self, flow: gst::FlowError) {
        let mut inner = self.inner.lock();
        if !inner.flushing && inner.flow.is_ok() {
            inner.flow = Err(flow);
        }
        self.changed.notify_all();
    }

    /// Bounded items waiting (frames the worker has not taken yet).
    pub fn waiting(&self) -> usize {
        self.inner.lock().bounded
    }

    /// The worker finished item `seq` with `answer` (for a caller in `wait_for`).
    pub fn finish(&self, seq: u64, answer: bool) {
        let mut inner = self.inner.lock();
        inner.done = Some((seq, answer));
        self.changed.notify_all();
    }

    /// The worker's last flow result (what the chain function returns).
    pub fn flow(&self) -> Result<gst::FlowSuccess, gst::FlowError> {
        self.inner.lock().flow
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_sink_side_blocks_at_the_bound_until_the_worker_takes_an_item() {
        let queue = Arc::new(WorkQueue::new(2));
        queue.start(Vec::new());
        queue.push(1, true).unwrap();
        queue.push(2, true).unwrap();
        queue.push(100, false).unwrap(); // events do not count
        let pusher = {
            let queue = queue.clone();
            std::thread::spawn(move || queue.push(3, true))
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!pusher.is_finished(), "a third frame waits at the bound");
        assert_eq!(queue.pop(|i| *i < 100), Some((0, 1)));
        assert_eq!(pusher.join().unwrap(), Ok(3));
        assert_eq!(queue.waiting(), 2);
    }

    #[test]
    fn a_flush_wakes_the_blocked_sink_side_and_the_worker() {
        let queue = Arc::new(WorkQueue::<u32>::new(1));
        queue.start(Vec::new());
        queue.push(1, true).unwrap();
        let pusher = {
            let queue = queue.clone();
            std::thread::spawn(move || queue.push(2, true))
        };
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(queue.flush(), vec![1]);
        assert_eq!(pusher.join().unwrap(), Err(gst::FlowError::Flushing));
        assert_eq!(queue.pop(|_| true), None);
        queue.start(vec![7]);
        assert_eq!(queue.pop(|_| true), Some((1, 7)));
    }

    #[test]
    fn popping_through_a_flush_waits_for_the_restart_and_stops_when_closed() {
        let queue = Arc::new(WorkQueue::<u32>::new(4));
        queue.start(Vec::new());
        queue.flush();
        let popper = {
            let queue = queue.clone();
            std::thread::spawn(move || queue.pop_through_flush(|_| true))
        };
        std::thread::sleep(Duration::from_millis(20));
        assert!(!popper.is_finished(), "waits while flushing");
        queue.start(vec![5]);
        assert_eq!(popper.join().unwrap(), Some((1, 0, 5)));
        let popper = {
            let queue = queue.clone();
            std::thread::spawn(move || queue.pop_through_flush(|_| true))
        };
        std::thread::sleep(Duration::from_millis(20));
        queue.close();
        assert_eq!(popper.join().unwrap(), None);
    }

    #[test]
    fn a_worker_flow_error_refuses_new_items_and_answers_waiters() {
        let queue = WorkQueue::<u32>::new(4);
        queue.start(Vec::new());
        let seq = queue.push(1, false).unwrap();
        assert_eq!(queue.pop(|_| false), Some((seq, 1)));
        queue.finish(seq, true);
        assert_eq!(queue.wait_for(seq), Answer::Done(true));
        queue.fail(gst::FlowError::NotLinked);
        assert_eq!(queue.push(2, true), Err(gst::FlowError::NotLinked));
        assert_eq!(queue.wait_for(seq + 1), Answer::Dropped);
    }
}
