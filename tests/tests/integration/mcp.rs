//! `host mcp`, driven over stdio as an assistant would: by rmcp's client, by the official MCP
//! Python SDK, and by hand with lines no client would send.

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::Duration;

use integration_tests::{TestQueue, python_with_mcp};
use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::TokioChildProcess;
use serde_json::{Value, json};

/// rmcp's client, talking to `host mcp`.
type Client = rmcp::service::RunningService<rmcp::RoleClient, ()>;

/// Starts `host mcp` on queue `q`, runs `talk` with rmcp's client of it, then closes it.
fn talk_to_server(q: &TestQueue, talk: impl AsyncFnOnce(&Client)) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut command = tokio::process::Command::from(q.host());
        command.arg("mcp");
        let transport = TokioChildProcess::new(command).unwrap();
        let client = ().serve(transport).await.unwrap();
        talk(&client).await;
        client.cancel().await.unwrap();
    });
}

/// Calls a tool and returns its text answer, or the error text when the tool failed.
async fn call(client: &Client, tool: &'static str, arguments: Value) -> Result<String, String> {
    let params = CallToolRequestParams::new(tool).with_arguments(
        arguments
            .as_object()
            .expect("arguments are an object")
            .clone(),
    );
    let result = client
        .call_tool(params)
        .await
        .map_err(|err| err.to_string())?;
    let text: String = result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect();
    if result.is_error == Some(true) {
        Err(text)
    } else {
        Ok(text)
    }
}

#[test]
fn an_mcp_client_lists_tools_adds_claims_and_completes_a_task() {
    let q = TestQueue::new();
    talk_to_server(&q, async |client| {
        let info = client.peer_info().expect("the server introduced itself");
        assert_eq!(info.server_info.as_ref().unwrap().name, "host");
        let tools = client.list_all_tools().await.unwrap();
        let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
        for expected in [
            "status",
            "list_tasks",
            "add_task",
            "claim_task",
            "heartbeat_task",
            "complete_task",
            "fail_task",
        ] {
            assert!(
                names.contains(&expected),
                "{expected} missing from {names:?}"
            );
        }

        let added: Value = serde_json::from_str(
            &call(
                client,
                "add_task",
                json!({"type": "noop", "description": "from mcp"}),
            )
            .await
            .unwrap(),
        )
        .unwrap();
        let id = added["id"].as_str().unwrap().to_string();
        let refused = call(client, "add_task", json!({"type": "nonsense"})).await;
        assert!(refused.unwrap_err().contains("unknown task type"));

        let claimed: Value = serde_json::from_str(
            &call(
                client,
                "claim_task",
                json!({"role": "noop", "name": "mcp-agent"}),
            )
            .await
            .unwrap(),
        )
        .unwrap();
        assert_eq!(claimed["id"], id.as_str());
        assert_eq!(claimed["worker"], "mcp-agent");
        let token = claimed["leaseToken"].as_str().unwrap().to_string();
        let none = call(client, "claim_task", json!({"role": "noop"})).await;
        assert!(none.unwrap_err().contains("no task to claim"));

        call(
            client,
            "heartbeat_task",
            json!({"id": id, "leaseToken": token}),
        )
        .await
        .unwrap();
        let stolen = call(
            client,
            "complete_task",
            json!({"id": id, "leaseToken": "0".repeat(32), "result": {"stolen": true}}),
        )
        .await;
        assert!(stolen.unwrap_err().contains("held by mcp-agent"));
        call(
            client,
            "complete_task",
            json!({"id": id, "leaseToken": token, "result": {"done": true}}),
        )
        .await
        .unwrap();
        let listed: Value = serde_json::from_str(
            &call(client, "list_tasks", json!({"status": "completed"}))
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(listed["tasks"][0]["id"], id.as_str());
    });
    assert_eq!(q.status()["counts"]["completed"], 1);
    let status = q.ok(&["status"]);
    assert!(
        status.contains("completed") && status.contains('1'),
        "{status}"
    );
}

#[test]
fn the_official_python_sdk_claims_logs_reports_and_completes_through_every_tool() {
    let q = TestQueue::new();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/mcp-client/client.py");
    let output = std::process::Command::new(python_with_mcp())
        .arg(script)
        .arg(integration_tests::workspace().host())
        .current_dir(&q.scratch)
        .env("HOST_QUEUE_DIR", &q.address)
        .env("HOST_PLUGIN_PATH", &q.plugins)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(summary["ok"], true);
    // What the client did is in the queue, as the command line sees it.
    let log = q.ok(&["logs", "1"]);
    assert!(log.contains("hello from python"), "{log}");
    assert_eq!(q.task("2")["history"][0]["finishedBy"], "py-agent");
}

#[test]
fn lines_no_client_should_send_get_json_rpc_errors_not_silence() {
    let q = TestQueue::new();
    let mut server = q
        .host()
        .arg("mcp")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = server.stdin.take().unwrap();
    let (answers, inbox) = std::sync::mpsc::channel();
    let stdout = server.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = answers.send(serde_json::from_str::<Value>(&line).unwrap());
        }
    });
    let next = || inbox.recv_timeout(Duration::from_secs(10)).unwrap();
    let mut send = |line: &str| writeln!(stdin, "{line}").unwrap();

    send(
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"by-hand","version":"0"}}}"#,
    );
    let hello = next();
    assert_eq!(hello["result"]["serverInfo"]["name"], "host", "{hello}");
    send(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);

    send("{this is not json");
    let parse_error = next();
    assert_eq!(parse_error["error"]["code"], -32700, "{parse_error}");
    assert_eq!(parse_error["id"], Value::Null, "{parse_error}");

    for (id, arguments) in [(2, "5"), (3, r#""x""#), (4, "[1]")] {
        send(&format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"status","arguments":{arguments}}}}}"#
        ));
        let answer = next();
        assert_eq!(answer["id"], id, "{answer}");
        assert_eq!(answer["error"]["code"], -32602, "{answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("`arguments` must be an object"),
            "{message}"
        );
    }

    // Still serving.
    send(
        r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"status","arguments":{}}}"#,
    );
    let status = next();
    assert_eq!(status["id"], 5, "{status}");
    assert!(
        status["result"]["structuredContent"]["counts"].is_object(),
        "{status}"
    );

    // A waiting claim that its client cancels takes nothing: what comes meanwhile stays queued.
    send(
        r#"{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"claim_task","arguments":{"role":"noop","waitSecs":30}}}"#,
    );
    std::thread::sleep(Duration::from_millis(500));
    send(r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":6}}"#);
    std::thread::sleep(Duration::from_millis(1500));
    let id = q.add(&["--type", "noop"]);
    std::thread::sleep(Duration::from_millis(2500));
    let task = q.task(&id);
    assert_eq!(task["status"], "pending", "{task:#}");
    drop(stdin);
    assert!(server.wait().unwrap().success());
}

