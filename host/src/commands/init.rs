//! `host init`: create the coordination folder.

use anyhow::Context as _;
use queue::FileStore;

use crate::cli::Settings;
use crate::commands::outln;

/// Creates the folder (owner-only permissions) or checks an existing one.
pub fn run(settings: &Settings) -> anyhow::Result<()> {
    FileStore::init(&settings.queue).context("cannot initialise the queue")?;
    outln!("{}", settings.queue.display());
    Ok(())
}
