//! `host new-role NAME`: writes a standalone plugin crate for a new role, which builds and
//! runs as it is; the author fills in its handler.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use crate::cli::Settings;
use crate::commands::outln;
use crate::library::host_api_version;

/// Writes the crate for role `name` into `dir` (default `./NAME`), depending on plugin-api by
/// version, or at `plugin_api` (a checkout's `plugin-api` folder) when given.
pub fn run(
    settings: &Settings,
    name: &str,
    dir: Option<&Path>,
    plugin_api: Option<&Path>,
) -> anyhow::Result<()> {
    check_name(name)?;
    let dir = dir.map_or_else(|| PathBuf::from(name), Path::to_path_buf);
    if fs::read_dir(&dir).is_ok_and(|mut entries| entries.next().is_some()) {
        bail!(
            "{} already exists and is not empty; pick another with --dir",
            dir.display()
        );
    }
    let version = api_requirement();
    let dependency = match plugin_api {
        Some(path) => {
            let path = std::path::absolute(path)
                .with_context(|| format!("plugin-api {}", path.display()))?;
            let manifest = std::fs::read_to_string(path.join("Cargo.toml")).unwrap_or_default();
            if !manifest.contains("name = \"host-plugin-api\"") {
                bail!(
                    "--plugin-api {}: not the plugin-api crate (give the plugin-api folder of a \
                     checkout of host)",
                    path.display()
                );
            }
            format!(
                "{{ version = \"{version}\", path = {} }}",
                toml_string(&path.display().to_string())
            )
        }
        None => format!("\"{version}\""),
    };
    let library = name.replace('-', "_");
    let files = [
        ("Cargo.toml", cargo_toml(name, &dependency)),
        ("src/lib.rs", lib_rs(name)),
        (".gitignore", "/target\n".to_string()),
    ];
    for (file, text) in &files {
        let path = dir.join(file);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let plugins = settings.queue.folder().map_or_else(
        || "PLUGIN-FOLDER".to_string(),
        |f| f.join("plugins").display().to_string(),
    );
    outln!("created role {name} in {}", dir.display());
    outln!("next:");
    outln!("  cd {} && cargo build --release", dir.display());
    outln!(
        "  mkdir -p {plugins} && cp target/release/{}{library}{} {plugins}/",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    outln!("  host add --type {name} && host --role {name} --drain");
    Ok(())
}

/// A role name that is also a crate name: lower-case letters, digits, `-` and `_`, starting
/// with a letter.
fn check_name(name: &str) -> anyhow::Result<()> {
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        bail!(
            "role name {name:?}: use lower-case letters, digits, '-' and '_', starting with a \
             letter (it is also the crate's name)"
        );
    }
    // Crate names a plugin cannot take: Rust's keywords, its own crates, and the crates the
    // plugin depends on.
    let library = name.replace('-', "_");
    const TAKEN: [&str; 56] = [
        "as",
        "async",
        "await",
        "break",
        "const",
        "continue",
        "crate",
        "dyn",
        "else",
        "enum",
        "extern",
        "false",
        "fn",
        "for",
        "if",
        "impl",
        "in",
        "let",
        "loop",
        "match",
        "mod",
        "move",
        "mut",
        "pub",
        "ref",
        "return",
        "self",
        "static",
        "struct",
        "super",
        "trait",
        "true",
        "type",
        "unsafe",
        "use",
        "where",
        "while",
        "abstract",
        "become",
        "box",
        "do",
        "final",
        "macro",
        "override",
        "priv",
        "typeof",
        "unsized",
        "virtual",
        "yield",
        "try",
        "std",
        "core",
        "alloc",
        "test",
        "plugin_api",
        "host_plugin_api",
    ];
    if TAKEN.contains(&library.as_str()) {
        bail!("role name {name:?} cannot be a crate's name (a Rust keyword or a crate it uses)");
    }
    Ok(())
}

/// The plugin-api requirement that this host loads: its major and minor version.
fn api_requirement() -> String {
    let version = host_api_version();
    let mut parts = version.split('.');
    match (parts.next(), parts.next()) {
        (Some(major), Some(minor)) => format!("{major}.{minor}"),
        _ => version.to_string(),
    }
}

fn toml_string(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

fn cargo_toml(name: &str, dependency: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

# A plugin is a dynamic library that `host` loads.
[lib]
crate-type = ["cdylib"]

[dependencies]
host-plugin-api = {dependency}

# A workspace of its own, so that it builds wherever it is put; remove this table to make the
# crate a member of a workspace of yours.
[workspace]
"#
    )
}

fn lib_rs(name: &str) -> String {
    // `Role` after the name, so that no name clashes with the types the crate imports.
    let type_name: String = name
        .split(['-', '_'])
        .map(|word| {
            let mut chars = word.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .chain(["Role".to_string()])
        .collect();
    format!(
        r#"//! Role `{name}`: claims `{name}` tasks. Built as a plugin for `host`:
//! `cargo build --release`, then copy the library into the queue's plugin folder.

use plugin_api::{{Context, HandlerError, Role, Task, Value, json}};

/// The role.
pub struct {type_name};

impl Role for {type_name} {{
    fn name(&self) -> &str {{
        "{name}"
    }}

    fn task_types(&self) -> Vec<String> {{
        vec!["{name}".into()]
    }}

    /// Runs in `host add`: refuse a task that cannot work here, before it is queued.
    fn validate(&self, task: &Task) -> Result<(), String> {{
        if !task.payload.is_null() && !task.payload.is_object() {{
            return Err("the payload must be a JSON object".into());
        }}
        Ok(())
    }}

    fn handle(&self, task: &Task, ctx: &Context<'_>) -> Result<Value, HandlerError> {{
        ctx.progress(0, "starting");
        ctx.log(&format!("task {{}}: {{}}", task.id, task.payload));
        // A long handler looks now and then whether it was cancelled or timed out.
        if ctx.should_stop() {{
            return Err(HandlerError::new("stopped before the work was done"));
        }}
        ctx.progress(100, "done");
        Ok(json!({{ "task": task.id, "payload": task.payload }}))
    }}
}}

plugin_api::export_plugin!({type_name});
"#
    )
}
