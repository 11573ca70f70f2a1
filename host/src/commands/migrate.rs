//! `host migrate`: upgrade the queue's schema to this host's version, saying first what it
//! will do.

use anyhow::Context as _;
use queue::{QueueAddress, SqliteStore};

use crate::cli::Settings;
use crate::commands::outln;

/// Upgrades the queue named by `settings`: on PostgreSQL under the migration lock, after
/// naming the migrations; in a folder by opening it (the embedded store copies its database
/// aside and upgrades itself).
pub fn run(settings: &Settings) -> anyhow::Result<()> {
    let queue = &settings.queue;
    match queue {
        QueueAddress::Postgres(url) => {
            let (found, steps) =
                queue::postgres_migration_plan(url).context("cannot read the queue's schema")?;
            if steps.is_empty() {
                outln!("{queue}: schema version {found}, this host's; nothing to do");
                return Ok(());
            }
            outln!(
                "{queue}: upgrading schema version {found} to {} ({}), in one transaction \
                 under the migration lock",
                found + steps.len() as i32,
                steps.join(", ")
            );
            let from = queue::migrate_postgres(url).context("cannot upgrade the queue")?;
            if from != found {
                outln!("(another process had moved it to version {from} meanwhile)");
            }
            outln!("done");
        }
        QueueAddress::Folder(root) => {
            let (found, known) =
                SqliteStore::schema_version(root).context("cannot read the queue's schema")?;
            if found >= known {
                outln!("{queue}: schema version {found}, this host's; nothing to do");
                return Ok(());
            }
            outln!(
                "{queue}: upgrading schema version {found} to {known}, after copying the \
                 database to {}.schema-{found}",
                queue::QueueFolder::open(root)?.database().display()
            );
            SqliteStore::open(root).context("cannot upgrade the queue")?;
            outln!("done");
        }
    }
    Ok(())
}
