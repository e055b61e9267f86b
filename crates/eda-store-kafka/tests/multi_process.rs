//! One group, two consumer *processes* sharing partitions by leases in one SQLite
//! coordination file: both get a share; one is SIGKILLed mid-stream; the other takes its
//! partitions over after the lease lapses and finishes. Nothing is lost, and what is
//! handled twice is bounded by what the killed process had in flight.
//!
//! The children are this test binary run again with `EDA_KAFKA_MP_TOPIC` set.

use std::io::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eda_core::{ConsumeOptions, Envelope, Event, EventStore, JsonCodec, StartFrom};
use eda_store_kafka::KafkaStore;
use eda_store_sqlite::SqliteStore;
use eda_testkit::backend::{kafka_brokers, require};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

const EVENTS: u64 = 6_000;
const PARTITIONS: i32 = 4;
const BATCH: usize = 50;

#[derive(Serialize, Deserialize)]
struct Job {
    n: u64,
}
impl Event for Job {
    const TYPE: &'static str = "mp.job";
}

async fn store(coordination: &Path) -> KafkaStore {
    let coordination = Arc::new(SqliteStore::open(coordination).await.unwrap());
    KafkaStore::builder([kafka_brokers()], coordination)
        .partitions(PARTITIONS)
        .lease_ttl(Duration::from_secs(2))
        .connect()
        .await
        .unwrap()
}

/// A child process taking `pace` over each of its first `paced` records (so that
/// neither finishes every partition before the other has its share: unpaced, one
/// consumer drains the topic in tens of milliseconds).
fn child(name: &str, topic: &str, dir: &Path, pace: Duration, paced: usize) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env("EDA_KAFKA_MP_PACE_US", pace.as_micros().to_string())
        .env("EDA_KAFKA_MP_PACED", paced.to_string());
    cmd.args([
        "--exact",
        "kafka_mp_child",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("EDA_KAFKA_MP_TOPIC", topic)
    .env("EDA_KAFKA_MP_DIR", dir)
    .env("EDA_KAFKA_MP_NAME", name)
    .stdout(Stdio::null())
    .stderr(Stdio::inherit())
    .spawn()
    .expect("spawn the child")
}

fn lines(path: &Path) -> Vec<(u64, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (n, p) = l.split_once(' ')?;
            Some((n.parse().ok()?, p.to_owned()))
        })
        .collect()
}

/// A child: consume group `g` as consumer `EDA_KAFKA_MP_NAME`, log `<n> <partition>`
/// per handled record (one write each), then ack; each of its first `EDA_KAFKA_MP_PACED`
/// records takes `EDA_KAFKA_MP_PACE_US` microseconds at least. Runs until the group has nothing left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_mp_child() {
    let Ok(topic) = std::env::var("EDA_KAFKA_MP_TOPIC") else {
        return;
    };
    let dir = std::path::PathBuf::from(std::env::var_os("EDA_KAFKA_MP_DIR").unwrap());
    let name = std::env::var("EDA_KAFKA_MP_NAME").unwrap();
    let pace = Duration::from_micros(
        std::env::var("EDA_KAFKA_MP_PACE_US")
            .ok()
            .and_then(|us| us.parse().ok())
            .unwrap_or(0),
    );
    let paced: usize = std::env::var("EDA_KAFKA_MP_PACED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let mut handled = 0;
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))
        .unwrap();
    let store = store(&dir.join("coordination.db")).await;
    let options = ConsumeOptions {
        start: StartFrom::Beginning,
        batch_size: BATCH,
        visibility_timeout: Duration::from_secs(30),
        ..ConsumeOptions::default()
    };
    let mut s = store.subscribe(&topic, "g", &name, options).await.unwrap();
    let started = Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_millis(500), s.next()).await {
            Ok(Some(d)) => {
                let d = d.unwrap();
                let n = d
                    .record
                    .as_ref()
                    .unwrap()
                    .decode::<Job>()
                    .unwrap()
                    .payload
                    .n;
                let partition = d.position.as_str().split(':').next().unwrap().to_owned();
                if handled < paced {
                    tokio::time::sleep(pace).await;
                }
                handled += 1;
                log.write_all(format!("{n} {partition}\n").as_bytes())
                    .unwrap();
                d.ack().await.unwrap();
            }
            Ok(None) => break,
            Err(_) => {
                if store.backlog(&topic, "g").await.unwrap() == Some(0) {
                    break;
                }
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{name} did not finish"
        );
    }
    drop(s); // commits what was acked
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_consumer_process_hands_its_partitions_over() {
    if std::env::var_os("EDA_KAFKA_MP_TOPIC").is_some() {
        return;
    }
    let Some(()) = require("kafka multi-process group", &kafka_brokers()).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let topic = format!("mp-{:08x}", fastrand::u32(..));
    let producer = store(&dir.path().join("coordination.db")).await;
    for chunk in (0..EVENTS).collect::<Vec<_>>().chunks(500) {
        let records = chunk
            .iter()
            .map(|&n| {
                Envelope::new(Job { n })
                    .with_partition_key(format!("k{n}"))
                    .to_raw(&JsonCodec)
                    .unwrap()
            })
            .collect();
        producer.append(&topic, records).await.unwrap();
    }
    let (a_log, b_log) = (dir.path().join("a.log"), dir.path().join("b.log"));
    // `a` is slow, so it is killed with partitions unfinished; `b` is paced until both
    // have a share, then runs to the end.
    let mut a = child(
        "a",
        &topic,
        dir.path(),
        Duration::from_millis(2),
        usize::MAX,
    );
    let mut b = child("b", &topic, dir.path(), Duration::from_millis(1), 3_000);
    // Both at work (the first to start takes every partition, then hands half over
    // once the other is counted).
    let started = Instant::now();
    while lines(&a_log).len() < 200 || lines(&b_log).len() < 200 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "both consumers should be handling records"
        );
        assert!(a.try_wait().unwrap().is_none(), "a ended early");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.kill().unwrap(); // SIGKILL
    a.wait().unwrap();
    let status = b.wait().unwrap();
    assert!(status.success(), "b failed");

    let (a_seen, b_seen) = (lines(&a_log), lines(&b_log));
    let partitions = |seen: &[(u64, String)]| {
        let mut p: Vec<String> = seen.iter().map(|(_, p)| p.clone()).collect();
        p.sort();
        p.dedup();
        p
    };
    let (a_parts, b_parts) = (partitions(&a_seen), partitions(&b_seen));
    println!(
        "a handled {} on {a_parts:?} before the kill; b handled {} on {b_parts:?}",
        a_seen.len(),
        b_seen.len()
    );
    assert_eq!(
        b_parts.len(),
        PARTITIONS as usize,
        "b ended with every partition"
    );
    let duplicates =
        eda_testkit::handled::duplicates(a_seen.iter().chain(&b_seen).map(|(n, _)| *n), EVENTS);
    // What `a` had handled and not yet committed comes back to `b`: at most the
    // in-flight window of each partition it held, plus the acks not yet committed
    // (commits are at most 100 ms apart; `a` handles ~500 records a second).
    let bound = (PARTITIONS as usize * BATCH) as u64 + 100;
    println!("{duplicates} handled twice (bound {bound})");
    assert!(duplicates <= bound, "{duplicates} duplicates > {bound}");
}
