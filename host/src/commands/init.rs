//! `host init`: create the coordination folder and its database (or the schema in a
//! PostgreSQL database), or change the queue's durability setting.

use anyhow::Context as _;
use queue::{Durability, Store};

use crate::cli::Settings;
use crate::commands::outln;

/// Creates the queue (owner-only permissions, made so on an existing folder too) or checks an
/// existing one; with `durability`, sets it.
pub fn run(settings: &Settings, durability: Option<Durability>) -> anyhow::Result<()> {
    let store = Store::init(&settings.queue, durability).context("cannot initialise the queue")?;
    let durability = match store.durability() {
        Durability::Durable => "durable",
        Durability::Relaxed => "relaxed (a power loss can lose the last seconds of changes)",
    };
    outln!("{} ({durability})", settings.queue);
    Ok(())
}
