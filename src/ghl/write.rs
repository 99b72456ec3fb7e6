//! Typed GHL write endpoints (and the few reads write-back needs): contacts create / update /
//! delete, tags, tasks, notes, appointments, business contacts and custom-field definitions
//! (reference/ghl.md §6.1, §6.4–6.6, quirks §6.8).
//!
//! - Success is the 2xx status; `{"succeded": true}` (sic) is accepted but never required.
//! - 422 answers carry an array `message`; [`GhlError::from`] joins it.
//! - POST creates go out with `.idempotent(false)`: the `ApiClient` never blindly repeats them
//!   after a timeout (GHL can answer 422 yet create, #64); the caller looks up before retrying.
//! - `PUT /contacts/:id` bodies are built only from [`UpdateContact`], whose fields are the
//!   spec's `UpdateContactDto` minus `tags` (it replaces all tags; use the tag endpoints) and
//!   never `gender`, `companyName` or `locationId` (422).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::dto::{Contact, Note, Task};
use super::{GhlClient, GhlError, encode};
use crate::http::{ApiRequest, Method, Priority, StatusCode};

/// A custom-field value to write: `{id, key?, field_value}`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CustomFieldValue {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub field_value: Value,
}

/// `POST /contacts/` body (`CreateContactDto`).
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CreateContact {
    pub location_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gender: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address1: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postal_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub website: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dnd: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dnd_settings: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inbound_dnd_settings: Option<Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub custom_fields: Vec<CustomFieldValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub date_of_birth: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub company_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assigned_to: Option<String>,
}

/// `PUT /contacts/:contactId` body: `UpdateContactDto` without `tags`. Only set fields are
/// sent. There is deliberately no `gender`, `companyName`, `locationId` or catch-all map.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UpdateContact {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address1: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postal_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub website: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dnd: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dnd_settings: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inbound_dnd_settings: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub custom_fields: Option<Vec<CustomFieldValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub date_of_birth: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assigned_to: Option<String>,
}

impl UpdateContact {
    /// Nothing to send.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// The 201 answer of a create (`CreatedContact`): a different shape from `Contact`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CreatedContact {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<bool>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `POST /contacts/:contactId/tasks` body.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NewTask {
    pub title: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// ISO-8601.
    pub due_date: String,
    pub completed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assigned_to: Option<String>,
}

/// `PUT /contacts/:contactId/tasks/:taskId` body: only set fields are sent.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TaskUpdate {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub due_date: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assigned_to: Option<String>,
}

/// `POST /contacts/:contactId/notes` and `PUT …/notes/:id` body.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NoteWrite {
    /// Required on create.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub color: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pinned: Option<bool>,
}

/// A custom-field definition of a location.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CustomField {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// e.g. `contact.lusha_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One page of `GET /contacts/business/:businessId`.
#[derive(Debug, Clone, Deserialize)]
pub struct BusinessContacts {
    #[serde(default)]
    pub contacts: Vec<Contact>,
    #[serde(default)]
    pub count: Option<u64>,
}

/// `POST /contacts/upsert` body: the create fields plus `createNewIfDuplicateAllowed`.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UpsertContact {
    #[serde(flatten)]
    pub contact: CreateContact,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub create_new_if_duplicate_allowed: Option<bool>,
}

/// The answer of `POST /contacts/upsert`: whether it created, and the contact.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Upserted {
    #[serde(default)]
    pub new: bool,
    pub contact: Contact,
}

/// The answer of `POST /contacts/bulk/business` (`ContactsBulkUpateResponse`): the ids that
/// were updated (ids that are not contacts of the location are left out).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct BusinessLinked {
    #[serde(default)]
    pub success: bool,
    #[serde(default)]
    pub ids: Vec<String>,
}

/// What a delete found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteOutcome {
    Deleted,
    /// Already gone (404, or GHL's 400 "not found").
    NotFound,
}

#[derive(Deserialize)]
struct CreatedEnvelope {
    contact: CreatedContact,
}

