//! HTTP layer: the gate middleware (stats, faults, auth, rate limits, Version) and handlers.

use std::collections::HashMap;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, MatchedPath, Path, Query, Request, State as AxState};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde_json::{Value, json};

use super::model::{Cid, Shape, iso};
use super::ops::Written;
use super::schema::{self, ScopeSet};
use super::state::{ApiError, AuthCtx, Principal, RateHeaders, State};
use super::{FakeGhl, Fault, GhlOptions, MutationKind, WebhookMode};

/// The only `Version` header value the fake accepts (strict, per the brief).
const API_VERSION: &str = "2021-07-28";

pub(crate) fn router(ghl: FakeGhl) -> Router {
    let api = Router::new()
        .route("/oauth/token", post(oauth_token))
        .route("/oauth/locationToken", post(location_token))
        .route("/oauth/installedLocations", get(installed_locations))
        .route("/contacts/search", post(search))
        .route("/contacts/upsert", post(upsert_contact))
        .route("/contacts/search/duplicate", get(duplicate_contact))
        .route("/contacts/", get(list_contacts).post(create_contact))
        .route("/contacts", get(list_contacts).post(create_contact))
        .route("/contacts/business/{businessId}", get(business_contacts))
        .route("/contacts/bulk/business", post(bulk_business))
        .route("/contacts/bulk/tags/update/{type}", post(bulk_tags))
        .route("/contacts/{contactId}", get(get_contact).put(update_contact).delete(delete_contact))
        .route("/contacts/{contactId}/tags", post(add_tags).delete(remove_tags))
        .route("/contacts/{contactId}/appointments", get(appointments))
        .route("/contacts/{contactId}/tasks", get(list_tasks).post(create_task))
        .route("/contacts/{contactId}/tasks/{taskId}", get(get_task).put(update_task).delete(delete_task))
        .route("/contacts/{contactId}/tasks/{taskId}/completed", put(complete_task))
        .route("/contacts/{contactId}/notes", get(list_notes).post(create_note))
        .route("/contacts/{contactId}/notes/{id}", get(get_note).put(update_note).delete(delete_note))
        .route("/locations/{locationId}", get(get_location))
        .route("/locations/{locationId}/customFields", get(custom_fields))
        .route("/locations/{locationId}/tasks/search", post(task_search))
        .route_layer(middleware::from_fn_with_state(ghl.clone(), gate));
    let admin = Router::new()
        .route("/seed", post(admin_seed))
        .route("/mutate", post(admin_mutate))
        .route("/state", get(admin_state))
        .route("/stats", get(admin_stats))
        .route("/stats/reset", post(admin_stats_reset))
        .route("/faults", post(admin_set_fault).delete(admin_clear_faults))
        .route("/credentials", get(admin_credentials))
        .route("/webhooks", get(admin_webhooks))
        .route("/webhooks/emit", post(admin_emit))
        .route("/webhooks/url", post(admin_webhook_url))
        .route("/clock/advance", post(admin_clock))
        .route("/daily-exhausted", post(admin_daily_exhausted))
        .route("/pits", post(admin_pit))
        .route("/codes", post(admin_code))
        .route("/appointments", post(admin_create_appointment))
        .route("/appointments/{id}", put(admin_update_appointment).delete(admin_delete_appointment))
        .route("/appointments/{id}/cancel", post(admin_cancel_appointment))
        .route("/business", post(admin_business));
    api.nest("/__admin/ghl", admin).with_state(ghl)
}

// -------------------------------------------------------------------- helpers

fn trace_id() -> String {
    let a = fastrand::u64(..);
    let b = fastrand::u64(..);
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

fn json_response(status: u16, body: &Value) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (code, body.to_string()).into_response();
    response.headers_mut().insert("content-type", HeaderValue::from_static("application/json; charset=utf-8"));
    response
}

fn success(status: u16, mut body: Value) -> Response {
    if let Some(obj) = body.as_object_mut() {
        obj.insert("traceId".to_owned(), json!(trace_id()));
    }
    json_response(status, &body)
}

fn failure(error: &ApiError) -> Response {
    json_response(error.status, &error.body)
}

fn parse_body(bytes: &Bytes) -> Result<Value, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::new(400, format!("Invalid JSON body: {e}")))
}

fn parse_form(bytes: &Bytes) -> HashMap<String, String> {
    url::form_urlencoded::parse(bytes).into_owned().collect()
}

impl FakeGhl {
    /// Runs a write or read under the lock, dispatches its events, renders the answer.
    fn answer(&self, status: u16, f: impl FnOnce(&mut State) -> Result<Written, ApiError>) -> Response {
        let result = f(&mut self.lock());
        match result {
            Ok((body, events)) => {
                self.dispatch(events, WebhookMode::Normal);
                success(status, body)
            }
            Err(error) => failure(&error),
        }
    }
}

fn add_rate_headers(headers: &mut HeaderMap, r: &RateHeaders) {
    let mut put = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    };
    put("x-ratelimit-limit-daily", r.daily_limit.to_string());
    put("x-ratelimit-daily-remaining", r.daily_remaining.to_string());
    put("x-ratelimit-interval-milliseconds", r.interval_ms.to_string());
    put("x-ratelimit-max", r.max.to_string());
    put("x-ratelimit-remaining", r.remaining.to_string());
}

