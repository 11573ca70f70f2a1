//! `host init`: create the coordination folder and its database (or the schema in a
//! PostgreSQL database), or change the queue's durability setting.

use anyhow::Context as _;
use queue::{Durability, Store};

use crate::cli::Settings;
use crate::commands::outln;

/// Creates the queue (owner-only permissions, made so on an existing folder too) or checks an
/// existing one; with `durability`, sets it.
pub fn run(settings: &Settings, durability: Option<Durability>) -> anyhow::Result<()> {
    // A folder can be told before; a database's schema is made idempotently by the store.
    let existed = settings
        .queue
        .folder()
        .is_some_and(queue::QueueFolder::holds_queue);
    let store = Store::init(&settings.queue, durability).context("cannot initialise the queue")?;
    // The queue's own namespace for its tasks' branches (an existing queue without one gets it).
    crate::branch_names::ensure_queue_id(&store).context("cannot give the queue an id")?;
    let setting = match store.durability() {
        Durability::Durable => "durable",
        Durability::Relaxed => "relaxed (a power loss can lose the last seconds of changes)",
    };
    match (existed, durability) {
        (true, None) => outln!(
            "{} ({setting}): a queue already, left as it was",
            settings.queue
        ),
        (true, Some(_)) => outln!(
            "{} ({setting}): a queue already, durability set",
            settings.queue
        ),
        (false, _) => outln!("{} ({setting})", settings.queue),
    }
    Ok(())
}
