//! `host inbox`: everything that waits for a person, oldest first (an agent's question, a change
//! to review, a merge that conflicted, a role out of quota); and `host answer`: answering an
//! agent's question, which resumes it.

use anyhow::bail;
use jiff::Timestamp;
use queue::{
    Input, InputAnswer, Question, QueueStore, Store, Task, TaskQuery, TaskStatus, rfc3339_millis,
};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::cli::{Settings, UsageError};
use crate::commands::{ago, one_line, open_store, outln, paint, print_json};

/// One thing that waits for a person; also the JSON of `host inbox --json`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InboxItem {
    /// What waits: `input` (an agent's question), `review`, `conflict` or `usage_limit`.
    pub kind: &'static str,
    /// The task it is about.
    pub task: String,
    /// Since when it waits.
    #[serde(with = "rfc3339_millis")]
    pub since: Timestamp,
    /// What it is, in one line.
    pub title: String,
    /// The command that settles it.
    pub answer: String,
    /// The question, for `input`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<Input>,
}

/// The running tasks whose agent waits for a person's answer. Running tasks are as many as the
/// workers' slots: all of them are read.
pub fn asking(store: &Store) -> Result<Vec<Task>, queue::StoreError> {
    let running = TaskQuery {
        statuses: vec![TaskStatus::Running],
        ..TaskQuery::default()
    };
    let mut tasks = store.list(&running)?;
    tasks.retain(|t| t.waiting_input().is_some());
    Ok(tasks)
}

/// Everything that waits for a person, oldest first.
pub fn read(store: &Store) -> anyhow::Result<Vec<InboxItem>> {
    let mut items = Vec::new();
    for task in asking(store)? {
        if let Some(input) = task.waiting_input() {
            items.push(InboxItem {
                kind: "input",
                since: input.asked_at,
                title: match &input.question.tool {
                    Some(tool) => format!("{} ({tool})", input.question.title),
                    None => input.question.title.clone(),
                },
                answer: answer_hint(&task.id, &input.question),
                input: Some(input.clone()),
                task: task.id,
            });
        }
    }
    let review = TaskQuery {
        statuses: vec![TaskStatus::Review],
        ..TaskQuery::default()
    };
    for task in store.list(&review)? {
        items.push(InboxItem {
            kind: "review",
            since: last_ended(&task),
            title: format!("{}: {}", task.task_type, about(&task)),
            answer: format!("host approve {0} / host reject {0} --reason TEXT", task.id),
            input: None,
            task: task.id,
        });
    }
    let conflicts = TaskQuery {
        in_conflict: true,
        ..TaskQuery::default()
    };
    for task in store.list(&conflicts)? {
        let Some(branch) = &task.branch_state else {
            continue;
        };
        items.push(InboxItem {
            kind: "conflict",
            since: branch.at,
            title: format!(
                "merging into {} conflicts in {}",
                branch.into.as_deref().unwrap_or("its base"),
                branch.files.join(", ")
            ),
            answer: format!("merge it by hand, or host discard {}", task.id),
            input: None,
            task: task.id,
        });
    }
    let now = Timestamp::now();
    for limit in crate::usage_limits::in_force(store, now)? {
        items.push(InboxItem {
            kind: "usage_limit",
            since: store.get(&limit.task).map_or(now, |t| last_ended(&t)),
            title: format!(
                "role {} is out of quota until {}: {}",
                limit.role,
                super::clock(limit.until, now),
                one_line(&limit.reason, 80)
            ),
            answer: format!(
                "waits until then (or give role {} a fallback role)",
                limit.role
            ),
            input: None,
            task: limit.task,
        });
    }
    items.sort_by_key(|item| item.since);
    Ok(items)
}

/// When the task's last attempt ended (its last change of state a person waits on).
fn last_ended(task: &Task) -> Timestamp {
    task.history
        .last()
        .and_then(|a| a.finished_at)
        .or(task.finished_at)
        .unwrap_or(task.created_at)
}

/// The task's description, else its id.
fn about(task: &Task) -> String {
    task.description
        .as_deref()
        .map(|d| one_line(d, 60))
        .unwrap_or_else(|| format!("task {}", task.id))
}

/// The command that answers `question` of task `id`.
pub fn answer_hint(id: &str, question: &Question) -> String {
    let options: Vec<&str> = question.options.iter().map(|o| o.id.as_str()).collect();
    let fields = if question.fields.is_empty() {
        String::new()
    } else {
        " --field NAME=VALUE".to_string()
    };
    format!("host answer {id} {}{fields}", options.join("|"))
}

