//! Finds role plugins on the plugin path and learns what they provide, refusing anything that is
//! not a safe, compatible plugin with a one-line reason.
//!
//! Two rules keep plugin code from running where it should not:
//!
//! - **Judged before opened.** A library is opened only if nobody but this user (or root) could
//!   have put it there ([`judge`], like ssh's StrictModes): the file and every folder its path
//!   goes through are owned by this user or root and not writable by group or others, the
//!   sticky bit being no excuse; every link met while resolving it is owned by this user or
//!   root too. It is then opened by its resolved path, which nobody else can change. A refused
//!   library is never opened, so none of its code runs.
//! - **Opened in a child.** Listing a library's roles and running a role's `validate` happen in
//!   a child `host plugin-probe` process with a time limit ([`plugin_time_limit`]), so that a
//!   library that aborts or hangs costs that library or that add one line of error, never the
//!   worker, `host add`, `host serve` or `host mcp` that asked.
//!
//! What a library that loaded lists is remembered between runs, under the file's identity
//! ([`crate::probe_cache`]): a command starts a listing probe only for a library it has not
//! seen as it is now. The judgement is not remembered: it runs every time, first.
//!
//! The rest of the host sees [`PluginRegistry`] and [`PluginRole`], plain data; only
//! [`crate::library`], in child processes, knows abi_stable.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use plugin_api::Task;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::probe_cache::{FileId, ProbeCache};

/// How long a plugin may take to list its roles or to validate the tasks of one add, unless
/// `HOST_PLUGIN_TIMEOUT` says otherwise.
const DEFAULT_TIME_LIMIT: Duration = Duration::from_secs(10);

/// How long a plugin may take to list its roles or validate tasks: `HOST_PLUGIN_TIMEOUT` (a
/// duration such as `30s`), else 10 seconds.
pub fn plugin_time_limit() -> Duration {
    std::env::var("HOST_PLUGIN_TIMEOUT")
        .ok()
        .and_then(|text| humantime::parse_duration(&text).ok())
        .unwrap_or(DEFAULT_TIME_LIMIT)
}

/// One role found in a library on the plugin path.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PluginRole {
    name: String,
    task_types: Vec<String>,
    /// The settings it accepts in `host.toml` (`Role::settings`).
    #[serde(default)]
    settings: Vec<DeclaredSetting>,
    #[serde(skip)]
    library: PathBuf,
}

/// A setting a role declares: what `plugin_api::Setting` says, as the host reads it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeclaredSetting {
    /// The key.
    pub name: String,
    /// string, integer, number, boolean, list, table or any.
    pub kind: String,
    /// What the handler gets when the table leaves it out.
    #[serde(default)]
    pub default: Option<Value>,
    /// One line for people.
    #[serde(default)]
    pub help: String,
}

impl DeclaredSetting {
    /// Whether `value` is of this setting's kind.
    pub fn accepts(&self, value: &Value) -> bool {
        match self.kind.as_str() {
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            "list" => value
                .as_array()
                .is_some_and(|items| items.iter().all(Value::is_string)),
            "table" => value.is_object(),
            _ => true,
        }
    }
}

impl PluginRole {
    /// The role's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The task types the role claims.
    pub fn task_types(&self) -> &[String] {
        &self.task_types
    }

    /// The settings it accepts in `host.toml`.
    pub fn settings(&self) -> &[DeclaredSetting] {
        &self.settings
    }

    /// The library that provides it (its resolved path).
    pub fn library(&self) -> &Path {
        &self.library
    }

    /// Asks the role, in a child process, whether it accepts each task: one verdict per task,
    /// `Err` with its reason. `Err` as a whole when the library could not answer (it crashed,
    /// hung or was refused).
    pub fn validate(&self, tasks: &[Task]) -> Result<Vec<Result<(), String>>, String> {
        let input = serde_json::to_string(tasks).expect("tasks serialize");
        let answer = Probe::start(&self.library, Some((&self.name, input)))
            .and_then(|probe| probe.finish("validating tasks"))
            .map_err(|reason| format!("plugin {}: {reason}", self.library.display()))?;
        let verdicts: Vec<Option<String>> = serde_json::from_value(answer["verdicts"].clone())
            .map_err(|_| format!("plugin {}: no verdicts", self.library.display()))?;
        Ok(verdicts
            .into_iter()
            .map(|v| v.map_or(Ok(()), Err))
            .collect())
    }
}

