//! [`MemoryStore`]: the store contract in memory, for tests and single-process use.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eda_core::{
    AckHandle, BoxFuture, Bytes, ConsumeOptions, Delivery, DeliveryStream, EventId, EventStore,
    Features, LeaseStore, OffsetStore, Position, RawEvent, ReadRange, StartFrom, StoreError,
    Timestamp, Undecodable,
};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Records are stored as CloudEvents JSON, so what does not parse is delivered as
/// [`Undecodable`], exactly as with a real backend.
#[derive(Clone)]
pub struct MemoryStore {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    notify: Notify,
    max_record_bytes: usize,
}

#[derive(Default)]
struct State {
    topics: HashMap<String, Topic>,
    offsets: HashMap<(String, String, u32), i64>,
    attempts: HashMap<(String, String, u32, i64), u32>,
    leases: HashMap<String, (String, Instant)>,
    next_token: u64,
}

#[derive(Default)]
struct Topic {
    records: Vec<(Timestamp, Bytes)>,
    ids: HashMap<EventId, usize>,
    groups: HashMap<String, Group>,
}

#[derive(Default)]
struct Group {
    /// The next record never delivered to this group.
    next: usize,
    /// Nacked records, redelivered first.
    ready: VecDeque<usize>,
    /// Delivered, not acked yet.
    held: HashMap<usize, Held>,
    /// Attempts made per record not acked yet.
    attempts: HashMap<usize, u32>,
}

struct Held {
    deadline: Instant,
    token: u64,
}

fn position(index: usize) -> Position {
    Position::new(format!("{index:020}"))
}

fn index_of(position: &Position) -> Result<usize, StoreError> {
    position
        .as_str()
        .parse()
        .map_err(|_| StoreError::Invalid(format!("`{position}` is not a memory-store position")))
}

fn decode(bytes: &Bytes) -> Result<RawEvent, Undecodable> {
    RawEvent::from_json(bytes).map_err(|e| Undecodable {
        raw: bytes.clone(),
        error: e.to_string(),
    })
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store accepting records up to 1 MiB.
    pub fn new() -> Self {
        Self::with_max_record_bytes(1024 * 1024)
    }

    /// An empty store accepting records up to `max` bytes (as CloudEvents JSON).
    pub fn with_max_record_bytes(max: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                notify: Notify::new(),
                max_record_bytes: max,
            }),
        }
    }

    /// Stores bytes as they are, for tests of records no encoder of ours would write.
    pub fn write_raw(&self, topic: &str, bytes: impl Into<Bytes>) -> Position {
        let index = {
            let mut state = lock(&self.shared.state);
            let topic = state.topics.entry(topic.to_owned()).or_default();
            topic.records.push((Timestamp::now(), bytes.into()));
            topic.records.len() - 1
        };
        self.shared.notify.notify_waiters();
        position(index)
    }

    /// Takes up to `max` deliveries for `consumer`: expired ones first, then nacked,
    /// then new records.
    fn take(
        &self,
        topic: &str,
        group: &str,
        options: &ConsumeOptions,
        max: usize,
    ) -> Vec<Delivery> {
        let now = Instant::now();
        let mut state = lock(&self.shared.state);
        let State {
            topics, next_token, ..
        } = &mut *state;
        let Some(t) = topics.get_mut(topic) else {
            return Vec::new();
        };
        let g = t.groups.entry(group.to_owned()).or_default();
        let mut picked = Vec::new();
        let mut expired: Vec<usize> = g
            .held
            .iter()
            .filter(|(_, h)| h.deadline <= now)
            .map(|(i, _)| *i)
            .collect();
        expired.sort_unstable();
        for i in expired {
            if picked.len() == max {
                break;
            }
            g.held.remove(&i);
            picked.push(i);
        }
        while picked.len() < max {
            let Some(i) = g.ready.pop_front() else { break };
            picked.push(i);
        }
        while picked.len() < max && g.next < t.records.len() {
            picked.push(g.next);
            g.next += 1;
        }
        picked
            .into_iter()
            .map(|i| {
                let attempt = g.attempts.entry(i).or_insert(0);
                *attempt += 1;
                *next_token += 1;
                g.held.insert(
                    i,
                    Held {
                        deadline: now + options.visibility_timeout,
                        token: *next_token,
                    },
                );
                Delivery::new(
                    position(i),
                    *attempt,
                    decode(&t.records[i].1),
                    Box::new(MemoryAck {
                        store: self.clone(),
                        topic: topic.to_owned(),
                        group: group.to_owned(),
                        index: i,
                        token: *next_token,
                    }),
                )
            })
            .collect()
    }

    /// When the next held delivery of the group times out.
    fn next_deadline(&self, topic: &str, group: &str) -> Option<Instant> {
        let state = lock(&self.shared.state);
        state
            .topics
            .get(topic)?
            .groups
            .get(group)?
            .held
            .values()
            .map(|h| h.deadline)
            .min()
    }

    fn with_held<R>(
        &self,
        topic: &str,
        group: &str,
        index: usize,
        token: u64,
        f: impl FnOnce(&mut Group) -> R,
    ) -> Result<R, StoreError> {
        let mut state = lock(&self.shared.state);
        let g = state
            .topics
            .get_mut(topic)
            .and_then(|t| t.groups.get_mut(group))
            .filter(|g| g.held.get(&index).is_some_and(|h| h.token == token))
            .ok_or_else(|| StoreError::NotHeld(position(index)))?;
        Ok(f(g))
    }
}

