//! Answers bent on purpose: the misbehaviour faults a hostile or broken vault (or whatever sits
//! between it and the client) can produce. Each takes the operation's real answer and changes it.

use serde_json::{Value, json};

use crate::faults::FaultAction;

/// Where the answer goes: the request as the client made it.
pub struct Asked<'a> {
    /// `https://host[:port]` as the client addressed us.
    pub base: &'a str,
    pub path: &'a str,
    pub query: &'a [(String, String)],
}

/// The bytes to send, and the `Content-Length` to claim when it is not their length.
pub struct Bent {
    pub body: Vec<u8>,
    pub claimed_length: Option<usize>,
}

/// The `$skiptoken` that marks the second page of a [`FaultAction::LinkLoop`].
pub const LOOP_TOKEN: &str = "loop-b";

/// Whether `query` asks for the second page of a link loop (the operation must not see the
/// token: it is not one of its own).
pub fn is_loop_page(query: &[(String, String)]) -> bool {
    query
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("$skiptoken") && v == LOOP_TOKEN)
}

fn encode_query(pairs: &[(String, String)]) -> String {
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        out.append_pair(k, v);
    }
    out.finish()
}

/// `action` applied to the real answer `body`.
pub fn bend(action: &FaultAction, body: Option<Value>, asked: &Asked<'_>) -> Bent {
    let whole = |value: &Value| Bent {
        body: serde_json::to_vec(value).expect("JSON serialises"),
        claimed_length: None,
    };
    let mut body = body.unwrap_or_else(|| json!({}));
    match action {
        FaultAction::ForeignNextLink { url } => {
            body["nextLink"] = json!(url);
            whole(&body)
        }
        FaultAction::SelfLink => {
            let link = format!("{}{}?{}", asked.base, asked.path, encode_query(asked.query));
            body["nextLink"] = json!(link);
            whole(&body)
        }
        FaultAction::LinkLoop => {
            let others: Vec<(String, String)> = asked
                .query
                .iter()
                .filter(|(k, _)| !k.eq_ignore_ascii_case("$skiptoken"))
                .cloned()
                .collect();
            let mut next = others.clone();
            if !is_loop_page(asked.query) {
                next.push(("$skiptoken".into(), LOOP_TOKEN.into()));
            }
            body["nextLink"] = json!(format!(
                "{}{}?{}",
                asked.base,
                asked.path,
                encode_query(&next)
            ));
            whole(&body)
        }
        FaultAction::HugeValue { bytes } => {
            body["value"] = json!("A".repeat(*bytes as usize));
            whole(&body)
        }
        FaultAction::Truncate => {
            let full = serde_json::to_vec(&body).expect("JSON serialises");
            let half = full.len() / 2;
            Bent {
                claimed_length: Some(full.len()),
                body: full[..half].to_vec(),
            }
        }
        FaultAction::WrongShape => whole(&json!(["not", "the", "answer", {"id": 42}])),
        FaultAction::ForeignId { host } => {
            let text = serde_json::to_string(&body).expect("JSON serialises");
            let scheme = asked.base.split("://").next().unwrap_or("https");
            let foreign = format!("{scheme}://{host}");
            let bent = text.replace(asked.base, &foreign);
            Bent {
                body: bent.into_bytes(),
                claimed_length: None,
            }
        }
        // Not answer-shaping faults: the real answer.
        _ => whole(&body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked(query: &[(&str, &str)]) -> Vec<(String, String)> {
        query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn link(bent: &Bent) -> String {
        let v: Value = serde_json::from_slice(&bent.body).unwrap();
        v["nextLink"].as_str().unwrap().to_string()
    }

    #[test]
    fn links_bend_as_described() {
        let q = asked(&[("api-version", "7.6")]);
        let a = Asked {
            base: "https://127.0.0.1:8443",
            path: "/secrets",
            query: &q,
        };
        let page = Some(json!({"value": [], "nextLink": null}));
        assert_eq!(
            link(&bend(&FaultAction::SelfLink, page.clone(), &a)),
            "https://127.0.0.1:8443/secrets?api-version=7.6"
        );
        let to_b = link(&bend(&FaultAction::LinkLoop, page.clone(), &a));
        assert_eq!(
            to_b,
            "https://127.0.0.1:8443/secrets?api-version=7.6&%24skiptoken=loop-b"
        );
        let q = asked(&[("api-version", "7.6"), ("$skiptoken", LOOP_TOKEN)]);
        assert!(is_loop_page(&q));
        let b = Asked { query: &q, ..a };
        assert_eq!(
            link(&bend(&FaultAction::LinkLoop, page.clone(), &b)),
            "https://127.0.0.1:8443/secrets?api-version=7.6"
        );
    }

    #[test]
    fn bodies_bend_as_described() {
        let q = asked(&[]);
        let a = Asked {
            base: "https://127.0.0.1:8443",
            path: "/secrets/x",
            query: &q,
        };
        let secret = Some(json!({"value": "v", "id": "https://127.0.0.1:8443/secrets/x/1"}));
        let full = serde_json::to_vec(secret.as_ref().unwrap()).unwrap().len();
        let t = bend(&FaultAction::Truncate, secret.clone(), &a);
        assert_eq!(t.claimed_length, Some(full));
        assert_eq!(t.body.len(), full / 2);
        let f = bend(
            &FaultAction::ForeignId {
                host: "127.0.0.2:9".into(),
            },
            secret.clone(),
            &a,
        );
        let v: Value = serde_json::from_slice(&f.body).unwrap();
        assert_eq!(v["id"], "https://127.0.0.2:9/secrets/x/1");
        let h = bend(&FaultAction::HugeValue { bytes: 1000 }, secret, &a);
        let v: Value = serde_json::from_slice(&h.body).unwrap();
        assert_eq!(v["value"].as_str().unwrap().len(), 1000);
        let w = bend(&FaultAction::WrongShape, None, &a);
        assert!(serde_json::from_slice::<Value>(&w.body).unwrap().is_array());
    }
}
