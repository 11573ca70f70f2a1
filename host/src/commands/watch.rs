//! `host watch`: `status`, redrawn in place until nothing is pending or running
//! (Watch-Progress).

use std::io::{IsTerminal, Write};
use std::time::Duration;

use crate::cli::Settings;
use crate::commands::status::StatusReport;

/// Redraws every `interval`; returns once no task is pending or running.
pub fn run(settings: &Settings, interval: Duration) -> anyhow::Result<()> {
    let tty = std::io::stdout().is_terminal();
    loop {
        let report = StatusReport::read(settings)?;
        let mut out = std::io::stdout().lock();
        if tty {
            // Home and clear-to-end rather than clear-screen, so the frame does not flicker.
            write!(
                out,
                "\x1b[H{}\x1b[J",
                report.render().replace('\n', "\x1b[K\n")
            )?;
        } else {
            writeln!(out, "{}", report.render())?;
        }
        out.flush()?;
        if report.unfinished() == 0 {
            writeln!(out, "Nothing pending or running.")?;
            return Ok(());
        }
        drop(out);
        std::thread::sleep(interval);
    }
}