fn template_key(method: &str, template: &str) -> String {
    let colon = template.replace('{', ":").replace('}', "");
    format!("{method} {colon}")
}

// -------------------------------------------------------------------- the gate

/// Stats → faults → auth (401) → rate limit (429) → Version (400) → handler → headers.
async fn gate(AxState(ghl): AxState<FakeGhl>, mut req: Request, next: Next) -> Response {
    let template = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| req.uri().path().to_owned());
    let key = template_key(req.method().as_str(), &template);
    let token_route = key == "POST /oauth/token";
    let bearer = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(|v| v.trim().to_owned());
    let version = req.headers().get("version").and_then(|v| v.to_str().ok()).map(|v| v.trim().to_owned());
    let version_ok = match version.as_deref() {
        Some(API_VERSION) => true,
        Some(other) => !other.is_empty() && ghl.lock().opts.lenient_version,
        None => false,
    };

    let (fault, fault_key, auth) = {
        let mut s = ghl.lock();
        *s.stats.requests.entry(key.clone()).or_default() += 1;
        let fault_key = if s.faults.contains_key(&key) {
            Some(key.clone())
        } else if s.faults.contains_key("*") {
            Some("*".to_owned())
        } else {
            None
        };
        let fault = fault_key.as_ref().and_then(|k| s.faults.get(k).cloned());
        let auth = if token_route { None } else { bearer.as_deref().and_then(|t| s.resolve_token(t)) };
        (fault, fault_key, auth)
    };
    let bucket = auth.as_ref().map(|a| a.bucket.clone());

    if let Some(f) = &fault {
        if f.hang {
            // Hang until the fault is cleared (so tests and shutdown can release it),
            // at most ten minutes.
            let hang_key = fault_key.clone().unwrap_or_default();
            for _ in 0..12_000 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if !ghl.lock().faults.get(&hang_key).is_some_and(|f| f.hang) {
                    break;
                }
            }
        }
        if !f.latency.is_zero() {
            tokio::time::sleep(f.latency).await;
        }
    }

    // Faults that answer instead of the handler.
    let mut bare = false;
    let early: Option<ApiError> = {
        let mut s = ghl.lock();
        let mut early = None;
        if let Some(k) = &fault_key
            && let Some(f) = s.faults.get_mut(k)
            && let Some(n) = f.storm_429
            && n > 0
        {
            f.storm_429 = Some(n - 1);
            bare = f.bare_429;
            early = Some(ApiError::too_many());
        }
        if early.is_none()
            && let Some(f) = &fault
        {
            if f.error_rate > 0.0 && s.rng.f64() < f.error_rate {
                early = Some(ApiError::new(503, "Service Unavailable"));
            } else if let Some(status) = f.status
                && !f.status_after_write
            {
                early = Some(ApiError::new(status, reason_text(status)));
            }
        }
        early
    };
    if let Some(error) = early {
        let headers = ghl.lock().rate_peek(bucket.as_deref());
        let mut response = finish(&ghl, failure(&error), &headers);
        if bare {
            let names: Vec<_> = response
                .headers()
                .keys()
                .filter(|name| name.as_str().starts_with("x-ratelimit") || name.as_str() == "retry-after")
                .cloned()
                .collect();
            for name in names {
                response.headers_mut().remove(name);
            }
        }
        return response;
    }

    let headers = if token_route {
        ghl.lock().rate_peek(None)
    } else {
        let Some(auth) = auth else {
            let headers = ghl.lock().rate_peek(None);
            return finish(&ghl, failure(&ApiError::unauthorized()), &headers);
        };
        let (allowed, headers) = ghl.lock().rate_take(&auth.bucket);
        if !allowed {
            return finish(&ghl, failure(&ApiError::too_many()), &headers);
        }
        if !version_ok {
            let error = ApiError::new(400, "Version header was not found or is not supported");
            return finish(&ghl, failure(&error), &headers);
        }
        if let Some(scope) = schema::required_scope(&key).and_then(ScopeSet::one)
            && !auth.scopes.contains(scope)
        {
            let status = ghl.lock().opts.scope_denied_status;
            return finish(&ghl, failure(&ApiError::scope_denied(status)), &headers);
        }
        req.extensions_mut().insert(auth);
        headers
    };

    let mut response = next.run(req).await;
    if let Some(f) = &fault {
        if f.status_after_write {
            let status = f.status.unwrap_or(422);
            let error = if status == 422 {
                ApiError::unprocessable(vec!["Unprocessable Entity".to_owned()])
            } else {
                ApiError::new(status, reason_text(status))
            };
            response = failure(&error);
        }
        if f.malformed_json {
            let status = response.status();
            response = (status, "{\"contacts\":[{\"id\":\"trunc").into_response();
            response.headers_mut().insert("content-type", HeaderValue::from_static("application/json; charset=utf-8"));
        }
    }
    finish(&ghl, response, &headers)
}

fn reason_text(status: u16) -> String {
    StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("Error").to_owned()
}

