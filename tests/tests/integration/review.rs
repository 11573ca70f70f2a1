//! Review before merge (`review = "required"`, `host approve`, `host reject --reason`) and
//! fan-out (`host add --fanout`): the same task on several agents, one change merged.

use std::fs;

use integration_tests::TestQueue;
use serde_json::{Value, json};

use crate::worktrees::{git, repository, task_branch};

/// Role `editor` (type `edit`) asking for review: a fake agent that appends the prompt it was
/// given to `prompts.txt` in the scratch folder and changes `shared.txt`; `[hooks] review`
/// writes the task it is told of to `review.json`.
fn bind_reviewed_editor(q: &TestQueue) {
    let prompts = q.scratch.join("prompts.txt");
    let heard = q.scratch.join("review.json");
    let toml = format!(
        "[roles.editor]\nhandler = \"agent\"\ntypes = [\"edit\"]\nreview = \"required\"\n\
         command = [\"sh\", \"-c\", \"printf '%s\\\\n----\\\\n' \\\"$0\\\" >> \\\"$1\\\"; echo changed > shared.txt\", \
         \"{{prompt}}\", {prompts:?}]\n\n\
         [hooks]\nreview = [\"sh\", \"-c\", \"cat > \\\"$0\\\"\", {heard:?}]\n",
        prompts = prompts.display().to_string(),
        heard = heard.display().to_string(),
    );
    fs::write(q.queue.join("host.toml"), toml).unwrap();
}

fn status_json(q: &TestQueue) -> Value {
    serde_json::from_str(&q.ok(&["status", "--json"])).unwrap()
}

#[test]
fn a_change_waits_for_review_and_a_rejection_tells_the_next_attempt_why() {
    let q = TestQueue::new();
    let repo = repository(&q);
    bind_reviewed_editor(&q);
    let id = q.add(&["--type", "edit", "--target", repo.to_str().unwrap()]);
    let after = q.add(&["--type", "noop", "--after", &id]);
    let output = q.drain("editor", &[]);
    assert!(output.status.success(), "{output:?}");
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("waits for review"), "{log}");
    assert!(
        !log.contains("hook review"),
        "the hook ran without complaint: {log}"
    );

    // It succeeded, but waits; so does the task after it, and nothing is left for a worker.
    let task = q.task(&id);
    assert_eq!(task["status"], "review", "{task:#}");
    assert_eq!(task["success"], true);
    let branch = task_branch(&q, &id);
    assert_eq!(task["result"]["worktree"]["branch"], branch.as_str());
    assert_eq!(q.task(&after)["status"], "blocked");
    let report = status_json(&q);
    assert_eq!(report["counts"]["review"], 1, "{report:#}");
    assert_eq!(report["review"], json!([id]));
    let human = q.ok(&["status"]);
    assert!(
        human.contains(&format!("waiting for review: {id}")),
        "{human}"
    );
    let heard: Value =
        serde_json::from_str(&fs::read_to_string(q.scratch.join("review.json")).unwrap()).unwrap();
    assert_eq!(
        (heard["id"].as_str(), heard["status"].as_str()),
        (Some(id.as_str()), Some("review"))
    );
    let shown = q.ok(&["show", &id]);
    assert!(shown.contains(&format!("host approve {id}")), "{shown}");
    let listed = q.ok(&["list"]);
    assert!(
        listed.contains(&format!("a review (host approve {id})")),
        "{listed}"
    );

    // `wait` does not hang on a person: it ends, saying what waits and how to go on.
    let line = q.fails(&["wait", &id, &after, "--timeout", "30s"]);
    assert!(
        line.contains(&format!("{id} review")) && line.contains("host approve"),
        "{line}"
    );
    let line = q.fails(&["merge", &id]);
    assert!(
        line.contains(&format!(
            "task {id} waits for review: approve it first (host approve)"
        )),
        "{line}"
    );
    let line = q.fails(&["discard", &id]);
    assert!(line.contains("reject or cancel it first"), "{line}");
    let line = q.fails(&["retry", &id]);
    assert!(line.contains("reject it to run it again"), "{line}");
    let line = q.fails(&["approve", &after]);
    assert!(
        line.contains(&format!("task {after} is blocked")) && line.contains("waiting for review"),
        "{line}"
    );
    let output = q.run(&["reject", &id]);
    assert_eq!(
        output.status.code(),
        Some(2),
        "--reason is required: {output:?}"
    );
    let line = q.fails(&["reject", &id, "--reason", "  "]);
    assert!(line.contains("needs a reason"), "{line}");

    // Rejected: pending again with one more attempt, and the next prompt carries the reason.
    let said = q.ok(&["reject", &id, "--reason", "keep the original line too"]);
    assert!(said.contains("pending again"), "{said}");
    let task = q.task(&id);
    assert_eq!(task["status"], "pending");
    assert_eq!(task["reviews"][0]["verdict"], "rejected");
    assert_eq!(task["reviews"][0]["reason"], "keep the original line too");
    q.drain("editor", &[]);
    let prompts = fs::read_to_string(q.scratch.join("prompts.txt")).unwrap();
    let prompts: Vec<&str> = prompts.split("----\n").filter(|p| !p.is_empty()).collect();
    assert_eq!(prompts.len(), 2, "{prompts:?}");
    assert!(!prompts[0].contains("rejected"), "{}", prompts[0]);
    assert!(
        prompts[1].contains("A reviewer rejected")
            && prompts[1].contains("- attempt 1: keep the original line too"),
        "{}",
        prompts[1]
    );
    assert_eq!(q.task(&id)["status"], "review");

    // Approved: completed, the task after it runs, and the branch merges.
    let said = q.ok(&["approve", &id]);
    assert!(said.contains(&format!("host merge {id}")), "{said}");
    let task = q.task(&id);
    assert_eq!(task["status"], "completed");
    assert_eq!(task["reviews"][1]["verdict"], "approved");
    assert_eq!(q.task(&after)["status"], "pending");
    // The rejected attempt's branch stayed for inspection until now.
    assert_eq!(
        git(&repo, &["branch", "--list", "host/*"]),
        format!("  {branch}\n  {branch}-attempt-1\n")
    );
    let said = q.ok(&["merge", &id]);
    assert!(
        said.contains(&format!("(and the earlier attempts' {branch}-attempt-1)")),
        "{said}"
    );
    assert_eq!(git(&repo, &["branch", "--list", "host/*"]), "");
    assert_eq!(q.task(&id)["branchState"]["state"], "merged");
    assert_eq!(
        fs::read_to_string(repo.join("shared.txt")).unwrap(),
        "changed\n"
    );
    assert_eq!(status_json(&q)["review"], json!([]));
}