/// What became of one library file on the plugin path.
#[derive(Clone, Debug)]
pub enum LibraryStatus {
    /// Opened in a probe; its roles are usable.
    Loaded {
        /// The plugin-api version it was built against.
        api_version: String,
        /// Its roles, shadowed ones included.
        roles: Vec<PluginRole>,
    },
    /// Not usable.
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
    /// The library file, as found on the plugin path (a link keeps its own name).
    pub path: PathBuf,
    /// Loaded or refused.
    pub status: LibraryStatus,
}

/// Every library found on the plugin path, with its roles by name.
pub struct PluginRegistry {
    search_path: Vec<PathBuf>,
    reports: Vec<LibraryReport>,
    roles: Vec<PluginRole>,
    shadowed: Vec<(PluginRole, PathBuf)>,
}

impl PluginRegistry {
    /// Judges every library in the folders, then lists the roles of those that pass: from the
    /// answers remembered for them as they are now ([`ProbeCache`]), else each in a child
    /// process, all at once. A role name already provided by an earlier library is kept from
    /// the earlier one (the later one is reported as shadowed). Folders that do not exist are
    /// skipped.
    pub fn discover(search_path: &[PathBuf]) -> PluginRegistry {
        PluginRegistry::discover_with(search_path, true)
    }

    /// [`PluginRegistry::discover`], probing every library that passes whatever was
    /// remembered of it (what is learnt is remembered): for `host plugins`, which shows what
    /// the libraries say now.
    pub fn discover_afresh(search_path: &[PathBuf]) -> PluginRegistry {
        PluginRegistry::discover_with(search_path, false)
    }

    fn discover_with(search_path: &[PathBuf], remembered: bool) -> PluginRegistry {
        let mut cache = ProbeCache::load();
        let mut found: Vec<(PathBuf, Result<Asked, String>)> = Vec::new();
        let mut seen = HashSet::new();
        for dir in search_path {
            for path in library_files(dir) {
                let key = dunce::canonicalize(&path).unwrap_or_else(|_| path.clone());
                if !seen.insert(key) {
                    continue;
                }
                // Judged every time, whatever the cache says: who may have changed the file
                // or a folder on its way is not part of its identity.
                let asked = judge(&path).and_then(|resolved| {
                    let id = FileId::of(&resolved);
                    if remembered
                        && let Some(answer) = id.as_ref().and_then(|id| cache.get(&resolved, id))
                    {
                        return Ok(Asked::Remembered(answer.clone()));
                    }
                    Probe::start(&resolved, None).map(|probe| Asked::Probing(probe, resolved, id))
                });
                found.push((path, asked));
            }
        }
        let mut registry = PluginRegistry {
            search_path: search_path.to_vec(),
            reports: Vec::new(),
            roles: Vec::new(),
            shadowed: Vec::new(),
        };
        for (path, asked) in found {
            let answer = asked.and_then(|asked| match asked {
                Asked::Remembered(answer) => Ok(answer),
                Asked::Probing(probe, resolved, id) => {
                    let answer = probe.finish("listing its roles")?;
                    // Kept only when the library loaded and is still the file that was
                    // probed (the identity taken before the probe started).
                    if answer["refused"].is_null()
                        && let Some(id) = id
                        && FileId::of(&resolved).as_ref() == Some(&id)
                    {
                        cache.put(&resolved, id, answer.clone());
                    }
                    Ok(answer)
                }
            });
            let status = match answer {
                Ok(answer) => registry.listed(&path, answer),
                Err(reason) => LibraryStatus::Refused {
                    reason,
                    detail: None,
                },
            };
            registry.reports.push(LibraryReport { path, status });
        }
        cache.save();
        registry
    }

    /// What a probe's answer says of the library at `path`.
    fn listed(&mut self, path: &Path, answer: Value) -> LibraryStatus {
        if let Some(reason) = answer["refused"].as_str() {
            return LibraryStatus::Refused {
                reason: reason.to_string(),
                detail: answer["detail"].as_str().map(String::from),
            };
        }
        let library = dunce::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let roles: Vec<PluginRole> =
            serde_json::from_value::<Vec<PluginRole>>(answer["roles"].clone())
                .unwrap_or_default()
                .into_iter()
                .map(|role: PluginRole| PluginRole {
                    library: library.clone(),
                    ..role
                })
                .collect();
        for role in &roles {
            match self.roles.iter().find(|r| r.name() == role.name()) {
                Some(first) => self.shadowed.push((role.clone(), first.library.clone())),
                None => self.roles.push(role.clone()),
            }
        }
        LibraryStatus::Loaded {
            api_version: answer["apiVersion"].as_str().unwrap_or("?").to_string(),
            roles,
        }
    }

