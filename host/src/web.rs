//! `host serve`: the web dashboard and its JSON API, on the same store as every other command.
//!
//! - `GET /` the page (compiled into the binary; no build step).
//! - `GET /api/status` the same JSON as `host status --json`; `GET /api/stats` as `host stats
//!   --json`.
//! - `GET /api/tasks?status=&type=&worker=&q=&limit=` tasks, newest first (`status=input`: the
//!   running tasks that wait for an answer); `GET /api/tasks/ID` one task;
//!   `GET /api/tasks/ID/log` its log.
//! - `POST /api/tasks` adds a task from the JSON of a task-file entry and answers `{"id": ...}`;
//!   `POST /api/tasks/ID/cancel`, `POST /api/tasks/ID/retry`; `POST /api/pause` and
//!   `POST /api/resume` with `{}`, `{"type": T}` or `{"task": ID}`.
//! - For a task that ran in a git worktree: `GET /api/tasks/ID/diff` its branch and patch;
//!   `POST /api/tasks/ID/merge` with `{"style": "merge" | "squash" | "rebase"}` (409 on a
//!   conflict, which changes nothing and is recorded on the task); `POST /api/tasks/ID/discard`.
//! - For a task waiting for review: `POST /api/tasks/ID/approve`; `POST /api/tasks/ID/reject`
//!   with `{"reason": TEXT}`.
//! - `GET /api/inbox` everything that waits for a person, oldest first, as `host inbox --json`;
//!   for a task whose agent asked a question, `POST /api/tasks/ID/answer` with
//!   `{"option": ID, "fields": {NAME: VALUE}}` (the option may be left out when fields are
//!   given: the question's accepting option is meant), as `host answer` does.
//! - `GET /api/events` server-sent events: a `change` event whenever the status changes.
//!
//! Connections are limited in number and in how long they may stay silent (see
//! [`connections`]); the event streams share one reader of the status, which reads when the
//! queue signals a change (see [`events`]).
//!
//! On PostgreSQL the server opens the queue's store once, at its start, and every request uses
//! it, its small pool of connections serving requests side by side; on SQLite each use opens
//! the store, which costs a few file operations (see [`store`] for why it is not kept). Store
//! calls block: they run on the runtime's blocking threads, never on the threads that serve
//! connections.
//!
//! Nobody but the holder of the token gets in, on loopback too: without `--token` (or
//! `HOST_WEB_TOKEN`) a random one is made at start and printed in the URL to open, as Jupyter
//! does. Opening that URL sets the token as an HttpOnly, SameSite=Strict cookie, so the page, its
//! API calls and its event stream carry it without the page ever seeing it; scripts send
//! `Authorization: Bearer TOKEN`. Requests whose `Host` is not this server's address, a loopback
//! name or an `--allow-host` name are refused (DNS rebinding), as are requests whose `Origin` is
//! another site. State-changing requests must be JSON. Every error is `{"error": ...}` JSON.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use queue::{PauseScope, QueueStore, ShownStatus, Task, TaskQuery};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::cli::Settings;
use crate::commands::status::StatusReport;
use crate::commands::{add, branch, inbox};
use access::Access;
use events::StatusFeed;

pub use connections::Limits;

const PAGE: &str = include_str!("web/page.html");

/// The largest request body taken: a task at [`queue::MAX_TASK_BYTES`] with room for its other
/// fields and for JSON's escapes, so that a task over the limit is refused by the same check,
/// with the same message, as by every other way in.
const MAX_BODY: usize = queue::MAX_TASK_BYTES + queue::MAX_TASK_BYTES / 4;

mod access;
mod connections;
mod events;
mod store;

pub(crate) use store::ServerStore;

/// What the handlers share.
#[derive(Clone)]
struct App {
    settings: Settings,
    store: ServerStore,
    feed: Arc<StatusFeed>,
}

