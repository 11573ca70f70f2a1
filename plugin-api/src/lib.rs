//! Everything a role plugin author needs, and nothing else.
//!
//! A plugin is a `cdylib` that provides one or more **roles**. A role has a name (`deployer`),
//! claims some task types (`deploy`) and handles one [`Task`] at a time with a [`Context`] from
//! the host, returning a JSON result or a [`HandlerError`]. The author implements the plain
//! [`Role`] trait and calls [`export_plugin!`] once; the host finds the library on its plugin
//! path, checks that it was built against a compatible plugin-api, and runs the role's handler
//! for each task it claims.
//!
//! ```no_run
//! use plugin_api::{Context, HandlerError, Role, Task, Value, json};
//!
//! struct Noop;
//!
//! impl Role for Noop {
//!     fn name(&self) -> &str {
//!         "noop"
//!     }
//!     fn task_types(&self) -> Vec<String> {
//!         vec!["noop".into()]
//!     }
//!     fn handle(&self, task: &Task, _ctx: &Context<'_>) -> Result<Value, HandlerError> {
//!         Ok(json!({ "id": task.id }))
//!     }
//! }
//!
//! plugin_api::export_plugin!(Noop);
//! ```
//!
//! A library whose roles live in several modules can register each where it is defined with
//! [`register_role!`] and call `export_plugin!()` with no arguments in `lib.rs`.
//!
//! # What the host guarantees
//!
//! - A panic inside [`Role::handle`] or [`Role::validate`] is caught inside the plugin (in the
//!   code that [`export_plugin!`] generates) and fails that task with the panic message.
//! - The task reaches the handler as JSON text and is decoded on the plugin side, so fields added
//!   to [`Task`] in later versions never break a built plugin.
//!
//! # Versioning
//!
//! The crate version is checked when a plugin is loaded (abi_stable's rule): while the version is
//! `0.x`, a host refuses a plugin built against an older minor version, and any change of the
//! major version is refused. Bump the minor version whenever the root module or the traits in
//! the hidden FFI layer change shape (0.2 added the host calls behind [`Context::settings`] and
//! [`Context::prerequisites`]; 0.3 [`Role::check_settings`]; 0.4 [`Role::settings`]; 0.5
//! [`Context::ask`] and [`Context::plan`]). Adding a
//! field to a `Task` or to what a [`HandlerError`] carries (such as its [`Snooze`]) needs no
//! bump: both cross the boundary as JSON, and an older host reads what it knows.

use std::panic::{AssertUnwindSafe, catch_unwind};

pub use serde_json::{self, Value, json};
/// A point in time, as [`Task`] and [`Attempt`] hold them (jiff's `Timestamp`).
pub use task_model::Timestamp;
pub use task_model::{
    Attempt, BranchOutcome, BranchState, InputField, InputOption, PlanStep, Question, Review, Task,
    TaskStatus, Verdict, checklist,
};

#[doc(hidden)]
pub mod __private;
mod ffi;

/// A role: a name, the task types it claims, and the handler that runs each task.
///
/// Implementations must be `Send + Sync`. A worker with `--concurrency N` runs N handler
/// processes, each with its own instance of the role and one task at a time: what a role keeps
/// (a cache, a connection pool) is per slot, never shared between them. A handler may still
/// call its [`Context`] from threads it starts.
pub trait Role: Send + Sync + 'static {
    /// The name used with `host --role NAME`.
    fn name(&self) -> &str;

    /// The task types this role claims.
    fn task_types(&self) -> Vec<String>;

    /// Checks a task before it is added (`host add`), so bad input is refused at once rather than
    /// failing later in a worker. The default accepts every task.
    fn validate(&self, task: &Task) -> Result<(), String> {
        let _ = task;
        Ok(())
    }

    /// The settings the role accepts in its table in `host.toml`, beside the host's own keys
    /// (`handler`, `types`, `timeout`, ...): the host refuses any other key, or a value of the
    /// wrong type, naming the file and line, and gives the handler each setting's default when
    /// the table leaves it out. The default accepts none.
    fn settings(&self) -> Vec<Setting> {
        Vec::new()
    }

    /// Checks the role's settings (its table in `host.toml`, as [`Context::settings`] gives
    /// them; `null` when it has none) and whatever they rely on, such as a program on `PATH`,
    /// when a worker starts. `Err` refuses to start the worker with that reason, so that a
    /// misconfigured role fails once, at start, rather than failing every task it claims. The
    /// default accepts any settings.
    fn check_settings(&self, settings: &Value) -> Result<(), String> {
        let _ = settings;
        Ok(())
    }

    /// Runs one task. `Ok` completes it with that JSON result; `Err` fails it.
    fn handle(&self, task: &Task, ctx: &Context<'_>) -> Result<Value, HandlerError>;
}

