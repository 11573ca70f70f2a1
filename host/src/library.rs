//! Opening a plugin library and calling its roles: the only code of the host that runs plugin
//! code, and so the only code that knows abi_stable. It runs in child processes only (a handler
//! process, a plugin probe), never in a worker, `host add`, `host serve` or `host mcp` itself,
//! so that a library that aborts or hangs costs its child, not them.
//!
//! A library is judged before it is opened ([`crate::loader::judge`]); one that fails is never
//! opened, so its constructors never run.

use std::path::Path;
use std::time::Duration;

use abi_stable::library::{LibraryError, lib_header_from_path};
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RResult, RStr, RString};
use plugin_api::__private::{
    API_VERSION, Asked, ErrorRecord, HostContext, HostContext_TO, PluginModule_Ref, RoleDescriptor,
    encode_stop_reason,
};
use plugin_api::{Answer, PlanStep, Question, StopReason, Task};
use serde_json::Value;

/// What a worker offers a running handler. The library adapts it to the plugin's ABI.
pub trait TaskHooks: Send + Sync {
    /// The handler reported progress.
    fn progress(&self, percent: u8, message: &str);
    /// The handler wrote a log line.
    fn log(&self, line: &str);
    /// Whether the handler should stop, and why.
    fn stop_reason(&self) -> Option<StopReason>;
    /// The role's settings from `host.toml`.
    fn settings(&self) -> Value {
        Value::Null
    }
    /// The tasks this one comes after.
    fn prerequisites(&self) -> Vec<Task> {
        Vec::new()
    }
    /// The handler reported the plan it follows.
    fn plan(&self, steps: Vec<PlanStep>);
    /// Puts the handler's question to a person; `Err` answers it at once (it could not be
    /// put). [`TaskHooks::answer`] says what became of it.
    fn ask(&self, question: &Question, timeout: std::time::Duration) -> Result<(), Answer>;
    /// What became of the question asked last, once something did (an answer, its timeout,
    /// the task stopping); `None` while it waits. Cheap: called every few milliseconds.
    fn answer(&self) -> Option<Answer>;
    /// When the queue last confirmed the task's lease (see [`crate::worker`]), and how long a
    /// lease lasts: the handler process stops the task on its own when no confirmation comes,
    /// whatever became of the worker. `None` where nobody holds a lease.
    fn lease_confirmed(&self) -> Option<(std::time::Instant, std::time::Duration)> {
        None
    }
}

/// A library that was judged, opened and checked, with its roles.
pub struct OpenLibrary {
    /// The plugin-api version it was built against.
    pub api_version: String,
    /// Its roles, in the order it exports them.
    pub roles: Vec<LoadedRole>,
}

/// Why a library was not opened or not accepted: one line, and for `-v` the long report.
#[derive(Debug)]
pub struct Refusal {
    /// One line.
    pub reason: String,
    /// abi_stable's layout report, when there is one.
    pub detail: Option<String>,
}

impl Refusal {
    fn new(reason: impl Into<String>) -> Refusal {
        Refusal {
            reason: reason.into(),
            detail: None,
        }
    }
}

/// One role of an open library.
#[derive(Clone, Copy)]
pub struct LoadedRole {
    descriptor: &'static RoleDescriptor,
}

impl LoadedRole {
    /// The role's name.
    pub fn name(&self) -> &str {
        self.descriptor.name.as_str()
    }

    /// The task types the role claims.
    pub fn task_types(&self) -> Vec<String> {
        self.descriptor
            .task_types
            .iter()
            .map(|t| t.to_string())
            .collect()
    }

    /// The settings the role declares, as JSON (an array of declarations).
    pub fn settings(&self) -> Value {
        serde_json::from_str(self.descriptor.settings.as_str()).unwrap_or(Value::Array(Vec::new()))
    }

    /// Asks the role whether it accepts the task; `Err` carries its reason.
    pub fn validate(&self, task: &Task) -> Result<(), String> {
        let json = serde_json::to_string(task).expect("task serializes");
        match self.descriptor.handler.validate(RStr::from_str(&json)) {
            RResult::ROk(()) => Ok(()),
            RResult::RErr(reason) => Err(reason.into_string()),
        }
    }

    /// Asks the role whether it can run with these settings; `Err` carries its reason.
    pub fn check_settings(&self, settings: &Value) -> Result<(), String> {
        let json = settings.to_string();
        match self
            .descriptor
            .handler
            .check_settings(RStr::from_str(&json))
        {
            RResult::ROk(()) => Ok(()),
            RResult::RErr(reason) => Err(reason.into_string()),
        }
    }

