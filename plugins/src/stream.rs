//! The structured headless output of the CLIs that have one (Claude Code `--output-format
//! stream-json`, Codex `exec --json`, Gemini CLI `--output-format stream-json`, Copilot CLI
//! `--output-format json`): one JSON event per line, turned into a readable log line each, with
//! the final message and the tokens and cost the CLI reports kept for the result.

use plugin_api::{Timestamp, Value, json};

use crate::limits::LimitHit;

/// Which CLI's events these are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Claude Code: `system`, `assistant` and `user` messages, then one `result`.
    Claude,
    /// Codex: `item.completed` items and `turn.completed` with its usage.
    Codex,
    /// Gemini CLI: `message`, `tool_use`, `tool_result`, then one `result` with stats.
    Gemini,
    /// Copilot CLI: `assistant.message` (with its tool requests), `tool.execution_complete`,
    /// `session.error`, then one `result`. Its events carry no tokens: those come from the
    /// file of `--usage-output-file` ([`Transcript::usage_report`]).
    Copilot,
}

impl Format {
    /// Whether a line of output is an event of work: a message, a tool call or its result, a
    /// finished item or turn. This is what the stall limit measures for a CLI with structured
    /// output: a CLI that only says it is retrying (Codex without network reconnects every
    /// minute or so, on stderr and as `error` events) makes no progress, however much it
    /// prints. Plain lines and error events are not work.
    pub fn is_work(self, line: &str) -> bool {
        if !line.trim_start().starts_with('{') {
            return false;
        }
        let Ok(event) = plugin_api::serde_json::from_str::<Value>(line) else {
            return false;
        };
        let kind = text(&event, "type");
        match self {
            Format::Claude => match kind {
                "assistant" | "user" | "result" => true,
                "system" => text(&event, "subtype") == "init",
                _ => false,
            },
            Format::Codex => match kind {
                "item.started" | "item.updated" | "item.completed" => {
                    text(&event["item"], "type") != "error"
                }
                "turn.completed" => true,
                _ => false,
            },
            Format::Gemini => matches!(
                kind,
                "init" | "message" | "tool_use" | "tool_result" | "result"
            ),
            Format::Copilot => matches!(
                kind,
                "user.message"
                    | "assistant.message"
                    | "assistant.message_delta"
                    | "tool.execution_start"
                    | "tool.execution_complete"
                    | "assistant.turn_end"
                    | "result"
            ),
        }
    }
}

/// What a run's events said, as they arrive.
#[derive(Debug)]
pub struct Transcript {
    format: Format,
    /// The agent's last message: its answer.
    final_message: Option<String>,
    input_tokens: u64,
    output_tokens: u64,
    cost_usd: Option<f64>,
    /// Whether any event carried usage.
    usage_seen: bool,
    /// The usage limit an event reported (Claude's `rate_limit_event`, rejected).
    limit: Option<LimitHit>,
    /// The CLI's session (conversation) id, for a later attempt to resume.
    session: Option<String>,
    /// The last lines the CLI said itself (see [`Transcript::said`]).
    said: std::collections::VecDeque<String>,
}

/// How many of the CLI's own lines a transcript keeps.
const SAID_KEPT: usize = 40;

/// The longest a log line made from an event gets.
const LOG_LINE: usize = 2_000;

impl Transcript {
    /// An empty transcript for `format`.
    pub fn new(format: Format) -> Transcript {
        Transcript {
            format,
            final_message: None,
            input_tokens: 0,
            output_tokens: 0,
            cost_usd: None,
            usage_seen: false,
            limit: None,
            session: None,
            said: std::collections::VecDeque::new(),
        }
    }