fn finish(ghl: &FakeGhl, mut response: Response, headers: &RateHeaders) -> Response {
    add_rate_headers(response.headers_mut(), headers);
    let status = response.status().as_u16();
    let mut s = ghl.lock();
    *s.stats.statuses.entry(status).or_default() += 1;
    if status == 429 {
        s.stats.too_many_requests += 1;
        if s.opts.retry_after {
            let secs = s.opts.burst_window.as_secs().max(1);
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert("retry-after", v);
            }
        }
    }
    response
}

// -------------------------------------------------------------------- OAuth

async fn oauth_token(AxState(ghl): AxState<FakeGhl>, body: Bytes) -> Response {
    let form = parse_form(&body);
    ghl.answer(200, |s| Ok((s.oauth_token(&form)?, Vec::new())))
}

async fn location_token(AxState(ghl): AxState<FakeGhl>, Extension(auth): Extension<AuthCtx>, body: Bytes) -> Response {
    let form = parse_form(&body);
    ghl.answer(200, |s| Ok((s.location_token(&auth, &form)?, Vec::new())))
}

async fn installed_locations(
    AxState(ghl): AxState<FakeGhl>,
    Extension(auth): Extension<AuthCtx>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    ghl.answer(200, |s| {
        if auth.principal != Principal::Company {
            return Err(ApiError::new(401, "This route is not yet supported by the IAM Service"));
        }
        if q.get("companyId").map(String::as_str) != Some(s.company.as_str()) {
            return Err(ApiError::forbidden());
        }
        let skip = q.get("skip").and_then(|v| v.parse().ok()).unwrap_or(0usize);
        let limit = q.get("limit").and_then(|v| v.parse().ok()).unwrap_or(20usize);
        let locations: Vec<Value> = s
            .locs
            .iter()
            .skip(skip)
            .take(limit)
            .map(|l| {
                json!({"_id": l.id.as_str(), "name": l.name, "address": "1 Fixture St",
                       "isInstalled": true, "versionId": s.version_id.as_str(),
                       "installedAt": iso(super::model::SEED_BASE_MS)})
            })
            .collect();
        Ok((json!({"locations": locations, "count": s.locs.len(), "installToFutureLocations": false}), Vec::new()))
    })
}

// -------------------------------------------------------------------- contacts

async fn search(AxState(ghl): AxState<FakeGhl>, Extension(auth): Extension<AuthCtx>, body: Bytes) -> Response {
    let result = parse_body(&body).and_then(|body| ghl.lock().search_raw(&auth, &body));
    match result {
        Ok((items, total)) => {
            let mut out = String::with_capacity(items.iter().map(String::len).sum::<usize>() + 96);
            out.push_str("{\"contacts\":[");
            out.push_str(&items.join(","));
            out.push_str(&format!("],\"total\":{total},\"traceId\":\"{}\"}}", trace_id()));
            let mut response = (StatusCode::OK, out).into_response();
            response.headers_mut().insert("content-type", HeaderValue::from_static("application/json; charset=utf-8"));
            response
        }
        Err(error) => failure(&error),
    }
}

async fn get_contact(
    AxState(ghl): AxState<FakeGhl>,
    Extension(auth): Extension<AuthCtx>,
    Path(id): Path<String>,
) -> Response {
    ghl.answer(200, |s| {
        let c = s.contact_for(&auth, &id)?;
        Ok((json!({"contact": s.render(&c, Shape::Full)}), Vec::new()))
    })
}

async fn update_contact(
    AxState(ghl): AxState<FakeGhl>,
    Extension(auth): Extension<AuthCtx>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    ghl.answer(200, |s| {
        let body = parse_body(&body)?;
        let obj = body.as_object().ok_or_else(|| ApiError::new(400, "Body must be a JSON object"))?;
        let c = s.contact_for(&auth, &id)?;
        let (c, events) = s.update_contact(c.id, obj)?;
        Ok((json!({"succeded": true, "contact": s.render(&c, Shape::Full)}), events))
    })
}

async fn delete_contact(
    AxState(ghl): AxState<FakeGhl>,
    Extension(auth): Extension<AuthCtx>,
    Path(id): Path<String>,
) -> Response {
    ghl.answer(200, |s| {
        let c = s.contact_for(&auth, &id)?;
        Ok((json!({"succeded": true}), s.delete_contact(c.id)?))
    })
}

async fn create_contact(AxState(ghl): AxState<FakeGhl>, Extension(auth): Extension<AuthCtx>, body: Bytes) -> Response {
    ghl.answer(201, |s| {
        let body = parse_body(&body)?;
        let obj = body.as_object().ok_or_else(|| ApiError::new(400, "Body must be a JSON object"))?;
        let location = obj.get("locationId").and_then(Value::as_str).unwrap_or("");
        if location.is_empty() {
            return Err(ApiError::unprocessable(vec!["locationId should not be empty".to_owned()]));
        }
        let loc = s.check_loc(&auth, location)?;
        let (c, events) = s.create_contact(loc, obj)?;
        Ok((json!({"contact": s.render(&c, Shape::Created)}), events))
    })
}

