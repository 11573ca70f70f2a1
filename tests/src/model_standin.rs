//! A stand-in for the model APIs the agent CLIs call, served on 127.0.0.1, so that the real
//! CLIs run in the suite without a network or an account.
//!
//! [`ModelStandIn::start`] serves one [`Api`] on a free port with a [`Script`]: asked by the
//! CLI with its tools, it calls the CLI's file-writing tool once (the file and content of the
//! script); once the conversation holds the tool's result, it answers with the script's final
//! message. Any other model call (a title, a check) gets a short text. Each answer reports
//! token counts, tallied in [`ModelStandIn::usage`], so that a test can compare what the CLI
//! reported with what it was told. With [`Script::limit`] it answers every model call with
//! the API's usage-limit response instead.
//!
//! It is also the CLIs' HTTP(S) proxy ([`ModelStandIn::proxy_env`]): a request for any other
//! server is refused and recorded ([`ModelStandIn::elsewhere`]), so that a CLI reaches nothing
//! but the stand-in, network or not.
//!
//! Every request is recorded ([`ModelStandIn::requests`]) for assertions and for the message
//! of a failing test. The HTTP is the least the CLIs need: HTTP/1.1, a body by length or in
//! chunks, one answer per connection (`Connection: close`), a streamed answer sent whole.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde_json::{Value, json};

/// The API a CLI speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// Anthropic's Messages API, streamed (Claude Code).
    Anthropic,
    /// OpenAI's Responses API, streamed (Codex).
    OpenAiResponses,
    /// OpenAI's Chat Completions API, streamed (Copilot's own-key mode).
    OpenAiChat,
    /// Google's Generative Language API, `streamGenerateContent` with SSE (Gemini CLI).
    Gemini,
}

/// What the stand-in makes the model do.
#[derive(Clone, Debug)]
pub struct Script {
    /// The file the tool call writes, relative to where the CLI runs.
    pub file: String,
    /// What it writes there.
    pub content: String,
    /// The final answer, after the tool's result.
    pub answer: String,
    /// Answer every model call with the API's usage limit, resetting at this Unix time.
    pub limit: Option<i64>,
}

/// One request as it arrived.
#[derive(Clone, Debug)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path and query.
    pub path: String,
    /// The headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body as text (lossy).
    pub body: String,
    /// The status the stand-in answered with.
    pub status: u16,
}

impl Request {
    /// The header `name` (lower case), if sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether it asked the stand-in, as a proxy, for another server (`CONNECT host:443`, or
    /// an absolute URL).
    pub fn is_elsewhere(&self) -> bool {
        self.method == "CONNECT" || self.path.starts_with("http://")
    }

    /// The body as JSON (null when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// Tokens the stand-in reported, summed over the model calls it answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Input (prompt) tokens.
    pub input: u64,
    /// Output (completion) tokens.
    pub output: u64,
    /// Model calls answered with a model's output.
    pub calls: u64,
}

/// An answer: status, headers and body.
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn json(status: u16, body: &Value) -> Response {
        Response {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string().into_bytes(),
        }
    }

    /// Server-sent events: `(event name, data)`; a name of `None` sends `data:` alone.
    fn sse(events: &[(Option<&str>, Value)]) -> Response {
        let mut body = String::new();
        for (name, data) in events {
            if let Some(name) = name {
                body.push_str(&format!("event: {name}\n"));
            }
            body.push_str(&format!("data: {data}\n\n"));
        }
        Response {
            status: 200,
            headers: vec![
                ("content-type".into(), "text/event-stream".into()),
                ("cache-control".into(), "no-cache".into()),
            ],
            body: body.into_bytes(),
        }
    }

    /// Server-sent events of `data:` lines alone, then `data: [DONE]`.
    fn sse_done(chunks: &[Value]) -> Response {
        let mut response =
            Response::sse(&chunks.iter().map(|c| (None, c.clone())).collect::<Vec<_>>());
        response.body.extend_from_slice(b"data: [DONE]\n\n");
        response
    }

    fn header(mut self, name: &str, value: impl Into<String>) -> Response {
        self.headers.push((name.into(), value.into()));
        self
    }
}

