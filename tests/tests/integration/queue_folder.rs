//! The queue folder keeps other users out, writes nothing through a symlink planted in it, and
//! keeps its mutual exclusion and its word when files are deleted or the disk fills up.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use integration_tests::{TestQueue, other_user, running_as_root, workspace};
use serde_json::json;

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().mode() & 0o7777
}

/// Runs `program ARGS` as the test's second user.
fn as_other_user(program: &Path, args: &[&str]) -> std::process::Output {
    other_user();
    Command::new("runuser")
        .args(["-u", "host-test-other", "--"])
        .arg(program)
        .args(args)
        .output()
        .expect("runuser runs")
}

#[test]
fn an_existing_folder_is_made_private_and_its_files_stay_owner_only() {
    let q = TestQueue::new();
    let folder = q.scratch.join("shared");
    fs::create_dir(&folder).unwrap();
    fs::set_permissions(&folder, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(folder.join("host.toml"), "").unwrap();
    fs::set_permissions(folder.join("host.toml"), fs::Permissions::from_mode(0o644)).unwrap();
    let queue = folder.to_str().unwrap();
    q.ok(&["init", "--queue", queue]);
    assert_eq!(mode(&folder), 0o700, "the folder");
    assert_eq!(mode(&folder.join("host.toml")), 0o600);

    let payload = json!({"command": ["echo", "a secret in the output"]}).to_string();
    let id = q.add(&[
        "--queue",
        queue,
        "--type",
        "test",
        "--target",
        q.scratch.to_str().unwrap(),
        "--payload",
        &payload,
    ]);
    q.drain("tester", &["--queue", queue]);
    let log = folder.join("logs").join(format!("{id}.log"));
    assert!(fs::read_to_string(&log).unwrap().contains("a secret"));
    for file in fs::read_dir(&folder)
        .unwrap()
        .chain(fs::read_dir(folder.join("logs")).unwrap())
    {
        let path = file.unwrap().path();
        let want = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode(&path), want, "{}", path.display());
    }

    if running_as_root("another user cannot read the queue or its logs") {
        // The other user must get as far as the queue folder: the test's own folders are made
        // passable; a folder above them that is not, is not changed (the check is skipped).
        let base = integration_tests::scratch_base();
        for dir in folder.parent().unwrap().ancestors() {
            let m = mode(dir);
            if dir.starts_with(base) && dir != base {
                fs::set_permissions(dir, fs::Permissions::from_mode(m | 0o011)).unwrap();
            } else if m & 0o001 == 0 {
                integration_tests::skipped(&format!(
                    "what another user can read: {} is not passable by other users",
                    dir.display()
                ));
                return;
            }
        }
        let read = as_other_user(Path::new("cat"), &[log.to_str().unwrap()]);
        assert!(!read.status.success(), "another user read the log");
        let host = workspace().host();
        let status = as_other_user(&host, &["--queue", queue, "status"]);
        assert_eq!(status.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&status.stderr).contains("Permission denied"));

        // A folder that others can read and this user cannot tighten (another user's) is
        // refused, naming it, before anything is changed.
        let loose = q.scratch.join("loose");
        fs::create_dir(&loose).unwrap();
        fs::set_permissions(&loose, fs::Permissions::from_mode(0o777)).unwrap();
        let refused = as_other_user(&host, &["--queue", loose.to_str().unwrap(), "init"]);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(refused.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(loose.to_str().unwrap()) && stderr.contains("owned by user root"),
            "{stderr}"
        );
        assert_eq!(mode(&loose), 0o777);
        assert_eq!(fs::read_dir(&loose).unwrap().count(), 0);
    }
}

