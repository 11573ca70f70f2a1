//! Support for the export macros and for the host's loader. Not part of the authoring surface:
//! nothing here is covered by semver for plugin authors.

use abi_stable::{
    library::{
        CheckTypeLayout, LibHeader as AbiLibHeader, RootModuleResult as AbiRootModuleResult,
    },
    prefix_type::PrefixTypeTrait,
    sabi_trait::TD_Opaque,
    std_types::{RBox, RBoxError, RErr, ROk, RResult, RSlice, RStr, RString},
};
use serde_json::{Value, json};

pub use abi_stable::library::{__call_root_module_loader, LibHeader, RootModuleResult};
pub use abi_stable::std_types::RResult as FfiResult;
pub use inventory;

pub use crate::ffi::{
    HostContext, HostContext_TO, HostContextRef, PluginModule, PluginModule_Ref, RoleDescriptor,
    RoleHandler, RoleHandler_TO, decode_stop_reason, encode_stop_reason,
};
use crate::{Context, HandlerError, Role, Setting, Task, catch_panic};

/// A role registered with `register_role!`, built when the library is loaded.
pub struct RoleRegistration {
    make: fn() -> Box<dyn Role>,
}

impl RoleRegistration {
    /// Wraps the constructor that `register_role!` generates.
    pub const fn new(make: fn() -> Box<dyn Role>) -> Self {
        RoleRegistration { make }
    }
}

inventory::collect!(RoleRegistration);

/// The header abi_stable's loader reads from a plugin library.
pub const fn lib_header(load: extern "C" fn() -> AbiRootModuleResult) -> AbiLibHeader {
    // SAFETY: `from_constructor` requires that `load` returns a root module of type
    // `PluginModule_Ref`. It is only called with the function `export_plugin!` generates, whose
    // body is `load_root_module`, which returns exactly that module through abi_stable's own
    // `__call_root_module_loader` (the same call `#[export_root_module]` expands to).
    unsafe { AbiLibHeader::from_constructor::<PluginModule_Ref>(load, CheckTypeLayout::Yes) }
}

/// Builds the roles an `export_plugin!` call lists.
pub type ListedRoles = fn() -> Vec<Box<dyn Role>>;

/// Builds the library's root module from the listed and registered roles. Panics while building
/// a role are caught by abi_stable and reported to the host as a load error.
pub fn load_root_module(listed: ListedRoles) -> AbiRootModuleResult {
    // `__call_root_module_loader` takes a plain fn pointer, so the listed roles travel through a
    // thread-local for the duration of the call.
    thread_local! {
        static LISTED: std::cell::Cell<Option<ListedRoles>> =
            const { std::cell::Cell::new(None) };
    }
    fn build() -> Result<PluginModule_Ref, RBoxError> {
        let listed = LISTED
            .with(|cell| cell.get())
            .map(|f| f())
            .unwrap_or_default();
        let registered = inventory::iter::<RoleRegistration>().map(|reg| (reg.make)());
        let roles: Vec<RoleDescriptor> =
            listed.into_iter().chain(registered).map(describe).collect();
        let roles = RSlice::from_slice(Vec::leak(roles));
        Ok(PluginModule { roles }.leak_into_prefix())
    }
    LISTED.with(|cell| cell.set(Some(listed)));
    __call_root_module_loader(build)
}

fn describe(role: Box<dyn Role>) -> RoleDescriptor {
    RoleDescriptor {
        name: role.name().into(),
        task_types: role.task_types().into_iter().map(RString::from).collect(),
        settings: Value::Array(role.settings().iter().map(Setting::to_json).collect())
            .to_string()
            .into(),
        handler: RoleHandler_TO::from_value(RoleAdapter(role), TD_Opaque),
    }
}

/// The plugin side of a role: decodes the task, runs the author's code, catches panics.
struct RoleAdapter(Box<dyn Role>);

impl RoleHandler for RoleAdapter {
    fn validate(&self, task_json: RStr<'_>) -> RResult<(), RString> {
        let outcome = decode_task(task_json)
            .and_then(|task| catch_panic("validate", || Ok(self.0.validate(&task)?)));
        match outcome {
            Ok(()) => ROk(()),
            Err(err) => RErr(err.message.into()),
        }
    }

    fn check_settings(&self, settings_json: RStr<'_>) -> RResult<(), RString> {
        let settings = serde_json::from_str(settings_json.as_str()).unwrap_or(Value::Null);
        match catch_panic("check_settings", || Ok(self.0.check_settings(&settings)?)) {
            Ok(()) => ROk(()),
            Err(err) => RErr(err.message.into()),
        }
    }