/// A setting a role accepts in its `host.toml` table (see [`Role::settings`]):
///
/// ```
/// use plugin_api::{Setting, SettingKind};
///
/// let greeting = Setting::new("greeting", SettingKind::String, "What to say").with_default("hello");
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Setting {
    /// The key in the role's table.
    pub name: String,
    /// What its value must be.
    pub kind: SettingKind,
    /// The value the handler gets when the table leaves it out; `None` leaves it out too.
    pub default: Option<Value>,
    /// One line for people, shown when a key is refused.
    pub help: String,
}

/// What a [`Setting`]'s value must be, as TOML writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SettingKind {
    /// `"text"`.
    String,
    /// `42`.
    Integer,
    /// `4.2` or `42`.
    Number,
    /// `true` or `false`.
    Boolean,
    /// `["a", "b"]`: an array of strings.
    List,
    /// `{ a = 1 }`: a table.
    Table,
    /// Anything.
    Any,
}

impl SettingKind {
    /// The name the host's messages use.
    pub fn as_str(self) -> &'static str {
        match self {
            SettingKind::String => "string",
            SettingKind::Integer => "integer",
            SettingKind::Number => "number",
            SettingKind::Boolean => "boolean",
            SettingKind::List => "list",
            SettingKind::Table => "table",
            SettingKind::Any => "any",
        }
    }
}

impl Setting {
    /// A setting with no default.
    pub fn new(name: impl Into<String>, kind: SettingKind, help: impl Into<String>) -> Setting {
        Setting {
            name: name.into(),
            kind,
            default: None,
            help: help.into(),
        }
    }

    /// Gives the setting a default.
    pub fn with_default(mut self, value: impl Into<Value>) -> Setting {
        self.default = Some(value.into());
        self
    }

    /// The declaration as the host reads it.
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "kind": self.kind.as_str(),
            "default": self.default,
            "help": self.help,
        })
    }
}

/// Why a handler failed, as recorded on the task.
#[derive(Clone, Debug, PartialEq)]
pub struct HandlerError {
    /// One line saying what went wrong; becomes the task's `error`.
    pub message: String,
    /// Optional detail kept as the task's `result` (an exit code, an output tail, ...).
    pub result: Option<Value>,
    /// Whether another attempt could succeed (a flaky network, a busy resource).
    pub retryable: bool,
    /// Put the task off instead of failing it: see [`HandlerError::snooze_until`].
    pub snooze: Option<Snooze>,
}

/// A handler's request to put its task off: the attempt is not counted and the task waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Snooze {
    /// The task is not claimed again before this time.
    pub until: Timestamp,
    /// The account the role runs under is out of quota until then (a subscription's usage
    /// window): the role's workers stop claiming until `until`, and the role's `fallback`
    /// roles take its tasks meanwhile.
    pub usage_limit: bool,
}

impl HandlerError {
    /// A failure with a message only, not worth retrying.
    pub fn new(message: impl Into<String>) -> Self {
        HandlerError {
            message: message.into(),
            result: None,
            retryable: false,
            snooze: None,
        }
    }

    /// Puts the task off until `until` instead of failing it: it goes back to the queue with
    /// its attempt not counted, and no worker claims it before then. The message says why.
    pub fn snooze_until(mut self, until: Timestamp) -> Self {
        self.snooze = Some(Snooze {
            until,
            usage_limit: false,
        });
        self
    }

