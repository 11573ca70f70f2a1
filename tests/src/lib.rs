//! Test support: builds the workspace once, makes queue folders, runs `host` and reads results,
//! so that each test reads as its scenario.
//!
//! - [`workspace`] builds every crate (the host, the plugins, the fixtures) with the same profile
//!   as the tests, once per test process, and says where the binaries are.
//! - [`fixtures`] builds plugins that the host must refuse: one against a copy of plugin-api with
//!   an older minor version, one against a copy whose host-context methods are reordered (a
//!   layout change), and a library that is not a plugin at all.
//! - [`TestQueue`] is a fresh coordination folder with its own plugin folder.
//! - [`agent_clis`] installs the real agent CLIs from npm, once per machine, and
//!   [`model_standin`] serves a stand-in for their model APIs on 127.0.0.1.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod conformance;
pub mod driver_conformance;
pub mod model_standin;
pub mod netns;
pub mod pg;

/// Where the built workspace is.
pub struct Workspace {
    /// The repository root.
    pub root: PathBuf,
    /// The profile's output folder (`target/debug`), holding `host` and the plugin libraries.
    pub bin_dir: PathBuf,
}

impl Workspace {
    /// The `host` executable.
    pub fn host(&self) -> PathBuf {
        self.bin_dir.join("host")
    }

    /// A plugin library of the workspace by crate name (`noop`, `builtin_roles`, ...).
    pub fn library(&self, crate_name: &str) -> PathBuf {
        self.bin_dir.join(library_file(crate_name))
    }
}

/// The platform's file name for a dynamic library.
pub fn library_file(crate_name: &str) -> String {
    format!(
        "{}{crate_name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    )
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    // `cargo test` gives this process the package's variables; ring's build script tracks
    // CARGO_MANIFEST_DIR, so passing it on would rebuild the TLS stack (and all above it) on
    // every test run, and once more at the next `cargo build`.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_CRATE_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_PRIMARY_PACKAGE",
            ]
            .contains(&name.as_ref())
        {
            cmd.env_remove(name.as_ref());
        }
    }
    cmd
}

fn run_cargo(mut cmd: Command, what: &str) {
    let output = cmd
        .output()
        .unwrap_or_else(|err| panic!("cannot run cargo for {what}: {err}"));
    assert!(
        output.status.success(),
        "building {what} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Builds the whole workspace once per test process and returns where it is.
pub fn workspace() -> &'static Workspace {
    static WORKSPACE: OnceLock<Workspace> = OnceLock::new();
    WORKSPACE.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("tests/ is inside the workspace")
            .to_path_buf();
        // The test binary lives in <target>/<profile>/deps/.
        let exe = std::env::current_exe().expect("test executable path");
        let bin_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binary is in <target>/<profile>/deps")
            .to_path_buf();
        let mut cmd = cargo();
        cmd.current_dir(&root)
            .args(["build", "--workspace", "--quiet"]);
        if bin_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        cmd.env("CARGO_TARGET_DIR", bin_dir.parent().expect("target dir"));
        run_cargo(cmd, "the workspace");
        Workspace { root, bin_dir }
    })
}

/// Libraries the host must refuse, built once per test process.
pub struct Fixtures {
    /// Built against a copy of plugin-api one minor version older than the workspace's.
    pub older_api: PathBuf,
    /// That older version, e.g. `0.1.0` when the workspace has 0.2.x.
    pub older_api_version: String,
    /// Built against a plugin-api of the same version whose host-context methods are reordered.
    pub changed_layout: PathBuf,
    /// A dynamic library that exports no root module.
    pub not_a_plugin: PathBuf,
}

