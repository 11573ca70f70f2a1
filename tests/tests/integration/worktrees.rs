//! Agents side by side on one repository: a worktree and a branch per task, then diff, merge
//! and discard (the `worktrees` crate behind the agent role and `host diff|merge|discard`).

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use integration_tests::TestQueue;
use serde_json::Value;

pub(crate) fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(output.status.success(), "git {args:?}: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

/// A repository on branch `main` with one committed file, `shared.txt`, and an ignored `.env`.
pub(crate) fn repository(q: &TestQueue) -> std::path::PathBuf {
    let repo = q.scratch.join("repo");
    fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "--quiet", "--initial-branch", "main"]);
    git(&repo, &["config", "user.name", "Test User"]);
    git(&repo, &["config", "user.email", "test@example.com"]);
    fs::write(repo.join("shared.txt"), "original\n").unwrap();
    fs::write(repo.join(".gitignore"), ".env\nsetup.out\n").unwrap();
    fs::write(repo.join(".env"), "SECRET=1\n").unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "--quiet", "-m", "start"]);
    repo
}

/// Role `editor` (type `edit`): a fake agent that writes its task's id into `shared.txt`, waits
/// a second, and fails unless the file still holds its id (nobody else wrote it meanwhile).
/// It also checks that the role's setup ran and the ignored `.env` was copied in.
pub(crate) fn bind_editor(q: &TestQueue) {
    let script = "test -f .env && test -f setup.out || exit 3; echo \"$0\" > shared.txt; \
                  sleep 1; test \"$(cat shared.txt)\" = \"$0\" || exit 4; \
                  if [ \"$1\" = shared.txt ]; then echo more >> shared.txt; fi";
    let toml = format!(
        "[roles.editor]\nhandler = \"agent\"\ntypes = [\"edit\"]\n\
         command = [\"sh\", \"-c\", {script:?}, \"{{id}}\", \"{{description}}\"]\n\
         setup = [\"sh\", \"-c\", \"echo done > setup.out\"]\ninclude = [\".env\"]\n"
    );
    fs::write(q.queue.join("host.toml"), toml).unwrap();
}

/// The id `host init` gave the queue, as the queue keeps it among its settings.
pub(crate) fn queue_id(q: &TestQueue) -> String {
    let conn = rusqlite::Connection::open(q.queue.join("queue.db")).unwrap();
    conn.query_row(
        "SELECT value FROM settings WHERE key = 'queue_id'",
        [],
        |row| row.get(0),
    )
    .unwrap()
}

/// The branch of task `id` of queue `q`: in the queue's own namespace.
pub(crate) fn task_branch(q: &TestQueue, id: &str) -> String {
    format!("host/{}/task-{id}", queue_id(q))
}

fn result(q: &TestQueue, id: &str) -> Value {
    let task = q.task(id);
    assert_eq!(task["status"], "completed", "{task:#}");
    task["result"]["worktree"].clone()
}

