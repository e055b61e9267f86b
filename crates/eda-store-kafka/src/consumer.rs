//! A consumer of a group: a coordinator that holds a membership lease and its share of
//! partition leases, and a worker per owned partition that fetches, delivers, tracks
//! what is in flight, redelivers, and commits the acked prefix.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use eda_core::{
    AckHandle, BoxFuture, CancellationToken, ConsumeOptions, Delivery, DeliveryStream, RawEvent,
    StartFrom, StoreError, Undecodable,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::{KafkaStore, parse_position, position, record};

type Out = mpsc::Sender<Result<Delivery, StoreError>>;

/// Sets the group's starting offset on every partition that has none yet.
async fn init_offsets(
    store: &KafkaStore,
    topic: &str,
    group: &str,
    start: &StartFrom,
) -> Result<(), StoreError> {
    let after = match start {
        StartFrom::After(p) => Some(parse_position(p)?),
        _ => None,
    };
    for p in 0..store.partition_count() {
        if store
            .coordination()
            .committed(group, topic, p as u32)
            .await?
            .is_some()
        {
            continue;
        }
        let offset = match (start, after) {
            (StartFrom::Beginning, _) => 0,
            (StartFrom::After(_), Some((ap, ao))) if ap == p => ao + 1,
            // New only, and the partitions other than the one named by `After`.
            _ => store.high_watermark(topic, p).await?,
        };
        store
            .coordination()
            .commit(group, topic, p as u32, offset)
            .await?;
    }
    Ok(())
}

pub(crate) async fn subscribe(
    store: KafkaStore,
    topic: &str,
    group: &str,
    consumer: &str,
    options: ConsumeOptions,
) -> Result<DeliveryStream, StoreError> {
    init_offsets(&store, topic, group, &options.start).await?;
    let (tx, rx) = mpsc::channel(options.batch_size.max(1));
    let holder = format!("{consumer}#{:016x}", fastrand::u64(..));
    let prefix = format!("kafka/{topic}/{group}/");
    let coordinator = Coordinator {
        store,
        topic: topic.into(),
        group: group.into(),
        member_lease: format!("{prefix}members/{holder}"),
        members_prefix: format!("{prefix}members/"),
        partition_prefix: format!("{prefix}p"),
        holder,
        options,
        out: tx,
        workers: HashMap::new(),
    };
    tokio::spawn(coordinator.run());
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Ok(Box::pin(stream))
}

struct WorkerHandle {
    /// Stop now (the lease is lost, or the consumer is gone).
    stop: CancellationToken,
    /// Stop fetching, finish what is in flight, then end (hand the partition over).
    release: CancellationToken,
    task: JoinHandle<()>,
}

struct Coordinator {
    store: KafkaStore,
    topic: Arc<str>,
    group: Arc<str>,
    holder: String,
    member_lease: String,
    members_prefix: String,
    partition_prefix: String,
    options: ConsumeOptions,
    out: Out,
    workers: HashMap<i32, WorkerHandle>,
}

impl Coordinator {
    fn lease(&self, p: i32) -> String {
        format!("{}{p}", self.partition_prefix)
    }

    async fn run(mut self) {
        if let Some((member, members)) = self.store.inner.options.static_member {
            return self.run_static(member, members).await;
        }
        let ttl = self.store.inner.options.lease_ttl;
        let tick = (ttl / 4).min(Duration::from_millis(100));
        loop {
            if self.out.is_closed() {
                break;
            }
            if let Err(e) = self.rebalance(ttl).await {
                tracing::warn!(topic = %self.topic, group = %self.group, error = %e, "kafka consumer: rebalancing failed; retrying");
            }
            tokio::select! {
                _ = self.out.closed() => break,
                _ = tokio::time::sleep(tick) => {}
            }
        }
        // The stream was dropped: stop every worker (each commits what was acked), then
        // give the partitions and the membership up.
        for (p, w) in self.workers.drain() {
            w.stop.cancel();
            let _ = w.task.await;
            let _ = self
                .store
                .coordination()
                .release(&format!("{}{p}", self.partition_prefix), &self.holder)
                .await;
        }
        let _ = self
            .store
            .coordination()
            .release(&self.member_lease, &self.holder)
            .await;
    }

