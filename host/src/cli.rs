//! Every flag of `host`, in one place, and their resolution into [`Settings`] before any work
//! starts (paths made absolute, defaults applied).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use queue::QueueAddress;

/// The command line as typed.
#[derive(Debug, Parser)]
#[command(
    name = "host",
    version,
    about = "A shared task queue for AI coding assistants and programs, with role handlers loaded from plugins.",
    long_about = None,
    arg_required_else_help = true,
    after_help = "Run a worker with `host --role ROLE`; orchestrate with the commands above."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(flatten)]
    pub worker: WorkerArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

impl Cli {
    /// Parses the process's arguments, exiting with a usage error (status 2) when they do not
    /// fit. Global options may come before or after the command; worker options only without
    /// one.
    pub fn parse_checked() -> Cli {
        let mut command = <Cli as clap::CommandFactory>::command();
        let matches = command.get_matches_mut();
        if let Some((name, _)) = matches.subcommand() {
            let worker_ids = WorkerArgs::augment_args(clap::Command::new("worker"));
            let given = worker_ids.get_arguments().find(|arg| {
                matches.value_source(arg.get_id().as_str())
                    == Some(clap::parser::ValueSource::CommandLine)
            });
            if let Some(arg) = given {
                let flag = arg.get_long().unwrap_or_else(|| arg.get_id().as_str());
                command
                    .error(
                        clap::error::ErrorKind::ArgumentConflict,
                        format!("--{flag} runs a worker; it cannot be used with `host {name}`"),
                    )
                    .exit();
            }
        }
        <Cli as clap::FromArgMatches>::from_arg_matches(&matches).unwrap_or_else(|err| err.exit())
    }
}

/// A command line that clap accepted but whose values do not make sense (a dashboard token of
/// spaces): `main` prints it in one line and exits 2, as for clap's own usage errors. Its text
/// never repeats the value, which may be a secret.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Options valid with every command; each command's help lists its own first.
#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// The coordination folder, or a postgres:// URL (a queue shared by many machines)
    /// [default: the nearest copilot-orchestration queue in this folder or one above, as git
    /// finds its repository, not above the folders HOST_QUEUE_CEILING lists; `host init` makes
    /// ./copilot-orchestration].
    #[arg(
        long,
        global = true,
        env = "HOST_QUEUE_DIR",
        value_name = "DIR|URL",
        hide_env_values = true
    )]
    pub queue: Option<String>,

    /// Where plugins are looked for (repeatable; the environment variable is colon-separated,
    /// semicolon-separated on Windows).
    /// Default: <queue>/plugins, then the folder holding the host executable.
    #[arg(
        long = "plugin-dir",
        global = true,
        env = "HOST_PLUGIN_PATH",
        value_delimiter = PATH_LIST_SEPARATOR,
        value_name = "DIR"
    )]
    pub plugin_dirs: Vec<PathBuf>,

    /// Say more: full plugin load errors.
    #[arg(short, long, global = true)]
    pub verbose: bool,

    /// When to colour human output: auto (on a terminal, unless NO_COLOR is set), always or
    /// never.
    #[arg(long, global = true, value_name = "WHEN", default_value = "auto")]
    pub color: clap::ColorChoice,
}

/// Options of worker mode (`host --role ROLE`).
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Run a worker for this role until Ctrl+C.
    #[arg(long, value_name = "ROLE")]
    pub role: Option<String>,

    /// The worker's name in `status` and on tasks [default: ROLE-HOSTNAME-PID].
    #[arg(long, requires = "role")]
    pub name: Option<String>,

    /// How many tasks the worker runs at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: u16,

    /// Exit 0 once no task of the role's types is pending or running.
    #[arg(long, requires = "role")]
    pub drain: bool,

    /// How long the first Ctrl+C waits for running tasks before returning them to the queue.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub grace: Duration,

    /// How often an idle worker looks for work without being told of it: new tasks wake it at
    /// once through file-system notifications; polling finds retries that became due, expired
    /// leases, and tasks added from another machine on a network file system.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub poll: Duration,

    /// How long a claimed task stays this worker's without a renewal; if the worker dies, its
    /// task returns to the queue this long after the last renewal.
    #[arg(long, default_value = "30s", value_parser = parse_lease, value_name = "DURATION")]
    pub lease: Duration,

    /// The delay before the first retry of a task that failed retryably; doubled for each
    /// further retry, with jitter.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub backoff: Duration,

    /// The time limit of tasks that do not set their own (`host add --timeout`).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub timeout: Option<Duration>,
}