#[test]
fn two_agents_on_one_repository_work_apart_and_their_branches_are_merged_or_discarded() {
    let q = TestQueue::new();
    let repo = repository(&q);
    bind_editor(&q);
    let target = repo.to_str().unwrap();
    let first = q.add(&["--type", "edit", "--target", target]);
    let second = q.add(&["--type", "edit", "--target", target]);
    let output = q.drain("editor", &["--concurrency", "2"]);
    assert!(output.status.success(), "{output:?}");

    // They ran at the same time, each in its own worktree, on the same file.
    let (a, b) = (q.task(&first), q.task(&second));
    assert!(
        a["startedAt"].as_str() < b["finishedAt"].as_str()
            && b["startedAt"].as_str() < a["finishedAt"].as_str(),
        "not at once: {a:#} {b:#}"
    );
    for id in [&first, &second] {
        let record = result(&q, id);
        let branch = task_branch(&q, id);
        assert_eq!(record["branch"], branch.as_str());
        assert_eq!(record["baseBranch"], "main");
        assert_eq!(record["commits"].as_array().unwrap().len(), 1, "{record:#}");
        assert_eq!(
            record["changedFiles"],
            serde_json::json!([{"status": "modified", "path": "shared.txt"}])
        );
        assert!(
            record["diffstat"]
                .as_str()
                .unwrap()
                .contains("1 file changed")
        );
        assert_eq!(
            git(&repo, &["show", &format!("{branch}:shared.txt")]),
            format!("{id}\n")
        );
    }
    // The user's checkout was not touched, and no worktree is left.
    assert_eq!(
        fs::read_to_string(repo.join("shared.txt")).unwrap(),
        "original\n"
    );
    assert_eq!(git(&repo, &["status", "--porcelain"]), "");
    assert_eq!(git(&repo, &["worktree", "list"]).lines().count(), 1);

    let patch = q.ok(&["diff", &first]);
    assert!(
        patch.contains("-original") && patch.contains(&format!("+{first}")),
        "{patch}"
    );

    let said = q.ok(&["merge", &first]);
    assert!(
        said.contains(&format!("merged {} into main", task_branch(&q, &first))),
        "{said}"
    );
    assert_eq!(
        fs::read_to_string(repo.join("shared.txt")).unwrap(),
        format!("{first}\n")
    );
    // The second changed the same line: the merge conflicts, names the file, changes nothing,
    // and the conflict hook hears of it.
    let heard = q.scratch.join("conflict.json");
    let toml = fs::read_to_string(q.queue.join("host.toml")).unwrap();
    let hook = format!(
        "\n[hooks]\nconflict = [\"sh\", \"-c\", \"cat > \\\"$0\\\"\", {:?}]\n",
        heard.display().to_string()
    );
    fs::write(q.queue.join("host.toml"), toml + &hook).unwrap();
    let head = git(&repo, &["rev-parse", "HEAD"]);
    let line = q.fails(&["merge", &second]);
    assert!(
        line.contains("conflicts in shared.txt; nothing was changed"),
        "{line}"
    );
    assert_eq!(git(&repo, &["rev-parse", "HEAD"]), head);
    assert_eq!(git(&repo, &["status", "--porcelain"]), "");
    let task: Value = serde_json::from_str(&fs::read_to_string(&heard).unwrap()).unwrap();
    assert_eq!(task["id"], second.as_str());
    // The task shows the conflict, and `status` names it, until the branch is dealt with.
    assert_eq!(task["branchState"]["state"], "conflict", "{task:#}");
    let report: Value = serde_json::from_str(&q.ok(&["status", "--json"])).unwrap();
    assert_eq!(
        report["conflicts"],
        serde_json::json!([{"id": second, "into": "main", "files": ["shared.txt"]}])
    );
    let human = q.ok(&["status"]);
    assert!(
        human.contains(&format!(
            "merge conflict: task {second} into main conflicts in shared.txt"
        )),
        "{human}"
    );
    q.ok(&["discard", &second]);
    let report: Value = serde_json::from_str(&q.ok(&["status", "--json"])).unwrap();
    assert_eq!(report["conflicts"], serde_json::json!([]));
    assert_eq!(q.task(&second)["branchState"]["state"], "discarded");
    assert_eq!(q.task(&first)["branchState"]["state"], "merged");
    let branches = git(&repo, &["branch", "--list", "host/*"]);
    assert_eq!(branches, "", "merged and discarded branches are gone");
    let line = q.fails(&["diff", &second]);
    assert!(
        line.contains(&format!("no branch {}", task_branch(&q, &second))),
        "{line}"
    );
}

#[test]
fn a_task_after_another_starts_from_its_branch() {
    let q = TestQueue::new();
    let repo = repository(&q);
    bind_editor(&q);
    let target = repo.to_str().unwrap();
    let first = q.add(&["--type", "edit", "--target", target]);
    // The fake agent appends to shared.txt when its description says so: the second sees the first's line.
    let second = q.add(&[
        "--type",
        "edit",
        "--target",
        target,
        "--after",
        &first,
        "--description",
        "shared.txt",
    ]);
    q.drain("editor", &[]);
    let record = result(&q, &second);
    let first_commit = result(&q, &first)["commits"][0]["sha"].clone();
    assert_eq!(record["base"], first_commit, "{record:#}");
    let branch = record["branch"].as_str().unwrap();
    assert_eq!(
        git(&repo, &["show", &format!("{branch}:shared.txt")]),
        format!("{second}\nmore\n")
    );
    q.ok(&["merge", &second, "--squash"]);
    assert_eq!(
        git(&repo, &["log", "--format=%s", "-1"]).trim(),
        format!("host task {second}: shared.txt")
    );
}

