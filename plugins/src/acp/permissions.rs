//! The role's answers to an agent's permission requests (`permissions`), and what else a role's
//! table says of its ACP sessions (`mode`).

use std::collections::BTreeMap;

use agent_client_protocol_schema::v1 as acp;
use plugin_api::{Value, serde_json};

use super::{Session, internal, invalid, wire_name};

/// What a role lets an agent do when it asks: `permissions = "allow"` or `"deny"` for
/// everything, or a table by the kind of tool the agent names (ACP's tool kinds: `read`,
/// `edit`, `delete`, `move`, `search`, `execute`, `think`, `fetch`, `switch_mode`, `other`),
/// with `default` for the kinds it leaves out (`deny` unless given).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permissions {
    by_kind: BTreeMap<String, Decision>,
    default: Decision,
}

/// One answer to a permission request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// One of the agent's allow options (once rather than always).
    Allow,
    /// One of the agent's reject options (once rather than always).
    Deny,
}

/// ACP's tool kinds, the keys a `permissions` table may use besides `default`.
const TOOL_KINDS: [&str; 10] = [
    "read",
    "edit",
    "delete",
    "move",
    "search",
    "execute",
    "think",
    "fetch",
    "switch_mode",
    "other",
];

impl Decision {
    /// `"allow"` or `"deny"` as the table's `key` says.
    fn read(value: &Value, key: &str) -> Result<Decision, String> {
        match value.as_str() {
            Some("allow") => Ok(Decision::Allow),
            Some("deny") => Ok(Decision::Deny),
            _ => Err(format!(
                "`{key}` must be \"allow\" or \"deny\" (answering from the queue is not built \
                 yet), not {value}"
            )),
        }
    }
}

impl Permissions {
    /// The role's `permissions`: everything allowed when it has none, as the stream modes'
    /// auto-approving flags do.
    pub fn read(settings: &Value) -> Result<Permissions, String> {
        let allow_all = Permissions {
            by_kind: BTreeMap::new(),
            default: Decision::Allow,
        };
        match settings.get("permissions") {
            None => Ok(allow_all),
            Some(Value::Object(table)) => {
                let mut permissions = Permissions {
                    by_kind: BTreeMap::new(),
                    default: Decision::Deny,
                };
                for (kind, value) in table {
                    let decision = Decision::read(value, &format!("permissions.{kind}"))?;
                    if kind == "default" {
                        permissions.default = decision;
                    } else if TOOL_KINDS.contains(&kind.as_str()) {
                        permissions.by_kind.insert(kind.clone(), decision);
                    } else {
                        return Err(format!(
                            "`permissions.{kind}`: unknown tool kind (known: {}, and default)",
                            TOOL_KINDS.join(", ")
                        ));
                    }
                }
                Ok(permissions)
            }
            Some(value) => Ok(Permissions {
                by_kind: BTreeMap::new(),
                default: Decision::read(value, "permissions")?,
            }),
        }
    }

    /// The decision for a tool of `kind` (`other` when the agent names none).
    pub fn decide(&self, kind: &str) -> Decision {
        self.by_kind.get(kind).copied().unwrap_or(self.default)
    }
}

/// What a role's table says of its ACP sessions: its `permissions`, and the session mode to
/// work in (`mode`, one of the agent's own modes' ids; a preset may name one, as Claude Code's
/// `default`, the mode in which it asks before it edits or runs anything).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcpRole {
    /// How the agent's permission requests are answered.
    pub permissions: Permissions,
    pub(super) mode: Option<String>,
    /// Whether the role's table named the mode (an agent that offers no such mode fails the
    /// attempt), rather than the preset (left in its own mode).
    pub(super) mode_required: bool,
}

impl AcpRole {
    /// The role's `permissions` and `mode`; `preset_mode` when the table names no mode.
    pub fn read(settings: &Value, preset_mode: Option<&str>) -> Result<AcpRole, String> {
        let named = match settings.get("mode") {
            None => None,
            Some(Value::String(mode)) if !mode.is_empty() => Some(mode.clone()),
            Some(other) => {
                return Err(format!(
                    "`mode` must name one of the agent's modes, not {other}"
                ));
            }
        };
        Ok(AcpRole {
            permissions: Permissions::read(settings)?,
            mode_required: named.is_some(),
            mode: named.or_else(|| preset_mode.map(String::from)),
        })
    }
}