/// Serves until interrupted. `token` is the one every request must carry (one is made when
/// none is given; one given is refused with a [`crate::cli::UsageError`] unless it is at least
/// 16 visible ASCII characters); `allowed_hosts` are host names accepted in `Host` besides
/// loopback names and the bound address; `limits` say how long connections may stay silent.
pub fn serve(
    settings: &Settings,
    addr: SocketAddr,
    token: Option<String>,
    allowed_hosts: Vec<String>,
    limits: Limits,
) -> anyhow::Result<()> {
    // A mistyped token is a usage error, said before anything is opened.
    if let Some(token) = &token {
        access::check_token(token)?;
    }
    // Before anything is served: a queue that cannot be opened is said in one line.
    let store = ServerStore::open(settings)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|err| anyhow::anyhow!("cannot listen on {addr}: {err}"))?;
        let access = Arc::new(Access::new(token, listener.local_addr()?, allowed_hosts)?);
        let feed = StatusFeed::start(settings.clone(), store.clone());
        let app = App {
            settings: settings.clone(),
            store,
            feed: Arc::clone(&feed),
        };
        let router = Router::new()
            .route("/", get(|| async { Html(PAGE) }))
            .route("/api/status", get(status))
            .route("/api/stats", get(stats))
            .route("/api/tasks", get(list_tasks).post(add_task))
            .route("/api/tasks/{id}", get(show_task))
            .route("/api/tasks/{id}/log", get(task_log))
            .route("/api/tasks/{id}/cancel", post(cancel_task))
            .route("/api/tasks/{id}/retry", post(retry_task))
            .route("/api/tasks/{id}/diff", get(task_diff))
            .route("/api/tasks/{id}/merge", post(merge_task))
            .route("/api/tasks/{id}/discard", post(discard_task))
            .route("/api/tasks/{id}/approve", post(approve_task))
            .route("/api/tasks/{id}/reject", post(reject_task))
            .route("/api/tasks/{id}/answer", post(answer_task))
            .route("/api/inbox", get(inbox))
            .route("/api/pause", post(pause))
            .route("/api/resume", post(resume))
            .route("/api/events", get(events))
            .with_state(app)
            .layer(middleware::from_fn_with_state(feed, tell_the_feed))
            .layer(DefaultBodyLimit::max(MAX_BODY))
            .layer(middleware::from_fn_with_state(
                Arc::clone(&access),
                access::guard,
            ))
            .layer(middleware::from_fn(access::json_errors));
        // The first line says where to go; tests read the address and token from it.
        println!("serving the dashboard on {}", access.url());
        connections::serve(listener, router, limits).await;
        Ok(())
    })
}

/// A request error: status and one line.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(err: anyhow::Error) -> Self {
        let status = match err.downcast_ref::<queue::StoreError>() {
            Some(queue::StoreError::NotFound(_)) => StatusCode::NOT_FOUND,
            Some(queue::StoreError::WrongState { .. }) => StatusCode::CONFLICT,
            Some(queue::StoreError::TooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            _ => match err.downcast_ref::<worktrees::Error>() {
                Some(worktrees::Error::Conflict { .. }) => StatusCode::CONFLICT,
                _ => StatusCode::BAD_REQUEST,
            },
        };
        ApiError(status, format!("{err:#}").replace('\n', " "))
    }
}