fn parse_lease(text: &str) -> Result<Duration, String> {
    let lease = humantime::parse_duration(text).map_err(|err| err.to_string())?;
    if lease < Duration::from_millis(300) {
        return Err("a lease must be at least 300ms (it is renewed every third of it)".into());
    }
    Ok(lease)
}

/// The orchestrator's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the coordination folder (idempotent), or change its durability setting.
    Init {
        /// `durable` (default): every change is fsynced before a command returns. `relaxed`:
        /// no fsync; much faster, and a crashed process still loses nothing, but a power loss
        /// can lose the last seconds of changes. For queues whose tasks can be recreated.
        #[arg(long, value_enum, value_name = "SETTING")]
        durability: Option<DurabilityArg>,
    },
    /// Add a task (prints its id) or a file of tasks (prints one id per line).
    Add(AddArgs),
    /// Counts per state, and what each worker is doing.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// A live dashboard that exits when no task is pending, blocked or running (q quits).
    Watch {
        /// Time between refreshes.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration, value_name = "DURATION")]
        interval: Duration,
        /// Keep watching when the queue is empty (quit with q).
        #[arg(long)]
        follow: bool,
    },
    /// Finished tasks with outcome, worker and duration.
    Results(ResultsArgs),
    /// Per role, type and worker: counts, throughput, run and wait times (p50/p95).
    Stats {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The unfinished tasks (waiting for review, running, pending, blocked) in the order they
    /// would be claimed, with their priority, age, and what each waits for or who holds it.
    #[command(visible_alias = "tasks")]
    List(ListArgs),
    /// Wait until tasks are finished: the ids given, else those of --type, else every
    /// unfinished one. A task waiting for review (or behind one) ends the wait as not
    /// completed. Exits 1, naming them, when any did not complete or time ran out.
    Wait {
        /// The task ids.
        ids: Vec<String>,
        /// The unfinished tasks of this type.
        #[arg(long = "type", value_name = "TYPE", conflicts_with = "ids")]
        task_type: Option<String>,
        /// Give up after this long.
        #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
        timeout: Option<Duration>,
    },
    /// Every worker record (workers and self-serve holders), alive or dead. A worker that
    /// starts drops the records of workers dead for more than a day.
    Workers {
        /// First remove the records of every dead worker.
        #[arg(long)]
        prune: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// One task, whole.
    Show {
        /// The task id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Every library on the plugin path, with its roles, or why it was refused.
    Plugins {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a task: a pending one never starts, a running one is told to stop, one waiting for
    /// review is dropped.
    Cancel {
        /// The task ids.
        #[arg(required_unless_present = "task_type")]
        ids: Vec<String>,
        /// Every unfinished task of this type.
        #[arg(long = "type", value_name = "TYPE", conflicts_with = "ids")]
        task_type: Option<String>,
    },
    /// Put failed or cancelled tasks back in the queue, with at least one more attempt each.
    Retry {
        /// The task ids.
        #[arg(required_unless_present = "failed")]
        ids: Vec<String>,
        /// Every failed task (with --type, of that type).
        #[arg(long, conflicts_with = "ids")]
        failed: bool,
        /// With --failed: only tasks of this type.
        #[arg(long = "type", value_name = "TYPE", requires = "failed")]
        task_type: Option<String>,
    },
    /// Change a task that has not started (pending or blocked).
    #[command(group = clap::ArgGroup::new("change").required(true).multiple(true))]
    Edit {
        /// The task id.
        id: String,
        /// A new priority (lower is claimed first).
        #[arg(long, value_name = "N", group = "change")]
        priority: Option<u32>,
        /// A new description.
        #[arg(long, value_name = "TEXT", group = "change")]
        description: Option<String>,
        /// A new payload, as JSON.
        #[arg(long, value_name = "JSON", group = "change")]
        payload: Option<String>,
        /// A new time limit of one attempt, e.g. 90s, 10m.
        #[arg(long, value_parser = time_limit, value_name = "DURATION", group = "change")]
        timeout: Option<Duration>,
    },
    /// Remove finished tasks, with their logs: all the ids given, or none.
    Rm {
        /// The task ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// The change an agent task made on its branch (a worktree task), as a patch.
    Diff {
        /// The task id.
        id: String,
    },
    /// Bring a worktree task's branch into its base branch, then delete the branch; a conflict
    /// changes nothing and names the files.
    Merge {
        /// The task id.
        id: String,
        /// One commit of the whole change instead of a merge commit.
        #[arg(long, conflicts_with = "rebase")]
        squash: bool,
        /// Replay the branch's commits on the base, then fast-forward.
        #[arg(long)]
        rebase: bool,
    },
    /// Delete worktree tasks' branches (each id is checked first: one that cannot be
    /// discarded discards nothing).
    Discard {
        /// The task ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// The branches this queue made for its tasks (in the repository of the current folder,
    /// those of --repo, and those its tasks recorded), with each task's state; --prune deletes
    /// those nothing needs any more.
    Branches(BranchesArgs),
    /// Make a worktree again on the branch a finished task left, and print its folder.
    Open {
        /// The task id.
        id: String,
    },
    /// Push a task's branch and open a pull request with the GitHub CLI (`gh`); without `gh`,
    /// push it and print where to open one.
    Pr(PrArgs),
    /// Everything that waits for a person, oldest first: agents' questions (input), changes to
    /// review, merges that conflicted, roles out of quota; each with the command that settles
    /// it.
    Inbox {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Answer the question a running task's agent asks (its permission request, or a form):
    /// with one of the options it offered (`host inbox` lists them); the agent resumes.
    #[command(arg_required_else_help = true)]
    Answer {
        /// The task id.
        id: String,
        /// The option chosen, one of the agent's own (e.g. allow_once); may be left out with
        /// --text or --field, which answer a form with its accepting option.
        option: Option<String>,
        /// A value of the question's form (repeatable).
        #[arg(long = "field", value_name = "NAME=VALUE")]
        fields: Vec<String>,
        /// The text the question asks for (its text field).
        #[arg(long, value_name = "TEXT")]
        text: Option<String>,
    },
    /// Approve the change of tasks waiting for review: they complete, and the tasks after them
    /// may run.
    Approve {
        /// The task ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Reject the change of a task waiting for review: it runs again, and its next attempt is
    /// told the reason.
    Reject {
        /// The task id.
        id: String,
        /// What is wrong, for the next attempt.
        #[arg(long, value_name = "TEXT")]
        reason: String,
    },
    /// A task's log (its handler's log lines, an agent's output).
    Logs {
        /// The task id.
        id: String,
        /// Keep printing new lines until the task has finished.
        #[arg(long, short)]
        follow: bool,
    },
    /// For an assistant taking work itself: claim the best pending task of a role.
    Claim {
        /// The role whose task types are claimed.
        #[arg(long)]
        role: String,
        /// Who claims it, as recorded on the task [default: ROLE-HOSTNAME].
        #[arg(long)]
        name: Option<String>,
        /// How long the claim holds without a `host heartbeat`.
        #[arg(long, default_value = "30m", value_parser = humantime::parse_duration, value_name = "DURATION")]
        lease: Duration,
        /// With nothing to claim, wait up to this long for a task instead of failing at once.
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration, value_name = "DURATION")]
        wait: Duration,
        /// Print the task as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Append lines to a claimed task's log (`host logs ID`); extends its lease.
    Log {
        /// The task id.
        id: String,
        /// The lines; each argument's text is split at newlines.
        #[arg(required = true, value_name = "TEXT")]
        lines: Vec<String>,
        /// The lease token `host claim` printed.
        #[arg(long, env = "HOST_LEASE_TOKEN", hide_env_values = true)]
        token: String,
        /// How long the lease lasts from now.
        #[arg(long, default_value = "30m", value_parser = humantime::parse_duration, value_name = "DURATION")]
        lease: Duration,
    },
    /// Report progress on a claimed task, shown beside its holder in `status`; extends its lease.
    Progress {
        /// The task id.
        id: String,
        /// How far along, 0 to 100.
        #[arg(value_parser = clap::value_parser!(u8).range(0..=100))]
        percent: u8,
        /// What it is doing.
        #[arg(default_value = "")]
        message: String,
        /// The lease token `host claim` printed.
        #[arg(long, env = "HOST_LEASE_TOKEN", hide_env_values = true)]
        token: String,
        /// How long the lease lasts from now.
        #[arg(long, default_value = "30m", value_parser = humantime::parse_duration, value_name = "DURATION")]
        lease: Duration,
    },
    /// Extend the lease of a task claimed with `host claim`.
    Heartbeat {
        /// The task id.
        id: String,
        /// The lease token `host claim` printed: only the holder may extend or finish a task.
        #[arg(long, env = "HOST_LEASE_TOKEN", hide_env_values = true)]
        token: String,
        /// How long the lease lasts from now.
        #[arg(long, default_value = "30m", value_parser = humantime::parse_duration, value_name = "DURATION")]
        lease: Duration,
    },
    /// Record that a claimed task succeeded.
    Complete {
        /// The task id.
        id: String,
        /// The result, as JSON.
        #[arg(long, value_name = "JSON")]
        result: Option<String>,
        /// The lease token `host claim` printed.
        #[arg(long, env = "HOST_LEASE_TOKEN", hide_env_values = true)]
        token: String,
    },
    /// Record that a claimed task failed.
    Fail {
        /// The task id.
        id: String,
        /// Why, in one line.
        #[arg(long, value_name = "TEXT")]
        error: String,
        /// Another attempt may succeed: retry it after a backoff while attempts are left.
        #[arg(long)]
        retryable: bool,
        /// The lease token `host claim` printed.
        #[arg(long, env = "HOST_LEASE_TOKEN", hide_env_values = true)]
        token: String,
    },
    /// Put a task off until later without spending an attempt: a waiting task (pending or
    /// blocked) by anyone; a claimed one by its holder, with its lease token.
    #[command(group = clap::ArgGroup::new("when").required(true))]
    Snooze {
        /// The task id.
        id: String,
        /// For this long from now, e.g. 2h, 30m.
        #[arg(long = "for", value_name = "DURATION", value_parser = humantime::parse_duration, group = "when")]
        wait: Option<Duration>,
        /// Until this time: 2026-12-01T09:00:00Z, "2026-12-01 09:00" or 14:00 (local time;
        /// the next 14:00).
        #[arg(long, value_name = "TIME", group = "when")]
        until: Option<String>,
        /// Why, kept on the attempt (a claimed task's).
        #[arg(long, value_name = "TEXT", default_value = "snoozed")]
        reason: String,
        /// The lease token `host claim` printed, for a task claimed with it.
        #[arg(long, env = "HOST_LEASE_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Remove finished tasks (and their logs) that finished longer ago than a given age.
    Purge {
        /// The age, e.g. 30d, 12h: tasks that finished before now minus this are removed.
        #[arg(long, value_parser = humantime::parse_duration, value_name = "AGE")]
        finished_before: Duration,
        /// Only tasks that ended in this state (repeatable) [default: completed, failed and
        /// cancelled].
        #[arg(long, value_parser = ["completed", "failed", "cancelled"])]
        status: Vec<String>,
    },
    /// Print every task as JSON (an array; JSON Lines with --jsonl), oldest first.
    Export {
        /// One task per line.
        #[arg(long)]
        jsonl: bool,
    },
    /// Bring in the tasks, pauses and logs of a queue folder written by an earlier version of
    /// host (a folder of JSON files), keeping their ids and history.
    Import {
        /// The old queue folder (it may be the queue folder itself).
        dir: PathBuf,
    },
    /// Check the queue: its folder's permissions and file system, the database's integrity.
    Doctor,
    /// Upgrade the queue's schema to this host's version, saying first what it will do. On
    /// PostgreSQL only this command upgrades (the other commands refuse an older schema), so
    /// stop the workers of the older version first; the embedded store upgrades itself when
    /// opened, after copying its database to `queue.db.schema-N`.
    Migrate,
    /// Show or replace the queue's configuration (host.toml): the file in a queue folder, or
    /// kept in the database on PostgreSQL, so that every machine reads the same.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Desktop notifications and webhooks (`[notify]` in host.toml).
    #[command(subcommand)]
    Notify(NotifyCommand),
    /// Stop claims of the whole queue, of one task type, or of one task; running tasks finish.
    Pause(PauseArgs),
    /// Lift a pause made with `host pause` (the same scope).
    Resume(PauseArgs),
    /// Serve the queue to an AI assistant as a Model Context Protocol server on stdio.
    Mcp,
    /// Print a shell completion script: `host completions bash > /etc/bash_completion.d/host`,
    /// or for zsh, fish, elvish or PowerShell.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `host man > ~/.local/share/man/man1/host.1`.
    Man,
    /// Write a new plugin crate for a role, ready to build and run.
    NewRole {
        /// The role's name, also the crate's and the task type's.
        name: String,
        /// Where to write it [default: ./NAME].
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Depend on the plugin-api of this folder (a checkout of host) instead of the
        /// published crate.
        #[arg(long, value_name = "DIR")]
        plugin_api: Option<PathBuf>,
    },
    /// The web dashboard and its JSON API.
    Serve {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:7777", value_name = "ADDR")]
        addr: std::net::SocketAddr,
        /// The token every request must carry (at least 16 characters) [default: a new random
        /// one, printed in the URL to open]. Prefer the environment variable: other users can
        /// read a process's command line.
        #[arg(
            long,
            env = "HOST_WEB_TOKEN",
            hide_env_values = true,
            value_name = "TOKEN"
        )]
        token: Option<String>,
        /// Also accept requests that name the server NAME in their Host header (a DNS name
        /// it is reached by); loopback names and its own address are always accepted.
        #[arg(long = "allow-host", value_name = "NAME")]
        allow_hosts: Vec<String>,
        /// How long a new connection may take to send its first request's headers before it
        /// is closed. Hidden: the default suits every client; tests shorten it.
        #[arg(
            long,
            hide = true,
            env = "HOST_SERVE_HEADER_TIMEOUT",
            default_value = "10s",
            value_parser = time_limit,
            value_name = "DURATION"
        )]
        header_timeout: Duration,
        /// How long a connection may stay idle between requests before it is closed. Hidden,
        /// as --header-timeout.
        #[arg(
            long,
            hide = true,
            env = "HOST_SERVE_IDLE_TIMEOUT",
            default_value = "60s",
            value_parser = time_limit,
            value_name = "DURATION"
        )]
        idle_timeout: Duration,
    },
    /// Internal: runs a role's handler for a worker, isolated in its own process.
    #[command(hide = true)]
    HandlerProcess {
        /// The role to run.
        #[arg(long)]
        role: String,
        /// The library that provides it.
        #[arg(long)]
        library: PathBuf,
        /// The worker's pid: the handler process ends, with everything below it, when that
        /// process dies.
        #[arg(long)]
        parent: u32,
    },
    /// Internal: opens a plugin library in a process of its own and prints its roles, or with
    /// --validate the verdicts of that role on the tasks read from stdin.
    #[command(hide = true)]
    PluginProbe {
        /// The library to open.
        #[arg(long)]
        library: PathBuf,
        /// The role whose `validate` to run.
        #[arg(long)]
        validate: Option<String>,
        /// The process that asked: the probe ends when it dies.
        #[arg(long)]
        parent: u32,
    },
}

/// `host results`.
#[derive(Debug, Args)]
pub struct ResultsArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Only failed tasks (the same as `--status failed`).
    #[arg(long, conflicts_with = "status")]
    pub failed: bool,
    /// Only tasks that ended in this state.
    #[arg(long, value_parser = ["completed", "failed", "cancelled"])]
    pub status: Option<String>,
    /// Only tasks of this type.
    #[arg(long = "type", value_name = "TYPE")]
    pub task_type: Option<String>,
    /// Only tasks last run by this worker.
    #[arg(long, value_name = "NAME")]
    pub worker: Option<String>,
    /// Only tasks that finished within this long, e.g. 10m, 2h.
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub since: Option<Duration>,
    /// Only the N that finished last (still printed in the order they finished).
    #[arg(long, short = 'n', value_name = "N")]
    pub limit: Option<usize>,
}

