//! Fault injection: rules that make matching requests fail the way a real vault or network does.

use serde::{Deserialize, Serialize};

/// What happens to a matching request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FaultAction {
    /// Answer with this status and the service's body for it (429 Throttled, 500, 503, …).
    /// `retry_after` adds a `Retry-After` header in seconds (the real service sends none on GETs).
    Status {
        status: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after: Option<u32>,
    },
    /// Wait this long, then answer normally.
    Delay { ms: u64 },
    /// Close the connection without an answer.
    Drop,
    /// Revoke every token minted so far and answer 401 with the challenge (a token revoked mid-session):
    /// a claims challenge if the token's client declared `CP1`, else the plain one.
    Revoke,
    /// `Revoke`, answered with the plain challenge (`authorization` and `resource`, no claims)
    /// whatever the client declared: how a vault refuses a token it no longer honours.
    RevokeBare,
    /// `Revoke`, answered with a continuous-access-evaluation claims challenge (`error`,
    /// `claims`, no `resource`) whatever the client declared.
    RevokeWithClaims,
    /// Misbehaviour: answer normally, but with `nextLink` set to `url` (another port or host:
    /// whoever follows it hands that origin the vault's token).
    ForeignNextLink { url: String },
    /// Misbehaviour: answer normally, but with `nextLink` naming the request's own URL.
    SelfLink,
    /// Misbehaviour: two pages linking to each other. The page asked for without
    /// `$skiptoken=loop-b` links to the one with it, and that one back to the list's first page.
    LinkLoop,
    /// Misbehaviour: answer normally with the top-level `value` replaced by a string of `bytes`
    /// bytes (a 50 MiB "secret"; Key Vault caps values at 25 KiB).
    HugeValue { bytes: u64 },
    /// Misbehaviour: send the headers (with the whole body's `Content-Length`) and the first half
    /// of the body, then close the connection.
    Truncate,
    /// Misbehaviour: answer 200 with JSON of the wrong shape (an array where an object belongs).
    WrongShape,
    /// Misbehaviour: answer normally with every URL naming this vault rewritten to name `host`
    /// (`host[:port]`) instead: ids, kids and next links of another vault.
    ForeignId { host: String },
}

impl FaultAction {
    /// Faults that change the operation's answer rather than replace it.
    pub fn shapes_the_answer(&self) -> bool {
        matches!(
            self,
            FaultAction::ForeignNextLink { .. }
                | FaultAction::SelfLink
                | FaultAction::LinkLoop
                | FaultAction::HugeValue { .. }
                | FaultAction::Truncate
                | FaultAction::WrongShape
                | FaultAction::ForeignId { .. }
        )
    }
}

/// A rule: which requests, what to do, how many times.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// Operation name (`GetSecret`, `GetSecrets`, `Token`, …) or `*` for every operation.
    #[serde(default = "any")]
    pub op: String,
    /// Object name (case-insensitive); absent matches every name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(flatten)]
    pub action: FaultAction,
    /// How many matching requests it hits; absent means until cleared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
}

fn any() -> String {
    "*".into()
}

impl Fault {
    pub fn status(op: &str, status: u16, count: Option<u32>) -> Self {
        Fault {
            op: op.into(),
            name: None,
            action: FaultAction::Status {
                status,
                retry_after: None,
            },
            count,
        }
    }

    fn matches(&self, op: &str, name: Option<&str>) -> bool {
        (self.op == "*" || self.op.eq_ignore_ascii_case(op))
            && match (&self.name, name) {
                (None, _) => true,
                (Some(want), Some(got)) => want.eq_ignore_ascii_case(got),
                (Some(_), None) => false,
            }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ActiveFault {
    pub id: u64,
    #[serde(flatten)]
    pub fault: Fault,
    /// Hits left; `None` means unlimited.
    pub remaining: Option<u32>,
}

#[derive(Default, Debug)]
pub struct Faults {
    next_id: u64,
    active: Vec<ActiveFault>,
}

impl Faults {
    pub fn add(&mut self, fault: Fault) -> u64 {
        self.next_id += 1;
        self.active.push(ActiveFault {
            id: self.next_id,
            remaining: fault.count,
            fault,
        });
        self.next_id
    }

    pub fn clear(&mut self) {
        self.active.clear();
    }

    pub fn remove(&mut self, id: u64) -> bool {
        let before = self.active.len();
        self.active.retain(|f| f.id != id);
        before != self.active.len()
    }

    pub fn list(&self) -> Vec<ActiveFault> {
        self.active.clone()
    }

    /// The first rule that matches takes the hit; used-up rules disappear.
    pub fn take(&mut self, op: &str, name: Option<&str>) -> Option<FaultAction> {
        let index = self.active.iter().position(|f| f.fault.matches(op, name))?;
        let rule = &mut self.active[index];
        let action = rule.fault.action.clone();
        if let Some(left) = rule.remaining.as_mut() {
            *left = left.saturating_sub(1);
            if *left == 0 {
                self.active.remove(index);
            }
        }
        Some(action)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_rules_run_out_and_names_filter() {
        let mut f = Faults::default();
        f.add(Fault {
            name: Some("Db".into()),
            ..Fault::status("GetSecret", 429, Some(2))
        });
        assert_eq!(f.take("GetSecret", Some("other")), None);
        assert!(f.take("GetSecret", Some("db")).is_some());
        assert!(f.take("getsecret", Some("DB")).is_some());
        assert_eq!(f.take("GetSecret", Some("db")), None);
    }

    #[test]
    fn unlimited_rule_stays_until_cleared() {
        let mut f = Faults::default();
        let id = f.add(Fault::status("*", 503, None));
        for _ in 0..10 {
            assert!(f.take("GetKeys", None).is_some());
        }
        assert!(f.remove(id));
        assert_eq!(f.take("GetKeys", None), None);
    }

    #[test]
    fn json_form_is_flat() {
        let f: Fault = serde_json::from_str(
            r#"{"op":"GetSecret","kind":"status","status":429,"retry_after":1,"count":3}"#,
        )
        .unwrap();
        assert_eq!(
            f.action,
            FaultAction::Status {
                status: 429,
                retry_after: Some(1)
            }
        );
        let f: Fault = serde_json::from_str(
            r#"{"op":"GetSecrets","kind":"foreign_next_link","url":"https://127.0.0.2:1/x"}"#,
        )
        .unwrap();
        assert!(f.action.shapes_the_answer());
        let f: Fault = serde_json::from_str(r#"{"kind":"huge_value","bytes":52428800}"#).unwrap();
        assert_eq!(f.action, FaultAction::HugeValue { bytes: 52428800 });
        let d: Fault = serde_json::from_str(r#"{"kind":"drop"}"#).unwrap();
        assert_eq!(d.op, "*");
        assert_eq!(d.action, FaultAction::Drop);
        for (kind, action) in [
            ("revoke_bare", FaultAction::RevokeBare),
            ("revoke_with_claims", FaultAction::RevokeWithClaims),
        ] {
            let r: Fault = serde_json::from_str(&format!(r#"{{"kind":"{kind}"}}"#)).unwrap();
            assert_eq!(r.action, action);
        }
    }
}