    /// Runs the role's handler on the task. Panics were already caught on the plugin side.
    pub fn handle(&self, task: &Task, hooks: &dyn TaskHooks) -> Result<Value, ErrorRecord> {
        let json = serde_json::to_string(task).expect("task serializes");
        let bridge = HooksBridge(hooks);
        let ctx = HostContext_TO::from_ptr(abi_stable::sabi_types::RRef::new(&bridge), TD_Opaque);
        match self.descriptor.handler.handle(RStr::from_str(&json), ctx) {
            RResult::ROk(text) => serde_json::from_str(text.as_str()).map_err(|err| ErrorRecord {
                message: format!(
                    "role {} returned a result that is not JSON: {err}",
                    self.name()
                ),
                result: None,
                retryable: false,
                snooze: None,
            }),
            RResult::RErr(text) => Err(ErrorRecord::from_json(text.as_str())),
        }
    }
}

struct HooksBridge<'a>(&'a dyn TaskHooks);

impl HostContext for HooksBridge<'_> {
    fn progress(&self, percent: u8, message: RStr<'_>) {
        self.0.progress(percent, message.as_str());
    }

    fn log(&self, line: RStr<'_>) {
        self.0.log(line.as_str());
    }

    fn stop_reason(&self) -> u8 {
        encode_stop_reason(self.0.stop_reason())
    }

    fn settings(&self) -> RString {
        self.0.settings().to_string().into()
    }

    fn prerequisites(&self) -> RString {
        serde_json::to_string(&self.0.prerequisites())
            .expect("tasks serialize")
            .into()
    }

    fn plan(&self, steps: RStr<'_>) {
        // A plan that cannot be read is left out: it is shown, never acted on.
        if let Ok(steps) = serde_json::from_str(steps.as_str()) {
            self.0.plan(steps);
        }
    }

    fn ask(&self, question: RStr<'_>) -> RString {
        let answer = match serde_json::from_str::<Asked>(question.as_str()) {
            Ok(asked) => match self
                .0
                .ask(&asked.question, Duration::from_secs(asked.timeout_secs))
            {
                Ok(()) => loop {
                    if let Some(answer) = self.0.answer() {
                        break answer;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                },
                Err(answer) => answer,
            },
            Err(err) => Answer::Failed {
                reason: format!("the plugin's question could not be read: {err}"),
            },
        };
        serde_json::to_string(&answer)
            .expect("an answer serializes")
            .into()
    }
}

/// Judges the library, then opens and checks it (abi_stable's layout and version check) and
/// lists its roles. Libraries stay loaded for the life of the process (abi_stable never unloads
/// them), which is the life of the child that opened it.
pub fn open(path: &Path) -> Result<OpenLibrary, Refusal> {
    let resolved = crate::loader::judge(path).map_err(Refusal::new)?;
    let header = lib_header_from_path(&resolved).map_err(|err| describe_error(err, None))?;
    let api_version = header.version_strings().version.to_string();
    let module = header
        .init_root_module::<PluginModule_Ref>()
        .map_err(|err| describe_error(err, Some(api_version.clone())))?;
    let roles = module
        .roles()
        .as_slice()
        .iter()
        .map(|descriptor| LoadedRole { descriptor })
        .collect();
    Ok(OpenLibrary { api_version, roles })
}

/// Opens a library and finds one role in it, or says in one line why not.
pub fn open_role(path: &Path, name: &str) -> Result<LoadedRole, String> {
    let library = open(path).map_err(|r| format!("plugin {}: {}", path.display(), r.reason))?;
    library
        .roles
        .into_iter()
        .find(|r| r.name() == name)
        .ok_or_else(|| format!("plugin {} provides no role {name:?}", path.display()))
}

fn describe_error(err: LibraryError, found: Option<String>) -> Refusal {
    let found = found.unwrap_or_else(|| "?".into());
    match err {
        LibraryError::OpenError { err, .. } => Refusal::new(format!(
            "not a loadable library: {}",
            first_line(&err.to_string())
        )),
        LibraryError::GetSymbolError { .. } => {
            Refusal::new("not a plugin: it exports no plugin-api root module")
        }
        LibraryError::IncompatibleVersionNumber {
            expected_version,
            actual_version,
            ..
        } => Refusal::new(format!(
            "built against plugin-api {actual_version}, incompatible with this host's plugin-api \
             {expected_version}; rebuild the plugin against plugin-api {expected_version}"
        )),
        LibraryError::AbiInstability(report) => Refusal {
            reason: format!(
                "built against an incompatible plugin-api (version {found}, layout differs from \
                 this host's plugin-api {API_VERSION}); rebuild the plugin (-v shows the layout report)"
            ),
            detail: Some(report.to_string()),
        },
        LibraryError::InvalidAbiHeader(_) | LibraryError::InvalidCAbi { .. } => {
            Refusal::new("built with an incompatible abi_stable or Rust C ABI; rebuild the plugin")
        }
        LibraryError::RootModule { .. } => {
            Refusal::new("the plugin panicked or failed while listing its roles")
        }
        other => Refusal::new(first_line(&other.to_string())),
    }
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().trim().to_string()
}

/// The plugin-api version of this host.
pub fn host_api_version() -> &'static str {
    API_VERSION
}
