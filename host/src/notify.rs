//! `[notify]` of `host.toml`: where a person hears of what needs them. A [`Notify`] holds the
//! sinks, a desktop notification and any number of webhooks (Slack, Discord, ntfy, or the
//! event as JSON), each taking the events it is set for; [`Notify::send`] hands one
//! [`Message`] to each sink that takes it, at once, each within the time limit.
//!
//! ```toml
//! [notify]
//! events = ["review", "failed", "conflict", "usage_limit", "drained"]   # the default: all
//! desktop = true            # a desktop notification (freedesktop, macOS, Windows)
//! timeout = "10s"           # how long one notification may take (the default)
//!
//! [[notify.webhook]]
//! url = "https://hooks.slack.com/services/..."
//! format = "slack"          # slack | discord | ntfy | json (the default: the event as JSON)
//! # events = ["failed"]     # this webhook's own choice, instead of the one above
//! ```
//!
//! Which events there are, and what each says, is the business of [`crate::attention`].

use std::ops::Range;
use std::sync::mpsc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::attention::EventKind;
use crate::config::ConfigError;

/// How long one notification may take unless `timeout` says otherwise.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest `timeout` allowed: a notification must not hold up a worker or a merge.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// `[notify]`: the sinks and the events each takes. Empty when the table is absent.
#[derive(Clone, Debug)]
pub struct Notify {
    /// The events sent (to the desktop, and to webhooks that choose none of their own); every
    /// event when `None`.
    pub events: Option<Vec<EventKind>>,
    /// Whether a desktop notification is shown.
    pub desktop: bool,
    /// The webhooks, in the order of the file.
    pub webhooks: Vec<Webhook>,
    /// How long one notification may take before it is given up.
    pub timeout: Duration,
}