/// Builds the refusal fixtures from copies of plugin-api made under the target folder.
pub fn fixtures() -> &'static Fixtures {
    static FIXTURES: OnceLock<Fixtures> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let ws = workspace();
        let target_dir = ws.bin_dir.parent().expect("target dir").to_path_buf();
        let base = target_dir.join("fixtures");
        let out = base.join("out");
        fs::create_dir_all(&out).unwrap();
        // Several test processes (nextest) may get here at once.
        let lock = fs::File::create(base.join("lock")).unwrap();
        lock.lock().unwrap();

        let manifest = fs::read_to_string(ws.root.join("plugin-api/Cargo.toml")).unwrap();
        let current = manifest
            .lines()
            .find_map(|l| l.strip_prefix("version = \"")?.strip_suffix('"'))
            .expect("plugin-api/Cargo.toml has a version line")
            .to_string();
        let minor: u64 = current.split('.').nth(1).unwrap().parse().unwrap();
        assert!(
            current.starts_with("0.") && minor > 0,
            "the older-API fixture assumes a 0.x plugin-api above 0.0, found {current}"
        );
        let older_api_version = format!("0.{}.0", minor - 1);
        let older_api = build_fixture(ws, &base, "older_api_fixture", |api_dir| {
            edit(
                &api_dir.join("Cargo.toml"),
                &format!("version = \"{current}\""),
                &format!("version = \"{older_api_version}\""),
            );
        });
        let changed_layout = build_fixture(ws, &base, "changed_layout_fixture", |api_dir| {
            let ffi = api_dir.join("src/ffi.rs");
            let progress = "    /// Progress 0-100 and a message.\n    fn progress(&self, percent: u8, message: RStr<'_>);\n";
            let log = "    /// One line of the task's log.\n    fn log(&self, line: RStr<'_>);\n";
            edit(&ffi, &format!("{progress}{log}"), &format!("{log}{progress}"));
        });
        let not_a_plugin = out.join(library_file("not_a_plugin"));
        if !not_a_plugin.exists() {
            let src = base.join("not_a_plugin.rs");
            fs::write(&src, "pub fn answer() -> u32 { 42 }\n").unwrap();
            let status = Command::new("rustc")
                .args(["--crate-type", "cdylib", "--crate-name", "not_a_plugin", "-o"])
                .arg(&not_a_plugin)
                .arg(&src)
                .status()
                .expect("rustc runs");
            assert!(status.success(), "building the not-a-plugin fixture failed");
        }
        let _ = lock.unlock();
        Fixtures {
            older_api,
            older_api_version,
            changed_layout,
            not_a_plugin,
        }
    })
}

fn edit(file: &Path, from: &str, to: &str) {
    let text = fs::read_to_string(file).unwrap();
    assert!(
        text.contains(from),
        "{} no longer contains the text this fixture changes; update tests/src/lib.rs",
        file.display()
    );
    fs::write(file, text.replacen(from, to, 1)).unwrap();
}

/// Makes a one-crate workspace: a copy of plugin-api changed by `alter`, and the noop example
/// renamed to `name`, built in the main target folder (so abi_stable is not compiled again), and
/// moves the library out of the profile folder so that it never sits on a default plugin path.
fn build_fixture(ws: &Workspace, base: &Path, name: &str, alter: impl FnOnce(&Path)) -> PathBuf {
    let out = base.join("out").join(library_file(name));
    let dir = base.join(name);
    let _ = fs::remove_dir_all(&dir);
    let api_dir = dir.join("plugin-api");
    fs::create_dir_all(api_dir.join("src")).unwrap();
    for file in fs::read_dir(ws.root.join("plugin-api/src")).unwrap() {
        let file = file.unwrap().path();
        fs::copy(&file, api_dir.join("src").join(file.file_name().unwrap())).unwrap();
    }
    let manifest = fs::read_to_string(ws.root.join("plugin-api/Cargo.toml")).unwrap();
    fs::write(
        api_dir.join("Cargo.toml"),
        standalone_manifest(&manifest, ws),
    )
    .unwrap();
    alter(&api_dir);

    let plugin_dir = dir.join("plugin");
    fs::create_dir_all(plugin_dir.join("src")).unwrap();
    fs::copy(
        ws.root.join("examples/noop/src/lib.rs"),
        plugin_dir.join("src/lib.rs"),
    )
    .unwrap();
    fs::write(
        plugin_dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n[lib]\ncrate-type = [\"cdylib\"]\n\n[dependencies]\nplugin-api = {{ package = \"host-plugin-api\", path = \"../plugin-api\" }}\n"
        ),
    )
    .unwrap();
    let workspace_manifest = fs::read_to_string(ws.root.join("Cargo.toml")).unwrap();
    let profile = workspace_manifest
        .find("[profile")
        .map(|at| &workspace_manifest[at..])
        .unwrap_or_default();
    fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[workspace]\nresolver = \"3\"\nmembers = [\"plugin-api\", \"plugin\"]\n\n{profile}"
        ),
    )
    .unwrap();
    fs::copy(ws.root.join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();

    let target_dir = ws.bin_dir.parent().unwrap();
    let mut cmd = cargo();
    cmd.current_dir(&dir)
        .args(["build", "--quiet", "-p", name])
        .env("CARGO_TARGET_DIR", target_dir);
    if ws.bin_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    run_cargo(cmd, name);
    fs::rename(ws.bin_dir.join(library_file(name)), &out).unwrap();
    out
}