/// `host list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print JSON (each task with `waitsFor`).
    #[arg(long)]
    pub json: bool,
    /// Only tasks in this state (input: running, waiting for a person's answer).
    #[arg(long, value_parser = ["review", "input", "running", "pending", "blocked"])]
    pub status: Option<String>,
    /// Only tasks of this type.
    #[arg(long = "type", value_name = "TYPE")]
    pub task_type: Option<String>,
    /// Only tasks held by this worker.
    #[arg(long, value_name = "NAME")]
    pub worker: Option<String>,
    /// At most N, the first in line.
    #[arg(long, short = 'n', value_name = "N")]
    pub limit: Option<usize>,
}

/// `host branches`.
#[derive(Debug, Args)]
pub struct BranchesArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Delete the branches nothing needs any more: those whose task is gone (`host rm`, `host
    /// purge`), whose change was merged or discarded, or that their finished task's result
    /// does not name; with the worktree folder left on them. Never a branch whose task is
    /// unfinished or in review, nor one a finished task records and that was neither merged
    /// nor discarded (`host discard` it).
    #[arg(long)]
    pub prune: bool,
    /// With --prune: say what would be deleted, delete nothing.
    #[arg(long, requires = "prune")]
    pub dry_run: bool,
    /// Also look in the git repository holding DIR (repeatable).
    #[arg(long, value_name = "DIR")]
    pub repo: Vec<PathBuf>,
}

