//! Appointments, businesses, the location-wide task search, scopes, and the task/note/tag/
//! contact writes, over real HTTP on 127.0.0.1.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};

use super::tests::{Env, small};
use super::*;

fn roomy(contacts: usize) -> GhlOptions {
    GhlOptions { contacts_per_location: contacts, burst_max: 10_000, ..GhlOptions::default() }
}

/// A seeded contact of location `i` that has appointments.
fn with_appointments(env: &Env, i: usize) -> Option<String> {
    let loc = env.loc(i);
    env.ghl().contact_ids(&loc.id).into_iter().find(|c| !env.ghl().appointments(c).is_empty())
}

/// Sends the fake's webhooks to the sandbox's own sink (`received` reads them).
fn hook(env: &Env) {
    env.ghl().set_webhook_url(Some(env.sandbox.sink_url("ghl")));
}

async fn received(env: &Env, count: usize) -> Vec<Value> {
    let deliveries = env.sandbox.sink.wait_for(Some("ghl"), count, Duration::from_secs(5)).await;
    deliveries.iter().filter_map(|d| d.json()).collect()
}

#[tokio::test]
async fn appointments_list_with_the_contact_routes_rules() -> anyhow::Result<()> {
    let env = Env::start(roomy(60)).await?;
    let (a, b) = (env.loc(0), env.loc(1));
    let Some(id) = with_appointments(&env, 0) else {
        anyhow::bail!("no seeded contact has appointments");
    };
    let path = format!("/contacts/{id}/appointments");
    let response = env.req(reqwest::Method::GET, &path, &a.pit).send().await?;
    assert_eq!(response.status().as_u16(), 200);
    let remaining: u32 = response.headers()["x-ratelimit-remaining"].to_str()?.parse()?;
    let body: Value = response.json().await?;
    let events = body["events"].as_array().cloned().unwrap_or_default();
    assert!(!events.is_empty());
    assert!(body["traceId"].is_string());
    for e in &events {
        assert_eq!(e["contactId"], id.as_str());
        assert_eq!(e["locationId"], a.id.as_str());
        // REST times as in the spec's examples.
        let start = e["startTime"].as_str().unwrap_or_default();
        assert_eq!((start.len(), &start[10..11]), (19, " "), "{start}");
        assert!(e["users"].is_array() && e["assignedResources"].is_array());
    }
    assert_eq!(events, env.ghl().appointments(&id));

    // Version, token, location and rate limiter as on every contact route.
    let response = env.http.get(env.url(&path)).bearer_auth(&a.pit).send().await?;
    assert_eq!(response.status().as_u16(), 400);
    assert_eq!(env.send(env.req(reqwest::Method::GET, &path, "pit-nope")).await?.0, 401);
    assert_eq!(env.send(env.req(reqwest::Method::GET, &path, &b.pit)).await?.0, 403);
    let response = env.req(reqwest::Method::GET, &path, &a.pit).send().await?;
    let after: u32 = response.headers()["x-ratelimit-remaining"].to_str()?.parse()?;
    assert_eq!(after, remaining - 2, "the 400 and this 200 each took one request");
    assert_eq!(env.ghl().stats().requests["GET /contacts/:contactId/appointments"], 5);

    // A deleted contact: 404 "Contact not found", its appointments gone with it.
    assert!(env.ghl().delete_contact(&id));
    let (status, body) = env.send(env.req(reqwest::Method::GET, &path, &a.pit)).await?;
    assert_eq!(status, 404);
    assert_eq!(body, json!({"statusCode": 404, "message": "Contact not found"}));
    assert!(env.ghl().appointments(&id).is_empty());
    env.sandbox.stop().await;
    Ok(())
}