/// plugin-api's manifest with workspace inheritance replaced by the workspace's values.
fn standalone_manifest(manifest: &str, ws: &Workspace) -> String {
    let root = fs::read_to_string(ws.root.join("Cargo.toml")).unwrap();
    let dep_line = |name: &str| -> String {
        root.lines()
            .find(|l| l.starts_with(&format!("{name} = ")))
            .unwrap_or_else(|| panic!("workspace dependency {name} not found"))
            .to_string()
    };
    manifest
        .lines()
        .filter(|l| !l.contains("rust-version") && !l.contains("license") && !l.contains("publish"))
        .map(|line| {
            let trimmed = line.trim();
            if trimmed == "edition.workspace = true" {
                "edition = \"2024\"".to_string()
            } else if let Some(name) = trimmed.strip_suffix(".workspace = true") {
                if name == "task-model" {
                    format!(
                        "task-model = {{ package = \"host-task-model\", path = \"{}\" }}",
                        ws.root.join("task-model").display()
                    )
                } else {
                    dep_line(name)
                }
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A new temporary folder where the host accepts plugins: under the target folder, unless a
/// folder above it is writable by group or others (a checkout under `/tmp`, whose sticky bit
/// is no excuse), then under `~/.cache/host-tests`.
pub fn scratch_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("t")
        .tempdir_in(scratch_base())
        .unwrap()
}

/// The folder that holds the tests' temporary folders (see [`scratch_dir`]).
pub fn scratch_base() -> &'static Path {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        let in_target = workspace()
            .bin_dir
            .parent()
            .expect("target dir")
            .join("test-tmp");
        let home = std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache/host-tests"));
        let base = std::iter::once(in_target)
            .chain(home)
            .find(|base| plugins_allowed_under(base))
            .expect(
                "no folder for test plugins that only this user can write to: neither the \
                 target folder nor ~/.cache (check the permissions of the folders above them)",
            );
        fs::create_dir_all(&base).unwrap();
        base
    })
}

/// Whether every folder above `path` (that exists) is owned by this user or root and not
/// writable by group or others: the host's rule for plugin folders.
fn plugins_allowed_under(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::geteuid().as_raw();
    path.ancestors()
        .filter_map(|dir| fs::metadata(dir).ok())
        .all(|meta| (meta.uid() == me || meta.uid() == 0) && meta.mode() & 0o022 == 0)
}

/// A fresh coordination folder with its own plugin folder, and the means to drive `host` on it.
pub struct TestQueue {
    _dir: tempfile::TempDir,
    /// Scratch space for targets and files.
    pub scratch: PathBuf,
    /// The coordination folder.
    pub queue: PathBuf,
    /// The only folder on the plugin path.
    pub plugins: PathBuf,
    /// What `host` is given as the queue: the coordination folder, or a PostgreSQL URL.
    pub address: String,
    /// The user's cache folder as `host` sees it (`XDG_CACHE_HOME`), one per queue so that
    /// tests do not share what the host remembers of plugins.
    pub cache: PathBuf,
}

impl TestQueue {
    /// A queue whose plugin folder holds the built-in roles, noop and the test roles.
    pub fn new() -> TestQueue {
        TestQueue::with_plugins(&["builtin_roles", "noop", "test_roles"])
    }

    /// A queue in a new database of the tests' PostgreSQL cluster (see [`pg`]), with the
    /// plugins of [`TestQueue::new`].
    pub fn on_postgres() -> TestQueue {
        TestQueue::at_url(&pg::PgCluster::shared().database())
    }

