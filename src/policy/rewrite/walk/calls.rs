//! Function calls and operators in a statement: the allow-list, the denied-function list, user-defined
//! functions/operators outside `pg_catalog`, and protected settings passed to `set_config`.

use serde_json::Value;

use super::super::Refusal;
use super::{R, Walker, const_string, list, names};
use crate::policy::firewall::{function_denied, setting_refusal};

impl Walker<'_> {
    pub(super) fn function_allowed(&self, schema: &str, name: &str) -> bool {
        let a = &self.ctx.policy.role.allow_functions;
        a.contains(&format!("{schema}.{name}")) || a.contains(name)
    }

    pub(super) fn func_call(&mut self, body: &Value) -> R {
        let parts = names(list(body, "funcname"))
            .ok_or_else(|| Refusal::new("parse", "unexpected function name"))?;
        let (schema, name) = match parts.as_slice() {
            [n] => (None, n.as_str()),
            [s, n] => (Some(s.as_str()), n.as_str()),
            _ => {
                return Err(Refusal::new(
                    "denied-function",
                    "three-part function names are refused",
                ));
            }
        };
        let allowed = self.function_allowed(schema.unwrap_or("pg_catalog"), name);
        match schema {
            Some("pg_catalog") => {}
            Some(other) => {
                if !allowed {
                    return Err(Refusal::new(
                        "denied-function",
                        format!(
                            "function {other}.{name} is outside pg_catalog and not allow-listed"
                        ),
                    ));
                }
            }
            None => {
                if self.catalog()?.user_function_named(name) && !allowed {
                    return Err(Refusal::new(
                        "denied-function",
                        format!(
                            "function {name} could resolve to a user-defined function that is not allow-listed"
                        ),
                    ));
                }
            }
        }
        if function_denied(name) && !allowed {
            return Err(Refusal::new(
                "denied-function",
                format!("function {name} is refused"),
            ));
        }
        if name == "set_config" {
            self.literal_sensitive = true;
            let arg = list(body, "args").first().and_then(const_string);
            let value = list(body, "args").get(1).and_then(const_string);
            match arg {
                None => {
                    return Err(Refusal::new(
                        "protected-setting",
                        "set_config needs a constant setting name",
                    ));
                }
                Some(n) => {
                    if let Some(why) = setting_refusal(&n, value.as_deref()) {
                        return Err(Refusal::new("protected-setting", why));
                    }
                }
            }
        }
        self.walk(body)
    }

    pub(super) fn operator(&mut self, body: &Value) -> R {
        let parts = names(list(body, "name")).unwrap_or_default();
        match parts.as_slice() {
            [op] if self.catalog()?.user_operator_named(op) => {
                return Err(Refusal::new(
                    "denied-operator",
                    format!("operator {op} could resolve to a user-defined operator"),
                ));
            }
            [schema, op] if schema != "pg_catalog" => {
                return Err(Refusal::new(
                    "denied-operator",
                    format!("operator {schema}.{op} is outside pg_catalog"),
                ));
            }
            _ => {}
        }
        self.walk(body)
    }
}