struct MemoryAck {
    store: MemoryStore,
    topic: String,
    group: String,
    index: usize,
    token: u64,
}

impl AckHandle for MemoryAck {
    fn ack(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        let r = self
            .store
            .with_held(&self.topic, &self.group, self.index, self.token, |g| {
                g.held.remove(&self.index);
                g.attempts.remove(&self.index);
            });
        Box::pin(std::future::ready(r))
    }
    fn nack(&self, _reason: String) -> BoxFuture<'_, Result<(), StoreError>> {
        let r = self
            .store
            .with_held(&self.topic, &self.group, self.index, self.token, |g| {
                g.held.remove(&self.index);
                g.ready.push_back(self.index);
            });
        self.store.shared.notify.notify_waiters();
        Box::pin(std::future::ready(r))
    }
    fn extend(&self, by: Duration) -> BoxFuture<'_, Result<(), StoreError>> {
        let r = self
            .store
            .with_held(&self.topic, &self.group, self.index, self.token, |g| {
                if let Some(h) = g.held.get_mut(&self.index) {
                    h.deadline += by;
                }
            });
        Box::pin(std::future::ready(r))
    }
}

impl EventStore for MemoryStore {
    fn features(&self) -> Features {
        Features::none()
            .ordered_per_key(true)
            .redelivers_to_other_consumers(true)
            .idempotent_appends(true)
    }

    fn append<'a>(
        &'a self,
        topic: &'a str,
        records: Vec<RawEvent>,
    ) -> BoxFuture<'a, Result<Vec<Position>, StoreError>> {
        Box::pin(async move {
            if topic.is_empty() {
                return Err(StoreError::Invalid("empty topic name".into()));
            }
            let mut encoded = Vec::with_capacity(records.len());
            for r in &records {
                let json = r
                    .to_json()
                    .map_err(|e| StoreError::Invalid(e.to_string()))?;
                if json.len() > self.shared.max_record_bytes {
                    return Err(StoreError::TooLarge {
                        size: json.len(),
                        max: self.shared.max_record_bytes,
                    });
                }
                encoded.push((r.id, r.time, Bytes::from(json)));
            }
            let positions = {
                let mut state = lock(&self.shared.state);
                let t = state.topics.entry(topic.to_owned()).or_default();
                encoded
                    .into_iter()
                    .map(|(id, time, bytes)| {
                        let index = *t.ids.entry(id).or_insert_with(|| {
                            t.records.push((time, bytes));
                            t.records.len() - 1
                        });
                        position(index)
                    })
                    .collect()
            };
            self.shared.notify.notify_waiters();
            Ok(positions)
        })
    }

    fn subscribe<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
        consumer: &'a str,
        options: ConsumeOptions,
    ) -> BoxFuture<'a, Result<DeliveryStream, StoreError>> {
        let _ = consumer;
        Box::pin(async move {
            {
                let mut state = lock(&self.shared.state);
                let t = state.topics.entry(topic.to_owned()).or_default();
                let len = t.records.len();
                if !t.groups.contains_key(group) {
                    let next = match &options.start {
                        StartFrom::Beginning => 0,
                        StartFrom::NewOnly => len,
                        StartFrom::After(p) => (index_of(p)? + 1).min(len),
                    };
                    t.groups.insert(
                        group.to_owned(),
                        Group {
                            next,
                            ..Group::default()
                        },
                    );
                }
            }
            let store = self.clone();
            let (topic, group) = (topic.to_owned(), group.to_owned());
            let buffered: VecDeque<Delivery> = VecDeque::new();
            let stream = futures_util::stream::unfold(
                (store, topic, group, options, buffered),
                |(store, topic, group, options, mut buffered)| async move {
                    loop {
                        if let Some(d) = buffered.pop_front() {
                            return Some((Ok(d), (store, topic, group, options, buffered)));
                        }
                        let notified = store.shared.notify.notified();
                        tokio::pin!(notified);
                        notified.as_mut().enable();
                        buffered.extend(store.take(
                            &topic,
                            &group,
                            &options,
                            options.batch_size.max(1),
                        ));
                        if !buffered.is_empty() {
                            continue;
                        }
                        let wait = store
                            .next_deadline(&topic, &group)
                            .map(|d| d.saturating_duration_since(Instant::now()))
                            .unwrap_or(Duration::from_secs(3600));
                        let _ = tokio::time::timeout(wait, notified).await;
                    }
                },
            );
            Ok(Box::pin(stream) as DeliveryStream)
        })
    }

    fn read<'a>(
        &'a self,
        topic: &'a str,
        range: ReadRange,
    ) -> BoxFuture<'a, Result<Vec<(Position, Result<RawEvent, Undecodable>)>, StoreError>> {
        Box::pin(async move {
            let start = match &range.after {
                Some(p) => index_of(p)? + 1,
                None => 0,
            };
            let state = lock(&self.shared.state);
            let Some(t) = state.topics.get(topic) else {
                return Ok(Vec::new());
            };
            let limit = if range.limit == 0 {
                usize::MAX
            } else {
                range.limit
            };
            Ok(t.records
                .iter()
                .enumerate()
                .skip(start)
                .filter(|(_, (time, _))| range.since.is_none_or(|s| *time >= s))
                .take(limit)
                .map(|(i, (_, bytes))| (position(i), decode(bytes)))
                .collect())
        })
    }

    fn backlog<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
        Box::pin(async move {
            let state = lock(&self.shared.state);
            Ok(state.topics.get(topic).and_then(|t| {
                t.groups.get(group).map(|g| {
                    let unread = t.records.len().saturating_sub(g.next);
                    (unread + g.ready.len() + g.held.len()) as u64
                })
            }))
        })
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(std::future::ready(Ok(())))
    }
}

