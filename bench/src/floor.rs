//! The floor of a SQLite queue on this machine: what four worker processes reach when a task
//! costs nothing but one write transaction (finish the last task, claim the next with one
//! `UPDATE ... RETURNING`, on a table with the queue's indexes) and a pipe round trip to a
//! child process (the handler), with SQLite's own busy wait. Printed beside the queue's figure,
//! it says how much of a task's time is the queue's bookkeeping rather than SQLite, the disk or
//! the processes.
//!
//! The bench runs itself as the workers (`bench floor-worker DB SYNC`) and their handlers
//! (`bench floor-handler`); [`serve`] is what those invocations run.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rusqlite::Connection;

/// Runs a floor worker or handler when the bench was started as one; `false` otherwise.
pub fn serve(args: &[String]) -> anyhow::Result<bool> {
    match args.get(1).map(String::as_str) {
        Some("floor-worker") => {
            work(Path::new(&args[2]), &args[3])?;
            Ok(true)
        }
        Some("floor-handler") => {
            let mut out = std::io::stdout().lock();
            for line in std::io::stdin().lock().lines() {
                writeln!(out, "{{\"op\":\"succeeded\",\"bytes\":{}}}", line?.len())?;
                out.flush()?;
            }
            Ok(true)
        }
        _ => Ok(false),
    }
}

fn open(path: &Path, sync: &str) -> anyhow::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(30))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", sync)?;
    Ok(conn)
}

/// Drains `n` tasks with `workers` processes; `sync` is SQLite's `synchronous` (`NORMAL`: the
/// queue's relaxed durability; `FULL`: a flush per commit, its durable one). Returns tasks/s.
pub fn drain(scratch: &Path, n: usize, workers: usize, sync: &str) -> anyhow::Result<f64> {
    let db = scratch.join(format!("floor-{sync}.db"));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let conn = open(&db, "OFF")?;
    conn.execute_batch(
        "CREATE TABLE tasks (id INTEGER PRIMARY KEY, type TEXT, status TEXT, priority INT,
             lease_token TEXT, lease_expires_at INT, worker TEXT, finished_at INT, body TEXT);
         CREATE INDEX claimable ON tasks (type, priority, id) WHERE status = 'pending';
         CREATE INDEX leases ON tasks (lease_expires_at) WHERE status = 'running';
         CREATE INDEX by_status ON tasks (status, id);
         CREATE INDEX finished ON tasks (finished_at) WHERE finished_at IS NOT NULL;",
    )?;
    let tx = conn.unchecked_transaction()?;
    for i in 0..n {
        tx.execute(
            "INSERT INTO tasks (type, status, priority, body) VALUES ('noop', 'pending', 5, ?1)",
            [format!(
                r#"{{"id":"{i}","type":"noop","payload":null,"attempts":0}}"#
            )],
        )?;
    }
    tx.commit()?;
    drop(conn);
    let me = std::env::current_exe()?;
    let started = Instant::now();
    let children = (0..workers)
        .map(|_| {
            Command::new(&me)
                .arg("floor-worker")
                .arg(&db)
                .arg(sync)
                .spawn()
                .context("cannot start a floor worker")
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    for mut child in children {
        anyhow::ensure!(child.wait()?.success(), "a floor worker failed");
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// One floor worker: claims and finishes tasks until none is left, each through its handler.
fn work(db: &Path, sync: &str) -> anyhow::Result<()> {
    let conn = open(db, sync)?;
    let me = std::process::id().to_string();
    let mut handler = Command::new(std::env::current_exe()?)
        .arg("floor-handler")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut to_handler = handler.stdin.take().context("handler stdin")?;
    let mut from_handler = BufReader::new(handler.stdout.take().context("handler stdout")?);
    let mut last: Option<i64> = None;
    loop {
        let tx = conn.unchecked_transaction()?;
        if let Some(id) = last {
            tx.execute(
                "UPDATE tasks SET status = 'completed', finished_at = 1, lease_token = NULL, \
                 lease_expires_at = NULL, body = json_set(body, '$.status', 'completed') \
                 WHERE id = ?1",
                [id],
            )?;
        }
        let next: Option<(i64, String)> = tx
            .query_row(
                "UPDATE tasks SET status = 'running', worker = ?1, lease_token = ?1, \
                 lease_expires_at = 99 WHERE id = (SELECT id FROM tasks WHERE status = \
                 'pending' AND type = 'noop' ORDER BY priority, id LIMIT 1) RETURNING id, body",
                [&me],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .ok();
        tx.commit()?;
        let Some((id, body)) = next else { break };
        writeln!(to_handler, r#"{{"op":"run","task":{body}}}"#)?;
        to_handler.flush()?;
        let mut answer = String::new();
        from_handler.read_line(&mut answer)?;
        last = Some(id);
    }
    drop(to_handler);
    handler.wait()?;
    Ok(())
}