#[tokio::test]
async fn appointment_writes_fire_their_webhooks() -> anyhow::Result<()> {
    let env = Env::start(small()).await?;
    hook(&env);
    let a = env.loc(0);
    let contact = env.ghl().contact_ids(&a.id)[1].clone();

    // Rust API.
    let Some(id) = env.ghl().create_appointment(
        &contact,
        json!({"title": "Kick-off", "startTime": "2026-03-02T10:00:00.000Z", "notes": "n"}),
    ) else {
        anyhow::bail!("create_appointment failed");
    };
    assert!(
        env.ghl().update_appointment(&id, json!({"startTime": "2026-03-02 11:00:00", "endTime": 1_772_452_800_000i64}))
    );
    assert!(env.ghl().cancel_appointment(&id));
    let listed = env.ghl().appointments(&contact);
    let cancelled = listed.iter().find(|e| e["id"] == id.as_str()).cloned().unwrap_or_default();
    assert_eq!(cancelled["appointmentStatus"], "cancelled");
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(cancelled["startTime"], "2026-03-02 11:00:00");
    assert!(env.ghl().delete_appointment(&id));
    assert!(env.ghl().appointments(&contact).iter().all(|e| e["id"] != id.as_str()));
    assert!(!env.ghl().update_appointment(&id, json!({"title": "gone"})));
    assert!(!env.ghl().update_appointment(&contact, json!({"nonsense": 1})));

    // Admin API.
    let (status, created) = env
        .send(env.http.post(env.url("/__admin/ghl/appointments")).json(&json!({
            "contactId": contact, "title": "Demo", "startTime": "2026-04-01T09:00:00Z",
        })))
        .await?;
    assert_eq!(status, 200, "{created}");
    let second = created["appointment"]["id"].as_str().unwrap_or_default().to_owned();
    let url = env.url(&format!("/__admin/ghl/appointments/{second}"));
    assert_eq!(env.send(env.http.put(&url).json(&json!({"title": "Demo 2"}))).await?.0, 200);
    let (status, body) = env.send(env.http.put(&url).json(&json!({"colour": "red"}))).await?;
    assert_eq!((status, body["message"].clone()), (422, json!(["property colour should not exist"])));
    assert_eq!(env.send(env.http.post(format!("{url}/cancel"))).await?.0, 200);
    assert_eq!(env.send(env.http.delete(&url)).await?.0, 200);
    assert_eq!(env.send(env.http.delete(&url)).await?.0, 404);

    let events = received(&env, 8).await;
    let kinds: Vec<(&str, &str, &str)> = events
        .iter()
        .map(|e| {
            let appt = &e["appointment"];
            (
                e["type"].as_str().unwrap_or(""),
                appt["id"].as_str().unwrap_or(""),
                appt["appointmentStatus"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("AppointmentCreate", id.as_str(), "confirmed"),
            ("AppointmentUpdate", id.as_str(), "confirmed"),
            ("AppointmentUpdate", id.as_str(), "cancelled"),
            ("AppointmentDelete", id.as_str(), "cancelled"),
            ("AppointmentCreate", second.as_str(), "confirmed"),
            ("AppointmentUpdate", second.as_str(), "confirmed"),
            ("AppointmentUpdate", second.as_str(), "cancelled"),
            ("AppointmentDelete", second.as_str(), "cancelled"),
        ]
    );
    for e in &events {
        assert_eq!(e["locationId"], a.id.as_str());
        assert_eq!(e["appointment"]["contactId"], contact.as_str());
        assert!(e["webhookId"].is_string() && e["timestamp"].is_string());
    }
    env.sandbox.stop().await;
    Ok(())
}

#[tokio::test]
async fn mutate_kinds_reach_appointments_and_businesses_and_the_default_mix_does_not() -> anyhow::Result<()> {
    let env = Env::start(small()).await?;
    let a = env.loc(0);
    let default = env.ghl().mutate(None, 300);
    let new_kinds = &MutationKind::ALL[10..];
    assert!(default.iter().all(|m| !new_kinds.contains(&m.kind)), "the default mix is unchanged");

    let before = env.ghl().sent_webhooks().len();
    let mutations = env.ghl().mutate_kinds(Some(&a.id), 60, new_kinds);
    assert_eq!(mutations.len(), 60);
    let kinds: BTreeSet<String> = mutations.iter().map(|m| format!("{:?}", m.kind)).collect();
    for kind in new_kinds {
        assert!(kinds.contains(&format!("{kind:?}")), "{kind:?} in {kinds:?}");
    }
    let sent = env.ghl().sent_webhooks();
    let bodies: Vec<Value> =
        sent[before..].iter().filter_map(|w| serde_json::from_str(w["body"].as_str().unwrap_or("")).ok()).collect();
    assert_eq!(bodies.len(), 60, "one webhook per mutation");
    for (m, body) in mutations.iter().zip(&bodies) {
        let expected = match m.kind {
            MutationKind::AppointmentCreate => "AppointmentCreate",
            MutationKind::AppointmentUpdate | MutationKind::AppointmentCancel => "AppointmentUpdate",
            MutationKind::AppointmentDelete => "AppointmentDelete",
            _ => "ContactUpdate",
        };
        assert_eq!(body["type"], expected, "{m:?}");
        let object = body["appointment"]["id"].as_str().or(body["id"].as_str()).unwrap_or_default();
        assert_eq!(object, m.object_id);
        assert_eq!(m.location_id, a.id);
        match m.kind {
            MutationKind::BusinessUnlink => assert!(body.get("businessId").is_none()),
            MutationKind::BusinessLink => assert!(body["businessId"].is_string()),
            _ => {}
        }
    }

    // The admin route takes kinds too.
    let (status, body) = env
        .send(env.http.post(env.url("/__admin/ghl/mutate")).json(&json!({"count": 3, "kinds": ["AppointmentCreate"]})))
        .await?;
    assert_eq!(status, 200);
    assert!(
        body["mutations"]
            .as_array()
            .is_some_and(|m| m.len() == 3 && m.iter().all(|m| m["kind"] == "AppointmentCreate"))
    );
    env.sandbox.stop().await;
    Ok(())
}

#[tokio::test]
async fn business_listing_pages_and_links_fire_contact_updates() -> anyhow::Result<()> {
    let env = Env::start(roomy(120)).await?;
    hook(&env);
    let (a, b) = (env.loc(0), env.loc(1));
    let business = env.ghl().businesses(&a.id)[0].id.clone();
    assert_eq!(business.len(), 24);
    let members: Vec<String> = env
        .ghl()
        .contact_ids(&a.id)
        .into_iter()
        .filter(|c| env.ghl().contact(c).is_some_and(|v| v["businessId"] == business.as_str()))
        .collect();
    assert!(members.len() >= 5, "seeded members: {}", members.len());

    // Paged with string limit/skip, stable, every member once; count is the total.
    let list = |skip: usize, limit: usize| {
        format!("/contacts/business/{business}?locationId={}&limit={limit}&skip={skip}", a.id)
    };
    let mut seen = Vec::new();
    for skip in (0..members.len() + 3).step_by(3) {
        let (status, page) = env.send(env.req(reqwest::Method::GET, &list(skip, 3), &a.pit)).await?;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["count"], members.len());
        seen.extend(
            page["contacts"].as_array().into_iter().flatten().filter_map(|c| c["id"].as_str().map(str::to_owned)),
        );
    }
    assert_eq!(seen.iter().collect::<BTreeSet<_>>(), members.iter().collect::<BTreeSet<_>>());
    assert_eq!(seen.len(), members.len());
    let (_, default_page) = env
        .send(env.req(reqwest::Method::GET, &format!("/contacts/business/{business}?locationId={}", a.id), &a.pit))
        .await?;
    assert_eq!(default_page["contacts"].as_array().map(Vec::len), Some(members.len().min(25)));
    let bad = format!("/contacts/business/{business}?locationId={}&limit=ten", a.id);
    assert_eq!(env.send(env.req(reqwest::Method::GET, &bad, &a.pit)).await?.0, 422);
    let no_location = format!("/contacts/business/{business}");
    assert_eq!(env.send(env.req(reqwest::Method::GET, &no_location, &a.pit)).await?.0, 422);
    assert_eq!(env.send(env.req(reqwest::Method::GET, &list(0, 3), &b.pit)).await?.0, 403);

    // Link two contacts through the bulk route; a foreign id is left out.
    let outsider = env.ghl().contact_ids(&a.id).into_iter().find(|c| !members.contains(c)).unwrap_or_default();
    let other_location = env.ghl().contact_ids(&b.id)[0].clone();
    let before = env.ghl().contact(&outsider).unwrap_or_default();
    let (status, body) = env
        .send(env.req(reqwest::Method::POST, "/contacts/bulk/business", &a.pit).json(&json!({
            "locationId": a.id, "ids": [outsider, other_location], "businessId": business,
        })))
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["success"], true);
    assert_eq!(body["ids"], json!([outsider]));
    let after = env.ghl().contact(&outsider).unwrap_or_default();
    assert_eq!(after["businessId"], business.as_str());
    assert!(after["dateUpdated"].as_str() > before["dateUpdated"].as_str());
    let (_, page) = env.send(env.req(reqwest::Method::GET, &list(0, 100), &a.pit)).await?;
    assert_eq!(page["count"], members.len() + 1);
    // Unlink with null; PUT cannot write businessId (not in UpdateContactDto).
    let (status, _) = env
        .send(env.req(reqwest::Method::POST, "/contacts/bulk/business", &a.pit).json(&json!({
            "locationId": a.id, "ids": [outsider], "businessId": null,
        })))
        .await?;
    assert_eq!(status, 200);
    assert!(env.ghl().contact(&outsider).unwrap_or_default().get("businessId").is_none());
    let (status, body) = env
        .send(
            env.req(reqwest::Method::PUT, &format!("/contacts/{outsider}"), &a.pit)
                .json(&json!({"businessId": business})),
        )
        .await?;
    assert_eq!((status, body["message"].clone()), (422, json!(["property businessId should not exist"])));
    let (status, _) = env
        .send(
            env.req(reqwest::Method::POST, "/contacts/bulk/business", &a.pit)
                .json(&json!({"locationId": a.id, "ids": "x"})),
        )
        .await?;
    assert_eq!(status, 422);

    let events = received(&env, 2).await;
    let kinds: Vec<_> =
        events.iter().map(|e| (e["type"].clone(), e["id"].clone(), e.get("businessId").cloned())).collect();
    assert_eq!(
        kinds,
        vec![
            (json!("ContactUpdate"), json!(outsider), Some(json!(business))),
            (json!("ContactUpdate"), json!(outsider), None),
        ]
    );
    env.sandbox.stop().await;
    Ok(())
}

