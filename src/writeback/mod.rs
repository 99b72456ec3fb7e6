//! The GHL write-back service: every write the daemon makes to GHL (contact fields, custom
//! fields, tags, notes, tasks) goes through [`WriteBack`] with an idempotency key.
//!
//! - The key is stored in `writebacks` (status `pending`) **before** the call and marked `done`
//!   with the GHL id after it, each in its own short store transaction
//!   ([`crate::store::writebacks`]): no GHL call ever runs inside a store transaction. A replay
//!   of a done key makes no call. GHL has no idempotency keys and can even create on a 422
//!   (reference/ghl.md §6.8), so a *pending* create found on a retry or after a crash is first
//!   looked for in GHL (notes by body, tasks by title + body, contacts by email) and only
//!   created when it is not there. A contact create with an email or phone first asks GHL's
//!   duplicate search (`GET /contacts/search/duplicate`) and adopts the contact it finds.
//! - Updates, deletes (a 404 means already deleted), tag changes, business links and upserts
//!   are repeatable: a pending key is simply sent again.
//! - Echo suppression: after writing to a contact, [`WriteBack::settle`] reads it back and
//!   records the hash of its content (the same normalisation and hash as the sync engine).
//!   The engine calls [`crate::store::writebacks::is_own_write`] when a contact comes back
//!   changed: if the new hash is the one our last write produced, the snapshot is stored but no
//!   connector hears of it.

use std::sync::Arc;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::domain::EntityKind;
use crate::domain::normalize::{Hash, contact_hash, normalize_child, normalize_contact, value_hash};
use crate::ghl::write::{CreateContact, DeleteOutcome, NewTask, NoteWrite, TaskUpdate, UpdateContact, UpsertContact};
use crate::ghl::{GhlClient, GhlError};
use crate::http::Priority;
use crate::store::writebacks::{self, Begun, NewWrite};
use crate::store::{Store, StoreError};

/// A failed write-back.
#[derive(Debug, thiserror::Error)]
pub enum WriteBackError {
    #[error(transparent)]
    Ghl(#[from] GhlError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl WriteBackError {
    pub fn is_retryable(&self) -> bool {
        match self {
            WriteBackError::Ghl(error) => error.is_retryable(),
            WriteBackError::Store(_) => true,
        }
    }
}

/// What a keyed write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// The call was made now; the GHL id of what it created or changed.
    Now(Option<String>),
    /// The key was already done (a replay): nothing was sent.
    Already(Option<String>),
    /// A pending create from an earlier attempt, or a contact GHL's duplicate search matched,
    /// was found in GHL and adopted: nothing was created.
    Found(String),
}

impl Written {
    /// The GHL id (note, task or contact), if the write has one.
    pub fn id(&self) -> Option<&str> {
        match self {
            Written::Now(id) | Written::Already(id) => id.as_deref(),
            Written::Found(id) => Some(id),
        }
    }

    /// Whether a request changed something in GHL just now.
    pub fn sent(&self) -> bool {
        matches!(self, Written::Now(_))
    }
}

/// An idempotency key: hex sha256 of the parts joined by `|`.
pub fn key(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            hasher.update(b"|");
        }
        hasher.update(part.as_bytes());
    }
    crate::domain::hex(&hasher.finalize())
}

pub use crate::domain::child_content_key;

/// The write-back service (cheap to clone).
#[derive(Clone)]
pub struct WriteBack {
    store: Store,
    ghl: GhlClient,
    /// Custom field ids kept out of the contact hash (the engine's `ignored_custom_fields`).
    ignored: Arc<Vec<String>>,
}

impl std::fmt::Debug for WriteBack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteBack").finish_non_exhaustive()
    }
}

impl WriteBack {
    /// `ignored` must be the sync engine's `ignored_custom_fields`, so the hash recorded here
    /// is the hash the engine computes when the contact comes back.
    pub fn new(store: Store, ghl: GhlClient, ignored: Arc<Vec<String>>) -> Self {
        Self { store, ghl, ignored }
    }