    /// Takes one line of output; answers what the log shows for it (the line itself when it
    /// is not an event, nothing for an event that says nothing to a reader).
    pub fn line(&mut self, raw: String) -> Option<String> {
        let Ok(event) = plugin_api::serde_json::from_str::<Value>(&raw) else {
            self.heard(&raw);
            return Some(raw);
        };
        if !event.is_object() {
            self.heard(&raw);
            return Some(raw);
        }
        // Claude Code and Gemini CLI name the session on their first event, Codex its thread,
        // Copilot CLI its session on its result.
        let session = match self.format {
            Format::Claude | Format::Gemini => event["session_id"].as_str(),
            Format::Codex => event["thread_id"].as_str(),
            Format::Copilot => event["sessionId"].as_str(),
        };
        if self.session.is_none()
            && let Some(id) = session
        {
            self.session = Some(id.to_string());
        }
        let shown = match self.format {
            Format::Claude => self.claude(&event),
            Format::Codex => self.codex(&event),
            Format::Gemini => self.gemini(&event),
            Format::Copilot => self.copilot(&event),
        };
        if let Some(error) = shown.as_deref().and_then(|l| l.strip_prefix("error: ")) {
            self.heard(error);
        }
        shown.map(|line| cut(&line))
    }

    /// Keeps a line the CLI said itself (a plain line, an error event), the last
    /// [`SAID_KEPT`] of them.
    fn heard(&mut self, line: &str) {
        if self.said.len() == SAID_KEPT {
            self.said.pop_front();
        }
        self.said.push_back(cut(line));
    }

    /// What the CLI said itself, its errors and plain lines, without the agent's messages and
    /// tool calls: where a usage limit is read from, so that an agent that writes about quotas
    /// is not taken for one out of quota.
    pub fn said(&self) -> String {
        Vec::from(self.said.clone()).join("\n")
    }

    fn claude(&mut self, event: &Value) -> Option<String> {
        match text(event, "type") {
            "system" if text(event, "subtype") == "init" => {
                Some(format!("session started (model {})", text(event, "model")))
            }
            "assistant" => {
                let items = event["message"]["content"].as_array()?;
                let lines: Vec<String> = items
                    .iter()
                    .filter_map(|item| match text(item, "type") {
                        "text" => Some(format!("assistant: {}", text(item, "text"))),
                        "tool_use" => {
                            Some(format!("tool {}: {}", text(item, "name"), item["input"]))
                        }
                        _ => None,
                    })
                    .collect();
                (!lines.is_empty()).then(|| lines.join("\n"))
            }
            // Sent as the window fills; `rejected` once it is spent, with its reset time.
            "rate_limit_event" => {
                let info = &event["rate_limit_info"];
                if text(info, "status") != "rejected" {
                    return None;
                }
                let window = match text(info, "rateLimitType") {
                    "" => "usage".to_string(),
                    window => window.replace('_', "-"),
                };
                let hit = LimitHit {
                    said: format!("{window} limit reached"),
                    resets_at: info["resetsAt"]
                        .as_i64()
                        .and_then(|secs| Timestamp::from_second(secs).ok()),
                };
                let line = match hit.resets_at {
                    Some(at) => format!("{} (resets {at})", hit.said),
                    None => hit.said.clone(),
                };
                self.limit = Some(hit);
                Some(line)
            }
            "result" => {
                if let Some(result) = event["result"].as_str() {
                    self.final_message = Some(result.to_string());
                }
                // `usage` counts the main model's last calls only; `modelUsage` counts every
                // call of every model (a subagent's, a smaller model's), as the cost does.
                match event["modelUsage"].as_object() {
                    Some(models) if !models.is_empty() => {
                        for usage in models.values() {
                            self.add_usage(
                                usage,
                                &[
                                    "inputTokens",
                                    "cacheCreationInputTokens",
                                    "cacheReadInputTokens",
                                ],
                                "outputTokens",
                            );
                        }
                    }
                    _ => self.add_usage(
                        &event["usage"],
                        &[
                            "input_tokens",
                            "cache_creation_input_tokens",
                            "cache_read_input_tokens",
                        ],
                        "output_tokens",
                    ),
                }
                self.cost_usd = event["total_cost_usd"].as_f64().or(self.cost_usd);
                // Claude Code marks a failed run `is_error`, whatever its subtype says; a run
                // stopped at its turn limit or by an error gives its reasons in `errors`.
                if event["is_error"] == true || text(event, "subtype").starts_with("error") {
                    Some(format!("error: {}", claude_failure(event)))
                } else {
                    Some(format!("result: {}", text(event, "subtype")))
                }
            }
            _ => None,
        }
    }

