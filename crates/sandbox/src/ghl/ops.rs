//! Writes and reads shared by the HTTP handlers, the direct test helpers and `mutate`.
//! Every write returns the webhook events it causes (dispatched after the lock is released).

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::ops::Bound;
use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::model::{Cid, Contact, Fields, Note, Shape, Task, iso, parse_ms, search_item};
use super::schema::TASK_SEARCH_BODY_FIELDS;
use super::state::{ApiError, AuthCtx, IndexOp, State};
use super::{Mutation, MutationKind};

/// Properties `POST /contacts/` accepts (`CreateContactDto`).
const CREATE_FIELDS: &[&str] = &[
    "firstName",
    "lastName",
    "name",
    "email",
    "locationId",
    "gender",
    "phone",
    "address1",
    "city",
    "state",
    "postalCode",
    "website",
    "timezone",
    "dnd",
    "dndSettings",
    "inboundDndSettings",
    "tags",
    "customFields",
    "source",
    "dateOfBirth",
    "country",
    "companyName",
    "assignedTo",
];

/// Properties `PUT /contacts/:id` accepts (`UpdateContactDto`: no `locationId`, `gender`,
/// `companyName`).
const UPDATE_FIELDS: &[&str] = &[
    "firstName",
    "lastName",
    "name",
    "email",
    "phone",
    "address1",
    "city",
    "state",
    "postalCode",
    "website",
    "timezone",
    "dnd",
    "dndSettings",
    "inboundDndSettings",
    "tags",
    "customFields",
    "source",
    "dateOfBirth",
    "country",
    "assignedTo",
];

/// Result of a write: the answer body plus webhook events to emit.
pub(crate) type Written = (Value, Vec<Value>);

fn as_object(body: &Value) -> Result<&Map<String, Value>, ApiError> {
    body.as_object().ok_or_else(|| ApiError::new(400, "Body must be a JSON object"))
}

fn check_props(obj: &Map<String, Value>, allowed: &[&str]) -> Result<(), ApiError> {
    let mut unknown: Vec<String> = obj
        .keys()
        .filter(|k| !allowed.contains(&k.as_str()))
        .map(|k| format!("property {k} should not exist"))
        .collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        unknown.sort();
        Err(ApiError::unprocessable(unknown))
    }
}