#[test]
fn a_review_setting_that_is_not_known_is_refused_naming_the_line() {
    let q = TestQueue::new();
    fs::write(
        q.queue.join("host.toml"),
        "[roles.editor]\nhandler = \"agent\"\ntypes = [\"edit\"]\nreview = \"yes\"\n",
    )
    .unwrap();
    let line = q.fails(&["add", "--type", "edit"]);
    assert!(
        line.contains("host.toml:4: roles.editor.review: \"yes\" is not \"required\" or \"none\""),
        "{line}"
    );
}

#[test]
fn a_fanned_out_task_runs_side_by_side_and_merging_one_discards_the_others() {
    let q = TestQueue::new();
    let repo = repository(&q);
    crate::worktrees::bind_editor(&q);
    let target = repo.to_str().unwrap();
    let ids: Vec<String> = q
        .ok(&["add", "--type", "edit", "--target", target, "--fanout", "3"])
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    let task = q.task(&ids[1]);
    assert_eq!(task["siblings"], json!([ids[0], ids[2]]));
    let output = q.drain("editor", &["--concurrency", "3"]);
    assert!(output.status.success(), "{output:?}");
    // Each copy made its own change on its own branch.
    for id in &ids {
        assert_eq!(q.task(id)["status"], "completed", "{:#}", q.task(id));
        assert_eq!(
            git(
                &repo,
                &["show", &format!("{}:shared.txt", task_branch(&q, id))]
            ),
            format!("{id}\n")
        );
    }
    let shown = q.ok(&["show", &ids[0]]);
    assert!(
        shown.contains(&format!("fanned out   with {}, {}", ids[1], ids[2])),
        "{shown}"
    );

    let said = q.ok(&["merge", &ids[1]]);
    assert!(
        said.contains(&format!(
            "the other copies (--fanout): task {} branch discarded, task {} branch discarded",
            ids[0], ids[2]
        )),
        "{said}"
    );
    assert_eq!(git(&repo, &["branch", "--list", "host/*"]), "");
    assert_eq!(
        fs::read_to_string(repo.join("shared.txt")).unwrap(),
        format!("{}\n", ids[1])
    );
    for (id, state) in [
        (&ids[0], "discarded"),
        (&ids[1], "merged"),
        (&ids[2], "discarded"),
    ] {
        assert_eq!(q.task(id)["branchState"]["state"], state, "task {id}");
    }
    let line = q.fails(&["merge", &ids[0]]);
    assert!(
        line.contains("its branch was merged or discarded already"),
        "{line}"
    );

    // Copies that have not run when one is merged are cancelled: their work is not wanted.
    let more: Vec<String> = q
        .ok(&["add", "--type", "edit", "--target", target, "--fanout", "2"])
        .lines()
        .map(String::from)
        .collect();
    let claimed: Value =
        serde_json::from_str(&q.ok(&["claim", "--role", "editor", "--json"])).unwrap();
    assert_eq!(claimed["id"], more[0].as_str());
    let token = claimed["leaseToken"].as_str().unwrap();
    let branch = task_branch(&q, &more[0]);
    git(&repo, &["branch", &branch]);
    let record = json!({"worktree": {
        "repository": repo, "branch": branch, "baseBranch": "main",
        "base": git(&repo, &["rev-parse", "HEAD"]).trim(), "commits": [], "diffstat": "",
        "changedFiles": []}});
    q.ok(&[
        "complete",
        &more[0],
        "--token",
        token,
        "--result",
        &record.to_string(),
    ]);
    let said = q.ok(&["merge", &more[0]]);
    assert!(
        said.contains(&format!("task {} cancelled", more[1])),
        "{said}"
    );
    assert_eq!(q.task(&more[1])["status"], "cancelled");
    let line = q.fails(&["add", "--fanout", "2"]);
    assert!(
        line.contains("--fanout 2 copies a task: give its --type"),
        "{line}"
    );
}

