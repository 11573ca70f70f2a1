//! The built-in roles doing their real work, and handlers that panic.

use std::fs;

use integration_tests::TestQueue;

#[test]
fn inspector_counts_files_and_lines_per_language_and_honours_gitignore() {
    let q = TestQueue::new();
    let tree = q.scratch.join("tree");
    fs::create_dir_all(tree.join("src")).unwrap();
    fs::create_dir_all(tree.join("lib")).unwrap();
    fs::create_dir_all(tree.join("build")).unwrap();
    fs::write(tree.join("src/main.rs"), "fn main() {\n    lib();\n}\n").unwrap();
    fs::write(tree.join("src/lib.rs"), "pub fn lib() {}\n// end").unwrap();
    fs::write(tree.join("lib/tool.py"), "import os\n\n\nprint(os.name)\n").unwrap();
    fs::write(tree.join("README.md"), "# Tree\n").unwrap();
    fs::write(tree.join("Cargo.toml"), "[package]\nname = \"tree\"\n").unwrap();
    fs::write(tree.join(".gitignore"), "build/\n*.log\n").unwrap();
    fs::write(tree.join("build/generated.rs"), "ignored\nignored\n").unwrap();
    fs::write(tree.join("debug.log"), "ignored\n").unwrap();

    let id = q.add(&["--type", "inspect", "--target", tree.to_str().unwrap()]);
    q.drain("inspector", &[]);
    let task = q.task(&id);
    assert_eq!(task["status"], "completed", "{task:#}");
    let r = &task["result"];
    assert_eq!(r["files"], 6, "{r:#}");
    assert_eq!(r["dirs"], 2, "{r:#}");
    assert_eq!(r["languages"]["Rust"]["files"], 2);
    assert_eq!(r["languages"]["Rust"]["lines"], 5);
    assert_eq!(r["languages"]["Python"]["lines"], 4);
    assert_eq!(r["languages"]["Markdown"]["lines"], 1);
    assert_eq!(r["languages"]["TOML"]["files"], 1);
    assert_eq!(r["projects"][0]["kind"], "rust");
    assert_eq!(r["largest"][0]["path"], "lib/tool.py");
    let text = r.to_string();
    assert!(
        !text.contains("generated.rs") && !text.contains("debug.log"),
        "{r:#}"
    );
}

#[test]
fn tester_reports_a_failing_command_as_a_failed_task_with_its_exit_code() {
    let q = TestQueue::new();
    let dir = q.scratch.to_str().unwrap();
    let failing = q.add(&[
        "--type",
        "test",
        "--target",
        dir,
        "--payload",
        r#"{"command": ["sh", "-c", "echo checking; echo 2 failed >&2; exit 7"]}"#,
    ]);
    let passing = q.add(&[
        "--type",
        "test",
        "--target",
        dir,
        "--payload",
        r#"{"command": ["true"]}"#,
    ]);
    q.drain("tester", &[]);

    let task = q.task(&failing);
    assert_eq!(task["status"], "failed", "{task:#}");
    assert!(
        task["error"]
            .as_str()
            .unwrap()
            .contains("exited with code 7")
    );
    assert_eq!(task["result"]["exitCode"], 7);
    let tail = task["result"]["outputTail"].as_str().unwrap();
    assert!(
        tail.contains("checking") && tail.contains("2 failed"),
        "{tail}"
    );
    let log = fs::read_to_string(q.queue.join(format!("logs/{failing}.log"))).unwrap();
    assert!(log.contains("checking"), "{log}");

    let task = q.task(&passing);
    assert_eq!(task["status"], "completed", "{task:#}");
    assert_eq!(task["result"]["exitCode"], 0);
}

#[test]
fn tester_detects_the_project_test_command() {
    let q = TestQueue::new();
    let project = q.scratch.join("project");
    fs::create_dir_all(&project).unwrap();
    fs::write(project.join("Makefile"), "test:\n\t@echo made-test\n").unwrap();
    let id = q.add(&["--type", "test", "--target", project.to_str().unwrap()]);
    q.drain("tester", &[]);
    let task = q.task(&id);
    if which("make") {
        assert_eq!(task["status"], "completed", "{task:#}");
        assert_eq!(
            task["result"]["command"],
            serde_json::json!(["make", "test"])
        );
        assert!(
            task["result"]["outputTail"]
                .as_str()
                .unwrap()
                .contains("made-test")
        );
    } else {
        assert!(
            task["error"]
                .as_str()
                .unwrap()
                .contains("cannot run `make`"),
            "{task:#}"
        );
    }
}

