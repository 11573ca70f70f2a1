//! `host watch`: a live dashboard (Watch-Progress) that redraws in place until nothing is
//! pending, blocked or running, or until `q`; with `--follow` it stays.
//!
//! On a terminal it is a ratatui screen (the alternate screen, so the shell's scrollback is left
//! as it was; ratatui redraws only the cells that changed, so it does not flicker, also over
//! ssh). When it ends by itself the last status is printed to the normal screen. When stdout is
//! not a terminal it prints the plain `status` text every interval instead.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use queue::{QueueStore, Task, TaskQuery, TaskStatus};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table};
use ratatui::{DefaultTerminal, Frame};

use crate::cli::Settings;
use crate::commands::results::FINISHED;
use crate::commands::status::StatusReport;
use crate::commands::{human_ms, one_line, open_store};

/// How many finished tasks the dashboard lists.
const RECENT: usize = 10;

/// Runs the dashboard.
pub fn run(settings: &Settings, interval: Duration, follow: bool) -> anyhow::Result<()> {
    if !std::io::stdout().is_terminal() {
        return run_plain(settings, interval, follow);
    }
    let mut screen = Screen::open();
    let outcome = dashboard(&mut screen.terminal, settings, interval, follow);
    drop(screen);
    if let Some(report) = outcome? {
        anstream::print!("{}", report.render());
        anstream::println!("Nothing pending, blocked or running.");
    }
    Ok(())
}

/// The ratatui terminal, restored to normal however the dashboard ends.
struct Screen {
    terminal: DefaultTerminal,
}

impl Screen {
    fn open() -> Screen {
        Screen {
            terminal: ratatui::init(),
        }
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// Redraws until the queue is empty (returning its last report) or the user quits (`None`).
fn dashboard(
    terminal: &mut DefaultTerminal,
    settings: &Settings,
    interval: Duration,
    follow: bool,
) -> anyhow::Result<Option<StatusReport>> {
    let store = open_store(settings)?;
    let started = Instant::now();
    let mut first_done: Option<usize> = None;
    loop {
        let report = StatusReport::read(settings)?;
        let recent = store.list(&TaskQuery {
            statuses: FINISHED.to_vec(),
            newest_first: true,
            limit: Some(RECENT),
            ..TaskQuery::default()
        })?;
        let done = report.counts["completed"] + report.counts["failed"];
        let first = *first_done.get_or_insert(done);
        let minutes = started.elapsed().as_secs_f64() / 60.0;
        let throughput = (minutes > 0.0).then(|| (done - first.min(done)) as f64 / minutes);
        terminal.draw(|frame| draw(frame, &report, &recent, throughput, follow))?;
        if !follow && report.unfinished() == 0 {
            return Ok(Some(report));
        }
        let deadline = Instant::now() + interval;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            if !event::poll(left)? {
                break;
            }
            if let Event::Key(key) = event::read()? {
                let ctrl_c =
                    key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL);
                if key.kind == KeyEventKind::Press
                    && (matches!(key.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c)
                {
                    return Ok(None);
                }
            }
        }
    }
}

fn draw(
    frame: &mut Frame,
    report: &StatusReport,
    recent: &[Task],
    throughput: Option<f64>,
    follow: bool,
) {
    let workers = report.workers.len().max(1) as u16;
    let [header, counts, workers_area, results_area, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(3),
        Constraint::Length(workers + 3),
        Constraint::Min(4),
        Constraint::Length(1),
    ])
    .areas(frame.area());

    let now = Timestamp::now().strftime("%H:%M:%S UTC");
    frame.render_widget(
        Paragraph::new(Line::from(vec![
            Span::styled("host watch ", Style::new().add_modifier(Modifier::BOLD)),
            Span::raw(format!("{}  {now}", report.queue)),
        ])),
        header,
    );

    let mut spans = Vec::new();
    for status in TaskStatus::ALL {
        let count = report.counts[status.as_str()];
        spans.push(Span::styled(
            format!(" {} {count} ", status.as_str()),
            Style::new().fg(status_colour(status)),
        ));
    }
    if let Some(rate) = throughput {
        spans.push(Span::raw(format!("  throughput {rate:.1}/min")));
    }
    if !report.paused.is_empty() {
        spans.push(Span::styled(
            format!("  paused: {}", report.paused.join(", ")),
            Style::new().fg(Color::Yellow),
        ));
    }
    frame.render_widget(
        Paragraph::new(Line::from(spans)).block(Block::bordered().title(" Tasks ")),
        counts,
    );