#[derive(Deserialize)]
struct UpdatedEnvelope {
    #[serde(default)]
    contact: Option<Contact>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BusinessBody<'a> {
    location_id: &'a str,
    ids: &'a [String],
    /// `null` unlinks.
    business_id: Option<&'a str>,
}

#[derive(Deserialize)]
struct DuplicateEnvelope {
    #[serde(default)]
    contact: Option<Contact>,
}

#[derive(Deserialize)]
struct TaskEnvelope {
    task: Task,
}

#[derive(Deserialize)]
struct NoteEnvelope {
    note: Note,
}

#[derive(Deserialize)]
struct TagsEnvelope {
    #[serde(default)]
    tags: Vec<String>,
}

#[derive(Serialize)]
struct TagsBody<'a> {
    tags: &'a [String],
}

#[derive(Serialize)]
struct CompletedBody {
    completed: bool,
}

/// `GET /contacts/:contactId/appointments` (`GetEventsSuccessfulResponseDto`): items kept as
/// JSON, so one malformed appointment is set aside by the sync instead of failing the list.
#[derive(Deserialize)]
struct AppointmentsEnvelope {
    #[serde(default)]
    events: Vec<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CustomFieldsEnvelope {
    #[serde(default)]
    custom_fields: Vec<CustomField>,
}

fn not_found(error: &GhlError) -> bool {
    matches!(error, GhlError::Api { status, message, .. }
        if *status == StatusCode::NOT_FOUND
            || (*status == StatusCode::BAD_REQUEST && message.to_ascii_lowercase().contains("not found")))
}

fn deleted(result: Result<crate::http::ApiResponse, GhlError>) -> Result<DeleteOutcome, GhlError> {
    match result {
        Ok(_) => Ok(DeleteOutcome::Deleted),
        Err(error) if not_found(&error) => Ok(DeleteOutcome::NotFound),
        Err(error) => Err(error),
    }
}

impl GhlClient {
    /// `POST /contacts/` → 201 `{contact: CreatedContact}`. Not retried after an ambiguous
    /// failure: GHL may have created it (look it up before trying again).
    pub async fn create_contact(&self, contact: &CreateContact) -> Result<CreatedContact, GhlError> {
        let url = self.url("/contacts/");
        let envelope: CreatedEnvelope = self
            .call(&contact.location_id, || {
                ApiRequest::new(Method::POST, url.clone(), "/contacts/")
                    .priority(Priority::WriteBack)
                    .idempotent(false)
                    .json(contact)
            })
            .await?;
        Ok(envelope.contact)
    }

    /// `PUT /contacts/:contactId` with only the set fields of `update`; returns the updated
    /// contact when GHL includes it.
    pub async fn update_contact(
        &self,
        location: &str,
        contact_id: &str,
        update: &UpdateContact,
    ) -> Result<Option<Contact>, GhlError> {
        let url = self.url(&format!("/contacts/{}", encode(contact_id)));
        let envelope: UpdatedEnvelope = self
            .call(location, || {
                ApiRequest::new(Method::PUT, url.clone(), "/contacts/:contactId")
                    .priority(Priority::WriteBack)
                    .json(update)
            })
            .await?;
        Ok(envelope.contact)
    }

    /// `POST /contacts/upsert` → 200 `{new, contact}`. Follows the location's "Allow
    /// Duplicate Contact" setting (reference/ghl.md §6.8): use it for true creates, not edits.
    /// Not retried after an ambiguous failure (it may create).
    pub async fn upsert_contact(&self, upsert: &UpsertContact) -> Result<Upserted, GhlError> {
        let url = self.url("/contacts/upsert");
        self.call(&upsert.contact.location_id, || {
            ApiRequest::new(Method::POST, url.clone(), "/contacts/upsert")
                .priority(Priority::WriteBack)
                .idempotent(false)
                .json(upsert)
        })
        .await
    }

