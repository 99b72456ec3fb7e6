//! Serde models of GHL's v2 API (`Version: 2021-07-28`), per `ghl-openapi/` and
//! `reference/ghl.md`. Every model keeps unknown fields (`extra`) so nothing is lost in a
//! round trip; every field but the id is optional because GHL omits fields freely.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// GHL's error body: `{statusCode, message, error}` where `message` is a string or an array.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    #[serde(default)]
    pub status_code: Option<u16>,
    #[serde(default)]
    pub message: Option<Message>,
    #[serde(default)]
    pub error: Option<String>,
}

/// `message` is a string, or an array of strings on 422.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Message {
    One(String),
    Many(Vec<String>),
}

impl Message {
    pub fn joined(&self) -> String {
        match self {
            Message::One(text) => text.clone(),
            Message::Many(items) => items.join("; "),
        }
    }
}

/// A contact, from `GET /contacts/:id` or a search item. Search items differ in shape
/// (`address` for `address1`, epoch `dateOfBirth`, extra fields): the sync normalises them.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Contact {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date_added: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date_updated: Option<String>,
    /// Search items only: the cursor to pass as `searchAfter` for the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search_after: Option<Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `POST /contacts/search` body.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SearchRequest {
    pub location_id: String,
    pub page_limit: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search_after: Option<Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sort: Vec<Value>,
}

impl SearchRequest {
    /// Contacts updated at or after `since` (ISO-8601), oldest first: the incremental poll.
    pub fn updated_since(location_id: &str, page_limit: u32, since: Option<&str>) -> Self {
        let filters = since
            .map(|since| {
                vec![serde_json::json!({"field": "dateUpdated", "operator": "range", "value": {"gte": since}})]
            })
            .unwrap_or_default();
        Self {
            location_id: location_id.to_owned(),
            page_limit,
            search_after: None,
            filters,
            sort: vec![serde_json::json!({"field": "dateUpdated", "direction": "asc"})],
        }
    }

    /// Every contact, oldest added first: id listing for reconciliation.
    pub fn all_by_date_added(location_id: &str, page_limit: u32) -> Self {
        Self {
            location_id: location_id.to_owned(),
            page_limit,
            search_after: None,
            filters: Vec::new(),
            sort: vec![serde_json::json!({"field": "dateAdded", "direction": "asc"})],
        }
    }
}

/// `POST /contacts/search` answer. Items stay raw JSON so one malformed item can be set
/// aside (dead-lettered) without failing the page; convert with `Contact::try_from`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SearchResponse {
    #[serde(default)]
    pub contacts: Vec<Value>,
    #[serde(default)]
    pub total: Option<u64>,
    #[serde(default)]
    pub trace_id: Option<String>,
}

/// `{contact: …}` wrapper of single-contact answers.
#[derive(Debug, Clone, Deserialize)]
pub struct ContactEnvelope {
    pub contact: Contact,
}

/// A task: no timestamps exist in REST (reference/ghl.md §6.4).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    /// `id` in per-contact lists; `_id` in the location-wide search.
    #[serde(alias = "_id")]
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed: Option<bool>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Task lists stay raw JSON per item (see [`SearchResponse`]).
#[derive(Debug, Clone, Deserialize)]
pub struct TaskList {
    #[serde(default)]
    pub tasks: Vec<Value>,
}

/// A note: only `dateAdded`, no `dateUpdated` (reference/ghl.md §6.5).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Note {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact_id: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Note lists stay raw JSON per item (see [`SearchResponse`]).
#[derive(Debug, Clone, Deserialize)]
pub struct NoteList {
    #[serde(default)]
    pub notes: Vec<Value>,
}

impl TryFrom<Value> for Contact {
    type Error = serde_json::Error;
    fn try_from(value: Value) -> Result<Self, Self::Error> {
        serde_json::from_value(value)
    }
}

/// `POST /locations/:locationId/tasks/search` body.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskSearchRequest {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub contact_id: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed: Option<bool>,
    pub limit: u32,
    pub skip: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_are_strings_or_arrays() {
        let one: ErrorBody =
            serde_json::from_str(r#"{"statusCode":401,"message":"Invalid JWT","error":"Unauthorized"}"#).unwrap();
        assert_eq!(one.message.unwrap().joined(), "Invalid JWT");
        let many: ErrorBody = serde_json::from_str(
            r#"{"message":["property gender should not exist"],"error":"Unprocessable Entity","statusCode":422}"#,
        )
        .unwrap();
        assert_eq!(many.message, Some(Message::Many(vec!["property gender should not exist".into()])));
    }

    #[test]
    fn contacts_keep_unknown_fields_through_a_round_trip() {
        let text = r#"{"id":"c1","dateUpdated":"2026-01-01T00:00:00.000Z","customFields":[{"id":"f","value":1}],"brandNew":{"x":true}}"#;
        let contact: Contact = serde_json::from_str(text).unwrap();
        let back: Value = serde_json::to_value(&contact).unwrap();
        assert_eq!(back, serde_json::from_str::<Value>(text).unwrap());
    }

    #[test]
    fn location_task_search_items_use_underscore_id() {
        let task: Task = serde_json::from_str(r#"{"_id":"t1","contactId":"c1","completed":false}"#).unwrap();
        assert_eq!(task.id, "t1");
    }

    #[test]
    fn the_incremental_search_sorts_ascending_and_filters_from_the_watermark() {
        let body =
            serde_json::to_value(SearchRequest::updated_since("loc", 500, Some("2026-03-01T09:55:00.000Z"))).unwrap();
        assert_eq!(body["sort"][0]["direction"], "asc");
        assert_eq!(body["filters"][0]["value"]["gte"], "2026-03-01T09:55:00.000Z");
        assert_eq!(body["pageLimit"], 500);
        assert!(body.get("searchAfter").is_none());
    }
}