struct State {
    api: Api,
    script: Script,
    requests: Mutex<Vec<Request>>,
    usage: Mutex<Usage>,
}

/// The stand-in, serving until dropped.
pub struct ModelStandIn {
    state: Arc<State>,
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ModelStandIn {
    /// Serves `api` with `script` on a free port of 127.0.0.1.
    pub fn start(api: Api, script: Script) -> ModelStandIn {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free port on 127.0.0.1");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State {
            api,
            script,
            requests: Mutex::new(Vec::new()),
            usage: Mutex::new(Usage::default()),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let state = state.clone();
                    // CLIs make calls side by side (a title beside the turn).
                    std::thread::spawn(move || {
                        let _ = serve(&state, stream);
                    });
                }
            })
        };
        ModelStandIn {
            state,
            port,
            stop,
            thread: Some(thread),
        }
    }

    /// The variables that make the stand-in a CLI's proxy for every other server.
    pub fn proxy_env(&self) -> Vec<(&'static str, String)> {
        let url = self.url();
        [
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "http_proxy",
            "https_proxy",
            "all_proxy",
        ]
        .into_iter()
        .map(|name| (name, url.clone()))
        .chain(
            ["NO_PROXY", "no_proxy"]
                .into_iter()
                .map(|name| (name, "127.0.0.1,localhost".to_string())),
        )
        .collect()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every request so far, in the order they arrived.
    pub fn requests(&self) -> Vec<Request> {
        self.state.requests.lock().unwrap().clone()
    }

    /// The servers other than the stand-in that were asked for through it as a proxy.
    pub fn elsewhere(&self) -> Vec<String> {
        self.requests()
            .iter()
            .filter(|r| r.is_elsewhere())
            .map(|r| format!("{} {}", r.method, r.path))
            .collect()
    }

    /// The tokens reported so far.
    pub fn usage(&self) -> Usage {
        *self.state.usage.lock().unwrap()
    }

    /// The requests, one line each (method, path, status, the body's start): for the message
    /// of a failing assertion.
    pub fn summary(&self) -> String {
        self.requests()
            .iter()
            .map(|r| {
                let body: String = r.body.chars().take(300).collect();
                format!("{} {} -> {}: {body}", r.method, r.path, r.status)
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for ModelStandIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the stop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(state: &State, stream: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(());
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.push((name.trim().to_lowercase(), value.trim().to_string()));
        }
    }
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v): &(String, String)| v.clone())
    };
    let mut body = Vec::new();
    if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)
                .unwrap_or(0);
            if size == 0 {
                line.clear();
                reader.read_line(&mut line)?;
                break;
            }
            let mut chunk = vec![0; size];
            reader.read_exact(&mut chunk)?;
            body.extend_from_slice(&chunk);
            line.clear();
            reader.read_line(&mut line)?;
        }
    } else if let Some(length) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(length, 0);
        reader.read_exact(&mut body)?;
    }
    let mut request = Request {
        method,
        path,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        status: 0,
    };
    let response = answer(state, &request);
    request.status = response.status;
    state.requests.lock().unwrap().push(request);

    let mut out = stream;
    let mut head = format!(
        "HTTP/1.1 {} {}\r\ncontent-length: {}\r\nconnection: close\r\n",
        response.status,
        reason(response.status),
        response.body.len()
    );
    for (name, value) in &response.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    out.write_all(&response.body)?;
    out.flush()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        _ => "Status",
    }
}

/// What the model does on this turn.
enum Turn {
    /// Call the tool that writes the script's file.
    Write,
    /// Give the script's answer.
    Answer,
    /// A call that is not the task's turn (a title, a check): a short text.
    Aside,
}

