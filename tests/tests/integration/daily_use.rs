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
