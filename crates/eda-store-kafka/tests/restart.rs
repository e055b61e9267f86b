//! A persistent broker killed and restarted twice while 20,000 events are published and
//! consumed: every event is handled, nothing acked is lost.
//!
//! Runs a private Tansu with its SQLite engine (`tansu` built from crates.io with the
//! `libsql` feature; `cargo xtask services up` builds it once into
//! `~/.cache/eda/tansu-libsql`, or set `EDA_TANSU_PERSISTENT` to a binary) on a free
//! port, and SIGKILLs it (on SIGTERM Tansu keeps connections open for 5 s while
//! refusing produces).

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eda_core::{ConsumeOptions, Envelope, Event, EventStore, JsonCodec, StartFrom};
use eda_store_kafka::KafkaStore;
use eda_store_sqlite::SqliteStore;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

const EVENTS: u64 = 20_000;

#[derive(Serialize, Deserialize)]
struct Tick {
    n: u64,
}
impl Event for Tick {
    const TYPE: &'static str = "tick";
}

fn binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("EDA_TANSU_PERSISTENT") {
        return Some(path.into());
    }
    let home = std::env::var_os("HOME")?;
    let path = PathBuf::from(home).join(".cache/eda/tansu-libsql/bin/tansu");
    path.is_file().then_some(path)
}

struct Broker {
    binary: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    child: Child,
}

impl Broker {
    fn spawn(binary: &PathBuf, dir: &std::path::Path, port: u16) -> Child {
        let url = format!("tcp://127.0.0.1:{port}");
        Command::new(binary)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "sqlite://tansu.db",
            ])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu")
    }

    async fn start(binary: PathBuf) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let child = Self::spawn(&binary, dir.path(), port);
        let broker = Self {
            binary,
            dir,
            port,
            child,
        };
        broker.wait_ready().await;
        broker
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    async fn wait_ready(&self) {
        let started = Instant::now();
        while eda_testkit::backend::reachable(&self.address())
            .await
            .is_err()
        {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "tansu did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The index Tansu's SQLite schema lacks (without it catch-up reads slow down with
    /// every record), once the schema exists.
    fn add_index(&self) {
        let db = self.dir.path().join("tansu.db");
        let status = Command::new("python3")
            .args([
                "-c",
                "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); \
                 c.execute('create index if not exists header_topition_offset on header(topition, offset_id)'); \
                 c.commit()",
            ])
            .arg(&db)
            .status()
            .unwrap();
        assert!(status.success(), "could not index {}", db.display());
    }

    async fn restart(&mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.child = Self::spawn(&self.binary, self.dir.path(), self.port);
        self.wait_ready().await;
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_broker_loses_nothing_acked() {
    let Some(binary) = binary() else {
        eda_testkit::backend::skip(
            "a_restarted_broker_loses_nothing_acked",
            "no persistent tansu binary (cargo xtask services up builds one)",
        );
        return;
    };
    let mut broker = Broker::start(binary).await;
    let dir = tempfile::tempdir().unwrap();
    let coordination = SqliteStore::open(dir.path().join("c.db")).await.unwrap();
    let store = KafkaStore::builder([broker.address()], Arc::new(coordination))
        .partitions(2)
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    let topic = "ticks";
    store.ensure_topic(topic).await.unwrap();
    broker.add_index();

    let handled: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let consumer = {
        let (store, handled) = (store.clone(), handled.clone());
        tokio::spawn(async move {
            let options = ConsumeOptions {
                start: StartFrom::Beginning,
                batch_size: 500,
                visibility_timeout: Duration::from_secs(10),
                ..ConsumeOptions::default()
            };
            let mut deliveries = store.subscribe(topic, "g", "c", options).await.unwrap();
            while let Some(d) = deliveries.next().await {
                let Ok(d) = d else { continue };
                let n = d
                    .record
                    .as_ref()
                    .unwrap()
                    .decode::<Tick>()
                    .unwrap()
                    .payload
                    .n;
                let done = {
                    let mut handled = handled.lock().unwrap();
                    handled.insert(n);
                    handled.len() as u64 == EVENTS
                };
                d.ack().await.unwrap();
                if done {
                    return;
                }
            }
        })
    };

    let mut failed_appends = 0;
    for start in (0..EVENTS).step_by(100) {
        if start == EVENTS / 3 || start == 2 * EVENTS / 3 {
            broker.restart().await;
        }
        let records: Vec<_> = (start..start + 100)
            .map(|n| Envelope::new(Tick { n }).to_raw(&JsonCodec).unwrap())
            .collect();
        // A failed append is reported and retried; a retry may store a record twice
        // (no idempotent producer), which the consumer's set absorbs.
        loop {
            match store.append(topic, records.clone()).await {
                Ok(_) => break,
                Err(e) => {
                    failed_appends += 1;
                    assert!(failed_appends < 200, "appends keep failing: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
    tokio::time::timeout(Duration::from_secs(180), consumer)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "only {} of {EVENTS} handled after 3 minutes",
                handled.lock().unwrap().len()
            )
        })
        .unwrap();
    println!("2 broker restarts: {failed_appends} failed appends retried, {EVENTS} handled");
    assert_eq!(handled.lock().unwrap().len() as u64, EVENTS);
}