    /// `GET /contacts/search/duplicate` (query `locationId`, `email` / `number`): the contact
    /// GHL's duplicate rules match (email first, then phone), if any.
    pub async fn find_duplicate(
        &self,
        location: &str,
        email: Option<&str>,
        number: Option<&str>,
        priority: Priority,
    ) -> Result<Option<Contact>, GhlError> {
        let mut url = self.url("/contacts/search/duplicate");
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("locationId", location);
            if let Some(email) = email {
                query.append_pair("email", email);
            }
            if let Some(number) = number {
                query.append_pair("number", number);
            }
        }
        let envelope: DuplicateEnvelope = self
            .call(location, || {
                Ok(ApiRequest::new(Method::GET, url.clone(), "/contacts/search/duplicate").priority(priority))
            })
            .await?;
        Ok(envelope.contact)
    }

    /// `POST /contacts/bulk/business`: links `contact_ids` to `business_id`, or unlinks them
    /// (`None` sends `businessId: null`). Setting the same link twice is harmless.
    pub async fn link_business(
        &self,
        location: &str,
        contact_ids: &[String],
        business_id: Option<&str>,
    ) -> Result<BusinessLinked, GhlError> {
        let url = self.url("/contacts/bulk/business");
        self.call(location, || {
            ApiRequest::new(Method::POST, url.clone(), "/contacts/bulk/business")
                .priority(Priority::WriteBack)
                .idempotent(true)
                .json(&BusinessBody { location_id: location, ids: contact_ids, business_id })
        })
        .await
    }

    /// `DELETE /contacts/:contactId`.
    pub async fn delete_contact(&self, location: &str, contact_id: &str) -> Result<DeleteOutcome, GhlError> {
        let url = self.url(&format!("/contacts/{}", encode(contact_id)));
        deleted(
            self.send(location, || {
                Ok(ApiRequest::new(Method::DELETE, url.clone(), "/contacts/:contactId").priority(Priority::WriteBack))
            })
            .await,
        )
    }

    /// `POST /contacts/:contactId/tags` (201): adds tags, returns the contact's tags.
    /// Adding a tag twice is harmless, so this POST may be retried.
    pub async fn add_tags(&self, location: &str, contact_id: &str, tags: &[String]) -> Result<Vec<String>, GhlError> {
        let url = self.url(&format!("/contacts/{}/tags", encode(contact_id)));
        let envelope: TagsEnvelope = self
            .call(location, || {
                ApiRequest::new(Method::POST, url.clone(), "/contacts/:contactId/tags")
                    .priority(Priority::WriteBack)
                    .idempotent(true)
                    .json(&TagsBody { tags })
            })
            .await?;
        Ok(envelope.tags)
    }

    /// `DELETE /contacts/:contactId/tags` with a JSON body: removes tags.
    pub async fn remove_tags(
        &self,
        location: &str,
        contact_id: &str,
        tags: &[String],
    ) -> Result<Vec<String>, GhlError> {
        let url = self.url(&format!("/contacts/{}/tags", encode(contact_id)));
        let envelope: TagsEnvelope = self
            .call(location, || {
                ApiRequest::new(Method::DELETE, url.clone(), "/contacts/:contactId/tags")
                    .priority(Priority::WriteBack)
                    .json(&TagsBody { tags })
            })
            .await?;
        Ok(envelope.tags)
    }

    /// `GET /contacts/business/:businessId`: one page (`limit`, `skip`).
    pub async fn business_contacts(
        &self,
        location: &str,
        business_id: &str,
        limit: u32,
        skip: u32,
        priority: Priority,
    ) -> Result<BusinessContacts, GhlError> {
        let mut url = self.url(&format!("/contacts/business/{}", encode(business_id)));
        url.query_pairs_mut()
            .append_pair("locationId", location)
            .append_pair("limit", &limit.to_string())
            .append_pair("skip", &skip.to_string());
        self.call(location, || {
            Ok(ApiRequest::new(Method::GET, url.clone(), "/contacts/business/:businessId").priority(priority))
        })
        .await
    }

