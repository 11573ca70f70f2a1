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
    let line = q.fails(&[
        "new-role",
        "fn",
        "--dir",
        outside.path().join("x").to_str().unwrap(),
    ]);
    assert!(line.contains("Rust keyword"), "{line}");
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

#[test]
fn a_role_declares_its_settings_gets_their_defaults_and_typos_are_refused_with_their_line() {
    let q = TestQueue::new();
    let said = |role: &str| {
        let id = q.add(&["--type", "announce"]);
        q.drain(role, &[]);
        q.task(&id)["result"]["said"].clone()
    };
    assert_eq!(said("announcer"), "hello", "the declared default");

    let toml = q.queue.join("host.toml");
    let binding = "[roles.herald]\nhandler = \"announcer\"\ntypes = [\"announce\"]\n";
    fs::write(&toml, format!("{binding}greeting = \"hi\"\nloud = true\n")).unwrap();
    assert_eq!(said("herald"), "HI");

    fs::write(&toml, format!("{binding}\ngreting = \"hi\"\n")).unwrap();
    for args in [
        vec!["--role", "herald", "--drain"],
        vec!["add", "--type", "announce"],
    ] {
        let line = q.fails(&args);
        assert!(
            line.contains("host.toml:5: roles.herald.greting: role announcer takes no setting `greting` (it takes: greeting, loud, handler"),
            "{line}"
        );
    }
    fs::write(&toml, format!("{binding}loud = \"yes\"\n")).unwrap();
    let line = q.fails(&["--role", "herald", "--drain"]);
    assert!(
        line.contains("host.toml:4: roles.herald.loud: must be a boolean"),
        "{line}"
    );
}

#[test]
fn host_plugins_names_a_running_worker_whose_library_changed_under_it() {
    let q = TestQueue::new();
    let mut worker = q.spawn_worker("sleeper", &["--name", "long-runner"]);
    q.wait_for(
        "the worker to publish itself",
        std::time::Duration::from_secs(20),
        |q| {
            q.status()["workers"]
                .as_array()
                .is_some_and(|w| !w.is_empty())
        },
    );
    let library = q
        .plugins
        .join(integration_tests::library_file("test_roles"));
    assert!(
        !q.ok(&["plugins"]).contains("warning"),
        "nothing changed yet"
    );

    // Changed in place: the same file, touched.
    let file = fs::File::options().write(true).open(&library).unwrap();
    file.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(60))
        .unwrap();
    drop(file);
    let listing = q.ok(&["plugins"]);
    assert!(
        listing.contains("warning: worker long-runner")
            && listing.contains("changed in place, which can crash it"),
        "{listing}"
    );

    // Replaced the safe way: a new file renamed over the old.
    let beside = q.plugins.join("new-copy.tmp");
    fs::copy(&library, &beside).unwrap();
    fs::rename(&beside, &library).unwrap();
    let listing: Value = serde_json::from_str(&q.ok(&["plugins", "--json"])).unwrap();
    let changed = listing["libraries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| {
            l["file"]
                .as_str()
                .unwrap()
                .ends_with(&integration_tests::library_file("test_roles"))
        })
        .unwrap()["changedUnder"]
        .clone();
    assert_eq!(changed[0]["worker"], "long-runner", "{listing:#}");
    assert_eq!(changed[0]["how"], "loaded an earlier file of this name");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(worker.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    assert!(worker.wait().unwrap().success());
}

#[test]
fn a_dangling_link_and_a_plugin_dir_that_is_a_file_are_named_not_dropped() {
    let q = TestQueue::with_plugins(&["noop"]);
    let gone = q.plugins.join(integration_tests::library_file("gone"));
    std::os::unix::fs::symlink(q.scratch.join("nowhere.so"), &gone).unwrap();
    let listing: Value = serde_json::from_str(&q.ok(&["plugins", "--json"])).unwrap();
    let dangling = listing["libraries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["file"] == gone.to_str().unwrap())
        .unwrap_or_else(|| panic!("the dangling link is listed under its own name: {listing:#}"));
    assert_eq!(dangling["status"], "refused");
    let file = q.scratch.join("not-a-folder");
    fs::write(&file, "").unwrap();
    let text = q.ok(&["plugins", "--plugin-dir", file.to_str().unwrap()]);
    assert!(text.contains("(not a folder)"), "{text}");
}