    /// A queue at this PostgreSQL URL, initialised, with the plugins of [`TestQueue::new`].
    pub fn at_url(url: &str) -> TestQueue {
        TestQueue::at(
            Some(url.to_string()),
            &["builtin_roles", "noop", "test_roles"],
        )
    }

    /// A queue whose plugin folder holds copies of exactly these workspace libraries.
    pub fn with_plugins(crates: &[&str]) -> TestQueue {
        TestQueue::at(None, crates)
    }

    /// A queue at `url` (else in a new coordination folder) with these plugins.
    fn at(url: Option<String>, crates: &[&str]) -> TestQueue {
        let ws = workspace();
        let dir = scratch_dir();
        let queue = dir.path().join("queue");
        let plugins = dir.path().join("plugins");
        let scratch = dir.path().join("scratch");
        let cache = dir.path().join("cache");
        fs::create_dir_all(&plugins).unwrap();
        fs::create_dir_all(&scratch).unwrap();
        for name in crates {
            fs::copy(ws.library(name), plugins.join(library_file(name))).unwrap();
        }
        let address = url.unwrap_or_else(|| queue.display().to_string());
        let q = TestQueue {
            _dir: dir,
            scratch,
            queue,
            plugins,
            address,
            cache,
        };
        q.ok(&["init"]);
        q
    }

    /// `host` with this queue and plugin folder (through the environment, as users may set them),
    /// run from the scratch folder.
    pub fn host(&self) -> Command {
        let mut cmd = Command::new(workspace().host());
        cmd.current_dir(&self.scratch)
            .env("HOST_QUEUE_DIR", &self.address)
            .env("HOST_PLUGIN_PATH", &self.plugins)
            .env("XDG_CACHE_HOME", &self.cache)
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `host ARGS` to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.host().args(args).output().expect("host runs")
    }

    /// Runs `host ARGS`, insists on success, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "host {args:?} failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// Runs `host ARGS`, insists on exit 1 with exactly one line on stderr, returns that line.
    pub fn fails(&self, args: &[&str]) -> String {
        let output = self.run(args);
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        assert_eq!(
            output.status.code(),
            Some(1),
            "host {args:?} should exit 1; stderr:\n{stderr}"
        );
        assert_eq!(
            stderr.lines().count(),
            1,
            "want one line on stderr, got:\n{stderr}"
        );
        assert!(
            !stderr.contains("panicked"),
            "a panic is not an error message:\n{stderr}"
        );
        stderr.trim().to_string()
    }

    /// `host add ARGS`, returning the new id.
    pub fn add(&self, args: &[&str]) -> String {
        let mut full = vec!["add"];
        full.extend_from_slice(args);
        self.ok(&full).trim().to_string()
    }

    /// Adds a `flaky` task that fails its only attempt and succeeds when retried.
    pub fn add_failing_once(&self) -> String {
        self.add(&[
            "--type",
            "flaky",
            "--max-attempts",
            "1",
            "--payload",
            r#"{"succeedOn": 2}"#,
        ])
    }

    /// `host show ID --json`.
    pub fn task(&self, id: &str) -> Value {
        serde_json::from_str(&self.ok(&["show", id, "--json"])).unwrap()
    }

    /// `host results --json`: every finished task.
    pub fn results(&self) -> Vec<Value> {
        serde_json::from_str(&self.ok(&["results", "--json"])).unwrap()
    }

    /// `host status --json`.
    pub fn status(&self) -> Value {
        serde_json::from_str(&self.ok(&["status", "--json"])).unwrap()
    }

