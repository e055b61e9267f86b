//! Testing tools for eda stores: the conformance suite every store must pass
//! ([`conformance`], [`conformance_tests!`]) and [`MemoryStore`], the store contract in
//! memory, which passes it.
//!
//! ```
//! use eda_core::{EventStore, Envelope, JsonCodec};
//! use eda_testkit::{MemoryStore, conformance::Probe};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let store = MemoryStore::new();
//! let record = Envelope::new(Probe { n: 1, key: "k".into() }).to_raw(&JsonCodec).unwrap();
//! let positions = store.append("orders", vec![record]).await.unwrap();
//! assert_eq!(positions.len(), 1);
//! # }
//! ```
#![forbid(unsafe_code)]

pub mod backend;
pub mod conformance;
pub mod coordination;
pub mod handled;
mod memory;

pub use conformance::Harness;
pub use memory::MemoryStore;

/// Polls `done` every 10 ms until it holds; panics naming `what` after 15 s. For tests
/// that wait on another task or process.
pub async fn wait_until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let started = std::time::Instant::now();
    while !done().await {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(15),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