#[test]
fn a_fan_out_over_roles_gives_each_role_a_type_of_its_own() {
    let q = TestQueue::new();
    let toml = "[roles.claude]\nhandler = \"agent\"\ntypes = [\"code\", \"code-claude\"]\nagent = \"claude\"\n\n\
                [roles.codex]\nhandler = \"agent\"\ntypes = [\"code\", \"code-codex\"]\nagent = \"codex\"\n\n\
                [roles.twin]\nhandler = \"agent\"\ntypes = [\"code\"]\nagent = \"codex\"\n";
    fs::write(q.queue.join("host.toml"), toml).unwrap();
    let target = q.scratch.to_str().unwrap();
    let ids: Vec<String> = q
        .ok(&[
            "add",
            "--fanout",
            "claude,codex",
            "--target",
            target,
            "--description",
            "fix it",
        ])
        .lines()
        .map(String::from)
        .collect();
    let types: Vec<Value> = ids.iter().map(|id| q.task(id)["type"].clone()).collect();
    assert_eq!(types, [json!("code-claude"), json!("code-codex")]);
    assert_eq!(q.task(&ids[0])["description"], "fix it");

    let line = q.fails(&["add", "--fanout", "claude,twin"]);
    assert!(
        line.contains(
            "role twin claims no type that the other roles of the list do not (it claims code)"
        ),
        "{line}"
    );
    let line = q.fails(&["add", "--fanout", "claude,nosuch"]);
    assert!(line.contains("nosuch"), "{line}");
    let line = q.fails(&["add", "--type", "code", "--fanout", "claude,codex"]);
    assert!(line.contains("the roles decide the types"), "{line}");
    for bad in ["1", "17", "claude", "claude,claude"] {
        let output = q.run(&["add", "--type", "code", "--fanout", bad]);
        assert_eq!(output.status.code(), Some(2), "--fanout {bad}: {output:?}");
    }
    assert_eq!(q.results().len(), 0);
    let listed: Vec<Value> = serde_json::from_str(&q.ok(&["list", "--json"])).unwrap();
    assert_eq!(listed.len(), 2, "nothing of a refused fan-out was added");
}

#[test]
fn an_assistant_completing_a_reviewed_task_itself_leaves_it_waiting_for_review() {
    let q = TestQueue::new();
    let heard = q.scratch.join("review.json");
    let toml = format!(
        "[roles.noop]\nhandler = \"noop\"\nreview = \"required\"\n\n\
         [hooks]\nreview = [\"sh\", \"-c\", \"cat > \\\"$0\\\"\", {:?}]\n",
        heard.display().to_string()
    );
    fs::write(q.queue.join("host.toml"), toml).unwrap();
    let id = q.add(&["--type", "noop"]);
    let after = q.add(&["--type", "noop", "--after", &id]);
    let claimed: Value =
        serde_json::from_str(&q.ok(&["claim", "--role", "noop", "--json"])).unwrap();
    let token = claimed["leaseToken"].as_str().unwrap();
    let said = q.ok(&["complete", &id, "--token", token]);
    assert_eq!(said.trim(), format!("task {id}: review"));
    assert!(heard.exists(), "the review hook ran");
    // Nothing is left for the workers: `watch` (plain, not on a terminal) ends rather than
    // waiting for a person.
    let watched = q.ok(&["watch"]);
    assert!(watched.contains("waiting for review"), "{watched}");
    let line = q.fails(&["logs", &id, "--follow"]);
    assert!(line.contains("waits for review"), "{line}");
    // `wait` for everything unfinished ends too, naming what waits for a person.
    let line = q.fails(&["wait", "--timeout", "30s"]);
    assert!(
        line.contains(&format!("{id} review"))
            && line.contains(&format!("{after} blocked behind a task waiting for review")),
        "{line}"
    );
    q.ok(&["approve", &id]);
    assert_eq!(q.task(&after)["status"], "pending");
}

#[test]
fn diff_of_a_task_in_review_that_ran_without_a_worktree_says_so() {
    let q = TestQueue::new();
    fs::write(
        q.queue.join("host.toml"),
        "[roles.noop]\nhandler = \"noop\"\nreview = \"required\"\n",
    )
    .unwrap();
    let id = q.add(&["--type", "noop"]);
    let output = q.drain("noop", &[]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(q.task(&id)["status"], "review");
    let line = q.fails(&["diff", &id]);
    assert!(
        line.contains("ran without a worktree") && !line.contains("has not finished"),
        "{line}"
    );
}