#[test]
fn nothing_is_written_through_a_symlink_planted_in_the_folder() {
    let q = TestQueue::new();
    let victim = q.scratch.join("victim");
    fs::write(&victim, "untouched").unwrap();
    let _ = fs::remove_file(q.queue.join("doorbell"));
    std::os::unix::fs::symlink(&victim, q.queue.join("doorbell")).unwrap();
    let id = q.add(&[
        "--type",
        "test",
        "--target",
        q.scratch.to_str().unwrap(),
        "--payload",
        r#"{"command": ["echo", "log line"]}"#,
    ]);
    fs::create_dir_all(q.queue.join("logs")).unwrap();
    std::os::unix::fs::symlink(&victim, q.queue.join("logs").join(format!("{id}.log"))).unwrap();
    q.drain("tester", &[]);
    assert_eq!(q.task(&id)["status"], "completed");
    assert_eq!(fs::read_to_string(&victim).unwrap(), "untouched");

    // The database itself is never opened through a link.
    let db = q.queue.join("queue.db");
    let elsewhere = q.scratch.join("elsewhere.db");
    fs::rename(&db, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &db).unwrap();
    let line = q.fails(&["status"]);
    assert!(line.contains("queue.db"), "{line}");
}

#[test]
fn deleting_files_in_the_folder_cannot_make_two_workers_claim_one_task() {
    let q = TestQueue::new();
    let file = q.scratch.join("tasks.jsonl");
    fs::write(&file, vec![r#"{"type": "noop"}"#; 400].join("\n")).unwrap();
    q.ok(&["add", "--file", file.to_str().unwrap()]);
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            // Everything but the database itself, over and over, as a careless cleanup would.
            while !done.load(Ordering::SeqCst) {
                for entry in fs::read_dir(&q.queue).unwrap().flatten() {
                    let name = entry.file_name().to_string_lossy().to_string();
                    if !name.starts_with("queue.db") {
                        let _ = fs::remove_file(entry.path());
                        let _ = fs::remove_dir_all(entry.path());
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        });
        let workers: Vec<_> = (0..4)
            .map(|i| q.spawn_worker("noop", &["--drain", "--name", &format!("w{i}")]))
            .collect();
        for worker in workers {
            let output = worker.wait_with_output().unwrap();
            assert!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        done.store(true, Ordering::SeqCst);
    });
    let results = q.results();
    assert_eq!(results.len(), 400);
    for task in &results {
        assert_eq!(task["status"], "completed");
        assert_eq!(
            task["history"].as_array().unwrap().len(),
            1,
            "claimed once: {task}"
        );
    }
}

/// A small tmpfs, unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_rolls_an_add_back_and_says_so() {
    if !running_as_root("a full disk rolls an add back (needs a tmpfs mount)") {
        return;
    }
    let q = TestQueue::new();
    let mount = q.scratch.join("small");
    fs::create_dir(&mount).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&mount)
        .status()
        .unwrap();
    assert!(mounted.success(), "cannot mount a tmpfs as root");
    let _disk = SmallDisk(mount.clone());
    let queue = mount.join("queue");
    let queue = queue.to_str().unwrap();
    q.ok(&["init", "--queue", queue]);
    let file = q.scratch.join("batch.json");
    let big = "x".repeat(8 * 1024);
    let batch: Vec<_> = (0..20)
        .map(|_| json!({"type": "noop", "description": big}))
        .collect();
    fs::write(&file, serde_json::to_string(&batch).unwrap()).unwrap();
    let mut added = 0;
    let refusal = loop {
        let output = q
            .host()
            .args(["--queue", queue, "add", "--file", file.to_str().unwrap()])
            .output()
            .unwrap();
        if output.status.success() {
            added += 20;
            assert!(added < 10_000, "the disk never filled");
            continue;
        }
        break output;
    };
    let stderr = String::from_utf8_lossy(&refusal.stderr).to_string();
    assert_eq!(refusal.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("disk is full") && stderr.contains("nothing was added"),
        "{stderr}"
    );
    let status: serde_json::Value =
        serde_json::from_str(&q.ok(&["--queue", queue, "status", "--json"])).unwrap();
    assert_eq!(
        status["counts"]["pending"], added,
        "the store holds exactly what the successful adds reported"
    );
}