impl State {
    fn apply_fields(&self, loc: u16, f: &mut Fields, obj: &Map<String, Value>) -> Result<(), ApiError> {
        let mut problems = Vec::new();
        for (key, value) in obj {
            let text = || -> Result<Option<String>, String> {
                match value {
                    Value::Null => Ok(None),
                    Value::String(s) => Ok(Some(s.clone())),
                    _ => Err(format!("{key} must be a string")),
                }
            };
            let result: Result<(), String> = (|| {
                match key.as_str() {
                    "firstName" => f.first_name = text()?,
                    "lastName" => f.last_name = text()?,
                    "name" => f.name = text()?,
                    "email" => {
                        let email = text()?;
                        if email.as_ref().is_some_and(|e| !e.is_empty() && !e.contains('@')) {
                            return Err("email must be an email".to_owned());
                        }
                        f.email = email.filter(|e| !e.is_empty());
                    }
                    "phone" => f.phone = text()?,
                    "address1" => f.address1 = text()?,
                    "city" => f.city = text()?,
                    "state" => f.state = text()?,
                    "postalCode" => f.postal_code = text()?,
                    "website" => f.website = text()?,
                    "timezone" => f.timezone = text()?,
                    "source" => f.source = text()?,
                    "country" => f.country = text()?,
                    "companyName" => f.company_name = text()?,
                    "assignedTo" => f.assigned_to = text()?,
                    "gender" => f.gender = text()?,
                    "dateOfBirth" => {
                        f.date_of_birth = match value {
                            Value::Null => None,
                            other => {
                                let ms =
                                    parse_ms(other).ok_or_else(|| "dateOfBirth must be a valid date".to_owned())?;
                                Some(iso(ms)[..10].to_owned())
                            }
                        }
                    }
                    "dnd" => f.dnd = value.as_bool().ok_or_else(|| "dnd must be a boolean value".to_owned())?,
                    "dndSettings" => f.dnd_settings = Some(value.clone()),
                    "inboundDndSettings" => f.inbound_dnd_settings = Some(value.clone()),
                    "tags" => {
                        let tags = value.as_array().ok_or_else(|| "tags must be an array".to_owned())?;
                        let mut out = Vec::new();
                        for t in tags {
                            let t = t.as_str().ok_or_else(|| "each value in tags must be a string".to_owned())?;
                            let t = t.trim().to_lowercase();
                            if !t.is_empty() && !out.contains(&t) {
                                out.push(t);
                            }
                        }
                        f.tags = out;
                    }
                    "customFields" => {
                        let items = value.as_array().ok_or_else(|| "customFields must be an array".to_owned())?;
                        for item in items {
                            let id = item.get("id").and_then(Value::as_str).map(str::to_owned);
                            let key = item.get("key").and_then(Value::as_str);
                            let id = id.or_else(|| {
                                let key = key?;
                                self.locs.get(usize::from(loc))?.custom_fields.iter().find_map(|(id, _, fk, _)| {
                                    (&**fk == key || fk.strip_prefix("contact.") == Some(key)).then(|| id.to_string())
                                })
                            });
                            let id = id.ok_or_else(|| "customFields.id should not be empty".to_owned())?;
                            let v =
                                item.get("field_value").or_else(|| item.get("value")).cloned().unwrap_or(Value::Null);
                            f.custom_fields.retain(|(existing, _)| *existing != id);
                            if !v.is_null() {
                                f.custom_fields.push((id, v));
                            }
                        }
                    }
                    _ => {}
                }
                Ok(())
            })();
            if let Err(problem) = result {
                problems.push(problem);
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(ApiError::unprocessable(problems)) }
    }

    pub(crate) fn contact_event(&self, kind: &str, c: &Contact) -> Value {
        let mut v = self.render(c, Shape::Webhook);
        v["type"] = json!(kind);
        v
    }

    fn task_event(&self, kind: &str, t: &Task) -> Value {
        json!({
            "type": kind,
            "locationId": self.loc_id(t.loc),
            "id": t.id.as_str(),
            "assignedTo": t.assigned_to.as_deref(),
            "body": t.body,
            "contactId": t.contact.as_str(),
            "title": t.title,
            "dateAdded": iso(t.added),
            "dueDate": iso(t.due),
            "completed": t.completed,
        })
    }

    fn note_event(&self, kind: &str, n: &Note) -> Value {
        // No userId/title in Note* webhooks (ghl.md §8.1, #312).
        json!({
            "type": kind,
            "locationId": self.loc_id(n.loc),
            "id": n.id.as_str(),
            "body": n.body,
            "contactId": n.contact.as_str(),
            "dateAdded": iso(n.added),
        })
    }

    // ---------------------------------------------------------------- contacts

    /// Creates a contact in `loc` from a `CreateContactDto`-like object.
    pub(crate) fn create_contact(
        &mut self,
        loc: u16,
        obj: &Map<String, Value>,
    ) -> Result<(Contact, Vec<Value>), ApiError> {
        check_props(obj, CREATE_FIELDS)?;
        let mut f = Fields::default();
        self.apply_fields(loc, &mut f, obj)?;
        let now = self.stamp();
        let li = usize::from(loc);
        let n = self.next_n.get(li).copied().unwrap_or(0);
        if let Some(next) = self.next_n.get_mut(li) {
            *next += 1;
        }
        let contact =
            Contact { id: Cid::random(&mut self.rng), loc, n, added: now, updated: now, fields: Some(Arc::new(f)) };
        self.contacts.insert(contact.id, contact.clone());
        self.reindex(loc, IndexOp::Upsert(contact.clone()));
        let event = self.contact_event("ContactCreate", &contact);
        Ok((contact, vec![event]))
    }

    /// Applies an edit to a live contact, bumps `dateUpdated`, reindexes.
    pub(crate) fn edit_contact(
        &mut self,
        id: Cid,
        edit: impl FnOnce(&State, &mut Fields) -> Result<(), ApiError>,
    ) -> Result<Contact, ApiError> {
        let contact = self.contacts.get(&id).cloned().ok_or_else(ApiError::contact_not_found)?;
        let mut fields = (*self.fields_of(&contact)).clone();
        edit(self, &mut fields)?;
        let now = self.stamp();
        let updated = Contact { updated: now, fields: Some(Arc::new(fields)), ..contact };
        self.contacts.insert(id, updated.clone());
        self.reindex(updated.loc, IndexOp::Upsert(updated.clone()));
        Ok(updated)
    }

    /// `PUT /contacts/:id` semantics (strict `UpdateContactDto`).
    pub(crate) fn update_contact(
        &mut self,
        id: Cid,
        obj: &Map<String, Value>,
    ) -> Result<(Contact, Vec<Value>), ApiError> {
        check_props(obj, UPDATE_FIELDS)?;
        let loc = self.contacts.get(&id).map(|c| c.loc).ok_or_else(ApiError::contact_not_found)?;
        let tags_changed = obj.contains_key("tags");
        let c = self.edit_contact(id, |s, f| s.apply_fields(loc, f, obj))?;
        let mut events = vec![self.contact_event("ContactUpdate", &c)];
        if tags_changed {
            events.push(self.contact_event("ContactTagUpdate", &c));
        }
        Ok((c, events))
    }

    pub(crate) fn delete_contact(&mut self, id: Cid) -> Result<Vec<Value>, ApiError> {
        let c = self.contacts.remove(&id).ok_or_else(ApiError::contact_not_found)?;
        let event = self.contact_event("ContactDelete", &c);
        self.reindex(c.loc, IndexOp::Remove(id));
        if let Some(kids) = self.children.remove(&id) {
            for t in kids.tasks {
                if let Some(task) = self.tasks.remove(&t)
                    && let Some(set) = self.loc_tasks.get_mut(usize::from(c.loc))
                {
                    set.remove(&(task.added, t));
                }
            }
            for n in kids.notes {
                self.notes.remove(&n);
            }
            for a in kids.appointments {
                self.appointments.remove(&a);
            }
        }
        Ok(vec![event])
    }

    /// Adds (`add`) or removes tags; returns the contact's tags afterwards.
    pub(crate) fn change_tags(&mut self, id: Cid, body: &Value, add: bool) -> Result<Written, ApiError> {
        let tags: Vec<String> = body
            .get("tags")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter().filter_map(Value::as_str).map(|t| t.trim().to_lowercase()).filter(|t| !t.is_empty()).collect()
            })
            .ok_or_else(|| ApiError::unprocessable(vec!["tags must be an array".to_owned()]))?;
        let c = self.edit_contact(id, |_, f| {
            if add {
                for t in &tags {
                    if !f.tags.contains(t) {
                        f.tags.push(t.clone());
                    }
                }
            } else {
                f.tags.retain(|t| !tags.contains(t));
            }
            Ok(())
        })?;
        let all = self.fields_of(&c).tags.clone();
        let event = self.contact_event("ContactTagUpdate", &c);
        Ok((json!({"tags": all}), vec![event]))
    }

    /// `POST /contacts/bulk/tags/update/:type` (`UpdateTagsDTO`; `:type` is `add` or
    /// `remove`) for the caller's location: 201 `{succeded, errorCount, responses}` with one
    /// response per listed contact, errors worded as the spec's example; each contact whose
    /// tags changed fires `ContactTagUpdate`.
    pub(crate) fn bulk_tags(&mut self, loc: u16, kind: &str, obj: &Map<String, Value>) -> Result<Written, ApiError> {
        let mut problems: Vec<String> = obj
            .keys()
            .filter(|k| !["contacts", "tags", "locationId", "removeAllTags"].contains(&k.as_str()))
            .map(|k| format!("property {k} should not exist"))
            .collect();
        let add = match kind {
            "add" => true,
            "remove" => false,
            _ => {
                problems.push("type must be one of the following values: add, remove".to_owned());
                true
            }
        };
        let mut strings = |key: &str| -> Vec<String> {
            match obj.get(key) {
                Some(Value::Array(a)) if a.iter().all(Value::is_string) => {
                    a.iter().filter_map(Value::as_str).map(str::to_owned).collect()
                }
                _ => {
                    problems.push(format!("{key} must be an array of strings"));
                    Vec::new()
                }
            }
        };
        let contacts = strings("contacts");
        let tags: Vec<String> =
            strings("tags").iter().map(|t| t.trim().to_lowercase()).filter(|t| !t.is_empty()).collect();
        let remove_all = obj.get("removeAllTags").and_then(Value::as_bool).unwrap_or(false);
        if remove_all && add {
            problems.push("removeAllTags can only be used with remove".to_owned());
        }
        if !problems.is_empty() {
            return Err(ApiError::unprocessable(problems));
        }
        let mut responses = Vec::with_capacity(contacts.len());
        let mut events = Vec::new();
        let mut errors = 0usize;
        for id in contacts {
            let error = |message: &str| json!({"contactId": id, "message": message, "type": "error"});
            let Some(cid) = Cid::parse(&id) else {
                errors += 1;
                responses.push(error("contact id is not a valid firebase id"));
                continue;
            };
            let Some(contact) = self.contacts.get(&cid) else {
                errors += 1;
                responses.push(error("contact is deleted"));
                continue;
            };
            if contact.loc != loc {
                errors += 1;
                responses.push(error("contact does not belong to location"));
                continue;
            }
            let old = self.fields_of(contact).tags.clone();
            let new: Vec<String> = if add {
                old.iter().cloned().chain(tags.iter().filter(|t| !old.contains(t)).cloned()).collect()
            } else if remove_all {
                Vec::new()
            } else {
                old.iter().filter(|t| !tags.contains(t)).cloned().collect()
            };
            let added: Vec<&String> = new.iter().filter(|t| !old.contains(t)).collect();
            let removed: Vec<&String> = old.iter().filter(|t| !new.contains(t)).collect();
            let response = json!({"contactId": id, "message": "Tags updated", "type": "success",
                                  "oldTags": old, "tagsAdded": added, "tagsRemoved": removed});
            if new != old {
                let c = self.edit_contact(cid, |_, f| {
                    f.tags = new.clone();
                    Ok(())
                })?;
                events.push(self.contact_event("ContactTagUpdate", &c));
            }
            responses.push(response);
        }
        Ok((json!({"succeded": true, "errorCount": errors, "responses": responses}), events))
    }

    pub(crate) fn bump_for_child(&mut self, contact: Cid) {
        if self.opts.children_bump_contact && self.edit_contact(contact, |_, _| Ok(())).is_err() {
            tracing::debug!("child write on a missing contact");
        }
    }

    // ---------------------------------------------------------------- tasks

    fn apply_task(&self, t: &mut Task, obj: &Map<String, Value>, create: bool) -> Result<(), ApiError> {
        let mut problems = Vec::new();
        if create {
            if !obj.get("title").is_some_and(Value::is_string) {
                problems.push("title must be a string".to_owned());
            }
            if !obj.contains_key("dueDate") {
                problems.push("dueDate must be a valid ISO 8601 date string".to_owned());
            }
            if !obj.get("completed").is_some_and(Value::is_boolean) {
                problems.push("completed must be a boolean value".to_owned());
            }
        }
        for (k, v) in obj {
            match k.as_str() {
                "title" => match v.as_str() {
                    Some(s) => t.title = Cow::Owned(s.to_owned()),
                    None => problems.push("title must be a string".to_owned()),
                },
                "body" => t.body = Cow::Owned(v.as_str().unwrap_or("").to_owned()),
                "assignedTo" => t.assigned_to = v.as_str().map(Arc::from),
                "dueDate" => match parse_ms(v) {
                    Some(ms) => t.due = ms,
                    None => problems.push("dueDate must be a valid ISO 8601 date string".to_owned()),
                },
                "completed" => match v.as_bool() {
                    Some(b) => t.completed = b,
                    None => problems.push("completed must be a boolean value".to_owned()),
                },
                other => problems.push(format!("property {other} should not exist")),
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            problems.dedup();
            Err(ApiError::unprocessable(problems))
        }
    }

    pub(crate) fn create_task(
        &mut self,
        contact: Cid,
        obj: &Map<String, Value>,
    ) -> Result<(Task, Vec<Value>), ApiError> {
        let c = self.contacts.get(&contact).cloned().ok_or_else(ApiError::contact_not_found)?;
        let now = self.stamp();
        let mut task = Task {
            id: Cid::random(&mut self.rng),
            contact,
            loc: c.loc,
            title: Cow::Borrowed(""),
            body: Cow::Borrowed(""),
            assigned_to: None,
            due: now,
            completed: false,
            added: now,
        };
        self.apply_task(&mut task, obj, true)?;
        self.tasks.insert(task.id, task.clone());
        if let Some(set) = self.loc_tasks.get_mut(usize::from(c.loc)) {
            set.insert((task.added, task.id));
        }
        self.children.entry(contact).or_default().tasks.push(task.id);
        self.bump_for_child(contact);
        let event = self.task_event("TaskCreate", &task);
        Ok((task, vec![event]))
    }

    /// Updates a task (`completed_only`: the `/completed` route).
    pub(crate) fn update_task(
        &mut self,
        id: Cid,
        obj: &Map<String, Value>,
        completed_only: bool,
    ) -> Result<(Task, Vec<Value>), ApiError> {
        let mut task = self.tasks.get(&id).cloned().ok_or_else(|| ApiError::not_found("Task"))?;
        let was_completed = task.completed;
        if completed_only {
            match obj.get("completed").and_then(Value::as_bool) {
                Some(b) => task.completed = b,
                None => {
                    return Err(ApiError::unprocessable(vec!["completed must be a boolean value".to_owned()]));
                }
            }
        } else {
            self.apply_task(&mut task, obj, false)?;
        }
        self.tasks.insert(id, task.clone());
        self.bump_for_child(task.contact);
        // There is no TaskUpdate webhook in GHL (ghl.md §7); completion fires TaskComplete.
        let events =
            if task.completed && !was_completed { vec![self.task_event("TaskComplete", &task)] } else { Vec::new() };
        Ok((task, events))
    }

    pub(crate) fn delete_task(&mut self, id: Cid) -> Result<Vec<Value>, ApiError> {
        let task = self.tasks.remove(&id).ok_or_else(|| ApiError::not_found("Task"))?;
        if let Some(set) = self.loc_tasks.get_mut(usize::from(task.loc)) {
            set.remove(&(task.added, id));
        }
        if let Some(kids) = self.children.get_mut(&task.contact) {
            kids.tasks.retain(|t| *t != id);
        }
        self.bump_for_child(task.contact);
        Ok(vec![self.task_event("TaskDelete", &task)])
    }

    pub(crate) fn tasks_of(&self, contact: Cid) -> Vec<&Task> {
        self.children
            .get(&contact)
            .map(|k| k.tasks.iter().filter_map(|t| self.tasks.get(t)).collect())
            .unwrap_or_default()
    }

    // ---------------------------------------------------------------- notes

    fn apply_note(&self, n: &mut Note, obj: &Map<String, Value>, create: bool) -> Result<(), ApiError> {
        let mut problems = Vec::new();
        if create && !obj.get("body").is_some_and(Value::is_string) {
            problems.push("body must be a string".to_owned());
        }
        for (k, v) in obj {
            match k.as_str() {
                "body" => match v.as_str() {
                    Some(s) => n.body = Cow::Owned(s.to_owned()),
                    None => problems.push("body must be a string".to_owned()),
                },
                "userId" => n.user_id = v.as_str().map(Arc::from),
                "title" => n.title = v.as_str().map(str::to_owned),
                "color" => n.color = v.as_str().map(str::to_owned),
                "pinned" => n.pinned = v.as_bool().unwrap_or(false),
                other => problems.push(format!("property {other} should not exist")),
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            problems.dedup();
            Err(ApiError::unprocessable(problems))
        }
    }

    pub(crate) fn create_note(
        &mut self,
        contact: Cid,
        obj: &Map<String, Value>,
    ) -> Result<(Note, Vec<Value>), ApiError> {
        let c = self.contacts.get(&contact).cloned().ok_or_else(ApiError::contact_not_found)?;
        let now = self.stamp();
        let mut note = Note {
            id: Cid::random(&mut self.rng),
            contact,
            loc: c.loc,
            body: Cow::Borrowed(""),
            user_id: None,
            added: now,
            title: None,
            color: None,
            pinned: false,
        };
        self.apply_note(&mut note, obj, true)?;
        self.notes.insert(note.id, note.clone());
        self.children.entry(contact).or_default().notes.push(note.id);
        self.bump_for_child(contact);
        let event = self.note_event("NoteCreate", &note);
        Ok((note, vec![event]))
    }

    pub(crate) fn update_note(&mut self, id: Cid, obj: &Map<String, Value>) -> Result<(Note, Vec<Value>), ApiError> {
        let mut note = self.notes.get(&id).cloned().ok_or_else(|| ApiError::not_found("Note"))?;
        self.apply_note(&mut note, obj, false)?;
        self.notes.insert(id, note.clone());
        self.bump_for_child(note.contact);
        let event = self.note_event("NoteUpdate", &note);
        Ok((note, vec![event]))
    }

    pub(crate) fn delete_note(&mut self, id: Cid) -> Result<Vec<Value>, ApiError> {
        let note = self.notes.remove(&id).ok_or_else(|| ApiError::not_found("Note"))?;
        if let Some(kids) = self.children.get_mut(&note.contact) {
            kids.notes.retain(|t| *t != id);
        }
        self.bump_for_child(note.contact);
        Ok(vec![self.note_event("NoteDelete", &note)])
    }

    pub(crate) fn notes_of(&self, contact: Cid) -> Vec<&Note> {
        self.children
            .get(&contact)
            .map(|k| k.notes.iter().filter_map(|n| self.notes.get(n)).collect())
            .unwrap_or_default()
    }

    // ---------------------------------------------------------------- task search

    /// `POST /locations/:locationId/tasks/search` (`TaskSearchParamsDto`, ghl.md §6.4): the
    /// location's tasks oldest first (`dateAdded`, then id: a task created while a client
    /// pages lands on a later page, a deleted one shifts the pages after it), filtered, then
    /// `skip`/`limit` paged (defaults 0 and 25; no cap is documented, none is applied). Items
    /// carry `_id`, `contactDetails` and `assignedToUserDetails` (the spec's response schema
    /// is broken, `array<array>`).
    pub(crate) fn task_search(&self, loc: u16, body: &Value) -> Result<Value, ApiError> {
        let obj = as_object(body)?;
        let mut problems: Vec<String> = obj
            .keys()
            .filter(|k| !TASK_SEARCH_BODY_FIELDS.contains(&k.as_str()))
            .map(|k| format!("property {k} should not exist"))
            .collect();
        let mut ids = |k: &str| -> Option<Vec<String>> {
            match obj.get(k)? {
                Value::Array(a) if a.iter().all(Value::is_string) => {
                    Some(a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                }
                Value::Array(_) => {
                    problems.push(format!("each value in {k} must be a string"));
                    None
                }
                _ => {
                    problems.push(format!("{k} must be an array"));
                    None
                }
            }
        };
        let contact_filter = ids("contactId");
        let assigned_filter = ids("assignedTo");
        let completed = match obj.get("completed") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => {
                problems.push("completed must be a boolean value".to_owned());
                None
            }
        };
        let mut text = |k: &str| match obj.get(k) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                problems.push(format!("{k} must be a string"));
                None
            }
        };
        let query = text("query").map(|q| q.to_lowercase()).filter(|q| !q.is_empty());
        let business = text("businessId");
        let mut number = |k: &str, default: u64, min: u64| match obj.get(k) {
            None | Some(Value::Null) => default,
            Some(v) => match v.as_u64() {
                Some(n) if n >= min => n,
                Some(_) => {
                    problems.push(format!("{k} must not be less than {min}"));
                    default
                }
                None => {
                    problems.push(format!("{k} must be a number conforming to the specified constraints"));
                    default
                }
            },
        };
        let limit = usize::try_from(number("limit", 25, 1)).unwrap_or(usize::MAX);
        let skip = usize::try_from(number("skip", 0, 0)).unwrap_or(usize::MAX);
        if !problems.is_empty() {
            return Err(ApiError::unprocessable(problems));
        }
        let candidates: Box<dyn Iterator<Item = Cid> + '_> = match &contact_filter {
            Some(contacts) => {
                let set: BTreeSet<(i64, Cid)> = contacts
                    .iter()
                    .filter_map(|c| Cid::parse(c))
                    .flat_map(|c| self.tasks_of(c))
                    .map(|t| (t.added, t.id))
                    .collect();
                Box::new(set.into_iter().map(|k| k.1))
            }
            None => Box::new(self.loc_tasks.get(usize::from(loc)).into_iter().flat_map(|s| s.iter().map(|k| k.1))),
        };
        let users = self.locs.get(usize::from(loc)).map(|l| l.users.clone()).unwrap_or_default();
        let tasks: Vec<Value> = candidates
            .filter_map(|id| self.tasks.get(&id))
            .filter(|t| t.loc == loc)
            .filter(|t| completed.is_none_or(|c| t.completed == c))
            .filter(|t| {
                assigned_filter
                    .as_ref()
                    .is_none_or(|a| t.assigned_to.as_deref().is_some_and(|u| a.iter().any(|x| x == u)))
            })
            .filter(|t| {
                query.as_ref().is_none_or(|q| t.title.to_lowercase().contains(q) || t.body.to_lowercase().contains(q))
            })
            .filter(|t| {
                business.as_ref().is_none_or(|b| {
                    self.contacts.get(&t.contact).is_some_and(|c| self.fields_of(c).business_id.as_ref() == Some(b))
                })
            })
            .skip(skip)
            .take(limit)
            .map(|t| {
                let contact = self.contacts.get(&t.contact).map(|c| self.fields_of(c));
                let user = t.assigned_to.as_deref().and_then(|u| users.iter().find(|x| &*x.0 == u));
                json!({
                    "_id": t.id.as_str(),
                    "title": t.title,
                    "body": t.body,
                    "dueDate": iso(t.due),
                    "completed": t.completed,
                    "status": if t.completed { "completed" } else { "incompleted" },
                    "contactId": t.contact.as_str(),
                    "assignedTo": t.assigned_to.as_deref(),
                    "locationId": self.loc_id(t.loc),
                    "deleted": false,
                    "contactDetails": contact.map(|f| json!({
                        "id": t.contact.as_str(),
                        "firstName": f.first_name,
                        "lastName": f.last_name,
                        "email": f.email,
                        "phone": f.phone,
                    })),
                    "assignedToUserDetails": user.map(|u| json!({
                        "id": &*u.0, "firstName": u.1, "lastName": u.2,
                    })),
                })
            })
            .collect();
        Ok(json!({"tasks": tasks}))
    }

    // ---------------------------------------------------------------- contact search

    /// `POST /contacts/search` (ghl.md §6.2). Sees the lagged index.
    /// The search page as serialized items (fast path for the HTTP handler) plus `total`.
    pub(crate) fn search_raw(&mut self, auth: &AuthCtx, body: &Value) -> Result<(Vec<String>, u64), ApiError> {
        let obj = as_object(body)?;
        let mut problems = Vec::new();
        let location_id = obj.get("locationId").and_then(Value::as_str).unwrap_or("");
        if location_id.is_empty() {
            problems.push("locationId should not be empty".to_owned());
        }
        let page_limit = obj.get("pageLimit").and_then(Value::as_u64);
        match page_limit {
            None => problems.push("pageLimit must be a number conforming to the specified constraints".to_owned()),
            Some(0) => problems.push("pageLimit must not be less than 1".to_owned()),
            Some(n) if n > 500 => problems.push("pageLimit must not be greater than 500".to_owned()),
            _ => {}
        }
        let page = match obj.get("page") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(p) if p >= 1 => Some(p),
                _ => {
                    problems.push("page must not be less than 1".to_owned());
                    None
                }
            },
        };
        let search_after = match obj.get("searchAfter") {
            None | Some(Value::Null) => None,
            Some(Value::Array(a)) if a.len() == 2 => {
                let ms = parse_ms(&a[0]);
                let id = a[1].as_str().and_then(Cid::parse);
                match (ms, id) {
                    (Some(ms), Some(id)) => Some((ms, id)),
                    _ => {
                        problems.push("searchAfter must be [sortValue, id]".to_owned());
                        None
                    }
                }
            }
            Some(Value::Array(a)) if a.is_empty() => None,
            Some(_) => {
                problems.push("searchAfter must be an array".to_owned());
                None
            }
        };
        if page.is_some() && search_after.is_some() {
            problems.push("page and searchAfter cannot be used together".to_owned());
        }
        let limit = page_limit.unwrap_or(0);
        if let Some(p) = page
            && p.saturating_mul(limit) > 10_000
        {
            // Real error unknown (ghl.md §11); 422 as the reference suggests.
            problems.push("page * pageLimit must not exceed 10000; use searchAfter".to_owned());
        }
        // Sort: first entry decides; default dateAdded desc [I].
        let (sort_updated, desc) = match obj.get("sort") {
            None | Some(Value::Null) => (false, true),
            Some(Value::Array(a)) if a.is_empty() => (false, true),
            Some(Value::Array(a)) => {
                let field = a[0].get("field").and_then(Value::as_str).unwrap_or("");
                let dir = a[0].get("direction").and_then(Value::as_str).unwrap_or("asc");
                if field != "dateUpdated" && field != "dateAdded" {
                    problems.push(format!("sort field {field} is not supported"));
                }
                if dir != "asc" && dir != "desc" {
                    problems.push("sort direction must be one of: asc, desc".to_owned());
                }
                (field == "dateUpdated", dir == "desc")
            }
            Some(_) => {
                problems.push("sort must be an array".to_owned());
                (false, true)
            }
        };
        let filters = match obj.get("filters") {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => match parse_filters(v) {
                Ok(f) => f,
                Err(p) => {
                    problems.push(p);
                    Vec::new()
                }
            },
        };
        let query = obj.get("query").and_then(Value::as_str).map(str::to_lowercase).filter(|q| !q.is_empty());
        if query.as_ref().is_some_and(|q| q.chars().count() > 75) {
            problems.push("query must be shorter than or equal to 75 characters".to_owned());
        }
        if !problems.is_empty() {
            return Err(ApiError::unprocessable(problems));
        }
        let loc = self.check_loc(auth, location_id)?;
        self.catch_up();

        let sort_field = if sort_updated { "dateUpdated" } else { "dateAdded" };
        // Narrow the scan with top-level range filters on the sort field.
        let mut lower: Bound<(i64, Cid)> = Bound::Unbounded;
        let mut upper: Bound<(i64, Cid)> = Bound::Unbounded;
        for f in &filters {
            if let Filter::Cond { field, op, value } = f
                && field == sort_field
                && op == "range"
            {
                let (l, u) = range_bounds(value);
                lower = max_lower(lower, l);
                upper = min_upper(upper, u);
            }
        }
        let (scan_lower, scan_upper) = (lower, upper);
        if let Some(sa) = search_after {
            if desc {
                upper = min_upper(upper, Bound::Excluded(sa));
            } else {
                lower = max_lower(lower, Bound::Excluded(sa));
            }
        }
        let needs_fields = filters.iter().any(Filter::needs_fields) || query.is_some();
        let index = &self.index[usize::from(loc)];
        let set = if sort_updated { &index.by_updated } else { &index.by_added };
        let matches = |key: &(i64, Cid)| -> bool {
            let Some(c) = index.docs.get(&key.1) else {
                return false;
            };
            let fields = needs_fields.then(|| self.search_fields_of(c));
            filters.iter().all(|f| f.eval(c, fields.as_deref()))
                && query.as_ref().is_none_or(|q| {
                    fields.as_deref().is_some_and(|f| {
                        f.contact_name().to_lowercase().contains(q)
                            || f.email.as_deref().is_some_and(|e| e.to_lowercase().contains(q))
                            || f.phone.as_deref().is_some_and(|p| p.contains(q))
                            || f.company_name.as_deref().is_some_and(|p| p.to_lowercase().contains(q))
                    })
                })
        };
        let skip = page.map(|p| (p - 1) * limit).unwrap_or(0) as usize;
        let page_keys: Vec<(i64, Cid)> = if valid_range(&lower, &upper) {
            let range = set.range((lower, upper));
            if desc {
                range.rev().filter(|k| matches(k)).skip(skip).take(limit as usize).copied().collect()
            } else {
                range.filter(|k| matches(k)).skip(skip).take(limit as usize).copied().collect()
            }
        } else {
            Vec::new()
        };
        // total: count of all matches (cached per index generation).
        let total = if filters.is_empty() && query.is_none() {
            index.docs.len() as u64
        } else {
            let key = (loc, serde_json::to_string(&json!([obj.get("filters"), query, sort_field])).unwrap_or_default());
            match self.total_cache.get(&key) {
                Some((generation, total)) if *generation == index.generation => *total,
                _ => {
                    let total = if valid_range(&scan_lower, &scan_upper) {
                        set.range((scan_lower, scan_upper)).filter(|k| matches(k)).count() as u64
                    } else {
                        0
                    };
                    let generation = index.generation;
                    self.total_cache.insert(key, (generation, total));
                    total
                }
            }
        };
        let index = &self.index[usize::from(loc)];
        let loc_id = self.loc_id(loc);
        let contacts: Vec<String> = page_keys
            .iter()
            .filter_map(|k| index.docs.get(&k.1))
            .map(|c| {
                let f = self.search_fields_of(c);
                let sort_ms = if sort_updated { c.updated } else { c.added };
                search_item(c, &f, loc_id, sort_ms)
            })
            .collect();
        Ok((contacts, total))
    }

    /// Deprecated `GET /contacts/`: newest `dateAdded` first, from the (lagged) index.
    pub(crate) fn list_contacts(
        &mut self,
        loc: u16,
        limit: usize,
        start_after: Option<(i64, Cid)>,
        query: Option<&str>,
    ) -> Value {
        self.catch_up();
        let index = &self.index[usize::from(loc)];
        let upper = match start_after {
            Some(k) => Bound::Excluded(k),
            None => Bound::Unbounded,
        };
        let query = query.map(str::to_lowercase);
        let items: Vec<&Contact> = index
            .by_added
            .range((Bound::Unbounded, upper))
            .rev()
            .filter_map(|k| index.docs.get(&k.1))
            .filter(|c| {
                query.as_ref().is_none_or(|q| {
                    let f = self.fields_of(c);
                    f.contact_name().to_lowercase().contains(q) || f.email.as_deref().is_some_and(|e| e.contains(q))
                })
            })
            .take(limit)
            .collect();
        let last = items.last().map(|c| (c.added, c.id));
        let contacts: Vec<Value> = items.iter().map(|c| self.render(c, Shape::List)).collect();
        let full = contacts.len() == limit;
        json!({
            "contacts": contacts,
            "count": index.docs.len(),
            "meta": {
                "total": index.docs.len(),
                "startAfterId": last.map(|l| l.1.as_str().to_owned()),
                "startAfter": last.map(|l| l.0),
                "nextPageUrl": match (full, last) {
                    (true, Some((ms, id))) => Value::String(format!(
                        "/contacts/?locationId={}&limit={limit}&startAfter={ms}&startAfterId={}",
                        self.loc_id(loc), id.as_str())),
                    _ => Value::Null,
                },
                "currentPage": Value::Null,
                "nextPage": Value::Null,
                "prevPage": Value::Null,
            },
        })
    }

    // ---------------------------------------------------------------- mutate

    fn random_contact(&mut self, loc: u16) -> Option<Cid> {
        let index = self.index.get(usize::from(loc))?;
        let first = index.by_added.first()?.0;
        let last = index.by_added.last()?.0;
        for _ in 0..16 {
            let at = self.rng.i64(first..=last);
            let key = (at, Cid::random(&mut self.rng));
            let index = &self.index[usize::from(loc)];
            let found = index.by_added.range(key..).next().or_else(|| index.by_added.last()).map(|k| k.1);
            if let Some(id) = found
                && self.contacts.contains_key(&id)
            {
                return Some(id);
            }
        }
        let index = &self.index[usize::from(loc)];
        index.by_added.iter().map(|k| k.1).find(|id| self.contacts.contains_key(id))
    }

    /// One seeded random mutation in `loc` from the default mix: contacts, tasks and notes
    /// only (the mix `mutate` has always had, so existing callers see the same changes).
    pub(crate) fn mutate_one(&mut self, loc: u16) -> Option<(Mutation, Vec<Value>)> {
        use MutationKind as K;
        let roll = self.rng.u32(..100);
        let kind = match roll {
            0..15 => K::ContactCreate,
            15..45 => K::ContactUpdate,
            45..50 => K::ContactDelete,
            50..60 => K::TaskCreate,
            60..68 => K::TaskUpdate,
            68..75 => K::TaskComplete,
            75..80 => K::TaskDelete,
            80..90 => K::NoteCreate,
            90..96 => K::NoteUpdate,
            _ => K::NoteDelete,
        };
        self.mutate_kind(loc, kind)
    }

    /// One seeded random mutation in `loc` of a kind drawn uniformly from `kinds`.
    pub(crate) fn mutate_one_of(&mut self, loc: u16, kinds: &[MutationKind]) -> Option<(Mutation, Vec<Value>)> {
        if kinds.is_empty() {
            return None;
        }
        let kind = kinds[self.rng.usize(..kinds.len())];
        self.mutate_kind(loc, kind)
    }

    /// A random live contact of `loc` that belongs to a business, if one is found quickly.
    fn random_business_contact(&mut self, loc: u16) -> Option<Cid> {
        for _ in 0..32 {
            let id = self.random_contact(loc)?;
            if self.contacts.get(&id).is_some_and(|c| self.fields_of(c).business_id.is_some()) {
                return Some(id);
            }
        }
        None
    }

    /// One mutation of `kind` on a random object of `loc`. When the kind needs an object the
    /// chosen contact lacks (a task to complete, an appointment to cancel, a business to
    /// leave), it creates one instead and reports that.
    fn mutate_kind(&mut self, loc: u16, kind: MutationKind) -> Option<(Mutation, Vec<Value>)> {
        use MutationKind as K;
        let n = self.rng.u32(..1_000_000);
        let loc_id = self.loc_id(loc).to_owned();
        let mutation = |kind, contact: Cid, object: Cid| Mutation {
            kind,
            location_id: loc_id.clone(),
            contact_id: contact.as_str().to_owned(),
            object_id: object.as_str().to_owned(),
        };
        if kind == K::ContactCreate {
            let first = ["Ada", "Bo", "Cyd", "Dee"][self.rng.usize(..4)];
            let obj = json!({
                "firstName": first,
                "lastName": format!("Mut{n}"),
                "email": format!("mut{n}@example.test"),
                "phone": format!("+1555{:07}", n),
                "tags": ["mutated"],
            });
            let obj = obj.as_object()?;
            let (c, events) = self.create_contact(loc, obj).ok()?;
            return Some((mutation(kind, c.id, c.id), events));
        }
        let contact = self.random_contact(loc)?;
        let task = |s: &State| s.children.get(&contact).and_then(|k| k.tasks.first().copied());
        let note = |s: &State| s.children.get(&contact).and_then(|k| k.notes.first().copied());
        match kind {
            K::ContactUpdate => {
                let choices = [
                    json!({"phone": format!("+1555{:07}", n)}),
                    json!({"city": format!("Mutaville {n}")}),
                    json!({"firstName": format!("Edited{n}")}),
                    json!({"tags": ["mutated", format!("t{}", n % 7)]}),
                    json!({"website": format!("https://m{n}.example.test")}),
                ];
                let obj = choices[self.rng.usize(..choices.len())].clone();
                let (c, events) = self.update_contact(contact, obj.as_object()?).ok()?;
                Some((mutation(kind, c.id, c.id), events))
            }
            K::ContactDelete => {
                let events = self.delete_contact(contact).ok()?;
                Some((mutation(kind, contact, contact), events))
            }
            K::TaskCreate => {
                let obj = json!({"title": format!("Mutated task {n}"), "body": "", "dueDate": iso(self.wall_ms() + 86_400_000), "completed": false});
                let (t, events) = self.create_task(contact, obj.as_object()?).ok()?;
                Some((mutation(kind, contact, t.id), events))
            }
            K::TaskUpdate | K::TaskComplete | K::TaskDelete => {
                let Some(id) = task(self) else {
                    let obj = json!({"title": format!("Mutated task {n}"), "dueDate": iso(self.wall_ms() + 86_400_000), "completed": false});
                    let (t, events) = self.create_task(contact, obj.as_object()?).ok()?;
                    return Some((mutation(K::TaskCreate, contact, t.id), events));
                };
                let events = match kind {
                    K::TaskUpdate => {
                        let obj = json!({"title": format!("Edited task {n}")});
                        self.update_task(id, obj.as_object()?, false).ok()?.1
                    }
                    K::TaskComplete => {
                        let done = self.tasks.get(&id).is_some_and(|t| t.completed);
                        let obj = json!({"completed": !done});
                        self.update_task(id, obj.as_object()?, true).ok()?.1
                    }
                    _ => self.delete_task(id).ok()?,
                };
                Some((mutation(kind, contact, id), events))
            }
            K::NoteCreate => {
                let obj = json!({"body": format!("Mutated note {n}")});
                let (note, events) = self.create_note(contact, obj.as_object()?).ok()?;
                Some((mutation(kind, contact, note.id), events))
            }
            K::NoteUpdate | K::NoteDelete => {
                let Some(id) = note(self) else {
                    let obj = json!({"body": format!("Mutated note {n}")});
                    let (note, events) = self.create_note(contact, obj.as_object()?).ok()?;
                    return Some((mutation(K::NoteCreate, contact, note.id), events));
                };
                let events = if kind == K::NoteUpdate {
                    let obj = json!({"body": format!("Edited note {n}")});
                    self.update_note(id, obj.as_object()?).ok()?.1
                } else {
                    self.delete_note(id).ok()?
                };
                Some((mutation(kind, contact, id), events))
            }
            K::AppointmentCreate | K::AppointmentUpdate | K::AppointmentCancel | K::AppointmentDelete => {
                let existing = self.some_appointment(contact, kind != K::AppointmentDelete);
                let Some(id) = existing.filter(|_| kind != K::AppointmentCreate) else {
                    let obj = json!({"title": format!("Mutated appointment {n}"), "startTime": iso(self.next_slot())});
                    let (a, events) = self.create_appointment(contact, obj.as_object()?).ok()?;
                    return Some((mutation(K::AppointmentCreate, contact, a.id), events));
                };
                let events = match kind {
                    K::AppointmentUpdate => {
                        let obj = json!({"title": format!("Rescheduled {n}"), "startTime": iso(self.next_slot() + 3_600_000)});
                        self.update_appointment(id, obj.as_object()?).ok()?.1
                    }
                    K::AppointmentCancel => self.cancel_appointment(id).ok()?.1,
                    _ => self.delete_appointment(id).ok()?,
                };
                Some((mutation(kind, contact, id), events))
            }
            K::BusinessLink | K::BusinessUnlink => {
                let linked = if kind == K::BusinessUnlink { self.random_business_contact(loc) } else { None };
                if let Some(id) = linked {
                    let (c, events) = self.set_business(id, None).ok()?;
                    return Some((mutation(K::BusinessUnlink, c.id, c.id), events));
                }
                let current = self.contacts.get(&contact).and_then(|c| self.fields_of(c).business_id.clone());
                let businesses = self.locs.get(usize::from(loc)).map(|l| l.businesses.clone()).unwrap_or_default();
                let choices: Vec<_> = businesses
                    .iter()
                    .filter(|(b, _)| current.as_deref() != Some(&**b))
                    .map(|(b, _)| b.clone())
                    .collect();
                if choices.is_empty() {
                    return None;
                }
                let business = choices[self.rng.usize(..choices.len())].clone();
                let (c, events) = self.set_business(contact, Some(&business)).ok()?;
                Some((mutation(K::BusinessLink, c.id, c.id), events))
            }
            K::ContactCreate => None,
        }
    }

    /// The full dump for `GET /__admin/ghl/state` (capped at `limit` contacts per location).
    pub(crate) fn dump(&self, limit: usize) -> Value {
        let mut locations = Vec::new();
        let mut grouped: Vec<Vec<&Contact>> = vec![Vec::new(); self.locs.len()];
        for c in self.contacts.values() {
            if let Some(group) = grouped.get_mut(usize::from(c.loc)) {
                group.push(c);
            }
        }
        for ((li, loc), mut ids) in self.locs.iter().enumerate().zip(grouped) {
            let index = &self.index[li];
            ids.sort_by_key(|c| (c.updated, c.id));
            let total = ids.len();
            let contacts: Vec<Value> = ids
                .into_iter()
                .take(limit)
                .map(|c| {
                    let mut v = self.render(c, Shape::Full);
                    v["tasks"] = json!(self.tasks_of(c.id).iter().map(|t| t.render()).collect::<Vec<_>>());
                    v["notes"] = json!(self.notes_of(c.id).iter().map(|n| n.render()).collect::<Vec<_>>());
                    v["appointments"] = json!(self.render_appointments(c.id));
                    v
                })
                .collect();
            locations.push(json!({
                "id": loc.id.as_str(),
                "name": loc.name,
                "pit": loc.pit,
                "contactCount": total,
                "businesses": loc.businesses.iter().map(|(id, name)| json!({"id": &**id, "name": name})).collect::<Vec<_>>(),
                "calendars": loc.calendars.iter()
                    .map(|c| json!({"id": &*c.id, "name": c.name, "groupId": c.group.as_deref()}))
                    .collect::<Vec<_>>(),
                "searchIndexCount": index.docs.len(),
                "contacts": contacts,
            }));
        }
        json!({
            "companyId": self.company.as_str(),
            "pendingIndexWrites": self.pending.len(),
            "locations": locations,
        })
    }
}