impl Session<'_, '_> {
    /// Answers `session/request_permission` under the role's permissions, with one of the
    /// agent's own options; after a cancel, `cancelled`, as ACP requires.
    pub(super) fn permission(&mut self, params: Value) -> Result<Value, (i64, String)> {
        let request: acp::RequestPermissionRequest =
            serde_json::from_value(params).map_err(invalid)?;
        let call_id = request.tool_call.tool_call_id.to_string();
        let fields = &request.tool_call.fields;
        // The kind the request names, else the one its tool call was announced with: an agent
        // leaving it out of the request must not fall to the table's default.
        let kind = fields
            .kind
            .as_ref()
            .map(wire_name)
            .or_else(|| self.tools.get(&call_id).and_then(|t| t.kind.clone()))
            .unwrap_or_else(|| "other".to_string());
        let title = fields
            .title
            .clone()
            .or_else(|| self.tools.get(&call_id).map(|t| t.title.clone()))
            .unwrap_or_else(|| call_id.clone());
        if self.cancelled {
            self.ctx.log(&format!(
                "permission for {title} ({kind}): answered cancelled (the turn is being cancelled)"
            ));
            return serde_json::to_value(acp::RequestPermissionResponse::new(
                acp::RequestPermissionOutcome::Cancelled,
            ))
            .map_err(internal);
        }
        let decision = self.permissions.decide(&kind);
        let wanted: [acp::PermissionOptionKind; 2] = match decision {
            Decision::Allow => [
                acp::PermissionOptionKind::AllowOnce,
                acp::PermissionOptionKind::AllowAlways,
            ],
            Decision::Deny => [
                acp::PermissionOptionKind::RejectOnce,
                acp::PermissionOptionKind::RejectAlways,
            ],
        };
        let chosen = wanted
            .iter()
            .find_map(|kind| request.options.iter().find(|o| o.kind == *kind));
        let verb = match decision {
            Decision::Allow => "allowed",
            Decision::Deny => "denied",
        };
        let outcome = match chosen {
            Some(option) => {
                self.ctx.log(&format!(
                    "permission for {title} ({kind}): {verb} by the role's permissions \
                     (option {})",
                    option.option_id
                ));
                acp::RequestPermissionOutcome::Selected(acp::SelectedPermissionOutcome::new(
                    option.option_id.clone(),
                ))
            }
            None => {
                // Neither allowed nor refused as the rules say: the request is withdrawn.
                self.ctx.log(&format!(
                    "permission for {title} ({kind}): the role's permissions say {verb}, but \
                     the agent offered no such option; answered cancelled"
                ));
                acp::RequestPermissionOutcome::Cancelled
            }
        };
        serde_json::to_value(acp::RequestPermissionResponse::new(outcome)).map_err(internal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_api::json;

    #[test]
    fn permissions_read_a_word_or_a_table_by_tool_kind() {
        assert_eq!(
            Permissions::read(&json!({})).unwrap().decide("execute"),
            Decision::Allow
        );
        let deny = Permissions::read(&json!({"permissions": "deny"})).unwrap();
        assert_eq!(deny.decide("edit"), Decision::Deny);
        let table =
            Permissions::read(&json!({"permissions": {"read": "allow", "edit": "allow"}})).unwrap();
        assert_eq!(table.decide("edit"), Decision::Allow);
        assert_eq!(table.decide("execute"), Decision::Deny);
        let err = Permissions::read(&json!({"permissions": {"exec": "allow"}})).unwrap_err();
        assert!(
            err.contains("permissions.exec") && err.contains("execute"),
            "{err}"
        );
        let err = Permissions::read(&json!({"permissions": "ask"})).unwrap_err();
        assert!(err.contains("\"allow\" or \"deny\""), "{err}");
    }
}
