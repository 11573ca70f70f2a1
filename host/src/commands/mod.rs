//! One file per command; each takes the resolved [`Settings`] and does its whole job.

pub mod add;
pub mod branch;
pub mod branches;
pub mod cancel;
pub mod config;
pub mod doctor;
pub mod export;
pub mod inbox;
pub mod init;
pub mod list;
mod migrate;
pub mod new_role;
pub mod notify;
pub mod paint;
pub mod plugins;
pub mod pr;
pub mod results;
pub mod selfserve;
pub mod show;
pub mod snooze;
pub mod stats;
pub mod status;
pub mod watch;
pub mod work;
pub mod workers;

use anyhow::Context as _;
use queue::Store;

use crate::cli::{Command, Settings};

/// Runs an orchestrator command.
pub fn run(settings: &Settings, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Init { durability } => init::run(settings, durability.map(Into::into)),
        Command::Add(args) => add::run(settings, &args),
        Command::Status { json } => status::run(settings, json),
        Command::Watch { interval, follow } => watch::run(settings, interval, follow),
        Command::Results(args) => results::run(settings, &args),
        Command::Stats { json } => stats::run(settings, json),
        Command::Show { id, json } => show::run(settings, &id, json),
        Command::List(args) => list::run(settings, &args),
        Command::Edit {
            id,
            priority,
            description,
            payload,
            timeout,
        } => {
            let payload = match payload {
                Some(text) => Some(
                    serde_json::from_str(&text)
                        .map_err(|err| anyhow::anyhow!("--payload is not valid JSON: {err}"))?,
                ),
                None => None,
            };
            let edit = queue::TaskEdit {
                priority,
                description,
                payload,
                timeout_secs: timeout.map(|t| t.as_secs().max(1)),
            };
            let task = queue::QueueStore::edit(&open_store(settings)?, &id, &edit)?;
            outln!(
                "task {id}: changed (priority {}, {})",
                task.priority,
                task.status
            );
            Ok(())
        }
        Command::Rm { ids } => export::rm(settings, &ids),
        Command::Diff { id } => branch::diff(settings, &id),
        Command::Merge { id, squash, rebase } => branch::merge(settings, &id, squash, rebase),
        Command::Discard { ids } => branch::discard(settings, &ids),
        Command::Branches(args) => branches::run(settings, &args),
        Command::Open { id } => branches::open(settings, &id),
        Command::Pr(args) => pr::run(settings, &args),
        Command::Inbox { json } => inbox::run(settings, json),
        Command::Answer {
            id,
            option,
            fields,
            text,
        } => inbox::answer(settings, &id, option.as_deref(), &fields, text.as_deref()),
        Command::Approve { ids } => branch::approve(settings, &ids),
        Command::Reject { id, reason } => branch::reject(settings, &id, &reason),
        Command::Workers { prune, json } => workers::run(settings, prune, json),
        Command::Wait {
            ids,
            task_type,
            timeout,
        } => list::wait(settings, &ids, task_type.as_deref(), timeout),
        Command::Plugins { json } => plugins::run(settings, json),
        Command::Cancel { ids, task_type } => cancel::cancel(settings, &ids, task_type.as_deref()),
        Command::Retry {
            ids,
            failed,
            task_type,
        } => cancel::retry(settings, &ids, failed, task_type.as_deref()),
        Command::Mcp => crate::mcp::serve(settings),
        Command::Completions { shell } => {
            // Into memory first: clap_complete panics when its writer fails (a closed pipe).
            let mut script = Vec::new();
            let mut command = <crate::cli::Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "host", &mut script);
            std::io::Write::write_all(&mut std::io::stdout().lock(), &script)?;
            Ok(())
        }
        Command::Man => {
            let command = <crate::cli::Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(command).render(&mut std::io::stdout().lock())?;
            Ok(())
        }
        Command::NewRole {
            name,
            dir,
            plugin_api,
        } => new_role::run(settings, &name, dir.as_deref(), plugin_api.as_deref()),
        Command::Serve {
            addr,
            token,
            allow_hosts,
            header_timeout,
            idle_timeout,
        } => {
            // clap reads an empty variable as no value; an empty token is a mistake to report,
            // not a reason to make one up.
            let empty_env = std::env::var_os("HOST_WEB_TOKEN").is_some_and(|v| v.is_empty());
            let token = token.or_else(|| empty_env.then(String::new));
            let limits = crate::web::Limits {
                headers: header_timeout,
                idle: idle_timeout,
            };
            crate::web::serve(settings, addr, token, allow_hosts, limits)
        }
        Command::Logs { id, follow } => selfserve::logs(settings, &id, follow),
        Command::Claim {
            role,
            name,
            lease,
            wait,
            json,
        } => selfserve::claim(settings, &role, name.as_deref(), lease, wait, json),
        Command::Log {
            id,
            lines,
            token,
            lease,
        } => selfserve::log(settings, &id, &token, lease, &lines),
        Command::Progress {
            id,
            percent,
            message,
            token,
            lease,
        } => selfserve::progress(settings, &id, &token, lease, percent, &message),
        Command::Heartbeat { id, token, lease } => {
            selfserve::heartbeat(settings, &id, &token, lease)
        }
        Command::Complete { id, result, token } => {
            selfserve::complete(settings, &id, &token, result.as_deref())
        }
        Command::Fail {
            id,
            error,
            retryable,
            token,
        } => selfserve::fail(settings, &id, &token, &error, retryable),
        Command::Snooze {
            id,
            wait,
            until,
            reason,
            token,
        } => snooze::run(
            settings,
            &id,
            add::not_before(until.as_deref(), wait)?.expect("clap requires one"),
            &reason,
            token.as_deref(),
        ),
        Command::Purge {
            finished_before,
            status,
        } => export::purge(settings, finished_before, &status),
        Command::Export { jsonl } => export::export(settings, jsonl),
        Command::Import { dir } => export::import(settings, &dir),
        Command::Doctor => doctor::run(settings),
        Command::Migrate => migrate::run(settings),
        Command::Config(action) => config::run(settings, action),
        Command::Notify(crate::cli::NotifyCommand::Test) => notify::test(settings),
        Command::Pause(args) => cancel::pause(settings, &args.scope()),
        Command::Resume(args) => cancel::resume(settings, &args.scope()),
        Command::HandlerProcess {
            role,
            library,
            parent,
        } => crate::handler_process::serve(&role, &library, parent),
        Command::PluginProbe {
            library,
            validate,
            parent,
        } => crate::loader::serve_probe(&library, validate.as_deref(), parent),
    }
}