    fn codex(&mut self, event: &Value) -> Option<String> {
        match text(event, "type") {
            "item.completed" => {
                let item = &event["item"];
                match text(item, "type") {
                    "agent_message" => {
                        self.final_message = Some(text(item, "text").to_string());
                        Some(format!("assistant: {}", text(item, "text")))
                    }
                    "command_execution" => Some(format!(
                        "command: {} (exit {})",
                        text(item, "command"),
                        item["exit_code"]
                    )),
                    "file_change" => {
                        let paths: Vec<&str> = item["changes"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|c| text(c, "path"))
                            .collect();
                        Some(format!("edited: {}", paths.join(", ")))
                    }
                    "error" => Some(format!("error: {}", text(item, "message"))),
                    _ => None,
                }
            }
            "turn.completed" => {
                self.add_usage(&event["usage"], &["input_tokens"], "output_tokens");
                None
            }
            "turn.failed" | "error" => Some(format!(
                "error: {}",
                event["error"]["message"]
                    .as_str()
                    .unwrap_or(text(event, "message"))
            )),
            _ => None,
        }
    }

    fn gemini(&mut self, event: &Value) -> Option<String> {
        match text(event, "type") {
            "init" => Some(format!("session started (model {})", text(event, "model"))),
            "message" if text(event, "role") == "assistant" => {
                let content = text(event, "content");
                // Replies arrive in pieces (`delta`): the answer is all of them.
                let answer = self.final_message.get_or_insert_with(String::new);
                if event["delta"] != true {
                    answer.clear();
                }
                answer.push_str(content);
                Some(format!("assistant: {content}"))
            }
            // The answer is the reply after the last tool: a new reply starts afresh.
            "tool_use" => {
                self.final_message = None;
                Some(format!(
                    "tool {}: {}",
                    text(event, "tool_name"),
                    event["parameters"]
                ))
            }
            "tool_result" => {
                self.final_message = None;
                Some(format!("tool result: {}", text(event, "status")))
            }
            "error" => Some(format!("error: {}", text(event, "message"))),
            "result" => {
                self.add_usage(&event["stats"], &["input_tokens"], "output_tokens");
                // A failed run's result says why in `error` ({"type", "message"}).
                let error = &event["error"];
                let reason = error["message"].as_str().or(error.as_str());
                match reason {
                    Some(reason) => Some(format!("error: {reason}")),
                    None => Some(format!("result: {}", text(event, "status"))),
                }
            }
            _ => None,
        }
    }

    fn copilot(&mut self, event: &Value) -> Option<String> {
        let data = &event["data"];
        match text(event, "type") {
            "assistant.message" => {
                let content = text(data, "content");
                let mut lines = Vec::new();
                if !content.trim().is_empty() {
                    self.final_message = Some(content.to_string());
                    lines.push(format!("assistant: {content}"));
                }
                for request in data["toolRequests"].as_array().into_iter().flatten() {
                    lines.push(format!(
                        "tool {}: {}",
                        text(request, "name"),
                        request["arguments"]
                    ));
                }
                (!lines.is_empty()).then(|| lines.join("\n"))
            }
            "tool.execution_complete" => Some(format!(
                "tool result: {}",
                if data["success"] == true {
                    "success"
                } else {
                    "failed"
                }
            )),
            "session.error" => Some(format!("error: {}", text(data, "message"))),
            "result" => match event["exitCode"].as_i64() {
                Some(0) => Some("result: success".into()),
                Some(code) => Some(format!("result: exit code {code}")),
                None => None,
            },
            _ => None,
        }
    }