    /// The folders searched, in order.
    pub fn search_path(&self) -> &[PathBuf] {
        &self.search_path
    }

    /// The folders searched, comma-separated, for messages.
    pub fn searched(&self) -> String {
        let folders: Vec<String> = self
            .search_path
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        folders.join(", ")
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
            .find(|(r, _)| r == role)
            .map(|(_, by)| by.as_path())
    }

    /// The role with this name.
    pub fn role(&self, name: &str) -> Option<&PluginRole> {
        self.roles.iter().find(|r| r.name() == name)
    }

    /// The role that claims this task type (the first, in search order).
    pub fn role_for_type(&self, task_type: &str) -> Option<&PluginRole> {
        self.roles
            .iter()
            .find(|r| r.task_types().iter().any(|t| t == task_type))
    }

    /// Every task type some role claims, sorted.
    pub fn task_types(&self) -> Vec<String> {
        let mut types: Vec<String> = self
            .roles
            .iter()
            .flat_map(|r| r.task_types().to_vec())
            .collect();
        types.sort();
        types.dedup();
        types
    }

    /// The refused libraries, each with the one-line reason.
    pub fn refusals(&self) -> Vec<(&Path, &str)> {
        self.reports
            .iter()
            .filter_map(|report| match &report.status {
                LibraryStatus::Refused { reason, .. } => {
                    Some((report.path.as_path(), reason.as_str()))
                }
                LibraryStatus::Loaded { .. } => None,
            })
            .collect()
    }

    /// What a message that found no role adds about the libraries refused: nothing when none
    /// was, else each refused file and the first one's reason, so that a role missing because
    /// its library was refused is not a mystery.
    pub fn refused_note(&self) -> String {
        let refused = self.refusals();
        let Some((first, reason)) = refused.first() else {
            return String::new();
        };
        let others: String = refused[1..]
            .iter()
            .map(|(path, _)| format!(", {}", path.display()))
            .collect();
        format!(
            "; refused: {}: {reason}{others}; see `host plugins`",
            first.display()
        )
    }
}

/// The files in `dir` named like a dynamic library of this platform (links included, even
/// those that lead nowhere, so that they are reported), sorted.
fn library_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file() || t.is_symlink()))
        .map(|e| e.path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some(std::env::consts::DLL_EXTENSION))
        .collect();
    files.sort();
    files
}

/// Says why the library at `path` must not be opened, or gives the path to open it by (the
/// library's own path, every link resolved) when only this user or root could have put it
/// there: the file is a regular file owned by this user or root and not writable by group or
/// others; so is every folder the path goes through, from `/`, the sticky bit being no excuse
/// (anyone may add files to a sticky folder); and every link met on the way, however deep, is
/// owned by this user or root. Opening the path it gives is then safe from others: nothing on
/// it can be changed by anyone else.
#[cfg(unix)]
pub fn judge(path: &Path) -> Result<PathBuf, String> {
    use std::collections::VecDeque;
    use std::ffi::OsString;
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::geteuid().as_raw();
    let owner = |uid: u32, what: &str, at: &Path| {
        if uid == me || uid == 0 {
            Ok(())
        } else {
            Err(format!(
                "the {what} {} is owned by uid {uid}, not by this user (uid {me}) or root",
                at.display()
            ))
        }
    };
    let folder = |at: &Path, meta: &std::fs::Metadata| {
        owner(meta.uid(), "folder", at)?;
        if meta.mode() & 0o002 != 0 {
            return Err(format!(
                "the folder {} is writable by other users (a sticky bit does not make it safe: \
                 keep plugins in a folder only you can write to)",
                at.display()
            ));
        }
        if meta.mode() & 0o020 != 0 {
            return Err(format!(
                "the folder {} is writable by its group (chmod g-w it)",
                at.display()
            ));
        }
        Ok(())
    };
    let read = |at: &Path| {
        std::fs::symlink_metadata(at).map_err(|err| format!("cannot read {}: {err}", at.display()))
    };
    let parts = |at: &Path| -> VecDeque<OsString> {
        at.components()
            .filter_map(|c| match c {
                std::path::Component::Normal(name) => Some(name.to_os_string()),
                std::path::Component::ParentDir => Some("..".into()),
                _ => None,
            })
            .collect()
    };
    let found = std::path::absolute(path).map_err(|err| format!("{}: {err}", path.display()))?;
    // Resolved one component at a time, as the kernel would, so that every folder gone
    // through and every link met is judged, not only those of the final path.
    let mut resolved = PathBuf::from("/");
    folder(&resolved, &read(&resolved)?)?;
    let mut rest = parts(&found);
    let mut links = 0;
    while let Some(part) = rest.pop_front() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let next = resolved.join(&part);
        let meta = read(&next)?;
        if meta.file_type().is_symlink() {
            owner(meta.uid(), "link", &next)?;
            links += 1;
            if links > 40 {
                return Err(format!("{} goes through too many links", found.display()));
            }
            let target = std::fs::read_link(&next)
                .map_err(|err| format!("cannot read the link {}: {err}", next.display()))?;
            if target.is_absolute() {
                resolved = PathBuf::from("/");
            }
            let mut ahead = parts(&target);
            ahead.extend(rest);
            rest = ahead;
            continue;
        }
        if rest.is_empty() {
            if !meta.is_file() {
                return Err(format!("{} is not a regular file", next.display()));
            }
            owner(meta.uid(), "file", &next)?;
            if meta.mode() & 0o022 != 0 {
                return Err(format!(
                    "the file {} is writable by its group or other users (chmod go-w it)",
                    next.display()
                ));
            }
        } else if meta.is_dir() {
            folder(&next, &meta)?;
        } else {
            return Err(format!("{} is not a folder", next.display()));
        }
        resolved = next;
    }
    Ok(resolved)
}