fn answer(state: &State, request: &Request) -> Response {
    // The CLIs' proxy too: a request for anywhere else is refused.
    if request.is_elsewhere() {
        return Response::json(403, &json!({"error": "the stand-in is the only server"}));
    }
    let body = request.json();
    let model_call = match state.api {
        Api::Anthropic => {
            request.path.starts_with("/v1/messages") && !request.path.contains("count_tokens")
        }
        Api::OpenAiResponses => request.path.ends_with("/responses"),
        Api::OpenAiChat => request.path.ends_with("/chat/completions"),
        Api::Gemini => {
            request.path.contains(":streamGenerateContent")
                || request.path.contains(":generateContent")
        }
    };
    if !model_call {
        return match request.method.as_str() {
            "HEAD" => Response::json(200, &json!({})),
            _ => Response::json(
                404,
                &json!({"error": {"message": "not served by the stand-in"}}),
            ),
        };
    }
    if let Some(reset) = state.script.limit {
        return limit(state.api, reset);
    }
    let serialized = &request.body;
    let turn = match state.api {
        Api::Anthropic => {
            let tools = names(&body["tools"], "/name");
            if serialized.contains("\"tool_result\"") {
                Turn::Answer
            } else if tools.iter().any(|t| t == "Write") {
                Turn::Write
            } else {
                Turn::Aside
            }
        }
        Api::OpenAiResponses => {
            let tools = names(&body["tools"], "/name");
            let items = names(&body["input"], "/type");
            if items.iter().any(|t| t.ends_with("_call_output")) {
                Turn::Answer
            } else if tools.iter().any(|t| t == "apply_patch") {
                Turn::Write
            } else {
                Turn::Aside
            }
        }
        Api::Gemini => {
            let tools = names(&body["tools"][0]["functionDeclarations"], "/name");
            if serialized.contains("\"functionResponse\"") {
                Turn::Answer
            } else if tools.iter().any(|t| t == "write_file") {
                Turn::Write
            } else {
                Turn::Aside
            }
        }
        Api::OpenAiChat => {
            let tools = names(&body["tools"], "/function/name");
            let roles = names(&body["messages"], "/role");
            if roles.iter().any(|r| r == "tool") {
                Turn::Answer
            } else if tools.iter().any(|t| t == "create") {
                Turn::Write
            } else {
                Turn::Aside
            }
        }
    };
    // Distinct counts per turn, so that a sum is told from any one of them.
    let (input, output) = match turn {
        Turn::Write => (1200, 45),
        Turn::Answer => (1300, 12),
        Turn::Aside => (50, 3),
    };
    {
        let mut usage = state.usage.lock().unwrap();
        usage.input += input;
        usage.output += output;
        usage.calls += 1;
    }
    let script = &state.script;
    match state.api {
        Api::Anthropic => anthropic(&body, turn, script, input, output),
        Api::OpenAiResponses => openai_responses(turn, script, input, output),
        Api::Gemini => gemini(&request.path, turn, script, input, output),
        Api::OpenAiChat => openai_chat(&body, turn, script, input, output),
    }
}

/// The values at `pointer` in each element of `list`, as strings.
fn names(list: &Value, pointer: &str) -> Vec<String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item.pointer(pointer).and_then(Value::as_str))
        .map(str::to_string)
        .collect()
}

