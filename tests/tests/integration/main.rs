//! The integration suite: every test drives the real `host` binary and plugin libraries on a
//! fresh queue folder (see `integration_tests::TestQueue`).

mod acp;
mod agents;
mod bad_input;
mod branches;
mod claiming;
mod conformance;
mod crashes;
mod daily_use;
mod damage;
mod many_machines;
mod mcp;
mod notify;
mod orchestration;
mod plugin_authors;
mod plugin_safety;
mod plugins;
mod postgres;
mod power_cuts;
mod processes;
mod queue_folder;
mod real_clis;
mod reliability;
mod review;
mod roles;
mod store_commands;
mod web;
mod worktrees;
