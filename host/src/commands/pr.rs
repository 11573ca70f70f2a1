//! `host pr ID [--draft] [--remote NAME]`: pushes a task's branch to a remote of its repository
//! and opens a pull request with the GitHub CLI (`gh`) when it is on PATH; the pull request's
//! address is kept on the task (`result.pullRequest`), for `host show`, `host list` and the
//! dashboard. Without `gh`, the branch is pushed and, for a github.com remote, the address
//! where GitHub offers to open one is printed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, anyhow, bail};
use queue::{QueueStore, Task};
use serde_json::{Value, json};
use worktrees::Record;

use crate::cli::{PrArgs, Settings};
use crate::commands::{open_store, outln};

/// `host pr`.
pub fn run(settings: &Settings, args: &PrArgs) -> anyhow::Result<()> {
    let store = open_store(settings)?;
    let id = args.id.as_str();
    let task = store.get(id)?;
    let (record, repo) = super::branch::live_branch(&store, &task, "there is nothing to push")?;
    let branch = record.branch.as_str();
    if !repo.has_branch(branch) {
        bail!(
            "task {id}: {} has no branch {branch} (merged or discarded already?)",
            repo.root.display()
        );
    }
    let remote = args.remote.as_deref().unwrap_or("origin");
    let url = repo
        .git(&["remote", "get-url", remote])
        .map(|u| u.trim().to_string())
        .map_err(|_| {
            anyhow!(
                "task {id}: {} has no remote {remote:?} to push {branch} to (add one with `git \
                 remote add`, or name another with --remote)",
                repo.root.display()
            )
        })?;
    let refspec = format!("refs/heads/{branch}:refs/heads/{branch}");
    repo.git(&["push", "--quiet", remote, &refspec])
        .map_err(|err| anyhow!("task {id}: pushing {branch} to {remote} failed: {err}"))?;
    let github = github_repo(&url);
    let Some(gh) = on_path("gh") else {
        match (&github, &record.base_branch) {
            (Some(slug), base) => {
                let range = match base {
                    Some(base) => format!("{base}...{branch}"),
                    None => branch.to_string(),
                };
                outln!(
                    "pushed {branch} to {remote}; open the pull request at \
                     https://github.com/{slug}/compare/{range}?expand=1"
                );
            }
            (None, _) => outln!("pushed {branch} to {remote} ({url})"),
        }
        return Ok(());
    };
    let title = task
        .description
        .as_deref()
        .and_then(|d| d.lines().map(str::trim).find(|l| !l.is_empty()))
        .map_or_else(
            || format!("host task {id}: {}", task.task_type),
            String::from,
        );
    let mut command = Command::new(gh);
    command
        .current_dir(&repo.root)
        .args(["pr", "create", "--head", branch, "--title", &title])
        .args(["--body-file", "-"]);
    if let Some(base) = &record.base_branch {
        command.args(["--base", base]);
    }
    if let Some(slug) = &github {
        command.args(["--repo", slug]);
    }
    if args.draft {
        command.arg("--draft");
    }
    let said = run_with_input(&mut command, &body(&task, &record))
        .with_context(|| format!("task {id}: cannot run gh"))?;
    if !said.status.success() {
        let stderr = String::from_utf8_lossy(&said.stderr);
        let why = if said.status.code() == Some(4) || stderr.contains("gh auth login") {
            "gh is not logged in (run `gh auth login`)".to_string()
        } else {
            let last = stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("it said nothing");
            format!("gh pr create failed: {}", last.trim())
        };
        bail!("task {id}: {why}; {branch} was pushed to {remote}");
    }
    let stdout = String::from_utf8_lossy(&said.stdout);
    let address = stdout
        .lines()
        .map(str::trim)
        .rfind(|l| l.starts_with("http://") || l.starts_with("https://"))
        .ok_or_else(|| {
            anyhow!("task {id}: gh pr create printed no address; {branch} was pushed to {remote}")
        })?
        .to_string();
    let kept = json!({
        "url": address,
        "remote": remote,
        "branch": branch,
        "draft": args.draft,
    });
    store.update(id, &|t, _| {
        let result = t.result.get_or_insert_with(|| json!({}));
        if let Some(map) = result.as_object_mut() {
            map.insert("pullRequest".into(), kept.clone());
        }
        Ok(())
    })?;
    outln!("{address}");
    Ok(())
}

/// The pull request's text: the agent's final message, the diffstat, the cost.
fn body(task: &Task, record: &Record) -> String {
    let result = task.result.as_ref();
    let mut text = String::new();
    if let Some(message) = result
        .and_then(|r| r.get("finalMessage"))
        .and_then(Value::as_str)
        .filter(|m| !m.trim().is_empty())
    {
        text.push_str(message.trim());
        text.push_str("\n\n");
    }
    let diffstat = if record.diffstat.is_empty() {
        "no change"
    } else {
        &record.diffstat
    };
    text.push_str(&format!("Diffstat: {diffstat}\n"));
    if let Some(cost) = result
        .and_then(|r| r.pointer("/usage/costUsd"))
        .and_then(Value::as_f64)
    {
        text.push_str(&format!("Cost: ${cost:.2}\n"));
    }
    text.push_str(&format!(
        "\nMade by host task {} on branch {}.\n",
        task.id, record.branch
    ));
    text
}

/// `OWNER/REPO` of a github.com remote address (https, ssh or scp-like), else `None`.
fn github_repo(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("https://github.com/")
        .or_else(|| url.strip_prefix("http://github.com/"))
        .or_else(|| url.strip_prefix("ssh://git@github.com/"))
        .or_else(|| url.strip_prefix("git@github.com:"))?;
    let rest = rest.trim_end_matches('/');
    let rest = rest.strip_suffix(".git").unwrap_or(rest);
    let (owner, name) = rest.split_once('/')?;
    let good = |s: &str| !s.is_empty() && !s.contains('/');
    (good(owner) && good(name)).then(|| format!("{owner}/{name}"))
}

/// The program `name` as found on PATH.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        path.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    }
    #[cfg(not(unix))]
    {
        path.is_file() || path.with_extension("exe").is_file()
    }
}

/// Runs `command` with `input` on its standard input; its output.
fn run_with_input(command: &mut Command, input: &str) -> std::io::Result<std::process::Output> {
    use std::io::Write as _;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        // A program that stopped reading says why in its output.
        let _ = stdin.write_all(input.as_bytes());
    }
    child.wait_with_output()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_remotes_are_recognised_in_every_form() {
        for url in [
            "https://github.com/acme/app.git",
            "https://github.com/acme/app",
            "git@github.com:acme/app.git",
            "ssh://git@github.com/acme/app.git",
        ] {
            assert_eq!(github_repo(url).as_deref(), Some("acme/app"), "{url}");
        }
        assert_eq!(github_repo("https://gitlab.com/acme/app.git"), None);
        assert_eq!(github_repo("/srv/git/app.git"), None);
    }
}
