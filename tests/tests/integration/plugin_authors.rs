//! What an outside plugin author meets: a new role from `host new-role`, an example copied out
//! of this repository, both built on their own and run by a worker.

use std::fs;

use integration_tests::{TestQueue, build_outside, scratch_dir};
use serde_json::Value;

/// Copies a folder, files only (enough for an example crate).
fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn a_new_role_and_a_copied_example_build_on_their_own_and_run() {
    let q = TestQueue::with_plugins(&[]);
    let outside = scratch_dir();
    let api = integration_tests::workspace().root.join("plugin-api");

    // A new role, generated, built without touching it, dropped in and run.
    let crate_dir = outside.path().join("greeter");
    let said = q.ok(&[
        "new-role",
        "greeter",
        "--dir",
        crate_dir.to_str().unwrap(),
        "--plugin-api",
        api.to_str().unwrap(),
    ]);
    assert!(said.contains("cargo build --release"), "{said}");
    let line = q.fails(&["new-role", "greeter", "--dir", crate_dir.to_str().unwrap()]);
    assert!(line.contains("already exists"), "{line}");
    let line = q.fails(&["new-role", "Bad Name"]);
    assert!(line.contains("lower-case"), "{line}");
    let library = build_outside(&crate_dir, "greeter");
    fs::copy(&library, q.plugins.join(library.file_name().unwrap())).unwrap();
    let id = q.add(&["--type", "greeter", "--payload", r#"{"name": "Ada"}"#]);
    let line = q.fails(&["add", "--type", "greeter", "--payload", "[1]"]);
    assert!(line.contains("the payload must be a JSON object"), "{line}");
    q.drain("greeter", &[]);
    let task = q.task(&id);
    assert_eq!(task["status"], "completed", "{task:#}");
    assert_eq!(task["result"]["payload"]["name"], "Ada");
    assert!(q.ok(&["logs", &id]).contains("Ada"));

    // The noop example, copied out of the repository as it is.
    let copy = outside.path().join("noop-copy");
    copy_tree(
        &integration_tests::workspace().root.join("examples/noop"),
        &copy,
    );
    let manifest = fs::read_to_string(copy.join("Cargo.toml")).unwrap();
    assert!(!manifest.contains("workspace"), "{manifest}");
    let library = build_outside(&copy, "noop");
    fs::copy(&library, q.plugins.join(library.file_name().unwrap())).unwrap();
    let id = q.add(&["--type", "noop"]);
    q.drain("noop", &[]);
    let task: Value = q.task(&id);
    assert_eq!(task["status"], "completed", "{task:#}");
}

#[test]
fn a_result_over_the_size_limit_fails_its_task_naming_the_limit() {
    let q = TestQueue::new();
    let small = q.add(&["--type", "bulk", "--payload", r#"{"mib": 1}"#]);
    let huge = q.add(&["--type", "bulk", "--payload", r#"{"mib": 6}"#]);
    q.drain("bulky", &[]);
    assert_eq!(q.task(&small)["status"], "completed");
    let task = q.task(&huge);
    assert_eq!(task["status"], "failed", "{}", task["error"]);
    let error = task["error"].as_str().unwrap();
    assert!(error.contains("over the limit of 4 MiB"), "{error}");
    assert_eq!(task["result"], Value::Null);
}
