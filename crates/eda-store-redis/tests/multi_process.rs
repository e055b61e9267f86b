//! Three consumer processes of one group on one stream (the reason Redis is here).
//!
//! The test binary runs itself as the children (`EDA_REDIS_CHILD`): each subscribes as
//! `worker-<i>` of group `g`, writes every handled event number to its own log (one
//! write per line), then acks. The parent appends 30,000 events once all three are
//! subscribed and reads the logs.

mod common;

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{OrderCreated, unique_prefix};
use eda_core::{ConsumeOptions, Envelope, EventStore, JsonCodec, StartFrom};
use eda_store_redis::RedisStreamStore;
use eda_testkit::backend::{redis_url, require};
use futures_util::StreamExt;

const EVENTS: u64 = 30_000;
const BATCH: usize = 10;
const CONSUMERS: usize = 3;

fn child(prefix: &str, dir: &Path, index: usize) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "consumer_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("EDA_REDIS_CHILD", index.to_string())
        .env("EDA_REDIS_PREFIX", prefix)
        .env("EDA_REDIS_DIR", dir)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn a consumer process")
}

fn log_of(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("handled-{index}.log"))
}

fn handled(dir: &Path, index: usize) -> Vec<u64> {
    std::fs::read_to_string(log_of(dir, index))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect()
}

/// The child: runs until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_child() {
    let Ok(index) = std::env::var("EDA_REDIS_CHILD") else {
        return;
    };
    let dir = PathBuf::from(std::env::var("EDA_REDIS_DIR").unwrap());
    let store = RedisStreamStore::builder(redis_url())
        .key_prefix(std::env::var("EDA_REDIS_PREFIX").unwrap())
        .connect()
        .await
        .unwrap();
    let options = ConsumeOptions {
        start: StartFrom::Beginning,
        visibility_timeout: Duration::from_secs(1),
        batch_size: BATCH,
        ..ConsumeOptions::default()
    };
    let mut deliveries = store
        .subscribe("orders", "g", &format!("worker-{index}"), options)
        .await
        .unwrap();
    let index: usize = index.parse().unwrap();
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_of(&dir, index))
        .unwrap();
    std::fs::write(dir.join(format!("ready-{index}")), b"").unwrap();
    while let Some(delivery) = deliveries.next().await {
        let delivery = delivery.unwrap();
        let n = delivery
            .record
            .as_ref()
            .unwrap()
            .decode::<OrderCreated>()
            .unwrap()
            .payload
            .order_id;
        // A handler that works a little (0.2 ms), so a consumer spends most of its time
        // with a fetched batch in hand rather than in round trips.
        std::thread::sleep(Duration::from_micros(200));
        log.write_all(format!("{n}\n").as_bytes()).unwrap();
        delivery.ack().await.unwrap();
    }
}

