//! Redis restarted mid-stream: the store reconnects, publishes are retried, consumption
//! resumes, nothing acked is lost. Runs a private `redis-server --appendonly yes` on a
//! free port (never the shared one: other tests run in parallel) and SIGKILLs it.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eda_core::{ConsumeOptions, Envelope, Event, EventStore, JsonCodec, StartFrom};
use eda_store_redis::RedisStreamStore;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Tick {
    n: u64,
}
impl Event for Tick {
    const TYPE: &'static str = "tick";
}

const EVENTS: u64 = 3_000;

struct Server {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Server {
    fn start(dir: tempfile::TempDir, port: u16) -> Self {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--appendonly",
                "yes",
                // Every write reaches the disk before Redis answers: a SIGKILL loses
                // nothing that was acknowledged.
                "--appendfsync",
                "always",
                "--save",
                "",
                "--dir",
            ])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        Self { child, port, dir }
    }

    async fn wait_ready(&self) {
        let started = Instant::now();
        while eda_testkit::backend::reachable(&self.url()).await.is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, then the same server again on the same port and files.
    async fn restart(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        *self = Self::start(dir, self.port);
        self.wait_ready().await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_redis_loses_nothing_acked() {
    if Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        eda_testkit::backend::skip(
            "a_restarted_redis_loses_nothing_acked",
            "no redis-server binary on PATH",
        );
        return;
    }
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let mut server = Server::start(tempfile::tempdir().unwrap(), port);
    server.wait_ready().await;
    let store = RedisStreamStore::builder(server.url())
        .command_timeout(Duration::from_secs(2))
        .block(Duration::from_millis(100))
        .connect()
        .await
        .unwrap();

    let handled: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let consumer = {
        let (store, handled) = (store.clone(), handled.clone());
        tokio::spawn(async move {
            let options = ConsumeOptions {
                start: StartFrom::Beginning,
                visibility_timeout: Duration::from_secs(2),
                ..ConsumeOptions::default()
            };
            let mut deliveries = loop {
                match store.subscribe("ticks", "g", "c", options.clone()).await {
                    Ok(s) => break s,
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            };
            let mut errors = 0u32;
            while let Some(delivery) = deliveries.next().await {
                match delivery {
                    Ok(d) => {
                        let n = d
                            .record
                            .as_ref()
                            .unwrap()
                            .decode::<Tick>()
                            .unwrap()
                            .payload
                            .n;
                        handled.lock().unwrap().insert(n);
                        let _ = d.ack().await;
                    }
                    // The server is down: the stream reports it and goes on.
                    Err(_) => {
                        errors += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                if handled.lock().unwrap().len() as u64 == EVENTS {
                    return errors;
                }
            }
            errors
        })
    };

    let mut append_errors = 0;
    for n in 0..EVENTS {
        if n == EVENTS / 3 || n == 2 * EVENTS / 3 {
            server.restart().await;
        }
        let record = Envelope::new(Tick { n }).to_raw(&JsonCodec).unwrap();
        // A failed append is reported; retrying the same record is idempotent.
        loop {
            match store.append("ticks", vec![record.clone()]).await {
                Ok(_) => break,
                Err(e) => {
                    append_errors += 1;
                    assert!(append_errors < 1000, "appends keep failing: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    let consumer_errors = tokio::time::timeout(Duration::from_secs(60), consumer)
        .await
        .expect("every event handled within a minute")
        .unwrap();
    println!(
        "2 restarts: {append_errors} append errors retried, {consumer_errors} consumer errors"
    );
    assert_eq!(handled.lock().unwrap().len() as u64, EVENTS);
    let stored = store
        .read("ticks", eda_core::ReadRange::default())
        .await
        .unwrap();
    assert_eq!(stored.len() as u64, EVENTS, "each event stored once");
    store.close().await.unwrap();
}
