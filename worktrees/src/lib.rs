//! A git worktree per task, so that agents working on one repository at once never touch each
//! other's files or the user's own checkout.
//!
//! An attempt [`start`]s a fresh worktree on the branch `host/task-ID`, made from a base (the
//! repository's HEAD, a named commit or branch, or the branches of the tasks it comes after,
//! merged). The agent works in it; [`Checkout::finish`] commits what it left uncommitted,
//! describes the branch in a [`Record`] and removes the worktree. The branch stays, to be shown
//! ([`diff`]), merged into its base ([`merge`]) or removed ([`discard`]).
//!
//! Worktrees live in the repository's git folder (`.git/host-worktrees/task-ID`), out of the
//! user's checkout and of `git status`. Everything runs the `git` program; nothing here holds
//! state of its own.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

/// What went wrong with git, in words that name the repository or branch at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `git` could not be run, or a git command failed.
    #[error("{0}")]
    Git(String),
    /// Merging would conflict; nothing was changed.
    #[error("{what} conflicts in {}; nothing was changed", .files.join(", "))]
    Conflict {
        /// What was being merged into what.
        what: String,
        /// The files both sides changed.
        files: Vec<String>,
    },
}

/// A git repository's working tree.
#[derive(Clone, Debug)]
pub struct Repo {
    /// Its top folder.
    pub root: PathBuf,
}

