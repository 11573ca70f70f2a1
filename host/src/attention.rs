//! What needs a person's attention, announced in one place to everything set to hear of it: the
//! `[hooks]` command of its event (see [`crate::hooks`]) and the `[notify]` sinks that take it
//! (see [`crate::notify`]). An [`Event`] is one of [`EventKind::ALL`]: a task waits for review
//! or for a person's answer, failed for good, its merge conflicts, a role reached its usage
//! limit, the queue drained.
//! [`Attention::announce`] sends one; [`Attention::after_outcome`] sends what a task's new
//! state calls for, the drain included.
//!
//! **The drain.** It is announced by whoever records an outcome (a worker, `host complete`,
//! `host fail`) that leaves no task pending, running or blocked, about the task that ended last
//! (by its finishing time). Two workers may both see the queue empty when their last tasks end
//! together: each then appends a line to that last task's log, and only the one whose line
//! comes first announces. So a drain is announced once, on either store, and `host logs ID`
//! of that task says who announced it. A task that ends again later (a retry) makes a new
//! drain, announced again.

use std::sync::atomic::{AtomicU64, Ordering};

use jiff::Timestamp;
use queue::{QueueStore, Task, TaskQuery, TaskStatus};

use crate::config::{Config, Hooks};
use crate::notify::{Message, Notify};

/// The kinds of event, by the names `host.toml` and `HOST_EVENT` use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A task's success waits for `host approve` or `host reject`.
    Review,
    /// A running task's agent asks a person (`host answer`).
    Input,
    /// A task failed with no attempt left.
    Failed,
    /// `host merge` met a conflict.
    Conflict,
    /// A role's agent reached its usage limit.
    UsageLimit,
    /// Nothing is left pending, running or blocked.
    Drained,
}

impl EventKind {
    /// Every kind, in the order the README lists them.
    pub const ALL: [EventKind; 6] = [
        EventKind::Review,
        EventKind::Input,
        EventKind::Failed,
        EventKind::Conflict,
        EventKind::UsageLimit,
        EventKind::Drained,
    ];

    /// Its name in `host.toml` (`events = [...]`, `[hooks]`) and in `HOST_EVENT`.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Review => "review",
            EventKind::Input => "input",
            EventKind::Failed => "failed",
            EventKind::Conflict => "conflict",
            EventKind::UsageLimit => "usage_limit",
            EventKind::Drained => "drained",
        }
    }

    /// The kind of this name.
    pub fn parse(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|kind| kind.name() == name)
    }
}

/// Something to announce, with the task it is about.
#[derive(Clone, Debug)]
pub enum Event {
    /// The task waits for review.
    Review(Task),
    /// The running task waits for a person's answer (its `input`).
    Input(Task),
    /// The task failed for good.
    Failed(Task),
    /// The task's branch conflicts with the branch it was to be merged into.
    Conflict(Task),
    /// `role` reached its usage limit until `until`; `task` waits for it.
    UsageLimit {
        /// The role whose agent reached its limit.
        role: String,
        /// When the limit is lifted.
        until: Timestamp,
        /// The task that met the limit.
        task: Task,
        /// The roles that take its tasks meanwhile (`fallback`); none: the task waits.
        fallback: Vec<String>,
    },
    /// Nothing is left pending, running or blocked; `last` is the task that ended last.
    Drained {
        /// The task whose end drained the queue.
        last: Task,
    },
    /// `host notify test`: to every sink, whatever events it takes.
    Test,
}

impl Event {
    /// Its kind; `None` for a test.
    pub fn kind(&self) -> Option<EventKind> {
        Some(match self {
            Event::Review(_) => EventKind::Review,
            Event::Input(_) => EventKind::Input,
            Event::Failed(_) => EventKind::Failed,
            Event::Conflict(_) => EventKind::Conflict,
            Event::UsageLimit { .. } => EventKind::UsageLimit,
            Event::Drained { .. } => EventKind::Drained,
            Event::Test => return None,
        })
    }

    /// The task it is about.
    pub fn task(&self) -> Option<&Task> {
        match self {
            Event::Review(task)
            | Event::Input(task)
            | Event::Failed(task)
            | Event::Conflict(task)
            | Event::UsageLimit { task, .. }
            | Event::Drained { last: task } => Some(task),
            Event::Test => None,
        }
    }