/// Says why the library at `path` must not be opened, or gives the path to open it by. Who may
/// write a file on Windows is in access control lists, which the host does not read: a
/// library is opened only from the user's profile (`%USERPROFILE%`), which by default only the
/// user (and administrators) can write to, and refused elsewhere, saying so.
#[cfg(windows)]
pub fn judge(path: &Path) -> Result<PathBuf, String> {
    let real = dunce::canonicalize(path)
        .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    let profile = std::env::var_os("USERPROFILE")
        .and_then(|p| dunce::canonicalize(p).ok())
        .ok_or("USERPROFILE is not set: cannot tell where plugins are safe from other users")?;
    if real.starts_with(&profile) {
        return Ok(real);
    }
    Err(format!(
        "{} is outside your profile ({}), and who may write there cannot be judged on Windows: \
         keep plugins under your profile (such as %LOCALAPPDATA%\\host\\plugins)",
        path.display(),
        profile.display()
    ))
}

/// How a library's roles are learnt: remembered, or from a probe under way of the library at
/// the resolved path, whose identity was this before it started.
enum Asked {
    Remembered(Value),
    Probing(Probe, PathBuf, Option<FileId>),
}

/// A child `host plugin-probe` opening one library: to list its roles, or to validate tasks
/// with one of them.
struct Probe {
    child: Child,
    stdout: mpsc::Receiver<Vec<u8>>,
    stderr: mpsc::Receiver<Vec<u8>>,
}