/// `host pr`.
#[derive(Debug, Args)]
pub struct PrArgs {
    /// The task id.
    pub id: String,
    /// Open the pull request as a draft.
    #[arg(long)]
    pub draft: bool,
    /// The remote to push to [default: origin].
    #[arg(long, value_name = "NAME")]
    pub remote: Option<String>,
}

/// `host config` actions.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the configuration (nothing when there is none: the defaults apply).
    Show,
    /// Check FILE (`-` for stdin) and make it the queue's configuration.
    Set {
        /// The new host.toml.
        file: PathBuf,
    },
    /// Remove the configuration: the defaults apply.
    Unset,
}

/// `host notify` actions.
#[derive(Debug, Subcommand)]
pub enum NotifyCommand {
    /// Send a test notification through every sink of `[notify]`, whatever events it takes;
    /// exit 1 if one was not delivered.
    Test,
}

/// What `host pause` and `host resume` apply to; neither flag means the whole queue.
#[derive(Debug, Args)]
pub struct PauseArgs {
    /// Only tasks of this type.
    #[arg(long = "type", value_name = "TYPE", conflicts_with = "task")]
    pub task_type: Option<String>,
    /// Only this task.
    #[arg(long, value_name = "ID")]
    pub task: Option<String>,
}

impl PauseArgs {
    /// The scope the flags name.
    pub fn scope(&self) -> queue::PauseScope {
        match (&self.task_type, &self.task) {
            (Some(task_type), _) => queue::PauseScope::Type(task_type.clone()),
            (None, Some(id)) => queue::PauseScope::Task(id.clone()),
            (None, None) => queue::PauseScope::Queue,
        }
    }
}