async fn task_page(env: &Env, token: &str, location: &str, body: Value) -> anyhow::Result<(u16, Value)> {
    env.send(env.req(reqwest::Method::POST, &format!("/locations/{location}/tasks/search"), token).json(&body)).await
}

#[tokio::test]
async fn task_search_pages_every_task_once_in_a_stable_order() -> anyhow::Result<()> {
    let env = Env::start(roomy(80)).await?;
    let a = env.loc(0);
    let mut expected = BTreeSet::new();
    for c in env.ghl().contact_ids(&a.id) {
        expected.extend(env.ghl().tasks(&c).iter().filter_map(|t| t["id"].as_str().map(str::to_owned)));
    }
    assert!(expected.len() > 50);
    env.ghl().reset_stats();
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let (status, page) = task_page(&env, &a.pit, &a.id, json!({"limit": 7, "skip": seen.len()})).await?;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        let items = page["tasks"].as_array().cloned().unwrap_or_default();
        for t in &items {
            assert!(t.get("id").is_none() && t["_id"].is_string());
            assert!(t["contactId"].is_string() && t["contactDetails"].is_object());
            assert_eq!(t["locationId"], a.id.as_str());
        }
        seen.extend(items.iter().filter_map(|t| t["_id"].as_str().map(str::to_owned)));
        if items.len() < 7 {
            break;
        }
    }
    assert_eq!(seen.len(), expected.len(), "no task twice");
    assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), expected);
    let stats = env.ghl().stats();
    assert_eq!(stats.requests["POST /locations/:locationId/tasks/search"], pages);
    // Same query, same order; the default page is 25.
    let (_, first) = task_page(&env, &a.pit, &a.id, json!({})).await?;
    let first: Vec<&str> = first["tasks"].as_array().into_iter().flatten().filter_map(|t| t["_id"].as_str()).collect();
    assert_eq!(first, seen[..25].iter().map(String::as_str).collect::<Vec<_>>());

    // A task created while paging lands on the last page.
    let contact = env.ghl().contact_ids(&a.id)[0].clone();
    let created =
        env.ghl().create_task(&contact, json!({"title": "Late", "dueDate": "2026-01-01", "completed": false}));
    let (_, tail) = task_page(&env, &a.pit, &a.id, json!({"skip": seen.len(), "limit": 7})).await?;
    assert_eq!(tail["tasks"][0]["_id"].as_str(), created.as_deref());

    // Filters.
    let (_, done) = task_page(&env, &a.pit, &a.id, json!({"completed": true, "limit": 500})).await?;
    assert!(done["tasks"].as_array().is_some_and(|t| !t.is_empty() && t.iter().all(|t| t["completed"] == true)));
    let (_, mine) = task_page(&env, &a.pit, &a.id, json!({"contactId": [contact], "limit": 500})).await?;
    assert!(mine["tasks"].as_array().is_some_and(|t| t.iter().all(|t| t["contactId"] == contact.as_str())));
    assert_eq!(mine["tasks"].as_array().map(Vec::len), Some(env.ghl().tasks(&contact).len()));
    let (_, late) = task_page(&env, &a.pit, &a.id, json!({"query": "LATE"})).await?;
    assert_eq!(late["tasks"].as_array().map(Vec::len), Some(1));
    let business = env.ghl().businesses(&a.id)[0].id.clone();
    let (_, by_business) = task_page(&env, &a.pit, &a.id, json!({"businessId": business, "limit": 500})).await?;
    for t in by_business["tasks"].as_array().into_iter().flatten() {
        let owner = env.ghl().contact(t["contactId"].as_str().unwrap_or_default()).unwrap_or_default();
        assert_eq!(owner["businessId"], business.as_str());
    }
    let user = env.ghl().tasks(&contact).iter().find_map(|t| t["assignedTo"].as_str().map(str::to_owned));
    if let Some(user) = user {
        let (_, assigned) = task_page(&env, &a.pit, &a.id, json!({"assignedTo": [user], "limit": 500})).await?;
        assert!(assigned["tasks"].as_array().is_some_and(|t| t.iter().all(|t| t["assignedTo"] == user.as_str())));
        assert!(assigned["tasks"][0]["assignedToUserDetails"]["id"] == user.as_str());
    }

    // Validation: 422 with class-validator messages.
    let (status, body) = task_page(&env, &a.pit, &a.id, json!({"contactId": contact, "page": 2, "limit": "x"})).await?;
    assert_eq!(status, 422);
    assert_eq!(
        body["message"],
        json!([
            "property page should not exist",
            "contactId must be an array",
            "limit must be a number conforming to the specified constraints"
        ])
    );
    // Another location's id: 403.
    assert_eq!(task_page(&env, &a.pit, &env.loc(1).id, json!({})).await?.0, 403);
    env.sandbox.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_token_without_the_task_search_scope_is_refused() -> anyhow::Result<()> {
    let env = Env::start(small()).await?;
    let a = env.loc(0);
    let scopes = ["contacts.readonly", "contacts.write"];
    let Some(pit) = env.ghl().create_pit(&a.id, &scopes) else {
        anyhow::bail!("create_pit failed");
    };
    // Contacts still work; task search is refused as reference/ghl.md §3.8 reports (401).
    assert_eq!(env.search(&pit, json!({"locationId": a.id, "pageLimit": 5})).await?.0, 200);
    let (status, body) = task_page(&env, &pit, &a.id, json!({})).await?;
    assert_eq!(status, 401);
    assert_eq!(body["message"], "The token is not authorized for this scope.");
    assert_eq!(task_page(&env, &a.pit, &a.id, json!({})).await?.0, 200, "seeded PITs have every scope");
    let (status, _) =
        env.send(env.req(reqwest::Method::GET, &format!("/locations/{}/customFields", a.id), &pit)).await?;
    assert_eq!(status, 401);
    assert_eq!(env.ghl().stats().requests["POST /locations/:locationId/tasks/search"], 2);

    // An OAuth grant without it: the token answer says so, and the refusal follows.
    let code = env.ghl().authorization_code_with_scopes(Some(&a.id), &scopes);
    let (id, secret) = env.ghl().oauth_client();
    let (status, token) = env
        .token(&[("client_id", &id), ("client_secret", &secret), ("grant_type", "authorization_code"), ("code", &code)])
        .await?;
    assert_eq!(status, 200);
    assert_eq!(token["scope"], "contacts.readonly contacts.write");
    let access = token["access_token"].as_str().unwrap_or_default();
    assert_eq!(task_page(&env, access, &a.id, json!({})).await?.0, 401);
    // The refreshed token keeps the grant's scopes.
    let refresh = token["refresh_token"].as_str().unwrap_or_default();
    let (_, refreshed) = env
        .token(&[
            ("client_id", &id),
            ("client_secret", &secret),
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh),
        ])
        .await?;
    assert_eq!(refreshed["scope"], "contacts.readonly contacts.write");

    // The admin route mints one too.
    let (status, minted) = env
        .send(
            env.http
                .post(env.url("/__admin/ghl/pits"))
                .json(&json!({"locationId": a.id, "scopes": ["contacts.readonly"]})),
        )
        .await?;
    assert_eq!(status, 200);
    let read_only = minted["pit"].as_str().unwrap_or_default();
    let (status, _) = env
        .send(
            env.req(reqwest::Method::POST, "/contacts/", read_only)
                .json(&json!({"locationId": a.id, "firstName": "X"})),
        )
        .await?;
    assert_eq!(status, 401);
    env.sandbox.stop().await;

    // 403 on request.
    let env = Env::start(GhlOptions { scope_denied_status: 403, ..small() }).await?;
    let a = env.loc(0);
    let pit = env.ghl().create_pit(&a.id, &["contacts.readonly"]).unwrap_or_default();
    let (status, body) = task_page(&env, &pit, &a.id, json!({})).await?;
    assert_eq!(status, 403);
    assert_eq!(
        body,
        json!({"statusCode": 403, "message": "The token is not authorized for this scope.", "error": "Forbidden"})
    );
    env.sandbox.stop().await;
    Ok(())
}

