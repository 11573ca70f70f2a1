//! `host mcp`, driven by rmcp's own client over stdio as an assistant would.

use integration_tests::TestQueue;
use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::TokioChildProcess;
use serde_json::{Value, json};

/// Calls a tool and returns its text answer, or the error text when the tool failed.
async fn call(
    client: &rmcp::service::RunningService<rmcp::RoleClient, ()>,
    tool: &'static str,
    arguments: Value,
) -> Result<String, String> {
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
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut command = tokio::process::Command::from(q.host());
        command.arg("mcp");
        let transport = TokioChildProcess::new(command).unwrap();
        let client = ().serve(transport).await.unwrap();

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
                &client,
                "add_task",
                json!({"type": "noop", "description": "from mcp"}),
            )
            .await
            .unwrap(),
        )
        .unwrap();
        let id = added["id"].as_str().unwrap().to_string();
        let refused = call(&client, "add_task", json!({"type": "nonsense"})).await;
        assert!(refused.unwrap_err().contains("unknown task type"));

        let claimed: Value = serde_json::from_str(
            &call(
                &client,
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
        let none = call(&client, "claim_task", json!({"role": "noop"})).await;
        assert!(none.unwrap_err().contains("no task to claim"));

        call(
            &client,
            "heartbeat_task",
            json!({"id": id, "leaseToken": token}),
        )
        .await
        .unwrap();
        let stolen = call(
            &client,
            "complete_task",
            json!({"id": id, "leaseToken": "0".repeat(32), "result": {"stolen": true}}),
        )
        .await;
        assert!(stolen.unwrap_err().contains("held by mcp-agent"));
        call(
            &client,
            "complete_task",
            json!({"id": id, "leaseToken": token, "result": {"done": true}}),
        )
        .await
        .unwrap();
        let listed: Value = serde_json::from_str(
            &call(&client, "list_tasks", json!({"status": "completed"}))
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(listed[0]["id"], id.as_str());
        client.cancel().await.unwrap();
    });
    assert_eq!(q.status()["counts"]["completed"], 1);
    let status = q.ok(&["status"]);
    assert!(
        status.contains("completed") && status.contains('1'),
        "{status}"
    );
}
