//! List paging: `maxresults`, an opaque `$skiptoken` and an absolute `nextLink` that points back at
//! this server, as the service does it.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::VaultError;
use crate::settings::Settings;

/// What the skip token carries: where the next page starts. The service's token is JSON with a
/// `NextMarker`; ours keeps that shape.
#[derive(Serialize, Deserialize, Default)]
struct Marker {
    #[serde(rename = "NextMarker")]
    next_marker: String,
    #[serde(rename = "TargetLocation")]
    target_location: u32,
    /// Set on the link that follows an injected empty page, so the real page comes next.
    #[serde(rename = "E", default, skip_serializing_if = "std::ops::Not::not")]
    after_empty: bool,
}

fn encode(marker: &Marker) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(marker).expect("marker serialises"))
}

fn decode(token: &str) -> Result<Marker, VaultError> {
    URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| VaultError::bad_parameter("The skip token is not valid."))
}

/// A list request's paging parameters.
pub struct PageRequest<'a> {
    /// `https://host[:port]`
    pub base: &'a str,
    /// Path of the list, e.g. `/secrets` or `/secrets/name/versions`.
    pub path: &'a str,
    pub api_version: &'a str,
    pub query: &'a [(String, String)],
}

fn query_value<'a>(query: &'a [(String, String)], key: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v.as_str())
}

/// One page of `items`, which must be sorted by their key. Returns the list-result body.
pub fn page(
    items: Vec<(String, Value)>,
    request: &PageRequest<'_>,
    settings: &Settings,
) -> Result<Value, VaultError> {
    let max_results = match query_value(request.query, "maxresults") {
        None => None,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=25).contains(&n) => Some(n),
            _ => {
                return Err(VaultError::bad_parameter(format!(
                    "Invalid value for maxresults: '{v}'. The value must be between 1 and 25."
                )));
            }
        },
    };
    let marker = match query_value(request.query, "$skiptoken") {
        Some(t) => decode(t)?,
        None => Marker::default(),
    };
    let next_link = |marker: &Marker| {
        let mut link = format!(
            "{}{}?api-version={}&$skiptoken={}",
            request.base,
            request.path,
            request.api_version,
            encode(marker)
        );
        if let Some(n) = max_results {
            link.push_str(&format!("&maxresults={n}"));
        }
        link
    };
    if settings.empty_pages && !marker.after_empty {
        let follow = Marker {
            after_empty: true,
            ..marker
        };
        return Ok(json!({ "value": [], "nextLink": next_link(&follow) }));
    }
    let size = max_results.unwrap_or(settings.page_size);
    let start = if marker.next_marker.is_empty() {
        0
    } else {
        items.partition_point(|(k, _)| k.as_str() <= marker.next_marker.as_str())
    };
    let end = (start + size).min(items.len());
    let mut values: Vec<Value> = items[start..end].iter().map(|(_, v)| v.clone()).collect();
    if settings.shuffle_lists {
        values.shuffle(&mut rand::rng());
    }
    let next = (end < items.len()).then(|| {
        next_link(&Marker {
            next_marker: items[end - 1].0.clone(),
            target_location: 0,
            after_empty: false,
        })
    });
    Ok(json!({ "value": values, "nextLink": next }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(n: usize) -> Vec<(String, Value)> {
        (0..n).map(|i| (format!("K{i:03}"), json!(i))).collect()
    }

    fn query_of(link: &str) -> Vec<(String, String)> {
        let q = link.split_once('?').unwrap().1;
        form_urlencoded::parse(q.as_bytes()).into_owned().collect()
    }

    #[test]
    fn walks_every_item_once_with_self_pointing_links() {
        let settings = Settings::default();
        let mut query = vec![("api-version".to_string(), "7.5".to_string())];
        let mut seen = Vec::new();
        loop {
            let body = page(
                items(60),
                &PageRequest {
                    base: "https://127.0.0.1:1",
                    path: "/secrets",
                    api_version: "7.5",
                    query: &query,
                },
                &settings,
            )
            .unwrap();
            seen.extend(body["value"].as_array().unwrap().iter().cloned());
            match body["nextLink"].as_str() {
                Some(link) => {
                    assert!(
                        link.starts_with("https://127.0.0.1:1/secrets?api-version=7.5&$skiptoken=")
                    );
                    query = query_of(link);
                }
                None => break,
            }
        }
        assert_eq!(seen, (0..60).map(|i| json!(i)).collect::<Vec<_>>());
    }

    #[test]
    fn maxresults_is_kept_in_links_and_bounded() {
        let settings = Settings::default();
        let query = vec![("maxresults".to_string(), "2".to_string())];
        let req = PageRequest {
            base: "https://h",
            path: "/keys",
            api_version: "2025-07-01",
            query: &query,
        };
        let body = page(items(5), &req, &settings).unwrap();
        assert_eq!(body["value"].as_array().unwrap().len(), 2);
        assert!(
            body["nextLink"]
                .as_str()
                .unwrap()
                .ends_with("&maxresults=2")
        );
        let bad = vec![("maxresults".to_string(), "26".to_string())];
        let req = PageRequest { query: &bad, ..req };
        assert_eq!(page(items(5), &req, &settings).unwrap_err().status, 400);
    }

    #[test]
    fn empty_pages_come_before_real_ones() {
        let settings = Settings {
            empty_pages: true,
            ..Settings::default()
        };
        let req = PageRequest {
            base: "https://h",
            path: "/keys",
            api_version: "7.5",
            query: &[],
        };
        let first = page(items(3), &req, &settings).unwrap();
        assert_eq!(first["value"], json!([]));
        let q = query_of(first["nextLink"].as_str().unwrap());
        let second = page(items(3), &PageRequest { query: &q, ..req }, &settings).unwrap();
        assert_eq!(second["value"].as_array().unwrap().len(), 3);
        assert_eq!(second["nextLink"], Value::Null);
    }
}
