//! Consumers SIGKILLed at random points, on a durable Redis topic with the dedup
//! middleware (`RedisDedup`, so the marks outlive the process): nothing is lost, and an
//! effect is repeated only for an event whose handler had run but whose mark was not yet
//! confirmed when the process died: at most one per kill (one attempt runs at a time).
//! Without dedup, a kill repeats every handled event whose ack was still queued (a
//! batch of them; `eda-store-sqlite/tests/crash.rs` asserts that weaker bound).
//!
//! The child is this test binary run again with `EDA_DEDUP_CRASH_TOPIC` set.

#[cfg(not(feature = "redis"))]
#[test]
fn sigkilled_consumers_with_dedup() {
    eda_testkit::backend::skip("eda-dedup crash test", "built without the `redis` feature");
}

#[cfg(feature = "redis")]
mod with_redis {
    use std::process::{Child, Command, Stdio};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use eda_core::{Context, Envelope, Event, EventStore, JsonCodec};
    use eda_dedup::{DedupMiddleware, RedisDedup, Window};
    use eda_dispatch::{Bus, SubscribeOptions};
    use eda_store_redis::RedisStreamStore;
    use eda_testkit::backend::{redis_url, require};
    use eda_testkit::handled;
    use serde::{Deserialize, Serialize};

    const EVENTS: u64 = 20_000;
    const KILLS: usize = 4;

    #[derive(Serialize, Deserialize)]
    struct Work {
        n: u64,
    }
    impl Event for Work {
        const TYPE: &'static str = "dedupcrash.work";
    }

    fn child(topic: &str, log: &std::path::Path, last: bool) -> Child {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        if last {
            cmd.env("EDA_DEDUP_CRASH_FINAL", "1");
        }
        cmd.args([
            "--exact",
            "with_redis::dedup_crash_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("EDA_DEDUP_CRASH_TOPIC", topic)
        .env("EDA_DEDUP_CRASH_LOG", log)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the child")
    }

    /// The child: a bus with the topic durable on Redis and the dedup middleware on its
    /// group; the handler appends `n` to the log. A killed child runs until it is
    /// killed; the final one (`EDA_DEDUP_CRASH_FINAL`) until the group has nothing left.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dedup_crash_child() {
        let Ok(topic) = std::env::var("EDA_DEDUP_CRASH_TOPIC") else {
            return;
        };
        let log_path = std::env::var_os("EDA_DEDUP_CRASH_LOG").unwrap();
        let log = Arc::new(std::sync::Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log_path)
                .unwrap(),
        ));
        let store = RedisStreamStore::connect(redis_url()).await.unwrap();
        let dedup =
            RedisDedup::new(&store, Window::default()).key_prefix(format!("{topic}:dedup:"));
        let bus = Bus::builder()
            .route::<Work>(topic.clone())
            .durable_topic(topic.clone(), store.clone())
            .build();
        let _sub = bus
            .subscribe_with(
                SubscribeOptions::new()
                    .group("g")
                    // Redelivery of what a killed child held comes after the attempt
                    // timeout + 10 s; keep it short.
                    .timeout(Duration::from_millis(500))
                    .middleware(DedupMiddleware::new(dedup)),
                move |e: Arc<Envelope<Work>>, _c: Context| {
                    let log = log.clone();
                    async move {
                        handled::record(&mut log.lock().unwrap(), e.payload.n);
                        Ok(())
                    }
                },
            )
            .unwrap();
        let final_run = std::env::var_os("EDA_DEDUP_CRASH_FINAL").is_some();
        let started = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if final_run && store.backlog(&topic, "g").await.unwrap() == Some(0) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "the consumer did not finish"
            );
        }
        bus.shutdown(Duration::from_secs(5)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sigkilled_consumers_with_dedup_repeat_at_most_one_effect_per_kill() {
        if std::env::var_os("EDA_DEDUP_CRASH_TOPIC").is_some() {
            return;
        }
        if require(
            "sigkilled_consumers_with_dedup_repeat_at_most_one_effect_per_kill",
            &redis_url(),
        )
        .await
        .is_none()
        {
            return;
        }
        let seed = std::env::var("EDA_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| fastrand::u64(..));
        println!("crash test seed: {seed} (EDA_CRASH_SEED={seed} to replay)");
        let mut rng = fastrand::Rng::with_seed(seed);
        let topic = format!("eda-test-dedupcrash-{:08x}", fastrand::u32(..));
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("handled.log");
        let store = RedisStreamStore::connect(redis_url()).await.unwrap();
        for chunk in (0..EVENTS).collect::<Vec<_>>().chunks(500) {
            let records = chunk
                .iter()
                .map(|&n| Envelope::new(Work { n }).to_raw(&JsonCodec).unwrap())
                .collect();
            store.append(&topic, records).await.unwrap();
        }
        let mut kills = 0;
        while kills < KILLS {
            let mut c = child(&topic, &log, false);
            // Let it start and handle some: killed between 0.3 and 1 s.
            let wait = Duration::from_millis(rng.u64(300..1000));
            assert!(
                handled::kill_after(&mut c, wait).await,
                "a killed child exited on its own"
            );
            kills += 1;
            println!(
                "kill {kills} after {wait:?}: {} handled so far",
                handled::read(&log).len()
            );
        }
        assert!(
            (handled::read(&log).len() as u64) < EVENTS,
            "the children handled everything before the last kill; raise EVENTS"
        );
        let status = child(&topic, &log, true).wait().unwrap();
        assert!(status.success());
        let seen = handled::read(&log);
        let duplicates = handled::duplicates(seen.iter().copied(), EVENTS);
        println!(
            "{kills} kills, {} handled, {duplicates} duplicates",
            seen.len()
        );
        assert!(
            duplicates <= kills as u64,
            "{duplicates} repeated effects for {kills} kills: dedup let more through than \
             the one attempt running at each kill"
        );
    }
}