#[test]
fn a_task_over_the_size_limit_is_refused_as_by_the_dashboard() {
    let q = TestQueue::new();
    talk_to_server(&q, async |client| {
        let big = "x".repeat(3 * 1024 * 1024);
        let refused = call(
            client,
            "add_task",
            json!({"type": "noop", "description": big}),
        )
        .await
        .unwrap_err();
        assert!(
            refused.contains("over the limit of 2097152 bytes (2 MiB)"),
            "{}",
            &refused[..refused.len().min(500)]
        );
        let refused = call(
            client,
            "add_tasks",
            json!({"tasks": [{"type": "noop"}, {"type": "noop", "payload": {"text": big}}]}),
        )
        .await
        .unwrap_err();
        assert!(
            refused.contains("task 2") && refused.contains("2097152 bytes"),
            "{}",
            &refused[..refused.len().min(500)]
        );
    });
    assert_eq!(q.status()["counts"]["pending"], 0, "nothing was added");
}

#[test]
fn list_tasks_pages_round_trip_and_the_schemas_state_the_limits_the_tools_keep() {
    let q = TestQueue::new();
    talk_to_server(&q, async |client| {
        let json = |text: Result<String, String>| -> Value {
            serde_json::from_str(&text.unwrap()).unwrap()
        };
        for _ in 0..3 {
            call(client, "add_task", json!({"type": "noop"}))
                .await
                .unwrap();
        }
        let first = json(call(client, "list_tasks", json!({"limit": 2})).await);
        assert_eq!(first["tasks"].as_array().unwrap().len(), 2, "{first}");
        // `next` has the type `before` declares, and goes back as it came.
        assert!(first["next"].is_u64(), "next is a number: {first}");
        let second = json(
            call(
                client,
                "list_tasks",
                json!({"limit": 2, "before": first["next"]}),
            )
            .await,
        );
        assert_eq!(second["tasks"].as_array().unwrap().len(), 1, "{second}");
        assert_eq!(second["tasks"][0]["id"], "1", "{second}");
        assert_eq!(second["next"], Value::Null, "{second}");
        // A task's id, a string, is a `before` too.
        let by_text = json(call(client, "list_tasks", json!({"before": "2"})).await);
        assert_eq!(by_text["tasks"][0]["id"], "1", "{by_text}");
        let refused = call(client, "list_tasks", json!({"before": "two"})).await;
        assert!(refused.unwrap_err().contains("not a task id"));

        let tools = client.list_all_tools().await.unwrap();
        let schema = |tool: &str, field: &str| -> Value {
            let tool = tools.iter().find(|t| t.name == tool).unwrap();
            Value::Object((*tool.input_schema).clone())["properties"][field].clone()
        };
        let percent = schema("progress_task", "percent");
        assert_eq!(percent["maximum"], 100, "{percent}");
        let attempts = schema("add_task", "maxAttempts");
        assert_eq!(attempts["minimum"], 1, "{attempts}");
        let timeout = schema("add_task", "timeoutSecs");
        assert_eq!(timeout["minimum"], 1, "{timeout}");
        // And the tools refuse what the schemas leave out.
        let refused = call(
            client,
            "add_task",
            json!({"type": "noop", "maxAttempts": 0}),
        )
        .await;
        assert!(refused.unwrap_err().contains("at least 1"));
    });
}