async fn upsert_contact(AxState(ghl): AxState<FakeGhl>, Extension(auth): Extension<AuthCtx>, body: Bytes) -> Response {
    ghl.answer(200, |s| {
        let body = parse_body(&body)?;
        let mut obj = body.as_object().cloned().ok_or_else(|| ApiError::new(400, "Body must be a JSON object"))?;
        let location = obj.get("locationId").and_then(Value::as_str).unwrap_or("").to_owned();
        if location.is_empty() {
            return Err(ApiError::unprocessable(vec!["locationId should not be empty".to_owned()]));
        }
        let loc = s.check_loc(&auth, &location)?;
        obj.remove("createNewIfDuplicateAllowed");
        let email = obj.get("email").and_then(Value::as_str).map(str::to_lowercase);
        let phone = obj.get("phone").and_then(Value::as_str).map(str::to_owned);
        // Linear scan: upsert is rare in tests.
        let mut existing: Vec<(i64, Cid)> = s
            .contacts
            .values()
            .filter(|c| c.loc == loc)
            .filter(|c| {
                let f = s.fields_of(c);
                email.as_ref().is_some_and(|e| f.email.as_deref().map(str::to_lowercase).as_ref() == Some(e))
                    || phone.as_ref().is_some_and(|p| f.phone.as_ref() == Some(p))
            })
            .map(|c| (c.added, c.id))
            .collect();
        existing.sort();
        match existing.first() {
            Some(&(_, id)) => {
                // Upsert ignores gender/companyName/locationId on existing contacts (#313).
                obj.remove("locationId");
                obj.remove("gender");
                obj.remove("companyName");
                let (c, events) = s.update_contact(id, &obj)?;
                Ok((json!({"new": false, "contact": s.render(&c, Shape::Full)}), events))
            }
            None => {
                let (c, events) = s.create_contact(loc, &obj)?;
                Ok((json!({"new": true, "contact": s.render(&c, Shape::Full)}), events))
            }
        }
    })
}

/// `GET /contacts/search/duplicate?locationId&email&number`: the oldest live contact of the
/// location with that email (case-insensitive; first priority), else that phone number
/// (compared by digits), as `{contact}` in the `GET /contacts/:id` shape, or `{contact: null}`.
async fn duplicate_contact(
    AxState(ghl): AxState<FakeGhl>,
    Extension(auth): Extension<AuthCtx>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    ghl.answer(200, |s| {
        let location = q.get("locationId").map(String::as_str).unwrap_or("");
        if location.is_empty() {
            return Err(ApiError::unprocessable(vec!["locationId should not be empty".to_owned()]));
        }
        let loc = s.check_loc(&auth, location)?;
        let email = q.get("email").map(|e| e.trim().to_lowercase()).filter(|e| !e.is_empty());
        let digits = |p: &str| p.chars().filter(char::is_ascii_digit).collect::<String>();
        let number = q.get("number").map(|n| digits(n)).filter(|n| !n.is_empty());
        let oldest = |matches: &dyn Fn(&super::model::Fields) -> bool| {
            s.contacts
                .values()
                .filter(|c| c.loc == loc && matches(&s.fields_of(c)))
                .min_by_key(|c| (c.added, c.id))
                .cloned()
        };
        let by_email = email.as_ref().and_then(|e| {
            oldest(&|f: &super::model::Fields| f.email.as_deref().is_some_and(|have| have.to_lowercase() == *e))
        });
        let found = by_email.or_else(|| {
            number.as_ref().and_then(|n| {
                oldest(&|f: &super::model::Fields| f.phone.as_deref().is_some_and(|have| digits(have) == *n))
            })
        });
        let contact = found.map_or(Value::Null, |c| s.render(&c, Shape::Full));
        Ok((json!({"contact": contact}), Vec::new()))
    })
}

async fn list_contacts(
    AxState(ghl): AxState<FakeGhl>,
    Extension(auth): Extension<AuthCtx>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    ghl.answer(200, |s| {
        let location = q.get("locationId").map(String::as_str).unwrap_or("");
        if location.is_empty() {
            return Err(ApiError::unprocessable(vec!["locationId should not be empty".to_owned()]));
        }
        let limit = match q.get("limit") {
            None => 20,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=100).contains(&n) => n,
                _ => {
                    return Err(ApiError::unprocessable(vec!["limit must not be greater than 100".to_owned()]));
                }
            },
        };
        let loc = s.check_loc(&auth, location)?;
        let start_after = match (q.get("startAfter"), q.get("startAfterId")) {
            (Some(ms), Some(id)) => ms.parse::<i64>().ok().zip(Cid::parse(id)),
            (Some(ms), None) => ms.parse::<i64>().ok().map(|ms| (ms, Cid::MIN)),
            _ => None,
        };
        Ok((s.list_contacts(loc, limit, start_after, q.get("query").map(String::as_str)), Vec::new()))
    })
}

async fn business_contacts(
    AxState(ghl): AxState<FakeGhl>,
    Extension(auth): Extension<AuthCtx>,
    Path(business): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    ghl.answer(200, |s| {
        let location = q.get("locationId").map(String::as_str).unwrap_or("");
        if location.is_empty() {
            return Err(ApiError::unprocessable(vec!["locationId should not be empty".to_owned()]));
        }
        let loc = s.check_loc(&auth, location)?;
        Ok((s.business_contacts(loc, &business, &q)?, Vec::new()))
    })
}