    /// Static membership: a worker for each partition `p % members == member`, started
    /// again if it ends (a failure), until the stream is dropped. No leases.
    async fn run_static(mut self, member: u32, members: u32) {
        let mine: Vec<i32> = (0..self.store.partition_count())
            .filter(|p| *p as u32 % members == member)
            .collect();
        loop {
            for &p in &mine {
                let ended = self.workers.get(&p).is_none_or(|w| w.task.is_finished());
                if ended && !self.out.is_closed() {
                    self.start_worker(p);
                }
            }
            tokio::select! {
                _ = self.out.closed() => break,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
        for (_, w) in self.workers.drain() {
            w.stop.cancel();
            let _ = w.task.await;
        }
    }

    async fn rebalance(&mut self, ttl: Duration) -> Result<(), StoreError> {
        let coordination = self.store.coordination().clone();
        coordination
            .acquire(&self.member_lease, &self.holder, ttl)
            .await?;
        let members = coordination
            .holders(&self.members_prefix)
            .await?
            .len()
            .max(1);
        let n = self.store.partition_count();
        let share = (n as usize).div_ceil(members);

        // Workers that ended (handed over, or failed): give their partitions up.
        let ended: Vec<i32> = self
            .workers
            .iter()
            .filter(|(_, w)| w.task.is_finished())
            .map(|(p, _)| *p)
            .collect();
        for p in ended {
            self.workers.remove(&p);
            coordination.release(&self.lease(p), &self.holder).await?;
        }
        // Renew the leases held; a lease lost means another consumer has the partition.
        let owned: Vec<i32> = self.workers.keys().copied().collect();
        for p in owned {
            if !coordination
                .acquire(&self.lease(p), &self.holder, ttl)
                .await?
            {
                tracing::warn!(topic = %self.topic, partition = p, "kafka consumer: partition lease lost");
                if let Some(w) = self.workers.remove(&p) {
                    w.stop.cancel();
                }
            }
        }
        // More than the fair share: hand the highest partitions over once drained.
        let mut active: Vec<i32> = self
            .workers
            .iter()
            .filter(|(_, w)| !w.release.is_cancelled())
            .map(|(p, _)| *p)
            .collect();
        active.sort_unstable();
        while active.len() > share {
            let p = active.pop().expect("non-empty");
            self.workers[&p].release.cancel();
        }
        // Fewer: take free partitions.
        let mut held = active.len();
        for p in 0..n {
            if held >= share {
                break;
            }
            if self.workers.contains_key(&p) {
                continue;
            }
            if coordination
                .acquire(&self.lease(p), &self.holder, ttl)
                .await?
            {
                self.start_worker(p);
                held += 1;
            }
        }
        Ok(())
    }

    fn start_worker(&mut self, partition: i32) {
        let (stop, release) = (CancellationToken::new(), CancellationToken::new());
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        let worker = Worker {
            store: self.store.clone(),
            topic: self.topic.clone(),
            group: self.group.clone(),
            partition,
            options: self.options.clone(),
            out: self.out.clone(),
            ctl_tx,
            ctl_rx,
            stop: stop.clone(),
            release: release.clone(),
            next: 0,
            committed: 0,
            delivered: 0,
            inflight: BTreeMap::new(),
            fetched: std::collections::VecDeque::new(),
            fetcher: None,
            last_commit: Instant::now(),
        };
        let task = tokio::spawn(worker.run());
        self.workers.insert(
            partition,
            WorkerHandle {
                stop,
                release,
                task,
            },
        );
    }
}

enum Ctl {
    Ack {
        offset: i64,
        token: u64,
    },
    Nack {
        offset: i64,
        token: u64,
        reply: oneshot::Sender<bool>,
    },
    Extend {
        offset: i64,
        token: u64,
        by: Duration,
        reply: oneshot::Sender<bool>,
    },
}

struct InFlight {
    /// The record as fetched: decoded again for a redelivery (rare), so a first
    /// delivery moves its decoded event out instead of cloning it.
    record: rskafka::record::Record,
    token: u64,
    deadline: Instant,
    acked: bool,
}

struct Worker {
    store: KafkaStore,
    topic: Arc<str>,
    group: Arc<str>,
    partition: i32,
    options: ConsumeOptions,
    out: Out,
    ctl_tx: mpsc::UnboundedSender<Ctl>,
    ctl_rx: mpsc::UnboundedReceiver<Ctl>,
    stop: CancellationToken,
    release: CancellationToken,
    next: i64,
    committed: i64,
    /// Records below this offset were delivered before, by this worker or an earlier
    /// owner of the partition (see [`delivered_slot`]).
    delivered: i64,
    inflight: BTreeMap<i64, InFlight>,
    /// Records fetched and not delivered yet (from `next` on): a fetch returns up to
    /// ~1 MiB, a full window takes fewer; the rest waits here instead of being fetched
    /// again.
    fetched: std::collections::VecDeque<rskafka::record::RecordAndOffset>,
    /// This worker's own connection for fetching (made on first use, dropped after a
    /// failed fetch): see `KafkaStore::fetch_client`.
    fetcher: Option<rskafka::client::partition::PartitionClient>,
    last_commit: Instant,
}

/// How often the acked prefix is committed at most (acks are batched this way).
const COMMIT_EVERY: Duration = Duration::from_millis(100);

/// Where a group keeps, per partition, the offset below which every record was
/// delivered at least once: an offset slot of the coordination store under the topic's
/// name plus `#delivered` (Kafka topic names cannot hold `#`, so no real topic's
/// offsets are there).
///
/// Attempt counts survive crashes without a row per record: a first delivery only
/// raises this mark (one write per delivered batch, before the batch is handed out),
/// and is attempt 1. A record below the mark was delivered before, so its attempt is
/// its per-record count (kept only for such redeliveries: after a nack or timeout, or
/// by a new owner after a crash) plus that first delivery. One row per record cost
/// ~40 % of consume throughput (180k against 294k records/s in `cargo bench -p
/// eda-store-kafka --bench kafka -- consume`).
///
/// Two owners of one partition at once (a lease that expired under a live, stalled
/// owner) can both count a record's delivery as its first: its attempt count is then
/// one low. At-least-once delivery does not depend on it.
fn delivered_slot(topic: &str) -> String {
    format!("{topic}#delivered")
}

impl Worker {
    async fn run(mut self) {
        if let Err(e) = self.work().await {
            tracing::warn!(topic = %self.topic, partition = self.partition, error = %e, "kafka consumer: partition worker stopped");
        }
        self.settle_controls();
        if let Err(e) = self.commit(true).await {
            tracing::warn!(topic = %self.topic, partition = self.partition, error = %e, "kafka consumer: final commit failed");
        }
    }

    async fn work(&mut self) -> Result<(), StoreError> {
        let coordination = self.store.coordination().clone();
        self.committed = coordination
            .committed(&self.group, &self.topic, self.partition as u32)
            .await?
            .unwrap_or(0);
        self.next = self.committed;
        self.delivered = coordination
            .committed(
                &self.group,
                &delivered_slot(&self.topic),
                self.partition as u32,
            )
            .await?
            .unwrap_or(0);
        let wait = self.store.inner.options.fetch_wait;
        loop {
            if self.stop.is_cancelled() {
                return Ok(());
            }
            self.settle_controls();
            if !self.redeliver_due().await? {
                return Ok(()); // the consumer is gone
            }
            self.commit(false).await?;
            if self.release.is_cancelled() {
                let stale = self
                    .inflight
                    .values()
                    .filter(|f| !f.acked)
                    .all(|f| f.deadline <= Instant::now());
                if self.inflight.values().all(|f| f.acked) || stale {
                    return Ok(()); // drained: hand the partition over
                }
            }
            let room = self
                .options
                .batch_size
                .max(1)
                .saturating_sub(self.inflight.len());
            if room > 0 && !self.release.is_cancelled() {
                if self.fetched.is_empty() {
                    let fetcher = match self.fetcher.take() {
                        Some(fetcher) => fetcher,
                        None => match tokio::select! {
                            _ = self.stop.cancelled() => return Ok(()),
                            made = self.store.fetch_client(&self.topic, self.partition) => made,
                        } {
                            Ok(fetcher) => fetcher,
                            Err(e) => {
                                tracing::warn!(topic = %self.topic, partition = self.partition, error = %e, "kafka consumer: no connection for fetching; retrying");
                                tokio::time::sleep(Duration::from_millis(200)).await;
                                continue;
                            }
                        },
                    };
                    let fetched = tokio::select! {
                        _ = self.stop.cancelled() => return Ok(()),
                        fetched = self.store.fetch_from(&fetcher, self.next, wait) => fetched,
                    };
                    self.fetcher = Some(fetcher);
                    match fetched {
                        Ok((records, _)) => {
                            let next = self.next;
                            self.fetched
                                .extend(records.into_iter().filter(|r| r.offset >= next));
                        }
                        Err(e) => {
                            self.fetcher = None; // reconnect with fresh metadata
                            tracing::warn!(topic = %self.topic, partition = self.partition, error = %e, "kafka consumer: fetch failed; retrying");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
                let take = room.min(self.fetched.len());
                if take > 0 {
                    let records: Vec<_> = self.fetched.drain(..take).collect();
                    if !self.deliver_new(records).await? {
                        return Ok(());
                    }
                }
            } else {
                tokio::select! {
                    _ = self.stop.cancelled() => return Ok(()),
                    msg = self.ctl_rx.recv() => if let Some(msg) = msg { self.control(msg) },
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
        }
    }

    fn settle_controls(&mut self) {
        while let Ok(msg) = self.ctl_rx.try_recv() {
            self.control(msg);
        }
    }

    fn control(&mut self, msg: Ctl) {
        match msg {
            Ctl::Ack { offset, token } => {
                if let Some(f) = self.held(offset, token) {
                    f.acked = true;
                }
            }
            Ctl::Nack {
                offset,
                token,
                reply,
            } => {
                let ok = match self.held(offset, token) {
                    Some(f) => {
                        f.deadline = Instant::now(); // due for redelivery now
                        true
                    }
                    None => false,
                };
                let _ = reply.send(ok);
            }
            Ctl::Extend {
                offset,
                token,
                by,
                reply,
            } => {
                let ok = match self.held(offset, token) {
                    Some(f) => {
                        f.deadline += by;
                        true
                    }
                    None => false,
                };
                let _ = reply.send(ok);
            }
        }
    }

    fn held(&mut self, offset: i64, token: u64) -> Option<&mut InFlight> {
        self.inflight
            .get_mut(&offset)
            .filter(|f| f.token == token && !f.acked)
    }

    fn delivery(
        &self,
        offset: i64,
        attempt: u32,
        token: u64,
        record: Result<RawEvent, Undecodable>,
    ) -> Delivery {
        Delivery::new(
            position(self.partition, offset),
            attempt,
            record,
            Box::new(KafkaAck {
                ctl: self.ctl_tx.clone(),
                offset,
                token,
            }),
        )
    }

    /// Delivers newly fetched records; `false` when the consumer is gone.
    async fn deliver_new(
        &mut self,
        records: Vec<rskafka::record::RecordAndOffset>,
    ) -> Result<bool, StoreError> {
        // Counted before delivery, so a record that kills its consumer still counts: the
        // delivered mark rises over first deliveries, redeliveries are counted per record
        // (see `delivered_slot`).
        let Some(highest) = records.iter().map(|r| r.offset).max() else {
            return Ok(true);
        };
        let delivered_before = self.delivered;
        let again: Vec<i64> = records
            .iter()
            .map(|r| r.offset)
            .filter(|o| *o < delivered_before)
            .collect();
        // The counts come in the order of `again`, which is the records' order.
        let mut counted = self.count_redeliveries(&again).await?.into_iter();
        let attempts: Vec<u32> = records
            .iter()
            .map(|r| {
                if r.offset < delivered_before {
                    counted.next().unwrap_or(2)
                } else {
                    1
                }
            })
            .collect();
        if highest >= self.delivered {
            self.store
                .coordination()
                .commit(
                    &self.group,
                    &delivered_slot(&self.topic),
                    self.partition as u32,
                    highest + 1,
                )
                .await?;
            self.delivered = highest + 1;
        }
        let deadline = Instant::now() + self.options.visibility_timeout;
        for (r, attempt) in records.into_iter().zip(attempts) {
            let decoded = record::from_record(&r.record);
            let f = InFlight {
                record: r.record,
                token: fastrand::u64(..),
                deadline,
                acked: false,
            };
            let d = self.delivery(r.offset, attempt, f.token, decoded);
            self.inflight.insert(r.offset, f);
            self.next = r.offset + 1;
            if self.out.send(Ok(d)).await.is_err() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Redelivers what was nacked or not acked in time; `false` when the consumer is
    /// gone.
    async fn redeliver_due(&mut self) -> Result<bool, StoreError> {
        let now = Instant::now();
        let due: Vec<i64> = self
            .inflight
            .iter()
            .filter(|(_, f)| !f.acked && f.deadline <= now)
            .map(|(o, _)| *o)
            .collect();
        if due.is_empty() || self.release.is_cancelled() {
            return Ok(true);
        }
        let attempts = self.count_redeliveries(&due).await?;
        let deadline = Instant::now() + self.options.visibility_timeout;
        for (offset, attempt) in due.into_iter().zip(attempts) {
            let Some(f) = self.inflight.get_mut(&offset) else {
                continue;
            };
            f.token = fastrand::u64(..);
            f.deadline = deadline;
            let f = &self.inflight[&offset];
            let d = self.delivery(offset, attempt, f.token, record::from_record(&f.record));
            if self.out.send(Ok(d)).await.is_err() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Counts one more delivery of records delivered before (below the delivered mark)
    /// and returns their attempts: the stored count plus their first delivery.
    async fn count_redeliveries(&self, offsets: &[i64]) -> Result<Vec<u32>, StoreError> {
        if offsets.is_empty() {
            return Ok(Vec::new()); // no write to the coordination store
        }
        let counts = self
            .store
            .coordination()
            .bump_attempts(&self.group, &self.topic, self.partition as u32, offsets)
            .await?;
        Ok(counts.into_iter().map(|n| n.saturating_add(1)).collect())
    }

    /// Commits the acked prefix: at most every 100 ms unless `force`.
    async fn commit(&mut self, force: bool) -> Result<(), StoreError> {
        let lowest = self
            .inflight
            .iter()
            .find(|(_, f)| !f.acked)
            .map_or(self.next, |(o, _)| *o);
        self.inflight.retain(|o, _| *o >= lowest);
        if lowest <= self.committed {
            return Ok(());
        }
        // Every loop would be two writes to the coordination store per fetch: at a
        // short fetch wait, thousands a second. Idle or not, commit at most this often
        // (the final commit is forced).
        if !force && self.last_commit.elapsed() < COMMIT_EVERY {
            return Ok(());
        }
        let coordination = self.store.coordination();
        let partition = self.partition as u32;
        coordination
            .commit(&self.group, &self.topic, partition, lowest)
            .await?;
        coordination
            .clear_attempts(&self.group, &self.topic, partition, lowest)
            .await?;
        self.committed = lowest;
        self.last_commit = Instant::now();
        Ok(())
    }
}

struct KafkaAck {
    ctl: mpsc::UnboundedSender<Ctl>,
    offset: i64,
    token: u64,
}

impl KafkaAck {
    async fn ask(&self, make: impl FnOnce(oneshot::Sender<bool>) -> Ctl) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        let not_held =
            || StoreError::NotHeld(eda_core::Position::new(format!("offset {}", self.offset)));
        self.ctl.send(make(reply)).map_err(|_| not_held())?;
        match answer.await {
            Ok(true) => Ok(()),
            _ => Err(not_held()),
        }
    }
}

impl AckHandle for KafkaAck {
    fn ack(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        // Settled by the partition's worker, committed with the acked prefix (batched).
        // If the partition moved meanwhile, the ack has no effect and the record comes
        // again from the new owner.
        let _ = self.ctl.send(Ctl::Ack {
            offset: self.offset,
            token: self.token,
        });
        Box::pin(std::future::ready(Ok(())))
    }
    fn nack(&self, _reason: String) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.ask(|reply| Ctl::Nack {
            offset: self.offset,
            token: self.token,
            reply,
        }))
    }
    fn extend(&self, by: Duration) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.ask(move |reply| Ctl::Extend {
            offset: self.offset,
            token: self.token,
            by,
            reply,
        }))
    }
}