#[test]
fn the_tools_work_on_a_postgres_queue() {
    let q = TestQueue::on_postgres();
    talk_to_server(&q, async |client| {
        let json = |text: Result<String, String>| -> Value {
            serde_json::from_str(&text.unwrap()).unwrap()
        };

        let first = json(call(client, "add_task", json!({"type": "noop"})).await);
        let id = first["id"].as_str().unwrap().to_string();
        let second = json(call(client, "add_task", json!({"type": "noop", "after": [id]})).await);
        let got = json(call(client, "get_task", json!({"id": second["id"]})).await);
        assert_eq!(got["prerequisites"][0]["id"], id.as_str(), "{got}");
        let paused = json(call(client, "pause", json!({"type": "noop"})).await);
        assert_eq!(paused["paused"], json!(["type noop"]));
        let status = json(call(client, "status", json!({})).await);
        assert_eq!(status["counts"]["pending"], 1, "{status}");
        assert_eq!(status["paused"], json!(["type noop"]));
        let resumed = json(call(client, "resume", json!({"type": "noop"})).await);
        assert_eq!(resumed["paused"], json!([]));
        let cancelled = json(call(client, "cancel_task", json!({"id": id})).await);
        assert_eq!(cancelled["status"], "cancelled");
        let retried = json(call(client, "retry_task", json!({"id": id})).await);
        assert_eq!(retried["status"], "pending");
        let missing = call(client, "get_task", json!({"id": "999"})).await;
        assert!(missing.unwrap_err().contains("999"));
        let listed = json(call(client, "list_tasks", json!({"status": "pending"})).await);
        assert_eq!(listed["tasks"][0]["id"], id.as_str(), "{listed}");
    });
    // The server's answers and the command line's agree.
    assert_eq!(q.status()["counts"]["pending"], 1);
}

#[test]
fn snooze_task_puts_a_waiting_or_held_task_off_without_spending_an_attempt() {
    let q = TestQueue::new();
    talk_to_server(&q, async |client| {
        let json = |text: Result<String, String>| -> Value {
            serde_json::from_str(&text.unwrap()).unwrap()
        };
        let waiting = json(call(client, "add_task", json!({"type": "noop"})).await);
        let snoozed = json(
            call(
                client,
                "snooze_task",
                json!({"id": waiting["id"], "secs": 3600}),
            )
            .await,
        );
        assert!(snoozed["snoozedUntil"].is_string(), "{snoozed}");
        let none = call(client, "claim_task", json!({"role": "noop"})).await;
        assert!(none.unwrap_err().contains("no task to claim"));

        let held = json(call(client, "add_task", json!({"type": "noop"})).await);
        let claimed = json(call(client, "claim_task", json!({"role": "noop"})).await);
        assert_eq!(claimed["id"], held["id"]);
        let snoozed = json(
            call(
                client,
                "snooze_task",
                json!({"id": held["id"], "until": "2999-01-01T00:00:00Z",
                       "leaseToken": claimed["leaseToken"], "reason": "quota"}),
            )
            .await,
        );
        assert_eq!(snoozed["status"], "pending", "{snoozed}");
        assert_eq!(snoozed["attempts"], 0, "{snoozed}");
        assert_eq!(
            snoozed["snoozedUntil"], "2999-01-01T00:00:00.000Z",
            "{snoozed}"
        );
        let neither = call(client, "snooze_task", json!({"id": held["id"]})).await;
        assert!(neither.unwrap_err().contains("secs"));
    });
}

