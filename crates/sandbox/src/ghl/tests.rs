//! End-to-end tests of the fake GHL over real HTTP on 127.0.0.1.

use std::collections::HashSet;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use serde_json::{Value, json};

use super::*;
use crate::{Sandbox, SandboxOptions};

pub(super) struct Env {
    pub(super) sandbox: Sandbox,
    pub(super) http: reqwest::Client,
    pub(super) base: String,
}

impl Env {
    pub(super) async fn start(ghl: GhlOptions) -> anyhow::Result<Self> {
        let sandbox = Sandbox::start(SandboxOptions { ghl, ..Default::default() }, "127.0.0.1:0".parse()?).await?;
        let base = sandbox.ghl_url().to_string().trim_end_matches('/').to_owned();
        let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
        Ok(Self { sandbox, http, base })
    }

    pub(super) fn ghl(&self) -> &FakeGhl {
        &self.sandbox.ghl
    }

    pub(super) fn loc(&self, i: usize) -> LocationInfo {
        self.ghl().locations()[i].clone()
    }

    pub(super) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request with Version and bearer.
    pub(super) fn req(&self, method: reqwest::Method, path: &str, token: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path)).header("Version", "2021-07-28").bearer_auth(token)
    }

    pub(super) async fn send(&self, rb: reqwest::RequestBuilder) -> anyhow::Result<(u16, Value)> {
        let response = rb.send().await?;
        let status = response.status().as_u16();
        let body = response.json::<Value>().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    pub(super) async fn search(&self, token: &str, body: Value) -> anyhow::Result<(u16, Value)> {
        self.send(self.req(reqwest::Method::POST, "/contacts/search", token).json(&body)).await
    }

    pub(super) async fn token(&self, form: &[(&str, &str)]) -> anyhow::Result<(u16, Value)> {
        self.send(self.http.post(self.url("/oauth/token")).form(form)).await
    }
}

pub(super) fn small() -> GhlOptions {
    GhlOptions { contacts_per_location: 20, ..GhlOptions::default() }
}

#[tokio::test]
async fn auth_version_and_location_scoping() -> anyhow::Result<()> {
    let env = Env::start(small()).await?;
    let (a, b) = (env.loc(0), env.loc(1));
    let contact = env.ghl().contact_ids(&a.id)[0].clone();
    let path = format!("/contacts/{contact}");

    // Missing Version → 400 with the GHL body.
    let response = env.http.get(env.url(&path)).bearer_auth(&a.pit).send().await?;
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = response.json().await?;
    assert_eq!(body["statusCode"], 400);
    assert_eq!(body["error"], "Bad Request");

    // Bad token → 401, rate-limit headers still present.
    let response = env.req(reqwest::Method::GET, &path, "pit-nope").send().await?;
    assert_eq!(response.status().as_u16(), 401);
    assert!(response.headers().contains_key("x-ratelimit-remaining"));
    let body: Value = response.json().await?;
    assert_eq!(
        body,
        json!({"statusCode":401,"message":"Invalid token: access token is invalid","error":"Unauthorized"})
    );

    // Good token → contact with traceId; other location's PIT → 403.
    let (status, body) = env.send(env.req(reqwest::Method::GET, &path, &a.pit)).await?;
    assert_eq!(status, 200);
    assert_eq!(body["contact"]["id"], contact.as_str());
    assert_eq!(body["contact"]["locationId"], a.id.as_str());
    assert!(body["traceId"].is_string());
    let (status, _) = env.send(env.req(reqwest::Method::GET, &path, &b.pit)).await?;
    assert_eq!(status, 403);
    let (status, _) = env.search(&b.pit, json!({"locationId": a.id, "pageLimit": 10})).await?;
    assert_eq!(status, 403);

    // Missing contact → 404 body.
    let (status, body) = env.send(env.req(reqwest::Method::GET, "/contacts/AAAAAAAAAAAAAAAAAAAA", &a.pit)).await?;
    assert_eq!(status, 404);
    assert_eq!(body, json!({"statusCode":404,"message":"Contact not found"}));
    let stats = env.ghl().stats();
    assert!(stats.requests["GET /contacts/:contactId"] >= 5);
    env.sandbox.stop().await;
    Ok(())
}

