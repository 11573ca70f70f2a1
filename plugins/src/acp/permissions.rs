//! The role's answers to an agent's permission requests (`permissions`) and questions
//! (elicitation forms, put to a person when the role asks people anything), and what else a
//! role's table says of its ACP sessions (`mode`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use agent_client_protocol_schema::v1 as acp;
use plugin_api::{Answer, InputField, InputOption, Question, Value, serde_json};

use super::{Session, internal, invalid, wire_name};

/// What a role lets an agent do when it asks: `permissions = "allow"`, `"deny"` or `"ask"` (a
/// person answers from the queue: `host answer`) for everything, or a table by the kind of
/// tool the agent names (ACP's tool kinds: `read`, `edit`, `delete`, `move`, `search`,
/// `execute`, `think`, `fetch`, `switch_mode`, `other`), with `default` for the kinds it leaves
/// out (`deny` unless given). A request a person leaves unanswered for `ask_timeout` (default
/// one hour) is answered with the agent's reject option.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permissions {
    by_kind: BTreeMap<String, Decision>,
    default: Decision,
    ask_timeout: Duration,
}

/// How long a question waits for a person unless the role's `ask_timeout` says otherwise.
pub const DEFAULT_ASK_TIMEOUT: Duration = Duration::from_secs(3600);

/// One answer to a permission request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// One of the agent's allow options (once rather than always).
    Allow,
    /// One of the agent's reject options (once rather than always).
    Deny,
    /// The option a person chooses from the queue (`host answer`).
    Ask,
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
    /// `"allow"`, `"deny"` or `"ask"` as the table's `key` says.
    fn read(value: &Value, key: &str) -> Result<Decision, String> {
        match value.as_str() {
            Some("allow") => Ok(Decision::Allow),
            Some("deny") => Ok(Decision::Deny),
            Some("ask") => Ok(Decision::Ask),
            _ => Err(format!(
                "`{key}` must be \"allow\", \"deny\" or \"ask\", not {value}"
            )),
        }
    }
}

