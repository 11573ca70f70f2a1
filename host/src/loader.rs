//! Finds role plugins on the plugin path and loads them, refusing anything that is not a
//! compatible plugin with a one-line reason.
//!
//! This module and plugin-api are the only places that know about abi_stable: the rest of the
//! host sees [`PluginRegistry`], [`PluginRole`] and the plain [`TaskHooks`] trait.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use abi_stable::library::{LibraryError, lib_header_from_path};
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RResult, RStr, RString};
use plugin_api::__private::{
    API_VERSION, ErrorRecord, HostContext, HostContext_TO, PluginModule_Ref, RoleDescriptor,
    encode_stop_reason,
};
use plugin_api::{StopReason, Task};
use serde_json::Value;

/// What a worker offers a running handler. The loader adapts it to the plugin's ABI.
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
}

/// One role found in a loaded library; cheap to copy and safe to share between threads.
#[derive(Clone, Copy)]
pub struct PluginRole {
    descriptor: &'static RoleDescriptor,
    library: &'static Path,
}

impl PluginRole {
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

    /// The library that provides it.
    pub fn library(&self) -> &Path {
        self.library
    }

    /// Asks the role whether it accepts the task; `Err` carries its reason.
    pub fn validate(&self, task: &Task) -> Result<(), String> {
        let json = serde_json::to_string(task).expect("task serializes");
        match self.descriptor.handler.validate(RStr::from_str(&json)) {
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
            }),
            RResult::RErr(text) => Err(ErrorRecord::from_json(text.as_str())),
        }
    }
}

impl std::fmt::Debug for PluginRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginRole")
            .field("name", &self.name())
            .field("library", &self.library)
            .finish()
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
}

/// What became of one library file on the plugin path.
#[derive(Clone, Debug)]
pub enum LibraryStatus {
    /// Loaded; its roles are usable.
    Loaded {
        /// The plugin-api version it was built against.
        api_version: String,
        /// Its roles, shadowed ones included.
        roles: Vec<PluginRole>,
    },
    /// Not loaded.
    Refused {
        /// One line saying why.
        reason: String,
        /// The long form of the reason, when there is one (abi_stable's layout report).
        detail: Option<String>,
    },
}

/// A library file on the plugin path and what became of it.
#[derive(Clone, Debug)]
pub struct LibraryReport {
    /// The library file.
    pub path: PathBuf,
    /// Loaded or refused.
    pub status: LibraryStatus,
}

/// Every library found on the plugin path, loaded once, with its roles by name.
pub struct PluginRegistry {
    search_path: Vec<PathBuf>,
    reports: Vec<LibraryReport>,
    roles: Vec<PluginRole>,
    shadowed: Vec<(PluginRole, PathBuf)>,
}

impl PluginRegistry {
    /// Loads every library in the folders, in order. A role name already provided by an earlier
    /// library is kept from the earlier one (the later one is reported as shadowed). Folders that
    /// do not exist are skipped.
    pub fn discover(search_path: &[PathBuf]) -> PluginRegistry {
        let mut registry = PluginRegistry {
            search_path: search_path.to_vec(),
            reports: Vec::new(),
            roles: Vec::new(),
            shadowed: Vec::new(),
        };
        let mut seen = HashSet::new();
        for dir in search_path {
            for path in library_files(dir) {
                let key = path.canonicalize().unwrap_or_else(|_| path.clone());
                if seen.insert(key.clone()) {
                    registry.load(key);
                }
            }
        }
        registry
    }

    fn load(&mut self, path: PathBuf) {
        let status = match load_roles(&path) {
            Ok((roles, api_version)) => {
                for role in &roles {
                    match self.roles.iter().find(|r| r.name() == role.name()) {
                        Some(first) => self.shadowed.push((*role, first.library.to_path_buf())),
                        None => self.roles.push(*role),
                    }
                }
                LibraryStatus::Loaded { api_version, roles }
            }
            Err(Refusal { reason, detail }) => LibraryStatus::Refused { reason, detail },
        };
        self.reports.push(LibraryReport { path, status });
    }

    /// The folders searched, in order.
    pub fn search_path(&self) -> &[PathBuf] {
        &self.search_path
    }

    /// Every library file found, loaded or refused, in search order.
    pub fn reports(&self) -> &[LibraryReport] {
        &self.reports
    }

    /// The usable roles, in search order.
    pub fn roles(&self) -> &[PluginRole] {
        &self.roles
    }

    /// The library that provides this role's name instead, when an earlier library on the
    /// path already provided it.
    pub fn shadowed_by(&self, role: &PluginRole) -> Option<&Path> {
        self.shadowed
            .iter()
            .find(|(r, _)| r.name() == role.name() && r.library() == role.library())
            .map(|(_, by)| by.as_path())
    }

    /// The role with this name.
    pub fn role(&self, name: &str) -> Option<PluginRole> {
        self.roles.iter().copied().find(|r| r.name() == name)
    }

