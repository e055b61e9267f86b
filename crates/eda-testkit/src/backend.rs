//! Where backend tests find their services, and what they do when one is missing.
//!
//! On a developer machine without Redis or Kafka, `cargo test` passes and says which
//! backend tests it skipped (on stderr, past the test harness's output capture). Under
//! `CI=true` nothing may be skipped: a missing service fails the test.

use std::io::Write as _;
use std::time::Duration;

/// The Redis server of the tests: `EDA_REDIS_URL`, default `redis://127.0.0.1:6379`.
pub fn redis_url() -> String {
    std::env::var("EDA_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The Kafka-protocol brokers of the tests: `EDA_KAFKA_BROKERS`, default
/// `127.0.0.1:19092`.
pub fn kafka_brokers() -> String {
    std::env::var("EDA_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:19092".into())
}

/// Whether this is a CI run (`CI` set to anything but `false`/`0`/empty).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// `host:port` of a URL such as `redis://user:pw@host:6379/0` (or of a bare `host:port`).
pub fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    rest.split('/').next().unwrap_or(rest).to_owned()
}

/// Checks that something listens at `url`'s host and port (one second at most).
///
/// A plain blocking connect (called once when a test starts): tokio's `net` is not
/// available in the loom build, which compiles this crate too.
pub async fn reachable(url: &str) -> Result<(), String> {
    use std::net::{TcpStream, ToSocketAddrs};
    let address = host_port(url);
    let targets = address
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {address}: {e}"))?;
    let mut last = format!("{address} resolves to no address");
    for target in targets {
        match TcpStream::connect_timeout(&target, Duration::from_secs(1)) {
            Ok(_) => return Ok(()),
            Err(e) => last = format!("nothing listens at {address}: {e}"),
        }
    }
    Err(last)
}

/// Reports a test that cannot run because its service is missing: fails under CI,
/// otherwise prints `SKIPPED <test>: <reason>` where `cargo test` shows it.
pub fn skip(test: &str, reason: &str) {
    if in_ci() {
        panic!(
            "{test}: {reason}. CI=true: backend tests may not be skipped (run `cargo xtask services up`)"
        );
    }
    // Written to the process's stderr directly: libtest captures `eprintln!` of passing
    // tests, and a skip must be visible.
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
}

/// Runs the body only when `url` is reachable; otherwise [`skip`]s. For tests:
///
/// ```ignore
/// let Some(()) = eda_testkit::backend::require("my_test", &redis_url()).await else { return };
/// ```
pub async fn require(test: &str, url: &str) -> Option<()> {
    match reachable(url).await {
        Ok(()) => Some(()),
        Err(reason) => {
            skip(
                test,
                &format!("{reason} (start it with `cargo xtask services up`)"),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_of_urls() {
        assert_eq!(host_port("redis://127.0.0.1:6379"), "127.0.0.1:6379");
        assert_eq!(host_port("redis://u:p@db:6380/2"), "db:6380");
        assert_eq!(host_port("127.0.0.1:19092"), "127.0.0.1:19092");
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        assert!(reachable(&format!("redis://{address}")).await.is_ok());
        drop(listener);
        assert!(reachable(&format!("redis://{address}")).await.is_err());
    }
}