impl Default for Notify {
    fn default() -> Notify {
        Notify {
            events: None,
            desktop: false,
            webhooks: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// `[[notify.webhook]]`: an HTTP POST per event.
#[derive(Clone, Debug)]
pub struct Webhook {
    /// Where to post (`http://` or `https://`).
    pub url: String,
    /// What the body looks like.
    pub format: Format,
    /// The events this webhook takes, instead of `[notify] events`.
    pub events: Option<Vec<EventKind>>,
}

/// The body of a webhook's POST.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `{"text": LINE}`, as Slack's incoming webhooks (and Mattermost's) take it.
    Slack,
    /// `{"content": LINE}`, as Discord's webhooks take it.
    Discord,
    /// The line as plain text, the title in a `Title` header, as ntfy takes it.
    Ntfy,
    /// `{"event", "title", "message", "task", ...}`: the event with the whole task.
    Json,
}

impl Format {
    const NAMES: [(&'static str, Format); 4] = [
        ("slack", Format::Slack),
        ("discord", Format::Discord),
        ("ntfy", Format::Ntfy),
        ("json", Format::Json),
    ];
}

/// One notification, as every sink needs it.
#[derive(Clone, Debug)]
pub struct Message {
    /// A short title, ASCII only (a desktop notification's summary, ntfy's `Title` header).
    pub title: String,
    /// What happened, in one line, naming the task.
    pub line: String,
    /// The event as JSON, for webhooks of format `json`.
    pub json: serde_json::Value,
}

/// `[notify]` as written, with where each value is.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNotify {
    events: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    desktop: bool,
    timeout: Option<Spanned<String>>,
    #[serde(default)]
    webhook: Vec<RawWebhook>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    url: Spanned<String>,
    format: Option<Spanned<String>>,
    events: Option<Spanned<Vec<Spanned<String>>>>,
}

impl Notify {
    /// Checks `[notify]` as written; `at` makes an error at a place in the file.
    pub(crate) fn from_raw(
        raw: RawNotify,
        at: &dyn Fn(Range<usize>, String) -> ConfigError,
    ) -> Result<Notify, ConfigError> {
        let events = |list: &Option<Spanned<Vec<Spanned<String>>>>, key: &str| {
            let Some(list) = list else {
                return Ok(None);
            };
            let mut kinds = Vec::new();
            for name in list.get_ref() {
                let Some(kind) = EventKind::parse(name.get_ref()) else {
                    let known: Vec<&str> = EventKind::ALL.iter().map(|k| k.name()).collect();
                    let message = format!(
                        "{key}: unknown event {:?} (known: {})",
                        name.get_ref(),
                        known.join(", ")
                    );
                    return Err(at(name.span(), message));
                };
                kinds.push(kind);
            }
            Ok(Some(kinds))
        };
        let timeout = match &raw.timeout {
            None => DEFAULT_TIMEOUT,
            Some(value) => {
                let limit = humantime::parse_duration(value.get_ref())
                    .map_err(|err| at(value.span(), format!("notify.timeout: {err}")))?;
                if limit.is_zero() || limit > MAX_TIMEOUT {
                    let message = format!(
                        "notify.timeout: must be more than 0 and at most {}",
                        humantime::format_duration(MAX_TIMEOUT)
                    );
                    return Err(at(value.span(), message));
                }
                limit
            }
        };
        let mut webhooks = Vec::new();
        for (index, hook) in raw.webhook.iter().enumerate() {
            let key = format!("notify.webhook[{}]", index + 1);
            let url = hook.url.get_ref().trim();
            let scheme_ok = ["http://", "https://"]
                .iter()
                .any(|s| url.len() > s.len() && url[..s.len()].eq_ignore_ascii_case(s));
            if !scheme_ok {
                return Err(at(
                    hook.url.span(),
                    format!("{key}.url: must start with http:// or https://"),
                ));
            }
            let format = match &hook.format {
                None => Format::Json,
                Some(format) => Format::NAMES
                    .iter()
                    .find(|(name, _)| *name == format.get_ref())
                    .map(|(_, f)| *f)
                    .ok_or_else(|| {
                        let message = format!(
                            "{key}.format: {:?} is not slack, discord, ntfy or json",
                            format.get_ref()
                        );
                        at(format.span(), message)
                    })?,
            };
            webhooks.push(Webhook {
                url: url.to_string(),
                format,
                events: events(&hook.events, &format!("{key}.events"))?,
            });
        }
        Ok(Notify {
            events: events(&raw.events, "notify.events")?,
            desktop: raw.desktop,
            webhooks,
            timeout,
        })
    }

    /// Whether no sink is set.
    pub fn is_empty(&self) -> bool {
        !self.desktop && self.webhooks.is_empty()
    }

    /// Whether some sink takes events of `kind`.
    pub fn wants(&self, kind: EventKind) -> bool {
        (self.desktop && takes(self.events.as_ref(), kind))
            || self
                .webhooks
                .iter()
                .any(|w| takes(w.events.as_ref().or(self.events.as_ref()), kind))
    }

    /// The sinks that take events of `kind` (every sink for `None`, a test), each with its name.
    fn sinks(&self, kind: Option<EventKind>) -> Vec<(String, Sink<'_>)> {
        let wanted = |events: Option<&Vec<EventKind>>| kind.is_none_or(|k| takes(events, k));
        let mut sinks = Vec::new();
        if self.desktop && wanted(self.events.as_ref()) {
            sinks.push(("desktop".to_string(), Sink::Desktop));
        }
        for (index, hook) in self.webhooks.iter().enumerate() {
            if wanted(hook.events.as_ref().or(self.events.as_ref())) {
                let name = format!("webhook {} ({})", index + 1, host_of(&hook.url));
                sinks.push((name, Sink::Webhook(hook)));
            }
        }
        sinks
    }

    /// Sends `message` to every sink that takes events of `kind` (every sink for `None`), all at
    /// once, and waits for them: each within the time limit. Answers each sink's name with
    /// whether it was delivered.
    pub fn send(
        &self,
        kind: Option<EventKind>,
        message: &Message,
    ) -> Vec<(String, Result<(), String>)> {
        let sinks = self.sinks(kind);
        std::thread::scope(|scope| {
            let sending: Vec<_> = sinks
                .into_iter()
                .map(|(name, sink)| {
                    let sent = scope.spawn(move || match sink {
                        Sink::Desktop => desktop(message, self.timeout),
                        Sink::Webhook(hook) => post(hook, message, self.timeout),
                    });
                    (name, sent)
                })
                .collect();
            sending
                .into_iter()
                .map(|(name, sent)| {
                    let result = sent
                        .join()
                        .unwrap_or_else(|_| Err("it panicked".to_string()));
                    (name, result)
                })
                .collect()
        })
    }
}

/// Whether a sink that takes `events` (all when `None`) takes `kind`.
fn takes(events: Option<&Vec<EventKind>>, kind: EventKind) -> bool {
    events.is_none_or(|events| events.contains(&kind))
}

enum Sink<'a> {
    Desktop,
    Webhook(&'a Webhook),
}

/// The host (and port) of `url`, to name a webhook without its path, which may be its secret.
fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    // user:password@host
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host)
}