#[test]
fn tester_kills_a_command_that_runs_past_the_timeout() {
    let q = TestQueue::new();
    let id = q.add(&[
        "--type",
        "test",
        "--target",
        q.scratch.to_str().unwrap(),
        "--timeout",
        "1s",
        "--payload",
        r#"{"command": ["sleep", "30"]}"#,
    ]);
    let started = std::time::Instant::now();
    q.drain("tester", &[]);
    assert!(started.elapsed().as_secs() < 15);
    let task = q.task(&id);
    assert_eq!(task["status"], "failed");
    assert!(
        task["error"].as_str().unwrap().contains("timed out"),
        "{task:#}"
    );
}

#[test]
fn writer_creates_the_files_it_was_given() {
    let q = TestQueue::new();
    let target = q.scratch.join("out");
    fs::create_dir_all(&target).unwrap();
    fs::write(target.join("existing.txt"), "old").unwrap();
    let payload = r#"{"files": [
        {"path": "src/models/user.rs", "content": "pub struct User;\n"},
        {"path": "existing.txt", "content": "new"}
    ]}"#;
    let id = q.add(&[
        "--type",
        "write",
        "--target",
        target.to_str().unwrap(),
        "--payload",
        payload,
    ]);
    q.drain("writer", &[]);
    let task = q.task(&id);
    assert_eq!(task["status"], "completed", "{task:#}");
    assert_eq!(
        fs::read_to_string(target.join("src/models/user.rs")).unwrap(),
        "pub struct User;\n"
    );
    assert_eq!(
        fs::read_to_string(target.join("existing.txt")).unwrap(),
        "new"
    );
    assert_eq!(task["result"]["written"][0]["created"], true);
    assert_eq!(task["result"]["written"][1]["created"], false);
}

#[test]
fn writer_refuses_a_link_inside_the_target_that_points_outside() {
    let q = TestQueue::new();
    let target = q.scratch.join("target");
    let outside = q.scratch.join("outside");
    fs::create_dir_all(&target).unwrap();
    fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, target.join("escape")).unwrap();
    let payload = r#"{"files": [{"path": "escape/pwned.txt", "content": "x"}]}"#;
    let id = q.add(&[
        "--type",
        "write",
        "--target",
        target.to_str().unwrap(),
        "--payload",
        payload,
    ]);
    q.drain("writer", &[]);
    let task = q.task(&id);
    assert_eq!(task["status"], "failed");
    assert!(
        task["error"]
            .as_str()
            .unwrap()
            .contains("leaves the target"),
        "{task:#}"
    );
    assert!(!outside.join("pwned.txt").exists());
}

#[test]
fn a_panicking_handler_fails_its_task_and_the_worker_goes_on() {
    let q = TestQueue::new();
    let bad = q.add(&[
        "--type",
        "panic",
        "--priority",
        "1",
        "--payload",
        r#"{"message": "kaboom 42"}"#,
    ]);
    let good = q.add(&["--type", "panic", "--priority", "2"]);
    q.drain("panicker", &["--name", "steady"]);
    let task = q.task(&bad);
    assert_eq!(task["status"], "failed");
    assert!(
        task["error"].as_str().unwrap().contains("kaboom 42"),
        "{task:#}"
    );
    let next = q.task(&good);
    assert_eq!(next["status"], "completed");
    assert_eq!(task["worker"], "steady");
    assert_eq!(next["worker"], "steady");
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

#[test]
fn deployer_never_writes_outside_its_deploy_root() {
    let q = TestQueue::with_plugins(&["deployer"]);
    let site = q.scratch.join("site");
    let root = q.scratch.join("root");
    let outside = q.scratch.join("outside");
    for dir in [&site, &root, &outside] {
        fs::create_dir_all(dir).unwrap();
    }
    fs::write(site.join("index.html"), "hi").unwrap();
    std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
    let add = |destination: &str| {
        let payload = serde_json::json!({ "destination": destination }).to_string();
        q.add(&[
            "--type",
            "deploy",
            "--target",
            site.to_str().unwrap(),
            "--payload",
            &payload,
        ])
    };

    let line = q.fails(&[
        "add",
        "--type",
        "deploy",
        "--target",
        site.to_str().unwrap(),
        "--payload",
        r#"{"destination": "../x"}"#,
    ]);
    assert!(line.contains("leaves the deploy root"), "{line}");
    let absolute = add(outside.join("x").to_str().unwrap());
    let through_link = add("escape/x");
    let inside = add("live/site");
    let output = q
        .host()
        .env("DEPLOY_ROOT", &root)
        .args(["--role", "deployer", "--drain"])
        .output()
        .unwrap();
    assert!(output.status.success());

    for id in [&absolute, &through_link] {
        let task = q.task(id);
        assert_eq!(task["status"], "failed", "{task:#}");
        let error = task["error"].as_str().unwrap();
        assert!(error.contains("leaves the deploy root"), "{error}");
    }
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing outside"
    );
    assert_eq!(q.task(&inside)["status"], "completed");
    assert_eq!(
        fs::read_to_string(root.join("live/site/index.html")).unwrap(),
        "hi"
    );
}