    /// What the notification sinks are given.
    pub fn message(&self) -> Message {
        let id = self.task().map_or("", |t| t.id.as_str());
        let (title, line) = match self {
            Event::Review(task) => (
                format!("task {id} waits for review"),
                format!(
                    "{} succeeded and waits for review (host approve {id} / host reject {id})",
                    about(task)
                ),
            ),
            Event::Input(task) => {
                let question = task.input.as_ref().map(|i| &i.question);
                let title = question.map_or("", |q| q.title.as_str());
                let hint = question
                    .map(|q| crate::commands::inbox::answer_hint(id, q))
                    .unwrap_or_default();
                (
                    format!("task {id} asks: {}", clip(title, 80)),
                    format!(
                        "{} asks a person: {} ({hint})",
                        about(task),
                        clip(title, 200)
                    ),
                )
            }
            Event::Failed(task) => (
                format!("task {id} failed"),
                format!(
                    "{} failed for good: {}",
                    about(task),
                    clip(task.error.as_deref().unwrap_or("no error recorded"), 200)
                ),
            ),
            Event::Conflict(task) => {
                let branch = task.branch_state.as_ref();
                let into = branch
                    .and_then(|b| b.into.as_deref())
                    .unwrap_or("its base branch");
                let files = branch.map(|b| b.files.join(", ")).unwrap_or_default();
                let files = if files.is_empty() {
                    String::new()
                } else {
                    format!(" in {}", clip(&files, 200))
                };
                (
                    format!("task {id}: merge conflict"),
                    format!(
                        "{}: merging its branch into {into} conflicts{files}; nothing was changed",
                        about(task)
                    ),
                )
            }
            Event::UsageLimit {
                role,
                until,
                task,
                fallback,
            } => (
                format!("role {} reached its usage limit", ascii(role)),
                match fallback.as_slice() {
                    [] => format!(
                        "role {role} reached its usage limit until {until:.0}; {} waits until \
                         then",
                        about(task)
                    ),
                    roles => format!(
                        "role {role} reached its usage limit until {until:.0}; {} goes to role(s) \
                         {} meanwhile",
                        about(task),
                        roles.join(", ")
                    ),
                },
            ),
            Event::Drained { last } => (
                "the queue is drained".to_string(),
                format!(
                    "the queue is drained: nothing is pending, running or blocked (the last task \
                     to end: {}, {})",
                    about(last),
                    last.status
                ),
            ),
            Event::Test => (
                "test notification".to_string(),
                "a test notification from host (host notify test): this sink works".to_string(),
            ),
        };
        let event = self.kind().map_or("test", EventKind::name);
        let mut json = serde_json::json!({
            "event": event,
            "title": format!("host: {title}"),
            "message": line,
            "task": self.task(),
        });
        if let Event::UsageLimit { role, until, .. } = self {
            json["role"] = role.as_str().into();
            json["until"] = until.to_string().into();
        }
        Message {
            title: ascii(&format!("host: {title}")),
            line,
            json,
        }
    }
}

/// `task 7 (write: Add a README)`: the task's id, type and the start of its description.
fn about(task: &Task) -> String {
    match task.description.as_deref().map(str::trim) {
        Some(text) if !text.is_empty() => {
            format!("task {} ({}: {})", task.id, task.task_type, clip(text, 80))
        }
        _ => format!("task {} ({})", task.id, task.task_type),
    }
}

/// The first line of `text`, at most `max` characters of it.
fn clip(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or_default().trim();
    match line.char_indices().nth(max) {
        Some((end, _)) => format!("{}...", &line[..end]),
        None => line.to_string(),
    }
}

