//! `host config show|set|unset`: the queue's configuration, where every worker reads it (the
//! queue folder's `host.toml`, or the database of a PostgreSQL queue).

use std::io::Read as _;
use std::path::Path;

use anyhow::Context as _;

use crate::cli::{ConfigCommand, Settings};
use crate::commands::{open_store, out};
use crate::config::Config;
use crate::loader::PluginRegistry;

/// Runs one `host config` action.
pub fn run(settings: &Settings, action: ConfigCommand) -> anyhow::Result<()> {
    let store = open_store(settings)?;
    match action {
        ConfigCommand::Show => {
            if let Some((text, _)) = store.config()? {
                out!("{text}");
            }
        }
        ConfigCommand::Set { file } => {
            let text = read(&file)?;
            // A configuration no worker could read is refused, naming the line at fault.
            let config = Config::parse(&file.display().to_string(), &text)?;
            config.check_settings(&PluginRegistry::discover(&settings.plugin_path))?;
            store
                .set_config(Some(&text))
                .context("the configuration was not changed")?;
        }
        ConfigCommand::Unset => store.set_config(None)?,
    }
    Ok(())
}

fn read(file: &Path) -> anyhow::Result<String> {
    if file == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the configuration from stdin")?;
        return Ok(text);
    }
    std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))
}
