//! A consumer killed with SIGKILL at random points loses nothing: on restart, what was
//! not acked is redelivered, and duplicates are limited to what was in flight.
//!
//! The child is this test binary run again with `EDA_CRASH_CHILD` set (the
//! `crash_child` test is a no-op otherwise).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use eda_core::{ConsumeOptions, Envelope, Event, EventStore, JsonCodec, StartFrom};
use eda_store_sqlite::SqliteStore;
use eda_testkit::handled;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

const EVENTS: u64 = 50_000;
const KILLS: usize = 5;
const BATCH: usize = 100;

#[derive(Serialize, Deserialize)]
struct Work {
    n: u64,
}
impl Event for Work {
    const TYPE: &'static str = "crash.work";
}

fn child(db: &std::path::Path, log: &std::path::Path, last: bool, inbox: bool) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    if last {
        cmd.env("EDA_CRASH_FINAL", "1");
    }
    if inbox {
        cmd.env("EDA_CRASH_INBOX", "1");
    }
    cmd.args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env("EDA_CRASH_CHILD", db)
        .env("EDA_CRASH_LOG", log)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the child")
}

/// Whether group `g` has taken every record and holds none unacked.
async fn group_done(store: &SqliteStore) -> bool {
    let (held, next, last): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM eda_inflight WHERE grp = 'g'), \
                (SELECT next_seq FROM eda_groups WHERE grp = 'g'), \
                (SELECT MAX(seq) FROM eda_events WHERE topic = 'work')",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    held == 0 && next > last
}

/// The child: consume group `g`, append each handled `n` to the log, then ack. A killed
/// child stops after a second with nothing to do; the final one (`EDA_CRASH_FINAL`)
/// runs until the group is done.
#[tokio::test]
async fn crash_child() {
    let Some(db) = std::env::var_os("EDA_CRASH_CHILD") else {
        return;
    };
    let log_path = std::env::var_os("EDA_CRASH_LOG").unwrap();
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .unwrap();
    let store = SqliteStore::open(db).await.unwrap();
    let options = ConsumeOptions {
        start: StartFrom::Beginning,
        visibility_timeout: Duration::from_millis(500),
        batch_size: BATCH,
        ..ConsumeOptions::default()
    };
    let mut deliveries = store
        .subscribe("work", "g", "worker", options)
        .await
        .unwrap();
    let final_run = std::env::var_os("EDA_CRASH_FINAL").is_some();
    let inbox = std::env::var_os("EDA_CRASH_INBOX").is_some();
    let started = std::time::Instant::now();
    loop {
        let delivery = match tokio::time::timeout(Duration::from_secs(1), deliveries.next()).await {
            Ok(Some(delivery)) => delivery.unwrap(),
            Ok(None) => break,
            // Idle: a killed child just stops; the final one stops once the group is done.
            Err(_) if !final_run || group_done(&store).await => break,
            Err(_) => {
                assert!(
                    started.elapsed() < Duration::from_secs(120),
                    "final consumer stuck"
                );
                continue;
            }
        };
        let n = delivery
            .record
            .as_ref()
            .unwrap()
            .decode::<Work>()
            .unwrap()
            .payload
            .n;
        if inbox {
            // The effect and the inbox mark commit together, then the ack.
            let mut tx = store.pool().begin().await.unwrap();
            let id = delivery.record.as_ref().unwrap().id.to_string();
            if store.inbox_mark(&mut tx, "g", &id).await.unwrap() {
                sqlx::query("INSERT INTO effects (n) VALUES (?)")
                    .bind(n as i64)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
            }
            tx.commit().await.unwrap();
        }
        // The side effect first, then the ack: a kill in between is a duplicate, never a loss.
        handled::record(&mut log, n);
        delivery.ack().await.unwrap();
    }
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_consumers_lose_nothing() {
    if std::env::var_os("EDA_CRASH_CHILD").is_some() {
        return;
    }
    crash_test(false).await;
}

/// The same kills, with the transactional inbox: every effect exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_consumers_with_the_inbox_have_each_effect_once() {
    if std::env::var_os("EDA_CRASH_CHILD").is_some() {
        return;
    }
    crash_test(true).await;
}

async fn crash_test(inbox: bool) {
    // One transaction per event with the inbox: fewer events, as many kills.
    let events: u64 = if inbox { 10_000 } else { EVENTS };
    let seed = std::env::var("EDA_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("crash test seed: {seed} (EDA_CRASH_SEED={seed} to replay)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let dir = tempfile::tempdir().unwrap();
    let (db, log) = (dir.path().join("crash.db"), dir.path().join("handled.log"));
    let store = SqliteStore::open(&db).await.unwrap();
    sqlx::query("CREATE TABLE effects (n INTEGER NOT NULL)")
        .execute(store.pool())
        .await
        .unwrap();
    for chunk in (0..events).collect::<Vec<_>>().chunks(1000) {
        let records = chunk
            .iter()
            .map(|&n| Envelope::new(Work { n }).to_raw(&JsonCodec).unwrap())
            .collect();
        store.append("work", records).await.unwrap();
    }
    let mut kills = 0;
    while kills < KILLS {
        let mut c = child(&db, &log, false, inbox);
        let before = handled::read(&log).len();
        let wait = Duration::from_millis(rng.u64(50..400));
        if !handled::kill_after(&mut c, wait).await {
            break; // finished before the kill: nothing left to interrupt
        }
        kills += 1;
        println!(
            "kill {kills} after {wait:?}: {} handled so far",
            handled::read(&log).len()
        );
        assert!(handled::read(&log).len() >= before);
    }
    assert!(
        kills >= KILLS,
        "the consumer finished before {KILLS} kills; raise events"
    );
    // A last consumer runs to the end (unacked records come back after 500 ms).
    let status = child(&db, &log, true, inbox).wait().unwrap();
    assert!(status.success());
    let seen = handled::read(&log);
    let duplicates = handled::duplicates(seen.iter().copied(), events);
    println!(
        "{kills} kills, {} handled, {duplicates} duplicates",
        seen.len()
    );
    // At each kill at most the records in flight are handled twice: those of the
    // fetched batch whose acks were still queued (acks are written in batches, at the
    // latest by the next fetch, so never more than one batch).
    assert!(
        duplicates <= (kills * BATCH) as u64,
        "{duplicates} duplicates for {kills} kills of batches of {BATCH}"
    );
    if inbox {
        // Handlers ran more than once for some events; their effects did not.
        let (rows, distinct): (i64, i64) =
            sqlx::query_as("SELECT COUNT(*), COUNT(DISTINCT n) FROM effects")
                .fetch_one(store.pool())
                .await
                .unwrap();
        println!("inbox: {rows} effects for {events} events ({duplicates} redeliveries)");
        assert_eq!(distinct, events as i64, "an effect is missing");
        assert_eq!(rows, events as i64, "an effect happened twice");
    }
}
