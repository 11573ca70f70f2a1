//! Around the queue: shell completions and the manual page.

use integration_tests::TestQueue;

#[test]
fn completions_load_in_their_shell_and_the_manual_page_names_every_command() {
    let q = TestQueue::new();
    let bash = q.ok(&["completions", "bash"]);
    let script = q.scratch.join("host.bash");
    std::fs::write(&script, &bash).unwrap();
    // Loaded by bash itself, the script registers a completion for `host`.
    let loaded = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("source {} && complete -p host", script.display()))
        .output()
        .unwrap();
    assert!(
        loaded.status.success() && String::from_utf8_lossy(&loaded.stdout).contains("host"),
        "{loaded:?}"
    );
    assert!(bash.contains("new-role") && bash.contains("completions"));
    assert!(q.ok(&["completions", "zsh"]).starts_with("#compdef host"));
    assert!(q.ok(&["completions", "fish"]).contains("complete -c host"));
    // roff writes a hyphen as `\-`.
    let man = q.ok(&["man"]).replace("\\-", "-");
    assert!(man.contains(".TH host 1"), "{man}");
    for command in ["list", "wait", "claim", "new-role"] {
        assert!(
            man.contains(&format!("host-{command}(1)")),
            "{command} missing from the manual page"
        );
    }
    let output = q.run(&["completions", "tcsh"]);
    assert_eq!(output.status.code(), Some(2), "a usage error");
}

#[test]
fn retry_and_cancel_act_on_many_tasks_at_once() {
    let q = TestQueue::new();
    let doomed: Vec<String> = (0..3)
        .map(|_| {
            q.add(&[
                "--type",
                "panic",
                "--payload",
                r#"{"message": "no"}"#,
                "--max-attempts",
                "1",
            ])
        })
        .collect();
    let other = q.add(&["--type", "noop"]);
    q.drain("panicker", &[]);
    assert!(doomed.iter().all(|id| q.task(id)["status"] == "failed"));

    let said = q.ok(&["retry", "--failed", "--type", "panic"]);
    assert_eq!(said.lines().count(), 3, "{said}");
    assert!(doomed.iter().all(|id| q.task(id)["status"] == "pending"));

    let said = q.ok(&["cancel", "--type", "panic"]);
    assert_eq!(said.lines().count(), 3, "{said}");
    assert!(doomed.iter().all(|id| q.task(id)["status"] == "cancelled"));
    assert_eq!(
        q.task(&other)["status"],
        "pending",
        "other types are left alone"
    );

    q.ok(&["retry", &doomed[0], &doomed[1]]);
    assert_eq!(q.task(&doomed[0])["status"], "pending");
    assert_eq!(q.task(&doomed[2])["status"], "cancelled");
    assert_eq!(q.run(&["retry", "--type", "panic"]).status.code(), Some(2));
    assert_eq!(q.run(&["cancel"]).status.code(), Some(2));
}