impl Repo {
    /// The repository `dir` is tracked in: none when `dir` is in no work tree, or is ignored
    /// there (a build folder is not part of the project).
    pub fn containing(dir: &Path) -> Option<Repo> {
        let root = git_in(dir, &["rev-parse", "--show-toplevel"]).ok()?;
        let root = PathBuf::from(root.trim());
        let ignored = Command::new("git")
            .arg("-C")
            .arg(&root)
            .args(["check-ignore", "-q", "--"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        (!ignored).then_some(Repo { root })
    }

    /// Runs `git ARGS` in the repository; its standard output, or an error with its complaint.
    pub fn git(&self, args: &[&str]) -> Result<String, Error> {
        git_in(&self.root, args)
    }

    fn has_branch(&self, branch: &str) -> bool {
        self.git(&[
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("refs/heads/{branch}"),
        ])
        .is_ok()
    }

    /// The branch checked out in the user's checkout, if any (not a detached HEAD).
    pub fn current_branch(&self) -> Option<String> {
        self.git(&["symbolic-ref", "--quiet", "--short", "HEAD"])
            .ok()
            .map(|b| b.trim().to_string())
    }

    /// Commits with the user's identity, or a stand-in one where git has none configured.
    fn commit(&self, dir: &Path, message: &str) -> Result<(), Error> {
        let mut args = Vec::new();
        if git_in(dir, &["config", "user.email"]).is_err() {
            args.extend(["-c", "user.name=host", "-c", "user.email=host@localhost"]);
        }
        args.extend(["commit", "--quiet", "--no-verify", "-m", message]);
        git_in(dir, &args).map(drop)
    }
}

/// Where an attempt starts from.
#[derive(Clone, Debug, Default)]
pub struct Base {
    /// A commit or branch the task or role names; else the repository's HEAD.
    pub named: Option<String>,
    /// The branches of the tasks this one comes after, merged in that order (they replace
    /// HEAD, not a named base).
    pub after: Vec<String>,
}

/// The branch of task `id`.
pub fn branch_of(id: &str) -> String {
    format!("host/task-{id}")
}

/// A worktree made for one attempt.
#[derive(Debug)]
pub struct Checkout {
    repo: Repo,
    /// The worktree's top folder.
    path: PathBuf,
    /// The branch it is on.
    branch: String,
    /// The commit it started from.
    base: String,
    /// The branch that commit was the head of, where there was one: what `merge` merges into.
    base_branch: Option<String>,
}

/// Makes a fresh worktree for an attempt at task `id`. A branch left by an earlier attempt is
/// kept, renamed `host/task-ID-attempt-N`.
pub fn start(repo: &Repo, id: &str, base: &Base) -> Result<Checkout, Error> {
    let branch = branch_of(id);
    if repo.has_branch(&branch) {
        let kept = (1..)
            .map(|n| format!("{branch}-attempt-{n}"))
            .find(|name| !repo.has_branch(name))
            .expect("a free name");
        repo.git(&["branch", "-m", &branch, &kept])?;
    }
    let (start, base_branch) = match (&base.named, base.after.first()) {
        (Some(named), _) => (named.clone(), repo.has_branch(named).then(|| named.clone())),
        (None, Some(first)) => (first.clone(), repo.current_branch()),
        (None, None) => ("HEAD".to_string(), repo.current_branch()),
    };
    let common = repo.git(&["rev-parse", "--path-format=absolute", "--git-common-dir"])?;
    let path = PathBuf::from(common.trim())
        .join("host-worktrees")
        .join(format!("task-{id}"));
    if path.exists() {
        // Left by a worker that was killed: nothing in it is anyone's work any more.
        let _ = repo.git(&["worktree", "remove", "--force", &path.to_string_lossy()]);
        let _ = std::fs::remove_dir_all(&path);
        repo.git(&["worktree", "prune"])?;
    }
    let base_commit = repo
        .git(&["rev-parse", "--verify", &format!("{start}^{{commit}}")])
        .map_err(|err| Error::Git(format!("base {start:?}: {err}")))?
        .trim()
        .to_string();
    repo.git(&[
        "worktree",
        "add",
        "--quiet",
        "-b",
        &branch,
        &path.to_string_lossy(),
        &base_commit,
    ])?;
    let checkout = Checkout {
        repo: repo.clone(),
        path,
        branch,
        base: base_commit,
        base_branch,
    };
    for other in base.after.iter().skip(1) {
        if let Err(err) = checkout.merge_in(other) {
            checkout.remove();
            let _ = repo.git(&["branch", "-D", &checkout.branch]);
            return Err(err);
        }
    }
    Ok(checkout)
}

impl Checkout {
    /// The worktree's folder that stands for `dir` of the repository (the task's target).
    pub fn folder_for(&self, dir: &Path) -> PathBuf {
        match dir.strip_prefix(&self.repo.root) {
            Ok(rel) => self.path.join(rel),
            Err(_) => self.path.clone(),
        }
    }

    /// Merges another prerequisite's branch into the new worktree.
    fn merge_in(&self, branch: &str) -> Result<(), Error> {
        let mut args = vec!["merge", "--no-edit", "--quiet", branch];
        if git_in(&self.path, &["config", "user.email"]).is_err() {
            args.splice(
                0..0,
                ["-c", "user.name=host", "-c", "user.email=host@localhost"],
            );
        }
        if git_in(&self.path, &args).is_ok() {
            return Ok(());
        }
        let files = conflicted(&self.path);
        let _ = git_in(&self.path, &["merge", "--abort"]);
        Err(Error::Conflict {
            what: format!("merging the branches of the tasks it comes after ({branch})"),
            files,
        })
    }

    /// Copies the repository's ignored files that `patterns` (gitignore syntax: `.env`,
    /// `config/*.local`) match into the worktree, as Claude Code's `.worktreeinclude` does;
    /// the patterns of the repository's own `.worktreeinclude` are added. Returns what it
    /// copied, relative to the top.
    pub fn copy_included(&self, patterns: &[String]) -> Result<Vec<String>, Error> {
        let mut builder = ignore::gitignore::GitignoreBuilder::new(&self.repo.root);
        let include = self.repo.root.join(".worktreeinclude");
        if include.is_file()
            && let Some(err) = builder.add(&include)
        {
            return Err(Error::Git(format!("{}: {err}", include.display())));
        }
        for pattern in patterns {
            builder
                .add_line(None, pattern)
                .map_err(|err| Error::Git(format!("include pattern {pattern:?}: {err}")))?;
        }
        let matcher = builder
            .build()
            .map_err(|err| Error::Git(format!("include patterns: {err}")))?;
        if matcher.is_empty() {
            return Ok(Vec::new());
        }
        let listed = self.repo.git(&[
            "ls-files",
            "--others",
            "--ignored",
            "--exclude-standard",
            "--directory",
        ])?;
        let mut copied = Vec::new();
        for rel in listed.lines() {
            let is_dir = rel.ends_with('/');
            let rel = rel.trim_end_matches('/');
            if !matcher.matched_path_or_any_parents(rel, is_dir).is_ignore() {
                continue;
            }
            copy_all(&self.repo.root.join(rel), &self.path.join(rel))
                .map_err(|err| Error::Git(format!("copying {rel} into the worktree: {err}")))?;
            copied.push(rel.to_string());
        }
        Ok(copied)
    }

    /// Commits what the agent left uncommitted (with `message`), describes the branch and
    /// removes the worktree; the branch stays.
    pub fn finish(self, message: &str) -> Result<Record, Error> {
        let outcome = self.commit_and_describe(message);
        self.remove();
        outcome
    }

    fn commit_and_describe(&self, message: &str) -> Result<Record, Error> {
        let dirty = !git_in(&self.path, &["status", "--porcelain"])?
            .trim()
            .is_empty();
        if dirty {
            git_in(&self.path, &["add", "--all"])?;
            self.repo.commit(&self.path, message)?;
        }
        let range = format!("{}..{}", self.base, self.branch);
        let commits = self
            .repo
            .git(&["log", "--reverse", "--format=%H %s", &range])?
            .lines()
            .filter_map(|line| line.split_once(' '))
            .map(|(sha, subject)| Commit {
                sha: sha.to_string(),
                subject: subject.to_string(),
            })
            .collect();
        let changed_files = self
            .repo
            .git(&["diff", "--name-status", "--no-renames", &range])?
            .lines()
            .filter_map(|line| line.split_once('\t'))
            .map(|(status, path)| ChangedFile {
                status: match status {
                    "A" => "added",
                    "D" => "deleted",
                    _ => "modified",
                }
                .to_string(),
                path: path.to_string(),
            })
            .collect();
        let diffstat = self
            .repo
            .git(&["diff", "--shortstat", &range])?
            .trim()
            .to_string();
        Ok(Record {
            repository: self.repo.root.clone(),
            branch: self.branch.clone(),
            base: self.base.clone(),
            base_branch: self.base_branch.clone(),
            commits,
            diffstat,
            changed_files,
        })
    }

    fn remove(&self) {
        let _ = self.repo.git(&[
            "worktree",
            "remove",
            "--force",
            &self.path.to_string_lossy(),
        ]);
        let _ = std::fs::remove_dir_all(&self.path);
        let _ = self.repo.git(&["worktree", "prune"]);
    }
}

/// A task's branch, as its result records it (`result.worktree`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// The repository's top folder.
    pub repository: PathBuf,
    /// The task's branch.
    pub branch: String,
    /// The commit it started from.
    pub base: String,
    /// The branch that commit was the head of: what [`merge`] merges into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_branch: Option<String>,
    /// Its commits, oldest first.
    pub commits: Vec<Commit>,
    /// `git diff --shortstat` from the base ("2 files changed, 10 insertions(+)"), or empty.
    pub diffstat: String,
    /// The files it changed from the base.
    pub changed_files: Vec<ChangedFile>,
}

/// One commit of a task's branch.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Commit {
    /// Its full hash.
    pub sha: String,
    /// Its first line.
    pub subject: String,
}