impl From<queue::StoreError> for ApiError {
    fn from(err: queue::StoreError) -> Self {
        ApiError::from(anyhow::Error::from(err))
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Runs `work` off the server's threads: store calls and git block (a file, a database
/// connection, a large repository). A panic in it is an error answered, not a crash.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| ApiError(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()))?
        .map_err(ApiError::from)
}

/// After a request that changed the queue, the event streams hear of it now rather than at
/// their next slow read: a cancel or a pause rings nothing in the store.
async fn tell_the_feed(
    State(feed): State<Arc<StatusFeed>>,
    request: Request,
    next: Next,
) -> Response {
    let changing = request.method() == Method::POST;
    let response = next.run(request).await;
    if changing && response.status().is_success() {
        feed.changed();
    }
    response
}

async fn status(State(app): State<App>) -> ApiResult<Json<StatusReport>> {
    blocking(move || {
        Ok(Json(
            app.store.with(|s| StatusReport::of(&app.settings, s))??,
        ))
    })
    .await
}

async fn stats(State(app): State<App>) -> ApiResult<Json<crate::commands::stats::Stats>> {
    blocking(move || {
        Ok(Json(app.store.with(|s| {
            crate::commands::stats::collect_from(&app.settings, s)
        })??))
    })
    .await
}

#[derive(Deserialize)]
struct TaskFilter {
    status: Option<String>,
    #[serde(rename = "type")]
    task_type: Option<String>,
    worker: Option<String>,
    q: Option<String>,
    limit: Option<usize>,
    /// The last id of the previous page: tasks older than it.
    before: Option<u64>,
}

async fn list_tasks(
    State(app): State<App>,
    Query(filter): Query<TaskFilter>,
) -> ApiResult<Json<Vec<Task>>> {
    let limit = filter.limit.unwrap_or(200).min(1000);
    let shown: Option<ShownStatus> = filter
        .status
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(str::parse)
        .transpose()
        .map_err(|err: String| ApiError(StatusCode::BAD_REQUEST, err))?;
    // `input` is no status of its own but running tasks that wait for an answer: running tasks
    // are as many as the workers' slots, so all are read and the page cut after the filter.
    let input_only = shown == Some(ShownStatus::Input);
    let query = TaskQuery {
        statuses: shown.map(|s| vec![s.status()]).unwrap_or_default(),
        task_type: filter.task_type,
        worker: filter.worker,
        text: filter.q,
        newest_first: true,
        after_id: filter.before,
        limit: (!input_only).then_some(limit),
        ..TaskQuery::default()
    };
    blocking(move || {
        let mut tasks = app.store.with(|s| s.list(&query))??;
        if input_only {
            tasks.retain(|t| ShownStatus::Input.holds(t));
            tasks.truncate(limit);
        }
        Ok(Json(tasks))
    })
    .await
}

async fn show_task(State(app): State<App>, Path(id): Path<String>) -> ApiResult<Json<Task>> {
    blocking(move || Ok(Json(app.store.with(|s| s.get(&id))??))).await
}

async fn task_log(State(app): State<App>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    blocking(move || {
        let (text, _) = app.store.with(|s| s.read_log(&id, 0))??;
        // The tail is what a page shows.
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(200)..].join("\n");
        Ok(Json(json!({ "id": id, "log": tail })))
    })
    .await
}

async fn add_task(State(app): State<App>, Json(entry): Json<Value>) -> ApiResult<Json<Value>> {
    let task = add::task_from_json(entry).map_err(|err| {
        // JSON of the wrong shape is 422, as the README says; a bad value in the right
        // shape (a duration that does not parse) is 400.
        let status = match err.downcast_ref::<serde_json::Error>() {
            Some(_) => StatusCode::UNPROCESSABLE_ENTITY,
            None => StatusCode::BAD_REQUEST,
        };
        ApiError(status, format!("{err:#}"))
    })?;
    // The task's plugin checks it in a child process: blocking too.
    blocking(move || {
        let added = app
            .store
            .with(|s| add::add_checked(&app.settings, s, vec![task], |_, err| err))??;
        Ok(Json(json!({ "id": added[0].id })))
    })
    .await
}

async fn cancel_task(State(app): State<App>, Path(id): Path<String>) -> ApiResult<Json<Task>> {
    blocking(move || Ok(Json(app.store.with(|s| s.cancel(&id))??))).await
}

async fn retry_task(State(app): State<App>, Path(id): Path<String>) -> ApiResult<Json<Task>> {
    blocking(move || Ok(Json(app.store.with(|s| s.retry(&id))??))).await
}