    pub fn ghl(&self) -> &GhlClient {
        &self.ghl
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    async fn begin(
        &self,
        key: &str,
        location: &str,
        contact_id: Option<&str>,
        kind: &str,
        content: Option<&[u8]>,
    ) -> Result<Begun, WriteBackError> {
        let write = NewWrite { key, location, contact_id, kind, content };
        Ok(writebacks::begin(&self.store, &write).await?)
    }

    async fn finish(&self, key: &str, target: Option<&str>) -> Result<(), WriteBackError> {
        Ok(writebacks::finish(&self.store, key, target).await?)
    }

    /// One idempotent write under `key`: nothing is sent when the key is already done;
    /// otherwise `send` runs (again, for a pending key: repeating it is harmless) and the key
    /// is marked done with `target`.
    async fn idempotent(
        &self,
        key: &str,
        location: &str,
        contact_id: &str,
        kind: &str,
        target: &str,
        send: impl std::future::Future<Output = Result<(), GhlError>>,
    ) -> Result<Written, WriteBackError> {
        self.idempotent_on(key, location, Some(contact_id), kind, target, send).await
    }

    /// [`Self::idempotent`] for a write that may be about no single contact.
    async fn idempotent_on(
        &self,
        key: &str,
        location: &str,
        contact_id: Option<&str>,
        kind: &str,
        target: &str,
        send: impl std::future::Future<Output = Result<(), GhlError>>,
    ) -> Result<Written, WriteBackError> {
        if let Begun::Done(target) = self.begin(key, location, contact_id, kind, None).await? {
            return Ok(Written::Already(target));
        }
        send.await?;
        self.finish(key, Some(target)).await?;
        Ok(Written::Now(Some(target.to_owned())))
    }

    /// [`Self::idempotent`] for a change to a task or note: `send` answers the child's content
    /// hash as GHL returned it, recorded on the key so the sync recognises the change as ours
    /// ([`writebacks::is_own_child_change`]) and does not announce it as a user's.
    async fn idempotent_child(
        &self,
        key: &str,
        location: &str,
        contact_id: &str,
        kind: &str,
        target: &str,
        send: impl std::future::Future<Output = Result<Option<Hash>, GhlError>>,
    ) -> Result<Written, WriteBackError> {
        if let Begun::Done(target) = self.begin(key, location, Some(contact_id), kind, None).await? {
            return Ok(Written::Already(target));
        }
        let hash = send.await?;
        if let Some(hash) = hash {
            writebacks::record_settled(&self.store, contact_id, &[key.to_owned()], &hash).await?;
        }
        self.finish(key, Some(target)).await?;
        Ok(Written::Now(Some(target.to_owned())))
    }

    /// `PUT /contacts/:id` with only the set fields (idempotent: a pending key is just sent again).
    pub async fn update_contact(
        &self,
        location: &str,
        contact_id: &str,
        key: &str,
        update: &UpdateContact,
    ) -> Result<Written, WriteBackError> {
        let send = async {
            if !update.is_empty() {
                self.ghl.update_contact(location, contact_id, update).await?;
            }
            Ok(())
        };
        self.idempotent(key, location, contact_id, "contact_update", contact_id, send).await
    }

    /// `POST /contacts/:id/tags` (adding twice is harmless).
    pub async fn add_tags(
        &self,
        location: &str,
        contact_id: &str,
        key: &str,
        tags: &[String],
    ) -> Result<Written, WriteBackError> {
        let send = async {
            if !tags.is_empty() {
                self.ghl.add_tags(location, contact_id, tags).await?;
            }
            Ok(())
        };
        self.idempotent(key, location, contact_id, "tag_add", contact_id, send).await
    }

    /// `DELETE /contacts/:id/tags`.
    pub async fn remove_tags(
        &self,
        location: &str,
        contact_id: &str,
        key: &str,
        tags: &[String],
    ) -> Result<Written, WriteBackError> {
        let send = async {
            if !tags.is_empty() {
                self.ghl.remove_tags(location, contact_id, tags).await?;
            }
            Ok(())
        };
        self.idempotent(key, location, contact_id, "tag_remove", contact_id, send).await
    }

    /// `POST /contacts/:id/notes`, at most once per key: a pending key from an earlier attempt
    /// is first looked for among the contact's notes (same body).
    pub async fn create_note(
        &self,
        location: &str,
        contact_id: &str,
        key: &str,
        note: &NoteWrite,
    ) -> Result<Written, WriteBackError> {
        let content = child_content_key(None, note.body.as_deref());
        match self.begin(key, location, Some(contact_id), "note", Some(&content)).await? {
            Begun::Done(target) => return Ok(Written::Already(target)),
            Begun::Pending => {
                let notes = self.ghl.list_notes(location, contact_id, Priority::WriteBack).await?;
                if let Some(id) = notes.iter().find(|n| same(n, "body", note.body.as_deref())).and_then(id_of) {
                    self.finish(key, Some(&id)).await?;
                    return Ok(Written::Found(id));
                }
            }
            Begun::New => {}
        }
        let created = self.ghl.create_note(location, contact_id, note).await?;
        let id = created.id.clone();
        self.finish(key, Some(&id)).await?;
        Ok(Written::Now(Some(id)))
    }

    /// `POST /contacts/:id/tasks`, at most once per key (a pending key: looked for by title + body).
    pub async fn create_task(
        &self,
        location: &str,
        contact_id: &str,
        key: &str,
        task: &NewTask,
    ) -> Result<Written, WriteBackError> {
        let content = child_content_key(Some(&task.title), task.body.as_deref());
        match self.begin(key, location, Some(contact_id), "task", Some(&content)).await? {
            Begun::Done(target) => return Ok(Written::Already(target)),
            Begun::Pending => {
                let tasks = self.ghl.list_tasks(location, contact_id, Priority::WriteBack).await?;
                let found = tasks
                    .iter()
                    .find(|t| same(t, "title", Some(&task.title)) && same(t, "body", task.body.as_deref()))
                    .and_then(id_of);
                if let Some(id) = found {
                    self.finish(key, Some(&id)).await?;
                    return Ok(Written::Found(id));
                }
            }
            Begun::New => {}
        }
        let created = self.ghl.create_task(location, contact_id, task).await?;
        let id = created.id.clone();
        self.finish(key, Some(&id)).await?;
        Ok(Written::Now(Some(id)))
    }

    /// `PUT /contacts/:id/tasks/:taskId/completed` (idempotent).
    pub async fn complete_task(
        &self,
        location: &str,
        contact_id: &str,
        task_id: &str,
        key: &str,
    ) -> Result<Written, WriteBackError> {
        let send = async {
            let task = self.ghl.complete_task(location, contact_id, task_id, true).await?;
            Ok(child_hash(EntityKind::Task, &task))
        };
        self.idempotent_child(key, location, contact_id, "task_complete", task_id, send).await
    }

    /// `PUT /contacts/:id/tasks/:taskId` with only the set fields (idempotent).
    pub async fn update_task(
        &self,
        location: &str,
        contact_id: &str,
        task_id: &str,
        key: &str,
        update: &TaskUpdate,
    ) -> Result<Written, WriteBackError> {
        let send = async {
            let task = self.ghl.update_task(location, contact_id, task_id, update).await?;
            Ok(child_hash(EntityKind::Task, &task))
        };
        self.idempotent_child(key, location, contact_id, "task_update", task_id, send).await
    }

    /// `DELETE /contacts/:id/tasks/:taskId`; a task already gone (404) counts as deleted.
    pub async fn delete_task(
        &self,
        location: &str,
        contact_id: &str,
        task_id: &str,
        key: &str,
    ) -> Result<Written, WriteBackError> {
        let send = async {
            let _gone: DeleteOutcome = self.ghl.delete_task(location, contact_id, task_id).await?;
            Ok(())
        };
        self.idempotent(key, location, contact_id, "task_delete", task_id, send).await
    }

    /// `PUT /contacts/:id/notes/:noteId` (idempotent).
    pub async fn update_note(
        &self,
        location: &str,
        contact_id: &str,
        note_id: &str,
        key: &str,
        note: &NoteWrite,
    ) -> Result<Written, WriteBackError> {
        let send = async {
            let note = self.ghl.update_note(location, contact_id, note_id, note).await?;
            Ok(child_hash(EntityKind::Note, &note))
        };
        self.idempotent_child(key, location, contact_id, "note_update", note_id, send).await
    }

    /// `DELETE /contacts/:id/notes/:noteId`; a note already gone (404) counts as deleted.
    pub async fn delete_note(
        &self,
        location: &str,
        contact_id: &str,
        note_id: &str,
        key: &str,
    ) -> Result<Written, WriteBackError> {
        let send = async {
            let _gone: DeleteOutcome = self.ghl.delete_note(location, contact_id, note_id).await?;
            Ok(())
        };
        self.idempotent(key, location, contact_id, "note_delete", note_id, send).await
    }

    /// `DELETE /contacts/:id`; a contact already gone (404) counts as deleted.
    pub async fn delete_contact(&self, location: &str, contact_id: &str, key: &str) -> Result<Written, WriteBackError> {
        let send = async {
            let _gone: DeleteOutcome = self.ghl.delete_contact(location, contact_id).await?;
            Ok(())
        };
        self.idempotent(key, location, contact_id, "contact_delete", contact_id, send).await
    }

    /// `POST /contacts/bulk/business`: links `contact_ids` to `business_id` (`None` unlinks);
    /// setting the same link again is harmless, so a pending key is just sent again. The
    /// target recorded is the business id (empty when unlinking).
    pub async fn link_business(
        &self,
        location: &str,
        contact_ids: &[String],
        business_id: Option<&str>,
        key: &str,
    ) -> Result<Written, WriteBackError> {
        let send = async {
            if !contact_ids.is_empty() {
                self.ghl.link_business(location, contact_ids, business_id).await?;
            }
            Ok(())
        };
        let contact = match contact_ids {
            [one] => Some(one.as_str()),
            _ => None,
        };
        self.idempotent_on(key, location, contact, "business_link", business_id.unwrap_or(""), send).await
    }

    /// `POST /contacts/upsert`, once per key: GHL matches an existing contact by its duplicate
    /// rules (email, phone) and updates it, or creates one. A pending key is sent again (the
    /// upsert finds what the earlier attempt created). The contact's id is recorded.
    pub async fn upsert_contact(&self, key: &str, upsert: &UpsertContact) -> Result<Written, WriteBackError> {
        let location = upsert.contact.location_id.as_str();
        if let Begun::Done(target) = self.begin(key, location, None, "contact_upsert", None).await? {
            return Ok(Written::Already(target));
        }
        let upserted = self.ghl.upsert_contact(upsert).await?;
        self.finish_create(key, &upserted.contact.id).await?;
        Ok(Written::Now(Some(upserted.contact.id)))
    }

    /// `POST /contacts/`, at most once per key. Before creating, a contact with the same
    /// email or phone is looked up through `GET /contacts/search/duplicate` (GHL's own
    /// duplicate rules) and adopted when found (no create); a pending key (an earlier attempt
    /// may have created it even on an error) also looks up `lookup_email` through the search.
    pub async fn create_contact(
        &self,
        key: &str,
        contact: &CreateContact,
        lookup_email: Option<&str>,
    ) -> Result<Written, WriteBackError> {
        let location = contact.location_id.as_str();
        let begun = self.begin(key, location, None, "contact_create", None).await?;
        if let Begun::Done(target) = begun {
            return Ok(Written::Already(target));
        }
        let email = contact.email.as_deref().map(str::trim).filter(|e| !e.is_empty());
        let phone = contact.phone.as_deref().map(str::trim).filter(|p| !p.is_empty());
        if email.is_some() || phone.is_some() {
            let found = self.ghl.find_duplicate(location, email, phone, Priority::WriteBack).await?;
            if let Some(found) = found {
                self.finish_create(key, &found.id).await?;
                return Ok(Written::Found(found.id));
            }
        }
        if begun == Begun::Pending
            && let Some(email) = lookup_email
            && let Some(id) = self.find_by_email(location, email).await?
        {
            self.finish_create(key, &id).await?;
            return Ok(Written::Found(id));
        }
        let created = self.ghl.create_contact(contact).await?;
        self.finish_create(key, &created.id).await?;
        Ok(Written::Now(Some(created.id)))
    }

    async fn finish_create(&self, key: &str, id: &str) -> Result<(), WriteBackError> {
        Ok(writebacks::finish_create(&self.store, key, id).await?)
    }

    /// A contact of the location with exactly this email (search with an `eq` filter).
    pub async fn find_by_email(&self, location: &str, email: &str) -> Result<Option<String>, WriteBackError> {
        let wanted = email.trim().to_lowercase();
        self.find_by(location, "email", &wanted, |have| have.trim().to_lowercase() == wanted).await
    }

    /// A contact of the location with this phone number (compared by digits, so
    /// `+1 (555) 010-2030` finds `+15550102030`).
    pub async fn find_by_phone(&self, location: &str, phone: &str) -> Result<Option<String>, WriteBackError> {
        let wanted = phone_digits(phone);
        if wanted.len() < 6 {
            return Ok(None);
        }
        let e164 = format!("+{wanted}");
        self.find_by(location, "phone", &e164, |have| phone_digits(have) == wanted).await
    }

    async fn find_by(
        &self,
        location: &str,
        field: &str,
        value: &str,
        matches: impl Fn(&str) -> bool,
    ) -> Result<Option<String>, WriteBackError> {
        let mut request = crate::ghl::dto::SearchRequest::updated_since(location, 20, None);
        request.filters = vec![serde_json::json!({"field": field, "operator": "eq", "value": value})];
        let page = self.ghl.search_contacts(&request, Priority::WriteBack).await?;
        Ok(page.contacts.iter().find(|c| c.get(field).and_then(Value::as_str).is_some_and(&matches)).and_then(id_of))
    }

    /// Reads the contact back after our writes and records its content hash on `keys`, so
    /// the sync recognises the change as ours. Returns the normalised record.
    pub async fn settle(
        &self,
        location: &str,
        contact_id: &str,
        keys: &[String],
    ) -> Result<Option<Map<String, Value>>, WriteBackError> {
        let Some(contact) = self.ghl.get_contact(location, contact_id, Priority::WriteBack).await? else {
            return Ok(None);
        };
        let Value::Object(map) = serde_json::to_value(&contact).unwrap_or(Value::Null) else {
            return Ok(None);
        };
        let record = normalize_contact(map);
        let hash = contact_hash(&record, &self.ignored);
        writebacks::record_settled(&self.store, contact_id, keys, &hash).await?;
        Ok(Some(record))
    }
}

/// The content hash the sync gives a child as GHL returned it (same normalisation).
fn child_hash<T: serde::Serialize>(kind: EntityKind, child: &T) -> Option<Hash> {
    match serde_json::to_value(child) {
        Ok(Value::Object(map)) => Some(value_hash(&normalize_child(kind, map))),
        _ => None,
    }
}

/// The digits of a phone number (`+1 (555) 010-2030` → `15550102030`).
pub fn phone_digits(phone: &str) -> String {
    phone.chars().filter(char::is_ascii_digit).collect()
}

fn same(item: &Value, field: &str, wanted: Option<&str>) -> bool {
    let have = item.get(field).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty());
    have == wanted.map(str::trim).filter(|s| !s.is_empty())
}

fn id_of(item: &Value) -> Option<String> {
    item.get("id").or_else(|| item.get("_id")).and_then(Value::as_str).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_stable_and_separate_parts() {
        assert_eq!(key(&["a", "b"]), key(&["a", "b"]));
        assert_ne!(key(&["a", "b"]), key(&["ab"]));
        assert_ne!(key(&["a|b"]), key(&["a", "bc"]));
        assert_eq!(key(&["x"]).len(), 64);
    }

    #[test]
    fn pending_creates_match_by_content() {
        let note = json!({"id": "n1", "body": " Enriched by Lusha "});
        assert!(same(&note, "body", Some("Enriched by Lusha")));
        assert!(!same(&note, "body", Some("other")));
        assert!(same(&json!({"id": "t"}), "body", None));
        assert_eq!(id_of(&note).as_deref(), Some("n1"));
    }
}