#[tokio::test]
async fn access_token_expires() -> anyhow::Result<()> {
    let env = Env::start(GhlOptions { access_token_ttl: Duration::from_secs(1), ..small() }).await?;
    let a = env.loc(0);
    let (id, secret) = env.ghl().oauth_client();
    let code = env.ghl().authorization_code(Some(&a.id));
    let form = [
        ("client_id", id.as_str()),
        ("client_secret", secret.as_str()),
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("user_type", "Location"),
    ];
    let (status, token) = env.token(&form).await?;
    assert_eq!(status, 200, "{token}");
    assert_eq!(token["token_type"], "Bearer");
    assert_eq!(token["userType"], "Location");
    assert_eq!(token["locationId"], a.id.as_str());
    assert_eq!(token["companyId"], env.ghl().company_id().as_str());
    assert!(token["expires_in"].as_u64().is_some_and(|s| s <= 1));
    // Codes are single use.
    let (status, body) = env.token(&form).await?;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_grant");

    let access = token["access_token"].as_str().unwrap_or_default().to_owned();
    let search = json!({"locationId": a.id, "pageLimit": 1});
    assert_eq!(env.search(&access, search.clone()).await?.0, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(env.search(&access, search).await?.0, 401);
    env.sandbox.stop().await;
    Ok(())
}

#[tokio::test]
async fn refresh_tokens_rotate_single_use_with_grace() -> anyhow::Result<()> {
    let env = Env::start(GhlOptions { refresh_grace: Duration::from_millis(300), ..small() }).await?;
    let a = env.loc(0);
    let (id, secret) = env.ghl().oauth_client();
    let code = env.ghl().authorization_code(Some(&a.id));
    let (_, first) = env
        .token(&[("client_id", &id), ("client_secret", &secret), ("grant_type", "authorization_code"), ("code", &code)])
        .await?;
    let r1 = first["refresh_token"].as_str().unwrap_or_default().to_owned();
    let refresh = |r: String| {
        let (id, secret) = (id.clone(), secret.clone());
        let env = &env;
        async move {
            env.token(&[
                ("client_id", id.as_str()),
                ("client_secret", secret.as_str()),
                ("grant_type", "refresh_token"),
                ("refresh_token", r.as_str()),
                ("user_type", "Location"),
            ])
            .await
        }
    };
    let (status, second) = refresh(r1.clone()).await?;
    assert_eq!(status, 200);
    let a2 = second["access_token"].as_str().unwrap_or_default().to_owned();
    let r2 = second["refresh_token"].as_str().unwrap_or_default().to_owned();
    assert_ne!(r2, r1);
    assert_ne!(a2, first["access_token"].as_str().unwrap_or_default());

    // Same old token within grace → the same new pair.
    let (status, again) = refresh(r1.clone()).await?;
    assert_eq!(status, 200);
    assert_eq!(again["access_token"], a2.as_str());
    assert_eq!(again["refresh_token"], r2.as_str());

    // After grace → invalid_grant, and the whole grant is dead.
    env.ghl().advance_clock(Duration::from_millis(400));
    let (status, body) = refresh(r1.clone()).await?;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_grant");
    let (status, body) = refresh(r2.clone()).await?;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_grant");
    let (status, _) = env.search(&a2, json!({"locationId": a.id, "pageLimit": 1})).await?;
    assert_eq!(status, 401);

    let stats = env.ghl().stats();
    assert_eq!(stats.refresh_grants, 4);
    assert_eq!(stats.invalid_grants, 2);
    env.sandbox.stop().await;
    Ok(())
}

#[tokio::test]
async fn refresh_token_reuses_are_counted_inside_and_after_the_grace() -> anyhow::Result<()> {
    let env = Env::start(GhlOptions { refresh_grace: Duration::from_millis(300), ..small() }).await?;
    let a = env.loc(0);
    let (id, secret) = env.ghl().oauth_client();
    let code = env.ghl().authorization_code(Some(&a.id));
    let (_, first) = env
        .token(&[("client_id", &id), ("client_secret", &secret), ("grant_type", "authorization_code"), ("code", &code)])
        .await?;
    let refresh = |r: String| {
        let (id, secret) = (id.clone(), secret.clone());
        let env = &env;
        async move {
            env.token(&[
                ("client_id", id.as_str()),
                ("client_secret", secret.as_str()),
                ("grant_type", "refresh_token"),
                ("refresh_token", r.as_str()),
            ])
            .await
        }
    };
    let r1 = first["refresh_token"].as_str().unwrap_or_default().to_owned();
    // A first spend is no reuse; an unknown token is no reuse either.
    let (_, second) = refresh(r1.clone()).await?;
    let r2 = second["refresh_token"].as_str().unwrap_or_default().to_owned();
    assert_eq!(refresh("rt-unknown".to_owned()).await?.0, 400);
    let stats = env.ghl().stats();
    assert_eq!((stats.refresh_reuses, stats.refresh_reuse_kills), (0, 0));
    // Twice inside the grace: two reuses, same pair.
    assert_eq!(refresh(r1.clone()).await?.1["refresh_token"], r2.as_str());
    assert_eq!(refresh(r1.clone()).await?.0, 200);
    let stats = env.ghl().stats();
    assert_eq!((stats.refresh_reuses, stats.refresh_reuse_kills), (2, 0));
    // After the grace: the reuse kills the grant, and is counted as such.
    env.ghl().advance_clock(Duration::from_millis(400));
    assert_eq!(refresh(r1.clone()).await?.0, 400);
    // The rotated token of a dead grant is refused as revoked, not counted as a reuse.
    assert_eq!(refresh(r2.clone()).await?.0, 400);
    let stats = env.ghl().stats();
    assert_eq!((stats.refresh_reuses, stats.refresh_reuse_kills), (2, 1));
    assert_eq!(stats.refresh_grants, 6);
    // The admin API shows them in camelCase.
    let json: Value = env.http.get(env.url("/__admin/ghl/stats")).send().await?.json().await?;
    assert_eq!((json["refreshReuses"].as_u64(), json["refreshReuseKills"].as_u64()), (Some(2), Some(1)));
    env.ghl().reset_stats();
    assert_eq!(env.ghl().stats().refresh_reuses, 0);
    env.sandbox.stop().await;
    Ok(())
}

#[tokio::test]
async fn agency_token_mints_location_tokens() -> anyhow::Result<()> {
    let env = Env::start(small()).await?;
    let a = env.loc(0);
    let (id, secret) = env.ghl().oauth_client();
    let code = env.ghl().authorization_code(None);
    let (status, company) = env
        .token(&[
            ("client_id", &id),
            ("client_secret", &secret),
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("user_type", "Company"),
        ])
        .await?;
    assert_eq!(status, 200);
    assert_eq!(company["userType"], "Company");
    let agency = company["access_token"].as_str().unwrap_or_default();
    // Company tokens cannot read location data directly.
    let (status, _) = env.search(agency, json!({"locationId": a.id, "pageLimit": 1})).await?;
    assert_eq!(status, 403);
    let response = env
        .req(reqwest::Method::POST, "/oauth/locationToken", agency)
        .form(&[("companyId", env.ghl().company_id().as_str()), ("locationId", a.id.as_str())])
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await?;
    assert!(body["refresh_token"].is_string());
    let location = body["access_token"].as_str().unwrap_or_default();
    let (status, _) = env.search(location, json!({"locationId": a.id, "pageLimit": 1})).await?;
    assert_eq!(status, 200);
    env.sandbox.stop().await;
    Ok(())
}

#[tokio::test]
async fn search_pages_every_contact_once_in_order() -> anyhow::Result<()> {
    let env = Env::start(GhlOptions {
        locations: 1,
        contacts_per_location: 1234,
        max_tasks_per_contact: 0,
        max_notes_per_contact: 0,
        ..GhlOptions::default()
    })
    .await?;
    let a = env.loc(0);
    let mut seen = Vec::new();
    let mut after: Option<Value> = None;
    loop {
        let mut body = json!({
            "locationId": a.id, "pageLimit": 100,
            "sort": [{"field": "dateUpdated", "direction": "asc"}],
        });
        if let Some(sa) = &after {
            body["searchAfter"] = sa.clone();
        }
        let (status, page) = env.search(&a.pit, body).await?;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["total"], 1234);
        let contacts = page["contacts"].as_array().cloned().unwrap_or_default();
        for c in &contacts {
            let ms = c["searchAfter"][0].as_i64().unwrap_or(-1);
            let id = c["id"].as_str().unwrap_or_default().to_owned();
            assert_eq!(c["searchAfter"][1], id.as_str());
            // Shape drift: search items carry contactName and no address1.
            assert!(c["contactName"].is_string());
            assert!(c.get("address1").is_none());
            assert_eq!(c["additionalEmails"], json!([]));
            assert_eq!(c["locationId"], a.id.as_str());
            seen.push((ms, id));
        }
        if contacts.len() < 100 {
            break;
        }
        after = contacts.last().map(|c| c["searchAfter"].clone());
    }
    assert_eq!(seen.len(), 1234);
    let unique: HashSet<&String> = seen.iter().map(|s| &s.1).collect();
    assert_eq!(unique.len(), 1234);
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(sorted, seen);

    // Validation: 422 with array messages.
    let (status, body) = env.search(&a.pit, json!({"locationId": a.id, "pageLimit": 501})).await?;
    assert_eq!(status, 422);
    assert!(body["message"].is_array());
    let (status, _) = env.search(&a.pit, json!({"pageLimit": 10})).await?;
    assert_eq!(status, 422);
    let (status, _) = env.search(&a.pit, json!({"locationId": a.id, "pageLimit": 100, "page": 101})).await?;
    assert_eq!(status, 422);

    // Range + eq filters.
    let (ms, id) = seen[600].clone();
    let (_, body) = env
        .search(
            &a.pit,
            json!({"locationId": a.id, "pageLimit": 500,
                   "filters": [{"field": "dateUpdated", "operator": "range", "value": {"gte": model::iso(ms)}}],
                   "sort": [{"field": "dateUpdated", "direction": "asc"}]}),
        )
        .await?;
    let first_at_or_after = seen.iter().position(|s| s.0 >= ms).unwrap_or(0);
    assert_eq!(body["total"], (1234 - first_at_or_after) as u64);
    let (_, body) = env
        .search(
            &a.pit,
            json!({"locationId": a.id, "pageLimit": 5,
                   "filters": [{"field": "id", "operator": "eq", "value": id}]}),
        )
        .await?;
    assert_eq!(body["total"], 1);
    assert_eq!(body["contacts"][0]["id"], id.as_str());
    env.sandbox.stop().await;
    Ok(())
}