    /// Takes the usage a CLI wrote to a file when it finished (Copilot CLI's
    /// `--usage-output-file`: `modelMetrics` by model, each with `usage` `inputTokens` and
    /// `outputTokens`).
    pub fn usage_report(&mut self, report: &Value) {
        for metrics in report["modelMetrics"].as_object().into_iter().flatten() {
            self.add_usage(&metrics.1["usage"], &["inputTokens"], "outputTokens");
        }
    }

    fn add_usage(&mut self, usage: &Value, inputs: &[&str], output: &str) {
        if !usage.is_object() {
            return;
        }
        self.usage_seen = true;
        self.input_tokens += inputs
            .iter()
            .filter_map(|key| usage[*key].as_u64())
            .sum::<u64>();
        self.output_tokens += usage[output].as_u64().unwrap_or(0);
    }

    /// The CLI's session id, if an event named it.
    pub fn session(&self) -> Option<&str> {
        self.session.as_deref()
    }

    /// The usage limit an event reported, if one did.
    pub fn limit(&self) -> Option<&LimitHit> {
        self.limit.as_ref()
    }

    /// The agent's final message, if it gave one.
    pub fn final_message(&self) -> Option<&str> {
        self.final_message.as_deref()
    }

    /// `{"inputTokens", "outputTokens", "costUsd"}` as the CLI reported them (cost only where
    /// the CLI gives one), or null when it reported none.
    pub fn usage(&self) -> Value {
        if !self.usage_seen && self.cost_usd.is_none() {
            return Value::Null;
        }
        let mut usage = json!({
            "inputTokens": self.input_tokens,
            "outputTokens": self.output_tokens,
        });
        if let Some(cost) = self.cost_usd {
            usage["costUsd"] = json!(cost);
        }
        usage
    }
}

/// Why a Claude Code run failed, as its result event says: its `result` text, else its
/// `errors` (a turn limit, an error during execution), else its subtype.
fn claude_failure(event: &Value) -> String {
    let result = text(event, "result").trim();
    if !result.is_empty() {
        return result.to_string();
    }
    let errors: Vec<String> = event["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|error| match error.as_str() {
            Some(said) => said.to_string(),
            None => error["message"]
                .as_str()
                .map_or_else(|| error.to_string(), str::to_string),
        })
        .filter(|said| !said.trim().is_empty())
        .collect();
    if !errors.is_empty() {
        return errors.join("; ");
    }
    match text(event, "subtype") {
        "" => "the run failed (it gave no reason)".to_string(),
        subtype => subtype.to_string(),
    }
}

fn text<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key].as_str().unwrap_or_default()
}

