//! Role `inspector` (task type `inspect`): describes the target folder or file.
//!
//! Result: files, folders and bytes; files, lines and bytes per language; the largest files;
//! and the project kinds found (Cargo.toml, package.json, pyproject.toml, ...). Files that
//! `.gitignore` (or `.ignore`) excludes are skipped, inside a git repository or not.
//! Payload (optional): `{"largest": 10}`.

use std::collections::BTreeMap;
use std::path::Path;

use plugin_api::{Context, HandlerError, Role, Task, Value, json};

use crate::paths::{Workplace, target};

/// Describes the target.
pub struct Inspector;

/// File-name markers of project kinds.
const PROJECT_MARKERS: &[(&str, &str)] = &[
    ("Cargo.toml", "rust"),
    ("package.json", "node"),
    ("pyproject.toml", "python"),
    ("setup.py", "python"),
    ("requirements.txt", "python"),
    ("go.mod", "go"),
    ("pom.xml", "maven"),
    ("build.gradle", "gradle"),
    ("build.gradle.kts", "gradle"),
    ("CMakeLists.txt", "cmake"),
    ("Makefile", "make"),
    ("Gemfile", "ruby"),
    ("composer.json", "php"),
    ("Package.swift", "swift"),
    ("Dockerfile", "docker"),
];

fn language(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    match ext.as_str() {
        "rs" => "Rust",
        "py" | "pyi" => "Python",
        "js" | "mjs" | "cjs" | "jsx" => "JavaScript",
        "ts" | "tsx" | "mts" | "cts" => "TypeScript",
        "go" => "Go",
        "java" => "Java",
        "kt" | "kts" => "Kotlin",
        "c" | "h" => "C",
        "cc" | "cpp" | "cxx" | "hpp" | "hh" | "hxx" => "C++",
        "cs" => "C#",
        "rb" => "Ruby",
        "php" => "PHP",
        "swift" => "Swift",
        "scala" => "Scala",
        "sh" | "bash" | "zsh" => "Shell",
        "ps1" | "psm1" => "PowerShell",
        "html" | "htm" => "HTML",
        "css" | "scss" | "sass" => "CSS",
        "sql" => "SQL",
        "md" | "markdown" => "Markdown",
        "json" => "JSON",
        "toml" => "TOML",
        "yaml" | "yml" => "YAML",
        "xml" => "XML",
        "txt" => "Text",
        _ => "Other",
    }
}

#[derive(Default)]
struct Tally {
    files: u64,
    lines: u64,
    bytes: u64,
}

/// Counts lines as editors do: a last line without a newline still counts.
fn count_lines(bytes: &[u8]) -> u64 {
    let newlines = bytes.iter().filter(|&&b| b == b'\n').count() as u64;
    newlines + u64::from(bytes.last().is_some_and(|&b| b != b'\n'))
}

impl Role for Inspector {
    fn name(&self) -> &str {
        "inspector"
    }

    fn task_types(&self) -> Vec<String> {
        vec!["inspect".into()]
    }

    fn settings(&self) -> Vec<plugin_api::Setting> {
        vec![crate::paths::branch_setting()]
    }

    fn validate(&self, task: &Task) -> Result<(), String> {
        let root = target(task)?;
        if root.exists() {
            Ok(())
        } else {
            Err(format!("target {} does not exist", root.display()))
        }
    }

    fn handle(&self, task: &Task, ctx: &Context<'_>) -> Result<Value, HandlerError> {
        // After agent tasks not merged yet, their changes are what is inspected.
        let place = Workplace::for_task(task, target(task)?, &ctx.prerequisites(), ctx)?;
        let root = place.dir();
        let keep_largest = task
            .payload
            .get("largest")
            .and_then(Value::as_u64)
            .unwrap_or(10) as usize;
        let walker = ignore::WalkBuilder::new(root)
            .hidden(false)
            .require_git(false)
            .filter_entry(|entry| entry.file_name() != ".git")
            .build();

        let (mut files, mut dirs, mut bytes) = (0u64, 0u64, 0u64);
        let mut languages: BTreeMap<&'static str, Tally> = BTreeMap::new();
        let mut largest: Vec<(u64, String)> = Vec::new();
        let mut projects = Vec::new();
        for entry in walker {
            let entry = entry.map_err(|err| HandlerError::new(err.to_string()))?;
            let path = entry.path();
            let rel = path.strip_prefix(root).unwrap_or(path);
            let Some(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                if entry.depth() > 0 {
                    dirs += 1;
                }
                continue;
            }
            if !kind.is_file() {
                continue;
            }
            if ctx.should_stop() {
                return Err(HandlerError::new("stopped before the inspection finished"));
            }
            let content = std::fs::read(path)?;
            let size = content.len() as u64;
            files += 1;
            bytes += size;
            let tally = languages.entry(language(path)).or_default();
            tally.files += 1;
            tally.bytes += size;
            let binary = content.iter().take(8192).any(|&b| b == 0);
            if !binary {
                tally.lines += count_lines(&content);
            }
            largest.push((size, rel.display().to_string()));
            if let Some(name) = path.file_name().and_then(|n| n.to_str())
                && let Some((_, kind)) = PROJECT_MARKERS.iter().find(|(m, _)| *m == name)
            {
                projects.push(json!({ "kind": kind, "path": rel }));
            }
            if files.is_multiple_of(500) {
                ctx.progress(50, &format!("{files} files so far"));
            }
        }
        largest.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        largest.truncate(keep_largest);
        ctx.progress(100, &format!("{files} files"));
        let languages: plugin_api::serde_json::Map<String, Value> = languages
            .into_iter()
            .map(|(name, t)| {
                (
                    name.to_string(),
                    json!({ "files": t.files, "lines": t.lines, "bytes": t.bytes }),
                )
            })
            .collect();
        let mut result = json!({
            "target": task.target,
            "files": files,
            "dirs": dirs,
            "bytes": bytes,
            "languages": languages,
            "largest": largest
                .into_iter()
                .map(|(size, path)| json!({ "path": path, "bytes": size }))
                .collect::<Vec<_>>(),
            "projects": projects,
        });
        if !place.branches().is_empty() {
            result["branches"] = json!(place.branches());
        }
        Ok(result)
    }
}

plugin_api::register_role!(Inspector);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_a_last_line_without_newline() {
        assert_eq!(count_lines(b""), 0);
        assert_eq!(count_lines(b"a\nb\n"), 2);
        assert_eq!(count_lines(b"a\nb"), 2);
    }
}