/// A file a task's branch changed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ChangedFile {
    /// `added`, `modified` or `deleted`.
    pub status: String,
    /// Relative to the repository's top.
    pub path: String,
}

/// The change a task's branch makes, as a patch from the point it left its base.
pub fn diff(record: &Record) -> Result<String, Error> {
    repo_of(record)?.git(&["diff", &format!("{}...{}", record.base, record.branch)])
}

/// How [`merge`] brings a branch in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MergeStyle {
    /// A merge commit (`git merge --no-ff`).
    Merge,
    /// One commit of the whole change (`git merge --squash`).
    Squash,
    /// The branch's commits replayed on the base, then a fast-forward.
    Rebase,
}

/// Brings a task's branch into its base branch, which must be the branch checked out in the
/// repository's own checkout, with nothing uncommitted in tracked files. A conflict leaves
/// everything as it was and names the files. The branch is deleted once merged.
pub fn merge(record: &Record, style: MergeStyle, message: &str) -> Result<String, Error> {
    let repo = repo_of(record)?;
    let base = record.base_branch.as_deref().ok_or_else(|| {
        Error::Git(format!(
            "{} started from a commit that was no branch's head; merge it by hand",
            record.branch
        ))
    })?;
    if repo.current_branch().as_deref() != Some(base) {
        return Err(Error::Git(format!(
            "{} merges into {base}, but {} has {} checked out; check out {base} first",
            record.branch,
            repo.root.display(),
            repo.current_branch()
                .unwrap_or_else(|| "a detached HEAD".into())
        )));
    }
    if !repo
        .git(&["status", "--porcelain", "--untracked-files=no"])?
        .trim()
        .is_empty()
    {
        return Err(Error::Git(format!(
            "{} has uncommitted changes; commit or stash them before merging",
            repo.root.display()
        )));
    }
    let branch = record.branch.as_str();
    let conflict = |dir: &Path| Error::Conflict {
        what: format!("{branch} into {base}"),
        files: conflicted(dir),
    };
    match style {
        MergeStyle::Merge => {
            if repo
                .git(&["merge", "--no-ff", "--quiet", "-m", message, branch])
                .is_err()
            {
                let err = conflict(&repo.root);
                let _ = repo.git(&["merge", "--abort"]);
                return Err(err);
            }
        }
        MergeStyle::Squash => {
            if repo.git(&["merge", "--squash", "--quiet", branch]).is_err() {
                let err = conflict(&repo.root);
                let _ = repo.git(&["reset", "--merge"]);
                return Err(err);
            }
            repo.commit(&repo.root, message)?;
        }
        MergeStyle::Rebase => {
            // Replayed in a worktree of its own, so the user's checkout sees only the result.
            let scratch = rebase_dir(&repo)?;
            let outcome = (|| {
                repo.git(&[
                    "worktree",
                    "add",
                    "--quiet",
                    &scratch.to_string_lossy(),
                    branch,
                ])?;
                if git_in(&scratch, &["rebase", "--quiet", base]).is_err() {
                    let err = conflict(&scratch);
                    let _ = git_in(&scratch, &["rebase", "--abort"]);
                    return Err(err);
                }
                Ok(())
            })();
            let _ = repo.git(&["worktree", "remove", "--force", &scratch.to_string_lossy()]);
            outcome?;
            repo.git(&["merge", "--ff-only", "--quiet", branch])?;
        }
    }
    repo.git(&["branch", "-D", branch])?;
    Ok(base.to_string())
}