    fn handle(&self, task_json: RStr<'_>, ctx: HostContextRef<'_>) -> RResult<RString, RString> {
        let ctx = Context { host: ctx };
        let outcome = decode_task(task_json)
            .and_then(|task| catch_panic("handler", || self.0.handle(&task, &ctx)));
        match outcome {
            Ok(value) => ROk(value.to_string().into()),
            Err(err) => RErr(ErrorRecord::from(err).to_json().into()),
        }
    }
}

fn decode_task(task_json: RStr<'_>) -> Result<Task, HandlerError> {
    serde_json::from_str(task_json.as_str())
        .map_err(|err| HandlerError::new(format!("plugin could not read the task: {err}")))
}

/// A question as it crosses the boundary: [`crate::Context::ask`]'s arguments.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Asked {
    /// What is asked.
    pub question: crate::Question,
    /// How long to wait for a person, in seconds.
    pub timeout_secs: u64,
}

/// A handler's error as it crosses the boundary.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorRecord {
    /// One line.
    pub message: String,
    /// Detail kept as the task's result.
    pub result: Option<Value>,
    /// Whether another attempt may succeed.
    pub retryable: bool,
    /// The handler put the task off instead of failing it.
    pub snooze: Option<crate::Snooze>,
}

impl From<HandlerError> for ErrorRecord {
    fn from(err: HandlerError) -> Self {
        ErrorRecord {
            message: err.message,
            result: err.result,
            retryable: err.retryable,
            snooze: err.snooze,
        }
    }
}

impl ErrorRecord {
    /// The wire form.
    pub fn to_json(&self) -> String {
        let mut wire =
            json!({ "message": self.message, "result": self.result, "retryable": self.retryable });
        if let Some(snooze) = self.snooze {
            wire["snoozeUntilMs"] = json!(snooze.until.as_millisecond());
            wire["usageLimit"] = json!(snooze.usage_limit);
        }
        wire.to_string()
    }

    /// Reads the wire form; text that is not the wire form becomes the message itself.
    pub fn from_json(text: &str) -> Self {
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) if map.get("message").is_some_and(Value::is_string) => {
                ErrorRecord {
                    message: map["message"].as_str().unwrap_or_default().to_string(),
                    result: map.get("result").filter(|v| !v.is_null()).cloned(),
                    retryable: map
                        .get("retryable")
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                    snooze: map
                        .get("snoozeUntilMs")
                        .and_then(Value::as_i64)
                        .and_then(|ms| crate::Timestamp::from_millisecond(ms).ok())
                        .map(|until| crate::Snooze {
                            until,
                            usage_limit: map.get("usageLimit") == Some(&Value::Bool(true)),
                        }),
                }
            }
            _ => ErrorRecord {
                message: text.to_string(),
                result: None,
                retryable: false,
                snooze: None,
            },
        }
    }
}

/// Keeps `RBox` in the public signature set so the host can name the handler type.
pub type BoxedRoleHandler = RoleHandler_TO<'static, RBox<()>>;

/// The plugin-api version this crate was built as; the host shows it beside each plugin's.
pub const API_VERSION: &str = env!("CARGO_PKG_VERSION");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_name_matches_abi_stable() {
        // `export_plugin!` hard-codes the symbol because `#[export_root_module]` expands to
        // `::abi_stable` paths that a plugin crate without that dependency cannot resolve.
        assert_eq!(
            abi_stable::library::ROOT_MODULE_LOADER_NAME,
            "_1as_0lib_1header_0root_bmodule_bloader"
        );
    }

    #[test]
    fn error_record_round_trips_and_tolerates_plain_text() {
        let rec = ErrorRecord {
            message: "boom".into(),
            result: Some(json!({"exitCode": 2})),
            retryable: true,
            snooze: None,
        };
        assert_eq!(ErrorRecord::from_json(&rec.to_json()), rec);
        let limited = ErrorRecord::from(
            crate::HandlerError::new("out")
                .usage_limit(crate::Timestamp::from_second(1_900_000_000).unwrap()),
        );
        assert_eq!(ErrorRecord::from_json(&limited.to_json()), limited);
        assert!(limited.snooze.is_some_and(|s| s.usage_limit));
        assert_eq!(ErrorRecord::from_json("plain").message, "plain");
    }
}