impl Permissions {
    /// The role's `permissions`: everything allowed when it has none, as the stream modes'
    /// auto-approving flags do.
    pub fn read(settings: &Value) -> Result<Permissions, String> {
        let ask_timeout = match settings.get("ask_timeout") {
            None => DEFAULT_ASK_TIMEOUT,
            Some(Value::String(text)) => text
                .parse::<jiff::SignedDuration>()
                .ok()
                .and_then(|d| Duration::try_from(d).ok())
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    format!("`ask_timeout` must be a length of time such as \"30m\", not {text:?}")
                })?,
            Some(other) => {
                return Err(format!(
                    "`ask_timeout` must be a length of time such as \"30m\", not {other}"
                ));
            }
        };
        let allow_all = Permissions {
            by_kind: BTreeMap::new(),
            default: Decision::Allow,
            ask_timeout,
        };
        match settings.get("permissions") {
            None => Ok(allow_all),
            Some(Value::Object(table)) => {
                let mut permissions = Permissions {
                    by_kind: BTreeMap::new(),
                    default: Decision::Deny,
                    ask_timeout,
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
                ask_timeout,
            }),
        }
    }

    /// Whether a person answers anything for this role: then the agent's questions
    /// (elicitation) go to them too; otherwise they are declined, as nobody watches.
    pub fn asks_people(&self) -> bool {
        self.default == Decision::Ask || self.by_kind.values().any(|d| *d == Decision::Ask)
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
        let about = format!("permission for {title} ({kind})");
        let outcome = match self.permissions.decide(&kind) {
            Decision::Ask => self.ask_person(&request, &title, &kind),
            decision => {
                let by = "by the role's permissions";
                choose(self.ctx, &about, &request.options, decision, by)
            }
        };
        serde_json::to_value(acp::RequestPermissionResponse::new(outcome)).map_err(internal)
    }

    /// Answers `elicitation/create`: a form's question goes to a person through the queue
    /// when the role asks people anything (its fields to fill, `accept` or `decline`); it is
    /// declined when nobody is asked, when nobody answers in time, and for modes other than a
    /// form; cancelled when the task stops.
    pub(super) fn elicit(&mut self, params: Value) -> Result<Value, (i64, String)> {
        let request: acp::CreateElicitationRequest =
            serde_json::from_value(params).map_err(invalid)?;
        let about = format!(
            "question {:?}",
            crate::command::shorten(&request.message, 200)
        );
        let action = if self.cancelled {
            self.ctx.log(&format!(
                "{about}: answered cancel (the turn is being cancelled)"
            ));
            acp::ElicitationAction::Cancel
        } else if !self.permissions.asks_people() {
            self.ctx.log(&format!(
                "{about}: declined (the role asks no person: permissions = \"ask\" would)"
            ));
            acp::ElicitationAction::Decline
        } else if let acp::ElicitationMode::Form(form) = &request.mode {
            self.ask_form(&about, &request.message, &form.requested_schema)
        } else {
            self.ctx.log(&format!(
                "{about}: declined (only forms are answered from the queue)"
            ));
            acp::ElicitationAction::Decline
        };
        serde_json::to_value(acp::CreateElicitationResponse::new(action)).map_err(internal)
    }

    /// Puts a form to a person and turns their answer into the agent's.
    fn ask_form(
        &mut self,
        about: &str,
        message: &str,
        schema: &acp::ElicitationSchema,
    ) -> acp::ElicitationAction {
        let required = schema.required.clone().unwrap_or_default();
        let fields = schema
            .properties
            .iter()
            .map(|(name, property)| {
                let (kind, title, choices) = match property {
                    acp::ElicitationPropertySchema::String(s) => (
                        "string",
                        s.title.clone(),
                        s.enum_values.clone().unwrap_or_else(|| {
                            s.one_of.iter().flatten().map(|o| o.value.clone()).collect()
                        }),
                    ),
                    acp::ElicitationPropertySchema::Number(n) => {
                        ("number", n.title.clone(), vec![])
                    }
                    acp::ElicitationPropertySchema::Integer(i) => {
                        ("integer", i.title.clone(), vec![])
                    }
                    acp::ElicitationPropertySchema::Boolean(b) => {
                        ("boolean", b.title.clone(), vec![])
                    }
                    _ => ("string", None, vec![]),
                };
                InputField {
                    name: name.clone(),
                    title,
                    kind: kind.to_string(),
                    choices,
                    required: required.contains(name),
                }
            })
            .collect();
        let option = |id: &str, name: &str| InputOption {
            id: id.to_string(),
            name: name.to_string(),
            kind: Some(id.to_string()),
        };
        let question = Question {
            title: message.to_string(),
            tool: None,
            detail: schema.description.clone(),
            options: vec![option("accept", "Answer"), option("decline", "Decline")],
            fields,
        };
        match self.ask(&question) {
            Answer::Chosen { option, fields, by } if option == "accept" => {
                self.ctx.log(&format!(
                    "{about}: answered by {}",
                    by.as_deref().unwrap_or("a person")
                ));
                let content = serde_json::from_value(Value::Object(fields)).ok();
                acp::ElicitationAction::Accept(acp::ElicitationAcceptAction::new().content(content))
            }
            Answer::Chosen { by, .. } => {
                self.ctx.log(&format!(
                    "{about}: declined by {}",
                    by.as_deref().unwrap_or("a person")
                ));
                acp::ElicitationAction::Decline
            }
            Answer::TimedOut => {
                self.ctx.log(&format!(
                    "{about}: declined as nobody answered within {}s",
                    self.permissions.ask_timeout.as_secs()
                ));
                acp::ElicitationAction::Decline
            }
            Answer::Stopped => {
                self.ctx
                    .log(&format!("{about}: answered cancel (the task is stopping)"));
                acp::ElicitationAction::Cancel
            }
            Answer::Failed { reason } => {
                self.ctx.log(&format!(
                    "{about}: declined as it could not be put to a person ({reason})"
                ));
                acp::ElicitationAction::Decline
            }
        }
    }

    /// Puts `question` to a person and waits; the wait counts neither as work nor as a stall.
    fn ask(&mut self, question: &Question) -> Answer {
        let asked = Instant::now();
        let answer = self.ctx.ask(question, self.permissions.ask_timeout);
        self.waited += asked.elapsed();
        self.last_update = Instant::now();
        answer
    }

    /// Puts a permission request to a person through the queue and answers with their choice;
    /// with the agent's reject option when nobody answers in time, `cancelled` when the task
    /// stops meanwhile.
    fn ask_person(
        &mut self,
        request: &acp::RequestPermissionRequest,
        title: &str,
        kind: &str,
    ) -> acp::RequestPermissionOutcome {
        let about = format!("permission for {title} ({kind})");
        let question = Question {
            title: title.to_string(),
            tool: Some(kind.to_string()),
            detail: request
                .tool_call
                .fields
                .raw_input
                .as_ref()
                .map(|input| crate::command::shorten(&input.to_string(), 2000)),
            options: request
                .options
                .iter()
                .map(|o| InputOption {
                    id: o.option_id.to_string(),
                    name: o.name.clone(),
                    kind: Some(wire_name(&o.kind)),
                })
                .collect(),
            fields: Vec::new(),
        };
        match self.ask(&question) {
            Answer::Chosen { option, by, .. } => {
                self.ctx.log(&format!(
                    "{about}: option {option} chosen by {}",
                    by.as_deref().unwrap_or("a person")
                ));
                acp::RequestPermissionOutcome::Selected(acp::SelectedPermissionOutcome::new(option))
            }
            Answer::TimedOut => {
                let waited = format!(
                    "as nobody answered within {}s",
                    self.permissions.ask_timeout.as_secs()
                );
                choose(self.ctx, &about, &request.options, Decision::Deny, &waited)
            }
            Answer::Stopped => {
                self.ctx.log(&format!(
                    "{about}: answered cancelled (the task is stopping)"
                ));
                acp::RequestPermissionOutcome::Cancelled
            }
            Answer::Failed { reason } => {
                let why = format!("as it could not be put to a person ({reason})");
                choose(self.ctx, &about, &request.options, Decision::Deny, &why)
            }
        }
    }
}