/// Deletes a task's branch.
pub fn discard(record: &Record) -> Result<(), Error> {
    repo_of(record)?
        .git(&["branch", "-D", &record.branch])
        .map(drop)
}

fn repo_of(record: &Record) -> Result<Repo, Error> {
    let repo = Repo {
        root: record.repository.clone(),
    };
    if !repo.has_branch(&record.branch) {
        return Err(Error::Git(format!(
            "{} has no branch {} (merged or discarded already?)",
            record.repository.display(),
            record.branch
        )));
    }
    Ok(repo)
}

fn rebase_dir(repo: &Repo) -> Result<PathBuf, Error> {
    let common = repo.git(&["rev-parse", "--path-format=absolute", "--git-common-dir"])?;
    let dir = PathBuf::from(common.trim())
        .join("host-worktrees")
        .join(format!("rebase-{}", std::process::id()));
    Ok(dir)
}

/// The files git left unmerged in `dir`.
fn conflicted(dir: &Path) -> Vec<String> {
    git_in(dir, &["diff", "--name-only", "--diff-filter=U"])
        .map(|out| out.lines().map(String::from).collect())
        .unwrap_or_default()
}

fn git_in(dir: &Path, args: &[&str]) -> Result<String, Error> {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .map_err(|err| Error::Git(format!("cannot run git: {err}")))?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let said = String::from_utf8_lossy(&output.stderr);
    let said = said
        .lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .unwrap_or("(it said nothing)")
        .trim();
    Err(Error::Git(format!(
        "git {} in {}: {said}",
        args.iter()
            .find(|a| !a.starts_with('-') && !a.contains('='))
            .unwrap_or(&""),
        dir.display()
    )))
}

fn copy_all(from: &Path, to: &Path) -> std::io::Result<()> {
    if from.is_dir() {
        std::fs::create_dir_all(to)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            copy_all(&entry.path(), &to.join(entry.file_name()))?;
        }
        Ok(())
    } else {
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(from, to).map(drop)
    }
}