async fn task_diff(State(app): State<App>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    blocking(move || {
        let (record, patch) = app.store.with(|s| branch::task_patch(s, &id))??;
        Ok(Json(json!({ "worktree": record, "patch": patch })))
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MergeRequest {
    #[serde(default)]
    style: Option<String>,
}

async fn merge_task(
    State(app): State<App>,
    Path(id): Path<String>,
    Json(request): Json<MergeRequest>,
) -> ApiResult<Json<Value>> {
    let style = match request.style.as_deref().unwrap_or("merge") {
        "merge" => worktrees::MergeStyle::Merge,
        "squash" => worktrees::MergeStyle::Squash,
        "rebase" => worktrees::MergeStyle::Rebase,
        other => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("style {other:?}: merge, squash or rebase"),
            ));
        }
    };
    let said = blocking(move || app.store.with(|s| branch::merge_task(s, &id, style))?).await?;
    Ok(Json(json!({ "said": said })))
}

async fn discard_task(State(app): State<App>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let said = blocking(move || app.store.with(|s| branch::discard_task(s, &id))?).await?;
    Ok(Json(json!({ "said": said })))
}

async fn approve_task(State(app): State<App>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let said = blocking(move || app.store.with(|s| branch::approve_task(s, &id))?).await?;
    Ok(Json(json!({ "said": said })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rejection {
    reason: String,
}

async fn reject_task(
    State(app): State<App>,
    Path(id): Path<String>,
    Json(rejection): Json<Rejection>,
) -> ApiResult<Json<Value>> {
    let said = blocking(move || {
        app.store
            .with(|s| branch::reject_task(s, &id, &rejection.reason))?
    })
    .await?;
    Ok(Json(json!({ "said": said })))
}

/// Who answers from the dashboard, as the task's record keeps it: the server knows a token, not
/// a person.
const ANSWERED_BY: &str = "dashboard";

async fn inbox(State(app): State<App>) -> ApiResult<Json<Vec<inbox::InboxItem>>> {
    blocking(move || Ok(Json(app.store.with(inbox::read)??))).await
}

/// Answers the question a running task's agent waits on, as `host answer` does. Refusals: a
/// task that waits for no answer (it never asked, it finished, or it was answered already) is
/// 409, a state the request does not apply to, as for approving a task not in review; an
/// answer that does not fit the question (an option not offered, a field of the wrong type, a
/// required one missing) is 400, a bad value; JSON of the wrong shape is 422. With the
/// question's `askedAt`, an answer meant for an earlier question is refused (409).
async fn answer_task(
    State(app): State<App>,
    Path(id): Path<String>,
    Json(reply): Json<inbox::Reply>,
) -> ApiResult<Json<Value>> {
    let said = blocking(move || {
        app.store
            .with(|s| inbox::answer_task(s, &id, reply, ANSWERED_BY).map_err(ApiError::from))
    })
    .await??;
    Ok(Json(json!({ "said": said })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Scope {
    #[serde(rename = "type")]
    task_type: Option<String>,
    task: Option<String>,
}

impl Scope {
    fn scope(self) -> PauseScope {
        match (self.task_type, self.task) {
            (Some(t), _) => PauseScope::Type(t),
            (None, Some(id)) => PauseScope::Task(id),
            (None, None) => PauseScope::Queue,
        }
    }
}

async fn pause(State(app): State<App>, Json(scope): Json<Scope>) -> ApiResult<Json<Value>> {
    blocking(move || {
        let scope = scope.scope();
        app.store.with(|s| {
            crate::commands::cancel::check_pausable(&app.settings, s, &scope)?;
            anyhow::Ok(s.pause(&scope)?)
        })??;
        Ok(Json(json!({ "paused": true })))
    })
    .await
}

async fn resume(State(app): State<App>, Json(scope): Json<Scope>) -> ApiResult<Json<Value>> {
    blocking(move || {
        app.store.with(|s| s.resume(&scope.scope()))??;
        Ok(Json(json!({ "paused": false })))
    })
    .await
}

/// A `change` event whenever the status (counts, workers, pauses) differs from the last one
/// sent; comments keep the connection alive meanwhile.
async fn events(State(app): State<App>) -> impl IntoResponse {
    app.feed.events()
}