    /// Runs a worker for `role` with `--drain` to completion, insisting that it exits 0.
    pub fn drain(&self, role: &str, extra: &[&str]) -> Output {
        let mut args = vec!["--role", role, "--drain"];
        args.extend_from_slice(extra);
        let output = self.run(&args);
        assert!(
            output.status.success(),
            "worker {role} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// Starts a worker in the background; its stderr is captured.
    pub fn spawn_worker(&self, role: &str, extra: &[&str]) -> Child {
        let mut args = vec!["--role", role];
        args.extend_from_slice(extra);
        self.host()
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("worker starts")
    }

    /// Every file in the coordination folder with its bytes, to show that nothing changed.
    pub fn snapshot(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
            for entry in fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, root, out);
                } else {
                    let rel = path.strip_prefix(root).unwrap().to_path_buf();
                    out.insert(rel, fs::read(&path).unwrap());
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(&self.queue, &self.queue, &mut out);
        out
    }

    /// Waits until `check` holds, polling; panics with `what` after `limit`.
    pub fn wait_for(&self, what: &str, limit: Duration, mut check: impl FnMut(&TestQueue) -> bool) {
        let start = Instant::now();
        while !check(self) {
            assert!(start.elapsed() < limit, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Default for TestQueue {
    fn default() -> Self {
        TestQueue::new()
    }
}

/// Whether process `pid` is alive (not gone, not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .next()?
                .to_string();
            Some(state != "Z" && state != "X")
        })
        .unwrap_or(false)
}

/// A `test` task whose first attempt writes its shell's pid to `pids` and sleeps for five
/// minutes, and whose later attempts write their pid and succeed at once: the pids file says
/// which attempts ran and when.
pub fn add_long_first_attempt(q: &TestQueue) -> (String, std::path::PathBuf) {
    let pids = q.scratch.join("pids");
    let script = format!(
        "echo $$ >> {0}; [ $(wc -l < {0}) -gt 1 ] && exit 0; exec sleep 300",
        pids.display()
    );
    let payload = serde_json::json!({"command": ["sh", "-c", script]}).to_string();
    let target = q.scratch.to_str().unwrap().to_string();
    let id = q.add(&["--type", "test", "--target", &target, "--payload", &payload]);
    (id, pids)
}

/// The pids the attempts wrote so far.
pub fn attempt_pids(pids: &std::path::Path) -> Vec<u32> {
    std::fs::read_to_string(pids)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Sends a signal to a child process.
pub fn signal(child: &Child, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
}

/// True when the tests run as root (CI does). Otherwise says on the terminal, past the test
/// harness's capture, that `what` was skipped, so that a skip is never silent.
pub fn running_as_root(what: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    skipped(&format!("{what} (needs root, which CI has)"));
    false
}

/// Says on the terminal, past the test harness's capture, that `what` was skipped.
pub fn skipped(what: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED: {what}");
}

/// A second Unix user for the tests of what other users can do, created when missing: its
/// uid. Only for tests running as root (see [`running_as_root`]).
pub fn other_user() -> u32 {
    const NAME: &str = "host-test-other";
    let lookup = || {
        let output = Command::new("id").args(["-u", NAME]).output().ok()?;
        String::from_utf8(output.stdout).ok()?.trim().parse().ok()
    };
    if let Some(uid) = lookup() {
        return uid;
    }
    let status = Command::new("useradd")
        .args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            NAME,
        ])
        .status()
        .expect("useradd runs");
    // Another test process may have created it meanwhile.
    lookup().unwrap_or_else(|| panic!("cannot create user {NAME}: useradd said {status}"))
}

/// The official MCP Python SDK's version that the suite drives `host mcp` with.
const PYTHON_MCP: &str = "mcp==2.3.0";

/// A Python with the official MCP SDK (from PyPI), in a virtual environment under the target
/// folder, made once and kept: the suite's client that the project did not write.
pub fn python_with_mcp() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let venv = workspace()
            .bin_dir
            .parent()
            .expect("target dir")
            .join("py-mcp");
        let python = venv.join("bin/python");
        let has_sdk = |python: &Path| {
            Command::new(python)
                .args(["-c", "import mcp"])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if !has_sdk(&python) {
            let made = Command::new("python3")
                .args(["-m", "venv"])
                .arg(&venv)
                .output()
                .expect("python3 runs (the MCP client tests need Python 3.10 or later)");
            assert!(
                made.status.success(),
                "cannot make a virtual environment in {}: {}",
                venv.display(),
                String::from_utf8_lossy(&made.stderr)
            );
            let installed = Command::new(venv.join("bin/pip"))
                .args([
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    PYTHON_MCP,
                ])
                .output()
                .expect("pip runs");
            assert!(
                installed.status.success(),
                "cannot install {PYTHON_MCP} from PyPI: {}",
                String::from_utf8_lossy(&installed.stderr)
            );
        }
        python
    })
}

