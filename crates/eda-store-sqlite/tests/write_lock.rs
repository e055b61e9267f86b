//! A consumer that stops polling its delivery stream in the middle of a take (as
//! `ready_chunks` does when it hands a chunk over) must not keep SQLite's write lock:
//! every other writer would wait out the busy timeout and fail with "database is
//! locked". The CI run of 2026-11-28 failed on exactly this: the forwarder's dead letter
//! and the application's outbox transaction waited on the take its own stream held.

use std::time::Duration;

use eda_core::{ConsumeOptions, Envelope, Event, EventStore, JsonCodec, StartFrom};
use eda_store_sqlite::SqliteStore;
use futures_util::{FutureExt as _, StreamExt as _};
use sqlx::ConnectOptions as _;
use sqlx::sqlite::SqliteConnectOptions;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Note {
    n: u32,
}
impl Event for Note {
    const TYPE: &'static str = "lock.note";
}

fn record(n: u32) -> eda_core::RawEvent {
    Envelope::new(Note { n }).to_raw(&JsonCodec).unwrap()
}

/// Acks a delivery and returns its note's number.
async fn settle(d: eda_core::Delivery) -> u32 {
    let n = d
        .record
        .as_ref()
        .unwrap()
        .decode::<Note>()
        .unwrap()
        .payload
        .n;
    d.ack().await.unwrap();
    n
}

/// Whether another connection holds the write lock right now (it cannot begin an
/// immediate transaction without waiting).
async fn write_locked(path: &std::path::Path) -> bool {
    let mut probe = SqliteConnectOptions::new()
        .filename(path)
        .busy_timeout(Duration::ZERO)
        .connect()
        .await
        .unwrap();
    match sqlx::query("BEGIN IMMEDIATE").execute(&mut probe).await {
        Ok(_) => {
            sqlx::query("ROLLBACK").execute(&mut probe).await.unwrap();
            false
        }
        Err(e) if e.to_string().contains("locked") => true,
        Err(e) => panic!("probe: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_take_left_unpolled_does_not_hold_the_write_lock() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lock.db");
    let store = SqliteStore::builder(&path)
        .busy_timeout(Duration::from_millis(500))
        .open()
        .await
        .unwrap();
    store
        .append("notes", (0..3).map(record).collect())
        .await
        .unwrap();
    let options = ConsumeOptions {
        start: StartFrom::Beginning,
        batch_size: 1,
        ..ConsumeOptions::default()
    };
    let mut stream = store.subscribe("notes", "g", "c1", options).await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    first.ack().await.unwrap();

    // Drive the next take one poll at a time, and stop polling at the first moment
    // another connection sees the write lock taken (or when the take is done).
    let mut next = stream.next();
    let mut polls = 0;
    let taken = loop {
        polls += 1;
        if let Some(item) = (&mut next).now_or_never() {
            break Some(item);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        if write_locked(&path).await || polls > 400 {
            break None;
        }
    };
    // Not polled any more: another writer must still get through.
    tokio::time::sleep(Duration::from_millis(50)).await;
    store
        .append("notes", vec![record(3)])
        .await
        .expect("a writer waited on a take nobody polls");

    // Nothing was lost: the take resumes and the stream goes on in order.
    let second = match taken {
        Some(item) => item,
        None => next.await,
    }
    .unwrap()
    .unwrap();
    let mut seen = vec![settle(second).await];
    while seen.len() < 3 {
        let d = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("the stream stalled")
            .unwrap()
            .unwrap();
        seen.push(settle(d).await);
    }
    assert_eq!(seen, vec![1, 2, 3]);
}