#[tokio::test]
async fn search_lags_behind_writes() -> anyhow::Result<()> {
    let env = Env::start(GhlOptions { search_lag: Duration::from_millis(500), ..small() }).await?;
    let a = env.loc(0);
    let (status, created) = env
        .send(
            env.req(reqwest::Method::POST, "/contacts/", &a.pit)
                .json(&json!({"locationId": a.id, "firstName": "Ada", "lastName": "Lagtest",
                              "email": "lag1@example.test", "gender": "female"})),
        )
        .await?;
    assert_eq!(status, 201, "{created}");
    let id = created["contact"]["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(created["contact"]["deleted"], false);
    let by_id = json!({"locationId": a.id, "pageLimit": 5,
                       "filters": [{"field": "id", "operator": "eq", "value": id}]});
    let (_, body) = env.search(&a.pit, by_id.clone()).await?;
    assert_eq!(body["total"], 0, "fresh create must be invisible");
    // GET sees it immediately.
    let (status, _) = env.send(env.req(reqwest::Method::GET, &format!("/contacts/{id}"), &a.pit)).await?;
    assert_eq!(status, 200);
    env.ghl().advance_clock(Duration::from_millis(600));
    let (_, body) = env.search(&a.pit, by_id.clone()).await?;
    assert_eq!(body["total"], 1);
    assert_eq!(body["contacts"][0]["firstName"], "Ada");

    // An update shows the old version until the lag passes; a delete still shows.
    assert!(env.ghl().update_contact(&id, json!({"firstName": "Bea"})));
    let (_, body) = env.search(&a.pit, by_id.clone()).await?;
    assert_eq!(body["contacts"][0]["firstName"], "Ada");
    env.ghl().advance_clock(Duration::from_millis(600));
    let (_, body) = env.search(&a.pit, by_id.clone()).await?;
    assert_eq!(body["contacts"][0]["firstName"], "Bea");
    assert!(env.ghl().delete_contact(&id));
    let (_, body) = env.search(&a.pit, by_id.clone()).await?;
    assert_eq!(body["total"], 1);
    env.ghl().advance_clock(Duration::from_millis(600));
    let (_, body) = env.search(&a.pit, by_id).await?;
    assert_eq!(body["total"], 0);
    env.sandbox.stop().await;
    Ok(())
}

#[tokio::test]
async fn burst_limit_answers_429_with_headers() -> anyhow::Result<()> {
    let env = Env::start(GhlOptions { burst_max: 5, burst_window: Duration::from_secs(1), ..small() }).await?;
    let a = env.loc(0);
    let body = json!({"locationId": a.id, "pageLimit": 1});
    for i in 0..5u32 {
        let response = env.req(reqwest::Method::POST, "/contacts/search", &a.pit).json(&body).send().await?;
        assert_eq!(response.status().as_u16(), 200);
        let remaining = &response.headers()["x-ratelimit-remaining"];
        assert_eq!(remaining.to_str()?, (4 - i).to_string());
    }
    let response = env.req(reqwest::Method::POST, "/contacts/search", &a.pit).json(&body).send().await?;
    assert_eq!(response.status().as_u16(), 429);
    let h = response.headers().clone();
    assert_eq!(h["x-ratelimit-remaining"].to_str()?, "0");
    assert_eq!(h["x-ratelimit-max"].to_str()?, "5");
    assert_eq!(h["x-ratelimit-interval-milliseconds"].to_str()?, "1000");
    assert_eq!(h["x-ratelimit-limit-daily"].to_str()?, "200000");
    assert_eq!(h["x-ratelimit-daily-remaining"].to_str()?, "199995");
    assert!(!h.contains_key("retry-after"));
    let json: Value = response.json().await?;
    assert_eq!(json, json!({"statusCode":429,"message":"Too many requests","error":"Too Many Requests"}));
    // Another bucket is unaffected; the window slides.
    let b = env.loc(1);
    let (status, _) = env.search(&b.pit, json!({"locationId": b.id, "pageLimit": 1})).await?;
    assert_eq!(status, 200);
    env.ghl().advance_clock(Duration::from_millis(1001));
    assert_eq!(env.search(&a.pit, body.clone()).await?.0, 200);

    assert_eq!(env.ghl().stats().too_many_requests, 1);
    env.ghl().set_daily_exhausted(&a.id, true);
    let response = env.req(reqwest::Method::POST, "/contacts/search", &a.pit).json(&body).send().await?;
    assert_eq!(response.status().as_u16(), 429);
    assert_eq!(response.headers()["x-ratelimit-daily-remaining"].to_str()?, "0");
    assert_eq!(env.ghl().stats().too_many_requests, 2);
    env.sandbox.stop().await;
    Ok(())
}

#[tokio::test]
async fn put_rejects_unknown_properties_and_tags_replace() -> anyhow::Result<()> {
    let env = Env::start(small()).await?;
    let a = env.loc(0);
    let id = env.ghl().contact_ids(&a.id)[3].clone();
    let path = format!("/contacts/{id}");
    let (status, body) =
        env.send(env.req(reqwest::Method::PUT, &path, &a.pit).json(&json!({"gender": "male"}))).await?;
    assert_eq!(status, 422);
    assert_eq!(
        body,
        json!({"statusCode":422,"message":["property gender should not exist"],"error":"Unprocessable Entity"})
    );
    let before = env.ghl().contact(&id).unwrap_or_default();
    let (status, body) = env
        .send(env.req(reqwest::Method::PUT, &path, &a.pit).json(&json!({"firstName": "Zed", "tags": ["only"]})))
        .await?;
    assert_eq!(status, 200);
    assert_eq!(body["succeded"], true);
    assert_eq!(body["contact"]["firstName"], "Zed");
    assert_eq!(body["contact"]["tags"], json!(["only"]));
    assert!(body["contact"]["dateUpdated"].as_str() > before["dateUpdated"].as_str());

    // Tag endpoints: 201 on add, DELETE with a JSON body.
    let tags = format!("{path}/tags");
    let (status, body) = env.send(env.req(reqwest::Method::POST, &tags, &a.pit).json(&json!({"tags": ["x"]}))).await?;
    assert_eq!(status, 201);
    assert_eq!(body["tags"], json!(["only", "x"]));
    let (status, body) =
        env.send(env.req(reqwest::Method::DELETE, &tags, &a.pit).json(&json!({"tags": ["only"]}))).await?;
    assert_eq!(status, 200);
    assert_eq!(body["tags"], json!(["x"]));

    let (status, body) = env.send(env.req(reqwest::Method::DELETE, &path, &a.pit)).await?;
    assert_eq!(status, 200);
    assert_eq!(body["succeded"], true);
    let (status, _) = env.send(env.req(reqwest::Method::GET, &path, &a.pit)).await?;
    assert_eq!(status, 404);
    env.sandbox.stop().await;
    Ok(())
}

#[tokio::test]
async fn tasks_and_notes_have_real_shapes() -> anyhow::Result<()> {
    let env = Env::start(small()).await?;
    let a = env.loc(0);
    let id = env.ghl().contact_ids(&a.id)[0].clone();
    let base = format!("/contacts/{id}");
    let (status, created) = env
        .send(
            env.req(reqwest::Method::POST, &format!("{base}/tasks"), &a.pit).json(
                &json!({"title": "Call", "body": "b", "dueDate": "2026-01-01T00:00:00.000Z", "completed": false}),
            ),
        )
        .await?;
    assert_eq!(status, 201, "{created}");
    let task = created["task"].clone();
    let mut keys: Vec<&String> = task.as_object().map(|o| o.keys().collect()).unwrap_or_default();
    keys.sort();
    assert_eq!(keys, ["assignedTo", "body", "completed", "contactId", "dueDate", "id", "title"]);
    let task_id = task["id"].as_str().unwrap_or_default().to_owned();
    let (status, done) = env
        .send(
            env.req(reqwest::Method::PUT, &format!("{base}/tasks/{task_id}/completed"), &a.pit)
                .json(&json!({"completed": true})),
        )
        .await?;
    assert_eq!(status, 200);
    assert_eq!(done["task"]["completed"], true);
    let (_, list) = env.send(env.req(reqwest::Method::GET, &format!("{base}/tasks"), &a.pit)).await?;
    assert!(list["tasks"].as_array().is_some_and(|t| t.iter().any(|t| t["id"] == task_id.as_str())));

    // Location task search: `_id` items, oldest first (the new task is last).
    let (status, found) = env
        .send(
            env.req(reqwest::Method::POST, &format!("/locations/{}/tasks/search", a.id), &a.pit)
                .json(&json!({"contactId": [id], "limit": 25, "skip": 0})),
        )
        .await?;
    assert_eq!(status, 200);
    let items = found["tasks"].as_array().cloned().unwrap_or_default();
    assert!(items.iter().any(|t| t["_id"] == task_id.as_str()));
    let ids: Vec<&str> = items.iter().filter_map(|t| t["_id"].as_str()).collect();
    assert_eq!(ids.last(), Some(&task_id.as_str()));
    assert!(items[0]["contactDetails"].is_object());

    let (status, note) = env
        .send(env.req(reqwest::Method::POST, &format!("{base}/notes"), &a.pit).json(&json!({"body": "hello"})))
        .await?;
    assert_eq!(status, 201);
    assert!(note["note"]["dateAdded"].is_string());
    assert!(note["note"].get("dateUpdated").is_none());
    let note_id = note["note"]["id"].as_str().unwrap_or_default().to_owned();
    let (status, body) = env.send(env.req(reqwest::Method::DELETE, &format!("{base}/notes/{note_id}"), &a.pit)).await?;
    assert_eq!(status, 200);
    assert_eq!(body["succeded"], true);
    let (status, body) = env.send(env.req(reqwest::Method::DELETE, &format!("{base}/tasks/{task_id}"), &a.pit)).await?;
    assert_eq!(status, 200);
    assert_eq!(body["succeded"], true);
    assert!(env.ghl().tasks(&id).iter().all(|t| t["id"] != task_id.as_str()));
    env.sandbox.stop().await;
    Ok(())
}

#[tokio::test]
async fn webhooks_are_signed_with_the_public_key() -> anyhow::Result<()> {
    use axum::body::Bytes;
    use axum::http::HeaderMap;

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(HeaderMap, Bytes)>();
    let receiver = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let tx = tx.clone();
            async move {
                if tx.send((headers, body)).is_err() {
                    return "closed";
                }
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, receiver).await {
            tracing::warn!(%error, "receiver stopped");
        }
    });

    let env = Env::start(small()).await?;
    env.ghl().set_webhook_url(Some(url::Url::parse(&format!("http://{addr}/hook"))?));
    let a = env.loc(0);
    let id = env.ghl().contact_ids(&a.id)[0].clone();
    assert!(env.ghl().update_contact(&id, json!({"city": "Hooktown"})));

    let spki = STANDARD.decode(env.ghl().webhook_public_key())?;
    assert!(env.ghl().webhook_public_key().starts_with("MCowBQYDK2VwAyEA"));
    let key_bytes: [u8; 32] = spki[spki.len() - 32..].try_into()?;
    let key = VerifyingKey::from_bytes(&key_bytes)?;

    async fn recv(rx: &mut tokio::sync::mpsc::UnboundedReceiver<(HeaderMap, Bytes)>) -> Option<(HeaderMap, Bytes)> {
        tokio::time::timeout(Duration::from_secs(2), rx.recv()).await.ok().flatten()
    }
    let Some((headers, body)) = recv(&mut rx).await else {
        anyhow::bail!("no webhook arrived");
    };
    let signature = STANDARD.decode(headers["x-ghl-signature"].to_str()?)?;
    let signature = Signature::from_slice(&signature)?;
    assert!(key.verify(&body, &signature).is_ok());
    let mut tampered = body.to_vec();
    tampered[2] ^= 0x20;
    assert!(key.verify(&tampered, &signature).is_err());
    let event: Value = serde_json::from_slice(&body)?;
    assert_eq!(event["type"], "ContactUpdate");
    assert_eq!(event["id"], id.as_str());
    assert_eq!(event["locationId"], a.id.as_str());
    assert_eq!(event["city"], "Hooktown");
    assert!(event["webhookId"].is_string() && event["timestamp"].is_string());
    assert!(event["appId"].is_string());
    assert!(event.get("dateUpdated").is_none());

    // Modes: duplicate (same webhookId twice) and bad signature.
    env.ghl().emit_webhook(json!({"type": "NoteCreate", "locationId": a.id, "id": "x"}), WebhookMode::Duplicate);
    let one = recv(&mut rx).await;
    let two = recv(&mut rx).await;
    let ids: Vec<Value> = [one, two]
        .into_iter()
        .flatten()
        .map(|(_, b)| serde_json::from_slice::<Value>(&b).unwrap_or(Value::Null)["webhookId"].clone())
        .collect();
    assert_eq!(ids.len(), 2);
    assert_eq!(ids[0], ids[1]);
    env.ghl().emit_webhook(json!({"type": "NoteDelete", "locationId": a.id, "id": "y"}), WebhookMode::BadSignature);
    let Some((headers, body)) = recv(&mut rx).await else {
        anyhow::bail!("no webhook arrived");
    };
    let signature = Signature::from_slice(&STANDARD.decode(headers["x-ghl-signature"].to_str()?)?)?;
    assert!(key.verify(&body, &signature).is_err());
    assert!(env.ghl().stats().webhooks_sent >= 4);
    env.sandbox.stop().await;
    server.abort();
    Ok(())
}

