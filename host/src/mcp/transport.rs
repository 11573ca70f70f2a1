//! Standard input and output for the MCP server, answering what rmcp's own stdio transport
//! passes over in silence: a line that is not JSON gets a JSON-RPC parse error (-32700), and
//! one that is JSON but not a JSON-RPC message an invalid-request error (-32600), so that a
//! client with a bug hears about it instead of waiting forever.

use std::sync::Arc;

use rmcp::RoleServer;
use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage};
use rmcp::transport::Transport;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{Mutex, mpsc};

/// The longest line read, as rmcp's own transport allows.
const MAX_LINE: u64 = 16 * 1024 * 1024;

/// Standard output, shared by rmcp's answers and ours, one whole line at a time.
type Out = Arc<Mutex<tokio::io::Stdout>>;

/// The transport: messages read and checked on a task of their own, answers written whole.
pub struct CheckedStdio {
    incoming: mpsc::Receiver<ClientJsonRpcMessage>,
    out: Out,
}

impl CheckedStdio {
    /// Starts reading standard input; call it inside the runtime.
    pub fn new() -> CheckedStdio {
        let out: Out = Arc::new(Mutex::new(tokio::io::stdout()));
        let (sender, incoming) = mpsc::channel(16);
        tokio::spawn(read_stdin(sender, Arc::clone(&out)));
        CheckedStdio { incoming, out }
    }
}

impl Transport<RoleServer> for CheckedStdio {
    type Error = std::io::Error;

    fn send(
        &mut self,
        item: ServerJsonRpcMessage,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let out = Arc::clone(&self.out);
        async move { write_line(&out, &item).await }
    }

    async fn receive(&mut self) -> Option<ClientJsonRpcMessage> {
        self.incoming.recv().await
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.incoming.close();
        Ok(())
    }
}

/// Writes one JSON value and its newline under the lock, so lines never interleave.
async fn write_line(out: &Out, value: &impl serde::Serialize) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(value)?;
    line.push(b'\n');
    let mut out = out.lock().await;
    out.write_all(&line).await?;
    out.flush().await
}

/// Reads messages until standard input ends (then the server stops), answering bad lines.
async fn read_stdin(sender: mpsc::Sender<ClientJsonRpcMessage>, out: Out) {
    let mut stdin = BufReader::new(tokio::io::stdin());
    let mut buf = Vec::new();
    loop {
        if !read_piece(&mut stdin, &mut buf).await {
            return;
        }
        if !buf.ends_with(b"\n") && buf.len() as u64 == MAX_LINE {
            // Too long: the rest of the line is skipped, and the line answered once.
            loop {
                if !read_piece(&mut stdin, &mut buf).await {
                    return;
                }
                if buf.ends_with(b"\n") {
                    break;
                }
            }
            let message = format!("Invalid Request: a line longer than {MAX_LINE} bytes");
            if write_line(&out, &error_reply(Value::Null, -32600, message))
                .await
                .is_err()
            {
                return;
            }
            continue;
        }
        let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match check(line) {
            Ok(message) => {
                if sender.send(message).await.is_err() {
                    return;
                }
            }
            Err(Some(reply)) => {
                if write_line(&out, &reply).await.is_err() {
                    return;
                }
            }
            // A malformed notification: JSON-RPC never answers those.
            Err(None) => {}
        }
    }
}

/// Reads into `buf` (emptied first) up to and with the next newline, or [`MAX_LINE`] bytes;
/// false at the end of the input.
async fn read_piece(stdin: &mut BufReader<tokio::io::Stdin>, buf: &mut Vec<u8>) -> bool {
    buf.clear();
    matches!(stdin.take(MAX_LINE).read_until(b'\n', buf).await, Ok(read) if read > 0)
}

fn error_reply(id: Value, code: i64, message: String) -> Value {
    serde_json::json!({ "jsonrpc": "2.0", "id": id, "error": { "code": code, "message": message } })
}

/// The message on a line, or the error to answer it with (`None`: answer nothing).
fn check(line: &[u8]) -> Result<ClientJsonRpcMessage, Option<Value>> {
    let value: Value = serde_json::from_slice(line).map_err(|err| {
        Some(error_reply(
            Value::Null,
            -32700,
            format!("Parse error: the line is not JSON ({err})"),
        ))
    })?;
    let Some(object) = value.as_object() else {
        return Err(Some(error_reply(
            Value::Null,
            -32600,
            "Invalid Request: a message must be a JSON object".into(),
        )));
    };
    let id = match object.get("id") {
        Some(id @ (Value::String(_) | Value::Number(_))) => id.clone(),
        _ => Value::Null,
    };
    if object.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(Some(error_reply(
            id,
            -32600,
            r#"Invalid Request: "jsonrpc" must be "2.0""#.into(),
        )));
    }
    // Notifications and responses are never answered, malformed or not.
    let is_request = object.contains_key("method") && object.contains_key("id");
    serde_json::from_value::<ClientJsonRpcMessage>(value).map_err(|err| {
        is_request.then(|| error_reply(id, -32600, format!("Invalid Request: {err}")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(line: &str) -> Option<i64> {
        check(line.as_bytes())
            .err()
            .flatten()
            .and_then(|reply| reply["error"]["code"].as_i64())
    }

    #[test]
    fn bad_lines_get_the_json_rpc_error_they_deserve() {
        assert_eq!(code("{not json"), Some(-32700));
        assert_eq!(code("5"), Some(-32600));
        assert_eq!(
            code(r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#),
            Some(-32600)
        );
        assert!(check(br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#).is_ok());
    }
}
