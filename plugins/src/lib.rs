//! The built-in roles, one library:
//!
//! - [`inspector`]: role `inspector` claims `inspect`: files, folders, bytes and lines per
//!   language, largest files and project kinds under the target, honouring `.gitignore`.
//! - [`writer`]: role `writer` claims `write`: writes the payload's files under the target,
//!   atomically, refusing any path that leaves it.
//! - [`tester`]: role `tester` claims `test`: runs the payload's command, or the project's own
//!   test command, in the target, with a timeout.
//! - [`agent`]: role `agent` runs an AI coding CLI (Copilot CLI, Claude Code, Codex CLI, Gemini
//!   CLI, Aider, or a custom command) on each task; bound to role names in `host.toml`.
//!
//! Each module registers its role where it is defined; `export_plugin!()` exports them all.

pub mod agent;
pub mod inspector;
pub mod tester;
pub mod writer;

mod acp;
mod command;
mod group;
mod limits;
mod paths;
mod stream;

plugin_api::export_plugin!();
