//! The smallest role plugin: role `noop` claims `noop` tasks and completes them at once.

use plugin_api::{Context, HandlerError, Role, Task, Value, json};

/// Completes every task immediately, echoing its id and payload.
struct Noop;

impl Role for Noop {
    fn name(&self) -> &str {
        "noop"
    }

    fn task_types(&self) -> Vec<String> {
        vec!["noop".into()]
    }

    fn handle(&self, task: &Task, _ctx: &Context<'_>) -> Result<Value, HandlerError> {
        Ok(json!({ "id": task.id, "payload": task.payload }))
    }
}

plugin_api::export_plugin!(Noop);