/// The values of `host init --durability`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum DurabilityArg {
    Durable,
    Relaxed,
}

impl From<DurabilityArg> for queue::Durability {
    fn from(arg: DurabilityArg) -> Self {
        match arg {
            DurabilityArg::Durable => queue::Durability::Durable,
            DurabilityArg::Relaxed => queue::Durability::Relaxed,
        }
    }
}

/// `host add`.
#[derive(Debug, Args)]
pub struct AddArgs {
    /// The task type (a role claims it).
    #[arg(long = "type", value_name = "TYPE", required_unless_present_any = ["file", "fanout"])]
    pub task_type: Option<String>,
    /// The same task several times, for several agents to try side by side (each in its own
    /// worktree): a number of copies (2-16) of TYPE, or a comma-separated list of roles, one
    /// copy each, of a type only that role of the list claims. Merging one copy's branch
    /// discards the others'.
    #[arg(long, value_name = "N|ROLE,ROLE", value_parser = fan_out)]
    pub fanout: Option<FanOut>,
    /// The file or folder the task is about (made absolute).
    #[arg(long, value_name = "PATH")]
    pub target: Option<PathBuf>,
    /// Free text for people and agents.
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// Lower is claimed first, 0 first of all [default: 5].
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub priority: Option<u32>,
    /// Handler input, as JSON.
    #[arg(long, value_name = "JSON")]
    pub payload: Option<String>,
    /// How many times the task may be claimed in all [default: 3].
    #[arg(long, value_name = "N")]
    pub max_attempts: Option<u32>,
    /// Time limit of one attempt, e.g. 90s, 10m.
    #[arg(long, value_parser = time_limit, value_name = "DURATION")]
    pub timeout: Option<Duration>,
    /// Start only after task ID has completed (repeatable). The task is `blocked` until then,
    /// and cancelled if ID fails or is cancelled.
    #[arg(long, value_name = "ID")]
    pub after: Vec<String>,
    /// Start only after task ID has finished, whatever its outcome: completed, failed or
    /// cancelled (repeatable; ids may be comma-separated). Never cancelled by ID; an agent's
    /// prompt gives ID's status, error and result (write, test, then fix what the test found).
    #[arg(long, value_name = "ID", value_delimiter = ',')]
    pub after_any: Vec<String>,
    /// Not before this time: 2026-12-01T09:00:00Z, "2026-12-01 09:00" or 18:30 (local time;
    /// the next 18:30).
    #[arg(long, value_name = "TIME", conflicts_with = "delay")]
    pub at: Option<String>,
    /// Not before this long from now, e.g. 10m, 2h.
    #[arg(long = "in", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub delay: Option<Duration>,
    /// Add every task in FILE (`-` for stdin): a JSON array or JSON Lines of task objects.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with_all = ["task_type", "target", "description", "priority", "payload", "max_attempts", "timeout", "after", "after_any", "at", "delay", "fanout"]
    )]
    pub file: Option<PathBuf>,
}

