//! Many machines, simulated: worker hosts in network namespaces of their own, each reaching the
//! PostgreSQL server over its own virtual link, as separate machines reach it over a network.
//! Needs root (network namespaces), which CI has; elsewhere it says loudly that it was skipped.

use std::collections::BTreeMap;
use std::process::{Child, Stdio};
use std::time::Duration;

use integration_tests::netns::Machine;
use integration_tests::pg::PgCluster;
use integration_tests::{TestQueue, running_as_root, workspace};
use serde_json::Value;

/// Worker processes by machine, killed if the test ends before they do.
struct Workers(Vec<(usize, Child)>);

impl Drop for Workers {
    fn drop(&mut self) {
        for (_, worker) in &mut self.0 {
            let _ = worker.kill();
            let _ = worker.wait();
        }
    }
}

/// The workers' logs, for a failure message.
fn logs(q: &TestQueue) -> String {
    let mut text = String::new();
    for entry in std::fs::read_dir(&q.scratch).unwrap().flatten() {
        if entry.path().extension().is_some_and(|e| e == "log") {
            let log = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            text.push_str(&format!("{}:\n", entry.path().display()));
            for line in tail.iter().rev() {
                text.push_str(&format!("  {line}\n"));
            }
        }
    }
    text
}

#[test]
fn three_machines_drain_10000_tasks_while_one_is_cut_off_and_its_workers_killed() {
    if !running_as_root("the many-machines test with network namespaces") {
        return;
    }
    let cluster = PgCluster::start("*").unwrap_or_else(|why| panic!("{why}"));
    let name = cluster.database();
    let q = TestQueue::at_url(&name);
    let database = name.rsplit('/').next().unwrap().split('?').next().unwrap();
    let machines: Vec<Machine> = (1..=3).map(Machine::new).collect();

    let file = q.scratch.join("tasks.jsonl");
    let lines: Vec<String> = (0..10_000)
        .map(|i| format!(r#"{{"type":"noop","payload":{{"n":{i}}},"maxAttempts":5}}"#))
        .collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    q.ok(&["add", "--file", file.to_str().unwrap()]);

    let mut workers = Workers(Vec::new());
    for (m, machine) in machines.iter().enumerate() {
        let url = cluster.url_at(&machine.server, database);
        for w in 0..4 {
            let worker_name = format!("m{m}w{w}");
            let args = [
                "--role",
                "noop",
                "--drain",
                "--lease",
                "5s",
                "--name",
                &worker_name,
            ];
            let worker = machine
                .command(&workspace().host())
                .args(["--queue", &url])
                .args(args)
                .env("HOST_PLUGIN_PATH", &q.plugins)
                .env_remove("HOST_QUEUE_DIR")
                .current_dir(&q.scratch)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                // A file, not a pipe: a pipe nobody reads while the drain runs fills up and
                // stops a worker in the middle of a log line.
                .stderr(
                    std::fs::File::create(q.scratch.join(format!("{worker_name}.log"))).unwrap(),
                )
                .spawn()
                .expect("host starts on the machine");
            workers.0.push((m, worker));
        }
    }
    q.wait_for("3,000 tasks done", Duration::from_secs(300), |q| {
        if let Some(index) = workers
            .0
            .iter_mut()
            .position(|(_, w)| w.try_wait().unwrap().is_some())
        {
            let (m, mut worker) = workers.0.remove(index);
            panic!(
                "a worker of machine {m} ended early ({}):\n{}",
                worker.wait().unwrap(),
                logs(q)
            );
        }
        q.status()["counts"]["completed"].as_u64().unwrap_or(0) >= 3000
    });
    machines[0].cut();
    for (_, worker) in workers.0.iter_mut().filter(|(m, _)| *m == 0) {
        worker.kill().unwrap();
        worker.wait().unwrap();
    }
    for (_, mut worker) in workers.0.drain(..).filter(|(m, _)| *m != 0) {
        let status = worker.wait().unwrap();
        assert!(status.success(), "a worker failed:\n{}", logs(&q));
    }

    let tasks: Vec<Value> = q
        .ok(&["export", "--jsonl"])
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(tasks.len(), 10_000, "nothing lost");
    let mut by_machine: BTreeMap<String, usize> = BTreeMap::new();
    let mut rerun = 0;
    for task in &tasks {
        assert_eq!(task["status"], "completed", "{task}");
        let history = task["history"].as_array().unwrap();
        let (last, earlier) = history.split_last().unwrap();
        assert_eq!(last["status"], "completed", "{task}");
        // A task ran again only after an attempt whose lease expired: never twice to the end.
        for attempt in earlier {
            assert_eq!(attempt["status"], "expired", "{task}");
        }
        rerun += usize::from(!earlier.is_empty());
        let worker = last["worker"].as_str().unwrap_or_default();
        *by_machine.entry(worker[..2].to_string()).or_default() += 1;
    }
    for machine in ["m0", "m1", "m2"] {
        assert!(
            by_machine.get(machine).copied().unwrap_or(0) > 0,
            "every machine completed tasks: {by_machine:?}"
        );
    }
    eprintln!("completed by machine: {by_machine:?}; run again after an expired lease: {rerun}");
}

#[test]
fn a_worker_cut_off_from_postgresql_stops_its_task_at_a_third_of_the_lease() {
    if !running_as_root("a worker cut off from PostgreSQL (network namespaces)") {
        return;
    }
    let cluster = PgCluster::start("*").unwrap_or_else(|why| panic!("{why}"));
    let name = cluster.database();
    let q = TestQueue::at_url(&name);
    let database = name.rsplit('/').next().unwrap().split('?').next().unwrap();
    let machine = Machine::new(9);
    let (id, pids) = integration_tests::add_long_first_attempt(&q);
    let url = cluster.url_at(&machine.server, database);
    let cut_off = machine
        .command(&workspace().host())
        .args([
            "--queue", &url, "--role", "tester", "--lease", "9s", "--name", "cut-off",
        ])
        .env("HOST_PLUGIN_PATH", &q.plugins)
        .env_remove("HOST_QUEUE_DIR")
        .current_dir(&q.scratch)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(q.scratch.join("cut-off.log")).unwrap())
        .spawn()
        .expect("host starts on the machine");
    let mut workers = Workers(vec![(9, cut_off)]);
    q.wait_for("the first attempt", Duration::from_secs(30), |_| {
        integration_tests::attempt_pids(&pids).len() == 1
    });
    let command = integration_tests::attempt_pids(&pids)[0];
    machine.cut();
    let cut_at = std::time::Instant::now();
    q.wait_for(
        "the cut-off worker's command to end",
        Duration::from_secs(60),
        |_| !integration_tests::alive(command),
    );
    let ended_after = cut_at.elapsed();
    assert!(
        ended_after < Duration::from_secs(9),
        "the command ended {ended_after:?} after the link was cut, after its lease of 9s:\n{}",
        logs(&q)
    );
    // The task comes back after the lease and runs once more, on a worker that can reach it.
    let output = q.run(&["--role", "tester", "--drain", "--name", "reachable"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let task = q.task(&id);
    assert_eq!(task["status"], "completed", "{task:#}");
    assert_eq!(integration_tests::attempt_pids(&pids).len(), 2);
    assert!(
        workers.0[0].1.try_wait().unwrap().is_none(),
        "the cut-off worker goes on"
    );
}