/// A parsed search filter.
#[derive(Debug)]
pub(crate) enum Filter {
    Group { any: bool, items: Vec<Filter> },
    Cond { field: String, op: String, value: Value },
}

const OPERATORS: &[&str] = &["eq", "not_eq", "contains", "not_contains", "exists", "not_exists", "range"];

fn parse_filters(v: &Value) -> Result<Vec<Filter>, String> {
    let items = v.as_array().ok_or_else(|| "filters must be an array".to_owned())?;
    items.iter().map(parse_filter).collect()
}

fn parse_filter(v: &Value) -> Result<Filter, String> {
    if let Some(group) = v.get("group").and_then(Value::as_str) {
        let any = match group {
            "OR" => true,
            "AND" => false,
            other => return Err(format!("group {other} must be one of: AND, OR")),
        };
        let items = parse_filters(v.get("filters").unwrap_or(&Value::Null))?;
        return Ok(Filter::Group { any, items });
    }
    let field = v.get("field").and_then(Value::as_str).ok_or_else(|| "filters.field should not be empty".to_owned())?;
    let op =
        v.get("operator").and_then(Value::as_str).ok_or_else(|| "filters.operator should not be empty".to_owned())?;
    if !OPERATORS.contains(&op) {
        return Err(format!("operator {op} must be one of: {}", OPERATORS.join(", ")));
    }
    let value = v.get("value").cloned().unwrap_or(Value::Null);
    if op == "range" {
        if field != "dateUpdated" && field != "dateAdded" {
            return Err(format!("range is not supported for field {field}"));
        }
        let ok = value.as_object().is_some_and(|o| {
            !o.is_empty()
                && o.iter().all(|(k, v)| ["gte", "gt", "lte", "lt"].contains(&k.as_str()) && parse_ms(v).is_some())
        });
        if !ok {
            return Err("range value must be an object of gte/gt/lte/lt dates".to_owned());
        }
    }
    if let Value::String(s) = &value
        && s.chars().count() > 75
    {
        return Err("filter value must be shorter than or equal to 75 characters".to_owned());
    }
    Ok(Filter::Cond { field: field.to_owned(), op: op.to_owned(), value })
}