#[test]
fn add_tasks_takes_after_any_by_key_and_get_task_gives_those_prerequisites() {
    let q = TestQueue::new();
    talk_to_server(&q, async |client| {
        let json = |text: Result<String, String>| -> Value {
            serde_json::from_str(&text.unwrap()).unwrap()
        };
        let added = json(
            call(
                client,
                "add_tasks",
                json!({"tasks": [
                    {"key": "test", "type": "noop"},
                    {"type": "noop", "afterAny": ["test"], "description": "fix"}
                ]}),
            )
            .await,
        );
        let test = added["tasks"][0]["id"].as_str().unwrap().to_string();
        let fix = &added["tasks"][1];
        assert_eq!(fix["afterAny"], json!([test]), "{added}");
        assert_eq!(fix["status"], "blocked", "{added}");
        assert!(fix.get("after").is_none(), "{added}");
        let got = json(call(client, "get_task", json!({"id": fix["id"]})).await);
        assert_eq!(got["prerequisites"][0]["id"], test.as_str(), "{got}");
        let one = json(
            call(
                client,
                "add_task",
                json!({"type": "noop", "afterAny": [test]}),
            )
            .await,
        );
        assert_eq!(one["status"], "blocked", "{one}");
        let cancelled = json(call(client, "cancel_task", json!({"id": test})).await);
        assert_eq!(cancelled["status"], "cancelled");
        let fix = json(call(client, "get_task", json!({"id": fix["id"]})).await);
        assert_eq!(fix["task"]["status"], "pending", "{fix}");
        let refused = call(
            client,
            "add_task",
            json!({"type": "noop", "afterAny": ["nope"]}),
        )
        .await;
        assert!(
            refused
                .unwrap_err()
                .contains("afterAny: no entry with key \"nope\""),
            "a key of no entry is named"
        );
    });
}

#[test]
fn another_agent_answers_a_running_agents_permission_request_through_inbox_and_answer_task() {
    use crate::acp::{add_script, bind_acp_agent, spawn_drain, wait_for_question};
    let q = TestQueue::new();
    let repo = crate::worktrees::repository(&q);
    bind_acp_agent(&q, "permissions = \"ask\"");
    let id = add_script(&q, &repo, "[[acp write notes.txt allowed by a reviewer]]");
    let worker = spawn_drain(&q);
    wait_for_question(&q, &id, "Write notes.txt");
    talk_to_server(&q, async |client| {
        let inbox: Value =
            serde_json::from_str(&call(client, "inbox", json!({})).await.unwrap()).unwrap();
        let item = &inbox["items"][0];
        assert_eq!(item["kind"], "input", "{inbox:#}");
        assert_eq!(item["task"], id.as_str(), "{inbox:#}");
        assert_eq!(item["input"]["options"][0]["id"], "allow_once", "{inbox:#}");
        // `input` filters the list as `host list --status input` does.
        let listed: Value = serde_json::from_str(
            &call(client, "list_tasks", json!({"status": "input"}))
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(listed["tasks"][0]["id"], id.as_str(), "{listed:#}");
        assert_eq!(listed["tasks"].as_array().unwrap().len(), 1, "{listed:#}");
        let refused = call(client, "answer_task", json!({"id": id, "option": "sure"}))
            .await
            .unwrap_err();
        assert!(
            refused.contains("\"sure\" is not one of the options offered"),
            "{refused}"
        );
        let said = call(
            client,
            "answer_task",
            json!({"id": id, "option": "allow_once"}),
        )
        .await
        .unwrap();
        assert!(said.contains("answered allow_once"), "{said}");
    });
    let output = worker.wait_with_output().unwrap();
    assert!(output.status.success());
    let task = q.task(&id);
    assert_eq!(task["status"], "completed", "{task:#}");
    let log = q.ok(&["logs", &id]);
    assert!(
        log.contains("option allow_once chosen by an MCP client"),
        "{log}"
    );
}
