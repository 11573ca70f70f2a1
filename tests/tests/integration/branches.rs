//! What becomes of the branches and worktrees agent tasks leave: `host branches [--prune]`,
//! setup's leftovers kept out of the task's commit, `keep_worktree` and `host open`, and `host
//! pr`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use integration_tests::TestQueue;
use serde_json::Value;

use crate::worktrees::{bind_editor, git, repository, task_branch};

/// `host ARGS` with the worktrees under `data` (`XDG_DATA_HOME`) and `path` first on PATH.
fn run(q: &TestQueue, data: &Path, path: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = q.host();
    cmd.args(args).env("XDG_DATA_HOME", data);
    if let Some(dir) = path {
        let old = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![dir.to_path_buf()];
        dirs.extend(std::env::split_paths(&old));
        cmd.env("PATH", std::env::join_paths(dirs).unwrap());
    }
    cmd.output().unwrap()
}

/// [`run`], insisting on success; its stdout.
fn ok(q: &TestQueue, data: &Path, args: &[&str]) -> String {
    let output = run(q, data, None, args);
    assert!(output.status.success(), "host {args:?}: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

/// [`run`], insisting on exit 1 with one line on stderr; that line.
fn fails(q: &TestQueue, data: &Path, path: Option<&Path>, args: &[&str]) -> String {
    let output = run(q, data, path, args);
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    assert_eq!(output.status.code(), Some(1), "host {args:?}: {output:?}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    stderr
}

fn branches(q: &TestQueue, data: &Path, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["branches", "--json"];
    args.extend_from_slice(extra);
    serde_json::from_str(&ok(q, data, &args)).unwrap()
}

fn names(rows: &[Value]) -> Vec<&str> {
    rows.iter().map(|r| r["branch"].as_str().unwrap()).collect()
}

#[test]
fn branches_lists_this_queues_branches_and_prune_deletes_only_those_nothing_needs() {
    let q = TestQueue::new();
    let data = q.scratch.join("data");
    let repo = repository(&q);
    bind_editor(&q);
    let target = repo.to_str().unwrap();
    let merged = q.add(&["--type", "edit", "--target", target]);
    let waiting = q.add(&["--type", "edit", "--target", target]);
    let removed = q.add(&["--type", "edit", "--target", target]);
    let output = run(&q, &data, None, &["--role", "editor", "--drain"]);
    assert!(output.status.success(), "{output:?}");
    ok(&q, &data, &["merge", &merged]);
    // A worktree made again on the branch of the task about to be removed: it goes with it.
    let opened = PathBuf::from(ok(&q, &data, &["open", &removed]).trim());
    assert!(opened.is_dir(), "{opened:?}");
    let said = q.ok(&["rm", &removed]);
    assert!(
        said.contains("1 of them left a branch") && said.contains("host branches --prune"),
        "{said}"
    );
    // Branches this queue did not make: another queue's, and the shared one of queues without
    // an id.
    let foreign = "host/0badc0de/task-3".to_string();
    git(&repo, &["branch", &foreign]);
    git(&repo, &["branch", "host/task-3"]);

    // A leftover of the merged task's branch, an earlier attempt's branch its finished task
    // does not record, and the branch of a task that has not run yet.
    let unrecorded = format!("{}-attempt-5", task_branch(&q, &waiting));
    let pending = q.add(&["--type", "edit", "--target", target]);
    for made in [
        task_branch(&q, &merged),
        unrecorded.clone(),
        task_branch(&q, &pending),
    ] {
        git(&repo, &["branch", &made]);
    }

    let rows = branches(&q, &data, &[]);
    assert_eq!(
        names(&rows),
        [
            task_branch(&q, &merged),
            task_branch(&q, &waiting),
            unrecorded.clone(),
            task_branch(&q, &removed),
            task_branch(&q, &pending),
        ],
        "{rows:#?}"
    );
    let verdicts: Vec<(&Value, &Value, &str)> = rows
        .iter()
        .map(|r| (&r["taskState"], &r["prunable"], r["why"].as_str().unwrap()))
        .collect();
    assert_eq!(verdicts[0].1, true, "{verdicts:?}");
    assert!(verdicts[0].2.contains("merged"), "{verdicts:?}");
    assert_eq!(
        (verdicts[1].0, verdicts[1].1),
        (&"completed".into(), &false.into())
    );
    assert_eq!(verdicts[2].1, true, "{verdicts:?}");
    assert!(verdicts[2].2.contains("does not name it"), "{verdicts:?}");
    assert_eq!((verdicts[3].0, verdicts[3].1), (&Value::Null, &true.into()));
    assert_eq!(rows[3]["worktree"], opened.to_str().unwrap());
    assert_eq!(
        (verdicts[4].0, verdicts[4].1),
        (&"pending".into(), &false.into())
    );
    let human = ok(&q, &data, &["branches"]);
    assert!(human.contains("task gone"), "{human}");

    // A dry run deletes nothing; a prune deletes the branch of the task that is gone, and its
    // worktree, and says so.
    let said = ok(&q, &data, &["branches", "--prune", "--dry-run"]);
    assert!(
        said.contains(&format!("would delete {}", task_branch(&q, &removed))),
        "{said}"
    );
    assert!(repo_has(&repo, &task_branch(&q, &removed)));
    let said = ok(&q, &data, &["branches", "--prune"]);
    assert!(
        said.contains(&format!("deleted {}", task_branch(&q, &removed)))
            && said.contains("its task is gone")
            && said.contains(opened.to_str().unwrap()),
        "{said}"
    );
    assert!(!opened.exists());
    for gone in [
        task_branch(&q, &removed),
        task_branch(&q, &merged),
        unrecorded,
    ] {
        assert!(!repo_has(&repo, &gone), "{gone} was kept: {said}");
    }
    let kept = [
        task_branch(&q, &waiting),
        task_branch(&q, &pending),
        foreign,
        "host/task-3".into(),
    ];
    for kept in kept {
        assert!(repo_has(&repo, &kept), "{kept} was deleted");
    }
    assert_eq!(git(&repo, &["worktree", "list"]).lines().count(), 1);
    // Found from the repository alone too, once no task records it.
    q.ok(&["discard", &waiting]);
    q.ok(&["cancel", &pending]);
    git(&repo, &["branch", "-D", &task_branch(&q, &pending)]);
    q.ok(&["rm", &waiting, &merged, &pending]);
    git(&repo, &["branch", &task_branch(&q, &waiting)]);
    assert!(branches(&q, &data, &[]).is_empty());
    let rows = branches(&q, &data, &["--repo", target]);
    assert_eq!(names(&rows), [task_branch(&q, &waiting)]);
    ok(&q, &data, &["branches", "--prune", "--repo", target]);
    assert!(!repo_has(&repo, &task_branch(&q, &waiting)));
    let said = ok(&q, &data, &["branches", "--prune", "--repo", target]);
    assert_eq!(said.trim(), "Nothing to prune.");
}

fn repo_has(repo: &Path, branch: &str) -> bool {
    !git(repo, &["branch", "--list", branch]).trim().is_empty()
}

#[test]
fn what_setup_created_or_changed_is_not_committed_unless_the_agent_changed_it_again() {
    let q = TestQueue::new();
    let repo = repository(&q);
    let setup = "echo built > build.log; echo tweaked >> shared.txt; echo setup > notes.txt";
    let agent = "echo mine > agent.txt; echo agent > notes.txt";
    let toml = format!(
        "[roles.editor]\nhandler = \"agent\"\ntypes = [\"edit\"]\n\
         command = [\"sh\", \"-c\", {agent:?}]\nsetup = [\"sh\", \"-c\", {setup:?}]\n"
    );
    fs::write(q.queue.join("host.toml"), toml).unwrap();
    let id = q.add(&["--type", "edit", "--target", repo.to_str().unwrap()]);
    let output = q.drain("editor", &[]);
    assert!(output.status.success(), "{output:?}");
    let task = q.task(&id);
    assert_eq!(task["status"], "completed", "{task:#}");
    let branch = task_branch(&q, &id);
    let files = git(&repo, &["diff", "--name-only", &format!("main...{branch}")]);
    assert_eq!(
        files.lines().collect::<Vec<_>>(),
        ["agent.txt", "notes.txt"],
        "setup's build.log and its edit of shared.txt stay out"
    );
    assert_eq!(
        git(&repo, &["show", &format!("{branch}:notes.txt")]),
        "agent\n"
    );
    assert_eq!(
        task["result"]["worktree"]["changedFiles"],
        serde_json::json!([
            {"status": "added", "path": "agent.txt"},
            {"status": "added", "path": "notes.txt"}
        ])
    );
}

#[test]
fn keep_worktree_keeps_the_folder_and_open_makes_one_again_or_says_why_not() {
    let q = TestQueue::new();
    let data = q.scratch.join("data");
    let repo = repository(&q);
    let role = |extra: &str| {
        let toml = format!(
            "[roles.editor]\nhandler = \"agent\"\ntypes = [\"edit\"]\n\
             command = [\"sh\", \"-c\", \"echo $0 > shared.txt\", \"{{id}}\"]\n{extra}"
        );
        fs::write(q.queue.join("host.toml"), toml).unwrap();
    };
    role("keep_worktree = true\n");
    let target = repo.to_str().unwrap();
    let kept = q.add(&["--type", "edit", "--target", target]);
    let output = run(&q, &data, None, &["--role", "editor", "--drain"]);
    assert!(output.status.success(), "{output:?}");
    let record = q.task(&kept)["result"]["worktree"].clone();
    let folder = PathBuf::from(record["folder"].as_str().expect("the folder is recorded"));
    assert!(folder.starts_with(&data), "{folder:?}");
    assert_eq!(
        git(&folder, &["rev-parse", "--abbrev-ref", "HEAD"]).trim(),
        task_branch(&q, &kept)
    );
    assert_eq!(git(&folder, &["status", "--porcelain"]), "");
    let shown = q.ok(&["show", &kept]);
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("worktree") && l.contains(folder.to_str().unwrap())),
        "{shown}"
    );
    // The folder exists: open refuses, naming it.
    let line = fails(&q, &data, None, &["open", &kept]);
    assert!(
        line.contains(&format!("task {kept}")) && line.contains(folder.to_str().unwrap()),
        "{line}"
    );
    // A merge takes the kept worktree away with the branch.
    ok(&q, &data, &["merge", &kept]);
    assert!(!folder.exists());
    let line = fails(&q, &data, None, &["open", &kept]);
    assert!(line.contains("was merged"), "{line}");

    role("");
    let other = q.add(&["--type", "edit", "--target", target]);
    let output = run(&q, &data, None, &["--role", "editor", "--drain"]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(q.task(&other)["result"]["worktree"]["folder"], Value::Null);
    let opened = PathBuf::from(ok(&q, &data, &["open", &other]).trim());
    assert_eq!(
        git(&opened, &["rev-parse", "--abbrev-ref", "HEAD"]).trim(),
        task_branch(&q, &other)
    );
    assert_eq!(
        fs::read_to_string(opened.join("shared.txt")).unwrap(),
        format!("{other}\n")
    );
    // The branch gone (deleted by hand): open says so.
    git(&repo, &["worktree", "remove", opened.to_str().unwrap()]);
    git(&repo, &["branch", "-D", &task_branch(&q, &other)]);
    let line = fails(&q, &data, None, &["open", &other]);
    assert!(
        line.contains(&format!("task {other}")) && line.contains("has no branch"),
        "{line}"
    );
    // A task that ran without a worktree has no branch to open.
    let plain = q.add(&["--type", "noop"]);
    q.drain("noop", &[]);
    let line = fails(&q, &data, None, &["open", &plain]);
    assert!(
        line.contains(&format!("task {plain} left no branch")),
        "{line}"
    );
}

/// A folder holding a fake `gh` that records its arguments and standard input in `calls` and
/// prints a pull request's address, or, with `logged_out`, complains as gh does without a login.
pub(crate) fn fake_gh(q: &TestQueue, logged_out: bool) -> (PathBuf, PathBuf) {
    let bin = q.scratch.join(if logged_out { "gh-out" } else { "gh-in" });
    fs::create_dir_all(&bin).unwrap();
    let calls = bin.join("calls");
    let script = if logged_out {
        "#!/bin/sh\necho 'To get started with GitHub CLI, please run:  gh auth login' >&2\nexit 4\n"
            .to_string()
    } else {
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > {0:?}\ncat > {0:?}.body\n\
             echo 'Creating pull request'\necho https://github.com/acme/app/pull/7\n",
            calls.display().to_string()
        )
    };
    let gh = bin.join("gh");
    fs::write(&gh, script).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(&gh, fs::Permissions::from_mode(0o755)).unwrap();
    (bin, calls)
}

#[test]
fn pr_pushes_the_branch_opens_a_pull_request_with_gh_and_records_its_address() {
    let q = TestQueue::new();
    let data = q.scratch.join("data");
    let repo = repository(&q);
    let origin = q.scratch.join("origin.git");
    git(
        &q.scratch,
        &["init", "--quiet", "--bare", origin.to_str().unwrap()],
    );
    git(
        &repo,
        &["remote", "add", "origin", origin.to_str().unwrap()],
    );
    let toml = "[roles.editor]\nhandler = \"agent\"\ntypes = [\"edit\"]\n\
                review = \"required\"\ncommand = [\"sh\", \"-c\", \"echo new > shared.txt\"]\n";
    fs::write(q.queue.join("host.toml"), toml).unwrap();
    let id = q.add(&[
        "--type",
        "edit",
        "--target",
        repo.to_str().unwrap(),
        "--description",
        "Say new\n\nin shared.txt",
    ]);
    let output = run(&q, &data, None, &["--role", "editor", "--drain"]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(q.task(&id)["status"], "review");
    let branch = task_branch(&q, &id);

    let (bin, calls) = fake_gh(&q, false);
    let output = run(&q, &data, Some(&bin), &["pr", &id, "--draft"]);
    assert!(output.status.success(), "{output:?}");
    let url = "https://github.com/acme/app/pull/7";
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), url);
    let pushed = git(&origin, &["rev-parse", &format!("refs/heads/{branch}")]);
    assert_eq!(pushed, git(&repo, &["rev-parse", &branch]));
    let args: Vec<String> = fs::read_to_string(&calls)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let pair = |flag: &str| {
        let at = args
            .iter()
            .position(|a| a == flag)
            .unwrap_or_else(|| panic!("{flag}: {args:?}"));
        args[at + 1].clone()
    };
    assert_eq!(args[..2], ["pr", "create"], "{args:?}");
    assert_eq!(pair("--head"), branch);
    assert_eq!(pair("--base"), "main");
    assert_eq!(pair("--title"), "Say new");
    assert!(args.contains(&"--draft".to_string()), "{args:?}");
    let body = fs::read_to_string(calls.with_extension("body")).unwrap();
    assert!(body.contains("1 file changed"), "{body}");
    // Kept on the task: show, list and the JSON name it.
    assert_eq!(q.task(&id)["result"]["pullRequest"]["url"], url);
    assert!(q.ok(&["show", &id]).contains(url));
    assert!(q.ok(&["list"]).contains(url));

    // Without gh: pushed, and for a github.com remote, where to open the pull request.
    let git_only = q.scratch.join("git-only");
    fs::create_dir_all(&git_only).unwrap();
    for tool in ["git", "sh"] {
        let found = which(tool);
        std::os::unix::fs::symlink(found, git_only.join(tool)).unwrap();
    }
    git(
        &repo,
        &["remote", "add", "hub", "https://github.com/acme/app.git"],
    );
    git(
        &repo,
        &[
            "remote",
            "set-url",
            "--push",
            "hub",
            origin.to_str().unwrap(),
        ],
    );
    let output = q
        .host()
        .args(["pr", &id, "--remote", "hub"])
        .env("PATH", &git_only)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(
        said.contains(&format!(
            "https://github.com/acme/app/compare/main...{branch}?expand=1"
        )),
        "{said}"
    );
    let output = q
        .host()
        .args(["pr", &id])
        .env("PATH", &git_only)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stdout).contains(&format!("pushed {branch} to origin")),
        "{output:?}"
    );

    // No such remote, a rejected push, gh without a login: one line each, naming the task.
    let line = fails(&q, &data, Some(&bin), &["pr", &id, "--remote", "nowhere"]);
    assert!(
        line.contains(&format!("task {id}")) && line.contains("no remote \"nowhere\""),
        "{line}"
    );
    let strict = q.scratch.join("strict.git");
    git(
        &q.scratch,
        &["init", "--quiet", "--bare", strict.to_str().unwrap()],
    );
    let hook = strict.join("hooks/pre-receive");
    fs::write(&hook, "#!/bin/sh\necho no pushes here >&2\nexit 1\n").unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(&hook, fs::Permissions::from_mode(0o755)).unwrap();
    git(
        &repo,
        &["remote", "add", "strict", strict.to_str().unwrap()],
    );
    let line = fails(&q, &data, Some(&bin), &["pr", &id, "--remote", "strict"]);
    assert!(
        line.contains(&format!("task {id}: pushing {branch} to strict failed")),
        "{line}"
    );
    let (logged_out, _) = fake_gh(&q, true);
    let line = fails(&q, &data, Some(&logged_out), &["pr", &id]);
    assert!(
        line.contains(&format!("task {id}")) && line.contains("gh auth login"),
        "{line}"
    );
}

/// Where `tool` is on this process's PATH.
fn which(tool: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap();
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{tool} is not on PATH"))
}