fn cut(line: &str) -> String {
    if line.len() <= LOG_LINE {
        return line.to_string();
    }
    let mut end = LOG_LINE;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &line[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(format: Format, lines: &[Value]) -> (Transcript, Vec<String>) {
        let mut transcript = Transcript::new(format);
        let shown = lines
            .iter()
            .filter_map(|l| transcript.line(l.to_string()))
            .collect();
        (transcript, shown)
    }

    #[test]
    fn claude_events_become_readable_lines_an_answer_and_usage() {
        let (t, shown) = feed(
            Format::Claude,
            &[
                json!({"type": "system", "subtype": "init", "model": "claude-x"}),
                json!({"type": "assistant", "message": {"content": [
                    {"type": "text", "text": "Reading it."},
                    {"type": "tool_use", "name": "Edit", "input": {"file_path": "a.rs"}}]}}),
                json!({"type": "user", "message": {"content": [{"type": "tool_result"}]}}),
                json!({"type": "result", "subtype": "success", "result": "Done.",
                       "total_cost_usd": 0.25,
                       "usage": {"input_tokens": 10, "cache_read_input_tokens": 5, "output_tokens": 7}}),
            ],
        );
        assert_eq!(
            shown,
            [
                "session started (model claude-x)",
                "assistant: Reading it.\ntool Edit: {\"file_path\":\"a.rs\"}",
                "result: success"
            ]
        );
        assert_eq!(t.final_message(), Some("Done."));
        assert_eq!(
            t.usage(),
            json!({"inputTokens": 15, "outputTokens": 7, "costUsd": 0.25})
        );
    }

    #[test]
    fn codex_and_gemini_events_are_read_too_and_plain_lines_pass_through() {
        let (t, shown) = feed(
            Format::Codex,
            &[
                json!({"type": "thread.started"}),
                json!({"type": "item.completed", "item": {"type": "command_execution", "command": "ls", "exit_code": 0}}),
                json!({"type": "item.completed", "item": {"type": "agent_message", "text": "All good."}}),
                json!({"type": "turn.completed", "usage": {"input_tokens": 3, "cached_input_tokens": 1, "output_tokens": 2}}),
            ],
        );
        assert_eq!(shown, ["command: ls (exit 0)", "assistant: All good."]);
        assert_eq!(t.final_message(), Some("All good."));
        assert_eq!(t.usage(), json!({"inputTokens": 3, "outputTokens": 2}));

        let (t, _) = feed(
            Format::Gemini,
            &[
                json!({"type": "message", "role": "assistant", "content": "Hel", "delta": true}),
                json!({"type": "message", "role": "assistant", "content": "lo.", "delta": true}),
                json!({"type": "result", "status": "success", "stats": {"input_tokens": 4, "output_tokens": 6}}),
            ],
        );
        assert_eq!(t.final_message(), Some("Hello."));
        assert_eq!(t.usage(), json!({"inputTokens": 4, "outputTokens": 6}));

        // What the agent writes is not what the CLI says: only the latter is read for limits.
        let (t, _) = feed(
            Format::Codex,
            &[
                json!({"type": "item.completed", "item": {"type": "agent_message",
                       "text": "I added a usage limit check."}}),
                json!({"type": "error", "message": "You've hit your usage limit."}),
            ],
        );
        assert_eq!(t.said(), "You've hit your usage limit.");

        let mut t = Transcript::new(Format::Claude);
        assert_eq!(t.line("plain text".into()).as_deref(), Some("plain text"));
        assert_eq!(t.said(), "plain text");
        assert_eq!(t.usage(), Value::Null);
    }

    #[test]
    fn copilot_json_from_a_real_run_becomes_lines_an_answer_and_with_its_usage_file_tokens() {
        // Copilot CLI 1.0.102 `-p ... --output-format json` in its own-key mode, as it printed
        // it (the list of skills cut to one).
        let stream = include_str!("../fixtures/copilot-1.0.102-byok.jsonl");
        let mut t = Transcript::new(Format::Copilot);
        let shown: Vec<String> = stream
            .lines()
            .filter_map(|l| t.line(l.to_string()))
            .collect();
        assert_eq!(
            shown,
            [
                "tool create: {\"path\":\"/tmp/probe/p/work/hello.txt\",\"file_text\":\"hi\\n\"}",
                "tool result: success",
                "assistant: I wrote hello.txt.",
                "result: success",
            ]
        );
        let work = stream
            .lines()
            .filter(|l| Format::Copilot.is_work(l))
            .count();
        assert_eq!(work, 9);
        assert_eq!(t.final_message(), Some("I wrote hello.txt."));
        // Its events carry no tokens; the usage file, written as it exits, does.
        assert_eq!(t.usage(), Value::Null);
        t.usage_report(&json!({"totalPremiumRequestCost": 0, "modelMetrics": {
            "gpt-4.1": {"requests": {"count": 2, "cost": 0},
                        "usage": {"inputTokens": 2500, "outputTokens": 57,
                                  "cacheReadTokens": 0, "cacheWriteTokens": 0}}}}));
        assert_eq!(t.usage(), json!({"inputTokens": 2500, "outputTokens": 57}));

        let mut t = Transcript::new(Format::Copilot);
        let error = json!({"type": "session.error", "data": {"errorType": "query",
            "message": "Model 'gpt-4.1' not found on provider (HTTP 404).", "statusCode": 404}});
        assert_eq!(
            t.line(error.to_string()).as_deref(),
            Some("error: Model 'gpt-4.1' not found on provider (HTTP 404).")
        );
        assert_eq!(t.usage(), Value::Null);
    }
}
