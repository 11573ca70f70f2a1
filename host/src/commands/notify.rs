//! `host notify test`: a test notification through every sink of `[notify]`, so that a user
//! sees whether the desktop and each webhook are set up right.

use anyhow::bail;

use crate::attention::Attention;
use crate::cli::Settings;
use crate::commands::{open_store, outln};
use crate::config::Config;

/// Sends the test notification; says on stdout which sink got it, and fails, naming each sink
/// that did not and why, if any did not.
pub fn test(settings: &Settings) -> anyhow::Result<()> {
    let config = Config::load(&open_store(settings)?)?;
    let attention = Attention::new(&config);
    if attention.sinks_none() {
        let source = if config.source.is_empty() {
            "host.toml (there is none)"
        } else {
            config.source.as_str()
        };
        bail!(
            "{source}: [notify] sets no sink: add `desktop = true` or a [[notify.webhook]] with a url"
        );
    }
    let sent = attention.test();
    let count = sent.len();
    let mut failed = Vec::new();
    for (sink, result) in sent {
        match result {
            Ok(()) => outln!("{sink}: sent"),
            Err(why) => failed.push(format!("{sink}: {why}")),
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} of {count} notification sink(s) failed: {}",
            failed.len(),
            failed.join("; ")
        );
    }
    Ok(())
}
