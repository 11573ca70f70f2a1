//! `host init`: create the coordination folder and its database, or change its durability
//! setting.

use anyhow::Context as _;
use queue::{Durability, SqliteStore};

use crate::cli::Settings;
use crate::commands::outln;

/// Creates the queue (owner-only permissions, made so on an existing folder too) or checks an
/// existing one; with `durability`, sets it.
pub fn run(settings: &Settings, durability: Option<Durability>) -> anyhow::Result<()> {
    let mut store = SqliteStore::init(&settings.queue).context("cannot initialise the queue")?;
    if let Some(durability) = durability.filter(|d| *d != store.durability()) {
        store = store
            .set_durability(durability)
            .context("cannot change the durability setting")?;
    }
    let durability = match store.durability() {
        Durability::Durable => "durable",
        Durability::Relaxed => "relaxed (a power loss can lose the last seconds of changes)",
    };
    outln!("{} ({durability})", settings.queue.display());
    Ok(())
}