/// `host inbox`.
pub fn run(settings: &Settings, json: bool) -> anyhow::Result<()> {
    let store = open_store(settings)?;
    let items = read(&store)?;
    if json {
        return print_json(&items);
    }
    if items.is_empty() {
        outln!("Nothing waits for a person.");
        return Ok(());
    }
    let now = Timestamp::now();
    let header = format!(
        "{:<12} {:<6} {:>8}  {:<48} ANSWER WITH",
        "WAITS FOR", "TASK", "SINCE", "WHAT"
    );
    outln!("{}", paint::heading(&header));
    for item in &items {
        outln!(
            "{:<12} {:<6} {}  {:<48} {}",
            item.kind,
            item.task,
            paint::dim(&format!("{:>8}", ago(item.since, now))),
            one_line(&item.title, 48),
            item.answer
        );
        if let Some(detail) = item
            .input
            .as_ref()
            .and_then(|i| i.question.detail.as_deref())
        {
            outln!("{:<12} {}", "", paint::dim(&one_line(detail, 100)));
        }
    }
    Ok(())
}

/// Who answers from this terminal, as the task's record keeps it.
pub fn user() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .unwrap_or_else(|_| "someone".into());
    format!("{user}@{}", crate::worker::hostname())
}

/// An answer to a running task's question, as the command line, the dashboard and MCP give it.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Reply {
    /// The option chosen; when `None`, the option that accepts a form, for `fields`.
    #[serde(default)]
    pub option: Option<String>,
    /// Values of the question's form, by field name.
    #[serde(default)]
    pub fields: Map<String, Value>,
    /// When the question answered was asked (its `askedAt`), when the answerer knows: a newer
    /// question is then never answered by mistake.
    #[serde(default, with = "rfc3339_millis::option")]
    pub asked_at: Option<Timestamp>,
}

/// Answers the question task `id` waits for with `reply`, recording `by`; says what became of
/// it, in one line.
pub fn answer_task(store: &Store, id: &str, reply: Reply, by: &str) -> anyhow::Result<String> {
    let Reply {
        option,
        fields,
        asked_at,
    } = reply;
    let option = match option {
        Some(option) => option,
        None => {
            let task = store.get(id)?;
            let input = queue::lifecycle::waiting_input(&task, Timestamp::now())?;
            let accept = input
                .question
                .options
                .iter()
                .find(|o| o.kind.as_deref() == Some("accept"));
            match accept {
                Some(accept) if !fields.is_empty() => accept.id.clone(),
                _ => {
                    let ids: Vec<&str> = input
                        .question
                        .options
                        .iter()
                        .map(|o| o.id.as_str())
                        .collect();
                    return Err(UsageError(format!(
                        "task {id}: name one of the options offered: {}",
                        ids.join(", ")
                    ))
                    .into());
                }
            }
        }
    };
    let answer = InputAnswer {
        option: option.clone(),
        fields,
        by: Some(by.to_string()),
        at: Timestamp::now(),
    };
    store.answer(id, answer, asked_at)?;
    Ok(format!(
        "task {id}: answered {option}; its worker takes the answer within a second"
    ))
}

/// `host answer ID [OPTION] [--field NAME=VALUE]... [--text TEXT]`.
pub fn answer(
    settings: &Settings,
    id: &str,
    option: Option<&str>,
    given: &[String],
    text: Option<&str>,
) -> anyhow::Result<()> {
    let store = open_store(settings)?;
    let mut fields = Map::new();
    if !given.is_empty() || text.is_some() {
        let task = store.get(id)?;
        let asked = &queue::lifecycle::waiting_input(&task, Timestamp::now())?
            .question
            .fields;
        for pair in given {
            let (name, value) = pair
                .split_once('=')
                .ok_or_else(|| UsageError(format!("--field {pair:?}: give it as NAME=VALUE")))?;
            let kind = asked
                .iter()
                .find(|f| f.name == name)
                .map_or("string", |f| f.kind.as_str());
            fields.insert(name.to_string(), typed(value, kind));
        }
        if let Some(text) = text {
            // The question's text field: its only one, or its first string field.
            let Some(field) = asked.iter().find(|f| f.kind == "string") else {
                bail!("task {id}: its question asks for no text (answer with one of its options)");
            };
            fields.insert(field.name.clone(), Value::String(text.to_string()));
        }
    }
    let reply = Reply {
        option: option.map(String::from),
        fields,
        asked_at: None,
    };
    outln!("{}", answer_task(&store, id, reply, &user())?);
    Ok(())
}

/// A value given on the command line, as the field's type reads it; left as text when it does
/// not read so (the answer is then refused naming the type).
fn typed(value: &str, kind: &str) -> Value {
    let parsed = match kind {
        "boolean" => value.parse::<bool>().ok().map(Value::from),
        "integer" => value.parse::<i64>().ok().map(Value::from),
        "number" => value.parse::<f64>().ok().map(Value::from),
        _ => None,
    };
    parsed.unwrap_or_else(|| Value::String(value.to_string()))
}