fn text_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(x), Value::String(y)) => x.eq_ignore_ascii_case(y),
        (Value::Array(xs), y) => xs.iter().any(|x| text_eq(x, y)),
        (x, Value::Array(ys)) => ys.iter().any(|y| text_eq(x, y)),
        (x, y) => x == y,
    }
}

fn text_contains(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(x), Value::String(y)) => x.to_lowercase().contains(&y.to_lowercase()),
        (Value::Array(xs), y) => xs.iter().any(|x| text_contains(x, y)),
        _ => false,
    }
}

impl Filter {
    fn needs_fields(&self) -> bool {
        match self {
            Filter::Group { items, .. } => items.iter().any(Filter::needs_fields),
            Filter::Cond { field, .. } => !matches!(field.as_str(), "id" | "dateAdded" | "dateUpdated" | "locationId"),
        }
    }

    fn eval(&self, c: &Contact, f: Option<&Fields>) -> bool {
        match self {
            Filter::Group { any: true, items } => items.iter().any(|i| i.eval(c, f)),
            Filter::Group { any: false, items } => items.iter().all(|i| i.eval(c, f)),
            Filter::Cond { field, op, value } => {
                let actual = match field.as_str() {
                    "id" => json!(c.id.as_str()),
                    "dateAdded" => json!(c.added),
                    "dateUpdated" => json!(c.updated),
                    other => f.map(|f| f.get(other)).unwrap_or(Value::Null),
                };
                let present = match &actual {
                    Value::Null => false,
                    Value::String(s) => !s.is_empty(),
                    Value::Array(a) => !a.is_empty(),
                    _ => true,
                };
                match op.as_str() {
                    "eq" => {
                        if field.starts_with("date") {
                            actual.as_i64() == parse_ms(value)
                        } else {
                            text_eq(&actual, value)
                        }
                    }
                    "not_eq" => !text_eq(&actual, value),
                    "contains" => text_contains(&actual, value),
                    "not_contains" => !text_contains(&actual, value),
                    "exists" => present,
                    "not_exists" => !present,
                    "range" => {
                        let Some(ms) = actual.as_i64() else {
                            return false;
                        };
                        let get = |k: &str| value.get(k).and_then(parse_ms);
                        get("gte").is_none_or(|x| ms >= x)
                            && get("gt").is_none_or(|x| ms > x)
                            && get("lte").is_none_or(|x| ms <= x)
                            && get("lt").is_none_or(|x| ms < x)
                    }
                    _ => false,
                }
            }
        }
    }
}