async fn bulk_business(AxState(ghl): AxState<FakeGhl>, Extension(auth): Extension<AuthCtx>, body: Bytes) -> Response {
    ghl.answer(200, |s| {
        let body = parse_body(&body)?;
        let obj = body.as_object().ok_or_else(|| ApiError::new(400, "Body must be a JSON object"))?;
        let location = obj.get("locationId").and_then(Value::as_str).unwrap_or("");
        if location.is_empty() {
            return Err(ApiError::unprocessable(vec!["locationId should not be empty".to_owned()]));
        }
        let loc = s.check_loc(&auth, location)?;
        s.bulk_business(loc, obj)
    })
}

async fn bulk_tags(
    AxState(ghl): AxState<FakeGhl>,
    Extension(auth): Extension<AuthCtx>,
    Path(kind): Path<String>,
    body: Bytes,
) -> Response {
    ghl.answer(201, |s| {
        let body = parse_body(&body)?;
        let obj = body.as_object().ok_or_else(|| ApiError::new(400, "Body must be a JSON object"))?;
        let location = obj.get("locationId").and_then(Value::as_str).unwrap_or("");
        if location.is_empty() {
            return Err(ApiError::unprocessable(vec!["locationId should not be empty".to_owned()]));
        }
        let loc = s.check_loc(&auth, location)?;
        s.bulk_tags(loc, &kind, obj)
    })
}

async fn add_tags(
    AxState(ghl): AxState<FakeGhl>,
    Extension(auth): Extension<AuthCtx>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    ghl.answer(201, |s| {
        let c = s.contact_for(&auth, &id)?;
        s.change_tags(c.id, &parse_body(&body)?, true)
    })
}

async fn remove_tags(
    AxState(ghl): AxState<FakeGhl>,
    Extension(auth): Extension<AuthCtx>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    ghl.answer(200, |s| {
        let c = s.contact_for(&auth, &id)?;
        s.change_tags(c.id, &parse_body(&body)?, false)
    })
}

async fn appointments(
    AxState(ghl): AxState<FakeGhl>,
    Extension(auth): Extension<AuthCtx>,
    Path(id): Path<String>,
) -> Response {
    ghl.answer(200, |s| {
        let c = s.contact_for(&auth, &id)?;
        Ok((json!({"events": s.render_appointments(c.id)}), Vec::new()))
    })
}

// -------------------------------------------------------------------- tasks

async fn list_tasks(
    AxState(ghl): AxState<FakeGhl>,
    Extension(auth): Extension<AuthCtx>,
    Path(id): Path<String>,
) -> Response {
    ghl.answer(200, |s| {
        let c = s.contact_for(&auth, &id)?;
        let tasks: Vec<Value> = s.tasks_of(c.id).iter().map(|t| t.render()).collect();
        Ok((json!({"tasks": tasks}), Vec::new()))
    })
}

fn task_of(s: &State, auth: &AuthCtx, contact: &str, task: &str) -> Result<Cid, ApiError> {
    let c = s.contact_for(auth, contact)?;
    let id = Cid::parse(task).ok_or_else(|| ApiError::not_found("Task"))?;
    match s.tasks.get(&id) {
        Some(t) if t.contact == c.id => Ok(id),
        _ => Err(ApiError::not_found("Task")),
    }
}

async fn get_task(
    AxState(ghl): AxState<FakeGhl>,
    Extension(auth): Extension<AuthCtx>,
    Path((contact, task)): Path<(String, String)>,
) -> Response {
    ghl.answer(200, |s| {
        let id = task_of(s, &auth, &contact, &task)?;
        let task = s.tasks.get(&id).map(|t| t.render()).unwrap_or(Value::Null);
        Ok((json!({"task": task}), Vec::new()))
    })
}

async fn create_task(
    AxState(ghl): AxState<FakeGhl>,
    Extension(auth): Extension<AuthCtx>,
    Path(contact): Path<String>,
    body: Bytes,
) -> Response {
    ghl.answer(201, |s| {
        let c = s.contact_for(&auth, &contact)?;
        let body = parse_body(&body)?;
        let obj = body.as_object().cloned().unwrap_or_default();
        let (t, events) = s.create_task(c.id, &obj)?;
        Ok((json!({"task": t.render()}), events))
    })
}