/// The API's answer when the account's usage limit is spent, resetting at `reset`.
fn limit(api: Api, reset: i64) -> Response {
    match api {
        // As the API answers a subscription whose five-hour window is spent: the unified
        // rate-limit headers Claude Code reads.
        Api::Anthropic => Response::json(
            429,
            &json!({"type": "error", "error": {"type": "rate_limit_error",
                "message": "This request would exceed your account's rate limit. Please try again later."}}),
        )
        .header("anthropic-ratelimit-unified-status", "rejected")
        .header("anthropic-ratelimit-unified-reset", reset.to_string())
        .header("anthropic-ratelimit-unified-representative-claim", "five_hour")
        .header("anthropic-ratelimit-unified-5h-status", "rejected")
        .header("anthropic-ratelimit-unified-5h-reset", reset.to_string()),
        // As the API answers a ChatGPT plan whose window is spent.
        Api::OpenAiResponses => Response::json(
            429,
            &json!({"error": {"type": "usage_limit_reached",
                "message": "The usage limit has been reached", "plan_type": "plus",
                "resets_at": reset,
                "resets_in_seconds": reset - jiff::Timestamp::now().as_second()}}),
        ),
        // As the API answers a project whose daily requests are spent: the quota failure and
        // when to retry, in the message and as `RetryInfo`.
        Api::Gemini => {
            let wait = reset - jiff::Timestamp::now().as_second();
            Response::json(
                429,
                &json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
                    "message": format!("You exceeded your current quota, please check your plan \
                        and billing details. For more information on this error, head to: \
                        https://ai.google.dev/gemini-api/docs/rate-limits. \
                        * Quota exceeded for metric: \
                        generativelanguage.googleapis.com/generate_content_paid_tier_requests, \
                        limit: 1000, model: gemini-2.5-pro\nPlease retry in {wait}s."),
                    "details": [
                        {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [
                            {"quotaMetric":
                                "generativelanguage.googleapis.com/generate_content_paid_tier_requests",
                             "quotaId": "GenerateRequestsPerDayPerProjectPerModel",
                             "quotaDimensions": {"location": "global", "model": "gemini-2.5-pro"},
                             "quotaValue": "1000"}]},
                        {"@type": "type.googleapis.com/google.rpc.RetryInfo",
                         "retryDelay": format!("{wait}s")}]}}),
            )
        }
        // As the API answers an account whose credit is spent (it gives no reset time).
        Api::OpenAiChat => Response::json(
            429,
            &json!({"error": {"message": "You exceeded your current quota, please check your \
                plan and billing details. For more information on this error, read the docs: \
                https://platform.openai.com/docs/guides/error-codes/api-errors.",
                "type": "insufficient_quota", "param": null, "code": "insufficient_quota"}}),
        )
        // Copilot retries a 429 five times, after the wait the answer asks for, as
        // OpenAI-compatible APIs give it (Azure OpenAI's `retry-after-ms`); without one it
        // waits a minute in all.
        .header("retry-after-ms", "100"),
    }
}

fn anthropic(body: &Value, turn: Turn, script: &Script, input: u64, output: u64) -> Response {
    let model = body["model"].as_str().unwrap_or("claude");
    let (block, delta, stop) = match turn {
        Turn::Write => (
            json!({"type": "tool_use", "id": "toolu_standin_1", "name": "Write", "input": {}}),
            json!({"type": "input_json_delta", "partial_json":
                json!({"file_path": script.file, "content": script.content}).to_string()}),
            "tool_use",
        ),
        Turn::Answer => (
            json!({"type": "text", "text": ""}),
            json!({"type": "text_delta", "text": script.answer}),
            "end_turn",
        ),
        Turn::Aside => (
            json!({"type": "text", "text": ""}),
            json!({"type": "text_delta", "text": "Writing a file"}),
            "end_turn",
        ),
    };
    Response::sse(&[
        (
            Some("message_start"),
            json!({"type": "message_start", "message": {"id": "msg_standin", "type": "message",
                "role": "assistant", "model": model, "content": [], "stop_reason": null,
                "stop_sequence": null, "usage": {"input_tokens": input, "output_tokens": 1}}}),
        ),
        (
            Some("content_block_start"),
            json!({"type": "content_block_start", "index": 0, "content_block": block}),
        ),
        (
            Some("content_block_delta"),
            json!({"type": "content_block_delta", "index": 0, "delta": delta}),
        ),
        (
            Some("content_block_stop"),
            json!({"type": "content_block_stop", "index": 0}),
        ),
        (
            Some("message_delta"),
            json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null},
                "usage": {"output_tokens": output}}),
        ),
        (Some("message_stop"), json!({"type": "message_stop"})),
    ])
}

/// An `apply_patch` that adds the script's file.
fn add_file_patch(script: &Script) -> String {
    let mut patch = format!("*** Begin Patch\n*** Add File: {}\n", script.file);
    for line in script.content.lines() {
        patch.push_str(&format!("+{line}\n"));
    }
    patch.push_str("*** End Patch\n");
    patch
}