impl Probe {
    /// Starts the child; with `validate`, it validates the tasks (JSON) with that role.
    fn start(library: &Path, validate: Option<(&str, String)>) -> Result<Probe, String> {
        let exe = std::env::current_exe()
            .map_err(|err| format!("cannot find the host executable: {err}"))?;
        let mut command = Command::new(exe);
        command
            .arg("plugin-probe")
            .arg("--library")
            .arg(library)
            .arg("--parent")
            .arg(std::process::id().to_string())
            .stdin(if validate.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some((role, _)) = &validate {
            command.arg("--validate").arg(role);
        }
        let mut child = command
            .spawn()
            .map_err(|err| format!("cannot start a plugin probe: {err}"))?;
        if let (Some((_, input)), Some(mut stdin)) = (validate, child.stdin.take()) {
            std::thread::spawn(move || {
                // A probe that died early is reported by `finish`.
                let _ = stdin.write_all(input.as_bytes());
            });
        }
        let read_all = |mut pipe: Box<dyn Read + Send>| {
            let (send, receive) = mpsc::channel();
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                let _ = pipe.read_to_end(&mut bytes);
                let _ = send.send(bytes);
            });
            receive
        };
        let stdout = read_all(Box::new(child.stdout.take().expect("piped stdout")));
        let stderr = read_all(Box::new(child.stderr.take().expect("piped stderr")));
        Ok(Probe {
            child,
            stdout,
            stderr,
        })
    }

    /// Waits for the answer until the time limit, killing the child (and all it started) when
    /// it runs out. `doing` says what the library was asked, for the message.
    fn finish(mut self, doing: &str) -> Result<Value, String> {
        let limit = plugin_time_limit();
        let deadline = Instant::now() + limit;
        let status = match wait_until(&mut self.child, deadline) {
            Ok(Some(status)) => status,
            Ok(None) => {
                crate::process_tree::kill_tree(self.child.id(), true);
                // On Windows a probe is in no job of the worker's: it is killed by itself.
                #[cfg(windows)]
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(format!(
                    "it did not finish {doing} within {} (set HOST_PLUGIN_TIMEOUT to allow \
                     longer)",
                    humantime::format_duration(limit)
                ));
            }
            Err(err) => return Err(format!("cannot wait for the plugin probe: {err}")),
        };
        let grace = Duration::from_secs(1);
        let stdout = self.stdout.recv_timeout(grace).unwrap_or_default();
        let stderr = self.stderr.recv_timeout(grace).unwrap_or_default();
        let stderr = String::from_utf8_lossy(&stderr);
        if status.success()
            && let Ok(mut answer) = serde_json::from_slice::<Value>(&stdout)
        {
            // A panic inside the library is printed by the library's own runtime; its message
            // belongs in the one line.
            if let (Some(reason), Some(panic)) =
                (answer["refused"].as_str(), panic_message(&stderr))
            {
                answer["refused"] = format!("{reason}: {panic}").into();
            }
            return Ok(answer);
        }
        let said = panic_message(&stderr)
            .or_else(|| {
                let last = stderr.lines().rev().find(|l| !l.trim().is_empty())?;
                Some(last.trim().to_string())
            })
            .map(|said| format!(": {said}"))
            .unwrap_or_default();
        let how = crate::handler_process::describe_exit("plugin probe", status);
        Err(format!("{how} while {doing}{said}"))
    }
}

/// Waits for `child` to exit until `deadline`: its status, or `None` when the time ran out
/// first. On Linux the wait is on a pidfd ([`crate::process_tree::exits_within`]), so the
/// answer comes the moment the child exits (a probe is on the path of every `host add`);
/// elsewhere, or without pidfds, it looks every 2 ms until the deadline.
fn wait_until(
    child: &mut Child,
    deadline: Instant,
) -> std::io::Result<Option<std::process::ExitStatus>> {
    let left = deadline.saturating_duration_since(Instant::now());
    if crate::process_tree::exits_within(child, left) {
        return child.wait().map(Some);
    }
    loop {
        match child.try_wait()? {
            Some(status) => return Ok(Some(status)),
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            None => return Ok(None),
        }
    }
}

/// The message of the last panic that `stderr` reports (the line after `panicked at`).
fn panic_message(stderr: &str) -> Option<String> {
    let lines: Vec<&str> = stderr.lines().collect();
    let at = lines
        .iter()
        .rposition(|line| line.contains(" panicked at "))?;
    lines[at + 1..]
        .iter()
        .find(|line| !line.trim().is_empty())
        .map(|line| line.trim().to_string())
}

/// The child side of a probe (`host plugin-probe`): opens the library and prints, as one JSON
/// object, its roles, or with `validate` the verdict of that role on each task read from stdin
/// (a JSON array), or why it was refused. Dies with `parent`, and ends everything the library
/// started before it exits.
pub fn serve_probe(library: &Path, validate: Option<&str>, parent: u32) -> anyhow::Result<()> {
    crate::process_tree::die_with_parent(parent);
    let answer = match crate::library::open(library) {
        Err(refusal) => json!({ "refused": refusal.reason, "detail": refusal.detail }),
        Ok(open) => match validate {
            None => {
                let roles: Vec<Value> = open
                    .roles
                    .iter()
                    .map(|r| {
                        json!({
                            "name": r.name(),
                            "taskTypes": r.task_types(),
                            "settings": r.settings(),
                        })
                    })
                    .collect();
                json!({ "apiVersion": open.api_version, "roles": roles })
            }
            Some(name) => match open.roles.iter().find(|r| r.name() == name) {
                None => json!({ "refused": format!("it provides no role {name:?}") }),
                Some(role) => {
                    let tasks: Vec<Task> = serde_json::from_reader(std::io::stdin())
                        .context("the tasks to validate are not JSON")?;
                    let verdicts: Vec<Option<String>> =
                        tasks.iter().map(|t| role.validate(t).err()).collect();
                    json!({ "verdicts": verdicts })
                }
            },
        },
    };
    crate::process_tree::end_descendants();
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, &answer)?;
    out.flush()?;
    Ok(())
}
