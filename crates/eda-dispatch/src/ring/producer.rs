//! Claiming and publishing sequences: a single-producer fast path (no atomic RMW, the
//! claim counter is a plain field) and a multi-producer claim by CAS, both with batches.

use std::future::poll_fn;
use std::task::Poll;

use super::ring::{Closed, Full, RingBuffer};
use super::sequence::INITIAL;
use super::sync::Arc;

/// The only producer of a ring: claims with plain arithmetic, publishes by storing
/// the cursor. Not `Clone`; use [`MultiProducer`] for several publishers.
#[derive(Debug)]
pub struct SingleProducer<T> {
    ring: Arc<RingBuffer<T>>,
    /// The last sequence claimed.
    claimed: i64,
}

impl<T: Send + Sync> SingleProducer<T> {
    pub(super) fn new(ring: Arc<RingBuffer<T>>) -> Self {
        Self {
            ring,
            claimed: INITIAL,
        }
    }

    /// The ring.
    pub fn ring(&self) -> &Arc<RingBuffer<T>> {
        &self.ring
    }

    fn room_for(&self, n: i64) -> bool {
        self.ring.has_room(self.claimed + n, self.claimed)
    }

    /// Publishes one event, or gives it back when the ring is full or closed.
    #[inline]
    pub fn try_publish(&mut self, value: T) -> Result<i64, T> {
        if self.ring.is_closed() || !self.room_for(1) {
            return Err(value);
        }
        Ok(self.write_next(value))
    }

    /// Publishes one event, waiting for room with the ring's strategy.
    #[inline]
    pub fn publish(&mut self, value: T) -> Result<i64, Closed> {
        self.wait_for_room(1)?;
        Ok(self.write_next(value))
    }

    /// Writes and publishes the next sequence; room was checked and the ring was open.
    #[inline(always)]
    fn write_next(&mut self, value: T) -> i64 {
        let sequence = self.claimed + 1;
        let previous = self.ring.write::<false>(sequence, value);
        self.claimed = sequence;
        self.ring.publish_range::<false>(sequence, sequence);
        drop(previous);
        sequence
    }

    /// Publishes a batch under one claim and one cursor store; all or nothing.
    ///
    /// Publishes what the iterator yields, at most its announced length: an iterator
    /// that yields fewer publishes fewer (the returned range says how many).
    pub fn try_publish_batch<I>(&mut self, values: I) -> Result<(i64, i64), Full>
    where
        I: IntoIterator<Item = T>,
        I::IntoIter: ExactSizeIterator,
    {
        let values = values.into_iter();
        let n = values.len() as i64;
        if n == 0 {
            return Ok((self.claimed + 1, self.claimed));
        }
        if n > self.ring.capacity() as i64 || self.ring.is_closed() || !self.room_for(n) {
            return Err(Full);
        }
        let lo = self.claimed + 1;
        // In order, one at a time: if the iterator (or a replaced event's `Drop`)
        // panics, what was written stays unpublished and is written over next time.
        let hi = self.claimed + self.ring.write_run(lo, n as usize, values) as i64;
        self.claimed = hi;
        if hi >= lo {
            self.ring.publish_range::<false>(lo, hi);
        }
        Ok((lo, hi))
    }

    /// Publishes a batch, waiting for room with the ring's strategy. At most the ring's
    /// capacity.
    pub fn publish_batch<I>(&mut self, values: I) -> Result<(i64, i64), Closed>
    where
        I: IntoIterator<Item = T>,
        I::IntoIter: ExactSizeIterator,
    {
        let values = values.into_iter();
        let n = (values.len() as i64).min(self.ring.capacity() as i64);
        self.wait_for_room(n)?;
        self.try_publish_batch(values).map_err(|_| Closed)
    }

    #[inline]
    fn wait_for_room(&self, n: i64) -> Result<(), Closed> {
        let ring = &self.ring;
        if !ring.is_closed() && self.room_for(n) {
            return Ok(());
        }
        self.wait_for_room_slow(n)
    }

    #[cold]
    fn wait_for_room_slow(&self, n: i64) -> Result<(), Closed> {
        let ring = &self.ring;
        ring.strategy
            .wait_until(&ring.space, || ring.is_closed() || self.room_for(n));
        if ring.is_closed() {
            Err(Closed)
        } else {
            Ok(())
        }
    }

    /// Waits (asynchronously) until one event fits.
    pub async fn room(&self) -> Result<(), Closed> {
        wait_for_room(&self.ring, || self.room_for(1)).await
    }
}

