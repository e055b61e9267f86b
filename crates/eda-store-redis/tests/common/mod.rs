//! Shared by the Redis store's tests.
#![allow(dead_code)]

use eda_core::Event;
use eda_store_redis::RedisStreamStore;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderCreated {
    pub order_id: u64,
}
impl Event for OrderCreated {
    const TYPE: &'static str = "order.created";
}

/// A store on the test Redis whose keys no other test run shares.
pub async fn private_store() -> RedisStreamStore {
    RedisStreamStore::builder(eda_testkit::backend::redis_url())
        .key_prefix(unique_prefix())
        .connect()
        .await
        .expect("connect to Redis")
}

pub fn unique_prefix() -> String {
    format!("eda-test-{:08x}:", fastrand::u32(..))
}