#[test]
fn a_test_after_an_agent_task_tests_its_change_before_it_is_merged() {
    let q = TestQueue::new();
    let repo = repository(&q);
    bind_editor(&q);
    // The repository's own list of ignored files a worktree gets (itself ignored).
    fs::write(repo.join(".worktreeinclude"), ".env\n").unwrap();
    fs::write(repo.join(".git/info/exclude"), ".worktreeinclude\n").unwrap();
    let target = repo.to_str().unwrap();
    let edit = q.add(&["--type", "edit", "--target", target]);
    let command = r#"{"command": ["sh", "-c", "cat shared.txt; test -f .env"]}"#;
    let test = q.add(&[
        "--type",
        "test",
        "--target",
        target,
        "--after",
        &edit,
        "--payload",
        command,
    ]);
    // Inspected after the test: the test's branches are followed through it.
    let inspect = q.add(&["--type", "inspect", "--target", target, "--after", &test]);
    q.drain("editor", &[]);
    q.drain("tester", &[]);
    q.drain("inspector", &[]);
    let tested = q.task(&test);
    assert_eq!(tested["status"], "completed", "{tested:#}");
    assert_eq!(
        tested["result"]["outputTail"].as_str().map(str::trim),
        Some(edit.as_str()),
        "the test saw the editor's change: {tested:#}"
    );
    let branch = task_branch(&q, &edit);
    assert_eq!(tested["result"]["branches"], serde_json::json!([branch]));
    let inspected = q.task(&inspect);
    assert_eq!(inspected["result"]["branches"], serde_json::json!([branch]));
    assert_eq!(inspected["result"]["target"], target);
    // Nothing of the throwaway worktrees is left, and the user's checkout is as it was.
    assert_eq!(
        git(&repo, &["branch", "--list", "host/*"]),
        format!("  {branch}\n")
    );
    assert_eq!(git(&repo, &["worktree", "list"]).lines().count(), 1);
    assert_eq!(
        fs::read_to_string(repo.join("shared.txt")).unwrap(),
        "original\n"
    );

    // Once merged, a test after it runs in the checkout itself, which has the change.
    q.ok(&["merge", &edit]);
    let again = q.add(&[
        "--type",
        "test",
        "--target",
        target,
        "--after",
        &edit,
        "--payload",
        command,
    ]);
    q.drain("tester", &[]);
    assert!(q.task(&again)["result"].get("branches").is_none());
}

