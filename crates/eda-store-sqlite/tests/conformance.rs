//! The SQLite store passes the conformance suite, on a real file.

use eda_core::BoxFuture;
use eda_store_sqlite::SqliteStore;
use eda_testkit::Harness;

/// Every `store()` opens a new instance (its own pool) on the same file, as a second
/// process would.
struct SqliteFile {
    dir: tempfile::TempDir,
}

impl SqliteFile {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }
}

impl Harness for SqliteFile {
    type Store = SqliteStore;
    fn store(&self) -> BoxFuture<'_, SqliteStore> {
        Box::pin(async move {
            SqliteStore::open(self.dir.path().join("events.db"))
                .await
                .expect("open the store")
        })
    }
    fn write_garbage<'a>(&'a self, store: &'a SqliteStore, topic: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            store
                .insert_unchecked(topic, "not-a-uuid", "foreign.thing", b"\x00\xff")
                .await
                .expect("insert a foreign row");
        })
    }
}

eda_testkit::conformance_tests!(SqliteFile::new());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_attempts_and_leases() {
    let harness = SqliteFile::new();
    eda_testkit::coordination::check(&harness.store().await).await;
}
