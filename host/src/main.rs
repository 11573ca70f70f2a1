//! `host`: wires the command line to the queue store, the plugin loader and the worker loop.
//! The logic lives in those modules and in one file per command under `commands/`.

mod attention;
mod branch_names;
mod cli;
mod commands;
mod completer;
mod config;
mod handler_process;
mod hooks;
mod library;
mod loader;
mod mcp;
mod notify;
mod probe_cache;
mod process_tree;
mod usage_limits;
mod wakeup;
mod web;
mod worker;

use std::process::ExitCode;

use crate::cli::{Cli, Settings};

fn main() -> ExitCode {
    #[cfg(unix)]
    stop_only_between_writes();
    let cli = Cli::parse_checked();
    match cli.global.color {
        clap::ColorChoice::Always => anstream::ColorChoice::Always.write_global(),
        clap::ColorChoice::Never => anstream::ColorChoice::Never.write_global(),
        clap::ColorChoice::Auto => {}
    }
    let creating = matches!(
        cli.command,
        Some(cli::Command::Init { .. } | cli::Command::Import { .. })
    );
    let outcome = Settings::resolve(&cli.global, creating).and_then(|settings| match cli.command {
        Some(command) => commands::run(&settings, command),
        None => match cli.worker.role.as_deref() {
            Some(role) => commands::work::run(&settings, role, &cli.worker),
            None => <Cli as clap::CommandFactory>::command()
                .error(
                    clap::error::ErrorKind::MissingRequiredArgument,
                    "give a command, or --role ROLE to run a worker",
                )
                .exit(),
        },
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`host results | head`): not an error of ours.
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) if err.chain().any(|cause| cause.is::<cli::UsageError>()) => {
            eprintln!("error: {}", one_line(&err));
            ExitCode::from(2)
        }
        Err(err) => {
            eprintln!("error: {}", one_line(&err));
            ExitCode::FAILURE
        }
    }
}

/// Ctrl+Z (SIGTSTP) stops this process only when it holds none of the queue's locks: the
/// writes under way finish first, then it stops itself. A process stopped while holding the
/// writers' lock would freeze every other command and worker of the queue until resumed.
#[cfg(unix)]
fn stop_only_between_writes() {
    use nix::sys::signal::{Signal, raise};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([signal_hook::consts::SIGTSTP])
    else {
        return;
    };
    std::thread::spawn(move || {
        for _ in signals.forever() {
            let _held = queue::SqliteStore::hold_writes();
            let _ = raise(Signal::SIGSTOP);
        }
    });
}

/// The error and its causes in one line, never a backtrace. A cause whose text its
/// predecessor already ends with (an error that prints its source) is not repeated.
fn one_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string().replace('\n', " ");
        if line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