#[tokio::test]
async fn task_note_tag_and_contact_writes_answer_as_the_spec_says() -> anyhow::Result<()> {
    let env = Env::start(small()).await?;
    let a = env.loc(0);
    let (status, created) = env
        .send(
            env.req(reqwest::Method::POST, "/contacts/", &a.pit)
                .json(&json!({"locationId": a.id, "firstName": "Rule"})),
        )
        .await?;
    assert_eq!(status, 201);
    let id = created["contact"]["id"].as_str().unwrap_or_default().to_owned();
    let base = format!("/contacts/{id}");
    let send = |method: reqwest::Method, path: String, body: Option<Value>| {
        let rb = env.req(method, &path, &a.pit);
        let rb = match body {
            Some(b) => rb.json(&b),
            None => rb,
        };
        env.send(rb)
    };

    // Tasks: create 201 (completed required), update 200, completed 200, delete 200.
    let (status, body) =
        send(reqwest::Method::POST, format!("{base}/tasks"), Some(json!({"title": "T", "dueDate": "2026-01-01"})))
            .await?;
    assert_eq!((status, body["message"].clone()), (422, json!(["completed must be a boolean value"])));
    let (status, body) = send(
        reqwest::Method::POST,
        format!("{base}/tasks"),
        Some(json!({"title": "T", "dueDate": "2026-01-01T00:00:00Z", "completed": false})),
    )
    .await?;
    assert_eq!(status, 201);
    let task = body["task"]["id"].as_str().unwrap_or_default().to_owned();
    let (status, body) =
        send(reqwest::Method::PUT, format!("{base}/tasks/{task}"), Some(json!({"title": "T2", "body": "b"}))).await?;
    assert_eq!((status, body["task"]["title"].clone()), (200, json!("T2")));
    let (status, _) =
        send(reqwest::Method::PUT, format!("{base}/tasks/{task}"), Some(json!({"status": "completed"}))).await?;
    assert_eq!(status, 422, "UpdateTaskBody has no status");
    let (status, body) =
        send(reqwest::Method::PUT, format!("{base}/tasks/{task}/completed"), Some(json!({"completed": true}))).await?;
    assert_eq!((status, body["task"]["completed"].clone()), (200, json!(true)));
    let (status, body) = send(reqwest::Method::DELETE, format!("{base}/tasks/{task}"), None).await?;
    assert_eq!((status, body["succeded"].clone()), (200, json!(true)));
    assert_eq!(send(reqwest::Method::DELETE, format!("{base}/tasks/{task}"), None).await?.0, 404);

    // Notes: create 201, update 200, delete 200.
    let (status, body) =
        send(reqwest::Method::POST, format!("{base}/notes"), Some(json!({"body": "n", "pinned": true}))).await?;
    assert_eq!(status, 201);
    let note = body["note"]["id"].as_str().unwrap_or_default().to_owned();
    let (status, body) =
        send(reqwest::Method::PUT, format!("{base}/notes/{note}"), Some(json!({"body": "n2", "color": "#FFAA00"})))
            .await?;
    assert_eq!(
        (status, body["note"]["body"].clone(), body["note"]["color"].clone()),
        (200, json!("n2"), json!("#FFAA00"))
    );
    let (status, body) = send(reqwest::Method::DELETE, format!("{base}/notes/{note}"), None).await?;
    assert_eq!((status, body["succeded"].clone()), (200, json!(true)));

    // Tags: add 201, remove 200; contact update 200; delete 200.
    let (status, body) = send(reqwest::Method::POST, format!("{base}/tags"), Some(json!({"tags": ["a", "b"]}))).await?;
    assert_eq!((status, body["tags"].clone()), (201, json!(["a", "b"])));
    let (status, body) = send(reqwest::Method::DELETE, format!("{base}/tags"), Some(json!({"tags": ["a"]}))).await?;
    assert_eq!((status, body["tags"].clone()), (200, json!(["b"])));
    // Bulk tags: 201, one response per contact, errors as in the spec's example.
    let (status, body) = send(
        reqwest::Method::POST,
        "/contacts/bulk/tags/update/add".to_owned(),
        Some(json!({"locationId": a.id, "contacts": [id, "abcdef"], "tags": ["c", "b"]})),
    )
    .await?;
    assert_eq!(status, 201, "{body}");
    assert_eq!((body["succeded"].clone(), body["errorCount"].clone()), (json!(true), json!(1)));
    assert_eq!(body["responses"][0]["tagsAdded"], json!(["c"]));
    assert_eq!(body["responses"][1]["message"], "contact id is not a valid firebase id");
    let (status, body) = send(
        reqwest::Method::POST,
        "/contacts/bulk/tags/update/remove".to_owned(),
        Some(json!({"locationId": a.id, "contacts": [id], "tags": [], "removeAllTags": true})),
    )
    .await?;
    assert_eq!((status, body["responses"][0]["tagsRemoved"].clone()), (201, json!(["b", "c"])));
    assert_eq!(env.ghl().contact(&id).unwrap_or_default().get("tags"), Some(&json!([])));
    let (status, _) = send(
        reqwest::Method::POST,
        "/contacts/bulk/tags/update/toggle".to_owned(),
        Some(json!({"locationId": a.id, "contacts": [id], "tags": ["x"]})),
    )
    .await?;
    assert_eq!(status, 422);

    let (status, body) = send(reqwest::Method::PUT, base.clone(), Some(json!({"lastName": "Engine"}))).await?;
    assert_eq!(
        (status, body["succeded"].clone(), body["contact"]["lastName"].clone()),
        (200, json!(true), json!("Engine"))
    );
    let (status, body) = send(reqwest::Method::DELETE, base.clone(), None).await?;
    assert_eq!((status, body["succeded"].clone()), (200, json!(true)));

    // Everything under a deleted contact: 404 "Contact not found".
    for (method, path, body) in [
        (reqwest::Method::GET, format!("{base}/tasks"), None),
        (reqwest::Method::GET, format!("{base}/notes"), None),
        (reqwest::Method::GET, format!("{base}/appointments"), None),
        (reqwest::Method::POST, format!("{base}/notes"), Some(json!({"body": "late"}))),
        (reqwest::Method::POST, format!("{base}/tags"), Some(json!({"tags": ["x"]}))),
        (reqwest::Method::PUT, base.clone(), Some(json!({"firstName": "x"}))),
        (reqwest::Method::DELETE, base.clone(), None),
    ] {
        let (status, body) = send(method.clone(), path.clone(), body).await?;
        assert_eq!(
            (status, body),
            (404, json!({"statusCode": 404, "message": "Contact not found"})),
            "{method} {path}"
        );
    }
    env.sandbox.stop().await;
    Ok(())
}