    /// Puts the task off for `wait` from now: [`HandlerError::snooze_until`].
    pub fn snooze_for(self, wait: std::time::Duration) -> Self {
        let until = Timestamp::now().checked_add(wait).unwrap_or(Timestamp::MAX);
        self.snooze_until(until)
    }

    /// The role's account is out of quota until `until` (a CLI's usage limit): the task is
    /// snoozed until then, and the role's workers stop claiming until then too (every task
    /// would meet the same limit), handing its tasks to the role's `fallback` meanwhile.
    pub fn usage_limit(mut self, until: Timestamp) -> Self {
        self.snooze = Some(Snooze {
            until,
            usage_limit: true,
        });
        self
    }

    /// Attaches detail that is recorded as the task's `result`.
    pub fn with_result(mut self, result: Value) -> Self {
        self.result = Some(result);
        self
    }

    /// Marks the failure as worth another attempt (a flaky network, a busy resource): the task
    /// goes back to the queue after a backoff while it has attempts left, instead of failing.
    pub fn retryable(mut self) -> Self {
        self.retryable = true;
        self
    }
}

impl From<String> for HandlerError {
    fn from(message: String) -> Self {
        HandlerError::new(message)
    }
}

impl From<&str> for HandlerError {
    fn from(message: &str) -> Self {
        HandlerError::new(message)
    }
}

impl From<std::io::Error> for HandlerError {
    fn from(err: std::io::Error) -> Self {
        HandlerError::new(err.to_string())
    }
}

impl From<serde_json::Error> for HandlerError {
    fn from(err: serde_json::Error) -> Self {
        HandlerError::new(err.to_string())
    }
}

/// What became of a [`Question`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "answer", rename_all = "camelCase")]
pub enum Answer {
    /// A person chose `option` (the id of one of the question's options), with values for the
    /// question's fields.
    #[serde(rename_all = "camelCase")]
    Chosen {
        /// The option's id.
        option: String,
        /// The fields' values, by name.
        #[serde(default)]
        fields: serde_json::Map<String, Value>,
        /// Who answered, when known.
        #[serde(default)]
        by: Option<String>,
    },
    /// Nobody answered within the question's timeout.
    TimedOut,
    /// The task is stopping (cancelled, out of time, its worker shutting down) before an
    /// answer came: see [`Context::stop_reason`].
    Stopped,
    /// The question could not be put to anyone (the queue refused or could not be reached):
    /// why, in one line.
    Failed {
        /// Why.
        reason: String,
    },
}

/// Why the host asks a handler to stop early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The orchestrator cancelled the task.
    Cancelled,
    /// The task ran past its timeout.
    TimedOut,
    /// The worker is shutting down (Ctrl+C); the task will be returned to the queue.
    Shutdown,
}

/// What the host offers a running handler: progress, log lines, and whether to stop.
///
/// Calls are cheap and thread-safe; a handler may call them from threads it spawns.
pub struct Context<'a> {
    host: ffi::HostContextRef<'a>,
}

