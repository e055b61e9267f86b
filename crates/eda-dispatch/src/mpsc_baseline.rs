//! The benchmark baseline of issue 3: the same bus with a bounded `tokio::sync::mpsc`
//! channel per group in place of the topic's ring. Compiled only with
//! `RUSTFLAGS="--cfg eda_mpsc_baseline"` (`cargo xtask bench transport` builds it in its
//! own target directory); never part of the library.
//!
//! It mimics the few ring calls the bus makes. Backpressure is per channel: a publish
//! reserves a slot in every group's channel or, when one is full, in none. Lag is the
//! count of events sent minus those read.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use arc_swap::ArcSwap;

use tokio::sync::mpsc;

use crate::ring::{Closed, Sequence};
use crate::topic::Published;

/// The topic's side: one sender per attached group.
pub(crate) struct Ring {
    capacity: usize,
    /// Read on every publish without a lock, as the bus reads its routes.
    senders: ArcSwap<Vec<mpsc::Sender<Arc<Published>>>>,
    closed: AtomicBool,
    sent: AtomicI64,
}

impl Ring {
    pub(crate) fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            capacity: capacity.max(1),
            senders: ArcSwap::from_pointee(Vec::new()),
            closed: AtomicBool::new(false),
            sent: AtomicI64::new(-1),
        })
    }

    pub(crate) fn consumer(&self) -> Consumer {
        let (tx, rx) = mpsc::channel(self.capacity);
        self.senders.rcu(|senders| {
            let mut senders = Vec::clone(senders);
            senders.push(tx.clone());
            senders
        });
        Consumer {
            rx,
            peeked: None,
            sequence: Arc::new(Sequence::new(self.sent.load(Ordering::Acquire))),
        }
    }

    pub(crate) fn try_publish(&self, value: Published) -> Result<i64, Published> {
        let senders = self.senders.load();
        let mut permits = Vec::with_capacity(senders.len());
        for tx in senders.iter() {
            match tx.try_reserve() {
                Ok(permit) => permits.push(permit),
                Err(mpsc::error::TrySendError::Closed(())) => {} // its group is gone
                Err(mpsc::error::TrySendError::Full(())) => return Err(value),
            }
        }
        let value = Arc::new(value);
        for permit in permits {
            permit.send(value.clone());
        }
        Ok(self.sent.fetch_add(1, Ordering::AcqRel) + 1)
    }

    pub(crate) async fn room(&self) -> Result<(), Closed> {
        let senders = self.senders.load_full();
        for tx in senders.iter() {
            if self.is_closed() {
                return Err(Closed);
            }
            // A permit proves room; dropping it gives the slot back.
            let _ = tx.reserve().await;
        }
        Ok(())
    }

    pub(crate) fn cursor(&self) -> i64 {
        self.sent.load(Ordering::Acquire)
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.senders.store(Arc::new(Vec::new()));
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// A group's side of its channel.
pub(crate) struct Consumer {
    rx: mpsc::Receiver<Arc<Published>>,
    peeked: Option<Arc<Published>>,
    sequence: Arc<Sequence>,
}

impl Consumer {
    pub(crate) fn sequence(&self) -> &Arc<Sequence> {
        &self.sequence
    }

    /// Events sent but not read yet.
    pub(crate) fn claimed_lag(&self) -> i64 {
        (self.rx.len() + usize::from(self.peeked.is_some())) as i64
    }

    pub(crate) fn try_read_batch(
        &mut self,
        max: usize,
        mut f: impl FnMut(i64, &Published),
    ) -> usize {
        let mut n = 0;
        let mut at = self.sequence.get();
        while n < max {
            let next = match self.peeked.take() {
                Some(p) => p,
                None => match self.rx.try_recv() {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            at += 1;
            f(at, &next);
            n += 1;
        }
        self.sequence.set(at);
        n
    }

    pub(crate) async fn ready(&mut self) -> Result<(), Closed> {
        if self.peeked.is_some() {
            return Ok(());
        }
        match self.rx.recv().await {
            Some(p) => {
                self.peeked = Some(p);
                Ok(())
            }
            None => Err(Closed),
        }
    }
}