    /// The role that claims this task type (the first, in search order).
    pub fn role_for_type(&self, task_type: &str) -> Option<PluginRole> {
        self.roles
            .iter()
            .copied()
            .find(|r| r.task_types().iter().any(|t| t == task_type))
    }

    /// Every task type some role claims, sorted.
    pub fn task_types(&self) -> Vec<String> {
        let mut types: Vec<String> = self.roles.iter().flat_map(|r| r.task_types()).collect();
        types.sort();
        types.dedup();
        types
    }
}

/// Loads one library and returns its roles, or says in one line why it was refused.
pub fn load_role(path: &Path, name: &str) -> Result<PluginRole, String> {
    let (roles, _) = load_roles(path)
        .map_err(|refusal| format!("plugin {}: {}", path.display(), refusal.reason))?;
    roles
        .into_iter()
        .find(|r| r.name() == name)
        .ok_or_else(|| format!("plugin {} provides no role {name:?}", path.display()))
}

/// Loads a library and lists its roles, with the plugin-api version it was built against.
fn load_roles(path: &Path) -> Result<(Vec<PluginRole>, String), Refusal> {
    let (module, api_version) = load_library(path)?;
    let library = leak_path(path);
    let roles = module
        .roles()
        .as_slice()
        .iter()
        .map(|descriptor| PluginRole {
            descriptor,
            library,
        })
        .collect();
    Ok((roles, api_version))
}

/// A library's path for the life of the process, as its roles are: leaked once per library,
/// however often the plugin path is searched (the MCP server and the dashboard search it per
/// request).
fn leak_path(path: &Path) -> &'static Path {
    static PATHS: std::sync::Mutex<Vec<&'static Path>> = std::sync::Mutex::new(Vec::new());
    let mut paths = PATHS.lock().expect("paths lock");
    if let Some(known) = paths.iter().find(|known| **known == path) {
        return known;
    }
    let leaked: &'static Path = Box::leak(path.to_path_buf().into_boxed_path());
    paths.push(leaked);
    leaked
}

/// The files in `dir` named like a dynamic library of this platform, sorted.
fn library_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.extension().and_then(|e| e.to_str()) == Some(std::env::consts::DLL_EXTENSION)
                && p.is_file()
        })
        .collect();
    files.sort();
    files
}

/// Why a library was not loaded: one line, and for `-v` the long report.
struct Refusal {
    reason: String,
    detail: Option<String>,
}

fn refused(reason: impl Into<String>) -> Refusal {
    Refusal {
        reason: reason.into(),
        detail: None,
    }
}

/// Loads a library and checks it, returning its root module and the plugin-api version it was
/// built against, or says in one line why not.
fn load_library(path: &Path) -> Result<(PluginModule_Ref, String), Refusal> {
    if let Some(reason) = loose_permissions(path) {
        return Err(refused(reason));
    }
    // Libraries stay loaded for the life of the process (abi_stable never unloads them).
    let header = lib_header_from_path(path).map_err(|err| describe_error(err, None))?;
    let found = header.version_strings().version.to_string();
    match header.init_root_module::<PluginModule_Ref>() {
        Ok(module) => Ok((module, found)),
        Err(err) => Err(describe_error(err, Some(found))),
    }
}

fn describe_error(err: LibraryError, found: Option<String>) -> Refusal {
    let found = found.unwrap_or_else(|| "?".into());
    match err {
        LibraryError::OpenError { err, .. } => refused(format!(
            "not a loadable library: {}",
            first_line(&err.to_string())
        )),
        LibraryError::GetSymbolError { .. } => {
            refused("not a plugin: it exports no plugin-api root module")
        }
        LibraryError::IncompatibleVersionNumber {
            expected_version,
            actual_version,
            ..
        } => refused(format!(
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
            refused("built with an incompatible abi_stable or Rust C ABI; rebuild the plugin")
        }
        LibraryError::RootModule { .. } => {
            refused("the plugin panicked or failed while listing its roles")
        }
        other => refused(first_line(&other.to_string())),
    }
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().trim().to_string()
}

/// Refuses a library that another user could replace, as ssh refuses loose key permissions:
/// loading it would run their code as this user.
#[cfg(unix)]
fn loose_permissions(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    for (what, p) in [("file", path), ("folder", dir)] {
        let meta = std::fs::metadata(p).ok()?;
        if meta.permissions().mode() & 0o002 != 0 && meta.permissions().mode() & 0o1000 == 0 {
            return Some(format!(
                "refused: the plugin {what} {} is writable by other users (chmod o-w it)",
                p.display()
            ));
        }
    }
    None
}

#[cfg(not(unix))]
fn loose_permissions(_path: &Path) -> Option<String> {
    None
}

/// The plugin-api version of this host.
pub fn host_api_version() -> &'static str {
    API_VERSION
}