    let now = Timestamp::now();
    let rows: Vec<Row> = report
        .workers
        .iter()
        .flat_map(|w| {
            let r = &w.record;
            let state = if w.alive {
                format!("{:?}", r.state).to_lowercase()
            } else {
                "dead".into()
            };
            let heartbeat = format!("{}s ago", now.duration_since(r.heartbeat_at).as_secs());
            let tasks: Vec<Option<&queue::ActiveTask>> = if r.tasks.is_empty() {
                vec![None]
            } else {
                r.tasks.iter().map(Some).collect()
            };
            tasks.into_iter().map(move |t| {
                let (task, progress) = match t {
                    Some(t) => (
                        format!("{} {}", t.id, t.task_type),
                        format!("{} {}", bar(t.progress), t.message),
                    ),
                    None => ("-".into(), String::new()),
                };
                Row::new(vec![
                    Cell::from(r.name.clone()),
                    Cell::from(r.role.clone()),
                    Cell::from(state.clone()).fg(if w.alive { Color::Reset } else { Color::Red }),
                    Cell::from(task),
                    Cell::from(progress),
                    Cell::from(heartbeat.clone()),
                ])
            })
        })
        .collect();
    let table = Table::new(
        rows,
        [
            Constraint::Length(24),
            Constraint::Length(12),
            Constraint::Length(9),
            Constraint::Length(14),
            Constraint::Fill(1),
            Constraint::Length(9),
        ],
    )
    .header(Row::new(["WORKER", "ROLE", "STATE", "TASK", "PROGRESS", "HEARTBEAT"]).bold())
    .block(Block::bordered().title(" Workers "));
    frame.render_widget(table, workers_area);

    let rows: Vec<Row> = recent
        .iter()
        .map(|t| {
            let outcome = match (&t.error, &t.result) {
                (Some(error), _) => error.clone(),
                (None, Some(result)) => result.to_string(),
                (None, None) => String::new(),
            };
            Row::new(vec![
                Cell::from(t.id.clone()),
                Cell::from(t.task_type.clone()),
                Cell::from(t.shown_status()).fg(status_colour(t.status)),
                Cell::from(t.worker.clone().unwrap_or_default()),
                Cell::from(t.duration_ms.map(human_ms).unwrap_or_default()),
                Cell::from(one_line(&outcome, 200)),
            ])
        })
        .collect();
    let table = Table::new(
        rows,
        [
            Constraint::Length(7),
            Constraint::Length(10),
            Constraint::Length(10),
            Constraint::Length(24),
            Constraint::Length(8),
            Constraint::Fill(1),
        ],
    )
    .header(Row::new(["ID", "TYPE", "STATUS", "WORKER", "TIME", "OUTCOME"]).bold())
    .block(Block::bordered().title(" Latest results "));
    frame.render_widget(table, results_area);

    let hint = if follow {
        " q quits"
    } else {
        " q quits; ends by itself when nothing is pending, blocked or running"
    };
    frame.render_widget(Paragraph::new(hint).dim(), footer);
}

fn status_colour(status: TaskStatus) -> Color {
    match status {
        TaskStatus::Pending => Color::Cyan,
        TaskStatus::Blocked => Color::Magenta,
        TaskStatus::Running => Color::Yellow,
        TaskStatus::Review => Color::Blue,
        TaskStatus::Completed => Color::Green,
        TaskStatus::Failed => Color::Red,
        TaskStatus::Cancelled => Color::DarkGray,
    }
}

/// A ten-cell progress bar with the percentage.
fn bar(percent: u8) -> String {
    let filled = usize::from(percent.min(100)) / 10;
    format!(
        "[{}{}] {percent:>3}%",
        "#".repeat(filled),
        "-".repeat(10 - filled)
    )
}

/// Without a terminal: the `status` text every interval.
fn run_plain(settings: &Settings, interval: Duration, follow: bool) -> anyhow::Result<()> {
    loop {
        let report = StatusReport::read(settings)?;
        let mut out = anstream::stdout().lock();
        writeln!(out, "{}", report.render())?;
        if !follow && report.unfinished() == 0 {
            writeln!(out, "Nothing pending, blocked or running for the workers.")?;
            return Ok(());
        }
        out.flush()?;
        drop(out);
        std::thread::sleep(interval);
    }
}