/// How `host add --fanout` copies a task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FanOut {
    /// This many copies of the task's type.
    Copies(usize),
    /// One copy per role, each of a type the role claims.
    Roles(Vec<String>),
}

/// The most copies `--fanout` makes.
pub const MAX_FANOUT: usize = 16;

/// `--fanout`: a number of copies, or a list of at least two different roles.
pub fn fan_out(text: &str) -> Result<FanOut, String> {
    if let Ok(n) = text.parse::<usize>() {
        if !(2..=MAX_FANOUT).contains(&n) {
            return Err(format!("{n} copies: give 2 to {MAX_FANOUT}"));
        }
        return Ok(FanOut::Copies(n));
    }
    let roles: Vec<String> = text.split(',').map(|r| r.trim().to_string()).collect();
    if roles.len() < 2 || roles.iter().any(String::is_empty) {
        return Err(format!(
            "{text:?}: give a number of copies, or two or more roles separated by commas"
        ));
    }
    if let Some(twice) = roles
        .iter()
        .enumerate()
        .find(|(i, r)| roles[..*i].contains(r))
    {
        return Err(format!("role {} is named twice", twice.1));
    }
    if roles.len() > MAX_FANOUT {
        return Err(format!("{} roles: give at most {MAX_FANOUT}", roles.len()));
    }
    Ok(FanOut::Roles(roles))
}

