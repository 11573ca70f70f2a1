//! The stable-ABI layer between the host and a plugin library. Plugin authors never touch it:
//! [`crate::export_plugin!`] builds the plugin side, and the host's loader uses the rest.
//!
//! Everything that crosses the boundary is either an abi_stable type or JSON text, so the layout
//! check at load time covers the whole contract.

// `#[sabi_trait]` and the generated `_Ref`/`_TO` types trip these two lints on current rustc.
#![allow(non_local_definitions, non_camel_case_types)]

use abi_stable::{
    StableAbi, declare_root_module_statics,
    library::RootModule,
    package_version_strings, sabi_trait,
    sabi_types::{RRef, VersionStrings},
    std_types::{RBox, RResult, RSlice, RStr, RString, RVec},
};

use crate::StopReason;

/// The host's side of a running task, seen by the plugin.
#[sabi_trait]
pub trait HostContext: Send + Sync {
    /// Progress 0-100 and a message.
    fn progress(&self, percent: u8, message: RStr<'_>);
    /// One line of the task's log.
    fn log(&self, line: RStr<'_>);
    /// 0 = keep going, else a [`StopReason`] code (see [`encode_stop_reason`]).
    fn stop_reason(&self) -> u8;
    /// The role's settings from `host.toml`, as JSON (`null` when there are none).
    fn settings(&self) -> RString;
    /// The tasks this one comes after, as a JSON array of tasks.
    fn prerequisites(&self) -> RString;
    /// The plan the handler follows now (a JSON array of `PlanStep`).
    fn plan(&self, steps: RStr<'_>);
    /// Puts a question (JSON of `Asked`) to a person and waits: the JSON of `Answer`.
    #[sabi(last_prefix_field)]
    fn ask(&self, question: RStr<'_>) -> RString;
}

/// A borrowed host context, as passed to [`RoleHandler::handle`].
pub type HostContextRef<'a> = HostContext_TO<'a, RRef<'a, ()>>;

/// A role's handler as the host calls it. Tasks travel as JSON text; errors as the JSON of
/// [`crate::__private::ErrorRecord`].
#[sabi_trait]
pub trait RoleHandler: Send + Sync {
    /// Checks a task before it is added.
    fn validate(&self, task_json: RStr<'_>) -> RResult<(), RString>;
    /// Runs one task: `ROk(result JSON)` or `RErr(error JSON)`.
    fn handle(&self, task_json: RStr<'_>, ctx: HostContextRef<'_>) -> RResult<RString, RString>;
    /// Checks the role's settings (JSON) when a worker starts: `RErr(reason)` refuses to start.
    #[sabi(last_prefix_field)]
    fn check_settings(&self, settings_json: RStr<'_>) -> RResult<(), RString>;
}

/// One role exported by a library.
#[repr(C)]
#[derive(StableAbi)]
pub struct RoleDescriptor {
    /// The name used with `host --role`.
    pub name: RString,
    /// The task types the role claims.
    pub task_types: RVec<RString>,
    /// The settings it accepts in `host.toml`, as a JSON array (see `Setting::to_json`).
    pub settings: RString,
    /// The handler.
    pub handler: RoleHandler_TO<'static, RBox<()>>,
}

/// The root module every plugin library exports; abi_stable checks its layout at load time.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModule_Ref)))]
#[sabi(missing_field(panic))]
pub struct PluginModule {
    /// The roles of the library, built once when the library is loaded and never freed
    /// (libraries are never unloaded).
    #[sabi(last_prefix_field)]
    pub roles: RSlice<'static, RoleDescriptor>,
}

impl RootModule for PluginModule_Ref {
    declare_root_module_statics! {PluginModule_Ref}
    const BASE_NAME: &'static str = "plugin_api";
    const NAME: &'static str = "plugin-api";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// The code of a stop reason on the wire.
pub fn encode_stop_reason(reason: Option<StopReason>) -> u8 {
    match reason {
        None => 0,
        Some(StopReason::Cancelled) => 1,
        Some(StopReason::TimedOut) => 2,
        Some(StopReason::Shutdown) => 3,
    }
}

/// The stop reason of a code; unknown codes (from a newer host) read as a cancellation.
pub fn decode_stop_reason(code: u8) -> Option<StopReason> {
    match code {
        0 => None,
        2 => Some(StopReason::TimedOut),
        3 => Some(StopReason::Shutdown),
        _ => Some(StopReason::Cancelled),
    }
}