fn openai_responses(turn: Turn, script: &Script, input: u64, output: u64) -> Response {
    let item = match turn {
        // Codex's freeform `apply_patch` tool.
        Turn::Write => json!({"type": "custom_tool_call", "id": "ctc_standin_1",
            "call_id": "call_standin_1", "name": "apply_patch", "status": "completed",
            "input": add_file_patch(script)}),
        Turn::Answer | Turn::Aside => json!({"type": "message", "id": "msg_standin_1",
        "role": "assistant", "status": "completed",
        "content": [{"type": "output_text", "annotations": [], "text": match turn {
            Turn::Answer => script.answer.as_str(),
            _ => "Writing a file",
        }}]}),
    };
    let response = json!({"id": "resp_standin", "object": "response", "status": "completed",
        "usage": {"input_tokens": input, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input + output}});
    Response::sse(&[
        (
            Some("response.created"),
            json!({"type": "response.created", "response": {"id": "resp_standin"}}),
        ),
        (
            Some("response.output_item.done"),
            json!({"type": "response.output_item.done", "output_index": 0, "item": item}),
        ),
        (
            Some("response.completed"),
            json!({"type": "response.completed", "response": response}),
        ),
    ])
}

fn gemini(path: &str, turn: Turn, script: &Script, input: u64, output: u64) -> Response {
    let part = match turn {
        Turn::Write => json!({"functionCall": {"name": "write_file",
            "args": {"file_path": script.file, "content": script.content}}}),
        Turn::Answer => json!({"text": script.answer}),
        Turn::Aside => json!({"text": "Writing a file"}),
    };
    let answer = json!({
        "candidates": [{"content": {"role": "model", "parts": [part]}, "finishReason": "STOP",
            "index": 0}],
        "usageMetadata": {"promptTokenCount": input, "candidatesTokenCount": output,
            "totalTokenCount": input + output},
        "modelVersion": "gemini-2.5-pro",
    });
    if path.contains(":streamGenerateContent") {
        Response::sse(&[(None, answer)])
    } else {
        Response::json(200, &answer)
    }
}

/// The folder the CLI runs in, as Copilot's system prompt names it (its `create` tool takes an
/// absolute path).
fn working_directory(body: &Value) -> String {
    body["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["content"].as_str())
        .find_map(|text| {
            let rest = &text[text.find("Current working directory: ")? + 27..];
            Some(rest.lines().next()?.trim().to_string())
        })
        .unwrap_or_else(|| ".".into())
}

fn openai_chat(body: &Value, turn: Turn, script: &Script, input: u64, output: u64) -> Response {
    let base = json!({"id": "chatcmpl-standin", "object": "chat.completion.chunk", "created": 1,
        "model": body["model"]});
    let chunk = |choices: Value, usage: Option<Value>| {
        let mut chunk = base.clone();
        chunk["choices"] = choices;
        if let Some(usage) = usage {
            chunk["usage"] = usage;
        }
        chunk
    };
    let (delta, finish) = match turn {
        Turn::Write => {
            let path = format!("{}/{}", working_directory(body), script.file);
            (
                json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0,
                    "id": "call_standin_1", "type": "function", "function": {"name": "create",
                    "arguments": json!({"path": path, "file_text": script.content}).to_string()}}]}),
                "tool_calls",
            )
        }
        Turn::Answer => (
            json!({"role": "assistant", "content": script.answer}),
            "stop",
        ),
        Turn::Aside => (
            json!({"role": "assistant", "content": "Writing a file"}),
            "stop",
        ),
    };
    Response::sse_done(&[
        chunk(
            json!([{"index": 0, "delta": delta, "finish_reason": null}]),
            None,
        ),
        chunk(
            json!([{"index": 0, "delta": {}, "finish_reason": finish}]),
            None,
        ),
        chunk(
            json!([]),
            Some(json!({"prompt_tokens": input, "completion_tokens": output,
                "total_tokens": input + output})),
        ),
    ])
}