type Key = (i64, Cid);

fn range_bounds(value: &Value) -> (Bound<Key>, Bound<Key>) {
    let get = |k: &str| value.get(k).and_then(parse_ms);
    let mut lower = Bound::Unbounded;
    let mut upper = Bound::Unbounded;
    if let Some(x) = get("gte") {
        lower = max_lower(lower, Bound::Included((x, Cid::MIN)));
    }
    if let Some(x) = get("gt") {
        lower = max_lower(lower, Bound::Excluded((x, Cid::MAX)));
    }
    if let Some(x) = get("lte") {
        upper = min_upper(upper, Bound::Included((x, Cid::MAX)));
    }
    if let Some(x) = get("lt") {
        upper = min_upper(upper, Bound::Excluded((x, Cid::MIN)));
    }
    (lower, upper)
}

fn max_lower<K: Ord>(a: Bound<K>, b: Bound<K>) -> Bound<K> {
    match (a, b) {
        (Bound::Unbounded, x) | (x, Bound::Unbounded) => x,
        (Bound::Included(x), Bound::Included(y)) => Bound::Included(x.max(y)),
        (Bound::Excluded(x), Bound::Excluded(y)) => Bound::Excluded(x.max(y)),
        (Bound::Included(i), Bound::Excluded(e)) | (Bound::Excluded(e), Bound::Included(i)) => {
            if i > e {
                Bound::Included(i)
            } else {
                Bound::Excluded(e)
            }
        }
    }
}

fn min_upper<K: Ord>(a: Bound<K>, b: Bound<K>) -> Bound<K> {
    match (a, b) {
        (Bound::Unbounded, x) | (x, Bound::Unbounded) => x,
        (Bound::Included(x), Bound::Included(y)) => Bound::Included(x.min(y)),
        (Bound::Excluded(x), Bound::Excluded(y)) => Bound::Excluded(x.min(y)),
        (Bound::Included(i), Bound::Excluded(e)) | (Bound::Excluded(e), Bound::Included(i)) => {
            if i < e {
                Bound::Included(i)
            } else {
                Bound::Excluded(e)
            }
        }
    }
}

/// Whether `BTreeSet::range` accepts these bounds (it panics on inverted ones).
fn valid_range<K: Ord>(lower: &Bound<K>, upper: &Bound<K>) -> bool {
    match (lower, upper) {
        (Bound::Unbounded, _) | (_, Bound::Unbounded) => true,
        (Bound::Included(a), Bound::Included(b)) => a <= b,
        (Bound::Included(a), Bound::Excluded(b)) | (Bound::Excluded(a), Bound::Included(b)) => a < b,
        (Bound::Excluded(a), Bound::Excluded(b)) => a < b,
    }
}
