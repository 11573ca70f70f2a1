//! The PostgreSQL store's figures, beside the SQLite store's: a throwaway cluster on this
//! machine (the tests' `PgCluster`), throughput durable and relaxed, pickup latency, and
//! (as root) three simulated machines in network namespaces against one.

use std::process::Stdio;
use std::time::Instant;

use anyhow::Context as _;
use integration_tests::netns::Machine;
use integration_tests::pg::PgCluster;
use queue::Durability;

use crate::{Bench, percentile};

/// Prints the section; `rate` is the durable file-operation rate measured at the start.
pub fn section(bench: &Bench, rate: f64) -> anyhow::Result<()> {
    println!(
        "## PostgreSQL (a throwaway cluster on this machine, default settings): 10,000 noop tasks, 4 worker processes"
    );
    let cluster = PgCluster::start("*").map_err(anyhow::Error::msg)?;
    for durability in [Durability::Durable, Durability::Relaxed] {
        let queue = bench.init(cluster.database().into(), durability)?;
        let (add, drain, _) = bench.drain_noop_on(&queue, 10_000, 4, 1)?;
        let per_sec = 10_000.0 / drain.as_secs_f64();
        let target = match durability {
            Durability::Durable => format!(
                "target >= 5,000 tasks/s; {:.2}x the durable-operation rate",
                per_sec / rate
            ),
            Durability::Relaxed => "target >= 7,000 tasks/s".into(),
        };
        println!(
            "- {} (synchronous_commit {}): drained in {:.2} s = {per_sec:.0} tasks/s, {target} (adding them: {:.2} s)",
            durability.as_str(),
            if durability == Durability::Durable {
                "on"
            } else {
                "off"
            },
            drain.as_secs_f64(),
            add.as_secs_f64()
        );
    }
    let queue = bench.init(cluster.database().into(), Durability::Durable)?;
    let latency = bench.pickup_latency_on(&queue, 200)?;
    println!(
        "- pickup through LISTEN/NOTIFY, from `host add` returning: p50 {:.2} ms, p99 {:.2} ms (target: p50 < 1 ms, p99 < 5 ms)",
        percentile(&latency.from_return, 0.5),
        percentile(&latency.from_return, 0.99)
    );
    if !nix::unistd::geteuid().is_root() {
        println!("- three namespaced machines: skipped (network namespaces need root)");
        return Ok(());
    }
    let one = machines_drain(bench, &cluster, 1)?;
    let three = machines_drain(bench, &cluster, 3)?;
    println!(
        "- durable, 4 workers per machine, each machine in a network namespace of its own: 1 machine {one:.0} tasks/s, 3 machines {three:.0} tasks/s"
    );
    Ok(())
}

/// Tasks per second of `machines` simulated machines with 4 noop workers each draining 10,000
/// durable tasks.
fn machines_drain(bench: &Bench, cluster: &PgCluster, machines: u8) -> anyhow::Result<f64> {
    let url = cluster.database();
    let queue = bench.init(url.clone().into(), Durability::Durable)?;
    let database = url
        .rsplit('/')
        .next()
        .and_then(|tail| tail.split('?').next())
        .context("a database name")?
        .to_string();
    bench.add_file(&queue, &vec![r#"{"type":"noop"}"#.to_string(); 10_000])?;
    let machines: Vec<Machine> = (1..=machines).map(Machine::new).collect();
    let start = Instant::now();
    let mut workers = Vec::new();
    for (m, machine) in machines.iter().enumerate() {
        for w in 0..4 {
            workers.push(
                machine
                    .command(&bench.host)
                    .args(["--queue", &cluster.url_at(&machine.server, &database)])
                    .args(["--role", "noop", "--drain", "--name", &format!("m{m}w{w}")])
                    .env("HOST_PLUGIN_PATH", &bench.plugins)
                    .env_remove("HOST_QUEUE_DIR")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()?,
            );
        }
    }
    Bench::wait_all(workers)?;
    let took = start.elapsed();
    drop(machines);
    Ok(10_000.0 / took.as_secs_f64())
}