#[tokio::test]
async fn faults_storm_status_and_malformed() -> anyhow::Result<()> {
    let env = Env::start(small()).await?;
    let a = env.loc(0);
    let body = json!({"locationId": a.id, "pageLimit": 1});
    env.ghl().set_fault("POST /contacts/search", Fault { storm_429: Some(2), ..Fault::default() });
    assert_eq!(env.search(&a.pit, body.clone()).await?.0, 429);
    assert_eq!(env.search(&a.pit, body.clone()).await?.0, 429);
    assert_eq!(env.search(&a.pit, body.clone()).await?.0, 200);
    env.ghl().set_fault("*", Fault { status: Some(502), ..Fault::default() });
    env.ghl().clear_faults();
    env.ghl().set_fault("*", Fault { error_rate: 1.0, ..Fault::default() });
    let (status, body503) = env.search(&a.pit, body.clone()).await?;
    assert_eq!(status, 503);
    assert_eq!(body503["statusCode"], 503);
    env.ghl().set_fault("POST /contacts/search", Fault { malformed_json: true, ..Fault::default() });
    let response = env.req(reqwest::Method::POST, "/contacts/search", &a.pit).json(&body).send().await?;
    assert_eq!(response.status().as_u16(), 200);
    assert!(response.json::<Value>().await.is_err());
    env.ghl().clear_faults();
    // Hang: no answer until the fault is cleared.
    env.ghl().set_fault("POST /contacts/search", Fault { hang: true, ..Fault::default() });
    let hung = env
        .req(reqwest::Method::POST, "/contacts/search", &a.pit)
        .timeout(Duration::from_millis(200))
        .json(&body)
        .send()
        .await;
    assert!(hung.is_err_and(|e| e.is_timeout()));
    env.ghl().clear_faults();
    // 422 yet created.
    env.ghl().set_fault("POST /contacts/", Fault { status_after_write: true, ..Fault::default() });
    let before = env.ghl().contact_ids(&a.id).len();
    let (status, _) = env
        .send(
            env.req(reqwest::Method::POST, "/contacts/", &a.pit).json(&json!({"locationId": a.id, "firstName": "Dup"})),
        )
        .await?;
    assert_eq!(status, 422);
    assert_eq!(env.ghl().contact_ids(&a.id).len(), before + 1);
    assert_eq!(env.ghl().stats().too_many_requests, 2);
    env.sandbox.stop().await;
    Ok(())
}