/// Posts `message` to `hook` in its format; an answer other than 2xx is a failure.
fn post(hook: &Webhook, message: &Message, limit: Duration) -> Result<(), String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(limit))
        .http_status_as_error(false)
        .user_agent(concat!("host/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let (content_type, body) = match hook.format {
        Format::Slack => (
            "application/json",
            serde_json::json!({ "text": message.line }).to_string(),
        ),
        Format::Discord => (
            "application/json",
            serde_json::json!({ "content": message.line }).to_string(),
        ),
        Format::Ntfy => ("text/plain; charset=utf-8", message.line.clone()),
        Format::Json => ("application/json", message.json.to_string()),
    };
    let mut request = agent.post(&hook.url).header("Content-Type", content_type);
    if hook.format == Format::Ntfy {
        request = request.header("Title", &message.title);
    }
    let response = request.send(body).map_err(|err| match err {
        ureq::Error::Timeout(_) => {
            format!("no answer within {}", humantime::format_duration(limit))
        }
        other => one_line(&other.to_string()),
    })?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("it answered HTTP {status}"))
    }
}

/// Shows `message` on the desktop, giving up after `limit` (the notification service may not
/// answer; the thread showing it is then left to end on its own).
fn desktop(message: &Message, limit: Duration) -> Result<(), String> {
    let (done, outcome) = mpsc::channel();
    let (title, line) = (message.title.clone(), message.line.clone());
    std::thread::Builder::new()
        .name("desktop-notification".into())
        .spawn(move || {
            let _ = done.send(show(&title, &line));
        })
        .map_err(|err| err.to_string())?;
    match outcome.recv_timeout(limit) {
        Ok(shown) => shown,
        Err(_) => Err(format!(
            "the notification service did not answer within {}",
            humantime::format_duration(limit)
        )),
    }
}

fn notification(title: &str, line: &str) -> notify_rust::Notification {
    let mut notification = notify_rust::Notification::new();
    notification.appname("host").summary(title).body(line);
    notification
}

/// On Linux and the BSDs: the freedesktop notification service on the session's D-Bus.
#[cfg(all(unix, not(target_os = "macos")))]
fn show(title: &str, line: &str) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| err.to_string())?;
    runtime
        .block_on(notification(title, line).show_async())
        .map(drop)
        .map_err(|err| one_line(&err.to_string()))
}

/// On macOS and Windows: the system's notification centre.
#[cfg(not(all(unix, not(target_os = "macos"))))]
fn show(title: &str, line: &str) -> Result<(), String> {
    notification(title, line)
        .show()
        .map(drop)
        .map_err(|err| one_line(&err.to_string()))
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_webhook_is_named_by_its_host_alone() {
        assert_eq!(
            host_of("https://hooks.slack.com/services/T0/B0/secret"),
            "hooks.slack.com"
        );
        assert_eq!(host_of("http://me:pw@127.0.0.1:8080/x?y"), "127.0.0.1:8080");
        assert_eq!(host_of("https://ntfy.sh"), "ntfy.sh");
    }
}