/// One of several producers of a ring: claims by compare-and-swap on the shared
/// cursor and publishes per slot. Cheap to clone.
#[derive(Debug)]
pub struct MultiProducer<T> {
    ring: Arc<RingBuffer<T>>,
}

impl<T> Clone for MultiProducer<T> {
    fn clone(&self) -> Self {
        Self {
            ring: self.ring.clone(),
        }
    }
}

impl<T: Send + Sync> MultiProducer<T> {
    pub(super) fn new(ring: Arc<RingBuffer<T>>) -> Self {
        Self { ring }
    }

    /// The ring.
    pub fn ring(&self) -> &Arc<RingBuffer<T>> {
        &self.ring
    }

    /// Claims `n` sequences if they fit now: `(lo, hi)`.
    #[inline]
    fn try_claim(&self, n: i64) -> Result<(i64, i64), Full> {
        loop {
            if self.ring.is_closed() {
                return Err(Full);
            }
            let current = self.ring.cursor.get();
            let hi = current + n;
            if !self.ring.has_room(hi, current) {
                return Err(Full);
            }
            if self.ring.cursor.compare_exchange(current, hi).is_ok() {
                return Ok((current + 1, hi));
            }
        }
    }

    fn has_room_for(&self, n: i64) -> bool {
        let current = self.ring.cursor.get();
        self.ring.has_room(current + n, current)
    }

    /// Publishes one event, or gives it back when the ring is full or closed.
    #[inline]
    pub fn try_publish(&self, value: T) -> Result<i64, T> {
        match self.try_claim(1) {
            Ok((sequence, _)) => {
                let previous = self.ring.write::<true>(sequence, value);
                self.ring.publish_range::<true>(sequence, sequence);
                drop(previous);
                Ok(sequence)
            }
            Err(Full) => Err(value),
        }
    }

    /// Publishes one event, waiting for room with the ring's strategy.
    pub fn publish(&self, mut value: T) -> Result<i64, Closed> {
        loop {
            match self.try_publish(value) {
                Ok(sequence) => return Ok(sequence),
                Err(back) => value = back,
            }
            let ring = &self.ring;
            ring.strategy
                .wait_until(&ring.space, || ring.is_closed() || self.has_room_for(1));
            if ring.is_closed() {
                return Err(Closed);
            }
        }
    }

    /// Publishes a batch under one claim; all or nothing.
    ///
    /// The values are collected before the claim: a claimed sequence must be written
    /// (other producers wait for it), so no user code may run, or fall short, between
    /// claiming and publishing.
    pub fn try_publish_batch<I>(&self, values: I) -> Result<(i64, i64), Full>
    where
        I: IntoIterator<Item = T>,
        I::IntoIter: ExactSizeIterator,
    {
        let values: Vec<T> = values.into_iter().collect();
        let n = values.len() as i64;
        if n == 0 {
            let c = self.ring.cursor.get();
            return Ok((c + 1, c));
        }
        if n > self.ring.capacity() as i64 {
            return Err(Full);
        }
        // Allocated before the claim, so pushing below cannot fail.
        let mut replaced = Vec::with_capacity(if std::mem::needs_drop::<T>() {
            values.len()
        } else {
            0
        });
        let (lo, hi) = self.try_claim(n)?;
        for (sequence, value) in (lo..=hi).zip(values) {
            if let Some(previous) = self.ring.write::<true>(sequence, value)
                && std::mem::needs_drop::<T>()
            {
                replaced.push(previous);
            }
        }
        self.ring.publish_range::<true>(lo, hi);
        drop(replaced);
        Ok((lo, hi))
    }

    /// Waits (asynchronously) until one event fits; with other producers racing, the
    /// following `try_publish` may still find the ring full.
    pub async fn room(&self) -> Result<(), Closed> {
        wait_for_room(&self.ring, || self.has_room_for(1)).await
    }
}

/// Waits without a thread until `room()` holds or the ring closes. A blocking ring
/// wakes the task when a consumer makes progress; a spinning one is re-polled.
async fn wait_for_room<T>(ring: &RingBuffer<T>, room: impl Fn() -> bool) -> Result<(), Closed> {
    poll_fn(|cx| {
        if ring.is_closed() {
            return Poll::Ready(Err(Closed));
        }
        if room() {
            return Poll::Ready(Ok(()));
        }
        if !ring.signals() {
            // Nobody signals a spinning ring: poll again soon.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        ring.space.register(cx.waker());
        if ring.is_closed() {
            Poll::Ready(Err(Closed))
        } else if room() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    })
    .await
}