impl Context<'_> {
    /// Reports progress, 0 to 100 (larger values are capped), with a short message that
    /// `host status` and `host watch` show beside the worker.
    pub fn progress(&self, percent: u8, message: &str) {
        self.host.progress(percent.min(100), message.into());
    }

    /// Writes one line to the task's log.
    pub fn log(&self, line: &str) {
        self.host.log(line.into());
    }

    /// Why the handler should stop, if it should.
    pub fn stop_reason(&self) -> Option<StopReason> {
        ffi::decode_stop_reason(self.host.stop_reason())
    }

    /// True once the handler should stop: the task was cancelled, it ran past its time limit,
    /// or the worker is shutting down ([`Context::stop_reason`] says which). A long-running
    /// handler should check it and return early; one that does not is killed a few seconds
    /// later.
    pub fn should_stop(&self) -> bool {
        self.stop_reason().is_some()
    }

    /// The old name of [`Context::should_stop`], which it is: true on a timeout or a shutdown
    /// as well as on a cancel.
    #[deprecated(since = "0.4.0", note = "use `should_stop`, which says what it means")]
    pub fn is_cancelled(&self) -> bool {
        self.should_stop()
    }

    /// The role's settings: its table in the queue's `host.toml` (for example
    /// `[roles.writer] agent = "copilot"`), as JSON; `null` when the role has none.
    pub fn settings(&self) -> Value {
        serde_json::from_str(self.host.settings().as_str()).unwrap_or(Value::Null)
    }

    /// Shows the plan the handler follows, each step with its state, while the task runs: `host
    /// show` and the dashboard print it as a checklist that updates as it changes. Replaces the
    /// plan reported before.
    pub fn plan(&self, steps: &[PlanStep]) {
        let json = serde_json::to_string(steps).expect("a plan serializes");
        self.host.plan(json.as_str().into());
    }

    /// Puts `question` to a person and waits for the answer: the task is listed as `input`
    /// (its worker's slot and lease held) until someone answers it with `host answer`, the
    /// dashboard or MCP, `timeout` passes ([`Answer::TimedOut`]), or the task must stop. Time
    /// spent waiting does not count against the task's timeout. Blocks the calling thread; a
    /// task asks one question at a time (another asked from another thread replaces it).
    pub fn ask(&self, question: &Question, timeout: std::time::Duration) -> Answer {
        let asked = __private::Asked {
            question: question.clone(),
            timeout_secs: timeout.as_secs().max(1),
        };
        let json = serde_json::to_string(&asked).expect("a question serializes");
        let reply = self.host.ask(json.as_str().into());
        serde_json::from_str(reply.as_str()).unwrap_or_else(|err| Answer::Failed {
            reason: format!("the host's answer could not be read: {err}"),
        })
    }

    /// The tasks this one comes after, whole, with their results: those of its `after`
    /// (completed), then those of its `afterAny` (finished whatever their outcome: see each
    /// one's `status` and `error`). One purged from the queue since is left out.
    pub fn prerequisites(&self) -> Vec<Task> {
        serde_json::from_str(self.host.prerequisites().as_str()).unwrap_or_default()
    }
}

/// Turns a panic payload into the message it carried.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}

/// Runs `f`, turning a panic into an error that names it.
fn catch_panic<T>(
    what: &str,
    f: impl FnOnce() -> Result<T, HandlerError>,
) -> Result<T, HandlerError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        Err(HandlerError::new(format!(
            "{what} panicked: {}",
            panic_message(payload.as_ref())
        )))
    })
}

/// Registers a role with the library's export list from the module where it is defined.
///
/// Use it when a library's roles are spread over several modules; `export_plugin!()` in
/// `lib.rs` then exports every registered role. The registry lives inside each library (it does
/// not cross the library boundary), so one library never sees another's roles.
#[macro_export]
macro_rules! register_role {
    ($role:expr) => {
        $crate::__private::inventory::submit! {
            $crate::__private::RoleRegistration::new(|| ::std::boxed::Box::new($role))
        }
    };
}

/// Exports the library's roles to the host: the roles named in the call, then every role
/// registered with [`register_role!`]. Call it exactly once per plugin library.
#[macro_export]
macro_rules! export_plugin {
    ($($role:expr),* $(,)?) => {
        const _: () = {
            fn listed_roles() -> ::std::vec::Vec<::std::boxed::Box<dyn $crate::Role>> {
                ::std::vec![$(::std::boxed::Box::new($role) as ::std::boxed::Box<dyn $crate::Role>),*]
            }

            extern "C" fn load_root_module() -> $crate::__private::RootModuleResult {
                $crate::__private::load_root_module(listed_roles)
            }

            // The symbol abi_stable's loader looks for; `__private` checks at test time that the
            // name is the one abi_stable expects.
            #[unsafe(export_name = "_1as_0lib_1header_0root_bmodule_bloader")]
            static LIB_HEADER: $crate::__private::LibHeader =
                $crate::__private::lib_header(load_root_module);
        };
    };
}