/// A task's time limit: a duration of at least a second ("90s", "10m"), or why not.
pub fn time_limit(text: &str) -> Result<Duration, String> {
    let limit = humantime::parse_duration(text)
        .map_err(|err| format!("{text:?} is not a duration like 90s or 10m ({err})"))?;
    if limit < Duration::from_secs(1) {
        return Err(format!("{text:?}: a time limit must be at least 1s"));
    }
    Ok(limit)
}

/// What the command line resolves to, shared by every command.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Where the queue lives: the coordination folder (absolute), or a PostgreSQL URL.
    pub queue: QueueAddress,
    /// The folders searched for plugins, in order, absolute.
    pub plugin_path: Vec<PathBuf>,
    /// Say more.
    pub verbose: bool,
    /// Whether the queue was named (`--queue`, `HOST_QUEUE_DIR`) rather than looked for.
    pub queue_named: bool,
}

/// What separates the folders of a list in an environment variable, as in `PATH`.
const PATH_LIST_SEPARATOR: char = if cfg!(windows) { ';' } else { ':' };

/// The coordination folder's name when none is given.
pub const DEFAULT_QUEUE: &str = "copilot-orchestration";

/// The nearest `copilot-orchestration` queue in `dir` or a folder above it, not looking into
/// the folders `HOST_QUEUE_CEILING` lists (colon-separated, as git's
/// `GIT_CEILING_DIRECTORIES`) or above them.
fn find_queue(dir: &Path) -> Option<PathBuf> {
    let ceilings: Vec<PathBuf> = std::env::var_os("HOST_QUEUE_CEILING")
        .map(|list| std::env::split_paths(&list).collect())
        .unwrap_or_default();
    dir.ancestors()
        .take_while(|folder| !ceilings.iter().any(|c| c == folder))
        .map(|folder| folder.join(DEFAULT_QUEUE))
        .find(|queue| queue::QueueFolder::holds_queue(queue))
}

