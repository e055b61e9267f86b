//! The Redis store passes the conformance suite against a real Redis
//! (`EDA_REDIS_URL`, default `redis://127.0.0.1:6379`). Each `store()` is a new
//! connection, as a second process would have. Topics are unique per scenario run.

use eda_core::BoxFuture;
use eda_store_redis::RedisStreamStore;
use eda_testkit::Harness;
use eda_testkit::backend::{reachable, redis_url};
use fred::interfaces::StreamsInterface;

struct RedisServer;

impl Harness for RedisServer {
    type Store = RedisStreamStore;
    fn store(&self) -> BoxFuture<'_, RedisStreamStore> {
        Box::pin(async move {
            RedisStreamStore::connect(redis_url())
                .await
                .expect("connect to Redis")
        })
    }
    fn write_garbage<'a>(
        &'a self,
        store: &'a RedisStreamStore,
        topic: &'a str,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            // As `redis-cli XADD <stream> * foo bar` would: no CloudEvents fields at all.
            let _: String = store
                .client()
                .xadd(store.stream_key(topic), false, None, "*", ("foo", "bar"))
                .await
                .expect("XADD a foreign entry");
        })
    }
    fn unavailable(&self) -> BoxFuture<'_, Option<String>> {
        Box::pin(async move { reachable(&redis_url()).await.err() })
    }
}

eda_testkit::conformance_tests!(RedisServer);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_attempts_and_leases() {
    let Some(()) = eda_testkit::backend::require("offsets_attempts_and_leases", &redis_url()).await
    else {
        return;
    };
    eda_testkit::coordination::check(&RedisServer.store().await).await;
}
