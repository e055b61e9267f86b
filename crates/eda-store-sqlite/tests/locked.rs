//! A database locked by another writer: operations wait the busy timeout, then fail with
//! a typed error; once the lock is gone they succeed.

use std::time::{Duration, Instant};

use eda_core::{Envelope, Event, EventStore, JsonCodec, StoreError};
use eda_store_sqlite::SqliteStore;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Ping {
    n: u32,
}
impl Event for Ping {
    const TYPE: &'static str = "ping";
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_database_gives_a_typed_error_after_the_busy_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("locked.db");
    let store = SqliteStore::builder(&path)
        .busy_timeout(Duration::from_millis(300))
        .open()
        .await
        .unwrap();
    // Another process holds the write lock.
    let other = SqliteStore::open(&path).await.unwrap();
    let mut conn = other.pool().acquire().await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *conn)
        .await
        .unwrap();

    let record = || Envelope::new(Ping { n: 1 }).to_raw(&JsonCodec).unwrap();
    let started = Instant::now();
    let err = store.append("t", vec![record()]).await.unwrap_err();
    let waited = started.elapsed();
    assert!(
        matches!(err, StoreError::Unavailable(ref m) if m.contains("locked")),
        "{err:?}"
    );
    assert!(
        waited >= Duration::from_millis(250),
        "gave up after {waited:?}, before the busy timeout"
    );
    assert!(waited < Duration::from_secs(5), "waited {waited:?}");

    sqlx::query("ROLLBACK").execute(&mut *conn).await.unwrap();
    drop(conn);
    store
        .append("t", vec![record()])
        .await
        .expect("works once the lock is released");
}
