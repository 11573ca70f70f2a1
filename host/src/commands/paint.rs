//! Colour for human output. Text is styled here unconditionally; `out!` and `outln!` write
//! through anstream, which drops the styling when stdout is not a terminal, `NO_COLOR` is set
//! or `--color never` was given. Pad a column before painting it: escape codes have no width.

use anstyle::{AnsiColor, Style};
use queue::TaskStatus;

/// `text` in `style`.
pub fn paint(style: Style, text: &str) -> String {
    format!("{style}{text}{style:#}")
}

/// `text` (a padded state name) in its state's colour: the colours of the dashboard.
pub fn status(status: TaskStatus, text: &str) -> String {
    let colour = match status {
        TaskStatus::Pending => AnsiColor::Cyan,
        TaskStatus::Blocked => AnsiColor::Magenta,
        TaskStatus::Running => AnsiColor::Yellow,
        TaskStatus::Review => AnsiColor::Blue,
        TaskStatus::Completed => AnsiColor::Green,
        TaskStatus::Failed => AnsiColor::Red,
        TaskStatus::Cancelled => AnsiColor::BrightBlack,
    };
    paint(colour.on_default(), text)
}

/// A column heading.
pub fn heading(text: &str) -> String {
    paint(Style::new().bold(), text)
}

/// What matters less: ages, dashes.
pub fn dim(text: &str) -> String {
    paint(Style::new().dimmed(), text)
}

/// An error or a dead worker.
pub fn bad(text: &str) -> String {
    paint(AnsiColor::Red.on_default(), text)
}
