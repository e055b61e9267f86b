//! RedisDedup against the test Redis (`EDA_REDIS_URL`): built with the `redis` feature
//! (`cargo xtask ci` enables every feature); without it this file says it skipped.

#[cfg(not(feature = "redis"))]
#[test]
fn redis_dedup() {
    eda_testkit::backend::skip("eda-dedup redis tests", "built without the `redis` feature");
}

#[cfg(feature = "redis")]
mod with_redis {
    use std::collections::HashMap;
    use std::time::Duration;

    use eda_core::Timestamp;
    use eda_dedup::{Deduplicator, RedisDedup, Window};
    use eda_store_redis::RedisStreamStore;
    use eda_testkit::backend::{redis_url, require};

    async fn dedup(window: Window) -> Option<RedisDedup> {
        require("eda-dedup redis", &redis_url()).await?;
        let store = RedisStreamStore::connect(redis_url()).await.unwrap();
        let prefix = format!("eda-test-dedup-{:08x}:", fastrand::u32(..));
        Some(RedisDedup::new(&store, window).key_prefix(prefix))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn eight_tasks_racing_see_each_key_first_once() {
        let Some(dedup) = dedup(Window::default()).await else {
            return;
        };
        let now = Timestamp::now();
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let dedup = dedup.clone();
                tokio::spawn(async move {
                    let mut firsts = Vec::new();
                    for chunk in (0..10_000u32).collect::<Vec<_>>().chunks(500) {
                        let keys: Vec<(String, Timestamp)> =
                            chunk.iter().map(|i| (format!("k{i}"), now)).collect();
                        let seen = dedup.first_seen_batch(&keys).await.unwrap();
                        firsts.extend(chunk.iter().zip(seen).filter(|(_, f)| *f).map(|(i, _)| *i));
                    }
                    firsts
                })
            })
            .collect();
        let mut counts: HashMap<u32, u32> = HashMap::new();
        for t in tasks {
            for i in t.await.unwrap() {
                *counts.entry(i).or_default() += 1;
            }
        }
        assert_eq!(counts.len(), 10_000);
        assert!(counts.values().all(|&c| c == 1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn marks_expire_with_the_window_and_claims_with_their_hold() {
        let Some(dedup) = dedup(Window::Arrival(Duration::from_millis(300))).await else {
            return;
        };
        let now = Timestamp::now();
        assert!(dedup.first_seen("a", now).await.unwrap());
        assert!(!dedup.first_seen("a", now).await.unwrap());
        tokio::time::sleep(Duration::from_millis(450)).await;
        assert!(
            dedup.first_seen("a", now).await.unwrap(),
            "expired with the window"
        );

        assert!(
            dedup
                .claim("b", now, Duration::from_millis(100))
                .await
                .unwrap()
        );
        assert!(
            !dedup
                .claim("b", now, Duration::from_millis(100))
                .await
                .unwrap()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(
            dedup
                .claim("b", now, Duration::from_millis(100))
                .await
                .unwrap(),
            "lapsed"
        );
        dedup.confirm("b", now).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(
            !dedup.first_seen("b", now).await.unwrap(),
            "confirmed for the window"
        );
        dedup.forget("b").await.unwrap();
        assert!(dedup.first_seen("b", now).await.unwrap(), "forgotten");
    }
}