/// The agent CLIs the suite runs, from npm, at the versions it checks: (package, version).
pub const AGENT_CLIS: [(&str, &str); 6] = [
    ("@anthropic-ai/claude-code", "2.1.197"),
    // Claude Code's and Codex's ACP adapters (`claude-agent-acp`, `codex-acp`), for the agent
    // role's ACP mode.
    ("@agentclientprotocol/claude-agent-acp", "0.101.0"),
    ("@zed-industries/codex-acp", "0.16.0"),
    ("@openai/codex", "0.171.0"),
    ("@google/gemini-cli", "0.61.0"),
    ("@github/copilot", "1.0.102"),
];

/// The folder holding the real agent CLIs (`claude`, `codex`, `gemini`, `copilot`, and the ACP
/// adapters `claude-agent-acp` and `codex-acp`), installed
/// from the npm registry under the target folder (`agent-clis/node_modules/.bin`) at the
/// versions of [`AGENT_CLIS`], once per machine and kept: a lock file keeps test processes
/// from installing at once, and an install at other versions is replaced. Without npm or the
/// registry this panics, saying why: the tests that need the CLIs fail, never skip.
pub fn agent_clis() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let prefix = workspace()
            .bin_dir
            .parent()
            .expect("target dir")
            .join("agent-clis");
        fs::create_dir_all(&prefix).unwrap();
        let lock = fs::File::create(prefix.join("lock")).unwrap();
        lock.lock().unwrap();
        let installed = |(package, version): &(&str, &str)| {
            let manifest = prefix
                .join("node_modules")
                .join(package)
                .join("package.json");
            fs::read_to_string(manifest)
                .ok()
                .and_then(|text| serde_json::from_str::<Value>(&text).ok())
                .is_some_and(|m| m["version"] == *version)
        };
        if !AGENT_CLIS.iter().all(installed) {
            let started = Instant::now();
            let output = Command::new("npm")
                .args([
                    "install",
                    "--no-audit",
                    "--no-fund",
                    "--loglevel=error",
                    "--prefix",
                ])
                .arg(&prefix)
                .args(AGENT_CLIS.map(|(package, version)| format!("{package}@{version}")))
                .output()
                .expect("npm runs (the real-CLI tests need Node.js 20 or later and npm)");
            assert!(
                output.status.success(),
                "cannot install the agent CLIs from npm into {}: {}",
                prefix.display(),
                String::from_utf8_lossy(&output.stderr)
            );
            assert!(
                AGENT_CLIS.iter().all(installed),
                "npm installed other versions"
            );
            note(&format!(
                "installed the agent CLIs in {:.0?}",
                started.elapsed()
            ));
        }
        let _ = lock.unlock();
        prefix.join("node_modules/.bin")
    })
}

/// Says on the terminal, past the test harness's capture, something worth knowing.
fn note(what: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "NOTE: {what}");
}

/// Builds the standalone plugin crate in `dir` as its author would outside this workspace
/// (its plugin-api resolved to this workspace's, as the published crate would be), and returns
/// the library it made. Crates built this way share one target folder.
pub fn build_outside(dir: &Path, crate_name: &str) -> PathBuf {
    let ws = workspace();
    let target = ws.bin_dir.parent().expect("target dir").join("outside");
    let api = ws.root.join("plugin-api");
    // The workspace's lock, so that the crate builds with the versions the suite was built
    // with, offline too.
    if !dir.join("Cargo.lock").exists() {
        fs::copy(ws.root.join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    }
    let mut cmd = cargo();
    cmd.current_dir(dir)
        .args(["build", "--quiet", "--config"])
        .arg(format!(
            "patch.crates-io.host-plugin-api.path={}",
            serde_json::Value::from(api.display().to_string())
        ))
        .env("CARGO_TARGET_DIR", &target);
    run_cargo(cmd, &format!("{} outside the workspace", dir.display()));
    target.join("debug").join(library_file(crate_name))
}