    /// `GET /contacts/:contactId/appointments` (unpaginated): the `events[]` items
    /// (`GetEventSchema`), as JSON like tasks and notes.
    pub async fn list_appointments(
        &self,
        location: &str,
        contact_id: &str,
        priority: Priority,
    ) -> Result<Vec<Value>, GhlError> {
        let url = self.url(&format!("/contacts/{}/appointments", encode(contact_id)));
        let envelope: AppointmentsEnvelope = self
            .call(location, || {
                Ok(ApiRequest::new(Method::GET, url.clone(), "/contacts/:contactId/appointments").priority(priority))
            })
            .await?;
        Ok(envelope.events)
    }

    /// `GET /contacts/:contactId/tasks/:taskId`; `None` when it does not exist.
    pub async fn get_task(
        &self,
        location: &str,
        contact_id: &str,
        task_id: &str,
        priority: Priority,
    ) -> Result<Option<Task>, GhlError> {
        let url = self.url(&format!("/contacts/{}/tasks/{}", encode(contact_id), encode(task_id)));
        let result: Result<TaskEnvelope, GhlError> = self
            .call(location, || {
                Ok(ApiRequest::new(Method::GET, url.clone(), "/contacts/:contactId/tasks/:taskId").priority(priority))
            })
            .await;
        match result {
            Ok(envelope) => Ok(Some(envelope.task)),
            Err(error) if not_found(&error) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// `POST /contacts/:contactId/tasks` → 201 `{task}`. Not retried after an ambiguous failure.
    pub async fn create_task(&self, location: &str, contact_id: &str, task: &NewTask) -> Result<Task, GhlError> {
        let url = self.url(&format!("/contacts/{}/tasks", encode(contact_id)));
        let envelope: TaskEnvelope = self
            .call(location, || {
                ApiRequest::new(Method::POST, url.clone(), "/contacts/:contactId/tasks")
                    .priority(Priority::WriteBack)
                    .idempotent(false)
                    .json(task)
            })
            .await?;
        Ok(envelope.task)
    }

    /// `PUT /contacts/:contactId/tasks/:taskId` with only the set fields.
    pub async fn update_task(
        &self,
        location: &str,
        contact_id: &str,
        task_id: &str,
        update: &TaskUpdate,
    ) -> Result<Task, GhlError> {
        let url = self.url(&format!("/contacts/{}/tasks/{}", encode(contact_id), encode(task_id)));
        let envelope: TaskEnvelope = self
            .call(location, || {
                ApiRequest::new(Method::PUT, url.clone(), "/contacts/:contactId/tasks/:taskId")
                    .priority(Priority::WriteBack)
                    .json(update)
            })
            .await?;
        Ok(envelope.task)
    }

    /// `PUT /contacts/:contactId/tasks/:taskId/completed`.
    pub async fn complete_task(
        &self,
        location: &str,
        contact_id: &str,
        task_id: &str,
        completed: bool,
    ) -> Result<Task, GhlError> {
        let url = self.url(&format!("/contacts/{}/tasks/{}/completed", encode(contact_id), encode(task_id)));
        let envelope: TaskEnvelope = self
            .call(location, || {
                ApiRequest::new(Method::PUT, url.clone(), "/contacts/:contactId/tasks/:taskId/completed")
                    .priority(Priority::WriteBack)
                    .json(&CompletedBody { completed })
            })
            .await?;
        Ok(envelope.task)
    }

    /// `DELETE /contacts/:contactId/tasks/:taskId`.
    pub async fn delete_task(
        &self,
        location: &str,
        contact_id: &str,
        task_id: &str,
    ) -> Result<DeleteOutcome, GhlError> {
        let url = self.url(&format!("/contacts/{}/tasks/{}", encode(contact_id), encode(task_id)));
        deleted(
            self.send(location, || {
                Ok(ApiRequest::new(Method::DELETE, url.clone(), "/contacts/:contactId/tasks/:taskId")
                    .priority(Priority::WriteBack))
            })
            .await,
        )
    }

    /// `GET /contacts/:contactId/notes/:id`; `None` when it does not exist.
    pub async fn get_note(
        &self,
        location: &str,
        contact_id: &str,
        note_id: &str,
        priority: Priority,
    ) -> Result<Option<Note>, GhlError> {
        let url = self.url(&format!("/contacts/{}/notes/{}", encode(contact_id), encode(note_id)));
        let result: Result<NoteEnvelope, GhlError> = self
            .call(location, || {
                Ok(ApiRequest::new(Method::GET, url.clone(), "/contacts/:contactId/notes/:id").priority(priority))
            })
            .await;
        match result {
            Ok(envelope) => Ok(Some(envelope.note)),
            Err(error) if not_found(&error) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// `POST /contacts/:contactId/notes` → 201 `{note}`. Notes have no idempotency field:
    /// record `(contact, kind, key) → note id` before treating a note as written.
    pub async fn create_note(&self, location: &str, contact_id: &str, note: &NoteWrite) -> Result<Note, GhlError> {
        let url = self.url(&format!("/contacts/{}/notes", encode(contact_id)));
        let envelope: NoteEnvelope = self
            .call(location, || {
                ApiRequest::new(Method::POST, url.clone(), "/contacts/:contactId/notes")
                    .priority(Priority::WriteBack)
                    .idempotent(false)
                    .json(note)
            })
            .await?;
        Ok(envelope.note)
    }

    /// `PUT /contacts/:contactId/notes/:id`.
    pub async fn update_note(
        &self,
        location: &str,
        contact_id: &str,
        note_id: &str,
        note: &NoteWrite,
    ) -> Result<Note, GhlError> {
        let url = self.url(&format!("/contacts/{}/notes/{}", encode(contact_id), encode(note_id)));
        let envelope: NoteEnvelope = self
            .call(location, || {
                ApiRequest::new(Method::PUT, url.clone(), "/contacts/:contactId/notes/:id")
                    .priority(Priority::WriteBack)
                    .json(note)
            })
            .await?;
        Ok(envelope.note)
    }

    /// `DELETE /contacts/:contactId/notes/:id`.
    pub async fn delete_note(
        &self,
        location: &str,
        contact_id: &str,
        note_id: &str,
    ) -> Result<DeleteOutcome, GhlError> {
        let url = self.url(&format!("/contacts/{}/notes/{}", encode(contact_id), encode(note_id)));
        deleted(
            self.send(location, || {
                Ok(ApiRequest::new(Method::DELETE, url.clone(), "/contacts/:contactId/notes/:id")
                    .priority(Priority::WriteBack))
            })
            .await,
        )
    }

    /// `GET /locations/:locationId/customFields?model=…` (e.g. `contact`): definitions, to
    /// resolve `fieldKey` → `id` once for write-back.
    pub async fn custom_fields(
        &self,
        location: &str,
        model: Option<&str>,
        priority: Priority,
    ) -> Result<Vec<CustomField>, GhlError> {
        let mut url = self.url(&format!("/locations/{}/customFields", encode(location)));
        if let Some(model) = model {
            url.query_pairs_mut().append_pair("model", model);
        }
        let envelope: CustomFieldsEnvelope = self
            .call(location, || {
                Ok(ApiRequest::new(Method::GET, url.clone(), "/locations/:locationId/customFields").priority(priority))
            })
            .await?;
        Ok(envelope.custom_fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_bodies_carry_only_set_fields_and_never_forbidden_ones() {
        let update = UpdateContact {
            first_name: Some("A".into()),
            custom_fields: Some(vec![CustomFieldValue { id: "f1".into(), key: None, field_value: "x".into() }]),
            ..UpdateContact::default()
        };
        let body = serde_json::to_value(&update).unwrap();
        assert_eq!(body, serde_json::json!({"firstName": "A", "customFields": [{"id": "f1", "field_value": "x"}]}));
        let everything = UpdateContact {
            first_name: Some(String::new()),
            last_name: Some(String::new()),
            name: Some(String::new()),
            email: Some(String::new()),
            phone: Some(String::new()),
            address1: Some(String::new()),
            city: Some(String::new()),
            state: Some(String::new()),
            postal_code: Some(String::new()),
            website: Some(String::new()),
            timezone: Some(String::new()),
            dnd: Some(false),
            dnd_settings: Some(Value::Null),
            inbound_dnd_settings: Some(Value::Null),
            custom_fields: Some(Vec::new()),
            source: Some(String::new()),
            date_of_birth: Some(String::new()),
            country: Some(String::new()),
            assigned_to: Some(String::new()),
        };
        let keys: Vec<String> =
            serde_json::to_value(&everything).unwrap().as_object().unwrap().keys().cloned().collect();
        for forbidden in ["tags", "gender", "locationId", "companyName"] {
            assert!(!keys.iter().any(|k| k == forbidden), "{forbidden} must never be sent on PUT");
        }
        assert_eq!(keys.len(), 19);
        assert!(UpdateContact::default().is_empty() && !update.is_empty());
    }

    #[test]
    fn created_contacts_and_custom_fields_keep_unknown_fields() {
        let created: CreatedEnvelope = serde_json::from_str(
            r#"{"contact":{"id":"c1","locationId":"l","deleted":false,"offers":[],"birthMonth":3}}"#,
        )
        .unwrap();
        assert_eq!(created.contact.id, "c1");
        assert!(created.contact.extra.contains_key("offers"));
        let fields: CustomFieldsEnvelope = serde_json::from_str(
            r#"{"customFields":[{"id":"f","name":"Lusha id","fieldKey":"contact.lusha_id","dataType":"TEXT","model":"contact","position":1}]}"#,
        )
        .unwrap();
        assert_eq!(fields.custom_fields[0].field_key.as_deref(), Some("contact.lusha_id"));
        assert!(fields.custom_fields[0].extra.contains_key("position"));
        // `succeded` is optional: any 2xx body parses.
        let updated: UpdatedEnvelope = serde_json::from_str(r#"{"succeded":true}"#).unwrap();
        assert!(updated.contact.is_none());
    }

    #[test]
    fn upsert_business_and_duplicate_shapes_match_the_spec() {
        let upsert = UpsertContact {
            contact: CreateContact { location_id: "l".into(), email: Some("e".into()), ..CreateContact::default() },
            create_new_if_duplicate_allowed: Some(false),
        };
        assert_eq!(
            serde_json::to_value(&upsert).unwrap(),
            serde_json::json!({"locationId": "l", "email": "e", "createNewIfDuplicateAllowed": false})
        );
        let ids = vec!["c1".to_owned()];
        let unlink = BusinessBody { location_id: "l", ids: &ids, business_id: None };
        assert_eq!(
            serde_json::to_value(&unlink).unwrap(),
            serde_json::json!({"locationId": "l", "ids": ["c1"], "businessId": null})
        );
        let linked: BusinessLinked = serde_json::from_str(r#"{"success":true,"ids":["c1"]}"#).unwrap();
        assert_eq!(linked.ids, ids);
        let upserted: Upserted =
            serde_json::from_str(r#"{"new":true,"contact":{"id":"c9","locationId":"l"},"traceId":"t"}"#).unwrap();
        assert!(upserted.new);
        assert_eq!(upserted.contact.id, "c9");
        let none: DuplicateEnvelope = serde_json::from_str(r#"{"contact":null,"traceId":"t"}"#).unwrap();
        assert!(none.contact.is_none());
    }

    #[test]
    fn task_and_note_bodies_match_the_spec_names() {
        let task = NewTask {
            title: "t".into(),
            body: None,
            due_date: "2026-01-01T00:00:00Z".into(),
            completed: false,
            assigned_to: None,
        };
        assert_eq!(
            serde_json::to_value(&task).unwrap(),
            serde_json::json!({"title":"t","dueDate":"2026-01-01T00:00:00Z","completed":false})
        );
        let note = NoteWrite { body: Some("b".into()), pinned: Some(true), ..NoteWrite::default() };
        assert_eq!(serde_json::to_value(&note).unwrap(), serde_json::json!({"body":"b","pinned":true}));
        let update = TaskUpdate { completed: Some(true), ..TaskUpdate::default() };
        assert_eq!(serde_json::to_value(&update).unwrap(), serde_json::json!({"completed":true}));
    }
}
