//! A git worktree per task, so that agents working on one repository at once never touch each
//! other's files or the user's own checkout.
//!
//! An attempt [`start`]s a fresh worktree on the branch `NAMESPACE/task-ID`, made from a base
//! (the repository's HEAD, a named commit or branch, or the branches of the tasks it comes after,
//! merged). The namespace is the queue's own (`host/QUEUE-ID`, see [`namespace`]), so that two
//! queues on one repository, whose task ids both start at 1, never share a branch or a
//! worktree; queues made before queues had an id used `host` ([`LEGACY_NAMESPACE`]). The agent
//! works in it; [`Checkout::finish`] commits what it left uncommitted, describes the branch in a
//! [`Record`] and removes the worktree. The branch stays, to be shown
//! ([`diff`]), merged into its base ([`merge`]) or removed ([`discard`]).
//!
//! Worktrees live outside the repository, under `$XDG_DATA_HOME/host/worktrees` (or
//! `~/.local/share/host/worktrees`, else the temporary folder), one folder per repository:
//! not in the user's checkout, and not under `.git`, which agent CLIs treat as protected.
//! Everything runs the `git` program; nothing here holds state of its own.

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
    /// The repository `dir` is tracked in: none when `dir` is in no work tree, is ignored there
    /// (a build folder is not part of the project), or the repository has no commit yet.
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
        // A repository with no commit yet has nothing to branch from.
        let born = git_in(
            &root,
            &["rev-parse", "--verify", "--quiet", "HEAD^{commit}"],
        )
        .is_ok();
        (!ignored && born).then_some(Repo { root })
    }

    /// Runs `git ARGS` in the repository; its standard output, or an error with its complaint.
    pub fn git(&self, args: &[&str]) -> Result<String, Error> {
        git_in(&self.root, args)
    }

    /// Where this repository's task worktrees are made: a folder named after the repository
    /// and a hash of its path, so two repositories of one name do not share it.
    fn worktrees_home(&self) -> PathBuf {
        let data = std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
            .unwrap_or_else(std::env::temp_dir);
        // FNV-1a: stable across runs and versions, unlike the standard library's hasher.
        let hash = self
            .root
            .to_string_lossy()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
        let name = self
            .root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        data.join("host/worktrees")
            .join(format!("{name}-{:08x}", hash as u32))
    }

    /// `-c user.name=host -c user.email=host@localhost` where git has no identity configured
    /// in `dir`, so that commits and merges can be made.
    fn identity(dir: &Path) -> Vec<&'static str> {
        match git_in(dir, &["config", "user.email"]) {
            Ok(_) => Vec::new(),
            Err(_) => vec!["-c", "user.name=host", "-c", "user.email=host@localhost"],
        }
    }

    /// Whether the repository has a local branch of this name.
    pub fn has_branch(&self, branch: &str) -> bool {
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
        let mut args = Repo::identity(dir);
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

/// Where the branches of a queue without an id went (`host/task-ID`): every such queue shared it.
pub const LEGACY_NAMESPACE: &str = "host";

/// Where the branches of the queue `queue_id` go: `PREFIX/QUEUE-ID`.
pub fn namespace(prefix: &str, queue_id: &str) -> String {
    format!("{prefix}/{queue_id}")
}

/// The branch of task `id` of the queue whose branches go in `namespace`.
pub fn branch_of(namespace: &str, id: &str) -> String {
    format!("{namespace}/task-{id}")
}

/// Whether `branch` is one this crate makes for task `id` of the queue `queue_id` (under any
/// prefix), or of a queue that had no id yet: its branch, or an earlier attempt's.
pub fn is_branch_of(branch: &str, queue_id: Option<&str>, id: &str) -> bool {
    let own = match branch.rsplit_once("-attempt-") {
        Some((own, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => own,
        _ => branch,
    };
    let Some(space) = own.strip_suffix(&format!("/task-{id}")) else {
        return false;
    };
    space == LEGACY_NAMESPACE
        || queue_id.is_some_and(|q| {
            space
                .strip_suffix(q)
                .is_some_and(|prefix| prefix.len() > 1 && prefix.ends_with('/'))
        })
}

/// The message of a commit made for task `id` about `what` (its description, else its type).
pub fn commit_message(id: &str, what: &str) -> String {
    format!("host task {id}: {what}")
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
    /// What preparing the worktree left in it (see [`Checkout::note_prepared`]): each path
    /// with the blob it held then (`None`: deleted), not committed unless changed again.
    prepared: Vec<(String, Option<String>)>,
    /// Whether [`Checkout::finish`] leaves the worktree in place.
    keep: bool,
    /// Git pathspec globs of files never committed: what a CLI writes for itself (aider's
    /// `.aider*` history), see [`Checkout::leave_out`].
    left_out: Vec<String>,
}

/// Makes a fresh worktree for an attempt on `branch` (see [`branch_of`]), in a folder named
/// after it. A branch of that name left by an earlier attempt is kept, renamed
/// `BRANCH-attempt-N`: the name is the queue's own, so the branch is this task's.
pub fn start(repo: &Repo, branch: &str, base: &Base) -> Result<Checkout, Error> {
    let branch = branch.to_string();
    if repo.has_branch(&branch) {
        let kept = (1..)
            .map(|n| format!("{branch}-attempt-{n}"))
            .find(|name| !repo.has_branch(name))
            .expect("a free name");
        repo.git(&["branch", "-m", &branch, &kept])?;
    }
    // A prerequisite's branch that was merged (its work is in HEAD now) or discarded is gone.
    let after: Vec<&String> = base.after.iter().filter(|b| repo.has_branch(b)).collect();
    let (start, base_branch) = match (&base.named, after.first()) {
        (Some(named), _) => (named.clone(), repo.has_branch(named).then(|| named.clone())),
        (None, Some(first)) => (first.to_string(), repo.current_branch()),
        (None, None) => ("HEAD".to_string(), repo.current_branch()),
    };
    // Named after the branch, so that another queue's task of the same id has another folder.
    let path = repo.worktrees_home().join(branch.replace('/', "-"));
    if path.exists() {
        // Left by a killed worker of this queue (the name is the queue's own): nothing in it
        // is anyone's work any more.
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
        prepared: Vec::new(),
        keep: false,
        left_out: Vec::new(),
    };
    for other in after.iter().skip(1) {
        if let Err(err) = checkout.merge_in(other) {
            checkout.abandon();
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
        let mut args = Repo::identity(&self.path);
        args.extend(["merge", "--no-edit", "--quiet", branch]);
        let what = format!("merging the branches of the tasks it comes after ({branch})");
        attempt(&self.path, &args, &what, &["merge", "--abort"])
    }

    /// Copies the repository's ignored files that `patterns` (gitignore syntax: `.env`,
    /// `config/*.local`) match into the worktree, as Claude Code's `.worktreeinclude` does;
    /// the patterns of the repository's own `.worktreeinclude` are added. A folder ignored as a
    /// whole (`secrets/`) is looked into for the files the patterns name (`secrets/*.local`).
    /// Returns what it copied, relative to the top, and which of `patterns` matched nothing.
    pub fn copy_included(&self, patterns: &[String]) -> Result<Included, Error> {
        let mut builder = ignore::gitignore::GitignoreBuilder::new(&self.repo.root);
        let include = self.repo.root.join(".worktreeinclude");
        if include.is_file()
            && let Some(err) = builder.add(&include)
        {
            return Err(Error::Git(format!("{}: {err}", include.display())));
        }
        let mut each = Vec::with_capacity(patterns.len());
        for pattern in patterns {
            let bad =
                |err: ignore::Error| Error::Git(format!("include pattern {pattern:?}: {err}"));
            builder.add_line(None, pattern).map_err(bad)?;
            let mut one = ignore::gitignore::GitignoreBuilder::new(&self.repo.root);
            one.add_line(None, pattern).map_err(bad)?;
            each.push((pattern, one.build().map_err(bad)?, false));
        }
        let matcher = builder
            .build()
            .map_err(|err| Error::Git(format!("include patterns: {err}")))?;
        let mut included = Included::default();
        if matcher.is_empty() {
            return Ok(included);
        }
        let listed = self.repo.git(&[
            "ls-files",
            "-z",
            "--others",
            "--ignored",
            "--exclude-standard",
            "--directory",
        ])?;
        // Each listed path, and what is in a listed folder that does not match as a whole.
        let mut pending: Vec<(String, bool)> = listed
            .split('\0')
            .filter(|r| !r.is_empty())
            .map(|rel| (rel.trim_end_matches('/').to_string(), rel.ends_with('/')))
            .collect();
        while let Some((rel, is_dir)) = pending.pop() {
            if !matcher
                .matched_path_or_any_parents(&rel, is_dir)
                .is_ignore()
            {
                if is_dir {
                    pending.extend(folder_entries(&self.repo.root, &rel));
                }
                continue;
            }
            copy_all(&self.repo.root.join(&rel), &self.path.join(&rel))
                .map_err(|err| Error::Git(format!("copying {rel} into the worktree: {err}")))?;
            for (_, one, hit) in &mut each {
                *hit |= one.matched_path_or_any_parents(&rel, is_dir).is_ignore();
            }
            included.copied.push(rel);
        }
        included.copied.sort();
        included.unmatched = each
            .into_iter()
            .filter(|(_, _, hit)| !hit)
            .map(|(pattern, _, _)| pattern.clone())
            .collect();
        Ok(included)
    }

    /// The worktree's top folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Notes what preparing the worktree (a role's `setup`, included files) left in it, created,
    /// modified or deleted: [`Checkout::finish`] commits none of it unless it was changed again
    /// since (by the agent). Setup's outputs and bookkeeping are not the task's change.
    pub fn note_prepared(&mut self) -> Result<(), Error> {
        let paths = changed_paths(&self.path)?;
        self.prepared = paths
            .iter()
            .cloned()
            .zip(blobs(&self.path, &paths)?)
            .collect();
        Ok(())
    }

    /// Makes [`Checkout::finish`] leave the worktree in place (its folder is in the record).
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// Never commits files matching these globs (`.aider*`): what the program run in the
    /// worktree writes for itself rather than as its change. They go with the worktree.
    pub fn leave_out(&mut self, globs: &[&str]) {
        self.left_out
            .extend(globs.iter().map(|g| format!(":(glob){g}")));
    }

    /// Commits what the agent left uncommitted (with `message`), describes the branch and
    /// removes the worktree (unless [`Checkout::keep`] was called); the branch stays. When that fails (a lock a killed agent left, a
    /// hook), the worktree is kept, so nothing the agent did is lost, and the error names it.
    pub fn finish(self, message: &str) -> Result<Record, Error> {
        match self.commit_and_describe(message) {
            Ok(mut record) => {
                if self.keep {
                    record.folder = Some(self.path.clone());
                } else {
                    self.remove();
                }
                Ok(record)
            }
            Err(err) => Err(Error::Git(format!(
                "{err}; the agent's work is left in {} (on {})",
                self.path.display(),
                self.branch
            ))),
        }
    }

    /// Removes the worktree and its branch: for an attempt that never got to run its agent.
    pub fn abandon(self) {
        self.remove();
        let _ = self.repo.git(&["branch", "-D", &self.branch]);
    }

    fn commit_and_describe(&self, message: &str) -> Result<Record, Error> {
        let dirty = !git_in(&self.path, &["status", "--porcelain"])?
            .trim()
            .is_empty();
        if dirty {
            git_in(&self.path, &["add", "--all"])?;
            if !self.left_out.is_empty() {
                let mut reset = vec!["reset", "--quiet", "--"];
                reset.extend(self.left_out.iter().map(String::as_str));
                git_in(&self.path, &reset)?;
            }
            // What preparing the worktree left, and the agent did not change since, stays out.
            if !self.prepared.is_empty() {
                let paths: Vec<String> = self.prepared.iter().map(|(p, _)| p.clone()).collect();
                let now = blobs(&self.path, &paths)?;
                let untouched: Vec<&str> = self
                    .prepared
                    .iter()
                    .zip(&now)
                    .filter(|((_, then), now)| then == *now)
                    .map(|((path, _), _)| path.as_str())
                    .collect();
                if !untouched.is_empty() {
                    let list = untouched
                        .iter()
                        .map(|p| format!(":(literal){p}"))
                        .collect::<Vec<_>>()
                        .join("\0");
                    git_with_input(
                        &self.path,
                        &[
                            "reset",
                            "--quiet",
                            "--pathspec-from-file=-",
                            "--pathspec-file-nul",
                        ],
                        &list,
                    )?;
                }
            }
            if git_in(&self.path, &["diff", "--cached", "--quiet"]).is_err() {
                self.repo.commit(&self.path, message)?;
            }
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
        let listed = self
            .repo
            .git(&["diff", "-z", "--name-status", "--no-renames", &range])?;
        let fields: Vec<&str> = listed.split('\0').filter(|f| !f.is_empty()).collect();
        let changed_files = fields
            .chunks(2)
            .filter_map(|pair| Some((*pair.first()?, *pair.get(1)?)))
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
            earlier_attempts: self.earlier_attempts()?,
            commits,
            diffstat,
            changed_files,
            folder: None,
        })
    }

    /// The branches earlier attempts on this branch left (renamed `BRANCH-attempt-N`).
    fn earlier_attempts(&self) -> Result<Vec<String>, Error> {
        let pattern = format!("refs/heads/{}-attempt-*", self.branch);
        Ok(self
            .repo
            .git(&["for-each-ref", "--format=%(refname:short)", &pattern])?
            .lines()
            .filter(|b| {
                b.strip_prefix(&format!("{}-attempt-", self.branch))
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
            .map(str::to_string)
            .collect())
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
    /// The branches earlier attempts at the task left: what
    /// [`discard_earlier_attempts`] deletes, and nothing else.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier_attempts: Vec<String>,
    /// Its commits, oldest first.
    pub commits: Vec<Commit>,
    /// `git diff --shortstat` from the base ("2 files changed, 10 insertions(+)"), or empty.
    pub diffstat: String,
    /// The files it changed from the base.
    pub changed_files: Vec<ChangedFile>,
    /// The worktree's folder, when it was kept after the attempt (a role's `keep_worktree`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folder: Option<PathBuf>,
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

/// The change a task's branch made up to commit `head`, as a patch from the point it left its
/// base: for a branch merged and deleted since, from the commits its record names.
pub fn diff_to(record: &Record, head: &str) -> Result<String, Error> {
    let repo = Repo {
        root: record.repository.clone(),
    };
    repo.git(&["diff", &format!("{}...{head}", record.base)])
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
    let current = repo.current_branch();
    if current.as_deref() != Some(base) {
        return Err(Error::Git(format!(
            "{} merges into {base}, but {} has {} checked out; check out {base} first",
            record.branch,
            repo.root.display(),
            current.unwrap_or_else(|| "a detached HEAD".into())
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
    // A worktree kept on the branch would stop its deletion after the merge: freed first.
    release(&repo, branch)?;
    let what = format!("{branch} into {base}");
    let mut identity = Repo::identity(&repo.root);
    match style {
        MergeStyle::Merge => {
            identity.extend(["merge", "--no-ff", "--quiet", "-m", message, branch]);
            attempt(&repo.root, &identity, &what, &["merge", "--abort"])?;
        }
        MergeStyle::Squash => {
            identity.extend(["merge", "--squash", "--quiet", branch]);
            attempt(&repo.root, &identity, &what, &["reset", "--merge"])?;
            // A branch whose change is in the base already leaves nothing to commit.
            if repo.git(&["diff", "--cached", "--quiet"]).is_err() {
                repo.commit(&repo.root, message)?;
            }
        }
        MergeStyle::Rebase => {
            // Replayed in a worktree of its own, so the user's checkout sees only the result;
            // the branch is moved only when the fast-forward is sure to follow.
            let scratch = repo.worktrees_home().join(format!(
                "rebase-{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos())
            ));
            let scratch_arg = scratch.to_string_lossy().into_owned();
            let outcome = (|| {
                repo.git(&[
                    "worktree",
                    "add",
                    "--quiet",
                    "--detach",
                    &scratch_arg,
                    branch,
                ])?;
                identity.extend(["rebase", "--quiet", base]);
                attempt(&scratch, &identity, &what, &["rebase", "--abort"])?;
                git_in(&scratch, &["rev-parse", "HEAD"]).map(|h| h.trim().to_string())
            })();
            let _ = repo.git(&["worktree", "remove", "--force", &scratch_arg]);
            let _ = repo.git(&["worktree", "prune"]);
            let rebased = outcome?;
            repo.git(&["merge", "--ff-only", "--quiet", &rebased])?;
        }
    }
    repo.git(&["branch", "-D", branch])?;
    Ok(base.to_string())
}

/// Deletes a task's branch, and the worktree kept on it when nothing in it is uncommitted.
pub fn discard(record: &Record) -> Result<(), Error> {
    delete_branch(&repo_of(record)?, &record.branch).map(drop)
}

/// Deletes the branches earlier attempts at the task left (`BRANCH-attempt-N`), kept for
/// inspection while the task was open, as its record lists them; says which. For when its
/// change was merged or discarded. A branch the record does not list is never touched: a
/// record made before records listed them deletes nothing.
pub fn discard_earlier_attempts(record: &Record) -> Result<Vec<String>, Error> {
    let repo = Repo {
        root: record.repository.clone(),
    };
    let earlier: Vec<String> = record
        .earlier_attempts
        .iter()
        .filter(|b| **b != record.branch && repo.has_branch(b))
        .cloned()
        .collect();
    for branch in &earlier {
        repo.git(&["branch", "-D", branch])?;
    }
    Ok(earlier)
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

/// The paths `git status` lists as created, modified or deleted in the worktree at `dir`
/// (each file of a new folder, not the folder), relative to its top.
fn changed_paths(dir: &Path) -> Result<Vec<String>, Error> {
    let listed = git_in(
        dir,
        &[
            "status",
            "--porcelain",
            "-z",
            "--no-renames",
            "--untracked-files=all",
        ],
    )?;
    Ok(listed
        .split('\0')
        .filter_map(|entry| entry.get(3..))
        .filter(|path| !path.is_empty())
        .map(String::from)
        .collect())
}

/// What each of `paths` (relative to `dir`) holds: its git blob hash, `None` when it is gone,
/// and `"folder"` for a folder (a repository inside the worktree).
fn blobs(dir: &Path, paths: &[String]) -> Result<Vec<Option<String>>, Error> {
    let kinds: Vec<Option<bool>> = paths
        .iter()
        .map(|p| {
            dir.join(p)
                .symlink_metadata()
                .ok()
                .map(|m| m.is_file() || m.file_type().is_symlink())
        })
        .collect();
    let files: Vec<&str> = paths
        .iter()
        .zip(&kinds)
        .filter(|(_, kind)| **kind == Some(true))
        .map(|(p, _)| p.as_str())
        .collect();
    let hashed = if files.is_empty() {
        String::new()
    } else {
        git_with_input(
            dir,
            &["hash-object", "--no-filters", "--stdin-paths"],
            &(files.join("\n") + "\n"),
        )?
    };
    let mut hashes = hashed.lines().map(str::to_string);
    Ok(kinds
        .iter()
        .map(|kind| match kind {
            Some(true) => hashes.next(),
            Some(false) => Some("folder".to_string()),
            None => None,
        })
        .collect())
}

/// The folder where the worktree of `branch` of `repo` is made: outside the repository, named
/// after the branch.
pub fn worktree_folder(repo: &Repo, branch: &str) -> PathBuf {
    repo.worktrees_home().join(branch.replace('/', "-"))
}

/// Makes a worktree again on an existing task branch, in its usual folder (see
/// [`worktree_folder`]); returns the folder. Refuses when the branch is gone or the folder
/// exists already.
pub fn open(repo: &Repo, branch: &str) -> Result<PathBuf, Error> {
    if !repo.has_branch(branch) {
        return Err(Error::Git(format!(
            "{} has no branch {branch} (merged or discarded already?)",
            repo.root.display()
        )));
    }
    let path = worktree_folder(repo, branch);
    if path.exists() {
        return Err(Error::Git(format!(
            "{} exists already: the worktree of {branch} is open there (remove the folder first \
             to make it again)",
            path.display()
        )));
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|err| Error::Git(format!("{}: {err}", parent.display())))?;
    }
    let _ = repo.git(&["worktree", "prune"]);
    repo.git(&[
        "worktree",
        "add",
        "--quiet",
        &path.to_string_lossy(),
        branch,
    ])?;
    Ok(path)
}

/// Where each branch of `repo` is checked out: its worktrees' folders, by branch name.
fn checked_out(repo: &Repo) -> Result<Vec<(String, PathBuf)>, Error> {
    Ok(worktrees_of(repo)?
        .into_iter()
        .filter_map(|(path, branch)| Some((branch?, path)))
        .collect())
}

/// Every worktree of the repository, with the branch checked out there (`None`: detached).
fn worktrees_of(repo: &Repo) -> Result<Vec<(PathBuf, Option<String>)>, Error> {
    let listed = repo.git(&["worktree", "list", "--porcelain"])?;
    let mut found: Vec<(PathBuf, Option<String>)> = Vec::new();
    for line in listed.lines() {
        if let Some(p) = line.strip_prefix("worktree ") {
            found.push((PathBuf::from(p), None));
        } else if let Some(b) = line.strip_prefix("branch refs/heads/")
            && let Some(last) = found.last_mut()
        {
            last.1 = Some(b.to_string());
        }
    }
    Ok(found)
}

/// Frees a task's branch of the worktree it is checked out in, so that it can be merged,
/// renamed or deleted: a worktree in the branch's own folder (kept after its attempt, or made
/// again by `open`) is removed when no tracked file in it has uncommitted changes; one with
/// such changes, or any other checkout of the branch (the user's), is an error naming it. A leftover folder
/// git no longer knows as a worktree is removed. Says which folder it removed.
pub fn release(repo: &Repo, branch: &str) -> Result<Option<PathBuf>, Error> {
    let own = worktree_folder(repo, branch);
    let mut removed = None;
    for (checked, path) in checked_out(repo)? {
        if checked != branch {
            continue;
        }
        if path != own || !path.exists() {
            if path.exists() {
                return Err(Error::Git(format!(
                    "{branch} is checked out in {}; check out another branch there first",
                    path.display()
                )));
            }
            continue;
        }
        // Untracked files there (setup's outputs, builds) go with it; edits of tracked files
        // are someone's work.
        let edited = git_in(&path, &["status", "--porcelain", "--untracked-files=no"])?;
        if !edited.trim().is_empty() {
            return Err(Error::Git(format!(
                "{branch} is checked out in {}, which has uncommitted changes; commit them or \
                 remove the folder first",
                path.display()
            )));
        }
        repo.git(&["worktree", "remove", "--force", &path.to_string_lossy()])?;
        removed = Some(path);
    }
    if own.exists() && removed.is_none() {
        // Someone switched the folder to another branch, or detached it: their work.
        if worktrees_of(repo)?.iter().any(|(path, _)| *path == own) {
            return Err(Error::Git(format!(
                "{} is a worktree on another branch now; remove it yourself if it can go",
                own.display()
            )));
        }
        // Not a worktree of this repository any more: a leftover of a killed attempt.
        std::fs::remove_dir_all(&own)
            .map_err(|err| Error::Git(format!("{}: {err}", own.display())))?;
        removed = Some(own);
    }
    let _ = repo.git(&["worktree", "prune"]);
    Ok(removed)
}

/// A branch a queue made in a repository (see [`queue_branches`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueBranch {
    /// Its name.
    pub branch: String,
    /// The task it was made for.
    pub task: String,
    /// The attempt it kept, for an earlier attempt's branch (`-attempt-N`).
    pub attempt: Option<u32>,
    /// When its last commit was made, in seconds since 1970.
    pub committed_at: i64,
}

/// The task (and earlier attempt) a branch was made for, when it is a branch of the queue
/// `queue_id`: `PREFIX/QUEUE-ID/task-ID`, or that with `-attempt-N`.
pub fn task_of(branch: &str, queue_id: &str) -> Option<(String, Option<u32>)> {
    let (own, attempt) = match branch.rsplit_once("-attempt-") {
        Some((own, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
            (own, Some(n.parse().ok()?))
        }
        _ => (branch, None),
    };
    let (space, id) = own.rsplit_once("/task-")?;
    let prefix = space.strip_suffix(queue_id)?.strip_suffix('/')?;
    let good = !prefix.is_empty() && !id.is_empty() && !id.contains('/');
    good.then(|| (id.to_string(), attempt))
}

/// The branches of `repo` that the queue `queue_id` made (under any prefix), by name.
pub fn queue_branches(repo: &Repo, queue_id: &str) -> Result<Vec<QueueBranch>, Error> {
    let listed = repo.git(&[
        "for-each-ref",
        "--format=%(refname:short)%00%(committerdate:unix)",
        "refs/heads/",
    ])?;
    let mut found: Vec<QueueBranch> = listed
        .lines()
        .filter_map(|line| {
            let (branch, at) = line.split_once('\0')?;
            let (task, attempt) = task_of(branch, queue_id)?;
            Some(QueueBranch {
                branch: branch.to_string(),
                task,
                attempt,
                committed_at: at.trim().parse().unwrap_or(0),
            })
        })
        .collect();
    found.sort_by(|a, b| a.branch.cmp(&b.branch));
    Ok(found)
}

/// Deletes a branch of `repo` after [`release`]-ing it; says which worktree folder went too.
pub fn delete_branch(repo: &Repo, branch: &str) -> Result<Option<PathBuf>, Error> {
    let removed = release(repo, branch)?;
    repo.git(&["branch", "-D", branch])?;
    Ok(removed)
}

/// The files git left unmerged in `dir`.
fn conflicted(dir: &Path) -> Vec<String> {
    git_in(dir, &["diff", "-z", "--name-only", "--diff-filter=U"])
        .map(|out| {
            out.split('\0')
                .filter(|f| !f.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `git ARGS` in `dir`, which may stop on conflicts: then `abort` undoes it and the error
/// names the files; any other failure is git's own error (after `abort` all the same).
fn attempt(dir: &Path, args: &[&str], what: &str, abort: &[&str]) -> Result<(), Error> {
    let Err(err) = git_in(dir, args) else {
        return Ok(());
    };
    let files = conflicted(dir);
    let _ = git_in(dir, abort);
    if files.is_empty() {
        return Err(err);
    }
    Err(Error::Conflict {
        what: what.to_string(),
        files,
    })
}

fn git_in(dir: &Path, args: &[&str]) -> Result<String, Error> {
    // Git reads every worktree's record while it adds or lists one, and fails on a record
    // another slot or worker is writing at that moment ("failed to read
    // .git/worktrees/NAME/commondir"): worktree commands of one repository take turns.
    let _turn = (args.first() == Some(&"worktree"))
        .then(|| worktree_turn(dir))
        .flatten();
    git_with(dir, args, None)
}

/// An exclusive lock on the repository's `.git/host-worktrees.lock`, held until dropped;
/// `None` where there is no `.git` folder to hold it (a worktree's own `.git` is a file).
fn worktree_turn(dir: &Path) -> Option<std::fs::File> {
    let git = dir.join(".git");
    if !git.is_dir() {
        return None;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(git.join("host-worktrees.lock"))
        .ok()?;
    file.lock().ok()?;
    Some(file)
}

/// [`git_in`], with `input` on git's standard input.
fn git_with_input(dir: &Path, args: &[&str], input: &str) -> Result<String, Error> {
    git_with(dir, args, Some(input))
}

fn git_with(dir: &Path, args: &[&str], input: Option<&str>) -> Result<String, Error> {
    use std::io::Write as _;
    let mut child = Command::new("git")
        .arg("-C")
        .arg(dir)
        // File names as they are, not quoted and escaped.
        .args(["-c", "core.quotePath=false"])
        .args(args)
        .stdin(if input.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|err| Error::Git(format!("cannot run git: {err}")))?;
    // Written from a thread while the output is read: git answers as it reads (hash-object
    // a line per path), and both pipes full would wait for each other for ever.
    let output = std::thread::scope(|scope| {
        if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
            // A git that stopped reading has failed, and says why below.
            scope.spawn(move || {
                let _ = stdin.write_all(text.as_bytes());
            });
        }
        child.wait_with_output()
    })
    .map_err(|err| Error::Git(format!("cannot run git: {err}")))?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    // Most complaints are on stderr; some ("nothing to commit") only on stdout.
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    // All of stderr on one line: the reason is often above git's last words ("untracked
    // working tree files would be overwritten: new.txt" above "Merge ... failed").
    let whole = |text: &str| {
        let words: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        (!words.is_empty()).then(|| words.join(" "))
    };
    let last = |text: &str| {
        text.lines()
            .rev()
            .find(|line| !line.trim().is_empty())
            .map(|line| line.trim().to_string())
    };
    let said = whole(&stderr)
        .or_else(|| last(&stdout))
        .unwrap_or_else(|| "(it said nothing)".into());
    Err(Error::Git(format!(
        "git {} in {}: {said}",
        args.iter()
            .find(|a| !a.starts_with('-') && !a.contains('='))
            .unwrap_or(&""),
        dir.display()
    )))
}

/// What [`Checkout::copy_included`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Included {
    /// The files and folders copied, relative to the top of the repository.
    pub copied: Vec<String>,
    /// The patterns given that matched nothing to copy.
    pub unmatched: Vec<String>,
}

/// The entries of folder `rel` of `root`, relative to `root`, each with whether it is a
/// folder (a link is not one: it is not followed). An unreadable folder has none.
fn folder_entries(root: &Path, rel: &str) -> Vec<(String, bool)> {
    let Ok(entries) = std::fs::read_dir(root.join(rel)) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| {
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            let name = entry.file_name().to_string_lossy().into_owned();
            (format!("{rel}/{name}"), is_dir)
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_answering_as_it_reads_a_long_input_does_not_wait_for_ever() {
        // hash-object writes a line per path it reads: with both pipes full, writing all of
        // the input before reading the output would never end.
        let dir = tempfile::tempdir().unwrap();
        let name = "f".repeat(100);
        std::fs::write(dir.path().join(&name), "x").unwrap();
        // Half a megabyte in, 200 KiB out: each more than a pipe holds.
        let paths = format!("{name}\n").repeat(5_000);
        let out = git_with(dir.path(), &["hash-object", "--stdin-paths"], Some(&paths));
        assert_eq!(out.unwrap().lines().count(), 5_000);
    }

    #[test]
    fn a_branch_is_a_tasks_only_in_its_queues_namespace_or_the_old_shared_one() {
        let ours = branch_of(&namespace("agents/work", "3f9a2c1b"), "7");
        assert_eq!(ours, "agents/work/3f9a2c1b/task-7");
        assert!(is_branch_of(&ours, Some("3f9a2c1b"), "7"));
        assert!(is_branch_of(
            &format!("{ours}-attempt-2"),
            Some("3f9a2c1b"),
            "7"
        ));
        assert!(!is_branch_of(&ours, Some("3f9a2c1b"), "71"));
        // Another queue's task of the same id is not this one's.
        assert!(!is_branch_of("host/00000000/task-7", Some("3f9a2c1b"), "7"));
        assert!(!is_branch_of(
            "host/x3f9a2c1b/task-7",
            Some("3f9a2c1b"),
            "7"
        ));
        assert!(!is_branch_of("3f9a2c1b/task-7", Some("3f9a2c1b"), "7"));
        // What a queue recorded before queues had ids is used as recorded.
        assert!(is_branch_of("host/task-7", None, "7"));
        assert!(is_branch_of("host/task-7", Some("3f9a2c1b"), "7"));
        assert!(!is_branch_of("main", Some("3f9a2c1b"), "7"));
        assert!(!is_branch_of("host/task-7-attempt-", None, "7"));
    }

    #[test]
    fn a_queues_branches_are_told_by_its_id_under_any_prefix() {
        let q = "3f9a2c1b";
        assert_eq!(task_of("host/3f9a2c1b/task-7", q), Some(("7".into(), None)));
        assert_eq!(
            task_of("agents/work/3f9a2c1b/task-12-attempt-2", q),
            Some(("12".into(), Some(2)))
        );
        for other in [
            "host/task-7",
            "host/00000000/task-7",
            "3f9a2c1b/task-7",
            "host/x3f9a2c1b/task-7",
            "host/3f9a2c1b/task-",
            "host/3f9a2c1b/task-7/more",
            "main",
        ] {
            assert_eq!(task_of(other, q), None, "{other}");
        }
    }
}