/// Opens the queue named by the settings.
pub fn open_store(settings: &Settings) -> anyhow::Result<Store> {
    match Store::open(&settings.queue) {
        Err(queue::StoreError::NotInitialized(path)) if !settings.queue_named => {
            let above = match std::env::var("HOST_QUEUE_CEILING") {
                Ok(ceiling) if !ceiling.is_empty() => {
                    format!("a folder above it below HOST_QUEUE_CEILING ({ceiling})")
                }
                _ => "a folder above".to_string(),
            };
            anyhow::bail!(
                "no queue here: neither {} nor {above} holds a {} queue (run `host init` to make \
                 one here, or name one with --queue DIR or HOST_QUEUE_DIR)",
                path.parent().unwrap_or(&path).display(),
                crate::cli::DEFAULT_QUEUE
            )
        }
        opened => opened.context("cannot open the queue"),
    }
}

/// Fails, after a listing printed what could be read, when task records could not be: one
/// line naming each, so that a backup or a script never takes a partial listing for the whole.
pub fn unreadable_records(store: &dyn queue::QueueStore) -> anyhow::Result<()> {
    let skipped = store.take_warnings();
    if skipped.is_empty() {
        return Ok(());
    }
    anyhow::bail!("{} (the rest was listed)", skipped.join("; "))
}

/// Like `print!`, but a failed write (a closed pipe) returns an error instead of panicking,
/// and colour (see [`paint`]) is dropped unless stdout is a terminal that should have it.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(anstream::stdout().lock(), $($arg)*)?
    }};
}

/// Like `println!`, with what [`out!`] adds.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(anstream::stdout().lock(), $($arg)*)?
    }};
}

pub(crate) use {out, outln};

/// Prints JSON, pretty, on stdout.
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Milliseconds as a short human duration (`1.2s`, `340ms`, `2m 5s`).
pub fn human_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        let secs = ms / 1000;
        format!("{}m {}s", secs / 60, secs % 60)
    }
}

/// A whole number of seconds, short: 45s, 3m, 2h, 4d.
pub fn span(secs: i64) -> String {
    let secs = secs.max(0);
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}

/// A moment relative to `now`, for human output: "3m ago", or "in 5m" for one to come.
pub fn ago(at: jiff::Timestamp, now: jiff::Timestamp) -> String {
    let secs = now.duration_since(at).as_secs();
    if secs < 0 {
        format!("in {}", span(-secs))
    } else {
        format!("{} ago", span(secs))
    }
}

/// A moment to come as a wall-clock time in the local time zone: "14:00" within a day, else
/// "2026-12-08 14:00".
pub fn clock(at: jiff::Timestamp, now: jiff::Timestamp) -> String {
    let local = at.to_zoned(jiff::tz::TimeZone::system());
    if at.duration_since(now).as_secs() < 86_400 {
        local.strftime("%H:%M").to_string()
    } else {
        local.strftime("%Y-%m-%d %H:%M").to_string()
    }
}

/// Shortens text to one line of at most `max` characters.
pub fn one_line(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or_default();
    if line.chars().count() > max {
        let cut: String = line.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    } else if text.lines().nth(1).is_some() {
        format!("{line} …")
    } else {
        line.to_string()
    }
}