#[tokio::test]
async fn seeding_and_mutations_are_deterministic() -> anyhow::Result<()> {
    let one = FakeGhl::new(small());
    let two = FakeGhl::new(small());
    assert_eq!(one.locations(), two.locations());
    let loc = one.locations()[0].id.clone();
    assert_eq!(one.contact_ids(&loc), two.contact_ids(&loc));
    assert!(one.locations()[0].pit.starts_with("pit-"));
    assert_eq!(one.contact_ids(&loc)[0].len(), 20);
    let first = one.contact_ids(&loc)[0].clone();
    assert_eq!(one.contact(&first), two.contact(&first));
    assert_eq!(one.tasks(&first), two.tasks(&first));
    let m1 = one.mutate(Some(&loc), 40);
    let m2 = two.mutate(Some(&loc), 40);
    assert_eq!(m1.len(), 40);
    let kinds = |m: &[Mutation]| m.iter().map(|m| (m.kind, m.contact_id.clone())).collect::<Vec<_>>();
    assert_eq!(kinds(&m1), kinds(&m2));
    let other = FakeGhl::new(GhlOptions { seed: 7, ..small() });
    assert_ne!(other.locations(), one.locations());
    Ok(())
}

#[tokio::test]
async fn admin_routes_work() -> anyhow::Result<()> {
    let env = Env::start(small()).await?;
    let (status, creds) = env.send(env.http.get(env.url("/__admin/ghl/credentials"))).await?;
    assert_eq!(status, 200);
    assert_eq!(creds["locations"].as_array().map(Vec::len), Some(2));
    assert!(creds["oauth"]["authorizationCode"].is_string());
    let (status, m) = env.send(env.http.post(env.url("/__admin/ghl/mutate")).json(&json!({"count": 5}))).await?;
    assert_eq!(status, 200);
    assert_eq!(m["mutations"].as_array().map(Vec::len), Some(5));
    let (status, _) = env
        .send(env.http.post(env.url("/__admin/ghl/seed")).json(&json!({"locations": 1, "contacts_per_location": 7})))
        .await?;
    assert_eq!(status, 200);
    let (_, state) = env.send(env.http.get(env.url("/__admin/ghl/state"))).await?;
    assert_eq!(state["locations"][0]["contactCount"], 7);
    let (_, stats) = env.send(env.http.get(env.url("/__admin/ghl/stats"))).await?;
    assert!(stats["requests"].is_object());
    env.sandbox.stop().await;
    Ok(())
}