impl OffsetStore for MemoryStore {
    fn commit<'a>(
        &'a self,
        group: &'a str,
        topic: &'a str,
        partition: u32,
        offset: i64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        lock(&self.shared.state)
            .offsets
            .insert((group.to_owned(), topic.to_owned(), partition), offset);
        Box::pin(std::future::ready(Ok(())))
    }
    fn committed<'a>(
        &'a self,
        group: &'a str,
        topic: &'a str,
        partition: u32,
    ) -> BoxFuture<'a, Result<Option<i64>, StoreError>> {
        let v = lock(&self.shared.state)
            .offsets
            .get(&(group.to_owned(), topic.to_owned(), partition))
            .copied();
        Box::pin(std::future::ready(Ok(v)))
    }
    fn bump_attempts<'a>(
        &'a self,
        group: &'a str,
        topic: &'a str,
        partition: u32,
        offsets: &'a [i64],
    ) -> BoxFuture<'a, Result<Vec<u32>, StoreError>> {
        let mut state = lock(&self.shared.state);
        let counts = offsets
            .iter()
            .map(|&o| {
                let n = state
                    .attempts
                    .entry((group.to_owned(), topic.to_owned(), partition, o))
                    .or_default();
                *n += 1;
                *n
            })
            .collect();
        Box::pin(std::future::ready(Ok(counts)))
    }
    fn clear_attempts<'a>(
        &'a self,
        group: &'a str,
        topic: &'a str,
        partition: u32,
        offset: i64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        lock(&self.shared.state).attempts.retain(|(g, t, p, o), _| {
            !(g == group && t == topic && *p == partition && *o < offset)
        });
        Box::pin(std::future::ready(Ok(())))
    }
}

impl LeaseStore for MemoryStore {
    fn acquire<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let now = Instant::now();
        let mut state = lock(&self.shared.state);
        let free = state
            .leases
            .get(name)
            .is_none_or(|(h, until)| h == holder || *until <= now);
        if free {
            state
                .leases
                .insert(name.to_owned(), (holder.to_owned(), now + ttl));
        }
        Box::pin(std::future::ready(Ok(free)))
    }
    fn release<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let mut state = lock(&self.shared.state);
        if state.leases.get(name).is_some_and(|(h, _)| h == holder) {
            state.leases.remove(name);
        }
        Box::pin(std::future::ready(Ok(())))
    }
    fn holders<'a>(
        &'a self,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, String)>, StoreError>> {
        let now = Instant::now();
        let mut live: Vec<(String, String)> = lock(&self.shared.state)
            .leases
            .iter()
            .filter(|(name, (_, until))| name.starts_with(prefix) && *until > now)
            .map(|(name, (holder, _))| (name.clone(), holder.clone()))
            .collect();
        live.sort();
        Box::pin(std::future::ready(Ok(live)))
    }
}