async fn update_task(
    AxState(ghl): AxState<FakeGhl>,
    Extension(auth): Extension<AuthCtx>,
    Path((contact, task)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    ghl.answer(200, |s| {
        let id = task_of(s, &auth, &contact, &task)?;
        let body = parse_body(&body)?;
        let obj = body.as_object().cloned().unwrap_or_default();
        let (t, events) = s.update_task(id, &obj, false)?;
        Ok((json!({"task": t.render()}), events))
    })
}

async fn complete_task(
    AxState(ghl): AxState<FakeGhl>,
    Extension(auth): Extension<AuthCtx>,
    Path((contact, task)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    ghl.answer(200, |s| {
        let id = task_of(s, &auth, &contact, &task)?;
        let body = parse_body(&body)?;
        let obj = body.as_object().cloned().unwrap_or_default();
        let (t, events) = s.update_task(id, &obj, true)?;
        Ok((json!({"task": t.render()}), events))
    })
}

async fn delete_task(
    AxState(ghl): AxState<FakeGhl>,
    Extension(auth): Extension<AuthCtx>,
    Path((contact, task)): Path<(String, String)>,
) -> Response {
    ghl.answer(200, |s| {
        let id = task_of(s, &auth, &contact, &task)?;
        Ok((json!({"succeded": true}), s.delete_task(id)?))
    })
}

async fn task_search(
    AxState(ghl): AxState<FakeGhl>,
    Extension(auth): Extension<AuthCtx>,
    Path(location): Path<String>,
    body: Bytes,
) -> Response {
    ghl.answer(200, |s| {
        let loc = s.check_loc(&auth, &location)?;
        Ok((s.task_search(loc, &parse_body(&body)?)?, Vec::new()))
    })
}

// -------------------------------------------------------------------- notes

async fn list_notes(
    AxState(ghl): AxState<FakeGhl>,
    Extension(auth): Extension<AuthCtx>,
    Path(id): Path<String>,
) -> Response {
    ghl.answer(200, |s| {
        let c = s.contact_for(&auth, &id)?;
        let notes: Vec<Value> = s.notes_of(c.id).iter().map(|n| n.render()).collect();
        Ok((json!({"notes": notes}), Vec::new()))
    })
}

fn note_of(s: &State, auth: &AuthCtx, contact: &str, note: &str) -> Result<Cid, ApiError> {
    let c = s.contact_for(auth, contact)?;
    let id = Cid::parse(note).ok_or_else(|| ApiError::not_found("Note"))?;
    match s.notes.get(&id) {
        Some(n) if n.contact == c.id => Ok(id),
        _ => Err(ApiError::not_found("Note")),
    }
}

async fn get_note(
    AxState(ghl): AxState<FakeGhl>,
    Extension(auth): Extension<AuthCtx>,
    Path((contact, note)): Path<(String, String)>,
) -> Response {
    ghl.answer(200, |s| {
        let id = note_of(s, &auth, &contact, &note)?;
        let note = s.notes.get(&id).map(|n| n.render()).unwrap_or(Value::Null);
        Ok((json!({"note": note}), Vec::new()))
    })
}

async fn create_note(
    AxState(ghl): AxState<FakeGhl>,
    Extension(auth): Extension<AuthCtx>,
    Path(contact): Path<String>,
    body: Bytes,
) -> Response {
    ghl.answer(201, |s| {
        let c = s.contact_for(&auth, &contact)?;
        let body = parse_body(&body)?;
        let obj = body.as_object().cloned().unwrap_or_default();
        let (n, events) = s.create_note(c.id, &obj)?;
        Ok((json!({"note": n.render()}), events))
    })
}

async fn update_note(
    AxState(ghl): AxState<FakeGhl>,
    Extension(auth): Extension<AuthCtx>,
    Path((contact, note)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    ghl.answer(200, |s| {
        let id = note_of(s, &auth, &contact, &note)?;
        let body = parse_body(&body)?;
        let obj = body.as_object().cloned().unwrap_or_default();
        let (n, events) = s.update_note(id, &obj)?;
        Ok((json!({"note": n.render()}), events))
    })
}

async fn delete_note(
    AxState(ghl): AxState<FakeGhl>,
    Extension(auth): Extension<AuthCtx>,
    Path((contact, note)): Path<(String, String)>,
) -> Response {
    ghl.answer(200, |s| {
        let id = note_of(s, &auth, &contact, &note)?;
        Ok((json!({"succeded": true}), s.delete_note(id)?))
    })
}

// -------------------------------------------------------------------- locations

async fn get_location(
    AxState(ghl): AxState<FakeGhl>,
    Extension(auth): Extension<AuthCtx>,
    Path(location): Path<String>,
) -> Response {
    ghl.answer(200, |s| {
        let loc = s.check_loc(&auth, &location)?;
        let l = &s.locs[usize::from(loc)];
        Ok((
            json!({"location": {
                "id": l.id.as_str(), "name": l.name, "companyId": s.company.as_str(),
                "address": "1 Fixture St", "city": "Testville", "state": "CA", "country": "US",
                "postalCode": "00000", "website": "https://location.example.test",
                "timezone": "America/Los_Angeles", "email": "location@example.test",
                "phone": "+15550000000",
            }}),
            Vec::new(),
        ))
    })
}

async fn custom_fields(
    AxState(ghl): AxState<FakeGhl>,
    Extension(auth): Extension<AuthCtx>,
    Path(location): Path<String>,
) -> Response {
    ghl.answer(200, |s| {
        let loc = s.check_loc(&auth, &location)?;
        let l = &s.locs[usize::from(loc)];
        let fields: Vec<Value> = l
            .custom_fields
            .iter()
            .enumerate()
            .map(|(i, (id, name, key, kind))| {
                json!({"id": &**id, "name": &**name, "fieldKey": &**key, "dataType": kind,
                       "placeholder": "", "position": i * 50, "picklistOptions": [],
                       "model": "contact", "locationId": l.id.as_str(), "documentType": "field",
                       "parentId": null, "isAllowedCustomOption": false, "standard": false})
            })
            .collect();
        Ok((json!({"customFields": fields}), Vec::new()))
    })
}

// -------------------------------------------------------------------- admin

fn admin_json(body: &Value) -> Response {
    json_response(200, body)
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct SeedBody {
    seed: Option<u64>,
    locations: Option<usize>,
    #[serde(alias = "contacts_per_location")]
    contacts_per_location: Option<usize>,
    #[serde(alias = "max_tasks_per_contact")]
    max_tasks_per_contact: Option<usize>,
    #[serde(alias = "max_notes_per_contact")]
    max_notes_per_contact: Option<usize>,
}

async fn admin_seed(AxState(ghl): AxState<FakeGhl>, body: Bytes) -> Response {
    let body: SeedBody = serde_json::from_slice(&body).unwrap_or_default();
    let mut opts: GhlOptions = ghl.options();
    if let Some(seed) = body.seed {
        opts.seed = seed;
    }
    if let Some(n) = body.locations {
        opts.locations = n;
    }
    if let Some(n) = body.contacts_per_location {
        opts.contacts_per_location = n;
    }
    if let Some(n) = body.max_tasks_per_contact {
        opts.max_tasks_per_contact = n;
    }
    if let Some(n) = body.max_notes_per_contact {
        opts.max_notes_per_contact = n;
    }
    ghl.reseed(opts);
    admin_json(&credentials(&ghl))
}

async fn admin_mutate(AxState(ghl): AxState<FakeGhl>, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(json!({}));
    let location = body.get("locationId").and_then(Value::as_str);
    let count = body.get("count").and_then(Value::as_u64).unwrap_or(1) as usize;
    let mutations = match body.get("kinds") {
        None | Some(Value::Null) => ghl.mutate(location, count),
        Some(kinds) => match serde_json::from_value::<Vec<MutationKind>>(kinds.clone()) {
            Ok(kinds) => ghl.mutate_kinds(location, count, &kinds),
            Err(e) => return json_response(400, &json!({"error": e.to_string()})),
        },
    };
    admin_json(&json!({"mutations": mutations}))
}

fn scope_list(body: &Value) -> Vec<String> {
    match body.get("scopes") {
        Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        _ => schema::KNOWN_SCOPES.iter().map(|s| (*s).to_owned()).collect(),
    }
}

async fn admin_pit(AxState(ghl): AxState<FakeGhl>, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(json!({}));
    let location = body.get("locationId").and_then(Value::as_str).unwrap_or("");
    let scopes = scope_list(&body);
    match ghl.create_pit(location, &scopes) {
        Some(pit) => admin_json(&json!({"pit": pit, "scopes": ScopeSet::parse(&scopes).to_scope_string()})),
        None => json_response(404, &json!({"error": "unknown locationId"})),
    }
}

async fn admin_code(AxState(ghl): AxState<FakeGhl>, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(json!({}));
    let location = body.get("locationId").and_then(Value::as_str);
    let scopes = scope_list(&body);
    let code = ghl.authorization_code_with_scopes(location, &scopes);
    admin_json(&json!({"code": code, "scopes": ScopeSet::parse(&scopes).to_scope_string()}))
}

/// Runs an admin write and answers `{ok}` or 404/422 with the GHL error body.
fn admin_write(ghl: &FakeGhl, f: impl FnOnce(&mut State) -> Result<Written, ApiError>) -> Response {
    let result = f(&mut ghl.lock());
    match result {
        Ok((body, events)) => {
            ghl.dispatch(events, WebhookMode::Normal);
            admin_json(&body)
        }
        Err(error) => failure(&error),
    }
}

fn appointment_id(id: &str) -> Result<Cid, ApiError> {
    Cid::parse(id).ok_or_else(|| ApiError::not_found("Appointment"))
}

async fn admin_create_appointment(AxState(ghl): AxState<FakeGhl>, body: Bytes) -> Response {
    admin_write(&ghl, |s| {
        let mut obj = parse_body(&body)?.as_object().cloned().unwrap_or_default();
        let contact = obj.remove("contactId").and_then(|v| v.as_str().and_then(Cid::parse));
        let contact = contact.ok_or_else(ApiError::contact_not_found)?;
        let (a, events) = s.create_appointment(contact, &obj)?;
        Ok((json!({"appointment": a.render(s.loc_id(a.loc))}), events))
    })
}

async fn admin_update_appointment(AxState(ghl): AxState<FakeGhl>, Path(id): Path<String>, body: Bytes) -> Response {
    admin_write(&ghl, |s| {
        let obj = parse_body(&body)?.as_object().cloned().unwrap_or_default();
        let (a, events) = s.update_appointment(appointment_id(&id)?, &obj)?;
        Ok((json!({"appointment": a.render(s.loc_id(a.loc))}), events))
    })
}

async fn admin_cancel_appointment(AxState(ghl): AxState<FakeGhl>, Path(id): Path<String>) -> Response {
    admin_write(&ghl, |s| {
        let (a, events) = s.cancel_appointment(appointment_id(&id)?)?;
        Ok((json!({"appointment": a.render(s.loc_id(a.loc))}), events))
    })
}

async fn admin_delete_appointment(AxState(ghl): AxState<FakeGhl>, Path(id): Path<String>) -> Response {
    admin_write(&ghl, |s| Ok((json!({"ok": true}), s.delete_appointment(appointment_id(&id)?)?)))
}

/// `{contactId, businessId | null}`: link or unlink one contact.
async fn admin_business(AxState(ghl): AxState<FakeGhl>, body: Bytes) -> Response {
    admin_write(&ghl, |s| {
        let body = parse_body(&body)?;
        let contact = body.get("contactId").and_then(Value::as_str).and_then(Cid::parse);
        let contact = contact.ok_or_else(ApiError::contact_not_found)?;
        let business = body.get("businessId").and_then(Value::as_str);
        let (c, events) = s.set_business(contact, business)?;
        Ok((json!({"contact": s.render(&c, Shape::Full)}), events))
    })
}

async fn admin_state(AxState(ghl): AxState<FakeGhl>, Query(q): Query<HashMap<String, String>>) -> Response {
    let limit = q.get("limit").and_then(|v| v.parse().ok()).unwrap_or(usize::MAX);
    let dump = {
        let mut s = ghl.lock();
        s.catch_up();
        s.dump(limit)
    };
    admin_json(&dump)
}

async fn admin_stats(AxState(ghl): AxState<FakeGhl>) -> Response {
    admin_json(&serde_json::to_value(ghl.stats()).unwrap_or(Value::Null))
}

async fn admin_stats_reset(AxState(ghl): AxState<FakeGhl>) -> Response {
    ghl.reset_stats();
    admin_json(&json!({"ok": true}))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct FaultBody {
    route: Option<String>,
    #[serde(alias = "error_rate")]
    error_rate: f64,
    #[serde(alias = "latency_ms")]
    latency_ms: u64,
    hang: bool,
    #[serde(alias = "malformed_json")]
    malformed_json: bool,
    status: Option<u16>,
    #[serde(alias = "storm_429", alias = "storm429")]
    storm_429: Option<u32>,
    #[serde(alias = "bare_429")]
    bare_429: bool,
    #[serde(alias = "status_after_write")]
    status_after_write: bool,
}

async fn admin_set_fault(AxState(ghl): AxState<FakeGhl>, body: Bytes) -> Response {
    let body: FaultBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return json_response(400, &json!({"error": e.to_string()})),
    };
    let route = body.route.unwrap_or_else(|| "*".to_owned());
    ghl.set_fault(
        &route,
        Fault {
            error_rate: body.error_rate,
            latency: Duration::from_millis(body.latency_ms),
            hang: body.hang,
            malformed_json: body.malformed_json,
            status: body.status,
            storm_429: body.storm_429,
            bare_429: body.bare_429,
            status_after_write: body.status_after_write,
        },
    );
    admin_json(&json!({"ok": true, "route": route}))
}

async fn admin_clear_faults(AxState(ghl): AxState<FakeGhl>) -> Response {
    ghl.clear_faults();
    admin_json(&json!({"ok": true}))
}

fn credentials(ghl: &FakeGhl) -> Value {
    let (client_id, client_secret) = ghl.oauth_client();
    json!({
        "companyId": ghl.company_id(),
        "locations": ghl.locations(),
        "oauth": {
            "clientId": client_id,
            "clientSecret": client_secret,
            "authorizationCode": ghl.authorization_code(None),
            "locationAuthorizationCodes": ghl.locations().iter()
                .map(|l| (l.id.clone(), json!(ghl.authorization_code(Some(&l.id)))))
                .collect::<serde_json::Map<String, Value>>(),
        },
        "webhookPublicKey": ghl.webhook_public_key(),
        "apiVersion": API_VERSION,
    })
}

async fn admin_credentials(AxState(ghl): AxState<FakeGhl>) -> Response {
    admin_json(&credentials(&ghl))
}

async fn admin_webhooks(AxState(ghl): AxState<FakeGhl>) -> Response {
    admin_json(&json!({"webhooks": ghl.sent_webhooks()}))
}

async fn admin_emit(AxState(ghl): AxState<FakeGhl>, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(json!({}));
    let mode: WebhookMode = body.get("mode").cloned().and_then(|m| serde_json::from_value(m).ok()).unwrap_or_default();
    let event = body.get("event").cloned().unwrap_or(json!({}));
    ghl.emit_webhook(event, mode);
    admin_json(&json!({"ok": true}))
}

async fn admin_webhook_url(AxState(ghl): AxState<FakeGhl>, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(json!({}));
    let url = body.get("url").and_then(Value::as_str).and_then(|u| url::Url::parse(u).ok());
    ghl.set_webhook_url(url);
    admin_json(&json!({"ok": true}))
}

async fn admin_clock(AxState(ghl): AxState<FakeGhl>, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(json!({}));
    let ms = body.get("ms").and_then(Value::as_u64).unwrap_or(0);
    ghl.advance_clock(Duration::from_millis(ms));
    admin_json(&json!({"ok": true}))
}

async fn admin_daily_exhausted(AxState(ghl): AxState<FakeGhl>, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(json!({}));
    let location = body.get("locationId").and_then(Value::as_str).unwrap_or("");
    let exhausted = body.get("exhausted").and_then(Value::as_bool).unwrap_or(true);
    ghl.set_daily_exhausted(location, exhausted);
    admin_json(&json!({"ok": true}))
}