/// The agent's option for `decision` (allow or deny, once rather than always), logged with
/// `why`; `cancelled` when the agent offered none such.
fn choose(
    ctx: &plugin_api::Context<'_>,
    about: &str,
    options: &[acp::PermissionOption],
    decision: Decision,
    why: &str,
) -> acp::RequestPermissionOutcome {
    let (wanted, verb) = match decision {
        Decision::Allow => (
            [
                acp::PermissionOptionKind::AllowOnce,
                acp::PermissionOptionKind::AllowAlways,
            ],
            "allowed",
        ),
        Decision::Deny | Decision::Ask => (
            [
                acp::PermissionOptionKind::RejectOnce,
                acp::PermissionOptionKind::RejectAlways,
            ],
            "denied",
        ),
    };
    match wanted
        .iter()
        .find_map(|kind| options.iter().find(|o| o.kind == *kind))
    {
        Some(option) => {
            ctx.log(&format!(
                "{about}: {verb} {why} (option {})",
                option.option_id
            ));
            acp::RequestPermissionOutcome::Selected(acp::SelectedPermissionOutcome::new(
                option.option_id.clone(),
            ))
        }
        None => {
            // Neither allowed nor refused as the rules say: the request is withdrawn.
            ctx.log(&format!(
                "{about}: {verb} {why}, but the agent offered no such option; answered cancelled"
            ));
            acp::RequestPermissionOutcome::Cancelled
        }
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
        let ask = Permissions::read(&json!({"permissions": {"execute": "ask"}})).unwrap();
        assert_eq!(ask.decide("execute"), Decision::Ask);
        assert_eq!(ask.ask_timeout, DEFAULT_ASK_TIMEOUT);
        let soon = json!({"permissions": "ask", "ask_timeout": "90s"});
        assert_eq!(
            Permissions::read(&soon).unwrap().ask_timeout,
            Duration::from_secs(90)
        );
        let err = Permissions::read(&json!({"permissions": "maybe"})).unwrap_err();
        assert!(err.contains("\"allow\", \"deny\" or \"ask\""), "{err}");
        let err = Permissions::read(&json!({"ask_timeout": "soon"})).unwrap_err();
        assert!(err.contains("ask_timeout"), "{err}");
    }
}