#[test]
fn without_queue_the_nearest_one_above_is_used_and_none_found_names_the_ways_to_give_one() {
    let q = TestQueue::new();
    let project = q.scratch.join("project");
    let deep = project.join("app/src");
    std::fs::create_dir_all(&deep).unwrap();
    let host = |dir: &std::path::Path, args: &[&str]| {
        std::process::Command::new(integration_tests::workspace().host())
            .args(args)
            .current_dir(dir)
            .env_remove("HOST_QUEUE_DIR")
            // Whatever queue a folder above the test's holds is not this test's.
            .env("HOST_QUEUE_CEILING", &q.scratch)
            .env("HOST_PLUGIN_PATH", &q.plugins)
            .output()
            .unwrap()
    };
    // Nothing above: one line saying how to name a queue.
    let output = host(&deep, &["status"]);
    assert_eq!(output.status.code(), Some(1));
    let line = String::from_utf8_lossy(&output.stderr);
    assert!(
        line.contains("no queue here")
            && line.contains("--queue")
            && line.contains("HOST_QUEUE_DIR"),
        "{line}"
    );
    // `host init` makes it here; from a subfolder, it is found.
    assert!(host(&project, &["init"]).status.success());
    let added = host(&deep, &["add", "--type", "noop"]);
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let status = host(&deep, &["status", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(
        report["queue"],
        project.join("copilot-orchestration").to_str().unwrap()
    );
    assert_eq!(report["counts"]["pending"], 1);
    assert!(
        !deep.join("copilot-orchestration").exists(),
        "no second queue"
    );
}

#[test]
fn a_queue_another_user_owns_is_refused_unless_named_safe() {
    if !running_as_root("a queue planted by another user (needs chown)") {
        return;
    }
    let q = TestQueue::new();
    let uid = other_user();
    // Another user's queue in a shared folder above the project, with a task planted in it.
    let shared = q.scratch.join("shared");
    let project = shared.join("project");
    fs::create_dir_all(&project).unwrap();
    let planted = shared.join("copilot-orchestration");
    let ran = q.scratch.join("ran-as-me");
    let host = |args: &[&str], safe: Option<&Path>| {
        let mut cmd = Command::new(workspace().host());
        cmd.args(args)
            .current_dir(&project)
            .env_remove("HOST_QUEUE_DIR")
            .env("HOST_QUEUE_CEILING", &q.scratch)
            .env("HOST_PLUGIN_PATH", &q.plugins);
        if let Some(safe) = safe {
            cmd.env("HOST_SAFE_QUEUES", safe);
        }
        cmd.output().unwrap()
    };
    let init = host(&["init", "--queue", planted.to_str().unwrap()], None);
    assert!(init.status.success());
    let payload = json!({"command": ["touch", ran.to_str().unwrap()]}).to_string();
    let target = q.scratch.to_str().unwrap();
    let add = host(
        &[
            "add",
            "--queue",
            planted.to_str().unwrap(),
            "--type",
            "test",
            "--target",
            target,
            "--payload",
            &payload,
        ],
        None,
    );
    assert!(
        add.status.success(),
        "{}",
        String::from_utf8_lossy(&add.stderr)
    );
    let chown = Command::new("chown")
        .args(["-R", &uid.to_string()])
        .arg(&planted)
        .status()
        .unwrap();
    assert!(chown.success());

    // Found by walking up, or named: refused in one line that says how to mean it.
    for args in [
        &["--role", "tester", "--drain"][..],
        &["status", "--queue", planted.to_str().unwrap()],
    ] {
        let output = host(args, None);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains("owned by user host-test-other") && stderr.contains("HOST_SAFE_QUEUES"),
            "{stderr}"
        );
    }
    assert!(!ran.exists(), "the planted task did not run as root");
    assert_eq!(mode(&planted) & 0o777, 0o700, "left as it was");

    // Named as safe, it is used.
    let status = host(&["status", "--json"], Some(&planted));
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
}
