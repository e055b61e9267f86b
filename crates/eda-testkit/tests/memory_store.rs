//! The in-memory store passes the conformance suite.

use eda_core::BoxFuture;
use eda_testkit::{Harness, MemoryStore};

/// One `MemoryStore` shared by every `store()` call, like a server shared by instances.
struct Memory(MemoryStore);

impl Harness for Memory {
    type Store = MemoryStore;
    fn store(&self) -> BoxFuture<'_, MemoryStore> {
        Box::pin(std::future::ready(self.0.clone()))
    }
    fn write_garbage<'a>(&'a self, store: &'a MemoryStore, topic: &'a str) -> BoxFuture<'a, ()> {
        store.write_raw(topic, &b"\x00\xffnot a cloudevent"[..]);
        Box::pin(std::future::ready(()))
    }
}

eda_testkit::conformance_tests!(Memory(MemoryStore::new()));

#[tokio::test]
async fn oversized_records_are_refused_whole() {
    use eda_core::{Envelope, EventStore, JsonCodec, StoreError};
    use eda_testkit::conformance::Probe;
    let store = MemoryStore::with_max_record_bytes(400);
    let small = Envelope::new(Probe {
        n: 1,
        key: "k".into(),
    })
    .to_raw(&JsonCodec)
    .unwrap();
    let big = Envelope::new(Probe {
        n: 2,
        key: "k".repeat(1000),
    })
    .to_raw(&JsonCodec)
    .unwrap();
    let err = store.append("t", vec![small, big]).await.unwrap_err();
    assert!(
        matches!(err, StoreError::TooLarge { max: 400, .. }),
        "{err:?}"
    );
    assert!(
        store
            .read("t", Default::default())
            .await
            .unwrap()
            .is_empty(),
        "nothing written"
    );
}

#[tokio::test]
async fn offsets_attempts_and_leases() {
    eda_testkit::coordination::check(&eda_testkit::MemoryStore::new()).await;
}