impl Settings {
    /// Resolves paths and defaults. Without a queue named, one is looked for in this folder and
    /// those above, unless `creating` (`host init` makes it here).
    pub fn resolve(global: &GlobalArgs, creating: bool) -> anyhow::Result<Settings> {
        let here = std::env::current_dir().unwrap_or_default();
        let named = global.queue.clone().filter(|q| !q.is_empty());
        let queue = match &named {
            Some(address) => QueueAddress::parse(address)
                .with_context(|| format!("queue {}", queue::redact_url(address)))?,
            None => QueueAddress::Folder(match find_queue(&here).filter(|_| !creating) {
                Some(found) => found,
                None => here.join(DEFAULT_QUEUE),
            }),
        };
        let mut plugin_path: Vec<PathBuf> = global
            .plugin_dirs
            .iter()
            .filter(|d| !d.as_os_str().is_empty())
            .map(|d| queue::normal_path(d).unwrap_or_else(|_| d.clone()))
            .collect();
        if plugin_path.is_empty() {
            // Plugins are local to each machine: a queue on a server has no folder for them.
            if let Some(folder) = queue.folder() {
                plugin_path.push(folder.join("plugins"));
            }
            if let Some(dir) = std::env::current_exe()
                .ok()
                .and_then(|exe| dunce::canonicalize(exe).ok())
                .and_then(|exe| exe.parent().map(PathBuf::from))
            {
                plugin_path.push(dir);
            }
        }
        Ok(Settings {
            queue,
            plugin_path,
            verbose: global.verbose,
            queue_named: named.is_some(),
        })
    }
}