#[tokio::test]
async fn duplicate_search_finds_by_email_first_then_number_and_upsert_updates_the_match() -> anyhow::Result<()> {
    let env = Env::start(small()).await?;
    let (a, b) = (env.loc(0), env.loc(1));
    let ada = env.ghl().create_contact(&a.id, json!({"email": "Ada.Dup@example.test", "phone": "+15550100001"}));
    let bob = env.ghl().create_contact(&a.id, json!({"email": "bob.dup@example.test", "phone": "+15550100002"}));
    let find = |query: &str| format!("/contacts/search/duplicate?locationId={}&{query}", a.id);

    // Email (case-insensitive) wins over the number; the answer is the GET shape.
    let (status, body) = env
        .send(env.req(reqwest::Method::GET, &find("email=ada.dup%40example.test&number=%2B15550100002"), &a.pit))
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["contact"]["id"], ada.as_str());
    assert!(body["traceId"].is_string());
    let full = env.send(env.req(reqwest::Method::GET, &format!("/contacts/{ada}"), &a.pit)).await?.1;
    assert_eq!(keys_of(&body["contact"]), keys_of(&full["contact"]));
    // The number alone, compared by digits.
    let (_, body) = env.send(env.req(reqwest::Method::GET, &find("number=%2B1%20555%20010%200002"), &a.pit)).await?;
    assert_eq!(body["contact"]["id"], bob.as_str());
    // Nothing matches: `contact: null`; another location's token: 403; no location: 422.
    let (status, body) = env.send(env.req(reqwest::Method::GET, &find("email=nobody%40example.test"), &a.pit)).await?;
    assert_eq!((status, body["contact"].clone()), (200, Value::Null));
    assert_eq!(env.send(env.req(reqwest::Method::GET, &find("email=x"), &b.pit)).await?.0, 403);
    let no_location = "/contacts/search/duplicate?email=ada.dup%40example.test";
    assert_eq!(env.send(env.req(reqwest::Method::GET, no_location, &a.pit)).await?.0, 422);

    // Upsert: an existing email updates that contact (`new: false`); a new one creates.
    let upsert = |body: Value| env.req(reqwest::Method::POST, "/contacts/upsert", &a.pit).json(&body);
    let (status, body) =
        env.send(upsert(json!({"locationId": a.id, "email": "ada.dup@example.test", "city": "Paris"}))).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["new"].clone(), body["contact"]["id"].clone()), (json!(false), json!(ada)));
    assert_eq!(env.ghl().contact(&ada).unwrap_or_default()["city"], "Paris");
    let (_, body) = env.send(upsert(json!({"locationId": a.id, "email": "new.dup@example.test"}))).await?;
    assert_eq!(body["new"], true);
    assert_ne!(body["contact"]["id"], ada.as_str());
    env.sandbox.stop().await;
    Ok(())
}

fn keys_of(value: &Value) -> BTreeSet<String> {
    value.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default()
}
