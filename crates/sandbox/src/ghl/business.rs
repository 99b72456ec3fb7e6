//! Businesses: `GET /contacts/business/:businessId` (a page of `ContactsSearchSchema` items
//! plus `count`) and `POST /contacts/bulk/business` (`ContactsBusinessUpdate`: link the
//! listed contacts to a business, or unlink them with `businessId: null`), the only spec route
//! that writes a contact's `businessId` (`CreateContactDto` and `UpdateContactDto` have no
//! such property). Each seeded location has two businesses; about a third of the seeded
//! contacts belong to one.
//!
//! A link or unlink bumps the contact's `dateUpdated` and fires `ContactUpdate`.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use super::model::{Cid, Contact, Shape};
use super::ops::Written;
use super::schema::BUSINESS_UPDATE_BODY_FIELDS;
use super::state::{ApiError, State};

/// Parses a query parameter the spec types as a numeric string (`limit`, `skip`).
fn number_param(q: &HashMap<String, String>, key: &str, default: usize) -> Result<usize, String> {
    match q.get(key) {
        None => Ok(default),
        Some(text) => text.trim().parse::<usize>().map_err(|_| format!("{key} must be a number string")),
    }
}

impl State {
    /// `GET /contacts/business/:businessId` for location `loc`: the live contacts linked to
    /// the business, oldest first (`dateAdded`, then id), `skip`/`limit` paged; `query`
    /// matches name, email, phone or company. `count` is the number of matches.
    pub(crate) fn business_contacts(
        &self,
        loc: u16,
        business: &str,
        q: &HashMap<String, String>,
    ) -> Result<Value, ApiError> {
        let mut problems = Vec::new();
        let limit = number_param(q, "limit", 25).unwrap_or_else(|p| {
            problems.push(p);
            0
        });
        let skip = number_param(q, "skip", 0).unwrap_or_else(|p| {
            problems.push(p);
            0
        });
        if !problems.is_empty() {
            return Err(ApiError::unprocessable(problems));
        }
        let query = q.get("query").map(|s| s.trim().to_lowercase()).filter(|s| !s.is_empty());
        let mut matching: Vec<&Contact> = self
            .contacts
            .values()
            .filter(|c| c.loc == loc)
            .filter(|c| {
                let f = self.fields_of(c);
                f.business_id.as_deref() == Some(business)
                    && query.as_ref().is_none_or(|q| {
                        f.contact_name().to_lowercase().contains(q)
                            || f.email.as_deref().is_some_and(|e| e.to_lowercase().contains(q))
                            || f.phone.as_deref().is_some_and(|p| p.contains(q))
                            || f.company_name.as_deref().is_some_and(|n| n.to_lowercase().contains(q))
                    })
            })
            .collect();
        matching.sort_by_key(|c| (c.added, c.id));
        let count = matching.len();
        let contacts: Vec<Value> =
            matching.into_iter().skip(skip).take(limit).map(|c| self.render(c, Shape::List)).collect();
        Ok(json!({"contacts": contacts, "count": count}))
    }

    /// Links (`Some`) or unlinks (`None`) a contact and a business; fires `ContactUpdate`.
    /// Linking to the business it already has changes nothing and fires nothing.
    pub(crate) fn set_business(&mut self, id: Cid, business: Option<&str>) -> Result<(Contact, Vec<Value>), ApiError> {
        let contact = self.contacts.get(&id).cloned().ok_or_else(ApiError::contact_not_found)?;
        if self.fields_of(&contact).business_id.as_deref() == business {
            return Ok((contact, Vec::new()));
        }
        let c = self.edit_contact(id, |_, f| {
            f.business_id = business.map(str::to_owned);
            Ok(())
        })?;
        let event = self.contact_event("ContactUpdate", &c);
        Ok((c, vec![event]))
    }

    /// `POST /contacts/bulk/business` for location `loc` (the caller's): 200
    /// `{success, ids}` with the ids that were updated; ids that are not live contacts of the
    /// location are left out.
    pub(crate) fn bulk_business(&mut self, loc: u16, obj: &Map<String, Value>) -> Result<Written, ApiError> {
        let mut problems: Vec<String> = obj
            .keys()
            .filter(|k| !BUSINESS_UPDATE_BODY_FIELDS.contains(&k.as_str()))
            .map(|k| format!("property {k} should not exist"))
            .collect();
        let ids: Vec<String> = match obj.get("ids") {
            Some(Value::Array(items)) if items.iter().all(|i| i.as_str().is_some_and(|s| s.len() <= 50)) => {
                items.iter().filter_map(Value::as_str).map(str::to_owned).collect()
            }
            Some(Value::Array(_)) => {
                problems.push("each value in ids must be a string shorter than or equal to 50 characters".to_owned());
                Vec::new()
            }
            _ => {
                problems.push("ids must be an array".to_owned());
                Vec::new()
            }
        };
        let business = match obj.get("businessId") {
            Some(Value::Null) => None,
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            _ => {
                problems.push("businessId must be a string or null".to_owned());
                None
            }
        };
        if !problems.is_empty() {
            return Err(ApiError::unprocessable(problems));
        }
        let mut updated = Vec::new();
        let mut events = Vec::new();
        for id in ids {
            let Some(cid) = Cid::parse(&id) else { continue };
            if self.contacts.get(&cid).is_none_or(|c| c.loc != loc) {
                continue;
            }
            let (_, mut more) = self.set_business(cid, business.as_deref())?;
            events.append(&mut more);
            updated.push(id);
        }
        Ok((json!({"success": true, "ids": updated}), events))
    }
}