#[test]
fn seeds_a_large_location_quickly() {
    let started = std::time::Instant::now();
    let ghl = FakeGhl::new(GhlOptions { locations: 2, contacts_per_location: 10_000, ..GhlOptions::default() });
    assert_eq!(ghl.contact_ids(&ghl.locations()[1].id).len(), 10_000);
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// Rough seeding/search cost at scale: `cargo test --release -- --ignored big_seed --nocapture`.
#[test]
#[ignore = "benchmark"]
fn big_seed_and_full_scan() {
    let started = std::time::Instant::now();
    let bare = FakeGhl::new(GhlOptions {
        locations: 10,
        contacts_per_location: 100_000,
        max_tasks_per_contact: 0,
        max_notes_per_contact: 0,
        ..GhlOptions::default()
    });
    eprintln!("seeded 1M bare contacts in {:?}", started.elapsed());
    drop(bare);
    let started = std::time::Instant::now();
    let ghl = FakeGhl::new(GhlOptions { locations: 10, contacts_per_location: 100_000, ..GhlOptions::default() });
    let seeded = started.elapsed();
    let loc = ghl.locations()[0].clone();
    let started = std::time::Instant::now();
    let auth = state::AuthCtx {
        principal: state::Principal::Location(0),
        bucket: String::new(),
        scopes: schema::ScopeSet::ALL,
    };
    let mut after: Option<Value> = None;
    let mut seen = 0usize;
    loop {
        let mut body = json!({"locationId": loc.id, "pageLimit": 500,
            "filters": [{"field": "dateUpdated", "operator": "range", "value": {"gte": "2020-01-01T00:00:00.000Z"}}],
            "sort": [{"field": "dateUpdated", "direction": "asc"}]});
        if let Some(sa) = &after {
            body["searchAfter"] = sa.clone();
        }
        let (items, _) = ghl.lock().search_raw(&auth, &body).unwrap_or_default();
        seen += items.len();
        if items.len() < 500 {
            break;
        }
        let last: Value = items.last().and_then(|i| serde_json::from_str(i).ok()).unwrap_or_default();
        after = Some(last["searchAfter"].clone());
    }
    assert_eq!(seen, 100_000);
    eprintln!("seeded 1M in {seeded:?}; scanned 100k via search in {:?}", started.elapsed());
}