/// `text` with what an HTTP header cannot carry replaced by `?`.
fn ascii(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// Where events go: the `[hooks]` and `[notify]` of `host.toml`.
#[derive(Clone, Debug, Default)]
pub struct Attention {
    hooks: Hooks,
    notify: Notify,
}

impl Attention {
    /// What `config` sets.
    pub fn new(config: &Config) -> Attention {
        Attention {
            hooks: config.hooks.clone(),
            notify: config.notify.clone(),
        }
    }

    /// The hook command set for events of `kind`.
    fn hook(&self, kind: EventKind) -> Option<&Vec<String>> {
        match kind {
            EventKind::Review => self.hooks.review.as_ref(),
            EventKind::Input => self.hooks.input.as_ref(),
            EventKind::Failed => self.hooks.failed.as_ref(),
            EventKind::Conflict => self.hooks.conflict.as_ref(),
            EventKind::UsageLimit => self.hooks.usage_limit.as_ref(),
            EventKind::Drained => self.hooks.drained.as_ref(),
        }
    }

    /// Whether anything is set to hear of events of `kind`.
    pub fn wants(&self, kind: EventKind) -> bool {
        self.hook(kind).is_some() || self.notify.wants(kind)
    }

    /// Whether a task that reached `task`'s state may have something to announce: its state's
    /// event, or the drain. Lets a worker skip the work when nothing is set.
    pub fn wants_outcome(&self, task: &Task) -> bool {
        state_event(task).is_some_and(|e| e.kind().is_some_and(|k| self.wants(k)))
            || (ended(task) && self.wants(EventKind::Drained))
    }

    /// Announces `event` to its hook and to every notification sink that takes it, all at
    /// once, and waits for them (a hook has 30 s, a notification `[notify] timeout`). Answers
    /// one line per failure, naming the task, the event and the hook or sink; a failure
    /// changes nothing else.
    pub fn announce(&self, event: &Event) -> Vec<String> {
        let Some(kind) = event.kind() else {
            return Vec::new();
        };
        let hook = self.hook(kind).filter(|_| event.task().is_some());
        let concerning = match event {
            Event::Drained { .. } => "the queue drained".to_string(),
            _ => format!("task {}", event.task().map_or("", |t| t.id.as_str())),
        };
        let message = event.message();
        let (hooked, sent) = std::thread::scope(|scope| {
            let hooked = hook.zip(event.task()).map(|(command, task)| {
                scope.spawn(move || crate::hooks::run(command, kind.name(), task))
            });
            let sent = self.notify.send(Some(kind), &message);
            (hooked.map(|h| h.join()), sent)
        });
        let mut failures = Vec::new();
        if let Some(ran) = hooked {
            match ran {
                Ok(Ok(())) => {}
                Ok(Err(why)) => failures.push(format!("{concerning}: {why}")),
                Err(_) => failures.push(format!("{concerning}: hook {}: it panicked", kind.name())),
            }
        }
        for (sink, result) in sent {
            if let Err(why) = result {
                failures.push(format!(
                    "{concerning}: {sink}: notification {:?} not sent: {why}",
                    kind.name()
                ));
            }
        }
        failures
    }

    /// After an outcome was recorded: announces what `task`'s new state calls for (it waits
    /// for review, it failed for good) and then, if nothing is left pending, running or
    /// blocked, the drain (once; see the module's page). Answers one line per failure.
    pub fn after_outcome(&self, store: &dyn QueueStore, task: &Task) -> Vec<String> {
        let mut failures = Vec::new();
        if let Some(event) = state_event(task) {
            failures.extend(self.announce(&event));
        }
        if ended(task)
            && self.wants(EventKind::Drained)
            && let Some(last) = drained(store, task)
        {
            failures.extend(self.announce(&Event::Drained { last }));
        }
        failures
    }

    /// Announces that `role`'s agent reached its usage limit until `until`, with `task`, the
    /// task that met it, waiting meanwhile or handed to the `fallback` roles. Answers one line
    /// per failure.
    pub fn usage_limit(
        &self,
        role: &str,
        until: Timestamp,
        task: &Task,
        fallback: &[String],
    ) -> Vec<String> {
        self.announce(&Event::UsageLimit {
            role: role.to_string(),
            until,
            task: task.clone(),
            fallback: fallback.to_vec(),
        })
    }

    /// Sends a test notification to every sink, whatever events it takes: each sink's name
    /// with whether it was delivered.
    pub fn test(&self) -> Vec<(String, Result<(), String>)> {
        self.notify.send(None, &Event::Test.message())
    }

    /// Whether `[notify]` sets no sink.
    pub fn sinks_none(&self) -> bool {
        self.notify.is_empty()
    }
}

/// The event a task's state calls for: it waits for review, or it failed for good.
fn state_event(task: &Task) -> Option<Event> {
    match task.status {
        TaskStatus::Review => Some(Event::Review(task.clone())),
        TaskStatus::Failed => Some(Event::Failed(task.clone())),
        _ => None,
    }
}

/// Whether `task` has ended (for now): it is not pending, running or blocked.
fn ended(task: &Task) -> bool {
    !matches!(
        task.status,
        TaskStatus::Pending | TaskStatus::Running | TaskStatus::Blocked
    )
}

/// Tells apart the claims of one process's threads on one drain.
static CLAIMS: AtomicU64 = AtomicU64::new(0);

/// The task that ended last, if the queue is drained and this caller is the first to say so
/// (see the module's page); `just_ended` is the task whose outcome was just recorded.
fn drained(store: &dyn QueueStore, just_ended: &Task) -> Option<Task> {
    let summary = store.summary().ok()?;
    let left: usize = [
        TaskStatus::Pending,
        TaskStatus::Running,
        TaskStatus::Blocked,
    ]
    .iter()
    .map(|status| summary.counts.get(status).copied().unwrap_or(0))
    .sum();
    if left > 0 {
        return None;
    }
    let last = store
        .list(&TaskQuery {
            by_finish: true,
            newest_first: true,
            // Tasks without a finishing time (none should be left) sort first on PostgreSQL.
            finished_since: Some(Timestamp::UNIX_EPOCH),
            limit: Some(1),
            ..TaskQuery::default()
        })
        .ok()
        .and_then(|tasks| tasks.into_iter().next())
        .unwrap_or_else(|| just_ended.clone());
    let ended_at = last
        .finished_at
        .map_or_else(|| "?".to_string(), |at| at.to_string());
    let mark = format!("host: the queue drained after this task ended at {ended_at}; ");
    let claim = format!(
        "{mark}announced by {} (pid {}, #{})",
        crate::worker::hostname(),
        std::process::id(),
        CLAIMS.fetch_add(1, Ordering::Relaxed)
    );
    // Should the log be out of reach, announcing twice beats not announcing.
    if store.append_log(&last.id, &claim).is_ok()
        && let Ok((log, _)) = store.read_log(&last.id, 0)
        && log.lines().find(|line| line.starts_with(&mark)) != Some(claim.as_str())
    {
        return None;
    }
    Some(last)
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    use std::net::TcpListener;
    use std::time::Duration;

    use super::*;

    fn task() -> Task {
        serde_json::from_value(serde_json::json!({
            "id": "7",
            "type": "write",
            "description": "Add a README\nwith details",
            "status": "running",
            "priority": 5,
            "maxAttempts": 3,
            "createdAt": "2025-01-01T00:00:00Z",
        }))
        .unwrap()
    }

    #[test]
    fn a_usage_limit_with_a_fallback_says_where_the_task_goes() {
        let until: Timestamp = "2025-06-01T12:00:00Z".parse().unwrap();
        let event = Event::UsageLimit {
            role: "writer".into(),
            until,
            task: task(),
            fallback: vec!["codex-writer".into()],
        };
        assert_eq!(
            event.message().line,
            "role writer reached its usage limit until 2025-06-01T12:00:00Z; task 7 (write: Add \
             a README) goes to role(s) codex-writer meanwhile"
        );
    }

    /// Accepts one request and answers it with `status`; hands back its headers and body.
    fn receive_one(
        listener: TcpListener,
        status: u16,
    ) -> std::thread::JoinHandle<(String, String)> {
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut head = String::new();
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = value.trim().parse().unwrap();
                }
                if line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let mut stream = stream;
            write!(stream, "HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n").unwrap();
            (head, String::from_utf8(body).unwrap())
        })
    }

    fn config(text: &str) -> Config {
        Config::parse("q/host.toml", text).unwrap()
    }

    #[test]
    fn a_usage_limit_names_the_role_the_time_and_the_task() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let heard = receive_one(listener, 200);
        let attention = Attention::new(&config(&format!(
            "[notify]\nevents = [\"usage_limit\"]\n[[notify.webhook]]\nurl = \"http://127.0.0.1:{port}/x\"\n"
        )));
        let until: Timestamp = "2025-06-01T12:00:00Z".parse().unwrap();
        assert_eq!(
            attention.usage_limit("writer", until, &task(), &[]),
            Vec::<String>::new()
        );
        let (head, body) = heard.join().unwrap();
        assert!(head.starts_with("POST /x "), "{head}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["event"], "usage_limit");
        assert_eq!(body["role"], "writer");
        assert_eq!(body["until"], "2025-06-01T12:00:00Z");
        assert_eq!(body["task"]["id"], "7");
        assert_eq!(
            body["message"],
            "role writer reached its usage limit until 2025-06-01T12:00:00Z; task 7 (write: Add \
             a README) waits until then"
        );
    }

    #[test]
    fn an_event_a_sink_does_not_take_is_not_sent_and_a_failure_is_one_line() {
        // Nothing listens on a port just freed: the connection is refused.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let attention = Attention::new(&config(&format!(
            "[notify]\nevents = [\"failed\"]\ntimeout = \"2s\"\n[[notify.webhook]]\nurl = \"http://127.0.0.1:{port}/secret\"\n"
        )));
        let until = Timestamp::now() + Duration::from_secs(60);
        assert!(!attention.wants(EventKind::UsageLimit));
        assert!(
            attention
                .usage_limit("writer", until, &task(), &[])
                .is_empty()
        );
        let mut failed = task();
        failed.status = TaskStatus::Failed;
        failed.error = Some("exit 3".into());
        let lines = attention.announce(&Event::Failed(failed));
        assert_eq!(lines.len(), 1, "{lines:?}");
        let line = &lines[0];
        assert!(
            line.starts_with(&format!(
                "task 7: webhook 1 (127.0.0.1:{port}): notification \"failed\" not sent: "
            )),
            "{line}"
        );
        assert!(!line.contains("secret") && !line.contains('\n'), "{line}");
    }
}