#[test]
fn a_target_outside_git_or_with_isolation_none_runs_in_place() {
    let q = TestQueue::new();
    let repo = repository(&q);
    let toml = "[roles.editor]\nhandler = \"agent\"\ntypes = [\"edit\"]\nisolation = \"none\"\n\
                command = [\"sh\", \"-c\", \"echo here > shared.txt\"]\n";
    fs::write(q.queue.join("host.toml"), toml).unwrap();
    let id = q.add(&["--type", "edit", "--target", repo.to_str().unwrap()]);
    q.drain("editor", &[]);
    let task = q.task(&id);
    assert_eq!(task["status"], "completed", "{task:#}");
    assert!(task["result"].get("worktree").is_none(), "{task:#}");
    assert_eq!(
        fs::read_to_string(repo.join("shared.txt")).unwrap(),
        "here\n"
    );
    let line = q.fails(&["diff", &id]);
    assert!(line.contains("ran in no worktree"), "{line}");

    fs::write(
        q.queue.join("host.toml"),
        toml.replace("isolation = \"none\"", "isolation = \"wortkree\""),
    )
    .unwrap();
    let output = q.run(&["--role", "editor", "--drain"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("isolation \"wortkree\""));
}

#[test]
fn edge_cases_of_branches_are_handled_not_misreported() {
    let q = TestQueue::new();
    // A repository with no commit yet: nothing to branch from, so the agent runs in place.
    let fresh = q.scratch.join("fresh");
    fs::create_dir_all(&fresh).unwrap();
    git(&fresh, &["init", "--quiet"]);
    let toml = "[roles.editor]\nhandler = \"agent\"\ntypes = [\"edit\"]\n\
                command = [\"sh\", \"-c\", \"echo hi > café.txt\"]\n";
    fs::write(q.queue.join("host.toml"), toml).unwrap();
    let id = q.add(&["--type", "edit", "--target", fresh.to_str().unwrap()]);
    q.drain("editor", &[]);
    let task = q.task(&id);
    assert_eq!(task["status"], "completed", "{task:#}");
    assert!(task["result"].get("worktree").is_none(), "{task:#}");

    // A file name that is not ASCII is recorded as it is, not quoted by git.
    let repo = repository(&q);
    let first = q.add(&["--type", "edit", "--target", repo.to_str().unwrap()]);
    q.drain("editor", &[]);
    assert_eq!(
        result(&q, &first)["changedFiles"],
        serde_json::json!([{"status": "added", "path": "café.txt"}])
    );
    // Merged (by rebase) where git has no identity configured at all.
    git(&repo, &["config", "--unset", "user.name"]);
    git(&repo, &["config", "--unset", "user.email"]);
    let empty = q.scratch.join("empty-gitconfig");
    fs::write(&empty, "").unwrap();
    let output = q
        .host()
        .args(["merge", &first, "--rebase"])
        .env("GIT_CONFIG_GLOBAL", &empty)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(fs::read_to_string(repo.join("café.txt")).unwrap(), "hi\n");

    // A task after one whose branch was merged starts from HEAD, which has that work.
    let second = q.add(&[
        "--type",
        "edit",
        "--target",
        repo.to_str().unwrap(),
        "--after",
        &first,
    ]);
    q.drain("editor", &[]);
    let head = git(&repo, &["rev-parse", "HEAD"]);
    assert_eq!(result(&q, &second)["base"], head.trim());

    // A result that names a branch not made for its task is not acted on.
    let forged = q.add(&["--type", "noop"]);
    let claimed: Value =
        serde_json::from_str(&q.ok(&["claim", "--role", "noop", "--json"])).unwrap();
    let token = claimed["leaseToken"].as_str().unwrap();
    let record = serde_json::json!({"worktree": {
        "repository": repo, "branch": "main", "base": head.trim(),
        "commits": [], "diffstat": "", "changedFiles": []}});
    q.ok(&[
        "complete",
        &forged,
        "--token",
        token,
        "--result",
        &record.to_string(),
    ]);
    let line = q.fails(&["discard", &forged]);
    assert!(line.contains("not one made for it"), "{line}");
    assert!(git(&repo, &["branch", "--list", "main"]).contains("main"));
}

/// A `host.toml` whose role `editor` (type `edit`) writes its task's description into
/// `shared.txt`, waits two seconds and fails unless the file still holds it (its worktree was
/// neither removed nor written by another task meanwhile); `extra` is appended.
fn bind_slow_editor(q: &TestQueue, extra: &str) {
    let script = "echo \"$0\" > shared.txt; sleep 2; test \"$(cat shared.txt)\" = \"$0\" || exit 4";
    let toml = format!(
        "[roles.editor]\nhandler = \"agent\"\ntypes = [\"edit\"]\n\
         command = [\"sh\", \"-c\", {script:?}, \"{{description}}\"]\n{extra}"
    );
    fs::write(q.queue.join("host.toml"), toml).unwrap();
}

#[test]
fn two_queues_on_one_repository_never_touch_each_others_branches_or_worktrees() {
    let a = TestQueue::new();
    let b = TestQueue::new();
    let repo = repository(&a);
    let target = repo.to_str().unwrap();
    bind_slow_editor(&a, "");
    bind_slow_editor(&b, "");
    let id = a.add(&["--type", "edit", "--target", target, "--description", "A"]);
    let same = b.add(&["--type", "edit", "--target", target, "--description", "B"]);
    assert_eq!(id, same, "both queues number their tasks from 1");
    assert_ne!(queue_id(&a), queue_id(&b));

    // At once: B's worker starts its task 1 while A's task 1 runs in its worktree.
    let mut worker = a.spawn_worker("editor", &["--drain"]);
    a.wait_for("A's task to run", Duration::from_secs(30), |q| {
        q.task(&id)["status"] == "running"
    });
    b.drain("editor", &[]);
    assert!(worker.wait().unwrap().success());
    let (ours, theirs) = (result(&a, &id), result(&b, &same));
    assert_eq!(ours["branch"], task_branch(&a, &id).as_str(), "{ours:#}");
    assert_eq!(
        theirs["branch"],
        task_branch(&b, &id).as_str(),
        "{theirs:#}"
    );
    let (ours, theirs) = (
        ours["branch"].as_str().unwrap().to_string(),
        theirs["branch"].as_str().unwrap().to_string(),
    );
    assert_eq!(git(&repo, &["show", &format!("{ours}:shared.txt")]), "A\n");
    assert_eq!(
        git(&repo, &["show", &format!("{theirs}:shared.txt")]),
        "B\n"
    );

    // A queue folder made again (its ids restart at 1), with its own prefix: B's unmerged
    // branch is neither renamed nor reset.
    let c = TestQueue::new();
    bind_slow_editor(&c, "[queue]\nbranch_prefix = \"agents/work\"\n");
    let again = c.add(&["--type", "edit", "--target", target, "--description", "C"]);
    assert_eq!(again, id);
    c.drain("editor", &[]);
    let made = result(&c, &again);
    assert_eq!(
        made["branch"],
        format!("agents/work/{}/task-{id}", queue_id(&c)),
        "{made:#}"
    );
    assert_eq!(
        git(&repo, &["show", &format!("{theirs}:shared.txt")]),
        "B\n"
    );
    assert_eq!(git(&repo, &["branch", "--list", "*-attempt-*"]), "");

    // Merging A's task merges A's change and deletes A's branch only.
    let said = a.ok(&["merge", &id]);
    assert!(said.contains(&format!("merged {ours} into main")), "{said}");
    assert!(!said.contains("earlier attempts"), "{said}");
    assert_eq!(fs::read_to_string(repo.join("shared.txt")).unwrap(), "A\n");
    assert_eq!(
        git(&repo, &["show", &format!("{theirs}:shared.txt")]),
        "B\n"
    );
    let patch = c.ok(&["diff", &again]);
    assert!(patch.contains("+C"), "{patch}");
    // Nor does discarding B's delete anyone else's.
    b.ok(&["discard", &same]);
    let left = git(&repo, &["branch", "--list", "--format=%(refname:short)"]);
    assert_eq!(
        left.lines().collect::<Vec<_>>(),
        [made["branch"].as_str().unwrap(), "main"]
    );

    // A branch prefix git would refuse is refused, naming the file and key.
    bind_slow_editor(&c, "[queue]\nbranch_prefix = \"a..b\"\n");
    let line = c.fails(&["--role", "editor", "--drain"]);
    assert!(line.contains("queue.branch_prefix"), "{line}");
}

#[test]
fn a_queue_made_before_queues_had_ids_keeps_the_branches_its_tasks_recorded() {
    let q = TestQueue::new();
    let repo = repository(&q);
    bind_slow_editor(&q, "");
    // As an earlier version left it: no id, and a completed task whose branch is host/task-1.
    let conn = rusqlite::Connection::open(q.queue.join("queue.db")).unwrap();
    conn.execute("DELETE FROM settings WHERE key = 'queue_id'", [])
        .unwrap();
    drop(conn);
    let old = q.add(&["--type", "noop"]);
    let claimed: Value =
        serde_json::from_str(&q.ok(&["claim", "--role", "noop", "--json"])).unwrap();
    let token = claimed["leaseToken"].as_str().unwrap();
    let legacy = format!("host/task-{old}");
    let head = git(&repo, &["rev-parse", "HEAD"]);
    git(&repo, &["checkout", "--quiet", "-b", &legacy]);
    fs::write(repo.join("shared.txt"), "old\n").unwrap();
    git(&repo, &["commit", "--quiet", "-am", "old"]);
    git(&repo, &["checkout", "--quiet", "main"]);
    let record = serde_json::json!({"worktree": {
        "repository": repo, "branch": legacy, "baseBranch": "main", "base": head.trim(),
        "commits": [], "diffstat": "", "changedFiles": []}});
    q.ok(&[
        "complete",
        &old,
        "--token",
        token,
        "--result",
        &record.to_string(),
    ]);

    // Its first worker gives it an id; its new tasks branch in the queue's namespace.
    let new = q.add(&["--type", "edit", "--target", repo.to_str().unwrap()]);
    q.drain("editor", &[]);
    assert_eq!(result(&q, &new)["branch"], task_branch(&q, &new).as_str());
    // The old task's branch is used as recorded.
    assert!(q.ok(&["diff", &old]).contains("+old"));
    let said = q.ok(&["merge", &old]);
    assert!(
        said.contains(&format!("merged {legacy} into main")),
        "{said}"
    );
    assert_eq!(
        fs::read_to_string(repo.join("shared.txt")).unwrap(),
        "old\n"
    );
}

#[test]
fn a_failed_setup_leaves_no_worktree_or_branch_behind() {
    let q = TestQueue::new();
    let repo = repository(&q);
    let toml = "[roles.editor]\nhandler = \"agent\"\ntypes = [\"edit\"]\n\
                command = [\"sh\", \"-c\", \"echo hi > shared.txt\"]\n\
                setup = [\"sh\", \"-c\", \"echo cannot install >&2; exit 5\"]\n";
    fs::write(q.queue.join("host.toml"), toml).unwrap();
    let id = q.add(&["--type", "edit", "--target", repo.to_str().unwrap()]);
    let data = q.scratch.join("data");
    let output = q
        .host()
        .args(["--role", "editor", "--drain"])
        .env("XDG_DATA_HOME", &data)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let task = q.task(&id);
    assert_eq!(task["status"], "failed", "{task:#}");
    let error = task["error"].as_str().unwrap();
    assert!(
        error.contains("setup `sh` exited with code 5: cannot install"),
        "{error}"
    );
    assert_eq!(git(&repo, &["branch", "--list", "host/*"]), "");
    assert_eq!(git(&repo, &["worktree", "list"]).lines().count(), 1);
    let folders: Vec<_> = fs::read_dir(data.join("host/worktrees"))
        .into_iter()
        .flatten()
        .flat_map(|repo_home| fs::read_dir(repo_home.unwrap().path()).unwrap())
        .collect();
    assert!(folders.is_empty(), "worktrees left: {folders:?}");
    // Nothing is left to discard, and `discard` says why.
    let line = q.fails(&["discard", &id]);
    assert!(line.contains("before its agent ran"), "{line}");
}

#[test]
fn include_copies_matching_files_of_a_folder_ignored_whole_and_logs_a_pattern_that_matched_nothing()
{
    let q = TestQueue::new();
    let repo = repository(&q);
    fs::write(repo.join(".gitignore"), ".env\nsecrets/\n").unwrap();
    git(&repo, &["commit", "--quiet", "-am", "ignore secrets"]);
    fs::create_dir_all(repo.join("secrets")).unwrap();
    fs::write(repo.join("secrets/db.local"), "PASSWORD=1\n").unwrap();
    fs::write(repo.join("secrets/keep-out.txt"), "not this\n").unwrap();
    // The agent fails unless the matching file is there and the other one is not.
    let script = "test -f secrets/db.local && test ! -e secrets/keep-out.txt || exit 3; \
                  echo done > shared.txt";
    let toml = format!(
        "[roles.editor]\nhandler = \"agent\"\ntypes = [\"edit\"]\n\
         command = [\"sh\", \"-c\", {script:?}]\n\
         include = [\"secrets/*.local\", \"config/*.missing\"]\n"
    );
    fs::write(q.queue.join("host.toml"), toml).unwrap();
    let id = q.add(&["--type", "edit", "--target", repo.to_str().unwrap()]);
    let output = q.drain("editor", &[]);
    assert!(output.status.success(), "{output:?}");
    let task = q.task(&id);
    assert_eq!(task["status"], "completed", "{task:#}");
    let logs = q.ok(&["logs", &id]);
    let named: Vec<&str> = logs
        .lines()
        .filter(|line| line.contains("matched no"))
        .collect();
    assert_eq!(named.len(), 1, "{logs}");
    assert!(named[0].contains("config/*.missing"), "{logs}");
}

#[test]
fn diff_after_a_merge_shows_the_merged_change() {
    let q = TestQueue::new();
    let repo = repository(&q);
    bind_editor(&q);
    let id = q.add(&["--type", "edit", "--target", repo.to_str().unwrap()]);
    let output = q.drain("editor", &[]);
    assert!(output.status.success(), "{output:?}");
    let before = q.ok(&["diff", &id]);
    assert!(before.contains(&format!("+{id}")), "{before}");
    q.ok(&["merge", &id]);
    let after = q.ok(&["diff", &id]);
    assert_eq!(
        after, before,
        "the merged change, as it was before the merge"
    );
}

#[test]
fn discard_takes_several_tasks_and_checks_them_all_before_it_deletes_any_branch() {
    let q = TestQueue::new();
    let repo = repository(&q);
    bind_editor(&q);
    let target = repo.to_str().unwrap();
    let first = q.add(&["--type", "edit", "--target", target]);
    let second = q.add(&["--type", "edit", "--target", target]);
    q.drain("editor", &["--concurrency", "2"]);
    let waiting = q.add(&["--type", "edit", "--target", target]);
    let line = q.fails(&["discard", &first, &second, &waiting]);
    assert!(line.starts_with("error: nothing was discarded: "), "{line}");
    assert_eq!(
        git(&repo, &["branch", "--list", "host/*"]).lines().count(),
        2,
        "both branches kept"
    );
    let said = q.ok(&["discard", &first, &second]);
    assert_eq!(said.lines().count(), 2, "{said}");
    assert_eq!(git(&repo, &["branch", "--list", "host/*"]), "");
    for id in [&first, &second] {
        assert_eq!(q.task(id)["branchState"]["state"], "discarded");
    }
}