struct Fleet {
    children: Vec<Child>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn start(prefix: &str, dir: &Path) -> Fleet {
    let fleet = Fleet {
        children: (0..CONSUMERS).map(|i| child(prefix, dir, i)).collect(),
    };
    let started = std::time::Instant::now();
    while !(0..CONSUMERS).all(|i| dir.join(format!("ready-{i}")).exists()) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "consumers did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fleet
}

async fn publish_all(store: &RedisStreamStore, spread: bool) {
    for chunk in (0..EVENTS).collect::<Vec<_>>().chunks(500) {
        let records = chunk
            .iter()
            .map(|&order_id| {
                Envelope::new(OrderCreated { order_id })
                    .to_raw(&JsonCodec)
                    .unwrap()
            })
            .collect();
        store.append("orders", records).await.unwrap();
        if spread {
            // Over about a second, so all three consumers work throughout.
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    }
}

async fn wait_for_all(dir: &Path, what: &str) -> HashMap<u64, u32> {
    let started = std::time::Instant::now();
    loop {
        let mut counts: HashMap<u64, u32> = HashMap::new();
        for i in 0..CONSUMERS {
            for n in handled(dir, i) {
                *counts.entry(n).or_default() += 1;
            }
        }
        if counts.len() as u64 == EVENTS {
            return counts;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{what}: only {} of {EVENTS} handled",
            counts.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_share_a_group() {
    if std::env::var_os("EDA_REDIS_CHILD").is_some() {
        return;
    }
    let Some(()) = require("three_processes_share_a_group", &redis_url()).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique_prefix();
    let store = RedisStreamStore::builder(redis_url())
        .key_prefix(prefix.clone())
        .connect()
        .await
        .unwrap();
    let _fleet = start(&prefix, dir.path()).await;
    publish_all(&store, true).await;
    let counts = wait_for_all(dir.path(), "three consumers").await;
    let shares: Vec<f64> = (0..CONSUMERS)
        .map(|i| handled(dir.path(), i).len() as f64 / EVENTS as f64)
        .collect();
    println!("shares: {shares:?}");
    for share in &shares {
        assert!(
            (0.20..=0.46).contains(share),
            "unbalanced shares {shares:?}"
        );
    }
    let duplicates: u32 = counts.values().map(|c| c - 1).sum();
    assert_eq!(duplicates, 0, "nothing was redelivered without a failure");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_process_hands_its_pending_entries_to_the_others() {
    if std::env::var_os("EDA_REDIS_CHILD").is_some() {
        return;
    }
    let Some(()) = require("a_killed_process_hands_its_pending_entries", &redis_url()).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique_prefix();
    let store = RedisStreamStore::builder(redis_url())
        .key_prefix(prefix.clone())
        .connect()
        .await
        .unwrap();
    let mut fleet = start(&prefix, dir.path()).await;
    let publisher = {
        let store = store.clone();
        // At once: a backlog keeps every consumer holding a batch.
        tokio::spawn(async move { publish_all(&store, false).await })
    };
    // Midway, SIGKILL the first consumer.
    let started = std::time::Instant::now();
    while (0..CONSUMERS)
        .map(|i| handled(dir.path(), i).len())
        .sum::<usize>()
        < (EVENTS / 2) as usize
    {
        assert!(started.elapsed() < Duration::from_secs(60), "no progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Kill it while it holds entries: freeze it (SIGSTOP), let a request it already
    // sent land, and look; if it holds nothing right then, let it run a little more.
    let pid = fleet.children[0].id().to_string();
    let signal = |sig: &str| {
        let status = Command::new("kill").args([sig, &pid]).status().unwrap();
        assert!(status.success(), "kill {sig} {pid}");
    };
    let in_flight = loop {
        signal("-STOP");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let held = pending_of(&store, "worker-0").await;
        if held > 0 {
            break held;
        }
        signal("-CONT");
        assert!(started.elapsed() < Duration::from_secs(60), "worker-0 idle");
        tokio::time::sleep(Duration::from_millis(3)).await;
    };
    fleet.children[0].kill().unwrap(); // SIGKILL
    fleet.children[0].wait().unwrap();
    let killed_at = handled(dir.path(), 0).len();
    println!("killed worker-0 after it handled {killed_at}, holding {in_flight} entries");
    publisher.await.unwrap();
    let counts = wait_for_all(dir.path(), "after the kill").await;
    let duplicates: u32 = counts.values().map(|c| c - 1).sum();
    println!("{duplicates} duplicates");
    // Only entries in flight at the kill come twice: those worker-0 handled but had not
    // acked yet, a subset of what it held.
    assert!(
        duplicates as usize <= in_flight,
        "{duplicates} duplicates, but worker-0 held only {in_flight}"
    );
    assert_eq!(
        pending_of(&store, "worker-0").await,
        0,
        "claimed by the others"
    );
    // Every entry is acked by the end: nothing left pending for the dead consumer.
    let started = std::time::Instant::now();
    loop {
        let left = pending(&store).await;
        if left == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{left} entries left pending"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Entries of group `g` held by `consumer` (`XPENDING key g - + 1000 consumer`).
async fn pending_of(store: &RedisStreamStore, consumer: &str) -> usize {
    let entries: fred::types::Value = fred::interfaces::ClientLike::custom(
        store.client(),
        fred::cmd!("XPENDING"),
        vec![
            store.stream_key("orders"),
            "g".into(),
            "-".into(),
            "+".into(),
            "1000".into(),
            consumer.into(),
        ],
    )
    .await
    .unwrap();
    match entries {
        fred::types::Value::Array(entries) => entries.len(),
        other => panic!("unexpected XPENDING reply {other:?}"),
    }
}

/// Entries of group `g` delivered and not acked (`XPENDING` summary).
async fn pending(store: &RedisStreamStore) -> i64 {
    let summary: fred::types::Value = fred::interfaces::StreamsInterface::xpending(
        store.client(),
        store.stream_key("orders"),
        "g",
        (),
    )
    .await
    .unwrap();
    match summary {
        fred::types::Value::Array(fields) => fields[0].as_i64().expect("a count"),
        other => panic!("unexpected XPENDING reply {other:?}"),
    }
}
